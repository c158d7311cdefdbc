//! The Kubernetes Event source: Warning Events (filtered by the apiserver, not in the controller)
//! matched against KubernetesEvent templates. One Abnormal per incident: repeats of the same
//! reason on the same object within the source's group window are counted on it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, Pod};
use kdiag_api::{Abnormal, AbnormalSource, AbnormalSourceType, PodReference};
use kdiag_pipeline::hash::fnv1a;
use kdiag_pipeline::templates::{CompiledSource, Facts, compile, order, select, slug};
use kube::ResourceExt;
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;

use super::incidents::OpenIncidents;
use super::sink::{Outcome, Sink, TRIGGER_LAST_SEEN_ANNOTATION};

/// Label of Abnormals created for an incident: a hash of its object and reason.
pub const INCIDENT_LABEL: &str = "kdiag.io/incident";
const KIND: &str = "KubernetesEvent";

/// The facts an Event template matches, flattened.
pub fn facts(e: &Event) -> Facts {
    let mut f = Facts::new();
    let mut put = |k: &str, v: Option<String>| {
        f.insert(k.to_owned(), v.unwrap_or_default());
    };
    put("name", e.metadata.name.clone());
    put("namespace", e.metadata.namespace.clone());
    put(
        kdiag_pipeline::templates::SCOPE_FACT,
        Some(abnormal_namespace(e)),
    );
    put("reason", e.reason.clone());
    put("message", e.message.clone());
    put("type", e.type_.clone());
    put("count", e.count.map(|c| c.to_string()));
    put(
        "firstTimestamp",
        e.first_timestamp.as_ref().map(|t| t.0.to_string()),
    );
    put(
        "lastTimestamp",
        e.last_timestamp.as_ref().map(|t| t.0.to_string()),
    );
    put("eventTime", e.event_time.as_ref().map(|t| t.0.to_string()));
    put("action", e.action.clone());
    put("reportingController", e.reporting_component.clone());
    put("reportingInstance", e.reporting_instance.clone());
    let o = &e.involved_object;
    for (k, v) in [
        ("kind", &o.kind),
        ("namespace", &o.namespace),
        ("name", &o.name),
        ("uid", &o.uid),
        ("apiVersion", &o.api_version),
        ("resourceVersion", &o.resource_version),
        ("fieldPath", &o.field_path),
    ] {
        put(&format!("involvedObject.{k}"), v.clone());
    }
    if let Some(s) = &e.source {
        put("source.component", s.component.clone());
        put("source.host", s.host.clone());
    }
    if let Some(r) = &e.related {
        for (k, v) in [
            ("kind", &r.kind),
            ("namespace", &r.namespace),
            ("name", &r.name),
            ("uid", &r.uid),
        ] {
            put(&format!("related.{k}"), v.clone());
        }
    }
    kdiag_pipeline::templates::add_go_times(&mut f);
    f
}

/// What makes repeats one incident: the object (its uid, else kind/namespace/name) and the reason.
pub fn incident_key(e: &Event) -> String {
    let o = &e.involved_object;
    let object = o.uid.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        format!(
            "{}/{}/{}",
            o.kind.clone().unwrap_or_default(),
            o.namespace.clone().unwrap_or_default(),
            o.name.clone().unwrap_or_default()
        )
    });
    format!("{object}/{}", e.reason.clone().unwrap_or_default())
}

/// A label value for an incident key.
pub fn incident_label(key: &str) -> String {
    format!("{:016x}", fnv1a(key))
}

/// When the Event last happened.
pub fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

pub struct EventSource {
    sink: Arc<Sink>,
    sources: Store<AbnormalSource>,
    abnormals: Store<DeserializeGuard<Abnormal>>,
    /// Incidents seen recently (bounded): the store of Abnormals lags behind creations; this
    /// does not.
    open: Mutex<OpenIncidents>,
}

impl EventSource {
    pub fn new(
        sink: Arc<Sink>,
        sources: Store<AbnormalSource>,
        abnormals: Store<DeserializeGuard<Abnormal>>,
    ) -> Self {
        Self {
            sink,
            sources,
            abnormals,
            open: Mutex::new(OpenIncidents::default()),
        }
    }

    /// Watches Warning Events until `shutdown`, and Events of other types while a source asks
    /// for them ([`Self::watch_other_types`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Incidents are found through existing Abnormals: wait until they are all known.
        kdiag_runtime::ready::store_ready(&self.sources).await;
        kdiag_runtime::ready::store_ready(&self.abnormals).await;
        tokio::spawn(self.clone().watch_other_types(shutdown.clone()));
        // Server-side filtering: only Warning Events reach the controller unless a source asks.
        self.watch("type=Warning", &shutdown, || true).await;
    }

    /// Watches Events whose type is not Warning while a `matching: KubeDiagnoser` source wants
    /// them (Kube Diagnoser considered every Event), checking every few seconds; without one,
    /// the controller never receives them.
    async fn watch_other_types(self: Arc<Self>, shutdown: CancellationToken) {
        const CHECK: std::time::Duration = std::time::Duration::from_secs(5);
        let wanted = || self.sources().iter().any(|s| s.wants_every_event_type());
        loop {
            if wanted() {
                tracing::info!(
                    "a source matches Events of every type; watching non-Warning Events"
                );
                self.watch("type!=Warning", &shutdown, wanted).await;
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::info!(
                    "no source matches non-Warning Events any more; stopped watching them"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(CHECK) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Handles the Events the field selector lets through until shutdown, or until `go_on`
    /// (asked every few seconds) says to stop.
    async fn watch(&self, fields: &str, shutdown: &CancellationToken, go_on: impl Fn() -> bool) {
        let api: Api<Event> = Api::all(self.sink.client.clone());
        let config = watcher::Config::default().fields(fields);
        let mut stream = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        let mut check = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(event)) => {
                        self.handle(&event).await;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, fields, "watching Events (retrying)"),
                    None => return,
                },
                _ = check.tick() => if !go_on() { return },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn sources(&self) -> Vec<CompiledSource> {
        let mut v: Vec<CompiledSource> = self
            .sources
            .state()
            .iter()
            .filter(|s| s.spec.source_template.type_ == AbnormalSourceType::KubernetesEvent)
            .filter_map(|s| compile(s).ok())
            .collect();
        order(&mut v);
        v
    }

    /// Handles one Event: ignored, grouped into an open incident, created, or suppressed.
    pub async fn handle(&self, event: &Event) -> Option<Outcome> {
        let sources = self.sources();
        let source = select(&sources, AbnormalSourceType::KubernetesEvent, &facts(event))?.clone();
        let now = Timestamp::now();
        let seen = last_seen(event).unwrap_or(now);
        let window = source.group_window();
        // Events are kept for an hour; one older than the window is history, not news (this is
        // what a restart replays).
        if now.duration_since(seen).unsigned_abs() > window {
            return None;
        }
        let key = incident_key(event);
        let identity = event
            .metadata
            .uid
            .clone()
            .unwrap_or_else(|| event.name_any());
        let count = event
            .count
            .map(|c| c.max(1) as u64)
            .or_else(|| {
                event
                    .series
                    .as_ref()
                    .and_then(|s| s.count)
                    .map(|c| c.max(1) as u64)
            })
            .unwrap_or(1);
        if let Some((ns, name)) = self.open_incident(&key, seen, window) {
            self.sink
                .record(&ns, &name, &identity, count, &seen.to_string());
            self.sink
                .metrics
                .controller
                .suppressed
                .with_label_values(&[KIND, "grouped"])
                .inc();
            self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
                key,
                ns.clone(),
                name.clone(),
                seen,
                window,
                now,
            );
            return Some(Outcome::Grouped(name));
        }
        let Some(node) = self.node_of(event).await else {
            self.sink.suppress(KIND, &source, "no-node");
            return Some(Outcome::Suppressed(
                "no node: the Event names no host and its object is not a scheduled pod".into(),
            ));
        };
        if let Err(refused) = self.sink.admit(KIND, &source, &node) {
            return Some(Outcome::Suppressed(refused.to_string()));
        }
        let abnormal = build(event, &source, &key, &node);
        let ns = abnormal.namespace().unwrap_or_default();
        match self.sink.create(KIND, &source, &abnormal).await {
            Ok(outcome) => {
                self.sink.record(
                    &ns,
                    &abnormal.name_any(),
                    &identity,
                    count,
                    &seen.to_string(),
                );
                self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    key,
                    ns,
                    abnormal.name_any(),
                    seen,
                    window,
                    now,
                );
                Some(outcome)
            }
            Err(e) => {
                tracing::warn!(error = %e, event = %event.name_any(), "creating an Abnormal for an Event");
                None
            }
        }
    }

    /// The incident's Abnormal if one is open: seen within the window.
    fn open_incident(
        &self,
        key: &str,
        seen: Timestamp,
        window: Duration,
    ) -> Option<(String, String)> {
        let within =
            |last: Timestamp| seen.duration_since(last).as_secs_f64() <= window.as_secs_f64();
        if let Some((ns, name, last)) = self.open.lock().unwrap_or_else(|e| e.into_inner()).get(key)
            && within(last)
        {
            return Some((ns, name));
        }
        let label = incident_label(key);
        self.abnormals
            .state()
            .iter()
            .filter_map(|o| o.0.as_ref().ok())
            .filter(|a| a.labels().get(INCIDENT_LABEL) == Some(&label))
            .filter_map(|a| {
                let last = a
                    .annotations()
                    .get(TRIGGER_LAST_SEEN_ANNOTATION)
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .or_else(|| a.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
                within(last).then(|| (last, a.namespace().unwrap_or_default(), a.name_any()))
            })
            .max()
            .map(|(_, ns, name)| (ns, name))
    }

    /// The Event's host, else the node of the pod it is about.
    async fn node_of(&self, e: &Event) -> Option<String> {
        if let Some(host) = e
            .source
            .as_ref()
            .and_then(|s| s.host.clone())
            .filter(|h| !h.is_empty())
        {
            return Some(host);
        }
        let o = &e.involved_object;
        if o.kind.as_deref() != Some("Pod") {
            return None;
        }
        let pods: Api<Pod> = Api::namespaced(self.sink.client.clone(), o.namespace.as_deref()?);
        pods.get_opt(o.name.as_deref()?)
            .await
            .ok()
            .flatten()?
            .spec?
            .node_name
    }
}

/// The namespace an Event's Abnormal is created in, and the one its source must be in (or
/// kdiag's own): the Event's, else its object's, else `default`.
fn abnormal_namespace(event: &Event) -> String {
    event
        .metadata
        .namespace
        .clone()
        .or_else(|| event.involved_object.namespace.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The Abnormal for a new incident: the source's processors, the Event, its pod, its node.
pub fn build(event: &Event, source: &CompiledSource, key: &str, node: &str) -> Abnormal {
    let o = &event.involved_object;
    let ns = abnormal_namespace(event);
    let mut spec = source.abnormal_spec();
    spec.source = AbnormalSourceType::KubernetesEvent;
    spec.kubernetes_event = Some(Box::new(event.clone()));
    spec.node_name = node.to_owned();
    if o.kind.as_deref() == Some("Pod") {
        spec.pod_reference = Some(PodReference {
            namespace: o.namespace.clone().unwrap_or_default(),
            name: o.name.clone().unwrap_or_default(),
            container_name: container_of(o.field_path.as_deref()).unwrap_or_default(),
        });
    }
    let name = format!(
        "event-{}-{}-{}",
        slug(o.name.as_deref().unwrap_or("object"), 60),
        slug(event.reason.as_deref().unwrap_or("event"), 30),
        &incident_label(&format!(
            "{key}/{}",
            event.metadata.uid.clone().unwrap_or_default()
        ))[..10]
    );
    let mut a = Abnormal::new(&name, spec);
    a.metadata.namespace = Some(ns);
    a.metadata.labels = Some(
        [
            ("kdiag.io/source".to_owned(), KIND.to_owned()),
            (INCIDENT_LABEL.to_owned(), incident_label(key)),
        ]
        .into(),
    );
    a
}

/// The container of a fieldPath such as `spec.containers{app}`.
fn container_of(field_path: Option<&str>) -> Option<String> {
    let p = field_path?;
    let start = p.find('{')? + 1;
    let end = p[start..].find('}')? + start;
    Some(p[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(reason: &str, uid: &str) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "web.1", "namespace": "shop", "uid": uid},
            "involvedObject": {"kind": "Pod", "namespace": "shop", "name": "web", "uid": "pod-uid", "fieldPath": "spec.containers{app}"},
            "reason": reason, "message": "Liveness probe failed: connection refused", "type": "Warning",
            "source": {"component": "kubelet", "host": "node-1"}, "count": 3
        }))
        .unwrap()
    }

    #[test]
    fn repeats_on_the_same_object_and_reason_are_one_incident() {
        assert_eq!(
            incident_key(&event("Unhealthy", "a")),
            incident_key(&event("Unhealthy", "b"))
        );
        assert_ne!(
            incident_key(&event("Unhealthy", "a")),
            incident_key(&event("BackOff", "a"))
        );
        // Pinned: the label finds the incident's Abnormal after a restart or upgrade.
        assert_eq!(incident_label("Pod/shop/web/BackOff"), "46d94ea7ff5bcb0f");
    }

    #[test]
    fn the_facts_include_the_involved_object_and_source() {
        let f = facts(&event("Unhealthy", "a"));
        assert_eq!(f["involvedObject.kind"], "Pod");
        assert_eq!(f["source.host"], "node-1");
        assert_eq!(f["reason"], "Unhealthy");
    }

    #[test]
    fn the_container_comes_from_the_field_path() {
        assert_eq!(
            container_of(Some("spec.containers{app}")),
            Some("app".into())
        );
        assert_eq!(container_of(Some("spec.containers[0]")), None);
    }
}
