//! kdiag-controller: the cluster controller, one per cluster. It admits each new Abnormal exactly
//! once and routes it to its node's agent (`cluster`), fails those no agent takes, garbage-collects
//! finished ones, creates
//! Abnormals from Warning Events and Prometheus alerts (`sources`) and from failed KubeProber
//! checkers, runs KubeProber's probes and writes root causes back next to their results
//! (`probes`), and serves probe reports and alerts over HTTP (`server`).
//!
//! Depends on kdiag-api, kdiag-pipeline (admission's decisions, templates), kdiag-runtime, kube,
//! tokio, warp and the TLS and HTTP clients the native probe checks use; never on the agent.
//! [`start`] is its composition root; the kdiag binary runs it (`kdiag controller`).

pub mod cluster;
mod error;
pub mod leader;
pub mod nodes;
pub mod probes;
mod retry;
pub mod server;
pub mod sources;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kdiag_api::Abnormal;
use kdiag_pipeline::admission;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::recorder::UncachedRecorder;
use kdiag_runtime::registrations::Registrations;
use kube::Client;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

pub use crate::error::Error;

use crate::cluster::{Ctx, collect_garbage, error_policy, reconcile};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// How long to wait for a referenced pod to exist and be scheduled.
    pub pod_wait: Duration,
    /// How often garbage collection looks.
    pub gc_interval: Duration,
    /// Finished Abnormals older than this are deleted.
    pub ttl: Duration,
    /// Per node, finished Abnormals beyond the newest this many are deleted.
    pub max_finished_per_node: usize,
    /// An Abnormal naming neither a node nor a pod runs on every node, as one child Abnormal per
    /// node, if the cluster has at most this many nodes; 0 rejects such an Abnormal
    /// (MissingTarget) instead.
    pub fan_out_max_nodes: usize,
    /// An admitted Abnormal that no agent took within this long (its node is gone or runs no
    /// agent) ends Failed with reason NoAgent; `None` never fails one ([`cluster::no_agent`]).
    pub no_agent_grace: Option<Duration>,
    /// Budgets of Abnormals created for failed probe checkers.
    pub probe_budgets: crate::probes::trigger::ProbeBudgets,
    /// The probe runner's settings.
    pub runner: crate::probes::runner::RunnerConfig,
    /// Probes triggered by change: the quiet period and maximum wait of triggers that set none.
    pub probe_triggers: crate::probes::change::Debounce,
    /// Budgets of Abnormals created by Event and alert sources.
    pub source_budgets: crate::sources::sink::SourceBudgets,
    /// The namespace Abnormals for alerts are created in.
    pub alert_namespace: String,
    /// The bearer token alert deliveries must carry. Without one, alerts are refused unless
    /// `alerts_allow_unauthenticated` says to take them from anyone.
    pub alert_token: Option<String>,
    /// Take alerts without a token (an explicit opt-in; docs/sources.md).
    pub alerts_allow_unauthenticated: bool,
    /// The Secret (in kube-diagnoser, key `token`) [`prepare`] reads the alert token from, and
    /// creates with a random token when missing, if `alert_token` is not given.
    pub alert_token_secret: Option<String>,
    /// Take `POST /probe-status` reports without a token (KubeProber's SDK sends none): an
    /// explicit opt-in; by default a report needs its checker pod's projected token.
    pub probe_status_allow_unauthenticated: bool,
    /// The processors a pod is triaged with when its Abnormal names none.
    pub triage: admission::Triage,
    /// The validating admission webhook (`webhook`); `None` serves none.
    pub webhook: Option<crate::webhook::WebhookConfig>,
    /// Leader election among replicas (`leader`); `None` runs as the only one.
    pub leader_election: Option<crate::leader::LeaderElection>,
    /// The link to a fleet hub (kdiag-fleet's member link), run by the leader; `None` links to
    /// no hub.
    pub fleet: Option<kdiag_fleet::member::MemberConfig>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            pod_wait: Duration::from_secs(60),
            gc_interval: Duration::from_secs(300),
            ttl: Duration::from_secs(72 * 3600),
            max_finished_per_node: 200,
            fan_out_max_nodes: 100,
            no_agent_grace: Some(cluster::no_agent::DEFAULT_GRACE),
            probe_budgets: Default::default(),
            runner: Default::default(),
            probe_triggers: Default::default(),
            source_budgets: Default::default(),
            alert_namespace: kdiag_api::SYSTEM_NAMESPACE.into(),
            alert_token: None,
            alerts_allow_unauthenticated: false,
            alert_token_secret: None,
            probe_status_allow_unauthenticated: false,
            triage: Default::default(),
            webhook: None,
            leader_election: None,
            fleet: None,
        }
    }
}

/// Handles to a running controller.
pub struct ControllerHandle {
    pub ready: Arc<AtomicBool>,
    pub store: Store<DeserializeGuard<Abnormal>>,
    /// The alert endpoints' handler, for the HTTP server.
    pub alerts: Arc<crate::sources::alerts::AlertSource>,
    /// The probe report endpoint's handler, for the HTTP server.
    pub probe_reports: Arc<crate::probes::report::ProbeReports>,
    /// Whether this replica leads.
    pub leader: crate::leader::LeaderView,
    /// Set when this replica led and lost its Lease: it stopped, and its process should exit
    /// with an error so that it restarts as a standby.
    pub lost_leadership: Arc<AtomicBool>,
}

/// The name of the Secret holding the alert token, in kube-diagnoser.
pub const ALERT_TOKEN_SECRET: &str = "kdiag-alert-token";

/// What the controller reads before it starts: the alert token from its Secret when none was
/// given (and alerts are not explicitly open), creating the Secret with a random token if there
/// is none, so a fresh install takes alerts only with a token nobody had to make up.
pub async fn prepare(client: &Client, config: &mut ControllerConfig) -> Result<(), Error> {
    if config.alert_token.is_some() || config.alerts_allow_unauthenticated {
        return Ok(());
    }
    if let Some(secret) = &config.alert_token_secret {
        config.alert_token = Some(
            crate::sources::alerts::ensure_alert_token(client, kdiag_api::SYSTEM_NAMESPACE, secret)
                .await?,
        );
    }
    Ok(())
}

/// Builds the controller and the future that runs it (admission and GC) until `shutdown`.
pub fn start(
    client: Client,
    config: ControllerConfig,
    builtins: Builtins,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (
    ControllerHandle,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (registrations, registrations_driver) = Registrations::watch(&client);
    let recorder = UncachedRecorder::new(
        client.clone(),
        Reporter {
            controller: "kdiag-controller".into(),
            instance: None,
        },
    );
    // What only the leader does stops with `leader_stop`: at shutdown, or when it loses its
    // Lease. The watches, the webhook and the HTTP endpoints serve on every replica.
    let leader_stop = shutdown.child_token();
    let leader = crate::leader::LeaderView::new(&client, config.leader_election.clone());
    let lost_leadership = Arc::new(AtomicBool::new(false));
    // One watch of every Abnormal, shared by admission and the ProbeStatus write-back.
    let (store, [for_admission, for_writeback], watch_abnormals) = watch_abnormals(client.clone());
    let controller = Controller::for_shared_stream(for_admission, store.clone())
        .graceful_shutdown_on(leader_stop.clone().cancelled_owned());
    let writeback = Controller::for_shared_stream(
        for_writeback.filter(|o| std::future::ready(crate::probes::writeback::concerns(o))),
        store.clone(),
    )
    .graceful_shutdown_on(leader_stop.clone().cancelled_owned());
    let (sources, sources_driver) =
        crate::sources::validity::start(client.clone(), shutdown.clone());
    let nodes = Arc::new(crate::nodes::KnownNodes::new(client.clone()));
    let probe_trigger = crate::probes::trigger::start(
        client.clone(),
        sources.clone(),
        config.probe_budgets,
        metrics.clone(),
        nodes.clone(),
        leader_stop.clone(),
    );
    let continuous = crate::probes::continuous::Continuous::new(
        client.clone(),
        metrics.clone(),
        config.runner.report_url.clone(),
    );
    let mut probe_reports = crate::probes::report::ProbeReports::new(
        client.clone(),
        config.probe_status_allow_unauthenticated,
        nodes.clone(),
    );
    probe_reports.continuous = Some(continuous.clone());
    let probe_reports = Arc::new(probe_reports);
    let continuous_run = continuous.run(leader_stop.clone());
    let probe_runner = crate::probes::runner::start(
        client.clone(),
        config.runner.clone(),
        metrics.clone(),
        leader_stop.clone(),
    );
    let probe_triggers = crate::probes::triggers::start(
        client.clone(),
        config.probe_triggers,
        metrics.clone(),
        leader_stop.clone(),
    );
    let sink = Arc::new(crate::sources::sink::Sink::new(
        client.clone(),
        metrics.clone(),
        config.source_budgets,
    ));
    let event_source = Arc::new(crate::sources::events::EventSource::new(
        sink.clone(),
        sources.clone(),
        store.clone(),
    ));
    let alerts = Arc::new(crate::sources::alerts::AlertSource {
        sink: sink.clone(),
        sources: sources.clone(),
        namespace: config.alert_namespace.clone(),
        token: config.alert_token.clone(),
        allow_unauthenticated: config.alerts_allow_unauthenticated,
        nodes,
        leader: leader.clone(),
    });
    let flusher = sink.run_flusher(std::time::Duration::from_secs(2), leader_stop.clone());
    // One link per cluster: the leader's, so replicas do not report the cluster twice.
    let fleet_link = config
        .fleet
        .clone()
        .map(|member| kdiag_fleet::member::run(client.clone(), member, leader_stop.clone()));
    let events_run = event_source.run(leader_stop.clone());
    let writeback_ctx = Arc::new(crate::probes::writeback::Ctx {
        client: client.clone(),
        abnormals: store.clone(),
        schema: Default::default(),
        metrics: metrics.clone(),
    });
    let webhook_ready = Arc::new(AtomicBool::new(config.webhook.is_none()));
    let webhook_run = config.webhook.clone().map(|webhook_config| {
        let webhook = Arc::new(crate::webhook::Webhook::new(
            client.clone(),
            registrations.clone(),
            builtins.clone(),
            config.triage.clone(),
            webhook_config.exempt_users.clone(),
            metrics.clone(),
        ));
        crate::webhook::run(
            client.clone(),
            webhook_config,
            webhook,
            webhook_ready.clone(),
            shutdown.clone(),
        )
    });
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        registrations: registrations.clone(),
        builtins,
        recorder,
        metrics,
        config,
    });
    let ready = Arc::new(AtomicBool::new(false));
    let handle = ControllerHandle {
        ready: ready.clone(),
        store: store.clone(),
        alerts,
        probe_reports,
        leader: leader.clone(),
        lost_leadership: lost_leadership.clone(),
    };

    // Boxed before the driver captures them: each is a large state machine, and the driver (run
    // on the main thread) would carry them all inline and copy them through its stack, which
    // then stays resident (docs/performance.md: idle memory).
    let (probe_trigger, probe_runner, continuous_run, probe_triggers, events_run, flusher) = (
        Box::pin(probe_trigger),
        Box::pin(probe_runner),
        Box::pin(continuous_run),
        Box::pin(probe_triggers),
        Box::pin(events_run),
        Box::pin(flusher),
    );
    let (registrations_driver, sources_driver, watch_abnormals) = (
        Box::pin(registrations_driver),
        Box::pin(sources_driver),
        Box::pin(watch_abnormals),
    );
    let (fleet_link, webhook_run) = (fleet_link.map(Box::pin), webhook_run.map(Box::pin));
    let driver = async move {
        let registrations_task = tokio::spawn(registrations_driver);
        let webhook_task = webhook_run.map(tokio::spawn);
        let readiness = {
            let (store, registrations, ready) =
                (store.clone(), registrations.clone(), ready.clone());
            let webhook_ready = webhook_ready.clone();
            // A replica in an election is ready once it serves the webhook and reports (its
            // Abnormal watch starts only when it leads); a sole controller once it has synced.
            let elected = ctx.config.leader_election.is_some();
            tokio::spawn(async move {
                if !elected {
                    kdiag_runtime::ready::store_ready(&store).await;
                }
                registrations.wait_until_ready().await;
                // Serving, with its caBundle written: until then creation fails closed.
                while !webhook_ready.load(Ordering::Acquire) {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                ready.store(true, Ordering::Release);
                tracing::info!("controller ready: watches synced");
            })
        };
        let sources_task = tokio::spawn(sources_driver);
        // Standing by until this replica leads (at once without an election).
        let candidacy = campaign(&ctx.client, &leader, &shutdown).await;
        let candidacy = match candidacy {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "controller stopping");
                lost_leadership.store(true, Ordering::Release);
                shutdown.cancel();
                None
            }
        };
        // Stopped (or failed to join) while standing by: there is no leader's work to do.
        let leading = !shutdown.is_cancelled();
        let mut watch_task = None;
        let mut lost_task = None;
        if leading {
            // The Abnormal watch feeds admission and the write-back, which only the leader
            // runs: a standby's unread subscribers would stall it.
            watch_task = Some(tokio::spawn(watch_abnormals));
            // A leader that loses its Lease stops everything; its process exits and restarts
            // as a standby, so nothing it started outlives its leadership.
            lost_task = candidacy.map(|mut candidacy| {
                let (shutdown, lost_leadership) = (shutdown.clone(), lost_leadership.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = candidacy.lost() => {
                            tracing::error!("lost the leader Lease: stopping, to restart as a standby");
                            lost_leadership.store(true, Ordering::Release);
                            shutdown.cancel();
                        }
                        _ = shutdown.cancelled() => {}
                    }
                    candidacy
                })
            });
            Box::pin(lead(Leading {
                ctx,
                store: store.clone(),
                registrations: registrations.clone(),
                leader_stop,
                controller,
                writeback,
                writeback_ctx,
                tasks: [
                    tokio::spawn(probe_trigger),
                    tokio::spawn(probe_runner),
                    tokio::spawn(continuous_run),
                    tokio::spawn(probe_triggers),
                    tokio::spawn(events_run),
                    tokio::spawn(flusher),
                ]
                .into_iter()
                .chain(fleet_link.map(tokio::spawn))
                .collect(),
            }))
            .await;
        }
        let _ = sources_task.await;
        readiness.abort();
        // The leader's work is over: a standby may take over now.
        if let Some(t) = lost_task
            && let Ok(candidacy) = t.await
        {
            candidacy.release().await;
        }
        if let Some(t) = webhook_task {
            let _ = t.await;
        }
        registrations_task.abort();
        if let Some(t) = watch_task {
            t.abort();
        }
        tracing::info!("controller stopped");
    };
    (handle, Box::pin(driver))
}

/// What the leader runs, and what it runs it with.
struct Leading {
    ctx: Arc<Ctx>,
    store: Store<DeserializeGuard<Abnormal>>,
    registrations: Registrations,
    leader_stop: CancellationToken,
    controller: Controller<DeserializeGuard<Abnormal>>,
    writeback: Controller<DeserializeGuard<Abnormal>>,
    writeback_ctx: Arc<crate::probes::writeback::Ctx>,
    /// Triggers, the probe runner and the flusher, already started: they end at `leader_stop`.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The leader's work (admission, garbage collection, the write-back, triggers and probes) until
/// `leader_stop`.
async fn lead(l: Leading) {
    let gc_task = tokio::spawn(collect_garbage(
        l.ctx.clone(),
        l.store.clone(),
        l.leader_stop.clone(),
    ));
    let no_agent_task = l.ctx.config.no_agent_grace.map(|grace| {
        tokio::spawn(cluster::no_agent::fail_abnormals_without_agent(
            l.ctx.clone(),
            l.store.clone(),
            grace,
            l.leader_stop.clone(),
        ))
    });
    let writeback_task = tokio::spawn(
        l.writeback
            .run(
                crate::probes::writeback::reconcile,
                crate::probes::writeback::error_policy,
                l.writeback_ctx,
            )
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "write-back");
                }
            }),
    );
    // Admission needs the registrations: validating against an empty cache would reject
    // every Abnormal that names a processor.
    l.registrations.wait_until_ready().await;
    l.controller
        .run(reconcile, error_policy, l.ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    gc_task.abort();
    if let Some(t) = no_agent_task {
        t.abort();
    }
    let _ = writeback_task.await;
    for t in l.tasks {
        let _ = t.await;
    }
}

/// Joins the election and waits until this replica leads, or until shutdown (then None).
async fn campaign(
    client: &Client,
    leader: &crate::leader::LeaderView,
    shutdown: &CancellationToken,
) -> Result<Option<crate::leader::Candidacy>, Error> {
    let Some(mut candidacy) = crate::leader::Candidacy::join(client.clone(), leader).await? else {
        return Ok(None);
    };
    tracing::info!("leader election: standing by until this replica holds the Lease");
    tokio::select! {
        _ = candidacy.acquired() => {
            tracing::info!("leader election: this replica leads");
            Ok(Some(candidacy))
        }
        _ = shutdown.cancelled() => {
            candidacy.release().await;
            Ok(None)
        }
    }
}

/// Subscribers of the shared Abnormal watch: admission's and the write-back's.
const ABNORMAL_SUBSCRIBERS: usize = 2;

/// What a subscriber of the shared Abnormal watch receives.
type Subscriber = ReflectHandle<DeserializeGuard<Abnormal>>;

/// Watches every Abnormal into one store of slimmed copies (kdiag_runtime::cache: what
/// admission, routing, GC and the write-back read) and hands each change to every subscriber.
/// The future drives the watch; it must be spawned.
fn watch_abnormals(
    client: Client,
) -> (
    Store<DeserializeGuard<Abnormal>>,
    [Subscriber; ABNORMAL_SUBSCRIBERS],
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Room for a burst of changes before the watch waits for the slower subscriber.
    let (store, writer) = reflector::store_shared(1024);
    let subscribers = std::array::from_fn(|_| {
        writer
            .subscribe()
            .expect("a shared store hands out subscribers")
    });
    let api: Api<DeserializeGuard<Abnormal>> = Api::all(client);
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| kdiag_runtime::cache::slim(kdiag_runtime::cache::Reader::Controller, o))
        .reflect_shared(writer);
    (store, subscribers, drive(events))
}

/// Polls a watch stream to its end, logging its errors (the watcher retries them).
async fn drive<T, E: std::fmt::Display>(events: impl Stream<Item = Result<T, E>>) {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watching Abnormals; retrying");
        }
    }
}
