//! A template compiled for one send, and rendering one recipient with it.
//!
//! [`Compiled::new`] builds one minijinja environment holding every part of
//! every variant, the products of the send and the per-site values; it is
//! shared by all rendering threads. [`Compiled::render`] picks the variant for
//! the contact, renders subject, preheader, HTML and text with the contact's
//! context, rewrites links and adds the pixel; [`Compiled::build`] makes the
//! MIME message (mail-builder).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::raw::Raw;
use minijinja::value::{Object, ObjectExt, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State};

use super::links::{self, LinkRecord, LinkTable, MessageLinks, Tracker};
use super::locale;
use super::template::{Kind, Template, Variant};
use crate::config::{Config, Greeting, Sender, Site};
use crate::contacts::model::{Contact, FieldValue};
use crate::shop::Product;
use crate::tokens::{Keys, MessageRef, SendRef, Token};

/// The environment settings every template is checked and rendered with:
/// HTML auto-escaping for HTML parts (names ending in `.html` or `.mjml`),
/// blocks that do not leave blank lines, lenient undefined values (unknown
/// names are refused at load instead, see `template.rs`).
pub fn base_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") || name.ends_with(".mjml") || name.contains("[preheader") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    // Nothing for none/undefined (a missing field is empty, not "none");
    // in HTML escape the five characters that matter (`& < > " '`), not `/`,
    // so URLs stay readable and short.
    env.set_formatter(|out, state, value| {
        if value.is_undefined() || value.is_none() {
            return Ok(());
        }
        if matches!(state.auto_escape(), AutoEscape::Html)
            && !value.is_safe()
            && let Some(s) = value.as_str()
        {
            return out
                .write_str(&html_escape::encode_quoted_attribute(s))
                .map_err(Error::from);
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("money", money_filter);
    env.add_function("autologin_url", |_: String| -> Result<String, Error> {
        Ok(String::new())
    });
    env
}

/// `{{ amount | money }}` or `{{ amount | money("EUR") }}`: the amount in the
/// message's language; the currency defaults to the site's.
fn money_filter(state: &State, amount: Value, currency: Option<String>) -> Result<String, Error> {
    let lang = state
        .lookup("__lang")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "en".into());
    let currency = currency
        .or_else(|| {
            state
                .lookup("site")
                .and_then(|s| s.get_attr("currency").ok())
                .and_then(|c| c.as_str().map(str::to_string))
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "money: give a currency (money(\"EUR\")) or set the site's currency",
            )
        })?;
    let text = amount.to_string();
    locale::money(&text, &currency, &lang).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("money: `{text}` is not an amount"),
        )
    })
}

/// A contact as templates see it: `contact.email`, `contact.first_name`…
#[derive(Debug)]
pub struct ContactView(pub Arc<Contact>);

fn field_value(v: &FieldValue) -> Value {
    match v {
        FieldValue::Text(s) | FieldValue::Choice(s) => Value::from(s.as_str()),
        FieldValue::Number(n) => n
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| n.parse::<f64>().map(Value::from))
            .unwrap_or_else(|_| Value::from(n.as_str())),
        FieldValue::Date(d) => Value::from(d.format("%Y-%m-%d").to_string()),
        FieldValue::Boolean(b) => Value::from(*b),
    }
}

/// Named values as a template map: a field is found by comparing names,
/// where minijinja's maps of serialised values (and merged contexts)
/// compare each entry as a value, a fifth of a product block's rendering
/// time. Keys are the field names of a JSON object, or the context's own.
#[derive(Debug)]
struct Fields<K>(Vec<(K, Value)>);

impl<K: AsRef<str> + std::fmt::Debug + Send + Sync + 'static> Object for Fields<K> {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.0
            .iter()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        self.mapped_enumerator(|this| Box::new(this.0.iter().map(|(k, _)| Value::from(k.as_ref()))))
    }
}

/// `v` as a template value, objects (at any depth) as [`Fields`].
fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Object(m) => Value::from_object(Fields(
            m.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        )),
        serde_json::Value::Array(a) => Value::from_iter(a.into_iter().map(json_value)),
        other => Value::from_serialize(other),
    }
}

impl Object for ContactView {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let c = &self.0;
        Some(match key.as_str()? {
            "id" => Value::from(c.id),
            "email" => Value::from(c.email.as_str()),
            "language" => Value::from(c.language.clone()),
            "site" => Value::from(c.site.clone()),
            "consent" => Value::from(c.consent.as_str()),
            "tags" => Value::from_serialize(&c.tags),
            "created_at" => Value::from(c.created_at.to_rfc3339()),
            "fields" => Value::from_iter(c.fields.iter().map(|(k, v)| (k.clone(), field_value(v)))),
            name => return c.fields.get(name).map(field_value),
        })
    }
}

/// What a send decides about rendering.
#[derive(Debug, Clone)]
pub struct SendOptions {
    /// The send (campaign and variant, automation, test, preview).
    pub send: SendRef,
    /// Personal greeting (with the contact's name) or the neutral one.
    pub personalize: bool,
    /// Click and open tracking; effective only if the template allows it.
    pub tracking: bool,
    /// Featured products, in order, for `products`.
    pub products: Vec<Product>,
    /// Send-wide values for `data` (a discount code, a campaign name…).
    pub data: serde_json::Value,
    /// Links already recorded for this send (after a restart).
    pub links: Vec<(u32, LinkRecord)>,
}

/// One recipient of a send.
#[derive(Debug, Clone)]
pub struct Recipient {
    /// The contact.
    pub contact: Arc<Contact>,
    /// Their cart, for abandoned-cart mail.
    pub cart: Option<serde_json::Value>,
    /// The order the mail is about.
    pub order: Option<serde_json::Value>,
    /// Per-recipient values merged over the send's `data`.
    pub data: Option<serde_json::Value>,
    /// Products for this recipient instead of the send's (back in stock).
    pub products: Option<Vec<Product>>,
    /// A code of the contact's own (a first-order discount), `coupon` in
    /// templates.
    pub coupon: Option<String>,
    /// The trigger occurrence an automation step is for: when set, the
    /// Message-ID of a send other than transactional names it, so each
    /// occurrence gets its own and a re-render the same.
    pub occurrence: Option<u64>,
}

impl Recipient {
    /// A recipient with only a contact.
    pub fn new(contact: Contact) -> Recipient {
        Recipient {
            contact: Arc::new(contact),
            cart: None,
            order: None,
            data: None,
            products: None,
            coupon: None,
            occurrence: None,
        }
    }
}

/// A rendered message before MIME assembly.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Contact id.
    pub contact: u64,
    /// Recipient address.
    pub email: String,
    /// The variant's language.
    pub language: String,
    /// The variant's site override, if one was used.
    pub site: Option<String>,
    /// Subject.
    pub subject: String,
    /// Preheader text (also inside the HTML, hidden).
    pub preheader: Option<String>,
    /// HTML body (links rewritten, pixel added when tracking).
    pub html: String,
    /// Text body.
    pub text: String,
    /// Message-ID without brackets.
    pub message_id: String,
    /// From display name.
    pub from_name: Option<String>,
    /// Reply-To.
    pub reply_to: Option<String>,
    /// `List-Unsubscribe` URL (marketing mail).
    pub unsubscribe_url: String,
}

/// Why one recipient could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RenderError(pub String);

/// A template compiled for one send.
pub struct Compiled {
    template: Arc<Template>,
    env: Environment<'static>,
    /// The sender identity (`None` for a template with only SMS bodies).
    sender: Option<Arc<Sender>>,
    sites: Arc<Vec<Site>>,
    site_values: HashMap<String, Value>,
    keys: Keys,
    public: String,
    tracker: Arc<Tracker>,
    greetings: BTreeMap<String, Greeting>,
    name_fields: Vec<String>,
    opts: SendOptions,
    tracking: bool,
    /// The HTML bodies carry anchor marks (`links::instrument`).
    marked_anchors: bool,
    products: Mutex<HashMap<String, Value>>,
    send_value: Value,
}

fn part_name(v: &Variant, part: &str) -> String {
    format!("{}/{}/{part}", v.site.as_deref().unwrap_or("_"), v.language)
}

fn render_err(what: &str, e: &Error) -> RenderError {
    let mut msg = format!("{what}: {}", e.detail().unwrap_or(&e.to_string()));
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (line {line})"));
    }
    RenderError(msg)
}

impl Compiled {
    /// Compiles `template` for a send. Fails when the template's sender is
    /// not configured or a part does not compile.
    pub fn new(
        template: Arc<Template>,
        config: &Config,
        opts: SendOptions,
    ) -> Result<Compiled, String> {
        let sender = config.sender(&template.sender).cloned();
        if sender.is_none() && !template.variants.is_empty() {
            return Err(format!(
                "template {}: no [[sender]] `{}`",
                template.name, template.sender
            ));
        }
        let sites = Arc::new(config.sites.clone());
        let tracking = opts.tracking && template.tracking;
        let mut env = base_env();
        // Anchors are marked in every HTML body or in none.
        let marked_anchors =
            tracking && template.variants.values().all(|v| links::can_mark(&v.html));
        for v in template.variants.values() {
            let html = links::instrument(&v.html, marked_anchors);
            for (part, src) in [
                ("subject", Some(&v.subject)),
                ("preheader.html", v.preheader.as_ref()),
                ("body.html", Some(&html)),
                ("body.txt", Some(&v.text)),
            ] {
                if let Some(src) = src {
                    env.add_template_owned(part_name(v, part), src.clone())
                        .map_err(|e| format!("template {} ({part}): {e}", template.name))?;
                }
            }
        }
        for v in template.sms.values() {
            let name = format!(
                "{}/{}/body.sms",
                v.site.as_deref().unwrap_or("_"),
                v.language
            );
            env.add_template_owned(name, v.text.clone())
                .map_err(|e| format!("template {} (SMS): {e}", template.name))?;
        }
        let public = config.http.public_base();
        let tracker = Arc::new(Tracker {
            public: public.clone(),
            keys: config.tracking.keys.clone(),
            table: LinkTable::new(opts.links.clone()),
        });
        let al_sites = sites.clone();
        env.add_function(
            "autologin_url",
            move |state: &State, url: String| -> Result<Value, Error> {
                let u = autologin(state, &al_sites, &url)?;
                // In HTML, escape only what must be (`&` in the query), not
                // every `/` as auto-escaping would.
                Ok(if matches!(state.auto_escape(), AutoEscape::Html) {
                    Value::from_safe_string(html_escape::encode_quoted_attribute(&u).into_owned())
                } else {
                    Value::from(u)
                })
            },
        );
        let site_values = config
            .sites
            .iter()
            .map(|s| {
                (
                    s.id.clone(),
                    Value::from_serialize(serde_json::json!({
                        "id": s.id, "name": s.name,
                        // Without the trailing slash: `site.url ~ '/cart'`.
                        "url": s.url.as_str().trim_end_matches('/'),
                        "currency": s.currency,
                    })),
                )
            })
            .collect();
        let send_value = Value::from_serialize(serde_json::json!({
            "kind": format!("{:?}", opts.send.kind).to_lowercase(),
            "id": opts.send.id,
            "variant": opts.send.variant,
            "template": template.name,
        }));
        Ok(Compiled {
            tracking,
            marked_anchors,
            tracker,
            template,
            env,
            sender,
            sites,
            site_values,
            keys: config.tracking.keys.clone(),
            public,
            greetings: config.rendering.greetings.clone(),
            name_fields: config.rendering.name_fields.clone(),
            opts,
            products: Mutex::new(HashMap::new()),
            send_value,
        })
    }

    /// The template.
    pub fn template(&self) -> &Arc<Template> {
        &self.template
    }

    /// The send's link table (new links must be recorded with the messages).
    pub fn links(&self) -> &LinkTable {
        &self.tracker.table
    }

    /// The sender identity; an error for a template without e-mail bodies.
    pub fn sender(&self) -> Result<&Arc<Sender>, RenderError> {
        self.sender.as_ref().ok_or_else(|| {
            RenderError(format!(
                "template {} has no e-mail body and no sender",
                self.template.name
            ))
        })
    }

    /// The contact's site, or the first configured site (the default one).
    fn site_of(&self, c: &Contact) -> Option<&Site> {
        match &c.site {
            Some(id) => self.sites.iter().find(|s| &s.id == id),
            None => None,
        }
        .or_else(|| self.sites.first())
    }

    fn products_for(&self, lang: &str) -> Value {
        let mut cache = match self.products.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        cache
            .entry(lang.to_string())
            .or_insert_with(|| {
                Value::from_iter(
                    self.opts
                        .products
                        .iter()
                        .map(|p| json_value(product_json(p, lang))),
                )
            })
            .clone()
    }

    fn greeting(&self, c: &Contact, lang: &str) -> String {
        let base = lang.split('-').next().unwrap_or(lang);
        let g = self
            .greetings
            .get(lang)
            .or_else(|| self.greetings.get(base))
            .or_else(|| self.greetings.get("en"));
        let Some(g) = g else { return String::new() };
        if self.opts.personalize {
            let name = self.name_fields.iter().find_map(|f| match c.fields.get(f) {
                Some(FieldValue::Text(s)) | Some(FieldValue::Choice(s)) if !s.trim().is_empty() => {
                    Some(s.trim())
                }
                _ => None,
            });
            if let Some(name) = name {
                return g.personal.replace("{name}", name);
            }
        }
        g.neutral.clone()
    }

    /// What every part of a message renders with: the contact, greeting,
    /// products, data, site, the message's own links; and the
    /// unsubscribe URL.
    fn context(
        &self,
        r: &Recipient,
        site: Option<&Site>,
        lang: &str,
        message: MessageRef,
        sent: u64,
    ) -> (Vec<(&'static str, Value)>, String) {
        let c = &r.contact;
        let url = |t: Token, path: &str| format!("{}/{path}/{}", self.public, self.keys.sign(&t));
        let unsubscribe_url = url(Token::Unsubscribe(message), "u");
        let data = match (&r.data, &self.opts.data) {
            (Some(serde_json::Value::Object(own)), serde_json::Value::Object(send)) => {
                let mut m = send.clone();
                m.extend(own.clone());
                Value::from_serialize(&m)
            }
            (Some(own), _) => Value::from_serialize(own),
            (None, d) => Value::from_serialize(d),
        };
        let pixel = if self.tracking {
            links::pixel(&url(Token::Open(message), "o"))
        } else {
            String::new()
        };
        let products = match &r.products {
            Some(p) => Value::from_iter(p.iter().map(|p| json_value(product_json(p, lang)))),
            None => self.products_for(lang),
        };
        let common = vec![
            ("contact", Value::from_object(ContactView(c.clone()))),
            ("greeting", Value::from(self.greeting(c, lang))),
            ("products", products),
            (
                "cart",
                Value::from(r.cart.as_ref().map(Value::from_serialize)),
            ),
            (
                "order",
                Value::from(r.order.as_ref().map(Value::from_serialize)),
            ),
            ("coupon", Value::from(r.coupon.clone())),
            ("data", data),
            (
                "site",
                Value::from(site.and_then(|s| self.site_values.get(&s.id).cloned())),
            ),
            ("send", self.send_value.clone()),
            ("unsubscribe_url", own_url(unsubscribe_url.clone())),
            (
                "preferences_url",
                own_url(url(Token::Preferences(message), "u")),
            ),
            (
                "view_in_browser_url",
                own_url(url(Token::View(message, Some(sent)), "v")),
            ),
            ("__lang", Value::from(lang)),
            ("__sent", Value::from(sent)),
            ("__pixel", Value::from_safe_string(pixel)),
        ];
        (common, unsubscribe_url)
    }

    /// Renders the text message (SMS) of one recipient sent at `sent`
    /// (seconds): the contact's SMS variant, links turned into Herald click
    /// links (when tracking), transliterated when the template allows.
    pub fn render_sms(&self, r: &Recipient, sent: u64) -> Result<String, RenderError> {
        let c = &r.contact;
        let site = self.site_of(c);
        let variant = self
            .template
            .sms_variant(site, c.language.as_deref())
            .ok_or_else(|| {
                RenderError(format!("template {} has no SMS body", self.template.name))
            })?;
        let lang = variant.language.as_str();
        let message = MessageRef {
            send: self.opts.send,
            contact: c.id,
        };
        let (vars, _) = self.context(r, site, lang, message, sent);
        let ctx = Value::from_object(Fields(vars));
        let name = format!(
            "{}/{}/body.sms",
            variant.site.as_deref().unwrap_or("_"),
            variant.language
        );
        let t = self
            .env
            .get_template(&name)
            .map_err(|e| render_err("SMS", &e))?;
        let mut text = t.render(&ctx).map_err(|e| render_err("SMS", &e))?;
        text = text.trim().to_string();
        if self.tracking {
            let m = message_links(site, message, sent);
            text = links::rewrite_text_links(&text, &self.tracker, &m);
        }
        if self.template.sms_transliterate {
            text = crate::sms::encoding::transliterate(&text);
        }
        Ok(text)
    }

    /// Renders one recipient, sent now.
    pub fn render(&self, r: &Recipient) -> Result<Rendered, RenderError> {
        self.render_at(r, chrono::Utc::now().timestamp().max(0) as u64)
    }

    /// Renders one recipient as sent at `sent` (seconds since the epoch):
    /// click and view tokens carry that time, and auto-login links expire
    /// with it (`autologin_window`), so rendering an old message again (view
    /// in browser) gives the same, expired, links.
    pub fn render_at(&self, r: &Recipient, sent: u64) -> Result<Rendered, RenderError> {
        let c = &r.contact;
        let site = self.site_of(c);
        let variant = self
            .template
            .variant(site, c.language.as_deref())
            .ok_or_else(|| RenderError(format!("template {} has no body", self.template.name)))?;
        let lang = variant.language.as_str();
        let message = MessageRef {
            send: self.opts.send,
            contact: c.id,
        };
        let (mut vars, unsubscribe_url) = self.context(r, site, lang, message, sent);
        // The preheader renders first: the body shows it hidden at its top.
        let preheader = match &variant.preheader {
            Some(_) => {
                let name = part_name(variant, "preheader.html");
                let t = self
                    .env
                    .get_template(&name)
                    .map_err(|e| render_err("preheader", &e))?;
                let common = Value::from_object(Fields(vars.clone()));
                Some(t.render(&common).map_err(|e| render_err("preheader", &e))?)
            }
            None => None,
        };
        vars.push((
            "__preheader",
            Value::from_safe_string(
                preheader
                    .as_deref()
                    .map(links::preheader_block)
                    .unwrap_or_default(),
            ),
        ));
        let ctx = Value::from_object(Fields(vars));
        let part = |p: &str| -> Result<String, RenderError> {
            let name = part_name(variant, p);
            let t = self
                .env
                .get_template(&name)
                .map_err(|e| render_err(p, &e))?;
            t.render(&ctx).map_err(|e| render_err(p, &e))
        };
        let subject = part("subject")?.trim().replace(['\r', '\n'], " ");
        let mut html = part("body.html")?;
        if self.tracking {
            let m = message_links(site, message, sent);
            html = links::rewrite_links(&html, &self.tracker, &m, self.marked_anchors);
        }
        let text = part("body.txt")?;
        let s = self.opts.send;
        Ok(Rendered {
            contact: c.id,
            email: c.email.clone(),
            language: lang.to_string(),
            site: variant.site.clone(),
            subject,
            preheader: preheader.map(|p| html_escape::decode_html_entities(&p).into_owned()),
            html,
            text,
            message_id: message_id(s, c.id, r.occurrence, &self.sender()?.domain),
            from_name: variant
                .from_name
                .clone()
                .or_else(|| self.template.from_name.clone()),
            reply_to: variant
                .reply_to
                .clone()
                .or_else(|| self.template.reply_to.clone()),
            unsubscribe_url,
        })
    }

    /// Assembles the MIME message (not yet DKIM-signed: the queue signs).
    pub fn build(&self, r: &Rendered, now_ms: i64) -> Result<Vec<u8>, RenderError> {
        let sender = self.sender()?;
        let (sender_name, _) = crate::delivery::queue::mailbox_parts(&sender.from);
        let name = r.from_name.clone().or(sender_name);
        let s = self.opts.send;
        let mut b = MessageBuilder::new()
            .from(Address::new_address(name, sender.from_address.clone()))
            .to(Address::new_address(None::<String>, r.email.clone()))
            .subject(r.subject.clone())
            .message_id(r.message_id.clone())
            .date(mail_builder::headers::date::Date::new(now_ms / 1000))
            .header(
                "Feedback-ID",
                Raw::new(format!(
                    "{}{}:{}:{}:{}",
                    s.kind.letter(),
                    s.id,
                    s.variant,
                    self.template.name,
                    sender.id
                )),
            );
        if let Some(rt) = &r.reply_to {
            let (n, a) = crate::delivery::queue::mailbox_parts(rt);
            b = b.reply_to(Address::new_address(n, a));
        }
        if self.template.kind == Kind::Marketing {
            let mut lu = format!("<{}>", r.unsubscribe_url);
            if let Some(m) = &sender.unsubscribe_mailto {
                let token = r.unsubscribe_url.rsplit('/').next().unwrap_or("");
                lu.push_str(&format!(", <mailto:{m}?subject=unsubscribe%20{token}>"));
            }
            b = b
                .header("List-Unsubscribe", Raw::new(lu))
                .header(
                    "List-Unsubscribe-Post",
                    Raw::new("List-Unsubscribe=One-Click"),
                )
                .header(
                    "List-Id",
                    Raw::new(format!("<{}.{}>", sender.id, sender.domain)),
                );
        }
        // HTML with its non-ASCII characters as character references is
        // ASCII, so it travels as 7bit instead of being quoted-printable
        // encoded (which was the largest cost of building a message).
        use mail_builder::mime::{BodyPart, MimePart};
        let html_part = match html_7bit(&r.html) {
            Some(body) => {
                MimePart::new("text/html", BodyPart::Text(body.into())).transfer_encoding("7bit")
            }
            None => MimePart::new("text/html", BodyPart::Text(r.html.as_str().into())),
        };
        let text_part = MimePart::new("text/plain", BodyPart::Text(r.text.as_str().into()));
        b = b.body(MimePart::new(
            "multipart/alternative",
            vec![text_part, html_part],
        ));
        b.write_to_vec()
            .map_err(|e| RenderError(format!("cannot build the message: {e}")))
    }
}

/// The link state of one message sent at `sent` to a contact of `site`
/// (whose auto-login parameter recorded URLs leave out).
fn message_links(site: Option<&Site>, message: MessageRef, sent: u64) -> MessageLinks {
    MessageLinks::new(
        message,
        site.and_then(|s| s.autologin.as_ref())
            .map(|a| a.param.clone()),
        sent,
    )
}

/// The HTML part as a 7bit MIME body, built in one pass: every non-ASCII
/// character written as a numeric character reference (`ł` → `&#322;`, which
/// every HTML reader decodes to the same text) and lines ended with CRLF.
/// `None` when that cannot be done faithfully — a CR or NUL in it, a line
/// over RFC 5322's 998 characters, non-ASCII inside `<style>`/`<script>`
/// (references are not decoded there) — and the part is then encoded
/// (quoted-printable) as usual.
pub fn html_7bit(html: &str) -> Option<String> {
    let b = html.as_bytes();
    if memchr::memchr2(b'\r', 0, b).is_some() {
        return None;
    }
    let first = next_non_ascii(b, 0);
    // Raw-text elements (tag names are lower case: the HTML was serialised
    // by the CSS inliner's parser, and values in it are escaped).
    let mut raw: Vec<(usize, usize)> = Vec::new();
    if first.is_some() {
        // One pass for both: every `<s`, then its close.
        static OPEN: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new("<s"));
        let mut from = 0;
        while let Some(s) = OPEN.find(&b[from..]) {
            let s = from + s;
            from = s + 2;
            let close: &[u8] = match &b[s + 2..] {
                t if t.starts_with(b"tyle") => b"</style",
                t if t.starts_with(b"cript") => b"</script",
                _ => continue,
            };
            let e = memchr::memmem::find(&b[s..], close).map_or(b.len(), |e| s + e);
            raw.push((s, e));
            from = e;
        }
    }
    let mut out = String::with_capacity(html.len() + html.len() / 16);
    let mut next = first;
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', b).chain(std::iter::once(b.len()));
    for end in ends {
        let line_start = out.len();
        let mut from = start;
        // The non-ASCII characters of this line, if any.
        while let Some(n) = next.filter(|n| *n < end) {
            if raw.iter().any(|(s, e)| (*s..*e).contains(&n)) {
                return None;
            }
            let c = html[n..].chars().next().unwrap_or(' ');
            out.push_str(&html[from..n]);
            out.push_str("&#");
            out.push_str(&(c as u32).to_string());
            out.push(';');
            from = n + c.len_utf8();
            next = next_non_ascii(b, from);
        }
        out.push_str(&html[from..end]);
        if out.len() - line_start > 998 {
            return None;
        }
        if end < b.len() {
            out.push_str("\r\n");
        }
        start = end + 1;
    }
    Some(out)
}

/// The index of the first non-ASCII byte at or after `from`.
fn next_non_ascii(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    // Whole 32-byte blocks first: `is_ascii` checks a word at a time.
    while i + 32 <= b.len() && b[i..i + 32].is_ascii() {
        i += 32;
    }
    b[i..].iter().position(|&x| x >= 0x80).map(|p| i + p)
}

/// Herald's own links need no HTML escaping when they hold only URL-safe
/// characters (always, unless public_url has odd ones): marking them safe
/// keeps `/` from becoming `&#x2f;` in the HTML.
fn own_url(u: String) -> Value {
    if u.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.~:/%".contains(&b))
    {
        Value::from_safe_string(u)
    } else {
        Value::from(u)
    }
}

/// A product as templates see it, with its price written for `lang`.
pub fn product_json(p: &Product, lang: &str) -> serde_json::Value {
    serde_json::json!({
        "sku": p.sku,
        "name": p.name,
        "price": locale::money(&p.price, &p.currency, lang).unwrap_or_else(|| p.price.clone()),
        "price_amount": p.price,
        "currency": p.currency,
        "image_url": p.image_url,
        "photo": p.image_url,
        "url": p.url,
        "category": p.category,
        "stock": p.stock,
        "in_stock": p.stock.is_none_or(|s| s > 0),
        "related": p.related,
    })
}

fn autologin(state: &State, sites: &[Site], url: &str) -> Result<String, Error> {
    let fail = |m: String| Error::new(ErrorKind::InvalidOperation, m);
    let contact = state
        .lookup("contact")
        .and_then(|v| v.downcast_object_ref::<ContactView>().map(|c| c.0.clone()))
        .ok_or_else(|| fail("autologin_url: no contact".into()))?;
    // The token is issued as of the send, so a message rendered again later
    // (view in browser) carries the same token, expired with the message.
    let sent = state
        .lookup("__sent")
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    autologin_url_for(sites, &contact, url, sent, sent)
        .map_err(|m| fail(format!("autologin_url: {m}")))
}

/// `url` with an auto-login token for `contact`, issued at `now`, for a
/// message sent at `sent` (both in seconds), when the contact's site (or
/// the first one) has an auto-login secret and `url` is on that site's
/// address. The token expires `autologin_ttl` after `now` but never later
/// than `autologin_window` after `sent`; past that window it is refused.
pub fn autologin_url_for(
    sites: &[Site],
    contact: &Contact,
    url: &str,
    sent: i64,
    now: i64,
) -> Result<String, String> {
    let site = match &contact.site {
        Some(id) => sites.iter().find(|s| &s.id == id),
        None => None,
    }
    .or_else(|| sites.first())
    .ok_or_else(|| "no [[site]] is configured".to_string())?;
    let al = site
        .autologin
        .as_ref()
        .ok_or_else(|| format!("site `{}` has no autologin_secret", site.id))?;
    let mut u = url::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    // The token logs the contact in: it may only go to the site's own host.
    if u.host_str() != site.url.host_str() || u.scheme() != site.url.scheme() {
        return Err(format!("`{url}` is not on the site's address {}", site.url));
    }
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let window_end = sent.saturating_add(secs(al.window));
    if now > window_end {
        return Err(format!(
            "the message was sent more than autologin_window ({}) ago",
            humantime::format_duration(al.window)
        ));
    }
    let exp = now.saturating_add(secs(al.ttl)).min(window_end);
    let jwt = crate::tokens::autologin_jwt(
        al.secret.0.as_bytes(),
        &contact.email,
        contact.id,
        &site.id,
        now,
        exp,
    );
    u.query_pairs_mut().append_pair(&al.param, &jwt);
    Ok(u.to_string())
}

/// The Message-ID (without brackets) of send `s`'s message to `contact`:
/// derived from them, so a re-render gives the same one, and from the
/// trigger occurrence when there is one (an automation step sent again for
/// a new occurrence gets a new one); random for a transactional tag, which
/// may mail one contact many times a day.
fn message_id(s: SendRef, contact: u64, occurrence: Option<u64>, domain: &str) -> String {
    let (letter, id, slot) = (s.kind.letter(), s.id, s.variant);
    if s.kind == crate::tokens::SendKind::Transactional {
        let unique = rand::random::<u64>();
        format!("{letter}{id}.{slot}.{contact}.{unique:016x}@{domain}")
    } else if let Some(n) = occurrence {
        format!("{letter}{id}.{slot}.{contact}.{n:016x}@{domain}")
    } else {
        format!("{letter}{id}.{slot}.{contact}@{domain}")
    }
}

#[cfg(test)]
mod tests {
    use super::html_7bit;

    #[test]
    fn message_ids_follow_the_send_contact_and_occurrence() {
        use crate::tokens::{SendKind, SendRef};
        let s = SendRef {
            kind: SendKind::Campaign,
            id: 12,
            variant: 3,
        };
        let letter = SendKind::Campaign.letter();
        assert_eq!(
            super::message_id(s, 7, None, "shop.example"),
            format!("{letter}12.3.7@shop.example")
        );
        let one = super::message_id(s, 7, Some(0x2a), "shop.example");
        assert_eq!(one, format!("{letter}12.3.7.000000000000002a@shop.example"));
        assert_eq!(one, super::message_id(s, 7, Some(0x2a), "shop.example"));
        assert_ne!(one, super::message_id(s, 7, Some(0x2b), "shop.example"));
        // Transactional: unique every time, occurrence or not.
        let t = SendRef {
            kind: SendKind::Transactional,
            ..s
        };
        for occ in [None, Some(1)] {
            let a = super::message_id(t, 7, occ, "shop.example");
            assert_ne!(a, super::message_id(t, 7, occ, "shop.example"));
            assert!(
                a.ends_with("@shop.example") && a.split('.').count() == 5,
                "{a}"
            );
        }
    }

    /// Auto-login works only within the window after the send, and its
    /// token never outlives the window.
    #[test]
    fn autologin_expires_with_the_message() -> Result<(), String> {
        use crate::config::{Autologin, Site};
        use std::time::Duration;
        let site = Site {
            id: "shop".into(),
            name: "Shop".into(),
            url: url::Url::parse("https://shop.example").map_err(|e| e.to_string())?,
            default_language: None,
            currency: None,
            country: None,
            time_zone: chrono_tz::Tz::UTC,
            autologin: Some(Autologin {
                secret: crate::config::Secret("0123456789abcdef0123456789abcdef".into()),
                param: "hal".into(),
                ttl: Duration::from_secs(7 * 86400),
                window: Duration::from_secs(3600),
            }),
        };
        let c = crate::contacts::model::Contact {
            id: 7,
            email: "a@example.com".into(),
            consent: crate::contacts::model::ConsentState::Granted,
            phone: None,
            sms_consent: crate::contacts::model::ConsentState::Unknown,
            language: None,
            site: None,
            fields: Default::default(),
            lists: Default::default(),
            tags: Default::default(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let sites = [site];
        let sent = 1_800_000_000;
        let claims = |u: &str| -> Result<serde_json::Value, String> {
            use base64::Engine as _;
            let jwt = u.split("hal=").nth(1).ok_or("no token")?;
            let part = jwt.split('.').nth(1).ok_or("not a JWT")?;
            let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .map_err(|e| e.to_string())?;
            serde_json::from_slice(&raw).map_err(|e| e.to_string())
        };
        let at = |now| super::autologin_url_for(&sites, &c, "https://shop.example/a", sent, now);
        let u = at(sent)?;
        assert_eq!(claims(&u)?["exp"], sent + 3600);
        let u = at(sent + 3000)?;
        assert_eq!(claims(&u)?["exp"], sent + 3600, "capped by the window");
        assert!(at(sent + 3601).is_err());
        assert!(at(sent + 10 * 365 * 86400).is_err());
        Ok(())
    }

    #[test]
    fn html_becomes_7bit_with_references_and_crlf() {
        assert_eq!(
            html_7bit("<p>Zażółć</p>\n<p>x</p>").as_deref(),
            Some("<p>Za&#380;&#243;&#322;&#263;</p>\r\n<p>x</p>")
        );
        assert_eq!(html_7bit("<p>a</p>\n").as_deref(), Some("<p>a</p>\r\n"));
        // Emoji outside the BMP: one reference.
        assert_eq!(html_7bit("😀").as_deref(), Some("&#128512;"));
        // Non-ASCII in a style block cannot be a reference: encode instead.
        assert_eq!(
            html_7bit("<style>p{font-family:'Łato'}</style><p>ł</p>"),
            None
        );
        assert_eq!(
            html_7bit("<style>p{}</style><p>ł</p>").as_deref(),
            Some("<style>p{}</style><p>&#322;</p>")
        );
        // Long lines, CR and NUL: encode instead.
        assert_eq!(html_7bit(&"x".repeat(999)), None);
        assert!(html_7bit(&"x".repeat(998)).is_some());
        assert_eq!(html_7bit(&format!("{}ł", "x".repeat(993))), None);
        assert_eq!(html_7bit("a\r\nb"), None);
        assert_eq!(html_7bit("a\0b"), None);
    }
}
