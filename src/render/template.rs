//! Loading a template folder:
//!
//! ```text
//! templates/<name>/template.toml       name, sender, subjects, …
//! templates/<name>/body.<lang>.html    or body.<lang>.mjml
//! templates/<name>/body.<lang>.txt     optional; derived from the HTML if absent
//! templates/<name>/body.<lang>.sms.txt the text message (SMS), optional
//! templates/<name>/sample.json         optional sample data for previews
//! templates/<name>/sites/<site>/…      per-site template.toml and bodies
//! ```
//!
//! Everything that can be checked without the store is checked here, once,
//! and reported with file, line and column: TOML keys, the sender and sites,
//! template syntax (on the file as written, so positions are the author's),
//! unknown variables, a subject for every body language, a greeting for every
//! language when `greeting` is used. MJML is compiled, CSS inlined and the text
//! part derived at load, so a send only renders.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::prepare;
use crate::config::{ConfigError, Sender, Site, is_language, line_col};

/// `template.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Option<Spanned<String>>,
    description: Option<Spanned<String>>,
    sender: Option<Spanned<String>>,
    from_name: Option<Spanned<String>>,
    reply_to: Option<Spanned<String>>,
    default_language: Option<Spanned<String>>,
    tracking: Option<Spanned<bool>>,
    kind: Option<Spanned<String>>,
    #[serde(default)]
    subject: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    preheader: BTreeMap<String, Spanned<String>>,
    /// Whether the SMS text may lose its accents to stay in GSM-7 (`ą` →
    /// `a`): cheaper parts, plainer text.
    sms_transliterate: Option<Spanned<bool>>,
}

/// `sites/<site>/template.toml` as written: what a site may override.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSiteMeta {
    from_name: Option<Spanned<String>>,
    reply_to: Option<Spanned<String>>,
    #[serde(default)]
    subject: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    preheader: BTreeMap<String, Spanned<String>>,
}

/// Whether a template is marketing mail (consent, List-Unsubscribe) or
/// transactional (order confirmations, double opt-in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Newsletters and automations: `granted` contacts only, unsubscribe headers.
    Marketing,
    /// Mail the recipient asked for; no List-Unsubscribe.
    Transactional,
}

impl Kind {
    /// `marketing` or `transactional`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Marketing => "marketing",
            Kind::Transactional => "transactional",
        }
    }
}

/// One (site, language) of a template, ready to compile.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Site override this comes from; `None` for the template's own files.
    pub site: Option<String>,
    /// Language.
    pub language: String,
    /// Subject template.
    pub subject: String,
    /// Preheader template (hidden preview text).
    pub preheader: Option<String>,
    /// HTML body template: MJML compiled, CSS inlined.
    pub html: String,
    /// Text body template, given or derived.
    pub text: String,
    /// Whether `text` was derived from the HTML.
    pub text_derived: bool,
    /// From display name override.
    pub from_name: Option<String>,
    /// Reply-To override.
    pub reply_to: Option<String>,
    /// The HTML body's file, for messages.
    pub html_file: PathBuf,
}

/// One (site, language) of a template's text message.
#[derive(Debug, Clone)]
pub struct SmsVariant {
    /// Site override this comes from; `None` for the template's own file.
    pub site: Option<String>,
    /// Language.
    pub language: String,
    /// The text template.
    pub text: String,
}

/// A loaded, checked template.
#[derive(Debug, Clone)]
pub struct Template {
    /// Folder name: the template's name in the API, campaigns and automations.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Free text.
    pub description: Option<String>,
    /// Sender identity id.
    pub sender: String,
    /// From display name (default: the sender's).
    pub from_name: Option<String>,
    /// Reply-To address.
    pub reply_to: Option<String>,
    /// Language used when neither the contact's nor the site's is available.
    pub default_language: String,
    /// Click and open tracking (a send can turn it off too).
    pub tracking: bool,
    /// Marketing or transactional.
    pub kind: Kind,
    /// Variants by (site or "", language).
    pub variants: BTreeMap<(String, String), Arc<Variant>>,
    /// Text-message variants by (site or "", language).
    pub sms: BTreeMap<(String, String), Arc<SmsVariant>>,
    /// Whether SMS text is transliterated to stay in GSM-7.
    pub sms_transliterate: bool,
    /// `sample.json`, for previews without a contact.
    pub sample: Option<serde_json::Value>,
    /// Contact attributes the bodies read (`contact.X`), checked against the
    /// store's fields when the daemon lists or compiles the template.
    pub contact_attrs: BTreeSet<String>,
    /// Whether any part uses `greeting`.
    pub uses_greeting: bool,
    /// Whether any part calls `autologin_url`.
    pub uses_autologin: bool,
}

impl Template {
    /// The variant for a contact: the first of (contact's language, site's
    /// default language, template default) that has a body, the site's own
    /// files before the template's. `None` only for a template without any
    /// body, which `load` never returns.
    pub fn variant(&self, site: Option<&Site>, language: Option<&str>) -> Option<&Arc<Variant>> {
        pick(&self.variants, site, language, &self.default_language)
    }

    /// The text-message variant for a contact, chosen as [`Self::variant`]
    /// chooses; `None` when the template has no SMS body.
    pub fn sms_variant(
        &self,
        site: Option<&Site>,
        language: Option<&str>,
    ) -> Option<&Arc<SmsVariant>> {
        pick(&self.sms, site, language, &self.default_language)
    }

    /// Languages with a body, any site.
    pub fn languages(&self) -> BTreeSet<String> {
        self.variants.keys().map(|(_, l)| l.clone()).collect()
    }
}

/// The first of (contact's language, site's default language, template
/// default) that `map` has, the site's own files before the template's;
/// else any.
fn pick<'a, V>(
    map: &'a BTreeMap<(String, String), V>,
    site: Option<&Site>,
    language: Option<&str>,
    default_language: &str,
) -> Option<&'a V> {
    let site_id = site.map(|s| s.id.as_str()).unwrap_or("");
    let candidates = [
        language,
        site.and_then(|s| s.default_language.as_deref()),
        Some(default_language),
    ];
    for lang in candidates.into_iter().flatten() {
        let lang = lang.to_ascii_lowercase();
        if !site_id.is_empty()
            && let Some(v) = map.get(&(site_id.to_string(), lang.clone()))
        {
            return Some(v);
        }
        if let Some(v) = map.get(&(String::new(), lang)) {
            return Some(v);
        }
    }
    // `load` guarantees a body in the default language, so this is
    // reached only by a template built by hand without one.
    map.values().next()
}

/// Every name a template may read at the top level.
pub const KNOWN_NAMES: &[&str] = &[
    "contact",
    "greeting",
    "products",
    "cart",
    "order",
    "coupon",
    "data",
    "site",
    "send",
    "unsubscribe_url",
    "preferences_url",
    "view_in_browser_url",
    "autologin_url",
    "money",
];

/// Attributes every contact has, besides custom fields.
pub const CONTACT_BUILTINS: &[&str] = &[
    "id",
    "email",
    "language",
    "site",
    "consent",
    "tags",
    "created_at",
    "fields",
];

struct Loader<'a> {
    errors: Vec<ConfigError>,
    senders: &'a [Arc<Sender>],
    sites: &'a [Site],
    greetings: &'a BTreeMap<String, crate::config::Greeting>,
}

impl Loader<'_> {
    fn err(
        &mut self,
        file: &Path,
        text: &str,
        at: Option<usize>,
        key: &str,
        msg: impl Into<String>,
    ) {
        self.errors.push(ConfigError {
            file: file.to_path_buf(),
            position: at.map(|o| line_col(text, o)),
            key: key.to_string(),
            message: msg.into(),
        });
    }
}

/// Parses one template source on its own to report syntax errors and unknown
/// names at the author's line and column. Returns (names used, contact
/// attributes used) or `None` after reporting.
fn check_source(
    l: &mut Loader<'_>,
    file: &Path,
    src: &str,
    attrs: &mut BTreeSet<String>,
    used: &mut BTreeSet<String>,
) -> bool {
    let env = super::compile::base_env();
    let name = file.display().to_string();
    let tmpl = match env.template_from_named_str(&name, src) {
        Ok(t) => t,
        Err(e) => {
            let at = e.range().map(|r| r.start).or_else(|| {
                e.line().map(|n| {
                    src.split_inclusive('\n')
                        .take(n.saturating_sub(1))
                        .map(str::len)
                        .sum::<usize>()
                })
            });
            l.err(
                file,
                src,
                at,
                "",
                format!("template syntax: {}", e.detail().unwrap_or(&e.to_string())),
            );
            return false;
        }
    };
    let mut ok = true;
    for v in tmpl.undeclared_variables(true) {
        let top = v.split('.').next().unwrap_or(&v).to_string();
        if !KNOWN_NAMES.contains(&top.as_str()) && env.globals().all(|(g, _)| g != top) {
            let at = find_name(src, &top);
            l.err(
                file,
                src,
                at,
                "",
                format!(
                    "unknown variable `{top}`; templates can use: {}",
                    KNOWN_NAMES.join(", ")
                ),
            );
            ok = false;
            continue;
        }
        if top == "contact"
            && let Some(attr) = v.split('.').nth(1)
        {
            attrs.insert(attr.to_string());
        }
        used.insert(top);
    }
    ok
}

/// Byte offset of the first `name` used inside a template tag, for positions.
fn find_name(src: &str, name: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = src[from..].find(name) {
        let at = from + i;
        let before = src[..at].chars().next_back();
        let after = src[at + name.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let in_tag = src[..at]
            .rfind(['{'])
            .is_some_and(|o| src[..at].rfind(['}']).is_none_or(|c| c < o));
        if !word(before) && !word(after) && in_tag {
            return Some(at);
        }
        from = at + name.len();
    }
    None
}

/// Checks `sites` of a `sample.json`: per configured site, an object of
/// values that replace the top level's for that site's contacts.
fn check_site_samples(l: &mut Loader<'_>, file: &Path, sample: &serde_json::Value) {
    let Some(sites) = sample.get("sites") else {
        return;
    };
    let Some(sites) = sites.as_object() else {
        l.err(
            file,
            "",
            None,
            "sites",
            "must be an object: site id → values",
        );
        return;
    };
    let keys = super::preview::SITE_SAMPLE_KEYS;
    for (id, v) in sites {
        if !l.sites.iter().any(|s| &s.id == id) {
            l.err(
                file,
                "",
                None,
                &format!("sites.{id}"),
                format!("no [[site]] has id `{id}`"),
            );
        }
        match v.as_object() {
            Some(o) => {
                for k in o.keys().filter(|k| !keys.contains(&k.as_str())) {
                    l.err(
                        file,
                        "",
                        None,
                        &format!("sites.{id}.{k}"),
                        format!("a site's sample can give: {}", keys.join(", ")),
                    );
                }
            }
            None => l.err(
                file,
                "",
                None,
                &format!("sites.{id}"),
                format!("must be an object with any of: {}", keys.join(", ")),
            ),
        }
    }
}

/// Body files of one folder: language → (kind, path).
struct Bodies {
    html: BTreeMap<String, (PathBuf, bool)>,
    text: BTreeMap<String, PathBuf>,
    sms: BTreeMap<String, PathBuf>,
}

fn scan_bodies(l: &mut Loader<'_>, dir: &Path) -> Bodies {
    let mut b = Bodies {
        html: BTreeMap::new(),
        text: BTreeMap::new(),
        sms: BTreeMap::new(),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return b;
    };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for p in files {
        let Some(fname) = p.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(rest) = fname.strip_prefix("body.") else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let (lang, ext) = match parts.as_slice() {
            [lang, ext] => (lang.to_ascii_lowercase(), *ext),
            [lang, "sms", "txt"] => (lang.to_ascii_lowercase(), "sms.txt"),
            _ => {
                l.err(
                    &p,
                    "",
                    None,
                    "",
                    "body files are named body.<lang>.html, body.<lang>.mjml, body.<lang>.txt or body.<lang>.sms.txt",
                );
                continue;
            }
        };
        if !is_language(&lang) {
            l.err(
                &p,
                "",
                None,
                "",
                format!("`{lang}` is not a language code such as en or pt-br"),
            );
            continue;
        }
        match ext {
            "html" | "mjml" => {
                if let Some((other, _)) = b.html.get(&lang) {
                    l.err(
                        &p,
                        "",
                        None,
                        "",
                        format!("{} is already the HTML body for `{lang}`", other.display()),
                    );
                    continue;
                }
                b.html.insert(lang, (p.clone(), ext == "mjml"));
            }
            "txt" => {
                b.text.insert(lang, p.clone());
            }
            "sms.txt" => {
                b.sms.insert(lang, p.clone());
            }
            _ => l.err(&p, "", None, "", "body files end in .html, .mjml or .txt"),
        }
    }
    b
}

/// Whether `dir` has SMS bodies (`body.<lang>.sms.txt`) and no e-mail body.
fn sms_only(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("body."))
        .collect();
    names.iter().any(|n| n.ends_with(".sms.txt"))
        && !names
            .iter()
            .any(|n| n.ends_with(".html") || n.ends_with(".mjml"))
}

fn strings(map: &BTreeMap<String, Spanned<String>>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.get_ref().clone()))
        .collect()
}

/// Loads one template folder. On any problem returns the problems (all of them).
pub fn load(
    dir: &Path,
    senders: &[Arc<Sender>],
    sites: &[Site],
    greetings: &BTreeMap<String, crate::config::Greeting>,
) -> Result<Template, Vec<ConfigError>> {
    let mut l = Loader {
        errors: Vec::new(),
        senders,
        sites,
        greetings,
    };
    let folder = dir
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or("")
        .to_string();
    let meta_file = dir.join("template.toml");
    let text = match std::fs::read_to_string(&meta_file) {
        Ok(t) => t,
        Err(e) => {
            l.err(&meta_file, "", None, "", format!("cannot read: {e}"));
            return Err(l.errors);
        }
    };
    let Some(raw) = crate::config::parse_raw::<RawMeta>(&meta_file, &text, &mut l.errors) else {
        return Err(l.errors);
    };
    let at = |v: &Spanned<String>| Some(v.span().start);
    if !folder
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        || folder.is_empty()
    {
        l.err(
            &meta_file,
            &text,
            None,
            "",
            "the folder name is the template's name: use letters, digits, `-` or `_`",
        );
    }
    if let Some(n) = &raw.name
        && n.get_ref() != &folder
    {
        l.err(
            &meta_file,
            &text,
            at(n),
            "name",
            format!("must match the folder name `{folder}` (or be left out)"),
        );
    }
    let sender = match &raw.sender {
        // Only a template with SMS bodies alone may do without a sender.
        None if sms_only(dir) => None,
        None => {
            l.err(
                &meta_file,
                &text,
                None,
                "sender",
                "missing required key (the [[sender]] id this template sends as)",
            );
            None
        }
        Some(s) if !l.senders.iter().any(|x| &x.id == s.get_ref()) => {
            let known: Vec<&str> = l.senders.iter().map(|x| x.id.as_str()).collect();
            l.err(
                &meta_file,
                &text,
                at(s),
                "sender",
                format!(
                    "no [[sender]] has id `{}` (configured: {})",
                    s.get_ref(),
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                ),
            );
            None
        }
        Some(s) => Some(s.get_ref().clone()),
    };
    let default_language = match &raw.default_language {
        None => {
            l.err(
                &meta_file,
                &text,
                None,
                "default_language",
                "missing required key, e.g. default_language = \"en\"",
            );
            None
        }
        Some(v) if !is_language(v.get_ref()) => {
            l.err(
                &meta_file,
                &text,
                at(v),
                "default_language",
                "not a language code such as en or pt-BR",
            );
            None
        }
        Some(v) => Some(v.get_ref().to_ascii_lowercase()),
    };
    let kind = match raw.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
        None | Some((_, "marketing")) => Kind::Marketing,
        Some((_, "transactional")) => Kind::Transactional,
        Some((k, other)) => {
            l.err(
                &meta_file,
                &text,
                at(k),
                "kind",
                format!("`{other}` is not one of: marketing, transactional"),
            );
            Kind::Marketing
        }
    };
    if let Some(r) = &raw.reply_to
        && let Err(e) = crate::config::parse_mailbox(r.get_ref())
    {
        l.err(&meta_file, &text, at(r), "reply_to", e);
    }
    for (table, map) in [("subject", &raw.subject), ("preheader", &raw.preheader)] {
        for (lang, v) in map {
            if !is_language(lang) {
                l.err(
                    &meta_file,
                    &text,
                    at(v),
                    &format!("{table}.{lang}"),
                    "not a language code such as en or pt-BR",
                );
            }
            if table == "subject" && v.get_ref().contains(['\r', '\n']) {
                l.err(
                    &meta_file,
                    &text,
                    at(v),
                    &format!("{table}.{lang}"),
                    "a subject is one line",
                );
            }
        }
    }

    // The template's own bodies, then each site's.
    let mut folders: Vec<(Option<String>, PathBuf, Option<RawSiteMeta>, String)> =
        vec![(None, dir.to_path_buf(), None, String::new())];
    if let Ok(entries) = std::fs::read_dir(dir.join("sites")) {
        let mut site_dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        site_dirs.sort();
        for sd in site_dirs {
            let id = sd
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
                .to_string();
            if !l.sites.iter().any(|s| s.id == id) {
                l.err(
                    &sd,
                    "",
                    None,
                    "",
                    format!(
                        "no [[site]] has id `{id}`; site folders are named after configured sites"
                    ),
                );
                continue;
            }
            let mf = sd.join("template.toml");
            let (meta, mtext) = match std::fs::read_to_string(&mf) {
                Ok(t) => (
                    crate::config::parse_raw::<RawSiteMeta>(&mf, &t, &mut l.errors),
                    t,
                ),
                Err(_) => (Some(RawSiteMeta::default()), String::new()),
            };
            folders.push((Some(id), sd, meta, mtext));
        }
    }

    let mut variants = BTreeMap::new();
    let mut sms_variants = BTreeMap::new();
    // Languages with a body file of the template's own (checked or not).
    let mut own_languages: BTreeSet<String> = BTreeSet::new();
    let mut own_sms: BTreeSet<String> = BTreeSet::new();
    let mut attrs = BTreeSet::new();
    let mut used = BTreeSet::new();
    let base_subjects = strings(&raw.subject);
    let base_preheaders = strings(&raw.preheader);
    for (site, fdir, site_meta, _) in &folders {
        let bodies = scan_bodies(&mut l, fdir);
        if site.is_none() {
            own_languages.extend(bodies.html.keys().cloned());
            own_sms.extend(bodies.sms.keys().cloned());
        }
        if site.is_none() && bodies.html.is_empty() && bodies.sms.is_empty() {
            l.err(
                dir,
                "",
                None,
                "",
                "no body: add body.<lang>.html or body.<lang>.mjml (e-mail), or body.<lang>.sms.txt (SMS)",
            );
        }
        for (lang, path) in &bodies.sms {
            match std::fs::read_to_string(path) {
                Ok(src) => {
                    if check_source(&mut l, path, &src, &mut attrs, &mut used) {
                        sms_variants.insert(
                            (site.clone().unwrap_or_default(), lang.clone()),
                            Arc::new(SmsVariant {
                                site: site.clone(),
                                language: lang.clone(),
                                text: src,
                            }),
                        );
                    }
                }
                Err(e) => l.err(path, "", None, "", format!("cannot read: {e}")),
            }
        }
        for lang in bodies.text.keys() {
            if !bodies.html.contains_key(lang) {
                l.err(
                    &bodies.text[lang],
                    "",
                    None,
                    "",
                    format!("a text body needs an HTML body for `{lang}` next to it"),
                );
            }
        }
        let (site_subjects, site_preheaders) = match site_meta {
            Some(m) => (strings(&m.subject), strings(&m.preheader)),
            None => Default::default(),
        };
        for (lang, (path, mjml)) in &bodies.html {
            let subject = site_subjects.get(lang).or_else(|| base_subjects.get(lang));
            let Some(subject) = subject.cloned() else {
                l.err(
                    &meta_file,
                    &text,
                    None,
                    &format!("subject.{lang}"),
                    format!("{} has no subject: add subject.{lang}", path.display()),
                );
                continue;
            };
            let preheader = site_preheaders
                .get(lang)
                .or_else(|| base_preheaders.get(lang))
                .cloned();
            let src = match std::fs::read_to_string(path) {
                Ok(s) => s,
                Err(e) => {
                    l.err(path, "", None, "", format!("cannot read: {e}"));
                    continue;
                }
            };
            let mut ok = check_source(&mut l, path, &src, &mut attrs, &mut used);
            for (what, s) in [
                ("subject", Some(&subject)),
                ("preheader", preheader.as_ref()),
            ] {
                if let Some(s) = s {
                    let pseudo = meta_file.with_file_name(format!("template.toml [{what}.{lang}]"));
                    ok &= check_source(&mut l, &pseudo, s, &mut attrs, &mut used);
                }
            }
            let given_text = match bodies.text.get(lang) {
                Some(tp) => match std::fs::read_to_string(tp) {
                    Ok(t) => {
                        ok &= check_source(&mut l, tp, &t, &mut attrs, &mut used);
                        Some(t)
                    }
                    Err(e) => {
                        l.err(tp, "", None, "", format!("cannot read: {e}"));
                        continue;
                    }
                },
                None => None,
            };
            if !ok {
                continue;
            }
            let html = if *mjml {
                prepare::mjml_to_html(&src)
            } else {
                Ok(src.clone())
            }
            .and_then(|h| prepare::inline_css(&h))
            .map(|h| prepare::wrap_long_lines(&h));
            let html = match html {
                Ok(h) => h,
                Err(e) => {
                    l.err(path, "", None, "", e);
                    continue;
                }
            };
            let (text_body, derived) = match given_text {
                Some(t) => (t, false),
                None => match prepare::derive_text(&html) {
                    Ok(t) => (t, true),
                    Err(e) => {
                        l.err(path, "", None, "", e);
                        continue;
                    }
                },
            };
            // The processed parts must still be valid templates.
            let env = super::compile::base_env();
            for (what, s) in [
                ("HTML after MJML/CSS processing", &html),
                ("derived text part", &text_body),
            ] {
                if let Err(e) = env.template_from_str(s) {
                    l.err(path, "", None, "", format!("{what}: {} (add body.{lang}.txt or move template tags out of <head> and attributes)", e.detail().unwrap_or(&e.to_string())));
                    ok = false;
                }
            }
            if !ok {
                continue;
            }
            let sm = site_meta.as_ref();
            variants.insert(
                (site.clone().unwrap_or_default(), lang.clone()),
                Arc::new(Variant {
                    site: site.clone(),
                    language: lang.clone(),
                    subject,
                    preheader,
                    html,
                    text: text_body,
                    text_derived: derived,
                    from_name: sm
                        .and_then(|m| m.from_name.as_ref())
                        .or(raw.from_name.as_ref())
                        .map(|v| v.get_ref().clone()),
                    reply_to: sm
                        .and_then(|m| m.reply_to.as_ref())
                        .or(raw.reply_to.as_ref())
                        .map(|v| v.get_ref().clone()),
                    html_file: path.clone(),
                }),
            );
        }
    }
    let own_languages = if own_languages.is_empty() {
        own_sms
    } else {
        own_languages
    };
    if let Some(dl) = &default_language
        && !own_languages.contains(dl)
    {
        l.err(
            &meta_file,
            &text,
            raw.default_language.as_ref().and_then(at),
            "default_language",
            format!("there is no body.{dl}.html or body.{dl}.mjml"),
        );
    }
    for k in raw.subject.keys() {
        let lang = k.to_ascii_lowercase();
        let in_a_site = folders.iter().any(|(s, d, _, _)| {
            s.is_some()
                && (d.join(format!("body.{lang}.html")).exists()
                    || d.join(format!("body.{lang}.mjml")).exists())
        });
        if !own_languages.contains(&lang) && !in_a_site {
            l.err(
                &meta_file,
                &text,
                at(&raw.subject[k]),
                &format!("subject.{k}"),
                format!("there is no body for `{lang}`"),
            );
        }
    }
    if used.contains("greeting") {
        let langs: BTreeSet<String> = variants.keys().map(|(_, l)| l.clone()).collect();
        for lang in langs {
            let base = lang.split('-').next().unwrap_or(&lang).to_string();
            if !l.greetings.contains_key(&lang) && !l.greetings.contains_key(&base) {
                l.err(&meta_file, &text, None, "", format!("the template uses `greeting` but there is no greeting for `{lang}`: add [greetings.{lang}] to herald.toml"));
            }
        }
    }
    for a in &attrs {
        if crate::contacts::check_field_name(a).is_err() && !CONTACT_BUILTINS.contains(&a.as_str())
        {
            l.err(
                dir,
                "",
                None,
                "",
                format!("`contact.{a}` is neither a contact attribute nor a valid field name"),
            );
        }
    }
    let sample = match std::fs::read_to_string(dir.join("sample.json")) {
        Ok(t) => match serde_json::from_str::<serde_json::Value>(&t) {
            Ok(v) if v.is_object() => {
                check_site_samples(&mut l, &dir.join("sample.json"), &v);
                Some(v)
            }
            Ok(_) => {
                l.err(
                    &dir.join("sample.json"),
                    "",
                    None,
                    "",
                    "must be a JSON object",
                );
                None
            }
            Err(e) => {
                l.err(
                    &dir.join("sample.json"),
                    &t,
                    None,
                    "",
                    format!("not JSON: {e}"),
                );
                None
            }
        },
        Err(_) => None,
    };
    if !l.errors.is_empty() {
        return Err(l.errors);
    }
    Ok(Template {
        name: folder,
        dir: dir.to_path_buf(),
        description: raw.description.map(|d| d.into_inner()),
        sender: sender.unwrap_or_default(),
        from_name: raw.from_name.map(|v| v.into_inner()),
        reply_to: raw.reply_to.map(|v| v.into_inner()),
        default_language: default_language.unwrap_or_default(),
        tracking: raw.tracking.is_none_or(|t| *t.get_ref()),
        kind,
        variants,
        sms: sms_variants,
        sms_transliterate: raw.sms_transliterate.is_some_and(|t| *t.get_ref()),
        sample,
        contact_attrs: attrs,
        uses_greeting: used.contains("greeting"),
        uses_autologin: used.contains("autologin_url"),
    })
}

/// `base` as a send uses it: with another sender and subject, when given
/// (a campaign's look, an automation step's message).
pub fn overridden(base: &Template, sender: Option<&str>, subject: Option<&str>) -> Template {
    let mut t = base.clone();
    if let Some(s) = sender {
        t.sender = s.to_string();
    }
    if let Some(subject) = subject {
        for v in t.variants.values_mut() {
            let mut nv = (**v).clone();
            nv.subject = subject.to_string();
            *v = Arc::new(nv);
        }
    }
    t
}
