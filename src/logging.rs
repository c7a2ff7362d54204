//! Log output: `LOOPGATE_LOG` (filter, default `info`), `LOOPGATE_LOG_FORMAT` (`text` or
//! `json`), on stderr; ANSI colour only when stderr is a terminal (never in files or
//! journald) and `NO_COLOR` is unset.
//!
//! Pingora logs through the `log` crate. Its records are forwarded to `tracing` here, with
//! a few messages that Pingora logs at ERROR on normal operation re-levelled (see
//! [`relevel`]), so an ERROR line always means something an operator must look at.

use std::io::IsTerminal;

use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `LOOPGATE_LOG_FORMAT`; unset or empty: text.
    pub fn from_env() -> Result<LogFormat, String> {
        match std::env::var("LOOPGATE_LOG_FORMAT")
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "" | "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "LOOPGATE_LOG_FORMAT='{other}' is not a log format: use text or json"
            )),
        }
    }
}

/// Whether log lines carry ANSI colour: only on a terminal, and never with `NO_COLOR`.
pub fn use_ansi() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Install the global subscriber and the `log` bridge. Errors on a bad
/// `LOOPGATE_LOG_FORMAT`; a second call is a no-op.
pub fn init() -> Result<(), String> {
    let format = LogFormat::from_env()?;
    let filter = EnvFilter::try_from_env("LOOPGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    // `set_global_default`, not `try_init`: `try_init` would install tracing-log's own
    // bridge, and ours must re-level Pingora's records first.
    let installed = match format {
        LogFormat::Text => tracing::subscriber::set_global_default(
            builder.with_target(false).with_ansi(use_ansi()).finish(),
        ),
        LogFormat::Json => tracing::subscriber::set_global_default(
            builder
                .json()
                .with_target(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_ansi(false)
                .finish(),
        ),
    };
    if installed.is_err() {
        return Ok(());
    }
    if log::set_boxed_logger(Box::new(LogBridge)).is_ok() {
        log::set_max_level(tracing_log::AsLog::as_log(
            &tracing::level_filters::LevelFilter::current(),
        ));
    }
    Ok(())
}

/// The level a `log` record is logged at. Pingora 0.9.1 logs these at ERROR although
/// they are part of normal operation:
/// - `pingora_core::connectors`: "failed to acquire reusable stream" — `reused_stream`
///   waits for the idle-pool task to release a pooled upstream connection, then
///   `Arc::try_unwrap`s it; the task drops its `Arc` just after releasing the lock, so the
///   unwrap can lose that race. The request then simply opens a new connection.
/// - `pingora_core::server::transfer_fd`: "No incoming socket transfer" — during a
///   graceful upgrade the new process polls its upgrade socket once a second until the
///   old process sends the listeners; the first poll always finds nothing yet.
///
/// Anything else keeps its level.
pub fn relevel(target: &str, level: log::Level, message: &str) -> log::Level {
    if level != log::Level::Error {
        return level;
    }
    match target {
        "pingora_core::connectors" if message.starts_with("failed to acquire reusable stream") => {
            log::Level::Debug
        }
        "pingora_core::server::transfer_fd"
            if message.starts_with("No incoming socket transfer") =>
        {
            log::Level::Info
        }
        _ => level,
    }
}

/// Forwards `log` records (Pingora's) to `tracing`, re-levelled by [`relevel`].
struct LogBridge;

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        // A record may be re-levelled down, so only the `tracing` side can decide; it
        // filters again in `format_trace`.
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.args().as_str() {
            Some(s) => relevel(record.target(), record.level(), s),
            None => relevel(record.target(), record.level(), &record.args().to_string()),
        };
        let rec = log::Record::builder()
            .args(*record.args())
            .level(level)
            .target(record.target())
            .module_path(record.module_path())
            .file(record.file())
            .line(record.line())
            .build();
        let _ = tracing_log::format_trace(&rec);
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_known_benign_pingora_errors_are_relevelled() {
        use log::Level::*;
        assert_eq!(
            relevel(
                "pingora_core::connectors",
                Error,
                "failed to acquire reusable stream"
            ),
            Debug
        );
        assert_eq!(
            relevel(
                "pingora_core::server::transfer_fd",
                Error,
                "No incoming socket transfer, sleep 1s and try again"
            ),
            Info
        );
        // Same target, other message; same message, other target: unchanged.
        assert_eq!(
            relevel("pingora_core::connectors", Error, "connect refused"),
            Error
        );
        assert_eq!(
            relevel(
                "pingora_core::server::transfer_fd",
                Error,
                "Error accepting socket transfer: EBADF"
            ),
            Error
        );
        assert_eq!(
            relevel("loopgate", Error, "failed to acquire reusable stream"),
            Error
        );
        assert_eq!(relevel("pingora_core::connectors", Warn, "x"), Warn);
    }
}
