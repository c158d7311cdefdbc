//! The host's mounts (/proc/<pid>/mountinfo) and filesystem capacity (statvfs).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// `major:minor` of the filesystem.
    pub device_number: String,
    pub mount_point: String,
    pub fs_type: String,
    /// The mount source (`/dev/vda1`, `tmpfs`, `server:/export`).
    pub source: String,
}

/// Parses mountinfo: `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                device_number: l.get(2)?.to_string(),
                mount_point: unescape(l.get(4)?),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1).copied().unwrap_or("")),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host's mounts: those of pid 1 under `proc_root` (the host's init, since the agent runs
/// with hostPID), else the agent's own.
pub fn host_mounts(proc_root: &Path) -> Result<Vec<Mount>, String> {
    let host = proc_root.join("1/mountinfo");
    match std::fs::read_to_string(&host) {
        Ok(text) => Ok(parse_mountinfo(&text)),
        Err(first) => std::fs::read_to_string(proc_root.join("self/mountinfo"))
            .map(|t| parse_mountinfo(&t))
            .map_err(|e| {
                format!(
                    "reading {}: {first}; and {}/self/mountinfo: {e}",
                    host.display(),
                    proc_root.display()
                )
            }),
    }
}

/// Whether the agent runs in another mount namespace than the host's init. Unknown (pid 1's
/// namespace unreadable, as in some sandboxes) counts as the same.
pub fn in_other_mount_namespace(proc_root: &Path) -> bool {
    let ns = |p: PathBuf| std::fs::read_link(p).ok();
    let own = ns("/proc/self/ns/mnt".into());
    let host = ns(proc_root.join("1/ns/mnt"));
    matches!((own, host), (Some(a), Some(b)) if a != b)
}

/// How to reach a host path from the agent: directly when the agent shares the host's mount
/// namespace, else through `/proc/1/root`.
pub fn host_path(proc_root: &Path, path: &str) -> PathBuf {
    if in_other_mount_namespace(proc_root) {
        proc_root.join("1/root").join(path.trim_start_matches('/'))
    } else {
        PathBuf::from(path)
    }
}

/// Capacity of the filesystem holding a path.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub size_bytes: u64,
    pub used_bytes: u64,
    /// Bytes an unprivileged user may still write.
    pub available_bytes: u64,
    /// used / (used + available), as `df` computes Use%.
    pub used_percent: f64,
    pub inodes: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
    pub inodes_used_percent: f64,
}

pub fn capacity(path: &Path) -> Result<Capacity, String> {
    let s =
        nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {}: {e}", path.display()))?;
    let frag = s.fragment_size() as u64;
    let size = s.blocks() as u64 * frag;
    let free = s.blocks_free() as u64 * frag;
    let avail = s.blocks_available() as u64 * frag;
    let used = size.saturating_sub(free);
    let inodes = s.files() as u64;
    let inodes_free = s.files_free() as u64;
    let inodes_used = inodes.saturating_sub(inodes_free);
    Ok(Capacity {
        size_bytes: size,
        used_bytes: used,
        available_bytes: avail,
        used_percent: percent(used, used + avail),
        inodes,
        inodes_used,
        inodes_free,
        inodes_used_percent: percent(inodes_used, inodes),
    })
}

/// `part / whole` in percent with one decimal; 0 for an empty whole.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    (part as f64 / whole as f64 * 1000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_the_mount_point_type_and_source() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    40 22 0:35 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/my\\040token rw shared:20 - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/");
        assert_eq!(m[0].fs_type, "ext4");
        assert_eq!(m[0].source, "/dev/vda");
        assert_eq!(
            m[1].mount_point,
            "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/my token"
        );
    }

    #[test]
    fn the_root_filesystem_has_a_size_and_inodes() {
        let c = capacity(Path::new("/")).unwrap();
        assert!(c.size_bytes > 0 && c.used_bytes > 0);
        assert!(c.used_percent > 0.0 && c.used_percent <= 100.0);
    }
}
