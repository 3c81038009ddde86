//! Shared parts of the tests against the Keycloak that `scripts/keycloak.sh start` runs: its
//! settings, an admin API client, a browser stand-in and a TCP relay.

#![allow(dead_code)]

pub mod admin;
pub mod browser;
pub mod relay;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Settings written by `scripts/keycloak.sh start` to `<run>/keycloak/env`.
#[derive(Debug, Clone)]
pub struct Keycloak {
    pub url: String,
    pub issuer: String,
    pub realm: String,
    pub admin_username: String,
    pub admin_password: String,
    pub cli_client_id: String,
    pub operator_client_id: String,
    pub operator_client_secret: String,
    pub alice: User,
    pub bob: User,
}

#[derive(Debug, Clone)]
pub struct User {
    pub username: String,
    pub password: String,
}

impl Keycloak {
    /// Returns a provider for the test realm.
    pub fn provider(&self) -> Arc<oidc::Provider> {
        Arc::new(oidc::Provider::new(&self.issuer).expect("issuer URL from the env file is valid"))
    }
}

fn env_file() -> PathBuf {
    let run = match std::env::var_os("RENKU_SSH_RUN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.run"),
    };
    run.join("keycloak/env")
}

/// Reads the settings of the running Keycloak and checks that it responds.
///
/// Panics, failing the test, when Keycloak was not started or no longer responds.
pub async fn keycloak() -> Keycloak {
    let path = env_file();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "Keycloak is not running ({}: {error}); start it with `scripts/keycloak.sh start`",
            path.display()
        )
    });
    let values: HashMap<&str, &str> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let get = |key: &str| -> String {
        values
            .get(key)
            .unwrap_or_else(|| {
                panic!(
                    "{} lacks {key}; run `scripts/keycloak.sh start` again",
                    path.display()
                )
            })
            .to_string()
    };
    let keycloak = Keycloak {
        url: get("KEYCLOAK_URL"),
        issuer: get("KEYCLOAK_ISSUER"),
        realm: get("KEYCLOAK_REALM"),
        admin_username: get("KEYCLOAK_ADMIN_USERNAME"),
        admin_password: get("KEYCLOAK_ADMIN_PASSWORD"),
        cli_client_id: get("KEYCLOAK_CLI_CLIENT_ID"),
        operator_client_id: get("KEYCLOAK_OPERATOR_CLIENT_ID"),
        operator_client_secret: get("KEYCLOAK_OPERATOR_CLIENT_SECRET"),
        alice: User {
            username: get("KEYCLOAK_USER_ALICE"),
            password: get("KEYCLOAK_USER_ALICE_PASSWORD"),
        },
        bob: User {
            username: get("KEYCLOAK_USER_BOB"),
            password: get("KEYCLOAK_USER_BOB_PASSWORD"),
        },
    };

    let discovery = format!("{}/.well-known/openid-configuration", keycloak.issuer);
    if let Err(error) = reqwest::get(&discovery)
        .await
        .and_then(|r| r.error_for_status())
    {
        panic!(
            "Keycloak does not respond at {discovery} ({error}); {} is stale. \
             Start it with `scripts/keycloak.sh start`",
            path.display()
        );
    }
    keycloak
}

/// Serialises tests that change realm or client settings against the tests that depend on
/// them. Tests in this binary run in parallel threads, so this lock spans all of them.
static REALM_SETTINGS: RwLock<()> = RwLock::const_new(());

/// Taken by a test that relies on the realm's settings as imported.
pub async fn shared_realm() -> RwLockReadGuard<'static, ()> {
    REALM_SETTINGS.read().await
}

/// Taken by a test that changes realm or client settings and restores them before it ends.
pub async fn exclusive_realm() -> RwLockWriteGuard<'static, ()> {
    REALM_SETTINGS.write().await
}
