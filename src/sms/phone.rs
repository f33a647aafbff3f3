//! Phone numbers: every number Herald keeps is E.164 (`+48500100200`),
//! parsed and checked with the `phonenumber` crate (Google's libphonenumber
//! metadata). A number written without its country code is read in the
//! contact's site's country (`[[site]] country`).

/// Parses `raw` (spaces, dashes, brackets allowed; `+` or `00` for an
/// international number) into E.164, reading a national number in
/// `country` (ISO 3166 alpha-2, e.g. `PL`). The error says why.
pub fn normalize(raw: &str, country: Option<&str>) -> Result<String, String> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("the phone number is empty".into());
    }
    if t.len() > 40 {
        return Err("the phone number is longer than 40 characters".into());
    }
    let international = t.strip_prefix("00").map(|r| format!("+{r}"));
    let t = international.as_deref().unwrap_or(t);
    let id = match country {
        Some(c) => Some(
            c.to_ascii_uppercase()
                .parse::<phonenumber::country::Id>()
                .map_err(|_| format!("`{c}` is not a country code such as PL or DE"))?,
        ),
        None => None,
    };
    if !t.starts_with('+') && id.is_none() {
        return Err(format!(
            "`{raw}` has no country code (+48…) and no [[site]] country says which country it is in"
        ));
    }
    let n = phonenumber::parse(id, t).map_err(|e| format!("`{raw}` is not a phone number: {e}"))?;
    if !phonenumber::is_valid(&n) {
        return Err(format!("`{raw}` is not a valid phone number"));
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

/// The country a national number is read in, per site: what
/// [`normalize`] needs from the config, for places that run without it (a
/// CSV import's parser thread).
#[derive(Debug, Clone, Default)]
pub struct Countries {
    /// The first `[[site]]`'s country: for contacts without a site (or of
    /// a site without one).
    pub default: Option<String>,
    /// Site id → its country.
    pub by_site: std::collections::BTreeMap<String, String>,
}

impl Countries {
    /// The countries of `config`'s sites.
    pub fn of(config: &crate::config::Config) -> Countries {
        Countries {
            default: config.phone_country(None).map(str::to_string),
            by_site: config
                .sites
                .iter()
                .filter_map(|s| Some((s.id.clone(), s.country.clone()?)))
                .collect(),
        }
    }

    /// The country of site `site`'s numbers.
    pub fn of_site(&self, site: Option<&str>) -> Option<&str> {
        site.and_then(|s| self.by_site.get(s))
            .or(self.default.as_ref())
            .map(String::as_str)
    }
}

pub use crate::names::is_country;

/// The country code of an E.164 number with digits only, for logs that
/// must not carry the whole number: `+48…200`.
pub fn masked(e164: &str) -> String {
    let n = e164.len();
    if n <= 6 {
        return "+…".into();
    }
    format!("{}…{}", &e164[..3], &e164[n - 3..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_e164_in_the_sites_country() {
        assert_eq!(
            normalize("500 100 200", Some("PL")),
            Ok("+48500100200".into())
        );
        assert_eq!(
            normalize("+48 500-100-200", None),
            Ok("+48500100200".into())
        );
        assert_eq!(
            normalize("0048500100200", Some("DE")),
            Ok("+48500100200".into())
        );
        assert_eq!(
            normalize("030 12345678", Some("de")),
            Ok("+493012345678".into())
        );
        assert_eq!(
            normalize("(415) 555-2671", Some("US")),
            Ok("+14155552671".into())
        );
    }

    #[test]
    fn bad_numbers_are_refused_with_the_reason() {
        for (raw, country, says) in [
            ("", Some("PL"), "empty"),
            ("500 100 200", None, "no country code"),
            ("hello", Some("PL"), "not a phone number"),
            ("123", Some("PL"), "not a valid"),
            ("500 100 200", Some("XX"), "not a country code"),
        ] {
            match normalize(raw, country) {
                Err(e) => assert!(e.contains(says), "{raw}: {e}"),
                Ok(n) => panic!("{raw} became {n}"),
            }
        }
        assert!(is_country("pl") && !is_country("XX"));
        assert_eq!(masked("+48500100200"), "+48…200");
    }
}
