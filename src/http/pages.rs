//! The public HTML pages recipients see: unsubscribe and preferences,
//! signup and confirmation, and error pages for bad links. Small,
//! server-rendered, no scripts, no cookies, no external resources; texts in
//! English, Polish and German (other languages fall back to English).
//! Every value put into a page is HTML-escaped.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use super::reply::Body;

/// The texts of the pages in one language. `{site}`, `{email}` and
/// `{lists}` are replaced (escaped) where they appear.
pub struct Texts {
    /// Unsubscribe page title.
    pub unsubscribe_title: &'static str,
    /// The question on the unsubscribe page.
    pub unsubscribe_question: &'static str,
    /// The unsubscribe button.
    pub unsubscribe_button: &'static str,
    /// Heading of the list choice.
    pub preferences_title: &'static str,
    /// Explanation of the list choice.
    pub preferences_text: &'static str,
    /// The save button of the list choice.
    pub preferences_button: &'static str,
    /// Title after unsubscribing.
    pub unsubscribed_title: &'static str,
    /// Text after unsubscribing.
    pub unsubscribed_text: &'static str,
    /// Title after saving preferences.
    pub saved_title: &'static str,
    /// Text after leaving lists.
    pub saved_text: &'static str,
    /// Text when nothing changed.
    pub unchanged_text: &'static str,
    /// Title after signup.
    pub signup_title: &'static str,
    /// Text after signup.
    pub signup_text: &'static str,
    /// Title of the confirmation page.
    pub confirm_title: &'static str,
    /// Question on the confirmation page (shown to link checkers).
    pub confirm_question: &'static str,
    /// The confirm button.
    pub confirm_button: &'static str,
    /// Title after confirming.
    pub confirmed_title: &'static str,
    /// Text after confirming.
    pub confirmed_text: &'static str,
    /// Title of a bad or expired link.
    pub invalid_title: &'static str,
    /// Text of a bad or expired link.
    pub invalid_text: &'static str,
    /// Title when the answer could not be recorded just now.
    pub unavailable_title: &'static str,
    /// Text when the answer could not be recorded just now.
    pub unavailable_text: &'static str,
    /// Text when a page (or a link's target) cannot be read just now.
    pub unavailable_read_text: &'static str,
}

const EN: Texts = Texts {
    unsubscribe_title: "Unsubscribe",
    unsubscribe_question: "Do you want to stop receiving marketing e-mails from {site} at {email}?",
    unsubscribe_button: "Unsubscribe",
    preferences_title: "Or choose what you receive",
    preferences_text: "Untick the lists you want to leave; you stay subscribed to the others.",
    preferences_button: "Save my choice",
    unsubscribed_title: "You are unsubscribed",
    unsubscribed_text: "{email} will no longer receive marketing e-mails from {site}.",
    saved_title: "Your choice is saved",
    saved_text: "You left: {lists}.",
    unchanged_text: "Nothing was changed.",
    signup_title: "Please check your inbox",
    signup_text: "We have sent a confirmation link to {email}. Your subscription starts when you click it.",
    confirm_title: "Confirm your subscription",
    confirm_question: "Do you want to receive e-mails from {site} at {email}?",
    confirm_button: "Yes, subscribe me",
    confirmed_title: "Thank you!",
    confirmed_text: "{email} is now subscribed to {site}.",
    invalid_title: "This link does not work",
    invalid_text: "The link is not valid or has expired.",
    unavailable_title: "Please try again in a minute",
    unavailable_text: "We could not save this just now, so nothing has changed yet. Please try again in a minute.",
    unavailable_read_text: "This page cannot be shown just now. Please try again in a minute.",
};

const PL: Texts = Texts {
    unsubscribe_title: "Wypisz się",
    unsubscribe_question: "Czy chcesz przestać otrzymywać e-maile marketingowe od {site} na adres {email}?",
    unsubscribe_button: "Wypisz mnie",
    preferences_title: "Albo wybierz, co chcesz otrzymywać",
    preferences_text: "Odznacz listy, z których chcesz się wypisać; pozostałe zostaną.",
    preferences_button: "Zapisz wybór",
    unsubscribed_title: "Wypisano",
    unsubscribed_text: "Adres {email} nie będzie już otrzymywać e-maili marketingowych od {site}.",
    saved_title: "Zapisano wybór",
    saved_text: "Wypisano z list: {lists}.",
    unchanged_text: "Nic nie zostało zmienione.",
    signup_title: "Sprawdź skrzynkę",
    signup_text: "Wysłaliśmy link potwierdzający na adres {email}. Subskrypcja zacznie się po jego kliknięciu.",
    confirm_title: "Potwierdź subskrypcję",
    confirm_question: "Czy chcesz otrzymywać e-maile od {site} na adres {email}?",
    confirm_button: "Tak, zapisz mnie",
    confirmed_title: "Dziękujemy!",
    confirmed_text: "Adres {email} jest zapisany do {site}.",
    invalid_title: "Ten link nie działa",
    invalid_text: "Link jest nieprawidłowy albo wygasł.",
    unavailable_title: "Spróbuj ponownie za minutę",
    unavailable_text: "Nie udało się tego teraz zapisać, więc nic się jeszcze nie zmieniło. Spróbuj ponownie za minutę.",
    unavailable_read_text: "Tej strony nie da się teraz wyświetlić. Spróbuj ponownie za minutę.",
};

const DE: Texts = Texts {
    unsubscribe_title: "Abmelden",
    unsubscribe_question: "Möchten Sie keine Marketing-E-Mails von {site} an {email} mehr erhalten?",
    unsubscribe_button: "Abmelden",
    preferences_title: "Oder wählen Sie, was Sie erhalten",
    preferences_text: "Entfernen Sie den Haken bei den Listen, die Sie verlassen möchten; die anderen bleiben.",
    preferences_button: "Auswahl speichern",
    unsubscribed_title: "Sie sind abgemeldet",
    unsubscribed_text: "{email} erhält keine Marketing-E-Mails von {site} mehr.",
    saved_title: "Ihre Auswahl ist gespeichert",
    saved_text: "Verlassen: {lists}.",
    unchanged_text: "Nichts wurde geändert.",
    signup_title: "Bitte prüfen Sie Ihr Postfach",
    signup_text: "Wir haben einen Bestätigungslink an {email} gesendet. Ihr Abonnement beginnt, wenn Sie ihn anklicken.",
    confirm_title: "Abonnement bestätigen",
    confirm_question: "Möchten Sie E-Mails von {site} an {email} erhalten?",
    confirm_button: "Ja, anmelden",
    confirmed_title: "Danke!",
    confirmed_text: "{email} ist jetzt bei {site} angemeldet.",
    invalid_title: "Dieser Link funktioniert nicht",
    invalid_text: "Der Link ist ungültig oder abgelaufen.",
    unavailable_title: "Bitte versuchen Sie es in einer Minute erneut",
    unavailable_text: "Wir konnten das gerade nicht speichern, daher hat sich noch nichts geändert. Bitte versuchen Sie es in einer Minute erneut.",
    unavailable_read_text: "Diese Seite kann gerade nicht angezeigt werden. Bitte versuchen Sie es in einer Minute erneut.",
};

/// The texts for a language code (`pl`, `de-AT`…), English by default.
pub fn texts(lang: &str) -> (&'static Texts, &'static str) {
    let base = lang
        .split(['-', '_'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    match base.as_str() {
        "pl" => (&PL, "pl"),
        "de" => (&DE, "de"),
        _ => (&EN, "en"),
    }
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// HTML-escapes an attribute value.
pub fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

/// Fills `{site}`, `{email}` and `{lists}` in a text, escaping the values.
pub fn fill(text: &str, site: &str, email: &str, lists: &str) -> String {
    esc(text)
        .replace("{site}", &esc(site))
        .replace("{email}", &esc(email))
        .replace("{lists}", &esc(lists))
}

/// A whole page: `title` (plain text) and `body` (HTML, already escaped).
pub fn page(status: StatusCode, lang: &str, site: &str, title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{t} – {s}</title>\
<style>body{{font-family:system-ui,Arial,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.4rem}}button{{font-size:1rem;padding:.6rem 1.2rem;margin:.5rem 0;cursor:pointer}}\
label{{display:block;margin:.3rem 0}}.site{{color:#666;font-size:.9rem}}</style></head>\
<body><p class=\"site\">{s}</p><h1>{t}</h1>{body}</body></html>\n",
        lang = attr(lang),
        t = esc(title),
        s = esc(site),
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src * data:; form-action 'self'",
        ),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

/// The page for a link that is not valid (404).
pub fn invalid(lang: &str, site: &str) -> Response<Body> {
    let (t, l) = texts(lang);
    page(
        StatusCode::NOT_FOUND,
        l,
        site,
        t.invalid_title,
        &format!("<p>{}</p>", esc(t.invalid_text)),
    )
}

/// The page for an answer the store could not take (`saving`) or a page it
/// could not read just now (503, with `Retry-After`): it never pretends
/// that anything was saved.
pub fn unavailable(lang: &str, site: &str, saving: bool) -> Response<Body> {
    let (t, l) = texts(lang);
    let text = if saving {
        t.unavailable_text
    } else {
        t.unavailable_read_text
    };
    let mut r = page(
        StatusCode::SERVICE_UNAVAILABLE,
        l,
        site,
        t.unavailable_title,
        &format!("<p>{}</p>", esc(text)),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    r
}

/// A 303 redirect to a configured URL (never one from the request).
pub fn see_other(url: &url::Url) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(url.as_str()) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_languages_fall_back() {
        let s = fill("{site} <b> {email}", "A&B", "<x@y>", "");
        assert_eq!(s, "A&amp;B &lt;b&gt; &lt;x@y&gt;");
        assert_eq!(texts("de-AT").1, "de");
        assert_eq!(texts("pl").1, "pl");
        assert_eq!(texts("xx").1, "en");
    }
}
