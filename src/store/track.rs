//! Tracking tables: each contact's history and last click, the hit
//! journal, order attributions. (A send's counters are in `store::send`.)

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{ReadView, Sequence, StoreError, WriteTables, from_json, to_json};

/// One entry of a contact's history: a message that reached its end
/// (delivered or failed) or something the contact did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// When (ms).
    pub at: i64,
    /// `message`, `open`, `click`, `unsubscribe`, `preferences`,
    /// `subscribe`, `confirm`, `order`, `complaint`.
    pub kind: String,
    /// Which send: `campaign:ID`, `campaign-test:ID`, `template:NAME`,
    /// `automation:NAME`, `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Packed stage and variant of a campaign message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Queue id of a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    /// A message's outcome (`delivered`, `failed`, `bounced_hard`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Link number of a click.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u32>,
    /// Where a click led.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Why a hit counts as a machine's (privacy proxy, link scanner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Order id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
    /// Order total in hundredths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Currency of the amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// How an order was attributed (`parameter`, `window`), or other detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A contact's last click by hand: (send kind code, send id, packed
/// variant, link number, ms).
pub type LastClick = (u8, u64, u32, u32, i64);

impl WriteTables<'_> {
    /// Appends an entry to a contact's history.
    pub fn push_history(&mut self, contact: u64, e: &HistoryEvent) -> Result<(), StoreError> {
        let seq = self.next_id(Sequence::History)?;
        self.tables
            .history
            .insert((contact, seq), to_json(e).as_slice())?;
        Ok(())
    }

    /// Remembers a contact's last click by hand.
    pub fn set_last_click(&mut self, contact: u64, c: LastClick) -> Result<(), StoreError> {
        self.tables.last_click.insert(contact, c)?;
        Ok(())
    }

    /// Appends a hit to the journal under `seq` (the journal's caller
    /// numbers hits in memory, so that appending touches no other table).
    pub fn push_hit(&mut self, seq: u64, hit: &[u8]) -> Result<(), StoreError> {
        self.tables.hits.insert(seq, hit)?;
        Ok(())
    }

    /// Takes up to `limit` hits off the front of the journal, in order.
    pub fn take_hits(&mut self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut last = None;
        for r in self.tables.hits.iter()?.take(limit) {
            let (k, v) = r?;
            last = Some(k.value());
            out.push(v.value().to_vec());
        }
        if let Some(last) = last {
            self.tables.hits.retain_in(..=last, |_, _| false)?;
        }
        Ok(out)
    }

    /// Records the click an order was attributed to.
    pub fn put_order_attribution(
        &mut self,
        order: &str,
        a: &crate::track::Attributed,
    ) -> Result<(), StoreError> {
        let by = if a.by == "parameter" { 1 } else { 2 };
        self.tables
            .order_attribution
            .insert(order, (a.kind, a.id, a.slot, a.link, by))?;
        Ok(())
    }

    /// Deletes a contact's history and last click (erasure).
    pub fn erase_history(&mut self, contact: u64) -> Result<(), StoreError> {
        let keys: Vec<(u64, u64)> = self
            .tables
            .history
            .range((contact, 0u64)..=(contact, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.tables.history.remove(k)?;
        }
        self.tables.last_click.remove(contact)?;
        Ok(())
    }
}

impl ReadView {
    /// The last sequence number in the hit journal (0 when empty).
    pub fn last_hit(&self) -> Result<u64, StoreError> {
        Ok(self
            .tables
            .hits()?
            .last()?
            .map(|(k, _)| k.value())
            .unwrap_or(0))
    }

    /// Up to `limit` entries of a contact's history, newest first, older
    /// than sequence `before`.
    pub fn history(
        &self,
        contact: u64,
        before: u64,
        limit: usize,
    ) -> Result<Vec<(u64, HistoryEvent)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .history()?
            .range((contact, 0u64)..(contact, before))?
            .rev()
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = r?;
            out.push((k.value().1, from_json("contact_history", v.value())?));
        }
        Ok(out)
    }
}

pub(super) fn attributed(
    (kind, id, slot, link, by): (u8, u64, u32, u32, u8),
) -> crate::track::Attributed {
    crate::track::Attributed {
        kind,
        id,
        slot,
        link,
        by: if by == 1 { "parameter" } else { "window" },
    }
}
