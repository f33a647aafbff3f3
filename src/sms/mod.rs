//! The SMS channel: text messages to contacts' phones through HTTP
//! gateways, with their own consent.
//!
//! - [`encoding`]: GSM-7 or UCS-2, parts, transliteration.
//! - [`phone`]: E.164 numbers.

pub mod callback;
pub mod encoding;
pub mod engine;
pub mod gateway;
pub mod model;
pub mod phone;
pub mod queue;
