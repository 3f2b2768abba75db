//! The sources' runs in the daemon: start one when its tick fires (and at start with
//! `run_on_start`), skip a tick while the source's run is still going here or in another
//! process, retry a failed run sooner with backoff, keep to `max_concurrent_runs`, and apply
//! a reloaded configuration. Every run is [`run_source`], the one `aksync sync` makes too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::scheduler::{retry_delay, Armed, Scheduler, SchedulerError, Tick};
use super::status::{History, SourceStatus, StatusBoard};
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::run::run_lock::{source_lock_path, RunLock, TryLock};
use crate::run::runner::{no_progress, record_lock_failure, run_source, RunContext};
use crate::store::{DeliveryStatus, RunRecord, RunStatus, Store, StoreError};

/// How long a stop waits for cancelled runs to record themselves as failed. With the
/// endpoint's and the runtime's own grace, the process is gone within 9 seconds
/// (`TimeoutStopSec=15s` in systemd/aksync.service leaves margin).
const STOP_GRACE: Duration = Duration::from_secs(6);

/// A run task's end, sent back to the daemon's loop.
#[derive(Debug)]
pub struct Finished {
    source: String,
    outcome: Outcome,
    /// The source's runs as stored afterwards.
    history: Option<History>,
}

#[derive(Debug)]
enum Outcome {
    Ran(Box<RunRecord>),
    /// Another process holds the source's run lock.
    Busy {
        holder: Option<u32>,
    },
    /// The run could not be recorded.
    Error(String),
    /// The daemon stopped before the run began.
    NotStarted,
}

struct Slot {
    source: Arc<SourceConfig>,
    tick: Option<Armed>,
    retry: Option<Armed>,
    /// Failed runs in a row.
    failures: u32,
    running: Option<JoinHandle<()>>,
}

pub struct Supervisor {
    config: Arc<Config>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    scheduler: Scheduler,
    finished: UnboundedSender<Finished>,
    cancel: CancellationToken,
    runs: Arc<Semaphore>,
    slots: BTreeMap<String, Slot>,
    board: Arc<StatusBoard>,
    outbox: Arc<Notify>,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        scheduler: Scheduler,
        finished: UnboundedSender<Finished>,
        board: Arc<StatusBoard>,
        outbox: Arc<Notify>,
    ) -> Supervisor {
        Supervisor {
            runs: Arc::new(Semaphore::new(config.daemon.max_concurrent_runs)),
            config,
            store,
            clock,
            scheduler,
            finished,
            cancel: CancellationToken::new(),
            slots: BTreeMap::new(),
            board,
            outbox,
        }
    }

    /// Cancelled when the daemon stops: runs, delivery and the endpoint end with it.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Puts a source on the schedule, and runs it at once if it says `run_on_start`.
    pub async fn add_source(
        &mut self,
        source: SourceConfig,
        history: History,
    ) -> Result<(), SchedulerError> {
        let name = source.name.clone();
        let run_now = source.run_on_start;
        self.board
            .insert(&name, SourceStatus::new(&source, history));
        self.slots.insert(
            name.clone(),
            Slot {
                source: Arc::new(source),
                tick: None,
                retry: None,
                failures: 0,
                running: None,
            },
        );
        let now = self.clock.now();
        self.arm_next(&name, now).await?;
        if run_now {
            self.start_run(&name, now, "start");
        }
        Ok(())
    }

    /// Arms the source's next scheduled tick after `after`.
    async fn arm_next(&mut self, name: &str, after: DateTime<Utc>) -> Result<(), SchedulerError> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Ok(());
        };
        if let Some(armed) = slot.tick.take() {
            self.scheduler.disarm(armed).await;
        }
        if let Some(at) = slot.source.schedule.next_after(after) {
            slot.tick = Some(self.scheduler.arm(name, at, &*self.clock).await?);
        }
        self.publish_next_run(name);
        Ok(())
    }

    fn publish_next_run(&self, name: &str) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let next = [slot.tick, slot.retry]
            .into_iter()
            .flatten()
            .map(|armed| armed.at)
            .min();
        self.board.update(name, |status| status.next_run = next);
    }

    pub async fn on_tick(&mut self, tick: Tick) -> Result<(), SchedulerError> {
        let Some(slot) = self.slots.get_mut(&tick.source) else {
            return Ok(());
        };
        if slot.tick.is_some_and(|armed| armed.job == tick.job) {
            slot.tick = None;
            // The tick may come a little early, or late after a suspend: never arm the same
            // time twice, and do not catch up on missed ones.
            let after = tick.at.max(self.clock.now());
            self.arm_next(&tick.source, after).await?;
            self.start_run(&tick.source, tick.at, "schedule");
        } else if slot.retry.is_some_and(|armed| armed.job == tick.job) {
            slot.retry = None;
            self.start_run(&tick.source, tick.at, "retry");
        }
        // Anything else is a tick of a job that was replaced meanwhile.
        Ok(())
    }

    fn start_run(&mut self, name: &str, due: DateTime<Utc>, reason: &'static str) {
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.running.is_some() {
            tracing::info!(
                source = %name,
                reason = %reason,
                "run skipped: the previous run of this source is still going"
            );
            return;
        }
        // A run now makes a pending retry pointless; its tick will be ignored.
        slot.retry = None;
        let task = RunTask {
            source: Arc::clone(&slot.source),
            config: Arc::clone(&self.config),
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            cancel: self.cancel.clone(),
            runs: Arc::clone(&self.runs),
            finished: self.finished.clone(),
            due,
        };
        slot.running = Some(tokio::spawn(task.run()));
        let now = self.clock.now();
        self.board
            .update(name, |status| status.running_since = Some(now.max(due)));
        self.publish_next_run(name);
    }

    pub async fn on_finished(&mut self, finished: Finished) -> Result<(), SchedulerError> {
        let name = finished.source.as_str();
        let Some(slot) = self.slots.get_mut(name) else {
            // The source was removed while it ran.
            return Ok(());
        };
        slot.running = None;
        let failed = match &finished.outcome {
            Outcome::Ran(run) => run.status == RunStatus::Failed,
            Outcome::Busy { holder } => {
                tracing::info!(
                    source = %name,
                    holder_pid = %holder.map_or_else(|| "unknown".to_string(), |pid| pid.to_string()),
                    "run skipped: another aksync process is syncing this source"
                );
                false
            }
            Outcome::Error(error) => {
                tracing::error!(source = %name, "run not recorded: {error}");
                true
            }
            Outcome::NotStarted => false,
        };
        if let Outcome::Ran(run) = &finished.outcome {
            if run.status == RunStatus::Complete {
                slot.failures = 0;
            }
            if run
                .delivery
                .as_ref()
                .is_some_and(|delivery| delivery.status == DeliveryStatus::Pending)
            {
                self.outbox.notify_one();
            }
        }
        self.board.update(name, |status| {
            status.running_since = None;
            if let Some(history) = finished.history {
                status.history = history;
            }
            if let Outcome::Ran(run) = &finished.outcome {
                status.count_run(run);
            }
        });
        if failed {
            slot.failures = slot.failures.saturating_add(1);
            self.arm_retry(name).await?;
        }
        self.publish_next_run(name);
        Ok(())
    }

    /// After a failed run: a retry sooner than the next tick, if the backoff allows one.
    async fn arm_retry(&mut self, name: &str) -> Result<(), SchedulerError> {
        let Some(slot) = self.slots.get_mut(name) else {
            return Ok(());
        };
        let now = self.clock.now();
        let Some(delay) = retry_delay(slot.failures, slot.source.schedule.interval()) else {
            return Ok(());
        };
        let at = now + chrono::Duration::from_std(delay).unwrap_or_default();
        if slot.tick.is_some_and(|tick| tick.at <= at) {
            return Ok(());
        }
        if let Some(previous) = slot.retry.take() {
            self.scheduler.disarm(previous).await;
        }
        slot.retry = Some(self.scheduler.arm(name, at, &*self.clock).await?);
        tracing::info!(
            source = %name,
            failures = slot.failures,
            retry_in_secs = delay.as_secs(),
            "retrying after a failed run"
        );
        Ok(())
    }

    /// Applies a new configuration: sources added, removed or changed (schedule, filter, …),
    /// and the limit on concurrent runs. The state directory cannot change while running.
    pub async fn reload(&mut self, new: Config) -> Result<(), ReloadError> {
        if new.state_dir != self.config.state_dir {
            return Err(ReloadError::StateDir);
        }
        if new.http != self.config.http
            || new.daemon.log_level != self.config.daemon.log_level
            || new.daemon.log_format != self.config.daemon.log_format
        {
            tracing::warn!("changes to [http] and to daemon.log_level or log_format take effect after a restart");
        }
        let added: Vec<String> = new
            .sources
            .keys()
            .filter(|name| !self.slots.contains_key(*name))
            .cloned()
            .collect();
        let histories = read_histories(&self.store, &added).await?;
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !new.sources.contains_key(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(slot) = self.slots.remove(&name) {
                for armed in [slot.tick, slot.retry].into_iter().flatten() {
                    self.scheduler.disarm(armed).await;
                }
            }
            self.board.remove(&name);
            tracing::info!(source = %name, "source removed");
        }
        for (name, source) in &new.sources {
            let Some(slot) = self.slots.get_mut(name) else {
                continue;
            };
            if *slot.source == *source {
                continue;
            }
            let schedule_changed = slot.source.schedule != source.schedule;
            slot.source = Arc::new(source.clone());
            tracing::info!(source = %name, "source settings changed");
            self.board.update(name, |status| status.follow(source));
            if schedule_changed {
                self.arm_next(name, self.clock.now()).await?;
            }
        }
        if new.daemon.max_concurrent_runs != self.config.daemon.max_concurrent_runs {
            // Runs in progress keep the permits of the old limit.
            self.runs = Arc::new(Semaphore::new(new.daemon.max_concurrent_runs));
        }
        self.config = Arc::new(new);
        for (name, history) in histories {
            let source = self.config.sources[&name].clone();
            tracing::info!(source = %name, "source added");
            self.add_source(source, history).await?;
        }
        Ok(())
    }

    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config)
    }

    /// Stops scheduling, cancels the runs in progress (they record themselves as failed with
    /// "cancelled by shutdown") and waits a little for them to do so.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let mut running = Vec::new();
        for slot in self.slots.values_mut() {
            for armed in [slot.tick.take(), slot.retry.take()].into_iter().flatten() {
                self.scheduler.disarm(armed).await;
            }
            running.extend(slot.running.take());
        }
        if tokio::time::timeout(STOP_GRACE, futures::future::join_all(running))
            .await
            .is_err()
        {
            tracing::warn!("runs did not finish recording within {STOP_GRACE:?}; stopping anyway");
        }
        self.scheduler.shutdown().await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("state_dir cannot change while the daemon runs: restart it instead")]
    StateDir,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

/// The stored runs of the named sources.
pub async fn read_histories(
    store: &Arc<Store>,
    names: &[String],
) -> Result<BTreeMap<String, History>, StoreError> {
    let names = names.to_vec();
    let reader = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        names
            .into_iter()
            .map(|name| Ok((name.clone(), History::read(&reader, &name)?)))
            .collect()
    })
    .await
    .map_err(|error| StoreError::Aborted(format!("reading the run history failed: {error}")))?
}

/// One run of one source, in its own task.
struct RunTask {
    source: Arc<SourceConfig>,
    config: Arc<Config>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    cancel: CancellationToken,
    runs: Arc<Semaphore>,
    finished: UnboundedSender<Finished>,
    /// The time the run stands for; a tick may fire a little before it.
    due: DateTime<Utc>,
}

impl RunTask {
    async fn run(self) {
        let outcome = self.outcome().await;
        let history = match read_histories(&self.store, std::slice::from_ref(&self.source.name))
            .await
        {
            Ok(mut histories) => histories.remove(&self.source.name),
            Err(error) => {
                tracing::warn!(source = %self.source.name, "cannot read the run history: {error}");
                None
            }
        };
        // Only fails once the daemon's loop has gone, when nobody needs to know.
        let _ = self.finished.send(Finished {
            source: self.source.name.clone(),
            outcome,
            history,
        });
    }

    async fn outcome(&self) -> Outcome {
        let early = (self.due - self.clock.now()).to_std().unwrap_or_default();
        let permit = tokio::select! {
            () = self.cancel.cancelled() => return Outcome::NotStarted,
            permit = async {
                tokio::time::sleep(early).await;
                Arc::clone(&self.runs).acquire_owned().await
            } => permit,
        };
        // The semaphore is never closed.
        let Ok(_permit) = permit else {
            return Outcome::NotStarted;
        };
        let context = RunContext {
            config: &self.config,
            store: &self.store,
            clock: &*self.clock,
            progress: &no_progress,
            cancel: &self.cancel,
        };
        let lock_path = source_lock_path(&self.config.state_dir, &self.source.name);
        let ran = match RunLock::try_acquire(&lock_path) {
            Ok(TryLock::Acquired(lock)) => run_source(&context, &self.source, lock).await,
            Ok(TryLock::Held { holder }) => return Outcome::Busy { holder },
            Err(error) => record_lock_failure(&context, &self.source, &error).await,
        };
        match ran {
            Ok(synced) => Outcome::Ran(Box::new(synced.run)),
            Err(error) => Outcome::Error(error.to_string()),
        }
    }
}
