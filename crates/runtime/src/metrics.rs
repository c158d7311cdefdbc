//! Prometheus metrics, in one explicit registry per process. Label values are bounded: stages,
//! results, phases and processor registrations, never object names.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use kdiag_api::Stage;

/// Buckets from 5 ms to 10 min: built-ins take milliseconds, a slow plugin minutes.
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Every metric kdiag exports.
pub struct Metrics {
    pub registry: Registry,
    pub agent: AgentMetrics,
    pub controller: ControllerMetrics,
}

/// The node agent's metrics.
pub struct AgentMetrics {
    /// Steps by stage, processor (registration, or commandExecutor / profiler) and result.
    pub steps: IntCounterVec,
    /// Time spent in a stage, by stage and how it ended.
    pub stage_duration: HistogramVec,
    /// Creation to final phase, by final phase.
    pub end_to_end: HistogramVec,
    /// This node's Abnormals by phase.
    pub abnormals: IntGaugeVec,
    /// Abnormals waiting for a free worker.
    pub queue_depth: IntGauge,
    /// Abnormals being processed now.
    pub running: IntGauge,
    /// Failed apiserver requests, by operation.
    pub api_errors: IntCounterVec,
    /// 1 while a valid node policy is loaded; 0 before, or while it is missing or invalid (then
    /// every action that changes the node is denied).
    pub policy_valid: IntGauge,
    /// Errors that stopped a reconcile or a step, by what failed and whether it is retried
    /// (transient) or recorded (permanent).
    pub errors: IntCounterVec,
    /// Kube Diagnoser's own counters, kept so its dashboards keep working.
    pub original: OriginalAgentCounters,
}

/// Kube Diagnoser's label-less counters (docs/design/metrics.md of v0.1.6).
pub struct OriginalAgentCounters {
    pub sync: [[IntCounter; 4]; 3],
    pub command_executor: [[IntCounter; 2]; 3],
    pub profiler: [[IntCounter; 2]; 3],
    pub node_abnormal_count: IntGauge,
}

/// The outcome of a stage in the original counters' terms.
#[derive(Debug, Clone, Copy)]
pub enum SyncOutcome {
    Success = 0,
    Skip = 1,
    Fail = 2,
    Error = 3,
}

/// The cluster controller's metrics.
pub struct ControllerMetrics {
    /// Admission decisions: accepted, rejected, waiting.
    pub admissions: IntCounterVec,
    /// Abnormals deleted by garbage collection, by reason (ttl, per-node-limit).
    pub garbage_collected: IntCounterVec,
    /// Admitted Abnormals failed because no agent took them (reason NoAgent).
    pub no_agent: IntCounter,
    /// All Abnormals by phase ("" for not yet admitted).
    pub abnormals: IntGaugeVec,
    pub api_errors: IntCounterVec,
    /// Errors of the controller's loops, by loop (admission, writeback, probe-trigger,
    /// probe-runner), what failed, and whether it is retried soon (transient) or needs someone to
    /// act (permanent).
    pub errors: IntCounterVec,
    /// Abnormals created by triggers, by source kind (ProbeStatus, KubernetesEvent, PrometheusAlert).
    pub triggered: IntCounterVec,
    /// Triggers storm control or a missing node suppressed, by source kind and reason.
    pub suppressed: IntCounterVec,
    /// Results of continuous probes, by path (native, report) and outcome (taken, or limited
    /// by the probe's token bucket).
    pub continuous_results: IntCounterVec,
    /// ProbeStatus writes of continuous probes, by reason (status, stats, heartbeat).
    pub continuous_writes: IntCounterVec,
    /// Continuous probes whose loop runs in this controller.
    pub continuous_probes: IntGauge,
    /// 1 while this replica leads (holds the leader Lease), 0 while it stands by.
    pub leader: IntGauge,
    /// Admission reviews the webhook answered, by kind and result (allowed, refused).
    pub webhook_reviews: IntCounterVec,
    /// Time the webhook took to answer a review (SubjectAccessReviews included), by kind.
    pub webhook_duration: HistogramVec,
    pub original_gc_success: IntCounter,
    pub original_gc_error: IntCounter,
}

fn stage_prefix(stage: Stage) -> &'static str {
    match stage {
        Stage::InformationCollecting => "information_manager",
        Stage::Diagnosing => "diagnoser_chain",
        Stage::Recovering => "recoverer_chain",
    }
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::InformationCollecting => 0,
        Stage::Diagnosing => 1,
        Stage::Recovering => 2,
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("metric names are unique")
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            reg(Box::new(g.clone()));
            g
        };
        let counter = |name: String, help: String| {
            let c = IntCounter::new(name, help).expect("valid metric");
            reg(Box::new(c.clone()));
            c
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            reg(Box::new(h.clone()));
            h
        };

        let stages = [
            Stage::InformationCollecting,
            Stage::Diagnosing,
            Stage::Recovering,
        ];
        let sync = stages.map(|s| {
            ["success", "skip", "fail", "error"].map(|o| {
                counter(
                    format!("{}_sync_{o}_count", stage_prefix(s)),
                    format!(
                        "Kube Diagnoser compatible: {o} syncs of {}",
                        stage_prefix(s)
                    ),
                )
            })
        });
        let command_executor = stages.map(|s| {
            ["success", "fail"].map(|o| {
                counter(
                    format!("{}_command_executor_{o}_count", stage_prefix(s)),
                    format!(
                        "Kube Diagnoser compatible: command executor runs ({o}) by {}",
                        stage_prefix(s)
                    ),
                )
            })
        });
        let profiler = stages.map(|s| {
            ["success", "fail"].map(|o| {
                counter(
                    format!("{}_profiler_{o}_count", stage_prefix(s)),
                    format!(
                        "Kube Diagnoser compatible: profiler runs ({o}) by {}",
                        stage_prefix(s)
                    ),
                )
            })
        });

        let agent = AgentMetrics {
            steps: counter_vec(
                "kdiag_steps_total",
                "Pipeline steps run, by stage, processor and result.",
                &["stage", "processor", "result"],
            ),
            stage_duration: histogram_vec(
                "kdiag_stage_duration_seconds",
                "Time an Abnormal spent in a stage, by stage and result.",
                &["stage", "result"],
            ),
            end_to_end: histogram_vec(
                "kdiag_abnormal_duration_seconds",
                "Time from an Abnormal's creation to its final phase, by phase.",
                &["phase"],
            ),
            abnormals: gauge_vec(
                "kdiag_agent_abnormals",
                "Abnormals on this node, by phase.",
                &["phase"],
            ),
            queue_depth: gauge(
                "kdiag_agent_queue_depth",
                "Abnormals waiting for a free worker.",
            ),
            running: gauge("kdiag_agent_running", "Abnormals being processed now."),
            api_errors: counter_vec(
                "kdiag_agent_api_errors_total",
                "Failed apiserver requests of the agent, by operation.",
                &["operation"],
            ),
            policy_valid: gauge(
                "kdiag_agent_policy_valid",
                "1 while a valid node policy is loaded; 0 while none is (every action that changes the node is denied).",
            ),
            errors: counter_vec(
                "kdiag_agent_errors_total",
                "Errors of the agent, by what failed and category (transient: retried; permanent: recorded).",
                &["error", "category"],
            ),
            original: OriginalAgentCounters {
                sync,
                command_executor,
                profiler,
                node_abnormal_count: gauge(
                    "node_abnormal_count",
                    "Kube Diagnoser compatible: Abnormals on this node.",
                ),
            },
        };
        let controller = ControllerMetrics {
            admissions: counter_vec(
                "kdiag_controller_admissions_total",
                "Admission decisions, by result.",
                &["result"],
            ),
            garbage_collected: counter_vec(
                "kdiag_controller_garbage_collected_total",
                "Abnormals deleted by garbage collection, by reason.",
                &["reason"],
            ),
            no_agent: counter(
                "kdiag_controller_no_agent_failures_total".into(),
                "Admitted Abnormals failed because no agent took them within the grace period (reason NoAgent).".into(),
            ),
            abnormals: gauge_vec(
                "kdiag_controller_abnormals",
                "Abnormals in the cluster, by phase.",
                &["phase"],
            ),
            api_errors: counter_vec(
                "kdiag_controller_api_errors_total",
                "Failed apiserver requests of the controller, by operation.",
                &["operation"],
            ),
            errors: counter_vec(
                "kdiag_controller_errors_total",
                "Errors of the controller's loops, by loop, what failed and category (transient: retried soon; permanent: needs someone to act).",
                &["controller", "error", "category"],
            ),
            triggered: counter_vec(
                "kdiag_triggered_abnormals_total",
                "Abnormals created by triggers, by source kind.",
                &["source"],
            ),
            continuous_results: counter_vec(
                "kdiag_continuous_probe_results_total",
                "Raw results of continuous probes, by path (native, report) and outcome (taken; limited: refused by the probe's token bucket).",
                &["path", "outcome"],
            ),
            continuous_writes: counter_vec(
                "kdiag_continuous_probe_writes_total",
                "ProbeStatus writes of continuous probes, by reason (status: the denoised status changed; stats: the window moved; heartbeat: lastRun refreshed).",
                &["reason"],
            ),
            continuous_probes: gauge(
                "kdiag_continuous_probes",
                "Continuous probes this controller runs (native loops and resident checker pods).",
            ),
            suppressed: counter_vec(
                "kdiag_suppressed_triggers_total",
                "Triggers that created no Abnormal, by source kind and reason (probe, node, source budget, no-node, duplicate).",
                &["source", "reason"],
            ),
            leader: gauge(
                "kdiag_controller_leader",
                "1 while this controller replica leads (holds the leader Lease), 0 while it stands by.",
            ),
            webhook_reviews: counter_vec(
                "kdiag_webhook_reviews_total",
                "Admission reviews the webhook answered, by kind (Abnormal, AbnormalSource, registration) and result (allowed, refused).",
                &["kind", "result"],
            ),
            webhook_duration: histogram_vec(
                "kdiag_webhook_review_duration_seconds",
                "Time the admission webhook took to answer a review, SubjectAccessReviews included, by kind.",
                &["kind"],
            ),
            original_gc_success: counter(
                "abnormal_garbage_collection_success_count".into(),
                "Kube Diagnoser compatible: Abnormals garbage-collected.".into(),
            ),
            original_gc_error: counter(
                "abnormal_garbage_collection_error_count".into(),
                "Kube Diagnoser compatible: garbage collection errors.".into(),
            ),
        };
        Self {
            registry,
            agent,
            controller,
        }
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics to memory");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerMetrics {
    /// Counts an error of one of the controller's loops.
    pub fn error(&self, controller: &str, error: &str, category: kdiag_pipeline::Category) {
        self.errors
            .with_label_values(&[controller, error, category.as_str()])
            .inc();
    }
}

impl AgentMetrics {
    /// Counts an error of the agent.
    pub fn error(&self, error: &str, category: kdiag_pipeline::Category) {
        self.errors
            .with_label_values(&[error, category.as_str()])
            .inc();
    }

    pub fn stage_ended(&self, stage: Stage, outcome: SyncOutcome, seconds: f64) {
        self.original.sync[stage_index(stage)][outcome as usize].inc();
        let result = match outcome {
            SyncOutcome::Success => "Succeeded",
            SyncOutcome::Skip => "Skipped",
            SyncOutcome::Fail => "Failed",
            SyncOutcome::Error => "Error",
        };
        self.stage_duration
            .with_label_values(&[stage.as_str(), result])
            .observe(seconds);
    }

    pub fn command_ran(&self, stage: Stage, succeeded: bool) {
        self.original.command_executor[stage_index(stage)][usize::from(!succeeded)].inc();
    }

    pub fn profiler_ran(&self, stage: Stage, succeeded: bool) {
        self.original.profiler[stage_index(stage)][usize::from(!succeeded)].inc();
    }

    pub fn sync_error(&self, stage: Stage) {
        self.original.sync[stage_index(stage)][SyncOutcome::Error as usize].inc();
    }
}
