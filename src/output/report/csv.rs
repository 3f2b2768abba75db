//! The CSV report: one row per event, with typed columns an auditor can filter and pivot
//! (times in RFC 3339 UTC, latencies in seconds, flags `true`/`false`, empty where a column
//! does not apply). Every run of the period comes first as an event `run` whose reason is its
//! status (and a failed run's error), so the file shows the coverage too. An event that
//! changed several fields has one row per field, alike but for `field`, `old` and `new`.
//! [`csv`] quotes (RFC 4180) and defuses formulas, here and for the CLI's `--csv`.

use super::content::{events, revocations, run_started_at, timestamp, Event, EventKind};
use super::Report;
use crate::diff::{FieldChange, GroupRef};
use crate::output::sheet;

/// The columns, in order.
pub const COLUMNS: [&str; 23] = [
    "source",
    "run_id",
    "run_started_at",
    "event",
    "reason",
    "external_id",
    "username",
    "email",
    "hr_key",
    "privileged",
    "escalation",
    "privilege_source",
    "groups",
    "groups_added",
    "groups_removed",
    "field",
    "old",
    "new",
    "last_seen_active_at",
    "detected_at",
    "latency_seconds",
    "within_sla",
    "last_login_at",
];

/// One row before it is split by field change.
#[derive(Default)]
struct Row {
    reason: String,
    username: String,
    hr_key: Option<String>,
    privileged: Option<bool>,
    escalation: Option<bool>,
    privilege_source: Option<String>,
    groups: Vec<String>,
    groups_added: Vec<String>,
    groups_removed: Vec<String>,
    changes: Vec<FieldChange>,
    last_seen_active_at: Option<String>,
    latency_seconds: Option<u64>,
    within_sla: Option<bool>,
    last_login_at: Option<String>,
}

fn names(groups: &[GroupRef]) -> Vec<String> {
    groups
        .iter()
        .map(|group| group.display_name.clone())
        .collect()
}

/// A value as a cell: a string as it is, nothing for null, anything else as compact JSON.
fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn flag(value: Option<bool>) -> String {
    value.map_or_else(String::new, |value| value.to_string())
}

fn row(event: &Event<'_>) -> Row {
    let username = event.name().to_string();
    match event.kind {
        EventKind::Leaver(leaver) => Row {
            reason: leaver.reason.as_str().to_string(),
            username,
            hr_key: leaver.hr_key.clone(),
            privileged: Some(leaver.privileged_at_departure),
            privilege_source: leaver.privilege_source.clone(),
            groups: names(&leaver.groups_at_departure),
            changes: leaver.changes.clone(),
            last_seen_active_at: leaver.last_seen_active_at.map(timestamp),
            latency_seconds: leaver.latency_seconds,
            within_sla: leaver.within_sla,
            last_login_at: leaver.last_login_at.clone(),
            ..Row::default()
        },
        EventKind::Purged(purge) => Row {
            reason: "deleted after it had already left".to_string(),
            username,
            hr_key: purge.hr_key.clone(),
            groups: names(&purge.groups_at_deletion),
            last_seen_active_at: purge.last_seen_active_at.map(timestamp),
            last_login_at: purge.last_login_at.clone(),
            ..Row::default()
        },
        EventKind::PrivilegeGranted(change) | EventKind::PrivilegeRemoved(change) => {
            let granted = matches!(event.kind, EventKind::PrivilegeGranted(_));
            Row {
                reason: change.reason.as_str().to_string(),
                username,
                hr_key: change.hr_key.clone(),
                privileged: Some(granted),
                escalation: Some(granted),
                privilege_source: Some(change.privilege_source.clone()),
                groups: names(&change.path),
                ..Row::default()
            }
        }
        EventKind::PrivilegedGroupChange(group) => Row {
            reason: format!(
                "group {}: {} accounts granted, {} removed",
                group.change, group.accounts_granted, group.accounts_removed
            ),
            groups: vec![group.display_name.clone()],
            changes: group.changes.clone(),
            ..Row::default()
        },
        EventKind::Joiner(joiner) => Row {
            reason: joiner.reason.as_str().to_string(),
            username,
            hr_key: joiner.hr_key.clone(),
            privileged: Some(joiner.privileged),
            escalation: Some(joiner.privilege_escalation),
            privilege_source: joiner.privilege_source.clone(),
            groups: names(&joiner.groups),
            groups_added: names(&joiner.groups_added),
            groups_removed: names(&joiner.groups_removed),
            changes: joiner.changes.clone(),
            ..Row::default()
        },
        EventKind::Mover(mover) => Row {
            reason: "moved".to_string(),
            username,
            hr_key: mover.hr_key.clone(),
            privileged: Some(mover.privileged),
            escalation: Some(mover.privilege_escalation),
            privilege_source: mover.privilege_source.clone(),
            groups_added: names(&mover.groups_added),
            groups_removed: names(&mover.groups_removed),
            changes: mover.changes.clone(),
            ..Row::default()
        },
        EventKind::GroupCreated(group) | EventKind::GroupDeleted(group) => Row {
            reason: if matches!(event.kind, EventKind::GroupCreated(_)) {
                "created"
            } else {
                "deleted"
            }
            .to_string(),
            groups: vec![group.display_name.clone()],
            ..Row::default()
        },
        EventKind::GroupChanged(group) => Row {
            reason: "changed".to_string(),
            groups: vec![group.display_name.clone()],
            changes: group.changes.clone(),
            ..Row::default()
        },
        EventKind::MembershipAdded(membership) => Row {
            reason: "added".to_string(),
            username,
            groups_added: vec![membership.group_name.clone()],
            ..Row::default()
        },
        EventKind::MembershipRemoved(membership) => Row {
            reason: "removed".to_string(),
            username,
            groups_removed: vec![membership.group_name.clone()],
            ..Row::default()
        },
    }
}

/// A row with the named columns set and the others empty.
fn sparse_row(values: &[(&str, String)]) -> Vec<String> {
    let mut row = vec![String::new(); COLUMNS.len()];
    for (column, value) in values {
        if let Some(index) = COLUMNS.iter().position(|name| name == column) {
            row[index] = value.clone();
        }
    }
    row
}

/// The rows of one run: `event` is `run`, `reason` its status; then one row per setting it
/// recorded differently from the run before (`event` `settings_changed`).
fn run_rows(report: &Report, run: &super::PeriodRun) -> Vec<Vec<String>> {
    let mut reason = match &run.error {
        Some(error) => format!("{}: {error}", run.status.as_str()),
        None => run.status.as_str().to_string(),
    };
    if let Some(delivery) = run.delivery_text() {
        reason.push_str(&format!("; {delivery}"));
    }
    let common = [
        ("source", report.header.source.clone()),
        ("run_id", run.run_id.clone()),
        ("run_started_at", timestamp(run.started_at)),
        ("detected_at", timestamp(run.finished_at)),
    ];
    let mut rows = vec![sparse_row(
        &[
            &common[..],
            &[("event", "run".to_string()), ("reason", reason)],
        ]
        .concat(),
    )];
    let changes = report
        .settings_changes
        .iter()
        .filter(|changed| changed.run_id == run.run_id)
        .flat_map(|changed| &changed.changes);
    for change in changes {
        rows.push(sparse_row(
            &[
                &common[..],
                &[
                    ("event", "settings_changed".to_string()),
                    ("field", change.key.clone()),
                    ("old", value_text(&change.old)),
                    ("new", value_text(&change.new)),
                ],
            ]
            .concat(),
        ));
    }
    rows
}

pub(super) fn render(report: &Report) -> String {
    let mut rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .flat_map(|run| run_rows(report, run))
        .collect();
    rows.extend(report.connections.iter().map(|connection| {
        sparse_row(&[
            ("source", report.header.source.clone()),
            ("event", connection.event.as_str().to_string()),
            ("reason", connection.details.summary()),
            ("detected_at", timestamp(connection.at)),
        ])
    }));
    // Each revocation a review imported in the period decided, at the time of the import.
    rows.extend(revocations(report).map(|(review, decision)| {
        sparse_row(&[
            ("source", report.header.source.clone()),
            ("run_id", review.decisions.run_id.clone()),
            ("event", "access_revoke_decided".to_string()),
            (
                "reason",
                format!("{} {}", decision.access.as_str(), decision.access_name),
            ),
            ("external_id", decision.account_external_id.clone()),
            ("username", decision.username.clone()),
            ("privilege_source", decision.granted.clone()),
            ("detected_at", timestamp(review.imported_at)),
        ])
    }));
    for event in events(report) {
        let row = row(&event);
        let fixed = |change: Option<&FieldChange>| {
            vec![
                report.header.source.clone(),
                event.run_id.to_string(),
                run_started_at(report, event.run_id).map_or_else(String::new, timestamp),
                event.event_type().as_str().to_string(),
                row.reason.clone(),
                event.external_id(),
                row.username.clone(),
                event.email().unwrap_or_default().to_string(),
                row.hr_key.clone().unwrap_or_default(),
                flag(row.privileged),
                flag(row.escalation),
                row.privilege_source.clone().unwrap_or_default(),
                row.groups.join("; "),
                row.groups_added.join("; "),
                row.groups_removed.join("; "),
                change.map_or_else(String::new, |c| c.field.clone()),
                change.map_or_else(String::new, |c| value_text(&c.old)),
                change.map_or_else(String::new, |c| value_text(&c.new)),
                row.last_seen_active_at.clone().unwrap_or_default(),
                timestamp(event.detected_at),
                row.latency_seconds
                    .map_or_else(String::new, |seconds| seconds.to_string()),
                flag(row.within_sla),
                row.last_login_at.clone().unwrap_or_default(),
            ]
        };
        if row.changes.is_empty() {
            rows.push(fixed(None));
        }
        for change in &row.changes {
            rows.push(fixed(Some(change)));
        }
    }
    csv(&COLUMNS, &rows)
}

/// RFC 4180 CSV with a header row.
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    let mut out = csv_rows(std::slice::from_ref(&header_row));
    out.push_str(&csv_rows(rows));
    out
}

/// CSV lines without a header, for output written as it is read. Cells are defused as every
/// CSV aksync writes ([`sheet::csv::defuse`]).
pub fn csv_rows(rows: &[Vec<String>]) -> String {
    let mut writer = sheet::csv::writer(Vec::new());
    for row in rows {
        sheet::csv::write_defused(&mut writer, row.iter().map(String::as_str))
            .expect("writing CSV to memory cannot fail");
    }
    let bytes = writer
        .into_inner()
        .expect("flushing CSV to memory cannot fail");
    String::from_utf8(bytes).expect("CSV written from strings is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let rows = vec![vec![
            "a,b".to_string(),
            "=SUM(1)".to_string(),
            "say \"hi\"".to_string(),
        ]];
        assert_eq!(
            csv(&["x", "y", "z"], &rows),
            "x,y,z\r\n\"a,b\",'=SUM(1),\"say \"\"hi\"\"\"\r\n"
        );
    }

    #[test]
    fn csv_defuses_cells_that_start_with_tab_or_carriage_return() {
        let rows = vec![vec!["\t=1+1".to_string(), "\r=1+1".to_string()]];
        assert_eq!(csv(&["a", "b"], &rows), "a,b\r\n'\t=1+1,\"'\r=1+1\"\r\n");
    }

    #[test]
    fn csv_gives_a_cell_that_starts_with_a_quote_one_more() {
        // So that a reader that takes the defusing quote off gets the cell back as it was.
        let rows = vec![vec!["'=1".to_string(), "it's".to_string()]];
        assert_eq!(csv(&["a", "b"], &rows), "a,b\r\n''=1,it's\r\n");
    }
}
