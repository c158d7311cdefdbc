//! The pod triage: the processors a pod Abnormal runs when it names none (docs/triage.md).

use kdiag_api::{Abnormal, NamespacedName, Stage};

use super::Registry;

/// The processors a pod is triaged with when its Abnormal names none: one documented default
/// (docs/triage.md), made of registered processors like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triage {
    pub collectors: Vec<NamespacedName>,
    pub diagnosers: Vec<NamespacedName>,
}

/// The triage's collectors (in kube-diagnoser), in order: the one place they are named.
pub const TRIAGE_COLLECTORS: &[&str] = &[
    "pod-detail-collector",
    "container-collector",
    "process-collector",
    "kernel-log-collector",
];

/// The triage's diagnosers (in kube-diagnoser).
pub const TRIAGE_DIAGNOSERS: &[&str] = &["pod-triage-diagnoser"];

impl Default for Triage {
    fn default() -> Self {
        let named = |names: &[&str]| {
            names
                .iter()
                .map(|n| NamespacedName::new(kdiag_api::SYSTEM_NAMESPACE, *n))
                .collect()
        };
        Self {
            collectors: named(TRIAGE_COLLECTORS),
            diagnosers: named(TRIAGE_DIAGNOSERS),
        }
    }
}

/// True when the pod triage applies: a pod, and no processor, command or profiler named.
pub fn wants_triage(a: &Abnormal) -> bool {
    let s = &a.spec;
    s.pod_reference.is_some()
        && s.assigned_information_collectors.is_empty()
        && s.assigned_diagnosers.is_empty()
        && s.assigned_recoverers.is_empty()
        && s.command_executors.is_empty()
        && s.profilers.is_empty()
}

impl Triage {
    /// The part of the triage that is registered, in the triage's order: what admission assigns
    /// to a pod Abnormal that names no processors ([`with_triage`]), and what `kubectl diag run
    /// --pod` assigns for the kinds it is not told. The one place that choice is made.
    pub fn registered(&self, is_registered: &dyn Fn(Stage, &NamespacedName) -> bool) -> Triage {
        let keep = |stage: Stage, names: &[NamespacedName]| -> Vec<NamespacedName> {
            names
                .iter()
                .filter(|n| is_registered(stage, n))
                .cloned()
                .collect()
        };
        Triage {
            collectors: keep(Stage::InformationCollecting, &self.collectors),
            diagnosers: keep(Stage::Diagnosing, &self.diagnosers),
        }
    }
}

/// The Abnormal with the triage's registered processors filled in, if it applies. Admission
/// computes this once and decides and routes with the result.
pub fn with_triage(a: &Abnormal, triage: &Triage, registry: &dyn Registry) -> Option<Abnormal> {
    if !wants_triage(a) {
        return None;
    }
    let registered = triage.registered(&|stage, n| registry.get(stage, n).is_some());
    let mut out = a.clone();
    out.spec.assigned_information_collectors = registered.collectors;
    out.spec.assigned_diagnosers = registered.diagnosers;
    Some(out)
}
