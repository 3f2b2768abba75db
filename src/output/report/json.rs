//! The JSON report: the same data as the other formats, for machines, with exactly these
//! top-level keys: `period` (what the report covers, its settings, who produced it and the
//! counts), `runs`, `coverage_gaps`, `roll_forward`, `privileged_accounts` (`start`, `end`),
//! `privilege_granted`, `privilege_removed`, `privileged_group_changes`, `leavers` (every
//! termination event, purges included), `latency` (`n`, `median_seconds`, `p95_seconds`,
//! `max_seconds`, `breaches`), `joiners` and `movers`. Group and membership changes are with
//! the run that found them, in `runs`. Times are RFC 3339 UTC, latencies seconds.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::content::{figures, run_started_at};
use super::period::{period_counts, CoverageGap, Latency, PeriodCounts, RollForward};
use super::{PeriodRun, Report, ReportError};
use crate::diff::{
    DirectoryDiff, GroupChanges, Joiner, MembershipChanges, Mover, Population, PrivilegeChange,
    PrivilegedAccount, PrivilegedGroupChange,
};

#[derive(Serialize)]
struct JsonReport<'a> {
    period: JsonPeriod<'a>,
    runs: Vec<JsonRun<'a>>,
    coverage_gaps: Vec<CoverageGap>,
    roll_forward: RollForward,
    privileged_accounts: PrivilegedAccounts<'a>,
    privilege_granted: Vec<InRun<'a, &'a PrivilegeChange>>,
    privilege_removed: Vec<InRun<'a, &'a PrivilegeChange>>,
    privileged_group_changes: Vec<InRun<'a, &'a PrivilegedGroupChange>>,
    leavers: Vec<Value>,
    latency: Latency,
    joiners: Vec<InRun<'a, &'a Joiner>>,
    movers: Vec<InRun<'a, &'a Mover>>,
}

#[derive(Serialize)]
struct JsonPeriod<'a> {
    report_id: &'a str,
    source: &'a str,
    #[serde(flatten)]
    period: &'a super::Period,
    /// The last run of the period, after which the report's files are named.
    run_id: &'a str,
    base_url: &'a str,
    endpoints: &'a [String],
    filter: Option<&'a str>,
    group_sync: bool,
    settings: &'a super::ReportSettings,
    /// Settings the period's runs recorded differently from the run before them.
    settings_changes: &'a [super::SettingsChanged],
    /// When the source was connected or disconnected in the period.
    connections: &'a [crate::ledger::read::Connection],
    /// The access review imports of the period, with their decisions.
    access_reviews: &'a [crate::ledger::read::RecordedReview],
    /// The ledger digest of the report's run, its signer, and the oldest evidence kept.
    evidence: &'a super::EvidenceInfo,
    producer: &'a super::Producer,
    settings_fingerprints: BTreeSet<&'a str>,
    authentik_versions: BTreeSet<&'a str>,
    token_users: BTreeSet<&'a crate::store::TokenUser>,
    generated_at: DateTime<Utc>,
    summary: PeriodCounts,
}

#[derive(Serialize)]
struct JsonRun<'a> {
    #[serde(flatten)]
    run: &'a PeriodRun,
    /// For a complete run: what its diff found beyond the account events.
    #[serde(skip_serializing_if = "Option::is_none")]
    population: Option<Population>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<&'a crate::diff::Baseline>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_changes: Option<&'a GroupChanges>,
    #[serde(skip_serializing_if = "Option::is_none")]
    membership_changes: Option<&'a MembershipChanges>,
}

#[derive(Serialize)]
struct PrivilegedAccounts<'a> {
    start: &'a [PrivilegedAccount],
    end: &'a [PrivilegedAccount],
}

/// An event with the run that detected it.
#[derive(Serialize)]
struct InRun<'a, T> {
    run_id: &'a str,
    run_started_at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    event: T,
}

fn in_run<'a, T>(
    report: &'a Report,
    diff: &'a DirectoryDiff,
    items: &'a [T],
) -> impl Iterator<Item = InRun<'a, &'a T>> + 'a {
    items.iter().map(move |event| InRun {
        run_id: &diff.to_run,
        run_started_at: run_started_at(report, &diff.to_run),
        event,
    })
}

fn each<'a, T: 'a>(
    report: &'a Report,
    pick: impl Fn(&'a DirectoryDiff) -> &'a [T] + Copy + 'a,
) -> Vec<InRun<'a, &'a T>> {
    report
        .diffs
        .iter()
        .flat_map(|diff| in_run(report, diff, pick(diff)))
        .collect()
}

pub(super) fn render(report: &Report) -> Result<Vec<u8>, ReportError> {
    let json_error = |error: serde_json::Error| ReportError::Json(error.to_string());
    let figures = figures(report);
    let mut leavers = Vec::new();
    for diff in &report.diffs {
        for leaver in &diff.leavers {
            let mut value = serde_json::to_value(leaver).map_err(json_error)?;
            if let Some(fields) = value.as_object_mut() {
                fields.insert("event".into(), json!("leaver"));
                fields.insert("run_id".into(), json!(diff.to_run));
                fields.insert(
                    "run_started_at".into(),
                    json!(run_started_at(report, &diff.to_run)),
                );
            }
            leavers.push(value);
        }
        for purge in &diff.purged {
            let mut value = serde_json::to_value(purge).map_err(json_error)?;
            if let Some(fields) = value.as_object_mut() {
                fields.insert("event".into(), json!("purged"));
                fields.insert("run_id".into(), json!(diff.to_run));
                fields.insert(
                    "run_started_at".into(),
                    json!(run_started_at(report, &diff.to_run)),
                );
            }
            leavers.push(value);
        }
    }
    let runs = report
        .runs
        .iter()
        .map(|run| {
            let diff = report.diffs.iter().find(|diff| diff.to_run == run.run_id);
            JsonRun {
                run,
                population: diff.map(|diff| diff.population),
                baseline: diff.and_then(|diff| diff.baseline.as_ref()),
                group_changes: diff.map(|diff| &diff.groups),
                membership_changes: diff.map(|diff| &diff.memberships),
            }
        })
        .collect();
    let header = &report.header;
    let document = JsonReport {
        period: JsonPeriod {
            report_id: &header.report_id,
            source: &header.source,
            period: &header.period,
            run_id: &header.run_id,
            base_url: &header.base_url,
            endpoints: &header.endpoints,
            filter: header.filter.as_deref(),
            group_sync: header.group_sync,
            settings: &header.settings,
            settings_changes: &report.settings_changes,
            connections: &report.connections,
            access_reviews: &report.access_reviews,
            evidence: &header.evidence,
            producer: &header.producer,
            settings_fingerprints: report
                .runs
                .iter()
                .map(|run| run.settings_fingerprint.as_str())
                .collect(),
            authentik_versions: report
                .runs
                .iter()
                .filter_map(|run| run.authentik_version.as_deref())
                .collect(),
            token_users: report
                .runs
                .iter()
                .filter_map(|run| run.token_user.as_ref())
                .collect(),
            generated_at: report.generated_at,
            summary: period_counts(report),
        },
        runs,
        coverage_gaps: figures.gaps,
        roll_forward: figures.roll_forward,
        privileged_accounts: PrivilegedAccounts {
            start: &report.start.privileged,
            end: &report.end.privileged,
        },
        privilege_granted: each(report, |diff| &diff.privilege_granted),
        privilege_removed: each(report, |diff| &diff.privilege_removed),
        privileged_group_changes: each(report, |diff| &diff.privileged_group_changes),
        leavers,
        latency: figures.terminations.latency,
        joiners: each(report, |diff| &diff.joiners),
        movers: each(report, |diff| &diff.movers),
    };
    let mut bytes = serde_json::to_vec_pretty(&document).map_err(json_error)?;
    bytes.push(b'\n');
    Ok(bytes)
}
