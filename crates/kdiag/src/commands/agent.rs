//! `kdiag agent`: the node agent and its HTTP server.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use kdiag_agent::server::ProcessorService;
use kdiag_agent::{self as agent, AgentConfig};
use kdiag_api::AbnormalPhase;
use kdiag_pipeline::Limits;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::cache::count_with_finished;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::process;
use kdiag_runtime::server::{self, ServerState};

use super::CommandError;
use crate::cli::AgentArgs;

pub async fn run(args: AgentArgs) -> Result<ExitCode, CommandError> {
    if args.node_name.trim().is_empty() {
        anyhow::bail!(
            "--node-name (or NODE_NAME) is empty: the agent must know which node's Abnormals to process"
        );
    }
    let (client, apiserver) = process::client_and_url().await?;
    let shutdown = process::shutdown_on_signals();
    let metrics = Arc::new(Metrics::new());
    let (handle, driver) = agent::start(
        client.clone(),
        agent_config(&args, &apiserver),
        Builtins::standard(),
        metrics.clone(),
        shutdown.clone(),
    );
    let state = agent_server_state(&args, &apiserver, client.clone(), &metrics, &handle);
    let state_base = state.clone();
    let addr = SocketAddr::new(args.server.bind_address, args.server.port);
    let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {addr}: {e} (another process on the port? choose one with --port)"
            )
        })?;
    let server_task = tokio::spawn(serving);
    let upstream_task = match args.kube_diagnoser_port {
        Some(port) => {
            let addr = SocketAddr::new(args.server.bind_address, port);
            let state = ServerState {
                routes: agent::upstream::routes(Some(processor_service(
                    &args, &apiserver, client, &handle,
                ))),
                ..state_base
            };
            let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot listen on {addr}: {e} (another process on the port? choose one with --kube-diagnoser-port)"
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
    Ok(ExitCode::SUCCESS)
}

/// `apiserver`: the URL the agent's client talks to (see [`node_environment`]).
pub fn agent_config(args: &AgentArgs, apiserver: &str) -> AgentConfig {
    let advertise = args
        .advertise_address
        .map(|a| a.to_string())
        .unwrap_or_else(|| args.node_name.clone());
    AgentConfig {
        node_name: args.node_name.clone(),
        concurrency: args.concurrency,
        limits: Limits {
            max_step_output_bytes: args.max_step_output_bytes,
            max_context_bytes: args.max_context_bytes,
            max_object_bytes: args.max_object_bytes,
        },
        command_output_cap: kdiag_recoverers::command::DEFAULT_OUTPUT_CAP,
        policy_configmap: (args.policy_namespace.clone(), args.policy_configmap.clone()),
        data_root: args.data_root.clone(),
        public_url: format!("http://{advertise}:{}", args.server.port),
        node: node_environment(args, apiserver),
        deadline: Some(args.abnormal_deadline).filter(|d| !d.is_zero()),
        turn: args.turn,
        go_profile_dirs: args.go_profile_dirs.clone(),
    }
}

/// Where the built-ins find this node; `apiserver` is the URL of the agent's own client, whose
/// served certificate node-collector checks.
pub fn node_environment(args: &AgentArgs, apiserver: &str) -> kdiag_api::plugin::NodeEnvironment {
    kdiag_api::plugin::NodeEnvironment {
        proc_root: args.proc_root.clone(),
        sys_root: args.sys_root.clone(),
        kubelet_root: args.kubelet_root.clone(),
        cri_sockets: args.cri_sockets.clone(),
        kmsg: args.kmsg.clone(),
        apiserver: Some(apiserver.to_owned()),
    }
}

/// The agent's part of the HTTP server: readiness, phase gauges, built-ins.
pub fn agent_server_state(
    args: &AgentArgs,
    apiserver: &str,
    client: kube::Client,
    metrics: &Arc<Metrics>,
    handle: &agent::AgentHandle,
) -> ServerState {
    let (m, store, finished) = (
        metrics.clone(),
        handle.store.clone(),
        handle.finished.clone(),
    );
    ServerState {
        metrics: metrics.clone(),
        refresh: Arc::new(move || {
            let counts = count_with_finished(&store, &finished);
            let total: i64 = counts.values().sum();
            for (phase, n) in counts {
                if phase.is_empty() || phase == AbnormalPhase::Unknown.as_str() {
                    continue;
                }
                m.agent.abnormals.with_label_values(&[phase]).set(n);
            }
            m.agent.original.node_abnormal_count.set(total);
        }),
        ready: handle.readiness(),
        routes: server::join(
            agent::server::routes(Some(processor_service(args, apiserver, client, handle))),
            kdiag_controller::server::routes(None, None),
        ),
    }
}

/// The built-ins as the agent serves them over HTTP.
fn processor_service(
    args: &AgentArgs,
    apiserver: &str,
    client: kube::Client,
    handle: &agent::AgentHandle,
) -> ProcessorService {
    ProcessorService {
        builtins: handle.builtins.clone(),
        authorizer: Arc::new(kdiag_runtime::auth::Authorizer::new(client.clone())),
        client,
        node_name: args.node_name.clone(),
        max_output_bytes: args.max_step_output_bytes,
        node: Arc::new(node_environment(args, apiserver)),
        data_root: args.data_root.clone(),
    }
}
