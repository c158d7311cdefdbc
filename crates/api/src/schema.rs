//! Schema helpers for fields whose shape the apiserver should not validate.

use schemars::{Schema, SchemaGenerator, json_schema};

/// A free-form JSON object the apiserver keeps as is (`x-kubernetes-preserve-unknown-fields`).
///
/// Used for `context` (processors' output board), embedded Kubernetes objects (an Event, a PodSpec)
/// whose full schemas would make the CRDs large and tie them to one Kubernetes version, and
/// values kdiag itself never interprets.
pub(crate) fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A free-form JSON object, optional: the apiserver keeps it as is and accepts `null`.
pub(crate) fn optional_free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Drops the `default` schemars derives from `#[serde(default)]`, where the apiserver should not
/// fill one in (an empty pod template would read as a probe with no containers).
pub(crate) fn no_default(schema: &mut Schema) {
    schema.remove("default");
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
