//! Which steps a stage has, in the order they run.

use kdiag_api::{Abnormal, ProcessorKind, Stage};

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

/// An argv as one line, shortened for a record.
fn command_label(argv: &[String]) -> String {
    let line = argv.join(" ");
    if line.chars().count() > 120 {
        format!("{}…", line.chars().take(119).collect::<String>())
    } else {
        line
    }
}
