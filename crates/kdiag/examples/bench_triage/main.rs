//! Benchmark of the triage, per class: for every failure class the tests make really happen,
//! the time from `kubectl diag run … ` to its answer, on a real single-node cluster (kubelet,
//! containerd, scheduler, controller-manager) with kdiag's controller and the node's agent
//! running. Each class is asked as an operator asks it:
//!
//! - **cli pod**: `kubectl diag run --pod NS/POD --wait` — admission, routing, the triage's
//!   collectors and pod-triage-diagnoser on the node's agent, the CLI following it to the end.
//!   OOM kill, crash loop, missing command, image pull, missing ConfigMap, no node fits, hostPort
//!   conflict, liveness probe, stuck finalizer, emptyDir over its sizeLimit; during the node
//!   faults also a pod waiting on a hung runtime and a pod whose sandbox's network fails.
//! - **cli workload**: `kubectl diag run --deployment|--statefulset|--daemonset|--pdb|--service|
//!   --job NS/NAME -o json` — judged by the CLI at once from the objects, no Abnormal: a rollout
//!   over its ResourceQuota (Deployment and StatefulSet), a rollout whose pod never gets ready,
//!   a PodDisruptionBudget allowing no eviction, a Service whose pod is not ready, a Job past its
//!   backoffLimit, a Deployment whose pods set no requests under a ResourceQuota on
//!   requests.cpu, one whose pods an admission webhook denies and one whose webhook's Service
//!   does not exist (failurePolicy Fail; the webhook is served by the bench process, scoped to
//!   its own namespace and labels, its configuration deleted at the end), and a DaemonSet kept
//!   off the tainted node (timed while the taint is on).
//! - **cli node**: `kubectl diag run --node NODE --wait` — the node collectors and
//!   node-triage-diagnoser on the agent. These change the node, so they come after the others,
//!   one fault at a time (inject, wait until it shows, time, restore, wait until the node is
//!   healthy): zombies, a pod at its pids limit, a drain held by a PodDisruptionBudget (`kubectl
//!   drain` refused, the node cordoned until it is timed), the kubelet stopped (SIGSTOP),
//!   containerd stopped (SIGSTOP), the CNI configuration naming a missing plugin, inode pressure
//!   then disk pressure on the kubelet's filesystem, and last the two that cannot be restored:
//!   containerd killed, then the kubelet killed (in that order: with the kubelet gone nothing
//!   reports the runtime down, while a dead kubelet outranks a dead runtime).
//!   `--no-kill-runtime` and `--no-kill-kubelet` leave them out.
//! - **abnormal**: an Abnormal created directly (no class uses it today; kept for pods the CLI
//!   cannot route).
//!
//! The cluster is the bench's own, with the options the node faults need
//! ([`nodes::cluster_options`]); it stops when the bench exits (`make clean-clusters` cleans
//! after a killed run). Every answer's reason is checked against the class's expected ones. The
//! table gives p50/p99/max per class against the 5 s target (issue 18), and `steps p50`, the
//! time the Abnormal's steps on the agent took in all (from their records; the rest is the CLI's
//! process, admission, routing and status writes). The samples go to the JSON file.
//!
//! ```sh
//! cargo build --release --bin kdiag -p kdiag --example bench_triage
//! target/release/examples/bench_triage --runs 10 bench/results/triage.json  # root, like make run
//! target/debug/examples/bench_triage --runs 1 --only pod,workload out.json   # a quick check
//! ```

mod nodes;
#[path = "../../tests/triage_support/mod.rs"]
mod triage_support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use triage_support::workloads::{self, WorkloadCase};
use triage_support::{Scenario, Stack, scenarios};

/// Issue 18: each class answers within 5 s from the request.
const TARGET_MS: f64 = 5000.0;

struct Args {
    runs: usize,
    out: std::path::PathBuf,
    groups: Vec<String>,
    kill_runtime: bool,
    kill_kubelet: bool,
}

const GROUPS: &[&str] = &["pod", "workload", "node"];

fn args() -> Result<Args, String> {
    let mut runs = 5;
    let mut out = None;
    let mut groups: Vec<String> = GROUPS.iter().map(|g| g.to_string()).collect();
    let mut kill_runtime = true;
    let mut kill_kubelet = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("--runs takes a positive number")?;
            }
            "--only" => {
                groups = it
                    .next()
                    .ok_or("--only takes a list: pod,workload,node")?
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(g) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    return Err(format!("--only: unknown group {g:?} (pod, workload, node)"));
                }
            }
            "--no-kill-runtime" => kill_runtime = false,
            "--no-kill-kubelet" => kill_kubelet = false,
            "-h" | "--help" => return Err(String::new()),
            p if out.is_none() && !p.starts_with('-') => out = Some(p.into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args {
        runs,
        out: out.ok_or("give the path to write the JSON results to")?,
        groups,
        kill_runtime,
        kill_kubelet,
    })
}

/// How a class is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    CliPod,
    CliWorkload,
    CliNode,
    Abnormal,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::CliPod => "cli pod",
            Via::CliWorkload => "cli workload",
            Via::CliNode => "cli node",
            Via::Abnormal => "abnormal",
        }
    }
}

/// What is asked.
#[derive(Clone, Debug)]
pub enum Ask {
    /// A pod of the stack's namespace, with `kubectl diag run --pod` or an Abnormal.
    Pod { pod: String, via_cli: bool },
    /// The cluster's node.
    Node,
    /// `kubectl diag run` with these arguments (a workload, `-o json`).
    Workload(Vec<String>),
}

/// One class and its samples.
pub struct Class {
    name: String,
    via: Via,
    ask: Ask,
    reasons: Vec<&'static str>,
    samples: Vec<f64>,
    seen: Vec<String>,
    steps: Vec<f64>,
    /// The steps of the slowest answer, to see where its time went.
    slowest_steps: Vec<Value>,
}

impl Class {
    pub fn new(name: &str, via: Via, ask: Ask, reasons: Vec<&'static str>) -> Class {
        Class {
            name: name.to_owned(),
            via,
            ask,
            reasons,
            samples: Vec::new(),
            seen: Vec::new(),
            steps: Vec::new(),
            slowest_steps: Vec::new(),
        }
    }

    fn of_scenario(s: &Scenario, pod: String) -> Class {
        let via = if s.via_cli {
            Via::CliPod
        } else {
            Via::Abnormal
        };
        let ask = Ask::Pod {
            pod,
            via_cli: s.via_cli,
        };
        Class::new(s.name, via, ask, s.reasons.to_vec())
    }

    fn of_workload(w: &WorkloadCase) -> Class {
        Class::new(
            w.name,
            Via::CliWorkload,
            Ask::Workload(w.args()),
            w.reasons.to_vec(),
        )
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One answer: milliseconds, the reason it named (or what went wrong), and the milliseconds
/// the Abnormal's steps took in all (none for a workload: no Abnormal).
struct Answer {
    ms: f64,
    reason: String,
    steps: Option<f64>,
    /// Each step: processor, result, milliseconds.
    step_list: Vec<Value>,
}

/// Asks once. A command that fails is an error; an answer with an unexpected reason is not
/// (it is reported in the table).
async fn once(st: &Stack, ask: &Ask, name: &str) -> Result<Answer, String> {
    let begin = Instant::now();
    let abnormal = match ask {
        Ask::Pod { pod, via_cli: true } => {
            let ran = st.kubectl_diag_run(pod, name).await;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            // Exit 1 is an Abnormal that ended Failed: its status says why.
            if ran.code != 0 && ran.code != 1 {
                return Err(format!("kubectl diag run --pod {pod}: {ran}"));
            }
            (ms, st.abnormal(name).await)
        }
        Ask::Pod {
            pod,
            via_cli: false,
        } => {
            st.create_triage_abnormal(pod, name).await;
            let a = st.wait_final(name, Duration::from_secs(90)).await;
            (begin.elapsed().as_secs_f64() * 1000.0, a)
        }
        Ask::Node => {
            let args: Vec<String> = [
                "-n",
                &st.namespace,
                "--node",
                st.cluster.node_name(),
                "--name",
                name,
                "--wait",
                "--timeout",
                "90s",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let ran = st.diag_run(&args).await;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            if ran.code != 0 && ran.code != 1 {
                return Err(format!("kubectl diag run --node: {ran}"));
            }
            (ms, st.abnormal(name).await)
        }
        Ask::Workload(args) => {
            let ran = st.diag_run(args).await;
            let ms = begin.elapsed().as_secs_f64() * 1000.0;
            let v: Value = serde_json::from_str(&ran.stdout).map_err(|e| {
                format!("kubectl diag run {}: not JSON ({e}): {ran}", args.join(" "))
            })?;
            let reason = v["rootCause"]["reason"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("(exit {}, no root cause)", ran.code));
            return Ok(Answer {
                ms,
                reason,
                steps: None,
                step_list: Vec::new(),
            });
        }
    };
    let (ms, a) = abnormal;
    let status = a.status.unwrap_or_default();
    let steps: i64 = status
        .processors
        .iter()
        .filter_map(|p| p.duration_milliseconds)
        .sum();
    let step_list = status
        .processors
        .iter()
        .map(|p| {
            json!({"processor": p.processor, "result": format!("{:?}", p.result),
                "ms": p.duration_milliseconds, "message": p.message})
        })
        .collect();
    let reason = match status.root_cause {
        Some(r) => r.reason,
        None => format!(
            "(no root cause: {})",
            status.phase.map(|p| format!("{p:?}")).unwrap_or_default()
        ),
    };
    Ok(Answer {
        ms,
        reason,
        steps: Some(steps as f64),
        step_list,
    })
}

/// Asks once untimed (first connections, the agent's first /proc scan), then `runs` times.
pub async fn time_class(st: &Stack, class: &mut Class, runs: usize) -> Result<(), String> {
    once(st, &class.ask, &format!("warm-{}", class.name))
        .await
        .map_err(|e| format!("warm-up of {}: {e}", class.name))?;
    for run in 0..runs {
        record(st, class, run).await?;
    }
    eprintln!("  {}: {} run(s) done", class.name, runs);
    Ok(())
}

async fn record(st: &Stack, class: &mut Class, run: usize) -> Result<(), String> {
    let a = once(st, &class.ask, &format!("bench-{}-{run}", class.name))
        .await
        .map_err(|e| format!("run {run} of {}: {e}", class.name))?;
    if class.samples.iter().all(|ms| *ms < a.ms) {
        class.slowest_steps = a.step_list;
    }
    class.samples.push(a.ms);
    class.seen.push(a.reason);
    if let Some(s) = a.steps {
        class.steps.push(s);
    }
    Ok(())
}

/// The pod classes and the workload classes that need nothing else of the node: set up side by
/// side, then timed interleaved run by run, so background load falls on all of them alike.
async fn steady_classes(st: &Stack, args: &Args) -> Result<Vec<Class>, String> {
    let want = |g: &str| args.groups.iter().any(|x| x == g);
    let pod_classes = async {
        let mut out = Vec::new();
        if want("pod") {
            for s in scenarios() {
                eprintln!("waiting for {} to fail…", s.name);
                let pod = st.wait_for_failure(&s).await;
                out.push(Class::of_scenario(&s, pod));
            }
        }
        out
    };
    let workload_classes = async {
        if !want("workload") {
            return (Vec::new(), None);
        }
        let c = st.cluster;
        let (quota, unready, pdb, service, job, requests, (webhooks, guard)) = tokio::join!(
            workloads::over_quota(c),
            workloads::rollout_never_ready(c),
            workloads::disruption_budget_too_strict(c),
            workloads::service_without_ready_endpoints(c),
            workloads::job_past_backoff_limit(c),
            workloads::quota_missing_requests(c),
            workloads::refused_by_admission_webhooks(c),
        );
        eprintln!("the workload failures show");
        let classes = quota
            .iter()
            .chain([&unready, &pdb, &service, &job, &requests])
            .chain(&webhooks)
            .map(Class::of_workload)
            .collect();
        (classes, Some(guard))
    };
    // The webhook configuration stays until this function returns (its guard deletes it).
    let (mut classes, (workloads, _webhooks)) = tokio::join!(pod_classes, workload_classes);
    classes.extend(workloads);
    for class in &classes {
        once(st, &class.ask, &format!("warm-{}", class.name))
            .await
            .map_err(|e| format!("warm-up of {}: {e}", class.name))?;
    }
    for run in 0..args.runs {
        for class in classes.iter_mut() {
            record(st, class, run).await?;
        }
        eprintln!(
            "run {}/{} of the pod and workload classes done",
            run + 1,
            args.runs
        );
    }
    Ok(classes)
}

/// Times every class asked for into `classes`; on an error, what was timed stays there.
async fn bench(st: &Stack, args: &Args, classes: &mut Vec<Class>) -> Result<(), String> {
    classes.extend(steady_classes(st, args).await?);
    // The pod held by a finalizer goes, so the namespace holds no terminating pod from here on.
    if let Some(held) = scenarios().iter().find(|s| s.delete_when_running) {
        st.release(held).await;
    }
    if args.groups.iter().any(|g| g == "workload") {
        // A NoSchedule taint keeps new pods off the node: timed alone.
        eprintln!("tainting the node for the DaemonSet class");
        let (case, taint) = workloads::daemonset_kept_off_by_taint(st.cluster).await;
        let mut class = Class::of_workload(&case);
        let timed = time_class(st, &mut class, args.runs).await;
        drop(taint);
        timed?;
        classes.push(class);
    }
    if args.groups.iter().any(|g| g == "node") {
        nodes::run(st, args.runs, args.kill_runtime, args.kill_kubelet, classes).await?;
    }
    Ok(())
}

fn report(classes: &[Class], args: &Args, took: Duration) -> Result<(), String> {
    println!(
        "\n{:<17} {:<29} {:<12} {:>4} {:>8} {:>8} {:>8} {:>10}",
        "class", "reason", "via", "runs", "p50 ms", "p99 ms", "max ms", "steps p50"
    );
    let mut rows = Vec::new();
    let (mut over, mut wrong_classes) = (Vec::new(), Vec::new());
    for c in classes {
        let mut sorted = c.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        let mut step_sorted = c.steps.clone();
        step_sorted.sort_by(f64::total_cmp);
        let steps_p50 = percentile(&step_sorted, 50.0);
        let wrong: Vec<&String> = c
            .seen
            .iter()
            .filter(|r| !c.reasons.contains(&r.as_str()))
            .collect();
        println!(
            "{:<17} {:<29} {:<12} {:>4} {:>8.0} {:>8.0} {:>8.0} {:>10}{}",
            c.name,
            c.seen.first().map(String::as_str).unwrap_or("?"),
            c.via.label(),
            sorted.len(),
            p50,
            p99,
            max,
            if c.steps.is_empty() {
                "-".to_owned()
            } else {
                format!("{steps_p50:.0}")
            },
            if wrong.is_empty() {
                String::new()
            } else {
                format!("  (expected {:?}, got {wrong:?})", c.reasons)
            }
        );
        if p99 > TARGET_MS {
            over.push(c.name.as_str());
            // Where the time of an answer over the target went.
            let steps: Vec<String> = c
                .slowest_steps
                .iter()
                .map(|s| format!("{} {} ms", s["processor"].as_str().unwrap_or("?"), s["ms"]))
                .collect();
            if !steps.is_empty() {
                println!("{:<17} slowest answer's steps: {}", "", steps.join(", "));
            }
        }
        if !wrong.is_empty() {
            wrong_classes.push(c.name.as_str());
        }
        rows.push(json!({
            "class": c.name,
            "reason": c.seen.first(),
            "reasons": c.seen,
            "expectedReasons": c.reasons,
            "expected": wrong.is_empty(),
            "via": c.via.label(),
            "samplesMs": c.samples,
            "p50Ms": p50,
            "p99Ms": p99,
            "maxMs": max,
            "stepsMs": c.steps,
            "stepsP50Ms": if c.steps.is_empty() { Value::Null } else { json!(steps_p50) },
            "slowestSteps": c.slowest_steps,
        }));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = json!({
        "benchmark": "kubectl diag run (--pod/--node --wait, or a workload -o json), to the answer, per triage class",
        "runsPerClass": args.runs,
        "targetMs": TARGET_MS,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadAverageAtEnd": load.trim(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "tookSeconds": took.as_secs(),
        "classes": rows,
    });
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&result).unwrap_or_default(),
    )
    .map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!(
        "\n{} run(s) per class in {} s; results in {}; {}; {}",
        args.runs,
        took.as_secs(),
        args.out.display(),
        if over.is_empty() {
            "every class under the 5 s target".to_owned()
        } else {
            format!("over the 5 s target: {}", over.join(", "))
        },
        if wrong_classes.is_empty() {
            "every answer had an expected reason".to_owned()
        } else {
            format!("UNEXPECTED reasons: {}", wrong_classes.join(", "))
        }
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: bench_triage [--runs N] [--only pod,workload,node] [--no-kill-runtime] [--no-kill-kubelet] OUT.json\n  (N ≥ 1, default 5; needs root and `make setup`)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    kdiag_testenv::install_crypto_provider();
    let begin = Instant::now();
    eprintln!("starting a single-node cluster and kdiag (about 20 s)…");
    let cluster = match kdiag_testenv::Cluster::start_with(nodes::cluster_options()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("the cluster did not start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The controller and the agent run on a thread of their own for the rest of the process;
    // the cluster stops at exit (testenv's exit handler), also after an error here.
    let cluster: &'static kdiag_testenv::Cluster = Box::leak(Box::new(cluster));
    let pod_scenarios = if args.groups.iter().any(|g| g == "pod") {
        scenarios()
    } else {
        Vec::new()
    };
    let st = Stack::start(cluster, &pod_scenarios).await;
    let mut classes = Vec::new();
    let benched = bench(&st, &args, &mut classes).await;
    if let Err(e) = &benched {
        eprintln!("stopped early: {e}\n(the classes timed until then follow)");
    }
    let reported = report(&classes, &args, begin.elapsed());
    if let Err(e) = &reported {
        eprintln!("{e}");
    }
    if benched.is_ok() && reported.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
