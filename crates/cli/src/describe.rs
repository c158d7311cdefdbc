//! `kubectl diag describe NAME`: the whole story of one Abnormal as a timeline: what triggered
//! it, every step with its processor, result, duration and message, the commands and their
//! output, the profilers, the root cause with its evidence, and the Events recorded on it.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::events::v1 as events;
use kdiag_api::{
    Abnormal, AbnormalConditionType, AbnormalSourceType, ConditionStatus, ProcessorKind,
    ProcessorRecord, Stage,
};
use kube::api::{Api, ListParams};

use super::client::{Kube, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output};

/// Lines of a command's stdout or stderr shown before the rest is left to `-o yaml`.
const OUTPUT_LINES: usize = 30;

pub async fn run(
    kube: &Kube,
    namespace: &str,
    name: &str,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let fetched = kube
        .get::<Abnormal>(namespace, name, Request::abnormals("get", Some(namespace)))
        .await?;
    if matches!(output, Some(Output::Json) | Some(Output::Yaml)) {
        return super::objects(vec![fetched.raw], true, output);
    }
    let abnormal = fetched.parsed.map_err(|e| {
        DiagError::Usage(format!(
            "Abnormal {namespace}/{name} cannot be read by kdiag ({e}); see it as stored with: kubectl get abnormal {name} -n {namespace} -o yaml"
        ))
    })?;
    let events = fetch_events(kube, namespace, name).await;
    Ok(describe(&abnormal, &events, jiff::Timestamp::now(), style))
}

/// An Event about the Abnormal, from either Events API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub uid: String,
    pub type_: String,
    pub reason: String,
    pub time: Option<jiff::Timestamp>,
    pub from: String,
    pub message: String,
    pub count: i32,
}

/// What the Events section shows: the rows, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Events {
    pub rows: Vec<EventRow>,
    /// Set when neither Events API could be read (usually RBAC).
    pub unavailable: Option<String>,
}

/// The Events whose object is the Abnormal. Both APIs are read: kdiag records events.k8s.io/v1
/// Events, other tools may record core/v1 ones, and a user's RBAC may allow only one of the two.
/// Both serve the same stored objects, so rows are merged by uid.
async fn fetch_events(kube: &Kube, namespace: &str, name: &str) -> Events {
    let mut rows: Vec<EventRow> = Vec::new();
    let mut failures = Vec::new();
    let core_api: Api<core::Event> = Api::namespaced(kube.client.clone(), namespace);
    let core_params = ListParams::default().fields(&format!(
        "involvedObject.name={name},involvedObject.namespace={namespace}"
    ));
    match core_api.list(&core_params).await {
        Ok(list) => rows.extend(
            list.items
                .into_iter()
                .filter(|e| e.involved_object.kind.as_deref() == Some("Abnormal"))
                .map(from_core),
        ),
        Err(e) => failures.push(format!(
            "core/v1 events: {}",
            super::client::error_chain(&e)
        )),
    }
    let new_api: Api<events::Event> = Api::namespaced(kube.client.clone(), namespace);
    let new_params = ListParams::default().fields(&format!("regarding.name={name}"));
    match new_api.list(&new_params).await {
        Ok(list) => {
            for e in list.items.into_iter().filter(|e| {
                e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Abnormal")
            }) {
                let row = from_events_v1(e);
                if !rows.iter().any(|r| r.uid == row.uid) {
                    rows.push(row);
                }
            }
        }
        Err(e) => failures.push(format!(
            "events.k8s.io/v1 events: {}",
            super::client::error_chain(&e)
        )),
    }
    rows.sort_by_key(|r| r.time);
    let unavailable = (failures.len() == 2).then(|| failures.join("; "));
    Events { rows, unavailable }
}

fn from_core(e: core::Event) -> EventRow {
    EventRow {
        uid: e.metadata.uid.unwrap_or_default(),
        type_: e.type_.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        time: e
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.map(|t| t.0))
            .or(e.event_time.map(|t| t.0))
            .or(e.first_timestamp.map(|t| t.0))
            .or(e.metadata.creation_timestamp.map(|t| t.0)),
        from: e
            .reporting_component
            .filter(|c| !c.is_empty())
            .or(e.source.and_then(|s| s.component))
            .unwrap_or_default(),
        message: e.message.unwrap_or_default(),
        count: e
            .series
            .map(|s| s.count.unwrap_or(1))
            .or(e.count)
            .unwrap_or(1),
    }
}

fn from_events_v1(e: events::Event) -> EventRow {
    EventRow {
        uid: e.metadata.uid.unwrap_or_default(),
        type_: e.type_.unwrap_or_default(),
        reason: e.reason.unwrap_or_default(),
        time: e
            .series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.map(|t| t.0))
            .or(e.deprecated_last_timestamp.map(|t| t.0))
            .or(e.metadata.creation_timestamp.map(|t| t.0)),
        from: e
            .reporting_controller
            .or(e.deprecated_source.and_then(|s| s.component))
            .unwrap_or_default(),
        message: e.note.unwrap_or_default(),
        count: e
            .series
            .map(|s| s.count)
            .or(e.deprecated_count)
            .unwrap_or(1),
    }
}

/// The whole description. Pure: everything it shows is in its arguments.
pub fn describe(a: &Abnormal, events: &Events, now: jiff::Timestamp, style: Style) -> String {
    let mut out = String::new();
    let status = a.status.clone().unwrap_or_default();
    let h = |s: &str| style.paint(Tone::Heading, s);
    let created = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let phase = status
        .phase
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "<pending>".into());

    field(
        &mut out,
        &h("Name:"),
        a.metadata.name.as_deref().unwrap_or(""),
    );
    field(
        &mut out,
        &h("Namespace:"),
        a.metadata.namespace.as_deref().unwrap_or(""),
    );
    field(
        &mut out,
        &h("Phase:"),
        &style.paint(render::phase_tone(&phase), &phase),
    );
    if !status.reason.is_empty() {
        field(&mut out, &h("Reason:"), &status.reason);
    }
    if !status.message.is_empty() {
        field(
            &mut out,
            &h("Message:"),
            &continued(&status.message, LABEL_WIDTH),
        );
    }
    field(
        &mut out,
        &h("Node:"),
        if a.spec.node_name.is_empty() {
            "<none>"
        } else {
            &a.spec.node_name
        },
    );
    if let Some(t) = created {
        field(
            &mut out,
            &h("Created:"),
            &format!("{} ({} ago)", render::timestamp(t), render::age_at(t, now)),
        );
    }
    if let (Some(t0), Some(end)) = (created, finished_at(a)) {
        field(
            &mut out,
            &h("Took:"),
            &render::duration_ms(duration_ms(t0, end)),
        );
    }

    out.push('\n');
    out.push_str(&h("Trigger:"));
    out.push('\n');
    for (label, value) in trigger(a) {
        field(
            &mut out,
            &format!("  {label}:"),
            &continued(&value, LABEL_WIDTH),
        );
    }

    out.push('\n');
    root_cause(&mut out, a, style);

    out.push('\n');
    out.push_str(&h("Timeline:"));
    out.push('\n');
    out.push_str(&render::indent(&timeline(a, style), 2));
    out.push('\n');

    if !status.command_executors.is_empty() {
        out.push('\n');
        out.push_str(&h("Commands:"));
        out.push('\n');
        let name = a.metadata.name.as_deref().unwrap_or("");
        for (i, c) in status.command_executors.iter().enumerate() {
            let outcome = if c.error.is_empty() {
                style.paint(Tone::Good, "ok")
            } else if c.was_denied() {
                // Never ran: the Timeline records it Skipped, so say the same here.
                style.paint(Tone::Warn, &format!("skipped: {}", c.error))
            } else {
                style.paint(Tone::Bad, &format!("failed: {}", c.error))
            };
            let _ = writeln!(
                out,
                "  {} [{}]  {}",
                shell_words(&c.command),
                c.type_.as_str(),
                outcome
            );
            for (label, text, field_name) in [
                ("stdout", &c.stdout, "stdout"),
                ("stderr", &c.stderr, "stderr"),
            ] {
                if text.trim().is_empty() {
                    continue;
                }
                let _ = writeln!(out, "    {label}:");
                let lines: Vec<&str> = text.lines().collect();
                for l in lines.iter().take(OUTPUT_LINES) {
                    let _ = writeln!(out, "      {l}");
                }
                if lines.len() > OUTPUT_LINES {
                    let _ = writeln!(
                        out,
                        "      … {} more lines: kubectl get abnormal {name} -o jsonpath='{{.status.commandExecutors[{i}].{field_name}}}'",
                        lines.len() - OUTPUT_LINES
                    );
                }
            }
        }
    }

    if !status.profilers.is_empty() {
        out.push('\n');
        out.push_str(&h("Profilers:"));
        out.push('\n');
        for p in &status.profilers {
            let result = if !p.error.is_empty() {
                style.paint(Tone::Bad, &format!("failed: {}", p.error))
            } else if p.endpoint.is_empty() {
                "no result yet".to_owned()
            } else {
                format!("result at {}", p.endpoint)
            };
            let _ = writeln!(out, "  {} [{}]  {}", p.name, p.type_.as_str(), result);
        }
    }

    if let Some(context) = status.context.as_ref().filter(|c| !c.is_empty()) {
        out.push('\n');
        let keys: Vec<&str> = context.keys().map(String::as_str).collect();
        field(&mut out, &h("Collected:"), &keys.join(", "));
        let _ = writeln!(
            out,
            "{:LABEL_WIDTH$}(the data: kubectl get abnormal {} -o jsonpath='{{.status.context}}')",
            "",
            a.metadata.name.as_deref().unwrap_or("")
        );
    }

    out.push('\n');
    out.push_str(&h("Events:"));
    match (&events.unavailable, events.rows.is_empty()) {
        (Some(why), true) => {
            let _ = writeln!(out, "  <cannot be read: {why}>");
        }
        (_, true) => out.push_str("  <none>\n"),
        (_, false) => {
            out.push('\n');
            let mut t = Table::new(["TYPE", "REASON", "AGE", "FROM", "MESSAGE"]);
            for e in &events.rows {
                let age = e.time.map(|t| render::age_at(t, now)).unwrap_or_default();
                let age = if e.count > 1 {
                    format!("{age} (x{})", e.count)
                } else {
                    age
                };
                let tone = if e.type_ == "Warning" {
                    Tone::Warn
                } else {
                    Tone::Dim
                };
                t.row([
                    style.paint(tone, &e.type_),
                    e.reason.clone(),
                    age,
                    e.from.clone(),
                    render::truncate(&e.message, 120),
                ]);
            }
            out.push_str(&render::indent(&t.render(), 2));
            out.push('\n');
        }
    }
    out
}

const LABEL_WIDTH: usize = 14;

fn field(out: &mut String, label: &str, value: &str) {
    let pad = LABEL_WIDTH
        .saturating_sub(render::visible_width(label))
        .max(1);
    let _ = writeln!(out, "{label}{}{value}", " ".repeat(pad));
}

/// Continuation lines of a multi-line value, aligned under its first line.
fn continued(value: &str, by: usize) -> String {
    let mut lines = value.lines();
    let first = lines.next().unwrap_or("").to_owned();
    lines.fold(first, |acc, l| format!("{acc}\n{}{l}", " ".repeat(by)))
}

/// What started the Abnormal and what it is about, as label/value pairs.
pub fn trigger(a: &Abnormal) -> Vec<(&'static str, String)> {
    let mut t = vec![("Source", a.spec.source.as_str().to_owned())];
    match a.spec.source {
        AbnormalSourceType::Custom => t.push((
            "Created by",
            "a person or a tool (kubectl diag run, kubectl create, …)".into(),
        )),
        AbnormalSourceType::KubernetesEvent => match &a.spec.kubernetes_event {
            Some(e) => {
                let o = &e.involved_object;
                let mut line = format!(
                    "{} {} on {} {}",
                    e.type_.as_deref().unwrap_or("Normal"),
                    e.reason.as_deref().unwrap_or("<no reason>"),
                    o.kind.as_deref().unwrap_or("object"),
                    object_name(o.namespace.as_deref(), o.name.as_deref().unwrap_or("?"))
                );
                if let Some(c) = e.count.filter(|c| *c > 1) {
                    let _ = write!(line, " (x{c})");
                }
                if let Some(last) = e.last_timestamp.as_ref().or(e.first_timestamp.as_ref()) {
                    let _ = write!(line, ", last at {}", render::timestamp(last.0));
                }
                t.push(("Event", line));
                if let Some(m) = e.message.as_deref().filter(|m| !m.is_empty()) {
                    t.push(("Message", m.to_owned()));
                }
            }
            None => t.push(("Event", "<not recorded in spec.kubernetesEvent>".into())),
        },
        AbnormalSourceType::PrometheusAlert => match &a.spec.prometheus_alert {
            Some(alert) => {
                let name = alert
                    .labels
                    .get("alertname")
                    .cloned()
                    .unwrap_or_else(|| "<no alertname>".into());
                let mut line = name;
                if let Some(s) = &alert.starts_at {
                    let _ = write!(line, ", firing since {}", render::timestamp(s.0));
                }
                t.push(("Alert", line));
                let labels: Vec<String> = alert
                    .labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != "alertname")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                if !labels.is_empty() {
                    t.push(("Labels", labels.join(", ")));
                }
                for key in ["summary", "description", "message"] {
                    if let Some(v) = alert.annotations.get(key) {
                        t.push(("Annotation", format!("{key}: {v}")));
                    }
                }
            }
            None => t.push(("Alert", "<not recorded in spec.prometheusAlert>".into())),
        },
        AbnormalSourceType::ProbeStatus => match &a.spec.probe_status {
            Some(p) => {
                let mut line = format!("checker {} of probe {}/{}", p.checker, p.namespace, p.name);
                if !p.status.is_empty() {
                    let _ = write!(line, " was {}", p.status);
                }
                t.push(("Probe", line));
                if !p.message.is_empty() {
                    t.push(("Message", p.message.clone()));
                }
            }
            None => t.push(("Probe", "<not recorded in spec.probeStatus>".into())),
        },
    }
    if let Some(p) = &a.spec.pod_reference {
        let ns = if p.namespace.is_empty() {
            a.metadata.namespace.as_deref()
        } else {
            Some(p.namespace.as_str())
        };
        let mut line = object_name(ns, &p.name);
        if !p.container_name.is_empty() {
            let _ = write!(line, " (container {})", p.container_name);
        }
        t.push(("Pod", line));
    }
    if !a.spec.node_name.is_empty() {
        t.push(("Node", a.spec.node_name.clone()));
    }
    t
}

fn object_name(namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|n| !n.is_empty()) {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

fn root_cause(out: &mut String, a: &Abnormal, style: Style) {
    let status = a.status.clone().unwrap_or_default();
    let label = style.paint(Tone::Heading, "Root cause:");
    let Some(rc) = &status.root_cause else {
        let text = match status.phase {
            Some(p) if p.is_final() => style.paint(Tone::Warn, "none found"),
            _ => "not yet known".to_owned(),
        };
        field(out, &label, &text);
        return;
    };
    field(out, &label, &style.paint(Tone::Bad, &rc.summary));
    field(out, "  Reason:", &rc.reason);
    if let Some(since) = &rc.since {
        field(out, "  Since:", &render::timestamp(since.0));
    }
    let by = if !rc.processor.is_empty() {
        Some(rc.processor.clone())
    } else {
        status.diagnoser.as_ref().map(|d| d.to_string())
    };
    if let Some(by) = by {
        field(out, "  Found by:", &by);
    }
    if !rc.suggestion.is_empty() {
        field(
            out,
            "  Suggestion:",
            &continued(&rc.suggestion, LABEL_WIDTH),
        );
    }
    if !rc.evidence.is_empty() {
        out.push_str("  Evidence:\n");
        for e in &rc.evidence {
            let mut line = format!("    - [{}]", e.kind);
            if !e.object.is_empty() {
                let _ = write!(line, " {}:", e.object);
            }
            let _ = write!(line, " {}", e.message);
            let mut notes = vec![];
            if let Some(t) = &e.timestamp {
                notes.push(format!("at {}", render::timestamp(t.0)));
            }
            if !e.context_key.is_empty() {
                notes.push(format!("from status.context.{}", e.context_key));
            }
            if !notes.is_empty() {
                let _ = write!(line, " ({})", notes.join(", "));
            }
            out.push_str(&continued(&line, 6));
            out.push('\n');
        }
    }
    if !rc.others.is_empty() {
        // Other causes the diagnoser found, ranked after this one: often a consequence of it.
        out.push_str(
            "  Also found:
",
        );
        for o in &rc.others {
            let mut line = format!("    - {} ({})", o.summary, o.reason);
            if let Some(t) = &o.since {
                let _ = write!(line, " since {}", render::timestamp(t.0));
            }
            out.push_str(&continued(&line, 6));
            out.push('\n');
        }
    }
}

/// When the Abnormal reached its final phase, as far as the status tells: the last step's end
/// or the last condition change.
pub fn finished_at(a: &Abnormal) -> Option<jiff::Timestamp> {
    let status = a.status.as_ref()?;
    if !status.phase.is_some_and(|p| p.is_final()) {
        return None;
    }
    let step_ends = status.processors.iter().map(|r| {
        r.start_time
            .0
            .checked_add(jiff::SignedDuration::from_millis(
                r.duration_milliseconds.unwrap_or(0),
            ))
            .unwrap_or(r.start_time.0)
    });
    let conditions = status
        .conditions
        .iter()
        .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0));
    step_ends.chain(conditions).max()
}

fn duration_ms(from: jiff::Timestamp, to: jiff::Timestamp) -> i64 {
    i64::try_from(to.duration_since(from).as_millis()).unwrap_or(i64::MAX)
}

/// The steps in the order they happened: admission, then each stage's commands, profilers and
/// processors with the stage's outcome, then the final phase. Offsets count from creation.
pub fn timeline(a: &Abnormal, style: Style) -> String {
    let status = a.status.clone().unwrap_or_default();
    let origin = a.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let at = |t: Option<jiff::Timestamp>| match (origin, t) {
        (Some(o), Some(t)) => render::offset(o, t),
        _ => String::new(),
    };
    let mut t = Table::new(["WHEN", "STAGE", "STEP", "RESULT", "TOOK", "MESSAGE"]);
    t.row([
        at(origin),
        "Created".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ]);
    let condition = |ty: AbnormalConditionType| status.conditions.iter().find(|c| c.type_ == ty);
    match condition(AbnormalConditionType::Accepted) {
        Some(c) => {
            let (result, tone) = if c.status == ConditionStatus::True {
                ("Accepted", Tone::Good)
            } else {
                ("Rejected", Tone::Bad)
            };
            t.row([
                at(c.last_transition_time.as_ref().map(|t| t.0)),
                "Admission".into(),
                "kdiag-controller".into(),
                style.paint(tone, result),
                String::new(),
                one_line(&c.message),
            ]);
        }
        None if status.phase.is_none() => {
            let message = if status.reason.is_empty() {
                "waiting for the controller to admit it".to_owned()
            } else {
                format!("{}: {}", status.reason, one_line(&status.message))
            };
            t.row([
                String::new(),
                "Admission".into(),
                "kdiag-controller".into(),
                style.paint(Tone::Warn, "Pending"),
                String::new(),
                message,
            ]);
        }
        None => {}
    }
    for stage in Stage::ALL {
        for r in status.processors.iter().filter(|r| r.stage == stage) {
            t.row(step_row(r, origin, style));
        }
        if let Some(c) = condition(stage.condition()) {
            let (result, tone) = match (c.status, c.reason.as_str()) {
                (_, "Skipped") => ("Skipped", Tone::Dim),
                (ConditionStatus::True, _) => ("Succeeded", Tone::Good),
                (ConditionStatus::False, _) => ("Failed", Tone::Bad),
                (ConditionStatus::Unknown, _) => ("Unknown", Tone::Warn),
            };
            t.row([
                at(c.last_transition_time.as_ref().map(|t| t.0)),
                stage.as_str().into(),
                format!("{} (stage)", c.type_.as_str()),
                style.paint(tone, result),
                String::new(),
                one_line(&c.message),
            ]);
        }
    }
    if let Some(p) = status.phase.filter(|p| p.is_final()) {
        t.row([
            at(finished_at(a)),
            style.paint(render::phase_tone(p.as_str()), p.as_str()),
            String::new(),
            String::new(),
            String::new(),
            if status.reason.is_empty() {
                String::new()
            } else {
                status.reason.clone()
            },
        ]);
    }
    t.render()
}

/// One step as a timeline row.
pub fn step_row(r: &ProcessorRecord, origin: Option<jiff::Timestamp>, style: Style) -> Vec<String> {
    let when = origin
        .map(|o| render::offset(o, r.start_time.0))
        .unwrap_or_default();
    let step = match r.kind {
        ProcessorKind::Processor => r.processor.clone(),
        ProcessorKind::CommandExecutor => format!("command {}", r.processor),
        ProcessorKind::Profiler => r.processor.clone(),
    };
    vec![
        when,
        r.stage.as_str().into(),
        step,
        style.paint(render::result_tone(r.result.as_str()), r.result.as_str()),
        r.duration_milliseconds
            .map(render::duration_ms)
            .unwrap_or_default(),
        one_line(&r.message),
    ]
}

/// Table cells hold one line; the first line of a long message says the most.
fn one_line(s: &str) -> String {
    render::truncate(s, 160)
}

/// An argv as a person would type it: words a POSIX shell would read differently are quoted
/// (`shlex`). An argument holding a NUL byte cannot be typed at all; that argv is shown as a list.
pub fn shell_words(argv: &[String]) -> String {
    shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| format!("{argv:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn example() -> Abnormal {
        serde_json::from_value(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "web-oom", "namespace": "shop", "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {
                "source": "KubernetesEvent", "nodeName": "node-a",
                "podReference": {"namespace": "shop", "name": "web", "container": "app"},
                "kubernetesEvent": {
                    "metadata": {"name": "web.1", "namespace": "shop"},
                    "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web"},
                    "type": "Warning", "reason": "OOMKilling", "count": 3,
                    "message": "Memory cgroup out of memory: Killed process 4242 (python)",
                    "lastTimestamp": "2026-11-22T09:59:58Z"
                },
                "assignedInformationCollectors": [{"namespace": "kube-diagnoser", "name": "pod-collector"}],
                "assignedDiagnosers": [{"namespace": "kube-diagnoser", "name": "oom-diagnoser"}],
                "commandExecutors": [{"command": ["ps", "-o", "pid,rss,comm"], "type": "InformationCollector"}]
            },
            "status": {
                "phase": "Succeeded", "identifiable": true, "recoverable": false,
                "startTime": "2026-11-22T10:00:00Z",
                "diagnoser": {"namespace": "kube-diagnoser", "name": "oom-diagnoser"},
                "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "routed to node node-a", "lastTransitionTime": "2026-11-22T10:00:00Z"},
                    {"type": "InformationCollected", "status": "True", "reason": "Collected", "message": "1 of 1 collectors succeeded", "lastTransitionTime": "2026-11-22T10:00:01Z"},
                    {"type": "Identified", "status": "True", "reason": "Identified", "message": "kube-diagnoser/oom-diagnoser identified OOMKilled", "lastTransitionTime": "2026-11-22T10:00:02Z"},
                    {"type": "Recovered", "status": "False", "reason": "Skipped", "message": "no recoverers assigned", "lastTransitionTime": "2026-11-22T10:00:02Z"}
                ],
                "commandExecutors": [{"command": ["ps", "-o", "pid,rss,comm"], "type": "InformationCollector",
                    "stdout": "  PID   RSS COMMAND\n 4242 65536 python\n"}],
                "processors": [
                    {"processor": "ps -o pid,rss,comm", "kind": "CommandExecutor", "stage": "InformationCollecting", "result": "Succeeded", "startTime": "2026-11-22T10:00:00Z", "durationMilliseconds": 12},
                    {"processor": "kube-diagnoser/pod-collector", "kind": "Processor", "stage": "InformationCollecting", "result": "Succeeded", "message": "collected 12 pods on node-a", "startTime": "2026-11-22T10:00:01Z", "durationMilliseconds": 4},
                    {"processor": "kube-diagnoser/oom-diagnoser", "kind": "Processor", "stage": "Diagnosing", "result": "Succeeded", "message": "OOMKilled", "startTime": "2026-11-22T10:00:01Z", "durationMilliseconds": 1500}
                ],
                "context": {"podInformation": [], "processInformation": []},
                "rootCause": {
                    "summary": "container app of pod shop/web was OOM-killed at its 64Mi limit",
                    "reason": "OOMKilled", "processor": "kube-diagnoser/oom-diagnoser",
                    "suggestion": "raise the memory limit of container app",
                    "evidence": [{"kind": "KernelLog", "object": "pod/shop/web", "message": "Killed process 4242 (python)", "contextKey": "kernelLog", "timestamp": "2026-11-22T09:59:58Z"}],
                    "since": "2026-11-22T09:50:00Z",
                    "others": [{"reason": "CrashLoopBackOff", "summary": "container app of pod shop/web is restarting in a loop", "since": "2026-11-22T09:52:00Z"}]
                }
            }
        })).unwrap()
    }

    fn events() -> Events {
        Events {
            rows: vec![EventRow {
                uid: "1".into(),
                type_: "Normal".into(),
                reason: "Accepted".into(),
                time: Some("2026-11-22T10:00:00Z".parse().unwrap()),
                from: "kdiag-controller".into(),
                message: "routed to node node-a".into(),
                count: 1,
            }],
            unavailable: None,
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-11-22T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn describe_tells_the_whole_story_in_order() {
        let out = describe(&example(), &events(), now(), Style::PLAIN);
        let order = [
            "Name:         web-oom",
            "Phase:        Succeeded",
            "Created:      2026-11-22T10:00:00Z (5m ago)",
            "Took:         2.5s",
            "Trigger:",
            "  Source:     KubernetesEvent",
            "  Event:      Warning OOMKilling on Pod shop/web (x3), last at 2026-11-22T09:59:58Z",
            "  Message:    Memory cgroup out of memory: Killed process 4242 (python)",
            "  Pod:        shop/web (container app)",
            "Root cause:   container app of pod shop/web was OOM-killed at its 64Mi limit",
            "  Reason:     OOMKilled",
            "  Since:      2026-11-22T09:50:00Z",
            "  Found by:   kube-diagnoser/oom-diagnoser",
            "  Suggestion: raise the memory limit of container app",
            "    - [KernelLog] pod/shop/web: Killed process 4242 (python) (at 2026-11-22T09:59:58Z, from status.context.kernelLog)",
            "  Also found:",
            "    - container app of pod shop/web is restarting in a loop (CrashLoopBackOff) since 2026-11-22T09:52:00Z",
            "Timeline:",
            "Commands:",
            "  ps -o 'pid,rss,comm' [InformationCollector]  ok",
            "       4242 65536 python",
            "Collected:    podInformation, processInformation",
            "Events:",
            "routed to node node-a",
        ];
        let mut from = 0;
        for needle in order {
            let at = out[from..]
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing after byte {from} in:\n{out}"));
            from += at + needle.len();
        }
        assert!(!out.contains('\x1b'), "plain output has no colour");
    }

    #[test]
    fn the_timeline_lists_admission_each_step_and_each_stage_outcome() {
        let out = timeline(&example(), Style::PLAIN);
        assert_eq!(
            out,
            "\
WHEN    STAGE                   STEP                           RESULT      TOOK   MESSAGE
+0s     Created
+0s     Admission               kdiag-controller               Accepted           routed to node node-a
+0s     InformationCollecting   command ps -o pid,rss,comm     Succeeded   12ms
+1s     InformationCollecting   kube-diagnoser/pod-collector   Succeeded   4ms    collected 12 pods on node-a
+1s     InformationCollecting   InformationCollected (stage)   Succeeded          1 of 1 collectors succeeded
+1s     Diagnosing              kube-diagnoser/oom-diagnoser   Succeeded   1.5s   OOMKilled
+2s     Diagnosing              Identified (stage)             Succeeded          kube-diagnoser/oom-diagnoser identified OOMKilled
+2s     Recovering              Recovered (stage)              Skipped            no recoverers assigned
+2.5s   Succeeded
"
        );
    }

    #[test]
    fn a_command_denied_by_policy_is_shown_skipped_as_in_the_timeline() {
        let mut a = example();
        let status = a.status.as_mut().unwrap();
        status.command_executors[0].stdout.clear();
        status.command_executors[0].error =
            "denied by policy rule commands.allow: ps is not allowed".into();
        let out = describe(&a, &events(), now(), Style::PLAIN);
        assert!(
            out.contains("[InformationCollector]  skipped: denied by policy rule commands.allow"),
            "{out}"
        );
        assert!(!out.contains("failed: denied"), "{out}");
    }

    #[test]
    fn an_abnormal_nobody_admitted_says_it_waits_for_the_controller() {
        let mut a = example();
        a.status = None;
        let out = describe(&a, &Events::default(), now(), Style::PLAIN);
        assert!(out.contains("Phase:        <pending>"), "{out}");
        assert!(
            out.contains("waiting for the controller to admit it"),
            "{out}"
        );
        assert!(out.contains("Root cause:   not yet known"), "{out}");
        assert!(out.contains("Events:  <none>"), "{out}");
    }

    #[test]
    fn a_failed_diagnosis_says_none_was_found_and_why() {
        let mut a = example();
        let st = a.status.as_mut().unwrap();
        st.phase = Some(kdiag_api::AbnormalPhase::Failed);
        st.root_cause = None;
        st.reason = "NotIdentified".into();
        st.message =
            "no diagnoser identified the cause:\n- kube-diagnoser/oom-diagnoser: no OOM kill found"
                .into();
        let out = describe(&a, &events(), now(), Style::PLAIN);
        assert!(out.contains("Reason:       NotIdentified"), "{out}");
        assert!(
            out.contains("Message:      no diagnoser identified the cause:\n              - kube-diagnoser/oom-diagnoser"),
            "{out}"
        );
        assert!(out.contains("Root cause:   none found"), "{out}");
    }

    #[test]
    fn colour_marks_phase_results_and_root_cause_when_asked() {
        let out = describe(&example(), &events(), now(), Style::COLOUR);
        assert!(out.contains("\x1b[32mSucceeded\x1b[0m"), "{out}");
        assert!(
            out.contains("\x1b[31mcontainer app of pod shop/web"),
            "{out}"
        );
    }

    #[test]
    fn long_command_output_is_cut_with_the_way_to_the_rest() {
        let mut a = example();
        a.status.as_mut().unwrap().command_executors[0].stdout =
            (0..100).map(|i| format!("line {i}\n")).collect();
        let out = describe(&a, &events(), now(), Style::PLAIN);
        assert!(out.contains("      line 29\n"), "{out}");
        assert!(!out.contains("line 30\n"), "{out}");
        assert!(
            out.contains("… 70 more lines: kubectl get abnormal web-oom -o jsonpath='{.status.commandExecutors[0].stdout}'"),
            "{out}"
        );
    }

    #[test]
    fn every_trigger_kind_is_told_in_words() {
        let a: Abnormal = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"source": "PrometheusAlert", "nodeName": "n1",
                "prometheusAlert": {"labels": {"alertname": "NodeDiskFull", "severity": "critical"},
                    "annotations": {"summary": "disk / is 97% full"}, "startsAt": "2026-11-22T09:00:00Z"}}
        }))
        .unwrap();
        let t = trigger(&a);
        assert!(
            t.contains(&(
                "Alert",
                "NodeDiskFull, firing since 2026-11-22T09:00:00Z".into()
            )),
            "{t:?}"
        );
        assert!(t.contains(&("Labels", "severity=critical".into())), "{t:?}");
        assert!(
            t.contains(&("Annotation", "summary: disk / is 97% full".into())),
            "{t:?}"
        );

        let p: Abnormal = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"source": "ProbeStatus", "nodeName": "n1",
                "probeStatus": {"namespace": "probes", "name": "k8s", "checker": "dns-resolution", "status": "ERROR", "message": "lookup kubernetes.default timed out"}}
        }))
        .unwrap();
        let t = trigger(&p);
        assert!(
            t.contains(&(
                "Probe",
                "checker dns-resolution of probe probes/k8s was ERROR".into()
            )),
            "{t:?}"
        );
    }

    #[test]
    fn commands_are_shown_as_a_person_would_type_them() {
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shell_words(&argv(&["du", "-sh", "/var/lib"])),
            "du -sh /var/lib"
        );
        assert_eq!(
            shell_words(&argv(&["sh", "-c", "echo it's"])),
            r#"sh -c "echo it's""#
        );
        // shlex also quotes what only some shells or positions treat specially: `=` (an
        // assignment as the first word), `,` (brace expansion), `%` (a job).
        assert_eq!(
            shell_words(&argv(&[
                "env",
                "A=1",
                "",
                "echo $HOME",
                "ps",
                "-o",
                "pid,rss"
            ])),
            "env 'A=1' '' 'echo $HOME' ps -o 'pid,rss'"
        );
        assert_eq!(shell_words(&argv(&["a\0b"])), r#"["a\0b"]"#);
    }
}
