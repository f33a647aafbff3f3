//! The send layer: between rendering and delivery, everything Herald
//! composes (newsletters, template messages through the API, signup
//! confirmations, and later automations and SMS) goes through here.
//!
//! - [`model`]: the identity of a send ([`model::SendRef`]: kind, id, slot)
//!   and the names of its counters ([`model::Counter`]).
//! - [`outbox`]: the operations "render this template for this contact and
//!   queue it" ([`outbox::queue_template`]) and "commit this batch of
//!   rendered messages with its ledger" ([`outbox::commit_batch`]). Each
//!   message queued is recorded in the send's ledger (`store::send`), so a
//!   contact gets one message per send round, and counted as sent.
//! - [`signup`]: the public signup form as one operation
//!   ([`signup::subscribe`]): check the form, record the request, queue the
//!   confirmation mail.
//! - [`report`]: what a send brought: counts, rates, money, per slot, per
//!   hour and per link, for every kind of send.
//!
//! Delivery counts each recipient's outcome for the message's `SendRef`,
//! tracking counts opens, clicks, unsubscribes and complaints for it, and
//! order attribution credits it; none of them knows what kind of send it
//! is (see ARCHITECTURE.md, "Invariants").

pub mod model;
pub mod outbox;
pub mod report;
pub mod signup;

pub use model::{Counter, SendKind, SendRef};
