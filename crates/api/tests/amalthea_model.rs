//! The AmaltheaSession model reads real objects and writes them back without losing fields, and
//! the stand-in CRD keeps every field of such an object.

use api::amalthea::{
    AuthenticationType, ReconcileStrategy, SessionLocation, SessionState, SessionType,
};
use api::{AmaltheaSession, AmaltheaSessionSpec};
use kube::CustomResourceExt;
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("fixtures/amaltheasession.yaml");

fn fixture_value() -> Value {
    serde_yaml::from_str(FIXTURE).expect("fixture is valid YAML")
}

fn fixture_session() -> AmaltheaSession {
    serde_json::from_value(fixture_value()).expect("fixture deserialises into AmaltheaSession")
}

fn crd_schema() -> Value {
    let crd = AmaltheaSession::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("CRD has a schema")).expect("schema serialises")
}

#[test]
fn fixture_round_trips_losslessly() {
    let original = fixture_value();

    let session: AmaltheaSession = serde_json::from_value(original.clone()).expect("deserialises");
    let written = serde_json::to_value(&session).expect("serialises");

    assert_eq!(
        written,
        original,
        "{}",
        first_difference(&original, &written, "")
    );
}

#[test]
fn round_trip_through_yaml_text() {
    let session = fixture_session();

    let text = serde_yaml::to_string(&session).expect("serialises to YAML");
    let reread: AmaltheaSession = serde_yaml::from_str(&text).expect("reads its own YAML");

    assert_eq!(reread, session);
}

#[test]
fn unknown_fields_kept_at_each_level() {
    let session = fixture_session();
    let spec = &session.spec;
    let status = session.status.as_ref().expect("fixture has a status");

    let spec_unknown: Vec<&str> = spec.unknown_fields.keys().map(String::as_str).collect();
    assert_eq!(
        spec_unknown,
        ["codeRepositories", "dataSources", "imagePullSecrets"]
    );
    assert_eq!(spec.unknown_fields["dataSources"], json!([]));

    let session_unknown: Vec<&str> = spec
        .session
        .unknown_fields
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(session_unknown, ["futureSessionOption"]);

    let storage = spec.session.storage.as_ref().expect("fixture has storage");
    assert_eq!(storage.unknown_fields["snapshotPolicy"], json!("daily"));

    let authentication = spec
        .authentication
        .as_ref()
        .expect("fixture has authentication");
    assert_eq!(authentication.unknown_fields["cookieRefresh"], json!("1h"));

    let culling = spec.culling.as_ref().expect("fixture has culling");
    assert_eq!(culling.unknown_fields["graceDuration"], json!("5m"));

    let template = spec.template.as_ref().expect("fixture has a template");
    assert_eq!(
        template.unknown_fields["spec"],
        json!({ "hostUsers": false })
    );
    let template_metadata = template
        .metadata
        .as_ref()
        .expect("fixture has template metadata");
    assert_eq!(template_metadata.unknown_fields["finalizers"], json!([]));

    let status_unknown: Vec<&str> = status.unknown_fields.keys().map(String::as_str).collect();
    assert_eq!(status_unknown, ["failedSchedulingSince", "queuePosition"]);

    let counts = status
        .init_container_counts
        .as_ref()
        .expect("fixture has init counts");
    assert_eq!(counts.unknown_fields["skipped"], json!(0));

    let conditions = status.conditions.as_ref().expect("fixture has conditions");
    assert_eq!(conditions[0].unknown_fields["severity"], json!("Info"));
    assert!(conditions[1].unknown_fields.is_empty());
}

#[test]
fn known_fields_are_typed() {
    let session = fixture_session();
    let spec = &session.spec;

    assert_eq!(
        session.pod_name().as_deref(),
        Some("alice-smith-0f3a9c2b7d41-0")
    );
    assert_eq!(
        spec.session.image,
        "registry.renku.example/alice/analysis:0f3a9c2"
    );
    assert_eq!(spec.session.port(), 8888);
    assert_eq!(spec.session.run_as_user(), 1000);
    assert_eq!(spec.session.run_as_group(), 100);
    assert_eq!(spec.session.mount_path(), "/home/renku/work");
    assert_eq!(
        spec.session.working_dir.as_deref(),
        Some("/home/renku/work/analysis")
    );
    assert!(!spec.hibernated);
    assert_eq!(spec.location(), SessionLocation::Local);
    assert_eq!(spec.session_type(), SessionType::Interactive);
    assert_eq!(
        spec.reconcile_strategy(),
        ReconcileStrategy::WhenFailedOrHibernated
    );

    let env = spec.session.env.as_ref().expect("fixture has env");
    assert_eq!(env.len(), 3);
    let token = env[2]
        .value_from
        .as_ref()
        .and_then(|from| from.secret_key_ref.as_ref());
    assert_eq!(
        token.map(|selector| selector.key.as_str()),
        Some("access_token")
    );

    let mounts = spec
        .session
        .extra_volume_mounts
        .as_ref()
        .expect("fixture has mounts");
    assert_eq!(mounts[0].name, "renku-ca");

    let authentication = spec
        .authentication
        .as_ref()
        .expect("fixture has authentication");
    assert_eq!(authentication.type_, AuthenticationType::Oauth2Proxy);
    assert!(authentication.is_enabled());

    let status = session.status.as_ref().expect("fixture has a status");
    assert_eq!(status.state(), SessionState::Running);
    assert_eq!(status.run_id.as_deref(), Some("01J9ZR1X2Y3Z4A5B6C7D8E9F0G"));
    let counts = status
        .container_counts
        .as_ref()
        .expect("fixture has container counts");
    assert_eq!((counts.ready, counts.total), (Some(3), Some(3)));
}

#[test]
fn defaults_apply_to_minimal_spec() {
    let spec: AmaltheaSessionSpec = serde_json::from_value(json!({
        "hibernated": true,
        "session": { "image": "python:3.12" },
    }))
    .expect("minimal spec deserialises");

    assert_eq!(spec.session.port(), 8000);
    assert_eq!(spec.session.run_as_user(), 1000);
    assert_eq!(spec.session.run_as_group(), 1000);
    assert_eq!(spec.session.mount_path(), "/workspace");
    assert_eq!(spec.location(), SessionLocation::Local);
    assert_eq!(spec.session_type(), SessionType::Interactive);
    assert_eq!(spec.reconcile_strategy(), ReconcileStrategy::Always);
}

#[test]
fn minimal_spec_writes_back_only_what_was_read() {
    let original = json!({ "hibernated": false, "session": { "image": "python:3.12" } });

    let spec: AmaltheaSessionSpec = serde_json::from_value(original.clone()).expect("reads");

    assert_eq!(serde_json::to_value(&spec).expect("writes"), original);
}

#[test]
fn explicit_empty_values_stay_explicit() {
    let original = json!({
        "hibernated": false,
        "session": { "image": "i", "command": [], "env": [], "workingDir": "", "storage": {} },
        "culling": {},
        "extraContainers": [],
        "nodeSelector": {},
        "template": { "metadata": {} },
    });

    let spec: AmaltheaSessionSpec = serde_json::from_value(original.clone()).expect("reads");

    assert_eq!(serde_json::to_value(&spec).expect("writes"), original);
}

#[test]
fn unknown_enum_values_round_trip() {
    let mut original = fixture_value();
    original["spec"]["location"] = json!("edge");
    original["spec"]["reconcileStrategy"] = json!("onWeekends");
    original["spec"]["authentication"]["type"] = json!("saml");
    original["status"]["state"] = json!("Migrating");

    let session: AmaltheaSession = serde_json::from_value(original.clone()).expect("reads");

    assert_eq!(
        session.spec.location(),
        SessionLocation::Other("edge".to_owned())
    );
    assert_eq!(
        session.status.as_ref().map(|status| status.state()),
        Some(SessionState::Other("Migrating".to_owned()))
    );
    assert_eq!(serde_json::to_value(&session).expect("writes"), original);
}

#[test]
fn numeric_quantities_become_strings() {
    // k8s-openapi stores a quantity as its string form. The API server accepts both forms for
    // an int-or-string field, so the value means the same after the round trip.
    let mut original = fixture_value();
    original["spec"]["session"]["resources"]["limits"]["cpu"] = json!(2);

    let session: AmaltheaSession = serde_json::from_value(original).expect("reads");
    let written = serde_json::to_value(&session).expect("writes");

    assert_eq!(
        written["spec"]["session"]["resources"]["limits"]["cpu"],
        json!("2")
    );
}

#[test]
fn times_written_in_utc_seconds() {
    let mut original = fixture_value();
    original["spec"]["culling"]["lastInteraction"] = json!("2026-03-02T12:40:12.734+01:00");

    let session: AmaltheaSession = serde_json::from_value(original).expect("reads");
    let written = serde_json::to_value(&session).expect("writes");

    assert_eq!(
        written["spec"]["culling"]["lastInteraction"],
        json!("2026-03-02T11:40:12Z")
    );
}

#[test]
fn stand_in_crd_keeps_every_fixture_field() {
    let schema = crd_schema();
    let mut report = SchemaReport::default();

    report.walk(&fixture_value(), &schema, "", true);

    assert!(
        report.pruned.is_empty(),
        "the API server would prune: {:?}",
        report.pruned
    );
    assert!(
        report.invalid.is_empty(),
        "the API server would reject: {:?}",
        report.invalid
    );
}

#[test]
fn stand_in_crd_report_finds_problems() {
    // The checker itself must be able to fail: an unknown field where the schema keeps none
    // and a value of the wrong type are both found.
    let schema = crd_schema();
    let mut object = fixture_value();
    object["spec"]["session"]["env"][0]["futureEnvOption"] = json!(true);
    object["spec"]["session"]["port"] = json!("8888");
    object["spec"]["session"]["image"] = Value::Null;
    let mut report = SchemaReport::default();

    report.walk(&object, &schema, "", true);

    assert_eq!(report.pruned, [".spec.session.env[0].futureEnvOption"]);
    assert_eq!(report.invalid.len(), 2, "{:?}", report.invalid);
    assert!(
        report.invalid[0].starts_with(".spec.session.image:"),
        "{:?}",
        report.invalid
    );
    assert!(
        report.invalid[1].starts_with(".spec.session.port:"),
        "{:?}",
        report.invalid
    );
}

#[test]
fn stand_in_crd_matches_amalthea_identity() {
    let crd = AmaltheaSession::crd();

    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("amaltheasessions.amalthea.dev")
    );
    assert_eq!(crd.spec.group, "amalthea.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "AmaltheaSession");
    assert_eq!(crd.spec.names.plural, "amaltheasessions");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["ams".to_owned(), "amss".to_owned()])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let subresources = version.subresources.as_ref().expect("has subresources");
    assert!(subresources.status.is_some());

    let schema = crd_schema();
    let spec = &schema["properties"]["spec"];
    assert_eq!(spec["required"], json!(["hibernated", "session"]));
    assert_eq!(spec["properties"]["session"]["required"], json!(["image"]));
    let session = &spec["properties"]["session"]["properties"];
    assert_eq!(session["port"]["default"], json!(8000));
    assert_eq!(session["runAsUser"]["default"], json!(1000));
    assert_eq!(session["runAsGroup"]["default"], json!(1000));
    assert_eq!(
        session["storage"]["properties"]["mountPath"]["default"],
        json!("/workspace")
    );
    assert_eq!(spec["properties"]["hibernated"]["default"], json!(false));

    let immutable = json!([{ "rule": "self == oldSelf", "message": "location is immutable" }]);
    assert_eq!(
        spec["properties"]["location"]["x-kubernetes-validations"],
        immutable
    );
    let ingress_host = &spec["properties"]["ingress"]["properties"]["host"];
    assert_eq!(
        ingress_host["x-kubernetes-validations"][0]["rule"],
        json!("self == oldSelf")
    );
    let session_type = &spec["properties"]["sessionType"];
    assert_eq!(
        session_type["x-kubernetes-validations"][0]["rule"],
        json!("self == oldSelf")
    );
}

/// Walks an object along a CRD schema the way the API server prunes and validates it, and
/// records what it would drop and what it would reject. Covers types, `nullable`, `required`,
/// `enum`, properties, `additionalProperties`, `items` and the two `x-kubernetes` extensions
/// that change pruning; skips formats, patterns, bounds and CEL rules.
#[derive(Default)]
struct SchemaReport {
    pruned: Vec<String>,
    invalid: Vec<String>,
}

impl SchemaReport {
    fn walk(&mut self, value: &Value, schema: &Value, path: &str, root: bool) {
        if value.is_null() {
            if schema.get("nullable") != Some(&json!(true)) {
                self.invalid
                    .push(format!("{path}: null for a field that is not nullable"));
            }
            return;
        }
        if !type_matches(value, schema) {
            let expected = schema.get("type").unwrap_or(&Value::Null);
            self.invalid
                .push(format!("{path}: {value} does not match type {expected}"));
            return;
        }
        if let Some(Value::Array(allowed)) = schema.get("enum")
            && !allowed.contains(value)
        {
            self.invalid
                .push(format!("{path}: {value} is not one of {allowed:?}"));
        }
        match value {
            Value::Object(fields) => self.walk_object(fields, schema, path, root),
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (index, item) in items.iter().enumerate() {
                        self.walk(item, item_schema, &format!("{path}[{index}]"), false);
                    }
                }
            }
            _ => {}
        }
    }

    fn walk_object(
        &mut self,
        fields: &serde_json::Map<String, Value>,
        schema: &Value,
        path: &str,
        root: bool,
    ) {
        let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) && schema["properties"][name].get("default").is_none()
                {
                    self.invalid
                        .push(format!("{path}.{name}: required field missing"));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties").filter(|s| s.is_object());
        for (name, field) in fields {
            let field_path = format!("{path}.{name}");
            // The API server handles these at the root itself; ObjectMeta is not in the schema.
            if root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match (properties.and_then(|p| p.get(name)), additional) {
                (Some(field_schema), _) | (None, Some(field_schema)) => {
                    self.walk(field, field_schema, &field_path, false)
                }
                (None, None) if preserve => {}
                (None, None) => self.pruned.push(field_path),
            }
        }
    }
}

fn type_matches(value: &Value, schema: &Value) -> bool {
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        return value.is_string() || value.is_i64() || value.is_u64();
    }
    match schema.get("type").and_then(Value::as_str) {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(_) => false,
    }
}

/// Describes where two JSON values first differ, so a failed round trip names the field.
fn first_difference(expected: &Value, actual: &Value, path: &str) -> String {
    match (expected, actual) {
        (Value::Object(left), Value::Object(right)) => {
            for key in left.keys().chain(right.keys()) {
                let (l, r) = (left.get(key), right.get(key));
                if l != r {
                    return match (l, r) {
                        (Some(l), Some(r)) => first_difference(l, r, &format!("{path}.{key}")),
                        (Some(_), None) => format!("{path}.{key} was dropped"),
                        _ => format!("{path}.{key} was added"),
                    };
                }
            }
            format!("{path}: objects differ")
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => left
            .iter()
            .zip(right)
            .enumerate()
            .find(|(_, (l, r))| l != r)
            .map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]")))
            .unwrap_or_else(|| format!("{path}: arrays differ")),
        _ => format!("{path}: expected {expected}, got {actual}"),
    }
}
