//! Evaluation: a [`Cond`] is compiled against the index's data into a
//! [`Pred`] (names resolved to symbols, membership and purchase conditions
//! turned into bitsets, relative dates into days), then every contact id is
//! tested, 64 ids per word, in parallel on rayon.
//!
//! Semantics: a comparison with a missing value is false, except `ne`
//! (which is `not eq`) and `exists = false`.

use chrono::NaiveDate;
use rayon::prelude::*;

use super::index::{Column, Data, IdSet, NO_DAY, Row, posting_day};
use super::lang::{Cond, DayExpr, Op, Operand, check_field};
use super::{Catalog, Kind, builtin_kind};
use crate::shop::model::day_of_date;

/// A set of contact ids as bits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bitset {
    /// 64 ids per word; bit `id % 64` of word `id / 64`.
    pub words: Vec<u64>,
}

impl Bitset {
    /// An empty set able to hold ids up to `max_id`.
    pub fn new(max_id: usize) -> Bitset {
        Bitset {
            words: vec![0; max_id / 64 + 1],
        }
    }

    /// Adds an id (ignored if beyond the capacity).
    pub fn set(&mut self, id: u32) {
        if let Some(w) = self.words.get_mut(id as usize / 64) {
            *w |= 1 << (id % 64);
        }
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn has(&self, id: usize) -> bool {
        self.words
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    /// Number of ids.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The ids, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + b as u64)
            })
        })
    }
}

/// Number comparison against row values.
#[derive(Debug, Clone)]
pub struct Cmp {
    op: Op,
    values: Vec<f64>,
}

impl Cmp {
    #[inline]
    fn test(&self, v: Option<f64>) -> bool {
        match (self.op, v) {
            (Op::Exists, v) => v.is_some() == (self.values.first() == Some(&1.0)),
            (Op::Ne, None) => true,
            (_, None) => false,
            (Op::Eq, Some(v)) => v == self.values[0],
            (Op::Ne, Some(v)) => v != self.values[0],
            (Op::Lt, Some(v)) => v < self.values[0],
            (Op::Lte, Some(v)) => v <= self.values[0],
            (Op::Gt, Some(v)) => v > self.values[0],
            (Op::Gte, Some(v)) => v >= self.values[0],
            (Op::In, Some(v)) => self.values.contains(&v),
            _ => false,
        }
    }
}

/// Which row value a number or date predicate reads.
#[derive(Debug, Clone, Copy)]
pub enum RowValue {
    /// Counted orders.
    OrderCount,
    /// Sum of counted orders (currency units).
    OrderSum,
    /// Average order (currency units).
    Average,
    /// Logins.
    Logins,
    /// Day created.
    Created,
    /// Day of first order.
    FirstOrder,
    /// Day of last order.
    LastOrder,
    /// Day of last login.
    LastLogin,
    /// Day of last open.
    LastOpen,
    /// Day of last click.
    LastClick,
}

impl RowValue {
    #[inline]
    fn get(self, r: &Row) -> Option<f64> {
        let day = |d: i32| (d != NO_DAY).then_some(d as f64);
        match self {
            RowValue::OrderCount => Some(r.order_count as f64),
            RowValue::OrderSum => Some(r.order_sum as f64 / 100.0),
            RowValue::Average => {
                (r.order_count > 0).then(|| r.order_sum as f64 / 100.0 / r.order_count as f64)
            }
            RowValue::Logins => Some(r.logins as f64),
            RowValue::Created => day(r.created),
            RowValue::FirstOrder => day(r.first_order),
            RowValue::LastOrder => day(r.last_order),
            RowValue::LastLogin => day(r.last_login),
            RowValue::LastOpen => day(r.last_open),
            RowValue::LastClick => day(r.last_click),
        }
    }
}

/// Which cart value a predicate reads.
#[derive(Debug, Clone, Copy)]
pub enum CartValue {
    /// Units (0 without a cart).
    Items,
    /// Value in currency units (0 without a cart).
    Value,
    /// Day it changed (none without a cart).
    Updated,
}

impl CartValue {
    #[inline]
    fn get(self, c: Option<&super::index::CartRow>) -> Option<f64> {
        match (self, c) {
            (CartValue::Items, c) => Some(c.map_or(0.0, |c| c.units as f64)),
            (CartValue::Value, c) => Some(c.map_or(0.0, |c| c.value as f64 / 100.0)),
            (CartValue::Updated, c) => c.map(|c| c.updated as f64),
        }
    }
}

/// Which symbol column a text predicate reads.
#[derive(Debug, Clone, Copy)]
pub enum SymValue {
    /// Site.
    Site,
    /// Language.
    Language,
    /// Address domain.
    EmailDomain,
}

/// A symbol test: the symbol is in `set` (sorted); `ne` and missing values
/// follow [`Cmp`]'s rules.
#[derive(Debug, Clone)]
pub struct SymTest {
    set: Vec<u32>,
    negate: bool,
    exists: Option<bool>,
}

impl SymTest {
    #[inline]
    fn test(&self, sym: u32) -> bool {
        if let Some(e) = self.exists {
            return (sym != 0) == e;
        }
        let hit = sym != 0 && self.set.binary_search(&sym).is_ok();
        hit != self.negate
    }
}

/// A compiled condition, borrowing the index's data.
pub enum Pred<'a> {
    /// Always.
    True,
    /// Never.
    False,
    /// Every one.
    All(Vec<Pred<'a>>),
    /// Any one.
    Any(Vec<Pred<'a>>),
    /// Not.
    Not(Box<Pred<'a>>),
    /// Member of a precomputed set.
    Bits(Bitset),
    /// Consent state code in the mask.
    Consent(u8),
    /// Row number / day comparison.
    Row(RowValue, Cmp),
    /// Cart value comparison.
    Cart(&'a super::index::Data, CartValue, Cmp),
    /// Row symbol test.
    Sym(SymValue, SymTest),
    /// Custom symbol column test.
    SymCol(&'a [u32], SymTest),
    /// Custom number / date column comparison.
    NumCol(&'a [f64], Cmp),
    /// Custom date column comparison.
    DayCol(&'a [i32], Cmp),
    /// Custom boolean column: (wanted, negate, exists).
    BoolCol(&'a [u8], Option<bool>, bool, Option<bool>),
}

impl Pred<'_> {
    #[inline]
    fn test(&self, id: usize, r: &Row) -> bool {
        match self {
            Pred::True => true,
            Pred::False => false,
            Pred::All(v) => v.iter().all(|p| p.test(id, r)),
            Pred::Any(v) => v.iter().any(|p| p.test(id, r)),
            Pred::Not(p) => !p.test(id, r),
            Pred::Bits(b) => b.has(id),
            Pred::Consent(mask) => mask & (1 << r.consent) != 0,
            Pred::Row(v, c) => c.test(v.get(r)),
            Pred::Cart(d, v, c) => c.test(v.get(d.carts.get(&(id as u32)))),
            Pred::Sym(v, t) => t.test(match v {
                SymValue::Site => r.site,
                SymValue::Language => r.language,
                SymValue::EmailDomain => r.email_domain,
            }),
            Pred::SymCol(col, t) => t.test(col.get(id).copied().unwrap_or(0)),
            Pred::NumCol(col, c) => c.test(col.get(id).copied().filter(|x| !x.is_nan())),
            Pred::DayCol(col, c) => c.test(
                col.get(id)
                    .copied()
                    .filter(|d| *d != NO_DAY)
                    .map(|d| d as f64),
            ),
            Pred::BoolCol(col, want, negate, exists) => {
                let v = col.get(id).copied().unwrap_or(0);
                if let Some(e) = exists {
                    return (v != 0) == *e;
                }
                let hit = v != 0 && Some(v == 2) == *want;
                hit != *negate
            }
        }
    }
}

/// Compiles `cond` against `data`. `Err`: a name the data does not resolve
/// (an unknown list or field, a wrong type), with the reason.
pub fn compile<'a>(
    cond: &Cond,
    data: &'a Data,
    catalog: &Catalog,
    today: NaiveDate,
) -> Result<Pred<'a>, String> {
    let max = data.max_id();
    let day = |d: DayExpr| d.resolve(today);
    Ok(match cond {
        Cond::All(v) => Pred::All(
            v.iter()
                .map(|c| compile(c, data, catalog, today))
                .collect::<Result<_, _>>()?,
        ),
        Cond::Any(v) => Pred::Any(
            v.iter()
                .map(|c| compile(c, data, catalog, today))
                .collect::<Result<_, _>>()?,
        ),
        Cond::Not(c) => Pred::Not(Box::new(compile(c, data, catalog, today)?)),
        Cond::InList(names, _) => {
            let mut b = Bitset::new(max);
            for n in names {
                let Some(id) = catalog.lists.get(&n.to_lowercase()) else {
                    return Err(format!("no list named `{n}`"));
                };
                if let Some(s) = data.lists.get(id) {
                    s.0.iter().for_each(|&i| b.set(i));
                }
            }
            Pred::Bits(b)
        }
        Cond::Bought {
            sku,
            values,
            after,
            before,
        } => {
            let lo = after.map_or(0, |d| posting_day(day(d)));
            let hi = before.map_or(u16::MAX, |d| posting_day(day(d)));
            let map = if *sku {
                &data.bought_sku
            } else {
                &data.bought_category
            };
            let mut b = Bitset::new(max);
            for v in values {
                if let Some(p) = map.get(&data.syms.get(v)) {
                    for (id, d) in p.ids.iter().zip(&p.days) {
                        if (lo..=hi).contains(d) {
                            b.set(*id);
                        }
                    }
                }
            }
            Pred::Bits(b)
        }
        Cond::Cart { sku, values } => {
            let map = if *sku {
                &data.cart_sku
            } else {
                &data.cart_category
            };
            let mut b = Bitset::new(max);
            for v in values {
                if let Some(s) = map.get(&data.syms.get(v)) {
                    s.0.iter().for_each(|&i| b.set(i));
                }
            }
            Pred::Bits(b)
        }
        Cond::Opened(n) | Cond::Clicked(n) | Cond::NotOpened(n) => {
            let Some(s) = data.sends.get(n) else {
                return Ok(Pred::False);
            };
            let words = |b: &super::index::Bits| {
                let mut w = b.0.clone();
                w.resize(max / 64 + 1, 0);
                Bitset { words: w }
            };
            match cond {
                Cond::Opened(_) => Pred::Bits(words(&s.opened)),
                Cond::Clicked(_) => Pred::Bits(words(&s.clicked)),
                _ => {
                    let mut b = words(&s.sent);
                    for (w, o) in b.words.iter_mut().zip(&s.opened.0) {
                        *w &= !o;
                    }
                    Pred::Bits(b)
                }
            }
        }
        Cond::NoOpenDays(n) => Pred::Not(Box::new(Pred::Row(
            RowValue::LastOpen,
            Cmp {
                op: Op::Gte,
                values: vec![(day_of_date(today) - *n as i32) as f64],
            },
        ))),
        Cond::NeverOpened => Pred::Row(
            RowValue::LastOpen,
            Cmp {
                op: Op::Exists,
                values: vec![0.0],
            },
        ),
        Cond::Field { name, op, .. } => {
            let kind = match builtin_kind(name, &catalog.sites) {
                Some(k) => k,
                None => match catalog.fields.get(name) {
                    Some(k) => k.clone(),
                    None => {
                        return Err(format!(
                            "unknown field `{name}` (neither built-in nor defined with POST /api/v1/fields)"
                        ));
                    }
                },
            };
            let operand = check_field(cond, &kind).map_err(|p| p.message)?;
            field_pred(name, *op, &kind, operand, data, today)?
        }
    })
}

fn cmp(op: Op, operand: &Operand, today: NaiveDate) -> Cmp {
    let values = match operand {
        Operand::Nums(v) => v.clone(),
        Operand::Days(v) => v.iter().map(|d| d.resolve(today) as f64).collect(),
        Operand::Exists(b) => vec![if *b { 1.0 } else { 0.0 }],
        Operand::Bool(b) => vec![if *b { 1.0 } else { 0.0 }],
        Operand::Texts(_) => Vec::new(),
    };
    Cmp { op, values }
}

fn sym_test(op: Op, operand: &Operand, data: &Data) -> SymTest {
    let (texts, exists) = match operand {
        Operand::Texts(t) => (t.as_slice(), None),
        Operand::Exists(e) => (&[][..], Some(*e)),
        _ => (&[][..], None),
    };
    let mut set: Vec<u32> = match op {
        Op::Contains | Op::StartsWith | Op::EndsWith => data
            .syms
            .iter()
            .filter(|(_, s)| {
                texts.iter().any(|t| match op {
                    Op::Contains => s.contains(t.as_str()),
                    Op::StartsWith => s.starts_with(t.as_str()),
                    _ => s.ends_with(t.as_str()),
                })
            })
            .map(|(n, _)| n)
            .collect(),
        _ => texts
            .iter()
            .map(|t| data.syms.get(t))
            .filter(|s| *s != 0)
            .collect(),
    };
    set.sort_unstable();
    SymTest {
        set,
        negate: op == Op::Ne,
        exists,
    }
}

fn set_pred<'a>(
    map: &std::collections::HashMap<u32, IdSet>,
    op: Op,
    operand: &Operand,
    data: &'a Data,
) -> Pred<'a> {
    let max = data.max_id();
    match (op, operand) {
        (Op::Exists, Operand::Exists(e)) => {
            let mut b = Bitset::new(max);
            map.values()
                .for_each(|s| s.0.iter().for_each(|&i| b.set(i)));
            if *e {
                Pred::Bits(b)
            } else {
                Pred::Not(Box::new(Pred::Bits(b)))
            }
        }
        (_, Operand::Texts(t)) => {
            let mut b = Bitset::new(max);
            for x in t {
                if let Some(s) = map.get(&data.syms.get(x)) {
                    s.0.iter().for_each(|&i| b.set(i));
                }
            }
            Pred::Bits(b)
        }
        _ => Pred::False,
    }
}

fn field_pred<'a>(
    name: &str,
    op: Op,
    kind: &Kind,
    operand: Operand,
    data: &'a Data,
    today: NaiveDate,
) -> Result<Pred<'a>, String> {
    let row = |v: RowValue| Pred::Row(v, cmp(op, &operand, today));
    let sym = |v: SymValue| Pred::Sym(v, sym_test(op, &operand, data));
    Ok(match name {
        "consent" => match &operand {
            Operand::Exists(e) => {
                if *e {
                    Pred::True
                } else {
                    Pred::False
                }
            }
            Operand::Texts(t) => {
                let mut mask = 0u8;
                for s in t {
                    if let Some(c) = crate::contacts::model::ConsentState::parse(s) {
                        mask |= 1 << c.code();
                    }
                }
                if op == Op::Ne {
                    Pred::Not(Box::new(Pred::Consent(mask)))
                } else {
                    Pred::Consent(mask)
                }
            }
            _ => Pred::False,
        },
        "site" => sym(SymValue::Site),
        "language" => sym(SymValue::Language),
        "email_domain" => sym(SymValue::EmailDomain),
        "created_at" => row(RowValue::Created),
        "order_count" => row(RowValue::OrderCount),
        "order_sum" => row(RowValue::OrderSum),
        "average_order" => row(RowValue::Average),
        "logins" => row(RowValue::Logins),
        "first_order" => row(RowValue::FirstOrder),
        "last_order" => row(RowValue::LastOrder),
        "last_login" => row(RowValue::LastLogin),
        "cart_items" => Pred::Cart(data, CartValue::Items, cmp(op, &operand, today)),
        "cart_value" => Pred::Cart(data, CartValue::Value, cmp(op, &operand, today)),
        "cart_updated" => Pred::Cart(data, CartValue::Updated, cmp(op, &operand, today)),
        "last_open" => row(RowValue::LastOpen),
        "last_click" => row(RowValue::LastClick),
        "tags" => set_pred(&data.tags, op, &operand, data),
        "payment_types" => set_pred(&data.payments, op, &operand, data),
        _ => match (data.fields.get(name), kind) {
            // A defined field no contact has a value for yet.
            (None, _) => {
                let none = match (op, &operand) {
                    (Op::Exists, Operand::Exists(e)) => !e,
                    (Op::Ne, _) => true,
                    _ => false,
                };
                if none { Pred::True } else { Pred::False }
            }
            (Some(Column::Text(c) | Column::Choice(c)), Kind::Text | Kind::Choice(_)) => {
                Pred::SymCol(c, sym_test(op, &operand, data))
            }
            (Some(Column::Number(c)), Kind::Number) => Pred::NumCol(c, cmp(op, &operand, today)),
            (Some(Column::Date(c)), Kind::Date) => Pred::DayCol(c, cmp(op, &operand, today)),
            (Some(Column::Bool(c)), Kind::Bool) => match operand {
                Operand::Bool(b) => Pred::BoolCol(c, Some(b), op == Op::Ne, None),
                Operand::Exists(e) => Pred::BoolCol(c, None, false, Some(e)),
                _ => Pred::False,
            },
            _ => {
                return Err(format!(
                    "field `{name}` holds values of another type than its definition says"
                ));
            }
        },
    })
}

/// Whether one contact matches a compiled predicate.
pub fn test_one(pred: &Pred<'_>, data: &Data, id: u64) -> bool {
    let Ok(i) = usize::try_from(id) else {
        return false;
    };
    data.rows
        .get(i)
        .is_some_and(|r| r.present && pred.test(i, r))
}

/// Evaluates a compiled predicate over every contact, in parallel.
pub fn run(pred: &Pred<'_>, data: &Data) -> Bitset {
    let rows = &data.rows;
    let words = rows.len().div_ceil(64);
    let out: Vec<u64> = (0..words)
        .into_par_iter()
        .with_min_len(256)
        .map(|w| {
            let mut bits = 0u64;
            let start = w * 64;
            let end = (start + 64).min(rows.len());
            for (id, r) in rows[start..end].iter().enumerate() {
                if r.present && pred.test(start + id, r) {
                    bits |= 1 << id;
                }
            }
            bits
        })
        .collect();
    Bitset { words: out }
}
