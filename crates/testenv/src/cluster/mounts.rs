//! Mounts below a run directory: container root filesystems (overlay), sandbox `/dev/shm`,
//! pod network namespaces (nsfs, because containerd is told to keep them under its state
//! directory), the kubelet's secret and projected volumes (tmpfs) and the bind mount the kubelet
//! makes of its own root directory.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::TestEnvError;

/// Mounts a tmpfs of `mib` MiB (and `inodes` inodes, when given) at `dir` (created first),
/// named `source` in mountinfo so every run's is told apart. The stop unmounts it with
/// everything else below the run directory.
pub(crate) fn mount_tmpfs(
    dir: &Path,
    mib: u64,
    inodes: Option<u64>,
    source: &str,
) -> Result<(), TestEnvError> {
    std::fs::create_dir_all(dir).map_err(TestEnvError::io(dir))?;
    let mut options = format!("size={mib}m");
    if let Some(n) = inodes {
        options.push_str(&format!(",nr_inodes={n}"));
    }
    mount(
        Some(source),
        dir,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| {
        TestEnvError::Other(format!(
            "mounting a {mib} MiB tmpfs at {}: {e}",
            dir.display()
        ))
    })
}

/// Mount points at or below `dir` in this process's mount namespace, in mountinfo order (a
/// mount stacked on another comes after it).
pub(crate) fn under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect()
}

/// Lazily unmounts everything at or below `dir`, deepest and newest first, until nothing is
/// left. Lazy (MNT_DETACH) because a dying process may still hold a file open; the mount goes
/// from the tree at once and the kernel frees it when the last user is gone. Returns the mount
/// points that could not be unmounted.
pub(crate) fn unmount_all(dir: &Path) -> Vec<String> {
    for _ in 0..10 {
        let mut mounts = under(dir);
        if mounts.is_empty() {
            return Vec::new();
        }
        // Newest first, then deepest first (stable sort keeps newest-first among equals).
        mounts.reverse();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
        for m in mounts {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    under(dir)
        .into_iter()
        .map(|m| format!("mount {}", m.display()))
        .collect()
}

/// Mountinfo escapes space, tab, newline and backslash as octal (`\040`).
pub(crate) fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = (bytes[i] == b'\\' && i + 3 < bytes.len())
            .then(|| &bytes[i + 1..i + 4])
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
            .map(|d| d.iter().fold(0u16, |v, b| v * 8 + u16::from(b - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn octal_escapes_of_mountinfo_are_decoded() {
        assert_eq!(super::unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(super::unescape(r"/x\134y"), r"/x\y");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert_eq!(super::unescape(r"/end\04"), r"/end\04");
    }
}
