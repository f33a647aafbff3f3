//! What traffic shaping keeps in the store: a warming-up sender's use of
//! its allowance (`warmup_v1`), so that a restart does not hand out a
//! period's allowance twice.

use redb::ReadableTable as _;

use super::{StoreError, WriteTables};

impl WriteTables<'_> {
    /// Adds `n` recipients to a warming-up sender's use of `scope` in
    /// `period`, and forgets its periods before `period - 7`.
    pub fn add_warmup_used(
        &mut self,
        sender: &str,
        scope: &str,
        period: u64,
        n: u64,
    ) -> Result<(), StoreError> {
        let old = self
            .tables
            .warmup
            .open()?
            .get((sender, scope, period))?
            .map_or(0, |v| v.value());
        self.tables
            .warmup
            .open()?
            .insert((sender, scope, period), old.saturating_add(n))?;
        if let Some(stale) = period.checked_sub(8) {
            self.tables.warmup.open()?.remove((sender, scope, stale))?;
        }
        Ok(())
    }
}
