//! The Event source's memory of open incidents: incident key → its Abnormal and when it was last
//! seen. The store of Abnormals lags behind creations; this does not.
//!
//! Keys come from every object that ever had a Warning Event, so the map is bounded: an incident
//! not seen for twice its group window is forgotten (the Abnormal's last-seen annotation still
//! groups a late repeat), and beyond [`MAX_OPEN`] incidents the least recently seen go.

use std::collections::HashMap;
use std::time::Duration;

use jiff::Timestamp;

/// The most incidents remembered.
pub const MAX_OPEN: usize = 10_000;
/// Old incidents are forgotten every this many inserts.
const PRUNE_EVERY: u32 = 256;

#[derive(Debug, Clone)]
struct Incident {
    namespace: String,
    name: String,
    last_seen: Timestamp,
    window: Duration,
}

#[derive(Debug)]
pub struct OpenIncidents {
    by_key: HashMap<String, Incident>,
    max: usize,
    inserts: u32,
}

impl Default for OpenIncidents {
    fn default() -> Self {
        Self::with_max(MAX_OPEN)
    }
}

impl OpenIncidents {
    pub fn with_max(max: usize) -> Self {
        Self {
            by_key: HashMap::new(),
            max: max.max(1),
            inserts: 0,
        }
    }

    /// The incident's Abnormal (namespace, name) and when it was last seen.
    pub fn get(&self, key: &str) -> Option<(String, String, Timestamp)> {
        self.by_key
            .get(key)
            .map(|i| (i.namespace.clone(), i.name.clone(), i.last_seen))
    }

    /// Remembers that the incident `key` (grouped over `window`) was seen at `seen`, in Abnormal
    /// `namespace/name`. `now` is the clock, for forgetting old incidents.
    pub fn insert(
        &mut self,
        key: String,
        namespace: String,
        name: String,
        seen: Timestamp,
        window: Duration,
        now: Timestamp,
    ) {
        self.by_key.insert(
            key.clone(),
            Incident {
                namespace,
                name,
                last_seen: seen,
                window,
            },
        );
        self.inserts = self.inserts.wrapping_add(1);
        if self.inserts.is_multiple_of(PRUNE_EVERY) || self.by_key.len() > self.max {
            self.prune(now);
        }
        if self.by_key.len() > self.max {
            let excess = self.by_key.len() - self.max;
            let mut by_age: Vec<(Timestamp, String)> = self
                .by_key
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(k, i)| (i.last_seen, k.clone()))
                .collect();
            by_age.sort();
            for (_, k) in by_age.into_iter().take(excess) {
                self.by_key.remove(&k);
            }
        }
    }

    /// Forgets incidents not seen for twice their window.
    pub fn prune(&mut self, now: Timestamp) {
        self.by_key.retain(|_, i| {
            now.duration_since(i.last_seen).as_secs_f64() <= 2.0 * i.window.as_secs_f64()
        });
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    #[test]
    fn an_incident_is_remembered_within_its_window_and_forgotten_after() {
        let mut open = OpenIncidents::default();
        let t0: Timestamp = "2026-12-01T10:00:00Z".parse().unwrap();
        open.insert("k".into(), "ns".into(), "a".into(), t0, WINDOW, t0);
        assert_eq!(open.get("k"), Some(("ns".into(), "a".into(), t0)));
        open.prune(t0 + jiff::SignedDuration::from_mins(19));
        assert_eq!(open.len(), 1);
        open.prune(t0 + jiff::SignedDuration::from_mins(21));
        assert!(open.is_empty());
    }

    #[test]
    fn a_churn_of_pods_with_warning_events_keeps_the_map_bounded() {
        let mut open = OpenIncidents::default();
        let t0: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        // A new pod's incident every second for a day: only those of the last 20 minutes (plus
        // what accumulates between prunes) are kept.
        for i in 0..86_400i64 {
            let now = t0 + jiff::SignedDuration::from_secs(i);
            open.insert(
                format!("uid-{i}/BackOff"),
                "ns".into(),
                format!("a-{i}"),
                now,
                WINDOW,
                now,
            );
            assert!(
                open.len() <= 1201 + PRUNE_EVERY as usize,
                "{} at {i}",
                open.len()
            );
        }
    }

    #[test]
    fn beyond_the_cap_the_least_recently_seen_go() {
        let mut open = OpenIncidents::with_max(100);
        let t0: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
        // A storm: 10,000 incidents within one window.
        for i in 0..10_000i64 {
            let now = t0 + jiff::SignedDuration::from_millis(i);
            open.insert(
                format!("k-{i}"),
                "ns".into(),
                format!("a-{i}"),
                now,
                WINDOW,
                now,
            );
            assert!(open.len() <= 100);
        }
        assert!(open.get("k-9999").is_some());
        assert!(open.get("k-0").is_none());
    }
}
