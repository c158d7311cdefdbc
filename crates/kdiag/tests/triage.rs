//! The pod triage end to end on a real single-node cluster: each failure class really happens
//! (a container over its memory limit, a command that does not exist, an image that cannot be
//! pulled, a missing ConfigMap, a request no node fits, a failing liveness probe, a finalizer
//! that holds a deleted pod, an emptyDir over its sizeLimit, a crash loop), then
//! `kubectl diag run --pod … --wait` (the built kdiag binary) asks the controller and the
//! node's agent, running under config/deploy's RBAC, and the root cause must name the reason
//! and the object. The same stack runs two examples as shipped: examples/pods/emptydir-filling
//! with its Abnormal, and the liveness-probe pod under config/deploy's liveness-failure-evidence
//! source. Pods asked about right after their deletion (a process ignoring SIGTERM, a finalizer)
//! are answered as terminating; workload-level causes (Deployment, StatefulSet, DaemonSet,
//! PodDisruptionBudget) are in `triage_workloads`, on the same cluster.

mod triage_support;
mod triage_workloads;

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
async fn a_host_port_conflict_names_the_port_and_the_pod_holding_it() {
    let (a, _) = diagnose("host-port").await;
    let s = summary(&a);
    let st = stack().await;
    let node = st.cluster.node_name().to_owned();
    assert!(
        s.contains(&format!(
            "18080/TCP is held by pod {}/host-port-holder on node {node}",
            st.namespace
        )),
        "{s}"
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

/// Deletes a running pod with a long grace period and asks about it at once, as a person does
/// who wonders why it is still there; returns the Abnormal's root cause. The pod is then
/// released (finalizers dropped) and deleted for good.
async fn diagnose_right_after_deletion(
    name: &str,
    container: Value,
    finalizers: Value,
) -> kdiag_api::RootCause {
    let st = stack().await;
    let client = st.client().await;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client, &st.namespace);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {"terminationGracePeriodSeconds": 120, "automountServiceAccountToken": false,
            "containers": [container]}
    }))
    .unwrap();
    pods.create(&Default::default(), &pod).await.unwrap();
    let begin = std::time::Instant::now();
    while !pods.get(name).await.ok().is_some_and(|p| {
        p.status
            .and_then(|s| s.container_statuses)
            .is_some_and(|c| c.iter().all(|c| c.ready))
    }) {
        assert!(
            begin.elapsed() < Duration::from_secs(60),
            "{name} never got ready"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pods.delete(name, &Default::default()).await.unwrap();
    let ran = st.kubectl_diag_run(name, &format!("triage-{name}")).await;
    let a = st.abnormal(&format!("triage-{name}")).await;
    let _ = pods
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = pods
        .delete(name, &kube::api::DeleteParams::default().grace_period(0))
        .await;
    assert_eq!(
        ran.code, 0,
        "a terminating pod is an answer, not NotIdentified: {ran}"
    );
    let rc = a.status.and_then(|s| s.root_cause).expect("a root cause");
    // The printed answer, for docs/triage.md's examples (cargo test … -- --nocapture).
    eprintln!("{}", ran.stdout);
    assert!(
        rc.summary
            .starts_with(&format!("pod {}/{name} is terminating", st.namespace)),
        "{}",
        rc.summary
    );
    rc
}

#[tokio::test]
async fn a_pod_asked_about_right_after_its_deletion_names_the_process_that_ignores_sigterm() {
    let rc = diagnose_right_after_deletion(
        "ignores-term",
        serde_json::json!({"name": "app", "image": kdiag_testenv::BUSYBOX_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "trap '' TERM; sleep 3600"]}),
        serde_json::json!([]),
    )
    .await;
    assert_eq!(rc.reason, "SigtermIgnored", "{rc:?}");
    assert!(
        rc.summary.contains("sleep 3600")
            && rc.summary.contains("ignore")
            && rc.summary.contains("120 s grace period"),
        "{}",
        rc.summary
    );
    assert!(
        rc.evidence.iter().any(|e| e.kind == "Process"),
        "the process is evidence: {:?}",
        rc.evidence
    );
}

#[tokio::test]
async fn a_pod_asked_about_right_after_its_deletion_names_the_finalizer_that_will_hold_it() {
    let rc = diagnose_right_after_deletion(
        "held-in-grace",
        serde_json::json!({"name": "app", "image": kdiag_testenv::BUSYBOX_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]}),
        serde_json::json!(["kdiag.test/held"]),
    )
    .await;
    assert_eq!(rc.reason, "FinalizersPresent", "{rc:?}");
    assert!(
        rc.summary.contains("s of its grace period left")
            && rc
                .summary
                .contains("finalizer(s) kdiag.test/held will keep it"),
        "{}",
        rc.summary
    );
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

/// examples/pods/emptydir-filling as a reader would use it: the pod and then the Abnormal from
/// the repository, unchanged but for the namespace; pod-collector and pod-disk-usage-diagnoser
/// must name the pod's emptyDir as over the threshold the Abnormal gives.
#[tokio::test]
async fn the_emptydir_filling_example_gives_the_disk_hog_as_its_root_cause() {
    let st = stack().await;
    let client = st.client().await;
    let example = |file: &str| -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/pods/emptydir-filling/"
        );
        let mut v: Value =
            serde_yaml::from_str(&std::fs::read_to_string(format!("{path}{file}")).unwrap())
                .unwrap();
        v["metadata"]["namespace"] = st.namespace.clone().into();
        v
    };
    let mut abnormal = example("abnormal.yaml");
    abnormal["spec"]["podReference"]["namespace"] = st.namespace.clone().into();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), &st.namespace);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(example("pod.yaml")).unwrap();
    let pod = pods
        .create(&Default::default(), &pod)
        .await
        .expect("create the example pod");
    let uid = pod.metadata.uid.clone().unwrap();

    // Create the Abnormal once the pod has written more than the example's 32Mi threshold.
    let spool = st
        .cluster
        .pod_dir(&uid)
        .join("volumes/kubernetes.io~empty-dir/spool");
    let begin = std::time::Instant::now();
    loop {
        let used: u64 = std::fs::read_dir(&spool)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if used >= 48 << 20 {
            break;
        }
        assert!(
            begin.elapsed() < Duration::from_secs(120),
            "the example pod wrote {used} bytes into {} in 120 s",
            spool.display()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let name = abnormal["metadata"]["name"].as_str().unwrap().to_owned();
    let abnormal: Abnormal = serde_json::from_value(abnormal).unwrap();
    kube::Api::<Abnormal>::namespaced(client.clone(), &st.namespace)
        .create(&Default::default(), &abnormal)
        .await
        .expect("create the example Abnormal");
    let a = st.wait_final(&name, Duration::from_secs(60)).await;
    let _ = pods.delete("emptydir-filling", &Default::default()).await;
    let status = a.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        Some(AbnormalPhase::Succeeded),
        "{}",
        serde_json::to_string_pretty(&status).unwrap()
    );
    let rc = status.root_cause.expect("a root cause");
    assert_eq!(rc.reason, "PodDiskUsageOverThreshold", "{rc:?}");
    assert!(
        rc.summary
            .contains(&format!("{}/emptydir-filling", st.namespace)),
        "the summary names the pod: {}",
        rc.summary
    );
}

/// Issue 7's evidence at the moment of failure: config/deploy's liveness-failure-evidence source
/// (turned on, and narrowed to one pod so the other scenarios' probes stay out) and the
/// liveness-probe example pod. Its first Unhealthy event must make the node's agent collect while
/// the failing container still runs: the collected processes include that very container's.
#[tokio::test]
async fn a_first_failed_liveness_probe_collects_the_failing_containers_processes() {
    let st = stack().await;
    let client = st.client().await;
    let ns = st.namespace.clone();

    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/deploy/sources.yaml"
    ))
    .unwrap();
    let mut source: Value = serde_yaml::Deserializer::from_str(&shipped)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|v| v["metadata"]["name"] == "liveness-failure-evidence")
        .expect("config/deploy/sources.yaml ships liveness-failure-evidence");
    assert_eq!(source["spec"]["suspend"], true, "it ships switched off");
    source["metadata"]["namespace"] = ns.clone().into();
    source["spec"]["suspend"] = false.into();
    let regexp = &mut source["spec"]["sourceTemplate"]["kubernetesEventTemplate"]["regexp"];
    regexp["namespace"] = ns.clone().into();
    regexp["involvedObject"]["name"] = "liveness-probe".into();
    let source: kdiag_api::AbnormalSource = serde_json::from_value(source).unwrap();
    kube::Api::<kdiag_api::AbnormalSource>::namespaced(client.clone(), &ns)
        .create(&Default::default(), &source)
        .await
        .expect("create the source");

    let mut pod: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/pods/liveness-probe/pod.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    pod["metadata"]["namespace"] = ns.clone().into();
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), &ns);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
    let pod = pods
        .create(&Default::default(), &pod)
        .await
        .expect("create the example pod");
    let uid = pod.metadata.uid.clone().unwrap();

    // Every instance of the app container the pod ever had. The container restarts every ~20 s
    // and the status only keeps the current and the last one, so by the time the Abnormal is final
    // the instance that was collected may be gone from it; a poller keeps them all (each instance
    // lives far longer than the poll interval).
    let instances = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let poller = tokio::spawn({
        let (pods, instances) = (pods.clone(), instances.clone());
        async move {
            loop {
                if let Ok(pod) = pods.get("liveness-probe").await {
                    let statuses = pod.status.and_then(|s| s.container_statuses);
                    for cs in statuses.into_iter().flatten().filter(|c| c.name == "app") {
                        let last = cs.last_state.and_then(|s| s.terminated);
                        let ids = [cs.container_id, last.and_then(|t| t.container_id)];
                        instances.lock().unwrap().extend(ids.into_iter().flatten());
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    // The Abnormal the source makes for the pod's first Unhealthy event.
    let abnormals = kube::Api::<Abnormal>::namespaced(client.clone(), &ns);
    let begin = std::time::Instant::now();
    let name = loop {
        let found = abnormals
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|a| {
                a.spec.source == kdiag_api::AbnormalSourceType::KubernetesEvent
                    && a.spec
                        .pod_reference
                        .as_ref()
                        .is_some_and(|p| p.name == "liveness-probe")
            });
        if let Some(a) = found {
            break a.metadata.name.unwrap();
        }
        assert!(
            begin.elapsed() < Duration::from_secs(120),
            "no Abnormal for the pod's Unhealthy event in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let a = st.wait_final(&name, Duration::from_secs(60)).await;

    poller.abort();
    let instances = instances.lock().unwrap().clone();
    let _ = pods.delete("liveness-probe", &Default::default()).await;

    let processes = context(&a, "processInformation");
    let of_pod: Vec<&Value> = processes
        .as_array()
        .expect("processInformation collected")
        .iter()
        .filter(|p| p["podUID"] == uid.as_str())
        .collect();
    assert!(
        of_pod.iter().any(|p| {
            let cid = p["containerID"].as_str().unwrap_or_default();
            !cid.is_empty()
                && instances.iter().any(|i| i.ends_with(cid))
                && p.to_string().contains("httpd")
        }),
        "the failing container's httpd was collected while it ran; container instances {instances:?}, the pod's processes: {of_pod:?}"
    );
}
