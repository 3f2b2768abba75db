//! One sync run of one source, as one pass over the data: fetch → normalize → filter → spool
//! ([`crate::run::collect`]) → plan against the stored state ([`crate::run::plan`]: store writes,
//! envelopes and the diff from one classification) → confirm the run's deletions with
//! Authentik ([`crate::run::confirm`]) → commit. The plan and the commit are blocking store
//! work; the confirmation between them is HTTP, so the planned run waits for it with its
//! spooled writes and envelope file (`PlannedRun`).
//!
//! Every fault ends as a failed run with its error; a partial directory is never stored, and
//! so never becomes leavers or envelopes. A stop (the cancellation token) reaches every step:
//! the fetch, the plan (at every record), the confirmation and the commit (while it waits for
//! the database and between its writes, before the transaction commits); the run is then
//! recorded as failed, "cancelled by shutdown", and its envelope file is removed. The run
//! records the source's latest complete run when it starts and commits only if that is still
//! the latest, so two runs of one source can never commit history backwards.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::authentik::client::check_count;
use crate::authentik::client::ProgressFn;
use crate::authentik::health::{health_record, reason_code};
use crate::authentik::{AuthentikClient, ClientError, ListKind, RetryPolicy};
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::diff::{diff, AccountRules, DirectoryDiff, RunRef};
use crate::ledger::entry::{RunSettings, SettingsBetween};
use crate::ledger::lthash::{LtHash, Tracked};
use crate::ledger::seal::SigningKey;
use crate::ledger::{self, Body, Pending};
use crate::output::envelope::{envelope_path, EnvelopeContext, EnvelopeWriter};
use crate::run::collect::{CollectError, Collected, Collector};
use crate::run::confirm::{self, ConfirmError, Deletion};
use crate::run::plan::{plan_sync, PlanError, Planned, Planner, Sinks};
use crate::run::quarantine;
use crate::run::record::{ChangeRule, RecordKind};
use crate::store::ops::OpWriter;
use crate::store::{
    ChangeCounts, CommitPlan, Counts, DeliveryState, KeptState, Quarantine, RunOutcome, RunRecord,
    RunStatus, Store, StoreError, TokenUser, CANCELLED_BY_SHUTDOWN,
};

/// How long a command waits for another process that holds the database.
pub const STORE_WAIT: Duration = Duration::from_secs(10);
/// The longest error a failed run records.
const MAX_ERROR_CHARS: usize = 2000;

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Collect(CollectError),
    #[error("{0}")]
    Filter(String),
    #[error(transparent)]
    Spool(std::io::Error),
    #[error("the token's own user `{0}` is not in the users listing, so the token sees only part of the directory (object-level permissions): give its user a role with authentik_core.view_user and view_group")]
    PartialVisibility(String),
    #[error("the run did not finish within {}s: raise `sources.{source_name}.run_timeout_secs` if reading the directory takes that long, or check the server", limit.as_secs())]
    Deadline {
        source_name: String,
        limit: Duration,
    },
    #[error("{CANCELLED_BY_SHUTDOWN}")]
    Cancelled,
}

impl From<CollectError> for FetchError {
    fn from(error: CollectError) -> FetchError {
        match error {
            CollectError::Filter(reason) => FetchError::Filter(reason),
            CollectError::Io(error) => FetchError::Spool(error),
            other => FetchError::Collect(other),
        }
    }
}

impl FetchError {
    /// What this failure says about the source's health, if anything: a listing that moved
    /// or a filter that failed says nothing about the connection.
    fn health(&self) -> Option<(&'static str, String)> {
        let code = match self {
            FetchError::Client(error) => reason_code(error),
            FetchError::PartialVisibility(_) => "partial_visibility",
            FetchError::Deadline { .. } => "timeout",
            FetchError::Collect(_)
            | FetchError::Filter(_)
            | FetchError::Spool(_)
            | FetchError::Cancelled => return None,
        };
        Some((code, bounded_error(&self.to_string())))
    }

    /// A listing that shifted while it was read may be fine on a second read.
    fn is_inconsistency(&self) -> bool {
        match self {
            FetchError::Client(ClientError::Inconsistent { .. }) => true,
            FetchError::Collect(error) => error.is_inconsistency(),
            _ => false,
        }
    }
}

/// The directory as one read of its listings found it.
struct Listed {
    collected: Collected,
    authentik_version: String,
    token_user: TokenUser,
}

/// A complete read, with the client that made it: it confirms the run's deletions later.
struct Fetched {
    client: AuthentikClient,
    listed: Listed,
}

/// The run id a dry run's envelopes and diff carry: no run of that id is ever stored.
pub const DRY_RUN_ID: &str = "dry-run";

/// What a sync would do, computed without writing anything (`aksync sync --dry-run`).
pub struct Preview {
    pub diff: DirectoryDiff,
    /// The thresholds the run would go over: it would be quarantined.
    pub quarantine: Vec<String>,
    /// The envelopes it would emit, in a temporary file that goes with the preview.
    pub envelopes: crate::output::envelope::EnvelopeFile,
    _dir: tempfile::TempDir,
}

/// Fetches the directory and plans it against the latest complete run of `store` (opened
/// for reading), as a sync would, but stores nothing: no run, no ledger entry, no file in
/// the state directory.
pub async fn preview_source(
    config: &Config,
    source: &SourceConfig,
    store: Arc<Store>,
    clock: &dyn Clock,
    progress: ProgressFn<'_>,
) -> Result<Preview, String> {
    let started_at = clock.now();
    let latest = store
        .latest_complete(&source.name)
        .map_err(|error| error.to_string())?;
    let listed = fetch_directory(&config.state_dir, source, progress)
        .await
        .map_err(|error| bounded_error(&error.to_string()))?
        .listed;
    let job = CompleteRun {
        state_dir: config.state_dir.clone(),
        source: source.clone(),
        webhook: false,
        signer: None,
        outcome: RunOutcome {
            source: source.name.clone(),
            started_at,
            finished_at: clock.now(),
            authentik_version: Some(listed.authentik_version),
            settings_fingerprint: source.settings_fingerprint(),
            health: None,
            settings_changed: Vec::new(),
        },
        latest,
        collected: listed.collected,
        token_user: Some(listed.token_user),
        cancel: CancellationToken::new(),
    };
    tokio::task::spawn_blocking(move || job.preview(&store))
        .await
        .map_err(|join| format!("the dry run's planning task failed: {join}"))?
}

/// A stored run, and for a complete run its diff against the previous one.
pub struct SyncedRun {
    pub run: RunRecord,
    pub diff: Option<DirectoryDiff>,
}

/// Runs one sync and records it. Only a failure to record the run is an error; everything
/// that goes wrong upstream becomes a failed run, and so does a run that `cancel` stops
/// before its commit has committed: such a run stores nothing of the directory.
pub async fn sync_source(
    config: &Config,
    source: &SourceConfig,
    store: &Arc<Store>,
    clock: &dyn Clock,
    progress: ProgressFn<'_>,
    cancel: &CancellationToken,
) -> Result<SyncedRun, StoreError> {
    let started_at = clock.now();
    let state = blocking(store, {
        let (source, signer) = (source.clone(), signer(config));
        let state_dir = config.state_dir.clone();
        move |store| {
            // Runs from before the ledger get their entries before this run appends its own.
            ledger::backfill::backfill(store, &source, signer.as_ref(), started_at)?;
            // A run killed before its commit left its envelope file behind: not a run's.
            crate::output::repair::remove_unstored_envelopes(&state_dir, store, &source.name);
            store.source_state(&source.name)
        }
    })
    .await?;
    let fetch_started = std::time::Instant::now();
    let fetched = tokio::select! {
        fetched = fetch_directory(&config.state_dir, source, progress) => fetched,
        () = cancel.cancelled() => Err(FetchError::Cancelled),
    };
    tracing::debug!(source = %source.name, seconds = fetch_started.elapsed().as_secs_f64(), "fetched");
    let outcome = RunOutcome {
        source: source.name.clone(),
        started_at,
        finished_at: clock.now(),
        authentik_version: None,
        settings_fingerprint: source.settings_fingerprint(),
        health: None,
        settings_changed: Vec::new(),
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            let message = bounded_error(&error.to_string());
            let outcome = RunOutcome {
                health: error
                    .health()
                    .map(|problem| health_record(&source.name, clock, Err(problem))),
                ..outcome
            };
            return record_failed(store, source, signer(config), outcome, message).await;
        }
    };
    let health = health_record(
        &source.name,
        clock,
        Ok((
            fetched.listed.authentik_version.clone(),
            fetched.listed.token_user.username.clone(),
        )),
    );
    // Stored with the run, in its one transaction (or with the failed run that records why
    // it was not stored).
    let outcome = RunOutcome {
        authentik_version: Some(fetched.listed.authentik_version.clone()),
        health: Some(health),
        ..outcome
    };
    let Fetched { client, listed } = fetched;
    let job = CompleteRun {
        state_dir: config.state_dir.clone(),
        source: source.clone(),
        webhook: config.output.webhook.is_some(),
        signer: signer(config),
        outcome,
        latest: state.latest_complete,
        collected: listed.collected,
        token_user: Some(listed.token_user),
        cancel: cancel.clone(),
    };
    let planned = match blocking(store, move |store| job.plan(store)).await {
        Ok(planned) => planned,
        Err(rejected) => return record_rejected(config, source, store, rejected).await,
    };
    // The run's deletions are known only now, from its plan: each is confirmed with
    // Authentik before the run may report it.
    // Within the run's deadline, which the fetch began: the server sets the pace.
    let remaining = source.run_timeout.saturating_sub(fetch_started.elapsed());
    let confirming = tokio::time::timeout(
        remaining,
        confirm::confirm(&client, planned.deletions(), source.concurrency),
    );
    let confirmed = tokio::select! {
        confirmed = confirming => confirmed.unwrap_or_else(|_| Err(ConfirmError::Deadline {
            source_name: source.name.clone(),
            limit: source.run_timeout,
        })),
        () = cancel.cancelled() => Err(ConfirmError::Cancelled),
    };
    if let Err(error) = confirmed {
        let rejected = planned.fail(error.to_string());
        return record_rejected(config, source, store, rejected).await;
    }
    match blocking(store, move |store| planned.commit(store)).await {
        Ok(synced) => Ok(synced),
        Err(rejected) => record_rejected(config, source, store, rejected).await,
    }
}

/// Records a run that was not stored as complete as failed, with why; only a failure to
/// record anything is an error.
async fn record_rejected(
    config: &Config,
    source: &SourceConfig,
    store: &Arc<Store>,
    rejected: Rejected,
) -> Result<SyncedRun, StoreError> {
    match rejected {
        Rejected::Store(error) => Err(error),
        Rejected::Failed(outcome, reason) => {
            let reason = bounded_error(&reason);
            record_failed(store, source, signer(config), *outcome, reason).await
        }
    }
}

/// The key that signs the ledger's entries, if one is configured.
fn signer(config: &Config) -> Option<Arc<SigningKey>> {
    config.ledger.signing_key.clone()
}

/// Records a run of `source` that failed before it could fetch anything (its lock could not
/// be taken, say) as failed with `reason`.
pub async fn record_unstarted(
    config: &Config,
    store: &Arc<Store>,
    source: &SourceConfig,
    clock: &dyn Clock,
    reason: &str,
) -> Result<SyncedRun, StoreError> {
    let now = clock.now();
    let outcome = RunOutcome {
        source: source.name.clone(),
        started_at: now,
        finished_at: now,
        authentik_version: None,
        settings_fingerprint: source.settings_fingerprint(),
        health: None,
        settings_changed: Vec::new(),
    };
    record_failed(
        store,
        source,
        signer(config),
        outcome,
        bounded_error(reason),
    )
    .await
}

/// The error as a failed run records it: bounded, because it may quote what the server sent
/// (a record's pk, a value serde could not read).
fn bounded_error(message: &str) -> String {
    crate::display::truncate(message, MAX_ERROR_CHARS).into_owned()
}

/// Records a failed run, and its ledger entry, in one commit.
async fn record_failed(
    store: &Arc<Store>,
    source: &SourceConfig,
    signer: Option<Arc<SigningKey>>,
    outcome: RunOutcome,
    error: String,
) -> Result<SyncedRun, StoreError> {
    let source = source.clone();
    let run = blocking(store, move |store| {
        let commit =
            |store: &Store| commit_failed_run(store, &source, signer.as_deref(), &outcome, &error);
        commit(store).or_else(|first| {
            // After an I/O error (a full disk) redb wants the database opened afresh. If that
            // fails too, the first error is what the caller sees.
            Store::open(store.path(), STORE_WAIT)
                .and_then(|fresh| commit(&fresh))
                .map_err(|_| first)
        })
    })
    .await?;
    Ok(SyncedRun { run, diff: None })
}

/// Stores a failed run with its ledger entry.
pub(crate) fn commit_failed_run(
    store: &Store,
    source: &SourceConfig,
    signer: Option<&SigningKey>,
    outcome: &RunOutcome,
    error: &str,
) -> Result<RunRecord, StoreError> {
    let reader = store.reader()?;
    let previous_settings =
        ledger::read::last_run_settings(&reader, &source.name).map_err(StoreError::from)?;
    drop(reader);
    // The store gives the run its id in the commit; the entry takes it from there.
    let context = ledger::run::RunContext {
        settings: RunSettings::of(source),
        previous_settings: previous_settings.as_ref(),
    };
    let outcome = RunOutcome {
        settings_changed: context.changed_keys(),
        ..outcome.clone()
    };
    let placeholder = outcome.clone().into_record(
        String::new(),
        RunStatus::Failed,
        Some(error.to_string()),
        Counts::default(),
        0,
    );
    let evidence = context.failed(&placeholder);
    let finished_at = outcome.finished_at;
    let mut pending = Pending::new(
        &source.name,
        finished_at,
        Body::Run(Box::new(evidence)),
        signer,
    );
    store.commit_failed(outcome, error, &mut pending)
}

/// Runs blocking store work off the async executor.
async fn blocking<T, E>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .unwrap_or_else(|join| {
            Err(E::from(StoreError::Aborted(format!(
                "the run's storage task failed: {join}"
            ))))
        })
}

/// Why a complete fetch was not stored as a complete run.
pub(crate) enum Rejected {
    /// Recording anything failed.
    Store(StoreError),
    /// The run is recorded as failed with this reason.
    Failed(Box<RunOutcome>, String),
}

impl From<StoreError> for Rejected {
    fn from(error: StoreError) -> Rejected {
        Rejected::Store(error)
    }
}

/// A complete fetch on its way into the store.
pub(crate) struct CompleteRun {
    pub state_dir: std::path::PathBuf,
    pub source: SourceConfig,
    pub webhook: bool,
    /// Signs the run's ledger entry.
    pub signer: Option<Arc<SigningKey>>,
    pub outcome: RunOutcome,
    /// The source's latest complete run when the run started.
    pub latest: Option<RunRecord>,
    pub collected: Collected,
    /// Whom the token belongs to, recorded with the run.
    pub token_user: Option<TokenUser>,
    /// Stops the plan and the commit: the run is then recorded as failed and stores nothing.
    pub cancel: CancellationToken,
}

impl CompleteRun {
    /// Plans against the latest complete run: the store writes and the envelope file are
    /// spooled, and the diff is known, but nothing is stored yet. A plan that fails or is
    /// cancelled is recorded as a failed run.
    pub(crate) fn plan(self, store: &Store) -> Result<PlannedRun, Rejected> {
        let source = &self.source;
        let run_id = store.new_run_id(&source.name, self.outcome.started_at)?;
        let plan_started = std::time::Instant::now();
        let reader = store.reader()?;
        let previous_settings = ledger::read::last_run_settings(&reader, &source.name)
            .map_err(|error| Rejected::Store(StoreError::from(error)))?;
        // A source's first run is its only baseline: a settings change is a ledger event and a
        // scope change, never a reason to stop comparing.
        let unwritable = |error| self.fail(PlanError::Io(error).to_string());
        let sinks = Sinks {
            ops: Some(OpWriter::new(&self.state_dir).map_err(unwritable)?),
            envelopes: Some(
                EnvelopeWriter::create(&envelope_path(&self.state_dir, &source.name, &run_id))
                    .map_err(unwritable)?,
            ),
        };
        let planned = self
            .plan_records(
                &reader,
                &run_id,
                self.latest.as_ref(),
                previous_settings.as_ref(),
                sinks,
            )
            .map_err(|error| match error {
                PlanError::Store(StoreError::Cancelled) => self.fail(CANCELLED_BY_SHUTDOWN.into()),
                PlanError::Store(error) => Rejected::Store(error),
                other => self.fail(other.to_string()),
            })?;
        drop(reader);
        tracing::debug!(source = %source.name, seconds = plan_started.elapsed().as_secs_f64(), "planned");
        let diff = diff(&planned.input);
        let deletions = Deletion::of(&diff, &planned.deleted_account_pks);
        Ok(PlannedRun {
            job: self,
            run_id,
            planned,
            diff,
            deletions,
            previous_settings,
        })
    }

    /// The run recorded as failed with `reason` instead of being stored.
    fn fail(&self, reason: String) -> Rejected {
        Rejected::Failed(Box::new(self.outcome.clone()), reason)
    }

    /// Why the run is held for an admin's decision: too many leavers, removals or
    /// deletions at once must not become mass offboarding evidence on their own.
    fn held_because(&self, diff: &DirectoryDiff, deletions: u64) -> Vec<String> {
        quarantine::reasons(
            quarantine::Found::of(
                diff,
                self.collected.accounts.items().len() as u64,
                deletions,
            ),
            self.latest
                .as_ref()
                .map(|run| (run.run_id.as_str(), &run.counts)),
            &self.source.quarantine,
        )
    }

    /// What the run would store and emit, planned against the latest complete run without
    /// writing anything: the envelopes go to a temporary file outside the state directory,
    /// and deletions are not looked up.
    pub(crate) fn preview(self, store: &Store) -> Result<Preview, String> {
        let reader = store.reader().map_err(|error| error.to_string())?;
        let previous_settings = ledger::read::last_run_settings(&reader, &self.source.name)
            .map_err(|error| error.to_string())?;
        let dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let unwritable = |error| PlanError::Io(error).to_string();
        let sinks = Sinks {
            ops: None,
            envelopes: Some(
                EnvelopeWriter::create(&dir.path().join("dry-run.jsonl")).map_err(unwritable)?,
            ),
        };
        let planned = self
            .plan_records(
                &reader,
                DRY_RUN_ID,
                self.latest.as_ref(),
                previous_settings.as_ref(),
                sinks,
            )
            .map_err(|error| error.to_string())?;
        let diff = diff(&planned.input);
        let deletions = Deletion::of(&diff, &planned.deleted_account_pks).len() as u64;
        Ok(Preview {
            quarantine: self.held_because(&diff, deletions),
            diff,
            envelopes: planned.envelopes.expect("a preview writes envelopes"),
            _dir: dir,
        })
    }

    fn plan_records(
        &self,
        reader: &crate::store::Reader<'_>,
        run_id: &str,
        previous: Option<&RunRecord>,
        previous_settings: Option<&RunSettings>,
        sinks: Sinks,
    ) -> Result<Planned, PlanError> {
        let source = &self.source;
        let between = SettingsBetween::of(previous_settings, source);
        let context = EnvelopeContext {
            source: &source.name,
            run_id,
            observed_at: self.outcome.finished_at,
            primary_directory: source.primary_directory,
        };
        let mut planner = Planner::new(
            ChangeRule::new(&source.ignore_fields),
            between.step(),
            AccountRules::of(source),
            context,
            previous.map(|run| RunRef {
                run_id: run.run_id.clone(),
                started_at: run.started_at,
                finished_at: run.finished_at,
            }),
            RunRef {
                run_id: run_id.to_string(),
                started_at: self.outcome.started_at,
                finished_at: self.outcome.finished_at,
            },
            None,
            sinks,
        );
        // A baseline compares with nothing: its snapshot digest starts from the empty set.
        let loading = std::time::Instant::now();
        let mut snapshot = Tracked::new(match planner.is_baseline() {
            true => LtHash::default(),
            false => stored_snapshot(reader, &source.name)?,
        });
        snapshot.spent = loading.elapsed();
        planner.track_snapshot(snapshot);
        plan_sync(reader, &source.name, &self.collected, &mut planner, &|| {
            self.cancel.is_cancelled()
        })?;
        let mut planned = planner.finish()?;
        // Accounts purged now left in an earlier run: its ledger entry says when.
        for uid in planned.input.history_needed(true) {
            let departure = ledger::read::last_departure(reader, &source.name, &uid)
                .map_err(|error| PlanError::Store(StoreError::from(error)))?;
            if let Some(departure) = departure {
                planned.input.last_active.insert(uid, departure);
            }
        }
        Ok(planned)
    }
}

/// A planned run between its plan and its commit, while its deletions are confirmed with
/// Authentik: its spooled store writes and envelope file wait here, and go if it is dropped.
pub(crate) struct PlannedRun {
    job: CompleteRun,
    run_id: String,
    planned: Planned,
    diff: DirectoryDiff,
    deletions: Vec<Deletion>,
    previous_settings: Option<RunSettings>,
}

impl PlannedRun {
    /// What the run would report deleted, to be confirmed before it commits.
    pub(crate) fn deletions(&self) -> &[Deletion] {
        &self.deletions
    }

    /// The run recorded as failed with `reason` instead of being stored.
    pub(crate) fn fail(&self, reason: String) -> Rejected {
        self.job.fail(reason)
    }

    /// Judges the run against the quarantine thresholds, writes the envelope file into place
    /// and commits the run with its ledger entry. A run that cannot write its outbox, or that
    /// another run overtook, is recorded as failed.
    pub(crate) fn commit(self, store: &Store) -> Result<SyncedRun, Rejected> {
        let PlannedRun {
            job,
            run_id,
            planned,
            diff,
            deletions,
            previous_settings,
        } = self;
        let source = &job.source;
        let fail = |reason: String| job.fail(reason);
        let cancelled = || job.cancel.is_cancelled();
        let previous = job.latest.as_ref();
        let ops = planned.ops.expect("a sync plans store writes");
        let envelopes = planned.envelopes.expect("a sync writes envelopes");
        let mut snapshot = planned.snapshot.expect("a sync tracks its snapshot digest");
        let finishing = std::time::Instant::now();
        let (snapshot_digest, snapshot_state) = (snapshot.state.hex(), snapshot.state.to_bytes());
        snapshot.spent += finishing.elapsed();
        tracing::debug!(source = %source.name, seconds = snapshot.spent.as_secs_f64(), "snapshot digest");
        // The run's counts are of its scope; what the filters left out is counted beside.
        let scope = job.collected.scope;
        let counts = Counts {
            accounts: job.collected.accounts.items().len() as u64 - scope.accounts_out_of_scope,
            groups: job.collected.groups.items().len() as u64 - scope.groups_out_of_scope,
            memberships: job.collected.memberships.len() as u64 - scope.memberships_out_of_scope,
        };
        let held = job.held_because(&diff, deletions.len() as u64);
        let status = match held.is_empty() {
            true => RunStatus::Complete,
            false => RunStatus::Quarantined,
        };
        let mut record =
            job.outcome
                .clone()
                .into_record(run_id, status, None, counts, ops.counts().versions);
        record.quarantine = (!held.is_empty()).then_some(Quarantine {
            reasons: held,
            decision: None,
        });
        record.previous_run = previous.map(|run| run.run_id.clone());
        record.scope = (source.filter.is_some() || source.group_filter.is_some()).then_some(scope);
        record.token_user = job.token_user.clone();
        record.changes = Some(change_counts(&diff));
        if job.webhook && envelopes.summary.lines > 0 && status == RunStatus::Complete {
            record.delivery = Some(DeliveryState::pending());
        }
        record.envelopes = Some(envelopes.summary.clone());
        let census = ledger::run::census_of(&job.collected, &AccountRules::of(source))
            .map_err(|error| fail(format!("cannot read the run's spooled records: {error}")))?;
        // Read afresh: the plan's read transaction was not held while the deletions were
        // confirmed, and the commit fails if another run committed meanwhile.
        let reader = store.reader()?;
        let previous_privileged = ledger::read::privileged_now(&reader, &source.name)
            .map_err(|error| Rejected::Store(StoreError::from(error)))?;
        drop(reader);
        let context = ledger::run::RunContext {
            settings: RunSettings::of(source),
            previous_settings: previous_settings.as_ref(),
        };
        record.settings_changed = context.changed_keys();
        let ledger::run::CompleteEntry {
            evidence,
            index,
            privileged_now,
        } = context.complete(
            &record,
            &planned.input,
            diff.clone(),
            census,
            &job.collected,
            previous_privileged.as_ref(),
            snapshot_digest,
        );
        let mut pending = Pending {
            source: &source.name,
            recorded_at: job.outcome.finished_at,
            body: Body::Run(Box::new(evidence)),
            signer: job.signer.as_deref(),
            index,
            source_state: vec![(KeptState::SnapshotDigest, snapshot_state)],
            privileged_after: privileged_now,
        };
        if cancelled() {
            return Err(fail(CANCELLED_BY_SHUTDOWN.into()));
        }
        // The outbox exists before the run does; it goes again if the run is not stored.
        let path = envelopes
            .persist()
            .map_err(|error| fail(format!("cannot write the envelope file: {error}")))?;
        let commit_started = std::time::Instant::now();
        let committed = store.commit_complete(CommitPlan {
            record,
            expected_latest: previous.map(|run| run.run_id.clone()),
            reset: previous.is_none(),
            ops,
            health: job.outcome.health.clone(),
            ledger: &mut pending,
            cancelled: &cancelled,
        });
        tracing::debug!(source = %source.name, seconds = commit_started.elapsed().as_secs_f64(), "committed");
        match committed {
            Ok(run) => Ok(SyncedRun {
                run,
                diff: Some(diff),
            }),
            Err(error) => {
                remove_orphan(&path);
                match error {
                    StoreError::Conflict { .. } | StoreError::Cancelled => {
                        Err(fail(error.to_string()))
                    }
                    other => Err(fail(format!("the run could not be stored: {other}"))),
                }
            }
        }
    }
}

/// The snapshot digest of the source's latest complete run: as its entry's commit left it,
/// or, in a database from before the ledger, counted from its current records once.
fn stored_snapshot(reader: &crate::store::Reader<'_>, source: &str) -> Result<LtHash, PlanError> {
    if let Some(bytes) = reader.source_state(source, KeptState::SnapshotDigest)? {
        return LtHash::from_bytes(&bytes).ok_or_else(|| {
            PlanError::Record("the stored snapshot digest does not read back".into())
        });
    }
    let mut state = LtHash::default();
    for kind in RecordKind::ALL {
        for row in reader.current(source, kind)? {
            let (external_id, row) = row?;
            state.add(kind, &external_id, &row.hash);
        }
    }
    Ok(state)
}

fn remove_orphan(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            "cannot remove {} of a run that was not stored: {error}",
            crate::display::escape(&path.display().to_string())
        ),
    }
}

pub fn change_counts(diff: &DirectoryDiff) -> ChangeCounts {
    ChangeCounts {
        joiners: diff.joiners.len() as u64,
        movers: diff.movers.len() as u64,
        leavers: diff.leavers.len() as u64,
        purged: diff.purged.len() as u64,
        escalations: diff.escalations() as u64,
        groups_changed: (diff.groups.created.len()
            + diff.groups.deleted.len()
            + diff.groups.changed.len()) as u64,
        memberships_changed: (diff.memberships.added.len() + diff.memberships.removed.len()) as u64,
    }
}

/// The whole directory, within the source's run deadline whatever the server does.
async fn fetch_directory(
    state_dir: &Path,
    source: &SourceConfig,
    progress: ProgressFn<'_>,
) -> Result<Fetched, FetchError> {
    let fetch = async {
        let client = AuthentikClient::new(source, RetryPolicy::default())?;
        let listed = match fetch_once(state_dir, source, &client, progress).await {
            Err(error) if error.is_inconsistency() => {
                // A live directory changes; one more read is the normal remedy.
                tracing::info!(
                    source = %source.name,
                    "re-reading the directory once: {}",
                    crate::display::escape(&error.to_string())
                );
                fetch_once(state_dir, source, &client, progress).await
            }
            result => result,
        }?;
        Ok(Fetched { client, listed })
    };
    tokio::time::timeout(source.run_timeout, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::Deadline {
                source_name: source.name.clone(),
                limit: source.run_timeout,
            })
        })
}

async fn fetch_once(
    state_dir: &Path,
    source: &SourceConfig,
    client: &AuthentikClient,
    progress: ProgressFn<'_>,
) -> Result<Listed, FetchError> {
    crate::config::state_dir::create_private_dir(state_dir).map_err(FetchError::Spool)?;
    let mut collector = Collector::new(state_dir, source)?;
    let kinds: &[ListKind] = if source.disable_group_sync {
        &[ListKind::Users]
    } else {
        &[ListKind::Users, ListKind::Groups]
    };
    // The pages are normalized and spooled on another thread as they arrive, while the next
    // ones are on the way; everything is fetched through the client's one pool of requests,
    // both listings at once.
    let (pages, mut arriving) = tokio::sync::mpsc::channel(source.concurrency);
    let collecting = tokio::task::spawn_blocking(move || {
        while let Some(page) = arriving.blocking_recv() {
            collector.add_page(page)?;
        }
        Ok::<_, CollectError>(collector)
    });
    let listings = async {
        let counts = client.fetch_listings(kinds, &pages, progress).await;
        drop(pages);
        counts
    };
    let (me, version, counts) = tokio::join!(client.me(), client.version(), listings);
    let collector = collecting
        .await
        .map_err(|error| FetchError::Spool(std::io::Error::other(error)))??;
    let (me, version, counts) = (me?, version?, counts?);
    for (kind, count) in counts {
        check_count(kind, collector.distinct(kind), count)?;
    }
    // A complete listing contains the token's own user; object-level visibility rarely does.
    if !collector.has_user(me.user.pk) {
        return Err(FetchError::PartialVisibility(me.user.username));
    }
    Ok(Listed {
        collected: collector.finish()?,
        authentik_version: version.version_current,
        token_user: TokenUser {
            username: me.user.username,
            pk: me.user.pk,
        },
    })
}
