//! The environment of one benchmark section: a fresh real control plane (etcd + kube-apiserver
//! 1.20.2, from kdiag-testenv) with kdiag installed as `kubectl apply` installs it, clients with
//! kdiag's own ServiceAccount tokens (RBAC applies as in a real install), the bench plugin's
//! registrations, and kdiag's controller and agents run in this process when a section needs
//! them in-process.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kdiag_agent::{self as agent, AgentConfig, AgentHandle};
use kdiag_api::{ProcessorEndpoint, SYSTEM_NAMESPACE};
use kdiag_controller::ControllerConfig;
use kdiag_pipeline::Limits;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_runtime::server::{self, ServerState};
use kdiag_testenv::ControlPlane;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub cp: ControlPlane,
    pub admin: Client,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl Env {
    /// A new control plane with kdiag's CRDs and config/deploy applied.
    pub async fn start() -> Result<Self> {
        let cp = ControlPlane::start()
            .await
            .context("starting the control plane (run `make setup` first)")?;
        cp.apply_crds(&kdiag_api::crds::all()).await?;
        for path in ["config/deploy/00-namespace.yaml", "config/deploy"] {
            let out = cp
                .kubectl()
                .arg("apply")
                .arg("-f")
                .arg(repo_root().join(path))
                .output()?;
            if !out.status.success() {
                bail!(
                    "kubectl apply -f {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let admin = cp.client().await;
        let env = Self { cp, admin };
        // The admission webhook's configuration fails closed, and the in-process controllers
        // of most sections serve no webhook: without this, no Abnormal could be created.
        env.without_webhook()?;
        Ok(env)
    }

    /// Deletes the admission webhook's configuration: the apiserver stops calling it.
    pub fn without_webhook(&self) -> Result<()> {
        self.kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            "kdiag-webhook",
            "--ignore-not-found",
        ])
    }

    /// Applies the admission webhook's configuration as shipped (config/deploy/webhook.yaml,
    /// failurePolicy Fail); the controller that serves it writes its address and caBundle.
    pub fn with_webhook(&self) -> Result<()> {
        let path = repo_root().join("config/deploy/webhook.yaml");
        self.kubectl(&["apply", "-f", &path.display().to_string()])
    }

    fn kubectl(&self, args: &[&str]) -> Result<()> {
        let out = self.cp.kubectl().args(args).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A token of kdiag's ServiceAccount `name` (kdiag-controller or kdiag-agent).
    pub async fn token(&self, name: &str) -> String {
        self.cp.service_account_token(SYSTEM_NAMESPACE, name).await
    }

    /// A Node object named `name` (no kubelet behind it): admission rejects Abnormals whose
    /// node does not exist, so every node the bench sends work to must be one.
    pub async fn node(&self, name: &str) -> Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.admin.clone());
        let node = serde_json::from_value(json!({"metadata": {"name": name}}))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating Node {name}")),
        }
    }

    pub async fn namespace(&self, prefix: &str) -> String {
        self.cp.create_namespace(prefix).await
    }

    /// Registers the bench plugin as InformationCollector `ns/bench-collect` and Diagnoser
    /// `ns/bench-diagnose`.
    pub async fn register_plugin(&self, ns: &str, port: u16) -> Result<()> {
        let endpoint = |path: &str| ProcessorEndpoint {
            external_ip: Some("127.0.0.1".into()),
            external_port: Some(
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into()),
            ),
            path: Some(path.into()),
            timeout_seconds: Some(10),
            ..Default::default()
        };
        let pp = PostParams::default();
        Api::namespaced(self.admin.clone(), ns)
            .create(
                &pp,
                &kdiag_api::InformationCollector::new(
                    "bench-collect",
                    kdiag_api::InformationCollectorSpec {
                        endpoint: endpoint("/collect"),
                    },
                ),
            )
            .await?;
        Api::namespaced(self.admin.clone(), ns)
            .create(
                &pp,
                &kdiag_api::Diagnoser::new(
                    "bench-diagnose",
                    kdiag_api::DiagnoserSpec {
                        endpoint: endpoint("/diagnose"),
                    },
                ),
            )
            .await?;
        Ok(())
    }

    /// Creates `n` pods bound to `node` (they never run: there is no kubelet), so pod-collector
    /// has real pods to collect and the Abnormals carry a realistic status.context.
    pub async fn create_pods(&self, ns: &str, node: &str, n: usize) -> Result<()> {
        // The ServiceAccount admission plugin rejects pods of a namespace without one.
        self.cp.service_account_token(ns, "default").await;
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.admin.clone(), ns);
        for i in 0..n {
            let pod = serde_json::from_value(json!({
                "metadata": {"name": format!("web-{i}"), "namespace": ns,
                    "labels": {"app": "web", "pod-template-hash": "5d8f7c9b6d"}},
                "spec": {"nodeName": node, "automountServiceAccountToken": false,
                    "containers": [{"name": "app", "image": "registry.example/shop/web:1.24.3",
                        "args": ["--port=8080", "--log-level=info"],
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "env": [{"name": "MODE", "value": "production"}, {"name": "CACHE_MB", "value": "256"}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5}}]}
            }))?;
            api.create(&PostParams::default(), &pod).await?;
        }
        Ok(())
    }
}

/// The Abnormal every pipeline benchmark creates: the built-in pod-collector (in the agent's
/// process; it lists the node's pods from the apiserver) and the bench plugin over HTTP collect,
/// the bench plugin diagnoses, nothing recovers (the stage is skipped).
pub fn abnormal_spec(ns: &str, node: &str) -> Value {
    json!({
        "nodeName": node,
        "assignedInformationCollectors": [
            {"namespace": SYSTEM_NAMESPACE, "name": "pod-collector"},
            {"namespace": ns, "name": "bench-collect"}],
        "assignedDiagnosers": [{"namespace": ns, "name": "bench-diagnose"}],
    })
}

pub fn abnormal_resource() -> ApiResource {
    ApiResource::erase::<kdiag_api::Abnormal>(&())
}

/// An object of `resource` named `name` with `spec`.
pub fn object(resource: &ApiResource, ns: &str, name: &str, spec: &Value) -> DynamicObject {
    DynamicObject::new(name, resource)
        .within(ns)
        .data(json!({"spec": spec}))
}

/// kdiag's controller, in this process.
pub struct InProcController {
    /// Its HTTP server (alerts, probe reports, metrics).
    pub port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl InProcController {
    pub async fn start(env: &Env, config: ControllerConfig) -> Result<Self> {
        let client = env
            .cp
            .client_with_token(&env.token("kdiag-controller").await)
            .await;
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (handle, driver) = kdiag_controller::start(
            client.clone(),
            config,
            Builtins::standard(),
            metrics.clone(),
            shutdown.clone(),
        );
        let port = free_port()?;
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
        let serving = server::serve(
            ([127, 0, 0, 1], port).into(),
            state,
            shutdown.clone().cancelled_owned(),
        )
        .await?;
        let task = tokio::spawn(async move {
            tokio::join!(driver, serving);
        });
        wait_ready(&handle.ready, "the controller").await?;
        Ok(Self {
            port,
            shutdown,
            task,
        })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

/// A node agent, in this process (no HTTP server: its metrics are read directly).
pub struct InProcAgent {
    pub node: String,
    pub handle: AgentHandle,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl InProcAgent {
    /// Starts the agent of `node` with `client` (kdiag-agent's token) and waits until its
    /// watches have synced.
    pub async fn start(client: Client, node: &str, data_root: &Path) -> Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let config = AgentConfig {
            node_name: node.into(),
            concurrency: 32,
            limits: Limits::default(),
            command_output_cap: 64 * 1024,
            policy_configmap: (SYSTEM_NAMESPACE.into(), "kdiag-policy".into()),
            data_root: data_root.join(node),
            public_url: "http://127.0.0.1:1".into(),
            node: Default::default(),
            deadline: Some(kdiag_agent::DEFAULT_DEADLINE),
            turn: kdiag_agent::DEFAULT_TURN,
            go_profile_dirs: Vec::new(),
        };
        let (handle, driver) = agent::start(
            client,
            config,
            Builtins::standard(),
            metrics.clone(),
            shutdown.clone(),
        );
        let task = tokio::spawn(driver);
        wait_ready(&handle.ready, &format!("the agent of {node}")).await?;
        Ok(Self {
            node: node.into(),
            handle,
            metrics,
            shutdown,
            task,
        })
    }

    /// Abnormals this agent brought to a final phase.
    pub fn finished(&self) -> u64 {
        ["Succeeded", "Failed"]
            .iter()
            .map(|p| {
                self.metrics
                    .agent
                    .end_to_end
                    .with_label_values(&[*p])
                    .get_sample_count()
            })
            .sum()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

async fn wait_ready(flag: &std::sync::atomic::AtomicBool, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !flag.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            bail!("{what} did not become ready within 120s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
