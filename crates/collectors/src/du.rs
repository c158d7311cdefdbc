//! Disk usage of directory trees, walked in parallel (what `du -sx` does, for many roots at once).
//!
//! One shared queue of directories feeds a few threads; each thread reads a directory, stats
//! its entries relative to it (`fstatat`, through `DirEntry::metadata`) and queues the
//! subdirectories. Like `du -x` it stays on the filesystem of each root: a volume mounted below
//! a pod directory (a tmpfs secret, an NFS share) is named, not walked. Hard-linked files count
//! once. An unreadable directory is recorded and skipped.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

use serde::Serialize;

use crate::budget::{Deadline, Problems};

/// A tree to measure, without the subtrees in `exclude` (measured as roots of their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalkRoot {
    pub path: PathBuf,
    pub exclude: Vec<PathBuf>,
}

impl WalkRoot {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            exclude: Vec::new(),
        }
    }
}

/// What a tree holds.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Sum of file sizes (`du -b`).
    pub apparent_bytes: u64,
    /// Bytes allocated on disk (`du -B1`): what fills the filesystem.
    pub allocated_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    /// Mount points below the root that were not walked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub other_filesystems: Vec<String>,
    #[serde(skip_serializing_if = "Problems::is_empty")]
    pub problems: Problems,
    /// False when the deadline stopped the walk: the numbers are a lower bound.
    pub complete: bool,
    /// False when the root does not exist.
    pub exists: bool,
}

struct Queue {
    dirs: Vec<(usize, PathBuf)>,
    /// Directories taken but not finished: the walk ends when none are queued or active.
    active: usize,
}

/// Measures every root; the result has one entry per root, in order.
pub fn walk(roots: &[WalkRoot], threads: usize, deadline: Deadline) -> Vec<Usage> {
    let mut totals: Vec<Usage> = roots
        .iter()
        .map(|_| Usage {
            complete: true,
            ..Default::default()
        })
        .collect();
    let mut devs = vec![0u64; roots.len()];
    let mut queue = Vec::new();
    for (i, root) in roots.iter().enumerate() {
        match std::fs::symlink_metadata(&root.path) {
            Ok(m) => {
                totals[i].exists = true;
                devs[i] = m.dev();
                if m.is_dir() {
                    totals[i].dirs += 1;
                    totals[i].apparent_bytes += m.size();
                    totals[i].allocated_bytes += m.blocks() * 512;
                    queue.push((i, root.path.clone()));
                } else {
                    totals[i].files += 1;
                    totals[i].apparent_bytes += m.size();
                    totals[i].allocated_bytes += m.blocks() * 512;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => totals[i]
                .problems
                .push(format!("{}: {e}", root.path.display())),
        }
    }
    let shared = Mutex::new(Queue {
        dirs: queue,
        active: 0,
    });
    let wake = Condvar::new();
    let links = Mutex::new(HashSet::new());
    let threads = threads.clamp(1, 32);
    let parts: Vec<Vec<Usage>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (shared, wake, links, devs) = (&shared, &wake, &links, &devs);
                s.spawn(move || worker(roots, devs, shared, wake, links, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for part in parts {
        for (total, p) in totals.iter_mut().zip(part) {
            total.apparent_bytes += p.apparent_bytes;
            total.allocated_bytes += p.allocated_bytes;
            total.files += p.files;
            total.dirs += p.dirs;
            total.other_filesystems.extend(p.other_filesystems);
            total.problems.extend(p.problems);
            total.complete &= p.complete;
        }
    }
    totals
}

fn worker(
    roots: &[WalkRoot],
    devs: &[u64],
    shared: &Mutex<Queue>,
    wake: &Condvar,
    links: &Mutex<HashSet<(u64, u64)>>,
    deadline: Deadline,
) -> Vec<Usage> {
    let mut acc: Vec<Usage> = roots
        .iter()
        .map(|_| Usage {
            complete: true,
            ..Default::default()
        })
        .collect();
    let mut found = Vec::new();
    loop {
        let (root, dir) = {
            let mut q = shared.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(item) = q.dirs.pop() {
                    q.active += 1;
                    break item;
                }
                if q.active == 0 {
                    wake.notify_all();
                    return acc;
                }
                q = wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        if deadline.passed() {
            acc[root].complete = false;
        } else {
            read_dir(
                &roots[root],
                devs[root],
                &dir,
                &mut acc[root],
                &mut found,
                links,
            );
        }
        let mut q = shared.lock().unwrap_or_else(|e| e.into_inner());
        q.active -= 1;
        let more = !found.is_empty();
        q.dirs.extend(found.drain(..).map(|d| (root, d)));
        if more || q.active == 0 {
            wake.notify_all();
        }
    }
}

fn read_dir(
    root: &WalkRoot,
    dev: u64,
    dir: &Path,
    acc: &mut Usage,
    found: &mut Vec<PathBuf>,
    links: &Mutex<HashSet<(u64, u64)>>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // Removed since it was listed: the pod's files change while we measure.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            acc.problems.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                acc.problems
                    .push(format!("{}: {e}", entry.path().display()));
                continue;
            }
        };
        if meta.is_dir() {
            let path = entry.path();
            if meta.dev() != dev {
                acc.other_filesystems.push(path.display().to_string());
                continue;
            }
            if root.exclude.contains(&path) {
                continue;
            }
            acc.dirs += 1;
            acc.apparent_bytes += meta.size();
            acc.allocated_bytes += meta.blocks() * 512;
            found.push(path);
            continue;
        }
        if meta.nlink() > 1 {
            let mut seen = links.lock().unwrap_or_else(|e| e.into_inner());
            if !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
        }
        acc.files += 1;
        acc.apparent_bytes += meta.size();
        acc.allocated_bytes += meta.blocks() * 512;
    }
}

/// How many threads a walk should use: more than the cores, since a cold walk waits on the disk.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
        * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn write(path: &Path, bytes: usize) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, vec![1u8; bytes]).unwrap();
    }

    #[test]
    fn a_tree_is_summed_like_du_apparent_size() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..50 {
            write(&dir.path().join(format!("a/b{}/f{i}", i % 7)), 1000 + i);
        }
        let usage = walk(&[WalkRoot::new(dir.path())], 4, Deadline::never());
        let u = &usage[0];
        assert!(u.complete && u.exists);
        assert_eq!(u.files, 50);
        assert_eq!(u.dirs, 1 + 1 + 7);
        let data: u64 = (0..50).map(|i| 1000 + i as u64).sum();
        assert!(u.apparent_bytes >= data);
        let du = std::process::Command::new("du")
            .arg("-sb")
            .arg(dir.path())
            .output()
            .unwrap();
        let du_bytes: u64 = String::from_utf8_lossy(&du.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(u.apparent_bytes, du_bytes);
    }

    #[test]
    fn excluded_subtrees_are_left_to_their_own_root_and_hard_links_count_once() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("keep/x"), 4096);
        write(&dir.path().join("volume/big"), 100_000);
        std::fs::hard_link(dir.path().join("keep/x"), dir.path().join("keep/y")).unwrap();
        let roots = [
            WalkRoot {
                path: dir.path().into(),
                exclude: vec![dir.path().join("volume")],
            },
            WalkRoot::new(dir.path().join("volume")),
        ];
        let usage = walk(&roots, 2, Deadline::never());
        assert_eq!(usage[0].files, 1);
        assert!(usage[0].apparent_bytes < 100_000);
        assert_eq!(usage[1].files, 1);
        assert!(usage[1].apparent_bytes >= 100_000);
    }

    #[test]
    fn a_missing_root_is_reported_as_not_existing() {
        let usage = walk(
            &[WalkRoot::new("/nonexistent/kdiag/path")],
            2,
            Deadline::never(),
        );
        assert!(!usage[0].exists);
        assert_eq!(usage[0].files, 0);
    }

    #[test]
    fn a_passed_deadline_marks_the_walk_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("a/b/c"), 10);
        let usage = walk(
            &[WalkRoot::new(dir.path())],
            2,
            Deadline::after(Duration::ZERO),
        );
        assert!(!usage[0].complete);
    }
}
