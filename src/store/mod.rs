//! The store: the only code that knows redb.
//!
//! One redb file (`herald.redb` in the storage directory), opened and locked by
//! `herald serve`. Writes go through one writer thread that takes every job
//! waiting in its queue, runs them all in a single write transaction, commits
//! once (an fsync) and only then answers each caller: the "one writer, group
//! commit" pattern that keeps acknowledged work durable without an fsync per
//! request. Reads run concurrently in their own read transactions on blocking
//! threads, never on the async runtime's workers.
//!
//! Domain logic (what an upsert means, consent rules) lives in the domain
//! modules; they receive a [`WriteTables`] or [`ReadView`] whose typed methods
//! are the whole vocabulary they have for the data.
//!
//! Where things are: `tables.rs` names every table once (its constant, its
//! creation at open, its field on the write side and the read side). This
//! file has [`Store`] (open, schema check and upgrade, the writer thread, the
//! write and read entry points), the plumbing of [`WriteTables`] and
//! [`ReadView`] (opening, counters summed in memory and flushed before the
//! commit), [`Change`], [`Sequence`], [`StoreError`] and the JSON helpers.
//! `read.rs` has [`ReadTables`], the lookups both sides make, written once.
//! Each domain's typed methods are in its own file: `contacts.rs` (contacts,
//! their indexes and consent log, suppressions, fields, lists, tags,
//! imports), `queue.rs`, `send.rs`, `audience.rs`, `shop.rs`, `render.rs`
//! (products, links), `track.rs`, `signup.rs`, `coupons.rs` (coupon pools),
//! `automation.rs` (automation runs and their timers), `mta_sts.rs`
//! (the MTA-STS policy cache). `migrate.rs` upgrades
//! the schema of older files. The writer runs the automations' hook
//! ([`Hook`]) at the end of every write transaction, before the commit.

mod audience;
pub mod automation;
mod contacts;
mod coupons;
mod inbound;
mod migrate;
mod mta_sts;
mod queue;
mod read;
mod render;
mod send;
mod shaping;
mod shop;
mod signup;
pub mod tables;
mod track;
mod users;

pub use audience::{decode_ids, encode_ids};
pub use contacts::{ContactIndex, suppression_key};
pub use inbound::SoftStreak;
pub use queue::{DueEntry, QueueSummary};
pub use read::ReadTables;
pub use send::{LinkCounts, SendCounts, hour_of};
pub use track::HistoryEvent;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use crate::contacts::model::{Contact, FieldDef, List};
use tables::*;

/// Why a store operation failed. These are failures of the store itself (disk,
/// corruption, version), never of the caller's input.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the file.
    #[error("the store {0} is in use by another herald process")]
    Locked(PathBuf),
    /// The file was written by a newer Herald.
    #[error(
        "the store {path} has schema version {found}, newer than this herald understands ({known}); \
         run the newer herald or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    /// The file is older than any schema this binary can upgrade.
    #[error(
        "the store {path} has schema version {found}, older than this herald can upgrade \
         (oldest {oldest}); upgrade it with an intermediate release first"
    )]
    TooOld {
        path: PathBuf,
        found: u64,
        oldest: u64,
    },
    /// The file is a redb file but not Herald's.
    #[error("{0} is not a Herald store (it has tables but no schema version)")]
    Foreign(PathBuf),
    /// redb reported a problem.
    #[error("storage error: {0}")]
    Redb(String),
    /// A stored value could not be decoded.
    #[error("corrupt record in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
    /// The writer thread is gone (shutting down).
    #[error("the store is shutting down")]
    Closed,
    /// An I/O error around the store file.
    #[error("{0}")]
    Io(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Redb(e.to_string()) }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A committed change that derived in-memory state (the segment index) must
/// follow. The writer hands each transaction's changes to the observer after
/// the commit and before any caller is answered, in commit order, so whatever
/// a caller was told is stored is already visible to segments.
#[derive(Debug, Clone)]
pub enum Change {
    /// A contact was created or changed: its new version, and the lists and
    /// tags it left.
    Contact {
        /// The contact as stored now.
        contact: Arc<Contact>,
        /// Lists it is no longer in.
        removed_lists: Vec<u64>,
        /// Tags it no longer has.
        removed_tags: Vec<String>,
        /// Lists it joined.
        added_lists: Vec<u64>,
        /// Tags it got.
        added_tags: Vec<String>,
        /// Its consent before (`None`: the contact is new).
        consent_before: Option<crate::contacts::model::ConsentState>,
    },
    /// An order was stored (new, or a newer version of it).
    Order {
        /// The version stored before, if any.
        before: Option<Arc<crate::shop::model::Order>>,
        /// The version stored now.
        order: Arc<crate::shop::model::Order>,
    },
    /// A product's stock went from none (0 or less) to some.
    Restocked {
        /// The product's SKU.
        sku: String,
    },
    /// A contact signed up (a signup event or form), or confirmed a
    /// signup by the link in the confirmation message.
    Signup {
        /// Contact id.
        contact: u64,
        /// The list joined (or to be joined on confirmation), if any.
        list: Option<u64>,
        /// The confirmation, rather than the signup.
        confirmed: bool,
    },
    /// A contact was erased.
    ContactDeleted(u64),
    /// A list was deleted (its members were taken out of it).
    ListDeleted(u64),
    /// A custom field was deleted (its values were removed from contacts).
    FieldDeleted(String),
    /// A contact's shop aggregates changed.
    Stats {
        /// Contact id.
        contact: u64,
        /// The scalar aggregates as stored now (maps emptied).
        scalars: Box<crate::shop::model::ShopStats>,
        /// Purchases and payment types added and removed.
        delta: Box<crate::shop::model::StatsDelta>,
    },
    /// A contact's cart changed (`after: None`: emptied).
    Cart {
        /// Contact id.
        contact: u64,
        /// What was stored before.
        before: Option<Arc<crate::shop::model::Cart>>,
        /// What is stored now.
        after: Option<Arc<crate::shop::model::Cart>>,
    },
    /// Messages of a send were queued for these contacts.
    Sent {
        /// The send (slot 0).
        send: crate::send::model::SendRef,
        /// Contact ids.
        contacts: Vec<u64>,
    },
    /// A contact opened or clicked a send's message.
    Engaged {
        /// The send (slot 0).
        send: crate::send::model::SendRef,
        /// Contact id.
        contact: u64,
        /// A click (and so an open) rather than an open only.
        click: bool,
        /// When, in ms.
        at: i64,
    },
}

/// Receives every transaction's [`Change`]s after its commit.
pub type Observer = Arc<dyn Fn(Vec<Change>) + Send + Sync>;

/// Runs at the end of every write transaction that changed something, with
/// the transaction's [`Change`]s, and writes in the same transaction
/// (automations arm their triggers here, so a trigger commits with the
/// event that fired it). `Err` aborts the transaction like any job's.
pub type Hook =
    Arc<dyn for<'a> Fn(&mut WriteTables<'a>, &[Change]) -> Result<(), StoreError> + Send + Sync>;
type Job = Box<dyn for<'a> FnOnce(&mut WriteTables<'a>) -> (bool, Completion) + Send>;

/// What the writer is sent: a job over every table, or a tracking hit to
/// append to the journal. A batch of hits alone opens only the journal's
/// table, which keeps the commit that answers a pixel short.
enum Work {
    Job(Job),
    Hit(u64, Vec<u8>, Completion),
}

/// redb page cache used unless the config says otherwise.
pub const DEFAULT_CACHE_BYTES: usize = crate::config::storage::DEFAULT_CACHE_BYTES;

/// Largest number of jobs folded into one transaction.
const MAX_BATCH_JOBS: usize = 512;

/// How long the writer waits for more jobs before committing a batch, when
/// the store is busy.
const LINGER: std::time::Duration = std::time::Duration::from_micros(0);

/// Counters about the writer, for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Write transactions committed.
    pub commits: AtomicU64,
    /// Jobs committed (one API write, one import batch…).
    pub jobs: AtomicU64,
}

/// A handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::Sender<Work>,
    /// Writer statistics.
    pub stats: Arc<StoreStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    observer: Arc<std::sync::OnceLock<Observer>>,
    hook: Arc<std::sync::OnceLock<Hook>>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, checks its schema version
    /// and upgrades or refuses it, and starts the writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Like [`Store::open`] with redb's page cache limited to `cache_bytes`
    /// (redb's own default is 1 GiB, which would dominate the daemon's memory).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create the storage directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join("herald.redb");
        let db = match Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::Locked(path)),
            Err(e) => {
                return Err(StoreError::Redb(format!(
                    "cannot open {}: {e}",
                    path.display()
                )));
            }
        };
        prepare_schema(&db, &path)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Work>(1024);
        let stats = Arc::new(StoreStats::default());
        let observer = Arc::new(std::sync::OnceLock::new());
        let hook = Arc::new(std::sync::OnceLock::new());
        let thread = {
            let db = db.clone();
            let stats = stats.clone();
            let observer = observer.clone();
            let hook = hook.clone();
            std::thread::Builder::new()
                .name("herald-store-writer".into())
                .spawn(move || writer_loop(&db, rx, &stats, &observer, &hook))
                .map_err(|e| StoreError::Io(format!("cannot start the store writer: {e}")))?
        };
        Ok(Store {
            db,
            writer: tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            observer,
            hook,
        })
    }

    /// Appends a tracking hit to the journal (`hits_v1`) under `seq`;
    /// returns once it is durably committed.
    pub async fn append_hit(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        let done: Completion = Box::new(move |r| {
            let _ = reply.send(r);
        });
        self.writer
            .send(Work::Hit(seq, bytes, done))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Sets the observer that receives every committed [`Change`] (once; the
    /// segment index). Until it is set, changes are not collected at all.
    pub fn set_observer(&self, o: Observer) -> bool {
        self.observer.set(o).is_ok()
    }

    /// Sets the hook that runs at the end of every write transaction with
    /// its changes (once; the automations). From then on changes are
    /// collected for every transaction.
    pub fn set_hook(&self, h: Hook) -> bool {
        self.hook.set(h).is_ok()
    }

    fn job<R: Send + 'static>(
        f: impl for<'a> FnOnce(&mut WriteTables<'a>) -> Result<R, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<R, StoreError>>,
    ) -> Job {
        Box::new(move |t| {
            let result = f(t);
            let ok = result.is_ok();
            // A job's own error is the most precise answer for its caller;
            // otherwise it gets its result once the commit succeeded.
            let completion: Completion = Box::new(move |commit| {
                let _ = reply.send(result.and_then(|r| commit.map(|()| r)));
            });
            (ok, completion)
        })
    }

    /// Runs `f` in the next group-committed write transaction and returns its
    /// result once the transaction is durably committed. `f` must check its
    /// input before it writes anything: a returned `Err` aborts the whole batch
    /// (it is meant for storage failures, not for rejected input).
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&mut WriteTables<'a>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Work::Job(Self::job(f, reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Like [`Store::write`], for blocking threads (imports). Returns a receiver
    /// so that the caller can prepare the next batch while this one commits.
    pub fn write_blocking<R: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&mut WriteTables<'a>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<oneshot::Receiver<Result<R, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .blocking_send(Work::Job(Self::job(f, reply)))
            .map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    /// [`Store::write_blocking`] that waits for the commit: for a blocking
    /// thread with nothing to prepare meanwhile.
    pub fn write_wait<R: Send + 'static>(
        &self,
        f: impl for<'a> FnOnce(&mut WriteTables<'a>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.write_blocking(f)?
            .blocking_recv()
            .map_err(|_| StoreError::Closed)?
    }

    /// A snapshot taken by the writer between two transactions, for a
    /// blocking thread: it holds exactly what was committed before, and
    /// `at_boundary` runs at that moment, after every earlier commit was
    /// handed to the observer and before any later one is. A consumer that
    /// queues observed changes can drop its queue there and replay only what
    /// comes after, never applying a change twice.
    pub fn snapshot_blocking(
        &self,
        at_boundary: impl FnOnce() + Send + 'static,
    ) -> Result<ReadView, StoreError> {
        let db = self.db.clone();
        let rx = self.write_blocking(move |_t| {
            at_boundary();
            Ok(db.begin_read()?)
        })?;
        let txn = rx.blocking_recv().map_err(|_| StoreError::Closed)??;
        Ok(ReadView::new(txn))
    }

    /// Runs `f` over a consistent snapshot on a blocking thread.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadView) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let view = ReadView::new(db.begin_read()?);
            f(&view)
        })
        .await
        .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// Runs `f` over a consistent snapshot on the calling (blocking) thread.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&ReadView) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let view = ReadView::new(self.db.begin_read()?);
        f(&view)
    }

    /// Stops accepting writes from this handle and, once no other handle is
    /// left, waits (up to ten seconds) for the writer to commit what it has and
    /// close the file cleanly.
    pub fn close(self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let Store { writer, db, .. } = self;
        drop(writer);
        drop(db);
        if let Some(t) = thread {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("the store writer is still busy; other handles are open");
            }
        }
    }
}

fn prepare_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    // Any table but `meta` means the file already holds data.
    let has_data_tables = txn
        .list_tables()?
        .any(|t| redb::TableHandle::name(&t) != redb::TableHandle::name(&META));
    let mut upgrade_from = None;
    {
        let mut meta = txn.open_table(META)?;
        let version = meta.get("schema_version")?.map(|v| decode_u64(v.value()));
        match version {
            None if has_data_tables => {
                return Err(StoreError::Foreign(path.to_path_buf()));
            }
            None => {
                meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes().as_slice())?;
                let salt: [u8; 32] = rand::random();
                meta.insert("salt", salt.as_slice())?;
                tracing::info!(path = %path.display(), schema = SCHEMA_VERSION, "created a new store");
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::TooNew {
                    path: path.to_path_buf(),
                    found: v,
                    known: SCHEMA_VERSION,
                });
            }
            Some(v) if v < OLDEST_UPGRADABLE => {
                return Err(StoreError::TooOld {
                    path: path.to_path_buf(),
                    found: v,
                    oldest: OLDEST_UPGRADABLE,
                });
            }
            Some(v) => {
                tracing::info!(from = v, to = SCHEMA_VERSION, "upgrading the store schema");
                meta.insert("schema_version", SCHEMA_VERSION.to_be_bytes().as_slice())?;
                upgrade_from = Some(v);
            }
        }
    }
    // The migration runs in this same transaction: an upgrade is all or
    // nothing, and a crash in the middle leaves the old schema to migrate
    // again.
    if let Some(v) = upgrade_from {
        migrate::run(&txn, v)?;
    }
    // Create every table so that read transactions can open them.
    tables::create_all(&txn)?;
    queue::index_addresses(&txn)?;
    txn.commit()?;
    Ok(())
}

fn decode_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<Work>,
    stats: &StoreStats,
    observer: &std::sync::OnceLock<Observer>,
    hook: &std::sync::OnceLock<Hook>,
) {
    let mut busy = false;
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        // Under load (the last batch had several jobs), linger a moment for
        // more: every commit costs an fsync, so fewer, larger batches leave
        // more CPU for the callers; an idle store commits at once.
        let linger = std::time::Instant::now() + LINGER;
        while jobs.len() < MAX_BATCH_JOBS {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) if busy && std::time::Instant::now() < linger => {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
                Err(_) => break,
            }
        }
        busy = jobs.len() >= 4;
        let n = jobs.len() as u64;
        let completions = run_batch(db, jobs, observer.get().is_some(), hook.get());
        match completions {
            Ok((done, changes)) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats.jobs.fetch_add(n, Ordering::Relaxed);
                if let Some(o) = observer.get()
                    && !changes.is_empty()
                {
                    o(changes);
                }
                for c in done {
                    c(Ok(()));
                }
            }
            Err((e, done)) => {
                tracing::error!(error = %e, jobs = n, "store write transaction failed; the batch was not committed");
                for c in done {
                    c(Err(StoreError::Redb(format!(
                        "write transaction failed: {e}"
                    ))));
                }
            }
        }
    }
}

type BatchResult = Result<(Vec<Completion>, Vec<Change>), (StoreError, Vec<Completion>)>;

fn run_batch(db: &Database, work: Vec<Work>, observed: bool, hook: Option<&Hook>) -> BatchResult {
    // If no transaction can be started, dropping the jobs drops their reply
    // channels, and every caller sees the store as unavailable.
    let txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return Err((e.into(), Vec::new())),
    };
    let mut completions = Vec::with_capacity(work.len());
    let mut jobs = Vec::with_capacity(work.len());
    let mut hits = Vec::new();
    for w in work {
        match w {
            Work::Job(j) => jobs.push(j),
            Work::Hit(seq, bytes, done) => {
                hits.push((seq, bytes));
                completions.push(done);
            }
        }
    }
    let mut failed = None;
    let mut changes = Vec::new();
    if jobs.is_empty() {
        let appended = (|| -> Result<(), StoreError> {
            let mut t = txn.open_table(HITS)?;
            for (seq, b) in &hits {
                t.insert(*seq, b.as_slice())?;
            }
            Ok(())
        })();
        if let Err(e) = appended {
            let _ = txn.abort();
            return Err((e, completions));
        }
        return match txn.commit() {
            Ok(()) => Ok((completions, changes)),
            Err(e) => Err((e.into(), completions)),
        };
    }
    match WriteTables::open(&txn) {
        Ok(mut tables) => {
            for (seq, b) in &hits {
                if let Err(e) = tables.push_hit(*seq, b) {
                    failed = Some(e);
                }
            }
            if observed || hook.is_some() {
                tables.changes = Some(Vec::new());
            }
            // After a failure the rest still run (into a transaction that
            // will be aborted) so that every caller is told why, rather than
            // finding its reply channel dropped.
            for job in jobs {
                let (ok, completion) = job(&mut tables);
                completions.push(completion);
                if !ok && failed.is_none() {
                    failed = Some(StoreError::Redb(
                        "another write in the same transaction failed".into(),
                    ));
                }
            }
            if failed.is_none()
                && let Some(h) = hook
                && let Err(e) = tables.run_hook(h)
            {
                failed = Some(e);
            }
            if failed.is_none()
                && let Err(e) = tables.flush()
            {
                failed = Some(e);
            }
            changes = tables.changes.take().unwrap_or_default();
        }
        Err(e) => failed = Some(e),
    }
    if let Some(e) = failed {
        let _ = txn.abort();
        return Err((e, completions));
    }
    match txn.commit() {
        Ok(()) => Ok((completions, changes)),
        Err(e) => Err((e.into(), completions)),
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain data types to JSON cannot fail: they hold only
    // strings, numbers, dates and maps with string keys.
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        table,
        message: e.to_string(),
    })
}

// Read helpers shared by write and read views (generic over redb's traits).

fn get_json<'k, K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<Option<T>, StoreError> {
    match t.get(key)? {
        Some(v) => Ok(Some(from_json(name, v.value())?)),
        None => Ok(None),
    }
}

fn meta_u64(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(t.get(key)?.map(|v| decode_u64(v.value())).unwrap_or(0))
}

/// The id sequences kept in META.
#[derive(Debug, Clone, Copy)]
pub enum Sequence {
    /// Contact ids.
    Contact,
    /// List ids.
    List,
    /// Import ids.
    Import,
    /// Consent log entries.
    Consent,
    /// Queued messages.
    Message,
    /// Campaigns.
    Campaign,
    /// Contact history entries.
    History,
    /// Signup requests (the number a confirmation token names).
    Signup,
    /// Activity log entries.
    Activity,
    /// Inbound reports (bounces, complaints, auto-replies).
    Inbound,
}

impl Sequence {
    fn key(self) -> &'static str {
        match self {
            Sequence::Contact => "seq.contact",
            Sequence::List => "seq.list",
            Sequence::Import => "seq.import",
            Sequence::Consent => "seq.consent",
            Sequence::Message => "seq.message",
            Sequence::Campaign => "seq.campaign",
            Sequence::History => "seq.history",
            Sequence::Signup => "seq.signup",
            Sequence::Activity => "seq.activity",
            Sequence::Inbound => "seq.inbound",
        }
    }
}

/// A write transaction's view of the store: every table open (`Tables`,
/// declared in `tables.rs`) and what the transaction accumulates until
/// `flush` (counters, member counts, send counters) or caches (field
/// definitions, whether anything is suppressed). Its methods, spread over
/// the per-domain files (`contacts.rs`, `queue.rs`, `send.rs`…), are the
/// domain modules' whole vocabulary for changing data; lookups are
/// [`ReadTables`] methods, shared with [`ReadView`].
pub struct WriteTables<'t> {
    /// Every table, open for this transaction.
    tables: Tables<'t>,
    /// Changes for the observer, collected only when one is set.
    changes: Option<Vec<Change>>,
    /// Counters (id sequences, per-state counts) read once and written back
    /// once per transaction by `flush`, instead of once per row.
    counters: std::collections::HashMap<&'static str, u64>,
    /// Pending changes to lists' member counts, applied by `flush`.
    list_deltas: std::collections::HashMap<u64, i64>,
    /// Pending changes to send counters (total, hourly, per link),
    /// summed in memory and written once by `flush`: a batch of tracking
    /// hits touches each counter once, not once per hit.
    count_deltas: std::collections::HashMap<(u8, u64, u32, u8), i64>,
    hourly_deltas: std::collections::HashMap<(u8, u64, u32, u8), i64>,
    link_deltas: std::collections::HashMap<(u8, u64, u32, u32, u8), i64>,
    /// Pending additions to automation step counters, written by `flush`
    /// (an import of old orders counts thousands of `missed` per batch).
    step_deltas: std::collections::HashMap<(u64, u32, String), u64>,
    /// Whether any address is suppressed; read once per transaction so that
    /// imports into an installation without erasures skip the hash lookup.
    any_suppressed: bool,
    /// Field definitions, read once per transaction when first needed, so
    /// that every write checks values against the definitions it commits with.
    field_defs: Option<std::collections::HashMap<String, FieldDef>>,
}

impl<'t> WriteTables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        let tables = Tables::open(txn)?;
        let any_suppressed = !tables.suppressions.is_empty()?;
        Ok(WriteTables {
            tables,
            changes: None,
            any_suppressed,
            field_defs: None,
            counters: Default::default(),
            list_deltas: Default::default(),
            count_deltas: Default::default(),
            hourly_deltas: Default::default(),
            link_deltas: Default::default(),
            step_deltas: Default::default(),
        })
    }

    /// Runs the hook over the changes the jobs made; what the hook changes
    /// is added to them (and not handed to the hook again).
    fn run_hook(&mut self, hook: &Hook) -> Result<(), StoreError> {
        let made = self.changes.replace(Vec::new()).unwrap_or_default();
        if made.is_empty() {
            self.changes = Some(made);
            return Ok(());
        }
        let r = hook(self, &made);
        let extra = self.changes.replace(made).unwrap_or_default();
        if let Some(c) = self.changes.as_mut() {
            c.extend(extra);
        }
        r
    }

    /// Records a change for the observer (built only when one listens).
    fn note(&mut self, change: impl FnOnce() -> Change) {
        if let Some(c) = self.changes.as_mut() {
            c.push(change());
        }
    }

    fn bump(&mut self, key: &'static str, delta: i64) -> Result<u64, StoreError> {
        let now = match self.counters.get(key) {
            Some(v) => *v,
            None => meta_u64(&self.tables.meta, key)?,
        };
        let next = now.saturating_add_signed(delta);
        self.counters.insert(key, next);
        Ok(next)
    }

    /// Writes cached counters and list member counts back. Called by the
    /// writer once per transaction, before commit.
    fn flush(&mut self) -> Result<(), StoreError> {
        let t = &mut self.tables;
        for (k, v) in std::mem::take(&mut self.counters) {
            t.meta.insert(k, v.to_be_bytes().as_slice())?;
        }
        for (k, d) in std::mem::take(&mut self.count_deltas) {
            let now = t.send_counts.get(k)?.map(|v| v.value()).unwrap_or(0);
            t.send_counts.insert(k, now.saturating_add_signed(d))?;
        }
        for (k, d) in std::mem::take(&mut self.hourly_deltas) {
            let now = t.send_hourly.get(k)?.map(|v| v.value()).unwrap_or(0);
            t.send_hourly.insert(k, now.saturating_add_signed(d))?;
        }
        for ((flow, step, name), d) in std::mem::take(&mut self.step_deltas) {
            let k = (flow, step, name.as_str());
            let now = t.auto_counts.get(k)?.map(|v| v.value()).unwrap_or(0);
            t.auto_counts.insert(k, now.saturating_add(d))?;
        }
        for (k, d) in std::mem::take(&mut self.link_deltas) {
            let now = t.send_links.get(k)?.map(|v| v.value()).unwrap_or(0);
            t.send_links.insert(k, now.saturating_add_signed(d))?;
        }
        for (id, delta) in std::mem::take(&mut self.list_deltas) {
            if let Some(mut l) = get_json::<u64, List>(&t.lists, "lists", id)? {
                l.member_count = l.member_count.saturating_add_signed(delta);
                t.lists.insert(id, to_json(&l).as_slice())?;
            }
        }
        Ok(())
    }

    /// Allocates the next id of a sequence.
    pub fn next_id(&mut self, sequence: Sequence) -> Result<u64, StoreError> {
        self.bump(sequence.key(), 1)
    }
}

fn all_json<K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for r in t.iter()? {
        let (_, v) = r?;
        out.push(from_json(name, v.value())?);
    }
    Ok(out)
}

/// A consistent read-only snapshot of the store (one read transaction).
/// Lookups it shares with the write side are [`ReadTables`] methods; the
/// per-domain files add the listings and scans only readers make.
pub struct ReadView {
    /// The transaction's tables, each opened on first use.
    tables: ReadOnlyTables,
}

impl ReadView {
    fn new(txn: ReadTransaction) -> ReadView {
        ReadView {
            tables: ReadOnlyTables::new(txn),
        }
    }

    /// The stored schema version.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        meta_u64(self.tables.meta()?, "schema_version")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::model::{ConsentState, Contact, List};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Runs a write job and waits for its commit.
    #[test]
    fn schema_version_is_written_and_checked() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        assert_eq!(store.read_blocking(|r| r.schema_version())?, SCHEMA_VERSION);
        Ok(())
    }

    #[test]
    fn decode_u64_reads_big_endian() {
        assert_eq!(decode_u64(&7u64.to_be_bytes()), 7);
        assert_eq!(decode_u64(&[]), 0);
    }

    /// A failing job aborts its transaction: it gets its own error, the other
    /// callers in the same transaction are told why, and nothing is stored.
    #[test]
    fn a_failed_job_aborts_its_group_and_every_caller_hears_why() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        // Hold the writer (it signals once it is inside the job) so that the
        // next two jobs queue up and share one transaction.
        let (started_tx, started) = std::sync::mpsc::channel();
        let hold = store.write_blocking(move |_| {
            let _ = started_tx.send(());
            std::thread::sleep(std::time::Duration::from_millis(200));
            Ok(())
        })?;
        started.recv()?;
        let failing = store.write_blocking(|_| -> Result<(), StoreError> {
            Err(StoreError::Corrupt {
                table: "test",
                message: "boom".into(),
            })
        })?;
        let now = chrono::Utc::now();
        let list = List {
            id: 7,
            name: "x".into(),
            description: None,
            member_count: 0,
            created_at: now,
        };
        let innocent = store.write_blocking(move |t| t.put_list(&list, None))?;
        hold.blocking_recv()??;
        let own = failing
            .blocking_recv()?
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(own.contains("boom"), "{own}");
        let other = innocent
            .blocking_recv()?
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            other.contains("another write in the same transaction failed"),
            "{other}"
        );
        assert!(store.read_blocking(|r| r.list(7))?.is_none());
        Ok(())
    }

    fn contact(id: u64, list: u64) -> Contact {
        let now = chrono::Utc::now();
        Contact {
            id,
            email: format!("c{id}@example.com"),
            consent: ConsentState::Unknown,
            language: None,
            site: None,
            fields: Default::default(),
            lists: [list].into_iter().collect(),
            tags: Default::default(),
            created_at: now,
            updated_at: now,
        }
    }

    /// Regression: editing a list in the same transaction as a member change
    /// applied the pending member-count change twice.
    #[test]
    fn editing_a_list_in_the_same_transaction_as_new_members_counts_them_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let now = chrono::Utc::now();
        let list = List {
            id: 1,
            name: "l".into(),
            description: None,
            member_count: 0,
            created_at: now,
        };
        store.write_wait(move |t| t.put_list(&list, None))?;
        let seen_in_txn = store.write_wait(|t| {
            t.put_contact(&contact(1, 1), None)?;
            t.put_contact(&contact(2, 1), None)?;
            let Some(mut l) = t.list(1)? else {
                return Ok(None);
            };
            let seen = l.member_count;
            l.description = Some("edited".into());
            t.put_list(&l, Some("l"))?;
            t.put_contact(&contact(3, 1), None)?;
            Ok(Some(seen))
        })?;
        assert_eq!(seen_in_txn, Some(2));
        assert_eq!(
            store.read_blocking(|r| r.list(1))?.map(|l| l.member_count),
            Some(3)
        );
        Ok(())
    }
}
