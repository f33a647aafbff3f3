//! Campaign reports: counts, rates, money and ROI, per A/B variant and
//! stage, per link and per hour, built from one store snapshot.
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

use crate::campaign::model::{Campaign, Counter, WINNER, slot, unslot};
use crate::store::{CampaignCounts, LinkCounts, ReadView, StoreError};
use crate::tokens::{SendKind, SendRef};

/// Columns of the CSV summary, in order (also the keys of `totals`).
pub const COLUMNS: &[&str] = &[
    "sent",
    "delivered",
    "deferred",
    "failed",
    "bounces_hard",
    "bounces_soft",
    "bounces_policy",
    "not_sent_no_consent",
    "not_sent_erased",
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

fn rate(n: u64, d: u64) -> Value {
    if d == 0 {
        Value::Null
    } else {
        json!(((n as f64 / d as f64) * 10_000.0).round() / 10_000.0)
    }
}

fn money(cents: f64) -> Value {
    json!((cents).round() / 100.0)
}

/// The figures of one slice (whole campaign or one variant).
fn figures(
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
    put("not_sent_no_consent", get(Counter::Unsent).into());
    put("not_sent_erased", get(Counter::Erased).into());
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

/// Messages queued per packed (stage, variant).
fn sent_per_slot(c: &Campaign) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    for p in &c.run.parts {
        let v = if p.variant == WINNER {
            match c.run.winner {
                Some(w) => w,
                None => continue,
            }
        } else {
            p.variant
        };
        *out.entry(slot(p.stage, v)).or_insert(0) += p.queued;
    }
    out
}

fn label(c: &Campaign, s: u32) -> String {
    let (stage, variant) = unslot(s);
    if stage > 0 {
        format!("stage {stage}")
    } else if c.spec.ab.is_some() {
        c.spec
            .variant_names()
            .get(variant as usize)
            .cloned()
            .unwrap_or_else(|| format!("variant {variant}"))
    } else {
        "all".into()
    }
}

fn time(ms: Option<i64>) -> Value {
    match ms.and_then(chrono::DateTime::from_timestamp_millis) {
        Some(t) => Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => Value::Null,
    }
}

fn total(counts: &CampaignCounts, c: Counter) -> u64 {
    counts
        .iter()
        .filter(|((_, k), _)| *k == c as u8)
        .map(|(_, v)| *v)
        .sum()
}

/// A campaign's totals with rates and money (the comparison row).
pub fn summary(c: &Campaign, counts: &CampaignCounts) -> Value {
    let mut row = Map::new();
    row.insert("id".into(), c.id.into());
    row.insert("name".into(), c.spec.name.clone().into());
    row.insert("status".into(), c.status.as_str().into());
    row.insert("started".into(), time(c.run.started));
    row.extend(figures(
        |k| total(counts, k),
        c.queued(),
        c.spec.cost_per_message,
        c.spec.budget,
    ));
    Value::Object(row)
}

/// The full report of one campaign.
pub fn campaign(r: &ReadView, c: &Campaign, currency: &str) -> Result<Value, StoreError> {
    let counts = r.campaign_counts(c.id)?;
    let sent = sent_per_slot(c);
    let mut slots: Vec<u32> = sent.keys().copied().collect();
    for (s, _) in counts.keys() {
        if !slots.contains(s) {
            slots.push(*s);
        }
    }
    slots.sort_unstable();
    let variants: Vec<Value> = slots
        .iter()
        .map(|&s| {
            let (stage, variant) = unslot(s);
            let mut row = Map::new();
            row.insert("stage".into(), stage.into());
            row.insert("variant".into(), variant.into());
            row.insert("label".into(), label(c, s).into());
            row.insert(
                "winner".into(),
                (stage == 0 && c.run.winner == Some(variant)).into(),
            );
            row.extend(figures(
                |k| counts.get(&(s, k as u8)).copied().unwrap_or(0),
                sent.get(&s).copied().unwrap_or(0),
                c.spec.cost_per_message,
                None,
            ));
            Value::Object(row)
        })
        .collect();
    let link_counts = r.campaign_links(c.id)?;
    let mut links = Vec::new();
    let mut urls: BTreeMap<u32, BTreeMap<u32, String>> = BTreeMap::new();
    for (s, _) in link_counts.keys() {
        if !urls.contains_key(s) {
            let key = SendRef {
                kind: SendKind::Campaign,
                id: c.id,
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
            "stage": unslot(*s).0, "variant": unslot(*s).1, "label": label(c, *s),
            "link": n,
            "url": urls.get(s).and_then(|m| m.get(n)).cloned(),
            "clicks_unique": unique_clicks, "clicks_total": clicks,
            "machine_clicks_total": machine_clicks,
            "orders": orders, "revenue": money(revenue_cents as f64),
        }));
    }
    let mut hours: BTreeMap<u32, Map<String, Value>> = BTreeMap::new();
    for ((h, k), v) in r.campaign_hourly(c.id)? {
        let name = match k {
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
            m
        });
        let value = if name == "revenue" {
            money(v as f64)
        } else {
            v.into()
        };
        row.insert(name.into(), value);
    }
    let mut totals = figures(
        |k| total(&counts, k),
        c.queued(),
        c.spec.cost_per_message,
        c.spec.budget,
    );
    totals.insert("audience".into(), c.run.audience.into());
    Ok(json!({
        "campaign": {
            "id": c.id, "name": c.spec.name, "status": c.status.as_str(),
            "started": time(c.run.started), "finished": time(c.run.finished),
            "cost_per_message": c.spec.cost_per_message, "budget": c.spec.budget,
            "currency": currency,
        },
        "totals": totals,
        "variants": variants,
        "links": links,
        "hourly": hours.into_values().map(Value::Object).collect::<Vec<_>>(),
    }))
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
