//! `AbnormalSource`: a template that turns Kubernetes Events, Prometheus alerts and (kdiag)
//! failed ProbeStatus checkers into Abnormals.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::NamespacedName;
use super::abnormal::{AbnormalSourceType, CommandExecutorSpec, ProfilerSpec};
use crate::schema::optional_free_form_object;

/// Which triggers become Abnormals, and what those Abnormals run.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "AbnormalSource",
    namespaced,
    status = "AbnormalSourceStatus",
    shortname = "abnsrc",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "A template that turns Events, alerts and failed probe checkers into Abnormals.",
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.sourceTemplate.type"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalSourceSpec {
    pub source_template: SourceTemplate,
    /// kdiag extension: among several matching sources the highest priority wins; ties go to
    /// the first by namespace/name. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// kdiag extension: true stops this source from creating Abnormals (it stays validated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// kdiag extension: repeated triggers for the same object and reason within this many seconds
    /// of the last one count on the existing Abnormal instead of creating another. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_window_seconds: Option<i64>,
    /// kdiag extension: how the template's patterns match. `Whole` (the default): each pattern
    /// must match the whole value, only Warning Events are considered, a pattern on a label or
    /// annotation the alert lacks is matched against "". `KubeDiagnoser`: as Kube Diagnoser
    /// matched, for sources written for it: a pattern matches anywhere in the value (`Failed`
    /// matches "FailedMount"), Events of every type are considered, a missing label or
    /// annotation never matches, an Event without a count is matched as "0", and timestamps are
    /// matched as Go prints them (`2006-01-02 15:04:05 +0000 UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<Matching>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_information_collectors: Vec<NamespacedName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_diagnosers: Vec<NamespacedName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_recoverers: Vec<NamespacedName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_executors: Vec<CommandExecutorSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profilers: Vec<ProfilerSpec>,
    /// Copied into the created Abnormal's spec.context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub context: Option<BTreeMap<String, serde_json::Value>>,
}

/// How a source's patterns match (`spec.matching`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Matching {
    /// Whole values, Warning Events only (kdiag's default).
    #[default]
    Whole,
    /// Kube Diagnoser's rules: anywhere in the value, Events of every type.
    KubeDiagnoser,
}

/// What a source matches. Exactly one template, the one named by type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceTemplate {
    /// KubernetesEvent, PrometheusAlert or (kdiag) ProbeStatus.
    #[serde(rename = "type")]
    pub type_: AbnormalSourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_alert_template: Option<PrometheusAlertTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_event_template: Option<KubernetesEventTemplate>,
    /// kdiag extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_status_template: Option<ProbeStatusTemplate>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusAlertTemplate {
    #[serde(default)]
    pub regexp: PrometheusAlertTemplateRegexp,
    /// The alert label holding the node name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name_reference_label: String,
}

/// Patterns an alert must match. Every pattern is a regular expression (RE2 syntax) matched
/// against the whole value; an empty or absent pattern places no constraint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusAlertTemplateRegexp {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alert_name: String,
    /// Label name → pattern for its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotation name → pattern for its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub starts_at: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ends_at: String,
    #[serde(
        default,
        rename = "generatorURL",
        skip_serializing_if = "String::is_empty"
    )]
    pub generator_url: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesEventTemplate {
    #[serde(default)]
    pub regexp: KubernetesEventTemplateRegexp,
}

/// Patterns an Event must match; see [`PrometheusAlertTemplateRegexp`] for their semantics.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesEventTemplateRegexp {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Patterns for the involved object's fields (kind, namespace, name, uid, apiVersion,
    /// resourceVersion, fieldPath).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub involved_object: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Patterns for the source's component and host.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub first_timestamp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_timestamp: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub count: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub type_: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub event_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    /// Patterns for the related object's fields.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub related: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_controller: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reporting_instance: String,
}

/// kdiag extension: which failed ProbeStatus checkers this source handles.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatusTemplate {
    #[serde(default, rename = "match")]
    pub match_: ProbeStatusTemplateMatch,
    /// Run the Abnormal on this node instead of the node found in the checker's message or the
    /// probe pod's node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
}

/// Patterns a checker must match (anchored regular expressions; empty places no constraint).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatusTemplateMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe_namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checker: String,
    /// Checker statuses that match (ERROR, WARN, UNKNOWN). Default: ERROR.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalSourceStatus {
    /// Metadata of the last Abnormal this source created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub last_abnormal: Option<serde_json::Value>,
    /// kdiag extension: Valid=False with the reason when a pattern does not compile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<SourceCondition>,
    /// kdiag extension: the generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kdiag extension: Abnormals created by this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered: Option<i64>,
    /// kdiag extension: triggers dropped by storm control.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<i64>,
}

/// kdiag extension: a condition of an AbnormalSource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
