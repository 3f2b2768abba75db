//! `aksync daemon`: the service. It syncs every source on its schedule with the same run
//! function as `aksync sync`, delivers the outbox on its own loop, serves `/healthz`,
//! `/metrics` and a status page when `[http]` is set, tells systemd how it is doing, reloads
//! its configuration on SIGHUP, and on SIGTERM/SIGINT cancels the runs in progress (which
//! then record themselves as failed and store nothing) and exits 0.
//!
//! Parts: [`scheduler`] (when each source runs), [`supervisor`] (starting runs, overlap,
//! retries, reload), [`outbox`] (webhook delivery), [`status`] (what every part reports
//! from), [`http`], [`metrics`], [`status_page`] and [`process`] (the endpoint), [`notify`]
//! (systemd) and [`signals`].

pub mod http;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod process;
pub mod scheduler;
pub mod signals;
pub mod status;
pub mod status_page;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::cli::{CliError, Exit};
use crate::clock::Clock;
use crate::config::{Config, ConfigLocation};
use crate::run::sync::STORE_WAIT;
use crate::store::Store;
use notify::Notifier;
use outbox::Outbox;
use scheduler::Scheduler;
use signals::{Request, Signals};
use status::StatusBoard;
use supervisor::Supervisor;

/// How long the endpoint and the delivery loop get to finish after the runs have stopped.
const TASK_GRACE: Duration = Duration::from_secs(2);
/// File descriptors of the process itself: standard streams, the store, the runtime, the
/// listener, the scheduler, with room to spare.
const OWN_FDS: u64 = 64;
/// File descriptors of a run besides its requests: spool, envelope and report files.
const RUN_FDS: u64 = 16;

pub async fn run(
    location: ConfigLocation,
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<Exit, CliError> {
    let runtime = |error: &dyn std::fmt::Display| CliError::Runtime(error.to_string());
    warn_below_the_fd_limit(&config);
    let notifier = Notifier::from_env();
    let mut signals =
        Signals::install().map_err(|error| runtime(&format!("cannot handle signals: {error}")))?;
    let names: Vec<String> = config.sources.keys().cloned().collect();
    // The store must open before systemd hears READY=1; runs, delivery and the endpoint share it.
    let store = Arc::new(Store::open(&config.database_path(), STORE_WAIT)?);
    // What a process stopped after a commit left undone, before any new run.
    crate::output::repair::repair_at_start(&config, &store, &*clock).await;
    let mut histories = supervisor::read_histories(&store, &names).await?;
    let listener = match &config.http {
        Some(http) => Some(http::bind(http.listen).await.map_err(|e| runtime(&e))?),
        None => None,
    };
    let (ticks_sender, mut ticks) = mpsc::unbounded_channel();
    let (finished_sender, mut finished) = mpsc::unbounded_channel();
    let scheduler = Scheduler::start(ticks_sender)
        .await
        .map_err(|e| runtime(&e))?;
    let board = Arc::new(StatusBoard::new(clock.now()));
    let outbox_wake = Arc::new(Notify::new());
    let config = Arc::new(config);
    let (config_sender, config_receiver) = watch::channel(Arc::clone(&config));
    let mut supervisor = Supervisor::new(
        Arc::clone(&config),
        Arc::clone(&store),
        Arc::clone(&clock),
        scheduler,
        finished_sender,
        Arc::clone(&board),
        Arc::clone(&outbox_wake),
    );
    for (name, source) in &config.sources {
        let history = histories.remove(name).unwrap_or_default();
        supervisor
            .add_source(source.clone(), history)
            .await
            .map_err(|e| runtime(&e))?;
    }
    let cancel = supervisor.cancellation();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    if let (Some(listener), Some(http)) = (listener, &config.http) {
        let state = http::HttpState {
            board: Arc::clone(&board),
            state_dir: config.state_dir.clone(),
            clock: Arc::clone(&clock),
        };
        tasks.push(http::serve(listener, http, Arc::new(state), cancel.clone()));
    }
    tasks.push(
        Outbox {
            config: config_receiver,
            store,
            clock: Arc::clone(&clock),
            board: Arc::clone(&board),
            wake: Arc::clone(&outbox_wake),
            cancel: cancel.clone(),
        }
        .spawn(),
    );
    // Runs left undelivered before this start.
    outbox_wake.notify_one();
    let http = config.http.as_ref();
    tracing::info!(
        sources = %names.join(","),
        http = %http.map_or_else(|| "off".to_string(), |http| http.listen.to_string()),
        "aksync daemon started"
    );
    notifier.ready(&board.status_line(clock.now()));
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    loop {
        let handled = tokio::select! {
            request = signals.next() => match request {
                Request::Stop => break,
                Request::Reload => {
                    notifier.reloading();
                    let reloaded = reload(&location, &mut supervisor, &config_sender).await;
                    board.record_reload(reloaded.map(|()| clock.now()));
                    notifier.ready(&board.status_line(clock.now()));
                    Ok(())
                }
            },
            Some(tick) = ticks.recv() => supervisor.on_tick(tick).await,
            Some(done) = finished.recv() => supervisor.on_finished(done).await,
            () = ping(&mut watchdog) => {
                notifier.watchdog();
                Ok(())
            }
        };
        if let Err(error) = handled {
            tracing::error!("{error}");
        }
        notifier.status(&board.status_line(clock.now()));
    }
    notifier.stopping();
    tracing::info!("stopping: cancelling the runs in progress");
    supervisor.stop().await;
    let stopped = futures::future::join_all(tasks);
    if tokio::time::timeout(TASK_GRACE, stopped).await.is_err() {
        tracing::warn!("the endpoint or the delivery loop did not stop in time");
    }
    tracing::info!("stopped");
    Ok(Exit::Success)
}

/// Loads the configuration again and applies it. A configuration that does not load or
/// apply is one logged error and the running one stays; the error is returned for the
/// status board (the metric and systemd's STATUS).
async fn reload(
    location: &ConfigLocation,
    supervisor: &mut Supervisor,
    config_sender: &watch::Sender<Arc<Config>>,
) -> Result<(), String> {
    let applied = match Config::load(location).and_then(|mut config| {
        config.log_warnings();
        config.read_tokens()?;
        config.read_signing_key()?;
        Ok(config)
    }) {
        Ok(loaded) => supervisor.reload(loaded).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match &applied {
        Ok(()) => {
            config_sender.send_replace(supervisor.config());
            tracing::info!("configuration reloaded");
        }
        Err(error) => {
            tracing::error!("reload rejected: {error}, running the previous configuration")
        }
    }
    applied
}

/// Says so when the open-file limit is below what the configuration can use at once (the
/// endpoint's connections, every concurrent run's requests and files), which would
/// otherwise show as runs failing with "Too many open files".
fn warn_below_the_fd_limit(config: &Config) {
    let Some(limit) = process::ProcessStats::current().max_fds else {
        return;
    };
    let requests = config
        .sources
        .values()
        .map(|source| source.concurrency as u64)
        .max()
        .unwrap_or(0);
    let connections = config
        .http
        .as_ref()
        .map_or(0, |_| http::MAX_CONNECTIONS as u64);
    let needed =
        OWN_FDS + connections + config.daemon.max_concurrent_runs as u64 * (requests + RUN_FDS);
    if limit < needed {
        tracing::warn!(
            "the open-file limit is {limit}, and this configuration can use {needed} at once: raise LimitNOFILE= (or ulimit -n)"
        );
    }
}

/// The next watchdog ping, or never without a watchdog.
async fn ping(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
