//! The ProbeStatus trigger: watches ProbeStatus objects in every namespace (written by KubeProber,
//! by kdiag's runner, or by any tool), opens a failure episode when a checker starts failing and
//! creates one Abnormal per node for it, under storm control.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::kubeprober::labels as probe_labels;
use kdiag_api::{
    Abnormal, AbnormalSource, AbnormalSourceType, ProbeCheckerStatus, ProbeReference, ProbeStatus,
};
use kdiag_diagnosers::probe_failure;
use kdiag_pipeline::templates::{CompiledSource, compile, order, slug};
use kdiag_runtime::metrics::Metrics;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::episodes::{
    self, Decision, EPISODES_ANNOTATION, Episode, Episodes, SUPPRESSED_ANNOTATION,
};
use crate::Error;
use crate::sources::storm::{Buckets, Budget};

/// Budgets of Abnormals created for probes.
#[derive(Debug, Clone, Copy)]
pub struct ProbeBudgets {
    pub per_probe: Budget,
    pub per_node: Budget,
}

impl Default for ProbeBudgets {
    fn default() -> Self {
        Self {
            per_probe: Budget {
                burst: 10.0,
                per_minute: 2.0,
            },
            per_node: Budget {
                burst: 10.0,
                per_minute: 2.0,
            },
        }
    }
}

pub struct TriggerCtx {
    pub client: Client,
    pub sources: Store<AbnormalSource>,
    pub budgets: ProbeBudgets,
    pub buckets: Mutex<Buckets>,
    pub metrics: Arc<Metrics>,
    /// Abnormals are created only for real nodes.
    pub nodes: Arc<crate::nodes::KnownNodes>,
    /// ProbeStatus objects whose episodes were checked for Abnormals a crash left uncreated.
    repaired: Mutex<Repaired>,
    /// The trigger's cache of ProbeStatus objects.
    probe_statuses: Store<DeserializeGuard<ProbeStatus>>,
    /// Where a diagnosis without Abnormals is written (see writeback).
    schema: super::writeback::SchemaProbe,
}

/// The ProbeStatus objects (namespace/name) already checked for Abnormals a crash left
/// uncreated. Bounded: whenever it has doubled since it was last swept, the names of ProbeStatus
/// objects no longer in the cache go.
struct Repaired {
    names: HashSet<String>,
    sweep_at: usize,
}

impl Default for Repaired {
    fn default() -> Self {
        Self {
            names: HashSet::new(),
            sweep_at: Self::FIRST_SWEEP_AT,
        }
    }
}

impl Repaired {
    const FIRST_SWEEP_AT: usize = 256;

    /// True the first time `key` is seen. `exists` tells whether a ProbeStatus is still cached.
    fn first_look(&mut self, key: &str, exists: impl Fn(&str) -> bool) -> bool {
        if !self.names.insert(key.to_owned()) {
            return false;
        }
        if self.names.len() >= self.sweep_at {
            self.names.retain(|k| k == key || exists(k));
            self.sweep_at = (self.names.len() * 2).max(Self::FIRST_SWEEP_AT);
        }
        true
    }
}

/// Starts the trigger; the future runs until `shutdown`.
pub fn start(
    client: Client,
    sources: Store<AbnormalSource>,
    budgets: ProbeBudgets,
    metrics: Arc<Metrics>,
    nodes: Arc<crate::nodes::KnownNodes>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let api: Api<DeserializeGuard<ProbeStatus>> = Api::all(client.clone());
    let controller = Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown.cancelled_owned());
    let ctx = Arc::new(TriggerCtx {
        client,
        sources,
        budgets,
        buckets: Mutex::new(Buckets::default()),
        metrics,
        nodes,
        repaired: Mutex::new(Repaired::default()),
        probe_statuses: controller.store(),
        schema: Default::default(),
    });
    async move {
        kdiag_runtime::ready::store_ready(&ctx.sources).await;
        controller
            .run(
                reconcile,
                |_, e: &Error, ctx: Arc<TriggerCtx>| {
                    ctx.metrics
                        .controller
                        .error("probe-trigger", e.metric_label(), e.category());
                    tracing::warn!(error = %e, "probe trigger; retrying");
                    Action::requeue(Duration::from_secs(if e.is_transient() { 5 } else { 60 }))
                },
                ctx,
            )
            .for_each(|_| async {})
            .await;
    }
}

/// The valid ProbeStatus sources, in the order they are tried.
pub fn probe_sources(store: &Store<AbnormalSource>) -> Vec<CompiledSource> {
    let mut v: Vec<CompiledSource> = store
        .state()
        .iter()
        .filter(|s| s.spec.source_template.type_ == AbnormalSourceType::ProbeStatus)
        .filter_map(|s| compile(s).ok())
        .collect();
    order(&mut v);
    v
}

async fn reconcile(
    obj: Arc<DeserializeGuard<ProbeStatus>>,
    ctx: Arc<TriggerCtx>,
) -> Result<Action, Error> {
    let Ok(ps) = &obj.0 else {
        tracing::warn!(error = %obj.0.as_ref().err().map(|e| e.error.clone()).unwrap_or_default(), "a ProbeStatus kdiag cannot read; skipped");
        return Ok(Action::await_change());
    };
    let ns = ps.namespace().unwrap_or_default();
    let name = ps.name_any();
    let key = format!("{ns}/{name}");
    let mut open: Episodes = ps
        .annotations()
        .get(EPISODES_ANNOTATION)
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let sources = probe_sources(&ctx.sources);
    let now = kdiag_runtime::time::now().0.to_string();
    let decisions = episodes::decide(ps, &open, &sources, &now);

    let mut to_create: Vec<Abnormal> = Vec::new();
    let mut suppressed_now = 0u64;
    for d in &decisions {
        match d {
            Decision::Close { checker } => {
                open.remove(checker);
            }
            Decision::Open {
                checker,
                source,
                since,
            } => {
                let (episode, abnormals, suppressed) =
                    open_episode(&ctx, ps, checker, source, since).await?;
                suppressed_now += suppressed;
                open.insert(checker.name.clone(), episode);
                to_create.extend(abnormals);
            }
        }
    }
    if !decisions.is_empty() {
        // The episodes are written before their Abnormals exist: after a crash in between, the
        // repair below creates what is missing, and a restart never opens an episode twice.
        let total_suppressed = ps
            .annotations()
            .get(SUPPRESSED_ANNOTATION)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + suppressed_now;
        let mut annotations = serde_json::Map::new();
        annotations.insert(
            EPISODES_ANNOTATION.into(),
            if open.is_empty() {
                serde_json::Value::Null
            } else {
                json!(serde_json::to_string(&open).unwrap_or_default())
            },
        );
        if suppressed_now > 0 {
            annotations.insert(
                SUPPRESSED_ANNOTATION.into(),
                json!(total_suppressed.to_string()),
            );
        }
        let api: Api<ProbeStatus> = Api::namespaced(ctx.client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .map_err(|e| Error::kube("patch annotations of", format!("ProbeStatus {key}"), e))?;
    }
    let first_look = ctx
        .repaired
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first_look(&key, |k| {
            let (ns, name) = k.split_once('/').unwrap_or(("", k));
            ctx.probe_statuses
                .get(&ObjectRef::new(name).within(ns))
                .is_some()
        });
    if first_look {
        to_create.extend(missing_abnormals(&ctx, ps, &open, &sources, &to_create).await?);
    }
    for a in to_create {
        create(&ctx, &ns, &a).await?;
    }
    // No Abnormal will change phase to bring these diagnoses to the ProbeStatus: the trigger
    // writes them (after the episodes they are read from), on every pass until they are there.
    for checker in unwritten_cluster_diagnoses(ps, &open) {
        super::writeback::write_without_abnormals(&ctx.client, &ctx.schema, &ns, &name, &checker)
            .await?;
    }
    write_summary(&ctx, ps).await?;
    Ok(Action::await_change())
}

/// Checkers whose open episode the controller diagnosed alone (no Abnormal) and whose
/// diagnosis on `ps` is not that one yet.
fn unwritten_cluster_diagnoses(ps: &ProbeStatus, open: &Episodes) -> Vec<String> {
    open.iter()
        .filter(|(_, e)| e.abnormals.is_empty() && e.cluster.is_some())
        .filter(|(checker, e)| {
            kdiag_api::gate::diagnosis(ps, checker)
                != Some(super::writeback::combine(e.cluster.as_ref(), &[]))
        })
        .map(|(checker, _)| checker.clone())
        .collect()
}

/// Resolves the episode's nodes, applies the budgets, and returns the episode with the
/// Abnormals to create and how many were suppressed.
async fn open_episode(
    ctx: &TriggerCtx,
    ps: &ProbeStatus,
    checker: &ProbeCheckerStatus,
    source: &CompiledSource,
    since: &str,
) -> Result<(Episode, Vec<Abnormal>, u64), Error> {
    let ns = ps.namespace().unwrap_or_default();
    let probe = ps.name_any();
    // The failure classified and judged on the cluster's objects (DNS Service, endpoints,
    // apiserver checks): the lead of the diagnosis, and where there is no node, all of it.
    let diagnosed = super::cluster::diagnose(&ctx.client, &format!("{ns}/{probe}"), checker).await;
    let mut resolved = resolve_nodes(ctx, ps, checker, source).await?;
    if resolved.is_empty()
        && let Some((_, judgement)) = &diagnosed
    {
        // A cluster-level check: diagnose on the nodes of the component's pods (for DNS, the
        // nodes of the DNS pods).
        resolved = judgement.nodes.clone();
    }
    // Names from a message or a source that are no Node: nothing is created for them and they
    // take no budget.
    let unknown: Vec<String> = ctx
        .nodes
        .unknown(&resolved)
        .await?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let nodes: Vec<String> = resolved
        .into_iter()
        .filter(|n| !unknown.contains(n))
        .collect();
    let mut episode = Episode {
        since: since.to_owned(),
        status: checker.status.as_str().into(),
        source: source.key.to_string(),
        abnormals: Vec::new(),
        nodes: Vec::new(),
        suppressed: String::new(),
        cluster: diagnosed.as_ref().map(|(_, j)| j.cause.clone()),
    };
    if !unknown.is_empty() {
        ctx.metrics
            .controller
            .suppressed
            .with_label_values(&["ProbeStatus", "unknown-node"])
            .inc_by(unknown.len() as u64);
        episode.suppressed = Error::UnknownNodes {
            what: format!("checker {} of ProbeStatus {ns}/{probe}", checker.name),
            verb: if unknown.len() == 1 { "is" } else { "are" },
            nodes: unknown.join(", "),
        }
        .to_string();
        tracing::info!(probe = %format!("{ns}/{probe}"), checker = %checker.name, nodes = %unknown.join(","), "probe failure names nodes that do not exist");
        if nodes.is_empty() {
            return Ok((episode, Vec::new(), unknown.len() as u64));
        }
    }
    if nodes.is_empty() && episode.cluster.is_some() {
        // Diagnosed by the controller alone; nothing was suppressed.
        tracing::info!(probe = %format!("{ns}/{probe}"), checker = %checker.name, "cluster-level probe failure diagnosed by the controller");
        return Ok((episode, Vec::new(), 0));
    }
    if nodes.is_empty() {
        episode.suppressed = "no node: the source names none, the message lists none, and no probe pod was found; set probeStatusTemplate.nodeName".into();
        ctx.metrics
            .controller
            .suppressed
            .with_label_values(&["ProbeStatus", "no-node"])
            .inc();
        tracing::info!(probe = %format!("{ns}/{probe}"), checker = %checker.name, "probe failure with no node to diagnose on");
        return Ok((episode, Vec::new(), 1));
    }
    let mut abnormals = Vec::new();
    let mut suppressed = unknown.len() as u64;
    for node in nodes {
        let keys = [
            (format!("probe:{ns}/{probe}"), ctx.budgets.per_probe),
            (format!("node:{node}"), ctx.budgets.per_node),
        ];
        let allowed = ctx
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now(), &keys);
        if let Err(by) = allowed {
            suppressed += 1;
            let budget = by.split(':').next().unwrap_or("budget");
            ctx.metrics
                .controller
                .suppressed
                .with_label_values(&["ProbeStatus", budget])
                .inc();
            episode.suppressed = format!("storm control: the {budget} budget is spent ({by})");
            continue;
        }
        let name = episodes::abnormal_name(&ns, &probe, &checker.name, since, &node);
        abnormals.push(build_abnormal(
            ps,
            checker,
            source,
            &name,
            &node,
            episode.cluster.as_ref(),
        ));
        episode.abnormals.push(name);
        episode.nodes.push(node);
    }
    Ok((episode, abnormals, suppressed))
}

/// Where to diagnose: the template's node, the nodes a node check names, else the probe pod's.
async fn resolve_nodes(
    ctx: &TriggerCtx,
    ps: &ProbeStatus,
    checker: &ProbeCheckerStatus,
    source: &CompiledSource,
) -> Result<Vec<String>, Error> {
    if let Some(n) = source
        .spec
        .source_template
        .probe_status_template
        .as_ref()
        .map(|t| t.node_name.clone())
        .filter(|n| !n.is_empty())
    {
        return Ok(vec![n]);
    }
    let listed = episodes::nodes_in_message(&checker.message);
    if !listed.is_empty() {
        return Ok(listed);
    }
    let ns = ps.namespace().unwrap_or_default();
    let selector = format!(
        "{}={},{}={}",
        probe_labels::PROBE_NAME,
        ps.name_any(),
        probe_labels::PROBE_NAMESPACE,
        ns
    );
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            Error::kube(
                "list the pods of",
                format!("ProbeStatus {ns}/{}", ps.name_any()),
                e,
            )
        })?;
    let newest = list
        .items
        .into_iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .max_by_key(|p| p.metadata.creation_timestamp.clone());
    Ok(newest
        .and_then(|p| p.spec.and_then(|s| s.node_name))
        .into_iter()
        .collect())
}

/// Node-level collectors for a probe failure whose source names no processors and that is not
/// about a pod.
const NODE_DEFAULT_COLLECTORS: [&str; 3] =
    ["node-collector", "kernel-log-collector", "pod-collector"];

/// The diagnoser a node-level probe failure gets when its source names none.
const NODE_TRIAGE_DIAGNOSER: &str = "node-triage-diagnoser";

/// Whether a classified failure is about the node it happened on.
fn node_level(c: &probe_failure::Classification) -> bool {
    use probe_failure::{Component, Fault};
    c.fault == Fault::NodesFailing
        || matches!(
            c.component,
            Component::ContainerRuntime | Component::Cni | Component::Kubelet
        )
}

fn build_abnormal(
    ps: &ProbeStatus,
    checker: &ProbeCheckerStatus,
    source: &CompiledSource,
    name: &str,
    node: &str,
    cluster: Option<&kdiag_api::RootCause>,
) -> Abnormal {
    let ns = ps.namespace().unwrap_or_default();
    let mut spec = source.abnormal_spec();
    spec.source = AbnormalSourceType::ProbeStatus;
    spec.node_name = node.to_owned();
    let names_nothing = spec.assigned_information_collectors.is_empty()
        && spec.assigned_diagnosers.is_empty()
        && spec.assigned_recoverers.is_empty()
        && spec.command_executors.is_empty()
        && spec.profilers.is_empty();
    if names_nothing {
        if let Some(pod) = failed_probe_pod(ps, checker) {
            // The probe's own pod failed: the pod triage explains why (docs/triage.md).
            spec.pod_reference = Some(pod);
        } else {
            spec.assigned_information_collectors = NODE_DEFAULT_COLLECTORS
                .iter()
                .map(|n| kdiag_api::NamespacedName::new(kdiag_api::SYSTEM_NAMESPACE, *n))
                .collect();
            // A fault the classification puts on the node (its runtime, CNI or kubelet, a node
            // check): the node triage looks at that node's conditions and top consumers.
            if probe_failure::classify(&checker.name, &checker.message)
                .is_some_and(|c| node_level(&c))
            {
                spec.assigned_diagnosers = vec![kdiag_api::NamespacedName::new(
                    kdiag_api::SYSTEM_NAMESPACE,
                    NODE_TRIAGE_DIAGNOSER,
                )];
            }
        }
    }
    spec.probe_status = Some(ProbeReference {
        namespace: ns.clone(),
        name: ps.name_any(),
        checker: checker.name.clone(),
        status: checker.status.as_str().into(),
        message: checker.message.clone(),
    });
    let mut context = spec.context.take().unwrap_or_default();
    context.insert(
        "probeChecker".into(),
        json!({"probe": format!("{ns}/{}", ps.name_any()), "checker": checker.name, "status": checker.status.as_str(),
               "message": checker.message, "lastRun": checker.last_run, "source": source.key.to_string()}),
    );
    // What the failure means and what the controller found, for the processors (and people)
    // working on this node.
    if let Some(class) = probe_failure::classify(&checker.name, &checker.message) {
        context.insert(
            probe_failure::PROBE_FAILURE.into(),
            json!({"classification": class, "cluster": cluster}),
        );
    }
    spec.context = Some(context);
    let mut a = Abnormal::new(name, spec);
    a.metadata.namespace = Some(ns);
    a.metadata.labels = Some(BTreeMap::from([
        ("kdiag.io/source".to_owned(), "ProbeStatus".to_owned()),
        ("kdiag.io/probe".to_owned(), slug(&ps.name_any(), 63)),
    ]));
    a
}

/// Abnormals an open episode lists but that do not exist (a crash between writing the episode
/// and creating them).
async fn missing_abnormals(
    ctx: &TriggerCtx,
    ps: &ProbeStatus,
    open: &Episodes,
    sources: &[CompiledSource],
    about_to_create: &[Abnormal],
) -> Result<Vec<Abnormal>, Error> {
    let ns = ps.namespace().unwrap_or_default();
    let api: Api<Abnormal> = Api::namespaced(ctx.client.clone(), &ns);
    let mut missing = Vec::new();
    for (checker_name, episode) in open {
        let Some(checker) = ps.spec.checkers.iter().find(|c| &c.name == checker_name) else {
            continue;
        };
        let Some(source) = sources.iter().find(|s| s.key.to_string() == episode.source) else {
            continue;
        };
        for (name, node) in episode.abnormals.iter().zip(&episode.nodes) {
            if about_to_create.iter().any(|a| &a.name_any() == name) {
                continue;
            }
            let exists = api
                .get_opt(name)
                .await
                .map_err(|e| Error::kube("get", format!("Abnormal {ns}/{name}"), e))?;
            if exists.is_none() {
                missing.push(build_abnormal(
                    ps,
                    checker,
                    source,
                    name,
                    node,
                    episode.cluster.as_ref(),
                ));
            }
        }
    }
    Ok(missing)
}

async fn create(ctx: &TriggerCtx, ns: &str, a: &Abnormal) -> Result<(), Error> {
    let api: Api<Abnormal> = Api::namespaced(ctx.client.clone(), ns);
    match api.create(&PostParams::default(), a).await {
        Ok(_) => {
            ctx.metrics
                .controller
                .triggered
                .with_label_values(&["ProbeStatus"])
                .inc();
            tracing::info!(abnormal = %format!("{ns}/{}", a.name_any()), node = %a.spec.node_name, "probe failure: Abnormal created");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            "create",
            format!("Abnormal {ns}/{}", a.name_any()),
            e,
        )),
    }
}

/// Writes status.status/message/lastRun (worst checker first) when they differ.
async fn write_summary(ctx: &TriggerCtx, ps: &ProbeStatus) -> Result<(), Error> {
    let summary = episodes::summary(&ps.spec.checkers);
    if ps.status.as_ref() == Some(&summary) || (ps.status.is_none() && ps.spec.checkers.is_empty())
    {
        return Ok(());
    }
    // Explicit nulls: a merge patch leaves out what it does not name, and an old message must go.
    let patch = json!({"status": {
        "status": summary.status,
        "message": if summary.message.is_empty() { serde_json::Value::Null } else { json!(summary.message) },
        "lastRun": summary.last_run,
    }});
    let api: Api<ProbeStatus> =
        Api::namespaced(ctx.client.clone(), &ps.namespace().unwrap_or_default());
    api.patch_status(
        &ps.name_any(),
        &PatchParams::default(),
        &Patch::Merge(patch),
    )
    .await
    .map_err(|e| {
        Error::kube(
            "patch status of",
            format!(
                "ProbeStatus {}/{}",
                ps.namespace().unwrap_or_default(),
                ps.name_any()
            ),
            e,
        )
    })?;
    Ok(())
}

/// The checker pod behind the runner's "pod running failed" result, named in its message, if it is
/// one. The runner reports a broken checker pod as a checker named after the probe.
fn failed_probe_pod(
    ps: &ProbeStatus,
    checker: &ProbeCheckerStatus,
) -> Option<kdiag_api::PodReference> {
    if checker.name != ps.name_any() || !checker.message.starts_with("pod running failed") {
        return None;
    }
    let start = checker.message.rfind("(pod ")? + "(pod ".len();
    let pod = checker.message[start..]
        .trim_end_matches(')')
        .trim()
        .to_owned();
    Some(kdiag_api::PodReference {
        namespace: ps.namespace().unwrap_or_default(),
        name: pod,
        container_name: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_probe_status_is_repaired_once_and_deleted_ones_are_forgotten() {
        let mut r = Repaired::default();
        assert!(r.first_look("ns/p", |_| true));
        assert!(!r.first_look("ns/p", |_| true));
        // 100,000 ProbeStatus objects come and go; only the last few still exist.
        for i in 0..100_000usize {
            let key = format!("ns/p-{i}");
            assert!(r.first_look(&key, |k| {
                k.strip_prefix("ns/p-")
                    .and_then(|n| n.parse::<usize>().ok())
                    .is_some_and(|n| n + 10 > i)
            }));
            assert!(
                r.names.len() <= 2 * Repaired::FIRST_SWEEP_AT,
                "{} at {i}",
                r.names.len()
            );
        }
    }
}
