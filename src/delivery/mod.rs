//! Delivery: the MTA inside Herald.
//!
//! - [`queue`]: the one way in (`enqueue`): build or check the message, add
//!   Message-ID and Date, DKIM-sign ([`dkim`]), commit with its recipients.
//! - [`engine`]: the public face ([`Engine`]) of the delivery engine: the
//!   scheduler task (`scheduler.rs`: due messages, the active set, jobs per
//!   destination, connection limits), connection tasks (`connection.rs`:
//!   MX lookup ([`mx`]), SMTP ([`smtp`]), job after job) and [`outcome`]
//!   (recording outcomes, retries, bounce classification ([`bounce`]),
//!   consent at delivery, erasure, admin retry and purge); [`journal`]
//!   makes a connection's outcomes durable before the store commits them.
//! - [`mta_sts`]: MTA-STS (RFC 8461) policies of destination domains: look-up,
//!   fetch, cache; `connection.rs` applies them to the MX hosts.
//! - [`capture`]: the capture outbox (`[delivery] capture`): finished
//!   messages written to a maildir-style folder instead of sent.
//! - [`model`]: what the queue stores.
pub mod bounce;
pub mod capture;
mod connection;
pub mod dkim;
pub mod engine;
mod index;
pub mod journal;
pub mod model;
pub mod mta_sts;
pub mod mx;
pub mod outcome;
mod outcome_batch;
pub mod queue;
mod scheduler;
pub mod shaping;
pub mod smtp;

pub use engine::Engine;
