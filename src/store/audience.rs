//! Audience snapshots (a part's contact ids, delta-varint) and the records
//! of the sends that own them, campaigns (spec, status, durable progress). The store keeps the records as JSON documents of
//! a type it does not know (the campaign module's `Campaign`, given by the
//! caller): data flows one way, and the store never names the layers above
//! it. A campaign's ledger, engagement and counters are its send's
//! (`store::send`).

use redb::{ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tables::*;
use super::{ReadView, StoreError, WriteTables, from_json, to_json};

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
    /// Stores a campaign record under `id`.
    pub fn put_campaign_record<T: Serialize>(&mut self, id: u64, c: &T) -> Result<(), StoreError> {
        self.tables
            .campaigns
            .open()?
            .insert(id, to_json(c).as_slice())?;
        Ok(())
    }

    /// Deletes a campaign that never sent (a draft): its record only.
    pub fn delete_campaign(&mut self, id: u64) -> Result<bool, StoreError> {
        Ok(self.tables.campaigns.open()?.remove(id)?.is_some())
    }

    /// Stores a part's recipients.
    pub fn put_audience(&mut self, id: u64, part: u32, ids: &[u64]) -> Result<(), StoreError> {
        self.tables
            .campaign_audience
            .open()?
            .insert((id, part), encode_ids(ids).as_slice())?;
        Ok(())
    }
}

impl ReadView {
    /// Every campaign record, by number.
    pub fn campaign_records<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let t = self.tables.campaigns()?;
        let mut out = Vec::with_capacity(t.len()? as usize);
        for r in t.iter()? {
            let (_, v) = r?;
            out.push(from_json("campaigns", v.value())?);
        }
        Ok(out)
    }

    /// A part's recipients.
    pub fn campaign_audience(&self, id: u64, part: u32) -> Result<Vec<u64>, StoreError> {
        match self.tables.campaign_audience()?.get((id, part))? {
            Some(v) => decode_ids(v.value()),
            None => Ok(Vec::new()),
        }
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
