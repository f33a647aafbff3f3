//! `/api/v1/fields`: custom field definitions. A field's name and type never
//! change; a choice field's values and any field's label may be edited.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::contacts::model::{FieldDef, FieldType};
use crate::contacts::{ContactError, check_field_name};
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::store::ReadTables as _;

/// Body of `POST /api/v1/fields`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Lower-case latin letters and `_`.
    pub name: String,
    /// text, number, date, boolean or choice.
    #[serde(rename = "type")]
    pub field_type: String,
    /// Allowed values (choice fields only).
    #[serde(default)]
    pub choices: Vec<String>,
    /// Human label.
    #[serde(default)]
    pub label: Option<String>,
}

/// Body of `PATCH /api/v1/fields/{name}`. `name` and `type` are accepted only
/// to say clearly that they cannot change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// Must equal the current name if given.
    #[serde(default)]
    pub name: Option<String>,
    /// Must equal the current type if given.
    #[serde(default, rename = "type")]
    pub field_type: Option<String>,
    /// New set of allowed values (choice fields).
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// New label.
    #[serde(default)]
    pub label: Option<String>,
}

fn check_choices(t: FieldType, choices: &[String]) -> Result<Vec<String>, ApiError> {
    if t != FieldType::Choice {
        if choices.is_empty() {
            return Ok(vec![]);
        }
        return Err(ApiError::invalid(
            "invalid",
            "`choices` are only for fields of type choice",
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for c in choices {
        let c = c.trim();
        if c.is_empty() || c.len() > 200 {
            return Err(ApiError::invalid(
                "invalid",
                format!("choice `{c}` must be 1 to 200 bytes"),
            ));
        }
        if out.iter().any(|x| x == c) {
            return Err(ApiError::invalid(
                "invalid",
                format!("choice `{c}` appears twice"),
            ));
        }
        out.push(c.to_string());
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            "invalid",
            "a choice field needs at least one value in `choices`",
        ));
    }
    Ok(out)
}

fn parse_type(s: &str) -> Result<FieldType, ApiError> {
    FieldType::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "invalid",
            format!("type `{s}` is not one of: text, number, date, boolean, choice"),
        )
    })
}

/// `POST /api/v1/fields`
pub async fn create(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let body: CreateBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    check_field_name(&body.name)?;
    let t = parse_type(&body.field_type)?;
    let def = FieldDef {
        name: body.name,
        field_type: t,
        choices: check_choices(t, &body.choices)?,
        label: body.label,
        created_at: state.clock.now(),
    };
    let created = state
        .store
        .write(move |w| {
            if let Some(existing) = w.field(&def.name)? {
                return Ok(Err(ContactError::Conflict(format!(
                    "field `{}` already exists (type {}); a field's name and type never change",
                    existing.name,
                    existing.field_type.as_str()
                ))));
            }
            w.put_field(&def)?;
            Ok(Ok(def))
        })
        .await??;
    let object = format!("field:{}", created.name);
    Ok(crate::http::created(
        reply::json_response(StatusCode::CREATED, &created),
        object,
    ))
}

/// `GET /api/v1/fields`
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let fields = state.store.read(|r| r.fields()).await?;
    reply::ok(&json!({"fields": fields}))
}

/// `GET /api/v1/fields/{name}`
pub async fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let n = name.to_string();
    let f = state.store.read(move |r| r.field(&n)).await?;
    reply::ok(&f.ok_or_else(|| ApiError::not_found(format!("no field named `{name}`")))?)
}

/// `PATCH /api/v1/fields/{name}`
pub async fn update(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let body: UpdateBody = reply::read_json(req, state.config().http.max_body_bytes).await?;
    let n = name.to_string();
    let updated = state
        .store
        .write(move |w| {
            let Some(mut f) = w.field(&n)? else {
                return Ok(Err(ContactError::NotFound(format!("no field named `{n}`"))));
            };
            if body.name.as_ref().is_some_and(|x| *x != f.name) {
                return Ok(Err(ContactError::Conflict(format!(
                    "field `{n}` cannot be renamed: a field's name never changes"
                ))));
            }
            if body
                .field_type
                .as_ref()
                .is_some_and(|x| x != f.field_type.as_str())
            {
                return Ok(Err(ContactError::Conflict(format!(
                    "field `{n}` is of type {} and cannot change type",
                    f.field_type.as_str()
                ))));
            }
            if let Some(c) = &body.choices {
                match check_choices(f.field_type, c) {
                    Ok(c) => f.choices = c,
                    Err(e) => return Ok(Err(ContactError::Invalid(e.message))),
                }
            }
            if let Some(l) = body.label {
                f.label = Some(l);
            }
            w.put_field(&f)?;
            Ok(Ok(f))
        })
        .await??;
    reply::ok(&updated)
}

/// `DELETE /api/v1/fields/{name}`: removes the field and its values from every
/// contact; refused while a segment or automation names it.
pub async fn delete(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    if let Some(files) = state.config().references.fields.get(name) {
        return Err(ContactError::InUse(format!(
            "field `{name}` is used by {}; change those first",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into());
    }
    let (_, fields) = super::segments::api_references(state).await?;
    let users: Vec<&str> = fields
        .iter()
        .filter(|(f, _)| f == name)
        .map(|(_, s)| s.as_str())
        .collect();
    if !users.is_empty() {
        return Err(ContactError::InUse(format!(
            "field `{name}` is used by {}; change those first",
            users.join(", ")
        ))
        .into());
    }
    let n = name.to_string();
    let cleared = state
        .store
        .write(move |w| {
            if w.field(&n)?.is_none() {
                return Ok(Err(ContactError::NotFound(format!("no field named `{n}`"))));
            }
            Ok(Ok(w.delete_field(&n)?))
        })
        .await??;
    reply::ok(&json!({"deleted": name, "values_removed": cleared}))
}
