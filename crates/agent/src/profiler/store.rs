//! Where profiles are kept: one file per profiler under data_root/profiles/<namespace>/<abnormal>/,
//! written through a temporary file, with an expiry marker beside it under
//! data_root/profile-expiry/ that the sweep reads.

use std::path::{Path, PathBuf};

use kdiag_api::Abnormal;

use super::Profilers;
use crate::Error;

/// How much the agent keeps of profiles, so that they cannot fill the node's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileLimits {
    /// All the profiles of one Abnormal, together.
    pub per_abnormal: u64,
    /// All the profiles on this node, together (the agent's data root).
    pub per_node: u64,
}

impl Default for ProfileLimits {
    fn default() -> Self {
        Self {
            per_abnormal: 512 * 1024 * 1024,
            per_node: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// The longest a profile is kept, whatever its expirationSeconds asks: 7 days.
pub const MAX_EXPIRATION_SECONDS: i64 = 7 * 24 * 3600;

/// Bytes a new profile may take: the least of its own cap, what its Abnormal has left and what
/// the node has left. An error when nothing is left, naming the limit that is reached.
pub fn room(
    per_profile: u64,
    abnormal_used: u64,
    node_used: u64,
    limits: &ProfileLimits,
) -> Result<u64, Error> {
    let abnormal_left = limits.per_abnormal.saturating_sub(abnormal_used);
    let node_left = limits.per_node.saturating_sub(node_used);
    if node_left == 0 {
        return Err(Error::ProfileQuota {
            which: format!(
                "the node's profiles already take {node_used} bytes of the agent's {} byte quota",
                limits.per_node
            ),
        });
    }
    if abnormal_left == 0 {
        return Err(Error::ProfileQuota {
            which: format!(
                "this Abnormal's profiles already take {abnormal_used} bytes of the {} bytes one Abnormal may keep",
                limits.per_abnormal
            ),
        });
    }
    Ok(per_profile.min(abnormal_left).min(node_left))
}

/// Bytes of the regular files below `dir`, at any depth; 0 when it does not exist.
fn used_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => used_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

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

    /// Bytes a new profile `name` of `abnormal` may take (see [`room`]); the profile it replaces,
    /// if any, does not count.
    pub(super) async fn room_for(
        &self,
        abnormal: &Abnormal,
        name: &str,
        per_profile: u64,
    ) -> Result<u64, Error> {
        let (file, _) = self.location(abnormal, name);
        let profiles = self.data_root.join("profiles");
        let (abnormal_used, node_used) = tokio::task::spawn_blocking(move || {
            let replaced = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            let dir = file.parent().map(used_bytes).unwrap_or(0);
            (
                dir.saturating_sub(replaced),
                used_bytes(&profiles).saturating_sub(replaced),
            )
        })
        .await
        .unwrap_or((0, 0));
        room(per_profile, abnormal_used, node_used, &self.limits)
    }

    /// Writes a result under its per-Abnormal path (through a temporary file, so a half-written
    /// one is never served) and returns that path.
    pub(super) async fn store(
        &self,
        abnormal: &Abnormal,
        name: &str,
        body: &[u8],
    ) -> Result<String, Error> {
        let room = self.room_for(abnormal, name, body.len() as u64).await?;
        if (body.len() as u64) > room {
            return Err(Error::ProfileQuota {
                which: format!(
                    "the result is {} bytes and only {room} are left of what this Abnormal and this node may keep",
                    body.len()
                ),
            });
        }
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
    /// returns those deleted. A profile is at most SWEEP_INTERVAL late to go.
    pub async fn sweep_expired(&self, now_unix: i64) -> Vec<ExpiredProfile> {
        let (profiles, markers) = (
            self.data_root.join("profiles"),
            self.data_root.join("profile-expiry"),
        );
        tokio::task::spawn_blocking(move || sweep(&profiles, &markers, now_unix))
            .await
            .unwrap_or_default()
    }

    /// Says in each Abnormal whose profiles were deleted that they expired: their
    /// `status.profilers[].endpoint` becomes `expired`, as Kube Diagnoser wrote it, instead of a
    /// URL that answers 404. Best effort: an Abnormal that is gone or cannot be written is logged
    /// and left.
    pub async fn mark_expired(&self, expired: &[ExpiredProfile]) {
        let Some(client) = &self.client else {
            return;
        };
        for e in expired {
            let api: kube::Api<Abnormal> = kube::Api::namespaced(client.clone(), &e.namespace);
            let suffix = format!("/profiles/{}/{}/{}", e.namespace, e.abnormal, e.profile);
            // A lost race with another status write is tried again, a few times.
            for _attempt in 0..3 {
                let Ok(Some(current)) = api.get_opt(&e.abnormal).await else {
                    break;
                };
                let mut profilers = current
                    .status
                    .as_ref()
                    .map(|s| s.profilers.clone())
                    .unwrap_or_default();
                let mut changed = false;
                for p in profilers
                    .iter_mut()
                    .filter(|p| p.endpoint.ends_with(&suffix))
                {
                    p.endpoint = EXPIRED_ENDPOINT.into();
                    changed = true;
                }
                if !changed {
                    break;
                }
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": current.metadata.resource_version},
                    "status": {"profilers": profilers},
                });
                match api
                    .patch_status(
                        &e.abnormal,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                {
                    Ok(_) => break,
                    Err(err) if kdiag_runtime::error::is_conflict(&err) => continue,
                    Err(err) => {
                        tracing::warn!(abnormal = %format!("{}/{}", e.namespace, e.abnormal), error = %err, "cannot mark an expired profile's endpoint");
                        break;
                    }
                }
            }
        }
    }
}

/// What `status.profilers[].endpoint` says once the profile is deleted.
pub const EXPIRED_ENDPOINT: &str = "expired";

/// A profile the sweep deleted: profiles/<namespace>/<abnormal>/<profile>.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredProfile {
    pub namespace: String,
    pub abnormal: String,
    pub profile: String,
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
fn sweep(profiles: &Path, markers: &Path, now_unix: i64) -> Vec<ExpiredProfile> {
    let mut deleted = Vec::new();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
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
                        Ok(()) => deleted.push(ExpiredProfile {
                            namespace: name(&ns),
                            abnormal: name(&abnormal),
                            profile: name(&marker),
                        }),
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
            limits: ProfileLimits::default(),
            go_file_dirs: Vec::new(),
        };
        let root = dir.path().join("profiles/ns/ab");
        std::fs::create_dir_all(&root).unwrap();
        for name in ["old", "new"] {
            std::fs::write(root.join(name), b"profile").unwrap();
        }
        p.record_expiry(&root.join("old"), 100).await.unwrap();
        p.record_expiry(&root.join("new"), 200).await.unwrap();
        assert_eq!(
            p.sweep_expired(150).await,
            vec![ExpiredProfile {
                namespace: "ns".into(),
                abnormal: "ab".into(),
                profile: "old".into()
            }]
        );
        assert!(!root.join("old").exists());
        assert!(root.join("new").exists(), "not expired yet");
        assert_eq!(p.sweep_expired(250).await.len(), 1);
        assert!(
            !dir.path().join("profiles/ns/ab").exists(),
            "empty directories go too"
        );
    }
}

#[cfg(test)]
mod quota_tests {
    use super::*;

    const LIMITS: ProfileLimits = ProfileLimits {
        per_abnormal: 100,
        per_node: 1000,
    };

    #[test]
    fn a_profile_gets_the_least_of_its_cap_its_abnormals_room_and_the_nodes() {
        assert_eq!(room(64, 0, 0, &LIMITS).unwrap(), 64);
        assert_eq!(room(64, 60, 0, &LIMITS).unwrap(), 40, "the Abnormal's room");
        assert_eq!(room(64, 0, 990, &LIMITS).unwrap(), 10, "the node's room");
    }

    #[test]
    fn a_full_abnormal_or_node_refuses_and_says_which() {
        let e = room(64, 100, 0, &LIMITS).unwrap_err().to_string();
        assert!(
            e.contains("this Abnormal's profiles already take 100 bytes"),
            "{e}"
        );
        let e = room(64, 0, 1000, &LIMITS).unwrap_err().to_string();
        assert!(
            e.contains("the node's profiles already take 1000 bytes"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn usage_counts_every_file_below_the_profiles_and_not_the_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profilers {
            data_root: dir.path().to_owned(),
            public_url: String::new(),
            proc_root: "/proc".into(),
            client: None,
            limits: LIMITS,
            go_file_dirs: Vec::new(),
        };
        let a: Abnormal = serde_json::from_value(serde_json::json!({
            "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
            "metadata": {"name": "ab", "namespace": "ns"}, "spec": {"nodeName": "n"}}))
        .unwrap();
        let mine = dir.path().join("profiles/ns/ab");
        let other = dir.path().join("profiles/ns/other");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(mine.join("heap"), [0u8; 30]).unwrap();
        std::fs::write(mine.join("threads"), [0u8; 50]).unwrap();
        std::fs::write(other.join("heap"), [0u8; 900]).unwrap();
        // Replacing "heap": 50 of the Abnormal's 100 used, 950 of the node's 1000.
        assert_eq!(p.room_for(&a, "heap", 64).await.unwrap(), 50);
        // A new profile: 80 and 980 used.
        assert_eq!(p.room_for(&a, "cpu", 64).await.unwrap(), 20);
        let e = p
            .store(&a, "cpu", &[0u8; 21])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("only 20 are left"), "{e}");
        assert!(!mine.join("cpu").exists(), "nothing written");
        p.store(&a, "cpu", &[0u8; 20]).await.unwrap();
    }
}
