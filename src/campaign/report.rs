//! Campaign reports: counts, rates, money and ROI, per A/B variant and
//! stage, per link and per hour, built from one store snapshot of the
//! campaign's send (`send::report` has the figures and their definitions;
//! this adds the campaign's audience, cost, budget and variant labels).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::campaign::model::{Campaign, WINNER, slot, unslot};
use crate::send::SendKind;
use crate::send::report::{
    blank_money, by_currency, figures, hourly, links, money_currency, money_view, no_mixed_sums,
    time, total,
};
use crate::store::{ReadView, SendCounts, StoreError};

pub use crate::send::report::{COLUMNS, csv};

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

/// A campaign's totals with rates and money (the comparison row); money as
/// in the full report: one line per currency, no sums across currencies.
pub fn summary(c: &Campaign, counts: &SendCounts, money: &crate::store::SendMoney) -> Value {
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
    let lines = by_currency(money, None);
    row.insert("currency".into(), money_currency(&lines, None));
    row.insert("revenue_by_currency".into(), money_view(&lines));
    let mut row = Value::Object(row);
    if lines.len() > 1 {
        blank_money(&mut row);
    }
    row
}

/// The full report of one campaign.
pub fn campaign(r: &ReadView, c: &Campaign, currency: Option<&str>) -> Result<Value, StoreError> {
    let counts = r.send_counts(SendKind::Campaign, c.id)?;
    let money = r.send_money(SendKind::Campaign, c.id)?;
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
            row.insert(
                "revenue_by_currency".into(),
                money_view(&by_currency(&money, Some(s))),
            );
            Value::Object(row)
        })
        .collect();
    let links = links(r, SendKind::Campaign, c.id, |s| label(c, s))?;
    let hours = hourly(r, SendKind::Campaign, c.id)?;
    let mut totals = figures(
        |k| total(&counts, k),
        c.queued(),
        c.spec.cost_per_message,
        c.spec.budget,
    );
    totals.insert("audience".into(), c.run.audience.into());
    let all = by_currency(&money, None);
    totals.insert("revenue_by_currency".into(), money_view(&all));
    let currencies: Vec<&String> = all.keys().collect();
    let mut report = json!({
        "campaign": {
            "id": c.id, "name": c.spec.name, "status": c.status.as_str(),
            "started": time(c.run.started), "finished": time(c.run.finished),
            "cost_per_message": c.spec.cost_per_message, "budget": c.spec.budget,
            "currency": money_currency(&all, currency),
            "currencies": currencies,
            "left_out": super::model::LeftOut::view(c.run.left_out.as_ref()),
        },
        "totals": totals,
        "variants": variants,
        "links": links,
        "hourly": hours,
    });
    if all.len() > 1 {
        no_mixed_sums(&mut report, &["totals", "variants", "links", "hourly"]);
    }
    Ok(report)
}
