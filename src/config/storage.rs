//! `[storage]`: where the redb store lives and its page cache.

use std::path::{Path, PathBuf};

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
}

/// Validated `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory of the store.
    pub dir: PathBuf,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
}

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

    Some(StorageConfig {
        dir: storage?,
        cache_bytes: cache_bytes?,
    })
}
