//! kdiag's native probe checks, each against a healthy target and a broken one, all real:
//! the test apiserver, dnsmasq, openssl's TLS server, etcd, HTTP and TCP servers on loopback.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kdiag_api::*;
use kdiag_controller::probes::checks::{self, Outcome};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(spec: serde_json::Value) -> NativeCheck {
    let mut v = spec;
    v["name"] = json!("c");
    serde_json::from_value(v).unwrap()
}

async fn run(spec: serde_json::Value) -> Outcome {
    let cp = kdiag_testenv::control_plane().await;
    checks::run(&cp.client().await, &check(spec)).await
}

/// A child process killed when the test ends.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_apiserver_check_passes_on_a_ready_apiserver_and_fails_on_a_dead_one() {
    let out = run(json!({"apiserver": {}})).await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    let mut config = kube::Config::new(
        format!("https://127.0.0.1:{}", free_port())
            .parse()
            .unwrap(),
    );
    config.accept_invalid_certs = true;
    kdiag_testenv::install_crypto_provider();
    let dead = kube::Client::try_from(config).unwrap();
    let out = checks::run(&dead, &check(json!({"apiserver": {}}))).await;
    assert_eq!(out.status, CheckerStatus::Error);
    assert!(out.message.contains("/readyz failed"), "{}", out.message);
}

#[tokio::test]
async fn the_dns_check_resolves_through_a_real_resolver_and_names_what_failed() {
    let port = free_port();
    let _dnsmasq = Server(
        Command::new("/usr/sbin/dnsmasq")
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--user=root",
            ])
            .arg(format!("--port={port}"))
            .arg("--address=/healthy.kdiag.test/10.1.2.3")
            .arg("--local=/kdiag.test/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (installed by make setup)"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resolver = format!("127.0.0.1:{port}");
    let out = run(json!({"dns": {"names": ["healthy.kdiag.test"], "resolvers": [resolver]}})).await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    assert!(out.message.contains("10.1.2.3"), "{}", out.message);
    let out = run(json!({"dns": {"names": ["missing.kdiag.test"], "resolvers": [resolver]}})).await;
    assert_eq!(out.status, CheckerStatus::Error);
    assert!(
        out.message
            .contains("missing.kdiag.test has no A/AAAA record"),
        "{}",
        out.message
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let out = run(
        json!({"dns": {"names": ["healthy.kdiag.test"], "resolvers": [dead], "timeoutSeconds": 1}}),
    )
    .await;
    assert_eq!(out.status, CheckerStatus::Error);
    assert!(
        out.message.contains(&format!("via {dead}")),
        "{}",
        out.message
    );
}

#[tokio::test]
async fn the_round_trip_runs_in_kdiags_namespace_with_the_shipped_role_and_creates_no_namespace() {
    let cp = installed().await;
    let controller = service_account_client(cp, "kdiag-controller").await;
    let namespaces = || async {
        Api::<k8s_openapi::api::core::v1::Namespace>::all(cp.client().await)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len()
    };
    let before = namespaces().await;
    let out = checks::run(
        &controller,
        &check(json!({"namespaceRoundTrip": {"timeoutSeconds": 10}})),
    )
    .await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    assert!(
        out.message
            .starts_with("Lease kube-diagnoser/kdiag-round-trip-"),
        "{}",
        out.message
    );
    assert_eq!(namespaces().await, before, "no namespace was made");
    // The controller's identity may no longer make namespaces at all.
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "kdiag-may-not"}})).unwrap();
    let refused = Api::<k8s_openapi::api::core::v1::Namespace>::all(controller)
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
}

/// A report endpoint as the controller serves it, with the shipped RBAC, that takes reports
/// without a token (the explicit opt-in KubeProber's SDK needs).
async fn open_reports(
    cp: &kdiag_testenv::ControlPlane,
) -> std::sync::Arc<kdiag_controller::probes::report::ProbeReports> {
    reports(cp, true).await
}

async fn reports(
    cp: &kdiag_testenv::ControlPlane,
    allow_unauthenticated: bool,
) -> std::sync::Arc<kdiag_controller::probes::report::ProbeReports> {
    let client = service_account_client(cp, "kdiag-controller").await;
    std::sync::Arc::new(kdiag_controller::probes::report::ProbeReports::new(
        client.clone(),
        allow_unauthenticated,
        std::sync::Arc::new(kdiag_controller::nodes::KnownNodes::new(client)),
    ))
}

/// Serves `reports` on a free port; the URL of /probe-status.
async fn serve_reports(
    reports: std::sync::Arc<kdiag_controller::probes::report::ProbeReports>,
) -> String {
    let port = free_port();
    let state = kdiag_runtime::server::ServerState {
        metrics: std::sync::Arc::new(kdiag_runtime::metrics::Metrics::new()),
        refresh: std::sync::Arc::new(|| {}),
        ready: vec![],
        routes: kdiag_controller::server::routes(Some(reports), None),
    };
    let serving =
        kdiag_runtime::server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
            .await
            .unwrap();
    tokio::spawn(serving);
    format!("http://127.0.0.1:{port}/probe-status")
}

/// A Probe, the Job its runner would make for it, and a pod of that Job (as the Job controller
/// would make it; the light control plane runs none); the pod's UID.
async fn checker_pod_of(client: &kube::Client, ns: &str, probe: &str, sa: &str) -> String {
    let p: Probe = serde_json::from_value(json!({"apiVersion": "kubeprober.erda.cloud/v1",
        "kind": "Probe", "metadata": {"name": probe, "namespace": ns}, "spec": {}}))
    .unwrap();
    let p = Api::<Probe>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let template: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
        "serviceAccountName": sa, "automountServiceAccountToken": false,
        "containers": [{"name": "c", "image": "checker"}]}))
    .unwrap();
    let job = kdiag_controller::probes::runner::job_for(
        &p,
        &template,
        jiff::Timestamp::now(),
        "http://x/probe-status",
    );
    let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap();
    let template = job.spec.unwrap().template;
    let mut pod = k8s_openapi::api::core::v1::Pod {
        metadata: template.metadata.unwrap(),
        spec: template.spec,
        ..Default::default()
    };
    pod.metadata.name = Some(format!("{probe}-checker"));
    pod.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: job.metadata.name.unwrap(),
            uid: job.metadata.uid.unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

/// A token of ServiceAccount `sa` for `audience`, bound to pod `pod` (what the kubelet
/// projects into a checker pod).
async fn pod_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    audience: &str,
    pod: (&str, &str),
) -> String {
    let req: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(json!({
        "spec": {"audiences": [audience], "expirationSeconds": 600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.0, "uid": pod.1}}}))
    .unwrap();
    let resp: k8s_openapi::api::authentication::v1::TokenRequest =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
            .create_subresource("token", sa, &PostParams::default(), &req)
            .await
            .unwrap();
    resp.status.unwrap().token
}

#[tokio::test]
async fn a_report_needs_the_projected_token_of_a_checker_pod_of_its_own_probe() {
    let cp = installed().await;
    let ns = cp.create_namespace("report-auth").await;
    let client = cp.client().await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "checker"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mine_uid = checker_pod_of(&client, &ns, "mine", "checker").await;
    checker_pod_of(&client, &ns, "other", "checker").await;
    // A pod that carries the labels of "other"'s checker pods but is no pod of its Jobs.
    let forged: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "forged", "labels": {"app": "kubeprober.erda.cloud",
            "kubeprober.erda.cloud/probe-name": "other", "kubeprober.erda.cloud/probe-namespace": ns}},
        "spec": {"serviceAccountName": "checker", "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": "checker"}]}}))
    .unwrap();
    let forged_uid = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &forged)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let audience = kdiag_api::kubeprober::REPORT_AUDIENCE;
    let mine = pod_token(
        &client,
        &ns,
        "checker",
        audience,
        ("mine-checker", &mine_uid),
    )
    .await;
    let wrong_audience = pod_token(
        &client,
        &ns,
        "checker",
        "https://kubernetes.default.svc",
        ("mine-checker", &mine_uid),
    )
    .await;
    let forged = pod_token(&client, &ns, "checker", audience, ("forged", &forged_uid)).await;
    let url = serve_reports(reports(cp, false).await).await;
    let report = |probe: &str, message: &str| {
        format!(
            r#"{{"probeName":"{probe}","probeNamespace":"{ns}","name":"","checkers":[{{"name":"disk","status":"ERROR","message":"{message}"}}]}}"#
        )
    };
    let post = |body: String, token: Option<String>| {
        let url = url.clone();
        async move {
            let bearer = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = bearer
                .as_deref()
                .map(|b| vec![("authorization", b)])
                .unwrap_or_default();
            let url: reqwest_lite::Url = url.parse().unwrap();
            reqwest_lite::request_with(url, "POST", body.as_bytes(), &headers).await
        }
    };

    for (who, token, probe, code, says) in [
        (
            "anonymous",
            None,
            "mine",
            401,
            "--probe-status-allow-unauthenticated",
        ),
        (
            "a token for the apiserver's audience",
            Some(wrong_audience),
            "mine",
            401,
            "invalid for the target audiences [\"kdiag-probe-status\"]",
        ),
        (
            "a checker pod of another probe",
            Some(mine.clone()),
            "other",
            403,
            "is not a checker pod of probe",
        ),
        (
            "a pod with a checker's labels but not of the probe's Job",
            Some(forged),
            "other",
            403,
            "is not a checker pod of probe",
        ),
        (
            "garbage",
            Some("not-a-token".into()),
            "mine",
            401,
            "did not accept",
        ),
    ] {
        let (status, text) = post(report(probe, "disk full"), token).await;
        assert_eq!(status, code, "{who}: {text}");
        assert!(text.contains(says), "{who}: {text}");
    }
    let statuses = Api::<ProbeStatus>::namespaced(client.clone(), &ns);
    for probe in ["mine", "other"] {
        assert!(
            statuses.get_opt(probe).await.unwrap().is_none(),
            "a refused report wrote ProbeStatus {probe}"
        );
    }

    // Its own probe's checker pod, with its token: stored.
    let (status, text) = post(report("mine", "disk full"), Some(mine.clone())).await;
    assert_eq!(status, 200, "{text}");
    let ps = statuses.get("mine").await.unwrap();
    assert_eq!(ps.spec.checkers[0].message, "disk full");

    // A report naming a node that does not exist is refused and changes nothing.
    let (status, text) = post(
        report("mine", "kubelet down, error node: [ no-such-node-7 ]"),
        Some(mine),
    )
    .await;
    assert_eq!(status, 422, "{text}");
    assert!(
        text.contains("no-such-node-7") && text.contains("no Node of this cluster"),
        "{text}"
    );
    let ps = statuses.get("mine").await.unwrap();
    assert_eq!(ps.spec.checkers[0].message, "disk full", "unchanged");
}

#[tokio::test]
async fn the_nodes_check_names_not_ready_and_cordoned_nodes() {
    let cp = kdiag_testenv::control_plane().await;
    let client = cp.client().await;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    for (name, ready, cordoned) in [
        ("check-ready", "True", false),
        ("check-cordoned", "True", true),
    ] {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"unschedulable": cordoned}}),
        )
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let status = json!({"status": {"conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady", "lastHeartbeatTime": jiff::Timestamp::now().to_string(), "lastTransitionTime": jiff::Timestamp::now().to_string()}]}});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .unwrap();
    }
    let out = run(json!({"nodes": {}})).await;
    assert_eq!(out.status, CheckerStatus::Warn, "{}", out.message);
    assert!(
        out.message.contains("warn node: [ check-cordoned ]"),
        "{}",
        out.message
    );
    let broken: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(json!({"metadata": {"name": "check-broken"}})).unwrap();
    nodes.create(&PostParams::default(), &broken).await.unwrap();
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "KubeletNotReady", "lastHeartbeatTime": jiff::Timestamp::now().to_string(), "lastTransitionTime": jiff::Timestamp::now().to_string()}]}});
    nodes
        .patch_status(
            "check-broken",
            &PatchParams::default(),
            &Patch::Merge(status),
        )
        .await
        .unwrap();
    let out = run(json!({"nodes": {}})).await;
    assert_eq!(out.status, CheckerStatus::Error, "{}", out.message);
    assert!(
        out.message.contains("error node: [ check-broken ]")
            && out.message.contains("KubeletNotReady"),
        "{}",
        out.message
    );
}

fn certificate(
    dir: &std::path::Path,
    name: &str,
    days: u32,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-days",
            &days.to_string(),
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test]
async fn the_tls_check_reads_expiry_from_files_and_served_certificates() {
    let dir = tempdir();
    let (long, long_key) = certificate(dir.path(), "long-lived", 365);
    let (soon, _) = certificate(dir.path(), "expiring", 3);
    let (month, _) = certificate(dir.path(), "this-month", 20);
    let out = run(json!({"tls": {"files": [long]}})).await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    let out = run(json!({"tls": {"files": [month]}})).await;
    assert_eq!(out.status, CheckerStatus::Warn, "{}", out.message);
    let out = run(json!({"tls": {"files": [long.clone(), soon.clone()]}})).await;
    assert_eq!(out.status, CheckerStatus::Error, "{}", out.message);
    assert!(
        out.message.contains("CN=expiring") && out.message.contains("renew it"),
        "{}",
        out.message
    );

    // A real TLS endpoint serving the long-lived certificate.
    let port = free_port();
    let _server = Server(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept", &port.to_string(), "-cert"])
            .arg(&long)
            .arg("-key")
            .arg(&long_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port).await;
    let out = run(json!({"tls": {"endpoints": [format!("127.0.0.1:{port}")]}})).await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    let out = run(json!({"tls": {"endpoints": [format!("127.0.0.1:{}", free_port())]}})).await;
    assert_eq!(out.status, CheckerStatus::Error);
    assert!(out.message.contains("cannot connect"), "{}", out.message);
}

#[tokio::test]
async fn http_and_tcp_checks_pass_on_live_endpoints_and_fail_clearly_otherwise() {
    let plugin = TestPlugin::start().await;
    let ok =
        run(json!({"http": {"url": format!("http://127.0.0.1:{}/echo/x", plugin.port)}})).await;
    assert_eq!(ok.status, CheckerStatus::Pass, "{}", ok.message);
    let bad =
        run(json!({"http": {"url": format!("http://127.0.0.1:{}/fail/503", plugin.port)}})).await;
    assert_eq!(bad.status, CheckerStatus::Error);
    assert!(
        bad.message.contains("answered 503, expected 2xx"),
        "{}",
        bad.message
    );
    let tcp_ok = run(json!({"tcp": {"address": format!("127.0.0.1:{}", plugin.port)}})).await;
    assert_eq!(tcp_ok.status, CheckerStatus::Pass, "{}", tcp_ok.message);
    let closed = free_port();
    let tcp_bad = run(json!({"tcp": {"address": format!("127.0.0.1:{closed}")}})).await;
    assert_eq!(tcp_bad.status, CheckerStatus::Error);
    assert!(tcp_bad.message.contains("refused"), "{}", tcp_bad.message);
}

#[tokio::test]
async fn the_etcd_check_puts_gets_and_deletes_against_a_real_etcd() {
    let dir = tempdir();
    let (port, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let _etcd = Server(
        Command::new("/usr/bin/etcd")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port).await;
    let out = run(json!({"etcd": {"endpoint": url}})).await;
    assert_eq!(out.status, CheckerStatus::Pass, "{}", out.message);
    let out = run(json!({"etcd": {"endpoint": format!("http://127.0.0.1:{}", free_port())}})).await;
    assert_eq!(out.status, CheckerStatus::Error);
    assert!(
        out.message.starts_with("etcd put failed"),
        "{}",
        out.message
    );
}

#[tokio::test]
async fn a_check_with_no_kind_or_two_is_unknown() {
    let out = run(json!({})).await;
    assert_eq!(out.status, CheckerStatus::Unknown);
    let out = run(json!({"tcp": {"address": "a:1"}, "http": {"url": "http://a"}})).await;
    assert_eq!(out.status, CheckerStatus::Unknown);
    assert!(out.message.contains("exactly one of"), "{}", out.message);
}

#[tokio::test]
async fn the_report_endpoint_takes_kubeprobers_payload_and_refuses_malformed_ones() {
    let cp = installed().await;
    let ns = cp.create_namespace("report").await;
    let client = cp.client().await;
    let port = free_port();
    let state = kdiag_runtime::server::ServerState {
        metrics: std::sync::Arc::new(kdiag_runtime::metrics::Metrics::new()),
        refresh: std::sync::Arc::new(|| {}),
        ready: vec![],
        routes: kdiag_runtime::server::join(
            kdiag_agent::server::routes(None),
            // KubeProber's SDK sends no token: this endpoint takes them by explicit opt-in.
            kdiag_controller::server::routes(Some(open_reports(cp).await), None),
        ),
    };
    let serving =
        kdiag_runtime::server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
            .await
            .unwrap();
    tokio::spawn(serving);
    let post = |body: String| async move {
        reqwest_lite::request(
            format!("http://127.0.0.1:{port}/probe-status")
                .parse()
                .unwrap(),
            "POST",
            body.as_bytes(),
        )
        .await
    };
    let payload = format!(
        r#"{{"probeName":"k8s","probeNamespace":"{ns}","name":"","checkers":[{{"name":"dns-resolution-check","status":"ERROR","message":"lookup failed","lastRun":"2021-09-01T09:59:23Z"}}]}}"#
    );
    assert_eq!(post(payload).await.0, 200);
    let second = format!(
        r#"{{"probeName":"k8s","probeNamespace":"{ns}","name":"","checkers":[{{"name":"namespace-check","status":"pass"}}]}}"#
    );
    assert_eq!(post(second).await.0, 200);
    let ps = Api::<ProbeStatus>::namespaced(client.clone(), &ns)
        .get("k8s")
        .await
        .unwrap();
    let names: Vec<_> = ps
        .spec
        .checkers
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect();
    assert_eq!(
        names,
        [
            ("dns-resolution-check", CheckerStatus::Error),
            ("namespace-check", CheckerStatus::Pass)
        ],
        "merged by checker name"
    );

    for (body, expected) in [
        ("{nope".to_owned(), "not KubeProber's report payload"),
        (
            format!(
                r#"{{"probeName":"k8s","probeNamespace":"{ns}","checkers":[{{"name":"x","status":"MAYBE"}}]}}"#
            ),
            "use PASS, INFO, WARN, UNKNOWN or ERROR",
        ),
        (
            format!(
                r#"{{"probeName":"k8s","probeNamespace":"{ns}","checkers":[{{"name":"x","status":"ERROR"}}]}}"#
            ),
            "has no message",
        ),
    ] {
        let (code, text) = post(body).await;
        assert_eq!(code, 400, "{text}");
        assert!(text.contains(expected), "{text}");
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn with_per_config_each_configs_checker_pod_reports_under_its_configs_name() {
    let cp = installed().await;
    let ns = cp.create_namespace("per-config").await;
    let client = cp.client().await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "checker"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let p: Probe = serde_json::from_value(json!({"apiVersion": "kubeprober.erda.cloud/v1",
        "kind": "Probe", "metadata": {"name": "shop", "namespace": ns}, "spec": {
            "perConfig": true,
            "template": {"serviceAccountName": "checker", "automountServiceAccountToken": false,
                "containers": [{"name": "c", "image": "http-checker"}]},
            "configs": [
                {"name": "frontend", "env": [{"name": "URL", "value": "http://frontend"}]},
                {"name": "cart", "env": [{"name": "URL", "value": "http://cart"}]}]}}))
    .unwrap();
    let p = Api::<Probe>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &p)
        .await
        .unwrap();
    let template = p.spec.template.clone().unwrap();
    // The Jobs the runner makes for a run, and a pod of each (the light control plane runs no
    // Job controller), each with the token the kubelet would project into it.
    let jobs = kdiag_controller::probes::runner::jobs_for(
        &p,
        &template,
        jiff::Timestamp::now(),
        "http://x/probe-status",
        "shop-run",
    );
    assert_eq!(jobs.len(), 2, "one checker pod per config");
    let mut tokens = vec![];
    for job in jobs {
        let job = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &job)
            .await
            .unwrap();
        let template = job.spec.clone().unwrap().template;
        let env = template.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        let config = env
            .iter()
            .find(|e| e.name == "KDIAG_PROBE_CONFIG")
            .and_then(|e| e.value.clone())
            .unwrap();
        let url = env
            .iter()
            .find(|e| e.name == "URL")
            .and_then(|e| e.value.clone())
            .unwrap();
        assert_eq!(url, format!("http://{config}"), "only its own config's env");
        let pod_name = format!("{}-pod", job.metadata.name.clone().unwrap());
        let mut pod = k8s_openapi::api::core::v1::Pod {
            metadata: template.metadata.unwrap(),
            spec: template.spec,
            ..Default::default()
        };
        pod.metadata.name = Some(pod_name.clone());
        pod.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job.metadata.name.clone().unwrap(),
                uid: job.metadata.uid.clone().unwrap(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        let uid = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap();
        let token = pod_token(
            &client,
            &ns,
            "checker",
            kdiag_api::kubeprober::REPORT_AUDIENCE,
            (&pod_name, &uid),
        )
        .await;
        tokens.push((config, token));
    }
    let url: String = serve_reports(reports(cp, false).await).await;
    for (config, token) in &tokens {
        // The same case template reports the same checker name from every pod.
        let (status, message, extra) = if config == "cart" {
            (
                "ERROR",
                "503 from http://cart",
                r#",{"name":"latency","status":"PASS"}"#,
            )
        } else {
            ("PASS", "", "")
        };
        let body = format!(
            r#"{{"probeName":"shop","probeNamespace":"{ns}","name":"","checkers":[{{"name":"http","status":"{status}","message":"{message}"}}{extra}]}}"#
        );
        let bearer = format!("Bearer {token}");
        let (code, answer) = reqwest_lite::request_with(
            url.parse().unwrap(),
            "POST",
            body.as_bytes(),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(code, 200, "{config}: {answer}");
    }
    let ps = Api::<ProbeStatus>::namespaced(client.clone(), &ns)
        .get("shop")
        .await
        .unwrap();
    let mut got: Vec<(&str, CheckerStatus)> = ps
        .spec
        .checkers
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("cart/http", CheckerStatus::Error),
            ("cart/latency", CheckerStatus::Pass),
            ("frontend", CheckerStatus::Pass)
        ],
        "one checker per config, under its name (config/checker when a pod reports several)"
    );
}
