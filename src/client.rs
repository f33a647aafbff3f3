//! CLI commands that talk to a running daemon through its admin API (the
//! daemon owns the store; the CLI never opens it). The address and token come
//! from the config file, or from `--api` and `HERALD_TOKEN`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::config::Config;

/// Where and how to reach the admin API.
pub struct ApiTarget {
    /// Base URL, e.g. `http://127.0.0.1:8025`.
    pub base: url::Url,
    /// Bearer token.
    pub token: String,
}

impl ApiTarget {
    /// From the config file (`admin_listen` or else `listen`, and the
    /// token), with overrides.
    pub fn from_config(
        config: &Config,
        api: Option<&str>,
        token: Option<String>,
    ) -> anyhow::Result<ApiTarget> {
        let base = match api {
            Some(a) => url::Url::parse(a).with_context(|| format!("--api `{a}` is not a URL"))?,
            None => {
                // The admin API is served on admin_listen when that is set.
                let mut addr = config.http.admin_listen.unwrap_or(config.http.listen);
                if addr.ip().is_unspecified() {
                    addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port());
                }
                url::Url::parse(&format!("http://{addr}"))?
            }
        };
        Ok(ApiTarget {
            base,
            token: token.unwrap_or_else(|| config.admin.token.clone()),
        })
    }
}

/// Sends one request with a streamed body and returns (status, body text).
async fn send(
    target: &ApiTarget,
    method: Method,
    path_and_query: &str,
    content_type: &str,
    body: StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>,
    >,
) -> anyhow::Result<(u16, String)> {
    if target.base.scheme() != "http" {
        bail!("the CLI speaks plain HTTP to the local admin API; use an http:// address");
    }
    let host = target.base.host_str().context("the API URL has no host")?;
    let port = target.base.port_or_known_default().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .with_context(|| {
            format!("cannot connect to herald at {host}:{port}; is `herald serve` running?")
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(header::HOST, format!("{host}:{port}"))
        .header(header::AUTHORIZATION, format!("Bearer {}", target.token))
        .header(header::CONTENT_TYPE, content_type)
        .body(body)?;
    let resp = sender
        .send_request(req)
        .await
        .context("the request failed")?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Options of `herald contacts import`.
#[derive(Debug, Default)]
pub struct ImportArgs {
    /// Add rows to this list.
    pub list: Option<String>,
    /// Create the list if missing.
    pub create_list: bool,
    /// Create unknown columns as text fields.
    pub create_fields: bool,
    /// Consent for rows without a consent column.
    pub consent: Option<String>,
    /// Resume an interrupted import.
    pub resume: Option<u64>,
    /// The delimiter (`,` `;` `|` `tab`).
    pub delimiter: Option<String>,
    /// The file's encoding.
    pub encoding: Option<String>,
    /// Exit 0 even when rows were rejected.
    pub allow_rejects: bool,
}

/// The daemon's words for import options (query parameters) in the CLI's
/// own (flags).
fn in_flag_words(message: &str) -> String {
    [
        ("import with create_list=true", "import with --create-list"),
        (
            "import with create_fields=true",
            "import with --create-fields",
        ),
        ("create_fields=true", "--create-fields"),
        ("create_list=true", "--create-list"),
        ("query parameter `consent`", "--consent"),
        ("query parameter `delimiter`", "--delimiter"),
        ("query parameter `encoding`", "--encoding"),
        ("?resume=", "--resume "),
        (
            "(POST /api/v1/fields)",
            "(the admin UI's Fields page, or POST /api/v1/fields)",
        ),
        ("(name the delimiter)", "(--delimiter)"),
        (
            "(is the file in another encoding? name it)",
            "(is the file in another encoding? --encoding)",
        ),
    ]
    .iter()
    .fold(message.to_string(), |m, (api, cli)| m.replace(api, cli))
}

/// The text of lines `wanted` (1-based, ascending) of `file`, each cut to
/// 100 characters; lines that cannot be read are left out.
fn lines_of(file: &Path, wanted: &[u64]) -> std::collections::HashMap<u64, String> {
    use std::io::BufRead;
    let mut out = std::collections::HashMap::new();
    let Some(&last) = wanted.iter().max() else {
        return out;
    };
    let Ok(f) = std::fs::File::open(file) else {
        return out;
    };
    let mut buf = Vec::new();
    let mut r = std::io::BufReader::new(f);
    for n in 1..=last {
        buf.clear();
        if r.read_until(b'\n', &mut buf).unwrap_or(0) == 0 {
            break;
        }
        if wanted.contains(&n) {
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end_matches(['\r', '\n']);
            let cut: String = text.chars().take(100).collect();
            let more = if text.chars().count() > 100 {
                "…"
            } else {
                ""
            };
            out.insert(n, format!("{cut}{more}"));
        }
    }
    out
}

/// `herald contacts import FILE.csv`: streams the file to the daemon and
/// prints the report. Returns the process exit code.
pub async fn import(target: &ApiTarget, file: &Path, args: &ImportArgs) -> anyhow::Result<i32> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024)
        .map(|r| r.map(Frame::data))
        .boxed();
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(l) = &args.list {
        q.append_pair("list", l);
    }
    if args.create_list {
        q.append_pair("create_list", "true");
    }
    if args.create_fields {
        q.append_pair("create_fields", "true");
    }
    if let Some(c) = &args.consent {
        q.append_pair("consent", c);
    }
    if let Some(r) = args.resume {
        q.append_pair("resume", &r.to_string());
    }
    if let Some(d) = &args.delimiter {
        q.append_pair("delimiter", d);
    }
    if let Some(e) = &args.encoding {
        q.append_pair("encoding", e);
    }
    let path = format!("/api/v1/contacts/import?{}", q.finish());
    let (status, body) = send(
        target,
        Method::POST,
        &path,
        "text/csv",
        StreamBody::new(stream),
    )
    .await?;
    let json: serde_json::Value =
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body.clone()));
    if status != 200 {
        let msg = json["error"]["message"].as_str().unwrap_or(&body);
        eprintln!(
            "herald: {}: import refused ({status}): {}",
            file.display(),
            in_flag_words(msg)
        );
        return Ok(1);
    }
    let read_as = format!(
        "read as {}{}, delimiter {}",
        json["encoding"].as_str().unwrap_or("?"),
        if json["encoding_detected"] == true && json["encoding"] != "UTF-8" {
            " (the file is not UTF-8; --encoding names another)"
        } else {
            ""
        },
        json["delimiter"].as_str().unwrap_or("?"),
    );
    println!(
        "import {}: {} created, {} updated, {} unchanged, {} duplicates merged, {} rejected ({read_as})",
        json["id"],
        json["created"],
        json["updated"],
        json["unchanged"],
        json["merged_duplicates"],
        json["rejected"]
    );
    let rejects = json["rejects"].as_array().cloned().unwrap_or_default();
    if !rejects.is_empty() {
        let numbers: Vec<u64> = rejects.iter().filter_map(|r| r["line"].as_u64()).collect();
        let texts = lines_of(file, &numbers);
        eprintln!("rejected rows:");
        for r in &rejects {
            let n = r["line"].as_u64().unwrap_or(0);
            eprintln!(
                "  {}:{n}: {}",
                file.display(),
                in_flag_words(r["reason"].as_str().unwrap_or(""))
            );
            if let Some(t) = texts.get(&n) {
                eprintln!("      {t}");
            }
        }
    }
    if json["rejects_truncated"].as_bool() == Some(true) {
        eprintln!(
            "  … more rejects: GET /api/v1/contacts/import/{}/rejects",
            json["id"]
        );
    }
    let rejected = json["rejected"].as_u64().unwrap_or(0);
    if rejected > 0 && !args.allow_rejects {
        eprintln!(
            "herald: {rejected} row{} of {} rejected; the others are imported (--allow-rejects to exit 0 all the same)",
            if rejected == 1 { "" } else { "s" },
            file.display()
        );
        return Ok(1);
    }
    Ok(0)
}

/// Sends a JSON request (or none) and returns (status, parsed body).
async fn send_json(
    target: &ApiTarget,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let bytes = Bytes::from(body.map(|b| b.to_string()).unwrap_or_default());
    let stream = futures_util::stream::once(async move { Ok(Frame::data(bytes)) }).boxed();
    let (status, text) = send(
        target,
        method,
        path,
        "application/json",
        StreamBody::new(stream),
    )
    .await?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    Ok((status, json))
}

fn api_failure(status: u16, json: &serde_json::Value) -> anyhow::Error {
    let msg = json["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| json.to_string());
    anyhow::anyhow!("the daemon refused ({status}): {msg}")
}

/// `n` (a JSON number) with the noun for one or for several: `1 message`,
/// `2 messages`.
fn plural(n: &serde_json::Value, one: &str, many: &str) -> String {
    let n = n.as_u64().unwrap_or(0);
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `herald queue status`: prints the queue summary (or the JSON).
pub async fn queue_status(target: &ApiTarget, as_json: bool) -> anyhow::Result<()> {
    let (status, v) = send_json(target, Method::GET, "/api/v1/queue", None).await?;
    if status != 200 {
        return Err(api_failure(status, &v));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let r = &v["recipients"];
    println!(
        "queue: {}; recipients {} queued, {} in flight, {} deferred; {}",
        plural(&v["messages"], "message", "messages"),
        r["queued"],
        r["in_flight"],
        r["deferred"],
        plural(&v["connections"], "connection", "connections")
    );
    println!(
        "since the store was created: {} delivered, {} failed",
        v["delivered_total"], v["failed_total"]
    );
    if let Some(o) = v["oldest"].as_object() {
        println!(
            "oldest: message {} queued {}",
            o["id"],
            o["created"].as_str().unwrap_or("?")
        );
    }
    if let Some(domains) = v["domains"].as_array().filter(|d| !d.is_empty()) {
        // A `Value` ignores width and alignment when displayed, so the
        // figures are printed as numbers; the first column fits the
        // longest domain.
        let num = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
        let w = domains
            .iter()
            .filter_map(|d| d["domain"].as_str())
            .map(|d| d.chars().count())
            .max()
            .unwrap_or(0)
            .max("domain".len());
        println!(
            "{:<w$} {:>8} {:>9} {:>8}  next attempt / last error",
            "domain", "queued", "in flight", "deferred"
        );
        for d in domains {
            let row = format!(
                "{:<w$} {:>8} {:>9} {:>8}  {} {}",
                d["domain"].as_str().unwrap_or(""),
                num(&d["queued"]),
                num(&d["in_flight"]),
                num(&d["deferred"]),
                d["next_attempt"].as_str().unwrap_or("-"),
                d["last_error"].as_str().unwrap_or("")
            );
            println!("{}", row.trim_end());
        }
    }
    Ok(())
}

/// `herald queue retry|purge`: one message or one domain.
pub async fn queue_action(
    target: &ApiTarget,
    action: &str,
    id: Option<u64>,
    domain: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({});
    if let Some(id) = id {
        body["id"] = id.into();
    }
    if let Some(d) = domain {
        body["domain"] = d.into();
    }
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    let (status, v) = send_json(
        target,
        Method::POST,
        &format!("/api/v1/queue/{action}"),
        Some(body),
    )
    .await?;
    if status != 200 {
        return Err(api_failure(status, &v));
    }
    match action {
        "purge" => println!(
            "purged {} of {}",
            plural(&v["recipients"], "recipient", "recipients"),
            plural(&v["messages"], "message", "messages")
        ),
        _ => println!(
            "{} due now",
            plural(&v["messages"], "message is", "messages are")
        ),
    }
    Ok(())
}

/// The running daemon's custom fields and lists, for `check-config` to check
/// segment files against (the CLI never opens the store itself).
pub async fn catalog(
    target: &ApiTarget,
    sites: Vec<String>,
) -> anyhow::Result<crate::segment::Catalog> {
    let (status, fields) = send_json(target, Method::GET, "/api/v1/fields", None).await?;
    if status != 200 {
        return Err(api_failure(status, &fields));
    }
    let (status, lists) = send_json(target, Method::GET, "/api/v1/lists", None).await?;
    if status != 200 {
        return Err(api_failure(status, &lists));
    }
    let defs: Vec<crate::contacts::model::FieldDef> =
        serde_json::from_value(fields["fields"].clone())
            .context("the daemon's field list is not in the expected form")?;
    let mut catalog = crate::segment::Catalog {
        sites,
        ..Default::default()
    };
    for f in &defs {
        catalog
            .fields
            .insert(f.name.clone(), crate::segment::Kind::of_field(f));
    }
    for l in lists["lists"].as_array().into_iter().flatten() {
        if let (Some(name), Some(id)) = (l["name"].as_str(), l["id"].as_u64()) {
            catalog.lists.insert(name.to_lowercase(), id);
        }
    }
    Ok(catalog)
}

/// `herald campaign …`.
pub mod campaign {
    use std::path::Path;

    use anyhow::Context;
    use http::Method;
    use serde_json::Value;

    use super::{ApiTarget, api_failure, send_json};
    use crate::campaign::model::Spec;

    /// The status, with the phase when it says more (`running (sending)`,
    /// not `draft (draft)`) and a scheduled campaign's start time.
    fn state(v: &Value) -> String {
        let status = v["status"].as_str().unwrap_or("");
        let phase = v["phase"].as_str().unwrap_or("");
        match v["scheduled_for"].as_str() {
            Some(at) if status == "scheduled" => format!("scheduled for {at}"),
            _ if phase.is_empty() || phase == status => status.to_string(),
            _ => format!("{status} ({phase})"),
        }
    }

    /// `left out 3 (consent unknown 2, suppressed 1)`, or nothing.
    fn left_out(p: &Value) -> String {
        let l = &p["left_out"];
        let total = l["total"].as_u64().unwrap_or(0);
        if total == 0 {
            return String::new();
        }
        let why: Vec<String> = [
            ("excluded_list", "in an excluded list"),
            ("excluded_segment", "in an excluded segment"),
            ("consent_unknown", "consent unknown"),
            ("consent_pending", "consent pending"),
            ("consent_withdrawn", "consent withdrawn"),
            ("consent_invalid", "consent invalid"),
            ("suppressed", "suppressed"),
        ]
        .iter()
        .filter_map(|(k, label)| {
            let n = l[*k].as_u64().unwrap_or(0);
            (n > 0).then(|| format!("{label} {n}"))
        })
        .collect();
        format!(" (left out {total}: {})", why.join(", "))
    }

    fn line(v: &Value) -> String {
        let p = &v["progress"];
        format!(
            "campaign {} \"{}\": {}; audience {}{}, queued {}, delivered {}, deferred {}, failed {}, skipped {}, remaining {}",
            v["id"],
            v["name"].as_str().unwrap_or(""),
            state(v),
            p["audience"],
            left_out(p),
            p["queued"],
            p["delivered"],
            p["deferred"],
            p["failed"],
            p["skipped"],
            p["remaining"],
        )
    }

    /// `herald campaign create FILE`.
    pub async fn create(target: &ApiTarget, file: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        // The file is read as a spec here first, so that a mistake in it (a
        // wrong type, an unknown key) is reported at its line and column in
        // the file: the daemon sees only the JSON sent, all on one line.
        let spec: Value = if file.extension().is_some_and(|e| e == "json") {
            let de = &mut serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize::<_, Spec>(de).map_err(|e| {
                let path = e.path().to_string();
                let at = if path == "." {
                    String::new()
                } else {
                    format!("`{path}`: ")
                };
                anyhow::anyhow!("{}: {at}{}", file.display(), e.into_inner())
            })?;
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", file.display()))?
        } else {
            toml::from_str::<Spec>(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let t: toml::Value =
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            serde_json::to_value(t)?
        };
        let (status, v) = send_json(target, Method::POST, "/api/v1/campaigns", Some(spec)).await?;
        if status != 201 {
            return Err(api_failure(status, &v));
        }
        println!("created {}", line(&v));
        Ok(())
    }

    /// `herald campaign test ID ADDRESS…`.
    pub async fn test(target: &ApiTarget, id: u64, addresses: Vec<String>) -> anyhow::Result<()> {
        let body = serde_json::json!({ "addresses": addresses });
        let (status, v) = send_json(
            target,
            Method::POST,
            &format!("/api/v1/campaigns/{id}/test"),
            Some(body),
        )
        .await?;
        if status != 202 {
            return Err(api_failure(status, &v));
        }
        for m in v["test_messages"].as_array().into_iter().flatten() {
            let variant = m["variant"].as_str().filter(|s| !s.is_empty());
            println!(
                "queued test message {} to {}{}",
                m["queue_id"],
                m["address"].as_str().unwrap_or(""),
                variant
                    .map(|v| format!(" (variant {v})"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `herald campaign start|pause|resume|cancel ID`.
    pub async fn action(
        target: &ApiTarget,
        id: u64,
        action: &str,
        body: Option<Value>,
    ) -> anyhow::Result<()> {
        let body = body.or(Some(serde_json::json!({})));
        let (status, v) = send_json(
            target,
            Method::POST,
            &format!("/api/v1/campaigns/{id}/{action}"),
            body,
        )
        .await?;
        if status != 200 {
            return Err(api_failure(status, &v));
        }
        println!("{}", line(&v));
        Ok(())
    }

    /// `herald campaign status ID`.
    pub async fn status(target: &ApiTarget, id: u64, as_json: bool) -> anyhow::Result<()> {
        let (status, v) = send_json(
            target,
            Method::GET,
            &format!("/api/v1/campaigns/{id}"),
            None,
        )
        .await?;
        if status != 200 {
            return Err(api_failure(status, &v));
        }
        if as_json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("{}", line(&v));
        if let Some(eta) = v["progress"]["estimated_completion"].as_str() {
            println!(
                "rate {} messages/minute; estimated completion {eta}",
                v["progress"]["rate_per_minute"]
            );
        }
        if let Some(ab) = v["ab"].as_object() {
            match (ab["winner_name"].as_str(), ab["test_ends"].as_str()) {
                (Some(w), _) => println!(
                    "A/B: winner {w}{}",
                    ab["winner_reason"]
                        .as_str()
                        .map(|r| format!("; {r}"))
                        .unwrap_or_default()
                ),
                (None, Some(ends)) => println!("A/B: no winner yet; the test ends {ends}"),
                (None, None) => println!("A/B: the test has not started"),
            }
        }
        // Delivery and engagement are counted per stage and variant, not
        // per part: an A/B test part and the winner part of the same
        // variant share their counts, so those are printed once, for the
        // variant, after the parts. A winner not chosen yet has none.
        let parts: Vec<&Value> = v["parts"].as_array().into_iter().flatten().collect();
        let slot = |p: &Value| (p["stage"].as_u64(), p["variant"].as_u64());
        let shared = |p: &Value| {
            p["variant"].is_u64() && parts.iter().filter(|&&q| slot(q) == slot(p)).count() > 1
        };
        let figures = |c: &Value| {
            format!(
                "delivered {}, opens {}, clicks {}",
                c["delivered"], c["unique_opens"], c["unique_clicks"]
            )
        };
        for &p in &parts {
            let name = p["name"].as_str().unwrap_or("");
            let label = match p["role"].as_str().unwrap_or("") {
                "test" => format!("A/B test {name}"),
                "winner" if p["variant"].is_u64() => format!("winner {name}"),
                "winner" => "winner (not chosen yet)".to_string(),
                _ => format!("stage {}", p["stage"]),
            };
            let mut row = format!(
                "  {label}: size {}, queued {}, remaining {}",
                p["size"], p["queued"], p["remaining"]
            );
            if p["counts"].is_object() && !shared(p) {
                row.push_str(&format!(", {}", figures(&p["counts"])));
            }
            println!("{row}");
        }
        let mut shown = Vec::new();
        for &p in &parts {
            if shared(p) && !shown.contains(&slot(p)) {
                shown.push(slot(p));
                println!(
                    "  variant {} (test and winner together): {}",
                    p["name"].as_str().unwrap_or(""),
                    figures(&p["counts"])
                );
            }
        }
        if let Some(n) = v["note"].as_str() {
            println!("note: {n}");
        }
        Ok(())
    }

    /// `herald campaign list`.
    pub async fn list(target: &ApiTarget, status: Option<String>) -> anyhow::Result<()> {
        let path = match status {
            Some(s) => format!("/api/v1/campaigns?status={s}"),
            None => "/api/v1/campaigns".to_string(),
        };
        let (code, v) = send_json(target, Method::GET, &path, None).await?;
        if code != 200 {
            return Err(api_failure(code, &v));
        }
        for c in v["campaigns"].as_array().into_iter().flatten() {
            println!("{}", line(c));
        }
        Ok(())
    }
}

/// `herald automations …`.
pub mod automations {
    use http::Method;
    use serde_json::Value;

    use super::{ApiTarget, api_failure, send_json};

    fn line(v: &Value) -> String {
        if v["status"] == "invalid" {
            return format!(
                "{}: invalid: {}",
                v["name"].as_str().unwrap_or(""),
                v["problems"]
                    .as_array()
                    .map(|p| p
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join("; "))
                    .unwrap_or_default()
            );
        }
        let c = &v["counts"];
        format!(
            "{} ({}, {}): trigger {}, pending {}, next due {}; entered {}, completed {}",
            v["name"].as_str().unwrap_or(""),
            v["status"].as_str().unwrap_or(""),
            v["source"].as_str().unwrap_or(""),
            v["trigger"].as_str().unwrap_or(""),
            v["pending"],
            v["next_due"].as_str().unwrap_or("-"),
            c["entered"].as_u64().unwrap_or(0),
            c["completed"].as_u64().unwrap_or(0),
        )
    }

    async fn get(target: &ApiTarget, path: &str) -> anyhow::Result<Value> {
        let (status, v) = send_json(target, Method::GET, path, None).await?;
        if status != 200 {
            return Err(api_failure(status, &v));
        }
        Ok(v)
    }

    /// `herald automations list`.
    pub async fn list(target: &ApiTarget) -> anyhow::Result<()> {
        let v = get(target, "/api/v1/automations").await?;
        for f in v.as_array().into_iter().flatten() {
            println!("{}", line(f));
        }
        Ok(())
    }

    /// `herald automations status NAME`.
    pub async fn status(target: &ApiTarget, name: &str, as_json: bool) -> anyhow::Result<()> {
        let v = get(target, &format!("/api/v1/automations/{name}")).await?;
        if as_json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!("{}", line(&v));
        for s in v["steps"].as_array().into_iter().flatten() {
            let counts = s["counts"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            println!(
                "  step {} {}: pending {}, next due {}{}{}",
                s["step"],
                s["template"].as_str().unwrap_or("(variants only)"),
                s["pending"],
                s["next_due"].as_str().unwrap_or("-"),
                if counts.is_empty() { "" } else { "; " },
                counts
            );
        }
        Ok(())
    }

    /// `herald automations test NAME --contact X --to SEED [--step N]`.
    pub async fn test(
        target: &ApiTarget,
        name: &str,
        contact: &str,
        to: &str,
        step: u32,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({"contact": contact, "to": to, "step": step});
        let (status, v) = send_json(
            target,
            Method::POST,
            &format!("/api/v1/automations/{name}/test"),
            Some(body),
        )
        .await?;
        if status != 202 {
            return Err(api_failure(status, &v));
        }
        println!(
            "queued test message {} to {} (step {}, variant {})",
            v["queue_id"],
            v["to"].as_str().unwrap_or(""),
            v["step"],
            v["variant"]
        );
        Ok(())
    }

    /// `herald automations pause|resume NAME`.
    pub async fn action(target: &ApiTarget, name: &str, action: &str) -> anyhow::Result<()> {
        let (status, v) = send_json(
            target,
            Method::POST,
            &format!("/api/v1/automations/{name}/{action}"),
            Some(serde_json::json!({})),
        )
        .await?;
        if status != 200 {
            return Err(api_failure(status, &v));
        }
        println!("{}", line(&v));
        Ok(())
    }
}

/// `herald users …`: admin UI users.
pub mod users {
    use std::io::{BufRead as _, IsTerminal as _};

    use http::Method;
    use serde_json::json;

    use super::{ApiTarget, api_failure, send_json};

    /// The password: asked twice on a terminal, else stdin's first line.
    fn password(name: &str) -> anyhow::Result<String> {
        if std::io::stdin().is_terminal() {
            let p = rpassword::prompt_password(format!("Password for {name}: "))?;
            let again = rpassword::prompt_password("Again: ")?;
            if p != again {
                anyhow::bail!("the two passwords differ");
            }
            Ok(p)
        } else {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let p = line.trim_end_matches(['\n', '\r']).to_string();
            if p.is_empty() {
                anyhow::bail!("no password on stdin");
            }
            Ok(p)
        }
    }

    async fn call(
        target: &ApiTarget,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, v) = send_json(target, method, path, body).await?;
        if !(200..300).contains(&status) {
            return Err(api_failure(status, &v));
        }
        Ok(v)
    }

    fn path(name: &str) -> String {
        let n: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        format!("/api/v1/users/{n}")
    }

    /// `herald users add NAME --role ROLE`.
    pub async fn add(target: &ApiTarget, name: &str, role: &str) -> anyhow::Result<()> {
        let p = password(name)?;
        call(
            target,
            Method::POST,
            "/api/v1/users",
            Some(json!({"name": name, "role": role, "password": p})),
        )
        .await?;
        println!("added {name} ({role}); log in at the admin UI's /admin/login");
        Ok(())
    }

    /// `herald users list`.
    pub async fn list(target: &ApiTarget) -> anyhow::Result<()> {
        let v = call(target, Method::GET, "/api/v1/users", None).await?;
        for u in v["users"].as_array().into_iter().flatten() {
            println!(
                "{}\t{}\tcreated {}",
                u["name"].as_str().unwrap_or(""),
                u["role"].as_str().unwrap_or(""),
                u["created"].as_str().unwrap_or("")
            );
        }
        Ok(())
    }

    /// `herald users remove NAME`.
    pub async fn remove(target: &ApiTarget, name: &str) -> anyhow::Result<()> {
        call(target, Method::DELETE, &path(name), None).await?;
        println!("removed {name}");
        Ok(())
    }

    /// `herald users passwd NAME`.
    pub async fn passwd(target: &ApiTarget, name: &str) -> anyhow::Result<()> {
        let p = password(name)?;
        call(
            target,
            Method::PATCH,
            &path(name),
            Some(json!({"password": p})),
        )
        .await?;
        println!("password of {name} set; their sessions have ended");
        Ok(())
    }
}
