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

/// The `granted` contact ids of an audience, ascending.
pub async fn resolve(
    snap: &Snapshot,
    store: &Store,
    index: &Arc<Index>,
    audience: &Audience,
    today: chrono::NaiveDate,
) -> Result<Vec<u64>, CampaignError> {
    let include = conds(snap, store, &audience.lists, &audience.segments, "").await?;
    let exclude = conds(
        snap,
        store,
        &audience.exclude_lists,
        &audience.exclude_segments,
        "exclude_",
    )
    .await?;
    let sites = snap.config.sites.iter().map(|s| s.id.clone()).collect();
    let catalog = Catalog::load(store, sites).await?;
    let problems: Vec<String> = include
        .iter()
        .chain(&exclude)
        .flat_map(|c| catalog.check(c))
        .map(|p| p.message)
        .collect();
    if !problems.is_empty() {
        return Err(CampaignError::Invalid(format!(
            "the audience cannot be resolved: {}",
            problems.join("; ")
        )));
    }
    index.ready().await;
    let index = index.clone();
    tokio::task::spawn_blocking(move || {
        let inc = index.evaluate(&Cond::Any(include), &catalog, today)?;
        let exc = if exclude.is_empty() {
            None
        } else {
            Some(index.evaluate(&Cond::Any(exclude), &catalog, today)?)
        };
        Ok(inc
            .members
            .iter()
            .filter(|id| exc.as_ref().is_none_or(|e| !e.members.has(*id as usize)))
            .filter(|id| index.consent_of(*id) == Some(ConsentState::Granted))
            .collect())
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
