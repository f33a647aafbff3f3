//! Campaign tables: the campaign records (spec, status, durable progress),
//! audience snapshots, the ledger of messages sent, engagement flags and
//! counters.

use std::collections::BTreeMap;

use redb::{ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{ReadView, StoreError, WriteTables, from_json, get_json, to_json};
use crate::campaign::model::{Campaign, Counter};

/// Engagement flag: opened.
pub const OPENED: u8 = 1;
/// Engagement flag: clicked.
pub const CLICKED: u8 = 2;
/// Engagement flag: opened, seen only from a machine (privacy proxy).
pub const MACHINE_OPENED: u8 = 4;
/// Engagement flag: clicked, seen only from a machine (link scanner).
pub const MACHINE_CLICKED: u8 = 8;
/// Engagement flag: unsubscribed through this message.
pub const UNSUBSCRIBED: u8 = 16;
/// Engagement flag: complained about this message (spam report).
pub const COMPLAINED: u8 = 32;

/// Contact ids (ascending) as delta varints.
pub fn encode_ids(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 2);
    let mut prev = 0u64;
    for &id in ids {
        let mut d = id.wrapping_sub(prev);
        prev = id;
        loop {
            let b = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    out
}

/// The ids [`encode_ids`] wrote.
pub fn decode_ids(b: &[u8]) -> Result<Vec<u64>, StoreError> {
    let mut out = Vec::new();
    let mut prev = 0u64;
    let mut d = 0u64;
    let mut shift = 0;
    for &x in b {
        if shift > 63 {
            return Err(StoreError::Corrupt {
                table: "campaign_audience",
                message: "a varint is too long".into(),
            });
        }
        d |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            prev = prev.wrapping_add(d);
            out.push(prev);
            d = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    Ok(out)
}

impl WriteTables<'_> {
    /// A campaign.
    pub fn campaign(&self, id: u64) -> Result<Option<Campaign>, StoreError> {
        get_json(&self.campaigns, "campaigns", id)
    }

    /// Stores a campaign.
    pub fn put_campaign(&mut self, c: &Campaign) -> Result<(), StoreError> {
        self.campaigns.insert(c.id, to_json(c).as_slice())?;
        Ok(())
    }

    /// Deletes a campaign that never sent (a draft): its record only.
    pub fn delete_campaign(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.campaigns.remove(id)?.is_some())
    }

    /// Stores a part's recipients.
    pub fn put_audience(&mut self, id: u64, part: u32, ids: &[u64]) -> Result<(), StoreError> {
        self.campaign_audience
            .insert((id, part), encode_ids(ids).as_slice())?;
        Ok(())
    }

    /// The message of a campaign stage a contact was sent: (variant, queue id).
    pub fn campaign_sent(
        &self,
        id: u64,
        stage: u32,
        contact: u64,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        Ok(self
            .campaign_sends
            .get((id, stage, contact))?
            .map(|v| v.value()))
    }

    /// Records a campaign message as queued.
    pub fn put_campaign_sent(
        &mut self,
        id: u64,
        stage: u32,
        contact: u64,
        variant: u32,
        queue_id: u64,
    ) -> Result<(), StoreError> {
        self.campaign_sends
            .insert((id, stage, contact), (variant, queue_id))?;
        Ok(())
    }

    /// Counts a campaign message that was not sent: its contact was erased
    /// (`erased`), or no longer had consent.
    pub fn count_not_sent(&mut self, id: u64, slot: u32, erased: bool) -> Result<(), StoreError> {
        let counter = if erased {
            Counter::Erased
        } else {
            Counter::Unsent
        };
        self.bump_campaign(id, slot, counter, 1)
    }

    /// Adds `delta` to a campaign counter (never below zero; written when
    /// the transaction commits).
    pub fn bump_campaign(
        &mut self,
        id: u64,
        slot: u32,
        counter: Counter,
        delta: i64,
    ) -> Result<(), StoreError> {
        *self
            .count_deltas
            .entry((id, slot, counter as u8))
            .or_insert(0) += delta;
        Ok(())
    }

    /// A contact's engagement flags in a campaign stage, if any.
    pub fn engagement(&self, id: u64, stage: u32, contact: u64) -> Result<Option<u8>, StoreError> {
        Ok(self
            .campaign_engagement
            .get((id, stage, contact))?
            .map(|v| v.value().0))
    }

    /// Adds engagement `flags` ([`OPENED`], [`CLICKED`], the machine flags,
    /// [`UNSUBSCRIBED`]) of a contact in a stage at `at` (ms); returns the
    /// flags it had before. Opens and clicks by hand reach the segment index.
    pub fn engage(
        &mut self,
        id: u64,
        stage: u32,
        contact: u64,
        flags: u8,
        at: i64,
    ) -> Result<u8, StoreError> {
        let key = (id, stage, contact);
        let (old, mut open_at, mut click_at) = self
            .campaign_engagement
            .get(key)?
            .map(|v| v.value())
            .unwrap_or((0, 0, 0));
        if flags & OPENED != 0 {
            open_at = open_at.max(at);
        }
        if flags & CLICKED != 0 {
            click_at = click_at.max(at);
        }
        self.campaign_engagement
            .insert(key, (old | flags, open_at, click_at))?;
        if flags & (OPENED | CLICKED) != 0 {
            self.note(|| super::Change::Engaged {
                campaign: id,
                contact,
                click: flags & CLICKED != 0,
                at,
            });
        }
        Ok(old)
    }

    /// Tells the segment index that a batch of a campaign was queued.
    pub fn note_sent(&mut self, campaign: u64, contacts: Vec<u64>) {
        if !contacts.is_empty() {
            self.note(|| super::Change::Sent { campaign, contacts });
        }
    }
}

/// Counters of one campaign: (packed stage and variant, counter) → count.
pub type CampaignCounts = BTreeMap<(u32, u8), u64>;

impl ReadView {
    /// A campaign.
    pub fn campaign(&self, id: u64) -> Result<Option<Campaign>, StoreError> {
        get_json(&self.table(CAMPAIGNS)?, "campaigns", id)
    }

    /// Every campaign, by number.
    pub fn campaigns(&self) -> Result<Vec<Campaign>, StoreError> {
        let t = self.table(CAMPAIGNS)?;
        let mut out = Vec::with_capacity(t.len()? as usize);
        for r in t.iter()? {
            let (_, v) = r?;
            out.push(from_json("campaigns", v.value())?);
        }
        Ok(out)
    }

    /// A part's recipients.
    pub fn campaign_audience(&self, id: u64, part: u32) -> Result<Vec<u64>, StoreError> {
        match self.table(CAMPAIGN_AUDIENCE)?.get((id, part))? {
            Some(v) => decode_ids(v.value()),
            None => Ok(Vec::new()),
        }
    }

    /// Every counter of a campaign.
    pub fn campaign_counts(&self, id: u64) -> Result<CampaignCounts, StoreError> {
        let mut out = BTreeMap::new();
        for r in self
            .table(CAMPAIGN_COUNTS)?
            .range((id, 0u32, 0u8)..=(id, u32::MAX, u8::MAX))?
        {
            let (k, v) = r?;
            let (_, slot, c) = k.value();
            out.insert((slot, c), v.value());
        }
        Ok(out)
    }

    /// The recipients of a stage with their variant and engagement flags,
    /// in contact order.
    pub fn campaign_stage_recipients(
        &self,
        id: u64,
        stage: u32,
    ) -> Result<Vec<(u64, u32, u8)>, StoreError> {
        let sends = self.table(CAMPAIGN_SENDS)?;
        let eng = self.table(CAMPAIGN_ENGAGEMENT)?;
        let mut flags: BTreeMap<u64, u8> = BTreeMap::new();
        for r in eng.range((id, stage, 0u64)..=(id, stage, u64::MAX))? {
            let (k, v) = r?;
            flags.insert(k.value().2, v.value().0);
        }
        let mut out = Vec::new();
        for r in sends.range((id, stage, 0u64)..=(id, stage, u64::MAX))? {
            let (k, v) = r?;
            let contact = k.value().2;
            out.push((
                contact,
                v.value().0,
                flags.get(&contact).copied().unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// The message of a campaign stage a contact was sent: (variant, queue id).
    pub fn campaign_sent(
        &self,
        id: u64,
        stage: u32,
        contact: u64,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        Ok(self
            .table(CAMPAIGN_SENDS)?
            .get((id, stage, contact))?
            .map(|v| v.value()))
    }

    /// A contact's engagement in a campaign stage: (flags, last open ms,
    /// last click ms), if any.
    pub fn engagement(
        &self,
        id: u64,
        stage: u32,
        contact: u64,
    ) -> Result<Option<(u8, i64, i64)>, StoreError> {
        Ok(self
            .table(CAMPAIGN_ENGAGEMENT)?
            .get((id, stage, contact))?
            .map(|v| v.value()))
    }

    /// Every campaign message sent and every open and click, for the
    /// segment index: `sent(campaign, contact)` and `engaged(campaign,
    /// contact, flags, last open ms, last click ms)`.
    pub fn each_campaign_event(
        &self,
        mut sent: impl FnMut(u64, u64),
        mut engaged: impl FnMut(u64, u64, u8, i64, i64),
    ) -> Result<(), StoreError> {
        for r in self.table(CAMPAIGN_SENDS)?.iter()? {
            let (k, _) = r?;
            let (c, _, contact) = k.value();
            sent(c, contact);
        }
        for r in self.table(CAMPAIGN_ENGAGEMENT)?.iter()? {
            let (k, v) = r?;
            let (c, _, contact) = k.value();
            let (f, o, cl) = v.value();
            engaged(c, contact, f, o, cl);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let ids = vec![1, 2, 3, 130, 20_000, 1 << 40, u64::MAX];
        assert_eq!(decode_ids(&encode_ids(&ids)).ok(), Some(ids));
        assert_eq!(decode_ids(&encode_ids(&[])).ok(), Some(Vec::new()));
        // Dense ids take one byte each.
        assert_eq!(encode_ids(&(1..=1000).collect::<Vec<_>>()).len(), 1000);
    }
}
