//! Herald: a self-hosted mail-transfer and engagement appliance.
//!
//! The crate is a library plus the `herald` binary (`src/main.rs`), so that
//! integration tests and benchmarks can reach the same modules the daemon
//! uses. See `ARCHITECTURE.md` for the data flow and the code map.

pub mod activity;
pub mod app;
pub mod automation;
pub mod campaign;
pub mod client;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod coupons;
pub mod delivery;
pub mod doctor;
pub mod http;
pub mod inbound;
pub mod metrics;
pub mod names;
pub mod render;
pub mod segment;
pub mod send;
pub mod shop;
pub mod sms;
pub mod snapshot;
pub mod store;
pub mod tokens;
pub mod track;
pub mod users;
