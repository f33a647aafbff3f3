//! The outbox: how a rendered message becomes a queued one. Two
//! operations, used by every kind of send:
//!
//! - [`commit_batch`] (inside the caller's write transaction): records the
//!   send's new links, then for each message checks consent and the send's
//!   ledger again, queues it, records it in the ledger and counts it sent.
//!   A campaign commits its part's cursor in the same transaction, so a
//!   crash never queues a contact twice or skips one.
//! - [`queue_template`]: "render this template for this contact and queue
//!   it", the transactional path (`POST /api/v1/messages` with a template,
//!   signup confirmations), one message in one commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::model::{SendKind, SendRef, transactional, valid_tag};
use crate::contacts::model::Contact;
use crate::delivery::model::MailKind;
use crate::delivery::queue::{SignError, Signed, queue_signed, sign};
use crate::render::links::LinkRecord;
use crate::render::template::Template;
use crate::render::{Compiled, Recipient, RenderError, SendOptions};
use crate::snapshot::Snapshot;
use crate::store::ReadTables as _;
use crate::store::{Store, StoreError, WriteTables};

/// Where a batch of messages goes: the send they belong to, the sender
/// identity, the `source` the queue shows, and the consent rule delivery
/// applies ([`MailKind`]).
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The send (kind, id, slot).
    pub send: SendRef,
    /// The sender identity.
    pub sender: Arc<crate::config::Sender>,
    /// `campaign:ID`, `template:NAME`…
    pub source: String,
    /// The consent rule, checked here and again at delivery; `None` for a
    /// test to seed addresses the admin named (no rule).
    pub kind: Option<MailKind>,
    /// Whether a contact gets at most one message per round of the send
    /// (campaigns, automations). Transactional mail is not once: the
    /// ledger keeps the latest message of the day to each contact.
    pub once: bool,
}

/// What [`commit_batch`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Contacts whose message was queued, in order.
    pub queued: Vec<u64>,
    /// Messages not queued: the contact no longer exists, lost consent, or
    /// already got this send's round.
    pub skipped: u64,
    /// Messages left out because `room` ran out.
    pub over_budget: u64,
}

/// Queues a batch of signed messages of one send inside the caller's write
/// transaction. `links` are the send's links not yet recorded (recorded
/// first: a click must always find where it goes). At most `room` messages
/// are queued (`None`: no limit). `after` runs for each queued contact (a
/// campaign adds its `tags_after`).
pub fn commit_batch(
    t: &mut WriteTables<'_>,
    out: &Outbox,
    links: &[(u32, LinkRecord)],
    messages: Vec<Signed>,
    room: Option<u64>,
    now: i64,
    after: impl FnMut(&mut WriteTables<'_>, u64) -> Result<(), StoreError>,
) -> Result<Committed, StoreError> {
    let each = Each {
        send: out.send,
        once: out.once,
        room,
        now,
    };
    // Consent is law at the moment of queuing: an unsubscribe or a hard
    // bounce committed since the batch was read wins.
    let allowed = |c: Option<&Contact>, _: &Signed| match out.kind {
        Some(kind) => c.is_some_and(|c| kind.allows(c.consent)),
        None => true,
    };
    let queue = |t: &mut WriteTables<'_>, m: Signed| {
        let qid = queue_signed(
            t,
            &out.sender,
            &m,
            &out.source,
            Some(out.send),
            out.kind,
            now,
        )?;
        if out.kind == Some(MailKind::Marketing) && out.send.counted() {
            // The frequency cap counts every marketing message.
            t.note_marketing(m.contact, now)?;
        }
        Ok(qid)
    };
    commit_each(
        t,
        each,
        links,
        messages,
        |m| m.contact,
        allowed,
        queue,
        after,
    )
}

/// What [`commit_each`] needs besides the messages.
struct Each {
    send: SendRef,
    once: bool,
    room: Option<u64>,
    now: i64,
}

/// The loop both kinds of batch share: the send's new links first, then
/// per message the contact's consent (`allowed`) and the ledger again,
/// `queue` (which returns the queue or SMS id), the ledger entry and the
/// `sent` count, and `after`; at most `room` messages.
#[allow(clippy::too_many_arguments)]
fn commit_each<M>(
    t: &mut WriteTables<'_>,
    e: Each,
    links: &[(u32, LinkRecord)],
    messages: Vec<M>,
    contact_of: impl Fn(&M) -> u64,
    allowed: impl Fn(Option<&Contact>, &M) -> bool,
    mut queue: impl FnMut(&mut WriteTables<'_>, M) -> Result<u64, StoreError>,
    mut after: impl FnMut(&mut WriteTables<'_>, u64) -> Result<(), StoreError>,
) -> Result<Committed, StoreError> {
    if !links.is_empty() {
        t.put_links(&e.send.key(), links)?;
    }
    let mut room = e.room;
    let mut done = Committed::default();
    let total = messages.len() as u64;
    for (i, m) in messages.into_iter().enumerate() {
        let contact = contact_of(&m);
        let ok = allowed(t.contact(contact)?.as_ref(), &m);
        if !ok || (e.once && t.sent(e.send, contact)?.is_some()) {
            done.skipped += 1;
            continue;
        }
        if room == Some(0) {
            done.over_budget = total - i as u64;
            break;
        }
        let id = queue(t, m)?;
        t.put_sent(e.send, contact, id, e.now)?;
        after(t, contact)?;
        done.queued.push(contact);
        room = room.map(|r| r - 1);
    }
    t.note_sent(e.send, done.queued.clone());
    Ok(done)
}

/// One rendered text message for [`commit_sms_batch`].
#[derive(Debug, Clone)]
pub struct SmsOut {
    /// The contact.
    pub contact: u64,
    /// The number it was rendered for, E.164.
    pub to: String,
    /// The text.
    pub text: String,
    /// The contact's site (quiet hours).
    pub site: Option<String>,
}

/// Where a batch of text messages goes: the send, the gateway, whether it
/// is marketing (SMS consent `granted` needed, quiet hours).
#[derive(Debug, Clone)]
pub struct SmsOutbox {
    /// The send.
    pub send: SendRef,
    /// The gateway's id.
    pub gateway: String,
    /// Marketing or transactional.
    pub marketing: bool,
    /// One message per contact and round.
    pub once: bool,
}

/// [`commit_batch`] for text messages: checks each contact's SMS consent
/// and number and the send's ledger again, queues the message in the SMS
/// queue, records it in the ledger and counts it sent.
pub fn commit_sms_batch(
    t: &mut WriteTables<'_>,
    out: &SmsOutbox,
    links: &[(u32, LinkRecord)],
    messages: Vec<SmsOut>,
    room: Option<u64>,
    now: i64,
    after: impl FnMut(&mut WriteTables<'_>, u64) -> Result<(), StoreError>,
) -> Result<Committed, StoreError> {
    use crate::contacts::model::ConsentState;
    let each = Each {
        send: out.send,
        once: out.once,
        room,
        now,
    };
    let allowed = |c: Option<&Contact>, m: &SmsOut| {
        c.is_some_and(|c| {
            c.phone.as_deref() == Some(m.to.as_str())
                && (!out.marketing || c.sms_consent == ConsentState::Granted)
        })
    };
    let queue = |t: &mut WriteTables<'_>, m: SmsOut| {
        let a = crate::sms::encoding::analyze(&m.text);
        let record = crate::sms::model::SmsRecord {
            id: 0,
            send: Some(out.send),
            contact: m.contact,
            to: m.to,
            text: m.text,
            encoding: a.encoding,
            parts: a.parts as u32,
            gateway: out.gateway.clone(),
            marketing: out.marketing,
            site: m.site,
            state: crate::sms::model::SmsState::Queued,
            attempts: 0,
            due: Some(now),
            gateway_id: None,
            status: None,
            error: None,
            created: now,
            updated: now,
            sent_at: None,
        };
        crate::sms::queue::queue(t, record)
    };
    commit_each(
        t,
        each,
        links,
        messages,
        |m| m.contact,
        allowed,
        queue,
        after,
    )
}

/// Why [`queue_template`] did not queue.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The template cannot be rendered or built for this contact.
    #[error("{0}")]
    Render(String),
    /// The template's sender is not configured.
    #[error("the sender `{0}` is not configured")]
    UnknownSender(String),
    /// The tag is not a valid name.
    #[error("`{0}` is not a tag: 1-64 letters, digits, `-`, `_`, `.` or `:`")]
    InvalidTag(String),
    /// The tag's id is taken by another tag (a hash collision).
    #[error("the tag `{0}` cannot be used: its id is taken by the tag `{1}`; choose another name")]
    TagTaken(String, String),
    /// The contact may not get this kind of mail (any more).
    #[error("the contact no longer exists or may not get {0} mail")]
    NoConsent(&'static str),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(SignError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<RenderError> for OutboxError {
    fn from(e: RenderError) -> Self {
        OutboxError::Render(e.0)
    }
}

/// Compiled templates of transactional sends, one per (template, tag, day)
/// and config snapshot (a reload compiles again), with the send's recorded
/// links loaded so link numbers stay stable across restarts.
#[derive(Default)]
pub struct TemplateCache {
    map: Mutex<HashMap<(String, String), Cached>>,
}

/// A cache entry: the template snapshot's address, the send, the compiled.
type Cached = (usize, SendRef, Arc<Compiled>);

impl TemplateCache {
    fn get(&self, t: &Arc<Template>, tag: &str, send: SendRef) -> Option<Arc<Compiled>> {
        let ptr = Arc::as_ptr(t) as usize;
        let m = self.map.lock().ok()?;
        let (p, s, c) = m.get(&(t.name.clone(), tag.to_string()))?;
        (*p == ptr && *s == send).then(|| c.clone())
    }

    fn put(&self, t: &Arc<Template>, tag: &str, send: SendRef, c: Arc<Compiled>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(
                (t.name.clone(), tag.to_string()),
                (Arc::as_ptr(t) as usize, send, c),
            );
        }
    }
}

/// What queueing one template message needs from the running daemon.
pub struct Context<'a> {
    /// The store.
    pub store: &'a Store,
    /// The running snapshot (config and templates, one consistent view).
    pub snapshot: &'a Arc<Snapshot>,
    /// Compiled templates of transactional sends.
    pub cache: &'a TemplateCache,
    /// Now, in ms.
    pub now: i64,
}

/// Renders `t` for one recipient and queues it as a message of the
/// transactional send of `tag` (default: the template's name) for today,
/// with consent rule `kind`; returns the queue id and Message-ID. The
/// message is recorded in the send's ledger and counted, so its delivery,
/// opens, clicks and attributed orders are reported per tag per day.
pub async fn queue_template(
    cx: Context<'_>,
    t: &Arc<Template>,
    recipient: Recipient,
    tag: Option<&str>,
    kind: MailKind,
) -> Result<(u64, String), OutboxError> {
    let tag = tag.unwrap_or(&t.name).to_string();
    if !valid_tag(&tag) {
        return Err(OutboxError::InvalidTag(tag));
    }
    let send = transactional(&tag, cx.now);
    let sender = cx
        .snapshot
        .config
        .sender(&t.sender)
        .cloned()
        .ok_or_else(|| OutboxError::UnknownSender(t.sender.clone()))?;
    let compiled = match cx.cache.get(t, &tag, send) {
        Some(c) => c,
        None => {
            let key = send.key();
            let links = cx.store.read(move |v| v.links(&key)).await?;
            let c = Arc::new(
                Compiled::new(
                    t.clone(),
                    &cx.snapshot.config,
                    SendOptions {
                        send,
                        personalize: true,
                        tracking: true,
                        products: Vec::new(),
                        data: serde_json::Value::Null,
                        links,
                    },
                )
                .map_err(OutboxError::Render)?,
            );
            cx.cache.put(t, &tag, send, c.clone());
            c
        }
    };
    let now = cx.now;
    let c2 = compiled.clone();
    let s2 = sender.clone();
    let signed = tokio::task::spawn_blocking(move || {
        let r = c2.render(&recipient)?;
        let mime = c2.build(&r, now)?;
        let body = sign(&s2, mime).map_err(OutboxError::Sign)?;
        Ok::<_, OutboxError>(Signed {
            address: r.email,
            contact: r.contact,
            message_id: r.message_id,
            body,
        })
    })
    .await
    .map_err(|e| OutboxError::Internal(e.to_string()))??;
    let links = compiled.links().unrecorded();
    let last_link = links.last().map(|(n, _)| *n);
    let message_id = signed.message_id.clone();
    let out = Outbox {
        send,
        sender,
        source: format!("template:{}", t.name),
        kind: Some(kind),
        once: false,
    };
    let contact = signed.contact;
    let name = tag.clone();
    let qid = cx
        .store
        .write(move |w| {
            if let Some(other) = w.name_send(SendKind::Transactional, send.id, &name)? {
                return Ok(Err(OutboxError::TagTaken(name, other)));
            }
            let done = commit_batch(w, &out, &links, vec![signed], None, now, |_, _| Ok(()))?;
            if done.queued.is_empty() {
                return Ok(Ok(None));
            }
            Ok(Ok(w.sent(send, contact)?))
        })
        .await??;
    let Some((_, qid)) = qid else {
        return Err(OutboxError::NoConsent(kind.as_str()));
    };
    if let Some(last) = last_link {
        compiled.links().mark_recorded(last + 1);
    }
    Ok((qid, message_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::model::ConsentState;
    use crate::contacts::{self, ContactUpdate};
    use crate::send::model::{Counter, slot};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn outbox(once: bool) -> Outbox {
        Outbox {
            send: SendRef {
                kind: SendKind::Campaign,
                id: 7,
                variant: slot(0, 1),
            },
            sender: Arc::new(crate::config::Sender {
                id: "shop".into(),
                from: "Shop <news@shop.example>".into(),
                from_address: "news@shop.example".into(),
                domain: "shop.example".into(),
                return_path: "bounce@shop.example".into(),
                bounce_domain: None,
                helo: "mail.shop.example".into(),
                require_tls: false,
                rate_per_second: None,
                rate_per_hour: None,
                unsubscribe_mailto: None,
                dkim: Vec::new(),
                relay: None,
                source_ip: None,
                warmup: None,
            }),
            source: "campaign:7".into(),
            kind: Some(MailKind::Marketing),
            once,
        }
    }

    fn signed(contact: u64, address: &str) -> Signed {
        Signed {
            address: address.into(),
            contact,
            message_id: format!("c7.1.{contact}@shop.example"),
            body: b"Subject: x\r\n\r\nbody\r\n".to_vec(),
        }
    }

    /// Consent and the ledger are checked inside the transaction, each
    /// queued message is recorded and counted, `room` stops the batch, and
    /// a second commit of the same contacts queues nobody twice.
    #[test]
    fn a_batch_queues_each_allowed_contact_once_and_counts_it() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let ids = store.write_wait(|t| {
            let when = chrono::DateTime::from_timestamp_millis(0).unwrap_or_default();
            let mut ids = Vec::new();
            for (a, consent) in [
                ("a@example.com", ConsentState::Granted),
                ("b@example.com", ConsentState::Withdrawn),
                ("c@example.com", ConsentState::Granted),
                ("d@example.com", ConsentState::Granted),
            ] {
                let email =
                    contacts::normalize_email(a).map_err(|e| StoreError::Io(e.to_string()))?;
                let update = ContactUpdate {
                    consent: Some(contacts::ConsentChange {
                        to: consent,
                        source: crate::contacts::model::ConsentSource::Import,
                        ip: None,
                        user_agent: None,
                        note: None,
                    }),
                    ..Default::default()
                };
                match contacts::apply_upsert(t, &email, update, true, when)? {
                    Ok((_, c)) => ids.push(c.id),
                    Err(e) => return Err(StoreError::Io(e.to_string())),
                }
            }
            Ok(ids)
        })?;
        let batch = |ids: &[u64]| -> Vec<Signed> {
            ["a", "b", "c", "d"]
                .iter()
                .zip(ids)
                .map(|(n, id)| signed(*id, &format!("{n}@example.com")))
                .collect()
        };
        let (first, again) = (batch(&ids), batch(&ids));
        let out = outbox(true);
        let o2 = out.clone();
        let done = store
            .write_wait(move |t| commit_batch(t, &o2, &[], first, Some(1), 1000, |_, _| Ok(())))?;
        // a queued; b withdrew; c is over the room of one; d too.
        assert_eq!(done.queued, vec![ids[0]]);
        assert_eq!((done.skipped, done.over_budget), (1, 2));
        let o3 = out.clone();
        let done = store
            .write_wait(move |t| commit_batch(t, &o3, &[], again, None, 2000, |_, _| Ok(())))?;
        assert_eq!(done.queued, vec![ids[2], ids[3]], "a is in the ledger");
        assert_eq!(done.skipped, 2);
        let send = out.send;
        let (ledger, counts) = store.read_blocking(move |v| {
            let mut ledger = Vec::new();
            for id in [ids[0], ids[1], ids[2]] {
                ledger.push(v.sent(send, id)?.map(|(s, _)| s));
            }
            Ok((ledger, v.send_counts(SendKind::Campaign, 7)?))
        })?;
        assert_eq!(ledger, vec![Some(slot(0, 1)), None, Some(slot(0, 1))]);
        assert_eq!(counts.get(&(slot(0, 1), Counter::Sent as u8)), Some(&3));
        store.close();
        Ok(())
    }

    /// Two tags whose 32-bit ids collide cannot share counters: the second
    /// one is refused, naming the first.
    #[test]
    fn a_tag_whose_id_is_taken_by_another_is_refused() -> TestResult {
        let mut seen = HashMap::new();
        let (a, b) = (0..1_000_000u32)
            .map(|i| format!("tag-{i}"))
            .find_map(|t| {
                let id = crate::send::model::tag_id(&t);
                seen.insert(id, t.clone()).map(|first| (first, t))
            })
            .ok_or("no colliding tags in a million")?;
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let id = crate::send::model::tag_id(&a);
        let (a2, b2) = (a.clone(), b.clone());
        let (first, again, other) = store.write_wait(move |t| {
            Ok((
                t.name_send(SendKind::Transactional, id, &a2)?,
                t.name_send(SendKind::Transactional, id, &a2)?,
                t.name_send(SendKind::Transactional, id, &b2)?,
            ))
        })?;
        assert_eq!((first, again), (None, None));
        assert_eq!(other, Some(a));
        store.close();
        Ok(())
    }
}
