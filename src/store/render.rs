//! The product catalogue and the link tables of sends.

use redb::{ReadableTable, ReadableTableMetadata};

use super::tables::*;
use super::{ReadView, StoreError, WriteTables, from_json, to_json};
use crate::render::links::LinkRecord;
use crate::shop::Product;

impl WriteTables<'_> {
    /// Stores (creates or replaces) a product.
    pub fn put_product(&mut self, p: &Product) -> Result<(), StoreError> {
        let before = self
            .tables
            .products
            .insert(p.sku.as_str(), to_json(p).as_slice())?
            .map(|v| v.value().to_vec());
        // Back in stock: from a known stock of none to some.
        if p.stock.is_some_and(|n| n > 0)
            && let Some(b) = before
            && from_json::<Product>("products", &b)?
                .stock
                .is_some_and(|n| n <= 0)
        {
            self.note(|| super::Change::Restocked { sku: p.sku.clone() });
        }
        Ok(())
    }

    /// Deletes a product; false if there was none.
    pub fn delete_product(&mut self, sku: &str) -> Result<bool, StoreError> {
        Ok(self.tables.products.remove(sku)?.is_some())
    }

    /// Records links of a send. A link number, once recorded, keeps its URL:
    /// recording it again with another URL is refused, so a click can never
    /// be redirected somewhere the message did not point.
    pub fn put_links(
        &mut self,
        send: &[u8],
        links: &[(u32, LinkRecord)],
    ) -> Result<(), StoreError> {
        for (n, rec) in links {
            if let Some(old) = self.tables.links.get((send, *n))? {
                let old: LinkRecord = from_json("links", old.value())?;
                if &old != rec {
                    return Err(StoreError::Corrupt {
                        table: "links",
                        message: format!("link {n} of a send is already recorded with another URL"),
                    });
                }
                continue;
            }
            self.tables
                .links
                .insert((send, *n), to_json(rec).as_slice())?;
        }
        Ok(())
    }
}

impl ReadView {
    /// Up to `limit` products with SKUs after `after`, in SKU order.
    pub fn products(&self, after: Option<&str>, limit: usize) -> Result<Vec<Product>, StoreError> {
        let t = self.tables.products()?;
        let range = match after {
            Some(a) => {
                t.range::<&str>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))?
            }
            None => t.range::<&str>(..)?,
        };
        let mut out = Vec::new();
        for item in range.take(limit) {
            let (_, v) = item?;
            out.push(from_json("products", v.value())?);
        }
        Ok(out)
    }

    /// Number of products.
    pub fn product_count(&self) -> Result<u64, StoreError> {
        Ok(self.tables.products()?.len()?)
    }

    /// Every recorded link of a send, by number.
    pub fn links(&self, send: &[u8]) -> Result<Vec<(u32, LinkRecord)>, StoreError> {
        let t = self.tables.links()?;
        let mut out = Vec::new();
        for item in t.range((send, 0u32)..=(send, u32::MAX))? {
            let (k, v) = item?;
            out.push((k.value().1, from_json("links", v.value())?));
        }
        Ok(out)
    }

    /// One recorded link of a send.
    pub fn link(&self, send: &[u8], n: u32) -> Result<Option<LinkRecord>, StoreError> {
        match self.tables.links()?.get((send, n))? {
            Some(v) => Ok(Some(from_json("links", v.value())?)),
            None => Ok(None),
        }
    }
}
