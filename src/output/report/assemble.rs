//! A [`Report`] of a period, read from the evidence ledger: each run's events, settings and
//! population as its entry recorded them, so that a report built a month later is the same
//! report, apart from when it was generated. It costs the runs of the period and their
//! events: runs are found through the per-source run index, never by listing every run.
//!
//! A run without an entry (a database not yet upgraded, read by a newer binary) is replayed
//! from its stored snapshot with the settings configured now, and the report says so.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};

use super::{
    EvidenceInfo, OldestEvidence, Period, PeriodRun, Producer, Report, ReportHeader,
    ReportSettings, SettingsChanged, Snapshot, TrendPoint,
};
use crate::authentik::ListKind;
use crate::config::SourceConfig;
use crate::ledger::entry::RunSettings;
use crate::ledger::{self, RunEvidence};
use crate::store::{Reader, RunRecord, RunStatus, Store, StoreError};

/// How many recent runs a one-run report's chart shows.
const TREND_RUNS: usize = 30;
/// How many complete runs a period report's chart shows at most.
const TREND_MAX: usize = 100;
/// The longest a run can take (`run_timeout_secs` allows a week): a run that finished in a
/// period started at most this long before it.
const LONGEST_RUN: Duration = Duration::days(8);

/// Which runs a report covers.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One run: the runs after the latest complete run before it, up to it (so the failed
    /// attempts in between show), with its own diff.
    Run(Box<RunRecord>),
    /// Every run after `from` (whose own changes are not included) up to `to`.
    After {
        from: Box<RunRecord>,
        to: Box<RunRecord>,
    },
    /// Every run that finished after `since`, up to and including `until`.
    Between {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

/// A run of the period with its evidence.
struct RunView {
    record: RunRecord,
    evidence: RunEvidence,
    /// The entry's digest and signer, when the ledger has the entry.
    digest: Option<String>,
    signed_by: Option<String>,
}

impl RunView {
    fn stored(&self) -> bool {
        self.digest.is_some()
    }
}

/// A run's evidence: its entry, or a replay with today's settings when it has none.
fn view_of(
    store: &Store,
    reader: &Reader<'_>,
    source: &SourceConfig,
    record: RunRecord,
) -> Result<RunView, StoreError> {
    if let Some(sealed) = ledger::read::run_evidence(reader, &source.name, &record.run_id)
        .map_err(StoreError::from)?
    {
        return Ok(RunView {
            record,
            evidence: sealed.evidence,
            digest: Some(sealed.seal.hex()),
            signed_by: sealed
                .seal
                .signature
                .map(|(key, _)| ledger::seal::fingerprint(&key)),
        });
    }
    let (evidence, _) = ledger::backfill::replay_evidence(store, source, &record, None)?;
    Ok(RunView {
        record,
        evidence,
        digest: None,
        signed_by: None,
    })
}

/// The runs a selection covers (oldest first), the complete run the period starts from, the
/// selection in words, and the period's bounds.
struct Chosen {
    in_period: Vec<RunRecord>,
    start_run: Option<RunRecord>,
    text: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

fn choose(store: &Store, source: &str, selection: &Selection) -> Result<Chosen, StoreError> {
    let complete_before = |id: &str, inclusive: bool| {
        store
            .complete_runs_back(source, id, inclusive, 1)
            .map(|mut runs| runs.pop())
    };
    Ok(match selection {
        Selection::Run(run) => {
            let start_run = complete_before(&run.run_id, false)?;
            Chosen {
                in_period: store.runs_between(
                    source,
                    start_run.as_ref().map(|start| start.run_id.as_str()),
                    Some(&run.run_id),
                )?,
                start: start_run
                    .as_ref()
                    .map_or(run.started_at, |start| start.finished_at),
                end: run.finished_at,
                text: format!("run {}", run.run_id),
                start_run,
            }
        }
        Selection::After { from, to } => Chosen {
            in_period: store.runs_between(source, Some(&from.run_id), Some(&to.run_id))?,
            start_run: complete_before(&from.run_id, true)?,
            text: format!(
                "every run after {} (its own changes not included) up to {}",
                from.run_id, to.run_id
            ),
            start: from.finished_at,
            end: to.finished_at,
        },
        Selection::Between { since, until } => {
            let in_period: Vec<RunRecord> = store
                .runs_between(
                    source,
                    Some(&crate::store::run_id_floor(*since - LONGEST_RUN)),
                    Some(&crate::store::run_id_ceiling(*until)),
                )?
                .into_iter()
                .filter(|run| run.finished_at > *since && run.finished_at <= *until)
                .collect();
            // The latest complete run that finished by `since`: walk back from the runs
            // that started by then until one did.
            let mut start_run = None;
            let mut looked = 1;
            while start_run.is_none() {
                let candidates = store.complete_runs_back(
                    source,
                    &crate::store::run_id_ceiling(*since),
                    true,
                    looked,
                )?;
                start_run = candidates
                    .iter()
                    .rev()
                    .find(|run| run.finished_at <= *since)
                    .cloned();
                if candidates.len() < looked {
                    break;
                }
                looked *= 2;
            }
            Chosen {
                in_period,
                start_run,
                text: format!(
                    "every run that finished after {} up to {}",
                    crate::display::timestamp(*since),
                    crate::display::timestamp(*until)
                ),
                start: *since,
                end: *until,
            }
        }
    })
}

/// The report of the selected runs, from their ledger entries.
pub fn build_report(
    store: &Store,
    source: &SourceConfig,
    selection: &Selection,
    generated_at: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let chosen = choose(store, &source.name, selection)?;
    let reader = store.reader()?;
    // A source's first run reports its connection too, whenever it was made.
    let connections_after = match (selection, &chosen.start_run) {
        (Selection::Run(_), None) => None,
        _ => Some(chosen.start),
    };
    let in_period =
        |at: DateTime<Utc>| at <= chosen.end && connections_after.is_none_or(|after| at > after);
    let connections = ledger::read::connections(&reader, Some(&source.name))
        .map_err(StoreError::from)?
        .into_iter()
        .filter(|connection| in_period(connection.at))
        .collect();
    // Every import made in the period, as it was: a later import of the same review does
    // not change what this period recorded.
    let access_reviews = ledger::read::review_imports(&reader, &source.name)
        .map_err(StoreError::from)?
        .into_iter()
        .filter(|review| in_period(review.imported_at))
        .collect();
    let views: Vec<RunView> = chosen
        .in_period
        .into_iter()
        .map(|record| view_of(store, &reader, source, record))
        .collect::<Result<_, _>>()?;
    let start_view = chosen
        .start_run
        .map(|record| view_of(store, &reader, source, record))
        .transpose()?;
    let end_view = views
        .iter()
        .rev()
        .find(|view| view.record.status == RunStatus::Complete)
        .or(start_view.as_ref());

    let mut missing = Vec::new();
    let mut diffs = Vec::new();
    let mut privileged_at_restarts = BTreeMap::new();
    // The stored record's status: a quarantined run that was approved since is complete.
    for view in views
        .iter()
        .filter(|view| view.record.status == RunStatus::Complete)
    {
        match (&view.evidence.diff, &view.evidence.not_replayable) {
            (Some(diff), _) => {
                if diff.baseline.is_some() || !diff.scope_changes.is_empty() {
                    let count = view.evidence.population.map_or(0, |p| p.privileged);
                    privileged_at_restarts.insert(diff.to_run.clone(), count);
                }
                diffs.push(diff.clone());
            }
            (None, reason) => missing.push((
                view.record.run_id.clone(),
                reason
                    .clone()
                    .unwrap_or_else(|| "its entry holds no events".to_string()),
            )),
        }
    }
    let start = snapshot(&reader, &source.name, start_view.as_ref())?;
    let end = match (end_view, &start_view) {
        (Some(end), Some(start_view)) if end.record.run_id == start_view.record.run_id => {
            start.clone()
        }
        (end, _) => snapshot(&reader, &source.name, end)?,
    };
    let settings_changes = views
        .iter()
        .filter(|view| !view.evidence.settings_changes.is_empty())
        .map(|view| SettingsChanged {
            run_id: view.record.run_id.clone(),
            at: view.record.started_at,
            changes: view.evidence.settings_changes.clone(),
        })
        .collect();
    let trend = trend(store, &source.name, &views, end_view)?;
    // The settings in force at the end: the last run's, or the run the period starts from,
    // or (for a source without runs) the configuration now.
    let settings = views
        .last()
        .or(start_view.as_ref())
        .map(|view| view.evidence.settings.clone())
        .unwrap_or_else(|| RunSettings::of(source));
    let report_run = match selection {
        Selection::Run(run) => run.run_id.clone(),
        Selection::After { to, .. } => to.run_id.clone(),
        Selection::Between { .. } => end_view
            .map(|view| view.record.run_id.clone())
            .unwrap_or_default(),
    };
    let report_view = views
        .iter()
        .chain(start_view.iter())
        .find(|view| view.record.run_id == report_run);
    let period = Period {
        start: chosen.start,
        end: chosen.end,
        selection: chosen.text,
        start_run: start_view.as_ref().map(|view| view.record.run_id.clone()),
        end_run: end_view.map(|view| view.record.run_id.clone()),
    };
    let evidence = EvidenceInfo {
        run_digest: report_view.and_then(|view| view.digest.clone()),
        signed_by: report_view.and_then(|view| view.signed_by.clone()),
        oldest_evidence: oldest_evidence(&reader, &source.name)?,
        backfilled_runs: views
            .iter()
            .filter(|view| view.stored() && view.evidence.backfilled)
            .map(|view| view.record.run_id.clone())
            .collect(),
        replayed_runs: views
            .iter()
            .filter(|view| !view.stored())
            .map(|view| view.record.run_id.clone())
            .collect(),
        missing,
    };
    let header = ReportHeader {
        report_id: report_id(&source.name, &period, &views),
        source: source.name.clone(),
        base_url: settings.base_url.clone(),
        run_id: report_run,
        period,
        endpoints: endpoints(&settings),
        filter: settings.filter.clone(),
        group_sync: !settings.disable_group_sync,
        settings: ReportSettings {
            sla_seconds: settings.sla_seconds,
            expected_interval_seconds: settings.expected_interval_seconds,
            expected_interval_from: settings.expected_interval_from.clone(),
            hr_key_field: settings.hr_key_field.clone(),
            privileged_groups: settings.privileged_groups.clone(),
            privileged_roles: settings.privileged_roles.clone(),
        },
        producer: Producer::current(),
        evidence,
    };
    Ok(Report {
        header,
        runs: views.iter().map(period_run).collect(),
        diffs,
        start,
        end,
        privileged_at_restarts,
        settings_changes,
        connections,
        access_reviews,
        trend,
        generated_at,
    })
}

/// A run's population at its end, as its entry recorded it.
fn snapshot(
    reader: &Reader<'_>,
    source: &str,
    view: Option<&RunView>,
) -> Result<Snapshot, StoreError> {
    let Some(view) = view else {
        return Ok(Snapshot::default());
    };
    let run_id = Some(view.record.run_id.clone());
    let privileged =
        ledger::read::privileged_at(reader, source, &view.evidence).map_err(StoreError::from)?;
    match (view.evidence.population, privileged) {
        (Some(population), Some(privileged)) => Ok(Snapshot {
            run_id,
            accounts: population.accounts,
            active: population.active,
            privileged,
            unavailable: None,
        }),
        _ => Ok(Snapshot {
            run_id,
            unavailable: Some(
                view.evidence
                    .not_replayable
                    .clone()
                    .unwrap_or_else(|| "the run's entry holds no population".to_string()),
            ),
            ..Snapshot::default()
        }),
    }
}

/// The chart's runs: the period's complete runs, or, for a period of fewer than two, the
/// recent ones before its end.
fn trend(
    store: &Store,
    source: &str,
    views: &[RunView],
    end: Option<&RunView>,
) -> Result<Vec<TrendPoint>, StoreError> {
    let complete: Vec<&RunRecord> = views
        .iter()
        .map(|view| &view.record)
        .filter(|run| run.status == RunStatus::Complete)
        .collect();
    let points = if complete.len() >= 2 {
        complete[complete.len().saturating_sub(TREND_MAX)..]
            .iter()
            .map(|run| trend_point(run))
            .collect()
    } else {
        match end {
            None => Vec::new(),
            Some(end) => store
                .complete_runs_back(source, &end.record.run_id, true, TREND_RUNS)?
                .iter()
                .map(trend_point)
                .collect(),
        }
    };
    Ok(points)
}

fn oldest_evidence(
    reader: &Reader<'_>,
    source: &str,
) -> Result<Option<OldestEvidence>, StoreError> {
    let Some(first) = reader.ledger_entries(source, 0)?.next().transpose()? else {
        return Ok(None);
    };
    let entry = ledger::parse_entry(source, &first).map_err(StoreError::from)?;
    Ok(Some(OldestEvidence {
        run_id: entry.body.run_id().map(str::to_string),
        recorded_at: entry.recorded_at,
    }))
}

fn trend_point(run: &RunRecord) -> TrendPoint {
    let changes = run.changes.unwrap_or_default();
    TrendPoint {
        run_id: run.run_id.clone(),
        finished_at: run.finished_at,
        accounts: run.counts.accounts,
        joiners: changes.joiners,
        movers: changes.movers,
        leavers: changes.leavers,
        baseline: run.previous_run.is_none(),
    }
}

fn period_run(view: &RunView) -> PeriodRun {
    let run = &view.record;
    PeriodRun {
        run_id: run.run_id.clone(),
        status: run.status,
        error: run.error.clone(),
        started_at: run.started_at,
        finished_at: run.finished_at,
        counts: run.counts,
        envelope_sha256: run.envelopes.as_ref().map(|summary| summary.sha256.clone()),
        envelope_lines: run.envelopes.as_ref().map(|summary| summary.lines),
        delivery: run.delivery.clone(),
        previous_run: run.previous_run.clone(),
        baseline_reason: run.baseline_reason.clone(),
        settings_fingerprint: run.settings_fingerprint.clone(),
        authentik_version: run.authentik_version.clone(),
        aksync_version: run.aksync_version.clone(),
        token_user: run.token_user.clone(),
        changes: run.changes,
        scope: run.scope,
        quarantine: run.quarantine.clone(),
        held_leavers: match (run.status, &view.evidence.diff) {
            (RunStatus::Quarantined, Some(diff)) => diff
                .leavers
                .iter()
                .map(|leaver| format!("{} ({})", leaver.username, leaver.reason.as_str()))
                .collect(),
            _ => Vec::new(),
        },
        entry_digest: view.digest.clone(),
        expected_interval_seconds: Some(view.evidence.settings.expected_interval_seconds),
    }
}

/// A report's id: the same for the same source, period and runs, each run by its entry's
/// digest, which covers the settings that produced its evidence.
fn report_id(source: &str, period: &Period, views: &[RunView]) -> String {
    let mut digest = Sha256::new();
    digest.update(source.as_bytes());
    for at in [period.start, period.end] {
        digest.update(b"\n");
        digest.update(crate::display::timestamp(at).as_bytes());
    }
    for view in views {
        digest.update(b"\n");
        digest.update(view.record.run_id.as_bytes());
        if let Some(entry) = &view.digest {
            digest.update(b" ");
            digest.update(entry.as_bytes());
        }
    }
    format!("{source}-{}", &hex::encode(digest.finalize())[..12])
}

/// The API calls the runs made, with their parameters.
fn endpoints(settings: &RunSettings) -> Vec<String> {
    let mut endpoints = vec![
        "GET /api/v3/core/users/me/".to_string(),
        "GET /api/v3/admin/version/".to_string(),
    ];
    let lists: &[ListKind] = if settings.disable_group_sync {
        &[ListKind::Users]
    } else {
        &[ListKind::Users, ListKind::Groups]
    };
    for kind in lists {
        let mut params: Vec<String> = kind
            .params()
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        params.push(format!("page_size={}", settings.page_size));
        params.push("page=1..N".to_string());
        endpoints.push(format!("GET /api/v3/{}?{}", kind.path(), params.join("&")));
    }
    endpoints
}
