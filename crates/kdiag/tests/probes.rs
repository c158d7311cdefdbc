//! The ProbeStatus trigger on a real apiserver: a failing checker becomes one Abnormal per
//! episode and node, the agent diagnoses it, and the root cause lands next to the probe result.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kdiag_api::*;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn probe_source(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    let s: AbnormalSource = serde_json::from_value(
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap();
    Api::<AbnormalSource>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

async fn put_checkers(client: &kube::Client, ns: &str, name: &str, checkers: serde_json::Value) {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), ns);
    match api.get_opt(name).await.unwrap() {
        None => {
            let ps: ProbeStatus = serde_json::from_value(
                json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
                "metadata": {"name": name, "namespace": ns}, "spec": {"checkers": checkers}}),
            )
            .unwrap();
            api.create(&PostParams::default(), &ps).await.unwrap();
        }
        // As KubeProber's agent does: merge the results into spec.checkers.
        Some(_) => {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"checkers": checkers}})),
            )
            .await
            .unwrap();
        }
    }
}

async fn abnormals_of(client: &kube::Client, ns: &str) -> Vec<Abnormal> {
    Api::<Abnormal>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("kdiag.io/source=ProbeStatus"))
        .await
        .unwrap()
        .items
}

async fn wait_count(client: &kube::Client, ns: &str, n: usize) -> Vec<Abnormal> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = abnormals_of(client, ns).await;
        if list.len() == n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} Abnormals, have {}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// Waits until the trigger has handled the ProbeStatus as it is now: it writes the per-probe
/// summary (the worst checker's message) at the end of each pass, after any Abnormal it creates.
async fn wait_handled(client: &kube::Client, ns: &str, name: &str, message: &str) -> ProbeStatus {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ps = api.get(name).await.unwrap();
        if ps.status.as_ref().is_some_and(|s| s.message == message) {
            return ps;
        }
        assert!(
            Instant::now() < deadline,
            "the trigger never summarised {ns}/{name} as {message:?}: {:?}",
            ps.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_checker_turning_error_is_diagnosed_and_the_root_cause_sits_next_to_the_probe_result() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-flow").await;
    let client = cp.client().await;
    let node = format!("{ns}-node");
    let plugin = TestPlugin::start().await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "collect",
        plugin.port,
        "/echo/collected",
        5,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "Diagnoser",
        "find",
        plugin.port,
        "/root-cause/CoreDNSDown",
        5,
    )
    .await;
    probe_source(&client, &ns, "dns-failures", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns, "checker": "dns-.*"}, "nodeName": node}},
        "assignedInformationCollectors": [{"name": "collect"}], "assignedDiagnosers": [{"name": "find"}]})).await;
    wait_source_valid(&client, &ns, "dns-failures").await;
    let agent = TestAgent::start(cp, &node).await;

    let started = Instant::now();
    put_checkers(&client, &ns, "k8s", json!([
        {"name": "dns-resolution-check", "status": "ERROR", "message": "lookup kubernetes.default: i/o timeout", "lastRun": now()},
        {"name": "deployment-service-check", "status": "PASS", "lastRun": now()}])).await;
    let created = wait_count(&client, &ns, 1).await;
    let abnormal_created = started.elapsed();
    let a = &created[0];
    assert_eq!(a.spec.source, AbnormalSourceType::ProbeStatus);
    let reference = a.spec.probe_status.clone().unwrap();
    assert_eq!(
        (
            reference.name.as_str(),
            reference.checker.as_str(),
            reference.status.as_str()
        ),
        ("k8s", "dns-resolution-check", "ERROR")
    );
    assert_eq!(a.spec.node_name, node);

    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    let diagnosis = loop {
        let ps = api.get("k8s").await.unwrap();
        let d = ps
            .spec
            .checkers
            .iter()
            .find(|c| c.name == "dns-resolution-check")
            .and_then(|c| c.diagnosis.clone());
        if let Some(d) = d.filter(|d| d.phase == "Succeeded") {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "no diagnosis on the checker: {:#?}",
            ps.spec.checkers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "probe ERROR → Abnormal in {abnormal_created:?}; → root cause on the ProbeStatus in {:?}",
        started.elapsed()
    );
    assert_eq!(
        diagnosis.abnormal,
        format!("{ns}/{}", kube::ResourceExt::name_any(a))
    );
    assert_eq!(diagnosis.root_cause, "found CoreDNSDown");
    // The per-probe summary KubeProber stopped writing: the worst checker.
    let ps = api.get("k8s").await.unwrap();
    let summary = ps.status.unwrap();
    assert_eq!(summary.status, Some(CheckerStatus::Error));
    assert_eq!(summary.message, "lookup kubernetes.default: i/o timeout");
    // kubectl shows it.
    let out = cp
        .kubectl()
        .args(["get", "probestatus", "-n", &ns])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ERROR") && table.contains("i/o timeout"),
        "{table}"
    );
    agent.stop().await;
}

#[tokio::test]
async fn repeated_error_reports_make_no_new_abnormal_and_pass_then_error_makes_a_second() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-episodes").await;
    let client = cp.client().await;
    ensure_node(&client, "n1").await;
    probe_source(&client, &ns, "all", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": "n1"}}})).await;
    wait_source_valid(&client, &ns, "all").await;
    put_checkers(&client, &ns, "etcd", json!([{"name": "etcd-put", "status": "ERROR", "message": "context deadline exceeded", "lastRun": now()}])).await;
    wait_count(&client, &ns, 1).await;
    // Each report is handled before the next is sent, so none is folded into another.
    for i in 0..5 {
        let message = format!("context deadline exceeded ({i})");
        put_checkers(
            &client,
            &ns,
            "etcd",
            json!([{"name": "etcd-put", "status": "ERROR", "message": message, "lastRun": now()}]),
        )
        .await;
        wait_handled(&client, &ns, "etcd", &message).await;
    }
    assert_eq!(
        abnormals_of(&client, &ns).await.len(),
        1,
        "one episode, one Abnormal, however often it reports"
    );
    put_checkers(
        &client,
        &ns,
        "etcd",
        json!([{"name": "etcd-put", "status": "PASS", "lastRun": now()}]),
    )
    .await;
    // The episode ends when the trigger sees the PASS: it drops the episode.
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api
        .get("etcd")
        .await
        .unwrap()
        .metadata
        .annotations
        .is_some_and(|a| {
            a.get("kdiag.io/episodes")
                .is_some_and(|e| e.contains("etcd-put"))
        })
    {
        assert!(Instant::now() < deadline, "the episode never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    put_checkers(
        &client,
        &ns,
        "etcd",
        json!([{"name": "etcd-put", "status": "ERROR", "message": "again", "lastRun": now()}]),
    )
    .await;
    wait_count(&client, &ns, 2).await;
}

#[tokio::test]
async fn a_node_check_naming_three_nodes_makes_three_abnormals() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-nodes").await;
    let client = cp.client().await;
    for n in ["worker-1", "worker-2", "worker-3"] {
        ensure_node(&client, n).await;
    }
    probe_source(&client, &ns, "nodes", json!({"priority": 10, "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}}}})).await;
    wait_source_valid(&client, &ns, "nodes").await;
    put_checkers(&client, &ns, "host", json!([{"name": "kubelet-active", "status": "ERROR",
        "message": "kubelet service not active, error node: [ worker-1 worker-2 worker-3 ]", "lastRun": now()}])).await;
    let list = wait_count(&client, &ns, 3).await;
    let mut nodes: Vec<String> = list.iter().map(|a| a.spec.node_name.clone()).collect();
    nodes.sort();
    assert_eq!(nodes, ["worker-1", "worker-2", "worker-3"]);
}

#[tokio::test]
async fn nodes_a_message_names_that_do_not_exist_get_no_abnormal_and_no_budget() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-ghosts").await;
    let client = cp.client().await;
    let real = format!("{ns}-real");
    ensure_node(&client, &real).await;
    probe_source(&client, &ns, "nodes", json!({"priority": 10, "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}}}})).await;
    wait_source_valid(&client, &ns, "nodes").await;
    // Twenty invented names, more than a probe's budget (a burst of 10): were they taken from
    // it, the real node would get nothing.
    let ghosts: Vec<String> = (0..20).map(|i| format!("{ns}-ghost-{i}")).collect();
    let message = format!("kubelet down, error node: [ {} {real} ]", ghosts.join(" "));
    put_checkers(
        &client,
        &ns,
        "host",
        json!([{"name": "kubelet-active", "status": "ERROR",
        "message": message, "lastRun": now()}]),
    )
    .await;
    let list = wait_count(&client, &ns, 1).await;
    assert_eq!(list[0].spec.node_name, real);
    let ps = wait_handled(&client, &ns, "host", &message).await;
    let episodes = ps.metadata.annotations.unwrap()["kdiag.io/episodes"].clone();
    assert!(
        episodes.contains("no Node of this cluster") && episodes.contains(&ghosts[19]),
        "{episodes}"
    );
    assert_eq!(abnormals_of(&client, &ns).await.len(), 1);
}

#[tokio::test]
async fn without_a_node_the_probe_pods_node_is_used() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-pod").await;
    let client = cp.client().await;
    ensure_node(&client, "probe-node").await;
    cp.service_account_token(&ns, "default").await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "dns-probe-abc", "namespace": ns,
                     "labels": {"app": "kubeprober.erda.cloud", "kubeprober.erda.cloud/probe-name": "dns", "kubeprober.erda.cloud/probe-namespace": ns}},
        "spec": {"nodeName": "probe-node", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "probe"}]}}))
    .unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    probe_source(&client, &ns, "p", json!({"priority": 10, "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}}}})).await;
    wait_source_valid(&client, &ns, "p").await;
    put_checkers(
        &client,
        &ns,
        "dns",
        json!([{"name": "lookup", "status": "ERROR", "message": "SERVFAIL", "lastRun": now()}]),
    )
    .await;
    let list = wait_count(&client, &ns, 1).await;
    assert_eq!(list[0].spec.node_name, "probe-node");
}

#[tokio::test]
async fn a_storm_of_failing_checkers_is_held_to_the_probe_budget_and_the_rest_counted() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-storm").await;
    let client = cp.client().await;
    ensure_node(&client, &format!("{ns}-node")).await;
    probe_source(&client, &ns, "storm", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": format!("{ns}-node")}}})).await;
    wait_source_valid(&client, &ns, "storm").await;
    let checkers: Vec<_> = (0..30).map(|i| json!({"name": format!("c{i:02}"), "status": "ERROR", "message": "down", "lastRun": now()})).collect();
    put_checkers(&client, &ns, "big", json!(checkers)).await;
    wait_count(&client, &ns, 10).await;
    // A canary report on the same probe, sent last: the same failures again, reworded. Once the
    // trigger has summarised it, it has handled the storm before it.
    let again: Vec<_> = (0..30).map(|i| json!({"name": format!("c{i:02}"), "status": "ERROR", "message": "still down", "lastRun": now()})).collect();
    put_checkers(&client, &ns, "big", json!(again)).await;
    let ps = wait_handled(&client, &ns, "big", "still down").await;
    assert_eq!(
        abnormals_of(&client, &ns).await.len(),
        10,
        "the default per-probe budget is a burst of 10"
    );
    assert_eq!(
        ps.metadata.annotations.unwrap()["kdiag.io/suppressed"],
        "20"
    );
}

#[tokio::test]
async fn an_invalid_pattern_is_reported_on_the_sources_status() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("bad-source").await;
    let client = cp.client().await;
    probe_source(&client, &ns, "broken", json!({"sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"checker": "dns-(.*"}}}})).await;
    let api: Api<AbnormalSource> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = api.get("broken").await.unwrap();
        if let Some(c) = s
            .status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Valid"))
        {
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                ("False", "InvalidTemplate")
            );
            assert!(
                c.message
                    .contains("spec.sourceTemplate.probeStatusTemplate.match.checker"),
                "{}",
                c.message
            );
            break;
        }
        assert!(Instant::now() < deadline, "no Valid condition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn with_kubeprobers_own_crd_the_diagnosis_goes_into_an_annotation() {
    // A control plane of its own, where the ProbeStatus CRD prunes kdiag's diagnosis field as
    // KubeProber's CRD does.
    let cp = kdiag_testenv::ControlPlane::start().await.unwrap();
    let mut crds = kdiag_api::crds::all();
    for crd in &mut crds {
        if crd.spec.names.kind == "ProbeStatus" {
            let mut v = serde_json::to_value(&*crd).unwrap();
            v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["checkers"]["items"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("diagnosis");
            *crd = serde_json::from_value(v).unwrap();
        }
    }
    cp.apply_crds(&crds).await.unwrap();
    kubectl_apply(&cp, "config/deploy/00-namespace.yaml");
    kubectl_apply(&cp, "config/deploy");
    remove_webhook(cp.kubectl());
    let client = cp.client().await;
    let controller_client = service_account_client(&cp, "kdiag-controller").await;
    let (_h, driver) = kdiag_controller::start(
        controller_client,
        Default::default(),
        kdiag_runtime::builtin::Builtins::standard(),
        std::sync::Arc::new(kdiag_runtime::metrics::Metrics::new()),
        tokio_util::sync::CancellationToken::new(),
    );
    let controller = tokio::spawn(driver);
    let ns = cp.create_namespace("pruned").await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(&cp, &node).await;
    probe_source(&client, &ns, "p", json!({"priority": 10, "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {}, "nodeName": node}}})).await;
    wait_source_valid(&client, &ns, "p").await;
    put_checkers(&client, &ns, "k8s", json!([{"name": "namespace create", "status": "ERROR", "message": "webhook timed out", "lastRun": now()}])).await;
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = api.get("k8s").await.unwrap();
        let diagnoses: Option<serde_json::Value> = ps
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kdiag.io/diagnoses"))
            .map(|v| serde_json::from_str(v).unwrap());
        if let Some(d) = diagnoses.filter(|d| d["namespace create"]["phase"] == "Succeeded") {
            assert!(
                d["namespace create"]["abnormal"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{ns}/probe-k8s-namespace-create-"))
            );
            assert!(
                ps.spec.checkers[0].diagnosis.is_none(),
                "the pruned field stays empty"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no diagnosis annotation: {:?}",
            ps.metadata.annotations
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.stop().await;
    controller.abort();
}
