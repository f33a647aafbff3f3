//! Delivery: the MTA inside Herald.
//!
//! - [`queue`]: the one way in (`enqueue`): build or check the message, add
//!   Message-ID and Date, DKIM-sign ([`dkim`]), commit with its recipients.
//! - [`engine`]: scheduler and connection tasks: MX lookup ([`mx`]), SMTP
//!   ([`smtp`]), outcomes, retries, bounce classification ([`bounce`]).
//! - [`model`]: what the queue stores.
pub mod bounce;
pub mod dkim;
pub mod engine;
pub mod model;
pub mod mx;
pub mod queue;
pub mod smtp;

pub use engine::Engine;
