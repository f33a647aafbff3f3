//! Newsletters: the campaign record and its life (`model.rs`), the audience
//! snapshot and A/B split (`audience.rs`), and the runner that renders in
//! batches just ahead of delivery and queues each batch in one commit with
//! its progress (`runner.rs`).
//!
//! Exactly once per contact: a part's recipients are fixed when it starts
//! (the snapshot), and each batch of messages is committed together with the
//! part's cursor and the send ledger (`send::outbox::commit_batch`). A crash, pause or reload
//! leaves the cursor exactly after the last committed batch, so the next
//! batch starts there: nobody is skipped and nobody is queued twice (the
//! ledger is checked too). Delivery itself then resends at most what was on
//! the wire at a crash (see the delivery queue's invariant).

pub mod audience;
pub mod model;
pub mod report;
pub mod runner;

use std::sync::Arc;

use model::{Campaign, Part, Spec, Status};

use crate::config::Config;
use crate::render::template::Template;
use crate::snapshot::Snapshot;
use crate::store::ReadTables as _;
use crate::store::{Sequence, StoreError};

pub use runner::Campaigns;

/// The campaign records in the store, typed (the store keeps them as JSON
/// of a type it does not know).
pub trait CampaignStore {
    /// A campaign.
    fn campaign(&self, id: u64) -> Result<Option<Campaign>, StoreError>;
}

/// Writing campaign records.
pub trait CampaignWrite {
    /// Stores a campaign.
    fn put_campaign(&mut self, c: &Campaign) -> Result<(), StoreError>;
}

impl CampaignStore for crate::store::WriteTables<'_> {
    fn campaign(&self, id: u64) -> Result<Option<Campaign>, StoreError> {
        self.campaign_record(id)
    }
}

impl CampaignWrite for crate::store::WriteTables<'_> {
    fn put_campaign(&mut self, c: &Campaign) -> Result<(), StoreError> {
        self.put_campaign_record(c.id, c)
    }
}

impl CampaignStore for crate::store::ReadView {
    fn campaign(&self, id: u64) -> Result<Option<Campaign>, StoreError> {
        self.campaign_record(id)
    }
}

/// Every campaign, by number.
pub fn all(r: &crate::store::ReadView) -> Result<Vec<Campaign>, StoreError> {
    r.campaign_records()
}

/// Why a campaign action was refused.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// No such campaign.
    #[error("{0}")]
    NotFound(String),
    /// The input is wrong (every problem, `; `-separated).
    #[error("{0}")]
    Invalid(String),
    /// The action does not fit the campaign's status.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The template, sender and subject one (stage, variant) sends with.
#[derive(Debug, Clone, PartialEq)]
pub struct Look {
    /// Template name.
    pub template: String,
    /// Sender id (`None`: the template's).
    pub sender: Option<String>,
    /// Subject template (`None`: the template's).
    pub subject: Option<String>,
}

/// What stage `stage`, variant `variant` of `spec` sends.
pub fn look(spec: &Spec, stage: u32, variant: u32) -> Look {
    let mut l = Look {
        template: spec.template.clone(),
        sender: spec.sender.clone(),
        subject: spec.subject.clone(),
    };
    if stage > 0 {
        if let Some(s) = spec.stages.get(stage as usize - 1) {
            if let Some(t) = &s.template {
                l.template = t.clone();
                // Another template brings its own subject unless one is given.
                l.subject = None;
            }
            if s.subject.is_some() {
                l.subject = s.subject.clone();
            }
        }
        return l;
    }
    if let Some(v) = spec
        .ab
        .as_ref()
        .and_then(|a| a.variants.get(variant as usize))
    {
        if let Some(t) = &v.template {
            l.template = t.clone();
            l.subject = None;
        }
        if v.subject.is_some() {
            l.subject = v.subject.clone();
        }
        if v.sender.is_some() {
            l.sender = v.sender.clone();
        }
    }
    l
}

/// Every (stage, variant) look of a spec, for checking.
fn looks(spec: &Spec) -> Vec<(String, Look)> {
    let mut out = Vec::new();
    match &spec.ab {
        Some(ab) => {
            for (i, _) in ab.variants.iter().enumerate() {
                out.push((format!("ab.variants[{i}]"), look(spec, 0, i as u32)));
            }
        }
        None => out.push((String::new(), look(spec, 0, 0))),
    }
    for i in 0..spec.stages.len() {
        out.push((format!("stages[{i}]"), look(spec, i as u32 + 1, 0)));
    }
    out
}

/// The template as `l` sends it: its sender and subject overridden.
pub fn look_template(base: &Template, l: &Look) -> Template {
    crate::render::template::overridden(base, l.sender.as_deref(), l.subject.as_deref())
}

/// Renders every (stage, variant) look once for every site and language
/// variant of its template, with the campaign's values (its `data` and
/// products; the template's sample for what it leaves out), as a send
/// would: a subject or preheader that cannot render (an unknown filter, a
/// type error) is refused now, not on every recipient. Returns the problems.
fn trial_render(
    spec: &Spec,
    config: &Config,
    tried: Vec<(String, Look, Arc<Template>)>,
    products: Option<Vec<crate::shop::Product>>,
) -> Vec<String> {
    use crate::render::preview;
    let mut p: Vec<String> = Vec::new();
    for (at, l, base) in tried {
        let t = Arc::new(look_template(&base, &l));
        let input = |site: &String, lang: &String| preview::PreviewInput {
            language: Some(lang.clone()),
            site: (!site.is_empty()).then(|| site.clone()),
            products: products.clone(),
            data: (!spec.data.is_null()).then(|| spec.data.clone()),
            personalize: spec.personalize,
            tracking: spec.tracking,
            ..Default::default()
        };
        if spec.channel == model::Channel::Sms {
            for (site, lang) in t.sms.keys() {
                let input = input(site, lang);
                if let Err(e) =
                    preview::render_sms(t.clone(), config, preview::preview_send(), input, 0)
                {
                    p.push(format!(
                        "template `{}` SMS does not render with this campaign (language {lang}): {e}",
                        l.template
                    ));
                }
            }
            continue;
        }
        for (site, lang) in t.variants.keys() {
            let input = input(site, lang);
            let Err(e) = preview::render(t.clone(), config, preview::preview_send(), input, 0)
            else {
                continue;
            };
            // The subject's own errors name the campaign's field; others
            // the template and the variant it failed in.
            let field = if at.is_empty() {
                "subject".to_string()
            } else {
                format!("{at}.subject")
            };
            let own = l.subject.is_some() && (e.starts_with("subject:") || e.contains("(subject)"));
            let m = if own {
                format!("{field}: {}", e.trim_start_matches("subject:").trim())
            } else {
                format!(
                    "{}template `{}` does not render with this campaign ({}language {lang}): {e}",
                    if at.is_empty() {
                        String::new()
                    } else {
                        format!("{at}: ")
                    },
                    l.template,
                    if site.is_empty() {
                        String::new()
                    } else {
                        format!("site {site}, ")
                    },
                )
            };
            if !p.contains(&m) {
                p.push(m);
            }
        }
    }
    p
}

/// Checks a spec against the snapshot (config, templates, segment files)
/// and the store: templates (marketing, loaded), senders, subjects, lists,
/// segments, products; then renders what it sends once (see
/// [`trial_render`]).
pub async fn check_spec(
    spec: &Spec,
    snap: &Arc<Snapshot>,
    store: &crate::store::Store,
) -> Result<(), CampaignError> {
    let config = &snap.config;
    let mut p = spec.check();
    let mut tried = Vec::new();
    for (at_key, l) in looks(spec) {
        let at = if at_key.is_empty() {
            String::new()
        } else {
            format!("{at_key}: ")
        };
        match snap.templates.get(&l.template) {
            None => {
                let why = if snap.templates.failed.contains_key(&l.template) {
                    "has problems (see GET /api/v1/templates)"
                } else {
                    "does not exist"
                };
                p.push(format!("{at}template `{}` {why}", l.template));
            }
            Some(t) => {
                if t.kind != crate::render::template::Kind::Marketing {
                    p.push(format!(
                        "{at}template `{}` is transactional; a campaign sends marketing templates",
                        l.template
                    ));
                }
                let sender = l.sender.clone().unwrap_or_else(|| t.sender.clone());
                if spec.channel == model::Channel::Sms {
                    if t.sms.is_empty() {
                        p.push(format!(
                            "{at}template `{}` has no SMS body (body.<lang>.sms.txt)",
                            l.template
                        ));
                    } else {
                        tried.push((at_key.clone(), l.clone(), t.clone()));
                    }
                } else if t.variants.is_empty() {
                    p.push(format!(
                        "{at}template `{}` has no e-mail body; send it with \"channel\": \"sms\"",
                        l.template
                    ));
                } else if config.sender(&sender).is_none() {
                    p.push(format!("{at}no [[sender]] `{sender}` in the config"));
                } else {
                    tried.push((at_key.clone(), l.clone(), t.clone()));
                }
            }
        }
        if let Some(s) = &l.subject {
            let env = crate::render::compile::base_env();
            if let Err(e) = env.template_from_str(s) {
                p.push(format!("{at}subject: {e}"));
                tried.retain(|(k, _, _)| *k != at_key);
            }
        }
    }
    if spec.channel == model::Channel::Sms {
        let gw = spec
            .sms_gateway
            .as_ref()
            .or(config.sms.default_gateway.as_ref());
        match gw {
            None => p.push("sms_gateway: no [[sms_gateway]] is configured".into()),
            Some(g) if config.sms.gateway(g).is_none() => p.push(format!(
                "sms_gateway: no [[sms_gateway]] `{g}` in the config"
            )),
            Some(_) => {}
        }
    }
    let a = &spec.audience;
    let lists = store.read(|r| r.lists()).await?;
    for (key, names) in [
        ("audience.lists", &a.lists),
        ("audience.exclude_lists", &a.exclude_lists),
    ] {
        for n in names {
            if !lists.iter().any(|l| l.name.eq_ignore_ascii_case(n)) {
                p.push(format!("{key}: no list `{n}`"));
            }
        }
    }
    for (key, names) in [
        ("audience.segments", &a.segments),
        ("audience.exclude_segments", &a.exclude_segments),
    ] {
        for n in names {
            if let Err(e) = crate::segment::find_usable(&snap.segments, config, store, n).await {
                p.push(format!("{key}: {e}"));
            }
        }
    }
    let skus = spec.products.clone();
    let (found, missing) = store
        .read(move |r| {
            let (mut found, mut missing) = (Vec::new(), Vec::new());
            for s in &skus {
                match r.product(s)? {
                    Some(product) => found.push(product),
                    None => missing.push(s.clone()),
                }
            }
            Ok((found, missing))
        })
        .await?;
    for s in &missing {
        p.push(format!("products: no product with SKU `{s}`"));
    }
    if !tried.is_empty() {
        let products = (!spec.products.is_empty() && missing.is_empty()).then_some(found);
        let (spec, snap) = (spec.clone(), snap.clone());
        let problems =
            tokio::task::spawn_blocking(move || trial_render(&spec, &snap.config, tried, products))
                .await
                .map_err(|e| CampaignError::Invalid(format!("trial render failed: {e}")))?;
        p.extend(problems);
    }
    if p.is_empty() {
        Ok(())
    } else {
        Err(CampaignError::Invalid(p.join("; ")))
    }
}

/// Creates a draft.
pub async fn create(svc: &Campaigns, spec: Spec) -> Result<Campaign, CampaignError> {
    check_spec(&spec, &svc.snapshot(), svc.store()).await?;
    let now = svc.now_ms();
    Ok(svc
        .store()
        .write(move |t| {
            let id = t.next_id(Sequence::Campaign)?;
            let c = Campaign {
                id,
                created: now,
                updated: now,
                status: Status::Draft,
                spec,
                run: Default::default(),
            };
            t.put_campaign(&c)?;
            Ok(c)
        })
        .await?)
}

/// Runs `f` on a campaign inside a write transaction and stores the result;
/// `f` refuses with a message when the status does not allow the change.
pub async fn change(
    svc: &Campaigns,
    id: u64,
    f: impl FnOnce(&mut Campaign, i64) -> Result<(), String> + Send + 'static,
) -> Result<Campaign, CampaignError> {
    let now = svc.now_ms();
    let r = svc
        .store()
        .write(move |t| {
            let Some(mut c) = t.campaign(id)? else {
                return Ok(Err(CampaignError::NotFound(format!("no campaign {id}"))));
            };
            if let Err(m) = f(&mut c, now) {
                return Ok(Err(CampaignError::Conflict(m)));
            }
            c.updated = now;
            t.put_campaign(&c)?;
            Ok(Ok(c))
        })
        .await??;
    svc.wake_for(id);
    Ok(r)
}

fn must_be(c: &Campaign, allowed: &[Status], action: &str) -> Result<(), String> {
    if allowed.contains(&c.status) {
        Ok(())
    } else {
        Err(format!(
            "campaign {} is {}; {action} needs it {}",
            c.id,
            c.status.as_str(),
            allowed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" or ")
        ))
    }
}

/// Replaces a draft's spec.
pub async fn edit(svc: &Campaigns, id: u64, spec: Spec) -> Result<Campaign, CampaignError> {
    check_spec(&spec, &svc.snapshot(), svc.store()).await?;
    change(svc, id, move |c, _| {
        must_be(c, &[Status::Draft], "editing")?;
        c.spec = spec;
        Ok(())
    })
    .await
}

/// Deletes a draft.
pub async fn delete(svc: &Campaigns, id: u64) -> Result<(), CampaignError> {
    svc.store()
        .write(move |t| {
            let Some(c) = t.campaign(id)? else {
                return Ok(Err(CampaignError::NotFound(format!("no campaign {id}"))));
            };
            if let Err(m) = must_be(&c, &[Status::Draft], "deleting") {
                return Ok(Err(CampaignError::Conflict(m)));
            }
            t.delete_campaign(id)?;
            Ok(Ok(()))
        })
        .await?
}

/// A new draft with the same spec.
pub async fn duplicate(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    let now = svc.now_ms();
    svc.store()
        .write(move |t| {
            let Some(c) = t.campaign(id)? else {
                return Ok(Err(CampaignError::NotFound(format!("no campaign {id}"))));
            };
            let new_id = t.next_id(Sequence::Campaign)?;
            let mut spec = c.spec.clone();
            spec.name = format!("{} (copy)", spec.name);
            if let Some(ab) = spec.ab.as_mut() {
                ab.seed = None;
            }
            let d = Campaign {
                id: new_id,
                created: now,
                updated: now,
                status: Status::Draft,
                spec,
                run: Default::default(),
            };
            t.put_campaign(&d)?;
            Ok(Ok(d))
        })
        .await?
}

/// Schedules a draft for `at` (ms).
pub async fn schedule(svc: &Campaigns, id: u64, at: i64) -> Result<Campaign, CampaignError> {
    let snap = svc.snapshot();
    let c = get(svc, id).await?;
    check_spec(&c.spec, &snap, svc.store()).await?;
    change(svc, id, move |c, _| {
        must_be(c, &[Status::Draft, Status::Scheduled], "scheduling")?;
        c.status = Status::Scheduled;
        c.run.scheduled_for = Some(at);
        Ok(())
    })
    .await
}

/// Starts a draft or scheduled campaign now: resolves the audience once,
/// records it, and lets the runner send it.
pub async fn start(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    svc.start(id).await
}

/// Pauses a running campaign: no batch is queued after the pause commits.
pub async fn pause(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    let c = change(svc, id, |c, _| {
        must_be(c, &[Status::Running], "pausing")?;
        c.status = Status::Paused;
        Ok(())
    })
    .await?;
    svc.stop_worker(id);
    Ok(c)
}

/// Resumes a paused campaign where it stopped.
pub async fn resume(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    change(svc, id, |c, _| {
        must_be(c, &[Status::Paused], "resuming")?;
        c.status = Status::Running;
        c.run.note = None;
        Ok(())
    })
    .await
}

/// Cancels a campaign: nothing more is queued, and its messages still
/// waiting in the queue are taken out (failed as cancelled).
pub async fn cancel(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    let c = change(svc, id, |c, now| {
        must_be(
            c,
            &[Status::Scheduled, Status::Running, Status::Paused],
            "cancelling",
        )?;
        c.status = Status::Cancelled;
        c.run.finished = Some(now);
        Ok(())
    })
    .await?;
    svc.stop_worker(id);
    svc.purge_queue(id).await?;
    Ok(c)
}

/// Chooses the A/B winner by hand.
pub async fn choose_winner(
    svc: &Campaigns,
    id: u64,
    variant: u32,
) -> Result<Campaign, CampaignError> {
    change(svc, id, move |c, _| {
        must_be(c, &[Status::Running, Status::Paused], "choosing a winner")?;
        let n = c.spec.ab.as_ref().map(|a| a.variants.len()).unwrap_or(0);
        if n == 0 {
            return Err(format!("campaign {} has no A/B test", c.id));
        }
        if variant as usize >= n {
            return Err(format!(
                "variant {variant}: the test has variants 0 to {}",
                n - 1
            ));
        }
        if c.run.winner.is_some() {
            return Err(format!("campaign {} already has a winner", c.id));
        }
        let test_done = c
            .run
            .parts
            .iter()
            .filter(|p| p.variant != model::WINNER)
            .all(Part::done);
        if !test_done {
            return Err("the test messages are still being queued".into());
        }
        c.run.winner = Some(variant);
        c.run.winner_reason = Some("chosen by hand".into());
        Ok(())
    })
    .await
}

/// A campaign.
pub async fn get(svc: &Campaigns, id: u64) -> Result<Campaign, CampaignError> {
    svc.store()
        .read(move |r| r.campaign(id))
        .await?
        .ok_or_else(|| CampaignError::NotFound(format!("no campaign {id}")))
}
