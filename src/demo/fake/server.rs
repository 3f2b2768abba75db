//! The fake's HTTP server and its mutable state: binding, the per-request pipeline
//! (request log and in-flight count, latency, injected faults, page hooks, then the API
//! itself) and shutdown.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::api::{self, Query, Reply, ReplyBody, Route};
use super::directory::Directory;
use super::hostile::ListingLies;

type Shared = Arc<Mutex<FakeState>>;

/// A running fake authentik, serving `/api/v3` on a free loopback port until
/// [`FakeAuthentik::shutdown`] or the end of the tokio runtime.
#[derive(Debug)]
pub struct FakeAuthentik {
    addr: SocketAddr,
    state: Shared,
    shutdown: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl FakeAuthentik {
    /// Binds 127.0.0.1:0 and serves in a spawned task; must be called inside a tokio runtime.
    pub async fn start(directory: Directory) -> std::io::Result<FakeAuthentik> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(FakeState::new(directory)));
        let app = Router::new().fallback(serve).with_state(Arc::clone(&state));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            // axum::serve retries failed accepts itself and only returns after the
            // graceful shutdown, so there is no error worth reporting.
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeAuthentik {
            addr,
            state,
            shutdown,
            server,
        })
    }

    /// E.g. `http://127.0.0.1:41234`, without a trailing slash or `/api/v3`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Locks the shared state to inspect or change the directory, faults, hooks or settings.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Stops accepting connections and waits for in-flight requests to finish.
    pub async fn shutdown(self) {
        // Both only fail if the server task is already gone, which is the goal anyway.
        let _ = self.shutdown.send(());
        let _ = self.server.await;
    }
}

/// Everything a test can see and steer while the fake runs.
#[derive(Debug)]
pub struct FakeState {
    pub directory: Directory,
    /// Served as `version_current` by `/admin/version/`.
    pub version: String,
    /// Serve the pre-2025.12 shapes: groups have `parent`/`parent_name` (the first parent)
    /// instead of `parents`/`parents_obj`, users' `groups_obj` elements carry the same pair,
    /// and the 2025.12 role fields (`roles`/`roles_obj` on users, `inherited_roles_obj` on
    /// groups) are absent.
    pub legacy_parent_shape: bool,
    pub default_page_size: u32,
    /// Larger requested page sizes are clamped silently.
    pub max_page_size: u32,
    pub faults: Vec<Fault>,
    /// Added to every request before it is answered.
    pub latency: Duration,
    pub page_hooks: Vec<PageHook>,
    /// Misbehaviour of the list endpoints, by list; absent lists are honest.
    pub lies: BTreeMap<ListKind, ListingLies>,
    /// Path and query of every request, in arrival order.
    pub request_log: Vec<String>,
    /// Requests being answered right now, and the most there ever were at once.
    pub in_flight: usize,
    pub max_in_flight: usize,
}

impl FakeState {
    /// The defaults of a fresh authentik 2025.12.4.
    pub fn new(directory: Directory) -> FakeState {
        FakeState {
            directory,
            version: "2025.12.4".to_owned(),
            legacy_parent_shape: false,
            default_page_size: 20,
            max_page_size: 100,
            faults: Vec::new(),
            latency: Duration::ZERO,
            page_hooks: Vec::new(),
            lies: BTreeMap::new(),
            request_log: Vec::new(),
            in_flight: 0,
            max_in_flight: 0,
        }
    }

    /// Everything after the log and the latency; runs under the lock, so one request sees
    /// one consistent directory.
    fn respond(
        &mut self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        authorization: Option<&str>,
    ) -> Reply {
        // Matched against the path and its query, so that `/core/users/?` names the listing
        // and not `/core/users/me/`.
        if let Some(reply) = self.injected_fault(&format!("{path}?{}", query.unwrap_or(""))) {
            return reply;
        }
        let Some(route) = Route::parse(path) else {
            return Reply::not_found_page();
        };
        let query = Query::parse(query);
        if let (Some(list), Some(page)) = (route.list_kind(), query.page_number()) {
            self.run_page_hooks(list, page);
        }
        api::respond(self, method, &route, &query, authorization)
    }

    /// Every matching fault counts the request, so `skip` and `times` are per fault; the
    /// first active one answers.
    fn injected_fault(&mut self, path: &str) -> Option<Reply> {
        let mut reply = None;
        for fault in self
            .faults
            .iter_mut()
            .filter(|f| path.contains(f.path_contains.as_str()))
        {
            if fault.skip > 0 {
                fault.skip -= 1;
            } else if reply.is_none() && fault.times != Some(0) {
                fault.times = fault.times.map(|t| t - 1);
                reply = Some(Reply::injected(fault));
            }
        }
        reply
    }

    fn run_page_hooks(&mut self, list: ListKind, page: usize) {
        let (due, rest): (Vec<PageHook>, Vec<PageHook>) = std::mem::take(&mut self.page_hooks)
            .into_iter()
            .partition(|hook| hook.list == list && hook.page as usize == page);
        self.page_hooks = rest;
        for hook in due {
            (hook.action)(&mut self.directory);
        }
    }
}

/// An injected response for requests whose `path?query` contains `path_contains` (a path
/// without a query ends in `?`): the first `skip` matching requests pass, the next `times` (None:
/// all later ones) get `status` and `body`. The body is served as JSON when it parses as
/// JSON, otherwise as HTML; it need not be UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub path_contains: String,
    pub skip: u32,
    pub times: Option<u32>,
    pub status: u16,
    pub body: Vec<u8>,
    /// A `Retry-After` header as sent: delta-seconds (`"3"`), an HTTP date, or whatever a
    /// misbehaving server might send; a value no header can carry is left out.
    pub retry_after: Option<String>,
    /// A `Location` header, for redirects.
    pub location: Option<String>,
}

/// Changes the directory right before the given page of a list is served, once, to
/// simulate a listing that shifts between page fetches.
pub struct PageHook {
    pub list: ListKind,
    pub page: u32,
    pub action: Box<dyn FnOnce(&mut Directory) + Send>,
}

impl fmt::Debug for PageHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageHook")
            .field("list", &self.list)
            .field("page", &self.page)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListKind {
    Users,
    Groups,
}

/// A panicking test closure must not take every later request down with it.
fn lock(state: &Mutex<FakeState>) -> MutexGuard<'_, FakeState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn serve(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let latency = {
        let mut state = lock(&state);
        let logged = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
        state.request_log.push(logged);
        state.in_flight += 1;
        state.max_in_flight = state.max_in_flight.max(state.in_flight);
        state.latency
    };
    // Counted out even when the client goes away mid-request and this future is dropped.
    let _in_flight = InFlight(&state);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let authorization = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let reply = lock(&state).respond(&method, uri.path(), uri.query(), authorization);
    reply.into_response()
}

struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).in_flight -= 1;
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self.body {
            ReplyBody::Full(bytes) => Body::from(bytes),
            ReplyBody::Endless { head, repeat } => {
                let (head, repeat) = (Bytes::from(head), Bytes::from(repeat));
                // Chunked, and only the client closing the connection ends it.
                let chunks = futures::stream::once(async move { head })
                    .chain(futures::stream::repeat(repeat))
                    .map(Ok::<Bytes, std::convert::Infallible>);
                Body::from_stream(chunks)
            }
        };
        let mut response = (status, [(CONTENT_TYPE, self.content_type)], body).into_response();
        if let Some(retry_after) = self
            .retry_after
            .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok())
        {
            response.headers_mut().insert(RETRY_AFTER, retry_after);
        }
        if let Some(location) = self
            .location
            .and_then(|location| HeaderValue::from_bytes(location.as_bytes()).ok())
        {
            response.headers_mut().insert(LOCATION, location);
        }
        response
    }
}
