//! The pod triage on a real single-node cluster, shared by its test (tests/triage.rs) and its
//! benchmark (examples/bench_triage.rs): kdiag installed as config/deploy does it, the
//! controller and the node's agent running with their own ServiceAccounts, and one pod per
//! failure class that really fails that way.

#![allow(dead_code)]

pub mod webhook;
pub mod workloads;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kdiag_agent::{self as agent, AgentConfig};
use kdiag_api::{Abnormal, AbnormalPhase};
use kdiag_controller::{self as controller, ControllerConfig};
use kdiag_pipeline::Limits;
use kdiag_runtime::apply::apply_yaml;
use kdiag_runtime::builtin::Builtins;
use kdiag_runtime::metrics::Metrics;
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The built kdiag binary: cargo names it for tests; an example (the benchmark) finds it next to
/// its own directory (target/<profile>/examples/.. → target/<profile>/kdiag).
pub fn kdiag_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_kdiag") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the running program's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/examples/<name>");
    let kdiag = profile_dir.join("kdiag");
    assert!(
        kdiag.is_file(),
        "{} is missing: build it first (cargo build --bin kdiag, with --release for a release benchmark)",
        kdiag.display()
    );
    kdiag
}
/// How long a scenario may take to show its failure. Evictions wait for the kubelet's volume
/// statistics (every minute by default) and its eviction pass (every 10 s).
pub const FAILURE_TIMEOUT: Duration = Duration::from_secs(180);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// kdiag on a cluster: the namespace the scenarios run in.
pub struct Stack {
    pub cluster: &'static Cluster,
    pub namespace: String,
}

impl Stack {
    /// Installs kdiag (CRDs, namespace, RBAC, processor registrations), starts the controller
    /// and this node's agent on a runtime of their own (they outlive each test's runtime), and
    /// creates every scenario's objects at once so their failures develop side by side.
    pub async fn start(cluster: &'static Cluster, scenarios: &[Scenario]) -> Stack {
        let admin = cluster.client().await;
        cluster
            .apply_crds(&kdiag_api::crds::all())
            .await
            .expect("apply kdiag's CRDs");
        for name in [
            "config/deploy/00-namespace.yaml",
            "config/deploy/10-rbac.yaml",
            // The node policy: without it the agent denies every command and recovery.
            "config/deploy/20-policy.yaml",
            "config/deploy/processors.yaml",
        ] {
            let yaml = std::fs::read_to_string(repo_root().join(name)).unwrap();
            apply_yaml(&admin, name, &yaml)
                .await
                .unwrap_or_else(|e| panic!("apply {name}: {e}"));
        }
        start_pipeline(cluster);
        let namespace = cluster.create_namespace("triage").await;
        let stack = Stack { cluster, namespace };
        for s in scenarios {
            stack.create(s).await;
        }
        stack
    }

    pub async fn client(&self) -> Client {
        self.cluster.client().await
    }

    async fn create(&self, s: &Scenario) {
        let client = self.client().await;
        for extra in &s.extras {
            let mut v = extra.clone();
            v["metadata"]["namespace"] = json!(self.namespace);
            create_any(&client, &self.namespace, v).await;
        }
        let mut v = s.object.clone();
        v["metadata"]["namespace"] = json!(self.namespace);
        create_any(&client, &self.namespace, v).await;
    }

    /// The scenario's pod (the Deployment's pod for one that runs through a Deployment).
    pub async fn pod(&self, s: &Scenario) -> Option<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client().await, &self.namespace);
        let lp = ListParams::default().labels(&format!("kdiag.test/case={}", s.name));
        pods.list(&lp).await.ok()?.items.into_iter().next()
    }

    pub async fn events(&self, pod: &Pod) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client().await, &self.namespace);
        let lp = ListParams::default().fields(&format!(
            "involvedObject.name={}",
            pod.metadata.name.as_deref().unwrap_or_default()
        ));
        api.list(&lp).await.map(|l| l.items).unwrap_or_default()
    }

    /// Waits until the scenario's failure shows (and does what it must, such as deleting a
    /// pod held by a finalizer); returns the pod's name.
    pub async fn wait_for_failure(&self, s: &Scenario) -> String {
        let begin = Instant::now();
        let mut last = None;
        let mut deleted = false;
        while begin.elapsed() < FAILURE_TIMEOUT {
            if let Some(pod) = self.pod(s).await {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if s.delete_when_running && !deleted && running(&pod) {
                    let pods: Api<Pod> = Api::namespaced(self.client().await, &self.namespace);
                    pods.delete(&name, &DeleteParams::default())
                        .await
                        .expect("delete the pod");
                    deleted = true;
                }
                let events = self.events(&pod).await;
                if (s.shows)(&pod, &events) {
                    return name;
                }
                last = Some(pod);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!(
            "scenario {}: the failure did not show within {FAILURE_TIMEOUT:?}. Pod status: {}\nkubelet: {}",
            s.name,
            serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap_or_default(),
            self.cluster.log_tail("kubelet", 20)
        );
    }

    /// Lets a pod held by a finalizer go.
    pub async fn release(&self, s: &Scenario) {
        if let Some(pod) = self.pod(s).await {
            let pods: Api<Pod> = Api::namespaced(self.client().await, &self.namespace);
            let _ = pods
                .patch(
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
        }
    }

    /// `kdiag diag run -n NS --pod NS/POD --name NAME --wait` as an operator types it.
    pub async fn kubectl_diag_run(&self, pod: &str, name: &str) -> Ran {
        let out = tokio::process::Command::new(kdiag_binary())
            .args(["diag", "run", "-n", &self.namespace, "--pod"])
            .arg(format!("{}/{pod}", self.namespace))
            .args(["--name", name, "--wait", "--timeout", "60s"])
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("the kdiag binary runs");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kdiag diag run <args>` against the cluster, as an operator types it.
    pub async fn diag_run(&self, args: &[String]) -> Ran {
        let out = tokio::process::Command::new(kdiag_binary())
            .args(["diag", "run"])
            .args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig_path())
            .env("NO_COLOR", "1")
            .output()
            .await
            .expect("the kdiag binary runs");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// An Abnormal naming the pod and its node and no processors, so the controller assigns
    /// the triage; used for a pod no node took, which `kubectl diag run --pod` cannot route.
    pub async fn create_triage_abnormal(&self, pod: &str, name: &str) {
        let a: Abnormal = serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"podReference": {"namespace": self.namespace, "name": pod},
                     "nodeName": self.cluster.node_name()}
        }))
        .unwrap();
        Api::<Abnormal>::namespaced(self.client().await, &self.namespace)
            .create(&PostParams::default(), &a)
            .await
            .expect("create the Abnormal");
    }

    pub async fn abnormal(&self, name: &str) -> Abnormal {
        Api::<Abnormal>::namespaced(self.client().await, &self.namespace)
            .get(name)
            .await
            .expect("the Abnormal exists")
    }

    /// Waits until the Abnormal is Succeeded or Failed.
    pub async fn wait_final(&self, name: &str, timeout: Duration) -> Abnormal {
        let api: Api<Abnormal> = Api::namespaced(self.client().await, &self.namespace);
        let begin = Instant::now();
        loop {
            if let Ok(a) = api.get(name).await
                && a.phase().is_some_and(AbnormalPhase::is_final)
            {
                return a;
            }
            assert!(
                begin.elapsed() < timeout,
                "{name} did not end within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What a command did.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

async fn create_any(client: &Client, ns: &str, v: Value) {
    let kind = v["kind"].as_str().unwrap_or_default().to_owned();
    let pp = PostParams::default();
    let result = match kind.as_str() {
        "Pod" => Api::<Pod>::namespaced(client.clone(), ns)
            .create(&pp, &serde_json::from_value(v).unwrap())
            .await
            .map(|_| ()),
        "Deployment" => {
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
                .create(&pp, &serde_json::from_value(v).unwrap())
                .await
                .map(|_| ())
        }
        "ConfigMap" => Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
            .create(&pp, &serde_json::from_value(v).unwrap())
            .await
            .map(|_| ()),
        other => panic!("scenario objects of kind {other} are not supported"),
    };
    result.unwrap_or_else(|e| panic!("create {kind}: {e}"));
}

/// Starts the controller and the node's agent, each with its ServiceAccount's token, on a
/// runtime of their own; returns once both watch.
fn start_pipeline(cluster: &'static Cluster) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ns = kdiag_api::SYSTEM_NAMESPACE;
            let controller_client = cluster
                .client_with_token(&cluster.service_account_token(ns, "kdiag-controller").await)
                .await;
            let agent_client = cluster
                .client_with_token(&cluster.service_account_token(ns, "kdiag-agent").await)
                .await;
            let metrics = Arc::new(Metrics::new());
            let shutdown = CancellationToken::new();
            let (c_handle, c_driver) = controller::start(
                controller_client,
                ControllerConfig::default(),
                Builtins::standard(),
                metrics.clone(),
                shutdown.clone(),
            );
            let config = AgentConfig {
                node_name: cluster.node_name().to_owned(),
                concurrency: 32,
                limits: Limits::default(),
                command_output_cap: 64 * 1024,
                policy_configmap: (ns.into(), "kdiag-policy".into()),
                data_root: cluster.run_dir().join("kdiag-agent"),
                public_url: "http://127.0.0.1:0".into(),
                node: kdiag_api::plugin::NodeEnvironment {
                    kubelet_root: cluster.kubelet_root_dir(),
                    cri_sockets: vec![cluster.cri_socket()],
                    apiserver: Some(cluster.control_plane().url().to_owned()),
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
        .expect("the controller and the agent started watching within 60 s");
}

fn running(p: &Pod) -> bool {
    container(p).is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

fn container(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn terminated_reason(p: &Pod, reason: &str) -> bool {
    container(p).is_some_and(|c| {
        [
            c.state.as_ref().and_then(|s| s.terminated.as_ref()),
            c.last_state.as_ref().and_then(|s| s.terminated.as_ref()),
        ]
        .into_iter()
        .flatten()
        .any(|t| t.reason.as_deref() == Some(reason))
    })
}

fn waiting_reason(p: &Pod) -> Option<&str> {
    container(p)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

fn has_event(events: &[Event], reason: &str, contains: &str) -> bool {
    events.iter().any(|e| {
        e.reason.as_deref() == Some(reason)
            && e.message.as_deref().is_some_and(|m| m.contains(contains))
    })
}

/// One failure class made to really happen.
pub struct Scenario {
    /// The class, and the `kdiag.test/case` label of its pod.
    pub name: &'static str,
    /// The pod (or a Deployment whose pod template carries the label).
    pub object: Value,
    /// Objects created before it (a ConfigMap it uses).
    pub extras: Vec<Value>,
    /// Whether the failure shows, from the pod and its events.
    pub shows: fn(&Pod, &[Event]) -> bool,
    /// Delete the pod once it runs (a stuck termination).
    pub delete_when_running: bool,
    /// The reason codes the triage may name as the root cause.
    pub reasons: &'static [&'static str],
    /// Whether it is diagnosed with `kubectl diag run --pod` (else by creating the Abnormal).
    pub via_cli: bool,
}

fn pod(case: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": case, "labels": {"kdiag.test/case": case}},
        "spec": spec,
    })
}

fn busybox(command: Value) -> Value {
    json!({"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent", "command": command})
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn spec_with(container: Value, extra: Value) -> Value {
    let mut spec = json!({"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
        "containers": [container]});
    merge(&mut spec, extra);
    spec
}

/// Every class the triage tests make really happen.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "oom",
            // As examples/pods/oom-kill: tail buffers 256 MiB of newline-free input under 32 Mi.
            object: pod(
                "oom",
                spec_with(
                    {
                        let mut c = busybox(json!([
                            "sh",
                            "-c",
                            "echo caching 256 MiB; head -c 268435456 /dev/zero | tail > /dev/null"
                        ]));
                        c["resources"] =
                            json!({"requests": {"memory": "16Mi"}, "limits": {"memory": "32Mi"}});
                        c
                    },
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |p, _| terminated_reason(p, "OOMKilled"),
            delete_when_running: false,
            reasons: &["OOMKilled"],
            via_cli: true,
        },
        Scenario {
            name: "crash",
            // Through a Deployment, so the owner chain (ReplicaSet → Deployment) is collected.
            object: json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "crash"},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"kdiag.test/case": "crash"}},
                    "template": {"metadata": {"labels": {"kdiag.test/case": "crash"}},
                        "spec": spec_with(busybox(json!(["sh", "-c",
                            "echo loading configuration from /etc/app/config.yaml; echo 'fatal: /etc/app/config.yaml: no such file or directory' >&2; exit 3"])),
                            json!({}))}}
            }),
            extras: vec![],
            shows: |p, _| {
                container(p).is_some_and(|c| {
                    c.restart_count >= 1
                        && c.last_state
                            .as_ref()
                            .and_then(|s| s.terminated.as_ref())
                            .is_some_and(|t| t.exit_code == 3)
                })
            },
            delete_when_running: false,
            reasons: &["CrashLoopBackOff"],
            via_cli: true,
        },
        Scenario {
            name: "no-command",
            object: pod(
                "no-command",
                spec_with(
                    busybox(json!(["/opt/app/server", "--port=8080"])),
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |p, _| {
                waiting_reason(p) == Some("RunContainerError") || terminated_reason(p, "StartError")
            },
            delete_when_running: false,
            reasons: &["ExecutableNotFound"],
            via_cli: true,
        },
        Scenario {
            name: "no-image",
            // Never imported, so containerd pulls it, through the proxy at 127.0.0.1:9 where
            // nothing listens.
            object: pod(
                "no-image",
                spec_with(
                    json!({"name": "app", "image": "registry.kdiag.test/shop/web:1.2.3",
                        "imagePullPolicy": "IfNotPresent"}),
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |p, events| {
                matches!(waiting_reason(p), Some("ErrImagePull" | "ImagePullBackOff"))
                    && has_event(events, "Failed", "Failed to pull image")
            },
            delete_when_running: false,
            reasons: &["RegistryUnreachable"],
            via_cli: true,
        },
        Scenario {
            name: "no-configmap",
            object: pod(
                "no-configmap",
                spec_with(
                    {
                        let mut c = busybox(json!(["sleep", "3600"]));
                        c["envFrom"] = json!([{"configMapRef": {"name": "app-config"}}]);
                        c
                    },
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |p, _| waiting_reason(p) == Some("CreateContainerConfigError"),
            delete_when_running: false,
            reasons: &["ConfigMapNotFound"],
            via_cli: true,
        },
        Scenario {
            name: "too-big",
            object: pod(
                "too-big",
                spec_with(
                    {
                        let mut c = busybox(json!(["sleep", "3600"]));
                        c["resources"] = json!({"requests": {"cpu": "64", "memory": "512Gi"}});
                        c
                    },
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |p, events| {
                has_event(events, "FailedScheduling", "Insufficient")
                    && p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
            },
            delete_when_running: false,
            reasons: &["InsufficientResources"],
            via_cli: true,
        },
        Scenario {
            name: "host-port",
            // A pod bound first holds hostPort 18080 on the only node; this one asks for it too.
            object: pod(
                "host-port",
                spec_with(
                    {
                        let mut c = busybox(json!(["sleep", "3600"]));
                        c["ports"] = json!([{"containerPort": 18080, "hostPort": 18080}]);
                        c
                    },
                    json!({}),
                ),
            ),
            extras: vec![pod(
                "host-port-holder",
                spec_with(
                    {
                        let mut c = busybox(json!(["sleep", "3600"]));
                        c["ports"] = json!([{"containerPort": 18080, "hostPort": 18080}]);
                        c
                    },
                    json!({}),
                ),
            )],
            shows: |p, events| {
                has_event(events, "FailedScheduling", "free ports")
                    && p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
            },
            delete_when_running: false,
            reasons: &["HostPortConflict"],
            via_cli: true,
        },
        Scenario {
            name: "liveness",
            // Nothing listens on 8080: every probe is refused, the kubelet restarts it.
            object: pod(
                "liveness",
                spec_with(
                    {
                        let mut c = busybox(json!(["sleep", "3600"]));
                        c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": 8080},
                            "periodSeconds": 1, "failureThreshold": 2});
                        c
                    },
                    json!({}),
                ),
            ),
            extras: vec![],
            shows: |_, events| has_event(events, "Killing", "failed liveness probe"),
            delete_when_running: false,
            reasons: &["LivenessProbeFailed"],
            via_cli: true,
        },
        Scenario {
            name: "finalizer",
            object: {
                let mut p = pod(
                    "finalizer",
                    spec_with(busybox(json!(["sleep", "3600"])), json!({})),
                );
                p["metadata"]["finalizers"] = json!(["kdiag.test/never-released"]);
                p
            },
            extras: vec![],
            // Past deletionTimestamp + grace: the kubelet had its time, the finalizer holds it.
            shows: |p, _| {
                p.metadata.deletion_timestamp.as_ref().is_some_and(|t| {
                    jiff::Timestamp::now().duration_since(t.0).as_secs()
                        > p.metadata.deletion_grace_period_seconds.unwrap_or(1) + 1
                })
            },
            delete_when_running: true,
            reasons: &["FinalizersPresent"],
            via_cli: true,
        },
        Scenario {
            name: "emptydir",
            object: pod(
                "emptydir",
                spec_with(
                    {
                        let mut c = busybox(json!([
                            "sh",
                            "-c",
                            "dd if=/dev/zero of=/scratch/fill bs=1M count=8; echo wrote 8 MiB; exec sleep 3600"
                        ]));
                        c["volumeMounts"] = json!([{"name": "scratch", "mountPath": "/scratch"}]);
                        c
                    },
                    json!({"volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Mi"}}]}),
                ),
            ),
            extras: vec![],
            shows: |p, _| {
                p.status
                    .as_ref()
                    .is_some_and(|s| s.reason.as_deref() == Some("Evicted"))
            },
            delete_when_running: false,
            reasons: &["EmptyDirSizeLimitExceeded"],
            via_cli: true,
        },
    ]
}

pub fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}
