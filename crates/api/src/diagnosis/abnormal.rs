//! The `Abnormal` kind: one incident, stepped through collection, diagnosis and recovery on the
//! node agent of the node concerned.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{NamespacedName, is_false};
use crate::schema::optional_free_form_object;

/// An abnormality to diagnose on one node: what triggered it, which processors to run in which
/// order, and (in status) where it is in `InformationCollecting → Diagnosing → Recovering →
/// Succeeded | Failed` with every step's result.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "Abnormal",
    namespaced,
    status = "AbnormalStatus",
    shortname = "abn",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "An abnormality to diagnose and possibly recover on one node.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(
        name = "Root Cause",
        type_ = "string",
        json_path = ".status.rootCause.summary"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalSpec {
    /// Who created the Abnormal: Custom (a person or tool, the default), KubernetesEvent,
    /// PrometheusAlert or ProbeStatus (kdiag extension). An empty string, which Go clients built
    /// on Kube Diagnoser's types send when they leave it unset, means Custom.
    #[serde(default, deserialize_with = "source_or_custom")]
    #[schemars(schema_with = "source_schema")]
    pub source: AbnormalSourceType,
    /// The alert, when source is PrometheusAlert.
    // Boxed, as is the Event: each cache holds thousands of Abnormals, most without either, and
    // inline they made every Abnormal 2.3 KB before any of its strings (1 KB of it the Event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_alert: Option<Box<PrometheusAlert>>,
    /// The core/v1 Event, when source is KubernetesEvent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub kubernetes_event: Option<Box<Event>>,
    /// kdiag extension: the probe and checker, when source is ProbeStatus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_status: Option<ProbeReference>,
    /// Node whose agent runs this Abnormal. One of nodeName and podReference is required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    /// The pod concerned; the controller resolves it to its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_reference: Option<PodReference>,
    /// Information collectors to run, in this order. All run; at least one must succeed.
    /// An empty list skips collection.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_information_collectors: Vec<NamespacedName>,
    /// Diagnosers to try, in this order, until one identifies the cause. An empty list skips
    /// diagnosis.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_diagnosers: Vec<NamespacedName>,
    /// Recoverers to try, in this order, until one succeeds. An empty list skips recovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assigned_recoverers: Vec<NamespacedName>,
    /// Commands (argv, no shell) to run in the stage named by their type, subject to the node
    /// policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_executors: Vec<CommandExecutorSpec>,
    /// Profilers to run in the stage named by their type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profilers: Vec<ProfilerSpec>,
    /// Input for processors. A key here overrides the same key in status.context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub context: Option<BTreeMap<String, serde_json::Value>>,
    /// Kube Diagnoser v0.1.0: skip information collection (same as an empty list).
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_information_collection: bool,
    /// Kube Diagnoser v0.1.0: skip diagnosis (same as an empty list).
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_diagnosis: bool,
    /// Kube Diagnoser v0.1.0: skip recovery (same as an empty list).
    #[serde(default, skip_serializing_if = "is_false")]
    pub skip_recovery: bool,
}

/// Who created an Abnormal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum AbnormalSourceType {
    // Kube Diagnoser's webhook turned "" into Custom; Go clients send "" for an unset source.
    #[default]
    #[serde(alias = "")]
    Custom,
    KubernetesEvent,
    PrometheusAlert,
    /// kdiag extension: a KubeProber-compatible checker turned ERROR.
    ProbeStatus,
}

/// The schema of `Abnormal.spec.source`: the source types, and "" (read as Custom), which Go
/// clients of Kube Diagnoser send for an unset source and its webhook defaulted.
///
/// `nullable` because the apiserver (1.20's OpenAPI validation) takes an empty string for a
/// missing value and refuses it for a non-nullable `type: string`.
fn source_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "nullable": true,
        "enum": [
            AbnormalSourceType::Custom.as_str(),
            AbnormalSourceType::KubernetesEvent.as_str(),
            AbnormalSourceType::PrometheusAlert.as_str(),
            AbnormalSourceType::ProbeStatus.as_str(),
            "",
        ],
    })
}

/// `source`, with null read as Custom like "" and an absent source. The apiserver refuses a
/// null source (it is not among the schema's values), but the type accepts what the schema's
/// `nullable` says is possible.
fn source_or_custom<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<AbnormalSourceType, D::Error> {
    Ok(Option::<AbnormalSourceType>::deserialize(d)?.unwrap_or_default())
}

impl AbnormalSourceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Custom => "Custom",
            Self::KubernetesEvent => "KubernetesEvent",
            Self::PrometheusAlert => "PrometheusAlert",
            Self::ProbeStatus => "ProbeStatus",
        }
    }
}

/// A Prometheus alert as Alertmanager sends it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusAlert {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Time>,
    #[serde(
        default,
        rename = "generatorURL",
        skip_serializing_if = "String::is_empty"
    )]
    pub generator_url: String,
}

/// kdiag extension: the ProbeStatus checker whose failure created an Abnormal.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReference {
    /// Namespace of the Probe and its ProbeStatus.
    pub namespace: String,
    /// Name of the Probe and its ProbeStatus.
    pub name: String,
    /// Name of the checker inside the ProbeStatus.
    pub checker: String,
    /// The checker's status when the episode started (ERROR, WARN or UNKNOWN).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The checker's message when the episode started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The pod an Abnormal is about.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// The container concerned, if one.
    #[serde(default, alias = "container", skip_serializing_if = "String::is_empty")]
    pub container_name: String,
}

/// The stage a command executor or profiler runs in.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ProcessorType {
    InformationCollector,
    Diagnoser,
    Recoverer,
}

impl ProcessorType {
    pub fn stage(self) -> Stage {
        match self {
            Self::InformationCollector => Stage::InformationCollecting,
            Self::Diagnoser => Stage::Diagnosing,
            Self::Recoverer => Stage::Recovering,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InformationCollector => "InformationCollector",
            Self::Diagnoser => "Diagnoser",
            Self::Recoverer => "Recoverer",
        }
    }
}

/// A command to run on the node: argv only, never through a shell.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandExecutorSpec {
    /// The argv: the first element is the program, the rest its arguments.
    pub command: Vec<String>,
    /// The stage it runs in.
    #[serde(rename = "type")]
    pub type_: ProcessorType,
    /// Seconds before the command's process group is killed. Default (also for 0, as in Kube
    /// Diagnoser): 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

/// Kube Diagnoser's defaults for command executors and profilers, which its webhook also put in
/// place of an explicit 0.
pub const DEFAULT_STEP_TIMEOUT_SECONDS: i32 = 30;
/// How long a profile stays available when expirationSeconds is left out or 0.
pub const DEFAULT_EXPIRATION_SECONDS: i32 = 7200;

/// `value`, or `default` when it is left out or 0 (Kube Diagnoser's webhook defaulted a 0).
fn or_default(value: Option<i32>, default: i32) -> i32 {
    value.filter(|s| *s != 0).unwrap_or(default)
}

impl CommandExecutorSpec {
    /// Seconds the command may run: timeoutSeconds, or 30 when it is left out or 0.
    pub fn timeout(&self) -> i32 {
        or_default(self.timeout_seconds, DEFAULT_STEP_TIMEOUT_SECONDS)
    }
}

/// The outcome of one command executor.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandExecutorStatus {
    pub command: Vec<String>,
    #[serde(rename = "type")]
    pub type_: ProcessorType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Standard output, capped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    /// Standard error, capped.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Why the command did not succeed: denied by policy, failed to start, timed out, non-zero
    /// exit. Empty on success.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl CommandExecutorStatus {
    /// Whether node policy denied the command, so it never ran (the step is recorded `Skipped`;
    /// the message is [`crate::plugin`]'s `Denied` error, "denied by policy rule …").
    pub fn was_denied(&self) -> bool {
        self.error.starts_with("denied by policy rule ")
    }
}

/// A profiling run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilerSpec {
    pub name: String,
    /// The stage it runs in.
    #[serde(rename = "type")]
    pub type_: ProcessorType,
    /// A Go program's pprof endpoint. Exactly one of go and java.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go: Option<GoProfilerSpec>,
    /// A Java program. Exactly one of go and java.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java: Option<JavaProfilerSpec>,
    /// Seconds the profiling may take. Default (also for 0, as in Kube Diagnoser): 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Seconds the result stays available. Default (also for 0, as in Kube Diagnoser): 7200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i32>,
}

impl ProfilerSpec {
    /// Seconds the profiling may take: timeoutSeconds, or 30 when it is left out or 0.
    pub fn timeout(&self) -> i32 {
        or_default(self.timeout_seconds, DEFAULT_STEP_TIMEOUT_SECONDS)
    }

    /// Seconds the result stays: expirationSeconds, or 7200 when it is left out or 0.
    pub fn expiration(&self) -> i32 {
        or_default(self.expiration_seconds, DEFAULT_EXPIRATION_SECONDS)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoProfilerSpec {
    /// URL of the pprof endpoint, such as http://10.88.0.7:6060/debug/pprof/heap (an address of
    /// the Abnormal's pod), or the absolute path of a pprof file on the node (or a file:// URL),
    /// read only under a directory the agent's --go-profile-dir allows.
    pub source: String,
}

impl GoProfilerSpec {
    /// The node file `source` names, when it names one rather than a URL: an absolute path
    /// (`/var/run/app/heap.pprof`) or a `file://` URL (`file:///var/run/app/heap.pprof`). Kube
    /// Diagnoser passed `source` to `go tool pprof`, which reads a file when the source is not a
    /// URL with a host; a relative path would be read against the agent's working directory, so
    /// it is returned as is for the agent to refuse.
    pub fn local_file(&self) -> Option<&str> {
        let source = self.source.trim();
        if let Some(path) = source.strip_prefix("file://") {
            return Some(path);
        }
        source.starts_with('/').then_some(source)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JavaProfilerSpec {
    /// Arthas: kdiag runs jcmd instead (VM.version, Thread.print, GC.class_histogram) and keeps
    /// one text report. MemoryAnalyzer: kdiag keeps the raw HPROF file for Eclipse MAT.
    #[serde(rename = "type")]
    pub type_: JavaProfilerType,
    /// Absolute path of the HPROF file. Required for MemoryAnalyzer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hprof_file_path: String,
    /// kdiag extension: the host pid of the Java process to profile. Without it, the Java
    /// processes of spec.podReference (and its container, if named) on the Abnormal's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JavaProfilerType {
    Arthas,
    MemoryAnalyzer,
}

/// The outcome of one profiler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfilerStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ProcessorType,
    /// Where to read the result (the agent's /profiles/ URL). The agent deletes the result once
    /// expirationSeconds have passed; the URL then answers 404.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Where an Abnormal is in its lifecycle. `Unknown` is in the enum for Kube Diagnoser
/// compatibility only: kdiag never sets it, and an Abnormal whose phase is empty or `Unknown`
/// has not been admitted yet (the controller admits it).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AbnormalPhase {
    InformationCollecting,
    Diagnosing,
    Recovering,
    Succeeded,
    Failed,
    /// Declared by Kube Diagnoser, never set.
    Unknown,
}

impl AbnormalPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InformationCollecting => "InformationCollecting",
            Self::Diagnosing => "Diagnosing",
            Self::Recovering => "Recovering",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Unknown => "Unknown",
        }
    }

    /// Succeeded and Failed are final: nothing changes an Abnormal after them.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    pub const ALL: [AbnormalPhase; 6] = [
        Self::InformationCollecting,
        Self::Diagnosing,
        Self::Recovering,
        Self::Succeeded,
        Self::Failed,
        Self::Unknown,
    ];
}

impl std::fmt::Display for AbnormalPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three processing stages, named after the phase an Abnormal is in while running them.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum Stage {
    InformationCollecting,
    Diagnosing,
    Recovering,
}

impl Stage {
    pub const ALL: [Stage; 3] = [
        Self::InformationCollecting,
        Self::Diagnosing,
        Self::Recovering,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InformationCollecting => "InformationCollecting",
            Self::Diagnosing => "Diagnosing",
            Self::Recovering => "Recovering",
        }
    }

    pub fn phase(self) -> AbnormalPhase {
        match self {
            Self::InformationCollecting => AbnormalPhase::InformationCollecting,
            Self::Diagnosing => AbnormalPhase::Diagnosing,
            Self::Recovering => AbnormalPhase::Recovering,
        }
    }

    /// The condition a stage sets when it ends.
    pub fn condition(self) -> AbnormalConditionType {
        match self {
            Self::InformationCollecting => AbnormalConditionType::InformationCollected,
            Self::Diagnosing => AbnormalConditionType::Identified,
            Self::Recovering => AbnormalConditionType::Recovered,
        }
    }

    pub fn processor_type(self) -> ProcessorType {
        match self {
            Self::InformationCollecting => ProcessorType::InformationCollector,
            Self::Diagnosing => ProcessorType::Diagnoser,
            Self::Recovering => ProcessorType::Recoverer,
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the status of an Abnormal says.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalStatus {
    /// True when a diagnoser identified the cause.
    #[serde(default)]
    pub identifiable: bool,
    /// True when a recoverer recovered it.
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AbnormalPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<AbnormalCondition>,
    /// Human-readable detail of the current phase; on Failed, what went wrong and what to do.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// CamelCase reason for the current phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the controller admitted the Abnormal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// The diagnoser that identified the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnoser: Option<NamespacedName>,
    /// The recoverer that recovered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoverer: Option<NamespacedName>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_executors: Vec<CommandExecutorStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profilers: Vec<ProfilerStatus>,
    /// The processors' output board, keyed by the context keys in `context_keys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_free_form_object")]
    pub context: Option<BTreeMap<String, serde_json::Value>>,
    /// kdiag extension: one record per step, in the order they ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processors: Vec<ProcessorRecord>,
    /// kdiag extension: the cause found, with the evidence it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_cause: Option<RootCause>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AbnormalConditionType {
    InformationCollected,
    Identified,
    Recovered,
    /// kdiag extension: set by the controller when it admits or rejects the Abnormal.
    Accepted,
}

impl AbnormalConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InformationCollected => "InformationCollected",
            Self::Identified => "Identified",
            Self::Recovered => "Recovered",
            Self::Accepted => "Accepted",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// A condition of an Abnormal. lastTransitionTime changes only when status changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalCondition {
    #[serde(rename = "type")]
    pub type_: AbnormalConditionType,
    pub status: ConditionStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// kdiag extension: one step of the pipeline and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorRecord {
    /// The registration (namespace/name) for a processor; the argv for a command executor; the
    /// profiler's name for a profiler.
    pub processor: String,
    pub kind: ProcessorKind,
    pub stage: Stage,
    pub result: ProcessorResult,
    /// What happened, naming the address called for an HTTP processor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub start_time: Time,
    /// Milliseconds the step took; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_milliseconds: Option<i64>,
    /// The status.context keys the step wrote (added or changed). A plugin may remove a key
    /// only when the last step that wrote it was its own registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub context_keys: Vec<String>,
}

impl ProcessorRecord {
    /// The attempt a Running record of an idempotent recovery says it is (its message starts
    /// `attempt N:` from the second attempt on); None for a first attempt or any other record.
    pub fn attempt(&self) -> Option<u32> {
        self.message
            .strip_prefix("attempt ")?
            .split(':')
            .next()?
            .parse()
            .ok()
    }
}

/// What ran in a step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProcessorKind {
    /// A processor registered as an InformationCollector, Diagnoser or Recoverer.
    Processor,
    CommandExecutor,
    Profiler,
}

/// How a step ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProcessorResult {
    /// Started and not yet ended. A recoverer's record is written with this result before it
    /// acts, so a restarted agent knows the recovery may have happened and never repeats it.
    Running,
    Succeeded,
    Failed,
    /// Not run: its stage was skipped, an earlier processor already succeeded, or policy denied it.
    Skipped,
}

impl ProcessorResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::Skipped => "Skipped",
        }
    }
}

/// kdiag extension: the cause of an Abnormal.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootCause {
    /// One line a person can act on, naming the object and the cause.
    pub summary: String,
    /// A CamelCase reason code, such as OOMKilled or PodDiskUsageHigh.
    pub reason: String,
    /// The processor (namespace/name) that found it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub processor: String,
    /// What to do next.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suggestion: String,
    /// The facts the conclusion rests on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence>,
    /// When the cause first showed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// Other causes found at the same time, most likely first (the root cause above ranks first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub others: Vec<CauseCandidate>,
}

/// kdiag extension: another cause a diagnoser found, ranked below the root cause.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CauseCandidate {
    pub reason: String,
    pub summary: String,
    /// When it first showed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// kdiag extension: one fact a root cause rests on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// What kind of fact: Event, Log, KernelLog, PodStatus, Process, DiskUsage, Context, …
    pub kind: String,
    /// The fact itself, in a sentence or a quoted line.
    pub message: String,
    /// The object it is about, when it is about one, as the lower-case resource, then namespace
    /// and name (`pod/shop/web`; `node/node-a` for a cluster-scoped object), the way `kubectl`
    /// names objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// The status.context key it was read from, when it came from collected data.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_key: String,
    /// When the fact was observed or happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Time>,
}

impl Abnormal {
    /// The phase, or None before the controller admits it.
    pub fn phase(&self) -> Option<AbnormalPhase> {
        self.status.as_ref().and_then(|s| s.phase)
    }

    /// The processors assigned to a stage, in the order they run.
    pub fn assigned(&self, stage: Stage) -> &[NamespacedName] {
        match stage {
            Stage::InformationCollecting => &self.spec.assigned_information_collectors,
            Stage::Diagnosing => &self.spec.assigned_diagnosers,
            Stage::Recovering => &self.spec.assigned_recoverers,
        }
    }

    /// The Kube Diagnoser release whose rules the Abnormal asks for with
    /// [`crate::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION`], as N of v0.1.N: None without the
    /// annotation, an error naming the accepted values when it names no release.
    pub fn kube_diagnoser_release(&self) -> Result<Option<u8>, String> {
        let Some(value) = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION))
        else {
            return Ok(None);
        };
        let release = value.trim();
        release
            .strip_prefix('v')
            .unwrap_or(release)
            .strip_prefix("0.1.")
            .and_then(|n| n.parse::<u8>().ok())
            .filter(|n| *n <= 6)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "annotation {} is {value:?}, which names no Kube Diagnoser release; give one of v0.1.0 to v0.1.6, or remove it for kdiag's rules (those of v0.1.4 to v0.1.6)",
                    crate::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION
                )
            })
    }

    /// True when an empty processor list of a stage whose skip flag is false means every
    /// registered processor of its kind, as in Kube Diagnoser v0.1.0–v0.1.3; asked for with
    /// [`crate::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION`].
    pub fn empty_list_means_every_registered(&self) -> bool {
        matches!(self.kube_diagnoser_release(), Ok(Some(0..=3)))
    }

    /// True when a set skip flag skips the stage's command executors and profilers too, as
    /// kdiag and Kube Diagnoser v0.1.0–v0.1.1 do (v0.1.0 had neither); false for v0.1.2–v0.1.3,
    /// which ran them before looking at the flag.
    pub fn skip_flag_skips_commands(&self) -> bool {
        !matches!(self.kube_diagnoser_release(), Ok(Some(2 | 3)))
    }

    /// True when a stage's v0.1.0 skip flag is set: none of the stage's processors runs, nor,
    /// unless [`Self::skip_flag_skips_commands`] says otherwise, its command executors and
    /// profilers.
    pub fn skip_flag(&self, stage: Stage) -> bool {
        match stage {
            Stage::InformationCollecting => self.spec.skip_information_collection,
            Stage::Diagnosing => self.spec.skip_diagnosis,
            Stage::Recovering => self.spec.skip_recovery,
        }
    }

    /// True when a stage has no processor to run, so its condition says `Skipped`: its skip
    /// flag is set or its list is empty. Its command executors and profilers still run unless the
    /// flag is set.
    pub fn skips_processors(&self, stage: Stage) -> bool {
        self.skip_flag(stage) || self.assigned(stage).is_empty()
    }
}

/// A free-form context value, as a processor's output board holds it.
pub type Context = BTreeMap<String, serde_json::Value>;

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::*;

    #[test]
    fn a_go_source_is_a_node_file_when_it_is_an_absolute_path_or_a_file_url() {
        let go = |s: &str| GoProfilerSpec { source: s.into() };
        assert_eq!(go("/tmp/heap.pprof").local_file(), Some("/tmp/heap.pprof"));
        assert_eq!(
            go("file:///tmp/heap.pprof").local_file(),
            Some("/tmp/heap.pprof")
        );
        assert_eq!(go("file://heap.pprof").local_file(), Some("heap.pprof"));
        for url in [
            "http://10.0.0.1:6060/debug/pprof/heap",
            "https://10.0.0.1/debug/pprof/heap",
            "10.0.0.1:6060/debug/pprof/heap",
        ] {
            assert_eq!(go(url).local_file(), None, "{url}");
        }
    }

    #[test]
    fn an_empty_source_from_a_go_client_is_allowed_by_the_schema_and_read_as_custom() {
        for source in [json!(""), json!(null)] {
            let spec: AbnormalSpec = serde_json::from_value(json!({"source": source})).unwrap();
            assert_eq!(spec.source, AbnormalSourceType::Custom);
        }
        let crd = serde_json::to_value(Abnormal::crd()).unwrap();
        let source = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["source"];
        assert!(
            source["enum"].as_array().unwrap().contains(&json!("")),
            "{source}"
        );
    }
}
