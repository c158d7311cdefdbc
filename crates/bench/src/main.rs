//! `kdiag-bench` (run by `make bench`): how fast and small kdiag is and how it scales, on a real
//! control plane, with every figure next to a baseline measured in the same run on the same
//! machine (absolute times drift on shared machines; ratios are what to read).
//!
//! Sections (docs/performance.md explains each method):
//! 1. `pipeline`: latency and throughput of the real controller and agent against the floor (a
//!    bare client doing the same create + status writes), and 2. their footprint;
//! 3. `scale`: 50, 100, 200 agents against one apiserver;
//! 4. `triggers`: ProbeStatus, Event and alert to Abnormal (and to the root cause);
//! 5. `collectors`: kdiag-collectors' benchmark against `ps` and `du`;
//! 6. `probes`: continuous probes' controller CPU and apiserver writes against periodic ones.
//! 7. `probe-triggers`: a change a Probe's triggers watch → the probe's result, against a manual
//!    run → its result;
//! 8. `fleet`: the real `kdiag hub` with 50, 200, 500 member links (simulated members, real
//!    WebSocket+TLS links): its memory and CPU, heartbeat cost, and change-to-stored latency
//!    against its own direct write.
//!
//! Prints a table and writes `latest.json`, a timestamped copy and `latest.txt` to `--out`. A
//! number never fails the run; a section that cannot run does (after the others have run).

mod apiserver;
mod collectors;
mod env;
mod fleet;
mod floor;
mod load;
mod pipeline;
mod plugin;
mod probe_triggers;
mod probes;
mod procstat;
mod realproc;
mod report;
mod scale;
mod stats;
mod triggers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use serde_json::{Map, Value, json};

#[derive(Parser, Debug)]
#[command(name = "kdiag-bench", about = "kdiag's benchmarks (make bench)")]
struct Args {
    /// Sections to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "pipeline,scale,triggers,collectors,probes,probe-triggers,fleet"
    )]
    sections: Vec<String>,
    /// The kdiag binary run as agent and controller processes (a release build).
    #[arg(long, default_value = "target/release/kdiag")]
    kdiag: PathBuf,
    /// kdiag-collectors' benchmark, built with `--example bench_collectors`.
    #[arg(long, default_value = "target/release/examples/bench_collectors")]
    collectors: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// 1. Abnormals in the loaded rounds (and as many floor items).
    #[arg(long, default_value_t = 1000)]
    abnormals: usize,
    /// 1. Rounds the loaded Abnormals are split into, alternating with the floor.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// 1. and 2. Items in flight (the agent's default concurrency is 32).
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// 1. Abnormals (and floor items) run one at a time.
    #[arg(long, default_value_t = 100)]
    unloaded: usize,
    /// 1. Warm-up Abnormals, not counted.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// 2. Abnormals on the node for the footprint with a full node.
    #[arg(long, default_value_t = 10_000)]
    footprint_abnormals: usize,
    /// 2. Seconds of idleness over which idle CPU is measured.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// 1. and 2. Pods bound to the node, which pod-collector collects into every Abnormal.
    #[arg(long, default_value_t = 3)]
    pods: usize,
    /// 1. Abnormals created one at a time through the admission webhook, and as many without.
    #[arg(long, default_value_t = 300)]
    admission: usize,
    /// Sections 1 and 2: a command line the agent is run under, for profiling; it must exec kdiag:
    /// `env MALLOC_ARENA_MAX=2`, or heaptrack's preload library (docs/performance.md).
    #[arg(long)]
    agent_wrapper: Option<String>,
    /// 1. and 2. The same for the controller.
    #[arg(long)]
    controller_wrapper: Option<String>,
    /// 3. Agent counts.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200")]
    nodes: Vec<usize>,
    /// 3. Abnormals per agent count.
    #[arg(long, default_value_t = 200)]
    scale_abnormals: usize,
    /// 3. Skip the watch-everything baseline.
    #[arg(long)]
    no_watch_all_baseline: bool,
    /// 4. Episodes per trigger path.
    #[arg(long, default_value_t = 200)]
    episodes: usize,
    /// 6. Probes run continuously, and as many periodically.
    #[arg(long, default_value_t = 20)]
    probe_count: usize,
    /// 6. Seconds between a continuous probe's results.
    #[arg(long, default_value_t = 5)]
    probe_interval: u64,
    /// 6. Seconds each mode is measured.
    #[arg(long, default_value_t = 60)]
    probe_seconds: u64,
    /// 7. Rollouts that trigger the probe (and as many manual runs).
    #[arg(long, default_value_t = 20)]
    trigger_changes: usize,
    /// 8. Member cluster counts, ascending (members are added to one hub to reach each).
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    fleet_clusters: Vec<usize>,
    /// 8. Seconds between each simulated member's heartbeats.
    #[arg(long, default_value_t = 10)]
    fleet_heartbeat_seconds: u64,
    /// 8. Seconds the hub is measured idle (heartbeats only) at each size.
    #[arg(long, default_value_t = 30)]
    fleet_seconds: u64,
    /// 8. ProbeStatus changes sent up at each size (and as many floor writes).
    #[arg(long, default_value_t = 200)]
    fleet_changes: usize,
}

fn main() -> ExitCode {
    kdiag_testenv::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            // kube_client logs every failed poll while a control plane starts; failures that
            // matter come back as errors of the section.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_runtime=error,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let started = Instant::now();
    let started_at = jiff::Timestamp::now();
    let mut results = Map::new();
    results.insert("startedAt".into(), json!(started_at.to_string()));
    results.insert("machine".into(), machine());
    results.insert("settings".into(), json!(format!("{args:?}")));
    let mut errors = Map::new();
    let wants = |s: &str| args.sections.iter().any(|x| x == s);

    if wants("pipeline") {
        eprintln!("== 1+2. pipeline and footprint");
        let s = pipeline::Settings {
            kdiag: args.kdiag.clone(),
            abnormals: args.abnormals,
            rounds: args.rounds,
            window: args.window,
            unloaded: args.unloaded,
            warmup: args.warmup,
            footprint: args.footprint_abnormals,
            idle_seconds: args.idle_seconds,
            pods: args.pods,
            admission: args.admission,
            agent_wrapper: args.agent_wrapper.clone(),
            controller_wrapper: args.controller_wrapper.clone(),
        };
        match pipeline::run(&s).await {
            Ok((p, f)) => {
                results.insert("pipeline".into(), p);
                results.insert("footprint".into(), f);
            }
            Err(e) => {
                eprintln!("error: section pipeline: {e:#}");
                errors.insert("pipeline".into(), json!(format!("{e:#}")));
            }
        }
    }
    if wants("scale") {
        eprintln!("== 3. scale with nodes");
        let s = scale::Settings {
            nodes: args.nodes.clone(),
            abnormals: args.scale_abnormals,
            window: args.window,
            baseline: !args.no_watch_all_baseline,
        };
        record(&mut results, &mut errors, "scale", scale::run(&s).await);
    }
    if wants("triggers") {
        eprintln!("== 4. trigger paths");
        record(
            &mut results,
            &mut errors,
            "triggers",
            triggers::run(args.episodes).await,
        );
    }
    if wants("probe-triggers") {
        eprintln!("== 7. probes triggered by change");
        record(
            &mut results,
            &mut errors,
            "probeTriggers",
            probe_triggers::run(args.trigger_changes).await,
        );
    }
    if wants("collectors") {
        eprintln!("== 5. collectors against ps and du");
        let r = collectors::run(&args.collectors, &args.out);
        record(&mut results, &mut errors, "collectors", r);
    }

    if wants("probes") {
        eprintln!("== 6. continuous probes against periodic ones");
        let s = probes::Settings {
            kdiag: args.kdiag.clone(),
            probes: args.probe_count,
            interval: args.probe_interval,
            seconds: args.probe_seconds,
        };
        record(&mut results, &mut errors, "probes", probes::run(&s).await);
    }
    if wants("fleet") {
        eprintln!("== 8. the fleet hub with many member links");
        let s = fleet::Settings {
            kdiag: args.kdiag.clone(),
            clusters: args.fleet_clusters.clone(),
            heartbeat: std::time::Duration::from_secs(args.fleet_heartbeat_seconds.max(1)),
            seconds: args.fleet_seconds,
            changes: args.fleet_changes,
        };
        record(&mut results, &mut errors, "fleet", fleet::run(&s).await);
    }
    results.insert(
        "durationSeconds".into(),
        json!(stats::round(started.elapsed().as_secs_f64())),
    );
    let failed = !errors.is_empty();
    results.insert("errors".into(), Value::Object(errors));
    let mut results = Value::Object(results);
    let targets = report::targets(&results);
    results["targets"] = report::targets_json(&targets);
    let table = report::render(&results);
    println!("{table}");
    if let Err(e) = write(&args.out, &started_at, &results, &table) {
        eprintln!("error: writing results to {}: {e}", args.out.display());
        return ExitCode::FAILURE;
    }
    if failed {
        eprintln!("error: some sections could not run (see above)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn record(
    results: &mut Map<String, Value>,
    errors: &mut Map<String, Value>,
    name: &str,
    r: anyhow::Result<Value>,
) {
    match r {
        Ok(v) => {
            results.insert(name.into(), v);
        }
        Err(e) => {
            eprintln!("error: section {name}: {e:#}");
            errors.insert(name.into(), json!(format!("{e:#}")));
        }
    }
}

fn write(
    dir: &std::path::Path,
    at: &jiff::Timestamp,
    results: &Value,
    table: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(results)?;
    let stamp = at.strftime("%Y-%m-%dT%H-%M-%SZ").to_string();
    std::fs::write(dir.join(format!("{stamp}.json")), &json)?;
    std::fs::write(dir.join("latest.json"), &json)?;
    std::fs::write(dir.join("latest.txt"), table)?;
    eprintln!(
        "wrote {} and {}",
        dir.join("latest.json").display(),
        dir.join(format!("{stamp}.json")).display()
    );
    Ok(())
}

/// What the numbers were measured on.
fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memoryGiB": stats::round(mem_kib / 1024.0 / 1024.0),
        "loadAverage": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "commit": git(&["rev-parse", "--short", "HEAD"]),
        "uncommittedChanges": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
    })
}
