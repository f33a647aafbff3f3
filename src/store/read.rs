//! Lookups both kinds of transaction make, written once.
//!
//! A write job often reads before it writes (the contact it updates, the
//! list a name stands for, whether a send already reached a contact), and
//! the API reads the same records from a snapshot. [`ReadTables`] holds
//! those lookups as default methods over [`TableSet`] (one method per
//! table, `tables.rs`), which the tables of a write transaction and of a
//! read transaction both implement; [`WriteTables`] and [`ReadView`]
//! implement `ReadTables` by handing out their tables. This is iroh-blobs'
//! `ReadableTables` pattern.
//!
//! What is here: a lookup both sides make. A read only writers need (for
//! instance `WriteTables::field_cached`, which caches per transaction)
//! stays on `WriteTables`; a listing or scan only readers make (the API's
//! pages, the segment index's build) stays on `ReadView`, in its domain's
//! file. Callers bring the trait into scope with
//! `use crate::store::ReadTables as _;`.

use redb::ReadableTable;
use serde::de::DeserializeOwned;

use super::automation::{Due, RunKey};
use super::shop::get_bin;
use super::tables::{Engagement, TableSet};
use super::track::{LastClick, attributed};
use super::{ReadView, StoreError, WriteTables, all_json, get_json, send::round_key};
use crate::contacts::model::{Contact, FieldDef, ImportRecord, List};
use crate::coupons::{CodeState, Given, PoolInfo, PoolStatus};
use crate::delivery::model::QueuedMessage;
use crate::send::model::SendRef;
use crate::shop::Product;
use crate::shop::model::{Cart, Order, ShopStats, WaitEntry};

/// Lookups shared by [`WriteTables`] (inside a write job, seeing the job's
/// own changes) and [`ReadView`] (a committed snapshot).
pub trait ReadTables {
    /// The tables the lookups read: those of the write transaction, or
    /// those of the read transaction.
    fn tables(&self) -> &impl TableSet;

    /// How much a list's member count will change when the transaction is
    /// flushed: the write side sums member changes in memory (`flush` writes
    /// them); a snapshot has none pending.
    fn pending_list_delta(&self, _list: u64) -> i64 {
        0
    }

    /// The text of a term of the dictionary (`store::terms`); the write
    /// side remembers the terms its transaction has read.
    fn term_name(&self, n: u32) -> Result<String, StoreError> {
        super::terms::name(self.tables().terms()?, n)
    }

    // Contacts and lists (written in `store/contacts.rs`).

    /// The installation's salt for suppression hashes.
    fn salt(&self) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .tables()
            .meta()?
            .get("salt")?
            .map(|v| v.value().to_vec())
            .unwrap_or_default())
    }

    /// Whether the suppression list has any entry at all.
    fn any_suppression(&self) -> Result<bool, StoreError> {
        Ok(self.tables().suppressions()?.first()?.is_some())
    }

    /// Whether the address (lower-cased here) is on the suppression list
    /// for a reason that stops mail to it (anything but an erasure, whose
    /// address no record keeps).
    fn address_suppressed(&self, salt: &[u8], address: &str) -> Result<bool, StoreError> {
        let key = crate::store::suppression_key(salt, &address.to_lowercase());
        let s: Option<crate::contacts::model::Suppression> = get_json(
            self.tables().suppressions()?,
            "suppressions",
            key.as_slice(),
        )?;
        Ok(s.is_some_and(|s| s.source != crate::contacts::model::SuppressionSource::Erasure))
    }

    /// A contact by id.
    fn contact(&self, id: u64) -> Result<Option<Contact>, StoreError> {
        match self.tables().contacts()?.get(id)? {
            Some(v) => Ok(Some(super::contacts::decode_contact(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The id of the contact with this normalised (lower-cased) address.
    fn contact_id_by_email(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tables()
            .contact_by_email()?
            .get(key)?
            .map(|v| v.value()))
    }

    /// The ids of the contacts with this E.164 phone number.
    fn contacts_by_phone(&self, phone: &str) -> Result<Vec<u64>, StoreError> {
        let mut ids = Vec::new();
        for r in self
            .tables()
            .contact_by_phone()?
            .range((phone, 0)..=(phone, u64::MAX))?
        {
            ids.push(r?.0.value().1);
        }
        Ok(ids)
    }

    /// A field definition.
    fn field(&self, name: &str) -> Result<Option<FieldDef>, StoreError> {
        get_json(self.tables().fields()?, "fields", name)
    }

    /// A list by id (on the write side with the member-count changes of
    /// the transaction applied).
    fn list(&self, id: u64) -> Result<Option<List>, StoreError> {
        let mut l: Option<List> = get_json(self.tables().lists()?, "lists", id)?;
        if let Some(l) = l.as_mut() {
            l.member_count = l
                .member_count
                .saturating_add_signed(self.pending_list_delta(id));
        }
        Ok(l)
    }

    /// A list id by name (case-insensitive).
    fn list_id_by_name(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tables()
            .list_by_name()?
            .get(name.to_lowercase().as_str())?
            .map(|v| v.value()))
    }

    /// An import record.
    fn import(&self, id: u64) -> Result<Option<ImportRecord>, StoreError> {
        get_json(self.tables().imports()?, "imports", id)
    }

    /// Every import record.
    fn imports(&self) -> Result<Vec<ImportRecord>, StoreError> {
        all_json(self.tables().imports()?, "imports")
    }

    // The queue (`store/queue.rs`).

    /// A message still in the queue.
    fn queued_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        get_json(self.tables().queue()?, "queue", id)
    }

    /// A message every recipient of which is done.
    fn finished_message(&self, id: u64) -> Result<Option<QueuedMessage>, StoreError> {
        self.tables()
            .queue_done()?
            .get(id)?
            .map(|v| super::queue_codec::decode_message(id, v.value(), &|t| self.term_name(t)))
            .transpose()
    }

    /// The ids of every message, queued or finished, to the address whose
    /// salted hash is `key` (see [`crate::store::suppression_key`]), in
    /// queue id order: those the address index holds, and those above its
    /// mark, found by their records (`store::queue`, `ADDRESS_INDEX_UPTO`).
    fn message_ids_to(&self, key: &[u8]) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables()
            .queue_by_address()?
            .range((key, 0u64)..=(key, u64::MAX))?
        {
            out.push(r?.0.value().1);
        }
        let above = self.address_index_mark()?.upto + 1;
        let salt = self.salt()?;
        self.for_each_message_in(above..=u64::MAX, |m| {
            if super::queue::is_to(&salt, m, key) {
                out.push(m.id);
            }
        })?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Calls `f` with every message, queued or finished, whose queue id is
    /// in `ids` (the queued ones first).
    fn for_each_message_in(
        &self,
        ids: std::ops::RangeInclusive<u64>,
        mut f: impl FnMut(&QueuedMessage),
    ) -> Result<(), StoreError> {
        for r in self.tables().queue()?.range(ids.clone())? {
            f(&super::from_json("queue", r?.1.value())?);
        }
        for r in self.tables().queue_done()?.range(ids)? {
            let (k, v) = r?;
            f(&super::queue_codec::decode_message(
                k.value(),
                v.value(),
                &|t| self.term_name(t),
            )?);
        }
        Ok(())
    }

    /// Where the recipient address index stands.
    fn address_index_mark(&self) -> Result<super::queue::AddressIndexMark, StoreError> {
        let meta = self.tables().meta()?;
        Ok(super::queue::AddressIndexMark {
            upto: super::queue::address_index_upto(meta)?,
            last: super::meta_u64(meta, super::Sequence::Message.key())?,
        })
    }

    // Shop data and the catalogue (`store/shop.rs`, `store/render.rs`).

    /// An order by the shop's id.
    fn order(&self, order_id: &str) -> Result<Option<Order>, StoreError> {
        let number = self
            .tables()
            .order_numbers()?
            .get(order_id)?
            .map(|v| v.value());
        match number {
            Some(n) => self
                .tables()
                .orders()?
                .get(n)?
                .map(|v| super::shop_codec::decode_order(v.value(), &|t| self.term_name(t)))
                .transpose(),
            None => Ok(None),
        }
    }

    /// The stored orders with these ids that belong to `contact` (an order
    /// moved to another contact is left out).
    fn orders_of<'a>(
        &self,
        contact: u64,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Result<Vec<Order>, StoreError> {
        let mut out = Vec::new();
        for id in ids {
            if let Some(o) = self.order(id)?
                && o.contact == contact
            {
                out.push(o);
            }
        }
        Ok(out)
    }

    /// A contact's aggregates.
    fn stats(&self, contact: u64) -> Result<Option<ShopStats>, StoreError> {
        self.tables()
            .shop_stats()?
            .get(contact)?
            .map(|v| super::shop_codec::decode_stats(v.value(), &|t| self.term_name(t)))
            .transpose()
    }

    /// A contact's cart.
    fn cart(&self, contact: u64) -> Result<Option<Cart>, StoreError> {
        get_bin(self.tables().carts()?, "carts", contact)
    }

    /// A product by SKU.
    fn product(&self, sku: &str) -> Result<Option<Product>, StoreError> {
        get_json(self.tables().products()?, "products", sku)
    }

    // Coupon pools (`store/coupons.rs`).

    /// A coupon pool's status, `None` for a pool never filled.
    fn coupon_pool(&self, pool: &str) -> Result<Option<PoolStatus>, StoreError> {
        let info: Option<PoolInfo> = get_json(self.tables().coupon_pools()?, "coupon_pools", pool)?;
        Ok(info.map(|i| i.status(pool)))
    }

    /// To whom and when a code of a pool was handed; `None` when it is free
    /// or not in the pool.
    fn coupon_owner(&self, pool: &str, code: &str) -> Result<Option<Given>, StoreError> {
        let state: Option<CodeState> =
            get_json(self.tables().coupon_codes()?, "coupon_codes", (pool, code))?;
        Ok(state.and_then(|s| s.given))
    }

    /// The contacts waiting for a SKU, in contact id order.
    fn waiters(&self, sku: &str) -> Result<Vec<(u64, WaitEntry)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables()
            .waitlist()?
            .range((sku, 0)..=(sku, u64::MAX))?
        {
            let (k, v) = r?;
            out.push((k.value().1, super::from_json("waitlist", v.value())?));
        }
        Ok(out)
    }

    /// What a send is called where its id is a hash (a transactional tag,
    /// an automation's name).
    fn send_name(
        &self,
        kind: crate::send::model::SendKind,
        id: u64,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables()
            .send_names()?
            .get((kind.code(), id))?
            .map(|v| v.value().to_string()))
    }

    // Automations (`store/automation.rs`).

    /// A run (the automation's type: the store does not know it).
    fn run<R: DeserializeOwned>(&self, key: RunKey) -> Result<Option<R>, StoreError> {
        match self.tables().auto_runs()?.get(key)? {
            Some(v) => Ok(Some(super::from_json("auto_runs", v.value())?)),
            None => Ok(None),
        }
    }

    /// A flow record (the automation's JSON: the store does not know it).
    fn flow_record<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        match self.tables().auto_flows()?.get(name)? {
            Some(v) => Ok(Some(super::from_json("auto_flows", v.value())?)),
            None => Ok(None),
        }
    }

    /// Where a run waits (its next step and due time), if it does.
    fn run_due(&self, key: RunKey) -> Result<Option<Due>, StoreError> {
        let (flow, contact, occ) = key;
        Ok(self
            .tables()
            .auto_by_contact()?
            .get((contact, flow, occ))?
            .map(|v| v.value())
            .filter(|(step, _)| *step != u32::MAX)
            .map(|(step, at)| Due { step, at }))
    }

    /// The keys of a contact's runs (every flow, ended ones too).
    fn runs_of(&self, contact: u64) -> Result<Vec<RunKey>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables()
            .auto_by_contact()?
            .range((contact, 0, 0)..=(contact, u64::MAX, u64::MAX))?
        {
            let (k, _) = r?;
            let (c, f, o) = k.value();
            out.push((f, c, o));
        }
        Ok(out)
    }

    // Campaigns and sends (`store/audience.rs`, `store/send.rs`).

    /// A campaign record (the campaign module's type: the store does not
    /// know it).
    fn campaign_record<T: DeserializeOwned>(&self, id: u64) -> Result<Option<T>, StoreError> {
        get_json(self.tables().campaigns()?, "campaigns", id)
    }

    /// The message of a send's round a contact was sent: (slot, queue id).
    fn sent(&self, s: SendRef, contact: u64) -> Result<Option<(u32, u64)>, StoreError> {
        Ok(self
            .tables()
            .send_ledger()?
            .get(round_key(s, contact))?
            .map(|v| v.value()))
    }

    /// A contact's engagement in a send's round: (flags, see `send::model`;
    /// last open ms; last click ms), if any.
    fn engagement(&self, s: SendRef, contact: u64) -> Result<Option<Engagement>, StoreError> {
        Ok(self
            .tables()
            .send_engagement()?
            .get(round_key(s, contact))?
            .map(|v| v.value()))
    }

    // Tracking (`store/track.rs`).

    /// A contact's last click by hand.
    /// Recipients a warming-up sender has sent in `scope` ("": all its
    /// mail; else a provider group) in warm-up period `period`.
    fn warmup_used(&self, sender: &str, scope: &str, period: u64) -> Result<u64, StoreError> {
        Ok(self
            .tables()
            .warmup()?
            .get((sender, scope, period))?
            .map_or(0, |v| v.value()))
    }

    fn last_click(&self, contact: u64) -> Result<Option<LastClick>, StoreError> {
        Ok(self.tables().last_click()?.get(contact)?.map(|v| v.value()))
    }

    /// The click an order was attributed to.
    fn order_attribution(
        &self,
        order: &str,
    ) -> Result<Option<crate::track::Attributed>, StoreError> {
        Ok(self
            .tables()
            .order_attribution()?
            .get(order)?
            .map(|v| attributed(v.value())))
    }
}

impl ReadTables for WriteTables<'_> {
    fn tables(&self) -> &impl TableSet {
        &self.tables
    }

    fn pending_list_delta(&self, list: u64) -> i64 {
        self.list_deltas.get(&list).copied().unwrap_or(0)
    }

    fn term_name(&self, n: u32) -> Result<String, StoreError> {
        self.terms.name(self.tables.terms.read()?, n)
    }

    /// A record a deferring job holds back first
    /// ([`WriteTables::deferring`]), then the table's.
    fn contact(&self, id: u64) -> Result<Option<Contact>, StoreError> {
        if let Some(c) = self.deferred_contact(id) {
            return Ok(Some(Contact::clone(c)));
        }
        match self.tables.contacts.read()?.get(id)? {
            Some(v) => Ok(Some(super::contacts::decode_contact(id, v.value())?)),
            None => Ok(None),
        }
    }

    /// The transaction's own version first (aggregates are written at
    /// `flush`), then the table's.
    fn stats(&self, contact: u64) -> Result<Option<ShopStats>, StoreError> {
        let stored;
        let bytes = match self.stats_written.get(&contact) {
            Some(pending) => pending.as_deref(),
            None => {
                stored = self.tables.shop_stats.read()?.get(contact)?;
                stored.as_ref().map(|v| v.value())
            }
        };
        bytes
            .map(|b| super::shop_codec::decode_stats(b, &|t| self.term_name(t)))
            .transpose()
    }
}

impl ReadTables for ReadView {
    fn tables(&self) -> &impl TableSet {
        &self.tables
    }
}
