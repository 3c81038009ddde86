//! Pure decisions of the session controller: whether a session gets an SSHAccess, and what
//! that SSHAccess looks like.

use std::collections::BTreeMap;

use api::{AmaltheaSession, SshAccess};
use kube::api::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::config::SshPolicy;
use crate::names::{ENABLED_ANNOTATION, FIELD_MANAGER, MANAGED_BY_LABEL, SAFE_USERNAME_LABEL};

/// Action of the session controller for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Keep an SSHAccess for this user.
    Keep {
        /// The owner's identity-provider subject, from the `renku.io/safe-username` label.
        user: String,
    },
    /// Keep no SSHAccess: delete the one the operator made, if any.
    Remove,
    /// SSH is enabled but the session has no `renku.io/safe-username` label.
    MissingUser,
}

/// Returns whether SSH is enabled for a session with this metadata under `policy`.
pub fn is_enabled(metadata: &ObjectMeta, policy: SshPolicy) -> bool {
    match policy {
        SshPolicy::All => true,
        SshPolicy::Explicit => false,
        SshPolicy::Annotated => metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(ENABLED_ANNOTATION))
            .is_some_and(|value| value == "true"),
    }
}

/// Decides what the operator keeps for a session with this metadata.
pub fn decide(metadata: &ObjectMeta, policy: SshPolicy) -> Decision {
    if !is_enabled(metadata, policy) {
        return Decision::Remove;
    }
    let user = metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(SAFE_USERNAME_LABEL))
        .filter(|user| !user.trim().is_empty());
    match user {
        Some(user) => Decision::Keep { user: user.clone() },
        None => Decision::MissingUser,
    }
}

/// Builds the server-side apply body of the SSHAccess for `session`. It names only the fields
/// the operator owns, so fields a person adds (such as `authorizedKeys` or `expiresAt`) stay.
/// Returns `None` when the session lacks a name, namespace or UID.
pub fn access_body(
    session: &PartialObjectMeta<AmaltheaSession>,
    user: &str,
    user_preferences: bool,
) -> Option<Value> {
    let name = session.metadata.name.as_ref()?;
    let namespace = session.metadata.namespace.as_ref()?;
    let mut owner = session.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    let mut body = json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": operator_labels(),
            "ownerReferences": [owner],
        },
        "spec": {
            "sessionRef": { "name": name },
            "user": user,
        },
    });
    if user_preferences {
        body["spec"]["keysFrom"] = json!([{ "userPreferences": {} }]);
    }
    Some(body)
}

fn operator_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())])
}

/// Returns whether the operator made `access` for the session with UID `session_uid`: it
/// carries the operator's label and the session is its controller. Only such objects are ever
/// updated or deleted by the session controller.
pub fn is_operator_made(access: &SshAccess, session_uid: &str) -> bool {
    let labelled = access
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|value| value == FIELD_MANAGER);
    let owned = access
        .owner_references()
        .iter()
        .any(|owner| owner.controller == Some(true) && owner.uid == session_uid);
    labelled && owned
}

/// Returns whether `access` already has the values the operator applies.
pub fn is_up_to_date(access: &SshAccess, user: &str, user_preferences: bool) -> bool {
    let wants_user_preferences = access
        .spec
        .keys_from
        .iter()
        .any(|source| source.user_preferences.is_some());
    access.spec.user == user
        && access.spec.session_ref.name == access.name_any()
        && wants_user_preferences == user_preferences
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::PartialObjectMetaExt;

    fn session(yaml: &str) -> PartialObjectMeta<AmaltheaSession> {
        let metadata: ObjectMeta = serde_yaml::from_str(yaml).expect("metadata fixture");
        metadata.into_response_partial::<AmaltheaSession>()
    }

    fn annotated() -> PartialObjectMeta<AmaltheaSession> {
        session(
            "name: alice-1234\nnamespace: renku\nuid: 9f8e7d\n\
             labels: {renku.io/safe-username: 4f7a6b1e}\n\
             annotations: {ssh.renku.io/enabled: \"true\"}\n",
        )
    }

    #[test]
    fn policies_decide_enablement() {
        let plain = session("name: s\nlabels: {renku.io/safe-username: u}\n");
        let annotated = annotated();
        let disabled = session("name: s\nannotations: {ssh.renku.io/enabled: \"false\"}\n");

        assert!(is_enabled(&plain.metadata, SshPolicy::All));
        assert!(!is_enabled(&plain.metadata, SshPolicy::Annotated));
        assert!(is_enabled(&annotated.metadata, SshPolicy::Annotated));
        assert!(!is_enabled(&disabled.metadata, SshPolicy::Annotated));
        assert!(!is_enabled(&annotated.metadata, SshPolicy::Explicit));
    }

    #[test]
    fn decision_needs_username_label() {
        assert_eq!(
            decide(&annotated().metadata, SshPolicy::Annotated),
            Decision::Keep {
                user: "4f7a6b1e".to_owned()
            }
        );
        let unlabelled = session("name: s\n");
        assert_eq!(
            decide(&unlabelled.metadata, SshPolicy::All),
            Decision::MissingUser
        );
        assert_eq!(
            decide(&unlabelled.metadata, SshPolicy::Annotated),
            Decision::Remove
        );
    }

    #[test]
    fn access_body_is_owned_by_session() {
        let body = access_body(&annotated(), "4f7a6b1e", true).expect("complete metadata");

        let expected: Value = serde_yaml::from_str(
            "apiVersion: ssh.renku.io/v1alpha1\nkind: SSHAccess\n\
             metadata:\n  name: alice-1234\n  namespace: renku\n\
             \x20 labels: {app.kubernetes.io/managed-by: renku-ssh-operator}\n\
             \x20 ownerReferences:\n  - {apiVersion: amalthea.dev/v1alpha1, kind: AmaltheaSession, \
             name: alice-1234, uid: 9f8e7d, controller: true, blockOwnerDeletion: true}\n\
             spec:\n  sessionRef: {name: alice-1234}\n  user: 4f7a6b1e\n\
             \x20 keysFrom: [{userPreferences: {}}]\n",
        )
        .expect("expected YAML");
        assert_eq!(body, expected);
    }

    #[test]
    fn access_body_without_user_preferences_has_no_sources() {
        let body = access_body(&annotated(), "u", false).expect("complete metadata");
        assert!(body["spec"].get("keysFrom").is_none(), "{body}");
    }

    #[test]
    fn operator_made_needs_label_and_owner() {
        let body = access_body(&annotated(), "u", false).expect("complete metadata");
        let mut access: SshAccess = serde_json::from_value(body).expect("valid SSHAccess");

        assert!(is_operator_made(&access, "9f8e7d"));
        assert!(!is_operator_made(&access, "other-uid"));
        access.metadata.labels = None;
        assert!(!is_operator_made(&access, "9f8e7d"));
    }

    #[test]
    fn up_to_date_compares_owned_fields() {
        let body = access_body(&annotated(), "u", true).expect("complete metadata");
        let access: SshAccess = serde_json::from_value(body).expect("valid SSHAccess");

        assert!(is_up_to_date(&access, "u", true));
        assert!(!is_up_to_date(&access, "v", true));
        assert!(!is_up_to_date(&access, "u", false));
    }
}
