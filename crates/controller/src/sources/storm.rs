//! Storm control: token buckets keyed by what a trigger is about (its source, probe, node), so a
//! mass failure creates a bounded number of Abnormals. Pure: time is passed in.
//!
//! The keys come from outside (node and probe names in reports and alerts), so the map is kept
//! bounded: a bucket that has refilled is the same as no bucket and is forgotten, and beyond
//! [`MAX_BUCKETS`] keys the least recently used bucket goes. (`governor`'s keyed limiters were
//! considered: they cannot take from several budgets atomically, nor express fractional bursts or
//! a budget that never refills.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A budget: up to `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub burst: f64,
    pub per_minute: f64,
}

/// The most keys kept; past it the least recently used bucket is forgotten.
pub const MAX_BUCKETS: usize = 10_000;
/// Full buckets are forgotten every this many takes.
const PRUNE_EVERY: u32 = 256;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    budget: Budget,
}

impl Bucket {
    /// Full at `now`: as good as no bucket at all.
    fn full(&self, now: Instant) -> bool {
        let refill =
            now.saturating_duration_since(self.last).as_secs_f64() * self.budget.per_minute / 60.0;
        self.tokens + refill >= self.budget.burst
    }
}

/// Buckets by key, each with the budget of its kind.
#[derive(Debug)]
pub struct Buckets {
    buckets: HashMap<String, Bucket>,
    max: usize,
    takes: u32,
}

impl Default for Buckets {
    fn default() -> Self {
        Self::with_max(MAX_BUCKETS)
    }
}

impl Buckets {
    /// Buckets that keep at most `max` keys.
    pub fn with_max(max: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            max: max.max(1),
            takes: 0,
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Takes one token from every `(key, budget)`, or none if any is empty; returns the key that
    /// refused.
    pub fn take(&mut self, now: Instant, keys: &[(String, Budget)]) -> Result<(), String> {
        self.takes = self.takes.wrapping_add(1);
        if self.takes.is_multiple_of(PRUNE_EVERY) {
            self.prune(now);
        }
        for (key, budget) in keys {
            if self.level(now, key, *budget) < 1.0 {
                return Err(key.clone());
            }
        }
        for (key, _) in keys {
            if let Some(b) = self.buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        self.cap(now, keys);
        Ok(())
    }

    /// Refills the bucket to `now` and returns its tokens.
    fn level(&mut self, now: Instant, key: &str, budget: Budget) -> f64 {
        let b = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: budget.burst,
            last: now,
            budget,
        });
        b.budget = budget;
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * budget.per_minute / 60.0).min(budget.burst);
        b.last = now;
        b.tokens
    }

    /// Forgets buckets that are full again, so keys of the past do not accumulate.
    pub fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.full(now));
    }

    /// Keeps at most `max` keys: full buckets go first, then the least recently used (never one
    /// of `keep`, the keys just taken from).
    fn cap(&mut self, now: Instant, keep: &[(String, Budget)]) {
        if self.buckets.len() <= self.max {
            return;
        }
        self.prune(now);
        let excess = self.buckets.len().saturating_sub(self.max);
        if excess == 0 {
            return;
        }
        let mut by_age: Vec<(Instant, String)> = self
            .buckets
            .iter()
            .filter(|(k, _)| !keep.iter().any(|(kk, _)| kk == *k))
            .map(|(k, b)| (b.last, k.clone()))
            .collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(excess) {
            self.buckets.remove(&k);
        }
    }
}

/// The smallest wait after which a bucket at 0 holds a token again.
pub fn refill_time(budget: Budget) -> Duration {
    if budget.per_minute <= 0.0 {
        Duration::MAX
    } else {
        Duration::from_secs_f64(60.0 / budget.per_minute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_until_refilled() {
        let budget = Budget {
            burst: 3.0,
            per_minute: 6.0,
        };
        let mut b = Buckets::default();
        let t0 = Instant::now();
        let key = vec![("node:a".to_owned(), budget)];
        for _ in 0..3 {
            assert_eq!(b.take(t0, &key), Ok(()));
        }
        assert_eq!(b.take(t0, &key), Err("node:a".into()));
        assert_eq!(b.take(t0 + Duration::from_secs(10), &key), Ok(()));
        assert_eq!(
            b.take(t0 + Duration::from_secs(10), &key),
            Err("node:a".into())
        );
    }

    #[test]
    fn a_trigger_takes_from_every_budget_or_from_none() {
        let mut b = Buckets::default();
        let t = Instant::now();
        let small = Budget {
            burst: 1.0,
            per_minute: 0.0,
        };
        let big = Budget {
            burst: 10.0,
            per_minute: 0.0,
        };
        assert_eq!(
            b.take(t, &[("probe:p".into(), big), ("node:n".into(), small)]),
            Ok(())
        );
        assert_eq!(
            b.take(t, &[("probe:p".into(), big), ("node:n".into(), small)]),
            Err("node:n".into())
        );
        // The refused trigger took nothing from the probe's budget: 9 left.
        for _ in 0..9 {
            assert_eq!(b.take(t, &[("probe:p".into(), big)]), Ok(()));
        }
        assert!(b.take(t, &[("probe:p".into(), big)]).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten() {
        let mut b = Buckets::default();
        let budget = Budget {
            burst: 2.0,
            per_minute: 60.0,
        };
        let t = Instant::now();
        b.take(t, &[("k".into(), budget)]).unwrap();
        b.prune(t);
        assert_eq!(b.buckets.len(), 1);
        b.prune(t + Duration::from_secs(5));
        assert!(b.buckets.is_empty());
    }

    #[test]
    fn a_churn_of_new_keys_keeps_the_map_bounded() {
        let budget = Budget {
            burst: 10.0,
            per_minute: 2.0,
        };
        let mut b = Buckets::default();
        let t0 = Instant::now();
        // A report per second naming a fresh node each time, for a day: refilled buckets go.
        for i in 0..86_400u64 {
            let now = t0 + Duration::from_secs(i);
            let key = [(format!("node:n-{i}"), budget)];
            assert_eq!(b.take(now, &key), Ok(()));
            // A bucket refills in 30 s; pruning every 256 takes keeps a few hundred.
            assert!(
                b.len() <= 2 * PRUNE_EVERY as usize,
                "{} keys at {i}",
                b.len()
            );
        }
    }

    #[test]
    fn beyond_the_cap_the_least_recently_used_buckets_go() {
        // Buckets that never refill are never full: only the cap bounds them.
        let never = Budget {
            burst: 1.0,
            per_minute: 0.0,
        };
        let mut b = Buckets::with_max(100);
        let t0 = Instant::now();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i);
            b.take(now, &[(format!("probe:p-{i}"), never)]).unwrap();
            assert!(b.len() <= 100, "{} keys at {i}", b.len());
        }
        // The most recent keys are still spent; the oldest were forgotten.
        let now = t0 + Duration::from_secs(60);
        assert!(b.take(now, &[("probe:p-9999".into(), never)]).is_err());
        assert!(b.take(now, &[("probe:p-0".into(), never)]).is_ok());
    }
}
