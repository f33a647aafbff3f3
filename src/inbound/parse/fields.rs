//! Header fields in text: the field blocks of a delivery-status report
//! (RFC 3464) or a feedback report (RFC 5965), and the headers of the
//! returned copy of the original message, whether attached whole, attached as
//! `text/rfc822-headers`, or quoted in the text of a plain bounce.

use super::text::{clean_address, clean_message_id, verp_addresses};

/// One field of a block: the name in lower case and the unfolded value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Field {
    /// The field name, lower case.
    pub name: String,
    /// The value with continuation lines joined by a space.
    pub value: String,
}

/// The name of a header line `Name: value`, if the line is one.
fn field_name(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let valid = !name.is_empty()
        && name.len() <= 76
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    valid.then_some((name, value))
}

/// The field blocks of a report part: groups of `Name: value` lines separated
/// by blank lines, continuation lines (starting with white space) joined to
/// the field before them. Lines that are not fields are skipped.
pub(super) fn field_blocks(text: &str) -> Vec<Vec<Field>> {
    let mut blocks = Vec::new();
    let mut block: Vec<Field> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(last) = block.last_mut() {
                last.value.push(' ');
                last.value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = field_name(line) {
            block.push(Field {
                name: name.to_ascii_lowercase(),
                value: value.trim().to_owned(),
            });
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    blocks
}

/// The value of the first field called `name` (lower case) in a block.
pub(super) fn field<'a>(block: &'a [Field], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.as_str())
        .filter(|v| !v.is_empty())
}

/// Fields of the returned copy that name its envelope sender.
const RETURN_PATH_FIELDS: &[&str] = &[
    "return-path",
    "x-original-return-path",
    "x-return-path",
    "x-envelope-from",
    "envelope-from",
    "x-envelope-sender",
    "x-sender",
    "x-postfix-sender",
    "original-mail-from",
];

/// What the returned copy (or the report's own fields) say about the
/// original message.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct CopyInfo {
    /// The original Message-ID, without brackets.
    pub message_id: Option<String>,
    /// Envelope senders, deduplicated without regard to case.
    pub return_paths: Vec<String>,
    /// The first address of the copy's `To:`.
    pub to: Option<String>,
    /// The first address of the copy's `From:` (the original author).
    pub from: Option<String>,
    /// Microsoft's `X-HmXmrOriginalRecipient` (old JMRP complaints).
    pub hotmail_recipient: Option<String>,
}

impl CopyInfo {
    /// Adds an envelope sender unless it is empty or already known.
    pub fn add_return_path(&mut self, address: &str) {
        if address.is_empty()
            || self
                .return_paths
                .iter()
                .any(|known| known.eq_ignore_ascii_case(address))
        {
            return;
        }
        self.return_paths.push(address.to_owned());
    }

    /// Takes one header field of the copy into account.
    pub fn take_field(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "message-id" if self.message_id.is_none() => {
                self.message_id = clean_message_id(value);
            }
            "to" if self.to.is_none() => self.to = clean_address(value),
            "from" if self.from.is_none() => self.from = clean_address(value),
            "x-hmxmroriginalrecipient" if self.hotmail_recipient.is_none() => {
                self.hotmail_recipient = clean_address(value);
            }
            "received" => {
                // Exim and others note the envelope sender in Received:
                // "(envelope-from <sender>)".
                let lower = value.to_ascii_lowercase();
                for key in ["envelope-from", "envelope-sender"] {
                    if let Some(at) = lower.find(key) {
                        let rest = value.get(at + key.len()..).unwrap_or_default();
                        let rest = rest.split([')', ';']).next().unwrap_or_default();
                        if let Some(address) = clean_address(rest) {
                            self.add_return_path(&address);
                        }
                    }
                }
            }
            _ if RETURN_PATH_FIELDS.contains(&name.as_str()) => {
                if let Some(address) = clean_address(value) {
                    self.add_return_path(&address);
                }
            }
            _ => {}
        }
        for verp in verp_addresses(value) {
            self.add_return_path(&verp);
        }
    }

    /// Reads the header block at the start of `text` (the raw copy or a
    /// `text/rfc822-headers` part), up to its first blank line.
    pub fn scan_headers(&mut self, text: &str) {
        let mut current: Option<(String, String)> = None;
        let mut seen_field = false;
        for line in text.lines() {
            if line.trim().is_empty() {
                if seen_field {
                    break;
                }
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = current.as_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((name, value)) = current.take() {
                self.take_field(&name, &value);
            }
            if let Some((name, value)) = field_name(line) {
                seen_field = true;
                current = Some((name.to_owned(), value.trim().to_owned()));
            }
        }
        if let Some((name, value)) = current {
            self.take_field(&name, &value);
        }
    }

    /// Reads header fields quoted anywhere in free text (the copy a plain
    /// bounce puts below its report, maybe indented or quoted with `>`).
    /// Only fields that matter here are read; a value on the next line is
    /// taken when the field's own line has none.
    pub fn scan_quoted(&mut self, text: &str) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim_start_matches(|c: char| c == '>' || c.is_whitespace());
            let Some((name, value)) = field_name(line) else {
                continue;
            };
            let lower = name.to_ascii_lowercase();
            let wanted = matches!(
                lower.as_str(),
                "message-id" | "to" | "from" | "x-hmxmroriginalrecipient" | "received"
            ) || RETURN_PATH_FIELDS.contains(&lower.as_str());
            if !wanted {
                continue;
            }
            let mut value = value.trim().to_owned();
            if value.is_empty()
                && let Some(next) = lines.get(i + 1)
            {
                value = next.trim().to_owned();
            }
            self.take_field(name, &value);
        }
        for verp in verp_addresses(text) {
            self.add_return_path(&verp);
        }
    }

    /// Takes what another source found where this one found nothing.
    pub fn merge(&mut self, other: CopyInfo) {
        if self.message_id.is_none() {
            self.message_id = other.message_id;
        }
        if self.to.is_none() {
            self.to = other.to;
        }
        if self.from.is_none() {
            self.from = other.from;
        }
        if self.hotmail_recipient.is_none() {
            self.hotmail_recipient = other.hotmail_recipient;
        }
        for path in other.return_paths {
            self.add_return_path(&path);
        }
    }

    /// The VERP return paths among the envelope senders.
    #[cfg(test)]
    pub fn verps(&self) -> Vec<&str> {
        self.return_paths
            .iter()
            .map(String::as_str)
            .filter(|a| super::text::is_verp(a))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_split_on_blank_lines_and_unfolded() {
        let blocks = field_blocks(
            "Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; a@b.example\n\
             Diagnostic-Code: smtp; 550 5.1.1 no\n  such user\n",
        );
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            field(&blocks[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 no such user")
        );
    }

    #[test]
    fn copy_headers_give_id_and_envelope_senders() {
        let mut info = CopyInfo::default();
        info.scan_headers(
            "Return-Path: <b-0123456789abcdef0123456789abcdef0123@bounces.shop.example>\n\
             Received: from a by b (envelope-from <other@shop.example>)\n\
             \tid 1; Mon, 1 Jan 2024\n\
             Message-ID:\n <c1.2.3@shop.example>\n\nMessage-ID: <body@x.example>\n",
        );
        assert_eq!(info.message_id.as_deref(), Some("c1.2.3@shop.example"));
        assert_eq!(
            info.return_paths,
            vec![
                "b-0123456789abcdef0123456789abcdef0123@bounces.shop.example",
                "other@shop.example"
            ]
        );
        assert_eq!(info.verps().len(), 1);
    }

    #[test]
    fn quoted_headers_are_found_in_text() {
        let mut info = CopyInfo::default();
        info.scan_quoted("Original message headers:\n\n  Message-ID: <c9.1.2@shop.example>\n> To: Anna <anna@example.org>\n");
        assert_eq!(info.message_id.as_deref(), Some("c9.1.2@shop.example"));
        assert_eq!(info.to.as_deref(), Some("anna@example.org"));
    }
}
