//! Admin UI: contacts (search, one contact, its forms, export, erasure),
//! lists and custom fields.
//!
//! - `GET /admin/contacts?q=&list=&tag=&consent=&segment=&after=`: search
//!   by address prefix and filters, a page at a time (the API's cursor).
//! - `GET /admin/contacts/{id}[?before=SEQ]`: fields, lists, tags, consent
//!   and its log, shop aggregates and cart, history (paged).
//! - `POST /admin/contacts/{id}/{consent|fields|lists|erase}`, and
//!   `GET /admin/contacts/{id}/export` (the GDPR export as a download).
//! - `GET /admin/lists`, `GET /admin/fields` (one page); `POST /admin/lists`,
//!   `POST /admin/lists/{id}/{rename|delete}`, `POST /admin/fields`,
//!   `POST /admin/fields/{name}/{edit|delete}`.

use http::{Method, Response};
use serde_json::{Value, json};

use crate::http::reply::{self, ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, after, enc, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "contacts/list.html",
        include_str!("../templates/contacts/list.html"),
    ),
    (
        "contacts/contact.html",
        include_str!("../templates/contacts/contact.html"),
    ),
    (
        "contacts/lists.html",
        include_str!("../templates/contacts/lists.html"),
    ),
];

/// Contacts per page.
const PAGE: u32 = 50;

/// History entries per page.
const HISTORY_PAGE: u32 = 50;

/// `k=v&…` of the pairs whose value is not empty.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The submitted form, or a clear refusal of anything else.
pub fn form(input: Input) -> Result<Form, ApiError> {
    match input {
        Input::Form(f) => Ok(f),
        _ => Err(ApiError::bad_request(
            "this address takes a form (application/x-www-form-urlencoded)",
        )),
    }
}

/// An API answer for a page: the value, or `null` and the error's message
/// (so one failing part does not hide the rest of the page).
pub async fn part(ctx: &Ctx<'_>, path: &str, problems: &mut Vec<String>) -> Value {
    match ctx.get(path).await {
        Ok(v) => v,
        Err(e) => {
            problems.push(e.message);
            Value::Null
        }
    }
}

/// Serves `/admin/contacts…`, `/admin/lists…` and `/admin/fields…`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    let get = matches!(*method, Method::GET | Method::HEAD);
    let post = *method == Method::POST;
    match rest {
        ["contacts"] if get => search(ctx).await,
        ["contacts", id] if get => contact(ctx, id).await,
        ["contacts", id, "export"] if get => export(ctx, id).await,
        ["contacts", id, action] if post => contact_action(ctx, id, action, form(input)?).await,
        ["lists"] | ["fields"] if get => lists(ctx).await,
        ["lists"] if post => create_list(ctx, form(input)?).await,
        ["lists", id, action] if post => list_action(ctx, id, action, form(input)?).await,
        ["fields"] if post => create_field(ctx, form(input)?).await,
        ["fields", name, action] if post => field_action(ctx, name, action, form(input)?).await,
        _ => Err(super::not_found(rest)),
    }
}

/// `GET /admin/contacts`: the search form and one page of matches.
async fn search(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let p = |k| ctx.param(k).unwrap_or("");
    let (q, list, tag, consent, segment, after_) = (
        p("q"),
        p("list"),
        p("tag"),
        p("consent"),
        p("segment"),
        p("after"),
    );
    let filters = query(&[
        ("q", q),
        ("list", list),
        ("tag", tag),
        ("consent", consent),
        ("segment", segment),
    ]);
    let limit = PAGE.to_string();
    let api = query(&[
        ("prefix", q),
        ("list", list),
        ("tag", tag),
        ("consent", consent),
        ("segment", segment),
        ("after", after_),
        ("limit", &limit),
    ]);
    let mut problems = Vec::new();
    let found = part(ctx, &format!("/api/v1/contacts?{api}"), &mut problems).await;
    let lists = part(ctx, "/api/v1/lists", &mut problems).await;
    let segments = part(ctx, "/api/v1/segments", &mut problems).await;
    let next = match &found["next_after"] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    };
    let base = format!("/admin/contacts?{filters}");
    let next_url = next.map(|n| {
        let sep = if filters.is_empty() { "" } else { "&" };
        format!("/admin/contacts?{filters}{sep}{}", query(&[("after", &n)]))
    });
    Ok(ctx.page(
        "contacts/list.html",
        "contacts",
        json!({
            "q": q, "list": list, "tag": tag, "consent": consent, "segment": segment,
            "after": after_,
            "contacts": found["contacts"],
            "total": found["total"],
            "next_url": next_url,
            "first_url": base,
            "lists": lists["lists"],
            "segments": segments["segments"],
            "states": ["unknown", "pending", "granted", "withdrawn", "invalid"],
            "errors": problems,
        }),
    ))
}

/// `GET /admin/contacts/{id}`: everything about one contact.
async fn contact(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    let c = ctx.get(&format!("/api/v1/contacts/{}", enc(id))).await?;
    let cid = c["id"].as_u64().unwrap_or_default();
    let mut problems = Vec::new();
    let consent = part(
        ctx,
        &format!("/api/v1/contacts/{cid}/consent"),
        &mut problems,
    )
    .await;
    let before = ctx.param("before").unwrap_or("");
    let limit = HISTORY_PAGE.to_string();
    let hq = query(&[("before", before), ("limit", &limit)]);
    let history = part(
        ctx,
        &format!("/api/v1/contacts/{cid}/history?{hq}"),
        &mut problems,
    )
    .await;
    let defs = part(ctx, "/api/v1/fields", &mut problems).await;
    let lists = part(ctx, "/api/v1/lists", &mut problems).await;
    // Every defined field with the contact's value (text as the form shows it).
    let fields: Vec<Value> = defs["fields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let name = d["name"].as_str().unwrap_or_default();
            let value = match &c["fields"][name] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            json!({"name": name, "type": d["type"], "label": d["label"],
                   "choices": d["choices"], "value": value})
        })
        .collect();
    let member: Vec<&str> = c["lists"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let other_lists: Vec<&Value> = lists["lists"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| !member.contains(&l["name"].as_str().unwrap_or_default()))
        .collect();
    let next_history = history["next_before"]
        .as_u64()
        .map(|n| format!("/admin/contacts/{cid}?before={n}"));
    Ok(ctx.page(
        "contacts/contact.html",
        "contacts",
        json!({
            "c": c,
            "fields": fields,
            "other_lists": other_lists,
            "consent_log": consent["log"],
            "history": history["events"],
            "history_paged": !before.is_empty(),
            "next_history": next_history,
            "states": ["unknown", "pending", "granted", "withdrawn", "invalid"],
            "errors": problems,
        }),
    ))
}

/// `GET /admin/contacts/{id}/export`: the API's export, as a download.
async fn export(ctx: &Ctx<'_>, id: &str) -> Result<Response<Body>, ApiError> {
    ctx.api_response(
        Method::GET,
        &format!("/api/v1/contacts/{}/export", enc(id)),
        "application/json",
        reply::full_body(bytes::Bytes::new()),
    )
    .await
}

/// The `POST` forms of one contact.
async fn contact_action(
    ctx: &Ctx<'_>,
    id: &str,
    action: &str,
    f: Form,
) -> Result<Response<Body>, ApiError> {
    let back = format!("/admin/contacts/{}", enc(id));
    let api = format!("/api/v1/contacts/{}", enc(id));
    match action {
        "consent" => {
            let body =
                json!({"state": f.text("state").unwrap_or_default(), "note": f.text("note")});
            let r = ctx
                .api(Method::POST, &format!("{api}/consent"), Some(body))
                .await;
            Ok(after(&back, r, "Consent changed."))
        }
        "fields" => {
            let mut fields = serde_json::Map::new();
            for (k, v) in &f.0 {
                if let Some(name) = k.strip_prefix("field.") {
                    let v = v.trim();
                    let value = if v.is_empty() { Value::Null } else { json!(v) };
                    fields.insert(name.to_string(), value);
                }
            }
            let mut body = json!({"fields": fields});
            if f.get("language").is_some() {
                body["language"] = json!(f.text("language"));
            }
            let r = ctx.api(Method::PATCH, &api, Some(body)).await;
            Ok(after(&back, r, "Fields saved."))
        }
        "lists" => {
            let one = |k: &str| f.text(k).map(|v| vec![v]).unwrap_or_default();
            let body = json!({
                "add_lists": one("add_list"), "remove_lists": one("remove_list"),
                "add_tags": one("add_tag"), "remove_tags": one("remove_tag"),
            });
            let r = ctx.api(Method::PATCH, &api, Some(body)).await;
            Ok(after(&back, r, "Lists and tags saved."))
        }
        "erase" => erase(ctx, id, &f).await,
        _ => Err(ApiError::not_found(format!("no contact action `{action}`"))),
    }
}

/// `POST /admin/contacts/{id}/erase`: only when the typed address is the
/// contact's.
async fn erase(ctx: &Ctx<'_>, id: &str, f: &Form) -> Result<Response<Body>, ApiError> {
    let back = format!("/admin/contacts/{}", enc(id));
    let api = format!("/api/v1/contacts/{}", enc(id));
    let c = ctx.get(&api).await?;
    let email = c["email"].as_str().unwrap_or_default();
    let typed = f.text("confirm").unwrap_or_default();
    if !typed.eq_ignore_ascii_case(email) {
        return Ok(redirect_with(
            &back,
            "problem",
            "Nothing was erased: type the contact's address exactly to confirm.",
        ));
    }
    match ctx.api(Method::DELETE, &api, None).await {
        Ok(_) => Ok(redirect_with(
            "/admin/contacts",
            "notice",
            &format!("Contact {} was erased; the address is suppressed.", c["id"]),
        )),
        r => Ok(after(&back, r, "")),
    }
}

/// `GET /admin/lists` and `/admin/fields`.
async fn lists(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let mut problems = Vec::new();
    let lists = part(ctx, "/api/v1/lists", &mut problems).await;
    let fields = part(ctx, "/api/v1/fields", &mut problems).await;
    Ok(ctx.page(
        "contacts/lists.html",
        "lists",
        json!({
            "lists": lists["lists"],
            "fields": fields["fields"],
            "types": ["text", "number", "date", "boolean", "choice"],
            "errors": problems,
        }),
    ))
}

async fn create_list(ctx: &Ctx<'_>, f: Form) -> Result<Response<Body>, ApiError> {
    let body =
        json!({"name": f.text("name").unwrap_or_default(), "description": f.text("description")});
    let r = ctx.api(Method::POST, "/api/v1/lists", Some(body)).await;
    Ok(after("/admin/lists", r, "List created."))
}

async fn list_action(
    ctx: &Ctx<'_>,
    id: &str,
    action: &str,
    f: Form,
) -> Result<Response<Body>, ApiError> {
    let api = format!("/api/v1/lists/{}", enc(id));
    let r = match action {
        "rename" => {
            let body = json!({"name": f.text("name").unwrap_or_default(), "description": f.text("description")});
            (
                ctx.api(Method::PATCH, &api, Some(body)).await,
                "List saved.",
            )
        }
        "delete" => (ctx.api(Method::DELETE, &api, None).await, "List deleted."),
        _ => return Err(ApiError::not_found(format!("no list action `{action}`"))),
    };
    Ok(after("/admin/lists", r.0, r.1))
}

/// Choices typed one a line or separated by commas.
fn choices(f: &Form) -> Vec<String> {
    f.get("choices")
        .unwrap_or_default()
        .split([',', '\n'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

async fn create_field(ctx: &Ctx<'_>, f: Form) -> Result<Response<Body>, ApiError> {
    let body = json!({
        "name": f.text("name").unwrap_or_default(),
        "type": f.text("type").unwrap_or_default(),
        "label": f.text("label"),
        "choices": choices(&f),
    });
    let r = ctx.api(Method::POST, "/api/v1/fields", Some(body)).await;
    Ok(after("/admin/fields", r, "Field created."))
}

async fn field_action(
    ctx: &Ctx<'_>,
    name: &str,
    action: &str,
    f: Form,
) -> Result<Response<Body>, ApiError> {
    let api = format!("/api/v1/fields/{}", enc(name));
    let r = match action {
        "edit" => {
            let mut body = json!({"label": f.text("label").unwrap_or_default()});
            if f.get("choices").is_some() {
                body["choices"] = json!(choices(&f));
            }
            (
                ctx.api(Method::PATCH, &api, Some(body)).await,
                "Field saved.",
            )
        }
        "delete" => (ctx.api(Method::DELETE, &api, None).await, "Field deleted."),
        _ => return Err(ApiError::not_found(format!("no field action `{action}`"))),
    };
    Ok(after("/admin/fields", r.0, r.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("a b/c+d"), "a%20b%2Fc%2Bd");
        assert_eq!(enc("vip_2"), "vip_2");
        assert_eq!(query(&[("q", "a b"), ("list", "")]), "q=a+b");
    }
}
