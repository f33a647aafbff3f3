//! Data flows one way (ARCHITECTURE.md, "Invariants"): the layers below
//! the send layer never name the kinds of send above it. Delivery, tracking
//! and the store know a message's `SendRef` and nothing of campaigns (or,
//! later, automations): every kind of send reuses them unchanged.

use std::path::Path;

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                out.push((p.display().to_string(), text));
            }
        }
    }
    out
}

/// Lines of the files under `src/{dir}` that name one of `modules`
/// (`crate::campaign`, `campaign::model`…).
fn naming(dir: &str, modules: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut found = Vec::new();
    for (path, text) in sources(&root) {
        for (i, line) in text.lines().enumerate() {
            for m in modules {
                if line.contains(&format!("crate::{m}")) || line.contains(&format!("{m}::model")) {
                    found.push(format!("{path}:{}: {}", i + 1, line.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn delivery_tracking_and_the_store_never_name_the_kinds_of_send_above_them() {
    for dir in ["delivery", "track", "store"] {
        let found = naming(dir, &["campaign", "automation"]);
        assert!(
            found.is_empty(),
            "src/{dir} must know sends only by their SendRef:\n{}",
            found.join("\n")
        );
    }
}

#[test]
fn the_send_layer_knows_no_kind_of_send_either() {
    let found = naming("send", &["campaign", "automation"]);
    assert!(found.is_empty(), "{}", found.join("\n"));
}
