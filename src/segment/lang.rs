//! The condition language of segments: parsing a TOML file (or the same
//! structure as JSON from the API) into a [`Cond`] tree, with every problem
//! located by line and column (or JSON path) and all of them reported at once.
//!
//! A segment is one condition table. Combinators: `all = [..]`, `any = [..]`,
//! `not = {..}`. Leaves:
//! - `field = NAME` with exactly one operator key (`eq`, `ne`, `lt`, `lte`,
//!   `gt`, `gte`, `before`, `after`, `in`, `contains`, `starts_with`,
//!   `ends_with`, `exists`) — any contact field, built-in attribute or
//!   aggregate ([`super::BUILTINS`]);
//! - `in_list = NAME | [NAMES]`;
//! - `bought_category` / `bought_sku = VALUE | [VALUES]`, optionally with
//!   `after` / `before` dates (ever, or within a period);
//! - `cart_category` / `cart_sku = VALUE | [VALUES]`;
//! - `opened` / `clicked` / `not_opened = CAMPAIGN NUMBER`,
//!   `no_open_days = N`, `never_opened = true`.

use std::fmt::Write as _;

use chrono::{Months, NaiveDate};

use super::Kind;
use crate::shop::model::day_of_date;

/// Where a node is: a line and column in a file, or a JSON path.
#[derive(Debug, Clone, PartialEq)]
pub struct Loc {
    /// 1-based line and column (TOML).
    pub position: Option<(usize, usize)>,
    /// Dotted path of keys and `[i]` indexes from the top.
    pub path: String,
}

/// A parsed value with its location.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where.
    pub loc: Loc,
    /// What.
    pub v: NodeV,
}

/// Values of the document tree.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeV {
    /// A table / object, keys in order.
    Table(Vec<(String, Node)>),
    /// An array.
    Array(Vec<Node>),
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
    /// A boolean.
    Bool(bool),
    /// A TOML date written without quotes.
    Date(String),
}

impl NodeV {
    fn type_name(&self) -> &'static str {
        match self {
            NodeV::Table(_) => "a table",
            NodeV::Array(_) => "an array",
            NodeV::Str(_) => "a string",
            NodeV::Num(_) => "a number",
            NodeV::Bool(_) => "a boolean",
            NodeV::Date(_) => "a date",
        }
    }
}

/// One problem in a segment definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Where.
    pub loc: Loc,
    /// What is wrong.
    pub message: String,
}

fn problem(loc: &Loc, message: impl Into<String>) -> Problem {
    Problem {
        loc: loc.clone(),
        message: message.into(),
    }
}

/// Parses TOML text into a node tree. `Err`: syntax errors.
pub fn from_toml(text: &str) -> Result<Node, Vec<Problem>> {
    if let Some((position, message)) = crate::config::syntax_error(text) {
        return Err(vec![Problem {
            loc: Loc {
                position,
                path: String::new(),
            },
            message,
        }]);
    }
    let (table, _) = toml::de::DeTable::parse_recoverable(text);
    let loc = Loc {
        position: Some((1, 1)),
        path: String::new(),
    };
    Ok(Node {
        v: toml_table(text, table.get_ref(), ""),
        loc,
    })
}

fn toml_table(text: &str, t: &toml::de::DeTable<'_>, path: &str) -> NodeV {
    NodeV::Table(
        t.iter()
            .map(|(k, v)| {
                let p = join(path, k.get_ref());
                let node = toml_node(text, v, &p);
                (k.get_ref().to_string(), node)
            })
            .collect(),
    )
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn toml_node(text: &str, v: &toml::Spanned<toml::de::DeValue<'_>>, path: &str) -> Node {
    use toml::de::DeValue;
    let loc = Loc {
        position: Some(crate::config::line_col(text, v.span().start)),
        path: path.to_string(),
    };
    let v = match v.get_ref() {
        DeValue::String(s) => NodeV::Str(s.to_string()),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            match i64::from_str_radix(
                digits.trim_start_matches(['+']).trim_start_matches("0x"),
                i.radix(),
            ) {
                Ok(n) => NodeV::Num(n as f64),
                Err(_) => NodeV::Str(i.as_str().to_string()),
            }
        }
        DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
            Ok(x) => NodeV::Num(x),
            Err(_) => NodeV::Str(f.as_str().to_string()),
        },
        DeValue::Boolean(b) => NodeV::Bool(*b),
        DeValue::Datetime(d) => NodeV::Date(d.to_string()),
        DeValue::Array(a) => NodeV::Array(
            a.iter()
                .enumerate()
                .map(|(n, x)| toml_node(text, x, &format!("{path}[{n}]")))
                .collect(),
        ),
        DeValue::Table(t) => toml_table(text, t, path),
    };
    Node { loc, v }
}

/// The JSON form of a node tree (how API segments are stored; TOML dates
/// become strings, which parse back to the same dates).
pub fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.v {
        NodeV::Table(entries) => Value::Object(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        NodeV::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        NodeV::Str(s) | NodeV::Date(s) => Value::String(s.clone()),
        NodeV::Num(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        NodeV::Bool(b) => Value::Bool(*b),
    }
}

/// Converts a JSON value (an API request) into a node tree located by path.
pub fn from_json(v: &serde_json::Value) -> Node {
    json_node(v, "")
}

fn json_node(v: &serde_json::Value, path: &str) -> Node {
    use serde_json::Value;
    let loc = Loc {
        position: None,
        path: path.to_string(),
    };
    let v = match v {
        Value::Null => NodeV::Str(String::new()),
        Value::Bool(b) => NodeV::Bool(*b),
        Value::Number(n) => NodeV::Num(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => NodeV::Str(s.clone()),
        Value::Array(a) => NodeV::Array(
            a.iter()
                .enumerate()
                .map(|(n, x)| json_node(x, &format!("{path}[{n}]")))
                .collect(),
        ),
        Value::Object(m) => NodeV::Table(
            m.iter()
                .map(|(k, x)| (k.clone(), json_node(x, &join(path, k))))
                .collect(),
        ),
    };
    Node { loc, v }
}

/// A day: absolute, or relative to the day of evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DayExpr {
    /// Days since 1970-01-01.
    Abs(i32),
    /// Today plus this many days (negative: ago).
    Days(i32),
    /// Today plus this many calendar months (negative: ago).
    Months(i32),
}

impl DayExpr {
    /// The day this means when evaluated on `today`.
    pub fn resolve(self, today: NaiveDate) -> i32 {
        match self {
            DayExpr::Abs(d) => d,
            DayExpr::Days(n) => day_of_date(today) + n,
            DayExpr::Months(n) => {
                let m = Months::new(n.unsigned_abs());
                let d = if n < 0 {
                    today.checked_sub_months(m)
                } else {
                    today.checked_add_months(m)
                };
                d.map_or(day_of_date(today), day_of_date)
            }
        }
    }
}

/// Parses `2026-01-31`, `today`, `yesterday`, `N days|weeks|months|years ago`,
/// `in N days|…` or `N days from now`.
pub fn parse_day(s: &str) -> Result<DayExpr, String> {
    let t = s.trim().to_ascii_lowercase();
    if let Ok(d) = NaiveDate::parse_from_str(&t, "%Y-%m-%d") {
        return Ok(DayExpr::Abs(day_of_date(d)));
    }
    match t.as_str() {
        "today" => return Ok(DayExpr::Days(0)),
        "yesterday" => return Ok(DayExpr::Days(-1)),
        "tomorrow" => return Ok(DayExpr::Days(1)),
        _ => {}
    }
    let (body, sign) = if let Some(b) = t.strip_suffix(" ago") {
        (b, -1)
    } else if let Some(b) = t.strip_suffix(" from now") {
        (b, 1)
    } else if let Some(b) = t.strip_prefix("in ") {
        (b, 1)
    } else {
        ("", 0)
    };
    let mut words = body.split_whitespace();
    let n = words.next().and_then(|n| n.parse::<i32>().ok());
    let unit = words.next();
    if let (Some(n), Some(unit), None, true) = (n, unit, words.next(), sign != 0)
        && (0..=100_000).contains(&n)
    {
        let n = n * sign;
        match unit.trim_end_matches('s') {
            "day" => return Ok(DayExpr::Days(n)),
            "week" => return Ok(DayExpr::Days(n * 7)),
            "month" => return Ok(DayExpr::Months(n)),
            "year" => return Ok(DayExpr::Months(n * 12)),
            _ => {}
        }
    }
    Err(format!(
        "{s:?} is not a date: write 2026-01-31, \"today\", \"90 days ago\", \"6 months ago\" or \"in 7 days\""
    ))
}

/// Comparison operators of `field` conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Equal.
    Eq,
    /// Not equal (true when the value is missing).
    Ne,
    /// Less than (dates: before).
    Lt,
    /// At most.
    Lte,
    /// Greater than (dates: after).
    Gt,
    /// At least.
    Gte,
    /// One of a list.
    In,
    /// Text: contains the substring; sets: has the member.
    Contains,
    /// Text starts with.
    StartsWith,
    /// Text ends with.
    EndsWith,
    /// Has a value (`true`) or has none (`false`).
    Exists,
}

const OPS: &[(&str, Op)] = &[
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("lt", Op::Lt),
    ("lte", Op::Lte),
    ("gt", Op::Gt),
    ("gte", Op::Gte),
    ("before", Op::Lt),
    ("after", Op::Gt),
    ("in", Op::In),
    ("contains", Op::Contains),
    ("starts_with", Op::StartsWith),
    ("ends_with", Op::EndsWith),
    ("exists", Op::Exists),
];

/// A checked operand.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Numbers (one, or several for `in`).
    Nums(Vec<f64>),
    /// Days.
    Days(Vec<DayExpr>),
    /// Texts, lower-cased (text, choice and set values).
    Texts(Vec<String>),
    /// A boolean.
    Bool(bool),
    /// For `exists`.
    Exists(bool),
}

/// A condition as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Every one holds.
    All(Vec<Cond>),
    /// At least one holds.
    Any(Vec<Cond>),
    /// Does not hold.
    Not(Box<Cond>),
    /// A field comparison; checked against the field's type when its type is
    /// known ([`check_field`]).
    Field {
        /// Field name.
        name: String,
        /// Where the field name is.
        loc: Loc,
        /// The operator's key as written (`before`, `gte`…).
        op_key: String,
        /// The operator.
        op: Op,
        /// The operand as written.
        value: Node,
    },
    /// Member of any of these lists (names).
    InList(Vec<String>, Loc),
    /// Bought (counted orders) a category or SKU, optionally in a period.
    Bought {
        /// SKU (true) or category (false).
        sku: bool,
        /// Any of these (lower-cased).
        values: Vec<String>,
        /// On or after this day.
        after: Option<DayExpr>,
        /// On or before this day.
        before: Option<DayExpr>,
    },
    /// The current cart holds a category or SKU.
    Cart {
        /// SKU (true) or category (false).
        sku: bool,
        /// Any of these (lower-cased).
        values: Vec<String>,
    },
    /// Opened campaign N.
    Opened(u64),
    /// Clicked in campaign N.
    Clicked(u64),
    /// Was sent campaign N and did not open it.
    NotOpened(u64),
    /// No open in the last N days (never opened included).
    NoOpenDays(u32),
    /// Never opened anything.
    NeverOpened,
}

const LEAF_KEYS: &str = "all, any, not, field, in_list, bought_category, bought_sku, \
                         cart_category, cart_sku, opened, clicked, not_opened, no_open_days, never_opened";

/// Parses a condition table; `resolve` gives the type of a field name if it
/// is known now (built-ins; custom fields when the store is at hand), and a
/// name it does not know is left for [`check_field`] later.
pub fn parse_cond(
    node: &Node,
    kind_of: &dyn Fn(&str) -> Option<Kind>,
    problems: &mut Vec<Problem>,
) -> Option<Cond> {
    let NodeV::Table(entries) = &node.v else {
        problems.push(problem(
            &node.loc,
            format!(
                "a condition must be a table such as {{ field = \"order_count\", gte = 3 }}, not {}",
                node.v.type_name()
            ),
        ));
        return None;
    };
    if entries.is_empty() {
        problems.push(problem(
            &node.loc,
            format!("an empty condition; use one of: {LEAF_KEYS}"),
        ));
        return None;
    }
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let only = |allowed: &[&str], problems: &mut Vec<Problem>| {
        let mut ok = true;
        for (k, v) in entries {
            if !allowed.contains(&k.as_str()) {
                problems.push(problem(
                    &v.loc,
                    format!(
                        "`{k}` does not belong in this condition (it takes: {})",
                        allowed.join(", ")
                    ),
                ));
                ok = false;
            }
        }
        ok
    };
    let first = entries[0].0.as_str();
    let head = ["all", "any", "not", "field", "in_list"]
        .iter()
        .chain(&[
            "bought_category",
            "bought_sku",
            "cart_category",
            "cart_sku",
            "opened",
            "clicked",
            "not_opened",
            "no_open_days",
            "never_opened",
        ])
        .find(|k| get(k).is_some())
        .copied();
    let Some(head) = head else {
        problems.push(problem(
            &entries[0].1.loc,
            format!("unknown condition key `{first}`; a condition is one of: {LEAF_KEYS}"),
        ));
        return None;
    };
    let v = get(head)?;
    match head {
        "all" | "any" => {
            if !only(&[head], problems) {
                return None;
            }
            let NodeV::Array(items) = &v.v else {
                problems.push(problem(
                    &v.loc,
                    format!(
                        "`{head}` takes an array of conditions, not {}",
                        v.v.type_name()
                    ),
                ));
                return None;
            };
            if items.is_empty() {
                problems.push(problem(&v.loc, format!("`{head}` is empty")));
                return None;
            }
            let n = problems.len();
            let parts: Vec<Cond> = items
                .iter()
                .filter_map(|i| parse_cond(i, kind_of, problems))
                .collect();
            if problems.len() > n {
                return None;
            }
            Some(if head == "all" {
                Cond::All(parts)
            } else {
                Cond::Any(parts)
            })
        }
        "not" => {
            if !only(&["not"], problems) {
                return None;
            }
            parse_cond(v, kind_of, problems).map(|c| Cond::Not(Box::new(c)))
        }
        "field" => {
            let NodeV::Str(name) = &v.v else {
                problems.push(problem(&v.loc, "`field` takes a field name (a string)"));
                return None;
            };
            let ops: Vec<&(String, Node)> = entries.iter().filter(|(k, _)| k != "field").collect();
            let (op_key, value) = match ops.as_slice() {
                [(k, x)] => (k, x),
                [] => {
                    problems.push(problem(
                        &v.loc,
                        format!(
                            "field `{name}` needs one operator: {}",
                            OPS.iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                    return None;
                }
                [_, (k, x), ..] => {
                    problems.push(problem(
                        &x.loc,
                        format!(
                            "`{k}`: a field condition takes exactly one operator; combine several with `all`"
                        ),
                    ));
                    return None;
                }
            };
            let Some((_, op)) = OPS.iter().find(|(k, _)| k == op_key) else {
                problems.push(problem(
                    &value.loc,
                    format!(
                        "unknown operator `{op_key}`; operators: {}",
                        OPS.iter().map(|o| o.0).collect::<Vec<_>>().join(", ")
                    ),
                ));
                return None;
            };
            let cond = Cond::Field {
                name: name.clone(),
                loc: v.loc.clone(),
                op_key: op_key.clone(),
                op: *op,
                value: value.clone(),
            };
            if let Some(kind) = kind_of(name)
                && let Err(p) = check_field(&cond, &kind)
            {
                problems.push(p);
                return None;
            }
            Some(cond)
        }
        "in_list" => {
            if !only(&["in_list"], problems) {
                return None;
            }
            let names = strings(v, "in_list", problems)?;
            Some(Cond::InList(names, v.loc.clone()))
        }
        "bought_category" | "bought_sku" => {
            if !only(&[head, "after", "before"], problems) {
                return None;
            }
            let values = strings(v, head, problems)?
                .into_iter()
                .map(|s| s.to_lowercase())
                .collect();
            let day = |k: &str, problems: &mut Vec<Problem>| -> Result<Option<DayExpr>, ()> {
                match get(k) {
                    None => Ok(None),
                    Some(n) => match day_node(n) {
                        Ok(d) => Ok(Some(d)),
                        Err(m) => {
                            problems.push(problem(&n.loc, format!("`{k}`: {m}")));
                            Err(())
                        }
                    },
                }
            };
            let after = day("after", problems).ok()?;
            let before = day("before", problems).ok()?;
            Some(Cond::Bought {
                sku: head == "bought_sku",
                values,
                after,
                before,
            })
        }
        "cart_category" | "cart_sku" => {
            if !only(&[head], problems) {
                return None;
            }
            let values = strings(v, head, problems)?
                .into_iter()
                .map(|s| s.to_lowercase())
                .collect();
            Some(Cond::Cart {
                sku: head == "cart_sku",
                values,
            })
        }
        "opened" | "clicked" | "not_opened" | "no_open_days" => {
            if !only(&[head], problems) {
                return None;
            }
            let max = if head == "no_open_days" {
                100_000.0
            } else {
                1e15
            };
            let n = match &v.v {
                NodeV::Num(n) if n.fract() == 0.0 && *n >= 1.0 && *n <= max => *n as u64,
                _ => {
                    let what = if head == "no_open_days" {
                        "a number of days (at most 100000)"
                    } else {
                        "a campaign number"
                    };
                    problems.push(problem(
                        &v.loc,
                        format!("`{head}` takes {what} (a positive whole number)"),
                    ));
                    return None;
                }
            };
            Some(match head {
                "opened" => Cond::Opened(n),
                "clicked" => Cond::Clicked(n),
                "not_opened" => Cond::NotOpened(n),
                _ => Cond::NoOpenDays(n as u32),
            })
        }
        "never_opened" => {
            if !only(&[head], problems) {
                return None;
            }
            match v.v {
                NodeV::Bool(true) => Some(Cond::NeverOpened),
                NodeV::Bool(false) => Some(Cond::Not(Box::new(Cond::NeverOpened))),
                _ => {
                    problems.push(problem(&v.loc, "`never_opened` takes true or false"));
                    None
                }
            }
        }
        _ => None,
    }
}

fn strings(v: &Node, key: &str, problems: &mut Vec<Problem>) -> Option<Vec<String>> {
    let bad = |problems: &mut Vec<Problem>, loc: &Loc| {
        problems.push(problem(
            loc,
            format!("`{key}` takes a name or an array of names"),
        ));
    };
    match &v.v {
        NodeV::Str(s) if !s.trim().is_empty() => Some(vec![s.trim().to_string()]),
        NodeV::Array(a) if !a.is_empty() => {
            let mut out = Vec::new();
            for x in a {
                match &x.v {
                    NodeV::Str(s) if !s.trim().is_empty() => out.push(s.trim().to_string()),
                    _ => {
                        bad(problems, &x.loc);
                        return None;
                    }
                }
            }
            Some(out)
        }
        _ => {
            bad(problems, &v.loc);
            None
        }
    }
}

fn day_node(n: &Node) -> Result<DayExpr, String> {
    match &n.v {
        NodeV::Str(s) | NodeV::Date(s) => parse_day(s),
        other => Err(format!(
            "a date such as \"2026-01-31\" or \"90 days ago\", not {}",
            other.type_name()
        )),
    }
}

/// Checks a `field` condition's operator and operand against the field's
/// type, and returns the operand converted for evaluation.
pub fn check_field(c: &Cond, kind: &Kind) -> Result<Operand, Problem> {
    let Cond::Field {
        name,
        op_key,
        op,
        value,
        ..
    } = c
    else {
        return Err(problem(
            &Loc {
                position: None,
                path: String::new(),
            },
            "not a field condition",
        ));
    };
    let allowed: &[Op] = match kind {
        Kind::Number | Kind::Date => &[
            Op::Eq,
            Op::Ne,
            Op::Lt,
            Op::Lte,
            Op::Gt,
            Op::Gte,
            Op::In,
            Op::Exists,
        ],
        Kind::Text => &[
            Op::Eq,
            Op::Ne,
            Op::In,
            Op::Contains,
            Op::StartsWith,
            Op::EndsWith,
            Op::Exists,
        ],
        Kind::Choice(_) => &[Op::Eq, Op::Ne, Op::In, Op::Exists],
        Kind::Bool => &[Op::Eq, Op::Ne, Op::Exists],
        Kind::Set => &[Op::Contains, Op::Exists],
    };
    let at = |m: String| problem(&value.loc, m);
    if !allowed.contains(op) {
        let mut names = String::new();
        for (k, o) in OPS {
            if allowed.contains(o) {
                let _ = write!(names, "{}{k}", if names.is_empty() { "" } else { ", " });
            }
        }
        return Err(at(format!(
            "operator `{op_key}` does not apply to {} field `{name}` (use {names})",
            kind.name()
        )));
    }
    if *op == Op::Exists {
        return match value.v {
            NodeV::Bool(b) => Ok(Operand::Exists(b)),
            _ => Err(at("`exists` takes true or false".into())),
        };
    }
    let items: Vec<&Node> = match (&value.v, op) {
        (NodeV::Array(a), Op::In) if !a.is_empty() => a.iter().collect(),
        (NodeV::Array(a), Op::Contains) if matches!(kind, Kind::Set) && !a.is_empty() => {
            a.iter().collect()
        }
        (_, Op::In) => return Err(at("`in` takes a non-empty array of values".into())),
        (NodeV::Array(_), _) => {
            return Err(at(format!(
                "`{op_key}` takes one value; use `in` for several"
            )));
        }
        _ => vec![value],
    };
    let wrong = |n: &Node, want: &str| {
        problem(
            &n.loc,
            format!(
                "`{op_key}` on {} field `{name}` needs {want}, not {}",
                kind.name(),
                n.v.type_name()
            ),
        )
    };
    match kind {
        Kind::Number => items
            .iter()
            .map(|n| match n.v {
                NodeV::Num(x) if x.is_finite() => Ok(x),
                NodeV::Str(ref s) if s.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
                    Ok(s.trim().parse::<f64>().unwrap_or_default())
                }
                _ => Err(wrong(n, "a number")),
            })
            .collect::<Result<_, _>>()
            .map(Operand::Nums),
        Kind::Date => items
            .iter()
            .map(|n| day_node(n).map_err(|m| problem(&n.loc, format!("`{op_key}`: {m}"))))
            .collect::<Result<_, _>>()
            .map(Operand::Days),
        Kind::Bool => match items[0].v {
            NodeV::Bool(b) => Ok(Operand::Bool(b)),
            _ => Err(wrong(items[0], "true or false")),
        },
        Kind::Text | Kind::Set | Kind::Choice(_) => {
            let mut out = Vec::new();
            for n in items {
                let s = match &n.v {
                    NodeV::Str(s) => s.trim().to_lowercase(),
                    NodeV::Num(x) => x.to_string(),
                    _ => return Err(wrong(n, "a text value")),
                };
                if let Kind::Choice(choices) = kind
                    && !choices.iter().any(|c| c.to_lowercase() == s)
                {
                    return Err(problem(
                        &n.loc,
                        format!(
                            "`{s}` is not a value of field `{name}` (one of: {})",
                            choices.join(", ")
                        ),
                    ));
                }
                out.push(s);
            }
            Ok(Operand::Texts(out))
        }
    }
}

/// The names of lists (`in_list`) and fields (`field`) a condition uses.
pub fn references(c: &Cond, lists: &mut Vec<(String, Loc)>, fields: &mut Vec<(String, Loc)>) {
    match c {
        Cond::All(v) | Cond::Any(v) => v.iter().for_each(|x| references(x, lists, fields)),
        Cond::Not(x) => references(x, lists, fields),
        Cond::Field { name, loc, .. } => fields.push((name.clone(), loc.clone())),
        Cond::InList(names, loc) => names
            .iter()
            .for_each(|n| lists.push((n.clone(), loc.clone()))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(name: &str) -> Option<Kind> {
        super::super::builtin_kind(name, &[])
    }

    fn parse(text: &str) -> Result<Cond, Vec<String>> {
        let node = from_toml(text).map_err(|p| vec![format!("{p:?}")])?;
        let mut problems = Vec::new();
        match parse_cond(&node, &kinds, &mut problems) {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems
                .iter()
                .map(|p| {
                    let (l, c) = p.loc.position.unwrap_or((0, 0));
                    format!("{l}:{c} {}", p.message)
                })
                .collect()),
        }
    }

    #[test]
    fn nested_conditions_parse() -> Result<(), Vec<String>> {
        let c = parse(
            r#"all = [
  { field = "language", eq = "PL" },
  { field = "order_count", gte = 3 },
  { any = [ { in_list = "vip" }, { bought_category = "shoes", after = "365 days ago" } ] },
  { not = { field = "wholesale", eq = true } },
]"#,
        )?;
        let Cond::All(parts) = c else {
            return Err(vec!["not all".into()]);
        };
        assert_eq!(parts.len(), 4);
        assert!(matches!(&parts[2], Cond::Any(x) if x.len() == 2));
        Ok(())
    }

    #[test]
    fn every_problem_is_located() {
        let e = parse(
            r#"all = [
  { field = "order_count", contains = "x" },
  { field = "last_order", before = "last tuesday" },
  { colour = "red" },
  { field = "consent", eq = "maybe" },
  { field = "order_count", gte = "many" },
]"#,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].starts_with("2:") && e[0].contains("`contains` does not apply to number"));
        assert!(e[1].starts_with("3:") && e[1].contains("not a date"));
        assert!(e[2].starts_with("4:") && e[2].contains("unknown condition key `colour`"));
        assert!(e[3].starts_with("5:") && e[3].contains("not a value of field `consent`"));
        assert!(e[4].starts_with("6:") && e[4].contains("needs a number"));
    }

    #[test]
    fn relative_days() -> Result<(), String> {
        let today = NaiveDate::from_ymd_opt(2026, 3, 31).ok_or("date")?;
        let d = |s: &str| parse_day(s).map(|x| x.resolve(today));
        assert_eq!(d("today")?, day_of_date(today));
        assert_eq!(d("90 days ago")?, day_of_date(today) - 90);
        assert_eq!(d("2 weeks ago")?, day_of_date(today) - 14);
        let feb = NaiveDate::from_ymd_opt(2026, 2, 28).ok_or("date")?;
        assert_eq!(d("1 month ago")?, day_of_date(feb));
        assert_eq!(d("in 7 days")?, day_of_date(today) + 7);
        assert!(parse_day("soon").is_err());
        Ok(())
    }
}
