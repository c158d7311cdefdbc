//! `signal-recoverer`: sends the signals a diagnoser proposed (`signalRecovery` in the context:
//! `[{pid, signal, startTime}]`), under policy, and never to the wrong process:
//! - never to pid 1 or to the agent itself;
//! - only to processes of the Abnormal's pod (`spec.podReference`, which must run on this node),
//!   checked at send time by the process's cgroup, whoever proposed the pid: a creator who names
//!   a pid in `spec.context` cannot reach another pod's processes or the host's;
//! - only while the pid still belongs to the process that was diagnosed: its start time (field 22
//!   of /proc/<pid>/stat) must equal the one recorded, so a reused pid is refused;
//! - each signal's result is recorded; a partial failure says which were sent and which not.

use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{SIGNAL_RECOVERY, SIGNAL_RECOVERY_RESULT};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::policy::{PolicyHandle, parse_signal};

/// Field 22 of `<proc_root>/<pid>/stat`: when the process started, in clock ticks since boot.
pub use kdiag_procstat::start_time;

/// One proposed signal, as diagnosers write it (extra fields are ignored).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalRequest {
    pub pid: i32,
    /// A number (9) or a name (SIGKILL).
    pub signal: Value,
    /// Field 22 of /proc/<pid>/stat when the process was seen: clock ticks since boot.
    #[serde(default)]
    pub start_time: Option<Value>,
}

/// What became of one signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalResult {
    pub pid: i32,
    pub signal: String,
    /// sent, would-send (dry run), refused, failed.
    pub result: String,
    pub message: String,
}

pub struct SignalRecoverer {
    policy: PolicyHandle,
}

impl SignalRecoverer {
    pub fn new(policy: PolicyHandle) -> Self {
        Self { policy }
    }
}

impl Processor for SignalRecoverer {
    fn name(&self) -> &'static str {
        "signal-recoverer"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let requests: Vec<SignalRequest> = abnormal.context_as(SIGNAL_RECOVERY)?.ok_or_else(|| {
                ProcessorError::InvalidInput(format!(
                    "no {SIGNAL_RECOVERY} in the context: a diagnoser (such as terminating-pod-diagnoser) proposes [{{pid, signal, startTime}}], or give it in spec.context"
                ))
            })?;
            if requests.is_empty() {
                return Err(ProcessorError::InvalidInput(format!("{SIGNAL_RECOVERY} is empty: there is nothing to send")));
            }
            let pod = target_pod(ctx, abnormal).await?;
            let policy = self.policy.current();
            let results: Vec<SignalResult> = requests.iter().map(|r| send_one(r, &policy, &ctx.node.proc_root, &pod)).collect();
            let sent: Vec<String> = results.iter().filter(|r| r.result == "sent").map(|r| format!("{} to {}", r.signal, r.pid)).collect();
            let would: Vec<String> = results.iter().filter(|r| r.result == "would-send").map(|r| format!("{} to {}", r.signal, r.pid)).collect();
            let not_sent: Vec<String> = results.iter().filter(|r| r.result == "refused" || r.result == "failed").map(|r| format!("{} to {}: {}", r.signal, r.pid, r.message)).collect();
            let value = serde_json::to_value(&results).map_err(|e| ProcessorError::Failed(e.to_string()))?;
            if !not_sent.is_empty() {
                let mut msg = format!("not sent: {}", not_sent.join("; "));
                if !sent.is_empty() {
                    msg = format!("sent: {}; {msg}", sent.join(", "));
                }
                // The step fails, but what was sent is on record in the message.
                return Err(ProcessorError::Failed(msg));
            }
            if !would.is_empty() {
                return Err(ProcessorError::Denied {
                    rule: "dryRun".into(),
                    message: format!("dry run: would have sent {}; nothing was sent", would.join(", ")),
                });
            }
            Ok(ProcessorOutput::message(format!("sent {}", sent.join(", "))).with_context(SIGNAL_RECOVERY_RESULT, value))
        }
        .boxed()
    }
}

/// The pod whose processes may be signalled: `spec.podReference`, as the apiserver has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPod {
    /// namespace/name, for messages.
    pub name: String,
    pub uid: String,
}

/// Looks up the Abnormal's pod and checks that it runs on this node. Without a pod there is
/// nothing signal-recoverer may signal.
async fn target_pod(
    ctx: &ProcessorContext,
    abnormal: &Abnormal,
) -> Result<TargetPod, ProcessorError> {
    let reference = abnormal
        .spec
        .pod_reference
        .as_ref()
        .filter(|r| !r.name.is_empty())
        .ok_or_else(|| {
            ProcessorError::InvalidInput(
                "signal-recoverer signals only processes of the Abnormal's pod, and spec.podReference names none; name the pod whose processes should get the signals".into(),
            )
        })?;
    let namespace = if reference.namespace.is_empty() {
        abnormal.metadata.namespace.as_deref().unwrap_or("default")
    } else {
        &reference.namespace
    };
    let name = format!("{namespace}/{}", reference.name);
    let api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), namespace);
    let pod = tokio::time::timeout(ctx.timeout, api.get_opt(&reference.name))
        .await
        .map_err(|_| {
            ProcessorError::Failed(format!(
                "looking up pod {name} took longer than {:?}; nothing was sent",
                ctx.timeout
            ))
        })?
        .map_err(|e| {
            ProcessorError::Failed(format!("looking up pod {name}: {e}; nothing was sent"))
        })?
        .ok_or_else(|| {
            ProcessorError::InvalidInput(format!(
                "pod {name} (spec.podReference) does not exist; nothing was sent"
            ))
        })?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node != Some(ctx.node_name.as_str()) {
        return Err(ProcessorError::InvalidInput(format!(
            "pod {name} runs on {}, not on this node ({}); nothing was sent",
            node.unwrap_or("no node"),
            ctx.node_name
        )));
    }
    let uid = pod.metadata.uid.unwrap_or_default();
    if uid.is_empty() {
        return Err(ProcessorError::Failed(format!(
            "pod {name} has no uid; nothing was sent"
        )));
    }
    Ok(TargetPod { name, uid })
}

/// Refuses a pid whose cgroup does not place it in `pod`: the one check that ties a proposed
/// pid to the Abnormal's pod.
pub fn check_in_pod(proc_root: &Path, pid: i32, pod: &TargetPod) -> Result<(), String> {
    match kdiag_procstat::cgroup::of_process(proc_root, pid) {
        Some(found) if found.pod_uid == pod.uid => Ok(()),
        Some(found) => Err(format!(
            "pid {pid} is a process of another pod (uid {}), not of pod {}: signals go only to the Abnormal's pod",
            found.pod_uid, pod.name
        )),
        None => Err(format!(
            "pid {pid} is not a process of pod {} (its cgroup places it in no pod): signals go only to the Abnormal's pod",
            pod.name
        )),
    }
}

fn send_one(
    r: &SignalRequest,
    policy: &crate::policy::Policy,
    proc_root: &Path,
    pod: &TargetPod,
) -> SignalResult {
    let name = match &r.signal {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let refuse = |message: String| SignalResult {
        pid: r.pid,
        signal: name.clone(),
        result: "refused".into(),
        message,
    };
    let Some(signal) = parse_signal(&name) else {
        return refuse(format!("{name:?} is not a signal"));
    };
    let signal_name = signal.as_str().to_owned();
    let refuse = |message: String| SignalResult {
        pid: r.pid,
        signal: signal_name.clone(),
        result: "refused".into(),
        message,
    };
    if r.pid <= 1 {
        return refuse("never to pid 1 (or below)".into());
    }
    if r.pid as u32 == std::process::id() {
        return refuse("never to the kdiag agent itself".into());
    }
    if let Err(d) = policy.allows_signal(signal) {
        return refuse(d.to_string());
    }
    let Some(expected) = r.start_time.as_ref().and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    }) else {
        return refuse("no startTime: without it kdiag cannot tell that the pid still belongs to the process that was diagnosed".into());
    };
    match start_time(proc_root, r.pid) {
        None => return refuse("the process is gone".into()),
        Some(actual) if actual != expected => {
            return refuse(format!(
                "pid {} now belongs to another process (start time {actual}, not {expected}): the pid was reused",
                r.pid
            ));
        }
        Some(_) => {}
    }
    if let Err(message) = check_in_pod(proc_root, r.pid, pod) {
        return refuse(message);
    }
    if policy.spec.dry_run {
        return SignalResult {
            pid: r.pid,
            signal: signal_name,
            result: "would-send".into(),
            message: "dry run".into(),
        };
    }
    match kill(Pid::from_raw(r.pid), signal) {
        Ok(()) => SignalResult {
            pid: r.pid,
            signal: signal_name,
            result: "sent".into(),
            message: String::new(),
        },
        Err(e) => SignalResult {
            pid: r.pid,
            signal: signal_name,
            result: "failed".into(),
            message: e.desc().to_owned(),
        },
    }
}
