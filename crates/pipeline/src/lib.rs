//! kdiag-pipeline: kdiag's pure logic, shared by the controller, the node agent and `kubectl
//! diag`. No kube client, no clock, no IO: everything here takes values and returns values, so
//! it is unit-tested without a cluster. Depends only on kdiag-api, serde, serde_json, thiserror,
//! jiff, regex, fnv and k8s-openapi's types.
//!
//! - The Abnormal state machine: the items at this crate's root (below).
//! - [`admission`]: is an Abnormal well formed, where does it run, or why not; the pod triage's
//!   defaults (which `kubectl diag run` asks too).
//! - [`Error`]: why pure checks fail; [`Category`]: the rule every kdiag crate uses to tell an
//!   error worth retrying from one to record.
//! - [`protocol`]: checking and merging an HTTP plugin's reply.
//! - [`templates`] and [`pattern`]: AbnormalSource templates, compiled and matched, and the
//!   names of the Abnormals they create.
//! - [`hash`]: the stable hash (FNV-1a) behind generated names, labels and choices.
//!
//! # The state machine
//!
//! An Abnormal's progress lives entirely in its status: the phase says which stage it is in, and
//! `status.processors` holds one record per step of that stage, in the order the steps run. So
//! [`next`] can always tell, from the object alone, what comes next — after a restart too.
//!
//! The node agent loops: `next(&abnormal)` → run the step it names (IO) → [`apply_step`] →
//! persist when a stage ends ([`end_stage`]) or before a recovery acts ([`mark_running`]).

mod conditions;
mod error;
mod plan;
mod transition;

pub mod admission;
pub mod hash;
pub mod pattern;
pub mod protocol;
pub mod templates;

pub use conditions::set_condition;
pub use error::{Category, Error, http_status_category};
pub use plan::{Step, StepKind, fingerprint, plan, plan_changed, records_by_step};
pub use transition::{
    Limits, MAX_RECOVERY_ATTEMPTS, Next, StageEvent, StageOutcome, StepOutput, StepResult,
    abandoned, apply_step, deadline_left, end_stage, mark_running, mark_running_attempt,
    needs_intent, next, retry_interrupted, shrink_to_fit,
};

#[cfg(test)]
mod tests;
