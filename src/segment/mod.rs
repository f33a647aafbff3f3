//! Segments: saved, named filters over contacts and their shop data,
//! evaluated when used so they always follow the data.
//!
//! - [`lang`]: the condition language (TOML files in `config/segments/`, the
//!   same structure as JSON through `/api/v1/segments`), parsed with every
//!   problem located.
//! - [`index`]: the in-memory, column-wise copy of what segments read, kept in
//!   step with the store by its change notifications.
//! - [`eval`]: compiling a condition against the index and testing every
//!   contact in parallel.
//!
//! Architecture invariant: evaluation never reads redb; it reads the index
//! under a read lock, on rayon threads, never on the async runtime.
//!
//! Errors outside [`lang`]'s located problems are messages (`String`):
//! [`check_name`] is answered 422 `invalid_name` or filed as a file problem,
//! [`Index::evaluate`] (an index that could not be built, or a condition
//! that does not compile: [`eval::compile`], [`lang::parse_day`]) 422
//! `invalid_segment` or a campaign's "audience cannot be resolved", and
//! [`find_usable`] a campaign's spec problem; no caller tells them apart.

pub mod eval;
pub mod index;
pub mod lang;
pub mod persist;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::contacts::model::{ConsentState, FieldDef, FieldType};
use crate::shop::apply::SHOP_FIELDS;
use crate::store::{Change, ReadTables as _, Store, StoreError};
use eval::Bitset;
use lang::{Cond, Node, NodeV, Problem};

/// The type of a field as conditions see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A number (`order_count`, a number field).
    Number,
    /// A date (`last_order`, a date field).
    Date,
    /// Text (compared case-insensitively).
    Text,
    /// One of a closed set of values.
    Choice(Vec<String>),
    /// true / false.
    Bool,
    /// A set of values (`tags`, `payment_types`), tested with `contains`.
    Set,
}

impl Kind {
    /// The type's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Number => "number",
            Kind::Date => "date",
            Kind::Text => "text",
            Kind::Choice(_) => "choice",
            Kind::Bool => "boolean",
            Kind::Set => "set",
        }
    }

    /// The kind of a custom field.
    pub fn of_field(def: &FieldDef) -> Kind {
        match def.field_type {
            FieldType::Text => Kind::Text,
            FieldType::Number => Kind::Number,
            FieldType::Date => Kind::Date,
            FieldType::Boolean => Kind::Bool,
            FieldType::Choice => Kind::Choice(def.choices.clone()),
        }
    }
}

/// Built-in attributes and aggregates conditions can name with `field`,
/// with what they mean ([`builtin_kind`] gives their types). The table is
/// in [`crate::names`], where custom field names are checked against it.
pub use crate::names::SEGMENT_BUILTINS as BUILTINS;

/// The type of a built-in or shop field name, or `None` for a name only the
/// store's field definitions can resolve. `sites`: the configured site ids.
pub fn builtin_kind(name: &str, sites: &[String]) -> Option<Kind> {
    Some(match name {
        "consent" => Kind::Choice(
            ConsentState::ALL
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
        ),
        "site" if !sites.is_empty() => Kind::Choice(sites.to_vec()),
        "site" | "language" | "email_domain" => Kind::Text,
        "order_count" | "order_sum" | "average_order" | "logins" | "cart_items" | "cart_value" => {
            Kind::Number
        }
        "created_at" | "first_order" | "last_order" | "last_login" | "cart_updated"
        | "last_open" | "last_click" => Kind::Date,
        "payment_types" | "tags" => Kind::Set,
        _ => {
            let (_, _, ty, choices) = SHOP_FIELDS.iter().find(|f| f.1 == name)?;
            match ty {
                FieldType::Text => Kind::Text,
                FieldType::Number => Kind::Number,
                FieldType::Date => Kind::Date,
                FieldType::Boolean => Kind::Bool,
                FieldType::Choice => Kind::Choice(choices.iter().map(|c| c.to_string()).collect()),
            }
        }
    })
}

/// Names the store resolves: custom fields and lists.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Field name → type.
    pub fields: HashMap<String, Kind>,
    /// Lower-cased list name → id.
    pub lists: HashMap<String, u64>,
    /// Configured site ids.
    pub sites: Vec<String>,
}

impl Catalog {
    /// Reads field definitions and lists from the store.
    pub async fn load(store: &Store, sites: Vec<String>) -> Result<Catalog, StoreError> {
        let (fields, lists) = store.read(|r| Ok((r.fields()?, r.lists()?))).await?;
        Ok(Catalog {
            fields: fields
                .iter()
                .map(|f| (f.name.clone(), Kind::of_field(f)))
                .collect(),
            lists: lists
                .into_iter()
                .map(|l| (l.name.to_lowercase(), l.id))
                .collect(),
            sites,
        })
    }

    /// Problems with the names a condition uses that this catalog does not
    /// resolve (unknown lists and fields, values of the wrong type).
    pub fn check(&self, cond: &Cond) -> Vec<Problem> {
        let mut out = Vec::new();
        self.check_into(cond, &mut out);
        out
    }

    fn check_into(&self, cond: &Cond, out: &mut Vec<Problem>) {
        match cond {
            Cond::All(v) | Cond::Any(v) => v.iter().for_each(|c| self.check_into(c, out)),
            Cond::Not(c) => self.check_into(c, out),
            Cond::InList(names, loc) => {
                for n in names {
                    self.check_list(n, loc, out);
                }
            }
            Cond::Field { name, loc, .. } => {
                let kind =
                    builtin_kind(name, &self.sites).or_else(|| self.fields.get(name).cloned());
                match kind {
                    None => out.push(unknown_field(name, loc)),
                    Some(k) => {
                        if let Err(p) = lang::check_field(cond, &k) {
                            out.push(p);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn check_list(&self, name: &str, loc: &lang::Loc, out: &mut Vec<Problem>) {
        if !self.lists.contains_key(&name.to_lowercase()) {
            out.push(Problem {
                loc: loc.clone(),
                message: format!("unknown list `{name}`"),
            });
        }
    }

    /// [`Catalog::check`] for a document that did not parse as a whole
    /// (`root` as [`parse_document`] gets it): each part that parses on its
    /// own is checked as a condition, and in the others the `in_list` and
    /// `field` names are looked up, so that unknown lists and fields are
    /// reported together with the document's other problems instead of
    /// once those are fixed. Reports nothing that parsing reports.
    pub fn check_tree(&self, root: &Node) -> Vec<Problem> {
        let mut out = Vec::new();
        if let NodeV::Table(entries) = &root.v {
            let cond = Node {
                loc: root.loc.clone(),
                v: NodeV::Table(
                    entries
                        .iter()
                        .filter(|(k, _)| k != "description")
                        .cloned()
                        .collect(),
                ),
            };
            self.check_tree_into(&cond, &mut out);
        }
        out
    }

    fn check_tree_into(&self, node: &Node, out: &mut Vec<Problem>) {
        match &node.v {
            NodeV::Array(items) => items.iter().for_each(|i| self.check_tree_into(i, out)),
            NodeV::Table(entries) => {
                let kinds = |n: &str| builtin_kind(n, &self.sites);
                if let Some(cond) = lang::parse_cond(node, &kinds, &mut Vec::new()) {
                    self.check_into(&cond, out);
                    return;
                }
                for (k, v) in entries {
                    match (k.as_str(), &v.v) {
                        ("all" | "any" | "not", _) => self.check_tree_into(v, out),
                        ("in_list", NodeV::Str(n)) if !n.trim().is_empty() => {
                            self.check_list(n.trim(), &v.loc, out)
                        }
                        ("in_list", NodeV::Array(a)) => {
                            for x in a {
                                if let NodeV::Str(n) = &x.v
                                    && !n.trim().is_empty()
                                {
                                    self.check_list(n.trim(), &v.loc, out);
                                }
                            }
                        }
                        ("field", NodeV::Str(name))
                            if builtin_kind(name, &self.sites).is_none()
                                && !self.fields.contains_key(name) =>
                        {
                            out.push(unknown_field(name, &v.loc))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn unknown_field(name: &str, loc: &lang::Loc) -> Problem {
    Problem {
        loc: loc.clone(),
        message: format!(
            "unknown field `{name}`: not built-in and not defined (see GET /api/v1/fields)"
        ),
    }
}

/// A parsed segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Name (the file stem, or the API name).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The condition.
    pub cond: Cond,
    /// Where it came from: a file path or `api`.
    pub source: String,
}

/// A segment created through the API, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSegment {
    /// Name.
    pub name: String,
    /// The definition as JSON (the same structure as a segment file).
    pub definition: serde_json::Value,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last replaced.
    pub updated_at: DateTime<Utc>,
}

/// Checks a segment name: 1-64 of `a-z 0-9 _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "segment name `{name}` must be 1-64 characters of a-z, 0-9, `_` and `-`"
        ));
    }
    Ok(())
}

/// Parses a segment document (the root node of a file or an API body).
pub fn parse_document(
    name: &str,
    source: &str,
    root: &Node,
    sites: &[String],
) -> Result<Segment, Vec<Problem>> {
    let NodeV::Table(entries) = &root.v else {
        return Err(vec![Problem {
            loc: root.loc.clone(),
            message: "a segment must be a table of keys".into(),
        }]);
    };
    let mut problems = Vec::new();
    let mut description = None;
    let mut rest = Vec::new();
    for (k, v) in entries {
        if k == "description" {
            match &v.v {
                NodeV::Str(s) => description = Some(s.clone()),
                _ => problems.push(Problem {
                    loc: v.loc.clone(),
                    message: "`description` must be a string".into(),
                }),
            }
        } else {
            rest.push((k.clone(), v.clone()));
        }
    }
    let cond_node = Node {
        loc: root.loc.clone(),
        v: NodeV::Table(rest),
    };
    let kinds = |n: &str| builtin_kind(n, sites);
    let cond = lang::parse_cond(&cond_node, &kinds, &mut problems);
    match cond {
        Some(cond) if problems.is_empty() => Ok(Segment {
            name: name.to_string(),
            description,
            cond,
            source: source.to_string(),
        }),
        _ => Err(problems),
    }
}

/// The segment files of a config snapshot.
#[derive(Debug, Clone, Default)]
pub struct SegmentFiles {
    /// The directory.
    pub dir: PathBuf,
    /// Segments that parsed, by name.
    pub loaded: BTreeMap<String, Arc<Segment>>,
    /// Segments with problems: name → every problem.
    pub failed: BTreeMap<String, Vec<ConfigError>>,
    /// The documents of failed segments that are valid TOML (file, root),
    /// for [`SegmentFiles::check_catalog`] to check their names too.
    broken: BTreeMap<String, (PathBuf, Node)>,
}

impl SegmentFiles {
    /// Reads every `*.toml` in `dir`.
    pub fn load(dir: &Path, sites: &[String]) -> SegmentFiles {
        let mut out = SegmentFiles {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        for f in crate::config::toml_files(dir) {
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let err = |loc: Option<(usize, usize)>, key: String, message: String| ConfigError {
                file: f.clone(),
                position: loc,
                key,
                message,
            };
            if let Err(m) = check_name(&name) {
                out.failed.insert(name, vec![err(None, String::new(), m)]);
                continue;
            }
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    out.failed.insert(
                        name,
                        vec![err(None, String::new(), format!("cannot read: {e}"))],
                    );
                    continue;
                }
            };
            let parsed = lang::from_toml(&text).and_then(|root| {
                parse_document(&name, &f.display().to_string(), &root, sites).inspect_err(|_| {
                    out.broken.insert(name.clone(), (f.clone(), root.clone()));
                })
            });
            match parsed {
                Ok(s) => {
                    out.loaded.insert(name, Arc::new(s));
                }
                Err(problems) => {
                    out.failed.insert(
                        name,
                        problems
                            .into_iter()
                            .map(|p| err(p.loc.position, p.loc.path, p.message))
                            .collect(),
                    );
                }
            }
        }
        out
    }

    /// Problems of the segments against a catalog (unknown lists and
    /// fields), as config errors: of the loaded ones, and of the failed
    /// ones too, with their other problems.
    pub fn check_catalog(&self, catalog: &Catalog) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let problems = self
            .loaded
            .values()
            .map(|s| (PathBuf::from(&s.source), catalog.check(&s.cond)))
            .chain(
                self.broken
                    .values()
                    .map(|(file, root)| (file.clone(), catalog.check_tree(root))),
            );
        for (file, found) in problems {
            for p in found {
                out.push(ConfigError {
                    file: file.clone(),
                    position: p.loc.position,
                    key: p.loc.path,
                    message: p.message,
                });
            }
        }
        out
    }
}

type Pending = Arc<std::sync::Mutex<Option<Vec<Change>>>>;

/// Fault injection for tests: `HERALD_FAULT_INDEX_BUILD_DELAY_MS` holds
/// the startup build back that long, so that a test can show that nothing
/// but segments waits for it.
fn build_delay_fault() {
    if let Some(ms) = std::env::var("HERALD_FAULT_INDEX_BUILD_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tracing::warn!(ms, "fault injection: holding the segment index build back");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Where the index's data came from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The file saved when the daemon last stopped.
    Saved,
    /// Built from the store.
    Store,
}

/// The index's data at start, and the stamp of the store it is for (the
/// commit number left out: [`Index::save`] puts the last one in).
///
/// `saved` is the file the last clean stop wrote and the store's commit
/// number when the index subscribed to its changes: if the file was saved
/// at exactly that state, it is the data, and every change queued since the
/// subscription is still to apply. Otherwise the data is built from a
/// snapshot the store writer takes between two transactions; the changes
/// queued before that moment are dropped (the snapshot holds them).
fn load(
    store: &Store,
    pending: &Pending,
    saved: Option<(&Path, u64)>,
) -> Result<(index::Data, Source, persist::Stamp), StoreError> {
    if let Some((path, commit)) = saved {
        let stamp = store.read_blocking(|r| {
            Ok(persist::Stamp {
                store: persist::store_id(&r.salt()?),
                schema: r.schema_version()?,
                commit,
            })
        })?;
        match persist::read(path, &stamp) {
            Ok(data) => return Ok((data, Source::Saved, stamp)),
            Err(persist::PersistError::Missing) => {}
            Err(e) => {
                tracing::warn!(reason = %e, "saved segment index not used; building it from the store")
            }
        }
    }
    let boundary = pending.clone();
    let r = store.snapshot_blocking(move || {
        if let Ok(mut p) = boundary.lock()
            && let Some(q) = p.as_mut()
        {
            q.clear();
        }
    })?;
    let stamp = persist::Stamp {
        store: persist::store_id(&r.salt()?),
        schema: r.schema_version()?,
        commit: r.commit_seq()?,
    };
    Ok((from_store(&r)?, Source::Store, stamp))
}

/// Builds the index's data from a snapshot of the store.
fn from_store(r: &crate::store::ReadView) -> Result<index::Data, StoreError> {
    let mut data = index::Data::default();
    r.each_contact(|chunk| {
        chunk.iter().for_each(|c| data.put_contact(c));
        Ok(())
    })?;
    r.each_stats(|chunk| {
        chunk.iter().for_each(|(id, s)| data.load_stats(*id, s));
        Ok(())
    })?;
    r.each_cart(|id, c| {
        if !c.items.is_empty() {
            data.put_cart(id, None, Some(&c));
        }
        Ok(())
    })?;
    let mut engaged = Vec::new();
    // Segments name campaigns by number ("opened campaign 3").
    r.each_send_event(
        crate::send::SendKind::Campaign,
        |campaign, contact| data.record_sent(campaign, contact),
        |campaign, contact, flags, open_at, click_at| {
            engaged.push((campaign, contact, flags, open_at, click_at))
        },
    )?;
    for (campaign, contact, flags, open_at, click_at) in engaged {
        use crate::shop::model::day_of_ms;
        if flags & crate::send::model::OPENED != 0 {
            data.record_open(campaign, contact, day_of_ms(open_at));
        }
        if flags & crate::send::model::CLICKED != 0 {
            data.record_click(campaign, contact, day_of_ms(click_at));
        }
    }
    Ok(data)
}

/// The live index: data behind a lock, and whether the startup build is done.
pub struct Index {
    data: RwLock<index::Data>,
    /// Where the index is saved when the daemon stops (unset: not saved).
    file: std::sync::OnceLock<PathBuf>,
    /// The stamp of the store the index was built for, less the commit
    /// number (set by the startup build).
    stamp: std::sync::OnceLock<persist::Stamp>,
    ready: tokio::sync::watch::Sender<bool>,
    /// How long the startup build took.
    pub build_time: RwLock<Option<Duration>>,
    /// Why the startup build failed, if it did.
    failed: RwLock<Option<String>>,
    /// Changes applied since the start.
    applied: std::sync::atomic::AtomicU64,
    /// [`Index::tidy`]'s marks: `applied` at its last call and at its
    /// last trim.
    tidy_marks: std::sync::Mutex<(u64, u64)>,
}

/// How often the daemon calls [`Index::tidy`].
pub const TIDY_EVERY: Duration = Duration::from_secs(10);

/// Changes after which an index that has gone quiet is trimmed.
const TIDY_AFTER: u64 = 100_000;

/// Whether [`Index::tidy`] trims: no change since its last call (`seen`),
/// and at least [`TIDY_AFTER`] since the last trim.
fn should_tidy(applied: u64, seen: u64, trimmed: u64) -> bool {
    applied == seen && applied.saturating_sub(trimmed) >= TIDY_AFTER
}

/// What evaluating a segment gave.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Matching contacts.
    pub members: Bitset,
    /// How many match.
    pub count: u64,
    /// How many of them are `granted`.
    pub granted: u64,
    /// Evaluation time.
    pub took: Duration,
}

impl Index {
    /// An empty index, not ready.
    pub fn new() -> Arc<Index> {
        Arc::new(Index {
            data: RwLock::new(index::Data::default()),
            file: std::sync::OnceLock::new(),
            stamp: std::sync::OnceLock::new(),
            ready: tokio::sync::watch::channel(false).0,
            build_time: RwLock::new(None),
            failed: RwLock::new(None),
            applied: Default::default(),
            tidy_marks: Default::default(),
        })
    }

    /// Gives back the spare room the index's vectors took while changes
    /// flowed in (each grows by an eighth when full), once they have
    /// stopped for a whole [`TIDY_EVERY`] after at least [`TIDY_AFTER`] of
    /// them: after a bulk ingest the index is as small as one built from
    /// the store. Segment requests wait for the trim (a copy of the
    /// index, about a second at 10M contacts). Returns the bytes before
    /// and after, when it trimmed. Blocking: call it off the runtime.
    pub fn tidy(&self) -> Option<(usize, usize)> {
        use std::sync::atomic::Ordering;
        let applied = self.applied.load(Ordering::Relaxed);
        let mut marks = self.tidy_marks.lock().ok()?;
        let (seen, trimmed) = *marks;
        marks.0 = applied;
        if !should_tidy(applied, seen, trimmed) {
            return None;
        }
        marks.1 = applied;
        let started = Instant::now();
        let mut d = self.data.write().ok()?;
        let before = d.heap_bytes();
        d.shrink();
        let after = d.heap_bytes();
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            before_mb = before / (1 << 20),
            after_mb = after / (1 << 20),
            "segment index trimmed"
        );
        Some((before, after))
    }

    /// Subscribes to the store's changes and builds the index from a snapshot
    /// of the store, on its own thread. Changes committed after the snapshot
    /// are queued by the observer and applied after the build, in commit
    /// order; none is applied twice ([`Store::snapshot_blocking`]). With
    /// `saved`, the index is read from that file instead if it was saved
    /// there at the state the store is in (see [`persist`]), and
    /// [`Index::save`] writes it there.
    pub fn attach(self: &Arc<Self>, store: &Store, saved: Option<PathBuf>) {
        let pending: Pending = Arc::new(std::sync::Mutex::new(Some(Vec::new())));
        {
            let me = self.clone();
            let pending = pending.clone();
            store.set_observer(Arc::new(move |changes: Vec<Change>| {
                // While the build runs, queue; afterwards apply directly.
                if let Ok(mut p) = pending.lock()
                    && let Some(q) = p.as_mut()
                {
                    q.extend(changes);
                    return;
                }
                me.apply(&changes);
            }));
        }
        // Nothing else writes yet (the daemon attaches the index right after
        // opening the store), so no commit is under way: every commit after
        // this number reaches the queue above.
        let subscribed_at = store.last_commit_seq();
        if let Some(f) = &saved {
            let _ = self.file.set(f.clone());
        }
        let me = self.clone();
        let store = store.clone();
        std::thread::Builder::new()
            .name("herald-segment-index".into())
            .spawn(move || {
                let saved = saved.as_deref().map(|f| (f, subscribed_at));
                me.build(&store, &pending, saved)
            })
            .ok();
    }

    /// The startup build (on its own thread); `saved` as [`load`] takes it.
    fn build(&self, store: &Store, pending: &Pending, saved: Option<(&Path, u64)>) {
        let started = Instant::now();
        build_delay_fault();
        // A snapshot job shares its transaction with other writers;
        // if one of them fails, the snapshot is refused too: retry.
        let mut built = load(store, pending, saved);
        for _ in 0..2 {
            if built.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            built = load(store, pending, saved);
        }
        let (mut data, source) = match built {
            Ok((d, source, stamp)) => {
                let _ = self.stamp.set(stamp);
                (d, source)
            }
            Err(e) => {
                tracing::error!(error = %e, "segment index not built: segments unavailable");
                // Requests get the reason instead of waiting for ever,
                // and changes are no longer queued.
                if let Ok(mut f) = self.failed.write() {
                    *f = Some(format!("the segment index could not be built: {e}"));
                }
                if let Ok(mut p) = pending.lock() {
                    p.take();
                }
                self.ready.send_replace(true);
                return;
            }
        };
        // Changes committed after the snapshot (after the subscription, for
        // a saved index) were queued; apply
        // them in commit order, then switch to applying directly.
        data.shrink();
        if let Ok(mut d) = self.data.write() {
            *d = data;
            if let Ok(mut p) = pending.lock()
                && let Some(q) = p.take()
            {
                for c in &q {
                    d.apply(c);
                }
            }
        }
        let took = started.elapsed();
        if let Ok(mut b) = self.build_time.write() {
            *b = Some(took);
        }
        let bytes = self.heap_bytes();
        tracing::info!(
            took_ms = took.as_millis() as u64,
            memory_mb = bytes / (1 << 20),
            from = match source {
                Source::Saved => "saved file",
                Source::Store => "store",
            },
            "segment index built"
        );
        self.ready.send_replace(true);
    }

    /// Removes what an earlier stop saved: the store did not close cleanly,
    /// so this run's state cannot be stamped.
    pub fn save_nothing(&self) {
        if let Some(file) = self.file.get() {
            persist::remove(file);
        }
    }

    /// Saves the index beside the store, stamped with the number of the
    /// store's last committed batch (`commit`, from [`Store::close`]): call
    /// it after the store is closed, when no change can follow. Does
    /// nothing when the index was never built or is not to be saved.
    pub fn save(&self, commit: u64) {
        let Some(file) = self.file.get() else {
            return;
        };
        let failed = self.failed.read().map_or(true, |f| f.is_some());
        let stamp = self.stamp.get().filter(|_| !failed && self.is_ready());
        let (Some(stamp), Ok(data)) = (stamp, self.data.read()) else {
            // Whatever was saved before is not this run's state.
            persist::remove(file);
            return;
        };
        let started = Instant::now();
        match persist::write(file, &data, persist::Stamp { commit, ..*stamp }) {
            Ok(bytes) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                size_mb = bytes / (1 << 20),
                commit,
                "segment index saved"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "segment index not saved; the next start builds it from the store");
                persist::remove(file);
            }
        }
    }

    /// Applies committed changes (from the store's observer).
    pub fn apply(&self, changes: &[Change]) {
        if self.failed.read().is_ok_and(|f| f.is_some()) {
            return;
        }
        if let Ok(mut d) = self.data.write() {
            for c in changes {
                d.apply(c);
            }
        }
        self.applied
            .fetch_add(changes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until the startup build is done.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether the startup build is done.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Marks an index built by hand (tests, benchmarks) as ready.
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Runs `f` on the data under the write lock (tests, tracking feeds).
    pub fn with_data_mut<R>(&self, f: impl FnOnce(&mut index::Data) -> R) -> Option<R> {
        self.data.write().ok().map(|mut d| f(&mut d))
    }

    /// An estimate of the heap the index holds, in bytes.
    pub fn heap_bytes(&self) -> usize {
        self.data.read().map(|d| d.heap_bytes()).unwrap_or(0)
    }

    /// A contact's consent state as the index knows it.
    pub fn consent_of(&self, id: u64) -> Option<ConsentState> {
        let d = self.data.read().ok()?;
        let r = d.rows.get(usize::try_from(id).ok()?)?;
        if !r.present {
            return None;
        }
        ConsentState::ALL.get(r.consent as usize).copied()
    }

    /// A contact's SMS consent and whether it has a phone number (`None`:
    /// no such contact).
    pub fn sms_of(&self, id: u64) -> Option<(ConsentState, bool)> {
        let d = self.data.read().ok()?;
        let r = d.rows.get(usize::try_from(id).ok()?)?;
        if !r.present {
            return None;
        }
        let state = ConsentState::ALL
            .get((r.sms & !index::HAS_PHONE) as usize)
            .copied()?;
        Some((state, r.sms & index::HAS_PHONE != 0))
    }

    /// Number of contacts in the index.
    pub fn contacts(&self) -> usize {
        self.data.read().map(|d| d.contacts).unwrap_or(0)
    }

    /// Evaluates a condition (blocking: call from a blocking thread; uses
    /// rayon's pool for the scan).
    pub fn evaluate(
        &self,
        cond: &Cond,
        catalog: &Catalog,
        today: NaiveDate,
    ) -> Result<Evaluation, String> {
        let started = Instant::now();
        let d = self.readable()?;
        let pred = eval::compile(cond, &d, catalog, today)?;
        let members = eval::run(&pred, &d);
        let granted_code = ConsentState::Granted.code();
        let mut count = 0;
        let mut granted = 0;
        for id in members.iter() {
            count += 1;
            if d.rows
                .get(id as usize)
                .is_some_and(|r| r.consent == granted_code)
            {
                granted += 1;
            }
        }
        Ok(Evaluation {
            members,
            count,
            granted,
            took: started.elapsed(),
        })
    }
}

impl Index {
    /// The index data under its read lock, or why it cannot be used.
    fn readable(&self) -> Result<std::sync::RwLockReadGuard<'_, index::Data>, String> {
        if let Ok(f) = self.failed.read()
            && let Some(why) = f.as_ref()
        {
            return Err(why.clone());
        }
        self.data
            .read()
            .map_err(|_| "the segment index is unavailable".to_string())
    }

    /// `ids` reordered most recently engaged first (the later of the last
    /// open and the last click, by day); ties and the never engaged keep
    /// their order. A warming-up sender's campaign goes out in this order,
    /// so that its allowance goes to the contacts that build reputation.
    pub fn engaged_first(&self, ids: &[u64]) -> Result<Vec<u64>, String> {
        let d = self.readable()?;
        let last = |id: u64| {
            usize::try_from(id)
                .ok()
                .and_then(|i| d.rows.get(i))
                .map_or(index::NO_DAY, |r| r.last_open.max(r.last_click))
        };
        let mut keyed: Vec<(i32, u64)> = ids.iter().map(|id| (last(*id), *id)).collect();
        keyed.sort_by_key(|(day, _)| std::cmp::Reverse(*day));
        Ok(keyed.into_iter().map(|(_, id)| id).collect())
    }

    /// Which of `ids` match `cond` now (blocking: call from a blocking
    /// thread). The condition is compiled once for all of them.
    pub fn test(
        &self,
        cond: &Cond,
        catalog: &Catalog,
        today: NaiveDate,
        ids: &[u64],
    ) -> Result<Vec<bool>, String> {
        let d = self.readable()?;
        let pred = eval::compile(cond, &d, catalog, today)?;
        Ok(ids
            .iter()
            .map(|id| eval::test_one(&pred, &d, *id))
            .collect())
    }
}

/// A usable segment by name (a file segment of `files`, else an API one),
/// or why not. `config` is the one `files` were loaded with.
pub async fn find_usable(
    files: &SegmentFiles,
    config: &crate::config::Config,
    store: &Store,
    name: &str,
) -> Result<Arc<Segment>, String> {
    if let Some(s) = files.loaded.get(name) {
        return Ok(s.clone());
    }
    if files.failed.contains_key(name) {
        return Err(format!(
            "segment `{name}` has problems (see GET /api/v1/segments)"
        ));
    }
    let n = name.to_string();
    let stored = store
        .read(move |r| Ok(r.segments()?.into_iter().find(|s| s.name == n)))
        .await
        .map_err(|e| e.to_string())?;
    let Some(s) = stored else {
        return Err(format!("no segment `{name}`"));
    };
    let sites: Vec<String> = config.sites.iter().map(|x| x.id.clone()).collect();
    parse_document(&s.name, "api", &lang::from_json(&s.definition), &sites)
        .map(Arc::new)
        .map_err(|_| format!("segment `{name}` has problems (see GET /api/v1/segments)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index is trimmed once changes stop after enough of them, not
    /// while they flow, and not again until as many more.
    #[test]
    fn tidy_waits_for_a_quiet_interval_after_enough_changes() {
        let n = TIDY_AFTER;
        assert!(!should_tidy(n - 1, n - 1, 0));
        assert!(!should_tidy(n + 5, n, 0), "still changing");
        assert!(should_tidy(n, n, 0));
        assert!(!should_tidy(n + 10, n + 10, n));
        assert!(should_tidy(2 * n, 2 * n, n));
    }

    /// Most recently engaged first (open or click, whichever is later);
    /// the never engaged and unknown ids after, in their order.
    #[test]
    fn engaged_first_orders_by_the_last_open_or_click() -> Result<(), String> {
        let idx = Index::new();
        idx.with_data_mut(|d| {
            d.rows.resize(6, index::Row::default());
            d.rows[1].last_open = 100;
            d.rows[2].last_click = 300;
            d.rows[3].last_open = 200;
            d.rows[3].last_click = 50;
        });
        let ids = [5, 1, 4, 2, 9, 3];
        assert_eq!(idx.engaged_first(&ids)?, [2, 3, 1, 5, 4, 9]);
        Ok(())
    }
}
