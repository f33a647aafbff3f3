//! Tracking tables: each contact's history and last click, the hit
//! journal, order attributions. (A send's counters are in `store::send`.)

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::*;
use super::{ReadView, Sequence, StoreError, WriteTables};

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

/// A history entry as `contact_history_v2` keeps it: postcard, every
/// field present and in [`HistoryEvent`]'s order (schema 5;
/// `contact_history_v1` was JSON, twice the size). A new field is a new
/// table version.
#[derive(Serialize)]
struct StoredRef<'a> {
    at: i64,
    kind: &'a str,
    source: &'a Option<String>,
    slot: Option<u32>,
    message: Option<u64>,
    outcome: &'a Option<String>,
    link: Option<u32>,
    url: &'a Option<String>,
    machine: &'a Option<String>,
    order: &'a Option<String>,
    amount: Option<i64>,
    currency: &'a Option<String>,
    note: &'a Option<String>,
}

/// A history entry's `contact_history_v2` value.
pub(super) fn encode_history(e: &HistoryEvent) -> Vec<u8> {
    let stored = StoredRef {
        at: e.at,
        kind: &e.kind,
        source: &e.source,
        slot: e.slot,
        message: e.message,
        outcome: &e.outcome,
        link: e.link,
        url: &e.url,
        machine: &e.machine,
        order: &e.order,
        amount: e.amount,
        currency: &e.currency,
        note: &e.note,
    };
    // Strings and numbers: postcard always encodes them.
    postcard::to_allocvec(&stored).unwrap_or_default()
}

/// A history entry from its `contact_history_v2` value: [`HistoryEvent`]'s
/// own fields are [`StoredRef`]'s, in the same order (its
/// `skip_serializing_if` matters only to JSON).
pub(super) fn decode_history(b: &[u8]) -> Result<HistoryEvent, StoreError> {
    super::dec("contact_history", b)
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
            .open()?
            .insert((contact, seq), encode_history(e).as_slice())?;
        Ok(())
    }

    /// Remembers a contact's last click by hand.
    pub fn set_last_click(&mut self, contact: u64, c: LastClick) -> Result<(), StoreError> {
        self.tables.last_click.open()?.insert(contact, c)?;
        Ok(())
    }

    /// Appends a hit to the journal under `seq` (the journal's caller
    /// numbers hits in memory, so that appending touches no other table).
    pub fn push_hit(&mut self, seq: u64, hit: &[u8]) -> Result<(), StoreError> {
        self.tables.hits.open()?.insert(seq, hit)?;
        Ok(())
    }

    /// Takes up to `limit` hits off the front of the journal, in order.
    pub fn take_hits(&mut self, limit: usize) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        let mut last = None;
        for r in self.tables.hits.open()?.iter()?.take(limit) {
            let (k, v) = r?;
            last = Some(k.value());
            out.push(v.value().to_vec());
        }
        if let Some(last) = last {
            self.tables.hits.open()?.retain_in(..=last, |_, _| false)?;
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
            .open()?
            .insert(order, (a.kind, a.id, a.slot, a.link, by))?;
        Ok(())
    }

    /// Deletes a contact's history and last click (erasure).
    pub fn erase_history(&mut self, contact: u64) -> Result<(), StoreError> {
        let keys: Vec<(u64, u64)> = self
            .tables
            .history
            .open()?
            .range((contact, 0u64)..=(contact, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.tables.history.open()?.remove(k)?;
        }
        self.tables.last_click.open()?.remove(contact)?;
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
            out.push((k.value().1, decode_history(v.value())?));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field survives the stored form, at under half the JSON's size
    /// for an order.
    #[test]
    fn a_history_entry_round_trips_through_its_stored_form() {
        let order = HistoryEvent {
            at: 1_764_000_000_123,
            kind: "order".into(),
            order: Some("123456-2".into()),
            amount: Some(24_990),
            currency: Some("PLN".into()),
            ..Default::default()
        };
        let click = HistoryEvent {
            at: 1_764_000_000_456,
            kind: "click".into(),
            source: Some("campaign:3".into()),
            slot: Some(0x0001_0002),
            message: Some(77),
            outcome: Some("delivered".into()),
            link: Some(4),
            url: Some("https://shop.example/sale?a=b".into()),
            machine: Some("scanner".into()),
            order: None,
            amount: Some(-5),
            currency: None,
            note: Some("window".into()),
        };
        for e in [&order, &click, &HistoryEvent::default()] {
            let stored = encode_history(e);
            assert_eq!(decode_history(&stored).ok().as_ref(), Some(e));
        }
        let json = super::super::to_json(&order);
        assert!(encode_history(&order).len() * 2 < json.len());
        assert!(decode_history(&encode_history(&click)[..10]).is_err());
    }
}
