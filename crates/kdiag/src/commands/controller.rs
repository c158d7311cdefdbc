//! `kdiag controller`: the cluster controller and its HTTP server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use kdiag_controller::{ControllerConfig, ControllerHandle};
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::cache::count_by_phase;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::process;
use kdiag_runtime::server::{self, ServerState};

use super::CommandError;
use crate::cli::ControllerArgs;

pub async fn run(args: ControllerArgs) -> Result<ExitCode, CommandError> {
    let client = process::client().await?;
    let shutdown = process::shutdown_on_signals();
    let metrics = Arc::new(Metrics::new());
    let mut config = controller_config(&args);
    config.webhook = args.webhook.config(args.server.bind_address)?;
    config.leader_election = args.leader.config(args.server.port);
    config.fleet = args.fleet.config()?;
    kdiag_controller::prepare(&client, &mut config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (handle, driver) = kdiag_controller::start(
        client.clone(),
        config,
        // Names only: the controller admits Abnormals naming built-ins; the agents run them.
        Builtins::standard_names(),
        metrics.clone(),
        shutdown.clone(),
    );
    let state = controller_server_state(&metrics, &handle);
    let addr = SocketAddr::new(args.server.bind_address, args.server.port);
    let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr}: {e} (another process on the port? choose one with --port)"
            )
        })?;
    let server_task = tokio::spawn(serving);
    let upstream_task = match args.kube_diagnoser_alerts_port {
        Some(port) => {
            let addr = SocketAddr::new(args.server.bind_address, port);
            let state = ServerState {
                routes: server::join(
                    kdiag_controller::server::routes(None, Some(handle.alerts.clone())),
                    kdiag_controller::server::cluster_health(),
                ),
                ..controller_server_state(&metrics, &handle)
            };
            let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {addr}: {e} (another process on the port? choose one with --kube-diagnoser-alerts-port)"
                    )
                })?;
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    driver.await;
    shutdown.cancel();
    let _ = server_task.await;
    if let Some(task) = upstream_task {
        let _ = task.await;
    }
    if handle
        .lost_leadership
        .load(std::sync::atomic::Ordering::Acquire)
    {
        // Restarted by the kubelet, it stands by until it holds the Lease again.
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn controller_config(args: &ControllerArgs) -> ControllerConfig {
    ControllerConfig {
        pod_wait: args.pod_wait,
        fan_out_max_nodes: args.fan_out_max_nodes,
        gc_interval: args.gc_interval,
        no_agent_grace: Some(args.no_agent_grace).filter(|d| !d.is_zero()),
        ttl: args.abnormal_ttl,
        max_finished_per_node: args.max_finished_per_node,
        source_budgets: kdiag_controller::sources::sink::SourceBudgets {
            per_source: args.source_budget,
            per_node: args.source_node_budget,
        },
        alert_namespace: args.alert_namespace.clone(),
        triage: kdiag_pipeline::admission::Triage {
            collectors: args
                .triage_collectors
                .iter()
                .map(|n| registration(n))
                .collect(),
            diagnosers: args
                .triage_diagnosers
                .iter()
                .map(|n| registration(n))
                .collect(),
        },
        alert_token: args.alert_token.clone(),
        alerts_allow_unauthenticated: args.alerts_allow_unauthenticated,
        alert_token_secret: Some(args.alert_token_secret.clone()).filter(|s| !s.is_empty()),
        probe_status_allow_unauthenticated: args.probe_status_allow_unauthenticated,
        runner: kdiag_controller::probes::runner::RunnerConfig {
            report_url: args.probe_report_url.clone(),
            stale_intervals: args.probe_stale_intervals,
            history: args.probe_history,
            ..Default::default()
        },
        probe_triggers: kdiag_controller::probes::change::Debounce {
            quiet: Duration::from_secs(args.probe_trigger_quiet.into()),
            max_wait: Duration::from_secs(args.probe_trigger_max_wait.max(1).into()),
        },
        probe_budgets: kdiag_controller::probes::trigger::ProbeBudgets {
            per_probe: args.probe_budget,
            per_node: args.probe_node_budget,
        },
        // Set by `run` from args.webhook and args.fleet (which can fail) and args.leader.
        webhook: None,
        leader_election: None,
        fleet: None,
    }
}

pub fn controller_server_state(metrics: &Arc<Metrics>, handle: &ControllerHandle) -> ServerState {
    let (m, store, leader) = (metrics.clone(), handle.store.clone(), handle.leader.clone());
    ServerState {
        metrics: metrics.clone(),
        refresh: Arc::new(move || {
            for (phase, n) in count_by_phase(&store) {
                m.controller.abnormals.with_label_values(&[phase]).set(n);
            }
            m.controller.leader.set(i64::from(leader.is_leader()));
        }),
        ready: vec![(
            "the controller's watches to sync".into(),
            handle.ready.clone(),
        )],
        routes: server::join(
            kdiag_agent::server::routes(None),
            kdiag_controller::server::routes(
                Some(handle.probe_reports.clone()),
                Some(handle.alerts.clone()),
            ),
        ),
    }
}

/// `ns/name`, or a bare name in kube-diagnoser.
fn registration(s: &str) -> kdiag_api::NamespacedName {
    match s.trim().split_once('/') {
        Some((ns, name)) => kdiag_api::NamespacedName::new(ns, name),
        None => kdiag_api::NamespacedName::new(kdiag_api::SYSTEM_NAMESPACE, s.trim()),
    }
}
