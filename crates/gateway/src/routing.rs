//! Session lookup: from an authorized login to the address and pinned host key of the
//! session's SSH sidecar, or to a message for the user that explains why the session cannot be
//! reached now and what to do.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use api::amalthea::SessionState;
use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::Pod;
use russh::keys::PublicKey;

use crate::auth::Grant;
use crate::config::{SERVICE_PORT, UpstreamMode};

/// Condition type the operator sets to False when the session pod lacks the SSH sidecar.
const SIDECAR_INJECTED: &str = "SidecarInjected";

/// Read access to the watched objects. [`crate::cache::Caches`] implements it over the watch
/// caches; tests implement it over plain values.
pub trait Lookup {
    /// Returns every SSHAccess whose `spec.sessionRef.name` is `session`, in any namespace.
    fn accesses_for_session(&self, session: &str) -> Vec<Arc<SshAccess>>;
    /// Returns the AmaltheaSession `namespace/name`.
    fn session(&self, namespace: &str, name: &str) -> Option<Arc<AmaltheaSession>>;
    /// Returns the Pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>>;
    /// Returns the device-login approvals recorded for sessions named `session`.
    fn approvals_for_session(&self, _session: &str) -> Vec<crate::device::Approval> {
        Vec::new()
    }
}

/// How to reach the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A DNS name and port, resolved when connecting.
    Name(String, u16),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(address) => write!(f, "{address}"),
            Self::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// A reachable sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Address of the sidecar.
    pub address: Address,
    /// The sidecar's host key, from the SSHAccess status.
    pub host_key: PublicKey,
}

/// Whether a session can be reached now.
#[derive(Debug, Clone, PartialEq)]
pub enum Availability {
    /// The session runs and its sidecar can be reached.
    Ready(Target),
    /// The session cannot be reached; the message explains why and what to do.
    Unavailable(String),
}

/// Settings that choose the sidecar address.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Pod IP or Service.
    pub mode: UpstreamMode,
    /// Sidecar port for the pod IP mode.
    pub sidecar_port: u16,
    /// DNS suffix of Services, for example `svc.cluster.local`.
    pub service_domain: String,
}

/// Finds the sidecar of an authorized session, or the reason it cannot be reached.
pub fn route(lookup: &impl Lookup, grant: &Grant, settings: &RouteSettings) -> Availability {
    let session = &grant.session;
    let Some(object) = lookup.session(&grant.namespace, session) else {
        return Availability::Unavailable(format!(
            "session {session} no longer exists: start a session in Renku, then connect again"
        ));
    };
    if object.spec.hibernated {
        return Availability::Unavailable(format!(
            "session {session} is hibernated: resume it in Renku, then connect again"
        ));
    }
    if let Some(SessionState::Failed) = object.status.as_ref().map(|status| status.state()) {
        return Availability::Unavailable(format!(
            "session {session} has failed: check it in Renku and restart it, then connect again"
        ));
    }
    if sidecar_missing(&grant.access_object) {
        return Availability::Unavailable(format!(
            "session {session} has no SSH server: restart the session in Renku to add it, \
             then connect again"
        ));
    }
    let host_key = match host_key(&grant.access_object) {
        Ok(key) => key,
        Err(message) => return Availability::Unavailable(format!("session {session} {message}")),
    };
    let pod_name = pod_name(session);
    let pod = lookup.pod(&grant.namespace, &pod_name);
    let pod_ip = pod.as_deref().and_then(running_pod_ip);
    let Some(pod_ip) = pod_ip else {
        let phase = pod
            .as_deref()
            .and_then(|pod| pod.status.as_ref())
            .and_then(|status| status.phase.clone())
            .unwrap_or_else(|| "not created".to_owned());
        return Availability::Unavailable(format!(
            "session {session} is not running yet (pod {pod_name}: {phase}): wait until it has \
             started in Renku, then connect again"
        ));
    };
    let address = match settings.mode {
        UpstreamMode::PodIp => Address::Socket(SocketAddr::new(pod_ip, settings.sidecar_port)),
        UpstreamMode::Service => Address::Name(
            format!(
                "{session}-ssh.{}.{}",
                grant.namespace, settings.service_domain
            ),
            SERVICE_PORT,
        ),
    };
    Availability::Ready(Target { address, host_key })
}

/// Returns the name of a session's pod: amalthea runs each session as a StatefulSet of one.
pub fn pod_name(session: &str) -> String {
    format!("{session}-0")
}

/// Returns the IP of a pod that is Running and not being deleted.
fn running_pod_ip(pod: &Pod) -> Option<IpAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

fn sidecar_missing(access: &SshAccess) -> bool {
    access
        .status
        .as_ref()
        .map(|status| {
            status
                .conditions
                .iter()
                .any(|condition| condition.type_ == SIDECAR_INJECTED && condition.status == "False")
        })
        .unwrap_or(false)
}

/// Reads the sidecar's host key from `status.hostKey.knownHostsLine` (`<hosts> <type> <base64>`).
fn host_key(access: &SshAccess) -> Result<PublicKey, &'static str> {
    let line = access
        .status
        .as_ref()
        .and_then(|status| status.host_key.as_ref())
        .map(|host_key| host_key.known_hosts_line.as_str())
        .ok_or("is not ready for SSH yet (no host key published): connect again in a minute")?;
    let mut fields = line.split_whitespace();
    let _hosts = fields.next();
    let key_text: Vec<&str> = fields.take(2).collect();
    PublicKey::from_openssh(&key_text.join(" "))
        .map_err(|_| "has an unreadable host key in its SSHAccess status: ask an admin to check it")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use api::ssh_access::{Forwarding, HostKey};
    use k8s_openapi::api::core::v1::PodStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::auth::tests::{access, session};

    /// Plain-value [`Lookup`] for unit tests.
    #[derive(Default)]
    pub struct Objects {
        pub accesses: Vec<Arc<SshAccess>>,
        pub sessions: HashMap<(String, String), Arc<AmaltheaSession>>,
        pub pods: HashMap<(String, String), Arc<Pod>>,
        pub approvals: Vec<crate::device::Approval>,
    }

    impl Lookup for Objects {
        fn accesses_for_session(&self, session: &str) -> Vec<Arc<SshAccess>> {
            let matches = |access: &&Arc<SshAccess>| access.spec.session_ref.name == session;
            self.accesses.iter().filter(matches).cloned().collect()
        }

        fn session(&self, namespace: &str, name: &str) -> Option<Arc<AmaltheaSession>> {
            self.sessions
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }

        fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
            self.pods
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
        }

        fn approvals_for_session(&self, session: &str) -> Vec<crate::device::Approval> {
            let matches = |approval: &&crate::device::Approval| approval.session == session;
            self.approvals.iter().filter(matches).cloned().collect()
        }
    }

    pub const HOST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICLN1861CxGu7Uwamm+/hNX5u1OYMbzmCZECxk2IEz8I";

    pub fn running_pod(namespace: &str, name: &str, ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                pod_ip: Some(ip.to_owned()),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn grant_for(objects: &Objects) -> Grant {
        let access = objects.accesses[0].clone();
        Grant {
            namespace: "ns".to_owned(),
            session: "s1".to_owned(),
            access: "s1".to_owned(),
            user: "alice".to_owned(),
            fingerprint: "SHA256:x".to_owned(),
            forwarding: Forwarding::default(),
            access_object: access,
        }
    }

    fn objects() -> Objects {
        let mut objects = Objects::default();
        let mut ssh_access = access("ns", "s1", "alice", &["SHA256:x"]);
        ssh_access.status.get_or_insert_default().host_key = Some(HostKey {
            fingerprint: "SHA256:h".to_owned(),
            known_hosts_line: format!("s1 {HOST_KEY}"),
        });
        objects.accesses.push(Arc::new(ssh_access));
        objects.sessions.insert(
            ("ns".into(), "s1".into()),
            Arc::new(session("ns", "s1", "alice")),
        );
        objects.pods.insert(
            ("ns".into(), "s1-0".into()),
            Arc::new(running_pod("ns", "s1-0", "10.1.2.3")),
        );
        objects
    }

    fn settings(mode: UpstreamMode) -> RouteSettings {
        RouteSettings {
            mode,
            sidecar_port: 2222,
            service_domain: "svc.cluster.local".into(),
        }
    }

    #[test]
    fn running_session_routes_to_pod_ip() {
        let objects = objects();
        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::PodIp),
        );
        let Availability::Ready(target) = availability else {
            panic!("expected a route, got {availability:?}");
        };
        assert_eq!(
            target.address,
            Address::Socket("10.1.2.3:2222".parse().expect("address"))
        );
        assert_eq!(
            target.host_key,
            PublicKey::from_openssh(HOST_KEY).expect("key")
        );
    }

    #[test]
    fn service_mode_uses_service_name() {
        let objects = objects();
        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::Service),
        );
        let Availability::Ready(target) = availability else {
            panic!("expected a route, got {availability:?}");
        };
        assert_eq!(
            target.address,
            Address::Name("s1-ssh.ns.svc.cluster.local".into(), 22)
        );
    }

    #[test]
    fn hibernated_session_says_so() {
        let mut objects = objects();
        let mut hibernated = session("ns", "s1", "alice");
        hibernated.spec.hibernated = true;
        objects
            .sessions
            .insert(("ns".into(), "s1".into()), Arc::new(hibernated));

        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::PodIp),
        );

        assert_eq!(
            availability,
            Availability::Unavailable(
                "session s1 is hibernated: resume it in Renku, then connect again".into()
            )
        );
    }

    #[test]
    fn pending_pod_is_not_running() {
        let mut objects = objects();
        let mut pod = running_pod("ns", "s1-0", "");
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            ..PodStatus::default()
        });
        objects
            .pods
            .insert(("ns".into(), "s1-0".into()), Arc::new(pod));

        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::PodIp),
        );

        let Availability::Unavailable(message) = availability else {
            panic!("expected unavailable");
        };
        assert!(
            message.contains("not running yet (pod s1-0: Pending)"),
            "{message}"
        );
    }

    #[test]
    fn missing_host_key_is_unavailable() {
        let mut objects = objects();
        let mut ssh_access = (*objects.accesses[0]).clone();
        ssh_access.status.get_or_insert_default().host_key = None;
        objects.accesses[0] = Arc::new(ssh_access);

        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::PodIp),
        );

        let Availability::Unavailable(message) = availability else {
            panic!("expected unavailable");
        };
        assert!(message.contains("no host key"), "{message}");
    }

    #[test]
    fn sidecar_not_injected_says_restart() {
        let mut objects = objects();
        let mut ssh_access = (*objects.accesses[0]).clone();
        ssh_access
            .status
            .get_or_insert_default()
            .conditions
            .push(Condition {
                type_: "SidecarInjected".into(),
                status: "False".into(),
                reason: "NotInjected".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
            });
        objects.accesses[0] = Arc::new(ssh_access);

        let availability = route(
            &objects,
            &grant_for(&objects),
            &settings(UpstreamMode::PodIp),
        );

        let Availability::Unavailable(message) = availability else {
            panic!("expected unavailable");
        };
        assert!(message.contains("restart the session"), "{message}");
    }
}
