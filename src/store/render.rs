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
            .open()?
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
        Ok(self.tables.products.open()?.remove(sku)?.is_some())
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
            if let Some(old) = self.tables.links.open()?.get((send, *n))? {
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
                .open()?
                .insert((send, *n), to_json(rec).as_slice())?;
            self.links_written.push((send.to_vec(), *n, rec.clone()));
        }
        Ok(())
    }
}

/// Links kept in memory: (send key, link number) → the recorded link. A
/// link's URL never changes once recorded, so an entry is never stale; it
/// serves clicks without a read, and while the store cannot be read. Two
/// generations of up to [`LinkCache::GENERATION`] entries each: when the
/// young one is full it becomes the old one, so links in use stay and the
/// memory stays bounded.
#[derive(Default)]
pub struct LinkCache(std::sync::Mutex<LinkGens>);

type LinkMap = std::collections::HashMap<(Vec<u8>, u32), std::sync::Arc<LinkRecord>>;

#[derive(Default)]
pub struct LinkGens {
    young: LinkMap,
    old: LinkMap,
}

impl LinkGens {
    fn insert(&mut self, key: (Vec<u8>, u32), l: std::sync::Arc<LinkRecord>) {
        if self.young.len() >= LinkCache::GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, l);
    }
}

impl LinkCache {
    /// Entries per generation (a link is a few hundred bytes).
    pub const GENERATION: usize = 50_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkGens> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link, if known.
    pub fn get(&self, send: &[u8], n: u32) -> Option<std::sync::Arc<LinkRecord>> {
        let mut g = self.lock();
        let key = (send.to_vec(), n);
        if let Some(l) = g.young.get(&key) {
            return Some(l.clone());
        }
        let l = g.old.remove(&key)?;
        g.insert(key, l.clone());
        Some(l)
    }

    /// Remembers a link read from the store; returns it shared.
    pub fn insert(&self, send: Vec<u8>, n: u32, l: LinkRecord) -> std::sync::Arc<LinkRecord> {
        let l = std::sync::Arc::new(l);
        self.lock().insert((send, n), l.clone());
        l
    }

    /// Remembers the links a commit recorded.
    pub fn extend(&self, links: Vec<(Vec<u8>, u32, LinkRecord)>) {
        if links.is_empty() {
            return;
        }
        let mut g = self.lock();
        for (send, n, l) in links {
            g.insert((send, n), std::sync::Arc::new(l));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn link(url: &str) -> LinkRecord {
        LinkRecord {
            url: url.into(),
            autologin: false,
        }
    }

    #[test]
    fn the_link_cache_keeps_links_in_use_and_stays_bounded() {
        let c = LinkCache::default();
        c.insert(b"s".to_vec(), 0, link("https://a/"));
        for i in 1..=LinkCache::GENERATION as u32 {
            c.insert(b"t".to_vec(), i, link("https://b/"));
        }
        // Link 0 is in the old generation now; a use brings it back.
        assert_eq!(
            c.get(b"s", 0).map(|l| l.url.clone()).as_deref(),
            Some("https://a/")
        );
        for i in 1..=LinkCache::GENERATION as u32 {
            c.insert(b"u".to_vec(), i, link("https://c/"));
        }
        assert!(c.get(b"s", 0).is_some());
        assert!(c.get(b"t", 1).is_none());
        let g = c.lock();
        assert!(g.young.len() + g.old.len() <= 2 * LinkCache::GENERATION);
    }
}
