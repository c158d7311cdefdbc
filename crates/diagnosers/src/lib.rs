//! Built-in diagnosers. Each identifies a cause (status.rootCause with evidence) or says clearly
//! what it checked and found nothing.

use std::sync::Arc;

use kdiag_api::plugin::Processor;

/// Every built-in diagnoser.
pub fn all() -> Vec<Arc<dyn Processor>> {
    Vec::new()
}
