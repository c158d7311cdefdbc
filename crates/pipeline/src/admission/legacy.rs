//! Kube Diagnoser v0.1.0–v0.1.3's reading of an empty processor list, for Abnormals that ask for
//! it (`kdiag.io/kube-diagnoser-version`, docs/compatibility.md).

use kdiag_api::{Abnormal, NamespacedName, Stage};

use super::{Registry, registration_in_scope};

/// The Abnormal with every registered processor of a stage's kind (those it may use, sorted by
/// namespace and name) in each empty list whose skip flag is false, when it asks for v0.1.0–
/// v0.1.3's rules, under which an empty list meant "every registered processor"; None when
/// nothing changes. Admission computes this once, before the pod triage, and routes with the
/// result, so the lists it filled in are in the object for everyone to read.
pub fn with_every_registered(a: &Abnormal, registry: &dyn Registry) -> Option<Abnormal> {
    if !a.empty_list_means_every_registered() {
        return None;
    }
    let ns = a.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = a.clone();
    let mut changed = false;
    for stage in Stage::ALL {
        if a.skip_flag(stage) || !a.assigned(stage).is_empty() {
            continue;
        }
        let mut every: Vec<NamespacedName> = registry
            .names(stage)
            .iter()
            .filter_map(|n| n.split_once('/'))
            .filter(|(namespace, _)| registration_in_scope(namespace, ns))
            .map(|(namespace, name)| NamespacedName::new(namespace, name))
            .collect();
        every.sort_by(|x, y| (&x.namespace, &x.name).cmp(&(&y.namespace, &y.name)));
        every.dedup();
        if every.is_empty() {
            continue;
        }
        changed = true;
        match stage {
            Stage::InformationCollecting => out.spec.assigned_information_collectors = every,
            Stage::Diagnosing => out.spec.assigned_diagnosers = every,
            Stage::Recovering => out.spec.assigned_recoverers = every,
        }
    }
    changed.then_some(out)
}
