//! Logs: `tracing` events on stderr, one line each with key=value fields (or one JSON
//! object). Colours only on a terminal, so that journald and log files get plain text; no
//! timestamps when stderr is the journal, which adds its own.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The variable that overrides the level, with `tracing`'s directive syntax
/// (`AKSYNC_LOG=debug`, `AKSYNC_LOG=aksync=debug,warn`).
pub const LOG_ENV: &str = "AKSYNC_LOG";

/// Installs the global subscriber; `level` applies unless `AKSYNC_LOG` is set. A second call
/// changes nothing.
pub fn init(level: &str, format: LogFormat) {
    // A level from the configuration is aksync's own; libraries only say what goes wrong.
    let filter = EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| match level {
        "off" | "error" | "warn" => EnvFilter::new(level),
        level => EnvFilter::new(format!("warn,aksync={level}")),
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    // Only fails when a subscriber is already installed, which is then kept.
    let _ = match (format, stderr_is_journal()) {
        (LogFormat::Json, _) => builder.json().try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}

/// Whether stderr is the journal's stream: systemd names it in `JOURNAL_STREAM` as
/// `device:inode` (sd_journal_stream_fd(3)).
fn stderr_is_journal() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
            return false;
        };
        stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
    }
    #[cfg(not(unix))]
    false
}
