//! Schema helpers for fields whose shape the apiserver should not validate.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form JSON object, optional: the apiserver keeps it as is and accepts `null`.
pub(crate) fn optional_free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Makes a generated CRD schema acceptable to every apiserver and kubectl we support: schemars
/// lists `null` among an optional enum's values, which kubectl's client-side validation rejects
/// ("unknown object type nil"); `nullable: true` already says it.
pub(crate) fn tidy(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            for v in map.values_mut() {
                tidy(v);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}
