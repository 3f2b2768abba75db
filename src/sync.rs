//! One sync run of one source: fetch the whole directory, normalize it, verify that it is
//! complete and consistent, and store it as a run. Every fault ends as a failed run with its
//! error; a partial directory is never stored, and so never becomes leavers or envelopes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::artifacts::{change_counts, write_envelopes};
use crate::authentik::client::ProgressFn;
use crate::authentik::{AuthentikClient, ClientError, ListKind, RetryPolicy};
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::diff::DirectoryDiff;
use crate::envelope::envelope_path;
use crate::evidence::{self, RunSnapshot};
use crate::filter::RecordFilter;
use crate::health::{health_record, reason_code};
use crate::normalize::{normalize, NormalizeError, Snapshot};
use crate::store::{DeliveryState, RunOutcome, RunRecord, Store, StoreError};

/// How long a command waits for another process that holds the database.
pub const STORE_WAIT: Duration = Duration::from_secs(10);
/// The longest error a failed run records.
const MAX_ERROR_CHARS: usize = 2000;

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the directory changed during the run: {0}")]
    Normalize(#[from] NormalizeError),
    #[error("{0}")]
    Filter(String),
    #[error("the token's own user `{0}` is not in the users listing, so the token sees only part of the directory (object-level permissions): give its user a role with authentik_core.view_user and view_group")]
    PartialVisibility(String),
    #[error("the run did not finish within {}s: raise `sources.{source_name}.run_timeout_secs` if reading the directory takes that long, or check the server", limit.as_secs())]
    Deadline {
        source_name: String,
        limit: Duration,
    },
    #[error("cancelled by shutdown")]
    Cancelled,
}

impl FetchError {
    /// The error as the run records it: bounded, because it may quote what the server sent
    /// (a record's pk, a value serde could not read).
    fn message(&self) -> String {
        crate::display::truncate(&self.to_string(), MAX_ERROR_CHARS).into_owned()
    }

    /// What this failure says about the source's health, if anything: a listing that moved
    /// or a filter that failed says nothing about the connection.
    fn health(&self) -> Option<(&'static str, String)> {
        let code = match self {
            FetchError::Client(error) => reason_code(error),
            FetchError::PartialVisibility(_) => "partial_visibility",
            FetchError::Deadline { .. } => "timeout",
            FetchError::Normalize(_) | FetchError::Filter(_) | FetchError::Cancelled => {
                return None
            }
        };
        Some((code, self.message()))
    }

    /// A listing that shifted while it was read may be fine on a second read.
    fn is_inconsistency(&self) -> bool {
        matches!(
            self,
            FetchError::Client(ClientError::Inconsistent { .. }) | FetchError::Normalize(_)
        )
    }
}

struct Fetched {
    snapshot: Snapshot,
    authentik_version: String,
    token_user: String,
}

/// Runs one sync and records it. Only a failure to record the run is an error; everything
/// that goes wrong upstream becomes a failed run, and so does a fetch that `cancel` stops:
/// such a run stores nothing of the directory.
///
/// A complete run is compared with the source's previous complete run; its envelope file is
/// written before the run commits, so a committed run always has its outbox.
pub async fn sync_source(
    config: &Config,
    source: &SourceConfig,
    clock: &dyn Clock,
    progress: ProgressFn<'_>,
    cancel: &CancellationToken,
) -> Result<SyncedRun, StoreError> {
    let database = config.database_path();
    let started_at = clock.now();
    // Open once up front, so that a corrupt or locked database is reported before a long fetch.
    drop(Store::open(&database, STORE_WAIT)?);
    let fetched = tokio::select! {
        fetched = fetch_directory(source, progress) => fetched,
        () = cancel.cancelled() => Err(FetchError::Cancelled),
    };
    let store = Store::open(&database, STORE_WAIT)?;
    let mut outcome = RunOutcome {
        source: source.name.clone(),
        started_at,
        finished_at: clock.now(),
        authentik_version: None,
        settings_fingerprint: source.settings_fingerprint(),
    };
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(error) => {
            let message = error.message();
            tracing::warn!(source = %source.name, "sync failed: {}", crate::display::escape(&message));
            if let Some(problem) = error.health() {
                store.put_health(&health_record(&source.name, clock, Err(problem)))?;
            }
            let run = store.commit_failed(outcome, &message)?;
            return Ok(SyncedRun { run, diff: None });
        }
    };
    let seen = (
        fetched.authentik_version.clone(),
        fetched.token_user.clone(),
    );
    store.put_health(&health_record(&source.name, clock, Ok(seen)))?;
    outcome.authentik_version = Some(fetched.authentik_version);
    store_complete(config, source, &store, outcome, &fetched.snapshot)
}

/// Compares a complete snapshot with the previous run, writes its envelope file and commits
/// it. A run that cannot write its outbox is recorded as failed.
fn store_complete(
    config: &Config,
    source: &SourceConfig,
    store: &Store,
    outcome: RunOutcome,
    snapshot: &Snapshot,
) -> Result<SyncedRun, StoreError> {
    let runs_before = store.complete_runs(&source.name)?;
    let latest = runs_before.last().cloned();
    let (previous, baseline_reason) = compared_run(latest.clone(), &outcome.settings_fingerprint);
    let previous_snapshot = match &previous {
        Some(run) => store.snapshot(run)?,
        None => Snapshot::default(),
    };
    let mut diff = evidence::compare(
        store,
        &source.name,
        &source.ignore_fields,
        previous.as_ref().map(|run| RunSnapshot {
            run_id: &run.run_id,
            finished_at: run.finished_at,
            snapshot: &previous_snapshot,
        }),
        RunSnapshot {
            // The id is given at commit.
            run_id: "",
            finished_at: outcome.finished_at,
            snapshot,
        },
        &runs_before,
    )?;
    // The envelope file of a run that then fails to commit must not stay behind as the
    // outbox of a run that does not exist.
    let mut written_envelopes = None;
    let committed = store.commit_complete(
        outcome.clone(),
        snapshot,
        latest.as_ref().map(|run| run.run_id.as_str()),
        |record| {
            record.previous_run = previous.as_ref().map(|run| run.run_id.clone());
            record.baseline_reason = baseline_reason;
            written_envelopes = Some(envelope_path(
                &config.state_dir,
                &source.name,
                &record.run_id,
            ));
            let summary = write_envelopes(
                &config.state_dir,
                source,
                record,
                &previous_snapshot,
                snapshot,
            )
            .map_err(|error| error.to_string())?;
            if config.output.webhook.is_some() && summary.lines > 0 {
                record.delivery = Some(DeliveryState::pending());
            }
            record.envelopes = Some(summary);
            record.changes = Some(change_counts(&diff));
            Ok(())
        },
    );
    let run = match committed {
        Ok(run) => run,
        Err(error) => {
            if let Some(path) = written_envelopes {
                remove_orphan(&path);
            }
            let reason = match error {
                StoreError::Aborted(reason) => reason,
                // Another process's newer run is a reason to run again, not a failure.
                StoreError::Conflict { .. } => return Err(error),
                other => format!("the run could not be stored: {other}"),
            };
            tracing::warn!(source = %source.name, "run not stored: {reason}");
            // After an I/O error redb wants the database opened afresh. Recording the failure
            // may still fail for the same reason (a full disk); then that error is what the
            // caller sees.
            let run = Store::open(store.path(), STORE_WAIT)?.commit_failed(outcome, &reason)?;
            return Ok(SyncedRun { run, diff: None });
        }
    };
    diff.to_run = run.run_id.clone();
    Ok(SyncedRun {
        run,
        diff: Some(diff),
    })
}

fn remove_orphan(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(
            "cannot remove {} of a run that was not stored: {error}",
            path.display()
        ),
    }
}

/// The run a new run is compared with: the latest complete one, unless the settings that
/// shape the data changed since. Comparing across such a change would turn a narrower filter
/// into leavers and disabled group sync into deleted groups, so the new run starts a new
/// baseline instead, and says why.
fn compared_run(
    latest: Option<RunRecord>,
    fingerprint: &str,
) -> (Option<RunRecord>, Option<String>) {
    match latest {
        Some(run) if run.settings_fingerprint != fingerprint => {
            let reason = format!(
                "the settings that shape the data (filter, group sync, primary directory) changed since run {}, so this run starts a new baseline",
                run.run_id
            );
            (None, Some(reason))
        }
        latest => (latest, None),
    }
}

/// A stored run, and for a complete run its diff against the previous one.
pub struct SyncedRun {
    pub run: RunRecord,
    pub diff: Option<DirectoryDiff>,
}

/// The whole directory, within the source's run deadline whatever the server does.
async fn fetch_directory(
    source: &SourceConfig,
    progress: ProgressFn<'_>,
) -> Result<Fetched, FetchError> {
    let fetch = async {
        let client = AuthentikClient::new(source, RetryPolicy::default())?;
        match fetch_once(source, &client, progress).await {
            Err(error) if error.is_inconsistency() => {
                // A live directory changes; one more read is the normal remedy.
                tracing::info!(
                    source = %source.name,
                    "re-reading the directory once: {}",
                    crate::display::escape(&error.to_string())
                );
                fetch_once(source, &client, progress).await
            }
            result => result,
        }
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
    source: &SourceConfig,
    client: &AuthentikClient,
    progress: ProgressFn<'_>,
) -> Result<Fetched, FetchError> {
    let me = client.me().await?;
    let version = client.version().await?;
    let users = client.list_all(ListKind::Users, progress).await?;
    let groups = if source.disable_group_sync {
        None
    } else {
        Some(client.list_all(ListKind::Groups, progress).await?.records)
    };
    // A complete listing contains the token's own user; object-level visibility rarely does.
    let sees_itself = users
        .records
        .iter()
        .any(|user| user.get("pk").and_then(serde_json::Value::as_i64) == Some(me.user.pk));
    if !sees_itself {
        return Err(FetchError::PartialVisibility(me.user.username));
    }
    let mut snapshot = normalize(users.records, groups, source.primary_directory)?;
    if let Some(expression) = &source.filter {
        RecordFilter::compile(expression)
            .and_then(|filter| filter.apply(&mut snapshot))
            .map_err(FetchError::Filter)?;
    }
    Ok(Fetched {
        snapshot,
        authentik_version: version.version_current,
        token_user: me.user.username,
    })
}
