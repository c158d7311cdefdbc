//! `kubeprober.erda.cloud/v1`: KubeProber's `Probe`, `ProbeStatus` and `Cluster`, with the same
//! JSON names so its probe images, SDK and existing objects work against kdiag unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Environment variables every checker pod gets.
pub mod env {
    pub const PROBE_NAMESPACE: &str = "KUBEPROBER_PROBE_NAMESPACE";
    pub const PROBE_NAME: &str = "KUBEPROBER_PROBE_NAME";
    pub const STATUS_REPORT_URL: &str = "KUBEPROBER_STATUS_REPORT_URL";
    /// kdiag's addition: the file holding the checker pod's projected ServiceAccount token for
    /// [`super::REPORT_AUDIENCE`], to send as `Authorization: Bearer <token>` with each report.
    pub const STATUS_REPORT_TOKEN_FILE: &str = "KDIAG_PROBE_STATUS_TOKEN_FILE";
    /// kdiag's addition, with `spec.perConfig`: the name of the `configs` entry a pod runs.
    pub const PROBE_CONFIG: &str = "KDIAG_PROBE_CONFIG";
}

/// With `spec.perConfig`, the annotation on a checker pod (and its Job) naming the `configs`
/// entry it runs: its results are stored under that name.
pub const PROBE_CONFIG_ANNOTATION: &str = "kdiag.io/probe-config";

/// The audience of the token a checker pod reports with (`POST /probe-status`).
pub const REPORT_AUDIENCE: &str = "kdiag-probe-status";
/// Where kdiag's probe runner mounts that token in every container of a checker pod.
pub const REPORT_TOKEN_DIR: &str = "/var/run/secrets/kdiag.io/probe-status";
/// The token's lifetime: the shortest the apiserver issues; the kubelet renews it.
pub const REPORT_TOKEN_SECONDS: i64 = 600;
/// The ServiceAccount checker pods run as when their Probe's template names none, as KubeProber
/// forced it; the probe runner creates it, and binds the ClusterRole of the same name to it, in
/// each Probe's namespace (docs/probes.md).
pub const WORKER_SERVICE_ACCOUNT: &str = "kubeprober-worker";
/// The ConfigMap whose keys every checker container gets as environment variables (KubeProber's
/// `extra-config`); optional, so a namespace without it still runs its probes.
pub const EXTRA_CONFIG_MAP: &str = "extra-config";

/// Labels every checker pod gets.
pub mod labels {
    pub const APP: &str = "app";
    pub const APP_VALUE: &str = "kubeprober.erda.cloud";
    pub const PROBE_NAMESPACE: &str = "kubeprober.erda.cloud/probe-namespace";
    pub const PROBE_NAME: &str = "kubeprober.erda.cloud/probe-name";
}

/// A probe: a checker pod run once or every runInterval minutes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeprober.erda.cloud",
    version = "v1",
    kind = "Probe",
    namespaced,
    status = "ProbeStates",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "A KubeProber probe: a checker pod run once or every runInterval minutes.",
    printcolumn(
        name = "RunInterval",
        type_ = "integer",
        json_path = ".spec.policy.runInterval"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.template.containers[0].image"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    #[serde(default)]
    pub policy: ProbePolicy,
    /// The checker pod (restartPolicy is forced to Never). Optional when `checks` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::optional_free_form_object")]
    pub template: Option<PodSpec>,
    /// Environment appended to every container of the checker pod: every entry's, in one pod
    /// (KubeProber's way), unless `perConfig`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<ProbeConfig>,
    /// kdiag extension: one checker pod per `configs` entry (one case template, many cases), each
    /// with only its entry's environment and `KDIAG_PROBE_CONFIG=<name>`, its results reported
    /// under the entry's name (`<name>`, or `<name>/<checker>` when the pod reports several).
    /// Default false: every entry's environment in one pod, as KubeProber does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_config: bool,
    /// kdiag extension: checks kdiag runs itself, without a checker image, reported as checkers of
    /// this probe under their names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<NativeCheck>,
    /// kdiag extension: objects whose changes run this probe at once (a rollout finished, a
    /// spec or a condition changed), debounced into one run; only objects of the Probe's own
    /// namespace, and Nodes (docs/probes.md, "Probes triggered by change").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<crate::probe_trigger::ProbeTrigger>,
}

/// kdiag extension: a check kdiag runs itself. Exactly one kind is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NativeCheck {
    /// The checker name it reports under (unique in the probe).
    pub name: String,
    /// The apiserver answers /readyz, and how fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<ApiserverCheck>,
    /// Names resolve, against given or discovered resolvers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsCheck>,
    /// A write round trip in kdiag's own namespace: a Lease there can be created and deleted (admission webhooks, etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_round_trip: Option<NamespaceRoundTripCheck>,
    /// No node is NotReady or cordoned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesCheck>,
    /// Certificates of endpoints or files are not about to expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCheck>,
    /// An HTTP endpoint answers with the expected status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// A TCP endpoint accepts connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// etcd answers a put, get and delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdCheck>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiserverCheck {
    /// WARN above this latency of /readyz. Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_milliseconds: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsCheck {
    /// Names that must resolve (A or AAAA records).
    pub names: Vec<String>,
    /// Resolvers as ip or ip:port; empty means the nameservers of /etc/resolv.conf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolvers: Vec<String>,
    /// Per query. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRoundTripCheck {
    /// Seconds the deletion may take before WARN. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesCheck {
    /// A cordoned node is WARN (default) or ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_cordoned: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCheck {
    /// host:port endpoints whose served certificate is checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// PEM files (on the controller's filesystem) whose certificates are checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// WARN when a certificate expires within this many days. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_days: Option<i64>,
    /// ERROR when it expires within this many days (or has expired). Default 7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_days: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    pub url: String,
    /// Expected status code. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<i32>,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TcpCheck {
    /// host:port.
    pub address: String,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdCheck {
    /// An etcd client URL, such as http://127.0.0.1:2379 (its v3 HTTP gateway is used).
    pub endpoint: String,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbePolicy {
    /// Minutes between runs; absent or ≤ 0 runs the probe once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_interval: Option<i64>,
    /// Minutes of jitter added to each interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_interval_random: Option<i64>,
    /// kdiag extension: `Periodic` (default: KubeProber's runs every runInterval minutes) or
    /// `Continuous` (native checks run inside the controller, a checker image as one resident
    /// pod, every intervalSeconds; results pass the denoiser before they reach the ProbeStatus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ProbeMode>,
    /// kdiag extension, Continuous only: seconds between results. Default 10, minimum 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<i32>,
    /// kdiag extension, Continuous only: when a checker's raw results change its status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoise: Option<Denoise>,
}

/// kdiag extension: how a probe runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ProbeMode {
    /// A run every runInterval minutes, or once (KubeProber's).
    #[default]
    Periodic,
    /// A result every intervalSeconds, denoised.
    Continuous,
}

/// kdiag extension: a continuous checker turns ERROR only after `failures` failures among its
/// last `window` results, and back to PASS only after `recoveries` passes in a row.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Denoise {
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<i32>,
    /// Default 10 (at least `failures`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i32>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recoveries: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "env_list")]
    pub env: Vec<EnvVar>,
}

fn env_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStates {
    /// Hash of the spec, used by KubeProber's master to push updates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub md5: String,
    /// DONE for a one-shot probe that ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// kdiag extension: when kdiag last started a run of this probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// kdiag extension: when the next run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_time: Option<Time>,
    /// kdiag extension: runs started so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<i64>,
    /// kdiag extension: TriggersValid=False with the reason when `spec.triggers` cannot be
    /// used (they are then ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::probe_trigger::ProbeCondition>,
}

/// A checker's result: PASS, INFO, UNKNOWN, WARN or ERROR, in any case on input (KubeProber
/// upper-cased what it received); kdiag writes them upper-case.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckerStatus {
    #[default]
    Pass,
    Info,
    Unknown,
    Warn,
    Error,
}

impl CheckerStatus {
    /// Worse statuses are greater: ERROR > WARN > UNKNOWN > INFO > PASS.
    pub fn severity(self) -> u8 {
        match self {
            Self::Pass => 0,
            Self::Info => 1,
            Self::Unknown => 2,
            Self::Warn => 3,
            Self::Error => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Info => "INFO",
            Self::Unknown => "UNKNOWN",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }

    /// Parses a status the way KubeProber does: case-insensitively.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PASS" => Some(Self::Pass),
            "INFO" => Some(Self::Info),
            "UNKNOWN" => Some(Self::Unknown),
            "WARN" => Some(Self::Warn),
            "ERROR" => Some(Self::Error),
            _ => None,
        }
    }
}

/// Case-insensitive, as KubeProber upper-cases statuses on receipt.
impl<'de> Deserialize<'de> for CheckerStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown checker status {s:?}: expected PASS, INFO, WARN, UNKNOWN or ERROR"
            ))
        })
    }
}

/// The statuses in any case, as a pattern (RE2, which the apiserver uses), so the CRD accepts a
/// ProbeStatus written directly with `pass` as the report endpoint and kdiag's reader do.
pub const CHECKER_STATUS_PATTERN: &str = "^(?i)(PASS|INFO|UNKNOWN|WARN|ERROR)$";

impl JsonSchema for CheckerStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "CheckerStatus".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "PASS, INFO, UNKNOWN, WARN or ERROR, in any case; kdiag writes them upper-case.",
            "type": "string",
            "pattern": CHECKER_STATUS_PATTERN,
        })
    }
}

impl std::fmt::Display for CheckerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The results of a probe's checkers. Same name and namespace as its Probe.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeprober.erda.cloud",
    version = "v1",
    kind = "ProbeStatus",
    namespaced,
    status = "ProbeStatusStates",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "The results of a probe's checkers.",
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message"),
    printcolumn(name = "LastRun", type_ = "string", json_path = ".status.lastRun"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatusSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkers: Vec<ProbeCheckerStatus>,
}

/// One checker's latest result.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeCheckerStatus {
    /// Unique within the probe.
    pub name: String,
    #[serde(default)]
    pub status: CheckerStatus,
    /// Required unless the status is PASS or INFO.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// kdiag extension: the diagnosis of this checker's current failure episode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<CheckerDiagnosis>,
    /// kdiag extension, continuous probes: the raw results behind the denoised status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<CheckerWindow>,
}

/// kdiag extension: a continuous checker's recent raw results, so a flapping path shows without
/// paging anyone.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckerWindow {
    /// How many results the window holds (up to 100, the newest).
    pub results: i32,
    /// The share of them that passed (PASS or INFO), 0 to 1, to two decimals.
    pub success_rate: f64,
    /// Median latency of a result, in milliseconds (absent when no result carried one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_millis: Option<i64>,
    /// 99th percentile latency, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_millis: Option<i64>,
}

/// kdiag extension: the Abnormal a failed checker started and what it found.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckerDiagnosis {
    /// The Abnormal, as namespace/name (several joined by `, `); absent when the controller
    /// diagnosed the failure alone, with no node to run an Abnormal on.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub abnormal: String,
    /// Its phase: Pending or the phase of an Abnormal still running; once all ended,
    /// Succeeded, or Failed when one failed or when nothing found a cause (reason
    /// `NoCauseFound`) — an Abnormal that only collected ends Succeeded, its diagnosis does not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Its root cause's summary; with several nodes (or the controller's finding about the
    /// cluster first) each node's as `node N: …`, joined by `; `.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_cause: String,
    /// The root cause's reason code (such as `ClusterDNSNoReadyEndpoints`), or
    /// [`NO_CAUSE_FOUND`] once every Abnormal of the episode ended and nothing found a cause:
    /// then `message` says what was checked. Empty while the diagnosis runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// With reason `NoCauseFound`: what was checked (the processors that ran, on which nodes)
    /// and that none of them found a cause.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The facts the root cause rests on (at most five), as in the Abnormal's rootCause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<crate::Evidence>,
}

impl CheckerDiagnosis {
    /// The one line to show for it: the root cause, else the "no cause found: …" account.
    pub fn cause_text(&self) -> &str {
        if self.root_cause.is_empty() && self.reason == NO_CAUSE_FOUND {
            &self.message
        } else {
            &self.root_cause
        }
    }
}

/// [`CheckerDiagnosis::reason`] when the diagnosis ended and no cause was found. It is not
/// success: the checker still fails, kdiag only could not say why.
pub const NO_CAUSE_FOUND: &str = "NoCauseFound";

/// The per-probe summary: the worst checker, its message and the latest lastRun.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeStatusStates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CheckerStatus>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
}

/// What a checker posts to the report endpoint (KubeProber's SDK payload). The top-level
/// checker fields are inlined, as the SDK sends them (usually with an empty name).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportProbeStatusSpec {
    pub probe_name: String,
    pub probe_namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_run: Option<Time>,
    #[serde(default)]
    pub checkers: Vec<ReportedChecker>,
}

/// One checker as reported: the status is free text until validated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReportedChecker {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_run: Option<Time>,
    /// kdiag extension: how long the check took, for a continuous probe's latency percentiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_millis: Option<i64>,
}

/// A cluster managed by KubeProber's multi-cluster master.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeprober.erda.cloud",
    version = "v1",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    category = "kdiag",
    derive = "Default",
    derive = "PartialEq",
    doc = "A cluster managed by KubeProber's multi-cluster master.",
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.k8sVersion"),
    printcolumn(name = "NodeCount", type_ = "string", json_path = ".status.nodeCount"),
    printcolumn(
        name = "ProbeNamespace",
        type_ = "string",
        json_path = ".spec.clusterConfig.probeNamespaces"
    ),
    printcolumn(name = "Probe", type_ = "string", json_path = ".status.attachedProbes"),
    printcolumn(name = "Total/Error", type_ = "string", json_path = ".status.checkers"),
    printcolumn(
        name = "HeartbeatTime",
        type_ = "string",
        json_path = ".status.heartBeatTimeStamp"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub k8s_version: String,
    #[serde(default)]
    pub cluster_config: ClusterConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_info: Vec<ExtraVar>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca_cert: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cert_data: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_data: String,
    /// Comma-separated namespaces probes run in.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe_namespaces: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub heart_beat_time_stamp: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attached_probes: Vec<String>,
    /// "total/error".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub checkers: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub once_probe_list: Vec<OnceProbeItem>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_status: BTreeMap<String, String>,
    /// kdiag extension: `Connected` while the cluster's member link heartbeats to the hub,
    /// `Offline` once it missed them (docs/fleet.md).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// kdiag extension: since when `state` holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since: Option<Time>,
    /// kdiag extension: why the cluster is offline (missed heartbeats, revoked credential).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// kdiag extension: the last heartbeat the hub received, as a timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// kdiag extension: the kdiag version of the member.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kdiag_version: String,
    /// kdiag extension: results the member dropped because its queue to the hub was full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_results: Option<i64>,
    /// kdiag extension: the member's Abnormals now, by outcome (as its last heartbeat counted
    /// them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abnormals: Option<AbnormalCounts>,
    /// kdiag extension: the member's latest diagnoses, open ones first and then the most
    /// recently finished, each with its root cause once found (the hub keeps a few).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub diagnoses: Vec<DiagnosisSummary>,
}

/// kdiag extension: a member cluster's Abnormals by outcome.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbnormalCounts {
    /// Not finished yet: admitted or not, collecting, diagnosing or recovering.
    #[serde(default)]
    pub open: i64,
    #[serde(default)]
    pub failed: i64,
    #[serde(default)]
    pub succeeded: i64,
}

/// kdiag extension: what the hub keeps of one Abnormal of a member cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosisSummary {
    pub namespace: String,
    pub name: String,
    /// The node it runs on, once known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Its phase; empty before the controller admitted it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// The reason of its phase (status.reason).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Its root cause's summary, once found.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_cause: String,
    /// Its root cause's reason code.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_cause_reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<Time>,
    /// When it reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
}

impl DiagnosisSummary {
    /// Still running (or not admitted yet): neither Succeeded nor Failed.
    pub fn is_open(&self) -> bool {
        self.phase != "Succeeded" && self.phase != "Failed"
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnceProbeItem {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub create_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub finish_time: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<String>,
    /// kdiag extension: what this run found, per Probe (each checker with kdiag's diagnosis),
    /// as the member reported its ProbeRuns once they ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<OnceProbeResult>,
}

/// kdiag extension: one Probe's results in a one-time run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnceProbeResult {
    pub probe: String,
    /// The ProbeRun's phase: Finished, or Failed when it could not run.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkers: Vec<ProbeCheckerStatus>,
}
