//! The Go profiler against a real pod on the real single-node cluster: it fetches from the
//! Abnormal's own pod by IP, and refuses the node's loopback (where the kubelet listens), a pod
//! that is not the Abnormal's, a redirect, and an Abnormal without a pod.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kdiag_agent::profiler::Profilers;
use kdiag_api::{Abnormal, ProfilerSpec};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, cluster};
use kube::api::PostParams;
use serde_json::json;

const MARKER: &str = "kdiag-go-profiler-test-profile";

/// Starts a pod serving `/debug/pprof/heap` (busybox httpd on port 6060) and returns its IP once
/// it is ready.
async fn pprof_pod(c: &Cluster, client: &kube::Client, ns: &str, name: &str) -> String {
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), ns);
    let script = format!(
        "mkdir -p /www/debug/pprof && echo {MARKER} > /www/debug/pprof/heap && exec httpd -f -p 6060 -h /www"
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": false,
            "nodeName": c.node_name(),
            "containers": [{"name": "app", "image": BUSYBOX_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "ports": [{"containerPort": 6060}],
                "readinessProbe": {"httpGet": {"path": "/debug/pprof/heap", "port": 6060},
                    "periodSeconds": 1}}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let begin = Instant::now();
    loop {
        let p = pods.get(name).await.unwrap();
        let status = p.status.unwrap_or_default();
        let ready = status
            .container_statuses
            .as_ref()
            .is_some_and(|cs| cs.iter().all(|c| c.ready));
        if let (true, Some(ip)) = (ready, status.pod_ip) {
            return ip;
        }
        assert!(
            begin.elapsed() < Duration::from_secs(90),
            "pod {ns}/{name} never got ready: {:?}",
            status.conditions
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn abnormal(c: &Cluster, ns: &str, pod: Option<&str>, source: &str) -> (Abnormal, ProfilerSpec) {
    let mut spec = json!({"nodeName": c.node_name()});
    if let Some(pod) = pod {
        spec["podReference"] = json!({"namespace": ns, "name": pod});
    }
    let a: Abnormal = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "go-profile", "namespace": ns}, "spec": spec,
    }))
    .unwrap();
    let p: ProfilerSpec = serde_json::from_value(json!({
        "name": "heap", "type": "InformationCollector", "timeoutSeconds": 20,
        "go": {"source": source},
    }))
    .unwrap();
    (a, p)
}

#[tokio::test]
async fn a_go_profile_comes_only_from_the_abnormals_own_pod() {
    let c: &'static Cluster = cluster().await;
    let cp = c.control_plane();
    let client = cp.client().await;
    let ns = cp.create_namespace("go-profiler").await;
    let (ip, other_ip) = tokio::join!(
        pprof_pod(c, &client, &ns, "app"),
        pprof_pod(c, &client, &ns, "neighbour"),
    );
    let data = tempfile::tempdir().unwrap();
    let profilers = Profilers {
        data_root: data.path().to_owned(),
        public_url: "http://agent.example:10357".into(),
        proc_root: "/proc".into(),
        client: Some(client.clone()),
        limits: Default::default(),
        go_file_dirs: Vec::new(),
    };
    let run = |pod: Option<&'static str>, source: String| {
        let (a, p) = abnormal(c, &ns, pod, &source);
        let profilers = &profilers;
        async move { profilers.run(&a, &p).await.status }
    };

    // The pod's own endpoint: fetched and served under the Abnormal's path.
    let ok = run(Some("app"), format!("http://{ip}:6060/debug/pprof/heap")).await;
    assert_eq!(ok.error, "", "{ok:?}");
    assert_eq!(
        ok.endpoint,
        format!("http://agent.example:10357/profiles/{ns}/go-profile/heap")
    );
    let kept = std::fs::read_to_string(
        data.path()
            .join("profiles")
            .join(&ns)
            .join("go-profile/heap"),
    )
    .unwrap();
    assert_eq!(kept.trim(), MARKER);

    // The kubelet on the node's loopback, another pod, and a name: refused, nothing fetched.
    let kubelet = c.kubelet_address();
    for source in [
        format!("https://127.0.0.1:{}/pods", kubelet.port()),
        format!("http://{other_ip}:6060/debug/pprof/heap"),
        "http://localhost:6060/debug/pprof/heap".to_owned(),
    ] {
        let refused = run(Some("app"), source.clone()).await;
        assert!(refused.endpoint.is_empty(), "{source}: {refused:?}");
        assert!(
            refused
                .error
                .contains(&format!("is not an address of pod {ns}/app"))
                && refused.error.contains(&ip),
            "{source}: {}",
            refused.error
        );
    }

    // busybox httpd redirects a directory without its slash: not followed.
    let redirected = run(Some("app"), format!("http://{ip}:6060/debug")).await;
    assert!(
        redirected.error.contains("redirects are not followed")
            && redirected.error.contains("/debug/"),
        "{}",
        redirected.error
    );

    // No pod named: nothing to fetch from.
    let no_pod = run(None, format!("http://{ip}:6060/debug/pprof/heap")).await;
    assert!(
        no_pod.error.contains("spec.podReference names none"),
        "{}",
        no_pod.error
    );
}
