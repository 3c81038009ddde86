//! Connection and login limits: MaxConnectionsPerUser and a failed-login rate limit per source
//! address and per SSH user name, with exponential backoff.
//!
//! A block applies to failing logins only: a client that presents an accepted key logs in
//! even while its address or the session name is blocked, so that strangers who fail on
//! purpose cannot lock the owner out. A blocked client whose key fails gets no further
//! authentication methods on that connection.
//!
//! NOTE: the counters live in this replica's memory, so with several replicas behind a load
//! balancer each one enforces the limits on its own share of the connections. No connection
//! depends on this state for anything but being refused.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Number of tracked keys above which expired entries are swept on insert.
const SWEEP_THRESHOLD: usize = 10_000;

/// Failed-login record of one key (an address or a user name).
#[derive(Debug, Clone)]
struct Failures {
    /// Times of the failures inside the window.
    recent: Vec<Instant>,
    /// End of the current block, if any.
    blocked_until: Option<Instant>,
    /// Length of the last block, doubled for each failure while blocked.
    backoff: Duration,
}

/// Failed-login counters for one kind of key.
#[derive(Debug)]
struct FailureTable<K> {
    entries: HashMap<K, Failures>,
    max_failures: u32,
}

impl<K: Eq + Hash + Clone> FailureTable<K> {
    fn new(max_failures: u32) -> Self {
        Self {
            entries: HashMap::new(),
            max_failures,
        }
    }

    fn blocked_until(&self, key: &K, now: Instant) -> Option<Instant> {
        self.entries
            .get(key)
            .and_then(|entry| entry.blocked_until)
            .filter(|until| *until > now)
    }

    /// Records a failure of `key`; returns the length of the block when one starts or grows.
    fn record(&mut self, key: &K, now: Instant, limits: &Limits) -> Option<Duration> {
        if self.entries.len() > SWEEP_THRESHOLD {
            self.sweep(now, limits.failed_login_window);
        }
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Failures {
            recent: Vec::new(),
            blocked_until: None,
            backoff: Duration::ZERO,
        });
        entry
            .recent
            .retain(|time| now.duration_since(*time) < limits.failed_login_window);
        entry.recent.push(now);
        let still_blocked = entry.blocked_until.is_some_and(|until| until > now);
        if still_blocked {
            entry.backoff = (entry.backoff * 2).min(limits.max_login_backoff);
            entry.blocked_until = Some(now + entry.backoff);
            Some(entry.backoff)
        } else if entry.recent.len() >= self.max_failures as usize {
            entry.backoff = if entry.backoff.is_zero() {
                limits.login_backoff
            } else {
                (entry.backoff * 2).min(limits.max_login_backoff)
            };
            entry.blocked_until = Some(now + entry.backoff);
            entry.recent.clear();
            Some(entry.backoff)
        } else {
            None
        }
    }

    fn sweep(&mut self, now: Instant, window: Duration) {
        self.entries.retain(|_, entry| {
            let blocked = entry.blocked_until.is_some_and(|until| until > now);
            let recent = entry
                .recent
                .iter()
                .any(|time| now.duration_since(*time) < window);
            blocked || recent
        });
    }
}

/// Reason a login is rejected by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The source address is in backoff.
    AddressBlocked {
        /// Time left.
        remaining: Duration,
    },
    /// The SSH user name is in backoff.
    UserBlocked {
        /// Time left.
        remaining: Duration,
    },
}

/// Shared limit state of the gateway.
#[derive(Clone)]
pub struct LimitState {
    limits: Arc<Limits>,
    addresses: Arc<Mutex<FailureTable<IpAddr>>>,
    users: Arc<Mutex<FailureTable<String>>>,
    connections: Arc<Mutex<HashMap<String, u32>>>,
}

impl LimitState {
    /// Creates empty counters for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            addresses: Arc::new(Mutex::new(FailureTable::new(
                limits.max_failed_logins_per_address,
            ))),
            users: Arc::new(Mutex::new(FailureTable::new(
                limits.max_failed_logins_per_user,
            ))),
            connections: Arc::new(Mutex::new(HashMap::new())),
            limits: Arc::new(limits),
        }
    }

    /// Returns the configured limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Checks whether failing logins from `address` as `user` are currently blocked.
    pub fn check_login(&self, address: IpAddr, user: &str) -> Result<(), Refusal> {
        self.check_address(address)?;
        let now = Instant::now();
        let user_block = lock(&self.users).blocked_until(&user.to_owned(), now);
        if let Some(until) = user_block {
            return Err(Refusal::UserBlocked {
                remaining: until - now,
            });
        }
        Ok(())
    }

    /// Checks whether failing logins from `address` are currently blocked.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        let address_block = lock(&self.addresses).blocked_until(&address, now);
        match address_block {
            Some(until) => Err(Refusal::AddressBlocked {
                remaining: until - now,
            }),
            None => Ok(()),
        }
    }

    /// Records a failed login from `address` as `user`, and logs each block it starts.
    pub fn record_failure(&self, address: IpAddr, user: Option<&str>) {
        let now = Instant::now();
        if let Some(backoff) = lock(&self.addresses).record(&address, now, &self.limits) {
            tracing::info!(%address, ?backoff, "failed-login limit reached: failing logins from this address are blocked");
        }
        if let Some(user) = user
            && let Some(backoff) = lock(&self.users).record(&user.to_owned(), now, &self.limits)
        {
            tracing::info!(
                user,
                ?backoff,
                "failed-login limit reached: failing logins for this session name are blocked"
            );
        }
    }

    /// Takes a connection slot for `user` (an identity-provider subject); `None` when the user
    /// already has MaxConnectionsPerUser connections. The slot is released on drop.
    pub fn acquire_connection(&self, user: &str) -> Option<ConnectionSlot> {
        let mut connections = lock(&self.connections);
        let count = connections.entry(user.to_owned()).or_insert(0);
        if *count >= self.limits.max_connections_per_user {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            user: user.to_owned(),
            connections: Arc::clone(&self.connections),
        })
    }
}

/// A connection counted against MaxConnectionsPerUser until dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    user: String,
    connections: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut connections = lock(&self.connections);
        if let Some(count) = connections.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                connections.remove(&self.user);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_auth_tries: 6,
            login_grace_time: None,
            client_alive_interval: None,
            client_alive_count_max: 3,
            idle_timeout: None,
            max_connections_per_user: 2,
            max_failed_logins_per_address: 3,
            max_failed_logins_per_user: 5,
            failed_login_window: Duration::from_secs(60),
            login_backoff: Duration::from_secs(10),
            max_login_backoff: Duration::from_secs(40),
        }
    }

    fn address() -> IpAddr {
        "192.0.2.7".parse().expect("address")
    }

    #[test]
    fn address_blocked_after_max_failures() {
        let state = LimitState::new(limits());
        for _ in 0..2 {
            state.record_failure(address(), Some("s1"));
            assert_eq!(state.check_login(address(), "s1"), Ok(()));
        }
        state.record_failure(address(), Some("s1"));

        let refusal = state.check_login(address(), "other").expect_err("blocked");
        let Refusal::AddressBlocked { remaining } = refusal else {
            panic!("expected address block, got {refusal:?}");
        };
        assert!(remaining <= Duration::from_secs(10));
        assert!(remaining > Duration::from_secs(9));
        let other: IpAddr = "192.0.2.8".parse().expect("address");
        assert_eq!(state.check_login(other, "s2"), Ok(()));
    }

    #[test]
    fn user_blocked_across_addresses() {
        let state = LimitState::new(limits());
        for index in 0..5u8 {
            let address = IpAddr::from([198, 51, 100, index]);
            state.record_failure(address, Some("s1"));
        }

        let fresh: IpAddr = "203.0.113.1".parse().expect("address");
        assert!(matches!(
            state.check_login(fresh, "s1"),
            Err(Refusal::UserBlocked { .. })
        ));
        assert_eq!(state.check_login(fresh, "s2"), Ok(()));
    }

    #[test]
    fn backoff_doubles_while_blocked_up_to_max() {
        let limits = limits();
        let mut table = FailureTable::new(1);
        let start = Instant::now();
        table.record(&"k", start, &limits);
        assert_eq!(
            table.blocked_until(&"k", start),
            Some(start + Duration::from_secs(10))
        );
        table.record(&"k", start, &limits);
        assert_eq!(
            table.blocked_until(&"k", start),
            Some(start + Duration::from_secs(20))
        );
        table.record(&"k", start, &limits);
        table.record(&"k", start, &limits);
        assert_eq!(
            table.blocked_until(&"k", start),
            Some(start + Duration::from_secs(40))
        );
    }

    #[test]
    fn block_expires() {
        let limits = limits();
        let mut table = FailureTable::new(1);
        let start = Instant::now();
        table.record(&"k", start, &limits);
        assert_eq!(
            table.blocked_until(&"k", start + Duration::from_secs(11)),
            None
        );
    }

    #[test]
    fn connection_slots_are_limited_and_released() {
        let state = LimitState::new(limits());
        let first = state.acquire_connection("alice").expect("slot");
        let _second = state.acquire_connection("alice").expect("slot");
        assert!(state.acquire_connection("alice").is_none());
        assert!(state.acquire_connection("bob").is_some());

        drop(first);
        assert!(state.acquire_connection("alice").is_some());
    }
}
