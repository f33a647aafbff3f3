//! `/api/v1/users` (admin UI users), `/api/v1/activity` (the activity
//! log) and `/api/v1/owners/{kind}/{id}` (who owns a campaign or an
//! automation).

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::http::reply::{self, ApiError, Body, ReqBody};
use crate::http::{Actor, AppState};
use crate::users::{self, Activity, Role, User, UserError};

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let e = match e {
            UserError::Store(s) => return s.into(),
            e => e,
        };
        let (status, code) = match &e {
            UserError::Store(_) | UserError::Hash(_) => {
                tracing::error!(error = %e, "user operation failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            UserError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            UserError::Exists(_) | UserError::LastAdmin(_) => (StatusCode::CONFLICT, "conflict"),
            UserError::BadName(_) | UserError::BadRole(_) | UserError::WeakPassword => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// Login name.
    pub name: String,
    /// `admin`, `editor` or `viewer`.
    pub role: String,
    /// The password (at least [`users::MIN_PASSWORD_LEN`] characters).
    pub password: String,
}

/// Body of `PATCH /api/v1/users/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// A new role.
    #[serde(default)]
    pub role: Option<String>,
    /// A new password (ends the user's sessions).
    #[serde(default)]
    pub password: Option<String>,
}

/// The JSON view of a user (never the hash).
pub fn view(u: &User) -> Value {
    json!({
        "name": u.name,
        "role": u.role,
        "created": crate::http::v1::ms_rfc3339(u.created),
        "password_set": crate::http::v1::ms_rfc3339(u.password_set),
    })
}

/// `GET /api/v1/users`
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let users = state.store.read(|r| r.users()).await?;
    reply::ok(&json!({"users": users.iter().map(view).collect::<Vec<_>>()}))
}

/// `GET /api/v1/users/{name}`
pub async fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    match state.store.read(move |r| r.user(&n)).await? {
        Some(u) => reply::ok(&view(&u)),
        None => Err(UserError::NotFound(name.to_string()).into()),
    }
}

/// `POST /api/v1/users`
pub async fn add(state: &Arc<AppState>, req: Request<ReqBody>) -> Result<Response<Body>, ApiError> {
    let b: AddBody = reply::read_json(req, 16 * 1024).await?;
    let role: Role = b.role.parse()?;
    let u = users::add(
        &state.store,
        &b.name,
        role,
        b.password,
        state.clock.now().timestamp_millis(),
    )
    .await?;
    Ok(crate::http::created(
        reply::json_response(StatusCode::CREATED, &view(&u)),
        format!("user:{}", u.name),
    ))
}

/// `PATCH /api/v1/users/{name}`
pub async fn update(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let b: UpdateBody = reply::read_json(req, 16 * 1024).await?;
    let role = b.role.as_deref().map(str::parse::<Role>).transpose()?;
    let u = users::update(
        &state.store,
        name,
        role,
        b.password,
        state.clock.now().timestamp_millis(),
    )
    .await?;
    reply::ok(&view(&u))
}

/// `DELETE /api/v1/users/{name}`
pub async fn delete(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    users::remove(&state.store, name).await?;
    reply::ok(&json!({"deleted": name}))
}

/// The JSON view of an activity entry.
pub fn activity_view(seq: u64, a: &Activity) -> Value {
    json!({
        "seq": seq,
        "at": crate::http::v1::ms_rfc3339(a.at),
        "who": a.who,
        "action": a.action,
        "object": a.object,
        "status": a.status,
        "note": a.note,
    })
}

/// `GET /api/v1/activity?object=&before=&limit=`: newest first, a page
/// at a time (`next` is the `before` of the next page).
pub async fn activity(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["object", "before", "limit"])?;
    let object = reply::query_str(&q, "object").map(str::to_string);
    let before = reply::query_u64(&q, "before")?;
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(50).clamp(1, 500) as usize;
    let entries = state
        .store
        .read(move |r| r.activity(object.as_deref(), before, limit))
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|(s, _)| *s))
        .flatten();
    reply::ok(&json!({
        "activity": entries.iter().map(|(s, a)| activity_view(*s, a)).collect::<Vec<_>>(),
        "next": next,
    }))
}

/// Body of `PUT /api/v1/owners/{kind}/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerBody {
    /// The new owner: a user's name.
    pub owner: String,
}

fn owner_object(kind: &str, id: &str) -> Result<String, ApiError> {
    match kind {
        "campaign" | "automation" => Ok(format!("{kind}:{id}")),
        _ => Err(ApiError::not_found(format!(
            "no owner kind `{kind}`; campaigns and automations have owners"
        ))),
    }
}

/// `GET /api/v1/owners/{kind}/{id}`
pub async fn owner(
    state: &Arc<AppState>,
    kind: &str,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let object = owner_object(kind, id)?;
    let o = object.clone();
    let owner = state.store.read(move |r| r.owner(&o)).await?;
    reply::ok(&json!({"object": object, "owner": owner}))
}

/// `PUT /api/v1/owners/{kind}/{id}`: gives a campaign or an automation to
/// another user.
pub async fn set_owner(
    state: &Arc<AppState>,
    kind: &str,
    id: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let object = owner_object(kind, id)?;
    let b: OwnerBody = reply::read_json(req, 4096).await?;
    let (o, name) = (object.clone(), b.owner.clone());
    let found = state
        .store
        .write(move |w| {
            if w.user_for_write(&name)?.is_none() {
                return Ok(false);
            }
            w.set_owner(&o, Some(&name))?;
            Ok(true)
        })
        .await?;
    if !found {
        return Err(UserError::NotFound(b.owner).into());
    }
    reply::ok(&json!({"object": object, "owner": b.owner}))
}

/// The owner a new object gets: the user who made it (`api` for the
/// bearer token).
pub fn creator(req: &Request<ReqBody>) -> String {
    req.extensions()
        .get::<Actor>()
        .map_or_else(|| "api".to_string(), |a| a.name.clone())
}
