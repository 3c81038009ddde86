//! Login policy: which public key may log in to which session, decided from the watched
//! SSHAccess and AmaltheaSession objects.
//!
//! A key may log in as `<session>` when its fingerprint is in `status.acceptedKeys` of an
//! SSHAccess for that session that is not expired or being deleted, whose `spec.user` is the
//! owner named by the session's `renku.io/safe-username` label, in the session's namespace.
//! Every reason for a rejection gives the client the same answer; the [`Denial`] is for logs
//! and metrics only.
//!
//! A device login proves who the user is instead of which key they have.
//! [`authorize_user`] lets the subject in when it owns the session and its SSHAccess allows
//! the device flow, and [`authorize_approved_key`] lets in a key that such a login approved.

use std::sync::Arc;

use api::SshAccess;
use api::ssh_access::Forwarding;
use k8s_openapi::jiff::Timestamp;

use crate::routing::Lookup;

/// Label on an AmaltheaSession that names its owner.
pub const OWNER_LABEL: &str = "renku.io/safe-username";

/// A login that the policy allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Namespace of the session and its SSHAccess.
    pub namespace: String,
    /// Session name, also the SSH user name.
    pub session: String,
    /// Name of the SSHAccess that lists the key.
    pub access: String,
    /// Identity-provider subject of the owner.
    pub user: String,
    /// Fingerprint of the key that logged in (`SHA256:...`).
    pub fingerprint: String,
    /// Forwarding the SSHAccess allows.
    pub forwarding: Forwarding,
    /// The SSHAccess as it was when the grant was made.
    pub access_object: Arc<SshAccess>,
}

/// Why a login was rejected. The client never learns which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No SSHAccess names the session.
    UnknownSession,
    /// The SSHAccess exists but its session does not.
    SessionMissing,
    /// No SSHAccess for the session lists the key.
    KeyNotAccepted,
    /// The SSHAccess that lists the key has expired or is being deleted.
    Expired,
    /// The SSHAccess's user is not the session's owner.
    OwnerMismatch,
    /// Sessions of that name exist in several namespaces, so the name is not a unique route.
    Ambiguous,
    /// The owner logged in through the device flow, which the SSHAccess turns off.
    DeviceFlowDisabled,
}

impl Denial {
    /// Returns the label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownSession => "unknown_session",
            Self::SessionMissing => "session_missing",
            Self::KeyNotAccepted => "key_not_accepted",
            Self::Expired => "expired",
            Self::OwnerMismatch => "owner_mismatch",
            Self::Ambiguous => "ambiguous_session",
            Self::DeviceFlowDisabled => "device_flow_disabled",
        }
    }
}

/// Decides whether the key with `fingerprint` may log in to `session` at time `now`.
pub fn authorize(
    lookup: &impl Lookup,
    session: &str,
    fingerprint: &str,
    now: Timestamp,
) -> Result<Grant, Denial> {
    // Prefer the SSHAccess the operator keeps (named like the session), then by name, so that
    // every replica picks the same one.
    let accesses = session_accesses(lookup, session)?;
    let mut denial = Denial::KeyNotAccepted;
    for access in accesses {
        match check_access(lookup, &access, session, fingerprint, now) {
            Ok(grant) => return Ok(grant),
            // Keep the most telling reason: anything beats "key not accepted".
            Err(reason) if denial == Denial::KeyNotAccepted => denial = reason,
            Err(_) => {}
        }
    }
    Err(denial)
}

fn check_access(
    lookup: &impl Lookup,
    access: &Arc<SshAccess>,
    session: &str,
    fingerprint: &str,
    now: Timestamp,
) -> Result<Grant, Denial> {
    // Expiry comes first: the operator empties acceptedKeys of an expired SSHAccess, and the
    // message that closes live connections must name the expiry, not the key.
    if access.metadata.deletion_timestamp.is_some() || is_expired(access, now) {
        return Err(Denial::Expired);
    }
    let accepted = access.status.as_ref().is_some_and(|status| {
        status
            .accepted_keys
            .iter()
            .any(|key| key.fingerprint == fingerprint)
    });
    if !accepted {
        return Err(Denial::KeyNotAccepted);
    }
    check_owner(lookup, access, session, &access.spec.user, now)?;
    Ok(grant(access, session, fingerprint))
}

/// Checks that `access` is live, that its session exists, and that `user` is both the
/// SSHAccess's user and the session's owner.
fn check_owner(
    lookup: &impl Lookup,
    access: &SshAccess,
    session: &str,
    user: &str,
    now: Timestamp,
) -> Result<(), Denial> {
    if access.metadata.deletion_timestamp.is_some() || is_expired(access, now) {
        return Err(Denial::Expired);
    }
    let namespace = access.metadata.namespace.as_deref().unwrap_or_default();
    let Some(session_object) = lookup.session(namespace, session) else {
        return Err(Denial::SessionMissing);
    };
    if session_object.metadata.deletion_timestamp.is_some() {
        return Err(Denial::SessionMissing);
    }
    let owner = session_object
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(OWNER_LABEL));
    if access.spec.user != user || owner.map(String::as_str) != Some(user) {
        return Err(Denial::OwnerMismatch);
    }
    Ok(())
}

fn grant(access: &Arc<SshAccess>, session: &str, fingerprint: &str) -> Grant {
    Grant {
        namespace: access.metadata.namespace.clone().unwrap_or_default(),
        session: session.to_owned(),
        access: access.metadata.name.clone().unwrap_or_default(),
        user: access.spec.user.clone(),
        fingerprint: fingerprint.to_owned(),
        forwarding: access.spec.forwarding.clone(),
        access_object: Arc::clone(access),
    }
}

/// Proof of a connection's right to the session, which the revocation loop checks again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A key in the SSHAccess's `acceptedKeys`.
    Key,
    /// The identity provider named this subject, through a device login or an approval.
    Owner {
        /// The identity-provider subject.
        user: String,
    },
}

/// Returns the SSHAccesses of `session`, or the denial when there are none or the name is
/// not a unique route. The one the operator keeps (named like the session) comes first.
fn session_accesses(lookup: &impl Lookup, session: &str) -> Result<Vec<Arc<SshAccess>>, Denial> {
    let mut accesses = lookup.accesses_for_session(session);
    if accesses.is_empty() {
        return Err(Denial::UnknownSession);
    }
    let first_namespace = accesses[0].metadata.namespace.clone();
    if accesses
        .iter()
        .any(|access| access.metadata.namespace != first_namespace)
    {
        return Err(Denial::Ambiguous);
    }
    accesses.sort_by_key(|access| {
        let name = access.metadata.name.clone().unwrap_or_default();
        (name != session, name)
    });
    Ok(accesses)
}

/// Decides whether the identity-provider subject `user` may log in to `session` without a
/// listed key. `fingerprint` names the key the client offered, or is empty.
pub fn authorize_user(
    lookup: &impl Lookup,
    session: &str,
    user: &str,
    fingerprint: &str,
    now: Timestamp,
) -> Result<Grant, Denial> {
    let accesses = session_accesses(lookup, session)?;
    let Some(access) = accesses.iter().find(|access| access.spec.user == user) else {
        return Err(Denial::OwnerMismatch);
    };
    check_owner(lookup, access, session, user, now)?;
    if !access.spec.device_flow.enabled {
        return Err(Denial::DeviceFlowDisabled);
    }
    Ok(grant(access, session, fingerprint))
}

/// Decides whether the key `fingerprint` may log in to `session` because a device login
/// approved it. The approval must not have expired, and the session must still run the pod and
/// have the generation it was approved with, and not be hibernated. Its subject must still pass
/// [`authorize_user`]. The caller's lookup returns only approvals with a valid signature.
pub fn authorize_approved_key(
    lookup: &impl Lookup,
    session: &str,
    fingerprint: &str,
    now: Timestamp,
) -> Result<Grant, Denial> {
    let mut denial = Denial::KeyNotAccepted;
    for approval in lookup.approvals_for_session(session) {
        if approval.fingerprint != fingerprint || approval.expires_at <= now {
            continue;
        }
        let pod_name = crate::routing::pod_name(session);
        let current_pod = lookup
            .pod(&approval.namespace, &pod_name)
            .and_then(|pod| pod.metadata.uid.clone());
        let session_object = lookup.session(&approval.namespace, session);
        let unchanged = session_object.is_some_and(|object| {
            !object.spec.hibernated
                && object.metadata.generation == Some(approval.session_generation)
        });
        if !unchanged || current_pod.as_deref() != Some(approval.pod_uid.as_str()) {
            continue;
        }
        match authorize_user(lookup, session, &approval.user, fingerprint, now) {
            Ok(grant) if grant.namespace == approval.namespace => return Ok(grant),
            Ok(_) => {}
            Err(reason) => denial = reason,
        }
    }
    Err(denial)
}

/// Re-checks a connection's proof, for the revocation loop.
pub fn recheck(
    lookup: &impl Lookup,
    session: &str,
    fingerprint: &str,
    proof: &Proof,
    now: Timestamp,
) -> Result<Grant, Denial> {
    match proof {
        Proof::Key => authorize(lookup, session, fingerprint, now),
        Proof::Owner { user } => authorize_user(lookup, session, user, fingerprint, now),
    }
}

/// Returns whether `spec.expiresAt` has passed.
pub fn is_expired(access: &SshAccess, now: Timestamp) -> bool {
    access
        .spec
        .expires_at
        .as_ref()
        .is_some_and(|expires| expires.0 <= now)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use api::ssh_access::{AcceptedKey, SshAccessSpec, SshAccessStatus};
    use api::{AmaltheaSession, AmaltheaSessionSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::device::Approval;
    use crate::routing::tests::Objects;

    pub fn access(namespace: &str, session: &str, user: &str, keys: &[&str]) -> SshAccess {
        let spec: SshAccessSpec = serde_json::from_value(serde_json::json!({
            "sessionRef": { "name": session },
            "user": user,
        }))
        .expect("spec");
        let mut object = SshAccess::new(session, spec);
        object.metadata.namespace = Some(namespace.to_owned());
        let mut status = SshAccessStatus::default();
        status.set_accepted_keys(
            keys.iter()
                .map(|fingerprint| AcceptedKey {
                    fingerprint: (*fingerprint).to_owned(),
                    key_type: "ssh-ed25519".to_owned(),
                    comment: None,
                    source: "authorizedKeys".to_owned(),
                })
                .collect(),
        );
        object.status = Some(status);
        object
    }

    pub fn session(namespace: &str, name: &str, owner: &str) -> AmaltheaSession {
        let spec: AmaltheaSessionSpec = serde_json::from_value(serde_json::json!({
            "session": { "image": "renku/session:latest" },
            "hibernated": false,
        }))
        .expect("session spec");
        let mut object = AmaltheaSession::new(name, spec);
        object.metadata = ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(OWNER_LABEL.to_owned(), owner.to_owned())])),
            generation: Some(1),
            ..ObjectMeta::default()
        };
        object
    }

    fn objects(accesses: Vec<SshAccess>, sessions: Vec<AmaltheaSession>) -> Objects {
        let mut objects = Objects {
            accesses: accesses.into_iter().map(Arc::new).collect(),
            ..Objects::default()
        };
        for session in sessions {
            let key = (
                session.metadata.namespace.clone().unwrap_or_default(),
                session.metadata.name.clone().unwrap_or_default(),
            );
            objects.sessions.insert(key, Arc::new(session));
        }
        objects
    }

    fn now() -> Timestamp {
        Timestamp::now()
    }

    #[test]
    fn accepted_key_logs_in() {
        let objects = objects(
            vec![access("ns", "s1", "alice", &["SHA256:a"])],
            vec![session("ns", "s1", "alice")],
        );

        let grant = authorize(&objects, "s1", "SHA256:a", now()).expect("granted");

        assert_eq!(grant.namespace, "ns");
        assert_eq!(grant.session, "s1");
        assert_eq!(grant.user, "alice");
        assert_eq!(grant.access, "s1");
    }

    #[test]
    fn unknown_session_and_wrong_key_are_denied() {
        let objects = objects(
            vec![access("ns", "s1", "alice", &["SHA256:a"])],
            vec![session("ns", "s1", "alice")],
        );

        assert_eq!(
            authorize(&objects, "s2", "SHA256:a", now()).err(),
            Some(Denial::UnknownSession)
        );
        assert_eq!(
            authorize(&objects, "s1", "SHA256:b", now()).err(),
            Some(Denial::KeyNotAccepted)
        );
    }

    #[test]
    fn other_users_access_is_not_enough() {
        // Bob wrote an SSHAccess naming Alice's session with his own user: it must not open
        // Alice's session.
        let objects = objects(
            vec![access("ns", "s1", "bob", &["SHA256:bob"])],
            vec![session("ns", "s1", "alice")],
        );

        assert_eq!(
            authorize(&objects, "s1", "SHA256:bob", now()).err(),
            Some(Denial::OwnerMismatch)
        );
    }

    #[test]
    fn expired_access_is_denied() {
        let mut expired = access("ns", "s1", "alice", &["SHA256:a"]);
        expired.spec.expires_at = Some(Time("2020-01-01T00:00:00Z".parse().expect("time")));
        let objects = objects(vec![expired], vec![session("ns", "s1", "alice")]);

        assert_eq!(
            authorize(&objects, "s1", "SHA256:a", now()).err(),
            Some(Denial::Expired)
        );
    }

    #[test]
    fn future_expiry_is_allowed() {
        let mut access = access("ns", "s1", "alice", &["SHA256:a"]);
        access.spec.expires_at = Some(Time("2999-01-01T00:00:00Z".parse().expect("time")));
        let objects = objects(vec![access], vec![session("ns", "s1", "alice")]);

        assert!(authorize(&objects, "s1", "SHA256:a", now()).is_ok());
    }

    #[test]
    fn deleted_session_is_denied() {
        let objects = objects(vec![access("ns", "s1", "alice", &["SHA256:a"])], vec![]);

        assert_eq!(
            authorize(&objects, "s1", "SHA256:a", now()).err(),
            Some(Denial::SessionMissing)
        );
    }

    #[test]
    fn same_name_in_two_namespaces_is_ambiguous() {
        let objects = objects(
            vec![
                access("ns1", "s1", "alice", &["SHA256:a"]),
                access("ns2", "s1", "bob", &["SHA256:b"]),
            ],
            vec![session("ns1", "s1", "alice"), session("ns2", "s1", "bob")],
        );

        assert_eq!(
            authorize(&objects, "s1", "SHA256:a", now()).err(),
            Some(Denial::Ambiguous)
        );
    }

    #[test]
    fn second_access_for_same_session_grants() {
        let mut extra = access("ns", "s1", "alice", &["SHA256:extra"]);
        extra.metadata.name = Some("s1-extra".to_owned());
        extra.spec.forwarding.agent = false;
        let objects = objects(
            vec![access("ns", "s1", "alice", &["SHA256:a"]), extra],
            vec![session("ns", "s1", "alice")],
        );

        let grant = authorize(&objects, "s1", "SHA256:extra", now()).expect("granted");

        assert_eq!(grant.access, "s1-extra");
        assert!(!grant.forwarding.agent);
    }

    fn with_pod(mut objects: Objects, uid: &str) -> Objects {
        let mut pod = crate::routing::tests::running_pod("ns", "s1-0", "10.0.0.1");
        pod.metadata.uid = Some(uid.to_owned());
        objects
            .pods
            .insert(("ns".to_owned(), "s1-0".to_owned()), Arc::new(pod));
        objects
    }

    fn approval(fingerprint: &str, user: &str, pod_uid: &str, expires: &str) -> Approval {
        Approval {
            namespace: "ns".to_owned(),
            session: "s1".to_owned(),
            fingerprint: fingerprint.to_owned(),
            user: user.to_owned(),
            pod_uid: pod_uid.to_owned(),
            session_generation: 1,
            expires_at: expires.parse().expect("time"),
            signature: String::new(),
        }
    }

    #[test]
    fn owner_logs_in_without_a_key() {
        let objects = objects(
            vec![access("ns", "s1", "alice", &[])],
            vec![session("ns", "s1", "alice")],
        );

        let grant = authorize_user(&objects, "s1", "alice", "", now()).expect("granted");
        assert_eq!(grant.user, "alice");
        assert_eq!(
            authorize_user(&objects, "s1", "bob", "", now()).err(),
            Some(Denial::OwnerMismatch)
        );
        assert_eq!(
            authorize_user(&objects, "s2", "alice", "", now()).err(),
            Some(Denial::UnknownSession)
        );
    }

    #[test]
    fn owner_needs_device_flow_enabled() {
        let mut access = access("ns", "s1", "alice", &[]);
        access.spec.device_flow.enabled = false;
        let objects = objects(vec![access], vec![session("ns", "s1", "alice")]);

        assert_eq!(
            authorize_user(&objects, "s1", "alice", "", now()).err(),
            Some(Denial::DeviceFlowDisabled)
        );
    }

    #[test]
    fn access_naming_another_owner_gives_no_device_login() {
        // An SSHAccess whose user is Bob cannot make Bob the owner of Alice's session.
        let objects = objects(
            vec![access("ns", "s1", "bob", &[])],
            vec![session("ns", "s1", "alice")],
        );

        assert_eq!(
            authorize_user(&objects, "s1", "bob", "", now()).err(),
            Some(Denial::OwnerMismatch)
        );
    }

    #[test]
    fn approved_key_logs_in_while_the_pod_lives() {
        let base = objects(
            vec![access("ns", "s1", "alice", &[])],
            vec![session("ns", "s1", "alice")],
        );
        let mut objects = with_pod(base, "pod-1");
        objects.approvals = vec![approval(
            "SHA256:k",
            "alice",
            "pod-1",
            "2999-01-01T00:00:00Z",
        )];

        let grant = authorize_approved_key(&objects, "s1", "SHA256:k", now()).expect("granted");
        assert_eq!(grant.user, "alice");
        assert_eq!(grant.fingerprint, "SHA256:k");
        assert!(authorize_approved_key(&objects, "s1", "SHA256:other", now()).is_err());

        // A new pod (the session was stopped and started) ends the approval.
        let mut restarted = with_pod(objects, "pod-2");
        assert!(authorize_approved_key(&restarted, "s1", "SHA256:k", now()).is_err());

        // So does hibernation.
        restarted.approvals = vec![approval(
            "SHA256:k",
            "alice",
            "pod-2",
            "2999-01-01T00:00:00Z",
        )];
        assert!(authorize_approved_key(&restarted, "s1", "SHA256:k", now()).is_ok());
        let mut hibernated = session("ns", "s1", "alice");
        hibernated.spec.hibernated = true;
        restarted.sessions.insert(
            ("ns".to_owned(), "s1".to_owned()),
            Arc::new(hibernated.clone()),
        );
        assert!(authorize_approved_key(&restarted, "s1", "SHA256:k", now()).is_err());

        // Resuming with the same pod changes the session's generation, which ends it too.
        hibernated.spec.hibernated = false;
        hibernated.metadata.generation = Some(3);
        restarted
            .sessions
            .insert(("ns".to_owned(), "s1".to_owned()), Arc::new(hibernated));
        assert!(authorize_approved_key(&restarted, "s1", "SHA256:k", now()).is_err());
    }

    #[test]
    fn expired_or_foreign_approval_is_ignored() {
        let base = objects(
            vec![access("ns", "s1", "alice", &[])],
            vec![session("ns", "s1", "alice")],
        );
        let mut objects = with_pod(base, "pod-1");
        objects.approvals = vec![
            approval("SHA256:old", "alice", "pod-1", "2020-01-01T00:00:00Z"),
            // Written by someone for a user who does not own the session.
            approval("SHA256:bob", "bob", "pod-1", "2999-01-01T00:00:00Z"),
        ];

        assert!(authorize_approved_key(&objects, "s1", "SHA256:old", now()).is_err());
        assert_eq!(
            authorize_approved_key(&objects, "s1", "SHA256:bob", now()).err(),
            Some(Denial::OwnerMismatch)
        );
    }
}
