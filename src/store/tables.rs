//! Every redb table Herald keeps, in one place.
//!
//! Table names carry a version suffix: a change to a table's key or value
//! layout creates a new name and a migration in `store::migrate`, so an old
//! file is never read with a new layout. Values are JSON documents of the
//! domain types (serde), which lets optional fields be added without a
//! migration; the shop records written for every event (orders, aggregates,
//! carts) are postcard instead, for speed: adding a field to those is a new
//! table version.

use redb::TableDefinition;

/// The schema this binary writes. Bump it together with a migration.
pub const SCHEMA_VERSION: u64 = 2;

/// The oldest schema this binary can upgrade from.
pub const OLDEST_UPGRADABLE: u64 = 1;

/// Unversioned: `schema_version`, id counters, per-state contact counts and the
/// installation salt. Its layout never changes.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Contact id → `Contact` (JSON).
pub const CONTACTS: TableDefinition<u64, &[u8]> = TableDefinition::new("contacts_v1");

/// Lower-cased e-mail → contact id. The identity index.
pub const CONTACT_BY_EMAIL: TableDefinition<&str, u64> =
    TableDefinition::new("contact_by_email_v1");

/// (consent state code, contact id) → (). For listing contacts by consent.
pub const CONTACT_BY_CONSENT: TableDefinition<(u8, u64), ()> =
    TableDefinition::new("contact_by_consent_v1");

/// (list id, contact id) → (). Static list membership.
pub const LIST_MEMBERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("list_members_v1");

/// (tag, contact id) → ().
pub const TAG_MEMBERS: TableDefinition<(&str, u64), ()> = TableDefinition::new("tag_members_v1");

/// (contact id, sequence) → `ConsentEvent` (JSON). Append-only until erasure.
pub const CONSENT_LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("consent_log_v1");

/// Field name → `FieldDef` (JSON).
pub const FIELDS: TableDefinition<&str, &[u8]> = TableDefinition::new("fields_v1");

/// List id → `List` (JSON).
pub const LISTS: TableDefinition<u64, &[u8]> = TableDefinition::new("lists_v1");

/// Lower-cased list name → list id.
pub const LIST_BY_NAME: TableDefinition<&str, u64> = TableDefinition::new("list_by_name_v1");

/// Salted SHA-256 of an erased address → `Suppression` (JSON).
pub const SUPPRESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("suppressions_v1");

/// Import id → `ImportRecord` (JSON).
pub const IMPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("imports_v1");

/// (import id, line) → rejection reason. Every rejected row of every import.
pub const IMPORT_REJECTS: TableDefinition<(u64, u64), &str> =
    TableDefinition::new("import_rejects_v1");

/// Queue id → `QueuedMessage` (JSON): messages with recipients still to deliver.
pub const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_v1");

/// Queue id → the message as it is sent (signed RFC 5322 bytes). Deleted when
/// the message is finished.
pub const QUEUE_BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_bodies_v1");

/// (due time in ms, queue id) → (): which queued messages are due when.
pub const QUEUE_DUE: TableDefinition<(i64, u64), ()> = TableDefinition::new("queue_due_v1");

/// Queue id → `QueuedMessage` (JSON) of finished messages: every recipient
/// delivered or failed. Kept for reports and for `GET /api/v1/queue/{id}`.
pub const QUEUE_DONE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_done_v1");

/// (salted SHA-256 of the lower-cased recipient address, queue id) → ():
/// every message, queued or finished, to an address. Written when a message
/// is queued; erasure finds a person's queue records through it (also those
/// queued without a contact id), and the GDPR export lists them.
pub const QUEUE_BY_ADDRESS: TableDefinition<(&[u8], u64), ()> =
    TableDefinition::new("queue_by_address_v1");

/// SKU → `Product` (JSON): the catalogue templates' product blocks read.
pub const PRODUCTS: TableDefinition<&str, &[u8]> = TableDefinition::new("products_v1");

/// (send key, link number) → `LinkRecord` (JSON): the links a send's messages
/// contained. A click token names a link number; the redirect goes only to
/// the URL recorded here.
pub const LINKS: TableDefinition<(&[u8], u32), &[u8]> = TableDefinition::new("links_v1");

/// (event type, event id) → the event's `at` (ms): every event of
/// `POST /api/v1/events` that was accepted, so that a re-sent one is
/// recognised as a duplicate.
pub const SHOP_EVENTS: TableDefinition<(&str, &str), i64> = TableDefinition::new("shop_events_v1");

/// The shop's order id → `Order` (postcard), the latest version of each order.
pub const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders_v1");

/// Contact id → `ShopStats` (postcard): the aggregates segments read.
pub const SHOP_STATS: TableDefinition<u64, &[u8]> = TableDefinition::new("shop_stats_v1");

/// Contact id → `Cart` (postcard): the current cart; an emptied cart is kept
/// without items (its time orders later events).
pub const CARTS: TableDefinition<u64, &[u8]> = TableDefinition::new("carts_v1");

/// (SKU, contact id) → `WaitEntry` (JSON): back-in-stock and pre-order
/// wait-lists.
pub const WAITLIST: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("waitlist_v1");

/// Segment name → `StoredSegment` (JSON): segments created through the API
/// (file segments live in `config/segments/`).
pub const SEGMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("segments_v1");

/// Campaign id → `Campaign` (JSON): spec, status and durable progress.
pub const CAMPAIGNS: TableDefinition<u64, &[u8]> = TableDefinition::new("campaigns_v1");

/// (campaign id, part number) → the part's recipients, contact ids in
/// ascending order, delta-varint encoded: the audience snapshot.
pub const CAMPAIGN_AUDIENCE: TableDefinition<(u64, u32), &[u8]> =
    TableDefinition::new("campaign_audience_v1");

/// (send kind code, send id, round, contact id): the key of a contact in a
/// send's round.
pub type RoundKey = (u8, u64, u32, u64);

/// (flags, last open ms, last click ms) of a contact in a send's round.
pub type Engagement = (u8, i64, i64);

/// (send kind, send id, round, contact id) → (slot, queue id): the send
/// ledger, every message a send queued (see `send::model::SendRef` for
/// rounds and slots). Written with the message; a present key means "sent".
pub const SEND_LEDGER: TableDefinition<RoundKey, (u32, u64)> =
    TableDefinition::new("send_ledger_v1");

/// (send kind, send id, round, contact id) → (flags: see `send::model`;
/// last open ms; last click ms).
pub const SEND_ENGAGEMENT: TableDefinition<RoundKey, Engagement> =
    TableDefinition::new("send_engagement_v1");

/// (send kind, send id, slot, counter code) → count.
pub const SEND_COUNTS: TableDefinition<(u8, u64, u32, u8), u64> =
    TableDefinition::new("send_counts_v1");

/// (send kind, send id, hour since the epoch, counter code) → count: the
/// hourly time series of a send's deliveries, opens, clicks, unsubscribes
/// and orders (every slot together).
pub const SEND_HOURLY: TableDefinition<(u8, u64, u32, u8), u64> =
    TableDefinition::new("send_hourly_v1");

/// (send kind, send id, slot, link number, counter code) → count: clicks,
/// unique clickers, machine clicks, orders and revenue per link.
pub const SEND_LINKS: TableDefinition<(u8, u64, u32, u32, u8), u64> =
    TableDefinition::new("send_links_v1");

/// (send kind, send id, slot, link number, contact id): who clicked a link
/// (by hand), for unique clicks per link.
pub const SEND_CLICKERS: TableDefinition<(u8, u64, u32, u32, u64), ()> =
    TableDefinition::new("send_clickers_v1");

/// (send kind, send id) → name: what a send is called where its id is a
/// hash (a transactional tag).
pub const SEND_NAMES: TableDefinition<(u8, u64), &str> = TableDefinition::new("send_names_v1");

/// (contact id, sequence) → `HistoryEvent` (JSON): what was sent to a
/// contact and everything they did, in order.
pub const HISTORY: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("contact_history_v1");

/// Contact id → (send kind code, send id, packed variant, link number, ms):
/// the contact's last click by hand, for attribution by time window.
pub const LAST_CLICK: TableDefinition<u64, (u8, u64, u32, u32, i64)> =
    TableDefinition::new("last_click_v1");

/// Order id → (send kind code, send id, packed variant, link number, how:
/// 1 parameter, 2 window): the click an order was attributed to.
pub const ORDER_ATTRIBUTION: TableDefinition<&str, (u8, u64, u32, u32, u8)> =
    TableDefinition::new("order_attribution_v1");

/// Sequence → an open or click (postcard `track::journal::Logged`), committed
/// before the hit is answered and applied to the counters, engagement and
/// history shortly after (then removed): the hit journal.
pub const HITS: TableDefinition<u64, &[u8]> = TableDefinition::new("hits_v1");

/// (contact id, request number) → `SignupRequest` (JSON): a signup waiting
/// for its confirmation click. The confirmation token names the key; the
/// click consumes the entry, so a link grants once and only for the signup
/// it was sent for.
pub const SIGNUP_REQUESTS: TableDefinition<(u64, u64), &[u8]> =
    TableDefinition::new("signup_requests_v1");

/// Tables of older schemas, read only by `store::migrate`.
pub mod legacy {
    use redb::TableDefinition;

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
