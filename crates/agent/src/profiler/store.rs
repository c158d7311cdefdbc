//! Where profiles are kept: one file per profiler under data_root/profiles/<namespace>/<abnormal>/,
//! written through a temporary file, with an expiry marker beside it under
//! data_root/profile-expiry/ that the sweep reads.

use std::path::{Path, PathBuf};

use kdiag_api::Abnormal;

use super::Profilers;
use crate::Error;

impl Profilers {
    /// The file and URL path of one profile.
    pub(super) fn location(&self, abnormal: &Abnormal, name: &str) -> (PathBuf, String) {
        let ns = abnormal.metadata.namespace.clone().unwrap_or_default();
        let ab = abnormal.metadata.name.clone().unwrap_or_default();
        let file = self
            .data_root
            .join("profiles")
            .join(&ns)
            .join(&ab)
            .join(sanitize(name));
        (file, format!("/profiles/{ns}/{ab}/{}", sanitize(name)))
    }

    /// Writes a result under its per-Abnormal path (through a temporary file, so a half-written
    /// one is never served) and returns that path.
    pub(super) async fn store(
        &self,
        abnormal: &Abnormal,
        name: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        let (file, url_path) = self.location(abnormal, name);
        if let Some(dir) = file.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|error| Error::Io {
                    action: "creating",
                    path: dir.to_owned(),
                    error,
                })?;
        }
        let tmp = file.with_extension("partial");
        tokio::fs::write(&tmp, body)
            .await
            .map_err(|error| Error::Io {
                action: "writing",
                path: tmp.clone(),
                error,
            })?;
        tokio::fs::rename(&tmp, &file)
            .await
            .map_err(|error| Error::Rename {
                from: tmp.clone(),
                to: file.clone(),
                error,
            })?;
        Ok(url_path)
    }

    /// The marker holding when `file` (under data_root/profiles) expires: the same relative path
    /// under data_root/profile-expiry, outside what the HTTP server serves.
    fn expiry_marker(&self, file: &Path) -> Option<PathBuf> {
        let rel = file.strip_prefix(self.data_root.join("profiles")).ok()?;
        Some(self.data_root.join("profile-expiry").join(rel))
    }

    pub(super) async fn record_expiry(
        &self,
        file: &Path,
        expires_at_unix: i64,
    ) -> Result<(), Error> {
        let marker = self
            .expiry_marker(file)
            .ok_or_else(|| Error::NotUnderProfiles {
                path: file.to_owned(),
            })?;
        if let Some(dir) = marker.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|error| Error::Io {
                    action: "creating",
                    path: dir.to_owned(),
                    error,
                })?;
        }
        tokio::fs::write(&marker, expires_at_unix.to_string())
            .await
            .map_err(|error| Error::Io {
                action: "writing",
                path: marker.clone(),
                error,
            })
    }

    /// Deletes the profiles whose expirationSeconds have passed by `now_unix`, and their markers;
    /// returns how many were deleted. A profile is at most SWEEP_INTERVAL late to go.
    pub async fn sweep_expired(&self, now_unix: i64) -> usize {
        let (profiles, markers) = (
            self.data_root.join("profiles"),
            self.data_root.join("profile-expiry"),
        );
        tokio::task::spawn_blocking(move || sweep(&profiles, &markers, now_unix))
            .await
            .unwrap_or(0)
    }
}

/// A name safe as one path segment.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// Walks the expiry markers (namespace/abnormal/profile) and deletes what has expired.
fn sweep(profiles: &Path, markers: &Path, now_unix: i64) -> usize {
    let mut deleted = 0;
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for ns in entries(markers) {
        for abnormal in entries(&ns) {
            for marker in entries(&abnormal) {
                let expires = std::fs::read_to_string(&marker)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok());
                // An unreadable marker expires now rather than keeping its profile forever.
                if expires.is_some_and(|t| t > now_unix) {
                    continue;
                }
                if let Ok(rel) = marker.strip_prefix(markers) {
                    match std::fs::remove_file(profiles.join(rel)) {
                        Ok(()) => deleted += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(profile = %profiles.join(rel).display(), error = %e, "cannot delete an expired profile");
                            continue;
                        }
                    }
                }
                let _ = std::fs::remove_file(&marker);
            }
            let _ = std::fs::remove_dir(&abnormal);
            let _ = std::fs::remove_dir(
                profiles.join(abnormal.strip_prefix(markers).unwrap_or(&abnormal)),
            );
        }
        let _ = std::fs::remove_dir(&ns);
    }
    deleted
}

#[cfg(test)]
mod expiry_tests {
    use super::*;

    #[tokio::test]
    async fn an_expired_profile_is_deleted_and_a_fresh_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profilers {
            data_root: dir.path().to_owned(),
            public_url: String::new(),
            proc_root: "/proc".into(),
            client: None,
        };
        let root = dir.path().join("profiles/ns/ab");
        std::fs::create_dir_all(&root).unwrap();
        for name in ["old", "new"] {
            std::fs::write(root.join(name), b"profile").unwrap();
        }
        p.record_expiry(&root.join("old"), 100).await.unwrap();
        p.record_expiry(&root.join("new"), 200).await.unwrap();
        assert_eq!(p.sweep_expired(150).await, 1);
        assert!(!root.join("old").exists());
        assert!(root.join("new").exists(), "not expired yet");
        assert_eq!(p.sweep_expired(250).await, 1);
        assert!(
            !dir.path().join("profiles/ns/ab").exists(),
            "empty directories go too"
        );
    }
}
