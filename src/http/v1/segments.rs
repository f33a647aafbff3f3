//! `/api/v1/segments`: saved segments, from files (`config/segments/*.toml`,
//! read-only here) and created through the API (stored), their problems,
//! previews and member lists.
//!
//! Evaluation runs on a blocking thread that fans out on rayon; the HTTP
//! server's threads only wait for the answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::config::ConfigError;
use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::segment::lang::{self, Problem};
use crate::segment::{Catalog, Segment, StoredSegment, check_name, parse_document};
use crate::store::ReadTables as _;

fn problem_json(file: &str, p: &Problem) -> Value {
    json!({
        "file": file,
        "line": p.loc.position.map(|x| x.0),
        "column": p.loc.position.map(|x| x.1),
        "path": p.loc.path,
        "message": p.message,
    })
}

fn config_error_json(e: &ConfigError) -> Value {
    json!({
        "file": e.file.display().to_string(),
        "line": e.position.map(|x| x.0),
        "column": e.position.map(|x| x.1),
        "path": e.key,
        "message": e.message,
    })
}

async fn catalog(state: &Arc<AppState>) -> Result<Catalog, ApiError> {
    let sites = state.config().sites.iter().map(|s| s.id.clone()).collect();
    Ok(Catalog::load(&state.store, sites).await?)
}

/// A segment by name, with its problems (empty when usable).
enum Found {
    Ok(Arc<Segment>),
    Broken(Vec<Value>),
}

async fn find(state: &Arc<AppState>, name: &str) -> Result<(Found, &'static str), ApiError> {
    let snap = state.snapshot();
    if let Some(s) = snap.segments.loaded.get(name) {
        return Ok((Found::Ok(s.clone()), "file"));
    }
    if let Some(errors) = snap.segments.failed.get(name) {
        return Ok((
            Found::Broken(errors.iter().map(config_error_json).collect()),
            "file",
        ));
    }
    let n = name.to_string();
    let stored = state.store.read(move |r| api_segment(r, &n)).await?;
    match stored {
        None => Err(ApiError::not_found(format!("no segment `{name}`"))),
        Some(s) => Ok((parse_stored(state, &s), "api")),
    }
}

fn api_segment(
    r: &crate::store::ReadView,
    name: &str,
) -> Result<Option<StoredSegment>, crate::store::StoreError> {
    Ok(r.segments()?.into_iter().find(|s| s.name == name))
}

fn parse_stored(state: &Arc<AppState>, s: &StoredSegment) -> Found {
    let sites: Vec<String> = state.config().sites.iter().map(|x| x.id.clone()).collect();
    match parse_document(&s.name, "api", &lang::from_json(&s.definition), &sites) {
        Ok(seg) => Found::Ok(Arc::new(seg)),
        Err(p) => Found::Broken(p.iter().map(|p| problem_json("api", p)).collect()),
    }
}

fn summary(name: &str, source: &str, found: &Found, catalog: &Catalog) -> Value {
    match found {
        Found::Ok(s) => {
            let problems: Vec<Value> = catalog
                .check(&s.cond)
                .iter()
                .map(|p| problem_json(&s.source, p))
                .collect();
            json!({
                "name": name,
                "source": source,
                "file": (source == "file").then(|| s.source.clone()),
                "description": s.description,
                "status": if problems.is_empty() { "ok" } else { "failed" },
                "problems": problems,
            })
        }
        Found::Broken(problems) => json!({
            "name": name,
            "source": source,
            "status": "failed",
            "problems": problems,
        }),
    }
}

/// `GET /api/v1/segments`: every segment with its status and problems.
pub async fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let snap = state.snapshot();
    let cat = catalog(state).await?;
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    for (name, s) in &snap.segments.loaded {
        out.insert(
            name.clone(),
            summary(name, "file", &Found::Ok(s.clone()), &cat),
        );
    }
    for (name, errors) in &snap.segments.failed {
        let f = Found::Broken(errors.iter().map(config_error_json).collect());
        out.insert(name.clone(), summary(name, "file", &f, &cat));
    }
    for s in state.store.read(|r| r.segments()).await? {
        if out.contains_key(&s.name) {
            continue;
        }
        let f = parse_stored(state, &s);
        out.insert(s.name.clone(), summary(&s.name, "api", &f, &cat));
    }
    reply::ok(&json!({ "segments": out.into_values().collect::<Vec<_>>() }))
}

/// `GET /api/v1/segments/{name}`: status, problems and definition.
pub async fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let (found, source) = find(state, name).await?;
    let cat = catalog(state).await?;
    let mut v = summary(name, source, &found, &cat);
    if source == "api" {
        let n = name.to_string();
        if let Some(s) = state.store.read(move |r| api_segment(r, &n)).await? {
            v["definition"] = s.definition;
            v["created_at"] = json!(s.created_at);
            v["updated_at"] = json!(s.updated_at);
        }
    } else if let Found::Ok(s) = &found
        && let Ok(text) = tokio::fs::read_to_string(&s.source).await
    {
        v["definition_toml"] = text.into();
    }
    reply::ok(&v)
}

/// `PUT /api/v1/segments/{name}`: creates or replaces an API segment. The
/// body is the segment as JSON (the same structure as a file), or the TOML
/// text itself with `Content-Type: application/toml`.
pub async fn put(
    state: &Arc<AppState>,
    name: &str,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    check_name(name).map_err(|m| ApiError::invalid("invalid_name", m))?;
    let snap = state.snapshot();
    let config = &snap.config;
    if snap.segments.loaded.contains_key(name) || snap.segments.failed.contains_key(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "segment `{name}` is defined by a file in {}; edit the file instead",
                snap.segments.dir.display()
            ),
        ));
    }
    let is_toml = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("toml") || ct.starts_with("text/plain"));
    let limit = config.http.max_body_bytes;
    let bytes = reply::read_body(req, limit).await?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let (root, definition) = if is_toml {
        let root = lang::from_toml(text).map_err(|p| problems_error(&p))?;
        let def = lang::to_json(&root);
        (root, def)
    } else {
        let def: Value = serde_json::from_str(text).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("{e} (line {}, column {})", e.line(), e.column()),
            )
        })?;
        (lang::from_json(&def), def)
    };
    let sites: Vec<String> = config.sites.iter().map(|s| s.id.clone()).collect();
    let cat = catalog(state).await?;
    let seg = match parse_document(name, "api", &root, &sites) {
        Ok(seg) => seg,
        // Unknown lists and fields too, so that one answer has them all.
        Err(mut problems) => {
            problems.extend(cat.check_tree(&root));
            problems.sort_by_key(|p| p.loc.position);
            return Err(problems_error(&problems));
        }
    };
    let problems = cat.check(&seg.cond);
    if !problems.is_empty() {
        return Err(problems_error(&problems));
    }
    let now = state.clock.now();
    let n = name.to_string();
    let created = state
        .store
        .write(move |t| {
            let old = t.segment(&n)?;
            let s = StoredSegment {
                name: n,
                definition,
                created_at: old.as_ref().map_or(now, |o| o.created_at),
                updated_at: now,
            };
            t.put_segment(&s)?;
            Ok(old.is_none())
        })
        .await?;
    Ok(reply::json_response(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &json!({ "name": name, "status": "ok" }),
    ))
}

fn problems_error(p: &[Problem]) -> ApiError {
    let text: Vec<String> = p
        .iter()
        .map(|p| {
            let at = match (p.loc.position, p.loc.path.is_empty()) {
                (Some((l, c)), _) => format!("line {l}, column {c}: "),
                (None, false) => format!("`{}`: ", p.loc.path),
                _ => String::new(),
            };
            format!("{at}{}", p.message)
        })
        .collect();
    ApiError::invalid("invalid_segment", text.join("; "))
}

/// `DELETE /api/v1/segments/{name}` (API segments only).
pub async fn delete(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let snap = state.snapshot();
    if snap.segments.loaded.contains_key(name) || snap.segments.failed.contains_key(name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("segment `{name}` is defined by a file; remove the file and reload"),
        ));
    }
    in_use(state, name).await?;
    let n = name.to_string();
    if state.store.write(move |t| t.delete_segment(&n)).await? {
        reply::ok(&json!({ "deleted": name }))
    } else {
        Err(ApiError::not_found(format!("no segment `{name}`")))
    }
}

/// Refuses to delete a segment that a campaign not yet ended (its
/// audience or exclusions) or an automation (its `segment_entered`
/// trigger) names.
async fn in_use(state: &Arc<AppState>, name: &str) -> Result<(), ApiError> {
    use crate::campaign::model::Status;
    let campaigns = state.store.read(crate::campaign::all).await?;
    let mut users: Vec<String> = campaigns
        .iter()
        .filter(|c| !matches!(c.status, Status::Completed | Status::Cancelled))
        .filter(|c| {
            let a = &c.spec.audience;
            a.segments
                .iter()
                .chain(&a.exclude_segments)
                .any(|s| s == name)
        })
        .map(|c| format!("campaign {} ({})", c.id, c.spec.name))
        .collect();
    for f in state.automations.flows().by_id.values() {
        if matches!(&f.flow.trigger, crate::automation::flow::Trigger::SegmentEntered { segment } if segment == name)
        {
            users.push(format!("automation `{}`", f.flow.name));
        }
    }
    if users.is_empty() {
        return Ok(());
    }
    Err(crate::contacts::ContactError::InUse(format!(
        "segment `{name}` cannot be deleted: it is used by {}",
        users.join(", ")
    ))
    .into())
}

/// Evaluates a usable segment, or explains why it is not.
pub(crate) async fn evaluate(
    state: &Arc<AppState>,
    name: &str,
) -> Result<crate::segment::Evaluation, ApiError> {
    let (found, _) = find(state, name).await?;
    let seg = match found {
        Found::Ok(s) => s,
        Found::Broken(problems) => {
            return Err(ApiError::invalid(
                "invalid_segment",
                format!(
                    "segment `{name}` has problems: {}",
                    problems
                        .iter()
                        .filter_map(|p| p["message"].as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ));
        }
    };
    let cat = catalog(state).await?;
    let problems = cat.check(&seg.cond);
    if !problems.is_empty() {
        return Err(ApiError::invalid(
            "invalid_segment",
            format!(
                "segment `{name}` cannot be evaluated: {}",
                problems
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ));
    }
    state.index.ready().await;
    let today = state.clock.now().date_naive();
    let index = state.index.clone();
    let result = tokio::task::spawn_blocking(move || index.evaluate(&seg.cond, &cat, today))
        .await
        .map_err(|e| ApiError::bad_request(format!("evaluation failed: {e}")))?;
    state.metrics.segment_evaluations.inc();
    result.map_err(|m| ApiError::invalid("invalid_segment", m))
}

/// `GET /api/v1/segments/{name}/preview?limit=N`: count, granted count and
/// the first N members.
pub async fn preview(
    state: &Arc<AppState>,
    name: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["limit"])?;
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(20).min(1000) as usize;
    let e = evaluate(state, name).await?;
    let ids: Vec<u64> = e.members.iter().take(limit).collect();
    let contacts = state
        .store
        .read(move |r| {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(c) = r.contact(id)? {
                    out.push(json!({"id": c.id, "email": c.email, "consent": c.consent}));
                }
            }
            Ok(out)
        })
        .await?;
    reply::ok(&json!({
        "segment": name,
        "count": e.count,
        "granted": e.granted,
        "took_ms": e.took.as_secs_f64() * 1000.0,
        "contacts": contacts,
    }))
}

/// `GET /api/v1/segments/{name}/contacts[?consent=granted]`: every member's
/// id, one per line (`text/plain`), ascending.
pub async fn contacts(
    state: &Arc<AppState>,
    name: &str,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["consent"])?;
    let consent = match reply::query_str(&q, "consent") {
        None => None,
        Some(s) => Some(
            crate::contacts::model::ConsentState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!("`consent` {s:?} is not a consent state"))
            })?,
        ),
    };
    let e = evaluate(state, name).await?;
    let index = state.index.clone();
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::with_capacity(e.count as usize * 8);
        let keep = |id: u64| consent.is_none_or(|c| index.consent_of(id) == Some(c));
        for id in e.members.iter().filter(|id| keep(*id)) {
            out.push_str(&id.to_string());
            out.push('\n');
        }
        out
    })
    .await
    .map_err(|e| ApiError::bad_request(format!("listing failed: {e}")))?;
    Ok(reply::text_response(
        StatusCode::OK,
        "text/plain; charset=utf-8",
        body,
    ))
}

/// Lists and fields that API segments use, with the segment names: a list
/// or field still in use cannot be deleted or renamed.
pub async fn api_references(
    state: &Arc<AppState>,
) -> Result<(Vec<(String, String)>, Vec<(String, String)>), ApiError> {
    let sites: Vec<String> = state.config().sites.iter().map(|s| s.id.clone()).collect();
    let mut lists = Vec::new();
    let mut fields = Vec::new();
    for s in state.store.read(|r| r.segments()).await? {
        if let Ok(seg) = parse_document(&s.name, "api", &lang::from_json(&s.definition), &sites) {
            let (mut l, mut f) = (Vec::new(), Vec::new());
            lang::references(&seg.cond, &mut l, &mut f);
            let by = format!("segment `{}`", s.name);
            lists.extend(l.into_iter().map(|(n, _)| (n, by.clone())));
            fields.extend(f.into_iter().map(|(n, _)| (n, by.clone())));
        }
    }
    // Flows created through the API (file flows are in the config's
    // references).
    for f in state.automations.flows().by_id.values() {
        if f.source != crate::automation::model::Source::Api {
            continue;
        }
        let (l, fl) = crate::automation::flow::references(&f.flow);
        let by = format!("automation `{}`", f.flow.name);
        lists.extend(l.into_iter().map(|n| (n, by.clone())));
        fields.extend(fl.into_iter().map(|n| (n, by.clone())));
    }
    Ok((lists, fields))
}
