//! Probes triggered by change (docs/probes.md): watches the objects Probes' `spec.triggers`
//! name and, when a matching change has settled, runs the probe the way a manual run does — a
//! Pending ProbeRun with trigger Change, which `runs` claims and runs — recording the changes.
//!
//! - One watch per kind (DaemonSet, Deployment, StatefulSet, ConfigMap, Node), shared by every
//!   probe that asks for it, running only while some probe does. Each keeps a small fingerprint
//!   per object, not the object (`change`), and sends what changed to the hub.
//! - The hub (one task) watches Probes, validates their triggers (TriggersValid in the Probe's
//!   status; invalid triggers are ignored), matches changes, debounces them per probe, and
//!   creates the runs. Only the leader runs it.
//!
//! A batch still waiting when the controller stops is not run: the next matching change, the
//! schedule or a manual run covers it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kdiag_api::diagnosis::probe_run::{PROBE_RUN_PROBE_LABEL, probe_label_value};
use kdiag_api::probe_trigger::{ProbeCondition, TRIGGERS_VALID_CONDITION, TriggerKind};
use kdiag_api::{Probe, ProbeRun, ProbeRunSpec, ProbeRunTrigger};
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DeserializeGuard};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::change::{self, Compiled, Debounce, Debouncer, ObjectChange, Tracked};
use crate::Error;

/// A probe, as namespace and name.
type ProbeKey = (String, String);

/// What the watches of kinds tell the hub.
enum Seen {
    Change(ObjectChange),
    /// The watch of this kind has listed its objects: changes from now on are seen.
    Synced(TriggerKind),
}

/// Starts the hub; it ends at `shutdown`.
pub fn start(
    client: Client,
    defaults: Debounce,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    run(client, defaults, metrics, shutdown)
}

/// A probe with triggers, as the hub keeps it.
struct Watching {
    probe: Arc<Probe>,
    triggers: Vec<Compiled>,
}

async fn run(
    client: Client,
    defaults: Debounce,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::channel::<Seen>(1024);
    let mut probes = std::pin::pin!(
        watcher(
            Api::<DeserializeGuard<Probe>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
    );
    let mut watching: HashMap<ProbeKey, Watching> = HashMap::new();
    let mut listed: HashSet<ProbeKey> = HashSet::new();
    let mut kinds: HashMap<TriggerKind, CancellationToken> = HashMap::new();
    let mut synced: HashSet<TriggerKind> = HashSet::new();
    let mut debouncer: Debouncer<ProbeKey> = Debouncer::default();
    loop {
        let next = debouncer.next_due();
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            event = probes.next() => {
                let Some(event) = event else { break };
                let changed = match event {
                    Ok(watcher::Event::Init) => {
                        listed.clear();
                        Vec::new()
                    }
                    Ok(watcher::Event::InitApply(p)) | Ok(watcher::Event::Apply(p)) => {
                        let Ok(p) = p.0 else { continue };
                        let key = (p.namespace().unwrap_or_default(), p.name_any());
                        listed.insert(key.clone());
                        update(&mut watching, &mut debouncer, key.clone(), p, defaults);
                        vec![key]
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        if let Ok(p) = p.0 {
                            let key = (p.namespace().unwrap_or_default(), p.name_any());
                            watching.remove(&key);
                            debouncer.forget(&key);
                        }
                        Vec::new()
                    }
                    Ok(watcher::Event::InitDone) => {
                        watching.retain(|k, _| listed.contains(k));
                        Vec::new()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watching Probes for their triggers; retrying");
                        Vec::new()
                    }
                };
                reconcile_kinds(&client, &watching, &mut kinds, &mut synced, &tx);
                for key in changed {
                    write_condition(&client, &watching, &synced, &key, &metrics).await;
                }
            }
            Some(seen) = rx.recv() => match seen {
                Seen::Synced(kind) => {
                    if kinds.contains_key(&kind) && synced.insert(kind) {
                        let keys: Vec<ProbeKey> = watching
                            .iter()
                            .filter(|(_, w)| w.triggers.iter().any(|t| t.kind == kind))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for key in keys {
                            write_condition(&client, &watching, &synced, &key, &metrics).await;
                        }
                    }
                }
                Seen::Change(c) => {
                    let now = std::time::Instant::now();
                    let at = jiff::Timestamp::now();
                    for (key, w) in &watching {
                        // The first matching trigger sets the quiet period and maximum wait.
                        if let Some(t) = w.triggers.iter().find(|t| change::matches(t, &c)) {
                            tracing::debug!(probe = %format!("{}/{}", key.0, key.1),
                                change = %c.record(at).summary(), "probe trigger matched");
                            debouncer.push(key.clone(), c.record(at), t.quiet, t.max_wait, now);
                        }
                    }
                }
            },
            _ = sleep => {
                for (key, batch) in debouncer.take_due(std::time::Instant::now()) {
                    let Some(w) = watching.get(&key) else { continue };
                    if let Err(e) = create_run(&client, &w.probe, batch).await {
                        metrics.controller.error("probe-triggers", e.metric_label(), e.category());
                        tracing::warn!(error = %e, "a probe triggered by change could not be run");
                    }
                }
            }
        }
    }
    for token in kinds.values() {
        token.cancel();
    }
}

/// Takes a Probe's current triggers; what was gathered under other triggers is dropped.
fn update(
    watching: &mut HashMap<ProbeKey, Watching>,
    debouncer: &mut Debouncer<ProbeKey>,
    key: ProbeKey,
    probe: Probe,
    defaults: Debounce,
) {
    let same = watching
        .get(&key)
        .is_some_and(|w| w.probe.spec.triggers == probe.spec.triggers);
    if probe.spec.triggers.is_empty() {
        watching.remove(&key);
        debouncer.forget(&key);
        return;
    }
    if !same {
        debouncer.forget(&key);
    }
    let triggers = change::compile(&key.0, &probe.spec.triggers, defaults).unwrap_or_default();
    watching.insert(
        key,
        Watching {
            probe: Arc::new(probe),
            triggers,
        },
    );
}

/// Starts the watch of each kind some probe asks for, and stops the others.
fn reconcile_kinds(
    client: &Client,
    watching: &HashMap<ProbeKey, Watching>,
    kinds: &mut HashMap<TriggerKind, CancellationToken>,
    synced: &mut HashSet<TriggerKind>,
    tx: &mpsc::Sender<Seen>,
) {
    let wanted: HashSet<TriggerKind> = watching
        .values()
        .flat_map(|w| w.triggers.iter().map(|t| t.kind))
        .collect();
    kinds.retain(|kind, token| {
        let keep = wanted.contains(kind);
        if !keep {
            tracing::info!(
                kind = kind.as_str(),
                "no probe triggers on this kind any more: its watch stops"
            );
            token.cancel();
            synced.remove(kind);
        }
        keep
    });
    for kind in wanted {
        kinds.entry(kind).or_insert_with(|| {
            tracing::info!(
                kind = kind.as_str(),
                "a probe triggers on this kind: its watch starts"
            );
            let token = CancellationToken::new();
            tokio::spawn(watch_kind(client.clone(), kind, tx.clone(), token.clone()));
            token
        });
    }
}

fn resource(kind: TriggerKind) -> ApiResource {
    match kind {
        TriggerKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        TriggerKind::Deployment => ApiResource::erase::<Deployment>(&()),
        TriggerKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        TriggerKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
        TriggerKind::Node => ApiResource::erase::<Node>(&()),
    }
}

/// The watch of one kind, cluster-wide: it tracks each object's fingerprint and sends the hub
/// what changed. Nothing listed first is a change; after a relist, what changed or went in
/// between is.
async fn watch_kind(
    client: Client,
    kind: TriggerKind,
    tx: mpsc::Sender<Seen>,
    stop: CancellationToken,
) {
    let api = Api::<DynamicObject>::all_with(client, &resource(kind));
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut tracked: HashMap<(String, String), Tracked> = HashMap::new();
    let mut relisted: HashSet<(String, String)> = HashSet::new();
    let mut first_list = true;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        let (object, deleted) = match event {
            Ok(watcher::Event::Init) => {
                relisted.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                relisted.insert(key_of(&o));
                if first_list {
                    let fp = fingerprint(kind, &o);
                    tracked.insert(key_of(&o), change::first_seen(fp));
                    continue;
                }
                (o, false)
            }
            Ok(watcher::Event::InitDone) => {
                if !first_list {
                    let gone: Vec<_> = tracked
                        .keys()
                        .filter(|k| !relisted.contains(*k))
                        .cloned()
                        .collect();
                    for key in gone {
                        let prev = tracked.remove(&key);
                        let (_, seen) = change::diff(kind, prev.as_ref(), None);
                        let labels = prev.map(|p| p.fingerprint.labels).unwrap_or_default();
                        send(&tx, kind, &key, &labels, seen).await;
                    }
                }
                first_list = false;
                if tx.send(Seen::Synced(kind)).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(watcher::Event::Apply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Err(e) => {
                tracing::warn!(kind = kind.as_str(), error = %e, "watching for probe triggers; retrying");
                continue;
            }
        };
        let key = key_of(&object);
        let next = (!deleted).then(|| fingerprint(kind, &object));
        let (now_tracked, seen) = change::diff(kind, tracked.get(&key), next);
        match now_tracked {
            Some(t) => tracked.insert(key.clone(), t),
            None => tracked.remove(&key),
        };
        send(&tx, kind, &key, object.labels(), seen).await;
    }
}

fn key_of(o: &DynamicObject) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn fingerprint(kind: TriggerKind, o: &DynamicObject) -> change::Fingerprint {
    change::fingerprint(
        kind,
        o.labels().clone(),
        o.metadata.generation.unwrap_or(0),
        &o.data,
    )
}

async fn send(
    tx: &mpsc::Sender<Seen>,
    kind: TriggerKind,
    key: &(String, String),
    labels: &BTreeMap<String, String>,
    seen: Vec<change::Seen>,
) {
    for s in seen {
        let c = ObjectChange {
            kind,
            namespace: key.0.clone(),
            name: key.1.clone(),
            labels: labels.clone(),
            seen: s,
        };
        // The hub is gone only at shutdown.
        let _ = tx.send(Seen::Change(c)).await;
    }
}

/// The TriggersValid condition a probe should have now; None while the watches it needs are
/// still listing (True means its changes are seen from now on).
pub fn condition(
    probe: &Probe,
    defaults: Debounce,
    synced: &HashSet<TriggerKind>,
) -> Option<ProbeCondition> {
    let ns = probe.namespace().unwrap_or_default();
    let generation = probe.metadata.generation;
    match change::compile(&ns, &probe.spec.triggers, defaults) {
        Err(message) => Some(ProbeCondition {
            type_: TRIGGERS_VALID_CONDITION.into(),
            status: "False".into(),
            observed_generation: generation,
            reason: "InvalidTrigger".into(),
            message,
        }),
        Ok(triggers) if triggers.iter().all(|t| synced.contains(&t.kind)) => {
            let mut kinds: Vec<&str> = triggers.iter().map(|t| t.kind.as_str()).collect();
            kinds.sort();
            kinds.dedup();
            Some(ProbeCondition {
                type_: TRIGGERS_VALID_CONDITION.into(),
                status: "True".into(),
                observed_generation: generation,
                reason: "Watching".into(),
                message: format!("watching {}", kinds.join(", ")),
            })
        }
        Ok(_) => None,
    }
}

/// Writes the probe's TriggersValid condition when it differs, keeping its other conditions.
async fn write_condition(
    client: &Client,
    watching: &HashMap<ProbeKey, Watching>,
    synced: &HashSet<TriggerKind>,
    key: &ProbeKey,
    metrics: &Metrics,
) {
    let Some(w) = watching.get(key) else { return };
    // The defaults only fill in periods; validity does not depend on them.
    let Some(wanted) = condition(&w.probe, Debounce::default(), synced) else {
        return;
    };
    let mut conditions = w
        .probe
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    if conditions.iter().any(|c| c == &wanted) {
        return;
    }
    conditions.retain(|c| c.type_ != TRIGGERS_VALID_CONDITION);
    conditions.push(wanted.clone());
    if wanted.status == "False" {
        tracing::warn!(probe = %format!("{}/{}", key.0, key.1), message = %wanted.message, "probe triggers ignored");
    }
    let r = Api::<Probe>::namespaced(client.clone(), &key.0)
        .patch_status(
            &key.1,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await;
    if let Err(e) = r {
        let e = Error::kube(
            "record the trigger condition of",
            format!("Probe {}/{}", key.0, key.1),
            e,
        );
        metrics
            .controller
            .error("probe-triggers", e.metric_label(), e.category());
        tracing::warn!(error = %e, "probe triggers");
    }
}

/// Creates the run of a batch: a Pending ProbeRun with trigger Change, owned by the Probe, which
/// the runner claims at once as it claims manual runs.
async fn create_run(client: &Client, probe: &Probe, batch: change::Batch) -> Result<(), Error> {
    let ns = probe.namespace().unwrap_or_default();
    let name = probe.name_any();
    // Room for the 5 characters the apiserver appends, within a Job name's 63.
    let base: String = name.chars().take(50).collect();
    let run = ProbeRun {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", base.trim_end_matches('-'))),
            namespace: Some(ns.clone()),
            labels: Some([(PROBE_RUN_PROBE_LABEL.to_owned(), probe_label_value(&name))].into()),
            annotations: Some(kdiag_api::diagnosis::probe_run::requested_now()),
            owner_references: probe.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: ProbeRunSpec {
            probe: name.clone(),
            trigger: ProbeRunTrigger::Change,
            changes: batch.changes,
            changes_omitted: (batch.omitted > 0).then_some(batch.omitted),
        },
        status: None,
    };
    let created = Api::<ProbeRun>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &run)
        .await
        .map_err(|e| Error::kube("create", format!("ProbeRun for Probe {ns}/{name}"), e))?;
    tracing::info!(probe = %format!("{ns}/{name}"), run = %created.name_any(),
        changes = %created.spec.changes.iter().map(|c| c.summary()).collect::<Vec<_>>().join("; "),
        "probe run started by change");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(triggers: serde_json::Value) -> Probe {
        serde_json::from_value(json!({
            "apiVersion": "kubeprober.erda.cloud/v1", "kind": "Probe",
            "metadata": {"name": "p", "namespace": "shop", "generation": 2},
            "spec": {"triggers": triggers}
        }))
        .unwrap()
    }

    #[test]
    fn a_probe_is_told_its_triggers_are_watched_only_once_every_kind_has_listed() {
        let p = probe(json!([{"kind": "Deployment"}, {"kind": "Node"}]));
        let mut synced = HashSet::new();
        synced.insert(TriggerKind::Node);
        assert_eq!(condition(&p, Debounce::default(), &synced), None);
        synced.insert(TriggerKind::Deployment);
        let c = condition(&p, Debounce::default(), &synced).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
            ("True", "Watching", "watching Deployment, Node")
        );
        assert_eq!(c.observed_generation, Some(2));
    }

    #[test]
    fn a_trigger_on_another_namespace_makes_triggers_valid_false_at_once() {
        let p = probe(json!([{"kind": "DaemonSet", "namespace": "kube-system"}]));
        let c = condition(&p, Debounce::default(), &HashSet::new()).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidTrigger")
        );
        assert!(c.message.contains("own namespace"), "{}", c.message);
    }
}
