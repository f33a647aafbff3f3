//! Wiring for `herald serve`: load the snapshot (config, templates, segment
//! files), start logging, open the store, bind the listener, tell systemd we
//! are ready, serve until SIGTERM/SIGINT, reload on SIGHUP (a new snapshot,
//! swapped in whole), and shut down gracefully.
//!
//! The documented ready line, logged once the store is open and the listener
//! bound, is `herald ready listen=<ADDR> public_url=<URL>`, followed by
//! ` admin_listen=<ADDR>` when `[http] admin_listen` is set (and
//! ` inbound_listen=<ADDR>`, ` capture=<DIR>` in capture mode); tests and scripts
//! wait for it (with `listen = "127.0.0.1:0"` it carries the port picked).

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::clock::Clock;
use crate::config::{Config, LogFormat};
use crate::contacts::model::ImportStatus;
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use crate::store::ReadTables as _;
use crate::store::Store;

/// Installs the global tracing subscriber. `RUST_LOG` overrides the config.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Marks imports left `running` by a crash as `interrupted`, so they can be
/// resumed and are reported truthfully.
async fn recover_imports(store: &Store) -> anyhow::Result<()> {
    let n = store
        .write(|t| {
            let mut n = 0u64;
            for mut r in t.imports()? {
                if r.status == ImportStatus::Running {
                    r.status = ImportStatus::Interrupted;
                    r.error = Some("the daemon stopped during the import".into());
                    t.put_import(&r)?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?;
    if n > 0 {
        tracing::warn!(
            imports = n,
            "imports interrupted by the last stop are marked interrupted; resume them with ?resume=ID"
        );
    }
    Ok(())
}

/// Runs the daemon on `snap` until a termination signal.
pub async fn serve(snap: Snapshot) -> anyhow::Result<()> {
    let config = snap.config.clone();
    let storage = config.storage.clone();
    let store = tokio::task::spawn_blocking(move || Store::open_with(&storage))
        .await
        .context("store task")?
        .context("cannot open the store")?;
    // The index subscribes before anything else writes, and builds itself
    // in the background (or reads what the last clean stop saved, if the
    // store has not changed since); segment requests wait until it is
    // ready, nothing else does.
    let index = crate::segment::Index::new();
    index.attach(
        &store,
        Some(config.storage.dir.join(crate::segment::persist::FILE_NAME)),
    );
    let index_at_stop = index.clone();
    recover_imports(&store).await?;
    // Every connection is a descriptor: take all the hard limit allows
    // (http::serve keeps its connection caps below it).
    match http::limits::raise_fd_limit() {
        Ok(n) => tracing::debug!(fd_limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
    let listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.http.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("cannot listen on {a} (http.admin_listen)"))?,
        ),
        None => None,
    };
    let inbound_listener = crate::inbound::listen::bind(&config).await?;
    let admin_note = match &admin_listener {
        Some(l) => format!(" admin_listen={}", l.local_addr()?),
        None => String::new(),
    };
    let public_url = config.http.public_url.to_string();
    log_template_problems(&snap);
    let render_pool =
        crate::render::bulk::pool(config.rendering.threads).map_err(|e| anyhow::anyhow!(e))?;
    let config = Arc::new(crate::snapshot::Current::new(snap));
    let metrics = Metrics::new();
    let clock = Clock::system();
    // In-flight work and the stop signal, shared by everything that must
    // reach a safe point before the process exits.
    let activity = crate::activity::Activity::new();
    let engine = crate::delivery::Engine::new(
        store.clone(),
        config.clone(),
        clock.clone(),
        &metrics,
        activity.clone(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start delivery: {e}"))?;
    let campaigns = crate::campaign::Campaigns::new(
        store.clone(),
        config.clone(),
        clock.clone(),
        index.clone(),
        render_pool.clone(),
        engine.clone(),
        activity.clone(),
    );
    // Automations hook into the store before anything can write an event
    // that fires them; the runner starts below with the other tasks.
    let automations = crate::automation::Automations::new(
        store.clone(),
        config.clone(),
        clock.clone(),
        index.clone(),
        render_pool.clone(),
        engine.clone(),
        activity.clone(),
    );
    let automations_on = config.get().automation.enabled;
    if automations_on {
        automations.attach();
    }
    automations
        .reload()
        .await
        .context("cannot read the automations")?;
    let hits =
        crate::track::journal::Applier::new(store.clone(), metrics.tracking_hits.clone()).await?;
    let applier = {
        let guard = activity.guard("hit applier");
        let stopping = activity.stopping();
        let hits = hits.clone();
        tokio::spawn(async move {
            hits.run(stopping).await;
            drop(guard);
        })
    };
    // Text messages: their own queue in the store, their own engine.
    let sms = crate::sms::engine::SmsEngine::new(
        store.clone(),
        config.clone(),
        clock.clone(),
        activity.clone(),
        engine.outcomes_recorded(),
    )
    .map_err(|e| anyhow::anyhow!("cannot start the SMS engine: {e}"))?;
    let state = Arc::new(AppState {
        config,
        store: store.clone(),
        metrics,
        clock,
        delivery: engine.clone(),
        render_pool,
        index,
        compiled: Default::default(),
        campaigns: campaigns.clone(),
        automations: automations.clone(),
        recent: Default::default(),
        signup_limits: Default::default(),
        ui: Default::default(),
        doctor: Default::default(),
        hits,
        activity: activity.clone(),
    });
    // Messages left in flight by a crash are still queued in the store; the
    // scheduler picks them up like any other due message.
    let scheduler = tokio::spawn(engine.clone().run());
    // Running campaigns resume from their durable cursors.
    let supervisor = tokio::spawn(campaigns.clone().run());
    let sms_task = tokio::spawn(sms.clone().run());
    // Due automation steps are sent from the store's due index.
    let runner = automations_on.then(|| {
        (
            tokio::spawn(automations.clone().watch_segments()),
            tokio::spawn(automations.clone().run()),
        )
    });

    // Bounces and feedback-loop reports: the listener takes its reports
    // through the same store as everything else.
    let inbound_note = match &inbound_listener {
        Some(b) => format!(" inbound_listen={}", b.addr),
        None => String::new(),
    };
    let inbound_task =
        inbound_listener.map(|b| b.spawn(state.inbound(), &state.metrics, activity.clone()));

    // Signal handlers go in before readiness is announced: SIGHUP's default
    // action is to terminate, so a reload sent right after "ready" must find
    // the handler in place.
    let hup = install(SignalKind::hangup())?;
    let term = install(SignalKind::terminate())?;
    let int = install(SignalKind::interrupt())?;
    let reload_state = state.clone();
    let reloader = tokio::spawn(async move { reload_on_sighup(reload_state, hup).await });

    let capture_note = match &state.config.get().delivery.capture {
        Some(dir) => {
            crate::delivery::capture::prepare(dir)
                .with_context(|| format!("cannot make the capture folder {}", dir.display()))?;
            tracing::warn!(
                "CAPTURE MODE: no mail leaves this machine; every message is written to {} (`herald outbox list`); remove `[delivery] capture` for real delivery",
                dir.display()
            );
            format!(" capture={}", dir.display())
        }
        None => String::new(),
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        "herald ready listen={addr} public_url={public_url}{admin_note}{inbound_note}{capture_note}"
    );

    let listeners = http::Listeners {
        public: listener,
        admin: admin_listener,
    };
    // The free space of the store's filesystem, read every second on a
    // blocking thread (bulk intake and /healthz only look at the reading).
    let space_watch = {
        let health = store.health().clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SPACE_CHECK).await;
                let h = health.clone();
                let _ = tokio::task::spawn_blocking(move || h.refresh_space()).await;
            }
        })
    };
    // The segment index gives back its spare room once a bulk ingest is
    // over (`Index::tidy`).
    let index_tidy = {
        let index = index_at_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::segment::TIDY_EVERY).await;
                let i = index.clone();
                let _ = tokio::task::spawn_blocking(move || i.tidy()).await;
            }
        })
    };
    // A store that cannot be re-opened ends the daemon (non-zero): the
    // service manager restarts it.
    let lost = {
        let health = store.health().clone();
        async move { health.fatal().await }
    };
    let lost = tokio::spawn(lost);
    let store_lost = std::sync::Arc::new(std::sync::OnceLock::new());
    let stop = {
        let store_lost = store_lost.clone();
        async move {
            tokio::select! {
                () = shutdown_signal(term, int) => {}
                why = lost => {
                    if let Ok(why) = why {
                        let _ = store_lost.set(why);
                    }
                }
            }
        }
    };
    http::serve(listeners, state.clone(), stop).await;
    space_watch.abort();
    index_tidy.abort();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // One stop for all in-flight work: campaign workers commit the batch in
    // hand and end (the rest of each audience is sent after the next start,
    // from the cursor); the hit applier ends (answered hits are in the
    // journal, applied at the next start). The drain waits for every
    // guard, saying every 2 s what it waits for.
    // SMTP transactions under way finish and are recorded; the rest stays
    // queued. Past the grace, connections still stuck are abandoned.
    activity.stop();
    if !activity.drain(SHUTDOWN_GRACE).await.is_empty() {
        engine.abandon();
        activity.drain(std::time::Duration::from_secs(1)).await;
    }
    if let Some(t) = inbound_task {
        let _ = t.await;
    }
    let _ = supervisor.await;
    let _ = sms_task.await;
    drop(sms);
    if let Some((watcher, r)) = runner {
        let _ = watcher.await;
        let _ = r.await;
    }
    drop(automations);
    let _ = applier.await;
    drop(campaigns);
    let _ = scheduler.await;
    reloader.abort();
    let _ = reloader.await;
    // Every store handle must be gone for the writer to finish and close
    // the file cleanly: the engine's too.
    drop(engine);
    drop(state);
    // The index saw every commit before its writer was answered: once the
    // writer has ended, it is the store's state at its last commit.
    tokio::task::spawn_blocking(move || match store.close() {
        Some(commit) => index_at_stop.save(commit),
        None => index_at_stop.save_nothing(),
    })
    .await
    .ok();
    if let Some(why) = store_lost.get() {
        anyhow::bail!("{why}");
    }
    tracing::info!("herald stopped");
    Ok(())
}

/// How often the store's free disk space is read.
const SPACE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long SIGTERM waits for work in flight (SMTP transactions, campaign
/// batches, the hit applier) before the process exits; what is left resumes
/// at the next start.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

fn install(kind: SignalKind) -> anyhow::Result<Signal> {
    signal(kind).with_context(|| {
        format!(
            "cannot install the handler for signal {}",
            kind.as_raw_value()
        )
    })
}

async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn reload_on_sighup(state: Arc<AppState>, mut hup: Signal) {
    while hup.recv().await.is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        let old = state.config();
        let path = old.file.clone();
        match tokio::task::spawn_blocking(move || Snapshot::load(&path)).await {
            Ok(Ok(snap)) => {
                let new = &snap.config;
                if new.http.listen != old.http.listen
                    || new.http.admin_listen != old.http.admin_listen
                    || new.storage.dir != old.storage.dir
                {
                    tracing::warn!(
                        "http.listen, http.admin_listen and storage.path take effect only after a restart"
                    );
                }
                if new.delivery.nameserver != old.delivery.nameserver {
                    tracing::warn!("delivery.nameserver takes effect only after a restart");
                }
                if new.rendering.threads != old.rendering.threads {
                    tracing::warn!("rendering.threads takes effect only after a restart");
                }
                log_template_problems(&snap);
                state.store.health().configure(&snap.config.storage);
                state.config.set(snap);
                if let Err(e) = state.automations.reload().await {
                    tracing::error!(error = %e, "automations not reloaded");
                }
                tracing::info!(file = %old.file.display(), "configuration reloaded");
            }
            Ok(Err(errors)) => {
                // Each problem once (it names its file and line), then the
                // outcome, which does not repeat them.
                for e in &errors.0 {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    file = %old.file.display(),
                    problems = errors.0.len(),
                    "reload refused: the running configuration is unchanged"
                );
            }
            Err(e) => tracing::error!(error = %e, "reload task failed"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// Logs every template that did not load. The daemon runs without them
/// (one broken template must not stop delivery); `check-config` fails on them
/// and `GET /api/v1/templates` lists them with their problems.
fn log_template_problems(snap: &Snapshot) {
    for (name, errors) in &snap.templates.failed {
        for e in errors {
            tracing::error!(template = %name, "{e}");
        }
        tracing::error!(template = %name, "template not loaded: it cannot be sent until fixed");
    }
    for (name, errors) in &snap.segments.failed {
        for e in errors {
            tracing::error!(segment = %name, "{e}");
        }
        tracing::error!(segment = %name, "segment not loaded: it cannot be used until fixed");
    }
    for (name, errors) in &snap.automations.failed {
        for e in errors {
            tracing::error!(automation = %name, "{e}");
        }
        tracing::error!(automation = %name, "automation not loaded: it does not run until fixed");
    }
}

/// `herald check-config`: validates everything and prints a summary; never
/// opens the store. Template problems fail it too.
pub fn check_config(path: &Path) -> Result<String, crate::config::ConfigErrors> {
    let snap = Snapshot::load(path)?;
    let c = &snap.config;
    let mut errors: Vec<_> = snap.templates.errors().cloned().collect();
    errors.extend(snap.segments.failed.values().flatten().cloned());
    errors.extend(snap.automations.errors().cloned());
    // Lists and custom fields live in the store, which only the daemon
    // opens: ask it, if one is running on this config.
    let catalog_note = match daemon_catalog(c) {
        Ok(catalog) => {
            errors.extend(snap.segments.check_catalog(&catalog));
            for (name, f) in &snap.automations.loaded {
                for message in crate::automation::flow::check_catalog(f, &catalog) {
                    errors.push(crate::config::ConfigError {
                        file: snap.automations.dir.join(format!("{name}.toml")),
                        position: None,
                        key: String::new(),
                        message,
                    });
                }
            }
            "checked against the running daemon's lists and fields".to_string()
        }
        Err(e) => format!(
            "lists and custom fields not checked ({e:#}); start the daemon and run check-config again"
        ),
    };
    if !errors.is_empty() {
        // A file's problems together and in line order: a segment's unknown
        // lists and fields are found after its other problems.
        errors.sort_by(|a, b| (&a.file, a.position).cmp(&(&b.file, b.position)));
        return Err(crate::config::ConfigErrors(errors));
    }
    let mut out = format!(
        "{}: OK\n  listen      {}\n  public_url  {}\n  storage     {}\n  segments    {}\n  automations {}\n",
        path.display(),
        c.http.listen,
        c.http.public_url,
        c.storage.db_file().display(),
        c.paths.segments.display(),
        c.paths.automations.display(),
    );
    if let Some(a) = c.http.admin_listen {
        out.push_str(&format!(
            "  admin_listen {a} (admin API and /metrics only there)\n"
        ));
    }
    match &c.delivery.capture {
        Some(dir) => out.push_str(&format!(
            "  CAPTURE MODE: no mail leaves this machine; every message is written to {} (`herald outbox list`); remove `[delivery] capture` for real delivery\n",
            dir.display()
        )),
        None => out.push_str("  delivery    REAL: mail goes to the recipients' MX hosts (or each sender's relay)\n"),
    }
    for (name, f) in &snap.automations.loaded {
        out.push_str(&format!(
            "  automation {name}: {} trigger, {} step(s){}\n",
            f.trigger.name(),
            f.steps.len(),
            f.description
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        ));
    }
    if c.http.metrics_token.is_some() {
        out.push_str("  /metrics needs [http] metrics_token or the admin token\n");
    }
    out.push_str(&sms_lines(c));
    for s in &c.senders {
        let route = match &s.relay {
            Some(r) => format!("relay {}:{} ({})", r.host, r.port, r.tls.describe()),
            None => "direct MX delivery".to_string(),
        };
        out.push_str(&format!(
            "  sender {}: From {}, MAIL FROM {}, EHLO {}, {route}\n",
            s.id, s.from, s.return_path, s.helo
        ));
        for k in &s.dkim {
            let size = if k.bits > 0 {
                format!(" {}-bit", k.bits)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "    dkim {}._domainkey.{}: {}{size} key {}\n",
                k.selector,
                k.domain,
                k.algorithm.as_str(),
                k.path.display()
            ));
        }
        if s.dkim.is_empty() {
            out.push_str(&format!(
                "    WARNING: no DKIM key: mail from this sender goes out unsigned and most providers will file it as spam; `herald dkim keygen --domain {} --selector s1 --sender {}`\n",
                s.domain,
                s.id
            ));
        }
    }
    if c.senders.is_empty() {
        out.push_str("  no [[sender]]: nothing can be sent until one is configured\n");
    }
    for s in &c.sites {
        out.push_str(&format!(
            "  site {}: {} {}, time zone {}{}\n",
            s.id,
            s.name,
            s.url,
            s.time_zone.name(),
            if s.autologin.is_some() {
                ", auto-login on"
            } else {
                ""
            }
        ));
    }
    match &c.signup {
        Some(su) => out.push_str(&format!(
            "  signup form on (POST /subscribe): lists {}, confirmation template {}, {} per address per hour\n",
            su.lists.join(", "),
            su.template,
            su.rate_per_ip_per_hour
        )),
        None => out.push_str("  signup form off (no [signup])\n"),
    }
    out.push_str(&format!(
        "    {} segment files loaded; {catalog_note}\n",
        snap.segments.loaded.len()
    ));
    for s in snap.segments.loaded.values() {
        out.push_str(&format!(
            "    {}: {}\n",
            s.name,
            s.description.as_deref().unwrap_or("")
        ));
    }
    out.push_str(&format!(
        "  templates   {} ({} loaded)\n",
        snap.templates.dir.display(),
        snap.templates.loaded.len()
    ));
    for t in snap.templates.loaded.values() {
        let langs: Vec<String> = t.languages().into_iter().collect();
        let sms: std::collections::BTreeSet<&str> = t.sms.keys().map(|(_, l)| l.as_str()).collect();
        let sms = sms.into_iter().collect::<Vec<_>>().join(", ");
        let line = match (langs.is_empty(), sms.is_empty()) {
            (true, _) => format!("SMS only, languages {sms}"),
            (false, true) => format!("sender {}, languages {}", t.sender, langs.join(", ")),
            (false, false) => format!(
                "sender {}, languages {}; SMS {sms}",
                t.sender,
                langs.join(", ")
            ),
        };
        out.push_str(&format!("    {}: {}, {line}\n", t.name, t.kind.as_str()));
    }
    Ok(out)
}

/// Fetches the running daemon's lists and fields (2 s at most).
/// What `check-config` says about SMS: each gateway and the URL to give
/// its provider for replies, and the quiet hours.
fn sms_lines(c: &crate::config::Config) -> String {
    let public = c.http.public_base();
    let mut out = String::new();
    for g in &c.sms.gateways {
        out.push_str(&format!(
            "  sms_gateway {}: {} at {}, from {}, {}/s, {} connection(s); replies (STOP) to {}\n",
            g.id,
            g.kind.as_str(),
            g.base_url,
            g.from,
            g.rate_per_second,
            g.connections,
            crate::sms::gateway::inbound_url(g, &public),
        ));
    }
    if !c.sms.gateways.is_empty() && c.delivery.capture.is_some() {
        out.push_str("  CAPTURE MODE keeps SMS too: each is written to the capture folder's sms/, no gateway is called\n");
    }
    if !c.sms.gateways.is_empty() {
        let quiet = c.sms.quiet_hours.map_or("off".to_string(), |(a, b)| {
            format!("{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60)
        });
        out.push_str(&format!("  sms quiet hours {quiet} (site time)\n"));
    }
    out
}

fn daemon_catalog(c: &Config) -> anyhow::Result<crate::segment::Catalog> {
    let target = crate::client::ApiTarget::from_config(c, None, None)?;
    let sites = c.sites.iter().map(|s| s.id.clone()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            crate::client::catalog(&target, sites),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the daemon did not answer within 2 s"))?
    })
}
