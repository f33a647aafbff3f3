//! Load-time work on a body, done once per template and never per recipient:
//! MJML → HTML (mrml), CSS inlining (css-inline) and deriving the text part
//! (html2text). Each step parses HTML, and an HTML parser moves stray text out
//! of tables ("foster parenting") — which would tear a `{% for %}` loop away
//! from the `<tr>` it repeats. So template tags are protected first: outside
//! markup each becomes an HTML comment (comments stay where they are, even
//! inside tables); inside a tag, `<title>` or `<style>` it becomes a
//! private-use-character placeholder. After the step they are put back.

use std::fmt::Write as _;

/// Private-use characters marking a placeholder: never in real text.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';
const COMMENT: &str = "herald-tpl:";

/// A body with its template tags replaced by placeholders.
struct Protected {
    text: String,
    tags: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Text,
    Tag(Option<u8>),
    Raw,
}

/// Replaces every `{{ … }}`, `{% … %}` and `{# … #}` by a placeholder.
fn protect(src: &str) -> Protected {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut tags = Vec::new();
    let mut state = State::Text;
    let mut raw_end: &str = "";
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'{' && i + 1 < b.len() && matches!(b[i + 1], b'{' | b'%' | b'#') {
            let close = match b[i + 1] {
                b'{' => "}}",
                b'%' => "%}",
                _ => "#}",
            };
            if let Some(end) = src[i + 2..].find(close) {
                let end = i + 2 + end + 2;
                out.push_str(&src[last..i]);
                let n = tags.len();
                tags.push(src[i..end].to_string());
                if state == State::Text {
                    let _ = write!(out, "<!--{COMMENT}{n}-->");
                } else {
                    let _ = write!(out, "{OPEN}{n}{CLOSE}");
                }
                i = end;
                last = end;
                continue;
            }
        }
        match state {
            State::Text => {
                if b[i] == b'<' && i + 1 < b.len() {
                    if src[i..].starts_with("<!--") {
                        // Skip an author's comment whole.
                        if let Some(e) = src[i + 4..].find("-->") {
                            i += 4 + e + 3;
                            continue;
                        }
                    }
                    if b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'/' || b[i + 1] == b'!' {
                        let name: String = src[i + 1..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric())
                            .collect::<String>()
                            .to_ascii_lowercase();
                        raw_end = match name.as_str() {
                            "style" => "</style",
                            "script" => "</script",
                            "title" => "</title",
                            "textarea" => "</textarea",
                            _ => "",
                        };
                        state = State::Tag(None);
                    }
                }
            }
            State::Tag(q) => match (q, b[i]) {
                (None, b'"' | b'\'') => state = State::Tag(Some(b[i])),
                (Some(c), x) if c == x => state = State::Tag(None),
                (None, b'>') => {
                    state = if raw_end.is_empty() {
                        State::Text
                    } else {
                        State::Raw
                    }
                }
                _ => {}
            },
            State::Raw => {
                if b[i] == b'<' && src[i..].len() >= raw_end.len() {
                    let head = &src.as_bytes()[i..i + raw_end.len()];
                    if head.eq_ignore_ascii_case(raw_end.as_bytes()) {
                        state = State::Tag(None);
                        raw_end = "";
                    }
                }
            }
        }
        i += 1;
    }
    out.push_str(&src[last..]);
    Protected { text: out, tags }
}

/// Puts the template tags back. Fails if a placeholder went missing (the HTML
/// step dropped it), naming the tag, so the author learns which one.
fn restore(text: &str, tags: &[String]) -> Result<String, String> {
    let mut out = String::with_capacity(text.len() + 64);
    let mut seen = vec![false; tags.len()];
    let mut rest = text;
    loop {
        let c = rest.find(&format!("<!--{COMMENT}"));
        let p = rest.find(OPEN);
        let (at, comment) = match (c, p) {
            (None, None) => break,
            (Some(c), Some(p)) if c < p => (c, true),
            (Some(c), None) => (c, true),
            (_, Some(p)) => (p, false),
        };
        out.push_str(&rest[..at]);
        let (num_start, end_marker) = if comment {
            (at + 4 + COMMENT.len(), "-->")
        } else {
            (at + OPEN.len_utf8(), "\u{F8F1}")
        };
        let Some(len) = rest[num_start..].find(end_marker) else {
            return Err("a template tag placeholder was cut in two".into());
        };
        let n: usize = rest[num_start..num_start + len]
            .parse()
            .map_err(|_| "a template tag placeholder was changed".to_string())?;
        let tag = tags
            .get(n)
            .ok_or_else(|| "a template tag placeholder was changed".to_string())?;
        out.push_str(tag);
        seen[n] = true;
        rest = &rest[num_start + len + end_marker.len()..];
    }
    out.push_str(rest);
    if let Some(n) = seen.iter().position(|s| !s) {
        return Err(format!(
            "the template tag `{}` was dropped by HTML processing: move it inside the <body>, not in <head>, an attribute-less spot or a comment",
            tags[n]
        ));
    }
    Ok(out)
}

/// MJML → HTML. Template tags inside text and attributes pass through; a tag
/// that must repeat or wrap MJML elements belongs in `<mj-raw>`.
pub fn mjml_to_html(src: &str) -> Result<String, String> {
    let parsed = mrml::parse(src).map_err(|e| format!("MJML: {e}"))?;
    let opts = mrml::prelude::render::RenderOptions {
        disable_comments: true,
        ..Default::default()
    };
    parsed
        .element
        .render(&opts)
        .map_err(|e| format!("MJML: {e}"))
}

/// Inlines the CSS of `<style>` blocks into `style` attributes. At-rules
/// (media queries) that cannot be inlined stay in a `<style>` block.
pub fn inline_css(src: &str) -> Result<String, String> {
    let p = protect(src);
    let inliner = css_inline::CSSInliner::options()
        .keep_at_rules(true)
        .load_remote_stylesheets(false)
        .build();
    let html = inliner
        .inline(&p.text)
        .map_err(|e| format!("CSS inlining: {e}"))?;
    restore(&html, &p.tags)
}

/// Lines longer than this are broken (inside tags) at load.
const LINE_LIMIT: usize = 500;

/// Breaks long lines of an HTML template at white space inside tags, where
/// a line break means the same as a space. MJML output and minified HTML come
/// as one long line; mail lines must stay under 998 characters, and with
/// short lines the HTML part can travel without quoted-printable encoding.
pub fn wrap_long_lines(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + html.len() / LINE_LIMIT + 16);
    let mut line = 0usize;
    let mut in_tag = false;
    let mut quote: Option<char> = None;
    for c in html.chars() {
        match c {
            '\n' => line = 0,
            '<' if quote.is_none() => in_tag = true,
            '>' if quote.is_none() => in_tag = false,
            '"' | '\'' if in_tag => {
                quote = match quote {
                    None => Some(c),
                    Some(q) if q == c => None,
                    q => q,
                }
            }
            _ => {}
        }
        if c == ' ' && in_tag && quote.is_none() && line > LINE_LIMIT {
            out.push('\n');
            line = 0;
            continue;
        }
        out.push(c);
        line += 1;
    }
    out
}

/// Derives a text body template from an HTML body template: readable text,
/// links written out as `text <url>`, template tags kept where they were.
/// Tables are read as plain blocks (layout tables are not data in mail).
pub fn derive_text(html: &str) -> Result<String, String> {
    // Template tags must reach html2text as text, in place: make tables plain
    // blocks so the parser has no reason to move text, and drop tags that
    // sit inside markup (an attribute's tags would otherwise vanish unbalanced).
    let p = protect(html);
    let mut src = String::with_capacity(p.text.len());
    let mut rest = p.text.as_str();
    while let Some(i) = rest.find('<') {
        src.push_str(&rest[..i]);
        rest = &rest[i..];
        let name_start = if rest[1..].starts_with('/') { 2 } else { 1 };
        let name: String = rest[name_start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        let block = matches!(
            name.as_str(),
            "table" | "tbody" | "thead" | "tfoot" | "tr" | "td" | "th" | "caption" | "colgroup"
        );
        if block {
            let end = rest.find('>').map_or(rest.len(), |e| e + 1);
            src.push_str(if name_start == 2 { "</div>" } else { "<div>" });
            rest = &rest[end..];
        } else {
            src.push('<');
            rest = &rest[1..];
        }
    }
    src.push_str(rest);
    // Comments (text-position tags) become text; tags in markup are kept
    // only in `href` (links are written out) and dropped elsewhere.
    let mut text_src = String::with_capacity(src.len());
    let mut rest = src.as_str();
    let marker = format!("<!--{COMMENT}");
    while let Some(at) = rest.find(&marker) {
        text_src.push_str(&rest[..at]);
        let s = at + 4 + COMMENT.len();
        let len = rest[s..].find("-->").unwrap_or(0);
        if let Ok(n) = rest[s..s + len].parse::<usize>() {
            // Escaped so that `<` in an expression stays text.
            text_src.push_str(&html_escape::encode_text(&p.tags[n]));
        }
        rest = &rest[s + len + 3..];
    }
    text_src.push_str(rest);
    let lines = html2text::config::rich()
        .no_table_borders()
        .lines_from_read(text_src.as_bytes(), 78)
        .map_err(|e| format!("deriving the text part: {e}"))?;
    let mut out = String::with_capacity(html.len() / 3);
    for line in lines {
        let mut link: Option<String> = None;
        let mut link_text = String::new();
        let mut buf = String::new();
        for ts in line.tagged_strings() {
            let href = ts.tag.iter().find_map(|a| match a {
                html2text::render::RichAnnotation::Link(u) => Some(u.clone()),
                _ => None,
            });
            if link.is_some() && href != link {
                close_link(&mut buf, link.take(), &link_text);
                link_text.clear();
            }
            if href.is_some() {
                link = href;
                link_text.push_str(&ts.s);
            }
            buf.push_str(&ts.s);
        }
        close_link(&mut buf, link.take(), &link_text);
        out.push_str(buf.trim_end());
        out.push('\n');
    }
    // Put placeholders inside attributes (now only in links) back.
    let restored = restore_lenient(&out, &p.tags);
    // Collapse runs of blank lines left by layout blocks.
    let mut result = String::with_capacity(restored.len());
    let mut blank = 0;
    for l in restored.lines() {
        if l.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        result.push_str(l);
        result.push('\n');
    }
    Ok(result.trim().to_string() + "\n")
}

fn close_link(buf: &mut String, link: Option<String>, text: &str) {
    let Some(url) = link else { return };
    let u = url.trim();
    if u.is_empty()
        || u.starts_with('#')
        || u.starts_with("mailto:")
        || u.starts_with("tel:")
        || text.trim() == u
    {
        return;
    }
    let _ = write!(buf, " <{u}>");
}

/// Like [`restore`] but placeholders that went missing are not an error (in
/// the text part, tags inside dropped attributes are meant to go).
fn restore_lenient(text: &str, tags: &[String]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let s = at + OPEN.len_utf8();
        match rest[s..].find(CLOSE) {
            Some(len) => {
                if let Some(t) = rest[s..s + len]
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| tags.get(n))
                {
                    out.push_str(t);
                }
                rest = &rest[s + len + CLOSE.len_utf8()..];
            }
            None => {
                rest = &rest[s..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where `pat` is in `s`, or an error naming both.
    fn at(s: &str, pat: &str) -> Result<usize, String> {
        s.find(pat).ok_or_else(|| format!("`{pat}` not in:\n{s}"))
    }

    #[test]
    fn loops_over_table_rows_survive_css_inlining() -> Result<(), String> {
        let src = r#"<html><head><title>{{ subject }}</title><style>td { color: red } @media (max-width: 600px) { td { color: blue } }</style></head>
<body><table>{% for item in cart.items %}<tr><td class="x" title="{{ item.name }}">{{ item.name }}</td></tr>{% endfor %}</table></body></html>"#;
        let out = inline_css(src)?;
        let for_at = at(&out, "{% for item in cart.items %}")?;
        let tr_at = at(&out, "<tr>")?;
        let end_at = at(&out, "{% endfor %}")?;
        assert!(for_at < tr_at && tr_at < end_at, "{out}");
        assert!(out.contains(r#"style="color: red;""#), "{out}");
        assert!(out.contains(r#"title="{{ item.name }}""#), "{out}");
        assert!(out.contains("<title>{{ subject }}</title>"), "{out}");
        assert!(out.contains("@media"), "{out}");
        Ok(())
    }

    #[test]
    fn text_is_derived_with_tags_in_place_and_links_written_out() -> Result<(), String> {
        let src = r#"<html><body><h1>{{ greeting }}</h1><table>{% for p in products %}<tr><td><a href="{{ p.url }}">{{ p.name }}</a></td><td>{{ p.price }}</td></tr>{% endfor %}</table><p><a href="https://shop.example/">Shop</a> &amp; more</p></body></html>"#;
        let t = derive_text(src)?;
        let f = at(&t, "{% for p in products %}")?;
        let name = at(&t, "{{ p.name }} <{{ p.url }}>")?;
        let e = at(&t, "{% endfor %}")?;
        assert!(f < name && name < e, "{t}");
        assert!(t.contains("Shop <https://shop.example/> & more"), "{t}");
        assert!(t.contains("{{ greeting }}"), "{t}");
        Ok(())
    }

    #[test]
    fn protect_and_restore_round_trip() -> Result<(), String> {
        let src =
            "<p a=\"{{ x }}\">{% if y %}{{ z }}{# c #}{% endif %}</p><style>p{}{{ w }}</style>";
        let p = protect(src);
        assert!(!p.text.contains("{{"));
        assert_eq!(restore(&p.text, &p.tags)?, src);
        Ok(())
    }

    #[test]
    fn mjml_compiles_and_keeps_tags() -> Result<(), String> {
        let html = mjml_to_html(
            "<mjml><mj-body><mj-section><mj-column><mj-text>{{ greeting }}</mj-text><mj-button href=\"{{ p.url }}\">Buy</mj-button></mj-column></mj-section><mj-raw>{% for p in products %}</mj-raw><mj-section><mj-column><mj-text>{{ p.name }}</mj-text></mj-column></mj-section><mj-raw>{% endfor %}</mj-raw></mj-body></mjml>",
        )?;
        assert!(html.contains("{{ greeting }}"), "{html}");
        assert!(html.contains("href=\"{{ p.url }}\""), "{html}");
        let f = at(&html, "{% for p in products %}")?;
        let n = at(&html, "{{ p.name }}")?;
        assert!(f < n && n < at(&html, "{% endfor %}")?);
        Ok(())
    }
}

#[cfg(test)]
mod wrap_tests {
    use super::wrap_long_lines;

    #[test]
    fn long_lines_break_only_between_attributes() {
        let cell = r#"<td class="a b" style="color: red; padding: 0 8px">x y</td>"#;
        let html = cell.repeat(40);
        let out = wrap_long_lines(&html);
        assert!(out.lines().all(|l| l.len() < 600), "{out}");
        // Only spaces inside tags and outside quotes became line breaks.
        assert_eq!(out.replace('\n', " "), html);
        for l in out.lines() {
            assert!(!l.starts_with("y</td>") && !l.contains("padding:\n"));
        }
        assert_eq!(wrap_long_lines("<p>short</p>"), "<p>short</p>");
    }
}
