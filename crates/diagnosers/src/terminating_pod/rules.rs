//! Why a terminating pod is not gone: pure rules over the facts gathered about it.

use kdiag_api::Evidence;
use kdiag_api::context_keys::TERMINATING_POD_FINDINGS;
use serde::Serialize;

pub const SIGKILL: i32 = 9;

/// What a process is to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// A process of one of the pod's containers.
    Container,
    /// The pod's sandbox (pause) container.
    Sandbox,
    /// The runtime's shim serving the pod (containerd-shim, conmon).
    Shim,
}

/// A process that belongs to the pod.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessFact {
    pub pid: i32,
    pub ppid: i32,
    pub command: String,
    /// The state letter (D: uninterruptible, waiting on I/O).
    pub state: String,
    #[serde(rename = "containerID", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub role: Role,
    /// Clock ticks after boot (/proc/<pid>/stat field 22).
    pub start_time: u64,
    #[serde(rename = "ignoresSIGTERM")]
    pub ignores_sigterm: bool,
}

/// Everything known about one terminating pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodFacts {
    /// `namespace/name`.
    pub key: String,
    pub uid: String,
    pub deletion_timestamp: jiff::Timestamp,
    pub grace_seconds: i64,
    pub finalizers: Vec<String>,
    pub processes: Vec<ProcessFact>,
    /// Volume mount points still mounted under the pod's directory.
    pub mounts: Vec<String>,
    /// Whether any container has a preStop hook (SIGTERM comes only after it).
    pub pre_stop: bool,
    /// The node, for messages.
    pub node: String,
}

impl PodFacts {
    /// deletionTimestamp + grace period, in seconds (Kube Diagnoser added nanoseconds). The
    /// apiserver already sets a pod's deletionTimestamp to the request time plus its grace
    /// period, so this gives the kubelet the grace period once more before calling the pod
    /// stuck.
    pub fn deadline(&self) -> jiff::Timestamp {
        self.deletion_timestamp
            .checked_add(jiff::SignedDuration::from_secs(self.grace_seconds.max(0)))
            .unwrap_or(self.deletion_timestamp)
    }

    /// When the deletion was asked for (deletionTimestamp − grace), so when SIGTERM went out.
    pub fn requested_at(&self) -> jiff::Timestamp {
        self.deletion_timestamp
            .checked_sub(jiff::SignedDuration::from_secs(self.grace_seconds.max(0)))
            .unwrap_or(self.deletion_timestamp)
    }
}

/// A signal to send, as `signalRecovery` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signal {
    pub pid: i32,
    pub signal: i32,
    /// The process's start time in clock ticks after boot (/proc/<pid>/stat field 22): the
    /// signal recoverer sends nothing if the pid now belongs to another process.
    pub start_time: u64,
    /// For people reading the context: the pod and the command.
    pub pod: String,
    pub command: String,
}

/// One reason the pod is still there.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cause {
    pub reason: &'static str,
    pub message: String,
    #[serde(skip)]
    pub suggestion: String,
    #[serde(skip)]
    pub evidence: Vec<Evidence>,
    #[serde(skip)]
    pub signals: Vec<Signal>,
}

/// The verdict on one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Seconds past the deadline; negative while the grace period runs.
    pub overdue_seconds: i64,
    pub causes: Vec<Cause>,
    /// What to say when there is no cause.
    pub note: String,
}

fn short(id: &Option<String>) -> String {
    id.as_deref()
        .map(|i| i[..i.len().min(12)].to_owned())
        .unwrap_or_else(|| "?".into())
}

fn process_evidence(pod: &PodFacts, p: &ProcessFact, what: &str) -> Evidence {
    Evidence {
        kind: "Process".into(),
        message: format!(
            "pid {} `{}` (state {}, container {}) {what}",
            p.pid,
            p.command,
            p.state,
            short(&p.container_id)
        ),
        object: format!("pod/{}", pod.key),
        context_key: TERMINATING_POD_FINDINGS.into(),
        timestamp: None,
    }
}

fn signal(pod: &PodFacts, p: &ProcessFact) -> Signal {
    Signal {
        pid: p.pid,
        signal: SIGKILL,
        start_time: p.start_time,
        pod: pod.key.clone(),
        command: p.command.clone(),
    }
}

/// The topmost of `procs` in each container: signalling a container's init ends the whole
/// container (its pid namespace), so its children need no signal of their own.
fn topmost<'a>(procs: &[&'a ProcessFact]) -> Vec<&'a ProcessFact> {
    procs
        .iter()
        .filter(|p| {
            !procs
                .iter()
                .any(|q| q.pid == p.ppid && q.container_id == p.container_id)
        })
        .copied()
        .collect()
}

/// Why `pod` is still there at `now`.
pub fn judge(pod: &PodFacts, now: jiff::Timestamp) -> Verdict {
    let deadline = pod.deadline();
    let overdue = now.duration_since(deadline).as_secs();
    let object = format!("pod/{}", pod.key);
    let mut causes = Vec::new();
    let containers: Vec<&ProcessFact> = pod
        .processes
        .iter()
        .filter(|p| p.role == Role::Container)
        .collect();

    if overdue >= 0 {
        if !containers.is_empty() {
            let tops = topmost(&containers);
            let stuck_io = containers.iter().filter(|p| p.state == "D").count();
            let list = tops
                .iter()
                .map(|p| format!("pid {} `{}` (state {})", p.pid, p.command, p.state))
                .collect::<Vec<_>>()
                .join(", ");
            causes.push(Cause {
                reason: "ContainerProcessesAlive",
                message: format!(
                    "{} container process(es) still run: {list}{}",
                    containers.len(),
                    if stuck_io > 0 {
                        format!("; {stuck_io} in state D (waiting on I/O: SIGKILL takes effect only when it returns)")
                    } else {
                        String::new()
                    }
                ),
                suggestion: "The kubelet's stop did not end these processes: send the proposed SIGKILL (signal-recoverer). A process in state D waits on I/O (often a hung NFS server or disk) and dies only once that returns; check the kubelet's and the runtime's logs for errors stopping the container.".into(),
                evidence: containers
                    .iter()
                    .map(|p| process_evidence(pod, p, "is alive past the pod's deadline"))
                    .collect(),
                signals: tops.iter().map(|p| signal(pod, p)).collect(),
            });
        }
        if !pod.finalizers.is_empty() {
            causes.push(Cause {
                reason: "FinalizersPresent",
                message: format!(
                    "finalizer(s) {} still present",
                    pod.finalizers.join(", ")
                ),
                suggestion: format!(
                    "The apiserver keeps the pod until every finalizer is removed. Find the controller that owns {} and why it has not removed it (its logs); remove it by hand only once what it guards is done: kubectl patch pod -n {} {} --type=json -p '[{{\"op\":\"remove\",\"path\":\"/metadata/finalizers\"}}]'. Killing processes would not help.",
                    pod.finalizers.join(", "),
                    pod.key.split('/').next().unwrap_or("default"),
                    pod.key.split('/').nth(1).unwrap_or("?"),
                ),
                evidence: vec![Evidence {
                    kind: "PodStatus".into(),
                    message: format!(
                        "metadata.finalizers = [{}]; deletionTimestamp {}, grace {} s, deadline {deadline}",
                        pod.finalizers.join(", "),
                        pod.deletion_timestamp,
                        pod.grace_seconds
                    ),
                    object: object.clone(),
                    context_key: TERMINATING_POD_FINDINGS.into(),
                    timestamp: None,
                }],
                signals: Vec::new(),
            });
        }
        if !pod.mounts.is_empty() {
            causes.push(Cause {
                reason: "VolumeStillMounted",
                message: format!(
                    "{} volume(s) still mounted: {}",
                    pod.mounts.len(),
                    pod.mounts.join(", ")
                ),
                suggestion: format!(
                    "The kubelet cannot finish while a volume is mounted: look for UnmountVolume or TearDown errors for pod UID {} in the kubelet's log, and for processes keeping the mount busy (fuser -vm <path>).",
                    pod.uid
                ),
                evidence: pod
                    .mounts
                    .iter()
                    .map(|m| Evidence {
                        kind: "Mount".into(),
                        message: format!("{m} is still mounted (host mountinfo)"),
                        object: object.clone(),
                        context_key: TERMINATING_POD_FINDINGS.into(),
                        timestamp: None,
                    })
                    .collect(),
                signals: Vec::new(),
            });
        }
        if causes.is_empty() {
            causes.push(Cause {
                reason: "PodDeletionNotConfirmed",
                message: format!(
                    "no finalizer, process or mount holds it on node {}: the kubelet has not confirmed the deletion",
                    pod.node
                ),
                suggestion: format!(
                    "Check that the kubelet of node {} runs and reaches the apiserver (systemctl status kubelet, its log for pod UID {}). If the node is gone, delete the pod with --grace-period=0 --force.",
                    pod.node, pod.uid
                ),
                evidence: vec![Evidence {
                    kind: "PodStatus".into(),
                    message: format!(
                        "deletionTimestamp {}, grace {} s: {overdue} s past the deadline {deadline}, no finalizers, no process in its cgroups or under its shim, no volume mounted",
                        pod.deletion_timestamp, pod.grace_seconds
                    ),
                    object,
                    context_key: TERMINATING_POD_FINDINGS.into(),
                    timestamp: None,
                }],
                signals: Vec::new(),
            });
        }
        return Verdict {
            overdue_seconds: overdue,
            causes,
            note: String::new(),
        };
    }

    // Within the grace period. Only one thing is certain already: a process that ignores
    // SIGTERM will not end before the kubelet's SIGKILL at the deadline.
    let ignoring: Vec<&ProcessFact> = containers
        .iter()
        .filter(|p| p.ignores_sigterm)
        .copied()
        .collect();
    // Whether SIGTERM went out yet does not matter: a process that ignores it will ignore it
    // when it comes, so this is known from the moment of the deletion.
    if !ignoring.is_empty() {
        let tops = topmost(&ignoring);
        // The kubelet's SIGKILL comes when the grace period ends: at deletionTimestamp.
        let kill_in = pod.deletion_timestamp.duration_since(now).as_secs().max(0);
        let list = tops
            .iter()
            .map(|p| format!("pid {} `{}`", p.pid, p.command))
            .collect::<Vec<_>>()
            .join(", ");
        causes.push(Cause {
            reason: "SigtermIgnored",
            message: format!(
                "{list} ignore{} SIGTERM{}, so only the kubelet's SIGKILL at the end of the {} s grace period, at {} ({kill_in} s from now), will end {}",
                if tops.len() == 1 { "s" } else { "" },
                if pod.pre_stop { " (after the preStop hook)" } else { "" },
                pod.grace_seconds,
                pod.deletion_timestamp,
                if tops.len() == 1 { "it" } else { "them" },
            ),
            suggestion: "Send the proposed SIGKILL (signal-recoverer) to end the pod now, or wait for the deadline. To fix the image: handle SIGTERM in the application, or run it under an init such as tini or dumb-init (a container's pid 1 gets no default SIGTERM action from the kernel).".into(),
            evidence: ignoring
                .iter()
                .map(|p| process_evidence(pod, p, "ignores SIGTERM (SigIgn, or pid 1 of its namespace without a handler)"))
                .collect(),
            signals: tops.iter().map(|p| signal(pod, p)).collect(),
        });
    }
    let note = if causes.is_empty() {
        format!(
            "within its grace period ({} s left); {} container process(es) alive, none known to ignore SIGTERM",
            -overdue,
            containers.len()
        )
    } else {
        String::new()
    };
    Verdict {
        overdue_seconds: overdue,
        causes,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn pod() -> PodFacts {
        PodFacts {
            key: "ns/p".into(),
            uid: "u".into(),
            deletion_timestamp: at(30),
            grace_seconds: 30,
            finalizers: Vec::new(),
            processes: Vec::new(),
            mounts: Vec::new(),
            pre_stop: false,
            node: "n".into(),
        }
    }

    fn proc(pid: i32, ppid: i32, ignores: bool) -> ProcessFact {
        ProcessFact {
            pid,
            ppid,
            command: format!("cmd{pid}"),
            state: "S".into(),
            container_id: Some("c".repeat(64)),
            role: Role::Container,
            start_time: 100 + pid as u64,
            ignores_sigterm: ignores,
        }
    }

    #[test]
    fn the_deadline_is_deletion_timestamp_plus_grace_in_seconds() {
        let p = pod();
        assert_eq!(p.deadline(), at(60));
        assert_eq!(p.requested_at(), at(0));
        let v = judge(&p, at(59));
        assert!(v.overdue_seconds < 0);
        assert!(v.causes.is_empty());
        let v = judge(&p, at(61));
        assert_eq!(v.overdue_seconds, 1);
    }

    #[test]
    fn a_finalizer_is_named_and_no_signal_is_proposed() {
        let mut p = pod();
        p.finalizers = vec!["example.com/guard".into()];
        let v = judge(&p, at(100));
        assert_eq!(v.causes.len(), 1);
        assert_eq!(v.causes[0].reason, "FinalizersPresent");
        assert!(v.causes[0].message.contains("example.com/guard"));
        assert!(v.causes[0].signals.is_empty());
    }

    #[test]
    fn live_processes_past_the_deadline_get_sigkill_for_each_containers_top_process() {
        let mut p = pod();
        p.processes = vec![proc(10, 5, false), proc(11, 10, false)];
        p.processes.push(ProcessFact {
            role: Role::Shim,
            ..proc(5, 1, false)
        });
        let v = judge(&p, at(100));
        assert_eq!(v.causes[0].reason, "ContainerProcessesAlive");
        let s = &v.causes[0].signals;
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].pid, s[0].signal, s[0].start_time), (10, 9, 110));
    }

    #[test]
    fn a_process_ignoring_sigterm_within_the_grace_period_is_found_with_a_proposed_sigkill() {
        let mut p = pod();
        p.processes = vec![proc(10, 5, true), proc(11, 10, true)];
        let v = judge(&p, at(5));
        assert_eq!(v.causes[0].reason, "SigtermIgnored");
        assert!(
            v.causes[0].message.contains("25 s from now"),
            "{}",
            v.causes[0].message
        );
        assert_eq!(v.causes[0].signals.len(), 1);
        assert_eq!(v.causes[0].signals[0].pid, 10);
        // Right after the request too: the process will ignore SIGTERM whenever it comes.
        assert_eq!(judge(&p, at(0)).causes[0].reason, "SigtermIgnored");
    }

    #[test]
    fn a_process_with_a_handler_within_the_grace_period_is_shutting_down_not_stuck() {
        let mut p = pod();
        p.processes = vec![proc(10, 5, false)];
        let v = judge(&p, at(10));
        assert!(v.causes.is_empty());
        assert!(v.note.contains("within its grace period"), "{}", v.note);
    }

    #[test]
    fn a_pod_with_nothing_holding_it_points_at_the_kubelet() {
        let v = judge(&pod(), at(100));
        assert_eq!(v.causes[0].reason, "PodDeletionNotConfirmed");
        let mut p = pod();
        p.mounts = vec!["/var/lib/kubelet/pods/u/volumes/x".into()];
        assert_eq!(judge(&p, at(100)).causes[0].reason, "VolumeStillMounted");
    }
}
