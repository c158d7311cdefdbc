//! Driving load and timing it.
//!
//! An [`Observer`] watches one resource in one namespace from this process and notes when each
//! object first meets a condition (an Abnormal reaching a final phase, a ProbeStatus getting its
//! diagnosis). Everything is timed the same way, kdiag and its baselines alike: from just before
//! the request that starts the work to the watch event that shows it done.
//!
//! [`closed_loop`] keeps a fixed number of items in flight: a new one starts when one finishes,
//! so latency is measured at a steady, known load.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// An object that met the condition: its key, and whether it ended well (Succeeded).
pub struct Hit {
    pub key: String,
    pub ok: bool,
}

pub type Matcher = Arc<dyn Fn(&DynamicObject) -> Option<Hit> + Send + Sync>;

/// One finished item.
#[derive(Debug, Clone)]
pub struct Completion {
    pub latency: Duration,
    pub at: Instant,
    pub ok: bool,
}

#[derive(Default)]
struct State {
    /// When each key first met the condition.
    seen: HashMap<String, (Instant, bool)>,
    /// Items started and not finished: when, and the load slot they hold.
    waiting: HashMap<String, (Instant, Option<OwnedSemaphorePermit>)>,
    done: Vec<Completion>,
    synced: bool,
    /// The object whose successive statuses are recorded, and those statuses.
    trace_name: Option<String>,
    trace: Vec<Value>,
}

#[derive(Clone)]
pub struct Observer {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl Observer {
    /// Watches `api` and returns once the initial list is in.
    pub async fn start(api: Api<DynamicObject>, matcher: Matcher) -> Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let changed = Arc::new(Notify::new());
        let (s, c) = (state.clone(), changed.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let at = Instant::now();
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        observe(&mut s.lock().unwrap(), &matcher, &o, at);
                        c.notify_waiters();
                    }
                    Ok(watcher::Event::InitDone) => {
                        s.lock().unwrap().synced = true;
                        c.notify_waiters();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "bench observer watch (retrying)"),
                }
            }
        });
        let obs = Self {
            state,
            changed,
            task: Arc::new(task),
        };
        obs.wait_until(Duration::from_secs(60), |s| s.synced.then_some(()))
            .await?;
        Ok(obs)
    }

    /// Item `key` starts now; `slot` is released when it finishes.
    pub fn expect(&self, key: &str, started: Instant, slot: Option<OwnedSemaphorePermit>) {
        let mut s = self.state.lock().unwrap();
        if let Some(&(at, ok)) = s.seen.get(key) {
            // Already there (it cannot be faster than its start; count it as instant).
            s.done.push(Completion {
                latency: at.saturating_duration_since(started),
                at,
                ok,
            });
            return;
        }
        s.waiting.insert(key.into(), (started, slot));
    }

    /// Item `key` could not be started: give its slot back.
    pub fn abandon(&self, key: &str) {
        self.state.lock().unwrap().waiting.remove(key);
    }

    /// When `key` met the condition, waiting up to `timeout`.
    pub async fn seen(&self, key: &str, timeout: Duration) -> Result<Instant> {
        self.wait_until(timeout, |s| s.seen.get(key).map(|(at, _)| *at))
            .await
            .map_err(|_| anyhow::anyhow!("{key}: not seen within {timeout:?}"))
    }

    pub fn take_completions(&self) -> Vec<Completion> {
        std::mem::take(&mut self.state.lock().unwrap().done)
    }

    pub fn seen_count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Records every distinct status object `name` goes through from now on.
    pub fn trace(&self, name: &str) {
        let mut s = self.state.lock().unwrap();
        s.trace_name = Some(name.into());
        s.trace.clear();
    }

    pub fn traced(&self) -> Vec<Value> {
        self.state.lock().unwrap().trace.clone()
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&State) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.state.lock().unwrap()) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
                bail!("timed out after {timeout:?}");
            }
        }
    }
}

fn observe(s: &mut State, matcher: &Matcher, o: &DynamicObject, at: Instant) {
    if s.trace_name.as_deref() == o.metadata.name.as_deref() {
        let status = o.data["status"].clone();
        if s.trace.last() != Some(&status) && !status.is_null() {
            s.trace.push(status);
        }
    }
    let Some(hit) = matcher(o) else {
        return;
    };
    if s.seen.contains_key(&hit.key) {
        return;
    }
    s.seen.insert(hit.key.clone(), (at, hit.ok));
    if let Some((started, _slot)) = s.waiting.remove(&hit.key) {
        s.done.push(Completion {
            latency: at.saturating_duration_since(started),
            at,
            ok: hit.ok,
        });
    }
}

/// Matches Abnormals (kdiag's or the floor's copies) in a final phase, keyed by name.
pub fn final_phase() -> Matcher {
    Arc::new(|o| {
        let phase = o.data["status"]["phase"].as_str()?;
        let ok = match phase {
            "Succeeded" => true,
            "Failed" => false,
            _ => return None,
        };
        Some(Hit {
            key: o.metadata.name.clone()?,
            ok,
        })
    })
}

/// The outcome of a closed-loop run.
pub struct LoadResult {
    pub latencies: Vec<Duration>,
    /// First start to last finish.
    pub elapsed: Duration,
    /// Items that ended Failed.
    pub failed: usize,
    /// Items whose start request failed.
    pub errors: usize,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs every key through `start` with at most `window` in flight; an item finishes when the
/// observer sees it meet its condition.
pub async fn closed_loop<F, Fut>(
    obs: &Observer,
    keys: &[String],
    window: usize,
    timeout: Duration,
    start: F,
) -> Result<LoadResult>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    obs.take_completions();
    let slots = Arc::new(Semaphore::new(window));
    let errors = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + timeout;
    let t0 = Instant::now();
    for key in keys {
        let left = deadline.saturating_duration_since(Instant::now());
        let slot = tokio::time::timeout(left, slots.clone().acquire_owned())
            .await
            .map_err(|_| anyhow::anyhow!("load did not finish within {timeout:?}"))??;
        obs.expect(key, Instant::now(), Some(slot));
        let (fut, obs, errors, key) =
            (start(key.clone()), obs.clone(), errors.clone(), key.clone());
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::warn!(item = %key, error = %e, "starting an item failed");
                errors.fetch_add(1, Ordering::Relaxed);
                obs.abandon(&key);
            }
        });
    }
    // Every slot back: every item finished.
    let left = deadline.saturating_duration_since(Instant::now());
    let all = tokio::time::timeout(left, slots.acquire_many(window as u32)).await;
    let done = obs.take_completions();
    if all.is_err() {
        bail!(
            "load did not finish within {timeout:?}: {} of {} items finished",
            done.len(),
            keys.len()
        );
    }
    let last = done.iter().map(|c| c.at).max().unwrap_or(t0);
    Ok(LoadResult {
        failed: done.iter().filter(|c| !c.ok).count(),
        latencies: done.iter().map(|c| c.latency).collect(),
        elapsed: last.duration_since(t0),
        errors: errors.load(Ordering::Relaxed),
    })
}
