//! A CSV file as shops have it, before the CSV reader sees it: its
//! encoding (UTF-8, with or without a BOM; UTF-16 with a BOM; Windows-1250
//! as Polish Excel saves "CSV"; or what the caller names) decoded to UTF-8,
//! and its delimiter (`,`, `;` as Excel writes it where the decimal comma
//! is used, or tab) found from the header line.

use std::cell::Cell;
use std::io::{Cursor, Read};
use std::rc::Rc;

use encoding_rs::Encoding;

/// How much of the file is looked at first.
const PEEK: usize = 64 * 1024;

/// The delimiters told apart by [`sniff_delimiter`].
const CANDIDATES: [u8; 3] = [b',', b';', b'\t'];

/// The input ready for the CSV reader.
pub struct Prepared<'a> {
    /// UTF-8 bytes.
    pub reader: Box<dyn Read + 'a>,
    /// The field delimiter.
    pub delimiter: u8,
    /// The encoding the file is read in, as far as decided (UTF-8 until
    /// a byte beyond ASCII says otherwise).
    pub encoding: Rc<Cell<&'static Encoding>>,
    /// Whether the caller named the encoding.
    pub encoding_named: bool,
}

/// Looks at the file's first line, picks the delimiter (unless given) and
/// returns the reader of its UTF-8 text. The encoding is decided as soon as
/// there is evidence, never by waiting for more of an upload than has come:
/// a BOM or a named encoding at once; otherwise the first bytes beyond
/// ASCII (in the header, or in the first chunk that has any) decide.
pub fn prepare<'a>(
    mut input: impl Read + 'a,
    delimiter: Option<u8>,
    encoding: Option<&'static Encoding>,
) -> std::io::Result<Prepared<'a>> {
    let mut head = Vec::with_capacity(8192);
    let at_end = fill_line(&mut input, &mut head, PEEK)?;
    let bom = Encoding::for_bom(&head);
    let named = encoding.or(bom.map(|(e, _)| e));
    let decided = named.or_else(|| {
        let evidence = head.iter().any(|b| !b.is_ascii());
        (evidence && conclusive(&head, at_end)).then(|| guess(&head, at_end))
    });
    let delimiter = delimiter.unwrap_or_else(|| {
        let (text, _) = decided
            .unwrap_or(encoding_rs::UTF_8)
            .decode_with_bom_removal(&head);
        sniff_delimiter(first_line(&text))
    });
    if decided == Some(encoding_rs::UTF_8) && head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        head.drain(..3);
    }
    let seen = Rc::new(Cell::new(encoding_rs::UTF_8));
    let mut lazy = Lazy {
        inner: Some(input),
        buf: head,
        pos: 0,
        at_end,
        mode: Mode::Undecided,
        seen: seen.clone(),
    };
    if let Some(e) = decided {
        lazy.decide(e);
    }
    Ok(Prepared {
        reader: Box::new(lazy),
        delimiter,
        encoding: seen,
        encoding_named: encoding.is_some(),
    })
}

/// Reads until `buf` holds a line break, `want` bytes or the input ends;
/// true at the end.
fn fill_line(input: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<bool> {
    let mut chunk = [0u8; 8192];
    while buf.len() < want && !buf.contains(&b'\n') {
        let n = input.read(&mut chunk[..(want - buf.len()).min(8192)])?;
        if n == 0 {
            return Ok(true);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(false)
}

/// Whether `bytes` say something about the encoding: a byte beyond ASCII
/// that is not the start of a sequence cut at the end of what has come.
fn conclusive(bytes: &[u8], at_end: bool) -> bool {
    if at_end {
        return bytes.iter().any(|b| !b.is_ascii());
    }
    let cut = match std::str::from_utf8(bytes) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => bytes.len(),
    };
    bytes[..cut].iter().any(|b| !b.is_ascii())
}

/// How the bytes are passed on.
enum Mode<'a> {
    /// Only ASCII so far: passed as they are.
    Undecided,
    /// UTF-8: passed as they are (bytes that are not UTF-8 reject their row).
    Utf8,
    /// Decoded to UTF-8.
    Decode(Box<dyn Read + 'a>),
}

/// The input, passed on as UTF-8 once its encoding is known.
struct Lazy<'a, R> {
    inner: Option<R>,
    /// Read, not yet passed on (from `pos`).
    buf: Vec<u8>,
    pos: usize,
    at_end: bool,
    mode: Mode<'a>,
    /// The encoding decided (UTF-8 until then).
    seen: Rc<Cell<&'static Encoding>>,
}

impl<'a, R: Read + 'a> Lazy<'a, R> {
    fn decide(&mut self, enc: &'static Encoding) {
        self.seen.set(enc);
        if enc == encoding_rs::UTF_8 {
            self.mode = Mode::Utf8;
            return;
        }
        let rest = Cursor::new(self.buf.split_off(self.pos));
        self.pos = 0;
        let reader: Box<dyn Read + 'a> = match self.inner.take() {
            Some(inner) => Box::new(rest.chain(inner)),
            None => Box::new(rest),
        };
        self.mode = Mode::Decode(Box::new(
            encoding_rs_io::DecodeReaderBytesBuilder::new()
                .encoding(Some(enc))
                .bom_override(true)
                .build(reader),
        ));
    }

    /// Reads more into `buf`; false at the end.
    fn more(&mut self) -> std::io::Result<bool> {
        let Some(inner) = self.inner.as_mut() else {
            return Ok(false);
        };
        let mut chunk = [0u8; 8192];
        let n = inner.read(&mut chunk)?;
        if n == 0 {
            self.at_end = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }
}

impl<'a, R: Read + 'a> Read for Lazy<'a, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Mode::Decode(d) = &mut self.mode {
                return d.read(out);
            }
            if self.pos >= self.buf.len() {
                self.buf.clear();
                self.pos = 0;
                if !self.more()? {
                    return Ok(0);
                }
            }
            if matches!(self.mode, Mode::Undecided) {
                let pending = &self.buf[self.pos..];
                if pending.iter().any(|b| !b.is_ascii()) {
                    if !conclusive(pending, self.at_end) && self.more()? {
                        continue;
                    }
                    let enc = guess(&self.buf[self.pos..], self.at_end);
                    self.decide(enc);
                    continue;
                }
            }
            let pending = &self.buf[self.pos..];
            let n = pending.len().min(out.len());
            out[..n].copy_from_slice(&pending[..n]);
            self.pos += n;
            return Ok(n);
        }
    }
}

/// Letters of Polish and German as Windows-1250 writes them (ą ć ę ł ń ó
/// ś ź ż, their capitals, ä ö ü ß Ä Ö Ü).
const CP1250_LETTERS: &[u8] = &[
    0xB9, 0xE6, 0xEA, 0xB3, 0xF1, 0xF3, 0x9C, 0x9F, 0xBF, 0xA5, 0xC6, 0xCA, 0xA3, 0xD1, 0xD3, 0x8C,
    0x8F, 0xAF, 0xE4, 0xF6, 0xFC, 0xDF, 0xC4, 0xD6, 0xDC,
];

/// The encoding of a file without a BOM from its first bytes: UTF-8,
/// unless the bytes are not UTF-8 and look like Windows-1250 text (what
/// Excel saves as "CSV" on a Polish Windows; German umlauts and ß have the
/// same bytes in Windows-1252, so a German file reads right too): more
/// bytes that are not UTF-8 than UTF-8 letters beyond ASCII, and most of
/// them Polish or German letters in Windows-1250. A UTF-8 file with a
/// stray bad row stays UTF-8 (that row is rejected).
fn guess(peek: &[u8], at_end: bool) -> &'static Encoding {
    if looks_utf8(peek, at_end) {
        return encoding_rs::UTF_8;
    }
    let (mut utf8_letters, mut invalid, mut cp1250_letters) = (0usize, 0usize, 0usize);
    for chunk in peek.utf8_chunks() {
        utf8_letters += chunk.valid().chars().filter(|c| !c.is_ascii()).count();
        invalid += chunk.invalid().len();
        cp1250_letters += chunk
            .invalid()
            .iter()
            .filter(|b| CP1250_LETTERS.contains(b))
            .count();
    }
    if invalid > utf8_letters && cp1250_letters * 10 >= invalid * 8 {
        encoding_rs::WINDOWS_1250
    } else {
        encoding_rs::UTF_8
    }
}

/// Valid UTF-8, but for a sequence cut at the end of the look (not at the
/// end of the file).
fn looks_utf8(bytes: &[u8], at_end: bool) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(_) => true,
        Err(e) => !at_end && e.error_len().is_none(),
    }
}

fn first_line(text: &str) -> &str {
    text.split(['\n', '\r']).next().unwrap_or("")
}

/// The delimiter of a header line: the candidate that occurs most often
/// outside quotes (`,` when none does).
pub fn sniff_delimiter(header: &str) -> u8 {
    let mut counts = [0usize; CANDIDATES.len()];
    let mut quoted = false;
    for b in header.bytes() {
        if b == b'"' {
            quoted = !quoted;
        } else if !quoted && let Some(i) = CANDIDATES.iter().position(|c| *c == b) {
            counts[i] += 1;
        }
    }
    let (best, n) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))
        .unwrap_or((0, &0));
    if *n == 0 { b',' } else { CANDIDATES[best] }
}

/// A delimiter as a person names it: `,` `;` `|`, `tab` or `\t`.
pub fn parse_delimiter(s: &str) -> Option<u8> {
    match s {
        "tab" | "\\t" | "\t" => Some(b'\t'),
        "," | ";" | "|" | ":" => s.bytes().next(),
        _ => None,
    }
}

/// The name of a delimiter, for messages.
pub fn delimiter_name(d: u8) -> String {
    match d {
        b'\t' => "tab".into(),
        other => format!("`{}`", other as char),
    }
}

/// An encoding by its name or label (`windows-1250`, `cp1250`, `latin2`,
/// `utf-8`, `utf-16le`…).
pub fn parse_encoding(s: &str) -> Option<&'static Encoding> {
    Encoding::for_label(s.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        input: &[u8],
        d: Option<u8>,
        e: Option<&'static Encoding>,
    ) -> std::io::Result<(String, u8, &'static str)> {
        let mut p = prepare(input, d, e)?;
        let mut out = String::new();
        p.reader.read_to_string(&mut out)?;
        Ok((out, p.delimiter, p.encoding.get().name()))
    }

    #[test]
    fn excel_files_of_poland_and_of_germany() -> std::io::Result<()> {
        // "email;imię\nanna@example.pl;Łucja" in Windows-1250.
        let pl = b"email;imi\xea\r\nanna@example.pl;\xa3ucja\r\n";
        let (text, d, enc) = read_all(pl, None, None)?;
        assert_eq!((d, enc), (b';', "windows-1250"));
        assert_eq!(text, "email;imię\r\nanna@example.pl;Łucja\r\n");
        let (text, d, enc) = read_all(
            b"\xef\xbb\xbf\"email\"\t\"name\"\nx@y.de\tJ\xc3\xbcrgen\n",
            None,
            None,
        )?;
        assert_eq!((d, enc), (b'\t', "UTF-8"));
        assert_eq!(text, "\"email\"\t\"name\"\nx@y.de\tJürgen\n");
        Ok(())
    }

    /// Hands out one chunk per read, as an upload arrives, and counts the
    /// reads.
    struct Chunks(Vec<&'static [u8]>, std::rc::Rc<Cell<usize>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1.set(self.1.get() + 1);
            if self.0.is_empty() {
                return Ok(0);
            }
            let c = self.0.remove(0);
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                self.0.insert(0, &c[n..]);
            }
            Ok(n)
        }
    }

    #[test]
    fn an_ascii_header_waits_for_nothing_and_a_later_chunk_decides() -> std::io::Result<()> {
        let reads = std::rc::Rc::new(Cell::new(0));
        let chunks = Chunks(
            vec![
                b"email,name\nann@x.pl,Ann\n",
                b"lucja@x.pl,\xa3ucja \xbf\xf3\xb3w\n",
            ],
            reads.clone(),
        );
        let mut p = prepare(chunks, None, None)?;
        // Only the header's chunk was read: a slow upload is not waited for.
        assert_eq!(reads.get(), 1);
        assert_eq!(p.encoding.get(), encoding_rs::UTF_8);
        let mut out = String::new();
        p.reader.read_to_string(&mut out)?;
        assert_eq!(out, "email,name\nann@x.pl,Ann\nlucja@x.pl,Łucja żółw\n");
        assert_eq!(p.encoding.get(), encoding_rs::WINDOWS_1250);
        Ok(())
    }

    #[test]
    fn a_utf8_file_with_a_stray_bad_row_stays_utf8() {
        assert_eq!(
            guess(b"a,b\nx@y.pl,\xc5\x81ucja\nz@y.pl,\xff\n", true),
            encoding_rs::UTF_8
        );
        assert_eq!(guess(b"a,b\nz@y.pl,\xff\xfe\n", true), encoding_rs::UTF_8);
        assert_eq!(
            guess(b"a,b\nz@y.pl,\xa3ucja \xbf\xf3\xb3w\n", true),
            encoding_rs::WINDOWS_1250
        );
    }

    #[test]
    fn the_delimiter_is_the_most_frequent_outside_quotes() {
        assert_eq!(sniff_delimiter("email,first_name"), b',');
        assert_eq!(sniff_delimiter("email;\"a,b\";c"), b';');
        assert_eq!(sniff_delimiter("email"), b',');
        assert_eq!(sniff_delimiter("a\tb\tc,d"), b'\t');
        assert_eq!(parse_delimiter("tab"), Some(b'\t'));
        assert_eq!(parse_delimiter("x"), None);
        assert_eq!(
            parse_encoding("cp1250").map(|e| e.name()),
            Some("windows-1250")
        );
    }

    #[test]
    fn named_encoding_and_delimiter_win() -> std::io::Result<()> {
        let (text, d, enc) = read_all(
            b"email|n\nx@y.pl|\xb1\n",
            Some(b'|'),
            parse_encoding("latin2"),
        )?;
        assert_eq!((d, enc), (b'|', "ISO-8859-2"));
        assert_eq!(text, "email|n\nx@y.pl|ą\n");
        Ok(())
    }
}
