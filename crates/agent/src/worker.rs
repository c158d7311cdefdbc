//! Steps one Abnormal to its final phase (or as far as it can go), persisting its status when a
//! stage ends with more work ahead, before and after every step with side effects, and at the end.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use kdiag_api::{Abnormal, AbnormalPhase, AbnormalSpec, AbnormalStatus, ProcessorResult, Stage};
use kdiag_pipeline::{
    self as pipeline, Next, StageEvent, StageOutcome, Step, StepOutput, StepResult, abandoned,
    apply_step, deadline_left, end_stage, mark_running_attempt, needs_intent, retry_interrupted,
    shrink_to_fit,
};
use kdiag_runtime::error::{is_conflict, is_too_large, is_transient};
use kdiag_runtime::metrics::SyncOutcome;
use kdiag_runtime::time::{now, seconds_since};
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::{Agent, Error};

/// How often a write that lost a race is retried on a fresh copy.
const CONFLICT_RETRIES: usize = 5;
/// Results kept in memory when their record could not be written; the oldest go first.
const UNRECORDED_CAP: usize = 256;

/// How a side-effecting step's result is retried while the apiserver fails or is unreachable:
/// about 45 s in all, well inside the agent's 60 s termination grace period.
fn record_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(8))
        .with_max_times(10)
        .build()
}

/// Results of side-effecting steps whose record the apiserver refused until the retries ran
/// out, by Abnormal and step. The next run on that Abnormal finds the step still Running in the
/// stored copy and records the remembered result instead of calling it interrupted. Held in
/// memory only: after a restart such a step is interrupted, as before.
#[derive(Default)]
pub(crate) struct Unrecorded(Mutex<VecDeque<(String, StepResult)>>);

impl Unrecorded {
    fn keep(&self, key: String, result: StepResult) {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|(k, _)| *k != key);
        if kept.len() >= UNRECORDED_CAP {
            kept.pop_front();
        }
        kept.push_back((key, result));
    }

    fn take(&self, key: &str) -> Option<StepResult> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let at = kept.iter().position(|(k, _)| k == key)?;
        kept.remove(at).map(|(_, r)| r)
    }
}

/// The result of a step the Abnormal's deadline stopped after `ran`.
fn stopped_at_deadline(
    deadline: Duration,
    start_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    ran: Duration,
) -> StepResult {
    StepResult {
        result: ProcessorResult::Failed,
        message: format!(
            "stopped after {:.1}s: the Abnormal's deadline of {}s passed (the agent's --abnormal-deadline)",
            ran.as_secs_f64(),
            deadline.as_secs()
        ),
        start_time,
        duration_ms: ran.as_millis() as i64,
        output: StepOutput::None,
    }
}

/// Which step of which Abnormal: its uid (a recreated Abnormal is another one), stage, kind
/// and label.
fn step_key(abnormal: &Abnormal, step: &Step) -> String {
    format!(
        "{}/{}/{:?}/{}",
        abnormal.uid().unwrap_or_default(),
        step.stage.as_str(),
        step.record_kind(),
        step.label
    )
}

/// How a worker's run on an Abnormal ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Exit {
    /// It needs nothing more for now (final, or waiting for a change), or shutdown stopped it.
    Done,
    /// Its turn was over and others waited: its progress is written, and it goes to the back of
    /// the queue.
    Yielded,
}

pub(super) struct Worker<'a> {
    agent: &'a Agent,
    /// When this run took its worker slot.
    started: std::time::Instant,
    api: Api<Abnormal>,
    abnormal: Abnormal,
    /// Events for transitions made since the last write; recorded once the write lands.
    pending: Vec<StageEvent>,
    dirty: bool,
    /// The stored spec and status the in-memory status was computed from (as last read or
    /// written): a write that conflicts only with changes elsewhere (the controller's labels and
    /// annotations) is re-sent on the newer copy instead of losing the work since.
    based_on: (AbnormalSpec, Option<AbnormalStatus>),
    /// The attempt the next side-effecting step is (above 1 only for an idempotent recovery
    /// run again after a restart).
    attempt: u32,
}

impl<'a> Worker<'a> {
    pub fn new(agent: &'a Agent, abnormal: Abnormal) -> Self {
        let ns = abnormal.namespace().unwrap_or_default();
        Self {
            agent,
            started: std::time::Instant::now(),
            api: Api::namespaced(agent.client.clone(), &ns),
            based_on: (abnormal.spec.clone(), abnormal.status.clone()),
            abnormal,
            pending: Vec::new(),
            dirty: false,
            attempt: 1,
        }
    }

    /// Runs until the Abnormal needs nothing more, shutdown stops work between steps, or its
    /// turn is over while others wait.
    pub async fn run(mut self) -> Result<Exit, Error> {
        let was_final = self.abnormal.phase().is_some_and(AbnormalPhase::is_final);
        loop {
            match pipeline::next(&self.abnormal) {
                Next::Idle => {
                    // A lost race reloads the stored copy, which may need more work.
                    if !self.dirty || self.persist().await? {
                        break;
                    }
                }
                Next::Run(step) => {
                    if self.agent.shutdown.is_cancelled() {
                        // Progress of the current stage since the last write is redone by the
                        // next agent; a step with side effects is never in flight here.
                        tracing::info!(abnormal = %self.key(), "shutting down between steps");
                        return Ok(Exit::Done);
                    }
                    if let Some(deadline) = self.agent.deadline
                        && deadline_left(&self.abnormal, deadline, &now()).is_none()
                    {
                        let outcome = StageOutcome::DeadlineExceeded(deadline);
                        let event = end_stage(&mut self.abnormal, step.stage, &outcome, &now());
                        self.observe_stage(step.stage, &outcome);
                        self.pending.push(event);
                        self.dirty = true;
                        continue;
                    }
                    // Not between the retry of a recovery and its new intent record.
                    if self.attempt == 1 && self.turn_is_over() {
                        // Fair turns: a long Abnormal does not hold its slot while others wait.
                        if self.dirty && !self.persist().await? {
                            continue;
                        }
                        tracing::debug!(abnormal = %self.key(), "turn over; back to the queue");
                        return Ok(Exit::Yielded);
                    }
                    self.run_step(step).await?;
                }
                Next::Abandon(step) => {
                    // Running in the stored copy: a step this agent finished but could not
                    // record is recorded now; anything else may have acted, so it is not run
                    // again.
                    let result = self
                        .agent
                        .unrecorded
                        .take(&step_key(&self.abnormal, &step))
                        .unwrap_or_else(|| abandoned(&now()));
                    apply_step(&mut self.abnormal, &step, result, self.agent.limits);
                    self.dirty = true;
                }
                Next::EndStage(stage, outcome) => {
                    // An interrupted recovery that this agent finished but could not record is
                    // recorded now, and the stage ends from that record.
                    if let StageOutcome::RecoveryInterrupted(label) = &outcome
                        && let Some(step) = pipeline::plan(&self.abnormal, stage)
                            .into_iter()
                            .find(|s| s.label == *label)
                        && let Some(result) =
                            self.agent.unrecorded.take(&step_key(&self.abnormal, &step))
                    {
                        apply_step(&mut self.abnormal, &step, result, self.agent.limits);
                        self.dirty = true;
                        continue;
                    }
                    // An idempotent recoverer is called again (same Idempotency-Key), within
                    // a bounded number of attempts.
                    if let StageOutcome::RecoveryInterrupted(label) = &outcome
                        && let Some(step) = pipeline::plan(&self.abnormal, stage)
                            .into_iter()
                            .find(|s| s.label == *label)
                        && let pipeline::StepKind::Processor(i) = step.kind
                        && let Some(name) = self.abnormal.assigned(stage).get(i).map(|p| {
                            p.or_namespace(
                                self.abnormal
                                    .metadata
                                    .namespace
                                    .as_deref()
                                    .unwrap_or_default(),
                            )
                        })
                        && self
                            .agent
                            .executor
                            .registrations
                            .recoverer_is_idempotent(&name)
                        && let Some(attempt) = retry_interrupted(&mut self.abnormal)
                    {
                        tracing::info!(abnormal = %self.key(), recoverer = %label, attempt, "an idempotent recovery the agent stopped during runs again");
                        self.attempt = attempt;
                        self.dirty = true;
                        continue;
                    }
                    let event = end_stage(&mut self.abnormal, stage, &outcome, &now());
                    self.observe_stage(stage, &outcome);
                    self.pending.push(event);
                    self.dirty = true;
                    // Write now only if more work follows; otherwise fold into the final write.
                    if matches!(pipeline::next(&self.abnormal), Next::Run(_)) {
                        self.persist().await?;
                    }
                }
            }
        }
        if !was_final && let Some(phase) = self.abnormal.phase().filter(|p| p.is_final()) {
            if let Some(created) = self.abnormal.meta().creation_timestamp.as_ref() {
                self.agent
                    .metrics
                    .agent
                    .end_to_end
                    .with_label_values(&[phase.as_str()])
                    .observe(seconds_since(created));
            }
            let reason = self
                .abnormal
                .status
                .as_ref()
                .map(|s| s.reason.clone())
                .unwrap_or_default();
            tracing::info!(abnormal = %self.key(), phase = %phase, reason = %reason, "finished");
        }
        Ok(Exit::Done)
    }

    /// Whether this run has held its slot for a whole turn while other Abnormals wait for one.
    fn turn_is_over(&self) -> bool {
        self.started.elapsed() >= self.agent.turn
            && self
                .agent
                .waiting
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
    }

    async fn run_step(&mut self, step: Step) -> Result<(), Error> {
        let intent = needs_intent(&step);
        if intent {
            // Recorded before acting: if the agent dies mid-step, the next one sees Running and
            // does not act again.
            mark_running_attempt(&mut self.abnormal, &step, &now(), self.attempt);
            self.attempt = 1;
            self.dirty = true;
            let landed = self.persist().await;
            if !landed? {
                // The intent did not land, so nothing may act: start over from the stored copy.
                return Ok(());
            }
            if self.abnormal.phase().is_some_and(AbnormalPhase::is_final) {
                // The write had to end it (refused for its size): nothing more runs.
                return Ok(());
            }
        }
        let result = if intent {
            // Side effects may be under way: finish the step even when shutting down, and even
            // past the Abnormal's deadline (within the step's own timeout).
            self.agent.executor.run(&self.abnormal, &step).await
        } else {
            let (deadline, left) = match self.agent.deadline {
                Some(d) => (
                    d,
                    deadline_left(&self.abnormal, d, &now()).unwrap_or_default(),
                ),
                None => (Duration::MAX, Duration::MAX),
            };
            let started = now();
            tokio::select! {
                r = self.agent.executor.run(&self.abnormal, &step) => r,
                _ = tokio::time::sleep(left) => stopped_at_deadline(deadline, started, left),
                _ = self.agent.shutdown.cancelled() => return Ok(()),
            }
        };
        self.observe_step(&step, &result);
        apply_step(&mut self.abnormal, &step, result.clone(), self.agent.limits);
        self.dirty = true;
        if intent {
            self.persist_step_result(&step, result).await?;
        }
        Ok(())
    }

    /// Writes the whole status with the resourceVersion read, so a concurrent writer makes this
    /// fail instead of being overwritten. Returns false when it lost such a race: the stored copy
    /// is then loaded and work goes on from it (steps since the last write are redone; they are
    /// side-effect free or were recorded before acting).
    async fn persist(&mut self) -> Result<bool, Error> {
        match self.write().await {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let fresh = self
                    .api
                    .get(&self.abnormal.name_any())
                    .await
                    .map_err(|e| self.api_error("get", e))?;
                tracing::debug!(abnormal = %self.key(), "status write conflicted; continuing from the stored copy");
                self.adopt(fresh);
                self.pending.clear();
                self.dirty = false;
                Ok(false)
            }
            Err(e) if is_too_large(&e) => {
                // Whatever comes next cannot be stored either: drop what kdiag added, say what,
                // and end (a final phase needs no further write).
                tracing::warn!(abnormal = %self.key(), error = %e, "status refused for its size; dropping context and command output");
                let event = shrink_to_fit(&mut self.abnormal, &now());
                self.pending.push(event);
                match self.write().await {
                    Ok(()) => Ok(true),
                    Err(e) => Err(self.api_error("replace_status", e)),
                }
            }
            Err(e) => Err(self.api_error("replace_status", e)),
        }
    }

    /// Writes a side-effecting step's result. Unlike [`persist`], neither a lost race nor an
    /// apiserver that fails or cannot be reached for a while may lose it: a conflict re-applies
    /// the result on the stored copy, a transient error is retried with backoff
    /// ([`record_backoff`]). When the retries run out the result is kept in memory
    /// ([`Unrecorded`]) for the next run on this Abnormal, with a message that says it was
    /// recorded late and why.
    async fn persist_step_result(&mut self, step: &Step, result: StepResult) -> Result<(), Error> {
        let mut delays = record_backoff();
        let (mut conflicts, mut failures, mut stale) = (0, 0, false);
        loop {
            let (operation, error) = if stale {
                match self.api.get(&self.abnormal.name_any()).await {
                    Ok(fresh) => {
                        if already_recorded(&fresh, step) {
                            // The last write landed; only its answer was lost.
                            self.adopt(fresh);
                            self.dirty = false;
                            return Ok(());
                        }
                        self.adopt(fresh);
                        apply_step(&mut self.abnormal, step, result.clone(), self.agent.limits);
                        stale = false;
                        continue;
                    }
                    Err(e) => ("get", e),
                }
            } else {
                match self.write().await {
                    Ok(()) => return Ok(()),
                    Err(e) => ("replace_status", e),
                }
            };
            if is_conflict(&error) && conflicts < CONFLICT_RETRIES {
                conflicts += 1;
                stale = true;
                continue;
            }
            if is_transient(&error)
                && !is_conflict(&error)
                && let Some(delay) = delays.next()
            {
                failures += 1;
                self.count_api_error(operation);
                tracing::warn!(abnormal = %self.key(), step = %step.label, error = %error, retry_in = ?delay, "recording a step's result failed; retrying");
                tokio::time::sleep(delay).await;
                // The write may have landed before its answer was lost: start from the stored
                // copy, which then shows the step ended.
                stale = true;
                continue;
            }
            let mut late = result;
            late.message = format!(
                "{} (recorded late: the apiserver refused or did not answer {} writes of this result, the last with: {error})",
                late.message,
                failures + 1
            );
            self.agent
                .unrecorded
                .keep(step_key(&self.abnormal, step), late);
            return Err(if is_conflict(&error) {
                Error::Conflict(self.key())
            } else {
                self.api_error(operation, error)
            });
        }
    }

    /// Writes the whole status, conditional on the resourceVersion it was computed from: it
    /// lands only on the copy read, or fails with 409 Conflict and is recomputed from the stored
    /// copy ([`Self::persist`]). A replace, not a merge patch, so what a step removed (a context
    /// key its plugin dropped, a root cause replaced by another) is gone from the stored copy
    /// too, and two writers' results never merge into one object.
    async fn write(&mut self) -> Result<(), kube::Error> {
        let mut rebased = 0;
        let stored = loop {
            match self
                .api
                .replace_status(
                    &self.abnormal.name_any(),
                    &PostParams::default(),
                    &self.abnormal,
                )
                .await
            {
                Ok(stored) => break stored,
                Err(e) if is_conflict(&e) && rebased < CONFLICT_RETRIES => {
                    let fresh = self.api.get(&self.abnormal.name_any()).await?;
                    if (&fresh.spec, &fresh.status) != (&self.based_on.0, &self.based_on.1) {
                        return Err(e);
                    }
                    // Only metadata changed: the status still follows from the stored one.
                    rebased += 1;
                    self.abnormal.metadata = fresh.metadata;
                }
                Err(e) => return Err(e),
            }
        };
        self.abnormal.metadata.resource_version = stored.metadata.resource_version;
        // As the apiserver stored it, so the comparison above is exact.
        self.based_on.1 = stored.status;
        self.dirty = false;
        for event in std::mem::take(&mut self.pending) {
            self.publish(event).await;
        }
        Ok(())
    }

    /// Continues from a stored copy read from the apiserver.
    fn adopt(&mut self, fresh: Abnormal) {
        self.based_on = (fresh.spec.clone(), fresh.status.clone());
        self.abnormal = fresh;
    }

    async fn publish(&self, event: StageEvent) {
        let ev = Event {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: event.reason.into(),
            note: Some(truncate(&event.message, 1000)),
            action: "Process".into(),
            secondary: None,
        };
        if let Err(e) = self
            .agent
            .recorder
            .publish(&ev, &self.abnormal.object_ref(&()))
            .await
        {
            self.agent
                .metrics
                .agent
                .api_errors
                .with_label_values(&["create_event"])
                .inc();
            tracing::warn!(abnormal = %self.key(), error = %e, "recording an event");
        }
    }

    fn observe_step(&self, step: &Step, result: &StepResult) {
        let m = &self.agent.metrics.agent;
        let processor = match step.kind {
            pipeline::StepKind::Processor(_) => step.label.as_str(),
            pipeline::StepKind::Command(_) => "commandExecutor",
            pipeline::StepKind::Profiler(_) => "profiler",
        };
        m.steps
            .with_label_values(&[step.stage.as_str(), processor, result.result.as_str()])
            .inc();
        let ok = result.result == ProcessorResult::Succeeded;
        match step.kind {
            pipeline::StepKind::Command(_) => m.command_ran(step.stage, ok),
            pipeline::StepKind::Profiler(_) => m.profiler_ran(step.stage, ok),
            pipeline::StepKind::Processor(_) => {}
        }
    }

    fn observe_stage(&self, stage: Stage, outcome: &StageOutcome) {
        let outcome = match outcome {
            StageOutcome::Skipped(_) => SyncOutcome::Skip,
            StageOutcome::Succeeded { .. } => SyncOutcome::Success,
            StageOutcome::Failed(_)
            | StageOutcome::RecoveryInterrupted(_)
            | StageOutcome::DeadlineExceeded(_)
            | StageOutcome::PlanChanged(_) => SyncOutcome::Fail,
        };
        let ms: i64 = self
            .abnormal
            .status
            .iter()
            .flat_map(|s| s.processors.iter())
            .filter(|r| r.stage == stage)
            .filter_map(|r| r.duration_milliseconds)
            .sum();
        self.agent.metrics.agent.stage_ended(
            stage,
            outcome,
            Duration::from_millis(ms.max(0) as u64).as_secs_f64(),
        );
    }

    fn count_api_error(&self, operation: &str) {
        self.agent
            .metrics
            .agent
            .api_errors
            .with_label_values(&[operation])
            .inc();
    }

    fn api_error(&self, operation: &'static str, e: kube::Error) -> Error {
        self.count_api_error(operation);
        if let Some(stage) = self.abnormal.phase().and_then(stage_of) {
            self.agent.metrics.agent.sync_error(stage);
        }
        Error::Api {
            abnormal: self.key(),
            operation,
            source: Box::new(e),
        }
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.abnormal.namespace().unwrap_or_default(),
            self.abnormal.name_any()
        )
    }
}

/// Whether `abnormal`'s last record is `step`'s, ended (its Running intent was replaced).
fn already_recorded(abnormal: &Abnormal, step: &Step) -> bool {
    abnormal
        .status
        .as_ref()
        .and_then(|s| s.processors.last())
        .is_some_and(|r| {
            r.stage == step.stage
                && r.processor == step.label
                && r.result != ProcessorResult::Running
        })
}

fn stage_of(phase: AbnormalPhase) -> Option<Stage> {
    match phase {
        AbnormalPhase::InformationCollecting => Some(Stage::InformationCollecting),
        AbnormalPhase::Diagnosing => Some(Stage::Diagnosing),
        AbnormalPhase::Recovering => Some(Stage::Recovering),
        _ => None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_pipeline::StepOutput;

    fn result(message: &str) -> StepResult {
        StepResult {
            result: ProcessorResult::Succeeded,
            message: message.into(),
            start_time: now(),
            duration_ms: 1,
            output: StepOutput::None,
        }
    }

    #[test]
    fn an_unrecorded_result_is_taken_once() {
        let kept = Unrecorded::default();
        kept.keep("a".into(), result("first"));
        kept.keep("a".into(), result("second"));
        assert_eq!(kept.take("a").map(|r| r.message), Some("second".into()));
        assert!(kept.take("a").is_none());
    }

    #[test]
    fn unrecorded_results_are_bounded_and_the_oldest_go_first() {
        let kept = Unrecorded::default();
        for i in 0..UNRECORDED_CAP + 10 {
            kept.keep(format!("k{i}"), result("r"));
        }
        assert!(kept.take("k0").is_none());
        assert!(kept.take("k9").is_none());
        assert!(kept.take("k10").is_some());
        assert!(kept.take(&format!("k{}", UNRECORDED_CAP + 9)).is_some());
    }

    #[test]
    fn the_record_backoff_gives_up_within_the_termination_grace_period() {
        let total: Duration = record_backoff().sum();
        assert!(
            total > Duration::from_secs(30) && total < Duration::from_secs(50),
            "{total:?}"
        );
        assert_eq!(record_backoff().count(), 10);
    }
}
