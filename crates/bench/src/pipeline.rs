//! Sections 1 and 2: the pipeline's latency and throughput against the floor, and the footprint
//! of the real `kdiag agent` and `kdiag controller` processes, idle and with many Abnormals.
//!
//! One control plane, one node, the real binaries as separate processes:
//!
//! 1. idle: RSS and CPU of both processes with nothing to do;
//! 2. warm-up: a few Abnormals; the statuses kdiag writes for one of them become the floor's plan;
//! 3. unloaded: one item at a time, kdiag and floor alternately (latency with no queueing);
//! 4. loaded: rounds of kdiag and floor alternately, each keeping `window` items in flight (the
//!    agent's default concurrency), so drift on the shared machine falls on both alike;
//! 5. footprint: Abnormals up to `footprint` on the node, then RSS and idle CPU again;
//! 6. admission: creates one at a time through the admission webhook, then the same without it.
//!
//! The controller serves the admission webhook as shipped (config/deploy/webhook.yaml, failing
//! closed) at a URL on the loopback, so every kdiag Abnormal above is authorized against its
//! creator; the floor's objects are of another group and pass no webhook.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

use crate::apiserver::{self, Delta};
use crate::env::{Env, abnormal_resource, abnormal_spec, object};
use crate::floor::{self, Plan};
use crate::load::{LoadResult, Observer, closed_loop, final_phase};
use crate::plugin::Plugin;
use crate::procstat::{self, ProcSample, cpu_share, mib};
use crate::realproc::RealProc;
use crate::stats::{Summary, ratio, round};

pub struct Settings {
    pub kdiag: PathBuf,
    pub abnormals: usize,
    pub rounds: usize,
    pub window: usize,
    pub unloaded: usize,
    pub warmup: usize,
    pub footprint: usize,
    pub idle_seconds: u64,
    pub pods: usize,
    /// Abnormals created one at a time with the webhook, and as many without it.
    pub admission: usize,
    /// Command lines put in front of the agent and the controller, for profiling.
    pub agent_wrapper: Option<String>,
    pub controller_wrapper: Option<String>,
}

const NODE: &str = "bench-node";
/// A node with no agent: Abnormals created there to time admission make no work.
const ADMISSION_NODE: &str = "bench-admission";
const TIMEOUT: Duration = Duration::from_secs(1800);

/// The processes whose CPU is accounted: kdiag's two and the control plane's two.
struct Pids {
    agent: i32,
    controller: i32,
    etcd: i32,
    apiserver: i32,
}

#[derive(Clone, Copy)]
struct Cpu {
    agent: ProcSample,
    controller: ProcSample,
    etcd: ProcSample,
    apiserver: ProcSample,
}

impl Pids {
    fn sample(&self) -> Result<Cpu> {
        Ok(Cpu {
            agent: procstat::sample(self.agent)?,
            controller: procstat::sample(self.controller)?,
            etcd: procstat::sample(self.etcd)?,
            apiserver: procstat::sample(self.apiserver)?,
        })
    }
}

/// CPU seconds used between two readings, per process.
#[derive(Default, Clone, Copy)]
struct CpuUsed {
    agent: f64,
    controller: f64,
    control_plane: f64,
}

impl CpuUsed {
    fn between(a: &Cpu, b: &Cpu) -> Self {
        let s = |x: &ProcSample, y: &ProcSample| y.cpu.saturating_sub(x.cpu).as_secs_f64();
        Self {
            agent: s(&a.agent, &b.agent),
            controller: s(&a.controller, &b.controller),
            control_plane: s(&a.etcd, &b.etcd) + s(&a.apiserver, &b.apiserver),
        }
    }

    fn add(&mut self, o: &Self) {
        self.agent += o.agent;
        self.controller += o.controller;
        self.control_plane += o.control_plane;
    }

    fn per_1000(&self, n: usize) -> Value {
        let k = 1000.0 / n.max(1) as f64;
        json!({"agent": round(self.agent * k), "controller": round(self.controller * k),
               "controlPlane": round(self.control_plane * k)})
    }
}

/// A phase's accumulated results.
#[derive(Default)]
struct Acc {
    latencies: Vec<Duration>,
    elapsed: Duration,
    n: usize,
    failed: usize,
    errors: usize,
    api: Delta,
    cpu: CpuUsed,
}

impl Acc {
    fn add(&mut self, r: LoadResult, api: &Delta, cpu: &CpuUsed) {
        self.n += r.latencies.len();
        self.elapsed += r.elapsed;
        self.failed += r.failed;
        self.errors += r.errors;
        self.latencies.extend(r.latencies);
        self.api.add(api);
        self.cpu.add(cpu);
    }

    fn per_second(&self) -> f64 {
        self.n as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "latency": Summary::of(&self.latencies).json(),
            "perSecond": round(self.per_second()),
            "elapsedSeconds": round(self.elapsed.as_secs_f64()),
            "failed": self.failed,
            "startErrors": self.errors,
            "apiserverPerItem": self.api.per(self.n),
            "cpuSecondsPer1000": self.cpu.per_1000(self.n),
        })
    }
}

pub async fn run(s: &Settings) -> Result<(Value, Value)> {
    let env = Env::start().await?;
    let ns = env.namespace("bench").await;
    let plugin = Plugin::start().await?;
    env.register_plugin(&ns, plugin.port).await?;
    env.node(NODE).await?;
    env.create_pods(&ns, NODE, s.pods).await?;
    floor::install(&env).await?;

    let run_dir = env.cp.run_dir().to_path_buf();
    let agent_kc = env
        .cp
        .write_kubeconfig_for("kdiag-agent", &env.token("kdiag-agent").await);
    let controller_kc = env
        .cp
        .write_kubeconfig_for("kdiag-controller", &env.token("kdiag-controller").await);
    env.with_webhook()?;
    // Garbage collection keeps at most 200 finished Abnormals per node by default; it is
    // lifted so the node really holds `footprint` Abnormals.
    let mut controller = RealProc::spawn(
        &s.kdiag,
        s.controller_wrapper.as_deref(),
        "kdiag controller",
        &[
            "controller".into(),
            "--max-finished-per-node".into(),
            "100000000".into(),
            "--webhook=url".into(),
            "--webhook-port".into(),
            crate::env::free_port()?.to_string(),
        ],
        &controller_kc,
        &run_dir.join("kdiag-controller.log"),
    )?;
    let mut agent = RealProc::spawn(
        &s.kdiag,
        s.agent_wrapper.as_deref(),
        "kdiag agent",
        &[
            "agent".into(),
            "--node-name".into(),
            NODE.into(),
            "--data-root".into(),
            run_dir.join("agent-data").display().to_string(),
        ],
        &agent_kc,
        &run_dir.join("kdiag-agent.log"),
    )?;
    let http = reqwest::Client::new();
    controller.wait_ready(&http).await?;
    agent.wait_ready(&http).await?;
    let cp_pids = env.cp.pids();
    let pids = Pids {
        agent: agent.pid(),
        controller: controller.pid(),
        etcd: cp_pids[0],
        apiserver: cp_pids[1],
    };

    // 1. Idle.
    eprintln!("  idle: {} s with nothing to do", s.idle_seconds);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = measure_idle(&env, &pids, s.idle_seconds).await?;

    let kdiag_api: Api<DynamicObject> =
        Api::namespaced_with(env.admin.clone(), &ns, &abnormal_resource());
    let floor_api = floor::floor_api(&env, &ns);
    wait_until_webhook_answers(&kdiag_api, &ns, &abnormal_spec(&ns, NODE)).await?;
    let kdiag_obs = Observer::start(kdiag_api.clone(), final_phase()).await?;
    let floor_obs = Observer::start(floor_api.clone(), final_phase()).await?;
    let spec = abnormal_spec(&ns, NODE);
    // Abnormals created on the node so far.
    let mut created = 0usize;
    let start_kdiag = |name: String| {
        let (api, o) = (
            kdiag_api.clone(),
            object(&abnormal_resource(), &ns, &name, &spec),
        );
        async move {
            api.create(&PostParams::default(), &o).await?;
            Ok(())
        }
    };

    // 2. Warm-up, and the floor's plan from one traced Abnormal.
    eprintln!("  warm-up: {} Abnormals", s.warmup);
    let warm = names("warmup", s.warmup.max(1));
    created += warm.len();
    kdiag_obs.trace(&warm[0]);
    let before = apiserver::scrape(&env.admin).await?;
    let w = closed_loop(&kdiag_obs, &warm, 4, TIMEOUT, &start_kdiag).await?;
    let warm_api = apiserver::delta(&before, &apiserver::scrape(&env.admin).await?);
    anyhow::ensure!(
        w.failed == 0 && w.errors == 0,
        "warm-up Abnormals failed: see {}",
        run_dir.join("kdiag-agent.log").display()
    );
    let plan = Plan::from_trace(spec.clone(), kdiag_obs.traced())?;
    let sample = kdiag_api.get(&warm[0]).await?;
    let start_floor =
        |name: String| floor::run_one(floor_api.clone(), ns.clone(), name, plan.clone());

    // 3. Unloaded: one at a time, alternately.
    eprintln!(
        "  unloaded: {} Abnormals one at a time, alternating with the floor",
        s.unloaded
    );
    let (mut un_k, mut un_f) = (Vec::new(), Vec::new());
    created += s.unloaded;
    for (k, f) in names("one", s.unloaded)
        .into_iter()
        .zip(names("floor-one", s.unloaded))
    {
        un_k.extend(
            closed_loop(&kdiag_obs, &[k], 1, TIMEOUT, &start_kdiag)
                .await?
                .latencies,
        );
        un_f.extend(
            closed_loop(&floor_obs, &[f], 1, TIMEOUT, &start_floor)
                .await?
                .latencies,
        );
    }

    // 4. Loaded rounds.
    let per_round = s.abnormals.div_ceil(s.rounds.max(1));
    let (mut k_acc, mut f_acc) = (Acc::default(), Acc::default());
    for r in 0..s.rounds.max(1) {
        eprintln!(
            "  round {}/{}: {per_round} Abnormals, then {per_round} floor items, {} in flight",
            r + 1,
            s.rounds,
            s.window
        );
        let keys = names(&format!("load{r}"), per_round);
        created += keys.len();
        let (res, api, cpu) = measured(&env, &pids, async {
            closed_loop(&kdiag_obs, &keys, s.window, TIMEOUT, &start_kdiag).await
        })
        .await?;
        k_acc.add(res, &api, &cpu);
        let keys = names(&format!("floor{r}"), per_round);
        let (res, api, cpu) = measured(&env, &pids, async {
            closed_loop(&floor_obs, &keys, s.window, TIMEOUT, &start_floor).await
        })
        .await?;
        f_acc.add(res, &api, &cpu);
    }

    // 5. Footprint: fill the node.
    let fill = s.footprint.saturating_sub(created);
    eprintln!(
        "  footprint: {fill} more Abnormals, up to {} on the node",
        s.footprint
    );
    let keys = names("fill", fill);
    created += keys.len();
    let (bulk, bulk_api, bulk_cpu) = measured(&env, &pids, async {
        closed_loop(&kdiag_obs, &keys, s.window, TIMEOUT, &start_kdiag).await
    })
    .await?;
    let mut bulk_acc = Acc::default();
    bulk_acc.add(bulk, &bulk_api, &bulk_cpu);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let full = measure_idle(&env, &pids, s.idle_seconds).await?;
    let on_node = kdiag_obs.seen_count();
    let sizes = stored_sizes(&kdiag_api, &sample).await?;
    let agent_metrics = agent.metrics(&http).await.unwrap_or_default();
    eprintln!(
        "  admission: {} Abnormals one at a time through the webhook, then {} without",
        s.admission, s.admission
    );
    let admission =
        measure_admission(&env, &controller, &http, &kdiag_api, &ns, s.admission).await?;
    controller.stop();
    agent.stop();

    let unloaded_k = Summary::of(&un_k);
    let unloaded_f = Summary::of(&un_f);
    let lk = Summary::of(&k_acc.latencies);
    let lf = Summary::of(&f_acc.latencies);
    let pipeline = json!({
        "node": NODE,
        "spec": spec,
        "podsOnNode": s.pods,
        "statusWritesPerAbnormal": plan.statuses.len(),
        "warmup": {"n": warm.len(), "apiserverPerItem": warm_api.per(warm.len())},
        "unloaded": {
            "kdiag": unloaded_k.json(), "floor": unloaded_f.json(),
            "ratio": {"p50": round(ratio(unloaded_k.p50, unloaded_f.p50)), "p99": round(ratio(unloaded_k.p99, unloaded_f.p99))},
        },
        "loaded": {
            "window": s.window, "rounds": s.rounds,
            "kdiag": k_acc.json(), "floor": f_acc.json(),
            "ratio": {
                "p50": round(ratio(lk.p50, lf.p50)),
                "p99": round(ratio(lk.p99, lf.p99)),
                "throughput": round(ratio(k_acc.per_second(), f_acc.per_second())),
            },
        },
        "admission": admission,
        "agentApiErrors": metric_sum(&agent_metrics, "kdiag_agent_api_errors_total"),
        "pluginCallsPerAbnormal": round(plugin.calls.load(std::sync::atomic::Ordering::Relaxed) as f64 / created.max(1) as f64),
    });
    let footprint = json!({
        "idle": idle,
        "full": full,
        "abnormalsOnNode": on_node,
        "fill": bulk_acc.json(),
        "storedAbnormal": sizes,
        "reference": {
            "kubeDiagnoserAgentRequestMiB": 100, "kubeDiagnoserAgentLimitMiB": 4096,
            "nodeProblemDetectorRequestMiB": 80,
        },
    });
    Ok((pipeline, footprint))
}

/// Runs `f` between two readings of the apiserver's counters and the processes' CPU.
async fn measured<T>(
    env: &Env,
    pids: &Pids,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Delta, CpuUsed)> {
    let (api0, cpu0) = (apiserver::scrape(&env.admin).await?, pids.sample()?);
    let out = f.await?;
    let (cpu1, api1) = (pids.sample()?, apiserver::scrape(&env.admin).await?);
    Ok((
        out,
        apiserver::delta(&api0, &api1),
        CpuUsed::between(&cpu0, &cpu1),
    ))
}

/// Until a dry-run create passes: the apiserver calls the webhook with the caBundle the
/// controller wrote (before, it fails closed: connection refused or an unknown authority).
async fn wait_until_webhook_answers(
    api: &Api<DynamicObject>,
    ns: &str,
    spec: &Value,
) -> Result<()> {
    let probe = object(&abnormal_resource(), ns, "webhook-probe", spec);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        match api.create(&dry_run, &probe).await {
            Ok(_) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => {
                return Err(e).context("the admission webhook never answered within 120 s");
            }
        }
    }
}

/// The time of `n` creates one at a time, with the webhook and then without it (the
/// configuration deleted), on a node with no agent; the controller's review counter shows
/// which creates it reviewed.
async fn measure_admission(
    env: &Env,
    controller: &RealProc,
    http: &reqwest::Client,
    api: &Api<DynamicObject>,
    ns: &str,
    n: usize,
) -> Result<Value> {
    env.node(ADMISSION_NODE).await?;
    let spec = abnormal_spec(ns, ADMISSION_NODE);
    let reviews = || async {
        let text = controller.metrics(http).await?;
        anyhow::Ok(metric_sum(&text, "kdiag_webhook_reviews_total"))
    };
    let creates = |prefix: &'static str| {
        let spec = spec.clone();
        async move {
            let mut took = Vec::with_capacity(n);
            for name in names(prefix, n) {
                let o = object(&abnormal_resource(), ns, &name, &spec);
                let t = std::time::Instant::now();
                api.create(&PostParams::default(), &o).await?;
                took.push(t.elapsed());
            }
            anyhow::Ok(took)
        }
    };
    let r0 = reviews().await?;
    let on = Summary::of(&creates("admit-on").await?);
    let reviewed_on = reviews().await? - r0;

    env.without_webhook()?;
    // Until the apiserver has dropped the webhook: a dry-run create it no longer reviews.
    let probe = object(&abnormal_resource(), ns, "webhook-gone", &spec);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let before = reviews().await?;
        api.create(&dry_run, &probe).await?;
        if reviews().await? == before {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the apiserver still calls the webhook 60 s after its configuration was deleted"
        );
    }
    let r1 = reviews().await?;
    let off = Summary::of(&creates("admit-off").await?);
    let reviewed_off = reviews().await? - r1;
    Ok(json!({
        "n": n,
        "webhook": on.json(),
        "noWebhook": off.json(),
        "reviews": {"webhook": reviewed_on, "noWebhook": reviewed_off},
        "ratio": {"p50": round(ratio(on.p50, off.p50)), "p99": round(ratio(on.p99, off.p99))},
    }))
}

/// Requests the apiserver makes of itself, kdiag or not.
const HOUSEKEEPING: [&str; 5] = [
    "endpoints",
    "namespaces",
    "services",
    "flowschemas",
    "prioritylevelconfigurations",
];

/// RSS now, and CPU and apiserver requests over `seconds` of doing nothing.
async fn measure_idle(env: &Env, pids: &Pids, seconds: u64) -> Result<Value> {
    let (api0, a0) = (apiserver::scrape(&env.admin).await?, pids.sample()?);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (a1, api1) = (pids.sample()?, apiserver::scrape(&env.admin).await?);
    let api = apiserver::delta(&api0, &api1);
    let minutes = seconds as f64 / 60.0;
    let proc = |x: &ProcSample, y: &ProcSample| {
        json!({"rssMiB": round(mib(y.rss_kib)), "peakRssMiB": round(mib(y.hwm_kib)),
               "rssAnonMiB": round(mib(y.anon_kib)), "rssFileMiB": round(mib(y.file_kib)),
               "threads": y.threads,
               "cpuPercent": round(cpu_share(x, y) * 100.0),
               "cpuSeconds": round(y.cpu.saturating_sub(x.cpu).as_secs_f64())})
    };
    Ok(json!({
        "seconds": seconds,
        "agent": proc(&a0.agent, &a1.agent),
        "controller": proc(&a0.controller, &a1.controller),
        // The bench's /metrics scrapes are not counted; its two idle watches make no requests.
        // Nor are the apiserver's own housekeeping loops (the `kubernetes` Service's endpoints,
        // priority-and-fairness config), which run without kdiag too.
        "apiserverRequestsPerMinute": round(api.requests_except(&HOUSEKEEPING) / minutes),
        "apiserverRequests": api.per(1)["byRequest"],
    }))
}

/// The size of stored Abnormals as JSON: a finished one in full, and its status.context.
async fn stored_sizes(api: &Api<DynamicObject>, sample: &DynamicObject) -> Result<Value> {
    let name = sample.metadata.name.clone().context("a named sample")?;
    let now = api.get(&name).await?;
    let whole = serde_json::to_vec(&now)?.len();
    let context = serde_json::to_vec(&now.data["status"]["context"])?.len();
    let managed = serde_json::to_vec(&now.metadata.managed_fields)?.len();
    Ok(json!({"jsonBytes": whole, "contextBytes": context, "managedFieldsBytes": managed}))
}

/// The sum of a counter over all its series, from Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}
