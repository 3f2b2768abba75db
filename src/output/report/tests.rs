//! Every format on one hand-built period report holding every kind of event, and on an empty
//! one.

use chrono::TimeZone;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::chart::trend_chart;
use super::content::{format_latency, Section};
use super::*;
use crate::diff::{
    FieldChange, GroupChange, GroupChanges, GroupRef, JoinReason, Joiner, LeaveReason, Leaver,
    MembershipChanges, MembershipRef, Mover,
};
use crate::store::{Counts, RunStatus, TokenUser};

/// A username that is markup in HTML and Markdown.
pub(super) const HOSTILE_USERNAME: &str = "<b>&co";

pub(super) fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, hour, minute, 0).unwrap()
}

/// A 64-hex id like Authentik's user uids.
pub(super) fn uid(username: &str) -> String {
    hex::encode(Sha256::digest(username.as_bytes()))
}

pub(super) fn group(name: &str) -> GroupRef {
    GroupRef {
        external_id: format!("pk-{}", name.to_lowercase().replace(' ', "-")),
        display_name: name.to_string(),
    }
}

pub(super) fn change(field: &str, old: Value, new: Value) -> FieldChange {
    FieldChange {
        field: field.to_string(),
        old,
        new,
    }
}

pub(super) fn leaver(
    username: &str,
    reason: LeaveReason,
    last_seen_active_at: Option<DateTime<Utc>>,
    detected_at: DateTime<Utc>,
) -> Leaver {
    let latency_seconds =
        last_seen_active_at.map(|seen| (detected_at - seen).num_seconds().unsigned_abs());
    Leaver {
        external_id: uid(username),
        username: username.to_string(),
        canonical_email: Some(format!("{username}@example.com")),
        reason,
        groups_at_departure: vec![group("Engineering"), group("SRE")],
        last_seen_active_at,
        detected_at,
        last_login_at: Some("2026-11-01T08:00:00Z".to_string()),
        authentik_last_updated: Some("2026-11-01T09:00:00Z".to_string()),
        memberships_removed: reason == LeaveReason::Deleted,
        changes: vec![],
        privileged_at_departure: false,
        privilege_source: None,
        hr_key: None,
        latency_seconds,
        sla_seconds: Some(3_600),
        within_sla: latency_seconds.map(|latency| latency <= 3_600),
        login_after_last_seen: false,
    }
}

pub(super) fn joiner(username: &str, reason: JoinReason) -> Joiner {
    Joiner {
        external_id: uid(username),
        username: username.to_string(),
        canonical_email: None,
        reason,
        status: crate::run::normalize::AccountStatus::Active,
        account_type: crate::run::normalize::AccountType::User,
        is_superuser: false,
        added_at: Some("2026-11-01T09:00:00Z".to_string()),
        groups: vec![group("Engineering")],
        changes: vec![],
        groups_added: vec![],
        groups_removed: vec![],
        privilege_escalation: false,
        privileged: false,
        privilege_source: None,
        hr_key: None,
    }
}

pub(super) fn mover(
    username: &str,
    changes: Vec<FieldChange>,
    groups_added: Vec<GroupRef>,
) -> Mover {
    Mover {
        external_id: uid(username),
        username: username.to_string(),
        canonical_email: Some(format!("{username}@example.com")),
        privilege_escalation: groups_added
            .iter()
            .any(|g| g.display_name == "authentik Admins"),
        privileged: false,
        privilege_source: None,
        hr_key: None,
        changes,
        groups_added,
        groups_removed: vec![],
    }
}

pub(super) fn membership(username: &str, group_name: &str) -> MembershipRef {
    let group = group(group_name);
    MembershipRef {
        account_external_id: uid(username),
        username: username.to_string(),
        group_external_id: group.external_id,
        group_name: group.display_name,
    }
}

pub(super) fn empty_diff(from_run: &str, to_run: &str) -> DirectoryDiff {
    DirectoryDiff {
        source: "corp".to_string(),
        from_run: from_run.to_string(),
        to_run: to_run.to_string(),
        baseline: None,
        joiners: vec![],
        movers: vec![],
        leavers: vec![],
        purged: vec![],
        groups: GroupChanges::default(),
        memberships: MembershipChanges::default(),
        population: Default::default(),
        privilege_granted: vec![],
        privilege_removed: vec![],
        privileged_group_changes: vec![],
        scope_changes: Default::default(),
    }
}

pub(super) fn header() -> ReportHeader {
    ReportHeader {
        report_id: "corp-0123456789ab".to_string(),
        source: "corp".to_string(),
        base_url: "https://auth.example.com".to_string(),
        run_id: "R3".to_string(),
        period: Period {
            start: at(0, 10),
            end: at(2, 10),
            selection: "every run after R1 (its own changes not included) up to R3".to_string(),
            start_run: Some("R1".to_string()),
            end_run: Some("R3".to_string()),
        },
        endpoints: vec![
            "GET /api/v3/core/users/?ordering=pk&include_groups=false&page_size=100".to_string(),
            "GET /api/v3/core/groups/?ordering=pk&include_users=false&page_size=100".to_string(),
        ],
        filter: Some("payload.type == 'internal' || payload.is_active".to_string()),
        group_sync: true,
        settings: ReportSettings {
            sla_seconds: Some(3_600),
            expected_interval_seconds: 45 * 60,
            expected_interval_from: "sources.corp.expected_interval".to_string(),
            hr_key_field: Some("attributes.employee_id".to_string()),
            privileged_groups: vec![],
            privileged_roles: vec![],
        },
        producer: Producer {
            host: "auditbox".to_string(),
            os_user: "aksync".to_string(),
            aksync_version: "0.1.0".to_string(),
        },
        evidence: EvidenceInfo {
            run_digest: Some(uid("R3 entry")),
            signed_by: Some("ed25519:0011223344556677".to_string()),
            oldest_evidence: Some(OldestEvidence {
                run_id: Some("R1".to_string()),
                recorded_at: at(0, 10),
            }),
            backfilled_runs: vec![],
            replayed_runs: vec![],
            missing: vec![],
        },
    }
}

pub(super) fn period_run(
    run_id: &str,
    status: RunStatus,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
) -> PeriodRun {
    PeriodRun {
        run_id: run_id.to_string(),
        status,
        error: (status == RunStatus::Failed).then(|| "the server answered 503".to_string()),
        started_at: started,
        finished_at: finished,
        counts: Counts {
            accounts: 120,
            groups: 9,
            memberships: 300,
        },
        envelope_sha256: (status == RunStatus::Complete).then(|| uid(run_id)),
        envelope_lines: (status == RunStatus::Complete).then_some(40),
        delivery: None,
        previous_run: None,
        baseline_reason: None,
        settings_fingerprint: "f1".to_string(),
        authentik_version: Some("2025.10.1".to_string()),
        aksync_version: "0.1.0".to_string(),
        token_user: Some(TokenUser {
            username: "aksync-reader".to_string(),
            pk: 7,
        }),
        changes: None,
        scope: (run_id == "R2").then_some(crate::store::ScopeCounts {
            accounts_out_of_scope: 4,
            groups_out_of_scope: 1,
            memberships_out_of_scope: 6,
            filter_errors_excluded: 2,
            filter_errors_included: 0,
        }),
        quarantine: None,
        held_leavers: Vec::new(),
        entry_digest: (status != RunStatus::Failed).then(|| uid(&format!("{run_id} entry"))),
        expected_interval_seconds: Some(45 * 60),
    }
}

fn privileged(username: &str, source: &str) -> PrivilegedAccount {
    PrivilegedAccount {
        external_id: uid(username),
        username: username.to_string(),
        canonical_email: None,
        hr_key: None,
        privilege_source: source.to_string(),
        path: vec![],
    }
}

/// Two diffs, R1 → R2 and R2 → R3, with every kind of event. R2 is in the trend; R3, the
/// report's own run, is not, so its events take the header's finish time.
pub(super) fn period_report() -> Report {
    let mut first = empty_diff("R1", "R2");
    first
        .leavers
        .push(leaver("gone-unknown", LeaveReason::Deleted, None, at(1, 0)));
    first
        .memberships
        .removed
        .push(membership("gone-unknown", "SRE"));

    let mut second = empty_diff("R2", "R3");
    second.leavers.push(leaver(
        "gone-known",
        LeaveReason::Deactivated,
        Some(at(1, 5)),
        at(2, 10),
    ));
    second
        .joiners
        .push(joiner(HOSTILE_USERNAME, JoinReason::Created));
    second
        .joiners
        .push(joiner("back-again", JoinReason::Reactivated));
    second.movers.push(mover(
        "moved-dept",
        vec![change("metadata.department", json!("hr"), json!("it"))],
        vec![],
    ));
    second.movers.push(mover(
        "moved-bio",
        vec![change(
            "metadata.bio",
            json!("line one\nold line\nline three"),
            json!("line one\nnew line\nline three"),
        )],
        vec![],
    ));
    second
        .movers
        .push(mover("now-admin", vec![], vec![group("authentik Admins")]));
    second.groups.created.push(group("Contractors"));
    second.groups.deleted.push(group("Old Team"));
    second.groups.changed.push(GroupChange {
        external_id: group("Engineering").external_id,
        display_name: "Engineering".to_string(),
        changes: vec![
            change("display_name", json!("Eng"), json!("Engineering")),
            change("is_superuser", json!(false), json!(true)),
        ],
    });
    second
        .memberships
        .added
        .push(membership(HOSTILE_USERNAME, "Engineering"));

    second.privilege_granted.push(crate::diff::PrivilegeChange {
        external_id: uid("now-admin"),
        username: "now-admin".to_string(),
        canonical_email: None,
        hr_key: Some("E-7".to_string()),
        reason: crate::diff::PrivilegeReason::Moved,
        privilege_source: "authentik Admins".to_string(),
        path: vec![group("authentik Admins")],
        groups_changed: vec![],
    });
    let mut r2 = period_run("R2", RunStatus::Complete, at(0, 58), at(1, 0));
    r2.previous_run = Some("R1".to_string());
    let mut r3 = period_run("R3", RunStatus::Complete, at(2, 0), at(2, 10));
    r3.previous_run = Some("R2".to_string());
    Report {
        header: header(),
        runs: vec![
            r2,
            period_run("RF", RunStatus::Failed, at(1, 30), at(1, 31)),
            r3,
        ],
        diffs: vec![first, second],
        start: Snapshot {
            run_id: Some("R1".to_string()),
            accounts: 120,
            active: 110,
            privileged: vec![privileged("root", "superuser flag")],
            unavailable: None,
        },
        end: Snapshot {
            run_id: Some("R3".to_string()),
            accounts: 120,
            active: 110,
            privileged: vec![
                privileged("now-admin", "authentik Admins"),
                privileged("root", "superuser flag"),
            ],
            unavailable: None,
        },
        privileged_at_restarts: BTreeMap::new(),
        settings_changes: vec![SettingsChanged {
            run_id: "R3".to_string(),
            at: at(2, 0),
            changes: vec![crate::ledger::entry::SettingChange {
                key: "privileged_groups".to_string(),
                old: json!([]),
                new: json!(["Finance"]),
            }],
        }],
        connections: vec![],
        access_reviews: vec![],
        trend: vec![
            trend_point("R1", at(0, 10), 118, 0, 0, 0),
            trend_point("R2", at(1, 0), 119, 0, 0, 1),
        ],
        generated_at: at(3, 0),
    }
}

pub(super) fn empty_report() -> Report {
    let mut run = period_run("R3", RunStatus::Complete, at(2, 0), at(2, 10));
    run.previous_run = Some("R2".to_string());
    Report {
        header: ReportHeader {
            period: Period {
                start: at(1, 50),
                end: at(2, 10),
                selection: "run R3".to_string(),
                start_run: Some("R2".to_string()),
                end_run: Some("R3".to_string()),
            },
            ..header()
        },
        runs: vec![run],
        diffs: vec![empty_diff("R2", "R3")],
        start: Snapshot::default(),
        end: Snapshot::default(),
        privileged_at_restarts: BTreeMap::new(),
        settings_changes: vec![],
        connections: vec![],
        access_reviews: vec![],
        trend: vec![],
        generated_at: at(3, 0),
    }
}

pub(super) fn trend_point(
    run_id: &str,
    finished_at: DateTime<Utc>,
    accounts: u64,
    joiners: u64,
    movers: u64,
    leavers: u64,
) -> TrendPoint {
    TrendPoint {
        run_id: run_id.to_string(),
        finished_at,
        accounts,
        joiners,
        movers,
        leavers,
        baseline: false,
    }
}

/// The (name, ids) of every event of [`period_report`], in CSV order.
fn expected_events() -> Vec<(&'static str, &'static str, Vec<String>)> {
    let account = |name: &'static str, kind| (kind, name, vec![uid(name)]);
    let group_event = |name: &'static str, kind| (kind, name, vec![group(name).external_id]);
    let member = |name: &'static str, group_name: &str, kind| {
        (kind, name, vec![uid(name), group(group_name).external_id])
    };
    vec![
        account("gone-unknown", "leaver"),
        account("gone-known", "leaver"),
        account(HOSTILE_USERNAME, "joiner"),
        account("back-again", "joiner"),
        account("moved-dept", "mover"),
        account("moved-bio", "mover"),
        account("now-admin", "mover"),
        group_event("Contractors", "group_created"),
        group_event("Old Team", "group_deleted"),
        group_event("Engineering", "group_changed"),
        member(HOSTILE_USERNAME, "Engineering", "membership_added"),
        member("gone-unknown", "SRE", "membership_removed"),
    ]
}

fn rendered(report: &Report, format: ReportFormat) -> String {
    String::from_utf8(render(report, format).unwrap()).unwrap()
}

#[test]
fn every_format_names_every_event() {
    let report = period_report();
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Csv,
        ReportFormat::Html,
    ] {
        let text = rendered(&report, format);
        for (_, name, ids) in expected_events() {
            let name = if format == ReportFormat::Html {
                html::escape(name)
            } else {
                name.to_string()
            };
            assert!(text.contains(&name), "{format:?} lacks {name}");
            for id in ids {
                assert!(text.contains(&id), "{format:?} lacks {id} of {name}");
            }
        }
    }
}

#[test]
fn rendering_is_deterministic() {
    let report = period_report();
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Csv,
        ReportFormat::Html,
    ] {
        assert_eq!(
            render(&report, format).unwrap(),
            render(&report, format).unwrap()
        );
    }
}

/// The CSV's rows as maps from column to cell.
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    let columns: Vec<&str> = lines[0].split(',').collect();
    lines[1..]
        .iter()
        .map(|line| {
            // The fixture's cells hold no quoted commas except where a test says so.
            let cells = split_csv(line);
            assert_eq!(cells.len(), columns.len(), "{line}");
            columns.iter().map(|c| c.to_string()).zip(cells).collect()
        })
        .collect()
}

fn split_csv(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cells.last_mut().unwrap().push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => cells.push(String::new()),
            (c, _) => cells.last_mut().unwrap().push(c),
        }
    }
    cells
}

#[test]
fn csv_has_exactly_the_columns_and_one_row_per_event_and_field() {
    let text = rendered(&period_report(), ReportFormat::Csv);
    assert_eq!(
        text.split_terminator("\r\n").next().unwrap(),
        "source,run_id,run_started_at,event,reason,external_id,username,email,hr_key,privileged,escalation,privilege_source,groups,groups_added,groups_removed,field,old,new,last_seen_active_at,detected_at,latency_seconds,within_sla,last_login_at"
    );
    let all_rows = csv_rows(&text);
    // Every run first, the failed one with its error, and the settings a run changed.
    let runs: Vec<(&str, &str, &str)> = all_rows[..4]
        .iter()
        .map(|row| {
            (
                row["run_id"].as_str(),
                row["event"].as_str(),
                row["reason"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        vec![
            ("R2", "run", "complete"),
            ("RF", "run", "failed: the server answered 503"),
            ("R3", "run", "complete"),
            ("R3", "settings_changed", "")
        ]
    );
    let setting = &all_rows[3];
    assert_eq!(
        (
            setting["field"].as_str(),
            setting["old"].as_str(),
            setting["new"].as_str()
        ),
        ("privileged_groups", "[]", r#"["Finance"]"#)
    );
    let rows = &all_rows[4..];
    let kinds: Vec<&str> = rows.iter().map(|row| row["event"].as_str()).collect();
    let mut expected: Vec<&str> = expected_events().iter().map(|(kind, _, _)| *kind).collect();
    // The privilege grant of now-admin, after the leavers; the group change of two fields
    // has two rows.
    expected.insert(2, "privilege_granted");
    expected.insert(11, "group_changed");
    assert_eq!(kinds, expected, "{text}");
    let unknown = &rows[0];
    assert_eq!(unknown["run_id"], "R2");
    assert_eq!(unknown["run_started_at"], "2026-11-02T00:58:00Z");
    assert_eq!(unknown["detected_at"], "2026-11-02T01:00:00Z");
    assert_eq!(unknown["latency_seconds"], "");
    assert_eq!(unknown["within_sla"], "");
    let known = &rows[1];
    assert_eq!(known["reason"], "deactivated");
    assert_eq!(known["groups"], "Engineering; SRE");
    assert_eq!(known["latency_seconds"], "3900");
    assert_eq!(
        known["within_sla"], "false",
        "3900 s against an SLA of 3600 s"
    );
    assert_eq!(known["privileged"], "false");
    assert_eq!(known["last_login_at"], "2026-11-01T08:00:00Z");
    let grant = &rows[2];
    assert_eq!(
        (
            grant["escalation"].as_str(),
            grant["privilege_source"].as_str(),
            grant["hr_key"].as_str()
        ),
        ("true", "authentik Admins", "E-7")
    );
    let department = rows
        .iter()
        .find(|row| row["field"] == "metadata.department")
        .unwrap();
    assert_eq!(
        (department["old"].as_str(), department["new"].as_str()),
        ("hr", "it")
    );
    assert_eq!(department["event"], "mover");
    let removed = rows.last().unwrap();
    assert_eq!(removed["event"], "membership_removed");
    assert_eq!(removed["groups_removed"], "SRE");
}

#[test]
fn json_has_exactly_the_issues_keys_and_the_period_figures() {
    let report = period_report();
    let value: Value =
        serde_json::from_slice(&render(&report, ReportFormat::Json).unwrap()).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    let mut expected = vec![
        "period",
        "runs",
        "coverage_gaps",
        "roll_forward",
        "privileged_accounts",
        "privilege_granted",
        "privilege_removed",
        "privileged_group_changes",
        "leavers",
        "latency",
        "joiners",
        "movers",
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(value["period"]["report_id"], "corp-0123456789ab");
    assert_eq!(value["period"]["producer"]["host"], "auditbox");
    assert_eq!(
        value["period"]["token_users"][0]["username"],
        "aksync-reader"
    );
    assert_eq!(value["runs"].as_array().unwrap().len(), 3);
    assert_eq!(value["runs"][1]["status"], "failed");
    assert_eq!(value["runs"][1]["error"], "the server answered 503");
    assert_eq!(
        value["privileged_accounts"]["end"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(value["roll_forward"]["privileged"]["start"], 1);
    assert_eq!(value["roll_forward"]["privileged"]["added"], 1);
    assert_eq!(value["roll_forward"]["privileged"]["end"], 2);
    assert_eq!(value["roll_forward"]["privileged"]["reconciles"], true);
    assert_eq!(value["privilege_granted"][0]["run_id"], "R3");
    assert_eq!(value["leavers"][0]["latency_seconds"], Value::Null);
    assert_eq!(value["leavers"][1]["latency_seconds"], 3900);
    assert_eq!(value["leavers"][1]["within_sla"], false);
    let latency = &value["latency"];
    let latency_keys: Vec<&String> = latency.as_object().unwrap().keys().collect();
    assert_eq!(
        latency_keys,
        vec![
            "breaches",
            "max_seconds",
            "median_seconds",
            "n",
            "p95_seconds"
        ]
    );
    assert_eq!(latency["n"], 1);
    assert_eq!(latency["breaches"][0]["username"], "gone-known");
    assert_eq!(value["movers"][2]["privilege_escalation"], true);
    assert_eq!(value["joiners"][0]["status"], "ACTIVE");
}

#[test]
fn long_multi_line_values_show_as_a_unified_diff() {
    let report = period_report();
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = rendered(&report, format);
        for line in [
            "--- old",
            "+++ new",
            "-old line",
            "+new line",
            " line three",
        ] {
            assert!(text.contains(line), "{format:?} lacks {line:?}");
        }
    }
}

#[test]
fn values_too_large_to_diff_line_by_line_are_shown_by_their_sizes() {
    let lines = |prefix: &str, count: usize| {
        (0..count)
            .map(|n| format!("{prefix} {n}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (old, new) = (lines("old", 60_000), lines("new", 60_000));
    let sizes = format!("changed, {} bytes → {} bytes", old.len(), new.len());
    let mut report = period_report();
    report.diffs[1].movers.push(mover(
        "huge-bio",
        vec![
            change("metadata.huge", json!(old), json!(new)),
            // Within the bounds, a long value still gets its diff.
            change(
                "metadata.notes",
                json!(lines("note", 900)),
                json!(lines("note", 901)),
            ),
        ],
        vec![],
    ));
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = rendered(&report, format);
        assert!(text.contains(&sizes), "{format:?} lacks {sizes:?}");
        assert!(
            !text.contains("old 59999"),
            "{format:?} holds the huge value"
        );
        assert!(
            text.contains("+note 900"),
            "{format:?} lacks the bounded diff"
        );
    }
}

#[test]
fn html_is_self_contained_and_escaped() {
    let html = rendered(&period_report(), ReportFormat::Html);
    assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
    assert!(html.contains("<meta charset=\"utf-8\">"));
    assert!(html.contains(
        "<title>Access report of corp, 2026-11-02T00:10:00Z to 2026-11-02T02:10:00Z</title>"
    ));
    assert!(!html.to_lowercase().contains("<script"));
    for reference in ["src=", "url(", "@import"] {
        assert!(
            !html.contains(reference),
            "HTML refers to a resource: {reference}"
        );
    }
    // Links go to the report's own sections only.
    assert!(html.matches("href=").count() == html.matches("href=\"#").count());
    for id in [
        "summary",
        "period",
        "runs",
        "coverage",
        "roll-forward",
        "privileged-start",
        "privileged-end",
        "privilege-granted",
        "privilege-removed",
        "privileged-groups",
        "terminations",
        "leavers",
        "joiners",
        "movers",
        "groups",
        "memberships",
        "trend-chart",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no id {id}");
    }
    assert!(html.contains("&lt;b&gt;&amp;co"));
    assert!(!html.contains(HOSTILE_USERNAME));
    assert!(html.contains("payload.type == &#39;internal&#39; || payload.is_active"));
    assert!(html.contains("<section id=\"privilege-granted-section\" class=\"alert\""));
    assert!(html.contains("<a href=\"#runs-section\">Runs in period</a>"));
    assert!(html.contains("1h 05m"));
    // Every printed page carries the report id and its number.
    assert!(html.contains("@bottom-left { content: \"aksync report corp-0123456789ab\""));
    assert!(html.contains("counter(page) \"/\" counter(pages)"));
    // Run ids come with their times.
    assert!(html.contains("R2 (2026-11-02T01:00:00Z)"));
}

#[test]
fn markdown_has_every_section_and_none_when_empty() {
    let markdown = rendered(&period_report(), ReportFormat::Markdown);
    // A run with filters says what they left out beside its counts.
    assert!(markdown.contains(
        "120 accounts, 9 groups, 300 memberships in scope; out of scope: 4 accounts, 1 groups, 6 memberships; filter errors: 2 excluded, 0 included"
    ));
    let headings = [
        "## Summary",
        "## Period",
        "## Runs in period (3)",
        "## Coverage gaps (2)",
        "## Roll-forward",
        "## Privileged accounts at the start (1)",
        "## Privileged accounts at the end (2)",
        "## Privilege granted (1)",
        "## Privilege removed (0)",
        "## Privileged group changes (0)",
        "## Terminations and timeliness",
        "## Leavers (2)",
        "## Joiners (2)",
        "## Movers (3)",
        "## Group changes (3)",
        "## Membership changes (2)",
    ];
    let positions: Vec<usize> = headings
        .iter()
        .map(|heading| {
            markdown
                .find(heading)
                .unwrap_or_else(|| panic!("no {heading}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|pair| pair[0] < pair[1]),
        "sections out of order"
    );
    assert!(markdown
        .contains("- **`gone-known`** (deactivated), detected by run `R3 (2026-11-02T02:10:00Z)`"));
    assert!(markdown.contains("  - Detection latency: 1h 05m, an upper bound"));
    assert!(markdown.contains("  - Detection latency: unknown, an upper bound"));
    assert!(markdown.contains("  - Within SLA: no"));
    assert!(markdown.contains("`payload.type == 'internal' || payload.is_active`"));
    assert!(
        markdown.contains("| [Runs in period](#runs) | 3 (2 complete, 1 failed, 0 quarantined) |")
    );
    assert!(markdown.contains("<a id=\"runs\"></a>"));
    assert!(markdown.contains("**SLA BREACH**"));

    let empty = rendered(&empty_report(), ReportFormat::Markdown);
    // Connections, access reviews, revocations, coverage gaps, privileged at start and end,
    // granted, removed, group changes, settings changes, scope changes, quarantined runs,
    // and the event sections.
    assert_eq!(
        empty.matches("\nNone.\n").count(),
        12 + Section::ALL.len(),
        "{empty}"
    );
}

#[test]
fn markdown_escapes_table_cells_and_code_spans() {
    let mut report = empty_report();
    report.diffs[0]
        .memberships
        .added
        .push(membership("a|b`c", "Ops | On-call"));
    let markdown = rendered(&report, ReportFormat::Markdown);
    let row = markdown
        .lines()
        .find(|line| line.starts_with("| added"))
        .unwrap();
    assert_eq!(row.matches(" | ").count(), 5, "{row}");
    assert!(row.contains("``a\\|b`c``"), "{row}");
    assert!(row.contains("Ops \\| On-call"), "{row}");
}

#[test]
fn markdown_and_html_write_control_characters_out() {
    let hostile = "Eve\u{1b}]0;pwned\u{7}\u{1b}[2J\r\nroot\u{202e}x";
    let mut report = empty_report();
    report.diffs[0]
        .memberships
        .added
        .push(membership(hostile, hostile));
    for format in [ReportFormat::Markdown, ReportFormat::Html] {
        let text = rendered(&report, format);
        let raw = text
            .chars()
            .find(|&c| (c.is_control() && c != '\n') || c == '\u{202e}');
        assert_eq!(raw, None, "{format:?}");
        assert!(text.contains("\\u{1b}]0;pwned\\u{7}"), "{format:?}");
    }
}

#[test]
fn empty_report_says_none_in_every_format() {
    let report = empty_report();
    let csv = rendered(&report, ReportFormat::Csv);
    assert_eq!(csv.lines().count(), 2, "a header and the run alone: {csv}");
    let html = rendered(&report, ReportFormat::Html);
    assert_eq!(html.matches(">None.</td>").count(), 12 + Section::ALL.len());
    assert!(!html.contains("class=\"alert\""));
    assert!(html.contains("No complete runs to chart yet."));
}

#[test]
fn trend_chart_scales_zero_one_and_many_runs() {
    let one = trend_chart(&[trend_point("R1", at(0, 0), 10, 1, 2, 3)]);
    assert!(one.contains("<circle") && !one.contains("<polyline"));
    assert!(one.contains("2026-11-02 00:00 UTC"));
    let many: Vec<TrendPoint> = (0..40)
        .map(|run| {
            trend_point(
                &format!("R{run}"),
                at(run / 4, run % 4 * 15),
                100 + u64::from(run),
                1,
                0,
                2,
            )
        })
        .collect();
    let chart = trend_chart(&many);
    assert!(chart.contains("<polyline"));
    assert_eq!(
        chart.matches("<circle").count(),
        40 + 1,
        "a marker per run, and the legend's"
    );
    assert!(chart.contains("2026-11-02 00:00 UTC") && chart.contains("2026-11-02 09:45 UTC"));
    assert!(chart.contains("<title id=\"trend-chart-title\">"));
    for series in ["Accounts", "Joiners", "Movers", "Leavers"] {
        assert!(
            chart.contains(&format!(">{series}</text>")),
            "legend lacks {series}"
        );
    }
}

#[test]
fn latency_reads_in_the_largest_units() {
    assert_eq!(format_latency(0), "0s");
    assert_eq!(format_latency(45), "45s");
    assert_eq!(format_latency(60), "1m");
    assert_eq!(format_latency(3_900), "1h 05m");
    assert_eq!(
        format_latency(2 * 86_400 + 3 * 3_600 + 5 * 60 + 59),
        "2d 03h 05m"
    );
}

#[test]
fn formats_parse_by_name_and_extension() {
    for format in [
        ReportFormat::Markdown,
        ReportFormat::Json,
        ReportFormat::Csv,
        ReportFormat::Html,
        ReportFormat::Pdf,
    ] {
        assert_eq!(ReportFormat::parse(format.extension()), Some(format));
    }
    assert_eq!(
        ReportFormat::parse("Markdown"),
        Some(ReportFormat::Markdown)
    );
    assert_eq!(ReportFormat::parse("docx"), None);
}
