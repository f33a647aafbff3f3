//! Classifies an inbound report: a delivery status notification (DSN, RFC
//! 3464), a feedback-loop complaint (ARF, RFC 5965), a plain-text bounce, an
//! auto-reply or a delay notice. [`parse`] is pure: bytes in, a [`Report`]
//! out, no I/O, no panic on any input.
//!
//! # Order of recognition
//!
//! The structure of a message is trusted before its words, and its words
//! before its headers, because MTA bounces carry `Auto-Submitted:
//! auto-replied` like vacation replies do:
//!
//! 1. **ARF**: a `message/feedback-report` part (normally inside
//!    `multipart/report; report-type=feedback-report`, as Yahoo, AOL,
//!    Validity and Microsoft's current JMRP send it). Feedback-Type `abuse`,
//!    `fraud`, `virus`, `other` or any unregistered type is a complaint;
//!    `not-spam` and `auth-failure` (DMARC failure reports) are unknown. The
//!    fields are read with `mail_auth::report::Feedback`. The recipient is
//!    Original-Rcpt-To, else Microsoft's `X-HmXmrOriginalRecipient` in the
//!    copy, else the copy's To; a redacted address counts as none (Microsoft
//!    and AOL redact it: the Message-ID and the VERP return path of the copy
//!    are then what identifies the recipient). Microsoft's old JMRP format (a
//!    `multipart/mixed` whose attached copy carries `X-HmXmrOriginalRecipient`)
//!    is a complaint too.
//! 2. **DSN**: a `message/delivery-status` part. One finding per recipient
//!    block: `Action: failed` is classified from Status and Diagnostic-Code
//!    (below); `delayed` is a delay; `delivered`, `relayed`, `expanded` are
//!    unknown. Without an Action, a 5.x.x status counts as failed and a 4.x.x
//!    one as delayed. The recipient is Original-Recipient (the address Herald
//!    gave in RCPT TO) or else Final-Recipient.
//! 3. **Plain-text bounce**: no report part, but sent by `MAILER-DAEMON`,
//!    `postmaster` or a "Mail Delivery System/Subsystem", or carrying
//!    `X-Failed-Recipients` (Exim) or a bounce subject ("Undelivered Mail
//!    Returned to Sender", "Mail delivery failed", "failure notice",
//!    "Returned mail: see transcript", "Undeliverable:", "Delivery Status
//!    Notification (Failure)", "Niedostarczona wiadomość", "Nie dostarczono",
//!    …). Its text is cut where the returned copy begins; delay wording ("will
//!    retry", "THIS IS A WARNING MESSAGE ONLY", "Warning: message … delayed")
//!    makes a delay, success wording makes an unknown, otherwise each failed
//!    recipient (X-Failed-Recipients, else the addresses the text names, else
//!    the copy's To) is classified from the SMTP reply and status in the
//!    text. A vacation subject from a postmaster address, with no bounce
//!    subject and no X-Failed-Recipients, is not taken for a bounce.
//! 4. **Auto-reply**: RFC 3834 `Auto-Submitted` other than `no`,
//!    `X-Autoreply`, `X-Autorespond`, `Precedence: auto_reply`, Apple's
//!    `X-Apple-Action: VACATION`, or a vacation subject in English or Polish
//!    ("Out of office", "Automatic reply", "Autoreply", "Auto:", "Odpowiedź
//!    automatyczna", "Automatyczna odpowiedź", "Nieobecność", "Urlop", "Poza
//!    biurem", …), or, in a reply to Herald's message, a short body in
//!    vacation wording. A list or bulk message (List-Id, List-Unsubscribe,
//!    Precedence bulk/list) needs a header to count; `X-Auto-Response-Suppress`
//!    is never enough (Outlook puts it on ordinary mail).
//! 5. Anything else is unknown: a human reply, a newsletter, a read receipt.
//!
//! An auto-reply or a delay notice never gets a bounce verdict: delay
//! wording is checked before a failure is classified, and a message is only
//! a plain bounce on bounce evidence.
//!
//! # Classes of a failure
//!
//! Hard: the address or domain does not exist or the account is closed
//! (5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.2.1, 5.7.13; "user unknown", "no
//! such user", "does not exist", "Recipient address rejected: Access denied"
//! from Office 365's directory check, "nie istnieje", "Nieznany użytkownik",
//! "konto zablokowane/usunięte"). Soft: a full mailbox (5.2.2, 4.2.2,
//! "quota", "przepełniona"), a message too large (5.3.4, 5.2.3), a temporary
//! failure that expired ("retry timeout exceeded", "gave up"), or a permanent
//! failure that says nothing more. Policy: refused for the sender's sake
//! (x.7.x, spam, block lists, DMARC, SPF, "Sender address rejected", Polish
//! "spam", "odrzucona", "zablokowany"). A 4.7.x failure that expired is
//! policy too: it speaks of the sender's reputation, not of the address.
//!
//! When the status and the text disagree, a text naming a missing recipient
//! wins over any status (a generic 5.0.0 and even a 5.7.x), a text blaming
//! the sender wins over 5.1.1 ("550 5.1.1 sender is blacklisted"), a full
//! mailbox wins over 5.1.1 ("552 5.1.1 5.2.2 mailbox is full"), a status
//! about the sender (5.1.7, 5.1.8) wins over any text, a generic 5.0.0
//! Status yields to a specific code in the Diagnostic-Code, and weak texts
//! ("mailbox unavailable") count only where the status says nothing
//! specific; a bare "Recipient address rejected:" counts for nothing, since
//! Postfix writes it before every reason. See
//! [`classify::classify_failure`] for the exact order.

mod arf;
mod autoreply;
mod classify;
mod dsn;
mod fields;
mod plain;
mod text;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use crate::delivery::model::BounceClass;
use fields::CopyInfo;
use text::{clean_address, clean_message_id, fold};

/// The longest diagnostic kept, in characters.
pub const DIAGNOSTIC_MAX: usize = 500;

/// The most bytes of a message the parser reads.
pub const PARSE_MAX: usize = 256 * 1024;

/// The most recipients (findings) read from one report, and the most VERP
/// addresses collected from it: a real bounce names a few; a report naming
/// thousands is read no further.
pub const MAX_FINDINGS: usize = 20;

/// What a report says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The address does not exist (unknown user or domain, closed account).
    Hard,
    /// A condition of the mailbox or the message: full, too large, or a
    /// temporary failure that expired.
    Soft,
    /// Refused by policy: spam filtering, block lists, authentication.
    Policy,
    /// The recipient reported the message as spam (or fraud, or a virus).
    Complaint,
    /// An automatic reply such as a vacation notice: not a bounce.
    AutoReply,
    /// The message is delayed and still being retried: not a bounce.
    Delay,
    /// Nothing Herald acts on: a success notice, a human reply, a newsletter,
    /// or a report that could not be read.
    Unknown,
}

impl Verdict {
    /// Every verdict, in the order of the enum.
    pub const ALL: [Verdict; 7] = [
        Verdict::Hard,
        Verdict::Soft,
        Verdict::Policy,
        Verdict::Complaint,
        Verdict::AutoReply,
        Verdict::Delay,
        Verdict::Unknown,
    ];

    /// The name shown by the API and used in the corpus.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Hard => "hard",
            Verdict::Soft => "soft",
            Verdict::Policy => "policy",
            Verdict::Complaint => "complaint",
            Verdict::AutoReply => "auto_reply",
            Verdict::Delay => "delay",
            Verdict::Unknown => "unknown",
        }
    }

    /// The verdict of a name from [`Verdict::as_str`]; `auto-reply` is
    /// accepted for `auto_reply`, and case does not matter.
    pub fn parse(s: &str) -> Option<Verdict> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether this is a bounce: hard, soft or policy.
    pub fn is_bounce(self) -> bool {
        self.bounce_class().is_some()
    }

    /// The delivery layer's class of a bounce verdict.
    pub fn bounce_class(self) -> Option<BounceClass> {
        match self {
            Verdict::Hard => Some(BounceClass::Hard),
            Verdict::Soft => Some(BounceClass::Soft),
            Verdict::Policy => Some(BounceClass::Policy),
            _ => None,
        }
    }
}

/// What kind of message it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A delivery status notification (`message/delivery-status`).
    Dsn,
    /// A feedback-loop report (`message/feedback-report`, or Microsoft's old
    /// JMRP complaint).
    Arf,
    /// A bounce in free text, without a delivery-status part.
    PlainBounce,
    /// An automatic reply.
    AutoReply,
    /// None of these.
    Unknown,
}

impl Format {
    /// The name shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Dsn => "dsn",
            Format::Arf => "arf",
            Format::PlainBounce => "plain_bounce",
            Format::AutoReply => "auto_reply",
            Format::Unknown => "unknown",
        }
    }
}

/// One recipient's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The address the report is about, without `rfc822;` and brackets:
    /// Original-Recipient or Final-Recipient of a DSN, the failed address of
    /// a plain bounce, Original-Rcpt-To (or the copy's recipient) of an ARF
    /// report, the sender of an auto-reply. `None` when the report names none
    /// (or redacts it).
    pub recipient: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// The enhanced status code (`5.1.1`), from the Status field or found in
    /// the text.
    pub status: Option<String>,
    /// The Diagnostic-Code or the bounce's explanatory line: one line of at
    /// most [`DIAGNOSTIC_MAX`] characters.
    pub diagnostic: Option<String>,
}

impl Finding {
    /// A finding with only a verdict and maybe a recipient.
    fn bare(recipient: Option<String>, verdict: Verdict) -> Finding {
        Finding {
            recipient,
            verdict,
            status: None,
            diagnostic: None,
        }
    }
}

/// A parsed report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The kind of message.
    pub format: Format,
    /// One finding per recipient the report is about; at least one (an
    /// unknown one when nothing was found).
    pub findings: Vec<Finding>,
    /// The Message-ID (without brackets) of the message the report is
    /// about: from the returned copy (attached, headers only, or quoted),
    /// from Gmail's X-Original-Message-ID, or, for an auto-reply or other
    /// reply, from In-Reply-To.
    pub original_message_id: Option<String>,
    /// Envelope senders found in the returned copy and the report's fields
    /// (Return-Path, X-Original-Return-Path, X-Envelope-From, `envelope-from`
    /// in Received, X-Postfix-Sender, ARF Original-Mail-From) and every
    /// Herald VERP address (`b-<hex>@domain`) in the body; deduplicated. The
    /// report's own headers (its To is the VERP address it was sent to) are
    /// not searched: the listener knows its envelope.
    pub original_return_paths: Vec<String>,
    /// The ARF Feedback-Type (`abuse`, `fraud`, …), lower case.
    pub feedback_type: Option<String>,
    /// The report's Subject, decoded.
    pub subject: Option<String>,
    /// The report's From address.
    pub from: Option<String>,
}

impl Report {
    /// The verdict of the first finding.
    pub fn verdict(&self) -> Verdict {
        self.findings
            .first()
            .map_or(Verdict::Unknown, |finding| finding.verdict)
    }
}

/// Parses and classifies an inbound report. Never fails: what cannot be read
/// is [`Format::Unknown`] with one [`Verdict::Unknown`] finding.
pub fn parse(raw: &[u8]) -> Report {
    // What a report says is in its first part and the headers of the copy
    // it returns; the rest (a returned message's body, attachments) is not
    // read, so a huge or hostile message costs no more than this much.
    let raw = &raw[..raw.len().min(PARSE_MAX)];
    let Some(message) = MessageParser::new().parse(raw) else {
        return unknown(&Top::default(), CopyInfo::default());
    };
    let top = Top::read(&message);
    let parts = Parts::collect(&message);
    let mut report = classify(raw, &message, &top, &parts);
    // A VERP address anywhere below the report's own headers names Herald's
    // message, whatever part (or transcript line) it stands in.
    let body = body_of(raw);
    for text in [String::from_utf8_lossy(body).as_ref(), parts.human.as_str()] {
        for verp in text::verp_addresses(text) {
            if report.original_return_paths.len() < MAX_FINDINGS
                && !report
                    .original_return_paths
                    .iter()
                    .any(|known| known.eq_ignore_ascii_case(&verp))
            {
                report.original_return_paths.push(verp);
            }
        }
    }
    report
}

/// The report by kind, in the order of the module doc.
fn classify(raw: &[u8], message: &Message<'_>, top: &Top, parts: &Parts) -> Report {
    if parts.feedback.is_some() || parts.report_type == "feedback-report" {
        return arf::report(raw, top, parts);
    }
    if !parts.dsn.is_empty() {
        return dsn::report(top, parts);
    }
    if parts.copy.hotmail_recipient.is_some() {
        return arf::old_jmrp(top, parts);
    }
    if parts.report_type == "disposition-notification" {
        return unknown(top, parts.copy.clone());
    }
    if let Some(report) = plain::report(message, top, parts) {
        return report;
    }
    let mut copy = parts.copy.clone();
    if copy.message_id.is_none() {
        copy.message_id = top.in_reply_to.clone();
    }
    if autoreply::detect(message, top, parts) {
        return top.report(
            Format::AutoReply,
            vec![Finding::bare(top.from.clone(), Verdict::AutoReply)],
            copy,
            None,
        );
    }
    unknown(top, copy)
}

/// The raw message below its header block (all of it when no blank line
/// ends the headers).
fn body_of(raw: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(raw, b"\r\n\r\n")
        .map(|at| at + 4)
        .into_iter()
        .chain(memchr::memmem::find(raw, b"\n\n").map(|at| at + 2))
        .min()
        .unwrap_or(0);
    raw.get(end..).unwrap_or_default()
}

/// A report that says nothing Herald acts on.
fn unknown(top: &Top, copy: CopyInfo) -> Report {
    top.report(
        Format::Unknown,
        vec![Finding::bare(None, Verdict::Unknown)],
        copy,
        None,
    )
}

/// What the report's own headers say.
#[derive(Debug, Default)]
struct Top {
    /// The decoded Subject.
    subject: Option<String>,
    /// The Subject folded for matching ("" without one).
    folded_subject: String,
    /// The From address.
    from: Option<String>,
    /// The From display name, folded.
    folded_from_name: String,
    /// The Message-ID the report replies to (In-Reply-To, else the last of
    /// References).
    in_reply_to: Option<String>,
}

impl Top {
    /// Reads the headers of the report.
    fn read(message: &Message<'_>) -> Top {
        let subject = message.subject().map(str::to_owned);
        let folded_subject = subject.as_deref().map(fold).unwrap_or_default();
        let first_from = message.from().and_then(|from| from.first());
        let from = first_from
            .and_then(|addr| addr.address())
            .map(str::to_owned)
            .or_else(|| raw_header(message, "from").and_then(clean_address));
        let folded_from_name = first_from
            .and_then(|addr| addr.name())
            .map(fold)
            .unwrap_or_default();
        let in_reply_to = raw_header(message, "in-reply-to")
            .and_then(clean_message_id)
            .or_else(|| {
                raw_header(message, "references")
                    .and_then(|refs| refs.split_whitespace().last().and_then(clean_message_id))
            });
        Top {
            subject,
            folded_subject,
            from,
            folded_from_name,
            in_reply_to,
        }
    }

    /// A report with the top-level fields filled in.
    fn report(
        &self,
        format: Format,
        findings: Vec<Finding>,
        copy: CopyInfo,
        feedback_type: Option<String>,
    ) -> Report {
        let findings = if findings.is_empty() {
            vec![Finding::bare(None, Verdict::Unknown)]
        } else {
            findings
        };
        Report {
            format,
            findings,
            original_message_id: copy.message_id,
            original_return_paths: copy.return_paths,
            feedback_type,
            subject: self.subject.clone(),
            from: self.from.clone(),
        }
    }
}

/// The raw value of the report's first header called `name` (any case),
/// trimmed; `None` when absent or empty.
fn raw_header<'a>(message: &'a Message<'_>, name: &str) -> Option<&'a str> {
    message
        .headers_raw()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The parts of the report that matter, gathered in one walk.
#[derive(Debug, Default)]
struct Parts {
    /// The `report-type` of a top `multipart/report`, lower case.
    report_type: String,
    /// The text of the `message/feedback-report` part.
    feedback: Option<String>,
    /// The texts of `message/delivery-status` parts.
    dsn: Vec<String>,
    /// What the attached copy (`message/rfc822` or `text/rfc822-headers`)
    /// says.
    copy: CopyInfo,
    /// Whether a copy was attached.
    has_copy: bool,
    /// The text written for people: the first text part (HTML turned into
    /// text when there is no plain one).
    human: String,
}

impl Parts {
    /// Walks the report's parts (not those inside an attached message).
    fn collect(message: &Message<'_>) -> Parts {
        let mut parts = Parts {
            report_type: message
                .content_type()
                .filter(|ct| {
                    ct.ctype().eq_ignore_ascii_case("multipart")
                        && ct
                            .subtype()
                            .is_some_and(|s| s.eq_ignore_ascii_case("report"))
                })
                .and_then(|ct| ct.attribute("report-type"))
                .map(|t| t.trim().to_ascii_lowercase())
                .unwrap_or_default(),
            human: message
                .body_text(0)
                .map(|text| text.into_owned())
                .unwrap_or_default(),
            ..Parts::default()
        };
        for part in &message.parts {
            let (ctype, subtype) = part
                .content_type()
                .map(|ct| {
                    (
                        ct.ctype().to_ascii_lowercase(),
                        ct.subtype().unwrap_or_default().to_ascii_lowercase(),
                    )
                })
                .unwrap_or_default();
            let contents = || String::from_utf8_lossy(part.contents()).into_owned();
            match (&part.body, ctype.as_str(), subtype.as_str()) {
                (PartType::Message(copy), _, _) => {
                    parts.has_copy = true;
                    let raw = String::from_utf8_lossy(copy.raw_message());
                    parts.copy.scan_headers(&raw);
                }
                (_, "message", "feedback-report") => {
                    parts.feedback.get_or_insert_with(contents);
                }
                (_, "message" | "text", "delivery-status" | "global-delivery-status") => {
                    parts.dsn.push(contents());
                }
                (_, "text" | "message", "rfc822-headers" | "global-headers")
                | (_, "message", "rfc822" | "global") => {
                    parts.has_copy = true;
                    parts.copy.scan_headers(&contents());
                }
                _ => {}
            }
        }
        // A report whose MIME structure is broken (a boundary that does not
        // match) has no parts: its raw body is the text to read, and the
        // delivery-status fields may still be found in it.
        if parts.human.trim().is_empty() {
            parts.human = String::from_utf8_lossy(body_of(message.raw_message())).into_owned();
        }
        if parts.dsn.is_empty() && parts.feedback.is_none() && has_dsn_fields(&parts.human) {
            parts.dsn.push(parts.human.clone());
        }
        parts
    }
}

/// Whether text holds the per-recipient fields of a delivery-status report.
fn has_dsn_fields(text: &str) -> bool {
    let mut recipient = false;
    let mut action_or_status = false;
    for line in text.lines() {
        let lower = line.get(..16).unwrap_or(line).to_ascii_lowercase();
        recipient |= lower.starts_with("final-recipient:");
        action_or_status |= lower.starts_with("action:") || lower.starts_with("status:");
    }
    recipient && action_or_status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_names_round_trip() {
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::parse(verdict.as_str()), Some(verdict));
        }
        assert_eq!(Verdict::parse("auto-reply"), Some(Verdict::AutoReply));
        assert_eq!(Verdict::parse("HARD"), Some(Verdict::Hard));
        assert_eq!(Verdict::parse("bounce"), None);
        assert!(Verdict::Policy.is_bounce());
        assert!(!Verdict::Delay.is_bounce());
        assert!(!Verdict::AutoReply.is_bounce());
        assert_eq!(Verdict::Soft.bounce_class(), Some(BounceClass::Soft));
    }

    #[test]
    fn garbage_is_unknown() {
        for raw in [
            &b""[..],
            b"\x00\xff\xfe garbage \x01",
            b"no headers at all",
            b"Subject: \r\n\r\n",
        ] {
            let report = parse(raw);
            assert_eq!(report.findings.len(), 1);
            assert_eq!(report.verdict(), Verdict::Unknown, "{raw:?}");
        }
    }
}

/// The tricky rules, each on a small message; the corpus in `tests/bounces`
/// covers the real shapes.
#[cfg(test)]
mod rules {
    use super::*;

    /// Parses a message written with `\n` line ends.
    fn parse_text(text: &str) -> Report {
        parse(text.replace('\n', "\r\n").as_bytes())
    }

    /// Checks the first finding's verdict and recipient.
    fn check(text: &str, verdict: Verdict, recipient: Option<&str>) -> Result<Report, String> {
        let report = parse_text(text);
        let Some(finding) = report.findings.first() else {
            return Err("no finding".to_owned());
        };
        if finding.verdict != verdict || finding.recipient.as_deref() != recipient {
            return Err(format!(
                "got {:?} for {:?}, want {verdict:?} for {recipient:?}",
                finding.verdict, finding.recipient
            ));
        }
        Ok(report)
    }

    const VERP: &str = "b-0123456789abcdef0123456789abcdef0123@bounces.shop.example";

    fn dsn(action: &str, status: &str, diagnostic: &str, subject: &str) -> String {
        format!(
            "From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\n\
             To: {VERP}\nSubject: {subject}\nAuto-Submitted: auto-replied\nMIME-Version: 1.0\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n\
             --B\nContent-Type: text/plain\n\nThe mail system\n\n\
             --B\nContent-Type: message/delivery-status\n\n\
             Reporting-MTA: dns; mx.example.org\nX-Postfix-Sender: rfc822; {VERP}\n\n\
             Final-Recipient: rfc822; anna@example.org\nAction: {action}\nStatus: {status}\n\
             Diagnostic-Code: smtp; {diagnostic}\n\n\
             --B\nContent-Type: text/rfc822-headers\n\n\
             Return-Path: <{VERP}>\nMessage-ID: <c12.65537.99@shop.example>\nTo: anna@example.org\n\n\
             --B--\n"
        )
    }

    #[test]
    fn a_bounce_with_auto_submitted_is_a_bounce() -> Result<(), String> {
        let report = check(
            &dsn(
                "failed",
                "5.1.1",
                "550 5.1.1 user unknown",
                "Undelivered Mail Returned to Sender",
            ),
            Verdict::Hard,
            Some("anna@example.org"),
        )?;
        assert_eq!(report.format, Format::Dsn);
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("c12.65537.99@shop.example")
        );
        assert_eq!(report.original_return_paths, vec![VERP.to_owned()]);
        Ok(())
    }

    #[test]
    fn a_delayed_action_is_a_delay_whatever_the_code() -> Result<(), String> {
        check(
            &dsn(
                "delayed",
                "4.2.2",
                "452 4.2.2 mailbox full",
                "Delayed Mail (still being retried)",
            ),
            Verdict::Delay,
            Some("anna@example.org"),
        )?;
        check(
            &dsn(
                "delivered",
                "2.0.0",
                "250 2.0.0 Ok",
                "Successful Mail Delivery Report",
            ),
            Verdict::Unknown,
            Some("anna@example.org"),
        )
        .map(|_| ())
    }

    #[test]
    fn a_generic_status_yields_to_the_diagnostic() -> Result<(), String> {
        let report = check(
            &dsn(
                "failed",
                "5.0.0",
                "550 5.7.1 Message rejected as spam",
                "Returned mail",
            ),
            Verdict::Policy,
            Some("anna@example.org"),
        )?;
        assert_eq!(report.findings[0].status.as_deref(), Some("5.7.1"));
        Ok(())
    }

    #[test]
    fn a_plain_delay_warning_that_mentions_giving_up_is_a_delay() -> Result<(), String> {
        check(
            "From: Mail Delivery System <Mailer-Daemon@mx.example.com>\n\
             Subject: Warning: message 1rk2Qx-00A1bC-0S delayed 24 hours\n\
             Auto-Submitted: auto-replied\n\n\
             A message that you sent has not yet been delivered to one or more of its\n\
             recipients after more than 24 hours on the queue.\n\n  tomasz@example.com\n\
             \x20   Delay reason: 451 4.7.1 Greylisting in action\n\n\
             Eventually the mail delivery software will give up, and when that happens,\n\
             the message will be returned to you.\n",
            Verdict::Delay,
            Some("tomasz@example.com"),
        )
        .map(|_| ())
    }

    #[test]
    fn auto_replies_are_never_bounces() -> Result<(), String> {
        // Auto-Submitted alone.
        check(
            "From: Jan <jan@example.pl>\nTo: sklep@shop.example\nSubject: Re: oferta\n\
             Auto-Submitted: auto-replied\n\nJestem na urlopie.\n",
            Verdict::AutoReply,
            Some("jan@example.pl"),
        )?;
        // A Polish Exchange subject without any header.
        let report = check(
            "From: =?utf-8?q?Magdalena_Wr=C3=B3bel?= <m@urzad.example.pl>\n\
             Subject: =?utf-8?q?Odpowied=C5=BA_automatyczna=3A_oferta?=\n\
             In-Reply-To: <c3.4.5@shop.example>\n\nNie ma mnie w biurze.\n",
            Verdict::AutoReply,
            Some("m@urzad.example.pl"),
        )?;
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("c3.4.5@shop.example")
        );
        // A vacation notice from a postmaster mailbox.
        check(
            "From: postmaster@example.pl\nSubject: Automatic reply: oferta\n\n\
             I am out of the office; the mail could not be delivered to me now.\n",
            Verdict::AutoReply,
            Some("postmaster@example.pl"),
        )
        .map(|_| ())
    }

    #[test]
    fn x_auto_response_suppress_alone_is_not_an_auto_reply() -> Result<(), String> {
        check(
            "From: Grzegorz <g@contoso.example>\nSubject: RE: oferta\n\
             X-Auto-Response-Suppress: All\n\nProszę o usunięcie z listy.\n",
            Verdict::Unknown,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn a_newsletter_with_a_vacation_subject_is_unknown() -> Result<(), String> {
        check(
            "From: news@travel.example.pl\nSubject: Urlop w Tatrach -30%\n\
             List-Unsubscribe: <https://travel.example.pl/u>\nPrecedence: bulk\n\n\
             Jesteś poza biurem? Out of office?\n",
            Verdict::Unknown,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn mailto_unsubscribe_and_daemon_notices_are_not_auto_replies() -> Result<(), String> {
        check(
            "From: someone@icloud.example\nSubject: unsubscribe\nAuto-Submitted: auto-replied\n\n\
             Apple Mail sent this email to unsubscribe.\n",
            Verdict::Unknown,
            None,
        )?;
        check(
            "From: Mail Delivery System <mailer-daemon@mx.example.com>\n\
             Subject: Queue report\nAuto-Submitted: auto-generated\n\nAll is well.\n",
            Verdict::Unknown,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn arf_types() -> Result<(), String> {
        let arf = |kind: &str, rcpt: &str| {
            format!(
                "From: fbl@isp.example\nSubject: report\nMIME-Version: 1.0\n\
                 Content-Type: multipart/report; report-type=feedback-report; boundary=\"A\"\n\n\
                 --A\nContent-Type: text/plain\n\nAn abuse report.\n\n\
                 --A\nContent-Type: message/feedback-report\n\n\
                 Feedback-Type: {kind}\nUser-Agent: ISP-FBL/1.0\nVersion: 1\n\
                 Original-Mail-From: <{VERP}>\nOriginal-Rcpt-To: <{rcpt}>\n\n\
                 --A\nContent-Type: message/rfc822\n\n\
                 From: sklep@shop.example\nTo: {rcpt}\nMessage-ID: <c1.2.3@shop.example>\n\nHello\n\n\
                 --A--\n"
            )
        };
        let report = check(
            &arf("abuse", "ewa@isp.example"),
            Verdict::Complaint,
            Some("ewa@isp.example"),
        )?;
        assert_eq!(report.feedback_type.as_deref(), Some("abuse"));
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("c1.2.3@shop.example")
        );
        assert_eq!(report.original_return_paths, vec![VERP.to_owned()]);
        check(
            &arf("opt-out", "ewa@isp.example"),
            Verdict::Complaint,
            Some("ewa@isp.example"),
        )?;
        check(
            &arf("not-spam", "ewa@isp.example"),
            Verdict::Unknown,
            Some("ewa@isp.example"),
        )?;
        check(
            &arf("abuse", "redacted@isp.example"),
            Verdict::Complaint,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn a_dsn_with_a_broken_boundary_is_still_read() -> Result<(), String> {
        let text = dsn(
            "failed",
            "5.1.1",
            "550 5.1.1 user unknown",
            "Undelivered Mail Returned to Sender",
        )
        .replace("boundary=\"B\"", "boundary=\"NOT-THE-ONE\"");
        let report = check(&text, Verdict::Hard, Some("anna@example.org"))?;
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("c12.65537.99@shop.example")
        );
        Ok(())
    }

    #[test]
    fn plain_bounces_name_their_recipients() -> Result<(), String> {
        let report = check(
            &format!(
                "From: MAILER-DAEMON@mail.example.pl\nTo: {VERP}\nSubject: failure notice\n\n\
                 Hi. This is the qmail-send program at mail.example.pl.\n\
                 This is a permanent error; I've given up. Sorry it didn't work out.\n\n\
                 <kasia@example.pl>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n\
                 <ola@example.pl>:\nConnected to 192.0.2.50 but connection died. (#4.4.2)\n\
                 I'm not going to try again; this message has been in the queue too long.\n\n\
                 --- Below this line is a copy of the message.\n\n\
                 Return-Path: <{VERP}>\nMessage-ID: <c7.8.9@shop.example>\nTo: kasia@example.pl\n\nHi\n"
            ),
            Verdict::Hard,
            Some("kasia@example.pl"),
        )?;
        assert_eq!(report.format, Format::PlainBounce);
        assert_eq!(report.findings.len(), 2);
        assert_eq!(report.findings[0].status.as_deref(), Some("5.1.1"));
        assert_eq!(report.findings[1].verdict, Verdict::Soft);
        assert_eq!(report.findings[1].status.as_deref(), Some("4.4.2"));
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("c7.8.9@shop.example")
        );
        assert_eq!(report.original_return_paths, vec![VERP.to_owned()]);
        Ok(())
    }

    #[test]
    fn diagnostics_are_one_line_of_at_most_500_characters() -> Result<(), String> {
        let long = "x".repeat(2000);
        let report = check(
            &dsn(
                "failed",
                "5.2.2",
                &format!("552 5.2.2 mailbox full {long}"),
                "Undelivered Mail",
            ),
            Verdict::Soft,
            Some("anna@example.org"),
        )?;
        let diagnostic = report.findings[0].diagnostic.clone().unwrap_or_default();
        assert_eq!(diagnostic.chars().count(), DIAGNOSTIC_MAX);
        assert!(!diagnostic.contains('\n'));
        Ok(())
    }

    /// A report naming thousands of recipients is read only as far as
    /// MAX_FINDINGS, and a message larger than PARSE_MAX only that far.
    #[test]
    fn huge_reports_are_read_only_so_far() {
        let mut dsn = String::from(
            "From: MAILER-DAEMON@mx.test\nSubject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: text/plain\n\nbounced\n\n--B\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.test\n",
        );
        for i in 0..5000 {
            dsn.push_str(&format!(
                "\nFinal-Recipient: rfc822; u{i}@a.test\nAction: failed\nStatus: 5.1.1\n"
            ));
        }
        dsn.push_str("\n--B--\n");
        let r = parse_text(&dsn);
        assert_eq!(r.findings.len(), MAX_FINDINGS);
        assert!(r.findings.iter().all(|f| f.verdict == Verdict::Hard));
        let mut plain = String::from(
            "From: MAILER-DAEMON@mx.test\nSubject: Undelivered Mail Returned to Sender\n\n",
        );
        for i in 0..50_000 {
            plain.push_str(&format!("u{i}@a.test "));
        }
        let r = parse_text(&plain);
        assert!(r.findings.len() <= MAX_FINDINGS, "{}", r.findings.len());
    }
}
