//! The SMS queue's tables: records, the due index and the gateways' message
//! ids. The SMS module decides what changes; `put_sms` keeps the indexes in
//! step with each record.

use redb::ReadableTable;

use super::tables::*;
use super::{ReadTables, StoreError, WriteTables, from_json, to_json};
use crate::sms::model::{SmsRecord, SmsState};

impl WriteTables<'_> {
    /// Writes an SMS record and keeps the due index and the gateway-id
    /// index in step with `before`, its previous version.
    pub fn put_sms(&mut self, r: &SmsRecord, before: Option<&SmsRecord>) -> Result<(), StoreError> {
        let due = |r: &SmsRecord| (r.state == SmsState::Queued).then_some(r.due).flatten();
        let old_due = before.and_then(due);
        let new_due = due(r);
        if old_due != new_due {
            if let Some(d) = old_due {
                self.tables.sms_due.remove((d, r.id))?;
            }
            if let Some(d) = new_due {
                self.tables.sms_due.insert((d, r.id), ())?;
            }
        }
        let old_gid = before.and_then(|b| b.gateway_id.as_deref());
        if old_gid != r.gateway_id.as_deref()
            && let Some(g) = &r.gateway_id
        {
            self.tables
                .sms_by_gateway_id
                .insert((r.gateway.as_str(), g.as_str()), r.id)?;
        }
        self.tables.sms.insert(r.id, to_json(r).as_slice())?;
        Ok(())
    }
}

/// SMS lookups, for both kinds of transaction.
pub trait SmsTables: ReadTables {
    /// One SMS record.
    fn sms(&self, id: u64) -> Result<Option<SmsRecord>, StoreError> {
        match self.tables().sms()?.get(id)? {
            Some(v) => Ok(Some(from_json("sms", v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` SMS due at `now` or before, earliest first.
    fn due_sms(&self, now: i64, limit: usize) -> Result<Vec<(i64, u64)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables()
            .sms_due()?
            .range((i64::MIN, 0)..=(now, u64::MAX))?
        {
            out.push(r?.0.value());
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the next queued SMS is due.
    fn next_sms_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.tables().sms_due()?.first()?.map(|(k, _)| k.value().0))
    }

    /// The SMS a gateway's message id belongs to.
    fn sms_by_gateway_id(&self, gateway: &str, id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tables()
            .sms_by_gateway_id()?
            .get((gateway, id))?
            .map(|v| v.value()))
    }

    /// SMS records with ids below `before`, newest first, at most `limit`.
    fn sms_page(&self, before: u64, limit: usize) -> Result<Vec<SmsRecord>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables().sms()?.range(..before)?.rev() {
            out.push(from_json("sms", r?.1.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl<T: ReadTables> SmsTables for T {}
