//! The HTTP client for one Authentik source: bearer auth, bounded retries with jitter, error
//! classification, and complete paged listings. Every request of a client shares one pool of
//! `concurrency` slots, so that the users and groups listings (and `/me/` and the version)
//! fill the pipe together; pages are handed on as they arrive, each checked against the shape
//! page 1 announced, and the distinct records must number `pagination.count`.
//!
//! The server is untrusted input: a response body is read up to a size limit, every number
//! it sends is checked against the others before it is used, and nothing is allocated by
//! its word alone.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ClientError;
use super::model::{Page, Pagination, SessionUser, Version};
use super::tls;
use crate::clock::{Clock, SystemClock};
use crate::config::secret::ApiToken;
use crate::config::SourceConfig;
use crate::display;
use crate::telemetry::telemetry;

/// How much of an error response is read: enough for its `detail` and an excerpt.
const ERROR_BODY_BYTES: usize = 64 * 1024;
/// How many characters of a server's text an error message quotes.
const QUOTE_CHARS: usize = 200;

/// How often and how patiently a request is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Upper bound for a server's `Retry-After`.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// How long to wait before attempt `attempt + 1`: the server's `Retry-After` when it
    /// gave one (bounded), else exponential backoff with jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_retry_after);
        }
        let exponential = self
            .base_delay
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(self.max_delay);
        // A random half to all of it, so that several aksync instances do not retry in
        // lockstep.
        let millis = exponential.as_millis() as u64;
        Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis.max(1)))
    }
}

/// A `Retry-After` header as a delay from `now`. RFC 9110 allows delta-seconds (`120`) and an
/// HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`, or the obsolete RFC 850 and asctime forms,
/// which servers still send); a date already past means no wait. Anything else is ignored,
/// and the caller backs off as if there were no header. [`RetryPolicy::delay`] caps the
/// result, so that a server cannot park a run for days.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// The two directory listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListKind {
    Users,
    Groups,
}

impl ListKind {
    pub fn name(self) -> &'static str {
        match self {
            ListKind::Users => "users",
            ListKind::Groups => "groups",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            ListKind::Users => "core/users/",
            ListKind::Groups => "core/groups/",
        }
    }

    /// Query parameters besides paging. Both lists are ordered by pk, so that a rename during
    /// a sync cannot move a record between pages; user pks are auto-increment, so new users
    /// even append instead of shifting pages. The nested objects are not needed because the
    /// id lists stay present.
    pub fn params(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ListKind::Users => &[
                ("ordering", "pk"),
                ("include_groups", "false"),
                ("include_roles", "false"),
            ],
            ListKind::Groups => &[("ordering", "pk"), ("include_users", "false")],
        }
    }
}

/// Called as pages arrive: (list, pages fetched, pages in total).
pub type ProgressFn<'a> = &'a (dyn Fn(ListKind, u64, u64) + Sync);

/// One page of a listing, as [`AuthentikClient::fetch_listings`] hands it on.
#[derive(Debug)]
pub struct ListedPage {
    pub kind: ListKind,
    pub number: u64,
    pub records: Vec<Value>,
}

/// The records of a listing must number what the server counted.
pub fn check_count(kind: ListKind, distinct: u64, count: u64) -> Result<(), ClientError> {
    if distinct == count {
        return Ok(());
    }
    Err(inconsistent(
        kind,
        format!("{distinct} distinct records arrived but the server counted {count}"),
    ))
}

pub struct AuthentikClient {
    http: reqwest::Client,
    source: SourceConfig,
    /// Read from its file when the client is made, once per run or check.
    token: ApiToken,
    retry: RetryPolicy,
    /// One slot per request in flight; a retry's back-off holds none.
    slots: tokio::sync::Semaphore,
}

impl AuthentikClient {
    pub fn new(source: &SourceConfig, retry: RetryPolicy) -> Result<AuthentikClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(source.timeout)
            .connect_timeout(source.timeout.min(Duration::from_secs(15)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca_file) = &source.ca_file {
            let tls_error = |reason: String| ClientError::Tls {
                endpoint: source.base_url.to_string(),
                reason,
            };
            let pem = std::fs::read(ca_file).map_err(|error| {
                tls_error(format!("cannot read {}: {error}", ca_file.display()))
            })?;
            let certificate = reqwest::Certificate::from_pem(&pem).map_err(|error| {
                tls_error(format!(
                    "{} is not a PEM certificate: {error}",
                    ca_file.display()
                ))
            })?;
            builder = builder.add_root_certificate(certificate);
        }
        let http = builder.build().map_err(|error| ClientError::Tls {
            endpoint: source.base_url.to_string(),
            reason: error.to_string(),
        })?;
        let token = source
            .token
            .read()
            .map_err(|reason| ClientError::Token { reason })?;
        Ok(AuthentikClient {
            http,
            source: source.clone(),
            token,
            retry,
            slots: tokio::sync::Semaphore::new(source.concurrency),
        })
    }

    pub async fn me(&self) -> Result<SessionUser, ClientError> {
        self.get_typed("core/users/me/", &[]).await
    }

    pub async fn version(&self) -> Result<Version, ClientError> {
        self.get_typed("admin/version/", &[]).await
    }

    /// Page 1 with one record: tells whether the token may read the list at all.
    pub async fn probe_list(&self, kind: ListKind) -> Result<u64, ClientError> {
        let mut params = kind.params().to_vec();
        params.push(("page_size", "1"));
        let page: Page = self.get_typed(kind.path(), &params).await?;
        Ok(page.pagination.count)
    }

    /// Whether the object at `path` (`core/users/7/`) exists: Authentik answers one it does
    /// not have with 404 and its JSON body. Anything else that is no object (a 404 page
    /// without that body, a 5xx after the retries) is an error: it says nothing either way.
    pub async fn exists(&self, path: &str) -> Result<bool, ClientError> {
        match self.get_json(path, &[]).await {
            Ok(_) => Ok(true),
            Err(ClientError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Every page of the given listings, sent to `sink` as it arrives (in no particular
    /// order), so that the receiver works on one page while the next ones are on the way.
    /// Page 1 of every listing is asked for at once; it tells how many records there are and
    /// how many a page holds, and the other pages follow through the shared pool, each
    /// checked against page 1 as it arrives. Memory holds the pages in flight, never what the
    /// server announced. Returns each listing's `count`, which the distinct records received
    /// must match; a receiver that hangs up (it found a problem) ends the listing early.
    pub async fn fetch_listings(
        &self,
        kinds: &[ListKind],
        sink: &tokio::sync::mpsc::Sender<ListedPage>,
        progress: ProgressFn<'_>,
    ) -> Result<BTreeMap<ListKind, u64>, ClientError> {
        let fetch = |kind: ListKind, number: u64| async move {
            (kind, number, self.fetch_page(kind, number).await)
        };
        let mut listings: BTreeMap<ListKind, ListingProgress> = BTreeMap::new();
        let mut in_flight = stream::FuturesUnordered::new();
        for kind in kinds {
            listings.insert(*kind, ListingProgress::default());
            in_flight.push(fetch(*kind, 1));
        }
        while let Some((kind, number, page)) = in_flight.next().await {
            let page = page?;
            let listing = listings.get_mut(&kind).expect("a listing asked for");
            let shape = listing.check(kind, &page, self.source.page_size)?;
            listing.pages += 1;
            let listed = ListedPage {
                kind,
                number,
                records: page.results,
            };
            if sink.send(listed).await.is_err() {
                break;
            }
            progress(kind, listing.pages, shape.total_pages);
            // Refill the pool with the next pages of the listings whose shape is known.
            while in_flight.len() < self.source.concurrency {
                let Some((kind, number)) = listings
                    .iter_mut()
                    .find_map(|(kind, listing)| listing.next_page().map(|page| (*kind, page)))
                else {
                    break;
                };
                in_flight.push(fetch(kind, number));
            }
        }
        listings
            .iter()
            .map(|(kind, listing)| match listing.shape {
                Some(shape) => Ok((*kind, shape.count)),
                None => Err(inconsistent(*kind, "page 1 never arrived".to_string())),
            })
            .collect()
    }

    async fn fetch_page(&self, kind: ListKind, page: u64) -> Result<Page, ClientError> {
        let page_number = page.to_string();
        let page_size = self.source.page_size.to_string();
        let mut params = kind.params().to_vec();
        params.push(("page", &page_number));
        params.push(("page_size", &page_size));
        let result: Page = self.get_typed(kind.path(), &params).await?;
        if result.pagination.current != page {
            return Err(bad_pagination(
                kind,
                format!(
                    "asked for page {page}, got page {}",
                    result.pagination.current
                ),
            ));
        }
        Ok(result)
    }

    async fn get_typed<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let value = self.get_json(path, params).await?;
        serde_json::from_value(value).map_err(|error| ClientError::Decode {
            endpoint: endpoint_name(path),
            // serde quotes the offending value, which the server chose.
            reason: display::quote(&error.to_string(), QUOTE_CHARS),
        })
    }

    /// One GET with retries on connection errors, timeouts, 429 and 5xx.
    async fn get_json(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, ClientError> {
        let endpoint = endpoint_name(path);
        let url = self.source.api_url(path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(&url, params, &endpoint, attempt).await;
            let retry_after = match &outcome {
                Attempt::Done(_) => None,
                Attempt::Retry { retry_after, .. } => Some(*retry_after),
            };
            let counters = telemetry();
            match outcome {
                Attempt::Done(result) => {
                    if result.is_err() {
                        counters.authentik_error(&self.source.name);
                    }
                    return result;
                }
                Attempt::Retry { error, .. } if attempt >= self.retry.attempts => {
                    counters.authentik_error(&self.source.name);
                    return Err(error);
                }
                Attempt::Retry { error, .. } => {
                    counters.authentik_retry(&self.source.name);
                    let delay = self.retry.delay(attempt, retry_after.flatten());
                    tracing::warn!(
                        source = %self.source.name,
                        %endpoint,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        "retrying: {error}"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn send_once(
        &self,
        url: &url::Url,
        params: &[(&str, &str)],
        endpoint: &str,
        attempt: u32,
    ) -> Attempt {
        // The pool is never closed, so a slot always comes.
        let _slot = self.slots.acquire().await;
        telemetry().authentik_request(&self.source.name);
        let response = self
            .http
            .get(url.clone())
            .query(params)
            .header(AUTHORIZATION, self.token.bearer_header())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("aksync/", env!("CARGO_PKG_VERSION")))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return transport_error(error, &self.source, endpoint, url, attempt),
        };
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|value: &reqwest::header::HeaderValue| {
                    String::from_utf8_lossy(value.as_bytes()).into_owned()
                })
        };
        // The wall clock, not a run's: the wait that follows is real time too.
        let now = SystemTime::from(SystemClock.now());
        let retry_after = header(RETRY_AFTER).and_then(|value| parse_retry_after(&value, now));
        let declares_json = header(CONTENT_TYPE).is_some_and(|value| value.contains("json"));
        let location = header(LOCATION);
        let limit = if status.is_success() {
            BodyLimit::Fail(self.source.max_page_bytes)
        } else {
            BodyLimit::Cut(ERROR_BODY_BYTES)
        };
        let body = match read_body(response, limit).await {
            Ok(body) => body,
            Err(BodyError::Transport(error)) => {
                return transport_error(error, &self.source, endpoint, url, attempt)
            }
            Err(BodyError::TooLarge) => {
                return Attempt::Done(Err(ClientError::TooLarge {
                    endpoint: endpoint.to_string(),
                    limit_mib: self.source.max_page_bytes / (1024 * 1024),
                }))
            }
        };
        let endpoint = endpoint.to_string();
        if status.is_success() {
            return Attempt::Done(parse_json(&body, declares_json, endpoint));
        }
        if status.is_redirection() {
            return Attempt::Done(Err(ClientError::Redirect {
                endpoint,
                status: status.as_u16(),
                location: location.map_or_else(
                    || "nowhere (no Location header)".to_string(),
                    |location| display::quote(&location, QUOTE_CHARS),
                ),
            }));
        }
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let detail = json
            .as_ref()
            .and_then(|json| json.get("detail"))
            .and_then(Value::as_str)
            .map(|detail| display::quote(detail, QUOTE_CHARS))
            .unwrap_or_default();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Attempt::Retry {
                error: ClientError::Status {
                    endpoint,
                    status: status.as_u16(),
                    body: excerpt(&body),
                    attempts: attempt,
                },
                retry_after,
            };
        }
        Attempt::Done(Err(match status {
            StatusCode::FORBIDDEN if is_authentication_failure(&detail) => {
                ClientError::Authentication { endpoint, detail }
            }
            StatusCode::FORBIDDEN if json.is_some() => ClientError::Permission { endpoint, detail },
            StatusCode::NOT_FOUND if json.is_some() => ClientError::NotFound { endpoint, detail },
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                ClientError::NotAuthentik {
                    endpoint,
                    reason: format!("HTTP {} without an Authentik JSON body", status.as_u16()),
                }
            }
            _ => ClientError::Status {
                endpoint,
                status: status.as_u16(),
                body: excerpt(&body),
                attempts: attempt,
            },
        }))
    }
}

enum Attempt {
    Done(Result<Value, ClientError>),
    Retry {
        error: ClientError,
        retry_after: Option<Duration>,
    },
}

fn is_authentication_failure(detail: &str) -> bool {
    detail == "Token invalid/expired" || detail.contains("credentials were not provided")
}

fn endpoint_name(path: &str) -> String {
    format!("/api/v3/{path}")
}

fn excerpt(body: &[u8]) -> String {
    display::quote(&String::from_utf8_lossy(body), QUOTE_CHARS)
}

/// How much of a body to read, and what to do with the rest.
#[derive(Debug, Clone, Copy)]
enum BodyLimit {
    /// A body larger than this fails the request.
    Fail(usize),
    /// Only this much is read; the rest is not needed.
    Cut(usize),
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

/// Reads a body chunk by chunk, so that an endless or huge body stops at the limit instead
/// of growing in memory until the kernel steps in.
async fn read_body(
    mut response: reqwest::Response,
    limit: BodyLimit,
) -> Result<Vec<u8>, BodyError> {
    let (BodyLimit::Fail(max) | BodyLimit::Cut(max)) = limit;
    if let (BodyLimit::Fail(_), Some(length)) = (limit, response.content_length()) {
        if length > max as u64 {
            return Err(BodyError::TooLarge);
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        let room = max - body.len();
        if chunk.len() > room {
            return match limit {
                BodyLimit::Fail(_) => Err(BodyError::TooLarge),
                BodyLimit::Cut(_) => {
                    body.extend_from_slice(&chunk[..room]);
                    Ok(body)
                }
            };
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A successful response's JSON. Text that does not even try to be JSON (an HTML page) means
/// base_url points elsewhere; JSON that breaks off, nests too deeply or is not UTF-8 is a
/// malformed answer from something that meant to send JSON.
fn parse_json(body: &[u8], declares_json: bool, endpoint: String) -> Result<Value, ClientError> {
    serde_json::from_slice(body).map_err(|error| {
        let looks_like_json = body
            .iter()
            .find(|byte| !byte.is_ascii_whitespace())
            .is_some_and(|byte| matches!(byte, b'{' | b'['));
        if declares_json || looks_like_json {
            ClientError::Malformed {
                endpoint,
                reason: error.to_string(),
            }
        } else {
            ClientError::NotAuthentik {
                endpoint,
                reason: "the response is not JSON".into(),
            }
        }
    })
}

/// How rustls and hyper describe TLS failures in the error chain. They share no error type
/// that survives reqwest's wrapping, so the text is what tells them apart from a refused or
/// reset connection.
const TLS_FAILURE_MARKERS: [&str; 7] = [
    "certificate",
    "tls",
    "handshake",
    "corrupt message",
    "fatal alert",
    "invalid peer",
    "peer is incompatible",
];

fn transport_error(
    error: reqwest::Error,
    source: &SourceConfig,
    endpoint: &str,
    url: &url::Url,
    attempt: u32,
) -> Attempt {
    let final_error = |error| Attempt::Done(Err(error));
    // A certificate that will not pass until someone fixes it: no retry.
    if let Some(problem) = tls::certificate_problem(&error) {
        return final_error(problem.error(url.host_str().unwrap_or_default(), source));
    }
    let chain = error_chain(&error);
    let endpoint = endpoint.to_string();
    let lower = chain.to_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return final_error(ClientError::Dns {
            host: url.host_str().unwrap_or_default().to_string(),
        });
    }
    if TLS_FAILURE_MARKERS
        .iter()
        .any(|marker| lower.contains(marker))
    {
        // The host, as the certificate problems name it: TLS is per server, not per path.
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        return final_error(ClientError::Tls {
            endpoint: host,
            reason: chain,
        });
    }
    let error = if error.is_timeout() {
        ClientError::Timeout {
            endpoint,
            attempts: attempt,
        }
    } else {
        ClientError::Connect {
            endpoint,
            reason: chain,
            attempts: attempt,
        }
    };
    Attempt::Retry {
        error,
        retry_after: None,
    }
}

/// The innermost causes tell what went wrong ("Connection refused"); reqwest's own message
/// only says that a request failed. URLs in it carry no token.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&(dyn std::error::Error + 'static)> = error.source();
    while let Some(cause) = current {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        current = cause.source();
    }
    if parts.is_empty() {
        parts.push(error.to_string());
    }
    parts.join(": ")
}

fn inconsistent(kind: ListKind, reason: String) -> ClientError {
    ClientError::Inconsistent {
        list: kind.name().to_string(),
        reason,
    }
}

fn bad_pagination(kind: ListKind, reason: String) -> ClientError {
    ClientError::BadPagination {
        list: kind.name().to_string(),
        reason,
    }
}

/// What page 1 says the listing looks like, once its numbers agree with each other and with
/// the records it holds. A server may serve fewer records per page than asked for
/// (Authentik 2025.12+ clamps to its maximum silently), so the page size is what page 1
/// actually held.
///
/// Two kinds of disagreement: how many records a page holds can be off on an honest server
/// whose directory changed between counting and selecting (a shift, read once more), while
/// the structure (more records than asked for, no pages, a total that changes under the
/// same count, a wrong `next`) can only be off on a server that cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageShape {
    count: u64,
    total_pages: u64,
    page_size: u64,
}

impl PageShape {
    fn from_first_page(
        kind: ListKind,
        first: &Page,
        requested: u32,
    ) -> Result<PageShape, ClientError> {
        let Pagination {
            count, total_pages, ..
        } = first.pagination;
        let served = first.results.len() as u64;
        if served > u64::from(requested) {
            return Err(bad_pagination(
                kind,
                format!("page 1 holds {served} records, more than the {requested} asked for"),
            ));
        }
        let shifted = |reason: String| Err(inconsistent(kind, reason));
        match total_pages {
            0 => return Err(bad_pagination(kind, "0 pages".to_string())),
            // Page 1 is the last; `check` compares what it holds with `count`.
            1 => {}
            _ if served == 0 => return shifted(format!("page 1 of {total_pages} is empty")),
            _ if count.div_ceil(served) != total_pages => {
                return shifted(format!(
                    "{count} records at {served} per page make {} pages, not {total_pages}",
                    count.div_ceil(served)
                ))
            }
            _ => {}
        }
        let shape = PageShape {
            count,
            total_pages,
            page_size: served,
        };
        shape.check(kind, first)?;
        Ok(shape)
    }

    /// Checks one page against the shape: a changed count or a page that holds more or fewer
    /// records than the count allows means that the listing shifted while it was read; a
    /// changed total or a wrong `next` means that the numbers cannot be trusted.
    fn check(&self, kind: ListKind, page: &Page) -> Result<(), ClientError> {
        let pagination = page.pagination;
        let current = pagination.current;
        if pagination.count != self.count {
            return Err(inconsistent(
                kind,
                format!(
                    "the count changed from {} to {} during the listing (page {current})",
                    self.count, pagination.count
                ),
            ));
        }
        if pagination.total_pages != self.total_pages {
            return Err(bad_pagination(
                kind,
                format!(
                    "page {current} counts {} pages, page 1 counted {}",
                    pagination.total_pages, self.total_pages
                ),
            ));
        }
        let is_last = current == self.total_pages;
        let before = current
            .checked_sub(1)
            .and_then(|earlier| earlier.checked_mul(self.page_size));
        let expected_records = match before {
            Some(before) if is_last => self.count.checked_sub(before),
            Some(_) => Some(self.page_size),
            None => None,
        };
        let held = page.results.len() as u64;
        if expected_records != Some(held) {
            return Err(inconsistent(
                kind,
                format!(
                    "page {current} of {} holds {held} records, which does not fit a count of {} at {} per page",
                    self.total_pages, self.count, self.page_size
                ),
            ));
        }
        let expected_next = if is_last {
            0
        } else {
            current.saturating_add(1)
        };
        if pagination.next != expected_next {
            return Err(bad_pagination(
                kind,
                format!(
                    "page {current} of {} names page {} as the next",
                    self.total_pages, pagination.next
                ),
            ));
        }
        Ok(())
    }
}

/// How far one listing has come: its shape once page 1 arrived, and the pages asked for and
/// received.
#[derive(Debug, Default)]
struct ListingProgress {
    shape: Option<PageShape>,
    /// The last page asked for.
    requested: u64,
    pages: u64,
}

impl ListingProgress {
    /// Checks a page against the listing's shape, which page 1 sets.
    fn check(
        &mut self,
        kind: ListKind,
        page: &Page,
        requested: u32,
    ) -> Result<PageShape, ClientError> {
        match self.shape {
            Some(shape) => {
                shape.check(kind, page)?;
                Ok(shape)
            }
            None => {
                let shape = PageShape::from_first_page(kind, page, requested)?;
                self.shape = Some(shape);
                self.requested = 1;
                Ok(shape)
            }
        }
    }

    /// The next page to ask for, once the shape is known.
    fn next_page(&mut self) -> Option<u64> {
        let shape = self.shape?;
        (self.requested < shape.total_pages).then(|| {
            self.requested += 1;
            self.requested
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(current: u64, count: u64, total_pages: u64, records: &[Value]) -> Page {
        Page {
            pagination: Pagination {
                next: if current < total_pages {
                    current + 1
                } else {
                    0
                },
                previous: current.saturating_sub(1),
                count,
                current,
                total_pages,
            },
            results: records.to_vec(),
        }
    }

    fn records(pks: &[i64]) -> Vec<Value> {
        pks.iter().map(|pk| json!({ "pk": pk })).collect()
    }

    /// What a listing of these pages (page 1 first) comes to, with records de-duplicated
    /// by pk as the sync's collector does.
    #[derive(Debug)]
    struct Listing {
        records: Vec<Value>,
        pages: u64,
    }

    fn collect(pages: Vec<Page>, requested: u32) -> Result<Listing, ClientError> {
        let mut listing = ListingProgress::default();
        let mut records: Vec<Value> = Vec::new();
        let mut count = 0;
        for page in pages {
            let number = page.pagination.current;
            count = listing.check(ListKind::Users, &page, requested)?.count;
            listing.pages += 1;
            let held = page.results.len() as u64;
            let mut new = 0;
            for record in page.results {
                match records.iter().find(|seen| seen["pk"] == record["pk"]) {
                    Some(seen) if *seen == record => {}
                    Some(_) => {
                        return Err(inconsistent(
                            ListKind::Users,
                            format!("two different records have the pk {}", record["pk"]),
                        ))
                    }
                    None => {
                        records.push(record);
                        new += 1;
                    }
                }
            }
            if held > 0 && new == 0 {
                return Err(inconsistent(
                    ListKind::Users,
                    format!("page {number} held only records of earlier pages"),
                ));
            }
        }
        check_count(ListKind::Users, records.len() as u64, count)?;
        Ok(Listing {
            records,
            pages: listing.pages,
        })
    }

    #[test]
    fn identical_duplicates_are_dropped_and_counts_checked() {
        let listing = collect(
            vec![
                page(1, 3, 2, &records(&[1, 2])),
                page(2, 3, 2, &records(&[2])),
            ],
            2,
        );
        // A shifted listing: record 3 was missed, so the listing is incomplete.
        assert!(
            matches!(listing, Err(ClientError::Inconsistent { .. })),
            "{listing:?}"
        );
        let listing = collect(
            vec![
                page(1, 3, 2, &records(&[1, 2])),
                page(2, 3, 2, &records(&[3])),
            ],
            2,
        )
        .unwrap();
        assert_eq!(listing.records.len(), 3);
        assert_eq!(listing.pages, 2);
    }

    #[test]
    fn different_records_with_one_pk_are_inconsistent() {
        let error = collect(
            vec![page(
                1,
                2,
                1,
                &[json!({"pk": 1, "name": "a"}), json!({"pk": 1, "name": "b"})],
            )],
            100,
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("two different records have the pk 1"),
            "{error}"
        );
        let listing = collect(
            vec![page(
                1,
                2,
                1,
                &[json!({"pk": 1, "name": "a"}), json!({"pk": 2})],
            )],
            100,
        )
        .unwrap();
        assert_eq!(listing.records.len(), 2);
    }

    #[test]
    fn a_count_that_changes_between_pages_is_inconsistent() {
        let error = collect(
            vec![
                page(1, 3, 2, &records(&[1, 2])),
                page(2, 4, 2, &records(&[3, 4])),
            ],
            2,
        )
        .unwrap_err();
        assert!(
            matches!(error, ClientError::Inconsistent { .. })
                && error.to_string().contains("count changed"),
            "{error}"
        );
    }

    /// Whether an error is a shift (read again) or a server that cannot be trusted.
    fn is_shift(error: &ClientError) -> bool {
        match error {
            ClientError::Inconsistent { .. } => true,
            ClientError::BadPagination { .. } => false,
            other => panic!("neither a shift nor bad pagination: {other}"),
        }
    }

    #[test]
    fn counts_and_pages_that_disagree_fail_the_listing() {
        let five = records(&[1, 2, 3, 4, 5]);
        // (count, total_pages, records on page 1, requested page size, a shift?)
        let cases: [(u64, u64, &[Value], u32, bool); 7] = [
            (1 << 40, 1, &five, 100, true),
            (1 << 62, 1, &five, 100, true),
            (5, 1_000_000_000_000, &five, 100, true),
            (u64::MAX, u64::MAX, &five, 100, true),
            (10, 2, &[], 100, true),
            (5, 0, &five, 100, false),
            (5, 1, &five, 2, false),
        ];
        for (count, total_pages, held, requested, shift) in cases {
            let error = collect(vec![page(1, count, total_pages, held)], requested).unwrap_err();
            assert_eq!(is_shift(&error), shift, "{count} {total_pages}: {error}");
        }
        // A clamped page size is fine: 5 asked for 100 make 3 pages of 11 records.
        let listing = collect(
            vec![
                page(1, 11, 3, &five),
                page(2, 11, 3, &records(&[6, 7, 8, 9, 10])),
                page(3, 11, 3, &records(&[11])),
            ],
            100,
        )
        .unwrap();
        assert_eq!(listing.records.len(), 11);
        // A page that only repeats earlier records, as from a server answering every page.
        let error = collect(vec![page(1, 15, 3, &five), page(2, 15, 3, &five)], 100).unwrap_err();
        assert!(is_shift(&error), "{error}");
        // A short middle page is a shift; a last page that names a next one, or a total that
        // changes under the same count, is not.
        let last_with_next = Page {
            pagination: Pagination {
                next: 4,
                ..page(3, 11, 3, &[]).pagination
            },
            results: records(&[11]),
        };
        for (later_page, shift) in [
            (page(2, 11, 3, &records(&[6, 7])), true),
            (last_with_next, false),
            (page(2, 11, 4, &records(&[6, 7, 8, 9, 10])), false),
        ] {
            let error = collect(vec![page(1, 11, 3, &five), later_page], 100).unwrap_err();
            assert_eq!(is_shift(&error), shift, "{error}");
        }
    }

    #[test]
    fn only_json_that_is_not_even_attempted_means_another_server() {
        let endpoint = || "/api/v3/core/users/".to_string();
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        for (body, declares_json) in [
            (deep.as_bytes(), false),
            (&b"{\"name\": \"\xff\xfe\"}"[..], false),
            (b"{\"pagination\": {", false),
            (b"not json", true),
        ] {
            let error = parse_json(body, declares_json, endpoint()).unwrap_err();
            assert!(matches!(error, ClientError::Malformed { .. }), "{error}");
        }
        let error = parse_json(b"<!doctype html><p>login</p>", false, endpoint()).unwrap_err();
        assert!(matches!(error, ClientError::NotAuthentik { .. }), "{error}");
    }

    #[test]
    fn retry_delays_grow_stay_bounded_and_honour_retry_after() {
        let policy = RetryPolicy::default();
        for attempt in 1..=10 {
            let exponential = policy
                .base_delay
                .saturating_mul(1 << (attempt - 1))
                .min(policy.max_delay);
            let delay = policy.delay(attempt, None);
            assert!(
                delay >= exponential / 2 && delay <= exponential,
                "{attempt}: {delay:?}"
            );
        }
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(3600))),
            policy.max_retry_after
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let cases = [
            ("120", Some(120)),
            (" 0 ", Some(0)),
            // IMF-fixdate, RFC 850 and asctime, 10 seconds on.
            ("Sun, 06 Nov 1994 08:49:47 GMT", Some(10)),
            ("Sunday, 06-Nov-94 08:49:47 GMT", Some(10)),
            ("Sun Nov  6 08:49:47 1994", Some(10)),
            // A date already past: try again at once.
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(0)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("Sun, 06 Nov 1994 25:00:00 GMT", None),
            ("", None),
        ];
        for (value, seconds) in cases {
            assert_eq!(
                parse_retry_after(value, now),
                seconds.map(Duration::from_secs),
                "{value:?}"
            );
        }
        // A date far ahead is capped like a long delta.
        let policy = RetryPolicy::default();
        let far = parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now);
        assert_eq!(policy.delay(1, far), policy.max_retry_after);
    }

    const PAGINATION_KEYS: &[&str] = &["next", "previous", "count", "current", "total_pages"];
    const PAGE_KEYS: &[&str] = &["pagination", "results", "pk", "detail"];

    /// A page as a broken or hostile server might send it: mostly the right keys, with
    /// numbers near the real ones, near the limits or not numbers at all.
    fn arbitrary_page() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let number = prop_oneof![
            4 => (0u64..6).prop_map(Value::from),
            2 => any::<u64>().prop_map(Value::from),
            1 => crate::testing::arbitrary_json(PAGINATION_KEYS),
        ];
        let pagination = proptest::collection::btree_map(
            proptest::sample::select(PAGINATION_KEYS).prop_map(str::to_string),
            number,
            3..=5,
        )
        .prop_map(|object| Value::Object(object.into_iter().collect()));
        let record = prop_oneof![
            3 => (0i64..8).prop_map(|pk| json!({ "pk": pk })),
            1 => crate::testing::arbitrary_json(PAGE_KEYS),
        ];
        let results = proptest::collection::vec(record, 0..6).prop_map(Value::Array);
        prop_oneof![
            6 => (pagination, results)
                .prop_map(|(pagination, results)| json!({ "pagination": pagination, "results": results })),
            1 => crate::testing::arbitrary_object(PAGE_KEYS),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever pages a server sends, reading them and checking the listing ends in a
        /// listing or an error, never a panic (overflowing arithmetic on its numbers, say).
        #[test]
        fn arbitrary_pages_never_panic(
            pages in proptest::collection::vec(arbitrary_page(), 1..5),
            requested in 1u32..=1000,
        ) {
            let endpoint = || "/api/v3/core/users/".to_string();
            let pages: Vec<Page> = pages
                .iter()
                .filter_map(|page| {
                    let body = serde_json::to_vec(page).expect("a value serializes");
                    let value = parse_json(&body, true, endpoint()).ok()?;
                    serde_json::from_value(value).ok()
                })
                .collect();
            let _ = collect(pages, requested);
        }

        /// Bytes that are not even JSON are an error too.
        #[test]
        fn arbitrary_bodies_never_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            declares_json in proptest::prelude::any::<bool>(),
        ) {
            let _ = parse_json(&body, declares_json, "/api/v3/core/users/".to_string());
        }
    }

    #[test]
    fn authentication_details_are_recognized() {
        assert!(is_authentication_failure("Token invalid/expired"));
        assert!(is_authentication_failure(
            "Authentication credentials were not provided."
        ));
        assert!(!is_authentication_failure(
            "You do not have permission to perform this action."
        ));
    }
}
