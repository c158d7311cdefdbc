//! The run's own cgroup, `/<name>` in every cgroup v1 hierarchy.
//!
//! The kubelet gets it as `cgroupRoot` (pods go to `/<name>/kubepods/...`) and containerd is
//! moved into `/<name>/runtime`, so the shims it starts are there too. Everything the run
//! starts besides our own direct children therefore sits under one cgroup that belongs to no
//! one else: stopping the run freezes it, kills what is inside and removes it, and two runs
//! never touch each other's pods (each kubelet garbage-collects pod cgroups it does not know
//! only below its own root).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::TestEnvError;

/// A mounted cgroup hierarchy (v1, or the v2 one of a hybrid machine).
#[derive(Clone, Debug)]
pub(crate) struct Hierarchy {
    pub mount_point: PathBuf,
    pub options: String,
}

impl Hierarchy {
    fn has(&self, controller: &str) -> bool {
        self.options.split(',').any(|o| o == controller)
    }
}

/// The cgroup hierarchies of this machine, from /proc/self/mountinfo.
pub(crate) fn hierarchies() -> Vec<Hierarchy> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mut r = right.split_whitespace();
            // A hybrid machine also mounts the v2 hierarchy (at /sys/fs/cgroup/unified), where
            // runc creates the containers' cgroups too.
            if !matches!(r.next()?, "cgroup" | "cgroup2") {
                return None;
            }
            let _source = r.next()?;
            let options = r.next()?.to_owned();
            let mount_point = super::mounts::unescape(left.split_whitespace().nth(4)?);
            Some(Hierarchy {
                mount_point: PathBuf::from(mount_point),
                options,
            })
        })
        .collect()
}

/// Fails unless this machine has cgroup v1 with the controllers the kubelet needs.
pub(crate) fn require_v1() -> Result<(), TestEnvError> {
    let all = hierarchies();
    for controller in ["memory", "cpu", "pids", "freezer"] {
        if !all.iter().any(|h| h.has(controller)) {
            return Err(TestEnvError::UnsupportedHost {
                reason: format!("no cgroup v1 hierarchy with the {controller} controller"),
            });
        }
    }
    Ok(())
}

/// Creates `/<path>` (relative, e.g. `kdiag-ab12cd/runtime`) in every hierarchy.
pub(crate) fn create(path: &str) -> Result<(), TestEnvError> {
    for h in hierarchies() {
        let mut dir = h.mount_point.clone();
        for part in path.split('/') {
            let parent = dir.clone();
            dir.push(part);
            if dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&dir).map_err(TestEnvError::io(&dir))?;
            // A new cpuset cgroup starts with no CPUs and no memory nodes, and a process cannot
            // join it until both are set: inherit the parent's.
            if h.has("cpuset") {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(file))
                        .map_err(TestEnvError::io(parent.join(file)))?;
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(TestEnvError::io(dir.join(file)))?;
                }
            }
        }
    }
    Ok(())
}

/// Moves a process into `/<path>` of every hierarchy; its future children follow.
pub(crate) fn move_process(path: &str, pid: i32) -> Result<(), TestEnvError> {
    for h in hierarchies() {
        let procs = h.mount_point.join(path).join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(TestEnvError::io(&procs))?;
    }
    Ok(())
}

/// Every cgroup directory at and below `/<name>` in every hierarchy, deepest first.
fn tree(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for h in hierarchies() {
        let root = h.mount_point.join(name);
        if root.is_dir() {
            collect_post_order(&root, &mut out);
        }
    }
    out
}

fn collect_post_order(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_post_order(&e.path(), out);
            }
        }
    }
    out.push(dir.to_owned());
}

/// The processes in `/<name>` and below, in any hierarchy.
pub(crate) fn processes(name: &str) -> BTreeSet<i32> {
    tree(name)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Kills every process in `/<name>` and below and waits until the cgroups are empty. Freezes
/// the tree first, so nothing inside can fork while it is being killed. Returns what was still
/// there at the deadline.
pub(crate) fn kill_all(name: &str, timeout: Duration) -> BTreeSet<i32> {
    let freezer = hierarchies()
        .into_iter()
        .find(|h| h.has("freezer"))
        .map(|h| h.mount_point.join(name).join("freezer.state"))
        .filter(|p| p.exists());
    if let Some(state) = &freezer {
        let _ = std::fs::write(state, "FROZEN");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline
            && std::fs::read_to_string(state).is_ok_and(|s| s.trim() != "FROZEN")
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let deadline = Instant::now() + timeout;
    let mut thawed = freezer.is_none();
    loop {
        let left = processes(name);
        if left.is_empty() || Instant::now() >= deadline {
            if let Some(state) = freezer.as_ref().filter(|_| !thawed) {
                let _ = std::fs::write(state, "THAWED");
            }
            return left;
        }
        for pid in &left {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // A frozen task dies only once thawed; the signal is already pending.
        if !thawed && let Some(state) = &freezer {
            let _ = std::fs::write(state, "THAWED");
            thawed = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes `/<name>` and everything below it in every hierarchy. Returns the cgroups that could
/// not be removed.
pub(crate) fn remove(name: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut failed = Vec::new();
        for dir in tree(name) {
            if let Err(e) = std::fs::remove_dir(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                failed.push(format!("cgroup {}: {e}", dir.display()));
            }
        }
        // The kernel may still be releasing a cgroup whose last task just died.
        if failed.is_empty() || Instant::now() >= deadline {
            return failed;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
