//! The `herald` command line: the daemon (`serve`), config validation
//! (`check-config`) and client commands that talk to a running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::DEFAULT_CONFIG_PATH;
use herald::snapshot::Snapshot;
use herald::{app, client};

/// mimalloc instead of glibc's allocator: imports allocate rows on one thread
/// and free them on the store writer, which glibc's arenas handle slowly
/// (measured: see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Herald: self-hosted mail-transfer and engagement appliance.
#[derive(Parser)]
#[command(name = "herald", version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH, env = "HERALD_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
    /// Validate the configuration (and the segment/automation files it names) without starting.
    CheckConfig,
    /// Contacts (talks to a running daemon).
    Contacts {
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// DKIM keys.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Templates: render one offline with its sample data (no daemon needed).
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
    /// Newsletters (talks to a running daemon).
    Campaign {
        #[command(subcommand)]
        command: CampaignCommand,
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Automations: event-triggered flows (talks to a running daemon).
    Automations {
        #[command(subcommand)]
        command: AutomationsCommand,
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Admin UI users (talks to a running daemon).
    Users {
        #[command(subcommand)]
        command: UsersCommand,
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// Check the DNS of every sender's domains (SPF, DKIM, DMARC, reverse
    /// DNS, the bounce domain's MX, MTA-STS, TLS-RPT) and print the record
    /// to publish for each problem. Exit status 1 when a check fails.
    Doctor {
        /// Print the verdicts as a JSON array.
        #[arg(long)]
        json: bool,
        /// An address Herald sends from (repeat for several); default: each
        /// sender's source_ip. Without one, the checks that need it warn.
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<std::net::IpAddr>,
        /// Check only this sender (its id).
        #[arg(long, value_name = "ID")]
        sender: Option<String>,
    },
    /// The capture outbox (`[delivery] capture`): the messages written
    /// there instead of being sent (reads the folder; no daemon needed).
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// The delivery queue (talks to a running daemon).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long, global = true)]
        api: Option<String>,
    },
    /// The store file: where its bytes go, and giving free space back
    /// (open the file directly: stop the daemon first).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Print the store's size, free space and every table's entries and
    /// pages, largest first.
    Stats {
        /// Also read every entry to split each table's bytes into keys and
        /// values (reads the whole file).
        #[arg(long)]
        scan: bool,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the store so that its free pages are given back to the
    /// filesystem (needs up to the file's size again while it runs).
    Compact,
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Generate a signing key, write it (mode 0640, the config folder's
    /// group), print the DNS TXT record and the `[[sender.dkim]]` lines (or
    /// add them to the sender with --sender).
    Keygen(KeygenArgs),
}

#[derive(clap::Args)]
struct KeygenArgs {
    /// The signing domain (the From domain), e.g. shop.example.
    #[arg(long)]
    domain: String,
    /// The selector, e.g. s2026.
    #[arg(long)]
    selector: String,
    /// Key type.
    #[arg(long, value_enum, default_value = "rsa")]
    algorithm: KeyAlgorithm,
    /// Where to write the key (default: dkim/SELECTOR.DOMAIN.ALGORITHM.pem next to the config file).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Add the key to this sender (its id) in the config file, keeping its comments.
    #[arg(long, value_name = "ID")]
    sender: Option<String>,
    /// The group the key file is given to, so the service's user can read
    /// it (default: the config folder's group).
    #[arg(long)]
    group: Option<String>,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// One line per captured message, oldest first: number (the queue id),
    /// time, recipients, subject.
    List {
        /// Print a JSON array instead.
        #[arg(long)]
        json: bool,
    },
    /// A captured message: envelope, header fields, the text part and its links.
    Show {
        /// The number `outbox list` printed (the queue id).
        id: u64,
        /// Print the message file exactly as captured instead.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
enum TemplatesCommand {
    /// Render a template with its sample.json data and print one part.
    Render {
        /// Template (folder) name.
        name: String,
        /// Language to render in.
        #[arg(long)]
        language: Option<String>,
        /// Site to render for.
        #[arg(long)]
        site: Option<String>,
        /// What to print.
        #[arg(long, value_enum, default_value = "mime")]
        format: RenderFormat,
        /// Rewrite links and add the open pixel, as a send would.
        #[arg(long)]
        tracking: bool,
        /// Use the neutral greeting.
        #[arg(long)]
        no_personalize: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RenderFormat {
    /// The complete MIME message (unsigned).
    Mime,
    /// The HTML part.
    Html,
    /// The text part.
    Text,
    /// The subject line.
    Subject,
    /// Subject, preheader, HTML, text and the MIME message as JSON.
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeyAlgorithm {
    Rsa,
    Ed25519,
}

#[derive(Subcommand)]
enum CampaignCommand {
    /// Create a draft from a TOML or JSON file (the campaign spec).
    Create {
        /// The spec file (`.toml` or `.json`).
        file: PathBuf,
    },
    /// Send every variant to seed addresses (marked as a test, not counted).
    Test {
        /// Campaign number.
        id: u64,
        /// Seed addresses.
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// Start now (or at a time with --at, RFC 3339).
    Start {
        /// Campaign number.
        id: u64,
        /// Schedule for this time instead of starting now.
        #[arg(long)]
        at: Option<String>,
    },
    /// Pause a running campaign.
    Pause {
        /// Campaign number.
        id: u64,
    },
    /// Resume a paused campaign where it stopped.
    Resume {
        /// Campaign number.
        id: u64,
    },
    /// Cancel: nothing more is sent.
    Cancel {
        /// Campaign number.
        id: u64,
    },
    /// Progress of one campaign.
    Status {
        /// Campaign number.
        id: u64,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Campaigns, newest first.
    List {
        /// Only this status (draft, scheduled, running, paused, cancelled, completed).
        #[arg(long)]
        status: Option<String>,
    },
}

#[derive(Subcommand)]
enum AutomationsCommand {
    /// Every flow: status, trigger, pending runs, counts.
    List,
    /// One flow: pending runs and counts per step.
    Status {
        /// The flow's name.
        name: String,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send a step's message for a contact to a seed address (a test: not counted).
    Test {
        /// The flow's name.
        name: String,
        /// The contact (address or id) whose data the message shows.
        #[arg(long)]
        contact: String,
        /// The seed address that receives it.
        #[arg(long)]
        to: String,
        /// The step (0 is the first).
        #[arg(long, default_value_t = 0)]
        step: u32,
    },
    /// Pause a flow: nobody enters, pending steps are held.
    Pause {
        /// The flow's name.
        name: String,
    },
    /// Resume a paused flow.
    Resume {
        /// The flow's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user; the password is read from the terminal (asked twice) or
    /// from the first line of stdin.
    Add {
        /// Login name (a-z, 0-9, `.`, `_`, `-`).
        name: String,
        /// What they may do.
        #[arg(long, value_parser = ["admin", "editor", "viewer"])]
        role: String,
    },
    /// Every user and their role.
    List,
    /// Remove a user (their sessions end).
    Remove {
        /// The user's name.
        name: String,
    },
    /// Set a user's password (read like `add`'s); their sessions end.
    Passwd {
        /// The user's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Counts per state and destination domain, oldest message, next attempts.
    Status {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make deferred recipients due now: one message or a whole domain.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "domain"])))]
    Retry {
        /// Queue id.
        #[arg(long)]
        id: Option<u64>,
        /// Destination domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Give up on pending recipients (recorded with the reason): one message or a domain.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["id", "domain"])))]
    Purge {
        /// Queue id.
        #[arg(long)]
        id: Option<u64>,
        /// Destination domain.
        #[arg(long)]
        domain: Option<String>,
        /// Why (kept in the message's record).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ContactsCommand {
    /// Import a CSV file (header row with an `email` column).
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Add every imported contact to this list.
        #[arg(long)]
        list: Option<String>,
        /// Create the list if it does not exist.
        #[arg(long)]
        create_list: bool,
        /// Create unknown columns as text fields instead of refusing the file.
        #[arg(long)]
        create_fields: bool,
        /// Consent state for rows without a `consent` column value.
        #[arg(long)]
        consent: Option<String>,
        /// Resume the interrupted import with this id.
        #[arg(long)]
        resume: Option<u64>,
        /// The field delimiter: `,` `;` `|` or `tab` (default: found from the header line).
        #[arg(long)]
        delimiter: Option<String>,
        /// The file's encoding, e.g. windows-1250 (default: UTF-8, or
        /// Windows-1250 when the file is not UTF-8).
        #[arg(long)]
        encoding: Option<String>,
        /// Exit 0 even when rows were rejected (they are still printed).
        #[arg(long)]
        allow_rejects: bool,
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long)]
        api: Option<String>,
    },
}

/// Loads the snapshot (config, templates, segment files) as the daemon
/// would, so every command refuses a config the daemon would refuse.
fn load_or_report(path: &std::path::Path) -> Result<Snapshot, ExitCode> {
    Snapshot::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(2)
    })
}

/// `herald dkim keygen`: writes the key, gives it to the service's group,
/// prints the record and the config lines (or adds them with `--sender`).
fn dkim_keygen(config: &std::path::Path, a: KeygenArgs) -> ExitCode {
    use herald::delivery::dkim;
    let alg = match a.algorithm {
        KeyAlgorithm::Rsa => dkim::Algorithm::Rsa,
        KeyAlgorithm::Ed25519 => dkim::Algorithm::Ed25519,
    };
    let base = herald::config::base_dir(config);
    let out = a.out.clone().unwrap_or_else(|| {
        base.join("dkim")
            .join(format!("{}.{}.{}.pem", a.selector, a.domain, alg.as_str()))
    });
    // Check the edit before writing anything: a wrong --sender leaves no key.
    let edit = match &a.sender {
        Some(id) => match std::fs::read_to_string(config) {
            Ok(text) => {
                let key_file = herald::config::relative_to(&base, &out);
                match herald::config::edit::add_dkim(&text, id, &a.selector, &key_file) {
                    Ok(new) => Some((id.clone(), new)),
                    Err(e) => {
                        eprintln!("herald: {}: {e}", config.display());
                        return ExitCode::from(2);
                    }
                }
            }
            Err(e) => {
                eprintln!("herald: cannot read {}: {e}", config.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    // The group a new key is given to: `--group`, else the config folder's.
    let gid = match a.group.as_deref() {
        Some(name) => dkim::group_id(name),
        None => std::fs::metadata(&base)
            .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
            .map_err(|e| format!("cannot read {}: {e}", base.display())),
    }
    .map(Some);
    let gid = match gid {
        Ok(g) => g,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::from(2);
        }
    };
    let g = match dkim::keygen(&a.domain, &a.selector, alg, &out) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The default folder (`dkim/` beside the config) goes to the group too,
    // so the service's user can pass it whatever the umask made it.
    let folder = match (gid, &a.out, g.path.parent()) {
        (Some(gid), None, Some(dir)) => dkim::give_to_group(dir, gid, 0o750),
        _ => Ok(()),
    };
    if let Err(e) = folder {
        eprintln!("herald: {e}");
        return ExitCode::FAILURE;
    }
    let mode_note = match gid.map(|gid| dkim::give_to_group(&g.path, gid, 0o640).map(|()| gid)) {
        Some(Ok(gid)) => format!("mode 0640, group {}", dkim::group_name(gid)),
        Some(Err(e)) => {
            eprintln!("herald: {e}");
            return ExitCode::FAILURE;
        }
        None => "mode 0600".to_string(),
    };
    println!("wrote {} ({mode_note})", g.path.display());
    println!();
    println!("Publish this DNS TXT record:");
    println!("  name:  {}", g.record_name);
    println!("  value: {}", g.record_value);
    println!();
    println!("As a zone-file line:");
    println!("  {}", dkim::zone_line(&g));
    println!();
    let key_file = herald::config::relative_to(&base, &g.path);
    let lines = format!(
        "  [[sender.dkim]]\n  selector = \"{}\"\n  key_file = \"{key_file}\"",
        a.selector
    );
    let reload = "then reload the daemon to sign with it: `systemctl reload herald` (or `kill -HUP` its pid)";
    match edit {
        Some((id, text)) => {
            if let Err(e) = herald::config::edit::replace_config(config, &text) {
                eprintln!(
                    "herald: the key is written, but {e}; add these lines to sender `{id}` yourself:\n{lines}"
                );
                return ExitCode::FAILURE;
            }
            println!("Added to sender `{id}` in {}:\n{lines}", config.display());
            println!(
                "Check it with `herald --config {} check-config`, {reload}.",
                config.display()
            );
        }
        None => {
            println!(
                "Add to the [[sender]] whose From domain is {} in {} (or run keygen with `--sender ID` to have it added):",
                a.domain,
                config.display()
            );
            println!("{lines}");
            println!("{}{}.", reload[..1].to_uppercase(), &reload[1..]);
        }
    }
    ExitCode::SUCCESS
}

/// `herald store stats|compact`: opens the store file itself.
fn store_command(dir: &std::path::Path, command: StoreCommand) -> ExitCode {
    use herald::store::usage;
    let result = match command {
        StoreCommand::Stats { scan, json } => usage::usage(dir, scan).map(|u| {
            if json {
                println!("{}", serde_json::to_string_pretty(&u).unwrap_or_default());
            } else {
                print!("{}", usage::format(&u));
            }
        }),
        StoreCommand::Compact => usage::compact(dir).map(|(before, after)| {
            println!(
                "compacted {}: {:.1} MB -> {:.1} MB",
                herald::store::store_file(dir).display(),
                before as f64 / 1e6,
                after as f64 / 1e6
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ herald::store::StoreError::Locked(_)) => {
            eprintln!("herald: {e}: stop the daemon first (systemctl stop herald)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("herald: {e}");
            ExitCode::from(1)
        }
    }
}

/// `herald outbox list|show`: reads the capture folder.
fn outbox(
    path: &std::path::Path,
    config: &herald::config::Config,
    command: OutboxCommand,
) -> ExitCode {
    use herald::delivery::capture;
    let Some(dir) = &config.delivery.capture else {
        eprintln!(
            "herald: capture is off in {} (no `[delivery] capture`): messages are delivered; see `herald queue status`",
            path.display()
        );
        return ExitCode::from(2);
    };
    let text = match command {
        OutboxCommand::List { json } => capture::list(dir).map(|all| {
            if json {
                serde_json::to_string_pretty(&all).unwrap_or_default() + "\n"
            } else {
                capture::format_list(&all)
            }
        }),
        OutboxCommand::Show { id, raw } => match capture::show(dir, id) {
            Ok(found) if found.is_empty() => {
                eprintln!(
                    "herald: nothing captured as number {id} in {} (`herald outbox list` shows the numbers)",
                    dir.display()
                );
                return ExitCode::from(1);
            }
            Ok(found) if raw => Ok(found
                .iter()
                .map(|m| String::from_utf8_lossy(&m.raw).into_owned())
                .collect()),
            Ok(found) => Ok(found
                .iter()
                .map(capture::format_shown)
                .collect::<Vec<_>>()
                .join("\n")),
            Err(e) => Err(e),
        },
    };
    match text {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "herald: cannot read the capture folder {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Runs a client command (one that talks to the daemon's API) on a
/// single-threaded runtime and turns its result into the exit code.
fn run_client(
    config_path: &std::path::Path,
    api: Option<&str>,
    f: impl AsyncFnOnce(client::ApiTarget) -> anyhow::Result<u8>,
) -> ExitCode {
    let config = match load_or_report(config_path) {
        Ok(s) => s.config,
        Err(code) => return code,
    };
    let rt = match runtime(false) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let run = async {
        let target =
            client::ApiTarget::from_config(&config, api, std::env::var("HERALD_TOKEN").ok())?;
        f(target).await
    };
    match rt.block_on(run) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("herald: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds a tokio runtime, or reports why it cannot be built.
fn runtime(multi_thread: bool) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().map_err(|e| {
        eprintln!("herald: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

/// mimalloc's `mi_option_purge_delay` (index in its `mi_option_e`; the
/// Rust bindings name only some options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> ExitCode {
    // Return freed memory to the OS at once instead of after 10 ms (100 ms
    // for arenas): message bodies come and go in 20 KB pieces on many
    // threads, and the delay showed up as tens of MB of peak RSS in the
    // delivery benchmark (BENCHMARKS.md).
    // SAFETY: sets a plain integer option of the allocator.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve) {
        // Command-line tools end quietly when their reader goes away
        // (`herald queue status | head`); Rust ignores SIGPIPE by default,
        // which would turn that into a panic in println!. The daemon keeps
        // ignoring it: a closed socket is an error to handle, not a death.
        // SAFETY: resetting a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::CheckConfig => match app::check_config(&cli.config) {
            Ok(summary) => {
                print!("{summary}");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Serve => {
            let snap = match load_or_report(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            app::init_logging(&snap.config.log.level, snap.config.log.format);
            let rt = match runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(app::serve(snap)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // The log is written to stderr: say it once, as a log
                    // line, unless the log level hides errors.
                    if tracing::enabled!(tracing::Level::ERROR) {
                        tracing::error!("{e:#}");
                    } else {
                        eprintln!("herald: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Command::Templates {
            command:
                TemplatesCommand::Render {
                    name,
                    language,
                    site,
                    format,
                    tracking,
                    no_personalize,
                },
        } => {
            let snap = match load_or_report(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            let Some(t) = snap.templates.get(&name).cloned() else {
                match snap.templates.failed.get(&name) {
                    Some(errors) => {
                        eprint!("{}", herald::config::ConfigErrors(errors.clone()));
                    }
                    None => eprintln!(
                        "herald: no template `{name}` in {}",
                        snap.templates.dir.display()
                    ),
                }
                return ExitCode::from(2);
            };
            use herald::render::preview;
            let asked = language.clone();
            let languages = t.languages().into_iter().collect::<Vec<_>>().join(", ");
            let input = preview::PreviewInput {
                language,
                site,
                personalize: !no_personalize,
                tracking,
                ..Default::default()
            };
            let now = chrono::Utc::now().timestamp_millis();
            match preview::render(t, &snap.config, preview::preview_send(), input, now) {
                Ok(p) => {
                    use std::io::Write;
                    let r = &p.rendered;
                    if let Some(asked) = asked.as_deref()
                        && !r.language.eq_ignore_ascii_case(asked)
                    {
                        eprintln!(
                            "herald: no `{asked}` version of {name} (it has {languages}); rendered `{}`",
                            r.language
                        );
                    }
                    let out = match format {
                        RenderFormat::Mime => p.mime.clone(),
                        RenderFormat::Html => r.html.clone().into_bytes(),
                        RenderFormat::Text => r.text.clone().into_bytes(),
                        RenderFormat::Subject => format!("{}\n", r.subject).into_bytes(),
                        RenderFormat::Json => serde_json::json!({
                            "language": r.language, "site": r.site, "subject": r.subject,
                            "preheader": r.preheader, "html": r.html, "text": r.text,
                            "mime": String::from_utf8_lossy(&p.mime),
                        })
                        .to_string()
                        .into_bytes(),
                    };
                    let _ = std::io::stdout().write_all(&out);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("herald: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dkim {
            command: DkimCommand::Keygen(args),
        } => dkim_keygen(&cli.config, args),
        Command::Store { command } => {
            let snap = match load_or_report(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            store_command(&snap.config.storage.dir, command)
        }
        Command::Outbox { command } => {
            let snap = match load_or_report(&cli.config) {
                Ok(s) => s,
                Err(code) => return code,
            };
            outbox(&cli.config, &snap.config, command)
        }
        Command::Campaign { command, api } => {
            run_client(&cli.config, api.as_deref(), async |target| {
                use client::campaign as c;
                match command {
                    CampaignCommand::Create { file } => c::create(&target, &file).await,
                    CampaignCommand::Test { id, addresses } => {
                        c::test(&target, id, addresses).await
                    }
                    CampaignCommand::Start { id, at: Some(at) } => {
                        c::action(
                            &target,
                            id,
                            "schedule",
                            Some(serde_json::json!({ "at": at })),
                        )
                        .await
                    }
                    CampaignCommand::Start { id, at: None } => {
                        c::action(&target, id, "start", None).await
                    }
                    CampaignCommand::Pause { id } => c::action(&target, id, "pause", None).await,
                    CampaignCommand::Resume { id } => c::action(&target, id, "resume", None).await,
                    CampaignCommand::Cancel { id } => c::action(&target, id, "cancel", None).await,
                    CampaignCommand::Status { id, json } => c::status(&target, id, json).await,
                    CampaignCommand::List { status } => c::list(&target, status).await,
                }
                .map(|()| 0)
            })
        }
        Command::Automations { command, api } => {
            run_client(&cli.config, api.as_deref(), async |target| {
                use client::automations as a;
                match command {
                    AutomationsCommand::List => a::list(&target).await,
                    AutomationsCommand::Status { name, json } => {
                        a::status(&target, &name, json).await
                    }
                    AutomationsCommand::Test {
                        name,
                        contact,
                        to,
                        step,
                    } => a::test(&target, &name, &contact, &to, step).await,
                    AutomationsCommand::Pause { name } => a::action(&target, &name, "pause").await,
                    AutomationsCommand::Resume { name } => {
                        a::action(&target, &name, "resume").await
                    }
                }
                .map(|()| 0)
            })
        }
        Command::Users { command, api } => {
            run_client(&cli.config, api.as_deref(), async |target| {
                use client::users as u;
                match command {
                    UsersCommand::Add { name, role } => u::add(&target, &name, &role).await,
                    UsersCommand::List => u::list(&target).await,
                    UsersCommand::Remove { name } => u::remove(&target, &name).await,
                    UsersCommand::Passwd { name } => u::passwd(&target, &name).await,
                }
                .map(|()| 0)
            })
        }
        Command::Queue { command, api } => {
            run_client(&cli.config, api.as_deref(), async |target| {
                match command {
                    QueueCommand::Status { json } => client::queue_status(&target, json).await,
                    QueueCommand::Retry { id, domain } => {
                        client::queue_action(&target, "retry", id, domain, None).await
                    }
                    QueueCommand::Purge { id, domain, reason } => {
                        client::queue_action(&target, "purge", id, domain, Some(reason)).await
                    }
                }
                .map(|()| 0)
            })
        }
        Command::Doctor { json, ips, sender } => {
            let config = match load_or_report(&cli.config) {
                Ok(s) => s.config,
                Err(code) => return code,
            };
            let rt = match runtime(false) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let options = herald::doctor::Options { ips, sender };
            match rt.block_on(herald::doctor::run(&config, &options)) {
                Ok(verdicts) => {
                    if json {
                        match serde_json::to_string_pretty(&verdicts) {
                            Ok(s) => println!("{s}"),
                            Err(e) => {
                                eprintln!("herald: {e}");
                                return ExitCode::FAILURE;
                            }
                        }
                    } else {
                        print!("{}", herald::doctor::render_text(&verdicts));
                    }
                    ExitCode::from(herald::doctor::exit_code(&verdicts))
                }
                Err(e) => {
                    eprintln!("herald: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Contacts {
            command:
                ContactsCommand::Import {
                    file,
                    list,
                    create_list,
                    create_fields,
                    consent,
                    resume,
                    delimiter,
                    encoding,
                    allow_rejects,
                    api,
                },
        } => {
            let args = client::ImportArgs {
                list,
                create_list,
                create_fields,
                consent,
                resume,
                delimiter,
                encoding,
                allow_rejects,
            };
            run_client(&cli.config, api.as_deref(), async |target| {
                client::import(&target, &file, &args)
                    .await
                    .map(|code| code.clamp(0, 255) as u8)
            })
        }
    }
}
