//! Workload-level failures made to really happen on the shared cluster, for the benchmark
//! (examples/bench_triage): each function sets one up in a namespace of its own, waits until the
//! controllers show it, and returns what to ask `kubectl diag run` and which reasons may answer.
//! The same failures as the tests in `triage_workloads`, plus a Service whose pod is never ready
//! and a Job past its backoffLimit (tested on the apiserver alone in kubectl_diag.rs, real here).

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Event, Pod, ResourceQuota, Service};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// How long a workload failure may take to show.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A workload failure that shows: `kubectl diag run --<flag> <target>` is the question.
#[derive(Debug, Clone)]
pub struct WorkloadCase {
    pub name: &'static str,
    /// `deployment`, `statefulset`, `daemonset`, `pdb`, `service` or `job`.
    pub flag: &'static str,
    /// NAMESPACE/NAME.
    pub target: String,
    /// The reason codes the answer may have.
    pub reasons: &'static [&'static str],
}

impl WorkloadCase {
    /// The arguments after `kubectl diag run`.
    pub fn args(&self) -> Vec<String> {
        vec![
            format!("--{}", self.flag),
            self.target.clone(),
            "-o".into(),
            "json".into(),
        ]
    }
}

/// Polls `check` until it gives a value; panics naming `what` after [`WORKLOAD_TIMEOUT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let begin = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            begin.elapsed() < WORKLOAD_TIMEOUT,
            "{what} did not happen within {WORKLOAD_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A busybox container that sleeps and stops at once on SIGTERM.
pub fn sleeper() -> Value {
    json!({"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]})
}

pub fn template(app: &str, container: Value) -> Value {
    json!({"metadata": {"labels": {"app": app}},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [container]}})
}

fn deployment(name: &str, replicas: i32, container: Value) -> Deployment {
    from(
        json!({"metadata": {"name": name}, "spec": {"replicas": replicas,
        "selector": {"matchLabels": {"app": name}}, "template": template(name, container)}}),
    )
}

/// A Deployment of 2 and a StatefulSet of 1 in a namespace whose ResourceQuota allows 1 pod:
/// the ReplicaSet makes one and is refused the second, the StatefulSet is refused its first.
pub async fn over_quota(c: &Cluster) -> Vec<WorkloadCase> {
    let client = c.client().await;
    let ns = c.create_namespace("bench-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "tiny"}, "spec": {"hard": {"pods": "1"}}})),
        )
        .await
        .unwrap();
    // Until the quota controller writes its status, admission refuses every pod with "status
    // unknown": wait, so the refusal is the one measured.
    wait_for("the quota's status", || async {
        quotas
            .get("tiny")
            .await
            .ok()?
            .status?
            .hard
            .filter(|h| h.contains_key("pods"))
    })
    .await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 2, sleeper()))
        .await
        .unwrap();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    wait_for("the ReplicaSet's ReplicaFailure for the quota", || async {
        sets.list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|rs| {
                let st = rs.status.clone().unwrap_or_default();
                st.replicas == 1
                    && st.conditions.iter().flatten().any(|c| {
                        c.type_ == "ReplicaFailure"
                            && c.message
                                .as_deref()
                                .is_some_and(|m| m.contains("exceeded quota"))
                    })
            })
    })
    .await;
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "db"}, "spec": {"replicas": 1, "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}}, "template": template("db", sleeper())}})),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    wait_for("the StatefulSet's FailedCreate", || async {
        events
            .list(&ListParams::default().fields("involvedObject.name=db"))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("FailedCreate"))
    })
    .await;
    vec![
        WorkloadCase {
            name: "rollout-quota",
            flag: "deployment",
            target: format!("{ns}/web"),
            reasons: &["ResourceQuotaExceeded"],
        },
        WorkloadCase {
            name: "sts-quota",
            flag: "statefulset",
            target: format!("{ns}/db"),
            reasons: &["ResourceQuotaExceeded"],
        },
    ]
}

/// A Deployment whose pod waits for a ConfigMap that does not exist, past a 5 s deadline.
pub async fn rollout_never_ready(c: &Cluster) -> WorkloadCase {
    let client = c.client().await;
    let ns = c.create_namespace("bench-unready").await;
    let mut container = sleeper();
    container["envFrom"] = json!([{"configMapRef": {"name": "web-config"}}]);
    let mut d = deployment("web", 1, container);
    if let Some(spec) = d.spec.as_mut() {
        spec.progress_deadline_seconds = Some(5);
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    wait_for("ProgressDeadlineExceeded", || async {
        deployments
            .get("web")
            .await
            .ok()?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    })
    .await;
    WorkloadCase {
        name: "rollout-unready",
        flag: "deployment",
        target: format!("{ns}/web"),
        reasons: &["RolloutPodsNotReady"],
    }
}

/// A PodDisruptionBudget with minAvailable equal to its one pod: no eviction is allowed.
pub async fn disruption_budget_too_strict(c: &Cluster) -> WorkloadCase {
    let client = c.client().await;
    let ns = c.create_namespace("bench-pdb").await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 1, sleeper()))
        .await
        .unwrap();
    // policy/v1 is served from Kubernetes 1.21 on; the test cluster is 1.20.
    let resource = ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    };
    let pdbs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
    pdbs.patch(
        "web",
        &PatchParams::apply("kdiag-bench"),
        &Patch::Apply(
            json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        ),
    )
    .await
    .unwrap();
    wait_for(
        "the disruption controller's status, its pod healthy",
        || async {
            let o = tokio::time::timeout(Duration::from_secs(10), pdbs.get("web"))
                .await
                .ok()?
                .ok()?;
            let st = &o.data["status"];
            (st["expectedPods"] == 1 && st["currentHealthy"] == 1).then_some(())
        },
    )
    .await;
    WorkloadCase {
        name: "pdb-too-strict",
        flag: "pdb",
        target: format!("{ns}/web"),
        reasons: &["PodDisruptionBudgetTooStrict"],
    }
}

/// A Service whose only pod runs but fails its readiness probe, so its Endpoints hold no ready
/// address.
pub async fn service_without_ready_endpoints(c: &Cluster) -> WorkloadCase {
    let client = c.client().await;
    let ns = c.create_namespace("bench-service").await;
    let mut container = sleeper();
    container["readinessProbe"] = json!({"exec": {"command": ["false"]}, "periodSeconds": 1});
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 1, container))
        .await
        .unwrap();
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "web"},
                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "the pod running, not ready, in the Service's Endpoints",
        || async {
            let running = pods
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .iter()
                .any(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
            let not_ready = endpoints
                .get("web")
                .await
                .ok()?
                .subsets
                .iter()
                .flatten()
                .any(|s| {
                    s.not_ready_addresses
                        .as_ref()
                        .is_some_and(|a| !a.is_empty())
                });
            (running && not_ready).then_some(())
        },
    )
    .await;
    WorkloadCase {
        name: "service-unready",
        flag: "service",
        target: format!("{ns}/web"),
        reasons: &["ServiceNoReadyEndpoints"],
    }
}

/// A Job whose one attempt exits 3 with backoffLimit 0: the Job controller gives up.
pub async fn job_past_backoff_limit(c: &Cluster) -> WorkloadCase {
    let client = c.client().await;
    let ns = c.create_namespace("bench-job").await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &from(
            json!({"metadata": {"name": "migrate"}, "spec": {"backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "automountServiceAccountToken": false,
                "containers": [{"name": "migrate", "image": BUSYBOX_IMAGE,
                    "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c",
                        "echo 'relation \"users\" does not exist' >&2; exit 3"]}]}}}}),
        ),
    )
    .await
    .unwrap();
    wait_for("the Job's Failed condition", || async {
        jobs.get("migrate")
            .await
            .ok()?
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
    })
    .await;
    WorkloadCase {
        name: "job-backoff",
        flag: "job",
        target: format!("{ns}/migrate"),
        reasons: &["JobBackoffLimitExceeded"],
    }
}

/// Removes the taint from the node when dropped, also on a panic: the node is shared.
pub struct Taint<'a> {
    pub cluster: &'a Cluster,
    pub key: &'static str,
}

impl Drop for Taint<'_> {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl()
            .args([
                "taint",
                "node",
                self.cluster.node_name(),
                format!("{}-", self.key).as_str(),
            ])
            .output();
    }
}

/// Taints the node NoSchedule and creates a DaemonSet that does not tolerate it. NoSchedule
/// only keeps new pods off, so nothing else may need scheduling while the returned guard lives.
pub async fn daemonset_kept_off_by_taint(c: &Cluster) -> (WorkloadCase, Taint<'_>) {
    let client = c.client().await;
    let ns = c.create_namespace("bench-daemonset").await;
    let out = c
        .kubectl()
        .args([
            "taint",
            "node",
            c.node_name(),
            "kdiag.test/dedicated=workloads:NoSchedule",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl taint: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taint = Taint {
        cluster: c,
        key: "kdiag.test/dedicated",
    };
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    daemonsets
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "agent"}, "spec": {
                "selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", sleeper())}})),
        )
        .await
        .unwrap();
    // The DaemonSet controller has seen it, and the taint, once it reports its generation.
    wait_for("the DaemonSet controller's status", || async {
        let st = daemonsets.get("agent").await.ok()?.status?;
        (st.observed_generation == Some(1)).then_some(())
    })
    .await;
    (
        WorkloadCase {
            name: "daemonset-taint",
            flag: "daemonset",
            target: format!("{ns}/agent"),
            reasons: &["DaemonSetTaintNotTolerated"],
        },
        taint,
    )
}

/// A ResourceQuota on requests.cpu in a namespace whose Deployment's pods set no requests: the
/// quota admission refuses every pod of its ReplicaSet (as the test in triage_workloads).
pub async fn quota_missing_requests(c: &Cluster) -> WorkloadCase {
    let client = c.client().await;
    let ns = c.create_namespace("bench-requests").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas
        .create(
            &PostParams::default(),
            &from(
                json!({"metadata": {"name": "compute"}, "spec": {"hard": {"requests.cpu": "1"}}}),
            ),
        )
        .await
        .unwrap();
    // Before its status is written the quota refuses pods as "status unknown", another answer.
    wait_for("the requests quota's status", || async {
        quotas
            .get("compute")
            .await
            .ok()?
            .status?
            .hard
            .filter(|h| h.contains_key("requests.cpu"))
    })
    .await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment("web", 1, sleeper()))
        .await
        .unwrap();
    replica_failure(&client, &ns, "web", "must specify").await;
    WorkloadCase {
        name: "quota-requests",
        flag: "deployment",
        target: format!("{ns}/web"),
        reasons: &["ResourceQuotaMissingRequests"],
    }
}

/// Waits until the ReplicaSet of Deployment `app` has a ReplicaFailure whose message holds
/// `needle`.
async fn replica_failure(client: &kube::Client, ns: &str, app: &str, needle: &str) {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("ReplicaFailure on {app}'s ReplicaSet"), || async {
        sets.list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .ok()?
            .items
            .into_iter()
            .find(|rs| {
                rs.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| {
                        c.type_ == "ReplicaFailure"
                            && c.status == "True"
                            && c.message.as_deref().is_some_and(|m| m.contains(needle))
                    })
            })
    })
    .await;
}

/// Two Deployments in a namespace of their own whose pods a ValidatingWebhookConfiguration
/// refuses: one webhook (served by this process, [`super::webhook::denying_webhook`]) denies
/// them, the other's Service does not exist under failurePolicy Fail. Scoped to pods created in
/// this namespace with these `app` labels only; the returned guard deletes the configuration,
/// so it must live until the classes are timed.
pub async fn refused_by_admission_webhooks(
    c: &Cluster,
) -> (Vec<WorkloadCase>, super::webhook::WebhookConfiguration<'_>) {
    use super::webhook::{DENIAL, WebhookConfiguration, denying_webhook, wait_refused, webhook};
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Namespace;
    let client = c.client().await;
    let ns = c.create_namespace("bench-webhook").await;
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kdiag.test/webhook-scope": ns}}})),
        )
        .await
        .unwrap();
    let (port, ca) = denying_webhook().await;
    let name = format!("kdiag-bench-{ns}");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": name}, "webhooks": [
                webhook("deny.kdiag.test", &ns, "denied", json!({
                    "url": format!("https://127.0.0.1:{port}/deny"),
                    "caBundle": k8s_openapi::ByteString(ca.into_bytes())})),
                webhook("gone.kdiag.test", &ns, "unreachable", json!({
                    "service": {"namespace": ns, "name": "kdiag-gone", "path": "/validate"}})),
            ]})),
        )
        .await
        .unwrap();
    let guard = WebhookConfiguration { cluster: c, name };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_refused(&pods, "denied", DENIAL).await;
    wait_refused(&pods, "unreachable", "failed calling webhook").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for app in ["denied", "unreachable"] {
        deployments
            .create(&PostParams::default(), &deployment(app, 1, sleeper()))
            .await
            .unwrap();
    }
    replica_failure(&client, &ns, "denied", DENIAL).await;
    replica_failure(&client, &ns, "unreachable", "failed calling webhook").await;
    let cases = vec![
        WorkloadCase {
            name: "webhook-denies",
            flag: "deployment",
            target: format!("{ns}/denied"),
            reasons: &["PodCreationDenied"],
        },
        WorkloadCase {
            name: "webhook-failing",
            flag: "deployment",
            target: format!("{ns}/unreachable"),
            reasons: &["AdmissionWebhookFailing"],
        },
    ];
    (cases, guard)
}
