//! `kubectl diag get [NAME]`: Abnormals with their phase, node, source, root cause and age.

use kdiag_api::{Abnormal, ProcessorResult};

use super::client::{Fetched, Kube, Request};
use super::render::{self, Style, Table, Tone};
use super::{DiagError, Output, Scope};

/// The root cause column is cut here in the normal table; `-o wide` shows it whole.
const ROOT_CAUSE_WIDTH: usize = 60;

pub async fn run(
    kube: &Kube,
    scope: &Scope,
    name: Option<&str>,
    output: Option<Output>,
    style: Style,
) -> Result<String, DiagError> {
    let items = match name {
        Some(name) => {
            vec![
                kube.get::<Abnormal>(
                    &scope.namespace,
                    name,
                    Request::abnormals("get", Some(&scope.namespace)),
                )
                .await?,
            ]
        }
        None => {
            let ns = scope.list_namespace();
            kube.list::<Abnormal>(ns, Request::abnormals("list", ns))
                .await?
        }
    };
    match output {
        Some(Output::Json) | Some(Output::Yaml) => super::objects(
            items.into_iter().map(|i| i.raw).collect(),
            name.is_some(),
            output,
        ),
        _ => {
            if items.is_empty() {
                return Ok(String::new());
            }
            Ok(table(
                &items,
                scope.all_namespaces,
                output == Some(Output::Wide),
                jiff::Timestamp::now(),
                style,
            )
            .render())
        }
    }
}

/// What `get` prints when there is nothing, on stderr like kubectl.
pub fn nothing_found(scope: &Scope) -> String {
    if scope.all_namespaces {
        "No Abnormals found.".into()
    } else {
        format!("No Abnormals found in {} namespace.", scope.namespace)
    }
}

/// The table of Abnormals.
pub fn table(
    items: &[Fetched<Abnormal>],
    all_namespaces: bool,
    wide: bool,
    now: jiff::Timestamp,
    style: Style,
) -> Table {
    let mut headers = vec![];
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "PHASE", "NODE", "SOURCE", "ROOT CAUSE", "AGE"]);
    if wide {
        headers.extend(["REASON", "STARTED", "STEPS"]);
    }
    let mut t = Table::new(headers);
    for item in items {
        let mut row = vec![];
        if all_namespaces {
            row.push(item.namespace().to_owned());
        }
        row.push(item.name().to_owned());
        match &item.parsed {
            Ok(a) => {
                let s = Summary::of(a);
                row.push(style.paint(render::phase_tone(&s.phase), &s.phase));
                row.push(s.node);
                row.push(s.source);
                row.push(if wide {
                    s.root_cause
                } else {
                    render::truncate(&s.root_cause, ROOT_CAUSE_WIDTH)
                });
                row.push(
                    a.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| render::age_at(t.0, now))
                        .unwrap_or_default(),
                );
                if wide {
                    row.push(s.reason);
                    row.push(s.started);
                    row.push(s.steps);
                }
            }
            Err(e) => {
                // One malformed object must not hide the others.
                row.push(style.paint(Tone::Bad, "<invalid>"));
                row.extend([String::new(), String::new()]);
                row.push(render::truncate(
                    &format!("cannot be read: {e}"),
                    ROOT_CAUSE_WIDTH,
                ));
            }
        }
        t.row(row);
    }
    t
}

/// One Abnormal as the table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The phase, or `<pending>` before the controller admits it.
    pub phase: String,
    pub node: String,
    pub source: String,
    /// The root cause's summary; for a Failed Abnormal without one, why it failed.
    pub root_cause: String,
    pub reason: String,
    pub started: String,
    /// `5`, or `5 (1 failed)`.
    pub steps: String,
}

impl Summary {
    pub fn of(a: &Abnormal) -> Self {
        let status = a.status.clone().unwrap_or_default();
        let phase = status
            .phase
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "<pending>".into());
        let node = if !a.spec.node_name.is_empty() {
            a.spec.node_name.clone()
        } else {
            "<none>".into()
        };
        let root_cause = match (&status.root_cause, status.phase) {
            (Some(rc), _) => rc.summary.clone(),
            (None, Some(kdiag_api::AbnormalPhase::Failed)) if !status.reason.is_empty() => {
                format!("(none: {})", status.reason)
            }
            _ => String::new(),
        };
        let failed = status
            .processors
            .iter()
            .filter(|r| r.result == ProcessorResult::Failed)
            .count();
        let steps = match (status.processors.len(), failed) {
            (0, _) => "0".into(),
            (n, 0) => n.to_string(),
            (n, f) => format!("{n} ({f} failed)"),
        };
        Self {
            phase,
            node,
            source: a.spec.source.as_str().to_owned(),
            root_cause,
            reason: status.reason.clone(),
            started: status
                .start_time
                .as_ref()
                .map(|t| render::timestamp(t.0))
                .unwrap_or_default(),
            steps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fetched(v: serde_json::Value) -> Fetched<Abnormal> {
        Fetched {
            parsed: serde_json::from_value(v.clone()).map_err(|e| e.to_string()),
            raw: v,
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-11-22T10:05:00Z".parse().unwrap()
    }

    fn examples() -> Vec<Fetched<Abnormal>> {
        vec![
            fetched(json!({
                "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
                "metadata": {"name": "web-oom", "namespace": "shop", "creationTimestamp": "2026-11-22T10:00:00Z"},
                "spec": {"source": "KubernetesEvent", "nodeName": "node-a"},
                "status": {"phase": "Succeeded", "identifiable": true, "recoverable": false,
                    "startTime": "2026-11-22T10:00:01Z",
                    "rootCause": {"summary": "container web of pod shop/web was OOM-killed at its 64Mi memory limit", "reason": "OOMKilled"},
                    "processors": [
                        {"processor": "kube-diagnoser/pod-collector", "kind": "Processor", "stage": "InformationCollecting", "result": "Succeeded", "startTime": "2026-11-22T10:00:01Z", "durationMilliseconds": 4},
                        {"processor": "kube-diagnoser/x", "kind": "Processor", "stage": "Diagnosing", "result": "Failed", "startTime": "2026-11-22T10:00:02Z", "durationMilliseconds": 4},
                    ]}
            })),
            fetched(json!({
                "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
                "metadata": {"name": "new", "namespace": "shop", "creationTimestamp": "2026-11-22T10:04:58Z"},
                "spec": {"podReference": {"namespace": "shop", "name": "web"}}
            })),
            fetched(json!({
                "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
                "metadata": {"name": "lost", "namespace": "shop", "creationTimestamp": "2026-11-21T10:00:00Z"},
                "spec": {"nodeName": "node-b"},
                "status": {"phase": "Failed", "reason": "NotIdentified", "identifiable": false, "recoverable": false}
            })),
        ]
    }

    #[test]
    fn the_table_shows_phase_node_source_root_cause_and_age() {
        let out = table(&examples(), false, false, now(), Style::PLAIN).render();
        assert_eq!(
            out,
            "\
NAME      PHASE       NODE     SOURCE            ROOT CAUSE                                                     AGE
web-oom   Succeeded   node-a   KubernetesEvent   container web of pod shop/web was OOM-killed at its 64Mi me…   5m
new       <pending>   <none>   Custom                                                                           2s
lost      Failed      node-b   Custom            (none: NotIdentified)                                          24h
"
        );
    }

    #[test]
    fn wide_adds_reason_start_and_steps_and_all_namespaces_adds_the_namespace() {
        let out = table(&examples(), true, true, now(), Style::PLAIN).render();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE   NAME"), "{out}");
        assert!(
            lines[0].ends_with("AGE   REASON          STARTED                STEPS"),
            "{out}"
        );
        assert!(
            lines[1].contains("64Mi memory limit"),
            "wide does not cut: {out}"
        );
        assert!(
            lines[1].ends_with("2026-11-22T10:00:01Z   2 (1 failed)"),
            "{out}"
        );
        assert!(lines[3].contains("NotIdentified"), "{out}");
    }

    #[test]
    fn an_abnormal_that_cannot_be_read_still_gets_a_row() {
        let bad = fetched(json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "odd", "namespace": "shop"},
            "spec": {"kubernetesEvent": "not an event"}
        }));
        let out = table(&[bad], false, false, now(), Style::PLAIN).render();
        assert!(out.contains("odd    <invalid>"), "{out}");
        assert!(out.contains("cannot be read"), "{out}");
    }

    #[test]
    fn phases_are_coloured_when_asked() {
        let out = table(&examples()[..1], false, false, now(), Style::COLOUR).render();
        assert!(out.contains("\x1b[32mSucceeded\x1b[0m"), "{out:?}");
    }
}
