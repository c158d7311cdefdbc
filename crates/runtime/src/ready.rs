//! Waiting for a reflector store to be filled.
//!
//! `Store::wait_until_ready` wakes only the last of several waiters (its oneshot receiver keeps
//! one waker), so a second waiter on the same store can sleep forever. Polling it with a short
//! timeout re-registers each time and so works for any number of waiters.

use std::time::Duration;

use kube::runtime::reflector::{Lookup, Store};

/// Returns once `store` holds a full list (or its writer is gone).
pub async fn store_ready<K>(store: &Store<K>)
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
            .await
            .is_ok()
        {
            return;
        }
    }
}
