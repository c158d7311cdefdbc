//! Giving freed heap back to the system.
//!
//! glibc's allocator returns memory to the system only from the top of each arena. The caches
//! parse every watched Abnormal whole (an 8 KB `status.context` becomes thousands of small
//! allocations) and then keep a slim copy, so after a burst the freed pieces sit between live
//! ones and the process keeps the pages: about half of the controller's heap with a node full of
//! finished Abnormals was such free space (docs/performance.md). `malloc_trim(0)` hands every
//! whole free page of every arena back (MADV_DONTNEED); it takes well under a millisecond on a
//! heap of that size, so it runs on a short period rather than being tied to the caches' events.

use std::time::Duration;

/// How often freed pages are handed back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(5);

/// Hands freed heap pages back to the system every [`TRIM_PERIOD`], for as long as the runtime
/// runs. Nothing to do with allocators other than glibc's (they return memory themselves).
pub fn spawn_trimming() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            trim();
        }
    });
}

/// One pass: every arena's whole free pages back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks; it has no
    // preconditions and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}
