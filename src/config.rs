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
//! The validated config is an immutable snapshot: the daemon holds it behind an
//! `Arc` and SIGHUP builds a new one, swapping it in only if it validates.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub mod delivery;
pub mod public;
pub mod render;

pub use delivery::{DeliveryConfig, Relay, RelayTls, Sender};
pub use render::{RenderingConfig, Site, TrackingConfig};

/// Default location of the config file, as the external contract says.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/herald/herald.toml";

/// The shortest admin token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 24;

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
    pub http: RawHttp,
    /// Where the redb store lives.
    #[serde(default)]
    pub storage: RawStorage,
    /// Access to the admin API.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Folders holding templates, segments and automations.
    #[serde(default)]
    pub paths: RawPaths,
    /// Delivery: DNS, connection limits, timeouts, retries.
    #[serde(default)]
    pub delivery: delivery::RawDelivery,
    /// Sender identities: From, envelope sender, DKIM keys, route.
    #[serde(default)]
    pub sender: Vec<delivery::RawSender>,
    /// `[tracking]`
    pub tracking: Option<render::RawTracking>,
    /// `[rendering]`
    #[serde(default)]
    pub rendering: render::RawRendering,
    /// `[greetings.<lang>]`
    #[serde(default)]
    pub greetings: BTreeMap<String, render::RawGreeting>,
    /// `[[site]]`
    #[serde(default)]
    pub site: Vec<render::RawSite>,
    /// `[signup]`: the public signup form.
    pub signup: Option<public::RawSignup>,
    /// `[import]`: CSV imports.
    #[serde(default)]
    pub import: RawImport,
}

/// `[http]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address and port to bind, e.g. `127.0.0.1:8025`; port 0 picks a free one.
    pub listen: Option<Spanned<String>>,
    /// The public base URL recipients reach Herald at (used in links in mail).
    pub public_url: Option<Spanned<String>>,
    /// Largest JSON request body accepted, in bytes (CSV imports stream and are
    /// not limited by this).
    pub max_body_bytes: Option<Spanned<i64>>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// A second address serving the admin API and `/metrics` alone; when
    /// set, the `listen` address answers 404 to them.
    pub admin_listen: Option<Spanned<String>>,
    /// Connections open at once on `listen` (kept below the file-descriptor
    /// limit).
    pub max_connections: Option<Spanned<i64>>,
    /// Connections open at once from one client address (an IPv6 /64);
    /// `trusted_proxies` are exempt.
    pub max_connections_per_ip: Option<Spanned<i64>>,
    /// Connections open at once on `admin_listen`.
    pub admin_max_connections: Option<Spanned<i64>>,
    /// How long a client may take to send a request's headers, and how long
    /// an idle keep-alive connection stays open.
    pub idle_timeout: Option<Spanned<String>>,
    /// Time a request body may take to arrive (its first 64 KiB).
    pub body_timeout: Option<Spanned<String>>,
    /// Bytes per second past the first 64 KiB that earn a body more time.
    pub body_min_rate: Option<Spanned<i64>>,
    /// A bearer token that opens `/metrics` (besides the admin token).
    pub metrics_token: Option<Spanned<String>>,
}

/// `[storage]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// Directory holding `herald.redb`; relative paths are relative to the
    /// config file's directory.
    pub path: Option<Spanned<String>>,
    /// Memory for redb's page cache, in MiB (default 32). More speeds up
    /// large imports and segment scans; the OS page cache helps either way.
    pub cache_mb: Option<Spanned<i64>>,
}

/// `[admin]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// The bearer token the admin API requires.
    pub token: Option<Spanned<String>>,
    /// A file whose (trimmed) content is the token; keeps the secret out of the
    /// config file. Exactly one of `token` and `token_file` must be set.
    pub token_file: Option<Spanned<String>>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter such as `info` or `herald=debug,info`; `RUST_LOG`
    /// overrides it.
    pub level: Option<Spanned<String>>,
    /// `text` (default) or `json`.
    pub format: Option<Spanned<String>>,
}

/// `[paths]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPaths {
    /// Template folders (default `templates`, next to the config file).
    pub templates: Option<Spanned<String>>,
    /// Saved segment definitions, one TOML file each (default `segments`).
    pub segments: Option<Spanned<String>>,
    /// Automation definitions, one TOML file each (default `automations`).
    pub automations: Option<Spanned<String>>,
}

/// `[import]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImport {
    /// Longest CSV record (a row, with any line breaks quoted inside it), in
    /// bytes (default 1 MiB). A longer one, usually a quote left open, stops
    /// the import with its line number before it is held in memory.
    pub max_record_bytes: Option<Spanned<i64>>,
}

// ---------------------------------------------------------------------------
// Stage two: validated values.
// ---------------------------------------------------------------------------

/// The validated configuration snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this snapshot was loaded from.
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
    pub senders: Vec<std::sync::Arc<Sender>>,
    /// `[tracking]`: token keys.
    pub tracking: TrackingConfig,
    /// `[rendering]` and greetings.
    pub rendering: RenderingConfig,
    /// `[[site]]` entries.
    pub sites: Vec<Site>,
    /// `[signup]`, when the public signup form is on.
    pub signup: Option<public::SignupConfig>,
    /// `[import]`: CSV import limits.
    pub import: ImportConfig,
    /// Template folders as loaded, with each one's problems.
    pub templates: std::sync::Arc<crate::render::Templates>,
    /// Segment files as loaded, with each one's problems.
    pub segments: std::sync::Arc<crate::segment::SegmentFiles>,
}

/// The running configuration: an immutable snapshot that SIGHUP replaces
/// whole. Readers take an `Arc` and keep a consistent view for as long as
/// they need it.
#[derive(Debug)]
pub struct Current(std::sync::RwLock<std::sync::Arc<Config>>);

impl Current {
    /// Holds `c`.
    pub fn new(c: Config) -> Current {
        Current(std::sync::RwLock::new(std::sync::Arc::new(c)))
    }

    /// The current snapshot.
    pub fn get(&self) -> std::sync::Arc<Config> {
        // A poisoned lock only means a panic while swapping; the Arc inside is
        // still a complete snapshot.
        match self.0.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the snapshot.
    pub fn set(&self, c: Config) {
        match self.0.write() {
            Ok(mut g) => *g = std::sync::Arc::new(c),
            Err(p) => *p.into_inner() = std::sync::Arc::new(c),
        }
    }
}

impl Config {
    /// The `[[site]]` with this id.
    pub fn site(&self, id: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.id == id)
    }

    /// The sender identity called `id`.
    pub fn sender(&self, id: &str) -> Option<&std::sync::Arc<Sender>> {
        self.senders.iter().find(|s| s.id == id)
    }
}

/// Validated `[http]`.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Public base URL, without a trailing slash.
    pub public_url: url::Url,
    /// Largest JSON body accepted.
    pub max_body_bytes: usize,
    /// Reverse proxies trusted to name the client in `X-Forwarded-For`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The admin listener (admin API and `/metrics` only there), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Connection and request-body limits.
    pub limits: public::HttpLimits,
    /// The token that opens `/metrics`, if it is restricted.
    pub metrics_token: Option<public::MetricsToken>,
}

impl HttpConfig {
    /// The public URL without a trailing slash: links in mail and pages
    /// are this plus a path.
    pub fn public_base(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }
}

/// Validated `[import]`.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Longest CSV record read, in bytes.
    pub max_record_bytes: u64,
}

/// Validated `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Directory of the store.
    pub dir: PathBuf,
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
}

impl StorageConfig {
    /// The redb file inside the storage directory.
    pub fn db_file(&self) -> PathBuf {
        self.dir.join("herald.redb")
    }
}

/// Validated `[admin]`.
#[derive(Clone)]
pub struct AdminConfig {
    /// The bearer token; never printed (see the `Debug` impl).
    pub token: String,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Validated `[paths]`.
#[derive(Debug, Clone)]
pub struct PathsConfig {
    /// Template folders.
    pub templates: PathBuf,
    /// Segment files.
    pub segments: PathBuf,
    /// Automation files.
    pub automations: PathBuf,
}

/// Names of lists and fields referenced from segment and automation files,
/// each with the files that reference it.
#[derive(Debug, Clone, Default)]
pub struct References {
    /// List name → files naming it (keys `list`, `lists`, `exclude_list`,
    /// `exclude_lists`, `in_list`, `not_in_list`).
    pub lists: BTreeMap<String, Vec<PathBuf>>,
    /// Field name → files naming it (key `field`).
    pub fields: BTreeMap<String, Vec<PathBuf>>,
}

const LIST_KEYS: &[&str] = &[
    "list",
    "lists",
    "exclude_list",
    "exclude_lists",
    "in_list",
    "not_in_list",
];

impl Config {
    /// Loads, parses and validates the config at `path`, including the segment
    /// and automation files it points to. Returns every problem found.
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

fn base_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
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

    let listen = c
        .required(
            "http.listen",
            &raw.http.listen,
            "e.g. listen = \"127.0.0.1:8025\"",
        )
        .and_then(|v| match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                c.at(
                    "http.listen",
                    v,
                    format!(
                        "`{}` is not an address:port such as 127.0.0.1:8025",
                        v.get_ref()
                    ),
                );
                None
            }
        });
    let public_url = c
        .required(
            "http.public_url",
            &raw.http.public_url,
            "e.g. public_url = \"https://mail.example.com\"",
        )
        .and_then(|v| match url::Url::parse(v.get_ref()) {
            Ok(u)
                if (u.scheme() == "http" || u.scheme() == "https")
                    && u.host().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none() =>
            {
                Some(u)
            }
            Ok(_) => {
                c.at(
                    "http.public_url",
                    v,
                    "must be an http:// or https:// URL with a host and no query or fragment",
                );
                None
            }
            Err(e) => {
                c.at(
                    "http.public_url",
                    v,
                    format!("`{}` is not a URL: {e}", v.get_ref()),
                );
                None
            }
        });
    let max_body_bytes = match &raw.http.max_body_bytes {
        None => Some(1 << 20),
        Some(v) if (1024..=1 << 30).contains(v.get_ref()) => Some(*v.get_ref() as usize),
        Some(v) => {
            c.at(
                "http.max_body_bytes",
                v,
                "must be between 1024 and 1073741824 bytes",
            );
            None
        }
    };

    let max_record_bytes = match &raw.import.max_record_bytes {
        None => Some(crate::contacts::import::DEFAULT_MAX_RECORD_BYTES),
        Some(v) if (1024..=1 << 30).contains(v.get_ref()) => Some(*v.get_ref() as u64),
        Some(v) => {
            c.at(
                "import.max_record_bytes",
                v,
                "must be between 1024 and 1073741824 bytes",
            );
            None
        }
    };

    let storage = c
        .required(
            "storage.path",
            &raw.storage.path,
            "the directory for herald.redb, e.g. path = \"/var/lib/herald\"",
        )
        .and_then(|v| {
            if v.get_ref().trim().is_empty() {
                c.at("storage.path", v, "must not be empty");
                return None;
            }
            let dir = resolve(&base, v.get_ref());
            if dir.exists() && !dir.is_dir() {
                c.at(
                    "storage.path",
                    v,
                    format!("{} exists and is not a directory", dir.display()),
                );
                return None;
            }
            Some(dir)
        });
    let cache_bytes = match &raw.storage.cache_mb {
        None => Some(crate::store::DEFAULT_CACHE_BYTES),
        Some(v) if (8..=65536).contains(v.get_ref()) => Some((*v.get_ref() as usize) << 20),
        Some(v) => {
            c.at("storage.cache_mb", v, "must be between 8 and 65536 (MiB)");
            None
        }
    };

    let token = match secret(
        &mut c,
        &base,
        ("admin.token", &raw.admin.token),
        ("admin.token_file", &raw.admin.token_file),
    ) {
        None => None,
        Some(None) => {
            c.missing(
                "admin.token",
                "or admin.token_file: the admin API's bearer token",
            );
            None
        }
        Some(Some(t)) => {
            let at = raw.admin.token.as_ref().or(raw.admin.token_file.as_ref());
            at.and_then(|at| {
                if raw.admin.token.is_some() {
                    check_token(&mut c, "admin.token", at, t.0.clone())
                } else {
                    check_token(&mut c, "admin.token_file", at, t.0.trim().to_string())
                }
            })
        }
    };

    let level = raw
        .log
        .level
        .as_ref()
        .map_or(
            Some("info".to_string()),
            |v| match tracing_subscriber::EnvFilter::try_new(v.get_ref()) {
                Ok(_) => Some(v.get_ref().clone()),
                Err(e) => {
                    c.at("log.level", v, format!("not a log filter: {e}"));
                    None
                }
            },
        );
    let format = match raw.log.format.as_ref() {
        None => Some(LogFormat::Text),
        Some(v) => match v.get_ref().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                c.at(
                    "log.format",
                    v,
                    format!("`{other}` is not one of: text, json"),
                );
                None
            }
        },
    };

    let mut dir_of = |key: &str, v: &Option<Spanned<String>>, default: &str| -> Option<PathBuf> {
        match v {
            None => Some(base.join(default)),
            Some(s) => {
                let p = resolve(&base, s.get_ref());
                if p.is_dir() {
                    Some(p)
                } else {
                    c.at(key, s, format!("{} is not a directory", p.display()));
                    None
                }
            }
        }
    };
    let templates = dir_of("paths.templates", &raw.paths.templates, "templates");
    let segments = dir_of("paths.segments", &raw.paths.segments, "segments");
    let automations = dir_of("paths.automations", &raw.paths.automations, "automations");

    let mut references = References::default();
    for dir in [&segments, &automations].into_iter().flatten() {
        collect_references(dir, &mut references, c.errors);
    }
    let delivery = delivery::validate_delivery(&mut c, &raw.delivery);
    let senders = delivery::validate_senders(&mut c, &base, &raw.sender);
    let tracking = render::validate_tracking(&mut c, &base, &raw.tracking);
    let rendering = render::validate_rendering(&mut c, &raw.rendering, &raw.greetings);
    let sites = render::validate_sites(&mut c, &base, &raw.site);
    let site_ids: Vec<String> = sites.iter().map(|s| s.id.clone()).collect();
    let templates = templates.as_ref().map(|dir| {
        std::sync::Arc::new(crate::render::Templates::load(
            dir,
            &senders,
            &sites,
            &rendering.greetings,
        ))
    });

    let trusted_proxies =
        public::networks(&mut c, "http.trusted_proxies", &raw.http.trusted_proxies);
    let signup = public::validate_signup(&mut c, &raw.signup, templates.as_deref());
    let guards = public::validate_http(&mut c, &raw.http, listen);
    let mut config = Config {
        file: file.to_path_buf(),
        http: HttpConfig {
            listen: listen?,
            public_url: public_url?,
            max_body_bytes: max_body_bytes?,
            trusted_proxies: trusted_proxies?,
            admin_listen: guards.as_ref()?.admin_listen,
            limits: guards.as_ref()?.limits,
            metrics_token: guards?.metrics_token,
        },
        storage: StorageConfig {
            dir: storage?,
            cache_bytes: cache_bytes?,
        },
        admin: AdminConfig { token: token? },
        log: LogConfig {
            level: level?,
            format: format?,
        },
        paths: PathsConfig {
            templates: templates.as_ref().map(|t| t.dir.clone())?,
            segments: segments.clone()?,
            automations: automations?,
        },
        references,
        delivery,
        senders,
        tracking: tracking?,
        rendering,
        sites,
        signup: signup?,
        import: ImportConfig {
            max_record_bytes: max_record_bytes?,
        },
        templates: templates?,
        segments: std::sync::Arc::new(crate::segment::SegmentFiles::load(&segments?, &site_ids)),
    };
    // Render every template with its sample data once: errors that only
    // rendering reveals (an unknown filter, a type error) fail the template
    // now, not on the first recipient.
    let tried = crate::render::Templates::trial_render(&config);
    if let Some(t) = tried {
        config.templates = std::sync::Arc::new(t);
    }
    Some(config)
}

/// Reads a secret given either inline (`key`) or in a file (`key_file`, first
/// line ending trimmed). `None`: a problem was reported; `Some(None)`: neither
/// was set.
fn secret(
    c: &mut Checker<'_>,
    base: &Path,
    inline: (&str, &Option<Spanned<String>>),
    file: (&str, &Option<Spanned<String>>),
) -> Option<Option<delivery::Secret>> {
    match (inline.1, file.1) {
        (Some(_), Some(f)) => {
            c.at(
                file.0,
                f,
                format!("set either {} or {}, not both", inline.0, file.0),
            );
            None
        }
        (Some(v), None) => Some(Some(delivery::Secret(v.get_ref().clone()))),
        (None, Some(f)) => {
            let p = resolve(base, f.get_ref());
            match std::fs::read_to_string(&p) {
                Ok(s) => Some(Some(delivery::Secret(
                    s.trim_end_matches(['\r', '\n']).to_string(),
                ))),
                Err(e) => {
                    c.at(file.0, f, format!("cannot read {}: {e}", p.display()));
                    None
                }
            }
        }
        (None, None) => Some(None),
    }
}

fn check_token(
    c: &mut Checker<'_>,
    key: &str,
    at: &Spanned<String>,
    token: String,
) -> Option<String> {
    if token.chars().count() < MIN_TOKEN_LEN {
        c.at(
            key,
            at,
            format!("the admin token must be at least {MIN_TOKEN_LEN} characters long"),
        );
        return None;
    }
    if token
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        c.at(
            key,
            at,
            "the admin token must not contain spaces or control characters",
        );
        return None;
    }
    Some(token)
}

/// The `*.toml` files of `dir`, sorted (none if it cannot be read).
pub fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// Reads every `*.toml` file in `dir` and records the lists and fields it
/// names. Only TOML syntax is checked here; the segment and automation modules
/// own the meaning of these files.
fn collect_references(dir: &Path, refs: &mut References, errors: &mut Vec<ConfigError>) {
    for f in toml_files(dir) {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: f.clone(),
                    position: None,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match text.parse::<toml::Table>() {
            Ok(t) => walk_refs(&toml::Value::Table(t), &f, refs),
            Err(e) => errors.push(ConfigError {
                file: f.clone(),
                position: e.span().map(|s| line_col(&text, s.start)),
                key: String::new(),
                message: format!("TOML syntax error: {}", e.message().trim()),
            }),
        }
    }
}

fn walk_refs(v: &toml::Value, file: &Path, refs: &mut References) {
    let add = |map: &mut BTreeMap<String, Vec<PathBuf>>, name: &str| {
        let files = map.entry(name.to_string()).or_default();
        if !files.iter().any(|f| f == file) {
            files.push(file.to_path_buf());
        }
    };
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let names: Vec<&str> = match v {
                    toml::Value::String(s) => vec![s.as_str()],
                    toml::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
                    _ => vec![],
                };
                if LIST_KEYS.contains(&k.as_str()) {
                    names.iter().for_each(|n| add(&mut refs.lists, n));
                } else if k == "field" {
                    names.iter().for_each(|n| add(&mut refs.fields, n));
                }
                walk_refs(v, file, refs);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|x| walk_refs(x, file, refs)),
        _ => {}
    }
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
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
