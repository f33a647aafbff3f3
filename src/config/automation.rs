//! `[automation]`: what every automation shares (on/off, the marketing
//! frequency cap, quiet hours, how late a step may still go, how often the
//! runner looks). The flows themselves are files in `paths.automations`.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::duration;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// `[automation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAutomation {
    /// Automations run at all (default true).
    pub enabled: Option<Spanned<bool>>,
    /// At most this many marketing messages (of automations) per contact
    /// within `frequency_window` (default: no cap).
    pub max_marketing_per_contact: Option<Spanned<i64>>,
    /// The window of the cap (default "7 days").
    pub frequency_window: Option<Spanned<String>>,
    /// "21:00-08:00": no marketing step goes out in these hours, local to
    /// the contact's site; it waits for the end.
    pub quiet_hours: Option<Spanned<String>>,
    /// A step due longer ago than this is skipped, not sent (default "1 day").
    pub max_late: Option<Spanned<String>>,
    /// The longest the runner sleeps between looks (default "1s").
    pub poll: Option<Spanned<String>>,
    /// How often `segment_entered` flows evaluate their segment (default
    /// "1m").
    pub segment_check: Option<Spanned<String>>,
}

/// Validated `[automation]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomationConfig {
    /// Automations run (`enabled`).
    pub enabled: bool,
    /// Marketing messages per contact within the window; `None`: no cap.
    pub max_marketing_per_contact: Option<u32>,
    /// The cap's window (`frequency_window`), in milliseconds.
    pub frequency_window_ms: i64,
    /// Quiet hours `(start, end)` in minutes of the day, local to the
    /// contact's site; `start > end` wraps midnight; never equal.
    pub quiet_hours: Option<(u32, u32)>,
    /// How late a step may still be sent (`max_late`), in milliseconds.
    pub max_late_ms: i64,
    /// The runner's longest sleep (`poll`), in milliseconds.
    pub tick_ms: i64,
    /// How often segment flows are checked (`segment_check`), in ms.
    pub segment_check_ms: i64,
}

impl Default for AutomationConfig {
    fn default() -> AutomationConfig {
        AutomationConfig {
            enabled: true,
            max_marketing_per_contact: None,
            frequency_window_ms: 7 * DAY_MS,
            quiet_hours: None,
            max_late_ms: DAY_MS,
            tick_ms: 1000,
            segment_check_ms: 60_000,
        }
    }
}

/// A clock time "HH:MM" (or "H:MM"), 00:00 to 23:59, as minutes of the day.
pub fn parse_clock(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a time of day such as \"09:00\" (00:00 to 23:59)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let digits = |x: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Quiet hours "21:00-08:00" as `(start, end)` minutes of the day.
pub fn parse_quiet_hours(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("`{s}` is not a span of hours such as \"21:00-08:00\" (start-end)")
    })?;
    let (start, end) = (parse_clock(a)?, parse_clock(b)?);
    if start == end {
        return Err("start and end are the same time: the span would be empty".to_string());
    }
    Ok((start, end))
}

/// A duration between `min` and `max` (both inclusive), in milliseconds.
fn ms_between(
    c: &mut Checker<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    default_ms: i64,
    (min, min_text): (Duration, &str),
    (max, max_text): (Duration, &str),
) -> Option<i64> {
    let Some(v) = v else {
        return Some(default_ms);
    };
    let d = duration(c, key, v)?;
    if d < min || d > max {
        c.at(key, v, format!("must be between {min_text} and {max_text}"));
        return None;
    }
    Some(d.as_millis() as i64)
}

/// Validates `[automation]` (defaults when absent).
pub(super) fn validate(c: &mut Checker<'_>, raw: &RawAutomation) -> Option<AutomationConfig> {
    let d = AutomationConfig::default();
    let day = Duration::from_secs(86400);
    let cap = match &raw.max_marketing_per_contact {
        None => Some(None),
        Some(v) if (1..=1000).contains(v.get_ref()) => Some(Some(*v.get_ref() as u32)),
        Some(v) => {
            c.at(
                "automation.max_marketing_per_contact",
                v,
                "must be between 1 and 1000",
            );
            None
        }
    };
    let window = ms_between(
        c,
        "automation.frequency_window",
        &raw.frequency_window,
        d.frequency_window_ms,
        (Duration::from_secs(3600), "1 hour"),
        (90 * day, "90 days"),
    );
    let quiet = match &raw.quiet_hours {
        None => Some(None),
        Some(v) => match parse_quiet_hours(v.get_ref()) {
            Ok(q) => Some(Some(q)),
            Err(e) => {
                c.at("automation.quiet_hours", v, e);
                None
            }
        },
    };
    let max_late = ms_between(
        c,
        "automation.max_late",
        &raw.max_late,
        d.max_late_ms,
        (Duration::from_secs(60), "1 minute"),
        (90 * day, "90 days"),
    );
    let tick = ms_between(
        c,
        "automation.poll",
        &raw.poll,
        d.tick_ms,
        (Duration::from_millis(100), "100ms"),
        (Duration::from_secs(60), "1 minute"),
    );
    let segment_check = ms_between(
        c,
        "automation.segment_check",
        &raw.segment_check,
        d.segment_check_ms,
        (Duration::from_secs(1), "1s"),
        (day, "1 day"),
    );
    Some(AutomationConfig {
        enabled: raw.enabled.as_ref().map_or(d.enabled, |v| *v.get_ref()),
        max_marketing_per_contact: cap?,
        frequency_window_ms: window?,
        quiet_hours: quiet?,
        max_late_ms: max_late?,
        tick_ms: tick?,
        segment_check_ms: segment_check?,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse_clock, parse_quiet_hours};

    #[test]
    fn clocks_and_quiet_hours() {
        assert_eq!(parse_clock("09:00"), Ok(540));
        assert_eq!(parse_clock("0:05"), Ok(5));
        assert_eq!(parse_clock("23:59"), Ok(1439));
        for bad in [
            "24:00", "12:60", "9", "09:0", "ab:cd", "", "-1:00", "009:00",
        ] {
            assert!(parse_clock(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_quiet_hours("21:00-08:00"), Ok((1260, 480)));
        assert_eq!(parse_quiet_hours("13:00 - 14:30"), Ok((780, 870)));
        assert!(parse_quiet_hours("21:00").is_err());
        assert!(parse_quiet_hours("08:00-08:00").is_err());
        assert!(parse_quiet_hours("08:00-25:00").is_err());
    }
}
