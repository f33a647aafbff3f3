//! `[log]`: the tracing filter and the output format.

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter such as `info` or `herald=debug,info`; `RUST_LOG`
    /// overrides it.
    pub level: Option<Spanned<String>>,
    /// `text` (default) or `json`.
    pub format: Option<Spanned<String>>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Validated `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// tracing filter directive.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

/// Validates `[log]`.
pub(super) fn validate(c: &mut Checker<'_>, raw: &RawLog) -> Option<LogConfig> {
    let level = raw.level.as_ref().map_or(Some("info".to_string()), |v| {
        match tracing_subscriber::EnvFilter::try_new(v.get_ref()) {
            Ok(_) => Some(v.get_ref().clone()),
            Err(e) => {
                c.at("log.level", v, format!("not a log filter: {e}"));
                None
            }
        }
    });
    let format = match raw.format.as_ref() {
        None => Some(LogFormat::Text),
        Some(v) => match v.get_ref().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            other => {
                c.at(
                    "log.format",
                    v,
                    format!("`{other}` is not one of: text, json"),
                );
                None
            }
        },
    };

    Some(LogConfig {
        level: level?,
        format: format?,
    })
}
