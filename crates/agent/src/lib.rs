//! kdiag-agent: the node agent, one per node. It watches only its own node's Abnormals (by the
//! routing label the controller sets) and steps each through collection, diagnosis and recovery:
//! the pure state machine of kdiag-pipeline drives it, and this crate does the IO around it
//! (running built-in processors, HTTP plugins, commands and profilers, writing status). It also
//! follows the node policy and serves the built-ins and profiles over HTTP.
//!
//! Depends on kdiag-api, kdiag-pipeline, kdiag-runtime, kdiag-recoverers and kdiag-collectors
//! (commands and process scans), kube, tokio, reqwest and warp; never on the controller.
//! [`start`] builds it; the kdiag binary runs it (`kdiag agent`).
//!
//! - Each Abnormal is handled by one task at a time (kube's Controller guarantees it), and at
//!   most `concurrency` at once; the rest wait in the queue, none is dropped.
//! - A slow processor holds only its own Abnormal's worker, and an Abnormal with many steps
//!   yields its worker between steps once it has had its turn while others wait.
//! - Every Abnormal ends within its deadline (from admission): what has not run by then is not
//!   run, and it ends Failed (DeadlineExceeded). A step with side effects is never cut short.
//! - Failed apiserver calls retry with per-object exponential backoff.
//! - On shutdown no new step starts; a step with side effects finishes first.
//! - No Abnormal is taken before the processor registrations are cached and the node policy has
//!   been read: a step run earlier would find no registration ("does not exist") or no policy
//!   (denied). A missing or invalid policy denies every action that changes the node
//!   ([`policy`]).

pub mod access;
mod backoff;
mod error;
mod executor;
pub mod plugin;
pub mod policy;
pub mod profiler;
pub mod registrations;
pub mod server;
pub mod upstream;
mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kdiag_api::labels::{NODE_LABEL, node_label_value};
use kdiag_api::{Abnormal, AbnormalPhase};
use kdiag_pipeline::{self as pipeline, Limits, Next};
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::recorder::UncachedRecorder;
use kdiag_runtime::registrations::Registrations;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Registration};
pub use executor::Executor;

use crate::plugin::PluginClient;
use crate::policy::PolicyHandle;
use crate::profiler::Profilers;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_name: String,
    /// Abnormals processed at once.
    pub concurrency: usize,
    pub limits: Limits,
    /// Bytes of stdout and of stderr kept per command executor.
    pub command_output_cap: usize,
    /// The node policy ConfigMap, as namespace and name.
    pub policy_configmap: (String, String),
    /// Where profiles are kept.
    pub data_root: PathBuf,
    /// This agent's HTTP server as others reach it, for profile links.
    pub public_url: String,
    /// Where the node's facts are.
    pub node: kdiag_api::plugin::NodeEnvironment,
    /// How long an Abnormal may take from admission to its end; then what has not run is not
    /// run and it ends Failed (DeadlineExceeded). None: no deadline.
    pub deadline: Option<std::time::Duration>,
    /// How long an Abnormal holds a worker slot before it yields to others waiting for one
    /// (between steps; a step itself is never cut short).
    pub turn: std::time::Duration,
    /// Node directories a Go profiler may read a pprof file from (`--go-profile-dir`).
    pub go_profile_dirs: Vec<PathBuf>,
}

/// The deadline of an Abnormal by default (`--abnormal-deadline`).
pub const DEFAULT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);
/// A worker slot's turn by default (`--turn`).
pub const DEFAULT_TURN: std::time::Duration = std::time::Duration::from_secs(5);

/// What every worker shares.
pub struct Agent {
    pub client: Client,
    pub executor: Executor,
    pub recorder: UncachedRecorder,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub limits: Limits,
    /// See [`AgentConfig::deadline`].
    pub deadline: Option<std::time::Duration>,
    /// See [`AgentConfig::turn`].
    pub turn: std::time::Duration,
    /// Abnormals waiting for a worker slot now.
    waiting: std::sync::atomic::AtomicUsize,
    workers: Semaphore,
    backoff: backoff::Backoff,
    /// The agent's cache of its node's Abnormals.
    store: Store<DeserializeGuard<Abnormal>>,
    /// Results of side-effecting steps whose record the apiserver refused until the retries
    /// ran out: the next run on the Abnormal records them instead of calling the step
    /// interrupted (worker.rs).
    unrecorded: worker::Unrecorded,
}

/// Handles to a running agent.
pub struct AgentHandle {
    /// True once the agent takes work: its caches are synced and the node policy was read.
    pub ready: Arc<AtomicBool>,
    /// True while a valid node policy is loaded.
    pub policy_valid: Arc<AtomicBool>,
    /// The built-ins, bound to this agent's node policy (serve these over HTTP too).
    pub builtins: Builtins,
    /// The Abnormals with work left (finished ones are only counted, in `finished`).
    pub store: Store<DeserializeGuard<Abnormal>>,
    pub finished: kdiag_runtime::cache::Finished,
    pub policy: PolicyHandle,
    pub executor_view: Arc<Agent>,
}

impl AgentHandle {
    /// What /readyz waits for, by name.
    pub fn readiness(&self) -> Vec<(String, Arc<AtomicBool>)> {
        vec![
            (
                "the agent's watches and node policy to sync".into(),
                self.ready.clone(),
            ),
            (
                "a valid node policy (the agent's log and the ConfigMap's Events say what is wrong)"
                    .into(),
                self.policy_valid.clone(),
            ),
        ]
    }
}

/// Builds the agent and returns it with the future that runs it until `shutdown` fires and the
/// running steps are done.
pub fn start(
    client: Client,
    config: AgentConfig,
    builtins: Builtins,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (
    AgentHandle,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (registrations, registrations_driver) = Registrations::watch(&client);
    let policy = PolicyHandle::not_loaded();
    let mut builtins = builtins;
    builtins.bind_policy(policy.clone());
    let recorder = UncachedRecorder::new(
        client.clone(),
        Reporter {
            controller: "kdiag-agent".into(),
            instance: Some(config.node_name.clone()),
        },
    );
    let (policy_ns, policy_name) = config.policy_configmap.clone();
    let (policy_status, policy_driver) = crate::policy::follow(
        policy.clone(),
        client.clone(),
        policy_ns,
        policy_name,
        metrics.clone(),
        recorder.clone(),
    );

    let api: Api<DeserializeGuard<Abnormal>> = Api::all(client.clone());
    let selector = format!("{NODE_LABEL}={}", node_label_value(&config.node_name));
    // The cache keeps slimmed copies (kdiag_runtime::cache): reconcile works on a fresh GET.
    let (store, abnormals, finished) = kdiag_runtime::cache::watch(
        api,
        watcher::Config::default().labels(&selector),
        kdiag_runtime::cache::Reader::Agent,
    );
    let controller = Controller::for_stream(abnormals, store)
        // Concurrency is bounded by the agent's own semaphore, so queue depth is observable.
        .with_config(controller::Config::default().concurrency(0))
        .graceful_shutdown_on(shutdown.clone().cancelled_owned());
    let store = controller.store();

    let agent = Arc::new(Agent {
        client: client.clone(),
        executor: Executor {
            client: client.clone(),
            node_name: config.node_name.clone(),
            builtins: builtins.clone(),
            registrations: registrations.clone(),
            recovery_budget: Default::default(),
            plugins: PluginClient::default(),
            policy: policy.clone(),
            profilers: Arc::new(Profilers {
                data_root: config.data_root.clone(),
                public_url: config.public_url.clone(),
                proc_root: config.node.proc_root.clone(),
                client: Some(client.clone()),
                limits: Default::default(),
                go_file_dirs: config.go_profile_dirs.clone(),
            }),
            max_step_output_bytes: config.limits.max_step_output_bytes,
            node: Arc::new(config.node.clone()),
            command_output_cap: config.command_output_cap,
            metrics: metrics.clone(),
        },
        recorder,
        metrics,
        shutdown: shutdown.clone(),
        limits: config.limits,
        deadline: config.deadline,
        turn: config.turn,
        waiting: Default::default(),
        workers: Semaphore::new(config.concurrency.max(1)),
        backoff: Default::default(),
        store: store.clone(),
        unrecorded: Default::default(),
    });
    let ready = Arc::new(AtomicBool::new(false));

    let handle = AgentHandle {
        ready: ready.clone(),
        policy_valid: policy_status.valid.clone(),
        builtins,
        store: store.clone(),
        finished,
        policy: policy.clone(),
        executor_view: agent.clone(),
    };
    let node = config.node_name.clone();
    let profilers = agent.executor.profilers.clone();
    let sweeper_stop = shutdown.clone();
    let driver = async move {
        // Profiles are deleted once their expirationSeconds have passed.
        let sweeper = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sweeper_stop.cancelled() => break,
                    _ = tokio::time::sleep(crate::profiler::SWEEP_INTERVAL) => {
                        let expired = profilers.sweep_expired(jiff::Timestamp::now().as_second()).await;
                        if !expired.is_empty() {
                            tracing::info!(deleted = expired.len(), "expired profiles deleted");
                            profilers.mark_expired(&expired).await;
                        }
                    }
                }
            }
        });
        let policy_task = tokio::spawn(policy_driver);
        let registrations_task = tokio::spawn(registrations_driver);
        // The Abnormal watch starts with `controller.run`, after the gate below, so its store is
        // ready only once the registrations are cached and the policy was read.
        let readiness = {
            let (store, ready) = (store.clone(), ready.clone());
            tokio::spawn(async move {
                kdiag_runtime::ready::store_ready(&store).await;
                ready.store(true, Ordering::Release);
                tracing::info!("agent ready: watches synced, node policy read");
            })
        };
        // No Abnormal is taken before the registrations are cached and the policy was read:
        // a step run earlier would be recorded as "does not exist" or "denied" for good.
        tokio::select! {
            _ = async {
                registrations.wait_until_ready().await;
                policy_status.wait_until_known().await;
            } => {}
            _ = shutdown.cancelled() => {}
        }
        tracing::info!(node = %node, selector = %selector, policy = ?policy_status.current(), "agent taking its node's Abnormals");
        let forget = agent.clone();
        controller
            .run(reconcile, error_policy, agent)
            .for_each(|result| {
                match &result {
                    // The requeue of an Abnormal deleted while it backed off.
                    Err(controller::Error::ObjectNotFound(r)) => forget.backoff.forget(&format!(
                        "{}/{}",
                        r.namespace.clone().unwrap_or_default(),
                        r.name
                    )),
                    Err(e) => tracing::debug!(error = %e, "reconcile"),
                    Ok(_) => {}
                }
                async {}
            })
            .await;
        readiness.abort();
        policy_task.abort();
        registrations_task.abort();
        sweeper.abort();
        tracing::info!("agent stopped");
    };
    (handle, driver)
}

async fn reconcile(
    obj: Arc<DeserializeGuard<Abnormal>>,
    agent: Arc<Agent>,
) -> Result<Action, Error> {
    let abnormal = match &obj.0 {
        Ok(a) => a,
        Err(invalid) => {
            reject_malformed(&agent, invalid).await?;
            return Ok(Action::await_change());
        }
    };
    if pipeline::next(abnormal) == Next::Idle {
        agent.forget_backoff(abnormal);
        return Ok(Action::await_change());
    }
    let m = &agent.metrics.agent;
    m.queue_depth.inc();
    agent.waiting.fetch_add(1, Ordering::AcqRel);
    let permit = agent.workers.acquire().await;
    agent.waiting.fetch_sub(1, Ordering::AcqRel);
    m.queue_depth.dec();
    let Ok(_permit) = permit else {
        return Ok(Action::await_change());
    };
    m.running.inc();
    let _running = scopeguard(|| m.running.dec());

    // The cached copy may predate this agent's own last write; work from the stored one.
    let api: Api<Abnormal> = Api::namespaced(
        agent.client.clone(),
        &abnormal.namespace().unwrap_or_default(),
    );
    let fresh = match api.get(&abnormal.name_any()).await {
        Ok(a) => a,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
        Err(e) => {
            m.api_errors.with_label_values(&["get"]).inc();
            return Err(Error::Api {
                abnormal: key(abnormal),
                operation: "get",
                source: Box::new(e),
            });
        }
    };
    let exit = worker::Worker::new(&agent, fresh).run().await?;
    agent.forget_backoff(abnormal);
    Ok(match exit {
        worker::Exit::Done => Action::await_change(),
        // Back in line behind those that waited (the slot queue is first come, first served).
        worker::Exit::Yielded => Action::requeue(std::time::Duration::ZERO),
    })
}

fn error_policy(obj: Arc<DeserializeGuard<Abnormal>>, error: &Error, agent: Arc<Agent>) -> Action {
    let k = match &obj.0 {
        Ok(a) => key(a),
        Err(i) => format!(
            "{}/{}",
            i.metadata.namespace.clone().unwrap_or_default(),
            i.metadata.name.clone().unwrap_or_default()
        ),
    };
    let delay = agent.backoff.failed(&k, |key| {
        let (ns, name) = key.split_once('/').unwrap_or(("", key));
        agent.store.get(&ObjectRef::new(name).within(ns)).is_some()
    });
    agent
        .metrics
        .agent
        .error(error.metric_label(), error.category());
    tracing::warn!(abnormal = %k, error = %error, category = error.category().as_str(), retry_in = ?delay, "will retry");
    Action::requeue(delay)
}

impl Agent {
    fn forget_backoff(&self, a: &Abnormal) {
        self.backoff.forget(&key(a));
    }
}

/// An Abnormal the agent cannot read (an embedded Event or PodSpec of the wrong shape) ends
/// Failed with the parse error instead of being retried forever.
async fn reject_malformed(agent: &Agent, invalid: &InvalidObject) -> Result<(), Error> {
    let ns = invalid.metadata.namespace.clone().unwrap_or_default();
    let name = invalid.metadata.name.clone().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        agent.client.clone(),
        &ns,
        &kube::api::ApiResource::erase::<Abnormal>(&()),
    );
    let raw = api.get(&name).await.map_err(|e| Error::Api {
        abnormal: format!("{ns}/{name}"),
        operation: "get",
        source: Box::new(e),
    })?;
    let phase = raw.data["status"]["phase"].as_str().unwrap_or_default();
    if phase == AbnormalPhase::Failed.as_str() || phase == AbnormalPhase::Succeeded.as_str() {
        return Ok(());
    }
    let patch = serde_json::json!({"status": {
        "phase": "Failed",
        "reason": "InvalidAbnormal",
        "message": format!("kdiag cannot read this Abnormal: {}; fix it and create it again", invalid.error),
    }});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::Api {
            abnormal: format!("{ns}/{name}"),
            operation: "patch_status",
            source: Box::new(e),
        })?;
    Ok(())
}

fn key(a: &Abnormal) -> String {
    format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any())
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
