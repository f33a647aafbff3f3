//! Admin UI users (`users_v1`), their sessions (`sessions_v1`), the
//! activity log (`activity_v1`, `activity_by_object_v1`) and the owners of
//! campaigns and automations (`owners_v1`).

use redb::{ReadableTable, ReadableTableMetadata};

use super::tables::TableSet;
use super::{ReadView, Sequence, StoreError, WriteTables, from_json, get_json, to_json};
use crate::users::{Activity, Session, User};

impl WriteTables<'_> {
    /// Creates or replaces a user.
    pub fn put_user(&mut self, u: &User) -> Result<(), StoreError> {
        self.tables
            .users
            .open()?
            .insert(u.name.as_str(), to_json(u).as_slice())?;
        Ok(())
    }

    /// A user by name (inside a write).
    pub fn user_for_write(&self, name: &str) -> Result<Option<User>, StoreError> {
        get_json(self.tables.users.read()?, "users", name)
    }

    /// Every user (inside a write).
    pub fn users_for_write(&self) -> Result<Vec<User>, StoreError> {
        super::all_json(self.tables.users.read()?, "users")
    }

    /// Removes a user and every session of theirs; false when there was none.
    pub fn delete_user(&mut self, name: &str) -> Result<bool, StoreError> {
        let had = self.tables.users.open()?.remove(name)?.is_some();
        self.delete_sessions_of(name)?;
        Ok(had)
    }

    /// Ends every session of a user (password changed, user removed).
    pub fn delete_sessions_of(&mut self, name: &str) -> Result<(), StoreError> {
        let mut gone = Vec::new();
        for r in self.tables.sessions.open()?.iter()? {
            let (k, v) = r?;
            let s: Session = from_json("sessions", v.value())?;
            if s.user == name {
                gone.push(k.value().to_string());
            }
        }
        for k in gone {
            self.tables.sessions.open()?.remove(k.as_str())?;
        }
        Ok(())
    }

    /// Stores a session under its token's key; sessions past `now` are
    /// removed on the way (there are few: one per login).
    pub fn put_session(&mut self, key: &str, s: &Session, now: i64) -> Result<(), StoreError> {
        let mut expired = Vec::new();
        for r in self.tables.sessions.open()?.iter()? {
            let (k, v) = r?;
            let old: Session = from_json("sessions", v.value())?;
            if old.expires <= now {
                expired.push(k.value().to_string());
            }
        }
        for k in expired {
            self.tables.sessions.open()?.remove(k.as_str())?;
        }
        self.tables
            .sessions
            .open()?
            .insert(key, to_json(s).as_slice())?;
        Ok(())
    }

    /// Ends a session (logout).
    pub fn delete_session(&mut self, key: &str) -> Result<(), StoreError> {
        self.tables.sessions.open()?.remove(key)?;
        Ok(())
    }

    /// Appends an entry to the activity log; returns its sequence number.
    pub fn append_activity(&mut self, a: &Activity) -> Result<u64, StoreError> {
        let seq = self.next_id(Sequence::Activity)?;
        self.tables
            .activity
            .open()?
            .insert(seq, to_json(a).as_slice())?;
        if let Some(object) = &a.object {
            self.tables
                .activity_by_object
                .open()?
                .insert((object.as_str(), seq), ())?;
        }
        Ok(seq)
    }

    /// The owner of an object (inside a write).
    pub fn owner_for_write(&self, object: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables
            .owners
            .read()?
            .get(object)?
            .map(|v| v.value().to_string()))
    }

    /// Sets (or, with `None`, clears) the owner of an object.
    pub fn set_owner(&mut self, object: &str, user: Option<&str>) -> Result<(), StoreError> {
        match user {
            Some(u) => {
                self.tables.owners.open()?.insert(object, u)?;
            }
            None => {
                self.tables.owners.open()?.remove(object)?;
            }
        }
        Ok(())
    }
}

impl ReadView {
    /// A user by name.
    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        get_json(self.tables.users()?, "users", name)
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        super::all_json(self.tables.users()?, "users")
    }

    /// A session by its token's key.
    pub fn session(&self, key: &str) -> Result<Option<Session>, StoreError> {
        get_json(self.tables.sessions()?, "sessions", key)
    }

    /// Activity entries, newest first: those before `before` (a sequence
    /// number; all when `None`), at most `limit`, of one object when given.
    pub fn activity(
        &self,
        object: Option<&str>,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Activity)>, StoreError> {
        let log = self.tables.activity()?;
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        match object {
            None => {
                for r in log.range(..end)?.rev().take(limit) {
                    let (k, v) = r?;
                    out.push((k.value(), from_json("activity", v.value())?));
                }
            }
            Some(o) => {
                let by = self.tables.activity_by_object()?;
                for r in by.range((o, 0)..(o, end))?.rev().take(limit) {
                    let (k, _) = r?;
                    let seq = k.value().1;
                    if let Some(v) = log.get(seq)? {
                        out.push((seq, from_json("activity", v.value())?));
                    }
                }
            }
        }
        Ok(out)
    }

    /// How many activity entries there are.
    pub fn activity_len(&self) -> Result<u64, StoreError> {
        Ok(self.tables.activity()?.len()?)
    }

    /// The owner of an object (`campaign:3`, `automation:welcome`).
    pub fn owner(&self, object: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables
            .owners()?
            .get(object)?
            .map(|v| v.value().to_string()))
    }

    /// Every owner of a kind of object (`campaign`), by the object's id.
    pub fn owners_of(
        &self,
        kind: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let prefix = format!("{kind}:");
        let mut out = std::collections::HashMap::new();
        for r in self.tables.owners()?.range(prefix.as_str()..)? {
            let (k, v) = r?;
            let Some(id) = k.value().strip_prefix(&prefix) else {
                break;
            };
            out.insert(id.to_string(), v.value().to_string());
        }
        Ok(out)
    }
}
