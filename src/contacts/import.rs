//! Streaming CSV import.
//!
//! The file is read record by record (constant memory), validated on the
//! calling blocking thread and sent to the store writer in batches of
//! [`BATCH_ROWS`] rows. Each batch is one transaction together with the import
//! record's progress, so an import is all-or-nothing per batch: after a crash or
//! a dropped upload, the record says exactly which records are committed and
//! `resume` continues after them. While one batch commits, the next is parsed.
//!
//! Header problems (no `email` column, duplicate or unknown columns) refuse the
//! whole file before anything is written. Row problems reject that row only,
//! with its line number and reason; every rejected row is stored with the
//! import and nothing is dropped silently.
//!
//! A row's problem is its reject reason, a `String` stored as it reads; a
//! batch the writer refuses (the import record moved on) carries a
//! `String` too, and every refusal ends the import the same way
//! (`ContactError::Conflict`). What callers tell apart is [`ImportError`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::model::*;
use super::{
    ContactError, ContactUpdate, UpsertOutcome, UpsertPlan, apply_upsert_planned, check_code,
    check_field_name, check_tag,
};
use crate::store::ReadTables as _;
use crate::store::{Sequence, Store, StoreError};

/// Rows per batch: the unit of progress an import records (and resumes after).
pub const BATCH_ROWS: usize = 10_000;

/// Batches handed to the store writer and not yet committed. The writer folds
/// every batch waiting into one transaction, so while it commits, the next
/// ones queue up and commit together: fewer, larger transactions, which is
/// what keeps random inserts into the e-mail index cheap. Bounded, so memory
/// stays flat (at most this many batches of parsed rows). Parsing a batch
/// takes about a third of the time writing it does, so with four in flight
/// the writer folds two or three into each transaction (BENCHMARKS.md).
const MAX_IN_FLIGHT: usize = 4;

/// How many rejected rows an import's reply lists inline; all of them are
/// stored and can be paged with `GET /api/v1/contacts/import/{id}/rejects`.
pub const INLINE_REJECTS: usize = 10_000;

/// Default of `[import] max_record_bytes`: the longest CSV record read.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = crate::config::import::DEFAULT_MAX_RECORD_BYTES;

/// Options of one import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Add every imported contact to this list.
    pub list: Option<String>,
    /// Create the list if it does not exist.
    pub create_list: bool,
    /// Create unknown columns as text fields instead of refusing the file.
    pub create_fields: bool,
    /// Consent to record for rows without a `consent` value.
    pub consent: Option<ConsentState>,
    /// Continue an interrupted import after its committed records.
    pub resume: Option<u64>,
    /// Longest record (row, with its quoted line breaks) read, in bytes: a
    /// longer one stops the import before it is held in memory whole.
    pub max_record_bytes: u64,
    /// The field delimiter; `None`: found from the header line
    /// ([`super::csv_input::sniff_delimiter`]).
    pub delimiter: Option<u8>,
    /// The file's encoding; `None`: UTF-8 (a BOM says which UTF), else
    /// Windows-1250.
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// The countries national phone numbers are read in.
    pub countries: crate::sms::phone::Countries,
}

impl Default for ImportOptions {
    fn default() -> ImportOptions {
        ImportOptions {
            list: None,
            create_list: false,
            create_fields: false,
            consent: None,
            resume: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            delimiter: None,
            encoding: None,
            countries: Default::default(),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportReport {
    /// The import record (counters, status, resume position).
    #[serde(flatten)]
    pub record: ImportRecord,
    /// Rejected rows: line number and reason (the first [`INLINE_REJECTS`]).
    pub rejects: Vec<Reject>,
    /// True when more rejects exist than are listed here.
    pub rejects_truncated: bool,
    /// The delimiter the file was read with (`,` `;` `tab`…).
    pub delimiter: String,
    /// The encoding it was read in (`UTF-8`, `windows-1250`…), and whether
    /// that was found from its bytes.
    pub encoding: String,
    /// Whether the encoding was found from the bytes (not named).
    pub encoding_detected: bool,
}

/// One rejected row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reject {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// Why an import could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The header row is unusable; nothing was imported.
    #[error("line {line}: {message}")]
    Header { line: u64, message: String },
    /// Bad options (unknown list, resume of a finished import…).
    #[error(transparent)]
    Contact(#[from] ContactError),
    /// Reading the upload failed part-way; committed batches stand and the
    /// import can be resumed.
    #[error(
        "import {id} interrupted after {records} committed records (line {line}): {message}; resume with ?resume={id}"
    )]
    Interrupted {
        id: u64,
        records: u64,
        line: u64,
        message: String,
    },
    /// The store became unavailable or low on space part-way: committed
    /// batches stand and the import can be resumed.
    #[error(
        "import {id} stopped: {store}; the rows committed before stand: resume with ?resume={id} once the store takes writes"
    )]
    Stopped { id: u64, store: StoreError },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Column {
    Email,
    Language,
    Site,
    Consent,
    Tags,
    Phone,
    SmsConsent,
    Field(FieldDef),
}

struct Row {
    line: u64,
    email: super::Email,
    update: ContactUpdate,
}

struct Batch {
    /// When its rows were read: the time of their changes.
    at: DateTime<Utc>,
    rows: Vec<Row>,
    rejects: Vec<(u64, String)>,
    merged: u64,
    records: u64,
    last_line: u64,
}

#[derive(Default)]
struct BatchResult {
    rejects: Vec<(u64, String)>,
}

/// Runs an import from `input`, blocking the calling thread (call it from
/// `spawn_blocking`). `now` is the clock.
pub fn run_import(
    store: &Store,
    input: impl Read,
    opts: &ImportOptions,
    now: impl Fn() -> DateTime<Utc>,
) -> Result<ImportReport, ImportError> {
    let newlines = Rc::new(RefCell::new(LineIndex::default()));
    let record_start = Rc::new(Cell::new(0u64));
    let unclosed = Rc::new(Cell::new(None));
    let limit = opts.max_record_bytes;
    let input = super::csv_input::prepare(input, opts.delimiter, opts.encoding).map_err(|e| {
        ImportError::Header {
            line: 1,
            message: format!("cannot read the file: {e}"),
        }
    })?;
    let (delimiter, encoding) = (input.delimiter, input.encoding.clone());
    let encoding_detected = !input.encoding_named;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .delimiter(delimiter)
        .from_reader(NewlineTracker {
            inner: input.reader,
            offset: 0,
            index: newlines.clone(),
            record_start: record_start.clone(),
            limit,
            quotes: Quotes::new(delimiter),
            unclosed: unclosed.clone(),
        });
    let mut record = csv::ByteRecord::new();

    // Header.
    let header = match reader.read_byte_record(&mut record) {
        Ok(true) => record.clone(),
        Ok(false) => {
            return Err(ImportError::Header {
                line: 1,
                message: "the file is empty (a header row with an `email` column is required)"
                    .into(),
            });
        }
        Err(e) => {
            return Err(ImportError::Header {
                line: 1,
                message: match too_long(&e) {
                    Some(m) => m,
                    None => format!("cannot read the header: {e}"),
                },
            });
        }
    };
    record_start.set(reader.position().byte());
    let fields: HashMap<String, FieldDef> = store
        .read_blocking(|r| r.fields())?
        .into_iter()
        .map(|f| (f.name.clone(), f))
        .collect();
    let (names, unknown) = header_names(&header, delimiter)?;
    if !unknown.is_empty() && !opts.create_fields {
        let missing: Vec<&str> = unknown
            .iter()
            .map(String::as_str)
            .filter(|n| !fields.contains_key(*n))
            .collect();
        if !missing.is_empty() {
            return Err(ImportError::Header {
                line: 1,
                message: format!(
                    "unknown column{} {}: create the field{} first (POST /api/v1/fields) or import with create_fields=true",
                    if missing.len() == 1 { "" } else { "s" },
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if missing.len() == 1 { "" } else { "s" },
                ),
            });
        }
    }
    for n in &unknown {
        if let Err(e) = check_field_name(n) {
            return Err(ImportError::Header {
                line: 1,
                message: format!("column `{n}`: {e}"),
            });
        }
    }

    // Side effects only after the header is known to be good.
    let started = now();
    let mut created_fields = Vec::new();
    for n in &unknown {
        if !fields.contains_key(n) {
            created_fields.push(FieldDef {
                name: n.clone(),
                field_type: FieldType::Text,
                choices: vec![],
                label: None,
                created_at: started,
            });
        }
    }
    let list_name = opts.list.clone();
    let create_list = opts.create_list;
    let resume = opts.resume;
    let new_fields = created_fields.clone();
    let (import, list_id) = wait(store.write_blocking(move |t| {
        // Every check first: a refused import writes nothing at all.
        let existing_list = match &list_name {
            Some(name) => t.list_id_by_name(name)?,
            None => None,
        };
        if let Some(name) = &list_name
            && existing_list.is_none()
            && !create_list
        {
            return Ok(Err(ContactError::NotFound(format!(
                "no list named `{name}` (create it, or import with create_list=true)"
            ))));
        }
        let resumed = match resume {
            None => None,
            Some(id) => match t.import(id)? {
                None => {
                    return Ok(Err(ContactError::NotFound(format!(
                        "no import with id {id}"
                    ))));
                }
                // Only an interrupted import resumes: a running one still has a
                // writer, and two would both advance its progress.
                Some(r) if r.status == ImportStatus::Interrupted => Some(r),
                Some(r) => {
                    return Ok(Err(ContactError::Conflict(format!(
                        "import {id} is {}, only an interrupted import can be resumed",
                        serde_json::to_value(r.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ))));
                }
            },
        };
        // Then the writes.
        for f in &new_fields {
            if t.field(&f.name)?.is_none() {
                t.put_field(f)?;
            }
        }
        let list_id = match (&list_name, existing_list) {
            (None, _) => None,
            (Some(_), Some(id)) => Some(id),
            (Some(name), None) => {
                let l = List {
                    id: t.next_id(Sequence::List)?,
                    name: name.clone(),
                    description: None,
                    member_count: 0,
                    created_at: started,
                };
                t.put_list(&l, None)?;
                Some(l.id)
            }
        };
        let record = match resumed {
            Some(mut r) => {
                r.status = ImportStatus::Running;
                r.error = None;
                r.finished_at = None;
                r
            }
            None => ImportRecord {
                id: t.next_id(Sequence::Import)?,
                status: ImportStatus::Running,
                started_at: started,
                finished_at: None,
                list: list_name.clone(),
                records_committed: 0,
                lines_committed: 1,
                created: 0,
                updated: 0,
                unchanged: 0,
                merged_duplicates: 0,
                rejected: 0,
                error: None,
            },
        };
        t.put_import(&record)?;
        Ok(Ok((record, list_id)))
    })?)??;
    let mut fields = fields;
    for f in created_fields {
        fields.insert(f.name.clone(), f);
    }
    let columns: Vec<Column> = names
        .iter()
        .map(|n| match n.as_str() {
            "email" => Column::Email,
            "language" => Column::Language,
            "site" => Column::Site,
            "consent" => Column::Consent,
            "tags" => Column::Tags,
            "phone" => Column::Phone,
            "sms_consent" => Column::SmsConsent,
            other => Column::Field(fields[other].clone()),
        })
        .collect();

    // The definitions the rows are parsed against; each batch checks once
    // that they still hold (not every value).
    // The definitions the rows are parsed against; each batch checks once
    // that they still hold (not every value).
    let defs: Arc<[FieldDef]> = columns
        .iter()
        .filter_map(|c| match c {
            Column::Field(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    let ctx = RowContext {
        delimiter,
        columns: &columns,
        list_id,
        default_consent: opts.consent,
        import_id: import.id,
        countries: &opts.countries,
    };
    let skip = import.records_committed;
    let hasher = std::collections::hash_map::RandomState::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let mut index: u64 = 0;
    let mut inline: Vec<Reject> = Vec::new();
    let mut total_rejects: u64 = 0;
    let mut batch = Batch {
        at: now(),
        rows: Vec::with_capacity(BATCH_ROWS),
        rejects: Vec::new(),
        merged: 0,
        records: 0,
        last_line: 1,
    };

    let collect = |res: BatchResult, inline: &mut Vec<Reject>, total: &mut u64| {
        for (line, reason) in res.rejects {
            *total += 1;
            if inline.len() < INLINE_REJECTS {
                inline.push(Reject { line, reason });
            }
        }
    };

    // Expected `records_committed` before the next batch: each batch checks it
    // inside its transaction, so a batch after a failed one can never commit
    // and make the record lie about what is stored.
    let mut sent: u64 = skip;
    let mut run = |pending: &mut VecDeque<Pending>| -> Result<Option<String>, ImportError> {
        let read_error = loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => break None,
                Ok(true) => record_start.set(reader.position().byte()),
                Err(e) => {
                    // A record too long is named by the line it starts on
                    // (the reader stopped somewhere inside it).
                    if let Some(m) = too_long(&e) {
                        let line = newlines.borrow_mut().line_at(record_start.get());
                        break Some(format!("line {line}: {m}"));
                    }
                    let line = newlines.borrow_mut().line_at(reader.position().byte());
                    break Some(format!("line {line}: {e}"));
                }
            }
            index += 1;
            if index <= skip {
                continue;
            }
            // Line numbers come from byte offsets, so quoted newlines and CRLF
            // count exactly as in the file an admin opens.
            let line = newlines
                .borrow_mut()
                .line_at(record.position().map_or(0, |p| p.byte()));
            batch.records += 1;
            batch.last_line = line;
            let start = record.position().map_or(0, |p| p.byte());
            if let Some(open) = unclosed.get().filter(|open| *open >= start) {
                // The file ended inside this record's quotes: everything
                // after the quote was read as one field.
                let opened = newlines.borrow_mut().line_at(open);
                let inside = record
                    .iter()
                    .flat_map(|f| f.iter())
                    .filter(|b| **b == b'\n')
                    .count()
                    .saturating_sub(usize::from(
                        record
                            .iter()
                            .next_back()
                            .is_some_and(|f| f.ends_with(b"\n")),
                    ));
                let last = opened + inside as u64;
                batch.rejects.push((
                    line,
                    format!(
                        "the quote opened on line {opened} is never closed: lines {opened}–{last} were read as one field, so this row and the {} line(s) after it are not imported",
                        last.saturating_sub(opened)
                    ),
                ));
                continue;
            }
            match ctx.parse(&record, line) {
                Ok(row) => {
                    if !seen.insert(hasher.hash_one(&row.email.key)) {
                        batch.merged += 1;
                    }
                    batch.rows.push(row);
                }
                Err(reason) => batch.rejects.push((line, reason)),
            }
            if batch.rows.len() + batch.rejects.len() >= BATCH_ROWS {
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        at: now(),
                        rows: Vec::with_capacity(BATCH_ROWS),
                        rejects: Vec::new(),
                        merged: 0,
                        records: 0,
                        last_line: line,
                    },
                );
                if pending.len() >= MAX_IN_FLIGHT
                    && let Some(p) = pending.pop_front()
                {
                    collect(finish(p)?, &mut inline, &mut total_rejects);
                }
                let n = full.records;
                // More rows follow: this batch need not be synced alone.
                pending.push_back(send_batch(store, import.id, sent, full, &defs, false)?);
                sent += n;
            }
        };
        if batch.records > 0 {
            let last = std::mem::replace(
                &mut batch,
                Batch {
                    at: now(),
                    rows: Vec::new(),
                    rejects: Vec::new(),
                    merged: 0,
                    records: 0,
                    last_line: 0,
                },
            );
            pending.push_back(send_batch(store, import.id, sent, last, &defs, true)?);
        }
        while let Some(p) = pending.pop_front() {
            collect(finish(p)?, &mut inline, &mut total_rejects);
        }
        Ok(read_error)
    };
    let mut pending = VecDeque::new();
    let read_error = match run(&mut pending) {
        Ok(r) => r,
        Err(e) => {
            // Let what is in flight settle, then record the stop truthfully
            // (best effort: the store may be what failed).
            while let Some(p) = pending.pop_front() {
                let _ = p.blocking_recv();
            }
            mark_interrupted(store, import.id, e.to_string(), now());
            return Err(match e {
                ImportError::Store(s)
                    if s.is_unavailable() || matches!(s, StoreError::LowSpace { .. }) =>
                {
                    ImportError::Stopped {
                        id: import.id,
                        store: s,
                    }
                }
                e => e,
            });
        }
    };

    // Close the record.
    let id = import.id;
    let finished = now();
    let err = read_error.clone();
    // A missing record is reported to this caller only: an `Err` from a job
    // would abort every other write in the same group commit.
    let record = wait(store.write_blocking(move |t| {
        let Some(mut r) = t.import(id)? else {
            return Ok(None);
        };
        r.finished_at = Some(finished);
        match err {
            None => r.status = ImportStatus::Completed,
            Some(e) => {
                r.status = ImportStatus::Interrupted;
                r.error = Some(e);
            }
        }
        t.put_import(&r)?;
        Ok(Some(r))
    })?)?
    .ok_or_else(|| {
        ImportError::Contact(ContactError::NotFound(format!(
            "import {id} was deleted while running"
        )))
    })?;
    if let Some(message) = read_error {
        return Err(ImportError::Interrupted {
            id,
            records: record.records_committed,
            line: record.lines_committed,
            message,
        });
    }
    Ok(ImportReport {
        rejects_truncated: total_rejects > inline.len() as u64,
        record,
        rejects: inline,
        delimiter: super::csv_input::delimiter_name(delimiter)
            .trim_matches('`')
            .to_string(),
        encoding: encoding.get().name().to_string(),
        encoding_detected,
    })
}

fn wait<T>(rx: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
    rx.blocking_recv().map_err(|_| StoreError::Closed)?
}

type Pending = oneshot::Receiver<Result<Result<BatchResult, String>, StoreError>>;

/// Waits for a batch; a store failure or a refused batch ends the import.
fn finish(p: Pending) -> Result<BatchResult, ImportError> {
    wait(p)?.map_err(|m| ImportError::Contact(ContactError::Conflict(m)))
}

/// Records that import `id` stopped. When the store is what failed, the
/// record is written once it is back (a thread tries every second, for up
/// to ten minutes), so that the import can be resumed without a restart.
fn mark_interrupted(store: &Store, id: u64, message: String, at: DateTime<Utc>) {
    let mark = move |store: &Store, message: String| {
        store.write_wait(move |t| {
            if let Some(mut r) = t.import(id)?
                && r.status == ImportStatus::Running
            {
                r.status = ImportStatus::Interrupted;
                r.error = Some(message);
                r.finished_at = Some(at);
                t.put_import(&r)?;
            }
            Ok(())
        })
    };
    match mark(store, message.clone()) {
        Err(e) if e.is_unavailable() => {
            let store = store.clone();
            let later = std::thread::Builder::new()
                .name("herald-import-mark".into())
                .spawn(move || {
                    for _ in 0..600 {
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        match mark(&store, message.clone()) {
                            Err(e) if e.is_unavailable() => continue,
                            _ => return,
                        }
                    }
                });
            if let Err(e) = later {
                tracing::warn!(import = id, error = %e, "cannot wait to mark the import interrupted");
            }
        }
        _ => {}
    }
}

/// Sends one batch to the writer; `defs`: the field definitions its values
/// were parsed against; `sync`: the batch must be on disk before it is
/// answered (the last one), else it may wait for a later synced commit
/// ([`crate::store::WriteTables::sync_later`]).
fn send_batch(
    store: &Store,
    import_id: u64,
    expected: u64,
    batch: Batch,
    defs: &Arc<[FieldDef]>,
    sync: bool,
) -> Result<Pending, StoreError> {
    let at = batch.at;
    store.bulk_allowed()?;
    let defs = defs.clone();
    store.write_blocking(move |t| {
        if !sync {
            t.sync_later();
        }
        let salt = t.salt()?;
        let Some(mut rec) = t.import(import_id)? else {
            return Ok(Err(format!("import {import_id} vanished")));
        };
        if rec.status != ImportStatus::Running || rec.records_committed != expected {
            return Ok(Err(format!(
                "import {import_id} is no longer where this upload expects it ({} records committed, expected {expected}); nothing more was applied",
                rec.records_committed
            )));
        }

        let mut fields_checked = true;
        for d in defs.iter() {
            fields_checked &= t.field_cached(&d.name)?.is_some_and(|now| now == d);
        }
        let plan = UpsertPlan {
            // Mostly new addresses so far (a first import): claim each.
            claim_first: rec.created >= rec.updated + rec.unchanged,
            fields_checked,
        };
        let mut rejects = batch.rejects;
        // The rows' records and index writes are made at the batch's end,
        // on two threads (`WriteTables::deferring`).
        t.deferring(batch.rows.len(), |t| {
            for row in batch.rows {
                let (email, update) = (&row.email, row.update);
                match apply_upsert_planned(t, &salt, email, update, at, plan)? {
                    Ok((UpsertOutcome::Created, _)) => rec.created += 1,
                    Ok((UpsertOutcome::Updated, _)) => rec.updated += 1,
                    Ok((UpsertOutcome::Unchanged, _)) => rec.unchanged += 1,
                    Err(e) => rejects.push((row.line, e.to_string())),
                }
            }
            Ok(())
        })?;
        rejects.sort_by_key(|r| r.0);
        for (line, reason) in &rejects {
            t.put_import_reject(import_id, *line, reason)?;
        }
        rec.rejected += rejects.len() as u64;
        rec.merged_duplicates += batch.merged;
        rec.records_committed += batch.records;
        rec.lines_committed = batch.last_line;
        t.put_import(&rec)?;
        Ok(Ok(BatchResult { rejects }))
    })
}

/// Checks the header and returns the normalised column names and those that
/// are not built-in attributes (custom field names).
fn header_names(
    header: &csv::ByteRecord,
    delimiter: u8,
) -> Result<(Vec<String>, Vec<String>), ImportError> {
    let mut names = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, raw) in header.iter().enumerate() {
        let Ok(s) = std::str::from_utf8(raw) else {
            return Err(ImportError::Header {
                line: 1,
                message: format!("column {} is not valid UTF-8", i + 1),
            });
        };
        let name = s.trim().trim_start_matches('\u{feff}').to_lowercase();
        if name.is_empty() {
            return Err(ImportError::Header {
                line: 1,
                message: format!("column {} has no name", i + 1),
            });
        }
        if !seen.insert(name.clone()) {
            return Err(ImportError::Header {
                line: 1,
                message: format!("column `{name}` appears twice"),
            });
        }
        if !super::BUILTIN_COLUMNS.contains(&name.as_str()) {
            unknown.push(name.clone());
        }
        names.push(name);
    }
    if !seen.contains("email") {
        let other = [b',', b';', b'\t']
            .into_iter()
            .filter(|d| *d != delimiter)
            .find(|d| names.iter().any(|n| n.as_bytes().contains(d)));
        let hint = match other {
            Some(d) => format!(
                "; the header has {} in it: is the file separated by {0}? (name the delimiter)",
                super::csv_input::delimiter_name(d)
            ),
            None => String::new(),
        };
        return Err(ImportError::Header {
            line: 1,
            message: format!(
                "no `email` column (read with the delimiter {}, the header's columns are: {}){hint}",
                super::csv_input::delimiter_name(delimiter),
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok((names, unknown))
}

struct RowContext<'a> {
    delimiter: u8,
    columns: &'a [Column],
    list_id: Option<u64>,
    default_consent: Option<ConsentState>,
    import_id: u64,
    countries: &'a crate::sms::phone::Countries,
}

impl RowContext<'_> {
    fn parse(&self, rec: &csv::ByteRecord, line: u64) -> Result<Row, String> {
        if rec.len() != self.columns.len() {
            if rec.len() == 1
                && rec
                    .get(0)
                    .is_some_and(|c| c.iter().all(u8::is_ascii_whitespace))
            {
                return Err("empty line".into());
            }
            return Err(format!(
                "has {} columns, the header has {}",
                rec.len(),
                self.columns.len()
            ));
        }
        let mut email = None;
        let mut update = ContactUpdate::default();
        let mut consent = self.default_consent;
        let (mut phone, mut sms_consent) = (None, None);
        for (col, raw) in self.columns.iter().zip(rec.iter()) {
            let Ok(cell) = std::str::from_utf8(raw) else {
                return Err(format!(
                    "column `{}` is not valid UTF-8 (is the file in another encoding? name it)",
                    col_name(col)
                ));
            };
            if let Some(swallowed) = swallowed_record(cell, self.delimiter) {
                return Err(format!(
                    "a quoted field runs over {} lines and holds what looks like another record (`{swallowed}`): is a quote left open?",
                    cell.lines().count()
                ));
            }
            let v = cell.trim();
            match col {
                Column::Email => {
                    email = Some(super::normalize_email(cell).map_err(|e| e.to_string())?)
                }
                _ if v.is_empty() => {}
                Column::Language => {
                    update.language =
                        Some(Some(check_code("language", v).map_err(|e| e.to_string())?))
                }
                Column::Site => {
                    update.site = Some(Some(check_code("site", v).map_err(|e| e.to_string())?))
                }
                Column::Consent => consent = Some(ConsentState::parse(v).ok_or_else(|| {
                    format!(
                        "consent `{v}` is not one of: unknown, pending, granted, withdrawn, invalid"
                    )
                })?),
                Column::Phone => phone = Some(v),
                Column::SmsConsent => {
                    sms_consent = Some(ConsentState::parse(v).ok_or_else(|| {
                        format!(
                            "sms_consent `{v}` is not one of: unknown, pending, granted, withdrawn, invalid"
                        )
                    })?)
                }
                Column::Tags => {
                    for t in v.split([',', ';']).filter(|t| !t.trim().is_empty()) {
                        update
                            .add_tags
                            .insert(check_tag(t).map_err(|e| e.to_string())?);
                    }
                }
                Column::Field(def) => {
                    let value = super::parse_value(def, cell).map_err(|e| e.to_string())?;
                    update.fields.insert(def.name.clone(), Some(value));
                }
            }
        }
        let email = email.ok_or_else(|| "no e-mail address".to_string())?;
        if let Some(raw) = phone {
            let site = update.site.clone().flatten();
            let country = self.countries.of_site(site.as_deref());
            let p =
                crate::sms::phone::normalize(raw, country).map_err(|e| format!("phone: {e}"))?;
            update.phone = Some(Some(p));
        }
        let change = |to| super::ConsentChange {
            to,
            source: ConsentSource::Import,
            ip: None,
            user_agent: None,
            note: Some(format!("import {} line {line}", self.import_id)),
        };
        update.consent = consent.map(change);
        update.sms_consent = sms_consent.map(change);
        if let Some(l) = self.list_id {
            update.add_lists.insert(l);
        }
        Ok(Row {
            line,
            email,
            update,
        })
    }
}

/// A line after the first of a quoted field that looks like a record of
/// its own (a delimiter and an e-mail address), cut to 60 characters.
fn swallowed_record(cell: &str, delimiter: u8) -> Option<String> {
    let (_, rest) = cell.split_once('\n')?;
    // A field that is an address and nothing else: "x3@example.com,Fine",
    // not a note that mentions one ("kontakt: biuro@firma.pl, tel 12").
    let address = |f: &str| {
        let f = f.trim().trim_matches('"');
        !f.contains(char::is_whitespace)
            && f.split_once('@')
                .is_some_and(|(a, d)| !a.is_empty() && d.contains('.') && !d.contains('@'))
    };
    rest.lines()
        .map(str::trim)
        .find(|l| {
            let mut fields = l.split(delimiter as char);
            l.as_bytes().contains(&delimiter) && fields.any(address)
        })
        .map(|l| l.chars().take(60).collect())
}

fn col_name(c: &Column) -> &str {
    match c {
        Column::Email => "email",
        Column::Language => "language",
        Column::Site => "site",
        Column::Consent => "consent",
        Column::Tags => "tags",
        Column::Phone => "phone",
        Column::SmsConsent => "sms_consent",
        Column::Field(d) => &d.name,
    }
}

/// Byte offsets of the line-break bytes (CR and LF) read but not yet passed by
/// the CSV reader, and how many newlines lie before the last position asked
/// about. Bounded by the reader's read-ahead, since positions only move forward.
#[derive(Default)]
struct LineIndex {
    /// (offset, is LF) of every CR and LF not yet passed.
    pending: VecDeque<(u64, bool)>,
    /// Newlines passed so far.
    passed: u64,
}

impl LineIndex {
    /// The 1-based line on which the record reported at byte `offset` starts
    /// (offsets must not decrease). The csv crate reports a record's position
    /// before the previous line's terminator and any blank lines; a record
    /// never begins with CR or LF (only a quoted field may hold them, and it
    /// starts with `"`), so a run of CR/LF bytes at `offset` is terminators.
    fn line_at(&mut self, offset: u64) -> u64 {
        while let Some(&(at, lf)) = self.pending.front() {
            if at >= offset {
                break;
            }
            self.passed += u64::from(lf);
            self.pending.pop_front();
        }
        let mut cursor = offset;
        while let Some(&(at, lf)) = self.pending.front() {
            if at != cursor {
                break;
            }
            self.passed += u64::from(lf);
            self.pending.pop_front();
            cursor += 1;
        }
        self.passed + 1
    }
}

/// The error [`NewlineTracker`] gives when a record grows past the limit.
#[derive(Debug, thiserror::Error)]
#[error("a record is longer than {0} bytes ([import] max_record_bytes); is a quote left open?")]
struct RecordTooLong(u64);

/// The message of a [`RecordTooLong`] inside a CSV error.
fn too_long(e: &csv::Error) -> Option<String> {
    match e.kind() {
        csv::ErrorKind::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<RecordTooLong>())
            .map(ToString::to_string),
        _ => None,
    }
}

/// Passes bytes through, noting where each CR and LF is, and refuses to read
/// on once the record being read exceeds `limit` bytes.
struct NewlineTracker<R> {
    inner: R,
    offset: u64,
    index: Rc<RefCell<LineIndex>>,
    /// Byte offset where the record being read begins (set by the caller
    /// after each record).
    record_start: Rc<Cell<u64>>,
    /// Most bytes one record may take.
    limit: u64,
    /// Where quotes open and close.
    quotes: Quotes,
    /// Set at the end of the input when a quote is still open: where it
    /// opened.
    unclosed: Rc<Cell<Option<u64>>>,
}

/// Follows the quoting of a CSV text byte by byte, as the csv crate reads
/// it: a `"` at the start of a field opens a quoted field, the next one
/// closes it unless another follows (`""`, a quote inside); a `"` inside an
/// unquoted field is a character.
struct Quotes {
    delimiter: u8,
    open: bool,
    /// The last byte closed a quoted field (or was the first of `""`).
    just_closed: bool,
    /// Whether the last byte ended a field (or nothing was read yet).
    at_field_start: bool,
    /// Where the quote that is open began.
    opened_at: u64,
}

impl Quotes {
    fn new(delimiter: u8) -> Quotes {
        Quotes {
            delimiter,
            open: false,
            just_closed: false,
            at_field_start: true,
            opened_at: 0,
        }
    }

    fn byte(&mut self, b: u8, offset: u64) {
        let closed = self.just_closed;
        self.just_closed = false;
        if b == b'"' {
            if self.open {
                self.open = false;
                self.just_closed = true;
            } else if closed {
                self.open = true;
            } else if self.at_field_start {
                self.open = true;
                self.opened_at = offset;
            }
        }
        self.at_field_start = !self.open && (b == self.delimiter || b == b'\n' || b == b'\r');
    }
}

impl<R: Read> Read for NewlineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // The csv reader asks for more only once it has consumed everything
        // it was given, so all bytes since the record's start belong to the
        // record being read (within one read-ahead buffer): the cap acts
        // before the record is held whole.
        if self.offset.saturating_sub(self.record_start.get()) > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                RecordTooLong(self.limit),
            ));
        }
        let n = self.inner.read(buf)?;
        if n == 0 && self.quotes.open {
            self.unclosed.set(Some(self.quotes.opened_at));
        }
        let mut index = self.index.borrow_mut();
        for (i, b) in buf[..n].iter().enumerate() {
            let at = self.offset + i as u64;
            if *b == b'\n' || *b == b'\r' {
                index.pending.push_back((at, *b == b'\n'));
            }
            self.quotes.byte(*b, at);
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A batch whose import record is not where it expects it (a batch before
    /// it failed, or another upload resumed the import) applies nothing.
    #[test]
    fn a_batch_out_of_sequence_applies_nothing() -> TestResult {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let now = Utc::now();
        let rec = ImportRecord {
            id: 1,
            status: ImportStatus::Running,
            started_at: now,
            finished_at: None,
            list: None,
            records_committed: 5,
            lines_committed: 6,
            created: 5,
            updated: 0,
            unchanged: 0,
            merged_duplicates: 0,
            rejected: 0,
            error: None,
        };
        let r = rec.clone();
        wait(store.write_blocking(move |t| t.put_import(&r))?)?;
        let row = Row {
            line: 7,
            email: crate::contacts::normalize_email("x@example.com")?,
            update: ContactUpdate::default(),
        };
        let batch = Batch {
            at: Utc::now(),
            rows: vec![row],
            rejects: vec![],
            merged: 0,
            records: 1,
            last_line: 7,
        };
        let refused = wait(send_batch(&store, 1, 0, batch, &Arc::from([]), true)?)?;
        assert!(refused.is_err());
        assert_eq!(
            store.read_blocking(|r| r.contact_id_by_email("x@example.com"))?,
            None
        );
        assert_eq!(store.read_blocking(|r| r.import(1))?, Some(rec));
        Ok(())
    }

    /// A record past the limit (an open quote swallowing the rest of the
    /// file) is refused while it is read, named by the line it starts on.
    #[test]
    fn a_record_past_the_limit_is_refused_with_its_line() -> TestResult {
        let mut text = String::from("email,note\r\na@x.com,\"two\nlines\"\r\nb@x.com,\"");
        for _ in 0..2000 {
            text.push_str("open quote\n");
        }
        let index = Rc::new(RefCell::new(LineIndex::default()));
        let start = Rc::new(Cell::new(0));
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(64)
            .from_reader(NewlineTracker {
                inner: text.as_bytes(),
                offset: 0,
                index: index.clone(),
                record_start: start.clone(),
                limit: 1024,
                quotes: Quotes::new(b','),
                unclosed: Rc::new(Cell::new(None)),
            });
        let mut rec = csv::ByteRecord::new();
        let mut read = 0;
        let err = loop {
            match r.read_byte_record(&mut rec) {
                Ok(true) => {
                    read += 1;
                    start.set(r.position().byte());
                }
                Ok(false) => return Err("the open quote was read to the end".into()),
                Err(e) => break e,
            }
        };
        assert_eq!(read, 2);
        let m = too_long(&err).ok_or("not a too-long error")?;
        assert!(m.contains("1024 bytes"), "{m}");
        assert_eq!(index.borrow_mut().line_at(start.get()), 4);
        Ok(())
    }

    #[test]
    fn quotes_are_followed_as_the_csv_reader_reads_them() {
        let open_at = |text: &str| {
            let mut q = Quotes::new(b',');
            for (i, b) in text.bytes().enumerate() {
                q.byte(b, i as u64);
            }
            q.open.then_some(q.opened_at)
        };
        assert_eq!(open_at("a,\"b\"\"c\",d\n"), None);
        assert_eq!(
            open_at("a,b\"c,d\n"),
            None,
            "a quote inside a field is a character"
        );
        assert_eq!(open_at("a,\"\"\n"), None);
        assert_eq!(open_at("x2@e.com,\"Unclosed\nx3@e.com,Fine\n"), Some(9));
        assert_eq!(
            open_at("a,\"x\"\"\ny"),
            Some(2),
            "an escaped quote keeps it open"
        );
        assert_eq!(
            swallowed_record("Unclosed\nx3@example.com,Fine", b',').as_deref(),
            Some("x3@example.com,Fine")
        );
        assert_eq!(swallowed_record("two\nlines, no address", b','), None);
        assert_eq!(swallowed_record("one line a@b.pl,x", b','), None);
        assert_eq!(
            swallowed_record("ul. Długa 5\nkontakt: biuro@firma.pl, tel 12", b','),
            None
        );
    }

    #[test]
    fn line_numbers_follow_the_file_with_quoted_newlines_and_crlf() -> TestResult {
        let text = "email,note\r\na@x.com,\"two\r\nlines\"\r\nb@x.com,z\r\n\r\nc@x.com,\"\n\n\"\nd@x.com,\n";
        let index = Rc::new(RefCell::new(LineIndex::default()));
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(NewlineTracker {
                inner: text.as_bytes(),
                offset: 0,
                index: index.clone(),
                record_start: Rc::new(Cell::new(0)),
                limit: DEFAULT_MAX_RECORD_BYTES,
                quotes: Quotes::new(b','),
                unclosed: Rc::new(Cell::new(None)),
            });
        let mut rec = csv::ByteRecord::new();
        let mut lines = Vec::new();
        while r.read_byte_record(&mut rec)? {
            let at = rec
                .position()
                .ok_or("a record read from input has a position")?;
            let line = index.borrow_mut().line_at(at.byte());
            lines.push((String::from_utf8_lossy(&rec[0]).into_owned(), line));
        }
        let expect: Vec<(String, u64)> = [
            ("email", 1),
            ("a@x.com", 2),
            ("b@x.com", 4),
            ("c@x.com", 6),
            ("d@x.com", 9),
        ]
        .iter()
        .map(|(e, l)| (e.to_string(), *l))
        .collect();
        assert_eq!(lines, expect);
        Ok(())
    }
}
