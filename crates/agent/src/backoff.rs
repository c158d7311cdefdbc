//! Per-Abnormal retry backoff (kube's Controller has none): failed attempts by `namespace/name`.
//!
//! An entry goes when its Abnormal succeeds, is idle, or is found gone (the requeue of a deleted
//! object reports it not found). So that nothing can make the map grow without end, whenever it
//! has doubled since it was last swept, entries of objects no longer in the agent's cache go too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The map is first swept at this size.
const FIRST_SWEEP_AT: usize = 256;
/// The longest wait between retries.
const MAX_DELAY: Duration = Duration::from_secs(300);

pub(crate) struct Backoff {
    inner: Mutex<Inner>,
}

struct Inner {
    attempts: HashMap<String, u32>,
    sweep_at: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                attempts: HashMap::new(),
                sweep_at: FIRST_SWEEP_AT,
            }),
        }
    }
}

impl Backoff {
    /// Counts a failure of `key` and returns how long to wait before the next attempt: 2, 4, 8 …
    /// seconds, at most 256 s. `exists` tells whether an object is still in the cache.
    pub(crate) fn failed(&self, key: &str, exists: impl Fn(&str) -> bool) -> Duration {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let n = inner.attempts.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let attempts = *n;
        if inner.attempts.len() >= inner.sweep_at {
            inner.attempts.retain(|k, _| k == key || exists(k));
            inner.sweep_at = (inner.attempts.len() * 2).max(FIRST_SWEEP_AT);
        }
        Duration::from_secs(1u64 << attempts.min(8)).min(MAX_DELAY)
    }

    pub(crate) fn forget(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            .remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_256_seconds_and_starts_over_when_forgotten() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..10)
            .map(|_| b.failed("ns/a", |_| true).as_secs())
            .collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 256, 256]);
        b.forget("ns/a");
        assert_eq!(b.failed("ns/a", |_| true), Duration::from_secs(2));
    }

    #[test]
    fn entries_of_deleted_abnormals_do_not_accumulate() {
        let b = Backoff::default();
        // 100,000 Abnormals fail once each and are deleted; only the last few still exist.
        let total = 100_000;
        for i in 0..total {
            b.failed(&format!("ns/a-{i}"), |k| {
                let n: usize = k.trim_start_matches("ns/a-").parse().unwrap();
                n + 10 > i
            });
            assert!(b.len() <= 2 * FIRST_SWEEP_AT, "{} entries at {i}", b.len());
        }
    }

    #[test]
    fn live_entries_are_kept_however_many_there_are() {
        let b = Backoff::default();
        for i in 0..1000 {
            b.failed(&format!("ns/a-{i}"), |_| true);
        }
        assert_eq!(b.len(), 1000);
        assert_eq!(b.failed("ns/a-7", |_| true), Duration::from_secs(4));
    }
}
