//! Rendering one message outside a send: the preview endpoint, the offline
//! `herald templates render` command and template messages sent through the
//! API. Sample data comes from the template's `sample.json`:
//!
//! ```json
//! { "contact": {"email": "ann@example.com", "language": "pl", "site": "shop",
//!               "fields": {"first_name": "Anna"}},
//!   "products": [{"sku": "A1", "name": "…", "price": "19.99", "currency": "PLN"}],
//!   "cart": {…}, "order": {…}, "data": {"discount_code": "HB-2026"},
//!   "coupon": "WELCOME-7Q2X",
//!   "sites": {"outlet": {"products": […]}} }
//! ```
//!
//! `sites.<id>` holds values for one site's contacts (`products`, `cart`,
//! `order`, `data`, `coupon`) where they differ from the top level's, e.g. product
//! URLs on that site's address for `autologin_url(p.url)`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;

use super::compile::{Compiled, Recipient, Rendered, SendOptions};
use super::template::Template;
use crate::config::Config;
use crate::contacts::model::{ConsentState, Contact, FieldValue};
use crate::shop::Product;
use crate::tokens::{SendKind, SendRef};

/// What to render.
#[derive(Debug, Clone, Default)]
pub struct PreviewInput {
    /// The contact; `None` uses the sample contact.
    pub contact: Option<Contact>,
    /// Render in this language (overrides the contact's).
    pub language: Option<String>,
    /// Render for this site (overrides the contact's).
    pub site: Option<String>,
    /// Featured products; `None` uses the sample's.
    pub products: Option<Vec<Product>>,
    /// Cart; `None` uses the sample's.
    pub cart: Option<serde_json::Value>,
    /// Order; `None` uses the sample's.
    pub order: Option<serde_json::Value>,
    /// Values for `data`; `None` uses the sample's.
    pub data: Option<serde_json::Value>,
    /// The contact's code for `coupon`; `None` uses the sample's.
    pub coupon: Option<String>,
    /// Personal greeting.
    pub personalize: bool,
    /// Rewrite links and add the pixel, as in a real send.
    pub tracking: bool,
}

/// A rendered preview and its MIME message.
#[derive(Debug, Clone)]
pub struct Preview {
    /// Subject, bodies, Message-ID.
    pub rendered: Rendered,
    /// The complete message (unsigned).
    pub mime: Vec<u8>,
}

/// Keys of `sample.json` that `sites.<id>` may give for one site.
pub const SITE_SAMPLE_KEYS: &[&str] = &["products", "cart", "order", "data", "coupon"];

/// The sample's `key`: the site's own value when `sites.<site>` has one,
/// otherwise the top level's.
fn sample(t: &Template, site: Option<&str>, key: &str) -> Option<serde_json::Value> {
    let s = t.sample.as_ref()?;
    site.and_then(|id| s.get("sites")?.get(id)?.get(key))
        .or_else(|| s.get(key))
        .cloned()
}

/// The sample contact of a template (or a neutral one).
pub fn sample_contact(t: &Template) -> Result<Contact, String> {
    let now = Utc::now();
    let mut c = Contact {
        id: 0,
        email: "sample@example.com".into(),
        consent: ConsentState::Granted,
        phone: None,
        sms_consent: ConsentState::Unknown,
        language: None,
        site: None,
        fields: BTreeMap::new(),
        lists: BTreeSet::new(),
        tags: BTreeSet::new(),
        created_at: now,
        updated_at: now,
    };
    let Some(s) = sample(t, None, "contact") else {
        return Ok(c);
    };
    let obj = s
        .as_object()
        .ok_or("sample.json: `contact` must be an object")?;
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("email", serde_json::Value::String(e)) => c.email = e.clone(),
            ("language", serde_json::Value::String(l)) => c.language = Some(l.clone()),
            ("site", serde_json::Value::String(x)) => c.site = Some(x.clone()),
            ("id", serde_json::Value::Number(n)) => c.id = n.as_u64().unwrap_or(0),
            ("fields", serde_json::Value::Object(f)) => {
                for (name, val) in f {
                    let fv = match val {
                        serde_json::Value::String(s) => FieldValue::Text(s.clone()),
                        serde_json::Value::Bool(b) => FieldValue::Boolean(*b),
                        serde_json::Value::Number(n) => FieldValue::Number(n.to_string()),
                        _ => {
                            return Err(format!(
                                "sample.json: contact field `{name}` must be a string, number or boolean"
                            ));
                        }
                    };
                    c.fields.insert(name.clone(), fv);
                }
            }
            ("tags", serde_json::Value::Array(a)) => {
                c.tags = a
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect();
            }
            (other, _) => {
                return Err(format!(
                    "sample.json: unknown or mistyped contact key `{other}` (email, language, site, id, fields, tags)"
                ));
            }
        }
    }
    Ok(c)
}

/// The sample products of a template (the site's own when `sample.json`
/// gives some for it).
pub fn sample_products(t: &Template, site: Option<&str>) -> Result<Vec<Product>, String> {
    match sample(t, site, "products") {
        None => Ok(Vec::new()),
        Some(v) => {
            let ps: Vec<Product> =
                serde_json::from_value(v).map_err(|e| format!("sample.json: `products`: {e}"))?;
            for p in &ps {
                p.check()
                    .map_err(|e| format!("sample.json: product {}: {e}", p.sku))?;
            }
            Ok(ps)
        }
    }
}

/// Renders one message of `template` for a preview or a single send.
pub fn render(
    template: Arc<Template>,
    config: &Config,
    send: SendRef,
    input: PreviewInput,
    now_ms: i64,
) -> Result<Preview, String> {
    let (compiled, recipient) = prepare(template, config, send, input)?;
    let rendered = compiled.render(&recipient).map_err(|e| e.0)?;
    let mime = compiled.build(&rendered, now_ms).map_err(|e| e.0)?;
    Ok(Preview { rendered, mime })
}

/// A rendered text message and what it costs.
#[derive(Debug, Clone)]
pub struct SmsPreview {
    /// The text as it would be sent.
    pub text: String,
    /// Encoding, characters, units and parts.
    pub analysis: crate::sms::encoding::Analysis,
    /// Warnings: more parts than `[sms] max_parts`, accents that force
    /// UCS-2.
    pub warnings: Vec<String>,
}

/// Renders the SMS of `template` for a preview, with its encoding and
/// parts.
pub fn render_sms(
    template: Arc<Template>,
    config: &Config,
    send: SendRef,
    input: PreviewInput,
    now_ms: i64,
) -> Result<SmsPreview, String> {
    use crate::sms::encoding::{Encoding, analyze, transliterate};
    let (compiled, recipient) = prepare(template.clone(), config, send, input)?;
    let sent = (now_ms / 1000).max(0) as u64;
    let text = compiled.render_sms(&recipient, sent).map_err(|e| e.0)?;
    let analysis = analyze(&text);
    let max = config.sms.max_parts;
    let mut warnings = Vec::new();
    if analysis.parts > max {
        warnings.push(format!(
            "{} parts: more than [sms] max_parts ({max}); each part is billed",
            analysis.parts
        ));
    }
    if analysis.encoding == Encoding::Ucs2 && !template.sms_transliterate {
        let plain = analyze(&transliterate(&text));
        if plain.encoding == Encoding::Gsm7 {
            warnings.push(format!(
                "accented letters make this UCS-2 (70 characters a part, {} parts); `sms_transliterate = true` in template.toml would send it as GSM-7 in {} parts",
                analysis.parts, plain.parts
            ));
        }
    }
    Ok(SmsPreview {
        text,
        analysis,
        warnings,
    })
}

/// The compiled template and the recipient a preview renders.
fn prepare(
    template: Arc<Template>,
    config: &Config,
    send: SendRef,
    input: PreviewInput,
) -> Result<(Compiled, Recipient), String> {
    let mut contact = match input.contact {
        Some(c) => c,
        None => sample_contact(&template)?,
    };
    if let Some(l) = input.language {
        contact.language = Some(l);
    }
    if let Some(s) = input.site {
        if config.site(&s).is_none() {
            return Err(format!("no [[site]] has id `{s}`"));
        }
        contact.site = Some(s);
    }
    let site = contact.site.clone();
    let site = site.as_deref();
    let products = match input.products {
        Some(p) => p,
        None => sample_products(&template, site)?,
    };
    let compiled = Compiled::new(
        template.clone(),
        config,
        SendOptions {
            send,
            personalize: input.personalize,
            tracking: input.tracking,
            products,
            data: input
                .data
                .or_else(|| sample(&template, site, "data"))
                .unwrap_or(serde_json::Value::Null),
            links: Vec::new(),
        },
    )?;
    let recipient = Recipient {
        contact: Arc::new(contact),
        cart: input.cart.or_else(|| sample(&template, site, "cart")),
        order: input.order.or_else(|| sample(&template, site, "order")),
        data: None,
        products: None,
        coupon: input.coupon.or_else(|| {
            sample(&template, site, "coupon").and_then(|c| c.as_str().map(String::from))
        }),
        occurrence: None,
    };
    Ok((compiled, recipient))
}

/// A preview send: links in it lead nowhere.
pub fn preview_send() -> SendRef {
    SendRef {
        kind: SendKind::Preview,
        id: 0,
        variant: 0,
    }
}
