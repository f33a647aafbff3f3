//! Feedback-loop reports (ARF, RFC 5965) and Microsoft's old JMRP
//! complaints. The feedback fields are read with mail-auth's ARF parser; the
//! raw Feedback-Type is kept as written, since mail-auth knows only the
//! registered types.

use mail_auth::report::Feedback;

use super::fields::{CopyInfo, field, field_blocks};
use super::text::{clean_address, one_line};
use super::{DIAGNOSTIC_MAX, Finding, Format, Parts, Report, Top, Verdict};

/// Feedback types that are not complaints: a user's "not spam" and DMARC
/// or DKIM failure reports (RFC 6591).
const NOT_COMPLAINTS: &[&str] = &["not-spam", "auth-failure", "dmarc", "dkim", "spf"];

/// The report of a message with a feedback-report part.
pub(super) fn report(raw: &[u8], top: &Top, parts: &Parts) -> Report {
    let fields = parts
        .feedback
        .as_deref()
        .map(field_blocks)
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let parsed = Feedback::parse_rfc5322(raw).ok();
    let mut copy = parts.copy.clone();
    if let Some(feedback) = &parsed {
        // The copy as mail-auth found it, in case the walk did not.
        for text in [feedback.message(), feedback.headers()]
            .into_iter()
            .flatten()
        {
            let mut info = CopyInfo::default();
            info.scan_headers(text);
            copy.merge(info);
        }
    }
    let original_mail_from = parsed
        .as_ref()
        .and_then(|f| f.original_mail_from().map(str::to_owned))
        .or_else(|| field(&fields, "original-mail-from").map(str::to_owned));
    if let Some(sender) = original_mail_from {
        copy.take_field("original-mail-from", &sender);
    }
    let original_rcpt_to = parsed
        .as_ref()
        .and_then(|f| f.original_rcpt_to().map(str::to_owned))
        .or_else(|| field(&fields, "original-rcpt-to").map(str::to_owned));
    let recipient = original_rcpt_to
        .as_deref()
        .and_then(clean_address)
        .filter(|a| !redacted(a))
        .or_else(|| copy.hotmail_recipient.clone().filter(|a| !redacted(a)))
        .or_else(|| copy.to.clone().filter(|a| !redacted(a)));
    let feedback_type = field(&fields, "feedback-type")
        .map(|t| t.trim().to_ascii_lowercase())
        .or_else(|| parsed.as_ref().map(|f| type_name(f).to_owned()));
    let verdict = match feedback_type.as_deref() {
        Some(kind) if NOT_COMPLAINTS.contains(&kind) => Verdict::Unknown,
        _ => Verdict::Complaint,
    };
    let diagnostic = first_line(&parts.human)
        .or_else(|| field(&fields, "user-agent").map(|agent| one_line(agent, DIAGNOSTIC_MAX)));
    let finding = Finding {
        recipient,
        verdict,
        status: None,
        diagnostic,
    };
    top.report(Format::Arf, vec![finding], copy, feedback_type)
}

/// A complaint in Microsoft's old JMRP format: a `multipart/mixed` with the
/// reported message attached, its recipient in `X-HmXmrOriginalRecipient`.
pub(super) fn old_jmrp(top: &Top, parts: &Parts) -> Report {
    let finding = Finding {
        recipient: parts.copy.hotmail_recipient.clone(),
        verdict: Verdict::Complaint,
        status: None,
        diagnostic: top.subject.as_deref().map(|s| one_line(s, DIAGNOSTIC_MAX)),
    };
    top.report(Format::Arf, vec![finding], parts.copy.clone(), None)
}

/// The registered name of mail-auth's feedback type.
fn type_name(feedback: &Feedback<'_>) -> &'static str {
    use mail_auth::report::FeedbackType;
    match feedback.feedback_type() {
        FeedbackType::Abuse => "abuse",
        FeedbackType::AuthFailure => "auth-failure",
        FeedbackType::Fraud => "fraud",
        FeedbackType::NotSpam => "not-spam",
        FeedbackType::Other => "other",
        FeedbackType::Virus => "virus",
    }
}

/// Whether a feedback loop redacted the address ("redacted@example.net",
/// "xxxxxxx@example.com", "****@example.org").
fn redacted(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default();
    address.to_ascii_lowercase().contains("redacted")
        || local.is_empty()
        || local
            .chars()
            .all(|c| matches!(c, 'x' | 'X' | '*' | '#' | '.'))
}

/// The first non-empty line of the text for people.
fn first_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| one_line(line, DIAGNOSTIC_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacted_addresses_are_none() {
        assert!(redacted("redacted@example.net"));
        assert!(redacted("xxxxxxxx@outlook.com"));
        assert!(redacted("***@wp.pl"));
        assert!(!redacted("anna@example.org"));
    }
}
