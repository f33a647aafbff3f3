//! `/api/v1/products`: the product catalogue (product blocks in templates).
//! The events API feeds the same catalogue with `product` events.

use std::sync::Arc;

use crate::http::reply::ReqBody;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::http::AppState;
use crate::http::reply::{self, ApiError, Body};
use crate::shop::Product;
use crate::store::ReadTables as _;

/// One product or an array of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ProductsBody {
    /// Several.
    Many(Vec<Product>),
    /// One.
    One(Box<Product>),
}

/// `POST /api/v1/products`: create or replace products (by SKU). All are
/// checked first; one bad product refuses the request, naming it.
pub async fn upsert(
    state: &Arc<AppState>,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let limit = state.config().http.max_body_bytes;
    let body: ProductsBody = reply::read_json(req, limit).await?;
    let products = match body {
        ProductsBody::Many(v) => v,
        ProductsBody::One(p) => vec![*p],
    };
    if products.is_empty() {
        return Err(ApiError::bad_request("no products given"));
    }
    for (i, p) in products.iter().enumerate() {
        p.check().map_err(|e| {
            ApiError::invalid("invalid_product", format!("product [{i}] ({}): {e}", p.sku))
        })?;
    }
    let n = products.len();
    state
        .store
        .write(move |t| {
            for p in &products {
                t.put_product(p)?;
            }
            Ok(())
        })
        .await?;
    reply::ok(&json!({ "stored": n }))
}

/// `GET /api/v1/products?after=SKU&limit=N`.
pub async fn list(
    state: &Arc<AppState>,
    req: &Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let q = reply::query_pairs(req.uri().query());
    reply::only_params(&q, &["after", "limit"])?;
    let limit = reply::query_u64(&q, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let after = reply::query_str(&q, "after").map(str::to_string);
    let (products, total) = state
        .store
        .read(move |v| Ok((v.products(after.as_deref(), limit)?, v.product_count()?)))
        .await?;
    let next = if products.len() == limit {
        products.last().map(|p| p.sku.clone())
    } else {
        None
    };
    reply::ok(&json!({ "products": products, "total": total, "next_after": next }))
}

/// `GET /api/v1/products/{sku}`.
pub async fn get(state: &Arc<AppState>, sku: &str) -> Result<Response<Body>, ApiError> {
    let s = sku.to_string();
    match state.store.read(move |v| v.product(&s)).await? {
        Some(p) => reply::ok(&p),
        None => Err(ApiError::not_found(format!("no product with SKU `{sku}`"))),
    }
}

/// `DELETE /api/v1/products/{sku}`.
pub async fn delete(state: &Arc<AppState>, sku: &str) -> Result<Response<Body>, ApiError> {
    let s = sku.to_string();
    if state.store.write(move |t| t.delete_product(&s)).await? {
        Ok(reply::json_response(
            StatusCode::OK,
            &json!({ "deleted": sku }),
        ))
    } else {
        Err(ApiError::not_found(format!("no product with SKU `{sku}`")))
    }
}
