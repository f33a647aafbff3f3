//! Delivery status notifications (RFC 3464): one finding per recipient
//! block of the `message/delivery-status` part.

use super::classify::{Evidence, Status, classify_failure, says_delayed};
use super::fields::{Field, field, field_blocks};
use super::plain::{explanatory_line, split_report};
use super::text::{clean_address, clean_message_id, find_smtp_code, find_status, fold, one_line};
use super::{DIAGNOSTIC_MAX, Finding, Format, MAX_FINDINGS, Parts, Report, Top, Verdict};

/// The report of a message with a delivery-status part.
pub(super) fn report(top: &Top, parts: &Parts) -> Report {
    let mut copy = parts.copy.clone();
    let (human, quoted) = split_report(&parts.human);
    let folded_human = fold(human);
    let mut findings = Vec::new();
    for text in &parts.dsn {
        for block in field_blocks(text) {
            // Per-message fields: Gmail names the original Message-ID, Postfix
            // the envelope sender.
            if let Some(id) = field(&block, "x-original-message-id")
                && copy.message_id.is_none()
            {
                copy.message_id = clean_message_id(id);
            }
            if let Some(sender) = field(&block, "x-postfix-sender") {
                copy.take_field("x-postfix-sender", sender);
            }
            if findings.len() >= MAX_FINDINGS {
                break;
            }
            if let Some(finding) = recipient_finding(&block, top, human, &folded_human) {
                findings.push(finding);
            }
        }
    }
    if let Some(quoted) = quoted {
        let mut info = super::fields::CopyInfo::default();
        info.scan_quoted(quoted);
        copy.merge(info);
    }
    if findings.is_empty() {
        // A delivery-status part without recipient blocks: read the text.
        findings = super::plain::findings_from_text(top, &parts.human, &copy, None);
    }
    top.report(Format::Dsn, findings, copy, None)
}

/// The finding of one recipient block; `None` for a block that names no
/// recipient (the per-message block).
fn recipient_finding(
    block: &[Field],
    top: &Top,
    human: &str,
    folded_human: &str,
) -> Option<Finding> {
    let final_recipient = field(block, "final-recipient");
    let original_recipient = field(block, "original-recipient");
    if final_recipient.is_none() && original_recipient.is_none() {
        return None;
    }
    let recipient = original_recipient
        .and_then(clean_address)
        .or_else(|| final_recipient.and_then(clean_address));
    let action = field(block, "action")
        .and_then(|a| a.split_whitespace().next())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let diagnostic_code =
        field(block, "diagnostic-code").map(|value| match value.split_once(';') {
            Some((kind, rest)) if !kind.contains(' ') => rest.trim(),
            _ => value,
        });
    // A generic Status (5.0.0) yields to a specific code in the diagnostic
    // ("Status: 5.0.0" with "550 5.7.1 …").
    let diagnostic_status = diagnostic_code.and_then(find_status);
    let status_text = match field(block, "status").and_then(find_status) {
        Some(status) if status.ends_with(".0.0") => diagnostic_status
            .filter(|d| d.get(..1) == status.get(..1) && !d.ends_with(".0.0"))
            .or(Some(status)),
        Some(status) => Some(status),
        None => diagnostic_status,
    };
    let status = status_text.as_deref().and_then(Status::parse);
    let diagnostic = diagnostic_code
        .map(|d| one_line(d, DIAGNOSTIC_MAX))
        .filter(|d| !d.is_empty())
        .or_else(|| explanatory_line(human));
    let verdict = match action.as_str() {
        "failed" => failure_verdict(status, diagnostic_code, folded_human),
        "delayed" => Verdict::Delay,
        "delivered" | "relayed" | "expanded" => Verdict::Unknown,
        _ => match status.map(|s| s.class) {
            Some(5) => failure_verdict(status, diagnostic_code, folded_human),
            Some(4) => Verdict::Delay,
            Some(_) => Verdict::Unknown,
            None if field(block, "will-retry-until").is_some()
                || says_delayed(&top.folded_subject, folded_human) =>
            {
                Verdict::Delay
            }
            None => failure_verdict(status, diagnostic_code, folded_human),
        },
    };
    Some(Finding {
        recipient,
        verdict,
        status: status_text,
        diagnostic,
    })
}

/// The class of a failed recipient: from its status and Diagnostic-Code,
/// and from the text for people when those say nothing specific.
fn failure_verdict(
    status: Option<Status>,
    diagnostic: Option<&str>,
    folded_human: &str,
) -> Verdict {
    let diagnostic = diagnostic.unwrap_or_default();
    let smtp = find_smtp_code(diagnostic);
    let (verdict, evidence) = classify_failure(status, smtp, &fold(diagnostic));
    if evidence == Evidence::Specific || folded_human.is_empty() {
        return verdict;
    }
    classify_failure(status, smtp, folded_human).0
}
