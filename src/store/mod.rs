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
pub mod health;
mod inbound;
mod migrate;
mod mta_sts;
mod notify;
mod queue;
mod queue_codec;
mod read;
mod render;
mod send;
mod shaping;
mod shop;
mod shop_codec;
mod signup;
mod sms;
pub mod tables;
mod terms;
mod track;
pub mod usage;
mod users;

pub use audience::{decode_ids, encode_ids};
pub use contacts::{AddressClaim, ContactIndex, suppression_key};
pub use inbound::SoftStreak;
pub use queue::{AddressIndexMark, DueEntry, QueueSummary};
pub use read::ReadTables;
pub use send::{LinkCounts, SendCounts, SendMoney, hour_of};
pub use sms::SmsTables;
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
    /// The store cannot be written or read just now (an I/O error, a full
    /// disk): it is being re-opened. Nothing of the failed work was stored.
    #[error("the store is unavailable ({0}); try again shortly")]
    Unavailable(String),
    /// The store failed while committing this write and is not back yet:
    /// whether it was stored is unknown.
    #[error(
        "the store failed while committing this and is not back yet, so whether it was stored is unknown ({0}); look before repeating it"
    )]
    CommitUnknown(String),
    /// The store's filesystem is below its free-space reserve: bulk intake
    /// waits until there is room.
    #[error(
        "the store's disk is low on space ({} MiB free, {} MiB kept in reserve); \
         bulk intake is refused until there is room",
        free >> 20,
        reserve >> 20
    )]
    LowSpace {
        /// Free bytes.
        free: u64,
        /// The reserve in bytes.
        reserve: u64,
    },
}

impl StoreError {
    /// Whether this is the store failing to read or write (an I/O error,
    /// or redb refusing after one), which re-opening can cure.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::CommitUnknown(_)
        )
    }

    /// What went wrong, without the wrapping of [`StoreError::Unavailable`].
    fn cause(&self) -> String {
        match self {
            StoreError::Unavailable(m) | StoreError::CommitUnknown(m) => m.clone(),
            e => e.to_string(),
        }
    }
}

/// redb's errors that mean the file cannot be used until it is re-opened.
fn redb_error(e: redb::Error) -> StoreError {
    match e {
        redb::Error::Io(_)
        | redb::Error::PreviousIo
        | redb::Error::DatabaseClosed
        | redb::Error::LockPoisoned(_)
        | redb::Error::TransactionPoisoned => StoreError::Unavailable(e.to_string()),
        e => StoreError::Redb(e.to_string()),
    }
}

/// Sets the count under `key` in `table` to `update` of what it was (0
/// when absent): the flush of a transaction's summed counter deltas.
fn update_count<'k, K: redb::Key + 'static>(
    table: &mut redb::Table<'_, K, u64>,
    key: K::SelfType<'k>,
    update: impl FnOnce(u64) -> u64,
) -> Result<(), StoreError> {
    let now = table.get(&key)?.map(|v| v.value()).unwrap_or(0);
    table.insert(&key, update(now))?;
    Ok(())
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { redb_error(e.into()) }
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
/// follow. Each transaction's changes reach the observer after the commit
/// and before any caller is answered, in commit order, so whatever a caller
/// was told is stored is already visible to segments (on the notifier
/// thread, [`notify`], while the writer goes on with the next batch).
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
/// A write: run with the transaction's tables, or refused unrun with the
/// error given instead (the store is being re-opened, or gone).
type Job =
    Box<dyn for<'a> FnOnce(Result<&mut WriteTables<'a>, StoreError>) -> (bool, Completion) + Send>;

/// What the writer is sent: a job over every table, or a tracking hit to
/// append to the journal. A batch of hits alone opens only the journal's
/// table, which keeps the commit that answers a pixel short.
enum Work {
    Job(Job),
    Hit(u64, Vec<u8>, Completion),
    /// Wakes the writer: a reader met an I/O error (the health says so).
    Recover,
}

/// redb page cache used unless the config says otherwise.
pub const DEFAULT_CACHE_BYTES: usize = crate::config::storage::DEFAULT_CACHE_BYTES;

/// Largest number of jobs folded into one transaction.
const MAX_BATCH_JOBS: usize = 512;

/// Most commits in a row left unsynced ([`WriteTables::sync_later`]): the
/// next one is synced, and so is the last before the writer goes idle.
const MAX_UNSYNCED: u32 = 32;

/// How long the writer with unsynced commits waits for more work before it
/// syncs them: a sync costs per page written, and a busy store's pauses
/// (e.g. while connections wait for the outcome journal) are shorter.
const SYNC_WHEN_IDLE_FOR: std::time::Duration = std::time::Duration::from_millis(5);

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
    /// Commits that synced the file (every commit but the import batches
    /// [`WriteTables::sync_later`] lets wait, and the writer's syncs of them).
    pub syncs: AtomicU64,
    /// Time spent in redb's commit (writing and syncing pages), µs.
    pub commit_micros: AtomicU64,
    /// Time the writer waited to hand a committed batch to the notifier
    /// (the segment index was behind), µs.
    pub handoff_micros: AtomicU64,
}

/// The open database, or nothing while it is being re-opened. Readers take
/// the `Arc` only to begin a transaction; the generation tells a reader's
/// error about this file apart from one about a file already replaced.
struct DbSlot(std::sync::RwLock<(u64, Option<Arc<Database>>)>);

impl DbSlot {
    fn get(&self) -> Result<(u64, Arc<Database>), StoreError> {
        let g = self.0.read().unwrap_or_else(|p| p.into_inner());
        match &g.1 {
            Some(db) => Ok((g.0, db.clone())),
            None => Err(StoreError::Unavailable(
                "being re-opened after an I/O error".into(),
            )),
        }
    }

    fn take(&self) -> Option<Arc<Database>> {
        self.0.write().unwrap_or_else(|p| p.into_inner()).1.take()
    }

    fn put(&self, db: Database) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1 = Some(Arc::new(db));
    }
}

/// The store file in the storage directory `dir`.
pub fn store_file(dir: &Path) -> PathBuf {
    dir.join("herald.redb")
}

/// A handle to the open store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<DbSlot>,
    writer: mpsc::Sender<Work>,
    /// Writer statistics.
    pub stats: Arc<StoreStats>,
    thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    observer: Arc<std::sync::OnceLock<Observer>>,
    hook: Arc<std::sync::OnceLock<Hook>>,
    health: Arc<health::Health>,
    links: Arc<render::LinkCache>,
    /// The number of the writer's last committed batch (see
    /// [`Store::close`]).
    commit_seq: Arc<AtomicU64>,
    /// Where the writer hands committed batches (for its barrier).
    notifier: notify::Notifier,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, checks its schema version
    /// and upgrades or refuses it, and starts the writer thread; no disk
    /// space reserve (tests and tools).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(&crate::config::storage::StorageConfig {
            dir: dir.to_path_buf(),
            cache_bytes: DEFAULT_CACHE_BYTES,
            reserve_bytes: 0,
            reserve_percent: 0,
            unavailable_exit_after: crate::config::storage::DEFAULT_UNAVAILABLE_EXIT_AFTER,
        })
    }

    /// Like [`Store::open`] as `[storage]` says: redb's page cache limited
    /// to `cache_bytes` (redb's own default is 1 GiB, which would dominate
    /// the daemon's memory), the disk space reserve, the exit limit.
    pub fn open_with(config: &crate::config::storage::StorageConfig) -> Result<Store, StoreError> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!(
                "cannot create the storage directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = store_file(dir);
        let db = match Database::builder()
            .set_cache_size(config.cache_bytes)
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
        let seq = stored_commit_seq(&db)?;
        let slot = Arc::new(DbSlot(std::sync::RwLock::new((0, None))));
        slot.put(db);
        let (tx, rx) = mpsc::channel::<Work>(1024);
        let stats = Arc::new(StoreStats::default());
        let observer = Arc::new(std::sync::OnceLock::new());
        let hook = Arc::new(std::sync::OnceLock::new());
        let health = Arc::new(health::Health::new(dir, config));
        let links = Arc::new(render::LinkCache::default());
        let commit_seq = Arc::new(AtomicU64::new(seq));
        let (notifier, notify_thread) = notify::Notifier::start(observer.clone())
            .map_err(|e| StoreError::Io(format!("cannot start the store notifier: {e}")))?;
        let thread = {
            let w = Writer {
                slot: slot.clone(),
                path,
                cache_bytes: config.cache_bytes,
                stats: stats.clone(),
                observer: observer.clone(),
                hook: hook.clone(),
                health: health.clone(),
                links: links.clone(),
                seq,
                commit_seq: commit_seq.clone(),
                notifier: notifier.clone(),
                notify_thread: Some(notify_thread),
                unsynced: 0,
            };
            std::thread::Builder::new()
                .name("herald-store-writer".into())
                .spawn(move || w.run(rx))
                .map_err(|e| StoreError::Io(format!("cannot start the store writer: {e}")))?
        };
        Ok(Store {
            db: slot,
            writer: tx,
            stats,
            thread: Arc::new(std::sync::Mutex::new(Some(thread))),
            observer,
            hook,
            health,
            links,
            commit_seq,
            notifier,
        })
    }

    /// The store's health (state, free space, loops' reports).
    pub fn health(&self) -> &Arc<health::Health> {
        &self.health
    }

    /// For bulk intake (imports, event batches, campaign sends): `Ok` when
    /// the store is available and its disk above the reserve.
    pub fn bulk_allowed(&self) -> Result<(), StoreError> {
        self.health.bulk_allowed()
    }

    /// Records a background loop's round in the health report.
    pub fn report_loop<T>(&self, name: &'static str, result: &Result<T, impl std::fmt::Display>) {
        self.health
            .report_loop(name, result.as_ref().map(drop).map_err(|e| e.to_string()));
    }

    /// A read of the database of generation `generation` failed with `e`:
    /// if that is an I/O error of the file still in use, the store becomes
    /// unavailable and the writer re-opens it.
    fn reported(&self, generation: u64, e: &StoreError) {
        if !e.is_unavailable() {
            return;
        }
        // Under the slot's lock, so that the writer cannot put a new file
        // in between: an error of a file already closed (being re-opened)
        // or replaced changes nothing.
        let slot = self.db.0.read().unwrap_or_else(|p| p.into_inner());
        if slot.0 != generation || slot.1.is_none() {
            return;
        }
        let first = self.health.set_unavailable(&e.cause());
        drop(slot);
        if first {
            tracing::error!(error = %e, "store: a read failed with an I/O error; re-opening the store");
            // If the queue is full, the writer finds the flag at its next
            // batch.
            let _ = self.writer.try_send(Work::Recover);
        }
    }

    /// Begins a read transaction on the current file.
    fn begin_read(&self) -> Result<(u64, ReadTransaction), StoreError> {
        let (generation, db) = self.db.get()?;
        let txn = db.begin_read().map_err(StoreError::from);
        drop(db);
        match txn {
            Ok(t) => Ok((generation, t)),
            Err(e) => {
                self.reported(generation, &e);
                Err(e)
            }
        }
    }

    /// One recorded link of a send, from memory when it was recorded or
    /// looked up since the start (a link's URL never changes), so a click
    /// redirects even while the store cannot be read.
    pub async fn link(
        &self,
        send: Vec<u8>,
        n: u32,
    ) -> Result<Option<Arc<crate::render::links::LinkRecord>>, StoreError> {
        if let Some(l) = self.links.get(&send, n) {
            return Ok(Some(l));
        }
        let links = self.links.clone();
        self.read(move |r| Ok(r.link(&send, n)?.map(|l| links.insert(send, n, l))))
            .await
    }

    /// Appends a tracking hit to the journal (`hits_v1`) under `seq`;
    /// returns once it is durably committed.
    pub async fn append_hit(&self, seq: u64, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.check_available()?;
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

    /// Refuses at once while the store is being re-opened: the caller gets
    /// its answer (503) without waiting in the writer's queue.
    fn check_available(&self) -> Result<(), StoreError> {
        if self.health.is_unavailable() {
            return Err(StoreError::Unavailable(self.health.reason()));
        }
        Ok(())
    }

    fn job<R: Send + 'static>(
        f: impl for<'a> FnOnce(&mut WriteTables<'a>) -> Result<R, StoreError> + Send + 'static,
        reply: oneshot::Sender<Result<R, StoreError>>,
    ) -> Job {
        Box::new(move |t| {
            let t = match t {
                Ok(t) => t,
                Err(e) => {
                    // Refused unrun.
                    let _ = reply.send(Err(e));
                    let nothing: Completion = Box::new(|_| {});
                    return (false, nothing);
                }
            };
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
        self.check_available()?;
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
        self.check_available()?;
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
        let me = self.clone();
        let rx = self.write_blocking(move |_t| {
            // Every earlier commit has reached the observer.
            me.notifier.barrier();
            at_boundary();
            Ok(me.begin_read()?.1)
        })?;
        let txn = rx.blocking_recv().map_err(|_| StoreError::Closed)??;
        Ok(ReadView::new(txn))
    }

    /// Runs `f` over a consistent snapshot on a blocking thread.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadView) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.read_blocking(f))
            .await
            .map_err(|e| StoreError::Io(format!("read task failed: {e}")))?
    }

    /// Runs `f` over a consistent snapshot on the calling (blocking) thread.
    pub fn read_blocking<R>(
        &self,
        f: impl FnOnce(&ReadView) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (generation, txn) = self.begin_read()?;
        let r = f(&ReadView::new(txn));
        if let Err(e) = &r {
            self.reported(generation, e);
        }
        r
    }

    /// The number of the last batch the writer committed (as [`Store::close`]
    /// returns it at the end).
    pub fn last_commit_seq(&self) -> u64 {
        self.commit_seq.load(Ordering::Acquire)
    }

    /// Stops accepting writes from this handle and, once no other handle is
    /// left, waits (up to ten seconds) for the writer to commit what it has and
    /// close the file cleanly. Returns the number of the last batch the file
    /// holds when the writer ended and the store was healthy (what the
    /// segment index saved beside it is stamped with), `None` otherwise.
    pub fn close(self) -> Option<u64> {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let Store {
            writer,
            db,
            commit_seq,
            health,
            ..
        } = self;
        drop(writer);
        drop(db);
        let t = thread?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if !t.is_finished() {
            tracing::warn!("the store writer is still busy; other handles are open");
            return None;
        }
        let _ = t.join();
        (!health.is_unavailable()).then(|| commit_seq.load(Ordering::Acquire))
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
    queue::mark_addresses_indexed(&txn)?;
    txn.commit()?;
    Ok(())
}

fn decode_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[8 - n..].copy_from_slice(&b[b.len() - n..]);
    u64::from_be_bytes(a)
}

/// The writer thread's state: the database slot it re-opens, what it
/// reports to, and what it feeds after each commit.
struct Writer {
    slot: Arc<DbSlot>,
    path: PathBuf,
    cache_bytes: usize,
    stats: Arc<StoreStats>,
    observer: Arc<std::sync::OnceLock<Observer>>,
    hook: Arc<std::sync::OnceLock<Hook>>,
    health: Arc<health::Health>,
    links: Arc<render::LinkCache>,
    /// The number of the last committed batch.
    seq: u64,
    /// `seq`, for the store's handles.
    commit_seq: Arc<AtomicU64>,
    /// Feeds the observer and answers callers after each commit.
    notifier: notify::Notifier,
    /// Its thread, joined when the writer stops.
    notify_thread: Option<std::thread::JoinHandle<()>>,
    /// Commits since the last synced one.
    unsynced: u32,
}

/// The meta key a re-opened store writes (and removes) to prove it has
/// room, and how much.
const PROBE_KEY: &str = "store.probe";
const PROBE_BYTES: usize = 1 << 20;

/// First and longest wait between two attempts to re-open the store.
const REOPEN_BACKOFF: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_millis(100),
    std::time::Duration::from_secs(2),
);

/// A batch whose commit failed: redb may have made it durable before
/// failing (its work after the commit point, such as freeing pages, can
/// fail too), so whether it is stored is known only once the file is open
/// again, by its [`Mark`].
struct Uncertain {
    mark: Mark,
    /// Why the commit failed.
    why: String,
    /// Callers not answered yet (answered "unknown" after [`UNCERTAIN_WAIT`]).
    completions: Option<Vec<Completion>>,
    changes: Vec<Change>,
    links: NewLinks,
    since: std::time::Instant,
}

/// How long callers of a batch whose commit failed wait for the re-open
/// to say whether it was stored, before they are told it is unknown.
const UNCERTAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The meta key of [`Sequence::Order`] (the migration to schema 5 sets it).
pub(super) const ORDER_SEQ_KEY: &str = "seq.order";

/// The meta key holding the number of the last committed batch of jobs.
const COMMIT_SEQ_KEY: &str = "store.commit_seq";

/// How the file shows that a batch was committed: a batch of jobs by its
/// number under [`COMMIT_SEQ_KEY`] (its transaction writes `meta` anyway,
/// for its counters), a batch of tracking hits alone by its first hit in
/// the journal (no `meta` page written on the pixel's path).
#[derive(Debug, Clone, Copy)]
enum Mark {
    Seq(u64),
    Hit(u64),
}

impl Mark {
    /// Whether the file `db` holds the batch.
    fn held_by(self, db: &Database) -> Result<bool, StoreError> {
        match self {
            Mark::Seq(n) => Ok(stored_commit_seq(db)? >= n),
            Mark::Hit(k) => {
                let txn = db.begin_read()?;
                Ok(txn.open_table(HITS)?.get(k)?.is_some())
            }
        }
    }
}

/// The number of the last committed batch, as the file has it.
fn stored_commit_seq(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let t = txn.open_table(META)?;
    meta_u64(&t, COMMIT_SEQ_KEY)
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Work>) {
        let mut busy = false;
        while let Some(first) = self.next_work(&mut rx) {
            let mut jobs = vec![first];
            // Under load (the last batch had several jobs), linger a moment
            // for more: every commit costs an fsync, so fewer, larger batches
            // leave more CPU for the callers; an idle store commits at once.
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
            recover_requested(&mut jobs);
            // A reader (or a loop) found the file failing: outside
            // `recover`, the flag means a re-open is due.
            if self.health.is_unavailable() {
                let why = self.health.reason();
                if !self.recover(&mut rx, &why, None) {
                    refuse_all(jobs, &StoreError::Closed);
                    break;
                }
            }
            if jobs.is_empty() {
                continue;
            }
            let n = jobs.len() as u64;
            let db = match self.slot.get() {
                Ok((_, db)) => db,
                Err(e) => {
                    refuse_all(jobs, &e);
                    continue;
                }
            };
            let seq = self.seq + 1;
            let result = run_batch(
                &db,
                jobs,
                Options {
                    observed: self.observer.get().is_some(),
                    hook: self.hook.get(),
                    seq,
                    may_skip_sync: self.unsynced + 1 < MAX_UNSYNCED,
                },
                &self.stats,
            );
            drop(db);
            match result {
                Ok(c) => {
                    self.unsynced = if c.synced { 0 } else { self.unsynced + 1 };
                    if let Mark::Seq(n) = c.mark {
                        self.seq = n;
                        self.commit_seq.store(n, Ordering::Release);
                    }
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats.jobs.fetch_add(n, Ordering::Relaxed);
                    self.deliver(c.changes, c.links, c.completions);
                }
                Err(BatchError::NotCommitted(e, done)) => {
                    tracing::error!(error = %e, jobs = n, "store write transaction failed; the batch was not committed");
                    let unavailable = e.is_unavailable();
                    if unavailable {
                        // Known before anyone is answered: a caller that
                        // looks at the health sees why.
                        self.health.set_unavailable(&e.cause());
                    }
                    for c in done {
                        c(Err(match &e {
                            StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                            e => StoreError::Redb(format!("write transaction failed: {e}")),
                        }));
                    }
                    if unavailable && !self.recover(&mut rx, &e.cause(), None) {
                        break;
                    }
                }
                Err(BatchError::Uncertain(e, c)) => {
                    tracing::error!(error = %e, jobs = n, "store commit failed; whether it was stored is known once the store is re-opened");
                    self.health.set_unavailable(&e.cause());
                    let uncertain = Uncertain {
                        mark: c.mark,
                        why: e.cause(),
                        completions: Some(c.completions),
                        changes: c.changes,
                        links: c.links,
                        since: std::time::Instant::now(),
                    };
                    if !self.recover(&mut rx, &e.cause(), Some(uncertain)) {
                        break;
                    }
                }
            }
        }
        // Refuse what is still queued (a fatal store) and close the file.
        while let Some(w) = rx.blocking_recv() {
            refuse(w, &StoreError::Closed);
        }
        self.sync();
        self.notifier.stop();
        if let Some(t) = self.notify_thread.take() {
            let _ = t.join();
        }
        if let Some(db) = self.slot.take() {
            close_db(db);
        }
    }

    /// The next piece of work; a commit left unsynced is synced once no
    /// work came for [`SYNC_WHEN_IDLE_FOR`] (the writer never idles on one).
    fn next_work(&mut self, rx: &mut mpsc::Receiver<Work>) -> Option<Work> {
        if self.unsynced > 0 {
            let until = std::time::Instant::now() + SYNC_WHEN_IDLE_FOR;
            loop {
                match rx.try_recv() {
                    Ok(w) => return Some(w),
                    Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < until => {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.sync();
                        return None;
                    }
                }
            }
            self.sync();
        }
        rx.blocking_recv()
    }

    /// Makes the commits left unsynced durable, with a synced commit of
    /// the last batch's number. A failure marks the store unavailable (the
    /// next work re-opens it; the file is as of the last synced commit).
    fn sync(&mut self) {
        if self.unsynced == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let synced = self.slot.get().and_then(|(_, db)| {
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert(COMMIT_SEQ_KEY, self.seq.to_be_bytes().as_slice())?;
            txn.commit()?;
            Ok(())
        });
        let s = &self.stats;
        s.commit_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        s.syncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => self.unsynced = 0,
            Err(e) => {
                tracing::error!(error = %e, "store: syncing the last commits failed");
                self.health.set_unavailable(&e.cause());
            }
        }
    }

    /// Adds a committed batch's links to the link cache and hands its
    /// changes (for the observer) and its callers (to answer after them)
    /// to the notifier.
    fn deliver(&self, changes: Vec<Change>, links: NewLinks, completions: Vec<Completion>) {
        self.links.extend(links);
        let started = std::time::Instant::now();
        self.notifier.committed(changes, completions);
        self.stats
            .handoff_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// After an I/O error: refuses all work, closes the database and opens
    /// the file again (never creating it) with growing pauses until a
    /// commit goes through; settles a batch whose commit failed (`uncertain`)
    /// by what the re-opened file holds. False when it gave up: the store
    /// stayed unavailable past `unavailable_exit_after` (the health turns
    /// fatal and the daemon exits), or every handle is gone.
    fn recover(
        &mut self,
        rx: &mut mpsc::Receiver<Work>,
        why: &str,
        mut uncertain: Option<Uncertain>,
    ) -> bool {
        self.health.set_unavailable(why);
        tracing::error!(error = why, path = %self.path.display(), "store: unavailable; refusing work and re-opening the file");
        if self.unsynced > 0 {
            // Import batches committed without a sync may be gone from the
            // re-opened file (the import then stops, its record says where);
            // the segment index keeps their rows until the next start.
            tracing::warn!(
                commits = self.unsynced,
                "store: commits not yet synced may be lost with the file; the segment index may list their contacts until herald restarts"
            );
            self.unsynced = 0;
        }
        if let Some(db) = self.slot.take() {
            close_db(db);
        }
        // The first attempt at once, then growing pauses.
        let mut pause = std::time::Duration::ZERO;
        let mut last_log = std::time::Instant::now();
        loop {
            if !wait_refusing(rx, pause, &mut uncertain) {
                return false;
            }
            pause = (pause * 2).clamp(REOPEN_BACKOFF.0, REOPEN_BACKOFF.1);
            if self.health.past_exit_limit() {
                let why = format!(
                    "the store {} could not be re-opened for {}s; exiting so that the service manager restarts herald",
                    self.path.display(),
                    self.health.unavailable_for().unwrap_or_default().as_secs()
                );
                tracing::error!("{why}");
                if let Some(u) = &mut uncertain {
                    answer_unknown(u);
                }
                self.health.set_fatal(why);
                return false;
            }
            match self.reopen() {
                Ok((db, stored)) => {
                    if let Some(u) = uncertain.take() {
                        self.settle(u, &db);
                    }
                    self.seq = stored;
                    self.commit_seq.store(stored, Ordering::Release);
                    self.slot.put(db);
                    self.health.reopens.fetch_add(1, Ordering::Relaxed);
                    self.health.set_available();
                    return true;
                }
                Err(e) if last_log.elapsed() >= std::time::Duration::from_secs(10) => {
                    tracing::warn!(error = %e, "store: still cannot re-open the store; retrying");
                    last_log = std::time::Instant::now();
                }
                Err(e) => tracing::debug!(error = %e, "store: re-open failed"),
            }
        }
    }

    /// A batch whose commit failed, once the re-opened file `db` says
    /// whether it holds it.
    fn settle(&self, mut u: Uncertain, db: &Database) {
        let committed = match u.mark.held_by(db) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot tell whether the batch whose commit failed was stored");
                answer_unknown(&mut u);
                return;
            }
        };
        match (committed, u.completions) {
            (true, Some(done)) => {
                tracing::info!(
                    "store: the batch whose commit failed was stored after all; its callers are answered as such"
                );
                // The in-memory views follow what the file holds.
                self.deliver(u.changes, u.links, done);
            }
            (true, None) => {
                tracing::warn!(
                    "store: a batch whose callers were told its outcome was unknown was stored"
                );
                self.deliver(u.changes, u.links, Vec::new());
            }
            (false, Some(done)) => {
                for c in done {
                    c(Err(StoreError::Unavailable(format!(
                        "the commit failed ({}); the file does not hold it",
                        u.why
                    ))));
                }
            }
            (false, None) => {
                tracing::info!("store: the batch whose outcome was unknown was not stored");
            }
        }
    }

    /// Opens the existing file (a missing one is an error: re-opening must
    /// never start an empty store) and proves it writable with a commit;
    /// with the number of the last batch it holds.
    fn reopen(&self) -> Result<(Database, u64), StoreError> {
        if !self.path.is_file() {
            return Err(StoreError::Io(format!("{} is gone", self.path.display())));
        }
        let db = Database::builder()
            .set_cache_size(self.cache_bytes)
            .open(&self.path)?;
        let probe = (|| -> Result<u64, StoreError> {
            let stored = stored_commit_seq(&db)?;
            // A commit that needs room: a full disk fails it here rather
            // than the next caller's write.
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert(PROBE_KEY, vec![0u8; PROBE_BYTES].as_slice())?;
            txn.commit()?;
            let txn = db.begin_write()?;
            txn.open_table(META)?.remove(PROBE_KEY)?;
            txn.commit()?;
            Ok(stored)
        })();
        match probe {
            Ok(stored) => Ok((db, stored)),
            Err(e) => {
                close_db(Arc::new(db));
                Err(e)
            }
        }
    }
}

/// Waits `pause` while the store is being re-opened, refusing the work that
/// comes meanwhile and telling an uncertain batch's callers once they have
/// waited [`UNCERTAIN_WAIT`]; false once every handle is gone.
fn wait_refusing(
    rx: &mut mpsc::Receiver<Work>,
    pause: std::time::Duration,
    uncertain: &mut Option<Uncertain>,
) -> bool {
    let until = std::time::Instant::now() + pause;
    loop {
        if !refuse_queued(rx) {
            return false;
        }
        if let Some(u) = uncertain
            && u.since.elapsed() >= UNCERTAIN_WAIT
        {
            answer_unknown(u);
        }
        if std::time::Instant::now() >= until {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Tells the callers of an uncertain batch that its outcome is unknown.
fn answer_unknown(u: &mut Uncertain) {
    if let Some(done) = u.completions.take() {
        for c in done {
            c(Err(StoreError::CommitUnknown(u.why.clone())));
        }
    }
}

/// Closes a database whose other handles are short-lived (readers hold it
/// only to begin a transaction): waits a moment for them, then closes it,
/// which also cuts off read transactions still open on it.
fn close_db(db: Arc<Database>) {
    let mut db = db;
    for _ in 0..100 {
        match Arc::try_unwrap(db) {
            Ok(d) => {
                if let Err(e) = d.close() {
                    tracing::debug!(error = %e, "store: closing the old file");
                }
                return;
            }
            Err(shared) => db = shared,
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Still shared: it closes when the last reader lets go (until then a
    // re-open finds the file in use and tries again).
}

/// Takes `Recover` requests out of a batch (they only wake the writer: the
/// health flag says whether a re-open is due).
fn recover_requested(jobs: &mut Vec<Work>) {
    jobs.retain(|w| !matches!(w, Work::Recover));
}

/// Answers one piece of work with `e`, unrun.
fn refuse(w: Work, e: &StoreError) {
    let err = || match e {
        StoreError::Closed => StoreError::Closed,
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        e => StoreError::Redb(e.to_string()),
    };
    match w {
        Work::Job(j) => {
            let (_, completion) = j(Err(err()));
            completion(Err(err()));
        }
        Work::Hit(_, _, done) => done(Err(err())),
        Work::Recover => {}
    }
}

fn refuse_all(work: Vec<Work>, e: &StoreError) {
    for w in work {
        refuse(w, e);
    }
}

/// Refuses everything queued now; false once every handle is gone.
fn refuse_queued(rx: &mut mpsc::Receiver<Work>) -> bool {
    let e = StoreError::Unavailable("being re-opened after an I/O error".into());
    loop {
        match rx.try_recv() {
            Ok(w) => refuse(w, &e),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Links recorded by a committed batch, for the link cache.
type NewLinks = Vec<(Vec<u8>, u32, crate::render::links::LinkRecord)>;

/// A batch that committed (or whose commit failed, in [`BatchError::Uncertain`]):
/// its callers' answers, its changes for the observer, its links, its mark.
struct Batch {
    mark: Mark,
    completions: Vec<Completion>,
    changes: Vec<Change>,
    links: NewLinks,
    /// Committed with a sync (else: see [`WriteTables::sync_later`]).
    synced: bool,
}

/// How [`run_batch`] runs a batch.
struct Options<'h> {
    /// Whether an observer wants the changes.
    observed: bool,
    hook: Option<&'h Hook>,
    /// The batch's number.
    seq: u64,
    /// Whether the commit may skip the sync, if every job allows it.
    may_skip_sync: bool,
}

enum BatchError {
    /// Nothing of the batch was committed.
    NotCommitted(StoreError, Vec<Completion>),
    /// The commit itself failed: stored or not, the re-opened file says.
    Uncertain(StoreError, Box<Batch>),
}

type BatchResult = Result<Batch, BatchError>;

/// Runs one batch in one write transaction; a batch with jobs is numbered
/// `seq` (kept under [`COMMIT_SEQ_KEY`]) so that a failed commit can be
/// settled later (a batch of hits alone by its first hit, [`Mark`]).
fn run_batch(db: &Database, work: Vec<Work>, o: Options, stats: &StoreStats) -> BatchResult {
    let Options {
        observed,
        hook,
        seq,
        may_skip_sync,
    } = o;
    // If no transaction can be started, every caller is told why, unrun.
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            let e = StoreError::from(e);
            refuse_all(work, &e);
            return Err(BatchError::NotCommitted(e, Vec::new()));
        }
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
            Work::Recover => {}
        }
    }
    let mut failed = None;
    let mut changes = Vec::new();
    let mut links = Vec::new();
    let mut skip_sync = false;
    let jobs_run = jobs.len();
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
            return Err(BatchError::NotCommitted(e, completions));
        }
    } else {
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
                // After a failure the rest still run (into a transaction
                // that will be aborted) so that every caller is told why,
                // rather than finding its reply channel dropped.
                for job in jobs {
                    let (ok, completion) = job(Ok(&mut tables));
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
                if failed.is_none()
                    && let Err(e) = tables.put_commit_seq(seq)
                {
                    failed = Some(e);
                }
                changes = tables.changes.take().unwrap_or_default();
                links = std::mem::take(&mut tables.links_written);
                skip_sync = may_skip_sync && hits.is_empty() && tables.sync_later == jobs_run;
            }
            Err(e) => failed = Some(e),
        }
        if let Some(e) = failed {
            let _ = txn.abort();
            return Err(BatchError::NotCommitted(e, completions));
        }
    }
    let mark = match hits.first() {
        Some((k, _)) if jobs_run == 0 => Mark::Hit(*k),
        _ => Mark::Seq(seq),
    };
    let synced = !(skip_sync && txn.set_durability(redb::Durability::None).is_ok());
    let batch = Batch {
        mark,
        completions,
        changes,
        links,
        synced,
    };
    let started = std::time::Instant::now();
    let committed = txn.commit();
    stats
        .commit_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    if synced {
        stats.syncs.fetch_add(1, Ordering::Relaxed);
    }
    match committed {
        Ok(()) => Ok(batch),
        Err(e) => Err(BatchError::Uncertain(e.into(), Box::new(batch))),
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

/// The buffer [`enc`] starts with: most records fit.
const ENC_CAPACITY: usize = 256;

/// Postcard bytes of a record. The records written for every event or
/// message (contacts, history, orders, aggregates, carts, consent entries,
/// finished messages) are kept in postcard: several times smaller, and
/// cheaper to encode and decode, than JSON.
fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // These plain data types (strings, numbers, maps, options) always encode.
    // Records are tens to a few hundred bytes: one allocation, not a
    // doubling from empty.
    postcard::to_extend(v, Vec::with_capacity(ENC_CAPACITY)).unwrap_or_default()
}

/// A postcard record of `table` read back (damage reported as such).
fn dec<T: DeserializeOwned>(table: &'static str, b: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(b).map_err(|e| StoreError::Corrupt {
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
    /// Text messages.
    Sms,
    /// Orders (the store's own number of each, `orders_v3`'s key).
    Order,
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
            Sequence::Order => ORDER_SEQ_KEY,
            Sequence::Activity => "seq.activity",
            Sequence::Inbound => "seq.inbound",
            Sequence::Sms => "seq.sms",
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
    counters: std::collections::BTreeMap<&'static str, u64>,
    /// Pending changes to lists' member counts, applied by `flush`.
    list_deltas: std::collections::HashMap<u64, i64>,
    /// Pending changes to send counters (total, hourly, per link),
    /// summed in memory and written once by `flush`: a batch of tracking
    /// hits touches each counter once, not once per hit.
    count_deltas: std::collections::HashMap<(u8, u64, u32, u8), i64>,
    hourly_deltas: std::collections::HashMap<(u8, u64, u32, u8), i64>,
    link_deltas: std::collections::HashMap<(u8, u64, u32, u32, u8), i64>,
    /// Pending (orders, hundredths) of attributed orders by currency.
    money_deltas: std::collections::HashMap<(u8, u64, u32, String), (i64, i64)>,
    /// Pending additions to automation step counters, written by `flush`
    /// (an import of old orders counts thousands of `missed` per batch).
    step_deltas: std::collections::HashMap<(u64, u32, String), u64>,
    /// Whether any address is suppressed; read once per transaction so that
    /// imports into an installation without erasures skip the hash lookup.
    any_suppressed: bool,
    /// Field definitions, read once per transaction when first needed, so
    /// that every write checks values against the definitions it commits with.
    field_defs: Option<std::collections::BTreeMap<String, FieldDef>>,
    /// Links recorded in this transaction, for the link cache once it
    /// commits.
    links_written: NewLinks,
    /// The term dictionary's entries this transaction has read or added.
    terms: terms::Interner,
    /// Aggregates changed in this transaction (`None`: removed), written
    /// by `flush` in contact order (`WriteTables::flush_stats`); reads in
    /// the transaction see them.
    stats_written: std::collections::BTreeMap<u64, Option<Vec<u8>>>,
    /// Jobs that said their commit need not be synced at once
    /// ([`WriteTables::sync_later`]).
    sync_later: usize,
    /// While a job runs in [`WriteTables::deferring`]: the contact records
    /// and index writes it holds back, made at its end on two threads.
    deferred: Option<contacts::Deferred>,
}

impl<'t> WriteTables<'t> {
    /// Says that this job's writes need not reach the disk before its
    /// caller is answered: nothing has been acknowledged on them yet (an
    /// import batch before the import's last; the last one, and the
    /// import's outcome, are synced). When every job of a transaction says
    /// so, the writer commits it without syncing ([`MAX_UNSYNCED`]); the
    /// next synced commit makes it durable. Readers see such a commit at
    /// once (the import's progress counts it), so a crash before the next
    /// sync rolls a running import's progress back with its rows: the store
    /// is as of the last synced commit, consistent, and the import resumes
    /// from there.
    pub fn sync_later(&mut self) {
        self.sync_later += 1;
    }

    /// The record form of a string (`store::terms`), for the encoders of
    /// `shop_codec` and `queue_codec`: the transaction's interner over its
    /// term tables.
    fn interner(&mut self) -> impl FnMut(&str) -> Result<terms::Text, StoreError> + '_ {
        let (terms, t) = (&mut self.terms, &mut self.tables);
        move |s| terms.intern(t.term_ids.open()?, t.terms.open()?, s)
    }

    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        let tables = Tables::new(txn);
        let any_suppressed = !tables.suppressions.read()?.is_empty()?;
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
            money_deltas: Default::default(),
            step_deltas: Default::default(),
            links_written: Vec::new(),
            terms: Default::default(),
            stats_written: Default::default(),
            sync_later: 0,
            deferred: None,
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
            None => meta_u64(self.tables.meta.read()?, key)?,
        };
        let next = now.saturating_add_signed(delta);
        self.counters.insert(key, next);
        Ok(next)
    }

    /// Records the number of the batch being committed (in `meta`).
    fn put_commit_seq(&mut self, seq: u64) -> Result<(), StoreError> {
        self.tables
            .meta
            .open()?
            .insert(COMMIT_SEQ_KEY, seq.to_be_bytes().as_slice())?;
        Ok(())
    }

    /// Writes cached counters and list member counts back. Called by the
    /// writer once per transaction, before commit.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.flush_stats()?;
        let t = &mut self.tables;
        for (k, v) in std::mem::take(&mut self.counters) {
            t.meta.open()?.insert(k, v.to_be_bytes().as_slice())?;
        }
        for (k, d) in std::mem::take(&mut self.count_deltas) {
            update_count(t.send_counts.open()?, k, |n| n.saturating_add_signed(d))?;
        }
        for (k, d) in std::mem::take(&mut self.hourly_deltas) {
            update_count(t.send_hourly.open()?, k, |n| n.saturating_add_signed(d))?;
        }
        for ((flow, step, name), d) in std::mem::take(&mut self.step_deltas) {
            let k = (flow, step, name.as_str());
            update_count(t.auto_counts.open()?, k, |n| n.saturating_add(d))?;
        }
        for (k, d) in std::mem::take(&mut self.link_deltas) {
            update_count(t.send_links.open()?, k, |n| n.saturating_add_signed(d))?;
        }
        for ((kind, id, slot, cur), (orders, cents)) in std::mem::take(&mut self.money_deltas) {
            let k = (kind, id, slot, cur.as_str());
            let money = t.send_money.open()?;
            let (o, c) = money.get(k)?.map(|v| v.value()).unwrap_or((0, 0));
            money.insert(
                k,
                (
                    o.saturating_add_signed(orders),
                    c.saturating_add_signed(cents),
                ),
            )?;
        }
        for (id, delta) in std::mem::take(&mut self.list_deltas) {
            if let Some(mut l) = get_json::<u64, List>(t.lists.read()?, "lists", id)? {
                l.member_count = l.member_count.saturating_add_signed(delta);
                t.lists.open()?.insert(id, to_json(&l).as_slice())?;
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

    /// The number of the last batch committed before this view (what
    /// [`Store::close`] returns at the end of a run).
    pub fn commit_seq(&self) -> Result<u64, StoreError> {
        meta_u64(self.tables.meta()?, COMMIT_SEQ_KEY)
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
            phone: None,
            sms_consent: ConsentState::Unknown,
            language: None,
            site: None,
            fields: Default::default(),
            lists: [list].into_iter().collect(),
            tags: Default::default(),
            created_at: now,
            updated_at: now,
        }
    }

    /// A deferring job (an import batch) that writes a contact twice and
    /// changes its consent and lists ends with the indexes, the consent
    /// log and the record as the same writes made one by one leave them;
    /// reads in the job see the held-back record.
    #[test]
    fn deferred_writes_end_as_direct_ones_would() -> TestResult {
        use crate::contacts::model::{ConsentEvent, ConsentSource};
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let now = chrono::Utc::now();
        for id in [1, 2] {
            let list = List {
                id,
                name: format!("l{id}"),
                description: None,
                member_count: 0,
                created_at: now,
            };
            store.write_wait(move |t| t.put_list(&list, None))?;
        }
        let event = move |from, to| ConsentEvent {
            at: now,
            channel: Default::default(),
            from,
            to,
            source: ConsentSource::Import,
            ip: None,
            user_agent: None,
            note: None,
        };
        let seen = store.write_wait(move |t| {
            t.deferring(2, |t| {
                let mut first = contact(1, 1);
                first.consent = ConsentState::Granted;
                t.put_contact(&first, None)?;
                t.append_consent(1, &event(ConsentState::Unknown, ConsentState::Granted))?;
                let seen = t.contact(1)?.map(|c| c.consent);
                let mut second = first.clone();
                second.consent = ConsentState::Withdrawn;
                second.lists = [2].into_iter().collect();
                t.put_contact(&second, Some(&first))?;
                t.append_consent(1, &event(ConsentState::Granted, ConsentState::Withdrawn))?;
                t.put_contact(&contact(2, 1), None)?;
                Ok((seen, t.contact_exists(2)?))
            })
        })?;
        assert_eq!(seen, (Some(ConsentState::Granted), true));
        store.read_blocking(|r| {
            assert_eq!(
                r.contact(1)?.map(|c| c.consent),
                Some(ConsentState::Withdrawn)
            );
            let ids = |i: contacts::ContactIndex| r.contact_ids(&i, 0, 10);
            assert_eq!(ids(contacts::ContactIndex::List(1))?, vec![2]);
            assert_eq!(ids(contacts::ContactIndex::List(2))?, vec![1]);
            assert_eq!(
                ids(contacts::ContactIndex::Consent(ConsentState::Granted))?,
                Vec::<u64>::new()
            );
            assert_eq!(
                ids(contacts::ContactIndex::Consent(ConsentState::Withdrawn))?,
                vec![1]
            );
            assert_eq!(
                ids(contacts::ContactIndex::Consent(ConsentState::Unknown))?,
                vec![2]
            );
            let log: Vec<_> = r.consent_log(1)?.into_iter().map(|e| e.to).collect();
            assert_eq!(log, vec![ConsentState::Granted, ConsentState::Withdrawn]);
            let counts = |id| r.list(id).map(|l| l.map(|l| l.member_count));
            assert_eq!((counts(1)?, counts(2)?), (Some(1), Some(1)));
            Ok(())
        })?;
        Ok(())
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
