//! The public signup form as one operation: [`subscribe`] checks the form
//! against `[signup]`, records the request (`contacts::signup::request`)
//! and queues the confirmation mail (`[signup] template`) through
//! [`super::outbox::queue_template`].
//!
//! It lives in the send layer because it ends in a send; the rules about
//! the contact (what a request may change, the answer being the same for
//! every address) are `contacts::signup`'s. What is HTTP stays in
//! `http::public::subscribe`: reading and parsing the body, the honeypot,
//! the per-IP rate limit, metrics and the answer, which must not depend
//! on anything [`Subscribed`] says beyond the address shown.

use std::sync::Arc;

use chrono::DateTime;
use serde_json::json;

use super::outbox::{Context, OutboxError, queue_template};
use crate::config::SignupConfig;
use crate::config::Site;
use crate::contacts::signup::{self, Requested, SignupInput};
use crate::delivery::model::MailKind;
use crate::store::StoreError;
use crate::tokens::Token;

/// A filled-in signup form, as the client sent it (not checked yet).
#[derive(Debug, Clone, Default)]
pub struct SignupForm {
    /// `email`, as typed.
    pub email: String,
    /// `list`; default the first of `[signup] lists`.
    pub list: Option<String>,
    /// `language`, for a new contact.
    pub language: Option<String>,
    /// `site`, for a new contact.
    pub site: Option<String>,
    /// Every field of the form (name, value); those `[signup] fields`
    /// opens are set on a new contact, the others are ignored.
    pub fields: Vec<(String, String)>,
    /// The client's IP address (consent evidence).
    pub ip: Option<String>,
    /// The client's user agent (consent evidence).
    pub user_agent: Option<String>,
}

/// What a signup did. The form answers the same for both: a stranger must
/// not learn whether an address was erased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribed {
    /// The request is recorded and the confirmation mail queued.
    Mailed {
        /// The address as the answer shows it (normalised).
        email: String,
        /// The confirmation mail's queue id.
        queue_id: u64,
    },
    /// The address was erased: nothing stored, nothing sent.
    Suppressed {
        /// The address as the answer shows it (normalised).
        email: String,
    },
}

impl Subscribed {
    /// The address as the answer shows it.
    pub fn email(&self) -> &str {
        match self {
            Subscribed::Mailed { email, .. } | Subscribed::Suppressed { email } => email,
        }
    }
}

/// Why a signup was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SignupError {
    /// There is no `[signup]` section: the form is off.
    #[error("the signup form is not enabled (add a [signup] section to the config)")]
    Disabled,
    /// A field of the form is wrong (the message names it); nothing was
    /// stored.
    #[error("{0}")]
    Invalid(String),
    /// `[signup] template` is not loaded, so no confirmation can be sent.
    /// The request is stored; a later signup mails a new link.
    #[error("the confirmation template `{0}` is not loaded")]
    TemplateNotLoaded(String),
    /// The confirmation mail could not be rendered or queued.
    #[error(transparent)]
    Confirmation(#[from] OutboxError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The form's checks, in the order their errors are reported: address,
/// list, language, site; then the custom fields against their
/// definitions, inside the write.
fn check(sc: &SignupConfig, sites: &[Site], form: SignupForm) -> Result<SignupInput, SignupError> {
    let email = crate::contacts::normalize_email(&form.email)
        .map_err(|e| SignupError::Invalid(format!("email: {e}")))?;
    let asked = form
        .list
        .as_deref()
        .or(sc.lists.first().map(String::as_str))
        .unwrap_or_default()
        .trim();
    let Some(list) = sc.lists.iter().find(|l| l.eq_ignore_ascii_case(asked)) else {
        return Err(SignupError::Invalid(format!(
            "list: `{asked}` is not open to signup"
        )));
    };
    if let Some(l) = &form.language
        && !crate::config::is_language(l)
    {
        return Err(SignupError::Invalid(format!(
            "language: `{l}` is not a language code such as en or pt-BR"
        )));
    }
    if let Some(s) = &form.site
        && !sites.iter().any(|x| &x.id == s)
    {
        return Err(SignupError::Invalid(format!("site: no site `{s}`")));
    }
    // Custom fields: only those the config opens, checked against their
    // definitions in the write.
    let mut fields = Vec::new();
    for f in &sc.fields {
        if let Some((_, v)) = form.fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(f))
            && !v.trim().is_empty()
        {
            fields.push((f.clone(), v.trim().to_string()));
        }
    }
    Ok(SignupInput {
        email,
        list: list.clone(),
        language: form.language,
        site: form.site,
        fields,
        ip: form.ip,
        user_agent: form.user_agent,
    })
}

/// A signup: checks the form, records the request (a new address becomes
/// a `pending` contact; a known one changes in nothing) and queues the
/// confirmation mail with a link for this request. The mail is
/// [`MailKind::Confirmation`]: it answers the person's own request, so it
/// goes whatever their stored consent. The caller wakes delivery after
/// [`Subscribed::Mailed`].
pub async fn subscribe(cx: Context<'_>, form: SignupForm) -> Result<Subscribed, SignupError> {
    let Some(sc) = cx.snapshot.config.signup.as_ref() else {
        return Err(SignupError::Disabled);
    };
    let input = check(sc, &cx.snapshot.config.sites, form)?;
    let now = DateTime::from_timestamp_millis(cx.now).unwrap_or_default();
    let email = input.email.display.clone();
    let list = input.list.clone();
    let requested = cx
        .store
        .write(move |t| signup::request(t, &input, now))
        .await?
        .map_err(|e| SignupError::Invalid(e.to_string()))?;
    let (contact, request) = match requested {
        Requested::Confirm { contact, request } => (contact, request),
        Requested::Suppressed => return Ok(Subscribed::Suppressed { email }),
    };
    let token = cx.snapshot.config.tracking.keys.sign(&Token::Confirm {
        contact: contact.id,
        issued: now.timestamp().max(0) as u64,
        request: Some(request),
    });
    let confirm_url = format!("{}/confirm/{token}", cx.snapshot.config.http.public_base());
    let template = cx
        .snapshot
        .templates
        .get(&sc.template)
        .cloned()
        .ok_or_else(|| SignupError::TemplateNotLoaded(sc.template.clone()))?;
    let recipient = crate::render::Recipient {
        contact: Arc::new(*contact),
        cart: None,
        order: None,
        data: Some(json!({"confirm_url": confirm_url, "list": list})),
        products: None,
        coupon: None,
        occurrence: None,
    };
    let (queue_id, _) =
        queue_template(cx, &template, recipient, None, MailKind::Confirmation).await?;
    Ok(Subscribed::Mailed { email, queue_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SignupConfig {
        SignupConfig {
            lists: vec!["News".into(), "offers".into()],
            template: "confirm".into(),
            confirm_ttl: std::time::Duration::from_secs(86400),
            rate_per_ip_per_hour: 3,
            honeypot: "website".into(),
            fields: vec!["first_name".into()],
            thanks_url: None,
            confirmed_url: None,
            template_position: None,
        }
    }

    fn form(email: &str) -> SignupForm {
        SignupForm {
            email: email.into(),
            ..Default::default()
        }
    }

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// What a form that passes would store.
    fn accepted(f: SignupForm) -> Result<SignupInput, SignupError> {
        check(&config(), &[], f)
    }

    /// The message of a form refused as invalid input.
    fn refused(f: SignupForm) -> String {
        match check(&config(), &[], f) {
            Err(SignupError::Invalid(m)) => m,
            Err(e) => format!("not an input error: {e}"),
            Ok(_) => "accepted".into(),
        }
    }

    #[test]
    fn the_form_is_checked_field_by_field_and_names_the_field() -> TestResult {
        let i = accepted(form("  Ann@Example.TEST "))?;
        assert_eq!(i.email.display, "Ann@example.test");
        assert_eq!(i.list, "News", "the first list by default");
        let i = accepted(SignupForm {
            list: Some(" OFFERS ".into()),
            ..form("a@example.test")
        })?;
        assert_eq!(i.list, "offers", "the config's spelling");

        assert!(refused(form("not-an-address")).starts_with("email: "));
        assert_eq!(
            refused(SignupForm {
                list: Some("secret".into()),
                ..form("a@example.test")
            }),
            "list: `secret` is not open to signup"
        );
        assert_eq!(
            refused(SignupForm {
                language: Some("english please".into()),
                ..form("a@example.test")
            }),
            "language: `english please` is not a language code such as en or pt-BR"
        );
        assert_eq!(
            refused(SignupForm {
                site: Some("shop".into()),
                ..form("a@example.test")
            }),
            "site: no site `shop`"
        );
        // The address is checked first.
        assert!(
            refused(SignupForm {
                list: Some("secret".into()),
                ..form("nope")
            })
            .starts_with("email: ")
        );
        Ok(())
    }

    #[test]
    fn only_the_fields_the_config_opens_are_taken() -> TestResult {
        let i = accepted(SignupForm {
            fields: vec![
                ("email".into(), "a@example.test".into()),
                ("First_Name".into(), "  Ann ".into()),
                ("plan".into(), "gold".into()),
            ],
            ..form("a@example.test")
        })?;
        assert_eq!(i.fields, [("first_name".to_string(), "Ann".to_string())]);
        let i = accepted(SignupForm {
            fields: vec![("first_name".into(), "  ".into())],
            ..form("a@example.test")
        })?;
        assert!(i.fields.is_empty(), "an empty field is not set");
        Ok(())
    }
}
