//! AbnormalSource templates, compiled: which triggers they match, in which order they are tried,
//! and what Abnormal a match creates. Pure.
//!
//! Matching: every pattern of a template must match its field of the trigger (anchored regular
//! expressions, empty = any). Among matching sources the highest `priority` wins; ties go to the
//! first by namespace/name. A template that would match everything is invalid (Kube Diagnoser's
//! empty pattern matched every Event in the cluster).

use std::collections::BTreeMap;

use kdiag_api::{
    AbnormalSource, AbnormalSourceSpec, AbnormalSourceType, AbnormalSpec, Matching, NamespacedName,
};

use crate::Error;
use crate::pattern::Pattern;

/// The facts of one trigger, flattened to field path → value (e.g. `involvedObject.kind`).
pub type Facts = BTreeMap<String, String>;

/// The fact that says which namespace a trigger belongs to (the namespace of the Event's
/// object, the ProbeStatus, or an alert's `namespace` label). A source outside kdiag's own
/// namespace matches only triggers of its namespace; the name cannot clash with a template's
/// fields.
pub const SCOPE_FACT: &str = "@namespace";

/// Prefix of the facts that hold a time as Go prints it ([`go_time`]), next to the fact of the
/// same name in RFC 3339: what a `matching: KubeDiagnoser` source matches timestamps against.
pub const GO_TIME_PREFIX: &str = "@go.";

/// The time facts that Kube Diagnoser matched in Go's format.
const GO_TIME_FACTS: [&str; 4] = ["firstTimestamp", "lastTimestamp", "startsAt", "endsAt"];

/// A time as Go's `time.Time.String()` prints it, in UTC: `2006-01-02 15:04:05 +0000 UTC`, with
/// the fraction of a second only when there is one (trailing zeros dropped).
pub fn go_time(t: jiff::Timestamp) -> String {
    let nanos = t.subsec_nanosecond();
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{:09}", nanos).trim_end_matches('0').to_owned()
    };
    format!("{}{fraction} +0000 UTC", t.strftime("%Y-%m-%d %H:%M:%S"))
}

/// Adds the Go-format twin of each time fact that parses as RFC 3339.
pub fn add_go_times(facts: &mut Facts) {
    let twins: Vec<(String, String)> = GO_TIME_FACTS
        .iter()
        .filter_map(|k| {
            let t: jiff::Timestamp = facts.get(*k)?.parse().ok()?;
            Some((format!("{GO_TIME_PREFIX}{k}"), go_time(t)))
        })
        .collect();
    facts.extend(twins);
}

/// May a source in `source_namespace` act on a trigger of `trigger_namespace`? Sources in kdiag's
/// own namespace act cluster-wide; any other only within its namespace, so that a tenant's source
/// never makes kdiag act on another tenant's objects.
pub fn in_scope(source_namespace: &str, trigger_namespace: Option<&str>) -> bool {
    source_namespace == kdiag_api::SYSTEM_NAMESPACE || trigger_namespace == Some(source_namespace)
}

/// A source ready to match.
#[derive(Debug, Clone)]
pub struct CompiledSource {
    pub key: NamespacedName,
    /// `spec.suspend`: validated, but matches nothing.
    pub suspended: bool,
    pub priority: i32,
    pub kind: AbnormalSourceType,
    pub spec: AbnormalSourceSpec,
    patterns: Vec<(String, Pattern)>,
    /// ProbeStatus templates: the checker statuses that match.
    statuses: Vec<String>,
    /// `spec.matching: KubeDiagnoser` on an Event or alert template.
    kube_diagnoser: bool,
}

/// Two compiled sources are the same source.
impl PartialEq for CompiledSource {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.priority == other.priority && self.spec == other.spec
    }
}

/// Compiles a source, or says what is wrong with it (for its Valid condition).
pub fn compile(source: &AbnormalSource) -> Result<CompiledSource, Error> {
    let spec = source.spec.clone();
    let t = &spec.source_template;
    let base = "spec.sourceTemplate";
    let mut patterns: Vec<(String, String, String)> = Vec::new(); // (fact key, field path, pattern)
    let mut statuses = Vec::new();
    match t.type_ {
        AbnormalSourceType::KubernetesEvent => {
            let Some(tpl) = &t.kubernetes_event_template else {
                return Err(Error::MissingTemplate {
                    kind: "KubernetesEvent",
                    template: "kubernetesEventTemplate",
                });
            };
            let r = &tpl.regexp;
            let f = format!("{base}.kubernetesEventTemplate.regexp");
            for (k, v) in [
                ("name", &r.name),
                ("namespace", &r.namespace),
                ("reason", &r.reason),
                ("message", &r.message),
                ("firstTimestamp", &r.first_timestamp),
                ("lastTimestamp", &r.last_timestamp),
                ("count", &r.count),
                ("type", &r.type_),
                ("eventTime", &r.event_time),
                ("action", &r.action),
                ("reportingController", &r.reporting_controller),
                ("reportingInstance", &r.reporting_instance),
            ] {
                patterns.push((k.into(), format!("{f}.{k}"), v.clone()));
            }
            for (group, map) in [
                ("involvedObject", &r.involved_object),
                ("source", &r.source),
                ("related", &r.related),
            ] {
                for (k, v) in map {
                    patterns.push((
                        format!("{group}.{k}"),
                        format!("{f}.{group}.{k}"),
                        v.clone(),
                    ));
                }
            }
        }
        AbnormalSourceType::PrometheusAlert => {
            let Some(tpl) = &t.prometheus_alert_template else {
                return Err(Error::MissingTemplate {
                    kind: "PrometheusAlert",
                    template: "prometheusAlertTemplate",
                });
            };
            if tpl.node_name_reference_label.is_empty() {
                return Err(Error::MissingNodeLabel);
            }
            let r = &tpl.regexp;
            let f = format!("{base}.prometheusAlertTemplate.regexp");
            for (k, v) in [
                ("alertName", &r.alert_name),
                ("startsAt", &r.starts_at),
                ("endsAt", &r.ends_at),
                ("generatorURL", &r.generator_url),
            ] {
                patterns.push((k.into(), format!("{f}.{k}"), v.clone()));
            }
            for (group, map) in [("labels", &r.labels), ("annotations", &r.annotations)] {
                for (k, v) in map {
                    patterns.push((
                        format!("{group}.{k}"),
                        format!("{f}.{group}.{k}"),
                        v.clone(),
                    ));
                }
            }
        }
        AbnormalSourceType::ProbeStatus => {
            let Some(tpl) = &t.probe_status_template else {
                return Err(Error::MissingTemplate {
                    kind: "ProbeStatus",
                    template: "probeStatusTemplate",
                });
            };
            let m = &tpl.match_;
            let f = format!("{base}.probeStatusTemplate.match");
            for (k, v) in [
                ("probeNamespace", &m.probe_namespace),
                ("probeName", &m.probe_name),
                ("checker", &m.checker),
                ("message", &m.message),
            ] {
                patterns.push((k.into(), format!("{f}.{k}"), v.clone()));
            }
            statuses = if m.statuses.is_empty() {
                vec!["ERROR".into()]
            } else {
                m.statuses.iter().map(|s| s.to_ascii_uppercase()).collect()
            };
            for s in &statuses {
                if !["ERROR", "WARN", "UNKNOWN"].contains(&s.as_str()) {
                    return Err(Error::InvalidProbeStatus { status: s.clone() });
                }
            }
        }
        AbnormalSourceType::Custom => {
            return Err(Error::UnsupportedSourceType);
        }
    }
    let kube_diagnoser = spec.matching == Some(Matching::KubeDiagnoser)
        && t.type_ != AbnormalSourceType::ProbeStatus;
    let mut compiled = Vec::new();
    for (key, field, p) in patterns {
        let pattern = if kube_diagnoser {
            Pattern::compile_anywhere(&field, &p)?
        } else {
            Pattern::compile(&field, &p)?
        };
        compiled.push((key, pattern));
    }
    if t.type_ != AbnormalSourceType::ProbeStatus && !compiled.iter().any(|(_, p)| p.constrains()) {
        return Err(Error::MatchesEverything {
            what: if t.type_ == AbnormalSourceType::KubernetesEvent {
                "Warning Event"
            } else {
                "alert"
            },
        });
    }
    Ok(CompiledSource {
        suspended: spec.suspend.unwrap_or(false),
        key: NamespacedName::new(
            source.metadata.namespace.clone().unwrap_or_default(),
            source.metadata.name.clone().unwrap_or_default(),
        ),
        priority: spec.priority.unwrap_or(0),
        kind: t.type_,
        spec,
        patterns: compiled,
        statuses,
        kube_diagnoser,
    })
}

impl CompiledSource {
    /// Do the trigger's facts match every pattern (and, for probes, the status)?
    pub fn matches(&self, facts: &Facts) -> bool {
        if self.suspended
            || !in_scope(
                &self.key.namespace,
                facts.get(SCOPE_FACT).map(String::as_str),
            )
        {
            return false;
        }
        if self.kind == AbnormalSourceType::ProbeStatus {
            let status = facts.get("status").map(String::as_str).unwrap_or_default();
            if !self.statuses.iter().any(|s| s == status) {
                return false;
            }
        }
        if !self.kube_diagnoser {
            // Only Warning Events (those the apiserver sends kdiag by default).
            if self.kind == AbnormalSourceType::KubernetesEvent
                && facts
                    .get("type")
                    .is_some_and(|t| !t.is_empty() && t != "Warning")
            {
                return false;
            }
            return self
                .patterns
                .iter()
                .all(|(k, p)| p.matches(facts.get(k).map(String::as_str).unwrap_or_default()));
        }
        self.patterns.iter().all(|(k, p)| {
            if !p.constrains() {
                return true;
            }
            let value = if GO_TIME_FACTS.contains(&k.as_str()) {
                facts.get(&format!("{GO_TIME_PREFIX}{k}"))
            } else {
                facts.get(k)
            };
            match value.map(String::as_str) {
                // Kube Diagnoser matched a missing label or annotation as no match, and an Event
                // without a count as 0.
                None if k.starts_with("labels.") || k.starts_with("annotations.") => false,
                None | Some("") if k == "count" => p.matches("0"),
                v => p.matches(v.unwrap_or_default()),
            }
        })
    }

    /// True for a `matching: KubeDiagnoser` source: it considers Events of every type.
    pub fn wants_every_event_type(&self) -> bool {
        self.kube_diagnoser && self.kind == AbnormalSourceType::KubernetesEvent && !self.suspended
    }

    /// The Abnormal spec a match starts from: the source's processors, executors, profilers and
    /// context. The caller sets source, trigger, node and target.
    pub fn abnormal_spec(&self) -> AbnormalSpec {
        AbnormalSpec {
            source: self.kind,
            assigned_information_collectors: self.spec.assigned_information_collectors.clone(),
            assigned_diagnosers: self.spec.assigned_diagnosers.clone(),
            assigned_recoverers: self.spec.assigned_recoverers.clone(),
            command_executors: self.spec.command_executors.clone(),
            profilers: self.spec.profilers.clone(),
            context: self.spec.context.clone(),
            ..Default::default()
        }
    }

    /// Seconds within which repeated triggers group into one Abnormal.
    pub fn group_window(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.spec
                .group_window_seconds
                .filter(|s| *s > 0)
                .unwrap_or(600) as u64,
        )
    }
}

/// Sorts sources into the order they are tried: priority, highest first; then namespace/name.
pub fn order(sources: &mut [CompiledSource]) {
    sources.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.key.cmp(&b.key)));
}

/// The first source (in [`order`]) of `kind` that matches.
pub fn select<'a>(
    sources: &'a [CompiledSource],
    kind: AbnormalSourceType,
    facts: &Facts,
) -> Option<&'a CompiledSource> {
    sources
        .iter()
        .filter(|s| s.kind == kind)
        .find(|s| s.matches(facts))
}

/// Lowercase letters, digits and single dashes; at most `max` characters: how the names of the
/// Abnormals triggers create are built from object, reason, probe and checker names.
pub fn slug(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    let out = out.trim_matches('-').to_owned();
    if out.is_empty() { "x".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(name: &str, spec: serde_json::Value) -> AbnormalSource {
        serde_json::from_value(
            json!({"apiVersion": "diagnosis.netease.com/v1", "kind": "AbnormalSource",
            "metadata": {"name": name, "namespace": "kube-diagnoser"}, "spec": spec}),
        )
        .unwrap()
    }

    fn facts(pairs: &[(&str, &str)]) -> Facts {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn an_event_template_matches_on_every_field_it_names() {
        let s = compile(&source("backoff", json!({"sourceTemplate": {"type": "KubernetesEvent",
            "kubernetesEventTemplate": {"regexp": {"reason": "BackOff", "involvedObject": {"kind": "Pod"}, "message": ".*restarting.*"}}}}))).unwrap();
        assert!(s.matches(&facts(&[
            ("reason", "BackOff"),
            ("involvedObject.kind", "Pod"),
            ("message", "Back-off restarting failed container")
        ])));
        assert!(!s.matches(&facts(&[
            ("reason", "BackOff"),
            ("involvedObject.kind", "Node"),
            ("message", "restarting")
        ])));
        assert!(!s.matches(&facts(&[
            ("reason", "BackOffPull"),
            ("involvedObject.kind", "Pod"),
            ("message", "restarting")
        ])));
    }

    #[test]
    fn a_kube_diagnoser_source_matches_substrings_and_every_event_type_and_a_whole_one_does_not() {
        let spec = |matching: Option<&str>| {
            let mut v = json!({"sourceTemplate": {"type": "KubernetesEvent",
                "kubernetesEventTemplate": {"regexp": {"reason": "Failed", "message": "probe failed"}}}});
            if let Some(m) = matching {
                v["matching"] = json!(m);
            }
            v
        };
        let event = facts(&[
            ("reason", "FailedMount"),
            ("message", "Readiness probe failed: connection refused"),
            ("type", "Normal"),
        ]);
        let upstream = compile(&source("u", spec(Some("KubeDiagnoser")))).unwrap();
        assert!(upstream.matches(&event));
        assert!(upstream.wants_every_event_type());
        let whole = compile(&source("w", spec(None))).unwrap();
        assert!(!whole.wants_every_event_type());
        assert!(!whole.matches(&event));
        let exact = facts(&[
            ("reason", "Failed"),
            ("message", "probe failed"),
            ("type", "Normal"),
        ]);
        assert!(
            !whole.matches(&exact),
            "a Whole source considers Warning Events only"
        );
        let warning = facts(&[
            ("reason", "Failed"),
            ("message", "probe failed"),
            ("type", "Warning"),
        ]);
        assert!(whole.matches(&warning));
    }

    #[test]
    fn a_kube_diagnoser_source_reads_missing_labels_counts_and_times_as_kube_diagnoser_did() {
        let s = compile(&source("u", json!({"matching": "KubeDiagnoser", "sourceTemplate": {
            "type": "PrometheusAlert", "prometheusAlertTemplate": {"nodeNameReferenceLabel": "node",
            "regexp": {"alertName": "Disk", "labels": {"team": ".*"}, "startsAt": "^2021-03-01 10:00:00 \\+0000 UTC$"}}}}))).unwrap();
        let mut alert = facts(&[
            ("alertName", "NodeDiskFull"),
            ("labels.team", "storage"),
            ("startsAt", "2021-03-01T10:00:00Z"),
        ]);
        add_go_times(&mut alert);
        assert!(s.matches(&alert));
        alert.remove("labels.team");
        assert!(
            !s.matches(&alert),
            "a missing label never matches, even `.*`"
        );
        let e = compile(&source(
            "c",
            json!({"matching": "KubeDiagnoser", "sourceTemplate": {
            "type": "KubernetesEvent", "kubernetesEventTemplate": {"regexp": {"count": "^0$"}}}}),
        ))
        .unwrap();
        assert!(e.matches(&facts(&[("count", "")])), "no count reads as 0");
        assert!(!e.matches(&facts(&[("count", "3")])));
    }

    #[test]
    fn times_print_as_go_prints_them() {
        let t: jiff::Timestamp = "2021-03-01T10:00:00Z".parse().unwrap();
        assert_eq!(go_time(t), "2021-03-01 10:00:00 +0000 UTC");
        let t: jiff::Timestamp = "2021-03-01T10:00:00.1234Z".parse().unwrap();
        assert_eq!(go_time(t), "2021-03-01 10:00:00.1234 +0000 UTC");
    }

    #[test]
    fn a_template_that_would_match_everything_is_invalid() {
        let e = compile(&source("all", json!({"sourceTemplate": {"type": "KubernetesEvent", "kubernetesEventTemplate": {"regexp": {}}}}))).unwrap_err().to_string();
        assert!(e.contains("would match every Warning Event"), "{e}");
    }

    #[test]
    fn an_invalid_pattern_is_reported_with_its_field() {
        let e = compile(&source(
            "bad",
            json!({"sourceTemplate": {"type": "KubernetesEvent",
            "kubernetesEventTemplate": {"regexp": {"reason": "Back(Off"}}}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("spec.sourceTemplate.kubernetesEventTemplate.regexp.reason"),
            "{e}"
        );
    }

    #[test]
    fn an_alert_template_needs_the_label_that_names_the_node() {
        let e = compile(&source(
            "alert",
            json!({"sourceTemplate": {"type": "PrometheusAlert",
            "prometheusAlertTemplate": {"regexp": {"alertName": "NodeDown"}}}}),
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("nodeNameReferenceLabel"), "{e}");
        let s = compile(&source("alert", json!({"sourceTemplate": {"type": "PrometheusAlert",
            "prometheusAlertTemplate": {"regexp": {"alertName": "Node.*", "labels": {"severity": "critical"}}, "nodeNameReferenceLabel": "node"}}}))).unwrap();
        assert!(s.matches(&facts(&[
            ("alertName", "NodeDown"),
            ("labels.severity", "critical")
        ])));
        assert!(!s.matches(&facts(&[
            ("alertName", "NodeDown"),
            ("labels.severity", "warning")
        ])));
    }

    #[test]
    fn probe_templates_match_error_by_default_and_other_statuses_on_request() {
        let s = compile(&source("p", json!({"sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"probeName": "k8s"}}}}))).unwrap();
        assert!(s.matches(&facts(&[("probeName", "k8s"), ("status", "ERROR")])));
        assert!(!s.matches(&facts(&[("probeName", "k8s"), ("status", "WARN")])));
        let s = compile(&source("p", json!({"sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"statuses": ["warn", "ERROR"]}}}}))).unwrap();
        assert!(s.matches(&facts(&[("status", "WARN")])));
        let e = compile(&source("p", json!({"sourceTemplate": {"type": "ProbeStatus", "probeStatusTemplate": {"match": {"statuses": ["PASS"]}}}}))).unwrap_err().to_string();
        assert!(e.contains("statuses"), "{e}");
    }

    #[test]
    fn the_highest_priority_wins_and_ties_go_to_the_first_name() {
        let mk = |name: &str, priority: i32| {
            compile(&source(
                name,
                json!({"priority": priority, "sourceTemplate": {"type": "KubernetesEvent",
                "kubernetesEventTemplate": {"regexp": {"reason": "BackOff"}}}}),
            ))
            .unwrap()
        };
        let mut sources = vec![mk("zz", 0), mk("low", -5), mk("aa", 0), mk("high", 10)];
        order(&mut sources);
        let f = facts(&[("reason", "BackOff")]);
        assert_eq!(
            select(&sources, AbnormalSourceType::KubernetesEvent, &f)
                .unwrap()
                .key
                .name,
            "high"
        );
        sources.retain(|s| s.key.name != "high");
        assert_eq!(
            select(&sources, AbnormalSourceType::KubernetesEvent, &f)
                .unwrap()
                .key
                .name,
            "aa"
        );
        assert!(select(&sources, AbnormalSourceType::PrometheusAlert, &f).is_none());
    }

    #[test]
    fn a_source_outside_kdiags_namespace_matches_only_triggers_of_its_own_namespace() {
        assert!(in_scope(kdiag_api::SYSTEM_NAMESPACE, Some("team-b")));
        assert!(in_scope(kdiag_api::SYSTEM_NAMESPACE, None));
        assert!(in_scope("team-a", Some("team-a")));
        assert!(!in_scope("team-a", Some("team-b")));
        assert!(
            !in_scope("team-a", None),
            "a trigger of no namespace is cluster-wide"
        );
    }
}
