//! Built-in information collectors. Each reads real node or cluster data and writes it to
//! status.context under its Kube Diagnoser key.

mod pod;

use std::sync::Arc;

use kdiag_api::plugin::Processor;

pub use pod::PodCollector;

/// Every built-in collector.
pub fn all() -> Vec<Arc<dyn Processor>> {
    vec![Arc::new(PodCollector)]
}
