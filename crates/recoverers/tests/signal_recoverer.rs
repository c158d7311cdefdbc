//! signal-recoverer against real processes of this machine.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use kdiag_api::Abnormal;
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext, ProcessorError};
use kdiag_recoverers::policy::{Policy, PolicyHandle};
use kdiag_recoverers::signal::{SignalRecoverer, start_time};
use serde_json::json;

fn ctx() -> ProcessorContext {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Never used: signal-recoverer only reads /proc and sends signals.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    ProcessorContext {
        node_name: "this-machine".into(),
        client: kube::Client::try_from(config).unwrap(),
        timeout: Duration::from_secs(10),
        max_output_bytes: 1 << 20,
        node: Arc::new(NodeEnvironment::default()),
    }
}

fn abnormal(requests: serde_json::Value) -> Abnormal {
    serde_json::from_value(
        json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "a", "namespace": "default"},
        "spec": {"nodeName": "n", "context": {"signalRecovery": requests}}}),
    )
    .unwrap()
}

fn policy(yaml: &str) -> PolicyHandle {
    PolicyHandle::new(Policy::from_yaml(yaml).unwrap())
}

struct Sleeper(Child);
impl Sleeper {
    fn start() -> Self {
        Self(Command::new("sleep").arg("600").spawn().unwrap())
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn started(&self) -> u64 {
        start_time("/proc".as_ref(), self.pid()).unwrap()
    }
    /// True once the process has exited (reaped here).
    fn exited(&mut self) -> bool {
        for _ in 0..50 {
            if self.0.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn an_allowed_signal_kills_the_process_it_was_proposed_for() {
    let mut p = Sleeper::start();
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let out = r
        .process(
            &ctx(),
            &abnormal(json!([{"pid": p.pid(), "signal": 9, "startTime": p.started()}])),
        )
        .await
        .unwrap();
    assert!(
        out.message.contains(&format!("SIGKILL to {}", p.pid())),
        "{}",
        out.message
    );
    assert!(p.exited(), "the process must be dead");
    assert_eq!(out.context["signalRecoveryResult"][0]["result"], "sent");
}

#[tokio::test]
async fn pid_1_and_the_agent_itself_are_never_signalled() {
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let me = std::process::id();
    let err = r
        .process(&ctx(), &abnormal(json!([{"pid": 1, "signal": "SIGKILL", "startTime": 1}, {"pid": me, "signal": "KILL", "startTime": 1}])))
        .await
        .unwrap_err();
    let ProcessorError::Failed(msg) = err else {
        panic!("{err}")
    };
    assert!(
        msg.contains("never to pid 1") && msg.contains("never to the kdiag agent itself"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_reused_pid_is_refused_and_its_new_process_lives() {
    let mut p = Sleeper::start();
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    // The start time the diagnosis recorded belongs to an earlier process with this pid.
    let err = r
        .process(
            &ctx(),
            &abnormal(json!([{"pid": p.pid(), "signal": 9, "startTime": p.started() - 1}])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the pid was reused"), "{err}");
    assert!(!p.exited(), "the process must live");
    let err = r
        .process(&ctx(), &abnormal(json!([{"pid": p.pid(), "signal": 9}])))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no startTime"), "{err}");
}

#[tokio::test]
async fn signals_are_denied_by_default_and_dry_run_sends_nothing() {
    let mut p = Sleeper::start();
    let request = json!([{"pid": p.pid(), "signal": "SIGTERM", "startTime": p.started()}]);
    let err = SignalRecoverer::new(PolicyHandle::new(Policy::default()))
        .process(&ctx(), &abnormal(request.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("denied by policy rule signals.allow"),
        "{err}"
    );
    let dry = SignalRecoverer::new(policy("dryRun: true\nsignals:\n  allow: [SIGTERM]\n"));
    let err = dry.process(&ctx(), &abnormal(request)).await.unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Denied { rule, message } if rule == "dryRun" && message.contains("would have sent SIGTERM")),
        "{err}"
    );
    assert!(!p.exited(), "nothing may have been sent");
}

#[tokio::test]
async fn before_a_policy_is_loaded_no_signal_is_sent_whatever_it_would_allow() {
    let mut p = Sleeper::start();
    let handle = PolicyHandle::not_loaded();
    let r = SignalRecoverer::new(handle.clone());
    let request = json!([{"pid": p.pid(), "signal": "SIGTERM", "startTime": p.started()}]);
    let err = r
        .process(&ctx(), &abnormal(request.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("denied: the node policy has not been loaded yet"),
        "{err}"
    );
    assert!(!p.exited(), "nothing may have been sent");
    handle.set(Policy::from_yaml("signals:\n  allow: [SIGTERM]\n").unwrap());
    r.process(&ctx(), &abnormal(request)).await.unwrap();
    assert!(p.exited(), "sent once the policy is loaded");
}

#[tokio::test]
async fn a_partial_failure_says_what_was_sent_and_what_was_not() {
    let mut a = Sleeper::start();
    let b = Sleeper::start();
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let err = r
        .process(&ctx(), &abnormal(json!([{"pid": a.pid(), "signal": 9, "startTime": a.started()}, {"pid": b.pid(), "signal": 9, "startTime": 0}])))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("sent: SIGKILL to {}", a.pid()))
            && msg.contains(&format!("not sent: SIGKILL to {}", b.pid())),
        "{msg}"
    );
    assert!(a.exited());
}
