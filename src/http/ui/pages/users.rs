//! Admin UI: users (the admin role) and the activity log.
//!
//! - `GET /admin/users`
//! - `POST /admin/users` (`name`, `role`, `password`, `password2`)
//! - `POST /admin/users/{name}/role` (`role`)
//! - `POST /admin/users/{name}/password` (`password`, `password2`)
//! - `POST /admin/users/{name}/delete` (`confirm`)
//! - `GET /admin/activity?object=&before=`

use http::{Method, Response};
use serde_json::{Value, json};

use crate::http::reply::{ApiError, Body};
use crate::http::ui::{Ctx, Form, Input, after, enc, redirect_with};

/// This module's templates.
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "users/list.html",
        include_str!("../templates/users/list.html"),
    ),
    (
        "users/activity.html",
        include_str!("../templates/users/activity.html"),
    ),
];

const USERS: &str = "/admin/users";

/// Serves `/admin/users…` and `/admin/activity`.
pub async fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    rest: &[&str],
    input: Input,
) -> Result<Response<Body>, ApiError> {
    match (rest, method, input) {
        (["activity"], &Method::GET | &Method::HEAD, _) => activity(ctx).await,
        (["users"], &Method::GET | &Method::HEAD, _) => list(ctx).await,
        (["users"], &Method::POST, Input::Form(f)) => add(ctx, &f).await,
        (["users", name, action], &Method::POST, Input::Form(f)) => {
            change(ctx, name, action, &f).await
        }
        _ => Err(super::not_found(rest)),
    }
}

async fn list(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    // The API answers 403 to anyone but an admin: that is this page's 403.
    let v = ctx.get("/api/v1/users").await?;
    Ok(ctx.page("users/list.html", "users", v))
}

/// The new password of a form, or why not: both fields must agree.
fn password(form: &Form) -> Result<String, &'static str> {
    let p = form.get("password").unwrap_or_default();
    if p.is_empty() {
        return Err("Give a password.");
    }
    if form.get("password2") != Some(p) {
        return Err("The two passwords differ: type the same password twice.");
    }
    Ok(p.to_string())
}

async fn add(ctx: &Ctx<'_>, form: &Form) -> Result<Response<Body>, ApiError> {
    let name = form.text("name").unwrap_or_default();
    let role = form.text("role").unwrap_or_default();
    let password = match password(form) {
        Ok(p) => p,
        Err(m) => return Ok(redirect_with(USERS, "problem", m)),
    };
    let r = ctx
        .api(
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": name, "role": role, "password": password})),
        )
        .await;
    Ok(after(USERS, r, &format!("User {name} added as {role}.")))
}

async fn change(
    ctx: &Ctx<'_>,
    name: &str,
    action: &str,
    form: &Form,
) -> Result<Response<Body>, ApiError> {
    let path = format!("/api/v1/users/{}", enc(name));
    let (r, done) = match action {
        "role" => {
            let role = form.text("role").unwrap_or_default();
            let r = ctx
                .api(Method::PATCH, &path, Some(json!({"role": role})))
                .await;
            (r, format!("{name} is now {role}."))
        }
        "password" => {
            let password = match password(form) {
                Ok(p) => p,
                Err(m) => return Ok(redirect_with(USERS, "problem", m)),
            };
            let r = ctx
                .api(Method::PATCH, &path, Some(json!({"password": password})))
                .await;
            (
                r,
                format!("{name}'s password is set; their sessions ended."),
            )
        }
        "delete" => {
            if form.get("confirm") != Some("yes") {
                return Ok(redirect_with(
                    USERS,
                    "problem",
                    &format!("{name} not removed: tick the box to confirm."),
                ));
            }
            let r = ctx.api(Method::DELETE, &path, None).await;
            (r, format!("User {name} removed."))
        }
        _ => return Err(super::not_found(&["users", name, action])),
    };
    Ok(after(USERS, r, &done))
}

/// The admin UI page of an activity log object (`campaign:3` →
/// `/admin/campaigns/3`), when it has one.
pub fn object_link(object: &str) -> Option<String> {
    let (kind, id) = object.split_once(':')?;
    let id = enc(id);
    Some(match kind {
        "campaign" => format!("/admin/campaigns/{id}"),
        "automation" => format!("/admin/automations/{id}"),
        "segment" => format!("/admin/segments/{id}"),
        "template" => format!("/admin/templates/{id}"),
        "list" => format!("/admin/lists#list-{id}"),
        "field" => format!("/admin/fields#field-{id}"),
        "user" => format!("/admin/users#user-{id}"),
        "import" => format!("/admin/imports/{id}"),
        "queue" => format!("/admin/queue/{id}"),
        "contact" => format!("/admin/contacts/{id}"),
        _ => return None,
    })
}

async fn activity(ctx: &Ctx<'_>) -> Result<Response<Body>, ApiError> {
    let object = ctx.param("object");
    let mut q: Vec<String> = Vec::new();
    if let Some(o) = object {
        q.push(format!("object={}", enc(o)));
    }
    if let Some(b) = ctx.param("before") {
        let b: u64 = b
            .parse()
            .map_err(|_| ApiError::bad_request(format!("`{b}` is not a position in the log")))?;
        q.push(format!("before={b}"));
    }
    let v = ctx
        .get(&format!("/api/v1/activity?{}", q.join("&")))
        .await?;
    let entries: Vec<Value> = v["activity"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|mut e| {
            let link = e["object"].as_str().and_then(object_link);
            e["link"] = json!(link);
            e
        })
        .collect();
    let base = match object {
        Some(o) => format!("/admin/activity?object={}", enc(o)),
        None => "/admin/activity".to_string(),
    };
    Ok(ctx.page(
        "users/activity.html",
        "activity",
        json!({
            "entries": entries,
            "next": v["next"],
            "object": object,
            "base": base,
            "paged": ctx.param("before").is_some(),
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::object_link;

    #[test]
    fn objects_link_to_their_pages() {
        assert_eq!(
            object_link("campaign:3").as_deref(),
            Some("/admin/campaigns/3")
        );
        assert_eq!(
            object_link("automation:a b").as_deref(),
            Some("/admin/automations/a%20b")
        );
        assert_eq!(object_link("queue:7").as_deref(), Some("/admin/queue/7"));
        assert_eq!(object_link("contact"), None);
        assert_eq!(object_link("nothing:1"), None);
    }
}
