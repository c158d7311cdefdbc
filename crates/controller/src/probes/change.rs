//! Probes triggered by change, the pure part: what changed in a watched object (against the small
//! fingerprint kept of it, never the object), which Probe triggers a change matches, and the
//! debouncing of matching changes into one run per probe. `triggers` does the watching and the
//! writing around it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::probe_trigger::{
    ChangeType, DEFAULT_MAX_WAIT_SECONDS, DEFAULT_QUIET_SECONDS, DEFAULT_ROLLOUT_QUIET_SECONDS,
    ProbeRunChange, ProbeTrigger, TriggerKind,
};
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

/// Changes listed on one run; more are counted in `changesOmitted`.
pub const MAX_LISTED: usize = 10;

/// What is kept of a watched object between two of its versions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub labels: BTreeMap<String, String>,
    /// Workloads: metadata.generation. ConfigMaps and Nodes: a hash of their data or spec.
    pub spec: u64,
    /// Workloads only.
    pub rollout: Option<Rollout>,
    /// Condition type → status.
    pub conditions: BTreeMap<String, String>,
}

/// How far a workload's rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i64,
    pub updated: i64,
    pub ready: i64,
    /// Pods of any revision, where the kind reports it: old pods still running mean unfinished.
    pub total: Option<i64>,
}

impl Rollout {
    /// The controller saw the current spec, and every desired replica is updated and ready.
    pub fn finished(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated >= self.desired
            && self.ready >= self.desired
            && self.total.is_none_or(|t| t <= self.desired)
    }
}

fn int(v: &Value, path: &[&str]) -> i64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn hash_of(v: &[Option<&Value>]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for part in v {
        // serde_json's map is ordered, so equal content gives equal text.
        part.map(|p| p.to_string()).hash(&mut h);
    }
    h.finish()
}

/// The fingerprint of an object of `kind` from its labels, generation and the rest of it
/// (`data`: spec, status, data, as a DynamicObject holds them).
pub fn fingerprint(
    kind: TriggerKind,
    labels: BTreeMap<String, String>,
    generation: i64,
    data: &Value,
) -> Fingerprint {
    let status = data.get("status").cloned().unwrap_or(Value::Null);
    let conditions = status
        .get("conditions")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| {
                    Some((
                        c.get("type")?.as_str()?.to_owned(),
                        c.get("status")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let replicas = || {
        data.get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(1)
    };
    let rollout = match kind {
        TriggerKind::Deployment | TriggerKind::StatefulSet => Some(Rollout {
            generation,
            observed_generation: int(&status, &["observedGeneration"]),
            desired: replicas(),
            updated: int(&status, &["updatedReplicas"]),
            ready: int(&status, &["readyReplicas"]),
            total: status.get("replicas").and_then(Value::as_i64),
        }),
        TriggerKind::DaemonSet => Some(Rollout {
            generation,
            observed_generation: int(&status, &["observedGeneration"]),
            desired: int(&status, &["desiredNumberScheduled"]),
            updated: int(&status, &["updatedNumberScheduled"]),
            ready: int(&status, &["numberReady"]),
            total: status.get("currentNumberScheduled").and_then(Value::as_i64),
        }),
        TriggerKind::ConfigMap | TriggerKind::Node => None,
    };
    let spec = match kind {
        TriggerKind::ConfigMap => hash_of(&[data.get("data"), data.get("binaryData")]),
        // Cordoning, taints: what a Node's spec says about scheduling.
        TriggerKind::Node => hash_of(&[data.get("spec")]),
        _ => generation as u64,
    };
    Fingerprint {
        labels,
        spec,
        rollout,
        conditions,
    }
}

/// What is tracked of a watched object: its fingerprint, and whether a rollout of it started
/// (a new generation, or its creation) and has not finished yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub fingerprint: Fingerprint,
    pub rolling: bool,
}

/// One change seen on an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub change: ChangeType,
    pub detail: String,
    /// With ConditionChanged: the condition types whose status changed.
    pub conditions: BTreeSet<String>,
}

fn seen(change: ChangeType, detail: impl Into<String>) -> Seen {
    Seen {
        change,
        detail: detail.into(),
        conditions: BTreeSet::new(),
    }
}

/// How an object seen in the first list of a watch is tracked: nothing it shows then is a
/// change, but a rollout already under way counts when it finishes.
pub fn first_seen(fingerprint: Fingerprint) -> Tracked {
    let rolling = fingerprint.rollout.is_some_and(|r| !r.finished());
    Tracked {
        fingerprint,
        rolling,
    }
}

/// The changes from `prev` to `next` (None: not there: created, or deleted), and what to
/// track from now on.
pub fn diff(
    kind: TriggerKind,
    prev: Option<&Tracked>,
    next: Option<Fingerprint>,
) -> (Option<Tracked>, Vec<Seen>) {
    let mut out = Vec::new();
    match (prev, next) {
        (None, None) => (None, out),
        (Some(p), None) => {
            let mut s = match kind {
                TriggerKind::Node => seen(ChangeType::ConditionChanged, "left"),
                _ => seen(ChangeType::SpecChanged, "deleted"),
            };
            s.conditions = p.fingerprint.conditions.keys().cloned().collect();
            out.push(s);
            (None, out)
        }
        (None, Some(next)) => {
            match kind {
                TriggerKind::Node => {
                    let mut s = seen(ChangeType::ConditionChanged, "joined");
                    s.conditions = next.conditions.keys().cloned().collect();
                    out.push(s);
                }
                _ => out.push(seen(ChangeType::SpecChanged, "created")),
            }
            let finished = next.rollout.is_some_and(|r| r.finished());
            if finished {
                out.push(seen(ChangeType::RolloutFinished, "created"));
            }
            let rolling = next.rollout.is_some() && !finished;
            (
                Some(Tracked {
                    fingerprint: next,
                    rolling,
                }),
                out,
            )
        }
        (Some(p), Some(next)) => {
            let old = &p.fingerprint;
            let spec_changed = old.spec != next.spec;
            if spec_changed {
                let detail = match next.rollout {
                    Some(r) => format!("generation {}", r.generation),
                    None if kind == TriggerKind::ConfigMap => "data".to_owned(),
                    None => "spec".to_owned(),
                };
                out.push(seen(ChangeType::SpecChanged, detail));
            }
            let mut rolling = p.rolling || (spec_changed && next.rollout.is_some());
            if rolling && let Some(r) = next.rollout.filter(Rollout::finished) {
                out.push(seen(
                    ChangeType::RolloutFinished,
                    format!(
                        "generation {}, {}/{} ready",
                        r.generation, r.ready, r.desired
                    ),
                ));
                rolling = false;
            }
            let types: BTreeSet<&String> = old
                .conditions
                .keys()
                .chain(next.conditions.keys())
                .collect();
            let flipped: Vec<(String, String)> = types
                .into_iter()
                .filter_map(|t| {
                    let (a, b) = (old.conditions.get(t), next.conditions.get(t));
                    (a != b).then(|| {
                        let show = |s: Option<&String>| s.cloned().unwrap_or_else(|| "-".into());
                        (t.clone(), format!("{t} {} -> {}", show(a), show(b)))
                    })
                })
                .collect();
            if !flipped.is_empty() {
                out.push(Seen {
                    change: ChangeType::ConditionChanged,
                    detail: flipped
                        .iter()
                        .map(|(_, d)| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    conditions: flipped.into_iter().map(|(t, _)| t).collect(),
                });
            }
            (
                Some(Tracked {
                    fingerprint: next,
                    rolling,
                }),
                out,
            )
        }
    }
}

/// The controller's defaults for triggers that set no quiet period or maximum wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    pub quiet: Duration,
    pub max_wait: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            quiet: Duration::from_secs(DEFAULT_QUIET_SECONDS as u64),
            max_wait: Duration::from_secs(DEFAULT_MAX_WAIT_SECONDS as u64),
        }
    }
}

/// A trigger ready to match: validated, with its defaults filled in.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub kind: TriggerKind,
    /// None for Nodes.
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub selector: Selector,
    pub changes: BTreeSet<ChangeType>,
    pub condition_types: BTreeSet<String>,
    pub quiet: Duration,
    pub max_wait: Duration,
}

/// The triggers of a Probe in `probe_ns`, or why they cannot be used. Only objects of the
/// Probe's own namespace and Nodes may be watched (docs/probes.md).
pub fn compile(
    probe_ns: &str,
    triggers: &[ProbeTrigger],
    defaults: Debounce,
) -> Result<Vec<Compiled>, String> {
    triggers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = format!("spec.triggers[{i}] ({})", t.kind);
            let namespace = if t.kind.namespaced() {
                if !t.namespace.is_empty() && t.namespace != probe_ns {
                    return Err(format!(
                        "{at}: namespace {} is not the Probe's own ({probe_ns}); a probe may watch only objects of its own namespace, and Nodes",
                        t.namespace
                    ));
                }
                Some(probe_ns.to_owned())
            } else {
                if !t.namespace.is_empty() {
                    return Err(format!("{at}: Nodes have no namespace; remove namespace"));
                }
                None
            };
            let changes: BTreeSet<ChangeType> = if t.changes.is_empty() {
                [match t.kind {
                    k if k.is_workload() => ChangeType::RolloutFinished,
                    TriggerKind::ConfigMap => ChangeType::SpecChanged,
                    _ => ChangeType::ConditionChanged,
                }]
                .into()
            } else {
                t.changes.iter().copied().collect()
            };
            if changes.contains(&ChangeType::RolloutFinished) && !t.kind.is_workload() {
                return Err(format!(
                    "{at}: RolloutFinished applies to DaemonSets, Deployments and StatefulSets only"
                ));
            }
            let selector = match &t.selector {
                Some(s) => Selector::try_from(s.clone())
                    .map_err(|e| format!("{at}: selector: {e}"))?,
                None => Selector::default(),
            };
            let seconds = |v: Option<i64>, default: Duration, what: &str, min: i64| match v {
                None => Ok(default),
                Some(s) if s >= min && s <= 3600 => Ok(Duration::from_secs(s as u64)),
                Some(s) => Err(format!("{at}: {what} {s} is not between {min} and 3600")),
            };
            // A finished rollout is already the end of its burst (docs/probes.md).
            let default_quiet = if changes == BTreeSet::from([ChangeType::RolloutFinished]) {
                defaults
                    .quiet
                    .min(Duration::from_secs(DEFAULT_ROLLOUT_QUIET_SECONDS as u64))
            } else {
                defaults.quiet
            };
            Ok(Compiled {
                kind: t.kind,
                namespace,
                name: (!t.name.is_empty()).then(|| t.name.clone()),
                selector,
                changes,
                condition_types: t.condition_types.iter().cloned().collect(),
                quiet: seconds(t.quiet_seconds, default_quiet, "quietSeconds", 0)?,
                max_wait: seconds(t.max_wait_seconds, defaults.max_wait, "maxWaitSeconds", 1)?,
            })
        })
        .collect()
}

/// A change of one object, as the watch of its kind saw it.
#[derive(Debug, Clone)]
pub struct ObjectChange {
    pub kind: TriggerKind,
    /// Empty for a Node.
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub seen: Seen,
}

impl ObjectChange {
    pub fn record(&self, at: jiff::Timestamp) -> ProbeRunChange {
        ProbeRunChange {
            kind: self.kind.as_str().into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            change: self.seen.change.as_str().into(),
            detail: self.seen.detail.clone(),
            at: Some(Time(at)),
        }
    }
}

/// Whether the trigger counts the change.
pub fn matches(t: &Compiled, c: &ObjectChange) -> bool {
    t.kind == c.kind
        && t.namespace.as_deref().is_none_or(|ns| ns == c.namespace)
        && t.name.as_deref().is_none_or(|n| n == c.name)
        && t.changes.contains(&c.seen.change)
        && (c.seen.change != ChangeType::ConditionChanged
            || t.condition_types.is_empty()
            || !t.condition_types.is_disjoint(&c.seen.conditions))
        && t.selector.matches(&c.labels)
}

/// The changes gathered for one probe's next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first: Instant,
    /// The run starts at the latest then (`first` + the first change's maximum wait).
    pub latest: Instant,
    /// When it starts unless another change comes: the last change + its quiet period.
    pub due: Instant,
    pub changes: Vec<ProbeRunChange>,
    /// Changes beyond [`MAX_LISTED`], or repeats of one already listed.
    pub omitted: i64,
}

/// Debounces matching changes per probe: every change within the quiet period of the one
/// before it is one run, which starts when the quiet period has passed with no further change,
/// or at the maximum wait after the batch's first change, whichever comes first.
#[derive(Debug, Default)]
pub struct Debouncer<K: Ord + Clone> {
    pending: BTreeMap<K, Batch>,
}

impl<K: Ord + Clone> Debouncer<K> {
    pub fn push(
        &mut self,
        key: K,
        change: ProbeRunChange,
        quiet: Duration,
        max_wait: Duration,
        now: Instant,
    ) {
        let batch = self.pending.entry(key).or_insert_with(|| Batch {
            first: now,
            latest: now + max_wait,
            due: now,
            changes: Vec::new(),
            omitted: 0,
        });
        batch.due = (now + quiet).min(batch.latest);
        let repeat = batch.changes.iter().any(|c| {
            (&c.kind, &c.namespace, &c.name, &c.change)
                == (
                    &change.kind,
                    &change.namespace,
                    &change.name,
                    &change.change,
                )
        });
        if repeat || batch.changes.len() >= MAX_LISTED {
            batch.omitted += 1;
        } else {
            batch.changes.push(change);
        }
    }

    /// When the next batch is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|b| b.due).min()
    }

    /// Takes the batches due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Vec<(K, Batch)> {
        let due: Vec<K> = self
            .pending
            .iter()
            .filter(|(_, b)| b.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        due.into_iter()
            .filter_map(|k| self.pending.remove(&k).map(|b| (k, b)))
            .collect()
    }

    /// Drops what was gathered for a probe that is gone or whose triggers changed.
    pub fn forget(&mut self, key: &K) {
        self.pending.remove(key);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(generation: i64, observed: i64, updated: i64, ready: i64) -> Fingerprint {
        fingerprint(
            TriggerKind::Deployment,
            [("app".to_owned(), "web".to_owned())].into(),
            generation,
            &json!({"spec": {"replicas": 3}, "status": {"observedGeneration": observed,
                "updatedReplicas": updated, "readyReplicas": ready, "replicas": 3}}),
        )
    }

    fn kinds(seen: &[Seen]) -> Vec<ChangeType> {
        seen.iter().map(|s| s.change).collect()
    }

    #[test]
    fn a_spec_change_then_a_finished_rollout_are_two_changes_and_the_pods_between_none() {
        let start = first_seen(deploy(1, 1, 3, 3));
        assert!(!start.rolling);
        let (t, s) = diff(
            TriggerKind::Deployment,
            Some(&start),
            Some(deploy(2, 1, 3, 3)),
        );
        assert_eq!(kinds(&s), [ChangeType::SpecChanged]);
        let t = t.unwrap();
        assert!(t.rolling);
        let (t, s) = diff(TriggerKind::Deployment, Some(&t), Some(deploy(2, 2, 1, 3)));
        assert!(s.is_empty(), "one pod updated: {s:?}");
        let (t, s) = diff(
            TriggerKind::Deployment,
            t.as_ref(),
            Some(deploy(2, 2, 3, 3)),
        );
        assert_eq!(kinds(&s), [ChangeType::RolloutFinished]);
        assert_eq!(s[0].detail, "generation 2, 3/3 ready");
        let t = t.unwrap();
        assert!(!t.rolling);
        // A pod that restarts later is no rollout.
        let (t, s) = diff(TriggerKind::Deployment, Some(&t), Some(deploy(2, 2, 3, 2)));
        assert!(s.is_empty());
        let (_, s) = diff(
            TriggerKind::Deployment,
            t.as_ref(),
            Some(deploy(2, 2, 3, 3)),
        );
        assert!(s.is_empty(), "ready again without a spec change: {s:?}");
    }

    #[test]
    fn a_rollout_under_way_when_the_watch_starts_counts_when_it_finishes() {
        let t = first_seen(deploy(4, 4, 1, 1));
        assert!(t.rolling);
        let (_, s) = diff(TriggerKind::Deployment, Some(&t), Some(deploy(4, 4, 3, 3)));
        assert_eq!(kinds(&s), [ChangeType::RolloutFinished]);
    }

    #[test]
    fn old_pods_still_running_keep_a_rollout_unfinished() {
        let r = Rollout {
            generation: 2,
            observed_generation: 2,
            desired: 3,
            updated: 3,
            ready: 3,
            total: Some(4),
        };
        assert!(!r.finished());
        assert!(
            Rollout {
                total: Some(3),
                ..r
            }
            .finished()
        );
        assert!(
            !Rollout {
                observed_generation: 1,
                total: None,
                ..r
            }
            .finished()
        );
    }

    fn node(ready: &str) -> Fingerprint {
        fingerprint(
            TriggerKind::Node,
            BTreeMap::new(),
            0,
            &json!({"spec": {}, "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastHeartbeatTime": "2026-01-01T00:00:00Z"},
                {"type": "MemoryPressure", "status": "False"}]}}),
        )
    }

    #[test]
    fn a_node_ready_flip_joining_and_leaving_are_condition_changes() {
        let t = first_seen(node("True"));
        let (t, s) = diff(TriggerKind::Node, Some(&t), Some(node("True")));
        assert!(s.is_empty(), "a heartbeat is no change");
        let (t, s) = diff(TriggerKind::Node, t.as_ref(), Some(node("False")));
        assert_eq!(kinds(&s), [ChangeType::ConditionChanged]);
        assert_eq!(s[0].detail, "Ready True -> False");
        assert_eq!(s[0].conditions, ["Ready".to_owned()].into());
        let (_, s) = diff(TriggerKind::Node, t.as_ref(), None);
        assert_eq!(s[0].detail, "left");
        let (_, s) = diff(TriggerKind::Node, None, Some(node("True")));
        assert_eq!(
            (s[0].change, s[0].detail.as_str()),
            (ChangeType::ConditionChanged, "joined")
        );
    }

    #[test]
    fn a_config_map_changes_with_its_data_only() {
        let cm = |data: Value, labels: &[(&str, &str)]| {
            fingerprint(
                TriggerKind::ConfigMap,
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                0,
                &json!({"data": data}),
            )
        };
        let t = first_seen(cm(json!({"a": "1"}), &[]));
        let (t, s) = diff(
            TriggerKind::ConfigMap,
            Some(&t),
            Some(cm(json!({"a": "1"}), &[("x", "y")])),
        );
        assert!(s.is_empty(), "a new label is no data change");
        let (_, s) = diff(
            TriggerKind::ConfigMap,
            t.as_ref(),
            Some(cm(json!({"a": "2"}), &[])),
        );
        assert_eq!(kinds(&s), [ChangeType::SpecChanged]);
    }

    fn trigger(v: Value) -> ProbeTrigger {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn triggers_on_another_namespace_or_with_a_namespaced_node_are_refused() {
        let d = Debounce::default();
        let err = compile(
            "shop",
            &[trigger(
                json!({"kind": "DaemonSet", "namespace": "kube-system"}),
            )],
            d,
        )
        .unwrap_err();
        assert!(
            err.contains(
                "spec.triggers[0] (DaemonSet): namespace kube-system is not the Probe's own (shop)"
            ),
            "{err}"
        );
        assert!(
            compile(
                "shop",
                &[trigger(json!({"kind": "Node", "namespace": "shop"}))],
                d
            )
            .is_err()
        );
        assert!(
            compile(
                "shop",
                &[trigger(
                    json!({"kind": "ConfigMap", "changes": ["RolloutFinished"]})
                )],
                d
            )
            .is_err()
        );
        let bad = trigger(
            json!({"kind": "Deployment", "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}),
        );
        assert!(compile("shop", &[bad], d).unwrap_err().contains("selector"));
        assert!(
            compile(
                "shop",
                &[trigger(json!({"kind": "Deployment", "quietSeconds": -1}))],
                d
            )
            .is_err()
        );
        let ok = compile(
            "shop",
            &[
                trigger(json!({"kind": "Deployment", "namespace": "shop"})),
                trigger(json!({"kind": "Node"})),
            ],
            d,
        )
        .unwrap();
        assert_eq!(ok[0].namespace.as_deref(), Some("shop"));
        assert_eq!(
            ok[0].changes,
            [ChangeType::RolloutFinished].into(),
            "default"
        );
        assert_eq!(ok[1].namespace, None);
        assert_eq!(ok[1].changes, [ChangeType::ConditionChanged].into());
        assert_eq!(ok[1].quiet, Duration::from_secs(5));
    }

    #[test]
    fn a_trigger_counting_only_finished_rollouts_waits_one_second_unless_it_says_otherwise() {
        let d = Debounce::default();
        let quiet = |t: serde_json::Value| compile("shop", &[trigger(t)], d).unwrap()[0].quiet;
        assert_eq!(quiet(json!({"kind": "DaemonSet"})), Duration::from_secs(1));
        assert_eq!(
            quiet(json!({"kind": "DaemonSet", "changes": ["RolloutFinished", "SpecChanged"]})),
            Duration::from_secs(5)
        );
        assert_eq!(
            quiet(json!({"kind": "DaemonSet", "quietSeconds": 7})),
            Duration::from_secs(7)
        );
        let short = Debounce {
            quiet: Duration::ZERO,
            ..d
        };
        assert_eq!(
            compile("shop", &[trigger(json!({"kind": "Deployment"}))], short).unwrap()[0].quiet,
            Duration::ZERO,
            "a controller default below a second stays"
        );
    }

    fn change(
        kind: TriggerKind,
        ns: &str,
        name: &str,
        c: ChangeType,
        conds: &[&str],
    ) -> ObjectChange {
        ObjectChange {
            kind,
            namespace: ns.into(),
            name: name.into(),
            labels: [("tier".to_owned(), "system".to_owned())].into(),
            seen: Seen {
                change: c,
                detail: String::new(),
                conditions: conds.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn a_trigger_matches_its_kind_namespace_name_labels_changes_and_conditions() {
        let t = &compile(
            "kube-system",
            &[trigger(json!({"kind": "DaemonSet",
                "selector": {"matchLabels": {"tier": "system"}}}))],
            Debounce::default(),
        )
        .unwrap()[0];
        use ChangeType::*;
        use TriggerKind::*;
        assert!(matches(
            t,
            &change(DaemonSet, "kube-system", "kube-proxy", RolloutFinished, &[])
        ));
        assert!(!matches(
            t,
            &change(DaemonSet, "shop", "kube-proxy", RolloutFinished, &[])
        ));
        assert!(!matches(
            t,
            &change(Deployment, "kube-system", "dns", RolloutFinished, &[])
        ));
        assert!(!matches(
            t,
            &change(DaemonSet, "kube-system", "kube-proxy", SpecChanged, &[])
        ));
        let mut other = change(DaemonSet, "kube-system", "kube-proxy", RolloutFinished, &[]);
        other.labels.clear();
        assert!(!matches(t, &other), "labels");

        let n = &compile(
            "p",
            &[trigger(
                json!({"kind": "Node", "name": "n1", "conditionTypes": ["Ready"]}),
            )],
            Debounce::default(),
        )
        .unwrap()[0];
        assert!(matches(
            n,
            &change(Node, "", "n1", ConditionChanged, &["Ready"])
        ));
        assert!(!matches(
            n,
            &change(Node, "", "n1", ConditionChanged, &["DiskPressure"])
        ));
        assert!(!matches(
            n,
            &change(Node, "", "n2", ConditionChanged, &["Ready"])
        ));
    }

    fn rec(name: &str, c: &str) -> ProbeRunChange {
        ProbeRunChange {
            kind: "Deployment".into(),
            namespace: "shop".into(),
            name: name.into(),
            change: c.into(),
            ..Default::default()
        }
    }

    #[test]
    fn changes_within_the_quiet_period_are_one_run_started_after_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Debouncer::default();
        d.push("p", rec("web", "SpecChanged"), s(5), s(60), t0);
        d.push("p", rec("web", "RolloutFinished"), s(5), s(60), t0 + s(3));
        d.push("p", rec("web", "RolloutFinished"), s(5), s(60), t0 + s(4));
        assert_eq!(d.next_due(), Some(t0 + s(9)));
        assert!(d.take_due(t0 + s(8)).is_empty());
        let due = d.take_due(t0 + s(9));
        assert_eq!(due.len(), 1);
        let b = &due[0].1;
        assert_eq!(b.changes.len(), 2, "the repeat is counted, not listed");
        assert_eq!(b.omitted, 1);
        assert!(d.is_empty());
        d.push("p", rec("web", "SpecChanged"), s(5), s(60), t0 + s(20));
        assert_eq!(d.next_due(), Some(t0 + s(25)), "a new batch after the run");
    }

    #[test]
    fn changes_that_never_stop_still_run_at_the_maximum_wait() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Debouncer::default();
        for i in 0..30 {
            d.push(
                "p",
                rec(&format!("w{i}"), "SpecChanged"),
                s(5),
                s(20),
                t0 + s(i),
            );
        }
        assert_eq!(d.next_due(), Some(t0 + s(20)));
        let due = d.take_due(t0 + s(20));
        assert_eq!(due[0].1.changes.len(), MAX_LISTED);
        assert_eq!(due[0].1.omitted, 20);
    }

    #[test]
    fn each_probe_is_debounced_on_its_own_and_a_forgotten_one_never_runs() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut d = Debouncer::default();
        d.push("a", rec("web", "SpecChanged"), s(2), s(60), t0);
        d.push("b", rec("web", "SpecChanged"), s(10), s(60), t0);
        d.push("c", rec("web", "SpecChanged"), s(1), s(60), t0);
        d.forget(&"c");
        let due: Vec<_> = d.take_due(t0 + s(2)).into_iter().map(|(k, _)| k).collect();
        assert_eq!(due, ["a"]);
        assert_eq!(d.next_due(), Some(t0 + s(10)));
    }
}
