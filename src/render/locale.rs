//! Prices for people: an amount and a currency written the way the reader's
//! language writes money (`$1,299.00`, `1 299,00 zł`, `1.299,00 €`).
//!
//! A small table, not ICU: ICU4X's currency formatter is still experimental
//! and brings megabytes of data for the handful of conventions a shop's mail
//! needs. Unknown languages use the English convention; unknown currencies
//! are written with their ISO code.

/// How a language writes numbers and where the currency goes.
struct Convention {
    decimal: char,
    group: &'static str,
    /// `true`: symbol after the number, separated by a no-break space.
    symbol_after: bool,
}

fn convention(language: &str) -> Convention {
    let lang = language
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match lang.as_str() {
        "pl" | "cs" | "sk" | "uk" | "ru" | "fr" | "sv" | "fi" | "nb" | "no" | "hu" | "lt"
        | "lv" | "et" | "bg" => Convention {
            decimal: ',',
            group: "\u{a0}",
            symbol_after: true,
        },
        "de" | "nl" | "it" | "es" | "pt" | "da" | "ro" | "hr" | "sl" | "tr" | "el" | "id" => {
            Convention {
                decimal: ',',
                group: ".",
                symbol_after: true,
            }
        }
        _ => Convention {
            decimal: '.',
            group: ",",
            symbol_after: false,
        },
    }
}

fn symbol(currency: &str, language: &str) -> &'static str {
    let lang = language.split(['-', '_']).next().unwrap_or("");
    match currency {
        "EUR" => "€",
        "USD" if lang == "en" => "$",
        "GBP" => "£",
        "PLN" if lang == "pl" => "zł",
        "CZK" if lang == "cs" => "Kč",
        "UAH" if lang == "uk" => "₴",
        "JPY" => "¥",
        "CHF" => "CHF",
        "SEK" | "NOK" | "DKK" if lang != "en" => "kr",
        _ => "",
    }
}

/// Minor units of a currency (ISO 4217).
fn decimals(currency: &str) -> usize {
    match currency {
        "JPY" | "KRW" | "HUF" | "ISK" | "CLP" | "VND" => 0,
        "KWD" | "BHD" | "OMR" | "JOD" | "TND" => 3,
        _ => 2,
    }
}

/// Formats `amount` (a decimal string such as `1299.5` or a number) in
/// `currency` for a reader of `language`. `None` when `amount` is not a
/// number.
pub fn money(amount: &str, currency: &str, language: &str) -> Option<String> {
    let amount = amount.trim();
    let v: f64 = amount.parse().ok().filter(|v: &f64| v.is_finite())?;
    let c = convention(language);
    let places = decimals(currency);
    let fixed = format!("{:.*}", places, v.abs());
    let (int, frac) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut grouped = String::with_capacity(int.len() + int.len() / 3 * 2);
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push_str(c.group);
        }
        grouped.push(ch);
    }
    let mut number = grouped;
    if places > 0 {
        number.push(c.decimal);
        number.push_str(frac);
    }
    let sign = if v < 0.0 && fixed.bytes().any(|b| (b'1'..=b'9').contains(&b)) {
        "-"
    } else {
        ""
    };
    let sym = symbol(currency, language);
    Some(match (sym, c.symbol_after) {
        ("", true) => format!("{sign}{number}\u{a0}{currency}"),
        ("", false) => format!("{sign}{currency}\u{a0}{number}"),
        (s, true) => format!("{sign}{number}\u{a0}{s}"),
        (s, false) if s.chars().count() > 1 => format!("{sign}{s}\u{a0}{number}"),
        (s, false) => format!("{sign}{s}{number}"),
    })
}

#[cfg(test)]
mod tests {
    use super::money;

    #[test]
    fn conventions() {
        // (None becomes "", which no expected value equals.)
        let m = |a, c, l| money(a, c, l).unwrap_or_default().replace('\u{a0}', " ");
        assert_eq!(m("1299", "USD", "en"), "$1,299.00");
        assert_eq!(m("1299.5", "PLN", "pl"), "1 299,50 zł");
        assert_eq!(m("1299.5", "PLN", "en"), "PLN 1,299.50");
        assert_eq!(m("1234567.891", "EUR", "de"), "1.234.567,89 €");
        assert_eq!(m("5", "EUR", "en"), "€5.00");
        assert_eq!(m("5", "GBP", "pl"), "5,00 £");
        assert_eq!(m("1500", "JPY", "en"), "¥1,500");
        assert_eq!(m("-3.5", "USD", "en"), "-$3.50");
        assert_eq!(m("0", "CHF", "de-CH"), "0,00 CHF");
        assert_eq!(m("12", "XYZ", "pt-BR"), "12,00 XYZ");
        assert_eq!(money("abc", "USD", "en"), None);
        assert_eq!(money("inf", "USD", "en"), None);
    }
}
