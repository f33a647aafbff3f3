//! `[rendering]` and `[greetings.<lang>]`: the rendering pool, batch size,
//! the fields a greeting's name comes from and the greetings per language.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;
use super::values::is_language;

/// `[rendering]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRendering {
    /// Threads of the rendering pool (default: every core).
    pub threads: Option<Spanned<i64>>,
    /// Recipients rendered together (default 500).
    pub batch_size: Option<Spanned<i64>>,
    /// Contact fields tried in order for the greeting's name.
    pub name_fields: Option<Vec<Spanned<String>>>,
}

/// `[greetings.<lang>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGreeting {
    /// With a name: `{name}` is replaced by it.
    pub personal: Option<Spanned<String>>,
    /// Without a name, or when personalisation is off.
    pub neutral: Option<Spanned<String>>,
}

/// A greeting pair for one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// With `{name}`.
    pub personal: String,
    /// Without.
    pub neutral: String,
}

/// Validated `[rendering]` and `[greetings]`.
#[derive(Debug, Clone)]
pub struct RenderingConfig {
    /// Rendering pool threads.
    pub threads: usize,
    /// Batch size.
    pub batch_size: usize,
    /// Fields tried for the greeting's name.
    pub name_fields: Vec<String>,
    /// Greetings by language (built-in ones plus config).
    pub greetings: BTreeMap<String, Greeting>,
}

/// Built-in greetings; `[greetings.<lang>]` overrides or adds.
const BUILTIN_GREETINGS: &[(&str, &str, &str)] = &[
    ("en", "Hello {name},", "Hello,"),
    ("pl", "Dzień dobry, {name},", "Dzień dobry,"),
    ("de", "Hallo {name},", "Guten Tag,"),
    ("fr", "Bonjour {name},", "Bonjour,"),
    ("es", "Hola, {name}:", "Hola:"),
    ("it", "Ciao {name},", "Buongiorno,"),
    ("cs", "Dobrý den, {name},", "Dobrý den,"),
    ("uk", "Вітаємо, {name}!", "Вітаємо!"),
];

/// Validates `[rendering]` and `[greetings.<lang>]` (built-in greetings
/// overridden or added to).
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: &RawRendering,
    greetings: &BTreeMap<String, RawGreeting>,
) -> RenderingConfig {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match &raw.threads {
        None => cores,
        Some(v) if *v.get_ref() == 0 => cores,
        Some(v) if (1..=1024).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => {
            c.at(
                "rendering.threads",
                v,
                "must be between 0 (every core) and 1024",
            );
            cores
        }
    };
    let batch_size = match &raw.batch_size {
        None => 500,
        Some(v) if (1..=100_000).contains(v.get_ref()) => *v.get_ref() as usize,
        Some(v) => {
            c.at("rendering.batch_size", v, "must be between 1 and 100000");
            500
        }
    };
    let mut name_fields = Vec::new();
    match &raw.name_fields {
        None => name_fields = vec!["greeting_name".into(), "first_name".into()],
        Some(v) => {
            for (i, f) in v.iter().enumerate() {
                match crate::names::check_field_name(f.get_ref()) {
                    Ok(()) => name_fields.push(f.get_ref().clone()),
                    Err(e) => c.at(&format!("rendering.name_fields[{i}]"), f, e.to_string()),
                }
            }
        }
    }
    let mut out: BTreeMap<String, Greeting> = BUILTIN_GREETINGS
        .iter()
        .map(|(l, p, n)| {
            (
                l.to_string(),
                Greeting {
                    personal: p.to_string(),
                    neutral: n.to_string(),
                },
            )
        })
        .collect();
    for (lang, g) in greetings {
        let key = |k: &str| format!("greetings.{lang}.{k}");
        if !is_language(lang) {
            if let Some(at) = g.personal.as_ref().or(g.neutral.as_ref()) {
                c.at(
                    &key("personal"),
                    at,
                    format!("`{lang}` is not a language code such as en or pt-BR"),
                );
            }
            continue;
        }
        let base = out.get(lang).cloned();
        let personal = match (&g.personal, &base) {
            (Some(p), _) if !p.get_ref().contains("{name}") => {
                c.at(&key("personal"), p, "must contain {name}");
                continue;
            }
            (Some(p), _) => p.get_ref().clone(),
            (None, Some(b)) => b.personal.clone(),
            (None, None) => {
                c.missing(&key("personal"), "a greeting with {name} for this language");
                continue;
            }
        };
        let neutral = match (&g.neutral, &base) {
            (Some(n), _) => n.get_ref().clone(),
            (None, Some(b)) => b.neutral.clone(),
            (None, None) => {
                c.missing(
                    &key("neutral"),
                    "a greeting without a name for this language",
                );
                continue;
            }
        };
        out.insert(lang.clone(), Greeting { personal, neutral });
    }
    RenderingConfig {
        threads,
        batch_size,
        name_fields,
        greetings: out,
    }
}
