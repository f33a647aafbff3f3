//! The audience of a campaign, resolved once when it starts: members of any
//! of its lists or segments, minus members of any exclusion, and only
//! `granted` contacts. And the A/B split of that audience.

use std::sync::Arc;

use super::CampaignError;
use super::model::Audience;
use crate::contacts::model::ConsentState;
use crate::segment::lang::{Cond, Loc};
use crate::segment::{Catalog, Index};
use crate::snapshot::Snapshot;
use crate::store::Store;

async fn conds(
    snap: &Snapshot,
    store: &Store,
    lists: &[String],
    segments: &[String],
    key: &str,
) -> Result<Vec<Cond>, CampaignError> {
    let mut out = Vec::new();
    if !lists.is_empty() {
        out.push(Cond::InList(
            lists.to_vec(),
            Loc {
                position: None,
                path: format!("audience.{key}lists"),
            },
        ));
    }
    for s in segments {
        let seg = crate::segment::find_usable(&snap.segments, &snap.config, store, s)
            .await
            .map_err(|e| CampaignError::Invalid(format!("audience.{key}segments: {e}")))?;
        out.push(seg.cond.clone());
    }
    Ok(out)
}

/// A resolved audience: who gets the campaign, and who was left out and why.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Contact ids, ascending.
    pub ids: Vec<u64>,
    /// Members of the lists and segments left out, by reason.
    pub left_out: super::model::LeftOut,
}

/// The audience: members of any list or segment, minus exclusions, only
/// `granted` and not suppressed, ascending; with the count of everyone
/// left out, by reason.
pub async fn resolve(
    snap: &Snapshot,
    store: &Store,
    index: &Arc<Index>,
    audience: &Audience,
    channel: super::model::Channel,
    today: chrono::NaiveDate,
) -> Result<Resolved, CampaignError> {
    let include = conds(snap, store, &audience.lists, &audience.segments, "").await?;
    // Apart, so that each member left out is counted under its reason.
    let exclude_lists = conds(snap, store, &audience.exclude_lists, &[], "exclude_").await?;
    let exclude_segments = conds(snap, store, &[], &audience.exclude_segments, "exclude_").await?;
    let sites = snap.config.sites.iter().map(|s| s.id.clone()).collect();
    let catalog = Catalog::load(store, sites).await?;
    let problems: Vec<String> = include
        .iter()
        .chain(&exclude_lists)
        .chain(&exclude_segments)
        .flat_map(|c| catalog.check(c))
        .map(|p| p.message)
        .collect();
    if !problems.is_empty() {
        return Err(CampaignError::Invalid(format!(
            "the audience cannot be resolved: {}",
            problems.join("; ")
        )));
    }
    let suppressed = store.read(|r| r.suppressed_contacts()).await?;
    index.ready().await;
    let index = index.clone();
    tokio::task::spawn_blocking(move || {
        let inc = index.evaluate(&Cond::Any(include), &catalog, today)?;
        let eval = |c: Vec<Cond>| -> Result<_, String> {
            if c.is_empty() {
                Ok(None)
            } else {
                index.evaluate(&Cond::Any(c), &catalog, today).map(Some)
            }
        };
        let (by_list, by_segment) = (eval(exclude_lists)?, eval(exclude_segments)?);
        let within = |e: &Option<crate::segment::Evaluation>, id: u64| {
            e.as_ref().is_some_and(|e| e.members.has(id as usize))
        };
        let mut out = Resolved::default();
        let l = &mut out.left_out;
        for id in inc.members.iter() {
            let counter = if within(&by_list, id) {
                &mut l.excluded_list
            } else if within(&by_segment, id) {
                &mut l.excluded_segment
            } else {
                let consent = match channel {
                    super::model::Channel::Email => index.consent_of(id),
                    super::model::Channel::Sms => match index.sms_of(id) {
                        Some((_, false)) => {
                            l.no_phone += 1;
                            continue;
                        }
                        Some((state, true)) => Some(state),
                        None => None,
                    },
                };
                match consent {
                    Some(ConsentState::Granted)
                        if channel == super::model::Channel::Email && suppressed.contains(&id) =>
                    {
                        &mut l.suppressed
                    }
                    Some(ConsentState::Granted) => {
                        out.ids.push(id);
                        continue;
                    }
                    Some(ConsentState::Unknown) => &mut l.consent_unknown,
                    Some(ConsentState::Pending) => &mut l.consent_pending,
                    Some(ConsentState::Withdrawn) => &mut l.consent_withdrawn,
                    Some(ConsentState::Invalid) => &mut l.consent_invalid,
                    // Erased since the evaluation: nobody to count.
                    None => continue,
                }
            };
            *counter += 1;
        }
        Ok(out)
    })
    .await
    .map_err(|e| CampaignError::Invalid(format!("resolving the audience failed: {e}")))?
    .map_err(CampaignError::Invalid)
}

/// splitmix64: a small, fixed pseudo-random sequence, so a seed gives the
/// same split on every build.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Splits an audience for an A/B test: `share` percent of it, chosen at
/// random (seeded), dealt evenly to `variants` groups (sizes differ by at
/// most one); the rest gets the winner. Every group is sorted by id.
pub fn split(ids: &[u64], variants: usize, share: f64, seed: u64) -> (Vec<Vec<u64>>, Vec<u64>) {
    let mut shuffled = ids.to_vec();
    let mut s = seed;
    for i in (1..shuffled.len()).rev() {
        let j = (splitmix(&mut s) % (i as u64 + 1)) as usize;
        shuffled.swap(i, j);
    }
    let n = shuffled.len();
    let mut test = ((n as f64) * share / 100.0).round() as usize;
    // Every variant gets someone when there are enough contacts.
    if test < variants && n >= variants {
        test = variants;
    }
    let test = test.min(n);
    let mut groups = vec![Vec::new(); variants.max(1)];
    for (i, id) in shuffled[..test].iter().enumerate() {
        groups[i % variants.max(1)].push(*id);
    }
    let mut rest = shuffled[test..].to_vec();
    for g in &mut groups {
        g.sort_unstable();
    }
    rest.sort_unstable();
    (groups, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_even_random_and_seeded() {
        let ids: Vec<u64> = (1..=1000).collect();
        let (g, rest) = split(&ids, 3, 30.0, 42);
        let sizes: Vec<usize> = g.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 100]);
        assert_eq!(rest.len(), 700);
        // Same seed, same split; another seed, another one.
        assert_eq!(split(&ids, 3, 30.0, 42), (g.clone(), rest.clone()));
        assert_ne!(split(&ids, 3, 30.0, 43).0, g);
        // Everyone exactly once.
        let mut all: Vec<u64> = g.concat();
        all.extend(&rest);
        all.sort_unstable();
        assert_eq!(all, ids);
        // Random, not the first ids.
        assert!(g[0].iter().any(|id| *id > 500));
        // A full test has no rest; a tiny audience still fills each variant.
        assert!(split(&ids, 2, 100.0, 1).1.is_empty());
        let (g, rest) = split(&[1, 2, 3], 2, 1.0, 1);
        assert_eq!((g[0].len(), g[1].len(), rest.len()), (1, 1, 1));
    }
}
