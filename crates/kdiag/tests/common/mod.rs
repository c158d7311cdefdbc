//! Shared by the integration tests: a real apiserver with kdiag's CRDs and config/deploy applied,
//! the controller running with its own ServiceAccount token, agents started per test.

#![allow(dead_code)]

pub mod plugin;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kdiag_agent::server::ProcessorService;
use kdiag_agent::{self as agent, AgentConfig};
use kdiag_api::{Abnormal, AbnormalPhase, NamespacedName, ProcessorEndpoint};
use kdiag_controller::ControllerConfig;
use kdiag_pipeline::Limits;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::server::{self, ServerState};
use kdiag_testenv::{ControlPlane, control_plane};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)]
pub use plugin::{TestPlugin, host_ipv4};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// kubectl apply -f for a repository path, failing the test with kubectl's message.
pub fn kubectl_apply(cp: &ControlPlane, path: &str) {
    let out = cp
        .kubectl()
        .arg("apply")
        .arg("-f")
        .arg(repo_root().join(path))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl apply -f {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The control plane with CRDs and config/deploy applied (no controller).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn installed() -> &'static ControlPlane {
    init_logging();
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    let cp = control_plane().await;
    INSTALLED
        .get_or_init(|| async {
            cp.apply_crds(&kdiag_api::crds::all()).await.unwrap();
            kubectl_apply(cp, "config/deploy/00-namespace.yaml");
            kubectl_apply(cp, "config/deploy");
            remove_webhook(cp.kubectl());
        })
        .await;
    cp
}

/// The name of the ValidatingWebhookConfiguration config/deploy/webhook.yaml installs.
pub const WEBHOOK_CONFIGURATION: &str = "kdiag-webhook";

/// Deletes the admission webhook's configuration that config/deploy installs. It fails closed,
/// and most tests run a controller without the webhook (or none): only tests of the webhook
/// (hostile_tenant.rs) apply it again and start a controller that serves it.
pub fn remove_webhook(mut kubectl: std::process::Command) {
    let out = kubectl
        .args([
            "delete",
            "validatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "--ignore-not-found",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl delete validatingwebhookconfiguration: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client authenticated as kdiag's own ServiceAccount (kdiag-controller or kdiag-agent), so
/// RBAC applies exactly as in a real install.
pub async fn service_account_client(cp: &ControlPlane, name: &str) -> Client {
    let token = cp
        .service_account_token(kdiag_api::SYSTEM_NAMESPACE, name)
        .await;
    cp.client_with_token(&token).await
}

/// The alert token of the shared controller (alerts need one unless explicitly opted out).
pub const ALERT_TOKEN: &str = "kdiag-test-alert-token";

/// The port of the shared controller's HTTP server (alerts, probe reports, metrics).
pub static CONTROLLER_PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// The shared controller's base URL, e.g. http://127.0.0.1:4711.
pub fn controller_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        CONTROLLER_PORT.get().expect("with_controller() was called")
    )
}

/// ProbeRuns the shared controller keeps per probe: small, so a test sees the history bounded.
pub const PROBE_HISTORY: usize = 3;

/// The control plane with the controller running (on its own runtime, so it outlives tests).
pub async fn with_controller() -> &'static ControlPlane {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let cp = installed().await;
    STARTED
        .get_or_init(|| async {
            start_background_controller(
                cp,
                ControllerConfig {
                    pod_wait: Duration::from_secs(4),
                    alert_token: Some(ALERT_TOKEN.into()),
                    runner: kdiag_controller::probes::runner::RunnerConfig {
                        history: PROBE_HISTORY,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
        })
        .await;
    cp
}

/// Starts a controller on a runtime of its own thread; it runs until the test binary ends.
pub fn start_background_controller(cp: &'static ControlPlane, config: ControllerConfig) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = service_account_client(cp, "kdiag-controller").await;
            let metrics = Arc::new(Metrics::new());
            let (handle, driver) = kdiag_controller::start(
                client.clone(),
                config,
                Builtins::standard(),
                metrics.clone(),
                CancellationToken::new(),
            );
            let ready = handle.ready.clone();
            let state = ServerState {
                metrics,
                refresh: Arc::new(|| {}),
                ready: vec![],
                routes: kdiag_runtime::server::join(
                    kdiag_agent::server::routes(None),
                    kdiag_controller::server::routes(
                        Some(handle.probe_reports.clone()),
                        Some(handle.alerts.clone()),
                    ),
                ),
            };
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let serving =
                server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
                    .await
                    .unwrap();
            let _ = CONTROLLER_PORT.set(port);
            tokio::spawn(serving);
            tokio::spawn(driver);
            while !ready.load(std::sync::atomic::Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tx.send(()).unwrap();
            std::future::pending::<()>().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the controller became ready");
}

/// Creates Node `name` if there is none (no kubelet here: a Node object is all admission checks).
pub async fn ensure_node(client: &Client, name: &str) {
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    match Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create node {name}: {e}"),
    }
}

/// An agent for `node` running in the current test's runtime.
pub struct TestAgent {
    pub node: String,
    pub metrics: Arc<Metrics>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub data_root: PathBuf,
    /// True once the agent takes work.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

impl TestAgent {
    pub async fn start(cp: &ControlPlane, node: &str) -> Self {
        Self::start_with(cp, node, 32).await
    }

    pub async fn start_with(cp: &ControlPlane, node: &str, concurrency: usize) -> Self {
        Self::start_with_policy(cp, node, concurrency, "kdiag-policy").await
    }

    /// An agent that follows the node policy in ConfigMap kube-diagnoser/`policy`.
    pub async fn start_with_policy(
        cp: &ControlPlane,
        node: &str,
        concurrency: usize,
        policy: &str,
    ) -> Self {
        let client = service_account_client(cp, "kdiag-agent").await;
        let agent = Self::start_as(cp, client, node, concurrency, policy).await;
        agent.wait_ready().await;
        agent
    }

    /// An agent using `client`, returned at once (not waiting until it takes work).
    pub async fn start_as(
        cp: &ControlPlane,
        client: Client,
        node: &str,
        concurrency: usize,
        policy: &str,
    ) -> Self {
        Self::start_as_with(cp, client, node, concurrency, policy, |_| {}).await
    }

    /// An agent whose configuration `tweak` changes (deadline, turn), ready to take work.
    #[allow(dead_code)]
    pub async fn start_tweaked(
        cp: &ControlPlane,
        node: &str,
        concurrency: usize,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let client = service_account_client(cp, "kdiag-agent").await;
        let agent = Self::start_as_with(cp, client, node, concurrency, "kdiag-policy", tweak).await;
        agent.wait_ready().await;
        agent
    }

    async fn start_as_with(
        cp: &ControlPlane,
        client: Client,
        node: &str,
        concurrency: usize,
        policy: &str,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        // An agent runs on a node; admission rejects Abnormals for nodes that do not exist.
        ensure_node(&cp.client().await, node).await;
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let data_root = cp.run_dir().join(format!("agent-{node}"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut config = AgentConfig {
            node_name: node.into(),
            concurrency,
            limits: Limits::default(),
            command_output_cap: 64 * 1024,
            policy_configmap: (kdiag_api::SYSTEM_NAMESPACE.into(), policy.into()),
            data_root: data_root.clone(),
            public_url: format!("http://{addr}"),
            node: Default::default(),
            deadline: Some(kdiag_agent::DEFAULT_DEADLINE),
            turn: kdiag_agent::DEFAULT_TURN,
            go_profile_dirs: Vec::new(),
        };
        tweak(&mut config);
        let (handle, driver) = agent::start(
            client.clone(),
            config,
            Builtins::standard(),
            metrics.clone(),
            shutdown.clone(),
        );
        let state = ServerState {
            metrics: metrics.clone(),
            refresh: Arc::new(|| {}),
            ready: handle.readiness(),
            routes: kdiag_runtime::server::join(
                kdiag_agent::server::routes(Some(ProcessorService {
                    builtins: handle.builtins.clone(),
                    authorizer: Arc::new(kdiag_runtime::auth::Authorizer::new(client.clone())),
                    client,
                    node_name: node.into(),
                    max_output_bytes: 512 * 1024,
                    node: Default::default(),
                    data_root: data_root.clone(),
                })),
                kdiag_controller::server::routes(None, None),
            ),
        };
        let serving = server::serve(addr, state, shutdown.clone().cancelled_owned())
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            tokio::join!(driver, serving);
        });
        Self {
            node: node.into(),
            metrics,
            addr,
            shutdown,
            task,
            data_root,
            ready: handle.ready.clone(),
        }
    }

    /// Waits until the agent takes work: its caches synced and its policy read.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.ready.load(std::sync::atomic::Ordering::Acquire) {
            assert!(
                Instant::now() < deadline,
                "agent for {} did not become ready",
                self.node
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops it the hard way, as a crash or kill -9 would: no step gets to finish.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Asks it to stop and waits.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }

    pub async fn metrics_text(&self) -> String {
        let resp = reqwest_get(&format!("http://{}/metrics", self.addr)).await;
        assert_eq!(resp.0, 200);
        resp.1
    }
}

/// A plain GET returning (status, body), for the agent's own endpoints.
pub async fn reqwest_get(url: &str) -> (u16, String) {
    let url: reqwest_lite::Url = url.parse().unwrap();
    reqwest_lite::get(url).await
}

/// A GET with `Authorization: Bearer <token>`, for the node API (profiles, processors).
pub async fn get_with_token(url: &str, token: &str) -> (u16, String) {
    let url: reqwest_lite::Url = url.parse().unwrap();
    let bearer = format!("Bearer {token}");
    reqwest_lite::request_with(url, "GET", b"", &[("authorization", &bearer)]).await
}

/// Just enough HTTP/1.1 client for loopback tests, so the tests do not depend on the code under test.
pub mod reqwest_lite {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Url {
        host: String,
        path: String,
    }

    impl std::str::FromStr for Url {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let rest = s.strip_prefix("http://").ok_or("http only")?;
            let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            Ok(Self {
                host: host.into(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
            })
        }
    }

    pub async fn request(url: Url, method: &str, body: &[u8]) -> (u16, String) {
        request_with(url, method, body, &[]).await
    }

    pub async fn request_with(
        url: Url,
        method: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(&url.host).await.unwrap();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
            url.path,
            url.host,
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        // Chunked bodies: good enough to search in.
        (code, body)
    }

    pub async fn get(url: Url) -> (u16, String) {
        request(url, "GET", b"").await
    }
}

/// Registers an HTTP plugin of `kind` (InformationCollector, Diagnoser or Recoverer).
pub async fn register_plugin(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    port: u16,
    path: &str,
    timeout_seconds: i32,
) {
    let endpoint = ProcessorEndpoint {
        external_ip: Some("127.0.0.1".into()),
        external_port: Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into()),
        ),
        path: Some(path.into()),
        timeout_seconds: Some(timeout_seconds),
        ..Default::default()
    };
    let pp = PostParams::default();
    match kind {
        "InformationCollector" => {
            let o = kdiag_api::InformationCollector::new(
                name,
                kdiag_api::InformationCollectorSpec { endpoint },
            );
            Api::namespaced(client.clone(), ns)
                .create(&pp, &o)
                .await
                .map(|_| ())
        }
        "Diagnoser" => {
            let o = kdiag_api::Diagnoser::new(name, kdiag_api::DiagnoserSpec { endpoint });
            Api::namespaced(client.clone(), ns)
                .create(&pp, &o)
                .await
                .map(|_| ())
        }
        "Recoverer" => {
            let o = kdiag_api::Recoverer::new(
                name,
                kdiag_api::RecovererSpec {
                    endpoint,
                    idempotent: false,
                },
            );
            Api::namespaced(client.clone(), ns)
                .create(&pp, &o)
                .await
                .map(|_| ())
        }
        other => panic!("unknown kind {other}"),
    }
    .unwrap_or_else(|e| panic!("register {kind} {ns}/{name}: {e}"));
}

/// Registers an HTTP Recoverer that says whether it is idempotent (may be called again with the
/// same Idempotency-Key after the agent stopped while it ran).
pub async fn register_recoverer(
    client: &Client,
    ns: &str,
    name: &str,
    port: u16,
    path: &str,
    timeout_seconds: i32,
    idempotent: bool,
) {
    let endpoint = ProcessorEndpoint {
        external_ip: Some("127.0.0.1".into()),
        external_port: Some(
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into()),
        ),
        path: Some(path.into()),
        timeout_seconds: Some(timeout_seconds),
        ..Default::default()
    };
    let o = kdiag_api::Recoverer::new(
        name,
        kdiag_api::RecovererSpec {
            endpoint,
            idempotent,
        },
    );
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &o)
        .await
        .map(|_: kdiag_api::Recoverer| ())
        .unwrap_or_else(|e| panic!("register Recoverer {ns}/{name}: {e}"));
}

/// Writes (or replaces) a node policy ConfigMap `name` in kube-diagnoser.
pub async fn write_policy(client: &Client, name: &str, policy: &str) {
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": kdiag_api::SYSTEM_NAMESPACE},
        "data": {"policy.yaml": policy},
    }))
    .unwrap();
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), kdiag_api::SYSTEM_NAMESPACE);
    let _ = api.delete(name, &Default::default()).await;
    api.create(&PostParams::default(), &cm)
        .await
        .unwrap_or_else(|e| panic!("create policy ConfigMap {name}: {e}"));
}

pub fn nn(ns: &str, name: &str) -> NamespacedName {
    NamespacedName::new(ns, name)
}

/// Creates an Abnormal from a spec given as JSON.
pub async fn create_abnormal(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Abnormal {
    let a: Abnormal = serde_json::from_value(serde_json::json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .unwrap();
    Api::<Abnormal>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &a)
        .await
        .unwrap()
}

/// Waits until the controller has read the AbnormalSource `ns/name` and found its template valid:
/// condition `Valid=True` for its current generation. The controller writes that condition from
/// the cache its triggers read, so an Event, alert or ProbeStatus sent after this meets the
/// source.
pub async fn wait_source_valid(client: &Client, ns: &str, name: &str) {
    let api: Api<kdiag_api::AbnormalSource> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let source = api.get(name).await.ok();
        let status = source.as_ref().and_then(|s| s.status.as_ref());
        let valid = status
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Valid"))
            .map(|c| c.status.clone());
        let current = source
            .as_ref()
            .is_some_and(|s| status.and_then(|st| st.observed_generation) == s.metadata.generation);
        if current && valid.as_deref() == Some("True") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "AbnormalSource {ns}/{name} was not found valid within 30s: {:?}",
            status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the Abnormal is in a final phase and returns it.
pub async fn wait_final(client: &Client, ns: &str, name: &str, timeout: Duration) -> Abnormal {
    wait_for(client, ns, name, timeout, |a| {
        a.phase().is_some_and(AbnormalPhase::is_final)
    })
    .await
}

/// Waits until `pred` holds for the Abnormal.
pub async fn wait_for(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Abnormal) -> bool,
) -> Abnormal {
    let api: Api<Abnormal> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    loop {
        // A failed read (a dropped connection on a loaded machine) is retried until the deadline.
        let a = match api.get(name).await {
            Ok(a) => a,
            Err(e) => {
                assert!(Instant::now() < deadline, "{ns}/{name}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if pred(&a) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{name} did not get there within {timeout:?}; it is at {}",
            serde_json::to_string_pretty(&a.status).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reasons once there are at least `n` Events (or after 5 s): an Event is published after
/// the status write it reports, so a final phase may be seen before its Event.
pub async fn event_reasons_at_least(
    client: &Client,
    ns: &str,
    name: &str,
    n: usize,
) -> Vec<String> {
    let mut reasons = event_reasons(client, ns, name).await;
    for _ in 0..50 {
        if reasons.len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        reasons = event_reasons(client, ns, name).await;
    }
    reasons
}

/// The reasons of the Events recorded on an object, oldest first.
pub async fn event_reasons(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    list.into_iter().filter_map(|e| e.reason).collect()
}

/// Creates the KubeProber Probe `ns/name` with `spec`.
pub async fn create_probe(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let p: kdiag_api::Probe = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}))
    .unwrap();
    Api::<kdiag_api::Probe>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

/// `kdiag diag <args>` (the CLI as `kubectl diag` runs it) with this control plane's kubeconfig:
/// exit code, stdout, stderr.
pub async fn kubectl_diag(cp: &ControlPlane, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kdiag"))
        .arg("diag")
        .args(args)
        .env("KUBECONFIG", cp.kubeconfig_path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("the kdiag binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The credential `kubectl diag clusters add` printed (64 hex digits), written to
/// `<dir>/<cluster>.token` as a member's controller reads it.
pub fn save_printed_credential(
    out: &str,
    cluster: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let token = out
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no token printed: {out}"));
    let path = dir.join(format!("{cluster}.token"));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}
