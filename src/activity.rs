//! In-flight work, and the one way the daemon stops.
//!
//! Everything that must finish (or reach a safe point) before the process
//! exits holds a labelled [`Guard`] while it works: an SMTP connection, a
//! campaign part's worker, the hit applier, an import. At SIGTERM the app
//! calls [`Activity::stop`] (intake stops: loops watching
//! [`Activity::stopping`] end at their next safe point, new work is not
//! started) and then [`Activity::drain`], which waits until no guard is
//! held or the grace period is over, logging every 2 s what it still waits
//! for, by label. Nothing polls: guards wake the drain when they drop.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// How often [`Activity::drain`] says what it waits for.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The daemon's in-flight work and its stop signal. Cheap to clone.
#[derive(Clone)]
pub struct Activity {
    inner: Arc<Inner>,
}

struct Inner {
    held: Mutex<BTreeMap<&'static str, usize>>,
    changed: Notify,
    stop: watch::Sender<bool>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity")
            .field("held", &self.held())
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

/// Held while a piece of work is in flight; dropping it tells the drain.
#[must_use = "the work counts as in flight only while the guard is held"]
pub struct Guard {
    inner: Arc<Inner>,
    label: &'static str,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut h) = self.inner.held.lock()
            && let Some(n) = h.get_mut(self.label)
        {
            *n -= 1;
            if *n == 0 {
                h.remove(self.label);
            }
        }
        self.inner.changed.notify_waiters();
    }
}

impl Activity {
    /// No work in flight, not stopping.
    pub fn new() -> Activity {
        Activity {
            inner: Arc::new(Inner {
                held: Mutex::new(BTreeMap::new()),
                changed: Notify::new(),
                stop: watch::Sender::new(false),
            }),
        }
    }

    /// Marks a piece of work as in flight until the guard drops.
    pub fn guard(&self, label: &'static str) -> Guard {
        if let Ok(mut h) = self.inner.held.lock() {
            *h.entry(label).or_insert(0) += 1;
        }
        Guard {
            inner: self.inner.clone(),
            label,
        }
    }

    /// Work in flight now: label → how many.
    pub fn held(&self) -> BTreeMap<&'static str, usize> {
        self.inner
            .held
            .lock()
            .map(|h| h.clone())
            .unwrap_or_default()
    }

    /// Stops intake: every [`Activity::stopping`] future resolves.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    /// Whether the daemon is stopping.
    pub fn is_stopping(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// Resolves once [`Activity::stop`] was called (at once if it was).
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Waits until no guard is held, for at most `grace`, saying every 2 s
    /// what it waits for. Returns what was still in flight at the end
    /// (empty: everything finished).
    pub async fn drain(&self, grace: Duration) -> BTreeMap<&'static str, usize> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut report = tokio::time::Instant::now() + REPORT_EVERY;
        loop {
            // Registered before the check, so a guard dropped in between
            // still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let held = self.held();
            if held.is_empty() {
                return held;
            }
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(report) => {
                    tracing::info!(waiting_for = %describe(&held), "stopping: waiting for work in flight");
                    report += REPORT_EVERY;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        left = %describe(&held),
                        grace_s = grace.as_secs(),
                        "stopping: grace period over, leaving work in flight (it resumes at the next start)"
                    );
                    return held;
                }
            }
        }
    }
}

/// `label ×n, label ×n` for the log.
fn describe(held: &BTreeMap<&'static str, usize>) -> String {
    held.iter()
        .map(|(l, n)| format!("{l} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_every_guard_and_no_longer_than_the_grace() {
        let a = Activity::new();
        assert!(a.drain(Duration::from_secs(1)).await.is_empty());
        let g1 = a.guard("smtp connection");
        let g2 = a.guard("smtp connection");
        let g3 = a.guard("campaign worker");
        assert_eq!(a.held().get("smtp connection"), Some(&2));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(g1);
            drop(g3);
        });
        // Gives up at the grace with what is left.
        let left = a.drain(Duration::from_millis(300)).await;
        assert_eq!(left, BTreeMap::from([("smtp connection", 1)]));
        drop(g2);
        assert!(a.drain(Duration::from_secs(60)).await.is_empty());
    }

    #[tokio::test]
    async fn stop_reaches_every_watcher_also_late_ones() {
        let a = Activity::new();
        let early = a.stopping();
        assert!(!a.is_stopping());
        a.stop();
        early.await;
        a.stopping().await;
        assert!(a.is_stopping());
    }
}
