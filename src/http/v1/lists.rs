//! `/api/v1/lists`: static lists. A list still named by a segment or an
//! automation cannot be deleted or renamed.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::double_option;
use crate::contacts::ContactError;
use crate::contacts::model::List;
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::store::ReadTables as _;
use crate::store::Sequence;

/// Body of `POST /api/v1/lists`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Unique name (case-insensitive).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `PATCH /api/v1/lists/{ref}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    pub description: Option<Option<String>>,
}

fn check_name(n: &str) -> Result<String, ApiError> {
    let n = n.trim();
    if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid",
            format!("list name `{n}` must be 1 to 100 characters without control characters"),
        ));
    }
    if super::all_digits(n) {
        return Err(ApiError::invalid(
            "invalid",
            format!("list name `{n}` must not be a number (numbers are list ids)"),
        ));
    }
    Ok(n.to_string())
}

async fn resolve(state: &AppState, r: &str) -> Result<List, ApiError> {
    let r2 = r.to_string();
    let found = state
        .store
        .read(move |v| {
            // Only all-digit refs are ids (names cannot be all digits), so
            // `+5` is a name, not list 5.
            let id = match super::numeric_id(&r2) {
                Some(id) => Some(id),
                None => v.list_id_by_name(&r2)?,
            };
            match id {
                Some(id) => v.list(id),
                None => Ok(None),
            }
        })
        .await?;
    found.ok_or_else(|| ApiError::not_found(format!("no list `{r}`")))
}

async fn in_use(state: &Arc<AppState>, name: &str, what: &str) -> Result<(), ApiError> {
    let (lists, _) = super::segments::api_references(state).await?;
    let users: Vec<&str> = lists
        .iter()
        .filter(|(l, _)| l.eq_ignore_ascii_case(name))
        .map(|(_, s)| s.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ContactError::InUse(format!(
            "list `{name}` cannot be {what}: it is used by {}",
            users.join(", ")
        ))
        .into());
    }
    let config = state.config();
    let hit = config
        .references
        .lists
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name));
    if let Some((_, files)) = hit {
        return Err(ContactError::InUse(format!(
            "list `{name}` cannot be {what}: it is used by {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    Ok(())
}

/// `POST /api/v1/lists`
pub async fn create(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let body: CreateBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let name = check_name(&body.name)?;
    let now = state.clock.now();
    let list = state
        .store
        .write(move |w| {
            if w.list_id_by_name(&name)?.is_some() {
                return Ok(Err(ContactError::Conflict(format!(
                    "a list named `{name}` already exists"
                ))));
            }
            let l = List {
                id: w.next_id(Sequence::List)?,
                name,
                description: body.description,
                member_count: 0,
                created_at: now,
            };
            w.put_list(&l, None)?;
            Ok(Ok(l))
        })
        .await??;
    let object = format!("list:{}", list.id);
    Ok(crate::http::created(
        reply::json_response(StatusCode::CREATED, &list),
        object,
    ))
}

/// `GET /api/v1/lists`
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let lists = state.store.read(|r| r.lists()).await?;
    reply::ok(&json!({"lists": lists}))
}

/// `GET /api/v1/lists/{id or name}`
pub async fn get(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    reply::ok(&resolve(state, r).await?)
}

/// `PATCH /api/v1/lists/{id or name}`
pub async fn update(
    state: &Arc<AppState>,
    r: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let current = resolve(state, r).await?;
    let body: UpdateBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let new_name = match &body.name {
        Some(n) => {
            let n = check_name(n)?;
            if n != current.name {
                in_use(state, &current.name, "renamed").await?;
            }
            Some(n)
        }
        None => None,
    };
    let id = current.id;
    let list = state
        .store
        .write(move |w| {
            let Some(mut l) = w.list(id)? else {
                return Ok(Err(ContactError::NotFound(format!("no list with id {id}"))));
            };
            let old = l.name.clone();
            if let Some(n) = new_name {
                if let Some(other) = w.list_id_by_name(&n)?
                    && other != id
                {
                    return Ok(Err(ContactError::Conflict(format!(
                        "a list named `{n}` already exists"
                    ))));
                }
                l.name = n;
            }
            if let Some(d) = body.description {
                l.description = d;
            }
            w.put_list(&l, Some(&old))?;
            Ok(Ok(l))
        })
        .await??;
    reply::ok(&list)
}

/// `DELETE /api/v1/lists/{id or name}`: takes every member out and deletes the
/// list; refused while a segment or automation names it.
pub async fn delete(state: &Arc<AppState>, r: &str) -> Result<Response<Body>, ApiError> {
    let current = resolve(state, r).await?;
    in_use(state, &current.name, "deleted").await?;
    let id = current.id;
    let removed = state
        .store
        .write(move |w| {
            let Some(l) = w.list(id)? else {
                return Ok(Err(ContactError::NotFound(format!("no list with id {id}"))));
            };
            w.delete_list(&l)?;
            Ok(Ok(l))
        })
        .await??;
    reply::ok(&json!({"deleted": removed.name, "members_removed": removed.member_count}))
}
