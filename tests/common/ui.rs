//! Admin UI sessions for tests: a user made through the API, logged in
//! through the login form, then pages fetched and forms posted with the
//! session cookie and its CSRF token (redirects are not followed, so a
//! test sees each `303` and where it leads).

use super::{Herald, Reply, text_reply as finish};

/// A logged-in browser-like session.
pub struct UiSession {
    base: String,
    agent: ureq::Agent,
    /// The session cookie's `name=value`.
    pub cookie: String,
    /// The session's CSRF token (read from the dashboard's logout form).
    pub csrf: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// The value of `name="NAME" value="…"` in a page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Makes a user through the API (`POST /api/v1/users`).
pub fn add_user(h: &Herald, name: &str, role: &str, password: &str) {
    let r = h.post_json(
        "/api/v1/users",
        serde_json::json!({"name": name, "role": role, "password": password}),
    );
    assert_eq!(r.status, 201, "{:?}", r.body);
}

impl UiSession {
    /// Adds a user with `role` and logs them in.
    pub fn new(h: &Herald, name: &str, role: &str) -> UiSession {
        let password = "a long enough password";
        add_user(h, name, role, password);
        Self::login(h, name, password).expect("login")
    }

    /// Logs in through the form; the failed reply when it is refused.
    pub fn login(h: &Herald, name: &str, password: &str) -> Result<UiSession, Reply> {
        let base = h.url("");
        let agent = agent();
        let page = finish(agent.get(format!("{base}/admin/login")).call());
        let html = page.body.as_str().unwrap_or("").to_string();
        let nonce = hidden(&html, "_login").expect("login form nonce");
        let login_cookie = page
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("login cookie")
            .to_string();
        let r = finish(
            agent
                .post(format!("{base}/admin/login?next=/admin"))
                .header("Cookie", &login_cookie)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(form_body(&[
                    ("_login", nonce.as_str()),
                    ("name", name),
                    ("password", password),
                ])),
        );
        if r.status != 303 {
            return Err(r);
        }
        let cookie = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| v.split(';').next())
            .find(|c| c.starts_with("herald_session="))
            .expect("session cookie")
            .to_string();
        let mut s = UiSession {
            base,
            agent,
            cookie,
            csrf: String::new(),
        };
        let dash = s.get("/admin");
        assert_eq!(dash.status, 200, "{:?}", dash.body);
        s.csrf = hidden(dash.text(), "_csrf").expect("csrf token in the layout");
        Ok(s)
    }

    /// `GET path` with the session.
    pub fn get(&self, path: &str) -> Reply {
        finish(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Cookie", &self.cookie)
                .call(),
        )
    }

    /// `POST path` with a form (the session's `_csrf` added).
    pub fn post(&self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let mut all = vec![("_csrf", self.csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &form_body(&all))
    }

    /// `POST path` with a form body exactly as given (no `_csrf` added).
    pub fn post_raw(&self, path: &str, body: &str) -> Reply {
        finish(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Cookie", &self.cookie)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .send(body),
        )
    }

    /// `POST path` with a `multipart/form-data` body of text fields and one
    /// file field; `_csrf` goes in the query, as the UI's upload forms do.
    pub fn post_file(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        file_field: &str,
        file_name: &str,
        file: &[u8],
    ) -> Reply {
        let boundary = "----herald-test-boundary-7d1f";
        let mut body = Vec::new();
        for (k, v) in fields {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{file_name}\"\r\nContent-Type: text/csv\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let sep = if path.contains('?') { '&' } else { '?' };
        finish(
            self.agent
                .post(format!("{}{path}{sep}_csrf={}", self.base, self.csrf))
                .header("Cookie", &self.cookie)
                .header(
                    "Content-Type",
                    &format!("multipart/form-data; boundary={boundary}"),
                )
                .send(&body[..]),
        )
    }
}

/// `k=v&…`, URL-encoded.
pub fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                url::form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Reply {
    /// The body as text (pages).
    pub fn text(&self) -> &str {
        self.body.as_str().unwrap_or("")
    }

    /// Where a redirect leads.
    pub fn location(&self) -> &str {
        self.header("location").unwrap_or("")
    }
}
