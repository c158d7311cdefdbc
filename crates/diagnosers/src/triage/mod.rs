//! The triage: `pod-triage-diagnoser` runs every pod rule on the facts the triage collectors
//! gathered (pod-detail-collector, container-collector, process-collector,
//! kernel-log-collector), ranks the causes it finds and names the first as the root cause,
//! the others below it; `node-triage-diagnoser` runs the node rules on a node.
//!
//! One module per failure class: [`oom`], [`crash`], [`start`] (could not start: command,
//! configuration, volumes, sandbox), [`image`], [`schedule`], [`probe`], [`terminating`],
//! [`evicted`], [`node`]. Each is a pure function of [`facts::Facts`] returning
//! [`finding::Finding`]s, so the rules are tested on real objects without a cluster.

pub mod crash;
pub mod drain;
pub mod evicted;
pub mod exit_codes;
pub mod facts;
pub mod finding;
pub mod image;
pub mod node;
pub mod oom;
pub mod probe;
pub mod processes;
pub mod runtime;
pub mod schedule;
pub mod start;
pub mod terminating;

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{NODE_INFORMATION, PROCESS_INFORMATION, SIGNAL_RECOVERY};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use kdiag_collectors::budget::{Deadline, blocking};
use kdiag_collectors::cri::probe as cri_probe;
use kdiag_collectors::listener::{self, Listen};
use serde_json::{Value, json};

pub use facts::Facts;
pub use finding::{Finding, Rank};

/// The context key pod-triage-diagnoser writes: every cause found, ranked.
pub const POD_TRIAGE_DIAGNOSIS: &str = "podTriageDiagnosis";
/// The context key node-triage-diagnoser writes.
pub const NODE_TRIAGE_DIAGNOSIS: &str = "nodeTriageDiagnosis";

/// The classes of failure the pod triage checks, in words, for "nothing found" messages.
const POD_RULES: &str = "OOM kills, crash loops, start and configuration errors (command, ConfigMap, Secret, volume, sandbox, CNI plugin), the runtime's answer for a pod waiting to be created on this node, image pulls, scheduling, probes, stuck termination, eviction and the node's conditions";

pub struct PodTriageDiagnoser;

impl Processor for PodTriageDiagnoser {
    fn name(&self) -> &'static str {
        "pod-triage-diagnoser"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let mut facts = Facts::load(ctx, abnormal).await?;
            terminating::gather(ctx, &mut facts).await;
            // A pod still waiting for its sandbox or containers on this node: ask the runtime,
            // which answers in milliseconds when it works.
            let on_this_node = facts
                .pod()
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                == Some(ctx.node_name.as_str());
            if on_this_node && runtime::waits_for_runtime(&facts) {
                facts.runtime = Some(
                    cri_probe::probe(
                        &ctx.node.cri_sockets,
                        &ctx.node.proc_root,
                        cri_probe::RUNTIME_PROBE_TIMEOUT,
                    )
                    .await,
                );
            }
            let mut findings = pod_findings(&facts);
            // Name the pods of the top consumers only when a node pressure finding lists them.
            if findings.iter().any(|f| f.reason.starts_with("Node"))
                && facts.processes.is_some()
                && let Ok(pods) = kdiag_collectors::pod::node_pods(ctx).await
            {
                facts.pod_names = names_by_uid(&pods);
                findings = pod_findings(&facts);
            }
            conclude_pod(&facts, findings)
        }
        .boxed()
    }
}

/// Every pod rule, ranked.
pub fn pod_findings(f: &Facts) -> Vec<Finding> {
    let mut all = Vec::new();
    all.extend(terminating::check(f));
    all.extend(start::check(f));
    all.extend(runtime::check(f));
    all.extend(image::check(f));
    all.extend(oom::check(f));
    all.extend(evicted::check(f));
    all.extend(schedule::check(f));
    all.extend(probe::check(f));
    all.extend(crash::check(f));
    all.extend(node::for_pod(f));
    finding::rank(&mut all);
    all
}

fn names_by_uid(pods: &[k8s_openapi::api::core::v1::Pod]) -> BTreeMap<String, String> {
    pods.iter()
        .filter_map(|p| {
            Some((
                p.metadata.uid.clone()?,
                format!(
                    "{}/{}",
                    p.metadata.namespace.as_deref().unwrap_or("default"),
                    p.metadata.name.as_deref()?
                ),
            ))
        })
        .collect()
}

fn cause_json(f: &Finding) -> Value {
    json!({
        "reason": f.reason,
        "summary": f.summary,
        "suggestion": f.suggestion,
        "since": f.since.map(|t| t.to_string()),
        "lastSeen": f.last_seen.map(|t| t.to_string()),
        "evidence": f.evidence.iter().take(10).collect::<Vec<_>>(),
    })
}

/// What the triage looked at, in one line.
fn checked(f: &Facts) -> String {
    let containers = f
        .containers()
        .iter()
        .map(|c| {
            let s = c.status;
            let state = s
                .and_then(|s| s.state.as_ref())
                .map(|st| {
                    if st.running.is_some() {
                        "running".to_owned()
                    } else if let Some(w) = &st.waiting {
                        format!("waiting ({})", w.reason.as_deref().unwrap_or("?"))
                    } else if let Some(t) = &st.terminated {
                        format!(
                            "terminated ({}, exit {})",
                            t.reason.as_deref().unwrap_or("?"),
                            t.exit_code
                        )
                    } else {
                        "unknown".to_owned()
                    }
                })
                .unwrap_or_else(|| "no status".into());
            format!(
                "{} {state}{}, {} restart(s)",
                c.name,
                if s.is_some_and(|s| s.ready) {
                    ", ready"
                } else {
                    ""
                },
                s.map_or(0, |s| s.restart_count)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let lines: usize = f
        .detail
        .logs
        .iter()
        .flat_map(|l| [&l.current, &l.previous])
        .flatten()
        .map(|t| t.lines.len())
        .sum();
    let kernel = match &f.oom_kills {
        Some(k) => format!("{} kernel OOM kill(s) of its cgroups", k.len()),
        None => "no kernel log (kernel-log-collector did not run)".into(),
    };
    let node = match &f.detail.node {
        Some(n) => format!(
            "node {} ({})",
            n.name,
            n.conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "no node".into(),
    };
    let termination = match &f.terminating {
        Some((_, v, notes)) => format!(
            "; termination: {}{notes}",
            if v.note.is_empty() { "judged" } else { &v.note }
        ),
        None => String::new(),
    };
    format!(
        "pod {} ({}; {containers}) from {}: {} event(s), {lines} log line(s), {node}, {kernel}{termination}",
        f.key(),
        f.phase(),
        f.detail_source,
        f.events().len(),
    )
}

fn conclude_pod(f: &Facts, findings: Vec<Finding>) -> Result<ProcessorOutput, ProcessorError> {
    let what = checked(f);
    let problems = if f.detail.problems.is_empty() {
        String::new()
    } else {
        format!("; could not read: {}", f.detail.problems.join("; "))
    };
    let Some(root) = finding::root_cause(&findings) else {
        return Err(ProcessorError::NotIdentified(format!(
            "checked {what}; rules: {POD_RULES}; none found a cause{problems}"
        )));
    };
    let mut out = ProcessorOutput::default().with_context(
        POD_TRIAGE_DIAGNOSIS,
        json!({
            "pod": f.key(),
            "checked": what,
            "causes": findings.iter().map(cause_json).collect::<Vec<_>>(),
            "problems": f.detail.problems,
        }),
    );
    // A stuck termination that ending a process fixes: propose the signal, as
    // terminating-pod-diagnoser does, for signal-recoverer when it is assigned.
    if let Some((_, verdict, _)) = &f.terminating
        && let Some(first) = findings.first()
        && first.rank == Rank::Terminating
    {
        let signals: Vec<_> = verdict
            .causes
            .iter()
            .filter(|c| c.reason == first.reason)
            .flat_map(|c| c.signals.iter())
            .collect();
        if !signals.is_empty() {
            out = out.with_context(
                SIGNAL_RECOVERY,
                serde_json::to_value(&signals).unwrap_or_default(),
            );
        }
    }
    out.message = format!(
        "{}: {}{}",
        root.reason,
        root.summary,
        if findings.len() > 1 {
            format!(
                " (and {} more: {})",
                findings.len() - 1,
                findings[1..]
                    .iter()
                    .map(|f| f.reason)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        }
    );
    Ok(out.with_root_cause(root))
}

/// `node-triage-diagnoser`: the node rules for the Abnormal's node (spec.nodeName, else the
/// agent's own): NotReady and its cause, memory/disk/PID pressure with the top consumers.
pub struct NodeTriageDiagnoser;

impl Processor for NodeTriageDiagnoser {
    fn name(&self) -> &'static str {
        "node-triage-diagnoser"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let deadline = Deadline::within(ctx.timeout);
            let name = if abnormal.spec.node_name.is_empty() {
                ctx.node_name.clone()
            } else {
                abnormal.spec.node_name.clone()
            };
            let node = kdiag_collectors::pod_detail::node(&ctx.client, &name).await;
            if !node.error.is_empty() && node.conditions.is_empty() {
                return Err(ProcessorError::Failed(node.error));
            }
            // The processes and filesystems: from the collectors when they ran, else read now
            // (only this agent's own node can be read). A process list the collector had to
            // cut to fit its output is read again here: zombies and a pod's processes may be
            // in the part that was cut.
            let truncated = abnormal
                .context_value(&kdiag_collectors::budget::truncated_key(PROCESS_INFORMATION))
                .is_some();
            let collected = abnormal
                .context_value(PROCESS_INFORMATION)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .filter(|_| !(truncated && name == ctx.node_name));
            let processes: Option<Vec<facts::Proc>> = match collected {
                Some(p) => Some(p),
                None if name == ctx.node_name => {
                    let proc_root = ctx.node.proc_root.clone();
                    blocking("the /proc scan", move || {
                        kdiag_collectors::process::scan::scan(
                            &proc_root,
                            deadline,
                            kdiag_collectors::process::scan::default_threads(),
                        )
                    })
                    .await?
                    .ok()
                    .and_then(|s| serde_json::to_value(&s.processes).ok())
                    .and_then(|v| serde_json::from_value(v).ok())
                }
                None => None,
            };
            let node_info = match abnormal.context_value(NODE_INFORMATION).cloned() {
                Some(v) => Some(v),
                None if name == ctx.node_name => {
                    let proc_root = ctx.node.proc_root.clone();
                    blocking("reading the node's state", move || {
                        kdiag_collectors::node::collect(&proc_root, deadline)
                    })
                    .await?
                    .ok()
                }
                None => None,
            };
            let node_pods = kdiag_collectors::pod::node_pods(&ProcessorContext {
                node_name: name.clone(),
                ..ctx.clone()
            })
            .await
            .unwrap_or_default();
            let pod_names = names_by_uid(&node_pods);
            // A cordoned node is being drained, or about to be: the budgets that would hold
            // its pods. Read only then (a list of every namespace's budgets).
            let (budgets, budgets_read) = if node.unschedulable {
                match disruption_budgets(&ctx.client).await {
                    Ok(b) => {
                        let n = b.len();
                        (b, format!("{n} PodDisruptionBudget(s) (it is cordoned)"))
                    }
                    Err(e) => (Vec::new(), format!("no PodDisruptionBudget: {e}")),
                }
            } else {
                (Vec::new(), "no PodDisruptionBudget (it is not cordoned)".to_owned())
            };
            let own = if name == ctx.node_name {
                OwnNode::read(ctx, &node, processes.as_deref(), deadline).await?
            } else {
                OwnNode::default()
            };
            let OwnNode {
                kubelet,
                runtime,
                pod_pids,
                pod_disk,
            } = own;
            let inputs = node::NodeInputs {
                processes: processes.as_deref(),
                node_info: node_info.as_ref(),
                pod_names: &pod_names,
                node_key: NODE_TRIAGE_DIAGNOSIS,
                kubelet: kubelet.as_ref(),
                runtime: runtime.as_ref(),
                pod_pids: &pod_pids,
                pod_disk: &pod_disk,
                now: jiff::Timestamp::now(),
            };
            let mut findings = node::check(&node, &inputs);
            findings.extend(drain::blocked_drain(
                &node,
                &node_pods,
                &budgets,
                NODE_TRIAGE_DIAGNOSIS,
            ));
            finding::rank(&mut findings);
            let conditions = node
                .conditions
                .iter()
                .map(|c| format!("{}={}", c.type_, c.status))
                .collect::<Vec<_>>()
                .join(", ");
            let Some(root) = finding::root_cause(&findings) else {
                return Err(ProcessorError::NotIdentified(format!(
                    "checked node {name}: conditions {conditions}; {} process(es), {}, {budgets_read}; rules: NotReady (kubelet, runtime, PLEG, network plugin), the kubelet's process, the runtime's answer to CRI Version ({}), memory, disk and PID pressure, zombies, pods at their pids limit, network unavailable, clock skew, certificates, a drain blocked by disruption budgets; none found a cause",
                    processes.as_ref().map_or(0, Vec::len),
                    if node_info.is_some() { "its filesystems" } else { "no filesystem data" },
                    runtime.as_ref().map_or("not asked: another node".to_owned(), |r| format!("{} answered in {} ms", r.runtime, r.took_millis))
                )));
            };
            let out = ProcessorOutput::message(format!("{}: {}", root.reason, root.summary))
                .with_context(
                    NODE_TRIAGE_DIAGNOSIS,
                    json!({
                        "node": name,
                        "conditions": node.conditions,
                        "events": node.events,
                        "kubelet": kubelet.as_ref().map(|k| json!({"port": k.port, "process": k.process})),
                        "runtime": runtime,
                        "podPids": pod_pids,
                        "podDisk": pod_disk,
                        "causes": findings.iter().map(cause_json).collect::<Vec<_>>(),
                    }),
                );
            Ok(out.with_root_cause(root))
        }
        .boxed()
    }
}

/// Every namespace's PodDisruptionBudgets: `policy/v1`, else `policy/v1beta1` on clusters
/// before 1.21 (the same fields), read as `policy/v1`.
async fn disruption_budgets(
    client: &kube::Client,
) -> Result<Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget>, String> {
    use kube::api::{ApiResource, DynamicObject, ListParams};
    let list = |version: &str| {
        let resource = ApiResource {
            group: "policy".into(),
            version: version.into(),
            api_version: format!("policy/{version}"),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        };
        kube::Api::<DynamicObject>::all_with(client.clone(), &resource)
    };
    let params = ListParams::default();
    let items =
        match list("v1").list(&params).await {
            Ok(l) => l.items,
            Err(kube::Error::Api(s)) if s.code == 404 => list("v1beta1")
                .list(&params)
                .await
                .map_err(|e| {
                    format!(
                        "listing them: {e} (the agent needs list on poddisruptionbudgets.policy)"
                    )
                })?
                .items,
            Err(e) => {
                return Err(format!(
                    "listing them: {e} (the agent needs list on poddisruptionbudgets.policy)"
                ));
            }
        };
    Ok(items
        .into_iter()
        .filter_map(|o| {
            let mut v = serde_json::to_value(&o).ok()?;
            v["apiVersion"] = json!("policy/v1");
            v["kind"] = json!("PodDisruptionBudget");
            serde_json::from_value(v).ok()
        })
        .collect())
}

/// What only the node's own agent can read: its kubelet's process, its runtime's answer, its
/// pods' pids cgroups and, under disk pressure, its pods' directories.
#[derive(Default)]
struct OwnNode {
    kubelet: Option<node::KubeletSearch>,
    runtime: Option<cri_probe::RuntimeProbe>,
    pod_pids: Vec<kdiag_collectors::pids::PodPids>,
    pod_disk: Vec<node::PodDisk>,
}

impl OwnNode {
    async fn read(
        ctx: &ProcessorContext,
        node: &kdiag_collectors::pod_detail::NodeDetail,
        processes: Option<&[facts::Proc]>,
        deadline: Deadline,
    ) -> Result<Self, ProcessorError> {
        let kubelet = match node.kubelet_port.and_then(|p| u16::try_from(p).ok()) {
            Some(port) => {
                let proc_root = ctx.node.proc_root.clone();
                let process = blocking("looking for the kubelet's process", move || {
                    listener::find(&proc_root, &["kubelet"], &Listen::Tcp(port))
                })
                .await?;
                Some(node::KubeletSearch {
                    port: port.into(),
                    process,
                })
            }
            None => None,
        };
        let runtime = cri_probe::probe(
            &ctx.node.cri_sockets,
            &ctx.node.proc_root,
            cri_probe::RUNTIME_PROBE_TIMEOUT,
        )
        .await;
        // The pids cgroups of the 20 pods with the most processes: two small files each.
        let busiest = processes
            .map(|p| processes::busiest_pods(p, 20))
            .unwrap_or_default();
        let (proc_root, sys_root) = (ctx.node.proc_root.clone(), ctx.node.sys_root.clone());
        let pod_pids = blocking("reading the pods' pids cgroups", move || {
            busiest
                .iter()
                .filter_map(|(_, pid)| {
                    kdiag_collectors::pids::of_process(&proc_root, &sys_root, *pid)
                })
                .collect::<Vec<_>>()
        })
        .await?;
        let pod_disk = if node_condition_true(node, "DiskPressure") {
            let pods_dir = ctx.node.kubelet_root.join("pods");
            blocking("measuring the pods' directories", move || {
                pod_disk_usage(&pods_dir, deadline)
            })
            .await?
        } else {
            Vec::new()
        };
        Ok(Self {
            kubelet,
            runtime: Some(runtime),
            pod_pids,
            pod_disk,
        })
    }
}

fn node_condition_true(node: &kdiag_collectors::pod_detail::NodeDetail, type_: &str) -> bool {
    node.conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// What each pod directory under the kubelet's `pods` holds (on the same filesystem: the
/// kubelet's, which its disk pressure is about).
fn pod_disk_usage(pods_dir: &std::path::Path, deadline: Deadline) -> Vec<node::PodDisk> {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return Vec::new();
    };
    let dirs: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    let roots: Vec<_> = dirs
        .iter()
        .map(|d| kdiag_collectors::du::WalkRoot::new(d.clone()))
        .collect();
    let usage =
        kdiag_collectors::du::walk(&roots, kdiag_collectors::du::default_threads(), deadline);
    dirs.iter()
        .zip(usage)
        .map(|(d, u)| node::PodDisk {
            pod_uid: d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: d.display().to_string(),
            bytes: u.allocated_bytes,
            files: u.files,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_collectors::pod_detail::PodDetail;

    /// Facts from a pod and its events as the apiserver returns them.
    fn facts(pod: Value, events: Value) -> Facts {
        Facts {
            detail: PodDetail {
                pod: serde_json::from_value(pod).unwrap(),
                events: serde_json::from_value(events).unwrap(),
                ..Default::default()
            },
            detail_source: "test",
            oom_kills: Some(Vec::new()),
            processes: None,
            node_info: None,
            terminating: None,
            pod_names: BTreeMap::new(),
            runtime: None,
            now: "2026-11-22T10:10:00Z".parse().unwrap(),
        }
    }

    fn pod(status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "web:1",
                "resources": {"limits": {"memory": "64Mi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}]},
            "status": status,
        })
    }

    fn reasons(f: &Facts) -> Vec<&'static str> {
        pod_findings(f).iter().map(|f| f.reason).collect()
    }

    #[test]
    fn an_oom_killed_container_in_back_off_is_an_oom_kill_not_a_crash_loop() {
        let f = facts(
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "web:1",
                "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                    "finishedAt": "2026-11-22T10:09:00Z"}}}]}),
            ),
            json!([]),
        );
        assert_eq!(reasons(&f), ["OOMKilled"]);
        let rc = finding::root_cause(&pod_findings(&f)).unwrap();
        assert!(rc.summary.contains("64Mi"), "{}", rc.summary);
        assert!(rc.summary.contains("restarted 4 time(s)"), "{}", rc.summary);
    }

    #[test]
    fn the_oom_summary_names_the_process_that_held_the_memory_not_the_last_one_killed() {
        let mut f = facts(
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "web:1",
                "imageID": "", "ready": true, "restartCount": 1, "containerID": "containerd://c2",
                "state": {"running": {"startedAt": "2026-11-22T10:09:01Z"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled",
                    "containerID": "containerd://c1", "finishedAt": "2026-11-22T10:09:00Z"}}}]}),
            ),
            json!([]),
        );
        let kill = |task: &str, anon: u64| facts::OomKill {
            timestamp: "2026-11-22T10:09:00Z".into(),
            task: task.into(),
            kind: "memcg".into(),
            pod_uid: Some("u1".into()),
            container_id: Some("c1".into()),
            anon_rss_bytes: Some(anon),
            file_rss_bytes: Some(1 << 20),
            ..Default::default()
        };
        f.oom_kills = Some(vec![kill("tail", 31 << 20), kill("sh", 0)]);
        let rc = finding::root_cause(&pod_findings(&f)).unwrap();
        assert_eq!(rc.reason, "OOMKilled");
        assert!(
            rc.summary
                .contains("the killed process `tail` held 32.0 MiB"),
            "{}",
            rc.summary
        );
    }

    #[test]
    fn a_container_killed_for_its_liveness_probe_is_a_probe_failure_not_a_crash_loop() {
        let event = |reason: &str, message: &str, t: &str| {
            json!({"metadata": {"name": format!("e-{reason}")}, "type": "Warning", "reason": reason,
                "message": message, "count": 3, "firstTimestamp": "2026-11-22T10:00:00Z", "lastTimestamp": t,
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u1",
                    "fieldPath": "spec.containers{app}"}})
        };
        let f = facts(
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "web:1",
                "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
                    "finishedAt": "2026-11-22T10:09:00Z"}}}]}),
            ),
            json!([
                event(
                    "Unhealthy",
                    "Liveness probe failed: HTTP probe failed with statuscode: 500",
                    "2026-11-22T10:09:00Z"
                ),
                event(
                    "Killing",
                    "Container app failed liveness probe, will be restarted",
                    "2026-11-22T10:09:00Z"
                ),
            ]),
        );
        assert_eq!(reasons(&f), ["LivenessProbeFailed"]);
        let rc = finding::root_cause(&pod_findings(&f)).unwrap();
        assert!(rc.summary.contains("statuscode: 500"), "{}", rc.summary);
        assert_eq!(rc.since.unwrap().0.to_string(), "2026-11-22T10:00:00Z");
    }

    #[test]
    fn a_sandbox_whose_network_setup_fails_names_the_cni_plugin_and_its_error() {
        let f = facts(
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "app", "image": "web:1",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
            ),
            json!([{"metadata": {"name": "e1"}, "type": "Warning", "reason": "FailedCreatePodSandBox",
                "message": "Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox \"ab12\": failed to find plugin \"kdiag-missing\" in path [/usr/lib/cni]",
                "count": 2, "firstTimestamp": "2026-11-22T10:09:00Z", "lastTimestamp": "2026-11-22T10:09:30Z",
                "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u1"}}]),
        );
        assert_eq!(reasons(&f), ["CNISetupFailed"]);
        let rc = finding::root_cause(&pod_findings(&f)).unwrap();
        assert!(
            rc.summary.contains("the CNI plugin kdiag-missing on node n1 fails to set up its sandbox's network: failed to find plugin \"kdiag-missing\" in path [/usr/lib/cni]"),
            "{}",
            rc.summary
        );
    }

    #[test]
    fn every_pod_waiting_on_a_hung_runtime_points_at_the_runtime_of_its_node() {
        let mut f = facts(pod(json!({"phase": "Pending"})), json!([]));
        f.detail.node = Some(kdiag_collectors::pod_detail::NodeDetail {
            name: "n1".into(),
            ..Default::default()
        });
        f.runtime = Some(kdiag_collectors::cri::probe::RuntimeProbe {
            socket: "/run/k/containerd.sock".into(),
            state: kdiag_collectors::cri::probe::RuntimeState::TimedOut,
            timeout_millis: 2000,
            ..Default::default()
        });
        assert_eq!(reasons(&f), ["ContainerRuntimeHung"]);
        let rc = finding::root_cause(&pod_findings(&f)).unwrap();
        assert!(
            rc.summary.starts_with("pod shop/web cannot start: the container runtime on node n1 is hung: its socket /run/k/containerd.sock accepts connections"),
            "{}",
            rc.summary
        );
        f.runtime.as_mut().unwrap().state = kdiag_collectors::cri::probe::RuntimeState::Answering;
        assert!(reasons(&f).is_empty());
    }

    #[test]
    fn a_crash_long_over_on_a_container_that_runs_again_is_history() {
        let f = facts(
            pod(
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "image": "web:1",
                "imageID": "", "ready": true, "restartCount": 1,
                "state": {"running": {"startedAt": "2026-11-22T08:00:01Z"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                    "finishedAt": "2026-11-22T08:00:00Z"}}}]}),
            ),
            json!([]),
        );
        assert!(reasons(&f).is_empty());
        let err = conclude_pod(&f, pod_findings(&f)).unwrap_err();
        let ProcessorError::NotIdentified(m) = err else {
            panic!("{err}")
        };
        assert!(m.contains("app running, ready, 1 restart(s)"), "{m}");
    }
}
