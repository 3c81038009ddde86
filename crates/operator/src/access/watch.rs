//! Mappers from watched objects to the SSHAccess objects they affect, looked up in the
//! controller's SSHAccess cache.

use api::SshAccess;
use api::amalthea::INSTANCE_LABEL;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::names::{FIELD_MANAGER, MANAGED_BY_LABEL};

/// API version of SSHAccess, as it appears in owner references.
const SSH_ACCESS_API_VERSION: &str = "ssh.renku.io/v1alpha1";

/// Maps a Secret to its owning SSHAccess and to every SSHAccess that reads keys from it.
pub fn secret_to_accesses(
    store: &Store<SshAccess>,
    secret: &PartialObjectMeta<Secret>,
) -> Vec<ObjectRef<SshAccess>> {
    let Some(namespace) = secret.namespace() else {
        return Vec::new();
    };
    let mut targets: Vec<ObjectRef<SshAccess>> = secret
        .owner_references()
        .iter()
        .filter(|owner| owner.kind == "SSHAccess" && owner.api_version == SSH_ACCESS_API_VERSION)
        .map(|owner| ObjectRef::new(&owner.name).within(&namespace))
        .collect();
    // The operator's own Secrets are never key sources, which saves a scan of the cache on
    // every write of a keys Secret.
    let operator_made = secret
        .labels()
        .get(MANAGED_BY_LABEL)
        .is_some_and(|value| value == FIELD_MANAGER);
    if !operator_made {
        let name = secret.name_any();
        let readers = store.state_filter(|access| {
            access.namespace().as_deref() == Some(namespace.as_str())
                && access.spec.keys_from.iter().any(|source| {
                    source
                        .secret_ref
                        .as_ref()
                        .is_some_and(|secret_ref| secret_ref.name == name)
                })
        });
        targets.extend(
            readers
                .iter()
                .map(|access| ObjectRef::from_obj(access.as_ref())),
        );
    }
    targets
}

/// Maps a session, by namespace and name, to the SSHAccess objects that refer to it.
pub fn session_to_accesses(
    store: &Store<SshAccess>,
    namespace: Option<String>,
    session: &str,
) -> Vec<ObjectRef<SshAccess>> {
    let Some(namespace) = namespace else {
        return Vec::new();
    };
    store
        .state_filter(|access| {
            access.namespace().as_deref() == Some(namespace.as_str())
                && access.spec.session_ref.name == session
        })
        .iter()
        .map(|access| ObjectRef::from_obj(access.as_ref()))
        .collect()
}

/// Maps a session pod, through its `app.kubernetes.io/instance` label, to the SSHAccess
/// objects of its session.
pub fn pod_to_accesses(
    store: &Store<SshAccess>,
    pod: &PartialObjectMeta<Pod>,
) -> Vec<ObjectRef<SshAccess>> {
    match pod.labels().get(INSTANCE_LABEL) {
        Some(session) => session_to_accesses(store, pod.namespace(), session),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;
    use kube::core::PartialObjectMetaExt;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    fn access(namespace: &str, name: &str, session: &str, secret: Option<&str>) -> SshAccess {
        let keys_from = secret
            .map(|secret| format!("keysFrom: [{{secretRef: {{name: {secret}}}}}]"))
            .unwrap_or_default();
        let yaml = format!(
            "apiVersion: ssh.renku.io/v1alpha1\nkind: SSHAccess\n\
             metadata: {{name: {name}, namespace: {namespace}}}\n\
             spec: {{sessionRef: {{name: {session}}}, user: u, {keys_from}}}\n"
        );
        serde_yaml::from_str(&yaml).expect("fixture")
    }

    fn store(objects: Vec<SshAccess>) -> Store<SshAccess> {
        let mut writer = Writer::<SshAccess>::default();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        writer.as_reader()
    }

    fn secret(namespace: &str, name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Secret> {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        }
        .into_response_partial::<Secret>()
    }

    fn names(refs: &[ObjectRef<SshAccess>]) -> Vec<String> {
        let mut names: Vec<String> = refs.iter().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn referenced_secret_maps_to_readers() {
        let store = store(vec![
            access("ns", "a", "s1", Some("team")),
            access("ns", "b", "s2", Some("team")),
            access("ns", "c", "s3", Some("other")),
            access("elsewhere", "d", "s4", Some("team")),
        ]);

        let targets = secret_to_accesses(&store, &secret("ns", "team", &[]));

        assert_eq!(names(&targets), ["a", "b"]);
    }

    #[test]
    fn owned_secret_maps_to_owner_only() {
        let store = store(vec![access("ns", "a", "s1", Some("s1-ssh-keys"))]);
        let mut owned = secret("ns", "s1-ssh-keys", &[(MANAGED_BY_LABEL, FIELD_MANAGER)]);
        owned.metadata.owner_references = Some(vec![OwnerReference {
            api_version: SSH_ACCESS_API_VERSION.to_owned(),
            kind: "SSHAccess".to_owned(),
            name: "owner".to_owned(),
            uid: "1".to_owned(),
            ..OwnerReference::default()
        }]);

        let targets = secret_to_accesses(&store, &owned);

        assert_eq!(names(&targets), ["owner"]);
        assert_eq!(targets[0].namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn pod_maps_through_instance_label() {
        let store = store(vec![
            access("ns", "a", "s1", None),
            access("ns", "b", "s2", None),
        ]);
        let mut pod = ObjectMeta {
            name: Some("s1-0".to_owned()),
            namespace: Some("ns".to_owned()),
            labels: Some([(INSTANCE_LABEL.to_owned(), "s1".to_owned())].into()),
            ..ObjectMeta::default()
        }
        .into_response_partial::<Pod>();

        assert_eq!(names(&pod_to_accesses(&store, &pod)), ["a"]);
        pod.metadata.labels = None;
        assert!(pod_to_accesses(&store, &pod).is_empty());
    }
}
