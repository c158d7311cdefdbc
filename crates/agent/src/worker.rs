//! Steps one Abnormal to its final phase (or as far as it can go), persisting its status when a
//! stage ends with more work ahead, before and after every step with side effects, and at the end.

use std::time::Duration;

use kdiag_api::{Abnormal, AbnormalPhase, ProcessorResult, Stage};
use kdiag_pipeline::{
    self as pipeline, Next, StageEvent, StageOutcome, Step, StepResult, abandoned, apply_step,
    end_stage, mark_running, needs_intent,
};
use kdiag_runtime::metrics::SyncOutcome;
use kdiag_runtime::time::{now, seconds_since};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use crate::{Agent, Error};

/// How often a write that lost a race is retried on a fresh copy.
const CONFLICT_RETRIES: usize = 5;

pub(super) struct Worker<'a> {
    agent: &'a Agent,
    api: Api<Abnormal>,
    abnormal: Abnormal,
    /// Events for transitions made since the last write; recorded once the write lands.
    pending: Vec<StageEvent>,
    dirty: bool,
    /// The next write must land on exactly the copy read (an intent record).
    exclusive: bool,
}

impl<'a> Worker<'a> {
    pub fn new(agent: &'a Agent, abnormal: Abnormal) -> Self {
        let ns = abnormal.namespace().unwrap_or_default();
        Self {
            agent,
            api: Api::namespaced(agent.client.clone(), &ns),
            abnormal,
            pending: Vec::new(),
            dirty: false,
            exclusive: false,
        }
    }

    /// Runs until the Abnormal needs nothing more, or shutdown stops work between steps.
    pub async fn run(mut self) -> Result<(), Error> {
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
                        return Ok(());
                    }
                    self.run_step(step).await?;
                }
                Next::Abandon(step) => {
                    apply_step(
                        &mut self.abnormal,
                        &step,
                        abandoned(&now()),
                        self.agent.limits,
                    );
                    self.dirty = true;
                }
                Next::EndStage(stage, outcome) => {
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
        Ok(())
    }

    async fn run_step(&mut self, step: Step) -> Result<(), Error> {
        let intent = needs_intent(&step);
        if intent {
            // Recorded before acting: if the agent dies mid-step, the next one sees Running and
            // does not act again.
            mark_running(&mut self.abnormal, &step, &now());
            self.dirty = true;
            self.exclusive = true;
            let landed = self.persist().await;
            self.exclusive = false;
            if !landed? {
                // The intent did not land, so nothing may act: start over from the stored copy.
                return Ok(());
            }
        }
        let result = if intent {
            // Side effects may be under way: finish the step even when shutting down.
            self.agent.executor.run(&self.abnormal, &step).await
        } else {
            tokio::select! {
                r = self.agent.executor.run(&self.abnormal, &step) => r,
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
                self.abnormal = fresh;
                self.pending.clear();
                self.dirty = false;
                Ok(false)
            }
            Err(e) => Err(self.api_error("replace_status", e)),
        }
    }

    /// Writes a side-effecting step's result. Unlike [`persist`], a conflict must not lose it: the
    /// result is re-applied on the stored copy and written again.
    async fn persist_step_result(&mut self, step: &Step, result: StepResult) -> Result<(), Error> {
        for _ in 0..CONFLICT_RETRIES {
            match self.write().await {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    let mut fresh = self
                        .api
                        .get(&self.abnormal.name_any())
                        .await
                        .map_err(|e| self.api_error("get", e))?;
                    apply_step(&mut fresh, step, result.clone(), self.agent.limits);
                    self.abnormal = fresh;
                }
                Err(e) => return Err(self.api_error("replace_status", e)),
            }
        }
        Err(Error::Conflict(self.key()))
    }

    /// Writes the status. An intent record is written with the resourceVersion read, so it lands
    /// only on the copy it was decided on; other progress is a merge patch of the whole status,
    /// which the controller's label and annotation updates do not conflict with.
    async fn write(&mut self) -> Result<(), kube::Error> {
        let stored = if self.exclusive {
            self.api
                .replace_status(
                    &self.abnormal.name_any(),
                    &PostParams::default(),
                    &self.abnormal,
                )
                .await?
        } else {
            let patch = serde_json::json!({ "status": self.abnormal.status });
            self.api
                .patch_status(
                    &self.abnormal.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?
        };
        self.abnormal.metadata.resource_version = stored.metadata.resource_version;
        self.dirty = false;
        for event in std::mem::take(&mut self.pending) {
            self.publish(event).await;
        }
        Ok(())
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
            StageOutcome::Failed(_) | StageOutcome::RecoveryInterrupted(_) => SyncOutcome::Fail,
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

    fn api_error(&self, operation: &'static str, e: kube::Error) -> Error {
        self.agent
            .metrics
            .agent
            .api_errors
            .with_label_values(&[operation])
            .inc();
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
