//! Kubernetes Events for problems a user can act on: rejected keys, a failing key source, a
//! missing `renku.io/safe-username` label, a session pod without the SSH sidecar.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::names::FIELD_MANAGER;

/// Maximum size of an Event's note in bytes, as the events API allows.
const MAX_NOTE_BYTES: usize = 1024;

/// Publishes Warning Events on behalf of the operator.
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

/// Event reasons, in CamelCase as Kubernetes convention has them.
pub mod reason {
    /// Some key lines were rejected.
    pub const KEYS_REJECTED: &str = "KeysRejected";
    /// A key source cannot be read; the last good keys stay in use.
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    /// The session has no `renku.io/safe-username` label.
    pub const MISSING_SAFE_USERNAME: &str = "MissingSafeUsername";
    /// The session pod runs without the SSH sidecar.
    pub const SIDECAR_MISSING: &str = "SidecarMissing";
    /// Another SSHAccess already serves the session.
    pub const CONFLICT: &str = "Conflict";
    /// The host key Secret cannot be used.
    pub const HOST_KEY_INVALID: &str = "HostKeyInvalid";
    /// The SSHAccess spec is invalid.
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

impl EventPublisher {
    /// Creates a publisher that reports as `renku-ssh-operator` from `instance`.
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes a Warning Event about `object`. A failure is logged, never returned, because
    /// an Event is a courtesy and must not fail a reconcile.
    pub async fn warn(&self, object: &ObjectReference, reason: &str, action: &str, note: &str) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(truncate(note, MAX_NOTE_BYTES)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, object).await {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                reason,
                object = object.name.as_deref().unwrap_or_default(),
                "failed to publish an Event"
            );
        }
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_short_text() {
        assert_eq!(truncate("short", 10), "short");
    }

    #[test]
    fn truncate_cuts_at_char_boundary() {
        let text = "ü".repeat(600);
        let cut = truncate(&text, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert!(cut.ends_with('…'));
    }
}
