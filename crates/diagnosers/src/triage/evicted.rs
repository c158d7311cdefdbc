//! Evictions: the kubelet ended the pod to protect the node or enforce a limit. The pod's
//! status.reason is Evicted and status.message names the resource and the limit.

use super::facts::Facts;
use super::finding::{self, Finding, Rank, quote};

/// `Usage of EmptyDir volume "scratch" exceeds the limit "1Mi".` → (scratch, 1Mi).
fn empty_dir(message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("Usage of EmptyDir volume \"")?;
    let (volume, rest) = rest.split_once('"')?;
    let limit = rest.split_once("limit \"")?.1.split_once('"')?.0;
    Some((volume.to_owned(), limit.to_owned()))
}

/// `The node was low on resource: memory.` → memory.
fn node_resource(message: &str) -> Option<String> {
    let rest = message.split_once("low on resource: ")?.1;
    Some(rest.split(['.', ' ', ',']).next().unwrap_or("").to_owned())
}

pub fn check(f: &Facts) -> Vec<Finding> {
    let status = f.pod().status.as_ref();
    if status.and_then(|s| s.reason.as_deref()) != Some("Evicted") {
        return Vec::new();
    }
    let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
    let object = f.object();
    let node = f
        .pod()
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let owner = f
        .detail
        .owners
        .first()
        .map(|o| {
            format!(
                " {} {} will replace it elsewhere if it can;",
                o.kind, o.name
            )
        })
        .unwrap_or_else(|| " nothing replaces a bare pod;".into());
    let (reason, what, suggestion) = if let Some((volume, limit)) = empty_dir(&message) {
        (
            "EmptyDirSizeLimitExceeded",
            format!("its emptyDir volume {volume} grew past its sizeLimit {limit}"),
            format!(
                "The pod wrote more than {limit} into emptyDir {volume}: raise sizeLimit to what it really needs, clean up what it writes there (logs, temp files, caches), or use a PersistentVolume for data that grows.{owner} delete the evicted pod once read (kubectl delete pod -n {} {}).",
                f.namespace(),
                f.name()
            ),
        )
    } else if message.contains("local ephemeral storage")
        || message.contains("ephemeral local storage")
    {
        let limit = message
            .rsplit_once("limit of containers ")
            .map(|(_, l)| l.trim().trim_end_matches('.').to_owned())
            .or_else(|| {
                message
                    .split_once("limit \"")
                    .and_then(|(_, r)| r.split_once('"'))
                    .map(|(l, _)| l.to_owned())
            })
            .unwrap_or_else(|| "its limit".into());
        (
            "EphemeralStorageLimitExceeded",
            format!(
                "its containers wrote more local storage (logs, writable layer, emptyDirs) than the ephemeral-storage limit {limit}"
            ),
            format!(
                "Raise resources.limits.ephemeral-storage above what the pod writes (its container logs, files in the writable layer and emptyDirs count), or write less: log less, clean temp files, put data on a volume.{owner}"
            ),
        )
    } else if let Some(resource) = node_resource(&message) {
        (
            "EvictedNodePressure",
            format!(
                "node {node} ran low on {resource} and the kubelet evicted it ({})",
                quote(&message, 200)
            ),
            format!(
                "Node {node} was short of {resource}: pods using more than they request are evicted first. Set {resource} requests close to real use so the scheduler places pods where they fit, and find what fills the node (the node's top consumers below, kubectl top pods).{owner}"
            ),
        )
    } else if message.contains("had condition") {
        (
            "EvictedNodePressure",
            format!(
                "node {node} was under pressure when the pod arrived: {}",
                quote(&message, 200)
            ),
            format!(
                "Node {node} refused the pod because of its condition: fix the node's pressure (disk, memory or pids), or let the scheduler place it elsewhere."
            ),
        )
    } else {
        (
            "Evicted",
            format!("the kubelet evicted it: {}", quote(&message, 200)),
            format!(
                "Read the eviction message and the node's conditions; the pod must be recreated.{owner}"
            ),
        )
    };
    let evicted_at = f
        .pod()
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0))
                .max()
        });
    let mut finding = Finding::new(
        reason,
        Rank::Definite,
        format!("pod {} was evicted from node {node}: {what}", f.key()),
        suggestion,
    )
    .with(finding::status(
        &object,
        format!(
            "status.phase Failed, status.reason Evicted, status.message: {}",
            message.trim()
        ),
        evicted_at,
    ));
    for e in f.events_with("Evicted") {
        finding = finding.with_event(e, &object);
    }
    vec![finding]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_messages_name_the_resource_and_limit() {
        assert_eq!(
            empty_dir("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "),
            Some(("scratch".into(), "1Mi".into()))
        );
        assert_eq!(
            node_resource(
                "The node was low on resource: memory. Container app was using 1Mi, which exceeds its request of 0. "
            ),
            Some("memory".into())
        );
        assert_eq!(
            node_resource("The node was low on resource: ephemeral-storage. "),
            Some("ephemeral-storage".into())
        );
    }
}
