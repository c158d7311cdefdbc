//! Which steps a stage has, in the order they run.

use std::collections::{HashMap, VecDeque};

use kdiag_api::labels::{KUBE_DIAGNOSER_VERSION_ANNOTATION, PLAN_ANNOTATION};
use kdiag_api::{Abnormal, ProcessorKind, ProcessorRecord, Stage};
use serde_json::json;

use crate::hash::fnv1a;

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// `spec.commandExecutors[i]`.
    Command(usize),
    /// `spec.profilers[i]`.
    Profiler(usize),
    /// The i-th processor assigned to the stage.
    Processor(usize),
}

/// One step of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub stage: Stage,
    pub kind: StepKind,
    /// What the step's record names: the registration (namespace/name), the argv, or the
    /// profiler's name.
    pub label: String,
}

impl Step {
    pub fn record_kind(&self) -> ProcessorKind {
        match self.kind {
            StepKind::Command(_) => ProcessorKind::CommandExecutor,
            StepKind::Profiler(_) => ProcessorKind::Profiler,
            StepKind::Processor(_) => ProcessorKind::Processor,
        }
    }

    pub fn is_processor(&self) -> bool {
        matches!(self.kind, StepKind::Processor(_))
    }
}

/// The steps of `stage`: its command executors, then its profilers (they run before the
/// processors, as in Kube Diagnoser), then its processors in the order listed. Nothing when the
/// stage's v0.1.0 skip flag is set, except the command executors and profilers of an Abnormal
/// that asks for v0.1.2–v0.1.3's rules, which ran them whatever the flag said.
pub fn plan(abnormal: &Abnormal, stage: Stage) -> Vec<Step> {
    let skipped = abnormal.skip_flag(stage);
    if skipped && abnormal.skip_flag_skips_commands() {
        return Vec::new();
    }
    let assigned = if skipped {
        &[][..]
    } else {
        abnormal.assigned(stage)
    };
    let t = stage.processor_type();
    let ns = abnormal.metadata.namespace.as_deref().unwrap_or_default();
    let commands = abnormal
        .spec
        .command_executors
        .iter()
        .enumerate()
        .filter(|(_, c)| c.type_ == t)
        .map(|(i, c)| Step {
            stage,
            kind: StepKind::Command(i),
            label: command_label(&c.command),
        });
    let profilers = abnormal
        .spec
        .profilers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.type_ == t)
        .map(|(i, p)| Step {
            stage,
            kind: StepKind::Profiler(i),
            label: format!("profiler {}", p.name),
        });
    let processors = assigned.iter().enumerate().map(|(i, p)| Step {
        stage,
        kind: StepKind::Processor(i),
        label: p.or_namespace(ns).to_string(),
    });
    commands.chain(profilers).chain(processors).collect()
}

/// Pairs each step of a stage with its record, by identity rather than position: a record
/// belongs to the step of its kind and label, the n-th such record to the n-th such step (a
/// processor listed twice has two). So a record never lands on a neighbour's step, whatever the
/// order records were written in. Records of no step are left out.
pub fn records_by_step<'a>(
    steps: &[Step],
    records: impl IntoIterator<Item = &'a ProcessorRecord>,
) -> Vec<Option<&'a ProcessorRecord>> {
    let mut by_identity: HashMap<(ProcessorKind, &str), VecDeque<&'a ProcessorRecord>> =
        HashMap::new();
    for r in records {
        by_identity
            .entry((r.kind, r.processor.as_str()))
            .or_default()
            .push_back(r);
    }
    steps
        .iter()
        .map(|s| {
            by_identity
                .get_mut(&(s.record_kind(), s.label.as_str()))
                .and_then(VecDeque::pop_front)
        })
        .collect()
}

/// A fingerprint of everything the steps of every stage are built from: what admission
/// records in [`PLAN_ANNOTATION`] and the agent compares before each step.
pub fn fingerprint(abnormal: &Abnormal) -> String {
    let spec = &abnormal.spec;
    let rules = abnormal
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(KUBE_DIAGNOSER_VERSION_ANNOTATION));
    let inputs = json!({
        "commandExecutors": spec.command_executors,
        "profilers": spec.profilers,
        "collectors": spec.assigned_information_collectors,
        "diagnosers": spec.assigned_diagnosers,
        "recoverers": spec.assigned_recoverers,
        "skip": [spec.skip_information_collection, spec.skip_diagnosis, spec.skip_recovery],
        "rules": rules,
    });
    format!("{:016x}", fnv1a(inputs.to_string()))
}

/// What changed since admission, when the plan recorded at admission no longer matches the
/// spec. None when it matches, or when the Abnormal was admitted before plans were recorded.
pub fn plan_changed(abnormal: &Abnormal) -> Option<String> {
    let admitted = abnormal
        .metadata
        .annotations
        .as_ref()?
        .get(PLAN_ANNOTATION)?;
    let now = fingerprint(abnormal);
    (*admitted != now).then(|| format!("admitted plan {admitted}, spec now {now}"))
}

/// An argv as one line, shortened for a record.
fn command_label(argv: &[String]) -> String {
    let line = argv.join(" ");
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(119).collect::<String>())
    } else {
        line
    }
}
