//! `kubectl diag probe run NS/NAME [--wait]` and `kubectl diag probe history [NS/NAME] [-i ID]`:
//! one-time runs of a probe and the history of its runs, kept in the cluster as ProbeRuns
//! (diagnosis.netease.com/v1; kdiag's probe runner runs and records them, docs/probes.md).
//!
//! A manual run is a ProbeRun this command creates, so `create proberuns` in the probe's
//! namespace is all a user needs to run probes there.

use std::time::Duration;

use kdiag_api::diagnosis::probe_run::PROBE_RUN_PROBE_LABEL;
use kdiag_api::{CheckerStatus, ProbeRun, ProbeRunPhase, ProbeRunSpec, ProbeRunTrigger};
use kube::api::{Api, ObjectMeta, PostParams};

use super::client::{Fetched, Kube, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output, Scope};

pub const PROBERUNS: &str = "proberuns.diagnosis.netease.com";

const CHECKERS_WIDTH: usize = 40;
const ROOT_CAUSE_WIDTH: usize = 60;
const TRIGGER_WIDTH: usize = 60;

/// `kubectl diag probe …`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ProbeCommand {
    /// Run a probe now, also one with a schedule; prints the run's id.
    #[command(
        after_help = "Exit codes with --wait: 0 every checker PASS or INFO; 4 a checker \
ERROR or WARN; 6 a checker UNKNOWN, no result, or the run could not start; 3 timeout or other errors."
    )]
    Run {
        /// The Probe, as NAMESPACE/NAME or NAME (in -n's namespace).
        probe: String,
        /// Wait for the run's results and print them.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (exit code 3); the run goes on in the cluster.
        #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
        timeout: Duration,
    },
    /// Past runs: what started each (Schedule, Manual), when, the results, the root causes.
    History {
        /// One Probe's runs, as NAMESPACE/NAME or NAME; default every probe's in the namespace.
        probe: Option<String>,
        /// One run in full: every checker with its message, Abnormal and root cause.
        #[arg(short = 'i', long = "id", value_name = "ID")]
        id: Option<String>,
        /// A member cluster's one-time runs, as the fleet hub records them (from the hub's
        /// cluster; as `kubectl probe oncestatus -c -l`); with -i, one of them with the results
        /// of its Probes and their root causes (as `kubectl probe oncestatus -c -i`).
        #[arg(short = 'c', long, value_name = "CLUSTER", conflicts_with = "probe")]
        cluster: Option<String>,
        /// With -c, list the one-time runs (the default; KubeProber's `oncestatus -l`).
        #[arg(short = 'l', long, requires = "cluster", conflicts_with = "id")]
        list: bool,
    },
    /// Run a member cluster's assigned Probes once, now, through the fleet hub (from the hub's
    /// cluster; as `kubectl probe once -c`). Prints the run's id; the results arrive as the
    /// cluster's (`kubectl diag probes -c CLUSTER`).
    #[command(
        after_help = "Exit codes with --wait: 0 every checker PASS or INFO; 4 a checker \
ERROR or WARN; 6 no result; 3 timeout or other errors."
    )]
    Once {
        #[arg(short = 'c', long, value_name = "CLUSTER")]
        cluster: String,
        /// Only these Probes (comma-separated); default every Probe assigned to the cluster.
        #[arg(short = 'p', long, value_delimiter = ',', value_name = "PROBES")]
        probes: Vec<String>,
        /// Wait until the member reports the run finished, and print its results.
        #[arg(long)]
        wait: bool,
        /// With --wait, give up after this long (exit code 3); the run goes on in the member.
        #[arg(long, default_value = "10m", value_parser = crate::duration::parse_duration)]
        timeout: Duration,
    },
}

/// `NAMESPACE/NAME` or `NAME` (in `namespace`).
pub fn parse_target(target: &str, namespace: &str) -> Result<(String, String), DiagError> {
    match target.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        None if !target.is_empty() => Ok((namespace.to_owned(), target.to_owned())),
        _ => Err(DiagError::Usage(format!(
            "{target:?} is not a probe: write NAMESPACE/NAME or NAME"
        ))),
    }
}

fn request<'a>(verb: &'static str, namespace: Option<&'a str>) -> Request<'a> {
    Request {
        verb,
        kind: "ProbeRun",
        resource: PROBERUNS,
        namespace,
        name: None,
    }
}

/// The exit code for a finished (or failed) run: the release gate's codes.
pub fn exit_code(run: &ProbeRun) -> u8 {
    let status = run.status.clone().unwrap_or_default();
    match (status.phase, status.result) {
        (ProbeRunPhase::Finished, Some(CheckerStatus::Pass | CheckerStatus::Info)) => 0,
        (ProbeRunPhase::Finished, Some(CheckerStatus::Error | CheckerStatus::Warn)) => 4,
        _ => 6,
    }
}

/// `probe run`: creates the ProbeRun, prints its id, and with `wait` follows it to its results.
pub async fn run(
    kube: &Kube,
    scope: &Scope,
    probe: &str,
    wait: bool,
    timeout: Duration,
    style: Style,
    print: &mut dyn FnMut(&str),
) -> Result<u8, DiagError> {
    let (ns, name) = parse_target(probe, &scope.namespace)?;
    // Room for the 5 characters the apiserver appends, within a Job name's 63.
    let base: String = name.chars().take(50).collect();
    let run = ProbeRun {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", base.trim_end_matches('-'))),
            namespace: Some(ns.clone()),
            labels: Some([(PROBE_RUN_PROBE_LABEL.to_owned(), label_value(&name))].into()),
            annotations: Some(kdiag_api::diagnosis::probe_run::requested_now()),
            ..Default::default()
        },
        spec: ProbeRunSpec {
            probe: name.clone(),
            trigger: ProbeRunTrigger::Manual,
            ..Default::default()
        },
        status: None,
    };
    let api: Api<ProbeRun> = Api::namespaced(kube.client.clone(), &ns);
    let created = api
        .create(&PostParams::default(), &run)
        .await
        .map_err(|e| request("create", Some(&ns)).explain(e, &kube.url))?;
    let id = created.metadata.name.clone().unwrap_or_default();
    print(&format!("probe run {id} started for Probe {ns}/{name}"));
    if !wait {
        print(&format!(
            "its results: kubectl diag probe history {ns}/{name} -i {id}"
        ));
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = api
            .get(&id)
            .await
            .map_err(|e| request("get", Some(&ns)).named(&id).explain(e, &kube.url));
        match now {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.phase.is_final()) => {
                print(detail(&r, jiff::Timestamp::now(), style).trim_end());
                return Ok(exit_code(&r));
            }
            Ok(_) => {}
            Err(e) if e.is_transient() => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DiagError::RunTimeout {
                namespace: ns,
                id,
                probe: name,
                waited: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn label_value(name: &str) -> String {
    kdiag_api::diagnosis::probe_run::probe_label_value(name)
}

/// `probe history`: the table of runs, or one run in full.
pub async fn history(
    kube: &Kube,
    scope: &Scope,
    probe: Option<&str>,
    id: Option<&str>,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let target = probe
        .map(|p| parse_target(p, &scope.namespace))
        .transpose()?;
    let now = jiff::Timestamp::now();
    if let Some(id) = id {
        let ns = target
            .as_ref()
            .map(|(ns, _)| ns.clone())
            .unwrap_or_else(|| scope.namespace.clone());
        let run = kube
            .get::<ProbeRun>(&ns, id, request("get", Some(&ns)))
            .await?;
        return match output {
            Some(Output::Json) | Some(Output::Yaml) => super::objects(vec![run.raw], true, output),
            _ => match &run.parsed {
                Ok(r) => Ok(detail(r, now, style)),
                Err(e) => Ok(format!("ProbeRun {ns}/{id} cannot be read: {e}\n")),
            },
        };
    }
    let (ns, selector) = match &target {
        Some((ns, name)) => (
            Some(ns.as_str()),
            Some(format!("{PROBE_RUN_PROBE_LABEL}={}", label_value(name))),
        ),
        None => (scope.list_namespace(), None),
    };
    let mut items = kube
        .list_selected::<ProbeRun>(ns, selector.as_deref(), request("list", ns))
        .await?;
    if let Some((_, name)) = &target {
        // The label is cut at 63 characters: the spec says which probe for sure.
        items.retain(|f| f.parsed.as_ref().map_or(true, |r| &r.spec.probe == name));
    }
    items.sort_by(|a, b| {
        let created = |f: &Fetched<ProbeRun>| {
            f.raw["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        (created(b), b.name().to_owned()).cmp(&(created(a), a.name().to_owned()))
    });
    match output {
        Some(Output::Json) | Some(Output::Yaml) => {
            super::objects(items.into_iter().map(|i| i.raw).collect(), false, output)
        }
        _ if items.is_empty() => Ok(String::new()),
        _ => Ok(table(&items, scope.all_namespaces && target.is_none(), now, style).render()),
    }
}

/// One row per run, newest first.
pub fn table(
    items: &[Fetched<ProbeRun>],
    all_namespaces: bool,
    now: jiff::Timestamp,
    style: Style,
) -> Table {
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend([
        "ID",
        "PROBE",
        "TRIGGER",
        "PHASE",
        "RESULT",
        "STARTED",
        "CHECKERS",
        "ROOT CAUSE",
    ]);
    let mut t = Table::new(headers);
    for item in items {
        let mut row = vec![];
        if all_namespaces {
            row.push(item.namespace().to_owned());
        }
        row.push(item.name().to_owned());
        let r = match &item.parsed {
            Ok(r) => r,
            Err(e) => {
                row.extend([
                    String::new(),
                    String::new(),
                    style.paint(Tone::Bad, "<invalid>"),
                    String::new(),
                    String::new(),
                    render::truncate(&format!("cannot be read: {e}"), CHECKERS_WIDTH),
                ]);
                t.row(row);
                continue;
            }
        };
        let st = r.status.clone().unwrap_or_default();
        let result = st.result.map(|s| s.as_str()).unwrap_or("");
        let checkers = st
            .checkers
            .iter()
            .map(|c| format!("{}={}", c.name, c.status))
            .collect::<Vec<_>>()
            .join(" ");
        let root_cause = st
            .checkers
            .iter()
            .filter(|c| c.status.severity() >= CheckerStatus::Unknown.severity())
            .find_map(|c| {
                let d = c.diagnosis.as_ref()?;
                (!d.root_cause.is_empty()).then(|| format!("{}: {}", c.name, d.root_cause))
            })
            .unwrap_or_else(|| st.message.clone());
        row.extend([
            r.spec.probe.clone(),
            trigger_cell(r),
            style.paint(phase_tone(st.phase), st.phase.as_str()),
            style.paint(render::checker_tone(result), result),
            st.started_at
                .as_ref()
                .map(|t| render::age_at(t.0, now))
                .unwrap_or_default(),
            render::truncate(&checkers, CHECKERS_WIDTH),
            render::truncate(&root_cause, ROOT_CAUSE_WIDTH),
        ]);
        t.row(row);
    }
    t
}

/// The TRIGGER column: the trigger, and for a run started by change the first change of its
/// batch (`Change: DaemonSet kube-proxy RolloutFinished +2`). A trigger only watches objects of
/// its Probe's namespace (and Nodes), the run's own, so the namespace is left out.
fn trigger_cell(r: &ProbeRun) -> String {
    let Some(first) = r.spec.changes.first() else {
        return r.spec.trigger.as_str().to_owned();
    };
    let more = r.spec.changes.len() as i64 - 1 + r.spec.changes_omitted.unwrap_or(0);
    let more = if more > 0 {
        format!(" +{more}")
    } else {
        String::new()
    };
    render::truncate(
        &format!(
            "{}: {} {} {}{more}",
            r.spec.trigger.as_str(),
            first.kind,
            first.name,
            first.change
        ),
        TRIGGER_WIDTH,
    )
}

fn phase_tone(phase: ProbeRunPhase) -> Tone {
    match phase {
        ProbeRunPhase::Finished => Tone::Good,
        ProbeRunPhase::Failed => Tone::Bad,
        ProbeRunPhase::Pending | ProbeRunPhase::Running => Tone::Warn,
    }
}

/// One run in full.
pub fn detail(r: &ProbeRun, now: jiff::Timestamp, style: Style) -> String {
    let st = r.status.clone().unwrap_or_default();
    let when = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
        t.as_ref()
            .map(|t| {
                format!(
                    "{} ({} ago)",
                    render::timestamp(t.0),
                    render::age_at(t.0, now)
                )
            })
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10}{v}\n"));
    line(
        "Run:",
        format!(
            "{}/{}",
            r.metadata.namespace.clone().unwrap_or_default(),
            r.metadata.name.clone().unwrap_or_default()
        ),
    );
    line("Probe:", r.spec.probe.clone());
    line("Trigger:", r.spec.trigger.as_str().to_owned());
    for c in &r.spec.changes {
        let when =
            c.at.as_ref()
                .map(|t| format!(" at {}", render::timestamp(t.0)))
                .unwrap_or_default();
        let detail = if c.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.detail)
        };
        line("Change:", format!("{}{detail}{when}", c.summary()));
    }
    if let Some(n) = r.spec.changes_omitted.filter(|n| *n > 0) {
        line("Change:", format!("… and {n} more"));
    }
    line(
        "Phase:",
        style.paint(phase_tone(st.phase), st.phase.as_str()),
    );
    if let Some(result) = st.result {
        line(
            "Result:",
            style.paint(render::checker_tone(result.as_str()), result.as_str()),
        );
    }
    line("Started:", when(&st.started_at));
    line("Finished:", when(&st.finished_at));
    if !st.jobs.is_empty() {
        line("Jobs:", st.jobs.join(", "));
    }
    if !st.message.is_empty() {
        line("Message:", st.message.clone());
    }
    if st.checkers.is_empty() {
        return out;
    }
    out.push_str("Checkers:\n");
    let mut t = Table::new(["CHECKER", "STATUS", "MESSAGE", "ROOT CAUSE", "ABNORMAL"]);
    for c in &st.checkers {
        let d = c.diagnosis.clone().unwrap_or_default();
        let root_cause = if d.root_cause.is_empty() && !d.abnormal.is_empty() {
            format!("({})", d.phase)
        } else {
            d.root_cause
        };
        t.row([
            c.name.clone(),
            style.paint(render::checker_tone(c.status.as_str()), c.status.as_str()),
            c.message.clone(),
            root_cause,
            d.abnormal,
        ]);
    }
    out.push_str(&render::indent(&t.render(), 2));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-12-01T10:05:00Z".parse().unwrap()
    }

    fn run() -> serde_json::Value {
        json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "ProbeRun",
            "metadata": {"name": "k8s-x7k2p", "namespace": "kubeprober", "creationTimestamp": "2026-12-01T10:00:00Z"},
            "spec": {"probe": "k8s", "trigger": "Manual"},
            "status": {"phase": "Finished", "result": "ERROR",
                "startedAt": "2026-12-01T10:00:00Z", "finishedAt": "2026-12-01T10:00:04Z",
                "checkers": [
                    {"name": "dns", "status": "ERROR", "message": "lookup timeout", "lastRun": "2026-12-01T10:00:03Z",
                     "diagnosis": {"abnormal": "kubeprober/probe-k8s-dns-1", "phase": "Succeeded", "rootCause": "coredns is down"}},
                    {"name": "api", "status": "PASS", "lastRun": "2026-12-01T10:00:01Z"}
                ]}
        })
    }

    #[test]
    fn a_probe_is_named_with_or_without_its_namespace() {
        assert_eq!(
            parse_target("kubeprober/k8s", "default").unwrap(),
            ("kubeprober".into(), "k8s".into())
        );
        assert_eq!(
            parse_target("k8s", "default").unwrap(),
            ("default".into(), "k8s".into())
        );
        for bad in ["", "/k8s", "ns/", "a/b/c"] {
            assert!(parse_target(bad, "default").is_err(), "{bad}");
        }
    }

    #[test]
    fn the_history_shows_trigger_results_and_the_root_cause_of_a_failure() {
        let raw = run();
        let item = Fetched {
            parsed: serde_json::from_value(raw.clone())
                .map_err(|e: serde_json::Error| e.to_string()),
            raw,
        };
        let out = table(&[item], false, now(), Style::PLAIN).render();
        let lines: Vec<Vec<&str>> = out
            .lines()
            .map(|l| {
                l.split("   ")
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(
            lines[0],
            [
                "ID",
                "PROBE",
                "TRIGGER",
                "PHASE",
                "RESULT",
                "STARTED",
                "CHECKERS",
                "ROOT CAUSE"
            ]
        );
        assert_eq!(
            lines[1],
            [
                "k8s-x7k2p",
                "k8s",
                "Manual",
                "Finished",
                "ERROR",
                "5m",
                "dns=ERROR api=PASS",
                "dns: coredns is down"
            ],
            "{out}"
        );
    }

    #[test]
    fn one_run_in_full_lists_each_checker_with_its_abnormal() {
        let r: ProbeRun = serde_json::from_value(run()).unwrap();
        let out = detail(&r, now(), Style::PLAIN);
        assert!(out.starts_with("Run:      kubeprober/k8s-x7k2p\n"), "{out}");
        assert!(out.contains("Trigger:  Manual\n"), "{out}");
        assert!(out.contains("Result:   ERROR\n"), "{out}");
        let dns = out
            .lines()
            .find(|l| l.trim_start().starts_with("dns"))
            .unwrap();
        assert!(
            dns.contains("lookup timeout")
                && dns.contains("coredns is down")
                && dns.contains("kubeprober/probe-k8s-dns-1"),
            "{out}"
        );
        assert_eq!(exit_code(&r), 4);
    }

    #[test]
    fn a_run_started_by_change_shows_what_changed_in_history_and_in_full() {
        let mut raw = run();
        raw["spec"] = json!({"probe": "k8s", "trigger": "Change", "changesOmitted": 3,
            "changes": [
                {"kind": "DaemonSet", "namespace": "kube-system", "name": "kube-proxy",
                 "change": "RolloutFinished", "detail": "generation 4, 1/1 ready",
                 "at": "2026-12-01T09:59:58Z"},
                {"kind": "Node", "name": "n1", "change": "ConditionChanged",
                 "detail": "Ready False -> True"}]});
        let item = Fetched {
            parsed: serde_json::from_value(raw.clone())
                .map_err(|e: serde_json::Error| e.to_string()),
            raw: raw.clone(),
        };
        let out = table(&[item], false, now(), Style::PLAIN).render();
        assert!(
            out.contains("Change: DaemonSet kube-proxy RolloutFinished +4"),
            "{out}"
        );
        let r: ProbeRun = serde_json::from_value(raw).unwrap();
        let out = detail(&r, now(), Style::PLAIN);
        assert!(out.contains("Trigger:  Change\n"), "{out}");
        assert!(
            out.contains("Change:   DaemonSet kube-system/kube-proxy RolloutFinished (generation 4, 1/1 ready) at "),
            "{out}"
        );
        assert!(
            out.contains("Change:   Node n1 ConditionChanged (Ready False -> True)\n"),
            "{out}"
        );
        assert!(out.contains("Change:   … and 3 more\n"), "{out}");
    }
}
