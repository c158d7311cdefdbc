//! OOM kills: a container that ended `OOMKilled`, or a process of the pod the kernel's OOM
//! killer ended (a child process: the container survives, but its work is lost).

use kdiag_api::Evidence;
use kdiag_api::context_keys::KERNEL_LOG_INFORMATION;
use kdiag_collectors::pod_detail::resources::human_bytes;
use kdiag_collectors::quantity::Quantity;

use super::facts::{Facts, OomKill, bare_id};
use super::finding::{self, Finding, Rank, time};

pub fn check(f: &Facts) -> Vec<Finding> {
    let object = f.object();
    let kills = f.oom_kills.as_deref().unwrap_or(&[]);
    let mut out = Vec::new();
    let mut explained_kills = 0;
    for c in f.containers() {
        let Some(status) = c.status else { continue };
        // The current state when the container is down, and the last one before the restart.
        let terminations: Vec<_> = [
            status.state.as_ref().and_then(|s| s.terminated.as_ref()),
            status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref()),
        ]
        .into_iter()
        .flatten()
        .filter(|t| t.reason.as_deref() == Some("OOMKilled"))
        .collect();
        let ids: Vec<&str> = [
            status.container_id.as_deref(),
            status
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref()),
            status
                .state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.container_id.as_deref()),
        ]
        .into_iter()
        .flatten()
        .map(bare_id)
        .collect();
        let own_kills: Vec<&OomKill> = kills
            .iter()
            .filter(|k| {
                k.container_id
                    .as_deref()
                    .is_some_and(|id| ids.contains(&id))
            })
            .collect();
        if terminations.is_empty() && own_kills.is_empty() {
            continue;
        }
        explained_kills += own_kills.len();
        let limit = c
            .spec
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .map(|q| q.0.clone());
        let limit_text = match &limit {
            Some(l) => format!(
                "its memory limit {l}{}",
                Quantity::parse(l)
                    .map(|q| format!(" ({})", human_bytes(q.ceil_scaled(0))))
                    .unwrap_or_default()
            ),
            None => "no memory limit of its own (the pod's or the node's memory ran out)".into(),
        };
        // One OOM in a memory cgroup may kill several processes in turn (the hog, then the shell
        // that started it): of the latest instance's kills, the one holding the most memory is
        // what reached the limit.
        let latest = own_kills.last().and_then(|k| k.container_id.as_deref());
        let usage = own_kills
            .iter()
            .filter(|k| k.container_id.as_deref() == latest)
            .max_by_key(|k| (k.anon_rss_bytes.unwrap_or(0), k.file_rss_bytes.unwrap_or(0)))
            .and_then(|k| {
                let rss = k.anon_rss_bytes.unwrap_or(0) + k.file_rss_bytes.unwrap_or(0);
                (rss > 0).then(|| {
                    format!(
                        "; the killed process `{}` held {} (anon-rss {})",
                        k.task,
                        human_bytes(rss as i64),
                        human_bytes(k.anon_rss_bytes.unwrap_or(0) as i64)
                    )
                })
            })
            .unwrap_or_default();
        let global = own_kills.iter().any(|k| k.kind == "global");
        let kind = if c.init {
            "init container"
        } else {
            "container"
        };
        let restarts = status.restart_count;
        let (reason, summary, suggestion) = if global {
            (
                "NodeOutOfMemory",
                format!(
                    "{kind} {} of pod {} was killed by the kernel because node {} ran out of memory, not because of {limit_text}{usage}",
                    c.name,
                    f.key(),
                    f.pod().spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("?")
                ),
                "The whole node ran out of memory: pods use more than they request. Set memory requests close to real use (and limits) on the node's pods, find the largest consumers (kubectl top pods, the node's processInformation), or add memory.".to_owned(),
            )
        } else if terminations.is_empty() {
            (
                "OOMKilled",
                format!(
                    "a process of {kind} {} of pod {} was OOM-killed at {limit_text}{usage}; the container kept running without it",
                    c.name,
                    f.key()
                ),
                format!(
                    "A child process (not the container's main process) hit the memory limit and was killed, so the container looks healthy while its work is lost. Raise resources.limits.memory of {} above the peak use, or make the program use less (worker count, cache size, heap flags).",
                    c.name
                ),
            )
        } else {
            let last = terminations
                .iter()
                .filter_map(|t| t.finished_at.as_ref().map(|t| t.0))
                .max();
            (
                "OOMKilled",
                format!(
                    "{kind} {} of pod {} was OOM-killed{}: it reached {limit_text}{usage}{}",
                    c.name,
                    f.key(),
                    match last {
                        Some(t) if c.recovered_since(Some(t), f.now) => format!(
                            " (last at {}; it has run since)",
                            t.round(jiff::Unit::Second).unwrap_or(t)
                        ),
                        _ => String::new(),
                    },
                    if restarts > 0 {
                        format!("; restarted {restarts} time(s)")
                    } else {
                        String::new()
                    }
                ),
                format!(
                    "Raise resources.limits.memory of container {} above its peak use{}, or make it use less: heap or cache size (-Xmx, GOMEMLIMIT, worker counts) below the limit; an unbounded buffer or a leak shows as use growing until every kill.",
                    c.name,
                    limit
                        .as_deref()
                        .map(|l| format!(" (now {l})"))
                        .unwrap_or_default()
                ),
            )
        };
        let mut finding = Finding::new(reason, Rank::Definite, summary, suggestion)
            .weighted(restarts as i64 + own_kills.len() as i64);
        for t in &terminations {
            finding = finding.with(finding::status(
                &object,
                format!(
                    "container {}: terminated with reason OOMKilled, exit code {}, finished at {}",
                    c.name,
                    t.exit_code,
                    t.finished_at
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
                t.finished_at.as_ref().map(|t| t.0),
            ));
        }
        // The kernel's own lines, most recent last, a few at most.
        for k in own_kills.iter().rev().take(3).rev() {
            finding = finding.with(kernel(&object, k));
        }
        out.push(finding);
    }
    // Kills of the pod's cgroup that no container ID matched (a container since removed).
    if out.is_empty() && explained_kills == 0 && !kills.is_empty() {
        let last = kills.last().expect("not empty");
        let mut finding = Finding::new(
            "OOMKilled",
            Rank::Definite,
            format!(
                "the kernel OOM-killed {} process(es) of pod {} (last: `{}`, pid {})",
                kills.len(),
                f.key(),
                last.task,
                last.pid
            ),
            "A process of the pod reached its memory limit: raise the containers' resources.limits.memory above their peak use, or make them use less.".into(),
        );
        for k in kills.iter().rev().take(3).rev() {
            finding = finding.with(kernel(&object, k));
        }
        out.push(finding);
    }
    out
}

fn kernel(object: &str, k: &OomKill) -> Evidence {
    Evidence {
        kind: "KernelLog".into(),
        message: k.message.clone(),
        object: object.to_owned(),
        context_key: KERNEL_LOG_INFORMATION.into(),
        timestamp: time(k.timestamp.parse().ok()),
    }
}
