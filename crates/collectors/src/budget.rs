//! Time and size budgets shared by the collectors.
//!
//! The agent stops waiting for a step after `ctx.timeout` and throws away a step whose output is
//! larger than `ctx.max_output_bytes`; a collector that hit either would lose everything it
//! found. So each collector keeps a margin below both and returns what it has, marked as
//! partial, instead of nothing.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// When a collector must stop looking and return what it has.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(Instant);

impl Deadline {
    /// Most of `timeout`: the rest is for serializing and returning the result.
    pub fn within(timeout: Duration) -> Self {
        let usable = timeout
            .mul_f64(0.8)
            .saturating_sub(Duration::from_millis(200));
        Self(Instant::now() + usable.max(Duration::from_millis(100)))
    }

    /// A deadline `d` from now, for tests and benchmarks.
    pub fn after(d: Duration) -> Self {
        Self(Instant::now() + d)
    }

    /// No deadline to speak of.
    pub fn never() -> Self {
        Self(Instant::now() + Duration::from_secs(365 * 24 * 3600))
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// The bytes a collector may add to the Abnormal: three quarters of the agent's cap, so the
/// message and the truncation markers fit as well.
pub fn output_budget(max_output_bytes: usize) -> usize {
    max_output_bytes / 4 * 3
}

/// How a list was cut to fit its budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Truncation {
    /// Items there were.
    pub total: usize,
    /// Items kept (the first ones, in the list's order).
    pub kept: usize,
    /// Why, in words.
    pub reason: String,
}

/// Serializes `items` in order until `budget` bytes of JSON are used; returns the kept ones and,
/// if some were dropped, how many.
pub fn cap_list<T: Serialize>(items: &[T], budget: usize) -> (Vec<Value>, Option<Truncation>) {
    let mut used = 2; // the brackets
    let mut kept = Vec::new();
    for item in items {
        let Ok(v) = serde_json::to_value(item) else {
            continue;
        };
        let size = serde_json::to_vec(&v)
            .map(|b| b.len())
            .unwrap_or(usize::MAX)
            + 1;
        if used + size > budget {
            let reason = format!(
                "output capped at {budget} bytes: kept the first {} of {} entries",
                kept.len(),
                items.len()
            );
            return (
                kept.clone(),
                Some(Truncation {
                    total: items.len(),
                    kept: kept.len(),
                    reason,
                }),
            );
        }
        used += size;
        kept.push(v);
    }
    (kept, None)
}

/// The key under which a compatibility list (whose shape must stay a plain JSON array) records
/// that it was truncated: `<key>Truncated`.
pub fn truncated_key(key: &str) -> String {
    format!("{key}Truncated")
}

/// A bounded list of problems met along the way (an unreadable /proc entry, a directory that
/// vanished): recorded and skipped, never fatal, never unbounded.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Problems {
    pub items: Vec<String>,
    pub more: usize,
}

impl Problems {
    const MAX: usize = 20;

    pub fn push(&mut self, problem: impl Into<String>) {
        if self.items.len() < Self::MAX {
            self.items.push(problem.into());
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len() + self.more
    }

    pub fn extend(&mut self, other: Problems) {
        for p in other.items {
            self.push(p);
        }
        self.more += other.more;
    }

    /// As a JSON list, with a last line saying how many were left out.
    pub fn to_json(&self) -> Value {
        let mut v: Vec<Value> = self.items.iter().cloned().map(Value::String).collect();
        if self.more > 0 {
            v.push(Value::String(format!("… and {} more", self.more)));
        }
        Value::Array(v)
    }
}

/// Runs blocking work (a /proc scan, a directory walk) on the blocking pool; a panic in it
/// becomes an error instead of taking the agent down.
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, kdiag_api::plugin::ProcessorError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        kdiag_api::plugin::ProcessorError::Failed(format!("{what} stopped unexpectedly: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_that_fits_is_kept_whole() {
        let (kept, t) = cap_list(&[1, 2, 3], 100);
        assert_eq!(kept.len(), 3);
        assert!(t.is_none());
    }

    #[test]
    fn a_list_over_budget_keeps_its_first_items_and_says_how_many_were_dropped() {
        let items: Vec<String> = (0..100).map(|i| format!("item-{i:04}")).collect();
        let (kept, t) = cap_list(&items, 200);
        let t = t.expect("truncated");
        assert_eq!(t.total, 100);
        assert_eq!(t.kept, kept.len());
        assert!(kept.len() < 100 && !kept.is_empty());
        assert!(serde_json::to_vec(&kept).unwrap().len() <= 200);
        assert_eq!(kept[0], "item-0000");
    }

    #[test]
    fn problems_are_bounded_and_count_the_rest() {
        let mut p = Problems::default();
        for i in 0..25 {
            p.push(format!("p{i}"));
        }
        assert_eq!(p.len(), 25);
        assert_eq!(p.to_json().as_array().unwrap().len(), 21);
    }
}
