//! What a period shows that no single run does, computed from a [`Report`]: the gaps in its
//! coverage, the roll-forward of the population (accounts, active accounts, privileged
//! accounts), and the terminations with their detection latency against the SLA. Pure, so
//! every rule is tested here without a store.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::Report;
use crate::diff::{JoinReason, LeaveReason};
use crate::store::RunStatus;

/// A stretch of the period longer than the expected interval without a complete run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageGap {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// The complete runs at either end; `None` at the period's start or end.
    pub from_run: Option<String>,
    pub to_run: Option<String>,
    pub seconds: u64,
    pub expected_seconds: u64,
    /// Runs that started in the gap and did not complete.
    pub runs_not_complete: Vec<String>,
}

/// Every interval between the period's start, its complete runs and its end that is longer
/// than the expected interval.
pub fn coverage_gaps(report: &Report) -> Vec<CoverageGap> {
    let period = &report.header.period;
    // Each interval is judged by what the run that ends it recorded; the period's tail by
    // the settings in force at its end.
    let at_end = report.header.settings.expected_interval_seconds;
    let mut points: Vec<(DateTime<Utc>, Option<&str>, u64)> = vec![(period.start, None, at_end)];
    points.extend(
        report
            .runs
            .iter()
            .filter(|run| run.status == RunStatus::Complete)
            .map(|run| {
                (
                    run.finished_at,
                    Some(run.run_id.as_str()),
                    run.expected_interval_seconds.unwrap_or(at_end),
                )
            }),
    );
    if points.last().is_some_and(|(at, _, _)| *at < period.end) {
        points.push((period.end, None, at_end));
    }
    points
        .windows(2)
        .filter_map(|pair| {
            let ((from, from_run, _), (to, to_run, expected)) = (pair[0], pair[1]);
            let seconds = seconds_between(from, to);
            (seconds > expected).then(|| CoverageGap {
                from,
                to,
                from_run: from_run.map(str::to_string),
                to_run: to_run.map(str::to_string),
                seconds,
                expected_seconds: expected,
                runs_not_complete: report
                    .runs
                    .iter()
                    .filter(|run| {
                        run.status != RunStatus::Complete
                            && run.started_at > from
                            && run.started_at <= to
                    })
                    .map(|run| run.run_id.clone())
                    .collect(),
            })
        })
        .collect()
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    (to - from).num_seconds().max(0).unsigned_abs()
}

/// One population through the period: `start + added − removed + scope + restated = end`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollForwardLine {
    /// Counted in the run the period starts from.
    pub start: u64,
    /// Accounts created; accounts that joined (created active or reactivated); accounts
    /// granted privilege.
    pub added: u64,
    /// Accounts deleted; accounts that left (deactivated or deleted while active); accounts
    /// whose privilege was removed.
    pub removed: u64,
    /// At a baseline run (compared with nothing, e.g. after the settings changed) the count
    /// restarts from what that run holds: the difference, which no event explains.
    pub restated: i64,
    /// What entered the scope less what left it, in runs whose scope changed (the filter,
    /// group_filter or group sync): records that are counted, or no longer, without an event.
    pub scope: i64,
    /// Counted in the period's last complete run.
    pub end: u64,
    /// Whether `start + added − removed + scope + restated = end`.
    pub reconciles: bool,
}

impl RollForwardLine {
    fn new(start: u64) -> RollForwardLine {
        RollForwardLine {
            start,
            ..RollForwardLine::default()
        }
    }

    fn running(&self) -> i64 {
        self.start as i64 + self.added as i64 - self.removed as i64 + self.scope + self.restated
    }

    fn restart_at(&mut self, count: u64) {
        self.restated += count as i64 - self.running();
    }

    /// After a run whose scope changed, the count it holds: the difference its events do not
    /// explain is the scope's.
    fn rescope_at(&mut self, count: u64) {
        self.scope += count as i64 - self.running();
    }

    fn close(&mut self, end: u64) {
        self.end = end;
        self.reconciles = self.running() == end as i64;
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RollForward {
    pub accounts: RollForwardLine,
    pub active: RollForwardLine,
    pub privileged: RollForwardLine,
}

/// The start's counts carried through every complete run's events to the end's counts.
pub fn roll_forward(report: &Report) -> RollForward {
    let start = &report.start;
    let mut lines = RollForward {
        accounts: RollForwardLine::new(start.accounts),
        active: RollForwardLine::new(start.active),
        privileged: RollForwardLine::new(start.privileged.len() as u64),
    };
    for diff in &report.diffs {
        if diff.baseline.is_some() {
            let privileged = report
                .privileged_at_restarts
                .get(&diff.to_run)
                .copied()
                .unwrap_or_default();
            lines.accounts.restart_at(diff.population.accounts.after);
            lines.active.restart_at(diff.population.active.after);
            lines.privileged.restart_at(privileged);
            continue;
        }
        lines.accounts.added += diff.population.created;
        lines.accounts.removed += diff.population.deleted;
        lines.active.added += diff.joiners.len() as u64;
        lines.active.removed += diff.leavers.len() as u64;
        lines.privileged.added += diff.privilege_granted.len() as u64;
        lines.privileged.removed += diff.privilege_removed.len() as u64;
        if !diff.scope_changes.is_empty() {
            let privileged = report.privileged_at_restarts.get(&diff.to_run).copied();
            lines.accounts.rescope_at(diff.population.accounts.after);
            lines.active.rescope_at(diff.population.active.after);
            if let Some(privileged) = privileged {
                lines.privileged.rescope_at(privileged);
            }
        }
    }
    let end = &report.end;
    lines.accounts.close(end.accounts);
    lines.active.close(end.active);
    lines.privileged.close(end.privileged.len() as u64);
    lines
}

/// How a termination case started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStart {
    Deactivated,
    Deleted,
    /// Deleted in the period after it had left before the period: its detection latency
    /// belongs to an earlier period.
    LeftBeforePeriod,
}

/// One person's termination: a deactivation and the later deletion of the same account are
/// one case, timed from the first event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TerminationCase {
    pub external_id: String,
    pub username: String,
    pub hr_key: Option<String>,
    pub started: CaseStart,
    /// The run that detected the first event.
    pub run_id: String,
    pub detected_at: DateTime<Utc>,
    pub last_seen_active_at: Option<DateTime<Utc>>,
    pub latency_seconds: Option<u64>,
    /// The `sla` in force when the run detected it.
    pub sla_seconds: Option<u64>,
    pub within_sla: Option<bool>,
    pub privileged_at_departure: bool,
    /// The run that deleted the account, when that came later in the period.
    pub deleted_in_run: Option<String>,
    /// The run that reactivated the account, which ends the case.
    pub reactivated_in_run: Option<String>,
}

/// A termination detected later than the SLA allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    pub external_id: String,
    pub username: String,
    pub run_id: String,
    pub latency_seconds: u64,
    pub sla_seconds: u64,
}

/// Detection latency over the period's termination cases with a known latency.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub n: u64,
    pub median_seconds: Option<u64>,
    pub p95_seconds: Option<u64>,
    pub max_seconds: Option<u64>,
    pub breaches: Vec<Breach>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Terminations {
    pub cases: Vec<TerminationCase>,
    /// Distinct accounts among the cases.
    pub people: u64,
    pub latency: Latency,
}

/// The period's leavers and purges as termination cases, oldest first.
pub fn terminations(report: &Report) -> Terminations {
    let mut cases: Vec<TerminationCase> = Vec::new();
    // The open case of each account, by index.
    let mut open: BTreeMap<&str, usize> = BTreeMap::new();
    for diff in &report.diffs {
        for leaver in &diff.leavers {
            let deleted = leaver.reason == LeaveReason::Deleted;
            if !deleted {
                open.insert(&leaver.external_id, cases.len());
            }
            cases.push(TerminationCase {
                external_id: leaver.external_id.clone(),
                username: leaver.username.clone(),
                hr_key: leaver.hr_key.clone(),
                started: if deleted {
                    CaseStart::Deleted
                } else {
                    CaseStart::Deactivated
                },
                run_id: diff.to_run.clone(),
                detected_at: leaver.detected_at,
                last_seen_active_at: leaver.last_seen_active_at,
                latency_seconds: leaver.latency_seconds,
                sla_seconds: leaver.sla_seconds,
                within_sla: leaver.within_sla,
                privileged_at_departure: leaver.privileged_at_departure,
                deleted_in_run: None,
                reactivated_in_run: None,
            });
        }
        for purge in &diff.purged {
            match open.remove(purge.external_id.as_str()) {
                Some(index) => cases[index].deleted_in_run = Some(diff.to_run.clone()),
                None => cases.push(TerminationCase {
                    external_id: purge.external_id.clone(),
                    username: purge.username.clone(),
                    hr_key: purge.hr_key.clone(),
                    started: CaseStart::LeftBeforePeriod,
                    run_id: diff.to_run.clone(),
                    detected_at: purge.detected_at,
                    last_seen_active_at: purge.last_seen_active_at,
                    latency_seconds: None,
                    sla_seconds: None,
                    within_sla: None,
                    privileged_at_departure: false,
                    deleted_in_run: Some(diff.to_run.clone()),
                    reactivated_in_run: None,
                }),
            }
        }
        for joiner in &diff.joiners {
            if joiner.reason != JoinReason::Reactivated {
                continue;
            }
            if let Some(index) = open.remove(joiner.external_id.as_str()) {
                cases[index].reactivated_in_run = Some(diff.to_run.clone());
            }
        }
    }
    let people = cases
        .iter()
        .map(|case| case.external_id.as_str())
        .collect::<BTreeSet<_>>()
        .len() as u64;
    let mut latencies: Vec<u64> = cases.iter().filter_map(|c| c.latency_seconds).collect();
    latencies.sort_unstable();
    let (median_seconds, p95_seconds, max_seconds) = latency_statistics(&latencies);
    let breaches = cases
        .iter()
        .filter(|case| case.within_sla == Some(false))
        .map(|case| Breach {
            external_id: case.external_id.clone(),
            username: case.username.clone(),
            run_id: case.run_id.clone(),
            latency_seconds: case.latency_seconds.unwrap_or_default(),
            sla_seconds: case.sla_seconds.unwrap_or_default(),
        })
        .collect();
    Terminations {
        cases,
        people,
        latency: Latency {
            n: latencies.len() as u64,
            median_seconds,
            p95_seconds,
            max_seconds,
            breaches,
        },
    }
}

/// Median (the mean of the two middle values for an even count, rounded down), 95th
/// percentile (nearest rank: the smallest value at or above 95 % of them) and maximum of
/// sorted values.
pub fn latency_statistics(sorted: &[u64]) -> (Option<u64>, Option<u64>, Option<u64>) {
    let n = sorted.len();
    if n == 0 {
        return (None, None, None);
    }
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    };
    let rank = (n * 95).div_ceil(100).max(1);
    (Some(median), Some(sorted[rank - 1]), sorted.last().copied())
}

/// The period's counts, as the summary, the JSON and the manifest give them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeriodCounts {
    pub runs: u64,
    pub complete_runs: u64,
    pub failed_runs: u64,
    pub quarantined_runs: u64,
    pub coverage_gaps: u64,
    pub privileged_at_start: u64,
    pub privileged_at_end: u64,
    pub privilege_granted: u64,
    pub privilege_removed: u64,
    pub privileged_group_changes: u64,
    pub leaver_events: u64,
    pub purged: u64,
    pub termination_cases: u64,
    pub people_terminated: u64,
    pub sla_breaches: u64,
    pub joiners: u64,
    pub movers: u64,
    pub group_changes: u64,
    pub membership_changes: u64,
}

pub fn period_counts(report: &Report) -> PeriodCounts {
    let total = |count: fn(&crate::diff::DirectoryDiff) -> usize| -> u64 {
        report.diffs.iter().map(count).sum::<usize>() as u64
    };
    let runs = |status: RunStatus| {
        report
            .runs
            .iter()
            .filter(|run| run.status == status)
            .count() as u64
    };
    let terminations = terminations(report);
    PeriodCounts {
        runs: report.runs.len() as u64,
        complete_runs: runs(RunStatus::Complete),
        failed_runs: runs(RunStatus::Failed),
        quarantined_runs: runs(RunStatus::Quarantined),
        coverage_gaps: coverage_gaps(report).len() as u64,
        privileged_at_start: report.start.privileged.len() as u64,
        privileged_at_end: report.end.privileged.len() as u64,
        privilege_granted: total(|d| d.privilege_granted.len()),
        privilege_removed: total(|d| d.privilege_removed.len()),
        privileged_group_changes: total(|d| d.privileged_group_changes.len()),
        leaver_events: total(|d| d.leavers.len()),
        purged: total(|d| d.purged.len()),
        termination_cases: terminations.cases.len() as u64,
        people_terminated: terminations.people,
        sla_breaches: terminations.latency.breaches.len() as u64,
        joiners: total(|d| d.joiners.len()),
        movers: total(|d| d.movers.len()),
        group_changes: total(|d| {
            d.groups.created.len() + d.groups.deleted.len() + d.groups.changed.len()
        }),
        membership_changes: total(|d| d.memberships.added.len() + d.memberships.removed.len()),
    }
}

#[cfg(test)]
mod tests;
