//! The recipient address index, kept up in bulk.
//!
//! A message is not indexed by recipient address when it is queued: the
//! index is keyed by a salted hash, so each entry lands on a random page,
//! and a random page in every synced commit that accepts mail costs that
//! commit an fdatasync of one more scattered page (about 6% of the accept
//! path's throughput, measured). Lookups (erasure, the export) read the
//! records above the index's mark instead (`store::queue`,
//! `ADDRESS_INDEX_UPTO`), and this loop indexes them, [`CHUNK`] queue ids
//! at a time, once the store is quiet — or regardless, once more than
//! [`MAX_BACKLOG`] wait, so that a lookup never reads more than about that
//! many records (an erasure runs in the store's writer: 200,000 records
//! are a few tenths of a second).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::engine::Inner;
use crate::store::ReadTables as _;

/// How often the loop looks.
const TICK: Duration = Duration::from_secs(1);
/// The store is quiet when it committed at most this many jobs in a tick.
const QUIET_JOBS: u64 = 100;
/// Queue ids indexed in one write.
const CHUNK: u64 = 5_000;
/// Past this many unindexed queue ids, the loop indexes even under load.
const MAX_BACKLOG: u64 = 200_000;

/// Whether to index now.
fn due(backlog: u64, jobs_in_tick: u64) -> bool {
    backlog > 0 && (jobs_in_tick <= QUIET_JOBS || backlog > MAX_BACKLOG)
}

/// Runs until the daemon stops.
pub(super) async fn run(inner: Arc<Inner>) {
    let stopping = inner.activity.stopping();
    tokio::pin!(stopping);
    let jobs = || inner.store.stats.jobs.load(Ordering::Relaxed);
    let mut before = jobs();
    loop {
        tokio::select! {
            biased;
            _ = &mut stopping => break,
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = jobs();
        let in_tick = now.saturating_sub(before);
        before = now;
        let mark = match inner.store.read(|r| r.address_index_mark()).await {
            Ok(m) => m,
            Err(e) => {
                if !e.is_unavailable() {
                    tracing::warn!(error = %e, "cannot read the address index's mark");
                }
                continue;
            }
        };
        if !due(mark.backlog(), in_tick) {
            continue;
        }
        match inner
            .store
            .write(|t| {
                // Nothing waits for it: the next synced commit makes it durable.
                t.sync_later();
                t.index_recent_addresses(CHUNK)
            })
            .await
        {
            Ok(m) => tracing::debug!(
                upto = m.upto,
                backlog = m.backlog(),
                "indexed recipient addresses"
            ),
            Err(e) if e.is_unavailable() => {}
            Err(e) => tracing::warn!(error = %e, "cannot index recipient addresses; trying again"),
        }
        // The loop's own job is not load.
        before = jobs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_when_quiet_or_far_behind() {
        assert!(!due(0, 0), "nothing to index");
        assert!(due(1, 0), "quiet");
        assert!(due(10, QUIET_JOBS), "still quiet");
        assert!(!due(10, QUIET_JOBS + 1), "busy, little behind");
        assert!(due(MAX_BACKLOG + 1, 10_000), "busy, far behind");
    }
}
