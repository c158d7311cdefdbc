//! Kube Diagnoser's HTTP plugin protocol, the pure part: checking what a plugin returned and
//! turning it into a step's output.
//!
//! A plugin receives the whole Abnormal and returns it, or only the parts it changed (Kube
//! Diagnoser decoded the reply into a copy of the request). It may change status.context,
//! status.commandExecutors, status.profilers and (kdiag) status.rootCause; spec and the other
//! status fields must come back unchanged when they come back at all.
//!
//! "Unchanged" is judged by content, not bytes, because plugins written against Kube Diagnoser's
//! Go types legitimately re-encode the object: they drop fields they do not know (kdiag's
//! extensions, the v0.1.0 skip flags), write `false`/`""`/`null` where we wrote nothing, and
//! round timestamps to seconds. So a field the response leaves out or empties counts as
//! unchanged, and timestamps compare at second precision; any value the response does state
//! must match.

use std::collections::BTreeMap;

use kdiag_api::{Abnormal, AbnormalStatus};
use serde_json::Value;

use crate::{Error, StepOutput};

/// Status fields a plugin must return unchanged (the Kube Diagnoser list plus kdiag's records).
pub const PROTECTED_STATUS_FIELDS: [&str; 10] = [
    "identifiable",
    "recoverable",
    "phase",
    "conditions",
    "message",
    "reason",
    "startTime",
    "diagnoser",
    "recoverer",
    "processors",
];

/// Checks a plugin's response against the request; the error names the first field it changed.
pub fn check_protected_fields(request: &Value, response: &Value) -> Result<(), Error> {
    let changed = |field: String| Error::ChangedProtectedField { field };
    if !covered(&response["spec"], &request["spec"]) {
        return Err(changed(first_difference(
            "spec",
            &response["spec"],
            &request["spec"],
        )));
    }
    for field in PROTECTED_STATUS_FIELDS {
        let (resp, req) = (&response["status"][field], &request["status"][field]);
        if !covered(resp, req) {
            return Err(changed(first_difference(
                &format!("status.{field}"),
                resp,
                req,
            )));
        }
    }
    Ok(())
}

/// Completes a reply the way Kube Diagnoser read it: it decoded the body into a copy of the
/// request, so a top-level field the reply leaves out (or sends as null) keeps the request's
/// value. A plugin may thus answer with `{"status": {...}}` alone.
pub fn complete_reply(request: &Value, reply: &mut Value) {
    let (Value::Object(request), Value::Object(reply)) = (request, reply) else {
        return;
    };
    for (key, value) in request {
        match reply.get(key) {
            None | Some(Value::Null) => {
                reply.insert(key.clone(), value.clone());
            }
            Some(_) => {}
        }
    }
}

/// What a successful plugin call adds: the context keys it added or changed, the keys it asked
/// to remove (returned as `null`), the root cause it set, and the command executor and profiler
/// lists if it changed them. A key it leaves out is kept: plugins built on Go types drop what
/// they do not decode, so only an explicit `null` removes.
pub fn step_output(before: &Abnormal, returned: AbnormalStatus) -> StepOutput {
    let old = before.status.clone().unwrap_or_default();
    let old_context = old.context.unwrap_or_default();
    let (removed, context): (BTreeMap<String, Value>, BTreeMap<String, Value>) = returned
        .context
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| old_context.get(k) != Some(v))
        .partition(|(_, v)| v.is_null());
    let removed_context_keys = removed
        .into_keys()
        .filter(|k| old_context.contains_key(k))
        .collect();
    let root_cause = returned
        .root_cause
        .filter(|r| old.root_cause.as_ref() != Some(r));
    let command_executors = (!returned.command_executors.is_empty()
        && returned.command_executors != old.command_executors)
        .then_some(returned.command_executors);
    let profilers = (!returned.profilers.is_empty() && returned.profilers != old.profilers)
        .then_some(returned.profilers);
    StepOutput::Processor {
        context,
        root_cause,
        command_executors,
        profilers,
        removed_context_keys,
    }
}

/// True when everything `response` states (after dropping empty values) is also in `request`.
fn covered(response: &Value, request: &Value) -> bool {
    match (prune(response), prune(request)) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(resp), Some(req)) => covered_pruned(&resp, &req),
    }
}

fn covered_pruned(resp: &Value, req: &Value) -> bool {
    match (resp, req) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| covered_pruned(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| covered_pruned(v, w))
        }
        (Value::String(a), Value::String(b)) => a == b || same_instant(a, b),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// Two RFC 3339 timestamps naming the same second.
fn same_instant(a: &str, b: &str) -> bool {
    match (a.parse::<jiff::Timestamp>(), b.parse::<jiff::Timestamp>()) {
        (Ok(x), Ok(y)) => x.as_second() == y.as_second(),
        _ => false,
    }
}

/// Drops null, false, "", [] and {} recursively (inside arrays, keeps positions with null).
fn prune(v: &Value) -> Option<Value> {
    match v {
        Value::Null | Value::Bool(false) => None,
        Value::String(s) if s.is_empty() => None,
        Value::Array(items) => {
            let items: Vec<Value> = items
                .iter()
                .map(|x| prune(x).unwrap_or(Value::Null))
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        Value::Object(map) => {
            let map: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        other => Some(other.clone()),
    }
}

/// The path of the first stated value that differs, for the error message.
fn first_difference(path: &str, resp: &Value, req: &Value) -> String {
    if let (Some(Value::Object(a)), Some(Value::Object(b))) = (prune(resp), prune(req)) {
        for (k, v) in &a {
            match b.get(k) {
                Some(w) if covered_pruned(v, w) => {}
                Some(w) => return first_difference(&format!("{path}.{k}"), v, w),
                None => return format!("{path}.{k}"),
            }
        }
    }
    path.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn changed(field: &str) -> Error {
        Error::ChangedProtectedField {
            field: field.into(),
        }
    }

    fn request() -> Value {
        json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"nodeName": "n1", "source": "Custom", "skipRecovery": true, "probeStatus": {"namespace": "p", "name": "k8s", "checker": "dns"},
                     "assignedDiagnosers": [{"name": "d", "namespace": "kube-diagnoser"}]},
            "status": {"phase": "Diagnosing", "identifiable": false, "recoverable": false,
                       "startTime": "2026-11-22T10:00:00Z",
                       "conditions": [{"type": "InformationCollected", "status": "True", "lastTransitionTime": "2026-11-22T10:00:01Z"}],
                       "processors": [{"processor": "kube-diagnoser/pod-collector", "kind": "Processor", "stage": "InformationCollecting",
                                       "result": "Succeeded", "startTime": "2026-11-22T10:00:00Z", "durationMilliseconds": 3}],
                       "context": {"podInformation": []}}
        })
    }

    #[test]
    fn an_unchanged_echo_passes() {
        assert_eq!(check_protected_fields(&request(), &request()), Ok(()));
    }

    #[test]
    fn a_go_plugin_that_drops_unknown_fields_and_writes_zero_values_passes() {
        // What Kube Diagnoser v0.1.6's Go types make of our object.
        let resp = json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "default", "creationTimestamp": null},
            "spec": {"nodeName": "n1", "source": "Custom", "assignedDiagnosers": [{"name": "d", "namespace": "kube-diagnoser"}]},
            "status": {"phase": "Diagnosing", "identifiable": false, "recoverable": false, "startTime": "2026-11-22T10:00:00Z",
                       "conditions": [{"type": "InformationCollected", "status": "True", "lastTransitionTime": "2026-11-22T10:00:01Z",
                                       "reason": "", "message": ""}],
                       "diagnoser": null,
                       "context": {"podInformation": [], "found": "yes"}}
        });
        assert_eq!(check_protected_fields(&request(), &resp), Ok(()));
    }

    #[test]
    fn changing_the_phase_is_refused_and_named() {
        let mut resp = request();
        resp["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            check_protected_fields(&request(), &resp),
            Err(changed("status.phase"))
        );
    }

    #[test]
    fn changing_a_spec_field_is_refused_with_its_path() {
        let mut resp = request();
        resp["spec"]["nodeName"] = json!("other");
        assert_eq!(
            check_protected_fields(&request(), &resp),
            Err(changed("spec.nodeName"))
        );
        let mut resp = request();
        resp["spec"]["assignedDiagnosers"][0]["name"] = json!("evil");
        assert_eq!(
            check_protected_fields(&request(), &resp),
            Err(changed("spec.assignedDiagnosers"))
        );
    }

    #[test]
    fn claiming_identification_is_refused() {
        let mut resp = request();
        resp["status"]["identifiable"] = json!(true);
        assert_eq!(
            check_protected_fields(&request(), &resp),
            Err(changed("status.identifiable"))
        );
    }

    #[test]
    fn rewriting_kdiag_step_records_is_refused() {
        let mut resp = request();
        resp["status"]["processors"][0]["result"] = json!("Failed");
        assert!(matches!(check_protected_fields(&request(), &resp),
                Err(Error::ChangedProtectedField { field }) if field.starts_with("status.processors")));
    }

    #[test]
    fn timestamps_compare_at_second_precision() {
        let mut resp = request();
        resp["status"]["startTime"] = json!("2026-11-22T10:00:00.000+00:00");
        assert_eq!(check_protected_fields(&request(), &resp), Ok(()));
        resp["status"]["startTime"] = json!("2026-11-22T10:00:05Z");
        assert_eq!(
            check_protected_fields(&request(), &resp),
            Err(changed("status.startTime"))
        );
    }

    #[test]
    fn the_output_holds_only_what_the_plugin_added_or_changed() {
        let before: Abnormal = serde_json::from_value(request()).unwrap();
        let mut returned = before.status.clone().unwrap();
        returned
            .context
            .as_mut()
            .unwrap()
            .insert("diskUsage".into(), json!({"total": 1}));
        let StepOutput::Processor {
            context,
            root_cause,
            command_executors,
            profilers,
            ..
        } = step_output(&before, returned)
        else {
            panic!()
        };
        assert_eq!(context.keys().collect::<Vec<_>>(), ["diskUsage"]);
        assert!(root_cause.is_none() && command_executors.is_none() && profilers.is_none());
    }

    #[test]
    fn a_status_only_reply_is_completed_from_the_request_and_passes() {
        // Kube Diagnoser decoded the reply into a copy of the request.
        let mut reply = json!({"status": {"context": {"found": "yes"}}});
        complete_reply(&request(), &mut reply);
        assert_eq!(reply["metadata"], request()["metadata"]);
        assert_eq!(reply["spec"], request()["spec"]);
        assert_eq!(check_protected_fields(&request(), &reply), Ok(()));
        let returned: Abnormal = serde_json::from_value(reply).expect("a completed reply parses");
        let before: Abnormal = serde_json::from_value(request()).unwrap();
        let StepOutput::Processor { context, .. } =
            step_output(&before, returned.status.unwrap_or_default())
        else {
            panic!()
        };
        assert_eq!(context.keys().collect::<Vec<_>>(), ["found"]);
    }

    #[test]
    fn a_reply_whose_spec_differs_is_still_refused() {
        let mut reply = json!({"spec": {"nodeName": "other"}, "status": {"context": {}}});
        complete_reply(&request(), &mut reply);
        assert_eq!(
            check_protected_fields(&request(), &reply),
            Err(changed("spec.nodeName"))
        );
    }

    #[test]
    fn a_null_context_key_asks_for_its_removal_and_a_left_out_one_is_kept() {
        let before: Abnormal = serde_json::from_value(request()).unwrap();
        let returned: AbnormalStatus =
            serde_json::from_value(json!({"context": {"podInformation": null, "never": null}}))
                .unwrap();
        let StepOutput::Processor {
            context,
            removed_context_keys,
            ..
        } = step_output(&before, returned)
        else {
            panic!()
        };
        assert!(
            context.is_empty(),
            "null is not a value to store: {context:?}"
        );
        assert_eq!(removed_context_keys, ["podInformation"]);
    }
}
