//! A managed cluster that is a real single-node cluster (kubelet, containerd, scheduler,
//! controller-manager): kdiag's controller, with its member link, and the node's agent run
//! against it, and the hub runs on a control plane of its own. Labelling the member's Cluster in
//! the hub assigns a Probe whose checker Job really runs on the kubelet and is OOM-killed; the
//! pod triage finds why on the node, and that root cause is read from the hub with
//! `kubectl diag probes -c`, never reaching into the member. A one-time run through the hub then
//! runs on the member's own probe runner, and a second member (a bare control plane) linked to
//! the same hub meanwhile is kept apart from the first.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kdiag_agent::{self as agent, AgentConfig};
use kdiag_api::{Cluster, Probe};
use kdiag_controller::{self as controller, ControllerConfig};
use kdiag_fleet::hub::HubConfig;
use kdiag_fleet::member::MemberConfig;
use kdiag_pipeline::Limits;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_testenv::{BUSYBOX_IMAGE, cluster};
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const FLEET_NAMESPACE: &str = "kdiag-fleet";
/// Long enough for the checker pod to be OOM-killed, recorded and triaged on the node.
const WAIT: Duration = Duration::from_secs(120);

/// A CA and the hub's certificate for 127.0.0.1, signed by it.
fn pki(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key)).unwrap();
    let paths = (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    paths
}

/// kdiag's controller (with `fleet` as its member link) and this node's agent, on a runtime of
/// their own, as config/deploy's ServiceAccounts.
fn start_member(c: &'static kdiag_testenv::Cluster, fleet: MemberConfig) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let controller_client = service_account_client(c, "kdiag-controller").await;
            let agent_client = service_account_client(c, "kdiag-agent").await;
            let metrics = Arc::new(Metrics::new());
            let shutdown = CancellationToken::new();
            let (c_handle, c_driver) = controller::start(
                controller_client,
                ControllerConfig {
                    fleet: Some(fleet),
                    ..Default::default()
                },
                Builtins::standard(),
                metrics.clone(),
                shutdown.clone(),
            );
            let ns = kdiag_api::SYSTEM_NAMESPACE;
            let config = AgentConfig {
                node_name: c.node_name().to_owned(),
                concurrency: 8,
                limits: Limits::default(),
                command_output_cap: 64 * 1024,
                policy_configmap: (ns.into(), "kdiag-policy".into()),
                data_root: c.run_dir().join("kdiag-agent"),
                public_url: "http://127.0.0.1:0".into(),
                node: kdiag_api::plugin::NodeEnvironment {
                    kubelet_root: c.kubelet_root_dir(),
                    cri_sockets: vec![c.cri_socket()],
                    apiserver: Some(c.control_plane().url().to_owned()),
                    ..Default::default()
                },
                deadline: Some(kdiag_agent::DEFAULT_DEADLINE),
                turn: kdiag_agent::DEFAULT_TURN,
                go_profile_dirs: Vec::new(),
            };
            let (a_handle, a_driver) = agent::start(
                agent_client,
                config,
                Builtins::standard(),
                metrics,
                shutdown,
            );
            tokio::spawn(c_driver);
            tokio::spawn(a_driver);
            let ready = |h: &Arc<std::sync::atomic::AtomicBool>| {
                h.load(std::sync::atomic::Ordering::Acquire)
            };
            while !(ready(&c_handle.ready) && ready(&a_handle.ready)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the member's controller and agent started within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_assigned_from_the_hub_runs_its_checker_job_on_the_real_member_node_and_its_root_cause_shows_at_the_hub()
 {
    init_logging();
    let started = Instant::now();
    // The hub: on a control plane of its own, as kdiag-hub's ServiceAccount.
    let hub_cp = installed().await;
    let out = hub_cp
        .kubectl()
        .args(["apply", "-k"])
        .arg(repo_root().join("config/deploy/hub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki(files.path());
    let mut config = HubConfig::new(([127, 0, 0, 1], 0).into(), cert, key);
    config.namespace = FLEET_NAMESPACE.into();
    config.offline_after = Duration::from_secs(10);
    let hub_client = hub_cp
        .client_with_token(
            &hub_cp
                .service_account_token(FLEET_NAMESPACE, "kdiag-hub")
                .await,
        )
        .await;
    let stop_hub = CancellationToken::new();
    let (addr, run): (SocketAddr, _) =
        kdiag_fleet::hub::start(hub_client, config, stop_hub.clone())
            .await
            .unwrap();
    let hub = tokio::spawn(run);

    // The member: the real single-node cluster, kdiag installed with config/deploy.
    let member = cluster().await;
    member.apply_crds(&kdiag_api::crds::all()).await.unwrap();
    kubectl_apply(member, "config/deploy/00-namespace.yaml");
    kubectl_apply(member, "config/deploy");
    remove_webhook(member.kubectl());
    // The runner reports a checker pod that failed as UNKNOWN ("pod running failed"); this
    // source turns that into an Abnormal on the pod, which the pod triage explains.
    let source = json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": "fleet-failed-checker-pods", "namespace": kdiag_api::SYSTEM_NAMESPACE},
        "spec": {"sourceTemplate": {"type": "ProbeStatus",
                 "probeStatusTemplate": {"match": {"statuses": ["UNKNOWN"]}}}}
    });
    let source_file = files.path().join("source.json");
    std::fs::write(&source_file, serde_json::to_vec(&source).unwrap()).unwrap();
    let out = member
        .kubectl()
        .arg("apply")
        .arg("-f")
        .arg(&source_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let probe_ns = member.create_namespace("fleet-probes").await;

    let cluster_name = "single-node";
    let token_file = add_cluster(hub_cp, cluster_name, files.path()).await;
    let hub_url = format!("wss://127.0.0.1:{}", addr.port());
    let mut fleet = MemberConfig::new(&hub_url, cluster_name, token_file, ca.clone());
    fleet.heartbeat = Duration::from_secs(1);
    fleet.retry_min = Duration::from_millis(200);
    fleet.retry_max = Duration::from_secs(2);
    fleet.accept_probes = true;
    fleet.probe_namespace = probe_ns.clone();
    start_member(member, fleet);

    let clusters: Api<Cluster> = Api::namespaced(hub_cp.client().await, FLEET_NAMESPACE);
    let deadline = Instant::now() + WAIT;
    loop {
        let c = clusters.get_opt(cluster_name).await.unwrap();
        if c.as_ref()
            .and_then(|c| c.status.as_ref())
            .is_some_and(|s| s.state == "Connected" && s.node_count == Some(1))
        {
            break;
        }
        assert!(Instant::now() < deadline, "never connected: {c:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A second member linked to the same hub at the same time: a bare control plane (no
    // kubelet), its link as its controller's ServiceAccount. The hub keeps the two apart.
    let bare_cp = kdiag_testenv::ControlPlane::start()
        .await
        .expect("the second member's control plane");
    bare_cp.apply_crds(&kdiag_api::crds::all()).await.unwrap();
    kubectl_apply(&bare_cp, "config/deploy/00-namespace.yaml");
    kubectl_apply(&bare_cp, "config/deploy");
    remove_webhook(bare_cp.kubectl());
    let bare_probe_ns = bare_cp.create_namespace("fleet-probes").await;
    let mut bare = MemberConfig::new(
        &hub_url,
        "bare",
        add_cluster(hub_cp, "bare", files.path()).await,
        ca.clone(),
    );
    bare.heartbeat = Duration::from_secs(1);
    bare.accept_probes = true;
    bare.probe_namespace = bare_probe_ns.clone();
    let stop_bare = CancellationToken::new();
    tokio::spawn(kdiag_fleet::member::run(
        service_account_client(&bare_cp, "kdiag-controller").await,
        bare,
        stop_bare.clone(),
    ));

    // In the hub: a Probe whose checker buffers 256 MiB under a 32 Mi limit, assigned by label.
    let probe: Probe = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": "memory-hungry", "namespace": FLEET_NAMESPACE},
        "spec": {"template": {
            "containers": [{"name": "checker", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", "head -c 268435456 /dev/zero | tail > /dev/null"],
                "resources": {"requests": {"memory": "16Mi"}, "limits": {"memory": "32Mi"}}}],
            "terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false}}
    }))
    .unwrap();
    Api::<Probe>::namespaced(hub_cp.client().await, FLEET_NAMESPACE)
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    let out = hub_cp
        .kubectl()
        .args(["-n", FLEET_NAMESPACE, "label", "cluster", cluster_name])
        .arg("probe/memory-hungry=true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // From the hub only: the checker's result, and then the node's root cause next to it.
    let deadline = Instant::now() + WAIT;
    let out = loop {
        let (code, out, err) =
            kubectl_diag(hub_cp, &["probes", "-c", cluster_name, "-o", "wide"]).await;
        assert_eq!(code, 0, "{err}");
        // The pod triage's root cause names the limit; the runner's message does not.
        if out.contains("was OOM-killed") && out.contains("32Mi") && out.contains("Succeeded") {
            break out;
        }
        if Instant::now() >= deadline {
            let jobs = member_jobs(member, &probe_ns);
            panic!("the root cause never showed at the hub within {WAIT:?}:\n{out}\njobs: {jobs}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        out.contains(&format!("{probe_ns}/memory-hungry")),
        "named as in the member: {out}"
    );
    assert!(out.contains("UNKNOWN"), "{out}");
    eprintln!(
        "labelled → root cause at the hub in {:?} (from the test's start):\n{out}",
        started.elapsed()
    );
    // The Job really ran on the member's kubelet.
    let jobs = member_jobs(member, &probe_ns);
    assert!(jobs.contains("memory-hungry"), "{jobs}");
    // The Abnormal behind it is among the Cluster's diagnoses, with the same root cause.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = kubectl_diag(hub_cp, &["clusters", "show", cluster_name]).await;
        assert_eq!(code, 0, "{err}");
        if out.contains(&format!("{probe_ns}/probe-memory-hungry")) && out.contains("OOM-killed") {
            break;
        }
        assert!(Instant::now() < deadline, "no diagnosis at the hub: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A one-time run of that probe through the hub (`probe once -p`), run by the member's real
    // probe runner: a new checker Job on the kubelet, OOM-killed again, so its checker is
    // UNKNOWN (exit code 6), and the run is in the cluster's history.
    let (code, out, err) = kubectl_diag(
        hub_cp,
        &[
            "probe",
            "once",
            "-c",
            cluster_name,
            "-p",
            "memory-hungry",
            "--wait",
            "--timeout",
            "150s",
        ],
    )
    .await;
    assert_eq!(
        code, 6,
        "the one-time run's checker pod was OOM-killed: {out}{err}"
    );
    let id = out.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        out.contains("memory-hungry") && out.contains("UNKNOWN"),
        "the run's own result: {out}"
    );
    let runs: Api<kdiag_api::ProbeRun> = Api::namespaced(member.client().await, &probe_ns);
    let once = runs
        .list(&kube::api::ListParams::default().labels(kdiag_fleet::member::ONCE_LABEL))
        .await
        .unwrap()
        .items;
    assert_eq!(
        once.len(),
        1,
        "one one-time ProbeRun in the member: {once:?}"
    );
    let status = once[0].status.clone().unwrap_or_default();
    assert!(
        status.phase == kdiag_api::ProbeRunPhase::Finished && !status.jobs.is_empty(),
        "the member's runner ran it as a Job: {status:?}"
    );
    let (code, out, err) =
        kubectl_diag(hub_cp, &["probe", "history", "-c", cluster_name, "-l"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id), "the run {id} is listed: {out}");

    // Both members are connected to the one hub, each with its own view: the probe assigned to
    // the single-node cluster by its label never went to the bare one.
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, out, err) = kubectl_diag(hub_cp, &["clusters"]).await;
        assert_eq!(code, 0, "{err}");
        let connected = |name: &str| {
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name) && l.contains("Connected"))
        };
        if connected(cluster_name) && connected("bare") {
            break;
        }
        assert!(Instant::now() < deadline, "both members connected: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bare_probes = Api::<Probe>::namespaced(bare_cp.client().await, &bare_probe_ns)
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        bare_probes.items.is_empty(),
        "no probe assigned to the bare member: {:?}",
        bare_probes.items
    );
    stop_bare.cancel();

    stop_hub.cancel();
    let _ = hub.await;
}

/// `kubectl diag clusters add NAME` in the hub: the member's credential, written to a file.
async fn add_cluster(
    hub: &kdiag_testenv::ControlPlane,
    name: &str,
    dir: &std::path::Path,
) -> PathBuf {
    let (code, out, err) = kubectl_diag(hub, &["clusters", "add", name]).await;
    assert_eq!(code, 0, "clusters add {name}: {out}{err}");
    save_printed_credential(&out, name, dir)
}

/// The member's Jobs in `namespace`, with the node their pods ran on, for messages.
fn member_jobs(member: &kdiag_testenv::Cluster, namespace: &str) -> String {
    let out = member
        .kubectl()
        .args(["-n", namespace, "get", "jobs,pods", "-o", "wide"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
