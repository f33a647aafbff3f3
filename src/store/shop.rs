//! Shop data tables: event ids (idempotency), orders, per-contact aggregates,
//! carts, wait-lists, and the segments created through the API.

use std::sync::Arc;

use rayon::prelude::*;
use redb::ReadableTable;

/// Records decoded together when the segment index is built.
const CHUNK: usize = 8192;

use super::tables::*;
use serde::de::DeserializeOwned;

use super::shop_codec::{decode_stats, encode_order, encode_stats};
use super::{
    Change, ReadTables, ReadView, Sequence, StoreError, WriteTables, from_json, get_json, to_json,
};
use super::{dec, enc};
use crate::segment::StoredSegment;
use crate::shop::model::{Cart, Order, ShopStats, StatsDelta, WaitEntry};

pub(super) fn get_bin<'k, K: redb::Key + 'static, T: DeserializeOwned>(
    t: &impl ReadableTable<K, &'static [u8]>,
    name: &'static str,
    key: impl std::borrow::Borrow<K::SelfType<'k>>,
) -> Result<Option<T>, StoreError> {
    match t.get(key)? {
        Some(v) => Ok(Some(dec(name, v.value())?)),
        None => Ok(None),
    }
}

/// The key of an event in `shop_events_v2`: a byte for its type, then its
/// id (a type without a byte of its own: 0, the type, a 0 byte, the id).
/// Keys stay in the order of the shop's ids, so that a batch of events with
/// ids close together writes few pages (hashed keys, tried, scattered every
/// batch over the whole table: ingest halved at a million contacts). The
/// codes are part of the stored format: a new type may take the next one,
/// none may change.
pub(super) fn event_key(kind: &str, id: &str) -> Vec<u8> {
    let code: u8 = match kind {
        "customer" => 1,
        "order" => 2,
        "cart" => 3,
        "product" => 4,
        "waitlist" => 5,
        "login" => 6,
        "signup" => 7,
        _ => 0,
    };
    let mut k = Vec::with_capacity(id.len() + 2 + kind.len());
    k.push(code);
    if code == 0 {
        k.extend_from_slice(kind.as_bytes());
        k.push(0);
    }
    k.extend_from_slice(id.as_bytes());
    k
}

impl WriteTables<'_> {
    /// Writes the aggregates changed in this transaction, in contact id
    /// order (called by `flush`): a contact's several events in one batch
    /// write its record once, and records written in key order fill their
    /// pages (rewritten as they grow, one event at a time, they left the
    /// table's pages about half empty).
    pub(super) fn flush_stats(&mut self) -> Result<(), StoreError> {
        for (contact, bytes) in std::mem::take(&mut self.stats_written) {
            match bytes {
                Some(b) => self
                    .tables
                    .shop_stats
                    .open()?
                    .insert(contact, b.as_slice())?,
                None => self.tables.shop_stats.open()?.remove(contact)?,
            };
        }
        Ok(())
    }

    /// Stores an order. (A contact's orders are listed in its `ShopStats`,
    /// which the caller updates in the same transaction.) A new order id
    /// gets the store's next order number: `orders_v3` is keyed by it, so
    /// that orders are appended in the order they arrive (keyed by the
    /// shop's ids, which arrive in no order, the table's pages stayed
    /// about half empty). `before` is the stored version the caller read in
    /// this transaction ([`ReadTables::order`]), handed on to the observer
    /// rather than decoded again.
    pub fn put_order(&mut self, o: &Order, before: Option<&Order>) -> Result<(), StoreError> {
        let known = self
            .tables
            .order_numbers
            .open()?
            .get(o.order_id.as_str())?
            .map(|v| v.value());
        let number = match known {
            Some(n) => n,
            None => {
                let n = self.next_id(Sequence::Order)?;
                self.tables
                    .order_numbers
                    .open()?
                    .insert(o.order_id.as_str(), n)?;
                n
            }
        };
        let bytes = encode_order(o, &mut self.interner())?;
        self.tables
            .orders
            .open()?
            .insert(number, bytes.as_slice())?;
        self.note(|| Change::Order {
            before: before.map(|b| Arc::new(b.clone())),
            order: Arc::new(o.clone()),
        });
        Ok(())
    }

    /// Records an event's (type, id); false if it was recorded before (a
    /// duplicate). One B-tree operation.
    pub fn record_event(&mut self, kind: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .tables
            .shop_events
            .open()?
            .insert(event_key(kind, id).as_slice(), ())?
            .is_none())
    }

    /// Forgets an event recorded by [`WriteTables::record_event`] (it was
    /// rejected after all, and may be sent again fixed).
    pub fn forget_event(&mut self, kind: &str, id: &str) -> Result<(), StoreError> {
        self.tables
            .shop_events
            .open()?
            .remove(event_key(kind, id).as_slice())?;
        Ok(())
    }

    /// Stores a contact's aggregates; `delta` says what changed in the
    /// purchase and payment sets (for the segment index).
    pub fn put_stats(
        &mut self,
        contact: u64,
        s: &ShopStats,
        delta: StatsDelta,
    ) -> Result<(), StoreError> {
        let bytes = encode_stats(s, &mut self.interner())?;
        self.stats_written.insert(contact, Some(bytes));
        self.note(|| Change::Stats {
            contact,
            scalars: Box::new(ShopStats {
                categories: Default::default(),
                skus: Default::default(),
                payment_types: Default::default(),
                orders: Vec::new(),
                ..*s
            }),
            delta: Box::new(delta),
        });
        Ok(())
    }

    /// Stores a contact's cart. A cart without items is kept as the time
    /// the cart was emptied (so older events stay out); to segments it is
    /// no cart.
    pub fn put_cart(
        &mut self,
        contact: u64,
        cart: Cart,
        before: Option<Cart>,
    ) -> Result<(), StoreError> {
        self.tables
            .carts
            .open()?
            .insert(contact, enc(&cart).as_slice())?;
        self.note(|| Change::Cart {
            contact,
            before: before.filter(|b| !b.items.is_empty()).map(Arc::new),
            after: (!cart.items.is_empty()).then(|| Arc::new(cart)),
        });
        Ok(())
    }

    /// Adds or replaces a wait-list entry.
    pub fn put_wait(&mut self, sku: &str, contact: u64, e: &WaitEntry) -> Result<(), StoreError> {
        self.tables
            .waitlist
            .open()?
            .insert((sku, contact), to_json(e).as_slice())?;
        Ok(())
    }

    /// Removes a wait-list entry; false if there was none.
    pub fn delete_wait(&mut self, sku: &str, contact: u64) -> Result<bool, StoreError> {
        Ok(self
            .tables
            .waitlist
            .open()?
            .remove((sku, contact))?
            .is_some())
    }

    /// Removes every shop record of a contact (erasure).
    pub(super) fn delete_shop_data(&mut self, contact: u64) -> Result<(), StoreError> {
        if let Some(old) = self.stats(contact)? {
            for o in self.orders_of(contact, &old.orders)? {
                if let Some(n) = self
                    .tables
                    .order_numbers
                    .open()?
                    .remove(o.order_id.as_str())?
                {
                    self.tables.orders.open()?.remove(n.value())?;
                }
                self.tables
                    .order_attribution
                    .open()?
                    .remove(o.order_id.as_str())?;
            }
            self.stats_written.insert(contact, None);
            let empty = ShopStats::default();
            self.note(|| Change::Stats {
                contact,
                scalars: Box::new(ShopStats::default()),
                delta: Box::new(StatsDelta::between(&old, &empty)),
            });
        }
        if let Some(old) = self.cart(contact)? {
            self.tables.carts.open()?.remove(contact)?;
            self.note(|| Change::Cart {
                contact,
                before: (!old.items.is_empty()).then(|| Arc::new(old)),
                after: None,
            });
        }
        let mut waits = Vec::new();
        for r in self.tables.waitlist.open()?.iter()? {
            let (k, _) = r?;
            let (sku, c) = k.value();
            if c == contact {
                waits.push(sku.to_string());
            }
        }
        for sku in waits {
            self.tables
                .waitlist
                .open()?
                .remove((sku.as_str(), contact))?;
        }
        Ok(())
    }

    /// An API-created segment.
    pub fn segment(&self, name: &str) -> Result<Option<StoredSegment>, StoreError> {
        get_json(self.tables.segments.read()?, "segments", name)
    }

    /// Stores an API-created segment.
    pub fn put_segment(&mut self, s: &StoredSegment) -> Result<(), StoreError> {
        self.tables
            .segments
            .open()?
            .insert(s.name.as_str(), to_json(s).as_slice())?;
        Ok(())
    }

    /// Deletes an API-created segment; false if there was none.
    pub fn delete_segment(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self.tables.segments.open()?.remove(name)?.is_some())
    }
}

impl ReadView {
    /// The contacts waiting for a SKU, in contact id order.
    pub fn waiting_for(&self, sku: &str) -> Result<Vec<(u64, WaitEntry)>, StoreError> {
        let t = self.tables.waitlist()?;
        let mut out = Vec::new();
        for r in t.range((sku, 0)..=(sku, u64::MAX))? {
            let (k, v) = r?;
            out.push((k.value().1, from_json("waitlist", v.value())?));
        }
        Ok(out)
    }

    /// The SKUs a contact waits for (a scan of the wait-lists, which are
    /// keyed by SKU: for the GDPR export).
    pub fn waitlists_of(&self, contact: u64) -> Result<Vec<(String, WaitEntry)>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables.waitlist()?.iter()? {
            let (k, v) = r?;
            let (sku, c) = k.value();
            if c == contact {
                out.push((sku.to_string(), from_json("waitlist", v.value())?));
            }
        }
        Ok(out)
    }

    /// Every API-created segment, by name.
    pub fn segments(&self) -> Result<Vec<StoredSegment>, StoreError> {
        super::all_json(self.tables.segments()?, "segments")
    }

    /// Calls `f` with every contact's aggregates, in id order, a chunk at a
    /// time; each chunk is decoded on all cores (the index build).
    pub fn each_stats(
        &self,
        mut f: impl FnMut(Vec<(u64, ShopStats)>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let terms = super::terms::all(self.tables.terms()?)?;
        let name = |n| super::terms::in_list(&terms, n);
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
        let mut decode = |raw: &mut Vec<(u64, Vec<u8>)>| -> Result<(), StoreError> {
            let chunk = raw
                .par_iter()
                .map(|(id, b)| Ok((*id, decode_stats(b, &name)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            raw.clear();
            f(chunk)
        };
        for r in self.tables.shop_stats()?.iter()? {
            let (k, v) = r?;
            raw.push((k.value(), v.value().to_vec()));
            if raw.len() == CHUNK {
                decode(&mut raw)?;
            }
        }
        decode(&mut raw)
    }

    /// Calls `f` with every contact, in id order, a chunk at a time; each
    /// chunk is decoded on all cores (the index build).
    pub fn each_contact(
        &self,
        mut f: impl FnMut(Vec<crate::contacts::model::Contact>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut raw: Vec<(u64, Vec<u8>)> = Vec::with_capacity(CHUNK);
        let mut decode = |raw: &mut Vec<(u64, Vec<u8>)>| -> Result<(), StoreError> {
            let chunk = raw
                .par_iter()
                .map(|(id, b)| super::contacts::decode_contact(*id, b))
                .collect::<Result<Vec<_>, StoreError>>()?;
            raw.clear();
            f(chunk)
        };
        for r in self.tables.contacts()?.iter()? {
            let (k, v) = r?;
            raw.push((k.value(), v.value().to_vec()));
            if raw.len() == CHUNK {
                decode(&mut raw)?;
            }
        }
        decode(&mut raw)
    }

    /// Calls `f` for every cart, in contact id order (index build).
    pub fn each_cart(
        &self,
        mut f: impl FnMut(u64, Cart) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for r in self.tables.carts()?.iter()? {
            let (k, v) = r?;
            f(k.value(), dec("carts", v.value())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::event_key;

    #[test]
    fn event_keys_tell_type_and_id_apart() {
        assert_eq!(event_key("order", "o-1"), event_key("order", "o-1"));
        assert_ne!(event_key("order", "o-1"), event_key("order", "o-2"));
        assert_ne!(event_key("order", "o-1"), event_key("cart", "o-1"));
        // A type without a code of its own is spelled out.
        assert_ne!(event_key("ab", "c"), event_key("a", "bc"));
        assert_eq!(event_key("order", "7"), b"\x027");
        assert_eq!(event_key("refund", "7"), b"\x00refund\x007");
    }
}
