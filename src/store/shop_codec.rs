//! How orders and aggregates are laid out in `orders_v3` and
//! `shop_stats_v2` (schema 6): postcard, with every repeating string (SKU,
//! category, item name, currency, status, payment type) as a number of the
//! term dictionary (`terms.rs`), dates as day numbers and an order's update
//! time as its distance from the order's placing. The domain types
//! ([`Order`], [`ShopStats`]) stay as the rest of Herald knows them; only
//! these functions see the stored form.
//!
//! Schema 5 kept the domain types themselves in postcard (`orders_v2`,
//! `shop_stats_v1`); `migrate::v5_to_v6` reads them with `store::dec`.
//! Carts are still the domain type in postcard (`store::enc`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::terms::Text;
use super::{StoreError, dec, enc};
use crate::shop::model::{Item, Order, ShopStats, date_of_day, day_of_date};

#[derive(Serialize, Deserialize)]
struct StoredItem {
    sku: Text,
    quantity: u32,
    price: i64,
    category: Option<Text>,
    name: Option<Text>,
}

#[derive(Serialize, Deserialize)]
struct StoredOrder {
    order_id: String,
    contact: u64,
    placed_at: i64,
    /// `updated_at - placed_at` (mostly 0 or small).
    updated_after: i64,
    items: Vec<StoredItem>,
    total: i64,
    currency: Text,
    status: Text,
    payment_type: Option<Text>,
    /// Days since 1970-01-01.
    delivery_day: Option<i32>,
    attribution: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct StoredStats {
    order_count: u32,
    order_sum: i64,
    first_order: Option<i32>,
    last_order: Option<i32>,
    categories: Vec<(Text, Vec<i32>)>,
    skus: Vec<(Text, Vec<i32>)>,
    payment_types: Vec<Text>,
    last_login: Option<i64>,
    logins: u32,
    orders: Vec<String>,
}

/// An order's stored bytes; `intern` gives each string its record form.
pub(super) fn encode_order(
    o: &Order,
    intern: &mut impl FnMut(&str) -> Result<Text, StoreError>,
) -> Result<Vec<u8>, StoreError> {
    let mut items = Vec::with_capacity(o.items.len());
    for i in &o.items {
        items.push(StoredItem {
            sku: intern(&i.sku)?,
            quantity: i.quantity,
            price: i.price,
            category: i.category.as_deref().map(&mut *intern).transpose()?,
            name: i.name.as_deref().map(&mut *intern).transpose()?,
        });
    }
    let stored = StoredOrder {
        order_id: o.order_id.clone(),
        contact: o.contact,
        placed_at: o.placed_at,
        updated_after: o.updated_at.wrapping_sub(o.placed_at),
        items,
        total: o.total,
        currency: intern(&o.currency)?,
        status: intern(&o.status)?,
        payment_type: o.payment_type.as_deref().map(&mut *intern).transpose()?,
        delivery_day: o.delivery_date.map(day_of_date),
        attribution: o.attribution.clone(),
    };
    Ok(enc(&stored))
}

/// An order from its stored bytes; `name` resolves term numbers.
pub(super) fn decode_order(
    b: &[u8],
    name: &impl Fn(u32) -> Result<String, StoreError>,
) -> Result<Order, StoreError> {
    let s: StoredOrder = dec("orders", b)?;
    let mut items = Vec::with_capacity(s.items.len());
    for i in s.items {
        items.push(Item {
            sku: i.sku.resolve(name)?,
            quantity: i.quantity,
            price: i.price,
            category: i.category.map(|t| t.resolve(name)).transpose()?,
            name: i.name.map(|t| t.resolve(name)).transpose()?,
        });
    }
    Ok(Order {
        order_id: s.order_id,
        contact: s.contact,
        placed_at: s.placed_at,
        updated_at: s.placed_at.wrapping_add(s.updated_after),
        items,
        total: s.total,
        currency: s.currency.resolve(name)?,
        status: s.status.resolve(name)?,
        payment_type: s.payment_type.map(|t| t.resolve(name)).transpose()?,
        delivery_date: s.delivery_day.and_then(date_of_day),
        attribution: s.attribution,
    })
}

/// A contact's aggregates' stored bytes.
pub(super) fn encode_stats(
    s: &ShopStats,
    intern: &mut impl FnMut(&str) -> Result<Text, StoreError>,
) -> Result<Vec<u8>, StoreError> {
    let mut terms = |m: &BTreeMap<String, Vec<i32>>| -> Result<Vec<(Text, Vec<i32>)>, StoreError> {
        m.iter()
            .map(|(k, days)| Ok((intern(k)?, days.clone())))
            .collect()
    };
    let categories = terms(&s.categories)?;
    let skus = terms(&s.skus)?;
    let payment_types = s
        .payment_types
        .iter()
        .map(|p| intern(p))
        .collect::<Result<Vec<_>, _>>()?;
    let stored = StoredStats {
        order_count: s.order_count,
        order_sum: s.order_sum,
        first_order: s.first_order,
        last_order: s.last_order,
        categories,
        skus,
        payment_types,
        last_login: s.last_login,
        logins: s.logins,
        orders: s.orders.clone(),
    };
    Ok(enc(&stored))
}

/// A contact's aggregates from their stored bytes.
pub(super) fn decode_stats(
    b: &[u8],
    name: &impl Fn(u32) -> Result<String, StoreError>,
) -> Result<ShopStats, StoreError> {
    let s: StoredStats = dec("shop_stats", b)?;
    let terms = |v: Vec<(Text, Vec<i32>)>| -> Result<BTreeMap<String, Vec<i32>>, StoreError> {
        v.into_iter()
            .map(|(k, days)| Ok((k.resolve(name)?, days)))
            .collect()
    };
    Ok(ShopStats {
        order_count: s.order_count,
        order_sum: s.order_sum,
        first_order: s.first_order,
        last_order: s.last_order,
        categories: terms(s.categories)?,
        skus: terms(s.skus)?,
        payment_types: s
            .payment_types
            .into_iter()
            .map(|t| t.resolve(name))
            .collect::<Result<BTreeSet<_>, _>>()?,
        last_login: s.last_login,
        logins: s.logins,
        orders: s.orders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dictionary in memory, as the tables would number the terms.
    #[derive(Default)]
    struct Dict(Vec<String>);

    impl Dict {
        fn intern(&mut self, s: &str) -> Result<Text, StoreError> {
            if s.len() > super::super::terms::MAX_TERM_BYTES {
                return Ok(Text::Inline(s.into()));
            }
            let n = match self.0.iter().position(|x| x == s) {
                Some(n) => n,
                None => {
                    self.0.push(s.into());
                    self.0.len() - 1
                }
            };
            Ok(Text::Term(n as u32))
        }
        fn name(&self, n: u32) -> Result<String, StoreError> {
            self.0.get(n as usize).cloned().ok_or(StoreError::Corrupt {
                table: "terms",
                message: n.to_string(),
            })
        }
    }

    fn order() -> Order {
        Order {
            order_id: "17-2".into(),
            contact: 17,
            placed_at: 1_764_000_000_000,
            updated_at: 1_764_000_360_000,
            items: vec![
                Item {
                    sku: "SKU-00012".into(),
                    quantity: 2,
                    price: 12_990,
                    category: Some("shoes".into()),
                    name: Some("Classic Sneakers Black".into()),
                },
                Item {
                    sku: "SKU-00400".into(),
                    quantity: 1,
                    price: 4_500,
                    category: None,
                    name: Some("y".repeat(100)),
                },
            ],
            total: 30_480,
            currency: "PLN".into(),
            status: "paid".into(),
            payment_type: Some("card".into()),
            delivery_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 28),
            attribution: Some("c1.0".into()),
        }
    }

    #[test]
    fn orders_and_stats_come_back_as_they_went_in() -> Result<(), StoreError> {
        let mut d = Dict::default();
        let o = order();
        let ob = encode_order(&o, &mut |s| d.intern(s))?;
        assert_eq!(decode_order(&ob, &|n| d.name(n))?, o);
        // Without the long (inline) name, under half of schema 5's bytes.
        let mut short = o.clone();
        short.items.truncate(1);
        let b = encode_order(&short, &mut |s| d.intern(s))?;
        let v5 = enc(&short);
        assert!(b.len() * 2 < v5.len(), "{} vs {}", b.len(), v5.len());
        let mut s = ShopStats::default();
        s.add_order(&o);
        s.last_login = Some(1_764_000_000_000);
        s.logins = 3;
        let b = encode_stats(&s, &mut |x| d.intern(x))?;
        assert_eq!(decode_stats(&b, &|n| d.name(n))?, s);
        // A number the dictionary lacks is reported, not guessed.
        assert!(decode_order(&ob, &|n| Dict::default().name(n)).is_err());
        assert!(decode_stats(&b, &|n| Dict::default().name(n)).is_err());
        Ok(())
    }
}
