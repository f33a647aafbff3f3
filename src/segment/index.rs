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

use crate::contacts::model::{Contact, FieldValue};
use crate::shop::model::{Cart, ShopStats, StatsDelta, day_of_ms};
use crate::store::Change;

/// "No value" for day columns.
pub const NO_DAY: i32 = i32::MIN;

/// Per-contact built-in attributes and aggregates.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// The contact exists.
    pub present: bool,
    /// Consent state code.
    pub consent: u8,
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
    /// Units in the cart.
    pub cart_units: u32,
    /// Value of the cart, hundredths.
    pub cart_value: i64,
    /// Day the cart last changed.
    pub cart_updated: i32,
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
            cart_units: 0,
            cart_value: 0,
            cart_updated: NO_DAY,
            last_open: NO_DAY,
            last_click: NO_DAY,
        }
    }
}

/// Interned, lower-cased strings. Symbol 0 is "none".
#[derive(Debug)]
pub struct Interner {
    map: HashMap<Box<str>, u32>,
    strings: Vec<Box<str>>,
    bytes: usize,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            map: HashMap::new(),
            strings: vec!["".into()],
            bytes: 0,
        }
    }
}

impl Interner {
    /// The symbol of `s` (lower-cased), created if new.
    pub fn intern(&mut self, s: &str) -> u32 {
        let lower;
        let key = if s.bytes().any(|b| b.is_ascii_uppercase()) || !s.is_ascii() {
            lower = s.to_lowercase();
            lower.as_str()
        } else {
            s
        };
        if let Some(&n) = self.map.get(key) {
            return n;
        }
        let n = self.strings.len() as u32;
        self.bytes += key.len();
        self.strings.push(key.into());
        self.map.insert(key.into(), n);
        n
    }

    /// The symbol of `s` if it was ever interned (0 otherwise).
    pub fn get(&self, s: &str) -> u32 {
        self.map
            .get(s.to_lowercase().as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Every (symbol, string).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str)> {
        self.strings
            .iter()
            .enumerate()
            .skip(1)
            .map(|(n, s)| (n as u32, &**s))
    }

    fn heap_bytes(&self) -> usize {
        // Each string lives twice (map key and vector) plus table overhead.
        self.bytes * 2 + self.strings.capacity() * 16 + self.map.capacity() * 28
    }
}

/// A sorted set of contact ids.
#[derive(Debug, Default, Clone)]
pub struct IdSet(pub Vec<u32>);

impl IdSet {
    /// Adds an id.
    pub fn insert(&mut self, id: u32) {
        match self.0.last() {
            Some(&l) if l < id => self.0.push(id),
            None => self.0.push(id),
            _ => {
                if let Err(at) = self.0.binary_search(&id) {
                    self.0.insert(at, id);
                }
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
#[derive(Debug, Default)]
pub struct Postings {
    /// Contact ids.
    pub ids: Vec<u32>,
    /// Days since 1970 (saturated to 0..=65535).
    pub days: Vec<u16>,
}

/// A day as stored in postings.
pub fn posting_day(day: i32) -> u16 {
    day.clamp(0, u16::MAX as i32) as u16
}

impl Postings {
    fn add(&mut self, id: u32, day: i32) {
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
#[derive(Debug)]
pub enum Column {
    /// Text (symbol; 0 none).
    Text(Vec<u32>),
    /// Choice (symbol; 0 none).
    Choice(Vec<u32>),
    /// Number (NaN none).
    Number(Vec<f64>),
    /// Date (day; [`NO_DAY`] none).
    Date(Vec<i32>),
    /// Boolean (0 none, 1 false, 2 true).
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

/// What one campaign's recipients did.
#[derive(Debug, Default)]
pub struct SendSets {
    /// Contacts it was sent to.
    pub sent: IdSet,
    /// Contacts who opened it.
    pub opened: IdSet,
    /// Contacts who clicked in it.
    pub clicked: IdSet,
}

/// The index's data, behind the index's lock.
#[derive(Debug, Default)]
pub struct Data {
    /// Rows by contact id (index 0 unused).
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
            let want = (i + 1).max(self.rows.len() * 5 / 4);
            self.rows.resize(want, Row::default());
        }
        &mut self.rows[i]
    }

    /// Applies one committed change.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Contact {
                contact,
                removed_lists,
                removed_tags,
            } => {
                self.put_contact(contact);
                let Some(id) = id32(contact.id) else { return };
                for l in removed_lists {
                    if let Some(s) = self.lists.get_mut(l) {
                        s.remove(id);
                    }
                }
                for t in removed_tags {
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
        row.site = site;
        row.language = language;
        row.email_domain = domain;
        row.created = day_of_ms(c.created_at.timestamp_millis());
        if new {
            self.contacts += 1;
        }
        for (name, v) in &c.fields {
            let col = self
                .fields
                .entry(name.clone())
                .or_insert_with(|| Column::for_value(v));
            if !col.fits(v) {
                *col = Column::for_value(v);
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

    /// Sets a contact's cart.
    pub fn put_cart(&mut self, contact: u64, before: Option<&Cart>, after: Option<&Cart>) {
        let Some(id) = id32(contact) else { return };
        let row = self.row_mut(id);
        row.cart_units = after.map_or(0, Cart::units);
        row.cart_value = after.map_or(0, Cart::value);
        row.cart_updated = after.map_or(NO_DAY, |c| day_of_ms(c.updated_at));
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
                .map(|s| (s.sent.0.capacity() + s.opened.0.capacity() + s.clicked.0.capacity()) * 4)
                .sum::<usize>()
    }

    /// Highest contact id with a row.
    pub fn max_id(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }
}
