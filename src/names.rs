//! The names Herald's data is keyed and described by: e-mail addresses (a
//! contact's identity) and custom field names, with the attribute names a
//! field may not take.
//!
//! These are pure syntax rules, shared by the config (sender addresses,
//! `[rendering] name_fields`, `[signup] fields`), contacts (identity, field
//! definitions) and segments (built-in attributes). They live here rather
//! than in `contacts` so that the config can check them and still be a leaf.
//!
//! Architecture invariant: this module names no other module of the crate
//! (`tests/architecture.rs` checks it).

/// A normalised address: `display` keeps the local part's case, `key` is the
/// fully lower-cased identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Trimmed, domain lower-cased.
    pub display: String,
    /// Lower-cased; the identity.
    pub key: String,
}

/// Why an address is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid e-mail address `{address}`: {reason}")]
pub struct InvalidEmail {
    /// The address as given, trimmed.
    pub address: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Normalises and checks an address.
pub fn normalize_email(raw: &str) -> Result<Email, InvalidEmail> {
    let trimmed = raw.trim();
    let bad = |reason: &str| InvalidEmail {
        address: trimmed.to_string(),
        reason: reason.to_string(),
    };
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.len() > 254 {
        return Err(bad("longer than 254 characters"));
    }
    let Some((local, domain)) = trimmed.rsplit_once('@') else {
        return Err(bad("no @"));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(bad("the part before @ must be 1 to 64 characters"));
    }
    if local.contains('@') && !local.starts_with('"') {
        return Err(bad("more than one @"));
    }
    let domain = domain.to_lowercase();
    if domain.starts_with('[') {
        return Err(bad("address literals are not accepted"));
    }
    if !domain.contains('.') || domain.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(bad(
            "the domain must be a full domain name such as example.com",
        ));
    }
    let display = format!("{local}@{domain}");
    if !email_address::EmailAddress::is_valid(&display) {
        return Err(bad("not a valid address"));
    }
    let key = display.to_lowercase();
    Ok(Email { display, key })
}

/// Why a name cannot be a custom field's; the message says which rule it
/// breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFieldName(pub String);

/// Checks a custom field name: lower-case latin letters and `_`, not a
/// built-in attribute.
pub fn check_field_name(name: &str) -> Result<(), InvalidFieldName> {
    if name.is_empty() || name.len() > 64 {
        return Err(InvalidFieldName(format!(
            "field name `{name}` must be 1 to 64 characters"
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(InvalidFieldName(format!(
            "field name `{name}` may only contain lower-case latin letters a-z and `_`"
        )));
    }
    if BUILTIN_COLUMNS.contains(&name) || name == "id" || name == "lists" {
        return Err(InvalidFieldName(format!(
            "`{name}` is a built-in contact attribute, not a custom field"
        )));
    }
    if SEGMENT_BUILTINS.iter().any(|(n, _)| *n == name) {
        return Err(InvalidFieldName(format!(
            "`{name}` is a built-in attribute segments use, not a custom field"
        )));
    }
    Ok(())
}

/// Contact attributes that are not custom fields (also the CSV columns that map
/// to them).
pub const BUILTIN_COLUMNS: &[&str] = &[
    "email",
    "language",
    "site",
    "consent",
    "tags",
    "phone",
    "sms_consent",
];

/// Built-in attributes and aggregates segment conditions can name with
/// `field`, with what they mean (`segment::BUILTINS`, which gives them their
/// types). Custom fields may not take these names.
pub const SEGMENT_BUILTINS: &[(&str, &str)] = &[
    (
        "consent",
        "consent state: unknown, pending, granted, withdrawn, invalid",
    ),
    ("site", "the contact's site id"),
    ("language", "the contact's language code"),
    ("email_domain", "the domain of the address"),
    ("created_at", "date the contact was created"),
    (
        "order_count",
        "number of orders (cancelled, refunded and failed ones not counted)",
    ),
    ("order_sum", "sum of the orders' totals"),
    (
        "average_order",
        "average order value (order_sum / order_count)",
    ),
    ("first_order", "date of the first order"),
    ("last_order", "date of the last order"),
    ("payment_types", "payment types used (a set: `contains`)"),
    ("last_login", "date of the last login"),
    ("logins", "number of logins"),
    ("cart_items", "units in the current cart"),
    ("cart_value", "value of the current cart"),
    ("cart_updated", "date the cart last changed"),
    ("tags", "the contact's tags (a set: `contains`)"),
    ("last_open", "date of the last open"),
    ("last_click", "date of the last click"),
];

/// Whether `c` is an ISO 3166 country code the phone-number metadata knows
/// (`PL`, `de`): where a national phone number can be read.
pub fn is_country(c: &str) -> bool {
    c.len() == 2
        && c.to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .is_ok()
}
