//! Probes triggered by change on a real apiserver, with the controller running as its own
//! ServiceAccount (config/deploy's RBAC): a finished rollout, a ConfigMap's data changing, a
//! Node's Ready flip run the probe
//! once as a ProbeRun with trigger Change that records what changed; changes within the quiet
//! period are one run; changes no trigger matches run nothing; triggers on another namespace are
//! refused. There is no controller-manager here: a rollout finishes when the test writes the
//! workload's status, as the Deployment controller would.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kdiag_api::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Waits for the probe's TriggersValid condition to have `status`, and returns it.
async fn wait_triggers_valid(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    status: &str,
) -> ProbeCondition {
    let api: Api<Probe> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = api.get(probe).await.unwrap();
        let c = p.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "TriggersValid")
                .cloned()
        });
        if let Some(c) = c.as_ref().filter(|c| c.status == status) {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{probe} never had TriggersValid={status}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The probe's runs started by change, once `done` says they are what the test waits for.
async fn wait_change_runs(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    what: &str,
    done: impl Fn(&[ProbeRun]) -> bool,
) -> Vec<ProbeRun> {
    let api: Api<ProbeRun> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut runs: Vec<ProbeRun> = api
            .list(&ListParams::default().labels(&format!("kdiag.io/probe={probe}")))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|r| r.spec.trigger == ProbeRunTrigger::Change)
            .collect();
        runs.sort_by_key(|r| r.metadata.creation_timestamp.clone());
        if done(&runs) {
            return runs;
        }
        assert!(Instant::now() < deadline, "{what}: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn finished(r: &ProbeRun) -> bool {
    r.status
        .as_ref()
        .is_some_and(|s| s.phase == ProbeRunPhase::Finished && !s.checkers.is_empty())
}

fn changed(r: &ProbeRun) -> Vec<String> {
    r.spec.changes.iter().map(|c| c.summary()).collect()
}

async fn create_deployment(client: &kube::Client, ns: &str, name: &str, app: &str) {
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "web:1"}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .unwrap();
    // Healthy before the probe watches it, as a Deployment controller would leave it.
    set_rollout(client, ns, name, 2).await;
}

/// A new image: a new generation, whose rollout has not started.
async fn change_image(client: &kube::Client, ns: &str, name: &str, image: &str) -> i64 {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [
                {"name": "c", "image": image}]}}}})),
        )
        .await
        .unwrap();
    d.metadata.generation.unwrap()
}

/// The Deployment controller's status once `updated` of 2 replicas run the current spec.
async fn set_rollout(client: &kube::Client, ns: &str, name: &str, updated: i64) {
    let api = Api::<Deployment>::namespaced(client.clone(), ns);
    let generation = api.get(name).await.unwrap().metadata.generation.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"observedGeneration": generation, "replicas": 2,
            "updatedReplicas": updated, "readyReplicas": 2, "availableReplicas": 2}}),
        ),
    )
    .await
    .unwrap();
}

/// A ConfigMap `name` holding `data`.
async fn create_configmap(client: &kube::Client, ns: &str, name: &str, data: serde_json::Value) {
    let map: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &map)
        .await
        .unwrap();
}

/// A merge patch of ConfigMap `name`.
async fn patch_configmap(client: &kube::Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// A probe with one native check that passes (a TCP port of the test), and `triggers`.
async fn probe_with_triggers(
    client: &kube::Client,
    ns: &str,
    name: &str,
    open: &tokio::net::TcpListener,
    triggers: serde_json::Value,
) {
    create_probe(
        client,
        ns,
        name,
        json!({"checks": [{"name": "web", "tcp": {"address": open.local_addr().unwrap().to_string()}}],
            "triggers": triggers}),
    )
    .await;
    let c = wait_triggers_valid(client, ns, name, "True").await;
    assert_eq!(c.reason, "Watching", "{c:?}");
}

#[tokio::test]
async fn a_finished_rollout_runs_the_probe_once_and_the_run_records_what_triggered_it() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-rollout").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    create_deployment(&client, &ns, "web", "web").await;
    probe_with_triggers(
        &client,
        &ns,
        "after-rollout",
        &open,
        json!([{"kind": "Deployment", "selector": {"matchLabels": {"app": "web"}}, "quietSeconds": 1}]),
    )
    .await;

    change_image(&client, &ns, "web", "web:2").await;
    set_rollout(&client, &ns, "web", 1).await;
    set_rollout(&client, &ns, "web", 2).await;
    let runs = wait_change_runs(
        &client,
        &ns,
        "after-rollout",
        "the run of the rollout",
        |r| r.iter().any(finished),
    )
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert_eq!(
        changed(run),
        [format!("Deployment {ns}/web RolloutFinished")],
        "the spec change itself is not a RolloutFinished, nor is one pod of two"
    );
    assert_eq!(run.spec.changes[0].detail, "generation 2, 2/2 ready");
    let status = run.status.clone().unwrap();
    assert_eq!(status.result, Some(CheckerStatus::Pass), "{status:?}");

    // The next rollout is the next run: the first made exactly one.
    change_image(&client, &ns, "web", "web:3").await;
    set_rollout(&client, &ns, "web", 2).await;
    let runs = wait_change_runs(&client, &ns, "after-rollout", "the second rollout", |r| {
        r.len() >= 2 && r.iter().all(finished)
    })
    .await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(runs[1].spec.changes[0].detail, "generation 3, 2/2 ready");

    let (code, out, err) =
        kubectl_diag(cp, &["probe", "history", &format!("{ns}/after-rollout")]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("Change: Deployment web RolloutFinished"),
        "history shows what triggered each run: {out}"
    );
    let id = runs[0].name_any();
    let (code, out, _) = kubectl_diag(cp, &["probe", "history", "-n", &ns, "-i", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "Change:   Deployment {ns}/web RolloutFinished (generation 2, 2/2 ready) at "
        )),
        "{out}"
    );
    drop(open);
}

#[tokio::test]
async fn several_changes_within_the_quiet_period_are_one_run() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-quiet").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    for name in ["a", "b", "c"] {
        create_deployment(&client, &ns, name, "shop").await;
    }
    probe_with_triggers(
        &client,
        &ns,
        "shop",
        &open,
        json!([{"kind": "Deployment", "changes": ["SpecChanged", "RolloutFinished"], "quietSeconds": 3}]),
    )
    .await;
    // Three rollouts, each a spec change and a finish: six changes well within 3 s of each other.
    for name in ["a", "b", "c"] {
        change_image(&client, &ns, name, "web:2").await;
        set_rollout(&client, &ns, name, 2).await;
    }
    let runs = wait_change_runs(&client, &ns, "shop", "one run of six changes", |r| {
        r.iter().any(finished)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let mut got = changed(&runs[0]);
    got.sort();
    let mut want: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|n| {
            [
                format!("Deployment {ns}/{n} RolloutFinished"),
                format!("Deployment {ns}/{n} SpecChanged"),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(got, want);

    // Nothing more was pending: the next change is the next run, and only its own.
    change_image(&client, &ns, "a", "web:3").await;
    let runs = wait_change_runs(&client, &ns, "shop", "the run after", |r| {
        r.len() >= 2 && r.iter().all(finished)
    })
    .await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(
        changed(&runs[1]),
        [format!("Deployment {ns}/a SpecChanged")]
    );
    drop(open);
}

#[tokio::test]
async fn a_change_no_trigger_matches_runs_nothing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-nomatch").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    create_deployment(&client, &ns, "web", "web").await;
    create_deployment(&client, &ns, "batch", "batch").await;
    create_configmap(&client, &ns, "settings", json!({"level": "info"})).await;
    probe_with_triggers(
        &client,
        &ns,
        "web-only",
        &open,
        json!([
            {"kind": "Deployment", "selector": {"matchLabels": {"app": "web"}}, "quietSeconds": 1},
            {"kind": "ConfigMap", "name": "web-config", "quietSeconds": 1}
        ]),
    )
    .await;
    // Another Deployment's rollout, another ConfigMap's data, and web's pods changing without
    // a spec change: none is a change the triggers count.
    change_image(&client, &ns, "batch", "batch:2").await;
    set_rollout(&client, &ns, "batch", 2).await;
    patch_configmap(
        &client,
        &ns,
        "settings",
        json!({"data": {"level": "debug"}}),
    )
    .await;
    set_rollout(&client, &ns, "web", 1).await;
    set_rollout(&client, &ns, "web", 2).await;
    // Then one that counts: the only run is its own.
    change_image(&client, &ns, "web", "web:2").await;
    set_rollout(&client, &ns, "web", 2).await;
    let runs = wait_change_runs(&client, &ns, "web-only", "the run of web's rollout", |r| {
        r.iter().any(finished)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(
        changed(&runs[0]),
        [format!("Deployment {ns}/web RolloutFinished")]
    );
    drop(open);
}

#[tokio::test]
async fn a_configmaps_data_changing_runs_the_probe_once_and_its_labels_changing_does_not() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-configmap").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    create_configmap(&client, &ns, "web-config", json!({"level": "info"})).await;
    probe_with_triggers(
        &client,
        &ns,
        "config",
        &open,
        json!([{"kind": "ConfigMap", "name": "web-config", "quietSeconds": 1}]),
    )
    .await;
    // A label is not the data the workloads read: no run.
    patch_configmap(
        &client,
        &ns,
        "web-config",
        json!({"metadata": {"labels": {"owner": "team-a"}}}),
    )
    .await;
    // The data changing is: one run, which says so.
    patch_configmap(
        &client,
        &ns,
        "web-config",
        json!({"data": {"level": "debug"}}),
    )
    .await;
    let runs = wait_change_runs(&client, &ns, "config", "the run of the data change", |r| {
        r.iter().any(finished)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let c = &runs[0].spec.changes;
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(
        (
            c[0].kind.as_str(),
            c[0].name.as_str(),
            c[0].change.as_str(),
            c[0].detail.as_str()
        ),
        ("ConfigMap", "web-config", "SpecChanged", "data")
    );
    drop(open);
}

#[tokio::test]
async fn a_node_turning_not_ready_runs_a_probe_that_asks_for_it() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-node").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = format!("{ns}-n1");
    ensure_node(&client, &node).await;
    let nodes = Api::<Node>::all(client.clone());
    let ready = |status: &str| {
        json!({"status": {"conditions": [{"type": "Ready", "status": status,
            "reason": "KubeletReady", "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
            "lastTransitionTime": jiff::Timestamp::now().to_string()}]}})
    };
    nodes
        .patch_status(&node, &PatchParams::default(), &Patch::Merge(ready("True")))
        .await
        .unwrap();
    probe_with_triggers(
        &client,
        &ns,
        "nodes",
        &open,
        json!([{"kind": "Node", "name": node, "conditionTypes": ["Ready"], "quietSeconds": 1}]),
    )
    .await;
    // A heartbeat changes nothing that counts; the flip does.
    nodes
        .patch_status(&node, &PatchParams::default(), &Patch::Merge(ready("True")))
        .await
        .unwrap();
    nodes
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(ready("False")),
        )
        .await
        .unwrap();
    let runs = wait_change_runs(&client, &ns, "nodes", "the run of the Ready flip", |r| {
        r.iter().any(finished)
    })
    .await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let c = &runs[0].spec.changes[0];
    assert_eq!(
        (c.kind.as_str(), c.namespace.as_str(), c.name.as_str()),
        ("Node", "", node.as_str())
    );
    assert_eq!(
        (c.change.as_str(), c.detail.as_str()),
        ("ConditionChanged", "Ready True -> False")
    );
    nodes.delete(&node, &Default::default()).await.unwrap();
    drop(open);
}

#[tokio::test]
async fn a_trigger_on_another_namespace_is_refused_with_the_reason_and_runs_nothing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("trigger-foreign").await;
    let other = cp.create_namespace("trigger-other").await;
    let client = cp.client().await;
    create_probe(
        &client,
        &ns,
        "nosy",
        json!({"checks": [{"name": "api", "apiserver": {}}],
            "triggers": [{"kind": "Deployment", "namespace": other}]}),
    )
    .await;
    let c = wait_triggers_valid(&client, &ns, "nosy", "False").await;
    assert_eq!(c.reason, "InvalidTrigger");
    assert!(
        c.message
            .contains(&format!("namespace {other} is not the Probe's own ({ns})")),
        "{c:?}"
    );
}
