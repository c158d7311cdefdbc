//! `process-collector` → `processInformation`: every process of the node, with the pod and the
//! container it belongs to.

pub mod scan;

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::PROCESS_INFORMATION;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};

use crate::budget::{Deadline, blocking, cap_list, output_budget, truncated_key};
pub use scan::{MemoryInfo, ProcessInfo, SignalInfo, Snapshot};

/// Reads the host's /proc (the agent runs with hostPID; `ctx.node.proc_root`).
pub struct ProcessCollector;

impl Processor for ProcessCollector {
    fn name(&self) -> &'static str {
        "process-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        _abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let proc_root = ctx.node.proc_root.clone();
            let deadline = Deadline::within(ctx.timeout);
            let snap = blocking("the /proc scan", move || {
                scan::scan(&proc_root, deadline, scan::default_threads())
            })
            .await?
            .map_err(|e| {
                ProcessorError::Failed(format!(
                    "{e} (is the node's /proc at {}? set the agent's --proc-root)",
                    ctx.node.proc_root.display()
                ))
            })?;
            Ok(output(&snap, ctx.max_output_bytes))
        }
        .boxed()
    }
}

/// The step's output for a scan.
pub fn output(snap: &Snapshot, max_output_bytes: usize) -> ProcessorOutput {
    let (kept, truncation) = cap_list(&snap.processes, output_budget(max_output_bytes));
    let in_pods = snap
        .processes
        .iter()
        .filter(|p| p.pod_uid.is_some())
        .count();
    let mut message = format!(
        "collected {} processes, {in_pods} of them in pods",
        snap.processes.len()
    );
    if !snap.complete {
        message.push_str("; the time budget ran out before every process was read");
    }
    if let Some(t) = &truncation {
        message.push_str(&format!("; {}", t.reason));
    }
    if !snap.problems.is_empty() {
        message.push_str(&format!(
            "; {} /proc files unreadable, their processes listed with what could be read or skipped (first: {})",
            snap.problems.len(),
            snap.problems
                .items
                .first()
                .map(String::as_str)
                .unwrap_or("")
        ));
    }
    let mut out = ProcessorOutput::message(message)
        .with_context(PROCESS_INFORMATION, serde_json::Value::Array(kept));
    if let Some(t) = truncation {
        out = out.with_context(
            &truncated_key(PROCESS_INFORMATION),
            serde_json::to_value(t).unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kube Diagnoser's `types.Process`, with the Go field types as Rust ones: `createTime` a
    /// `time.Time`, which decodes only from an RFC 3339 string.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct UpstreamProcess {
        pid: i32,
        ppid: i32,
        tgid: i32,
        command: Vec<String>,
        status: String,
        create_time: jiff::Timestamp,
        cpu_percent: f64,
        nice: i32,
        memory_info: Option<serde_json::Value>,
    }

    #[test]
    fn process_information_decodes_with_kube_diagnosers_go_types() {
        let snap = Snapshot {
            processes: vec![ProcessInfo {
                pid: 42,
                command: vec!["sleep".into()],
                status: "S".into(),
                create_time: 1_764_000_000_123,
                create_time_milliseconds: 1_764_000_000_123,
                ..Default::default()
            }],
            complete: true,
            ..Default::default()
        };
        let out = output(&snap, 1 << 20);
        let entry = &out.context[PROCESS_INFORMATION][0];
        assert_eq!(entry["createTime"], "2025-11-24T16:00:00.123Z");
        assert_eq!(entry["createTimeMilliseconds"], 1_764_000_000_123_i64);
        let upstream: Vec<UpstreamProcess> =
            serde_json::from_value(out.context[PROCESS_INFORMATION].clone())
                .expect("decodes into Kube Diagnoser's types.Process");
        assert_eq!(upstream[0].create_time.as_millisecond(), 1_764_000_000_123);
    }

    #[test]
    fn a_scan_too_large_for_the_step_keeps_the_first_processes_and_says_how_many_were_cut() {
        let snap = Snapshot {
            processes: (1..=500)
                .map(|pid| ProcessInfo {
                    pid,
                    command: vec!["sleep".into(), "600".into()],
                    ..Default::default()
                })
                .collect(),
            complete: true,
            ..Default::default()
        };
        let out = output(&snap, 16 * 1024);
        let kept = out.context[PROCESS_INFORMATION].as_array().unwrap();
        assert!(kept.len() < 500 && !kept.is_empty());
        assert_eq!(kept[0]["pid"], 1);
        let cut = &out.context[&truncated_key(PROCESS_INFORMATION)];
        assert_eq!(cut["total"], 500);
        assert_eq!(cut["kept"], kept.len());
        assert!(serde_json::to_vec(&out.context).unwrap().len() < 16 * 1024);
        assert!(out.message.contains("capped"), "{}", out.message);
    }
}
