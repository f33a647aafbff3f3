//! The class of one failed delivery, from its enhanced status code and what
//! the receiving system wrote, and the phrases that tell a delay notice or a
//! success notice from a failure.
//!
//! The phrases are matched on folded text (see [`fold`]): lower case, Polish
//! letters without diacritics, white space joined. The order of the rules is
//! in [`classify_failure`]; the module doc of `parse` explains why.

use super::Verdict;
use super::text::{contains_any, near_any};

#[cfg(test)]
use super::text::fold;

/// Texts that say the recipient's mailbox or account does not exist or is
/// closed for good. They win over any status code.
const RECIPIENT_GONE: &[&str] = &[
    "user unknown",
    "unknown user",
    "unknown local part",
    "unknown local-part",
    "no such user",
    "no such mailbox",
    "no such recipient",
    "no such address",
    "no such person",
    "no such account",
    "unknown recipient",
    "recipient unknown",
    "unknown mailbox",
    "unknown address",
    "unknown e-mail address",
    "unknown email address",
    "mailbox not found",
    "mailbox does not exist",
    "mailbox doesn't exist",
    "address does not exist",
    "address doesn't exist",
    "account does not exist",
    "account doesn't exist",
    "user does not exist",
    "user doesn't exist",
    "recipient does not exist",
    "recipient doesn't exist",
    "user not found",
    "recipient not found",
    "address not found",
    "addressee unknown",
    "no mailbox here by that name",
    "no mailbox by that name",
    "not a valid mailbox",
    "invalid mailbox",
    "invalid recipient",
    "not a valid recipient",
    "recipient address rejected: access denied",
    "recipient address rejected: user unknown",
    "recipient address rejected: unknown user",
    "recipient address rejected: invalid user",
    "recipient address rejected: undeliverable address",
    "resolver.adr.recipientnotfound",
    "resolver.adr.recipnotfound",
    "wasn't found at",
    "was not found at",
    "couldn't be found",
    "could not be found",
    "no longer accepts mail",
    "no longer in use",
    "is no longer active",
    "no longer valid",
    "mailbox disabled",
    "mailbox is disabled",
    "account disabled",
    "account is disabled",
    "account has been disabled",
    "mailbox is inactive",
    "account is inactive",
    "inactive account",
    "disabled recipient",
    "recipient disabled",
    "no valid recipient",
    // Polish, folded.
    "nieznany uzytkownik",
    "nieznany odbiorca",
    "nieznany adres",
    "nieznana skrzynka",
    "uzytkownik nieznany",
    "brak takiego uzytkownika",
    "brak takiego konta",
    "brak takiego adresu",
    "brak takiej skrzynki",
    "nie ma takiego uzytkownika",
    "nie ma takiego konta",
    "nie ma takiego adresu",
    "nie ma takiej skrzynki",
    "adres nie istnieje",
    "konto nie istnieje",
    "skrzynka nie istnieje",
    "uzytkownik nie istnieje",
    "odbiorca nie istnieje",
];

/// Pairs that say the same with words between them ("the email account that
/// you tried to reach is disabled", "konto odbiorcy zostało usunięte").
const RECIPIENT_GONE_NEAR: &[(&str, &str)] = &[
    ("account", "disabled"),
    ("mailbox", "disabled"),
    ("account", "deactivated"),
    ("account", "deleted"),
    ("mailbox", "deleted"),
    ("account", "terminated"),
    ("account", "closed"),
    ("account", "does not exist"),
    ("mailbox", "does not exist"),
    ("user", "does not exist"),
    ("doesn't have a", "account"),
    ("does not have a", "account"),
    ("invalid", "user"),
    ("not listed", "directory"),
    ("not listed", "address book"),
    ("recipient account", "block"),
    ("recipient's account", "block"),
    ("konto", "zablokowan"),
    ("konto", "usunie"),
    ("konto", "nieaktywn"),
    ("konto", "wylaczon"),
    ("konto", "nie istnieje"),
    ("skrzynka", "nie istnieje"),
    ("skrzynka", "usunie"),
    ("skrzynka", "nieaktywn"),
    ("adres", "nie istnieje"),
];

/// Texts that blame the sender (its address, domain, server or IP): policy,
/// even where a status code or a generic phrase would say otherwise ("550
/// 5.1.1 sender is blacklisted", "Sender address rejected: Domain not found").
const SENDER_REFUSED: &[&str] = &[
    "sender address rejected",
    "sender address",
    "unroutable sender",
    "unrouteable sender",
    "sender rejected",
    "sender denied",
    "sender is blacklisted",
    "sender blocked",
    "sender verify failed",
    "sender domain",
    "sender's domain",
    "envelope sender",
    "your ip",
    "your server",
    "your domain",
    "client host",
    "sending ip",
    "sending server",
    "sending domain",
    "twoj serwer",
];

/// The mailbox is full.
const MAILBOX_FULL: &[&str] = &[
    "mailbox full",
    "mailbox is full",
    "mailbox exceeds",
    "mailbox size limit",
    "full mailbox",
    "over quota",
    "overquota",
    "quota exceeded",
    "quotaexceeded",
    "exceeded quota",
    "exceeds quota",
    "exceeded storage",
    "insufficient storage",
    "out of storage",
    "storage space",
    "mailfolder is full",
    "inbox is full",
    "receiving mail at a rate",
    "temporarily locked",
    "temporary locked",
    "mailbox is locked",
    "account is locked",
    "not enough space",
    "no space left",
    "quota",
    // Polish, folded.
    "przepelnion",
    "brak miejsca",
    "pelna skrzynka",
    "skrzynka jest pelna",
    "skrzynka pelna",
];

/// Pairs for a full mailbox with words between.
const MAILBOX_FULL_NEAR: &[(&str, &str)] = &[
    ("mailbox", "full"),
    ("mailbox", "exceeded"),
    ("przekroczon", "pojemnos"),
    ("przekroczon", "limit miejsca"),
    ("przekroczon", "rozmiar skrzynki"),
    ("skrzynk", "pelna"),
];

/// The message is too large.
const TOO_LARGE: &[&str] = &[
    "message too large",
    "message is too large",
    "message too big",
    "message is too big",
    "message size exceeds",
    "exceeds size limit",
    "exceeds the size limit",
    "size limit exceeded",
    "exceeds fixed maximum message size",
    "exceeded the maximum message size",
    "message length exceeds",
    "exceeds the maximum size",
    "message size limit",
    "zbyt duza",
    "za duza",
];

/// Refusals by policy: spam filtering, block lists, reputation,
/// authentication (SPF, DKIM, DMARC), content, rate.
const POLICY: &[&str] = &[
    "spam",
    "blacklist",
    "black list",
    "blocklist",
    "block list",
    "blocked",
    "denylist",
    "dnsbl",
    "rbl",
    "spamhaus",
    "spamcop",
    "barracuda",
    "reputation",
    "policy",
    "policies",
    "dmarc",
    "spf",
    "dkim",
    "unauthenticated",
    "not authenticated",
    "authentication",
    "unsolicited",
    "unwanted",
    "junk",
    "virus",
    "malware",
    "phish",
    "banned",
    "prohibited",
    "not authorized",
    "not permitted",
    "access denied",
    "relay access denied",
    "relaying denied",
    "relay denied",
    "relay not permitted",
    "relaying not allowed",
    "not permitted to relay",
    "unable to relay",
    "not configured to relay",
    "insecure mail relay",
    "message refused",
    "refused by",
    "filter",
    "content rejected",
    "suspicious",
    "spoof",
    "forged",
    "rate limit",
    "ratelimit",
    "too many connections",
    "too many messages",
    "too many emails",
    "too many mails",
    "too many concurrent",
    "too many recipients",
    "throttl",
    "complaint",
    "reverse dns",
    "rdns",
    // Polish, folded.
    "odrzucon",
    "zablokowan",
    "czarnej liscie",
    "czarna lista",
    "czarnej listy",
    "niechcian",
    "polityk",
    "filtr",
];

/// The domain does not exist or takes no mail, or the address cannot be
/// used at all. Weaker than [`RECIPIENT_GONE`]: a sender-side text or a full
/// mailbox comes first.
const ADDRESS_INVALID: &[&str] = &[
    "does not exist",
    "doesn't exist",
    "not exist",
    "domain not found",
    "no such domain",
    "host not found",
    "host or domain name not found",
    "host unknown",
    "unknown host",
    "find a mail exchanger",
    "no mail exchanger",
    "unrouteable",
    "unroutable",
    "no mx",
    "null mx",
    "nullmx",
    "does not accept mail",
    "doesn't accept mail",
    "nxdomain",
    "invalid domain",
    "invalid address",
    "bad destination",
    "mailbox name not allowed",
    "nie istnieje",
    "domena nie istnieje",
];

/// Weak signs that the recipient is unknown, taken only for a permanent
/// failure that nothing more specific explains: RFC 5321 uses "mailbox
/// unavailable" for policy refusals too. (A bare "Recipient address
/// rejected:" says nothing: Postfix writes it before any reason at all.)
const RECIPIENT_WEAK: &[&str] = &[
    "mailbox unavailable",
    "mailbox is unavailable",
    "undeliverable address",
    "recipient address rejected.",
    "recipient address rejected (in reply",
];

/// The message expired in a queue after temporary failures.
const EXPIRED: &[&str] = &[
    "gave up",
    "given up",
    "giving up",
    "retry timeout exceeded",
    "retry time exceeded",
    "too long in queue",
    "in the queue too long",
    "queue too long",
    "could not be delivered for",
    "expired",
    "timed out",
    "timeout",
    "connection refused",
    "przekroczono czas",
];

/// Phrases that say a message is only delayed and will be retried.
const DELAYED: &[&str] = &[
    "this is a warning message only",
    "has not yet been delivered",
    "has not been delivered yet",
    "not yet been delivered",
    "not delivered yet",
    "will retry",
    "will be retried",
    "will try again",
    "will keep trying",
    "will continue to try",
    "will continue trying",
    "delivery attempts will continue",
    "still being retried",
    "still trying",
    "delivery incomplete",
    "delivery has been delayed",
    "delivery is delayed",
    "delivery delayed",
    "message delayed",
    "is delayed",
    "no action is required on your part",
    "this is a warning only",
    "warning only",
    "you do not need to resend",
    "temporary problem delivering",
    // Polish, folded.
    "nie zostala jeszcze dostarczona",
    "jeszcze nie zostala dostarczona",
    "bedzie ponawia",
    "beda ponawiane",
    "kolejne proby",
    "ponowi probe",
    "ponowione",
    "opoznien",
    "opozni",
];

/// Phrases that deny a retry; a notice holding one is no delay notice.
const NOT_DELAYED: &[&str] = &[
    "will not retry",
    "won't retry",
    "will not be retried",
    "not going to try again",
    "permanent error",
    "permanent failure",
    "permanent fatal error",
    "nie bedzie ponawia",
];

/// Subjects of delay notices.
const DELAY_SUBJECTS: &[&str] = &[
    "(delay)",
    "delayed",
    "delay",
    "warning: could not send",
    "still being retried",
    "opoznien",
    "opozni",
];

/// Subject beginnings of success notices (delivery or relay receipts).
const SUCCESS_SUBJECT_STARTS: &[&str] =
    &["delivered:", "relayed:", "delivery notification: success"];

/// Subject phrases of success notices.
const SUCCESS_SUBJECTS: &[&str] = &["(success)", "successful delivery", "delivery successful"];

/// Phrases of success notices.
const SUCCESS: &[&str] = &[
    "successfully delivered",
    "delivered successfully",
    "delivery to the following recipients was successful",
    "delivery to these recipients or groups is complete",
    "your message has been delivered",
];

/// Subject beginnings of failure notices; a subject that starts so is no
/// delay notice even when the original subject it quotes says "delayed".
pub(super) const FAILURE_SUBJECTS: &[&str] = &[
    "undeliverable",
    "undelivered",
    "undeliverd",
    "returned mail",
    "mail delivery failed",
    "mail delivery failure",
    "delivery failure",
    "delivery failed",
    "failure notice",
    "delivery status notification (failure)",
    "non-delivery",
    "nondeliverable",
    "niedostarcz",
    "nie dostarczono",
    "nie mozna dostarczyc",
    "niedoreczon",
    "nie doreczono",
    "zwrot",
    "blad dostarcz",
];

/// Whether folded text announces a delay rather than a failure.
pub(super) fn says_delayed(folded_subject: &str, folded_text: &str) -> bool {
    if contains_any(folded_text, NOT_DELAYED) {
        return false;
    }
    let failure_subject = FAILURE_SUBJECTS
        .iter()
        .any(|s| folded_subject.starts_with(s));
    (!failure_subject && contains_any(folded_subject, DELAY_SUBJECTS))
        || contains_any(folded_text, DELAYED)
}

/// Whether a folded subject or text announces a successful delivery.
pub(super) fn says_success(folded_subject: &str, folded_text: &str) -> bool {
    SUCCESS_SUBJECT_STARTS
        .iter()
        .any(|s| folded_subject.starts_with(s))
        || contains_any(folded_subject, SUCCESS_SUBJECTS)
        || contains_any(folded_text, SUCCESS)
}

/// A parsed enhanced status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Status {
    /// 2 (success), 4 (persistent transient) or 5 (permanent).
    pub class: u16,
    /// The subject (1 address, 2 mailbox, 3 mail system, 4 network,
    /// 5 protocol, 6 content, 7 security or policy).
    pub subject: u16,
    /// The detail.
    pub detail: u16,
}

impl Status {
    /// Parses `5.1.1`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Status> {
        let mut parts = text.trim().splitn(3, '.');
        let class = parts.next()?.parse().ok()?;
        let subject = parts.next()?.parse().ok()?;
        let detail = parts
            .next()?
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()?;
        matches!(class, 2 | 4 | 5).then_some(Status {
            class,
            subject,
            detail,
        })
    }
}

/// How sure a failure's class is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evidence {
    /// A text or status code said what happened.
    Specific,
    /// Only that it failed: the class is the default one.
    Generic,
}

/// The class of a failed delivery from its status code (if any), its SMTP
/// reply code (if any) and what the system wrote (folded). The rules, first
/// match wins:
///
/// 1. a status about the sender's address (x.1.7, x.1.8) → policy;
/// 2. a text saying the recipient does not exist or its account is closed
///    → hard (over any other status: "550 5.7.1 … user unknown" is hard);
/// 3. a text blaming the sender (address, domain, server, IP) → policy;
/// 4. a full (or over-busy, or temporarily locked) mailbox or a message too
///    large → soft;
/// 5. a policy text (spam, block list, DMARC, SPF, …) → policy;
/// 6. a text saying the domain or address does not exist → hard;
/// 7. the status code: 5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.2.1 and 5.7.13
///    (account disabled) → hard; other x.7.x → policy; x.2.2, x.2.3, x.3.4 →
///    soft;
/// 8. for a permanent failure, a weak recipient text ("mailbox unavailable",
///    "undeliverable address") → hard;
/// 9. anything else → soft (a temporary failure that ended in expiry, or a
///    permanent failure that says nothing more). Soft bounces add up to a
///    suppression anyway, while a wrong hard verdict drops a good address
///    at once.
pub(super) fn classify_failure(
    status: Option<Status>,
    smtp: Option<u16>,
    folded: &str,
) -> (Verdict, Evidence) {
    use Evidence::{Generic, Specific};
    // x.1.7 and x.1.8 are about the sender's address and domain (RFC 3463).
    if status.is_some_and(|s| s.subject == 1 && matches!(s.detail, 7 | 8)) {
        return (Verdict::Policy, Specific);
    }
    if contains_any(folded, RECIPIENT_GONE) || near_any(folded, RECIPIENT_GONE_NEAR, 40) {
        return (Verdict::Hard, Specific);
    }
    if contains_any(folded, SENDER_REFUSED) {
        return (Verdict::Policy, Specific);
    }
    if contains_any(folded, MAILBOX_FULL)
        || near_any(folded, MAILBOX_FULL_NEAR, 30)
        || contains_any(folded, TOO_LARGE)
    {
        return (Verdict::Soft, Specific);
    }
    if contains_any(folded, POLICY) {
        return (Verdict::Policy, Specific);
    }
    if contains_any(folded, ADDRESS_INVALID) {
        return (Verdict::Hard, Specific);
    }
    if let Some(status) = status {
        match (status.class, status.subject, status.detail) {
            // x.7.13 is "user account disabled" (RFC 4954).
            (5, 7, 13) | (5, 1, 1 | 2 | 3 | 6 | 10) | (5, 2, 1) => {
                return (Verdict::Hard, Specific);
            }
            (_, 7, _) => return (Verdict::Policy, Specific),
            (_, 2, 2 | 3) | (_, 3, 4) => return (Verdict::Soft, Specific),
            _ => {}
        }
    }
    let permanent = match status {
        Some(status) => status.class == 5,
        None => smtp.is_none_or(|code| code >= 500),
    };
    if permanent
        && (contains_any(folded, RECIPIENT_WEAK) || folded.ends_with("recipient address rejected"))
    {
        return (Verdict::Hard, Specific);
    }
    if smtp == Some(552) && status.is_none() {
        // RFC 5321: 552 is "exceeded storage allocation".
        return (Verdict::Soft, Specific);
    }
    if contains_any(folded, EXPIRED) || status.is_some_and(|s| s.class == 4) {
        return (Verdict::Soft, Specific);
    }
    (Verdict::Soft, Generic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: &str, text: &str, expected: Verdict) -> Result<(), String> {
        let (verdict, _) = classify_failure(
            Status::parse(status),
            super::super::text::find_smtp_code(text),
            &fold(text),
        );
        if verdict == expected {
            Ok(())
        } else {
            Err(format!(
                "{status} {text:?}: got {verdict:?}, want {expected:?}"
            ))
        }
    }

    #[test]
    fn statuses_parse() {
        assert_eq!(
            Status::parse("5.1.10"),
            Some(Status {
                class: 5,
                subject: 1,
                detail: 10
            })
        );
        assert_eq!(Status::parse("x.1.1"), None);
        assert_eq!(Status::parse("3.1.1"), None);
    }

    #[test]
    fn a_specific_text_wins_over_a_generic_status() -> Result<(), String> {
        check(
            "5.0.0",
            "550 5.0.0 <a@b.example>... User unknown",
            Verdict::Hard,
        )?;
        check("5.0.0", "554 5.0.0 mailbox full", Verdict::Soft)
    }

    #[test]
    fn policy_status_wins_unless_the_user_does_not_exist() -> Result<(), String> {
        check("5.7.1", "550 5.7.1 Service unavailable", Verdict::Policy)?;
        check(
            "5.4.1",
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
            Verdict::Hard,
        )?;
        check(
            "5.7.1",
            "550 5.7.1 <a@b.example>: user unknown",
            Verdict::Hard,
        )
    }

    #[test]
    fn a_sender_problem_is_policy_whatever_the_status() -> Result<(), String> {
        check(
            "5.1.1",
            "550 5.1.1 <x@shop.example> sender is blacklisted",
            Verdict::Policy,
        )?;
        check(
            "4.1.8",
            "450 4.1.8 <b@shop.example>: Sender address rejected: Domain not found",
            Verdict::Policy,
        )
    }

    #[test]
    fn contradicting_codes_follow_the_text() -> Result<(), String> {
        check(
            "5.1.1",
            "552 5.1.1 5.2.2 sorry, final recipient mailbox is full (chkuser)",
            Verdict::Soft,
        )
    }

    #[test]
    fn postfix_recipient_rejections_depend_on_the_reason() -> Result<(), String> {
        check(
            "5.7.1",
            "554 5.7.1 <a@b.example>: Recipient address rejected: Mail appeared to be SPAM",
            Verdict::Policy,
        )?;
        check(
            "5.1.1",
            "550 5.1.1 <a@b.example>: Recipient address rejected: User unknown in virtual mailbox table",
            Verdict::Hard,
        )?;
        check(
            "",
            "550 <a@b.example>: Recipient address rejected: undeliverable address",
            Verdict::Hard,
        )?;
        check(
            "5.3.0",
            "554 5.3.0 <a@b.example>: Recipient address rejected: Internal system error",
            Verdict::Soft,
        )
    }

    #[test]
    fn polish_texts() -> Result<(), String> {
        check("", "550 Użytkownik nie istnieje", Verdict::Hard)?;
        check("", "550 Konto odbiorcy zostało zablokowane", Verdict::Hard)?;
        check(
            "5.2.2",
            "552 Skrzynka odbiorcy jest przepełniona",
            Verdict::Soft,
        )?;
        check(
            "4.7.1",
            "450 4.7.1 Twoj serwer poczty 192.0.2.1 zostal tymczasowo zablokowany za spam",
            Verdict::Policy,
        )?;
        check("", "554 Wiadomość odrzucona", Verdict::Policy)
    }

    #[test]
    fn sender_statuses_and_disabled_accounts() -> Result<(), String> {
        check(
            "5.1.7",
            "550 5.1.7 No such domain shop.example",
            Verdict::Policy,
        )?;
        check(
            "5.1.8",
            "553 5.1.8 Domain of sender address b@shop.example does not exist",
            Verdict::Policy,
        )?;
        check(
            "5.7.13",
            "525 5.7.13 Disabled recipient address",
            Verdict::Hard,
        )?;
        check(
            "5.5.0",
            "550 5.5.0 The recipient account is blocked.",
            Verdict::Hard,
        )?;
        check("5.4.6", "554 5.4.6 Too many hops", Verdict::Soft)?;
        check(
            "5.4.4",
            "Name service error for name=b.example type=MX: Malformed or unexpected name server reply",
            Verdict::Soft,
        )
    }

    #[test]
    fn temporary_failures_that_expired_are_soft() -> Result<(), String> {
        check(
            "4.4.1",
            "connect to mx.b.example[192.0.2.3]:25: Connection timed out",
            Verdict::Soft,
        )?;
        check("", "retry timeout exceeded", Verdict::Soft)
    }

    #[test]
    fn delays_are_told_from_failures() {
        assert!(says_delayed(
            "",
            &fold("Gmail will retry for 46 more hours")
        ));
        assert!(says_delayed(
            &fold("Delivery Status Notification (Delay)"),
            ""
        ));
        assert!(!says_delayed(
            "",
            &fold("This is a permanent error; I've given up. Sorry it didn't work out.")
        ));
        assert!(!says_delayed("", &fold("The server will not retry.")));
    }
}
