//! `kubectl diag gate`: a release gate over probe results. Exit 0 only when every probe asked for
//! has a fresh PASS on every checker; otherwise the checkers that hold the gate, with kdiag's root
//! causes, and an exit code per reason ([`kdiag_api::gate::Reason::exit_code`]: 4 failing,
//! 5 stale, 6 unknown). The verdict is [`kdiag_api::gate::decide`]'s, the same the controller's
//! `GET /gate` answers with.

use std::time::Duration;

use kdiag_api::gate::{self, Asked, Query, Reason, Verdict};
use kdiag_api::{Probe, ProbeStatus};

use super::client::{Kube, PROBES, PROBESTATUSES, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output, Scope};

const MESSAGE_WIDTH: usize = 50;
const ROOT_CAUSE_WIDTH: usize = 70;

/// `kubectl diag gate` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct GateArgs {
    /// The probes to gate on, by name (comma-separated); default every probe in the namespace.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "NAME,…",
        conflicts_with = "selector"
    )]
    pub probes: Vec<String>,
    /// Gate on the probes whose Probe objects carry these labels (kubectl's -l syntax).
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// A result older than this does not count (it is stale).
    #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub max_age: Duration,
}

impl GateArgs {
    pub fn query(&self) -> Query {
        Query {
            probes: self
                .probes
                .iter()
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            selector: self.selector.clone().filter(|s| !s.trim().is_empty()),
        }
    }
}

/// Fetches what the query needs and decides: the verdict and the text to print.
pub async fn run(
    kube: &Kube,
    scope: &Scope,
    args: &GateArgs,
    output: Option<Output>,
    style: Style,
) -> Result<(Verdict, String), DiagError> {
    let asked = fetch(kube, scope, &args.query()).await?;
    let now = jiff::Timestamp::now();
    let verdict = gate::decide(&asked, args.max_age, now);
    let text = match output {
        Some(Output::Json) => serde_json::to_string_pretty(&verdict)
            .map(|s| s + "\n")
            .map_err(|e| DiagError::Output(e.to_string()))?,
        Some(Output::Yaml) => {
            serde_yaml::to_string(&verdict).map_err(|e| DiagError::Output(e.to_string()))?
        }
        _ => text(&verdict, scope.all_namespaces, now, style),
    };
    Ok((verdict, text))
}

async fn fetch(kube: &Kube, scope: &Scope, query: &Query) -> Result<Vec<Asked>, DiagError> {
    let ns = scope.list_namespace();
    let request = |kind, resource| Request {
        verb: "list",
        kind,
        resource,
        namespace: ns,
        name: None,
    };
    let statuses: Vec<ProbeStatus> = kube
        .list::<ProbeStatus>(ns, request("ProbeStatus", PROBESTATUSES))
        .await?
        .into_iter()
        .filter_map(|f| f.parsed.ok())
        .collect();
    let probes: Vec<(String, String)> = if query.probes.is_empty() {
        kube.list_selected::<Probe>(ns, query.selector.as_deref(), request("Probe", PROBES))
            .await?
            .into_iter()
            .map(|f| (f.namespace().to_owned(), f.name().to_owned()))
            .collect()
    } else {
        Vec::new()
    };
    Ok(gate::select(query, ns, &probes, statuses))
}

/// The verdict for people: the checkers (or probes) that hold the gate, then one line with the
/// verdict and its exit code.
pub fn text(verdict: &Verdict, all_namespaces: bool, now: jiff::Timestamp, style: Style) -> String {
    let mut t = Table::new([
        "PROBE",
        "CHECKER",
        "STATUS",
        "VERDICT",
        "LASTRUN",
        "MESSAGE",
        "ROOT CAUSE",
    ]);
    let probe_name = |p: &gate::ProbeVerdict| {
        if all_namespaces || p.namespace.is_empty() {
            format!(
                "{}/{}",
                if p.namespace.is_empty() {
                    "*"
                } else {
                    &p.namespace
                },
                p.name
            )
        } else {
            p.name.clone()
        }
    };
    for p in &verdict.probes {
        if p.checkers.is_empty() && p.reason != Reason::Pass {
            t.row([
                probe_name(p),
                "<none>".into(),
                String::new(),
                style.paint(tone(p.reason), p.reason.as_str()),
                String::new(),
                render::truncate(&p.message, MESSAGE_WIDTH),
                String::new(),
            ]);
        }
        for c in p.checkers.iter().filter(|c| c.reason != Reason::Pass) {
            let root_cause = c
                .diagnosis
                .as_ref()
                .map(|d| {
                    let mut s = d.cause_text().to_owned();
                    if s.is_empty() && !d.abnormal.is_empty() {
                        s = format!("diagnosing ({})", d.abnormal);
                    }
                    s
                })
                .unwrap_or_default();
            t.row([
                probe_name(p),
                c.name.clone(),
                style.paint(render::checker_tone(c.status.as_str()), c.status.as_str()),
                style.paint(tone(c.reason), c.reason.as_str()),
                c.last_run
                    .as_ref()
                    .map(|l| render::age_at(l.0, now))
                    .unwrap_or_default(),
                render::truncate(&c.message, MESSAGE_WIDTH),
                render::truncate(&root_cause, ROOT_CAUSE_WIDTH),
            ]);
        }
    }
    let checkers: usize = verdict.probes.iter().map(|p| p.checkers.len()).sum();
    let max_age = render::age(Duration::from_secs(verdict.max_age_seconds));
    let summary = if verdict.pass {
        format!(
            "gate passed: {} probe(s), {checkers} checker(s), all PASS within {max_age}",
            verdict.probes.len()
        )
    } else if verdict.probes.is_empty() {
        format!(
            "gate closed ({}, exit {}): {}",
            verdict.reason, verdict.exit_code, verdict.message
        )
    } else {
        let holding = verdict
            .probes
            .iter()
            .filter(|p| p.reason != Reason::Pass)
            .count();
        format!(
            "gate closed ({}, exit {}): {holding} of {} probe(s) do not pass within {max_age}",
            verdict.reason,
            verdict.exit_code,
            verdict.probes.len()
        )
    };
    let mut out = if t.is_empty() {
        String::new()
    } else {
        t.render()
    };
    out.push_str(&style.paint(tone(verdict.reason), &summary));
    out.push('\n');
    out
}

fn tone(reason: Reason) -> Tone {
    match reason {
        Reason::Pass => Tone::Good,
        Reason::Stale | Reason::Unknown => Tone::Warn,
        Reason::Failing => Tone::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-12-01T10:00:00Z".parse().unwrap()
    }

    fn verdict() -> Verdict {
        let status: ProbeStatus = serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "ProbeStatus",
            "metadata": {"name": "k8s", "namespace": "kubeprober"},
            "spec": {"checkers": [
                {"name": "dns", "status": "PASS", "lastRun": "2026-12-01T09:59:00Z"},
                {"name": "coredns", "status": "ERROR", "message": "2 of 2 coredns pods CrashLoopBackOff",
                 "lastRun": "2026-12-01T09:59:30Z",
                 "diagnosis": {"abnormal": "kubeprober/probe-k8s-coredns-1", "phase": "Succeeded",
                               "rootCause": "coredns cannot read its ConfigMap"}}
            ]}
        }))
        .unwrap();
        gate::decide(
            &[
                Asked {
                    namespace: "kubeprober".into(),
                    name: "k8s".into(),
                    status: Some(status),
                },
                Asked {
                    namespace: "kubeprober".into(),
                    name: "gone".into(),
                    status: None,
                },
            ],
            Duration::from_secs(600),
            now(),
        )
    }

    #[test]
    fn a_closed_gate_lists_what_holds_it_with_root_causes_and_its_exit_code() {
        let out = text(&verdict(), false, now(), Style::PLAIN);
        assert_eq!(
            out,
            "\
PROBE   CHECKER   STATUS   VERDICT   LASTRUN   MESSAGE                                              ROOT CAUSE
k8s     coredns   ERROR    failing   30s       2 of 2 coredns pods CrashLoopBackOff                 coredns cannot read its ConfigMap
gone    <none>             unknown             no ProbeStatus: the probe has never reported, or …
gate closed (failing, exit 4): 2 of 2 probe(s) do not pass within 10m
"
        );
    }

    #[test]
    fn gate_flags_read_names_a_selector_and_a_max_age() {
        let parsed = crate::KubectlDiag::try_parse_from([
            "kubectl-diag",
            "gate",
            "--probes",
            "dns,net",
            "--max-age",
            "5m",
            "-n",
            "kubeprober",
        ])
        .unwrap();
        let Some(crate::DiagCommand::Gate(g)) = parsed.args.command else {
            panic!("not gate");
        };
        assert_eq!(g.query().probes, ["dns", "net"]);
        assert_eq!(g.max_age, Duration::from_secs(300));
        assert!(
            crate::KubectlDiag::try_parse_from([
                "kubectl-diag",
                "gate",
                "--probes",
                "a",
                "--selector",
                "x=y"
            ])
            .is_err(),
            "names and a selector exclude each other"
        );
    }
}
