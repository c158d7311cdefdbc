//! Per-run directories under `$TMPDIR/kdiag-testenv`, and removal of those left by crashed runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::TestEnvError;

const OWNER_FILE: &str = "owner";

/// The parent of every run directory.
pub(crate) fn base() -> PathBuf {
    std::env::temp_dir().join("kdiag-testenv")
}

/// Creates a fresh directory for one run, named after this process, and records the owner so a
/// later run can tell whether it is still alive.
pub(crate) fn create(kind: &str) -> Result<PathBuf, TestEnvError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let base = base();
    std::fs::create_dir_all(&base).map_err(TestEnvError::io(&base))?;
    let dir = base.join(format!(
        "{kind}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).map_err(TestEnvError::io(&dir))?;
    let owner = format!(
        "{} {}\n",
        std::process::id(),
        process_start_time(std::process::id()).unwrap_or_default()
    );
    std::fs::write(dir.join(OWNER_FILE), owner).map_err(TestEnvError::io(&dir))?;
    Ok(dir)
}

/// Run directories whose owning process is gone (a crashed or killed earlier run).
pub(crate) fn stale(kind: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{kind}-")))
        })
        .filter(|p| !owner_alive(p))
        .collect()
}

/// Run directories of `kind` whose owning process is alive (this process's included).
pub(crate) fn live(kind: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(base()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{kind}-")))
        })
        .filter(|p| owner_alive(p))
        .collect()
}

fn owner_alive(dir: &Path) -> bool {
    let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
        // Being created right now by another process, or broken: leave young ones alone.
        return std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .map(|t| t.elapsed().unwrap_or_default().as_secs() < 60)
            .unwrap_or(false);
    };
    let mut parts = owner.split_whitespace();
    let (Some(pid), start) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next(),
    ) else {
        return false;
    };
    // A reused pid has a different start time.
    process_start_time(pid).is_some_and(|t| start.is_none_or(|s| s == t))
}

/// Field 22 of /proc/<pid>/stat: the start time in clock ticks since boot, as recorded in owner
/// files and run records.
pub(crate) fn process_start_time(pid: u32) -> Option<String> {
    let pid = i32::try_from(pid).ok()?;
    kdiag_procstat::start_time(Path::new("/proc"), pid).map(|t| t.to_string())
}

/// Removes a directory tree, ignoring what is already gone.
pub(crate) fn remove(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("kdiag-testenv: could not remove {}: {e}", dir.display());
    }
}
