//! Schema transforms shared by the CRDs of this crate.

use schemars::Schema;
use schemars::transform::{RecursiveTransform, Transform};
use serde_json::Value;

/// Adapts a schema and all its subschemas to the conventions of Kubernetes' own types: no
/// `null` values and descriptions without hard line wraps.
///
/// schemars lets every `Option` field accept `null`, which becomes `nullable: true` in a CRD.
/// Kubernetes' own types are not nullable: the API server prunes a `null` sent for a field that
/// is not nullable, so the field reads as unset. Without `nullable`, `has(self.field)` in a CEL
/// rule is false for such a field, and a client that writes `null` cannot store it.
///
/// Descriptions come from rustdoc comments wrapped at 100 columns. `kubectl explain` wraps text
/// itself and would show those line breaks as well.
pub(crate) fn kubernetes_conventions(schema: &mut Schema) {
    RecursiveTransform(|schema: &mut Schema| {
        remove_null(schema);
        unwrap_description(schema);
    })
    .transform(schema);
}

/// Joins the lines of each paragraph of the description, except lines that start a list item.
fn unwrap_description(schema: &mut Schema) {
    let Some(Value::String(description)) = schema.get_mut("description") else {
        return;
    };
    let mut unwrapped = String::with_capacity(description.len());
    for (index, line) in description.split('\n').enumerate() {
        let line = line.trim();
        let starts_item = line.starts_with("- ") || line.starts_with("* ");
        if index > 0 {
            let paragraph_break = unwrapped.ends_with('\n') || line.is_empty();
            let separator = if paragraph_break || starts_item {
                '\n'
            } else {
                ' '
            };
            unwrapped.push(separator);
        }
        unwrapped.push_str(line);
    }
    *description = unwrapped;
}

fn remove_null(schema: &mut Schema) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = object.get_mut("type") {
        types.retain(|type_| type_ != "null");
        if let [single] = types.as_slice() {
            let single = single.clone();
            object.insert("type".to_owned(), single);
        }
    }
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        values.retain(|value| !value.is_null());
    }
    // A type without a `type` keyword, such as an int-or-string quantity, becomes
    // `anyOf: [<type>, {"type": "null"}]` when optional: keep the type alone.
    let Some(Value::Array(branches)) = object.get("anyOf") else {
        return;
    };
    let is_null = |branch: &Value| branch.get("type").is_some_and(|type_| type_ == "null");
    if let [first, second] = branches.as_slice()
        && let Some(Value::Object(kept)) = match (is_null(first), is_null(second)) {
            (false, true) => Some(first.clone()),
            (true, false) => Some(second.clone()),
            _ => None,
        }
    {
        object.remove("anyOf");
        for (key, value) in kept {
            object.entry(key).or_insert(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn transformed(value: Value) -> Value {
        let mut schema = Schema::try_from(value).expect("schema object");
        kubernetes_conventions(&mut schema);
        schema.to_value()
    }

    #[test]
    fn null_type_removed_recursively() {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": { "type": ["string", "null"] },
                "inner": {
                    "type": ["object", "null"],
                    "properties": { "count": { "type": ["integer", "null"] } },
                },
            },
        });

        assert_eq!(
            transformed(schema),
            json!({
                "type": "object",
                "properties": {
                    "name": { "type": "string" },
                    "inner": {
                        "type": "object",
                        "properties": { "count": { "type": "integer" } },
                    },
                },
            })
        );
    }

    #[test]
    fn null_enum_value_removed() {
        let schema = json!({ "type": ["string", "null"], "enum": ["a", "b", null] });

        assert_eq!(
            transformed(schema),
            json!({ "type": "string", "enum": ["a", "b"] })
        );
    }

    #[test]
    fn null_branch_of_any_of_unwrapped() {
        let schema = json!({
            "description": "size",
            "anyOf": [{ "x-kubernetes-int-or-string": true }, { "type": "null" }],
        });

        assert_eq!(
            transformed(schema),
            json!({ "description": "size", "x-kubernetes-int-or-string": true })
        );
    }

    #[test]
    fn descriptions_unwrapped_within_paragraphs() {
        let schema = json!({
            "description": "First line\nwraps here.\n\nSecond paragraph\n  wraps too.",
            "type": "object",
            "properties": { "a": { "type": "string", "description": "one\ntwo" } },
        });

        let result = transformed(schema);

        assert_eq!(
            result["description"],
            "First line wraps here.\n\nSecond paragraph wraps too."
        );
        assert_eq!(result["properties"]["a"]["description"], "one two");
    }

    #[test]
    fn description_lists_keep_their_lines() {
        let schema = json!({
            "type": "string",
            "description": "Possible values:\n - `a` means\n   one\n * `b` means two",
        });

        let result = transformed(schema);

        assert_eq!(
            result["description"],
            "Possible values:\n- `a` means one\n* `b` means two"
        );
    }

    #[test]
    fn other_any_of_untouched() {
        let schema = json!({ "anyOf": [{ "type": "integer" }, { "type": "string" }] });

        assert_eq!(transformed(schema.clone()), schema);
    }
}
