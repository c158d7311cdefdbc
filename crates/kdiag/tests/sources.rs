//! Event and alert sources on a real apiserver: Warning Events and Prometheus alerts (from a real
//! Prometheus, directly and through a real Alertmanager) become Abnormals once per incident,
//! within budgets.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Event;
use kdiag_api::*;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

async fn source(client: &kube::Client, ns: &str, name: &str, spec: serde_json::Value) {
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

async fn warning(
    client: &kube::Client,
    ns: &str,
    name: &str,
    pod: &str,
    reason: &str,
    message: &str,
) {
    let now = jiff::Timestamp::now().to_string();
    let e: Event = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": format!("{ns}-{pod}-uid"), "fieldPath": "spec.containers{app}"},
        "reason": reason, "message": message, "type": "Warning", "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": "kubelet", "host": format!("{ns}-node")}
    }))
    .unwrap();
    Api::<Event>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &e)
        .await
        .unwrap();
}

async fn abnormals(client: &kube::Client, ns: &str, source: &str) -> Vec<Abnormal> {
    Api::<Abnormal>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kdiag.io/source={source}")))
        .await
        .unwrap()
        .items
}

async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_warning_event_makes_one_abnormal_and_fifty_repeats_count_on_it() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("events").await;
    let client = cp.client().await;
    source(&client, &ns, "backoff", json!({"sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"namespace": ns, "reason": "BackOff"}}},
        "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}]})).await;
    wait_source_valid(&client, &ns, "backoff").await;
    warning(
        &client,
        &ns,
        "web.1",
        "web",
        "BackOff",
        "Back-off restarting failed container",
    )
    .await;
    let list = eventually("the Abnormal", Duration::from_secs(20), async || {
        let l = abnormals(&client, &ns, "KubernetesEvent").await;
        (l.len() == 1).then_some(l)
    })
    .await;
    let a = &list[0];
    assert_eq!(a.spec.source, AbnormalSourceType::KubernetesEvent);
    assert_eq!(
        a.spec.assigned_information_collectors,
        [NamespacedName::new("kube-diagnoser", "pod-collector")]
    );
    assert_eq!(
        a.spec.node_name,
        format!("{ns}-node"),
        "the node is the Event's source host"
    );
    let pod = a.spec.pod_reference.clone().unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.container_name.as_str()),
        ("web", "app")
    );
    assert_eq!(
        a.spec.kubernetes_event.as_ref().unwrap().reason.as_deref(),
        Some("BackOff")
    );

    for i in 2..=50 {
        warning(
            &client,
            &ns,
            &format!("web.{i}"),
            "web",
            "BackOff",
            "Back-off restarting failed container",
        )
        .await;
    }
    let name = a.name_any();
    eventually("a count of 50", Duration::from_secs(30), async || {
        let a = Api::<Abnormal>::namespaced(client.clone(), &ns)
            .get(&name)
            .await
            .unwrap();
        (a.annotations()
            .get("kdiag.io/trigger-count")
            .map(String::as_str)
            == Some("50"))
        .then_some(())
    })
    .await;
    assert_eq!(
        abnormals(&client, &ns, "KubernetesEvent").await.len(),
        1,
        "one incident, one Abnormal"
    );
}

#[tokio::test]
async fn an_event_no_template_matches_makes_nothing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("events-none").await;
    let client = cp.client().await;
    source(
        &client,
        &ns,
        "oom",
        json!({"sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"namespace": ns, "reason": "OOMKilling"}}}}),
    )
    .await;
    wait_source_valid(&client, &ns, "oom").await;
    warning(&client, &ns, "web.1", "web", "BackOff", "Back-off").await;
    warning(
        &client,
        &ns,
        "web.2",
        "web",
        "OOMKillingSoon",
        "near the limit",
    )
    .await;
    // A canary the template does match, sent last: Events are handled in order, so once its
    // Abnormal exists the two before it were handled too.
    warning(&client, &ns, "canary.1", "canary", "OOMKilling", "canary").await;
    let list = eventually(
        "the canary's Abnormal",
        Duration::from_secs(20),
        async || {
            let l = abnormals(&client, &ns, "KubernetesEvent").await;
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(list.len(), 1, "only the canary made an Abnormal");
    assert_eq!(pod_of(&list[0]), "canary");
}

/// The pod an Event's Abnormal is about.
fn pod_of(a: &Abnormal) -> String {
    a.spec
        .pod_reference
        .as_ref()
        .map(|p| p.name.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_suspended_source_creates_nothing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("events-suspended").await;
    let client = cp.client().await;
    source(
        &client,
        &ns,
        "off",
        json!({"suspend": true, "sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"namespace": ns, "reason": "Unhealthy"}}}}),
    )
    .await;
    // A source that is not suspended, for a canary.
    source(
        &client,
        &ns,
        "canary",
        json!({"sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"namespace": ns, "reason": "Canary"}}}}),
    )
    .await;
    wait_source_valid(&client, &ns, "off").await;
    wait_source_valid(&client, &ns, "canary").await;
    warning(
        &client,
        &ns,
        "web.1",
        "web",
        "Unhealthy",
        "Liveness probe failed",
    )
    .await;
    // Sent last: once its Abnormal exists, the Event before it was handled too.
    warning(&client, &ns, "canary.1", "canary", "Canary", "canary").await;
    let list = eventually(
        "the canary's Abnormal",
        Duration::from_secs(20),
        async || {
            let l = abnormals(&client, &ns, "KubernetesEvent").await;
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(list.len(), 1, "the suspended source made nothing");
    assert_eq!(pod_of(&list[0]), "canary");
}

#[tokio::test]
async fn a_source_in_a_teams_namespace_acts_only_on_that_namespaces_events() {
    let cp = with_controller().await;
    let (team_a, team_b) = (
        cp.create_namespace("team-a").await,
        cp.create_namespace("team-b").await,
    );
    let client = cp.client().await;
    // No namespace in the template: the source's own namespace bounds it.
    source(
        &client,
        &team_a,
        "everything-crossed",
        json!({"sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"reason": "Crossed"}}}}),
    )
    .await;
    wait_source_valid(&client, &team_a, "everything-crossed").await;
    warning(
        &client,
        &team_b,
        "web.1",
        "web",
        "Crossed",
        "another team's pod",
    )
    .await;
    // Sent last: once its Abnormal exists, the other team's Event was handled too.
    warning(&client, &team_a, "canary.1", "canary", "Crossed", "canary").await;
    let list = eventually(
        "the canary's Abnormal",
        Duration::from_secs(20),
        async || {
            let l = abnormals(&client, &team_a, "KubernetesEvent").await;
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(pod_of(&list[0]), "canary");
    assert!(
        abnormals(&client, &team_b, "KubernetesEvent")
            .await
            .is_empty(),
        "team-a's source made nothing for team-b's pod"
    );
}

async fn post(path: &str, body: &str, token: Option<&str>) -> (u16, String) {
    let url: reqwest_lite::Url = format!("{}{path}", controller_url()).parse().unwrap();
    let bearer = format!("Bearer {}", token.unwrap_or(ALERT_TOKEN));
    reqwest_lite::request_with(url, "POST", body.as_bytes(), &[("authorization", &bearer)]).await
}

fn alert(ns: &str, node: &str, starts: &str) -> serde_json::Value {
    json!({"labels": {"alertname": "KdiagDirect", "test": ns, "namespace": ns, "node": node, "severity": "critical"},
           "annotations": {"summary": "direct"}, "startsAt": starts, "generatorURL": "http://prometheus/graph"})
}

#[tokio::test]
async fn malformed_alert_payloads_get_400_with_what_is_wrong() {
    let _ = with_controller().await;
    for (path, body, expected) in [
        ("/api/v2/alerts", "{}", "not a JSON array of alerts"),
        (
            "/api/v2/alerts",
            r#"[{"labels": {"node": "n"}}]"#,
            "no alertname label",
        ),
        (
            "/api/v1/alerts",
            r#"[{"labels": {"alertname": "A"}, "startsAt": "soon"}]"#,
            "not an RFC 3339 time",
        ),
        (
            "/api/v1/webhook",
            r#"{"version": "2", "alerts": []}"#,
            "kdiag reads version 4",
        ),
        ("/api/v1/webhook", "not json", "webhook payload"),
    ] {
        let (code, text) = post(path, body, None).await;
        assert_eq!(code, 400, "{path} {body}: {text}");
        assert!(text.contains(expected), "{text}");
    }
}

#[tokio::test]
async fn a_redelivered_alert_finds_its_abnormal_even_after_a_controller_restart() {
    // The dedupe key is the alert's fingerprint and startsAt, kept in the Abnormal's name: a fresh
    // controller with no memory of the first delivery groups the second into it.
    let cp = with_controller().await;
    let ns = cp.create_namespace("alerts-restart").await;
    let client = cp.client().await;
    ensure_node(&client, "n1").await;
    source(&client, &ns, "direct", json!({"sourceTemplate": {"type": "PrometheusAlert",
        "prometheusAlertTemplate": {"regexp": {"alertName": "KdiagDirect", "labels": {"test": ns}}, "nodeNameReferenceLabel": "node"}}})).await;
    wait_source_valid(&client, &ns, "direct").await;
    let body = json!([alert(&ns, "n1", "2026-11-22T10:00:00Z")]).to_string();
    let (code, text) = post("/api/v2/alerts", &body, None).await;
    assert_eq!(code, 200, "{text}");
    assert!(text.contains(r#""created":1"#), "{text}");

    // A second controller, started from nothing.
    let (handle, driver) = kdiag_controller::start(
        service_account_client(cp, "kdiag-controller").await,
        Default::default(),
        kdiag_runtime::builtin::Builtins::standard(),
        Arc::new(kdiag_runtime::metrics::Metrics::new()),
        tokio_util::sync::CancellationToken::new(),
    );
    let task = tokio::spawn(driver);
    eventually(
        "the second controller's caches",
        Duration::from_secs(20),
        async || handle.ready.load(Ordering::Acquire).then_some(()),
    )
    .await;
    // Its readiness covers the Abnormal cache, not the AbnormalSources the alerts are matched
    // against: wait until it has this one.
    eventually(
        "the source in the second controller's cache",
        Duration::from_secs(20),
        async || {
            handle
                .alerts
                .sources
                .state()
                .iter()
                .any(|s| s.name_any() == "direct" && s.namespace().as_deref() == Some(&ns))
                .then_some(())
        },
    )
    .await;
    let summary = handle
        .alerts
        .deliver(serde_json::from_str(&body).unwrap(), "push")
        .await
        .unwrap();
    task.abort();
    assert_eq!((summary.created, summary.grouped), (0, 1), "{summary:?}");
    let list: Vec<_> = abnormals(&client, kdiag_api::SYSTEM_NAMESPACE, "PrometheusAlert")
        .await
        .into_iter()
        .filter(|a| {
            a.spec
                .prometheus_alert
                .as_ref()
                .and_then(|p| p.labels.get("test"))
                == Some(&ns)
        })
        .collect();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn a_thousand_alerts_in_a_burst_respect_the_budget_and_the_suppressed_count_is_exact() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("alerts-storm").await;
    let client = cp.client().await;
    source(&client, &ns, "storm", json!({"sourceTemplate": {"type": "PrometheusAlert",
        "prometheusAlertTemplate": {"regexp": {"alertName": "KdiagDirect", "labels": {"test": ns}}, "nodeNameReferenceLabel": "node"}}})).await;
    wait_source_valid(&client, &ns, "storm").await;
    // A mass failure: a thousand distinct alerts, each on its own node (nodes that exist:
    // alerts for invented nodes are refused).
    futures::stream::iter(0..1000)
        .for_each_concurrent(32, |i| {
            let client = client.clone();
            async move { ensure_node(&client, &format!("storm-node-{i}")).await }
        })
        .await;
    let alerts: Vec<_> = (0..1000)
        .map(|i| alert(&ns, &format!("storm-node-{i}"), "2026-11-22T10:00:00Z"))
        .collect();
    let started = Instant::now();
    let (code, text) = post("/api/v2/alerts", &json!(alerts).to_string(), None).await;
    assert_eq!(code, 200, "{text}");
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (created, suppressed) = (
        summary["created"].as_u64().unwrap(),
        summary["suppressed"].as_u64().unwrap(),
    );
    eprintln!(
        "1000 alerts in {:?}: {created} created, {suppressed} suppressed",
        started.elapsed()
    );
    assert_eq!(created + suppressed, 1000, "{summary}");
    // The default per-source budget: a burst of 20, refilled at 6 a minute.
    let allowed = 20 + (started.elapsed().as_secs_f64() * 6.0 / 60.0).ceil() as u64;
    assert!(
        created <= allowed,
        "{created} created, budget allows {allowed}"
    );
    assert!(created >= 20, "{summary}");
    eventually(
        "the source's counters",
        Duration::from_secs(20),
        async || {
            let s = Api::<AbnormalSource>::namespaced(client.clone(), &ns)
                .get("storm")
                .await
                .unwrap();
            let st = s.status.unwrap_or_default();
            (st.triggered == Some(created as i64) && st.suppressed == Some(suppressed as i64))
                .then_some(())
        },
    )
    .await;
}

/// A child killed when the test ends.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `kdiag_test_up` as 0 while `down` is set.
async fn metric_server(down: Arc<AtomicBool>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let down = down.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = format!(
                    "# TYPE kdiag_test_up gauge\nkdiag_test_up {}\n",
                    if down.load(Ordering::SeqCst) { 0 } else { 1 }
                );
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_firing_prometheus_rule_reaches_kdiag_directly_and_through_alertmanager_once_and_resolves()
 {
    let cp = with_controller().await;
    let ns = cp.create_namespace("alerts-prom").await;
    let client = cp.client().await;
    ensure_node(&client, "prom-node-1").await;
    let kdiag = controller_url().trim_start_matches("http://").to_owned();
    source(&client, &ns, "prom", json!({"sourceTemplate": {"type": "PrometheusAlert",
        "prometheusAlertTemplate": {"regexp": {"alertName": "KdiagTestDown", "labels": {"test": ns}}, "nodeNameReferenceLabel": "node"}},
        "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}]})).await;
    wait_source_valid(&client, &ns, "prom").await;
    let down = Arc::new(AtomicBool::new(true));
    let app = metric_server(down.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (prom_port, am_port, am_cluster) = (free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("rules.yml"), "groups:\n- name: kdiag\n  rules:\n  - alert: KdiagTestDown\n    expr: kdiag_test_up == 0\n    labels: {severity: critical}\n    annotations: {summary: the test app is down}\n").unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\nscrape_configs:\n- job_name: app\n  static_configs:\n  - targets: ['127.0.0.1:{app}']\n    labels: {{node: prom-node-1, test: {ns}, namespace: {ns}}}\nalerting:\n  alertmanagers:\n  - api_version: v2\n    authorization: {{credentials: {ALERT_TOKEN}}}\n    static_configs: [{{targets: ['{kdiag}']}}]\n  - api_version: v2\n    static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        format!("route: {{receiver: kdiag, group_wait: 1s, group_interval: 1s, repeat_interval: 1h}}\nreceivers:\n- name: kdiag\n  webhook_configs:\n  - url: http://{kdiag}/api/v1/webhook\n    send_resolved: true\n    http_config: {{authorization: {{credentials: {ALERT_TOKEN}}}}}\n"),
    )
    .unwrap();
    let _alertmanager = Proc(
        Command::new("/usr/bin/prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.path().join("alertmanager.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("am").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg(format!("--cluster.listen-address=127.0.0.1:{am_cluster}"))
            .stdout(Stdio::null())
            // Kept for the failure message: whether and why its notifications failed.
            .stderr(std::fs::File::create(dir.path().join("alertmanager.log")).unwrap())
            .spawn()
            .expect("prometheus-alertmanager (installed by make setup)"),
    );
    let _prometheus = Proc(
        Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .arg("--rules.alert.resend-delay=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by make setup)"),
    );
    let started = Instant::now();
    let mine = async || -> Vec<Abnormal> {
        abnormals(&client, kdiag_api::SYSTEM_NAMESPACE, "PrometheusAlert")
            .await
            .into_iter()
            .filter(|a| {
                a.spec
                    .prometheus_alert
                    .as_ref()
                    .and_then(|p| p.labels.get("test"))
                    == Some(&ns)
            })
            .collect()
    };
    let first = eventually(
        "the alert's Abnormal",
        Duration::from_secs(90),
        async || mine().await.into_iter().next(),
    )
    .await;
    eprintln!("rule firing → Abnormal in {:?}", started.elapsed());
    assert_eq!(first.spec.node_name, "prom-node-1");
    assert_eq!(
        first.spec.prometheus_alert.as_ref().unwrap().labels["alertname"],
        "KdiagTestDown"
    );
    // Both paths deliver, repeatedly: Prometheus pushes at once, Alertmanager after its group
    // wait, so the push path alone may have counted several deliveries before the webhook's
    // first. Wait until the occurrences name both paths, then count Abnormals.
    let name = first.name_any();
    let api: Api<Abnormal> = Api::namespaced(client.clone(), kdiag_api::SYSTEM_NAMESPACE);
    // (Alertmanager waits for its gossip to settle before its first notification.)
    let deadline = Instant::now() + Duration::from_secs(120);
    let occurrences = loop {
        let a = api.get(&name).await.unwrap();
        let occurrences = a
            .annotations()
            .get("kdiag.io/trigger-occurrences")
            .cloned()
            .unwrap_or_default();
        if occurrences.contains("@push@") && occurrences.contains("@webhook@") {
            break occurrences;
        }
        assert!(
            Instant::now() < deadline,
            "not both paths within 120s: {occurrences}\nAlertmanager's log:\n{}",
            std::fs::read_to_string(dir.path().join("alertmanager.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("both paths delivered: {occurrences}");
    assert_eq!(
        mine().await.len(),
        1,
        "one firing, one Abnormal, whichever path delivered"
    );

    down.store(false, Ordering::SeqCst);
    eventually("the resolved mark", Duration::from_secs(90), async || {
        api.get(&name)
            .await
            .unwrap()
            .annotations()
            .get("kdiag.io/trigger-resolved")
            .cloned()
    })
    .await;
    assert_eq!(mine().await.len(), 1);
}

#[tokio::test]
async fn an_alert_for_a_node_that_does_not_exist_is_refused_and_creates_nothing() {
    let cp = with_controller().await;
    let ns = cp.create_namespace("alerts-ghost").await;
    let client = cp.client().await;
    let real = format!("{ns}-real");
    ensure_node(&client, &real).await;
    source(&client, &ns, "direct", json!({"sourceTemplate": {"type": "PrometheusAlert",
        "prometheusAlertTemplate": {"regexp": {"alertName": "KdiagDirect", "labels": {"test": ns}}, "nodeNameReferenceLabel": "node"}}})).await;
    wait_source_valid(&client, &ns, "direct").await;
    // More invented nodes than the source's budget (a burst of 20), then a real one: were the
    // invented ones taken from the budget, the real one would be suppressed.
    let mut alerts: Vec<_> = (0..25)
        .map(|i| alert(&ns, &format!("{ns}-ghost-{i}"), "2026-11-22T10:00:00Z"))
        .collect();
    alerts.push(alert(&ns, &real, "2026-11-22T10:00:00Z"));
    let (code, text) = post("/api/v2/alerts", &json!(alerts).to_string(), None).await;
    assert_eq!(code, 422, "{text}");
    let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(summary["created"], 1, "{summary}");
    let refused = summary["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 25, "{summary}");
    assert!(
        refused[0]
            .as_str()
            .unwrap()
            .contains(&format!("{ns}-ghost-0, which is no Node of this cluster")),
        "{summary}"
    );
    let mine: Vec<_> = abnormals(&client, kdiag_api::SYSTEM_NAMESPACE, "PrometheusAlert")
        .await
        .into_iter()
        .filter(|a| {
            a.spec
                .prometheus_alert
                .as_ref()
                .and_then(|p| p.labels.get("test"))
                == Some(&ns)
        })
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].spec.node_name, real);
}

#[tokio::test]
async fn a_fresh_controller_creates_its_alert_token_secret_and_takes_alerts_with_it() {
    let cp = with_controller().await;
    let admin = cp.client().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), kdiag_api::SYSTEM_NAMESPACE);
    let _ = secrets
        .delete(
            kdiag_controller::ALERT_TOKEN_SECRET,
            &kube::api::DeleteParams::default(),
        )
        .await;
    eventually("the old Secret gone", Duration::from_secs(20), async || {
        secrets
            .get_opt(kdiag_controller::ALERT_TOKEN_SECRET)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // As `kdiag controller` starts: no token given, the Secret's name (the default).
    let mut config = kdiag_controller::ControllerConfig {
        alert_token_secret: Some(kdiag_controller::ALERT_TOKEN_SECRET.into()),
        ..Default::default()
    };
    let controller = service_account_client(cp, "kdiag-controller").await;
    kdiag_controller::prepare(&controller, &mut config)
        .await
        .unwrap();
    let secret = secrets
        .get(kdiag_controller::ALERT_TOKEN_SECRET)
        .await
        .unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    assert_eq!(token.len(), 64, "256 random bits, hex");
    assert_eq!(config.alert_token.as_deref(), Some(token.as_str()));
    // A restart reads the same token.
    let mut again = kdiag_controller::ControllerConfig {
        alert_token_secret: Some(kdiag_controller::ALERT_TOKEN_SECRET.into()),
        ..Default::default()
    };
    kdiag_controller::prepare(&controller, &mut again)
        .await
        .unwrap();
    assert_eq!(again.alert_token, config.alert_token);

    let (port, task) = serve_controller(cp, config).await;
    let url = || {
        format!("http://127.0.0.1:{port}/api/v2/alerts")
            .parse()
            .unwrap()
    };
    assert_eq!(reqwest_lite::request(url(), "POST", b"[]").await.0, 401);
    let bearer = format!("Bearer {token}");
    let (code, text) =
        reqwest_lite::request_with(url(), "POST", b"[]", &[("Authorization", &bearer)]).await;
    assert_eq!(code, 200, "{text}");
    task.abort();
}

#[tokio::test]
async fn alert_endpoints_can_require_a_bearer_token() {
    let cp = with_controller().await;
    let config = kdiag_controller::ControllerConfig {
        alert_token: Some("s3cret".into()),
        ..Default::default()
    };
    let (port, task) = serve_controller(cp, config).await;
    let url = || {
        format!("http://127.0.0.1:{port}/api/v2/alerts")
            .parse()
            .unwrap()
    };
    let body = b"[]";
    let (code, text) = reqwest_lite::request(url(), "POST", body).await;
    assert_eq!(code, 401, "{text}");
    assert!(text.contains("Bearer"), "{text}");
    assert_eq!(
        reqwest_lite::request_with(url(), "POST", body, &[("Authorization", "Bearer wrong")])
            .await
            .0,
        401
    );
    assert_eq!(
        reqwest_lite::request_with(url(), "POST", body, &[("Authorization", "Bearer s3cret")])
            .await
            .0,
        200
    );
    task.abort();
}

#[tokio::test]
async fn without_a_token_alerts_are_refused_unless_explicitly_allowed() {
    let cp = with_controller().await;
    for (allow, want) in [(false, 401), (true, 200)] {
        let config = kdiag_controller::ControllerConfig {
            alerts_allow_unauthenticated: allow,
            ..Default::default()
        };
        let (port, task) = serve_controller(cp, config).await;
        for path in ["/api/v2/alerts", "/api/v1/webhook"] {
            let url = format!("http://127.0.0.1:{port}{path}").parse().unwrap();
            let body: &[u8] = if path.ends_with("webhook") {
                br#"{"version": "4", "status": "firing", "alerts": []}"#
            } else {
                b"[]"
            };
            let (code, text) = reqwest_lite::request(url, "POST", body).await;
            assert_eq!(code, want, "allow={allow} {path}: {text}");
            if !allow {
                assert!(
                    text.contains("KDIAG_ALERT_TOKEN")
                        && text.contains("--alerts-allow-unauthenticated"),
                    "{text}"
                );
            }
        }
        task.abort();
    }
}

/// A controller of its own with `config`, serving on a port of its own: (port, its driver).
async fn serve_controller(
    cp: &'static kdiag_testenv::ControlPlane,
    config: kdiag_controller::ControllerConfig,
) -> (u16, tokio::task::JoinHandle<()>) {
    let client = service_account_client(cp, "kdiag-controller").await;
    let metrics = Arc::new(kdiag_runtime::metrics::Metrics::new());
    let (handle, driver) = kdiag_controller::start(
        client,
        config,
        kdiag_runtime::builtin::Builtins::standard(),
        metrics.clone(),
        tokio_util::sync::CancellationToken::new(),
    );
    let task = tokio::spawn(driver);
    let state = kdiag_runtime::server::ServerState {
        metrics,
        refresh: Arc::new(|| {}),
        ready: vec![],
        routes: kdiag_runtime::server::join(
            kdiag_agent::server::routes(None),
            kdiag_controller::server::routes(None, Some(handle.alerts.clone())),
        ),
    };
    let port = free_port();
    tokio::spawn(
        kdiag_runtime::server::serve(([127, 0, 0, 1], port).into(), state, std::future::pending())
            .await
            .unwrap(),
    );
    (port, task)
}

#[tokio::test]
async fn a_kube_diagnoser_matching_source_takes_normal_events_by_substring_and_a_whole_one_does_not()
 {
    let cp = with_controller().await;
    let ns = cp.create_namespace("events-upstream").await;
    let client = cp.client().await;
    source(
        &client,
        &ns,
        "upstream",
        json!({"matching": "KubeDiagnoser", "sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"reason": "Pull", "message": "image"}}}}),
    )
    .await;
    source(
        &client,
        &ns,
        "whole",
        json!({"sourceTemplate": {"type": "KubernetesEvent",
        "kubernetesEventTemplate": {"regexp": {"reason": "Killing"}}}}),
    )
    .await;
    wait_source_valid(&client, &ns, "upstream").await;
    wait_source_valid(&client, &ns, "whole").await;
    let normal = async |name: &str, pod: &str, reason: &str, message: &str| {
        let now = jiff::Timestamp::now().to_string();
        let e: Event = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod, "uid": format!("{ns}-{pod}-uid")},
            "reason": reason, "message": message, "type": "Normal", "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": format!("{ns}-node")}
        }))
        .unwrap();
        Api::<Event>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &e)
            .await
            .unwrap();
    };
    // A Normal Event only a Whole source names: ignored. Sent first, so once the next one's
    // Abnormal exists, this one was handled too (one watch, in order).
    normal("web.1", "web", "Killing", "Stopping container app").await;
    normal(
        "web.2",
        "pulled",
        "Pulled",
        "Successfully pulled image \"busybox\"",
    )
    .await;
    let list = eventually(
        "the Abnormal of the Normal Event",
        Duration::from_secs(30),
        async || {
            let l = abnormals(&client, &ns, "KubernetesEvent").await;
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(list.len(), 1, "the Whole source ignored the Normal Event");
    assert_eq!(pod_of(&list[0]), "pulled");
}
