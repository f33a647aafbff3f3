//! Shop data: what the shop's backend pushes through `POST /api/v1/events`
//! (customers, orders, carts, products, wait-lists, logins, signups) and the
//! per-contact aggregates kept from it, so that segments never rescan order
//! history.
//!
//! - [`product`]: the catalogue templates' product blocks read.
//! - [`model`]: orders, carts, wait-list entries and [`model::ShopStats`], the
//!   aggregates (order count / sum, first / last order, categories and SKUs
//!   bought with their days, payment types, last login).
//! - [`events`]: the wire format of events, their checks, and how each one is
//!   applied inside the store's write transaction (idempotent by type and id).

pub mod events;
pub mod model;
mod product;

pub use product::{MAX_SKU_LEN, Product};
