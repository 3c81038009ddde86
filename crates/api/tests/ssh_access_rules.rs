//! The CEL rules (`x-kubernetes-validations`) of the SSHAccess CRD, evaluated offline with
//! kube-cel on the generated schema. The API server's own evaluation is covered by the
//! integration tests.

use api::SshAccess;
use api::ssh_access::{MAX_INLINE_KEYS, MAX_KEY_LINE_CHARS, MAX_KEY_SOURCES};
use kube::CustomResourceExt;
use kube::core::cel::{Validator, compile_schema};
use serde_json::{Value, json};

fn schema() -> Value {
    let crd = SshAccess::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("CRD has a schema")).expect("schema serialises")
}

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "ssh.renku.io/v1alpha1",
        "kind": "SSHAccess",
        "metadata": { "name": "alice-smith-0f3a9c2b7d41", "namespace": "renku" },
        "spec": spec,
    })
}

fn valid_spec() -> Value {
    json!({
        "sessionRef": { "name": "alice-smith-0f3a9c2b7d41" },
        "user": "4f7a6b1e-2c3d-4e5f-8a9b-0c1d2e3f4a5b",
        "authorizedKeys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKo7t5m1h3JQh2n2Yq0Ffa9H9r0aP3l1rZ0k0xgk laptop",
        ],
        "keysFrom": [
            { "secretRef": { "name": "team-keys", "key": "authorized_keys" } },
            { "userPreferences": {} },
        ],
        "deviceFlow": { "enabled": false },
        "forwarding": { "local": true, "remote": false, "agent": false },
        "expiresAt": "2030-01-01T00:00:00Z",
    })
}

/// Returns the messages of the rules that fail for `spec` (created, or updated from `old`).
fn failures(spec: Value, old: Option<Value>) -> Vec<String> {
    let old = old.map(object);
    match Validator::new().validate(&schema(), &object(spec), old.as_ref()) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|error| error.message.clone()).collect(),
    }
}

fn assert_single_failure(spec: Value, old: Option<Value>, expected: &str) {
    let messages = failures(spec, old);
    assert_eq!(
        messages.len(),
        1,
        "expected one failure containing {expected:?}: {messages:?}"
    );
    assert!(
        messages[0].contains(expected),
        "{messages:?} does not mention {expected:?}"
    );
}

#[test]
fn every_rule_compiles() {
    let compiled = compile_schema(&schema());

    let errors: Vec<String> = compiled
        .compilation_errors()
        .iter()
        .map(|error| error.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn valid_object_passes() {
    assert_eq!(failures(valid_spec(), None), Vec::<String>::new());
}

#[test]
fn minimal_object_passes() {
    let spec = json!({ "sessionRef": { "name": "s" }, "user": "u" });

    assert_eq!(failures(spec, None), Vec::<String>::new());
}

#[test]
fn session_ref_is_immutable() {
    let mut changed = valid_spec();
    changed["sessionRef"]["name"] = json!("bob-0123456789ab");

    assert_single_failure(changed, Some(valid_spec()), "sessionRef is immutable");
}

#[test]
fn other_fields_may_change() {
    let mut changed = valid_spec();
    changed["user"] = json!("0e0f0a0b-1111-2222-3333-444455556666");
    changed["authorizedKeys"] = json!([]);
    changed["forwarding"]["agent"] = json!(true);

    assert_eq!(failures(changed, Some(valid_spec())), Vec::<String>::new());
}

#[test]
fn key_source_needs_exactly_one_field() {
    let both = json!({ "secretRef": { "name": "team-keys" }, "userPreferences": {} });
    let neither = json!({});

    for entry in [both, neither] {
        let mut spec = valid_spec();
        spec["keysFrom"] = json!([entry]);
        assert_single_failure(spec, None, "exactly one of secretRef or userPreferences");
    }
}

#[test]
fn key_lines_must_be_single_lines() {
    for separator in ["\n", "\r"] {
        let mut spec = valid_spec();
        spec["authorizedKeys"] = json!([format!("ssh-ed25519 AAAA a{separator}ssh-rsa AAAA b")]);
        assert_single_failure(spec, None, "must be a single line");
    }
}

#[test]
fn session_name_must_be_dns_label() {
    for name in ["Alice", "alice_smith", "-alice", "alice-", "alice.smith"] {
        let mut spec = valid_spec();
        spec["sessionRef"]["name"] = json!(name);
        assert_single_failure(spec, None, "must be a DNS label");
    }
}

#[test]
fn user_must_not_contain_whitespace() {
    for user in ["alice smith", " alice", "alice\n"] {
        let mut spec = valid_spec();
        spec["user"] = json!(user);
        assert_single_failure(spec, None, "without whitespace");
    }
}

#[test]
fn secret_reference_syntax() {
    let mut bad_name = valid_spec();
    bad_name["keysFrom"] = json!([{ "secretRef": { "name": "Team_Keys" } }]);
    assert_single_failure(bad_name, None, "secretRef.name must be a Secret name");

    let mut bad_key = valid_spec();
    bad_key["keysFrom"] = json!([{ "secretRef": { "name": "team-keys", "key": "keys/extra" } }]);
    assert_single_failure(bad_key, None, "secretRef.key must be a Secret data key");

    let mut dotted = valid_spec();
    dotted["keysFrom"] =
        json!([{ "secretRef": { "name": "team.keys", "key": ".authorized_keys" } }]);
    assert_eq!(failures(dotted, None), Vec::<String>::new());
}

/// The API server rejects a CRD whose rules may cost too much, and it bounds that cost with
/// `maxItems` and `maxLength`. Every list and string that a rule iterates or scans must have one.
#[test]
fn rule_inputs_are_bounded() {
    let schema = schema();
    let spec = &schema["properties"]["spec"]["properties"];

    assert_eq!(spec["authorizedKeys"]["maxItems"], json!(MAX_INLINE_KEYS));
    assert_eq!(
        spec["authorizedKeys"]["items"]["maxLength"],
        json!(MAX_KEY_LINE_CHARS)
    );
    assert_eq!(spec["keysFrom"]["maxItems"], json!(MAX_KEY_SOURCES));
    assert_eq!(spec["user"]["maxLength"], json!(253));
    assert_eq!(
        spec["sessionRef"]["properties"]["name"]["maxLength"],
        json!(63)
    );
    let secret = &spec["keysFrom"]["items"]["properties"]["secretRef"]["properties"];
    assert_eq!(secret["name"]["maxLength"], json!(253));
    assert_eq!(secret["key"]["maxLength"], json!(253));
}

#[test]
fn schema_defaults() {
    let schema = schema();
    let spec = &schema["properties"]["spec"]["properties"];

    assert_eq!(spec["deviceFlow"]["default"], json!({ "enabled": true }));
    assert_eq!(
        spec["forwarding"]["default"],
        json!({ "local": true, "remote": true, "agent": true })
    );
    let secret = &spec["keysFrom"]["items"]["properties"]["secretRef"]["properties"];
    assert_eq!(secret["key"]["default"], json!("authorized_keys"));
    assert_eq!(
        schema["properties"]["spec"]["required"],
        json!(["sessionRef", "user"])
    );
}

#[test]
fn spec_has_no_nullable_fields() {
    let text = serde_json::to_string(&schema()["properties"]["spec"]).expect("serialises");

    assert!(
        !text.contains("nullable"),
        "spec schema allows null somewhere"
    );
}
