//! Workload-level causes on the same real cluster as the pod triage (tests/triage.rs): the
//! Deployment, ReplicaSet, StatefulSet, DaemonSet, disruption and quota controllers and the
//! scheduler really run. Each fault is made to happen, then `kdiag diag run --deployment …`
//! (the built binary, as an operator types it) must name the object, the fault and the
//! evidence. These need no kdiag controller or agent: the CLI judges the objects itself.

mod admission;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Namespace, Node, ResourceQuota};
use kdiag_testenv::{Cluster, cluster};
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::triage_support::workloads::{Taint, from, sleeper, template, wait_for};
use crate::triage_support::{Ran, kdiag_binary};

/// `kdiag diag run <args>` against the cluster.
async fn diag_run(c: &Cluster, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(kdiag_binary())
        .args(["diag", "run"])
        .args(args)
        .env("KUBECONFIG", c.kubeconfig_path())
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("the kdiag binary runs");
    let ran = Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    // The printed answers, for docs/triage.md's examples (cargo test … -- --nocapture).
    eprintln!("$ kubectl diag run {}\n{}", args.join(" "), ran.stdout);
    ran
}

async fn delete_namespace(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn a_rollout_over_the_namespaces_pod_quota_names_the_replicaset_the_quota_and_what_it_lacks()
{
    let c = cluster().await;
    let client = c.client().await;
    let ns = c.create_namespace("rollout-quota").await;
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    quotas
        .create(
            &Default::default(),
            &from(json!({"metadata": {"name": "tiny"}, "spec": {"hard": {"pods": "1"}}})),
        )
        .await
        .unwrap();
    // Until the quota controller has written its status, admission refuses every pod with
    // "status unknown": wait for it so the refusal is the one this test is about.
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
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &Default::default(),
            &from(json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
                "selector": {"matchLabels": {"app": "web"}}, "template": template("web", sleeper())}})),
        )
        .await
        .unwrap();
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let rs = wait_for(
        "the ReplicaSet's ReplicaFailure with one pod made",
        || async {
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
        },
    )
    .await;
    let rs = rs.metadata.name.unwrap();

    let ran = diag_run(c, &["--deployment", &format!("{ns}/web")]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   Deployment {ns}/web cannot create its pods (1 of 2 exist): its ReplicaSet {ns}/{rs} is refused by ResourceQuota {ns}/tiny, which has no room for pods (a pod asks 1, 1 of 1 used)"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout.contains("  Reason:     ResourceQuotaExceeded"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "- [ResourceQuota] resourcequota/{ns}/tiny: hard pods=1; used pods=1"
        )),
        "{ran}"
    );

    // A StatefulSet in the same namespace: the quota's one pod is taken, so its first pod is
    // refused, and it says so in its own Events.
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(
            &Default::default(),
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
    let ran = diag_run(c, &["--statefulset", "db", "-n", &ns, "-o", "json"]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let v: Value = serde_json::from_str(&ran.stdout).expect("-o json prints JSON");
    assert_eq!(v["statefulset"], json!(format!("{ns}/db")));
    assert_eq!(v["rootCause"]["reason"], "ResourceQuotaExceeded", "{v:#}");
    assert_eq!(
        v["rootCause"]["summary"],
        json!(format!(
            "StatefulSet {ns}/db cannot create its pods (0 of 1 exist): it is refused by ResourceQuota {ns}/tiny, which has no room for pods (a pod asks 1, 1 of 1 used)"
        ))
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_rollout_whose_pod_never_gets_ready_points_at_that_pods_cause_and_its_deadline() {
    let c = cluster().await;
    let client = c.client().await;
    let ns = c.create_namespace("rollout-unready").await;
    let mut container = sleeper();
    container["envFrom"] = json!([{"configMapRef": {"name": "web-config"}}]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &Default::default(),
            &from(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1, "progressDeadlineSeconds": 5,
                "selector": {"matchLabels": {"app": "web"}}, "template": template("web", container)}})),
        )
        .await
        .unwrap();
    wait_for("ProgressDeadlineExceeded", || async {
        let d = deployments.get("web").await.ok()?;
        d.status?
            .conditions?
            .into_iter()
            .find(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    })
    .await;
    let ran = diag_run(c, &["--deployment", "web", "-n", &ns]).await;
    assert_eq!(ran.code, 0, "{ran}");
    let first = ran.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "Root cause:   Deployment {ns}/web has 0 of 1 pods ready: pod {ns}/web-"
        )) && first.contains(
            "is not ready: container app is waiting with CreateContainerConfigError: configmap \"web-config\" not found"
        ) && first.contains("it gave up after its progress deadline of 5 s"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains("  Reason:     RolloutPodsNotReady"),
        "{ran}"
    );
    assert!(ran.stdout.contains("kubectl diag run --pod"), "{ran}");
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_daemonset_kept_off_a_tainted_node_names_the_node_and_the_taint_it_does_not_tolerate() {
    let c = cluster().await;
    let client = c.client().await;
    let node = c.node_name().to_owned();
    let ns = c.create_namespace("daemonset").await;
    // NoSchedule only: NoExecute would evict the other tests' pods.
    let out = c
        .kubectl()
        .args([
            "taint",
            "node",
            node.as_str(),
            "kdiag.test/dedicated=workloads:NoSchedule",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let taint = Taint {
        cluster: c,
        key: "kdiag.test/dedicated",
    };
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
    daemonsets
        .create(
            &Default::default(),
            &from(json!({"metadata": {"name": "agent"}, "spec": {
                "selector": {"matchLabels": {"app": "agent"}}, "template": template("agent", sleeper())}})),
        )
        .await
        .unwrap();
    // The DaemonSet controller has seen it (and the taint) once it reports its generation.
    wait_for("the DaemonSet controller's status", || async {
        let st = daemonsets.get("agent").await.ok()?.status?;
        (st.observed_generation == Some(1)).then_some(())
    })
    .await;
    let ran = diag_run(c, &["--daemonset", &format!("{ns}/agent")]).await;
    drop(taint);
    assert_eq!(ran.code, 0, "{ran}");
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   DaemonSet {ns}/agent runs on 0 of {nodes} node(s): it does not tolerate the taints of node {node} (kdiag.test/dedicated=workloads:NoSchedule)"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout
            .contains("  Reason:     DaemonSetTaintNotTolerated"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "- [NodeTaints] node/{node}: taints the DaemonSet does not tolerate: kdiag.test/dedicated=workloads:NoSchedule"
        )),
        "{ran}"
    );

    // Untainted, the DaemonSet gets its pod; once it is ready nothing is wrong (exit code 1).
    wait_for("the DaemonSet's pod ready", || async {
        let st = daemonsets.get("agent").await.ok()?.status?;
        (st.number_ready == 1).then_some(())
    })
    .await;
    let ran = diag_run(c, &["--daemonset", &format!("{ns}/agent")]).await;
    assert_eq!(ran.code, 1, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "no cause found: DaemonSet {ns}/agent runs ready on 1 of 1"
        )),
        "{ran}"
    );
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
async fn a_disruption_budget_as_large_as_its_pods_allows_no_eviction_and_names_the_pods_it_protects()
 {
    let c = cluster().await;
    let client = c.client().await;
    let node = c.node_name().to_owned();
    let ns = c.create_namespace("pdb").await;
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(
            &Default::default(),
            &from(json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
                "selector": {"matchLabels": {"app": "web"}}, "template": template("web", sleeper())}})),
        )
        .await
        .unwrap();
    // policy/v1 is served from Kubernetes 1.21 on; this cluster is 1.20.
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
        &PatchParams::apply("kdiag-test"),
        &Patch::Apply(
            json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "web"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        ),
    )
    .await
    .unwrap();
    wait_for(
        "the disruption controller's status with the pod healthy",
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
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let pod = pods[0].metadata.name.clone().unwrap();

    let ran = diag_run(c, &["--pdb", &format!("{ns}/web")]).await;
    assert_eq!(ran.code, 0, "{ran}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Root cause:   PodDisruptionBudget {ns}/web allows no eviction (disruptionsAllowed 0), so draining the nodes of its pods waits forever: its minAvailable 1 requires all 1 pod(s) it protects to stay healthy ({pod} on node {node})"
        )),
        "{ran}"
    );
    assert!(
        ran.stdout
            .contains("  Reason:     PodDisruptionBudgetTooStrict"),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "- [PodDisruptionBudgetStatus] poddisruptionbudget/{ns}/web: minAvailable 1; 1 pod(s) expected, 1 healthy, 1 must stay healthy"
        )),
        "{ran}"
    );
    delete_namespace(&client, &ns).await;
}
