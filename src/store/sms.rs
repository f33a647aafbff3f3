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
                self.tables.sms_due.open()?.remove((d, r.id))?;
            }
            if let Some(d) = new_due {
                self.tables.sms_due.open()?.insert((d, r.id), ())?;
            }
        }
        let old_gid = before.and_then(|b| b.gateway_id.as_deref());
        if old_gid != r.gateway_id.as_deref()
            && let Some(g) = &r.gateway_id
        {
            self.tables
                .sms_by_gateway_id
                .open()?
                .insert((r.gateway.as_str(), g.as_str()), r.id)?;
        }
        if before.is_none() {
            self.tables
                .sms_by_contact
                .open()?
                .insert((r.contact, r.id), ())?;
        }
        self.tables
            .sms
            .open()?
            .insert(r.id, to_json(r).as_slice())?;
        Ok(())
    }

    /// Erasure: a contact's text messages keep neither number nor text; a
    /// queued one fails unsent (counted `not_sent_erased`). Returns how
    /// many records were scrubbed.
    pub fn scrub_sms_of(&mut self, contact: u64, now: i64) -> Result<usize, StoreError> {
        use crate::send::model::Counter;
        let mut ids = Vec::new();
        for e in self
            .tables
            .sms_by_contact
            .open()?
            .range((contact, 0)..=(contact, u64::MAX))?
        {
            ids.push(e?.0.value().1);
        }
        for id in &ids {
            let Some(before) = self.sms(*id)? else {
                continue;
            };
            let mut r = before.clone();
            r.to = String::new();
            r.text = String::new();
            r.updated = now;
            if r.state == SmsState::Queued {
                r.state = SmsState::Failed;
                r.error = Some("not sent: the contact was erased".into());
                if let Some(s) = r.send.filter(|s| s.counted()) {
                    for c in [Counter::Failed, Counter::Dequeued, Counter::Erased] {
                        self.bump_send_at(s, c, 1, now)?;
                    }
                }
            }
            self.put_sms(&r, Some(&before))?;
            self.tables.sms_by_contact.open()?.remove((contact, *id))?;
        }
        Ok(ids.len())
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

    /// The queued SMS of send (`kind` code, `id`): those a cancel fails.
    fn queued_sms_of(&self, kind: u8, id: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables().sms_due()?.iter()? {
            let (_, sms) = r?.0.value();
            if let Some(rec) = self.sms(sms)?
                && rec
                    .send
                    .is_some_and(|s| s.kind.code() == kind && s.id == id)
            {
                out.push(sms);
            }
        }
        Ok(out)
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
