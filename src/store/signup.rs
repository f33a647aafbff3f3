//! Signup requests waiting for their confirmation click
//! (`signup_requests_v1`), and the one consent-log read the confirmation
//! needs (when the contact last withdrew).

use redb::ReadableTable;

use super::tables::TableSet;
use super::{ReadView, StoreError, WriteTables, from_json, to_json};
use crate::contacts::model::ConsentState;
use crate::contacts::signup::SignupRequest;

impl WriteTables<'_> {
    /// Notes a signup (or its confirmation) for whatever follows changes
    /// (automations' `signup` and `confirmed` triggers).
    pub fn note_signup(&mut self, contact: u64, list: Option<u64>, confirmed: bool) {
        self.note(|| super::Change::Signup {
            contact,
            list,
            confirmed,
        });
    }

    /// Records a signup request; returns its number (what the confirmation
    /// token names).
    pub fn put_signup_request(
        &mut self,
        contact: u64,
        r: &SignupRequest,
    ) -> Result<u64, StoreError> {
        let n = self.next_id(super::Sequence::Signup)?;
        self.tables
            .signup_requests
            .open()?
            .insert((contact, n), to_json(r).as_slice())?;
        Ok(n)
    }

    /// Removes and returns the request a confirmation token names: a token
    /// works once.
    pub fn take_signup_request(
        &mut self,
        contact: u64,
        request: u64,
    ) -> Result<Option<SignupRequest>, StoreError> {
        let old = self
            .tables
            .signup_requests
            .open()?
            .remove((contact, request))?;
        match old {
            Some(v) => Ok(Some(from_json("signup_requests", v.value())?)),
            None => Ok(None),
        }
    }

    /// Removes every request of a contact (erasure).
    pub fn delete_signup_requests(&mut self, contact: u64) -> Result<(), StoreError> {
        let keys: Vec<(u64, u64)> = self
            .tables
            .signup_requests
            .open()?
            .range((contact, 0)..=(contact, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()?;
        for k in keys {
            self.tables.signup_requests.open()?.remove(k)?;
        }
        Ok(())
    }

    /// When (ms) the contact last moved to `withdrawn` or `invalid`, from the
    /// consent log; `None` when it never did.
    pub fn last_withdrawal_ms(&self, contact: u64) -> Result<Option<i64>, StoreError> {
        for r in self
            .tables
            .consent_log
            .read()?
            .range((contact, 0)..=(contact, u64::MAX))?
            .rev()
        {
            let (_, v) = r?;
            let e = super::contacts::decode_consent(v.value())?;
            if matches!(e.to, ConsentState::Withdrawn | ConsentState::Invalid) {
                return Ok(Some(e.at.timestamp_millis()));
            }
        }
        Ok(None)
    }
}

impl ReadView {
    /// A contact's open signup requests (number, request), oldest first:
    /// part of their data export.
    pub fn signup_requests_of(
        &self,
        contact: u64,
    ) -> Result<Vec<(u64, SignupRequest)>, StoreError> {
        let t = self.tables.signup_requests()?;
        let mut out = Vec::new();
        for r in t.range((contact, 0)..=(contact, u64::MAX))? {
            let (k, v) = r?;
            out.push((k.value().1, from_json("signup_requests", v.value())?));
        }
        Ok(out)
    }
}
