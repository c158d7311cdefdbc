//! Starts a level-2 cluster by hand, for `make run`-style exploration and for timings.
//!
//! ```text
//! cargo run -p kdiag-testenv --example cluster            # start, print how to use it, wait for Ctrl-C
//! cargo run -p kdiag-testenv --example cluster -- up --env-file F   # also write KEY=value lines to F once ready
//! cargo run -p kdiag-testenv --example cluster -- measure # image build (fresh cache), cached start, stop
//! cargo run -p kdiag-testenv --example cluster -- cleanup # finish runs whose owner died
//! ```

use std::time::{Duration, Instant};

use kdiag_testenv::{Cluster, cleanup_stale_runs};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "up".into());
    if mode == "measure" {
        // A fresh image cache, so the first start really builds the images; the Kubernetes
        // binaries stay where they are.
        let bin_dir = kdiag_testenv::cache_dir().join("kubernetes-1.20.2-r1/bin");
        let fresh =
            std::env::temp_dir().join(format!("kdiag-measure-cache-{}", std::process::id()));
        // SAFETY: no other thread exists yet.
        unsafe {
            if std::env::var_os("KDIAG_K8S_BIN_DIR").is_none() {
                std::env::set_var("KDIAG_K8S_BIN_DIR", bin_dir);
            }
            std::env::set_var("KDIAG_CACHE_DIR", &fresh);
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let code = rt.block_on(async move {
        match mode.as_str() {
            "up" => up(env_file_arg()).await,
            "measure" => measure().await,
            "cleanup" => {
                let problems = cleanup_stale_runs();
                for p in &problems {
                    eprintln!("{p}");
                }
                i32::from(!problems.is_empty())
            }
            other => {
                eprintln!("unknown mode {other:?}: use up, measure or cleanup");
                2
            }
        }
    });
    std::process::exit(code);
}

async fn start() -> Option<Cluster> {
    match Cluster::start().await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("could not start the cluster: {e}");
            None
        }
    }
}

fn env_file_arg() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--env-file")
        .and_then(|i| args.get(i + 1))
        .map(Into::into)
}

fn print_phases(cluster: &Cluster) {
    for (phase, took) in cluster.start_phases() {
        println!("  {phase:<32} {:>8.3}s", took.as_secs_f64());
    }
}

/// What a script needs to use the cluster, as `KEY=value` lines (sourceable by sh).
fn env_lines(cluster: &Cluster) -> String {
    format!(
        "KUBECONFIG={}\nKDIAG_NODE_NAME={}\nKDIAG_CRI_ENDPOINT={}\nKDIAG_KUBELET_ROOT={}\nKDIAG_CGROUP_ROOT={}\nKDIAG_RUN_DIR={}\nKDIAG_BUSYBOX_IMAGE={}\n",
        cluster.kubeconfig_path().display(),
        cluster.node_name(),
        cluster.cri_endpoint(),
        cluster.kubelet_root_dir().display(),
        cluster.cgroup_root(),
        cluster.run_dir().display(),
        kdiag_testenv::BUSYBOX_IMAGE,
    )
}

fn timed_stop(cluster: Cluster) -> (Duration, bool) {
    let t = Instant::now();
    let result = cluster.stop();
    if let Err(e) = &result {
        eprintln!("{e}");
    }
    (t.elapsed(), result.is_ok())
}

async fn up(env_file: Option<std::path::PathBuf>) -> i32 {
    let Some(cluster) = start().await else {
        return 1;
    };
    if let Some(f) = &env_file {
        // Written aside and renamed, so a script polling for the file never reads half of it.
        let tmp = f.with_extension("tmp");
        if let Err(e) =
            std::fs::write(&tmp, env_lines(&cluster)).and_then(|()| std::fs::rename(&tmp, f))
        {
            eprintln!("could not write {}: {e}", f.display());
            return i32::from(cluster.stop().is_err()) + 1;
        }
    }
    println!("cluster ready:");
    print_phases(&cluster);
    println!(
        "\nexport KUBECONFIG={}\nnode:          {}\nCRI socket:    {}\nkubelet root:  {}\ncgroup root:   {}\nbridge/subnet: {} {}\nrun dir:       {}\nimages:        {}\n\nCtrl-C stops it and removes everything.",
        cluster.kubeconfig_path().display(),
        cluster.node_name(),
        cluster.cri_socket().display(),
        cluster.kubelet_root_dir().display(),
        cluster.cgroup_root(),
        cluster.bridge(),
        cluster.pod_subnet(),
        cluster.run_dir().display(),
        cluster.images().join(" "),
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping…");
    if let Some(f) = &env_file {
        let _ = std::fs::remove_file(f);
    }
    let (took, ok) = timed_stop(cluster);
    println!("stopped in {:.1}s", took.as_secs_f64());
    i32::from(!ok)
}

async fn measure() -> i32 {
    let cache = kdiag_testenv::cache_dir();
    let mut ok = true;
    for round in [
        "first start (images built into an empty cache)",
        "cached start",
    ] {
        let t = Instant::now();
        let Some(cluster) = start().await else {
            return 1;
        };
        println!("{round}: {:.1}s", t.elapsed().as_secs_f64());
        print_phases(&cluster);
        let (took, stopped) = timed_stop(cluster);
        ok &= stopped;
        println!("stop: {:.1}s\n", took.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(cache);
    i32::from(!ok)
}
