//! Status step: the SSHAccess status as a pure function of what was read and built, and its
//! server-side apply to the status subresource. The status never contains secret material: only
//! fingerprints, public host key data and previews of rejected public key lines.

use api::condition::{self, KEYS_SYNCED, READY, ROUTABLE, SIDECAR_INJECTED, set_condition, status};
use api::ssh_access::{HostKey as StatusHostKey, SshAccessStatus};
use api::{AmaltheaSession, SshAccess};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use super::hostkey::HostKey;
use super::validate::KeyOutcome;
use crate::config::Gateway;
use crate::error::{Categorized, ErrorCategory};
use crate::names::{FIELD_MANAGER, SIDECAR_CONTAINER, session_pod_name};

/// Condition reasons written by the operator.
pub mod reason {
    /// `KeysSynced`: every source was read.
    pub const SYNCED: &str = "Synced";
    /// `KeysSynced`: a source failed; its last good keys stay in use.
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    /// `KeysSynced` and `Ready`: `spec.expiresAt` has passed.
    pub const EXPIRED: &str = "Expired";
    /// `SidecarInjected`: the pod runs the sidecar.
    pub const INJECTED: &str = "Injected";
    /// `SidecarInjected`: the pod runs without the sidecar.
    pub const NOT_INJECTED: &str = "NotInjected";
    /// `SidecarInjected` and `Routable`: the session has no pod.
    pub const POD_NOT_FOUND: &str = "PodNotFound";
    /// `Routable`: the gateway can reach the sidecar.
    pub const ROUTABLE: &str = "Routable";
    /// `Routable`: the session is hibernated.
    pub const HIBERNATED: &str = "Hibernated";
    /// `Routable`: the AmaltheaSession does not exist.
    pub const SESSION_NOT_FOUND: &str = "SessionNotFound";
    /// `Routable`: the pod is not running.
    pub const POD_NOT_RUNNING: &str = "PodNotRunning";
    /// `Ready`: the user can connect.
    pub const READY: &str = "Ready";
    /// `Ready`: the host key Secret cannot be used.
    pub const HOST_KEY_INVALID: &str = "HostKeyInvalid";
    /// `Ready`: another SSHAccess serves the session.
    pub const CONFLICT: &str = "Conflict";
    /// `Ready`: the spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// Everything the status is computed from.
pub struct StatusInput<'a> {
    /// `metadata.generation` of the SSHAccess.
    pub generation: Option<i64>,
    /// The current status, whose condition transition times are kept.
    pub previous: Option<&'a SshAccessStatus>,
    /// Name of the session.
    pub session_name: &'a str,
    /// The gateway, for the endpoint and command.
    pub gateway: &'a Gateway,
    /// Time of this reconcile.
    pub now: Timestamp,
    /// Merged keys.
    pub keys: &'a KeyOutcome,
    /// The session, if it exists.
    pub session: Option<&'a AmaltheaSession>,
    /// The session's pod, if it exists.
    pub pod: Option<&'a Pod>,
    /// The host key.
    pub host_key: &'a HostKey,
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: Time(now),
        observed_generation: None,
    }
}

/// Builds the full status.
pub fn build(input: &StatusInput<'_>) -> SshAccessStatus {
    let mut status = input.previous.cloned().unwrap_or_default();
    status.observed_generation = input.generation;
    status.endpoint = Some(input.gateway.endpoint());
    status.command = Some(input.gateway.command(input.session_name));
    status.host_key = match input.host_key {
        HostKey::Ready(info) => Some(StatusHostKey {
            fingerprint: info.fingerprint.clone(),
            known_hosts_line: format!("{} {}", input.session_name, info.line),
        }),
        HostKey::Invalid(_) | HostKey::OwnedByOther(_) => None,
    };
    status.set_accepted_keys(input.keys.accepted.clone());
    status.rejected_keys = input.keys.rejected.clone();

    let keys = keys_synced(input.keys, input.now);
    let sidecar = sidecar_injected(input.session_name, input.pod, input.now);
    let routable = routable(input.session_name, input.session, input.pod, input.now);
    let ready = ready(&[&keys, &sidecar, &routable], input, input.now);
    for mut condition in [ready, keys, sidecar, routable] {
        condition.observed_generation = input.generation;
        set_condition(&mut status.conditions, condition);
    }
    status
}

/// Builds the status of an SSHAccess the operator does not serve: `Ready` False with
/// `reason` and `message`, and nothing else.
pub fn build_blocked(
    generation: Option<i64>,
    previous: Option<&SshAccessStatus>,
    reason: &str,
    message: String,
    now: Timestamp,
) -> SshAccessStatus {
    let mut conditions: Vec<Condition> = previous
        .map(|status| {
            status
                .conditions
                .iter()
                .filter(|c| c.type_ == READY)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut ready = new_condition(READY, status::FALSE, reason, message, now);
    ready.observed_generation = generation;
    set_condition(&mut conditions, ready);
    let mut status = SshAccessStatus {
        observed_generation: generation,
        conditions,
        ..SshAccessStatus::default()
    };
    status.set_accepted_keys(Vec::new());
    status
}

/// Builds `KeysSynced`.
pub fn keys_synced(keys: &KeyOutcome, now: Timestamp) -> Condition {
    if let Some(at) = keys.expired_at {
        let message = format!("access expired at {at}; authorized_keys is empty");
        return new_condition(KEYS_SYNCED, status::TRUE, reason::EXPIRED, message, now);
    }
    if !keys.failing.is_empty() {
        let message = keys
            .failing
            .iter()
            .map(|failing| {
                format!(
                    "source {} is unavailable ({}); keeping its {} last good key(s)",
                    failing.label, failing.error, failing.kept
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return new_condition(
            KEYS_SYNCED,
            status::FALSE,
            reason::SOURCE_UNAVAILABLE,
            message,
            now,
        );
    }
    let mut message = format!("{} key(s) accepted", keys.accepted.len());
    if keys.rejected_total > 0 {
        message.push_str(&format!(
            ", {} line(s) rejected (see status.rejectedKeys)",
            keys.rejected_total
        ));
    }
    new_condition(KEYS_SYNCED, status::TRUE, reason::SYNCED, message, now)
}

/// Returns whether `pod` has the sidecar, as a container or as a native sidecar (an init
/// container with `restartPolicy: Always`).
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_CONTAINER)
}

/// Builds `SidecarInjected`.
pub fn sidecar_injected(session: &str, pod: Option<&Pod>, now: Timestamp) -> Condition {
    let pod_name = session_pod_name(session);
    match pod {
        None => new_condition(
            SIDECAR_INJECTED,
            status::UNKNOWN,
            reason::POD_NOT_FOUND,
            format!("pod {pod_name} does not exist"),
            now,
        ),
        Some(pod) if has_sidecar(pod) => new_condition(
            SIDECAR_INJECTED,
            status::TRUE,
            reason::INJECTED,
            format!("pod {pod_name} runs the {SIDECAR_CONTAINER} container"),
            now,
        ),
        Some(_) => new_condition(
            SIDECAR_INJECTED,
            status::FALSE,
            reason::NOT_INJECTED,
            format!(
                "pod {pod_name} runs without the {SIDECAR_CONTAINER} container: restart the \
                 session to add the SSH sidecar"
            ),
            now,
        ),
    }
}

/// Builds `Routable`.
pub fn routable(
    session_name: &str,
    session: Option<&AmaltheaSession>,
    pod: Option<&Pod>,
    now: Timestamp,
) -> Condition {
    let pod_name = session_pod_name(session_name);
    let not_routable = |reason: &str, message: String| {
        new_condition(ROUTABLE, status::FALSE, reason, message, now)
    };
    let Some(session) = session else {
        return not_routable(
            reason::SESSION_NOT_FOUND,
            format!("AmaltheaSession {session_name} does not exist"),
        );
    };
    if session.spec.hibernated {
        return not_routable(
            reason::HIBERNATED,
            format!("session {session_name} is hibernated: resume it to connect"),
        );
    }
    let Some(pod) = pod else {
        return not_routable(
            reason::POD_NOT_FOUND,
            format!("pod {pod_name} does not exist"),
        );
    };
    let pod_status = pod.status.as_ref();
    let phase = pod_status
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let ip = pod_status
        .and_then(|s| s.pod_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    match (phase, ip) {
        ("Running", Some(ip)) => new_condition(
            ROUTABLE,
            status::TRUE,
            reason::ROUTABLE,
            format!("Service {session_name}-ssh routes port 22 to pod {pod_name} at {ip}"),
            now,
        ),
        ("Running", None) => not_routable(
            reason::POD_NOT_RUNNING,
            format!("pod {pod_name} is Running but has no IP address yet"),
        ),
        (phase, _) => not_routable(
            reason::POD_NOT_RUNNING,
            format!("pod {pod_name} is {phase}, not Running"),
        ),
    }
}

/// Builds `Ready` from the other conditions.
fn ready(conditions: &[&Condition], input: &StatusInput<'_>, now: Timestamp) -> Condition {
    if let Some(at) = input.keys.expired_at {
        let message = format!("access expired at {at} (spec.expiresAt)");
        return new_condition(READY, status::FALSE, reason::EXPIRED, message, now);
    }
    match input.host_key {
        HostKey::Invalid(message) | HostKey::OwnedByOther(message) => {
            return new_condition(
                READY,
                status::FALSE,
                reason::HOST_KEY_INVALID,
                message.clone(),
                now,
            );
        }
        HostKey::Ready(_) => {}
    }
    for wanted in [status::FALSE, status::UNKNOWN] {
        if let Some(blocking) = conditions.iter().find(|c| c.status == wanted) {
            let message = format!("{}: {}", blocking.type_, blocking.message);
            return new_condition(READY, wanted, &blocking.reason, message, now);
        }
    }
    let message = format!(
        "connect with `{}`",
        input.gateway.command(input.session_name)
    );
    new_condition(READY, status::TRUE, reason::READY, message, now)
}

/// A failed status write.
#[derive(Debug, thiserror::Error)]
#[error("failed to write the status of SSHAccess {namespace}/{name}: {source}")]
pub struct StatusError {
    namespace: String,
    name: String,
    #[source]
    source: kube::Error,
}

impl Categorized for StatusError {
    fn category(&self) -> ErrorCategory {
        ErrorCategory::Kubernetes
    }
}

/// Applies `status` to the status subresource, unless it equals the current status.
/// Returns whether a write happened.
pub async fn write(
    client: &Client,
    access: &SshAccess,
    namespace: &str,
    name: &str,
    status: &SshAccessStatus,
) -> Result<bool, StatusError> {
    if access.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let api = Api::<SshAccess>::namespaced(client.clone(), namespace);
    let body = json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| StatusError {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(true)
}

/// Returns the condition of `type_` in `status`, if any.
pub fn find<'a>(status: Option<&'a SshAccessStatus>, type_: &str) -> Option<&'a Condition> {
    status.and_then(|status| condition::find_condition(&status.conditions, type_))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use api::ssh_access::{AcceptedKey, RejectedKey};
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};

    use super::*;
    use crate::access::read::SourceKind;
    use crate::access::validate::FailingSource;
    use crate::keygen::PublicKeyInfo;

    fn gateway(port: u16) -> Gateway {
        Gateway {
            host: "ssh.renku.example".to_owned(),
            port,
            pod_selector: BTreeMap::new(),
            namespace: None,
        }
    }

    fn now() -> Timestamp {
        "2030-05-06T07:08:09Z".parse().expect("timestamp")
    }

    fn session(hibernated: bool) -> AmaltheaSession {
        let yaml = format!(
            "apiVersion: amalthea.dev/v1alpha1\nkind: AmaltheaSession\nmetadata: {{name: alice-1}}\n\
             spec: {{hibernated: {hibernated}, session: {{image: python:3.12}}}}\n"
        );
        serde_yaml::from_str(&yaml).expect("session fixture")
    }

    fn pod(containers: &[&str], phase: &str, ip: Option<&str>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|name| Container {
                        name: (*name).to_owned(),
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.to_owned()),
                pod_ip: ip.map(str::to_owned),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    fn host_key() -> HostKey {
        HostKey::Ready(PublicKeyInfo {
            algorithm: "ssh-ed25519".to_owned(),
            line: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".to_owned(),
            fingerprint: "SHA256:hostfingerprint".to_owned(),
        })
    }

    fn keys() -> KeyOutcome {
        KeyOutcome {
            accepted: vec![AcceptedKey {
                fingerprint: "SHA256:user".to_owned(),
                key_type: "ssh-ed25519".to_owned(),
                comment: Some("laptop".to_owned()),
                source: "authorizedKeys".to_owned(),
            }],
            ..KeyOutcome::default()
        }
    }

    fn build_with(
        keys: &KeyOutcome,
        session: Option<&AmaltheaSession>,
        pod: Option<&Pod>,
        host_key: &HostKey,
        previous: Option<&SshAccessStatus>,
    ) -> SshAccessStatus {
        build(&StatusInput {
            generation: Some(4),
            previous,
            session_name: "alice-1",
            gateway: &gateway(22),
            now: now(),
            keys,
            session,
            pod,
            host_key,
        })
    }

    fn condition<'a>(status: &'a SshAccessStatus, type_: &str) -> &'a Condition {
        condition::find_condition(&status.conditions, type_).expect("condition present")
    }

    #[test]
    fn running_pod_with_sidecar_is_ready() {
        let running = pod(
            &["amalthea-session", SIDECAR_CONTAINER],
            "Running",
            Some("10.0.0.7"),
        );
        let status = build_with(
            &keys(),
            Some(&session(false)),
            Some(&running),
            &host_key(),
            None,
        );

        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.endpoint.as_deref(), Some("ssh.renku.example:22"));
        assert_eq!(
            status.command.as_deref(),
            Some("ssh alice-1@ssh.renku.example")
        );
        let host_key = status.host_key.as_ref().expect("host key");
        assert_eq!(host_key.fingerprint, "SHA256:hostfingerprint");
        assert_eq!(
            host_key.known_hosts_line,
            "alice-1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost"
        );
        assert_eq!(status.accepted_key_count, Some(1));
        for type_ in [READY, KEYS_SYNCED, SIDECAR_INJECTED, ROUTABLE] {
            assert_eq!(condition(&status, type_).status, status::TRUE, "{type_}");
            assert_eq!(
                condition(&status, type_).observed_generation,
                Some(4),
                "{type_}"
            );
        }
        assert!(condition(&status, ROUTABLE).message.contains("10.0.0.7"));
    }

    #[test]
    fn pod_without_sidecar_is_not_injected() {
        let running = pod(&["amalthea-session"], "Running", Some("10.0.0.7"));
        let status = build_with(
            &keys(),
            Some(&session(false)),
            Some(&running),
            &host_key(),
            None,
        );

        let sidecar = condition(&status, SIDECAR_INJECTED);
        assert_eq!(sidecar.status, status::FALSE);
        assert_eq!(sidecar.reason, reason::NOT_INJECTED);
        assert!(
            sidecar
                .message
                .contains("restart the session to add the SSH sidecar")
        );
        assert_eq!(condition(&status, READY).status, status::FALSE);
        assert_eq!(condition(&status, READY).reason, reason::NOT_INJECTED);
    }

    #[test]
    fn native_sidecar_counts_as_injected() {
        let mut running = pod(&["amalthea-session"], "Running", Some("10.0.0.7"));
        if let Some(spec) = running.spec.as_mut() {
            spec.init_containers = Some(vec![Container {
                name: SIDECAR_CONTAINER.to_owned(),
                ..Container::default()
            }]);
        }
        assert!(has_sidecar(&running));
    }

    #[test]
    fn missing_pod_is_unknown() {
        let status = build_with(&keys(), Some(&session(false)), None, &host_key(), None);

        assert_eq!(condition(&status, SIDECAR_INJECTED).status, status::UNKNOWN);
        assert_eq!(condition(&status, ROUTABLE).status, status::FALSE);
        assert_eq!(condition(&status, ROUTABLE).reason, reason::POD_NOT_FOUND);
        assert_eq!(condition(&status, READY).status, status::FALSE);
    }

    #[test]
    fn hibernated_session_is_not_routable() {
        let status = build_with(&keys(), Some(&session(true)), None, &host_key(), None);

        assert_eq!(condition(&status, ROUTABLE).reason, reason::HIBERNATED);
        assert_eq!(condition(&status, READY).reason, reason::HIBERNATED);
    }

    #[test]
    fn pending_pod_is_not_routable() {
        let pending = pod(&[SIDECAR_CONTAINER], "Pending", None);
        let status = build_with(
            &keys(),
            Some(&session(false)),
            Some(&pending),
            &host_key(),
            None,
        );

        assert_eq!(condition(&status, ROUTABLE).reason, reason::POD_NOT_RUNNING);
        assert!(condition(&status, ROUTABLE).message.contains("Pending"));
    }

    #[test]
    fn missing_session_is_reported() {
        let status = build_with(&keys(), None, None, &host_key(), None);
        assert_eq!(
            condition(&status, ROUTABLE).reason,
            reason::SESSION_NOT_FOUND
        );
    }

    #[test]
    fn failing_source_sets_keys_synced_false() {
        let mut outcome = keys();
        outcome.failing = vec![FailingSource {
            label: "secret:team/authorized_keys".to_owned(),
            kind: SourceKind::Secret,
            error: "Secret \"team\" not found".to_owned(),
            kept: 1,
        }];
        let running = pod(&[SIDECAR_CONTAINER], "Running", Some("10.0.0.7"));

        let status = build_with(
            &outcome,
            Some(&session(false)),
            Some(&running),
            &host_key(),
            None,
        );

        let synced = condition(&status, KEYS_SYNCED);
        assert_eq!(synced.status, status::FALSE);
        assert_eq!(synced.reason, reason::SOURCE_UNAVAILABLE);
        assert!(
            synced.message.contains("secret:team/authorized_keys"),
            "{}",
            synced.message
        );
        assert!(synced.message.contains("not found"), "{}", synced.message);
        assert!(
            synced.message.contains("1 last good key"),
            "{}",
            synced.message
        );
        assert_eq!(condition(&status, READY).reason, reason::SOURCE_UNAVAILABLE);
    }

    #[test]
    fn rejections_are_listed_and_counted() {
        let mut outcome = keys();
        outcome.rejected = vec![RejectedKey {
            source: "authorizedKeys".to_owned(),
            line: 2,
            reason: "DsaNotSupported: ...".to_owned(),
            preview: Some("ssh-dss AAAA".to_owned()),
        }];
        outcome.rejected_total = 1;

        let status = build_with(&outcome, None, None, &host_key(), None);

        assert_eq!(status.rejected_keys, outcome.rejected);
        assert!(
            condition(&status, KEYS_SYNCED)
                .message
                .contains("1 line(s) rejected")
        );
    }

    #[test]
    fn expired_access_is_not_ready() {
        let outcome =
            crate::access::validate::expired_keys("2030-01-01T00:00:00Z".parse().expect("time"));
        let running = pod(&[SIDECAR_CONTAINER], "Running", Some("10.0.0.7"));

        let status = build_with(
            &outcome,
            Some(&session(false)),
            Some(&running),
            &host_key(),
            None,
        );

        assert_eq!(condition(&status, READY).status, status::FALSE);
        assert_eq!(condition(&status, READY).reason, reason::EXPIRED);
        assert_eq!(condition(&status, KEYS_SYNCED).reason, reason::EXPIRED);
        assert_eq!(status.accepted_key_count, Some(0));
    }

    #[test]
    fn invalid_host_key_blocks_ready() {
        let running = pod(&[SIDECAR_CONTAINER], "Running", Some("10.0.0.7"));
        let invalid = HostKey::Invalid("Secret alice-1-ssh-hostkey has no key".to_owned());

        let status = build_with(
            &keys(),
            Some(&session(false)),
            Some(&running),
            &invalid,
            None,
        );

        assert!(status.host_key.is_none());
        assert_eq!(condition(&status, READY).reason, reason::HOST_KEY_INVALID);
    }

    #[test]
    fn unchanged_input_keeps_status_identical() {
        let running = pod(&[SIDECAR_CONTAINER], "Running", Some("10.0.0.7"));
        let first = build_with(
            &keys(),
            Some(&session(false)),
            Some(&running),
            &host_key(),
            None,
        );

        let later = build(&StatusInput {
            generation: Some(4),
            previous: Some(&first),
            session_name: "alice-1",
            gateway: &gateway(22),
            now: "2031-01-01T00:00:00Z".parse().expect("timestamp"),
            keys: &keys(),
            session: Some(&session(false)),
            pod: Some(&running),
            host_key: &host_key(),
        });

        assert_eq!(later, first);
    }

    #[test]
    fn non_default_port_is_in_command() {
        let status = build(&StatusInput {
            generation: Some(1),
            previous: None,
            session_name: "alice-1",
            gateway: &gateway(2022),
            now: now(),
            keys: &keys(),
            session: None,
            pod: None,
            host_key: &host_key(),
        });
        assert_eq!(
            status.command.as_deref(),
            Some("ssh -p 2022 alice-1@ssh.renku.example")
        );
        assert_eq!(status.endpoint.as_deref(), Some("ssh.renku.example:2022"));
    }

    #[test]
    fn blocked_status_has_only_ready() {
        let status = build_blocked(Some(2), None, reason::CONFLICT, "taken".to_owned(), now());

        assert_eq!(status.conditions.len(), 1);
        assert_eq!(condition(&status, READY).reason, reason::CONFLICT);
        assert_eq!(condition(&status, READY).status, status::FALSE);
        assert_eq!(status.accepted_key_count, Some(0));
    }
}
