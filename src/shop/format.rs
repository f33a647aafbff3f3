//! How shop values read in API answers and in events' reasons: instants as
//! RFC 3339, money in hundredths as decimals, a contact's aggregates as JSON.

use std::collections::BTreeMap;

use chrono::DateTime;
use serde_json::Value;

use super::model::ShopStats;

/// An instant (ms) as RFC 3339, to the second.
pub fn fmt_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Hundredths as a decimal string (`"1299.50"`).
pub fn money_text(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

/// What the aggregates say about a contact, as the API shows it.
pub fn stats_json(s: &ShopStats) -> Value {
    let money = money_text;
    let day = |d: i32| super::model::date_of_day(d).map(|d| d.to_string());
    serde_json::json!({
        "order_count": s.order_count,
        "order_sum": money(s.order_sum),
        "average_order": s.average().map(money),
        "first_order": s.first_order.and_then(day),
        "last_order": s.last_order.and_then(day),
        "categories": s.categories.iter().map(|(k, v)| (k.clone(), v.last().copied().and_then(day))).collect::<BTreeMap<_, _>>(),
        "skus": s.skus.len(),
        "payment_types": s.payment_types,
        "last_login": s.last_login.map(fmt_ms),
        "logins": s.logins,
    })
}
