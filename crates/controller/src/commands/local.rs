//! `kdiag local`: a real single-node cluster on this machine (crates/testenv, level 2) with the
//! controller and this node's agent running in this process. `make run` starts it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use kdiag_testenv::Cluster;

use super::{CommandError, runtime};
use crate::agent::{self, AgentConfig};
use crate::apply::apply_yaml;
use crate::builtin::Builtins;
use crate::cli::LocalArgs;
use crate::cluster::{self as controller, ControllerConfig};
use crate::metrics::Metrics;
use crate::pipeline::Limits;
use crate::server::{self, ProcessorService, ServerState};

/// What an install applies, embedded so `kdiag local` works from any directory.
const MANIFESTS: [(&str, &str); 3] = [
    (
        "config/deploy/00-namespace.yaml",
        include_str!("../../../../config/deploy/00-namespace.yaml"),
    ),
    (
        "config/deploy/10-rbac.yaml",
        include_str!("../../../../config/deploy/10-rbac.yaml"),
    ),
    (
        "config/deploy/processors.yaml",
        include_str!("../../../../config/deploy/processors.yaml"),
    ),
];
const DEMO: &str = include_str!("../../../../examples/demo-pod.yaml");

pub async fn run(args: LocalArgs) -> Result<ExitCode, CommandError> {
    let shutdown = runtime::shutdown_on_signals();
    eprintln!(
        "kdiag local: starting a single-node Kubernetes cluster on this machine (about 15 s)…"
    );
    let cluster = Cluster::start().await.map_err(|e| {
        format!("the local cluster did not start: {e}\n(kdiag local needs root, cgroup v1 or hybrid, and `make setup` done; see docs/development.md)")
    })?;
    let result = serve(&cluster, &args, shutdown).await;
    eprintln!("kdiag local: stopping the cluster…");
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped.map_err(|e| format!("stopping the local cluster: {e}"))?;
    eprintln!("kdiag local: stopped, nothing left behind.");
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    cluster: &Cluster,
    args: &LocalArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), CommandError> {
    let admin = cluster.client().await;
    cluster.apply_crds(&kdiag_api::crds::all()).await?;
    for (name, yaml) in MANIFESTS {
        apply_yaml(&admin, name, yaml).await?;
    }
    apply_yaml(&admin, "examples/demo-pod.yaml", DEMO).await?;

    // The components run with their own ServiceAccounts, as installed by config/deploy.
    let ns = kdiag_api::SYSTEM_NAMESPACE;
    let controller_client = cluster
        .client_with_token(&cluster.service_account_token(ns, "kdiag-controller").await)
        .await;
    let agent_client = cluster
        .client_with_token(&cluster.service_account_token(ns, "kdiag-agent").await)
        .await;

    let metrics = Arc::new(Metrics::new());
    let node = cluster.node_name().to_owned();
    let node_env = kdiag_api::plugin::NodeEnvironment {
        kubelet_root: cluster.kubelet_root_dir(),
        cri_sockets: vec![cluster.cri_socket()],
        ..Default::default()
    };
    let addr = SocketAddr::new(args.bind_address, args.port);
    let data_root = cluster.run_dir().join("kdiag-data");
    let (c_handle, c_driver) = controller::start(
        controller_client,
        ControllerConfig::default(),
        Builtins::standard(),
        metrics.clone(),
        shutdown.clone(),
    );
    let agent_config = AgentConfig {
        node_name: node.clone(),
        concurrency: 32,
        limits: Limits::default(),
        command_output_cap: kdiag_recoverers::command::DEFAULT_OUTPUT_CAP,
        policy_configmap: (ns.into(), "kdiag-policy".into()),
        data_root: data_root.clone(),
        public_url: format!("http://{addr}"),
        node: node_env.clone(),
    };
    let (a_handle, a_driver) = agent::start(
        agent_client.clone(),
        agent_config,
        Builtins::standard(),
        metrics.clone(),
        shutdown.clone(),
    );
    let (m, c_store, a_store) = (
        metrics.clone(),
        c_handle.store.clone(),
        a_handle.store.clone(),
    );
    let state = ServerState {
        metrics: metrics.clone(),
        refresh: Arc::new(move || {
            for (phase, n) in controller::count_by_phase(&c_store) {
                m.controller.abnormals.with_label_values(&[phase]).set(n);
            }
            let counts = controller::count_by_phase(&a_store);
            m.agent
                .original
                .node_abnormal_count
                .set(counts.values().sum());
            for (phase, n) in counts {
                if !phase.is_empty() {
                    m.agent.abnormals.with_label_values(&[phase]).set(n);
                }
            }
        }),
        ready: vec![
            ("the controller's watches".into(), c_handle.ready.clone()),
            ("the agent's watches".into(), a_handle.ready.clone()),
        ],
        processors: Some(ProcessorService {
            builtins: Builtins::standard(),
            client: agent_client,
            node_name: node.clone(),
            max_output_bytes: Limits::default().max_step_output_bytes,
            node: Arc::new(node_env),
            data_root,
        }),
    };
    let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e} (choose another port with --port)"))?;
    let server_task = tokio::spawn(serving);

    println!(
        "\nkdiag local is running: controller and agent for node {node}, on a real single-node cluster.\n\n\
         In another terminal:\n\n  export KUBECONFIG={kubeconfig}\n  kubectl create -f examples/abnormal.yaml\n  kubectl get abnormals -w        # it reaches Succeeded\n  kubectl get abnormal demo-web -o yaml\n\n\
         Pods that fail in real ways, each with its Abnormal: examples/pods/\n\
         Metrics: curl http://{addr}/metrics\n\nStop with Ctrl-C.\n",
        kubeconfig = cluster.kubeconfig_path().display(),
    );
    tokio::join!(c_driver, a_driver);
    let _ = server_task.await;
    Ok(())
}
