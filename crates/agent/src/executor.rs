//! Running one step: a command executor, a profiler, or a processor (in-process or over HTTP).

use std::sync::Arc;
use std::time::{Duration, Instant};

use kdiag_api::plugin::{ProcessorContext, ProcessorError};
use kdiag_api::{Abnormal, ProcessorResult, Stage};
use kdiag_pipeline::admission::kind_of;
use kdiag_pipeline::protocol;
use kdiag_pipeline::{Step, StepKind, StepOutput, StepResult};
use kdiag_recoverers::command;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::registrations::Registrations;
use kdiag_runtime::time::now;
use kube::Client;

use crate::error::{Error, Registration};
use crate::plugin::PluginClient;
use crate::policy::PolicyHandle;
use crate::profiler::Profilers;
use crate::registrations::{Target, resolve};

/// The first wait before a transient failure of a step is retried; it doubles up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(4);

/// Everything a step may need.
pub struct Executor {
    pub client: Client,
    pub node_name: String,
    pub builtins: Builtins,
    pub registrations: Registrations,
    pub plugins: PluginClient,
    pub policy: PolicyHandle,
    pub profilers: Arc<Profilers>,
    pub max_step_output_bytes: usize,
    pub node: Arc<kdiag_api::plugin::NodeEnvironment>,
    pub command_output_cap: usize,
    /// Recoveries run on this node in the last hour.
    pub recovery_budget: kdiag_recoverers::budget::RecoveryBudget,
    pub metrics: Arc<Metrics>,
}

impl Executor {
    pub async fn run(&self, abnormal: &Abnormal, step: &Step) -> StepResult {
        let start_time = now();
        let started = Instant::now();
        let (result, message, output) = match step.kind {
            StepKind::Command(i) => self.command(abnormal, i).await,
            StepKind::Profiler(i) => self.profiler(abnormal, i).await,
            StepKind::Processor(i) => self.processor(abnormal, step.stage, i).await,
        };
        StepResult {
            result,
            message,
            start_time,
            duration_ms: started.elapsed().as_millis() as i64,
            output,
        }
    }

    async fn command(
        &self,
        abnormal: &Abnormal,
        i: usize,
    ) -> (ProcessorResult, String, StepOutput) {
        let spec = &abnormal.spec.command_executors[i];
        let policy = self.policy.current();
        let outcome = command::run(spec, &policy, self.command_output_cap).await;
        let (result, message) = if outcome.denied {
            (ProcessorResult::Skipped, outcome.status.error.clone())
        } else if outcome.succeeded() {
            (ProcessorResult::Succeeded, "exit status 0".to_owned())
        } else {
            (ProcessorResult::Failed, outcome.status.error.clone())
        };
        (result, message, StepOutput::Command(outcome.status))
    }

    async fn profiler(
        &self,
        abnormal: &Abnormal,
        i: usize,
    ) -> (ProcessorResult, String, StepOutput) {
        let spec = &abnormal.spec.profilers[i];
        let run = self.profilers.run(abnormal, spec).await;
        let status = run.status;
        let (result, message) = if status.error.is_empty() {
            (
                ProcessorResult::Succeeded,
                format!("{} available at {}", run.summary, status.endpoint),
            )
        } else {
            (ProcessorResult::Failed, status.error.clone())
        };
        (result, message, StepOutput::Profiler(status))
    }

    async fn processor(
        &self,
        abnormal: &Abnormal,
        stage: Stage,
        i: usize,
    ) -> (ProcessorResult, String, StepOutput) {
        let ns = abnormal.metadata.namespace.as_deref().unwrap_or_default();
        let registration = abnormal.assigned(stage)[i].or_namespace(ns);
        let Some(spec) = self.registrations.endpoint(stage, &registration) else {
            return self.unregistered(stage, &registration);
        };
        let (result, mut message, output) =
            self.registered(abnormal, stage, &registration, &spec).await;
        // A Kube Diagnoser v0.1.0–v0.1.5 registration works; its step says what to change.
        if let Some(note) = spec.deprecation_note() {
            message = if message.is_empty() {
                note
            } else {
                format!("{message}; {note}")
            };
        }
        (result, message, output)
    }

    fn unregistered(
        &self,
        stage: Stage,
        registration: &kdiag_api::NamespacedName,
    ) -> (ProcessorResult, String, StepOutput) {
        let known = self.registrations.names(stage);
        failed(format!(
            "{} {registration} does not exist; registered {}s: {}",
            kind_of(stage),
            kind_of(stage),
            if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            }
        ))
    }

    async fn registered(
        &self,
        abnormal: &Abnormal,
        stage: Stage,
        registration: &kdiag_api::NamespacedName,
        spec: &kdiag_api::ProcessorEndpoint,
    ) -> (ProcessorResult, String, StepOutput) {
        if stage == Stage::Recovering
            && let Some(denied) = self.recovery_denied(&registration.to_string(), spec.is_builtin())
        {
            return (ProcessorResult::Skipped, denied, StepOutput::None);
        }
        // Transient failures (the apiserver failing to answer while the registration's Service,
        // Endpoints or Secret are read; a plugin not accepting connections yet) are retried with
        // backoff for as long as the registration's timeout, then recorded like any other.
        let budget = Duration::from_secs(spec.timeout() as u64);
        let started = Instant::now();
        let mut delay = FIRST_RETRY;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let left = budget.saturating_sub(started.elapsed());
            let error = match self
                .attempt(abnormal, stage, registration, spec, left)
                .await
            {
                Ok(outcome) => return outcome,
                Err(e) => e,
            };
            self.metrics
                .agent
                .error(error.metric_label(), error.category());
            if error.is_transient() && started.elapsed() + delay < budget {
                tracing::info!(abnormal = %key(abnormal), processor = %registration, error = %error, retry_in = ?delay, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY);
                continue;
            }
            let mut message = error.to_string();
            if attempts > 1 {
                message.push_str(&format!(
                    "; still failing after {attempts} tries in {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
            }
            return failed(message);
        }
    }

    /// Resolves the registration (within `left`) and runs the processor once. Errors are the
    /// agent's own (resolving, calling a plugin); a built-in's failure is its step's result.
    async fn attempt(
        &self,
        abnormal: &Abnormal,
        stage: Stage,
        registration: &kdiag_api::NamespacedName,
        spec: &kdiag_api::ProcessorEndpoint,
        left: Duration,
    ) -> Result<(ProcessorResult, String, StepOutput), Error> {
        // Admission refuses these; checked again here, as the spec is read again here.
        let namespace = abnormal.metadata.namespace.as_deref().unwrap_or_default();
        if !kdiag_pipeline::admission::registration_in_scope(&registration.namespace, namespace) {
            return Err(Error::OutOfNamespace {
                registration: registration.to_string(),
                namespace: namespace.to_owned(),
            });
        }
        let target = tokio::time::timeout(
            left,
            resolve(&self.client, &self.builtins, registration, stage, spec),
        )
        .await
        .map_err(|_| Error::ResolveTimeout {
            registration: Registration::new(kind_of(stage), registration),
            timeout: left,
        })??;
        match target {
            Target::Builtin(processor, timeout) => {
                let ctx = ProcessorContext {
                    node_name: self.node_name.clone(),
                    client: self.client.clone(),
                    timeout,
                    max_output_bytes: self.max_step_output_bytes,
                    node: self.node.clone(),
                };
                let outcome =
                    match tokio::time::timeout(timeout, processor.process(&ctx, abnormal)).await {
                        Ok(r) => r,
                        Err(_) => Err(ProcessorError::Timeout(timeout)),
                    };
                Ok(match outcome {
                    Ok(out) => (
                        ProcessorResult::Succeeded,
                        out.message,
                        StepOutput::Processor {
                            context: out.context,
                            root_cause: out.root_cause,
                            command_executors: None,
                            profilers: None,
                            removed_context_keys: Vec::new(),
                        },
                    ),
                    Err(ProcessorError::Denied { rule, message }) => (
                        ProcessorResult::Skipped,
                        format!("denied by policy rule {rule}: {message}"),
                        StepOutput::None,
                    ),
                    Err(e) => failed(e.to_string()),
                })
            }
            Target::Http(endpoint) => {
                // Recoveries act: a plugin may use the key to deduplicate.
                let key = (stage == Stage::Recovering).then(|| {
                    crate::plugin::client::idempotency_key(
                        abnormal,
                        stage,
                        &registration.to_string(),
                    )
                });
                let returned = self
                    .plugins
                    .call(&endpoint, abnormal, key.as_deref())
                    .await?;
                let output = protocol::step_output(abnormal, returned.status.unwrap_or_default());
                Ok((
                    ProcessorResult::Succeeded,
                    format!("{} answered 200", endpoint.url),
                    output,
                ))
            }
        }
    }
}

impl Executor {
    /// Why the node policy stops this recoverer, if it does: not allowed, dry run (for an HTTP
    /// recoverer; built-ins record their own dry run), or the hourly budget is spent.
    fn recovery_denied(&self, registration: &str, builtin: bool) -> Option<String> {
        let policy = self.policy.current();
        if let Err(d) = policy.allows_recoverer(registration) {
            return Some(d.to_string());
        }
        if policy.spec.dry_run && !builtin {
            return Some(format!(
                "dry run: would have called recoverer {registration}; nothing was done (the node policy has dryRun: true)"
            ));
        }
        let per_hour = policy.spec.budget.recoveries_per_hour;
        if let Err(ran) = self
            .recovery_budget
            .take(std::time::Instant::now(), per_hour)
        {
            return Some(format!(
                "denied by policy rule budget.recoveriesPerHour: {ran} recoveries ran on this node in the last hour (the limit is {per_hour}); try again later or raise the budget"
            ));
        }
        None
    }
}

fn failed(message: String) -> (ProcessorResult, String, StepOutput) {
    (ProcessorResult::Failed, message, StepOutput::None)
}

fn key(a: &Abnormal) -> String {
    format!(
        "{}/{}",
        a.metadata.namespace.as_deref().unwrap_or_default(),
        a.metadata.name.as_deref().unwrap_or_default()
    )
}
