//! The pod triage end to end on a real single-node cluster: each failure class really happens
//! (a container over its memory limit, a command that does not exist, an image that cannot be
//! pulled, a missing ConfigMap, a request no node fits, a failing liveness probe, a finalizer
//! that holds a deleted pod, an emptyDir over its sizeLimit, a crash loop), then
//! `kubectl diag run --pod … --wait` (the built kdiag binary) asks the controller and the
//! node's agent, running under config/deploy's RBAC, and the root cause must name the reason
//! and the object.

mod triage_support;

use std::time::Duration;

use kdiag_api::{Abnormal, AbnormalPhase};
use kdiag_testenv::{Cluster, cluster};
use serde_json::Value;
use tokio::sync::OnceCell;
use triage_support::{Scenario, Stack, scenario, scenarios};

async fn stack() -> &'static Stack {
    static STACK: OnceCell<Stack> = OnceCell::const_new();
    STACK
        .get_or_init(|| async {
            let c: &'static Cluster = cluster().await;
            Stack::start(c, &scenarios()).await
        })
        .await
}

/// Makes the scenario's failure happen, diagnoses it as an operator would, and checks the root
/// cause; returns the Abnormal for further checks.
async fn diagnose(name: &str) -> (Abnormal, String) {
    let s: Scenario = scenario(name);
    let st = stack().await;
    let pod = st.wait_for_failure(&s).await;
    let abnormal = format!("triage-{name}");
    let a = if s.via_cli {
        let ran = st.kubectl_diag_run(&pod, &abnormal).await;
        assert_eq!(ran.code, 0, "kubectl diag run --pod {pod} --wait:\n{ran}");
        assert!(
            ran.stdout.contains(s.reasons[0]) || s.reasons.iter().any(|r| ran.stdout.contains(r)),
            "the printed diagnosis names the reason: {ran}"
        );
        st.abnormal(&abnormal).await
    } else {
        st.create_triage_abnormal(&pod, &abnormal).await;
        st.wait_final(&abnormal, Duration::from_secs(60)).await
    };
    let status = a.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        Some(AbnormalPhase::Succeeded),
        "{}",
        serde_json::to_string_pretty(&status).unwrap()
    );
    let rc = status.root_cause.clone().expect("a root cause");
    assert!(
        s.reasons.contains(&rc.reason.as_str()),
        "{name}: reason {} not one of {:?}: {}",
        rc.reason,
        s.reasons,
        serde_json::to_string_pretty(&rc).unwrap()
    );
    let object = format!("pod/{}/{pod}", st.namespace);
    assert!(
        rc.evidence.iter().any(|e| e.object == object),
        "{name}: no evidence names {object}: {}",
        serde_json::to_string_pretty(&rc.evidence).unwrap()
    );
    assert!(
        rc.summary.contains(&format!("{}/{pod}", st.namespace)),
        "the summary names the pod: {}",
        rc.summary
    );
    assert!(!rc.suggestion.is_empty(), "a next step is suggested");
    assert_eq!(
        status
            .diagnoser
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("kube-diagnoser/pod-triage-diagnoser"),
        "the controller assigned the triage"
    );
    (a, pod)
}

fn evidence_kinds(a: &Abnormal) -> Vec<String> {
    a.status
        .as_ref()
        .and_then(|s| s.root_cause.as_ref())
        .map(|r| r.evidence.iter().map(|e| e.kind.clone()).collect())
        .unwrap_or_default()
}

fn summary(a: &Abnormal) -> String {
    a.status
        .as_ref()
        .and_then(|s| s.root_cause.as_ref())
        .map(|r| r.summary.clone())
        .unwrap_or_default()
}

fn context(a: &Abnormal, key: &str) -> Value {
    a.status
        .as_ref()
        .and_then(|s| s.context.as_ref())
        .and_then(|c| c.get(key).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_container_over_its_memory_limit_is_oom_killed_with_its_limit_and_the_kernel_line() {
    let (a, _) = diagnose("oom").await;
    let s = summary(&a);
    assert!(s.contains("container app") && s.contains("32Mi"), "{s}");
    assert!(
        evidence_kinds(&a).contains(&"KernelLog".to_owned()),
        "the kernel's oom-kill line is evidence: {:?}",
        evidence_kinds(&a)
    );
}

#[tokio::test]
async fn a_crash_loop_gives_its_exit_code_and_the_log_line_that_explains_it() {
    let (a, _) = diagnose("crash").await;
    let s = summary(&a);
    assert!(s.contains("exit code 3"), "{s}");
    assert!(
        s.contains("no such file or directory") && s.contains("a missing file"),
        "{s}"
    );
    assert!(evidence_kinds(&a).contains(&"Log".to_owned()));
    // pod-detail-collector followed the owner chain and kept the previous instance's log.
    let detail = context(&a, "podDetailInformation");
    let owners: Vec<&str> = detail["owners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    assert_eq!(owners, ["ReplicaSet", "Deployment"], "{}", detail["owners"]);
    assert!(
        detail["logs"][0]["previous"]["lines"]
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "the previous instance's log: {}",
        detail["logs"]
    );
}

#[tokio::test]
async fn a_command_that_does_not_exist_is_named() {
    let (a, _) = diagnose("no-command").await;
    assert!(summary(&a).contains("/opt/app/server"), "{}", summary(&a));
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_named_with_why() {
    let (a, _) = diagnose("no-image").await;
    let s = summary(&a);
    assert!(s.contains("registry.kdiag.test/shop/web:1.2.3"), "{s}");
    assert!(
        s.contains("connection refused"),
        "the runtime's error is quoted: {s}"
    );
}

#[tokio::test]
async fn a_missing_configmap_is_named_and_is_evidence() {
    let (a, _) = diagnose("no-configmap").await;
    let ns = &stack().await.namespace;
    let rc = a.status.unwrap().root_cause.unwrap();
    assert!(
        rc.summary.contains(&format!("ConfigMap {ns}/app-config")),
        "{}",
        rc.summary
    );
    assert!(
        rc.evidence
            .iter()
            .any(|e| e.object == format!("configmap/{ns}/app-config")),
        "{:?}",
        rc.evidence
    );
}

#[tokio::test]
async fn a_request_no_node_fits_is_compared_with_the_largest_free_node() {
    let (a, _) = diagnose("too-big").await;
    let s = summary(&a);
    let node = stack().await.cluster.node_name().to_owned();
    assert!(s.contains("it requests 64 CPU"), "{s}");
    assert!(s.contains("512.0 GiB"), "{s}");
    assert!(s.contains(&format!("node {node}")), "{s}");
    let accepted = a
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == kdiag_api::AbnormalConditionType::Accepted)
        .unwrap();
    assert!(
        accepted.message.contains("to stand in for unscheduled pod")
            && accepted.message.contains("left out: container-collector"),
        "the pod is on no node, so a node with an agent diagnoses it from the apiserver: {}",
        accepted.message
    );
    let collectors: Vec<&str> = a
        .spec
        .assigned_information_collectors
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        collectors,
        ["pod-detail-collector"],
        "node-local collectors are left out on a stand-in"
    );
}

#[tokio::test]
async fn a_failing_liveness_probe_names_its_target_error_and_restarts() {
    let (a, _) = diagnose("liveness").await;
    let s = summary(&a);
    assert!(s.contains("HTTP GET http://:8080/healthz"), "{s}");
    assert!(s.contains("connection refused"), "{s}");
    assert!(s.contains("restarted"), "{s}");
}

#[tokio::test]
async fn a_deleted_pod_held_by_a_finalizer_names_the_finalizer() {
    let (a, _) = diagnose("finalizer").await;
    let s = summary(&a);
    stack().await.release(&scenario("finalizer")).await;
    assert!(s.contains("kdiag.test/never-released"), "{s}");
}

#[tokio::test]
async fn an_emptydir_over_its_size_limit_is_evicted_and_named_with_its_limit() {
    let (a, _) = diagnose("emptydir").await;
    let s = summary(&a);
    assert!(
        s.contains("emptyDir volume scratch") && s.contains("1Mi"),
        "{s}"
    );
}

#[tokio::test]
async fn a_healthy_pod_is_not_identified_and_the_answer_says_what_was_checked() {
    let st = stack().await;
    let client = st.client().await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, &st.namespace);
    let healthy: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "healthy"},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": kdiag_testenv::BUSYBOX_IMAGE,
                "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}
    }))
    .unwrap();
    pods.create(&Default::default(), &healthy).await.unwrap();
    let begin = std::time::Instant::now();
    while !pods.get("healthy").await.ok().is_some_and(|p| {
        p.status
            .and_then(|s| s.container_statuses)
            .is_some_and(|c| c.iter().all(|c| c.ready))
    }) {
        assert!(
            begin.elapsed() < Duration::from_secs(60),
            "healthy never got ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ran = st.kubectl_diag_run("healthy", "triage-healthy").await;
    assert_eq!(
        ran.code, 1,
        "nothing identified is a Failed diagnosis: {ran}"
    );
    let a = st.abnormal("triage-healthy").await;
    let status = a.status.unwrap();
    assert_eq!(status.reason, "NotIdentified", "{}", status.message);
    for checked in [
        "pod-triage-diagnoser",
        "OOM kills",
        "crash loops",
        "image pulls",
        "probes",
    ] {
        assert!(
            status.message.contains(checked),
            "{checked}: {}",
            status.message
        );
    }
}
