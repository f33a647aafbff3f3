//! Contact and list tables: contacts with their e-mail and consent indexes
//! and per-state counts, list and tag membership, the consent log, the
//! suppression list of erased addresses, custom field definitions, lists,
//! and imports with their rejected rows. The contacts module decides what
//! changes (upserts, consent rules, erasure); these methods keep every
//! index and count in step with the records. Lookups both transactions
//! make (`contact`, `contact_id_by_email`, `field`, `list`…) are
//! `ReadTables` methods (`store/read.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use redb::ReadableTable;

use super::tables::*;
use super::{
    Change, ReadTables, ReadView, Sequence, StoreError, WriteTables, all_json, get_json, meta_u64,
    to_json,
};
use crate::contacts::model::{
    ConsentEvent, ConsentState, Contact, FieldDef, FieldValue, ImportRecord, List, Suppression,
};

/// A consent log entry as `consent_log_v2` keeps it (schema 7): postcard,
/// every field present, the time in ms; the enums by their variants'
/// positions (new ones go at the end; a test pins them).
/// `consent_log_v1` was the JSON of [`ConsentEvent`], four times the size.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredConsent {
    at: i64,
    channel: crate::contacts::model::Channel,
    from: ConsentState,
    to: ConsentState,
    source: crate::contacts::model::ConsentSource,
    ip: Option<String>,
    user_agent: Option<String>,
    note: Option<String>,
}

/// A consent log entry's `consent_log_v2` value.
pub(super) fn encode_consent(e: &ConsentEvent) -> Vec<u8> {
    super::enc(&StoredConsent {
        at: e.at.timestamp_millis(),
        channel: e.channel,
        from: e.from,
        to: e.to,
        source: e.source,
        ip: e.ip.clone(),
        user_agent: e.user_agent.clone(),
        note: e.note.clone(),
    })
}

/// A consent log entry from its `consent_log_v2` value.
pub(super) fn decode_consent(b: &[u8]) -> Result<ConsentEvent, StoreError> {
    let s: StoredConsent = super::dec("consent_log", b)?;
    Ok(ConsentEvent {
        at: chrono::DateTime::from_timestamp_millis(s.at).ok_or(StoreError::Corrupt {
            table: "consent_log",
            message: format!("time {} out of range", s.at),
        })?,
        channel: s.channel,
        from: s.from,
        to: s.to,
        source: s.source,
        ip: s.ip,
        user_agent: s.user_agent,
        note: s.note,
    })
}

/// A contact as `contacts_v2` keeps it: postcard, every field present and
/// in this order, the id left to the key (schema 5; `contacts_v1` was the
/// JSON of [`Contact`], twice the size: a contact's eleven shop fields
/// spent more bytes on quoting and tags than on their values). Adding a
/// field to a contact is a new table version and a migration.
#[derive(serde::Serialize)]
struct StoredRef<'a> {
    email: &'a str,
    consent: ConsentState,
    phone: &'a Option<String>,
    sms_consent: ConsentState,
    language: &'a Option<String>,
    site: &'a Option<String>,
    fields: &'a BTreeMap<String, FieldValue>,
    lists: &'a BTreeSet<u64>,
    tags: &'a BTreeSet<String>,
    created_ms: i64,
    updated_ms: i64,
}

/// [`StoredRef`] read back (the same fields in the same order).
#[derive(serde::Deserialize)]
struct Stored {
    email: String,
    consent: ConsentState,
    phone: Option<String>,
    sms_consent: ConsentState,
    language: Option<String>,
    site: Option<String>,
    fields: BTreeMap<String, FieldValue>,
    lists: BTreeSet<u64>,
    tags: BTreeSet<String>,
    created_ms: i64,
    updated_ms: i64,
}

/// A contact's `contacts_v2` value.
pub(super) fn encode_contact(c: &Contact) -> Vec<u8> {
    let stored = StoredRef {
        email: &c.email,
        consent: c.consent,
        phone: &c.phone,
        sms_consent: c.sms_consent,
        language: &c.language,
        site: &c.site,
        fields: &c.fields,
        lists: &c.lists,
        tags: &c.tags,
        created_ms: c.created_at.timestamp_millis(),
        updated_ms: c.updated_at.timestamp_millis(),
    };
    super::enc(&stored)
}

/// Contact `id` from its `contacts_v2` value.
pub(super) fn decode_contact(id: u64, b: &[u8]) -> Result<Contact, StoreError> {
    let corrupt = |message: String| StoreError::Corrupt {
        table: "contacts",
        message,
    };
    let s: Stored = super::dec("contacts", b)?;
    let time = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .ok_or_else(|| corrupt(format!("contact {id}: time {ms} out of range")))
    };
    Ok(Contact {
        id,
        email: s.email,
        consent: s.consent,
        phone: s.phone,
        sms_consent: s.sms_consent,
        language: s.language,
        site: s.site,
        fields: s.fields,
        lists: s.lists,
        tags: s.tags,
        created_at: time(s.created_ms)?,
        updated_at: time(s.updated_ms)?,
    })
}

/// Salted SHA-256 of a normalised address, the key of the suppression list.
pub fn suppression_key(salt: &[u8], email_key: &str) -> Vec<u8> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(email_key.as_bytes());
    h.finalize().to_vec()
}

/// Keys under which per-consent-state counts are kept in META.
fn consent_count_key(s: ConsentState) -> &'static str {
    match s {
        ConsentState::Unknown => "count.consent.unknown",
        ConsentState::Pending => "count.consent.pending",
        ConsentState::Granted => "count.consent.granted",
        ConsentState::Withdrawn => "count.consent.withdrawn",
        ConsentState::Invalid => "count.consent.invalid",
    }
}

/// What [`WriteTables::claim_address`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClaim {
    /// The address was not known: it is now indexed with this new id,
    /// for the contact about to be written (or released).
    New(u64),
    /// The address belongs to this contact id; nothing changed.
    Known(u64),
}

/// Whether a new contact's address is in the index already (claimed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexed {
    Not,
    Already,
}

/// Which index a contact listing walks.
#[derive(Debug, Clone)]
pub enum ContactIndex {
    /// Every contact, by id.
    All,
    /// Members of a list.
    List(u64),
    /// Contacts with a tag.
    Tag(String),
    /// Contacts in a consent state.
    Consent(ConsentState),
}

/// What [`WriteTables::deferring`] holds back until its job ends.
pub(super) struct Deferred {
    /// The contacts the job wrote, as last written, by id.
    contacts: BTreeMap<u64, Arc<Contact>>,
    /// The index and log writes, in the order they were made.
    side: Vec<SideWrite>,
    /// The consent log entries' values, one after another.
    log_bytes: Vec<u8>,
}

/// One held-back write of the tables [`write_side`] makes.
enum SideWrite {
    Consent {
        code: u8,
        id: u64,
        add: bool,
    },
    Member {
        list: u64,
        id: u64,
        add: bool,
    },
    /// A consent log entry; its value ends at `end` in `log_bytes`, where
    /// the previous one ended it starts.
    Log {
        contact: u64,
        seq: u64,
        end: usize,
    },
}

/// Makes held-back index and log writes in order (on the second thread of
/// [`WriteTables::deferring`]).
fn write_side(
    consent: &mut redb::Table<(u8, u64), ()>,
    members: &mut redb::Table<(u64, u64), ()>,
    log: &mut redb::Table<(u64, u64), &'static [u8]>,
    side: &[SideWrite],
    log_bytes: &[u8],
) -> Result<(), StoreError> {
    let mut start = 0;
    for w in side {
        match *w {
            SideWrite::Consent {
                code,
                id,
                add: true,
            } => {
                consent.insert((code, id), ())?;
            }
            SideWrite::Consent {
                code,
                id,
                add: false,
            } => {
                consent.remove((code, id))?;
            }
            SideWrite::Member {
                list,
                id,
                add: true,
            } => {
                members.insert((list, id), ())?;
            }
            SideWrite::Member {
                list,
                id,
                add: false,
            } => {
                members.remove((list, id))?;
            }
            SideWrite::Log { contact, seq, end } => {
                let value = log_bytes.get(start..end).unwrap_or_default();
                log.insert((contact, seq), value)?;
                start = end;
            }
        }
    }
    Ok(())
}

impl WriteTables<'_> {
    /// Whether a contact exists (ids are never reused: `false` means it was
    /// erased, or never was).
    pub fn contact_exists(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.deferred_contact(id).is_some() || self.tables.contacts.read()?.get(id)?.is_some())
    }

    /// Writes a contact and keeps every index and count in step with `before`,
    /// the previously stored version (None for a new contact).
    pub fn put_contact(&mut self, c: &Contact, before: Option<&Contact>) -> Result<(), StoreError> {
        self.put_contact_with(c, before, || Arc::new(c.clone()), Indexed::Not)
    }

    /// [`WriteTables::put_contact`] of a contact the caller already shares:
    /// the observer's change holds it without a copy.
    pub fn put_shared_contact(
        &mut self,
        c: &Arc<Contact>,
        before: Option<&Contact>,
    ) -> Result<(), StoreError> {
        self.put_contact_with(c, before, || c.clone(), Indexed::Not)
    }

    /// [`WriteTables::put_shared_contact`] of a new contact whose address
    /// [`WriteTables::claim_address`] already put in the index.
    pub fn put_claimed_contact(&mut self, c: &Arc<Contact>) -> Result<(), StoreError> {
        self.put_contact_with(c, None, || c.clone(), Indexed::Already)
    }

    /// Claims a not yet known address for a new contact in one descent of
    /// the address index: the entry is written with the id the contact
    /// will have. An address that was there keeps its entry (a second
    /// write) and its id is returned. For batches of mostly new addresses,
    /// where a lookup and then an insert would descend twice.
    pub fn claim_address(&mut self, key: &str) -> Result<AddressClaim, StoreError> {
        let id = self.next_id(Sequence::Contact)?;
        let old = self
            .tables
            .contact_by_email
            .open()?
            .insert(key, id)?
            .map(|g| g.value());
        let Some(old) = old else {
            return Ok(AddressClaim::New(id));
        };
        self.tables.contact_by_email.open()?.insert(key, old)?;
        self.release_id(id)?;
        Ok(AddressClaim::Known(old))
    }

    /// Gives back a [`AddressClaim::New`] that did not become a contact
    /// (its row was refused).
    pub fn release_address(&mut self, key: &str, id: u64) -> Result<(), StoreError> {
        self.tables.contact_by_email.open()?.remove(key)?;
        self.release_id(id)
    }

    /// Takes back the last contact id handed out, if it is still the last
    /// (ids are never reused; a gap would only look odd).
    fn release_id(&mut self, id: u64) -> Result<(), StoreError> {
        if self.bump(Sequence::Contact.key(), 0)? == id {
            self.bump(Sequence::Contact.key(), -1)?;
        }
        Ok(())
    }

    fn put_contact_with(
        &mut self,
        c: &Contact,
        before: Option<&Contact>,
        shared: impl Fn() -> Arc<Contact>,
        indexed: Indexed,
    ) -> Result<(), StoreError> {
        // The lower-cased key is needed only when the index changes.
        let key = if before.is_some_and(|b| b.email == c.email) || indexed == Indexed::Already {
            String::new()
        } else {
            c.email.to_lowercase()
        };
        match before {
            None => {
                if indexed == Indexed::Not {
                    self.tables
                        .contact_by_email
                        .open()?
                        .insert(key.as_str(), c.id)?;
                }
                self.consent_entry(c.consent.code(), c.id, true)?;
                self.bump(consent_count_key(c.consent), 1)?;
            }
            Some(b) => {
                if b.email != c.email {
                    let old_key = b.email.to_lowercase();
                    if old_key != key {
                        self.tables
                            .contact_by_email
                            .open()?
                            .remove(old_key.as_str())?;
                        self.tables
                            .contact_by_email
                            .open()?
                            .insert(key.as_str(), c.id)?;
                    }
                }
                if b.consent != c.consent {
                    self.consent_entry(b.consent.code(), c.id, false)?;
                    self.consent_entry(c.consent.code(), c.id, true)?;
                    self.bump(consent_count_key(b.consent), -1)?;
                    self.bump(consent_count_key(c.consent), 1)?;
                }
            }
        }
        let old_phone = before.and_then(|b| b.phone.as_deref());
        if old_phone != c.phone.as_deref() {
            if let Some(p) = old_phone {
                self.tables.contact_by_phone.open()?.remove((p, c.id))?;
            }
            if let Some(p) = &c.phone {
                self.tables
                    .contact_by_phone
                    .open()?
                    .insert((p.as_str(), c.id), ())?;
            }
        }
        let empty_lists = Default::default();
        let empty_tags = Default::default();
        let (old_lists, old_tags) =
            before.map_or((&empty_lists, &empty_tags), |b| (&b.lists, &b.tags));
        for l in c.lists.difference(old_lists) {
            self.member_entry(*l, c.id, true)?;
            self.list_count(*l, 1)?;
        }
        for l in old_lists.difference(&c.lists) {
            self.member_entry(*l, c.id, false)?;
            self.list_count(*l, -1)?;
        }
        for t in c.tags.difference(old_tags) {
            self.tables
                .tag_members
                .open()?
                .insert((t.as_str(), c.id), ())?;
        }
        for t in old_tags.difference(&c.tags) {
            self.tables.tag_members.open()?.remove((t.as_str(), c.id))?;
        }
        match &mut self.deferred {
            Some(d) => {
                d.contacts.insert(c.id, shared());
            }
            None => {
                self.tables
                    .contacts
                    .open()?
                    .insert(c.id, encode_contact(c).as_slice())?;
            }
        }
        self.note(|| Change::Contact {
            contact: shared(),
            removed_lists: old_lists.difference(&c.lists).copied().collect(),
            removed_tags: old_tags.difference(&c.tags).cloned().collect(),
            added_lists: c.lists.difference(old_lists).copied().collect(),
            added_tags: c.tags.difference(old_tags).cloned().collect(),
            consent_before: before.map(|b| b.consent),
        });
        Ok(())
    }

    fn list_count(&mut self, list_id: u64, delta: i64) -> Result<(), StoreError> {
        *self.list_deltas.entry(list_id).or_default() += delta;
        Ok(())
    }

    /// Removes a contact, its indexes and its consent log.
    pub fn delete_contact(&mut self, c: &Contact) -> Result<(), StoreError> {
        let mut gone = c.clone();
        gone.lists.clear();
        gone.tags.clear();
        gone.phone = None;
        self.put_contact(&gone, Some(c))?;
        self.tables
            .contact_by_email
            .open()?
            .remove(c.email.to_lowercase().as_str())?;
        self.tables
            .contact_by_consent
            .open()?
            .remove((c.consent.code(), c.id))?;
        self.bump(consent_count_key(c.consent), -1)?;
        self.tables.contacts.open()?.remove(c.id)?;
        self.delete_shop_data(c.id)?;
        self.delete_automation_data(c.id)?;
        self.note(|| Change::ContactDeleted(c.id));
        let seqs: Vec<u64> = self
            .tables
            .consent_log
            .open()?
            .range((c.id, 0)..=(c.id, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for s in seqs {
            self.tables.consent_log.open()?.remove((c.id, s))?;
        }
        Ok(())
    }

    /// Appends to a contact's consent log.
    pub fn append_consent(&mut self, contact_id: u64, e: &ConsentEvent) -> Result<(), StoreError> {
        let seq = self.next_id(Sequence::Consent)?;
        let bytes = encode_consent(e);
        match &mut self.deferred {
            Some(d) => {
                d.log_bytes.extend_from_slice(&bytes);
                d.side.push(SideWrite::Log {
                    contact: contact_id,
                    seq,
                    end: d.log_bytes.len(),
                });
            }
            None => {
                self.tables
                    .consent_log
                    .open()?
                    .insert((contact_id, seq), bytes.as_slice())?;
            }
        }
        Ok(())
    }

    /// Adds or removes a consent index entry (held back while deferring).
    fn consent_entry(&mut self, code: u8, id: u64, add: bool) -> Result<(), StoreError> {
        match &mut self.deferred {
            Some(d) => d.side.push(SideWrite::Consent { code, id, add }),
            None if add => {
                self.tables
                    .contact_by_consent
                    .open()?
                    .insert((code, id), ())?;
            }
            None => {
                self.tables.contact_by_consent.open()?.remove((code, id))?;
            }
        }
        Ok(())
    }

    /// Adds or removes a list membership (held back while deferring).
    fn member_entry(&mut self, list: u64, id: u64, add: bool) -> Result<(), StoreError> {
        match &mut self.deferred {
            Some(d) => d.side.push(SideWrite::Member { list, id, add }),
            None if add => {
                self.tables.list_members.open()?.insert((list, id), ())?;
            }
            None => {
                self.tables.list_members.open()?.remove((list, id))?;
            }
        }
        Ok(())
    }

    /// Runs `job`, a run of contact upserts (an import batch), with the
    /// contact records and the consent index, list membership and consent
    /// log writes held back, then makes them at its end: the records on
    /// this thread, in id order, and the rest, in the order they were made,
    /// on a second one (redb writes separate tables of one transaction
    /// concurrently). Reads of a contact in the job see the held-back
    /// record ([`ReadTables::contact`]); the job must not read the three
    /// held-back tables, and only contact upserts write them. A job that
    /// fails leaves its transaction to be aborted, so nothing held back is
    /// written.
    ///
    /// `rows` is how many upserts the job makes, for the buffers' sizes.
    pub fn deferring<R>(
        &mut self,
        rows: usize,
        job: impl FnOnce(&mut Self) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.deferred = Some(Deferred {
            contacts: BTreeMap::new(),
            // A new contact: its consent entry, membership and log entry.
            side: Vec::with_capacity(rows * 3),
            log_bytes: Vec::with_capacity(rows * 40),
        });
        let r = job(self);
        let held = self.deferred.take();
        let r = r?;
        if let Some(d) = held {
            self.write_deferred(d)?;
        }
        Ok(r)
    }

    /// The held-back record of contact `id`, if a deferring job wrote it.
    pub(super) fn deferred_contact(&self, id: u64) -> Option<&Arc<Contact>> {
        self.deferred.as_ref()?.contacts.get(&id)
    }

    fn write_deferred(&mut self, d: Deferred) -> Result<(), StoreError> {
        let super::tables::Tables {
            contacts,
            contact_by_consent,
            list_members,
            consent_log,
            ..
        } = &mut self.tables;
        let (contacts, contact_by_consent, list_members, consent_log) = (
            contacts.open()?,
            contact_by_consent.open()?,
            list_members.open()?,
            consent_log.open()?,
        );
        let side = |c: &mut _, m: &mut _, l: &mut _| write_side(c, m, l, &d.side, &d.log_bytes);
        std::thread::scope(|s| {
            let helper = std::thread::Builder::new()
                .name("herald-store-ix".into())
                .spawn_scoped(s, || side(contact_by_consent, list_members, consent_log));
            let records = (|| {
                for (id, c) in &d.contacts {
                    contacts.insert(*id, encode_contact(c).as_slice())?;
                }
                Ok::<_, StoreError>(())
            })();
            let indexes = match helper {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(StoreError::Redb("the index writer thread panicked".into()))
                }),
                Err(e) => Err(StoreError::Redb(format!(
                    "cannot start the index writer thread: {e}"
                ))),
            };
            records.and(indexes)
        })
    }

    /// Whether the salted hash of this address is suppressed.
    pub fn suppression(&self, hash: &[u8]) -> Result<Option<Suppression>, StoreError> {
        get_json(self.tables.suppressions.read()?, "suppressions", hash)
    }

    /// Whether any address is suppressed at all (cheap; lets callers skip
    /// hashing when the list is empty).
    pub fn any_suppressed(&self) -> bool {
        self.any_suppressed
    }

    /// Suppresses an address hash.
    pub fn put_suppression(&mut self, hash: &[u8], s: &Suppression) -> Result<(), StoreError> {
        self.any_suppressed = true;
        self.tables
            .suppressions
            .open()?
            .insert(hash, to_json(s).as_slice())?;
        Ok(())
    }

    /// A field definition, from a per-transaction cache (for per-row checks).
    pub fn field_cached(&mut self, name: &str) -> Result<Option<&FieldDef>, StoreError> {
        if self.field_defs.is_none() {
            let all: Vec<FieldDef> = all_json(self.tables.fields.read()?, "fields")?;
            self.field_defs = Some(all.into_iter().map(|f| (f.name.clone(), f)).collect());
        }
        Ok(self.field_defs.as_ref().and_then(|m| m.get(name)))
    }

    /// Writes a field definition.
    pub fn put_field(&mut self, f: &FieldDef) -> Result<(), StoreError> {
        if let Some(m) = self.field_defs.as_mut() {
            m.insert(f.name.clone(), f.clone());
        }
        self.tables
            .fields
            .open()?
            .insert(f.name.as_str(), to_json(f).as_slice())?;
        Ok(())
    }

    /// Deletes a field and removes its values from every contact. Returns how
    /// many contacts had a value.
    pub fn delete_field(&mut self, name: &str) -> Result<u64, StoreError> {
        self.tables.fields.open()?.remove(name)?;
        if let Some(m) = self.field_defs.as_mut() {
            m.remove(name);
        }
        let mut changed = Vec::new();
        for r in self.tables.contacts.open()?.iter()? {
            let (k, v) = r?;
            let mut c = decode_contact(k.value(), v.value())?;
            if c.fields.remove(name).is_some() {
                changed.push(c);
            }
        }
        for c in &changed {
            self.tables
                .contacts
                .open()?
                .insert(c.id, encode_contact(c).as_slice())?;
        }
        self.note(|| Change::FieldDeleted(name.to_string()));
        Ok(changed.len() as u64)
    }

    /// Whether a list exists (cheaper than [`ReadTables::list`]).
    pub fn list_exists(&self, id: u64) -> Result<bool, StoreError> {
        Ok(self.tables.lists.read()?.get(id)?.is_some())
    }

    /// Writes a list, keeping the name index in step with `old_name`.
    pub fn put_list(&mut self, l: &List, old_name: Option<&str>) -> Result<(), StoreError> {
        if let Some(old) = old_name {
            self.tables
                .list_by_name
                .open()?
                .remove(old.to_lowercase().as_str())?;
        }
        self.tables
            .list_by_name
            .open()?
            .insert(l.name.to_lowercase().as_str(), l.id)?;
        // `l` comes from `list()`, whose member_count already includes this
        // transaction's pending changes: they are now part of the record and
        // must not be applied again by `flush`.
        self.list_deltas.remove(&l.id);
        self.tables
            .lists
            .open()?
            .insert(l.id, to_json(l).as_slice())?;
        Ok(())
    }

    /// Deletes a list and takes every member out of it.
    pub fn delete_list(&mut self, l: &List) -> Result<(), StoreError> {
        let members: Vec<u64> = self
            .tables
            .list_members
            .open()?
            .range((l.id, 0)..=(l.id, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for id in members {
            self.tables.list_members.open()?.remove((l.id, id))?;
            if let Some(mut c) = self.contact(id)? {
                c.lists.remove(&l.id);
                self.tables
                    .contacts
                    .open()?
                    .insert(c.id, encode_contact(&c).as_slice())?;
            }
        }
        self.tables
            .list_by_name
            .open()?
            .remove(l.name.to_lowercase().as_str())?;
        self.tables.lists.open()?.remove(l.id)?;
        self.list_deltas.remove(&l.id);
        self.note(|| Change::ListDeleted(l.id));
        Ok(())
    }

    /// Writes an import record.
    pub fn put_import(&mut self, r: &ImportRecord) -> Result<(), StoreError> {
        self.tables
            .imports
            .open()?
            .insert(r.id, to_json(r).as_slice())?;
        Ok(())
    }

    /// Deletes an import record and every rejected row stored with it.
    /// Returns how many rejected rows were removed.
    pub fn delete_import(&mut self, id: u64) -> Result<u64, StoreError> {
        let lines: Vec<u64> = self
            .tables
            .import_rejects
            .open()?
            .range((id, 0)..=(id, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for l in &lines {
            self.tables.import_rejects.open()?.remove((id, *l))?;
        }
        self.tables.imports.open()?.remove(id)?;
        Ok(lines.len() as u64)
    }

    /// Records a rejected import row.
    pub fn put_import_reject(
        &mut self,
        import: u64,
        line: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.tables
            .import_rejects
            .open()?
            .insert((import, line), reason)?;
        Ok(())
    }
}

impl ReadView {
    /// Up to `limit` contact ids from `index`, greater than `after`, in id order.
    pub fn contact_ids(
        &self,
        index: &ContactIndex,
        after: u64,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let start = after.saturating_add(1);
        let mut out = Vec::with_capacity(limit.min(1024));
        macro_rules! take {
            ($iter:expr, $map:expr) => {
                for r in $iter {
                    if out.len() >= limit {
                        break;
                    }
                    let (k, _) = r?;
                    out.push($map(k.value()));
                }
            };
        }
        match index {
            ContactIndex::All => take!(self.tables.contacts()?.range(start..)?, |k: u64| k),
            ContactIndex::List(l) => {
                take!(
                    self.tables
                        .list_members()?
                        .range((*l, start)..=(*l, u64::MAX))?,
                    |k: (u64, u64)| k.1
                )
            }
            ContactIndex::Consent(s) => {
                let c = s.code();
                take!(
                    self.tables
                        .contact_by_consent()?
                        .range((c, start)..=(c, u64::MAX))?,
                    |k: (u8, u64)| k.1
                )
            }
            ContactIndex::Tag(t) => {
                take!(
                    self.tables
                        .tag_members()?
                        .range((t.as_str(), start)..=(t.as_str(), u64::MAX))?,
                    |k: (&str, u64)| k.1
                )
            }
        }
        Ok(out)
    }

    /// Up to `limit` contacts whose lower-cased address starts with
    /// `prefix`, in address order, each with its address key; after the
    /// key `after` (exclusive) when given.
    pub fn contact_ids_by_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        use std::ops::Bound;
        let t = self.tables.contact_by_email()?;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for r in t.range::<&str>((start, Bound::Unbounded))? {
            let (k, v) = r?;
            let key = k.value();
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((key.to_string(), v.value()));
        }
        Ok(out)
    }

    /// A contact's consent log, oldest first.
    pub fn consent_log(&self, contact_id: u64) -> Result<Vec<ConsentEvent>, StoreError> {
        let t = self.tables.consent_log()?;
        let mut out = Vec::new();
        for r in t.range((contact_id, 0)..=(contact_id, u64::MAX))? {
            let (_, v) = r?;
            out.push(decode_consent(v.value())?);
        }
        Ok(out)
    }

    /// Number of contacts in each consent state.
    pub fn consent_counts(&self) -> Result<Vec<(ConsentState, u64)>, StoreError> {
        let meta = self.tables.meta()?;
        ConsentState::ALL
            .into_iter()
            .map(|s| Ok((s, meta_u64(meta, consent_count_key(s))?)))
            .collect()
    }

    /// Every field definition, by name.
    pub fn fields(&self) -> Result<Vec<FieldDef>, StoreError> {
        all_json(self.tables.fields()?, "fields")
    }

    /// Every list, by id.
    pub fn lists(&self) -> Result<Vec<List>, StoreError> {
        all_json(self.tables.lists()?, "lists")
    }

    /// Up to `limit` rejected rows of an import with line numbers after `after`.
    pub fn import_rejects(
        &self,
        import: u64,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let t = self.tables.import_rejects()?;
        let mut out = Vec::new();
        for r in t
            .range((import, after.saturating_add(1))..=(import, u64::MAX))?
            .take(limit)
        {
            let (k, v) = r?;
            out.push((k.value().1, v.value().to_string()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contacts::model::FieldValue;

    /// Consent entries come back as they went in; the enums' positions are
    /// part of the stored form.
    #[test]
    fn consent_entries_come_back_and_enum_positions_are_pinned() -> Result<(), super::StoreError> {
        use crate::contacts::model::{Channel, ConsentEvent, ConsentSource, ConsentState};
        let e = ConsentEvent {
            at: chrono::DateTime::from_timestamp_millis(1_764_900_000_123).unwrap_or_default(),
            channel: Channel::Sms,
            from: ConsentState::Withdrawn,
            to: ConsentState::Granted,
            source: ConsentSource::Reply,
            ip: Some("192.0.2.7".into()),
            user_agent: None,
            note: Some("import 4".into()),
        };
        let b = super::encode_consent(&e);
        assert_eq!(super::decode_consent(&b)?, e);
        assert!(b.len() * 3 < super::to_json(&e).len(), "{}", b.len());
        let pos = |b: Vec<u8>| b.first().copied();
        use super::super::enc;
        assert_eq!(pos(enc(&ConsentState::Invalid)), Some(4));
        assert_eq!(pos(enc(&ConsentSource::Reply)), Some(6));
        assert_eq!(pos(enc(&Channel::Sms)), Some(1));
        assert!(super::decode_consent(&b[..3]).is_err());
        Ok(())
    }

    /// Every part of a contact survives the stored form, which is less
    /// than half the JSON's size for a contact of the shop fields.
    #[test]
    fn a_contact_round_trips_through_its_stored_form() {
        let day = chrono::NaiveDate::from_ymd_opt(1987, 6, 5).unwrap_or_default();
        let at = chrono::DateTime::from_timestamp_millis(1_764_000_000_123).unwrap_or_default();
        let fields = [
            ("affiliate", FieldValue::Boolean(false)),
            ("birthday", FieldValue::Date(day)),
            ("city", FieldValue::Text("Kraków".into())),
            ("country", FieldValue::Text("PL".into())),
            ("customer_group", FieldValue::Text("retail".into())),
            ("customer_id", FieldValue::Text("123456".into())),
            ("customer_type", FieldValue::Choice("person".into())),
            ("first_name", FieldValue::Text("Zofia".into())),
            ("last_name", FieldValue::Text("Wiśniewska".into())),
            ("registered_at", FieldValue::Date(day)),
            ("score", FieldValue::Number("12.5".into())),
        ];
        let c = Contact {
            id: 123_456,
            email: "c123456@example.com".into(),
            consent: ConsentState::Withdrawn,
            phone: Some("+48500100200".into()),
            sms_consent: ConsentState::Granted,
            language: Some("pl".into()),
            site: None,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            lists: [3, 9].into(),
            tags: ["vip".to_string()].into(),
            created_at: at,
            updated_at: at + chrono::Duration::days(3),
        };
        let stored = encode_contact(&c);
        let back = decode_contact(c.id, &stored);
        assert_eq!(back.as_ref().ok(), Some(&c), "{back:?}");
        let json = to_json(&c);
        assert!(
            stored.len() * 2 < json.len(),
            "{} vs {}",
            stored.len(),
            json.len()
        );
        assert!(matches!(
            decode_contact(1, &stored[..stored.len() - 4]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
