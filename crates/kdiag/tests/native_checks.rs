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
async fn the_namespace_round_trip_warns_when_deletion_never_completes() {
    // The light control plane runs no namespace controller, so a deleted namespace stays
    // Terminating: exactly the stuck deletion the check exists to catch. (The passing case runs
    // on the real cluster in probe_runner.rs.)
    let out = run(json!({"namespaceRoundTrip": {"timeoutSeconds": 2}})).await;
    assert_eq!(out.status, CheckerStatus::Warn, "{}", out.message);
    assert!(
        out.message.contains("still terminating after 2s"),
        "{}",
        out.message
    );
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
            kdiag_controller::server::routes(
                Some(service_account_client(cp, "kdiag-controller").await),
                None,
            ),
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
