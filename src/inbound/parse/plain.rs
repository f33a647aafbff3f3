//! Plain-text bounces: messages from a mailer daemon without a
//! delivery-status part (Exim's classic "Mail delivery failed", qmail's
//! "failure notice", Yahoo's, old Sendmail and Exchange, Polish providers).
//! The text is cut where the returned copy begins; the part before it names
//! the failed recipients and the SMTP reply.

use mail_parser::Message;

use super::autoreply;
use super::classify::{
    Evidence, FAILURE_SUBJECTS, Status, classify_failure, says_delayed, says_success,
};
use super::fields::CopyInfo;
use super::text::{
    addresses, clean_address, contains_any, find_smtp_code, find_status, fold, is_verp, one_line,
};
use super::{DIAGNOSTIC_MAX, Finding, Format, Parts, Report, Top, Verdict, raw_header};

/// Local parts of addresses that send bounces.
const DAEMONS: &[&str] = &[
    "mailer-daemon",
    "mailerdaemon",
    "mail-daemon",
    "postmaster",
    "mdaemon",
    "mail.delivery.system",
];

/// Display names of bounce senders (folded).
const DAEMON_NAMES: &[&str] = &[
    "mail delivery system",
    "mail delivery subsystem",
    "mail delivery service",
    "mailer-daemon",
    "mailer daemon",
    "postmaster",
    "system pocztowy",
];

/// Subject phrases of bounces and delay notices (folded), anywhere in the
/// subject, beside the beginnings in [`FAILURE_SUBJECTS`].
const BOUNCE_SUBJECTS: &[&str] = &[
    "undelivered mail",
    "returned to sender",
    "mail delivery failed",
    "delivery status notification",
    "delivery notification",
    "non-delivery report",
    "could not be delivered",
    "couldn't be delivered",
    "mail failure",
    "undeliverable",
    "warning: could not send message",
    "warning: message",
    "delayed mail",
    "delivery delayed",
    "message delayed",
    "niedostarczona wiadomosc",
    "wiadomosc niedostarczona",
    "nie dostarczono",
    "nie mozna dostarczyc",
    "blad dostarczenia",
    "opoznienie",
];

/// Lines (folded) that begin the returned copy in a plain bounce's text.
const COPY_MARKERS: &[&str] = &[
    "copy of the message",
    "copy of your message",
    "copy of the original message",
    "below this line is a copy",
    "original message follows",
    "original message headers",
    "returned mail follows",
    "returned message follows",
    "message header follows",
    "headers of the original message",
    "undelivered message headers",
    "kopia wiadomosci",
    "oryginalna wiadomosc",
    "tresc oryginalnej wiadomosci",
    "naglowki oryginalnej wiadomosci",
];

/// Header names whose line, at the start of a line, begins an inline copy.
const COPY_FIRST_FIELDS: &[&str] = &["return-path:", "received:", "dkim-signature:"];

/// Phrases that say a delivery failed (folded), for a bounce recognised only
/// by its sender.
const FAILURE_WORDS: &[&str] = &[
    "could not be delivered",
    "couldn't be delivered",
    "wasn't delivered",
    "was not delivered",
    "undeliverable",
    "unable to deliver",
    "not able to deliver",
    "wasn't able to deliver",
    "delivery has failed",
    "delivery failed",
    "permanent error",
    "permanent fatal error",
    "failed permanently",
    "address(es) failed",
    "did not reach the following recipient",
    "could not deliver",
    "couldn't deliver",
    "nie zostala dostarczona",
    "nie mogla zostac dostarczona",
    "nie mozna dostarczyc",
    "niedostarcz",
    "nie dostarczono",
];

/// Whether the report comes from a mailer daemon or postmaster.
pub(super) fn daemon_sender(top: &Top) -> bool {
    top.from.as_deref().is_some_and(|from| {
        let local = from
            .split('@')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        DAEMONS.contains(&local.as_str())
    }) || contains_any(&top.folded_from_name, DAEMON_NAMES)
}

/// Whether the report's headers mark it as a bounce or delay notice: sent
/// by a daemon (weak), and with a bounce subject or a failure header
/// (strong).
fn bounce_headers(message: &Message<'_>, top: &Top) -> (bool, bool) {
    let daemon_sender = daemon_sender(top);
    let subject = &top.folded_subject;
    let reply_or_forward = ["re:", "fw:", "fwd:", "odp:", "pd:"]
        .iter()
        .any(|p| subject.starts_with(p));
    let bounce_subject = !reply_or_forward
        && (FAILURE_SUBJECTS.iter().any(|s| subject.starts_with(s))
            || contains_any(subject, BOUNCE_SUBJECTS));
    let failed_header = raw_header(message, "x-failed-recipients").is_some()
        || raw_header(message, "x-ms-exchange-message-is-ndr").is_some();
    (daemon_sender, bounce_subject || failed_header)
}

/// The report of a plain-text bounce or delay notice; `None` when the
/// message is none.
pub(super) fn report(message: &Message<'_>, top: &Top, parts: &Parts) -> Option<Report> {
    let (daemon_sender, strong) = bounce_headers(message, top);
    if !daemon_sender && !strong {
        return None;
    }
    if !strong && autoreply::subject_says_autoreply(&top.folded_subject) {
        // A vacation notice from a postmaster mailbox is still a vacation
        // notice.
        return None;
    }
    let (text, quoted) = split_report(&parts.human);
    let folded = fold(text);
    if !strong
        && !contains_any(&folded, FAILURE_WORDS)
        && find_smtp_code(text).is_none()
        && !says_delayed(&top.folded_subject, &folded)
    {
        return None;
    }
    let mut copy = parts.copy.clone();
    if let Some(quoted) = quoted {
        let mut info = CopyInfo::default();
        info.scan_quoted(quoted);
        copy.merge(info);
    }
    let failed = raw_header(message, "x-failed-recipients");
    let findings = findings_from_text(top, &parts.human, &copy, failed);
    Some(top.report(Format::PlainBounce, findings, copy, None))
}

/// The findings a bounce's text gives: one per failed recipient, each
/// classified from the text about it. `failed` is an `X-Failed-Recipients`
/// value, which names the recipients when present.
pub(super) fn findings_from_text(
    top: &Top,
    body: &str,
    copy: &CopyInfo,
    failed: Option<&str>,
) -> Vec<Finding> {
    let (text, _) = split_report(body);
    let folded = fold(text);
    let verdict_all = if says_delayed(&top.folded_subject, &folded) {
        Some(Verdict::Delay)
    } else if says_success(&top.folded_subject, &folded) {
        Some(Verdict::Unknown)
    } else {
        None
    };
    let candidates = recipients(text, top, copy, failed);
    // What the whole text says is worked out once, not once per recipient.
    let whole = Whole::of(text, &folded, &top.folded_subject);
    let mut findings = Vec::new();
    if candidates.is_empty() {
        let recipient = copy.to.clone().filter(|to| !is_verp(to));
        findings.push(finding(recipient, text, &whole, verdict_all));
    }
    for (i, (start, address)) in candidates.iter().enumerate() {
        let end = candidates.get(i + 1).map_or(text.len(), |(next, _)| *next);
        let segment = if candidates.len() == 1 {
            text
        } else {
            text.get(*start..end.max(*start)).unwrap_or(text)
        };
        findings.push(finding(Some(address.clone()), segment, &whole, verdict_all));
    }
    findings
}

/// What a bounce's whole text says: its status, SMTP code, verdict (when
/// specific, else from the subject) and explanatory line.
struct Whole {
    status: Option<String>,
    smtp: Option<u16>,
    /// The verdict the whole text gives, given the status a recipient's
    /// segment did or did not name (computed for the whole text's status).
    specific: Option<Verdict>,
    subject_verdict: Verdict,
    line: Option<String>,
}

impl Whole {
    fn of(text: &str, folded: &str, subject: &str) -> Whole {
        let status = find_status(text);
        let smtp = find_smtp_code(text);
        let parsed = status.as_deref().and_then(Status::parse);
        let (verdict, evidence) = classify_failure(parsed, smtp, folded);
        Whole {
            specific: (evidence == Evidence::Specific).then_some(verdict),
            subject_verdict: classify_failure(parsed, smtp, subject).0,
            status,
            smtp,
            line: explanatory_line(text),
        }
    }
}

/// One recipient's finding from the text about it (`segment`) and what the
/// whole report text says.
fn finding(
    recipient: Option<String>,
    segment: &str,
    whole: &Whole,
    verdict: Option<Verdict>,
) -> Finding {
    let own_status = find_status(segment);
    let status = own_status.clone().or_else(|| whole.status.clone());
    let smtp = find_smtp_code(segment).or(whole.smtp);
    let verdict = verdict.unwrap_or_else(|| {
        let parsed = status.as_deref().and_then(Status::parse);
        let (verdict, evidence) = classify_failure(parsed, smtp, &fold(segment));
        if evidence == Evidence::Specific {
            return verdict;
        }
        if let Some(v) = whole.specific {
            return v;
        }
        // Some systems say it only in the subject ("DELIVERY FAILURE: User
        // … not listed in Domino Directory").
        whole.subject_verdict
    });
    Finding {
        recipient,
        verdict,
        status,
        diagnostic: explanatory_line(segment).or_else(|| whole.line.clone()),
    }
}

/// The failed recipients a bounce names, with where each is first named in
/// the text (0 for those from `X-Failed-Recipients` not found in it).
fn recipients(
    text: &str,
    top: &Top,
    copy: &CopyInfo,
    failed: Option<&str>,
) -> Vec<(usize, String)> {
    let mut found: Vec<(usize, String)> = Vec::new();
    if let Some(failed) = failed {
        let lower = text.to_ascii_lowercase();
        for address in failed
            .split(',')
            .filter_map(clean_address)
            .take(super::MAX_FINDINGS)
        {
            let at = lower.find(&address.to_ascii_lowercase()).unwrap_or(0);
            if !found.iter().any(|(_, a)| a.eq_ignore_ascii_case(&address)) {
                found.push((at, address));
            }
        }
        found.sort_by_key(|(at, _)| *at);
        return found;
    }
    for (seen, (at, address)) in addresses(text).into_iter().enumerate() {
        if found.len() >= super::MAX_FINDINGS || seen >= 10 * super::MAX_FINDINGS {
            break;
        }
        if excluded(text, at, &address, top, copy)
            || found.iter().any(|(_, a)| a.eq_ignore_ascii_case(&address))
        {
            continue;
        }
        found.push((at, address));
    }
    found
}

/// Whether an address in a bounce's text is not a failed recipient: a
/// daemon, the report's sender, a VERP return path or other envelope
/// sender, a Message-ID, or an address in a header line or a link.
fn excluded(text: &str, at: usize, address: &str, top: &Top, copy: &CopyInfo) -> bool {
    let local = address
        .split('@')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if DAEMONS.contains(&local.as_str())
        || local == "abuse"
        || local.starts_with("noreply")
        || local.starts_with("no-reply")
        || is_verp(address)
    {
        return true;
    }
    let same = |other: &Option<String>| {
        other
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(address))
    };
    if same(&top.from) || same(&copy.from) || same(&copy.message_id) || same(&top.in_reply_to) {
        return true;
    }
    if copy
        .return_paths
        .iter()
        .any(|r| r.eq_ignore_ascii_case(address))
    {
        return true;
    }
    // The line before the address, looked for only within 200 bytes (a
    // header name is short; a line of thousands of addresses is not read
    // again for each).
    let mut from = at.saturating_sub(200);
    while from > 0 && !text.is_char_boundary(from) {
        from -= 1;
    }
    let window = text.get(from..at).unwrap_or_default();
    let before = window.rfind('\n').map_or(window, |n| &window[n + 1..]);
    let lower = before.trim_start().to_ascii_lowercase();
    [
        "from:",
        "sender:",
        "reply-to:",
        "message-id:",
        "return-path:",
        "references:",
        "in-reply-to:",
        "nadawca:",
        "od:",
    ]
    .iter()
    .any(|field| lower.starts_with(field))
        || lower.ends_with("message-id <")
        || before
            .rsplit(char::is_whitespace)
            .next()
            .is_some_and(|word| word.contains("://"))
}

/// A bounce's text split at the start of the returned copy: the report
/// part, and the copy part when there is one.
pub(super) fn split_report(body: &str) -> (&str, Option<&str>) {
    let mut offset = 0;
    for line in body.split_inclusive('\n') {
        let trimmed = line.trim();
        let folded = fold(trimmed);
        let marker = contains_any(&folded, COPY_MARKERS)
            || (trimmed.starts_with(['-', '=', '_', '*'])
                && (folded.contains("original message") || folded.contains("oryginaln")));
        let field = COPY_FIRST_FIELDS
            .iter()
            .any(|f| line.to_ascii_lowercase().starts_with(f));
        if (marker || field) && offset > 0 {
            return (body.get(..offset).unwrap_or(body), body.get(offset..));
        }
        offset += line.len();
    }
    (body, None)
}

/// The line of a bounce's text that explains it: the first line holding an
/// SMTP reply or a status code (with the indented lines that continue it),
/// else the first line whose words alone say why delivery failed.
pub(super) fn explanatory_line(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        if find_smtp_code(line).is_none() && find_status(line).is_none() {
            continue;
        }
        let mut joined = line.trim().to_owned();
        for next in lines.iter().skip(i + 1) {
            if next.trim().is_empty() || indent(next) <= indent(line) {
                break;
            }
            joined.push(' ');
            joined.push_str(next.trim());
        }
        return Some(one_line(&joined, DIAGNOSTIC_MAX));
    }
    let (i, line) = lines.iter().enumerate().find(|(_, line)| {
        !line.trim().is_empty() && classify_failure(None, None, &fold(line)).1 == Evidence::Specific
    })?;
    // An indented reason goes on at the same indentation (Exim wraps so).
    let mut joined = line.trim().to_owned();
    if indent(line) > 0 {
        for next in lines.iter().skip(i + 1) {
            if next.trim().is_empty() || indent(next) != indent(line) {
                break;
            }
            joined.push(' ');
            joined.push_str(next.trim());
        }
    }
    Some(one_line(&joined, DIAGNOSTIC_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_cut_off_at_its_marker() {
        let (report, copy) = split_report(
            "The following address(es) failed:\n\n  a@b.example\n\n\
             ------ This is a copy of the message, including all the headers. ------\n\
             Return-path: <x@y.example>\n",
        );
        assert!(report.ends_with("a@b.example\n\n"));
        assert!(copy.is_some_and(|c| c.contains("Return-path")));
    }

    #[test]
    fn sendmail_first_line_is_not_a_marker() {
        let (report, copy) = split_report(
            "The original message was received at Tue, 8 Jan 2013\n   ----- The following addresses had permanent fatal errors -----\n<a@b.example>\n",
        );
        assert!(copy.is_none());
        assert!(report.contains("a@b.example"));
    }

    #[test]
    fn the_explanatory_line_joins_indented_continuations() {
        let line = explanatory_line(
            "<a@b.example>: host mx.b.example[192.0.2.1] said: 550 5.1.1 <a@b.example>:\n    Recipient address rejected: User unknown (in reply to RCPT TO command)\n\nnext",
        );
        assert_eq!(
            line.as_deref(),
            Some(
                "<a@b.example>: host mx.b.example[192.0.2.1] said: 550 5.1.1 <a@b.example>: Recipient address rejected: User unknown (in reply to RCPT TO command)"
            )
        );
        assert_eq!(
            explanatory_line("Dzień dobry,\nSkrzynka odbiorcy jest przepełniona.\n").as_deref(),
            Some("Skrzynka odbiorcy jest przepełniona.")
        );
        assert_eq!(
            explanatory_line("  a@b.example\n    mailbox is full (quota exceeded while writing to\n    /var/mail/a)\n\n").as_deref(),
            Some("mailbox is full (quota exceeded while writing to /var/mail/a)")
        );
    }
}
