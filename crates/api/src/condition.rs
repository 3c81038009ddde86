//! Condition types of `SSHAccess` status and a helper that updates a condition list.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Condition type: the user can log in with the command in `status.command`.
pub const READY: &str = "Ready";
/// Condition type: `authorized_keys` in the session's key Secret matches the key sources.
pub const KEYS_SYNCED: &str = "KeysSynced";
/// Condition type: the session pod runs the SSH sidecar.
pub const SIDECAR_INJECTED: &str = "SidecarInjected";
/// Condition type: the Service and NetworkPolicy that let the gateway reach the sidecar exist.
pub const ROUTABLE: &str = "Routable";

/// Condition status values, as Kubernetes defines them for `metav1.Condition`.
pub mod status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// The controller cannot tell yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// Inserts `condition` into `conditions`, replacing the entry of the same type.
///
/// When the replaced entry has the same status, its `lastTransitionTime` is kept, because the
/// condition did not transition. Reason, message and observed generation always come from
/// `condition`. Entries of other types keep their order, and a new type is appended.
/// Returns `true` when the list changed, so a caller can skip a status write that would
/// change nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    let Some(existing) = conditions.iter_mut().find(|c| c.type_ == condition.type_) else {
        conditions.push(condition);
        return true;
    };
    if existing.status == condition.status {
        condition.last_transition_time = existing.last_transition_time.clone();
    }
    if *existing == condition {
        return false;
    }
    *existing = condition;
    true
}

/// Returns the condition of type `type_`, if the list has one.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Returns `true` when the list has a condition of type `type_` with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == status::TRUE)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    fn condition(type_: &str, status: &str, reason: &str, at: i64) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            last_transition_time: time(at),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn set_condition_appends_new_type() {
        let mut conditions = vec![condition(READY, status::FALSE, "Pending", 10)];

        let changed = set_condition(&mut conditions, condition(ROUTABLE, status::TRUE, "Ok", 20));

        assert!(changed);
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].type_, READY);
        assert_eq!(conditions[1].type_, ROUTABLE);
        assert_eq!(conditions[1].last_transition_time, time(20));
    }

    #[test]
    fn same_status_keeps_transition_time() {
        let mut conditions = vec![condition(READY, status::FALSE, "Pending", 10)];

        let mut update = condition(READY, status::FALSE, "SidecarMissing", 99);
        update.observed_generation = Some(2);
        let changed = set_condition(&mut conditions, update);

        assert!(changed);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, time(10));
        assert_eq!(conditions[0].reason, "SidecarMissing");
        assert_eq!(conditions[0].message, "SidecarMissing message");
        assert_eq!(conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn status_change_takes_new_transition_time() {
        let mut conditions = vec![condition(READY, status::FALSE, "Pending", 10)];

        let changed = set_condition(&mut conditions, condition(READY, status::TRUE, "Ok", 30));

        assert!(changed);
        assert_eq!(conditions[0].status, status::TRUE);
        assert_eq!(conditions[0].last_transition_time, time(30));
    }

    #[test]
    fn identical_condition_reports_no_change() {
        let mut conditions = vec![
            condition(READY, status::TRUE, "Ok", 10),
            condition(KEYS_SYNCED, status::TRUE, "Synced", 10),
        ];
        let before = conditions.clone();

        // A later timestamp alone is no transition, so nothing changes.
        let changed = set_condition(&mut conditions, condition(READY, status::TRUE, "Ok", 50));

        assert!(!changed);
        assert_eq!(conditions, before);
    }

    #[test]
    fn replacement_keeps_order_of_others() {
        let mut conditions = vec![
            condition(READY, status::FALSE, "Pending", 10),
            condition(KEYS_SYNCED, status::TRUE, "Synced", 10),
            condition(SIDECAR_INJECTED, status::FALSE, "PodMissing", 10),
        ];

        set_condition(
            &mut conditions,
            condition(KEYS_SYNCED, status::FALSE, "SecretMissing", 40),
        );

        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, KEYS_SYNCED, SIDECAR_INJECTED]);
        assert_eq!(conditions[1].reason, "SecretMissing");
        assert_eq!(conditions[1].last_transition_time, time(40));
    }

    #[test]
    fn condition_lookup_helpers() {
        let conditions = vec![
            condition(READY, status::TRUE, "Ok", 10),
            condition(ROUTABLE, status::UNKNOWN, "Waiting", 10),
        ];

        assert!(is_condition_true(&conditions, READY));
        assert!(!is_condition_true(&conditions, ROUTABLE));
        assert!(!is_condition_true(&conditions, KEYS_SYNCED));
        assert_eq!(
            find_condition(&conditions, ROUTABLE).map(|c| c.reason.as_str()),
            Some("Waiting")
        );
        assert!(find_condition(&conditions, SIDECAR_INJECTED).is_none());
    }
}
