//! Everything kdiag does that can change a node, and the policy that decides whether it may:
//! - [`command`]: the command executor (argv only, own process group, bounded time and output);
//! - [`policy`]: the node policy (allow-lists, dry-run, budgets);
//! - [`signal`]: `signal-recoverer`; [`budget`]: recoveries per node per hour.

pub mod budget;
pub mod command;
pub mod policy;
pub mod signal;

use std::sync::Arc;

use kdiag_api::plugin::Processor;

/// Every built-in recoverer, bound to the node policy.
pub fn all(policy: policy::PolicyHandle) -> Vec<Arc<dyn Processor>> {
    vec![Arc::new(signal::SignalRecoverer::new(policy))]
}

/// The names of [`all`], without building the recoverers: a process that only needs the names
/// (the controller) then does not link the code that changes a node.
pub fn names() -> Vec<&'static str> {
    vec![signal::SignalRecoverer::new(policy::PolicyHandle::not_loaded()).name()]
}
