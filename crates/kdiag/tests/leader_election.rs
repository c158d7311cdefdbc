//! Two controller replicas on a real apiserver, each on a runtime (and HTTP server) of its own,
//! electing a leader on the Lease kube-diagnoser/kdiag-controller: only the leader admits, a
//! standby takes over within the Lease's duration when the leader dies under load (no Abnormal
//! lost), and alerts sent to either replica draw on the leader's one storm budget.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kdiag_api::*;
use kdiag_controller::ControllerConfig;
use kdiag_controller::leader::{LeaderElection, LeaderView};
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Short, so that a failover is quick to test; the shipped default is 15 s.
const LEASE_DURATION: Duration = Duration::from_secs(4);

/// The tests share the one Lease name kdiag's RBAC allows: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A controller replica on a thread and runtime of its own, so that it can die as a process
/// does: [`Replica::crash`] drops everything it runs without releasing its Lease.
struct Replica {
    identity: String,
    port: u16,
    metrics: Arc<Metrics>,
    leader: LeaderView,
    stop: CancellationToken,
    crash: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    fn start(
        cp: &'static kdiag_testenv::ControlPlane,
        name: &str,
        config: ControllerConfig,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let identity = format!("{name}@127.0.0.1:{port}");
        let mut election = LeaderElection::new(SYSTEM_NAMESPACE, "kdiag-controller", &identity);
        election.lease_duration = LEASE_DURATION;
        election.renew_before = Duration::from_secs(1);
        let config = ControllerConfig {
            leader_election: Some(election),
            ..config
        };
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        let (m, s) = (metrics.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let graceful = rt.block_on(async move {
                let client = service_account_client(cp, "kdiag-controller").await;
                let (handle, driver) = kdiag_controller::start(
                    client,
                    config,
                    kdiag_runtime::builtin::Builtins::standard(),
                    m.clone(),
                    s.clone(),
                );
                let state = kdiag_runtime::server::ServerState {
                    metrics: m,
                    refresh: Arc::new(|| {}),
                    ready: vec![],
                    routes: kdiag_runtime::server::join(
                        kdiag_agent::server::routes(None),
                        kdiag_controller::server::routes(
                            Some(handle.probe_reports.clone()),
                            Some(handle.alerts.clone()),
                        ),
                    ),
                };
                let serving = kdiag_runtime::server::serve(
                    ([127, 0, 0, 1], port).into(),
                    state,
                    s.clone().cancelled_owned(),
                )
                .await
                .unwrap();
                tokio::spawn(serving);
                tx.send(handle.leader.clone()).unwrap();
                tokio::select! {
                    _ = driver => true,
                    _ = crashed => false,
                }
            });
            if !graceful {
                // Like a killed process: nothing runs on, nothing is released.
                rt.shutdown_background();
            }
        });
        let leader = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the replica started");
        Self {
            identity,
            port,
            metrics,
            leader,
            stop,
            crash: Some(crash),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn admissions(&self) -> f64 {
        let text = self.metrics.render();
        text.lines()
            .filter(|l| l.starts_with("kdiag_controller_admissions_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    }

    /// Dies at once, its Lease left to expire.
    fn crash(mut self) {
        let _ = self.crash.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }

    /// Stops gracefully, releasing its Lease.
    fn stop(mut self) {
        self.stop.cancel();
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get_opt("kdiag-controller")
        .await
        .unwrap()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Waits until exactly one of `replicas` leads and the Lease names it; returns its index.
async fn one_leader(client: &kube::Client, replicas: &[&Replica], timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let leading: Vec<usize> = (0..replicas.len())
            .filter(|&i| replicas[i].leader.is_leader())
            .collect();
        if let [i] = leading[..]
            && holder(client).await.as_deref() == Some(replicas[i].identity.as_str())
        {
            return i;
        }
        assert!(
            leading.len() <= 1,
            "two replicas lead at once: {:?}",
            leading
                .iter()
                .map(|&i| &replicas[i].identity)
                .collect::<Vec<_>>()
        );
        assert!(
            Instant::now() < deadline,
            "no single leader within {timeout:?}; the Lease names {:?}",
            holder(client).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec(node: &str) -> serde_json::Value {
    json!({"nodeName": node, "source": "Custom",
           "skipInformationCollection": true, "skipDiagnosis": true, "skipRecovery": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_within_the_lease_when_the_leader_dies_under_load_and_no_abnormal_is_lost()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = installed().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("leader").await;
    let node = format!("{ns}-node");
    let agent = TestAgent::start(cp, &node).await;
    let config = ControllerConfig {
        pod_wait: Duration::from_secs(4),
        ..Default::default()
    };
    let a = Replica::start(cp, "a", config.clone());
    let b = Replica::start(cp, "b", config);
    let first = one_leader(&client, &[&a, &b], Duration::from_secs(30)).await;
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    println!("{} leads, {} stands by", leader.identity, standby.identity);

    // Work before the failover: only the leader admits it.
    let names: Vec<String> = (0..60).map(|i| format!("load-{i:02}")).collect();
    for name in &names[..30] {
        create_abnormal(&client, &ns, name, spec(&node)).await;
    }
    for name in &names[..10] {
        wait_for(&client, &ns, name, Duration::from_secs(30), |a| {
            a.phase().is_some()
        })
        .await;
    }
    assert!(
        leader.admissions() >= 10.0,
        "the leader admitted the first ten"
    );
    assert_eq!(standby.admissions(), 0.0, "a standby admits nothing");

    // The leader dies with work in flight; creation goes on.
    let crashed_at = Instant::now();
    let gone = leader.identity.clone();
    leader.crash();
    for name in &names[30..] {
        create_abnormal(&client, &ns, name, spec(&node)).await;
    }
    let now_leading = one_leader(&client, &[&standby], LEASE_DURATION * 3).await;
    assert_eq!(now_leading, 0);
    let failover = crashed_at.elapsed();
    println!(
        "{} took over {:.1}s after {gone} died (Lease duration {:?})",
        standby.identity,
        failover.as_secs_f64(),
        LEASE_DURATION
    );
    for name in &names {
        let a = wait_final(&client, &ns, name, Duration::from_secs(60)).await;
        assert_eq!(
            a.phase(),
            Some(AbnormalPhase::Succeeded),
            "{name}: {:?}",
            a.status
        );
    }
    assert!(
        standby.admissions() >= 30.0,
        "the new leader admitted what was created after the failover"
    );

    // A graceful stop releases the Lease at once.
    standby.stop();
    let held = holder(&client).await;
    assert!(
        held.as_deref().is_none_or(str::is_empty),
        "the Lease still names {held:?} after a graceful stop"
    );
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_sent_to_either_replica_draw_on_the_leaders_one_storm_budget() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = installed().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("leader-alerts").await;
    let token = "leader-test-alert-token";
    let budget = kdiag_controller::sources::storm::Budget {
        burst: 4.0,
        per_minute: 0.0,
    };
    let config = ControllerConfig {
        alert_token: Some(token.into()),
        source_budgets: kdiag_controller::sources::sink::SourceBudgets {
            per_source: budget,
            per_node: budget,
        },
        ..Default::default()
    };
    let a = Replica::start(cp, "a", config.clone());
    let b = Replica::start(cp, "b", config);
    let first = one_leader(&client, &[&a, &b], Duration::from_secs(30)).await;
    let (leader, standby) = if first == 0 { (&a, &b) } else { (&b, &a) };
    println!("{} leads, {} stands by", leader.identity, standby.identity);
    let source: AbnormalSource = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
        "metadata": {"name": "alerts", "namespace": ns},
        "spec": {"sourceTemplate": {"type": "PrometheusAlert",
            "prometheusAlertTemplate": {"regexp": {"alertName": "KdiagLeader", "labels": {"test": ns}},
                                        "nodeNameReferenceLabel": "node"}}}
    }))
    .unwrap();
    Api::<AbnormalSource>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &source)
        .await
        .unwrap();
    wait_source_valid(&client, &ns, "alerts").await;

    // Ten distinct alerts, each on its own node, sent alternately to the standby and the leader.
    let (mut created, mut suppressed) = (0, 0);
    for i in 0..10 {
        let node = format!("{ns}-node-{i}");
        ensure_node(&client, &node).await;
        let alert = json!([{"labels": {"alertname": "KdiagLeader", "test": ns, "namespace": ns, "node": node},
                            "startsAt": "2026-12-04T10:00:00Z"}]);
        let to = if i % 2 == 0 { standby } else { leader };
        let url: reqwest_lite::Url = format!("{}/api/v2/alerts", to.url()).parse().unwrap();
        let (code, text) = reqwest_lite::request_with(
            url,
            "POST",
            alert.to_string().as_bytes(),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(code, 200, "alert {i} to {}: {text}", to.identity);
        let summary: serde_json::Value = serde_json::from_str(&text).unwrap();
        println!("alert {i} to {}: {summary}", to.identity);
        created += summary["created"].as_u64().unwrap_or(0);
        suppressed += summary["suppressed"].as_u64().unwrap_or(0);
    }
    assert_eq!(
        (created, suppressed),
        (4, 6),
        "one budget of 4 for both replicas"
    );
    let made = Api::<Abnormal>::all(client.clone())
        .list(&ListParams::default().labels("kdiag.io/source=PrometheusAlert"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|a| a.spec.node_name.starts_with(&format!("{ns}-node-")))
        .count();
    assert_eq!(made, 4, "Abnormals created for the ten alerts");
    println!("{made} Abnormals for the ten alerts");

    // A delivery a standby already handed on is not handed on again: 503, to be retried.
    let url: reqwest_lite::Url = format!("{}/api/v2/alerts", standby.url()).parse().unwrap();
    let (code, text) = reqwest_lite::request_with(
        url,
        "POST",
        b"[]",
        &[
            ("authorization", &format!("Bearer {token}")),
            (kdiag_controller::leader::FORWARDED_HEADER, "elsewhere"),
        ],
    )
    .await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("retry"), "{text}");
    println!("a delivery handed on twice: {code} {text}");
    a.stop();
    println!("a stopped");
    b.stop();
}
