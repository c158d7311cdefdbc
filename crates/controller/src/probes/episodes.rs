//! Failure episodes of ProbeStatus checkers, pure: when a checker starts failing, one episode
//! opens and one Abnormal per node is created; while it keeps failing, nothing more; a pass
//! closes it. Episodes are kept on the ProbeStatus (annotation `kdiag.io/episodes`), so a
//! controller restart neither forgets nor repeats them.

use std::collections::BTreeMap;

use kdiag_api::{
    AbnormalSourceType, CheckerStatus, ProbeCheckerStatus, ProbeStatus, ProbeStatusStates,
};
use kdiag_pipeline::hash::fnv1a;
use kdiag_pipeline::templates::{CompiledSource, Facts, select, slug};
use serde::{Deserialize, Serialize};

/// Annotation holding the open episodes, by checker name.
pub const EPISODES_ANNOTATION: &str = "kdiag.io/episodes";
/// Annotation counting triggers of this probe that storm control suppressed.
pub const SUPPRESSED_ANNOTATION: &str = "kdiag.io/suppressed";

/// One open failure episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Episode {
    /// When it started: the failing result's lastRun (or the time it was seen).
    pub since: String,
    /// The status that started it.
    pub status: String,
    /// The source whose template matched, as namespace/name.
    pub source: String,
    /// Abnormals created for it, one per node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abnormals: Vec<String>,
    /// The node of each Abnormal, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Why no Abnormal was created, if none was.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub suppressed: String,
    /// What the controller found about the cluster when the episode opened (the probe failure
    /// classified to a component and checked: `probes::cluster`), ahead of any node's cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<kdiag_api::RootCause>,
}

pub type Episodes = BTreeMap<String, Episode>;

/// What to do for one checker.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start an episode: create an Abnormal per node (after storm control).
    Open {
        checker: Box<ProbeCheckerStatus>,
        source: Box<CompiledSource>,
        since: String,
    },
    /// The checker passes again (or no source matches it any more): the episode is over.
    Close { checker: String },
}

/// The facts a ProbeStatus template matches against.
pub fn facts(ps: &ProbeStatus, checker: &ProbeCheckerStatus) -> Facts {
    [
        (
            "probeNamespace",
            ps.metadata.namespace.clone().unwrap_or_default(),
        ),
        ("probeName", ps.metadata.name.clone().unwrap_or_default()),
        (
            kdiag_pipeline::templates::SCOPE_FACT,
            ps.metadata.namespace.clone().unwrap_or_default(),
        ),
        ("checker", checker.name.clone()),
        ("status", checker.status.as_str().to_owned()),
        ("message", checker.message.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Decides, per checker, whether an episode opens or closes. `now` is used as the start of an
/// episode whose result has no lastRun.
pub fn decide(
    ps: &ProbeStatus,
    open: &Episodes,
    sources: &[CompiledSource],
    now: &str,
) -> Vec<Decision> {
    let mut out = Vec::new();
    for checker in &ps.spec.checkers {
        let matched = select(
            sources,
            AbnormalSourceType::ProbeStatus,
            &facts(ps, checker),
        );
        match (matched, open.contains_key(&checker.name)) {
            (Some(source), false) => {
                let since = checker
                    .last_run
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| now.to_owned());
                out.push(Decision::Open {
                    checker: Box::new(checker.clone()),
                    source: Box::new(source.clone()),
                    since,
                });
            }
            // Still failing: the episode goes on, however often the prober reports.
            (Some(_), true) => {}
            (None, true) if !is_failing(checker.status) => out.push(Decision::Close {
                checker: checker.name.clone(),
            }),
            // Failing in a way no source handles (a WARN when sources want ERROR): keep it open
            // until it passes, so a flapping status does not start new episodes.
            (None, true) => {}
            (None, false) => {}
        }
    }
    // Checkers that disappeared from the ProbeStatus end their episodes too.
    for name in open.keys() {
        if ps.spec.checkers.iter().all(|c| &c.name != name) {
            out.push(Decision::Close {
                checker: name.clone(),
            });
        }
    }
    out
}

fn is_failing(s: CheckerStatus) -> bool {
    matches!(
        s,
        CheckerStatus::Error | CheckerStatus::Warn | CheckerStatus::Unknown
    )
}

/// Node names a KubeProber node check lists in its message: `… error node: [ a b ]`.
pub fn nodes_in_message(message: &str) -> Vec<String> {
    let mut nodes = Vec::new();
    let mut rest = message;
    while let Some(i) = rest.find("node:") {
        rest = &rest[i + "node:".len()..];
        let trimmed = rest.trim_start();
        if let Some(inner) = trimmed.strip_prefix('[')
            && let Some(end) = inner.find(']')
        {
            for n in inner[..end].split(|c: char| c.is_whitespace() || c == ',') {
                if !n.is_empty() && !nodes.iter().any(|x| x == n) {
                    nodes.push(n.to_owned());
                }
            }
            rest = &inner[end..];
        }
    }
    nodes
}

/// The Abnormal's name for one node of one episode: readable, deterministic, a valid name.
pub fn abnormal_name(
    namespace: &str,
    probe: &str,
    checker: &str,
    since: &str,
    node: &str,
) -> String {
    let hash = fnv1a([namespace, probe, checker, since, node].join("\u{0}"));
    format!(
        "probe-{}-{}-{:010x}",
        slug(probe, 40),
        slug(checker, 60),
        hash & 0xff_ffff_ffff
    )
}

/// The per-probe summary KubeProber stopped writing: the worst checker, its message, and the
/// latest lastRun.
pub fn summary(checkers: &[ProbeCheckerStatus]) -> ProbeStatusStates {
    let worst = checkers
        .iter()
        .max_by_key(|c| (c.status.severity(), std::cmp::Reverse(c.name.clone())));
    ProbeStatusStates {
        status: worst.map(|c| c.status),
        message: worst
            .filter(|c| c.status.severity() > CheckerStatus::Info.severity())
            .map(|c| c.message.clone())
            .unwrap_or_default(),
        last_run: checkers.iter().filter_map(|c| c.last_run.clone()).max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kdiag_pipeline::templates::compile;
    use serde_json::json;

    fn ps(checkers: serde_json::Value) -> ProbeStatus {
        serde_json::from_value(json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "k8s", "namespace": "kubeprober"}, "spec": {"checkers": checkers}}))
        .unwrap()
    }

    fn sources() -> Vec<CompiledSource> {
        let s: kdiag_api::AbnormalSource = serde_json::from_value(json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
            "metadata": {"name": "default", "namespace": "kube-diagnoser"},
            "spec": {"sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {}}}}}))
        .unwrap();
        vec![compile(&s).unwrap()]
    }

    fn episode() -> Episode {
        Episode {
            since: "t".into(),
            status: "ERROR".into(),
            source: "s".into(),
            abnormals: vec!["a".into()],
            nodes: vec!["n".into()],
            suppressed: String::new(),
            cluster: None,
        }
    }

    #[test]
    fn a_checker_turning_error_opens_an_episode() {
        let p = ps(
            json!([{"name": "dns", "status": "ERROR", "message": "lookup failed", "lastRun": "2026-11-22T10:00:00Z"}, {"name": "ok", "status": "PASS"}]),
        );
        let d = decide(&p, &Episodes::new(), &sources(), "now");
        assert_eq!(d.len(), 1);
        let Decision::Open { checker, since, .. } = &d[0] else {
            panic!()
        };
        assert_eq!(checker.name, "dns");
        assert_eq!(since, "2026-11-22T10:00:00Z");
    }

    #[test]
    fn a_checker_that_keeps_failing_opens_nothing_more() {
        let p = ps(
            json!([{"name": "dns", "status": "ERROR", "message": "again", "lastRun": "2026-11-22T10:05:00Z"}]),
        );
        let open: Episodes = [("dns".to_owned(), episode())].into();
        assert!(decide(&p, &open, &sources(), "now").is_empty());
    }

    #[test]
    fn a_pass_closes_the_episode_so_the_next_failure_opens_a_new_one() {
        let open: Episodes = [("dns".to_owned(), episode())].into();
        let p = ps(json!([{"name": "dns", "status": "PASS"}]));
        assert_eq!(
            decide(&p, &open, &sources(), "now"),
            [Decision::Close {
                checker: "dns".into()
            }]
        );
    }

    #[test]
    fn a_status_no_source_wants_opens_nothing() {
        let p = ps(json!([{"name": "dns", "status": "WARN", "message": "slow"}]));
        assert!(decide(&p, &Episodes::new(), &sources(), "now").is_empty());
    }

    #[test]
    fn a_checker_that_disappears_closes_its_episode() {
        let open: Episodes = [("gone".to_owned(), episode())].into();
        assert_eq!(
            decide(&ps(json!([])), &open, &sources(), "now"),
            [Decision::Close {
                checker: "gone".into()
            }]
        );
    }

    #[test]
    fn kubeprober_node_check_messages_name_their_nodes() {
        assert_eq!(
            nodes_in_message("kubelet not active, error node: [ node1 node2 node-3 ]"),
            ["node1", "node2", "node-3"]
        );
        assert_eq!(
            nodes_in_message("a error node: [n1], b warn node: [ n1 n2 ]"),
            ["n1", "n2"]
        );
        assert!(nodes_in_message("connection refused").is_empty());
    }

    #[test]
    fn abnormal_names_are_valid_stable_and_distinct_per_node() {
        let a = abnormal_name(
            "kubeprober",
            "K8s Probe",
            "dns resolution check!",
            "2026-11-22T10:00:00Z",
            "n1",
        );
        assert!(
            a.starts_with("probe-k8s-probe-dns-resolution-check-"),
            "{a}"
        );
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && a.len() <= 253
        );
        assert_eq!(
            a,
            abnormal_name(
                "kubeprober",
                "K8s Probe",
                "dns resolution check!",
                "2026-11-22T10:00:00Z",
                "n1"
            )
        );
        assert_ne!(
            a,
            abnormal_name(
                "kubeprober",
                "K8s Probe",
                "dns resolution check!",
                "2026-11-22T10:00:00Z",
                "n2"
            )
        );
        // Pinned: a restarted or upgraded controller must find the episode's Abnormal.
        assert_eq!(
            abnormal_name(
                "kubeprober",
                "k8s",
                "dns-check",
                "2026-11-22T10:00:00Z",
                "n1"
            ),
            "probe-k8s-dns-check-890f2e100e"
        );
    }

    #[test]
    fn the_summary_is_the_worst_checker_with_the_latest_run() {
        let p = ps(json!([
            {"name": "a", "status": "PASS", "lastRun": "2026-11-22T10:00:00Z"},
            {"name": "b", "status": "WARN", "message": "slow", "lastRun": "2026-11-22T10:02:00Z"},
            {"name": "c", "status": "ERROR", "message": "down", "lastRun": "2026-11-22T10:01:00Z"}]));
        let s = summary(&p.spec.checkers);
        assert_eq!(s.status, Some(CheckerStatus::Error));
        assert_eq!(s.message, "down");
        assert_eq!(s.last_run.unwrap().0.to_string(), "2026-11-22T10:02:00Z");
        let s = summary(&ps(json!([{"name": "a", "status": "PASS"}])).spec.checkers);
        assert_eq!(
            (s.status, s.message.as_str()),
            (Some(CheckerStatus::Pass), "")
        );
    }
}
