//! What counts as a disk-usage problem: pure rules over measured pod directories.

use std::path::PathBuf;

use kdiag_api::Evidence;
use kdiag_api::context_keys::POD_DISK_USAGE_DIAGNOSIS;
use kdiag_collectors::mounts::{Capacity, percent};

use crate::quantity::human;

/// An emptyDir volume of a pod and what it holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmptyDirUsage {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub size_limit: Option<u64>,
}

/// One pod directory under `<kubelet root>/pods`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodUsage {
    /// `namespace/name`, or the UID of an orphaned directory.
    pub key: String,
    pub uid: String,
    pub path: PathBuf,
    /// Bytes allocated on disk by the whole directory, emptyDirs included.
    pub bytes: u64,
    pub apparent_bytes: u64,
    pub files: u64,
    pub empty_dirs: Vec<EmptyDirUsage>,
    /// The sum of its containers' ephemeral-storage limits, when any container has one.
    pub ephemeral_limit: Option<u64>,
    /// False when the time budget stopped the walk: the bytes are a lower bound.
    pub complete: bool,
    /// A directory with no pod of that UID on the node.
    pub orphaned: bool,
}

/// The filesystem holding the pod directories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filesystem {
    pub path: PathBuf,
    pub capacity: Capacity,
}

/// Tunables from the Abnormal's context.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// `podDiskUsageThreshold`: a pod using more is a finding.
    pub threshold: Option<u64>,
    /// `podDiskUsagePressurePercent`: a filesystem (bytes or inodes) fuller than this is under
    /// pressure. Default 90.
    pub pressure_percent: f64,
    /// `podDiskUsageTopN`: how many pods podDiskUsageDiagnosis lists. Default 10.
    pub top_n: usize,
    /// The Abnormal's pod (namespace/name), when it names one: findings about it come first.
    pub focus: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            threshold: None,
            pressure_percent: 90.0,
            top_n: 10,
            focus: None,
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub reason: &'static str,
    pub summary: String,
    pub suggestion: String,
    pub evidence: Vec<Evidence>,
}

fn share(bytes: u64, fs: &Filesystem) -> String {
    format!(
        "{:.1}% of the filesystem",
        percent(bytes, fs.capacity.size_bytes)
    )
}

fn evidence(pod: &PodUsage, message: String) -> Evidence {
    Evidence {
        kind: "DiskUsage".into(),
        message,
        object: if pod.orphaned {
            String::new()
        } else {
            format!("pod/{}", pod.key)
        },
        context_key: POD_DISK_USAGE_DIAGNOSIS.into(),
        timestamp: None,
    }
}

/// The findings, most severe first: a pod over a limit the kubelet enforces (it will be
/// evicted), then over the given threshold, then a filesystem under pressure.
pub fn findings(pods: &[PodUsage], fs: &Filesystem, s: &Settings) -> Vec<Finding> {
    let mut out = Vec::new();
    for pod in pods {
        if let Some(limit) = pod.ephemeral_limit
            && pod.bytes > limit
        {
            out.push(Finding {
                reason: "EphemeralStorageLimitExceeded",
                summary: format!(
                    "pod {} uses {} in {}, over its ephemeral-storage limit of {} ({})",
                    pod.key,
                    human(pod.bytes),
                    pod.path.display(),
                    human(limit),
                    share(pod.bytes, fs)
                ),
                suggestion: "The kubelet evicts a pod over its ephemeral-storage limit. Find what it writes (kubectl exec … -- du -sh <dirs>), clean up in the application, or raise the containers' limits.".into(),
                evidence: vec![evidence(
                    pod,
                    format!(
                        "{} bytes allocated under {}; limit (sum of container limits) {} bytes",
                        pod.bytes,
                        pod.path.display(),
                        limit
                    ),
                )],
            });
        }
        for dir in &pod.empty_dirs {
            if let Some(limit) = dir.size_limit
                && dir.bytes > limit
            {
                out.push(Finding {
                    reason: "EmptyDirSizeLimitExceeded",
                    summary: format!(
                        "pod {} holds {} in emptyDir {}, over its sizeLimit of {} ({})",
                        pod.key,
                        human(dir.bytes),
                        dir.name,
                        human(limit),
                        share(dir.bytes, fs)
                    ),
                    suggestion: format!(
                        "The kubelet evicts a pod whose emptyDir exceeds its sizeLimit. Find what fills volume {} and clean it up in the application, or raise the sizeLimit.",
                        dir.name
                    ),
                    evidence: vec![evidence(
                        pod,
                        format!(
                            "{} bytes allocated under {}; sizeLimit {} bytes",
                            dir.bytes,
                            dir.path.display(),
                            limit
                        ),
                    )],
                });
            }
        }
    }
    if let Some(threshold) = s.threshold {
        let mut over: Vec<&PodUsage> = pods.iter().filter(|p| p.bytes > threshold).collect();
        over.sort_by_key(|p| std::cmp::Reverse(p.bytes));
        for pod in over {
            let biggest = pod.empty_dirs.iter().max_by_key(|d| d.bytes);
            let location = match biggest {
                Some(d) if d.bytes * 2 > pod.bytes => {
                    format!("; most of it in emptyDir {} ({})", d.name, human(d.bytes))
                }
                _ => String::new(),
            };
            let who = if pod.orphaned {
                format!(
                    "orphaned pod directory {} (no pod with this UID on the node)",
                    pod.uid
                )
            } else {
                format!("pod {}", pod.key)
            };
            out.push(Finding {
                reason: "PodDiskUsageOverThreshold",
                summary: format!(
                    "{who} uses {} under {}, over the threshold of {} ({}){location}",
                    human(pod.bytes),
                    pod.path.display(),
                    human(threshold),
                    share(pod.bytes, fs)
                ),
                suggestion: "Find what the pod writes to its volumes (kubectl exec … -- du -sh <mount>), clean up in the application, or set an ephemeral-storage limit or emptyDir sizeLimit so the kubelet enforces a bound.".into(),
                evidence: vec![evidence(
                    pod,
                    format!(
                        "{} bytes allocated under {} ({} files); threshold podDiskUsageThreshold {} bytes",
                        pod.bytes,
                        pod.path.display(),
                        pod.files,
                        threshold
                    ),
                )],
            });
        }
    }
    let c = &fs.capacity;
    let bytes_full = c.used_percent > s.pressure_percent;
    let inodes_full = c.inodes_used_percent > s.pressure_percent;
    if bytes_full || inodes_full {
        let what = match (bytes_full, inodes_full) {
            (true, true) => format!(
                "{:.1}% full and {:.1}% of its inodes used",
                c.used_percent, c.inodes_used_percent
            ),
            (true, false) => format!("{:.1}% full", c.used_percent),
            _ => format!("out of inodes ({:.1}% used)", c.inodes_used_percent),
        };
        let top = if inodes_full && !bytes_full {
            pods.iter().max_by_key(|p| p.files)
        } else {
            pods.iter().max_by_key(|p| p.bytes)
        };
        let blame = match top {
            Some(p) if inodes_full && !bytes_full => {
                format!(
                    "; the pod directory with most files is {} ({} files)",
                    p.key, p.files
                )
            }
            Some(p) => format!(
                "; the largest pod directory is {} with {} ({})",
                p.key,
                human(p.bytes),
                share(p.bytes, fs)
            ),
            None => "; no pod directory holds much of it".into(),
        };
        let mut ev = vec![Evidence {
            kind: "Filesystem".into(),
            message: format!(
                "{}: {} of {} used ({:.1}%), {} of {} inodes used ({:.1}%); pressure above {:.0}%",
                fs.path.display(),
                human(c.used_bytes),
                human(c.size_bytes),
                c.used_percent,
                c.inodes_used,
                c.inodes,
                c.inodes_used_percent,
                s.pressure_percent
            ),
            object: String::new(),
            context_key: POD_DISK_USAGE_DIAGNOSIS.into(),
            timestamp: None,
        }];
        if let Some(p) = top {
            ev.push(evidence(
                p,
                format!(
                    "{} bytes, {} files under {}",
                    p.bytes,
                    p.files,
                    p.path.display()
                ),
            ));
        }
        out.push(Finding {
            reason: if bytes_full { "FilesystemPressure" } else { "InodePressure" },
            summary: format!("the filesystem of {} is {what}{blame}", fs.path.display()),
            suggestion: "Free space on the kubelet's filesystem: clean up the largest pod directories listed in podDiskUsageDiagnosis, unused images (crictl rmi --prune) and old logs; the kubelet starts evicting pods at its DiskPressure threshold.".into(),
                        evidence: ev,
        });
    }
    // An Abnormal about one pod asks about that pod: its findings lead, in their own order, and
    // the rest of the node's follow (a stable sort).
    if let Some(focus) = &s.focus {
        let object = format!("pod/{focus}");
        out.sort_by_key(|f| !f.evidence.iter().any(|e| e.object == object));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn fs(used_percent: f64, inodes_used_percent: f64) -> Filesystem {
        Filesystem {
            path: "/var/lib/kubelet".into(),
            capacity: Capacity {
                size_bytes: 10_000 * MIB,
                used_bytes: (100.0 * used_percent) as u64 * MIB,
                used_percent,
                inodes: 1000,
                inodes_used: (10.0 * inodes_used_percent) as u64,
                inodes_used_percent,
                ..Default::default()
            },
        }
    }

    fn pod(key: &str, bytes: u64) -> PodUsage {
        PodUsage {
            key: key.into(),
            uid: "u".into(),
            path: format!("/var/lib/kubelet/pods/{key}").into(),
            bytes,
            files: 3,
            complete: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_node_has_no_findings() {
        let pods = [pod("a/x", 10 * MIB)];
        assert!(findings(&pods, &fs(20.0, 5.0), &Settings::default()).is_empty());
    }

    #[test]
    fn a_pod_over_the_sum_of_its_container_limits_is_found() {
        let mut p = pod("shop/web", 300 * MIB);
        p.ephemeral_limit = Some(200 * MIB);
        let f = findings(&[p], &fs(20.0, 5.0), &Settings::default());
        assert_eq!(f[0].reason, "EphemeralStorageLimitExceeded");
        assert!(f[0].summary.contains("shop/web"), "{}", f[0].summary);
        assert!(f[0].summary.contains("200.0 MiB"), "{}", f[0].summary);
    }

    #[test]
    fn an_emptydir_over_its_size_limit_is_named() {
        let mut p = pod("shop/web", 120 * MIB);
        p.empty_dirs.push(EmptyDirUsage {
            name: "spool".into(),
            path: "/x/spool".into(),
            bytes: 110 * MIB,
            size_limit: Some(100 * MIB),
        });
        let f = findings(&[p], &fs(20.0, 5.0), &Settings::default());
        assert_eq!(f[0].reason, "EmptyDirSizeLimitExceeded");
        assert!(f[0].summary.contains("emptyDir spool"), "{}", f[0].summary);
    }

    #[test]
    fn the_abnormals_own_pod_leads_even_when_another_pod_is_worse() {
        let mut evicted_soon = pod("a/other", 10 * MIB);
        evicted_soon.empty_dirs.push(EmptyDirUsage {
            name: "scratch".into(),
            path: "/x/scratch".into(),
            bytes: 8 * MIB,
            size_limit: Some(MIB),
        });
        let pods = [evicted_soon, pod("a/mine", 60 * MIB)];
        let mut s = Settings {
            threshold: Some(32 * MIB),
            ..Default::default()
        };
        assert_eq!(
            findings(&pods, &fs(20.0, 5.0), &s)[0].reason,
            "EmptyDirSizeLimitExceeded"
        );
        s.focus = Some("a/mine".into());
        let f = findings(&pods, &fs(20.0, 5.0), &s);
        assert_eq!(f[0].reason, "PodDiskUsageOverThreshold");
        assert!(f[0].summary.contains("a/mine"), "{}", f[0].summary);
        assert_eq!(f.len(), 2, "the other pod's finding still follows");
    }

    #[test]
    fn pods_over_the_threshold_are_found_largest_first() {
        let pods = [
            pod("a/small", 60 * MIB),
            pod("a/big", 90 * MIB),
            pod("a/ok", MIB),
        ];
        let s = Settings {
            threshold: Some(50 * MIB),
            ..Default::default()
        };
        let f = findings(&pods, &fs(20.0, 5.0), &s);
        assert_eq!(f.len(), 2);
        assert!(
            f[0].summary.starts_with("pod a/big uses 90.0 MiB"),
            "{}",
            f[0].summary
        );
        assert_eq!(f[0].evidence[0].object, "pod/a/big");
    }

    #[test]
    fn a_full_filesystem_blames_the_largest_pod_and_inode_exhaustion_the_one_with_most_files() {
        let mut many = pod("a/many", MIB);
        many.files = 900;
        let pods = [pod("a/big", 500 * MIB), many];
        let f = findings(&pods, &fs(95.0, 5.0), &Settings::default());
        assert_eq!(f[0].reason, "FilesystemPressure");
        assert!(f[0].summary.contains("a/big"), "{}", f[0].summary);
        let f = findings(&pods, &fs(50.0, 95.0), &Settings::default());
        assert_eq!(f[0].reason, "InodePressure");
        assert!(f[0].summary.contains("a/many"), "{}", f[0].summary);
    }
}
