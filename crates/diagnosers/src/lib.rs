//! Built-in diagnosers. Each identifies a cause (status.rootCause with evidence) or says clearly
//! what it checked and found nothing (`ProcessorError::NotIdentified`).

pub mod pod_disk_usage;
pub mod pods;
pub mod probe_failure;
pub mod quantity;
pub mod terminating_pod;
pub mod triage;
pub mod workload;

use std::sync::Arc;

use kdiag_api::plugin::Processor;

pub use pod_disk_usage::PodDiskUsageDiagnoser;
pub use terminating_pod::TerminatingPodDiagnoser;
pub use triage::{NodeTriageDiagnoser, PodTriageDiagnoser};

/// Every built-in diagnoser.
pub fn all() -> Vec<Arc<dyn Processor>> {
    vec![
        Arc::new(PodDiskUsageDiagnoser),
        Arc::new(TerminatingPodDiagnoser),
        Arc::new(PodTriageDiagnoser),
        Arc::new(NodeTriageDiagnoser),
    ]
}

/// The names of [`all`], by static calls: a process that only needs the names (the controller)
/// then does not link the diagnosers it does not run.
pub fn names() -> Vec<&'static str> {
    vec![
        PodDiskUsageDiagnoser.name(),
        TerminatingPodDiagnoser.name(),
        PodTriageDiagnoser.name(),
        NodeTriageDiagnoser.name(),
    ]
}
