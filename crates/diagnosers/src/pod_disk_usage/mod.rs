//! `pod-disk-usage-diagnoser`: which pods fill the kubelet's filesystem, and whether one is over
//! a limit, over a given threshold, or the filesystem itself is under pressure.
//!
//! Every pod directory (`<kubelet root>/pods/<uid>`, and directories left behind by pods that
//! are gone) is measured in one parallel walk, each emptyDir volume on its own so it can be held
//! against its sizeLimit. Writes `podDiskUsageDiagnosis` (the top N, Kube Diagnoser's
//! `[{metadata, diskUsage, path}]` plus kdiag's fields) whatever it finds.

pub mod rules;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kdiag_api::context_keys::POD_DISK_USAGE_DIAGNOSIS;
use kdiag_api::plugin::{Processor, ProcessorContext, ProcessorError, ProcessorOutput};
use kdiag_api::{Abnormal, RootCause};
use kdiag_collectors::budget::{Deadline, blocking, cap_list, output_budget, truncated_key};
use kdiag_collectors::du::{self, Usage, WalkRoot};
use kdiag_collectors::mounts;
use kdiag_collectors::quantity::bytes as quantity_bytes;
use serde_json::{Value, json};

use crate::pods;
use crate::quantity::human;
pub use rules::{EmptyDirUsage, Filesystem, Finding, PodUsage, Settings};

/// Context input: a pod using more bytes than this is a finding (a number or a quantity such
/// as "10Gi").
pub const THRESHOLD_KEY: &str = "podDiskUsageThreshold";
/// Context input: how many pods podDiskUsageDiagnosis lists (default 10).
pub const TOP_N_KEY: &str = "podDiskUsageTopN";
/// Context input: percent of bytes or inodes used above which the filesystem is under pressure
/// (default 90).
pub const PRESSURE_PERCENT_KEY: &str = "podDiskUsagePressurePercent";
const MAX_TOP_N: usize = 200;

pub struct PodDiskUsageDiagnoser;

impl Processor for PodDiskUsageDiagnoser {
    fn name(&self) -> &'static str {
        "pod-disk-usage-diagnoser"
    }

    fn process<'a>(
        &'a self,
        ctx: &'a ProcessorContext,
        abnormal: &'a Abnormal,
    ) -> BoxFuture<'a, Result<ProcessorOutput, ProcessorError>> {
        async move {
            let deadline = Deadline::within(ctx.timeout);
            let settings = settings(abnormal)?;
            let (pods, source) = pods::node_pods(ctx, abnormal).await?;
            let pods_dir = ctx.node.kubelet_root.join("pods");
            if !pods_dir.is_dir() {
                return Err(ProcessorError::Failed(format!(
                    "{} is not a directory: is the kubelet's root {}? Set the agent's --kubelet-root (and mount it into the agent)",
                    pods_dir.display(),
                    ctx.node.kubelet_root.display()
                )));
            }
            let measured = {
                let pods_dir = pods_dir.clone();
                blocking("the pod directory walk", move || {
                    measure(&pods_dir, &pods, deadline)
                })
                .await??
            };
            let fs = Filesystem {
                path: ctx.node.kubelet_root.clone(),
                capacity: mounts::capacity(&pods_dir).map_err(ProcessorError::Failed)?,
            };
            conclude(&measured, &fs, &settings, source, ctx.max_output_bytes)
        }
        .boxed()
    }
}

fn settings(abnormal: &Abnormal) -> Result<Settings, ProcessorError> {
    let mut s = Settings {
        focus: abnormal.spec.pod_reference.as_ref().map(|p| {
            let ns = if p.namespace.is_empty() {
                abnormal.metadata.namespace.clone().unwrap_or_default()
            } else {
                p.namespace.clone()
            };
            format!("{ns}/{}", p.name)
        }),
        ..Settings::default()
    };
    if let Some(v) = abnormal.context_value(THRESHOLD_KEY) {
        let bytes = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(q) => quantity_bytes(q),
            _ => None,
        };
        s.threshold = Some(bytes.ok_or_else(|| {
            ProcessorError::InvalidInput(format!(
                "context key {THRESHOLD_KEY} is {v}: give bytes as a number or a quantity such as \"10Gi\""
            ))
        })?);
    }
    if let Some(n) = abnormal.context_as::<usize>(TOP_N_KEY)? {
        s.top_n = n.clamp(1, MAX_TOP_N);
    }
    if let Some(p) = abnormal.context_as::<f64>(PRESSURE_PERCENT_KEY)? {
        if !(0.0..=100.0).contains(&p) {
            return Err(ProcessorError::InvalidInput(format!(
                "context key {PRESSURE_PERCENT_KEY} is {p}: give a percentage between 0 and 100"
            )));
        }
        s.pressure_percent = p;
    }
    Ok(s)
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Measured {
    /// Largest first.
    pub pods: Vec<PodUsage>,
    /// Pod metadata by UID, for podDiskUsageDiagnosis.
    pub metadata: BTreeMap<String, Value>,
    pub problems: Vec<String>,
    pub complete: bool,
}

/// Measures every pod's directory (and orphaned ones) under `pods_dir` in one walk.
pub fn measure(
    pods_dir: &Path,
    pods: &[Pod],
    deadline: Deadline,
) -> Result<Measured, ProcessorError> {
    struct Plan {
        usage: PodUsage,
        /// Index of the pod directory's root, then of each emptyDir's.
        root: usize,
        empty_dirs: Vec<usize>,
    }
    let mut roots = Vec::new();
    let mut plans = Vec::new();
    let mut metadata = BTreeMap::new();
    let mut known = HashSet::new();
    for pod in pods {
        let Some(uid) = pods::uid(pod) else { continue };
        known.insert(uid.to_owned());
        let dir = pods_dir.join(uid);
        let mut usage = PodUsage {
            key: pods::key(pod),
            uid: uid.to_owned(),
            path: dir.clone(),
            ephemeral_limit: ephemeral_limit(pod),
            ..Default::default()
        };
        let mut exclude = Vec::new();
        let mut empty_dirs = Vec::new();
        for (name, size_limit) in empty_dirs_of(pod) {
            let path = dir.join("volumes/kubernetes.io~empty-dir").join(&name);
            exclude.push(path.clone());
            empty_dirs.push(roots.len());
            roots.push(WalkRoot::new(path.clone()));
            usage.empty_dirs.push(EmptyDirUsage {
                name,
                path,
                bytes: 0,
                size_limit,
            });
        }
        let root = roots.len();
        roots.push(WalkRoot { path: dir, exclude });
        metadata.insert(
            uid.to_owned(),
            json!({
                "name": pod.metadata.name,
                "namespace": pod.metadata.namespace,
                "uid": uid,
            }),
        );
        plans.push(Plan {
            usage,
            root,
            empty_dirs,
        });
    }
    // Directories of pods the node no longer runs still take space until the kubelet removes
    // them (it cannot while a volume is still mounted).
    let mut problems = Vec::new();
    match std::fs::read_dir(pods_dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if known.contains(&name) || !e.path().is_dir() {
                    continue;
                }
                let root = roots.len();
                roots.push(WalkRoot::new(e.path()));
                metadata.insert(name.clone(), json!({"uid": name}));
                plans.push(Plan {
                    usage: PodUsage {
                        key: format!("orphaned/{name}"),
                        uid: name,
                        path: e.path(),
                        orphaned: true,
                        ..Default::default()
                    },
                    root,
                    empty_dirs: Vec::new(),
                });
            }
        }
        Err(e) => problems.push(format!("listing {}: {e}", pods_dir.display())),
    }
    let usage: Vec<Usage> = du::walk(&roots, du::default_threads(), deadline);
    let mut complete = true;
    let mut out = Vec::new();
    for plan in plans {
        let mut p = plan.usage;
        let root = &usage[plan.root];
        p.bytes = root.allocated_bytes;
        p.apparent_bytes = root.apparent_bytes;
        p.files = root.files;
        p.complete = root.complete;
        problems.extend(root.problems.items.iter().cloned());
        for (dir, i) in p.empty_dirs.iter_mut().zip(&plan.empty_dirs) {
            let u = &usage[*i];
            dir.bytes = u.allocated_bytes;
            p.bytes += u.allocated_bytes;
            p.apparent_bytes += u.apparent_bytes;
            p.files += u.files;
            p.complete &= u.complete;
            problems.extend(u.problems.items.iter().cloned());
        }
        // A pod whose directory does not exist (not started yet, or on another node's data)
        // uses nothing here: leave it out rather than list zeros.
        if !root.exists {
            continue;
        }
        complete &= p.complete;
        out.push(p);
    }
    out.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.key.cmp(&b.key)));
    problems.truncate(20);
    Ok(Measured {
        pods: out,
        metadata,
        problems,
        complete,
    })
}

/// emptyDir volumes on disk (medium Memory is tmpfs: not the kubelet's disk), with their
/// sizeLimit.
fn empty_dirs_of(pod: &Pod) -> Vec<(String, Option<u64>)> {
    let Some(volumes) = pod.spec.as_ref().and_then(|s| s.volumes.as_ref()) else {
        return Vec::new();
    };
    volumes
        .iter()
        .filter_map(|v| {
            let e = v.empty_dir.as_ref()?;
            if e.medium.as_deref() == Some("Memory") {
                return None;
            }
            Some((
                v.name.clone(),
                e.size_limit.as_ref().and_then(|q| quantity_bytes(&q.0)),
            ))
        })
        .collect()
}

/// The sum of the containers' ephemeral-storage limits, as the kubelet holds a pod to; `None`
/// when no container has one.
fn ephemeral_limit(pod: &Pod) -> Option<u64> {
    let containers = &pod.spec.as_ref()?.containers;
    let limits: Vec<u64> = containers
        .iter()
        .filter_map(|c| {
            let q = c
                .resources
                .as_ref()?
                .limits
                .as_ref()?
                .get("ephemeral-storage")?;
            quantity_bytes(&q.0)
        })
        .collect();
    (!limits.is_empty()).then(|| limits.iter().sum())
}

/// The compatibility list, the root cause or the non-identification.
pub fn conclude(
    m: &Measured,
    fs: &Filesystem,
    s: &Settings,
    source: pods::Source,
    max_output_bytes: usize,
) -> Result<ProcessorOutput, ProcessorError> {
    let top: Vec<Value> = m
        .pods
        .iter()
        .take(s.top_n)
        .map(|p| {
            json!({
                "metadata": m.metadata.get(&p.uid).cloned().unwrap_or(json!({"uid": p.uid})),
                "diskUsage": p.bytes,
                "path": p.path,
                "sharePercent": share_percent(p.bytes, fs.capacity.size_bytes),
                "apparentBytes": p.apparent_bytes,
                "files": p.files,
                "emptyDirs": p.empty_dirs.iter().map(|d| json!({
                    "name": d.name, "diskUsage": d.bytes, "sizeLimit": d.size_limit,
                })).collect::<Vec<_>>(),
                "ephemeralStorageLimit": p.ephemeral_limit,
                "orphaned": p.orphaned,
                "complete": p.complete,
            })
        })
        .collect();
    let (kept, truncation) = cap_list(&top, output_budget(max_output_bytes));
    let mut out =
        ProcessorOutput::default().with_context(POD_DISK_USAGE_DIAGNOSIS, Value::Array(kept));
    if let Some(t) = truncation {
        out = out.with_context(
            &truncated_key(POD_DISK_USAGE_DIAGNOSIS),
            serde_json::to_value(t).unwrap_or_default(),
        );
    }
    let findings = rules::findings(&m.pods, fs, s);
    let partial = if m.complete {
        String::new()
    } else {
        "; the time budget ran out before every directory was walked, so sizes are lower bounds"
            .into()
    };
    let c = &fs.capacity;
    if findings.is_empty() {
        let largest = m
            .pods
            .first()
            .map(|p| format!("the largest is {} with {}", p.key, human(p.bytes)))
            .unwrap_or_else(|| "none holds any data".into());
        let threshold = match s.threshold {
            Some(t) => format!("none over the threshold of {}", human(t)),
            None => format!("no threshold given (set {THRESHOLD_KEY})"),
        };
        let problems = if m.problems.is_empty() {
            String::new()
        } else {
            format!(
                "; {} unreadable entries skipped (first: {})",
                m.problems.len(),
                m.problems[0]
            )
        };
        return Err(ProcessorError::NotIdentified(format!(
            "checked {} pod directories under {} (pods from {}): {largest}; none over its ephemeral-storage limit or an emptyDir sizeLimit; {threshold}; the filesystem is {:.1}% full with {:.1}% of inodes used, under the {:.0}% pressure mark{partial}{problems}",
            m.pods.len(),
            fs.path.join("pods").display(),
            source.describe(),
            c.used_percent,
            c.inodes_used_percent,
            s.pressure_percent,
        )));
    }
    let first = &findings[0];
    let more = if findings.len() > 1 {
        format!(" (and {} more findings)", findings.len() - 1)
    } else {
        String::new()
    };
    let evidence = findings
        .iter()
        .flat_map(|f| f.evidence.iter().cloned())
        .collect();
    out.message = format!("{}: {}{more}{partial}", first.reason, first.summary);
    Ok(out.with_root_cause(RootCause {
        summary: format!("{}{more}", first.summary),
        reason: first.reason.into(),
        processor: String::new(),
        suggestion: first.suggestion.clone(),
        evidence,
        ..Default::default()
    }))
}

/// Share of the filesystem in percent, to a thousandth: a pod worth noting on a large disk can
/// be well under 0.1%.
fn share_percent(bytes: u64, size: u64) -> f64 {
    if size == 0 {
        return 0.0;
    }
    (bytes as f64 / size as f64 * 100_000.0).round() / 1000.0
}
