//! The admin API, version 1 (`/api/v1/…`), one file per resource. Wire types
//! (request bodies, JSON views) live here, apart from the domain types.

pub mod contacts;
pub mod fields;
pub mod import;
pub mod lists;

use serde::{Deserialize, Deserializer};

/// Deserializes a field that distinguishes "absent" (`None`, via
/// `#[serde(default)]`) from `null` (`Some(None)`): null clears a value.
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}
