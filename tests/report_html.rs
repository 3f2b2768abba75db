//! The HTML report in a real browser: a report of 30 leavers with 64-hex uids and long group
//! lists lays out in a 1024 px wide window without horizontal overflow, and prints to PDF.
//! Needs Chromium, and poppler's pdftotext to read the PDF's page footers back; without them
//! the checks are skipped, except on CI (`CI` set), where they fail.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use aksync::diff::{DirectoryDiff, GroupChanges, GroupRef, LeaveReason, Leaver, MembershipChanges};
use aksync::ledger::entry::{
    AccessDecision, AccessKind, FileDigest, ReviewDecisions, ReviewSelection, Verdict,
};
use aksync::ledger::read::RecordedReview;
use aksync::output::report::{
    html_to_pdf, render, EvidenceInfo, Period, PeriodRun, Producer, Report, ReportFormat,
    ReportHeader, ReportSettings, Snapshot, TrendPoint,
};
use aksync::store::{Counts, DeliveryState, DeliveryStatus, RunStatus, TokenUser};
use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use common::browser::{chromium_or_skip, dump_dom, laid_out_width};
use sha2::{Digest, Sha256};

const LEAVERS: usize = 30;

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn hex_id(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

fn report() -> Report {
    let groups: Vec<GroupRef> = (0..12)
        .map(|index| GroupRef {
            external_id: hex_id(&format!("group {index}")),
            display_name: format!("Department of Extremely Long Group Names number {index}"),
        })
        .collect();
    let leavers = (0..LEAVERS)
        .map(|index| Leaver {
            external_id: hex_id(&format!("leaver {index}")),
            username: format!("leaver.with.a.rather.long.username.{index:02}"),
            canonical_email: Some(format!(
                "leaver.with.a.rather.long.username.{index:02}@corp.example.com"
            )),
            reason: if index % 2 == 0 {
                LeaveReason::Deactivated
            } else {
                LeaveReason::Deleted
            },
            groups_at_departure: groups[..(index % 12) + 1].to_vec(),
            last_seen_active_at: (index % 5 != 0)
                .then(|| at(2, 1) - Span::minutes(index as i64 * 7)),
            detected_at: at(2, 2),
            last_login_at: Some("2026-10-30T09:15:00Z".to_string()),
            authentik_last_updated: None,
            memberships_removed: index % 3 == 0,
            changes: vec![],
            privileged_at_departure: index % 4 == 0,
            privilege_source: (index % 4 == 0).then(|| "authentik Admins".to_string()),
            hr_key: Some(format!("E-{index:05}")),
            latency_seconds: (index % 5 != 0).then_some(60 + index as u64 * 7 * 60),
            sla_seconds: Some(3_600),
            within_sla: (index % 5 != 0).then_some(60 + index * 7 * 60 <= 3_600),
            login_after_last_seen: index % 7 == 0,
        })
        .collect();
    let diff = DirectoryDiff {
        source: "corp".to_string(),
        from_run: "01JC0000000000000000000001".to_string(),
        to_run: "01JC0000000000000000000002".to_string(),
        baseline: None,
        joiners: vec![],
        movers: vec![],
        leavers,
        purged: vec![],
        groups: GroupChanges::default(),
        memberships: MembershipChanges::default(),
        population: Default::default(),
        privilege_granted: vec![],
        privilege_removed: vec![],
        privileged_group_changes: vec![],
        scope_changes: Default::default(),
    };
    let trend = (0..14)
        .map(|day| TrendPoint {
            run_id: format!("01JC00000000000000000000{day:02}"),
            finished_at: at(day + 1, 2),
            accounts: 1_000 + u64::from(day) * 3,
            joiners: u64::from(day % 4),
            movers: u64::from(day % 3),
            leavers: if day == 13 {
                LEAVERS as u64
            } else {
                u64::from(day % 2)
            },
            baseline: day == 0,
        })
        .collect();
    let run = PeriodRun {
        run_id: "01JC0000000000000000000002".to_string(),
        status: RunStatus::Complete,
        error: None,
        started_at: at(2, 1),
        finished_at: at(2, 2),
        counts: Counts {
            accounts: 1_039,
            groups: 40,
            memberships: 5_000,
        },
        envelope_sha256: Some(hex_id("envelope")),
        envelope_lines: Some(1_200),
        // A long receiver error must wrap in its column like any other detail.
        delivery: Some(DeliveryState {
            status: DeliveryStatus::Parked,
            batch_size: 500,
            batches_delivered: 1,
            batches_total: 3,
            envelopes_delivered: Some(500),
            attempts: 3,
            rejections: 3,
            last_error: Some(
                "the receiver answered 413 Payload Too Large: request body exceeds the 1 MiB limit of this endpoint".to_string(),
            ),
            delivered_at: None,
        }),
        previous_run: Some("01JC0000000000000000000001".to_string()),
        baseline_reason: None,
        settings_fingerprint: hex_id("settings"),
        authentik_version: Some("2025.10.1".to_string()),
        aksync_version: "0.1.0".to_string(),
        token_user: Some(TokenUser {
            username: "aksync-reader".to_string(),
            pk: 12,
        }),
        changes: None,
        scope: Some(aksync::store::ScopeCounts {
            accounts_out_of_scope: 212,
            groups_out_of_scope: 3,
            memberships_out_of_scope: 840,
            filter_errors_excluded: 7,
            filter_errors_included: 0,
        }),
        quarantine: None,
        held_leavers: Vec::new(),
        entry_digest: Some(hex_id("entry")),
        expected_interval_seconds: Some(2_700),
    };
    Report {
        header: ReportHeader {
            report_id: "corp-0123456789ab".to_string(),
            source: "corp".to_string(),
            base_url: "https://authentik.corp.example.com".to_string(),
            run_id: "01JC0000000000000000000002".to_string(),
            period: Period {
                start: at(1, 2),
                end: at(2, 2),
                selection: "run 01JC0000000000000000000002".to_string(),
                start_run: Some("01JC0000000000000000000001".to_string()),
                end_run: Some("01JC0000000000000000000002".to_string()),
            },
            endpoints: vec![
                "GET /api/v3/core/users/?ordering=pk&include_groups=false&include_roles=false&page_size=100".to_string(),
                "GET /api/v3/core/groups/?ordering=pk&include_users=false&include_children=false&page_size=100".to_string(),
            ],
            filter: None,
            group_sync: true,
            settings: ReportSettings {
                sla_seconds: Some(3_600),
                expected_interval_seconds: 2_700,
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
                run_digest: Some(hex_id("entry")),
                signed_by: Some("ed25519:00112233445566ff".to_string()),
                oldest_evidence: None,
                backfilled_runs: vec![],
                replayed_runs: vec![],
                missing: vec![],
            },
        },
        runs: vec![run],
        diffs: vec![diff],
        start: Snapshot::default(),
        end: Snapshot::default(),
        privileged_at_restarts: Default::default(),
        settings_changes: vec![],
        connections: vec![],
        // An import with a long file name and a revocation of a deeply granted role, whose
        // cells must wrap like the others.
        access_reviews: vec![RecordedReview {
            seq: 7,
            imported_at: at(2, 1),
            entry_digest: hex_id("review entry"),
            decisions: ReviewDecisions {
                review_id: hex_id("review"),
                run_id: "01JC0000000000000000000001".to_string(),
                selection: ReviewSelection::default(),
                rows: 1200,
                undecided: 3,
                file: FileDigest {
                    name: "access-review-2026-q4-engineering-and-operations-final-v3.xlsx"
                        .to_string(),
                    sha256: hex_id("file"),
                    bytes: 81_920,
                },
                decisions: vec![AccessDecision {
                    row_id: "r0123456789abcdef".to_string(),
                    account_external_id: hex_id("revoked"),
                    username: "leaver.with.a.rather.long.username.01".to_string(),
                    access: AccessKind::Role,
                    access_external_id: "6f1c0e2a-0000-4000-8000-000000000001".to_string(),
                    access_name: "Security auditors with a long role name".to_string(),
                    granted: "via hr-team-8 → Engineering department → authentik Admins"
                        .to_string(),
                    decision: Verdict::Revoke,
                    reviewer: "Ann Auditor".to_string(),
                    reviewed_at: "2026-12-01".to_string(),
                    comment: "left the team in October; the role was never needed".to_string(),
                }],
                by: Producer {
                    host: "auditbox".to_string(),
                    os_user: "aksync".to_string(),
                    aksync_version: "0.1.0".to_string(),
                },
            },
        }],
        trend,
        generated_at: at(2, 3),
    }
}

#[test]
fn html_report_fits_a_1024px_window_and_prints_to_pdf() {
    let html = String::from_utf8(render(&report(), ReportFormat::Html).unwrap()).unwrap();
    assert!(!html.contains("<script"));
    let work = tempfile::tempdir().unwrap();
    let page = work.path().join("report.html");
    fs::write(&page, &html).unwrap();
    let Some(chromium) = chromium_or_skip("the HTML report") else {
        return;
    };

    let dom = dump_dom(&chromium, work.path(), "profile-dom", &page, 1024);
    let table_start = dom
        .find("<table id=\"leavers\"")
        .expect("no leavers table in the DOM");
    let table = &dom[table_start..table_start + dom[table_start..].find("</table>").unwrap()];
    let body = &table[table.find("<tbody>").unwrap()..];
    assert_eq!(
        body.matches("<tr>").count(),
        LEAVERS,
        "leaver rows in the DOM"
    );
    assert!(
        dom.contains("<svg id=\"trend-chart\""),
        "no trend chart in the DOM"
    );

    let (scroll_width, client_width) = laid_out_width(&chromium, work.path(), &html, 1024);
    assert!(
        client_width > 900,
        "the window is not 1024 px wide: {client_width}"
    );
    assert!(
        scroll_width <= client_width,
        "the page overflows horizontally: {scroll_width} px of content in {client_width} px"
    );

    let pdf = html_to_pdf(html.as_bytes(), &chromium).unwrap();
    assert!(pdf.starts_with(b"%PDF"), "not a PDF");
    assert!(
        pdf.len() > 1000,
        "a PDF of {} bytes cannot hold the report",
        pdf.len()
    );
    footer_on_every_page(&pdf, work.path());
}

/// Every page's footer has the report id and "page x/y", read back with poppler's pdftotext
/// where it is installed.
fn footer_on_every_page(pdf: &[u8], work: &Path) {
    let path = work.join("report.pdf");
    fs::write(&path, pdf).unwrap();
    let Ok(output) = Command::new("pdftotext")
        .args(["-layout"])
        .arg(&path)
        .arg("-")
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "pdftotext must be installed on CI (`apt-get install poppler-utils`)"
        );
        eprintln!("note: pdftotext not found, skipping the check of the PDF's page footers");
        return;
    };
    assert!(output.status.success(), "pdftotext failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let pages: Vec<&str> = text
        .split('\u{c}')
        .filter(|page| !page.trim().is_empty())
        .collect();
    assert!(
        pages.len() > 1,
        "a report of {LEAVERS} leavers has several pages"
    );
    for (index, page) in pages.iter().enumerate() {
        assert!(
            page.contains("aksync report corp-0123456789ab"),
            "page {} lacks the report id",
            index + 1
        );
        assert!(
            page.contains(&format!("page {}/{}", index + 1, pages.len())),
            "page {} lacks its number",
            index + 1
        );
    }
}
