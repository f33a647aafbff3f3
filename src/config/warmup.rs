//! `[sender.warmup]`: a new sender's day-by-day allowance, overall and per
//! provider group, so that its volume grows as its reputation does.
//!
//! ```toml
//! [sender.warmup]
//! start = "2026-12-01"          # period 0 begins here (UTC midnight, or RFC 3339)
//! period = "1d"                 # the length of one step (tests use seconds)
//! daily = [500, 1000, 2000]     # at most this many messages in periods 0, 1, 2
//! groups = { wp = [50, 100, 200], google = [200, 400, 800] }
//! ```
//! After the last step of a list, that limit ends.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate};
use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::duration;

/// `[sender.warmup]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarmup {
    /// When period 0 begins.
    pub start: Option<Spanned<String>>,
    /// One step's length (default "1d").
    pub period: Option<Spanned<String>>,
    /// Messages allowed per period, in all.
    pub daily: Option<Spanned<Vec<i64>>>,
    /// Messages allowed per period, per provider group.
    #[serde(default)]
    pub groups: BTreeMap<String, Spanned<Vec<i64>>>,
}

/// A validated warm-up schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    /// Start of period 0 (ms since the epoch).
    pub start_ms: i64,
    /// Length of one period (ms).
    pub period_ms: i64,
    /// Allowance per period for all the sender's mail.
    pub overall: Vec<u64>,
    /// Allowance per period for one provider group.
    pub groups: BTreeMap<String, Vec<u64>>,
}

impl Warmup {
    /// The period `now_ms` falls in (0 before the start).
    pub fn period_at(&self, now_ms: i64) -> u64 {
        (now_ms.saturating_sub(self.start_ms).max(0) / self.period_ms.max(1)) as u64
    }

    /// When period `p` ends (ms).
    pub fn period_end(&self, p: u64) -> i64 {
        self.start_ms
            .saturating_add((p as i64).saturating_add(1).saturating_mul(self.period_ms))
    }

    /// The allowance of `scope` (`None`: overall; `Some(group)`) in period
    /// `p`; `None`: no limit (none set, or past the end of the schedule).
    pub fn allowance(&self, scope: Option<&str>, p: u64) -> Option<u64> {
        let list = match scope {
            None => &self.overall,
            Some(g) => self.groups.get(g)?,
        };
        list.get(usize::try_from(p).ok()?).copied()
    }

    /// Whether any allowance applies in period `p`.
    pub fn active(&self, p: u64) -> bool {
        self.allowance(None, p).is_some()
            || self
                .groups
                .keys()
                .any(|g| self.allowance(Some(g), p).is_some())
    }
}

/// Checks `[sender.warmup]`; `None` (with the problem reported) when wrong.
pub(super) fn validate(c: &mut Checker<'_>, key: &str, raw: &RawWarmup) -> Option<Warmup> {
    let Some(start) = &raw.start else {
        c.missing(
            &format!("{key}.start"),
            "the first day, such as start = \"2026-12-01\"",
        );
        return None;
    };
    let start_ms = match NaiveDate::parse_from_str(start.get_ref(), "%Y-%m-%d") {
        Ok(d) => d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis()),
        Err(_) => DateTime::parse_from_rfc3339(start.get_ref())
            .ok()
            .map(|t| t.timestamp_millis()),
    };
    let Some(start_ms) = start_ms else {
        c.at(
            &format!("{key}.start"),
            start,
            "not a date (2026-12-01) or an RFC 3339 time",
        );
        return None;
    };
    let period_ms = match &raw.period {
        Some(p) => duration(c, &format!("{key}.period"), p)?.as_millis() as i64,
        None => 86_400_000,
    };
    let list = |c: &mut Checker<'_>, k: String, v: &Spanned<Vec<i64>>| -> Option<Vec<u64>> {
        if v.get_ref().is_empty() || v.get_ref().iter().any(|n| *n < 1) {
            c.at(
                &k,
                v,
                "must list allowances of at least 1, one per period, such as [500, 1000, 2000]",
            );
            return None;
        }
        Some(v.get_ref().iter().map(|n| *n as u64).collect())
    };
    let overall = match &raw.daily {
        Some(v) => list(c, format!("{key}.daily"), v)?,
        None => Vec::new(),
    };
    let mut groups = BTreeMap::new();
    for (g, v) in &raw.groups {
        groups.insert(g.clone(), list(c, format!("{key}.groups.{g}"), v)?);
    }
    if overall.is_empty() && groups.is_empty() {
        c.at(
            &format!("{key}.start"),
            start,
            "a warm-up needs `daily` or `groups` allowances",
        );
        return None;
    }
    Some(Warmup {
        start_ms,
        period_ms,
        overall,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_allowances() {
        let w = Warmup {
            start_ms: 1000,
            period_ms: 100,
            overall: vec![5, 10],
            groups: [("wp".to_string(), vec![1, 2, 3])].into(),
        };
        assert_eq!(w.period_at(0), 0);
        assert_eq!(w.period_at(1099), 0);
        assert_eq!(w.period_at(1100), 1);
        assert_eq!(w.period_end(1), 1200);
        assert_eq!(w.allowance(None, 1), Some(10));
        assert_eq!(w.allowance(None, 2), None);
        assert_eq!(w.allowance(Some("wp"), 2), Some(3));
        assert_eq!(w.allowance(Some("google"), 0), None);
        assert!(w.active(2));
        assert!(!w.active(3));
    }
}
