//! Both CRDs satisfy the rules the Kubernetes API server applies to a CRD schema before it
//! accepts the CRD: the structural-schema rules and the checks on the `x-kubernetes-*`
//! extensions.
//!
//! The rules follow the Kubernetes source of apiextensions-apiserver:
//! `pkg/apiserver/schema/validation.go`, `pkg/apiserver/schema/convert.go` and
//! `pkg/apis/apiextensions/validation/validation.go`. This check runs offline. Installing the
//! CRDs into a real API server is the job of the integration tests.

use api::crd_files;
use serde_json::{Value, json};

#[test]
fn committed_crds_are_structural() {
    let dir = crd_files::default_dir();

    for file in crd_files::generate().expect("CRDs render") {
        let text = std::fs::read_to_string(dir.join(&file.file_name)).expect("CRD file exists");
        let crd: Value = serde_yaml::from_str(&text).expect("CRD file is YAML");
        let errors = check_crd(&crd);
        assert!(
            errors.is_empty(),
            "{} is not structural:\n{}",
            file.file_name,
            errors.join("\n")
        );
    }
}

#[test]
fn printer_columns_and_selectable_fields_resolve() {
    for crd in crd_files::crds() {
        let crd = serde_json::to_value(&crd).expect("CRD serialises");
        let name = crd["metadata"]["name"].clone();
        for version in crd["spec"]["versions"].as_array().expect("versions") {
            let schema = &version["schema"]["openAPIV3Schema"];
            let columns = version["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten();
            for column in columns {
                let path = column["jsonPath"].as_str().expect("column jsonPath");
                assert!(
                    resolve(schema, path).is_some(),
                    "{name}: column path {path} not found"
                );
            }
            let fields = version["selectableFields"].as_array().into_iter().flatten();
            for field in fields {
                let path = field["jsonPath"].as_str().expect("selectable jsonPath");
                let target = resolve(schema, path);
                let scalar = target
                    .and_then(|s| s["type"].as_str())
                    .is_some_and(|t| matches!(t, "string" | "integer" | "boolean"));
                assert!(
                    scalar,
                    "{name}: selectable field {path} must be a scalar field"
                );
            }
        }
    }
}

/// Wraps `schema` as property `a` of an object schema, the smallest valid root.
fn field(schema: Value) -> Value {
    json!({ "type": "object", "properties": { "a": schema } })
}

/// Each case breaks one rule. The checker must report it, so a pass above means something.
#[test]
fn checker_reports_each_broken_rule() {
    let string = json!({ "type": "string" });
    let object_with_b = |extra: Value| {
        let mut schema = json!({ "type": "object", "properties": { "b": string } });
        for (key, value) in extra.as_object().into_iter().flatten() {
            schema[key] = value.clone();
        }
        field(schema)
    };
    let cases = [
        ("no type", field(json!({})), "type must not be empty"),
        (
            "type list",
            json!({ "type": ["string", "null"] }),
            "type must be one",
        ),
        ("$ref", field(json!({ "$ref": "#/x" })), "$ref"),
        (
            "properties and additionalProperties",
            object_with_b(json!({ "additionalProperties": string })),
            "mutually exclusive",
        ),
        (
            "additionalProperties at root",
            json!({ "type": "object", "additionalProperties": string }),
            "additionalProperties must not be used at the root",
        ),
        (
            "array without items",
            field(json!({ "type": "array" })),
            "items must be specified",
        ),
        (
            "typed anyOf",
            field(json!({ "type": "string",
                "anyOf": [{ "type": "string" }, { "type": "integer" }] })),
            "anyOf[0]: type must be empty",
        ),
        (
            "int-or-string with other anyOf",
            field(json!({ "x-kubernetes-int-or-string": true,
                "anyOf": [{ "type": "integer" }, { "type": "boolean" }] })),
            "anyOf[0]: type must be empty",
        ),
        (
            "description in oneOf",
            object_with_b(json!({ "oneOf": [{ "required": ["b"], "description": "x" }] })),
            "oneOf[0]: description must be empty",
        ),
        (
            "oneOf names unknown property",
            object_with_b(json!({ "oneOf": [{ "properties": { "c": {} } }] })),
            "not specified outside",
        ),
        (
            "uniqueItems",
            field(json!({ "type": "array", "items": string, "uniqueItems": true })),
            "uniqueItems",
        ),
        (
            "preserve false",
            json!({ "type": "object", "x-kubernetes-preserve-unknown-fields": false }),
            "must be true or undefined",
        ),
        (
            "map list key not required",
            field(json!({ "type": "array",
                "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": { "type": "object", "properties": { "name": string } } })),
            "required or have a default",
        ),
        (
            "oldSelf under list items",
            field(json!({ "type": "array", "items": { "type": "string",
                "x-kubernetes-validations": [{ "rule": "self == oldSelf" }] } })),
            "oldSelf",
        ),
        (
            "message with line break",
            json!({ "type": "object",
                "x-kubernetes-validations": [{ "rule": "true", "message": "a\nb" }] }),
            "line breaks",
        ),
        (
            "metadata restricted beyond name",
            json!({ "type": "object", "properties": { "metadata": { "type": "object",
                "properties": { "labels": { "type": "object" } } } } }),
            "metadata",
        ),
        (
            "default of wrong type",
            field(json!({ "type": "integer", "default": "8000" })),
            "default",
        ),
        (
            "unknown keyword",
            json!({ "type": "object", "const": 1 }),
            "unknown keyword const",
        ),
    ];

    for (name, schema, expected) in cases {
        let errors = check_schema(&schema);
        assert!(
            errors.iter().any(|error| error.contains(expected)),
            "case {name:?}: expected an error containing {expected:?}, got {errors:?}"
        );
    }
}

#[test]
fn checker_accepts_allowed_patterns() {
    let schema = json!({
        "type": "object",
        "properties": {
            "metadata": { "type": "object" },
            "quantity": { "x-kubernetes-int-or-string": true,
                "anyOf": [{ "type": "integer" }, { "type": "string" }] },
            "free": { "x-kubernetes-preserve-unknown-fields": true },
            "labels": { "type": "object", "additionalProperties": { "type": "string" } },
            "choice": { "type": "object",
                "properties": { "a": { "type": "string" }, "b": { "type": "string" } },
                "oneOf": [{ "required": ["a"] }, { "required": ["b"] }] },
            "conditions": { "type": "array", "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": { "type": "object", "required": ["type"],
                    "properties": { "type": { "type": "string",
                        "x-kubernetes-validations": [{ "rule": "self == oldSelf" }] } } } },
        },
    });

    assert_eq!(check_schema(&schema), Vec::<String>::new());
}

fn check_crd(crd: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
        let name = version["name"].as_str().unwrap_or("?");
        for error in check_schema(&version["schema"]["openAPIV3Schema"]) {
            errors.push(format!("version {name}: {error}"));
        }
    }
    errors
}

fn check_schema(schema: &Value) -> Vec<String> {
    let mut checker = Checker::default();
    checker.node(
        schema,
        "openAPIV3Schema",
        Level::Root,
        Correlation::Correlatable,
    );
    checker.errors
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Root,
    Item,
    Field,
}

/// Whether `oldSelf` can be used at a node: the API server can pair the old and new value only
/// along object fields, granular maps and the items of `map` lists.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Correlation {
    Correlatable,
    Uncorrelatable,
}

/// Keywords of the API server's `JSONSchemaProps`, minus the unsupported ones (`id`, `$schema`,
/// `$ref`, `definitions`, `dependencies`, `patternProperties`, `additionalItems`), which the
/// API server rejects.
const ALLOWED_KEYWORDS: &[&str] = &[
    "description",
    "type",
    "format",
    "title",
    "default",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "multipleOf",
    "enum",
    "maxProperties",
    "minProperties",
    "required",
    "items",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "properties",
    "additionalProperties",
    "externalDocs",
    "example",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

const TYPES: &[&str] = &["object", "array", "string", "integer", "number", "boolean"];

/// Keywords that must not appear inside `allOf`, `anyOf`, `oneOf` or `not`.
const FORBIDDEN_IN_JUNCTORS: &[&str] = &[
    "type",
    "description",
    "title",
    "default",
    "nullable",
    "additionalProperties",
    "externalDocs",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
];

#[derive(Default)]
struct Checker {
    errors: Vec<String>,
}

impl Checker {
    fn error(&mut self, path: &str, message: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {message}"));
    }

    /// Checks a node of the structural part of the schema (the root, a property, an array's
    /// items or a map's values).
    fn node(&mut self, node: &Value, path: &str, level: Level, correlation: Correlation) {
        let Some(object) = node.as_object() else {
            self.error(path, "must be a schema object");
            return;
        };
        self.keywords(object, path);
        let flag = |key: &str| object.get(key) == Some(&json!(true));
        let int_or_string = flag("x-kubernetes-int-or-string");
        let preserve = flag("x-kubernetes-preserve-unknown-fields");
        let type_ = self.type_of(object, path);

        if type_.is_none() && !int_or_string && !preserve {
            self.error(
                path,
                "type must not be empty (unless int-or-string or preserving unknown fields)",
            );
        }
        if level == Level::Root && type_ != Some("object") {
            self.error(path, "type must be object at the root");
        }
        if let Some(value) = object.get("x-kubernetes-preserve-unknown-fields")
            && value != &json!(true)
        {
            self.error(
                path,
                "x-kubernetes-preserve-unknown-fields must be true or undefined",
            );
        }
        if int_or_string && preserve {
            self.error(
                path,
                "x-kubernetes-preserve-unknown-fields must be false with int-or-string",
            );
        }
        if flag("uniqueItems") {
            self.error(path, "uniqueItems must not be true");
        }
        if let Some(default) = object.get("default") {
            self.default_value(default, node, path);
        }
        self.enum_values(object, node, path);
        self.validations(object, path, correlation);
        self.list_type(object, type_, path);
        self.map_type(object, type_, path);

        let properties = object.get("properties").and_then(Value::as_object);
        let additional = object.get("additionalProperties");
        if properties.is_some() && additional.is_some() {
            self.error(
                path,
                "additionalProperties and properties are mutually exclusive",
            );
        }
        if level == Level::Root && additional.is_some() {
            self.error(path, "additionalProperties must not be used at the root");
        }
        if properties.is_some() && type_.is_some_and(|t| t != "object") {
            self.error(path, "properties require type object");
        }
        if let Some(properties) = properties {
            let map_correlation = match object.get("x-kubernetes-map-type") {
                Some(value) if value == "atomic" => Correlation::Uncorrelatable,
                _ => correlation,
            };
            for (name, property) in properties {
                let child = format!("{path}.properties.{name}");
                if level == Level::Root && name == "metadata" {
                    self.metadata(property, &child);
                    continue;
                }
                let is_type_meta = matches!(name.as_str(), "kind" | "apiVersion");
                if level == Level::Root && is_type_meta && property["type"] != "string" {
                    self.error(&child, "type must be string");
                }
                self.node(property, &child, Level::Field, map_correlation);
            }
        }
        match additional {
            Some(Value::Object(_)) => {
                let child = format!("{path}.additionalProperties");
                self.node(
                    additional.unwrap_or(&Value::Null),
                    &child,
                    Level::Field,
                    correlation,
                );
            }
            Some(Value::Bool(_)) | None => {}
            Some(_) => self.error(path, "additionalProperties must be a schema or a boolean"),
        }

        match (type_, object.get("items")) {
            (Some("array"), None) => self.error(path, "items must be specified for type array"),
            (Some(t), Some(_)) if t != "array" => self.error(path, "items require type array"),
            (_, Some(Value::Array(_))) => self.error(path, "items must be one schema, not a list"),
            (_, Some(items)) => {
                let is_map_list = object.get("x-kubernetes-list-type") == Some(&json!("map"));
                let item_correlation = if is_map_list {
                    correlation
                } else {
                    Correlation::Uncorrelatable
                };
                self.node(
                    items,
                    &format!("{path}.items"),
                    Level::Item,
                    item_correlation,
                );
            }
            (_, None) => {}
        }

        let int_or_string_any_of =
            object.get("anyOf") == Some(&json!([{ "type": "integer" }, { "type": "string" }]));
        for junctor in ["allOf", "anyOf", "oneOf"] {
            if junctor == "anyOf" && int_or_string && int_or_string_any_of {
                continue;
            }
            let branches = object
                .get(junctor)
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for (index, branch) in branches.enumerate() {
                self.nested(branch, node, &format!("{path}.{junctor}[{index}]"));
            }
        }
        if let Some(not) = object.get("not") {
            self.nested(not, node, &format!("{path}.not"));
        }
    }

    fn keywords(&mut self, object: &serde_json::Map<String, Value>, path: &str) {
        for key in object.keys() {
            if !ALLOWED_KEYWORDS.contains(&key.as_str()) {
                self.error(
                    path,
                    format!("unknown keyword {key} (the API server rejects it)"),
                );
            }
        }
    }

    fn type_of<'a>(
        &mut self,
        object: &'a serde_json::Map<String, Value>,
        path: &str,
    ) -> Option<&'a str> {
        match object.get("type") {
            None => None,
            Some(Value::String(type_)) if TYPES.contains(&type_.as_str()) => Some(type_),
            Some(other) => {
                self.error(path, format!("type must be one of {TYPES:?}, not {other}"));
                None
            }
        }
    }

    /// Checks a value validation inside `allOf`, `anyOf`, `oneOf` or `not`: it may restrict
    /// values but not declare structure, and every property it names must exist in `outer`.
    fn nested(&mut self, node: &Value, outer: &Value, path: &str) {
        let Some(object) = node.as_object() else {
            self.error(path, "must be a schema object");
            return;
        };
        self.keywords(object, path);
        for key in FORBIDDEN_IN_JUNCTORS {
            if object.contains_key(*key) {
                self.error(path, format!("{key} must be empty to be structural"));
            }
        }
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, property) in properties {
                let child = format!("{path}.properties.{name}");
                if name == "metadata" {
                    self.error(&child, "metadata must not be specified in a nested context");
                }
                match outer["properties"].get(name) {
                    Some(outer_property) => self.nested(property, outer_property, &child),
                    None => self.error(&child, "property not specified outside the junctor"),
                }
            }
        }
        if let Some(items) = object.get("items") {
            match outer.get("items") {
                Some(outer_items) => self.nested(items, outer_items, &format!("{path}.items")),
                None => self.error(path, "items not specified outside the junctor"),
            }
        }
        for junctor in ["allOf", "anyOf", "oneOf"] {
            let branches = object
                .get(junctor)
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            for (index, branch) in branches.enumerate() {
                self.nested(branch, outer, &format!("{path}.{junctor}[{index}]"));
            }
        }
    }

    /// At the root, `metadata` may only restrict `name` and `generateName`.
    fn metadata(&mut self, node: &Value, path: &str) {
        if node["type"] != "object" {
            self.error(path, "metadata must have type object");
        }
        let allowed = ["type", "description", "properties"];
        let extra: Vec<&String> = node
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        if !extra.is_empty() {
            self.error(path, format!("metadata must not specify {extra:?}"));
        }
        for name in node["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            if name != "name" && name != "generateName" {
                self.error(
                    path,
                    format!("metadata may restrict only name and generateName, not {name}"),
                );
            }
        }
    }

    fn default_value(&mut self, default: &Value, schema: &Value, path: &str) {
        if let Some(problem) = value_problem(default, schema) {
            self.error(
                path,
                format!("default {default} does not match the schema: {problem}"),
            );
        }
    }

    fn enum_values(&mut self, object: &serde_json::Map<String, Value>, schema: &Value, path: &str) {
        let Some(values) = object.get("enum") else {
            return;
        };
        let Some(values) = values.as_array() else {
            self.error(path, "enum must be a list");
            return;
        };
        for value in values {
            if value.is_null() && object.get("nullable") != Some(&json!(true)) {
                self.error(path, "enum contains null but the field is not nullable");
            } else if let Some(problem) = value_problem(value, &strip_enum(schema)) {
                self.error(path, format!("enum value {value}: {problem}"));
            }
        }
    }

    fn validations(
        &mut self,
        object: &serde_json::Map<String, Value>,
        path: &str,
        correlation: Correlation,
    ) {
        let rules = object
            .get("x-kubernetes-validations")
            .and_then(Value::as_array);
        for (index, rule) in rules.into_iter().flatten().enumerate() {
            let rule_path = format!("{path}.x-kubernetes-validations[{index}]");
            let text = rule["rule"].as_str().unwrap_or_default();
            if text.trim().is_empty() {
                self.error(&rule_path, "rule is not specified");
            }
            let message = rule.get("message").and_then(Value::as_str);
            if message.is_some_and(|m| m.trim().is_empty()) {
                self.error(&rule_path, "message must be non-empty if specified");
            }
            if message.is_some_and(|m| m.contains('\n') || m.contains('\r')) {
                self.error(&rule_path, "message must not contain line breaks");
            }
            if text.contains('\n') && message.is_none() {
                self.error(
                    &rule_path,
                    "message must be specified if rule contains line breaks",
                );
            }
            if text.contains("oldSelf") && correlation == Correlation::Uncorrelatable {
                let message = "oldSelf needs old and new values that can be paired, which items \
                               of a list other than a map list and atomic maps are not";
                self.error(&rule_path, message);
            }
        }
    }

    fn list_type(
        &mut self,
        object: &serde_json::Map<String, Value>,
        type_: Option<&str>,
        path: &str,
    ) {
        let list_type = object.get("x-kubernetes-list-type").and_then(Value::as_str);
        let keys = object
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array);
        if let Some(list_type) = list_type {
            if type_ != Some("array") {
                self.error(path, "x-kubernetes-list-type requires type array");
            }
            if !matches!(list_type, "atomic" | "set" | "map") {
                self.error(
                    path,
                    format!("x-kubernetes-list-type {list_type} is not atomic, set or map"),
                );
            }
        }
        if keys.is_some_and(|keys| !keys.is_empty()) && list_type != Some("map") {
            self.error(
                path,
                "x-kubernetes-list-map-keys requires x-kubernetes-list-type map",
            );
        }
        if list_type != Some("map") {
            return;
        }
        let items = &object.get("items").cloned().unwrap_or_default();
        if items["type"] != "object" {
            self.error(path, "items of a map list must have type object");
        }
        let keys: Vec<&str> = keys
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if keys.is_empty() {
            self.error(
                path,
                "x-kubernetes-list-map-keys must not be empty for a map list",
            );
        }
        let required = items["required"].as_array().cloned().unwrap_or_default();
        for key in keys {
            let key_schema = &items["properties"][key];
            if key_schema.is_null() {
                self.error(path, format!("list map key {key} is not an item property"));
                continue;
            }
            if matches!(key_schema["type"].as_str(), Some("object" | "array")) {
                self.error(path, format!("list map key {key} must be a scalar"));
            }
            if !required.contains(&json!(key)) && key_schema.get("default").is_none() {
                self.error(
                    path,
                    format!("list map key {key} must be required or have a default"),
                );
            }
        }
    }

    fn map_type(
        &mut self,
        object: &serde_json::Map<String, Value>,
        type_: Option<&str>,
        path: &str,
    ) {
        let Some(map_type) = object.get("x-kubernetes-map-type") else {
            return;
        };
        if type_ != Some("object") {
            self.error(path, "x-kubernetes-map-type requires type object");
        }
        if map_type != "atomic" && map_type != "granular" {
            self.error(
                path,
                format!("x-kubernetes-map-type {map_type} is not atomic or granular"),
            );
        }
    }
}

fn strip_enum(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.remove("enum");
    }
    schema
}

/// Describes why `value` does not fit `schema` (types, properties, items, enum), or `None`.
fn value_problem(value: &Value, schema: &Value) -> Option<String> {
    if value.is_null() {
        return (schema["nullable"] != true).then(|| "null for a non-nullable schema".to_owned());
    }
    if schema["x-kubernetes-int-or-string"] == true {
        let fits = value.is_string() || value.is_i64() || value.is_u64();
        return (!fits).then(|| format!("{value} is neither an integer nor a string"));
    }
    let fits = match schema["type"].as_str() {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(_) => false,
    };
    if !fits {
        return Some(format!("{value} is not of type {}", schema["type"]));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Some(format!("{value} is not in the enum"));
    }
    match value {
        Value::Object(fields) => fields.iter().find_map(|(name, field)| {
            let field_schema = schema["properties"]
                .get(name)
                .or(schema.get("additionalProperties"))?;
            value_problem(field, field_schema).map(|problem| format!(".{name}: {problem}"))
        }),
        Value::Array(items) => items
            .iter()
            .find_map(|item| value_problem(item, &schema["items"])),
        _ => None,
    }
}

/// Finds the schema node for a simple JSONPath such as `.spec.user` or
/// `.status.conditions[?(@.type=="Ready")].status`. A `metadata` path resolves to the root.
fn resolve<'a>(schema: &'a Value, path: &str) -> Option<&'a Value> {
    if path.starts_with(".metadata.") {
        return Some(schema);
    }
    // Drop the contents of brackets, whose filters may contain dots, and keep `[]`.
    let mut cleaned = String::new();
    let mut depth = 0;
    for c in path.chars() {
        match c {
            '[' => {
                if depth == 0 {
                    cleaned.push_str("[]");
                }
                depth += 1;
            }
            ']' => depth -= 1,
            _ if depth > 0 => {}
            _ => cleaned.push(c),
        }
    }
    let mut node = schema;
    for segment in cleaned.trim_start_matches('.').split('.') {
        let (name, indexed) = match segment.find('[') {
            Some(bracket) => (&segment[..bracket], true),
            None => (segment, false),
        };
        if name.is_empty() {
            continue;
        }
        node = node.get("properties")?.get(name)?;
        if indexed {
            node = node.get("items")?;
        }
    }
    Some(node)
}
