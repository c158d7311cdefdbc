//! kdiag's API: the custom resources it serves and reads, as Rust types.
//!
//! Two API groups live here:
//! - `diagnosis.netease.com/v1` ([`diagnosis`]): `Abnormal`, `InformationCollector`, `Diagnoser`,
//!   `Recoverer` and `AbnormalSource`, plus kdiag's own `ProbeRun` (a probe run's history),
//!   wire-compatible with Kube Diagnoser v0.1.6 so its YAML and
//!   HTTP plugins keep working. kdiag's additions are optional fields, marked "kdiag extension" in
//!   their doc comments.
//! - `kubeprober.erda.cloud/v1` ([`kubeprober`]): `Probe`, `ProbeStatus` and `Cluster` as KubeProber
//!   defines them, plus kdiag's optional per-checker diagnosis fields.
//!
//! The CRD YAML in `config/crd/` is generated from these types ([`crds`]); a test fails when
//! the committed YAML drifts from them.
//!
//! This crate holds types and pure helpers only: nothing here talks to an apiserver.

// `#[kube(printcolumn(type_ = …))]` repeats keys by design; clippy reads them as duplicates.
#![allow(clippy::duplicated_attributes)]

pub mod crds;
pub mod diagnosis;
pub mod duration;
pub mod gate;
pub mod kubeprober;
pub mod labels;
pub mod plugin;
pub mod probe_trigger;
mod schema;

pub use diagnosis::NamespacedName;
pub use diagnosis::abnormal::{
    Abnormal, AbnormalCondition, AbnormalConditionType, AbnormalPhase, AbnormalSourceType,
    AbnormalSpec, AbnormalStatus, CauseCandidate, CommandExecutorSpec, CommandExecutorStatus,
    ConditionStatus, DEFAULT_EXPIRATION_SECONDS, DEFAULT_STEP_TIMEOUT_SECONDS, Evidence,
    GoProfilerSpec, JavaProfilerSpec, JavaProfilerType, PodReference, ProbeReference,
    ProcessorKind, ProcessorRecord, ProcessorResult, ProcessorType, ProfilerSpec, ProfilerStatus,
    PrometheusAlert, RootCause, Stage,
};
pub use diagnosis::context_keys;
pub use diagnosis::probe_run::{
    ProbeRun, ProbeRunChecker, ProbeRunPhase, ProbeRunSpec, ProbeRunStatus, ProbeRunTrigger,
};
pub use diagnosis::processor::{
    Diagnoser, DiagnoserSpec, InformationCollector, InformationCollectorSpec,
    KUBE_DIAGNOSER_AGENT_PORT, ProcessorEndpoint, ProcessorStatus, Recoverer, RecovererSpec,
    SecretKeyRef, ServiceReference, TlsConfig,
};
pub use diagnosis::source::{
    AbnormalSource, AbnormalSourceSpec, AbnormalSourceStatus, KubernetesEventTemplate,
    KubernetesEventTemplateRegexp, Matching, ProbeStatusTemplate, ProbeStatusTemplateMatch,
    PrometheusAlertTemplate, PrometheusAlertTemplateRegexp, SourceCondition, SourceTemplate,
};
pub use kubeprober::{
    AbnormalCounts, CheckerWindow, Denoise, DiagnosisSummary, OnceProbeResult, ProbeMode,
};
pub use kubeprober::{
    ApiserverCheck, CheckerDiagnosis, CheckerStatus, Cluster, ClusterConfig, ClusterSpec,
    ClusterStatus, DnsCheck, EtcdCheck, ExtraVar, HttpCheck, NamespaceRoundTripCheck, NativeCheck,
    NodesCheck, OnceProbeItem, Probe, ProbeCheckerStatus, ProbeConfig, ProbePolicy, ProbeSpec,
    ProbeStates, ProbeStatus, ProbeStatusSpec, ProbeStatusStates, ReportProbeStatusSpec, TcpCheck,
    TlsCheck,
};
pub use probe_trigger::{ChangeType, ProbeCondition, ProbeRunChange, ProbeTrigger, TriggerKind};

/// The API group of the Kube Diagnoser kinds.
pub const DIAGNOSIS_GROUP: &str = "diagnosis.netease.com";
/// The API group of the KubeProber kinds.
pub const KUBEPROBER_GROUP: &str = "kubeprober.erda.cloud";
/// The namespace kdiag installs into and registers its built-in processors in. Kept from Kube
/// Diagnoser so Abnormals that name `kube-diagnoser/pod-collector` keep working.
pub const SYSTEM_NAMESPACE: &str = "kube-diagnoser";
