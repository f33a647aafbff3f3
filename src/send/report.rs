//! What a send brought, for every kind of send: counts, rates, money,
//! per slot, per link and per hour, built from one store snapshot. The
//! campaign report (`campaign::report`) adds a campaign's own figures
//! (audience, cost, budget, A/B labels) on top of these.
//!
//! Definitions (all rates are fractions, 0–1, rounded to 4 places):
//! - `sent`: messages queued; `delivered`, `failed`, bounces: final outcomes.
//! - `open_rate` = unique human opens ÷ delivered; `ctr` = unique human
//!   clicks ÷ delivered; `ctor` = unique human clicks ÷ unique human opens;
//!   `unsubscribe_rate` = unsubscribes ÷ delivered; `bounce_rate` = failed ÷ sent.
//! - Machine opens and clicks (privacy proxies, link scanners) are counted
//!   apart (`machine_*`) and are in no rate.
//! - `cost` = sent × cost per message; `budget_used` = cost ÷ budget;
//!   `revenue_per_recipient` = revenue ÷ delivered; `roi` = (revenue − cost) ÷ cost.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::model::{Counter, SendKind, SendRef, unslot};
use crate::store::{LinkCounts, ReadView, SendCounts, SendMoney, StoreError};

/// Columns of the CSV summary, in order (also the keys of `totals`).
pub const COLUMNS: &[&str] = &[
    "sent",
    "delivered",
    "deferred",
    "failed",
    "bounces_hard",
    "bounces_soft",
    "bounces_policy",
    "bounces_late",
    "auto_replies",
    "delay_notices",
    "not_sent_no_consent",
    "not_sent_erased",
    "not_sent_suppressed",
    "opens_unique",
    "opens_total",
    "machine_opens_unique",
    "machine_opens_total",
    "clicks_unique",
    "clicks_total",
    "machine_clicks_unique",
    "machine_clicks_total",
    "unsubscribes",
    "complaints",
    "orders",
    "revenue",
    "open_rate",
    "ctr",
    "ctor",
    "unsubscribe_rate",
    "bounce_rate",
    "cost",
    "budget_used",
    "revenue_per_recipient",
    "roi",
];

pub fn rate(n: u64, d: u64) -> Value {
    if d == 0 {
        Value::Null
    } else {
        json!(((n as f64 / d as f64) * 10_000.0).round() / 10_000.0)
    }
}

pub fn money(cents: f64) -> Value {
    json!((cents).round() / 100.0)
}

/// The figures of one slice (a whole send or one slot).
pub fn figures(
    get: impl Fn(Counter) -> u64,
    sent: u64,
    cost_per_message: Option<f64>,
    budget: Option<f64>,
) -> Map<String, Value> {
    let delivered = get(Counter::Delivered);
    let uo = get(Counter::UniqueOpens);
    let uc = get(Counter::UniqueClicks);
    let unsub = get(Counter::Unsubscribes);
    let revenue_cents = get(Counter::Revenue);
    let cost = cost_per_message.map(|c| c * sent as f64);
    let revenue = revenue_cents as f64 / 100.0;
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("sent", sent.into());
    put("delivered", delivered.into());
    put("deferred", get(Counter::Deferred).into());
    put("failed", get(Counter::Failed).into());
    put("bounces_hard", get(Counter::Hard).into());
    put("bounces_soft", get(Counter::Soft).into());
    put("bounces_policy", get(Counter::Policy).into());
    put("bounces_late", get(Counter::LateBounces).into());
    put("auto_replies", get(Counter::AutoReplies).into());
    put("delay_notices", get(Counter::DelayNotices).into());
    put("not_sent_no_consent", get(Counter::Unsent).into());
    put("not_sent_erased", get(Counter::Erased).into());
    put(
        "not_sent_suppressed",
        get(Counter::NotSentSuppressed).into(),
    );
    put("opens_unique", uo.into());
    put("opens_total", get(Counter::Opens).into());
    put(
        "machine_opens_unique",
        get(Counter::MachineUniqueOpens).into(),
    );
    put("machine_opens_total", get(Counter::MachineOpens).into());
    put("clicks_unique", uc.into());
    put("clicks_total", get(Counter::Clicks).into());
    put(
        "machine_clicks_unique",
        get(Counter::MachineUniqueClicks).into(),
    );
    put("machine_clicks_total", get(Counter::MachineClicks).into());
    put("unsubscribes", unsub.into());
    put("complaints", get(Counter::Complaints).into());
    put("orders", get(Counter::Orders).into());
    put("revenue", money(revenue_cents as f64));
    // Text messages: shown for sends that had any.
    let handed = get(Counter::Handed);
    if handed > 0 || get(Counter::Dequeued) > 0 {
        put("sms_handed", handed.into());
        put("sms_parts", get(Counter::SmsParts).into());
        put("sms_cost", json!(get(Counter::SmsCost) as f64 / 10_000.0));
    }
    put("open_rate", rate(uo, delivered));
    put("ctr", rate(uc, delivered));
    put("ctor", rate(uc, uo));
    put("unsubscribe_rate", rate(unsub, delivered));
    put("bounce_rate", rate(get(Counter::Failed), sent));
    put("cost", cost.map_or(Value::Null, |c| money(c * 100.0)));
    put(
        "budget_used",
        match (cost, budget) {
            (Some(c), Some(b)) if b > 0.0 => json!(((c / b) * 10_000.0).round() / 10_000.0),
            _ => Value::Null,
        },
    );
    put(
        "revenue_per_recipient",
        if delivered == 0 {
            Value::Null
        } else {
            json!(((revenue / delivered as f64) * 10_000.0).round() / 10_000.0)
        },
    );
    put(
        "roi",
        match cost {
            Some(c) if c > 0.0 => json!((((revenue - c) / c) * 10_000.0).round() / 10_000.0),
            _ => Value::Null,
        },
    );
    m
}

/// An RFC 3339 time (seconds) of a time in ms, or null.
pub fn time(ms: Option<i64>) -> Value {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => Value::Null,
    }
}

/// A counter summed over every slot.
pub fn total(counts: &SendCounts, c: Counter) -> u64 {
    counts
        .iter()
        .filter(|((_, k), _)| *k == c as u8)
        .map(|(_, v)| *v)
        .sum()
}

/// A send's link counters with their URLs, each labelled by `label(slot)`.
pub fn links(
    r: &ReadView,
    kind: SendKind,
    id: u64,
    label: impl Fn(u32) -> String,
) -> Result<Vec<Value>, StoreError> {
    let link_counts = r.send_links(kind, id)?;
    let mut links = Vec::new();
    let mut urls: BTreeMap<u32, BTreeMap<u32, String>> = BTreeMap::new();
    for (s, _) in link_counts.keys() {
        if !urls.contains_key(s) {
            let key = SendRef {
                kind,
                id,
                variant: *s,
            }
            .key();
            let map = r
                .links(&key)?
                .into_iter()
                .map(|(n, l)| (n, l.url))
                .collect();
            urls.insert(*s, map);
        }
    }
    for ((s, n), lc) in &link_counts {
        let LinkCounts {
            clicks,
            unique_clicks,
            machine_clicks,
            orders,
            revenue_cents,
        } = *lc;
        links.push(json!({
            "stage": unslot(*s).0, "variant": unslot(*s).1, "label": label(*s),
            "link": n,
            "url": urls.get(s).and_then(|m| m.get(n)).cloned(),
            "clicks_unique": unique_clicks, "clicks_total": clicks,
            "machine_clicks_total": machine_clicks,
            "orders": orders, "revenue": money(revenue_cents as f64),
        }));
    }
    Ok(links)
}

/// The figures of an hourly row, in order.
const HOURLY: [&str; 13] = [
    "sent",
    "delivered",
    "failed",
    "opens_total",
    "opens_unique",
    "machine_opens_total",
    "clicks_total",
    "clicks_unique",
    "machine_clicks_total",
    "unsubscribes",
    "complaints",
    "orders",
    "revenue",
];

/// A send's attributed orders by currency, of one slot or all: currency →
/// (orders, hundredths); lines that came back to nothing (refunded) are
/// left out.
pub fn by_currency(money: &SendMoney, slot: Option<u32>) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((s, cur), (orders, cents)) in money {
        if slot.is_none_or(|want| want == *s) && (*orders > 0 || *cents > 0) {
            let e = out.entry(cur.clone()).or_default();
            e.0 += orders;
            e.1 += cents;
        }
    }
    out
}

/// `{"PLN": {"orders": 3, "revenue": 120.5}, …}`.
pub fn money_view(lines: &BTreeMap<String, (u64, u64)>) -> Value {
    lines
        .iter()
        .map(|(cur, (orders, cents))| {
            (
                cur.clone(),
                json!({"orders": orders, "revenue": money(*cents as f64)}),
            )
        })
        .collect::<Map<String, Value>>()
        .into()
}

/// The currency a report states: its orders' one currency, else (no orders)
/// what the caller says (the sites' common currency), else none. With
/// several, none: `revenue_by_currency` has a line for each.
pub fn money_currency(lines: &BTreeMap<String, (u64, u64)>, fallback: Option<&str>) -> Value {
    match lines.len() {
        0 => fallback.map_or(Value::Null, |c| c.into()),
        1 => lines
            .keys()
            .next()
            .cloned()
            .map_or(Value::Null, Value::from),
        _ => Value::Null,
    }
}

/// Herald never adds amounts in different currencies: with several, the
/// single-currency money figures of every row under `keys` are null (the
/// `revenue_by_currency` lines stand).
pub fn no_mixed_sums(report: &mut Value, keys: &[&str]) {
    for key in keys {
        match report.get_mut(*key) {
            Some(Value::Array(rows)) => rows.iter_mut().for_each(blank_money),
            Some(row @ Value::Object(_)) => blank_money(row),
            _ => {}
        }
    }
}

/// A row's single-currency money figures made null (it holds several).
pub fn blank_money(row: &mut Value) {
    for k in ["revenue", "revenue_per_recipient", "roi"] {
        if let Some(v) = row.get_mut(k) {
            *v = Value::Null;
        }
    }
}

/// A send's hourly series: one row per hour with a value, every figure in
/// it (zero when nothing happened). An hour's figures move with what is
/// taken back (a refunded order, a late bounce) as the totals do.
pub fn hourly(r: &ReadView, kind: SendKind, id: u64) -> Result<Vec<Value>, StoreError> {
    let mut hours: BTreeMap<u32, Map<String, Value>> = BTreeMap::new();
    for ((h, k), v) in r.send_hourly(kind, id)? {
        let name = match k {
            x if x == Counter::Sent as u8 => "sent",
            x if x == Counter::Delivered as u8 => "delivered",
            x if x == Counter::Failed as u8 => "failed",
            x if x == Counter::Opens as u8 => "opens_total",
            x if x == Counter::UniqueOpens as u8 => "opens_unique",
            x if x == Counter::MachineOpens as u8 => "machine_opens_total",
            x if x == Counter::Clicks as u8 => "clicks_total",
            x if x == Counter::UniqueClicks as u8 => "clicks_unique",
            x if x == Counter::MachineClicks as u8 => "machine_clicks_total",
            x if x == Counter::Unsubscribes as u8 => "unsubscribes",
            x if x == Counter::Complaints as u8 => "complaints",
            x if x == Counter::Orders as u8 => "orders",
            x if x == Counter::Revenue as u8 => "revenue",
            _ => continue,
        };
        let row = hours.entry(h).or_insert_with(|| {
            let mut m = Map::new();
            m.insert("hour".into(), time(Some(h as i64 * 3_600_000)));
            for name in HOURLY {
                let zero = if name == "revenue" {
                    money(0.0)
                } else {
                    0.into()
                };
                m.insert(name.into(), zero);
            }
            m
        });
        let value = if name == "revenue" {
            money(v as f64)
        } else {
            v.into()
        };
        row.insert(name.into(), value);
    }
    Ok(hours.into_values().map(Value::Object).collect())
}

/// The label of a slot of a send that is not a campaign: the day of a
/// transactional tag's round, the step of an automation.
fn slot_label(kind: SendKind, s: u32) -> String {
    let (round, variant) = unslot(s);
    match kind {
        SendKind::Transactional => time(Some(i64::from(round) * 86_400_000))
            .as_str()
            .map(|t| t[..10].to_string())
            .unwrap_or_default(),
        SendKind::Automation => format!("step {round}"),
        _ if variant > 0 => format!("round {round} variant {variant}"),
        _ => format!("round {round}"),
    }
}

/// The report of a send that is not a campaign (`GET
/// /api/v1/reports/sends/{kind}/{id}`): totals, one row per slot (for a
/// transactional tag: per day, as `days`), links and the hourly series.
pub fn send(
    r: &ReadView,
    kind: SendKind,
    id: u64,
    name: &str,
    currency: Option<&str>,
) -> Result<Value, StoreError> {
    let counts = r.send_counts(kind, id)?;
    let money = r.send_money(kind, id)?;
    let mut slots: Vec<u32> = counts.keys().map(|(s, _)| *s).collect();
    slots.dedup();
    let rows: Vec<Value> = slots
        .iter()
        .map(|&s| {
            let (round, variant) = unslot(s);
            let mut row = Map::new();
            if kind == SendKind::Transactional {
                row.insert("day".into(), slot_label(kind, s).into());
            } else {
                row.insert("round".into(), round.into());
                row.insert("variant".into(), variant.into());
                row.insert("label".into(), slot_label(kind, s).into());
            }
            let get = |k: Counter| counts.get(&(s, k as u8)).copied().unwrap_or(0);
            row.extend(figures(get, get(Counter::Sent), None, None));
            row.insert(
                "revenue_by_currency".into(),
                money_view(&by_currency(&money, Some(s))),
            );
            Value::Object(row)
        })
        .collect();
    let mut totals = figures(
        |k| total(&counts, k),
        total(&counts, Counter::Sent),
        None,
        None,
    );
    let all = by_currency(&money, None);
    totals.insert("revenue_by_currency".into(), money_view(&all));
    let rows_key = if kind == SendKind::Transactional {
        "days"
    } else {
        "slots"
    };
    let mut report = json!({
        "send": {"kind": kind.name(), "id": id, "name": name,
                 "currency": money_currency(&all, currency), "currencies": all.keys().collect::<Vec<_>>()},
        "totals": totals,
        rows_key: rows,
        "links": links(r, kind, id, |s| slot_label(kind, s))?,
        "hourly": hourly(r, kind, id)?,
    });
    if all.len() > 1 {
        no_mixed_sums(&mut report, &["totals", rows_key, "links", "hourly"]);
    }
    Ok(report)
}

fn csv_cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Rows as CSV with `head` columns (values looked up by name).
pub fn csv(head: &[&str], rows: &[&Map<String, Value>]) -> Vec<u8> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = w.write_record(head);
    for r in rows {
        let cells: Vec<String> = head
            .iter()
            .map(|k| r.get(*k).map(csv_cell).unwrap_or_default())
            .collect();
        let _ = w.write_record(&cells);
    }
    w.into_inner().unwrap_or_default()
}
