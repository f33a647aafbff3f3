//! Stored shop records: orders, carts, wait-list entries, and the per-contact
//! aggregates ([`ShopStats`]) that segments read.
//!
//! Money is kept in hundredths of the currency unit (`i64`), dates of
//! purchases as days since 1970-01-01 (UTC), instants as milliseconds.
//! Herald does not convert currencies: sums add the totals as the shop sent
//! them. The store keeps these records in postcard (compact binary, every
//! field present), so fields are never skipped when serializing.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// Order statuses that do not count towards a contact's aggregates (the
/// order is kept, and counts again if a later update changes its status).
pub const UNCOUNTED_STATUSES: &[&str] = &["cancelled", "canceled", "refunded", "failed"];

/// Days since 1970-01-01 of a millisecond timestamp (UTC).
pub fn day_of_ms(ms: i64) -> i32 {
    ms.div_euclid(86_400_000) as i32
}

/// Days since 1970-01-01 of a date.
pub fn day_of_date(d: NaiveDate) -> i32 {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    (d - epoch).num_days() as i32
}

/// A date from days since 1970-01-01.
pub fn date_of_day(day: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::Duration::days(day as i64))
}

/// One line of an order or a cart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// SKU.
    pub sku: String,
    /// Units.
    #[serde(rename = "q")]
    pub quantity: u32,
    /// Unit price in hundredths (0 when the shop did not say).
    #[serde(rename = "p", default)]
    pub price: i64,
    /// Category, as sent or taken from the catalogue.
    #[serde(rename = "c", default)]
    pub category: Option<String>,
    /// Name, as sent.
    #[serde(rename = "n", default)]
    pub name: Option<String>,
}

/// An order as last reported by the shop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// The shop's order id.
    pub order_id: String,
    /// The contact who placed it.
    pub contact: u64,
    /// When it was placed (ms).
    pub placed_at: i64,
    /// The `at` of the event this version came from (ms); an event older
    /// than this is not applied.
    pub updated_at: i64,
    /// Lines.
    pub items: Vec<Item>,
    /// Total in hundredths.
    pub total: i64,
    /// ISO 4217 currency.
    pub currency: String,
    /// Status as the shop names it (lower-cased).
    pub status: String,
    /// Payment type (lower-cased), if given.
    pub payment_type: Option<String>,
    /// Planned delivery date.
    pub delivery_date: Option<NaiveDate>,
    /// The attribution value the shop captured from Herald's link parameter.
    pub attribution: Option<String>,
}

impl Order {
    /// Whether the order counts towards aggregates (not cancelled, refunded
    /// or failed).
    pub fn counted(&self) -> bool {
        !UNCOUNTED_STATUSES.contains(&self.status.as_str())
    }
}

/// A contact's current cart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cart {
    /// Lines (none: the cart was emptied at `updated_at`).
    pub items: Vec<Item>,
    /// Currency of the prices, if given.
    pub currency: Option<String>,
    /// A link back to the cart, if given.
    pub url: Option<String>,
    /// The `at` of the event this version came from (ms).
    pub updated_at: i64,
}

impl Cart {
    /// Sum of quantity × price, in hundredths.
    pub fn value(&self) -> i64 {
        self.items
            .iter()
            .map(|i| i.price.saturating_mul(i.quantity as i64))
            .fold(0i64, i64::saturating_add)
    }

    /// Number of units.
    pub fn units(&self) -> u32 {
        self.items
            .iter()
            .map(|i| i.quantity)
            .fold(0u32, u32::saturating_add)
    }
}

/// What a wait-list entry waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    /// Tell me when it is back in stock.
    BackInStock,
    /// I pre-ordered it.
    Preorder,
}

/// A contact waiting for a SKU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitEntry {
    /// What for.
    pub kind: WaitKind,
    /// Since when (ms).
    pub since: i64,
}

/// Per-contact aggregates of orders and logins, updated as events arrive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShopStats {
    /// Counted orders.
    pub order_count: u32,
    /// Sum of counted orders' totals, in hundredths.
    pub order_sum: i64,
    /// Day of the first counted order.
    pub first_order: Option<i32>,
    /// Day of the last counted order.
    pub last_order: Option<i32>,
    /// Category → the distinct days it was bought on (ascending).
    pub categories: BTreeMap<String, Vec<i32>>,
    /// SKU → the distinct days it was bought on (ascending).
    pub skus: BTreeMap<String, Vec<i32>>,
    /// Payment types used in counted orders.
    pub payment_types: BTreeSet<String>,
    /// Last login (ms).
    pub last_login: Option<i64>,
    /// Logins recorded.
    pub logins: u32,
    /// Ids of all the contact's orders (counted or not), sorted: the
    /// contact's order index.
    pub orders: Vec<String>,
}

fn add_day(days: &mut Vec<i32>, day: i32) -> bool {
    match days.binary_search(&day) {
        Ok(_) => false,
        Err(at) => {
            days.insert(at, day);
            true
        }
    }
}

/// What changed between two versions of a contact's [`ShopStats`], for the
/// segment index: purchase (kind, term, day) entries and payment types
/// added and removed. `sku` is true for SKUs, false for categories.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsDelta {
    /// (sku?, term, day) entries that are new.
    pub added: Vec<(bool, String, i32)>,
    /// (sku?, term, day) entries that are gone.
    pub removed: Vec<(bool, String, i32)>,
    /// Payment types now used.
    pub payments_added: Vec<String>,
    /// Payment types no longer used.
    pub payments_removed: Vec<String>,
}

impl StatsDelta {
    /// The difference from `old` to `new`.
    pub fn between(old: &ShopStats, new: &ShopStats) -> StatsDelta {
        let mut d = StatsDelta::default();
        for (sku, o, n) in [
            (false, &old.categories, &new.categories),
            (true, &old.skus, &new.skus),
        ] {
            for (term, days) in n {
                let prev = o.get(term);
                for day in days {
                    if prev.is_none_or(|p| p.binary_search(day).is_err()) {
                        d.added.push((sku, term.clone(), *day));
                    }
                }
            }
            for (term, days) in o {
                let now = n.get(term);
                for day in days {
                    if now.is_none_or(|p| p.binary_search(day).is_err()) {
                        d.removed.push((sku, term.clone(), *day));
                    }
                }
            }
        }
        d.payments_added = new
            .payment_types
            .difference(&old.payment_types)
            .cloned()
            .collect();
        d.payments_removed = old
            .payment_types
            .difference(&new.payment_types)
            .cloned()
            .collect();
        d
    }
}

impl ShopStats {
    /// Adds one order's contribution (nothing for an uncounted order), and
    /// returns what that added.
    pub fn add_order(&mut self, o: &Order) -> StatsDelta {
        let mut delta = StatsDelta::default();
        if let Err(at) = self.orders.binary_search(&o.order_id) {
            self.orders.insert(at, o.order_id.clone());
        }
        if !o.counted() {
            return delta;
        }
        let day = day_of_ms(o.placed_at);
        self.order_count = self.order_count.saturating_add(1);
        self.order_sum = self.order_sum.saturating_add(o.total);
        self.first_order = Some(self.first_order.map_or(day, |d| d.min(day)));
        self.last_order = Some(self.last_order.map_or(day, |d| d.max(day)));
        for i in &o.items {
            if add_day(self.skus.entry(i.sku.clone()).or_default(), day) {
                delta.added.push((true, i.sku.clone(), day));
            }
            if let Some(c) = &i.category
                && add_day(self.categories.entry(c.clone()).or_default(), day)
            {
                delta.added.push((false, c.clone(), day));
            }
        }
        if let Some(p) = &o.payment_type
            && self.payment_types.insert(p.clone())
        {
            delta.payments_added.push(p.clone());
        }
        delta
    }

    /// Replaces the order-derived part with what `orders` add up to (after an
    /// order changed or moved); login data is kept.
    pub fn recompute<'a>(&mut self, orders: impl IntoIterator<Item = &'a Order>) {
        let mut fresh = ShopStats {
            last_login: self.last_login,
            logins: self.logins,
            ..ShopStats::default()
        };
        for o in orders {
            fresh.add_order(o);
        }
        *self = fresh;
    }

    /// Average order value in hundredths, if any order counted.
    pub fn average(&self) -> Option<i64> {
        (self.order_count > 0).then(|| self.order_sum / self.order_count as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, day: i64, status: &str, total: i64, cats: &[&str]) -> Order {
        Order {
            order_id: id.into(),
            contact: 1,
            placed_at: day * 86_400_000 + 3_600_000,
            updated_at: 0,
            items: cats
                .iter()
                .enumerate()
                .map(|(n, c)| Item {
                    sku: format!("S{n}"),
                    quantity: 1,
                    price: 100,
                    category: Some(c.to_string()),
                    name: None,
                })
                .collect(),
            total,
            currency: "PLN".into(),
            status: status.into(),
            payment_type: Some("card".into()),
            delivery_date: None,
            attribution: None,
        }
    }

    #[test]
    fn aggregates_add_up_and_skip_cancelled_orders() {
        let a = order("a", 100, "paid", 1000, &["shoes", "bags"]);
        let b = order("b", 50, "paid", 3000, &["shoes"]);
        let c = order("c", 200, "cancelled", 9999, &["hats"]);
        let mut s = ShopStats {
            logins: 2,
            ..Default::default()
        };
        s.recompute([&a, &b, &c]);
        assert_eq!(s.order_count, 2);
        assert_eq!(s.order_sum, 4000);
        assert_eq!(s.average(), Some(2000));
        assert_eq!((s.first_order, s.last_order), (Some(50), Some(100)));
        assert_eq!(s.categories["shoes"], vec![50, 100]);
        assert!(!s.categories.contains_key("hats"));
        assert_eq!(s.logins, 2);
        let mut inc = ShopStats {
            logins: 2,
            ..Default::default()
        };
        for o in [&b, &c, &a] {
            inc.add_order(o);
        }
        assert_eq!(inc, s);
    }

    #[test]
    fn days_round_trip() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap_or_default();
        assert_eq!(date_of_day(day_of_date(d)), Some(d));
        assert_eq!(day_of_ms(-1), -1);
    }
}
