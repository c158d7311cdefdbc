//! Same-run comparisons for issue 5's benchmark targets:
//!
//! - process-collector's /proc scan (with the JSON it writes) over ≥ 1,000 live processes,
//!   against `ps -eo pid,ppid,stat,rss,vsz,args`;
//! - pod-disk-usage's directory walk over a tree of ≥ 100,000 files, against `du -sb`.
//!
//! Each pair runs alternately, several times after a warm-up (page cache hot for both sides), so
//! load from other work on the machine falls on both alike; the table shows the medians and
//! their ratio (kdiag / reference: below 1 means kdiag is faster).
//!
//! Usage: cargo run --release -p kdiag-collectors --example bench_collectors -- [out.json]
//!        [--processes N] [--files N] [--runs N] [--walk-threads N]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kdiag_collectors::budget::Deadline;
use kdiag_collectors::du::{self, WalkRoot};
use kdiag_collectors::process::scan;
use serde_json::json;

struct Args {
    out: Option<PathBuf>,
    processes: usize,
    files: usize,
    runs: usize,
    walk_threads: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        out: None,
        processes: 1000,
        files: 100_000,
        runs: 11,
        walk_threads: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--processes" => a.processes = num("--processes"),
            "--files" => a.files = num("--files"),
            "--runs" => a.runs = num("--runs").max(1),
            "--walk-threads" => a.walk_threads = Some(num("--walk-threads").max(1)),
            other => a.out = Some(other.into()),
        }
    }
    a
}

/// Kills the sleepers however the benchmark ends.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `a` and `b` alternately, `runs` times each after one warm-up of each, so load from
/// other work on the machine falls on both alike. Returns both medians and their last results.
fn race<A, B>(
    runs: usize,
    mut a: impl FnMut() -> A,
    mut b: impl FnMut() -> B,
) -> ((Duration, A), (Duration, B)) {
    let (mut last_a, mut last_b) = (a(), b());
    let (mut ta, mut tb) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let start = Instant::now();
        last_a = a();
        ta.push(start.elapsed());
        let start = Instant::now();
        last_b = b();
        tb.push(start.elapsed());
    }
    ((median(ta), last_a), (median(tb), last_b))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn make_tree(root: &Path, files: usize) -> u64 {
    const PER_DIR: usize = 100;
    let mut bytes = 0;
    for i in 0..files {
        let dir = root.join(format!("d{:03}/e{:03}", i / PER_DIR / 50, i / PER_DIR % 50));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&dir).expect("create a directory of the tree");
        }
        let size = 64 + (i * 37) % 4000;
        std::fs::write(dir.join(format!("f{i}")), vec![b'x'; size]).expect("write a file");
        bytes += size as u64;
    }
    bytes
}

fn main() {
    let a = args();
    let threads_scan = scan::default_threads();
    let threads_walk = a.walk_threads.unwrap_or_else(du::default_threads);

    // 1. Processes.
    eprintln!("spawning {} sleepers…", a.processes);
    let sleepers = Sleepers(
        (0..a.processes)
            .map(|_| {
                Command::new("sleep")
                    .arg("600")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn sleep")
            })
            .collect(),
    );
    let proc_root = Path::new("/proc");
    let ((kdiag_ps, (count, json_bytes)), (ref_ps, ps_lines)) = race(
        a.runs,
        || {
            let snap = scan::scan(proc_root, Deadline::never(), threads_scan).expect("scan /proc");
            let json = serde_json::to_vec(&snap.processes).expect("serialize");
            (snap.processes.len(), json.len())
        },
        || {
            let out = Command::new("ps")
                .args(["-eo", "pid,ppid,stat,rss,vsz,args"])
                .output()
                .expect("run ps");
            out.stdout
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                .saturating_sub(1)
        },
    );
    drop(sleepers);

    // 2. A directory tree.
    let dir = tempfile::tempdir().expect("a temporary directory");
    eprintln!("writing {} files under {}…", a.files, dir.path().display());
    let data = make_tree(dir.path(), a.files);
    let roots = [WalkRoot::new(dir.path())];
    let ((kdiag_du, usage), (ref_du, du_bytes)) = race(
        a.runs,
        || {
            du::walk(&roots, threads_walk, Deadline::never())
                .pop()
                .expect("one root")
        },
        || {
            let out = Command::new("du")
                .arg("-sb")
                .arg(dir.path())
                .output()
                .expect("run du");
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        },
    );
    assert_eq!(
        usage.apparent_bytes, du_bytes,
        "the walk and du -sb disagree on the tree's size"
    );

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "kdiag collectors benchmark: {cpus} CPUs, median of {} alternating runs after a warm-up",
        a.runs
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "case", "kdiag ms", "reference ms", "ratio"
    );
    let rows = [
        (
            format!("process scan, {count} processes (ps: {ps_lines})"),
            "ps -eo pid,ppid,stat,rss,vsz,args",
            kdiag_ps,
            ref_ps,
        ),
        (
            format!("directory walk, {} files", usage.files),
            "du -sb",
            kdiag_du,
            ref_du,
        ),
    ];
    for (case, _, k, r) in &rows {
        println!(
            "{case:<44} {:>12.1} {:>12.1} {:>8.2}",
            ms(*k),
            ms(*r),
            ms(*k) / ms(*r)
        );
    }
    let report = json!({
        "cpus": cpus,
        "runs": a.runs,
        "processScan": {
            "processes": count,
            "psLines": ps_lines,
            "threads": threads_scan,
            "jsonBytes": json_bytes,
            "kdiagMs": ms(kdiag_ps),
            "referenceMs": ms(ref_ps),
            "reference": rows[0].1,
            "ratio": ms(kdiag_ps) / ms(ref_ps),
        },
        "directoryWalk": {
            "files": usage.files,
            "dirs": usage.dirs,
            "dataBytes": data,
            "apparentBytes": usage.apparent_bytes,
            "threads": threads_walk,
            "kdiagMs": ms(kdiag_du),
            "referenceMs": ms(ref_du),
            "reference": rows[1].1,
            "ratio": ms(kdiag_du) / ms(ref_du),
        },
    });
    if let Some(out) = a.out {
        std::fs::write(&out, serde_json::to_vec_pretty(&report).expect("json"))
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
        eprintln!("wrote {}", out.display());
    }
}
