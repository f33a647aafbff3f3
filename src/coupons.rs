//! Coupon pools: named sets of single-use codes that sends hand out, one
//! code per message.
//!
//! A pool (per flow or campaign) is filled through
//! `POST /api/v1/coupons/{pool}` (a JSON list or a CSV file) and emptied one
//! code at a time by `WriteTables::take_coupon`, in the transaction that
//! queues the message the code goes into: a code is handed to at most one
//! message, and a message is never queued without its code (an empty pool
//! gives none, and the caller holds the step). The pool's counts (`added`,
//! `given`) are kept exactly in the same transactions; `low_water` says when
//! the pool is running low (`/metrics`, the pool's status).
//!
//! This module has the domain types and the input checks (pool names, codes,
//! the CSV upload); the tables are the store's (`store/coupons.rs`).

use serde::{Deserialize, Serialize};

/// Most codes one request may add.
pub const MAX_CODES_PER_REQUEST: usize = 100_000;

/// Longest code, in bytes.
pub const MAX_CODE_BYTES: usize = 128;

/// Longest pool name, in characters (ASCII only).
pub const MAX_POOL_NAME: usize = 64;

/// A pool's record (`coupon_pools_v1`): its low-water mark and its counts,
/// changed in the same transaction as its codes, so they are exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The pool is low when at most this many codes are free.
    pub low_water: u64,
    /// Codes ever added (duplicates not counted).
    pub added: u64,
    /// Codes handed out.
    pub given: u64,
    /// When the pool was created (ms since the epoch).
    pub created_ms: i64,
}

impl PoolInfo {
    /// Codes still free.
    pub fn free(&self) -> u64 {
        self.added.saturating_sub(self.given)
    }

    /// The pool's status as the API and metrics show it.
    pub fn status(&self, name: &str) -> PoolStatus {
        let free = self.free();
        PoolStatus {
            name: name.to_string(),
            low_water: self.low_water,
            added: self.added,
            given: self.given,
            free,
            low: free <= self.low_water,
        }
    }
}

/// A pool's status: its counts and whether it runs low.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Low-water mark.
    pub low_water: u64,
    /// Codes ever added.
    pub added: u64,
    /// Codes handed out.
    pub given: u64,
    /// Codes still free (`added - given`).
    pub free: u64,
    /// `free <= low_water`.
    pub low: bool,
}

/// To whom and when a code was handed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Given {
    /// What the caller named as the code's owner (an opaque string, for
    /// instance the automation step, contact and occurrence).
    pub owner: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

/// A code's record (`coupon_codes_v1`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeState {
    /// Set once the code is handed out; `None` while it is free.
    #[serde(default)]
    pub given: Option<Given>,
}

/// What one upload added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddedCoupons {
    /// New codes, now free.
    pub added: u64,
    /// Codes skipped: already in the pool (free or given) or repeated in
    /// the upload.
    pub duplicates: u64,
}

/// Input a coupon operation refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponError {
    /// A pool name outside the allowed syntax.
    #[error(
        "invalid pool name `{0}`: 1 to {MAX_POOL_NAME} letters, digits, `-`, `_` or `.` are allowed"
    )]
    PoolName(String),
    /// An empty code.
    #[error("{at}: the code is empty")]
    EmptyCode {
        /// Where: `line N` or a JSON path.
        at: String,
    },
    /// A code longer than [`MAX_CODE_BYTES`].
    #[error("{at}: the code is {len} bytes long (at most {MAX_CODE_BYTES})")]
    CodeTooLong {
        /// Where: `line N` or a JSON path.
        at: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A code with whitespace or control characters, or not UTF-8.
    #[error("{at}: the code {code:?} contains {what}")]
    CodeCharacters {
        /// Where: `line N` or a JSON path.
        at: String,
        /// The code (lossily decoded when it is not UTF-8).
        code: String,
        /// What is wrong.
        what: &'static str,
    },
    /// More codes than [`MAX_CODES_PER_REQUEST`] in one request.
    #[error(
        "too many codes in one request: {0} (at most {MAX_CODES_PER_REQUEST}; upload them in parts)"
    )]
    TooMany(usize),
    /// A CSV file that cannot be read.
    #[error("line {line}: {message}")]
    Csv {
        /// Line the problem is on.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

impl CouponError {
    /// The stable machine-readable code used in API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            CouponError::PoolName(_) => "invalid_pool_name",
            CouponError::EmptyCode { .. }
            | CouponError::CodeTooLong { .. }
            | CouponError::CodeCharacters { .. } => "invalid_code",
            CouponError::TooMany(_) => "too_many_codes",
            CouponError::Csv { .. } => "invalid_csv",
        }
    }
}

/// Whether `name` may name a pool: 1 to 64 ASCII letters, digits, `-`, `_`
/// and `.`.
pub fn valid_pool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POOL_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// [`valid_pool_name`] as an error naming the pool.
pub fn check_pool_name(name: &str) -> Result<(), CouponError> {
    if valid_pool_name(name) {
        Ok(())
    } else {
        Err(CouponError::PoolName(name.to_string()))
    }
}

/// Checks one code: not empty, at most [`MAX_CODE_BYTES`], no whitespace
/// or control characters. `at` names its place (`line 3`, `` `codes[2]` ``)
/// and is called only for an error.
pub fn check_code(code: &str, at: impl FnOnce() -> String) -> Result<(), CouponError> {
    if code.is_empty() {
        return Err(CouponError::EmptyCode { at: at() });
    }
    if code.len() > MAX_CODE_BYTES {
        return Err(CouponError::CodeTooLong {
            at: at(),
            len: code.len(),
        });
    }
    if let Some(c) = code.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(CouponError::CodeCharacters {
            at: at(),
            code: code.to_string(),
            what: if c.is_control() {
                "a control character"
            } else {
                "whitespace"
            },
        });
    }
    Ok(())
}

/// Checks the codes of a JSON upload (`{"codes": [...]}`), naming a bad
/// one by its JSON path (`` `codes[2]` ``).
pub fn check_codes(codes: &[String]) -> Result<(), CouponError> {
    if codes.len() > MAX_CODES_PER_REQUEST {
        return Err(CouponError::TooMany(codes.len()));
    }
    for (i, c) in codes.iter().enumerate() {
        check_code(c, || format!("`codes[{i}]`"))?;
    }
    Ok(())
}

/// The codes of a CSV upload: the first column of every line; a first line
/// that reads `code` (any case) is a header and skipped, and so are blank
/// lines. Every code is checked ([`check_code`]); a problem names its line.
pub fn codes_from_csv(bytes: &[u8]) -> Result<Vec<String>, CouponError> {
    // A byte-order mark (spreadsheets write one) is not part of the first code.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes);
    let mut record = csv::ByteRecord::new();
    let mut lines = LineCounter::default();
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| {
            let at = e.position().map_or(bytes.len() as u64, |p| p.byte());
            CouponError::Csv {
                line: lines.line_at(bytes, at),
                message: e.to_string(),
            }
        })?;
        if !more {
            break;
        }
        // The reader's position is where it started looking, before the
        // blank lines it skipped: the record starts after them.
        let mut start = record
            .position()
            .map_or(0, |p| usize::try_from(p.byte()).unwrap_or(usize::MAX));
        while matches!(bytes.get(start), Some(b'\r' | b'\n')) {
            start += 1;
        }
        let line = lines.line_at(bytes, start as u64);
        let blank = record
            .iter()
            .all(|f| f.iter().all(|b| b.is_ascii_whitespace()));
        if blank {
            continue;
        }
        let field = record.get(0).unwrap_or_default();
        let was_first = std::mem::replace(&mut first, false);
        if was_first && field.trim_ascii().eq_ignore_ascii_case(b"code") {
            continue;
        }
        let at = || format!("line {line}");
        let code = std::str::from_utf8(field).map_err(|_| CouponError::CodeCharacters {
            at: at(),
            code: String::from_utf8_lossy(field).into_owned(),
            what: "bytes that are not UTF-8",
        })?;
        check_code(code, at)?;
        if out.len() == MAX_CODES_PER_REQUEST {
            return Err(CouponError::TooMany(MAX_CODES_PER_REQUEST + 1));
        }
        out.push(code.to_string());
    }
    Ok(out)
}

/// Line numbers of byte offsets, counted forward once: a line ends with
/// LF, CRLF or a lone CR (as the csv reader reads them).
#[derive(Default)]
struct LineCounter {
    /// Offset counted up to.
    offset: usize,
    /// Line ends before `offset`.
    ends: u64,
}

impl LineCounter {
    /// The 1-based line of `at` (offsets only grow between calls).
    fn line_at(&mut self, bytes: &[u8], at: u64) -> u64 {
        let at = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
        if at > self.offset {
            for (i, &b) in bytes[self.offset..at].iter().enumerate() {
                let pos = self.offset + i;
                if b == b'\n' || (b == b'\r' && bytes.get(pos + 1) != Some(&b'\n')) {
                    self.ends += 1;
                }
            }
            self.offset = at;
        }
        self.ends + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_names() {
        for ok in ["a", "summer-2026", "flow_1.welcome", &"x".repeat(64)] {
            assert!(valid_pool_name(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "zł", &"x".repeat(65), "a\n"] {
            assert!(!valid_pool_name(bad), "{bad:?}");
            assert_eq!(
                check_pool_name(bad).map_err(|e| e.code()),
                Err("invalid_pool_name")
            );
        }
    }

    #[test]
    fn codes_are_checked_with_their_place() {
        assert!(check_code("SUMMER-1a", || "x".into()).is_ok());
        assert!(check_code(&"x".repeat(128), || "x".into()).is_ok());
        let err = |c: &str| check_code(c, || "line 7".into()).unwrap_err().to_string();
        assert_eq!(err(""), "line 7: the code is empty");
        assert!(err(&"x".repeat(129)).contains("129 bytes"), "{}", err("x"));
        assert!(err("A 1").contains("whitespace"));
        assert!(err("A\u{7}1").contains("control"));
        assert!(err("A\u{a0}1").contains("whitespace"));
        let e = check_codes(&["A".into(), "B C".into()]).unwrap_err();
        assert!(e.to_string().starts_with("`codes[1]`: "), "{e}");
        let many = vec!["A".to_string(); MAX_CODES_PER_REQUEST + 1];
        assert_eq!(
            check_codes(&many),
            Err(CouponError::TooMany(MAX_CODES_PER_REQUEST + 1))
        );
    }

    #[test]
    fn csv_takes_the_first_column_skipping_header_and_blank_lines() {
        let csv = "\u{feff}Code,note\r\nA1,first\r\n\r\n\"B,2\",quoted\n  \nC3\n";
        assert_eq!(
            codes_from_csv(csv.as_bytes()),
            Ok(vec!["A1".to_string(), "B,2".to_string(), "C3".to_string()])
        );
        // `code` later than the first line is a code like any other.
        assert_eq!(
            codes_from_csv(b"A1\ncode\n"),
            Ok(vec!["A1".to_string(), "code".to_string()])
        );
        assert_eq!(codes_from_csv(b""), Ok(vec![]));
    }

    #[test]
    fn csv_problems_name_their_line() {
        let e = codes_from_csv(b"code\nA1\n\n\"multi\nline\",x\nB 2\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 4: the code \"multi\\nline\" contains a control character"
        );
        let e = codes_from_csv(b"A1\r\nB2\r\n,x\r\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: the code is empty");
        let e = codes_from_csv(b"A1\rB 2\r").unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 2: the code \"B 2\" contains whitespace"
        );
        let e = codes_from_csv(b"A1\n\xff\xfe\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: "), "{e}");
        let long = format!("A\n{}\n", "x".repeat(200));
        assert_eq!(
            codes_from_csv(long.as_bytes()).map_err(|e| e.code()),
            Err("invalid_code")
        );
        let many = "A\n".repeat(MAX_CODES_PER_REQUEST + 1);
        assert_eq!(
            codes_from_csv(many.as_bytes()).map_err(|e| e.code()),
            Err("too_many_codes")
        );
    }

    #[test]
    fn status_counts_and_low() {
        let p = PoolInfo {
            low_water: 2,
            added: 5,
            given: 3,
            created_ms: 0,
        };
        let s = p.status("p");
        assert_eq!((s.free, s.low), (2, true));
        let s = PoolInfo { given: 2, ..p }.status("p");
        assert_eq!((s.free, s.low), (3, false));
    }
}
