//! `kubectl diag probes [NAME]`: KubeProber checker results, one row per checker, with the root
//! cause kdiag found for a failing one.
//!
//! The root cause comes from, in this order:
//! 1. the kdiag extension `spec.checkers[].diagnosis.rootCause` (kdiag's ProbeStatus CRD);
//! 2. the annotation `kdiag.io/diagnoses`, a JSON object from checker name to
//!    `{abnormal, phase, rootCause}`, which kdiag writes where KubeProber's own CRD would prune the
//!    field (see kdiag-controller's `probes::writeback`);
//! 3. the annotation `kdiag.io/diagnosis.<checker>`: plain text (the root cause itself) or the
//!    same JSON object for one checker, for tools that annotate one checker at a time.

use kdiag_api::{CheckerDiagnosis, ProbeStatus};

use super::client::{Fetched, Kube, PROBESTATUSES, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output, Scope};

/// Prefix of the per-checker diagnosis annotation.
pub const DIAGNOSIS_ANNOTATION_PREFIX: &str = kdiag_api::labels::DIAGNOSIS_ANNOTATION_PREFIX;
/// The annotation holding every checker's diagnosis, as the probe trigger writes it.
pub const DIAGNOSES_ANNOTATION: &str = kdiag_api::labels::DIAGNOSES_ANNOTATION;

const MESSAGE_WIDTH: usize = 50;
const ROOT_CAUSE_WIDTH: usize = 60;

fn request<'a>(verb: &'static str, namespace: Option<&'a str>) -> Request<'a> {
    Request {
        verb,
        kind: "ProbeStatus",
        resource: PROBESTATUSES,
        namespace,
        name: None,
    }
}

pub async fn run(
    kube: &Kube,
    scope: &Scope,
    name: Option<&str>,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let items = match name {
        Some(name) => vec![
            kube.get::<ProbeStatus>(
                &scope.namespace,
                name,
                request("get", Some(&scope.namespace)),
            )
            .await?,
        ],
        None => {
            let ns = scope.list_namespace();
            kube.list::<ProbeStatus>(ns, request("list", ns)).await?
        }
    };
    match output {
        Some(Output::Json) | Some(Output::Yaml) => super::objects(
            items.into_iter().map(|i| i.raw).collect(),
            name.is_some(),
            output,
        ),
        _ if items.is_empty() => Ok(String::new()),
        _ => Ok(table(
            &items,
            scope.all_namespaces,
            output == Some(Output::Wide),
            jiff::Timestamp::now(),
            style,
        )
        .render()),
    }
}

/// `probes -c CLUSTER`: the results the fleet hub stores for a member cluster, one row per
/// checker, the PROBER column naming each probe as it is in the member (namespace/name).
/// With `name`, only that probe (its name, or namespace/name, in the member).
pub async fn run_for_cluster(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    name: Option<&str>,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let selector = super::clusters::results_selector(cluster);
    let mut items = kube
        .list_selected::<ProbeStatus>(
            Some(fleet_namespace),
            Some(&selector),
            request("list", Some(fleet_namespace)),
        )
        .await?;
    if let Some(name) = name {
        items.retain(|i| {
            let source = source(i).unwrap_or_default();
            source == name || source.rsplit_once('/').is_some_and(|(_, n)| n == name)
        });
    }
    items.sort_by_key(source);
    match output {
        Some(Output::Json) | Some(Output::Yaml) => {
            super::objects(items.into_iter().map(|i| i.raw).collect(), false, output)
        }
        _ if items.is_empty() => Ok(String::new()),
        _ => Ok(table(
            &items,
            false,
            output == Some(Output::Wide),
            jiff::Timestamp::now(),
            style,
        )
        .render()),
    }
}

/// The results the fleet hub stores for `cluster` from the Probes named `probes` (any
/// namespace in the member; every result of the cluster when `probes` is empty).
pub async fn stored_results(
    kube: &Kube,
    fleet_namespace: &str,
    cluster: &str,
    probes: &[String],
) -> Result<Vec<Fetched<ProbeStatus>>, DiagError> {
    let selector = super::clusters::results_selector(cluster);
    let mut items = kube
        .list_selected::<ProbeStatus>(
            Some(fleet_namespace),
            Some(&selector),
            request("list", Some(fleet_namespace)),
        )
        .await?;
    items.retain(|i| {
        let source = source(i).unwrap_or_default();
        let name = source.rsplit_once('/').map_or(source.as_str(), |(_, n)| n);
        probes.is_empty() || probes.iter().any(|p| p == name)
    });
    items.sort_by_key(source);
    Ok(items)
}

/// The exit code of results, as `probe run --wait`'s: 0 every checker PASS or INFO, 4 a
/// checker ERROR or WARN, 6 no checker or one UNKNOWN.
pub fn exit_code(items: &[Fetched<ProbeStatus>]) -> u8 {
    use kdiag_api::CheckerStatus;
    let checkers: Vec<CheckerStatus> = items
        .iter()
        .filter_map(|i| i.parsed.as_ref().ok())
        .flat_map(|p| p.spec.checkers.iter().map(|c| c.status))
        .collect();
    if checkers.is_empty() {
        6
    } else if checkers
        .iter()
        .any(|c| matches!(c, CheckerStatus::Error | CheckerStatus::Warn))
    {
        4
    } else if checkers
        .iter()
        .all(|c| matches!(c, CheckerStatus::Pass | CheckerStatus::Info))
    {
        0
    } else {
        6
    }
}

/// Where a result the fleet hub stores comes from: namespace/name in its member cluster.
fn source<K>(item: &Fetched<K>) -> Option<String> {
    item.raw["metadata"]["annotations"][kdiag_fleet::state::SOURCE_ANNOTATION]
        .as_str()
        .map(str::to_owned)
}

/// What `probes` says when there is nothing, on stderr like kubectl.
pub fn nothing_found(scope: &Scope) -> String {
    if scope.all_namespaces {
        "No ProbeStatuses found.".into()
    } else {
        format!("No ProbeStatuses found in {} namespace.", scope.namespace)
    }
}

/// The diagnosis of one checker: the extension field first, the annotations second (the rules
/// are [`kdiag_api::gate::diagnosis`]'s, shared with the release gate).
pub fn diagnosis(p: &ProbeStatus, checker: &str) -> Option<CheckerDiagnosis> {
    kdiag_api::gate::diagnosis(p, checker)
}

/// One row per checker.
pub fn table(
    items: &[Fetched<ProbeStatus>],
    all_namespaces: bool,
    wide: bool,
    now: jiff::Timestamp,
    style: Style,
) -> Table {
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "PROBER",
        "CHECKER",
        "STATUS",
        "MESSAGE",
        "LASTRUN",
        "ROOT CAUSE",
    ]);
    if wide {
        headers.extend(["ABNORMAL", "PHASE"]);
    }
    let mut t = Table::new(headers);
    let cut = |s: &str, w: usize| {
        if wide {
            s.to_owned()
        } else {
            render::truncate(s, w)
        }
    };
    for item in items {
        let mut prefix = vec![];
        if all_namespaces {
            prefix.push(item.namespace().to_owned());
        }
        // A member's result stored by the fleet hub is named after its source in the member.
        prefix.push(source(item).unwrap_or_else(|| item.name().to_owned()));
        let p = match &item.parsed {
            Ok(p) => p,
            Err(e) => {
                let mut row = prefix.clone();
                row.extend([
                    String::new(),
                    style.paint(Tone::Bad, "<invalid>"),
                    cut(&format!("cannot be read: {e}"), MESSAGE_WIDTH),
                ]);
                t.row(row);
                continue;
            }
        };
        if p.spec.checkers.is_empty() {
            // A probe that has not reported checkers yet: its summary, if any.
            let st = p.status.clone().unwrap_or_default();
            let status = st.status.map(|s| s.as_str()).unwrap_or("");
            let mut row = prefix.clone();
            row.extend([
                "<none>".to_owned(),
                style.paint(render::checker_tone(status), status),
                cut(&st.message, MESSAGE_WIDTH),
                st.last_run
                    .map(|t| render::age_at(t.0, now))
                    .unwrap_or_default(),
                String::new(),
            ]);
            t.row(row);
            continue;
        }
        for c in &p.spec.checkers {
            let d = diagnosis(p, &c.name).unwrap_or_default();
            let mut row = prefix.clone();
            row.extend([
                c.name.clone(),
                style.paint(render::checker_tone(c.status.as_str()), c.status.as_str()),
                cut(&c.message, MESSAGE_WIDTH),
                c.last_run
                    .as_ref()
                    .map(|t| render::age_at(t.0, now))
                    .unwrap_or_default(),
                cut(d.cause_text(), ROOT_CAUSE_WIDTH),
            ]);
            if wide {
                row.extend([d.abnormal, d.phase]);
            }
            t.row(row);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetched(v: serde_json::Value) -> Fetched<ProbeStatus> {
        Fetched {
            parsed: serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
            raw: v,
        }
    }

    #[test]
    fn results_exit_like_probe_run_wait_error_or_warn_4_all_passing_0_nothing_6() {
        let with = |statuses: &[&str]| {
            let checkers: Vec<_> = statuses
                .iter()
                .enumerate()
                .map(|(i, s)| json!({"name": format!("c{i}"), "status": s}))
                .collect();
            fetched(
                json!({"apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
                           "metadata": {"name": "p"}, "spec": {"checkers": checkers}}),
            )
        };
        assert_eq!(exit_code(&[example()]), 4);
        assert_eq!(exit_code(&[with(&["PASS", "INFO"])]), 0);
        assert_eq!(exit_code(&[with(&["PASS", "UNKNOWN"])]), 6);
        assert_eq!(exit_code(&[with(&["PASS"]), with(&["WARN"])]), 4);
        assert_eq!(exit_code(&[]), 6);
    }

    fn example() -> Fetched<ProbeStatus> {
        fetched(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "k8s-probe", "namespace": "kubeprober",
                "annotations": {"kdiag.io/diagnoses": "{\"etcd\": {\"abnormal\": \"kubeprober/etcd-x\", \"phase\": \"Diagnosing\", \"rootCause\": \"etcd member 2 is down\"}}",
                                "kdiag.io/diagnosis.kubelet": "kubelet on node-b cannot reach the apiserver"}},
            "spec": {"checkers": [
                {"name": "dns", "status": "PASS", "message": "", "lastRun": "2026-11-22T10:04:00Z"},
                {"name": "coredns-pods", "status": "error", "message": "2 of 2 coredns pods are CrashLoopBackOff", "lastRun": "2026-11-22T10:04:30Z",
                 "diagnosis": {"abnormal": "kubeprober/coredns-abc", "phase": "Succeeded", "rootCause": "coredns cannot read its ConfigMap: forbidden"}},
                {"name": "etcd", "status": "WARN", "message": "slow", "lastRun": "2026-11-22T10:04:30Z"},
                {"name": "kubelet", "status": "ERROR", "message": "not ready", "lastRun": "2026-11-22T10:04:30Z"}
            ]}
        }))
    }

    fn now() -> jiff::Timestamp {
        "2026-11-22T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn one_row_per_checker_with_the_root_cause_from_the_extension_or_the_annotation() {
        let out = table(&[example()], false, false, now(), Style::PLAIN).render();
        assert_eq!(
            out,
            "\
PROBER      CHECKER        STATUS   MESSAGE                                    LASTRUN   ROOT CAUSE
k8s-probe   dns            PASS                                                60s
k8s-probe   coredns-pods   ERROR    2 of 2 coredns pods are CrashLoopBackOff   30s       coredns cannot read its ConfigMap: forbidden
k8s-probe   etcd           WARN     slow                                       30s       etcd member 2 is down
k8s-probe   kubelet        ERROR    not ready                                  30s       kubelet on node-b cannot reach the apiserver
"
        );
    }

    #[test]
    fn a_diagnosis_that_found_nothing_shows_what_was_checked_not_a_blank() {
        let p = fetched(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "web", "namespace": "kubeprober"},
            "spec": {"checkers": [{"name": "http-get", "status": "ERROR", "message": "unexpected status 500",
                "lastRun": "2026-11-22T10:04:30Z",
                "diagnosis": {"abnormal": "kubeprober/probe-web-1", "phase": "Failed", "reason": "NoCauseFound",
                              "message": "no cause found: on node n1 (probe-web-1) ran collectors node-collector"}}]}
        }));
        let out = table(&[p], false, false, now(), Style::PLAIN).render();
        assert!(
            out.lines()
                .nth(1)
                .unwrap()
                .contains("   no cause found: on node n1 (probe-web-1)"),
            "{out}"
        );
    }

    #[test]
    fn wide_adds_the_abnormal_and_its_phase() {
        let out = table(&[example()], true, true, now(), Style::PLAIN).render();
        let words =
            |i: usize| -> Vec<&str> { out.lines().nth(i).unwrap().split_whitespace().collect() };
        assert_eq!(words(0)[..2], ["NAMESPACE", "PROBER"], "{out}");
        assert_eq!(
            words(0)[words(0).len() - 2..],
            ["ABNORMAL", "PHASE"],
            "{out}"
        );
        assert!(
            words(2).ends_with(&["kubeprober/coredns-abc", "Succeeded"]),
            "{out}"
        );
        assert!(
            words(3).ends_with(&["kubeprober/etcd-x", "Diagnosing"]),
            "{out}"
        );
    }

    #[test]
    fn a_probe_without_checkers_shows_its_summary() {
        let p = fetched(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "fresh", "namespace": "kubeprober"},
            "spec": {},
            "status": {"status": "UNKNOWN", "message": "never ran"}
        }));
        let out = table(&[p], false, false, now(), Style::COLOUR).render();
        assert!(
            out.contains("fresh    <none>    \x1b[33mUNKNOWN\x1b[0m   never ran"),
            "{out:?}"
        );
    }
}
