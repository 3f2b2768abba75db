//! `aksync daemon`: the service. It syncs every source on its schedule with the same run
//! function as `aksync sync`, delivers the outbox on its own loop, serves `/healthz`,
//! `/metrics` and a status page when `[http]` is set, tells systemd how it is doing, reloads
//! its configuration on SIGHUP, and on SIGTERM/SIGINT cancels the runs in progress (which
//! then record themselves as failed and store nothing) and exits 0.
//!
//! Parts: [`scheduler`] (when each source runs), [`supervisor`] (starting runs, overlap,
//! retries, reload), [`outbox`] (webhook delivery), [`status`] (what every part reports
//! from), [`http`] and [`metrics`] (the endpoint), [`notify`] (systemd) and [`signals`].

pub mod http;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod scheduler;
pub mod signals;
pub mod status;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::cli::{CliError, Exit};
use crate::clock::Clock;
use crate::config::{Config, ConfigLocation};
use crate::store::Store;
use crate::sync::STORE_WAIT;
use notify::Notifier;
use outbox::Outbox;
use scheduler::Scheduler;
use signals::{Request, Signals};
use status::StatusBoard;
use supervisor::Supervisor;

/// How long the endpoint and the delivery loop get to finish after the runs have stopped.
const TASK_GRACE: Duration = Duration::from_secs(2);

pub async fn run(
    location: ConfigLocation,
    config: Config,
    clock: Arc<dyn Clock>,
) -> Result<Exit, CliError> {
    let runtime = |error: &dyn std::fmt::Display| CliError::Runtime(error.to_string());
    let notifier = Notifier::from_env();
    let mut signals =
        Signals::install().map_err(|error| runtime(&format!("cannot handle signals: {error}")))?;
    let names: Vec<String> = config.sources.keys().cloned().collect();
    // The store must open before systemd hears READY=1; runs, delivery and the endpoint share it.
    let store = Arc::new(Store::open(&config.database_path(), STORE_WAIT)?);
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
    let board = Arc::new(StatusBoard::default());
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
    if let Some(listener) = listener {
        let state = http::HttpState {
            board: Arc::clone(&board),
            state_dir: config.state_dir.clone(),
            clock: Arc::clone(&clock),
        };
        tasks.push(http::serve(listener, Arc::new(state), cancel.clone()));
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
                    reload(&location, &mut supervisor, &config_sender).await;
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

/// Loads the configuration again and applies it; a configuration that does not load or
/// apply is one logged error, and the running one stays.
async fn reload(
    location: &ConfigLocation,
    supervisor: &mut Supervisor,
    config_sender: &watch::Sender<Arc<Config>>,
) {
    let loaded =
        match Config::load(location).and_then(|config| config.read_tokens().map(|()| config)) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!("reload rejected, the running configuration stays: {error}");
                return;
            }
        };
    match supervisor.reload(loaded).await {
        Ok(()) => {
            config_sender.send_replace(supervisor.config());
            tracing::info!("configuration reloaded");
        }
        Err(error) => {
            tracing::error!("reload rejected, the running configuration stays: {error}")
        }
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
