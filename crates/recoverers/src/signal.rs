//! `signal-recoverer`: sends the signals a diagnoser proposed (`signalRecovery` in the context:
//! `[{pid, signal, startTime}]`), under policy, and never to the wrong process:
//! - never to pid 1 or to the agent itself;
//! - only to processes of the Abnormal's pod (`spec.podReference`, which must run on this node),
//!   checked at send time by the process's cgroup, whoever proposed the pid: a creator who names
//!   a pid in `spec.context` cannot reach another pod's processes or the host's;
//! - only while the pid still belongs to the process that was diagnosed: its start time (field 22
//!   of /proc/<pid>/stat) must equal the one recorded, so a reused pid is refused;
//! - each signal's result is recorded; a partial failure says which were sent and which not.
//!
//! It is registered `idempotent: true`: when the agent stopped while it ran, the agent calls it
//! again (attempt 2 or 3). Attempt 1 may have sent a signal already, so before acting again it
//! checks whether the effect happened: a target that is gone, or whose pid now belongs to another
//! process, is recorded `confirmed` and gets nothing. A target still there with the same start
//! time did not end, so it gets the signal again (for the termination signals diagnosers propose,
//! one more is what a second attempt should do).

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
    /// sent, would-send (dry run), refused, failed, or confirmed (a retried attempt found the
    /// target gone: nothing sent again).
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
            let proc_root = &ctx.node.proc_root;
            // On a retry, whatever an earlier attempt may have done is checked first.
            let already: Vec<Option<SignalResult>> = if retry_attempt(abnormal).is_some() {
                requests.iter().map(|r| confirm_one(r, start_time(proc_root, r.pid))).collect()
            } else {
                vec![None; requests.len()]
            };
            if already.iter().all(Option::is_some) {
                // Every target is gone: no pod lookup, nothing to send, the effect is there.
                let results: Vec<SignalResult> = already.into_iter().flatten().collect();
                let value = serde_json::to_value(&results).map_err(|e| ProcessorError::Failed(e.to_string()))?;
                let what: Vec<String> = results.iter().map(|r| r.message.clone()).collect();
                return Ok(ProcessorOutput::message(format!("confirmed: {}", what.join("; "))).with_context(SIGNAL_RECOVERY_RESULT, value));
            }
            let pod = target_pod(ctx, abnormal).await?;
            let policy = self.policy.current();
            let results: Vec<SignalResult> = requests
                .iter()
                .zip(already)
                .map(|(r, c)| c.unwrap_or_else(|| send_one(r, &policy, proc_root, &pod)))
                .collect();
            let confirmed: Vec<String> = results.iter().filter(|r| r.result == "confirmed").map(|r| r.message.clone()).collect();
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
            let mut msg = format!("sent {}", sent.join(", "));
            if !confirmed.is_empty() {
                msg = format!("{msg}; confirmed: {}", confirmed.join("; "));
            }
            Ok(ProcessorOutput::message(msg).with_context(SIGNAL_RECOVERY_RESULT, value))
        }
        .boxed()
    }
}

/// The attempt this run is when it is a retry of a recovery the agent stopped during (2 or 3),
/// None on a first attempt. The agent records its intent before calling a recoverer, and a retry's
/// Running record says `attempt N: …` (kdiag_pipeline's `mark_running_attempt`).
pub fn retry_attempt(abnormal: &Abnormal) -> Option<u32> {
    let last = abnormal.status.as_ref()?.processors.last()?;
    if last.result != kdiag_api::ProcessorResult::Running
        || last.stage != kdiag_api::Stage::Recovering
    {
        return None;
    }
    last.attempt().filter(|a| *a > 1)
}

/// On a retry: whether the effect of `r` is already there, given the start time of whatever
/// holds its pid now (None: no process). The target is gone, or its pid was reused by a process
/// that started at another time: the signal has nothing left to do, and sending it again could
/// only reach the wrong process. None when the diagnosed process still runs (or its start time
/// was not recorded, so nothing can be confirmed): then it is treated as on a first attempt.
pub fn confirm_one(r: &SignalRequest, now_started: Option<u64>) -> Option<SignalResult> {
    let expected = recorded_start(r)?;
    let signal = match &r.signal {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let signal = parse_signal(&signal).map_or(signal, |s| s.as_str().to_owned());
    let message = match now_started {
        None => format!("pid {} (started at tick {expected}) is gone", r.pid),
        Some(actual) if actual != expected => format!(
            "pid {} (started at tick {expected}) is gone; the pid now belongs to a process started at tick {actual}",
            r.pid
        ),
        Some(_) => return None,
    };
    Some(SignalResult {
        pid: r.pid,
        signal,
        result: "confirmed".into(),
        message,
    })
}

/// The start time a diagnoser recorded for the target (a number or a numeric string).
fn recorded_start(r: &SignalRequest) -> Option<u64> {
    r.start_time.as_ref().and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    })
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
    let Some(expected) = recorded_start(r) else {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(start_time: Value) -> SignalRequest {
        serde_json::from_value(json!({"pid": 4242, "signal": 9, "startTime": start_time})).unwrap()
    }

    /// An Abnormal whose last record is the agent's intent for a recovery, with `message`.
    fn running(message: &str, stage: &str) -> Abnormal {
        serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"nodeName": "n"},
            "status": {"processors": [
                {"stage": "InformationCollecting", "processor": "default/x", "kind": "Processor", "result": "Succeeded", "message": "attempt 7: not a recovery", "startTime": "2026-12-04T10:00:00Z"},
                {"stage": stage, "processor": "default/signal-recoverer", "kind": "Processor", "result": "Running", "message": message, "startTime": "2026-12-04T10:00:01Z"},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn a_target_that_is_gone_on_a_retry_is_confirmed_and_gets_nothing() {
        let r = confirm_one(&request(json!(1000)), None).unwrap();
        assert_eq!(r.result, "confirmed");
        assert_eq!(r.signal, "SIGKILL");
        assert_eq!(r.message, "pid 4242 (started at tick 1000) is gone");
    }

    #[test]
    fn a_pid_now_held_by_another_process_is_confirmed_as_gone_and_not_signalled() {
        let r = confirm_one(&request(json!("1000")), Some(2000)).unwrap();
        assert_eq!(r.result, "confirmed");
        assert!(
            r.message
                .contains("now belongs to a process started at tick 2000"),
            "{}",
            r.message
        );
    }

    #[test]
    fn the_diagnosed_process_still_running_is_not_confirmed() {
        assert_eq!(confirm_one(&request(json!(1000)), Some(1000)), None);
    }

    #[test]
    fn without_a_recorded_start_time_nothing_can_be_confirmed() {
        assert_eq!(confirm_one(&request(Value::Null), None), None);
    }

    #[test]
    fn only_a_running_recovery_record_of_attempt_two_or_more_is_a_retry() {
        let retry = "attempt 2: run again after the agent stopped during attempt 1 (the recoverer is idempotent)";
        assert_eq!(retry_attempt(&running(retry, "Recovering")), Some(2));
        assert_eq!(
            retry_attempt(&running("attempt 3: again", "Recovering")),
            Some(3)
        );
        assert_eq!(
            retry_attempt(&running("", "Recovering")),
            None,
            "a first attempt"
        );
        assert_eq!(retry_attempt(&running(retry, "Diagnosing")), None);
        let mut a = running(retry, "Recovering");
        a.status.as_mut().unwrap().processors[1].result = kdiag_api::ProcessorResult::Failed;
        assert_eq!(retry_attempt(&a), None, "not running: no attempt under way");
    }
}
