//! Shop data: what the shop's backend pushes through `POST /api/v1/events`
//! (customers, orders, carts, products, wait-lists, logins, signups) and the
//! per-contact aggregates kept from it, so that segments never rescan order
//! history.
//!
//! - [`product`]: the catalogue templates' product blocks read.
//! - [`model`]: orders, carts, wait-list entries and [`model::ShopStats`], the
//!   aggregates (order count / sum, first / last order, categories and SKUs
//!   bought with their days, payment types, last login).
//! - [`wire`]: the wire format of events and their checks
//!   ([`wire::parse_batch`], on a blocking thread, reading nothing stored).
//! - [`apply`]: how each parsed event is applied inside the store's write
//!   transaction ([`apply::apply_batch`]; idempotent by type and id), and the
//!   custom fields customer events fill ([`apply::SHOP_FIELDS`]).
//! - [`format`]: instants, money and aggregates as the API shows them.

pub mod apply;
pub mod format;
pub mod model;
mod product;
pub mod wire;

pub use product::{MAX_SKU_LEN, Product};
