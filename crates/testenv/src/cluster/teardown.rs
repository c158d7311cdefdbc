//! Stopping a run completely, whether its owner stops it or a later start finds it dead.
//!
//! Order matters:
//! 1. pods are force-deleted (`--wait=false`: a pod with a finalizer never goes away) and the
//!    kubelet gets a few seconds to stop their sandboxes, so CNI tears their networks down;
//! 2. the kubelet, scheduler, controller-manager and containerd stop, by pid;
//! 3. what outlives containerd by design — shims (re-parented away, so the parent-death signal
//!    never reaches them) and containers — is killed: everything in the run's cgroup, frozen
//!    first, plus any process naming the run's containerd socket and its descendants;
//! 4. mounts under the run directory are lazily unmounted (network namespaces included);
//! 5. the bridge, pod logs, CNI cache entries and the cgroup go; then the directory;
//!    kube-proxy's iptables chains and sysctl go when the run gives up the machine's kube-proxy
//!    slot (kube_proxy.rs), or here for a dead run;
//! 6. the last run of the machine also restores what all runs shared (sysctls…).
//!
//! Every step is idempotent and only touches what the run record names, so running it twice,
//! or on a half-started run, is safe.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::layout::RunRecord;
use super::{RUN_KIND, cgroups, host, kube_proxy, mounts};
use crate::binaries::NodeBinaries;
use crate::process::ManagedProcess;
use crate::rundir;

/// How long the kubelet may take to stop the pods' sandboxes before they are killed.
const POD_STOP_GRACE: Duration = Duration::from_secs(8);
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_ORDER: [&str; 5] = [
    "kube-proxy",
    "kubelet",
    "kube-scheduler",
    "kube-controller-manager",
    "containerd",
];

/// What only the owner of a live run has.
pub(crate) struct Live<'a> {
    pub kubeconfig: &'a Path,
    /// The run's node processes, in start order.
    pub processes: &'a mut Vec<ManagedProcess>,
}

/// Stops the run and removes everything it made. Returns what could not be removed.
pub(crate) fn stop(run: &RunRecord, live: Option<Live<'_>>) -> Vec<String> {
    let mut problems = Vec::new();
    // Read first: they name the run's entries outside its directory, and the kubelet removes
    // pod directories as it stops pods.
    let pod_uids = run.pod_uids();
    let sandbox_ids = run.sandbox_ids();
    let shim_sockets = run.shim_sockets();
    match live {
        Some(live) => {
            let kubelet_running = live
                .processes
                .iter_mut()
                .any(|p| p.name == "kubelet" && p.is_running());
            if kubelet_running {
                delete_pods_and_wait(run, live.kubeconfig);
            }
            // The kubelet first, so it restarts nothing; containerd last.
            live.processes
                .sort_by_key(|p| STOP_ORDER.iter().position(|n| *n == p.name));
            for mut p in live.processes.drain(..) {
                p.stop(Duration::from_secs(5));
            }
        }
        None => {
            kill_recorded(run);
            // A dead run's kube-proxy rules; a live run releases its claim after this stop.
            if run.kube_proxy {
                problems.extend(kube_proxy::cleanup_unheld());
            }
        }
    }

    let socket = run.containerd_socket().to_string_lossy().into_owned();
    let left = kill_run_processes(run, &socket);
    if !left.is_empty() {
        problems.push(format!("processes still alive: {left:?}"));
    }

    // Sandboxes started since the first look, and their shims.
    let pod_uids: BTreeSet<String> = pod_uids.into_iter().chain(run.pod_uids()).collect();
    let sandbox_ids: BTreeSet<String> = sandbox_ids.into_iter().chain(run.sandbox_ids()).collect();
    for socket in shim_sockets.into_iter().chain(run.shim_sockets()) {
        let _ = std::fs::remove_file(socket);
    }

    let mounts_left = mounts::unmount_all(&run.dir);
    problems.extend(host::delete_link(&NodeBinaries::locate().ip, &run.bridge()));
    problems.extend(host::remove_pod_logs(&pod_uids));
    let live_pod_uids: BTreeSet<String> = rundir::live(RUN_KIND)
        .iter()
        .filter(|d| **d != run.dir)
        .filter_map(|d| RunRecord::read(d))
        .flat_map(|r| r.pod_uids())
        .collect();
    problems.extend(host::remove_orphaned_pod_logs(&live_pod_uids));
    host::remove_cni_cache(&run.cni_network(), &sandbox_ids);
    problems.extend(cgroups::remove(&run.cgroup()));

    remove_unless_mounted(&run.dir, mounts_left, &mut problems);

    let others_live = rundir::live(RUN_KIND).into_iter().any(|d| d != run.dir);
    if !others_live {
        problems.extend(host::restore_shared_state());
    }
    problems
}

/// Force-deletes every pod and gives the kubelet a moment to stop their sandboxes, which runs
/// CNI DEL and removes their network namespaces.
fn delete_pods_and_wait(run: &RunRecord, kubeconfig: &Path) {
    let deleted = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(run.dir.join("kubectl-cache"))
        .args([
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--force",
            "--grace-period=0",
            "--wait=false",
            "--request-timeout=5s",
        ])
        .output();
    if !deleted.is_ok_and(|o| o.status.success()) {
        return;
    }
    let deadline = Instant::now() + POD_STOP_GRACE;
    while Instant::now() < deadline {
        let sandboxes_with_network = std::fs::read_dir(run.netns_dir())
            .map(|d| d.count())
            .unwrap_or(0);
        if sandboxes_with_network == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL to the recorded processes of a dead run that are somehow still alive (the
/// parent-death signal normally took them). A pid is only killed if its start time matches.
fn kill_recorded(run: &RunRecord) {
    for p in &run.processes {
        let same = rundir::process_start_time(p.pid as u32).is_some_and(|t| t == p.start_time);
        if same {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
    }
}

/// Kills the shims, the containers and anything else of the run; returns the pids still alive
/// at the deadline.
fn kill_run_processes(run: &RunRecord, socket: &str) -> Vec<i32> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        // The cgroup holds containerd's children (the shims) and every container; the socket
        // argument finds a shim that escaped it (containerd not yet moved into the cgroup).
        let by_arg = host::processes_with_arg_and_descendants(socket);
        for pid in &by_arg {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let in_cgroup = cgroups::kill_all(&run.cgroup(), Duration::from_secs(2));
        let left: Vec<i32> = by_arg
            .into_iter()
            .chain(in_cgroup)
            .filter(|p| host::alive(*p))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finishes the runs whose owner died: reads each cluster record and stops what it names, and
/// removes dead control planes' directories. Runs under a lock so two starts do not clean the
/// same run at once.
pub(crate) fn cleanup_stale() -> Vec<String> {
    let base = rundir::base();
    if std::fs::create_dir_all(&base).is_err() {
        return Vec::new();
    }
    let lock_path = base.join(format!("{RUN_KIND}.lock"));
    let Ok(file) = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    else {
        return vec![format!("cannot open {}", lock_path.display())];
    };
    let _lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive);
    let mut problems = Vec::new();
    // The control planes of dead runs: their processes died with their owner (parent-death
    // signal); only the directory is left.
    for dir in rundir::stale(crate::control_plane::RUN_KIND) {
        let mounts_left = mounts::unmount_all(&dir);
        remove_unless_mounted(&dir, mounts_left, &mut problems);
    }
    for dir in rundir::stale(RUN_KIND) {
        match RunRecord::read(&dir) {
            Some(run) => problems.extend(stop(&run, None)),
            // Died before its record was written: nothing outside the directory exists yet.
            None => {
                let mounts_left = mounts::unmount_all(&dir);
                remove_unless_mounted(&dir, mounts_left, &mut problems);
            }
        }
    }
    problems
}

/// Removes a run directory, unless something is still mounted below it: a recursive removal
/// would descend into the mount, and a pod's subPath mount can be a bind mount of any directory
/// of this machine.
fn remove_unless_mounted(dir: &Path, mounts_left: Vec<String>, problems: &mut Vec<String>) {
    if mounts_left.is_empty() && mounts::under(dir).is_empty() {
        rundir::remove(dir);
        if dir.exists() {
            problems.push(format!("run directory {} remains", dir.display()));
        }
    } else {
        problems.extend(mounts_left);
        problems.push(format!(
            "run directory {} kept: mounts are left below it",
            dir.display()
        ));
    }
}
