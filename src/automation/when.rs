//! Time arithmetic of automations: pure functions over instants (ms),
//! site time zones and clock times.
//!
//! Instants are milliseconds since the epoch (UTC); dates and clock times
//! are local to a site's time zone (`[[site]] time_zone`). A local time that
//! a daylight-saving change skips counts at the first instant after it (the
//! change itself); one that happens twice counts at the earlier. Nothing
//! here panics: instants and dates beyond the years ±9999 are clamped to it.

use std::time::Duration;

use chrono::offset::LocalResult;
use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Longest offset `parse_offset` takes: 10 years (of 365.25 days, as
/// humantime counts them).
const MAX_OFFSET: Duration = Duration::from_secs(10 * 31_557_600);

/// The dates this module works within (chrono's own range is wider, but
/// adding a zone's offset at its edges would overflow).
fn min_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(-9999, 1, 1).unwrap_or(NaiveDate::MIN)
}

fn max_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(9999, 12, 31).unwrap_or(NaiveDate::MAX)
}

fn clamp_date(d: NaiveDate) -> NaiveDate {
    d.clamp(min_date(), max_date())
}

/// `ms` clamped to the instants of the supported dates.
fn clamp_ms(ms: i64) -> i64 {
    let lo = min_date()
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
        + 24 * HOUR_MS;
    let hi = max_date()
        .and_time(NaiveTime::MIN)
        .and_utc()
        .timestamp_millis()
        - 24 * HOUR_MS;
    ms.clamp(lo, hi)
}

/// The local date and time of instant `ms` in `tz`.
fn local(ms: i64, tz: Tz) -> NaiveDateTime {
    match DateTime::from_timestamp_millis(clamp_ms(ms)) {
        Some(t) => t.with_timezone(&tz).naive_local(),
        None => NaiveDateTime::MIN,
    }
}

/// Every instant whose local time in `tz` is `t` (one; two when the clocks
/// go back), earliest first; the instant the clocks jump when `t` is skipped.
fn instants_of(t: NaiveDateTime, tz: Tz) -> Vec<i64> {
    let t = clamp_date(t.date()).and_time(t.time());
    match tz.from_local_datetime(&t) {
        LocalResult::Single(x) => vec![x.timestamp_millis()],
        LocalResult::Ambiguous(a, b) => {
            let (a, b) = (a.timestamp_millis(), b.timestamp_millis());
            vec![a.min(b), a.max(b)]
        }
        LocalResult::None => vec![first_at_or_after(t, tz)],
    }
}

/// The first instant whose local time is at or after `t` (which the clocks
/// skip): a binary search around it, where local time only moves forward.
fn first_at_or_after(t: NaiveDateTime, tz: Tz) -> i64 {
    // Zone offsets are within ±26 hours of UTC, so local time at `lo` is
    // before `t` and at `hi` after it.
    let guess = t.and_utc().timestamp_millis();
    let (mut lo, mut hi) = (guess - 26 * HOUR_MS, guess + 26 * HOUR_MS);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local(mid, tz) >= t {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The first instant at which local date `date` in `tz` is `minutes` past
/// midnight (clamped to 23:59).
fn clock_on(date: NaiveDate, minutes: u32, tz: Tz) -> Vec<i64> {
    let m = minutes.min(24 * 60 - 1);
    let time = NaiveTime::from_hms_opt(m / 60, m % 60, 0).unwrap_or(NaiveTime::MIN);
    instants_of(date.and_time(time), tz)
}

/// A signed offset such as "-2 days", "+3 days", "3 days", "1h", "90m" or
/// "0", in milliseconds; the magnitude is a humantime duration of at most
/// 10 years.
pub fn parse_offset(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let (sign, rest) = match t.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, t.strip_prefix('+').unwrap_or(t)),
    };
    let rest = rest.trim();
    if rest == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(rest).map_err(|e| {
        format!("`{s}` is not an offset such as \"-2 days\", \"3 days\" or \"1h\": {e}")
    })?;
    if d > MAX_OFFSET {
        return Err(format!("`{s}`: an offset is at most 10 years"));
    }
    // At most 10 years: far within i64 milliseconds.
    Ok(sign * d.as_millis() as i64)
}

/// A clock time "09:00" as minutes of the day (00:00 to 23:59).
pub fn parse_clock(s: &str) -> Result<u32, String> {
    crate::config::automation::parse_clock(s)
}

/// The first instant at or after `ms` whose local time in `tz` is
/// `minutes` past midnight (clamped to 23:59). A skipped local time counts
/// at the first instant after it (the change); one that happens twice, at
/// the earlier of its instants at or after `ms`.
pub fn next_clock(ms: i64, minutes: u32, tz: Tz) -> i64 {
    let today = local(ms, tz).date();
    let mut last = ms;
    for days in 0..3 {
        let Some(d) = today.checked_add_days(Days::new(days)) else {
            break;
        };
        for x in clock_on(d, minutes, tz) {
            if x >= ms {
                return x;
            }
            last = x;
        }
    }
    last.max(ms)
}

/// When the local time of `ms` in `tz` is within the quiet hours `[start,
/// end)` (minutes of the day; `start > end` wraps midnight), the instant
/// they end; `None` outside them (and when `start == end`).
pub fn quiet_until(ms: i64, quiet: (u32, u32), tz: Tz) -> Option<i64> {
    let (start, end) = quiet;
    let s = local(ms, tz).time().num_seconds_from_midnight();
    let (a, b) = (start * 60, end * 60);
    let inside = if a < b {
        a <= s && s < b
    } else if a > b {
        s >= a || s < b
    } else {
        false
    };
    inside.then(|| next_clock(ms, end, tz))
}

/// The instant local date `date` starts in `tz` (its midnight, or the first
/// instant after it when the clocks skip midnight).
pub fn local_midnight(date: NaiveDate, tz: Tz) -> i64 {
    clock_on(clamp_date(date), 0, tz)
        .first()
        .copied()
        .unwrap_or_default()
}

/// `offset_ms` after the start of local date `date` in `tz`.
pub fn day_instant(date: NaiveDate, offset_ms: i64, tz: Tz) -> i64 {
    local_midnight(date, tz).saturating_add(offset_ms)
}

/// The date of month/day in `year`: a day past the month's end (29
/// February in a common year) is its last day; the month is clamped to
/// 1..=12.
fn anniversary(year: i32, month: u32, day: u32) -> NaiveDate {
    let month = month.clamp(1, 12);
    let first = NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MIN);
    let last = first
        .checked_add_months(chrono::Months::new(1))
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day());
    NaiveDate::from_ymd_opt(year, month, day.clamp(1, last)).unwrap_or(first)
}

/// The next yearly date month/day, `offset_days` moved, that falls on or
/// after the local day of `after_ms` in `tz` (today's counts): its year
/// (of the anniversary itself, before the offset) and the instant that
/// moved date starts. 29 February is kept on 28 February in years without
/// it.
pub fn yearly_occurrence(
    month: u32,
    day: u32,
    offset_days: i64,
    after_ms: i64,
    tz: Tz,
) -> (i32, i64) {
    // Ten years of days at most make sense; more would leave the range.
    let offset = offset_days.clamp(-400_000, 400_000);
    let shift = |d: NaiveDate, by: i64| {
        let moved = if by >= 0 {
            d.checked_add_days(Days::new(by.unsigned_abs()))
        } else {
            d.checked_sub_days(Days::new(by.unsigned_abs()))
        };
        clamp_date(moved.unwrap_or(if by >= 0 { max_date() } else { min_date() }))
    };
    let today = local(after_ms, tz).date();
    // The anniversary must be on or after `today - offset`.
    let target = shift(today, -offset);
    let mut year = target.year();
    if anniversary(year, month, day) < target {
        year += 1;
    }
    let due = shift(anniversary(year, month, day), offset);
    (year, local_midnight(due, tz))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    const WARSAW: Tz = Tz::Europe__Warsaw;
    const DAY: i64 = 24 * HOUR_MS;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> i64 {
        chrono::Utc
            .with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .map(|t| t.timestamp_millis())
            .unwrap_or_else(|| panic!("{y}-{mo}-{d} {h}:{mi}"))
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_else(|| panic!("{y}-{m}-{d}"))
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset("-2 days"), Ok(-2 * DAY));
        assert_eq!(parse_offset("+3 days"), Ok(3 * DAY));
        assert_eq!(parse_offset("3 days"), Ok(3 * DAY));
        assert_eq!(parse_offset(" - 1h "), Ok(-HOUR_MS));
        assert_eq!(parse_offset("1h"), Ok(HOUR_MS));
        assert_eq!(parse_offset("90m"), Ok(90 * MINUTE_MS));
        assert_eq!(parse_offset("0"), Ok(0));
        assert_eq!(parse_offset("-0"), Ok(0));
        assert_eq!(parse_offset("10 years"), Ok(10 * 31_557_600_000));
        for bad in [
            "",
            "-",
            "+",
            "soon",
            "11 years",
            "-11 years",
            "2 days ago",
            "--1d",
        ] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clocks() {
        assert_eq!(parse_clock("09:00"), Ok(540));
        assert_eq!(parse_clock("00:00"), Ok(0));
        assert_eq!(parse_clock("23:59"), Ok(1439));
        assert!(parse_clock("24:00").is_err());
        assert!(parse_clock("9am").is_err());
    }

    #[test]
    fn next_clock_in_a_zone() {
        // 2026-06-10 10:00 CEST = 08:00 UTC.
        let ms = utc(2026, 6, 10, 8, 0);
        assert_eq!(next_clock(ms, 12 * 60, WARSAW), utc(2026, 6, 10, 10, 0));
        assert_eq!(next_clock(ms, 10 * 60, WARSAW), ms, "this very instant");
        assert_eq!(next_clock(ms + 1, 10 * 60, WARSAW), utc(2026, 6, 11, 8, 0));
        assert_eq!(next_clock(ms, 9 * 60, WARSAW), utc(2026, 6, 11, 7, 0));
        assert_eq!(next_clock(ms, 9 * 60, Tz::UTC), utc(2026, 6, 10, 9, 0));
        // Late evening UTC is already tomorrow in Warsaw.
        let late = utc(2026, 6, 10, 23, 30);
        assert_eq!(next_clock(late, 9 * 60, WARSAW), utc(2026, 6, 11, 7, 0));
        assert_eq!(next_clock(late, 0, WARSAW), utc(2026, 6, 11, 22, 0));
    }

    #[test]
    fn next_clock_across_warsaw_dst() {
        // Spring: 2026-03-29 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let night = utc(2026, 3, 28, 23, 0); // 00:00 CET
        assert_eq!(next_clock(night, 9 * 60, WARSAW), utc(2026, 3, 29, 7, 0));
        assert_eq!(next_clock(night, 60 + 30, WARSAW), utc(2026, 3, 29, 0, 30));
        // 02:30 never happens that night: the change is the first instant after.
        assert_eq!(next_clock(night, 150, WARSAW), utc(2026, 3, 29, 1, 0));
        assert_eq!(next_clock(night, 120, WARSAW), utc(2026, 3, 29, 1, 0));
        // After the change, 02:30 is the next day's (CEST).
        assert_eq!(
            next_clock(utc(2026, 3, 29, 1, 0) + 1, 150, WARSAW),
            utc(2026, 3, 30, 0, 30)
        );
        // Autumn: 2026-10-25 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30
        // happens twice: 00:30 and 01:30 UTC.
        let night = utc(2026, 10, 24, 22, 0); // 00:00 CEST
        assert_eq!(next_clock(night, 150, WARSAW), utc(2026, 10, 25, 0, 30));
        assert_eq!(
            next_clock(utc(2026, 10, 25, 0, 45), 150, WARSAW),
            utc(2026, 10, 25, 1, 30),
            "the later one when the earlier has passed"
        );
        assert_eq!(next_clock(night, 9 * 60, WARSAW), utc(2026, 10, 25, 8, 0));
        // Midnights on both sides of the changes.
        assert_eq!(
            local_midnight(date(2026, 3, 29), WARSAW),
            utc(2026, 3, 28, 23, 0)
        );
        assert_eq!(
            local_midnight(date(2026, 3, 30), WARSAW),
            utc(2026, 3, 29, 22, 0)
        );
        assert_eq!(
            local_midnight(date(2026, 10, 25), WARSAW),
            utc(2026, 10, 24, 22, 0)
        );
        assert_eq!(
            local_midnight(date(2026, 10, 26), WARSAW),
            utc(2026, 10, 25, 23, 0)
        );
        assert_eq!(
            day_instant(date(2026, 3, 29), 9 * HOUR_MS, WARSAW),
            utc(2026, 3, 29, 8, 0),
            "a fixed offset from midnight, not a clock time"
        );
        assert_eq!(
            day_instant(date(2026, 3, 29), -2 * DAY, WARSAW),
            utc(2026, 3, 26, 23, 0)
        );
    }

    #[test]
    fn a_zone_that_skips_midnight() {
        // America/Santiago: 2024-09-08 00:00 -04 became 01:00 -03 (04:00 UTC).
        let tz = Tz::America__Santiago;
        assert_eq!(local_midnight(date(2024, 9, 8), tz), utc(2024, 9, 8, 4, 0));
        assert_eq!(local_midnight(date(2024, 9, 9), tz), utc(2024, 9, 9, 3, 0));
    }

    #[test]
    fn quiet_hours() {
        let q = (21 * 60, 8 * 60); // 21:00-08:00, wraps midnight
        // Summer in Warsaw: UTC+2.
        let at = |h, m| utc(2026, 6, 10, h, m);
        assert_eq!(quiet_until(at(18, 59), q, WARSAW), None); // 20:59
        assert_eq!(
            quiet_until(at(19, 0), q, WARSAW),
            Some(utc(2026, 6, 11, 6, 0))
        ); // 21:00
        assert_eq!(
            quiet_until(at(22, 30), q, WARSAW),
            Some(utc(2026, 6, 11, 6, 0))
        ); // 00:30
        assert_eq!(quiet_until(at(5, 59), q, WARSAW), Some(at(6, 0))); // 07:59
        assert_eq!(quiet_until(at(6, 0), q, WARSAW), None); // 08:00: over
        assert_eq!(quiet_until(at(12, 0), q, WARSAW), None);
        // The same instants in UTC.
        assert_eq!(quiet_until(at(6, 0), q, Tz::UTC), Some(at(8, 0)));
        assert_eq!(quiet_until(at(19, 0), q, Tz::UTC), None);
        // A window within one day.
        let lunch = (12 * 60, 13 * 60 + 30);
        assert_eq!(quiet_until(at(10, 0), lunch, WARSAW), Some(at(11, 30)));
        assert_eq!(quiet_until(at(9, 59), lunch, WARSAW), None);
        assert_eq!(quiet_until(at(11, 30), lunch, WARSAW), None);
        assert_eq!(quiet_until(at(10, 0), (600, 600), WARSAW), None);
        // The night the clocks go forward is an hour shorter.
        assert_eq!(
            quiet_until(utc(2026, 3, 28, 20, 0), q, WARSAW), // 21:00 CET
            Some(utc(2026, 3, 29, 6, 0))                     // 08:00 CEST
        );
        // A window ending in the skipped hour ends at the change.
        assert_eq!(
            quiet_until(utc(2026, 3, 29, 0, 30), (60, 150), WARSAW), // 01:30 CET
            Some(utc(2026, 3, 29, 1, 0))
        );
        // The night they go back is an hour longer.
        assert_eq!(
            quiet_until(utc(2026, 10, 24, 19, 0), q, WARSAW), // 21:00 CEST
            Some(utc(2026, 10, 25, 7, 0))                     // 08:00 CET
        );
    }

    #[test]
    fn yearly_occurrences() {
        // Birthday 15 May in Warsaw, on the day.
        let may = |d, h| utc(2026, 5, d, h, 0);
        assert_eq!(
            yearly_occurrence(5, 15, 0, may(14, 12), WARSAW),
            (2026, utc(2026, 5, 14, 22, 0))
        );
        assert_eq!(
            yearly_occurrence(5, 15, 0, may(15, 20), WARSAW),
            (2026, utc(2026, 5, 14, 22, 0)),
            "later that day still counts"
        );
        // 22:30 UTC on the 15th is already the 16th in Warsaw.
        assert_eq!(
            yearly_occurrence(5, 15, 0, utc(2026, 5, 15, 22, 30), WARSAW),
            (2027, utc(2027, 5, 14, 22, 0))
        );
        assert_eq!(
            yearly_occurrence(5, 15, 0, utc(2026, 5, 15, 22, 30), Tz::UTC),
            (2026, utc(2026, 5, 15, 0, 0))
        );
        // Three days after.
        assert_eq!(
            yearly_occurrence(5, 15, 3, may(17, 12), WARSAW),
            (2026, utc(2026, 5, 17, 22, 0))
        );
        assert_eq!(
            yearly_occurrence(5, 15, 3, may(19, 12), WARSAW),
            (2027, utc(2027, 5, 17, 22, 0))
        );
    }

    #[test]
    fn february_29() {
        // 2027 has none: 28 February; 2028 has one.
        let tz = Tz::UTC;
        assert_eq!(
            yearly_occurrence(2, 29, 0, utc(2027, 1, 10, 0, 0), tz),
            (2027, utc(2027, 2, 28, 0, 0))
        );
        assert_eq!(
            yearly_occurrence(2, 29, 0, utc(2027, 2, 28, 23, 0), tz),
            (2027, utc(2027, 2, 28, 0, 0))
        );
        assert_eq!(
            yearly_occurrence(2, 29, 0, utc(2027, 3, 1, 0, 0), tz),
            (2028, utc(2028, 2, 29, 0, 0))
        );
        assert_eq!(
            yearly_occurrence(2, 29, 0, utc(2028, 2, 29, 12, 0), tz),
            (2028, utc(2028, 2, 29, 0, 0))
        );
        assert_eq!(
            yearly_occurrence(2, 29, 1, utc(2028, 3, 1, 12, 0), tz),
            (2028, utc(2028, 3, 1, 0, 0))
        );
        assert_eq!(
            yearly_occurrence(2, 29, -1, utc(2027, 2, 27, 12, 0), tz),
            (2027, utc(2027, 2, 27, 0, 0))
        );
        // Days past a month's end are its last.
        assert_eq!(
            yearly_occurrence(4, 31, 0, utc(2026, 1, 1, 0, 0), tz),
            (2026, utc(2026, 4, 30, 0, 0))
        );
    }

    #[test]
    fn negative_offsets_cross_the_year() {
        // Birthday 1 January, mail two days before: 30 December of the
        // year before, counted as the next year's birthday.
        let tz = WARSAW;
        assert_eq!(
            yearly_occurrence(1, 1, -2, utc(2026, 12, 1, 12, 0), tz),
            (2027, utc(2026, 12, 29, 23, 0))
        );
        assert_eq!(
            yearly_occurrence(1, 1, -2, utc(2026, 12, 30, 12, 0), tz),
            (2027, utc(2026, 12, 29, 23, 0)),
            "today counts"
        );
        assert_eq!(
            yearly_occurrence(1, 1, -2, utc(2026, 12, 31, 12, 0), tz),
            (2028, utc(2027, 12, 29, 23, 0))
        );
        assert_eq!(
            yearly_occurrence(1, 1, -2, utc(2027, 1, 1, 12, 0), tz),
            (2028, utc(2027, 12, 29, 23, 0))
        );
        // And forward: 31 December plus two days is 2 January.
        assert_eq!(
            yearly_occurrence(12, 31, 2, utc(2027, 1, 2, 12, 0), tz),
            (2026, utc(2027, 1, 1, 23, 0))
        );
        assert_eq!(
            yearly_occurrence(12, 31, 2, utc(2027, 1, 3, 12, 0), tz),
            (2027, utc(2028, 1, 1, 23, 0))
        );
    }

    #[test]
    fn extremes_do_not_panic() {
        for ms in [i64::MIN, i64::MAX, 0, -1] {
            let _ = next_clock(ms, 600, WARSAW);
            let _ = quiet_until(ms, (1260, 480), WARSAW);
            let _ = yearly_occurrence(2, 29, i64::MIN, ms, WARSAW);
            let _ = yearly_occurrence(13, 40, i64::MAX, ms, WARSAW);
        }
        let _ = local_midnight(NaiveDate::MIN, WARSAW);
        let _ = day_instant(NaiveDate::MAX, i64::MAX, WARSAW);
        let _ = next_clock(0, 5000, WARSAW);
    }
}
