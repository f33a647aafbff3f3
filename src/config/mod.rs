//! Loading and validating `herald.toml`.
//!
//! Configuration is read in two stages, in the manner of ripgrep and Stalwart:
//! first the raw values exactly as the admin wrote them ([`RawConfig`], serde
//! structs with `deny_unknown_fields` and `Spanned` positions), then a validated,
//! typed [`Config`] that the rest of the daemon uses. Every problem is collected
//! and reported together, each naming the file, line, column and key path, so an
//! admin fixes a config in one pass instead of one error per restart.
//!
//! serde stops at the first error, so [`parse_raw`] reports that error, blanks
//! out the offending key/value (keeping line numbers intact) and parses again,
//! until the file deserializes. Semantic checks (addresses, URLs, paths, token
//! strength) then run on the surviving values. A TOML syntax error is the
//! exception: only the first is reported ([`syntax_error`]), as the
//! parser's recovery turns one into many.
//!
//! This file holds the glue: the raw and validated config as a whole, the
//! error collection and the order the sections are checked in. Each section
//! has its own file, named after it: `http.rs` (`[http]`), `storage.rs`,
//! `admin.rs`, `log.rs`, `paths.rs`, `import.rs`, `delivery.rs`
//! (`[delivery]`), `senders.rs` (`[[sender]]`), `tracking.rs`,
//! `rendering.rs` (`[rendering]`, `[greetings.<lang>]`), `sites.rs`
//! (`[[site]]`), `signup.rs` and `automation.rs` (`[automation]`);
//! `values.rs` has the checks several share.
//!
//! Architecture invariant: the config is a leaf. It names no other module of
//! the crate but three leaves of its own: `names` (address and field-name
//! syntax), `tokens` (the signing keys) and `delivery::dkim` (the DKIM key
//! type, a file that names nothing else); `tests/architecture.rs` checks it.
//! The templates and segment files the config points to are loaded with it
//! into a `Snapshot` (`src/snapshot.rs`), which is what the daemon holds
//! and SIGHUP replaces whole.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

pub mod admin;
pub mod automation;
pub mod delivery;
pub mod edit;
pub mod http;
pub mod import;
pub mod inbound;
pub mod log;
pub mod paths;
pub mod rendering;
pub mod senders;
pub mod shaping;
pub mod signup;
pub mod sites;
pub mod sms;
pub mod storage;
pub mod tracking;
mod values;
pub mod warmup;

pub use self::http::{HttpConfig, HttpLimits, MetricsToken};
pub use self::log::{LogConfig, LogFormat};
pub use admin::{AdminConfig, MIN_TOKEN_LEN};
pub use automation::AutomationConfig;
pub use delivery::DeliveryConfig;
pub use import::ImportConfig;
pub use paths::{PathsConfig, References, toml_files};
pub use rendering::{Greeting, RenderingConfig};
pub use senders::{Relay, RelayTls, Sender, domain_of, parse_mailbox};
pub use signup::SignupConfig;
pub use sites::{Autologin, Site};
pub use storage::StorageConfig;
pub use tracking::TrackingConfig;
pub use values::{MIN_SECRET_LEN, Secret, is_currency, is_language};

/// Default location of the config file, as the external contract says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/herald/herald.toml";

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a position.
    pub position: Option<(usize, usize)>,
    /// Dotted key path such as `http.listen`, or empty for file-level problems.
    pub key: String,
    /// What is wrong, in words an admin can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)
        }
    }
}

/// Every problem found while loading a configuration; never empty.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// Stage one: raw values as written.
// ---------------------------------------------------------------------------

/// `herald.toml` as written. Every field is optional at this stage so that a
/// missing key is reported by validation, together with everything else.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HTTP listener that serves the admin API, the admin UI and the public
    /// tracking/unsubscribe endpoints.
    #[serde(default)]
    pub http: self::http::RawHttp,
    /// Where the redb store lives.
    #[serde(default)]
    pub storage: storage::RawStorage,
    /// Access to the admin API.
    #[serde(default)]
    pub admin: admin::RawAdmin,
    /// Logging.
    #[serde(default)]
    pub log: self::log::RawLog,
    /// Folders holding templates, segments and automations.
    #[serde(default)]
    pub paths: paths::RawPaths,
    /// Delivery: DNS, connection limits, timeouts, retries.
    #[serde(default)]
    pub delivery: delivery::RawDelivery,
    /// Sender identities: From, envelope sender, DKIM keys, route.
    #[serde(default)]
    pub sender: Vec<senders::RawSender>,
    /// `[tracking]`
    pub tracking: Option<tracking::RawTracking>,
    /// `[rendering]`
    #[serde(default)]
    pub rendering: rendering::RawRendering,
    /// `[greetings.<lang>]`
    #[serde(default)]
    pub greetings: BTreeMap<String, rendering::RawGreeting>,
    /// `[[site]]`
    #[serde(default)]
    pub site: Vec<sites::RawSite>,
    /// `[signup]`: the public signup form.
    pub signup: Option<signup::RawSignup>,
    /// `[import]`: CSV imports.
    #[serde(default)]
    pub import: import::RawImport,
    /// `[automation]`: what every automation shares.
    #[serde(default)]
    pub automation: automation::RawAutomation,
    /// `[inbound]`: the SMTP listener for bounces and complaints.
    #[serde(default)]
    pub inbound: inbound::RawInbound,
    /// `[sms]`: what every text message shares.
    #[serde(default)]
    pub sms: sms::RawSms,
    /// `[[sms_gateway]]`: where text messages go.
    #[serde(default)]
    pub sms_gateway: Vec<sms::RawGateway>,
}

// ---------------------------------------------------------------------------
// Stage two: validated values.
// ---------------------------------------------------------------------------

/// The validated configuration (the templates and segment files it points to
/// are loaded with it into a `Snapshot`, `src/snapshot.rs`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this config was loaded from.
    pub file: PathBuf,
    /// HTTP listener settings.
    pub http: HttpConfig,
    /// Store location.
    pub storage: StorageConfig,
    /// Admin API access.
    pub admin: AdminConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Content folders.
    pub paths: PathsConfig,
    /// Which lists and fields the segment and automation files name, so that
    /// deleting one still in use can be refused with the reason.
    pub references: References,
    /// Delivery settings.
    pub delivery: DeliveryConfig,
    /// Sender identities, in file order.
    pub senders: Vec<Arc<Sender>>,
    /// `[tracking]`: token keys.
    pub tracking: TrackingConfig,
    /// `[rendering]` and greetings.
    pub rendering: RenderingConfig,
    /// `[[site]]` entries.
    pub sites: Vec<Site>,
    /// `[signup]`, when the public signup form is on.
    pub signup: Option<SignupConfig>,
    /// `[import]`: CSV import limits.
    pub import: ImportConfig,
    /// `[automation]` (defaults when the section is absent).
    pub automation: AutomationConfig,
    /// `[inbound]` (defaults, listener off, when the section is absent).
    pub inbound: inbound::InboundConfig,
    /// `[sms]` and the `[[sms_gateway]]`s.
    pub sms: sms::SmsConfig,
}

impl Config {
    /// The `[[site]]` with this id.
    pub fn site(&self, id: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.id == id)
    }

    /// The time zone of site `site`'s contacts: that site's, else (no site
    /// or an unknown one) the first `[[site]]`'s, else UTC.
    pub fn time_zone_of(&self, site: Option<&str>) -> chrono_tz::Tz {
        site.and_then(|id| self.site(id))
            .or(self.sites.first())
            .map_or(chrono_tz::Tz::UTC, |s| s.time_zone)
    }

    /// The country a national phone number of site `site`'s contacts is
    /// read in: that site's `country`, else the first `[[site]]`'s.
    pub fn phone_country(&self, site: Option<&str>) -> Option<&str> {
        site.and_then(|id| self.site(id))
            .and_then(|s| s.country.as_deref())
            .or_else(|| self.sites.first().and_then(|s| s.country.as_deref()))
    }

    /// The sender identity called `id`.
    pub fn sender(&self, id: &str) -> Option<&Arc<Sender>> {
        self.senders.iter().find(|s| s.id == id)
    }
}

impl Config {
    /// Loads, parses and validates the config at `path`, and reads which
    /// lists and fields the segment and automation files name. Returns every
    /// problem found. Templates and segment files are not loaded here: the
    /// snapshot (`src/snapshot.rs`) loads them with the config.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                position: None,
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            }])
        })?;
        Self::from_str(path, &text)
    }

    /// Parses and validates config text as if read from `path` (relative paths
    /// in it resolve against `path`'s directory).
    pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let raw = parse_raw::<RawConfig>(path, text, &mut errors);
        let config = raw.and_then(|raw| validate(path, text, raw, &mut errors));
        match config {
            Some(c) if errors.is_empty() => Ok(c),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

/// The first TOML syntax error of `text` (its line and column, and the
/// message), or `None` when it parses. Only the first is reported: the
/// parser's recovery after it mostly finds consequences of it (an unclosed
/// array yields one error per line that follows), which would bury the one
/// that matters.
pub fn syntax_error(text: &str) -> Option<(Option<(usize, usize)>, String)> {
    let (_, syntax) = toml::de::DeTable::parse_recoverable(text);
    let first = syntax
        .iter()
        .min_by_key(|e| e.span().map_or(usize::MAX, |s| s.start))?;
    Some((
        first.span().map(|s| line_col(text, s.start)),
        format!("TOML syntax error: {}", first.message().trim()),
    ))
}

/// Deserializes `text` into `T`, collecting every error: after each error the
/// offending key/value is blanked out (line structure kept) and parsing retried.
/// Returns `None` only when the text is not TOML at all.
pub fn parse_raw<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    if let Some((position, message)) = syntax_error(text) {
        errors.push(ConfigError {
            file: file.to_path_buf(),
            position,
            key: String::new(),
            message,
        });
        return None;
    }
    let mut work = text.to_string();
    // Each round removes one key, so the number of rounds is bounded by the
    // number of keys; the cap is a guard against a key that cannot be removed.
    for _ in 0..256 {
        match toml::from_str::<T>(&work) {
            Ok(v) => return Some(v),
            Err(e) => {
                let span = e.span();
                let located = span.clone().and_then(|s| locate_pair(&work, s.start));
                errors.push(ConfigError {
                    file: file.to_path_buf(),
                    position: span.map(|s| line_col(text, s.start)),
                    key: located
                        .as_ref()
                        .map(|(p, _)| p.join("."))
                        .unwrap_or_default(),
                    message: e.message().trim().to_string(),
                });
                match located {
                    Some((_, extent)) if blank(&mut work, extent.clone()) => continue,
                    _ => return None,
                }
            }
        }
    }
    None
}

/// Finds the innermost key/value pair whose text contains byte `offset`, and
/// returns its dotted key path and the byte range to blank to remove it.
fn locate_pair(text: &str, offset: usize) -> Option<(Vec<String>, Range<usize>)> {
    let parsed = toml::de::DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    let found = locate_in_table(parsed.get_ref(), offset, &mut path)?;
    Some((path, found))
}

fn locate_in_table(
    table: &toml::de::DeTable<'_>,
    offset: usize,
    path: &mut Vec<String>,
) -> Option<Range<usize>> {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        let k = key.span();
        let v = value.span();
        // The error is on this key (unknown field) or its value (wrong type):
        // the pair runs from the key to the end of everything below it. A
        // `[table]`'s own span covers only its header, hence `extent_end`.
        if k.contains(&offset) || (v.contains(&offset) && !is_container(value.get_ref())) {
            return Some(k.start.min(v.start)..extent_end(value).max(k.end));
        }
        // Tables' spans do not cover their bodies, so look inside regardless.
        if let Some(inner) = locate_in_value(value.get_ref(), offset, path) {
            return Some(inner);
        }
        if v.contains(&offset) {
            return Some(k.start.min(v.start)..extent_end(value).max(k.end));
        }
        path.pop();
    }
    None
}

fn is_container(v: &toml::de::DeValue<'_>) -> bool {
    matches!(v, toml::de::DeValue::Table(_) | toml::de::DeValue::Array(_))
}

/// The end of a value's text including every nested key and value.
fn extent_end(v: &toml::Spanned<toml::de::DeValue<'_>>) -> usize {
    let mut end = v.span().end;
    match v.get_ref() {
        toml::de::DeValue::Table(t) => {
            for (k, x) in t.iter() {
                end = end.max(k.span().end).max(extent_end(x));
            }
        }
        toml::de::DeValue::Array(a) => {
            for x in a.iter() {
                end = end.max(extent_end(x));
            }
        }
        _ => {}
    }
    end
}

fn locate_in_value(
    value: &toml::de::DeValue<'_>,
    offset: usize,
    path: &mut Vec<String>,
) -> Option<Range<usize>> {
    match value {
        toml::de::DeValue::Table(t) => locate_in_table(t, offset, path),
        toml::de::DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if let toml::de::DeValue::Table(t) = item.get_ref() {
                    path.push(i.to_string());
                    if let Some(r) = locate_in_table(t, offset, path) {
                        return Some(r);
                    }
                    path.pop();
                }
            }
            None
        }
        _ => None,
    }
}

/// Blanks the lines spanned by `range` (every character but newlines becomes a
/// space) so later positions keep their line numbers. Whole lines are blanked so
/// that table headers lose their brackets too. Returns false if nothing changed.
fn blank(text: &mut String, range: Range<usize>) -> bool {
    let start = text[..range.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let end_from = range.end.max(range.start + 1).min(text.len());
    let end = text[end_from..]
        .find('\n')
        .map_or(text.len(), |i| end_from + i);
    if start >= end {
        return false;
    }
    // One space per byte (newlines kept), so every later byte offset, and
    // with it every reported position, stays exactly as in the original text.
    let replaced: String = text[start..end]
        .chars()
        .map(|c| {
            if c == '\n' {
                "\n".to_string()
            } else {
                " ".repeat(c.len_utf8())
            }
        })
        .collect();
    if replaced == text[start..end] {
        return false;
    }
    text.replace_range(start..end, &replaced);
    true
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// Collects semantic problems; positions come from the spans of raw values.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
    errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    /// Line and column of a raw value.
    fn position<T>(&self, value: &Spanned<T>) -> (usize, usize) {
        line_col(self.text, value.span().start)
    }

    fn at<T>(&mut self, key: &str, value: &Spanned<T>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: Some(line_col(self.text, value.span().start)),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn missing(&mut self, key: &str, hint: &str) {
        // A key removed for a wrong type was already reported.
        if self.errors.iter().any(|e| e.key == key) {
            return;
        }
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position: None,
            key: key.to_string(),
            message: format!("missing required key ({hint})"),
        });
    }

    fn required<'v, T>(
        &mut self,
        key: &str,
        value: &'v Option<Spanned<T>>,
        hint: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_none() {
            self.missing(key, hint);
        }
        value.as_ref()
    }
}

/// The folder relative paths in the config file `file` are resolved from.
pub fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` (relative to the current directory, or absolute) as a config
/// value in a file in `base` names it: relative to `base` when inside it,
/// else absolute (`config/dkim/k.pem` for `config/herald.toml` is
/// `dkim/k.pem`).
pub fn relative_to(base: &Path, path: &Path) -> String {
    let absolute = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    };
    let (b, p) = (absolute(base), absolute(path));
    match p.strip_prefix(&b) {
        Ok(r) => r.display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

/// `p` relative to the config's folder, without `.` steps (`./dkim/k.pem`
/// beside `config/herald.toml` is `config/dkim/k.pem`).
fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let tidy: PathBuf = joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    if tidy.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        tidy
    }
}

/// The secrets `config/herald.toml` ships with: public, so fine for trying
/// Herald in capture mode, refused once mail really goes out.
pub const EXAMPLE_SECRETS: [&str; 4] = [
    "change-me-this-is-the-example-admin-token",
    "example-tracking-secret-change-me-0123456789",
    "example-autologin-secret-change-me-0123456789",
    "example-outlet-autologin-secret-change-me-0123",
];

/// With real delivery (no `[delivery] capture`), the example's public
/// secrets would let anyone forge unsubscribe links, log in as customers
/// or use the admin API: each is an error.
fn refuse_example_secrets(c: &mut Checker<'_>, raw: &RawConfig) {
    let mut keys = vec![
        ("admin.token".to_string(), raw.admin.token.as_ref()),
        (
            "tracking.secret".to_string(),
            raw.tracking.as_ref().and_then(|t| t.secret.as_ref()),
        ),
    ];
    for (i, s) in raw.site.iter().enumerate() {
        keys.push((
            format!("site[{i}].autologin_secret"),
            s.autologin_secret.as_ref(),
        ));
    }
    // A rotated-out example secret still verifies old tokens: refused too.
    let previous = raw
        .tracking
        .as_ref()
        .and_then(|t| t.previous_secrets.as_ref());
    for (i, p) in previous.into_iter().flatten().enumerate() {
        keys.push((format!("tracking.previous_secrets[{i}]"), Some(p)));
    }
    for (key, v) in keys {
        if let Some(v) = v
            && EXAMPLE_SECRETS.contains(&v.get_ref().trim())
        {
            c.at(
                &key,
                v,
                "the example's public value: with real delivery (no `[delivery] capture`) anyone could use it; put a new one here (`openssl rand -hex 32`)",
            );
        }
    }
}

fn validate(
    file: &Path,
    text: &str,
    raw: RawConfig,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let base = base_dir(file);
    let mut c = Checker { file, text, errors };
    // The sections are checked in this order, which is the order their
    // problems are reported in (`[http]` in three steps, as it always was).
    let addresses = self::http::validate_addresses(&mut c, &raw.http);
    let import = import::validate(&mut c, &raw.import);
    let storage = storage::validate(&mut c, &base, &raw.storage);
    let admin = admin::validate(&mut c, &base, &raw.admin);
    let log = self::log::validate(&mut c, &raw.log);
    let (paths, references) = paths::validate(&mut c, &base, &raw.paths);
    let delivery = delivery::validate(&mut c, &base, &raw.delivery);
    let senders = senders::validate(&mut c, &base, &raw.sender);
    for (i, s) in raw.sender.iter().enumerate() {
        for (g, v) in s.warmup.iter().flat_map(|w| &w.groups) {
            if delivery.shaping.group(g).is_none() {
                c.at(
                    &format!("sender[{i}].warmup.groups.{g}"),
                    v,
                    format!("no provider group named `{g}` in the shaping file"),
                );
            }
        }
    }
    let tracking = tracking::validate(&mut c, &base, &raw.tracking);
    let rendering = rendering::validate(&mut c, &raw.rendering, &raw.greetings);
    let sites = sites::validate(&mut c, &base, &raw.site);
    let trusted_proxies = self::http::trusted_proxies(&mut c, &raw.http);
    let signup = signup::validate(&mut c, &raw.signup);
    let automation = automation::validate(&mut c, &raw.automation);
    let inbound = inbound::validate(&mut c, &base, &raw.inbound);
    let site_currency = sites.first().and_then(|s| s.currency.as_deref());
    let sms = sms::validate(&mut c, &base, &raw.sms, &raw.sms_gateway, site_currency);
    if let Some(v) = &raw.inbound.listen
        && inbound.fbl_addresses.is_empty()
        && !senders.iter().any(|s| s.bounce_domain.is_some())
    {
        c.at(
            "inbound.listen",
            v,
            "the listener would take nothing: set a `bounce_domain` on a [[sender]] or list `fbl_addresses`",
        );
    }
    if let Some(v) = raw.inbound.fbl_addresses.first()
        && !senders.iter().any(|s| s.bounce_domain.is_some())
    {
        c.at(
            "inbound.fbl_addresses",
            v,
            "complaints are matched by the VERP return path they quote: set a `bounce_domain` on the [[sender]]s whose mail the loops report",
        );
    }
    if delivery.capture.is_none() {
        refuse_example_secrets(&mut c, &raw);
    }
    let http = self::http::validate(&mut c, &raw.http, addresses, trusted_proxies);
    Some(Config {
        file: file.to_path_buf(),
        http: http?,
        storage: storage?,
        admin: admin?,
        log: log?,
        paths: paths?,
        references,
        delivery,
        senders,
        tracking: tracking?,
        rendering,
        sites,
        signup: signup?,
        import: import?,
        automation: automation?,
        inbound,
        sms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    /// Validates `text` as if read from a file in a directory that does not
    /// exist (nothing here reads or writes the file system except token_file).
    fn load(text: &str) -> Result<Config, Vec<String>> {
        let path = Path::new("/nonexistent-herald-test/herald.toml");
        Config::from_str(path, text).map_err(|e| {
            e.0.iter()
                .map(|e| e.to_string().replace(&path.display().to_string(), "F"))
                .collect()
        })
    }

    fn good() -> String {
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://localhost\"\n[storage]\npath = \"data\"\n[admin]\ntoken = \"{TOKEN}\"\n[tracking]\nsecret = \"{TOKEN}\"\n"
        )
    }

    #[test]
    fn a_good_config_loads() -> Result<(), String> {
        let c = load(&good()).map_err(|e| e.join("\n"))?;
        assert_eq!(c.http.listen.port(), 0);
        assert_eq!(c.admin.token, TOKEN);
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(!format!("{:?}", c.admin).contains(TOKEN));
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_at_once_with_line_and_key() {
        let text = "[http]\nlisten = \"nowhere\"\npublic_url = 5\nlisen = 1\n[storage]\npath = \"data\"\n[admin]\ntoken = \"short\"\n[log]\nformat = \"xml\"\n[bogus]\na = 1\n[tracking]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
        let errs = load(text).unwrap_err();
        let all = errs.join("\n");
        assert!(
            all.contains("F:3:14: `http.public_url`: invalid type"),
            "{all}"
        );
        assert!(
            all.contains("F:4:1: `http.lisen`: unknown field `lisen`"),
            "{all}"
        );
        assert!(
            all.contains("F:11:2: `bogus`: unknown field `bogus`") || all.contains("`bogus`"),
            "{all}"
        );
        assert!(
            all.contains("F:2:10: `http.listen`: `nowhere` is not an address"),
            "{all}"
        );
        assert!(
            all.contains("F:8:9: `admin.token`: the admin token must be at least"),
            "{all}"
        );
        assert!(
            all.contains("F:10:10: `log.format`: `xml` is not one of"),
            "{all}"
        );
        assert!(!all.contains("missing required key"), "{all}");
        assert_eq!(errs.len(), 6, "{all}");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let errs = load("[http\nlisten = 1\n").unwrap_err();
        assert!(errs[0].starts_with("F:1:"), "{errs:?}");
        assert!(errs[0].contains("TOML syntax error"), "{errs:?}");
    }

    #[test]
    fn missing_everything_is_reported_per_key() {
        let errs = load("").unwrap_err();
        let all = errs.join("\n");
        for k in [
            "http.listen",
            "http.public_url",
            "storage.path",
            "admin.token",
        ] {
            assert!(
                all.contains(&format!("`{k}`: missing required key")),
                "{all}"
            );
        }
    }

    #[test]
    fn token_and_token_file_conflict_and_missing_file() {
        let text = good().replace("[admin]\n", "[admin]\ntoken_file = \"nope.txt\"\n");
        let all = load(&text).unwrap_err().join("\n");
        assert!(all.contains("not both"), "{all}");
        let text = good().replace(&format!("token = \"{TOKEN}\""), "token_file = \"nope.txt\"");
        let all = load(&text).unwrap_err().join("\n");
        assert!(all.contains("`admin.token_file`: cannot read"), "{all}");
    }

    #[test]
    fn positions_stay_right_after_a_blanked_line_with_non_ascii_text() {
        let errs = load("[http]\nx = \"żżżżżżżżżżż\"\n# ą\nlisten = \"nowhere\"\n").unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("F:2:1: `http.x`: unknown field"), "{all}");
        assert!(
            all.contains("F:4:10: `http.listen`: `nowhere` is not an address"),
            "{all}"
        );
    }

    #[test]
    fn automation_defaults_values_and_site_time_zones() -> Result<(), String> {
        let c = load(&good()).map_err(|e| e.join("\n"))?;
        assert_eq!(c.automation, AutomationConfig::default());
        assert!(c.automation.enabled);
        assert_eq!(c.automation.frequency_window_ms, 7 * 86_400_000);
        assert_eq!(c.time_zone_of(None), chrono_tz::Tz::UTC);
        let text = format!(
            "{}[[site]]\nid = \"a\"\nname = \"A\"\nurl = \"https://a.example\"\n[[site]]\nid = \"b\"\nname = \"B\"\nurl = \"https://b.example\"\ntime_zone = \"Europe/Warsaw\"\n[automation]\nenabled = false\nmax_marketing_per_contact = 3\nfrequency_window = \"2 days\"\nquiet_hours = \"21:00-08:00\"\nmax_late = \"6h\"\npoll = \"250ms\"\nsegment_check = \"5s\"\n",
            good()
        );
        let c = load(&text).map_err(|e| e.join("\n"))?;
        assert_eq!(
            c.automation,
            AutomationConfig {
                enabled: false,
                max_marketing_per_contact: Some(3),
                frequency_window_ms: 2 * 86_400_000,
                quiet_hours: Some((21 * 60, 8 * 60)),
                max_late_ms: 6 * 3_600_000,
                tick_ms: 250,
                segment_check_ms: 5_000,
            }
        );
        assert_eq!(c.sites[0].time_zone, chrono_tz::Tz::UTC);
        assert_eq!(c.time_zone_of(Some("b")), chrono_tz::Tz::Europe__Warsaw);
        assert_eq!(c.time_zone_of(Some("a")), chrono_tz::Tz::UTC);
        assert_eq!(c.time_zone_of(Some("zz")), chrono_tz::Tz::UTC);
        let text = text.replacen(
            "id = \"a\"",
            "id = \"a\"\ntime_zone = \"America/New_York\"",
            1,
        );
        let c = load(&text).map_err(|e| e.join("\n"))?;
        assert_eq!(c.time_zone_of(None), chrono_tz::Tz::America__New_York);
        assert_eq!(c.time_zone_of(Some("zz")), chrono_tz::Tz::America__New_York);
        Ok(())
    }

    #[test]
    fn bad_automation_values_and_time_zones_are_reported_where_written() {
        let g = good();
        let n = g.lines().count();
        let text = format!(
            "{g}[[site]]\nid = \"a\"\nname = \"A\"\nurl = \"https://a.example\"\ntime_zone = \"Europe/Warsw\"\n[automation]\nmax_marketing_per_contact = 0\nfrequency_window = \"30m\"\nquiet_hours = \"21:00-21:00\"\nmax_late = \"91 days\"\npoll = \"10ms\"\nfoo = 1\n"
        );
        let all = load(&text).unwrap_err().join("\n");
        let at = |line: usize, rest: &str| format!("F:{}:{rest}", n + line);
        for want in [
            at(
                5,
                "13: `site[0].time_zone`: `Europe/Warsw` is not an IANA time zone",
            ),
            at(
                7,
                "29: `automation.max_marketing_per_contact`: must be between 1 and 1000",
            ),
            at(
                8,
                "20: `automation.frequency_window`: must be between 1 hour and 90 days",
            ),
            at(
                9,
                "15: `automation.quiet_hours`: start and end are the same time",
            ),
            at(10, "12: `automation.max_late`: must be at most 90 days"),
            at(
                11,
                "8: `automation.poll`: must be between 100ms and 1 minute",
            ),
            at(12, "1: `automation.foo`: unknown field `foo`"),
        ] {
            assert!(all.contains(&want), "{want}\n{all}");
        }
        let text = format!("{g}[automation]\nquiet_hours = \"9pm-8am\"\n");
        let all = load(&text).unwrap_err().join("\n");
        assert!(
            all.contains(&format!(
                "F:{}:15: `automation.quiet_hours`: `9pm` is not a time of day",
                n + 2
            )),
            "{all}"
        );
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
