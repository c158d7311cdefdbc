//! Continuous probes on a real apiserver: native checks run every interval inside the
//! controller against a local HTTP server made to flap and then to break; results pass the
//! denoiser before the ProbeStatus; an image-based probe becomes one resident Deployment.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::*;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server on loopback that fails every 10th request while flapping, and every request
/// once broken; it counts the requests it answered.
struct FlakyServer {
    url: String,
    hits: Arc<AtomicU64>,
    broken: Arc<AtomicBool>,
}

impl FlakyServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicU64::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (h, b) = (hits.clone(), broken.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (h, b) = (h.clone(), b.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                    let fail = b.load(Ordering::SeqCst) || n % 10 == 0;
                    let status = if fail {
                        "500 Internal Server Error"
                    } else {
                        "200 OK"
                    };
                    let reply = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self { url, hits, broken }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn create_probe(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
    let p: Probe = serde_json::from_value(
        json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
        "metadata": {"name": name, "namespace": ns}, "spec": spec}),
    )
    .unwrap();
    Api::<Probe>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
}

async fn checker(
    client: &kube::Client,
    ns: &str,
    probe: &str,
    name: &str,
) -> Option<ProbeCheckerStatus> {
    Api::<ProbeStatus>::namespaced(client.clone(), ns)
        .get_opt(probe)
        .await
        .unwrap()
        .and_then(|ps| ps.spec.checkers.into_iter().find(|c| c.name == name))
}

async fn abnormals_of(client: &kube::Client, ns: &str) -> Vec<Abnormal> {
    Api::<Abnormal>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("kdiag.io/source=ProbeStatus"))
        .await
        .unwrap()
        .items
}

/// Polls `what` until it is Some, failing with `describe` after `timeout`.
async fn wait_for<T, F, Fut>(timeout: Duration, describe: &str, mut what: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = what().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{describe} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_continuous_probe_on_a_path_failing_one_in_ten_stays_pass_and_one_abnormal_follows_a_real_break()
 {
    let cp = with_controller().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("continuous").await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    let source: AbnormalSource = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": "web-failures", "namespace": ns},
        "spec": {"priority": 10, "sourceTemplate": {"type": "ProbeStatus",
            "probeStatusTemplate": {"match": {"probeNamespace": ns}, "nodeName": node}}}}))
    .unwrap();
    Api::<AbnormalSource>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    wait_source_valid(&client, &ns, "web-failures").await;

    let server = FlakyServer::start().await;
    create_probe(
        &client,
        &ns,
        "web",
        json!({
        "policy": {"mode": "Continuous", "intervalSeconds": 1},
        "checks": [{"name": "web", "http": {"url": server.url, "timeoutSeconds": 2}}]}),
    )
    .await;

    // Flapping: every 10th request fails. Every status seen on the way is PASS, and the window
    // shows the failures once a stats write carries them (at most every 12 intervals).
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let flapping = loop {
        let hits = server.hits();
        if let Some(c) = checker(&client, &ns, "web", "web").await {
            seen.push(c.status);
            if hits >= 25 && c.window.as_ref().is_some_and(|w| w.success_rate < 1.0) {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the window never showed the failures of a flapping path ({hits} requests): {:?}",
            checker(&client, &ns, "web", "web").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        seen.iter().all(|s| *s == CheckerStatus::Pass),
        "a 1-in-10 flap stayed PASS: {seen:?}"
    );
    let window = flapping.window.clone().unwrap();
    eprintln!(
        "flapping 1 in 10, after {} requests: {:?} {window:?}",
        server.hits(),
        flapping.status
    );
    assert!(
        (0.85..1.0).contains(&window.success_rate),
        "the success rate shows the flap: {window:?}"
    );
    assert!(
        window.results >= 10 && window.p50_millis.is_some(),
        "{window:?}"
    );
    assert!(
        abnormals_of(&client, &ns).await.is_empty(),
        "a flap pages nobody"
    );

    // The path really breaks: ERROR after 3 failures among the last 10, and one Abnormal.
    server.broken.store(true, Ordering::SeqCst);
    let broke_at = server.hits();
    let failed = wait_for(
        Duration::from_secs(30),
        "the broken path never turned ERROR",
        || {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                checker(&client, &ns, "web", "web")
                    .await
                    .filter(|c| c.status == CheckerStatus::Error)
            }
        },
    )
    .await;
    assert!(
        server.hits() - broke_at >= 2,
        "not before the denoiser's threshold: {} results after the break",
        server.hits() - broke_at
    );
    assert!(
        failed.message.contains("answered 500"),
        "{}",
        failed.message
    );
    let abnormals = wait_for(Duration::from_secs(30), "no Abnormal for the ERROR", || {
        let (client, ns) = (client.clone(), ns.clone());
        async move { Some(abnormals_of(&client, &ns).await).filter(|l| !l.is_empty()) }
    })
    .await;
    assert_eq!(abnormals.len(), 1);
    // A sustained failure: five more failing results make no second Abnormal.
    let now = server.hits();
    wait_for(Duration::from_secs(30), "the probe stopped running", || {
        let hits = server.hits();
        async move { (hits >= now + 5).then_some(()) }
    })
    .await;
    assert_eq!(
        abnormals_of(&client, &ns).await.len(),
        1,
        "exactly one Abnormal for one sustained failure"
    );
    let still = checker(&client, &ns, "web", "web").await.unwrap();
    assert_eq!(still.status, CheckerStatus::Error);

    // Deleting the probe stops its loop: the server hears nothing more.
    Api::<Probe>::namespaced(client.clone(), &ns)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let mut last = (server.hits(), Instant::now());
    wait_for(
        Duration::from_secs(30),
        "the loop kept probing after its Probe was deleted",
        || {
            let hits = server.hits();
            if hits != last.0 {
                last = (hits, Instant::now());
            }
            let quiet = last.1.elapsed();
            async move { (quiet >= Duration::from_secs(4)).then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_continuous_probe_with_a_checker_image_is_one_resident_deployment_the_probe_owns() {
    let cp = with_controller().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("continuous-image").await;
    create_probe(
        &client,
        &ns,
        "shop",
        json!({
        "policy": {"mode": "Continuous", "intervalSeconds": 5},
        "template": {"containers": [{"name": "checker", "image": "registry.example/checker:1"}]},
        "configs": [{"name": "c", "env": [{"name": "URL", "value": "http://shop"}]}]}),
    )
    .await;
    let probe_uid = Api::<Probe>::namespaced(client.clone(), &ns)
        .get("shop")
        .await
        .unwrap()
        .uid()
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let interval_of = |d: &Deployment| {
        d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
            .env
            .as_ref()?
            .iter()
            .find(|e| e.name == "KDIAG_PROBE_INTERVAL_SECONDS")?
            .value
            .clone()
    };
    let d = wait_for(Duration::from_secs(30), "no resident Deployment", || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("shop-continuous").await.unwrap() }
    })
    .await;
    let owner = &d.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Probe", "shop", probe_uid.as_str())
    );
    assert_eq!(interval_of(&d).as_deref(), Some("5"));
    let pod = d.spec.clone().unwrap().template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("kubeprober-worker")
    );

    // A new interval reaches the resident pod's environment.
    Api::<Probe>::namespaced(client.clone(), &ns)
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": {"intervalSeconds": 7}}})),
        )
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the Deployment never took the new interval",
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get("shop-continuous").await.unwrap();
                (interval_of(&d).as_deref() == Some("7")).then_some(())
            }
        },
    )
    .await;
    assert!(
        Api::<Job>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a continuous probe runs no Jobs"
    );

    // Back to periodic: the resident pod goes and the runner's schedule takes over.
    Api::<Probe>::namespaced(client.clone(), &ns)
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"policy": {"mode": "Periodic", "runInterval": 60}}})),
        )
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(30),
        "the resident Deployment outlived Continuous mode",
        || {
            let deployments = deployments.clone();
            async move {
                deployments
                    .get_opt("shop-continuous")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the periodic probe never ran",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let jobs = Api::<Job>::namespaced(client, &ns)
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items;
                (!jobs.is_empty()).then_some(())
            }
        },
    )
    .await;
}

/// A token of ServiceAccount `sa` for the report audience, bound to pod `pod` (what the kubelet
/// projects into a checker pod).
async fn report_token(client: &kube::Client, ns: &str, sa: &str, pod: &Pod) -> String {
    let req: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [kdiag_api::kubeprober::REPORT_AUDIENCE], "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid().unwrap()}}}))
    .unwrap();
    let resp: k8s_openapi::api::authentication::v1::TokenRequest =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
            .create_subresource("token", sa, &PostParams::default(), &req)
            .await
            .unwrap();
    resp.status.unwrap().token
}

#[tokio::test]
async fn a_resident_pods_reports_pass_the_denoiser_and_reports_beyond_the_token_bucket_are_refused_and_counted()
 {
    let cp = with_controller().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("continuous-report").await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "checker"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    // A long interval: the bucket (5 at once, 2 per interval) does not refill during the test.
    create_probe(
        &client,
        &ns,
        "shop",
        json!({
        "policy": {"mode": "Continuous", "intervalSeconds": 600},
        "template": {"serviceAccountName": "checker", "automountServiceAccountToken": false,
            "containers": [{"name": "checker", "image": "registry.example/checker:1"}]}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d = wait_for(Duration::from_secs(30), "no resident Deployment", || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("shop-continuous").await.unwrap() }
    })
    .await;
    // What the Deployment and ReplicaSet controllers would make (the light control plane runs
    // none): the resident pod, under a ReplicaSet the Deployment controls.
    let spec = d.spec.clone().unwrap();
    let owner = |kind: &str, api_version: &str, name: String, uid: String| {
        vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: api_version.into(),
                kind: kind.into(),
                name,
                uid,
                controller: Some(true),
                ..Default::default()
            },
        ]
    };
    let rs = ReplicaSet {
        metadata: kube::api::ObjectMeta {
            name: Some("shop-continuous-1".into()),
            owner_references: Some(owner(
                "Deployment",
                "apps/v1",
                d.name_any(),
                d.uid().unwrap(),
            )),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::apps::v1::ReplicaSetSpec {
            selector: spec.selector.clone(),
            template: Some(spec.template.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let mut pod = Pod {
        metadata: spec.template.metadata.clone().unwrap(),
        spec: spec.template.spec.clone(),
        ..Default::default()
    };
    pod.metadata.name = Some("shop-continuous-1-x".into());
    pod.metadata.owner_references = Some(owner(
        "ReplicaSet",
        "apps/v1",
        rs.name_any(),
        rs.uid().unwrap(),
    ));
    let pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let token = report_token(&client, &ns, "checker", &pod).await;
    let bearer = format!("Bearer {token}");
    let url: String = format!("{}/probe-status", controller_url());
    let report = |status: &str| {
        json!({"probeName": "shop", "probeNamespace": ns, "name": "",
            "checkers": [{"name": "cart", "status": status, "message": "cart answered 503", "latencyMillis": 12}]})
        .to_string()
    };
    let post = |body: String| {
        let (url, bearer) = (url.clone(), bearer.clone());
        async move {
            reqwest_lite::request_with(
                url.parse().unwrap(),
                "POST",
                body.as_bytes(),
                &[
                    ("authorization", &bearer),
                    ("content-type", "application/json"),
                ],
            )
            .await
        }
    };
    let statuses: Api<ProbeStatus> = Api::namespaced(client.clone(), &ns);

    // Two failures: taken, but below the denoiser's threshold nothing is stored.
    for _ in 0..2 {
        let (code, body) = post(report("ERROR")).await;
        assert_eq!(code, 200, "{body}");
    }
    assert!(
        statuses.get_opt("shop").await.unwrap().is_none(),
        "two failures are noise"
    );
    // The third failure among the last ten turns the checker to ERROR, with its window.
    let (code, body) = post(report("ERROR")).await;
    assert_eq!(code, 200, "{body}");
    let ps = statuses.get("shop").await.unwrap();
    let cart = ps.spec.checkers.iter().find(|c| c.name == "cart").unwrap();
    assert_eq!(cart.status, CheckerStatus::Error);
    assert_eq!(
        cart.window,
        Some(CheckerWindow {
            results: 3,
            success_rate: 0.0,
            p50_millis: Some(12),
            p99_millis: Some(12)
        })
    );
    // Two more fit the bucket of five; the sixth report is refused, and counted.
    for _ in 0..2 {
        let (code, body) = post(report("ERROR")).await;
        assert_eq!(code, 200, "{body}");
    }
    let (code, body) = post(report("PASS")).await;
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("faster than its interval allows"), "{body}");
    let (_, metrics) = reqwest_get(&format!("{}/metrics", controller_url())).await;
    let limited = metrics
        .lines()
        .find(|l| {
            l.starts_with("kdiag_continuous_probe_results_total")
                && l.contains(r#"outcome="limited""#)
                && l.contains(r#"path="report""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(limited >= 1.0, "the refused report is counted:\n{metrics}");
}
