//! type MemoryAnalyzer: a copy of an HPROF heap dump, read through the filesystem of a process of
//! the pod when there is one, checked and size-capped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kdiag_api::Abnormal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::JavaTarget;
use crate::Error;
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
    ) -> Result<(String, String), Error> {
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
            return Err(Error::NoHprof {
                looked: looked.join(", "),
            });
        };
        if size > MAX_HPROF_BYTES {
            return Err(Error::HprofTooLarge {
                what,
                size,
                limit: MAX_HPROF_BYTES,
            });
        }
        let room = self.room_for(abnormal, name, MAX_HPROF_BYTES).await?;
        if size > room {
            return Err(Error::ProfileQuota {
                which: format!(
                    "{what} is {size} bytes and only {room} are left of what this Abnormal and this node may keep"
                ),
            });
        }
        let (file, url_path) = self.location(abnormal, name);
        let tmp = file.with_extension("partial");
        let copy = copy_hprof(&source, &tmp, &file, size);
        let result =
            match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), copy)
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::HprofCopyTimeout { what: what.clone() }),
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
async fn copy_hprof(source: &Path, tmp: &Path, file: &Path, size: u64) -> Result<(), Error> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |error| Error::Io {
            action,
            path,
            error,
        }
    };
    let mut src = tokio::fs::File::open(source)
        .await
        .map_err(io("opening", source))?;
    let mut magic = [0u8; 17];
    src.read_exact(&mut magic)
        .await
        .map_err(|_| Error::NotHprof {
            path: source.to_owned(),
            why: "too short",
        })?;
    if &magic != b"JAVA PROFILE 1.0." {
        return Err(Error::NotHprof {
            path: source.to_owned(),
            why: "it does not start with \"JAVA PROFILE 1.0.\"",
        });
    }
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("creating", dir))?;
    }
    let mut dst = tokio::fs::File::create(tmp)
        .await
        .map_err(io("creating", tmp))?;
    dst.write_all(&magic).await.map_err(io("writing", tmp))?;
    // The file may grow while it is copied (a dump being written): never more than its size.
    let mut rest = (&mut src).take(size.saturating_sub(magic.len() as u64));
    tokio::io::copy(&mut rest, &mut dst)
        .await
        .map_err(io("copying", source))?;
    dst.flush().await.map_err(io("writing", tmp))?;
    drop(dst);
    tokio::fs::rename(tmp, file)
        .await
        .map_err(io("renaming", tmp))
}
