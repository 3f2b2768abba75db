//! The binary's commands: load the configuration, call the library, print results, and map
//! every outcome to an exit code (0 success, 1 a failed run or unhealthy source or runtime
//! error, 2 bad configuration or usage). Errors are one line on stderr.

mod connect;
mod decide;
pub(crate) mod evidence;
pub mod opt;
pub mod output;
mod review;
pub(crate) mod show;
mod verify;

pub(crate) use output::print_json;

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::authentik::health::check_source;
use crate::authentik::ListKind;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError, ConfigLocation, LogFormat, SourceConfig};
use crate::demo;
use crate::display::escape;
use crate::logging;
use crate::run::run_lock::{source_lock_path, RunLock};
use crate::run::runner::{record_lock_failure, run_source, RunContext};
use crate::run::sync::STORE_WAIT;
use crate::store::{HealthStatus, RunRecord, RunStatus, Store, StoreError};
use opt::{Command, Opt};

/// Commands other than the daemon log warnings and errors only, unless `AKSYNC_LOG` says
/// otherwise; what they did is their output.
const CLI_LOG_LEVEL: &str = "warn";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    Failure = 1,
    Usage = 2,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Runtime(String),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Config(_) | CliError::Usage(_) => Exit::Usage,
            CliError::Store(_) | CliError::Runtime(_) => Exit::Failure,
        }
    }
}

/// Runs one command; the caller prints the error and exits with the code.
pub async fn run(opt: Opt) -> Result<Exit, CliError> {
    let clock = SystemClock;
    let location = ConfigLocation::from_option(opt.config);
    match opt.command {
        // The demo writes its own configuration.
        Command::Demo { people, state_dir } => {
            logging::init(CLI_LOG_LEVEL, LogFormat::Text);
            demo::run(people, state_dir, &clock).await
        }
        // Keys and a report's own check need no configuration: an auditor runs them too.
        Command::Keygen {
            out,
            public,
            key: Some(key),
        } => verify::keygen(out.as_deref(), public.as_deref(), Some(&key), None),
        Command::Keygen {
            out: Some(out),
            public,
            key: None,
        } => verify::keygen(Some(&out), public.as_deref(), None, None),
        Command::Verify {
            report: Some(report),
            public_keys,
            json,
            ..
        } => {
            logging::init(CLI_LOG_LEVEL, LogFormat::Text);
            verify::report(&report, &public_keys, json)
        }
        // A connection changes the configuration: it is validated with the source added, so
        // it may be the first source.
        Command::Connect {
            name,
            base_url,
            token,
            primary,
            disable_group_sync,
            filter,
            group_filter,
        } => {
            logging::init(CLI_LOG_LEVEL, LogFormat::Text);
            let request = connect::ConnectRequest {
                name,
                base_url,
                token_file: token.token_file,
                token_stdin: token.token_stdin,
                primary,
                disable_group_sync,
                filter,
                group_filter,
            };
            connect::connect(&location, request, &clock).await
        }
        Command::Disconnect { name } => {
            logging::init(CLI_LOG_LEVEL, LogFormat::Text);
            connect::disconnect(&location, &name, &clock)
        }
        Command::Daemon => {
            let mut config = Config::load(&location)?;
            check_needs(&opt.command, &mut config)?;
            logging::init(&config.daemon.log_level, config.daemon.log_format);
            config.log_warnings();
            crate::daemon::run(location, config, Arc::new(clock)).await
        }
        command => {
            logging::init(CLI_LOG_LEVEL, LogFormat::Text);
            let mut config = Config::load(&location)?;
            config.log_warnings();
            check_needs(&command, &mut config)?;
            run_configured(command, &config, &clock).await
        }
    }
}

/// What a command needs beyond a configuration that loads, checked before it starts (a
/// configuration error, exit 2): a state directory of its own to write into, the tokens of
/// what it talks to, and the key that signs what it appends to the ledger or writes as a
/// report. Queries need none of them, so `sudo aksync runs` reads the service's history
/// while the service's credentials are gone.
fn check_needs(command: &Command, config: &mut Config) -> Result<(), ConfigError> {
    if command.writes_state_dir() {
        config.check_state_dir_owner()?;
    }
    match command {
        Command::Sync { dry_run: false, .. }
        | Command::Daemon
        | Command::Approve { .. }
        | Command::Reject { .. }
        | Command::Prune { dry_run: false, .. } => config.read_signing_key()?,
        Command::Report { out: Some(_), .. } => config.read_signing_key()?,
        // A signing key at hand is a public key to check signatures with; without it,
        // verify says which signatures it could not check.
        Command::Verify { .. } => drop(config.read_signing_key()),
        _ => {}
    }
    match command {
        Command::Check { .. } | Command::Sync { .. } | Command::Daemon => config.read_tokens(),
        Command::Deliver { .. } => config.read_webhook_token(),
        _ => Ok(()),
    }
}

async fn run_configured(
    command: Command,
    config: &Config,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    match command {
        // `run` starts these two itself.
        Command::Demo { .. }
        | Command::Daemon
        | Command::Connect { .. }
        | Command::Disconnect { .. } => Err(CliError::Usage(
            "the demo, the daemon, connect and disconnect load the configuration themselves".into(),
        )),
        Command::Keygen {
            out, public, key, ..
        } => verify::keygen(
            out.as_deref(),
            public.as_deref(),
            key.as_deref(),
            Some(config),
        ),
        Command::Verify {
            source,
            since,
            report,
            public_keys,
            json,
        } => match report {
            Some(report) => verify::report(&report, &public_keys, json),
            None => verify::ledger(
                config,
                source.source.as_deref(),
                since.as_deref(),
                &public_keys,
                json,
            ),
        },
        Command::Check { source, json } => {
            check(config, source.source.as_deref(), json, clock).await
        }
        Command::Sync {
            source,
            dry_run: false,
        } => sync(config, source.source.as_deref(), clock).await,
        Command::Sync {
            source,
            dry_run: true,
        } => dry_run(config, source.source.as_deref(), clock).await,
        Command::Approve { run, source } => {
            let decision = crate::store::Decision::Approved;
            decide::decide(config, source.source.as_deref(), &run, decision, clock).await
        }
        Command::Reject { run, source } => {
            let decision = crate::store::Decision::Rejected;
            decide::decide(config, source.source.as_deref(), &run, decision, clock).await
        }
        Command::Runs {
            source,
            json,
            events,
        } => {
            if let Some(name) = &source.source {
                config.select_sources(Some(name))?;
            }
            runs(
                &config.database_path(),
                source.source.as_deref(),
                json,
                events,
            )
        }
        Command::Prune {
            source,
            dry_run,
            json,
        } => prune(config, source.source.as_deref(), dry_run, json, clock),
        Command::Deliver { decision } => deliver(config, decision, clock).await,
        Command::Show {
            kind,
            source,
            run,
            all,
            filters,
            format,
        } => {
            let source = single_source(config, source.source.as_deref())?;
            let request = show::ShowRequest {
                kind,
                run: &run,
                all,
                filters: &filters,
                format: &format,
            };
            show::show(config, source, &request)
        }
        Command::Review { action, export } => review::review(config, action, &export, clock),
        Command::Diff {
            from,
            to,
            source,
            json,
        } => {
            let source = single_source(config, source.source.as_deref())?;
            evidence::diff(config, source, &from, &to, json)
        }
        Command::Envelopes {
            run,
            source,
            format,
            rebuild,
            full,
        } => {
            let source = single_source(config, source.source.as_deref())?;
            let request = match (rebuild, full) {
                (true, _) => evidence::EnvelopeRequest::Rebuild,
                (false, true) => evidence::EnvelopeRequest::Full(format),
                (false, false) => evidence::EnvelopeRequest::Changes(format),
            };
            evidence::envelopes(config, source, &run, request)
        }
        Command::Report {
            run,
            source,
            from,
            since,
            until,
            format,
            out,
        } => {
            let source = single_source(config, source.source.as_deref())?;
            let request = evidence::ReportRequest {
                run: run.as_deref().unwrap_or("latest"),
                from: from.as_deref(),
                since: since.as_deref(),
                until: until.as_deref(),
                format: &format,
                out: out.as_deref(),
            };
            evidence::report(config, source, &request, clock)
        }
        Command::History { user, source, json } => {
            let source = single_source(config, source.source.as_deref())?;
            evidence::history(config, source, &user, json)
        }
    }
}

async fn check(
    config: &Config,
    source: Option<&str>,
    json: bool,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let sources = config.select_sources(source)?;
    let mut results = Vec::new();
    for source in sources {
        results.push(check_source(source, clock).await);
    }
    // An admin may check the sources of a service whose state directory is not theirs
    // (`sudo aksync check`); the result is then printed, not stored.
    if config.check_state_dir_owner().is_ok() {
        let store = Store::open(&config.database_path(), STORE_WAIT)?;
        for result in &results {
            store.put_health(result)?;
        }
    }
    let now = clock.now();
    // A quarantined run waits for an admin: the check says so, as `/healthz` does.
    let stored = open_existing(&config.database_path())?;
    let mut checked = Vec::new();
    for health in &results {
        let schedule = &config.sources[&health.source].schedule;
        let awaiting_decision = match &stored {
            Some(store) => store
                .recent_runs(&health.source, crate::config::RECENT_RUNS)?
                .into_iter()
                .filter_map(|run| {
                    Some(AwaitingDecision {
                        message: run.decision_needed()?,
                        reasons: run
                            .quarantine
                            .map(|quarantine| quarantine.reasons)
                            .unwrap_or_default(),
                        run_id: run.run_id,
                    })
                })
                .collect(),
            None => Vec::new(),
        };
        checked.push(CheckedSource {
            health,
            schedule: schedule.to_string(),
            next_run: schedule.next_after(now),
            awaiting_decision,
        });
    }
    if json {
        print_json(&checked)?;
    } else {
        for CheckedSource {
            health: result,
            schedule,
            next_run,
            ..
        } in &checked
        {
            let detail = match result.status {
                HealthStatus::Healthy => format!(
                    "Authentik {}, token user {}",
                    result.authentik_version.as_deref().unwrap_or("?"),
                    result.token_user.as_deref().unwrap_or("?")
                ),
                HealthStatus::NeedsAttention => result.reason.clone().unwrap_or_default(),
            };
            let next = next_run.map_or_else(
                || "never".to_string(),
                |at| format!("{} UTC", at.format("%Y-%m-%d %H:%M:%S")),
            );
            output::print_line(&format!(
                "{}: {}: {}; next scheduled run {next} ({schedule})",
                result.source,
                result.status.as_str(),
                escape(&detail)
            ))?;
        }
        for (source, held) in checked.iter().flat_map(|checked| {
            let source = &checked.health.source;
            checked
                .awaiting_decision
                .iter()
                .map(move |held| (source, held))
        }) {
            output::print_line(&format!("{source}: {}", held.message))?;
        }
    }
    let all_healthy = checked.iter().all(|checked| {
        checked.health.status == HealthStatus::Healthy && checked.awaiting_decision.is_empty()
    });
    Ok(if all_healthy {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// A health check with the source's schedule, as `check` prints it.
#[derive(Serialize)]
struct CheckedSource<'a> {
    #[serde(flatten)]
    health: &'a crate::store::HealthRecord,
    schedule: String,
    next_run: Option<chrono::DateTime<chrono::Utc>>,
    /// The source's recent quarantined runs that wait for `aksync approve` or `reject`.
    awaiting_decision: Vec<AwaitingDecision>,
}

#[derive(Serialize)]
struct AwaitingDecision {
    run_id: String,
    reasons: Vec<String>,
    /// What to do about it, in words.
    message: String,
}

pub(crate) async fn sync(
    config: &Config,
    source: Option<&str>,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let sources = config.select_sources(source)?;
    let show_progress = std::io::stderr().is_terminal();
    let store = Arc::new(Store::open(&config.database_path(), STORE_WAIT)?);
    // A manual sync is stopped by its signals' default action; nothing cancels it.
    let cancel = CancellationToken::new();
    let mut exit = Exit::Success;
    for source in sources {
        let name = source.name.clone();
        let progress = move |kind: ListKind, done: u64, total: u64| {
            if show_progress {
                eprint!("\r\x1b[2K{name}: {}: page {done}/{total}", kind.name());
                if done == total {
                    eprintln!();
                }
            }
        };
        let context = RunContext {
            config,
            store: &store,
            clock,
            progress: &progress,
            cancel: &cancel,
        };
        // One source that cannot be synced (its lock, the database) does not keep the others
        // from their runs, nor the outbox from delivery; the exit code still says it.
        match sync_one(&context, source).await {
            Ok(synced) => {
                output::print_line(&run_summary(&synced.run))?;
                match &synced.diff {
                    Some(diff) => output::print_line(&evidence::diff_headline(diff))?,
                    None => exit = Exit::Failure,
                }
                // Held for a decision: a scheduled `aksync sync` says so in its exit code.
                if synced.run.status == RunStatus::Quarantined {
                    exit = Exit::Failure;
                }
            }
            Err(error) => {
                eprintln!("aksync: source `{}`: {error}", source.name);
                exit = Exit::Failure;
            }
        }
    }
    if config.output.webhook.is_some() {
        deliver_outbox(config, &store, clock).await?;
    }
    Ok(exit)
}

/// `aksync sync --dry-run`: each source fetched and compared with its latest complete run,
/// its would-be envelopes on stdout and its would-be findings on stderr; nothing is written.
async fn dry_run(
    config: &Config,
    source: Option<&str>,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let sources = config.select_sources(source)?;
    let Some(store) = open_existing(&config.database_path())? else {
        return Err(CliError::Runtime(format!(
            "nothing is stored yet in {}: a dry run compares with the latest complete run, and the first `aksync sync` stores the whole directory as its baseline",
            config.database_path().display()
        )));
    };
    let store = Arc::new(store);
    let mut exit = Exit::Success;
    for source in sources {
        match crate::run::sync::preview_source(
            config,
            source,
            Arc::clone(&store),
            clock,
            &crate::run::runner::no_progress,
        )
        .await
        {
            Ok(preview) => {
                let mut file = preview.envelopes.read_back().map_err(|error| {
                    CliError::Runtime(format!("cannot read the dry run's envelopes: {error}"))
                })?;
                let mut stdout = output::stdout_writer();
                std::io::copy(&mut file, &mut stdout)
                    .and_then(|_| stdout.flush())
                    .map_err(|error| CliError::Runtime(error.to_string()))?;
                eprintln!(
                    "{}: dry run, nothing written: {} envelope(s) would be emitted",
                    source.name, preview.envelopes.summary.lines
                );
                eprintln!("{}", evidence::diff_headline(&preview.diff));
                if !preview.quarantine.is_empty() {
                    eprintln!(
                        "{}: the run would be QUARANTINED: {}",
                        source.name,
                        preview.quarantine.join("; ")
                    );
                }
            }
            Err(error) => {
                eprintln!(
                    "aksync: source `{}`: dry run failed: {}",
                    source.name,
                    escape(&error)
                );
                exit = Exit::Failure;
            }
        }
    }
    Ok(exit)
}

/// One source's run, waiting for its lock if another process runs it.
async fn sync_one(
    context: &RunContext<'_>,
    source: &SourceConfig,
) -> Result<crate::run::sync::SyncedRun, CliError> {
    let lock_path = source_lock_path(&context.config.state_dir, &source.name);
    let lock = RunLock::acquire(&lock_path, |holder| {
        let pid = holder
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        eprintln!(
            "aksync: waiting for the running sync of source `{}`{pid}…",
            source.name
        );
    })
    .await;
    match lock {
        Ok(lock) => Ok(run_source(context, source, lock).await?),
        Err(error) => Ok(record_lock_failure(context, source, &error).await?),
    }
}

/// Delivers the outbox, and says in a line what happened.
async fn deliver_outbox(config: &Config, store: &Store, clock: &dyn Clock) -> Result<(), CliError> {
    let Some(webhook) = &config.output.webhook else {
        return Err(CliError::Usage(format!(
            "{}: no [output.webhook] is configured",
            config.origin
        )));
    };
    let report = crate::output::repair::deliver_repairing(config, store, webhook, clock)
        .await
        .map_err(|error| match error {
            crate::output::delivery::DeliveryError::Store(error) => CliError::Store(error),
            other => CliError::Runtime(other.to_string()),
        })?;
    for (run, why) in &report.runs_parked {
        eprintln!(
            "aksync: webhook delivery of run {run} parked: {why}; decide with `aksync deliver --retry {run}` or `--skip {run}`"
        );
    }
    if let Some(reason) = &report.stopped {
        eprintln!(
            "aksync: webhook delivery paused, will resume on the next run: {}",
            escape(reason)
        );
    } else if !report.runs_delivered.is_empty() {
        output::print_line(&format!(
            "webhook: delivered {} batch(es) of {} run(s)",
            report.batches_sent,
            report.runs_delivered.len()
        ))?;
    }
    Ok(())
}

async fn deliver(
    config: &Config,
    decision: opt::DeliveryDecision,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    if !config.database_path().exists() {
        return Err(CliError::Runtime(
            "no runs recorded yet: nothing to deliver".into(),
        ));
    }
    let store = Store::open(&config.database_path(), STORE_WAIT)?;
    let decided = match (&decision.retry, &decision.skip) {
        (Some(run), _) => {
            let batch_size = config
                .output
                .webhook
                .as_ref()
                .map_or(500, |webhook| webhook.batch_size);
            Some(crate::output::delivery::retry(&store, run, batch_size)?)
        }
        (None, Some(run)) => Some(crate::output::delivery::skip(&store, run)?),
        (None, None) => None,
    };
    if let Some(run) = decided {
        let status = run
            .delivery
            .map_or("none", |delivery| delivery.status.as_str());
        output::print_line(&format!("run {}: delivery {status}", run.run_id))?;
        if decision.skip.is_some() {
            return Ok(Exit::Success);
        }
    }
    deliver_outbox(config, &store, clock).await?;
    Ok(Exit::Success)
}

fn prune(
    config: &Config,
    source: Option<&str>,
    dry_run: bool,
    json: bool,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let sources = config.select_sources(source)?;
    if !config.retention.prunes() {
        return Err(CliError::Usage(format!(
            "{}: no [retention] keep_days or keep_runs is set, so every run is kept",
            config.origin
        )));
    }
    if !config.database_path().exists() {
        output::print_line("no runs recorded yet: nothing to prune")?;
        return Ok(Exit::Success);
    }
    let mut store = Store::open(&config.database_path(), STORE_WAIT)?;
    let outcomes =
        crate::output::retention::prune_sources(config, &store, &sources, clock.now(), dry_run)?;
    // Free space is reused by later runs anyway; give it back to the file system only when a
    // prune left much of it.
    let freed = outcomes.iter().any(|outcome| outcome.versions > 0);
    let before = store.usage()?;
    let compacted = !dry_run
        && freed
        && before.used_bytes * 4 < before.file_bytes * 3
        && {
            let compacted = store.compact()?;
            if !compacted {
                eprintln!(
                "aksync: the database keeps its free space for now: another process was inside a transaction; run `aksync prune` again, ideally with the service stopped"
            );
            }
            compacted
        };
    let usage = store.usage()?;
    if json {
        print_json(&serde_json::json!({
            "dry_run": dry_run,
            "sources": outcomes,
            "database": {"file_bytes": usage.file_bytes, "used_bytes": usage.used_bytes},
            "compacted": compacted,
        }))?;
        return Ok(Exit::Success);
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for outcome in &outcomes {
        let mut parts = Vec::new();
        if let Some(keeps_from) = &outcome.keeps_from {
            parts.push(format!(
                "the snapshots of {} runs before {keeps_from} ({} record versions) and {} files (their runs and ledger entries stay)",
                outcome.runs, outcome.versions, outcome.files
            ));
        }
        if outcome.evidence_runs > 0 {
            parts.push(format!(
                "the records and ledger entries of {} runs older than keep_evidence_days",
                outcome.evidence_runs
            ));
        }
        let line = match parts.is_empty() {
            true => format!("{}: nothing to prune", outcome.source),
            false => format!("{}: {verb} {}", outcome.source, parts.join("; ")),
        };
        output::print_line(&line)?;
    }
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    output::print_line(&format!(
        "database {}: {:.1} MiB on disk, {:.1} MiB in use{}",
        config.database_path().display(),
        mib(usage.file_bytes),
        mib(usage.used_bytes),
        if compacted { " (compacted)" } else { "" }
    ))?;
    Ok(Exit::Success)
}

pub(crate) fn run_summary(run: &RunRecord) -> String {
    let seconds = (run.finished_at - run.started_at).num_milliseconds() as f64 / 1000.0;
    match run.status {
        RunStatus::Failed => format!(
            "{}: run {} failed after {seconds:.1}s: {} (the last complete snapshot is kept)",
            run.source,
            run.run_id,
            escape(run.error.as_deref().unwrap_or("unknown error"))
        ),
        RunStatus::Quarantined => format!(
            "{}: run {} QUARANTINED after {seconds:.1}s: {}; its changes are held and nothing is delivered: see `aksync report {}`, then `aksync approve {}` or `aksync reject {}`",
            run.source,
            run.run_id,
            run.quarantine_reasons(),
            run.run_id,
            run.run_id,
            run.run_id
        ),
        status => format!(
            "{}: run {} {} in {seconds:.1}s: {} accounts, {} groups, {} memberships, {} new record versions",
            run.source,
            run.run_id,
            status.as_str(),
            run.counts.accounts,
            run.counts.groups,
            run.counts.memberships,
            run.versions_written
        ),
    }
}

/// The database for a query, if there is one yet: opened for reading only, so that it never
/// waits for another process's commit.
pub(crate) fn open_existing(database: &Path) -> Result<Option<Store>, CliError> {
    if !database.exists() {
        return Ok(None);
    }
    Ok(Some(Store::open_for_reading(database, STORE_WAIT)?))
}

/// One line of `runs`, newest first: a run, or a source's connection or disconnection.
enum Listed<'a> {
    Run(&'a RunRecord),
    Connection(&'a crate::ledger::read::Connection),
}

impl Listed<'_> {
    fn at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            Listed::Run(run) => run.started_at,
            Listed::Connection(connection) => connection.at,
        }
    }
}

pub(crate) fn runs(
    database: &Path,
    source: Option<&str>,
    json: bool,
    with_events_in_json: bool,
) -> Result<Exit, CliError> {
    let store = open_existing(database)?;
    let (runs, connections) = match &store {
        Some(store) => (
            store.runs(source)?,
            crate::ledger::read::connections(&store.reader()?, source)
                .map_err(|error| CliError::Runtime(error.to_string()))?,
        ),
        None => (Vec::new(), Vec::new()),
    };
    // Where each source's kept snapshots start: older runs are evidence only.
    let mut kept_from: std::collections::BTreeMap<String, Option<String>> = Default::default();
    if let Some(store) = &store {
        for run in &runs {
            if !kept_from.contains_key(&run.source) {
                kept_from.insert(run.source.clone(), store.pruned_before(&run.source)?);
            }
        }
    }
    if json && !with_events_in_json {
        print_json(&runs)?;
        return Ok(Exit::Success);
    }
    let mut listed: Vec<Listed> = runs
        .iter()
        .map(Listed::Run)
        .chain(connections.iter().map(Listed::Connection))
        .collect();
    // Newest first, as the runs are; stable, so runs keep their order among themselves.
    listed.sort_by_key(|item| std::cmp::Reverse(item.at()));
    if json {
        let items = listed
            .iter()
            .map(|item| match item {
                Listed::Run(run) => serde_json::to_value(run),
                Listed::Connection(connection) => serde_json::to_value(connection),
            })
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|error| CliError::Runtime(format!("cannot serialize the runs: {error}")))?;
        print_json(&items)?;
        return Ok(Exit::Success);
    }
    if listed.is_empty() {
        output::print_line(&format!("no runs recorded yet in {}", database.display()))?;
        return Ok(Exit::Success);
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|item| match item {
            Listed::Run(run) => run_row(run, kept_from.get(&run.source).and_then(Option::as_deref)),
            Listed::Connection(connection) => connection_row(connection),
        })
        .collect();
    let headers = [
        "run id",
        "source",
        "status",
        "started (utc)",
        "took",
        "accounts",
        "groups",
        "memberships",
        "new versions",
        "delivery",
        "note",
    ];
    output::print(&output::table(&headers, &rows))?;
    Ok(Exit::Success)
}

fn run_row(run: &RunRecord, snapshots_kept_from: Option<&str>) -> Vec<String> {
    vec![
        run.run_id.clone(),
        run.source.clone(),
        run.status.as_str().to_string(),
        run.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        format!(
            "{:.1}s",
            (run.finished_at - run.started_at).num_milliseconds() as f64 / 1000.0
        ),
        run.counts.accounts.to_string(),
        run.counts.groups.to_string(),
        run.counts.memberships.to_string(),
        run.versions_written.to_string(),
        delivery_cell(run),
        run_note(run, snapshots_kept_from),
    ]
}

/// A connection or disconnection in the run list: its status column names it, its note
/// says what was written or removed and by whom.
fn connection_row(connection: &crate::ledger::read::Connection) -> Vec<String> {
    let mut row = vec![String::new(); 11];
    row[0] = format!("ledger entry {}", connection.seq);
    row[1] = connection.source.clone();
    row[2] = connection.event.as_str().to_string();
    row[3] = connection.at.format("%Y-%m-%d %H:%M:%S").to_string();
    row[10] = connection.details.summary();
    row
}

/// What else a reader of the run list must know: the error, the settings the run changed,
/// and whether retention removed its snapshot (its evidence stays).
fn run_note(run: &RunRecord, snapshots_kept_from: Option<&str>) -> String {
    let mut notes = Vec::new();
    if let Some(error) = &run.error {
        notes.push(error.clone());
    }
    if let Some(quarantine) = &run.quarantine {
        notes.push(match &quarantine.decision {
            None => format!(
                "quarantined: {}; awaits `aksync approve` or `aksync reject`",
                quarantine.reasons_line()
            ),
            Some(taken) => format!(
                "quarantined: {}; {} by {} at {}",
                quarantine.reasons_line(),
                taken.decision.as_str(),
                taken.by,
                taken.at.format("%Y-%m-%d %H:%M:%S")
            ),
        });
    }
    if !run.settings_changed.is_empty() {
        notes.push(format!(
            "settings changed: {}",
            run.settings_changed.join(", ")
        ));
    }
    if run.status == RunStatus::Complete
        && snapshots_kept_from.is_some_and(|from| run.run_id.as_str() < from)
    {
        notes.push("snapshot pruned".to_string());
    }
    notes.join("; ")
}

/// A run's webhook delivery in a word, with its progress while it is not finished.
fn delivery_cell(run: &RunRecord) -> String {
    run.delivery.as_ref().map_or_else(String::new, |delivery| {
        delivery.summary(run.envelopes.as_ref().map_or(0, |summary| summary.lines))
    })
}

/// The one source a command reads: the named one, or the only one configured.
pub(crate) fn single_source<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<&'a SourceConfig, CliError> {
    match (name, config.sources.values().next()) {
        (Some(name), _) => Ok(config.select_sources(Some(name))?[0]),
        (None, Some(only)) if config.sources.len() == 1 => Ok(only),
        (None, _) => Err(CliError::Usage(format!(
            "several sources are configured ({}): pass --source NAME",
            config
                .sources
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

pub(crate) fn no_run(source: &str) -> CliError {
    CliError::Runtime(format!(
        "no complete run of source `{source}` yet: run `aksync sync --source {source}` first"
    ))
}

/// A run named on the command line: `latest` (the latest complete run), `previous` (the
/// complete run before it), or a run id of the source.
pub(crate) fn resolve_run(store: &Store, source: &str, spec: &str) -> Result<RunRecord, CliError> {
    match spec {
        "latest" | "previous" => {
            let skip = usize::from(spec == "previous");
            store
                .complete_runs(source)?
                .into_iter()
                .rev()
                .nth(skip)
                .ok_or_else(|| match skip {
                    0 => no_run(source),
                    _ => CliError::Runtime(format!(
                        "source `{source}` has only one complete run: there is no `previous` yet"
                    )),
                })
        }
        run_id => {
            let record = store.run(run_id)?;
            if record.source != source {
                return Err(CliError::Usage(format!(
                    "run {} belongs to source `{}`, not `{source}`: pass --source {}",
                    record.run_id, record.source, record.source
                )));
            }
            Ok(record)
        }
    }
}
