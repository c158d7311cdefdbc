//! The release gate: whether the latest results of a set of probes let a release through.
//!
//! Pure: the caller fetches the ProbeStatuses (and, for a selector, the Probes) and says what time
//! it is. `kubectl diag gate` and the controller's `GET /gate` both answer with [`select`] and
//! [`decide`], so a pipeline gets the same verdict from either.
//!
//! Each checker is judged on its own ([`judge`]), then a probe by its worst checker, then the gate
//! by its worst probe, failing before stale before unknown before pass: a checker that really
//! fails is the most actionable thing to tell a release pipeline; a result too old to trust comes
//! next; a probe nobody has heard of last.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::kubeprober::{CheckerDiagnosis, CheckerStatus, ProbeStatus};

/// The default `--max-age` (`maxAge`): a result older than this does not let a release through.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// The prefix of the message kdiag's runner writes on a result that stopped being refreshed.
pub const STALE_MESSAGE_PREFIX: &str = "stale:";

/// Why the gate (a probe, a checker) is open or closed. Each has a stable exit code; they are
/// ordered by precedence, the greatest winning when several apply.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// PASS (or INFO) and fresher than the maximum age.
    Pass,
    /// No result can be trusted: no ProbeStatus, no checkers, a checker UNKNOWN or without a
    /// time, or nothing matched at all.
    Unknown,
    /// A result older than the maximum age (or marked stale by kdiag's runner).
    Stale,
    /// A fresh ERROR or WARN.
    Failing,
}

impl Reason {
    /// `kubectl diag gate`'s exit code. 1, 2 and 3 keep the meaning they have for every
    /// `kubectl diag` command (1 a diagnosis failed, 2 usage, 3 the command could not run), so
    /// the gate's own answers start at 4.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Pass => 0,
            Self::Failing => 4,
            Self::Stale => 5,
            Self::Unknown => 6,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Failing => "failing",
            Self::Stale => "stale",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One probe the gate looks at, and its ProbeStatus if it has one.
#[derive(Clone, Debug, PartialEq)]
pub struct Asked {
    /// Empty when a name was asked for in every namespace and found in none.
    pub namespace: String,
    pub name: String,
    pub status: Option<ProbeStatus>,
}

/// The gate's answer, as `kubectl diag gate -o json` prints it and `GET /gate` returns it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// True only when every probe passed.
    pub pass: bool,
    pub reason: Reason,
    /// `kubectl diag gate`'s exit code for this verdict.
    pub exit_code: u8,
    pub max_age_seconds: u64,
    /// Set when there is nothing to judge.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub probes: Vec<ProbeVerdict>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeVerdict {
    pub namespace: String,
    pub name: String,
    pub reason: Reason,
    /// Set when the probe itself has no result to judge.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub checkers: Vec<CheckerVerdict>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckerVerdict {
    pub name: String,
    pub status: CheckerStatus,
    pub reason: Reason,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<Time>,
    /// Seconds since `lastRun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// kdiag's diagnosis of the failure: the Abnormal and its root cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<CheckerDiagnosis>,
}

/// What was asked for: probes by name, by the labels of their Probes, or (neither) every probe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub probes: Vec<String>,
    pub selector: Option<String>,
}

/// The probes a query names, with their ProbeStatuses. `namespace` is None for every namespace;
/// `probes` are the `(namespace, name)` of the Probes the selector matched (or of every Probe
/// when neither names nor a selector were given; unused for names). Without a selector, a
/// ProbeStatus whose Probe is not in this cluster (written by KubeProber's agent or another
/// tool) counts too; with one, only the matched Probes do.
pub fn select(
    query: &Query,
    namespace: Option<&str>,
    probes: &[(String, String)],
    statuses: Vec<ProbeStatus>,
) -> Vec<Asked> {
    let key = |s: &ProbeStatus| (s.namespace().unwrap_or_default(), s.name_any());
    let mut asked: Vec<Asked> = Vec::new();
    if !query.probes.is_empty() {
        for name in &query.probes {
            let found: Vec<&ProbeStatus> = statuses
                .iter()
                .filter(|s| &s.name_any() == name)
                .filter(|s| namespace.is_none_or(|ns| key(s).0 == ns))
                .collect();
            if found.is_empty() {
                asked.push(Asked {
                    namespace: namespace.unwrap_or_default().to_owned(),
                    name: name.clone(),
                    status: None,
                });
            }
            for s in found {
                asked.push(Asked {
                    namespace: key(s).0,
                    name: name.clone(),
                    status: Some(s.clone()),
                });
            }
        }
    } else {
        for (ns, name) in probes {
            asked.push(Asked {
                namespace: ns.clone(),
                name: name.clone(),
                status: statuses
                    .iter()
                    .find(|s| key(s) == (ns.clone(), name.clone()))
                    .cloned(),
            });
        }
        if query.selector.is_none() {
            for s in &statuses {
                let (ns, name) = key(s);
                if !asked.iter().any(|a| a.namespace == ns && a.name == name) {
                    asked.push(Asked {
                        namespace: ns,
                        name,
                        status: Some(s.clone()),
                    });
                }
            }
        }
    }
    asked.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    asked.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    asked
}

/// The verdict on `asked` at `now`: results older than `max_age` are stale.
pub fn decide(asked: &[Asked], max_age: Duration, now: jiff::Timestamp) -> Verdict {
    let probes: Vec<ProbeVerdict> = asked.iter().map(|a| judge_probe(a, max_age, now)).collect();
    let (reason, message) = match probes.iter().map(|p| p.reason).max() {
        Some(r) => (r, String::new()),
        None => (
            Reason::Unknown,
            "no probe matched: a gate over nothing does not pass".to_owned(),
        ),
    };
    Verdict {
        pass: reason == Reason::Pass,
        reason,
        exit_code: reason.exit_code(),
        max_age_seconds: max_age.as_secs(),
        message,
        probes,
    }
}

fn judge_probe(a: &Asked, max_age: Duration, now: jiff::Timestamp) -> ProbeVerdict {
    let verdict = |reason, message: &str, checkers| ProbeVerdict {
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        reason,
        message: message.to_owned(),
        checkers,
    };
    let Some(status) = &a.status else {
        return verdict(
            Reason::Unknown,
            "no ProbeStatus: the probe has never reported, or there is no such probe",
            vec![],
        );
    };
    if status.spec.checkers.is_empty() {
        return verdict(
            Reason::Unknown,
            "the ProbeStatus has no checker results yet",
            vec![],
        );
    }
    let checkers: Vec<CheckerVerdict> = status
        .spec
        .checkers
        .iter()
        .map(|c| {
            let age = c
                .last_run
                .as_ref()
                .map(|t| now.duration_since(t.0).as_secs().max(0) as u64);
            let reason = judge(c.status, &c.message, age, max_age);
            CheckerVerdict {
                name: c.name.clone(),
                status: c.status,
                reason,
                message: c.message.clone(),
                last_run: c.last_run.clone(),
                age_seconds: age,
                diagnosis: (reason != Reason::Pass)
                    .then(|| diagnosis(status, &c.name))
                    .flatten(),
            }
        })
        .collect();
    let reason = checkers
        .iter()
        .map(|c| c.reason)
        .max()
        .unwrap_or(Reason::Unknown);
    verdict(reason, "", checkers)
}

/// One checker: a result older than `max_age` (or marked stale by the runner) is stale whatever
/// it said, as it no longer tells how the cluster is; one without a time is unknown; a fresh
/// one passes on PASS or INFO, fails on ERROR or WARN, and is unknown on UNKNOWN.
pub fn judge(
    status: CheckerStatus,
    message: &str,
    age_seconds: Option<u64>,
    max_age: Duration,
) -> Reason {
    if status == CheckerStatus::Unknown && message.starts_with(STALE_MESSAGE_PREFIX) {
        return Reason::Stale;
    }
    let Some(age) = age_seconds else {
        return Reason::Unknown;
    };
    if age > max_age.as_secs() {
        return Reason::Stale;
    }
    match status {
        CheckerStatus::Pass | CheckerStatus::Info => Reason::Pass,
        CheckerStatus::Warn | CheckerStatus::Error => Reason::Failing,
        CheckerStatus::Unknown => Reason::Unknown,
    }
}

/// The diagnosis kdiag wrote for one checker. It is looked for, in this order, in:
/// 1. the kdiag extension `spec.checkers[].diagnosis` (kdiag's ProbeStatus CRD);
/// 2. the annotation [`crate::labels::DIAGNOSES_ANNOTATION`], a JSON object from checker name to
///    `{abnormal, phase, rootCause}`, written where KubeProber's own CRD prunes the field;
/// 3. the annotation `kdiag.io/diagnosis.<checker>`: plain text (the root cause itself) or the
///    same JSON object for one checker, for tools that annotate one checker at a time.
pub fn diagnosis(p: &ProbeStatus, checker: &str) -> Option<CheckerDiagnosis> {
    if let Some(d) = p
        .spec
        .checkers
        .iter()
        .find(|c| c.name == checker)
        .and_then(|c| c.diagnosis.clone())
    {
        return Some(d);
    }
    let annotations = p.metadata.annotations.as_ref()?;
    if let Some(d) = annotations
        .get(crate::labels::DIAGNOSES_ANNOTATION)
        .and_then(|all| serde_json::from_str::<serde_json::Value>(all).ok())
        .and_then(|all| all.get(checker).and_then(diagnosis_from_json))
    {
        return Some(d);
    }
    let value = annotations.get(&format!(
        "{}{checker}",
        crate::labels::DIAGNOSIS_ANNOTATION_PREFIX
    ))?;
    match serde_json::from_str::<serde_json::Value>(value) {
        Ok(v) if v.is_object() => diagnosis_from_json(&v),
        _ => Some(CheckerDiagnosis {
            root_cause: value.trim().to_owned(),
            ..Default::default()
        }),
    }
}

/// `{abnormal, phase, rootCause}` (or `summary` for the root cause) as a diagnosis.
fn diagnosis_from_json(v: &serde_json::Value) -> Option<CheckerDiagnosis> {
    let o = v.as_object()?;
    let text = |k: &str| o.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
    let root_cause = if o.contains_key("rootCause") {
        text("rootCause")
    } else {
        text("summary")
    };
    Some(CheckerDiagnosis {
        abnormal: text("abnormal"),
        phase: text("phase"),
        root_cause,
        reason: text("reason"),
        message: text("message"),
        evidence: o
            .get("evidence")
            .and_then(|e| serde_json::from_value(e.clone()).ok())
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: Duration = Duration::from_secs(600);

    fn now() -> jiff::Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    /// A ProbeStatus whose checkers ran `ago` seconds before [`now`] (None: no lastRun).
    fn status(ns: &str, name: &str, checkers: &[(&str, &str, &str, Option<i64>)]) -> ProbeStatus {
        let checkers: Vec<_> = checkers
            .iter()
            .map(|(n, st, msg, ago)| {
                let mut c = json!({"name": n, "status": st, "message": msg});
                if let Some(ago) = ago {
                    c["lastRun"] =
                        json!((now() - jiff::SignedDuration::from_secs(*ago)).to_string());
                }
                c
            })
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"checkers": checkers}
        }))
        .unwrap()
    }

    fn asked(s: ProbeStatus) -> Asked {
        Asked {
            namespace: s.namespace().unwrap(),
            name: s.name_any(),
            status: Some(s),
        }
    }

    #[test]
    fn each_checker_is_judged_by_its_age_first_then_its_status() {
        let fresh = Some(60);
        let old = Some(601);
        assert_eq!(judge(CheckerStatus::Pass, "", fresh, MAX), Reason::Pass);
        assert_eq!(judge(CheckerStatus::Info, "", fresh, MAX), Reason::Pass);
        assert_eq!(
            judge(CheckerStatus::Error, "x", fresh, MAX),
            Reason::Failing
        );
        assert_eq!(judge(CheckerStatus::Warn, "x", fresh, MAX), Reason::Failing);
        assert_eq!(
            judge(CheckerStatus::Unknown, "x", fresh, MAX),
            Reason::Unknown
        );
        assert_eq!(judge(CheckerStatus::Pass, "", old, MAX), Reason::Stale);
        assert_eq!(judge(CheckerStatus::Error, "x", old, MAX), Reason::Stale);
        assert_eq!(judge(CheckerStatus::Pass, "", None, MAX), Reason::Unknown);
        assert_eq!(
            judge(
                CheckerStatus::Unknown,
                "stale: no result since …",
                fresh,
                MAX
            ),
            Reason::Stale,
            "the runner's own stale marking counts as stale"
        );
        assert_eq!(
            judge(CheckerStatus::Pass, "", Some(600), MAX),
            Reason::Pass,
            "exactly max-age old is still fresh"
        );
    }

    #[test]
    fn the_gate_passes_only_when_every_checker_of_every_probe_passes_fresh() {
        let v = decide(
            &[
                asked(status("a", "dns", &[("resolve", "PASS", "", Some(10))])),
                asked(status(
                    "a",
                    "net",
                    &[("ping", "INFO", "slow-ish", Some(10))],
                )),
            ],
            MAX,
            now(),
        );
        assert!(v.pass);
        assert_eq!((v.reason, v.exit_code), (Reason::Pass, 0));
        assert!(v.probes.iter().all(|p| p.reason == Reason::Pass));
    }

    #[test]
    fn every_reason_has_its_own_stable_exit_code() {
        let codes: Vec<u8> = [
            Reason::Pass,
            Reason::Failing,
            Reason::Stale,
            Reason::Unknown,
        ]
        .iter()
        .map(|r| r.exit_code())
        .collect();
        assert_eq!(codes, [0, 4, 5, 6]);
    }

    #[test]
    fn a_failing_checker_closes_the_gate_with_its_root_cause() {
        let mut s = status(
            "a",
            "dns",
            &[
                ("resolve", "ERROR", "lookup timeout", Some(10)),
                ("other", "PASS", "", Some(10)),
            ],
        );
        s.spec.checkers[0].diagnosis = Some(CheckerDiagnosis {
            abnormal: "a/probe-dns-resolve-1".into(),
            phase: "Succeeded".into(),
            root_cause: "coredns is down".into(),
            ..Default::default()
        });
        let v = decide(&[asked(s)], MAX, now());
        assert!(!v.pass);
        assert_eq!((v.reason, v.exit_code), (Reason::Failing, 4));
        let c = &v.probes[0].checkers[0];
        assert_eq!(c.reason, Reason::Failing);
        assert_eq!(c.diagnosis.as_ref().unwrap().root_cause, "coredns is down");
        assert_eq!(v.probes[0].checkers[1].diagnosis, None);
    }

    #[test]
    fn a_stale_result_closes_the_gate_as_stale() {
        let v = decide(
            &[asked(status(
                "a",
                "dns",
                &[("resolve", "PASS", "", Some(3600))],
            ))],
            MAX,
            now(),
        );
        assert_eq!((v.reason, v.exit_code), (Reason::Stale, 5));
        assert_eq!(v.probes[0].checkers[0].age_seconds, Some(3600));
    }

    #[test]
    fn a_missing_probe_an_empty_status_or_nothing_at_all_is_unknown() {
        let missing = Asked {
            namespace: "a".into(),
            name: "nope".into(),
            status: None,
        };
        let v = decide(&[missing], MAX, now());
        assert_eq!((v.reason, v.exit_code), (Reason::Unknown, 6));
        assert!(v.probes[0].message.contains("no ProbeStatus"), "{v:?}");

        let empty = decide(&[asked(status("a", "dns", &[]))], MAX, now());
        assert_eq!(empty.reason, Reason::Unknown);

        let nothing = decide(&[], MAX, now());
        assert_eq!(nothing.reason, Reason::Unknown);
        assert!(!nothing.pass);
        assert!(nothing.message.contains("no probe matched"));
    }

    #[test]
    fn when_several_reasons_apply_failing_beats_stale_beats_unknown() {
        let failing = || asked(status("a", "f", &[("c", "ERROR", "x", Some(1))]));
        let stale = || asked(status("a", "s", &[("c", "PASS", "", Some(9999))]));
        let unknown = || asked(status("a", "u", &[("c", "UNKNOWN", "x", Some(1))]));
        let passing = || asked(status("a", "p", &[("c", "PASS", "", Some(1))]));
        let reason = |a: Vec<Asked>| decide(&a, MAX, now()).reason;
        assert_eq!(
            reason(vec![passing(), unknown(), stale(), failing()]),
            Reason::Failing
        );
        assert_eq!(reason(vec![unknown(), stale(), passing()]), Reason::Stale);
        assert_eq!(reason(vec![passing(), unknown()]), Reason::Unknown);
        // Within one probe too.
        let mixed = asked(status(
            "a",
            "m",
            &[
                ("u", "UNKNOWN", "x", Some(1)),
                ("s", "PASS", "", Some(9999)),
            ],
        ));
        assert_eq!(reason(vec![mixed]), Reason::Stale);
    }

    #[test]
    fn names_select_their_statuses_and_a_name_found_nowhere_is_asked_as_missing() {
        let statuses = vec![
            status("a", "dns", &[]),
            status("b", "dns", &[]),
            status("a", "net", &[]),
        ];
        let query = Query {
            probes: vec!["dns".into(), "gone".into()],
            selector: None,
        };
        let in_a = select(&query, Some("a"), &[], statuses.clone());
        let keys: Vec<_> = in_a
            .iter()
            .map(|a| (a.namespace.as_str(), a.name.as_str(), a.status.is_some()))
            .collect();
        assert_eq!(keys, [("a", "dns", true), ("a", "gone", false)]);
        let everywhere = select(&query, None, &[], statuses);
        let keys: Vec<_> = everywhere
            .iter()
            .map(|a| (a.namespace.as_str(), a.name.as_str(), a.status.is_some()))
            .collect();
        assert_eq!(
            keys,
            [("", "gone", false), ("a", "dns", true), ("b", "dns", true)]
        );
    }

    #[test]
    fn a_selector_takes_only_the_probes_it_matched_and_no_query_takes_every_probe_and_status() {
        let statuses = vec![status("a", "dns", &[]), status("a", "agent-only", &[])];
        let probes = vec![
            ("a".to_owned(), "dns".to_owned()),
            ("a".to_owned(), "never-ran".to_owned()),
        ];
        let selected = select(
            &Query {
                probes: vec![],
                selector: Some("tier=release".into()),
            },
            Some("a"),
            &probes,
            statuses.clone(),
        );
        let names: Vec<_> = selected.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["dns", "never-ran"]);
        assert!(selected[1].status.is_none());
        let all = select(&Query::default(), Some("a"), &probes, statuses);
        let names: Vec<_> = all.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["agent-only", "dns", "never-ran"]);
    }

    #[test]
    fn the_root_cause_is_read_from_the_annotation_where_the_field_is_pruned() {
        let mut s = status("a", "dns", &[("resolve", "ERROR", "x", Some(1))]);
        s.metadata.annotations = Some(
            [(
                crate::labels::DIAGNOSES_ANNOTATION.to_owned(),
                r#"{"resolve": {"abnormal": "a/x", "phase": "Diagnosing", "rootCause": "etcd slow"}}"#
                    .to_owned(),
            )]
            .into(),
        );
        let v = decide(&[asked(s)], MAX, now());
        let d = v.probes[0].checkers[0].diagnosis.clone().unwrap();
        assert_eq!(
            (d.abnormal.as_str(), d.root_cause.as_str()),
            ("a/x", "etcd slow")
        );
    }
}
