use serde_json::json;

use super::*;

fn dns_service(pods: serde_json::Value, ready: &[&str]) -> ServiceFacts {
    let addresses: Vec<_> = ready.iter().map(|ip| json!({"ip": ip})).collect();
    ServiceFacts {
        key: "kube-system/kube-dns".into(),
        service: Some(
            serde_json::from_value(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "spec": {"clusterIP": "10.96.0.10", "selector": {"k8s-app": "kube-dns"}}}))
            .unwrap(),
        ),
        endpoints: Some(
            serde_json::from_value(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
                "subsets": if addresses.is_empty() { json!([]) } else { json!([{"addresses": addresses, "ports": [{"port": 53}]}]) }}))
            .unwrap(),
        ),
        pods: serde_json::from_value(pods).unwrap(),
    }
}

fn crashing_coredns() -> serde_json::Value {
    json!([{"metadata": {"name": "coredns-7f9c", "namespace": "kube-system"},
        "spec": {"nodeName": "cp-1", "containers": [{"name": "coredns", "image": "coredns"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "coredns", "ready": false, "restartCount": 6,
            "image": "coredns", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}])
}

const LOOKUP: &str = "lookup kubernetes.default on 10.96.0.10:53: read udp 10.244.0.7:41234->10.96.0.10:53: i/o timeout";

fn judged(facts: &ClusterFacts, checker: &str, message: &str) -> Judgement {
    let c = classify(checker, message).unwrap();
    judge("kubeprober/k8s", checker, message, &c, facts)
}

#[test]
fn dns_failing_while_its_pods_crash_loop_names_the_service_the_pods_and_their_nodes() {
    let facts = ClusterFacts {
        service: Some(dns_service(crashing_coredns(), &[])),
        ..Default::default()
    };
    let j = judged(&facts, "dns-resolution-check", LOOKUP);
    assert_eq!(j.cause.reason, "ClusterDNSNoReadyEndpoints");
    assert_eq!(
        j.cause.summary,
        "lookups of kubernetes.default fail (i/o timeout): the cluster DNS Service kube-system/kube-dns has no ready endpoint: none of the 1 pod(s) its selector k8s-app=kube-dns matches is ready: coredns-7f9c on node cp-1 (Running, container coredns waiting CrashLoopBackOff, 6 restart(s))"
    );
    assert_eq!(j.nodes, ["cp-1"]);
    let kinds: Vec<&str> = j.cause.evidence.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["Endpoints", "PodStatus", "ProbeChecker"]);
}

#[test]
fn dns_with_a_selector_matching_no_pod_says_so() {
    let facts = ClusterFacts {
        service: Some(dns_service(json!([]), &[])),
        ..Default::default()
    };
    let j = judged(&facts, "dns", LOOKUP);
    assert!(
        j.cause
            .summary
            .ends_with("has no ready endpoint: its selector k8s-app=kube-dns matches no pod"),
        "{}",
        j.cause.summary
    );
    assert!(j.nodes.is_empty());
}

#[test]
fn dns_with_ready_endpoints_points_at_the_path_and_a_missing_service_is_named() {
    let facts = ClusterFacts {
        service: Some(dns_service(json!([]), &["10.244.0.3"])),
        ..Default::default()
    };
    assert_eq!(
        judged(&facts, "dns", LOOKUP).cause.reason,
        "ClusterDNSUnreachable"
    );
    let missing = ClusterFacts {
        service: Some(ServiceFacts {
            key: "kube-system/kube-dns".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let j = judged(&missing, "dns", LOOKUP);
    assert_eq!(j.cause.reason, "ClusterDNSServiceMissing");
    assert!(
        j.cause
            .summary
            .contains("kube-system/kube-dns does not exist"),
        "{}",
        j.cause.summary
    );
}

#[test]
fn a_refused_service_address_names_the_service_and_why_it_has_no_endpoint() {
    let mut svc = dns_service(json!([]), &[]);
    svc.key = "shop/web".into();
    let facts = ClusterFacts {
        service: Some(svc),
        ..Default::default()
    };
    let j = judged(
        &facts,
        "service-check",
        "dial tcp 10.96.0.10:80: connect: connection refused",
    );
    assert_eq!(j.cause.reason, "ServiceNoReadyEndpoints");
    assert!(j.cause.summary.starts_with("connections to 10.96.0.10:80 are refused: it is Service shop/web, which has no ready endpoint"), "{}", j.cause.summary);
    let nothing = judged(
        &ClusterFacts::default(),
        "service-check",
        "dial tcp 10.1.2.3:80: connect: connection refused",
    );
    assert_eq!(
        nothing.cause.summary,
        "nothing listens at 10.1.2.3:80, which is no Service or pod of this cluster"
    );
}

#[test]
fn etcd_timing_out_quotes_the_apiservers_failing_check() {
    let facts = ClusterFacts {
        readyz: Some(Ok(
            "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed".into(),
        )),
        ..Default::default()
    };
    let j = judged(&facts, "etcd-put", "context deadline exceeded");
    assert_eq!(j.cause.reason, "EtcdUnavailable");
    assert_eq!(
        j.cause.summary,
        "etcd did not answer checker etcd-put in time (context deadline exceeded); the apiserver's readiness check says now: [-]etcd failed: reason withheld"
    );
}

#[test]
fn sandbox_failures_name_the_runtime_socket_or_the_cni_plugin_and_the_node() {
    let j = judged(
        &ClusterFacts::default(),
        "statefulset-check",
        "Failed to create pod sandbox: rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing dial unix /run/containerd/containerd.sock: connect: connection refused\", error node: [ worker-1 ]",
    );
    assert_eq!(j.cause.reason, "ContainerRuntimeSandboxFailed");
    assert_eq!(
        j.cause.summary,
        "the container runtime on node(s) worker-1 cannot create pod sandboxes (its socket /run/containerd/containerd.sock): connect: connection refused"
    );
    assert_eq!(j.nodes, ["worker-1"]);
}

#[test]
fn a_cni_failure_and_a_node_check_name_the_plugin_and_the_component_on_its_nodes() {
    let cni = judged(
        &ClusterFacts::default(),
        "deployment-check",
        "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"5d2e\": plugin type=\"calico\" failed (add): error getting ClusterInformation: connection is unauthorized: Unauthorized",
    );
    assert_eq!(cni.cause.reason, "CNISetupFailed");
    assert_eq!(
        cni.cause.summary,
        "the CNI plugin calico cannot set up the network of new pod sandboxes: error getting ClusterInformation: connection is unauthorized: Unauthorized"
    );
    let kubelet = judged(
        &ClusterFacts::default(),
        "kubelet-active",
        "kubelet service not active, error node: [ worker-1 worker-2 ]",
    );
    assert_eq!(
        (
            kubelet.cause.reason.as_str(),
            kubelet.cause.summary.as_str()
        ),
        (
            "NodeCheckFailed",
            "the kubelet fails on node(s) worker-1, worker-2: kubelet service not active"
        )
    );
    assert_eq!(kubelet.nodes, ["worker-1", "worker-2"]);
}

#[test]
fn a_service_without_ready_endpoints_names_its_not_ready_pods_and_one_with_some_is_fine() {
    let mut f = dns_service(crashing_coredns(), &[]);
    f.key = "shop/web".into();
    let cause = service_without_endpoints(&f).unwrap();
    assert_eq!(cause.reason, "ServiceNoReadyEndpoints");
    assert_eq!(
        cause.summary,
        "Service shop/web has no ready endpoint: none of the 1 pod(s) its selector k8s-app=kube-dns matches is ready: coredns-7f9c on node cp-1 (Running, container coredns waiting CrashLoopBackOff, 6 restart(s))"
    );
    assert_eq!(
        service_without_endpoints(&dns_service(json!([]), &["10.244.0.3"])),
        None
    );
}

#[test]
fn a_job_past_its_backoff_limit_is_named_with_its_last_attempts_failure() {
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": {"name": "migrate", "namespace": "shop"},
        "spec": {"backoffLimit": 2, "template": {"spec": {"containers": [{"name": "m", "image": "m"}]}}},
        "status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
            "message": "Job has reached the specified backoff limit", "lastTransitionTime": "2026-12-01T10:00:00Z"}]}}))
    .unwrap();
    let pod = |name: &str, at: &str, code: i32| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "shop", "creationTimestamp": at},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "m", "ready": false, "restartCount": 0, "image": "m", "imageID": "",
                "state": {"terminated": {"exitCode": code, "reason": "Error", "finishedAt": at, "message": "relation \"users\" does not exist"}}}]}}))
        .unwrap()
    };
    let pods = [
        pod("migrate-a", "2026-12-01T09:58:00Z", 1),
        pod("migrate-b", "2026-12-01T09:59:00Z", 3),
    ];
    let c = job_failed("shop/migrate", &job, &pods).unwrap();
    assert_eq!(c.reason, "JobBackoffLimitExceeded");
    assert_eq!(
        c.summary,
        "Job shop/migrate gave up after 3 failed attempt(s), past its backoffLimit 2; the last attempt, pod migrate-b, failed: container m exited 3 (Error): relation \"users\" does not exist"
    );
    assert_eq!(c.evidence[0].kind, "JobStatus");
    let running: k8s_openapi::api::batch::v1::Job =
        serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"active": 1}}))
            .unwrap();
    assert_eq!(job_failed("shop/j", &running, &[]), None);
}
