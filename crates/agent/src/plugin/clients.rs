//! The HTTP clients the agent keeps for plugins, one per TLS setup and pinned address, so
//! connections are reused. A Service-addressed plugin is pinned to a pod IP, which changes with
//! every restart of the plugin's pod, so the cache is bounded: a client unused for [`IDLE`] is
//! dropped, and beyond [`MAX_CLIENTS`] the least recently used goes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A client unused this long is dropped (with its idle connections).
pub const IDLE: Duration = Duration::from_secs(600);
/// The most clients kept.
pub const MAX_CLIENTS: usize = 64;

pub(crate) struct Clients<K, V> {
    entries: HashMap<K, (V, Instant)>,
    max: usize,
    idle: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Clients<K, V> {
    fn default() -> Self {
        Self::new(MAX_CLIENTS, IDLE)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Clients<K, V> {
    pub(crate) fn new(max: usize, idle: Duration) -> Self {
        Self {
            entries: HashMap::new(),
            max: max.max(1),
            idle,
        }
    }

    /// The client for `key`, made with `make` if there is none; `now` is the clock.
    pub(crate) fn get_or_try_insert<E>(
        &mut self,
        key: &K,
        now: Instant,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<V, E> {
        if let Some((client, used)) = self.entries.get_mut(key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = make()?;
        let idle = self.idle;
        self.entries
            .retain(|_, (_, used)| now.saturating_duration_since(*used) < idle);
        if self.entries.len() >= self.max
            && let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
        {
            self.entries.remove(&oldest);
        }
        self.entries.insert(key.clone(), (client.clone(), now));
        Ok(client)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &mut Clients<String, u32>, key: &str, now: Instant, made: &mut u32) -> u32 {
        c.get_or_try_insert::<()>(&key.to_owned(), now, || {
            *made += 1;
            Ok(*made)
        })
        .unwrap()
    }

    #[test]
    fn a_client_is_reused_while_in_use() {
        let mut c = Clients::default();
        let mut made = 0;
        let t = Instant::now();
        let first = get(&mut c, "10.0.0.1", t, &mut made);
        for i in 1..100 {
            assert_eq!(get(&mut c, "10.0.0.1", t + IDLE / 2 * i, &mut made), first);
        }
        assert_eq!(made, 1);
    }

    #[test]
    fn plugin_pods_restarting_under_new_ips_do_not_pile_up_clients() {
        let mut c = Clients::default();
        let mut made = 0;
        let t0 = Instant::now();
        // A plugin pod restarts every minute for a week, each time with a new IP.
        for i in 0..(7 * 24 * 60u32) {
            let now = t0 + Duration::from_secs(60 * u64::from(i));
            get(
                &mut c,
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
                now,
                &mut made,
            );
            assert!(c.len() <= 11, "{} clients at {i}", c.len());
        }
    }

    #[test]
    fn beyond_the_cap_the_least_recently_used_client_goes() {
        let mut c = Clients::new(3, IDLE);
        let mut made = 0;
        let t = Instant::now();
        for (i, k) in ["a", "b", "c"].iter().enumerate() {
            get(&mut c, k, t + Duration::from_secs(i as u64), &mut made);
        }
        get(&mut c, "a", t + Duration::from_secs(10), &mut made);
        get(&mut c, "d", t + Duration::from_secs(11), &mut made);
        assert_eq!(c.len(), 3);
        assert_eq!(made, 4);
        // "b" was the least recently used: it is made anew; "a" is still there.
        get(&mut c, "a", t + Duration::from_secs(12), &mut made);
        assert_eq!(made, 4);
        get(&mut c, "b", t + Duration::from_secs(13), &mut made);
        assert_eq!(made, 5);
    }
}
