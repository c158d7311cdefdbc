//! `kubectl diag watch NAME`: follows an Abnormal live, one line per step and phase change,
//! until it reaches a final phase. `kubectl diag run --wait` follows the same way.

use std::pin::pin;
use std::time::Duration;

use futures::StreamExt;
use kdiag_api::{
    Abnormal, AbnormalConditionType, AbnormalPhase, ConditionStatus, ProcessorRecord,
    ProcessorResult,
};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};

use super::DiagError;
use super::client::{Kube, Request};
use super::render::{self, Style, Tone};

/// How to follow an Abnormal.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    /// Give up (exit 3) when the Abnormal is not final by then.
    pub timeout: Duration,
    /// How long an Abnormal may go without any status before we say no controller runs.
    pub admission_timeout: Duration,
    /// `run --wait` stops with an error then; `watch` warns and keeps watching.
    pub require_controller: bool,
}

/// Follows `namespace/name` until it is Succeeded or Failed, handing every progress line to
/// `print` as it happens, and returns the final Abnormal.
pub async fn follow(
    kube: &Kube,
    namespace: &str,
    name: &str,
    options: Follow,
    style: Style,
    print: &mut dyn FnMut(&str),
    warn: &mut dyn FnMut(&str),
) -> Result<Abnormal, DiagError> {
    let request = Request::abnormals("watch", Some(namespace));
    let first = kube
        .get::<Abnormal>(namespace, name, Request::abnormals("get", Some(namespace)))
        .await?;
    let mut last = first.parsed.map_err(|e| {
        DiagError::Usage(format!(
            "Abnormal {namespace}/{name} cannot be read by kdiag ({e}); see it with: kubectl get abnormal {name} -n {namespace} -o yaml"
        ))
    })?;
    for line in progress(None, &last, jiff::Timestamp::now(), style) {
        print(&line);
    }
    if last.phase().is_some_and(AbnormalPhase::is_final) {
        return Ok(last);
    }

    let started = tokio::time::Instant::now();
    let deadline = started + options.timeout;
    // Measured from creation: an Abnormal created long ago and never admitted needs no wait.
    let age = last
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| jiff::Timestamp::now().duration_since(t.0).unsigned_abs())
        .unwrap_or_default();
    let admission_deadline = started + options.admission_timeout.saturating_sub(age);
    let mut admission_checked = false;

    let api: Api<Abnormal> = Api::namespaced(kube.client.clone(), namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // The watcher relists after a 410 Gone or a dropped connection; default_backoff paces it.
    let mut stream = pin!(watcher(api, config).default_backoff());
    let mut reported_error = false;
    loop {
        let admission_pending = !admission_checked && !has_status(&last);
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(watcher::Event::Apply(a) | watcher::Event::InitApply(a))) => {
                    for line in progress(Some(&last), &a, jiff::Timestamp::now(), style) {
                        print(&line);
                    }
                    last = a;
                    if last.phase().is_some_and(AbnormalPhase::is_final) {
                        return Ok(last);
                    }
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    return Err(DiagError::Deleted {
                        namespace: namespace.into(),
                        name: name.into(),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    // Permissions and missing CRDs do not heal by retrying; say so and stop.
                    if let watcher::Error::InitialListFailed(inner) | watcher::Error::WatchStartFailed(inner) = e {
                        if let kube::Error::Api(s) = &inner
                            && matches!(s.code, 401 | 403 | 404)
                        {
                            return Err(request.explain(inner, &kube.url));
                        }
                        if !reported_error {
                            warn(&format!("watch interrupted ({}); retrying", super::client::error_chain(&inner)));
                            reported_error = true;
                        }
                    } else if !reported_error {
                        warn(&format!("watch interrupted ({e}); retrying"));
                        reported_error = true;
                    }
                }
                None => {
                    return Err(DiagError::Output("the watch ended unexpectedly".into()));
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(DiagError::Timeout {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: last.phase().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "not admitted".into()),
                    waited: options.timeout,
                });
            }
            _ = tokio::time::sleep_until(admission_deadline), if admission_pending => {
                admission_checked = true;
                let error = DiagError::NoController {
                    namespace: namespace.into(),
                    name: name.into(),
                    waited: options.admission_timeout,
                };
                if options.require_controller {
                    return Err(error);
                }
                warn(&format!("warning: {error}; still watching"));
            }
        }
    }
}

/// True once the controller has written anything: a phase, or why it waits (WaitingForPod).
pub fn has_status(a: &Abnormal) -> bool {
    a.status
        .as_ref()
        .is_some_and(|s| s.phase.is_some() || !s.reason.is_empty())
}

/// What changed from `prev` to `next`, as lines to print. `prev` None prints the state so far.
pub fn progress(
    prev: Option<&Abnormal>,
    next: &Abnormal,
    now: jiff::Timestamp,
    style: Style,
) -> Vec<String> {
    let mut lines = Vec::new();
    let origin = next.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let at = |t: jiff::Timestamp| origin.map(|o| render::offset(o, t)).unwrap_or_default();
    let status = next.status.clone().unwrap_or_default();
    let before = prev.and_then(|p| p.status.clone()).unwrap_or_default();
    let name = format!(
        "{}/{}",
        next.metadata.namespace.as_deref().unwrap_or(""),
        next.metadata.name.as_deref().unwrap_or("")
    );

    if prev.is_none() {
        let mut target = vec![format!("source {}", next.spec.source.as_str())];
        if let Some(p) = &next.spec.pod_reference {
            target.push(format!(
                "pod {}/{}",
                if p.namespace.is_empty() {
                    next.metadata.namespace.as_deref().unwrap_or("")
                } else {
                    &p.namespace
                },
                p.name
            ));
        }
        if !next.spec.node_name.is_empty() {
            target.push(format!("node {}", next.spec.node_name));
        }
        lines.push(format!("Abnormal {name} ({})", target.join(", ")));
    }

    // Seen live, a change happened about now (status timestamps are often whole seconds, which
    // would put lines out of order); on the first look, at the time the status records.
    let live = prev.is_some();
    let when = |recorded: Option<jiff::Timestamp>| match (live, recorded) {
        (false, Some(t)) => at(t),
        _ => at(now),
    };
    let finished = super::describe::finished_at(next);

    // Admission: the first phase, a rejection, or why the controller waits.
    if before.phase.is_none() {
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == AbnormalConditionType::Accepted);
        match (status.phase, accepted) {
            (Some(_), Some(c)) if c.status == ConditionStatus::True => lines.push(format!(
                "{:>6}  {}  {}",
                when(c.last_transition_time.as_ref().map(|t| t.0)),
                style.paint(Tone::Good, "accepted"),
                c.message
            )),
            (Some(_), Some(c)) => lines.push(format!(
                "{:>6}  {}  {}: {}",
                when(c.last_transition_time.as_ref().map(|t| t.0)),
                style.paint(Tone::Bad, "rejected"),
                c.reason,
                c.message
            )),
            (None, _) if !status.reason.is_empty() && status.reason != before.reason => {
                lines.push(format!(
                    "{:>6}  {}  {}: {}",
                    at(now),
                    style.paint(Tone::Warn, "waiting"),
                    status.reason,
                    status.message
                ))
            }
            (None, _) if prev.is_none() => lines.push(format!(
                "{:>6}  {}  for the controller to admit it",
                at(now),
                style.paint(Tone::Warn, "waiting")
            )),
            _ => {}
        }
    }

    // Steps: new records, and records that ended since (a Running step that finished).
    for (i, r) in status.processors.iter().enumerate() {
        let old = before.processors.get(i);
        let changed = match old {
            None => true,
            Some(o) => o.result != r.result || o.processor != r.processor,
        };
        if changed {
            lines.push(step_line(r, &when(Some(r.start_time.0)), style));
        }
    }

    // Stage changes after admission.
    if let (Some(b), Some(n)) = (before.phase, status.phase)
        && b != n
        && !n.is_final()
    {
        lines.push(format!(
            "{:>6}  {} {}",
            at(now),
            style.paint(Tone::Dim, "now"),
            style.paint(render::phase_tone(n.as_str()), n.as_str())
        ));
    }

    if before.root_cause.is_none()
        && let Some(rc) = &status.root_cause
    {
        lines.push(format!(
            "{:>6}  {}  {} ({})",
            when(finished),
            style.paint(Tone::Heading, "root cause"),
            style.paint(Tone::Bad, &rc.summary),
            rc.reason
        ));
    }

    if let Some(p) = status.phase.filter(|p| p.is_final())
        && before.phase != Some(p)
    {
        let mut line = format!(
            "{:>6}  {}",
            when(finished),
            style.paint(render::phase_tone(p.as_str()), p.as_str())
        );
        if p == AbnormalPhase::Failed && !status.reason.is_empty() {
            line.push_str(&format!(": {}", status.reason));
            if !status.message.is_empty() {
                line.push_str(&format!(": {}", status.message));
            }
        }
        lines.push(line);
    }
    lines
}

fn step_line(r: &ProcessorRecord, when: &str, style: Style) -> String {
    let result = match r.result {
        ProcessorResult::Running => style.paint(Tone::Busy, "Running"),
        other => style.paint(render::result_tone(other.as_str()), other.as_str()),
    };
    let mut line = format!(
        "{when:>6}  {:<21}  {}  {result}",
        r.stage.as_str(),
        r.processor
    );
    if let Some(ms) = r.duration_milliseconds {
        line.push_str(&format!(" in {}", render::duration_ms(ms)));
    }
    if !r.message.is_empty() {
        line.push_str(&format!(": {}", render::truncate(&r.message, 200)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn abnormal(status: Value) -> Abnormal {
        serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "ns", "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"nodeName": "node-a", "source": "Custom"},
            "status": status,
        }))
        .unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-11-22T10:00:03Z".parse().unwrap()
    }

    fn step(p: &str, stage: &str, result: &str, ms: Option<i64>, message: &str) -> Value {
        let mut v = json!({"processor": p, "kind": "Processor", "stage": stage, "result": result,
            "startTime": "2026-11-22T10:00:01Z", "message": message});
        if let Some(ms) = ms {
            v["durationMilliseconds"] = json!(ms);
        }
        v
    }

    #[test]
    fn the_first_look_prints_the_target_and_that_it_waits_for_admission() {
        let a: Abnormal = serde_json::from_value(json!({
            "metadata": {"name": "w", "namespace": "ns", "creationTimestamp": "2026-11-22T10:00:00Z"},
            "spec": {"podReference": {"name": "web"}}
        }))
        .unwrap();
        let lines = progress(None, &a, now(), Style::PLAIN);
        assert_eq!(
            lines,
            [
                "Abnormal ns/w (source Custom, pod ns/web)",
                "   +3s  waiting  for the controller to admit it"
            ]
        );
        assert!(!has_status(&a));
    }

    #[test]
    fn each_new_step_and_phase_change_prints_one_line() {
        let admitted = abnormal(
            json!({"phase": "InformationCollecting", "identifiable": false, "recoverable": false,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "routed to node node-a", "lastTransitionTime": "2026-11-22T10:00:00Z"}]}),
        );
        let mut pending = admitted.clone();
        pending.status = None;
        assert_eq!(
            progress(Some(&pending), &admitted, now(), Style::PLAIN),
            // Seen live: stamped when seen, not with the whole-second condition time.
            ["   +3s  accepted  routed to node node-a"]
        );

        let running = abnormal(
            json!({"phase": "InformationCollecting", "identifiable": false, "recoverable": false,
            "processors": [step("kube-diagnoser/pod-collector", "InformationCollecting", "Running", None, "")]}),
        );
        assert_eq!(
            progress(Some(&admitted), &running, now(), Style::PLAIN),
            ["   +3s  InformationCollecting  kube-diagnoser/pod-collector  Running"]
        );

        let diagnosing = abnormal(
            json!({"phase": "Diagnosing", "identifiable": false, "recoverable": false,
            "processors": [step("kube-diagnoser/pod-collector", "InformationCollecting", "Succeeded", Some(4), "collected 3 pods")]}),
        );
        assert_eq!(
            progress(Some(&running), &diagnosing, now(), Style::PLAIN),
            [
                "   +3s  InformationCollecting  kube-diagnoser/pod-collector  Succeeded in 4ms: collected 3 pods",
                "   +3s  now Diagnosing"
            ]
        );
        // Nothing new, nothing printed.
        assert!(progress(Some(&diagnosing), &diagnosing, now(), Style::PLAIN).is_empty());
    }

    #[test]
    fn the_end_prints_the_root_cause_and_the_final_phase() {
        let diagnosing =
            abnormal(json!({"phase": "Diagnosing", "identifiable": false, "recoverable": false}));
        let done = abnormal(
            json!({"phase": "Succeeded", "identifiable": true, "recoverable": false,
            "rootCause": {"summary": "disk full", "reason": "DiskFull"}}),
        );
        assert_eq!(
            progress(Some(&diagnosing), &done, now(), Style::PLAIN),
            [
                "   +3s  root cause  disk full (DiskFull)",
                "   +3s  Succeeded"
            ]
        );
        let failed = abnormal(
            json!({"phase": "Failed", "identifiable": false, "recoverable": false,
            "reason": "NotIdentified", "message": "no diagnoser identified the cause"}),
        );
        assert_eq!(
            progress(Some(&diagnosing), &failed, now(), Style::PLAIN),
            ["   +3s  Failed: NotIdentified: no diagnoser identified the cause"]
        );
    }

    #[test]
    fn an_abnormal_that_ended_long_ago_shows_when_it_ended_not_when_it_was_looked_at() {
        let done = abnormal(
            json!({"phase": "Succeeded", "identifiable": true, "recoverable": false,
            "conditions": [
                {"type": "Accepted", "status": "True", "message": "routed to node node-a", "lastTransitionTime": "2026-11-22T10:00:00Z"},
                {"type": "Identified", "status": "True", "lastTransitionTime": "2026-11-22T10:00:02Z"}],
            "rootCause": {"summary": "disk full", "reason": "DiskFull"}}),
        );
        let much_later: jiff::Timestamp = "2026-11-22T10:30:00Z".parse().unwrap();
        assert_eq!(
            progress(None, &done, much_later, Style::PLAIN),
            [
                "Abnormal ns/w (source Custom, node node-a)",
                "   +0s  accepted  routed to node node-a",
                "   +2s  root cause  disk full (DiskFull)",
                "   +2s  Succeeded"
            ]
        );
    }

    #[test]
    fn a_rejection_and_a_wait_for_the_pod_are_explained() {
        let pending = abnormal(Value::Null);
        let waiting = abnormal(json!({"identifiable": false, "recoverable": false,
            "reason": "WaitingForPod", "message": "pod ns/web does not exist yet"}));
        assert!(has_status(&waiting));
        assert_eq!(
            progress(Some(&pending), &waiting, now(), Style::PLAIN),
            ["   +3s  waiting  WaitingForPod: pod ns/web does not exist yet"]
        );
        let rejected = abnormal(
            json!({"phase": "Failed", "identifiable": false, "recoverable": false,
            "reason": "ProcessorNotFound", "message": "spec.assignedDiagnosers[0] names Diagnoser ns/x, which does not exist",
            "conditions": [{"type": "Accepted", "status": "False", "reason": "ProcessorNotFound", "message": "spec.assignedDiagnosers[0] names Diagnoser ns/x, which does not exist", "lastTransitionTime": "2026-11-22T10:00:00Z"}]}),
        );
        let lines = progress(Some(&waiting), &rejected, now(), Style::PLAIN);
        assert_eq!(
            lines[0],
            "   +3s  rejected  ProcessorNotFound: spec.assignedDiagnosers[0] names Diagnoser ns/x, which does not exist"
        );
        assert!(lines[1].starts_with("   +3s  Failed: ProcessorNotFound"));
    }
}
