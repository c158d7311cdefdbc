//! What the agent's and the controller's caches keep of an Abnormal: only what is read from them.
//!
//! A finished Abnormal is mostly `status.context` (what the collectors gathered), the records of
//! its steps and `metadata.managedFields`, and a parsed object costs several times its JSON size:
//! whole objects made each cache about 50 KB per Abnormal (docs/performance.md has the profile).
//!
//! - The agent reads its cache only to decide whether an Abnormal has work left (phase, spec and
//!   `status.processors`) and then works on a copy it GETs. A finished one is not kept at all,
//!   only counted by phase ([`Finished`]).
//! - The controller admits Abnormals without a phase from its cache and writes their status back
//!   whole, so those are kept whole. Once admitted it reads phase, conditions, start time, root
//!   cause, spec, labels and annotations (routing, GC, ProbeStatus write-back, incident grouping),
//!   never the context or the execution records. A finished one is never routed again: unless a
//!   probe created it (the write-back reports what it ran), it keeps only what GC and incident
//!   grouping read ([`summarize_finished`]).
//! - managedFields are read by nobody, and a status written from a copy without them leaves the
//!   stored ones as they are (the apiserver keeps them when a write carries none).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kdiag_api::{Abnormal, AbnormalPhase, AbnormalStatus};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};

type Guarded = DeserializeGuard<Abnormal>;

/// Whose cache it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reader {
    Agent,
    Controller,
}

/// Watches Abnormals into a store of slimmed copies; the stream yields each changed object (as
/// `Controller::new` would) for `Controller::for_stream`. The agent's store keeps no finished
/// Abnormal at all (it never works on one again): a finished one leaves the store as if deleted,
/// and only its phase is counted, in [`Finished`], for the node's gauges.
pub fn watch(
    api: Api<Guarded>,
    config: watcher::Config,
    reader: Reader,
) -> (
    Store<Guarded>,
    impl Stream<Item = Result<Guarded, watcher::Error>> + Send + 'static,
    Finished,
) {
    let (store, writer) = reflector::store();
    let finished = Finished::default();
    let counted = finished.clone();
    let events = watcher(api, config)
        .modify(move |o| slim(reader, o))
        .filter_map(move |event| {
            let routed = match event {
                Ok(e) if reader == Reader::Agent => counted.route(e).map(Ok),
                other => Some(other),
            };
            std::future::ready(routed)
        });
    let changed = reflector::reflector(writer, events).applied_objects();
    (store, changed, finished)
}

/// How many finished Abnormals the agent's node has, by phase, kept instead of the Abnormals.
#[derive(Clone, Default)]
pub struct Finished(Arc<Mutex<FinishedCounts>>);

#[derive(Default)]
struct FinishedCounts {
    /// namespace/name → phase of every finished Abnormal seen.
    current: HashMap<String, AbnormalPhase>,
    /// Being rebuilt by a relist (between Init and InitDone).
    relisting: Option<HashMap<String, AbnormalPhase>>,
}

impl Finished {
    /// Counts by phase.
    pub fn counts(&self) -> BTreeMap<&'static str, i64> {
        let inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts = BTreeMap::new();
        for phase in inner.current.values() {
            *counts.entry(phase.as_str()).or_default() += 1;
        }
        counts
    }

    /// What the store sees of a watch event: a finished Abnormal is counted here and leaves the
    /// store (as a deletion, or not at all during a relist).
    fn route(&self, event: watcher::Event<Guarded>) -> Option<watcher::Event<Guarded>> {
        let finished = |o: &Guarded| {
            o.0.as_ref()
                .ok()
                .and_then(|a| a.phase())
                .filter(|p| p.is_final())
        };
        let key = |o: &Guarded| {
            let m = match &o.0 {
                Ok(a) => &a.metadata,
                Err(i) => &i.metadata,
            };
            format!(
                "{}/{}",
                m.namespace.as_deref().unwrap_or_default(),
                m.name.as_deref().unwrap_or_default()
            )
        };
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => {
                inner.relisting = Some(HashMap::new());
                Some(watcher::Event::Init)
            }
            watcher::Event::InitApply(o) => match finished(&o) {
                Some(phase) => {
                    inner
                        .relisting
                        .get_or_insert_default()
                        .insert(key(&o), phase);
                    None
                }
                None => Some(watcher::Event::InitApply(o)),
            },
            watcher::Event::InitDone => {
                if let Some(listed) = inner.relisting.take() {
                    inner.current = listed;
                }
                Some(watcher::Event::InitDone)
            }
            watcher::Event::Apply(o) => match finished(&o) {
                Some(phase) => {
                    inner.current.insert(key(&o), phase);
                    Some(watcher::Event::Delete(o))
                }
                None => Some(watcher::Event::Apply(o)),
            },
            watcher::Event::Delete(o) => {
                inner.current.remove(&key(&o));
                Some(watcher::Event::Delete(o))
            }
        }
    }
}

/// Drops from a cached Abnormal what `reader` never reads.
pub fn slim(reader: Reader, obj: &mut Guarded) {
    let a = match &mut obj.0 {
        Ok(a) => a,
        Err(invalid) => {
            invalid.metadata.managed_fields = None;
            return;
        }
    };
    a.metadata.managed_fields = None;
    let Some(status) = a.status.as_mut() else {
        return;
    };
    let Some(phase) = status.phase else {
        // Not admitted yet: the controller writes this status back whole.
        return;
    };
    match reader {
        Reader::Agent if phase.is_final() => {
            // Nothing left to do: only "is it finished" is ever asked.
            *status = AbnormalStatus {
                phase: Some(phase),
                ..Default::default()
            };
            a.spec = Default::default();
        }
        Reader::Agent => status.context = None,
        // A probe's Abnormal feeds the ProbeStatus write-back, which says what ran and why it
        // ended when nothing was found: it keeps its spec, message and evidence. There are few.
        Reader::Controller if phase.is_final() && a.spec.probe_status.is_none() => {
            summarize_finished(a)
        }
        Reader::Controller => {
            status.context = None;
            status.processors = Vec::new();
            status.command_executors = Vec::new();
            status.profilers = Vec::new();
        }
    }
}

/// What the controller keeps of a finished Abnormal that no probe created: nothing routes or
/// admits it again, so only what garbage collection (phase, node label, the latest time its
/// status records), incident grouping (labels, when its trigger was last seen) and the gauges
/// read. A node full of finished Abnormals is
/// most of the controller's memory: this keeps each to its names and a few short strings.
fn summarize_finished(a: &mut Abnormal) {
    let m = &mut a.metadata;
    m.annotations = m.annotations.take().and_then(|mut all| {
        all.retain(|k, _| k == kdiag_api::labels::TRIGGER_LAST_SEEN_ANNOTATION);
        (!all.is_empty()).then_some(all)
    });
    m.owner_references = None;
    m.generate_name = None;
    a.spec = kdiag_api::AbnormalSpec {
        node_name: std::mem::take(&mut a.spec.node_name),
        probe_status: a.spec.probe_status.take(),
        source: a.spec.source,
        ..Default::default()
    };
    let Some(status) = a.status.take() else {
        return;
    };
    // GC dates the end by the latest time the status records; one condition carries it.
    let last = status
        .conditions
        .into_iter()
        .max_by_key(|c| c.last_transition_time.as_ref().map(|t| t.0))
        .map(|c| kdiag_api::AbnormalCondition {
            message: String::new(),
            ..c
        });
    a.status = Some(AbnormalStatus {
        phase: status.phase,
        start_time: status.start_time,
        conditions: last.into_iter().collect(),
        reason: status.reason,
        root_cause: status.root_cause.map(|r| kdiag_api::RootCause {
            summary: r.summary,
            reason: r.reason,
            processor: r.processor,
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Counts the agent's Abnormals by phase: those in its store and the finished ones it counts.
pub fn count_with_finished(
    store: &Store<DeserializeGuard<Abnormal>>,
    finished: &Finished,
) -> BTreeMap<&'static str, i64> {
    let mut counts = count_by_phase(store);
    for (phase, n) in finished.counts() {
        *counts.entry(phase).or_default() += n;
    }
    counts
}

/// Counts a store's Abnormals by phase ("" for not yet admitted).
pub fn count_by_phase(store: &Store<DeserializeGuard<Abnormal>>) -> BTreeMap<&'static str, i64> {
    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for phase in AbnormalPhase::ALL {
        counts.insert(phase.as_str(), 0);
    }
    counts.insert("", 0);
    for o in store.state() {
        let phase =
            o.0.as_ref()
                .ok()
                .and_then(|a| a.phase())
                .map(AbnormalPhase::as_str)
                .unwrap_or("");
        *counts.entry(phase).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;

    fn abnormal(phase: Option<&str>) -> Guarded {
        let mut status = serde_json::json!({
            "context": {"podInformation": [{"a": 1}]},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "lastTransitionTime": "2026-11-22T10:00:00Z"}],
            "processors": [{"processor": "ns/p", "kind": "Processor", "stage": "InformationCollecting",
                            "result": "Succeeded", "startTime": "2026-11-22T10:00:00Z"}],
            "rootCause": {"summary": "s", "reason": "R"}});
        if let Some(p) = phase {
            status["phase"] = p.into();
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "a", "namespace": "n", "labels": {"kdiag.io/node": "x"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"nodeName": "x", "assignedDiagnosers": [{"namespace": "ns", "name": "d"}]},
            "status": status}))
        .unwrap()
    }

    fn slimmed(reader: Reader, phase: Option<&str>) -> Abnormal {
        let mut g = abnormal(phase);
        slim(reader, &mut g);
        g.0.unwrap()
    }

    #[test]
    fn nobody_keeps_managed_fields_and_an_abnormal_not_yet_admitted_keeps_the_rest() {
        for reader in [Reader::Agent, Reader::Controller] {
            let a = slimmed(reader, None);
            assert!(a.metadata.managed_fields.is_none());
            let mut whole = abnormal(None).0.unwrap();
            whole.metadata.managed_fields = None;
            assert_eq!(a, whole, "{reader:?}");
        }
    }

    #[test]
    fn the_controller_keeps_what_routing_gc_and_write_back_read() {
        let a = slimmed(Reader::Controller, Some("Succeeded"));
        let status = a.status.clone().unwrap();
        assert!(status.context.is_none() && status.processors.is_empty());
        assert_eq!(status.phase, Some(AbnormalPhase::Succeeded));
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.root_cause.unwrap().summary, "s");
        assert_eq!(a.metadata.labels.unwrap()["kdiag.io/node"], "x");

        let routed = slimmed(Reader::Controller, Some("Diagnosing"));
        assert_eq!(
            routed.spec.assigned_diagnosers.len(),
            1,
            "a running one keeps its spec (fan-out and the no-agent sweep read it)"
        );
    }

    #[test]
    fn the_controller_keeps_of_a_finished_abnormal_only_what_gc_write_back_and_grouping_read() {
        let mut g = abnormal(Some("Failed"));
        if let Ok(a) = &mut g.0 {
            a.metadata.annotations = Some(
                [
                    ("kdiag.io/plan".to_owned(), "abc".to_owned()),
                    (
                        kdiag_api::labels::TRIGGER_LAST_SEEN_ANNOTATION.to_owned(),
                        "2026-11-22T10:00:00Z".to_owned(),
                    ),
                ]
                .into(),
            );
            let status = a.status.as_mut().unwrap();
            status.conditions.push(
                serde_json::from_value(serde_json::json!({
                    "type": "Identified", "status": "True", "reason": "Identified",
                    "message": "a long message", "lastTransitionTime": "2026-11-22T10:05:00Z"}))
                .unwrap(),
            );
            status.root_cause.as_mut().unwrap().evidence = vec![Default::default()];
        }
        let before = g.0.as_ref().unwrap().clone();
        slim(Reader::Controller, &mut g);
        let a = g.0.unwrap();

        assert_eq!(
            a.annotations().keys().collect::<Vec<_>>(),
            [kdiag_api::labels::TRIGGER_LAST_SEEN_ANNOTATION]
        );
        assert!(a.spec.assigned_diagnosers.is_empty());
        assert_eq!(a.spec.node_name, "x");
        let status = a.status.clone().unwrap();
        assert_eq!(status.conditions.len(), 1, "only the latest condition");
        assert!(status.conditions[0].message.is_empty());
        let root = status.root_cause.unwrap();
        assert_eq!((root.summary.as_str(), root.evidence.len()), ("s", 0));
        assert_eq!(
            gc_end(&a),
            gc_end(&before),
            "garbage collection dates it as before"
        );
        assert_eq!(a.phase(), before.phase());
        assert_eq!(a.labels(), before.labels());
    }

    #[test]
    fn a_finished_probe_abnormal_keeps_what_the_probestatus_write_back_reports() {
        let mut g = abnormal(Some("Succeeded"));
        if let Ok(a) = &mut g.0 {
            a.spec.probe_status = Some(Default::default());
            a.status.as_mut().unwrap().message = "ended".into();
        }
        slim(Reader::Controller, &mut g);
        let a = g.0.unwrap();
        assert_eq!(a.spec.assigned_diagnosers.len(), 1, "what ran is reported");
        let status = a.status.unwrap();
        assert_eq!(status.message, "ended");
        assert!(status.context.is_none() && status.processors.is_empty());
    }

    /// The end garbage collection computes (the latest time the status records).
    fn gc_end(a: &Abnormal) -> Option<jiff::Timestamp> {
        let s = a.status.as_ref()?;
        s.conditions
            .iter()
            .filter_map(|c| c.last_transition_time.as_ref())
            .chain(s.start_time.as_ref())
            .chain(a.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
            .max()
    }

    #[test]
    fn the_agent_keeps_what_deciding_the_next_step_reads() {
        let running = slimmed(Reader::Agent, Some("Diagnosing"));
        let status = running.status.clone().unwrap();
        assert!(status.context.is_none());
        assert_eq!(status.processors.len(), 1);
        assert_eq!(running.spec.assigned_diagnosers.len(), 1);

        let done = slimmed(Reader::Agent, Some("Failed"));
        assert_eq!(
            done.status,
            Some(AbnormalStatus {
                phase: Some(AbnormalPhase::Failed),
                ..Default::default()
            })
        );
        assert_eq!(kdiag_pipeline::next(&done), kdiag_pipeline::Next::Idle);
        assert_eq!(done.metadata.labels.unwrap()["kdiag.io/node"], "x");
    }

    fn named(name: &str, phase: Option<&str>) -> Guarded {
        let mut g = abnormal(phase);
        if let Ok(a) = &mut g.0 {
            a.metadata.name = Some(name.into());
        }
        g
    }

    fn kind(e: &Option<watcher::Event<Guarded>>) -> &'static str {
        match e {
            None => "dropped",
            Some(watcher::Event::Init) => "init",
            Some(watcher::Event::InitApply(_)) => "init-apply",
            Some(watcher::Event::InitDone) => "init-done",
            Some(watcher::Event::Apply(_)) => "apply",
            Some(watcher::Event::Delete(_)) => "delete",
        }
    }

    #[test]
    fn the_agent_keeps_no_finished_abnormal_and_counts_each_by_phase() {
        let f = Finished::default();
        let seen: Vec<&str> = [
            watcher::Event::Init,
            watcher::Event::InitApply(named("done", Some("Succeeded"))),
            watcher::Event::InitApply(named("busy", Some("Diagnosing"))),
            watcher::Event::InitDone,
            watcher::Event::Apply(named("busy", Some("Failed"))),
            watcher::Event::Apply(named("new", None)),
        ]
        .into_iter()
        .map(|e| kind(&f.route(e)))
        .collect();
        assert_eq!(
            seen,
            [
                "init",
                "dropped",
                "init-apply",
                "init-done",
                "delete",
                "apply"
            ],
            "a finished one never reaches the store, and one that finishes leaves it"
        );
        assert_eq!(f.counts(), [("Failed", 1), ("Succeeded", 1)].into());
        // Garbage collection deletes one; a relist rebuilds the counts from what is listed.
        f.route(watcher::Event::Delete(named("done", Some("Succeeded"))));
        assert_eq!(f.counts(), [("Failed", 1)].into());
        f.route(watcher::Event::Init);
        assert_eq!(
            f.counts(),
            [("Failed", 1)].into(),
            "kept until the relist is done"
        );
        f.route(watcher::Event::InitApply(named("other", Some("Succeeded"))));
        f.route(watcher::Event::InitDone);
        assert_eq!(f.counts(), [("Succeeded", 1)].into());
    }
}
