//! The contact data model: contacts, custom fields and their values, lists,
//! consent states and the consent log, suppressions and import records.
//!
//! These types are what the store persists (as JSON) and what the admin API
//! shows; rules about them (identity, field validation, consent transitions)
//! live in the sibling modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// Storage encodings that keep stored records small and cheap to write:
/// timestamps as milliseconds since the epoch, dates as days since 0001-01-01.
/// The admin API formats them as RFC 3339 / `YYYY-MM-DD` itself.
pub mod compact {
    use chrono::{DateTime, Datelike, NaiveDate, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// `DateTime<Utc>` as integer milliseconds.
    pub mod millis {
        use super::*;
        /// Serializes.
        pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_i64(t.timestamp_millis())
        }
        /// Deserializes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
            let ms = i64::deserialize(d)?;
            DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| serde::de::Error::custom(format!("timestamp {ms} out of range")))
        }
    }

    /// `NaiveDate` as days since 0001-01-01 (day 1).
    pub mod days {
        use super::*;
        /// Serializes.
        pub fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_i32(d.num_days_from_ce())
        }
        /// Deserializes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
            let n = i32::deserialize(d)?;
            NaiveDate::from_num_days_from_ce_opt(n)
                .ok_or_else(|| serde::de::Error::custom(format!("day {n} out of range")))
        }
    }
}

/// A contact: one per e-mail address, system-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// Stable id, assigned at creation and never reused.
    pub id: u64,
    /// The address as given: trimmed, domain lower-cased.
    pub email: String,
    /// Current consent state (the consent log says how it got there).
    pub consent: ConsentState,
    /// Mobile phone number, E.164 (`+48500100200`): where SMS go. One of
    /// the contact's attributes; the contact is still its e-mail address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Consent to marketing SMS: the same five states and rules as e-mail
    /// consent, kept apart (its log entries say `channel: sms`).
    #[serde(default, skip_serializing_if = "ConsentState::is_unknown")]
    pub sms_consent: ConsentState,
    /// Language code such as `pl` or `en`, for templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Site the contact belongs to, for multi-site shops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Custom field values by field name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, FieldValue>,
    /// Ids of the static lists the contact is in.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub lists: BTreeSet<u64>,
    /// Tags.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub tags: BTreeSet<String>,
    /// When the contact was created.
    #[serde(with = "compact::millis")]
    pub created_at: DateTime<Utc>,
    /// When anything about the contact last changed.
    #[serde(with = "compact::millis")]
    pub updated_at: DateTime<Utc>,
}

/// System-wide consent (opt-in) state.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ConsentState {
    /// Nothing known: no marketing mail.
    #[default]
    Unknown,
    /// Awaiting the recipient's confirmation (double opt-in).
    Pending,
    /// The recipient agreed: marketing mail allowed.
    Granted,
    /// The recipient withdrew; only their own new confirmation can undo it.
    Withdrawn,
    /// The address does not work (hard bounce).
    Invalid,
}

impl ConsentState {
    /// Whether nothing is known (the default, not stored).
    pub fn is_unknown(&self) -> bool {
        *self == ConsentState::Unknown
    }

    /// All states, in code order.
    pub const ALL: [ConsentState; 5] = [
        ConsentState::Unknown,
        ConsentState::Pending,
        ConsentState::Granted,
        ConsentState::Withdrawn,
        ConsentState::Invalid,
    ];

    /// Stable one-byte code used in the store's consent index.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The lower-case name used in the API, CSV and config.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Unknown => "unknown",
            ConsentState::Pending => "pending",
            ConsentState::Granted => "granted",
            ConsentState::Withdrawn => "withdrawn",
            ConsentState::Invalid => "invalid",
        }
    }

    /// Parses a state name, case-insensitively.
    pub fn parse(s: &str) -> Option<ConsentState> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for ConsentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a consent change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentSource {
    /// A CSV import.
    Import,
    /// The admin API.
    Api,
    /// A public signup form filled in by the recipient.
    Form,
    /// A link the recipient followed (confirmation, unsubscribe).
    Link,
    /// A hard bounce.
    Bounce,
    /// A spam complaint.
    Complaint,
    /// A text message from the person's phone (a STOP reply).
    Reply,
}

/// What a consent is for: e-mail (the contact's `consent`) or SMS
/// (`sms_consent`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// E-mail.
    #[default]
    Email,
    /// Text messages.
    Sms,
}

impl Channel {
    /// Whether this is e-mail (the default, not stored).
    pub fn is_email(&self) -> bool {
        *self == Channel::Email
    }

    /// `email` or `sms`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
        }
    }

    /// The channel called `s`.
    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "email" => Some(Channel::Email),
            "sms" => Some(Channel::Sms),
            _ => None,
        }
    }
}

/// One entry of the append-only consent log: the proof GDPR asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentEvent {
    /// When it happened.
    #[serde(with = "compact::millis")]
    pub at: DateTime<Utc>,
    /// Which consent changed (e-mail unless it says `sms`).
    #[serde(default, skip_serializing_if = "Channel::is_email")]
    pub channel: Channel,
    /// State before.
    pub from: ConsentState,
    /// State after.
    pub to: ConsentState,
    /// Who or what changed it.
    pub source: ConsentSource,
    /// The recipient's IP address, for recipient actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The recipient's user agent, for recipient actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Free text: the import id, an admin's reason, the bounce reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The type of a custom field. Never changes once the field exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Any text.
    Text,
    /// Digits with at most one decimal point.
    Number,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    /// `true`/`false` (CSV also takes yes/no, 1/0).
    Boolean,
    /// One of a closed set of values.
    Choice,
}

impl FieldType {
    /// Parses a type name.
    pub fn parse(s: &str) -> Option<FieldType> {
        match s {
            "text" => Some(FieldType::Text),
            "number" => Some(FieldType::Number),
            "date" => Some(FieldType::Date),
            "boolean" => Some(FieldType::Boolean),
            "choice" => Some(FieldType::Choice),
            _ => None,
        }
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Text => "text",
            FieldType::Number => "number",
            FieldType::Date => "date",
            FieldType::Boolean => "boolean",
            FieldType::Choice => "choice",
        }
    }
}

/// A custom field definition. Fields are global, not per list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldDef {
    /// Lower-case latin letters and `_`; immutable.
    pub name: String,
    /// Immutable.
    #[serde(rename = "type")]
    pub field_type: FieldType,
    /// Allowed values of a `choice` field; editable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// A human label for the admin UI; editable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the field was created.
    pub created_at: DateTime<Utc>,
}

/// A validated field value. Stored with one-letter tags (`{"s": "Ann"}`) to
/// keep contact records small; the API shows plain JSON values (`to_json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FieldValue {
    /// Text.
    #[serde(rename = "s")]
    Text(String),
    /// A canonical decimal number (digits, at most one point, no leading zeros).
    #[serde(rename = "n")]
    Number(String),
    /// A date.
    #[serde(rename = "d", with = "compact::days")]
    Date(NaiveDate),
    /// A boolean.
    #[serde(rename = "b")]
    Boolean(bool),
    /// One of the field's choices.
    #[serde(rename = "c")]
    Choice(String),
}

impl ConsentEvent {
    /// The event as the API shows it (RFC 3339 time).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "at": self.at,
            "from": self.from,
            "to": self.to,
            "source": self.source,
            "channel": self.channel,
        });
        for (k, x) in [
            ("ip", &self.ip),
            ("user_agent", &self.user_agent),
            ("note", &self.note),
        ] {
            if let Some(x) = x {
                v[k] = serde_json::Value::String(x.clone());
            }
        }
        v
    }
}

impl FieldValue {
    /// The value as JSON, as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::Text(s) | FieldValue::Choice(s) => serde_json::Value::String(s.clone()),
            FieldValue::Number(n) => serde_json::from_str::<serde_json::Number>(n)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|_| serde_json::Value::String(n.clone())),
            FieldValue::Date(d) => serde_json::Value::String(d.format("%Y-%m-%d").to_string()),
            FieldValue::Boolean(b) => serde_json::Value::Bool(*b),
        }
    }
}

/// A static list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct List {
    /// Stable id.
    pub id: u64,
    /// Unique name (compared case-insensitively).
    pub name: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Number of contacts in the list, kept by the store.
    #[serde(default)]
    pub member_count: u64,
    /// When the list was created.
    pub created_at: DateTime<Utc>,
}

/// An entry of the suppression list, kept under a salted one-way hash of the
/// address (the table key): an address Herald must not add again (nor mail,
/// for a bounce, complaint or manual entry). An erased contact leaves only
/// the hash; the other sources keep the address so an admin can see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suppression {
    /// When the address was suppressed.
    pub at: DateTime<Utc>,
    /// Why, e.g. `erased at the contact's request`, a bounce's status and
    /// diagnostic.
    pub reason: String,
    /// What suppressed it (entries written before the field are erasures).
    #[serde(default)]
    pub source: SuppressionSource,
    /// The address; `None` for an erasure (only the hash is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// What put an address on the suppression list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionSource {
    /// The contact was erased at their request (GDPR): hash only.
    #[default]
    Erasure,
    /// A hard bounce (the address does not exist).
    Bounce,
    /// `[inbound] soft_bounce_limit` soft bounces without a delivery.
    SoftBounces,
    /// A spam complaint.
    Complaint,
    /// Added by an admin.
    Manual,
}

impl SuppressionSource {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionSource::Erasure => "erasure",
            SuppressionSource::Bounce => "bounce",
            SuppressionSource::SoftBounces => "soft_bounces",
            SuppressionSource::Complaint => "complaint",
            SuppressionSource::Manual => "manual",
        }
    }
}

/// The state of a CSV import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportStatus {
    /// Still reading rows.
    Running,
    /// Every row was read; committed batches are durable.
    Completed,
    /// The upload stopped part-way (client gone, daemon restarted); the batches
    /// up to `records_committed` are durable, and `resume` continues after them.
    Interrupted,
    /// Refused before any row was imported (bad header).
    Failed,
}

/// One CSV import, kept so that it can be reported and resumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// Import id.
    pub id: u64,
    /// Where it stands.
    pub status: ImportStatus,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// The list rows were added to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Data records (not counting the header) whose outcome is committed.
    pub records_committed: u64,
    /// The last file line whose outcome is committed.
    pub lines_committed: u64,
    /// Contacts created.
    pub created: u64,
    /// Existing contacts updated.
    pub updated: u64,
    /// Rows that changed nothing.
    pub unchanged: u64,
    /// Rows whose address already appeared earlier in the same file; they were
    /// merged into that contact (later values win).
    pub merged_duplicates: u64,
    /// Rows rejected (each one is in the rejects list with line and reason).
    pub rejected: u64,
    /// Why the import failed or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
