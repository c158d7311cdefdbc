//! A pod's process limit: the `pids` cgroup the kubelet puts every pod in (`pids.max` is its
//! `--pod-max-pids`, `podPidsLimit`), and how much of it is in use (`pids.current`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One pod's pids cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodPids {
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// The pod's cgroup in the pids hierarchy.
    pub cgroup: String,
    /// Tasks (processes and threads) in it now.
    pub current: u64,
    /// Its limit; None for `max` (no limit).
    pub max: Option<u64>,
}

/// The pids cgroup of the pod that process `pid` runs in, read under `sys_root`; None when the
/// process is in no pod or the files cannot be read (cgroup v1 only: v2 has the files in the
/// unified hierarchy, read the same way).
pub fn of_process(proc_root: &Path, sys_root: &Path, pid: i32) -> Option<PodPids> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let (cgroup, uid, v2) = pod_cgroup(&text)?;
    let base = if v2 {
        sys_root.join("fs/cgroup")
    } else {
        sys_root.join("fs/cgroup/pids")
    };
    let dir = base.join(cgroup.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let current = read("pids.current")?.trim().parse().ok()?;
    let max = read("pids.max")?.trim().parse().ok();
    Some(PodPids {
        pod_uid: uid,
        cgroup,
        current,
        max,
    })
}

/// The pod-level cgroup (`…/pod<uid>`) of the pids hierarchy (or of the unified one) in a
/// /proc/<pid>/cgroup text, with the pod's UID and whether it is cgroup v2.
fn pod_cgroup(text: &str) -> Option<(String, String, bool)> {
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "pids") {
            continue;
        }
        let Some(pod) = kdiag_procstat::cgroup::parse_path(path) else {
            continue;
        };
        // Cut the path after the component that names the pod (the container's is below it).
        let mut kept = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            kept.push('/');
            kept.push_str(part);
            if kdiag_procstat::cgroup::parse_path(&kept).is_some_and(|p| p.pod_uid == pod.pod_uid) {
                return Some((kept, pod.pod_uid, v2));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_level_pids_cgroup_is_cut_from_a_containers_cgroup_line() {
        let text = "12:pids:/kdiag-abc/kubepods/besteffort/pod0b6f4bb2-2d5e-4a8e-9a4c-0d1b7a3c6f11/4f6d0c1b8a2e3d4c5b6a7980f1e2d3c4b5a6978877665544332211aabbccddee\n11:memory:/kdiag-abc/kubepods/besteffort/pod0b6f4bb2-2d5e-4a8e-9a4c-0d1b7a3c6f11/4f6d\n";
        assert_eq!(
            pod_cgroup(text),
            Some((
                "/kdiag-abc/kubepods/besteffort/pod0b6f4bb2-2d5e-4a8e-9a4c-0d1b7a3c6f11".into(),
                "0b6f4bb2-2d5e-4a8e-9a4c-0d1b7a3c6f11".into(),
                false
            ))
        );
        assert_eq!(pod_cgroup("12:pids:/user.slice\n"), None);
    }
}
