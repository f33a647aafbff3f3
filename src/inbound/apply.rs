//! What a report does, inside the write that records it.
//!
//! - **Matching**: the VERP address it was sent to names the queued message
//!   and the recipient; else a VERP return path in the returned copy; else
//!   the copy's Message-ID, when it is a send's (`c12.65537.99@…`: send and
//!   contact, the queue id from the send's ledger); else only the address
//!   the report names (its contact, no message).
//! - **Hard bounce**: the recipient's queue record turns from delivered to
//!   failed (`hard`, the status and diagnostic as its reply), the send
//!   counts it (failed, hard, late; delivered less one), the contact
//!   becomes `invalid` (source `bounce`, the status and diagnostic in the
//!   consent log) and the address goes on the suppression list.
//! - **Soft bounce**: counted the same way (`soft`); the contact's streak
//!   grows — unless the contact opened, clicked or ordered since the
//!   previous soft bounce (a sign mail reaches them), or the streak began
//!   longer than `soft_bounce_window` ago: then it starts again at one —
//!   and at `soft_bounce_limit` the contact becomes `invalid` and is
//!   suppressed (`soft_bounces`).
//! - **Policy**: counted (`policy`): it is about the sender, not the address.
//! - **Complaint**: the contact is `withdrawn` (source `complaint`), the
//!   send counts it once per message, the address is suppressed.
//! - **Auto-reply, delay notice**: noted on the recipient and in the
//!   contact's history, counted apart; never a bounce.
//!
//! A second report with the same verdict about the same recipient is
//! recorded and does nothing more.

use chrono::DateTime;

use super::parse::{Finding, Report, Verdict};
use super::{Envelope, InboundRecord, MatchedBy, RAW_KEPT, Via};
use crate::contacts::model::{ConsentSource, ConsentState, SuppressionSource};
use crate::delivery::model::{QueuedMessage, RcptState, ReportNote};
use crate::send::model::{Counter, SendRef};
use crate::store::{HistoryEvent, ReadTables as _, SoftStreak, StoreError, WriteTables};
use crate::tokens::{BounceRef, Keys, MessageRef};

/// What applying needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Token keys (VERP return paths in returned copies).
    pub keys: Keys,
    /// The senders' bounce domains.
    pub bounce_domains: Vec<String>,
    /// Soft bounces that make a contact `invalid`.
    pub soft_bounce_limit: u32,
    /// Their window (ms).
    pub soft_bounce_window_ms: i64,
    /// How long reports are kept (ms).
    pub keep_reports_ms: i64,
}

impl Settings {
    /// From the config.
    pub fn of(c: &crate::config::Config) -> Settings {
        Settings {
            keys: c.tracking.keys.clone(),
            bounce_domains: c
                .senders
                .iter()
                .filter_map(|s| s.bounce_domain.clone())
                .collect(),
            soft_bounce_limit: c.inbound.soft_bounce_limit,
            soft_bounce_window_ms: c.inbound.soft_bounce_window_ms,
            keep_reports_ms: c.inbound.keep_reports_ms,
        }
    }
}

/// What a report is about, once matched.
#[derive(Debug, Default)]
struct Target {
    by: Option<MatchedBy>,
    message: Option<QueuedMessage>,
    /// Whether `message` is in the finished log (else still queued).
    finished: bool,
    rcpt: Option<usize>,
    address: Option<String>,
    contact: Option<u64>,
    send: Option<SendRef>,
}

/// Records a report and applies its effects; returns the record.
pub fn apply(
    t: &mut WriteTables<'_>,
    s: &Settings,
    via: Via,
    envelope: &Envelope,
    report: &Report,
    raw: &[u8],
    now: i64,
) -> Result<InboundRecord, StoreError> {
    let mut target = find_target(t, s, envelope, report)?;
    let finding = main_finding(report, target.address.as_deref());
    if target.address.is_none() {
        target.address = finding.and_then(|f| f.recipient.clone());
    }
    if target.contact.is_none()
        && let Some(a) = &target.address
        && let Ok(e) = crate::contacts::normalize_email(a)
    {
        target.contact = t.contact_id_by_email(&e.key)?;
        if target.contact.is_some() && target.by.is_none() {
            target.by = Some(MatchedBy::Address);
        }
    }
    let verdict = finding.map_or(Verdict::Unknown, |f| f.verdict);
    // A recipient erased since: nothing of the report that names them is
    // kept, and nothing is done.
    let erased = target.address.as_deref() == Some(crate::delivery::outcome::ERASED);
    let mut findings = report.findings.clone();
    findings.truncate(MAX_FINDINGS_KEPT);
    if erased {
        findings.iter_mut().for_each(|f| f.recipient = None);
    }
    let mut record = InboundRecord {
        id: 0,
        at: now,
        via,
        peer: envelope.peer.clone(),
        mail_from: envelope.mail_from.clone(),
        rcpts: envelope.rcpts.clone(),
        size: raw.len() as u64,
        format: report.format,
        verdict,
        findings,
        original_message_id: report.original_message_id.as_deref().map(clip),
        feedback_type: report.feedback_type.as_deref().map(clip),
        subject: report.subject.as_deref().filter(|_| !erased).map(clip),
        matched_by: target.by,
        message: target.message.as_ref().map(|m| m.id),
        recipient: target.address.clone(),
        contact: target.contact,
        send: target.send,
        effects: Vec::new(),
    };
    let kept = if erased {
        &[][..]
    } else {
        &raw[..raw.len().min(RAW_KEPT)]
    };
    // Two old reports go for each new one: the log keeps to its age
    // without a sweep of its own.
    t.prune_inbound(now.saturating_sub(s.keep_reports_ms), 2)?;
    let id = t.add_inbound(&mut record, kept)?;
    if let Some(c) = record.contact {
        t.index_inbound(c, id)?;
    }
    // Over SMTP anyone can write a Message-ID or an address into a report:
    // only a VERP return path, which carries Herald's signature, is proof
    // enough to change a contact.
    let trusted = via == Via::Api || target.by.is_some_and(MatchedBy::is_signed);
    if erased {
        record.effects = vec!["nothing done: the recipient was erased".into()];
        t.put_inbound(&record)?;
    } else if target.by.is_some() && !trusted {
        record.effects = vec![UNSIGNED.into()];
        t.put_inbound(&record)?;
    } else if target.by.is_some() {
        record.effects = effects(t, s, &mut target, finding, verdict, id, now)?;
        t.put_inbound(&record)?;
    }
    Ok(record)
}

/// Why a report taken over SMTP without a VERP return path changes nothing.
pub const UNSIGNED: &str = "not applied: it names no VERP return path, only a Message-ID or an address, which anyone can write; POST it to /api/v1/bounces or /api/v1/complaints if you trust it";

/// Findings kept in a report's record (a DSN may list thousands).
const MAX_FINDINGS_KEPT: usize = 50;

/// A header value as kept: at most 998 bytes (a header line's limit), cut
/// at a character boundary.
fn clip(s: &str) -> String {
    let mut end = s.len().min(998);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Finds the message and recipient a report is about.
fn find_target(
    t: &WriteTables<'_>,
    s: &Settings,
    envelope: &Envelope,
    report: &Report,
) -> Result<Target, StoreError> {
    if let Some(r) = envelope.verp.first() {
        return by_verp(t, *r, MatchedBy::Verp);
    }
    for path in &report.original_return_paths {
        let lower = path.to_ascii_lowercase();
        let Some((local, domain)) = lower.rsplit_once('@') else {
            continue;
        };
        if !s.bounce_domains.iter().any(|d| d == domain) {
            continue;
        }
        if let Some(r) = super::verp_token(local).and_then(|tok| s.keys.verify_bounce(tok)) {
            return by_verp(t, r, MatchedBy::ReturnPath);
        }
    }
    if let Some(m) = report
        .original_message_id
        .as_deref()
        .and_then(crate::track::send_message)
    {
        return by_message_ref(t, m);
    }
    Ok(Target::default())
}

fn load_message(t: &WriteTables<'_>, id: u64) -> Result<Option<(QueuedMessage, bool)>, StoreError> {
    if let Some(m) = t.queued_message(id)? {
        return Ok(Some((m, false)));
    }
    Ok(t.finished_message(id)?.map(|m| (m, true)))
}

fn by_verp(t: &WriteTables<'_>, r: BounceRef, by: MatchedBy) -> Result<Target, StoreError> {
    let Some((m, finished)) = load_message(t, r.queue_id)? else {
        return Ok(Target::default());
    };
    // The token names the day its message was queued: a queue id reused
    // (a store restored from a backup, say) does not match.
    if i64::from(r.day) != m.created.max(0) / 86_400_000 {
        return Ok(Target::default());
    }
    let idx = r.rcpt as usize;
    let Some(rcpt) = m.recipients.get(idx) else {
        return Ok(Target::default());
    };
    Ok(Target {
        by: Some(by),
        address: Some(rcpt.address.clone()),
        contact: rcpt.contact,
        send: m.send,
        rcpt: Some(idx),
        finished,
        message: Some(m),
    })
}

fn by_message_ref(t: &WriteTables<'_>, m: MessageRef) -> Result<Target, StoreError> {
    let Some((_, queue_id)) = t.sent(m.send, m.contact)? else {
        return Ok(Target::default());
    };
    let mut target = Target {
        by: Some(MatchedBy::MessageId),
        contact: Some(m.contact),
        send: Some(m.send),
        ..Default::default()
    };
    if let Some((msg, finished)) = load_message(t, queue_id)? {
        target.rcpt = msg
            .recipients
            .iter()
            .position(|r| r.contact == Some(m.contact));
        target.address = target
            .rcpt
            .and_then(|i| msg.recipients.get(i))
            .map(|r| r.address.clone());
        target.finished = finished;
        target.message = Some(msg);
    }
    Ok(target)
}

/// The finding about `address` (any finding when the report names no
/// matching recipient), the most telling first: complaint, hard, soft,
/// policy, delay, auto-reply, unknown.
fn main_finding<'r>(report: &'r Report, address: Option<&str>) -> Option<&'r Finding> {
    let rank = |v: Verdict| match v {
        Verdict::Complaint => 0,
        Verdict::Hard => 1,
        Verdict::Soft => 2,
        Verdict::Policy => 3,
        Verdict::Delay => 4,
        Verdict::AutoReply => 5,
        Verdict::Unknown => 6,
    };
    let about = |f: &&Finding| {
        address.is_some_and(|a| {
            f.recipient
                .as_deref()
                .is_some_and(|r| r.eq_ignore_ascii_case(a))
        })
    };
    report
        .findings
        .iter()
        .filter(about)
        .min_by_key(|f| rank(f.verdict))
        .or_else(|| report.findings.iter().min_by_key(|f| rank(f.verdict)))
}

/// Applies a verdict to its target; returns what was done, in words.
fn effects(
    t: &mut WriteTables<'_>,
    s: &Settings,
    target: &mut Target,
    finding: Option<&Finding>,
    verdict: Verdict,
    report_id: u64,
    now: i64,
) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    if verdict == Verdict::Unknown {
        return Ok(done);
    }
    if !note_on_recipient(t, target, verdict, report_id, now, &mut done)? {
        done.push(format!(
            "duplicate: a {} report about this recipient was applied before",
            verdict.as_str()
        ));
        return Ok(done);
    }
    let detail = detail_of(finding);
    if verdict.is_bounce()
        && let Some(send) = target.send.filter(SendRef::counted)
    {
        done.push(format!("counted for {}", crate::track::source_of(&send)));
    }
    match verdict {
        Verdict::Hard => {
            if let Some(c) = target.contact {
                let note = format!("hard bounce: {detail}");
                if crate::contacts::set_consent(
                    t,
                    c,
                    ConsentState::Invalid,
                    ConsentSource::Bounce,
                    note,
                    now,
                )? {
                    done.push(format!("contact {c} invalid"));
                }
            }
            suppress(
                t,
                target,
                SuppressionSource::Bounce,
                format!("hard bounce: {detail}"),
                now,
                &mut done,
            )?;
        }
        Verdict::Soft => soft_bounce(t, s, target, &detail, now, &mut done)?,
        Verdict::Complaint => complaint(t, target, now, &mut done)?,
        Verdict::AutoReply | Verdict::Delay | Verdict::Policy | Verdict::Unknown => {}
    }
    if verdict != Verdict::Complaint
        && let Some(c) = target.contact
    {
        history(t, c, target, verdict, &detail, now)?;
    }
    Ok(done)
}

/// The status and diagnostic of a finding, in one line.
fn detail_of(f: Option<&Finding>) -> String {
    let status = f.and_then(|f| f.status.as_deref());
    let diag = f.and_then(|f| f.diagnostic.as_deref());
    match (status, diag) {
        (Some(s), Some(d)) => format!("{s} {d}"),
        (Some(s), None) => s.to_string(),
        (None, Some(d)) => d.to_string(),
        (None, None) => "no status given".to_string(),
    }
}

/// Notes the report on the recipient's queue record and counts it for the
/// send; false when a report with this verdict was noted there before.
fn note_on_recipient(
    t: &mut WriteTables<'_>,
    target: &mut Target,
    verdict: Verdict,
    report_id: u64,
    now: i64,
    done: &mut Vec<String>,
) -> Result<bool, StoreError> {
    let (Some(m), Some(idx)) = (target.message.as_mut(), target.rcpt) else {
        // No queue record: a complaint still counts once per message
        // through the send's engagement flags.
        return Ok(true);
    };
    let send = m.send.filter(SendRef::counted);
    let Some(r) = m.recipients.get_mut(idx) else {
        return Ok(true);
    };
    if r.reports.iter().any(|n| n.verdict == verdict) {
        return Ok(false);
    }
    let mut turned_failed = false;
    r.reports.push(ReportNote {
        id: report_id,
        verdict,
        at: now,
    });
    // A hard bounce after a soft one about the same recipient: the class
    // moves to hard (and its count with it).
    if verdict == Verdict::Hard
        && r.state == RcptState::Failed
        && r.bounce == Some(crate::delivery::model::BounceClass::Soft)
        && r.reports.iter().any(|n| n.verdict == Verdict::Soft)
    {
        r.bounce = Some(crate::delivery::model::BounceClass::Hard);
        if let Some(s) = send {
            t.bump_send(s, Counter::Soft, -1)?;
            t.bump_send(s, Counter::Hard, 1)?;
        }
        done.push(format!(
            "message {} recipient {idx}: soft bounce now hard",
            m.id
        ));
    } else if let Some(class) = verdict.bounce_class()
        && r.state != RcptState::Failed
    {
        let before = r.state;
        // When it was counted delivered: taken back from that hour.
        let counted_at = r.updated.unwrap_or(now);
        turned_failed = before == RcptState::Delivered;
        r.state = RcptState::Failed;
        r.bounce = Some(class);
        r.next_attempt = None;
        r.updated = Some(now);
        r.reply = Some(format!("bounce report #{report_id} after the attempt"));
        if let Some(s) = send {
            if before == RcptState::Delivered {
                t.bump_send_at(s, Counter::Delivered, -1, counted_at)?;
            } else if before == RcptState::Deferred {
                t.bump_send(s, Counter::Deferred, -1)?;
            }
            t.bump_send_at(s, Counter::Failed, 1, now)?;
            t.bump_send(s, Counter::LateBounces, 1)?;
            let by_class = match class {
                crate::delivery::model::BounceClass::Hard => Counter::Hard,
                crate::delivery::model::BounceClass::Soft => Counter::Soft,
                crate::delivery::model::BounceClass::Policy => Counter::Policy,
            };
            t.bump_send(s, by_class, 1)?;
        }
        done.push(format!(
            "message {} recipient {} failed ({})",
            m.id,
            idx,
            class.as_str()
        ));
    } else if matches!(verdict, Verdict::AutoReply | Verdict::Delay) {
        if let Some(s) = send {
            let counter = match verdict {
                Verdict::AutoReply => Counter::AutoReplies,
                _ => Counter::DelayNotices,
            };
            t.bump_send(s, counter, 1)?;
        }
        done.push(format!(
            "{} noted on message {} recipient {idx}; not a bounce",
            verdict.as_str().replace('_', "-"),
            m.id
        ));
    }
    let pending = m.recipients.iter().any(|r| r.state.is_pending());
    if target.finished {
        if turned_failed {
            // The queue-wide totals counted it delivered when it finished.
            t.recount_finished(-1, 1)?;
        }
        t.put_finished_message(m)?;
    } else if pending {
        t.put_message(m, None)?;
    } else {
        t.finish_message(m.clone(), now)?;
        target.finished = true;
    }
    Ok(true)
}

/// Puts the target's address on the suppression list (an entry already
/// there stays as it is).
fn suppress(
    t: &mut WriteTables<'_>,
    target: &Target,
    source: SuppressionSource,
    reason: String,
    now: i64,
    done: &mut Vec<String>,
) -> Result<(), StoreError> {
    let Some(address) = &target.address else {
        return Ok(());
    };
    if crate::contacts::suppress(t, address, source, reason, now)? {
        done.push(format!("address suppressed ({})", source.as_str()));
    }
    Ok(())
}

/// Grows the contact's soft-bounce streak; at the limit the contact is
/// `invalid` and suppressed.
fn soft_bounce(
    t: &mut WriteTables<'_>,
    s: &Settings,
    target: &Target,
    detail: &str,
    now: i64,
    done: &mut Vec<String>,
) -> Result<(), StoreError> {
    let Some(c) = target.contact else {
        return Ok(());
    };
    let streak = match t.soft_streak(c)? {
        Some(old)
            if now - old.first <= s.soft_bounce_window_ms && !t.engaged_since(c, old.last)? =>
        {
            SoftStreak {
                count: old.count + 1,
                first: old.first,
                last: now,
            }
        }
        _ => SoftStreak {
            count: 1,
            first: now,
            last: now,
        },
    };
    if streak.count < s.soft_bounce_limit {
        t.set_soft_streak(c, Some(streak))?;
        done.push(format!(
            "contact {c}: soft bounce {} of {}",
            streak.count, s.soft_bounce_limit
        ));
        return Ok(());
    }
    t.set_soft_streak(c, None)?;
    let days = s.soft_bounce_window_ms / 86_400_000;
    let note = format!(
        "{} soft bounces within {days} days without a delivery; last: {detail}",
        streak.count
    );
    if crate::contacts::set_consent(
        t,
        c,
        ConsentState::Invalid,
        ConsentSource::Bounce,
        note.clone(),
        now,
    )? {
        done.push(format!(
            "contact {c} invalid ({} soft bounces)",
            streak.count
        ));
    }
    suppress(t, target, SuppressionSource::SoftBounces, note, now, done)
}

/// A complaint: through the send (withdrawn, counted once per message) when
/// the message is known, else straight on the contact.
fn complaint(
    t: &mut WriteTables<'_>,
    target: &Target,
    now: i64,
    done: &mut Vec<String>,
) -> Result<(), StoreError> {
    let Some(c) = target.contact else {
        return Ok(());
    };
    let when = DateTime::from_timestamp_millis(now).unwrap_or_default();
    let counted = match target.send {
        Some(send) if crate::track::complaint(t, MessageRef { send, contact: c }, None, when)? => {
            Some(send)
        }
        _ => None,
    };
    if let Some(send) = counted {
        // `track::complaint` withdrew and suppressed them too.
        done.push(format!(
            "contact {c} withdrawn, address suppressed; complaint counted for {}",
            crate::track::source_of(&send)
        ));
        return Ok(());
    }
    if crate::contacts::set_consent(
        t,
        c,
        ConsentState::Withdrawn,
        ConsentSource::Complaint,
        "spam complaint (feedback loop)".into(),
        now,
    )? {
        done.push(format!("contact {c} withdrawn"));
    }
    suppress(
        t,
        target,
        SuppressionSource::Complaint,
        "spam complaint".into(),
        now,
        done,
    )
}

/// The report in the contact's history.
fn history(
    t: &mut WriteTables<'_>,
    contact: u64,
    target: &Target,
    verdict: Verdict,
    detail: &str,
    now: i64,
) -> Result<(), StoreError> {
    let kind = match verdict {
        Verdict::AutoReply => "auto_reply",
        Verdict::Delay => "delay_notice",
        _ => "bounce",
    };
    t.push_history(
        contact,
        &HistoryEvent {
            at: now,
            kind: kind.into(),
            source: target.send.as_ref().map(crate::track::source_of),
            slot: target.send.map(|s| s.variant),
            message: target.message.as_ref().map(|m| m.id),
            outcome: verdict
                .bounce_class()
                .map(|c| format!("bounced_{}", c.as_str())),
            note: Some(detail.to_string()),
            ..Default::default()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::{self, ConsentChange, ContactUpdate};
    use crate::delivery::model::Recipient;
    use crate::inbound::parse::Format;
    use crate::send::model::SendKind;
    use crate::store::Store;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const DAY: i64 = 86_400_000;

    fn settings(limit: u32) -> Settings {
        Settings {
            keys: Keys::new(b"0123456789abcdef0123456789abcdef", &[]),
            bounce_domains: vec!["bounces.shop.example".into()],
            soft_bounce_limit: limit,
            soft_bounce_window_ms: 30 * DAY,
            keep_reports_ms: 90 * DAY,
        }
    }

    fn report(verdict: Verdict) -> Report {
        Report {
            format: Format::Dsn,
            findings: vec![Finding {
                recipient: Some("a@example.com".into()),
                verdict,
                status: Some("5.2.2".into()),
                diagnostic: Some("mailbox full".into()),
            }],
            original_message_id: None,
            original_return_paths: Vec::new(),
            feedback_type: None,
            subject: None,
            from: None,
        }
    }

    /// A granted contact and `n` delivered campaign messages to it (queue
    /// ids 1..=n); returns the contact id.
    fn setup(store: &Store, n: u64) -> Result<u64, StoreError> {
        store.write_wait(move |t| {
            let email = contacts::normalize_email("a@example.com")
                .map_err(|e| StoreError::Io(e.to_string()))?;
            let update = ContactUpdate {
                consent: Some(ConsentChange {
                    to: ConsentState::Granted,
                    source: ConsentSource::Api,
                    ip: None,
                    user_agent: None,
                    note: None,
                }),
                ..Default::default()
            };
            let c = match contacts::apply_upsert(t, &email, update, true, DateTime::default())? {
                Ok((_, c)) => c,
                Err(e) => return Err(StoreError::Io(e.to_string())),
            };
            for id in 1..=n {
                let mut r = Recipient::queued("a@example.com".into(), Some(c.id));
                r.state = RcptState::Delivered;
                let send = SendRef {
                    kind: SendKind::Campaign,
                    id: 1,
                    variant: 0,
                };
                let mut m = QueuedMessage::sample(id, vec![r], Some(send));
                m.source = "campaign:1".into();
                t.put_message(&mut m, Some(b"body"))?;
                t.finish_message(m, 0)?;
            }
            Ok(c.id)
        })
    }

    fn take(
        store: &Store,
        s: &Settings,
        queue_id: u64,
        verdict: Verdict,
        now: i64,
    ) -> Result<InboundRecord, StoreError> {
        let env = Envelope {
            verp: vec![BounceRef {
                queue_id,
                rcpt: 0,
                day: 0,
            }],
            ..Default::default()
        };
        let s = s.clone();
        store.write_wait(move |t| apply(t, &s, Via::Smtp, &env, &report(verdict), b"raw", now))
    }

    fn consent(store: &Store, id: u64) -> Result<Option<ConsentState>, StoreError> {
        store.read_blocking(move |v| Ok(v.contact(id)?.map(|c| c.consent)))
    }

    /// Soft bounces count up to the limit; a duplicate report does not
    /// count; the limit makes the contact invalid and suppressed.
    #[test]
    fn soft_bounces_reach_the_limit_once_each() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let c = setup(&store, 3)?;
        let s = settings(3);
        let r = take(&store, &s, 1, Verdict::Soft, DAY)?;
        assert_eq!(r.matched_by, Some(MatchedBy::Verp));
        assert_eq!(r.contact, Some(c));
        let again = take(&store, &s, 1, Verdict::Soft, DAY + 1)?;
        assert!(
            again.effects.iter().any(|e| e.starts_with("duplicate")),
            "{:?}",
            again.effects
        );
        take(&store, &s, 2, Verdict::Soft, 2 * DAY)?;
        assert_eq!(consent(&store, c)?, Some(ConsentState::Granted));
        let last = take(&store, &s, 3, Verdict::Soft, 3 * DAY)?;
        assert!(
            last.effects.iter().any(|e| e.contains("invalid")),
            "{:?}",
            last.effects
        );
        assert_eq!(consent(&store, c)?, Some(ConsentState::Invalid));
        let listed = store.read_blocking(|v| v.suppressions_after(&[], 10))?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].1.source, SuppressionSource::SoftBounces);
        // Each message's record turned from delivered to failed (soft).
        let m = store.read_blocking(|v| v.finished_message(3))?;
        let r = m.as_ref().and_then(|m| m.recipients.first());
        assert_eq!(r.map(|r| r.state), Some(RcptState::Failed));
        assert_eq!(r.map(|r| r.reports.len()), Some(1));
        Ok(())
    }

    /// An open after the streak began, or a streak older than the window,
    /// starts it again; auto-replies and delays never count.
    #[test]
    fn a_sign_of_delivery_or_time_restarts_the_streak() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let c = setup(&store, 5)?;
        let s = settings(2);
        take(&store, &s, 1, Verdict::Soft, DAY)?;
        store.write_wait(move |t| {
            t.push_history(
                c,
                &HistoryEvent {
                    at: DAY + 10,
                    kind: "open".into(),
                    ..Default::default()
                },
            )
        })?;
        take(&store, &s, 2, Verdict::Soft, 2 * DAY)?;
        assert_eq!(consent(&store, c)?, Some(ConsentState::Granted));
        // 40 days later the streak of one is stale: this is one again.
        take(&store, &s, 3, Verdict::Soft, 42 * DAY)?;
        assert_eq!(consent(&store, c)?, Some(ConsentState::Granted));
        take(&store, &s, 4, Verdict::AutoReply, 43 * DAY)?;
        take(&store, &s, 4, Verdict::Delay, 43 * DAY)?;
        assert_eq!(consent(&store, c)?, Some(ConsentState::Granted));
        let m = store.read_blocking(|v| v.finished_message(4))?;
        let r = m.as_ref().and_then(|m| m.recipients.first());
        assert_eq!(r.map(|r| r.state), Some(RcptState::Delivered));
        assert_eq!(r.map(|r| r.reports.len()), Some(2));
        take(&store, &s, 5, Verdict::Soft, 44 * DAY)?;
        assert_eq!(consent(&store, c)?, Some(ConsentState::Invalid));
        Ok(())
    }

    /// A hard bounce after a soft one about the same message makes the
    /// recipient's class hard; a report about an erased recipient does
    /// nothing and keeps nothing of them.
    #[test]
    fn hard_after_soft_and_erased_recipients() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let c = setup(&store, 2)?;
        let s = settings(5);
        take(&store, &s, 1, Verdict::Soft, DAY)?;
        let r = take(&store, &s, 1, Verdict::Hard, DAY + 1)?;
        assert!(
            r.effects.iter().any(|e| e.contains("now hard")),
            "{:?}",
            r.effects
        );
        let m = store.read_blocking(|v| v.finished_message(1))?;
        let rc = m.as_ref().and_then(|m| m.recipients.first());
        assert_eq!(
            rc.and_then(|r| r.bounce),
            Some(crate::delivery::model::BounceClass::Hard)
        );
        assert_eq!(consent(&store, c)?, Some(ConsentState::Invalid));
        store.write_wait(|t| {
            if let Some(mut m) = t.finished_message(2)? {
                for r in &mut m.recipients {
                    r.address = crate::delivery::outcome::ERASED.to_string();
                    r.contact = None;
                }
                t.put_finished_message(&m)?;
            }
            Ok(())
        })?;
        let r = take(&store, &s, 2, Verdict::Hard, 2 * DAY)?;
        assert_eq!(r.effects, ["nothing done: the recipient was erased"]);
        assert!(r.findings.iter().all(|f| f.recipient.is_none()));
        let raw = store.read_blocking(move |v| v.inbound_raw(r.id))?;
        assert_eq!(raw.as_deref(), Some(&[][..]));
        Ok(())
    }
}
