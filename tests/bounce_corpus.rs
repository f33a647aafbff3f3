//! The bounce corpus: every message in `tests/bounces/*.eml` (DSNs, ARF
//! complaints, plain-text bounces, auto-replies, delay notices and others,
//! shaped like what Postfix, Exim, Sendmail, qmail, Office 365, Gmail, Yahoo,
//! Outlook.com and the Polish providers send) is classified by
//! `herald::inbound::parse::parse` and compared with `expected.toml`.
//!
//! It prints one line per miss and a summary, and fails when fewer than 95%
//! are right, when any auto-reply or delay notice got a bounce verdict, or
//! when a VERP return path named in a message's body was not extracted.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use herald::inbound::parse::{Report, Verdict, parse};
use serde::Deserialize;

/// `expected.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    /// One entry per message.
    message: Vec<Entry>,
}

/// What one message should give.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// The file name in `tests/bounces`.
    file: String,
    /// The verdict of the (first) finding.
    verdict: String,
    /// The recipient of the finding; absent when the message names none.
    recipient: Option<String>,
    /// The enhanced status code of the finding, when checked.
    status: Option<String>,
    /// The original Message-ID, when checked.
    message_id: Option<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bounces")
}

/// Herald VERP addresses (`b-` and 36 hex digits) in a message's body: below
/// its own header block, where the returned copy and the report stand.
fn body_verps(raw: &[u8]) -> BTreeSet<String> {
    let text = String::from_utf8_lossy(raw);
    let body_start = [text.find("\r\n\r\n"), text.find("\n\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
    let body = &text[body_start..];
    let bytes = body.as_bytes();
    let mut found = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = body[from..].find("b-").map(|i| i + from) {
        from = at + 2;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'-') {
            continue;
        }
        let hex = &bytes[at + 2..];
        let hex_len = hex.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if hex_len != 36 || hex.get(36) != Some(&b'@') {
            continue;
        }
        let domain_len = hex[37..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'.' || **b == b'-')
            .count();
        let end = at + 2 + 37 + domain_len;
        found.insert(body[at..end].trim_end_matches('.').to_ascii_lowercase());
    }
    found
}

/// What is wrong with one message's report, if anything.
fn problems(entry: &Entry, report: &Report, want: Verdict) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(finding) = report.findings.first() else {
        return vec!["no finding".to_owned()];
    };
    if finding.verdict != want {
        problems.push(format!(
            "verdict {} (want {})",
            finding.verdict.as_str(),
            want.as_str()
        ));
    }
    let got = finding.recipient.as_deref().map(str::to_ascii_lowercase);
    let expected = entry.recipient.as_deref().map(str::to_ascii_lowercase);
    if got != expected {
        problems.push(format!("recipient {got:?} (want {expected:?})"));
    }
    if let Some(status) = &entry.status
        && finding.status.as_ref() != Some(status)
    {
        problems.push(format!("status {:?} (want {status})", finding.status));
    }
    if let Some(id) = &entry.message_id
        && report.original_message_id.as_ref() != Some(id)
    {
        problems.push(format!(
            "message_id {:?} (want {id})",
            report.original_message_id
        ));
    }
    problems
}

#[test]
fn bounce_corpus() {
    let dir = corpus_dir();
    let text = fs::read_to_string(dir.join("expected.toml")).expect("tests/bounces/expected.toml");
    let expected: Expected = toml::from_str(&text).expect("expected.toml parses");

    let on_disk: BTreeSet<String> = fs::read_dir(&dir)
        .expect("tests/bounces")
        .map(|entry| entry.expect("directory entry").file_name())
        .filter_map(|name| name.into_string().ok())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    let listed: BTreeSet<String> = expected.message.iter().map(|e| e.file.clone()).collect();
    assert_eq!(
        listed.len(),
        expected.message.len(),
        "a file is listed twice in expected.toml"
    );
    let unlisted: Vec<_> = on_disk.difference(&listed).collect();
    let missing: Vec<_> = listed.difference(&on_disk).collect();
    assert!(unlisted.is_empty(), "not in expected.toml: {unlisted:?}");
    assert!(
        missing.is_empty(),
        "listed but not in tests/bounces: {missing:?}"
    );

    let total = expected.message.len();
    let mut right = 0;
    let mut quiet_counted_as_bounce = 0;
    let mut verp_misses = Vec::new();
    for entry in &expected.message {
        let raw = fs::read(dir.join(&entry.file)).expect("corpus file");
        let report = parse(&raw);
        let want = Verdict::parse(&entry.verdict)
            .unwrap_or_else(|| panic!("{}: unknown verdict {}", entry.file, entry.verdict));

        let problems = problems(entry, &report, want);
        if problems.is_empty() {
            right += 1;
        } else {
            println!("miss {}: {}", entry.file, problems.join("; "));
        }
        if matches!(want, Verdict::AutoReply | Verdict::Delay)
            && report.findings.iter().any(|f| f.verdict.is_bounce())
        {
            quiet_counted_as_bounce += 1;
        }
        for verp in body_verps(&raw) {
            if !report
                .original_return_paths
                .iter()
                .any(|path| path.eq_ignore_ascii_case(&verp))
            {
                println!("miss {}: VERP {verp} not extracted", entry.file);
                verp_misses.push(format!("{}: {verp}", entry.file));
            }
        }
    }

    let percent = 100.0 * right as f64 / total as f64;
    println!(
        "bounce corpus: {right} of {total} right ({percent:.1}%); auto-replies or delays counted as bounces: {quiet_counted_as_bounce}"
    );
    assert!(
        total >= 64,
        "the corpus has {total} messages, fewer than 64"
    );
    assert!(percent >= 95.0, "only {percent:.1}% right");
    assert_eq!(
        quiet_counted_as_bounce, 0,
        "auto-replies or delay notices got a bounce verdict"
    );
    assert!(
        verp_misses.is_empty(),
        "VERP return paths not extracted: {verp_misses:?}"
    );
}

#[test]
fn every_verdict_is_in_the_corpus_often_enough() {
    let text = fs::read_to_string(corpus_dir().join("expected.toml"))
        .expect("tests/bounces/expected.toml");
    let expected: Expected = toml::from_str(&text).expect("expected.toml parses");
    let count = |verdict: &str| {
        expected
            .message
            .iter()
            .filter(|e| e.verdict == verdict)
            .count()
    };
    for (verdict, at_least) in [
        ("hard", 10),
        ("soft", 8),
        ("policy", 8),
        ("complaint", 6),
        ("auto_reply", 10),
        ("delay", 6),
        ("unknown", 3),
    ] {
        assert!(
            count(verdict) >= at_least,
            "{verdict}: {} messages, want at least {at_least}",
            count(verdict)
        );
    }
}

/// Real reports arrive cut short and mangled: every corpus message,
/// truncated at many points and with bytes overwritten, parses without a
/// panic and gives at least one finding.
#[test]
fn truncated_and_mangled_reports_never_panic() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("tests/bounces")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    files.sort();
    let mut parsed = 0;
    for path in files {
        let raw = fs::read(&path).expect("corpus file");
        for cut in (0..raw.len()).step_by(raw.len() / 23 + 1) {
            assert!(!parse(&raw[..cut]).findings.is_empty());
            parsed += 1;
        }
        let mut mangled = raw.clone();
        for (i, byte) in mangled.iter_mut().enumerate() {
            if i % 53 == 7 {
                *byte = [b'\n', b':', b'-', b'<', 0xc5, 0xff, b'@', b';'][i % 8];
            }
        }
        assert!(!parse(&mangled).findings.is_empty());
        parsed += 1;
    }
    assert!(parsed > 1000, "only {parsed} variants parsed");
}
