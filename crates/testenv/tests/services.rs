//! kube-proxy in the test cluster (`ClusterOptions::kube_proxy`): a ClusterIP Service answers
//! pods and the node, pods reach the apiserver through the `kubernetes` Service as in-cluster
//! clients do, and the stop takes kube-proxy's machine-wide iptables chains and sysctl with it.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kdiag_testenv::{BUSYBOX_IMAGE, Cluster, ClusterOptions, ImageSpec, cleanup_stale_runs};
use kube::api::{Api, LogParams, PostParams};

const TIMEOUT: Duration = Duration::from_secs(120);

/// Both tests change the machine's iptables and check it; kube-proxy clusters take turns anyway.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// Rules and user chains of the tables kube-proxy writes, without counters: what a cluster must
/// leave as it found it.
fn iptables_state() -> BTreeSet<String> {
    let mut state = BTreeSet::new();
    for table in ["nat", "filter", "mangle"] {
        let out = Command::new("iptables-save")
            .args(["-t", table])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("iptables-save");
        assert!(out.status.success(), "iptables-save -t {table}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let builtin = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "FORWARD"]
                .iter()
                .any(|c| line.starts_with(&format!(":{c} ACCEPT")));
            if line.starts_with("-A ") || (line.starts_with(':') && !builtin) {
                let line = line.split(" [").next().unwrap_or(line);
                state.insert(format!("{table}: {line}"));
            }
        }
    }
    state
}

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).expect("a valid pod")
}

async fn wait_for_phase(c: &Cluster, pods: &Api<Pod>, name: &str, phases: &[&str]) -> Pod {
    let start = Instant::now();
    loop {
        let p = pods.get(name).await.expect("get pod");
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phases.contains(&phase.as_str()) {
            return p;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "pod {name} is {phase}, not {phases:?}, after {TIMEOUT:?}: {:?}\nkubelet:\n{}",
            p.status,
            c.log_tail("kubelet", 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One plain HTTP GET from this process, the node.
fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().unwrap(),
        Duration::from_secs(2),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test]
async fn pods_and_the_node_reach_a_service_and_pods_reach_the_apiserver_by_cluster_ip() {
    let _serial = SERIAL.lock().await;
    let iptables_before = iptables_state();
    let route_localnet_before = std::fs::read_to_string(ROUTE_LOCALNET).unwrap();

    let c = Cluster::start_with(ClusterOptions {
        kube_proxy: true,
        ..Default::default()
    })
    .await
    .expect("start a cluster with kube-proxy");
    for (phase, took) in c.start_phases() {
        println!("start: {phase:<32} {:>5.1}s", took.as_secs_f64());
    }
    assert!(c.has_kube_proxy());
    let ns = c.create_namespace("services").await;
    let client = c.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);

    // A web server pod behind a Service whose port differs from the container's.
    c.load_image(
        &ImageSpec::new("kdiag.local/web:v1")
            .file(
                "/www/hello.txt",
                0o644,
                b"hello through a ClusterIP\n".to_vec(),
            )
            .cmd(["httpd", "-f", "-p", "8080", "-h", "/www"]),
    )
    .expect("load the web image");
    pods.create(
        &PostParams::default(),
        &pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "web", "image": "kdiag.local/web:v1", "imagePullPolicy": "Never",
                    "ports": [{"containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                }],
            },
        })),
    )
    .await
    .expect("create the web pod");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    let svc = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create the Service");
    let web_ip = svc.spec.and_then(|s| s.cluster_ip).expect("a ClusterIP");
    let api_ip = Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .expect("the kubernetes Service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("its ClusterIP");
    println!("web Service {web_ip}, kubernetes Service {api_ip}");

    // From a pod: the Service by its ClusterIP, then the apiserver through the `kubernetes`
    // Service as an in-cluster client finds it (the environment the kubelet injects) with the
    // pod's ServiceAccount token. Each retried until it answers: rules follow endpoints.
    let script = format!(
        r#"set -u
try() {{ i=0; until "$@"; do i=$((i+1)); [ $i -lt 120 ] || return 1; sleep 0.5; done; }}
try wget -q -O /tmp/hello http://{web_ip}/hello.txt || exit 11
cat /tmp/hello
echo "api at $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
T=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token)
try wget -q --no-check-certificate --header "Authorization: Bearer $T" -O /tmp/api \
  "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api" || exit 12
cat /tmp/api
"#
    );
    pods.create(
        &PostParams::default(),
        &pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "client", "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", script],
                }],
            },
        })),
    )
    .await
    .expect("create the client pod");
    let done = wait_for_phase(&c, &pods, "client", &["Succeeded", "Failed"]).await;
    let log = pods
        .logs("client", &LogParams::default())
        .await
        .unwrap_or_default();
    let phase = done.status.and_then(|s| s.phase).unwrap_or_default();
    assert_eq!(
        phase,
        "Succeeded",
        "client pod log:\n{log}\nkube-proxy:\n{}",
        c.log_tail("kube-proxy", 30)
    );
    assert!(log.contains("hello through a ClusterIP"), "{log}");
    assert!(log.contains(&format!("api at {api_ip}:443")), "{log}");
    assert!(log.contains("\"kind\": \"APIVersions\""), "{log}");

    // From the node.
    let start = Instant::now();
    let from_node = loop {
        match http_get(&web_ip, 80, "/hello.txt") {
            Ok(body) if body.contains("hello through a ClusterIP") => break body,
            other => assert!(
                start.elapsed() < TIMEOUT,
                "the node cannot reach {web_ip}:80: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(from_node.starts_with("HTTP/1."), "{from_node}");

    assert!(
        iptables_state().iter().any(|l| l.contains("KUBE-SERVICES")),
        "kube-proxy's rules must be there while it runs"
    );
    let stop = Instant::now();
    c.stop().expect("a clean stop");
    println!("stop took {:.1}s", stop.elapsed().as_secs_f64());
    let after = iptables_state();
    let added: Vec<_> = after.difference(&iptables_before).collect();
    let removed: Vec<_> = iptables_before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "iptables changed: added {added:#?}, removed {removed:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(ROUTE_LOCALNET).unwrap(),
        route_localnet_before,
        "route_localnet must be restored"
    );
}

#[tokio::test]
async fn kube_proxy_rules_of_a_killed_test_binary_are_removed_by_the_next_start() {
    let _serial = SERIAL.lock().await;
    let iptables_before = iptables_state();
    let route_localnet_before = std::fs::read_to_string(ROUTE_LOCALNET).unwrap();
    let out = tokio::task::spawn_blocking(|| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_start_kube_proxy_then_get_killed",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KDIAG_TESTENV_HELPER", "kill")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("HELPER kube-proxy synced"),
        "the helper never got kube-proxy going:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "the helper must have been killed");
    // SIGKILL ran no cleanup: kube-proxy died with its owner, its rules stayed.
    assert!(
        iptables_state().iter().any(|l| l.contains("KUBE-SERVICES")),
        "expected the killed run's rules to be left"
    );
    let problems = tokio::task::spawn_blocking(cleanup_stale_runs)
        .await
        .unwrap();
    assert!(problems.is_empty(), "{problems:#?}");
    let after = iptables_state();
    assert_eq!(
        after
            .symmetric_difference(&iptables_before)
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "the stale-run cleanup must leave iptables as it found it"
    );
    assert_eq!(
        std::fs::read_to_string(ROUTE_LOCALNET).unwrap(),
        route_localnet_before
    );
}

/// Not a test: the child process of the test above. Starts a cluster with kube-proxy, says so,
/// then dies by SIGKILL.
#[tokio::test]
#[ignore = "helper run by another test in a child process"]
async fn helper_start_kube_proxy_then_get_killed() {
    if std::env::var("KDIAG_TESTENV_HELPER").is_err() {
        return;
    }
    let c = Cluster::start_with(ClusterOptions {
        kube_proxy: true,
        ..Default::default()
    })
    .await
    .expect("start a cluster with kube-proxy");
    println!("HELPER kube-proxy synced on {}", c.bridge());
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}
