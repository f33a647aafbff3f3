//! Send tables: for every send (campaign, automation, transactional tag,
//! test; see `send::model::SendRef`) the ledger of who was sent what, the
//! engagement flags of each recipient, and the counters (total per slot,
//! hourly, per link, who clicked which link). Nothing here knows what kind
//! of send produced a message: keys start with the send's kind code and id.

use std::collections::BTreeMap;

use redb::ReadableTable;

use super::tables::*;
use super::{Change, ReadView, StoreError, WriteTables};
use crate::send::model::{CLICKED, Counter, OPENED, SendKind, SendRef};

/// Milliseconds in an hour.
const HOUR_MS: i64 = 3_600_000;

/// The hour (since the epoch) of a time in ms.
pub fn hour_of(ms: i64) -> u32 {
    (ms.max(0) / HOUR_MS).min(u32::MAX as i64) as u32
}

/// Counters of one send: (slot, counter code) → count.
pub type SendCounts = BTreeMap<(u32, u8), u64>;

/// A send's attributed orders by currency: (slot, currency) → (orders,
/// revenue in hundredths).
pub type SendMoney = BTreeMap<(u32, String), (u64, u64)>;

/// Counters of one link of a send's message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounts {
    /// Clicks by hand.
    pub clicks: u64,
    /// Contacts who clicked it by hand.
    pub unique_clicks: u64,
    /// Clicks by machines.
    pub machine_clicks: u64,
    /// Orders attributed to it.
    pub orders: u64,
    /// Revenue attributed to it, in hundredths.
    pub revenue_cents: u64,
}

impl LinkCounts {
    fn add(&mut self, counter: u8, v: u64) {
        match counter {
            c if c == Counter::Clicks as u8 => self.clicks += v,
            c if c == Counter::UniqueClicks as u8 => self.unique_clicks += v,
            c if c == Counter::MachineClicks as u8 => self.machine_clicks += v,
            c if c == Counter::Orders as u8 => self.orders += v,
            c if c == Counter::Revenue as u8 => self.revenue_cents += v,
            _ => {}
        }
    }
}

/// The ledger and engagement key of a contact in a send's round.
pub(super) fn round_key(s: SendRef, contact: u64) -> (u8, u64, u32, u64) {
    (s.kind.code(), s.id, s.round(), contact)
}

impl WriteTables<'_> {
    /// Records a message of a send as queued (the ledger entry) and counts
    /// it as sent at `at` (ms; the hour goes into the send's time series).
    pub fn put_sent(
        &mut self,
        s: SendRef,
        contact: u64,
        queue_id: u64,
        at: i64,
    ) -> Result<(), StoreError> {
        self.tables
            .send_ledger
            .open()?
            .insert(round_key(s, contact), (s.variant, queue_id))?;
        self.bump_send_at(s, Counter::Sent, 1, at)
    }

    /// Counts a message of a send that was not sent, under `counter`: its
    /// contact was erased, no longer had consent, or its address is
    /// suppressed.
    pub fn count_not_sent(&mut self, s: SendRef, counter: Counter) -> Result<(), StoreError> {
        self.bump_send(s, counter, 1)
    }

    /// Adds `delta` to a send counter (never below zero; written when the
    /// transaction commits).
    pub fn bump_send(
        &mut self,
        s: SendRef,
        counter: Counter,
        delta: i64,
    ) -> Result<(), StoreError> {
        *self
            .count_deltas
            .entry((s.kind.code(), s.id, s.variant, counter as u8))
            .or_insert(0) += delta;
        Ok(())
    }

    /// Adds `delta` (either sign) to a send counter and to the hour of `at`
    /// in the send's time series. Taking something back, the caller gives
    /// the time it was counted at, so the hours add up to the total.
    pub fn bump_send_at(
        &mut self,
        s: SendRef,
        counter: Counter,
        delta: i64,
        at: i64,
    ) -> Result<(), StoreError> {
        self.bump_send(s, counter, delta)?;
        *self
            .hourly_deltas
            .entry((s.kind.code(), s.id, hour_of(at), counter as u8))
            .or_insert(0) += delta;
        Ok(())
    }

    /// Adds `orders` and `cents` (either sign) of attributed orders in
    /// `currency` to a send's slot.
    pub fn bump_money(
        &mut self,
        s: SendRef,
        currency: &str,
        orders: i64,
        cents: i64,
    ) -> Result<(), StoreError> {
        let e = self
            .money_deltas
            .entry((s.kind.code(), s.id, s.variant, currency.to_string()))
            .or_insert((0, 0));
        e.0 += orders;
        e.1 += cents;
        Ok(())
    }

    /// Adds `delta` to a counter of one link of a send's message.
    pub fn bump_link(
        &mut self,
        s: SendRef,
        link: u32,
        counter: Counter,
        delta: i64,
    ) -> Result<(), StoreError> {
        *self
            .link_deltas
            .entry((s.kind.code(), s.id, s.variant, link, counter as u8))
            .or_insert(0) += delta;
        Ok(())
    }

    /// Notes that `contact` clicked a link by hand; true the first time.
    pub fn note_clicker(
        &mut self,
        s: SendRef,
        link: u32,
        contact: u64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .tables
            .send_clickers
            .open()?
            .insert((s.kind.code(), s.id, s.variant, link, contact), ())?
            .is_none())
    }

    /// Adds engagement `flags` (see `send::model`) of a contact in a send's
    /// round at `at` (ms); returns the flags it had before. Opens and
    /// clicks by hand reach the store's observer (the segment index).
    pub fn engage(
        &mut self,
        s: SendRef,
        contact: u64,
        flags: u8,
        at: i64,
    ) -> Result<u8, StoreError> {
        let key = round_key(s, contact);
        let (old, mut open_at, mut click_at) = self
            .tables
            .send_engagement
            .open()?
            .get(key)?
            .map(|v| v.value())
            .unwrap_or((0, 0, 0));
        if flags & OPENED != 0 {
            open_at = open_at.max(at);
        }
        if flags & CLICKED != 0 {
            click_at = click_at.max(at);
        }
        self.tables
            .send_engagement
            .open()?
            .insert(key, (old | flags, open_at, click_at))?;
        if flags & (OPENED | CLICKED) != 0 {
            self.note(|| Change::Engaged {
                send: s.whole(),
                contact,
                click: flags & CLICKED != 0,
                at,
            });
        }
        Ok(old)
    }

    /// Tells the observer that a batch of a send was queued.
    pub fn note_sent(&mut self, s: SendRef, contacts: Vec<u64>) {
        if !contacts.is_empty() {
            self.note(|| Change::Sent {
                send: s.whole(),
                contacts,
            });
        }
    }

    /// Names a send (a transactional tag's name) the first time; returns
    /// the name it already has when that is another (two tags whose ids
    /// collide), and then changes nothing.
    pub fn name_send(
        &mut self,
        kind: SendKind,
        id: u64,
        name: &str,
    ) -> Result<Option<String>, StoreError> {
        let existing = self
            .tables
            .send_names
            .open()?
            .get((kind.code(), id))?
            .map(|v| v.value().to_string());
        match existing {
            Some(other) if other != name => Ok(Some(other)),
            Some(_) => Ok(None),
            None => {
                self.tables
                    .send_names
                    .open()?
                    .insert((kind.code(), id), name)?;
                Ok(None)
            }
        }
    }
}

impl ReadView {
    /// Every counter of a send (every slot).
    pub fn send_counts(&self, kind: SendKind, id: u64) -> Result<SendCounts, StoreError> {
        let k = kind.code();
        let mut out = BTreeMap::new();
        for r in self
            .tables
            .send_counts()?
            .range((k, id, 0u32, 0u8)..=(k, id, u32::MAX, u8::MAX))?
        {
            let (key, v) = r?;
            let (_, _, slot, c) = key.value();
            out.insert((slot, c), v.value());
        }
        Ok(out)
    }

    /// A send's attributed orders by currency: (slot, currency) → (orders,
    /// revenue in hundredths).
    pub fn send_money(&self, kind: SendKind, id: u64) -> Result<SendMoney, StoreError> {
        let k = kind.code();
        let mut out = BTreeMap::new();
        for r in self
            .tables
            .send_money()?
            .range((k, id, 0u32, "")..=(k, id, u32::MAX, "\u{7f}"))?
        {
            let (key, v) = r?;
            let (_, _, slot, cur) = key.value();
            out.insert((slot, cur.to_string()), v.value());
        }
        Ok(out)
    }

    /// A send's time series: (hour since the epoch, counter code) → count.
    pub fn send_hourly(
        &self,
        kind: SendKind,
        id: u64,
    ) -> Result<BTreeMap<(u32, u8), u64>, StoreError> {
        let k = kind.code();
        let mut out = BTreeMap::new();
        for r in self
            .tables
            .send_hourly()?
            .range((k, id, 0u32, 0u8)..=(k, id, u32::MAX, u8::MAX))?
        {
            let (key, v) = r?;
            let (_, _, h, c) = key.value();
            out.insert((h, c), v.value());
        }
        Ok(out)
    }

    /// The hourly counters of every send of `kinds` summed per hour, for
    /// the hours `from..=to` (since the epoch): (hour, counter code) →
    /// count. Each send costs two bounded range reads (find the next send,
    /// read its hours in the window), whatever its history's length.
    pub fn hourly_window(
        &self,
        kinds: &[SendKind],
        from: u32,
        to: u32,
    ) -> Result<BTreeMap<(u32, u8), u64>, StoreError> {
        let table = self.tables.send_hourly()?;
        let mut out = BTreeMap::new();
        for kind in kinds {
            let k = kind.code();
            let mut next = 0u64;
            loop {
                let first = table
                    .range((k, next, 0u32, 0u8)..=(k, u64::MAX, u32::MAX, u8::MAX))?
                    .next();
                let Some(first) = first else { break };
                let id = first?.0.value().1;
                for r in table.range((k, id, from, 0u8)..=(k, id, to, u8::MAX))? {
                    let (key, v) = r?;
                    let (_, _, h, c) = key.value();
                    *out.entry((h, c)).or_insert(0) += v.value();
                }
                match id.checked_add(1) {
                    Some(n) => next = n,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    /// A send's link counters: (slot, link) → counts.
    pub fn send_links(
        &self,
        kind: SendKind,
        id: u64,
    ) -> Result<BTreeMap<(u32, u32), LinkCounts>, StoreError> {
        let k = kind.code();
        let mut out: BTreeMap<(u32, u32), LinkCounts> = BTreeMap::new();
        for r in self
            .tables
            .send_links()?
            .range((k, id, 0u32, 0u32, 0u8)..=(k, id, u32::MAX, u32::MAX, u8::MAX))?
        {
            let (key, v) = r?;
            let (_, _, slot, link, c) = key.value();
            out.entry((slot, link)).or_default().add(c, v.value());
        }
        Ok(out)
    }

    /// The recipients of a send's round with their slot and engagement
    /// flags, in contact order.
    pub fn round_recipients(&self, s: SendRef) -> Result<Vec<(u64, u32, u8)>, StoreError> {
        let (k, id, round) = (s.kind.code(), s.id, s.round());
        let range = (k, id, round, 0u64)..=(k, id, round, u64::MAX);
        let mut flags: BTreeMap<u64, u8> = BTreeMap::new();
        for r in self.tables.send_engagement()?.range(range.clone())? {
            let (key, v) = r?;
            flags.insert(key.value().3, v.value().0);
        }
        let mut out = Vec::new();
        for r in self.tables.send_ledger()?.range(range)? {
            let (key, v) = r?;
            let contact = key.value().3;
            out.push((
                contact,
                v.value().0,
                flags.get(&contact).copied().unwrap_or(0),
            ));
        }
        Ok(out)
    }

    /// Every message of a kind of send and every open and click, for the
    /// segment index: `sent(send id, contact)` and `engaged(send id,
    /// contact, flags, last open ms, last click ms)`.
    pub fn each_send_event(
        &self,
        kind: SendKind,
        mut sent: impl FnMut(u64, u64),
        mut engaged: impl FnMut(u64, u64, u8, i64, i64),
    ) -> Result<(), StoreError> {
        let k = kind.code();
        let all = (k, 0u64, 0u32, 0u64)..=(k, u64::MAX, u32::MAX, u64::MAX);
        for r in self.tables.send_ledger()?.range(all.clone())? {
            let (key, _) = r?;
            let (_, id, _, contact) = key.value();
            sent(id, contact);
        }
        for r in self.tables.send_engagement()?.range(all)? {
            let (key, v) = r?;
            let (_, id, _, contact) = key.value();
            let (f, o, cl) = v.value();
            engaged(id, contact, f, o, cl);
        }
        Ok(())
    }

    /// The names of a kind's sends (transactional tags): (id, name).
    pub fn send_names(&self, kind: SendKind) -> Result<Vec<(u64, String)>, StoreError> {
        let k = kind.code();
        let mut out = Vec::new();
        for r in self.tables.send_names()?.range((k, 0u64)..=(k, u64::MAX))? {
            let (key, v) = r?;
            out.push((key.value().1, v.value().to_string()));
        }
        Ok(out)
    }
}
