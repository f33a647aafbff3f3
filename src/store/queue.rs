//! The delivery queue's tables: messages, bodies, the due index and the log of
//! finished messages. The delivery module decides what changes; these methods
//! keep the due index consistent with each message's recipients.

use redb::ReadableTable;

use super::tables::*;
use super::{
    ReadTables, ReadView, StoreError, WriteTables, from_json, meta_u64, suppression_key, to_json,
};
use crate::delivery::model::{NotSent, QueuedMessage, RcptState};
use crate::send::model::SendKind;

/// A key of the due index: (due time in ms, queue id).
pub type DueEntry = (i64, u64);

/// Lifetime totals of finished recipients.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSummary {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
    /// Of the failed: taken out unsent because the contact was erased.
    pub not_sent_erased: u64,
    /// Of the failed: taken out unsent because consent no longer allowed it.
    pub not_sent_no_consent: u64,
    /// Of the failed: taken out unsent because the address is suppressed.
    pub not_sent_suppressed: u64,
}

const DELIVERED: &str = "count.rcpt.delivered";
const FAILED: &str = "count.rcpt.failed";
const NOT_SENT_ERASED: &str = "count.rcpt.not_sent.erased";
const NOT_SENT_NO_CONSENT: &str = "count.rcpt.not_sent.no_consent";
const NOT_SENT_SUPPRESSED: &str = "count.rcpt.not_sent.suppressed";
/// Set in META once every queue record is in `queue_by_address_v1`.
const ADDRESS_INDEX_BUILT: &str = "index.queue_by_address";
/// In META: every message with a queue id up to this one is in
/// `queue_by_address_v1`. A message is not indexed when it is queued (its
/// hashed key would land on a random page of the index, one more scattered
/// page in every synced commit that accepts mail); it is indexed later, in
/// bulk, by [`WriteTables::index_recent_addresses`], and until then lookups
/// find it by reading the records above this mark.
const ADDRESS_INDEX_UPTO: &str = "index.queue_by_address.upto";

/// The key of a recipient address in `queue_by_address_v1`: the same salted
/// hash the suppression list uses, so an erased address is found by it.
fn address_key(salt: &[u8], address: &str) -> Vec<u8> {
    suppression_key(salt, &address.to_lowercase())
}

/// The index keys of a message's recipients (an erased address has none).
fn indexed_keys(salt: &[u8], m: &QueuedMessage) -> Vec<(Vec<u8>, u64)> {
    m.recipients
        .iter()
        .filter(|r| r.address != crate::delivery::outcome::ERASED)
        .map(|r| (address_key(salt, &r.address), m.id))
        .collect()
}

/// Whether `m` has a recipient whose address hashes to `key`.
pub(super) fn is_to(salt: &[u8], m: &QueuedMessage, key: &[u8]) -> bool {
    m.recipients
        .iter()
        .any(|r| address_key(salt, &r.address) == key)
}

/// The index's mark in META.
pub(super) fn address_index_upto(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    meta_u64(meta, ADDRESS_INDEX_UPTO)
}

/// Fills `queue_by_address_v1` from the queue and its finished log, once
/// (stores created before the index existed); a new store just marks it built.
pub(super) fn index_addresses(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(ADDRESS_INDEX_BUILT)?.is_some() {
        return Ok(());
    }
    let salt = meta
        .get("salt")?
        .map(|v| v.value().to_vec())
        .unwrap_or_default();
    let mut index = txn.open_table(QUEUE_BY_ADDRESS)?;
    let mut n = 0u64;
    let mut add = |m: QueuedMessage| -> Result<(), StoreError> {
        for rc in &m.recipients {
            index.insert((address_key(&salt, &rc.address).as_slice(), m.id), ())?;
            n += 1;
        }
        Ok(())
    };
    for r in txn.open_table(QUEUE)?.iter()? {
        add(from_json("queue", r?.1.value())?)?;
    }
    let names = txn.open_table(TERMS)?;
    let name = |t| super::terms::name(&names, t);
    for r in txn.open_table(QUEUE_DONE)?.iter()? {
        let (k, v) = r?;
        add(super::queue_codec::decode_message(
            k.value(),
            v.value(),
            &name,
        )?)?;
    }
    meta.insert(ADDRESS_INDEX_BUILT, 1u64.to_be_bytes().as_slice())?;
    if n > 0 {
        tracing::info!(
            recipients = n,
            "indexed the queue by recipient address (for erasure and export)"
        );
    }
    Ok(())
}

/// Sets the index's mark in a store that has none: a store written before
/// the mark existed indexed every message as it was queued (or at open,
/// [`index_addresses`]), so its mark is its last queue id (0 in a new store).
pub(super) fn mark_addresses_indexed(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if meta.get(ADDRESS_INDEX_UPTO)?.is_none() {
        let last = meta_u64(&meta, super::Sequence::Message.key())?;
        meta.insert(ADDRESS_INDEX_UPTO, last.to_be_bytes().as_slice())?;
    }
    Ok(())
}

/// Where the address index stands: every message with a queue id up to
/// `upto` is indexed; the queue's last id is `last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressIndexMark {
    /// Messages up to this queue id are indexed.
    pub upto: u64,
    /// The last queue id given out.
    pub last: u64,
}

impl AddressIndexMark {
    /// How many queue ids are above the mark.
    pub fn backlog(&self) -> u64 {
        self.last.saturating_sub(self.upto)
    }
}

impl WriteTables<'_> {
    /// Stores a queued message (and its body, when given), moving its entry in
    /// the due index to its earliest pending recipient. Its recipients'
    /// addresses are indexed later ([`ADDRESS_INDEX_UPTO`]).
    pub fn put_message(
        &mut self,
        m: &mut QueuedMessage,
        body: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let due = m.next_due();
        if m.due != due {
            if let Some(old) = m.due {
                self.tables.queue_due.open()?.remove((old, m.id))?;
            }
            if let Some(new) = due {
                self.tables.queue_due.open()?.insert((new, m.id), ())?;
            }
            m.due = due;
        }
        self.tables
            .queue
            .open()?
            .insert(m.id, to_json(m).as_slice())?;
        if let Some(b) = body {
            self.tables.queue_bodies.open()?.insert(m.id, b)?;
        }
        Ok(())
    }

    /// Indexes the recipient addresses of up to `limit` queue ids above the
    /// index's mark (queued or finished; an id whose record is gone has
    /// nothing to index) and moves the mark past them, in one transaction
    /// (lost in a crash, the mark goes back with them). Returns the mark
    /// after.
    pub fn index_recent_addresses(&mut self, limit: u64) -> Result<AddressIndexMark, StoreError> {
        let mark = self.address_index_mark()?;
        let upto = mark.upto.saturating_add(limit).min(mark.last);
        if upto == mark.upto {
            return Ok(mark);
        }
        let salt = self.salt()?;
        let mut keys = Vec::new();
        self.for_each_message_in(mark.upto + 1..=upto, |m| {
            keys.extend(indexed_keys(&salt, m))
        })?;
        keys.sort_unstable();
        let index = self.tables.queue_by_address.open()?;
        for k in &keys {
            index.insert((k.0.as_slice(), k.1), ())?;
        }
        self.tables
            .meta
            .open()?
            .insert(ADDRESS_INDEX_UPTO, upto.to_be_bytes().as_slice())?;
        Ok(AddressIndexMark { upto, ..mark })
    }

    /// Overwrites a queued message's record with bytes that do not decode
    /// (tests of what a damaged record does).
    #[cfg(test)]
    pub fn damage_queued_message(&mut self, id: u64) -> Result<(), StoreError> {
        self.tables
            .queue
            .open()?
            .insert(id, b"not json".as_slice())?;
        Ok(())
    }

    /// Rewrites the record of a finished message (erasure scrubs it).
    pub fn put_finished_message(&mut self, m: &QueuedMessage) -> Result<(), StoreError> {
        let b = super::queue_codec::encode_message(m, &mut self.interner())?;
        self.tables.queue_done.open()?.insert(m.id, b.as_slice())?;
        Ok(())
    }

    /// Forgets the address index entries under `key` (erasure, after the
    /// records they point to were scrubbed).
    pub fn unindex_address(&mut self, key: &[u8]) -> Result<(), StoreError> {
        for id in self.message_ids_to(key)? {
            self.tables.queue_by_address.open()?.remove((key, id))?;
        }
        Ok(())
    }

    /// Moves `delivered` and `failed` recipients between the queue-wide
    /// totals of finished messages (a bounce reported after delivery).
    pub fn recount_finished(&mut self, delivered: i64, failed: i64) -> Result<(), StoreError> {
        self.bump(DELIVERED, delivered)?;
        self.bump(FAILED, failed)?;
        Ok(())
    }

    /// Moves a message whose recipients are all done to the finished log and
    /// drops its body.
    pub fn finish_message(&mut self, mut m: QueuedMessage, now: i64) -> Result<(), StoreError> {
        if let Some(old) = m.due.take() {
            self.tables.queue_due.open()?.remove((old, m.id))?;
        }
        self.tables.queue.open()?.remove(m.id)?;
        self.tables.queue_bodies.open()?.remove(m.id)?;
        let delivered = m
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Delivered)
            .count() as i64;
        let failed = m.recipients.len() as i64 - delivered;
        self.bump(DELIVERED, delivered)?;
        self.bump(FAILED, failed)?;
        for r in &m.recipients {
            match r.not_sent {
                Some(NotSent::Erased) => self.bump(NOT_SENT_ERASED, 1)?,
                Some(NotSent::NoConsent) => self.bump(NOT_SENT_NO_CONSENT, 1)?,
                Some(NotSent::Suppressed) => self.bump(NOT_SENT_SUPPRESSED, 1)?,
                None => 0,
            };
        }
        m.finished = Some(now);
        for r in &m.recipients {
            let Some(contact) = r.contact else { continue };
            let outcome = match (r.state, r.bounce) {
                (RcptState::Failed, Some(b)) => format!("bounced_{}", b.as_str()),
                (s, _) => s.as_str().to_string(),
            };
            self.push_history(
                contact,
                &super::HistoryEvent {
                    at: r.updated.unwrap_or(now),
                    kind: "message".into(),
                    source: Some(m.source.clone()),
                    slot: m
                        .send
                        .filter(|s| matches!(s.kind, SendKind::Campaign | SendKind::Automation))
                        .map(|s| s.variant),
                    message: Some(m.id),
                    outcome: Some(outcome),
                    note: r.reply.clone(),
                    ..Default::default()
                },
            )?;
        }
        self.put_finished_message(&m)
    }

    /// Up to `limit` messages in the queue with ids above `after`, in id
    /// order (retry and purge of a whole domain walk the queue in chunks).
    pub fn queued_messages_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables.queue.read()?.range(after.saturating_add(1)..)? {
            let (_, v) = r?;
            out.push(from_json("queue", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

impl ReadView {
    /// A message in the queue, or else among the finished ones.
    pub fn message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        match self.queued_message(id)? {
            Some(m) => Ok(Some(m)),
            None => self.finished_message(id),
        }
    }

    /// Every message, queued or finished, to the address whose salted hash
    /// is `key`, in queue id order.
    pub fn messages_to(&self, key: &[u8]) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for id in self.message_ids_to(key)? {
            if let Some(m) = self.message(id)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// The stored bytes of a queued message.
    pub fn message_body(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tables
            .queue_bodies()?
            .get(id)?
            .map(|v| v.value().to_vec()))
    }

    /// Up to `limit` due-index entries due at or before `until`, after `after`.
    pub fn due_entries(
        &self,
        after: Option<DueEntry>,
        until: i64,
        limit: usize,
    ) -> Result<Vec<DueEntry>, StoreError> {
        let t = self.tables.queue_due()?;
        let mut out = Vec::new();
        let range = match after {
            Some((d, id)) => t.range((d, id)..=(until, u64::MAX))?,
            None => t.range((i64::MIN, 0)..=(until, u64::MAX))?,
        };
        for r in range {
            let (k, _) = r?;
            let k = k.value();
            if Some(k) == after {
                continue;
            }
            out.push(k);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The earliest entry of the due index.
    pub fn first_due(&self) -> Result<Option<DueEntry>, StoreError> {
        Ok(self.tables.queue_due()?.first()?.map(|(k, _)| k.value()))
    }

    /// Calls `f` for every message in the queue.
    pub fn for_each_queued(&self, mut f: impl FnMut(QueuedMessage)) -> Result<(), StoreError> {
        for r in self.tables.queue()?.iter()? {
            let (_, v) = r?;
            f(from_json("queue", v.value())?);
        }
        Ok(())
    }

    /// Up to `limit` messages in the queue with ids above `after`, in id
    /// order (the admin UI's page of a destination domain's messages).
    pub fn queued_after(&self, after: u64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables.queue()?.range(after.saturating_add(1)..)? {
            let (_, v) = r?;
            out.push(from_json("queue", v.value())?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Lifetime totals.
    pub fn queue_summary(&self) -> Result<QueueSummary, StoreError> {
        let meta = self.tables.meta()?;
        Ok(QueueSummary {
            delivered: meta_u64(meta, DELIVERED)?,
            failed: meta_u64(meta, FAILED)?,
            not_sent_erased: meta_u64(meta, NOT_SENT_ERASED)?,
            not_sent_no_consent: meta_u64(meta, NOT_SENT_NO_CONSENT)?,
            not_sent_suppressed: meta_u64(meta, NOT_SENT_SUPPRESSED)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose queue records predate `queue_by_address_v1` gets them
    /// indexed when it is opened (after the migration to schema 7), so
    /// erasure and the export find them.
    #[test]
    fn old_queue_records_are_indexed_at_open() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        super::super::Store::open(dir.path())?.close();
        let m = r#"{"id": 9, "sender": "s", "return_path": "r@x.example", "message_id": "m@x.example",
            "created": 0, "size": 1, "source": "api",
            "recipients": [{"address": "Ann@x.example", "domain": "x.example", "state": "delivered"}]}"#;
        {
            let db = redb::Database::create(dir.path().join("herald.redb"))?;
            let txn = db.begin_write()?;
            // A schema-6 store: its finished messages are JSON in the
            // table the migration to schema 7 re-encodes.
            txn.delete_table(QUEUE_DONE)?;
            txn.open_table(super::super::tables::legacy::QUEUE_DONE_V1)?
                .insert(9, m.as_bytes())?;
            {
                let mut meta = txn.open_table(META)?;
                meta.remove(ADDRESS_INDEX_BUILT)?;
                meta.insert("schema_version", 6u64.to_be_bytes().as_slice())?;
            }
            txn.commit()?;
        }
        let store = super::super::Store::open(dir.path())?;
        let found = store.read_blocking(|v| {
            let key = address_key(&v.salt()?, "ann@x.example");
            v.messages_to(&key)
        })?;
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), vec![9]);
        store.close();
        Ok(())
    }

    /// A message is found by its recipient before the address index holds
    /// it (by its record, above the mark) and after; indexing moves the
    /// mark a chunk at a time, and an erasure brings it up to date.
    #[test]
    fn messages_are_found_before_and_after_they_are_indexed()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::delivery::model::Recipient;
        let dir = tempfile::tempdir()?;
        let store = super::super::Store::open(dir.path())?;
        store.write_wait(|t| {
            let to: [&[&str]; 5] = [
                &["ann@x.example"],
                &["bob@x.example"],
                &["Ann@X.example"],
                &["ann@x.example", "bob@x.example"],
                &["cy@x.example"],
            ];
            for addresses in to {
                let id = t.next_id(super::super::Sequence::Message)?;
                let rcpts = addresses
                    .iter()
                    .map(|a| Recipient::queued(a.to_string(), None))
                    .collect();
                t.put_message(&mut QueuedMessage::sample(id, rcpts, None), Some(b"b"))?;
            }
            // One of them finished: found in the finished log.
            let m = t.queued_message(2)?.ok_or(StoreError::Closed)?;
            t.finish_message(m, 1)
        })?;
        let ids_to = |a: &'static str| {
            store.read_blocking(|v| v.message_ids_to(&address_key(&v.salt()?, a)))
        };
        let entries = || {
            use redb::ReadableTableMetadata as _;
            store.read_blocking(|v| Ok(v.tables().queue_by_address()?.len()?))
        };
        let expect = |cy: Vec<u64>| -> Result<(), Box<dyn std::error::Error>> {
            assert_eq!(ids_to("ann@x.example")?, vec![1, 3, 4]);
            assert_eq!(ids_to("BOB@x.example")?, vec![2, 4]);
            assert_eq!(ids_to("cy@x.example")?, cy);
            Ok(())
        };
        let mark = store.read_blocking(|v| v.address_index_mark())?;
        assert_eq!((mark.upto, mark.last, mark.backlog()), (0, 5, 5));
        assert_eq!(entries()?, 0, "nothing is indexed as it is queued");
        expect(vec![5])?;

        let mark = store.write_wait(|t| t.index_recent_addresses(3))?;
        assert_eq!((mark.upto, mark.backlog()), (3, 2));
        assert_eq!(entries()?, 3, "ann 1, bob 2, ann 3");
        expect(vec![5])?;

        // An erasure first brings the index up to date (so that erasures
        // in a row read the index alone), then drops the erased address.
        let unsent = store.write_wait(|t| {
            let key = address_key(&t.salt()?, "cy@x.example");
            crate::delivery::outcome::erase_recipient(t, &key, 10)
        })?;
        assert_eq!(unsent, 1);
        let mark = store.read_blocking(|v| v.address_index_mark())?;
        assert_eq!((mark.upto, mark.backlog()), (5, 0));
        assert_eq!(
            entries()?,
            5,
            "and ann 4, bob 4; cy's went with the erasure"
        );
        expect(vec![])?;
        let again = store.write_wait(|t| t.index_recent_addresses(100))?;
        assert_eq!(again, mark, "nothing left to index");
        store.close();
        Ok(())
    }

    /// A store written before the index had a mark indexed every message
    /// as it was queued: opened now, its mark is its last queue id, and its
    /// messages are found through the index alone.
    #[test]
    fn a_store_without_the_mark_counts_every_message_indexed()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::delivery::model::Recipient;
        let dir = tempfile::tempdir()?;
        let store = super::super::Store::open(dir.path())?;
        store.write_wait(|t| {
            let salt = t.salt()?;
            for _ in 0..3 {
                let id = t.next_id(super::super::Sequence::Message)?;
                let mut m = QueuedMessage::sample(
                    id,
                    vec![Recipient::queued("a@x.example".into(), None)],
                    None,
                );
                t.put_message(&mut m, Some(b"b"))?;
                // As the previous version did, at enqueue.
                t.tables
                    .queue_by_address
                    .open()?
                    .insert((address_key(&salt, "a@x.example").as_slice(), id), ())?;
            }
            t.tables.meta.open()?.remove(ADDRESS_INDEX_UPTO)?;
            Ok(())
        })?;
        store.close();
        let store = super::super::Store::open(dir.path())?;
        let mark = store.read_blocking(|v| v.address_index_mark())?;
        assert_eq!((mark.upto, mark.last), (3, 3));
        let found =
            store.read_blocking(|v| v.message_ids_to(&address_key(&v.salt()?, "a@x.example")))?;
        assert_eq!(found, vec![1, 2, 3]);
        store.close();
        Ok(())
    }
}
