//! The delivery queue's tables: messages, bodies, the due index and the log of
//! finished messages. The delivery module decides what changes; these methods
//! keep the due index consistent with each message's recipients.

use redb::ReadableTable;

use super::tables::*;
use super::{ReadView, StoreError, WriteTables, from_json, get_json, meta_u64, to_json};
use crate::delivery::model::{QueuedMessage, RcptState};

/// A key of the due index: (due time in ms, queue id).
pub type DueEntry = (i64, u64);

/// Lifetime totals of finished recipients.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSummary {
    /// Recipients delivered.
    pub delivered: u64,
    /// Recipients failed.
    pub failed: u64,
}

const DELIVERED: &str = "count.rcpt.delivered";
const FAILED: &str = "count.rcpt.failed";

impl WriteTables<'_> {
    /// A message still in the queue.
    pub fn queued_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        get_json(&self.queue, "queue", id)
    }

    /// A message every recipient of which is done.
    pub fn finished_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        get_json(&self.queue_done, "queue_done", id)
    }

    /// Stores a queued message (and its body, when given), moving its entry in
    /// the due index to its earliest pending recipient.
    pub fn put_message(
        &mut self,
        m: &mut QueuedMessage,
        body: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let due = m.next_due();
        if m.due != due {
            if let Some(old) = m.due {
                self.queue_due.remove((old, m.id))?;
            }
            if let Some(new) = due {
                self.queue_due.insert((new, m.id), ())?;
            }
            m.due = due;
        }
        self.queue.insert(m.id, to_json(m).as_slice())?;
        if let Some(b) = body {
            self.queue_bodies.insert(m.id, b)?;
        }
        Ok(())
    }

    /// Moves a message whose recipients are all done to the finished log and
    /// drops its body.
    pub fn finish_message(&mut self, mut m: QueuedMessage, now: i64) -> Result<(), StoreError> {
        if let Some(old) = m.due.take() {
            self.queue_due.remove((old, m.id))?;
        }
        self.queue.remove(m.id)?;
        self.queue_bodies.remove(m.id)?;
        let delivered = m
            .recipients
            .iter()
            .filter(|r| r.state == RcptState::Delivered)
            .count() as i64;
        let failed = m.recipients.len() as i64 - delivered;
        self.bump(DELIVERED, delivered)?;
        self.bump(FAILED, failed)?;
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
                    slot: m.campaign.map(|c| c.slot),
                    message: Some(m.id),
                    outcome: Some(outcome),
                    note: r.reply.clone(),
                    ..Default::default()
                },
            )?;
        }
        self.queue_done.insert(m.id, to_json(&m).as_slice())?;
        Ok(())
    }

    /// Up to `limit` messages in the queue with ids above `after`, in id
    /// order (retry and purge of a whole domain walk the queue in chunks).
    pub fn queued_messages_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<QueuedMessage>, StoreError> {
        let mut out = Vec::new();
        for r in self.queue.range(after.saturating_add(1)..)? {
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
        match get_json(&self.table(QUEUE)?, "queue", id)? {
            Some(m) => Ok(Some(m)),
            None => get_json(&self.table(QUEUE_DONE)?, "queue_done", id),
        }
    }

    /// A message still in the queue.
    pub fn queued_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        get_json(&self.table(QUEUE)?, "queue", id)
    }

    /// The stored bytes of a queued message.
    pub fn message_body(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .table(QUEUE_BODIES)?
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
        let t = self.table(QUEUE_DUE)?;
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
        Ok(self.table(QUEUE_DUE)?.first()?.map(|(k, _)| k.value()))
    }

    /// Calls `f` for every message in the queue.
    pub fn for_each_queued(&self, mut f: impl FnMut(QueuedMessage)) -> Result<(), StoreError> {
        for r in self.table(QUEUE)?.iter()? {
            let (_, v) = r?;
            f(from_json("queue", v.value())?);
        }
        Ok(())
    }

    /// Lifetime totals.
    pub fn queue_summary(&self) -> Result<QueueSummary, StoreError> {
        let meta = self.table(META)?;
        Ok(QueueSummary {
            delivered: meta_u64(&meta, DELIVERED)?,
            failed: meta_u64(&meta, FAILED)?,
        })
    }
}
