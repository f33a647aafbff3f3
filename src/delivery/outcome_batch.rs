//! Delivery outcomes reach the store in batches.
//!
//! Why: an outcome written as a job of its own goes into whatever batch the
//! store's writer commits next, and while mail is also being taken in (the
//! pipeline: accepted while delivered) that is a synced commit answering
//! an API caller. The outcome's pages (the message's record, its due entry
//! and body, the finished log, the counters) then add scattered pages to
//! that commit's fdatasync, which the caller waits for. Gathered for
//! [`WINDOW`], the outcomes of many messages share those pages and land in
//! one commit in a few dozen. Only journaled outcomes wait: one whose
//! caller waits for the store's commit (no journal entry: a connection
//! deferring a dead destination's jobs one after another, a gate with the
//! journal off) is written with what is already there, at once.
//!
//! An outcome is durable before it gets here (the outcome journal), or its
//! caller waits for this batch's synced commit (the journal failed). A
//! batch that fails tells each caller so; the caller then writes its
//! outcome alone (`outcome::record_job`), so one outcome that cannot be
//! written never holds back the others.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::outcome::{Outcome, RetryPolicy, add_warm_use, record_outcomes};
use super::shaping::WarmUse;
use crate::store::{Store, StoreError, WriteTables};

/// How long the first outcome of a batch waits for others.
const WINDOW: Duration = Duration::from_millis(10);
/// Most outcomes (messages) in one batch.
const MAX_ITEMS: usize = 512;

/// One message's outcomes, to record.
#[derive(Clone)]
pub(super) struct Item {
    /// Queue id.
    pub msg: u64,
    /// (recipient index, outcome).
    pub outcomes: Vec<(usize, Outcome)>,
    /// The server that answered.
    pub host: Option<String>,
    /// When (ms).
    pub now: i64,
    /// Retry settings.
    pub policy: RetryPolicy,
    /// Warm-up use to count.
    pub warm: Option<WarmUse>,
    /// Already durable in the outcome journal: the commit need not sync.
    pub journaled: bool,
}

impl Item {
    /// Writes these outcomes in the job's transaction.
    pub(super) fn write(&self, t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        record_outcomes(
            t,
            self.msg,
            &self.outcomes,
            self.host.as_deref(),
            self.now,
            &self.policy,
        )?;
        add_warm_use(t, self.warm.as_ref())
    }
}

/// Gathers outcomes into batches; its task starts on first use.
#[derive(Default)]
pub(super) struct Batcher {
    tx: OnceLock<mpsc::UnboundedSender<(Item, oneshot::Sender<bool>)>>,
}

impl Batcher {
    /// Records `item` with others; `true` once committed, `false` if its
    /// batch failed (or the store is closing): the caller writes it alone.
    pub(super) async fn record(&self, store: &Store, item: Item) -> bool {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run(store.clone(), rx));
            tx
        });
        let (done, rx) = oneshot::channel();
        if tx.send((item, done)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// Gathers and writes batches, one at a time, while anyone sends.
async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<(Item, oneshot::Sender<bool>)>) {
    while let Some(first) = rx.recv().await {
        let mut waits = !first.0.journaled;
        let mut items = vec![first];
        let until = tokio::time::Instant::now() + WINDOW;
        // An outcome not in the journal has a caller waiting for its commit
        // (a connection deferring its jobs one by one, a gate with the
        // journal off): it ends the window at once.
        while items.len() < MAX_ITEMS && !waits {
            tokio::select! {
                biased;
                item = rx.recv() => match item {
                    Some(i) => {
                        waits = !i.0.journaled;
                        items.push(i);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        // And whatever else is already waiting comes along.
        while items.len() < MAX_ITEMS {
            match rx.try_recv() {
                Ok(i) => items.push(i),
                Err(_) => break,
            }
        }
        write(&store, items).await;
    }
}

/// Writes a batch in one store job and tells each caller.
async fn write(store: &Store, items: Vec<(Item, oneshot::Sender<bool>)>) {
    let (work, dones): (Vec<Item>, Vec<_>) = items.into_iter().unzip();
    let written = store
        .write(move |t| {
            if work.iter().all(|i| i.journaled) {
                t.sync_later();
            }
            work.iter().try_for_each(|i| i.write(t))
        })
        .await;
    if let Err(e) = &written {
        tracing::debug!(error = %e, outcomes = dones.len(), "a batch of outcomes failed; each is written alone");
    }
    for d in dones {
        let _ = d.send(written.is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::model::{QueuedMessage, Recipient};
    use crate::store::ReadTables as _;

    /// A store with messages 1..=n queued, one recipient each.
    fn store_with_messages(dir: &std::path::Path, n: u64) -> Result<Store, StoreError> {
        let store = Store::open(dir)?;
        store.write_wait(move |t| {
            for id in 1..=n {
                let rcpt = Recipient::queued(format!("u{id}@example.com"), None);
                t.put_message(&mut QueuedMessage::sample(id, vec![rcpt], None), Some(b"b"))?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    fn delivered(msg: u64) -> Item {
        Item {
            msg,
            outcomes: vec![(0, Outcome::Delivered("250 ok".into()))],
            host: Some("mx".into()),
            now: 1_000,
            policy: RetryPolicy {
                schedule: vec![Duration::from_secs(60)],
                max_age_ms: 3_600_000,
            },
            warm: None,
            journaled: true,
        }
    }

    /// Outcomes sent together are committed in one store job; a batch
    /// with one outcome that cannot be written fails as a whole and tells
    /// every caller so (who then write alone, `outcome::write_alone`),
    /// and the good outcome goes through once alone.
    #[test]
    fn a_batch_commits_together_and_a_bad_outcome_fails_it_for_all()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = store_with_messages(dir.path(), 3)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let batcher = Batcher::default();
        let jobs_before = store.stats.jobs.load(std::sync::atomic::Ordering::Relaxed);
        let (a, b) = rt.block_on(async {
            tokio::join!(
                batcher.record(&store, delivered(1)),
                batcher.record(&store, delivered(2))
            )
        });
        assert!(a && b);
        let jobs = store.stats.jobs.load(std::sync::atomic::Ordering::Relaxed) - jobs_before;
        assert_eq!(jobs, 1, "two outcomes, one store job");
        let finished = |id| store.read_blocking(move |v| Ok(v.finished_message(id)?.is_some()));
        assert!(finished(1)? && finished(2)?);

        // Message 4's record is damaged: recording its outcome fails.
        store.write_wait(|t| t.damage_queued_message(4))?;
        let (good, bad) = rt.block_on(async {
            tokio::join!(
                batcher.record(&store, delivered(3)),
                batcher.record(&store, delivered(4))
            )
        });
        assert!(!good && !bad, "the batch failed for both");
        assert!(!finished(3)?);
        assert!(rt.block_on(batcher.record(&store, delivered(3))));
        assert!(finished(3)?);
        drop(rt);
        store.close();
        Ok(())
    }

    /// A journaled outcome waits up to [`WINDOW`] for others; one whose
    /// caller waits for the commit (not journaled) is written at once.
    /// Timed on tokio's paused clock, which moves only to a pending timer.
    #[test]
    fn only_journaled_outcomes_wait_for_others() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = store_with_messages(dir.path(), 2)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        let batcher = Batcher::default();
        let waited = |item: Item| {
            rt.block_on(async {
                let start = tokio::time::Instant::now();
                let ok = batcher.record(&store, item).await;
                (ok, start.elapsed())
            })
        };
        let waiting_caller = Item {
            journaled: false,
            ..delivered(1)
        };
        assert_eq!(waited(waiting_caller), (true, Duration::ZERO));
        assert_eq!(waited(delivered(2)), (true, WINDOW));
        drop(rt);
        store.close();
        Ok(())
    }
}
