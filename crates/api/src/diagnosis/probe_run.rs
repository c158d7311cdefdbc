//! `ProbeRun` (kdiag's own kind): one run of a KubeProber `Probe`, what started it, and what its
//! checkers found, kept as a bounded history per probe.
//!
//! A manual run is a ProbeRun created with `spec.trigger: Manual` (`kubectl diag probe run`), so
//! RBAC on `create proberuns` decides who may run probes, and the creator needs nothing else.
//! kdiag's probe runner runs it, makes its Probe its owner (it is garbage-collected with it),
//! records scheduled runs the same way, writes the results into its status as the checkers
//! report (and the root cause once it is written back), and deletes the oldest runs of a probe
//! beyond the controller's `--probe-history` (docs/probes.md).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::kubeprober::{CheckerDiagnosis, CheckerStatus};

/// The label every ProbeRun carries: the name of its Probe, to list a probe's history.
pub const PROBE_RUN_PROBE_LABEL: &str = "kdiag.io/probe";
/// The label on the Job of a run: the ProbeRun's name.
pub const PROBE_RUN_LABEL: &str = "kdiag.io/probe-run";

/// Annotation on a ProbeRun: when its creator asked for it, to the nanosecond (RFC 3339).
/// Pruning keeps a probe's newest runs, and `creationTimestamp` has whole seconds: runs asked for
/// one after another share one, and without this the newest could be the one deleted.
pub const PROBE_RUN_REQUESTED_AT_ANNOTATION: &str = "kdiag.io/requested-at";

/// The annotations a ProbeRun is created with: [`PROBE_RUN_REQUESTED_AT_ANNOTATION`], now.
pub fn requested_now() -> std::collections::BTreeMap<String, String> {
    [(
        PROBE_RUN_REQUESTED_AT_ANNOTATION.to_owned(),
        jiff::Timestamp::now().to_string(),
    )]
    .into()
}

/// The value of [`PROBE_RUN_PROBE_LABEL`] for a probe: its name, cut to a label value's 63
/// characters (a name may have 253); `spec.probe` says which probe for sure.
pub fn probe_label_value(probe: &str) -> String {
    let cut: String = probe.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_owned()
}

/// One run of a Probe.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "diagnosis.netease.com",
    version = "v1",
    kind = "ProbeRun",
    namespaced,
    status = "ProbeRunStatus",
    shortname = "prun",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "One run of a KubeProber Probe: what started it and what its checkers found.",
    printcolumn(name = "Probe", type_ = "string", json_path = ".spec.probe"),
    printcolumn(name = "Trigger", type_ = "string", json_path = ".spec.trigger"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Result", type_ = "string", json_path = ".status.result"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRunSpec {
    /// The Probe (kubeprober.erda.cloud/v1) to run, in the ProbeRun's namespace.
    pub probe: String,
    /// What started the run: Manual (a person or a pipeline created it), Schedule (the probe's
    /// runInterval) or Change (a change of an object the Probe's `spec.triggers` watch).
    #[serde(default)]
    pub trigger: ProbeRunTrigger,
    /// With trigger Change: the changes this run was started for (the first ones of its batch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::probe_trigger::ProbeRunChange>,
    /// With trigger Change: how many more changes the batch had beyond those listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_omitted: Option<i64>,
}

/// What started a run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProbeRunTrigger {
    #[default]
    Manual,
    Schedule,
    Change,
}

impl ProbeRunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "Manual",
            Self::Schedule => "Schedule",
            Self::Change => "Change",
        }
    }
}

/// Where a run is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProbeRunPhase {
    /// Created, not yet started by the runner.
    #[default]
    Pending,
    /// Started: its checkers have not all reported.
    Running,
    /// Every checker reported (or its checker pod ended): see `result`.
    Finished,
    /// It could not run (no such Probe, nothing to run); `message` says why.
    Failed,
}

impl ProbeRunPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Finished => "Finished",
            Self::Failed => "Failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed)
    }
}

/// What a run found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRunStatus {
    #[serde(default)]
    pub phase: ProbeRunPhase,
    /// The worst checker status of the run (ERROR > WARN > UNKNOWN > INFO > PASS), once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<CheckerStatus>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// The Jobs of the run, for a probe with a pod template (one per `configs` entry with
    /// `perConfig`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<String>,
    /// Each checker's result in this run, with kdiag's diagnosis of a failure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkers: Vec<ProbeRunChecker>,
}

/// One checker's result in a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeRunChecker {
    pub name: String,
    pub status: CheckerStatus,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// The Abnormal the failure started and its root cause, once kdiag wrote it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<CheckerDiagnosis>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_probe_name_is_cut_to_a_valid_label_value() {
        assert_eq!(probe_label_value("k8s"), "k8s");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(100));
        let v = probe_label_value(&long);
        assert_eq!(v, "a".repeat(62), "cut at 63, without the trailing dash");
    }
}
