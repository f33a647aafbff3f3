//! Arming a new date-based flow for the contacts that exist: a flow on
//! birthdays, registration, inactivity or delivery dates created today
//! must know about data that arrived before it. Each new version of such a
//! flow walks every contact once, in writes of [`CHUNK`] contacts, and
//! records in the flow's record that the version is armed. A walk cut
//! short (a restart) starts again; arming is idempotent (an occurrence's
//! run is written once).

use std::sync::Arc;

use super::Automations;
use super::arm::{self, Ctx};
use super::model::{FlowRecord, FlowSet, LiveFlow};
use crate::store::ReadTables as _;

/// Contacts armed per write transaction.
pub const CHUNK: usize = 2_000;

/// Starts a walk for every date-based flow whose version is not armed yet.
pub fn start(a: &Arc<Automations>, set: &Arc<FlowSet>, records: &[(String, FlowRecord)]) {
    for f in set.by_id.values() {
        if !f.flow.trigger.scheduled() || f.paused {
            continue;
        }
        let done = records
            .iter()
            .find(|(n, _)| *n == f.flow.name)
            .is_some_and(|(_, r)| r.armed.contains(&f.version));
        if done {
            continue;
        }
        let a = a.clone();
        let f = f.clone();
        tokio::spawn(async move {
            match walk(&a, &f).await {
                Ok(n) => {
                    tracing::info!(automation = %f.flow.name, contacts = n, "armed for existing contacts")
                }
                Err(e) => {
                    tracing::warn!(automation = %f.flow.name, error = %e, "arming for existing contacts stopped; it starts again at the next start or reload")
                }
            }
        });
    }
}

/// Walks every contact; returns how many were looked at.
pub async fn walk(
    a: &Arc<Automations>,
    f: &Arc<LiveFlow>,
) -> Result<u64, crate::store::StoreError> {
    let mut after = None;
    let mut seen = 0u64;
    let started = std::time::Instant::now();
    loop {
        if a.activity.is_stopping() {
            return Err(crate::store::StoreError::Closed);
        }
        // The flow must still be this version (an edit starts a new walk).
        let live = a.flows().by_id.get(&f.id).cloned();
        if live.as_ref().is_none_or(|l| l.version != f.version) {
            return Ok(seen);
        }
        let ids = a
            .store
            .read(move |v| v.contact_ids_after(after, CHUNK))
            .await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        seen += ids.len() as u64;
        after = Some(last);
        let (a2, f2) = (a.clone(), f.clone());
        let earliest = a
            .store
            .write(move |t| {
                let snap = a2.config.snapshot();
                let flows = a2.flows();
                let mut cx = Ctx {
                    flows: &flows,
                    config: &snap.config,
                    now: a2.clock.now().timestamp_millis(),
                    earliest: None,
                    backfill: true,
                };
                for id in ids {
                    arm::arm_existing(t, &f2, id, &mut cx)?;
                }
                Ok(cx.earliest)
            })
            .await?;
        if let Some(at) = earliest {
            a.armed_at(at);
        }
    }
    let (name, version) = (f.flow.name.clone(), f.version);
    let now = a.clock.now().timestamp_millis();
    a.store
        .write(move |t| {
            let mut r: FlowRecord = t.flow_record(&name)?.unwrap_or_default();
            r.armed = vec![version];
            if r.created == 0 {
                r.created = now;
            }
            t.put_flow_record(&name, &r)
        })
        .await?;
    tracing::debug!(automation = %f.flow.name, took_ms = started.elapsed().as_millis() as u64, "backfill done");
    Ok(seen)
}
