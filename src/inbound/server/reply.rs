//! Reply lines: formatting, and cleaning what comes from outside.
//!
//! Reply text that comes from the sink (a refusal, a delivery id or error)
//! or echoes the client (an unsupported parameter) is cut to one line of
//! printable ASCII, so it can never end the reply early or start a second
//! one; status codes from the sink are checked against their reply code.

use std::fmt::Display;

use smtp_proto::Response;

use super::RcptDecision;

/// The longest text taken from outside into a reply.
const MAX_TEXT: usize = 200;

/// Appends one reply line (`code class.subject.detail text`).
pub(super) fn push(out: &mut Vec<u8>, code: u16, esc: [u8; 3], text: impl Display) {
    // Writing into a Vec cannot fail.
    let _ = Response {
        code,
        esc,
        message: text,
    }
    .write(out);
}

/// `text` as one line of printable ASCII, at most [`MAX_TEXT`] characters;
/// anything else becomes `?`.
pub(super) fn clean(text: &str) -> String {
    let mut s: String = text
        .trim()
        .chars()
        .take(MAX_TEXT)
        .map(|c| {
            if c == ' ' || c.is_ascii_graphic() {
                c
            } else {
                '?'
            }
        })
        .collect();
    s.truncate(s.trim_end().len());
    s
}

/// The host name as it may appear in a reply.
pub(super) fn hostname(name: &str) -> String {
    let name = clean(name).replace(' ', "");
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// The reply for a refused recipient: code, enhanced status and text
/// checked and cleaned.
pub(super) fn refusal(decision: &RcptDecision) -> (u16, [u8; 3], String) {
    let RcptDecision::Refuse { code, status, text } = decision else {
        return (250, [2, 1, 5], "Ok".into());
    };
    let code = if (400..600).contains(code) {
        *code
    } else {
        550
    };
    let class = (code / 100) as u8;
    let esc = parse_status(status)
        .filter(|esc| esc[0] == class)
        .unwrap_or([class, 0, 0]);
    let text = clean(text);
    let text = if text.is_empty() {
        "Recipient refused".into()
    } else {
        text
    };
    (code, esc, text)
}

/// `5.1.1` → `[5, 1, 1]` (RFC 3463: a class of 2, 4 or 5, then two numbers
/// of up to three digits; here up to 255, what the reply writer can hold).
fn parse_status(status: &str) -> Option<[u8; 3]> {
    let mut parts = status.trim().split('.');
    let mut esc = [0u8; 3];
    for slot in &mut esc {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = part.parse().ok()?;
    }
    if parts.next().is_some() || !matches!(esc[0], 2 | 4 | 5) {
        return None;
    }
    Some(esc)
}

/// The banner.
pub(super) fn banner(hostname: &str) -> String {
    format!("220 {hostname} ESMTP Herald\r\n")
}

/// What a connection over the limits gets before it is closed.
pub(super) fn too_many_connections(hostname: &str) -> String {
    format!("421 4.7.0 {hostname} Too many connections, try again later\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(code: u16, status: &str, text: &str) -> (u16, [u8; 3], String) {
        refusal(&RcptDecision::Refuse {
            code,
            status: status.into(),
            text: text.into(),
        })
    }

    #[test]
    fn sink_refusals_are_checked_and_cleaned() {
        assert_eq!(
            refuse(550, "5.1.1", "No such user"),
            (550, [5, 1, 1], "No such user".into())
        );
        assert_eq!(
            refuse(550, "5.7.26", "DMARC"),
            (550, [5, 7, 26], "DMARC".into())
        );
        assert_eq!(
            refuse(450, "4.2.1", "later"),
            (450, [4, 2, 1], "later".into())
        );
        // A status of the wrong class, or none, is replaced.
        assert_eq!(refuse(550, "4.1.1", "x").1, [5, 0, 0]);
        assert_eq!(refuse(550, "", "x").1, [5, 0, 0]);
        assert_eq!(refuse(550, "5.1", "x").1, [5, 0, 0]);
        assert_eq!(refuse(550, "5.1.1.1", "x").1, [5, 0, 0]);
        assert_eq!(refuse(550, "5.1000.1", "x").1, [5, 0, 0]);
        // A code that is no refusal becomes 550.
        assert_eq!(refuse(250, "2.0.0", "x").0, 550);
        assert_eq!(refuse(9999, "5.1.1", "x").0, 550);
        // The text cannot break the reply.
        assert_eq!(refuse(550, "5.1.1", "a\r\n250 ok").2, "a??250 ok");
        assert_eq!(refuse(550, "5.1.1", "").2, "Recipient refused");
        assert_eq!(refuse(550, "5.1.1", &"x".repeat(1000)).2.len(), MAX_TEXT);
    }

    #[test]
    fn replies_are_single_lines() {
        let mut out = Vec::new();
        push(&mut out, 451, [4, 3, 0], clean("disk\nfull ünd"));
        assert_eq!(out, b"451 4.3.0 disk?full ?nd\r\n");
        assert_eq!(hostname("mx.example\r\n"), "mx.example");
        assert_eq!(hostname("mx\r\n.example"), "mx??.example");
        assert_eq!(hostname(" "), "localhost");
    }
}
