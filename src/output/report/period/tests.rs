//! The period's figures on hand-built reports.

use chrono::Duration;

use super::*;
use crate::diff::{JoinReason, LeaveReason, Purge};
use crate::output::report::tests::{
    at, empty_diff, joiner, leaver, period_report, period_run, uid,
};
use crate::output::report::{Report, Snapshot};

#[test]
fn latency_statistics_are_median_nearest_rank_p95_and_max() {
    assert_eq!(latency_statistics(&[]), (None, None, None));
    assert_eq!(latency_statistics(&[7]), (Some(7), Some(7), Some(7)));
    assert_eq!(latency_statistics(&[1, 3]), (Some(2), Some(3), Some(3)));
    assert_eq!(
        latency_statistics(&[10, 20, 30, 40, 50]),
        (Some(30), Some(50), Some(50))
    );
    let hundred: Vec<u64> = (1..=100).collect();
    assert_eq!(
        latency_statistics(&hundred),
        (Some(50), Some(95), Some(100))
    );
    let twenty: Vec<u64> = (1..=20).collect();
    assert_eq!(latency_statistics(&twenty).1, Some(19));
}

/// A deactivation and the later deletion of the same account are one case timed from the
/// first; a purge of an account that left before the period is a case without a latency.
#[test]
fn terminations_count_people_and_time_cases_from_the_first_event() {
    let mut report = period_report();
    report.diffs.truncate(0);
    let mut first = empty_diff("R1", "R2");
    first.leavers.push(leaver(
        "quitter",
        LeaveReason::Deactivated,
        Some(at(0, 0)),
        at(0, 30),
    ));
    first.leavers.push(leaver(
        "slow",
        LeaveReason::Deleted,
        Some(at(0, 0)),
        at(2, 0),
    ));
    let mut second = empty_diff("R2", "R3");
    let purge = |name: &str| Purge {
        external_id: uid(name),
        username: name.to_string(),
        canonical_email: None,
        last_seen_active_at: Some(at(0, 0)),
        detected_at: at(5, 0),
        last_login_at: None,
        hr_key: None,
        groups_at_deletion: Vec::new(),
        authentik_last_updated: None,
    };
    second.purged.push(purge("quitter"));
    second.purged.push(purge("old-leaver"));
    second.leavers.push(leaver(
        "bouncer",
        LeaveReason::Deactivated,
        Some(at(1, 0)),
        at(1, 10),
    ));
    let mut third = empty_diff("R3", "R4");
    third
        .joiners
        .push(joiner("bouncer", JoinReason::Reactivated));
    let mut fourth = empty_diff("R4", "R5");
    fourth.leavers.push(leaver(
        "bouncer",
        LeaveReason::Deactivated,
        Some(at(3, 0)),
        at(3, 20),
    ));
    report.diffs = vec![first, second, third, fourth];
    let result = terminations(&report);
    let cases: Vec<(&str, CaseStart, Option<u64>, Option<&str>)> = result
        .cases
        .iter()
        .map(|c| {
            (
                c.username.as_str(),
                c.started,
                c.latency_seconds,
                c.deleted_in_run.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        cases,
        vec![
            ("quitter", CaseStart::Deactivated, Some(1_800), Some("R3")),
            ("slow", CaseStart::Deleted, Some(7_200), None),
            ("bouncer", CaseStart::Deactivated, Some(600), None),
            ("old-leaver", CaseStart::LeftBeforePeriod, None, Some("R3")),
            ("bouncer", CaseStart::Deactivated, Some(1_200), None),
        ]
    );
    assert_eq!(result.cases[2].reactivated_in_run.as_deref(), Some("R4"));
    assert_eq!(result.people, 4, "bouncer left twice, one person");
    let latency = &result.latency;
    assert_eq!(latency.n, 4);
    assert_eq!(latency.median_seconds, Some(1_500));
    assert_eq!(latency.p95_seconds, Some(7_200));
    assert_eq!(latency.max_seconds, Some(7_200));
    // The SLA is an hour: only the slow deletion breaches it.
    let breaches: Vec<&str> = latency
        .breaches
        .iter()
        .map(|b| b.username.as_str())
        .collect();
    assert_eq!(breaches, vec!["slow"]);
    assert_eq!(latency.breaches[0].sla_seconds, 3_600);
}

fn report_with_runs(runs: Vec<crate::output::report::PeriodRun>) -> Report {
    let mut report = period_report();
    report.header.period.start = at(0, 0);
    report.header.period.end = at(6, 0);
    report.header.settings.expected_interval_seconds = 3_600;
    report.runs = runs;
    for run in &mut report.runs {
        run.expected_interval_seconds = Some(3_600);
    }
    report
}

#[test]
fn coverage_gaps_are_intervals_longer_than_expected_with_their_failed_runs() {
    let complete = |id: &str, hour: u32| {
        period_run(
            id,
            RunStatus::Complete,
            at(hour, 0) - Duration::minutes(1),
            at(hour, 0),
        )
    };
    let report = report_with_runs(vec![
        complete("A", 1),
        complete("B", 2),
        period_run("F1", RunStatus::Failed, at(2, 30), at(2, 31)),
        period_run("F2", RunStatus::Failed, at(3, 30), at(3, 31)),
        complete("C", 5),
    ]);
    let gaps = coverage_gaps(&report);
    type Found<'a> = (Option<&'a str>, Option<&'a str>, u64, Vec<String>);
    let found: Vec<Found<'_>> = gaps
        .iter()
        .map(|g| {
            (
                g.from_run.as_deref(),
                g.to_run.as_deref(),
                g.seconds,
                g.runs_not_complete.clone(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![(
            Some("B"),
            Some("C"),
            3 * 3_600,
            vec!["F1".to_string(), "F2".to_string()]
        ),],
        "an hour apart is no gap; the last hour to the period's end is not either"
    );
    // Each interval is judged by the expected interval its ending run recorded.
    let mut relaxed = report.clone();
    relaxed.runs[4].expected_interval_seconds = Some(4 * 3_600);
    assert!(coverage_gaps(&relaxed).is_empty());
    let quiet = report_with_runs(vec![period_run("F", RunStatus::Failed, at(1, 0), at(1, 1))]);
    let gaps = coverage_gaps(&quiet);
    assert_eq!(gaps.len(), 1);
    assert_eq!((gaps[0].from, gaps[0].to), (at(0, 0), at(6, 0)));
    assert_eq!(gaps[0].runs_not_complete, vec!["F".to_string()]);
}

#[test]
fn the_roll_forward_reconciles_counts_with_events_and_restarts_at_a_baseline() {
    let mut report = period_report();
    let (first, second) = (&mut report.diffs[0].clone(), &mut report.diffs[1].clone());
    first.population.created = 0;
    first.population.deleted = 1;
    second.population.created = 1;
    second.population.deleted = 0;
    report.diffs = vec![first.clone(), second.clone()];
    report.start = Snapshot {
        run_id: Some("R1".into()),
        accounts: 100,
        active: 90,
        privileged: report.start.privileged.clone(),
        unavailable: None,
    };
    // One leaver and one purge in R2; two leavers, two joiners in R3: active 90 − 2 + 2.
    report.end.accounts = 100;
    report.end.active = 90;
    let lines = roll_forward(&report);
    assert_eq!(
        lines.accounts,
        RollForwardLine {
            start: 100,
            added: 1,
            removed: 1,
            restated: 0,
            scope: 0,
            end: 100,
            reconciles: true
        }
    );
    assert_eq!((lines.active.added, lines.active.removed), (2, 2));
    assert!(lines.active.reconciles);
    assert_eq!(
        (
            lines.privileged.start,
            lines.privileged.added,
            lines.privileged.end
        ),
        (1, 1, 2)
    );
    assert!(lines.privileged.reconciles);

    // An end count the events do not explain does not reconcile.
    report.end.active = 91;
    assert!(!roll_forward(&report).active.reconciles);

    // A baseline restates the count to what it holds.
    report.end.active = 90;
    let mut baseline = empty_diff("", "R4");
    baseline.baseline = Some(crate::diff::Baseline {
        reason: "settings changed".into(),
        superusers: vec![],
    });
    baseline.population.accounts.after = 80;
    baseline.population.active.after = 75;
    report.diffs.push(baseline);
    report.privileged_at_restarts.insert("R4".into(), 5);
    report.end.accounts = 80;
    report.end.active = 75;
    report.end.privileged = report.end.privileged[..1].to_vec();
    let lines = roll_forward(&report);
    assert_eq!(lines.accounts.restated, -20);
    assert_eq!(lines.active.restated, -15);
    assert_eq!(lines.privileged.restated, 3);
    assert!(
        !lines.privileged.reconciles,
        "5 at the baseline, 1 at the end"
    );
    assert!(lines.accounts.reconciles && lines.active.reconciles);
}
