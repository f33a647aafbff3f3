//! Inbound mail: the SMTP listener that takes delivery status notifications
//! (RFC 3464), feedback-loop reports (ARF, RFC 5965) and the replies that
//! come back to a message's VERP return path; the parser that tells a hard
//! bounce from a soft one, a complaint, an auto-reply or a delay notice; and
//! the effects each has through the send layer and the consent log.

pub mod parse;
pub mod server;
