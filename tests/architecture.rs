//! Architecture invariants a grep can keep, as rust-analyzer keeps its
//! boundaries: which modules a module may name. They read the source; no
//! daemon is started.
//!
//! - The config is a leaf: `src/config/` names no module of the crate but
//!   `config` itself and the leaves `names`, `tokens` and `delivery::dkim`
//!   (so it cannot import rendering, segments, contacts, shop, tracking,
//!   campaigns, delivery or the store, which all depend on it). The
//!   templates and segment files are loaded with the config by
//!   `src/snapshot.rs` instead.
//! - Those leaves name nothing else of the crate (`tokens` names the send
//!   identity, `send::model`, itself a leaf).
//! - Data flows one way: delivery, tracking, the store and the send layer
//!   never name the kinds of send above them (`campaign`, and later
//!   `automation`). They know a message by its `SendRef`, so every kind of
//!   send reuses them unchanged.

use std::path::{Path, PathBuf};

/// Modules `src/config/` may name (a path may go deeper: `tokens::Keys`).
const CONFIG_MAY_NAME: &[&str] = &["config", "names", "tokens", "delivery::dkim"];

/// The leaves the config names, each a file that may name only itself and
/// the leaves listed with it.
const LEAVES: &[(&str, &str, &[&str])] = &[
    ("src/names.rs", "names", &[]),
    ("src/tokens.rs", "tokens", &["send::model"]),
    ("src/send/model.rs", "send::model", &[]),
    ("src/delivery/dkim.rs", "delivery::dkim", &[]),
];

/// The layers below the kinds of send, and the kinds they must not name.
const BELOW_SENDS: &[&str] = &["src/delivery", "src/track", "src/store", "src/send"];
const KINDS_OF_SEND: &[&str] = &["campaign", "automation"];

#[test]
fn delivery_tracking_the_store_and_the_send_layer_never_name_a_kind_of_send() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for dir in BELOW_SENDS {
        let files = rust_files(&root.join(dir));
        assert!(!files.is_empty(), "{dir} not found");
        for f in &files {
            let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for (line, path) in crate_paths(&text) {
                if KINDS_OF_SEND.iter().any(|k| starts_with_module(&path, k)) {
                    found.push(format!("{rel}:{line}: crate::{path}"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "these layers know a message only by its SendRef (ARCHITECTURE.md, Invariants):\n{}",
        found.join("\n")
    );
}

#[test]
fn config_names_only_itself_and_leaves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = rust_files(&root.join("src/config"));
    assert!(
        files.iter().any(|f| f.ends_with("mod.rs")),
        "src/config/mod.rs not found: {files:?}"
    );
    let mut found = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root).unwrap_or(f).display().to_string();
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (line, path) in crate_paths(&text) {
            if !CONFIG_MAY_NAME.iter().any(|m| starts_with_module(&path, m)) {
                found.push(format!("{rel}:{line}: crate::{path}"));
            }
        }
        // A section file climbing out of `config` with `super::super`, or
        // mod.rs with `super::` (other than its tests' `super::*`), would
        // name the crate's root modules without saying `crate::`.
        let climbs = if f.ends_with("mod.rs") {
            "super::"
        } else {
            "super::super"
        };
        for (i, l) in code_lines(&text) {
            if l.contains(climbs) && !l.contains("use super::*;") {
                found.push(format!("{rel}:{i}: {}", l.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the config must stay a leaf (it may name only {CONFIG_MAY_NAME:?}); \
         load what needs other modules in src/snapshot.rs instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_leaves_the_config_names_name_nothing_else() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = Vec::new();
    for (file, module, also) in LEAVES {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        assert!(!text.is_empty(), "{file} not found");
        for (line, path) in crate_paths(&text) {
            if !starts_with_module(&path, module)
                && !also.iter().any(|m| starts_with_module(&path, m))
            {
                found.push(format!("{file}:{line}: crate::{path}"));
            }
        }
        for (i, l) in code_lines(&text) {
            if l.contains("super::") && !l.contains("use super::*;") {
                found.push(format!("{file}:{i}: {}", l.trim()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn crate_paths_are_found_in_groups_and_outside_comments() {
    let text = "use crate::{config::Config, render::{Templates, bulk}};\n\
                // crate::segment in a comment\n\
                let k = crate::tokens::Keys::new(); // and crate::shop here\n\
                let u = \"https://x\"; crate::store::Store::open();\n";
    let paths: Vec<(usize, String)> = crate_paths(text);
    assert_eq!(
        paths,
        vec![
            (1, "config::Config".to_string()),
            (1, "render::Templates".to_string()),
            (1, "render::bulk".to_string()),
            (3, "tokens::Keys::new".to_string()),
            (4, "store::Store::open".to_string()),
        ]
    );
    assert!(starts_with_module(
        "delivery::dkim::DkimKey",
        "delivery::dkim"
    ));
    assert!(!starts_with_module("delivery::Engine", "delivery::dkim"));
    assert!(!starts_with_module("configure", "config"));
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Whether `path` is `module` or inside it.
fn starts_with_module(path: &str, module: &str) -> bool {
    path == module
        || path
            .strip_prefix(module)
            .is_some_and(|rest| rest.starts_with("::"))
}

/// The lines of `text` (numbered from 1) without their `//` comments. A
/// comment starts at `//` at the line's start or after a space, so the `//`
/// of a URL in a string is kept.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let cut = l
                .match_indices("//")
                .map(|(at, _)| at)
                .find(|&at| at == 0 || l[..at].ends_with(char::is_whitespace));
            (i + 1, cut.map_or(l, |at| &l[..at]).to_string())
        })
        .collect()
}

/// Every path written after `crate::` in the code of `text`, with its line;
/// `crate::{a::B, c}` gives `a::B` and `c`.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Use groups may span lines: join the code, remembering where lines start.
    let lines = code_lines(text);
    let mut code = String::new();
    let mut starts = Vec::new();
    for (n, l) in &lines {
        starts.push((code.len(), *n));
        code.push_str(l);
        code.push('\n');
    }
    let line_of = |at: usize| {
        starts
            .iter()
            .rev()
            .find(|(s, _)| *s <= at)
            .map_or(1, |(_, n)| *n)
    };
    for (at, _) in code.match_indices("crate::") {
        // `herald_crate::` or `mycrate::` are other names.
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        for p in expand("", rest) {
            out.push((line_of(at), p));
        }
    }
    out
}

/// The paths `text` starts with, each prefixed with `prefix`: a plain path
/// (`a::b::C`) or a group (`{a::B, c::{D, e}}`).
fn expand(prefix: &str, text: &str) -> Vec<String> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut start = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(&group[start..i]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&group[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return items
            .into_iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(|i| expand(prefix, i))
            .collect();
    }
    let len = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let path = text[..len].trim_end_matches(':');
    if text[len..].starts_with('{') && path.len() < len {
        // `a::b::{…}`
        return expand(&join(prefix, path), &text[len..]);
    }
    vec![join(prefix, path)]
}

fn join(prefix: &str, path: &str) -> String {
    if prefix.is_empty() {
        path.to_string()
    } else {
        format!("{prefix}::{path}")
    }
}
