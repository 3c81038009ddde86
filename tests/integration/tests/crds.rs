//! The generated CRDs on the real API server: it accepts them as structural schemas, evaluates
//! their CEL rules with the documented messages, and keeps the AmaltheaSession fields that the
//! model does not know.

use api::{AmaltheaSession, SshAccess};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testkit::{TEST_FIELD_MANAGER, TestNamespace, connect, install_project_crds};

fn ssh_access(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn valid_spec() -> Value {
    json!({
        "sessionRef": { "name": "alice-0f3a9c2b7d41" },
        "user": "4f7a6b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
        "keysFrom": [{ "secretRef": { "name": "alice-keys" } }, { "userPreferences": {} }],
    })
}

/// Creates an SSHAccess and returns the API server's error message, if any.
async fn create_message(api: &Api<SshAccess>, name: &str, spec: Value) -> Option<String> {
    let object: SshAccess = match serde_json::from_value(ssh_access(name, spec)) {
        Ok(object) => object,
        Err(error) => return Some(format!("client-side: {error}")),
    };
    api.create(&PostParams::default(), &object)
        .await
        .err()
        .map(|error| error.to_string())
}

#[tokio::test]
async fn api_server_accepts_project_crds() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "crds").await?;
    let accesses: Api<SshAccess> = namespace.api();

    let message = create_message(&accesses, "valid", valid_spec()).await;
    assert_eq!(message, None);
    let created = accesses.get("valid").await?;
    assert_eq!(
        created.spec.keys_from[0]
            .secret_ref
            .as_ref()
            .map(|s| s.key.as_str()),
        Some("authorized_keys")
    );

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn api_server_enforces_cel_rules() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "crds").await?;
    let accesses: Api<SshAccess> = namespace.api();

    let mut both_sources = valid_spec();
    both_sources["keysFrom"] = json!([{ "secretRef": { "name": "keys" }, "userPreferences": {} }]);
    let message = create_message(&accesses, "both-sources", both_sources).await;
    let message = message.expect("two sources in one entry must be rejected");
    assert!(
        message.contains("exactly one of secretRef or userPreferences"),
        "{message}"
    );

    let mut spaced_user = valid_spec();
    spaced_user["user"] = json!("alice smith");
    let message = create_message(&accesses, "spaced-user", spaced_user).await;
    let message = message.expect("a user with whitespace must be rejected");
    assert!(message.contains("without whitespace"), "{message}");

    let mut two_lines = valid_spec();
    two_lines["authorizedKeys"] = json!(["ssh-ed25519 AAAA a\nssh-ed25519 AAAA b"]);
    let message = create_message(&accesses, "two-lines", two_lines).await;
    let message = message.expect("a key entry with a newline must be rejected");
    assert!(message.contains("single line"), "{message}");

    let mut bad_name = valid_spec();
    bad_name["sessionRef"]["name"] = json!("Alice_Session");
    let message = create_message(&accesses, "bad-name", bad_name).await;
    let message = message.expect("a session name that is not a DNS label must be rejected");
    assert!(message.contains("DNS label"), "{message}");

    // sessionRef is immutable once created.
    assert_eq!(
        create_message(&accesses, "moving", valid_spec()).await,
        None
    );
    let moved = json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": "moving" },
        "spec": { "sessionRef": { "name": "bob-0f3a9c2b7d41" } },
    });
    let error = accesses
        .patch(
            "moving",
            &PatchParams::apply(TEST_FIELD_MANAGER).force(),
            &Patch::Apply(&moved),
        )
        .await
        .expect_err("changing sessionRef must be rejected");
    assert!(
        error.to_string().contains("sessionRef is immutable"),
        "{error}"
    );

    namespace.delete_and_wait().await
}

#[tokio::test]
async fn amalthea_session_keeps_unknown_fields() -> anyhow::Result<()> {
    let client = connect().await?;
    install_project_crds(&client).await?;
    let namespace = TestNamespace::create(&client, "crds").await?;
    let sessions: Api<AmaltheaSession> = namespace.api();

    let object = json!({
        "apiVersion": "amalthea.dev/v1alpha1",
        "kind": "AmaltheaSession",
        "metadata": { "name": "alice-0f3a9c2b7d41" },
        "spec": {
            "hibernated": false,
            "session": {
                "image": "renku/renkulab-py:latest",
                "futureSessionField": { "nested": [1, 2, 3] },
            },
            "futureSpecField": "kept",
        },
    });
    let session: AmaltheaSession = serde_json::from_value(object)?;
    sessions.create(&PostParams::default(), &session).await?;

    // A read-modify-write through the model must not drop what the model does not know.
    let mut read = sessions.get("alice-0f3a9c2b7d41").await?;
    read.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("ssh.renku.io/enabled".to_string(), "true".to_string());
    sessions
        .replace("alice-0f3a9c2b7d41", &PostParams::default(), &read)
        .await?;

    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        namespace.name(),
        &kube::api::ApiResource::erase::<AmaltheaSession>(&()),
    );
    let stored = raw.get("alice-0f3a9c2b7d41").await?;
    assert_eq!(stored.data["spec"]["futureSpecField"], json!("kept"));
    assert_eq!(
        stored.data["spec"]["session"]["futureSessionField"]["nested"],
        json!([1, 2, 3])
    );
    assert_eq!(
        stored.metadata.annotations.unwrap_or_default()["ssh.renku.io/enabled"],
        "true"
    );

    namespace.delete_and_wait().await
}
