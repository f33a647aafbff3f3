//! Schema migrations, one step per schema version, each run inside the
//! write transaction that opens the store: a migration is all or nothing.
//! A crash (or `kill -9`) in the middle leaves the file as it was, with its
//! old schema version, and the next start migrates again.
//!
//! - v1 → v2: the campaign-keyed counter, engagement, link and ledger
//!   tables (`campaign_*_v1`, `link_clickers_v1`) become the send-keyed
//!   tables of the send layer (`send_*_v1`, keys prefixed with the send
//!   kind), and queue records name their send (`"send": {"kind":
//!   "campaign", "id", "slot"}`) instead of a campaign (`"campaign": {"id",
//!   "slot"}`).
//! - v2 → v3: `send_money_v1`, attributed orders by currency, is filled from
//!   the attributed orders still stored (`order_attribution_v1` ⋈
//!   `orders_v1`); what the counters hold beyond them (orders of contacts
//!   erased before the upgrade, whose records are gone) goes to the slot's
//!   one currency, or under `XXX` (ISO 4217's "no currency") when the slot
//!   has none or several, so the lines add up to the totals. The hourly
//!   series of old orders stays as the old code wrote it (changes at the
//!   hour of the change): a refund of an order counted before the upgrade
//!   can leave its hour short (saturating at 0).
//! - v3 → v4: the SMS channel. Its tables (`sms_v1`, `sms_due_v1`,
//!   `sms_by_gateway_id_v1`, `contact_by_phone_v1`) are created empty. A
//!   phone that customer events kept in the custom text field `phone`
//!   becomes the contact's built-in `phone` when it is written with its
//!   country code (`+48…`, `0048…`), and leaves the field; a national
//!   number (no country code: the store does not know which country) stays
//!   in the field, untouched, until an event or import sets the phone.
//! - v4 → v5: contacts are kept in postcard (`contacts_v2`, the id in the
//!   key only) instead of JSON (`contacts_v1`, dropped), and so are history
//!   entries (`contact_history_v2`): half the bytes, and
//!   several times faster to read when the segment index is built. Orders
//!   move from `orders_v1` (keyed by the shop's order id) to `orders_v2`
//!   (keyed by the store's order number, appended as orders arrive) with
//!   `order_numbers_v1` (shop id → number).
//! - v5 → v6: the term dictionary (`terms_v1`, `term_ids_v1`). Orders
//!   (`orders_v2` → `orders_v3`) and aggregates (`shop_stats_v1` →
//!   `shop_stats_v2`) hold term numbers for their SKUs, categories, item
//!   names, currencies, statuses and payment types (`store::shop_codec`),
//!   about half the bytes at a million contacts. Accepted events
//!   (`shop_events_v1`, (type, id) → time) are kept as a type byte and the
//!   id (`shop_events_v2`, no value): duplicates are still recognised.

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::StoreError;
use super::tables::{legacy, *};
use crate::send::model::{SendKind, slot};

/// Rows copied between two progress lines in the log.
const PROGRESS_EVERY: u64 = 100_000;

/// Fault injection for the crash test: the process aborts (as under
/// `kill -9`) after this many rows of a migration, before its commit.
const ABORT_AFTER_ENV: &str = "HERALD_FAULT_MIGRATION_ABORT_AFTER";

/// Counts migrated rows, logs progress and injects the test's crash.
struct Progress {
    step: &'static str,
    total: u64,
    done: u64,
    abort_after: Option<u64>,
}

impl Progress {
    fn new(step: &'static str, total: u64) -> Progress {
        tracing::info!(step, rows = total, "migrating the store");
        Progress {
            step,
            total,
            done: 0,
            abort_after: std::env::var(ABORT_AFTER_ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    fn row(&mut self) {
        self.done += 1;
        if self.done.is_multiple_of(PROGRESS_EVERY) {
            tracing::info!(
                step = self.step,
                done = self.done,
                total = self.total,
                "migration progress"
            );
        }
        if self.abort_after == Some(self.done) {
            tracing::warn!(
                step = self.step,
                done = self.done,
                "fault injection: aborting the migration"
            );
            std::process::abort();
        }
    }
}

/// Migrates the store in `txn` from schema `from` to the current one.
pub fn run(txn: &WriteTransaction, from: u64) -> Result<(), StoreError> {
    if from < 2 {
        v1_to_v2(txn)?;
    }
    if from < 3 {
        v2_to_v3(txn)?;
    }
    if from < 4 {
        v3_to_v4(txn)?;
    }
    if from < 5 {
        v4_to_v5(txn)?;
    }
    if from < 6 {
        v5_to_v6(txn)?;
    }
    if from < 7 {
        v6_to_v7(txn)?;
    }
    Ok(())
}

/// Moves the orders from `orders_v1` (keyed by the shop's id) to
/// `orders_v2` (keyed by the store's order number, given here in id order)
/// and `order_numbers_v1`, and drops the old table.
fn renumber_orders(txn: &WriteTransaction, p: &mut Progress) -> Result<(), StoreError> {
    let mut next = 0u64;
    {
        let old = txn.open_table(legacy::ORDERS_V1)?;
        let mut orders = txn.open_table(legacy::ORDERS_V2)?;
        let mut numbers = txn.open_table(ORDER_NUMBERS)?;
        for r in old.iter()? {
            let (k, v) = r?;
            next += 1;
            numbers.insert(k.value(), next)?;
            orders.insert(next, v.value())?;
            p.row();
        }
    }
    txn.open_table(META)?
        .insert(super::ORDER_SEQ_KEY, next.to_be_bytes().as_slice())?;
    txn.delete_table(legacy::ORDERS_V1)?;
    Ok(())
}

/// Re-encodes every contact from JSON (`contacts_v1`) to postcard
/// (`contacts_v2`) and drops the old table.
fn v4_to_v5(txn: &WriteTransaction) -> Result<(), StoreError> {
    use crate::contacts::model::Contact;
    let mut p = Progress::new(
        "v4 to v5: compact contacts and history, orders by number",
        rows(txn, legacy::CONTACTS_V1)?
            + rows(txn, legacy::HISTORY_V1)?
            + rows(txn, legacy::ORDERS_V1)?,
    );
    reencode(txn, legacy::CONTACTS_V1, CONTACTS, &mut p, |b| {
        let c: Contact = super::from_json("contacts", b)?;
        Ok(super::contacts::encode_contact(&c))
    })?;
    reencode(txn, legacy::HISTORY_V1, HISTORY, &mut p, |b| {
        let e: super::HistoryEvent = super::from_json("contact_history", b)?;
        Ok(super::track::encode_history(&e))
    })?;
    renumber_orders(txn, &mut p)?;
    tracing::info!(rows = p.done, "migrated the store to schema 5");
    Ok(())
}

/// Re-encodes orders and aggregates with the term dictionary
/// (`shop_codec`) and drops the schema-5 tables.
fn v5_to_v6(txn: &WriteTransaction) -> Result<(), StoreError> {
    use super::dec;
    use super::shop_codec::{encode_order, encode_stats};
    use crate::shop::model::{Order, ShopStats};
    let mut p = Progress::new(
        "v5 to v6: orders and aggregates with the term dictionary",
        rows(txn, legacy::ORDERS_V2)?
            + rows(txn, legacy::SHOP_STATS_V1)?
            + rows(txn, legacy::SHOP_EVENTS_V1)?,
    );
    {
        let mut ids = txn.open_table(TERM_IDS)?;
        let mut names = txn.open_table(TERMS)?;
        let mut interner = super::terms::Interner::default();
        let mut intern = |s: &str| interner.intern(&mut ids, &mut names, s);
        reencode(txn, legacy::ORDERS_V2, ORDERS, &mut p, |b| {
            encode_order(&dec::<Order>("orders", b)?, &mut intern)
        })?;
        reencode(txn, legacy::SHOP_STATS_V1, SHOP_STATS, &mut p, |b| {
            encode_stats(&dec::<ShopStats>("shop_stats", b)?, &mut intern)
        })?;
    }
    {
        let old = txn.open_table(legacy::SHOP_EVENTS_V1)?;
        let mut new = txn.open_table(SHOP_EVENTS)?;
        for r in old.iter()? {
            let (k, _) = r?;
            let (kind, id) = k.value();
            new.insert(super::shop::event_key(kind, id).as_slice(), ())?;
            p.row();
        }
    }
    txn.delete_table(legacy::SHOP_EVENTS_V1)?;
    tracing::info!(rows = p.done, "migrated the store to schema 6");
    Ok(())
}

/// Re-encodes the finished messages from JSON (`queue_done_v1`) to
/// postcard with the term dictionary (`queue_codec`), and the consent log
/// from JSON to postcard, and drops the old tables.
fn v6_to_v7(txn: &WriteTransaction) -> Result<(), StoreError> {
    use crate::contacts::model::ConsentEvent;
    use crate::delivery::model::QueuedMessage;
    let mut p = Progress::new(
        "v6 to v7: compact finished messages and consent log",
        rows(txn, legacy::QUEUE_DONE_V1)? + rows(txn, legacy::CONSENT_LOG_V1)?,
    );
    reencode(txn, legacy::CONSENT_LOG_V1, CONSENT_LOG, &mut p, |b| {
        let e: ConsentEvent = super::from_json("consent_log", b)?;
        Ok(super::contacts::encode_consent(&e))
    })?;
    let mut ids = txn.open_table(TERM_IDS)?;
    let mut names = txn.open_table(TERMS)?;
    let mut interner = super::terms::Interner::default();
    let mut intern = |s: &str| interner.intern(&mut ids, &mut names, s);
    reencode(txn, legacy::QUEUE_DONE_V1, QUEUE_DONE, &mut p, |b| {
        let m: QueuedMessage = super::from_json("queue_done", b)?;
        super::queue_codec::encode_message(&m, &mut intern)
    })?;
    tracing::info!(rows = p.done, "migrated the store to schema 7");
    Ok(())
}

/// Copies every row of `old` to `new` under the same key, the value
/// re-encoded by `f`, and drops `old`.
fn reencode<K: redb::Key + 'static>(
    txn: &WriteTransaction,
    old: TableDefinition<K, &[u8]>,
    new: TableDefinition<K, &[u8]>,
    p: &mut Progress,
    mut f: impl FnMut(&[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<(), StoreError> {
    {
        let from = txn.open_table(old)?;
        let mut to = txn.open_table(new)?;
        for r in from.iter()? {
            let (k, v) = r?;
            to.insert(k.value(), f(v.value())?.as_slice())?;
            p.row();
        }
    }
    txn.delete_table(old)?;
    Ok(())
}

/// Moves international numbers from the custom field `phone` to the
/// built-in phone, with its index entry.
fn v3_to_v4(txn: &WriteTransaction) -> Result<(), StoreError> {
    use crate::contacts::model::{Contact, FieldValue};
    let mut p = Progress::new("v3 to v4: phone numbers", rows(txn, legacy::CONTACTS_V1)?);
    let mut moved = Vec::new();
    {
        let contacts = txn.open_table(legacy::CONTACTS_V1)?;
        for r in contacts.iter()? {
            let (_, v) = r?;
            p.row();
            let mut c: Contact = super::from_json("contacts", v.value())?;
            let Some(FieldValue::Text(raw)) = c.fields.get("phone") else {
                continue;
            };
            if c.phone.is_some() {
                continue;
            }
            if let Ok(e164) = crate::sms::phone::normalize(raw, None) {
                c.fields.remove("phone");
                c.phone = Some(e164);
                moved.push(c);
            }
        }
    }
    let mut contacts = txn.open_table(legacy::CONTACTS_V1)?;
    let mut by_phone = txn.open_table(CONTACT_BY_PHONE)?;
    for c in &moved {
        contacts.insert(c.id, super::to_json(c).as_slice())?;
        if let Some(ph) = &c.phone {
            by_phone.insert((ph.as_str(), c.id), ())?;
        }
    }
    tracing::info!(
        moved = moved.len(),
        "phone numbers with a country code are now contacts' phones"
    );
    Ok(())
}

/// (send kind, send id, slot, currency) → (orders, hundredths).
type Money = std::collections::BTreeMap<(u8, u64, u32, String), (u64, u64)>;

fn v2_to_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    use crate::send::model::Counter;
    let mut p = Progress::new(
        "v2 to v3: attributed orders by currency",
        rows(txn, ORDER_ATTRIBUTION)?,
    );
    let mut sums = Money::new();
    {
        let attributed = txn.open_table(ORDER_ATTRIBUTION)?;
        let orders = txn.open_table(legacy::ORDERS_V1)?;
        for r in attributed.iter()? {
            let (k, v) = r?;
            let (kind, id, slot, _, _) = v.value();
            // Only sends that count (the live code counts no test or preview).
            let counted = SendKind::from_code(kind).is_some_and(|k| {
                crate::send::model::SendRef {
                    kind: k,
                    id,
                    variant: slot,
                }
                .counted()
            });
            if !counted {
                p.row();
                continue;
            }
            if let Some(b) = orders.get(k.value())? {
                let o: crate::shop::model::Order =
                    postcard::from_bytes(b.value()).map_err(|e| StoreError::Corrupt {
                        table: "orders",
                        message: e.to_string(),
                    })?;
                if o.counted() {
                    let e = sums
                        .entry((kind, id, slot, o.currency.clone()))
                        .or_default();
                    e.0 += 1;
                    e.1 += o.total.max(0) as u64;
                }
            }
            p.row();
        }
    }
    // The counters' orders and revenue per slot beyond the stored orders.
    let mut counted: std::collections::BTreeMap<(u8, u64, u32), (u64, u64)> = Default::default();
    for r in txn.open_table(SEND_COUNTS)?.iter()? {
        let (k, v) = r?;
        let (kind, id, slot, c) = k.value();
        let e = counted.entry((kind, id, slot)).or_default();
        if c == Counter::Orders as u8 {
            e.0 = v.value();
        } else if c == Counter::Revenue as u8 {
            e.1 = v.value();
        }
    }
    for ((kind, id, slot), (orders, cents)) in counted {
        let known: Vec<(String, (u64, u64))> = sums
            .range((kind, id, slot, String::new())..=(kind, id, slot, "\u{7f}".to_string()))
            .map(|((_, _, _, cur), v)| (cur.clone(), *v))
            .collect();
        let (known_o, known_c) = known
            .iter()
            .fold((0, 0), |(o, c), (_, v)| (o + v.0, c + v.1));
        if orders > known_o || cents > known_c {
            // The slot's one currency when it has one (its other orders'),
            // else ISO 4217's "no currency".
            let cur = match known.as_slice() {
                [(cur, _)] => cur.clone(),
                _ => "XXX".to_string(),
            };
            let e = sums.entry((kind, id, slot, cur)).or_default();
            e.0 += orders.saturating_sub(known_o);
            e.1 += cents.saturating_sub(known_c);
        }
    }
    let mut money = txn.open_table(SEND_MONEY)?;
    for ((kind, id, slot, cur), v) in sums {
        money.insert((kind, id, slot, cur.as_str()), v)?;
    }
    tracing::info!(rows = p.done, "migrated the store to schema 3");
    Ok(())
}

fn rows<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    Ok(txn.open_table(def)?.len()?)
}

fn v1_to_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let campaign = SendKind::Campaign.code();
    let total = rows(txn, legacy::CAMPAIGN_SENDS)?
        + rows(txn, legacy::CAMPAIGN_ENGAGEMENT)?
        + rows(txn, legacy::CAMPAIGN_COUNTS)?
        + rows(txn, legacy::CAMPAIGN_HOURLY)?
        + rows(txn, legacy::CAMPAIGN_LINKS)?
        + rows(txn, legacy::LINK_CLICKERS)?
        + rows(txn, QUEUE)?
        + rows(txn, legacy::QUEUE_DONE_V1)?;
    let mut p = Progress::new("v1 to v2: send-keyed tables", total);
    {
        let old = txn.open_table(legacy::CAMPAIGN_SENDS)?;
        let mut new = txn.open_table(SEND_LEDGER)?;
        for r in old.iter()? {
            let (k, v) = r?;
            let (id, stage, contact) = k.value();
            // v1 kept the variant; v2 keeps the slot (stage and variant).
            let (variant, queue_id) = v.value();
            new.insert(
                (campaign, id, stage, contact),
                (slot(stage, variant), queue_id),
            )?;
            p.row();
        }
    }
    {
        let old = txn.open_table(legacy::CAMPAIGN_ENGAGEMENT)?;
        let mut new = txn.open_table(SEND_ENGAGEMENT)?;
        for r in old.iter()? {
            let (k, v) = r?;
            let (id, stage, contact) = k.value();
            new.insert((campaign, id, stage, contact), v.value())?;
            p.row();
        }
    }
    {
        let old = txn.open_table(legacy::CAMPAIGN_COUNTS)?;
        let mut new = txn.open_table(SEND_COUNTS)?;
        for r in old.iter()? {
            let (k, v) = r?;
            let (id, slot, c) = k.value();
            new.insert((campaign, id, slot, c), v.value())?;
            p.row();
        }
    }
    {
        let old = txn.open_table(legacy::CAMPAIGN_HOURLY)?;
        let mut new = txn.open_table(SEND_HOURLY)?;
        for r in old.iter()? {
            let (k, v) = r?;
            let (id, hour, c) = k.value();
            new.insert((campaign, id, hour, c), v.value())?;
            p.row();
        }
    }
    {
        let old = txn.open_table(legacy::CAMPAIGN_LINKS)?;
        let mut new = txn.open_table(SEND_LINKS)?;
        for r in old.iter()? {
            let (k, v) = r?;
            let (id, slot, link, c) = k.value();
            new.insert((campaign, id, slot, link, c), v.value())?;
            p.row();
        }
    }
    {
        let old = txn.open_table(legacy::LINK_CLICKERS)?;
        let mut new = txn.open_table(SEND_CLICKERS)?;
        for r in old.iter()? {
            let (k, _) = r?;
            let (id, slot, link, contact) = k.value();
            new.insert((campaign, id, slot, link, contact), ())?;
            p.row();
        }
    }
    rewrite_queue_records(txn, QUEUE, &mut p)?;
    rewrite_queue_records(txn, legacy::QUEUE_DONE_V1, &mut p)?;
    txn.delete_table(legacy::CAMPAIGN_SENDS)?;
    txn.delete_table(legacy::CAMPAIGN_ENGAGEMENT)?;
    txn.delete_table(legacy::CAMPAIGN_COUNTS)?;
    txn.delete_table(legacy::CAMPAIGN_HOURLY)?;
    txn.delete_table(legacy::CAMPAIGN_LINKS)?;
    txn.delete_table(legacy::LINK_CLICKERS)?;
    tracing::info!(rows = p.done, "migrated the store to schema 2");
    Ok(())
}

/// Queue records of a v1 store name a campaign message's campaign and slot
/// (`"campaign": {"id": 3, "slot": 0}`); v2 records name its send.
fn rewrite_queue_records(
    txn: &WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    p: &mut Progress,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(def)?;
    let mut changed = Vec::new();
    for r in table.iter()? {
        let (k, v) = r?;
        p.row();
        if let Some(b) = v1_queue_record(v.value())? {
            changed.push((k.value(), b));
        }
    }
    for (k, b) in changed {
        table.insert(k, b.as_slice())?;
    }
    Ok(())
}

/// The v2 form of a v1 queue record, if it names a campaign.
fn v1_queue_record(b: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt {
        table: "queue",
        message: e.to_string(),
    };
    // Cheap test first: most records (transactional, done long ago) do not
    // name a campaign.
    if memchr::memmem::find(b, b"\"campaign\"").is_none() {
        return Ok(None);
    }
    let mut v: serde_json::Value = serde_json::from_slice(b).map_err(corrupt)?;
    let Some(obj) = v.as_object_mut() else {
        return Ok(None);
    };
    let Some(c) = obj.remove("campaign") else {
        return Ok(None);
    };
    if !c.is_null() {
        obj.insert(
            "send".into(),
            serde_json::json!({
                "kind": "campaign",
                "id": c.get("id").cloned().unwrap_or_default(),
                "slot": c.get("slot").cloned().unwrap_or_default(),
            }),
        );
    }
    Ok(Some(serde_json::to_vec(&v).map_err(corrupt)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_queue_records_name_their_send() -> Result<(), StoreError> {
        let old = br#"{"id":4,"source":"campaign:3","campaign":{"id":3,"slot":65537}}"#;
        let new = v1_queue_record(old)?.unwrap_or_default();
        let v: serde_json::Value =
            serde_json::from_slice(&new).map_err(|e| StoreError::Corrupt {
                table: "test",
                message: e.to_string(),
            })?;
        assert_eq!(
            v["send"],
            serde_json::json!({"kind": "campaign", "id": 3, "slot": 65537})
        );
        assert!(v.get("campaign").is_none());
        assert_eq!(v1_queue_record(br#"{"id":5,"source":"api"}"#)?, None);
        Ok(())
    }
}
