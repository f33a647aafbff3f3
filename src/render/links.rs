//! Click tracking: rewriting `<a href>` to signed redirect links, the table of
//! a send's links, the open pixel and the hidden preheader.
//!
//! A link is tracked when its `href` is an absolute http(s) URL, is not one of
//! Herald's own links (unsubscribe, preferences, view in browser) and the
//! anchor has no `data-notrack` attribute. The URL the message pointed to is
//! recorded per send under a small number; the click token carries that number,
//! so the redirect can only go where a message of that send really pointed.
//! Auto-login tokens are taken out of recorded URLs (and marked), so that the
//! table holds one entry per page, not one per recipient; the redirect issues
//! a fresh token for the clicking contact.

use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::tokens::{Keys, MessageRef, Token};

/// Links recorded per send at most; further new URLs stay untracked.
pub const MAX_LINKS_PER_SEND: usize = 100_000;

/// Where link number N of a send goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LinkRecord {
    /// The target URL as the message had it (normalised by the URL parser).
    pub url: String,
    /// The URL carried an auto-login token (removed here); the redirect adds
    /// a fresh one for the contact.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub autologin: bool,
}

#[derive(Default)]
struct Inner {
    ids: rustc_hash::FxHashMap<LinkRecord, u32>,
    list: Vec<LinkRecord>,
    recorded: usize,
    /// `href` values exactly as they appear in the HTML → link number: the
    /// same link in the next message skips decoding and URL parsing.
    by_href: rustc_hash::FxHashMap<Box<str>, u32>,
}

/// Distinct `href` spellings remembered per send (per-recipient URLs beyond
/// this are parsed every time, never cached without bound).
const MAX_CACHED_HREFS: usize = 10_000;

/// The links of one send, numbered in order of first appearance. Shared by
/// every rendering thread of the send.
#[derive(Default)]
pub struct LinkTable(RwLock<Inner>);

impl LinkTable {
    /// A table continuing from links already recorded for the send (after a
    /// restart the same URL keeps its number).
    pub fn new(mut existing: Vec<(u32, LinkRecord)>) -> LinkTable {
        existing.sort_by_key(|(n, _)| *n);
        let mut inner = Inner::default();
        for (n, rec) in existing {
            // Numbers are dense from 0; anything else is ignored (and never
            // reused: new links continue after the highest).
            while inner.list.len() < n as usize {
                inner.list.push(LinkRecord {
                    url: String::new(),
                    autologin: false,
                });
            }
            inner.ids.insert(rec.clone(), n);
            if inner.list.len() == n as usize {
                inner.list.push(rec);
            }
        }
        inner.recorded = inner.list.len();
        LinkTable(RwLock::new(inner))
    }

    /// The number of a link, assigning the next one to a new URL.
    pub fn id(&self, rec: LinkRecord) -> Option<u32> {
        if let Some(n) = self.0.read().ok()?.ids.get(&rec) {
            return Some(*n);
        }
        let mut w = self.0.write().ok()?;
        if let Some(n) = w.ids.get(&rec) {
            return Some(*n);
        }
        if w.list.len() >= MAX_LINKS_PER_SEND {
            return None;
        }
        let n = w.list.len() as u32;
        w.list.push(rec.clone());
        w.ids.insert(rec, n);
        Some(n)
    }

    /// The number of a link by its `href` as written in the HTML, if seen.
    fn by_href(&self, href: &str) -> Option<u32> {
        self.0.read().ok()?.by_href.get(href).copied()
    }

    fn remember_href(&self, href: &str, n: u32) {
        if let Ok(mut w) = self.0.write()
            && w.by_href.len() < MAX_CACHED_HREFS
        {
            w.by_href.insert(href.into(), n);
        }
    }

    /// Links numbered since the last [`LinkTable::mark_recorded`]: the caller
    /// must commit them before (or with) the messages that contain them.
    pub fn unrecorded(&self) -> Vec<(u32, LinkRecord)> {
        let r = match self.0.read() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        (r.recorded..r.list.len())
            .map(|i| (i as u32, r.list[i].clone()))
            .collect()
    }

    /// Marks links up to (not including) number `upto` as committed.
    pub fn mark_recorded(&self, upto: u32) {
        if let Ok(mut w) = self.0.write() {
            w.recorded = w.recorded.max(upto as usize).min(w.list.len());
        }
    }

    /// Every link, by number.
    pub fn all(&self) -> Vec<LinkRecord> {
        self.0.read().map(|r| r.list.clone()).unwrap_or_default()
    }
}

/// The tracking side of a send, shared by its rendering threads.
pub struct Tracker {
    /// Herald's public URL without a trailing slash.
    pub public: String,
    /// Token keys.
    pub keys: Keys,
    /// The send's links.
    pub table: LinkTable,
}

/// The tracking state of one message: which message, the contact's site's
/// auto-login parameter, and the click tokens signed so far (a link that
/// appears twice is signed once).
#[derive(Debug)]
pub struct MessageLinks {
    /// The message.
    pub message: MessageRef,
    /// Auto-login parameter to take out of recorded URLs.
    pub autologin_param: Option<String>,
    /// When the message is sent (seconds since the epoch): click tokens
    /// carry it, so auto-login expires with the message.
    pub sent: u64,
    tokens: std::sync::Mutex<Vec<(u32, String)>>,
}

impl MessageLinks {
    /// State for one message sent at `sent` (seconds since the epoch).
    pub fn new(message: MessageRef, autologin_param: Option<String>, sent: u64) -> MessageLinks {
        MessageLinks {
            message,
            autologin_param,
            sent,
            tokens: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl minijinja::value::Object for MessageLinks {}

impl Tracker {
    /// Appends to `out` the click URL replacing `raw` (an `href` value as
    /// written in HTML, entity-escaped); false, with nothing appended, to
    /// leave the link as it is.
    pub fn track_into(&self, raw: &str, m: &MessageLinks, out: &mut String) -> bool {
        let Some(n) = self.number(raw, m) else {
            return false;
        };
        let mut tokens = match m.tokens.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        let at = match tokens.iter().position(|(x, _)| *x == n) {
            Some(i) => i,
            None => {
                tokens.push((n, self.keys.sign(&Token::Click(m.message, n, Some(m.sent)))));
                tokens.len() - 1
            }
        };
        out.push_str(&self.public);
        out.push_str("/c/");
        out.push_str(&tokens[at].1);
        true
    }

    /// The link number of `raw`, numbering a new URL; `None` to leave it.
    fn number(&self, raw: &str, m: &MessageLinks) -> Option<u32> {
        let n = match self.table.by_href(raw) {
            Some(n) => n,
            None => {
                let decoded = if raw.contains('&') {
                    html_escape::decode_html_entities(raw)
                } else {
                    std::borrow::Cow::Borrowed(raw)
                };
                let rec = trackable(&decoded, &self.public, m.autologin_param.as_deref())?;
                let per_recipient = rec.autologin;
                let n = self.table.id(rec)?;
                if !per_recipient {
                    self.table.remember_href(raw, n);
                }
                n
            }
        };
        Some(n)
    }
}

/// The start of the next `<a` or `<A` followed by white space at or after
/// `from`: one memchr for `<` at a time, so upper and lower case are found in
/// the same pass.
fn next_anchor(b: &[u8], mut from: usize) -> Option<usize> {
    while let Some(i) = memchr::memchr(b'<', b.get(from..)?) {
        let at = from + i;
        if is_anchor(b, at) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Whether an `<a` or `<A` tag followed by white space starts at `at`.
fn is_anchor(b: &[u8], at: usize) -> bool {
    b.get(at) == Some(&b'<')
        && matches!(b.get(at + 1), Some(b'a' | b'A'))
        && b.get(at + 2).is_some_and(|c| c.is_ascii_whitespace())
}

/// What tracking needs of one `<a …>` tag: the byte range of its `href`
/// value (inside the quotes, if quoted; `None` without one), whether it has
/// `data-notrack`, and the index just past `>`. `None` for a tag that does
/// not end.
fn anchor_tag(html: &str, start: usize) -> Option<(Option<std::ops::Range<usize>>, bool, usize)> {
    let b = html.as_bytes();
    let mut i = start + 2;
    let mut href = None;
    let mut notrack = false;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        if i >= b.len() {
            return None;
        }
        if b[i] == b'>' {
            return Some((href, notrack, i + 1));
        }
        let ns = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = &b[ns..i];
        let is_href = href.is_none() && name.eq_ignore_ascii_case(b"href");
        notrack |= name.eq_ignore_ascii_case(b"data-notrack");
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue; // a bare attribute
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let q = *b.get(i)?;
        let value = if q == b'"' || q == b'\'' {
            // Inlined styles make values long: jump to the closing quote.
            let close = i + 1 + memchr::memchr(q, &b[i + 1..])?;
            let v = i + 1..close;
            i = close + 1;
            v
        } else {
            let vs = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                i += 1;
            }
            vs..i
        };
        if is_href {
            href = Some(value);
        }
    }
}

/// The URL a tracked link records, or `None` to leave the link alone.
pub fn trackable(href: &str, public: &str, autologin_param: Option<&str>) -> Option<LinkRecord> {
    let href = href.trim();
    let scheme = |p: &str| {
        href.get(..p.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(p))
    };
    if !(scheme("http://") || scheme("https://")) {
        return None;
    }
    if href.starts_with(public)
        && matches!(href.as_bytes().get(public.len()), None | Some(b'/' | b'?'))
    {
        return None;
    }
    let mut url = url::Url::parse(href).ok()?;
    url.host()?;
    let mut autologin = false;
    if let Some(param) = autologin_param
        && url.query_pairs().any(|(k, _)| k == param)
    {
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != param)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(kept);
        }
        autologin = true;
    }
    Some(LinkRecord {
        url: url.to_string(),
        autologin,
    })
}

/// Plain text (an SMS) with every `http://` or `https://` URL that can be
/// tracked replaced by its click URL. A URL ends at white space; trailing
/// punctuation (`.`, `,`, `)`, `!`, `?`…) stays outside it.
pub fn rewrite_text_links(text: &str, t: &Tracker, m: &MessageLinks) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(i) = ["http://", "https://"]
        .iter()
        .filter_map(|p| rest.find(p))
        .min()
    {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let end = tail.find(char::is_whitespace).unwrap_or(tail.len());
        let url = tail[..end].trim_end_matches(['.', ',', ')', '!', '?', ';', ':', '"', '\'']);
        if !t.track_into(url, m, &mut out) {
            out.push_str(url);
        }
        rest = &tail[url.len()..];
    }
    out.push_str(rest);
    out
}

/// The byte [`instrument`] puts before every `<a` of a body template it
/// marks: finding the anchors of a rendered message is then one memchr for a
/// byte that HTML text does not contain, instead of looking at every `<`.
const ANCHOR_MARK: u8 = 0x01;

/// Rewrites every trackable link of finished HTML to a signed click link.
/// `marked`: the template was instrumented with anchor marks (see
/// [`instrument`]); they are found instead of searching for `<a`, and every
/// mark byte is left out of the result.
pub fn rewrite_links(html: &str, t: &Tracker, m: &MessageLinks, marked: bool) -> String {
    let b = html.as_bytes();
    let mut out = String::with_capacity(html.len() + 4096);
    let copy = |out: &mut String, s: &str| {
        if marked {
            push_unmarked(out, s);
        } else {
            out.push_str(s);
        }
    };
    // `html[..last]` is in `out`; the search goes on from `from`.
    let (mut last, mut from) = (0, 0);
    loop {
        let start = if marked {
            let Some(i) = memchr::memchr(ANCHOR_MARK, &b[from..]) else {
                break;
            };
            from += i + 1;
            if !is_anchor(b, from) {
                continue;
            }
            from
        } else {
            let Some(at) = next_anchor(b, from) else {
                break;
            };
            at
        };
        let Some((href, notrack, end)) = anchor_tag(html, start) else {
            break;
        };
        from = end;
        if let Some(r) = href.filter(|r| !notrack && !r.is_empty()) {
            let mark = out.len();
            copy(&mut out, &html[last..r.start]);
            if t.track_into(&html[r.clone()], m, &mut out) {
                last = r.end;
            } else {
                out.truncate(mark);
            }
        }
    }
    copy(&mut out, &html[last..]);
    out
}

/// Appends `s` without its [`ANCHOR_MARK`] bytes: wherever a mark ended up
/// (before an anchor, inside a tag whose attribute held `<a`, or brought by
/// a value), none reaches the message.
fn push_unmarked(out: &mut String, mut s: &str) {
    while let Some(i) = memchr::memchr(ANCHOR_MARK, s.as_bytes()) {
        out.push_str(&s[..i]);
        s = &s[i + 1..];
    }
    out.push_str(s);
}

/// Prepares an HTML body template for a send, once, so that rendering a
/// recipient does not search for the insertion points: `{{ __preheader }}`
/// goes right after `<body…>` and `{{ __pixel }}` right before `</body>`.
///
/// With `mark_anchors` (for templates that [`can_mark`]), every `<a` tag of
/// the template also gets [`ANCHOR_MARK`] before it; [`rewrite_links`] then
/// finds the anchors by their marks.
pub fn instrument(template: &str, mark_anchors: bool) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let b = template.as_bytes();
    let mut last = 0;
    let mut from = 0;
    while mark_anchors && let Some(at) = next_anchor(b, from) {
        out.push_str(&template[last..at]);
        out.push(char::from(ANCHOR_MARK));
        (last, from) = (at, at + 2);
    }
    out.push_str(&template[last..]);
    let at = find_ci(&out, "<body")
        .and_then(|i| out[i..].find('>').map(|e| i + e + 1))
        .unwrap_or(0);
    out.insert_str(at, "{{ __preheader }}");
    match rfind_ci(&out, "</body") {
        Some(i) => out.insert_str(i, "{{ __pixel }}"),
        None => out.push_str("{{ __pixel }}"),
    }
    out
}

/// Whether every anchor a body template can write is in its text, so that
/// marking them ([`instrument`]) finds them all: not when a value may be
/// written unescaped (`safe`, `autoescape`) and so hold HTML of its own.
pub fn can_mark(template: &str) -> bool {
    !template.contains("safe")
        && !template.contains("autoescape")
        && !template.as_bytes().contains(&ANCHOR_MARK)
}

/// The open pixel for `url`.
pub fn pixel(url: &str) -> String {
    format!(
        "<img src=\"{url}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px;overflow:hidden\">"
    )
}

/// The hidden preheader block for `preheader` (already HTML-escaped).
pub fn preheader_block(preheader: &str) -> String {
    if preheader.trim().is_empty() {
        return String::new();
    }
    format!(
        "<div style=\"display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;opacity:0;overflow:hidden;mso-hide:all\">{preheader}</div>"
    )
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    let n = needle.len();
    hay.as_bytes()
        .windows(n)
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn rfind_ci(hay: &str, needle: &str) -> Option<usize> {
    let n = needle.len();
    hay.as_bytes()
        .windows(n)
        .rposition(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{SendKind, SendRef};

    const PUBLIC: &str = "https://mail.example";

    fn tracker(existing: Vec<(u32, LinkRecord)>) -> Tracker {
        Tracker {
            public: PUBLIC.into(),
            keys: Keys::new(b"0123456789abcdef0123456789abcdef", &[]),
            table: LinkTable::new(existing),
        }
    }

    /// Rewrites `html` both ways (searching for anchors, and with the
    /// marks `instrument` would put), checks both agree and returns it.
    fn rw(html: &str, t: &Tracker) -> String {
        let m = MessageLinks::new(msg(), Some("hal".into()), 1_800_000_000);
        let plain = rewrite_links(html, t, &m, false);
        if can_mark(html) {
            let instrumented = instrument(html, true);
            let body = instrumented
                .replace("{{ __preheader }}", "")
                .replace("{{ __pixel }}", "");
            assert_eq!(rewrite_links(&body, t, &m, true), plain, "marked: {body:?}");
        }
        plain
    }

    fn msg() -> MessageRef {
        MessageRef {
            send: SendRef {
                kind: SendKind::Campaign,
                id: 1,
                variant: 0,
            },
            contact: 9,
        }
    }

    fn click_target(out: &str, t: &Tracker, nth: usize) -> String {
        let (keys, table) = (&t.keys, &t.table);
        let tokens: Vec<&str> = out
            .split(&format!("{PUBLIC}/c/"))
            .skip(1)
            .filter_map(|s| s.split(['"', '\'', '>']).next())
            .collect();
        match keys.verify(tokens[nth]) {
            Some(Token::Click(m, n, sent)) => {
                assert_eq!((m, sent), (msg(), Some(1_800_000_000)));
                table.all()[n as usize].url.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_anchor_in_an_attribute_value_leaves_no_mark() {
        let t = tracker(vec![]);
        // `rw` also checks that the marked template gives the same HTML.
        let out = rw(r#"<a title="<a b" href="https://shop.example/t">t</a>"#, &t);
        assert_eq!(out.matches("/c/").count(), 1, "{out}");
        assert!(!out.contains('\u{1}'), "{out:?}");
    }

    #[test]
    fn links_are_rewritten_and_resolve_to_their_targets() {
        let t = tracker(vec![]);
        let html = concat!(
            r#"<p><a href="https://shop.example/p?id=1&amp;c=2#top">q</a>"#,
            r#"<A  class=x HREF='https://shop.example/zażółć?q=a b'>n</A>"#,
            r#"<a href="https://shop.example/%C5%BC?x=%2F">enc</a>"#,
            r##"<a href="mailto:a@b.c">m</a><a href="tel:+48">t</a><a href="#x">f</a>"##,
            r#"<a href="https://mail.example/u/TOKEN">unsub</a>"#,
            r#"<a data-notrack href="https://shop.example/skip">s</a>"#,
            r#"<a href="https:&#x2f;&#x2f;shop.example&#x2f;esc">e</a>"#,
            r#"<a href=https://shop.example/bare>b</a>"#,
            r#"<abbr href="https://x.example">no</abbr>"#,
            r#"<a href="https://shop.example/account?hal=eyJ.x.y&amp;a=1">login</a></p>"#,
        );
        let out = rw(html, &t);
        assert_eq!(out.matches("/c/").count(), 6, "{out}");
        assert_eq!(
            click_target(&out, &t, 0),
            "https://shop.example/p?id=1&c=2#top"
        );
        assert_eq!(
            click_target(&out, &t, 1),
            "https://shop.example/za%C5%BC%C3%B3%C5%82%C4%87?q=a%20b"
        );
        assert_eq!(
            click_target(&out, &t, 2),
            "https://shop.example/%C5%BC?x=%2F"
        );
        assert_eq!(click_target(&out, &t, 3), "https://shop.example/esc");
        assert_eq!(click_target(&out, &t, 4), "https://shop.example/bare");
        assert_eq!(
            click_target(&out, &t, 5),
            "https://shop.example/account?a=1"
        );
        assert!(t.table.all()[5].autologin);
        for kept in [
            "mailto:a@b.c",
            "tel:+48",
            "\"#x\"",
            "https://mail.example/u/TOKEN",
            "https://shop.example/skip",
            "<abbr href=\"https://x.example\">",
        ] {
            assert!(out.contains(kept), "{kept} in {out}");
        }
        assert!(
            out.contains("<A  class=x HREF='https://mail.example/c/"),
            "{out}"
        );
    }

    #[test]
    fn the_same_url_keeps_its_number_and_unrecorded_links_are_listed_once() {
        let t = tracker(vec![(
            0,
            LinkRecord {
                url: "https://a.example/".into(),
                autologin: false,
            },
        )]);
        let out = rw(
            r#"<a href="https://b.example/">b</a><a href="https://a.example/">a</a><a href="https://b.example/">b</a>"#,
            &t,
        );
        assert_eq!(click_target(&out, &t, 1), "https://a.example/");
        let new = t.table.unrecorded();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].0, 1);
        t.table.mark_recorded(2);
        assert!(t.table.unrecorded().is_empty());
    }

    #[test]
    fn broken_markup_does_not_panic() {
        let t = tracker(vec![]);
        for html in [
            "<a ",
            "<a href=\"https://x.example",
            "<a href=",
            "<a\thref='https://x.example/'",
            "<a href=\"https://\">x</a>",
            "<a href=\"http://[::1\">x</a>",
        ] {
            let _ = rw(html, &t);
        }
    }

    #[test]
    fn instrument_places_preheader_and_pixel() {
        let out = instrument("<html><BODY class=a><p>x</p></BODY></html>", false);
        assert_eq!(
            out,
            "<html><BODY class=a>{{ __preheader }}<p>x</p>{{ __pixel }}</BODY></html>"
        );
        assert_eq!(
            instrument("<p>x</p>", false),
            "{{ __preheader }}<p>x</p>{{ __pixel }}"
        );
    }

    #[test]
    fn instrument_marks_anchors_unless_the_template_may_write_html() {
        let template = "<p><a href=\"x\">1</a><A\thref=y>2</A><abbr>";
        assert!(can_mark(template));
        let out = instrument(template, true);
        assert_eq!(
            out,
            "{{ __preheader }}<p>\u{1}<a href=\"x\">1</a>\u{1}<A\thref=y>2</A><abbr>{{ __pixel }}"
        );
        for unsafe_template in [
            "<a href=x>{{ d|safe }}</a>",
            "{% autoescape false %}{% endautoescape %}",
        ] {
            assert!(!can_mark(unsafe_template), "{unsafe_template}");
        }
        // A mark that a value brings (not before an anchor) is dropped.
        let t = tracker(vec![]);
        let m = MessageLinks::new(msg(), None, 1_800_000_000);
        let out = rewrite_links(
            "a\u{1}b\u{1}<a href=\"https://s.example/\">x</a>",
            &t,
            &m,
            true,
        );
        assert!(
            out.starts_with("ab<a href=\"https://mail.example/c/"),
            "{out}"
        );
    }
}
