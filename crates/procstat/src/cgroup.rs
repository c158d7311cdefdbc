//! Which pod and container a cgroup path belongs to.
//!
//! The kubelet puts every pod in a cgroup named after its UID, and the runtime puts each
//! container in a child named after its ID. The names differ by cgroup driver and runtime:
//!
//! - cgroupfs driver: `<root>/kubepods[/burstable|/besteffort]/pod<uid>/<container id>`, where
//!   `<root>` may be a prefix such as `/kdiag-<id>` (the kubelet's `cgroupRoot`);
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _
//!   for ->.slice/cri-containerd-<id>.scope` (containerd), `crio-<id>.scope` (CRI-O),
//!   `docker-<id>.scope` (dockershim);
//! - CRI-O's monitor: `crio-conmon-<id>.scope` (systemd) or `crio-conmon-<id>` (cgroupfs), in the
//!   pod's cgroup: it belongs to the pod but is not the container.
//!
//! The same parser reads /proc/<pid>/cgroup lines and the kernel's OOM report (`task_memcg=`).

use serde::Serialize;

/// Where a cgroup path places a process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodCgroup {
    /// The pod's UID, with dashes.
    pub pod_uid: String,
    /// The container's ID (64 hex digits), when the path goes below the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// True for CRI-O's `conmon`, which lives in the pod's cgroup next to the container.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
}

/// Parses one cgroup path (`/kubepods/burstable/pod<uid>/<cid>` and the other shapes above).
/// `None` when the path is not below a pod.
pub fn parse_path(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // Only paths under a kubepods cgroup: a user's own cgroup named pod<something> is not a pod.
    let kubepods = parts.iter().position(|p| p.starts_with("kubepods"))?;
    for (i, part) in parts.iter().enumerate().skip(kubepods) {
        let Some(uid) = pod_uid_of(part) else {
            continue;
        };
        let mut out = PodCgroup {
            pod_uid: uid,
            ..Default::default()
        };
        if let Some(next) = parts.get(i + 1) {
            let (id, monitor) = container_id_of(next);
            out.container_id = id;
            out.monitor = monitor;
        }
        return Some(out);
    }
    None
}

/// Parses the content of /proc/<pid>/cgroup (`hierarchy:controllers:path` lines; cgroup v2 has
/// one `0::path` line). The first line that places the process in a pod wins; every hierarchy
/// places a pod's process in the same pod.
pub fn parse_proc_cgroup(content: &str) -> Option<PodCgroup> {
    let mut best: Option<PodCgroup> = None;
    for line in content.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        if let Some(found) = parse_path(path) {
            // Prefer a line that names the container as well (some hierarchies, such as
            // name=systemd under the cgroupfs driver, may stop at the pod).
            if found.container_id.is_some() {
                return Some(found);
            }
            best.get_or_insert(found);
        }
    }
    best
}

/// Reads `<proc_root>/<pid>/cgroup`: the pod the process runs in, `None` when it is not in a
/// pod (or is gone).
pub fn of_process(proc_root: &std::path::Path, pid: i32) -> Option<PodCgroup> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let idx = name.rfind("pod")?;
    // cgroupfs: the whole component is pod<uid>; systemd: the component ends with -pod<uid>.
    if idx != 0 && !name[..idx].ends_with('-') {
        return None;
    }
    let uid = name[idx + 3..].replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// `<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`,
/// `crio-conmon-<id>[.scope]`. Returns (id, is the monitor).
fn container_id_of(part: &str) -> (Option<String>, bool) {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (name, monitor) = match name.strip_prefix("crio-conmon-") {
        Some(rest) => (rest, true),
        None => (name, false),
    };
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (is_container_id(id).then(|| id.to_owned()), monitor)
}

/// A Kubernetes UID: 8-4-4-4-12 hex digits.
pub fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A container ID as containerd, CRI-O and Docker make them: 64 lowercase hex digits.
pub fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "b4844e73-81ff-44d7-80a7-e9cdb9451dbb";
    const CID: &str = "8c615157bcdf17f16e3c4c1a0e27634b90608c9e64ab3a145205ad2a3908e9fd";

    #[test]
    fn a_cgroupfs_path_names_the_pod_and_the_container() {
        let p = parse_path(&format!("/kubepods/burstable/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        assert!(!p.monitor);
    }

    #[test]
    fn a_guaranteed_pod_has_no_qos_level_in_its_path() {
        let p = parse_path(&format!("/kubepods/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.pod_uid, UID);
    }

    #[test]
    fn a_prefixed_cgroup_root_such_as_the_test_clusters_is_understood() {
        let p = parse_path(&format!("/kdiag-0ea24c/kubepods/besteffort/pod{UID}/{CID}")).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn a_systemd_slice_path_names_the_pod_with_underscores_turned_to_dashes() {
        let under = UID.replace('-', "_");
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{under}.slice/cri-containerd-{CID}.scope"
        );
        let p = parse_path(&path).unwrap();
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn cri_o_scopes_and_its_conmon_monitor_are_told_apart() {
        let under = UID.replace('-', "_");
        let base = format!("/kubepods.slice/kubepods-pod{under}.slice");
        let c = parse_path(&format!("{base}/crio-{CID}.scope")).unwrap();
        assert_eq!(c.container_id.as_deref(), Some(CID));
        assert!(!c.monitor);
        let m = parse_path(&format!("{base}/crio-conmon-{CID}.scope")).unwrap();
        assert_eq!(m.container_id.as_deref(), Some(CID));
        assert!(m.monitor);
    }

    #[test]
    fn a_pod_level_path_has_no_container() {
        let p = parse_path(&format!("/kubepods/burstable/pod{UID}")).unwrap();
        assert_eq!(p.container_id, None);
    }

    #[test]
    fn paths_outside_kubepods_belong_to_no_pod() {
        assert_eq!(parse_path("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(parse_path(&format!("/pod{UID}/{CID}")), None);
        assert_eq!(parse_path("/kubepods/burstable"), None);
        assert_eq!(parse_path("/"), None);
    }

    #[test]
    fn a_proc_cgroup_file_prefers_the_line_that_names_the_container() {
        let content = format!(
            "12:name=systemd:/kubepods/burstable/pod{UID}\n\
             4:memory:/kubepods/burstable/pod{UID}/{CID}\n\
             1:cpu:/\n"
        );
        let p = parse_proc_cgroup(&content).unwrap();
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn a_cgroup_v2_file_has_one_line() {
        let under = UID.replace('-', "_");
        let content = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{under}.slice/cri-containerd-{CID}.scope\n"
        );
        assert_eq!(parse_proc_cgroup(&content).unwrap().pod_uid, UID);
        assert_eq!(parse_proc_cgroup("0::/init.scope\n"), None);
    }
}
