//! The monitoring endpoint (off unless `[http] listen` is set; loopback unless
//! `allow_remote`): `/healthz`, `/metrics`, a read-only status page at `/`, and the runs'
//! reports from `<state_dir>/reports/<source>/<file>`. Nothing else is served: not the
//! configuration, not a token, no file outside the reports directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics;
use super::status::{SourceStatus, StatusBoard};
use crate::artifacts::report_path;
use crate::clock::Clock;
use crate::report::{escape_html, ReportFormat};
use crate::runner::run_duration;
use crate::store::RunRecord;

/// How many runs the status page lists.
const PAGE_RUNS: usize = 20;
/// Pages and reports load nothing from anywhere; the reports style themselves inline.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";
const REPORT_FORMATS: [ReportFormat; 5] = [
    ReportFormat::Html,
    ReportFormat::Markdown,
    ReportFormat::Json,
    ReportFormat::Csv,
    ReportFormat::Pdf,
];

pub struct HttpState {
    pub board: Arc<StatusBoard>,
    pub state_dir: PathBuf,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (http.listen): {reason}")]
pub struct BindError {
    addr: SocketAddr,
    reason: String,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|error| BindError {
        addr,
        reason: error.to_string(),
    })
}

/// Serves until `stop` is cancelled.
pub fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let app = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/reports/{*path}", get(report))
        .fallback(not_found)
        .with_state(state);
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!("the HTTP endpoint stopped: {error}");
        }
    })
}

async fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (CONTENT_TYPE, "text/plain; charset=utf-8"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

#[derive(Serialize)]
struct HealthBody {
    healthy: bool,
    sources: BTreeMap<String, SourceHealth>,
}

#[derive(Serialize)]
struct SourceHealth {
    healthy: bool,
    reason: Option<String>,
    schedule: String,
    next_run: Option<DateTime<Utc>>,
    running_since: Option<DateTime<Utc>>,
    last_run: Option<LastRun>,
    last_complete_at: Option<DateTime<Utc>>,
    outbox_backlog: u64,
}

#[derive(Serialize)]
struct LastRun {
    run_id: String,
    status: &'static str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    error: Option<String>,
}

async fn healthz(State(state): State<Arc<HttpState>>) -> Response {
    let now = state.clock.now();
    let sources: BTreeMap<String, SourceHealth> = state
        .board
        .snapshot()
        .into_iter()
        .map(|(name, status)| (name, source_health(&status, now)))
        .collect();
    let healthy = sources.values().all(|source| source.healthy);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(HealthBody { healthy, sources })).into_response()
}

fn source_health(status: &SourceStatus, now: DateTime<Utc>) -> SourceHealth {
    let health = status.health(now);
    SourceHealth {
        healthy: health.healthy,
        reason: health.reason,
        schedule: status.schedule.to_string(),
        next_run: status.next_run,
        running_since: status.running_since,
        last_run: status.history.last_run().map(|run| LastRun {
            run_id: run.run_id.clone(),
            status: run.status.as_str(),
            started_at: run.started_at,
            finished_at: run.finished_at,
            error: run.error.clone(),
        }),
        last_complete_at: status
            .history
            .last_complete
            .as_ref()
            .map(|run| run.finished_at),
        outbox_backlog: status.history.outbox_backlog,
    }
}

async fn metrics_text(State(state): State<Arc<HttpState>>) -> Response {
    let text = metrics::render(&state.board.snapshot(), state.clock.now());
    (
        [
            (CONTENT_TYPE, metrics::CONTENT_TYPE),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

async fn status_page(State(state): State<Arc<HttpState>>) -> Response {
    let page = tokio::task::spawn_blocking(move || {
        render_status_page(&state.board.snapshot(), &state.state_dir, state.clock.now())
    })
    .await;
    match page {
        Ok(page) => html(page),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
}

fn html(page: String) -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

const PAGE_STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#111}\
table{border-collapse:collapse;margin:8px 0 24px}th,td{border:1px solid #999;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#eee}.bad{color:#a00000;font-weight:600}.good{color:#005a00;font-weight:600}code{font-size:.9em}";

fn render_status_page(
    sources: &BTreeMap<String, SourceStatus>,
    state_dir: &Path,
    now: DateTime<Utc>,
) -> String {
    let when = |at: DateTime<Utc>| at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
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
        let health = status.health(now);
        let health_cell = match &health.reason {
            None => "<span class=\"good\">healthy</span>".to_string(),
            Some(reason) => format!(
                "<span class=\"bad\">unhealthy</span>: {}",
                escape_html(reason)
            ),
        };
        let last_run = match (status.running_since, status.history.last_run()) {
            (Some(since), _) => format!("running since {}", when(since)),
            (None, Some(run)) => format!("{} {}", run.status.as_str(), when(run.finished_at)),
            (None, None) => "none yet".to_string(),
        };
        page.push_str(&format!(
            "<tr><td>{}</td><td>{health_cell}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>\n",
            escape_html(name),
            escape_html(&last_run),
            status.next_run.map_or_else(|| "none".to_string(), when),
            escape_html(&status.schedule.to_string()),
            status.history.outbox_backlog
        ));
    }
    page.push_str(&format!(
        "</table>\n<h2>Last {PAGE_RUNS} runs</h2>\n<table>\n<tr><th>Run</th><th>Source</th>\
         <th>Status</th><th>Started</th><th>Took</th><th>Accounts</th><th>Groups</th>\
         <th>Memberships</th><th>Joiners</th><th>Movers</th><th>Leavers</th><th>Reports</th>\
         <th>Error</th></tr>\n"
    ));
    let mut runs: Vec<&RunRecord> = sources
        .values()
        .flat_map(|status| &status.history.recent_runs)
        .collect();
    runs.sort_by(|a, b| b.run_id.cmp(&a.run_id));
    for run in runs.into_iter().take(PAGE_RUNS) {
        let changes = run.changes.unwrap_or_default();
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
        page.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape_html(&run.run_id),
            escape_html(&run.source),
            run.status.as_str(),
            when(run.started_at),
            run_duration(run).as_secs_f64(),
            run.counts.accounts,
            run.counts.groups,
            run.counts.memberships,
            changes.joiners,
            changes.movers,
            changes.leavers,
            reports.join(" "),
            escape_html(run.error.as_deref().unwrap_or_default()),
        ));
    }
    page.push_str("</table>\n</body>\n</html>\n");
    page
}

async fn report(State(state): State<Arc<HttpState>>, UrlPath(path): UrlPath<String>) -> Response {
    let Some((relative, content_type)) = report_request(&path) else {
        return not_found().await;
    };
    let reports = state.state_dir.join("reports");
    let file = tokio::task::spawn_blocking(move || read_report(&reports, &relative)).await;
    match file {
        Ok(Some(bytes)) => (
            [
                (CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(PAGE_POLICY),
                ),
                (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            ],
            bytes,
        )
            .into_response(),
        _ => not_found().await,
    }
}

/// `<source>/<run_id>.<ext>` (already percent-decoded) as a relative path and its content
/// type, when both parts are plain names: no separator, no `..` or other dot name, no
/// absolute path, nothing but letters, digits, `-`, `_` and the one dot of the extension.
fn report_request(path: &str) -> Option<(PathBuf, &'static str)> {
    let (source, file) = path.split_once('/')?;
    let (stem, extension) = file.split_once('.')?;
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !plain(source) || !plain(stem) {
        return None;
    }
    let content_type = match ReportFormat::parse(extension)? {
        format if format.extension() != extension => return None,
        ReportFormat::Html => "text/html; charset=utf-8",
        ReportFormat::Markdown => "text/markdown; charset=utf-8",
        ReportFormat::Json => "application/json",
        ReportFormat::Csv => "text/csv; charset=utf-8",
        ReportFormat::Pdf => "application/pdf",
    };
    Some((Path::new(source).join(file), content_type))
}

/// A regular file inside the reports directory: a symlink, at the end or on the way, that
/// leads elsewhere is refused.
fn read_report(reports: &Path, relative: &Path) -> Option<Vec<u8>> {
    let path = reports.join(relative);
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    let root = reports.canonicalize().ok()?;
    if !path.canonicalize().ok()?.starts_with(&root) {
        return None;
    }
    std::fs::read(&path).ok()
}

#[cfg(test)]
mod tests {
    use super::super::status::tests::{run, status_with};
    use super::*;
    use crate::store::RunStatus;

    #[test]
    fn only_plain_report_names_are_served() {
        let (path, content_type) = report_request("corp/01JTEST.html").unwrap();
        assert_eq!(path, Path::new("corp/01JTEST.html"));
        assert_eq!(content_type, "text/html; charset=utf-8");
        assert!(report_request("corp/01JTEST.pdf").is_some());
        for refused in [
            "../config.toml",
            "corp/../../token",
            "corp/..",
            "../corp/x.html",
            "/etc/passwd",
            "corp//x.html",
            "corp/x.html/..",
            "corp/sub/x.html",
            "corp/.x.html",
            "corp/x.toml",
            "corp/x.HTML",
            "corp/x.html.html",
            "corp\\..\\x.html",
            "corp/x",
            "corp/x.html\0",
            "corp",
            "",
        ] {
            assert!(
                report_request(refused).is_none(),
                "{refused:?} was accepted"
            );
        }
    }

    #[test]
    fn symlinks_out_of_the_reports_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let reports = dir.path().join("reports");
        std::fs::create_dir_all(reports.join("corp")).unwrap();
        std::fs::write(reports.join("corp/01A.html"), "<p>report</p>").unwrap();
        std::fs::write(dir.path().join("secret"), "token").unwrap();
        assert_eq!(
            read_report(&reports, Path::new("corp/01A.html")).unwrap(),
            b"<p>report</p>"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret"), reports.join("corp/02B.html"))
                .unwrap();
            std::os::unix::fs::symlink(dir.path(), reports.join("evil")).unwrap();
            assert!(read_report(&reports, Path::new("corp/02B.html")).is_none());
            assert!(read_report(&reports, Path::new("evil/secret")).is_none());
        }
        assert!(read_report(&reports, Path::new("corp/missing.html")).is_none());
    }

    #[test]
    fn the_status_page_escapes_what_the_directory_controls() {
        let dir = tempfile::tempdir().unwrap();
        let mut failed = run(RunStatus::Failed, "2026-05-04T12:30:05Z");
        failed.error = Some("<script>alert(1)</script>".into());
        let sources = BTreeMap::from([("corp".to_string(), status_with(vec![failed]))]);
        let now = DateTime::parse_from_rfc3339("2026-05-04T12:31:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let page = render_status_page(&sources, dir.path(), now);
        assert!(!page.contains("<script"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page}"
        );
        assert!(page.contains("unhealthy"), "{page}");
    }
}
