//! The monitoring endpoint (off unless `[http] listen` is set; loopback unless
//! `allow_remote`): `/healthz`, `/metrics`, a read-only status page at `/`, and the runs'
//! reports from `<state_dir>/reports/<source>/<file>`. Nothing else is served: not the
//! configuration, not a token, no file outside the reports directory.
//!
//! Whoever can connect controls what arrives, so every cost of a client is bounded: at most
//! [`MAX_CONNECTIONS`] at once (when full, a new connection pushes out the oldest one that
//! has no request going, or is closed at once if every one has); request headers (the first
//! request's and every later one's on a kept-alive connection) within
//! [`HEADER_READ_TIMEOUT`]; a handler within [`HANDLER_TIMEOUT`]; a response body that the
//! client stops reading for [`SEND_STALL_TIMEOUT`] ends its connection; no connection lives
//! longer than [`CONNECTION_LIFETIME`]. Reports are streamed from disk in chunks, so a slow
//! reader of a large report holds a chunk, not the file. Requests must name the endpoint in
//! `Host` (the listen address, loopback, `localhost` or `allowed_hosts`), so a web page on the
//! host cannot read it through DNS rebinding; anything else is answered 421.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{
    ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::metrics;
use super::process::ProcessStats;
use super::status::{SourceStatus, StatusBoard};
use super::status_page;
use crate::clock::Clock;
use crate::config::HttpConfig;
use crate::output::report::ReportFormat;

/// Connections served at once. The unit's `LimitNOFILE=` leaves room for these beside the
/// runs' own files and sockets.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client may take to send a request's headers, and how long a kept-alive
/// connection may wait for its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handler may take to answer (the status page reads the store's view of runs).
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a response body may make no progress before its connection is closed: the
/// client stopped reading.
pub const SEND_STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a connection lives, however busy; then it finishes its response within
/// a second (`CLOSE_GRACE`) or is closed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a connection that is asked to close (lifetime, stop) may finish its response.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most headers a request may have.
const MAX_HEADERS: usize = 64;
/// The chunk a report is streamed in.
const REPORT_CHUNK_BYTES: usize = 64 * 1024;
/// The wait after `accept` fails (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);
/// How often a failing `accept` is logged: once, then at most this often while it lasts.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often a connection checks that its response still makes progress.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// Pages and reports load nothing from anywhere; the reports style themselves inline.
const PAGE_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

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
    config: &HttpConfig,
    state: Arc<HttpState>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/reports/{*path}", get(report))
        .fallback(not_found)
        .with_state(state);
    let endpoint = Arc::new(Endpoint {
        router,
        hosts: HostPolicy::new(config),
    });
    tokio::spawn(accept_loop(listener, endpoint, stop))
}

/// What every connection serves.
struct Endpoint {
    router: Router,
    hosts: HostPolicy,
}

async fn accept_loop(listener: TcpListener, endpoint: Arc<Endpoint>, stop: CancellationToken) {
    let table = Arc::new(ConnectionTable::default());
    let connections = TaskTracker::new();
    let mut error_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                if error_logged.is_none_or(|at| at.elapsed() >= ACCEPT_ERROR_LOG_EVERY) {
                    tracing::warn!("the HTTP endpoint cannot accept a connection: {error}");
                    error_logged = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Without a place the connection is closed here, its descriptor with it.
        let Some(admission) = ConnectionTable::admit(&table) else {
            continue;
        };
        connections.spawn(serve_connection(
            stream,
            Arc::clone(&endpoint),
            admission,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The open connections, oldest first.
#[derive(Debug, Default)]
struct ConnectionTable {
    open: Mutex<Vec<Arc<Connection>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Connection {
    id: u64,
    opened: Instant,
    /// Cancelled when a newer connection takes this one's place.
    evicted: CancellationToken,
    /// Requests whose response is not sent yet.
    requests: AtomicUsize,
    /// When a request or its response last moved, in milliseconds since `opened`.
    last_progress_ms: AtomicU64,
}

impl Connection {
    fn progress(&self) {
        let elapsed = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.store(elapsed, Ordering::Relaxed);
    }

    /// A response is due and has not moved for [`SEND_STALL_TIMEOUT`].
    fn stalled(&self) -> bool {
        let since = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        self.requests.load(Ordering::Relaxed) > 0
            && self.opened.elapsed().saturating_sub(since) > SEND_STALL_TIMEOUT
    }
}

/// A connection's place in the table, given up when it is dropped.
struct Admission {
    table: Arc<ConnectionTable>,
    connection: Arc<Connection>,
}

impl ConnectionTable {
    /// A place for a new connection: a free one, or the one of the oldest connection with no
    /// request going (which is then closed). `None` when every connection is answering.
    fn admit(table: &Arc<ConnectionTable>) -> Option<Admission> {
        let mut open = table.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.len() >= MAX_CONNECTIONS {
            let idle = open
                .iter()
                .position(|connection| connection.requests.load(Ordering::Relaxed) == 0)?;
            open.remove(idle).evicted.cancel();
        }
        let connection = Arc::new(Connection {
            id: table.next_id.fetch_add(1, Ordering::Relaxed),
            opened: Instant::now(),
            evicted: CancellationToken::new(),
            requests: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(0),
        });
        open.push(Arc::clone(&connection));
        Some(Admission {
            table: Arc::clone(table),
            connection,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let id = self.connection.id;
        self.table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|connection| connection.id != id);
    }
}

/// One request in flight on a connection, until its response body is sent or dropped.
struct InFlight(Arc<Connection>);

impl InFlight {
    fn start(connection: &Arc<Connection>) -> InFlight {
        connection.requests.fetch_add(1, Ordering::Relaxed);
        connection.progress();
        InFlight(Arc::clone(connection))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    stream: TcpStream,
    endpoint: Arc<Endpoint>,
    admission: Admission,
    stop: CancellationToken,
) {
    let connection = Arc::clone(&admission.connection);
    let serving = Arc::clone(&connection);
    let service = hyper::service::service_fn(move |request| {
        handle(Arc::clone(&endpoint), Arc::clone(&serving), request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let deadline = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(deadline);
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    let mut closing = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!("HTTP connection ended: {error}");
                }
                return;
            }
            () = connection.evicted.cancelled() => return,
            () = deadline.as_mut() => {
                if closing {
                    return;
                }
                closing = true;
                served.as_mut().graceful_shutdown();
                deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                served.as_mut().graceful_shutdown();
                deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_GRACE);
            }
            _ = stall_check.tick() => {
                if connection.stalled() {
                    return;
                }
            }
        }
    }
}

async fn handle(
    endpoint: Arc<Endpoint>,
    connection: Arc<Connection>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response, Infallible> {
    let in_flight = InFlight::start(&connection);
    if !endpoint.hosts.accepts(request.headers(), request.uri()) {
        return Ok(plain(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected request: this endpoint answers to its listen address, loopback and localhost (and http.allowed_hosts)\n",
        ));
    }
    let answered = tokio::time::timeout(HANDLER_TIMEOUT, endpoint.router.clone().oneshot(request));
    let response = match answered.await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the answer took too long; try again\n",
        ),
    };
    // The request stays in flight until its body is sent, and every chunk counts as
    // progress: a download is never pushed out as idle, and one that stalls is found.
    Ok(response.map(|body| {
        Body::new(body.map_frame(move |frame| {
            in_flight.0.progress();
            frame
        }))
    }))
}

/// Which `Host` a request may name: the listen address, any loopback address or
/// `localhost` (with any port), or a configured name. A browser sends the name it resolved,
/// so a page served from elsewhere that rebinds its name to 127.0.0.1 names itself, and is
/// refused.
#[derive(Debug)]
struct HostPolicy {
    listen: IpAddr,
    names: Vec<String>,
}

impl HostPolicy {
    fn new(config: &HttpConfig) -> HostPolicy {
        HostPolicy {
            listen: config.listen.ip(),
            names: config.allowed_hosts.clone(),
        }
    }

    /// The `Host` header (and the authority of an absolute request target, which takes its
    /// place) names this endpoint. A request without either is refused: browsers always
    /// send one.
    fn accepts(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let host = headers.get(HOST).and_then(|value| value.to_str().ok());
        let authority = uri.authority().map(|authority| authority.as_str());
        if host.is_none() && authority.is_none() {
            return false;
        }
        [host, authority]
            .into_iter()
            .flatten()
            .all(|host| self.accepts_host(host))
    }

    fn accepts_host(&self, host: &str) -> bool {
        let Some(name) = host_without_port(host) else {
            return false;
        };
        match name.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback() || ip == self.listen || self.names.contains(&ip.to_string()),
            Err(_) => {
                let name = name.to_ascii_lowercase();
                name == "localhost" || self.names.contains(&name)
            }
        }
    }
}

/// `name`, `name:port`, `[v6]` or `[v6]:port` without the port and brackets; `None` when it is
/// none of these.
fn host_without_port(host: &str) -> Option<&str> {
    let is_port = |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Some(ip),
            Some(port) if is_port(port) => Some(ip),
            _ => None,
        };
    }
    match host.split_once(':') {
        None if !host.is_empty() => Some(host),
        Some((name, port)) if !name.is_empty() && is_port(port) => Some(name),
        _ => None,
    }
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

async fn metrics_text(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(ACCEPT).and_then(|value| value.to_str().ok());
    let format = metrics::Format::negotiate(accept);
    let rendered = tokio::task::spawn_blocking(move || {
        metrics::render(
            &state.board.snapshot(),
            &state.board.config_reload(),
            &ProcessStats::current(),
            state.clock.now(),
            format,
        )
    })
    .await;
    let Ok(text) = rendered else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
    };
    (
        [
            (CONTENT_TYPE, format.content_type()),
            (VARY, "Accept"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

async fn status_page(State(state): State<Arc<HttpState>>) -> Response {
    let page = tokio::task::spawn_blocking(move || {
        status_page::render(&state.board.snapshot(), &state.state_dir, state.clock.now())
    })
    .await;
    match page {
        Ok(page) => (
            [
                (CONTENT_TYPE, "text/html; charset=utf-8"),
                (CONTENT_SECURITY_POLICY, PAGE_POLICY),
                (X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (CACHE_CONTROL, "no-store"),
            ],
            page,
        )
            .into_response(),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n"),
    }
}

async fn report(State(state): State<Arc<HttpState>>, UrlPath(path): UrlPath<String>) -> Response {
    let Some((relative, content_type)) = report_request(&path) else {
        return not_found().await;
    };
    let reports = state.state_dir.join("reports");
    let opened = tokio::task::spawn_blocking(move || open_report(&reports, &relative)).await;
    let Ok(Some((file, length))) = opened else {
        return not_found().await;
    };
    let chunks = ReaderStream::with_capacity(tokio::fs::File::from_std(file), REPORT_CHUNK_BYTES);
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CONTENT_LENGTH, HeaderValue::from(length)),
            (
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            ),
            (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
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

/// A regular file inside the reports directory, opened, and its length: a symlink, at the
/// end or on the way, that leads elsewhere is refused, and so is a file that changed places
/// between the check and the opening.
fn open_report(reports: &Path, relative: &Path) -> Option<(std::fs::File, u64)> {
    use std::os::unix::fs::MetadataExt;
    let path = reports.join(relative);
    let checked = std::fs::symlink_metadata(&path).ok()?;
    if !checked.is_file() {
        return None;
    }
    let root = reports.canonicalize().ok()?;
    if !path.canonicalize().ok()?.starts_with(&root) {
        return None;
    }
    let file = std::fs::File::open(&path).ok()?;
    let opened = file.metadata().ok()?;
    (opened.dev() == checked.dev() && opened.ino() == checked.ino()).then_some((file, opened.len()))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

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
        let (mut file, length) = open_report(&reports, Path::new("corp/01A.html")).unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), length), ("<p>report</p>", 13));
        std::os::unix::fs::symlink(dir.path().join("secret"), reports.join("corp/02B.html"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), reports.join("evil")).unwrap();
        assert!(open_report(&reports, Path::new("corp/02B.html")).is_none());
        assert!(open_report(&reports, Path::new("evil/secret")).is_none());
        assert!(open_report(&reports, Path::new("corp/missing.html")).is_none());
    }

    fn policy(listen: &str, names: &[&str]) -> HostPolicy {
        HostPolicy {
            listen: listen.parse().unwrap(),
            names: names.iter().map(|name| name.to_string()).collect(),
        }
    }

    #[test]
    fn only_hosts_that_name_the_endpoint_are_accepted() {
        let local = policy("127.0.0.1", &[]);
        for host in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "127.0.0.2:80",
            "localhost",
            "LocalHost:9464",
            "[::1]",
            "[::1]:9464",
        ] {
            assert!(local.accepts_host(host), "{host} refused");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:9464",
            "localhost.evil.example.com",
            "127.0.0.1.nip.io",
            "192.0.2.7:9464",
            "",
            ":9464",
            "localhost:",
            "localhost:x",
            "[::1",
            "[::1]x",
            "::1",
        ] {
            assert!(!local.accepts_host(host), "{host:?} accepted");
        }
        let remote = policy("192.0.2.7", &["aksync.example.com", "2001:db8::1"]);
        for host in [
            "192.0.2.7:9464",
            "aksync.example.com",
            "AKSYNC.example.com:443",
            "[2001:db8::1]:9464",
            "localhost",
        ] {
            assert!(remote.accepts_host(host), "{host} refused");
        }
        assert!(!remote.accepts_host("192.0.2.8"));
        assert!(!remote.accepts_host("sub.aksync.example.com"));
    }

    #[test]
    fn a_request_names_its_host_in_the_header_and_in_an_absolute_target() {
        let local = policy("127.0.0.1", &[]);
        let headers = |host: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(host) = host {
                headers.insert(HOST, HeaderValue::from_str(host).unwrap());
            }
            headers
        };
        let path: Uri = "/healthz".parse().unwrap();
        let absolute: Uri = "http://evil.example.com/healthz".parse().unwrap();
        assert!(local.accepts(&headers(Some("localhost:9464")), &path));
        assert!(!local.accepts(&headers(None), &path));
        assert!(!local.accepts(&headers(Some("localhost")), &absolute));
        assert!(local.accepts(&headers(None), &"http://127.0.0.1:9464/".parse().unwrap()));
    }

    #[test]
    fn a_full_table_pushes_out_the_oldest_idle_connection() {
        let table = Arc::new(ConnectionTable::default());
        let mut admitted: Vec<Admission> = (0..MAX_CONNECTIONS)
            .map(|_| ConnectionTable::admit(&table).unwrap())
            .collect();
        // The oldest is answering; the second oldest is idle and makes room.
        let answering = InFlight::start(&admitted[0].connection);
        let newcomer = ConnectionTable::admit(&table).unwrap();
        assert!(!admitted[0].connection.evicted.is_cancelled());
        assert!(admitted[1].connection.evicted.is_cancelled());
        assert_eq!(table.open.lock().unwrap().len(), MAX_CONNECTIONS);
        // With every connection answering, a newcomer is turned away.
        let busy: Vec<InFlight> = admitted[2..]
            .iter()
            .map(|admission| InFlight::start(&admission.connection))
            .chain([InFlight::start(&newcomer.connection)])
            .collect();
        assert!(ConnectionTable::admit(&table).is_none());
        // A closed connection gives its place back.
        drop(busy);
        drop(answering);
        admitted.truncate(1);
        assert_eq!(table.open.lock().unwrap().len(), 2);
        assert!(ConnectionTable::admit(&table).is_some());
    }

    #[test]
    fn a_response_that_does_not_move_is_a_stall() {
        let table = Arc::new(ConnectionTable::default());
        let admission = ConnectionTable::admit(&table).unwrap();
        let connection = &admission.connection;
        assert!(!connection.stalled());
        let in_flight = InFlight::start(connection);
        assert!(!connection.stalled());
        // A connection whose last progress was long ago, with a request going.
        let aged = Connection {
            opened: Instant::now() - SEND_STALL_TIMEOUT * 2,
            id: 99,
            evicted: CancellationToken::new(),
            requests: AtomicUsize::new(1),
            last_progress_ms: AtomicU64::new(0),
        };
        assert!(aged.stalled());
        aged.progress();
        assert!(!aged.stalled());
        drop(in_flight);
        assert!(!connection.stalled());
    }
}
