//! The product catalogue templates draw product blocks from; `product`
//! events and `/api/v1/products` feed it.

use serde::{Deserialize, Serialize};

/// A product of the catalogue, keyed by SKU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Product {
    /// Stock-keeping unit: the product's identity.
    pub sku: String,
    /// Name shown to customers.
    pub name: String,
    /// Price as a decimal string (`"1299.00"`).
    pub price: String,
    /// ISO 4217 currency of `price`.
    pub currency: String,
    /// Photo URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_url: Option<String>,
    /// Product page URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Units in stock, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<i64>,
    /// Category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// SKUs of related products (accessories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
}

/// Longest SKU accepted.
pub const MAX_SKU_LEN: usize = 128;

impl Product {
    /// Checks a product as received; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.sku.trim().is_empty() || self.sku.len() > MAX_SKU_LEN || self.sku.trim() != self.sku
        {
            return Err(format!(
                "`sku` must be 1-{MAX_SKU_LEN} characters without surrounding spaces"
            ));
        }
        if self.name.trim().is_empty() {
            return Err("`name` must not be empty".into());
        }
        let p = self.price.trim();
        let numeric = !p.is_empty()
            && p.bytes().filter(|b| *b == b'.').count() <= 1
            && p.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && p.bytes().any(|b| b.is_ascii_digit());
        if !numeric {
            return Err(format!(
                "`price` must be a non-negative decimal such as \"19.99\", not {:?}",
                self.price
            ));
        }
        if !crate::config::is_currency(&self.currency) {
            return Err(format!(
                "`currency` must be an ISO 4217 code such as \"EUR\", not {:?}",
                self.currency
            ));
        }
        for (k, v) in [("image_url", &self.image_url), ("url", &self.url)] {
            if let Some(u) = v {
                match url::Url::parse(u) {
                    Ok(x) if x.scheme() == "http" || x.scheme() == "https" => {}
                    _ => return Err(format!("`{k}` must be an http(s) URL, not {u:?}")),
                }
            }
        }
        Ok(())
    }
}
