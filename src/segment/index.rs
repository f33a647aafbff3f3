//! The segment index: everything segments read, in memory, column by column,
//! indexed by contact id. Built once from the store when the daemon starts and
//! then kept in step by the store's [`Change`] notifications, which arrive
//! after each commit in commit order, before any writer is answered.
//!
//! Memory per contact is one [`Row`] (built-in attributes and aggregates) and
//! one slot per custom field column; memberships (lists, tags, payment types,
//! cart contents) are sorted id vectors; purchases are postings of
//! (contact, day) per category and per SKU. Strings are interned lower-cased,
//! so text comparisons are case-insensitive.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::contacts::model::{Contact, FieldValue};
use crate::send::SendKind;
use crate::shop::model::{Cart, ShopStats, StatsDelta, day_of_ms};
use crate::store::Change;

/// [`Row::sms`]'s flag: the contact has a phone number.
pub const HAS_PHONE: u8 = 0x80;

/// "No value" for day columns.
pub const NO_DAY: i32 = i32::MIN;

/// Per-contact built-in attributes and aggregates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Row {
    /// The contact exists.
    pub present: bool,
    /// Consent state code.
    pub consent: u8,
    /// SMS consent state code, plus [`HAS_PHONE`] when the contact has a
    /// phone number.
    pub sms: u8,
    /// Site (symbol; 0 = none).
    pub site: u32,
    /// Language (symbol; 0 = none).
    pub language: u32,
    /// Domain of the address (symbol).
    pub email_domain: u32,
    /// Day created.
    pub created: i32,
    /// Counted orders.
    pub order_count: u32,
    /// Sum of counted orders, hundredths.
    pub order_sum: i64,
    /// Day of the first counted order.
    pub first_order: i32,
    /// Day of the last counted order.
    pub last_order: i32,
    /// Day of the last login.
    pub last_login: i32,
    /// Logins.
    pub logins: u32,
    /// Day of the last open.
    pub last_open: i32,
    /// Day of the last click.
    pub last_click: i32,
}

impl Default for Row {
    fn default() -> Self {
        Row {
            present: false,
            consent: 0,
            sms: 0,
            site: 0,
            language: 0,
            email_domain: 0,
            created: NO_DAY,
            order_count: 0,
            order_sum: 0,
            first_order: NO_DAY,
            last_order: NO_DAY,
            last_login: NO_DAY,
            logins: 0,
            last_open: NO_DAY,
            last_click: NO_DAY,
        }
    }
}

/// Interned, lower-cased strings. Symbol 0 is "none". The strings live
/// back to back in one arena; the hash table holds only symbols (4 bytes
/// each), so a million distinct values (customer ids) cost about their bytes
/// plus 10 bytes each.
pub struct Interner {
    bytes: Vec<u8>,
    /// Start of symbol n's bytes; symbol n ends where n + 1 starts.
    starts: Vec<u32>,
    table: hashbrown::HashTable<u32>,
    hasher: rustc_hash::FxBuildHasher,
}

impl std::fmt::Debug for Interner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Interner({} strings, {} bytes)",
            self.starts.len() - 2,
            self.bytes.len()
        )
    }
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            bytes: Vec::new(),
            // Symbol 0 is the empty string; the extra entry closes the last.
            starts: vec![0, 0],
            table: hashbrown::HashTable::new(),
            hasher: rustc_hash::FxBuildHasher,
        }
    }
}

impl Interner {
    fn str_of<'a>(bytes: &'a [u8], starts: &[u32], n: u32) -> &'a str {
        let a = starts[n as usize] as usize;
        let b = starts[n as usize + 1] as usize;
        // Only whole `&str`s are ever appended, so every range is UTF-8.
        std::str::from_utf8(&bytes[a..b]).unwrap_or_default()
    }

    fn hash(&self, s: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, s)
    }

    fn lower(s: &str) -> std::borrow::Cow<'_, str> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
            std::borrow::Cow::Owned(s.to_lowercase())
        } else {
            std::borrow::Cow::Borrowed(s)
        }
    }

    /// The symbol of `s` (lower-cased), created if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        let key = Self::lower(s);
        let key = key.as_ref();
        if key.is_empty() {
            return 0;
        }
        let h = self.hash(key);
        let (bytes, starts) = (&self.bytes, &self.starts);
        if let Some(&n) = self
            .table
            .find(h, |&n| Self::str_of(bytes, starts, n) == key)
        {
            return n;
        }
        let n = (self.starts.len() - 1) as u32;
        self.bytes.extend_from_slice(key.as_bytes());
        self.starts.push(self.bytes.len() as u32);
        let (bytes, starts, hasher) = (&self.bytes, &self.starts, &self.hasher);
        self.table.insert_unique(h, n, |&m| {
            std::hash::BuildHasher::hash_one(hasher, Self::str_of(bytes, starts, m))
        });
        n
    }

    /// The symbol of `s` if it was ever interned (0 otherwise).
    pub fn get(&self, s: &str) -> u32 {
        let key = Self::lower(s);
        let key = key.as_ref();
        let h = self.hash(key);
        self.table
            .find(h, |&n| Self::str_of(&self.bytes, &self.starts, n) == key)
            .copied()
            .unwrap_or(0)
    }

    /// Every (symbol, string).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        (1..(self.starts.len() - 1) as u32).map(|n| (n, Self::str_of(&self.bytes, &self.starts, n)))
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.starts.capacity() * 4 + self.table.capacity() * 5
    }

    fn shrink(&mut self) {
        self.bytes.shrink_to_fit();
        self.starts.shrink_to_fit();
    }
}

/// Saved as its strings (arena and starts); the hash table is made again
/// when it is read.
impl Serialize for Interner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.bytes, &self.starts).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Interner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// The serialized form: `(&bytes, &starts)`.
        #[derive(Deserialize)]
        struct Saved(
            #[serde(deserialize_with = "sized::vec")] Vec<u8>,
            #[serde(deserialize_with = "sized::vec")] Vec<u32>,
        );
        let Saved(bytes, starts) = Saved::deserialize(d)?;
        let bad = |m: &str| serde::de::Error::custom(format!("interned strings: {m}"));
        if starts.len() < 2 || starts[0] != 0 || starts[1] != 0 {
            return Err(bad("symbol 0 is not the empty string"));
        }
        if starts.windows(2).any(|w| w[0] > w[1]) || starts.last() != Some(&(bytes.len() as u32)) {
            return Err(bad("string bounds out of order"));
        }
        if std::str::from_utf8(&bytes).is_err()
            || starts
                .iter()
                .any(|&b| !is_char_boundary(&bytes, b as usize))
        {
            return Err(bad("not UTF-8"));
        }
        let hasher = rustc_hash::FxBuildHasher;
        let table = Interner::table_of(&bytes, &starts, &hasher);
        Ok(Interner {
            bytes,
            starts,
            table,
            hasher,
        })
    }
}

impl Interner {
    /// The hash table over every symbol of strings read back.
    ///
    /// At 10M strings the table is about 80 MB, far beyond the CPU's caches;
    /// inserting the symbols in their own order lands each at a random
    /// place in it, a cache miss each: 1.06 s for 10M strings against 35 ms
    /// for 1M (30 times the time for 10 times the strings). So the symbols
    /// are first grouped by the stretch of the table they land in (a
    /// counting sort on the top bits of their bucket; at most 512 groups,
    /// few enough for the sort's writes to stay within the TLB), then
    /// inserted group by group, each group within a 512th of the table
    /// (160 KB at 10M): 0.34 s at 10M, 35 ms at 1M. hashbrown places
    /// an entry by the low bits of its hash (`hash & (buckets - 1)`, the
    /// bucket count a power of two); were that to change, only the speed
    /// would suffer, never the table.
    fn table_of(
        bytes: &[u8],
        starts: &[u32],
        hasher: &rustc_hash::FxBuildHasher,
    ) -> hashbrown::HashTable<u32> {
        /// At most 512 groups.
        const GROUPS_BITS: u32 = 9;
        let count = starts.len().saturating_sub(2);
        let mut table = hashbrown::HashTable::with_capacity(count);
        // hashbrown keeps 7/8 of its buckets usable.
        let buckets = (table.capacity() / 7 * 8).max(1).next_power_of_two();
        let shift = buckets.trailing_zeros().saturating_sub(GROUPS_BITS);
        let groups = buckets >> shift;
        let hash =
            |n: u32| std::hash::BuildHasher::hash_one(hasher, Self::str_of(bytes, starts, n));
        let group = |h: u64| (h as usize & (buckets - 1)) >> shift;
        let symbols = 1..=count as u32;
        // Where each group starts in `sorted` (hashing twice is cheaper than
        // keeping every hash for the second pass).
        let mut at = vec![0usize; groups + 1];
        for n in symbols.clone() {
            at[group(hash(n)) + 1] += 1;
        }
        for g in 1..=groups {
            at[g] += at[g - 1];
        }
        let mut sorted = vec![(0u64, 0u32); count];
        for n in symbols {
            let h = hash(n);
            let g = group(h);
            sorted[at[g]] = (h, n);
            at[g] += 1;
        }
        for (h, n) in sorted {
            table.insert_unique(h, n, |&m| hash(m));
        }
        table
    }
}

fn is_char_boundary(bytes: &[u8], at: usize) -> bool {
    at == bytes.len() || bytes.get(at).is_some_and(|b| (*b as i8) >= -0x40)
}

/// Makes room for one more element, growing by an eighth (at least 8)
/// instead of doubling: the index's vectors are large and long-lived, and
/// doubling would leave up to half of them unused.
fn room<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 8).max(8));
    }
}

/// Decoding the saved index ([`super::persist`]) with each vector and map
/// sized at once. serde's own `Vec` and `HashMap` start at no more than
/// 1 MiB and grow as elements arrive (a length not yet backed by elements
/// might be a lie), and the index's vectors reach hundreds of MB, each
/// doubling a copy into fresh pages. The file's checksum is verified before
/// it is decoded, so its lengths are the ones written; should the allocator
/// refuse one anyway, the collection grows as serde's would.
mod sized {
    use std::collections::HashMap;
    use std::fmt;
    use std::hash::{BuildHasher, Hash};
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

    pub fn vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Seq<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Seq<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut v = Vec::new();
                let _ = v.try_reserve_exact(seq.size_hint().unwrap_or(0));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(v)
            }
        }
        d.deserialize_seq(Seq(PhantomData))
    }

    pub fn map<'de, D, K, V, S>(d: D) -> Result<HashMap<K, V, S>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        S: BuildHasher + Default,
    {
        struct Map<K, V, S>(PhantomData<(K, V, S)>);
        impl<'de, K, V, S> Visitor<'de> for Map<K, V, S>
        where
            K: Deserialize<'de> + Eq + Hash,
            V: Deserialize<'de>,
            S: BuildHasher + Default,
        {
            type Value = HashMap<K, V, S>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut m = HashMap::with_hasher(S::default());
                let _ = m.try_reserve(map.size_hint().unwrap_or(0));
                while let Some((k, v)) = map.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Map(PhantomData))
    }
}

/// A sorted set of contact ids.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct IdSet(#[serde(deserialize_with = "sized::vec")] pub Vec<u32>);

impl IdSet {
    /// Adds an id.
    pub fn insert(&mut self, id: u32) {
        match self.0.last() {
            Some(&l) if l >= id => {
                if let Err(at) = self.0.binary_search(&id) {
                    room(&mut self.0);
                    self.0.insert(at, id);
                }
            }
            _ => {
                room(&mut self.0);
                self.0.push(id);
            }
        }
    }

    /// Removes an id.
    pub fn remove(&mut self, id: u32) {
        if let Ok(at) = self.0.binary_search(&id) {
            self.0.remove(at);
        }
    }
}

/// Purchase postings of one category or SKU: (contact, day) pairs.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Postings {
    /// Contact ids.
    #[serde(deserialize_with = "sized::vec")]
    pub ids: Vec<u32>,
    /// Days since 1970 (saturated to 0..=65535).
    #[serde(deserialize_with = "sized::vec")]
    pub days: Vec<u16>,
}

/// A day as stored in postings.
pub fn posting_day(day: i32) -> u16 {
    day.clamp(0, u16::MAX as i32) as u16
}

impl Postings {
    fn add(&mut self, id: u32, day: i32) {
        room(&mut self.ids);
        room(&mut self.days);
        self.ids.push(id);
        self.days.push(posting_day(day));
    }

    fn remove(&mut self, id: u32, day: i32) {
        let d = posting_day(day);
        if let Some(at) = self
            .ids
            .iter()
            .zip(&self.days)
            .position(|(i, x)| *i == id && *x == d)
        {
            self.ids.swap_remove(at);
            self.days.swap_remove(at);
        }
    }
}

/// A custom field's values, by contact id.
#[derive(Debug, Serialize, Deserialize)]
pub enum Column {
    /// Text (symbol; 0 none).
    #[serde(deserialize_with = "sized::vec")]
    Text(Vec<u32>),
    /// Choice (symbol; 0 none).
    #[serde(deserialize_with = "sized::vec")]
    Choice(Vec<u32>),
    /// Number (NaN none).
    #[serde(deserialize_with = "sized::vec")]
    Number(Vec<f64>),
    /// Date (day; [`NO_DAY`] none).
    #[serde(deserialize_with = "sized::vec")]
    Date(Vec<i32>),
    /// Boolean (0 none, 1 false, 2 true).
    #[serde(deserialize_with = "sized::vec")]
    Bool(Vec<u8>),
}

impl Column {
    fn for_value(v: &FieldValue) -> Column {
        match v {
            FieldValue::Text(_) => Column::Text(Vec::new()),
            FieldValue::Choice(_) => Column::Choice(Vec::new()),
            FieldValue::Number(_) => Column::Number(Vec::new()),
            FieldValue::Date(_) => Column::Date(Vec::new()),
            FieldValue::Boolean(_) => Column::Bool(Vec::new()),
        }
    }

    fn fits(&self, v: &FieldValue) -> bool {
        matches!(
            (self, v),
            (Column::Text(_), FieldValue::Text(_))
                | (Column::Choice(_), FieldValue::Choice(_))
                | (Column::Number(_), FieldValue::Number(_))
                | (Column::Date(_), FieldValue::Date(_))
                | (Column::Bool(_), FieldValue::Boolean(_))
        )
    }

    fn set(&mut self, id: usize, v: Option<&FieldValue>, syms: &mut Interner) {
        fn put<T: Copy>(col: &mut Vec<T>, id: usize, none: T, v: T) {
            if col.len() <= id {
                if col.capacity() <= id {
                    col.reserve_exact((id + 1 - col.len()).max(col.len() / 8).max(1024));
                }
                col.resize(id + 1, none);
            }
            col[id] = v;
        }
        fn clear<T: Copy>(col: &mut [T], id: usize, none: T) {
            if let Some(x) = col.get_mut(id) {
                *x = none;
            }
        }
        match (self, v) {
            (Column::Text(c), Some(FieldValue::Text(s)))
            | (Column::Choice(c), Some(FieldValue::Choice(s))) => {
                let sym = syms.intern(s);
                put(c, id, 0, sym)
            }
            (Column::Number(c), Some(FieldValue::Number(s))) => {
                put(c, id, f64::NAN, s.parse().unwrap_or(f64::NAN))
            }
            (Column::Date(c), Some(FieldValue::Date(d))) => {
                put(c, id, NO_DAY, crate::shop::model::day_of_date(*d))
            }
            (Column::Bool(c), Some(FieldValue::Boolean(b))) => put(c, id, 0, 1 + *b as u8),
            (Column::Text(c) | Column::Choice(c), _) => clear(c, id, 0),
            (Column::Number(c), _) => clear(c, id, f64::NAN),
            (Column::Date(c), _) => clear(c, id, NO_DAY),
            (Column::Bool(c), _) => clear(c, id, 0),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Column::Text(c) | Column::Choice(c) => c.capacity() * 4,
            Column::Number(c) => c.capacity() * 8,
            Column::Date(c) => c.capacity() * 4,
            Column::Bool(c) => c.capacity(),
        }
    }
}

/// A contact's current cart, for the few contacts that have one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CartRow {
    /// Units.
    pub units: u32,
    /// Value, hundredths.
    pub value: i64,
    /// Day it last changed.
    pub updated: i32,
}

/// What one campaign's recipients did.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SendSets {
    /// Contacts it was sent to.
    pub sent: Bits,
    /// Contacts who opened it.
    pub opened: Bits,
    /// Contacts who clicked in it.
    pub clicked: Bits,
}

/// A growable bitset of contact ids: a campaign's recipients arrive in
/// batches from several parts (an A/B test's groups interleave), which a
/// sorted id list would pay for with moves; a bit costs nothing to set.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Bits(#[serde(deserialize_with = "sized::vec")] pub Vec<u64>);

impl Bits {
    /// Adds an id.
    pub fn insert(&mut self, id: u32) {
        let w = id as usize / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (id % 64);
    }

    /// Whether `id` is in the set.
    pub fn has(&self, id: u32) -> bool {
        self.0
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// The index's data, behind the index's lock.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Data {
    /// Rows by contact id (index 0 unused).
    #[serde(deserialize_with = "sized::vec")]
    pub rows: Vec<Row>,
    /// Strings.
    pub syms: Interner,
    /// Custom field columns by field name.
    pub fields: HashMap<String, Column>,
    /// List id → members.
    pub lists: HashMap<u64, IdSet>,
    /// Tag symbol → members.
    pub tags: HashMap<u32, IdSet>,
    /// Payment type symbol → contacts who used it.
    pub payments: HashMap<u32, IdSet>,
    /// Category symbol → purchases.
    pub bought_category: HashMap<u32, Postings>,
    /// SKU symbol → purchases.
    pub bought_sku: HashMap<u32, Postings>,
    /// Contact id → cart (only contacts with a cart; most have none).
    #[serde(deserialize_with = "sized::map")]
    pub carts: HashMap<u32, CartRow, rustc_hash::FxBuildHasher>,
    /// Category symbol → contacts with it in the cart.
    pub cart_category: HashMap<u32, IdSet>,
    /// SKU symbol → contacts with it in the cart.
    pub cart_sku: HashMap<u32, IdSet>,
    /// Campaign number → recipients, openers, clickers.
    pub sends: HashMap<u64, SendSets>,
    /// Contacts present.
    pub contacts: usize,
}

fn id32(id: u64) -> Option<u32> {
    u32::try_from(id).ok()
}

impl Data {
    fn row_mut(&mut self, id: u32) -> &mut Row {
        let i = id as usize;
        if self.rows.len() <= i {
            if self.rows.capacity() <= i {
                let more = (i + 1 - self.rows.len()).max(self.rows.len() / 8).max(1024);
                self.rows.reserve_exact(more);
            }
            self.rows.resize(i + 1, Row::default());
        }
        &mut self.rows[i]
    }

    /// Gives back spare capacity (after the startup build).
    pub fn shrink(&mut self) {
        self.rows.shrink_to_fit();
        self.syms.shrink();
        for c in self.fields.values_mut() {
            match c {
                Column::Text(v) | Column::Choice(v) => v.shrink_to_fit(),
                Column::Number(v) => v.shrink_to_fit(),
                Column::Date(v) => v.shrink_to_fit(),
                Column::Bool(v) => v.shrink_to_fit(),
            }
        }
        for m in [
            &mut self.tags,
            &mut self.payments,
            &mut self.cart_category,
            &mut self.cart_sku,
        ] {
            m.values_mut().for_each(|s| s.0.shrink_to_fit());
        }
        self.lists.values_mut().for_each(|s| s.0.shrink_to_fit());
        for m in [&mut self.bought_category, &mut self.bought_sku] {
            m.values_mut().for_each(|p| {
                p.ids.shrink_to_fit();
                p.days.shrink_to_fit();
            });
        }
    }

    /// Applies one committed change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Contact {
                contact,
                removed_lists,
                removed_tags,
                ..
            } => {
                self.put_contact(contact);
                let Some(id) = id32(contact.id) else { return };
                for l in removed_lists {
                    if let Some(s) = self.lists.get_mut(l) {
                        s.remove(id);
                    }
                }
                for t in removed_tags {
                    // Tags are kept lower-cased here but are case-sensitive
                    // in the store: `VIP` leaves only if no `vip` remains.
                    let lower = t.to_lowercase();
                    if contact.tags.iter().any(|x| x.to_lowercase() == lower) {
                        continue;
                    }
                    let sym = self.syms.get(t);
                    if let Some(s) = self.tags.get_mut(&sym) {
                        s.remove(id);
                    }
                }
            }
            Change::ContactDeleted(id) => {
                let Some(id) = id32(*id) else { return };
                if let Some(r) = self.rows.get_mut(id as usize)
                    && r.present
                {
                    *r = Row::default();
                    self.contacts = self.contacts.saturating_sub(1);
                }
                for c in self.fields.values_mut() {
                    c.set(id as usize, None, &mut self.syms);
                }
            }
            Change::ListDeleted(id) => {
                self.lists.remove(id);
            }
            Change::FieldDeleted(name) => {
                self.fields.remove(name);
            }
            Change::Stats {
                contact,
                scalars,
                delta,
            } => self.put_stats(*contact, scalars, delta),
            Change::Cart {
                contact,
                before,
                after,
            } => self.put_cart(*contact, before.as_deref(), after.as_deref()),
            // Segments name campaigns by number ("opened campaign 3").
            Change::Sent { send, contacts } if send.kind == SendKind::Campaign => {
                for c in contacts {
                    self.record_sent(send.id, *c);
                }
            }
            Change::Engaged {
                send,
                contact,
                click,
                at,
            } if send.kind == SendKind::Campaign => {
                let day = crate::shop::model::day_of_ms(*at);
                self.record_open(send.id, *contact, day);
                if *click {
                    self.record_click(send.id, *contact, day);
                }
            }
            Change::Sent { .. }
            | Change::Engaged { .. }
            | Change::Order { .. }
            | Change::Restocked { .. }
            | Change::Signup { .. } => {}
        }
    }

    /// Sets a contact's attributes, fields, lists and tags (additions only:
    /// removals come with the change).
    pub fn put_contact(&mut self, c: &Contact) {
        let Some(id) = id32(c.id) else { return };
        let site = c.site.as_deref().map_or(0, |s| self.syms.intern(s));
        let language = c.language.as_deref().map_or(0, |s| self.syms.intern(s));
        let domain = c
            .email
            .rsplit_once('@')
            .map_or(0, |(_, d)| self.syms.intern(d));
        let row = self.row_mut(id);
        let new = !row.present;
        row.present = true;
        row.consent = c.consent.code();
        row.sms = c.sms_consent.code() | if c.phone.is_some() { HAS_PHONE } else { 0 };
        row.site = site;
        row.language = language;
        row.email_domain = domain;
        row.created = day_of_ms(c.created_at.timestamp_millis());
        if new {
            self.contacts += 1;
        }
        for (name, v) in &c.fields {
            match self.fields.get_mut(name) {
                Some(col) if col.fits(v) => {}
                Some(col) => *col = Column::for_value(v),
                None => {
                    self.fields.insert(name.clone(), Column::for_value(v));
                }
            }
        }
        for (name, col) in self.fields.iter_mut() {
            col.set(id as usize, c.fields.get(name), &mut self.syms);
        }
        for l in &c.lists {
            self.lists.entry(*l).or_default().insert(id);
        }
        for t in &c.tags {
            let sym = self.syms.intern(t);
            self.tags.entry(sym).or_default().insert(id);
        }
    }

    /// Sets a contact's aggregates from `scalars` and applies the changes
    /// to its purchase postings and payment types.
    pub fn put_stats(&mut self, contact: u64, scalars: &ShopStats, delta: &StatsDelta) {
        let Some(id) = id32(contact) else { return };
        let row = self.row_mut(id);
        row.order_count = scalars.order_count;
        row.order_sum = scalars.order_sum;
        row.first_order = scalars.first_order.unwrap_or(NO_DAY);
        row.last_order = scalars.last_order.unwrap_or(NO_DAY);
        row.last_login = scalars.last_login.map_or(NO_DAY, day_of_ms);
        row.logins = scalars.logins;
        for (sku, term, day) in &delta.added {
            let sym = self.syms.intern(term);
            let map = if *sku {
                &mut self.bought_sku
            } else {
                &mut self.bought_category
            };
            map.entry(sym).or_default().add(id, *day);
        }
        for (sku, term, day) in &delta.removed {
            let sym = self.syms.get(term);
            let map = if *sku {
                &mut self.bought_sku
            } else {
                &mut self.bought_category
            };
            if let Some(p) = map.get_mut(&sym) {
                p.remove(id, *day);
            }
        }
        for p in &delta.payments_added {
            let sym = self.syms.intern(p);
            self.payments.entry(sym).or_default().insert(id);
        }
        for p in &delta.payments_removed {
            let sym = self.syms.get(p);
            if let Some(s) = self.payments.get_mut(&sym) {
                s.remove(id);
            }
        }
    }

    /// Loads a contact's stored aggregates whole (the startup build): the
    /// same as [`Data::put_stats`] with a delta from nothing, without
    /// building the delta.
    pub fn load_stats(&mut self, contact: u64, s: &ShopStats) {
        let Some(id) = id32(contact) else { return };
        self.put_stats(contact, s, &StatsDelta::default());
        for (sku, map) in [(false, &s.categories), (true, &s.skus)] {
            for (term, days) in map {
                let sym = self.syms.intern(term);
                let p = if sku {
                    self.bought_sku.entry(sym).or_default()
                } else {
                    self.bought_category.entry(sym).or_default()
                };
                for d in days {
                    p.add(id, *d);
                }
            }
        }
        for p in &s.payment_types {
            let sym = self.syms.intern(p);
            self.payments.entry(sym).or_default().insert(id);
        }
    }

    /// Sets a contact's cart.
    pub fn put_cart(&mut self, contact: u64, before: Option<&Cart>, after: Option<&Cart>) {
        let Some(id) = id32(contact) else { return };
        match after {
            Some(c) => {
                self.carts.insert(
                    id,
                    CartRow {
                        units: c.units(),
                        value: c.value(),
                        updated: day_of_ms(c.updated_at),
                    },
                );
            }
            None => {
                self.carts.remove(&id);
            }
        }
        if let Some(b) = before {
            for i in &b.items {
                let s = self.syms.get(&i.sku);
                if let Some(set) = self.cart_sku.get_mut(&s) {
                    set.remove(id);
                }
                if let Some(c) = &i.category {
                    let s = self.syms.get(c);
                    if let Some(set) = self.cart_category.get_mut(&s) {
                        set.remove(id);
                    }
                }
            }
        }
        if let Some(a) = after {
            for i in &a.items {
                let s = self.syms.intern(&i.sku);
                self.cart_sku.entry(s).or_default().insert(id);
                if let Some(c) = &i.category {
                    let s = self.syms.intern(c);
                    self.cart_category.entry(s).or_default().insert(id);
                }
            }
        }
    }

    /// Records that campaign `campaign` was sent to a contact.
    pub fn record_sent(&mut self, campaign: u64, contact: u64) {
        if let Some(id) = id32(contact) {
            self.sends.entry(campaign).or_default().sent.insert(id);
        }
    }

    /// Records an open of campaign `campaign` on `day`.
    pub fn record_open(&mut self, campaign: u64, contact: u64, day: i32) {
        let Some(id) = id32(contact) else { return };
        self.sends.entry(campaign).or_default().opened.insert(id);
        let r = self.row_mut(id);
        r.last_open = r.last_open.max(day);
    }

    /// Records a click in campaign `campaign` on `day`.
    pub fn record_click(&mut self, campaign: u64, contact: u64, day: i32) {
        let Some(id) = id32(contact) else { return };
        self.sends.entry(campaign).or_default().clicked.insert(id);
        let r = self.row_mut(id);
        r.last_click = r.last_click.max(day);
    }

    /// An estimate of the heap memory the index holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        let sets = |m: &HashMap<u32, IdSet>| -> usize {
            m.values().map(|s| s.0.capacity() * 4 + 48).sum::<usize>()
        };
        let posts = |m: &HashMap<u32, Postings>| -> usize {
            m.values()
                .map(|p| p.ids.capacity() * 4 + p.days.capacity() * 2 + 64)
                .sum::<usize>()
        };
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.carts.capacity() * (std::mem::size_of::<CartRow>() + 5)
            + self.syms.heap_bytes()
            + self.fields.values().map(Column::heap_bytes).sum::<usize>()
            + self
                .lists
                .values()
                .map(|s| s.0.capacity() * 4 + 48)
                .sum::<usize>()
            + sets(&self.tags)
            + sets(&self.payments)
            + sets(&self.cart_category)
            + sets(&self.cart_sku)
            + posts(&self.bought_category)
            + posts(&self.bought_sku)
            + self
                .sends
                .values()
                .map(|s| (s.sent.0.capacity() + s.opened.0.capacity() + s.clicked.0.capacity()) * 8)
                .sum::<usize>()
    }

    /// Highest contact id with a row.
    pub fn max_id(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(v: &T) -> Result<T, postcard::Error> {
        postcard::from_bytes(&postcard::to_allocvec(v)?)
    }

    #[test]
    fn interned_strings_read_back_find_every_symbol() -> TestResult {
        // Enough strings for the table's build to use all its groups.
        let mut syms = Interner::default();
        let made: Vec<u32> = (0..200_000)
            .map(|i| syms.intern(&format!("Value {i}")))
            .collect();
        let back = round_trip(&syms)?;
        for (i, &n) in made.iter().enumerate() {
            assert_eq!(back.get(&format!("value {i}")), n, "string {i}");
        }
        assert_eq!(back.get("never interned"), 0);
        let mut back = back;
        assert_eq!(back.intern("VALUE 7"), made[7]);
        assert_eq!(back.intern("new"), made.len() as u32 + 1);
        Ok(())
    }

    #[test]
    fn saved_collections_read_back_whole_and_sized() -> TestResult {
        // Past serde's 1 MiB first allocation (262,144 u32s), not a power
        // of two: a vector grown by doubling would have room to spare.
        const N: u32 = 300_001;
        let mut d = Data::default();
        d.rows.resize(N as usize, Row::default());
        d.rows[N as usize - 1].order_sum = 7;
        d.fields.insert(
            "points".into(),
            Column::Number((0..N).map(f64::from).collect()),
        );
        d.fields.insert("vip".into(), Column::Bool(vec![2; 3]));
        d.lists.insert(1, IdSet((1..N).collect()));
        let mut p = Postings::default();
        (1..N).for_each(|id| p.add(id, 20_000));
        d.bought_sku.insert(4, p);
        for id in 1..100_000u32 {
            let row = CartRow {
                units: id,
                value: 100,
                updated: 1,
            };
            d.carts.insert(id, row);
        }
        d.sends.entry(3).or_default().sent.insert(N - 1);
        let back = round_trip(&d)?;
        assert_eq!(back.rows.len(), N as usize);
        assert_eq!(back.rows.capacity(), N as usize);
        assert_eq!(back.rows[N as usize - 1].order_sum, 7);
        match back.fields.get("points") {
            Some(Column::Number(v)) => {
                assert_eq!(v.len(), N as usize);
                assert_eq!(v.capacity(), N as usize);
                assert_eq!(v[12], 12.0);
            }
            other => panic!("points read back as {other:?}"),
        }
        assert!(matches!(back.fields.get("vip"), Some(Column::Bool(v)) if v == &[2; 3]));
        let list = &back.lists[&1].0;
        assert_eq!(
            (list.len(), list.capacity()),
            (N as usize - 1, N as usize - 1)
        );
        let p = &back.bought_sku[&4];
        assert_eq!(
            (p.ids.len(), p.ids.capacity()),
            (N as usize - 1, N as usize - 1)
        );
        assert!(p.days.iter().all(|&d| d == 20_000));
        assert_eq!(back.carts.len(), 99_999);
        assert_eq!(back.carts[&99_999].units, 99_999);
        assert!(back.sends[&3].sent.has(N - 1));
        Ok(())
    }
}
