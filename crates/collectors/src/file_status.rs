//! `file-status-collector` → `fileStatusInformation`: stat and disk usage of the paths named in
//! `filePathInformation`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;
use kdiag_api::Abnormal;
use kdiag_api::context_keys::{FILE_PATH_INFORMATION, FILE_STATUS_INFORMATION};
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use serde::Serialize;

use crate::budget::{Deadline, blocking, cap_list, output_budget, truncated_key};
use crate::du::{self, Usage, WalkRoot};
use crate::mounts;

/// Paths accepted in one Abnormal: each directory is walked, so this bounds the work.
const MAX_PATHS: usize = 100;
/// Entries of a directory listed in its `fileStatuses`: the largest by disk usage.
pub const MAX_DIR_ENTRIES: usize = 100;
/// Entries of a directory read to choose them from; a larger directory's others are not
/// ranked (counted in `fileStatusesOmitted`).
pub const MAX_DIR_ENTRIES_READ: usize = 10_000;

/// One path, as written to `fileStatusInformation`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileStatus {
    pub path: String,
    pub exists: bool,
    /// The last path component (Go's FileInfo.Name).
    pub name: String,
    pub size: u64,
    /// Type and permissions as `ls -l` shows them (`drwxr-xr-x`).
    pub mode: String,
    /// Permission bits in octal (`0755`).
    pub permissions: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    pub is_dir: bool,
    pub is_symlink: bool,
    pub uid: u32,
    pub gid: u32,
    /// The inode number (Kube Diagnoser's `inode`).
    pub inode: u64,
    /// The number of hard links (Kube Diagnoser's `links`).
    pub links: u64,
    /// Bytes allocated on disk: the whole tree for a directory (`du -sx`), the file itself
    /// otherwise.
    pub disk_usage: u64,
    /// For a directory: the walk behind diskUsage (apparent bytes, files, other filesystems
    /// not walked, whether it finished in time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<Usage>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// For a directory: its entries (not their contents), the largest by disk usage first, at
    /// most [`MAX_DIR_ENTRIES`], as Kube Diagnoser's `FileStatusList.fileStatuses`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub file_statuses: Vec<FileEntry>,
    /// For a directory: how many entries are not in `fileStatuses` (beyond the bounds).
    #[serde(skip_serializing_if = "is_zero")]
    pub file_statuses_omitted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One entry of a directory, with exactly Kube Diagnoser's `types.FileStatus` fields.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub uid: u32,
    pub gid: u32,
    pub inode: u64,
    pub links: u64,
    pub mode: String,
    /// RFC 3339.
    pub mod_time: String,
    /// Bytes allocated on disk; a subdirectory's whole tree.
    pub disk_usage: u64,
    /// The host path of the entry.
    pub path: String,
}

pub struct FileStatusCollector;

impl Processor for FileStatusCollector {
    fn name(&self) -> &'static str {
        "file-status-collector"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let paths: Vec<String> = abnormal
                .context_as(FILE_PATH_INFORMATION)?
                .ok_or_else(|| {
                    ProcessorError::InvalidInput(format!(
                        "context key {FILE_PATH_INFORMATION} is missing: set it in spec.context to the paths to stat, e.g. [\"/var/log\", \"/var/lib/kubelet\"]"
                    ))
                })?;
            if paths.is_empty() {
                return Err(ProcessorError::InvalidInput(format!(
                    "context key {FILE_PATH_INFORMATION} is an empty list: name at least one path"
                )));
            }
            if paths.len() > MAX_PATHS {
                return Err(ProcessorError::InvalidInput(format!(
                    "context key {FILE_PATH_INFORMATION} names {} paths; at most {MAX_PATHS} are accepted per Abnormal",
                    paths.len()
                )));
            }
            if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
                return Err(ProcessorError::InvalidInput(format!(
                    "path {p:?} in {FILE_PATH_INFORMATION} is not absolute: give host paths such as /var/log"
                )));
            }
            let deadline = Deadline::within(ctx.timeout);
            let proc_root = ctx.node.proc_root.clone();
            let statuses = blocking("stat and du", move || {
                stat_all(&proc_root, &paths, deadline)
            })
            .await?;
            let found = statuses.iter().filter(|s| s.exists).count();
            let (kept, truncation) = cap_list(&statuses, output_budget(ctx.max_output_bytes));
            let mut message = format!("stat {} paths, {found} exist", statuses.len());
            if let Some(t) = &truncation {
                message.push_str(&format!("; {}", t.reason));
            }
            let mut out = ProcessorOutput::message(message)
                .with_context(FILE_STATUS_INFORMATION, serde_json::Value::Array(kept));
            if let Some(t) = truncation {
                out = out.with_context(
                    &truncated_key(FILE_STATUS_INFORMATION),
                    serde_json::to_value(t).unwrap_or_default(),
                );
            }
            Ok(out)
        }
        .boxed()
    }
}

/// Stats each host path and measures the directories among them in one parallel walk. The
/// paths are the host's: when the agent runs in a mount namespace of its own, they are reached
/// through the host init's root (`<proc_root>/1/root`).
pub fn stat_all(proc_root: &Path, paths: &[String], deadline: Deadline) -> Vec<FileStatus> {
    let resolved: Vec<PathBuf> = paths
        .iter()
        .map(|p| mounts::host_path(proc_root, p))
        .collect();
    let mut out: Vec<FileStatus> = paths
        .iter()
        .zip(&resolved)
        .map(|(p, r)| stat(Path::new(p), r))
        .collect();
    let dirs: Vec<usize> = (0..out.len()).filter(|i| out[*i].is_dir).collect();
    let mut roots: Vec<WalkRoot> = dirs
        .iter()
        .map(|i| WalkRoot::new(resolved[*i].clone()))
        .collect();
    // Each directory's entries; its subdirectories are measured as roots of their own (after
    // the directories themselves), so an entry's diskUsage is its whole tree.
    let mut listings: Vec<(usize, Vec<Listed>)> = Vec::new();
    for &i in &dirs {
        let (entries, omitted) = read_entries(Path::new(&out[i].path), &resolved[i]);
        out[i].file_statuses_omitted = omitted;
        let entries = entries
            .into_iter()
            .map(|(entry, subdir)| {
                let root = subdir.map(|d| {
                    roots.push(WalkRoot::new(d));
                    roots.len() - 1
                });
                (entry, root)
            })
            .collect();
        listings.push((i, entries));
    }
    let usage = du::walk(&roots, du::default_threads(), deadline);
    for (i, u) in dirs.iter().zip(&usage) {
        out[*i].disk_usage = u.allocated_bytes;
        out[*i].tree = Some(u.clone());
    }
    for (i, entries) in listings {
        let mut entries: Vec<FileEntry> = entries
            .into_iter()
            .map(|(mut entry, root)| {
                if let Some(u) = root.and_then(|r| usage.get(r)) {
                    entry.disk_usage = u.allocated_bytes;
                }
                entry
            })
            .collect();
        entries.sort_by(|a, b| b.disk_usage.cmp(&a.disk_usage).then(a.path.cmp(&b.path)));
        if entries.len() > MAX_DIR_ENTRIES {
            out[i].file_statuses_omitted += (entries.len() - MAX_DIR_ENTRIES) as u64;
            entries.truncate(MAX_DIR_ENTRIES);
        }
        out[i].file_statuses = entries;
    }
    out
}

/// An entry of a directory, with the index of its walk root when it is a subdirectory.
type Listed = (FileEntry, Option<usize>);

/// The entries of a directory (at most [`MAX_DIR_ENTRIES_READ`]) stat'ed without following
/// symlinks, each with the resolved path of the subdirectory to measure when it is one, and how
/// many entries were not read. An unreadable directory has no entries: its own stat says enough.
fn read_entries(path: &Path, resolved: &Path) -> (Vec<(FileEntry, Option<PathBuf>)>, u64) {
    let Ok(dir) = std::fs::read_dir(resolved) else {
        return (Vec::new(), 0);
    };
    let mut entries = Vec::new();
    let mut omitted = 0u64;
    for item in dir.flatten() {
        if entries.len() >= MAX_DIR_ENTRIES_READ {
            omitted += 1;
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(item.path()) else {
            continue;
        };
        let entry = FileEntry {
            uid: meta.uid(),
            gid: meta.gid(),
            inode: meta.ino(),
            links: meta.nlink(),
            mode: mode_string(meta.permissions().mode()),
            mod_time: jiff::Timestamp::from_second(meta.mtime())
                .map(|t| t.to_string())
                .unwrap_or_default(),
            disk_usage: meta.blocks() * 512,
            path: path.join(item.file_name()).display().to_string(),
        };
        entries.push((entry, meta.is_dir().then(|| item.path())));
    }
    (entries, omitted)
}

fn stat(path: &Path, resolved: &Path) -> FileStatus {
    let mut s = FileStatus {
        path: path.display().to_string(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        ..Default::default()
    };
    let meta = match std::fs::symlink_metadata(resolved) {
        Ok(m) => m,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                s.error = e.to_string();
            }
            return s;
        }
    };
    s.exists = true;
    s.size = meta.size();
    s.is_dir = meta.is_dir();
    s.is_symlink = meta.file_type().is_symlink();
    s.uid = meta.uid();
    s.gid = meta.gid();
    s.inode = meta.ino();
    s.links = meta.nlink();
    let mode = meta.permissions().mode();
    s.permissions = format!("{:04o}", mode & 0o7777);
    s.mode = mode_string(mode);
    s.mod_time = jiff::Timestamp::from_second(meta.mtime())
        .map(|t| t.to_string())
        .unwrap_or_default();
    s.disk_usage = meta.blocks() * 512;
    s
}

/// `ls -l`'s first column.
fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(kind);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_and_missing_paths_are_each_described() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.log");
        std::fs::write(&file, vec![0u8; 10_000]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), vec![0u8; 50_000]).unwrap();
        let paths = vec![
            file.display().to_string(),
            dir.path().display().to_string(),
            dir.path().join("missing").display().to_string(),
        ];
        let s = stat_all(Path::new("/proc"), &paths, Deadline::never());
        assert!(s[0].exists && !s[0].is_dir);
        assert_eq!(s[0].size, 10_000);
        assert_eq!(s[0].name, "data.log");
        assert!(s[0].mode.starts_with("-rw"));
        assert!(s[1].is_dir && s[1].mode.starts_with('d'));
        let tree = s[1].tree.as_ref().unwrap();
        assert_eq!(tree.files, 2);
        assert!(tree.apparent_bytes >= 60_000);
        assert!(s[1].disk_usage >= 60_000);
        assert!(!s[2].exists && s[2].error.is_empty());
    }

    /// Kube Diagnoser's `types.FileStatusList` with the Go field types as Rust ones (`modTime` a
    /// `time.Time`: an RFC 3339 string).
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct UpstreamFileStatusList {
        uid: u32,
        gid: u32,
        inode: u64,
        links: u64,
        mode: String,
        mod_time: jiff::Timestamp,
        disk_usage: i64,
        path: String,
        #[serde(default)]
        file_statuses: Vec<UpstreamFileStatus>,
    }

    /// Kube Diagnoser's `types.FileStatus`, every field required.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    #[allow(dead_code)]
    struct UpstreamFileStatus {
        uid: u32,
        gid: u32,
        inode: u64,
        links: u64,
        mode: String,
        mod_time: jiff::Timestamp,
        disk_usage: i64,
        path: String,
    }

    #[test]
    fn file_status_information_decodes_with_kube_diagnosers_go_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.log");
        std::fs::write(&file, b"x").unwrap();
        let s = stat_all(
            Path::new("/proc"),
            &[file.display().to_string()],
            Deadline::never(),
        );
        let upstream: Vec<UpstreamFileStatusList> =
            serde_json::from_value(serde_json::to_value(&s).unwrap())
                .expect("decodes into Kube Diagnoser's types.FileStatusList");
        assert_eq!(upstream[0].links, 1);
        assert!(upstream[0].inode > 0);
        assert!(upstream[0].mode.starts_with("-rw"));
    }

    #[test]
    fn a_directorys_entries_are_listed_largest_first_and_decode_as_upstreams_file_statuses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small"), vec![1u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("big")).unwrap();
        std::fs::write(dir.path().join("big/inside"), vec![1u8; 200_000]).unwrap();
        std::fs::write(dir.path().join("medium"), vec![1u8; 50_000]).unwrap();
        let s = stat_all(
            Path::new("/proc"),
            &[dir.path().display().to_string()],
            Deadline::never(),
        );
        let upstream: Vec<UpstreamFileStatusList> =
            serde_json::from_value(serde_json::to_value(&s).unwrap())
                .expect("decodes into Kube Diagnoser's []types.FileStatusList");
        let entries = &upstream[0].file_statuses;
        let names: Vec<&str> = entries
            .iter()
            .map(|e| e.path.rsplit('/').next().unwrap())
            .collect();
        assert_eq!(names, ["big", "medium", "small"]);
        // A subdirectory counts its whole tree; the paths are the host paths asked for.
        assert!(
            entries[0].disk_usage >= 200_000,
            "{}",
            entries[0].disk_usage
        );
        assert!(entries[0].mode.starts_with('d'));
        assert!(
            entries[1]
                .path
                .starts_with(&dir.path().display().to_string())
        );
        assert_eq!(s[0].file_statuses_omitted, 0);
    }

    #[test]
    fn a_large_directory_lists_only_its_largest_entries_and_counts_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..MAX_DIR_ENTRIES + 5 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![1u8; i * 10]).unwrap();
        }
        let s = stat_all(
            Path::new("/proc"),
            &[dir.path().display().to_string()],
            Deadline::never(),
        );
        assert_eq!(s[0].file_statuses.len(), MAX_DIR_ENTRIES);
        assert_eq!(s[0].file_statuses_omitted, 5);
        let json = serde_json::to_value(&s[0]).unwrap();
        assert_eq!(json["fileStatusesOmitted"], 5);
    }
}
