//! Go: a pprof file already on the node (`go.source` an absolute path or a `file://` URL), as
//! Kube Diagnoser accepted.
//!
//! The node policy has no rule about files, and the agent can read most of the node, so a file is
//! read only under a directory the agent was started with (`--go-profile-dir`, none by default):
//! otherwise an Abnormal could have the agent copy any node file (a kubeconfig, a key) and serve
//! it. The path must be absolute without `.` or `..`, lie under an allowed directory, and still
//! do so with its symlinks resolved as the host sees them ([`resolve_in_root`]).

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use kdiag_api::Abnormal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MAX_PROFILE_FILE_BYTES, Profilers};
use crate::Error;

/// May the agent read `path` as a Go profile, with `allowed` the directories of
/// `--go-profile-dir`? Pure: decides on the path as written; [`Profilers::go_file`] checks it
/// again with symlinks resolved.
pub fn check_file_path(path: &str, allowed: &[PathBuf]) -> Result<PathBuf, Error> {
    let bad = |why| Error::GoFilePath {
        path: path.to_owned(),
        why,
    };
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(bad(
            "it is relative; give the absolute path of the file on the node",
        ));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(bad("it may not contain `.` or `..`"));
    }
    if !allowed.iter().any(|dir| p.starts_with(dir) && p != dir) {
        return Err(Error::GoFileNotAllowed {
            path: path.to_owned(),
            allowed: if allowed.is_empty() {
                "it gives none".to_owned()
            } else {
                format!(
                    "the file is under none of them ({})",
                    allowed
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        });
    }
    Ok(p.to_owned())
}

impl Profilers {
    /// Keeps a copy of the pprof file `path` on the node, within `timeout`.
    pub(super) async fn go_file(
        &self,
        abnormal: &Abnormal,
        name: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(String, String), Error> {
        let path_buf = check_file_path(path, &self.go_file_dirs)?;
        // Symlinks are resolved as the host sees them, inside the host's root as the agent
        // reaches it (`/proc/1/root` from the agent's own mount namespace): canonicalize would
        // read that root as the agent's own `/`.
        let root = kdiag_collectors::mounts::host_path(&self.proc_root, "/");
        let dirs = self.go_file_dirs.clone();
        let (root_, target) = (root.clone(), path_buf.clone());
        let resolved = tokio::task::spawn_blocking(move || {
            let real = resolve_in_root(&root_, &target)?;
            let inside = dirs.iter().any(|dir| {
                resolve_in_root(&root_, dir).is_ok_and(|real_dir| real.starts_with(real_dir))
            });
            Ok::<_, std::io::Error>((real, inside))
        })
        .await
        .map_err(|e| Error::Io {
            action: "resolving",
            path: path_buf.clone(),
            error: std::io::Error::other(e.to_string()),
        })?;
        let (real, inside) = resolved.map_err(|error| Error::Io {
            action: "resolving",
            path: path_buf.clone(),
            error,
        })?;
        if !inside {
            return Err(Error::GoFilePath {
                path: path.to_owned(),
                why: "a symlink on the way leads out of the allowed directories",
            });
        }
        let real = root.join(real.strip_prefix("/").unwrap_or(&real));
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|error| Error::Io {
                action: "reading",
                path: path_buf.clone(),
                error,
            })?;
        if !meta.is_file() {
            return Err(Error::GoFileNotRegular {
                path: path.to_owned(),
            });
        }
        let limit = self
            .room_for(abnormal, name, MAX_PROFILE_FILE_BYTES)
            .await?;
        if meta.len() > limit {
            return Err(Error::GoTooLarge {
                url: path.to_owned(),
                limit,
                why: if limit == MAX_PROFILE_FILE_BYTES {
                    "the cap of one profile"
                } else {
                    "what this Abnormal's and this node's profile quotas leave"
                },
            });
        }
        let (file, url_path) = self.location(abnormal, name);
        let tmp = file.with_extension("partial");
        let copy = copy_capped(&real, &tmp, &file, limit);
        let result = match tokio::time::timeout(timeout, copy).await {
            Ok(r) => r,
            Err(_) => Err(Error::GoRead {
                url: path.to_owned(),
                reason: format!(
                    "the copy did not finish within the profiler's {} s",
                    timeout.as_secs()
                ),
            }),
        };
        match result {
            Ok(size) => Ok((
                url_path,
                format!("pprof file {path} from the node ({size} bytes)"),
            )),
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// The most symlinks followed while resolving one path, as Linux allows (ELOOP).
const MAX_SYMLINKS: usize = 40;

/// Resolves the symlinks of the host path `path` inside `root`, the host's root as the agent
/// reaches it: an absolute link target starts again at the host's root, and `..` never climbs
/// above it. Returns the resolved host path (absolute, without symlinks).
pub fn resolve_in_root(root: &Path, path: &Path) -> std::io::Result<PathBuf> {
    use std::ffi::OsString;
    let mut resolved = PathBuf::from("/");
    // Components still to walk, the next one last.
    let mut pending: Vec<OsString> = Vec::new();
    let push_all = |pending: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => pending.push(n.to_owned()),
                Component::ParentDir => pending.push("..".into()),
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
    };
    push_all(&mut pending, path);
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_disk = root.join(candidate.strip_prefix("/").unwrap_or(&candidate));
        if std::fs::symlink_metadata(&on_disk)?
            .file_type()
            .is_symlink()
        {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(std::io::Error::other(format!(
                    "more than {MAX_SYMLINKS} symlinks"
                )));
            }
            let target = std::fs::read_link(&on_disk)?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
            }
            push_all(&mut pending, &target);
        } else {
            resolved = candidate;
        }
    }
    Ok(resolved)
}

/// Copies at most `limit` bytes of `source` to `tmp` (a file that grew past it fails), then
/// renames it to `file` so a half copy is never served.
async fn copy_capped(source: &Path, tmp: &Path, file: &Path, limit: u64) -> Result<u64, Error> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |error| Error::Io {
            action,
            path,
            error,
        }
    };
    if let Some(dir) = file.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io("creating", dir))?;
    }
    let mut src = tokio::fs::File::open(source)
        .await
        .map_err(io("opening", source))?;
    let mut out = tokio::fs::File::create(tmp)
        .await
        .map_err(io("creating", tmp))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).await.map_err(io("reading", source))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(Error::GoTooLarge {
                url: source.display().to_string(),
                limit,
                why: "the room left when the copy started",
            });
        }
        out.write_all(&buf[..n]).await.map_err(io("writing", tmp))?;
    }
    out.flush().await.map_err(io("writing", tmp))?;
    tokio::fs::rename(tmp, file)
        .await
        .map_err(|error| Error::Rename {
            from: tmp.to_owned(),
            to: file.to_owned(),
            error,
        })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(d: &[&str]) -> Vec<PathBuf> {
        d.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn without_an_allowed_directory_no_file_is_read_and_the_error_says_what_to_configure() {
        let e = check_file_path("/var/run/app/heap.pprof", &[]).unwrap_err();
        assert!(matches!(e, Error::GoFileNotAllowed { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("--go-profile-dir"), "{text}");
        assert!(text.contains("it gives none"), "{text}");
    }

    #[test]
    fn a_file_under_an_allowed_directory_is_read() {
        let allowed = dirs(&["/var/run/pprof", "/data/profiles"]);
        assert_eq!(
            check_file_path("/data/profiles/app/heap.pprof", &allowed).unwrap(),
            PathBuf::from("/data/profiles/app/heap.pprof")
        );
    }

    #[test]
    fn files_outside_the_allowed_directories_and_tricky_paths_are_refused() {
        let allowed = dirs(&["/var/run/pprof"]);
        for (path, want) in [
            (
                "/etc/kubernetes/admin.conf",
                "under none of them (/var/run/pprof)",
            ),
            ("/var/run/pprofx/heap", "under none of them"),
            ("/var/run/pprof", "under none of them"),
            ("/var/run/pprof/../../etc/shadow", "`..`"),
            ("heap.pprof", "relative"),
            ("var/run/pprof/heap", "relative"),
        ] {
            let e = check_file_path(path, &allowed).unwrap_err().to_string();
            assert!(e.contains(want), "{path}: {e}");
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_hosts_root_as_the_agent_reaches_it() {
        // A stand-in for /proc/1/root: absolute link targets are the host's paths.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("data/pprof")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("data/pprof/heap"), b"x").unwrap();
        std::fs::write(r.join("etc/secret"), b"x").unwrap();
        std::os::unix::fs::symlink("/data/pprof/heap", r.join("data/pprof/abs")).unwrap();
        std::os::unix::fs::symlink("../../etc/secret", r.join("data/pprof/rel")).unwrap();
        std::os::unix::fs::symlink("/data", r.join("link-to-data")).unwrap();
        std::os::unix::fs::symlink("../../../../../etc/secret", r.join("data/pprof/climb"))
            .unwrap();
        std::os::unix::fs::symlink("loop", r.join("data/pprof/loop")).unwrap();
        let resolve = |p: &str| resolve_in_root(r, Path::new(p));
        assert_eq!(
            resolve("/data/pprof/abs").unwrap(),
            Path::new("/data/pprof/heap")
        );
        assert_eq!(
            resolve("/data/pprof/rel").unwrap(),
            Path::new("/etc/secret")
        );
        assert_eq!(
            resolve("/link-to-data/pprof/heap").unwrap(),
            Path::new("/data/pprof/heap")
        );
        // `..` stops at the host's root, as it does at `/`.
        assert_eq!(
            resolve("/data/pprof/climb").unwrap(),
            Path::new("/etc/secret")
        );
        assert!(resolve("/data/pprof/loop").is_err());
        assert!(resolve("/data/pprof/missing").is_err());
    }
}
