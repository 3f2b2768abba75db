//! The read-only status page at `/`: every source's health (with, when it is unhealthy, when
//! its last complete run was), its next run and undelivered runs, then the last runs of all
//! sources with links to their reports (and a failed run's error in a row of its own). A
//! failed run stored no records, so its counts read "—", not 0. Everything the directory or a server controls is escaped, long values wrap,
//! and the page fits a 1280 px window without sideways scrolling.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::status::SourceStatus;
use crate::output::artifacts::report_path;
use crate::output::report::{escape_html, ReportFormat};
use crate::run::runner::run_duration;
use crate::store::{RunRecord, RunStatus};

/// How many runs the page lists.
const PAGE_RUNS: usize = 20;
/// The columns of the runs table.
const RUN_COLUMNS: usize = 12;
/// What a count reads when the run has none.
const NO_COUNT: &str = "—";
pub const REPORT_FORMATS: [ReportFormat; 5] = [
    ReportFormat::Html,
    ReportFormat::Markdown,
    ReportFormat::Json,
    ReportFormat::Csv,
    ReportFormat::Pdf,
];

/// Tables take the page's width; the cells of free text a server or the directory controls
/// (`wrap`: errors, reasons, names) break anywhere rather than widen it, times and run ids
/// never, the others at spaces.
const PAGE_STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#111}\
table{border-collapse:collapse;margin:8px 0 24px;width:100%}\
th,td{border:1px solid #999;padding:3px 6px;text-align:left;vertical-align:top;overflow-wrap:break-word}\
th{background:#eee;white-space:nowrap}td.n{text-align:right;white-space:nowrap}.nowrap{white-space:nowrap}\
.wrap{overflow-wrap:anywhere}.bad{color:#a00000;font-weight:600}.good{color:#005a00;font-weight:600}\
.note{color:#444}code{font-size:.9em}";

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn render(
    sources: &BTreeMap<String, SourceStatus>,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> String {
    let mut page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"30\">\n<title>aksync status</title>\n\
         <style>{PAGE_STYLE}</style>\n</head>\n<body>\n<h1>aksync status</h1>\n\
         <p>As of {}. Read-only; <a href=\"/healthz\">/healthz</a>, <a href=\"/metrics\">/metrics</a>.</p>\n\
         <h2>Sources</h2>\n<table>\n<tr><th>Source</th><th>Health</th><th>Last run</th>\
         <th>Next run</th><th>Schedule</th><th>Undelivered runs</th></tr>\n",
        when(now)
    );
    for (name, status) in sources {
        page.push_str(&format!(
            "<tr><td class=\"wrap\">{}</td><td class=\"wrap\">{}</td><td>{}</td><td class=\"nowrap\">{}</td><td><code>{}</code></td><td class=\"n\">{}</td></tr>\n",
            escape_html(name),
            health_cell(status, now),
            escape_html(&last_run(status)),
            status.next_run.map_or_else(|| "none".to_string(), when),
            escape_html(&status.schedule.to_string()),
            status.history.outbox_backlog
        ));
    }
    page.push_str(&format!(
        "</table>\n<h2>Last {PAGE_RUNS} runs</h2>\n<table>\n<tr><th>Run</th><th>Source</th>\
         <th>Status</th><th>Started</th><th>Took</th><th>Accounts</th><th>Groups</th>\
         <th>Memberships</th><th>Joiners</th><th>Movers</th><th>Leavers</th><th>Reports</th></tr>\n"
    ));
    let mut runs: Vec<&RunRecord> = sources
        .values()
        .flat_map(|status| &status.history.recent_runs)
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    for run in runs.into_iter().take(PAGE_RUNS) {
        page.push_str(&run_row(run, state_dir));
    }
    page.push_str("</table>\n</body>\n</html>\n");
    page
}

/// "healthy", or "unhealthy: why" and when the last complete run was.
fn health_cell(status: &SourceStatus, now: DateTime<Utc>) -> String {
    let Some(reason) = status.health(now).reason else {
        return "<span class=\"good\">healthy</span>".to_string();
    };
    let last_complete = match &status.history.last_complete {
        Some(run) => format!("last complete run {}", when(run.finished_at)),
        None => "no complete run yet".to_string(),
    };
    format!(
        "<span class=\"bad\">unhealthy</span>: {}<br><span class=\"note\">{}</span>",
        escape_html(&reason),
        escape_html(&last_complete)
    )
}

fn last_run(status: &SourceStatus) -> String {
    match (status.running_since, status.history.last_run()) {
        (Some(since), _) => format!("running since {}", when(since)),
        (None, Some(run)) => format!("{} {}", run.outcome(), when(run.finished_at)),
        (None, None) => "none yet".to_string(),
    }
}

fn run_row(run: &RunRecord, state_dir: &Path) -> String {
    let reports: Vec<String> = REPORT_FORMATS
        .iter()
        .filter(|format| report_path(state_dir, &run.source, &run.run_id, **format).is_file())
        .map(|format| {
            let file = format!("{}.{}", run.run_id, format.extension());
            format!(
                "<a href=\"/reports/{}/{}\">{}</a>",
                escape_html(&run.source),
                escape_html(&file),
                format.extension()
            )
        })
        .collect();
    // A failed run stored nothing: its zero counts are not a count of anything.
    let stored = |count: u64| match run.status {
        RunStatus::Complete => count.to_string(),
        _ => NO_COUNT.to_string(),
    };
    let found = |count: fn(&crate::store::ChangeCounts) -> u64| {
        run.changes.as_ref().map_or_else(
            || NO_COUNT.to_string(),
            |changes| count(changes).to_string(),
        )
    };
    // An error gets a row of its own below the run's, the table's whole width to wrap in.
    let error = run.error.as_deref().map_or_else(String::new, |error| {
        format!(
            "<tr><td class=\"wrap\" colspan=\"{RUN_COLUMNS}\"><span class=\"bad\">error</span>: {}</td></tr>\n",
            escape_html(error)
        )
    });
    format!(
        "<tr><td class=\"nowrap\"><code>{}</code></td><td class=\"wrap\">{}</td><td>{}</td><td class=\"nowrap\">{}</td><td class=\"n\">{:.1}s</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>\n{error}",
        escape_html(&run.run_id),
        escape_html(&run.source),
        run.outcome(),
        when(run.started_at),
        run_duration(run).as_secs_f64(),
        stored(run.counts.accounts),
        stored(run.counts.groups),
        stored(run.counts.memberships),
        found(|changes| changes.joiners),
        found(|changes| changes.movers),
        found(|changes| changes.leavers),
        reports.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::super::status::tests::{at, run, status_with};
    use super::*;

    #[test]
    fn the_page_escapes_what_the_directory_controls() {
        let dir = tempfile::tempdir().unwrap();
        let mut failed = run(RunStatus::Failed, "2026-05-04T12:30:05Z");
        failed.error = Some("<script>alert(1)</script>".into());
        let sources = BTreeMap::from([("corp".to_string(), status_with(vec![failed]))]);
        let page = render(&sources, dir.path(), at("2026-05-04T12:31:00Z"));
        assert!(!page.contains("<script"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("unhealthy"), "{page}");
    }

    #[test]
    fn failed_runs_have_no_counts_and_an_unhealthy_source_says_when_it_last_completed() {
        let dir = tempfile::tempdir().unwrap();
        let complete = run(RunStatus::Complete, "2026-05-04T12:00:05Z");
        let mut failed = run(RunStatus::Failed, "2026-05-04T12:30:05Z");
        failed.run_id = "01JTEST0000000000000000001".into();
        let sources = BTreeMap::from([
            (
                "corp".to_string(),
                status_with(vec![failed.clone(), complete.clone()]),
            ),
            ("hr".to_string(), status_with(vec![failed])),
        ]);
        let page = render(&sources, dir.path(), at("2026-05-04T12:31:00Z"));
        let row = |run_id: &str| {
            page.lines()
                .find(|line| line.contains(&format!("<code>{run_id}</code>")))
                .unwrap_or_else(|| panic!("no row of {run_id} in {page}"))
                .to_string()
        };
        let failed_row = row("01JTEST0000000000000000001");
        assert_eq!(
            failed_row.matches("<td class=\"n\">—</td>").count(),
            6,
            "{failed_row}"
        );
        assert!(
            !failed_row.contains("<td class=\"n\">0</td>"),
            "{failed_row}"
        );
        let complete_row = row(&complete.run_id);
        assert!(
            complete_row.contains("<td class=\"n\">12</td>"),
            "{complete_row}"
        );
        assert!(
            complete_row.contains("<td class=\"n\">1</td>"),
            "{complete_row}"
        );
        assert!(
            page.contains("last complete run 2026-05-04 12:00:05 UTC"),
            "{page}"
        );
        assert!(page.contains("no complete run yet"), "{page}");
    }
}
