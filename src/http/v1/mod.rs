//! The admin API, version 1 (`/api/v1/…`), one file per resource. Wire types
//! (request bodies, JSON views) live here, apart from the domain types.

pub mod automations;
pub mod campaigns;
pub mod contacts;
pub mod coupons;
pub mod doctor;
pub mod events;
pub mod fields;
pub mod import;
pub mod inbound;
pub mod lists;
pub mod outbox;
pub mod products;
pub mod queue;
pub mod reports;
pub mod segments;
pub mod sms;
pub mod templates;
pub mod users;

use serde::{Deserialize, Deserializer};

/// Whether `s` is a non-empty run of ASCII digits: the one rule by which a
/// `{ref}` in a path is an id rather than a name or an address.
pub fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A `{ref}` that is an id (all digits and in range), else `None`.
pub fn numeric_id(s: &str) -> Option<u64> {
    if all_digits(s) { s.parse().ok() } else { None }
}

/// Deserializes a field that distinguishes "absent" (`None`, via
/// `#[serde(default)]`) from `null` (`Some(None)`): null clears a value.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Milliseconds since the epoch as RFC 3339 (seconds, UTC).
pub fn ms_rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
