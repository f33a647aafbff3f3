//! The segment index saved beside the store (`segment-index.bin` in the
//! storage folder), so that a restart answers segments at once instead of
//! after a rebuild from the store (seconds per million contacts).
//!
//! The daemon saves the index when it stops cleanly, after the store writer
//! has committed its last batch, stamped with what identifies that state of
//! the store: the store's identity (a hash of its installation salt), its
//! schema version and the number of its last committed batch. At start the
//! file is used only if its stamp is the store's as it opens; any commit
//! since (a run ended by `kill -9`, a crash) moves the store's number on,
//! so a stale file is never used, and the index is built from the store as
//! before. The body carries its CRC-32: a torn or damaged file is detected
//! and rebuilt too. (A checksum against accidents, not a signature: whoever
//! can write the storage folder can rewrite the store itself. CRC-32 runs
//! at memory speed; SHA-256 took 0.95 s of a 10M start.)
//!
//! Layout: `MAGIC`, then the postcard-encoded [`Header`] (its length first,
//! a `u32` little-endian), then the postcard-encoded index data.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::index::Data;

/// The file's first bytes; the digit is the layout of [`Data`]: change it
/// whenever a type of `segment::index` changes what it serializes.
const MAGIC: &[u8; 8] = b"HSEGIDX2";

/// The file name in the storage folder.
pub const FILE_NAME: &str = "segment-index.bin";

/// The state of the store a saved index reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// SHA-256 of the store's installation salt: which store.
    pub store: [u8; 32],
    /// The store's schema version.
    pub schema: u64,
    /// The number of the store's last committed batch.
    pub commit: u64,
}

#[derive(Serialize, Deserialize)]
struct Header {
    stamp: Stamp,
    body_len: u64,
    body_crc32: u32,
}

/// Why a saved index was not used or not saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("no saved index")]
    Missing,
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{path} is not a segment index of this version")]
    Foreign { path: PathBuf },
    #[error("{path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
    #[error(
        "{path} is stale: it was saved at commit {saved} of the store, which is now at {current}"
    )]
    Stale {
        path: PathBuf,
        saved: u64,
        current: u64,
    },
    #[error("{path} was saved for another store or schema")]
    OtherStore { path: PathBuf },
}

/// The identity part of a stamp: SHA-256 of the store's salt.
pub fn store_id(salt: &[u8]) -> [u8; 32] {
    Sha256::digest(salt).into()
}

/// Reads the index saved at `path` if its stamp is `want`.
pub fn read(path: &Path, want: &Stamp) -> Result<Data, PersistError> {
    let io = |e: std::io::Error| PersistError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let started = std::time::Instant::now();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PersistError::Missing),
        Err(e) => return Err(io(e)),
    };
    let damaged = |m: String| PersistError::Damaged {
        path: path.into(),
        message: m,
    };
    let Some(rest) = bytes.strip_prefix(MAGIC) else {
        return Err(PersistError::Foreign { path: path.into() });
    };
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| damaged("too short".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err(damaged("header cut short".into()));
    }
    let (head, body) = rest.split_at(len);
    let header: Header = postcard::from_bytes(head).map_err(|e| damaged(e.to_string()))?;
    if header.stamp.store != want.store || header.stamp.schema != want.schema {
        return Err(PersistError::OtherStore { path: path.into() });
    }
    if header.stamp.commit != want.commit {
        return Err(PersistError::Stale {
            path: path.into(),
            saved: header.stamp.commit,
            current: want.commit,
        });
    }
    if body.len() as u64 != header.body_len {
        return Err(damaged(format!(
            "{} bytes of index data, {} expected",
            body.len(),
            header.body_len
        )));
    }
    let read = started.elapsed();
    if crc32fast::hash(body) != header.body_crc32 {
        return Err(damaged("checksum mismatch".into()));
    }
    let checked = started.elapsed();
    let data = postcard::from_bytes(body).map_err(|e| damaged(e.to_string()))?;
    let ms = |d: std::time::Duration| d.as_millis() as u64;
    tracing::info!(
        size_mb = bytes.len() >> 20,
        read_ms = ms(read),
        check_ms = ms(checked - read),
        decode_ms = ms(started.elapsed() - checked),
        "segment index file read"
    );
    Ok(data)
}

/// Saves `data` at `path` stamped `stamp`: written to a temporary file
/// beside it, synced, then renamed over the old one, so that a crash
/// leaves the old file or the new one, never half of one.
pub fn write(path: &Path, data: &Data, stamp: Stamp) -> Result<u64, PersistError> {
    let io = |e: std::io::Error| PersistError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let body = postcard::to_allocvec(data).map_err(|e| PersistError::Damaged {
        path: path.into(),
        message: format!("cannot encode: {e}"),
    })?;
    let header = Header {
        stamp,
        body_len: body.len() as u64,
        body_crc32: crc32fast::hash(&body),
    };
    let head = postcard::to_allocvec(&header).map_err(|e| PersistError::Damaged {
        path: path.into(),
        message: format!("cannot encode: {e}"),
    })?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&(head.len() as u32).to_le_bytes())
            .map_err(io)?;
        f.write_all(&head).map_err(io)?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok((MAGIC.len() + 4 + head.len() + body.len()) as u64)
}

/// Removes a saved index (it no longer matches what the daemon will
/// write); a missing file is fine.
pub fn remove(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the saved segment index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn stamp(commit: u64) -> Stamp {
        Stamp {
            store: store_id(b"salt"),
            schema: 4,
            commit,
        }
    }

    fn sample() -> Data {
        let mut d = Data::default();
        let sym = d.syms.intern("Kraków");
        d.syms.intern("shoes");
        d.tags
            .insert(sym, super::super::index::IdSet(vec![1, 5, 9]));
        d.rows.resize(10, Default::default());
        d.rows[5].present = true;
        d.rows[5].order_sum = 12_345;
        d.contacts = 1;
        d
    }

    #[test]
    fn a_saved_index_reads_back_only_with_its_stamp() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(FILE_NAME);
        assert!(matches!(read(&path, &stamp(7)), Err(PersistError::Missing)));
        write(&path, &sample(), stamp(7))?;
        let d = read(&path, &stamp(7))?;
        assert_eq!(d.syms.get("kraków"), 1);
        assert_eq!(d.syms.get("SHOES"), 2);
        assert_eq!(d.tags[&1].0, vec![1, 5, 9]);
        assert_eq!(d.rows[5].order_sum, 12_345);
        assert_eq!(d.contacts, 1);

        let e = read(&path, &stamp(8)).err().map(|e| e.to_string());
        assert!(e.as_deref().is_some_and(|e| e.contains("stale")), "{e:?}");
        let other = Stamp {
            store: store_id(b"other"),
            ..stamp(7)
        };
        assert!(matches!(
            read(&path, &other),
            Err(PersistError::OtherStore { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_damaged_file_is_refused_never_read() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(FILE_NAME);
        write(&path, &sample(), stamp(3))?;
        let good = std::fs::read(&path)?;
        // One flipped byte in the body, a cut file, and a foreign file.
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped)?;
        assert!(matches!(
            read(&path, &stamp(3)),
            Err(PersistError::Damaged { .. })
        ));
        std::fs::write(&path, &good[..good.len() - 5])?;
        assert!(matches!(
            read(&path, &stamp(3)),
            Err(PersistError::Damaged { .. })
        ));
        std::fs::write(&path, b"something else entirely")?;
        assert!(matches!(
            read(&path, &stamp(3)),
            Err(PersistError::Foreign { .. })
        ));
        Ok(())
    }
}
