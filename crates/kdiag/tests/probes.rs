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
    // The controller's look at cluster DNS leads; the node's diagnoser follows.
    assert!(
        diagnosis
            .root_cause
            .ends_with(&format!("node {node}: found CoreDNSDown")),
        "{}",
        diagnosis.root_cause
    );
    assert!(diagnosis.reason.starts_with("ClusterDNS"), "{diagnosis:?}");
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
    // Classified as a node check of the kubelet: the node triage is chosen for each node.
    assert!(
        list.iter().all(|a| a
            .spec
            .assigned_diagnosers
            .iter()
            .any(|d| d.name == "node-triage-diagnoser")),
        "{:?}",
        list[0].spec.assigned_diagnosers
    );
    let context = list[0].spec.context.clone().unwrap_or_default();
    assert_eq!(
        context["probeFailure"]["classification"]["fault"],
        json!("NodesFailing")
    );
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

/// Waits until kdiag has written a finished diagnosis next to `checker`.
async fn wait_diagnosed(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    checker: &str,
) -> CheckerDiagnosis {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = api.get(probe).await.unwrap();
        let d = ps
            .spec
            .checkers
            .iter()
            .find(|c| c.name == checker)
            .and_then(|c| c.diagnosis.clone());
        if let Some(d) = d.filter(|d| d.phase == "Succeeded") {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no diagnosis on the checker: {:#?}",
            ps.spec.checkers
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_release_gate_fails_with_the_root_cause_while_a_checker_fails_and_passes_after_it_recovers()
 {
    let cp = with_controller().await;
    let ns = cp.create_namespace("gate").await;
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
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": node}},
        "assignedInformationCollectors": [{"name": "collect"}], "assignedDiagnosers": [{"name": "find"}]})).await;
    wait_source_valid(&client, &ns, "dns-failures").await;
    let agent = TestAgent::start(cp, &node).await;

    put_checkers(&client, &ns, "k8s", json!([
        {"name": "dns-resolution-check", "status": "ERROR", "message": "lookup kubernetes.default: i/o timeout", "lastRun": now()},
        {"name": "deployment-service-check", "status": "PASS", "lastRun": now()}])).await;
    wait_diagnosed(&client, &ns, "k8s", "dns-resolution-check").await;
    let (code, out, err) = kubectl_diag(cp, &["gate", "-n", &ns, "--probes", "k8s"]).await;
    assert_eq!(code, 4, "failing: {out}{err}");
    let row = out
        .lines()
        .find(|l| l.contains("dns-resolution-check"))
        .unwrap_or_else(|| panic!("the failing checker is named: {out}"));
    assert!(
        // The controller's finding about cluster DNS leads the root cause (the node's follows).
        row.contains("ERROR")
            && row.contains("failing")
            && row.contains("lookups of kubernetes.default fail (i/o timeout): the cluster DNS"),
        "with its status and root cause: {out}"
    );
    assert!(
        !out.contains("deployment-service-check"),
        "a passing checker holds nothing: {out}"
    );
    assert!(out.contains("gate closed (failing, exit 4)"), "{out}");

    put_checkers(
        &client,
        &ns,
        "k8s",
        json!([
        {"name": "dns-resolution-check", "status": "PASS", "lastRun": now()},
        {"name": "deployment-service-check", "status": "PASS", "lastRun": now()}]),
    )
    .await;
    let (code, out, err) = kubectl_diag(cp, &["gate", "-n", &ns, "--probes", "k8s"]).await;
    assert_eq!(code, 0, "recovered: {out}{err}");
    assert!(
        out.starts_with("gate passed: 1 probe(s), 2 checker(s)"),
        "{out}"
    );

    let hour_ago = (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)).to_string();
    put_checkers(
        &client,
        &ns,
        "k8s",
        json!([
        {"name": "dns-resolution-check", "status": "PASS", "lastRun": hour_ago},
        {"name": "deployment-service-check", "status": "PASS", "lastRun": hour_ago}]),
    )
    .await;
    let (code, out, err) = kubectl_diag(
        cp,
        &["gate", "-n", &ns, "--probes", "k8s", "--max-age", "10m"],
    )
    .await;
    assert_eq!(code, 5, "stale: {out}{err}");
    assert!(out.contains("stale"), "{out}");
    let (code, out, _) = kubectl_diag(
        cp,
        &["gate", "-n", &ns, "--probes", "k8s", "--max-age", "2h"],
    )
    .await;
    assert_eq!(code, 0, "fresh enough for a longer max age: {out}");

    let (code, out, err) =
        kubectl_diag(cp, &["gate", "-n", &ns, "--probes", "no-such-probe"]).await;
    assert_eq!(code, 6, "unknown: {out}{err}");
    assert!(out.contains("no ProbeStatus"), "{out}");
    agent.stop().await;
}

#[tokio::test]
async fn the_gate_over_http_needs_a_token_allowed_to_get_probestatuses_and_answers_as_the_cli() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("gate-http").await;
    let client = cp.client().await;
    // WARN: failing for the gate, and no Abnormal from the default source (ERROR only).
    put_checkers(
        &client,
        &ns,
        "k8s",
        json!([
        {"name": "etcd", "status": "WARN", "message": "slow: 1.4s", "lastRun": now()},
        {"name": "dns", "status": "PASS", "lastRun": now()}]),
    )
    .await;
    let url = format!(
        "{}/gate?namespace={ns}&probes=k8s,missing&maxAge=10m",
        controller_url()
    );

    let (status, body) = reqwest_get(&url).await;
    assert_eq!(status, 401, "no token: {body}");
    let nobody = cp.service_account_token(&ns, "nobody").await;
    let (status, body) = get_with_token(&url, &nobody).await;
    assert_eq!(status, 403, "a token without the right: {body}");
    assert!(
        body.contains("kubectl auth can-i get probestatuses.kubeprober.erda.cloud"),
        "{body}"
    );

    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": {"name": "gate-reader", "namespace": ns},
        "rules": [{"apiGroups": ["kubeprober.erda.cloud"], "resources": ["probestatuses"], "verbs": ["get"]}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "release-gate", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gate-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": ns}]
    }))
    .unwrap();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let deployer = cp.service_account_token(&ns, "deployer").await;
    let (status, body) = get_with_token(&url, &deployer).await;
    assert_eq!(status, 200, "{body}");
    let http: kdiag_api::gate::Verdict = serde_json::from_str(&body).unwrap();
    // The same question to the CLI.
    let (code, out, err) = kubectl_diag(
        cp,
        &[
            "gate",
            "-n",
            &ns,
            "--probes",
            "k8s,missing",
            "--max-age",
            "10m",
            "-o",
            "json",
        ],
    )
    .await;
    let cli: kdiag_api::gate::Verdict =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(i32::from(cli.exit_code), code);
    let shape = |v: &kdiag_api::gate::Verdict| {
        let probes: Vec<_> = v
            .probes
            .iter()
            .map(|p| {
                let checkers: Vec<_> = p
                    .checkers
                    .iter()
                    .map(|c| (c.name.clone(), c.reason))
                    .collect();
                (p.namespace.clone(), p.name.clone(), p.reason, checkers)
            })
            .collect();
        (v.pass, v.reason, v.exit_code, v.max_age_seconds, probes)
    };
    assert_eq!(shape(&http), shape(&cli), "{body}\n{out}");
    assert_eq!(
        (http.reason, http.exit_code),
        (kdiag_api::gate::Reason::Failing, 4),
        "a WARN fails the gate, before the missing probe's unknown: {body}"
    );

    // By the labels of the Probes: only the labelled one counts, from either side.
    let labelled: Probe = serde_json::from_value(json!({"apiVersion": "kubeprober.erda.cloud/v1",
        "kind": "Probe", "metadata": {"name": "k8s", "namespace": ns, "labels": {"tier": "release"}},
        "spec": {}}))
    .unwrap();
    Api::<Probe>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &labelled)
        .await
        .unwrap();
    put_checkers(
        &client,
        &ns,
        "unlabelled",
        json!([
        {"name": "x", "status": "ERROR", "message": "not asked about", "lastRun": now()}]),
    )
    .await;
    let url = format!(
        "{}/gate?namespace={ns}&selector=tier%3Drelease",
        controller_url()
    );
    let (status, body) = get_with_token(&url, &deployer).await;
    assert_eq!(status, 200, "{body}");
    let http: kdiag_api::gate::Verdict = serde_json::from_str(&body).unwrap();
    let (code, out, err) =
        kubectl_diag(cp, &["gate", "-n", &ns, "-l", "tier=release", "-o", "json"]).await;
    let cli: kdiag_api::gate::Verdict =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(code, 4, "{out}");
    assert_eq!(shape(&http), shape(&cli), "{body}\n{out}");
    let names: Vec<_> = cli.probes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["k8s"], "{out}");
}

async fn create_probe(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Probe {
    let p: Probe = serde_json::from_value(
        json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap();
    Api::<Probe>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap()
}

/// The probe's ProbeRuns once `done` says they are what the test waits for.
async fn wait_runs(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    what: &str,
    done: impl Fn(&[ProbeRun]) -> bool,
) -> Vec<ProbeRun> {
    let api: Api<ProbeRun> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = api
            .list(&ListParams::default().labels(&format!("kdiag.io/probe={probe}")))
            .await
            .unwrap()
            .items;
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
        .is_some_and(|s| s.phase == ProbeRunPhase::Finished)
}

#[tokio::test]
async fn a_manual_run_of_a_scheduled_probe_appears_in_history_with_its_results() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-run").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let probe = create_probe(&client, &ns, "health", json!({
        "policy": {"runInterval": 60},
        "checks": [
            {"name": "web", "tcp": {"address": open.local_addr().unwrap().to_string()}},
            {"name": "redis", "tcp": {"address": format!("127.0.0.1:{closed}"), "timeoutSeconds": 2}}
        ]})).await;
    // The schedule's first run, recorded by the runner.
    let scheduled = wait_runs(&client, &ns, "health", "the scheduled run", |r| {
        r.iter()
            .any(|r| r.spec.trigger == ProbeRunTrigger::Schedule && finished(r))
    })
    .await;
    assert_eq!(scheduled.len(), 1, "{scheduled:#?}");

    let (code, out, err) =
        kubectl_diag(cp, &["probe", "run", &format!("{ns}/health"), "--wait"]).await;
    assert_eq!(code, 4, "a checker fails: {out}{err}");
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("probe run "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the run's id comes first: {out}"))
        .to_owned();
    assert!(out.contains("Trigger:  Manual"), "{out}");
    let redis = out
        .lines()
        .find(|l| l.trim_start().starts_with("redis"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(redis.contains("ERROR"), "{out}");
    let web = out
        .lines()
        .find(|l| l.trim_start().starts_with("web"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(web.contains("PASS"), "{out}");

    let run: ProbeRun = Api::namespaced(client.clone(), &ns).get(&id).await.unwrap();
    let owner = run.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owner.iter().map(|o| o.uid.as_str()).collect::<Vec<_>>(),
        [probe.metadata.uid.as_deref().unwrap()],
        "owned by its Probe, so deleted with it"
    );

    let (code, out, err) = kubectl_diag(cp, &["probe", "history", &format!("{ns}/health")]).await;
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "the manual and the scheduled run: {out}");
    assert!(
        rows[0].starts_with(&id) && rows[0].contains("Manual") && rows[0].contains("ERROR"),
        "newest first: {out}"
    );
    assert!(rows[1].contains("Schedule"), "{out}");
    assert!(
        rows[0].contains("web=PASS redis=ERROR") || rows[0].contains("redis=ERROR web=PASS"),
        "{out}"
    );

    let (code, out, _) = kubectl_diag(cp, &["probe", "history", "-n", &ns, "-i", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("Run:      {ns}/{id}")), "{out}");
    assert!(
        out.contains("connect"),
        "the failure's message is kept: {out}"
    );
    drop(open);
}

#[tokio::test]
async fn the_history_of_a_probe_stays_bounded() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-history").await;
    let client = cp.client().await;
    let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // No schedule: it runs once by itself, then only when asked.
    create_probe(
        &client,
        &ns,
        "once",
        json!({
        "checks": [{"name": "web", "tcp": {"address": open.local_addr().unwrap().to_string()}}]}),
    )
    .await;
    wait_runs(&client, &ns, "once", "the first run", |r| {
        r.iter().any(finished)
    })
    .await;
    let mut ids = vec![];
    for _ in 0..PROBE_HISTORY + 2 {
        let (code, out, err) =
            kubectl_diag(cp, &["probe", "run", "once", "-n", &ns, "--wait"]).await;
        assert_eq!(code, 0, "{out}{err}");
        ids.push(out.split_whitespace().nth(2).unwrap().to_owned());
    }
    let kept = wait_runs(&client, &ns, "once", "pruned to the history", |r| {
        r.len() == PROBE_HISTORY && r.iter().all(finished)
    })
    .await;
    let mut kept: Vec<String> = kept.iter().map(kube::ResourceExt::name_any).collect();
    kept.sort();
    let mut newest = ids[ids.len() - PROBE_HISTORY..].to_vec();
    newest.sort();
    assert_eq!(kept, newest, "the newest runs are kept");
    drop(open);
}

#[tokio::test]
async fn a_per_config_probe_runs_one_job_per_config_and_its_run_lists_them() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("per-config-run").await;
    let client = cp.client().await;
    create_probe(
        &client,
        &ns,
        "shop",
        json!({
        "perConfig": true,
        "template": {"containers": [{"name": "c", "image": "http-checker"}]},
        "configs": [
            {"name": "frontend", "env": [{"name": "URL", "value": "http://frontend"}]},
            {"name": "cart", "env": [{"name": "URL", "value": "http://cart"}]}]}),
    )
    .await;
    let runs = wait_runs(&client, &ns, "shop", "a run with its Jobs", |r| {
        r.iter()
            .any(|r| r.status.as_ref().is_some_and(|s| s.jobs.len() == 2))
    })
    .await;
    let jobs = runs[0].status.clone().unwrap().jobs;
    let api: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    let mut configs = vec![];
    for name in &jobs {
        // The run names its Jobs in the write that starts it, before it creates them.
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            if let Some(job) = api.get_opt(name).await.unwrap() {
                break job;
            }
            assert!(Instant::now() < deadline, "Job {name} was never created");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let pod = job.spec.unwrap().template;
        configs.push(pod.metadata.unwrap().annotations.unwrap()["kdiag.io/probe-config"].clone());
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        assert_eq!(
            env.iter().filter(|e| e.name == "URL").count(),
            1,
            "only its own config's env: {env:?}"
        );
    }
    configs.sort();
    assert_eq!(configs, ["cart", "frontend"]);
}

#[tokio::test]
async fn the_root_cause_of_a_failed_run_lands_in_its_history() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("run-root-cause").await;
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
        "/root-cause/RedisDown",
        5,
    )
    .await;
    probe_source(&client, &ns, "cache-failures", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": node}},
        "assignedInformationCollectors": [{"name": "collect"}], "assignedDiagnosers": [{"name": "find"}]})).await;
    wait_source_valid(&client, &ns, "cache-failures").await;
    let agent = TestAgent::start(cp, &node).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    create_probe(&client, &ns, "cache", json!({
        "checks": [{"name": "redis", "tcp": {"address": format!("127.0.0.1:{closed}"), "timeoutSeconds": 2}}]})).await;
    let runs = wait_runs(
        &client,
        &ns,
        "cache",
        "the run with the root cause",
        |runs| {
            runs.iter().any(|r| {
                r.status.as_ref().is_some_and(|s| {
                    // The controller's own judgement of the refused address comes first, then
                    // the node's diagnoser (docs/probes.md, how a probe failure is diagnosed).
                    s.checkers.iter().any(|c| {
                        c.diagnosis.as_ref().is_some_and(|d| {
                            d.root_cause
                                .starts_with(&format!("nothing listens at 127.0.0.1:{closed}"))
                                && d.root_cause.ends_with(": found RedisDown")
                        })
                    })
                })
            })
        },
    )
    .await;
    let abnormal = runs[0].status.clone().unwrap().checkers[0]
        .diagnosis
        .clone()
        .unwrap()
        .abnormal;
    assert!(
        abnormal.starts_with(&format!("{ns}/probe-cache-redis-")),
        "{abnormal}"
    );
    let (code, out, err) = kubectl_diag(cp, &["probe", "history", &format!("{ns}/cache")]).await;
    assert_eq!(code, 0, "{out}{err}");
    // The list cuts long root causes; `-i` below shows it whole.
    assert!(out.contains("redis: nothing listens at"), "{out}");
    let id = kube::ResourceExt::name_any(&runs[0]);
    let (_, out, _) = kubectl_diag(cp, &["probe", "history", "-n", &ns, "-i", &id]).await;
    assert!(
        out.contains(&abnormal) && out.contains("found RedisDown"),
        "{out}"
    );
    agent.stop().await;
}

/// The checker's diagnosis once `done` holds for it.
async fn wait_diagnosis(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    checker: &str,
    done: impl Fn(&CheckerDiagnosis) -> bool,
) -> CheckerDiagnosis {
    let api: Api<ProbeStatus> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = api.get(probe).await.unwrap();
        let d = ps
            .spec
            .checkers
            .iter()
            .find(|c| c.name == checker)
            .and_then(|c| c.diagnosis.clone());
        if let Some(d) = d.filter(|d| done(d)) {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "no such diagnosis on checker {checker}: {:#?} (annotations {:?})",
            ps.spec.checkers,
            ps.metadata.annotations
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_probe_whose_processors_find_nothing_says_what_was_checked_and_that_no_cause_was_found() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-nocause").await;
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
    probe_source(&client, &ns, "web-failures", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": node}},
        "assignedInformationCollectors": [{"name": "collect"}]})).await;
    wait_source_valid(&client, &ns, "web-failures").await;
    let agent = TestAgent::start(cp, &node).await;
    // A message of no known family: only the Abnormal's processors could explain it.
    put_checkers(
        &client,
        &ns,
        "web",
        json!([{"name": "http-get", "status": "ERROR", "message": "unexpected status 500", "lastRun": now()}]),
    )
    .await;
    let d = wait_diagnosis(&client, &ns, "web", "http-get", |d| !d.reason.is_empty()).await;
    assert_eq!(d.reason, kdiag_api::kubeprober::NO_CAUSE_FOUND, "{d:?}");
    // The Abnormal only collected, so it Succeeded; the checker's diagnosis did not.
    assert_eq!(d.phase, "Failed");
    assert_eq!(d.root_cause, "");
    assert!(
        d.message
            .starts_with(&format!("no cause found: on node {node} ("))
            && d.message
                .contains("ran collectors collect, no diagnoser (the source names none)")
            && d.message.ends_with("none of them named a cause"),
        "{}",
        d.message
    );
    let a = &abnormals_of(&client, &ns).await[0];
    assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded));
    agent.stop().await;
}

#[tokio::test]
async fn a_dns_checker_failing_while_the_dns_service_has_no_ready_endpoint_is_diagnosed_to_the_service_and_its_pods()
 {
    use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-dns").await;
    let client = cp.client().await;
    let dns_node = format!("{ns}-dns-node");
    ensure_node(&client, &dns_node).await;
    // Cluster DNS as kubeadm installs it, its only pod crash-looping: no ready endpoint.
    let system = "kube-system";
    // No controller-manager here makes kube-system's default ServiceAccount.
    cp.service_account_token(system, "default").await;
    let svc: Service = serde_json::from_value(json!({"metadata": {"name": "kube-dns", "namespace": system},
        "spec": {"selector": {"k8s-app": "kube-dns"}, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}}))
    .unwrap();
    let _ = Api::<Service>::namespaced(client.clone(), system)
        .create(&PostParams::default(), &svc)
        .await;
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "coredns-test", "namespace": system, "labels": {"k8s-app": "kube-dns"}},
        "spec": {"nodeName": dns_node, "automountServiceAccountToken": false,
                 "containers": [{"name": "coredns", "image": "coredns/coredns:1.8.0"}]}}))
    .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), system);
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        "coredns-test",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.9.9", "containerStatuses": [{
            "name": "coredns", "ready": false, "restartCount": 5, "image": "coredns/coredns:1.8.0", "imageID": "",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting failed container"}}}]}})),
    )
    .await
    .unwrap();
    let endpoints: Endpoints = serde_json::from_value(json!({"metadata": {"name": "kube-dns", "namespace": system},
        "subsets": [{"notReadyAddresses": [{"ip": "10.244.9.9", "nodeName": dns_node,
            "targetRef": {"kind": "Pod", "name": "coredns-test", "namespace": system}}], "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}]}))
    .unwrap();
    Api::<Endpoints>::namespaced(client.clone(), system)
        .create(&PostParams::default(), &endpoints)
        .await
        .unwrap();

    // Names no node, no processors; no checker pod: a cluster-level check.
    probe_source(&client, &ns, "k8s-failures", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}}}})).await;
    wait_source_valid(&client, &ns, "k8s-failures").await;
    let started = Instant::now();
    put_checkers(&client, &ns, "k8s", json!([
        {"name": "dns-resolution-check", "status": "ERROR", "lastRun": now(),
         "message": "lookup kubernetes.default.svc.cluster.local on 10.96.0.10:53: read udp 10.244.0.7:41234->10.96.0.10:53: i/o timeout"}])).await;

    let d = wait_diagnosis(&client, &ns, "k8s", "dns-resolution-check", |d| {
        !d.root_cause.is_empty()
    })
    .await;
    eprintln!(
        "DNS checker ERROR → root cause on the ProbeStatus in {:?}",
        started.elapsed()
    );
    assert_eq!(d.reason, "ClusterDNSNoReadyEndpoints", "{d:?}");
    assert!(
        d.root_cause.starts_with(
            "lookups of kubernetes.default.svc.cluster.local fail (i/o timeout): the cluster DNS Service kube-system/kube-dns has no ready endpoint: none of the 1 pod(s) its selector k8s-app=kube-dns matches is ready: coredns-test on node"
        ) && d.root_cause.contains("waiting CrashLoopBackOff, 5 restart(s)"),
        "{}",
        d.root_cause
    );
    assert!(
        d.evidence
            .iter()
            .any(|e| e.object == "endpoints/kube-system/kube-dns"
                && e.message == "0 ready address(es), 1 not ready (10.244.9.9)"),
        "{:?}",
        d.evidence
    );
    // And an Abnormal on the node of the DNS pod, carrying the classification.
    let list = wait_count(&client, &ns, 1).await;
    assert_eq!(list[0].spec.node_name, dns_node);
    let context = list[0].spec.context.clone().unwrap_or_default();
    assert_eq!(
        context["probeFailure"]["classification"]["component"],
        json!("ClusterDns"),
        "{context:?}"
    );
    assert_eq!(
        context["probeFailure"]["cluster"]["reason"],
        json!("ClusterDNSNoReadyEndpoints")
    );
    let ps = Api::<ProbeStatus>::namespaced(client.clone(), &ns)
        .get("k8s")
        .await
        .unwrap();
    let episodes = ps.metadata.annotations.unwrap()["kdiag.io/episodes"].clone();
    assert!(!episodes.contains("no node"), "{episodes}");
}

#[tokio::test]
async fn an_etcd_checker_timing_out_with_no_node_is_diagnosed_by_the_controller_not_suppressed() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("probe-etcd").await;
    let client = cp.client().await;
    probe_source(&client, &ns, "all", json!({"priority": 10,
        "sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeNamespace": ns}}}})).await;
    wait_source_valid(&client, &ns, "all").await;
    put_checkers(&client, &ns, "control-plane", json!([
        {"name": "etcd-put", "status": "ERROR", "message": "context deadline exceeded", "lastRun": now()}])).await;
    let d = wait_diagnosis(&client, &ns, "control-plane", "etcd-put", |d| {
        !d.reason.is_empty()
    })
    .await;
    assert_eq!(
        (d.reason.as_str(), d.phase.as_str(), d.abnormal.as_str()),
        ("EtcdUnavailable", "Succeeded", "")
    );
    // The test apiserver's etcd is healthy: kdiag says the check passes now, with its line.
    assert!(
        d.root_cause.starts_with("etcd did not answer checker etcd-put in time (context deadline exceeded); the apiserver's readiness check passes now ([+]etcd ok)"),
        "{}",
        d.root_cause
    );
    assert!(
        d.evidence.iter().any(|e| e.kind == "Readyz"),
        "{:?}",
        d.evidence
    );
    assert!(abnormals_of(&client, &ns).await.is_empty());
}
