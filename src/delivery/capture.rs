//! The capture outbox (`[delivery] capture = "PATH"`): every finished
//! message is written into a maildir-style folder instead of going out.
//!
//! The file in `PATH/new/` holds exactly the bytes that would have gone on
//! the wire after DATA (signed, as queued); its envelope (queue id, MAIL FROM,
//! the recipients of this transaction, the sender) sits beside it in
//! `PATH/envelope/NAME.json`, written first. The name is
//! `Q<queue id>.R<first recipient index>.<8 hex of the body's SHA-256>`,
//! the same for the same transaction: a transaction repeated after a crash
//! (written, outcome not yet committed) finds its file and is not captured
//! twice. A mail reader may move files to `cur/` (maildir); listing reads
//! both.
//!
//! The queue records a captured message as delivered (`250 2.0.0 captured`),
//! so reports, tracking and automations behave as with real delivery.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// What a captured transaction was sent with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    /// The queue id (`GET /api/v1/queue/{id}`).
    pub queue_id: u64,
    /// The sender (`[[sender]] id`).
    pub sender: String,
    /// MAIL FROM.
    pub return_path: String,
    /// RCPT TO of this transaction.
    pub recipients: Vec<String>,
    /// When it was captured (RFC 3339, UTC).
    pub captured_at: String,
}

/// One captured message, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The file name (in `new/` or `cur/`).
    pub name: String,
    /// The message file.
    #[serde(skip)]
    pub path: PathBuf,
    /// Its envelope (absent when the side file was removed).
    pub envelope: Option<Envelope>,
    /// Size of the message in bytes.
    pub size: u64,
    /// Header fields, decoded.
    pub from: String,
    /// `To:`.
    pub to: String,
    /// `Subject:`.
    pub subject: String,
}

impl Entry {
    /// The queue id, from the envelope or the name.
    pub fn queue_id(&self) -> Option<u64> {
        self.envelope
            .as_ref()
            .map(|e| e.queue_id)
            .or_else(|| queue_id_of(&self.name))
    }
}

/// A captured message opened for reading.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    /// As listed.
    #[serde(flatten)]
    pub entry: Entry,
    /// Every header field, in order, as written (folding undone).
    pub headers: Vec<(String, String)>,
    /// The text part (or the HTML part's text when there is none).
    pub text: String,
    /// The HTML part, when there is one.
    pub html: Option<String>,
    /// Every link of the HTML part (`href`), then of the text part, once.
    pub links: Vec<String>,
    /// The whole file.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// Creates `dir/{tmp,new,cur,envelope}` (the daemon at start).
pub fn prepare(dir: &Path) -> std::io::Result<()> {
    for sub in ["tmp", "new", "cur", "envelope"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// The file name of a transaction.
fn name_of(queue_id: u64, first_rcpt: usize, body: &[u8]) -> String {
    let digest = sha2::Sha256::digest(body);
    format!("Q{queue_id}.R{first_rcpt}.{}", hex::encode(&digest[..4]))
}

/// The queue id in a capture file name.
fn queue_id_of(name: &str) -> Option<u64> {
    name.strip_prefix('Q')?.split('.').next()?.parse().ok()
}

/// Writes one transaction (blocking: call from a blocking thread). The
/// message is durable (file and folder synced) when this returns; returns
/// the name (under `new/`).
pub fn write(
    dir: &Path,
    env: &Envelope,
    first_rcpt: usize,
    body: &[u8],
) -> std::io::Result<String> {
    let name = name_of(env.queue_id, first_rcpt, body);
    let new = dir.join("new").join(&name);
    if new.exists() || dir.join("cur").join(format!("{name}:2,")).exists() {
        // Written by an attempt whose outcome was not recorded: made
        // durable (that attempt may have failed at the folder's sync).
        sync_dir(&dir.join("new"))?;
        return Ok(name);
    }
    let side = serde_json::to_vec_pretty(env).map_err(std::io::Error::other)?;
    if ["tmp", "new", "envelope"]
        .iter()
        .any(|s| !dir.join(s).is_dir())
    {
        // Set by a reload, or removed by a person: made again.
        prepare(dir)?;
    }
    durable_write(&dir.join("envelope").join(format!("{name}.json")), &side)?;
    sync_dir(&dir.join("envelope"))?;
    let tmp = dir.join("tmp").join(&name);
    durable_write(&tmp, body)?;
    std::fs::rename(&tmp, &new)?;
    sync_dir(&dir.join("new"))?;
    Ok(name)
}

/// Makes the entries of folder `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn durable_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Every captured message, oldest first (by file time, then name).
pub fn list(dir: &Path) -> std::io::Result<Vec<Entry>> {
    list_named(dir, |_| true, usize::MAX).map(|(_, all)| all)
}

/// How many messages are captured, and the newest `limit` of them, newest
/// first (only those are opened).
pub fn newest(dir: &Path, limit: usize) -> std::io::Result<(usize, Vec<Entry>)> {
    let (total, mut last) = list_named(dir, |_| true, limit)?;
    last.reverse();
    Ok((total, last))
}

/// How many captured messages' file names `want` accepts, and the last
/// `limit` of them, oldest first (only those are opened).
fn list_named(
    dir: &Path,
    want: impl Fn(&str) -> bool,
    limit: usize,
) -> std::io::Result<(usize, Vec<Entry>)> {
    let mut found = Vec::new();
    for sub in ["new", "cur"] {
        let rd = match std::fs::read_dir(dir.join(sub)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for item in rd {
            let item = item?;
            let meta = item.metadata()?;
            if !meta.is_file() {
                continue;
            }
            let name = item.file_name().to_string_lossy().into_owned();
            if !want(&name) {
                continue;
            }
            found.push((meta.modified().ok(), name, item.path(), meta.len()));
        }
    }
    found.sort();
    let total = found.len();
    let mut out = Vec::with_capacity(total.min(limit));
    for (_, name, path, size) in found.into_iter().skip(total.saturating_sub(limit)) {
        let head = head_of(&path)?;
        out.push(entry(dir, name, path, size, &head));
    }
    Ok((total, out))
}

/// The header block of a message file (at most its first 64 KiB).
fn head_of(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(64 * 1024)
        .read_to_end(&mut buf)?;
    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        buf.truncate(end + 4);
    }
    Ok(buf)
}

fn entry(dir: &Path, name: String, path: PathBuf, size: u64, bytes: &[u8]) -> Entry {
    let stem = name.split(':').next().unwrap_or(&name);
    let envelope = std::fs::read(dir.join("envelope").join(format!("{stem}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let msg = mail_parser::MessageParser::default().parse_headers(bytes);
    let addr = |a: Option<&mail_parser::Address<'_>>| {
        a.map(|a| {
            a.iter()
                .map(|x| match (x.name(), x.address()) {
                    (Some(n), Some(e)) => format!("{n} <{e}>"),
                    (None, Some(e)) => e.to_string(),
                    (Some(n), None) => n.to_string(),
                    (None, None) => String::new(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
    };
    Entry {
        name,
        path,
        envelope,
        size,
        from: addr(msg.as_ref().and_then(|m| m.from())),
        to: addr(msg.as_ref().and_then(|m| m.to())),
        subject: msg
            .as_ref()
            .and_then(|m| m.subject())
            .unwrap_or_default()
            .to_string(),
    }
}

/// The captured messages of queue message `queue_id` (usually one; one per
/// transaction when its recipients went in several).
pub fn show(dir: &Path, queue_id: u64) -> std::io::Result<Vec<Shown>> {
    let mut out = Vec::new();
    let prefix = format!("Q{queue_id}.");
    let (_, mine) = list_named(dir, |name| name.starts_with(&prefix), usize::MAX)?;
    for e in mine.into_iter().filter(|e| e.queue_id() == Some(queue_id)) {
        let raw = std::fs::read(&e.path)?;
        out.push(open(e, raw));
    }
    Ok(out)
}

fn open(entry: Entry, raw: Vec<u8>) -> Shown {
    let parsed = mail_parser::MessageParser::default().parse(&raw);
    let (headers, text, html) = match &parsed {
        Some(m) => {
            let headers = m
                .headers_raw()
                .map(|(k, v)| (k.to_string(), unfold(v)))
                .collect();
            let html = m.body_html(0).map(|h| h.into_owned());
            let text = m.body_text(0).map(|t| t.into_owned()).unwrap_or_default();
            (headers, text, html)
        }
        None => (Vec::new(), String::from_utf8_lossy(&raw).into_owned(), None),
    };
    let mut links = Vec::new();
    for l in html.iter().flat_map(|h| hrefs(h)).chain(urls(&text)) {
        if !links.contains(&l) {
            links.push(l);
        }
    }
    Shown {
        entry,
        headers,
        text,
        html,
        links,
        raw,
    }
}

/// A header value on one line (folding undone, surrounding space trimmed).
fn unfold(v: &str) -> String {
    v.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `href` values of an HTML text, entities `&amp;` undone.
fn hrefs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("href=") {
        let start = from + at + 5;
        let rest = &html[start..];
        let (quote, rest) = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => (Some(q), &rest[1..]),
            _ => (None, rest),
        };
        let end = match quote {
            Some(q) => rest.find(q),
            None => rest.find(|c: char| c.is_whitespace() || c == '>'),
        }
        .unwrap_or(rest.len());
        out.push(rest[..end].replace("&amp;", "&"));
        from = start + usize::from(quote.is_some()) + end;
    }
    out
}

/// The http(s) URLs of a plain text.
fn urls(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '(' | ')'))
        .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
        .map(|w| w.trim_end_matches(['.', ',', ';', ']']).to_string())
        .collect()
}

/// `herald outbox list`: a header line, then one line per message.
pub fn format_list(all: &[Entry]) -> String {
    if all.is_empty() {
        return "nothing captured yet\n".to_string();
    }
    let rows: Vec<[String; 4]> = all
        .iter()
        .map(|e| {
            let env = e.envelope.as_ref();
            [
                e.queue_id().map_or("?".into(), |n| n.to_string()),
                env.map_or(String::new(), |v| v.captured_at.clone()),
                env.map_or(e.to.clone(), |v| v.recipients.join(", ")),
                e.subject.clone(),
            ]
        })
        .collect();
    let head = ["#", "captured", "to", "subject"];
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([head[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    let mut out = String::new();
    for r in std::iter::once(head.map(String::from)).chain(rows) {
        let line = format!("{:>w0$}  {:<w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let n = all.len();
    out.push_str(&format!("{n} message{}\n", if n == 1 { "" } else { "s" }));
    out
}

/// `herald outbox show N`: envelope, header fields, text part, links.
pub fn format_shown(m: &Shown) -> String {
    let mut out = String::new();
    out.push_str(&format!("file: {}\n", m.entry.path.display()));
    if let Some(env) = &m.entry.envelope {
        out.push_str(&format!(
            "envelope: queue {} sender {} MAIL FROM:<{}> RCPT TO:{} at {}\n",
            env.queue_id,
            env.sender,
            env.return_path,
            env.recipients
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(","),
            env.captured_at
        ));
    }
    out.push_str(&format!(
        "from: {}\nto: {}\nsubject: {}\n\n",
        m.entry.from, m.entry.to, m.entry.subject
    ));
    for (k, v) in &m.headers {
        out.push_str(&format!("{k}: {v}\n"));
    }
    out.push('\n');
    out.push_str(m.text.trim_end());
    out.push('\n');
    if !m.links.is_empty() {
        out.push_str("\nlinks:\n");
        for (i, l) in m.links.iter().enumerate() {
            out.push_str(&format!("  [{}] {l}\n", i + 1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: u64) -> Envelope {
        Envelope {
            queue_id: id,
            sender: "newsletter".into(),
            return_path: "bounces@shop.example".into(),
            recipients: vec!["ann@example.com".into()],
            captured_at: "2026-12-04T10:00:00Z".into(),
        }
    }

    const MSG: &[u8] = b"From: Shop <news@shop.example>\r\nTo: ann@example.com\r\nSubject: =?utf-8?q?Cze=C5=9B=C4=87?=\r\nContent-Type: text/html\r\n\r\n<a href=\"https://shop.example/a?x=1&amp;y=2\">a</a> <A HREF='https://shop.example/b'>b</A>\r\n";

    #[test]
    fn written_once_and_listed_with_its_envelope() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        prepare(dir.path())?;
        let a = write(dir.path(), &env(7), 0, MSG)?;
        let again = write(dir.path(), &env(7), 0, MSG)?;
        assert_eq!(a, again);
        write(dir.path(), &env(8), 0, MSG)?;
        let all = list(dir.path())?;
        assert_eq!(all.len(), 2);
        let (total, last) = newest(dir.path(), 1)?;
        assert_eq!((total, last.len(), last[0].queue_id()), (2, 1, Some(8)));
        assert_eq!(all[0].queue_id(), Some(7));
        assert_eq!(all[0].subject, "Cześć");
        assert_eq!(all[0].envelope, Some(env(7)));
        assert_eq!(std::fs::read(&all[0].path)?, MSG);
        let shown = show(dir.path(), 7)?;
        assert_eq!(shown.len(), 1);
        assert_eq!(
            shown[0].links,
            ["https://shop.example/a?x=1&y=2", "https://shop.example/b"]
        );
        assert!(show(dir.path(), 9)?.is_empty());
        let table = format_list(&all);
        assert!(table.starts_with("#  captured  "), "{table}");
        assert!(table.ends_with("2 messages\n"), "{table}");
        let text = format_shown(&shown[0]);
        assert!(
            text.contains("Subject: =?utf-8?q?Cze=C5=9B=C4=87?="),
            "{text}"
        );
        assert!(text.contains("  [2] https://shop.example/b"), "{text}");
        Ok(())
    }

    #[test]
    fn a_file_moved_to_cur_keeps_its_number() {
        assert_eq!(queue_id_of("Q12.R0.abcd0123:2,S"), Some(12));
        assert_eq!(queue_id_of("other"), None);
        assert_eq!(
            urls("see https://x.example/a. and (http://y.example)"),
            ["https://x.example/a", "http://y.example"]
        );
    }
}
