//! kdiag extension of a KubeProber `Probe`: `spec.triggers`, the objects whose changes run the
//! probe at once (docs/probes.md, "Probes triggered by change"), and what a run records of them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Seconds without a further matching change before a triggered run starts, unless a trigger
/// or the controller (`--probe-trigger-quiet`) says otherwise.
pub const DEFAULT_QUIET_SECONDS: i64 = 5;
/// The same for a trigger that counts only finished rollouts (when the controller's default is
/// longer): a rollout of 50 pods finishes once, so its end needs no folding beyond workloads of
/// one upgrade finishing together, and a shorter wait is what brings the run within seconds of
/// the rollout.
pub const DEFAULT_ROLLOUT_QUIET_SECONDS: i64 = 1;
/// Seconds after the first change of a batch by which its run starts even while changes keep
/// coming (a rollout that never ends), unless a trigger or `--probe-trigger-max-wait` says
/// otherwise.
pub const DEFAULT_MAX_WAIT_SECONDS: i64 = 60;
/// The condition a Probe with triggers gets in `status.conditions`: False with the reason when
/// a trigger cannot be used (another namespace, a bad selector); its triggers are then ignored.
pub const TRIGGERS_VALID_CONDITION: &str = "TriggersValid";

/// One kind of object a probe may watch.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum TriggerKind {
    DaemonSet,
    Deployment,
    StatefulSet,
    ConfigMap,
    /// Cluster-scoped: a trigger on Nodes names no namespace.
    Node,
}

impl TriggerKind {
    pub const ALL: [TriggerKind; 5] = [
        Self::DaemonSet,
        Self::Deployment,
        Self::StatefulSet,
        Self::ConfigMap,
        Self::Node,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DaemonSet => "DaemonSet",
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::ConfigMap => "ConfigMap",
            Self::Node => "Node",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Self::Node
    }

    /// Whether the kind rolls out pods (RolloutFinished applies).
    pub fn is_workload(self) -> bool {
        matches!(self, Self::DaemonSet | Self::Deployment | Self::StatefulSet)
    }
}

impl std::fmt::Display for TriggerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of a watched object that may run a probe.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ChangeType {
    /// A workload's rollout finished: after a spec change (or its creation), the controller saw
    /// the new generation and every desired replica is updated and ready.
    RolloutFinished,
    /// Its spec changed (a new generation; for a ConfigMap, its data), or it was created or
    /// deleted.
    SpecChanged,
    /// The status of one of its conditions changed (a Node's Ready flipping), or a Node joined
    /// or left.
    ConditionChanged,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RolloutFinished => "RolloutFinished",
            Self::SpecChanged => "SpecChanged",
            Self::ConditionChanged => "ConditionChanged",
        }
    }
}

impl std::fmt::Display for ChangeType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// kdiag extension: objects whose changes run the probe at once. Only objects of the Probe's
/// own namespace, and Nodes, may be watched: the controller watches with its own rights, and a
/// Probe must not learn through its runs of objects elsewhere.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeTrigger {
    /// DaemonSet, Deployment, StatefulSet, ConfigMap or Node.
    pub kind: TriggerKind,
    /// Must be empty or the Probe's own namespace (empty for Nodes).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Only the object of this name; empty: every object the selector takes.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Only objects with these labels; empty: every object of the kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The changes that count. Default: RolloutFinished for workloads, SpecChanged for a
    /// ConfigMap, ConditionChanged for a Node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<ChangeType>,
    /// With ConditionChanged: only these condition types (such as Ready); empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub condition_types: Vec<String>,
    /// Seconds without a further matching change before the run starts. Default 5 (the
    /// controller's `--probe-trigger-quiet`); 1 for a trigger that counts only RolloutFinished (a
    /// rollout finishes once, however many pods it replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_seconds: Option<i64>,
    /// Seconds after the first change by which the run starts even while changes keep coming.
    /// Default 60 (`--probe-trigger-max-wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_seconds: Option<i64>,
}

/// kdiag extension: a condition of a Probe (TriggersValid).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One change that started a run (trigger Change).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRunChange {
    pub kind: String,
    /// Empty for a Node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// RolloutFinished, SpecChanged or ConditionChanged.
    pub change: String,
    /// What changed, in a few words (`generation 3`, `Ready False -> True`, `joined`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// When the controller saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Time>,
}

impl ProbeRunChange {
    /// `DaemonSet kube-system/kube-proxy RolloutFinished`.
    pub fn summary(&self) -> String {
        let object = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        format!("{} {object} {}", self.kind, self.change)
    }
}
