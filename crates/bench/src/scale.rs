//! Section 3: scale with nodes. M agents with distinct node names (tasks in this process, each
//! with its own client and kdiag-agent's token, so each has its own connections and watches as
//! separate processes would) against one apiserver, M = 50, 100, 200 (added incrementally).
//!
//! For each M the same workload runs: `abnormals` Abnormals spread round-robin over the nodes,
//! `window` in flight. Measured: the watches the apiserver holds, requests and watch events per
//! Abnormal, latency, and where each Abnormal went (each agent's store and its finished count).
//!
//! Baseline, same run: the same workload with M extra watchers that each watch every Abnormal, as
//! Kube Diagnoser's agents did; the apiserver's watch events per Abnormal show the difference.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use kdiag_api::labels::{NODE_LABEL, node_label_value};
use kube::api::{Api, DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

use crate::apiserver::{self, Delta};
use crate::env::{Env, InProcAgent, InProcController, abnormal_resource, abnormal_spec, object};
use crate::load::{LoadResult, Observer, closed_loop, final_phase};
use crate::plugin::Plugin;
use crate::procstat;
use crate::stats::{Summary, round};

pub struct Settings {
    pub nodes: Vec<usize>,
    pub abnormals: usize,
    pub window: usize,
    pub baseline: bool,
}

const TIMEOUT: Duration = Duration::from_secs(900);

pub async fn run(s: &Settings) -> Result<Value> {
    let env = Env::start().await?;
    // The plugin is registered again in each step's namespace: a namespaced registration only
    // serves Abnormals of its own namespace (admission refuses others as out of namespace).
    let plugin = Plugin::start().await?;
    let controller = InProcController::start(&env, Default::default()).await?;
    let token = env.token("kdiag-agent").await;
    let data_root = env.cp.run_dir().join("scale-agents");
    let without_agents = apiserver::scrape(&env.admin).await?;

    let mut agents: Vec<InProcAgent> = Vec::new();
    let mut steps = Vec::new();
    let mut sizes = s.nodes.clone();
    sizes.sort_unstable();
    for m in sizes {
        eprintln!(
            "  {m} agents: starting {} more",
            m.saturating_sub(agents.len())
        );
        start_agents(&env, &token, &data_root, &mut agents, m).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = apiserver::scrape(&env.admin).await?;
        let watches = watch_count(&now) - watch_count(&without_agents);

        eprintln!(
            "  {m} agents: {} Abnormals, {} in flight",
            s.abnormals, s.window
        );
        let ns = env.namespace(&format!("scale-{m}")).await;
        env.register_plugin(&ns, plugin.port).await?;
        let finished_before: Vec<u64> = agents.iter().map(InProcAgent::finished).collect();
        let (res, api, cpu) = workload(&env, &ns, &agents, s).await?;
        let routing = routing(&agents, &finished_before, &ns, s.abnormals);

        let baseline = if s.baseline {
            eprintln!("  {m} agents + {m} watch-everything watchers (baseline)");
            let watchers = WatchAll::start(&env, &token, m).await?;
            let ns = env.namespace(&format!("scale-{m}-all")).await;
            env.register_plugin(&ns, plugin.port).await?;
            let (b_res, b_api, b_cpu) = workload(&env, &ns, &agents, s).await?;
            watchers.stop();
            Some(step_json(&b_res, &b_api, b_cpu))
        } else {
            None
        };
        steps.push(json!({
            "agents": m,
            "watches": watches,
            "watchesPerAgent": round(watches / m as f64),
            "kdiag": step_json(&res, &api, cpu),
            "routing": routing,
            "watchEverythingBaseline": baseline,
        }));
    }
    for a in agents {
        a.stop().await;
    }
    controller.stop().await;
    drop(plugin);
    Ok(json!({"abnormalsPerStep": s.abnormals, "window": s.window, "steps": steps}))
}

/// Adds agents until there are `m`, a batch at a time.
async fn start_agents(
    env: &Env,
    token: &str,
    data_root: &std::path::Path,
    agents: &mut Vec<InProcAgent>,
    m: usize,
) -> Result<()> {
    while agents.len() < m {
        let batch: Vec<usize> = (agents.len()..m.min(agents.len() + 25)).collect();
        let started = futures::future::join_all(batch.iter().map(|i| async move {
            let node = format!("scale-node-{i:03}");
            env.node(&node).await?;
            let client = env.cp.client_with_token(token).await;
            InProcAgent::start(client, &node, data_root).await
        }))
        .await;
        for a in started {
            agents.push(a?);
        }
    }
    Ok(())
}

/// `n` Abnormals in `ns`, round-robin over the agents' nodes; returns the load's results, the
/// apiserver's delta and the CPU seconds this process (agents, controller and driver) used.
async fn workload(
    env: &Env,
    ns: &str,
    agents: &[InProcAgent],
    s: &Settings,
) -> Result<(LoadResult, Delta, f64)> {
    let api: Api<DynamicObject> = Api::namespaced_with(env.admin.clone(), ns, &abnormal_resource());
    let obs = Observer::start(api.clone(), final_phase()).await?;
    let nodes: Vec<String> = agents.iter().map(|a| a.node.clone()).collect();
    let keys: Vec<String> = (0..s.abnormals).map(|i| format!("a-{i:05}")).collect();
    let start = |key: String| {
        let i: usize = key[2..].parse().unwrap_or(0);
        let spec = abnormal_spec(ns, &nodes[i % nodes.len()]);
        let (api, o) = (api.clone(), object(&abnormal_resource(), ns, &key, &spec));
        async move {
            api.create(&PostParams::default(), &o).await?;
            Ok(())
        }
    };
    let me = std::process::id() as i32;
    let (api0, cpu0) = (
        apiserver::scrape(&env.admin).await?,
        procstat::cpu_time(me)?,
    );
    let res = closed_loop(&obs, &keys, s.window, TIMEOUT, start).await?;
    let (cpu1, api1) = (
        procstat::cpu_time(me)?,
        apiserver::scrape(&env.admin).await?,
    );
    Ok((
        res,
        apiserver::delta(&api0, &api1),
        cpu1.saturating_sub(cpu0).as_secs_f64(),
    ))
}

/// Where the Abnormals of `ns` went: agent i should have exactly those sent to its node, in its
/// store and in its finished count, and no other agent any of them.
fn routing(agents: &[InProcAgent], finished_before: &[u64], ns: &str, n: usize) -> Value {
    let m = agents.len();
    let expected = |i: usize| (0..n).filter(|k| k % m == i).count();
    let (mut in_stores, mut foreign, mut agents_with_foreign, mut miscounted) = (0, 0, 0, 0);
    let mut processed = 0u64;
    for (i, a) in agents.iter().enumerate() {
        let own = node_label_value(&a.node);
        let mut mine = 0;
        let mut strangers = 0;
        for o in a.handle.store.state() {
            let Ok(ab) = &o.0 else { continue };
            if ab.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let label = ab.metadata.labels.as_ref().and_then(|l| l.get(NODE_LABEL));
            if label == Some(&own) {
                mine += 1;
            } else {
                strangers += 1;
            }
        }
        in_stores += mine + strangers;
        foreign += strangers;
        agents_with_foreign += usize::from(strangers > 0);
        let done = a.finished() - finished_before.get(i).copied().unwrap_or(0);
        processed += done;
        miscounted += usize::from(mine != expected(i) || done != expected(i) as u64);
    }
    json!({
        "abnormals": n,
        "inAgentStores": in_stores,
        "processedByAgents": processed,
        "foreignInStores": foreign,
        "agentsThatSawAForeignAbnormal": agents_with_foreign,
        "agentsWithWrongCount": miscounted,
        "onlyItsNodesAgent": foreign == 0 && miscounted == 0 && in_stores == n,
    })
}

fn step_json(res: &LoadResult, api: &Delta, cpu_seconds: f64) -> Value {
    let n = res.latencies.len().max(1);
    json!({
        "latency": Summary::of(&res.latencies).json(),
        "perSecond": round(res.per_second()),
        "failed": res.failed,
        "apiserverPerAbnormal": api.per(n),
        "abnormalWatchEventsPerAbnormal": round(api.watch_events_of("Abnormal") / n as f64),
        "processCpuMsPerAbnormal": round(cpu_seconds * 1000.0 / n as f64),
    })
}

/// Watches open on the apiserver: registered watchers (all kinds), or the long-running WATCH
/// requests if this apiserver does not export the former.
fn watch_count(s: &apiserver::Scrape) -> f64 {
    let registered: f64 = s.watchers().values().sum();
    if registered > 0.0 {
        registered
    } else {
        s.watch_requests()
    }
}

/// M watchers of every Abnormal in the cluster, each with its own client and cache, as Kube
/// Diagnoser's agents had.
struct WatchAll(Vec<tokio::task::JoinHandle<()>>);

impl WatchAll {
    async fn start(env: &Env, token: &str, m: usize) -> Result<Self> {
        let mut tasks = Vec::new();
        let mut readers = Vec::new();
        for _ in 0..m {
            let client = env.cp.client_with_token(token).await;
            let api: Api<DynamicObject> = Api::all_with(client, &abnormal_resource());
            let writer = reflector::store::Writer::new(abnormal_resource());
            let reader = writer.as_reader();
            let stream = reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .for_each(|_| async {});
            tasks.push(tokio::spawn(stream));
            readers.push(reader);
        }
        for r in &readers {
            kdiag_runtime::ready::store_ready(r).await;
        }
        Ok(Self(tasks))
    }

    fn stop(self) {
        for t in self.0 {
            t.abort();
        }
    }
}
