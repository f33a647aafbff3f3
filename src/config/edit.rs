//! Edits of the config file that keep its comments and layout (toml_edit):
//! `herald dkim keygen --sender` adds the new key to the sender.

/// Why the config file could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The text is not TOML.
    #[error("not valid TOML: {0}")]
    Syntax(String),
    /// No `[[sender]]` with that id.
    #[error("no [[sender]] with id = \"{0}\" (senders: {1})")]
    NoSender(String, String),
    /// The sender already has a key with this selector.
    #[error("sender `{0}` already has a [[sender.dkim]] with selector = \"{1}\"")]
    Duplicate(String, String),
    /// The edited config would not load (and the one before did).
    #[error("the edited config would not load:\n{0}")]
    Breaks(super::ConfigErrors),
    /// The file could not be replaced.
    #[error("cannot write {0}: {1}")]
    Io(std::path::PathBuf, std::io::Error),
}

/// Replaces the config file `path` with `text` (a new file beside it,
/// synced, then renamed over it; a symlink's target is what is replaced),
/// keeping its mode, owner and group, after checking that the new text
/// still validates. The new file is created owner-only, so the secrets in
/// it are never readable by anyone else on the way.
pub fn replace_config(path: &std::path::Path, text: &str) -> Result<(), EditError> {
    use std::io::Write as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    if let Err(e) = super::Config::from_str(path, text) {
        // Refused only when the edit is what breaks it.
        let before = std::fs::read_to_string(path).unwrap_or_default();
        if super::Config::from_str(path, &before).is_ok() {
            return Err(EditError::Breaks(e));
        }
    }
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |e| EditError::Io(p, e)
    };
    let real = std::fs::canonicalize(path).map_err(io(path))?;
    let meta = std::fs::metadata(&real).map_err(io(&real))?;
    let tmp = real.with_extension(format!("toml.herald-edit.{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.set_permissions(meta.permissions())
        })
        .and_then(|()| std::fs::rename(&tmp, &real))
        .and_then(|()| match real.parent() {
            Some(dir) => std::fs::File::open(dir)?.sync_all(),
            None => Ok(()),
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io(&real))
}

/// `text` with a `[[sender.dkim]]` of `selector` and `key_file` added to
/// the `[[sender]]` whose `id` is `sender`, everything else as it was.
pub fn add_dkim(
    text: &str,
    sender: &str,
    selector: &str,
    key_file: &str,
) -> Result<String, EditError> {
    use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, value};
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Syntax(e.to_string()))?;
    let id_of = |t: &Table| t.get("id").and_then(|v| v.as_str()).map(str::to_string);
    let ids: Vec<Option<String>> = doc
        .get("sender")
        .and_then(Item::as_array_of_tables)
        .map(|a| a.iter().map(id_of).collect())
        .unwrap_or_default();
    let Some(index) = ids.iter().position(|id| id.as_deref() == Some(sender)) else {
        let known: Vec<String> = ids.into_iter().flatten().collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        return Err(EditError::NoSender(sender.to_string(), known));
    };
    let Some(s) = doc
        .get_mut("sender")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|a| a.get_mut(index))
    else {
        return Err(EditError::NoSender(sender.to_string(), "none".into()));
    };
    let has = |keys: &ArrayOfTables| {
        keys.iter()
            .any(|k| k.get("selector").and_then(|v| v.as_str()) == Some(selector))
    };
    if s.get("dkim")
        .and_then(Item::as_array_of_tables)
        .is_some_and(has)
    {
        return Err(EditError::Duplicate(sender.into(), selector.into()));
    }
    let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
    let block = format!(
        "\n[[sender.dkim]]\nselector = {}\nkey_file = {}\n",
        quoted(selector),
        quoted(key_file)
    );
    let edited = insert_at_end_of(text, index, &block);
    // The edit must mean what it says; toml_edit's own placement otherwise
    // (valid, but in the middle of the sender's comments).
    let ok = toml::from_str::<toml::Table>(&edited).is_ok_and(|t| {
        t.get("sender")
            .and_then(|v| v.as_array())
            .and_then(|a| a.get(index))
            .and_then(|s| s.get("dkim"))
            .and_then(|d| d.as_array())
            .and_then(|d| d.last())
            .is_some_and(|k| {
                k.get("selector").and_then(|v| v.as_str()) == Some(selector)
                    && k.get("key_file").and_then(|v| v.as_str()) == Some(key_file)
            })
    });
    if ok {
        return Ok(edited);
    }
    let mut key = Table::new();
    key["selector"] = value(selector);
    key["key_file"] = value(key_file);
    match s.get_mut("dkim").and_then(Item::as_array_of_tables_mut) {
        Some(keys) => keys.push(key),
        None => {
            let mut keys = ArrayOfTables::new();
            keys.push(key);
            s.insert("dkim", Item::ArrayOfTables(keys));
        }
    }
    Ok(doc.to_string())
}

/// `text` with `block` inserted at the end of the `index`-th `[[sender]]`
/// (before the next header that is not one of its own subtables, and the
/// comment lines written directly above that header).
fn insert_at_end_of(text: &str, index: usize, block: &str) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let header = |l: &str| -> Option<String> {
        let t = l.trim();
        t.starts_with('[')
            .then(|| t.split('#').next().unwrap_or("").trim())
            .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    };
    let mut seen = 0;
    let mut start = None;
    for (i, l) in lines.iter().enumerate() {
        if header(l).as_deref() == Some("sender") && l.trim_start().starts_with("[[") {
            if seen == index {
                start = Some(i);
                break;
            }
            seen += 1;
        }
    }
    let Some(start) = start else {
        return text.to_string();
    };
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        if let Some(h) = header(l)
            && !h.starts_with("sender.")
        {
            end = i;
            while end > start + 1 && lines[end - 1].trim_start().starts_with('#') {
                end -= 1;
            }
            break;
        }
    }
    while end > start + 1 && lines[end - 1].trim().is_empty() {
        end -= 1;
    }
    let mut out: String = lines[..end].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(block);
    out.push_str(&lines[end..].concat());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# top\n[http]\nlisten = \"x\"\n\n# the first\n[[sender]]\nid = \"a\" # note\n\n[sender.relay]\nhost = \"r\"\n\n[[sender]]\nid = \"b\"\n\n[[sender.dkim]]\nselector = \"old\"\nkey_file = \"k\"\n\n[tracking]\nsecret = \"s\"\n";

    #[test]
    fn the_key_goes_to_its_sender_and_comments_stay() -> Result<(), EditError> {
        let out = add_dkim(TEXT, "a", "s2026", "dkim/s2026.pem")?;
        assert!(out.starts_with("# top\n[http]\nlisten = \"x\"\n\n# the first\n[[sender]]\nid = \"a\" # note\n\n[sender.relay]\nhost = \"r\"\n\n[[sender.dkim]]\nselector = \"s2026\"\nkey_file = \"dkim/s2026.pem\"\n\n[[sender]]"), "{out}");
        let a = out.find("id = \"a\"").unwrap_or(usize::MAX);
        let new = out.find("selector = \"s2026\"").unwrap_or(0);
        let b = out.find("id = \"b\"").unwrap_or(0);
        assert!(a < new && new < b, "{out}");
        let parsed: toml::Table =
            toml::from_str(&out).map_err(|e| EditError::Syntax(e.to_string()))?;
        assert_eq!(
            parsed["sender"][0]["dkim"][0]["key_file"].as_str(),
            Some("dkim/s2026.pem")
        );
        let both = add_dkim(&out, "b", "s2026", "k2")?;
        let parsed: toml::Table =
            toml::from_str(&both).map_err(|e| EditError::Syntax(e.to_string()))?;
        assert_eq!(
            parsed["sender"][1]["dkim"].as_array().map(Vec::len),
            Some(2)
        );
        Ok(())
    }

    #[test]
    fn the_file_is_replaced_keeping_its_mode_and_an_edit_that_breaks_it_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let good = "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://localhost\"\n[storage]\npath = \"data\"\n[admin]\ntoken = \"0123456789abcdef0123456789abcdef\"\n[tracking]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, good)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        let edited = format!("# edited\n{good}");
        replace_config(&path, &edited)?;
        assert_eq!(std::fs::read_to_string(&path)?, edited);
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o640
        );
        let broken = edited.replace("[storage]\npath = \"data\"\n", "");
        let e = replace_config(&path, &broken).unwrap_err();
        assert!(matches!(e, EditError::Breaks(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path)?, edited);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }

    #[test]
    fn an_unknown_sender_or_a_second_selector_is_refused() {
        let e = add_dkim(TEXT, "c", "s", "k").map(|_| ()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no [[sender]] with id = \"c\" (senders: a, b)"
        );
        let e = add_dkim(TEXT, "b", "old", "k").map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("already has"), "{e}");
    }
}
