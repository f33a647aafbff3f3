//! `[paths]`: the folders of templates, segments and automations, and the
//! lists and fields the segment and automation files name ([`References`]).
//!
//! The config only finds these folders and reads the names in them; the
//! templates and segment files themselves are loaded with the config by the
//! app layer's snapshot (`src/snapshot.rs`, which names the config, not the
//! reverse).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Checker, ConfigError, line_col, resolve};

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

/// Validates `[paths]` (relative to `base`) and reads which lists and fields
/// the segment and automation files name.
pub(super) fn validate(
    c: &mut Checker<'_>,
    base: &Path,
    raw: &RawPaths,
) -> (Option<PathsConfig>, References) {
    let mut dir_of = |key: &str, v: &Option<Spanned<String>>, default: &str| -> Option<PathBuf> {
        match v {
            None => Some(base.join(default)),
            Some(s) => {
                let p = resolve(base, s.get_ref());
                if p.is_dir() {
                    Some(p)
                } else {
                    c.at(key, s, format!("{} is not a directory", p.display()));
                    None
                }
            }
        }
    };
    let templates = dir_of("paths.templates", &raw.templates, "templates");
    let segments = dir_of("paths.segments", &raw.segments, "segments");
    let automations = dir_of("paths.automations", &raw.automations, "automations");

    let mut references = References::default();
    for dir in [&segments, &automations].into_iter().flatten() {
        collect_references(dir, &mut references, c.errors);
    }
    let paths = match (templates, segments, automations) {
        (Some(templates), Some(segments), Some(automations)) => Some(PathsConfig {
            templates,
            segments,
            automations,
        }),
        _ => None,
    };
    (paths, references)
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
