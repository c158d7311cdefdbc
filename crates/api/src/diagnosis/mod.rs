//! `diagnosis.netease.com/v1`: the Kube Diagnoser kinds, wire-compatible with v0.1.6.

pub mod abnormal;
pub mod context_keys;
pub mod probe_run;
pub mod processor;
pub mod source;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to a namespaced object, such as a processor registration.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub struct NamespacedName {
    /// Namespace of the object. Empty means the namespace of the object that refers to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// This reference with an empty namespace replaced by `default_namespace`.
    pub fn or_namespace(&self, default_namespace: &str) -> Self {
        if self.namespace.is_empty() {
            Self::new(default_namespace, self.name.clone())
        } else {
            self.clone()
        }
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
