//! `segment_entered`: segment membership is not a stored fact that changes
//! in one transaction (it follows from many), so it is checked: every
//! `[automation] segment_check` (default a minute), each such flow's segment is evaluated on the segment index and
//! compared with the members stored at the last check (`auto_members_v1`).
//! Contacts who are new members enter the flow (occurrence: the time of the
//! check that found them); those who left are forgotten, so leaving and
//! coming back is a new entry (subject to `reentry`). The first check of a
//! flow version only records the members: a new flow does not mail the
//! whole segment at once.

use std::sync::Arc;
use std::time::Duration;

use super::Automations;
use super::arm::{self, Ctx};
use super::flow::Trigger;
use super::model::{FlowRecord, LiveFlow, Occurrence};
use crate::store::ReadTables as _;

impl Automations {
    /// Checks every `segment_entered` flow every `segment_check` until the
    /// daemon stops.
    pub async fn watch_segments(self: Arc<Self>) {
        let stopping = self.activity.stopping();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(
                    self.config.get().automation.segment_check_ms.max(1000) as u64,
                )) => {}
                _ = &mut stopping => return,
            }
            if let Err(e) = self.check_segments().await {
                tracing::warn!(error = %e, "automations: segment check failed; trying again in a minute");
            }
        }
    }

    /// One check of every `segment_entered` flow.
    pub async fn check_segments(self: &Arc<Self>) -> Result<(), String> {
        let flows = self.flows();
        let watched: Vec<Arc<LiveFlow>> = flows
            .with(|t| matches!(t, Trigger::SegmentEntered { .. }))
            .cloned()
            .collect();
        for f in watched {
            let _guard = self.activity.guard("automation segment check");
            self.check_segment(&f).await?;
        }
        Ok(())
    }

    async fn check_segment(self: &Arc<Self>, f: &Arc<LiveFlow>) -> Result<(), String> {
        let Trigger::SegmentEntered { segment } = &f.flow.trigger else {
            return Ok(());
        };
        let snap = self.config.snapshot();
        let seg =
            crate::segment::find_usable(&snap.segments, &snap.config, &self.store, segment).await?;
        let catalog = self.catalog(&snap).await.map_err(|e| e.to_string())?;
        let index = self.index.clone();
        let now = self.clock.now().timestamp_millis();
        let today = self.clock.now().date_naive();
        let members = tokio::task::spawn_blocking(move || {
            index
                .evaluate(&seg.cond, &catalog, today)
                .map(|e| e.members.iter().collect::<Vec<u64>>())
        })
        .await
        .map_err(|e| e.to_string())??;
        let (id, name, version) = (f.id, f.flow.name.clone(), f.version);
        let (stored, record) = self
            .store
            .read(move |v| {
                let r: Option<FlowRecord> = v.flow_record(&name)?;
                Ok((v.members(id)?, r))
            })
            .await
            .map_err(|e| e.to_string())?;
        let baseline = !record.as_ref().is_some_and(|r| r.armed.contains(&version));
        let joined = difference(&members, &stored);
        let left = difference(&stored, &members);
        if joined.is_empty() && left.is_empty() && !baseline {
            return Ok(());
        }
        let (me, f2) = (self.clone(), f.clone());
        let earliest = self
            .store
            .write(move |t| {
                t.update_members(id, &joined, &left)?;
                let snap = me.config.snapshot();
                let flows = me.flows();
                let mut cx = Ctx {
                    flows: &flows,
                    config: &snap.config,
                    now,
                    earliest: None,
                    backfill: false,
                };
                if baseline {
                    let mut r: FlowRecord = t.flow_record(&f2.flow.name)?.unwrap_or_default();
                    r.armed = vec![version];
                    if r.created == 0 {
                        r.created = now;
                    }
                    t.put_flow_record(&f2.flow.name, &r)?;
                    return Ok(None);
                }
                for c in joined {
                    let Some(contact) = t.contact(c)? else {
                        continue;
                    };
                    let occ = Occurrence {
                        what: format!("segment {now}"),
                        ..Default::default()
                    };
                    arm::enter(t, &f2, &contact, occ, now, now, &mut cx)?;
                }
                Ok(cx.earliest)
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Some(at) = earliest {
            self.armed_at(at);
        }
        Ok(())
    }
}

/// What is in `a` and not in `b` (both ascending).
fn difference(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn differences_of_sorted_ids() {
        assert_eq!(super::difference(&[1, 2, 5, 9], &[2, 3, 9]), vec![1, 5]);
        assert_eq!(super::difference(&[], &[1]), Vec::<u64>::new());
    }
}
