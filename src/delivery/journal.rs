//! The outcome journal: a delivery outcome is made durable by an append to a
//! file of its own, and the store commits it without a sync of its own.
//!
//! Why: a connection completes its next message (the final dot) only once
//! the previous message's outcome is durable (`smtp::Gate`), so the drain
//! runs at the pace of making outcomes durable. A synced redb commit writes
//! its pages scattered over the file, and an fdatasync costs per scattered
//! page (measured here: 0.14 ms for one page, 0.75 ms for twenty, 0.19 ms
//! for twenty contiguous ones): with one writer syncing every batch of
//! outcomes, the syncs were the drain's bound. An append is one contiguous
//! write; the appender thread syncs it for every outcome waiting at once,
//! while the store commits the same outcomes unsynced
//! ([`crate::store::WriteTables::sync_later`]) and its next synced commit
//! makes them durable there too.
//!
//! Files: `journal/outcomes-<generation>.log` in the storage directory, one
//! appended at a time. A frame is `length (u32 LE) | CRC-32 (u32 LE) | JSON
//! entry`. A file is retired when it passes [`ROTATE_BYTES`] or the journal
//! has been idle for [`IDLE`], and deleted once every outcome in it was
//! committed to the store and a synced store commit followed. At start
//! ([`Journal::left_over`], [`read`], `outcome::replay_journal`) the files left over (by a crash,
//! or a stop before their deletion) are read up to a torn last frame (an
//! append the crash cut short, never acknowledged), the outcomes the store
//! does not hold yet are recorded with a sync, and the files are deleted,
//! all before the scheduler loads the queue. A clean stop deletes the
//! last file as well.
//!
//! A write error switches the journal off until the next start: outcomes
//! are then committed with a sync each, as without it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::outcome::Outcome;
use super::shaping::WarmUse;
use crate::store::Store;

/// The journal's directory, under the storage directory.
pub const DIR: &str = "journal";
/// A file past this size is retired for a new one.
const ROTATE_BYTES: u64 = 4 << 20;
/// After this long without an append, a file with entries is retired.
const IDLE: Duration = Duration::from_millis(500);
/// A frame longer than this is damage, not an entry.
const MAX_FRAME: usize = 1 << 20;

/// One transaction's outcomes, as `outcome::record_outcomes` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Queue id.
    pub msg: u64,
    /// When the outcome was recorded (ms); the recipients' `updated`.
    pub now: i64,
    /// The server that answered.
    pub host: Option<String>,
    /// (recipient index, outcome).
    pub outcomes: Vec<(usize, Outcome)>,
    /// Warm-up use to count.
    pub warm: Option<WarmUse>,
}

/// What went wrong with the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file could not be created, written, synced or read.
    #[error("outcome journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An entry could not be encoded.
    #[error("outcome journal: cannot encode an entry: {0}")]
    Encode(String),
    /// An earlier write error switched the journal off.
    #[error("outcome journal is off after a write error")]
    Off,
    /// The appender thread has ended.
    #[error("outcome journal stopped")]
    Stopped,
}

fn io(path: &Path, source: std::io::Error) -> JournalError {
    JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A journal file and the outcomes in it not yet committed to the store.
struct Generation {
    path: PathBuf,
    outstanding: AtomicUsize,
}

/// An entry durable in the journal. Hold it until the store has committed
/// the same outcome: dropping it lets its file go.
pub struct Ticket(Arc<Generation>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Append {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<Ticket, JournalError>>,
}

/// The handle the connection tasks append through; the appender thread
/// ends when the handle is dropped.
pub struct Journal {
    tx: mpsc::Sender<Append>,
    dir: PathBuf,
    /// This run's first generation: files below it are left over.
    first: u64,
}

impl Journal {
    /// Starts a new file after those in `storage`'s journal directory and
    /// the appender thread. `store` gets the synced commit that lets a
    /// retired file go.
    pub fn open(storage: &Path, store: Store) -> Result<Journal, JournalError> {
        let dir = storage.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let first = files_in(&dir)?.last().map_or(0, |(g, _)| g + 1);
        let (file, current) = create(&dir, first)?;
        let appender = Appender {
            dir: dir.clone(),
            file,
            current,
            len: 0,
            next: first + 1,
            retired: Vec::new(),
            store,
            off: false,
        };
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("herald-journal".into())
            .spawn(move || appender.run(rx))
            .map_err(|e| io(storage, e))?;
        Ok(Journal { tx, dir, first })
    }

    /// The files left by earlier runs (a crash, or a stop before their
    /// deletion), oldest first, for [`read`].
    pub fn left_over(&self) -> Result<Vec<PathBuf>, JournalError> {
        Ok(files_in(&self.dir)?
            .into_iter()
            .filter(|(g, _)| *g < self.first)
            .map(|(_, p)| p)
            .collect())
    }

    /// Appends `entry`; answers once it is durable.
    pub async fn append(&self, entry: &Entry) -> Result<Ticket, JournalError> {
        let frame = frame(entry)?;
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Append { frame, done })
            .map_err(|_| JournalError::Stopped)?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }
}

fn frame(entry: &Entry) -> Result<Vec<u8>, JournalError> {
    let body = serde_json::to_vec(entry).map_err(|e| JournalError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&n| (n as usize) <= MAX_FRAME)
        .ok_or_else(|| JournalError::Encode(format!("{} bytes", body.len())))?;
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The journal files in `dir`, by generation.
fn files_in(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let e = e.map_err(|e| io(dir, e))?;
        let name = e.file_name();
        let generation = name
            .to_str()
            .and_then(|n| n.strip_prefix("outcomes-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(g) = generation {
            out.push((g, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Creates generation `g`'s file, its name made durable in the directory.
fn create(dir: &Path, g: u64) -> Result<(File, Arc<Generation>), JournalError> {
    let path = dir.join(format!("outcomes-{g:010}.log"));
    let file = File::options()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io(&path, e))?;
    sync_dir(dir)?;
    let g = Arc::new(Generation {
        path,
        outstanding: AtomicUsize::new(0),
    });
    Ok((file, g))
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

/// The entries of `paths`, in order; each file is read up to its first
/// torn or damaged frame (logged when something follows it).
pub fn read(paths: &[PathBuf]) -> Result<Vec<Entry>, JournalError> {
    let mut out = Vec::new();
    for path in paths {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io(path, e))?;
        let (entries, used) = parse(&bytes);
        if used < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                at = used,
                ignored = bytes.len() - used,
                "outcome journal: a torn or damaged frame; the rest of the file is ignored"
            );
        }
        out.extend(entries);
    }
    Ok(out)
}

/// The whole frames at the start of `bytes`, and how many bytes they take.
fn parse(bytes: &[u8]) -> (Vec<Entry>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + len).filter(|_| len <= MAX_FRAME) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let Ok(e) = serde_json::from_slice::<Entry>(body) else {
            break;
        };
        out.push(e);
        at += 8 + len;
    }
    (out, at)
}

/// Deletes journal files (after their outcomes are durable in the store).
pub fn remove(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p) {
            tracing::warn!(file = %p.display(), error = %e, "outcome journal: cannot delete a file");
        }
    }
}

/// The appender thread's state.
struct Appender {
    dir: PathBuf,
    file: File,
    current: Arc<Generation>,
    len: u64,
    next: u64,
    retired: Vec<Arc<Generation>>,
    store: Store,
    off: bool,
}

impl Appender {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        loop {
            match rx.recv_timeout(IDLE) {
                Ok(first) => {
                    // Whatever queued up while the last sync ran goes into
                    // this one.
                    let mut batch = vec![first];
                    while let Ok(a) = rx.try_recv() {
                        batch.push(a);
                    }
                    self.write(batch);
                    if self.len >= ROTATE_BYTES {
                        self.rotate();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if self.len > 0 => self.rotate(),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The engine is gone (a stop): the last file goes too
                    // once its outcomes are durable in the store, so a
                    // clean stop leaves no file to read at the next start.
                    self.retired.push(self.current.clone());
                    self.collect();
                    return;
                }
            }
            self.collect();
        }
    }

    /// Appends and syncs a batch; answers each caller.
    fn write(&mut self, batch: Vec<Append>) {
        if self.off {
            for a in batch {
                let _ = a.done.send(Err(JournalError::Off));
            }
            return;
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|a| a.frame.len()).sum());
        for a in &batch {
            buf.extend_from_slice(&a.frame);
        }
        match self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                self.len += buf.len() as u64;
                for a in batch {
                    self.current.outstanding.fetch_add(1, Ordering::AcqRel);
                    // A caller gone: its ticket is dropped with the answer.
                    let _ = a.done.send(Ok(Ticket(self.current.clone())));
                }
            }
            Err(e) => {
                tracing::error!(file = %self.current.path.display(), error = %e,
                    "outcome journal: a write failed; outcomes are synced by the store until the next start");
                self.off = true;
                for a in batch {
                    let _ = a.done.send(Err(io(
                        &self.current.path,
                        std::io::Error::new(e.kind(), e.to_string()),
                    )));
                }
            }
        }
    }

    /// Starts the next file; the current one is retired.
    fn rotate(&mut self) {
        match create(&self.dir, self.next) {
            Ok((file, g)) => {
                self.next += 1;
                self.file = file;
                self.len = 0;
                let old = std::mem::replace(&mut self.current, g);
                self.retired.push(old);
            }
            Err(e) => {
                tracing::error!(error = %e, "outcome journal: cannot start a new file; outcomes are synced by the store until the next start");
                self.off = true;
            }
        }
    }

    /// Deletes the retired files whose outcomes are all committed, after a
    /// synced store commit has made those commits durable.
    fn collect(&mut self) {
        let (done, busy): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|g| g.outstanding.load(Ordering::Acquire) == 0);
        self.retired = busy;
        if done.is_empty() {
            return;
        }
        // A job that does not ask to sync later: its commit is synced.
        match self.store.write_wait(|_| Ok(())) {
            Ok(()) => remove(&done.iter().map(|g| g.path.clone()).collect::<Vec<_>>()),
            Err(e) => {
                // Kept: read again (and found recorded) at the next start.
                tracing::debug!(error = %e, "outcome journal: no synced commit; retired files kept");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(msg: u64) -> Entry {
        Entry {
            msg,
            now: 1_700_000_000_000 + msg as i64,
            host: Some("mx.example".into()),
            outcomes: vec![(0, Outcome::Delivered("250 ok".into()))],
            warm: None,
        }
    }

    #[test]
    fn frames_read_back_up_to_a_torn_or_damaged_one() -> Result<(), JournalError> {
        let mut bytes = Vec::new();
        for m in 1..=3 {
            bytes.extend_from_slice(&frame(&entry(m))?);
        }
        let whole = bytes.len();
        let (all, used) = parse(&bytes);
        assert_eq!(all, vec![entry(1), entry(2), entry(3)]);
        assert_eq!(used, whole);
        // A torn last frame: the first two only.
        let (torn, used) = parse(&bytes[..whole - 3]);
        assert_eq!(torn, vec![entry(1), entry(2)]);
        assert!(used < whole - 3);
        // A flipped byte in the second frame's body: the first only.
        let second = frame(&entry(1))?.len() + 12;
        bytes[second] ^= 0x55;
        assert_eq!(parse(&bytes).0, vec![entry(1)]);
        Ok(())
    }

    #[test]
    fn a_length_past_the_limit_is_damage() {
        let mut bytes = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 4]);
        bytes.resize(MAX_FRAME + 16, b'x');
        assert_eq!(parse(&bytes), (Vec::new(), 0));
    }
}
