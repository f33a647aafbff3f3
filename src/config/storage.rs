//! `[storage]`: where the redb store lives, its page cache, the disk space
//! kept free, and how long the store may stay unavailable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, resolve};

/// redb page cache used unless `cache_mb` says otherwise (32 MiB).
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Directory holding `herald.redb`; relative paths are relative to the
    /// config file's directory.
    pub path: Option<Spanned<String>>,
    /// Memory for redb's page cache, in MiB (default 32). More speeds up
    /// large imports and segment scans; the OS page cache helps either way.
    pub cache_mb: Option<Spanned<i64>>,
    /// Free space (MiB) the store's filesystem keeps: below it (or below
    /// `reserve_percent`, whichever is larger) bulk intake is refused.
    pub reserve_mb: Option<Spanned<i64>>,
    /// The same reserve as a share of the filesystem's size (0 to 50).
    pub reserve_percent: Option<Spanned<i64>>,
    /// How long the store may stay unavailable (re-opened in vain) before
    /// the daemon exits non-zero so that systemd restarts it.
    pub unavailable_exit_after: Option<Spanned<String>>,
}

/// Validated `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory of the store.
    pub dir: PathBuf,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// Free space to keep, in bytes (`reserve_mb`).
    pub reserve_bytes: u64,
    /// Free space to keep, as a percentage of the filesystem.
    pub reserve_percent: u8,
    /// How long re-opening may fail before the daemon gives up and exits.
    pub unavailable_exit_after: Duration,
}

/// Default `reserve_mb`: 1 GiB.
pub const DEFAULT_RESERVE_MB: u64 = 1024;
/// Default `reserve_percent`.
pub const DEFAULT_RESERVE_PERCENT: u8 = 5;
/// Default `unavailable_exit_after`.
pub const DEFAULT_UNAVAILABLE_EXIT_AFTER: Duration = Duration::from_secs(600);

impl StorageConfig {
    /// The redb file inside the storage directory.
    pub fn db_file(&self) -> PathBuf {
        self.dir.join("herald.redb")
    }
}

/// Validates `[storage]`; relative paths are relative to `base`.
pub(super) fn validate(
    c: &mut Checker<'_>,
    base: &Path,
    raw: &RawStorage,
) -> Option<StorageConfig> {
    let storage = c
        .required(
            "storage.path",
            &raw.path,
            "the directory for herald.redb, e.g. path = \"/var/lib/herald\"",
        )
        .and_then(|v| {
            if v.get_ref().trim().is_empty() {
                c.at("storage.path", v, "must not be empty");
                return None;
            }
            let dir = resolve(base, v.get_ref());
            if dir.exists() && !dir.is_dir() {
                c.at(
                    "storage.path",
                    v,
                    format!("{} exists and is not a directory", dir.display()),
                );
                return None;
            }
            Some(dir)
        });
    let cache_bytes = match &raw.cache_mb {
        None => Some(DEFAULT_CACHE_BYTES),
        Some(v) if (8..=65536).contains(v.get_ref()) => Some((*v.get_ref() as usize) << 20),
        Some(v) => {
            c.at("storage.cache_mb", v, "must be between 8 and 65536 (MiB)");
            None
        }
    };
    let reserve_mb = match &raw.reserve_mb {
        None => Some(DEFAULT_RESERVE_MB),
        Some(v) if (0..=1 << 30).contains(v.get_ref()) => Some(*v.get_ref() as u64),
        Some(v) => {
            c.at(
                "storage.reserve_mb",
                v,
                "must be a number of MiB from 0 (no reserve) up",
            );
            None
        }
    };
    let reserve_percent = match &raw.reserve_percent {
        None => Some(DEFAULT_RESERVE_PERCENT),
        Some(v) if (0..=50).contains(v.get_ref()) => Some(*v.get_ref() as u8),
        Some(v) => {
            c.at(
                "storage.reserve_percent",
                v,
                "must be between 0 and 50 (percent of the filesystem)",
            );
            None
        }
    };
    let exit_after = match &raw.unavailable_exit_after {
        None => Some(DEFAULT_UNAVAILABLE_EXIT_AFTER),
        Some(v) => super::values::duration(c, "storage.unavailable_exit_after", v),
    };

    Some(StorageConfig {
        dir: storage?,
        cache_bytes: cache_bytes?,
        reserve_bytes: reserve_mb? << 20,
        reserve_percent: reserve_percent?,
        unavailable_exit_after: exit_after?,
    })
}
