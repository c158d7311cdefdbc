//! type MemoryAnalyzer: a copy of an HPROF heap dump, read through the filesystem of a process of
//! the pod when there is one, checked and size-capped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kdiag_api::Abnormal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::JavaTarget;
use crate::profiler::Profilers;

/// The largest HPROF file copied; a bigger one is left where it is, with an error saying so.
pub const MAX_HPROF_BYTES: u64 = 256 * 1024 * 1024;

impl Profilers {
    /// Keeps a copy of the HPROF file, read through a target's root when there are targets.
    pub(super) async fn hprof(
        &self,
        abnormal: &Abnormal,
        name: &str,
        path: &str,
        targets: Option<Vec<JavaTarget>>,
        deadline: Instant,
    ) -> Result<(String, String), String> {
        let candidates: Vec<(PathBuf, String)> = match &targets {
            Some(ts) => ts
                .iter()
                .map(|t| {
                    (
                        self.proc_root
                            .join(t.pid.to_string())
                            .join("root")
                            .join(path.trim_start_matches('/')),
                        format!("{path} in the filesystem of pid {} ({})", t.pid, t.origin),
                    )
                })
                .collect(),
            None => vec![(PathBuf::from(path), format!("{path} on the node"))],
        };
        let mut found = None;
        for (p, what) in &candidates {
            if let Ok(m) = tokio::fs::metadata(p).await
                && m.is_file()
            {
                found = Some((p.clone(), what.clone(), m.len()));
                break;
            }
        }
        let Some((source, what, size)) = found else {
            let looked: Vec<&str> = candidates.iter().map(|(_, w)| w.as_str()).collect();
            return Err(format!("no HPROF file: looked for {}", looked.join(", ")));
        };
        if size > MAX_HPROF_BYTES {
            return Err(format!(
                "{what} is {size} bytes, more than the {MAX_HPROF_BYTES} kdiag copies; copy it yourself (kubectl cp) and open it in Eclipse MAT"
            ));
        }
        let (file, url_path) = self.location(abnormal, name);
        let tmp = file.with_extension("partial");
        let copy = copy_hprof(&source, &tmp, &file, size);
        let result =
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), copy)
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "copying {what} did not finish within the profiler's timeout"
                )),
            };
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        Ok((
            url_path,
            format!(
                "the raw HPROF heap dump {what} ({size} bytes), for Eclipse Memory Analyzer (kdiag does not analyze it)"
            ),
        ))
    }
}

/// Copies an HPROF file after checking it is one, at most `size` bytes, then renames the copy
/// into place.
async fn copy_hprof(source: &Path, tmp: &Path, file: &Path, size: u64) -> Result<(), String> {
    let mut src = tokio::fs::File::open(source)
        .await
        .map_err(|e| format!("opening {}: {e}", source.display()))?;
    let mut magic = [0u8; 17];
    src.read_exact(&mut magic)
        .await
        .map_err(|_| format!("{} is not an HPROF file (too short)", source.display()))?;
    if &magic != b"JAVA PROFILE 1.0." {
        return Err(format!(
            "{} is not an HPROF file (it does not start with \"JAVA PROFILE 1.0.\")",
            source.display()
        ));
    }
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let mut dst = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    dst.write_all(&magic)
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    // The file may grow while it is copied (a dump being written): never more than its size.
    let mut rest = (&mut src).take(size.saturating_sub(magic.len() as u64));
    tokio::io::copy(&mut rest, &mut dst)
        .await
        .map_err(|e| format!("copying {}: {e}", source.display()))?;
    dst.flush()
        .await
        .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    drop(dst);
    tokio::fs::rename(tmp, file)
        .await
        .map_err(|e| format!("renaming {}: {e}", tmp.display()))
}
