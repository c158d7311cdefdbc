//! The fleet on two real control planes: a hub (`kdiag_fleet::hub`, with config/deploy/hub's
//! RBAC) on this binary's shared control plane, and member links from a second control plane
//! (kdiag's controller with its own ServiceAccount, or the link alone). TLS is real: the hub
//! serves a certificate signed by a CA made here, and members trust only the CA they are given.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kdiag_api::{Cluster, ProbeStatus};
use kdiag_fleet::hub::HubConfig;
use kdiag_fleet::member::MemberConfig;
use kdiag_testenv::ControlPlane;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

const KDIAG: &str = env!("CARGO_BIN_EXE_kdiag");
const FLEET_NAMESPACE: &str = "kdiag-fleet";
/// Short, so a stopped member shows offline within seconds.
const OFFLINE_AFTER: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

/// The hub's control plane: kdiag installed, plus config/deploy/hub.
async fn hub_cp() -> &'static ControlPlane {
    static HUB: OnceCell<()> = OnceCell::const_new();
    let cp = installed().await;
    HUB.get_or_init(|| async {
        let out = cp
            .kubectl()
            .args(["apply", "-k"])
            .arg(repo_root().join("config/deploy/hub"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl apply -k config/deploy/hub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
    cp
}

/// The member's control plane: a second one, with kdiag's CRDs and config/deploy (RBAC).
async fn member_cp() -> &'static ControlPlane {
    static MEMBER: OnceCell<ControlPlane> = OnceCell::const_new();
    MEMBER
        .get_or_init(|| async {
            init_logging();
            let cp = ControlPlane::start().await.expect("a second control plane");
            cp.apply_crds(&kdiag_api::crds::all()).await.unwrap();
            kubectl_apply(&cp, "config/deploy/00-namespace.yaml");
            kubectl_apply(&cp, "config/deploy");
            remove_webhook(cp.kubectl());
            cp
        })
        .await
}

/// A CA, the hub's certificate for 127.0.0.1 signed by it, and an unrelated CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn get() -> &'static Pki {
        static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
        PKI.get_or_init(|| {
            use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
            let dir = tempfile::tempdir().unwrap();
            let ca = |name: &str| {
                let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.distinguished_name
                    .push(rcgen::DnType::CommonName, name.to_owned());
                let key = KeyPair::generate().unwrap();
                let cert = p.self_signed(&key).unwrap();
                (p, key, cert)
            };
            let (ca_params, ca_key, ca_cert) = ca("fleet test CA");
            let leaf =
                CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
            let leaf_key = KeyPair::generate().unwrap();
            let leaf_cert = leaf
                .signed_by(&leaf_key, &Issuer::new(ca_params, ca_key))
                .unwrap();
            let (_, _, other_ca) = ca("some other CA");
            std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
            std::fs::write(dir.path().join("tls.crt"), leaf_cert.pem()).unwrap();
            std::fs::write(dir.path().join("tls.key"), leaf_key.serialize_pem()).unwrap();
            std::fs::write(dir.path().join("other-ca.crt"), other_ca.pem()).unwrap();
            Pki { dir }
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A cluster name no other test uses.
fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{:x}{}",
        nanos & 0xfffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

struct TestHub {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestHub {
    /// A hub on `port` (0: any) running as kdiag-hub's ServiceAccount.
    async fn start(port: u16, shared_secret_key: Option<&str>) -> TestHub {
        let pki = Pki::get();
        Self::start_serving(
            port,
            shared_secret_key,
            pki.path("tls.crt"),
            pki.path("tls.key"),
        )
        .await
    }

    /// … serving the certificate and key in these files.
    async fn start_serving(
        port: u16,
        shared_secret_key: Option<&str>,
        cert: PathBuf,
        key: PathBuf,
    ) -> TestHub {
        let cp = hub_cp().await;
        let token = cp.service_account_token(FLEET_NAMESPACE, "kdiag-hub").await;
        let client = cp.client_with_token(&token).await;
        let mut config = HubConfig::new(([127, 0, 0, 1], port).into(), cert, key);
        config.namespace = FLEET_NAMESPACE.into();
        config.offline_after = OFFLINE_AFTER;
        config.shared_secret_key = shared_secret_key.map(str::to_owned);
        let stop = CancellationToken::new();
        let (addr, run) = kdiag_fleet::hub::start(client, config, stop.clone())
            .await
            .unwrap();
        TestHub {
            addr,
            stop,
            task: tokio::spawn(run),
        }
    }

    fn url(&self) -> String {
        format!("wss://127.0.0.1:{}", self.addr.port())
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `kdiag diag <args>` against the hub's control plane.
fn kdiag_diag(cp: &ControlPlane, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(KDIAG)
        .arg("diag")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A credential for `cluster` made with `kubectl diag clusters add`, written to a file as the
/// member's controller reads it.
fn add_credential(cp: &ControlPlane, cluster: &str, dir: &Path) -> PathBuf {
    let (ok, out, err) = kdiag_diag(cp, &["clusters", "add", cluster]);
    assert!(ok, "clusters add: {out}{err}");
    save_printed_credential(&out, cluster, dir)
}

fn member_config(hub: &TestHub, cluster: &str, token_file: PathBuf, ca: &str) -> MemberConfig {
    let mut c = MemberConfig::new(hub.url(), cluster, token_file, Pki::get().path(ca));
    c.heartbeat = Duration::from_millis(500);
    c.retry_min = Duration::from_millis(100);
    c.retry_max = Duration::from_secs(1);
    c
}

/// The member link alone, as the member's controller ServiceAccount.
async fn start_link(config: MemberConfig) -> CancellationToken {
    let client = service_account_client(member_cp().await, "kdiag-controller").await;
    let stop = CancellationToken::new();
    tokio::spawn(kdiag_fleet::member::run(client, config, stop.clone()));
    stop
}

async fn hub_admin() -> Client {
    hub_cp().await.client().await
}

/// Waits until the hub's Cluster `name` exists and `pred` holds.
async fn wait_cluster(name: &str, pred: impl Fn(&Cluster) -> bool) -> Cluster {
    let api: Api<Cluster> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let deadline = Instant::now() + WAIT;
    loop {
        let c = api.get_opt(name).await.ok().flatten();
        if let Some(c) = &c
            && pred(c)
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "Cluster {name} did not get there within {WAIT:?}: {}",
            serde_json::to_string_pretty(&c).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the hub stores the member's ProbeStatus `namespace/name` of `cluster`.
async fn wait_stored(cluster: &str, namespace: &str, name: &str) -> ProbeStatus {
    let api: Api<ProbeStatus> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let stored = kdiag_fleet::state::stored_name(cluster, namespace, name);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(p)) = api.get_opt(&stored).await {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the hub did not store {cluster}'s {namespace}/{name} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored_exists(cluster: &str, namespace: &str, name: &str) -> bool {
    let api: Api<ProbeStatus> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    api.get_opt(&kdiag_fleet::state::stored_name(cluster, namespace, name))
        .await
        .unwrap()
        .is_some()
}

/// A failed checker with the root cause kdiag's write-back puts next to it, in the member.
async fn write_result(namespace: &str, name: &str, root_cause: &str) {
    let client = member_cp().await.client().await;
    let api: Api<ProbeStatus> = Api::namespaced(client, namespace);
    let p: ProbeStatus = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"checkers": [
            {"name": "coredns-pods", "status": "ERROR", "message": "2 of 2 coredns pods are CrashLoopBackOff",
             "lastRun": "2026-12-04T10:00:00Z",
             "diagnosis": {"abnormal": format!("{namespace}/coredns-x"), "phase": "Succeeded", "rootCause": root_cause}},
            {"name": "nodes", "status": "PASS", "lastRun": "2026-12-04T10:00:00Z"}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &p).await.unwrap();
    let status = json!({"status": {"status": "ERROR", "message": "2 of 2 coredns pods are CrashLoopBackOff"}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_controller_links_out_and_the_hub_shows_its_cluster_and_root_causes() {
    let hub = TestHub::start(0, None).await;
    let member = member_cp().await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("prod");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let admin = member.client().await;
    ensure_node(&admin, "fleet-node-a").await;
    ensure_node(&admin, "fleet-node-b").await;

    // kdiag's controller in the member cluster, with its own ServiceAccount, links out.
    let stop = CancellationToken::new();
    let client = service_account_client(member, "kdiag-controller").await;
    let (_handle, driver) = kdiag_controller::start(
        client,
        kdiag_controller::ControllerConfig {
            fleet: Some(member_config(&hub, &cluster, token_file, "ca.crt")),
            ..Default::default()
        },
        kdiag_runtime::builtin::Builtins::standard(),
        Arc::new(kdiag_runtime::metrics::Metrics::new()),
        stop.clone(),
    );
    let controller = tokio::spawn(driver);

    let version = admin.apiserver_version().await.unwrap().git_version;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(admin.clone())
        .list_metadata(&Default::default())
        .await
        .unwrap()
        .items
        .len() as i64;
    let c = wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected") && !c.spec.k8s_version.is_empty()
    })
    .await;
    let s = c.status.unwrap();
    assert_eq!(c.spec.k8s_version, version);
    assert_eq!(s.node_count, Some(nodes));
    assert_eq!(s.kdiag_version, env!("CARGO_PKG_VERSION"));
    assert!(s.last_heartbeat_time.is_some() && !s.heart_beat_time_stamp.is_empty());

    // A result with its root cause, written in the member, is stored in the hub.
    let ns = member.create_namespace("fleet-probes").await;
    let root_cause = "coredns cannot read its ConfigMap: forbidden";
    write_result(&ns, "k8s", root_cause).await;
    let stored = wait_stored(&cluster, &ns, "k8s").await;
    let labels = stored.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(kdiag_fleet::credential::CLUSTER_LABEL),
        Some(&cluster)
    );
    let failing = &stored.spec.checkers[0];
    assert_eq!(
        failing.diagnosis.as_ref().map(|d| d.root_cause.as_str()),
        Some(root_cause)
    );
    let stored_status = wait_for_stored_status(&cluster, &ns, "k8s").await;
    assert_eq!(stored_status.as_deref(), Some("ERROR"));
    // The Cluster's summary counts it: KubeProber's total/error.
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| {
            let (total, errors) = s.checkers.split_once('/').unwrap_or(("0", "0"));
            total.parse::<u32>().unwrap_or(0) >= 2 && errors.parse::<u32>().unwrap_or(0) >= 1
        })
    })
    .await;

    // The operator's view, from the hub's cluster only.
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["probes", "-c", &cluster]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("{ns}/k8s")), "{out}");
    assert!(
        out.contains("coredns-pods") && out.contains(root_cause),
        "{out}"
    );
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["clusters"]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&cluster))
        .unwrap_or_else(|| panic!("{cluster} not listed: {out}"));
    assert!(
        line.contains("Connected") && line.contains(&version),
        "{line}"
    );

    stop.cancel();
    let _ = controller.await;
    hub.stop().await;
}

async fn wait_for_stored_status(cluster: &str, namespace: &str, name: &str) -> Option<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = wait_stored(cluster, namespace, name).await;
        if let Some(s) = p.status.and_then(|s| s.status) {
            return Some(s.as_str().to_owned());
        }
        assert!(Instant::now() < deadline, "no status stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_goes_offline_and_what_it_missed_arrives_after_it_reconnects() {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("edge");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let config = member_config(&hub, &cluster, token_file, "ca.crt");
    let link = start_link(config.clone()).await;
    let first = wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;

    link.cancel();
    let offline = wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Offline")
    })
    .await;
    let s = offline.status.unwrap();
    assert!(s.message.contains("no heartbeat"), "{}", s.message);
    assert!(s.state_since > first.status.unwrap().state_since);

    // Written while the member's link is down.
    let ns = member_cp().await.create_namespace("fleet-missed").await;
    write_result(&ns, "while-offline", "etcd member 2 is down").await;
    assert!(!stored_exists(&cluster, &ns, "while-offline").await);

    let link = start_link(config).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;
    let stored = wait_stored(&cluster, &ns, "while-offline").await;
    assert_eq!(
        stored.spec.checkers[0]
            .diagnosis
            .as_ref()
            .map(|d| d.root_cause.as_str()),
        Some("etcd member 2 is down")
    );
    link.cancel();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_queued_while_the_hub_is_down_arrive_when_it_is_back() {
    let hub = TestHub::start(0, None).await;
    let port = hub.addr.port();
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("queue");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let link = start_link(member_config(&hub, &cluster, token_file, "ca.crt")).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;
    hub.stop().await;

    // The member runs on; its result waits in its queue.
    let ns = member_cp().await.create_namespace("fleet-queued").await;
    write_result(
        &ns,
        "queued",
        "kubelet on node-b cannot reach the apiserver",
    )
    .await;
    assert!(!stored_exists(&cluster, &ns, "queued").await);

    let hub = TestHub::start(port, None).await;
    let stored = wait_stored(&cluster, &ns, "queued").await;
    assert_eq!(stored.spec.checkers.len(), 2);
    link.cancel();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_and_its_live_link_is_closed() {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("revoked");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let config = member_config(&hub, &cluster, token_file, "ca.crt");
    let link = start_link(config.clone()).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;

    // Revoked on its Cluster: the live link ends at its next heartbeat.
    let clusters: Api<Cluster> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let patch =
        json!({"metadata": {"annotations": {kdiag_fleet::credential::REVOKED_ANNOTATION: "true"}}});
    clusters
        .patch(&cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let c = wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Offline")
    })
    .await;
    assert!(c.status.unwrap().message.contains("revoked"));
    match kdiag_fleet::member::connect_once(&config).await {
        Err(kdiag_fleet::Error::Refused { status: 403, .. }) => {}
        other => panic!("a revoked cluster got {other:?}"),
    }

    // Revoked by deleting its credential (`kubectl diag clusters revoke`): unknown from then on.
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["clusters", "revoke", &cluster]);
    assert!(ok, "{out}{err}");
    let patch =
        json!({"metadata": {"annotations": {kdiag_fleet::credential::REVOKED_ANNOTATION: null}}});
    clusters
        .patch(&cluster, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match kdiag_fleet::member::connect_once(&config).await {
            Err(kdiag_fleet::Error::Refused { status: 401, .. }) => break,
            // The hub's cache may not have seen the annotation go yet.
            Err(kdiag_fleet::Error::Refused { status: 403, .. }) => {}
            other => panic!("a cluster without a credential got {other:?}"),
        }
        assert!(Instant::now() < deadline, "still 403");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.cancel();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_given_the_wrong_ca_never_connects() {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let wrong = unique("wrong-ca");
    let wrong_token = add_credential(hub_cp().await, &wrong, files.path());
    let wrong_config = member_config(&hub, &wrong, wrong_token, "other-ca.crt");
    match kdiag_fleet::member::connect_once(&wrong_config).await {
        Err(kdiag_fleet::Error::HubCertificate { reason, .. }) => {
            assert!(reason.contains("certificate"), "{reason}")
        }
        other => panic!("a member with the wrong CA got {other:?}"),
    }
    // Its link keeps trying (and refusing) while a member with the right CA links up.
    let wrong_link = start_link(wrong_config).await;
    let right = unique("right-ca");
    let right_token = add_credential(hub_cp().await, &right, files.path());
    let right_link = start_link(member_config(&hub, &right, right_token, "ca.crt")).await;
    wait_cluster(&right, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;
    let clusters: Api<Cluster> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    assert!(clusters.get_opt(&wrong).await.unwrap().is_none());
    wrong_link.cancel();
    right_link.cancel();
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeprobers_shared_secret_key_is_accepted_only_by_a_hub_that_opted_in() {
    let files = tempfile::tempdir().unwrap();
    let key_file = files.path().join("secret-key");
    std::fs::write(&key_file, "kubeprober-shared-key\n").unwrap();
    let cluster = unique("legacy");

    let strict = TestHub::start(0, None).await;
    let config = member_config(&strict, &cluster, key_file.clone(), "ca.crt");
    match kdiag_fleet::member::connect_once(&config).await {
        Err(kdiag_fleet::Error::Refused { status: 401, .. }) => {}
        other => panic!("the shared key without the opt-in got {other:?}"),
    }
    strict.stop().await;

    let migrating = TestHub::start(0, Some("kubeprober-shared-key")).await;
    let config = member_config(&migrating, &cluster, key_file, "ca.crt");
    kdiag_fleet::member::connect_once(&config).await.unwrap();
    migrating.stop().await;
    // Not left behind for other tests' sweepers to report on.
    let clusters: Api<Cluster> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let _ = clusters.delete(&cluster, &DeleteParams::default()).await;
}

/// Waits until the member's Probe `namespace/name` exists (or, with `present` false, is gone).
async fn wait_member_probe(namespace: &str, name: &str, present: bool) -> Option<kdiag_api::Probe> {
    let api: Api<kdiag_api::Probe> = Api::namespaced(member_cp().await.client().await, namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let p = api.get_opt(name).await.ok().flatten();
        if p.is_some() == present {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "Probe {namespace}/{name} in the member: present={} within {WAIT:?}, wanted {present}",
            p.is_some()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelling_a_cluster_probe_slash_name_assigns_that_probe_it_runs_once_on_demand_and_removing_the_label_removes_it()
 {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("assigned");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    // The Probe, once, in the hub's fleet namespace (KubeProber's template probe).
    let probe_name = unique("dns");
    let probes: Api<kdiag_api::Probe> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let probe: kdiag_api::Probe = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": probe_name},
        "spec": {"policy": {"runInterval": 5},
                 "checks": [{"name": "resolves", "dns": {"names": ["kubernetes.default.svc"]}}]}
    }))
    .unwrap();
    probes.create(&PostParams::default(), &probe).await.unwrap();

    let member_ns = member_cp().await.create_namespace("fleet-assigned").await;
    let mut config = member_config(&hub, &cluster, token_file, "ca.crt");
    config.accept_probes = true;
    config.probe_namespace = member_ns.clone();
    let link = start_link(config).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;

    // KubeProber's rule: `kubectl label cluster NAME probe/<probe>=true`.
    let out = hub_cp()
        .await
        .kubectl()
        .args(["-n", FLEET_NAMESPACE, "label", "cluster", &cluster])
        .arg(format!("probe/{probe_name}=true"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = wait_member_probe(&member_ns, &probe_name, true)
        .await
        .unwrap();
    assert_eq!(created.spec, probe.spec);
    // KubeProber's attachedProbes names it.
    wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.attached_probes == [probe_name.clone()])
    })
    .await;
    assert_eq!(
        created
            .metadata
            .labels
            .unwrap_or_default()
            .get(kdiag_fleet::member::MANAGED_LABEL)
            .map(String::as_str),
        Some("true")
    );

    // A change of the hub's Probe is carried over.
    let patch = json!({"spec": {"policy": {"runInterval": 10}}});
    probes
        .patch(&probe_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let member_probes: Api<kdiag_api::Probe> =
        Api::namespaced(member_cp().await.client().await, &member_ns);
    let deadline = Instant::now() + WAIT;
    while member_probes
        .get(&probe_name)
        .await
        .unwrap()
        .spec
        .policy
        .run_interval
        != Some(10)
    {
        assert!(
            Instant::now() < deadline,
            "the new runInterval never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `kubectl diag probe once -c`: a one-time run, through the hub, in the member.
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["probe", "once", "-c", &cluster]);
    assert!(ok, "{out}{err}");
    let id = out.lines().next().unwrap_or_default().trim().to_owned();
    let runs: Api<kdiag_api::ProbeRun> =
        Api::namespaced(member_cp().await.client().await, &member_ns);
    let selector = format!("{}={id}", kdiag_fleet::member::ONCE_LABEL);
    let deadline = Instant::now() + WAIT;
    let run = loop {
        let list = runs
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .unwrap();
        if let Some(run) = list.items.into_iter().next() {
            break run;
        }
        assert!(
            Instant::now() < deadline,
            "no ProbeRun for one-time run {id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(run.spec.probe, probe_name);
    wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.once_probe_list.iter().any(|i| i.id == id))
    })
    .await;
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["probe", "history", "-c", &cluster]);
    assert!(ok && out.contains(&id), "{out}{err}");

    // The label goes: the Probe goes.
    let out = hub_cp()
        .await
        .kubectl()
        .args(["-n", FLEET_NAMESPACE, "label", "cluster", &cluster])
        .arg(format!("probe/{probe_name}-"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_member_probe(&member_ns, &probe_name, false).await;
    wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.attached_probes.is_empty())
    })
    .await;

    link.cancel();
    hub.stop().await;
    let _ = probes.delete(&probe_name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_once_wait_returns_when_the_member_reports_the_run_finished_and_history_shows_that_runs_own_results_and_root_causes()
 {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("once");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let probe_name = unique("coredns");
    let probes: Api<kdiag_api::Probe> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let probe: kdiag_api::Probe = serde_json::from_value(json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": probe_name},
        "spec": {"policy": {"runInterval": 60},
                 "checks": [{"name": "resolves", "dns": {"names": ["kubernetes.default.svc"]}}]}
    }))
    .unwrap();
    probes.create(&PostParams::default(), &probe).await.unwrap();
    let member_ns = member_cp().await.create_namespace("fleet-once").await;
    let mut config = member_config(&hub, &cluster, token_file, "ca.crt");
    config.accept_probes = true;
    config.probe_namespace = member_ns.clone();
    let link = start_link(config).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
    })
    .await;
    let out = hub_cp()
        .await
        .kubectl()
        .args(["-n", FLEET_NAMESPACE, "label", "cluster", &cluster])
        .arg(format!("probe/{probe_name}=true"))
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_member_probe(&member_ns, &probe_name, true).await;
    // The probe's latest result in the member, with kdiag's root cause, and at the hub.
    write_result(
        &member_ns,
        &probe_name,
        "coredns cannot reach the upstream resolver",
    )
    .await;
    wait_stored(&cluster, &member_ns, &probe_name).await;

    // `probe once --wait` blocks until the member reports the run's ProbeRuns ended.
    let cp = hub_cp().await;
    let waiting = {
        let cluster = cluster.clone();
        std::thread::spawn(move || {
            std::process::Command::new(KDIAG)
                .arg("diag")
                .arg("--kubeconfig")
                .arg(cp.kubeconfig_path())
                .args([
                    "probe",
                    "once",
                    "-c",
                    &cluster,
                    "--wait",
                    "--timeout",
                    "60s",
                ])
                .output()
                .unwrap()
        })
    };
    // No probe runner in this member: the test ends the one-time run's ProbeRun itself.
    let runs: Api<kdiag_api::ProbeRun> =
        Api::namespaced(member_cp().await.client().await, &member_ns);
    let deadline = Instant::now() + WAIT;
    let run = loop {
        let list = runs
            .list(&kube::api::ListParams::default().labels(kdiag_fleet::member::ONCE_LABEL))
            .await
            .unwrap();
        if let Some(run) = list.items.into_iter().next() {
            break run;
        }
        assert!(Instant::now() < deadline, "no one-time ProbeRun");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !waiting.is_finished(),
        "--wait returned before the run ended"
    );
    let finished_at = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    // The run's own checker, still being diagnosed when it ends; the Probe's latest result at
    // the hub (coredns-pods, written above) is another one.
    let checker = |diagnosis: serde_json::Value| {
        json!([{"name": "resolves", "status": "ERROR", "message": "no answer from 10.96.0.10",
                "lastRun": finished_at.to_string(), "diagnosis": diagnosis}])
    };
    let status = json!({"status": {"phase": "Finished", "result": "ERROR",
                                   "finishedAt": finished_at.to_string(),
                                   "checkers": checker(json!({"abnormal": format!("{member_ns}/resolves-x"), "phase": "Diagnosing"}))}});
    runs.patch_status(
        run.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();

    let out = waiting.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a checker ERROR: {stdout}{stderr}"
    );
    let id = stdout.lines().next().unwrap_or_default().trim().to_owned();
    assert!(
        stdout.contains(&format!("finished: {finished_at}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("resolves") && stdout.contains("no answer from 10.96.0.10"),
        "this run's own result: {stdout}"
    );
    assert!(
        !stdout.contains("coredns-pods"),
        "not the Probe's latest result: {stdout}"
    );
    // KubeProber's finishTime, and the Probes it ran (all assigned: the one).
    let c = wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.once_probe_list.iter().any(|i| i.id == id))
    })
    .await;
    let item = c
        .status
        .unwrap()
        .once_probe_list
        .into_iter()
        .find(|i| i.id == id)
        .unwrap();
    assert_eq!(item.finish_time, finished_at.to_string());
    assert_eq!(item.probes, std::slice::from_ref(&probe_name));

    // kdiag writes the root cause into the run after it ended: it comes up and replaces what
    // the run said, and the Probe's later results do not.
    let status = json!({"status": {"checkers": checker(json!({
        "abnormal": format!("{member_ns}/resolves-x"), "phase": "Succeeded",
        "rootCause": "kube-dns has no ready endpoints"}))}});
    runs.patch_status(
        run.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (ok, out, err) = kdiag_diag(cp, &["probe", "history", "-c", &cluster, "-i", &id]);
        assert!(ok, "{out}{err}");
        if out.contains("kube-dns has no ready endpoints") {
            assert!(
                out.contains("resolves") && !out.contains("coredns-pods"),
                "{out}"
            );
            assert!(!out.contains("upstream resolver"), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run's root cause never reached the hub: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, out, err) = kdiag_diag(cp, &["probe", "history", "-c", &cluster, "-l"]);
    assert!(ok && out.contains(&finished_at.to_string()), "{out}{err}");
    let (ok, _, err) = kdiag_diag(
        cp,
        &["probe", "history", "-c", &cluster, "-i", "no-such-run"],
    );
    assert!(!ok && err.contains("no one-time run no-such-run"), "{err}");

    link.cancel();
    hub.stop().await;
    let _ = probes.delete(&probe_name, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_deleted_while_the_member_was_not_running_is_removed_at_the_hub_on_its_next_link()
{
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("resync");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let ns = member_cp().await.create_namespace("fleet-resync").await;
    write_result(&ns, "kept", "disk pressure on node-1").await;
    write_result(&ns, "gone", "a Probe removed while the controller was down").await;
    let config = member_config(&hub, &cluster, token_file, "ca.crt");
    let link = start_link(config.clone()).await;
    wait_stored(&cluster, &ns, "kept").await;
    wait_stored(&cluster, &ns, "gone").await;

    // The member's controller stops (its watch too): this deletion is never queued.
    link.cancel();
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Offline")
    })
    .await;
    let member: Api<ProbeStatus> = Api::namespaced(member_cp().await.client().await, &ns);
    member
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();

    let link = start_link(config).await;
    let deadline = Instant::now() + WAIT;
    while stored_exists(&cluster, &ns, "gone").await {
        assert!(
            Instant::now() < deadline,
            "the hub still stores a result the member no longer has"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stored_exists(&cluster, &ns, "kept").await);
    link.cancel();
    hub.stop().await;
}

/// An Abnormal in the member, with the status its agent would write (no agent runs here).
async fn write_abnormal(namespace: &str, name: &str, status: serde_json::Value) {
    let client = member_cp().await.client().await;
    let api: Api<kdiag_api::Abnormal> = Api::namespaced(client, namespace);
    let a: kdiag_api::Abnormal = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"source": "Custom", "nodeName": "fleet-node-a"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &a).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_abnormal_of_a_member_flows_up_and_its_cluster_shows_open_diagnoses_and_root_causes() {
    let hub = TestHub::start(0, None).await;
    let files = tempfile::tempdir().unwrap();
    let cluster = unique("diag");
    let token_file = add_credential(hub_cp().await, &cluster, files.path());
    let ns = member_cp().await.create_namespace("fleet-abnormals").await;
    let now = jiff::Timestamp::now().round(jiff::Unit::Second).unwrap();
    let at = now.to_string();
    write_abnormal(
        &ns,
        "oom-web",
        json!({"phase": "Succeeded", "identifiable": true,
               "conditions": [{"type": "Identified", "status": "True", "lastTransitionTime": at}],
               "rootCause": {"summary": "web-0 is OOM-killed at its 256Mi limit", "reason": "OOMKilled"}}),
    )
    .await;
    write_abnormal(
        &ns,
        "no-cause",
        json!({"phase": "Failed", "reason": "NoCauseFound",
               "conditions": [{"type": "Identified", "status": "False", "lastTransitionTime": at}]}),
    )
    .await;
    let link = start_link(member_config(&hub, &cluster, token_file, "ca.crt")).await;
    let diagnosis = |c: &Cluster, name: &str| {
        c.status.as_ref().and_then(|s| {
            s.diagnoses
                .iter()
                .find(|d| d.name == name && d.namespace == ns)
                .cloned()
        })
    };
    // The counts come with each heartbeat; the summaries through the acknowledged queue.
    let c = wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .and_then(|s| s.abnormals)
            .is_some_and(|a| a.failed >= 1 && a.succeeded >= 1)
            && diagnosis(c, "oom-web").is_some()
            && diagnosis(c, "no-cause").is_some()
    })
    .await;
    let found = diagnosis(&c, "oom-web").unwrap();
    assert_eq!(found.phase, "Succeeded");
    assert_eq!(found.root_cause, "web-0 is OOM-killed at its 256Mi limit");
    assert_eq!(found.root_cause_reason, "OOMKilled");
    assert_eq!(found.node, "fleet-node-a");
    assert_eq!(found.finish_time.map(|t| t.0), Some(now));
    assert_eq!(diagnosis(&c, "no-cause").unwrap().reason, "NoCauseFound");

    // One that opens while the link is up comes first.
    write_abnormal(&ns, "disk-db", json!({"phase": "Diagnosing"})).await;
    let c = wait_cluster(&cluster, |c| {
        c.status
            .as_ref()
            .and_then(|s| s.abnormals)
            .is_some_and(|a| a.open >= 1)
            && diagnosis(c, "disk-db").is_some()
    })
    .await;
    let s = c.status.unwrap();
    assert!(s.diagnoses[0].is_open(), "{:?}", s.diagnoses);
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["clusters"]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&cluster))
        .unwrap_or_else(|| panic!("{cluster} not listed: {out}"));
    assert!(line.contains("open") && line.contains("failed"), "{out}");
    let (ok, out, err) = kdiag_diag(hub_cp().await, &["clusters", "show", &cluster]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{ns}/disk-db")) && out.contains("Diagnosing"),
        "{out}"
    );
    assert!(
        out.contains("web-0 is OOM-killed at its 256Mi limit"),
        "{out}"
    );

    // Deleted in the member while its link is down: gone from the Cluster at the next link.
    link.cancel();
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Offline")
    })
    .await;
    let abnormals: Api<kdiag_api::Abnormal> =
        Api::namespaced(member_cp().await.client().await, &ns);
    abnormals
        .delete("disk-db", &DeleteParams::default())
        .await
        .unwrap();
    let token_file = files.path().join(format!("{cluster}.token"));
    let link = start_link(member_config(&hub, &cluster, token_file, "ca.crt")).await;
    wait_cluster(&cluster, |c| {
        c.status.as_ref().is_some_and(|s| s.state == "Connected")
            && diagnosis(c, "disk-db").is_none()
    })
    .await;
    // And deleted while it is up: gone at once.
    abnormals
        .delete("oom-web", &DeleteParams::default())
        .await
        .unwrap();
    wait_cluster(&cluster, |c| diagnosis(c, "oom-web").is_none()).await;
    link.cancel();
    hub.stop().await;
}

/// A CA of its own (PEM) and a certificate for 127.0.0.1 it signed, with its key.
fn ca_and_leaf() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &Issuer::new(ca, ca_key))
        .unwrap();
    (ca_cert.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_hub_certificate_is_served_from_the_next_link_on_without_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let dir = files.path();
    let (old_ca, old_cert, old_key) = ca_and_leaf();
    let (new_ca, new_cert, new_key) = ca_and_leaf();
    std::fs::write(dir.join("old-ca.crt"), old_ca).unwrap();
    std::fs::write(dir.join("new-ca.crt"), new_ca).unwrap();
    std::fs::write(dir.join("tls.crt"), old_cert).unwrap();
    std::fs::write(dir.join("tls.key"), old_key).unwrap();
    let hub = TestHub::start_serving(0, None, dir.join("tls.crt"), dir.join("tls.key")).await;
    let cluster = unique("renewed");
    let token_file = add_credential(hub_cp().await, &cluster, dir);
    let config =
        |ca: &str| MemberConfig::new(hub.url(), &cluster, token_file.clone(), dir.join(ca));
    kdiag_fleet::member::connect_once(&config("old-ca.crt"))
        .await
        .unwrap();
    match kdiag_fleet::member::connect_once(&config("new-ca.crt")).await {
        Err(kdiag_fleet::Error::HubCertificate { .. }) => {}
        other => panic!("the renewed CA before the renewal got {other:?}"),
    }

    // Renewed as the kubelet updates a mounted Secret: the new files swapped in at once.
    std::fs::write(dir.join("tls.key.new"), new_key).unwrap();
    std::fs::write(dir.join("tls.crt.new"), new_cert).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    kdiag_fleet::member::connect_once(&config("new-ca.crt"))
        .await
        .unwrap();
    match kdiag_fleet::member::connect_once(&config("old-ca.crt")).await {
        Err(kdiag_fleet::Error::HubCertificate { .. }) => {}
        other => panic!("the old CA after the renewal got {other:?}"),
    }
    // A half-written renewal (a certificate without its key) keeps the one that works.
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    kdiag_fleet::member::connect_once(&config("new-ca.crt"))
        .await
        .unwrap();
    hub.stop().await;
    let clusters: Api<Cluster> = Api::namespaced(hub_admin().await, FLEET_NAMESPACE);
    let _ = clusters.delete(&cluster, &DeleteParams::default()).await;
}
