//! Automation runs and their timers, stored flows, per-step counts, and
//! the recent-marketing index of the frequency cap.
//!
//! A run is JSON of a type the store does not know (the automation's), keyed
//! by (flow id, contact, occurrence). [`WriteTables::put_run`] is the only
//! writer of the three indexes that follow a run — by due time, by flow and
//! step, by contact — so they cannot drift from the runs.

use redb::{ReadableTable, ReadableTableMetadata};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::tables::*;
use super::{ReadTables, ReadView, StoreError, WriteTables, from_json, to_json};

/// (flow id, contact id, occurrence): one run of a flow.
pub type RunKey = (u64, u64, u64);

/// Where a pending run waits: its next step and when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The step.
    pub step: u32,
    /// When, in ms.
    pub at: i64,
}

impl WriteTables<'_> {
    /// Writes a run; `due` is where it waits from now on (`None`: it does
    /// not wait: it ended). The timer indexes move with it.
    pub fn put_run<R: Serialize>(
        &mut self,
        key: RunKey,
        run: &R,
        due: Option<Due>,
    ) -> Result<(), StoreError> {
        let (flow, contact, occ) = key;
        let was = self.run_due(key)?;
        if was != due {
            if let Some(d) = was {
                self.tables
                    .auto_due
                    .open()?
                    .remove((d.at, flow, contact, occ))?;
                self.tables
                    .auto_flow_due
                    .open()?
                    .remove((flow, d.step, d.at, contact, occ))?;
            }
            if let Some(d) = due {
                self.tables
                    .auto_due
                    .open()?
                    .insert((d.at, flow, contact, occ), ())?;
                self.tables
                    .auto_flow_due
                    .open()?
                    .insert((flow, d.step, d.at, contact, occ), ())?;
            }
        }
        self.tables
            .auto_runs
            .open()?
            .insert(key, to_json(run).as_slice())?;
        let w = due.map_or((u32::MAX, 0), |d| (d.step, d.at));
        self.tables
            .auto_by_contact
            .open()?
            .insert((contact, flow, occ), w)?;
        Ok(())
    }

    /// The keys of a contact's runs of one flow.
    pub fn runs_in_flow(&self, flow: u64, contact: u64) -> Result<Vec<RunKey>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .auto_by_contact
            .read()?
            .range((contact, flow, 0)..=(contact, flow, u64::MAX))?
        {
            let (k, _) = r?;
            out.push((flow, contact, k.value().2));
        }
        Ok(out)
    }

    /// Removes everything automations keep about a contact (erasure):
    /// runs, their timers, entries and the recent-marketing index.
    pub(super) fn delete_automation_data(&mut self, contact: u64) -> Result<(), StoreError> {
        for (flow, c, occ) in self.runs_of(contact)? {
            if let Some(d) = self.run_due((flow, c, occ))? {
                self.tables.auto_due.open()?.remove((d.at, flow, c, occ))?;
                self.tables
                    .auto_flow_due
                    .open()?
                    .remove((flow, d.step, d.at, c, occ))?;
            }
            self.tables.auto_runs.open()?.remove((flow, c, occ))?;
            self.tables.auto_by_contact.open()?.remove((c, flow, occ))?;
            self.tables.auto_entries.open()?.remove((flow, c))?;
        }
        let flows: Vec<u64> = self
            .tables
            .auto_members
            .open()?
            .iter()?
            .filter_map(|r| r.ok().map(|(k, _)| k.value()))
            .filter(|(_, c)| *c == contact)
            .map(|(f, _)| f)
            .collect();
        for f in flows {
            self.tables.auto_members.open()?.remove((f, contact))?;
        }
        let recent: Vec<i64> = self
            .tables
            .send_recent
            .open()?
            .range((contact, i64::MIN)..=(contact, i64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for at in recent {
            self.tables.send_recent.open()?.remove((contact, at))?;
        }
        Ok(())
    }

    /// Removes a due entry that no waiting run stands behind (the run
    /// waits elsewhere, or not at all).
    pub fn drop_orphan_due(&mut self, at: i64, key: RunKey) -> Result<(), StoreError> {
        let (flow, contact, occ) = key;
        if self.run_due(key)?.is_some_and(|d| d.at == at) {
            return Ok(());
        }
        self.tables
            .auto_due
            .open()?
            .remove((at, flow, contact, occ))?;
        let stale: Vec<u32> = self
            .tables
            .auto_flow_due
            .open()?
            .range((flow, 0, i64::MIN, 0, 0)..=(flow, u32::MAX, i64::MAX, u64::MAX, u64::MAX))?
            .filter_map(|r| r.ok().map(|(k, _)| k.value()))
            .filter(|(_, _, a, c, o)| *a == at && *c == contact && *o == occ)
            .map(|(_, step, _, _, _)| step)
            .collect();
        for step in stale {
            self.tables
                .auto_flow_due
                .open()?
                .remove((flow, step, at, contact, occ))?;
        }
        Ok(())
    }

    /// A flow's waiting runs due up to `until` (every step).
    pub fn flow_waiting(&self, flow: u64, until: i64) -> Result<Vec<(RunKey, Due)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .auto_flow_due
            .read()?
            .range((flow, 0, i64::MIN, 0, 0)..=(flow, u32::MAX, i64::MAX, u64::MAX, u64::MAX))?
        {
            let (k, _) = r?;
            let (_, step, at, contact, occ) = k.value();
            if at <= until {
                out.push(((flow, contact, occ), Due { step, at }));
            }
        }
        Ok(out)
    }

    /// Replaces a `segment_entered` flow's members: adds `joined`, removes
    /// `left`.
    pub fn update_members(
        &mut self,
        flow: u64,
        joined: &[u64],
        left: &[u64],
    ) -> Result<(), StoreError> {
        for c in joined {
            self.tables.auto_members.open()?.insert((flow, *c), ())?;
        }
        for c in left {
            self.tables.auto_members.open()?.remove((flow, *c))?;
        }
        Ok(())
    }

    /// When the contact last entered the flow (ms).
    pub fn entered_at(&self, flow: u64, contact: u64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .tables
            .auto_entries
            .read()?
            .get((flow, contact))?
            .map(|v| v.value()))
    }

    /// Records that the contact entered the flow at `at` (ms).
    pub fn put_entered(&mut self, flow: u64, contact: u64, at: i64) -> Result<(), StoreError> {
        self.tables
            .auto_entries
            .open()?
            .insert((flow, contact), at)?;
        Ok(())
    }

    /// Adds `by` to a flow's counter for a step (`u32::MAX`: the flow).
    pub fn count_step(
        &mut self,
        flow: u64,
        step: u32,
        counter: &str,
        by: u64,
    ) -> Result<(), StoreError> {
        // Summed in memory and written once by `flush`.
        match self.step_deltas.get_mut(&(flow, step, counter.to_string())) {
            Some(d) => *d = d.saturating_add(by),
            None => {
                self.step_deltas
                    .insert((flow, step, counter.to_string()), by);
            }
        }
        Ok(())
    }

    /// Stores a flow record (JSON of the caller's type) under its name.
    pub fn put_flow_record<T: Serialize>(&mut self, name: &str, f: &T) -> Result<(), StoreError> {
        self.tables
            .auto_flows
            .open()?
            .insert(name, to_json(f).as_slice())?;
        Ok(())
    }

    /// Deletes a flow record; false if there was none.
    pub fn delete_flow_record(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self.tables.auto_flows.open()?.remove(name)?.is_some())
    }

    /// Marketing messages queued for `contact` since `since` (ms), and the
    /// time of the oldest of them; entries older than `since` are pruned.
    pub fn marketing_since(
        &mut self,
        contact: u64,
        since: i64,
    ) -> Result<(u32, Option<i64>), StoreError> {
        let old: Vec<i64> = self
            .tables
            .send_recent
            .open()?
            .range((contact, i64::MIN)..(contact, since))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for at in old {
            self.tables.send_recent.open()?.remove((contact, at))?;
        }
        let mut n = 0u32;
        let mut oldest = None;
        for r in self
            .tables
            .send_recent
            .open()?
            .range((contact, since)..=(contact, i64::MAX))?
        {
            let (k, v) = r?;
            oldest.get_or_insert(k.value().1);
            n = n.saturating_add(v.value());
        }
        Ok((n, oldest))
    }

    /// Notes a marketing message queued for `contact` at `at` (ms).
    pub fn note_marketing(&mut self, contact: u64, at: i64) -> Result<(), StoreError> {
        let n = self
            .tables
            .send_recent
            .open()?
            .get((contact, at))?
            .map(|v| v.value())
            .unwrap_or(0);
        self.tables
            .send_recent
            .open()?
            .insert((contact, at), n.saturating_add(1))?;
        Ok(())
    }
}

impl ReadView {
    /// Pending runs due at or before `now`, earliest first, at most `limit`.
    pub fn due_runs(&self, now: i64, limit: usize) -> Result<Vec<(i64, RunKey)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .auto_due()?
            .range(..=(now, u64::MAX, u64::MAX, u64::MAX))?
        {
            let (k, _) = r?;
            let (at, flow, contact, occ) = k.value();
            out.push((at, (flow, contact, occ)));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// When the earliest pending run is due.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.tables.auto_due()?.first()?.map(|(k, _)| k.value().0))
    }

    /// Pending runs of a flow per step: (step, how many, earliest due).
    pub fn flow_pending(&self, flow: u64) -> Result<Vec<(u32, u64, i64)>, StoreError> {
        let mut out: Vec<(u32, u64, i64)> = Vec::new();
        for r in self
            .tables
            .auto_flow_due()?
            .range((flow, 0, i64::MIN, 0, 0)..=(flow, u32::MAX, i64::MAX, u64::MAX, u64::MAX))?
        {
            let (k, _) = r?;
            let (_, step, at, _, _) = k.value();
            match out.last_mut() {
                Some(last) if last.0 == step => {
                    last.1 += 1;
                    last.2 = last.2.min(at);
                }
                _ => out.push((step, 1, at)),
            }
        }
        Ok(out)
    }

    /// A `segment_entered` flow's members at its last check, ascending.
    pub fn members(&self, flow: u64) -> Result<Vec<u64>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .auto_members()?
            .range((flow, 0)..=(flow, u64::MAX))?
        {
            out.push(r?.0.value().1);
        }
        Ok(out)
    }

    /// Pending runs in total (every flow).
    pub fn pending_runs(&self) -> Result<u64, StoreError> {
        Ok(self.tables.auto_due()?.len()?)
    }

    /// A flow's counters: (step, counter, count).
    pub fn step_counts(&self, flow: u64) -> Result<Vec<(u32, String, u64)>, StoreError> {
        let mut out = Vec::new();
        for r in self
            .tables
            .auto_counts()?
            .range((flow, 0, "")..=(flow, u32::MAX, "\u{10FFFF}"))?
        {
            let (k, v) = r?;
            let (_, step, name) = k.value();
            out.push((step, name.to_string(), v.value()));
        }
        Ok(out)
    }

    /// Every flow record (name, JSON of the caller's type).
    pub fn flow_records<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for r in self.tables.auto_flows()?.iter()? {
            let (k, v) = r?;
            out.push((k.value().to_string(), from_json("auto_flows", v.value())?));
        }
        Ok(out)
    }

    /// Every contact id, in order, after `after`, at most `limit` (for
    /// scans that arm time-based triggers).
    pub fn contact_ids_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<u64>, StoreError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::with_capacity(limit.min(65_536));
        for r in self.tables.contacts()?.range(start..)? {
            let (k, _) = r?;
            out.push(k.value());
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
