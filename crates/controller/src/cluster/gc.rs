//! Garbage collection of finished Abnormals: by age (TTL) and by a per-node maximum.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kdiag_api::Abnormal;
use kdiag_api::labels::NODE_LABEL;
use kube::ResourceExt;

/// What GC needs to know of one Abnormal.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The routing label value ("" for Abnormals rejected before routing).
    pub node: String,
    pub finished_at: Timestamp,
}

/// Why an Abnormal is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Ttl,
    PerNodeLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ttl => "ttl",
            Self::PerNodeLimit => "per-node-limit",
        }
    }
}

/// The Abnormal as GC sees it, if it is finished. Its end is the latest time its status records.
pub fn finished(a: &Abnormal) -> Option<Finished> {
    let status = a.status.as_ref()?;
    if !status.phase.is_some_and(|p| p.is_final()) {
        return None;
    }
    let finished_at = status
        .conditions
        .iter()
        .filter_map(|c| c.last_transition_time.as_ref())
        .chain(status.start_time.as_ref())
        .chain(a.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
        .max()?;
    Some(Finished {
        namespace: a.namespace().unwrap_or_default(),
        name: a.name_any(),
        uid: a.uid().unwrap_or_default(),
        node: a.labels().get(NODE_LABEL).cloned().unwrap_or_default(),
        finished_at,
    })
}

/// Picks what to delete: everything finished longer than `ttl` ago, then, per node, the oldest
/// beyond the newest `max_per_node`.
pub fn select(
    items: &[Finished],
    now: Timestamp,
    ttl: Duration,
    max_per_node: usize,
) -> Vec<(Finished, Reason)> {
    let mut out = Vec::new();
    let mut by_node: BTreeMap<&str, Vec<&Finished>> = BTreeMap::new();
    for f in items {
        let age = now.duration_since(f.finished_at);
        if age.as_secs_f64() > ttl.as_secs_f64() {
            out.push((f.clone(), Reason::Ttl));
        } else {
            by_node.entry(&f.node).or_default().push(f);
        }
    }
    for (_, mut list) in by_node {
        if list.len() > max_per_node {
            // Newest first; ties by name so the choice is stable.
            list.sort_by(|a, b| {
                b.finished_at
                    .cmp(&a.finished_at)
                    .then_with(|| a.name.cmp(&b.name))
            });
            out.extend(
                list.into_iter()
                    .skip(max_per_node)
                    .map(|f| (f.clone(), Reason::PerNodeLimit)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, node: &str, minutes_ago: i64, now: Timestamp) -> Finished {
        Finished {
            namespace: "ns".into(),
            name: name.into(),
            uid: name.into(),
            node: node.into(),
            finished_at: now - jiff::SignedDuration::from_mins(minutes_ago),
        }
    }

    #[test]
    fn abnormals_older_than_the_ttl_are_collected() {
        let now = Timestamp::now();
        let items = [f("old", "n1", 120, now), f("new", "n1", 5, now)];
        let picked = select(&items, now, Duration::from_secs(3600), 100);
        assert_eq!(
            picked
                .iter()
                .map(|(f, r)| (f.name.as_str(), *r))
                .collect::<Vec<_>>(),
            [("old", Reason::Ttl)]
        );
    }

    #[test]
    fn each_node_keeps_only_its_newest_abnormals() {
        let now = Timestamp::now();
        let items = [
            f("a", "n1", 3, now),
            f("b", "n1", 2, now),
            f("c", "n1", 1, now),
            f("x", "n2", 9, now),
        ];
        let picked = select(&items, now, Duration::from_secs(3600), 2);
        assert_eq!(
            picked
                .iter()
                .map(|(f, r)| (f.name.as_str(), *r))
                .collect::<Vec<_>>(),
            [("a", Reason::PerNodeLimit)]
        );
    }
}
