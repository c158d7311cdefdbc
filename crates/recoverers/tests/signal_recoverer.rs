//! signal-recoverer against real processes of this machine, placed in a pod's cgroup the way the
//! kubelet places a pod's processes, and a real apiserver that has the pod.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kdiag_api::Abnormal;
use kdiag_api::plugin::{NodeEnvironment, Processor, ProcessorContext, ProcessorError};
use kdiag_recoverers::policy::{Policy, PolicyHandle};
use kdiag_recoverers::signal::{SignalRecoverer, start_time};
use kube::api::PostParams;
use serde_json::json;

const NODE: &str = "this-machine";

/// A namespace on the shared control plane with two pods bound to [`NODE`] (their containers
/// never run: no kubelet serves this node), and the context an agent on [`NODE`] gives a step.
struct Pods {
    ns: String,
    client: kube::Client,
    /// The uids of `target` and `other`.
    target: String,
    other: String,
}

impl Pods {
    async fn new() -> Self {
        let cp = kdiag_testenv::control_plane().await;
        let client = cp.client().await;
        let ns = cp.create_namespace("signals").await;
        // No controller-manager runs here to create it, and admission asks for it.
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        kube::Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &sa)
            .await
            .unwrap();
        let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &ns);
        let mut uids = Vec::new();
        for name in ["target", "other"] {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name},
                "spec": {"nodeName": NODE, "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]},
            }))
            .unwrap();
            let created = api.create(&PostParams::default(), &pod).await.unwrap();
            uids.push(created.metadata.uid.unwrap());
        }
        Self {
            ns,
            client,
            target: uids[0].clone(),
            other: uids[1].clone(),
        }
    }

    fn ctx(&self) -> ProcessorContext {
        ProcessorContext {
            node_name: NODE.into(),
            client: self.client.clone(),
            timeout: Duration::from_secs(10),
            max_output_bytes: 1 << 20,
            node: Arc::new(NodeEnvironment::default()),
        }
    }

    /// An Abnormal about pod `target` proposing `requests`.
    fn abnormal(&self, requests: serde_json::Value) -> Abnormal {
        serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": self.ns},
            "spec": {"nodeName": NODE, "podReference": {"name": "target"},
                     "context": {"signalRecovery": requests}},
        }))
        .unwrap()
    }
}

fn policy(yaml: &str) -> PolicyHandle {
    PolicyHandle::new(Policy::from_yaml(yaml).unwrap())
}

/// A `sleep` process, moved into the pids cgroup `kubepods/pod<uid>` below a directory of its
/// own when given a pod uid: what /proc/<pid>/cgroup shows for a pod's process.
struct Sleeper {
    child: Child,
    cgroup: Option<PathBuf>,
}

impl Sleeper {
    fn start() -> Self {
        Self {
            child: Command::new("sleep").arg("600").spawn().unwrap(),
            cgroup: None,
        }
    }

    fn in_pod(uid: &str) -> Self {
        let mut s = Self::start();
        let root = PathBuf::from(format!("/sys/fs/cgroup/pids/kdiag-signal-test-{}", s.pid()));
        let dir = root.join("kubepods").join(format!("pod{uid}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!("creating the cgroup {} (these tests need root and cgroup v1's pids hierarchy): {e}", dir.display())
        });
        std::fs::write(dir.join("cgroup.procs"), s.pid().to_string()).unwrap();
        s.cgroup = Some(root);
        s
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    fn started(&self) -> u64 {
        start_time("/proc".as_ref(), self.pid()).unwrap()
    }
    /// True once the process has exited (reaped here).
    fn exited(&mut self) -> bool {
        for _ in 0..50 {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(root) = &self.cgroup {
            // Deepest first; the process is gone, so each is empty.
            let pod = std::fs::read_dir(root.join("kubepods"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path());
            for dir in pod.chain([root.join("kubepods"), root.clone()]) {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

#[tokio::test]
async fn an_allowed_signal_kills_the_process_it_was_proposed_for() {
    let pods = Pods::new().await;
    let mut p = Sleeper::in_pod(&pods.target);
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let out = r
        .process(
            &pods.ctx(),
            &pods.abnormal(json!([{"pid": p.pid(), "signal": 9, "startTime": p.started()}])),
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
    let pods = Pods::new().await;
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let me = std::process::id();
    let err = r
        .process(&pods.ctx(), &pods.abnormal(json!([{"pid": 1, "signal": "SIGKILL", "startTime": 1}, {"pid": me, "signal": "KILL", "startTime": 1}])))
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
    let pods = Pods::new().await;
    let mut p = Sleeper::in_pod(&pods.target);
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    // The start time the diagnosis recorded belongs to an earlier process with this pid.
    let err = r
        .process(
            &pods.ctx(),
            &pods.abnormal(json!([{"pid": p.pid(), "signal": 9, "startTime": p.started() - 1}])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the pid was reused"), "{err}");
    assert!(!p.exited(), "the process must live");
    let err = r
        .process(
            &pods.ctx(),
            &pods.abnormal(json!([{"pid": p.pid(), "signal": 9}])),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no startTime"), "{err}");
}

#[tokio::test]
async fn signals_are_denied_by_default_and_dry_run_sends_nothing() {
    let pods = Pods::new().await;
    let mut p = Sleeper::in_pod(&pods.target);
    let request = json!([{"pid": p.pid(), "signal": "SIGTERM", "startTime": p.started()}]);
    let err = SignalRecoverer::new(PolicyHandle::new(Policy::default()))
        .process(&pods.ctx(), &pods.abnormal(request.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("denied by policy rule signals.allow"),
        "{err}"
    );
    let dry = SignalRecoverer::new(policy("dryRun: true\nsignals:\n  allow: [SIGTERM]\n"));
    let err = dry
        .process(&pods.ctx(), &pods.abnormal(request))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProcessorError::Denied { rule, message } if rule == "dryRun" && message.contains("would have sent SIGTERM")),
        "{err}"
    );
    assert!(!p.exited(), "nothing may have been sent");
}

#[tokio::test]
async fn before_a_policy_is_loaded_no_signal_is_sent_whatever_it_would_allow() {
    let pods = Pods::new().await;
    let mut p = Sleeper::in_pod(&pods.target);
    let handle = PolicyHandle::not_loaded();
    let r = SignalRecoverer::new(handle.clone());
    let request = json!([{"pid": p.pid(), "signal": "SIGTERM", "startTime": p.started()}]);
    let err = r
        .process(&pods.ctx(), &pods.abnormal(request.clone()))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("denied: the node policy has not been loaded yet"),
        "{err}"
    );
    assert!(!p.exited(), "nothing may have been sent");
    handle.set(Policy::from_yaml("signals:\n  allow: [SIGTERM]\n").unwrap());
    r.process(&pods.ctx(), &pods.abnormal(request))
        .await
        .unwrap();
    assert!(p.exited(), "sent once the policy is loaded");
}

#[tokio::test]
async fn a_partial_failure_says_what_was_sent_and_what_was_not() {
    let pods = Pods::new().await;
    let mut a = Sleeper::in_pod(&pods.target);
    let b = Sleeper::in_pod(&pods.target);
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let err = r
        .process(&pods.ctx(), &pods.abnormal(json!([{"pid": a.pid(), "signal": 9, "startTime": a.started()}, {"pid": b.pid(), "signal": 9, "startTime": 0}])))
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

#[tokio::test]
async fn a_process_outside_the_abnormals_pod_is_never_signalled_whoever_proposed_it() {
    let pods = Pods::new().await;
    let mut host = Sleeper::start();
    let mut neighbour = Sleeper::in_pod(&pods.other);
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let err = r
        .process(
            &pods.ctx(),
            &pods.abnormal(json!([
                {"pid": host.pid(), "signal": 9, "startTime": host.started()},
                {"pid": neighbour.pid(), "signal": 9, "startTime": neighbour.started()},
            ])),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "pid {} is not a process of pod {}/target",
            host.pid(),
            pods.ns
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "pid {} is a process of another pod (uid {})",
            neighbour.pid(),
            pods.other
        )),
        "{msg}"
    );
    assert!(
        !host.exited() && !neighbour.exited(),
        "nothing may have been sent"
    );
}

#[tokio::test]
async fn without_a_pod_on_this_node_nothing_is_signalled() {
    let pods = Pods::new().await;
    let mut p = Sleeper::in_pod(&pods.target);
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let request = json!([{"pid": p.pid(), "signal": 9, "startTime": p.started()}]);

    let mut no_pod = pods.abnormal(request.clone());
    no_pod.spec.pod_reference = None;
    let err = r.process(&pods.ctx(), &no_pod).await.unwrap_err();
    assert!(
        matches!(&err, ProcessorError::InvalidInput(m) if m.contains("spec.podReference names none")),
        "{err}"
    );

    let mut missing = pods.abnormal(request.clone());
    missing.spec.pod_reference.as_mut().unwrap().name = "gone".into();
    let err = r.process(&pods.ctx(), &missing).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "pod {}/gone (spec.podReference) does not exist",
            pods.ns
        )),
        "{err}"
    );

    let mut elsewhere = pods.ctx();
    elsewhere.node_name = "another-node".into();
    let err = r
        .process(&elsewhere, &pods.abnormal(request))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not on this node (another-node)"),
        "{err}"
    );
    assert!(!p.exited(), "nothing may have been sent");
}

/// `abnormal` as the agent passes it to a retried recovery: its last record is the intent of
/// attempt 2, written after the agent stopped during attempt 1.
fn as_retry(mut abnormal: Abnormal) -> Abnormal {
    abnormal.status = Some(
        serde_json::from_value(json!({"processors": [{
            "stage": "Recovering", "processor": "kube-diagnoser/signal-recoverer", "kind": "Processor",
            "result": "Running", "startTime": "2026-12-04T10:00:00Z",
            "message": "attempt 2: run again after the agent stopped during attempt 1 (the recoverer is idempotent)"}]}))
        .unwrap(),
    );
    abnormal
}

#[tokio::test]
async fn a_retried_recovery_confirms_what_its_first_attempt_killed_and_signals_what_still_runs() {
    let pods = Pods::new().await;
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let mut killed = Sleeper::in_pod(&pods.target);
    let mut survivor = Sleeper::in_pod(&pods.target);
    let killed_started = killed.started();
    let requests = json!([
        {"pid": killed.pid(), "signal": 9, "startTime": killed.started()},
        {"pid": survivor.pid(), "signal": 9, "startTime": survivor.started()},
    ]);
    // Attempt 1 reached the first process only, then the agent died.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(killed.exited());
    let out = r
        .process(&pods.ctx(), &as_retry(pods.abnormal(requests)))
        .await
        .unwrap();
    assert_eq!(
        out.message,
        format!(
            "sent SIGKILL to {}; confirmed: pid {} (started at tick {}) is gone",
            survivor.pid(),
            killed.pid(),
            killed_started
        )
    );
    let results = &out.context["signalRecoveryResult"];
    assert_eq!(results[0]["result"], "confirmed");
    assert_eq!(results[1]["result"], "sent");
    assert!(survivor.exited());
}

#[tokio::test]
async fn a_retried_recovery_whose_targets_are_all_gone_succeeds_as_confirmed_without_its_pod() {
    let pods = Pods::new().await;
    let r = SignalRecoverer::new(policy("signals:\n  allow: [SIGKILL]\n"));
    let mut gone = Sleeper::in_pod(&pods.target);
    let mut reused = Sleeper::in_pod(&pods.target);
    let requests = json!([
        {"pid": gone.pid(), "signal": "SIGKILL", "startTime": gone.started()},
        // The pid is held by a process that started later than the one diagnosed.
        {"pid": reused.pid(), "signal": "SIGKILL", "startTime": reused.started() - 1},
    ]);
    gone.child.kill().unwrap();
    assert!(gone.exited());
    // The pod itself is gone too (deleted after its process died): nothing needs it now.
    let mut abnormal = as_retry(pods.abnormal(requests.clone()));
    abnormal.spec.pod_reference.as_mut().unwrap().name = "deleted".into();
    let out = r.process(&pods.ctx(), &abnormal).await.unwrap();
    assert!(out.message.starts_with("confirmed: "), "{}", out.message);
    assert!(
        out.message
            .contains("now belongs to a process started at tick"),
        "{}",
        out.message
    );
    assert!(!reused.exited(), "the process that reuses the pid lives");
    // The same request on a first attempt refuses, as before: nothing is confirmed then.
    let err = r
        .process(&pods.ctx(), &pods.abnormal(requests))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the process is gone"), "{err}");
    assert!(!reused.exited());
}

#[test]
fn every_built_in_recoverer_is_registered_idempotent_as_it_confirms_its_effect_on_a_retry() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/deploy/processors.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut idempotent = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"].as_str() == Some("Recoverer") {
            let name = v["metadata"]["name"].as_str().unwrap().to_owned();
            let registered: kdiag_api::RecovererSpec =
                serde_yaml::from_value(v["spec"].clone()).unwrap();
            idempotent.push((name, registered.idempotent));
        }
    }
    let built_in: Vec<(String, bool)> = kdiag_recoverers::all(PolicyHandle::new(Policy::default()))
        .iter()
        .map(|p| (p.name().to_owned(), true))
        .collect();
    assert_eq!(idempotent, built_in);
}
