//! The fault-injection suite: kdiag's controller and agent run as processes of their own (the
//! built `kdiag` binary, with kdiag's ServiceAccount tokens under config/deploy's RBAC) on the
//! real apiserver, plugins are real HTTP servers in this test binary, and the faults are real:
//! SIGKILL for the agent and the leading controller, a restart of the apiserver and etcd, plugins
//! that refuse, hang, drip, flood, lie or fail, an Abnormal deleted under a running step, a status
//! etcd refuses for its size.
//!
//! The agent is killed at [`KILLS`] random points (a seeded generator; the seed is printed and
//! `KDIAG_FAULT_SEED=<seed>` replays the same kill times, though not the same scheduling). A
//! kill cycle takes about 1.3 s (the agent's start, caches and policy, then up to 1.5 s of work),
//! so the whole binary takes about three minutes on a two-core machine;
//! `KDIAG_FAULT_KILLS=<n>` runs another count.
//!
//! Every test adds a row to a summary table (faults injected, Abnormals final, recoveries
//! repeated, results lost), written to `target/fault-injection-summary.txt` after each test and
//! printed to stderr (libtest shows it with `--nocapture`, or when a test fails).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kdiag_api::*;
use kdiag_testenv::{ControlPlane, ManagedProcess};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const KDIAG: &str = env!("CARGO_BIN_EXE_kdiag");

/// How many times the agent is killed, unless KDIAG_FAULT_KILLS says otherwise.
const KILLS: usize = 100;

/// How long every Abnormal of a scenario may take to end once the faults stop.
const FINISH: Duration = Duration::from_secs(120);

/// The scenarios share the controller's Lease and a two-core machine: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The node policy the agents follow: recoveries allowed, a budget no scenario exhausts (the
/// shipped policy allows 10 an hour, and a restarted agent starts a fresh window anyway).
const POLICY: &str = "faults-policy";

async fn setup() -> &'static ControlPlane {
    let cp = installed().await;
    static POLICY_WRITTEN: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    POLICY_WRITTEN
        .get_or_init(|| async {
            write_policy(
                &cp.client().await,
                POLICY,
                "recoverers:\n  allow: ['*']\nbudget:\n  recoveriesPerHour: 100000\n",
            )
            .await;
        })
        .await;
    cp
}

// ---------------------------------------------------------------------------------------------
// kdiag as processes

/// `kdiag controller` or `kdiag agent` as a process of its own, dying with the test binary.
struct Kdiag {
    name: String,
    process: ManagedProcess,
    port: u16,
}

impl Kdiag {
    /// A controller replica `name` (its Lease identity `name@127.0.0.1:<port>`).
    async fn controller(cp: &ControlPlane, name: &str, leader_elect: bool) -> Self {
        let port = free_port();
        let args = vec![
            "controller".into(),
            "--webhook=off".into(),
            "--pod-wait=4s".into(),
            "--alert-token-secret=".into(),
            format!("--leader-elect={leader_elect}"),
            format!("--leader-election-id={name}@127.0.0.1:{port}"),
            "--leader-election-lease-duration=4s".into(),
        ];
        Self::spawn(cp, "kdiag-controller", name, port, args).await
    }

    /// An agent for `node`, with `extra` flags.
    async fn agent(cp: &ControlPlane, node: &str, extra: &[&str]) -> Self {
        ensure_node(&cp.client().await, node).await;
        let port = free_port();
        let data = cp.run_dir().join(format!("agent-{node}"));
        let mut args = vec![
            "agent".into(),
            format!("--node-name={node}"),
            format!("--data-root={}", data.display()),
            "--advertise-address=127.0.0.1".into(),
        ];
        if !extra.iter().any(|a| a.starts_with("--policy-configmap")) {
            args.push(format!("--policy-configmap={POLICY}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(cp, "kdiag-agent", &format!("agent-{node}"), port, args).await
    }

    async fn spawn(
        cp: &ControlPlane,
        account: &str,
        name: &str,
        port: u16,
        mut args: Vec<String>,
    ) -> Self {
        let token = cp.service_account_token(SYSTEM_NAMESPACE, account).await;
        let kubeconfig = cp.write_kubeconfig_for(name, &token);
        args.extend(["--bind-address=127.0.0.1".into(), format!("--port={port}")]);
        let log = cp.run_dir().join(format!("{name}.log"));
        let process = ManagedProcess::spawn_with(name, Path::new(KDIAG), &args, &log, |cmd| {
            cmd.env("KUBECONFIG", &kubeconfig)
                .env("RUST_LOG", "info,kube=warn,hyper=warn,warp=warn")
                // JSON lines, so that a test can read what the processes did.
                .env("KDIAG_LOG_FORMAT", "json");
        })
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name: name.into(),
            process,
            port,
        }
    }

    fn identity(&self) -> String {
        format!("{}@127.0.0.1:{}", self.name, self.port)
    }

    /// Waits until /readyz answers 200: the process took its caches (and policy) and takes work.
    async fn ready(mut self) -> Self {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                self.process.is_running(),
                "{} exited:\n{}",
                self.name,
                kdiag_testenv::log_tail(&self.process.log, 30)
            );
            if let Ok(Ok(s)) = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
            )
            .await
            {
                drop(s);
                let (code, _) =
                    reqwest_get(&format!("http://127.0.0.1:{}/readyz", self.port)).await;
                if code == 200 {
                    return self;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within 60s:\n{}",
                self.name,
                kdiag_testenv::log_tail(&self.process.log, 30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// SIGKILL: nothing of it runs on, nothing is released.
    fn kill(mut self) {
        self.process.kill();
    }
}

impl Drop for Kdiag {
    fn drop(&mut self) {
        self.process.kill();
    }
}

/// Where every life of the agent for `node` logs.
fn agent_log(cp: &ControlPlane, node: &str) -> PathBuf {
    cp.run_dir().join(format!("agent-{node}.log"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// Random kill points, replayable

/// SplitMix64: small, good enough for choosing kill times, and the same for the same seed.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("KDIAG_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("fault injection seed {seed} (KDIAG_FAULT_SEED={seed} replays the kill times)");
        (Self(seed), seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------------------------
// The summary table

struct Row {
    scenario: &'static str,
    faults: usize,
    abnormals: usize,
    finals: usize,
    repeated: usize,
    lost: usize,
    note: String,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

fn summary_path() -> PathBuf {
    // target/debug/kdiag → target/
    Path::new(KDIAG)
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
        .join("fault-injection-summary.txt")
}

/// Adds a scenario's row and rewrites the table: after the last test, it holds every row.
fn report(row: Row) {
    let mut rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
    rows.push(row);
    let mut text = format!(
        "{:<34} {:>6} {:>9} {:>6} {:>9} {:>5}  {}\n",
        "scenario", "faults", "abnormals", "final", "repeated", "lost", "notes"
    );
    for r in rows.iter() {
        text += &format!(
            "{:<34} {:>6} {:>9} {:>6} {:>9} {:>5}  {}\n",
            r.scenario, r.faults, r.abnormals, r.finals, r.repeated, r.lost, r.note
        );
    }
    let (f, a, fi, rep, l) = rows.iter().fold((0, 0, 0, 0, 0), |t, r| {
        (
            t.0 + r.faults,
            t.1 + r.abnormals,
            t.2 + r.finals,
            t.3 + r.repeated,
            t.4 + r.lost,
        )
    });
    text += &format!(
        "{:<34} {:>6} {:>9} {:>6} {:>9} {:>5}\n",
        "total", f, a, fi, rep, l
    );
    let _ = std::fs::write(summary_path(), &text);
    eprintln!(
        "fault injection summary (also in {}):\n{text}",
        summary_path().display()
    );
}

// ---------------------------------------------------------------------------------------------
// What every scenario checks

/// Waits until every Abnormal in `names` is final and returns them.
async fn all_final(client: &kube::Client, ns: &str, names: &[String]) -> Vec<Abnormal> {
    let mut out = Vec::new();
    for name in names {
        out.push(wait_final(client, ns, name, FINISH).await);
    }
    out
}

/// What a final Abnormal lost: an assigned processor recorded other than once, or a collector
/// recorded Succeeded whose `<key>-value` is not in the context.
fn lost_results(a: &Abnormal, expected_keys: &[&str]) -> Vec<String> {
    let st = a.status.clone().unwrap_or_default();
    let ns = a.namespace().unwrap_or_default();
    let mut lost = Vec::new();
    let assigned = a
        .spec
        .assigned_information_collectors
        .iter()
        .chain(&a.spec.assigned_diagnosers)
        .chain(&a.spec.assigned_recoverers);
    for p in assigned {
        let label = format!("{ns}/{}", p.name);
        let n = st
            .processors
            .iter()
            .filter(|r| r.processor == label)
            .count();
        if n != 1 {
            lost.push(format!("{} recorded {n} times", label));
        }
    }
    let context = st.context.unwrap_or_default();
    for key in expected_keys {
        if context.get(*key) != Some(&json!(format!("{key}-value"))) {
            lost.push(format!("context.{key} missing"));
        }
    }
    lost
}

/// Idempotency-Key → calls, for the requests to paths starting with `prefix`.
fn calls_by_key(plugin: &TestPlugin, prefix: &str) -> BTreeMap<String, usize> {
    let mut by_key = BTreeMap::new();
    for (path, key) in plugin.idempotency_keys.lock().unwrap().iter() {
        if path.starts_with(prefix) {
            *by_key.entry(key.clone()).or_insert(0) += 1;
        }
    }
    by_key
}

/// The plugins of the kill scenarios: two collectors (one slow), a diagnoser that finds a
/// cause, an idempotent recoverer and one that is not.
async fn register_pipeline_plugins(client: &kube::Client, ns: &str, plugin: &TestPlugin) {
    let p = plugin.port;
    register_plugin(
        client,
        ns,
        "InformationCollector",
        "fast",
        p,
        "/echo/fast",
        10,
    )
    .await;
    register_plugin(
        client,
        ns,
        "InformationCollector",
        "slow",
        p,
        "/sleep/300/slow",
        10,
    )
    .await;
    register_plugin(
        client,
        ns,
        "Diagnoser",
        "finder",
        p,
        "/root-cause/found",
        10,
    )
    .await;
    register_recoverer(client, ns, "safe", p, "/sleep/400/safe", 10, true).await;
    register_recoverer(client, ns, "risky", p, "/sleep/400/risky", 10, false).await;
}

/// An Abnormal through every stage, recovered by `safe` or `risky`.
fn pipeline_spec(node: &str, recoverer: &str) -> serde_json::Value {
    json!({"nodeName": node,
           "assignedInformationCollectors": [{"name": "fast"}, {"name": "slow"}],
           "assignedDiagnosers": [{"name": "finder"}],
           "assignedRecoverers": [{"name": recoverer}]})
}

/// The highest attempt at which the agents' log (JSON lines, every life of the agent appends
/// to it) says each Abnormal's interrupted idempotent recovery ran again.
fn retried_attempts(log: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut attempts = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        if f["message"]
            .as_str()
            .is_some_and(|m| m.contains("idempotent recovery the agent stopped during runs again"))
            && let (Some(abnormal), Some(attempt)) = (f["abnormal"].as_str(), f["attempt"].as_u64())
        {
            let seen = attempts.entry(abnormal.to_owned()).or_insert(0);
            *seen = attempt.max(*seen);
        }
    }
    attempts
}

/// The outcome of a kill scenario's Abnormals, checked against what the plugin saw and the
/// agent's log; returns (recoveries repeated, lost, a note for the summary).
fn check_pipeline_outcome(
    abnormals: &[Abnormal],
    plugin: &TestPlugin,
    agent_log: &Path,
    strict: bool,
) -> (usize, usize, String) {
    let attempts = retried_attempts(agent_log);
    let mut lost = 0;
    let mut abandoned = Vec::new();
    let mut interrupted = 0;
    for a in abnormals {
        let name = a.name_any();
        let st = a.status.clone().unwrap();
        let l = lost_results(a, &["fast", "slow"]);
        assert!(l.is_empty(), "{name} lost results: {l:?}\n{st:#?}");
        lost += l.len();
        assert_eq!(
            st.root_cause.as_ref().map(|c| c.reason.as_str()),
            Some("found"),
            "{name}"
        );
        let recoverer = &a.spec.assigned_recoverers[0].name;
        if recoverer == "safe" {
            // Completed, or given up after every attempt the design allows.
            if st.phase != Some(AbnormalPhase::Succeeded) {
                assert!(!strict, "{name} did not complete: {st:#?}");
                assert_eq!(st.reason, "RecoveryInterrupted", "{name}: {st:#?}");
                let key = format!("{}/{name}", a.namespace().unwrap_or_default());
                assert_eq!(
                    attempts.get(&key).copied(),
                    Some(u64::from(kdiag_pipeline::MAX_RECOVERY_ATTEMPTS)),
                    "{name} was given up before its last attempt (retries logged: {attempts:?})"
                );
                abandoned.push(name.clone());
            }
        } else if st.phase != Some(AbnormalPhase::Succeeded) {
            assert!(!strict, "{name} did not succeed: {st:#?}");
            assert_eq!(st.reason, "RecoveryInterrupted", "{name}: {st:#?}");
            interrupted += 1;
        }
    }
    let risky = calls_by_key(plugin, "/sleep/400/risky");
    let repeated: Vec<_> = risky.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "a recovery that is not idempotent ran twice: {repeated:?}"
    );
    let safe = calls_by_key(plugin, "/sleep/400/safe");
    let over: Vec<_> = safe
        .iter()
        .filter(|(_, n)| **n > kdiag_pipeline::MAX_RECOVERY_ATTEMPTS as usize)
        .collect();
    assert!(over.is_empty(), "more attempts than allowed: {over:?}");
    // Each call after the first was an attempt the agent logged (the key starts with the uid).
    for a in abnormals {
        let uid = a.uid().unwrap_or_default();
        let key = format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any());
        let calls = safe
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{uid}/")))
            .map(|(_, n)| *n as u64)
            .sum::<u64>();
        if calls > 1 {
            assert!(
                attempts.get(&key).is_some_and(|&logged| logged >= calls),
                "{key}: {calls} calls, the agent logged attempts {:?}",
                attempts.get(&key)
            );
        }
    }
    let retried = safe.values().filter(|n| **n > 1).count();
    let note = format!(
        "idempotent retried {retried}, given up after {} attempts {}; not idempotent interrupted {interrupted}",
        kdiag_pipeline::MAX_RECOVERY_ATTEMPTS,
        abandoned.len()
    );
    (repeated.len(), lost, note)
}

// ---------------------------------------------------------------------------------------------
// The scenarios

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_at_random_points_ends_every_abnormal_and_repeats_no_recovery_that_is_not_idempotent()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("kills").await;
    let node = format!("{ns}-node");
    let plugin = TestPlugin::start().await;
    register_pipeline_plugins(&client, &ns, &plugin).await;
    let _controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    let kills: usize = std::env::var("KDIAG_FAULT_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(KILLS);
    let (mut rng, seed) = Rng::seeded();
    ensure_node(&client, &node).await;

    // Two new Abnormals per agent life keep work in flight at every kill.
    let mut names = Vec::new();
    for i in 0..kills {
        for recoverer in ["safe", "risky"] {
            let name = format!("a-{i:03}-{recoverer}");
            create_abnormal(&client, &ns, &name, pipeline_spec(&node, recoverer)).await;
            names.push(name);
        }
        let agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
        // A random point of this life: up to 1.5 s, longer than one Abnormal's whole run.
        tokio::time::sleep(Duration::from_millis(rng.below(1500))).await;
        agent.kill();
    }
    let agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    let abnormals = all_final(&client, &ns, &names).await;
    let (repeated, lost, note) =
        check_pipeline_outcome(&abnormals, &plugin, &agent_log(cp, &node), false);
    drop(agent);
    report(Row {
        scenario: "agent SIGKILLed at random points",
        faults: kills,
        abnormals: names.len(),
        finals: abnormals.len(),
        repeated,
        lost,
        note: format!("seed {seed}; {note}"),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_and_etcd_restarted_mid_run_lose_no_abnormal_and_no_result() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("restart").await;
    let node = format!("{ns}-node");
    let plugin = TestPlugin::start().await;
    register_pipeline_plugins(&client, &ns, &plugin).await;
    let mut controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    let mut agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    let names: Vec<String> = (0..20)
        .map(|i| format!("r-{i:02}-{}", if i % 2 == 0 { "safe" } else { "risky" }))
        .collect();
    for name in &names {
        let recoverer = name.rsplit('-').next().unwrap();
        create_abnormal(&client, &ns, name, pipeline_spec(&node, recoverer)).await;
    }
    // Restart while steps are under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while plugin.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no step started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = Instant::now();
    cp.restart()
        .await
        .unwrap_or_else(|e| panic!("restarting the control plane: {e}"));
    let outage = stopped.elapsed();
    let abnormals = all_final(&client, &ns, &names).await;
    let (repeated, lost, note) =
        check_pipeline_outcome(&abnormals, &plugin, &agent_log(cp, &node), true);
    assert!(
        controller.is_running() && agent.is_running(),
        "kdiag survives the apiserver's restart"
    );
    report(Row {
        scenario: "apiserver and etcd restarted",
        faults: 1,
        abnormals: names.len(),
        finals: abnormals.len(),
        repeated,
        lost,
        note: format!("down {:.1}s; {note}", outage.as_secs_f64()),
    });
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get_opt(kdiag_controller::leader::DEFAULT_LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

/// Waits until the Lease names one of `replicas`; returns its index.
async fn leader_of(client: &kube::Client, replicas: &[&Kdiag]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let holder = lease_holder(client).await;
        if let Some(i) = replicas
            .iter()
            .position(|r| holder.as_deref() == Some(r.identity().as_str()))
        {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no replica leads; the Lease names {holder:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_fail_over_under_load_and_admit_every_abnormal_exactly_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("failover").await;
    let node = format!("{ns}-node");
    let _agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    let a = Kdiag::controller(cp, "ctl-a", true).await.ready().await;
    let b = Kdiag::controller(cp, "ctl-b", true).await.ready().await;
    let first = leader_of(&client, &[&a, &b]).await;
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    let spec = json!({"nodeName": node, "skipInformationCollection": true,
                      "skipDiagnosis": true, "skipRecovery": true});
    let names: Vec<String> = (0..40).map(|i| format!("f-{i:02}")).collect();
    for name in &names[..20] {
        create_abnormal(&client, &ns, name, spec.clone()).await;
    }
    wait_for(&client, &ns, &names[0], FINISH, |a| a.phase().is_some()).await;
    // The leader dies with work in flight; creation goes on.
    let killed_at = Instant::now();
    let standby_id = standby.identity();
    leader.kill();
    for name in &names[20..] {
        create_abnormal(&client, &ns, name, spec.clone()).await;
    }
    assert_eq!(leader_of(&client, &[&standby]).await, 0);
    let failover = killed_at.elapsed();
    let abnormals = all_final(&client, &ns, &names).await;
    let mut twice = 0;
    for a in &abnormals {
        let st = a.status.clone().unwrap();
        assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
        let accepted = st
            .conditions
            .iter()
            .filter(|c| c.type_ == AbnormalConditionType::Accepted)
            .count();
        assert_eq!(accepted, 1, "{}", a.name_any());
        let events = event_reasons(&client, &ns, &a.name_any()).await;
        if events.iter().filter(|r| *r == "Accepted").count() > 1 {
            twice += 1;
        }
    }
    assert_eq!(twice, 0, "Abnormals admitted twice");
    report(Row {
        scenario: "leading controller SIGKILLed",
        faults: 1,
        abnormals: names.len(),
        finals: abnormals.len(),
        repeated: twice,
        lost: 0,
        note: format!(
            "{standby_id} led {:.1}s after the kill (Lease 4s)",
            failover.as_secs_f64()
        ),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plugin_fault_kind_fails_only_its_step_with_a_message_even_across_an_agent_kill() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("plugin-faults").await;
    let node = format!("{ns}-node");
    let plugin = TestPlugin::start().await;
    let closed_port = free_port();
    let cases = [
        ("refused", closed_port, "/echo/x", "could not connect"),
        (
            "hangs",
            plugin.port,
            "/sleep/60000/x",
            "did not answer within 2s",
        ),
        (
            "drips",
            plugin.port,
            "/slow-body",
            "did not answer within 2s",
        ),
        (
            "oversized",
            plugin.port,
            "/oversize",
            "more than 2097152 bytes",
        ),
        (
            "notjson",
            plugin.port,
            "/invalid-json",
            "not an Abnormal in JSON",
        ),
        ("http500", plugin.port, "/fail/500", "answered HTTP 500"),
        (
            "changes-phase",
            plugin.port,
            "/change-phase",
            "changed status.phase",
        ),
        (
            "changes-spec",
            plugin.port,
            "/change-spec",
            "changed spec.assignedRecoverers",
        ),
        ("good", plugin.port, "/echo/good", "answered 200"),
    ];
    for (name, port, path, _) in &cases {
        register_plugin(&client, &ns, "InformationCollector", name, *port, path, 2).await;
    }
    let _controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    let agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    let collectors: Vec<_> = cases.iter().map(|(n, ..)| json!({"name": n})).collect();
    let names: Vec<String> = (0..4).map(|i| format!("p-{i}")).collect();
    for name in &names {
        create_abnormal(
            &client,
            &ns,
            name,
            json!({"nodeName": node, "assignedInformationCollectors": collectors}),
        )
        .await;
    }
    // Killed while plugins hang: the next agent runs the unfinished stage on.
    let deadline = Instant::now() + FINISH;
    while plugin.count("/sleep/60000/x") == 0 {
        assert!(
            Instant::now() < deadline,
            "the hanging plugin was never called"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill();
    let _agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    let abnormals = all_final(&client, &ns, &names).await;
    let mut lost = 0;
    for a in &abnormals {
        let st = a.status.clone().unwrap();
        assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
        let l = lost_results(a, &["good"]);
        assert!(l.is_empty(), "{}: {l:?}", a.name_any());
        lost += l.len();
        for (name, port, _, expected) in &cases {
            let record = st
                .processors
                .iter()
                .find(|r| r.processor == format!("{ns}/{name}"))
                .unwrap();
            assert!(
                record.message.contains(expected)
                    && record.message.contains(&format!("127.0.0.1:{port}")),
                "{name}: {:?} should contain {expected:?} and the address",
                record.message
            );
            let want = if *name == "good" {
                ProcessorResult::Succeeded
            } else {
                ProcessorResult::Failed
            };
            assert_eq!(record.result, want, "{name}");
        }
        assert!(
            a.spec.assigned_recoverers.is_empty(),
            "the spec did not change"
        );
        assert!(!st.context.unwrap_or_default().contains_key("x"));
    }
    report(Row {
        scenario: "plugin faults (8 kinds) + agent kill",
        faults: (cases.len() - 1) * names.len() + 1,
        abnormals: names.len(),
        finals: abnormals.len(),
        repeated: 0,
        lost,
        note: "refused, hangs, drips, oversized, not JSON, 500, changes phase, changes spec".into(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abnormals_deleted_under_a_running_step_stay_gone_and_the_agent_works_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("deleted").await;
    let node = format!("{ns}-node");
    let plugin = TestPlugin::start().await;
    let p = plugin.port;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "held",
        p,
        "/sleep/2000/held",
        10,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "fast",
        p,
        "/echo/fast",
        10,
    )
    .await;
    register_recoverer(&client, &ns, "risky", p, "/sleep/2000/risky", 10, false).await;
    let _controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    let mut agent = Kdiag::agent(cp, &node, &[]).await.ready().await;
    create_abnormal(
        &client,
        &ns,
        "collecting",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "held"}, {"name": "fast"}]}),
    )
    .await;
    create_abnormal(
        &client,
        &ns,
        "recovering",
        json!({"nodeName": node, "assignedRecoverers": [{"name": "risky"}]}),
    )
    .await;
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + FINISH;
    while plugin.count("/sleep/2000/held") == 0 || plugin.count("/sleep/2000/risky") == 0 {
        assert!(Instant::now() < deadline, "the steps never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for name in ["collecting", "recovering"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    // Once both steps have ended, the agent has tried to record them.
    let deadline = Instant::now() + FINISH;
    while plugin.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        assert!(Instant::now() < deadline, "the steps never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    create_abnormal(
        &client,
        &ns,
        "canary",
        json!({"nodeName": node, "assignedInformationCollectors": [{"name": "fast"}]}),
    )
    .await;
    let canary = wait_final(&client, &ns, "canary", FINISH).await;
    assert_eq!(canary.phase(), Some(AbnormalPhase::Succeeded));
    for name in ["collecting", "recovering"] {
        assert!(
            api.get_opt(name).await.unwrap().is_none(),
            "{name} came back after its deletion"
        );
    }
    assert!(agent.is_running(), "the agent survives");
    assert_eq!(plugin.count("/sleep/2000/held"), 1);
    assert_eq!(plugin.count("/sleep/2000/risky"), 1, "no recovery repeated");
    report(Row {
        scenario: "Abnormal deleted mid-step",
        faults: 2,
        // The canary must end; the two deleted ones must stay gone.
        abnormals: 1,
        finals: 1,
        repeated: 0,
        lost: 0,
        note: "2 deleted (collecting, recovering) stay gone; the canary after them succeeds".into(),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_would_exceed_the_size_limit_is_shrunk_with_a_marker_and_ends() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("too-big").await;
    let plugin = TestPlugin::start().await;
    let p = plugin.port;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "big",
        p,
        "/big/400000/big",
        10,
    )
    .await;
    register_plugin(
        &client,
        &ns,
        "InformationCollector",
        "small",
        p,
        "/echo/small",
        10,
    )
    .await;
    let _controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    // A spec of 1.2 MB: with the big collector's 400 kB the object would pass etcd's 1.5 MiB.
    let spec = |node: &str| {
        json!({"nodeName": node,
               "assignedInformationCollectors": [{"name": "big"}, {"name": "small"}],
               "context": {"blob": "s".repeat(1_200_000)}})
    };
    // The shipped cap on the whole object drops the big output before any write.
    let capped = format!("{ns}-capped");
    let agent = Kdiag::agent(cp, &capped, &[]).await.ready().await;
    create_abnormal(&client, &ns, "capped", spec(&capped)).await;
    let a = wait_final(&client, &ns, "capped", FINISH).await;
    drop(agent);
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{}", st.message);
    assert!(
        st.processors[0].message.contains("on the whole object"),
        "{}",
        st.processors[0].message
    );
    let lost = lost_results(&a, &["small"]).len();
    // Without it, etcd refuses the write: what kdiag added is dropped with a marker.
    let uncapped = format!("{ns}-uncapped");
    let _agent = Kdiag::agent(cp, &uncapped, &["--max-object-bytes=8388608"])
        .await
        .ready()
        .await;
    create_abnormal(&client, &ns, "uncapped", spec(&uncapped)).await;
    let a = wait_final(&client, &ns, "uncapped", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{}", st.message);
    assert!(
        st.message
            .contains("refused to store this Abnormal for its size"),
        "{}",
        st.message
    );
    let dropped = &st.context.unwrap()["droppedForSize"];
    assert!(
        dropped.to_string().contains("status.context.big"),
        "{dropped}"
    );
    report(Row {
        scenario: "status over the size limit",
        faults: 2,
        abnormals: 2,
        finals: 2,
        repeated: 0,
        lost,
        note: "capped by the agent; refused by etcd and shrunk with droppedForSize".into(),
    });
}

/// A `sleep` placed in the pids cgroup `kubepods/pod<uid>` below a directory of its own, which
/// is what /proc/<pid>/cgroup shows for a pod's process (needs root and cgroup v1's pids
/// hierarchy, as crates/recoverers/tests/signal_recoverer.rs does).
struct PodProcess {
    child: std::process::Child,
    cgroup: PathBuf,
}

impl PodProcess {
    fn start(pod_uid: &str) -> Self {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let cgroup = PathBuf::from(format!("/sys/fs/cgroup/pids/kdiag-faults-{}", child.id()));
        let dir = cgroup.join("kubepods").join(format!("pod{pod_uid}"));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("creating the cgroup {}: {e}", dir.display()));
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        Self { child, cgroup }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn started(&self) -> u64 {
        kdiag_recoverers::signal::start_time(Path::new("/proc"), self.pid()).unwrap()
    }

    /// Waits (up to 10 s) until it has exited.
    async fn exited(&mut self) -> bool {
        for _ in 0..200 {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pods = std::fs::read_dir(self.cgroup.join("kubepods"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        for dir in pods.chain([self.cgroup.join("kubepods"), self.cgroup.clone()]) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_recovery_the_agent_died_during_is_confirmed_by_the_next_agent_not_abandoned() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cp = setup().await;
    let client = cp.client().await;
    let ns = cp.create_namespace("confirm").await;
    let node = format!("{ns}-node");
    ensure_node(&client, &node).await;
    write_policy(
        &client,
        "faults-signals",
        "recoverers:\n  allow: ['*']\nsignals:\n  allow: [SIGKILL]\n",
    )
    .await;
    // No controller-manager creates it, and pod admission asks for it.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    Api::namespaced(client.clone(), &ns)
        .create(&Default::default(), &sa)
        .await
        .unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "stubborn"},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    let pod = Api::namespaced(client.clone(), &ns)
        .create(&Default::default(), &pod)
        .await
        .unwrap();
    let uid = pod.metadata.uid.unwrap();
    let mut killed = PodProcess::start(&uid);
    let mut survivor = PodProcess::start(&uid);
    let requests = json!([
        {"pid": killed.pid(), "signal": "SIGKILL", "startTime": killed.started()},
        {"pid": survivor.pid(), "signal": "SIGKILL", "startTime": survivor.started()},
    ]);
    let _controller = Kdiag::controller(cp, "ctl", false).await.ready().await;
    create_abnormal(
        &client,
        &ns,
        "stuck",
        json!({"nodeName": node, "podReference": {"name": "stubborn"},
               "skipInformationCollection": true, "skipDiagnosis": true,
               "assignedRecoverers": [{"namespace": SYSTEM_NAMESPACE, "name": "signal-recoverer"}],
               "context": {"signalRecovery": requests}}),
    )
    .await;
    wait_for(&client, &ns, "stuck", FINISH, |a| a.phase().is_some()).await;
    // What an agent killed during attempt 1 leaves: the intent recorded, the first signal
    // sent (the process is gone), the second not yet.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(killed.exited().await);
    let api: Api<Abnormal> = Api::namespaced(client.clone(), &ns);
    let intent = json!({"status": {"phase": "Recovering", "processors": [{
        "processor": format!("{SYSTEM_NAMESPACE}/signal-recoverer"), "kind": "Processor",
        "stage": "Recovering", "result": "Running",
        "startTime": jiff::Timestamp::now().to_string()}]}});
    api.patch_status(
        "stuck",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&intent),
    )
    .await
    .unwrap();
    let _agent = Kdiag::agent(cp, &node, &["--policy-configmap=faults-signals"])
        .await
        .ready()
        .await;
    let a = wait_final(&client, &ns, "stuck", FINISH).await;
    let st = a.status.clone().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded), "{st:#?}");
    assert_eq!(st.processors.len(), 1, "{st:#?}");
    let record = &st.processors[0];
    assert_eq!(record.result, ProcessorResult::Succeeded);
    assert!(
        record.message.contains(&format!(
            "sent SIGKILL to {}; confirmed: pid {} (started at tick",
            survivor.pid(),
            killed.pid()
        )),
        "{}",
        record.message
    );
    assert!(survivor.exited().await, "the second target got its signal");
    let results = &st.context.unwrap()["signalRecoveryResult"];
    assert_eq!(results[0]["result"], "confirmed");
    assert_eq!(results[1]["result"], "sent");
    report(Row {
        scenario: "built-in recovery confirmed",
        faults: 1,
        abnormals: 1,
        finals: 1,
        repeated: 0,
        lost: 0,
        note: "signal-recoverer retried: a gone target confirmed, a live one signalled".into(),
    });
}
