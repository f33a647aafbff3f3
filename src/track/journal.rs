//! The hit journal. An open or click is appended to `hits_v1` and committed
//! (group commit) before the pixel or redirect is answered: that is the
//! durability guarantee — an answered hit survives a crash. Applying it
//! (counters, engagement flags, per-link counts, history, last click) is
//! done by the [`Applier`] shortly after, in batches of up to
//! [`APPLY_BATCH`] hits per transaction, in journal order, each batch
//! removing the hits it applied in the same transaction (so a crash between
//! two batches neither loses nor repeats one). The hot path thus writes one
//! appended row instead of touching several tables at random places, and
//! the applier's batches touch each counter page once for many hits.
//!
//! Readers that must see every answered hit (reports, contact history)
//! call [`drain`] first; it applies what is left in the writer's order.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{Hit, HitKind, Recorded};
use crate::metrics::HitLabels;

/// The `tracking_hits` counter family.
pub type HitCounters = prometheus_client::metrics::family::Family<
    HitLabels,
    prometheus_client::metrics::counter::Counter,
>;
use crate::store::{Store, StoreError, WriteTables};
use crate::tokens::{MessageRef, SendKind, SendRef};

/// Hits applied per write transaction: large enough to share pages between
/// many hits, small enough that the writer answers other callers within a
/// few milliseconds.
pub const APPLY_BATCH: usize = 1000;

/// How long the applier lets hits gather after the first one arrives.
const GATHER: Duration = Duration::from_millis(100);

/// A hit as the journal keeps it (postcard).
#[derive(Debug, Serialize, Deserialize)]
struct Logged {
    send_kind: u8,
    send_id: u64,
    variant: u32,
    contact: u64,
    at: i64,
    click: Option<(u32, String)>,
    machine: Option<String>,
    scanner_window_ms: i64,
}

/// Encodes a hit for the journal.
pub fn encode(hit: &Hit) -> Vec<u8> {
    let m = hit.message;
    let logged = Logged {
        send_kind: m.send.kind.code(),
        send_id: m.send.id,
        variant: m.send.variant,
        contact: m.contact,
        at: hit.at,
        click: match &hit.kind {
            HitKind::Open => None,
            HitKind::Click { link, url } => Some((*link, url.clone())),
        },
        machine: hit.machine.clone(),
        scanner_window_ms: hit.scanner_window_ms,
    };
    postcard::to_allocvec(&logged).unwrap_or_default()
}

fn decode(b: &[u8]) -> Option<Hit> {
    let l: Logged = postcard::from_bytes(b).ok()?;
    Some(Hit {
        message: MessageRef {
            send: SendRef {
                kind: SendKind::from_code(l.send_kind)?,
                id: l.send_id,
                variant: l.variant,
            },
            contact: l.contact,
        },
        kind: match l.click {
            None => HitKind::Open,
            Some((link, url)) => HitKind::Click { link, url },
        },
        at: l.at,
        machine: l.machine,
        scanner_window_ms: l.scanner_window_ms,
    })
}

/// Applies up to `limit` journalled hits; returns (open?, recorded) of each.
fn apply(t: &mut WriteTables<'_>, limit: usize) -> Result<Vec<(bool, Recorded)>, StoreError> {
    let mut out = Vec::new();
    for b in t.take_hits(limit)? {
        match decode(&b) {
            Some(hit) => {
                let open = matches!(hit.kind, HitKind::Open);
                out.push((open, super::record(t, hit)?));
            }
            None => tracing::error!(
                bytes = b.len(),
                "an unreadable hit in the journal was dropped"
            ),
        }
    }
    Ok(out)
}

fn count(metrics: &HitCounters, done: &[(bool, Recorded)]) {
    for (open, r) in done.iter().filter(|(_, r)| r.counted) {
        metrics
            .get_or_create(&HitLabels {
                kind: if *open { "open" } else { "click" },
                class: if r.machine.is_some() {
                    "machine"
                } else {
                    "human"
                },
            })
            .inc();
    }
}

/// Applies every hit journalled so far. Returns how many were applied.
pub async fn drain(store: &Store, metrics: &HitCounters) -> Result<usize, StoreError> {
    let mut n = 0;
    loop {
        let done = store.write(|t| apply(t, APPLY_BATCH)).await?;
        n += done.len();
        count(metrics, &done);
        if done.len() < APPLY_BATCH {
            return Ok(n);
        }
    }
}

/// Applies journalled hits in the background.
pub struct Applier {
    store: Store,
    metrics: HitCounters,
    wake: Notify,
    /// Set when a hit was journalled and maybe not applied yet.
    pending: std::sync::atomic::AtomicBool,
    /// One drain at a time: a caller that finds it taken waits for it and
    /// then looks again.
    draining: tokio::sync::Mutex<()>,
    /// The next journal key.
    next: std::sync::atomic::AtomicU64,
}

impl Applier {
    /// An applier for `store`.
    pub async fn new(store: Store, metrics: HitCounters) -> Result<Arc<Applier>, StoreError> {
        let last = store.read(|r| r.last_hit()).await?;
        Ok(Arc::new(Applier {
            next: std::sync::atomic::AtomicU64::new(last + 1),
            store,
            metrics,
            wake: Notify::new(),
            // Hits of an earlier run may wait in the journal.
            pending: std::sync::atomic::AtomicBool::new(true),
            draining: tokio::sync::Mutex::new(()),
        }))
    }

    /// Journals a hit: returns once it is committed.
    pub async fn push(&self, hit: &Hit) -> Result<(), StoreError> {
        let bytes = encode(hit);
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.store.append_hit(seq, bytes).await?;
        self.pending
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
        Ok(())
    }

    /// Applies every hit journalled so far (for readers that must see them).
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let _one = self.draining.lock().await;
        if !self
            .pending
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Ok(0);
        }
        let r = drain(&self.store, &self.metrics).await;
        if r.is_err() {
            self.pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    /// Applies hits as they come (letting them gather for [`GATHER`], so
    /// hits arriving together are applied together) until `stop` resolves; hits
    /// left over are applied at the next start.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let drained = self.drain().await;
            self.store.report_loop("hit applier", &drained);
            if let Err(e) = drained {
                tracing::error!(error = %e, "applying tracking hits failed; retrying");
            }
            tokio::select! {
                () = &mut stop => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(GATHER) => {}
            }
        }
    }
}
