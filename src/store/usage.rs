//! Where the store's bytes go (`herald store stats`) and giving free pages
//! back to the filesystem (`herald store compact`). Both open the file
//! themselves, so the daemon must be stopped: redb lets one process hold a
//! store.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};
use serde::Serialize;

use super::tables::scan_all;
use super::{StoreError, store_file};

/// One table's share of the file.
#[derive(Debug, Clone, Serialize)]
pub struct TableUsage {
    /// The table's name (with its layout version).
    pub name: String,
    /// Entries in it.
    pub entries: u64,
    /// Pages of its B-tree (leaves and branches).
    pub pages: u64,
    /// Bytes of its pages (`pages` × the page size).
    pub page_bytes: u64,
    /// Key and value bytes stored in its leaves.
    pub stored_bytes: u64,
    /// B-tree bookkeeping bytes (offsets, branch keys).
    pub metadata_bytes: u64,
    /// Unused bytes inside its pages.
    pub fragmented_bytes: u64,
    /// Key bytes, with `--scan` (reads every entry).
    pub key_bytes: Option<u64>,
    /// Value bytes, with `--scan`.
    pub value_bytes: Option<u64>,
}

/// The whole file.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// The store file.
    pub path: PathBuf,
    /// Its size on disk.
    pub file_bytes: u64,
    /// redb's page size.
    pub page_size: u64,
    /// Pages allocated to tables and redb's own trees.
    pub allocated_pages: u64,
    /// Bytes of the file in no allocated page: free space redb reuses for
    /// new pages, and `herald store compact` gives back.
    pub free_bytes: u64,
    /// Every table, largest first.
    pub tables: Vec<TableUsage>,
}

fn open(path: &Path) -> Result<Database, StoreError> {
    if !path.exists() {
        return Err(StoreError::Io(format!("no store at {}", path.display())));
    }
    match Database::open(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(StoreError::Locked(path.into())),
        Err(e) => Err(StoreError::Redb(format!(
            "cannot open {}: {e}",
            path.display()
        ))),
    }
}

fn file_size(path: &Path) -> Result<u64, StoreError> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StoreError::Io(format!("cannot read {}: {e}", path.display())))
}

/// Measures the store in `dir`; `scan` also reads every entry to split the
/// stored bytes into keys and values.
pub fn usage(dir: &Path, scan: bool) -> Result<Usage, StoreError> {
    let path = store_file(dir);
    let db = open(&path)?;
    let file_bytes = file_size(&path)?;
    let (allocated_pages, page_size) = {
        let w = db.begin_write()?;
        let s = w.stats()?;
        w.abort()?;
        (s.allocated_pages(), s.page_size() as u64)
    };
    let txn = db.begin_read()?;
    let mut tables = Vec::new();
    for handle in txn.list_tables()? {
        let t = txn.open_untyped_table(handle.clone())?;
        let s = t.stats()?;
        let pages = s.leaf_pages() + s.branch_pages();
        tables.push(TableUsage {
            name: handle.name().to_string(),
            entries: t.len()?,
            pages,
            page_bytes: pages * page_size,
            stored_bytes: s.stored_bytes(),
            metadata_bytes: s.metadata_bytes(),
            fragmented_bytes: s.fragmented_bytes(),
            key_bytes: None,
            value_bytes: None,
        });
    }
    if scan {
        for s in scan_all(&txn)? {
            if let Some(t) = tables.iter_mut().find(|t| t.name == s.name) {
                t.key_bytes = Some(s.key_bytes);
                t.value_bytes = Some(s.value_bytes);
            }
        }
    }
    tables.sort_by(|a, b| b.page_bytes.cmp(&a.page_bytes).then(a.name.cmp(&b.name)));
    Ok(Usage {
        path,
        file_bytes,
        page_size,
        allocated_pages,
        free_bytes: file_bytes.saturating_sub(allocated_pages * page_size),
        tables,
    })
}

/// Rewrites the store in `dir` so that its free pages are given back to the
/// filesystem; returns the file's size before and after.
pub fn compact(dir: &Path) -> Result<(u64, u64), StoreError> {
    let path = store_file(dir);
    let mut db = open(&path)?;
    let before = file_size(&path)?;
    while db
        .compact()
        .map_err(|e| StoreError::Redb(format!("compacting {}: {e}", path.display())))?
    {}
    drop(db);
    Ok((before, file_size(&path)?))
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1e6)
}

/// `usage` as the table `herald store stats` prints.
pub fn format(u: &Usage) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let used = u.allocated_pages * u.page_size;
    let _ = writeln!(
        out,
        "{}: {} MB on disk, {} MB in pages, {} MB free ({} pages of {} bytes)",
        u.path.display(),
        mb(u.file_bytes),
        mb(used),
        mb(u.free_bytes),
        u.allocated_pages,
        u.page_size
    );
    let _ = writeln!(
        out,
        "{:<26} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "table", "entries", "pages MB", "keys MB", "values MB", "meta MB", "unused MB", "B/entry"
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), mb);
    for t in u.tables.iter().filter(|t| t.entries > 0 || t.pages > 0) {
        let _ = writeln!(
            out,
            "{:<26} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}",
            t.name,
            t.entries,
            mb(t.page_bytes),
            opt(t.key_bytes),
            opt(t.value_bytes),
            mb(t.metadata_bytes),
            mb(t.fragmented_bytes),
            t.page_bytes.checked_div(t.entries).unwrap_or(0)
        );
    }
    let table_pages: u64 = u.tables.iter().map(|t| t.page_bytes).sum();
    let _ = writeln!(
        out,
        "tables {} MB; redb's own trees {} MB",
        mb(table_pages),
        mb(used.saturating_sub(table_pages))
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::model::List;
    use crate::store::ReadTables as _;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn list(id: u64) -> List {
        List {
            id,
            name: format!("list {id}"),
            description: Some("x".repeat(2000)),
            member_count: 0,
            created_at: chrono::Utc::now(),
        }
    }

    /// Stats count what was written; after most of it is deleted, compact
    /// gives the freed pages back and keeps the rest readable.
    #[test]
    fn stats_count_what_was_written_and_compact_gives_space_back() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = super::super::Store::open(dir.path())?;
        store
            .write_blocking(|t| (1..=3000).try_for_each(|id| t.put_list(&list(id), None)))?
            .blocking_recv()??;
        let u = usage(dir.path(), true);
        assert!(matches!(u, Err(StoreError::Locked(_))), "{u:?}");
        store
            .write_blocking(|t| (2..=3000).try_for_each(|id| t.delete_list(&list(id))))?
            .blocking_recv()??;
        store.close();

        let u = usage(dir.path(), true)?;
        let lists = u.tables.iter().find(|t| t.name == "lists_v1");
        let lists = lists.ok_or("no lists_v1 in the stats")?;
        assert_eq!(lists.entries, 1);
        assert!(lists.value_bytes.unwrap_or(0) > 2000, "{lists:?}");
        assert!(u.free_bytes > 3_000_000, "{u:?}");
        assert!(format(&u).contains("lists_v1"));

        let (before, after) = compact(dir.path())?;
        assert!(after + 3_000_000 < before, "{before} -> {after}");
        let store = super::super::Store::open(dir.path())?;
        let kept = store.read_blocking(|r| r.list(1))?;
        assert_eq!(kept.map(|l| l.name), Some("list 1".to_string()));
        Ok(())
    }
}
