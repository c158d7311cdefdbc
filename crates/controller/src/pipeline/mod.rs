//! The Abnormal state machine, pure: no client, no clock, no IO.
//!
//! An Abnormal's progress lives entirely in its status: the phase says which stage it is in, and
//! `status.processors` holds one record per step of that stage, in the order the steps run. So
//! [`next`] can always tell, from the object alone, what comes next — after a restart too.
//!
//! The node agent loops: `next(&abnormal)` → run the step it names (IO) → [`apply_step`] →
//! persist when a stage ends ([`end_stage`]) or before a recovery acts ([`mark_running`]).

mod conditions;
mod plan;
mod transition;

pub use conditions::set_condition;
pub use plan::{Step, StepKind, plan};
pub use transition::{
    Limits, Next, StageEvent, StageOutcome, StepOutput, StepResult, abandoned, apply_step,
    end_stage, mark_running, needs_intent, next,
};

#[cfg(test)]
mod tests;
