//! Storm control: token buckets keyed by what a trigger is about (its source, probe, node), so a
//! mass failure creates a bounded number of Abnormals. Pure: time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A budget: up to `burst` at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub burst: f64,
    pub per_minute: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Buckets by key, each with the budget of its kind.
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<String, Bucket>,
}

impl Buckets {
    /// Takes one token from every `(key, budget)`, or none if any is empty; returns the key that
    /// refused.
    pub fn take(&mut self, now: Instant, keys: &[(String, Budget)]) -> Result<(), String> {
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
        Ok(())
    }

    /// Refills the bucket to `now` and returns its tokens.
    fn level(&mut self, now: Instant, key: &str, budget: Budget) -> f64 {
        let b = self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: budget.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * budget.per_minute / 60.0).min(budget.burst);
        b.last = now;
        b.tokens
    }

    /// Forgets buckets that are full again, so keys of the past do not accumulate.
    pub fn prune(&mut self, now: Instant, budget_of: impl Fn(&str) -> Budget) {
        self.buckets.retain(|k, b| {
            let budget = budget_of(k);
            let refill =
                now.saturating_duration_since(b.last).as_secs_f64() * budget.per_minute / 60.0;
            b.tokens + refill < budget.burst
        });
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
        b.prune(t, |_| budget);
        assert_eq!(b.buckets.len(), 1);
        b.prune(t + Duration::from_secs(5), |_| budget);
        assert!(b.buckets.is_empty());
    }
}
