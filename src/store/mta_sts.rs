//! The MTA-STS policy cache (`mta_sts_v1`): the last valid policy of each
//! destination domain, so that a restart keeps applying it (RFC 8461 §5.1:
//! a cached, unexpired policy holds even while DNS or HTTPS fail).

use super::tables::TableSet;
use super::{ReadView, StoreError, WriteTables, get_json, to_json};
use crate::delivery::mta_sts::Cached;

impl WriteTables<'_> {
    /// Stores (or replaces) the cached policy of `domain` (lower case).
    pub fn put_mta_sts(&mut self, domain: &str, c: &Cached) -> Result<(), StoreError> {
        self.tables
            .mta_sts
            .open()?
            .insert(domain, to_json(c).as_slice())?;
        Ok(())
    }

    /// Forgets the cached policy of `domain` (it expired).
    pub fn delete_mta_sts(&mut self, domain: &str) -> Result<(), StoreError> {
        self.tables.mta_sts.open()?.remove(domain)?;
        Ok(())
    }
}

impl ReadView {
    /// The cached policy of `domain` (lower case), expired or not.
    pub fn mta_sts(&self, domain: &str) -> Result<Option<Cached>, StoreError> {
        get_json(self.tables.mta_sts()?, "mta_sts", domain)
    }
}
