//! The HTTP server (hyper): admin API, health, metrics, and later the public
//! tracking and unsubscribe endpoints and the admin UI.
//!
//! [`serve`] takes already-bound listeners and a shutdown future (as
//! mini-redis does), so tests run it on port 0 without signals. Each accepted
//! connection takes a slot of its listener's connection limits
//! ([`limits::Gate`]: in total and per client address) or is closed at once.
//! Every request goes through [`dispatch`]: the route table in [`route`] names
//! each endpoint, admin routes check the bearer token first (and are served
//! only on `[http] admin_listen` when that is set), request bodies are held to
//! a pace ([`reply::BodyPace`]), and every response is counted in `/metrics`
//! under its route name.

pub mod limits;
pub mod pages;
pub mod public;
pub mod reply;
pub mod sms;
pub mod track;
pub mod ui;
pub mod v1;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{Metrics, RequestLabels};
use crate::snapshot::Snapshot;
use crate::store::Store;
use reply::{ApiError, Body, ReqBody};

/// Everything a request handler can reach.
pub struct AppState {
    /// The current snapshot (config, templates, segment files); SIGHUP
    /// swaps it whole.
    pub config: Arc<crate::snapshot::Current>,
    /// The delivery engine.
    pub delivery: crate::delivery::Engine,
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
    /// The clock.
    pub clock: Clock,
    /// The rayon pool bulk rendering and previews run on.
    pub render_pool: Arc<rayon::ThreadPool>,
    /// The segment index.
    pub index: Arc<crate::segment::Index>,
    /// Templates compiled for transactional sends (per template, tag and
    /// day; a reload's new snapshot compiles afresh).
    pub compiled: crate::send::outbox::TemplateCache,
    /// Campaigns (the runner behind the campaign API).
    pub campaigns: Arc<crate::campaign::Campaigns>,
    /// Automations (flows, the store hook, the runner).
    pub automations: Arc<crate::automation::Automations>,
    /// The last seconds of click traffic (machine-click heuristics).
    pub recent: crate::track::machine::Recent,
    /// The hit journal and its applier.
    pub hits: Arc<crate::track::journal::Applier>,
    /// Signups per client address in the current hour.
    pub signup_limits: public::Limiter,
    /// In-flight work and the stop signal (imports hold an `import` guard).
    pub activity: crate::activity::Activity,
    /// The admin UI's own state (failed logins).
    pub ui: ui::UiState,
    /// The last DNS checks of the senders (`GET /api/v1/doctor`).
    pub doctor: v1::doctor::Cache,
}

/// Who sent a request: the client address (from `X-Forwarded-For` when
/// the peer is a trusted proxy) and the user agent.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// Client IP address.
    pub ip: Option<std::net::IpAddr>,
    /// `User-Agent`, empty when absent (at most 512 bytes kept).
    pub user_agent: String,
}

impl Client {
    /// The client of a request from `peer`.
    pub fn of(peer: SocketAddr, headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> Client {
        let mut ip = peer.ip();
        if trusted.iter().any(|n| n.contains(&ip)) {
            // The rightmost address not a trusted proxy is the client.
            let hops: Vec<std::net::IpAddr> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|h| h.trim().parse().ok())
                .collect();
            for h in hops.into_iter().rev() {
                ip = h;
                if !trusted.iter().any(|n| n.contains(&h)) {
                    break;
                }
            }
        }
        let mut user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if user_agent.len() > 512 {
            let mut end = 512;
            while !user_agent.is_char_boundary(end) {
                end -= 1;
            }
            user_agent.truncate(end);
        }
        Client {
            ip: Some(ip),
            user_agent,
        }
    }
}

/// Who is calling an API route: a user of the admin UI, or the bearer
/// token (`api`, with the admin role). Handlers find it in the request's
/// extensions (the owner of what they create).
#[derive(Debug, Clone)]
pub struct Actor {
    /// A user's name, or `api`.
    pub name: String,
    /// What they may do.
    pub role: crate::users::Role,
}

impl Actor {
    /// The bearer token.
    pub fn api() -> Actor {
        Actor {
            name: "api".into(),
            role: crate::users::Role::Admin,
        }
    }
}

/// Put into a response's extensions by an endpoint that created an
/// object (`campaign:3`, `import:7`, `list:2`, `field:size`, `user:ana`):
/// the activity log names it, and a new campaign gets its maker as owner.
#[derive(Debug, Clone)]
pub struct Created(pub String);

/// `response`, marked as having created `object`.
pub fn created(mut response: Response<Body>, object: String) -> Response<Body> {
    response.extensions_mut().insert(Created(object));
    response
}

impl AppState {
    /// The inbound side (reports, their effects) over this state's store.
    pub fn inbound(&self) -> crate::inbound::Inbound {
        crate::inbound::Inbound {
            config: self.config.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
        }
    }

    /// The current snapshot's config.
    pub fn config(&self) -> Arc<Config> {
        self.config.get()
    }

    /// The current snapshot: the config with the templates and segment
    /// files loaded with it. Take it once where they are used together.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.config.snapshot()
    }
}

/// How long shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `[http] listen`: every route, or only the public ones when
    /// `admin_listen` is set.
    Public,
    /// `[http] admin_listen`: every route.
    Admin,
}

/// The bound listeners [`serve`] accepts on.
pub struct Listeners {
    /// `[http] listen`.
    pub public: TcpListener,
    /// `[http] admin_listen`, when set.
    pub admin: Option<TcpListener>,
}

/// The connection caps of each listener: the configured ones, lowered to
/// what the process's descriptors allow (`budget`, for both together).
#[derive(Debug, Clone, Copy)]
struct Caps {
    public: usize,
    admin: usize,
}

impl Caps {
    fn of(limits: &crate::config::HttpLimits, budget: usize, admin: bool) -> Caps {
        let admin = if admin {
            limits.admin_max_connections.min(budget / 4).max(1)
        } else {
            0
        };
        Caps {
            public: limits
                .max_connections
                .min(budget.saturating_sub(admin))
                .max(1),
            admin,
        }
    }
}

/// Serves HTTP on `listeners` until `shutdown` resolves, then stops accepting
/// and waits for in-flight requests (at most [`SHUTDOWN_GRACE`]).
pub async fn serve(listeners: Listeners, state: Arc<AppState>, shutdown: impl Future<Output = ()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let config = state.config();
    let budget = limits::fd_limit().map_or(usize::MAX, |n| {
        limits::connection_budget(n, config.delivery.max_connections)
    });
    let has_admin = listeners.admin.is_some();
    let caps = Caps::of(&config.http.limits, budget, has_admin);
    if caps.public < config.http.limits.max_connections {
        let (max, fds) = (config.http.limits.max_connections, limits::fd_limit());
        let fd_limit = fds.unwrap_or(0);
        // Worth a warning only when it really constrains.
        if caps.public < 1024 {
            tracing::warn!(
                max_connections = max,
                allowed = caps.public,
                fd_limit,
                "http: max_connections lowered to what the open-file limit allows (raise LimitNOFILE)"
            );
        } else {
            tracing::info!(
                max_connections = max,
                allowed = caps.public,
                fd_limit,
                "http: max_connections lowered to what the open-file limit allows"
            );
        }
    }
    drop(config);
    let public_gate = limits::Gate::new(
        "public",
        &state.metrics.http_connections,
        state.metrics.http_connections_refused.clone(),
    );
    let admin_gate = limits::Gate::new(
        "admin",
        &state.metrics.http_connections,
        state.metrics.http_connections_refused.clone(),
    );
    let Listeners { public, admin } = listeners;
    let accept_admin = async |admin: &Option<TcpListener>| match admin {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    };
    tokio::pin!(shutdown);
    loop {
        let (accepted, kind) = tokio::select! {
            a = public.accept() => (a, Listener::Public),
            a = accept_admin(&admin) => (a, Listener::Admin),
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Limits are read per connection, so a reload changes them (within
        // the descriptor budget fixed at start).
        let config = state.config();
        let l = &config.http.limits;
        let slot = match kind {
            Listener::Public => {
                // A trusted proxy carries many clients: only the total counts.
                let exempt = config
                    .http
                    .trusted_proxies
                    .iter()
                    .any(|n| n.contains(&peer.ip()));
                let cap = Caps::of(l, budget, has_admin).public;
                public_gate.admit(
                    peer.ip(),
                    cap,
                    (!exempt).then_some(l.max_connections_per_ip),
                )
            }
            Listener::Admin => admin_gate.admit(peer.ip(), Caps::of(l, budget, true).admin, None),
        };
        let Ok(slot) = slot else {
            // Over a cap: closed now, never queued.
            drop(stream);
            continue;
        };
        let state = state.clone();
        let svc = service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(dispatch(state, peer, kind, req).await) }
        });
        // The header timeout also ends idle keep-alive connections: hyper
        // starts it whenever it waits for a request's head.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(l.idle_timeout)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(public);
    drop(admin);
    tracing::info!("http: no longer accepting connections; waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("http: all connections closed"),
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("http: gave up waiting for open connections"),
    }
}

/// Every endpoint, by name. The name is the `route` label in `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`
    Health,
    /// `/sms/{gateway}/status`: delivery reports (public, signed).
    SmsStatus(String),
    /// `/sms/{gateway}/inbound`: replies to the shop's number (public, signed).
    SmsInbound(String),
    /// `GET /api/v1/sms`: the SMS queue, newest first.
    SmsList,
    /// `GET /api/v1/sms/{id}`: one text message.
    SmsOne(String),
    /// `GET /readyz`
    Ready,
    /// `GET /metrics`
    Metrics,
    /// `/api/v1/contacts`
    Contacts,
    /// `/api/v1/contacts/import`
    Import,
    /// `/api/v1/contacts/import/{id}`
    ImportOne(String),
    /// `/api/v1/contacts/import/{id}/rejects`
    ImportRejects(String),
    /// `/api/v1/contacts/{ref}`
    Contact(String),
    /// `/api/v1/contacts/{ref}/consent`
    ContactConsent(String),
    /// `/api/v1/contacts/{ref}/export`
    ContactExport(String),
    /// `/api/v1/fields`
    Fields,
    /// `/api/v1/fields/{name}`
    Field(String),
    /// `/api/v1/lists`
    Lists,
    /// `/api/v1/lists/{ref}`
    List(String),
    /// `/api/v1/messages`
    Messages,
    /// `/api/v1/queue`
    Queue,
    /// `/api/v1/queue/retry`
    QueueRetry,
    /// `/api/v1/queue/purge`
    QueuePurge,
    /// `/api/v1/queue/{id}`
    QueueMessage(String),
    /// `/api/v1/templates`
    Templates,
    /// `/api/v1/templates/{name}`
    Template(String),
    /// `/api/v1/templates/{name}/preview`
    TemplatePreview(String),
    /// `/api/v1/products`
    Products,
    /// `/api/v1/products/{sku}`
    Product(String),
    /// `/api/v1/coupons`
    Coupons,
    /// `/api/v1/coupons/{pool}`
    CouponPool(String),
    /// `/api/v1/events`
    Events,
    /// `/api/v1/automations`
    Automations,
    /// `/api/v1/automations/{name}`
    Automation(String),
    /// `/api/v1/automations/{name}/{action}` (pause, resume, preview, test)
    AutomationAction(String, String),
    /// `/api/v1/segments`
    Segments,
    /// `/api/v1/segments/{name}`
    Segment(String),
    /// `/api/v1/segments/{name}/preview`
    SegmentPreview(String),
    /// `/api/v1/segments/{name}/contacts`
    SegmentContacts(String),
    /// `/api/v1/campaigns`
    Campaigns,
    /// `/api/v1/campaigns/{id}`
    Campaign(String),
    /// `/api/v1/campaigns/{id}/{action}`
    CampaignAction(String, String),
    /// `GET /o/{token}` (public)
    Open(String),
    /// `GET /c/{token}` (public)
    Click(String),
    /// `GET|POST /u/{token}` (public): unsubscribe and preferences
    Unsubscribe(String),
    /// `GET /confirm/{token}` (public)
    Confirm(String),
    /// `GET /v/{token}` (public)
    View(String),
    /// `POST /subscribe` (public)
    Subscribe,
    /// `/api/v1/reports/campaigns`
    ReportCampaigns,
    /// `/api/v1/complaints`
    Complaints,
    /// `/api/v1/reports/campaigns/{id}`
    ReportCampaign(String),
    /// `/api/v1/reports/sends/{kind}` (the sends of a kind)
    ReportSends(String),
    /// `/api/v1/reports/sends/{kind}/{id}`
    ReportSend(String, String),
    /// `/api/v1/contacts/{ref}/history` and `/api/v1/reports/contacts/{ref}`
    ContactHistory(String),
    /// `/api/v1/users`
    Users,
    /// `/api/v1/users/{name}`
    User(String),
    /// `/api/v1/activity`
    Activity,
    /// `/api/v1/owners/{kind}/{id}`
    Owner(String, String),
    /// `/api/v1/queue/domains/{domain}`
    QueueDomain(String),
    /// `/api/v1/reports/overview` (every send per day, for the dashboard)
    ReportOverview,
    /// `/api/v1/bounces` (a raw DSN received elsewhere)
    Bounces,
    /// `/api/v1/inbound` (reports taken)
    InboundReports,
    /// `/api/v1/inbound/{id}`
    InboundReport(String),
    /// `/api/v1/suppressions`
    Suppressions,
    /// `/api/v1/doctor`
    Doctor,
    /// `/api/v1/outbox` (the capture outbox)
    Outbox,
    /// `/api/v1/outbox/{queue id}`
    OutboxMessage(String),
    /// `/api/v1/suppressions/{address or hash}`
    Suppression(String),
    /// `/` and everything under `/admin` (the admin UI; its own sessions).
    Ui,
    /// Anything else under `/api/`.
    ApiUnknown,
    /// Anything else.
    Unknown,
}

impl Route {
    /// The route's name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Route::Health => "healthz",
            Route::SmsStatus(_) => "sms_status",
            Route::SmsInbound(_) => "sms_inbound",
            Route::SmsList => "sms_list",
            Route::SmsOne(_) => "sms_one",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Contacts => "contacts",
            Route::Import => "contacts_import",
            Route::ImportOne(_) => "contacts_import_one",
            Route::ImportRejects(_) => "contacts_import_rejects",
            Route::Contact(_) => "contact",
            Route::ContactConsent(_) => "contact_consent",
            Route::ContactExport(_) => "contact_export",
            Route::Fields => "fields",
            Route::Field(_) => "field",
            Route::Lists => "lists",
            Route::List(_) => "list",
            Route::Messages => "messages",
            Route::Queue => "queue",
            Route::QueueRetry => "queue_retry",
            Route::QueuePurge => "queue_purge",
            Route::QueueMessage(_) => "queue_message",
            Route::Templates => "templates",
            Route::Template(_) => "template",
            Route::TemplatePreview(_) => "template_preview",
            Route::Products => "products",
            Route::Product(_) => "product",
            Route::Coupons => "coupons",
            Route::CouponPool(_) => "coupon_pool",
            Route::Events => "events",
            Route::Automations => "automations",
            Route::Automation(_) => "automation",
            Route::AutomationAction(_, _) => "automation_action",
            Route::Segments => "segments",
            Route::Segment(_) => "segment",
            Route::SegmentPreview(_) => "segment_preview",
            Route::SegmentContacts(_) => "segment_contacts",
            Route::Campaigns => "campaigns",
            Route::Campaign(_) => "campaign",
            Route::CampaignAction(_, _) => "campaign_action",
            Route::Open(_) => "open",
            Route::Click(_) => "click",
            Route::Unsubscribe(_) => "unsubscribe",
            Route::Confirm(_) => "confirm",
            Route::View(_) => "view",
            Route::Subscribe => "subscribe",
            Route::ReportCampaigns => "report_campaigns",
            Route::Complaints => "complaints",
            Route::ReportCampaign(_) => "report_campaign",
            Route::ReportSends(_) => "report_sends",
            Route::ReportSend(..) => "report_send",
            Route::ContactHistory(_) => "contact_history",
            Route::Users => "users",
            Route::User(_) => "user",
            Route::Activity => "activity",
            Route::Owner(..) => "owner",
            Route::QueueDomain(_) => "queue_domain",
            Route::ReportOverview => "report_overview",
            Route::Bounces => "bounces",
            Route::InboundReports => "inbound",
            Route::InboundReport(_) => "inbound_report",
            Route::Suppressions => "suppressions",
            Route::Doctor => "doctor",
            Route::Outbox => "outbox",
            Route::OutboxMessage(_) => "outbox_message",
            Route::Suppression(_) => "suppression",
            Route::Ui => "admin_ui",
            Route::ApiUnknown => "api_unknown",
            Route::Unknown => "unknown",
        }
    }

    fn is_admin(&self) -> bool {
        !matches!(
            self,
            Route::Health
                | Route::Ready
                | Route::Metrics
                | Route::Unknown
                | Route::Open(_)
                | Route::Click(_)
                | Route::Unsubscribe(_)
                | Route::Confirm(_)
                | Route::View(_)
                | Route::Subscribe
                | Route::SmsStatus(_)
                | Route::SmsInbound(_)
                | Route::Ui
        )
    }

    /// The least role that may call this route with `method`: reads need
    /// a viewer (previews are reads), changes an editor, and users and
    /// changes to the queue an admin.
    pub fn required_role(&self, method: &Method) -> crate::users::Role {
        use crate::users::Role;
        let read = matches!(*method, Method::GET | Method::HEAD)
            || matches!(self, Route::TemplatePreview(_))
            || matches!(self, Route::AutomationAction(_, a) if a == "preview");
        match self {
            Route::Users | Route::User(_) => Role::Admin,
            Route::QueueRetry | Route::QueuePurge => Role::Admin,
            _ if read => Role::Viewer,
            _ => Role::Editor,
        }
    }

    /// What the activity log says a change was made to (`campaign:3`);
    /// contacts are named by id only (an address is personal data the log
    /// would keep after an erasure).
    pub fn object(&self) -> Option<String> {
        let o = |k: &str, id: &str| Some(format!("{k}:{id}"));
        match self {
            Route::Contact(r) | Route::ContactConsent(r) | Route::ContactExport(r) => {
                if v1::all_digits(r) {
                    o("contact", r)
                } else {
                    Some("contact".into())
                }
            }
            Route::Campaign(id) | Route::CampaignAction(id, _) => o("campaign", id),
            Route::Automation(n) | Route::AutomationAction(n, _) => o("automation", n),
            Route::Segment(n) => o("segment", n),
            Route::Template(n) | Route::TemplatePreview(n) => o("template", n),
            Route::List(r) => o("list", r),
            Route::Field(n) => o("field", n),
            Route::User(n) => o("user", n),
            Route::Product(s) => o("product", s),
            Route::CouponPool(p) => o("coupons", p),
            Route::ImportOne(id) => o("import", id),
            Route::QueueMessage(id) => o("queue", id),
            Route::Owner(k, id) => o(k, id),
            _ => None,
        }
    }

    /// Whether a successful call with `method` is written to the activity
    /// log: every change, except the machine feeds (shop events, complaints
    /// and transactional messages sent with the token, which keep their
    /// own records; a message a person sends from the UI, a template's test,
    /// is logged) and reads made with `POST` (previews).
    fn logged(&self, method: &Method, actor: &Actor) -> bool {
        let feed = match self {
            Route::Events | Route::Complaints | Route::Bounces => true,
            // Removing a suppression writes its own entry, with the reason,
            // in the transaction that removes it.
            Route::Suppression(_) => true,
            Route::Messages => actor.name == "api",
            _ => false,
        };
        !matches!(*method, Method::GET | Method::HEAD)
            && !feed
            && !matches!(self, Route::TemplatePreview(_))
            && !matches!(self, Route::AutomationAction(_, a) if a == "preview")
    }
}

/// Maps a path to its route.
pub fn route(path: &str) -> Route {
    // The pixel and the redirect are the hot paths: a token is base64url,
    // nothing to decode.
    let plain = |t: &str| !t.is_empty() && !t.contains(['/', '%', '+']);
    if let Some(t) = path.strip_prefix("/o/")
        && plain(t)
    {
        return Route::Open(t.to_string());
    }
    if let Some(t) = path.strip_prefix("/c/")
        && plain(t)
    {
        return Route::Click(t.to_string());
    }
    let decoded: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["healthz"] => Route::Health,
        ["readyz"] => Route::Ready,
        ["o", t] => Route::Open(t.to_string()),
        ["c", t] => Route::Click(t.to_string()),
        ["u", t] => Route::Unsubscribe(t.to_string()),
        ["confirm", t] => Route::Confirm(t.to_string()),
        ["v", t] => Route::View(t.to_string()),
        ["subscribe"] => Route::Subscribe,
        ["sms", g, "status"] => Route::SmsStatus(g.to_string()),
        ["sms", g, "inbound"] => Route::SmsInbound(g.to_string()),
        ["api", "v1", "sms"] => Route::SmsList,
        ["api", "v1", "sms", id] => Route::SmsOne(id.to_string()),
        ["api", "v1", "reports", "campaigns"] => Route::ReportCampaigns,
        ["api", "v1", "complaints"] => Route::Complaints,
        ["api", "v1", "reports", "campaigns", id] => Route::ReportCampaign(id.to_string()),
        ["api", "v1", "reports", "sends", k] => Route::ReportSends(k.to_string()),
        ["api", "v1", "reports", "sends", k, id] => {
            Route::ReportSend(k.to_string(), id.to_string())
        }
        ["api", "v1", "reports", "contacts", r] => Route::ContactHistory(r.to_string()),
        ["api", "v1", "contacts", r, "history"] => Route::ContactHistory(r.to_string()),
        ["metrics"] => Route::Metrics,
        ["api", "v1", "contacts"] => Route::Contacts,
        ["api", "v1", "contacts", "import"] => Route::Import,
        ["api", "v1", "contacts", "import", id] => Route::ImportOne(id.to_string()),
        ["api", "v1", "contacts", "import", id, "rejects"] => Route::ImportRejects(id.to_string()),
        ["api", "v1", "contacts", r] => Route::Contact(r.to_string()),
        ["api", "v1", "contacts", r, "consent"] => Route::ContactConsent(r.to_string()),
        ["api", "v1", "contacts", r, "export"] => Route::ContactExport(r.to_string()),
        ["api", "v1", "fields"] => Route::Fields,
        ["api", "v1", "fields", n] => Route::Field(n.to_string()),
        ["api", "v1", "lists"] => Route::Lists,
        ["api", "v1", "lists", r] => Route::List(r.to_string()),
        ["api", "v1", "messages"] => Route::Messages,
        ["api", "v1", "queue"] => Route::Queue,
        ["api", "v1", "queue", "retry"] => Route::QueueRetry,
        ["api", "v1", "queue", "purge"] => Route::QueuePurge,
        ["api", "v1", "queue", id] => Route::QueueMessage(id.to_string()),
        ["api", "v1", "templates"] => Route::Templates,
        ["api", "v1", "templates", n] => Route::Template(n.to_string()),
        ["api", "v1", "templates", n, "preview"] => Route::TemplatePreview(n.to_string()),
        ["api", "v1", "products"] => Route::Products,
        ["api", "v1", "products", s] => Route::Product(s.to_string()),
        ["api", "v1", "coupons"] => Route::Coupons,
        ["api", "v1", "coupons", p] => Route::CouponPool(p.to_string()),
        ["api", "v1", "events"] => Route::Events,
        ["api", "v1", "automations"] => Route::Automations,
        ["api", "v1", "automations", n] => Route::Automation(n.to_string()),
        ["api", "v1", "automations", n, a] => Route::AutomationAction(n.to_string(), a.to_string()),
        ["api", "v1", "segments"] => Route::Segments,
        ["api", "v1", "segments", n] => Route::Segment(n.to_string()),
        ["api", "v1", "segments", n, "preview"] => Route::SegmentPreview(n.to_string()),
        ["api", "v1", "segments", n, "contacts"] => Route::SegmentContacts(n.to_string()),
        ["api", "v1", "campaigns"] => Route::Campaigns,
        ["api", "v1", "campaigns", id] => Route::Campaign(id.to_string()),
        ["api", "v1", "campaigns", id, a] => Route::CampaignAction(id.to_string(), a.to_string()),
        ["api", "v1", "users"] => Route::Users,
        ["api", "v1", "users", n] => Route::User(n.to_string()),
        ["api", "v1", "activity"] => Route::Activity,
        ["api", "v1", "owners", k, id] => Route::Owner(k.to_string(), id.to_string()),
        ["api", "v1", "queue", "domains", d] => Route::QueueDomain(d.to_string()),
        ["api", "v1", "reports", "overview"] => Route::ReportOverview,
        ["api", "v1", "bounces"] => Route::Bounces,
        ["api", "v1", "inbound"] => Route::InboundReports,
        ["api", "v1", "inbound", id] => Route::InboundReport(id.to_string()),
        ["api", "v1", "suppressions"] => Route::Suppressions,
        ["api", "v1", "doctor"] => Route::Doctor,
        ["api", "v1", "outbox"] => Route::Outbox,
        ["api", "v1", "outbox", id] => Route::OutboxMessage(id.to_string()),
        ["api", "v1", "suppressions", w] => Route::Suppression(w.to_string()),
        ["api", ..] => Route::ApiUnknown,
        [""] => Route::Ui,
        ["admin", ..] => Route::Ui,
        _ => Route::Unknown,
    }
}

fn percent_decode(s: &str) -> String {
    // A path's `+` is a plus and its `&` an ampersand (legal in a path,
    // sent as is by clients): neither may reach the form decoder raw, which
    // would read a space, or end the value at the `&`.
    let s = s.replace('+', "%2B").replace('&', "%26");
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// The method as a metrics label: any method outside HTTP's standard set is
/// `other`, so clients cannot grow the label set without bound.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this endpoint accepts {allow}"),
    )
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message.to_string(),
    )
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 7235 §2.1): `bearer` and `BEARER` are `Bearer`.
fn bearer(headers: &http::HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing header `Authorization: Bearer <token>`",
        ));
    };
    let malformed = || unauthorized("the Authorization header must be `Bearer <token>`");
    let value = value.to_str().map_err(|_| malformed())?.trim();
    match value.split_once([' ', '\t']) {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(malformed()),
    }
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn check_token(config: &Config, headers: &http::HeaderMap) -> Result<(), ApiError> {
    if same(bearer(headers)?, &config.admin.token) {
        Ok(())
    } else {
        Err(unauthorized("wrong admin token"))
    }
}

/// `/metrics` with `[http] metrics_token` set needs that token or the
/// admin token; without it, `/metrics` is open wherever it is served.
fn check_metrics_token(config: &Config, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let Some(wanted) = &config.http.metrics_token else {
        return Ok(());
    };
    let token = bearer(headers)?;
    if same(token, &wanted.0) || same(token, &config.admin.token) {
        Ok(())
    } else {
        Err(unauthorized(
            "wrong token for /metrics ([http] metrics_token or the admin token)",
        ))
    }
}

/// Handles one request that came in on `listener`: route, authorise, call
/// the endpoint, count it.
pub async fn dispatch(
    state: Arc<AppState>,
    peer: SocketAddr,
    listener: Listener,
    req: Request<Incoming>,
) -> Response<Body> {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let (body, unread) = reply::shared_incoming(body);
    let mut req = Request::from_parts(parts, body);
    let route = route(req.uri().path());
    let method = req.method().clone();
    let config = state.config();
    let pace = reply::BodyPace::of(&config.http.limits);
    req.extensions_mut().insert(pace);
    let admin_elsewhere = listener == Listener::Public && config.http.admin_listen.is_some();
    let result =
        if admin_elsewhere && (route.is_admin() || route == Route::Metrics || route == Route::Ui) {
            // Served on the admin listener alone: here it does not exist.
            Err(ApiError::not_found(format!(
                "nothing at {}",
                req.uri().path()
            )))
        } else if route == Route::Ui {
            drop(config);
            Ok(ui::serve(&state, peer, req).await)
        } else if route.is_admin() {
            match check_token(&config, req.headers()) {
                Ok(()) => call_as(&state, &route, peer, Actor::api(), req).await,
                Err(e) => Err(e),
            }
        } else if route == Route::Metrics {
            match check_metrics_token(&config, req.headers()) {
                Ok(()) => call(&state, &route, peer, req).await,
                Err(e) => Err(e),
            }
        } else {
            call(&state, &route, peer, req).await
        };
    let mut response = result.unwrap_or_else(ApiError::into_response);
    // The rest of a body that fell behind is not waited for; the rest of
    // one the handler answered early (an error) is read first, so that the
    // client sees the answer rather than a reset connection.
    if response.status() == StatusCode::REQUEST_TIMEOUT
        || !reply::drain_unread(unread, &pace, expects_continue).await
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let status = response.status().as_u16();
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route: route.name(),
            method: method_label(&method),
            status,
        })
        .inc();
    tracing::debug!(route = route.name(), %method, status, "request");
    response
}

/// Calls an admin API route as `actor`: refused (403) below the route's
/// role; a change that succeeds is written to the activity log (and what
/// it created gets its owner) before the answer.
pub async fn call_as(
    state: &Arc<AppState>,
    route: &Route,
    peer: SocketAddr,
    actor: Actor,
    mut req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let method = req.method().clone();
    if !route.is_admin() {
        // Only admin API routes are called this way (not /metrics, not
        // the public pages).
        return Err(ApiError::not_found(format!(
            "no API endpoint {} {}",
            method,
            req.uri().path()
        )));
    }
    let needed = route.required_role(&method);
    if actor.role < needed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} needs the {needed} role; `{}` is {}",
                method,
                req.uri().path(),
                actor.name,
                actor.role
            ),
        ));
    }
    req.extensions_mut().insert(actor.clone());
    let response = call(state, route, peer, req).await?;
    if !route.logged(&method, &actor) || !response.status().is_success() {
        return Ok(response);
    }
    let object = match response.extensions().get::<Created>() {
        Some(Created(o)) => Some(o.clone()),
        None => route.object(),
    };
    let action = match route {
        Route::CampaignAction(_, a) | Route::AutomationAction(_, a) => {
            format!("{method} {} {a}", route.name())
        }
        _ => format!("{method} {}", route.name()),
    };
    let made_campaign = response
        .extensions()
        .get::<Created>()
        .is_some_and(|Created(o)| o.starts_with("campaign:"));
    let owned = match (route, &object) {
        (_, Some(o)) if made_campaign => Some(o.clone()),
        (Route::Automation(_), Some(o)) if method == Method::PUT => Some(o.clone()),
        _ => None,
    };
    let entry = crate::users::Activity {
        at: state.clock.now().timestamp_millis(),
        who: actor.name.clone(),
        action,
        object,
        status: response.status().as_u16(),
        note: None,
    };
    state
        .store
        .write(move |w| {
            if let Some(o) = owned
                && w.owner_for_write(&o)?.is_none()
            {
                w.set_owner(&o, Some(&entry.who))?;
            }
            w.append_activity(&entry).map(drop)
        })
        .await?;
    Ok(response)
}

/// `GET /healthz`: the store's state (`ok`, `low_space`, `unavailable`),
/// its free space and reserve, the background loops' last reports; 503
/// when the store cannot be written (or read). The store is read once, so
/// a store that fails reads is found out here too.
async fn health(state: &Arc<AppState>) -> Response<Body> {
    let store = &state.store;
    let mut read_error = None;
    if !store.health().is_unavailable()
        && let Err(e) = store.read(|r| r.schema_version()).await
    {
        tracing::warn!(error = %e, "healthz: the store cannot be read");
        // An I/O error made the store unavailable (reported below); any
        // other is this answer's own.
        if !e.is_unavailable() {
            read_error = Some(e.to_string());
        }
    }
    let mut report = store.health().report();
    let status = match report.status {
        crate::store::health::StoreState::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ if read_error.is_some() => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    if read_error.is_some() {
        report.error = read_error;
    }
    let mut r = reply::json_response(status, &report);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /readyz`, for load balancers: 200 `{"ready":true}` while the store
/// takes writes (`ok` or `low_space`), 503 while it is being re-opened.
/// Reads nothing.
fn ready(state: &Arc<AppState>) -> Response<Body> {
    let s = state.store.health().state();
    let ready = s != crate::store::health::StoreState::Unavailable;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut r = reply::json_response(
        status,
        &serde_json::json!({"ready": ready, "store": s.name()}),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn call(
    state: &Arc<AppState>,
    route: &Route,
    peer: SocketAddr,
    req: Request<ReqBody>,
) -> Result<Response<Body>, ApiError> {
    let m = req.method().clone();
    let client = || Client::of(peer, req.headers(), &state.config().http.trusted_proxies);
    use v1::{
        automations, campaigns, contacts, events, fields, import, lists, products, queue, segments,
        templates,
    };
    match route {
        Route::Health => match m {
            Method::GET | Method::HEAD => Ok(health(state).await),
            _ => Err(method_not_allowed("GET")),
        },
        Route::Ready => match m {
            Method::GET | Method::HEAD => Ok(ready(state)),
            _ => Err(method_not_allowed("GET")),
        },
        Route::Metrics => match m {
            Method::GET => {
                state
                    .metrics
                    .segment_index_bytes
                    .set(state.index.heap_bytes() as i64);
                state
                    .metrics
                    .segment_index_contacts
                    .set(state.index.contacts() as i64);
                state.metrics.set_shaping(&state.delivery.shaping());
                let text = state.metrics.render(&state.store).await?;
                Ok(reply::text_response(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ))
            }
            _ => Err(method_not_allowed("GET")),
        },
        Route::Contacts => match m {
            Method::GET => contacts::list(state, req).await,
            Method::POST => contacts::upsert(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Contact(r) => match m {
            Method::GET => contacts::get(state, r).await,
            Method::PATCH => contacts::update(state, r, req).await,
            Method::DELETE => contacts::erase(state, r).await,
            _ => Err(method_not_allowed("GET, PATCH, DELETE")),
        },
        Route::ContactConsent(r) => match m {
            Method::GET => contacts::consent_log(state, r).await,
            Method::POST => contacts::change_consent(state, r, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::ContactExport(r) => match m {
            Method::GET => contacts::export(state, r).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Import => match m {
            Method::POST => import::start(state, req).await,
            Method::GET => import::list(state).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::ImportOne(id) => match m {
            Method::GET => import::get(state, id).await,
            Method::DELETE => import::delete(state, id).await,
            _ => Err(method_not_allowed("GET, DELETE")),
        },
        Route::ImportRejects(id) => match m {
            Method::GET => import::rejects(state, id, req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Fields => match m {
            Method::GET => fields::list(state).await,
            Method::POST => fields::create(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Field(n) => match m {
            Method::GET => fields::get(state, n).await,
            Method::PATCH => fields::update(state, n, req).await,
            Method::DELETE => fields::delete(state, n).await,
            _ => Err(method_not_allowed("GET, PATCH, DELETE")),
        },
        Route::Lists => match m {
            Method::GET => lists::list(state).await,
            Method::POST => lists::create(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::List(r) => match m {
            Method::GET => lists::get(state, r).await,
            Method::PATCH => lists::update(state, r, req).await,
            Method::DELETE => lists::delete(state, r).await,
            _ => Err(method_not_allowed("GET, PATCH, DELETE")),
        },
        Route::Messages => match m {
            Method::POST => queue::submit(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::Queue => match m {
            Method::GET => queue::status(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::QueueRetry => match m {
            Method::POST => queue::retry(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::QueuePurge => match m {
            Method::POST => queue::purge(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::QueueMessage(id) => match m {
            Method::GET => queue::get(state, id).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Templates => match m {
            Method::GET => templates::list(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Template(n) => match m {
            Method::GET => templates::get(state, n).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::TemplatePreview(n) => match m {
            Method::POST => templates::preview(state, n, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::Products => match m {
            Method::GET => products::list(state, &req).await,
            Method::POST => products::upsert(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Product(sku) => match m {
            Method::GET => products::get(state, sku).await,
            Method::DELETE => products::delete(state, sku).await,
            _ => Err(method_not_allowed("GET, DELETE")),
        },
        Route::Coupons => match m {
            Method::GET => v1::coupons::list(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::CouponPool(p) => match m {
            Method::GET => v1::coupons::get(state, p).await,
            Method::POST => v1::coupons::upload(state, p, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Events => match m {
            Method::POST => events::ingest(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::Automations => match m {
            Method::GET => automations::list(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Automation(n) => match m {
            Method::GET => automations::get(state, n).await,
            Method::PUT => automations::put(state, n, req).await,
            Method::DELETE => automations::delete(state, n).await,
            _ => Err(method_not_allowed("GET, PUT, DELETE")),
        },
        Route::AutomationAction(n, a) => match (m, a.as_str()) {
            (Method::POST, "pause") => automations::pause(state, n, true).await,
            (Method::POST, "resume") => automations::pause(state, n, false).await,
            (Method::POST, "preview") => automations::preview(state, n, req).await,
            (Method::POST, "test") => automations::test(state, n, req).await,
            (_, "pause" | "resume" | "preview" | "test") => Err(method_not_allowed("POST")),
            _ => Err(ApiError::not_found(format!(
                "no action `{a}`; automations have pause, resume, preview and test"
            ))),
        },
        Route::Segments => match m {
            Method::GET => segments::list(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Segment(n) => match m {
            Method::GET => segments::get(state, n).await,
            Method::PUT => segments::put(state, n, req).await,
            Method::DELETE => segments::delete(state, n).await,
            _ => Err(method_not_allowed("GET, PUT, DELETE")),
        },
        Route::SegmentPreview(n) => match m {
            Method::GET => segments::preview(state, n, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::SegmentContacts(n) => match m {
            Method::GET => segments::contacts(state, n, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Open(t) => match m {
            Method::GET | Method::HEAD => track::open(state, t, &m, &client()).await,
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        Route::Click(t) => match m {
            Method::GET | Method::HEAD => public::page_unavailable(
                false,
                &state.config(),
                track::click(state, t, &m, &client()).await,
            ),
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        Route::Unsubscribe(t) => match m {
            Method::GET | Method::HEAD => public::page_unavailable(
                false,
                &state.config(),
                public::unsubscribe_page(state, t).await,
            ),
            Method::POST => {
                let c = client();
                let r = public::unsubscribe_post(state, t, &c, req).await;
                public::page_unavailable(true, &state.config(), r)
            }
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Confirm(t) => match m {
            Method::GET | Method::POST => public::page_unavailable(
                true,
                &state.config(),
                public::confirm(state, t, &client(), true).await,
            ),
            Method::HEAD => public::confirm(state, t, &client(), false).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::View(t) => match m {
            Method::GET | Method::HEAD => {
                public::page_unavailable(false, &state.config(), public::view(state, t).await)
            }
            _ => Err(method_not_allowed("GET")),
        },
        Route::SmsStatus(g) => match m {
            Method::GET | Method::POST => sms::handle(state, g, sms::Kind::Status, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::SmsInbound(g) => match m {
            Method::GET | Method::POST => sms::handle(state, g, sms::Kind::Inbound, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::SmsList => match m {
            Method::GET => v1::sms::list(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::SmsOne(id) => match m {
            Method::GET => v1::sms::get(state, id).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Subscribe => match m {
            Method::POST => {
                let c = client();
                let r = public::subscribe(state, &c, req).await;
                public::page_unavailable(true, &state.config(), r)
            }
            _ => Err(method_not_allowed("POST")),
        },
        Route::ReportCampaigns => match m {
            Method::GET => v1::reports::campaigns(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Complaints => match m {
            Method::POST if v1::inbound::is_raw(&req) => v1::inbound::raw_report(state, req).await,
            Method::POST => v1::reports::complaint(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::Bounces => match m {
            Method::POST => v1::inbound::raw_report(state, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::InboundReports => match m {
            Method::GET => v1::inbound::list(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::InboundReport(id) => match m {
            Method::GET => v1::inbound::get(state, id, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Doctor => match m {
            Method::GET => v1::doctor::get(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Outbox => match m {
            Method::GET => v1::outbox::list(state).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::OutboxMessage(id) => match m {
            Method::GET => v1::outbox::get(state, id).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Suppressions => match m {
            Method::GET => v1::inbound::suppressions(state, &req).await,
            Method::POST => v1::inbound::add_suppression(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Suppression(w) => match m {
            Method::DELETE => v1::inbound::remove_suppression(state, w, req).await,
            _ => Err(method_not_allowed("DELETE")),
        },
        Route::ReportCampaign(id) => match m {
            Method::GET => v1::reports::campaign(state, id, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::ReportSends(kind) => match m {
            Method::GET => v1::reports::sends(state, kind).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::ReportSend(kind, id) => match m {
            Method::GET => v1::reports::send(state, kind, id, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::ContactHistory(r) => match m {
            Method::GET => v1::reports::contact(state, r, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Campaigns => match m {
            Method::GET => campaigns::list(state, &req).await,
            Method::POST => campaigns::create(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::Campaign(id) => match m {
            Method::GET => campaigns::get(state, id).await,
            Method::PUT => campaigns::edit(state, id, req).await,
            Method::DELETE => campaigns::delete(state, id).await,
            _ => Err(method_not_allowed("GET, PUT, DELETE")),
        },
        Route::CampaignAction(id, a) => match m {
            Method::POST => campaigns::action(state, id, a, req).await,
            _ => Err(method_not_allowed("POST")),
        },
        Route::Users => match m {
            Method::GET => v1::users::list(state).await,
            Method::POST => v1::users::add(state, req).await,
            _ => Err(method_not_allowed("GET, POST")),
        },
        Route::User(n) => match m {
            Method::GET => v1::users::get(state, n).await,
            Method::PATCH => v1::users::update(state, n, req).await,
            Method::DELETE => v1::users::delete(state, n).await,
            _ => Err(method_not_allowed("GET, PATCH, DELETE")),
        },
        Route::Activity => match m {
            Method::GET => v1::users::activity(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Owner(k, id) => match m {
            Method::GET => v1::users::owner(state, k, id).await,
            Method::PUT => v1::users::set_owner(state, k, id, req).await,
            _ => Err(method_not_allowed("GET, PUT")),
        },
        Route::QueueDomain(d) => match m {
            Method::GET => queue::domain(state, d, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::ReportOverview => match m {
            Method::GET => v1::reports::overview(state, &req).await,
            _ => Err(method_not_allowed("GET")),
        },
        Route::Ui => Err(ApiError::not_found("the admin UI is served by http::ui")),
        Route::ApiUnknown => Err(ApiError::not_found(format!(
            "no API endpoint {} {}",
            m,
            req.uri().path()
        ))),
        Route::Unknown => Err(ApiError::not_found(format!(
            "nothing at {}",
            req.uri().path()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_named_and_decoded() {
        assert_eq!(
            route("/api/v1/contacts/a%40b.com"),
            Route::Contact("a@b.com".into())
        );
        assert_eq!(
            route("/api/v1/contacts/a+b%40c.com"),
            Route::Contact("a+b@c.com".into())
        );
        assert_eq!(route("/api/v1/contacts/import"), Route::Import);
        assert_eq!(route("/api/v1/nothing"), Route::ApiUnknown);
        assert_eq!(
            route("/api/v1/coupons/summer-26"),
            Route::CouponPool("summer-26".into())
        );
        assert!(Route::Coupons.is_admin());
        assert_eq!(
            route("/api/v1/queue/domains/example.com"),
            Route::QueueDomain("example.com".into())
        );
        assert_eq!(
            Route::QueueDomain("x".into()).required_role(&Method::GET),
            crate::users::Role::Viewer
        );
        assert_eq!(route("/healthz"), Route::Health);
        assert_eq!(route("/readyz"), Route::Ready);
        // A raw `&` or `+` in a path segment is part of the name.
        assert_eq!(
            route("/api/v1/lists/sales&marketing"),
            Route::List("sales&marketing".into())
        );
        assert_eq!(
            route("/api/v1/segments/a+b%26c%2Fd"),
            Route::Segment("a+b&c/d".into())
        );
        assert!(!Route::Metrics.is_admin());
        assert!(Route::Fields.is_admin());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            match HeaderValue::from_str(v) {
                Ok(value) => h.insert(header::AUTHORIZATION, value),
                Err(e) => return Err(e.to_string()),
            };
            bearer(&h).map(str::to_string).map_err(|e| e.message)
        };
        for v in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "bEaReR  tok ",
            "Bearer\ttok",
        ] {
            assert_eq!(with(v).as_deref(), Ok("tok"), "{v}");
        }
        for v in ["Basic tok", "Bearer", "Bearer ", "Bearertok", "tok"] {
            assert!(with(v).is_err(), "{v}");
        }
        assert!(bearer(&http::HeaderMap::new()).is_err());
    }
}
