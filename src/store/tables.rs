//! Every redb table Herald keeps, in one place.
//!
//! Table names carry a version suffix: a change to a table's key or value
//! layout creates a new name and a migration in `store::migrate`, so an old
//! file is never read with a new layout. Values are JSON documents of the
//! domain types (serde), which lets optional fields be added without a
//! migration; the shop records written for every event (orders, aggregates,
//! carts) are postcard instead, for speed: adding a field to those is a new
//! table version.
//!
//! The list below, given to the `tables!` macro, is the only place a table
//! is named. From it come the `TableDefinition` constants, `create_all`
//! (every table created when the store is opened, so that a read
//! transaction can open any of them), `Tables` (the tables of a write
//! transaction, each a [`LazyTable`] opened the first time a job uses it:
//! `table.open()?` to write, `table.read()?` to read; `WriteTables` wraps
//! it), `ReadOnlyTables` (the tables of a read transaction, each opened the
//! first time a read needs it: `ReadView` wraps it) and [`TableSet`], one
//! method per table, which
//! both implement so that a getter is written once for both sides
//! (`store::ReadTables`). A new table is one more line in the list.
//! `legacy` (tables of older schemas, read only by `store::migrate`) is
//! outside it: those tables are neither created nor opened.

use std::cell::OnceCell;
use std::sync::OnceLock;

use redb::{
    Key, ReadOnlyTable, ReadTransaction, ReadableTable, Table, TableDefinition, TableError,
    TableHandle, Value, WriteTransaction,
};

/// The schema this binary writes. Bump it together with a migration.
pub const SCHEMA_VERSION: u64 = 7;

/// The oldest schema this binary can upgrade from.
pub const OLDEST_UPGRADABLE: u64 = 1;

/// (send kind code, send id, round, contact id): the key of a contact in a
/// send's round.
pub type RoundKey = (u8, u64, u32, u64);

/// (flags, last open ms, last click ms) of a contact in a send's round.
pub type Engagement = (u8, i64, i64);

/// Declares every table: its constant (with its doc), its field in
/// `Tables` and `ReadOnlyTables` and its method in `TableSet` (named like
/// the constant, in lower case), and its creation in `create_all`.
/// Each entry reads `CONSTANT, field: Key => Value = "name_vN";`.
macro_rules! tables {
    ($(
        $(#[$doc:meta])*
        $konst:ident, $field:ident: $k:ty => $v:ty = $name:literal;
    )*) => {
        $(
            $(#[$doc])*
            pub const $konst: TableDefinition<$k, $v> = TableDefinition::new($name);
        )*

        /// Opens every table in `txn`, creating those that do not exist yet.
        pub(super) fn create_all(txn: &WriteTransaction) -> Result<(), TableError> {
            $( txn.open_table($konst)?; )*
            Ok(())
        }

        /// Every table's entries and their key and value bytes, read
        /// through in `txn` (`herald store stats --scan`).
        pub(super) fn scan_all(txn: &ReadTransaction) -> Result<Vec<Scanned>, redb::StorageError> {
            Ok(vec![$( scan(txn, $konst, $name)?, )*])
        }

        /// Every table of one write transaction, each opened the first
        /// time the transaction uses it ([`LazyTable`]).
        pub(super) struct Tables<'t> {
            $(
                #[doc = concat!("`", $name, "` (see [`", stringify!($konst), "`]).")]
                pub(super) $field: LazyTable<'t, $k, $v>,
            )*
        }

        impl<'t> Tables<'t> {
            /// The tables of `txn`; none is opened yet.
            pub(super) fn new(txn: &'t WriteTransaction) -> Self {
                Tables {
                    $( $field: LazyTable::new(txn, $konst), )*
                }
            }
        }

        /// The tables of one read transaction, each opened the first time a
        /// read needs it and then kept for the transaction's other reads: a
        /// read view is made for every API read, which needs a few of the
        /// forty tables, not all of them.
        pub(super) struct ReadOnlyTables {
            $( $field: OnceLock<ReadOnlyTable<$k, $v>>, )*
            /// Declared last, so that it is dropped after the tables.
            txn: ReadTransaction,
        }

        impl ReadOnlyTables {
            /// Tables of `txn`; none is opened yet.
            pub(super) fn new(txn: ReadTransaction) -> Self {
                ReadOnlyTables {
                    $( $field: OnceLock::new(), )*
                    txn,
                }
            }
        }

        /// One method per table, for reading it: implemented by the tables of
        /// a write transaction (`Tables`, always open) and of a read
        /// transaction (`ReadOnlyTables`, opened on first use). Getters
        /// written over it (`store::ReadTables`) serve both sides.
        pub trait TableSet {
            $(
                #[doc = concat!("`", $name, "` (see [`", stringify!($konst), "`]).")]
                fn $field(&self) -> Result<&impl ReadableTable<$k, $v>, TableError>;
            )*
        }

        impl TableSet for Tables<'_> {
            $(
                fn $field(&self) -> Result<&impl ReadableTable<$k, $v>, TableError> {
                    self.$field.read()
                }
            )*
        }

        impl TableSet for ReadOnlyTables {
            $(
                fn $field(&self) -> Result<&impl ReadableTable<$k, $v>, TableError> {
                    opened(&self.$field, &self.txn, $konst)
                }
            )*
        }
    };
}

/// What reading a table through found: its name, entries, and the bytes
/// of their keys and values as stored.
pub(super) struct Scanned {
    pub name: &'static str,
    pub entries: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// Reads `def` through in `txn`, summing its key and value lengths (a
/// table that does not exist yet is empty).
fn scan<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
    name: &'static str,
) -> Result<Scanned, redb::StorageError> {
    let mut s = Scanned {
        name,
        entries: 0,
        key_bytes: 0,
        value_bytes: 0,
    };
    let table = match txn.open_table(def) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(s),
        Err(TableError::Storage(e)) => return Err(e),
        Err(e) => return Err(redb::StorageError::Corrupted(e.to_string())),
    };
    for entry in table.iter()? {
        let (k, v) = entry?;
        s.entries += 1;
        s.key_bytes += K::as_bytes(&k.value()).as_ref().len() as u64;
        s.value_bytes += V::as_bytes(&v.value()).as_ref().len() as u64;
    }
    Ok(s)
}

/// A table of a write transaction, opened the first time the transaction
/// uses it. A commit then opens, and flushes the root of, only the tables
/// its jobs touched: opening all seventy-odd for every commit took a tenth
/// of the store writer's time in a queue drain, whose commits touch five.
pub(super) struct LazyTable<'t, K: Key + 'static, V: Value + 'static> {
    txn: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'t, K, V>>,
}

impl<'t, K: Key + 'static, V: Value + 'static> LazyTable<'t, K, V> {
    fn new(txn: &'t WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            txn,
            def,
            table: OnceCell::new(),
        }
    }

    /// The table, to read.
    pub(super) fn read(&self) -> Result<&Table<'t, K, V>, TableError> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.txn.open_table(self.def)?;
        Ok(self.table.get_or_init(|| t))
    }

    /// The table, to write.
    pub(super) fn open(&mut self) -> Result<&mut Table<'t, K, V>, TableError> {
        if self.table.get().is_none() {
            let t = self.txn.open_table(self.def)?;
            // Empty, checked above: `set` cannot fail.
            let _ = self.table.set(t);
        }
        self.table
            .get_mut()
            .ok_or_else(|| TableError::TableDoesNotExist(self.def.name().to_string()))
    }
}

/// The table in `cell`, opened in `txn` if this is its first use.
fn opened<'a, K: Key + 'static, V: Value + 'static>(
    cell: &'a OnceLock<ReadOnlyTable<K, V>>,
    txn: &ReadTransaction,
    def: TableDefinition<K, V>,
) -> Result<&'a ReadOnlyTable<K, V>, TableError> {
    if let Some(t) = cell.get() {
        return Ok(t);
    }
    let t = txn.open_table(def)?;
    // Another thread sharing the view may have opened it meanwhile: then
    // its table is kept and this one dropped.
    Ok(cell.get_or_init(|| t))
}

tables! {
    /// Unversioned: `schema_version`, id counters, per-state contact counts and the
    /// installation salt. Its layout never changes.
    META, meta: &'static str => &'static [u8] = "meta";

    /// Contact id → the contact (postcard, see `store::contacts::StoredRef`;
    /// schema 5).
    CONTACTS, contacts: u64 => &'static [u8] = "contacts_v2";

    /// Lower-cased e-mail → contact id. The identity index.
    CONTACT_BY_EMAIL, contact_by_email: &'static str => u64 = "contact_by_email_v1";

    /// (consent state code, contact id) → (). For listing contacts by consent.
    CONTACT_BY_CONSENT, contact_by_consent: (u8, u64) => () = "contact_by_consent_v1";

    /// (E.164 phone number, contact id) → (): who has a number, for text
    /// replies (STOP) and phone lookups. Several contacts may share one.
    CONTACT_BY_PHONE, contact_by_phone: (&'static str, u64) => () = "contact_by_phone_v1";

    /// SMS id → `SmsRecord` (JSON): every text message queued, its state,
    /// attempts and the gateway's message id.
    SMS, sms: u64 => &'static [u8] = "sms_v1";

    /// (due time in ms, SMS id) → (): which text messages are due when.
    SMS_DUE, sms_due: (i64, u64) => () = "sms_due_v1";

    /// (contact id, SMS id) → (): a contact's text messages (erasure).
    SMS_BY_CONTACT, sms_by_contact: (u64, u64) => () = "sms_by_contact_v1";

    /// (gateway id, the gateway's message id) → SMS id: where a delivery
    /// report belongs.
    SMS_BY_GATEWAY_ID, sms_by_gateway_id: (&'static str, &'static str) => u64 = "sms_by_gateway_id_v1";

    /// (list id, contact id) → (). Static list membership.
    LIST_MEMBERS, list_members: (u64, u64) => () = "list_members_v1";

    /// (tag, contact id) → ().
    TAG_MEMBERS, tag_members: (&'static str, u64) => () = "tag_members_v1";

    /// (contact id, sequence) → `ConsentEvent` (postcard, `store::contacts`;
    /// schema 7). Append-only until erasure.
    CONSENT_LOG, consent_log: (u64, u64) => &'static [u8] = "consent_log_v2";

    /// Field name → `FieldDef` (JSON).
    FIELDS, fields: &'static str => &'static [u8] = "fields_v1";

    /// List id → `List` (JSON).
    LISTS, lists: u64 => &'static [u8] = "lists_v1";

    /// Lower-cased list name → list id.
    LIST_BY_NAME, list_by_name: &'static str => u64 = "list_by_name_v1";

    /// Salted SHA-256 of an address → `Suppression` (JSON): erased
    /// addresses (hash only), hard bounces, complaints, soft-bounce limits
    /// and manual entries (with the address).
    SUPPRESSIONS, suppressions: &'static [u8] => &'static [u8] = "suppressions_v1";

    /// Import id → `ImportRecord` (JSON).
    IMPORTS, imports: u64 => &'static [u8] = "imports_v1";

    /// (import id, line) → rejection reason. Every rejected row of every import.
    IMPORT_REJECTS, import_rejects: (u64, u64) => &'static str = "import_rejects_v1";

    /// Queue id → `QueuedMessage` (JSON): messages with recipients still to deliver.
    QUEUE, queue: u64 => &'static [u8] = "queue_v1";

    /// Queue id → the message as it is sent (signed RFC 5322 bytes). Deleted when
    /// the message is finished.
    QUEUE_BODIES, queue_bodies: u64 => &'static [u8] = "queue_bodies_v1";

    /// (due time in ms, queue id) → (): which queued messages are due when.
    QUEUE_DUE, queue_due: (i64, u64) => () = "queue_due_v1";

    /// Queue id → the record of a finished message (every recipient
    /// delivered or failed; postcard with terms, `store::queue_codec`).
    /// Kept for reports and for `GET /api/v1/queue/{id}`.
    QUEUE_DONE, queue_done: u64 => &'static [u8] = "queue_done_v2";

    /// (salted SHA-256 of the lower-cased recipient address, queue id) → ():
    /// every message, queued or finished, to an address. Written when a message
    /// is queued; erasure finds a person's queue records through it (also those
    /// queued without a contact id), and the GDPR export lists them.
    QUEUE_BY_ADDRESS, queue_by_address: (&'static [u8], u64) => () = "queue_by_address_v1";

    /// SKU → `Product` (JSON): the catalogue templates' product blocks read.
    PRODUCTS, products: &'static str => &'static [u8] = "products_v1";

    /// (send key, link number) → `LinkRecord` (JSON): the links a send's messages
    /// contained. A click token names a link number; the redirect goes only to
    /// the URL recorded here.
    LINKS, links: (&'static [u8], u32) => &'static [u8] = "links_v1";

    /// (a byte for the event type, the event id) → (): every event of
    /// `POST /api/v1/events` that was accepted, so that a re-sent one is
    /// recognised as a duplicate (`store::shop::event_key`; schema 6).
    SHOP_EVENTS, shop_events: &'static [u8] => () = "shop_events_v2";

    /// Order number (the store's, in the order orders arrived) → the latest
    /// version of the order (`shop_codec`: postcard with term numbers,
    /// schema 6).
    ORDERS, orders: u64 => &'static [u8] = "orders_v3";

    /// The shop's order id → the order's number, the key of `orders_v3`
    /// (schema 5).
    ORDER_NUMBERS, order_numbers: &'static str => u64 = "order_numbers_v1";

    /// Contact id → `ShopStats` (`shop_codec`: postcard with term numbers,
    /// schema 6): the aggregates segments read.
    SHOP_STATS, shop_stats: u64 => &'static [u8] = "shop_stats_v2";

    /// Term number → text: the dictionary of strings that repeat across
    /// orders and aggregates (SKUs, categories, item names, currencies,
    /// statuses, payment types; `store::terms`, schema 6).
    TERMS, terms: u32 => &'static str = "terms_v1";

    /// Text → term number (the other way of `terms_v1`).
    TERM_IDS, term_ids: &'static str => u32 = "term_ids_v1";

    /// Contact id → `Cart` (postcard): the current cart; an emptied cart is kept
    /// without items (its time orders later events).
    CARTS, carts: u64 => &'static [u8] = "carts_v1";

    /// (SKU, contact id) → `WaitEntry` (JSON): back-in-stock and pre-order
    /// wait-lists.
    WAITLIST, waitlist: (&'static str, u64) => &'static [u8] = "waitlist_v1";

    /// Segment name → `StoredSegment` (JSON): segments created through the API
    /// (file segments live in `config/segments/`).
    SEGMENTS, segments: &'static str => &'static [u8] = "segments_v1";

    /// Coupon pool name → `coupons::PoolInfo` (JSON): the pool's low-water
    /// mark and its counts (added, given), changed in the transaction that
    /// changes its codes.
    COUPON_POOLS, coupon_pools: &'static str => &'static [u8] = "coupon_pools_v1";

    /// (pool, code) → `coupons::CodeState` (JSON): every code of a pool, free
    /// or handed out (then with its owner and time). A code is in a pool once.
    COUPON_CODES, coupon_codes: (&'static str, &'static str) => &'static [u8] = "coupon_codes_v1";

    /// (pool, upload sequence) → code: the pool's free codes in upload order;
    /// `take_coupon` hands out the first and removes it.
    COUPON_FREE, coupon_free: (&'static str, u64) => &'static str = "coupon_free_v1";

    /// (pool, owner) → code: the code handed to an owner (a campaign's
    /// message to a contact), so rendering the same message again after a
    /// restart finds the same code (`coupon_for`).
    COUPON_OWNERS, coupon_owners: (&'static str, &'static str) => &'static str = "coupon_owners_v1";

    /// Campaign id → `Campaign` (JSON): spec, status and durable progress.
    CAMPAIGNS, campaigns: u64 => &'static [u8] = "campaigns_v1";

    /// (campaign id, part number) → the part's recipients, contact ids in
    /// ascending order, delta-varint encoded: the audience snapshot.
    CAMPAIGN_AUDIENCE, campaign_audience: (u64, u32) => &'static [u8] = "campaign_audience_v1";

    /// (send kind, send id, round, contact id) → (slot, queue id): the send
    /// ledger, every message a send queued (see `send::model::SendRef` for
    /// rounds and slots). Written with the message; a present key means "sent".
    SEND_LEDGER, send_ledger: RoundKey => (u32, u64) = "send_ledger_v1";

    /// (send kind, send id, round, contact id) → (flags: see `send::model`;
    /// last open ms; last click ms).
    SEND_ENGAGEMENT, send_engagement: RoundKey => Engagement = "send_engagement_v1";

    /// (send kind, send id, slot, counter code) → count.
    SEND_COUNTS, send_counts: (u8, u64, u32, u8) => u64 = "send_counts_v1";

    /// (send kind, send id, hour since the epoch, counter code) → count: the
    /// hourly time series of a send's deliveries, opens, clicks, unsubscribes
    /// and orders (every slot together).
    SEND_HOURLY, send_hourly: (u8, u64, u32, u8) => u64 = "send_hourly_v1";

    /// (send kind, send id, slot, link number, counter code) → count: clicks,
    /// unique clickers, machine clicks, orders and revenue per link.
    SEND_LINKS, send_links: (u8, u64, u32, u32, u8) => u64 = "send_links_v1";

    /// (send kind, send id, slot, currency) → (orders, revenue in
    /// hundredths): attributed orders in the currency the shop sent them in
    /// (`Orders` and `Revenue` of `send_counts_v1` are their sums over
    /// currencies). Schema 3 (filled from the stored orders by the
    /// migration).
    SEND_MONEY, send_money: (u8, u64, u32, &'static str) => (u64, u64) = "send_money_v1";

    /// (send kind, send id, slot, link number, contact id): who clicked a link
    /// (by hand), for unique clicks per link.
    SEND_CLICKERS, send_clickers: (u8, u64, u32, u32, u64) => () = "send_clickers_v1";

    /// (send kind, send id) → name: what a send is called where its id is a
    /// hash (a transactional tag).
    SEND_NAMES, send_names: (u8, u64) => &'static str = "send_names_v1";

    /// (contact id, sequence) → `HistoryEvent` (postcard, see
    /// `store::track::StoredRef`; schema 5): what was sent to a contact and
    /// everything they did, in order.
    HISTORY, history: (u64, u64) => &'static [u8] = "contact_history_v2";

    /// Contact id → (send kind code, send id, packed variant, link number, ms):
    /// the contact's last click by hand, for attribution by time window.
    LAST_CLICK, last_click: u64 => (u8, u64, u32, u32, i64) = "last_click_v1";

    /// Order id → (send kind code, send id, packed variant, link number, how:
    /// 1 parameter, 2 window): the click an order was attributed to.
    ORDER_ATTRIBUTION, order_attribution: &'static str => (u8, u64, u32, u32, u8) = "order_attribution_v1";

    /// Sequence → an open or click (postcard `track::journal::Logged`), committed
    /// before the hit is answered and applied to the counters, engagement and
    /// history shortly after (then removed): the hit journal.
    HITS, hits: u64 => &'static [u8] = "hits_v1";

    /// (contact id, request number) → `SignupRequest` (JSON): a signup waiting
    /// for its confirmation click. The confirmation token names the key; the
    /// click consumes the entry, so a link grants once and only for the signup
    /// it was sent for.
    SIGNUP_REQUESTS, signup_requests: (u64, u64) => &'static [u8] = "signup_requests_v1";

    /// (flow id, contact id, occurrence) → an automation run: JSON of a
    /// type the store does not know (the automation's), kept after the run
    /// ends, so an occurrence is entered at most once.
    AUTO_RUNS, auto_runs: (u64, u64, u64) => &'static [u8] = "auto_runs_v1";

    /// (due ms, flow id, contact id, occurrence) → (): every pending run by
    /// the time its next step is due; the automation runner reads its front.
    AUTO_DUE, auto_due: (i64, u64, u64, u64) => () = "auto_due_v1";

    /// (flow id, step, due ms, contact id, occurrence) → (): the same
    /// pending runs by flow and step (status: pending per step, next due).
    AUTO_FLOW_DUE, auto_flow_due: (u64, u32, i64, u64, u64) => () = "auto_flow_due_v1";

    /// (contact id, flow id, occurrence) → (step, due ms) where the run
    /// waits (`u32::MAX`: it does not): a contact's runs (to leave every
    /// flow on withdrawal, to erase), and the truth the timer indexes follow.
    AUTO_BY_CONTACT, auto_by_contact: (u64, u64, u64) => (u32, i64) = "auto_by_contact_v1";

    /// (flow id, contact id) → ms of the contact's last entry into the flow
    /// (re-entry rules).
    AUTO_ENTRIES, auto_entries: (u64, u64) => i64 = "auto_entries_v1";

    /// (flow id, step, counter name) → count: entered, queued, held,
    /// skipped, exited, missed… per step (step `u32::MAX`: the flow).
    AUTO_COUNTS, auto_counts: (u64, u32, &'static str) => u64 = "auto_counts_v1";

    /// flow name → JSON of a type the store does not know: a flow created
    /// through the API (its definition), or a file flow's pause state.
    AUTO_FLOWS, auto_flows: &'static str => &'static [u8] = "auto_flows_v1";

    /// (flow id, contact id) → (): members of a `segment_entered` flow's
    /// segment at its last check (entries are the difference).
    AUTO_MEMBERS, auto_members: (u64, u64) => () = "auto_members_v1";

    /// (contact id, ms) → marketing messages queued for the contact at that
    /// time, for the frequency cap (every kind of send; pruned past the
    /// window).
    SEND_RECENT, send_recent: (u64, i64) => u32 = "send_recent_v1";

    /// user name → `users::User` (JSON): the admin UI's people, their role
    /// and argon2 password hash.
    USERS, users: &'static str => &'static [u8] = "users_v1";

    /// SHA-256 (hex) of a session token → `users::Session` (JSON): logged-in
    /// admin UI sessions (the token itself is only in the browser's cookie).
    SESSIONS, sessions: &'static str => &'static [u8] = "sessions_v1";

    /// Sequence → `users::Activity` (JSON): every change made through the
    /// admin UI or the API (who, what, when, on which object), oldest first.
    ACTIVITY, activity: u64 => &'static [u8] = "activity_v1";

    /// (object, sequence) → (): the activity log by object
    /// (`campaign:3`, `automation:welcome`, `user:ana`).
    ACTIVITY_BY_OBJECT, activity_by_object: (&'static str, u64) => () = "activity_by_object_v1";

    /// object (`campaign:3`, `automation:welcome`) → user name: the owner of
    /// a campaign or an automation (who created it, or who it was given to).
    OWNERS, owners: &'static str => &'static str = "owners_v1";

    /// Inbound report id → `inbound::InboundRecord` (JSON): every bounce,
    /// complaint, auto-reply or delay notice taken (listener or API), with
    /// what it was found to say and what it did.
    INBOUND, inbound: u64 => &'static [u8] = "inbound_v1";

    /// Inbound report id → the message as received (at most
    /// `inbound::RAW_KEPT` bytes of it).
    INBOUND_RAW, inbound_raw: u64 => &'static [u8] = "inbound_raw_v1";

    /// (contact id, inbound report id) → (): the reports about a contact,
    /// so that erasing the contact scrubs them.
    INBOUND_BY_CONTACT, inbound_by_contact: (u64, u64) => () = "inbound_by_contact_v1";

    /// Contact id → (soft bounces in the streak, first ms, last ms): the
    /// soft bounces since the last sign of a delivery, for
    /// `[inbound] soft_bounce_limit`.
    SOFT_BOUNCES, soft_bounces: u64 => (u32, i64, i64) = "soft_bounces_v1";

    /// (sender id, scope: "" for all mail or a provider group, warm-up
    /// period) → recipients sent: what a warming-up sender has used of its
    /// allowance (`[sender.warmup]`), kept across restarts.
    WARMUP, warmup: (&'static str, &'static str, u64) => u64 = "warmup_v1";

    /// Lower-cased destination domain → `delivery::mta_sts::Cached` (JSON):
    /// the last valid MTA-STS policy fetched for the domain, with its id and
    /// when it was fetched (a cache: losing it only means fetching again).
    MTA_STS, mta_sts: &'static str => &'static [u8] = "mta_sts_v1";
}

/// Tables of older schemas, read only by `store::migrate`.
pub mod legacy {
    use redb::TableDefinition;

    /// v1–v6: (contact id, sequence) → `ConsentEvent` (JSON).
    pub const CONSENT_LOG_V1: TableDefinition<(u64, u64), &[u8]> =
        TableDefinition::new("consent_log_v1");
    /// v1–v6: queue id → a finished `QueuedMessage` (JSON).
    pub const QUEUE_DONE_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_done_v1");
    /// v1–v5: (event type, event id) → the event's `at` (ms).
    pub const SHOP_EVENTS_V1: TableDefinition<(&str, &str), i64> =
        TableDefinition::new("shop_events_v1");
    /// v5: order number → `Order` (postcard).
    pub const ORDERS_V2: TableDefinition<u64, &[u8]> = TableDefinition::new("orders_v2");
    /// v1–v5: contact id → `ShopStats` (postcard).
    pub const SHOP_STATS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("shop_stats_v1");
    /// v1–v4: the shop's order id → `Order` (postcard).
    pub const ORDERS_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("orders_v1");
    /// v1–v4: (contact id, sequence) → `HistoryEvent` (JSON).
    pub const HISTORY_V1: TableDefinition<(u64, u64), &[u8]> =
        TableDefinition::new("contact_history_v1");
    /// v1–v4: contact id → `Contact` (JSON).
    pub const CONTACTS_V1: TableDefinition<u64, &[u8]> = TableDefinition::new("contacts_v1");
    /// v1: (campaign id, stage, contact id) → (variant, queue id).
    pub const CAMPAIGN_SENDS: TableDefinition<(u64, u32, u64), (u32, u64)> =
        TableDefinition::new("campaign_sends_v1");
    /// v1: (campaign id, stage, contact id) → (flags, last open, last click).
    pub const CAMPAIGN_ENGAGEMENT: TableDefinition<(u64, u32, u64), (u8, i64, i64)> =
        TableDefinition::new("campaign_engagement_v1");
    /// v1: (campaign id, slot, counter code) → count.
    pub const CAMPAIGN_COUNTS: TableDefinition<(u64, u32, u8), u64> =
        TableDefinition::new("campaign_counts_v1");
    /// v1: (campaign id, hour, counter code) → count.
    pub const CAMPAIGN_HOURLY: TableDefinition<(u64, u32, u8), u64> =
        TableDefinition::new("campaign_hourly_v1");
    /// v1: (campaign id, slot, link, counter code) → count.
    pub const CAMPAIGN_LINKS: TableDefinition<(u64, u32, u32, u8), u64> =
        TableDefinition::new("campaign_links_v1");
    /// v1: (campaign id, slot, link, contact id) → ().
    pub const LINK_CLICKERS: TableDefinition<(u64, u32, u32, u64), ()> =
        TableDefinition::new("link_clickers_v1");
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;

    /// A write transaction opens a table when a job first uses it, read or
    /// written, and then keeps it: what was written is read back through
    /// either side, and a table nobody touched stays unopened.
    #[test]
    fn a_write_transaction_opens_each_table_once_when_first_used()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = redb::Database::create(dir.path().join("t.redb"))?;
        let txn = db.begin_write()?;
        create_all(&txn)?;
        {
            let mut t = Tables::new(&txn);
            assert!(t.meta.table.get().is_none());
            assert!(t.meta.read()?.is_empty()?);
            t.meta.open()?.insert("k", b"v".as_slice())?;
            let read_back = t.meta()?.get("k")?.map(|v| v.value().to_vec());
            assert_eq!(read_back, Some(b"v".to_vec()));
            assert!(
                t.queue.table.get().is_none(),
                "an untouched table was opened"
            );
        }
        txn.commit()?;
        let r = db.begin_read()?;
        assert_eq!(r.open_table(META)?.len()?, 1);
        Ok(())
    }
}
