//! Where Event and alert triggers turn into Abnormals: storm control (token buckets per source
//! and per node), creation, and the bookkeeping of grouped repeats (trigger counts on the
//! Abnormal, triggered/suppressed counters on the source), written in coalesced batches so a storm
//! of triggers is not a storm of writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::Retryable;
use kdiag_api::{Abnormal, AbnormalSource};
use kdiag_pipeline::templates::CompiledSource;
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::storm::{Buckets, Budget};
use crate::Error;
use crate::retry;

/// Annotation: occurrences so far, by trigger identity (an Event's uid, an alert delivery).
pub const TRIGGER_EVENTS_ANNOTATION: &str = "kdiag.io/trigger-occurrences";
/// Annotation: the total of occurrences grouped into this Abnormal.
pub const TRIGGER_COUNT_ANNOTATION: &str = "kdiag.io/trigger-count";
/// Annotation: when the trigger was last seen.
pub use kdiag_api::labels::TRIGGER_LAST_SEEN_ANNOTATION;
/// Annotation: when the trigger resolved (an alert's endsAt), if it did.
pub const TRIGGER_RESOLVED_ANNOTATION: &str = "kdiag.io/trigger-resolved";
/// Identities kept per Abnormal; beyond, the oldest fold into one entry.
const MAX_OCCURRENCE_KEYS: usize = 200;

/// Budgets of Abnormals created by Event and alert sources.
#[derive(Debug, Clone, Copy)]
pub struct SourceBudgets {
    pub per_source: Budget,
    pub per_node: Budget,
}

impl Default for SourceBudgets {
    fn default() -> Self {
        Self {
            per_source: Budget {
                burst: 20.0,
                per_minute: 6.0,
            },
            per_node: Budget {
                burst: 10.0,
                per_minute: 2.0,
            },
        }
    }
}

#[derive(Default)]
struct Pending {
    occurrences: BTreeMap<String, u64>,
    last_seen: Option<String>,
    resolved: Option<String>,
}

/// Shared by the Event watcher and the alert endpoints.
pub struct Sink {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub budgets: SourceBudgets,
    buckets: Mutex<Buckets>,
    /// Per source (namespace/name): Abnormals created and triggers suppressed since the last flush.
    counters: Mutex<HashMap<String, (i64, i64)>>,
    /// Updates of Abnormals' trigger annotations not yet written, by namespace/name.
    pending: Mutex<HashMap<(String, String), Pending>>,
}

/// What became of a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Created(String),
    /// It belongs to an incident that already has its Abnormal; counted there.
    Grouped(String),
    /// Storm control, or no node: the reason.
    Suppressed(String),
}

impl Sink {
    pub fn new(client: Client, metrics: Arc<Metrics>, budgets: SourceBudgets) -> Self {
        Self {
            client,
            metrics,
            budgets,
            buckets: Mutex::new(Buckets::default()),
            counters: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token from the source's and the node's budgets, or says which is spent.
    pub fn admit(&self, kind: &str, source: &CompiledSource, node: &str) -> Result<(), Error> {
        let keys = [
            (format!("source:{}", source.key), self.budgets.per_source),
            (format!("node:{node}"), self.budgets.per_node),
        ];
        match self
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now(), &keys)
        {
            Ok(()) => Ok(()),
            Err(by) => {
                let reason = if by.starts_with("source:") {
                    "source"
                } else {
                    "node"
                };
                self.suppress(kind, source, reason);
                Err(Error::StormControl {
                    budget: reason,
                    key: by,
                })
            }
        }
    }

    /// Counts a trigger that created no Abnormal.
    pub fn suppress(&self, kind: &str, source: &CompiledSource, reason: &str) {
        self.metrics
            .controller
            .suppressed
            .with_label_values(&[kind, reason])
            .inc();
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(source.key.to_string())
            .or_default()
            .1 += 1;
    }

    /// Creates the Abnormal; an existing one of the same name counts as this trigger's incident.
    pub async fn create(
        &self,
        kind: &str,
        source: &CompiledSource,
        abnormal: &Abnormal,
    ) -> Result<Outcome, kube::Error> {
        let ns = abnormal.namespace().unwrap_or_default();
        let api: Api<Abnormal> = Api::namespaced(self.client.clone(), &ns);
        match api.create(&PostParams::default(), abnormal).await {
            Ok(_) => {
                self.metrics
                    .controller
                    .triggered
                    .with_label_values(&[kind])
                    .inc();
                self.counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(source.key.to_string())
                    .or_default()
                    .0 += 1;
                tracing::info!(abnormal = %format!("{ns}/{}", abnormal.name_any()), source = %source.key, node = %abnormal.spec.node_name, "{kind}: Abnormal created");
                Ok(Outcome::Created(abnormal.name_any()))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Grouped(abnormal.name_any())),
            Err(e) => Err(e),
        }
    }

    /// Records an occurrence (`identity` → its running count) on an Abnormal, written later.
    pub fn record(&self, ns: &str, name: &str, identity: &str, count: u64, last_seen: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = pending.entry((ns.to_owned(), name.to_owned())).or_default();
        let c = p.occurrences.entry(identity.to_owned()).or_insert(0);
        *c = (*c).max(count);
        if p.last_seen.as_deref().is_none_or(|l| l < last_seen) {
            p.last_seen = Some(last_seen.to_owned());
        }
    }

    /// Marks an Abnormal's trigger resolved (written later).
    pub fn resolve(&self, ns: &str, name: &str, at: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .entry((ns.to_owned(), name.to_owned()))
            .or_default()
            .resolved = Some(at.to_owned());
    }

    /// Writes what accumulated: trigger annotations of Abnormals and counters of sources.
    pub async fn flush(&self) {
        let pending: Vec<((String, String), Pending)> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for ((ns, name), p) in pending {
            if let Err(e) = self.write_occurrences(&ns, &name, &p).await {
                tracing::warn!(abnormal = %format!("{ns}/{name}"), error = %e, "recording repeated triggers");
                // Keep it for the next flush unless the Abnormal is gone.
                if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                    let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let again = all.entry((ns, name)).or_default();
                    for (k, v) in p.occurrences {
                        let c = again.occurrences.entry(k).or_insert(0);
                        *c = (*c).max(v);
                    }
                    again.last_seen = again.last_seen.take().max(p.last_seen);
                    again.resolved = again.resolved.take().or(p.resolved);
                }
            }
        }
        let counters: Vec<(String, (i64, i64))> = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (key, (triggered, suppressed)) in counters {
            let (ns, name) = key.split_once('/').unwrap_or(("", &key));
            let api: Api<AbnormalSource> = Api::namespaced(self.client.clone(), ns);
            let Ok(Some(src)) = api.get_opt(name).await else {
                continue;
            };
            let st = src.status.clone().unwrap_or_default();
            let patch = json!({"status": {
                "triggered": st.triggered.unwrap_or(0) + triggered,
                "suppressed": st.suppressed.unwrap_or(0) + suppressed,
            }});
            if let Err(e) = api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                tracing::warn!(source = %key, error = %e, "recording the source's counters");
            }
        }
    }

    async fn write_occurrences(
        &self,
        ns: &str,
        name: &str,
        p: &Pending,
    ) -> Result<(), kube::Error> {
        let api: &Api<Abnormal> = &Api::namespaced(self.client.clone(), ns);
        let write = move || async move {
            let a = api.get(name).await?;
            let mut all: BTreeMap<String, u64> = a
                .annotations()
                .get(TRIGGER_EVENTS_ANNOTATION)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            for (k, v) in &p.occurrences {
                let c = all.entry(k.clone()).or_insert(0);
                *c = (*c).max(*v);
            }
            fold_oldest(&mut all);
            let total: u64 = all.values().sum();
            let mut annotations = serde_json::Map::new();
            annotations.insert(
                TRIGGER_EVENTS_ANNOTATION.into(),
                json!(serde_json::to_string(&all).unwrap_or_default()),
            );
            annotations.insert(TRIGGER_COUNT_ANNOTATION.into(), json!(total.to_string()));
            if let Some(l) = &p.last_seen {
                annotations.insert(TRIGGER_LAST_SEEN_ANNOTATION.into(), json!(l));
            }
            if let Some(r) = &p.resolved {
                annotations.insert(TRIGGER_RESOLVED_ANNOTATION.into(), json!(r));
            }
            let patch = json!({"metadata": {"resourceVersion": a.resource_version(), "annotations": annotations}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
                .map(|_| ())
        };
        match write
            .retry(retry::on_conflict(5))
            .sleep(tokio::time::sleep)
            .when(retry::is_conflict)
            .await
        {
            // Five lost races in a row: these occurrences are not recorded.
            Err(e) if retry::is_conflict(&e) => Ok(()),
            other => other,
        }
    }

    /// Flushes every `interval` until `shutdown`.
    pub async fn run_flusher(
        self: Arc<Self>,
        interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => self.flush().await,
                _ = shutdown.cancelled() => {
                    self.flush().await;
                    return;
                }
            }
        }
    }
}

/// Keeps the map bounded: identities beyond the limit fold into one "earlier" entry, oldest
/// first. An alert delivery's identity ends in its time (`fingerprint@path@millis`), so the
/// oldest deliveries of every path fold and the newest of each path stay; identities with no time
/// (an Event's uid) fold in name order.
fn fold_oldest(all: &mut BTreeMap<String, u64>) {
    if all.len() <= MAX_OCCURRENCE_KEYS {
        return;
    }
    // Room for the "earlier" entry too, unless it is there already.
    let excess = all.len() - MAX_OCCURRENCE_KEYS + usize::from(!all.contains_key("earlier"));
    let mut keys: Vec<&String> = all.keys().filter(|k| k.as_str() != "earlier").collect();
    keys.sort_by_key(|k| (delivered_at(k), *k));
    let extra: Vec<String> = keys.into_iter().take(excess).cloned().collect();
    let folded: u64 = extra.iter().filter_map(|k| all.remove(k)).sum();
    *all.entry("earlier".into()).or_insert(0) += folded;
}

/// When an alert delivery arrived, from its identity's last `@` field (Unix milliseconds).
fn delivered_at(identity: &str) -> Option<i64> {
    identity.rsplit_once('@')?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_the_newest_deliveries_of_every_path() {
        let mut all = BTreeMap::new();
        // Both paths deliver every second, for longer than the map holds.
        for i in 0..150i64 {
            let at = 1_700_000_000_000 + i * 1000;
            all.insert(format!("fp@push@{at}"), 1);
            all.insert(format!("fp@webhook@{}", at + 500), 1);
        }
        fold_oldest(&mut all);
        assert_eq!(all.len(), MAX_OCCURRENCE_KEYS);
        assert_eq!(
            all.values().sum::<u64>(),
            300,
            "nothing is lost, only folded"
        );
        assert_eq!(all["earlier"], 101);
        let newest = |path: &str| {
            all.keys()
                .any(|k| k.contains(path) && k.ends_with("149000"))
        };
        assert!(
            newest("@push@"),
            "{:?}",
            all.keys().take(3).collect::<Vec<_>>()
        );
        assert!(all.contains_key("fp@webhook@1700000149500"));
        assert!(
            !all.contains_key("fp@push@1700000000000"),
            "the oldest went first"
        );
        assert!(!all.contains_key("fp@webhook@1700000000500"));
        // Folding again keeps "earlier" and adds to it.
        all.insert("fp@push@1700000150000".into(), 1);
        fold_oldest(&mut all);
        assert_eq!((all.len(), all["earlier"]), (MAX_OCCURRENCE_KEYS, 102));
    }

    #[test]
    fn identities_without_a_time_fold_in_name_order() {
        let mut all: BTreeMap<String, u64> = (0..MAX_OCCURRENCE_KEYS + 5)
            .map(|i| (format!("uid-{i:04}"), 2))
            .collect();
        fold_oldest(&mut all);
        assert_eq!(all.len(), MAX_OCCURRENCE_KEYS);
        assert_eq!(all["earlier"], 12);
        assert!(!all.contains_key("uid-0005") && all.contains_key("uid-0006"));
    }
}
