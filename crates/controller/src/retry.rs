//! Redoing a read-modify-write that lost a race: HTTP 409 Conflict means another writer got there
//! first, so read again and redo it, a few times, a few milliseconds apart, as client-go's
//! `retry.RetryOnConflict` does with its `DefaultRetry`.

use std::time::Duration;

use backon::ConstantBuilder;

/// At most `attempts` tries in all, 10 to 20 ms apart.
pub fn on_conflict(attempts: usize) -> ConstantBuilder {
    ConstantBuilder::new()
        .with_delay(Duration::from_millis(10))
        .with_jitter()
        .with_max_times(attempts.saturating_sub(1))
}

/// True for HTTP 409: the resourceVersion sent is no longer the object's.
pub use kdiag_runtime::error::is_conflict;

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn five_attempts_are_four_short_waits() {
        let waits: Vec<Duration> = on_conflict(5).build().collect();
        assert_eq!(waits.len(), 4);
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(10)..=Duration::from_millis(20)).contains(w)),
            "{waits:?}"
        );
        assert_eq!(on_conflict(1).build().count(), 0, "one attempt, no retry");
    }
}
