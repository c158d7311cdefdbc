//! `kdiag local`: a real single-node cluster on this machine (crates/testenv, level 2) with the
//! controller and this node's agent running in this process. `make run` starts it.
//!
//! `kdiag local --in-cluster` (`make run-in-cluster`) installs kdiag's image instead, with
//! `kubectl apply -k` of config/deploy through the test overlay, exactly as the in-cluster
//! install test does (kdiag_testenv::install), so a newcomer sees what an install does.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use kdiag_agent::server::ProcessorService;
use kdiag_agent::{self as agent, AgentConfig};
use kdiag_controller::{self as controller, ControllerConfig};
use kdiag_pipeline::Limits;
use kdiag_runtime::apply::apply_yaml;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::cache::{count_by_phase, count_with_finished};
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::process;
use kdiag_runtime::server::{self, ServerState};
use kdiag_testenv::install;
use kdiag_testenv::{Cluster, ClusterOptions};

use super::CommandError;
use crate::cli::LocalArgs;

/// What `kubectl apply -k config/deploy` installs, but for the CRDs ([`kdiag_api::crds::all`],
/// applied first) and the two workloads, which run in this process instead; embedded so
/// `kdiag local` works from any directory. A test keeps this list and
/// config/deploy/Kustomization equal.
const MANIFESTS: [(&str, &str); 6] = [
    (
        "00-namespace.yaml",
        include_str!("../../../../config/deploy/00-namespace.yaml"),
    ),
    (
        "10-rbac.yaml",
        include_str!("../../../../config/deploy/10-rbac.yaml"),
    ),
    // The node policy: without it the agent denies every command and recovery (fail closed).
    (
        "20-policy.yaml",
        include_str!("../../../../config/deploy/20-policy.yaml"),
    ),
    (
        "processors.yaml",
        include_str!("../../../../config/deploy/processors.yaml"),
    ),
    // The default triggers: a failed probe checker becomes an Abnormal (docs/probes.md).
    (
        "sources.yaml",
        include_str!("../../../../config/deploy/sources.yaml"),
    ),
    // Last: from here on, creating Abnormals, sources and registrations needs the controller's
    // admission webhook, which this process serves at a URL (--webhook=url).
    (
        "webhook.yaml",
        include_str!("../../../../config/deploy/webhook.yaml"),
    ),
];
const DEMO: &str = include_str!("../../../../examples/demo-pod.yaml");

pub async fn run(args: LocalArgs) -> Result<ExitCode, CommandError> {
    if args.in_cluster {
        return run_in_cluster().await;
    }
    let shutdown = process::shutdown_on_signals();
    eprintln!(
        "kdiag local: starting a single-node Kubernetes cluster on this machine (about 15 s)…"
    );
    let cluster = Cluster::start().await.map_err(not_started)?;
    let result = serve(&cluster, &args, shutdown).await;
    stop(cluster, result).await
}

/// Why the local cluster did not start, and what it needs.
fn not_started(e: kdiag_testenv::TestEnvError) -> CommandError {
    anyhow::anyhow!(
        "the local cluster did not start: {e}\n(kdiag local needs root, cgroup v1 or hybrid, and `make setup` done; see docs/development.md)"
    )
}

/// Stops the cluster whatever `result` is, then reports `result` first.
async fn stop(
    cluster: Cluster,
    result: Result<(), CommandError>,
) -> Result<ExitCode, CommandError> {
    eprintln!("kdiag local: stopping the cluster…");
    let stopped = tokio::task::spawn_blocking(move || cluster.stop()).await?;
    result?;
    stopped.map_err(|e| anyhow::anyhow!("stopping the local cluster: {e}"))?;
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
        apply_yaml(&admin, &format!("config/deploy/{name}"), yaml).await?;
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
        apiserver: Some(cluster.control_plane().url().to_owned()),
        ..Default::default()
    };
    let addr = SocketAddr::new(args.bind_address, args.port);
    let data_root = cluster.run_dir().join("kdiag-data");
    // Checker pods report through the bridge: the host is its gateway.
    let gateway = gateway_of(&cluster.pod_subnet()).ok_or_else(|| {
        anyhow::anyhow!(
            "cannot tell the pod network's gateway from {}",
            cluster.pod_subnet()
        )
    })?;
    let mut config = ControllerConfig {
        // This node's agent runs in this process, not as a kdiag-agent pod.
        no_agent_grace: None,
        // As the shipped controller: the alert token from its Secret, made on first start.
        alert_token_secret: Some(kdiag_controller::ALERT_TOKEN_SECRET.into()),
        runner: kdiag_controller::probes::runner::RunnerConfig {
            report_url: format!("http://{gateway}:{}/probe-status", args.port),
            ..Default::default()
        },
        // The apiserver reaches this process's webhook at a URL on this host.
        webhook: Some(kdiag_controller::webhook::WebhookConfig {
            bind: SocketAddr::new(args.bind_address, kdiag_controller::webhook::DEFAULT_PORT),
            reach: kdiag_controller::webhook::ClientConfig::Url(format!(
                "https://127.0.0.1:{}{}",
                kdiag_controller::webhook::DEFAULT_PORT,
                kdiag_controller::webhook::PATH
            )),
            configuration: kdiag_controller::webhook::DEFAULT_CONFIGURATION.into(),
            secret: (ns.into(), kdiag_controller::webhook::DEFAULT_SECRET.into()),
            exempt_users: kdiag_controller::webhook::WebhookConfig::default_exempt_users(),
        }),
        ..Default::default()
    };
    controller::prepare(&controller_client, &mut config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (c_handle, c_driver) = controller::start(
        controller_client.clone(),
        config,
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
        deadline: Some(kdiag_agent::DEFAULT_DEADLINE),
        turn: kdiag_agent::DEFAULT_TURN,
        go_profile_dirs: Vec::new(),
    };
    let (a_handle, a_driver) = agent::start(
        agent_client.clone(),
        agent_config,
        Builtins::standard(),
        metrics.clone(),
        shutdown.clone(),
    );
    let (m, c_store, a_store, a_finished) = (
        metrics.clone(),
        c_handle.store.clone(),
        a_handle.store.clone(),
        a_handle.finished.clone(),
    );
    let state = ServerState {
        metrics: metrics.clone(),
        refresh: Arc::new(move || {
            for (phase, n) in count_by_phase(&c_store) {
                m.controller.abnormals.with_label_values(&[phase]).set(n);
            }
            let counts = count_with_finished(&a_store, &a_finished);
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
        ready: std::iter::once((
            "the controller's watches to sync".into(),
            c_handle.ready.clone(),
        ))
        .chain(a_handle.readiness())
        .collect(),
        routes: server::join(
            agent::server::routes(Some(ProcessorService {
                builtins: a_handle.builtins.clone(),
                authorizer: Arc::new(kdiag_runtime::auth::Authorizer::new(agent_client.clone())),
                client: agent_client,
                node_name: node.clone(),
                max_output_bytes: Limits::default().max_step_output_bytes,
                node: Arc::new(node_env),
                data_root,
            })),
            kdiag_controller::server::routes(
                Some(c_handle.probe_reports.clone()),
                Some(c_handle.alerts.clone()),
            ),
        ),
    };
    let bridge_state = state.clone();
    let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr}: {e} (choose another port with --port)")
        })?;
    let server_task = tokio::spawn(serving);
    // The same server on the bridge's address, for checker pods' reports. The bridge appears
    // with the first pod, so keep trying until it is there.
    let bridge_addr = SocketAddr::new(std::net::IpAddr::V4(gateway), args.port);
    let bridge_shutdown = shutdown.clone();
    let bridge_task = tokio::spawn(async move {
        loop {
            match server::serve(
                bridge_addr,
                bridge_state.clone(),
                bridge_shutdown.clone().cancelled_owned(),
            )
            .await
            {
                Ok(serving) => return serving.await,
                Err(_) if !bridge_shutdown.is_cancelled() => {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await
                }
                Err(_) => return,
            }
        }
    });
    println!(
        "\nkdiag local is running: controller and agent for node {node}, on a real single-node cluster.\n\n\
         In another terminal:\n\n  export KUBECONFIG={kubeconfig}\n  kubectl create -f examples/abnormal.yaml\n  kubectl get abnormals -w        # it reaches Succeeded\n  kubectl get abnormal demo-web -o yaml\n\n\
         Pods that fail in real ways, each with its Abnormal: examples/pods/\n\
         Metrics: curl http://{addr}/metrics\n\nStop with Ctrl-C.\n",
        kubeconfig = cluster.kubeconfig_path().display(),
    );
    tokio::join!(c_driver, a_driver);
    let _ = tokio::join!(server_task, bridge_task);
    Ok(())
}

/// How long the installed controller and agent get to become Ready.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

async fn run_in_cluster() -> Result<ExitCode, CommandError> {
    let shutdown = process::shutdown_on_signals();
    eprintln!(
        "kdiag local --in-cluster: starting a single-node Kubernetes cluster with kube-proxy, and building kdiag's image (make image)…"
    );
    let (cluster, image) = tokio::join!(
        Cluster::start_with(ClusterOptions {
            kube_proxy: true,
            ..Default::default()
        }),
        tokio::task::spawn_blocking(kdiag_testenv::kdiag_image)
    );
    let cluster = cluster.map_err(not_started)?;
    let result = install_and_wait(&cluster, image?, shutdown).await;
    stop(cluster, result).await
}

/// Imports the image, installs config/deploy through the test overlay, waits until both
/// workloads are Ready, and keeps them until Ctrl-C; then uninstalls with `kubectl delete -k`.
async fn install_and_wait(
    cluster: &Cluster,
    image: Result<kdiag_testenv::KdiagImage, kdiag_testenv::TestEnvError>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), CommandError> {
    let image = image.map_err(|e| anyhow::anyhow!("building kdiag's image: {e}"))?;
    let overlay = tokio::task::block_in_place(|| -> Result<_, kdiag_testenv::TestEnvError> {
        cluster.import_image_archive(&image.archive)?;
        let overlay = install::render_overlay(cluster, install::free_port()?)?;
        install::apply(cluster, &overlay, READY_TIMEOUT)?;
        Ok(overlay)
    })
    .map_err(|e| anyhow::anyhow!("installing kdiag: {e}"))?;
    let admin = cluster.client().await;
    apply_yaml(&admin, "examples/demo-pod.yaml", DEMO).await?;
    eprintln!(
        "kdiag local: installed {}; waiting for the controller and agent to be Ready…",
        image.name
    );
    let ready = tokio::task::block_in_place(|| install::wait_ready(cluster, READY_TIMEOUT));
    if let Err(e) = ready {
        let _ = tokio::task::block_in_place(|| install::uninstall(cluster, &overlay));
        return Err(anyhow::anyhow!("kdiag did not become Ready: {e}"));
    }
    println!(
        "\nkdiag is installed from its image {image} on a real single-node cluster, as `kubectl apply -k config/deploy` installs it\n(through {overlay}, which changes only the node's paths and ports).\n\nIn another terminal:\n\n  export KUBECONFIG={kubeconfig}\n  kubectl -n {ns} get pods -o wide\n  kubectl create -f examples/abnormal.yaml\n  kubectl get abnormals -w        # it reaches Succeeded\n  kubectl -n {ns} logs deploy/kdiag-controller\n\nStop with Ctrl-C (uninstalls with kubectl delete -k, then stops the cluster).\n",
        image = image.name,
        overlay = overlay.display(),
        kubeconfig = cluster.kubeconfig_path().display(),
        ns = install::NAMESPACE,
    );
    shutdown.cancelled().await;
    eprintln!("kdiag local: uninstalling (kubectl delete -k)…");
    tokio::task::block_in_place(|| install::uninstall(cluster, &overlay))
        .map_err(|e| anyhow::anyhow!("uninstalling kdiag: {e}"))?;
    Ok(())
}

/// The first address of a /24 such as 10.88.5.0/24: the bridge's own address.
fn gateway_of(subnet: &str) -> Option<std::net::Ipv4Addr> {
    let base: std::net::Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
    let o = base.octets();
    Some(std::net::Ipv4Addr::new(o[0], o[1], o[2], 1))
}

#[cfg(test)]
mod tests {
    use super::MANIFESTS;

    /// The manifests of config/deploy that `kdiag local` replaces with the same components
    /// running in its process: the controller Deployment (and its Service) and the agent
    /// DaemonSet.
    const IN_PROCESS: [&str; 2] = ["30-controller.yaml", "40-agent.yaml"];

    #[test]
    fn local_mode_applies_what_kubectl_apply_k_config_deploy_applies() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/deploy/Kustomization"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let kustomization: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let listed: Vec<&str> = kustomization["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        // The CRDs first in both; then the same manifests (their order here is the order they
        // are applied in, the namespace first): one added to config/deploy and not here fails.
        let mut local: Vec<&str> = vec!["../crd"];
        local.extend(MANIFESTS.iter().map(|(name, _)| *name));
        local.extend(IN_PROCESS);
        let mut sorted_listed = listed.clone();
        sorted_listed[1..].sort_unstable();
        local[1..].sort_unstable();
        assert_eq!(
            local, sorted_listed,
            "kdiag local (commands/local.rs MANIFESTS, or IN_PROCESS here) must apply what config/deploy/Kustomization lists"
        );
    }
}
