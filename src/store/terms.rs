//! The term dictionary (schema 6): the short strings that repeat across
//! millions of shop records — SKUs, categories, product names, currencies,
//! statuses, payment types — are kept once, in `terms_v1` (number → text)
//! and `term_ids_v1` (text → number), and orders and aggregates hold their
//! numbers ([`Text::Term`]). At a million contacts that halves the bytes of
//! `orders_v3` and `shop_stats_v2` (BENCHMARKS.md, issue 27).
//!
//! A term's number is given in the write transaction that first stores it
//! (the largest number in `terms_v1` + 1), so it commits or vanishes with
//! the records that use it; nothing is cached across transactions, and no
//! reader can meet a number its snapshot cannot resolve. A write
//! transaction remembers the terms it has looked up ([`Interner`]): a batch
//! of ten thousand events reads each distinct SKU from the table once.
//!
//! Strings that do not repeat stay in the record ([`Text::Inline`]): those
//! longer than [`MAX_TERM_BYTES`], and every string once the dictionary
//! holds [`MAX_TERMS`] terms (a shop that sends free text as item names
//! cannot grow it without bound).

use std::cell::RefCell;
use std::collections::HashMap;

use redb::{ReadableTable, Table};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Strings longer than this stay in the record.
pub(super) const MAX_TERM_BYTES: usize = 64;

/// The most terms the dictionary takes; later strings stay in the record.
pub(super) const MAX_TERMS: u32 = 1 << 20;

/// A string as a stored record holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Text {
    /// A term's number in `terms_v1`.
    Term(u32),
    /// The string itself.
    Inline(String),
}

/// A write transaction's view of the dictionary: the terms it has looked
/// up or added, both ways, and the next free number once known.
#[derive(Default)]
pub(super) struct Interner {
    ids: HashMap<String, u32>,
    names: RefCell<HashMap<u32, String>>,
    next: Option<u32>,
}

impl Interner {
    /// The record form of `s`: its term (looked up, or added to both
    /// tables), or `s` itself when it is long or the dictionary is full.
    pub(super) fn intern(
        &mut self,
        ids: &mut Table<&'static str, u32>,
        names: &mut Table<u32, &'static str>,
        s: &str,
    ) -> Result<Text, StoreError> {
        if let Some(n) = self.ids.get(s) {
            return Ok(Text::Term(*n));
        }
        if s.len() > MAX_TERM_BYTES {
            return Ok(Text::Inline(s.to_string()));
        }
        if let Some(n) = ids.get(s)?.map(|v| v.value()) {
            self.ids.insert(s.to_string(), n);
            return Ok(Text::Term(n));
        }
        let next = match self.next {
            Some(n) => n,
            None => names.last()?.map_or(0, |(k, _)| k.value() + 1),
        };
        if next >= MAX_TERMS {
            return Ok(Text::Inline(s.to_string()));
        }
        ids.insert(s, next)?;
        names.insert(next, s)?;
        self.next = Some(next + 1);
        self.ids.insert(s.to_string(), next);
        self.names.borrow_mut().insert(next, s.to_string());
        Ok(Text::Term(next))
    }

    /// The text of term `n`, read from `names` the first time.
    pub(super) fn name(
        &self,
        names: &impl ReadableTable<u32, &'static str>,
        n: u32,
    ) -> Result<String, StoreError> {
        if let Some(s) = self.names.borrow().get(&n) {
            return Ok(s.clone());
        }
        let s = name(names, n)?;
        self.names.borrow_mut().insert(n, s.clone());
        Ok(s)
    }
}

/// The text of term `n` (a record naming a term the table lacks is
/// damage, reported as such).
pub(super) fn name(
    names: &impl ReadableTable<u32, &'static str>,
    n: u32,
) -> Result<String, StoreError> {
    match names.get(n)? {
        Some(v) => Ok(v.value().to_string()),
        None => Err(missing(n)),
    }
}

/// A record names term `n`, which the dictionary lacks: damage.
fn missing(n: u32) -> StoreError {
    StoreError::Corrupt {
        table: "terms",
        message: format!("term {n} is used by a record but missing"),
    }
}

/// Every term, by number (`None` for a number never given): for scans
/// that decode many records at once, on several threads.
pub(super) fn all(
    names: &impl ReadableTable<u32, &'static str>,
) -> Result<Vec<Option<String>>, StoreError> {
    let mut out = Vec::new();
    for r in names.iter()? {
        let (k, v) = r?;
        let n = k.value() as usize;
        if out.len() <= n {
            out.resize(n + 1, None);
        }
        out[n] = Some(v.value().to_string());
    }
    Ok(out)
}

/// Resolves term `n` in a list made by [`all`].
pub(super) fn in_list(list: &[Option<String>], n: u32) -> Result<String, StoreError> {
    list.get(n as usize)
        .and_then(|s| s.clone())
        .ok_or_else(|| missing(n))
}

impl Text {
    /// The string, resolving a term with `name`.
    pub(super) fn resolve(
        self,
        name: &impl Fn(u32) -> Result<String, StoreError>,
    ) -> Result<String, StoreError> {
        match self {
            Text::Term(n) => name(n),
            Text::Inline(s) => Ok(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: redb::TableDefinition<&str, u32> = redb::TableDefinition::new("ids");
    const NAMES: redb::TableDefinition<u32, &str> = redb::TableDefinition::new("names");

    #[test]
    fn terms_are_numbered_once_long_strings_stay_inline() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let db = redb::Database::create(dir.path().join("t.redb"))?;
        let txn = db.begin_write()?;
        {
            let mut ids = txn.open_table(IDS)?;
            let mut names = txn.open_table(NAMES)?;
            let mut i = Interner::default();
            assert_eq!(i.intern(&mut ids, &mut names, "SKU-1")?, Text::Term(0));
            assert_eq!(i.intern(&mut ids, &mut names, "shoes")?, Text::Term(1));
            assert_eq!(i.intern(&mut ids, &mut names, "SKU-1")?, Text::Term(0));
            let long = "x".repeat(MAX_TERM_BYTES + 1);
            assert_eq!(
                i.intern(&mut ids, &mut names, &long)?,
                Text::Inline(long.clone())
            );
            assert_eq!(i.name(&names, 1)?, "shoes");
        }
        txn.commit()?;
        // A later transaction (a new interner) finds the same numbers and
        // goes on after the last one.
        let txn = db.begin_write()?;
        {
            let mut ids = txn.open_table(IDS)?;
            let mut names = txn.open_table(NAMES)?;
            let mut i = Interner::default();
            assert_eq!(i.intern(&mut ids, &mut names, "shoes")?, Text::Term(1));
            assert_eq!(i.intern(&mut ids, &mut names, "PLN")?, Text::Term(2));
            let list = all(&names)?;
            assert_eq!(in_list(&list, 2)?, "PLN");
            assert!(in_list(&list, 3).is_err());
            assert!(name(&names, 7).is_err());
        }
        Ok(())
    }
}
