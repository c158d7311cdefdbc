//! When a probe runs, pure: `runInterval` minutes exactly (KubeProber's `*/N` cron was wrong for
//! N ≥ 60), plus a jitter of up to `runIntervalRandom` minutes that is stable per probe (KubeProber
//! drew a new one on every reconcile).

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use kdiag_api::ProbePolicy;
use kdiag_pipeline::hash::fnv1a;

/// What a probe's schedule says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Run now.
    Now,
    /// Run at this time.
    At(Timestamp),
    /// A one-shot probe that already ran.
    Never,
}

/// The probe's interval, or None for a one-shot probe.
pub fn interval(policy: &ProbePolicy) -> Option<Duration> {
    policy
        .run_interval
        .filter(|m| *m > 0)
        .map(|m| Duration::from_secs(m as u64 * 60))
}

/// A stable jitter for this probe: the same every time for the same uid, at most `random_minutes`.
pub fn jitter(uid: &str, random_minutes: Option<i64>) -> Duration {
    let max = random_minutes.filter(|m| *m > 0).unwrap_or(0) as u64 * 60;
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(fnv1a(uid) % (max + 1))
}

/// Decides whether a probe is due, from its policy, when it last ran and how often.
pub fn due(
    policy: &ProbePolicy,
    uid: &str,
    last_run: Option<Timestamp>,
    runs: i64,
    now: Timestamp,
) -> Due {
    match (interval(policy), last_run) {
        (None, _) if runs > 0 => Due::Never,
        (None, _) => Due::Now,
        (Some(_), None) => Due::Now,
        (Some(every), Some(last)) => {
            let next = last
                + SignedDuration::try_from(every + jitter(uid, policy.run_interval_random))
                    .unwrap_or(SignedDuration::MAX);
            if next <= now { Due::Now } else { Due::At(next) }
        }
    }
}

/// A Job name for a run starting at `at`: the probe's name and the minute, within 63 characters.
pub fn job_name(probe: &str, at: Timestamp) -> String {
    let suffix = format!("-{}", at.as_second() / 60);
    let room = 63 - suffix.len();
    let base: String = probe.chars().take(room).collect();
    format!("{}{suffix}", base.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(every: Option<i64>, random: Option<i64>) -> ProbePolicy {
        ProbePolicy {
            run_interval: every,
            run_interval_random: random,
            ..Default::default()
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_one_shot_probe_runs_once() {
        assert_eq!(
            due(&policy(None, None), "u", None, 0, t("2026-01-01T00:00:00Z")),
            Due::Now
        );
        assert_eq!(
            due(
                &policy(Some(0), None),
                "u",
                Some(t("2026-01-01T00:00:00Z")),
                1,
                t("2026-01-02T00:00:00Z")
            ),
            Due::Never
        );
    }

    #[test]
    fn intervals_of_an_hour_and_more_are_honoured_exactly() {
        let p = policy(Some(90), None);
        let last = t("2026-01-01T00:00:00Z");
        assert_eq!(
            due(&p, "u", Some(last), 3, t("2026-01-01T01:00:00Z")),
            Due::At(t("2026-01-01T01:30:00Z"))
        );
        assert_eq!(
            due(&p, "u", Some(last), 3, t("2026-01-01T01:30:00Z")),
            Due::Now
        );
        let daily = policy(Some(24 * 60), None);
        assert_eq!(
            due(&daily, "u", Some(last), 1, t("2026-01-01T12:00:00Z")),
            Due::At(t("2026-01-02T00:00:00Z"))
        );
    }

    #[test]
    fn jitter_is_stable_per_probe_and_bounded() {
        let a = jitter("uid-a", Some(10));
        assert_eq!(
            a,
            Duration::from_secs(61),
            "pinned: the same after a restart or upgrade"
        );
        assert!(a <= Duration::from_secs(600));
        assert_eq!(jitter("uid-a", None), Duration::ZERO);
        let spread: std::collections::BTreeSet<_> = (0..50)
            .map(|i| jitter(&format!("uid-{i}"), Some(10)))
            .collect();
        assert!(spread.len() > 10, "jitter spreads probes out");
    }

    #[test]
    fn job_names_fit_and_differ_per_run() {
        let long = "p".repeat(100);
        let n = job_name(&long, t("2026-01-01T00:00:00Z"));
        assert!(n.len() <= 63);
        assert_ne!(
            job_name("dns", t("2026-01-01T00:00:00Z")),
            job_name("dns", t("2026-01-01T00:05:00Z"))
        );
    }
}
