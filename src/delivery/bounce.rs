//! Classifying SMTP replies (RFC 5321 reply codes, RFC 3463 enhanced status
//! codes) into what Herald does next.

use super::model::BounceClass;

/// Words in a reply that mean the sender was refused, not the address.
const POLICY_WORDS: &[&str] = &[
    "spam",
    "blocked",
    "blacklist",
    "blocklist",
    "block list",
    "denylist",
    "reputation",
    "policy",
    "dmarc",
    "spf",
    "dkim",
    "authentication",
    "not authorized",
    "rejected for",
    "banned",
    "rbl",
];

/// Words in a reply that mean the mailbox does not exist.
const HARD_WORDS: &[&str] = &[
    "user unknown",
    "unknown user",
    "no such user",
    "no such mailbox",
    "mailbox not found",
    "does not exist",
    "doesn't exist",
    "invalid recipient",
    "recipient unknown",
    "unknown recipient",
    "address rejected",
    "mailbox unavailable",
    "account disabled",
    "not a valid mailbox",
];

/// Words in a reply that mean a mailbox condition.
const SOFT_WORDS: &[&str] = &[
    "mailbox full",
    "quota",
    "over quota",
    "insufficient storage",
    "too large",
    "size limit",
];

/// The enhanced status code at the start of a reply text, e.g. (5, 1, 1).
pub fn enhanced_code(text: &str) -> Option<(u8, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?.parse::<u8>().ok()?;
    let subject = parts.next()?.parse::<u16>().ok()?;
    let detail = parts.next()?.parse::<u16>().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject, detail))
}

/// The class of a permanent failure at `stage`. A reply to MAIL FROM, DATA
/// or the end of the data is about the sender or the message, so it is a
/// hard bounce only when its enhanced status code explicitly names the
/// destination mailbox or domain (X.1.1, X.1.2, X.1.10); a vague "550
/// rejected" there must not make the recipient's address `invalid`.
pub fn classify_at(code: u16, text: &str, stage: super::smtp::Stage) -> BounceClass {
    let class = classify(code, text);
    if stage == super::smtp::Stage::Rcpt || class != BounceClass::Hard {
        return class;
    }
    match enhanced_code(text) {
        Some((_, 1, 1 | 2 | 10)) => BounceClass::Hard,
        _ => BounceClass::Soft,
    }
}

/// The class of a permanent (5xx) failure, from the reply code, its enhanced
/// status code and, where those are vague, its words.
pub fn classify(code: u16, text: &str) -> BounceClass {
    let lower = text.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    if let Some((_, subject, detail)) = enhanced_code(text) {
        match (subject, detail) {
            (7, _) => return BounceClass::Policy,
            // X.1.7 / X.1.8: the sender's address or domain is refused.
            (1, 7 | 8) => return BounceClass::Policy,
            (1, 1 | 2 | 3 | 6 | 10) => return BounceClass::Hard,
            (2, 1) => return BounceClass::Hard,
            (2, 2 | 3) => return BounceClass::Soft,
            (3 | 4 | 6, _) => {
                return if has(POLICY_WORDS) {
                    BounceClass::Policy
                } else {
                    BounceClass::Soft
                };
            }
            _ => {}
        }
    }
    if has(POLICY_WORDS) {
        return BounceClass::Policy;
    }
    if has(SOFT_WORDS) {
        return BounceClass::Soft;
    }
    if has(HARD_WORDS) {
        return BounceClass::Hard;
    }
    match code {
        550 | 551 | 553 => BounceClass::Hard,
        554 | 571 => BounceClass::Policy,
        _ => BounceClass::Soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(
            classify(550, "5.1.1 <a@b>: Recipient address rejected: User unknown"),
            BounceClass::Hard
        );
        assert_eq!(
            classify(550, "5.7.1 Message rejected as spam"),
            BounceClass::Policy
        );
        assert_eq!(classify(552, "5.2.2 Mailbox full"), BounceClass::Soft);
        assert_eq!(
            classify(550, "Requested action not taken: mailbox unavailable"),
            BounceClass::Hard
        );
        assert_eq!(classify(554, "Transaction failed"), BounceClass::Policy);
        assert_eq!(
            classify(550, "5.7.26 Unauthenticated email is not accepted (DMARC)"),
            BounceClass::Policy
        );
        assert_eq!(classify(556, "5.1.10 null MX"), BounceClass::Hard);
        assert_eq!(classify(550, "Blocked by RBL"), BounceClass::Policy);
        assert_eq!(classify(500, "5.5.2 syntax error"), BounceClass::Soft);
        assert_eq!(enhanced_code("4.2.0 try later"), Some((4, 2, 0)));
        assert_eq!(enhanced_code("hello"), None);
        assert_eq!(
            classify(
                553,
                "5.1.8 <b@x>: Sender address rejected: Domain not found"
            ),
            BounceClass::Policy
        );
        use crate::delivery::smtp::Stage;
        assert_eq!(
            classify_at(550, "Message content rejected", Stage::Message),
            BounceClass::Soft
        );
        assert_eq!(
            classify_at(550, "Message content rejected", Stage::Rcpt),
            BounceClass::Hard
        );
        assert_eq!(
            classify_at(550, "5.1.1 user unknown", Stage::Message),
            BounceClass::Hard
        );
    }
}
