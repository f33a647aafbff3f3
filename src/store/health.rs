//! The store's health, as everything else sees it: whether it can be
//! written (`ok`, `low_space`, `unavailable`), the free space of its
//! filesystem against the configured reserve, what the background loops
//! last reported, and the hits the tracking endpoints could not record.
//!
//! The writer thread sets `unavailable` when a transaction fails with an
//! I/O error (redb then refuses everything until the file is re-opened) and
//! clears it once the file is open again and a commit went through; readers
//! and background loops report the same errors here. `/healthz`, `/readyz`,
//! `/metrics` and the bulk-intake gates (imports, event batches, campaign
//! sends) read it. If the store stays unavailable past
//! `[storage] unavailable_exit_after`, the health turns fatal and the daemon
//! exits non-zero (systemd's `Restart=on-failure` takes over).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// Whether the store can take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    /// Reads and writes work; the disk has room.
    Ok,
    /// Reads and writes work, but the filesystem is below the reserve:
    /// bulk intake is refused, the writes that must not be lost go on.
    LowSpace,
    /// The store cannot be written (and may not be readable): it is being
    /// re-opened.
    Unavailable,
}

impl StoreState {
    /// The name used in `/healthz` and `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::LowSpace => "low_space",
            StoreState::Unavailable => "unavailable",
        }
    }

    /// Every state, for the metric's labels.
    pub const ALL: [StoreState; 3] = [
        StoreState::Ok,
        StoreState::LowSpace,
        StoreState::Unavailable,
    ];
}

/// What a background loop last said.
#[derive(Debug, Clone, Serialize)]
pub struct LoopReport {
    /// Whether its last round went through.
    pub ok: bool,
    /// The error of its last failed round, while it keeps failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since its last report.
    pub seconds_ago: u64,
    #[serde(skip)]
    at: Option<Instant>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Since when the store is unavailable, and why.
    unavailable: Option<(Instant, chrono::DateTime<chrono::Utc>, String)>,
    /// Why reading the free space failed, if it did.
    space_error: Option<String>,
    loops: BTreeMap<&'static str, LoopReport>,
    /// Set once the store stayed unavailable too long.
    fatal: Option<String>,
}

/// The shared health of the store; one per [`super::Store`].
#[derive(Debug)]
pub struct Health {
    dir: PathBuf,
    unavailable: AtomicBool,
    low: AtomicBool,
    free: AtomicU64,
    total: AtomicU64,
    reserve_bytes: AtomicU64,
    reserve_percent: AtomicU8,
    exit_after_ms: AtomicU64,
    /// Tracking hits answered without being recorded.
    pub hits_dropped: AtomicU64,
    /// Times the store was re-opened after an I/O error.
    pub reopens: AtomicU64,
    inner: Mutex<Inner>,
    fatal: Notify,
}

/// `/healthz`'s account of the store.
#[derive(Debug, Serialize)]
pub struct HealthReport {
    /// `ok`, `low_space` or `unavailable`.
    pub status: StoreState,
    /// Free bytes of the store's filesystem (for the daemon's user).
    pub free_bytes: u64,
    /// Bytes kept free: below them bulk intake is refused.
    pub reserve_bytes: u64,
    /// Why the store is unavailable (or the free space unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when it is unavailable (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_since: Option<String>,
    /// Times the store was re-opened after an I/O error since the start.
    pub reopens: u64,
    /// Tracking hits answered without being recorded since the start.
    pub hits_dropped: u64,
    /// The background loops' last reports.
    pub loops: BTreeMap<&'static str, LoopReport>,
}

impl Health {
    /// The health of the store in `dir`, with the configured reserve.
    pub fn new(dir: &Path, config: &crate::config::storage::StorageConfig) -> Health {
        let h = Health {
            dir: dir.to_path_buf(),
            unavailable: AtomicBool::new(false),
            low: AtomicBool::new(false),
            free: AtomicU64::new(0),
            total: AtomicU64::new(0),
            reserve_bytes: AtomicU64::new(0),
            reserve_percent: AtomicU8::new(0),
            exit_after_ms: AtomicU64::new(0),
            hits_dropped: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            fatal: Notify::new(),
        };
        h.configure(config);
        h.refresh_space();
        h
    }

    /// Takes a (re)loaded `[storage]` section's reserve and exit limit.
    pub fn configure(&self, config: &crate::config::storage::StorageConfig) {
        self.reserve_bytes
            .store(config.reserve_bytes, Ordering::Relaxed);
        self.reserve_percent
            .store(config.reserve_percent, Ordering::Relaxed);
        self.exit_after_ms.store(
            config.unavailable_exit_after.as_millis() as u64,
            Ordering::Relaxed,
        );
        self.judge_space();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now.
    pub fn state(&self) -> StoreState {
        if self.unavailable.load(Ordering::Acquire) {
            StoreState::Unavailable
        } else if self.low.load(Ordering::Acquire) {
            StoreState::LowSpace
        } else {
            StoreState::Ok
        }
    }

    /// Whether the store is being re-opened.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable.load(Ordering::Acquire)
    }

    /// Marks the store unavailable (first report wins the reason); says
    /// whether it was available until now.
    pub fn set_unavailable(&self, why: &str) -> bool {
        let mut inner = self.lock();
        if inner.unavailable.is_none() {
            inner.unavailable = Some((Instant::now(), chrono::Utc::now(), why.to_string()));
            self.unavailable.store(true, Ordering::Release);
            return true;
        }
        false
    }

    /// Marks the store available again (re-opened and written).
    pub fn set_available(&self) {
        let mut inner = self.lock();
        if let Some((since, ..)) = inner.unavailable.take() {
            tracing::info!(
                after_ms = since.elapsed().as_millis() as u64,
                "store: available again"
            );
        }
        self.unavailable.store(false, Ordering::Release);
        drop(inner);
        self.refresh_space();
    }

    /// How long the store has been unavailable, if it is.
    pub fn unavailable_for(&self) -> Option<Duration> {
        self.lock().unavailable.as_ref().map(|(t, ..)| t.elapsed())
    }

    /// Whether the store has been unavailable longer than allowed.
    pub fn past_exit_limit(&self) -> bool {
        let limit = Duration::from_millis(self.exit_after_ms.load(Ordering::Relaxed));
        self.unavailable_for().is_some_and(|d| d > limit)
    }

    /// Declares the store lost for this process: the daemon exits.
    pub fn set_fatal(&self, why: String) {
        self.lock().fatal = Some(why);
        self.fatal.notify_waiters();
        self.fatal.notify_one();
    }

    /// Resolves (with the reason) once the store is declared lost.
    pub async fn fatal(&self) -> String {
        loop {
            let notified = self.fatal.notified();
            if let Some(why) = self.lock().fatal.clone() {
                return why;
            }
            notified.await;
        }
    }

    /// Records a background loop's round: `Ok` or the error it met.
    pub fn report_loop(&self, name: &'static str, result: Result<(), String>) {
        let mut inner = self.lock();
        let r = inner.loops.entry(name).or_insert(LoopReport {
            ok: true,
            error: None,
            seconds_ago: 0,
            at: None,
        });
        r.at = Some(Instant::now());
        match result {
            Ok(()) => {
                r.ok = true;
                r.error = None;
            }
            Err(e) => {
                r.ok = false;
                r.error = Some(e);
            }
        }
    }

    /// Reads the free space of the store's filesystem (a system call: on a
    /// blocking thread, `app::serve` does it every second) and judges it.
    pub fn refresh_space(&self) {
        let read = disk_space(&self.dir);
        let mut inner = self.lock();
        match read {
            Ok((free, total)) => {
                inner.space_error = None;
                self.free.store(free, Ordering::Relaxed);
                self.total.store(total, Ordering::Relaxed);
            }
            Err(e) => {
                if inner.space_error.is_none() {
                    tracing::warn!(error = %e, dir = %self.dir.display(), "store: cannot read the free disk space");
                }
                inner.space_error = Some(e.to_string());
            }
        }
        drop(inner);
        self.judge_space();
    }

    /// Sets the low-space state from the last reading and the reserve in
    /// force (logging a change); unknown free space never blocks intake.
    fn judge_space(&self) {
        if self.total.load(Ordering::Relaxed) == 0 {
            // Nothing read yet (the settings come before the first
            // reading): no verdict rather than "0 bytes free".
            return;
        }
        let (free, reserve) = self.space();
        let low = self.lock().space_error.is_none() && free < reserve;
        let was = self.low.swap(low, Ordering::AcqRel);
        if low && !was {
            tracing::warn!(
                free_bytes = free,
                reserve_bytes = reserve,
                dir = %self.dir.display(),
                "store: low on disk space; imports, event batches and campaign sends wait until there is room"
            );
        } else if was && !low {
            tracing::info!(
                free_bytes = free,
                reserve_bytes = reserve,
                "store: disk space back above the reserve"
            );
        }
    }

    /// The reserve in bytes for a filesystem of `total` bytes.
    fn reserve_of(&self, total: u64) -> u64 {
        let pct = u64::from(self.reserve_percent.load(Ordering::Relaxed));
        self.reserve_bytes
            .load(Ordering::Relaxed)
            .max(total / 100 * pct)
    }

    /// Free bytes and the reserve, as last read.
    pub fn space(&self) -> (u64, u64) {
        let total = self.total.load(Ordering::Relaxed);
        (self.free.load(Ordering::Relaxed), self.reserve_of(total))
    }

    /// For bulk intake: `Ok` when it may go ahead (the free space as read
    /// at most a second ago; no system call here).
    pub fn bulk_allowed(&self) -> Result<(), super::StoreError> {
        match self.state() {
            StoreState::Ok => Ok(()),
            StoreState::Unavailable => Err(super::StoreError::Unavailable(self.reason())),
            StoreState::LowSpace => {
                let (free, reserve) = self.space();
                Err(super::StoreError::LowSpace { free, reserve })
            }
        }
    }

    /// Why the store is unavailable (its first error).
    pub fn reason(&self) -> String {
        self.lock()
            .unavailable
            .as_ref()
            .map_or_else(|| "being re-opened".into(), |(.., w)| w.clone())
    }

    /// The whole account, for `/healthz`.
    pub fn report(&self) -> HealthReport {
        let (free, reserve) = self.space();
        let inner = self.lock();
        let mut loops = inner.loops.clone();
        for r in loops.values_mut() {
            r.seconds_ago = r.at.map_or(0, |t| t.elapsed().as_secs());
        }
        HealthReport {
            status: self.state(),
            free_bytes: free,
            reserve_bytes: reserve,
            error: inner
                .unavailable
                .as_ref()
                .map(|(.., w)| w.clone())
                .or_else(|| inner.space_error.clone()),
            unavailable_since: inner
                .unavailable
                .as_ref()
                .map(|(_, at, _)| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            reopens: self.reopens.load(Ordering::Relaxed),
            hits_dropped: self.hits_dropped.load(Ordering::Relaxed),
            loops,
        }
    }
}

/// Free bytes (for an unprivileged user) and total bytes of the filesystem
/// holding `dir`.
fn disk_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("the storage path holds a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `s` a valid, writable
    // statvfs for the call to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = s.f_frsize as u64;
    Ok((s.f_bavail as u64 * unit, s.f_blocks as u64 * unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(reserve_mb: u64, pct: u8) -> crate::config::storage::StorageConfig {
        crate::config::storage::StorageConfig {
            dir: std::env::temp_dir(),
            cache_bytes: 8 << 20,
            reserve_bytes: reserve_mb << 20,
            reserve_percent: pct,
            unavailable_exit_after: Duration::from_millis(50),
        }
    }

    #[test]
    fn a_reserve_above_the_free_space_refuses_bulk_intake() {
        let h = Health::new(&std::env::temp_dir(), &config(u64::MAX >> 21, 0));
        assert_eq!(h.state(), StoreState::LowSpace);
        assert!(matches!(
            h.bulk_allowed(),
            Err(crate::store::StoreError::LowSpace { .. })
        ));
        h.configure(&config(0, 0));
        assert_eq!(h.state(), StoreState::Ok);
        assert!(h.bulk_allowed().is_ok());
    }

    #[test]
    fn unavailable_wins_and_has_a_time_limit() {
        let h = Health::new(&std::env::temp_dir(), &config(0, 0));
        assert!(h.set_unavailable("disk full"));
        assert!(!h.set_unavailable("later"));
        assert_eq!(h.state(), StoreState::Unavailable);
        assert_eq!(h.report().error.as_deref(), Some("disk full"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(h.past_exit_limit());
        h.set_available();
        assert_eq!(h.state(), StoreState::Ok);
        assert!(!h.past_exit_limit());
    }

    #[test]
    fn loops_report_their_last_round() {
        let h = Health::new(&std::env::temp_dir(), &config(0, 0));
        h.report_loop("delivery", Err("no".into()));
        assert!(!h.report().loops["delivery"].ok);
        h.report_loop("delivery", Ok(()));
        let r = h.report();
        assert!(r.loops["delivery"].ok);
        assert!(r.loops["delivery"].error.is_none());
    }
}
