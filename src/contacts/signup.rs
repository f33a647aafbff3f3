//! Double opt-in: a signup request (the public form) and its confirmation
//! (the recipient's click on the link in the confirmation mail).
//!
//! The rules, all enforced here and in [`super::check_transition`]:
//! - A request changes nothing about an existing contact: it is recorded
//!   (`signup_requests_v1`) and answered by a confirmation mail. Only a new
//!   address becomes a contact (`pending`, with the form's language, site and
//!   fields). The list is joined, and consent granted, on the click.
//! - Whatever the address (new, pending, granted, withdrawn, invalid, erased),
//!   the form answers the same, so it tells a stranger nothing.
//! - A confirmation link works once, for the request it was sent for, and
//!   only if that request is newer than the contact's last withdrawal (or
//!   invalidation): a link mailed before someone withdrew can never grant.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::model::{ConsentSource, ConsentState, Contact, List};
use super::{ConsentChange, ContactError, ContactUpdate, Email};
use crate::store::ReadTables as _;
use crate::store::{HistoryEvent, Sequence, StoreError, WriteTables};

/// A signup waiting for its confirmation click.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignupRequest {
    /// When the request was made (ms since the epoch).
    pub at: i64,
    /// The list to join on confirmation.
    pub list: u64,
    /// The requester's IP address (evidence only: it may be anyone's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The requester's user agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// A checked signup form.
#[derive(Debug, Clone)]
pub struct SignupInput {
    /// The address.
    pub email: Email,
    /// The list asked for (one the config opens to signup).
    pub list: String,
    /// Language asked for, applied to a new contact.
    pub language: Option<String>,
    /// Site asked for, applied to a new contact.
    pub site: Option<String>,
    /// Custom field values (name, raw text), applied to a new contact.
    pub fields: Vec<(String, String)>,
    /// The requester's IP address.
    pub ip: Option<String>,
    /// The requester's user agent.
    pub user_agent: Option<String>,
}

/// What a signup request led to.
#[derive(Debug, Clone)]
pub enum Requested {
    /// Send the confirmation mail for the request (its number goes into
    /// the token).
    Confirm {
        /// The contact as stored.
        contact: Box<Contact>,
        /// The request's number.
        request: u64,
    },
    /// The address was erased: nothing is stored and nothing sent.
    Suppressed,
}

/// Records a signup request inside the writer's transaction. `Err` is an
/// input problem (a field value that does not fit); the answer to the form
/// must not depend on anything else.
pub fn request(
    t: &mut WriteTables<'_>,
    input: &SignupInput,
    now: DateTime<Utc>,
) -> Result<Result<Requested, ContactError>, StoreError> {
    // Field values are checked for every address alike.
    let mut fields = std::collections::BTreeMap::new();
    for (f, v) in &input.fields {
        let Some(def) = t.field(f)? else {
            return Ok(Err(ContactError::UnknownField(f.clone())));
        };
        match super::parse_value(&def, v) {
            Ok(x) => {
                fields.insert(f.clone(), Some(x));
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    let contact = match t.contact_id_by_email(&input.email.key)? {
        Some(id) => t.contact(id)?,
        None => None,
    };
    let contact = match contact {
        Some(c) => c,
        None => {
            let update = ContactUpdate {
                fields,
                language: input.language.clone().map(Some),
                site: input.site.clone().map(Some),
                consent: Some(ConsentChange {
                    to: ConsentState::Pending,
                    source: ConsentSource::Form,
                    ip: input.ip.clone(),
                    user_agent: input.user_agent.clone(),
                    note: Some(format!("signup form, list {}", input.list)),
                }),
                ..Default::default()
            };
            match super::apply_upsert(t, &input.email, update, true, now)? {
                Ok((_, c)) => c,
                Err(ContactError::Suppressed { .. }) => return Ok(Ok(Requested::Suppressed)),
                Err(e) => return Ok(Err(e)),
            }
        }
    };
    // A list open to signup is created on its first request.
    let list = match t.list_id_by_name(&input.list)? {
        Some(id) => id,
        None => {
            let l = List {
                id: t.next_id(Sequence::List)?,
                name: input.list.clone(),
                description: Some("created by the signup form".into()),
                member_count: 0,
                created_at: now,
            };
            t.put_list(&l, None)?;
            l.id
        }
    };
    t.push_history(
        contact.id,
        &HistoryEvent {
            at: now.timestamp_millis(),
            kind: "subscribe".into(),
            note: Some(format!("list {}", input.list)),
            ..Default::default()
        },
    )?;
    let request = t.put_signup_request(
        contact.id,
        &SignupRequest {
            at: now.timestamp_millis(),
            list,
            ip: input.ip.clone(),
            user_agent: input.user_agent.clone(),
        },
    )?;
    t.note_signup(contact.id, Some(list), false);
    Ok(Ok(Requested::Confirm {
        contact: Box::new(contact),
        request,
    }))
}

/// What a confirmation click did.
#[derive(Debug, Clone)]
pub enum Confirmed {
    /// Consent granted (or the list joined) now.
    Now(Contact),
    /// The link was used before and the contact is still `granted`: nothing
    /// changed.
    Already(Contact),
    /// The link names no open request (used, replaced, erased, or older than
    /// the contact's withdrawal): nothing changed.
    Refused,
}

/// A confirmation click: the contact, and the signup request the link
/// names (`None` for links mailed before requests were recorded).
#[derive(Debug, Clone)]
pub struct Click {
    /// The contact.
    pub contact: u64,
    /// When the link was made (seconds since the epoch).
    pub issued: u64,
    /// The request's number.
    pub request: Option<u64>,
    /// The clicker's IP address.
    pub ip: Option<String>,
    /// The clicker's user agent.
    pub user_agent: Option<String>,
}

/// Confirms the signup request a click names, inside the writer's
/// transaction: the request is consumed, the contact becomes `granted`
/// (source `link`, with the clicker's IP and user agent) and joins the list.
/// A link from before requests were recorded confirms only a contact still
/// `pending` since it was made (and joins no list).
pub fn confirm(
    t: &mut WriteTables<'_>,
    click: Click,
    now: DateTime<Utc>,
) -> Result<Confirmed, StoreError> {
    let contact = click.contact;
    let Some(c) = t.contact(contact)? else {
        return Ok(Confirmed::Refused);
    };
    let req = match click.request {
        Some(n) => t.take_signup_request(contact, n)?,
        None if c.consent == ConsentState::Pending => {
            let made = i64::try_from(click.issued.saturating_mul(1000)).unwrap_or(i64::MAX);
            let withdrawn_since = t.last_withdrawal_ms(contact)?.is_some_and(|w| w >= made);
            (!withdrawn_since).then_some(SignupRequest {
                at: made,
                list: 0,
                ip: None,
                user_agent: None,
            })
        }
        None => None,
    };
    let Some(req) = req else {
        return Ok(if c.consent == ConsentState::Granted {
            Confirmed::Already(c)
        } else {
            Confirmed::Refused
        });
    };
    if matches!(c.consent, ConsentState::Withdrawn | ConsentState::Invalid)
        && t.last_withdrawal_ms(contact)?.is_some_and(|w| w >= req.at)
    {
        return Ok(Confirmed::Refused);
    }
    let mut add_lists = BTreeSet::new();
    if req.list != 0 && t.list_exists(req.list)? {
        add_lists.insert(req.list);
    }
    let update = ContactUpdate {
        consent: Some(ConsentChange {
            to: ConsentState::Granted,
            source: ConsentSource::Link,
            ip: click.ip,
            user_agent: click.user_agent,
            note: Some("confirmed the subscription (double opt-in)".into()),
        }),
        add_lists,
        ..Default::default()
    };
    match super::apply_update_by_id(t, contact, update, now)? {
        Ok((_, c)) => {
            t.push_history(
                contact,
                &HistoryEvent {
                    at: now.timestamp_millis(),
                    kind: "confirm".into(),
                    ..Default::default()
                },
            )?;
            t.note_signup(contact, (req.list != 0).then_some(req.list), true);
            // The person's own confirmation is proof of a working mailbox
            // and of consent: a bounce or complaint entry of the
            // suppression list gives way (an admin's manual entry stays).
            if t.any_suppressed() {
                let key = crate::store::suppression_key(&t.salt()?, &c.email.to_lowercase());
                if t.suppression(&key)?.is_some_and(|s| {
                    use crate::contacts::model::SuppressionSource as S;
                    matches!(s.source, S::Bounce | S::SoftBounces | S::Complaint)
                }) {
                    t.delete_suppression(&key)?;
                }
            }
            Ok(Confirmed::Now(c))
        }
        Err(_) => Ok(Confirmed::Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn input(email: &str) -> Result<SignupInput, ContactError> {
        Ok(SignupInput {
            email: super::super::normalize_email(email)?,
            list: "news".into(),
            language: None,
            site: None,
            fields: Vec::new(),
            ip: None,
            user_agent: None,
        })
    }

    fn click(contact: u64, request: Option<u64>, issued: u64) -> Click {
        Click {
            contact,
            issued,
            request,
            ip: Some("192.0.2.1".into()),
            user_agent: None,
        }
    }

    fn state(c: &Confirmed) -> &'static str {
        match c {
            Confirmed::Now(_) => "now",
            Confirmed::Already(_) => "already",
            Confirmed::Refused => "refused",
        }
    }

    /// A request is consumed by its click; a withdrawal after the request
    /// kills it; links from before requests were recorded still confirm a
    /// contact that stayed pending, and nothing else.
    #[test]
    fn a_request_grants_once_and_not_after_a_withdrawal() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let t0 = Utc::now();
        let i = input("a@example.com")?;
        let (id, n) = match store.write_wait(move |t| request(t, &i, t0))?? {
            Requested::Confirm { contact, request } => (contact.id, request),
            Requested::Suppressed => return Err("suppressed".into()),
        };
        let later = t0 + chrono::Duration::seconds(5);
        let r = store.write_wait(move |t| confirm(t, click(id, Some(n), 0), later))?;
        assert_eq!(state(&r), "now");
        let r = store.write_wait(move |t| confirm(t, click(id, Some(n), 0), later))?;
        assert_eq!(state(&r), "already", "used, but still granted: no change");

        // A request made, then a withdrawal, then the click: refused.
        let i = input("a@example.com")?;
        let n2 = match store.write_wait(move |t| request(t, &i, later))?? {
            Requested::Confirm { request, .. } => request,
            Requested::Suppressed => return Err("suppressed".into()),
        };
        let even_later = later + chrono::Duration::seconds(5);
        store.write_wait(move |t| {
            let update = ContactUpdate {
                consent: Some(ConsentChange {
                    to: ConsentState::Withdrawn,
                    source: ConsentSource::Api,
                    ip: None,
                    user_agent: None,
                    note: None,
                }),
                ..Default::default()
            };
            super::super::apply_update_by_id(t, id, update, even_later)
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
        })??;
        let r = store.write_wait(move |t| confirm(t, click(id, Some(n2), 0), even_later))?;
        assert_eq!(state(&r), "refused");

        // Legacy links (no request number): only a contact still pending.
        let i = input("b@example.com")?;
        let b = match store.write_wait(move |t| request(t, &i, t0))?? {
            Requested::Confirm { contact, .. } => contact.id,
            Requested::Suppressed => return Err("suppressed".into()),
        };
        let issued = t0.timestamp() as u64;
        let r = store.write_wait(move |t| confirm(t, click(b, None, issued), later))?;
        assert_eq!(state(&r), "now");
        let r = store.write_wait(move |t| confirm(t, click(id, None, issued), even_later))?;
        assert_eq!(state(&r), "refused", "a withdrawn contact");
        Ok(())
    }
}
