//! Latency summaries: nearest-rank percentiles over every sample (no sampling, no histograms).

use std::time::Duration;

use serde_json::{Value, json};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ms.sort_by(f64::total_cmp);
        Self {
            n: ms.len(),
            p50: rank(&ms, 0.50),
            p90: rank(&ms, 0.90),
            p99: rank(&ms, 0.99),
            max: ms[ms.len() - 1],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
        }
    }

    pub fn json(&self) -> Value {
        json!({"n": self.n, "p50Ms": round(self.p50), "p90Ms": round(self.p90),
               "p99Ms": round(self.p99), "maxMs": round(self.max), "meanMs": round(self.mean)})
    }
}

/// The smallest sample with at least `q` of all samples at or below it.
fn rank(sorted: &[f64], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Three significant decimals are plenty for milliseconds, seconds and ratios in the JSON.
pub fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// `a / b`, or NaN when `b` is zero (shown as "n/a").
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { f64::NAN } else { a / b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&v);
        assert_eq!((s.p50, s.p99, s.max), (50.0, 99.0, 100.0));
        let one = Summary::of(&[Duration::from_millis(7)]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }
}
