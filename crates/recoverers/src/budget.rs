//! The recovery budget: at most N recoveries per node in any hour (a sliding window). Kept in the
//! agent's memory: a restarted agent starts a fresh window.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(3600);

#[derive(Default)]
pub struct RecoveryBudget(Mutex<VecDeque<Instant>>);

impl RecoveryBudget {
    /// Takes one recovery from the budget of `per_hour`, or says how many ran in the last hour.
    pub fn take(&self, now: Instant, per_hour: u32) -> Result<(), usize> {
        let mut ran = self.0.lock().unwrap_or_else(|e| e.into_inner());
        while ran
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            ran.pop_front();
        }
        if ran.len() >= per_hour as usize {
            return Err(ran.len());
        }
        ran.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_beyond_its_hourly_count_and_recovers_as_the_hour_slides() {
        let b = RecoveryBudget::default();
        let t = Instant::now();
        assert_eq!(b.take(t, 2), Ok(()));
        assert_eq!(b.take(t + Duration::from_secs(60), 2), Ok(()));
        assert_eq!(b.take(t + Duration::from_secs(120), 2), Err(2));
        assert_eq!(b.take(t + Duration::from_secs(3601), 2), Ok(()));
        assert_eq!(b.take(t, 0), Err(2));
    }
}
