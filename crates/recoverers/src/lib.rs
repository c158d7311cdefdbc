//! Everything kdiag does that can change a node, and the policy that decides whether it may:
//! - [`command`]: the command executor (argv only, own process group, bounded time and output);
//! - [`policy`]: the node policy (allow-lists, dry-run, budgets).

pub mod command;
pub mod policy;
