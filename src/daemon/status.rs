//! What the daemon knows about each source: its recent runs as the store has them (read
//! again after every run and delivery pass, so runs of a manual `aksync sync` count too),
//! whether a run is going, when the next one is due, and what this daemon counted since it
//! started. `/healthz`, `/metrics`, the status page and systemd's STATUS line all read it.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use crate::config::schedule::Schedule;
use crate::config::{SourceConfig, RECENT_RUNS};
use crate::display::quote;
use crate::run::runner::run_duration;
use crate::store::{ChangeCounts, RunRecord, RunStatus, Store, StoreError};

/// A source's runs as stored.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Newest first, at most [`RECENT_RUNS`].
    pub recent_runs: Vec<RunRecord>,
    pub last_complete: Option<RunRecord>,
    /// Complete runs whose envelopes still wait for webhook delivery.
    pub outbox_backlog: u64,
}

impl History {
    /// Reads the source's newest runs, its latest complete run and its undelivered runs:
    /// what the page shows, at a cost that does not grow with the history.
    pub fn read(store: &Store, source: &str) -> Result<History, StoreError> {
        Ok(History {
            recent_runs: store.recent_runs(source, RECENT_RUNS)?,
            last_complete: store.latest_complete(source)?,
            outbox_backlog: store.undelivered_runs(source)?.len() as u64,
        })
    }

    pub fn last_run(&self) -> Option<&RunRecord> {
        self.recent_runs.first()
    }
}

#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub schedule: Schedule,
    /// Failed runs in a row that make the source unhealthy.
    pub unhealthy_after_failures: u32,
    pub history: History,
    pub next_run: Option<DateTime<Utc>>,
    /// When the current run was started (or queued for a free slot).
    pub running_since: Option<DateTime<Utc>>,
    /// Runs this daemon made, by status name.
    pub runs_by_status: BTreeMap<&'static str, u64>,
    /// Envelopes written by this daemon's complete runs.
    pub envelopes_emitted: u64,
    /// Joiners, movers and leavers found by this daemon's complete runs, added up.
    pub changes_found: ChangeCounts,
    /// How long this daemon's runs took, complete or not. A clone shares the observations.
    pub run_durations: Histogram,
}

/// The upper bounds of the run-duration histogram's buckets, in seconds: from a small
/// directory's run to a large one's first sync.
const RUN_DURATION_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

impl SourceStatus {
    pub fn new(source: &SourceConfig, history: History) -> SourceStatus {
        SourceStatus {
            schedule: source.schedule.clone(),
            unhealthy_after_failures: source.unhealthy_after_failures,
            history,
            next_run: None,
            running_since: None,
            runs_by_status: BTreeMap::new(),
            envelopes_emitted: 0,
            changes_found: ChangeCounts::default(),
            run_durations: Histogram::new(RUN_DURATION_BUCKETS),
        }
    }

    /// Counts a run this daemon made.
    pub fn count_run(&mut self, run: &RunRecord) {
        *self.runs_by_status.entry(run.outcome()).or_default() += 1;
        self.run_durations.observe(run_duration(run).as_secs_f64());
        if run.status == RunStatus::Complete {
            self.envelopes_emitted += run.envelopes.as_ref().map_or(0, |e| e.lines);
            let changes = run.changes.unwrap_or_default();
            let found = &mut self.changes_found;
            found.joiners += changes.joiners;
            found.movers += changes.movers;
            found.leavers += changes.leavers;
        }
    }

    /// Follows a source's changed settings.
    pub fn follow(&mut self, source: &SourceConfig) {
        self.schedule = source.schedule.clone();
        self.unhealthy_after_failures = source.unhealthy_after_failures;
    }

    /// Healthy unless the last `unhealthy_after_failures` runs all failed, or the last
    /// complete run is older than twice the schedule's interval. A run cancelled by aksync's
    /// own stop says nothing about the source and is looked past: a restart during a run does
    /// not page anyone.
    pub fn health(&self, now: DateTime<Utc>) -> Health {
        let runs: Vec<&RunRecord> = self
            .history
            .recent_runs
            .iter()
            .filter(|run| !run.cancelled_by_shutdown())
            .collect();
        let not_complete = runs
            .iter()
            .take_while(|run| run.status != RunStatus::Complete)
            .count();
        let reason = match (runs.first(), &self.history.last_complete) {
            (None, None) => Some("no run yet".to_string()),
            // Held for a decision: an admin has to look, whatever the failure allowance.
            (Some(run), _) if run.awaits_decision() => run.decision_needed(),
            (Some(run), _) if not_complete as u32 >= self.unhealthy_after_failures => {
                let what = format!(
                    "{} {}{}",
                    run.run_id,
                    run.status.as_str(),
                    run.error
                        .as_deref()
                        .map(|error| format!(": {error}"))
                        .unwrap_or_default()
                );
                Some(match not_complete {
                    1 => format!("the last run {what}"),
                    runs => format!("the last {runs} runs are not complete; the latest is {what}"),
                })
            }
            (_, None) => Some("no complete run yet".to_string()),
            (_, Some(complete)) => {
                let allowed = self.schedule.interval() * 2;
                let age = (now - complete.finished_at).to_std().unwrap_or_default();
                (age > allowed).then(|| {
                    format!(
                        "the last complete run {} finished {}s ago, more than twice the schedule's interval ({}s)",
                        complete.run_id,
                        age.as_secs(),
                        allowed.as_secs() / 2
                    )
                })
            }
        };
        Health {
            healthy: reason.is_none(),
            reason,
        }
    }

    /// One line for systemd's STATUS, e.g.
    /// `corp: complete 12:00 (1 joiner, 0 movers, 0 leavers), next 12:30`, or
    /// `corp: failed 12:00 (cannot connect to /api/v3/core/users/me/ …), next Mon 2026-05-11 09:00`:
    /// why a run failed, in short, and the date of a next run that is not today.
    pub fn status_line(&self, name: &str, now: DateTime<Utc>) -> String {
        let time = |at: DateTime<Utc>| self.schedule.local_time(at, "%H:%M");
        let mut line = format!("{name}: ");
        match (self.running_since, self.history.last_run()) {
            (Some(since), _) => line.push_str(&format!("running since {}", time(since))),
            (None, None) => line.push_str("no run yet"),
            (None, Some(run)) => {
                line.push_str(&format!("{} {}", run.outcome(), time(run.finished_at)));
                if let Some(changes) = run.changes {
                    line.push_str(&format!(
                        " ({} joiner{}, {} mover{}, {} leaver{})",
                        changes.joiners,
                        plural(changes.joiners),
                        changes.movers,
                        plural(changes.movers),
                        changes.leavers,
                        plural(changes.leavers)
                    ));
                } else if let Some(error) =
                    run.error.as_ref().filter(|_| !run.cancelled_by_shutdown())
                {
                    line.push_str(&format!(" ({})", quote(error, STATUS_ERROR_CHARS)));
                }
            }
        }
        if let Some(next) = self.next_run {
            let day = |at: DateTime<Utc>| self.schedule.local_time(at, "%Y-%m-%d");
            let when = if day(next) == day(now) {
                time(next)
            } else {
                self.schedule.local_time(next, "%a %Y-%m-%d %H:%M")
            };
            line.push_str(&format!(", next {when}"));
        }
        line
    }
}

/// How much of a failed run's error systemd's STATUS line shows: the start says what failed.
const STATUS_ERROR_CHARS: usize = 60;

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub reason: Option<String>,
}

/// How the last loading of the configuration went: at start, or on SIGHUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigReload {
    /// When the configuration in force was loaded.
    pub last_success: DateTime<Utc>,
    /// Why the last reload was rejected, while the configuration before it runs.
    pub rejected: Option<String>,
}

/// The status of every configured source, and of the configuration, shared by the daemon's
/// tasks.
#[derive(Debug)]
pub struct StatusBoard {
    sources: RwLock<BTreeMap<String, SourceStatus>>,
    config: RwLock<ConfigReload>,
}

/// How much of a rejected reload's reason systemd's STATUS line carries; the log has it all.
const STATUS_REASON_CHARS: usize = 160;

impl StatusBoard {
    /// An empty board for a configuration loaded at `loaded_at`.
    pub fn new(loaded_at: DateTime<Utc>) -> StatusBoard {
        StatusBoard {
            sources: RwLock::default(),
            config: RwLock::new(ConfigReload {
                last_success: loaded_at,
                rejected: None,
            }),
        }
    }

    pub fn config_reload(&self) -> ConfigReload {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a reload: `Ok` with when it applied, or why it was rejected.
    pub fn record_reload(&self, outcome: Result<DateTime<Utc>, String>) {
        let mut config = self.config.write().unwrap_or_else(PoisonError::into_inner);
        match outcome {
            Ok(at) => {
                config.last_success = at;
                config.rejected = None;
            }
            Err(reason) => config.rejected = Some(reason),
        }
    }

    pub fn snapshot(&self) -> BTreeMap<String, SourceStatus> {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Changes one source's status, if the source is on the board.
    pub fn update(&self, source: &str, change: impl FnOnce(&mut SourceStatus)) {
        let mut sources = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(status) = sources.get_mut(source) {
            change(status);
        }
    }

    pub fn insert(&self, source: &str, status: SourceStatus) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(source.to_string(), status);
    }

    pub fn remove(&self, source: &str) {
        self.sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(source);
    }

    pub fn names(&self) -> Vec<String> {
        self.sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Reads the named sources' histories from the store again.
    pub fn refresh(&self, store: &Store, sources: &[String]) -> Result<(), StoreError> {
        for source in sources {
            let history = History::read(store, source)?;
            self.update(source, |status| status.history = history);
        }
        Ok(())
    }

    /// systemd's STATUS: a rejected reload first, then every source's line, joined.
    pub fn status_line(&self, now: DateTime<Utc>) -> String {
        let rejected = self.config_reload().rejected.map(|reason| {
            format!(
                "reload rejected: {}, running the previous configuration",
                quote(&reason, STATUS_REASON_CHARS)
            )
        });
        rejected
            .into_iter()
            .chain(
                self.sources
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .iter()
                    .map(|(name, status)| status.status_line(name, now)),
            )
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{ChangeCounts, Counts, RunOutcome};

    pub(crate) fn run(status: RunStatus, finished_at: &str) -> RunRecord {
        let finished_at = at(finished_at);
        let mut record = RunOutcome {
            source: "corp".into(),
            started_at: finished_at - chrono::Duration::seconds(3),
            finished_at,
            authentik_version: Some("2025.12.4".into()),
            settings_fingerprint: "f".into(),
            health: None,
            settings_changed: Vec::new(),
        }
        .into_record(
            "01JTEST0000000000000000000".into(),
            status,
            (status == RunStatus::Failed).then(|| "cannot reach <ak>".to_string()),
            Counts {
                accounts: 12,
                groups: 3,
                memberships: 20,
            },
            4,
        );
        if status == RunStatus::Complete {
            record.changes = Some(ChangeCounts {
                joiners: 1,
                ..ChangeCounts::default()
            });
        }
        record
    }

    pub(crate) fn status_with(runs: Vec<RunRecord>) -> SourceStatus {
        let history = History {
            last_complete: runs
                .iter()
                .find(|run| run.status == RunStatus::Complete)
                .cloned(),
            recent_runs: runs,
            outbox_backlog: 0,
        };
        SourceStatus::new(&crate::testing::source_config(), history)
    }

    pub(crate) fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn health_needs_a_recent_complete_last_run() {
        let never = status_with(Vec::new());
        assert_eq!(
            never.health(at("2026-05-04T12:00:00Z")).reason.as_deref(),
            Some("no run yet")
        );
        let complete = status_with(vec![run(RunStatus::Complete, "2026-05-04T12:00:05Z")]);
        assert!(complete.health(at("2026-05-04T12:10:00Z")).healthy);
        // The default schedule runs every 30 minutes: an hour is the limit.
        assert!(complete.health(at("2026-05-04T13:00:05Z")).healthy);
        let stale = complete.health(at("2026-05-04T13:00:06Z"));
        assert!(!stale.healthy);
        assert!(stale.reason.unwrap().contains("twice"));
        let failed = status_with(vec![
            run(RunStatus::Failed, "2026-05-04T12:30:05Z"),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
        ]);
        let health = failed.health(at("2026-05-04T12:31:00Z"));
        assert!(!health.healthy);
        assert!(health.reason.unwrap().contains("failed: cannot reach"));
    }

    #[test]
    fn a_run_cancelled_by_a_stop_is_no_failure_of_the_source() {
        let mut cancelled = run(RunStatus::Failed, "2026-05-04T12:30:05Z");
        cancelled.error = Some(crate::store::CANCELLED_BY_SHUTDOWN.into());
        let restarted = status_with(vec![
            cancelled.clone(),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
        ]);
        assert!(restarted.health(at("2026-05-04T12:31:00Z")).healthy);
        // Staleness still counts from the last complete run.
        assert!(!restarted.health(at("2026-05-04T13:00:06Z")).healthy);
        let never = status_with(vec![cancelled]);
        assert_eq!(
            never.health(at("2026-05-04T12:31:00Z")).reason.as_deref(),
            Some("no run yet")
        );
    }

    #[test]
    fn a_quarantined_run_awaiting_a_decision_is_unhealthy_at_once() {
        let mut held = run(RunStatus::Quarantined, "2026-05-04T12:30:05Z");
        held.quarantine = Some(crate::store::Quarantine {
            reasons: vec!["30 leavers, over max_leavers = 25".into()],
            decision: None,
        });
        let mut status = status_with(vec![
            held.clone(),
            run(RunStatus::Complete, "2026-05-04T12:00:05Z"),
        ]);
        status.unhealthy_after_failures = 3;
        let health = status.health(at("2026-05-04T12:31:00Z"));
        assert!(!health.healthy);
        let reason = health.reason.unwrap();
        assert!(
            reason.contains("is quarantined (30 leavers") && reason.contains("aksync approve"),
            "{reason}"
        );
    }

    #[test]
    fn a_source_may_fail_a_few_times_before_it_is_unhealthy() {
        let mut flaky = status_with(vec![
            run(RunStatus::Failed, "2026-05-04T12:40:05Z"),
            run(RunStatus::Failed, "2026-05-04T12:30:05Z"),
            run(RunStatus::Complete, "2026-05-04T12:20:05Z"),
        ]);
        let now = at("2026-05-04T12:41:00Z");
        assert!(!flaky.health(now).healthy);
        flaky.unhealthy_after_failures = 3;
        assert!(flaky.health(now).healthy);
        flaky.unhealthy_after_failures = 2;
        let reason = flaky.health(now).reason.unwrap();
        assert!(
            reason.starts_with("the last 2 runs are not complete; the latest is ")
                && reason.ends_with("failed: cannot reach <ak>"),
            "{reason}"
        );
        // Failures below the limit with no complete run at all are still unhealthy.
        let mut new = status_with(vec![run(RunStatus::Failed, "2026-05-04T12:40:05Z")]);
        new.unhealthy_after_failures = 3;
        assert_eq!(
            new.health(now).reason.as_deref(),
            Some("no complete run yet")
        );
    }

    #[test]
    fn the_status_line_says_what_happened_and_what_comes() {
        let now = at("2026-05-04T12:10:00Z");
        let mut status = status_with(vec![run(RunStatus::Complete, "2026-05-04T12:00:05Z")]);
        status.next_run = Some(at("2026-05-04T12:30:00Z"));
        assert_eq!(
            status.status_line("corp", now),
            "corp: complete 12:00 (1 joiner, 0 movers, 0 leavers), next 12:30"
        );
        status.running_since = Some(at("2026-05-04T12:30:00Z"));
        assert_eq!(
            status.status_line("corp", now),
            "corp: running since 12:30, next 12:30"
        );
        assert_eq!(
            status_with(Vec::new()).status_line("hr", now),
            "hr: no run yet"
        );
        // Why it failed, in short; and a next run that is not today comes with its date.
        let mut failed = status_with(vec![run(RunStatus::Failed, "2026-05-04T12:00:05Z")]);
        failed.history.recent_runs[0].error = Some(format!(
            "cannot connect to /api/v3/core/users/me/\n{}",
            "x".repeat(500)
        ));
        failed.next_run = Some(at("2026-05-11T09:00:00Z"));
        let line = failed.status_line("corp", now);
        assert!(
            line.starts_with("corp: failed 12:00 (cannot connect to /api/v3/core/users/me/ xxx")
                && line.ends_with("…), next Mon 2026-05-11 09:00"),
            "{line}"
        );
        assert!(line.len() < 150, "{line}");
    }

    #[test]
    fn a_rejected_reload_leads_the_status_line_until_a_reload_applies() {
        let board = StatusBoard::new(at("2026-05-04T12:00:00Z"));
        board.insert("hr", status_with(Vec::new()));
        assert_eq!(
            board.status_line(at("2026-05-04T12:00:00Z")),
            "hr: no run yet"
        );
        board.record_reload(Err(
            "config.toml: unknown key `sources.x.tokn_file`\nmore".into()
        ));
        assert_eq!(
            board.status_line(at("2026-05-04T12:00:00Z")),
            "reload rejected: config.toml: unknown key `sources.x.tokn_file` more, \
             running the previous configuration; hr: no run yet"
        );
        assert_eq!(
            board.config_reload().last_success,
            at("2026-05-04T12:00:00Z")
        );
        board.record_reload(Ok(at("2026-05-04T12:05:00Z")));
        assert_eq!(
            board.status_line(at("2026-05-04T12:00:00Z")),
            "hr: no run yet"
        );
        assert_eq!(
            board.config_reload(),
            ConfigReload {
                last_success: at("2026-05-04T12:05:00Z"),
                rejected: None
            }
        );
    }

    #[test]
    fn counted_runs_add_up_statuses_and_changes() {
        let mut status = status_with(Vec::new());
        let complete = run(RunStatus::Complete, "2026-05-04T12:00:05Z");
        status.count_run(&complete);
        status.count_run(&complete);
        status.count_run(&run(RunStatus::Failed, "2026-05-04T12:30:05Z"));
        assert_eq!(status.runs_by_status.get("complete"), Some(&2));
        assert_eq!(status.runs_by_status.get("failed"), Some(&1));
        assert_eq!(status.changes_found.joiners, 2);
        assert_eq!(status.changes_found.leavers, 0);
    }
}
