//! Free-text helpers for the report parser: folding text for pattern
//! matching, and finding addresses, enhanced status codes (RFC 3463) and SMTP
//! reply codes in what a mail system wrote for people.
//!
//! Everything here works on text of any shape and never panics: positions are
//! found by scanning bytes and every slice goes through `get`.

/// Text folded for matching: lower case, Polish letters without their
/// diacritics (ą→a, ł→l, ż→z …, so "przepełniona" and the ASCII-only
/// "przepelniona" that SMTP replies carry look the same), typographic
/// apostrophes as `'`, and every run of white space as one space.
pub(super) fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        let c = match c {
            'ą' | 'Ą' => 'a',
            'ć' | 'Ć' => 'c',
            'ę' | 'Ę' => 'e',
            'ł' | 'Ł' => 'l',
            'ń' | 'Ń' => 'n',
            'ó' | 'Ó' => 'o',
            'ś' | 'Ś' => 's',
            'ź' | 'Ź' | 'ż' | 'Ż' => 'z',
            '\u{2018}' | '\u{2019}' | '\u{02bc}' => '\'',
            c => c,
        };
        out.extend(c.to_lowercase());
    }
    out
}

/// Whether folded text holds any of the (folded) phrases.
pub(super) fn contains_any(folded: &str, phrases: &[&str]) -> bool {
    phrases.iter().any(|p| folded.contains(p))
}

/// Whether folded text has `first` followed by `then` within `within` bytes
/// (a phrase whose middle varies: "account … disabled", "konto … usunięte").
pub(super) fn near(folded: &str, first: &str, then: &str, within: usize) -> bool {
    let mut from = 0;
    while let Some(found) = folded.get(from..).and_then(|rest| rest.find(first)) {
        let after = from + found + first.len();
        let window_end = floor_boundary(folded, (after + within + then.len()).min(folded.len()));
        if folded
            .get(after..window_end)
            .is_some_and(|window| window.contains(then))
        {
            return true;
        }
        from = after;
    }
    false
}

/// Whether any pair of [`near`] holds.
pub(super) fn near_any(folded: &str, pairs: &[(&str, &str)], within: usize) -> bool {
    pairs.iter().any(|(a, b)| near(folded, a, b, within))
}

/// The largest char boundary at or below `at`.
fn floor_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The first enhanced status code (RFC 3463, `class.subject.detail`, e.g.
/// `5.1.1`) in the text. The class is 2, 4 or 5 and the subject 0 to 7, and
/// the code stands alone, so IP addresses ("192.0.2.1") and version numbers
/// ("Exim 4.97.1") are not taken for one.
pub(super) fn find_status(text: &str) -> Option<String> {
    // A failure notice quotes success replies too ("250 2.1.0 Sender ok"):
    // the first failure code is the one that explains it.
    let bytes = text.as_bytes();
    let mut success = None;
    for i in 0..bytes.len() {
        if let Some(end) = status_at(bytes, i) {
            if bytes[i] != b'2' {
                return text.get(i..end).map(str::to_owned);
            }
            success = success.or(Some((i, end)));
        }
    }
    success.and_then(|(start, end)| text.get(start..end).map(str::to_owned))
}

/// The end of an enhanced status code starting at `i`, if one does.
fn status_at(bytes: &[u8], i: usize) -> Option<usize> {
    let class = *bytes.get(i)?;
    if !matches!(class, b'2' | b'4' | b'5') {
        return None;
    }
    if i > 0 {
        let prev = bytes[i - 1];
        if prev.is_ascii_alphanumeric() || prev == b'.' || prev == b'_' {
            return None;
        }
    }
    if bytes.get(i + 1) != Some(&b'.') {
        return None;
    }
    let (subject_end, subject) = digits(bytes, i + 2, 3)?;
    if subject > 7 || bytes.get(subject_end) != Some(&b'.') {
        return None;
    }
    let (end, _) = digits(bytes, subject_end + 1, 3)?;
    match bytes.get(end) {
        Some(b) if b.is_ascii_alphanumeric() => None,
        Some(b'.') if bytes.get(end + 1).is_some_and(u8::is_ascii_digit) => None,
        _ => Some(end),
    }
}

/// One to `max` digits from `start`: where they end and their value. More
/// digits than `max` is no match.
fn digits(bytes: &[u8], start: usize, max: usize) -> Option<(usize, u32)> {
    let mut end = start;
    let mut value: u32 = 0;
    while let Some(b) = bytes.get(end).filter(|b| b.is_ascii_digit()) {
        value = value * 10 + u32::from(b - b'0');
        end += 1;
        if end - start > max {
            return None;
        }
    }
    (end > start).then_some((end, value))
}

/// The first SMTP reply code (`550`, `452`, …) that stands as a reply code:
/// three digits starting with 2, 4 or 5, not part of a longer number or a
/// word, followed by a space, a dash or the end of the line.
pub(super) fn find_smtp_code(text: &str) -> Option<u16> {
    let bytes = text.as_bytes();
    let mut success = None;
    for i in 0..bytes.len() {
        if !matches!(bytes[i], b'2' | b'4' | b'5') {
            continue;
        }
        if i > 0 {
            let prev = bytes[i - 1];
            if prev.is_ascii_alphanumeric() || matches!(prev, b'.' | b'-' | b'_' | b'#' | b'/') {
                continue;
            }
        }
        let Some(code) = bytes.get(i..i + 3) else {
            break;
        };
        if !code.iter().all(u8::is_ascii_digit) {
            continue;
        }
        if !matches!(
            bytes.get(i + 3),
            None | Some(b' ' | b'-' | b'\r' | b'\n' | b'\t')
        ) {
            continue;
        }
        let value = code
            .iter()
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        if value >= 400 {
            return Some(value);
        }
        success = success.or(Some(value));
    }
    success
}

/// Characters that may stand in the local part of an address found in text.
fn local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-=!#$&'*/?^`{|}~".contains(&b)
}

/// Characters that may stand in a domain found in text.
fn domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-'
}

/// Every mail address in free text, in order, with the byte offset where
/// each starts. An address needs a dotted domain; quotes and brackets around
/// it are not part of it.
pub(super) fn addresses(text: &str) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'@' {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > 0 && local_char(bytes[start - 1]) {
            start -= 1;
        }
        // A leading quote or dot belongs to the text around the address.
        while start < i && matches!(bytes[start], b'\'' | b'.' | b'`' | b'=') {
            start += 1;
        }
        let mut end = i + 1;
        while end < bytes.len() && domain_char(bytes[end]) {
            end += 1;
        }
        while end > i + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = text.get(i + 1..end).unwrap_or_default();
        if start < i
            && domain.contains('.')
            && !domain.starts_with('.')
            && let Some(address) = text.get(start..end)
        {
            found.push((start, address.to_owned()));
        }
        i = end.max(i + 1);
    }
    found
}

/// The address in a field value such as `rfc822; <User@example.org>`,
/// `<user@example.org>` or `"Name" <user@example.org>`: without the address
/// type, the brackets and a display name.
pub(super) fn clean_address(value: &str) -> Option<String> {
    let value = value.trim();
    let value = match value.split_once(';') {
        Some((kind, rest)) if !kind.contains('@') => rest.trim(),
        _ => value,
    };
    addresses(value).into_iter().next().map(|(_, a)| a)
}

/// Whether an address is one of Herald's VERP return paths: a local part of
/// `b-` and at least 16 hexadecimal digits (Herald writes 36).
pub(super) fn is_verp(address: &str) -> bool {
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    let Some(hex) = local
        .strip_prefix("b-")
        .or_else(|| local.strip_prefix("B-"))
    else {
        return false;
    };
    (16..=64).contains(&hex.len())
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && domain.contains('.')
}

/// Every VERP return path named anywhere in the text.
pub(super) fn verp_addresses(text: &str) -> Vec<String> {
    addresses(text)
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| is_verp(a))
        .collect()
}

/// A Message-ID value without its brackets: the first `<…>` in the value,
/// or the bare value when it has none.
pub(super) fn clean_message_id(value: &str) -> Option<String> {
    let value = value.trim();
    let inner = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => value.get(open + 1..close)?,
        _ => value.split_whitespace().next()?,
    };
    let inner = inner.trim();
    (!inner.is_empty() && inner.contains('@')).then(|| inner.to_owned())
}

/// Text as one line of at most `max` characters: white space runs as one
/// space, cut on a character boundary.
pub(super) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (count, word) in text.split_whitespace().enumerate() {
        if count > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    if let Some((cut, _)) = out.char_indices().nth(max) {
        out.truncate(cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_takes_off_polish_diacritics_and_joins_space() {
        assert_eq!(
            fold("Skrzynka  odbiorcy jest\n PRZEPEŁNIONA. Użytkownik"),
            "skrzynka odbiorcy jest przepelniona. uzytkownik"
        );
        assert_eq!(fold("wasn\u{2019}t"), "wasn't");
    }

    #[test]
    fn status_codes_stand_alone() {
        assert_eq!(find_status("550 5.1.1 <a@b.example>"), Some("5.1.1".into()));
        assert_eq!(find_status("No mailbox (#5.1.1)"), Some("5.1.1".into()));
        assert_eq!(
            find_status("550-5.7.26 unauthenticated"),
            Some("5.7.26".into())
        );
        assert_eq!(find_status("host 192.0.2.1 said"), None);
        assert_eq!(find_status("Exim 4.97.1 (Debian)"), None);
        assert_eq!(find_status("relay 10.4.2.1"), None);
        assert_eq!(find_status("5.1.10 RESOLVER"), Some("5.1.10".into()));
        assert_eq!(find_status("Status: 4.4.7."), Some("4.4.7".into()));
        assert_eq!(
            find_status("<<< 250 2.1.0 Sender ok\n<<< 550 5.1.1 unknown"),
            Some("5.1.1".into())
        );
        assert_eq!(find_status("250 2.0.0 Ok"), Some("2.0.0".into()));
    }

    #[test]
    fn smtp_codes_are_reply_codes() {
        assert_eq!(find_smtp_code("said: 550 5.1.1 user unknown"), Some(550));
        assert_eq!(find_smtp_code("smtp;552-5.2.2 over quota"), Some(552));
        assert_eq!(find_smtp_code("id S2017062302; 2024 550"), Some(550));
        assert_eq!(find_smtp_code("[192.0.2.250]"), None);
        assert_eq!(find_smtp_code("250 ok\n550 no"), Some(550));
    }

    #[test]
    fn addresses_are_found_in_text() {
        let found: Vec<String> = addresses("<jan@wp.pl>: said x@y and \"a.b@c.example.com.\"")
            .into_iter()
            .map(|(_, a)| a)
            .collect();
        assert_eq!(found, vec!["jan@wp.pl", "a.b@c.example.com"]);
        assert_eq!(
            clean_address("rfc822; <Anna@Example.org>"),
            Some("Anna@Example.org".into())
        );
        assert_eq!(clean_address("rfc822;"), None);
    }

    #[test]
    fn verp_addresses_have_the_herald_shape() {
        assert!(is_verp(
            "b-0123456789abcdef0123456789abcdef0123@bounces.shop.example"
        ));
        assert!(!is_verp("b-hello@bounces.shop.example"));
        assert!(!is_verp("news@shop.example"));
    }

    #[test]
    fn near_finds_phrases_apart() {
        assert!(near(
            "konto odbiorcy zostalo usuniete",
            "konto",
            "usunie",
            30
        ));
        assert!(!near(
            "konto ok. serwer zostal usuniety z listy",
            "konto",
            "usunie",
            10
        ));
        assert!(near("ąą konto ż usunięte", "konto", "usuni", 4));
        assert!(!near("konto ż", "konto", "usuni", 1));
    }

    #[test]
    fn one_line_cuts_on_characters() {
        assert_eq!(one_line("a\n  b\tc", 500), "a b c");
        assert_eq!(one_line("żółw", 2), "żó");
    }
}
