//! Logs: `tracing` events on stderr, one line each with key=value fields (or one JSON
//! object). Colours only on a terminal, so that journald and log files get plain text. When
//! stderr is the journal, lines carry no timestamp (the journal adds its own) and start with
//! the kernel-style priority the journal reads (`<4>` for a warning, sd-daemon(3)), so that
//! `journalctl -p warning` finds aksync's warnings.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
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
    let text = || format::format().with_target(false);
    // Only fails when a subscriber is already installed, which is then kept.
    let _ = match (format, stderr_is_journal()) {
        (LogFormat::Json, false) => builder.json().try_init(),
        (LogFormat::Json, true) => builder
            .event_format(Journal {
                line: text().json(),
                level: false,
            })
            .try_init(),
        (LogFormat::Text, false) => builder.try_init(),
        // The level is written by Journal, unpadded.
        (LogFormat::Text, true) => builder
            .event_format(Journal {
                line: text().without_time().with_level(false),
                level: true,
            })
            .try_init(),
    };
}

/// A line for the journal: the priority, then (for text) the level word, then `line`.
struct Journal<F> {
    line: F,
    level: bool,
}

impl<S, N, F> FormatEvent<S, N> for Journal<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        write!(writer, "<{}>", priority(level))?;
        if self.level {
            write!(writer, "{level} ")?;
        }
        self.line.format_event(context, writer, event)
    }
}

/// What starts a line written to stderr outside `tracing` (the one-line error a command
/// exits with): its priority when stderr is the journal, so that a configuration the daemon
/// cannot start with is an error there too, else nothing.
pub fn error_line_prefix() -> &'static str {
    if stderr_is_journal() {
        "<3>"
    } else {
        ""
    }
}

/// syslog's priority of a level: err, warning, info, debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
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
