//! The HTTP client for one Authentik source: bearer auth, bounded retries with jitter, error
//! classification, and complete paged listings (concurrent after page 1, verified against
//! `pagination.count`).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{self, StreamExt, TryStreamExt};
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ClientError;
use super::model::{Page, Pagination, SessionUser, Version};
use crate::config::SourceConfig;
use crate::secret::ApiToken;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Query parameters besides paging. Users are ordered by pk, which is auto-increment, so
    /// new users append instead of shifting pages; the nested objects are not needed because
    /// the id lists stay present.
    pub fn params(self) -> &'static [(&'static str, &'static str)] {
        match self {
            ListKind::Users => &[
                ("ordering", "pk"),
                ("include_groups", "false"),
                ("include_roles", "false"),
            ],
            ListKind::Groups => &[("include_users", "false")],
        }
    }
}

/// Called as pages arrive: (list, pages fetched, pages in total).
pub type ProgressFn<'a> = &'a (dyn Fn(ListKind, u64, u64) + Sync);

/// Every record of one listing, de-duplicated by pk.
#[derive(Debug)]
pub struct Listing {
    pub records: Vec<Value>,
    pub pages: u64,
}

pub struct AuthentikClient {
    http: reqwest::Client,
    source: SourceConfig,
    retry: RetryPolicy,
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
        Ok(AuthentikClient {
            http,
            source: source.clone(),
            retry,
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

    /// Every record of a listing. Page 1 tells how many pages there are; the rest are fetched
    /// `concurrency` at a time, then `next` is followed in case the listing grew. The result is
    /// complete only if every page agrees on `count` and the distinct records number `count`.
    pub async fn list_all(
        &self,
        kind: ListKind,
        progress: ProgressFn<'_>,
    ) -> Result<Listing, ClientError> {
        let first = self.fetch_page(kind, 1).await?;
        let expected = first.pagination;
        progress(kind, 1, expected.total_pages);
        let fetched = std::sync::atomic::AtomicU64::new(1);
        let rest: Vec<Page> = stream::iter(2..=expected.total_pages)
            .map(|page| self.fetch_page(kind, page))
            .buffered(self.source.concurrency)
            .inspect_ok(|_| {
                let done = fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(kind, done, expected.total_pages);
            })
            .try_collect()
            .await?;
        let mut pages = Vec::with_capacity(rest.len() + 1);
        pages.push(first);
        pages.extend(rest);
        // The listing may have grown past the pages announced by page 1.
        let mut extra_pages = 0;
        while let Some(next) = pages
            .last()
            .map(|page| page.pagination.next)
            .filter(|n| *n != 0)
        {
            extra_pages += 1;
            if extra_pages > expected.total_pages + 2 {
                return Err(inconsistent(kind, "`next` kept pointing at more pages"));
            }
            pages.push(self.fetch_page(kind, next).await?);
        }
        check_listing(kind, expected, pages)
    }

    async fn fetch_page(&self, kind: ListKind, page: u64) -> Result<Page, ClientError> {
        let page_number = page.to_string();
        let page_size = self.source.page_size.to_string();
        let mut params = kind.params().to_vec();
        params.push(("page", &page_number));
        params.push(("page_size", &page_size));
        let result: Page = self.get_typed(kind.path(), &params).await?;
        if result.pagination.current != page {
            return Err(inconsistent(
                kind,
                &format!(
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
            reason: error.to_string(),
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
            match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry { error, .. } if attempt >= self.retry.attempts => {
                    return Err(error)
                }
                Attempt::Retry { error, .. } => {
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
        let token: &ApiToken = &self.source.token;
        let response = self
            .http
            .get(url.clone())
            .query(params)
            .header(AUTHORIZATION, token.bearer_header())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("aksync/", env!("CARGO_PKG_VERSION")))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => return transport_error(error, endpoint, url, attempt),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return transport_error(error, endpoint, url, attempt),
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        let detail = json
            .as_ref()
            .and_then(|json| json.get("detail"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let endpoint = endpoint.to_string();
        if status.is_success() {
            return Attempt::Done(json.ok_or_else(|| ClientError::NotAuthentik {
                endpoint,
                reason: "the response is not JSON".into(),
            }));
        }
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
    let text = String::from_utf8_lossy(body);
    let single_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if single_line.chars().count() > 200 {
        format!("{}…", single_line.chars().take(200).collect::<String>())
    } else {
        single_line
    }
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

fn transport_error(error: reqwest::Error, endpoint: &str, url: &url::Url, attempt: u32) -> Attempt {
    let chain = error_chain(&error);
    let endpoint = endpoint.to_string();
    let lower = chain.to_lowercase();
    let final_error = |error| Attempt::Done(Err(error));
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        return final_error(ClientError::Dns {
            host: url.host_str().unwrap_or_default().to_string(),
        });
    }
    if TLS_FAILURE_MARKERS
        .iter()
        .any(|marker| lower.contains(marker))
    {
        return final_error(ClientError::Tls {
            endpoint,
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
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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

fn inconsistent(kind: ListKind, reason: &str) -> ClientError {
    ClientError::Inconsistent {
        list: kind.name().to_string(),
        reason: reason.to_string(),
    }
}

/// Verifies that the pages form one complete listing and de-duplicates it by pk.
fn check_listing(
    kind: ListKind,
    expected: Pagination,
    pages: Vec<Page>,
) -> Result<Listing, ClientError> {
    if let Some(page) = pages
        .iter()
        .find(|page| page.pagination.count != expected.count)
    {
        return Err(inconsistent(
            kind,
            &format!(
                "the count changed from {} to {} during the listing (page {})",
                expected.count, page.pagination.count, page.pagination.current
            ),
        ));
    }
    let page_count = pages.len() as u64;
    let mut seen = BTreeSet::new();
    let mut records = Vec::with_capacity(expected.count as usize);
    for page in pages {
        for record in page.results {
            let Some(pk) = record.get("pk").filter(|pk| !pk.is_null()) else {
                return Err(inconsistent(kind, "a record has no pk"));
            };
            if seen.insert(pk.to_string()) {
                records.push(record);
            }
        }
    }
    if records.len() as u64 != expected.count {
        return Err(inconsistent(
            kind,
            &format!(
                "{} distinct records arrived but the server counted {}",
                records.len(),
                expected.count
            ),
        ));
    }
    Ok(Listing {
        records,
        pages: page_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn page(current: u64, count: u64, next: u64, pks: &[i64]) -> Page {
        Page {
            pagination: Pagination {
                next,
                previous: current.saturating_sub(1),
                count,
                current,
                total_pages: 2,
            },
            results: pks.iter().map(|pk| json!({ "pk": pk })).collect(),
        }
    }

    #[test]
    fn duplicates_are_dropped_and_counts_checked() {
        let expected = page(1, 3, 2, &[1, 2]).pagination;
        let listing = check_listing(
            ListKind::Users,
            expected,
            vec![page(1, 3, 2, &[1, 2]), page(2, 3, 0, &[2, 3])],
        )
        .unwrap();
        assert_eq!(listing.records.len(), 3);
    }

    #[test]
    fn a_missing_record_is_inconsistent() {
        let expected = page(1, 4, 2, &[1, 2]).pagination;
        let error = check_listing(
            ListKind::Users,
            expected,
            vec![page(1, 4, 2, &[1, 2]), page(2, 4, 0, &[2, 3])],
        )
        .unwrap_err();
        assert!(matches!(error, ClientError::Inconsistent { .. }), "{error}");
    }

    #[test]
    fn a_count_that_changes_between_pages_is_inconsistent() {
        let expected = page(1, 3, 2, &[1, 2]).pagination;
        let error = check_listing(
            ListKind::Groups,
            expected,
            vec![page(1, 3, 2, &[1, 2]), page(2, 4, 0, &[3, 4])],
        )
        .unwrap_err();
        assert!(error.to_string().contains("count changed"), "{error}");
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
