//! Contacts, custom fields, lists, tags and consent: the rules.
//!
//! - Identity: one contact per address; the address is trimmed, its domain
//!   lower-cased, and it is compared case-insensitively ([`normalize_email`]).
//! - Fields: names of lower-case latin letters and `_`, typed values checked
//!   against the field's type ([`parse_value`]).
//! - Consent: five states and the transitions each source may make
//!   ([`check_transition`]); every change is appended to the consent log.
//! - Erasure leaves only a salted hash in the suppression list.
//!
//! Everything here that writes runs inside the store writer's transaction
//! (a [`WriteTables`]), checks its input first and writes only if it passes.

pub mod csv_input;
pub mod import;
pub mod model;
pub mod signup;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};

use crate::store::ReadTables as _;
use crate::store::{AddressClaim, Sequence, StoreError, WriteTables, suppression_key};
use model::*;

/// Why a contact operation was refused. Each variant maps to one API error code.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// The e-mail address is not usable.
    #[error("invalid e-mail address `{address}`: {reason}")]
    InvalidEmail { address: String, reason: String },
    /// The address was erased at the contact's request.
    #[error("the address is suppressed ({reason}, {at}); it cannot be added again")]
    Suppressed { reason: String, at: String },
    /// A consent change the source is not allowed to make.
    #[error("{0}")]
    ConsentRefused(String),
    /// A field that does not exist.
    #[error("unknown field `{0}` (create it first with POST /api/v1/fields)")]
    UnknownField(String),
    /// A value that does not fit its field.
    #[error("field `{field}`: {reason}")]
    InvalidValue { field: String, reason: String },
    /// Bad input of another kind (a name, a missing key…).
    #[error("{0}")]
    Invalid(String),
    /// No such contact, field, list or import.
    #[error("{0}")]
    NotFound(String),
    /// Clashes with existing data (a duplicate name, an immutable property).
    #[error("{0}")]
    Conflict(String),
    /// Still referenced by segments or automations.
    #[error("{0}")]
    InUse(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ContactError {
    /// The stable machine-readable code used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ContactError::InvalidEmail { .. } => "invalid_email",
            ContactError::Suppressed { .. } => "suppressed",
            ContactError::ConsentRefused(_) => "consent_refused",
            ContactError::UnknownField(_) => "unknown_field",
            ContactError::InvalidValue { .. } => "invalid_value",
            ContactError::Invalid(_) => "invalid",
            ContactError::NotFound(_) => "not_found",
            ContactError::Conflict(_) => "conflict",
            ContactError::InUse(_) => "in_use",
            ContactError::Store(_) => "store_error",
        }
    }
}

pub use crate::names::{BUILTIN_COLUMNS, Email};

impl From<crate::names::InvalidEmail> for ContactError {
    fn from(e: crate::names::InvalidEmail) -> ContactError {
        ContactError::InvalidEmail {
            address: e.address,
            reason: e.reason,
        }
    }
}

/// Normalises and checks an address (the rules are in [`crate::names`]).
pub fn normalize_email(raw: &str) -> Result<Email, ContactError> {
    Ok(crate::names::normalize_email(raw)?)
}

/// Checks a custom field name: lower-case latin letters and `_`, not a
/// built-in attribute (the rules are in [`crate::names`]).
pub fn check_field_name(name: &str) -> Result<(), ContactError> {
    crate::names::check_field_name(name).map_err(|e| ContactError::Invalid(e.0))
}

/// Parses a value given as text (CSV cell, or a JSON string) for a field.
pub fn parse_value(def: &FieldDef, raw: &str) -> Result<FieldValue, ContactError> {
    let bad = |reason: String| ContactError::InvalidValue {
        field: def.name.clone(),
        reason,
    };
    let s = raw.trim();
    match def.field_type {
        FieldType::Text => {
            if raw.len() > 4096 {
                return Err(bad("longer than 4096 bytes".into()));
            }
            Ok(FieldValue::Text(raw.to_string()))
        }
        FieldType::Number => {
            let (int, frac) = match s.split_once('.') {
                Some((i, f)) => (i, Some(f)),
                None => (s, None),
            };
            let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if !digits(int) || frac.is_some_and(|f| !digits(f)) || s.len() > 40 {
                return Err(bad(format!(
                    "`{s}` is not a number (digits and one decimal point only)"
                )));
            }
            let int = int.trim_start_matches('0');
            let int = if int.is_empty() { "0" } else { int };
            Ok(FieldValue::Number(match frac {
                Some(f) => format!("{int}.{f}"),
                None => int.to_string(),
            }))
        }
        FieldType::Date => NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(FieldValue::Date)
            .map_err(|_| bad(format!("`{s}` is not a date in the form YYYY-MM-DD"))),
        FieldType::Boolean => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => Ok(FieldValue::Boolean(true)),
            "false" | "no" | "0" => Ok(FieldValue::Boolean(false)),
            _ => Err(bad(format!(
                "`{s}` is not a boolean (true/false, yes/no, 1/0)"
            ))),
        },
        FieldType::Choice => {
            if def.choices.iter().any(|c| c == s) {
                Ok(FieldValue::Choice(s.to_string()))
            } else {
                Err(bad(format!(
                    "`{s}` is not one of: {}",
                    def.choices.join(", ")
                )))
            }
        }
    }
}

/// Whether an already-parsed value still fits a field definition.
pub fn value_fits(def: &FieldDef, v: &FieldValue) -> bool {
    match (def.field_type, v) {
        (FieldType::Text, FieldValue::Text(_))
        | (FieldType::Number, FieldValue::Number(_))
        | (FieldType::Date, FieldValue::Date(_))
        | (FieldType::Boolean, FieldValue::Boolean(_)) => true,
        (FieldType::Choice, FieldValue::Choice(c)) => def.choices.iter().any(|x| x == c),
        _ => false,
    }
}

/// Parses a JSON value for a field (numbers and booleans may be given natively).
pub fn parse_json_value(def: &FieldDef, v: &serde_json::Value) -> Result<FieldValue, ContactError> {
    match (def.field_type, v) {
        (_, serde_json::Value::String(s)) => parse_value(def, s),
        (FieldType::Number, serde_json::Value::Number(n)) => parse_value(def, &n.to_string()),
        (FieldType::Boolean, serde_json::Value::Bool(b)) => Ok(FieldValue::Boolean(*b)),
        _ => Err(ContactError::InvalidValue {
            field: def.name.clone(),
            reason: format!("expected a {} value, got {v}", def.field_type.as_str()),
        }),
    }
}

/// Checks that `source` may move a contact from `from` to `to`.
///
/// The law: marketing needs `granted`; once a contact has `withdrawn` (or the
/// address proved `invalid`), only the recipient's own confirmation (a `link`)
/// may grant again. Imports and the API can record a withdrawal or an invalid
/// address, but never undo one.
pub fn check_transition(
    from: ConsentState,
    to: ConsentState,
    source: ConsentSource,
) -> Result<(), ContactError> {
    use ConsentSource::*;
    use ConsentState::*;
    if from == to {
        return Ok(());
    }
    let allowed = match source {
        // The recipient's own link: the confirmation link grants (the caller,
        // `signup::confirm`, checks that the link answers a signup request
        // made after the last withdrawal and that it is used once), the
        // unsubscribe link withdraws.
        Link => matches!(to, Granted | Withdrawn),
        // A signup asks for confirmation. It never touches a contact who
        // withdrew or is invalid: their state stays until their own click.
        Form => match from {
            Unknown => matches!(to, Pending | Withdrawn),
            Pending | Granted => to == Withdrawn,
            Withdrawn | Invalid => false,
        },
        Bounce => to == Invalid,
        Complaint => to == Withdrawn,
        // A text from the person's own phone: STOP withdraws, START (their
        // own confirmation) grants again.
        Reply => matches!(to, Granted | Withdrawn),
        Import | Api => match from {
            Withdrawn | Invalid => matches!(to, Withdrawn | Invalid),
            Unknown | Pending | Granted => true,
        },
    };
    if allowed {
        return Ok(());
    }
    let why = match from {
        Withdrawn => {
            "the contact withdrew consent; only their own new confirmation (double opt-in) can grant it again"
        }
        Invalid => {
            "the address is marked invalid (hard bounce); only a new confirmation by the recipient can change that"
        }
        _ => "this source may not make that change",
    };
    Err(ContactError::ConsentRefused(format!(
        "consent cannot change from {from} to {to} by {}: {why}",
        serde_json::to_value(source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    )))
}

/// A requested consent change with its evidence.
#[derive(Debug, Clone)]
pub struct ConsentChange {
    /// The new state.
    pub to: ConsentState,
    /// Who asks.
    pub source: ConsentSource,
    /// Recipient's IP, for recipient actions.
    pub ip: Option<String>,
    /// Recipient's user agent, for recipient actions.
    pub user_agent: Option<String>,
    /// Free text.
    pub note: Option<String>,
}

/// An upsert of one contact: what to set, clear, add and remove. Built by the
/// API and the CSV import, checked against field definitions before it reaches
/// the writer.
#[derive(Debug, Clone, Default)]
pub struct ContactUpdate {
    /// Field values to set (`Some`) or clear (`None`).
    pub fields: BTreeMap<String, Option<FieldValue>>,
    /// New language (`Some(None)` clears it).
    pub language: Option<Option<String>>,
    /// New site (`Some(None)` clears it).
    pub site: Option<Option<String>>,
    /// Consent change, if any.
    pub consent: Option<ConsentChange>,
    /// New phone number, E.164 already (`Some(None)` clears it).
    pub phone: Option<Option<String>>,
    /// SMS consent change, if any (same rules as `consent`).
    pub sms_consent: Option<ConsentChange>,
    /// Lists to add the contact to.
    pub add_lists: BTreeSet<u64>,
    /// Lists to take the contact out of.
    pub remove_lists: BTreeSet<u64>,
    /// Tags to add.
    pub add_tags: BTreeSet<String>,
    /// Tags to remove.
    pub remove_tags: BTreeSet<String>,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// A new contact.
    Created,
    /// An existing contact changed.
    Updated,
    /// The contact already looked like that.
    Unchanged,
}

/// Checks a language or site code: 1-35 characters of letters, digits, `-`, `_`.
pub fn check_code(what: &str, v: &str) -> Result<String, ContactError> {
    let v = v.trim();
    if v.is_empty()
        || v.len() > 35
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ContactError::Invalid(format!(
            "{what} `{v}` must be 1 to 35 letters, digits, `-` or `_` (e.g. `pl`, `en-GB`)"
        )));
    }
    Ok(v.to_string())
}

/// Checks a tag: 1-64 characters, no control characters, trimmed.
pub fn check_tag(v: &str) -> Result<String, ContactError> {
    let v = v.trim();
    if v.is_empty() || v.chars().count() > 64 || v.chars().any(char::is_control) {
        return Err(ContactError::Invalid(format!(
            "tag `{v}` must be 1 to 64 characters without control characters"
        )));
    }
    Ok(v.to_string())
}

/// Applies an update to the contact with `email` (created if absent), inside the
/// writer's transaction. Returns the outcome and the contact as stored.
pub fn apply_upsert(
    t: &mut WriteTables<'_>,
    email: &Email,
    update: ContactUpdate,
    create: bool,
    now: DateTime<Utc>,
) -> Result<Result<(UpsertOutcome, Contact), ContactError>, StoreError> {
    let salt = t.salt()?;
    Ok(apply_upsert_salted(t, &salt, email, update, create, now)?.map(owned))
}

/// The contact out of its shared form (a copy when the store's observer
/// holds it too).
fn owned((o, c): (UpsertOutcome, Arc<Contact>)) -> (UpsertOutcome, Contact) {
    (o, Arc::unwrap_or_clone(c))
}

/// [`apply_upsert`] with the installation salt already read (imports and
/// event batches read it once per batch); the contact as stored is shared
/// with the store's observer rather than copied for the caller.
pub fn apply_upsert_salted(
    t: &mut WriteTables<'_>,
    salt: &[u8],
    email: &Email,
    update: ContactUpdate,
    create: bool,
    now: DateTime<Utc>,
) -> Result<Result<(UpsertOutcome, Arc<Contact>), ContactError>, StoreError> {
    apply_upsert_with(t, salt, email, update, create, now, UpsertPlan::default())
}

/// How [`apply_upsert_planned`] goes about an upsert; the outcome is the
/// same either way, only the work differs.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpsertPlan {
    /// Claim the address in the index first
    /// ([`WriteTables::claim_address`]): one descent for a new address,
    /// two writes for a known one. For batches of mostly new addresses.
    pub claim_first: bool,
    /// The caller checked, in this transaction, that the update's fields
    /// still have the definitions its values were parsed against (an
    /// import does it once per batch): no check per value.
    pub fields_checked: bool,
}

/// [`apply_upsert_salted`] of a row that creates its contact if absent,
/// done as `plan` says.
pub fn apply_upsert_planned(
    t: &mut WriteTables<'_>,
    salt: &[u8],
    email: &Email,
    update: ContactUpdate,
    now: DateTime<Utc>,
    plan: UpsertPlan,
) -> Result<Result<(UpsertOutcome, Arc<Contact>), ContactError>, StoreError> {
    apply_upsert_with(t, salt, email, update, true, now, plan)
}

fn apply_upsert_with(
    t: &mut WriteTables<'_>,
    salt: &[u8],
    email: &Email,
    update: ContactUpdate,
    create: bool,
    now: DateTime<Utc>,
    plan: UpsertPlan,
) -> Result<Result<(UpsertOutcome, Arc<Contact>), ContactError>, StoreError> {
    let (known, claimed) = if create && plan.claim_first {
        match t.claim_address(&email.key)? {
            AddressClaim::New(id) => (None, Some(id)),
            AddressClaim::Known(id) => (Some(id), None),
        }
    } else {
        (t.contact_id_by_email(&email.key)?, None)
    };
    let existing = match known {
        Some(id) => t.contact(id)?,
        None => None,
    };
    // A suppressed address is never added again; a contact that exists
    // (bounced, complained: its consent says so) can still be updated.
    if existing.is_none()
        && t.any_suppressed()
        && let Some(s) = t.suppression(&suppression_key(salt, &email.key))?
    {
        let e = ContactError::Suppressed {
            reason: s.reason,
            at: s.at.format("%Y-%m-%d").to_string(),
        };
        return refused(t, &email.key, claimed, e);
    }
    if existing.is_none() && !create {
        return Ok(Err(ContactError::NotFound(format!(
            "no contact with address {}",
            email.display
        ))));
    }
    let how = Writing {
        claimed,
        fields_checked: plan.fields_checked,
    };
    match apply_to(t, existing, Some(email), update, now, how)? {
        Err(e) => refused(t, &email.key, claimed, e),
        ok => Ok(ok),
    }
}

/// A row refused after its address was claimed gives the claim back.
fn refused<T>(
    t: &mut WriteTables<'_>,
    key: &str,
    claimed: Option<u64>,
    e: ContactError,
) -> Result<Result<T, ContactError>, StoreError> {
    if let Some(id) = claimed {
        t.release_address(key, id)?;
    }
    Ok(Err(e))
}

/// What [`apply_to`] may skip: the address already claimed for a new
/// contact (with this id), the fields already checked.
#[derive(Debug, Clone, Copy, Default)]
struct Writing {
    claimed: Option<u64>,
    fields_checked: bool,
}

/// Applies an update to an existing contact found by id.
pub fn apply_update_by_id(
    t: &mut WriteTables<'_>,
    id: u64,
    update: ContactUpdate,
    now: DateTime<Utc>,
) -> Result<Result<(UpsertOutcome, Contact), ContactError>, StoreError> {
    match t.contact(id)? {
        None => Ok(Err(ContactError::NotFound(format!(
            "no contact with id {id}"
        )))),
        Some(c) => Ok(apply_to(t, Some(c), None, update, now, Writing::default())?.map(owned)),
    }
}

fn apply_to(
    t: &mut WriteTables<'_>,
    existing: Option<Contact>,
    email: Option<&Email>,
    update: ContactUpdate,
    now: DateTime<Utc>,
    how: Writing,
) -> Result<Result<(UpsertOutcome, Arc<Contact>), ContactError>, StoreError> {
    // Check everything first; write only when all of it passes. Field values
    // were parsed against definitions read before this transaction; a field
    // deleted or changed since must not receive them.
    let unchecked = if how.fields_checked {
        None
    } else {
        Some(&update.fields)
    };
    for (name, v) in unchecked.into_iter().flatten() {
        let Some(v) = v else { continue };
        match t.field_cached(name)? {
            None => return Ok(Err(ContactError::UnknownField(name.clone()))),
            Some(def) if !value_fits(def, v) => {
                return Ok(Err(ContactError::InvalidValue {
                    field: name.clone(),
                    reason: "the field's definition changed while this update was in flight".into(),
                }));
            }
            Some(_) => {}
        }
    }
    for l in update.add_lists.iter().chain(&update.remove_lists) {
        if !t.list_exists(*l)? {
            return Ok(Err(ContactError::NotFound(format!("no list with id {l}"))));
        }
    }
    let mut c = match (&existing, email) {
        (Some(c), _) => c.clone(),
        (None, Some(email)) => blank(email, now),
        (None, None) => {
            return Ok(Err(ContactError::Invalid(
                "a new contact needs an e-mail address".into(),
            )));
        }
    };
    let events = match build(&mut c, update, now) {
        Ok(events) => events,
        Err(e) => return Ok(Err(e)),
    };

    let outcome = match &existing {
        None => UpsertOutcome::Created,
        Some(old) if *old == c => return Ok(Ok((UpsertOutcome::Unchanged, Arc::new(c)))),
        Some(_) => UpsertOutcome::Updated,
    };
    if existing.is_none() {
        c.id = match how.claimed {
            Some(id) => id,
            None => t.next_id(Sequence::Contact)?,
        };
    }
    c.updated_at = now;
    let c = Arc::new(c);
    match how.claimed {
        Some(_) => t.put_claimed_contact(&c)?,
        None => t.put_shared_contact(&c, existing.as_ref())?,
    }
    for ev in events.into_iter().flatten() {
        t.append_consent(c.id, &ev)?;
    }
    Ok(Ok((outcome, c)))
}

/// A contact not stored yet: the address, nothing else.
fn blank(email: &Email, now: DateTime<Utc>) -> Contact {
    Contact {
        id: 0,
        email: email.display.clone(),
        consent: ConsentState::Unknown,
        phone: None,
        sms_consent: ConsentState::Unknown,
        language: None,
        site: None,
        fields: BTreeMap::new(),
        lists: BTreeSet::new(),
        tags: BTreeSet::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Applies `update` to `c` (pure: what the store allows was checked):
/// the consent log entries it makes (e-mail, SMS), or why it may not.
fn build(
    c: &mut Contact,
    update: ContactUpdate,
    now: DateTime<Utc>,
) -> Result<[Option<ConsentEvent>; 2], ContactError> {
    let ContactUpdate {
        fields,
        language,
        site,
        consent,
        phone,
        sms_consent,
        add_lists,
        remove_lists,
        add_tags,
        remove_tags,
    } = update;
    let consent_event = consent_change(&mut c.consent, consent, Channel::Email, now)?;
    // SMS consent was given for a number: a new one (or none) starts over,
    // unless this same update says what it is.
    let sms_consent = match (&phone, sms_consent) {
        (Some(p), None) if *p != c.phone && c.sms_consent == ConsentState::Granted => {
            Some(ConsentChange {
                to: ConsentState::Unknown,
                source: ConsentSource::Api,
                ip: None,
                user_agent: None,
                note: Some("the phone number changed; SMS consent was for the old one".into()),
            })
        }
        (_, s) => s,
    };
    if let Some(p) = phone {
        c.phone = p;
    }
    if sms_consent
        .as_ref()
        .is_some_and(|ch| ch.to == ConsentState::Granted)
        && c.phone.is_none()
    {
        return Err(ContactError::Invalid(
            "SMS consent cannot be granted to a contact without a phone number".into(),
        ));
    }
    let sms_event = consent_change(&mut c.sms_consent, sms_consent, Channel::Sms, now)?;
    set_fields(&mut c.fields, fields);
    if let Some(l) = language {
        c.language = l;
    }
    if let Some(s) = site {
        c.site = s;
    }
    c.lists.extend(add_lists);
    c.lists.retain(|l| !remove_lists.contains(l));
    c.tags.extend(add_tags);
    c.tags.retain(|x| !remove_tags.contains(x));
    Ok([consent_event, sms_event])
}

/// Sets (`Some`) or clears (`None`) each of `update`'s values.
fn set_fields(
    fields: &mut BTreeMap<String, FieldValue>,
    update: BTreeMap<String, Option<FieldValue>>,
) {
    for (k, v) in update {
        match v {
            Some(v) => {
                fields.insert(k, v);
            }
            None => {
                fields.remove(&k);
            }
        }
    }
}

/// Applies a requested change to one consent (`state`, of `channel`): the
/// log entry it makes, none when it changes nothing, or why it may not.
fn consent_change(
    state: &mut ConsentState,
    change: Option<ConsentChange>,
    channel: Channel,
    now: DateTime<Utc>,
) -> Result<Option<ConsentEvent>, ContactError> {
    let Some(ch) = change.filter(|ch| ch.to != *state) else {
        return Ok(None);
    };
    check_transition(*state, ch.to, ch.source)?;
    let ev = ConsentEvent {
        at: now,
        channel,
        from: *state,
        to: ch.to,
        source: ch.source,
        ip: ch.ip,
        user_agent: ch.user_agent,
        note: ch.note,
    };
    *state = ch.to;
    Ok(Some(ev))
}

/// Moves a contact to consent state `to` with a consent log entry (no IP
/// or user agent: a machine's doing — a bounce, a complaint); false when
/// it was in that state already, or is gone. `now` in ms.
pub fn set_consent(
    t: &mut WriteTables<'_>,
    contact: u64,
    to: ConsentState,
    source: ConsentSource,
    note: String,
    now: i64,
) -> Result<bool, StoreError> {
    match t.contact(contact)? {
        Some(c) if c.consent != to => {}
        _ => return Ok(false),
    }
    let update = ContactUpdate {
        consent: Some(ConsentChange {
            to,
            source,
            ip: None,
            user_agent: None,
            note: Some(note),
        }),
        ..Default::default()
    };
    let when = DateTime::from_timestamp_millis(now).unwrap_or_default();
    Ok(apply_update_by_id(t, contact, update, when)?.is_ok())
}

/// Puts `address` on the suppression list for `source` (`now` in ms);
/// false when an entry was there already (it stays as it is).
pub fn suppress(
    t: &mut WriteTables<'_>,
    address: &str,
    source: SuppressionSource,
    reason: String,
    now: i64,
) -> Result<bool, StoreError> {
    let address = address.to_lowercase();
    let key = suppression_key(&t.salt()?, &address);
    if t.suppression(&key)?.is_some() {
        return Ok(false);
    }
    t.put_suppression(
        &key,
        &Suppression {
            at: DateTime::from_timestamp_millis(now).unwrap_or_default(),
            reason,
            source,
            address: Some(address),
        },
    )?;
    Ok(true)
}

/// Erases a contact: data and consent log gone, a salted hash of the address
/// kept in the suppression list so that no later import or API call can add it.
///
/// Everywhere, in the same transaction: the contact, its indexes, consent
/// log, shop data (orders and their attribution, aggregates, cart,
/// wait-lists), history and last click; in the queue, every record of a
/// message to the address loses it, and messages still waiting fail unsent
/// as `erased` (bodies deleted). Hits on its old links afterwards are
/// answered but not recorded (`track::record`).
pub fn erase(
    t: &mut WriteTables<'_>,
    id: u64,
    now: DateTime<Utc>,
) -> Result<Result<Contact, ContactError>, StoreError> {
    let Some(c) = t.contact(id)? else {
        return Ok(Err(ContactError::NotFound(format!(
            "no contact with id {id}"
        ))));
    };
    let salt = t.salt()?;
    let key = suppression_key(&salt, &c.email.to_lowercase());
    // The queue first: finishing a message writes history, which goes next.
    crate::delivery::engine::erase_recipient(t, &key, now.timestamp_millis())?;
    t.scrub_sms_of(id, now.timestamp_millis())?;
    t.delete_contact(&c)?;
    t.erase_history(id)?;
    t.scrub_inbound_of(id)?;
    t.delete_signup_requests(id)?;
    t.put_suppression(
        &key,
        &Suppression {
            at: now,
            reason: "erased at the contact's request".into(),
            source: crate::contacts::model::SuppressionSource::Erasure,
            address: None,
        },
    )?;
    Ok(Ok(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(t: FieldType) -> FieldDef {
        FieldDef {
            name: "f".into(),
            field_type: t,
            choices: vec!["a".into(), "b".into()],
            label: None,
            created_at: Utc::now(),
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn emails_are_normalised_by_domain_and_compared_without_case() -> TestResult {
        let e = normalize_email("  John.Doe@Example.COM ")?;
        assert_eq!(e.display, "John.Doe@example.com");
        assert_eq!(e.key, "john.doe@example.com");
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            "@b.com",
            "a@[1.2.3.4]",
            "a b@c.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad} accepted");
        }
        Ok(())
    }

    #[test]
    fn field_names_are_lower_case_latin_and_underscore() {
        assert!(check_field_name("first_name").is_ok());
        for bad in ["First", "name2", "imię", "", "email", "a-b"] {
            assert!(check_field_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn number_fields_take_digits_and_a_point_only() {
        let d = def(FieldType::Number);
        assert_eq!(
            parse_value(&d, "0012.50").ok(),
            Some(FieldValue::Number("12.50".into()))
        );
        assert_eq!(
            parse_value(&d, "0").ok(),
            Some(FieldValue::Number("0".into()))
        );
        for bad in ["+48123", "-1", "1,5", "1.2.3", ".5", "5.", "1e3", ""] {
            assert!(parse_value(&d, bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn other_field_types_validate() {
        assert!(parse_value(&def(FieldType::Date), "2024-02-29").is_ok());
        assert!(parse_value(&def(FieldType::Date), "2023-02-29").is_err());
        assert_eq!(
            parse_value(&def(FieldType::Boolean), "Yes").ok(),
            Some(FieldValue::Boolean(true))
        );
        assert!(parse_value(&def(FieldType::Boolean), "maybe").is_err());
        assert!(parse_value(&def(FieldType::Choice), "a").is_ok());
        assert!(parse_value(&def(FieldType::Choice), "c").is_err());
    }

    /// Values parsed against a field that is deleted before the write commits
    /// are refused inside the transaction.
    #[test]
    fn a_value_for_a_field_deleted_in_flight_is_refused() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = crate::store::Store::open(dir.path())?;
        let email = normalize_email("a@example.com")?;
        let mut update = ContactUpdate::default();
        update
            .fields
            .insert("gone".into(), Some(FieldValue::Text("x".into())));
        let r = store
            .write_blocking(move |t| apply_upsert(t, &email, update, true, Utc::now()))?
            .blocking_recv()??;
        assert!(matches!(r, Err(ContactError::UnknownField(f)) if f == "gone"));
        Ok(())
    }

    /// The whole consent rule as a table: every (from, source, to) and
    /// whether it is allowed. A contact that withdrew or is invalid comes
    /// back to `granted` (or `pending`) only through `link` (their own
    /// confirmation click); nothing else moves them anywhere but between
    /// `withdrawn` and `invalid`.
    #[test]
    fn consent_transition_table() {
        use ConsentSource as S;
        use ConsentState as C;
        let states = [C::Unknown, C::Pending, C::Granted, C::Withdrawn, C::Invalid];
        let sources = [
            S::Import,
            S::Api,
            S::Form,
            S::Link,
            S::Bounce,
            S::Complaint,
            S::Reply,
        ];
        let expected = |from: ConsentState, s: ConsentSource, to: ConsentState| -> bool {
            if from == to {
                return true;
            }
            let gone = matches!(from, C::Withdrawn | C::Invalid);
            match s {
                S::Link | S::Reply => matches!(to, C::Granted | C::Withdrawn),
                S::Form => {
                    !gone && (to == C::Withdrawn || (from == C::Unknown && to == C::Pending))
                }
                S::Bounce => to == C::Invalid,
                S::Complaint => to == C::Withdrawn,
                S::Import | S::Api => !gone || matches!(to, C::Withdrawn | C::Invalid),
            }
        };
        let mut checked = 0;
        for from in states {
            for s in sources {
                for to in states {
                    let got = check_transition(from, to, s).is_ok();
                    assert_eq!(got, expected(from, s, to), "{from:?} --{s:?}--> {to:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 5 * 7 * 5);
        // The promise, spelled out: only the recipient's own link (or, for
        // SMS, their START reply) grants again.
        for s in sources {
            for from in [C::Withdrawn, C::Invalid] {
                for to in [C::Granted, C::Pending] {
                    assert_eq!(
                        check_transition(from, to, s).is_ok(),
                        matches!(s, S::Link | S::Reply) && to == C::Granted
                    );
                }
            }
        }
    }
}
