//! Build step: the desired children of an SSHAccess as plain values. Nothing here talks to
//! the API server, so every object is unit-tested from fixtures.

use std::collections::BTreeMap;

use api::amalthea::{INSTANCE_LABEL, NAME_LABEL, NAME_LABEL_VALUE};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::validate::ValidAccess;
use crate::config::Gateway;
use crate::keygen::GeneratedKey;
use crate::names::{
    AUTHORIZED_KEYS_KEY, FIELD_MANAGER, HOST_KEY_PRIVATE_KEY, HOST_KEY_PUBLIC_KEY,
    MANAGED_BY_LABEL, SERVICE_PORT, SESSION_LABEL, SIDECAR_PORT, TRUSTED_USER_CA_KEYS_KEY,
};

/// Label the API server sets on every Namespace, with the namespace's name as value.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The children kept in step with server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// Secret with `authorized_keys` and `trusted_user_ca_keys`.
    pub keys_secret: Secret,
    /// Service in front of the sidecar.
    pub service: Service,
    /// NetworkPolicy that admits only the gateway.
    pub network_policy: NetworkPolicy,
}

/// Builds every applied child.
pub fn desired(
    valid: &ValidAccess,
    authorized_keys: &str,
    trusted_user_ca_keys: &str,
    gateway: &Gateway,
) -> Desired {
    Desired {
        keys_secret: keys_secret(valid, authorized_keys, trusted_user_ca_keys),
        service: service(valid),
        network_policy: network_policy(valid, gateway),
    }
}

/// Metadata of a child: name, namespace, the operator's labels and the controller owner.
fn child_metadata(valid: &ValidAccess, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(valid.namespace.clone()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
            (SESSION_LABEL.to_owned(), valid.names.session.clone()),
        ])),
        owner_references: Some(vec![valid.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// Labels amalthea puts on the session's pod.
fn session_pod_labels(session: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), NAME_LABEL_VALUE.to_owned()),
        (INSTANCE_LABEL.to_owned(), session.to_owned()),
    ])
}

/// Builds the keys Secret `<session>-ssh-keys`.
pub fn keys_secret(
    valid: &ValidAccess,
    authorized_keys: &str,
    trusted_user_ca_keys: &str,
) -> Secret {
    Secret {
        metadata: child_metadata(valid, &valid.names.keys_secret),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                AUTHORIZED_KEYS_KEY.to_owned(),
                ByteString(authorized_keys.as_bytes().to_vec()),
            ),
            (
                TRUSTED_USER_CA_KEYS_KEY.to_owned(),
                ByteString(trusted_user_ca_keys.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Builds the host key Secret `<session>-ssh-hostkey` for a new key. It is created once and
/// never applied again, because a new host key would break every user's `known_hosts`.
pub fn host_key_secret(valid: &ValidAccess, key: &GeneratedKey) -> Secret {
    Secret {
        metadata: child_metadata(valid, &valid.names.host_key_secret),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (
                HOST_KEY_PRIVATE_KEY.to_owned(),
                ByteString(key.private_openssh.as_bytes().to_vec()),
            ),
            (
                HOST_KEY_PUBLIC_KEY.to_owned(),
                ByteString(format!("{}\n", key.public_openssh).into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Builds the Service `<session>-ssh`: port 22 (`ssh`) to the sidecar's port 2222 on the
/// session's pod.
pub fn service(valid: &ValidAccess) -> Service {
    Service {
        metadata: child_metadata(valid, &valid.names.service),
        spec: Some(ServiceSpec {
            selector: Some(session_pod_labels(&valid.names.session)),
            ports: Some(vec![ServicePort {
                name: Some("ssh".to_owned()),
                protocol: Some("TCP".to_owned()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::Int(SIDECAR_PORT)),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Builds the NetworkPolicy `<session>-ssh`: the session's pod admits TCP 2222 from the
/// gateway pods only. Network policies are additive, so other policies of the namespace still
/// decide about the pod's other ports.
pub fn network_policy(valid: &ValidAccess, gateway: &Gateway) -> NetworkPolicy {
    let namespace_selector = gateway.namespace.as_ref().map(|namespace| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            namespace.clone(),
        )])),
        ..LabelSelector::default()
    });
    let gateway_peer = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(gateway.pod_selector.clone()),
            ..LabelSelector::default()
        }),
        namespace_selector,
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: child_metadata(valid, &valid.names.network_policy),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(session_pod_labels(&valid.names.session)),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![gateway_peer]),
                ports: Some(vec![NetworkPolicyPort {
                    protocol: Some("TCP".to_owned()),
                    port: Some(IntOrString::Int(SIDECAR_PORT)),
                    ..NetworkPolicyPort::default()
                }]),
            }]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::validate;
    use api::SshAccess;

    fn fixture(name: &str) -> String {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    fn valid() -> ValidAccess {
        let access: SshAccess = serde_yaml::from_str(&fixture("sshaccess.yaml")).expect("fixture");
        validate::check(&access).expect("valid fixture")
    }

    fn gateway(namespace: Option<&str>) -> Gateway {
        Gateway {
            host: "ssh.renku.example".to_owned(),
            port: 22,
            pod_selector: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "renku-ssh-gateway".to_owned(),
            )]),
            namespace: namespace.map(str::to_owned),
        }
    }

    /// Compares an object with a YAML fixture, through JSON so that key order does not matter.
    fn assert_matches_fixture<T: serde::Serialize>(object: &T, name: &str) {
        let expected: serde_json::Value = serde_yaml::from_str(&fixture(name)).expect("fixture");
        let actual = serde_json::to_value(object).expect("serialise");
        assert_eq!(
            actual,
            expected,
            "{}",
            serde_yaml::to_string(&actual).unwrap_or_default()
        );
    }

    #[test]
    fn service_matches_fixture() {
        assert_matches_fixture(&service(&valid()), "service.yaml");
    }

    #[test]
    fn network_policy_matches_fixture() {
        assert_matches_fixture(
            &network_policy(&valid(), &gateway(None)),
            "networkpolicy.yaml",
        );
    }

    #[test]
    fn network_policy_with_gateway_namespace_selects_it() {
        let policy = network_policy(&valid(), &gateway(Some("renku-gateway")));

        let spec = policy.spec.expect("spec");
        let peer = &spec.ingress.expect("ingress")[0]
            .from
            .clone()
            .expect("from")[0];
        let namespaces = peer.namespace_selector.clone().expect("namespace selector");
        assert_eq!(
            namespaces.match_labels.expect("labels")["kubernetes.io/metadata.name"],
            "renku-gateway"
        );
    }

    #[test]
    fn keys_secret_matches_fixture() {
        let secret = keys_secret(
            &valid(),
            "# header\nssh-ed25519 AAAA laptop\n",
            "ssh-ed25519 AAAACA\n",
        );
        assert_matches_fixture(&secret, "keys-secret.yaml");
    }

    #[test]
    fn host_key_secret_holds_both_halves() {
        let key = crate::keygen::generate_ed25519("alice-1234").expect("generate");

        let secret = host_key_secret(&valid(), &key);

        let data = secret.data.expect("data");
        assert_eq!(data[HOST_KEY_PRIVATE_KEY].0, key.private_openssh.as_bytes());
        assert_eq!(
            data[HOST_KEY_PUBLIC_KEY].0,
            format!("{}\n", key.public_openssh).as_bytes()
        );
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("alice-1234-ssh-hostkey")
        );
        assert_eq!(
            secret.metadata.owner_references.expect("owner")[0].name,
            "alice-1234"
        );
    }
}
