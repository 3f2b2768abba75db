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

/// A username that is markup in HTML and Markdown.
const HOSTILE_USERNAME: &str = "<b>&co";

fn at(hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, hour, minute, 0).unwrap()
}

/// A 64-hex id like Authentik's user uids.
fn uid(username: &str) -> String {
    hex::encode(Sha256::digest(username.as_bytes()))
}

fn group(name: &str) -> GroupRef {
    GroupRef {
        external_id: format!("pk-{}", name.to_lowercase().replace(' ', "-")),
        display_name: name.to_string(),
    }
}

fn change(field: &str, old: Value, new: Value) -> FieldChange {
    FieldChange {
        field: field.to_string(),
        old,
        new,
    }
}

fn leaver(
    username: &str,
    reason: LeaveReason,
    last_seen_active_at: Option<DateTime<Utc>>,
    detected_at: DateTime<Utc>,
) -> Leaver {
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
    }
}

fn joiner(username: &str, reason: JoinReason) -> Joiner {
    Joiner {
        external_id: uid(username),
        username: username.to_string(),
        canonical_email: None,
        reason,
        account_type: crate::normalize::AccountType::User,
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

fn mover(username: &str, changes: Vec<FieldChange>, groups_added: Vec<GroupRef>) -> Mover {
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

fn membership(username: &str, group_name: &str) -> MembershipRef {
    let group = group(group_name);
    MembershipRef {
        account_external_id: uid(username),
        username: username.to_string(),
        group_external_id: group.external_id,
        group_name: group.display_name,
    }
}

fn empty_diff(from_run: &str, to_run: &str) -> DirectoryDiff {
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
    }
}

fn header() -> ReportHeader {
    ReportHeader {
        source: "corp".to_string(),
        base_url: "https://auth.example.com".to_string(),
        authentik_version: Some("2025.10.1".to_string()),
        run_id: "R3".to_string(),
        started_at: at(2, 0),
        finished_at: at(2, 10),
        previous_run: Some("R2".to_string()),
        baseline_reason: None,
        period_from: Some("R1".to_string()),
        endpoints: vec![
            "GET /api/v3/core/users/?ordering=pk&include_groups=false&page_size=100".to_string(),
            "GET /api/v3/core/groups/?ordering=pk&include_users=false&page_size=100".to_string(),
        ],
        filter: Some("payload.type == 'internal' || payload.is_active".to_string()),
        group_sync: true,
        counts: Counts {
            accounts: 120,
            groups: 9,
            memberships: 300,
        },
        aksync_version: "0.1.0".to_string(),
        envelope_sha256: Some(uid("envelope")),
    }
}

/// Two diffs, R1 → R2 and R2 → R3, with every kind of event. R2 is in the trend; R3, the
/// report's own run, is not, so its events take the header's finish time.
fn period_report() -> Report {
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

    Report {
        header: header(),
        diffs: vec![first, second],
        trend: vec![
            trend_point("R1", at(0, 10), 118, 0, 0, 0),
            trend_point("R2", at(1, 0), 119, 0, 0, 1),
        ],
        generated_at: at(3, 0),
    }
}

fn empty_report() -> Report {
    Report {
        header: ReportHeader {
            previous_run: None,
            baseline_reason: None,
            period_from: None,
            ..header()
        },
        diffs: vec![empty_diff("R2", "R3")],
        trend: vec![],
        generated_at: at(3, 0),
    }
}

fn trend_point(
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

#[test]
fn csv_has_one_row_per_event_in_report_order() {
    let text = rendered(&period_report(), ReportFormat::Csv);
    let lines: Vec<&str> = text.split_terminator("\r\n").collect();
    assert_eq!(
        lines[0],
        "type,external_id,username,email,detail,detected_at,run_id"
    );
    let rows = &lines[1..];
    let expected = expected_events();
    assert_eq!(rows.len(), expected.len(), "{text}");
    for (row, (kind, _, ids)) in rows.iter().zip(&expected) {
        assert!(
            row.starts_with(&format!("{kind},{},", ids.join(":"))),
            "{row}"
        );
    }
    // Events of the first diff come first within a type, each with the run that found it.
    assert!(rows[0].ends_with(",2026-11-02T01:00:00Z,R2"), "{}", rows[0]);
    assert!(
        rows[1].contains("deactivated; groups: Engineering, SRE; latency 1h 05m"),
        "{}",
        rows[1]
    );
    // Detected by R3, which is not in the trend: the header's finish time.
    assert!(
        rows[4].contains("metadata.department: hr → it"),
        "{}",
        rows[4]
    );
    assert!(rows[4].ends_with(",2026-11-02T02:10:00Z,R3"), "{}", rows[4]);
    assert!(
        rows[6].contains(",added to authentik Admins (PRIVILEGE ESCALATION),"),
        "{}",
        rows[6]
    );
    assert!(
        rows[9].contains("display_name: Eng → Engineering"),
        "{}",
        rows[9]
    );
    assert!(
        rows[11].contains(",removed from SRE,2026-11-02T01:00:00Z,R2"),
        "{}",
        rows[11]
    );
}

#[test]
fn json_is_the_report_with_detection_latencies() {
    let report = period_report();
    let value: Value =
        serde_json::from_slice(&render(&report, ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(value["header"]["run_id"], "R3");
    let text = rendered(&report, ReportFormat::Json);
    assert!(
        text.starts_with("{\n  \"header\": {"),
        "the header is not first"
    );
    assert_eq!(
        value["diffs"][0]["leavers"][0]["detection_latency_seconds"],
        Value::Null
    );
    assert_eq!(
        value["diffs"][1]["leavers"][0]["detection_latency_seconds"],
        3900
    );
    assert_eq!(value["diffs"][1]["movers"][2]["privilege_escalation"], true);
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
fn html_is_self_contained_and_escaped() {
    let html = rendered(&period_report(), ReportFormat::Html);
    assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
    assert!(html.contains("<meta charset=\"utf-8\">"));
    assert!(html.contains("<title>Access changes of corp, runs R1 to R3</title>"));
    assert!(!html.to_lowercase().contains("<script"));
    for reference in ["src=", "href=", "url(", "@import"] {
        assert!(
            !html.contains(reference),
            "HTML refers to a resource: {reference}"
        );
    }
    for id in [
        "header",
        "escalations",
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
    assert!(html.contains("<section id=\"escalations-section\" class=\"alert\""));
    assert!(html.contains("1h 05m"));
}

#[test]
fn markdown_has_every_section_and_none_when_empty() {
    let markdown = rendered(&period_report(), ReportFormat::Markdown);
    let headings = [
        "## Run",
        "## Privilege escalations (1)",
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
    assert!(markdown.contains("- **`gone-known`** (deactivated), detected by run `R3`"));
    assert!(markdown.contains("  - Detection latency: 1h 05m, an upper bound"));
    assert!(markdown.contains("  - Detection latency: unknown, an upper bound"));
    assert!(markdown.contains("`payload.type == 'internal' || payload.is_active`"));
    assert!(!markdown.contains("None."));

    let empty = rendered(&empty_report(), ReportFormat::Markdown);
    assert_eq!(
        empty.matches("\nNone.\n").count(),
        Section::ALL.len(),
        "{empty}"
    );
    assert!(empty.contains("none: first run of this source, every record is new"));
    assert!(!empty.contains("Period from run"));
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
    assert_eq!(
        csv,
        "type,external_id,username,email,detail,detected_at,run_id\r\n"
    );
    let html = rendered(&report, ReportFormat::Html);
    assert_eq!(html.matches(">None.</td>").count(), Section::ALL.len());
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
