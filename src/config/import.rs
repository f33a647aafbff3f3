//! `[import]`: limits of CSV imports.

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// Default of `max_record_bytes`: the longest CSV record read (1 MiB).
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 1 << 20;

/// `[import]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImport {
    /// Longest CSV record (a row, with any line breaks quoted inside it), in
    /// bytes (default 1 MiB). A longer one, usually a quote left open, stops
    /// the import with its line number before it is held in memory.
    pub max_record_bytes: Option<Spanned<i64>>,
}

/// Validated `[import]`.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Longest CSV record read, in bytes.
    pub max_record_bytes: u64,
}

/// Validates `[import]`.
pub(super) fn validate(c: &mut Checker<'_>, raw: &RawImport) -> Option<ImportConfig> {
    let max_record_bytes = match &raw.max_record_bytes {
        None => Some(DEFAULT_MAX_RECORD_BYTES),
        Some(v) if (1024..=1 << 30).contains(v.get_ref()) => Some(*v.get_ref() as u64),
        Some(v) => {
            c.at(
                "import.max_record_bytes",
                v,
                "must be between 1024 and 1073741824 bytes",
            );
            None
        }
    };

    Some(ImportConfig {
        max_record_bytes: max_record_bytes?,
    })
}
