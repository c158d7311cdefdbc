//! A cause one rule found, how causes are ranked against each other, and the evidence helpers
//! every rule shares.

use std::cmp::Reverse;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::{CauseCandidate, Evidence, RootCause};
use kdiag_collectors::pod_detail::{LogLine, POD_DETAIL_INFORMATION, event_first_time, event_time};

/// How directly a class of cause explains a failing pod. Lower ranks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rank {
    /// A pod that was deleted and is still there: the question is why it stays.
    Terminating = 0,
    /// The failure is named by the status or an event (a missing ConfigMap, an OOM kill, an
    /// image that cannot be pulled, an eviction, no node that fits).
    Definite = 10,
    /// The kubelet restarts or withholds the container because a probe fails.
    Probe = 20,
    /// The container exits on its own; the log says why at best.
    Crash = 30,
    /// Readiness only: the pod runs but gets no traffic.
    NotReady = 40,
    /// Trouble of the node the pod is on: context for whatever else shows.
    Node = 50,
}

/// One cause found by one rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// CamelCase reason code, such as OOMKilled.
    pub reason: &'static str,
    /// One line naming the object and the cause.
    pub summary: String,
    /// What to do next.
    pub suggestion: String,
    pub evidence: Vec<Evidence>,
    pub rank: Rank,
    /// Orders findings of the same rank: more first (nodes affected, failures seen).
    pub weight: i64,
    /// When it first showed.
    pub since: Option<jiff::Timestamp>,
    /// When it last showed.
    pub last_seen: Option<jiff::Timestamp>,
}

impl Finding {
    pub fn new(reason: &'static str, rank: Rank, summary: String, suggestion: String) -> Self {
        Self {
            reason,
            summary,
            suggestion,
            evidence: Vec::new(),
            rank,
            weight: 0,
            since: None,
            last_seen: None,
        }
    }

    /// Adds evidence, widening since/last_seen to its timestamp.
    pub fn with(mut self, e: Evidence) -> Self {
        if let Some(t) = e.timestamp.as_ref().map(|t| t.0) {
            self.seen(Some(t), Some(t));
        }
        // The same fact twice (the scheduler records a new Event object at each retry) is one
        // entry, stamped with its latest time.
        if let Some(same) = self
            .evidence
            .iter_mut()
            .find(|x| x.kind == e.kind && x.object == e.object && x.message == e.message)
        {
            if e.timestamp.as_ref().map(|t| t.0) > same.timestamp.as_ref().map(|t| t.0) {
                same.timestamp = e.timestamp;
            }
            return self;
        }
        self.evidence.push(e);
        self
    }

    pub fn with_all(mut self, es: impl IntoIterator<Item = Evidence>) -> Self {
        for e in es {
            self = self.with(e);
        }
        self
    }

    /// Widens the time span the cause was seen in.
    pub fn seen(&mut self, first: Option<jiff::Timestamp>, last: Option<jiff::Timestamp>) {
        if let Some(f) = first {
            self.since = Some(self.since.map_or(f, |s| s.min(f)));
        }
        if let Some(l) = last.or(first) {
            self.last_seen = Some(self.last_seen.map_or(l, |s| s.max(l)));
        }
    }

    /// Adds an Event as evidence; the cause was seen from its first to its last occurrence.
    pub fn with_event(mut self, e: &Event, object: &str) -> Self {
        self.seen(event_first_time(e), event_time(e));
        self.evidence.push(event(e, object));
        self
    }

    pub fn weighted(mut self, weight: i64) -> Self {
        self.weight = weight;
        self
    }
}

/// A cause last seen this long before the most recent one is history, not the current failure.
const STALE: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);

/// Orders findings: current before stale, then by rank, weight and recency.
pub fn rank(findings: &mut [Finding]) {
    let newest = findings.iter().filter_map(|f| f.last_seen).max();
    findings.sort_by_key(|f| {
        let stale = match (newest, f.last_seen) {
            (Some(n), Some(l)) => n.duration_since(l) > STALE,
            _ => false,
        };
        (
            stale,
            f.rank,
            Reverse(f.weight),
            Reverse(f.last_seen.map(|t| t.as_millisecond())),
        )
    });
}

/// The root cause: the first finding, with the others ranked below it.
pub fn root_cause(findings: &[Finding]) -> Option<RootCause> {
    let (first, rest) = findings.split_first()?;
    let mut summary = first.summary.clone();
    // Say which came first when it is not the one ranked first.
    let earliest = findings
        .iter()
        .filter(|f| f.since.is_some())
        .min_by_key(|f| f.since);
    if let Some(e) = earliest
        && !std::ptr::eq(e, first)
        && e.since < first.since
        && let Some(since) = e.since
    {
        summary.push_str(&format!(
            " (first came {} at {})",
            e.reason,
            since.round(jiff::Unit::Second).unwrap_or(since)
        ));
    }
    Some(RootCause {
        summary,
        reason: first.reason.to_owned(),
        processor: String::new(),
        suggestion: first.suggestion.clone(),
        evidence: first.evidence.iter().take(30).cloned().collect(),
        since: first.since.map(Time),
        others: rest
            .iter()
            .map(|f| CauseCandidate {
                reason: f.reason.to_owned(),
                summary: f.summary.clone(),
                since: f.since.map(Time),
            })
            .collect(),
    })
}

pub fn time(t: Option<jiff::Timestamp>) -> Option<Time> {
    t.map(Time)
}

/// An Event as evidence: `Warning Failed ×4 (kubelet): Error: configmap "x" not found`.
pub fn event(e: &Event, object: &str) -> Evidence {
    let count = e
        .count
        .or_else(|| e.series.as_ref().and_then(|s| s.count))
        .unwrap_or(1);
    let from = e
        .source
        .as_ref()
        .and_then(|s| s.component.clone())
        .or_else(|| e.reporting_component.clone())
        .unwrap_or_default();
    let first = event_first_time(e);
    let last = event_time(e);
    let span = match (first, last) {
        (Some(f), Some(l)) if count > 1 && f != l => format!(", first at {f}"),
        _ => String::new(),
    };
    let times = if count > 1 {
        format!(" ×{count}")
    } else {
        String::new()
    };
    let from = if from.is_empty() {
        String::new()
    } else {
        format!(" ({from})")
    };
    Evidence {
        kind: "Event".into(),
        message: format!(
            "{} {}{times}{from}{span}: {}",
            e.type_.as_deref().unwrap_or("Normal"),
            e.reason.as_deref().unwrap_or(""),
            e.message.as_deref().unwrap_or("").trim()
        ),
        object: object.to_owned(),
        context_key: POD_DETAIL_INFORMATION.into(),
        timestamp: time(last),
    }
}

/// A log line as evidence.
pub fn log_line(object: &str, container: &str, previous: bool, line: &LogLine) -> Evidence {
    Evidence {
        kind: "Log".into(),
        message: format!(
            "container {container} ({} instance): {}",
            if previous { "previous" } else { "current" },
            line.text.trim_end()
        ),
        object: object.to_owned(),
        context_key: POD_DETAIL_INFORMATION.into(),
        timestamp: time(line.time.parse().ok()),
    }
}

/// A status field as evidence.
pub fn status(object: &str, message: String, at: Option<jiff::Timestamp>) -> Evidence {
    Evidence {
        kind: "PodStatus".into(),
        message,
        object: object.to_owned(),
        context_key: POD_DETAIL_INFORMATION.into(),
        timestamp: time(at),
    }
}

/// A one-line quote of a message for a summary: trimmed, at most `max` characters.
pub fn quote(s: &str, max: usize) -> String {
    let s = s.trim().replace('\n', " ");
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// The end of a long error message, where the cause usually is: `…connect: connection refused`.
pub fn quote_tail(s: &str, max: usize) -> String {
    let s = s.trim().replace('\n', " ");
    let n = s.chars().count();
    if n <= max {
        s
    } else {
        let tail: String = s.chars().skip(n - max).collect();
        format!("…{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Option<jiff::Timestamp> {
        Some(jiff::Timestamp::from_second(1_800_000_000 + s).unwrap())
    }

    fn f(reason: &'static str, rank: Rank, since: i64, last: i64) -> Finding {
        let mut f = Finding::new(reason, rank, reason.into(), String::new());
        f.seen(at(since), at(last));
        f
    }

    #[test]
    fn a_definite_cause_ranks_above_a_crash_and_the_node_and_the_earliest_is_named() {
        let mut all = vec![
            f("NodeMemoryPressure", Rank::Node, 0, 100),
            f("CrashLoopBackOff", Rank::Crash, 10, 100),
            f("OOMKilled", Rank::Definite, 20, 90),
        ];
        rank(&mut all);
        let order: Vec<_> = all.iter().map(|f| f.reason).collect();
        assert_eq!(
            order,
            ["OOMKilled", "CrashLoopBackOff", "NodeMemoryPressure"]
        );
        let rc = root_cause(&all).unwrap();
        assert_eq!(rc.reason, "OOMKilled");
        assert_eq!(rc.others.len(), 2);
        assert!(
            rc.summary.contains("first came NodeMemoryPressure"),
            "{}",
            rc.summary
        );
        assert_eq!(rc.since.unwrap().0, at(20).unwrap());
    }

    #[test]
    fn a_cause_long_over_ranks_below_the_current_one() {
        let mut all = vec![
            f("OOMKilled", Rank::Definite, 0, 0),
            f("CrashLoopBackOff", Rank::Crash, 3000, 3600),
        ];
        rank(&mut all);
        assert_eq!(all[0].reason, "CrashLoopBackOff");
    }

    #[test]
    fn the_same_fact_twice_is_one_evidence_entry_with_its_latest_time() {
        let fact = |s: i64| {
            status(
                "pod/a/b",
                "0/1 nodes are available: 1 Insufficient cpu.".into(),
                at(s),
            )
        };
        let f = f("Unschedulable", Rank::Definite, 0, 0)
            .with(fact(10))
            .with(fact(20))
            .with(status("pod/a/b", "another".into(), at(15)));
        assert_eq!(f.evidence.len(), 2, "{:?}", f.evidence);
        assert_eq!(f.evidence[0].timestamp.as_ref().map(|t| t.0), at(20));
    }

    #[test]
    fn quotes_are_one_line_and_bounded() {
        assert_eq!(quote(" a\nb ", 10), "a b");
        assert_eq!(quote("abcdef", 3), "abc…");
    }
}
