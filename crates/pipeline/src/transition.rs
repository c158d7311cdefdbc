//! What comes next for an Abnormal, and how a step's result or a stage's end changes its status.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::{
    Abnormal, AbnormalPhase, AbnormalStatus, CommandExecutorStatus, ConditionStatus,
    NamespacedName, ProcessorKind, ProcessorRecord, ProcessorResult, ProfilerStatus, RootCause,
    Stage,
};

use super::conditions::set_condition;
use super::plan::{Step, StepKind, plan, plan_changed, records_by_step};

/// Bounds on what steps may add to an Abnormal, so its status always fits in one apiserver
/// write (etcd refuses requests over 1.5 MiB).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes (as JSON) one step's output may have.
    pub max_step_output_bytes: usize,
    /// The most bytes (as JSON) status.context may grow to.
    pub max_context_bytes: usize,
    /// The most bytes (as JSON) the whole Abnormal may grow to through its steps: spec, status
    /// and all. etcd refuses objects over 1.5 MiB; the rest is room for metadata.
    pub max_object_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_step_output_bytes: 512 * 1024,
            max_context_bytes: 1024 * 1024,
            max_object_bytes: 1280 * 1024,
        }
    }
}

/// What the agent should do next with an Abnormal.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing: not admitted yet, or already in a final phase.
    Idle,
    /// Run this step.
    Run(Step),
    /// A step with side effects was started before a restart and never recorded as ended. It may
    /// have acted, so it is recorded as failed and never run again.
    Abandon(Step),
    /// The stage is over; apply this outcome with [`end_stage`].
    EndStage(Stage, StageOutcome),
}

/// How a stage ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StageOutcome {
    /// No processor ran: the stage's list is empty or its skip flag is set. The text says which.
    Skipped(String),
    /// Collection: at least one collector succeeded. Diagnosis, recovery: `by` succeeded first.
    Succeeded {
        by: Option<String>,
        succeeded: usize,
        total: usize,
    },
    /// No processor succeeded; one "label: message" per processor that ran.
    Failed(Vec<String>),
    /// A recoverer was started and the agent stopped before it ended: it is not run again.
    RecoveryInterrupted(String),
    /// The Abnormal's deadline passed before the stage ended: what had not run is not run.
    DeadlineExceeded(std::time::Duration),
    /// The spec no longer builds the plan admitted (what changed, as fingerprints): nothing
    /// more runs.
    PlanChanged(String),
}

/// The result of running one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepResult {
    pub result: ProcessorResult,
    pub message: String,
    pub start_time: Time,
    pub duration_ms: i64,
    pub output: StepOutput,
}

/// What a step adds to the status besides its record.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StepOutput {
    #[default]
    None,
    Processor {
        context: BTreeMap<String, serde_json::Value>,
        root_cause: Option<RootCause>,
        /// Set by HTTP plugins that changed status.commandExecutors (allowed by the protocol).
        command_executors: Option<Vec<CommandExecutorStatus>>,
        /// Set by HTTP plugins that changed status.profilers.
        profilers: Option<Vec<ProfilerStatus>>,
        /// Keys an HTTP plugin returned as `null`: removed from status.context if the step owns
        /// them (see [`apply_step`]).
        removed_context_keys: Vec<String>,
    },
    Command(CommandExecutorStatus),
    Profiler(ProfilerStatus),
}

/// An Event to record for a stage's end.
#[derive(Debug, Clone, PartialEq)]
pub struct StageEvent {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

/// True when a step must be recorded as Running before it runs, because running it twice could
/// do harm: commands (policy may allow ones that change the node) and recoverers.
pub fn needs_intent(step: &Step) -> bool {
    match step.kind {
        StepKind::Command(_) => true,
        StepKind::Processor(_) => step.stage == Stage::Recovering,
        StepKind::Profiler(_) => false,
    }
}

/// What comes next, from the Abnormal alone.
pub fn next(abnormal: &Abnormal) -> Next {
    let stage = match abnormal.phase() {
        Some(AbnormalPhase::InformationCollecting) => Stage::InformationCollecting,
        Some(AbnormalPhase::Diagnosing) => Stage::Diagnosing,
        Some(AbnormalPhase::Recovering) => Stage::Recovering,
        _ => return Next::Idle,
    };
    if let Some(change) = plan_changed(abnormal) {
        return Next::EndStage(stage, StageOutcome::PlanChanged(change));
    }
    let steps = plan(abnormal, stage);
    let matched = records_by_step(&steps, stage_records(abnormal, stage));
    let records: Vec<&ProcessorRecord> = matched.iter().flatten().copied().collect();

    // Steps run one at a time, so at most one is Running: the one the agent stopped during.
    if let Some((step, _)) = steps
        .iter()
        .zip(&matched)
        .find(|(_, r)| r.is_some_and(|r| r.result == ProcessorResult::Running))
    {
        if step.stage == Stage::Recovering && step.is_processor() {
            return Next::EndStage(stage, StageOutcome::RecoveryInterrupted(step.label.clone()));
        }
        if needs_intent(step) {
            return Next::Abandon(step.clone());
        }
        // A step without side effects: run it again.
        return Next::Run(step.clone());
    }

    if stage != Stage::InformationCollecting
        && let Some(winner) = records
            .iter()
            .find(|r| r.kind == ProcessorKind::Processor && r.result == ProcessorResult::Succeeded)
    {
        let total = steps.iter().filter(|s| s.is_processor()).count();
        return Next::EndStage(
            stage,
            StageOutcome::Succeeded {
                by: Some(winner.processor.clone()),
                succeeded: 1,
                total,
            },
        );
    }
    if let Some((step, _)) = steps.iter().zip(&matched).find(|(_, r)| r.is_none()) {
        return Next::Run(step.clone());
    }

    let processors: Vec<&&ProcessorRecord> = records
        .iter()
        .filter(|r| r.kind == ProcessorKind::Processor)
        .collect();
    if !steps.iter().any(Step::is_processor) {
        let why = if abnormal.skip_flag(stage) {
            format!("{} is true", skip_flag_name(stage))
        } else {
            format!("no {} assigned", processor_plural(stage))
        };
        return Next::EndStage(stage, StageOutcome::Skipped(why));
    }
    let succeeded = processors
        .iter()
        .filter(|r| r.result == ProcessorResult::Succeeded)
        .count();
    if stage == Stage::InformationCollecting && succeeded > 0 {
        return Next::EndStage(
            stage,
            StageOutcome::Succeeded {
                by: None,
                succeeded,
                total: processors.len(),
            },
        );
    }
    let failures = processors
        .iter()
        .map(|r| format!("{}: {}", r.processor, r.message))
        .collect();
    Next::EndStage(stage, StageOutcome::Failed(failures))
}

fn stage_records(abnormal: &Abnormal, stage: Stage) -> impl Iterator<Item = &ProcessorRecord> {
    abnormal
        .status
        .iter()
        .flat_map(|s| s.processors.iter())
        .filter(move |r| r.stage == stage)
}

/// Records that `step` has started. Persist this before acting when [`needs_intent`] says so.
pub fn mark_running(abnormal: &mut Abnormal, step: &Step, now: &Time) {
    status_mut(abnormal).processors.push(ProcessorRecord {
        processor: step.label.clone(),
        kind: step.record_kind(),
        stage: step.stage,
        result: ProcessorResult::Running,
        message: String::new(),
        start_time: now.clone(),
        duration_milliseconds: None,
        context_keys: Vec::new(),
    });
}

/// The most attempts of an idempotent recovery the agent stopped during.
pub const MAX_RECOVERY_ATTEMPTS: u32 = 3;

/// Marks a step Running, as [`mark_running`], as attempt `attempt` of it.
pub fn mark_running_attempt(abnormal: &mut Abnormal, step: &Step, now: &Time, attempt: u32) {
    mark_running(abnormal, step, now);
    if attempt > 1
        && let Some(last) = status_mut(abnormal).processors.last_mut()
    {
        last.message = format!(
            "attempt {attempt}: run again after the agent stopped during attempt {} (the recoverer is idempotent)",
            attempt - 1
        );
    }
}

/// For a recovery the agent stopped during, by an idempotent recoverer: removes its Running
/// record so that it runs again, and returns the attempt that comes next; None when it has had
/// [`MAX_RECOVERY_ATTEMPTS`] (it then ends RecoveryInterrupted as any other).
pub fn retry_interrupted(abnormal: &mut Abnormal) -> Option<u32> {
    let processors = &mut abnormal.status.as_mut()?.processors;
    let last = processors.last()?;
    if last.result != ProcessorResult::Running || last.stage != Stage::Recovering {
        return None;
    }
    let attempt = last.attempt().unwrap_or(1);
    if attempt >= MAX_RECOVERY_ATTEMPTS {
        return None;
    }
    processors.pop();
    Some(attempt + 1)
}

/// Records a step's result and merges its output. An output over the limits fails the step with
/// a message saying so, and nothing of it is merged. An output that would grow the whole
/// Abnormal past `limits.max_object_bytes` (a root cause, a plugin's command list, a command's
/// stdout) is dropped the same way, the record saying what was dropped: the status must always
/// fit in one write, or the Abnormal could never end.
pub fn apply_step(abnormal: &mut Abnormal, step: &Step, mut result: StepResult, limits: Limits) {
    if result.result == ProcessorResult::Succeeded
        && let StepOutput::Processor { context, .. } = &result.output
        && let Some(problem) = oversize(abnormal, context, limits)
    {
        result.result = ProcessorResult::Failed;
        result.message = problem;
        result.output = StepOutput::None;
    }
    if matches!(result.output, StepOutput::None) {
        merge_step(abnormal, step, result);
        return;
    }
    let mut grown = abnormal.clone();
    merge_step(&mut grown, step, result.clone());
    let size = json_bytes(&grown);
    if size <= limits.max_object_bytes {
        *abnormal = grown;
        return;
    }
    merge_step(abnormal, step, without_output(result, size, limits));
}

/// What a write the apiserver refused for size may still carry: the status without its context
/// and command output (a marker in status.context says what was dropped), so the Abnormal can
/// still end. One that was not over ends Failed with reason TooLarge; one that had ended keeps
/// its phase and root cause, its message saying what was dropped. Returns the Event to record.
pub fn shrink_to_fit(abnormal: &mut Abnormal, now: &Time) -> StageEvent {
    let status = status_mut(abnormal);
    let mut dropped: Vec<String> = Vec::new();
    if let Some(context) = status.context.take() {
        for (key, value) in context {
            dropped.push(format!(
                "status.context.{key} ({} bytes)",
                json_bytes(&value)
            ));
        }
    }
    for (i, c) in status.command_executors.iter_mut().enumerate() {
        let bytes = c.stdout.len() + c.stderr.len();
        if bytes > 0 {
            dropped.push(format!("the output of command {i} ({bytes} bytes)"));
            c.stdout = "[dropped: the Abnormal was too large to store]".into();
            c.stderr.clear();
        }
    }
    for r in &mut status.processors {
        if r.message.len() > 1024 {
            let cut = (0..=1024)
                .rev()
                .find(|&i| r.message.is_char_boundary(i))
                .unwrap_or(0);
            r.message.truncate(cut);
            r.message
                .push_str(" [cut: the Abnormal was too large to store]");
        }
    }
    if let Some(cause) = &status.root_cause
        && json_bytes(cause) > 64 * 1024
    {
        dropped.push(format!("the root cause ({} bytes)", json_bytes(cause)));
        status.root_cause = None;
    }
    let what = if dropped.is_empty() {
        "nothing kdiag added could be dropped (is the spec itself near the limit?)".to_owned()
    } else {
        format!("dropped {}", dropped.join(", "))
    };
    status.context = Some(BTreeMap::from([(
        "droppedForSize".to_owned(),
        serde_json::Value::from(dropped.clone()),
    )]));
    let message = format!(
        "the apiserver refused to store this Abnormal for its size; {what}; create it again with fewer collectors (or a smaller spec) to see them"
    );
    let stage = match status.phase {
        Some(AbnormalPhase::InformationCollecting) => Some(Stage::InformationCollecting),
        Some(AbnormalPhase::Diagnosing) => Some(Stage::Diagnosing),
        Some(AbnormalPhase::Recovering) => Some(Stage::Recovering),
        _ => None,
    };
    status.message = message.clone();
    if let Some(stage) = stage {
        status.phase = Some(AbnormalPhase::Failed);
        status.reason = "TooLarge".into();
        set_condition(
            &mut status.conditions,
            stage.condition(),
            ConditionStatus::False,
            "TooLarge",
            &message,
            now,
        );
    }
    StageEvent {
        reason: "TooLarge",
        message,
        warning: true,
    }
}

/// The size of `value` as JSON.
fn json_bytes(value: &impl serde::Serialize) -> usize {
    serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

/// `result` with what it would have added dropped, saying so. A command's record stays (it ran)
/// with its output replaced by a marker; a processor's output goes and the step fails.
fn without_output(mut result: StepResult, size: usize, limits: Limits) -> StepResult {
    let why = format!(
        "the Abnormal would have grown to {size} bytes, over the cap of {} bytes on the whole object",
        limits.max_object_bytes
    );
    match &mut result.output {
        StepOutput::Command(c) => {
            let dropped = c.stdout.len() + c.stderr.len();
            let marker = format!("[{dropped} bytes of output dropped: {why}]");
            c.stdout = marker;
            c.stderr.clear();
            result.message = format!("{} (its output was dropped: {why})", result.message)
                .trim_start()
                .to_owned();
        }
        _ => {
            result.result = ProcessorResult::Failed;
            result.message = format!(
                "its output was not kept: {why}; narrow what the processor returns, or diagnose with fewer processors per Abnormal"
            );
            result.output = StepOutput::None;
        }
    }
    result
}

fn merge_step(abnormal: &mut Abnormal, step: &Step, mut result: StepResult) {
    let status = status_mut(abnormal);
    let mut removed = Vec::new();
    if result.result == ProcessorResult::Succeeded
        && let StepOutput::Processor {
            removed_context_keys,
            ..
        } = &result.output
    {
        let (owned, foreign): (Vec<&String>, Vec<&String>) = removed_context_keys
            .iter()
            .partition(|k| context_key_owner(status, k) == Some(step.label.as_str()));
        removed = owned.into_iter().cloned().collect();
        if !foreign.is_empty() {
            let keys: Vec<&str> = foreign.iter().map(|k| k.as_str()).collect();
            result.message.push_str(&format!(
                "; kept status.context keys it returned as null but did not write: {} (a plugin may remove only keys it wrote)",
                keys.join(", ")
            ));
        }
    }
    let context_keys = match &result.output {
        StepOutput::Processor { context, .. } if result.result == ProcessorResult::Succeeded => {
            context.keys().cloned().collect()
        }
        _ => Vec::new(),
    };
    let record = ProcessorRecord {
        processor: step.label.clone(),
        kind: step.record_kind(),
        stage: step.stage,
        result: result.result,
        message: result.message,
        start_time: result.start_time,
        duration_milliseconds: Some(result.duration_ms),
        context_keys,
    };
    // Replace the Running record written before the step, if there is one.
    match status.processors.last_mut() {
        Some(last)
            if last.result == ProcessorResult::Running
                && last.stage == step.stage
                && last.processor == step.label =>
        {
            *last = record
        }
        _ => status.processors.push(record),
    }
    match result.output {
        StepOutput::None => {}
        StepOutput::Command(c) => status.command_executors.push(c),
        StepOutput::Profiler(p) => status.profilers.push(p),
        StepOutput::Processor {
            context,
            root_cause,
            command_executors,
            profilers,
            removed_context_keys: _,
        } => {
            if result.result != ProcessorResult::Succeeded {
                return;
            }
            let status_context = status.context.get_or_insert_default();
            for key in &removed {
                status_context.remove(key);
            }
            status_context.extend(context);
            if let Some(mut cause) = root_cause {
                // Provenance: which processor found it, even if the processor did not say.
                if cause.processor.is_empty() {
                    cause.processor = step.label.clone();
                }
                status.root_cause = Some(cause);
            }
            if let Some(c) = command_executors {
                status.command_executors = c;
            }
            if let Some(p) = profilers {
                status.profilers = p;
            }
        }
    }
}

/// The processor that last wrote `key` into status.context, from the step records. A key of
/// spec.context, or one no record names, has no owner.
fn context_key_owner<'a>(status: &'a AbnormalStatus, key: &str) -> Option<&'a str> {
    status
        .processors
        .iter()
        .rev()
        .find(|r| r.context_keys.iter().any(|k| k == key))
        .map(|r| r.processor.as_str())
}

fn oversize(
    abnormal: &Abnormal,
    context: &BTreeMap<String, serde_json::Value>,
    limits: Limits,
) -> Option<String> {
    let added = json_bytes(context);
    if added > limits.max_step_output_bytes {
        return Some(format!(
            "output of {added} bytes exceeds the per-step cap of {} bytes; nothing of it was kept (narrow the processor's input, or raise --max-step-output-bytes)",
            limits.max_step_output_bytes
        ));
    }
    let mut merged = abnormal
        .status
        .as_ref()
        .and_then(|s| s.context.clone())
        .unwrap_or_default();
    merged.extend(context.clone());
    let total = json_bytes(&merged);
    if total > limits.max_context_bytes {
        return Some(format!(
            "status.context would grow to {total} bytes, over the cap of {} bytes; nothing of this output was kept (run fewer collectors per Abnormal, or raise --max-context-bytes)",
            limits.max_context_bytes
        ));
    }
    None
}

/// Ends a stage: sets its condition, the flags and the next phase, records the processors a
/// first success made unnecessary as Skipped, and says which Event to record.
pub fn end_stage(
    abnormal: &mut Abnormal,
    stage: Stage,
    outcome: &StageOutcome,
    now: &Time,
) -> StageEvent {
    let not_run = |abnormal: &Abnormal| -> Vec<Step> {
        let steps = plan(abnormal, stage);
        let matched = records_by_step(&steps, stage_records(abnormal, stage));
        let unrecorded: Vec<bool> = matched.iter().map(Option::is_none).collect();
        steps
            .into_iter()
            .zip(unrecorded)
            .filter_map(|(s, none)| none.then_some(s))
            .collect()
    };
    let (unrun, why): (Vec<Step>, String) = match outcome {
        StageOutcome::Succeeded { by: Some(_), .. } => (
            not_run(abnormal)
                .into_iter()
                .filter(Step::is_processor)
                .collect(),
            "not run: an earlier processor succeeded".into(),
        ),
        StageOutcome::DeadlineExceeded(deadline) => (
            not_run(abnormal),
            format!(
                "not run: the Abnormal's deadline of {} had passed",
                duration_text(*deadline)
            ),
        ),
        _ => (Vec::new(), String::new()),
    };
    let status = status_mut(abnormal);
    for step in unrun {
        status.processors.push(ProcessorRecord {
            kind: step.record_kind(),
            processor: step.label,
            stage,
            result: ProcessorResult::Skipped,
            message: why.clone(),
            start_time: now.clone(),
            duration_milliseconds: Some(0),
            context_keys: Vec::new(),
        });
    }

    let condition = stage.condition();
    let (cond_status, reason, message, next_phase, event): (
        ConditionStatus,
        &str,
        String,
        AbnormalPhase,
        StageEvent,
    ) = match (stage, outcome) {
        (_, StageOutcome::Skipped(why)) => {
            let msg = format!("{} skipped: {why}", stage_noun(stage));
            let event = StageEvent {
                reason: skipping_event(stage),
                message: msg.clone(),
                warning: false,
            };
            (
                ConditionStatus::False,
                "Skipped",
                msg,
                next_phase(stage),
                event,
            )
        }
        (
            Stage::InformationCollecting,
            StageOutcome::Succeeded {
                succeeded, total, ..
            },
        ) => {
            let msg = format!("{succeeded} of {total} information collectors succeeded");
            let event = StageEvent {
                reason: "Collected",
                message: msg.clone(),
                warning: false,
            };
            (
                ConditionStatus::True,
                "Collected",
                msg,
                AbnormalPhase::Diagnosing,
                event,
            )
        }
        (Stage::Diagnosing, StageOutcome::Succeeded { by, .. }) => {
            let by = by.clone().unwrap_or_default();
            status.identifiable = true;
            status.diagnoser = Some(parse_label(&by));
            let cause = status
                .root_cause
                .as_ref()
                .map(|r| format!(": {}", r.summary))
                .unwrap_or_default();
            let msg = format!("identified by {by}{cause}");
            let event = StageEvent {
                reason: "Identified",
                message: msg.clone(),
                warning: false,
            };
            (
                ConditionStatus::True,
                "Identified",
                msg,
                AbnormalPhase::Recovering,
                event,
            )
        }
        (Stage::Recovering, StageOutcome::Succeeded { by, .. }) => {
            let by = by.clone().unwrap_or_default();
            status.recoverable = true;
            status.recoverer = Some(parse_label(&by));
            let msg = format!("recovered by {by}");
            let event = StageEvent {
                reason: "Recovered",
                message: msg.clone(),
                warning: false,
            };
            (
                ConditionStatus::True,
                "Recovered",
                msg,
                AbnormalPhase::Succeeded,
                event,
            )
        }
        (_, StageOutcome::Failed(failures)) => {
            let (cond_reason, event_reason, what) = match stage {
                Stage::InformationCollecting => (
                    "CollectionFailed",
                    "FailedCollect",
                    "no information collector succeeded",
                ),
                Stage::Diagnosing => (
                    "NotIdentified",
                    "FailedIdentify",
                    "no diagnoser identified the cause",
                ),
                Stage::Recovering => ("RecoveryFailed", "FailedRecover", "no recoverer succeeded"),
            };
            let msg = format!("{what}: {}", failures.join("; "));
            status.reason = cond_reason.into();
            status.message = msg.clone();
            let event = StageEvent {
                reason: event_reason,
                message: msg.clone(),
                warning: true,
            };
            (
                ConditionStatus::False,
                cond_reason,
                msg,
                AbnormalPhase::Failed,
                event,
            )
        }
        (_, StageOutcome::DeadlineExceeded(deadline)) => {
            let msg = format!(
                "{} did not end within the Abnormal's deadline of {} (the agent's --abnormal-deadline), so its remaining steps were not run; see each step's time in status.processors, and create a new Abnormal with fewer or faster processors",
                stage_noun(stage),
                duration_text(*deadline)
            );
            status.reason = "DeadlineExceeded".into();
            status.message = msg.clone();
            let event = StageEvent {
                reason: "DeadlineExceeded",
                message: msg.clone(),
                warning: true,
            };
            (
                ConditionStatus::False,
                "DeadlineExceeded",
                msg,
                AbnormalPhase::Failed,
                event,
            )
        }
        (_, StageOutcome::PlanChanged(change)) => {
            let msg = format!(
                "the spec's command executors, profilers, processors or skip flags changed after admission ({change}); kdiag runs only what was admitted, so {} stopped here and nothing more runs: create a new Abnormal with the spec you want",
                stage_noun(stage)
            );
            status.reason = "PlanChanged".into();
            status.message = msg.clone();
            let event = StageEvent {
                reason: "PlanChanged",
                message: msg.clone(),
                warning: true,
            };
            (
                ConditionStatus::False,
                "PlanChanged",
                msg,
                AbnormalPhase::Failed,
                event,
            )
        }
        (_, StageOutcome::RecoveryInterrupted(step)) => {
            let msg = format!(
                "the agent stopped while {step} was recovering; it may have acted, so it is not run again: check the node, then create a new Abnormal if recovery is still needed"
            );
            let attempts = status
                .processors
                .last()
                .filter(|r| r.result == ProcessorResult::Running)
                .and_then(ProcessorRecord::attempt);
            let msg = match attempts {
                // An idempotent recoverer that had every attempt it may have.
                Some(n) => format!(
                    "the agent stopped while {step} was recovering, in each of its {n} attempts (the most an idempotent recoverer gets); check the node, then create a new Abnormal if recovery is still needed"
                ),
                None => msg,
            };
            status.reason = "RecoveryInterrupted".into();
            status.message = msg.clone();
            if let Some(last) = status.processors.last_mut()
                && last.result == ProcessorResult::Running
            {
                last.result = ProcessorResult::Failed;
                last.message = match attempts {
                    Some(n) => format!(
                        "interrupted: the agent stopped before attempt {n} ended; not run again"
                    ),
                    None => "interrupted: the agent stopped before it ended; not run again".into(),
                };
            }
            let event = StageEvent {
                reason: "RecoveryInterrupted",
                message: msg.clone(),
                warning: true,
            };
            (
                ConditionStatus::False,
                "RecoveryInterrupted",
                msg,
                AbnormalPhase::Failed,
                event,
            )
        }
    };
    set_condition(
        &mut status.conditions,
        condition,
        cond_status,
        reason,
        &message,
        now,
    );
    status.phase = Some(next_phase);
    event
}

fn next_phase(stage: Stage) -> AbnormalPhase {
    match stage {
        Stage::InformationCollecting => AbnormalPhase::Diagnosing,
        Stage::Diagnosing => AbnormalPhase::Recovering,
        Stage::Recovering => AbnormalPhase::Succeeded,
    }
}

fn stage_noun(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "information collection",
        Stage::Diagnosing => "diagnosis",
        Stage::Recovering => "recovery",
    }
}

fn skipping_event(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "SkippingCollection",
        Stage::Diagnosing => "SkippingDiagnosis",
        Stage::Recovering => "SkippingRecovery",
    }
}

fn skip_flag_name(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "skipInformationCollection",
        Stage::Diagnosing => "skipDiagnosis",
        Stage::Recovering => "skipRecovery",
    }
}

fn processor_plural(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "information collectors",
        Stage::Diagnosing => "diagnosers",
        Stage::Recovering => "recoverers",
    }
}

fn parse_label(label: &str) -> NamespacedName {
    match label.split_once('/') {
        Some((ns, name)) => NamespacedName::new(ns, name),
        None => NamespacedName::new("", label),
    }
}

fn status_mut(abnormal: &mut Abnormal) -> &mut AbnormalStatus {
    abnormal.status.get_or_insert_default()
}

/// How much of `deadline` is left for the Abnormal at `now`, counted from its admission
/// (status.startTime) or, before that, its creation; None when it has passed.
pub fn deadline_left(
    abnormal: &Abnormal,
    deadline: std::time::Duration,
    now: &Time,
) -> Option<std::time::Duration> {
    let started = abnormal
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(abnormal.metadata.creation_timestamp.as_ref())?;
    let elapsed = now.0.duration_since(started.0);
    let elapsed = std::time::Duration::try_from(elapsed).unwrap_or_default();
    deadline.checked_sub(elapsed).filter(|left| !left.is_zero())
}

/// `90s` as "1m30s", `1800s` as "30m".
fn duration_text(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    if out.is_empty() { "0s".into() } else { out }
}

/// A failed step's result for a step abandoned after a restart.
pub fn abandoned(now: &Time) -> StepResult {
    StepResult {
        result: ProcessorResult::Failed,
        message: "interrupted: the agent stopped before this step ended, and it may have acted, so it is not run again".into(),
        start_time: now.clone(),
        duration_ms: 0,
        output: StepOutput::None,
    }
}
