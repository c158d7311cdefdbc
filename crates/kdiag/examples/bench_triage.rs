//! Benchmark of the pod triage: for each failure class, the time from `kubectl diag run --pod
//! NS/POD --wait` to its answer (the process's whole run: admission, routing, the four triage
//! collectors and pod-triage-diagnoser on the node's agent, the CLI following it to the end),
//! on a real single-node cluster where each failure really happens. Prints a table and writes
//! the samples and percentiles as JSON. `steps` is the time the Abnormal's steps (collectors and
//! diagnoser on the agent) took in all, from their records; the rest is the CLI's process,
//! admission, routing and status writes.
//!
//! ```sh
//! cargo build --release --bin kdiag --example bench_triage
//! target/release/examples/bench_triage --runs 10 bench-triage.json   # needs root, like make run
//! ```
//!
//! A pod no node takes cannot be routed by `kubectl diag run --pod` (the controller waits for a
//! node to run the diagnosis on); that class is timed from creating an Abnormal that names the
//! pod and a node to its end, and marked as such.

#[path = "../tests/triage_support/mod.rs"]
mod triage_support;

use std::time::{Duration, Instant};

use serde_json::json;
use triage_support::{Scenario, Stack, scenarios};

struct Args {
    runs: usize,
    out: std::path::PathBuf,
}

fn args() -> Result<Args, String> {
    let mut runs = 5;
    let mut out = None;
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
            "-h" | "--help" => return Err(String::new()),
            p if out.is_none() && !p.starts_with('-') => out = Some(p.into()),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(Args {
        runs,
        out: out.ok_or("give the path to write the JSON results to")?,
    })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// One timed diagnosis: milliseconds, the reason found, and the milliseconds its steps (the
/// collectors and the diagnoser on the agent) took in all.
async fn once(
    st: &Stack,
    s: &Scenario,
    pod: &str,
    name: &str,
) -> Result<(f64, String, f64), String> {
    let begin = Instant::now();
    let abnormal = if s.via_cli {
        let ran = st.kubectl_diag_run(pod, name).await;
        if ran.code != 0 {
            return Err(format!("kubectl diag run --pod {pod}: {ran}"));
        }
        let ms = begin.elapsed().as_secs_f64() * 1000.0;
        (ms, st.abnormal(name).await)
    } else {
        st.create_triage_abnormal(pod, name).await;
        let a = st.wait_final(name, Duration::from_secs(60)).await;
        (begin.elapsed().as_secs_f64() * 1000.0, a)
    };
    let (ms, a) = abnormal;
    let status = a.status.unwrap_or_default();
    let steps: i64 = status
        .processors
        .iter()
        .filter_map(|p| p.duration_milliseconds)
        .sum();
    let reason = status.root_cause.map(|r| r.reason).unwrap_or_default();
    Ok((ms, reason, steps as f64))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: bench_triage [--runs N] OUT.json   (N ≥ 1, default 5; needs root and `make setup`)"
            );
            return std::process::ExitCode::from(2);
        }
    };
    kdiag_testenv::install_crypto_provider();
    eprintln!("starting a single-node cluster and kdiag (about 20 s)…");
    let cluster = kdiag_testenv::cluster().await;
    let all = scenarios();
    let st = Stack::start(cluster, &all).await;
    let mut pods = Vec::new();
    for s in &all {
        eprintln!("waiting for {} to fail…", s.name);
        pods.push(st.wait_for_failure(s).await);
    }
    // One untimed run per class: first connections, the agent's first /proc scan.
    for (s, pod) in all.iter().zip(&pods) {
        if let Err(e) = once(&st, s, pod, &format!("warm-{}", s.name)).await {
            eprintln!("warm-up of {}: {e}", s.name);
            return std::process::ExitCode::FAILURE;
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); all.len()];
    let mut steps: Vec<Vec<f64>> = vec![Vec::new(); all.len()];
    // Classes interleaved run by run, so background load falls on all of them alike.
    for run in 0..args.runs {
        for (i, (s, pod)) in all.iter().zip(&pods).enumerate() {
            match once(&st, s, pod, &format!("bench-{}-{run}", s.name)).await {
                Ok((ms, reason, step_ms)) => {
                    samples[i].push(ms);
                    reasons[i].push(reason);
                    steps[i].push(step_ms);
                }
                Err(e) => {
                    eprintln!("run {run} of {}: {e}", s.name);
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        eprintln!("run {}/{} done", run + 1, args.runs);
    }
    if let Some(held) = all.iter().find(|s| s.delete_when_running) {
        st.release(held).await;
    }

    let mut rows = Vec::new();
    println!(
        "\n{:<13} {:<29} {:<9} {:>4} {:>8} {:>8} {:>8} {:>10}",
        "class", "reason", "via", "runs", "p50 ms", "p99 ms", "max ms", "steps p50"
    );
    let mut over = Vec::new();
    for (i, s) in all.iter().enumerate() {
        let mut sorted = samples[i].clone();
        sorted.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        let mut step_sorted = steps[i].clone();
        step_sorted.sort_by(f64::total_cmp);
        let steps_p50 = percentile(&step_sorted, 50.0);
        let wrong: Vec<&String> = reasons[i]
            .iter()
            .filter(|r| !s.reasons.contains(&r.as_str()))
            .collect();
        let via = if s.via_cli { "cli" } else { "abnormal" };
        println!(
            "{:<13} {:<29} {:<9} {:>4} {:>8.0} {:>8.0} {:>8.0} {:>10.0}{}",
            s.name,
            reasons[i].first().map(String::as_str).unwrap_or("?"),
            via,
            sorted.len(),
            p50,
            p99,
            max,
            steps_p50,
            if wrong.is_empty() {
                String::new()
            } else {
                format!("  (unexpected reasons: {wrong:?})")
            }
        );
        if p99 > 5000.0 {
            over.push(s.name);
        }
        rows.push(json!({
            "class": s.name,
            "reason": reasons[i].first(),
            "expectedReasons": s.reasons,
            "via": via,
            "samplesMs": samples[i],
            "p50Ms": p50,
            "p99Ms": p99,
            "maxMs": max,
            "stepsMs": steps[i],
            "stepsP50Ms": steps_p50,
        }));
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = json!({
        "benchmark": "kubectl diag run --pod NS/POD --wait, to the answer",
        "runsPerClass": args.runs,
        "targetMs": 5000,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadAverageAtEnd": load.trim(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
        "classes": rows,
    });
    if let Err(e) = std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&result).unwrap_or_default(),
    ) {
        eprintln!("writing {}: {e}", args.out.display());
        return std::process::ExitCode::FAILURE;
    }
    println!(
        "\n{} run(s) per class; results in {}; {}",
        args.runs,
        args.out.display(),
        if over.is_empty() {
            "every class under the 5 s target".to_owned()
        } else {
            format!("over the 5 s target: {}", over.join(", "))
        }
    );
    std::process::ExitCode::SUCCESS
}
