//! Coupon pools (`coupon_pools_v1`, `coupon_codes_v1`, `coupon_free_v1`):
//! codes added in upload order and handed out first in, first out, each
//! once. A pool's counts change in the same transaction as its codes.
//! The lookups both sides make (`coupon_pool`, `coupon_owner`) are in
//! `ReadTables` (read.rs).

use redb::ReadableTable;

use super::tables::TableSet;
use super::{ReadView, StoreError, WriteTables, from_json, get_json, to_json};
use crate::coupons::{AddedCoupons, CodeState, Given, PoolInfo, PoolStatus};

impl WriteTables<'_> {
    /// Adds `codes` to `pool` (created when new) as free codes, in their
    /// order; a code already in the pool (free or given) or repeated in
    /// `codes` is a duplicate and skipped. `low_water`, when given, becomes
    /// the pool's mark (a new pool's is 0 otherwise). The caller checks the
    /// name and the codes first (`coupons::check_pool_name`, `check_code`).
    pub fn add_coupons(
        &mut self,
        pool: &str,
        codes: &[String],
        low_water: Option<u64>,
        now_ms: i64,
    ) -> Result<AddedCoupons, StoreError> {
        let mut info: PoolInfo = get_json(self.tables.coupon_pools.read()?, "coupon_pools", pool)?
            .unwrap_or(PoolInfo {
                low_water: 0,
                added: 0,
                given: 0,
                created_ms: now_ms,
            });
        if let Some(l) = low_water {
            info.low_water = l;
        }
        let free = to_json(&CodeState::default());
        let mut out = AddedCoupons::default();
        for code in codes {
            // The transaction sees its own inserts: a code repeated in the
            // upload is found here too.
            if self
                .tables
                .coupon_codes
                .open()?
                .get((pool, code.as_str()))?
                .is_some()
            {
                out.duplicates += 1;
                continue;
            }
            self.tables
                .coupon_codes
                .open()?
                .insert((pool, code.as_str()), free.as_slice())?;
            // `added` is the upload sequence: never reused, so the free
            // table keeps upload order across uploads.
            self.tables
                .coupon_free
                .open()?
                .insert((pool, info.added), code.as_str())?;
            info.added += 1;
            out.added += 1;
        }
        self.tables
            .coupon_pools
            .open()?
            .insert(pool, to_json(&info).as_slice())?;
        Ok(out)
    }

    /// The code of `pool` handed to `owner`: the one it already has, or
    /// the first free one, handed to it now (`None`: the pool is empty).
    /// The same owner always gets the same code.
    pub fn coupon_for(
        &mut self,
        pool: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        if let Some(code) = self.tables.coupon_owners.open()?.get((pool, owner))? {
            return Ok(Some(code.value().to_string()));
        }
        let code = self.take_coupon(pool, owner, now_ms)?;
        if let Some(c) = &code {
            self.tables
                .coupon_owners
                .open()?
                .insert((pool, owner), c.as_str())?;
        }
        Ok(code)
    }

    /// Hands the first free code of `pool` to `owner`: removes it from the
    /// free codes, records its owner and time, counts it given. `None` when
    /// the pool is empty or unknown. Call it in the transaction that queues
    /// the message the code goes into, so both commit or neither.
    pub fn take_coupon(
        &mut self,
        pool: &str,
        owner: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let Some(mut info) =
            get_json::<&str, PoolInfo>(self.tables.coupon_pools.read()?, "coupon_pools", pool)?
        else {
            return Ok(None);
        };
        let first = self
            .tables
            .coupon_free
            .open()?
            .range((pool, 0u64)..=(pool, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, v)| (k.value().1, v.value().to_string()));
        let Some((seq, code)) = first else {
            return Ok(None);
        };
        self.tables.coupon_free.open()?.remove((pool, seq))?;
        let state: Option<CodeState> = get_json(
            self.tables.coupon_codes.read()?,
            "coupon_codes",
            (pool, code.as_str()),
        )?;
        if !matches!(state, Some(CodeState { given: None })) {
            return Err(StoreError::Corrupt {
                table: "coupon_free",
                message: format!(
                    "code `{code}` of pool `{pool}` is listed as free but is {}",
                    if state.is_some() {
                        "already given"
                    } else {
                        "not in the pool"
                    }
                ),
            });
        }
        let given = CodeState {
            given: Some(Given {
                owner: owner.to_string(),
                at_ms: now_ms,
            }),
        };
        self.tables
            .coupon_codes
            .open()?
            .insert((pool, code.as_str()), to_json(&given).as_slice())?;
        info.given += 1;
        self.tables
            .coupon_pools
            .open()?
            .insert(pool, to_json(&info).as_slice())?;
        Ok(Some(code))
    }
}

impl ReadView {
    /// Every coupon pool's status, by name.
    pub fn coupon_pools(&self) -> Result<Vec<PoolStatus>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables.coupon_pools()?.iter()? {
            let (k, v) = r?;
            let info: PoolInfo = from_json("coupon_pools", v.value())?;
            out.push(info.status(k.value()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Store;
    use super::super::tables::TableSet as _;
    use crate::store::ReadTables as _;
    use redb::ReadableTable as _;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn codes(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn take_hands_each_code_once_in_upload_order() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let first = codes(&["A1", "A2", "A3"]);
        let added = store.write_wait(move |w| w.add_coupons("p", &first, Some(1), 10))?;
        assert_eq!((added.added, added.duplicates), (3, 0));
        let more = codes(&["B1", "A2", "B2", "B1"]);
        let added = store.write_wait(move |w| w.add_coupons("p", &more, None, 20))?;
        assert_eq!(
            (added.added, added.duplicates),
            (2, 2),
            "A2 already in the pool, B1 twice in the upload"
        );

        let mut taken = Vec::new();
        for i in 0..5 {
            let owner = format!("owner {i}");
            let c = store.write_wait(move |w| w.take_coupon("p", &owner, 100 + i))?;
            taken.push(c.ok_or("the pool ran dry too early")?);
        }
        assert_eq!(taken, codes(&["A1", "A2", "A3", "B1", "B2"]));
        assert_eq!(store.write_wait(|w| w.take_coupon("p", "late", 200))?, None);
        assert_eq!(store.write_wait(|w| w.take_coupon("nope", "x", 200))?, None);

        let (status, owner, free_owner) = store.read_blocking(|v| {
            Ok((
                v.coupon_pool("p")?,
                v.coupon_owner("p", "A3")?,
                v.coupon_owner("p", "zz")?,
            ))
        })?;
        let status = status.ok_or("pool missing")?;
        assert_eq!(
            (
                status.added,
                status.given,
                status.free,
                status.low_water,
                status.low
            ),
            (5, 5, 0, 1, true)
        );
        let owner = owner.ok_or("A3 has no owner")?;
        assert_eq!((owner.owner.as_str(), owner.at_ms), ("owner 2", 102));
        assert_eq!(free_owner, None);

        // A code handed out is still a duplicate when uploaded again.
        let again = codes(&["A1", "C1"]);
        let added = store.write_wait(move |w| w.add_coupons("p", &again, None, 30))?;
        assert_eq!((added.added, added.duplicates), (1, 1));
        assert_eq!(
            store
                .write_wait(|w| w.take_coupon("p", "o", 300))?
                .as_deref(),
            Some("C1")
        );
        store.close();
        Ok(())
    }

    #[test]
    fn counts_stay_exact_within_one_transaction() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let (taken, status_inside) = store.write_wait(|w| {
            w.add_coupons("q", &codes(&["X", "Y", "Z"]), Some(2), 1)?;
            let t = w.take_coupon("q", "o1", 2)?;
            // Another pool is untouched by takes from this one.
            w.add_coupons("q2", &codes(&["X"]), None, 1)?;
            Ok((t, w.coupon_pool("q")?))
        })?;
        assert_eq!(taken.as_deref(), Some("X"));
        let s = status_inside.ok_or("no status")?;
        assert_eq!((s.added, s.given, s.free, s.low), (3, 1, 2, true));
        let (pools, free, none) = store.read_blocking(|v| {
            let mut free = Vec::new();
            for r in v
                .tables
                .coupon_free()?
                .range(("q", 0u64)..=("q", u64::MAX))?
            {
                free.push(r?.1.value().to_string());
            }
            Ok((v.coupon_pools()?, free, v.coupon_pool("none")?))
        })?;
        assert_eq!(
            pools
                .iter()
                .map(|p| (p.name.as_str(), p.free, p.low))
                .collect::<Vec<_>>(),
            vec![("q", 2, true), ("q2", 1, false)]
        );
        assert_eq!(free, codes(&["Y", "Z"]));
        assert_eq!(none, None);
        // An empty pool gives nothing, again and again, and counts nothing.
        store.write_wait(|w| {
            w.take_coupon("q", "o2", 3)?;
            w.take_coupon("q", "o3", 3)?;
            Ok(())
        })?;
        for _ in 0..2 {
            assert_eq!(store.write_wait(|w| w.take_coupon("q", "o4", 4))?, None);
        }
        let s = store
            .read_blocking(|v| v.coupon_pool("q"))?
            .ok_or("no status")?;
        assert_eq!((s.added, s.given, s.free), (3, 3, 0));
        store.close();
        Ok(())
    }
}
