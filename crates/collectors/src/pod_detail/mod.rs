//! `pod-detail-collector` → `podDetailInformation`: everything the apiserver knows about the
//! Abnormal's pod that a diagnosis needs. The pod, its owner chain (ReplicaSet → Deployment,
//! Job → CronJob…), its Events, the last log lines of each container's current and previous
//! instance, its node's conditions and, for a pod not bound to a node, what each node has free
//! and whether its claims are bound.
//!
//! Works for a pod in any namespace and on any node: it reads only the apiserver. Anything that
//! cannot be read (a permission, a log) is recorded under `problems` and the rest is kept.

pub mod logs;
pub mod resources;
pub mod types;

use std::collections::BTreeMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Event, Node, PersistentVolumeClaim, Pod};
use kdiag_api::Abnormal;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use crate::budget::output_budget;
pub use types::*;

/// The context key pod-detail-collector writes.
pub const POD_DETAIL_INFORMATION: &str = "podDetailInformation";
/// Events kept about the pod (the most recent).
const MAX_EVENTS: usize = 50;
/// Events kept about the node and about each claim.
const MAX_OTHER_EVENTS: usize = 10;
/// Controllers followed up the owner chain.
const MAX_OWNERS: usize = 4;
/// Nodes listed for an unscheduled pod (those with the most free memory).
const MAX_NODES: usize = 50;
/// Pods named per node as holding a hostPort the pod asks for.
const MAX_PORT_HOLDERS_PER_NODE: usize = 5;

pub struct PodDetailCollector;

impl Processor for PodDetailCollector {
    fn name(&self) -> &'static str {
        "pod-detail-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let (ns, name) = pod_of(abnormal).ok_or_else(|| {
                ProcessorError::InvalidInput(
                    "pod-detail-collector needs spec.podReference (namespace and name of the pod)"
                        .into(),
                )
            })?;
            let mut detail = collect(&ctx.client, &ns, &name).await?;
            let cut = fit(&mut detail, output_budget(ctx.max_output_bytes));
            let message = describe(&detail, cut);
            let value = serde_json::to_value(&detail).map_err(|e| {
                ProcessorError::Failed(format!("encoding podDetailInformation: {e}"))
            })?;
            Ok(ProcessorOutput::message(message).with_context(POD_DETAIL_INFORMATION, value))
        }
        .boxed()
    }
}

/// The Abnormal's pod as (namespace, name); the Abnormal's own namespace when none is given.
pub fn pod_of(abnormal: &Abnormal) -> Option<(String, String)> {
    let r = abnormal.spec.pod_reference.as_ref()?;
    if r.name.is_empty() {
        return None;
    }
    let ns = if r.namespace.is_empty() {
        abnormal
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    } else {
        r.namespace.clone()
    };
    Some((ns, r.name.clone()))
}

fn describe(d: &PodDetail, cut: Option<String>) -> String {
    let pod = format!(
        "{}/{}",
        d.pod.metadata.namespace.as_deref().unwrap_or(""),
        d.pod.metadata.name.as_deref().unwrap_or("")
    );
    let phase = d
        .pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "unknown".into());
    let lines: usize = d
        .logs
        .iter()
        .flat_map(|l| [&l.current, &l.previous])
        .flatten()
        .map(|t| t.lines.len())
        .sum();
    let mut m = format!(
        "pod {pod} ({phase}): {} owner(s), {} event(s), {lines} log line(s) of {} container(s), {}",
        d.owners.len(),
        d.events.len(),
        d.logs.len(),
        match (&d.node, &d.scheduling) {
            (Some(n), _) => format!("node {} with {} condition(s)", n.name, n.conditions.len()),
            (None, Some(s)) => format!(
                "not scheduled: {} node(s) and {} claim(s) checked",
                s.nodes.len() + s.nodes_omitted,
                s.claims.len()
            ),
            (None, None) => "no node".to_owned(),
        }
    );
    if !d.problems.is_empty() {
        m.push_str(&format!(
            "; {} thing(s) could not be read (first: {})",
            d.problems.len(),
            d.problems[0]
        ));
    }
    if let Some(c) = cut {
        m.push_str(&format!("; {c}"));
    }
    m
}

/// Reads everything about pod `ns/name`. Only the pod itself is required.
pub async fn collect(client: &Client, ns: &str, name: &str) -> Result<PodDetail, ProcessorError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut pod = match pods.get_opt(name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(ProcessorError::Failed(format!(
                "pod {ns}/{name} does not exist (deleted, or a wrong podReference)"
            )));
        }
        Err(e) => {
            return Err(ProcessorError::Failed(format!(
                "reading pod {ns}/{name}: {e} (the agent needs get on pods)"
            )));
        }
    };
    strip(&mut pod.metadata);
    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let (owners, events, logs, node, scheduling) = tokio::join!(
        owners(client, ns, &pod),
        pod_events(client, &pod),
        logs::collect(&pods, &pod),
        async {
            match &node_name {
                Some(n) => Some(node(client, n).await),
                None => None,
            }
        },
        async {
            match &node_name {
                Some(_) => None,
                None => Some(scheduling(client, &pod).await),
            }
        },
    );
    let mut problems = Vec::new();
    let events = events.unwrap_or_else(|e| {
        problems.push(e);
        Vec::new()
    });
    for o in &owners {
        if !o.error.is_empty() {
            problems.push(o.error.clone());
        }
    }
    for l in &logs {
        for t in [&l.current, &l.previous].into_iter().flatten() {
            if !t.error.is_empty() {
                problems.push(t.error.clone());
            }
        }
    }
    if let Some(n) = &node
        && !n.error.is_empty()
    {
        problems.push(n.error.clone());
    }
    let scheduling = scheduling.map(|s| {
        let (s, p) = s;
        problems.extend(p);
        s
    });
    Ok(PodDetail {
        collected_at: jiff::Timestamp::now().to_string(),
        pod,
        owners,
        events,
        logs,
        node,
        scheduling,
        problems,
        truncated: None,
    })
}

/// Bookkeeping no diagnosis needs, and the bulk of an object's size.
fn strip(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// When an event last happened: lastTimestamp, the series' last observation, or eventTime.
pub fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| {
            e.series
                .as_ref()
                .and_then(|s| s.last_observed_time.as_ref())
                .map(|t| t.0)
        })
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
}

/// When an event first happened.
pub fn event_first_time(e: &Event) -> Option<jiff::Timestamp> {
    e.first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| event_time(e))
}

/// Events about one object, oldest first, the most recent `max` of them.
async fn events_about(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    uid: Option<&str>,
    max: usize,
) -> Result<Vec<Event>, String> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!(
        "involvedObject.kind={kind},involvedObject.name={name}"
    ));
    let list = api.list(&lp).await.map_err(|e| {
        format!("listing the events of {kind} {ns}/{name}: {e} (the agent needs list on events)")
    })?;
    let mut events: Vec<Event> = list
        .items
        .into_iter()
        // Events of an earlier object of the same name are about something else.
        .filter(|e| match (uid, e.involved_object.uid.as_deref()) {
            (Some(want), Some(got)) if !got.is_empty() => want == got,
            _ => true,
        })
        .map(|mut e| {
            strip(&mut e.metadata);
            e
        })
        .collect();
    events.sort_by_key(event_time);
    if events.len() > max {
        events.drain(..events.len() - max);
    }
    Ok(events)
}

async fn pod_events(client: &Client, pod: &Pod) -> Result<Vec<Event>, String> {
    events_about(
        client,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        "Pod",
        pod.metadata.name.as_deref().unwrap_or(""),
        pod.metadata.uid.as_deref(),
        MAX_EVENTS,
    )
    .await
}

/// The controller chain above the pod, following each object's controller reference.
async fn owners(client: &Client, ns: &str, pod: &Pod) -> Vec<Owner> {
    let mut out = Vec::new();
    let mut next = controller_of(pod.metadata.owner_references.as_deref());
    while let Some(r) = next.take() {
        if out.len() >= MAX_OWNERS {
            break;
        }
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &r.kind));
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let mut owner = Owner {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
            ..Default::default()
        };
        match api.get_opt(&r.name).await {
            Ok(Some(o)) => {
                owner.replicas = o.data.pointer("/spec/replicas").and_then(Value::as_i64);
                owner.status = o.data.get("status").cloned();
                next = controller_of(o.metadata.owner_references.as_deref());
            }
            Ok(None) => {
                owner.error = format!(
                    "{} {ns}/{} does not exist any more (the pod is orphaned)",
                    r.kind, r.name
                );
            }
            Err(e) => {
                owner.error = format!(
                    "reading {} {ns}/{}: {e} (the agent needs get on {})",
                    r.kind, r.name, ar.plural
                );
            }
        }
        out.push(owner);
    }
    out
}

fn controller_of(
    refs: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    let refs = refs?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .cloned()
}

/// A node as the apiserver has it: conditions, taints, capacity and its recent Events.
pub async fn node(client: &Client, name: &str) -> NodeDetail {
    let api: Api<Node> = Api::all(client.clone());
    // Events about a node are recorded in namespace default.
    let (node, events) = tokio::join!(
        api.get_opt(name),
        events_about(client, "default", "Node", name, None, MAX_OTHER_EVENTS)
    );
    let mut d = NodeDetail {
        name: name.to_owned(),
        ..Default::default()
    };
    match node {
        Ok(Some(n)) => {
            let spec = n.spec.unwrap_or_default();
            let status = n.status.unwrap_or_default();
            d.conditions = status.conditions.unwrap_or_default();
            d.taints = spec.taints.unwrap_or_default();
            d.unschedulable = spec.unschedulable.unwrap_or(false);
            let plain = |m: Option<
                BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >| {
                m.unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            };
            d.allocatable = plain(status.allocatable);
            d.capacity = plain(status.capacity);
            d.kubelet_port = status
                .daemon_endpoints
                .and_then(|e| e.kubelet_endpoint)
                .map(|e| e.port)
                .filter(|p| *p > 0);
            if let Some(info) = status.node_info {
                d.kubelet_version = info.kubelet_version;
                d.container_runtime_version = info.container_runtime_version;
            }
        }
        Ok(None) => d.error = format!("node {name} does not exist (deleted?)"),
        Err(e) => d.error = format!("reading node {name}: {e} (the agent needs get on nodes)"),
    }
    match events {
        Ok(e) => d.events = e,
        Err(e) => {
            if d.error.is_empty() {
                d.error = e;
            }
        }
    }
    d
}

/// For a pod no node took: every node's free resources, taints and labels, and the pod's
/// claims. Returns what could not be read as well.
async fn scheduling(client: &Client, pod: &Pod) -> (Scheduling, Vec<String>) {
    let mut problems = Vec::new();
    let requested = resources::pod_requests(pod);
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::all(client.clone());
    // The pods that hold resources: bound to a node and not ended (as the scheduler counts).
    let running = ListParams::default()
        .fields("spec.nodeName!=,status.phase!=Succeeded,status.phase!=Failed");
    let all = ListParams::default();
    let (nodes, bound, claims) = tokio::join!(
        nodes_api.list(&all),
        pods_api.list(&running),
        claims(client, pod)
    );
    let mut requested_on: BTreeMap<String, types::Resources> = BTreeMap::new();
    let wanted_ports = resources::host_ports(pod);
    let mut port_holders: BTreeMap<String, Vec<types::HostPortHolder>> = BTreeMap::new();
    match bound {
        Ok(list) => {
            for p in list.items {
                if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
                    let r = resources::pod_requests(&p);
                    let holders = port_holders.entry(n.clone()).or_default();
                    for held in resources::host_ports(&p) {
                        if holders.len() < MAX_PORT_HOLDERS_PER_NODE
                            && wanted_ports
                                .iter()
                                .any(|w| resources::host_ports_clash(w, &held))
                        {
                            holders.push(types::HostPortHolder {
                                port: held.port,
                                protocol: held.protocol,
                                host_ip: held.host_ip,
                                pod: format!(
                                    "{}/{}",
                                    p.metadata.namespace.as_deref().unwrap_or_default(),
                                    p.metadata.name.as_deref().unwrap_or_default()
                                ),
                            });
                        }
                    }
                    let e = requested_on.entry(n).or_default();
                    *e = e.plus(r);
                }
            }
        }
        Err(e) => problems.push(format!(
            "listing the pods bound to nodes: {e} (the agent needs list on pods); free resources are not known"
        )),
    }
    let mut fits: Vec<NodeFit> = match nodes {
        Ok(list) => list
            .items
            .into_iter()
            .map(|n| {
                let name = n.metadata.name.clone().unwrap_or_default();
                let allocatable = resources::node_allocatable(&n);
                let used = requested_on.get(&name).copied().unwrap_or_default();
                let host_port_holders = port_holders.remove(&name).unwrap_or_default();
                let spec = n.spec.clone().unwrap_or_default();
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .is_some_and(|c| c.status == "True");
                NodeFit {
                    name,
                    ready,
                    unschedulable: spec.unschedulable.unwrap_or(false),
                    taints: spec.taints.unwrap_or_default(),
                    labels: n.metadata.labels.clone().unwrap_or_default(),
                    allocatable,
                    requested: used,
                    free: allocatable.minus(used),
                    host_port_holders,
                }
            })
            .collect(),
        Err(e) => {
            problems.push(format!(
                "listing the nodes: {e} (the agent needs list on nodes)"
            ));
            Vec::new()
        }
    };
    fits.sort_by_key(|f| std::cmp::Reverse(f.free.memory_bytes));
    let omitted = fits.len().saturating_sub(MAX_NODES);
    fits.truncate(MAX_NODES);
    let (claims, claim_problems) = claims;
    problems.extend(claim_problems);
    (
        Scheduling {
            requested,
            nodes: fits,
            nodes_omitted: omitted,
            claims,
        },
        problems,
    )
}

/// The PersistentVolumeClaims the pod mounts, with their phase and recent Events.
async fn claims(client: &Client, pod: &Pod) -> (Vec<ClaimState>, Vec<String>) {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let names: Vec<String> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for name in names {
        let (got, events) = tokio::join!(
            api.get_opt(&name),
            events_about(
                client,
                ns,
                "PersistentVolumeClaim",
                &name,
                None,
                MAX_OTHER_EVENTS
            )
        );
        let mut c = ClaimState {
            name: name.clone(),
            ..Default::default()
        };
        match got {
            Ok(Some(pvc)) => {
                c.phase = pvc
                    .status
                    .and_then(|s| s.phase)
                    .unwrap_or_else(|| "Pending".into());
                let spec = pvc.spec.unwrap_or_default();
                c.storage_class_name = spec.storage_class_name.unwrap_or_default();
                c.volume_name = spec.volume_name.unwrap_or_default();
            }
            Ok(None) => c.phase = "Missing".into(),
            Err(e) => {
                c.error = format!(
                    "reading PersistentVolumeClaim {ns}/{name}: {e} (the agent needs get on persistentvolumeclaims)"
                );
                problems.push(c.error.clone());
            }
        }
        match events {
            Ok(e) => c.events = e,
            Err(e) => problems.push(e),
        }
        out.push(c);
    }
    (out, problems)
}

/// Cuts the detail until its JSON fits `budget` bytes: older log lines first, then older
/// events, then the node list. Returns what was cut, if anything.
pub fn fit(d: &mut PodDetail, budget: usize) -> Option<String> {
    let size = |d: &PodDetail| serde_json::to_vec(d).map(|v| v.len()).unwrap_or(usize::MAX);
    if size(d) <= budget {
        return None;
    }
    let mut cut_lines = 0usize;
    let mut cut_events = 0usize;
    let mut cut_nodes = 0usize;
    for _ in 0..64 {
        if size(d) <= budget {
            break;
        }
        // Halve the longest log tail first: old lines matter least.
        let longest = d
            .logs
            .iter_mut()
            .flat_map(|l| [l.current.as_mut(), l.previous.as_mut()])
            .flatten()
            .max_by_key(|t| t.lines.len());
        if let Some(t) = longest
            && t.lines.len() > 5
        {
            let n = t.lines.len() / 2;
            t.lines.drain(..n);
            t.truncated = true;
            cut_lines += n;
            continue;
        }
        if d.events.len() > 10 {
            let n = d.events.len() / 2;
            d.events.drain(..n);
            cut_events += n;
            continue;
        }
        if let Some(s) = d.scheduling.as_mut()
            && s.nodes.len() > 5
        {
            let n = s.nodes.len() / 2;
            s.nodes.truncate(s.nodes.len() - n);
            s.nodes_omitted += n;
            cut_nodes += n;
            continue;
        }
        break;
    }
    let what = format!(
        "output capped at {budget} bytes: dropped {cut_lines} older log line(s), {cut_events} older event(s), {cut_nodes} node(s)"
    );
    d.truncated = Some(what.clone());
    Some(what)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detail_with_logs(lines: usize) -> PodDetail {
        let tail = LogTail {
            lines: (0..lines)
                .map(|i| LogLine {
                    time: "2026-11-22T10:00:00Z".into(),
                    text: format!("line {i} {}", "x".repeat(1000)),
                })
                .collect(),
            truncated: false,
            error: String::new(),
        };
        PodDetail {
            pod: serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "n"}}))
                .unwrap(),
            logs: vec![ContainerLogs {
                container: "app".into(),
                init: false,
                current: Some(tail.clone()),
                previous: Some(tail),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_detail_over_the_cap_sheds_old_log_lines_and_says_so() {
        let mut d = detail_with_logs(50);
        let cut = fit(&mut d, 40 * 1024).expect("cut");
        assert!(serde_json::to_vec(&d).unwrap().len() <= 40 * 1024);
        assert!(cut.contains("older log line"), "{cut}");
        let current = d.logs[0].current.as_ref().unwrap();
        assert!(current.truncated);
        assert!(
            current.lines.last().unwrap().text.starts_with("line 49 "),
            "the newest lines stay"
        );
        assert_eq!(d.truncated.as_deref(), Some(cut.as_str()));
    }

    #[test]
    fn a_detail_within_the_cap_is_kept_whole() {
        let mut d = detail_with_logs(3);
        assert_eq!(fit(&mut d, 512 * 1024), None);
        assert_eq!(d.logs[0].current.as_ref().unwrap().lines.len(), 3);
    }

    #[test]
    fn the_pod_reference_defaults_to_the_abnormals_namespace() {
        let mut a: Abnormal = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "shop"},
            "spec": {"podReference": {"name": "web"}}
        }))
        .unwrap();
        assert_eq!(pod_of(&a), Some(("shop".into(), "web".into())));
        a.spec.pod_reference = None;
        assert_eq!(pod_of(&a), None);
    }
}
