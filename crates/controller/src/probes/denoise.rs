//! Continuous probes, the pure part: the denoiser between a checker's raw results and its status
//! in the ProbeStatus, the window statistics kept next to it, and the rule that decides when a
//! result is worth an apiserver write. No IO and no clock: time is passed in.
//!
//! - **Denoiser.** A checker turns to a failing status only after `failures` of its last `window`
//!   results failed (worse than INFO), and back to PASS only after `recoveries` passes in a row.
//!   While failing, it takes the status and message of its latest failure. Its first result
//!   sets a status only if it passed: a new checker is not failing until the threshold says so.
//! - **Window.** The newest [`WINDOW_RESULTS`] results: how many, the share that passed, and the
//!   p50/p99 of their latencies.
//! - **Write rule.** A checker's entry is written when its denoised status changes (at once);
//!   when its window stats moved ([`moved`]) and at least [`STATS_EVERY_INTERVALS`] intervals
//!   passed since its last write; or, with nothing else to write, every [`HEARTBEAT`] so that
//!   `lastRun` stays fresh for the release gate. Nothing else is written.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use kdiag_api::{CheckerStatus, CheckerWindow, ProbeMode, ProbePolicy};

/// Seconds between results when `intervalSeconds` is not set.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 10;
/// The shortest interval taken; shorter ones are raised to it.
pub const MIN_INTERVAL_SECONDS: u64 = 1;
/// Denoiser defaults: ERROR after 3 failures among the last 10 results, PASS after 3 passes.
pub const DEFAULT_FAILURES: usize = 3;
pub const DEFAULT_WINDOW: usize = 10;
pub const DEFAULT_RECOVERIES: usize = 3;
/// Results the window statistics are computed over.
pub const WINDOW_RESULTS: usize = 100;
/// A stats-only change is written at most once per this many intervals.
pub const STATS_EVERY_INTERVALS: u32 = 12;
/// With nothing else to write, `lastRun` is refreshed this often: well within the release gate's
/// default maximum age (10 minutes), so a quiet healthy checker never reads as stale.
pub const HEARTBEAT: Duration = Duration::from_secs(300);
/// A percentile has moved when it differs from the one written by more than this many
/// milliseconds and by more than [`PERCENTILE_SHARE`] of it: jitter of a fast path is not news.
pub const PERCENTILE_MILLIS: i64 = 10;
pub const PERCENTILE_SHARE: f64 = 0.25;

/// Whether a probe runs continuously.
pub fn is_continuous(policy: &ProbePolicy) -> bool {
    policy.mode == Some(ProbeMode::Continuous)
}

/// A continuous probe's settings, with defaults applied and nonsense clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub interval: Duration,
    pub failures: usize,
    pub window: usize,
    pub recoveries: usize,
}

impl Settings {
    pub fn of(policy: &ProbePolicy) -> Self {
        let positive = |v: Option<i32>, default: usize| {
            v.filter(|v| *v > 0).map(|v| v as usize).unwrap_or(default)
        };
        let d = policy.denoise.unwrap_or_default();
        let failures = positive(d.failures, DEFAULT_FAILURES);
        Self {
            interval: Duration::from_secs(
                policy
                    .interval_seconds
                    .map(|s| s.max(0) as u64)
                    .unwrap_or(DEFAULT_INTERVAL_SECONDS)
                    .max(MIN_INTERVAL_SECONDS),
            ),
            failures,
            // A window smaller than the threshold could never reach it.
            window: positive(d.window, DEFAULT_WINDOW).max(failures),
            recoveries: positive(d.recoveries, DEFAULT_RECOVERIES),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::of(&ProbePolicy::default())
    }
}

/// One raw result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    passed: bool,
    latency_millis: Option<i64>,
}

/// What a checker's entry should say when it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub status: CheckerStatus,
    pub message: String,
    pub window: CheckerWindow,
}

/// Why an entry is to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Status,
    Stats,
    Heartbeat,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Stats => "stats",
            Self::Heartbeat => "heartbeat",
        }
    }
}

/// One checker of a continuous probe: its recent results, its denoised status, and what was last
/// written for it.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    samples: VecDeque<Sample>,
    status: Option<CheckerStatus>,
    message: String,
    passes_in_a_row: usize,
    written: Option<(Entry, Instant)>,
}

impl Checker {
    /// A checker whose stored status was `status` (a restarted controller): a failing one needs
    /// its recoveries before it passes again, and an unchanged status is not written again.
    pub fn resume(status: CheckerStatus, message: String) -> Self {
        Self {
            status: Some(status),
            message,
            ..Default::default()
        }
    }

    /// The denoised status, once there is one.
    pub fn status(&self) -> Option<CheckerStatus> {
        self.status
    }

    /// Takes a raw result; the entry to write now and why, if the write rule says so. Call
    /// [`Checker::written`] once it is stored.
    pub fn observe(
        &mut self,
        s: &Settings,
        status: CheckerStatus,
        message: &str,
        latency_millis: Option<i64>,
        now: Instant,
    ) -> Option<(Entry, Reason)> {
        let passed = !failing(status);
        self.samples.push_back(Sample {
            passed,
            latency_millis,
        });
        while self.samples.len() > WINDOW_RESULTS.max(s.window) {
            self.samples.pop_front();
        }
        self.passes_in_a_row = if passed { self.passes_in_a_row + 1 } else { 0 };
        let recent_failures = self
            .samples
            .iter()
            .rev()
            .take(s.window)
            .filter(|x| !x.passed)
            .count();
        // Failing, a checker follows each new failure and leaves only after its recoveries;
        // otherwise it follows each pass and fails only at the threshold.
        let follows = match self.status {
            Some(current) if failing(current) => !passed || self.passes_in_a_row >= s.recoveries,
            _ => passed || recent_failures >= s.failures,
        };
        if follows {
            self.status = Some(status);
            self.message = message.to_owned();
        }
        let status = self.status?;
        let entry = Entry {
            status,
            message: self.message.clone(),
            window: self.window(),
        };
        let reason = match &self.written {
            None => Reason::Status,
            Some((w, _)) if w.status != entry.status => Reason::Status,
            Some((w, at)) => {
                let since = now.saturating_duration_since(*at);
                if moved(&w.window, &entry.window) && since >= s.interval * STATS_EVERY_INTERVALS {
                    Reason::Stats
                } else if since >= HEARTBEAT {
                    Reason::Heartbeat
                } else {
                    return None;
                }
            }
        };
        Some((entry, reason))
    }

    /// Records that `entry` was stored at `at`.
    pub fn written(&mut self, entry: Entry, at: Instant) {
        self.written = Some((entry, at));
    }

    /// The window statistics of the newest [`WINDOW_RESULTS`] results.
    pub fn window(&self) -> CheckerWindow {
        let newest: Vec<&Sample> = self.samples.iter().rev().take(WINDOW_RESULTS).collect();
        let passed = newest.iter().filter(|x| x.passed).count();
        let mut latencies: Vec<i64> = newest.iter().filter_map(|x| x.latency_millis).collect();
        latencies.sort_unstable();
        CheckerWindow {
            results: newest.len() as i32,
            success_rate: if newest.is_empty() {
                0.0
            } else {
                (passed as f64 / newest.len() as f64 * 100.0).round() / 100.0
            },
            p50_millis: percentile(&latencies, 50),
            p99_millis: percentile(&latencies, 99),
        }
    }
}

/// Worse than INFO: a failure for the denoiser.
fn failing(status: CheckerStatus) -> bool {
    status.severity() > CheckerStatus::Info.severity()
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Whether window stats moved enough to be worth a write: the success rate by a point or more,
/// or a percentile by more than [`PERCENTILE_MILLIS`] and [`PERCENTILE_SHARE`] of the old value,
/// or a percentile appeared or went. The count of results alone never is.
pub fn moved(old: &CheckerWindow, new: &CheckerWindow) -> bool {
    let rate = (old.success_rate - new.success_rate).abs() >= 0.01 - 1e-9;
    let pct = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => {
            let d = (a - b).abs();
            d > PERCENTILE_MILLIS && d as f64 > a as f64 * PERCENTILE_SHARE
        }
        (None, None) => false,
        _ => true,
    };
    rate || pct(old.p50_millis, new.p50_millis) || pct(old.p99_millis, new.p99_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: CheckerStatus = CheckerStatus::Pass;
    const ERROR: CheckerStatus = CheckerStatus::Error;

    fn settings() -> Settings {
        Settings {
            interval: Duration::from_secs(5),
            ..Default::default()
        }
    }

    /// Feeds results one interval apart; the statuses written, in order.
    fn feed(
        c: &mut Checker,
        s: &Settings,
        start: Instant,
        results: &[CheckerStatus],
    ) -> Vec<CheckerStatus> {
        let mut writes = Vec::new();
        for (i, r) in results.iter().enumerate() {
            let now = start + s.interval * i as u32;
            if let Some((entry, _)) = c.observe(s, *r, "m", Some(5), now) {
                writes.push(entry.status);
                c.written(entry, now);
            }
        }
        writes
    }

    #[test]
    fn defaults_are_three_failures_in_ten_and_three_recoveries_every_ten_seconds() {
        let s = Settings::default();
        assert_eq!(
            (s.interval, s.failures, s.window, s.recoveries),
            (Duration::from_secs(10), 3, 10, 3)
        );
        let clamped = Settings::of(&ProbePolicy {
            interval_seconds: Some(0),
            denoise: Some(kdiag_api::Denoise {
                failures: Some(5),
                window: Some(2),
                recoveries: Some(-1),
            }),
            ..Default::default()
        });
        assert_eq!(clamped.interval, Duration::from_secs(1), "the minimum");
        assert_eq!(
            (clamped.failures, clamped.window, clamped.recoveries),
            (5, 5, 3)
        );
    }

    #[test]
    fn one_failure_in_ten_never_turns_a_checker_to_error() {
        let s = settings();
        let mut c = Checker::default();
        let flapping: Vec<_> = (0..200)
            .map(|i| if i % 10 == 9 { ERROR } else { PASS })
            .collect();
        let writes = feed(&mut c, &s, Instant::now(), &flapping);
        assert!(writes.iter().all(|w| *w == PASS), "{writes:?}");
        assert_eq!(c.status(), Some(PASS));
        assert_eq!(c.window().success_rate, 0.9);
        assert_eq!(c.window().results, 100);
    }

    #[test]
    fn the_third_failure_in_the_window_turns_it_to_error_once_and_three_passes_recover_it() {
        let s = settings();
        let mut c = Checker::default();
        let start = Instant::now();
        let results = [
            PASS, ERROR, PASS, ERROR, PASS, PASS, ERROR, ERROR, ERROR, PASS, PASS, PASS,
        ];
        let writes = feed(&mut c, &s, start, &results);
        assert_eq!(
            writes,
            [PASS, ERROR, PASS],
            "one write per change of status"
        );
    }

    #[test]
    fn a_new_checker_that_fails_has_no_status_until_the_threshold() {
        let s = settings();
        let mut c = Checker::default();
        let now = Instant::now();
        assert_eq!(c.observe(&s, ERROR, "refused", None, now), None);
        assert_eq!(c.observe(&s, ERROR, "refused", None, now), None);
        let (entry, reason) = c.observe(&s, ERROR, "timed out", None, now).unwrap();
        assert_eq!(
            (entry.status, entry.message.as_str(), reason),
            (ERROR, "timed out", Reason::Status)
        );
    }

    #[test]
    fn a_resumed_failing_checker_needs_its_recoveries_and_is_not_rewritten_while_unchanged() {
        let s = settings();
        let mut c = Checker::resume(ERROR, "down".into());
        let now = Instant::now();
        let (entry, _) = c.observe(&s, ERROR, "down", None, now).unwrap();
        c.written(entry, now);
        assert_eq!(c.observe(&s, PASS, "ok", None, now), None);
        assert_eq!(c.observe(&s, PASS, "ok", None, now), None);
        let (entry, reason) = c.observe(&s, PASS, "ok", None, now).unwrap();
        assert_eq!((entry.status, reason), (PASS, Reason::Status));
    }

    #[test]
    fn unchanged_results_write_nothing_until_the_heartbeat() {
        let s = settings();
        let mut c = Checker::default();
        let start = Instant::now();
        let mut writes = Vec::new();
        for i in 0..=60u32 {
            let now = start + s.interval * i;
            if let Some((entry, reason)) = c.observe(&s, PASS, "ok", Some(3 + (i % 3) as i64), now)
            {
                writes.push((i, reason));
                c.written(entry, now);
            }
        }
        // 5 s intervals: the heartbeat is due after 300 s, at the 60th interval.
        assert_eq!(writes, [(0, Reason::Status), (60, Reason::Heartbeat)]);
    }

    #[test]
    fn moved_stats_are_written_at_most_every_twelve_intervals() {
        let s = settings();
        let mut c = Checker::default();
        let start = Instant::now();
        let mut writes = Vec::new();
        // A path that slows from 5 ms to 200 ms, passing throughout.
        for i in 0..40u32 {
            let now = start + s.interval * i;
            let latency = if i < 5 { 5 } else { 200 };
            if let Some((entry, reason)) = c.observe(&s, PASS, "ok", Some(latency), now) {
                writes.push((i, reason, entry.window.p50_millis));
                c.written(entry, now);
            }
        }
        assert_eq!(
            writes,
            [(0, Reason::Status, Some(5)), (12, Reason::Stats, Some(200))],
            "the p50 moved past the jitter allowance and is written at the 12th interval, then holds"
        );
    }

    #[test]
    fn jitter_of_a_fast_path_or_one_more_result_is_not_a_move() {
        let w = |rate: f64, p50: i64, p99: i64| CheckerWindow {
            results: 10,
            success_rate: rate,
            p50_millis: Some(p50),
            p99_millis: Some(p99),
        };
        assert!(!moved(&w(1.0, 1, 3), &w(1.0, 4, 12)));
        assert!(!moved(&w(0.9, 100, 200), &w(0.9, 120, 240)), "within 25%");
        assert!(moved(&w(0.9, 100, 200), &w(0.9, 100, 300)));
        assert!(moved(&w(0.9, 1, 3), &w(0.89, 1, 3)));
        let mut more = w(0.9, 1, 3);
        more.results = 11;
        assert!(!moved(&w(0.9, 1, 3), &more));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn a_warning_while_failing_takes_the_latest_failures_status() {
        let s = Settings {
            failures: 1,
            ..settings()
        };
        let mut c = Checker::default();
        let writes = feed(
            &mut c,
            &s,
            Instant::now(),
            &[ERROR, CheckerStatus::Warn, CheckerStatus::Info],
        );
        assert_eq!(writes, [ERROR, CheckerStatus::Warn]);
        assert_eq!(
            c.status(),
            Some(CheckerStatus::Warn),
            "one INFO is not three recoveries"
        );
    }
}
