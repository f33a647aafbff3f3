//! How a text message is billed: GSM-7 (the GSM 03.38 alphabet, 160
//! characters in one part, 153 per part when split) or UCS-2 (any other
//! character: 70 UTF-16 units in one part, 67 per part), the number of
//! parts, and the transliteration that keeps Polish and other accented text
//! in GSM-7 when a template allows it.
//!
//! Counting follows what SMSAPI and Twilio bill: a GSM-7 extension
//! character (`€ [ ] { } \ ^ ~ |` and form feed) takes two septets (escape
//! plus the character) and is never split across parts; in UCS-2 a
//! character outside the Basic Multilingual Plane (most emoji) takes two
//! UTF-16 units, also never split.

use serde::{Deserialize, Serialize};

/// The GSM 03.38 basic character set (without the escape, 0x1B).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The GSM 03.38 extension table: each takes the escape and itself.
const GSM_EXTENSION: &str = "\u{0C}^{}\\[~]|€";

/// The encoding a text goes out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// 7-bit GSM alphabet.
    Gsm7,
    /// UCS-2 (UTF-16 in practice).
    Ucs2,
}

impl Encoding {
    /// `GSM-7` or `UCS-2`, as shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        }
    }
}

/// What a text costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Analysis {
    /// The encoding.
    pub encoding: Encoding,
    /// Characters (Unicode scalar values).
    pub characters: usize,
    /// Units billed: septets for GSM-7, UTF-16 units for UCS-2.
    pub units: usize,
    /// Parts (0 for an empty text).
    pub parts: usize,
    /// Units one part holds at this length (160/153 or 70/67).
    pub per_part: usize,
}

/// Septets `c` takes in GSM-7, `None` when it is not in the alphabet.
pub fn gsm_septets(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Whether every character of `text` is in the GSM-7 alphabet.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(|c| gsm_septets(c).is_some())
}

/// Packs units into parts of `per_part`, never splitting a character.
fn pack(sizes: impl Iterator<Item = usize>, per_part: usize) -> usize {
    let (mut parts, mut used) = (1, 0);
    for s in sizes {
        if used + s > per_part {
            parts += 1;
            used = 0;
        }
        used += s;
    }
    parts
}

/// The encoding, units and parts of `text`.
pub fn analyze(text: &str) -> Analysis {
    let characters = text.chars().count();
    let gsm = is_gsm7(text);
    let (encoding, single, multi) = if gsm {
        (Encoding::Gsm7, 160, 153)
    } else {
        (Encoding::Ucs2, 70, 67)
    };
    let size = |c: char| -> usize {
        if gsm {
            gsm_septets(c).unwrap_or(1)
        } else {
            c.len_utf16()
        }
    };
    let units: usize = text.chars().map(size).sum();
    let (parts, per_part) = if units == 0 {
        (0, single)
    } else if units <= single {
        (1, single)
    } else {
        (pack(text.chars().map(size), multi), multi)
    };
    Analysis {
        encoding,
        characters,
        units,
        parts,
        per_part,
    }
}

/// The GSM-7 stand-in for a character outside the alphabet, when there is
/// an obvious one: Polish, Czech and other Latin letters lose their marks
/// (`ą` → `a`, `ł` → `l`), typographic quotes and dashes become plain ones.
fn stand_in(c: char) -> Option<&'static str> {
    Some(match c {
        'ł' => "l",
        'Ł' => "L",
        'đ' => "d",
        'Đ' => "D",
        'ı' => "i",
        'œ' => "oe",
        'Œ' => "OE",
        '‘' | '’' | '‚' | '′' | '`' | '´' => "'",
        '“' | '”' | '„' | '«' | '»' | '″' => "\"",
        '–' | '—' | '‑' | '−' => "-",
        '…' => "...",
        '\u{a0}' | '\u{2009}' | '\u{202f}' | '\t' => " ",
        '•' => "*",
        _ => return None,
    })
}

/// `text` with every character outside GSM-7 that has a plain stand-in
/// replaced by it (letters without their marks, plain quotes and dashes).
/// Characters without one (emoji, Cyrillic) stay, so the text stays UCS-2.
pub fn transliterate(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if gsm_septets(c).is_some() {
            out.push(c);
        } else if let Some(s) = stand_in(c) {
            out.push_str(s);
        } else {
            let base: String = std::iter::once(c)
                .nfd()
                .filter(|d| !unicode_normalization::char::is_combining_mark(*d))
                .collect();
            if !base.is_empty() && is_gsm7(&base) {
                out.push_str(&base);
            } else {
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twenty texts with the encoding and the parts SMSAPI and Twilio bill.
    #[test]
    fn encodings_and_parts_are_billed_as_providers_count_them() {
        let long_gsm = "a".repeat(160);
        let gsm_161 = "a".repeat(161);
        let gsm_306 = "a".repeat(306);
        let gsm_307 = "a".repeat(307);
        let euro_80 = "€".repeat(80);
        let euro_81 = "€".repeat(81);
        let ucs_70 = "ą".repeat(70);
        let ucs_71 = "ą".repeat(71);
        let ucs_134 = "ż".repeat(134);
        let ucs_135 = "ż".repeat(135);
        let emoji_35 = "😀".repeat(35);
        let emoji_36 = "😀".repeat(36);
        // 152 a + € : the escape pair does not fit the first part's 153rd
        // septet, so it moves to the next part.
        let split_escape = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        // 66 ą + 😀: the surrogate pair does not fit unit 67.
        let split_pair = format!("{}😀{}", "ą".repeat(66), "ą".repeat(5));
        let table: Vec<(&str, Encoding, usize, usize)> = vec![
            ("", Encoding::Gsm7, 0, 0),
            ("Hello", Encoding::Gsm7, 5, 1),
            (&long_gsm, Encoding::Gsm7, 160, 1),
            (&gsm_161, Encoding::Gsm7, 161, 2),
            (&gsm_306, Encoding::Gsm7, 306, 2),
            (&gsm_307, Encoding::Gsm7, 307, 3),
            ("Price 10€ [sale]", Encoding::Gsm7, 19, 1),
            (&euro_80, Encoding::Gsm7, 160, 1),
            (&euro_81, Encoding::Gsm7, 162, 2),
            ("Zażółć gęślą jaźń", Encoding::Ucs2, 17, 1),
            (&ucs_70, Encoding::Ucs2, 70, 1),
            (&ucs_71, Encoding::Ucs2, 71, 2),
            (&ucs_134, Encoding::Ucs2, 134, 2),
            (&ucs_135, Encoding::Ucs2, 135, 3),
            ("Hi 😀", Encoding::Ucs2, 5, 1),
            (&emoji_35, Encoding::Ucs2, 70, 1),
            (&emoji_36, Encoding::Ucs2, 72, 2),
            ("Grüße aus München, Ärger? Öl!", Encoding::Gsm7, 29, 1),
            (&split_escape, Encoding::Gsm7, 164, 2),
            (&split_pair, Encoding::Ucs2, 73, 2),
        ];
        assert_eq!(table.len(), 20);
        for (text, enc, units, parts) in table {
            let a = analyze(text);
            assert_eq!(
                (a.encoding, a.units, a.parts),
                (enc, units, parts),
                "{text:?}"
            );
        }
        // The escape pair that would straddle parts 1 and 2 makes a third
        // part only when the rest overflows: 152 + (2 + 151) = 2 parts.
        let tight = format!("{}€{}", "a".repeat(152), "a".repeat(151));
        assert_eq!(analyze(&tight).parts, 2);
        let over = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(analyze(&over).parts, 3);
    }

    #[test]
    fn transliteration_keeps_polish_in_gsm7_and_leaves_emoji() {
        let t = transliterate("Zażółć gęślą jaźń – „Łódź” … 20% taniej");
        assert_eq!(t, "Zazolc gesla jazn - \"Lodz\" ... 20% taniej");
        assert!(is_gsm7(&t));
        // Letters GSM-7 has keep their marks.
        assert_eq!(transliterate("Grüße, é à ñ"), "Grüße, é à ñ");
        // Nothing plain stands in for an emoji or Cyrillic.
        assert_eq!(transliterate("Привет 😀"), "Привет 😀");
        assert_eq!(analyze(&transliterate("Привет")).encoding, Encoding::Ucs2);
        assert_eq!(transliterate("Čeština Ř"), "Cestina R");
    }
}
