//! Key sources on the real API server: inline keys, referenced Secrets and the
//! user-preferences API reach the keys Secret in place, bad keys are listed with their reason,
//! and a failing source keeps the last good keys.

mod operator_support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use operator_support::user_preferences::{
    Keycloak, UserPreferencesServer, assert_authorized_request,
};
use operator_support::*;
use serde_json::json;

const USER: &str = "user-4f7a6b1e";

async fn wait_for_event(
    events: &Api<Event>,
    regarding: &str,
    reason: &str,
) -> anyhow::Result<Event> {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let found = events
            .list(&ListParams::default())
            .await?
            .into_iter()
            .find(|event| {
                event.reason.as_deref() == Some(reason)
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
            });
        if let Some(event) = found {
            return Ok(event);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no {reason} Event about {regarding}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn inline_and_secret_edits_update_keys_in_place() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-edit").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let inline_key = ssh_keygen(dir.path(), "inline", "ed25519", None);
    let team_key = ssh_keygen(dir.path(), "team", "ed25519", None);
    let team_key_2 = ssh_keygen(dir.path(), "team2", "ecdsa", Some(256));
    let operator = RunningOperator::start_in(&client, &ns, "a", &[]).await?;
    running_session(
        &client,
        &ns,
        "ivy-1",
        &SessionOptions::default(),
        "10.4.0.2",
    )
    .await?;
    wait_for_access(&client, &ns, "ivy-1", |a| condition_is(a, "Ready", "True")).await?;
    let original = wait_for_keys(&client, &ns, "ivy-1", |_| true).await?;
    let workload_before = session_workload(&client, &ns, "ivy-1").await?;

    // Inline edit of the operator-made SSHAccess: the operator does not own authorizedKeys.
    patch_access_spec(
        &client,
        &ns,
        "ivy-1",
        json!({ "authorizedKeys": [inline_key] }),
    )
    .await?;
    let secret = wait_for_keys(&client, &ns, "ivy-1", |keys| keys.contains(&inline_key)).await?;
    assert_eq!(secret.uid(), original.uid());

    // A referenced Secret, then an edit of that Secret.
    put_key_secret(&client, &ns, "team-keys", &format!("# team\n{team_key}\n")).await?;
    patch_access_spec(
        &client,
        &ns,
        "ivy-1",
        json!({ "keysFrom": [{ "secretRef": { "name": "team-keys" } }] }),
    )
    .await?;
    let secret = wait_for_keys(&client, &ns, "ivy-1", |keys| keys.contains(&team_key)).await?;
    assert_eq!(secret.uid(), original.uid());
    put_key_secret(&client, &ns, "team-keys", &format!("{team_key_2}\n")).await?;
    let secret = wait_for_keys(&client, &ns, "ivy-1", |keys| {
        keys.contains(&team_key_2) && !keys.contains(&team_key) && keys.contains(&inline_key)
    })
    .await?;
    assert_eq!(secret.uid(), original.uid());

    // Removing the inline key removes it from the file.
    patch_access_spec(&client, &ns, "ivy-1", json!({ "authorizedKeys": null })).await?;
    let secret = wait_for_keys(&client, &ns, "ivy-1", |keys| !keys.contains(&inline_key)).await?;
    assert_eq!(secret.uid(), original.uid());
    let access = wait_for_access(&client, &ns, "ivy-1", |a| {
        observed_current(a)
            && a.status
                .as_ref()
                .is_some_and(|s| s.accepted_keys.len() == 1)
    })
    .await?;
    let accepted = &access.status.expect("status").accepted_keys[0];
    assert_eq!(accepted.source, "secret:team-keys/authorized_keys");
    assert_eq!(accepted.fingerprint, fingerprint(dir.path(), &team_key_2));

    assert_eq!(
        session_workload(&client, &ns, "ivy-1").await?,
        workload_before
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn bad_keys_are_listed_with_reasons() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-badkeys").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let good: Vec<String> = (0..3)
        .map(|i| ssh_keygen(dir.path(), &format!("good{i}"), "ed25519", None))
        .collect();
    let extra = ssh_keygen(dir.path(), "extra", "ed25519", None);
    let dsa = ssh_keygen(dir.path(), "dsa", "dsa", None);
    let short_rsa = ssh_keygen(dir.path(), "short", "rsa", Some(1024));
    let with_options = format!("no-pty,command=\"/bin/true\" {}", good[0]);
    let blob = good[1].split(' ').nth(1).unwrap_or_default().to_owned();
    let bad_base64 = format!("ssh-ed25519 {}!!!! broken", &blob[..20]);
    let control = format!("{}\u{7}", good[2]);
    let operator = RunningOperator::start_in(
        &client,
        &ns,
        "a",
        &["--ssh-policy", "explicit", "--max-keys-per-user", "3"],
    )
    .await?;
    running_session(
        &client,
        &ns,
        "jack-1",
        &SessionOptions::default(),
        "10.4.0.3",
    )
    .await?;

    let lines = vec![
        good[0].clone(),
        with_options,
        dsa,
        good[1].clone(),
        short_rsa,
        bad_base64,
        control,
        good[2].clone(),
        extra.clone(),
    ];
    create_access(
        &client,
        &ns,
        "jack-1",
        json!({
            "sessionRef": { "name": "jack-1" },
            "user": USER,
            "authorizedKeys": lines,
        }),
    )
    .await?;
    let access = wait_for_access(&client, &ns, "jack-1", |a| {
        a.status
            .as_ref()
            .is_some_and(|s| !s.rejected_keys.is_empty())
    })
    .await?;
    let status = access.status.clone().expect("status");

    let accepted: Vec<String> = status
        .accepted_keys
        .iter()
        .map(|k| k.fingerprint.clone())
        .collect();
    let expected: Vec<String> = good
        .iter()
        .map(|key| fingerprint(dir.path(), key))
        .collect();
    assert_eq!(accepted, expected);
    let rejected: Vec<(i32, String)> = status
        .rejected_keys
        .iter()
        .map(|r| {
            (
                r.line,
                r.reason.split(':').next().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rejected,
        [
            (2, "OptionsNotSupported".to_owned()),
            (3, "DsaNotSupported".to_owned()),
            (5, "RsaKeyTooSmall".to_owned()),
            (6, "InvalidBase64".to_owned()),
            (7, "ControlCharacter".to_owned()),
            (9, "TooManyKeys".to_owned()),
        ]
    );
    for rejected in &status.rejected_keys {
        assert_eq!(rejected.source, "authorizedKeys");
        assert!(
            rejected
                .preview
                .as_ref()
                .is_some_and(|p| p.chars().count() <= 40)
        );
    }
    assert!(
        !status.rejected_keys[0]
            .preview
            .clone()
            .unwrap_or_default()
            .contains("/bin/true")
    );
    let keys = wait_for_keys(&client, &ns, "jack-1", |_| true).await?;
    let text = authorized_keys(&keys);
    for key in &good {
        assert!(text.contains(key.as_str()), "{text}");
    }
    assert!(!text.contains(&extra));
    assert!(!text.contains("no-pty"));
    let (synced, _, message) = condition(&access, "KeysSynced").expect("KeysSynced");
    assert_eq!(synced, "True");
    assert!(message.contains("6 line(s) rejected"), "{message}");
    let event = wait_for_event(&namespace.api(), "jack-1", "KeysRejected").await?;
    assert!(
        event
            .note
            .unwrap_or_default()
            .contains("6 key line(s) rejected")
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn secret_source_down_keeps_last_good_keys() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-secretdown").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let first = ssh_keygen(dir.path(), "first", "ed25519", None);
    let second = ssh_keygen(dir.path(), "second", "rsa", Some(3072));
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    running_session(
        &client,
        &ns,
        "kim-1",
        &SessionOptions::default(),
        "10.4.0.4",
    )
    .await?;
    put_key_secret(&client, &ns, "team-keys", &format!("{first}\n{second}\n")).await?;
    create_access(
        &client,
        &ns,
        "kim-1",
        json!({
            "sessionRef": { "name": "kim-1" },
            "user": USER,
            "keysFrom": [{ "secretRef": { "name": "team-keys" } }],
        }),
    )
    .await?;
    let ready =
        wait_for_access(&client, &ns, "kim-1", |a| condition_is(a, "Ready", "True")).await?;
    let keys_before = authorized_keys(&wait_for_keys(&client, &ns, "kim-1", |_| true).await?);
    let accepted_before = ready.status.clone().expect("status").accepted_keys;
    assert_eq!(accepted_before.len(), 2);

    namespace
        .api::<Secret>()
        .delete("team-keys", &DeleteParams::default())
        .await?;
    let failing = wait_for_access(&client, &ns, "kim-1", |a| {
        condition_is(a, "KeysSynced", "False")
    })
    .await?;
    let (_, reason, message) = condition(&failing, "KeysSynced").expect("KeysSynced");
    assert_eq!(reason, "SourceUnavailable");
    assert!(
        message.contains("secret:team-keys/authorized_keys"),
        "{message}"
    );
    assert!(message.contains("not found"), "{message}");
    assert!(message.contains("2 last good key"), "{message}");
    assert_eq!(
        failing.status.clone().expect("status").accepted_keys,
        accepted_before
    );
    assert_eq!(
        authorized_keys(&wait_for_keys(&client, &ns, "kim-1", |_| true).await?),
        keys_before
    );
    wait_for_event(&namespace.api(), "kim-1", "SourceUnavailable").await?;

    // A restart during the outage still keeps the keys: they are recovered from the status
    // and the keys Secret.
    operator.stop().await?;
    let restarted =
        RunningOperator::start_in(&client, &ns, "b", &["--ssh-policy", "explicit"]).await?;
    patch_access_spec(
        &client,
        &ns,
        "kim-1",
        json!({ "deviceFlow": { "enabled": false } }),
    )
    .await?;
    let after_restart = wait_for_access(&client, &ns, "kim-1", observed_current).await?;
    assert_eq!(
        after_restart.status.clone().expect("status").accepted_keys,
        accepted_before
    );
    assert_eq!(
        authorized_keys(&wait_for_keys(&client, &ns, "kim-1", |_| true).await?),
        keys_before
    );

    put_key_secret(&client, &ns, "team-keys", &format!("{second}\n")).await?;
    wait_for_keys(&client, &ns, "kim-1", |keys| {
        keys.contains(&second) && !keys.contains(&first)
    })
    .await?;
    wait_for_access(&client, &ns, "kim-1", |a| {
        condition_is(a, "KeysSynced", "True")
    })
    .await?;
    restarted.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn expired_access_empties_keys() -> anyhow::Result<()> {
    let (client, namespace) = setup("op-expiry").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let key = ssh_keygen(dir.path(), "key", "ed25519", None);
    let operator =
        RunningOperator::start_in(&client, &ns, "a", &["--ssh-policy", "explicit"]).await?;
    running_session(
        &client,
        &ns,
        "liam-1",
        &SessionOptions::default(),
        "10.4.0.5",
    )
    .await?;
    let expires_at =
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(6);
    create_access(
        &client,
        &ns,
        "liam-1",
        json!({
            "sessionRef": { "name": "liam-1" },
            "user": USER,
            "authorizedKeys": [key],
            "expiresAt": expires_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }),
    )
    .await?;
    wait_for_access(&client, &ns, "liam-1", |a| condition_is(a, "Ready", "True")).await?;
    let before = wait_for_keys(&client, &ns, "liam-1", |keys| keys.contains(&key)).await?;

    let expired = wait_for_access(&client, &ns, "liam-1", |a| {
        condition(a, "Ready")
            .is_some_and(|(status, reason, _)| status == "False" && reason == "Expired")
    })
    .await?;
    let after = wait_for_keys(&client, &ns, "liam-1", |keys| !keys.contains(&key)).await?;
    assert_eq!(after.uid(), before.uid());
    assert!(authorized_keys(&after).starts_with("# This SSH access expired at"));
    assert_eq!(expired.status.expect("status").accepted_key_count, Some(0));
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn user_preferences_change_and_refresh() -> anyhow::Result<()> {
    let keycloak = Keycloak::from_env_file()?;
    let (client, namespace) = setup("op-userprefs").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let first = ssh_keygen(dir.path(), "first", "ed25519", None);
    let second = ssh_keygen(dir.path(), "second", "ed25519", None);
    let server = UserPreferencesServer::start(&keycloak).await?;
    server.set_keys(USER, &[&first]);
    let secret_file = keycloak.write_secret_file(dir.path())?;
    let refresh_token = dir.path().join("refresh-token");
    std::fs::write(&refresh_token, "refresh-test-token\n")?;
    let url = server.url_template();
    let operator = RunningOperator::start_in(
        &client,
        &ns,
        "a",
        &[
            "--user-preferences-url",
            &url,
            "--user-preferences-issuer",
            &keycloak.issuer,
            "--user-preferences-client-id",
            &keycloak.client_id,
            "--user-preferences-client-secret-file",
            secret_file.to_str().unwrap_or_default(),
            "--user-preferences-poll-interval",
            "1h",
            "--refresh-token-file",
            refresh_token.to_str().unwrap_or_default(),
        ],
    )
    .await?;
    running_session(
        &client,
        &ns,
        "mia-1",
        &SessionOptions::default(),
        "10.4.0.6",
    )
    .await?;

    let access =
        wait_for_access(&client, &ns, "mia-1", |a| condition_is(a, "Ready", "True")).await?;
    assert!(access.spec.keys_from[0].user_preferences.is_some());
    let original = wait_for_keys(&client, &ns, "mia-1", |keys| keys.contains(&first)).await?;
    assert_authorized_request(&server, USER)?;
    let workload_before = session_workload(&client, &ns, "mia-1").await?;

    server.set_keys(USER, &[&second]);
    let http = reqwest::Client::new();
    let refresh_url = format!("http://{}/refresh/users/{USER}", operator.admin);
    let response = http
        .post(&refresh_url)
        .bearer_auth("refresh-test-token")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["changed"], json!(true), "{body}");
    assert_eq!(body["keys"], json!(1), "{body}");
    let updated = wait_for_keys(&client, &ns, "mia-1", |keys| {
        keys.contains(&second) && !keys.contains(&first)
    })
    .await?;
    assert_eq!(updated.uid(), original.uid());
    let access = wait_for_access(&client, &ns, "mia-1", |a| {
        a.status.as_ref().is_some_and(|s| {
            s.accepted_keys.len() == 1 && s.accepted_keys[0].source == "userPreferences"
        })
    })
    .await?;
    assert_eq!(
        access.status.expect("status").accepted_keys[0].fingerprint,
        fingerprint(dir.path(), &second)
    );

    // An unchanged refresh gets 304 from the API, because the operator sends the entity tag.
    let response = http
        .post(&refresh_url)
        .bearer_auth("refresh-test-token")
        .send()
        .await?;
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["changed"], json!(false), "{body}");
    let last = server.requests().last().cloned().expect("a request");
    assert_eq!(last.status, 304);
    assert_eq!(last.if_none_match.as_deref(), Some("\"v2\""));

    let response = http.post(&refresh_url).bearer_auth("wrong").send().await?;
    assert_eq!(response.status().as_u16(), 401);
    let response = http.post(&refresh_url).send().await?;
    assert_eq!(response.status().as_u16(), 401);
    let unknown = format!("http://{}/refresh/users/nobody", operator.admin);
    let response = http
        .post(&unknown)
        .bearer_auth("refresh-test-token")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);

    assert_eq!(
        session_workload(&client, &ns, "mia-1").await?,
        workload_before
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}

#[tokio::test]
async fn user_preferences_polling_and_outage() -> anyhow::Result<()> {
    let keycloak = Keycloak::from_env_file()?;
    let (client, namespace) = setup("op-userpoll").await?;
    let ns = namespace.name().to_owned();
    let dir = tempfile::tempdir()?;
    let first = ssh_keygen(dir.path(), "first", "ed25519", None);
    let second = ssh_keygen(dir.path(), "second", "ed25519", None);
    let server = UserPreferencesServer::start(&keycloak).await?;
    server.set_keys(USER, &[&first]);
    let secret_file = keycloak.write_secret_file(dir.path())?;
    let url = server.url_template();
    let token_endpoint = keycloak.token_endpoint();
    let operator = RunningOperator::start_in(
        &client,
        &ns,
        "a",
        &[
            "--user-preferences-url",
            &url,
            "--user-preferences-token-endpoint",
            &token_endpoint,
            "--user-preferences-client-id",
            &keycloak.client_id,
            "--user-preferences-client-secret-file",
            secret_file.to_str().unwrap_or_default(),
            "--user-preferences-poll-interval",
            "1s",
        ],
    )
    .await?;
    running_session(
        &client,
        &ns,
        "noah-1",
        &SessionOptions::default(),
        "10.4.0.7",
    )
    .await?;
    wait_for_keys(&client, &ns, "noah-1", |keys| keys.contains(&first)).await?;

    // A change reaches the session at the next poll.
    server.set_keys(USER, &[&first, &second]);
    let keys_before = wait_for_keys(&client, &ns, "noah-1", |keys| keys.contains(&second)).await?;

    // An outage keeps the last good keys and reports it.
    server.fail_with(Some(503));
    let failing = wait_for_access(&client, &ns, "noah-1", |a| {
        condition_is(a, "KeysSynced", "False")
    })
    .await?;
    let (_, reason, message) = condition(&failing, "KeysSynced").expect("KeysSynced");
    assert_eq!(reason, "SourceUnavailable");
    assert!(message.contains("userPreferences"), "{message}");
    assert!(message.contains("503"), "{message}");
    assert!(message.contains("2 last good key"), "{message}");
    let during = wait_for_keys(&client, &ns, "noah-1", |_| true).await?;
    assert_eq!(authorized_keys(&during), authorized_keys(&keys_before));
    wait_for_event(&namespace.api(), "noah-1", "SourceUnavailable").await?;

    // Recovery, with a removed key.
    server.set_keys(USER, &[&second]);
    server.fail_with(None);
    wait_for_keys(&client, &ns, "noah-1", |keys| {
        keys.contains(&second) && !keys.contains(&first)
    })
    .await?;
    wait_for_access(&client, &ns, "noah-1", |a| {
        condition_is(a, "KeysSynced", "True")
    })
    .await?;
    assert!(
        server.requests().iter().all(|request| request.authorized),
        "{:?}",
        server.requests()
    );
    operator.stop().await?;
    namespace.delete_and_wait().await
}
