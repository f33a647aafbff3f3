//! The `herald` command line: the daemon (`serve`), config validation
//! (`check-config`) and client commands that talk to a running daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, DEFAULT_CONFIG_PATH};
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
        /// Admin API base URL (default: from the config's http.listen).
        #[arg(long)]
        api: Option<String>,
    },
}

fn load_or_report(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprint!("{errors}");
        ExitCode::from(2)
    })
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            let config = match load_or_report(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            app::init_logging(&config.log.level, config.log.format);
            let rt = match runtime(true) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(app::serve(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("herald: {e:#}");
                    ExitCode::FAILURE
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
                    api,
                },
        } => {
            let config = match load_or_report(&cli.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let run = async {
                let target = client::ApiTarget::from_config(
                    &config,
                    api.as_deref(),
                    std::env::var("HERALD_TOKEN").ok(),
                )?;
                let args = client::ImportArgs {
                    list,
                    create_list,
                    create_fields,
                    consent,
                    resume,
                };
                client::import(&target, &file, &args).await
            };
            let rt = match runtime(false) {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(run) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("herald: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
