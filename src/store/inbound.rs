//! Inbound reports (`inbound_v1`, `inbound_raw_v1`), soft-bounce streaks
//! (`soft_bounces_v1`) and the suppression list's paging.

use redb::{ReadableTable, ReadableTableMetadata};

use super::tables::TableSet;
use super::{
    ReadTables, ReadView, Sequence, StoreError, WriteTables, from_json, get_json, to_json,
};
use crate::contacts::model::Suppression;
use crate::inbound::InboundRecord;

/// A contact's soft bounces since the last sign of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoftStreak {
    /// Soft bounces in the streak.
    pub count: u32,
    /// The first one's time (ms).
    pub first: i64,
    /// The latest one's time (ms).
    pub last: i64,
}

impl WriteTables<'_> {
    /// Stores a new inbound report (and the bytes kept of it); returns its id.
    pub fn add_inbound(&mut self, r: &mut InboundRecord, raw: &[u8]) -> Result<u64, StoreError> {
        let id = self.next_id(Sequence::Inbound)?;
        r.id = id;
        self.tables
            .inbound
            .open()?
            .insert(id, to_json(r).as_slice())?;
        self.tables.inbound_raw.open()?.insert(id, raw)?;
        Ok(id)
    }

    /// Removes up to `n` of the oldest reports taken before `before` (ms),
    /// with their bytes and index entries: how the report log keeps to
    /// `[inbound] keep_reports`, a little at every new report.
    pub fn prune_inbound(&mut self, before: i64, n: usize) -> Result<usize, StoreError> {
        let mut old = Vec::new();
        for r in self.tables.inbound.open()?.iter()? {
            let (k, v) = r?;
            let rec: InboundRecord = from_json("inbound", v.value())?;
            if rec.at >= before || old.len() >= n {
                break;
            }
            old.push((k.value(), rec.contact));
        }
        for (id, contact) in &old {
            self.tables.inbound.open()?.remove(*id)?;
            self.tables.inbound_raw.open()?.remove(*id)?;
            if let Some(c) = contact {
                self.tables.inbound_by_contact.open()?.remove((*c, *id))?;
            }
        }
        Ok(old.len())
    }

    /// Notes that report `id` is about `contact`.
    pub fn index_inbound(&mut self, contact: u64, id: u64) -> Result<(), StoreError> {
        self.tables
            .inbound_by_contact
            .open()?
            .insert((contact, id), ())?;
        Ok(())
    }

    /// Erasure: the reports about `contact` lose everything that names the
    /// person (recipient, the addresses in their findings, subject, the
    /// bytes kept); what they said and did stays, for the counts.
    pub fn scrub_inbound_of(&mut self, contact: u64) -> Result<(), StoreError> {
        let ids: Vec<u64> = self
            .tables
            .inbound_by_contact
            .open()?
            .range((contact, 0u64)..=(contact, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for id in ids {
            let found: Option<InboundRecord> =
                get_json(self.tables.inbound.read()?, "inbound", id)?;
            if let Some(mut r) = found {
                r.recipient = None;
                r.subject = None;
                r.findings.iter_mut().for_each(|f| {
                    f.recipient = None;
                    f.diagnostic = None;
                });
                self.put_inbound(&r)?;
            }
            self.tables.inbound_raw.open()?.remove(id)?;
            self.tables
                .inbound_by_contact
                .open()?
                .remove((contact, id))?;
        }
        Ok(())
    }

    /// Rewrites an inbound report (its effects, once applied).
    pub fn put_inbound(&mut self, r: &InboundRecord) -> Result<(), StoreError> {
        self.tables
            .inbound
            .open()?
            .insert(r.id, to_json(r).as_slice())?;
        Ok(())
    }

    /// A contact's soft-bounce streak.
    pub fn soft_streak(&self, contact: u64) -> Result<Option<SoftStreak>, StoreError> {
        Ok(self.tables.soft_bounces.read()?.get(contact)?.map(|v| {
            let (count, first, last) = v.value();
            SoftStreak { count, first, last }
        }))
    }

    /// Sets (or, with `None`, ends) a contact's soft-bounce streak.
    pub fn set_soft_streak(
        &mut self,
        contact: u64,
        s: Option<SoftStreak>,
    ) -> Result<(), StoreError> {
        match s {
            Some(s) => {
                self.tables
                    .soft_bounces
                    .open()?
                    .insert(contact, (s.count, s.first, s.last))?;
            }
            None => {
                self.tables.soft_bounces.open()?.remove(contact)?;
            }
        }
        Ok(())
    }

    /// Whether the contact's history shows a sign that mail reached them
    /// (an open, a click or an order) at or after `since` (ms): the newest
    /// entries are read first, and only back to `since`.
    pub fn engaged_since(&self, contact: u64, since: i64) -> Result<bool, StoreError> {
        let range = self
            .tables
            .history
            .read()?
            .range((contact, 0u64)..=(contact, u64::MAX))?;
        for r in range.rev() {
            let (_, v) = r?;
            let e = super::track::decode_history(v.value())?;
            if e.at < since {
                break;
            }
            if matches!(e.kind.as_str(), "open" | "click" | "order") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a suppression; the entry it was, if any.
    pub fn delete_suppression(&mut self, hash: &[u8]) -> Result<Option<Suppression>, StoreError> {
        let old = self.suppression(hash)?;
        if old.is_some() {
            self.tables.suppressions.open()?.remove(hash)?;
        }
        Ok(old)
    }
}

impl ReadView {
    /// An inbound report.
    pub fn inbound(&self, id: u64) -> Result<Option<InboundRecord>, StoreError> {
        get_json(self.tables().inbound()?, "inbound", id)
    }

    /// The bytes kept of an inbound report.
    pub fn inbound_raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tables()
            .inbound_raw()?
            .get(id)?
            .map(|v| v.value().to_vec()))
    }

    /// Inbound reports, newest first, with ids below `before`; at most
    /// `limit`.
    pub fn inbound_before(
        &self,
        before: u64,
        limit: usize,
    ) -> Result<Vec<InboundRecord>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables().inbound()?.range(..before)?.rev() {
            let (_, v) = r?;
            out.push(from_json("inbound", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// How many inbound reports are kept.
    pub fn inbound_count(&self) -> Result<u64, StoreError> {
        Ok(self.tables().inbound()?.len()?)
    }

    /// Suppression entries in hash order after `after` (exclusive; empty:
    /// from the start), at most `limit`: (hash, entry).
    pub fn suppressions_after(
        &self,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Suppression)>, StoreError> {
        let mut out = Vec::new();
        let t = self.tables().suppressions()?;
        let range = if after.is_empty() {
            t.range::<&[u8]>(..)?
        } else {
            t.range::<&[u8]>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?
        };
        for r in range {
            let (k, v) = r?;
            out.push((k.value().to_vec(), from_json("suppressions", v.value())?));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The contacts whose address is on the suppression list for a reason
    /// that stops mail (an erasure's entry names nobody): read once when a
    /// campaign's audience is resolved, O(suppressions).
    pub fn suppressed_contacts(&self) -> Result<std::collections::HashSet<u64>, StoreError> {
        use crate::contacts::model::SuppressionSource;
        use crate::store::ReadTables as _;
        let mut out = std::collections::HashSet::new();
        for r in self.tables().suppressions()?.iter()? {
            let (_, v) = r?;
            let s: Suppression = from_json("suppressions", v.value())?;
            if s.source == SuppressionSource::Erasure {
                continue;
            }
            if let Some(a) = s.address
                && let Ok(e) = crate::contacts::normalize_email(&a)
                && let Some(id) = self.contact_id_by_email(&e.key)?
            {
                out.insert(id);
            }
        }
        Ok(out)
    }

    /// How many addresses are suppressed.
    pub fn suppression_count(&self) -> Result<u64, StoreError> {
        Ok(self.tables().suppressions()?.len()?)
    }

    /// A suppression entry by its hash.
    pub fn suppression_entry(&self, hash: &[u8]) -> Result<Option<Suppression>, StoreError> {
        get_json(self.tables().suppressions()?, "suppressions", hash)
    }
}
