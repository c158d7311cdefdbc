//! Crash loops: a container that exits by itself and is restarted (or, with restartPolicy
//! Never/OnFailure, ends in failure). The exit code says how; the last log lines say why.

use super::exit_codes::{self, Hint};
use super::facts::Facts;
use super::finding::{self, Finding, Rank, quote};

/// Termination reasons other rules explain better.
const OTHER_RULES: &[&str] = &["OOMKilled", "StartError", "ContainerCannotRun"];

pub fn check(f: &Facts) -> Vec<Finding> {
    let object = f.object();
    let mut out = Vec::new();
    for c in f.containers() {
        let Some(status) = c.status else { continue };
        let state = status.state.as_ref();
        let waiting = state.and_then(|s| s.waiting.as_ref());
        let back_off = waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
        let current = state.and_then(|s| s.terminated.as_ref());
        let last = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref());
        // The termination that describes the crash: the current one while it is down.
        let Some(t) = current.or(last) else { continue };
        if OTHER_RULES.contains(&t.reason.as_deref().unwrap_or("")) {
            continue;
        }
        let failed = t.exit_code != 0;
        let restarting = back_off || status.restart_count > 0;
        // A container that exits 0 is a crash only when restartPolicy Always restarts it.
        if !(failed || (restarting && f.restart_policy() == "Always" && !c.init)) {
            continue;
        }
        if !restarting && current.is_none() {
            continue;
        }
        // A container the kubelet killed for a failing liveness or startup probe: the probe
        // rule explains it.
        let killed_by_probe = f.events_with("Killing").any(|e| {
            Facts::event_container(e) == Some(c.name)
                && e.message.as_deref().is_some_and(|m| {
                    m.contains("failed liveness probe") || m.contains("failed startup probe")
                })
        });
        if killed_by_probe {
            continue;
        }
        let code = t.exit_code;
        let finished = t.finished_at.as_ref().map(|t| t.0);
        if c.recovered_since(finished, f.now) {
            continue;
        }
        // The log of the instance that crashed: the current one while it is terminated, else
        // the previous one.
        let logs = f.logs_of(c.name);
        let (lines, previous) = match (current, logs) {
            (Some(_), Some(l)) if l.current.as_ref().is_some_and(|t| !t.lines.is_empty()) => {
                (l.current.as_ref().map(|t| t.lines.clone()), false)
            }
            (_, Some(l)) => (l.previous.as_ref().map(|t| t.lines.clone()), true),
            _ => (None, true),
        };
        let lines = lines.unwrap_or_default();
        let hint: Option<Hint> = exit_codes::explain(&lines);
        let kind = if c.init {
            "init container"
        } else {
            "container"
        };
        let how = if restarting {
            format!(
                "keeps crashing ({} restart(s){})",
                status.restart_count,
                if back_off {
                    ", now in CrashLoopBackOff"
                } else {
                    ""
                }
            )
        } else {
            "failed".to_owned()
        };
        let mut summary = format!(
            "{kind} {} of pod {} {how}: exit code {code}, {}",
            c.name,
            f.key(),
            exit_codes::meaning(code)
        );
        match (&hint, lines.last()) {
            (Some(h), _) => summary.push_str(&format!(
                "; its log shows {}: \"{}\"",
                h.problem,
                quote(&h.line.text, 160)
            )),
            (None, Some(l)) => {
                summary.push_str(&format!("; its last log line: \"{}\"", quote(&l.text, 160)))
            }
            (None, None) => summary.push_str("; it wrote no log"),
        }
        let suggestion = match (&hint, exit_codes::suggestion(code)) {
            // The exit code names the problem more surely than a log line for 126/127.
            (_, Some(s)) if code == 126 || code == 127 || code == 0 => s.to_owned(),
            (Some(h), _) => h.suggestion.to_owned(),
            (None, Some(s)) => s.to_owned(),
            (None, None) => format!(
                "Read the whole log of the crashed instance (kubectl logs -n {} {} -c {} --previous) and fix what it reports; the exit code is the program's own.",
                f.namespace(),
                f.name(),
                c.name
            ),
        };
        let reason = if restarting {
            "CrashLoopBackOff"
        } else {
            "ContainerFailed"
        };
        let mut finding = Finding::new(reason, Rank::Crash, summary, suggestion)
            .weighted(status.restart_count as i64)
            .with(finding::status(
                &object,
                format!(
                    "container {}: {} terminated with exit code {code}, reason {}, started {}, finished {}; restartCount {}",
                    c.name,
                    if current.is_some() { "state" } else { "lastState" },
                    t.reason.as_deref().unwrap_or("?"),
                    t.started_at.as_ref().map(|t| t.0.to_string()).unwrap_or_else(|| "?".into()),
                    finished.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                    status.restart_count
                ),
                finished,
            ));
        for e in f
            .events_with("BackOff")
            .filter(|e| Facts::event_container(e) == Some(c.name))
        {
            finding = finding.with_event(e, &object);
        }
        if let Some(h) = &hint {
            finding = finding.with(finding::log_line(&object, c.name, previous, &h.line));
        }
        if let Some(l) = lines.last()
            && hint.as_ref().is_none_or(|h| h.line != *l)
        {
            finding = finding.with(finding::log_line(&object, c.name, previous, l));
        }
        out.push(finding);
    }
    out
}
