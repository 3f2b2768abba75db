//! What happens to a request once the HTTP layer has routed it: token authentication,
//! object permissions, filters, ordering and pagination, in the order and with the error
//! bodies of authentik 2025.12 (DRF authentication, then permissions, then the
//! `ObjectFilter` and django-filter backends, then the paginator).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use axum::http::Method;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Serialize;

use super::directory::{Directory, FakeGroup, FakeUser, TokenKind};
use super::render::{
    ConfigJson, Detail, EmptyObject, ErrorReportingJson, GroupIncludes, Paginated, Pagination,
    Render, UserIncludes, VersionJson,
};
use super::server::{FakeState, Fault, ListKind};

const NOT_PROVIDED: &str = "Authentication credentials were not provided.";
const TOKEN_INVALID: &str = "Token invalid/expired";
const NO_PERMISSION: &str = "You do not have permission to perform this action.";
const INVALID_PAGE: &str = "Invalid page.";
/// DRF's message when a lookup value does not even convert to the key's type.
const NOT_FOUND: &str = "Not found.";
const USER_TYPES: &[&str] = &[
    "internal",
    "external",
    "service_account",
    "internal_service_account",
];
/// A superuser's `/me/` `system_permissions`: every permission of the `authentik_rbac` app
/// as a bare codename (`SystemPermission`, `Role` and `InitialPermissions`), 16 in all,
/// and never a model permission like `view_user`.
const SUPERUSER_SYSTEM_PERMISSIONS: &[&str] = &[
    "view_system_info",
    "access_admin_interface",
    "view_system_settings",
    "edit_system_settings",
    "view_media_files",
    "manage_media_files",
    "add_role",
    "change_role",
    "delete_role",
    "view_role",
    "assign_role_permissions",
    "unassign_role_permissions",
    "add_initialpermissions",
    "change_initialpermissions",
    "delete_initialpermissions",
    "view_initialpermissions",
];

/// One answer, independent of the HTTP library.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: ReplyBody,
    /// A `Retry-After` header, as sent.
    pub retry_after: Option<String>,
    pub location: Option<String>,
}

#[derive(Debug)]
pub(super) enum ReplyBody {
    Full(Vec<u8>),
    /// `head`, then `repeat` again and again, without end.
    Endless {
        head: Vec<u8>,
        repeat: Vec<u8>,
    },
}

impl Reply {
    pub(super) fn json(status: u16, value: &impl Serialize) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: ReplyBody::Full(
                serde_json::to_vec(value).expect("fake API shapes always serialize"),
            ),
            retry_after: None,
            location: None,
        }
    }

    fn detail(status: u16, detail: &str) -> Reply {
        Reply::json(status, &Detail { detail })
    }

    /// Django's production 404 page, which paths its URL resolver does not know get.
    pub(super) fn not_found_page() -> Reply {
        Reply {
            status: 404,
            content_type: "text/html; charset=utf-8",
            body: ReplyBody::Full(b"<!doctype html>\n<html lang=\"en\">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n".to_vec()),
            retry_after: None,
            location: None,
        }
    }

    /// A body supplied by a test: served as JSON when it is JSON, otherwise as an HTML page
    /// the way a proxy in front of authentik would.
    pub(super) fn injected(fault: &Fault) -> Reply {
        let is_json = serde_json::from_slice::<serde_json::Value>(&fault.body).is_ok();
        Reply {
            status: fault.status,
            content_type: if is_json {
                "application/json"
            } else {
                "text/html; charset=utf-8"
            },
            body: ReplyBody::Full(fault.body.clone()),
            retry_after: fault.retry_after.clone(),
            location: fault.location.clone(),
        }
    }
}

/// The `/api/v3` endpoints the fake implements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Route {
    UserList,
    UserDetail(String),
    Me,
    GroupList,
    GroupDetail(String),
    Version,
    Config,
}

impl Route {
    /// None where Django's resolver finds no view, including every path that lacks its
    /// trailing slash (`APPEND_SLASH = False`).
    pub(super) fn parse(path: &str) -> Option<Route> {
        let inner = path.strip_prefix("/api/v3/")?.strip_suffix('/')?;
        let segments: Vec<&str> = inner.split('/').collect();
        // DRF routers match a lookup value with `[^/.]+`.
        let lookup = |s: &str| !s.is_empty() && !s.contains('.');
        match segments.as_slice() {
            ["core", "users"] => Some(Route::UserList),
            ["core", "users", "me"] => Some(Route::Me),
            ["core", "users", pk] if lookup(pk) => Some(Route::UserDetail((*pk).to_owned())),
            ["core", "groups"] => Some(Route::GroupList),
            ["core", "groups", pk] if lookup(pk) => Some(Route::GroupDetail((*pk).to_owned())),
            ["admin", "version"] => Some(Route::Version),
            ["root", "config"] => Some(Route::Config),
            _ => None,
        }
    }

    pub(super) fn list_kind(&self) -> Option<ListKind> {
        match self {
            Route::UserList => Some(ListKind::Users),
            Route::GroupList => Some(ListKind::Groups),
            _ => None,
        }
    }
}

/// Decoded query parameters in arrival order.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: Option<&str>) -> Query {
        Query(
            url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// Django's `QueryDict.get`: the last value of a repeated key wins.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn get_all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Django-filter ignores empty values, so `?username=` filters nothing.
    fn get_nonempty(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// The `include_*` flags: true only when the value, lowercased, is `true`.
    fn include(&self, key: &str, default: bool) -> bool {
        self.get(key)
            .map_or(default, |v| v.to_lowercase() == "true")
    }

    /// Django's NullBooleanSelect: anything it does not recognise means "no filter".
    fn null_boolean(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "true" | "True" | "2" => Some(true),
            "false" | "False" | "3" => Some(false),
            _ => None,
        }
    }

    /// The requested page when it is a number, for the page hooks.
    pub(super) fn page_number(&self) -> Option<usize> {
        match PageParam::parse(self) {
            PageParam::Number(n) => Some(n),
            PageParam::Last | PageParam::Invalid => None,
        }
    }
}

enum PageParam {
    Number(usize),
    Last,
    Invalid,
}

impl PageParam {
    fn parse(query: &Query) -> PageParam {
        // DRF reads `query_params.get("page") or 1`, so an empty value means page 1.
        match query.get_nonempty("page") {
            None => PageParam::Number(1),
            Some("last") => PageParam::Last,
            Some(raw) => python_uint(raw).map_or(PageParam::Invalid, PageParam::Number),
        }
    }
}

/// Python's `int()` restricted to non-negative values: surrounding whitespace and a `+`
/// are fine, and a value too large for usize saturates rather than failing.
fn python_uint(raw: &str) -> Option<usize> {
    let trimmed = raw.trim();
    let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(usize::MAX))
}

/// The authenticated side of a request.
struct Caller<'a> {
    kind: &'a TokenKind,
    user: &'a FakeUser,
}

impl Caller<'_> {
    /// Holders of the global view permissions skip the object filter entirely.
    fn global_view(&self) -> bool {
        matches!(self.kind, TokenKind::Superuser | TokenKind::Reader)
    }

    fn sees_user(&self, user: &FakeUser) -> bool {
        match self.kind {
            TokenKind::ObjectReader { users, .. } => users.contains(&user.pk),
            _ => self.global_view(),
        }
    }

    fn sees_group(&self, group: &FakeGroup) -> bool {
        match self.kind {
            TokenKind::ObjectReader { groups, .. } => groups.contains(&group.pk),
            _ => self.global_view(),
        }
    }

    /// authentik's `ObjectFilter`: without the global permission the queryset shrinks to
    /// the objects the caller may view, and an empty result is a 403, except for internal
    /// service accounts (outposts), which get an empty list.
    fn object_filter<'d, T: 'd>(
        &self,
        items: impl Iterator<Item = &'d T>,
        sees: impl Fn(&Self, &T) -> bool,
    ) -> Result<Vec<&'d T>, Reply> {
        let visible: Vec<&T> = items.filter(|item| sees(self, item)).collect();
        if visible.is_empty()
            && !self.global_view()
            && self.user.user_type != "internal_service_account"
        {
            return Err(Reply::detail(403, NO_PERMISSION));
        }
        Ok(visible)
    }
}

/// Authentication, permission checks and the endpoint itself.
pub(super) fn respond(
    state: &FakeState,
    method: &Method,
    route: &Route,
    query: &Query,
    authorization: Option<&str>,
) -> Reply {
    dispatch(state, method, route, query, authorization).unwrap_or_else(|reply| reply)
}

fn dispatch(
    state: &FakeState,
    method: &Method,
    route: &Route,
    query: &Query,
    authorization: Option<&str>,
) -> Result<Reply, Reply> {
    let dir = &state.directory;
    let caller = match authenticate(dir, authorization)? {
        Some(caller) => caller,
        // `/root/config/` is AllowAny; an invalid token was still rejected above.
        None if *route == Route::Config => {
            read_only(method)?;
            return Ok(config());
        }
        None => return Err(Reply::detail(403, NOT_PROVIDED)),
    };
    read_only(method)?;
    let render = Render::new(dir, state.legacy_parent_shape);
    match route {
        Route::Config => Ok(config()),
        Route::Version => Ok(Reply::json(
            200,
            &VersionJson {
                version_current: &state.version,
                version_latest: "0.0.0",
                version_latest_valid: false,
                build_hash: "",
                outdated: false,
                outpost_outdated: false,
            },
        )),
        Route::Me => {
            let permissions = match caller.kind {
                TokenKind::Superuser => SUPERUSER_SYSTEM_PERMISSIONS,
                _ => &[],
            };
            Ok(Reply::json(
                200,
                &render.session_user(caller.user, permissions),
            ))
        }
        Route::UserList => {
            let filter = UserFilter::parse(query, dir)?;
            let includes = user_includes(query);
            let render_user = |u| render.user(u, &includes);
            // What a sync asks for (everything, by pk) is the directory's own order: a page
            // then costs its position, not a pass over every user, so that the fake stays a
            // server with latency rather than with CPU at 10^5 users.
            if caller.global_view() && filter.is_empty() && query.get("ordering") == Some("pk") {
                let users = &dir.users;
                return paginate(
                    state,
                    ListKind::Users,
                    query,
                    users.len(),
                    |start, end| users.values().skip(start).take(end - start).collect(),
                    render_user,
                );
            }
            let visible = caller.object_filter(dir.users.values(), Caller::sees_user)?;
            let mut users: Vec<&FakeUser> =
                visible.into_iter().filter(|u| filter.matches(u)).collect();
            sort(&mut users, query.get("ordering"), USER_ORDERING, "username");
            paginate(
                state,
                ListKind::Users,
                query,
                users.len(),
                |start, end| users[start..end].to_vec(),
                render_user,
            )
        }
        Route::UserDetail(raw) => {
            let visible = caller.object_filter(dir.users.values(), Caller::sees_user)?;
            let pk: i64 = raw
                .trim()
                .parse()
                .map_err(|_| Reply::detail(404, NOT_FOUND))?;
            let user = visible
                .into_iter()
                .find(|u| u.pk == pk)
                .ok_or_else(|| Reply::detail(404, "No User matches the given query."))?;
            Ok(Reply::json(200, &render.user(user, &user_includes(query))))
        }
        Route::GroupList => {
            let visible = caller.object_filter(dir.groups.values(), Caller::sees_group)?;
            let filter = GroupFilter::parse(query, dir)?;
            let mut groups: Vec<&FakeGroup> =
                visible.into_iter().filter(|g| filter.matches(g)).collect();
            sort(&mut groups, query.get("ordering"), GROUP_ORDERING, "name");
            let includes = group_includes(query);
            paginate(
                state,
                ListKind::Groups,
                query,
                groups.len(),
                |start, end| groups[start..end].to_vec(),
                |g| render.group(g, &includes),
            )
        }
        Route::GroupDetail(raw) => {
            let visible = caller.object_filter(dir.groups.values(), Caller::sees_group)?;
            let uuid = canonical_uuid(raw).ok_or_else(|| Reply::detail(404, NOT_FOUND))?;
            let group = visible
                .into_iter()
                .find(|g| g.pk == uuid)
                .ok_or_else(|| Reply::detail(404, "No Group matches the given query."))?;
            Ok(Reply::json(
                200,
                &render.group(group, &group_includes(query)),
            ))
        }
    }
}

/// authentik's `validate_auth` plus token lookup. `Ok(None)` is an anonymous request: no
/// header, another scheme, or an empty Bearer value.
fn authenticate<'a>(
    dir: &'a Directory,
    authorization: Option<&str>,
) -> Result<Option<Caller<'a>>, Reply> {
    let Some((scheme, key)) = authorization.and_then(|h| h.trim().split_once(' ')) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Ok(None);
    }
    dir.tokens
        .get(key)
        .filter(|t| !matches!(t.kind, TokenKind::Revoked | TokenKind::AppPassword))
        .and_then(|t| {
            dir.users
                .get(&t.user_pk)
                .filter(|u| u.is_active)
                .map(|user| Caller {
                    kind: &t.kind,
                    user,
                })
        })
        .map(Some)
        .ok_or_else(|| Reply::detail(403, TOKEN_INVALID))
}

/// The fake is read-only; DRF checks the method after authentication and permissions.
fn read_only(method: &Method) -> Result<(), Reply> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Reply::detail(
            405,
            &format!("Method \"{method}\" not allowed."),
        ))
    }
}

fn config() -> Reply {
    Reply::json(
        200,
        &ConfigJson {
            error_reporting: ErrorReportingJson {
                enabled: false,
                sentry_dsn: "",
                environment: "",
                send_pii: false,
                traces_sample_rate: 0.0,
            },
            capabilities: [],
            cache_timeout: 300,
            cache_timeout_flows: 300,
            cache_timeout_policies: 300,
        },
    )
}

fn user_includes(query: &Query) -> UserIncludes {
    UserIncludes {
        groups: query.include("include_groups", true),
        roles: query.include("include_roles", true),
    }
}

fn group_includes(query: &Query) -> GroupIncludes {
    GroupIncludes {
        users: query.include("include_users", true),
        parents: query.include("include_parents", false),
        children: query.include("include_children", false),
        inherited_roles: query.include("include_inherited_roles", false),
    }
}

/// DRF's PageNumberPagination with authentik's page-size settings, and the list's lies.
/// One page of a listing of `count` items; `items(start, end)` gives those in that range.
fn paginate<'d, T: 'd, J: Serialize>(
    state: &FakeState,
    list: ListKind,
    query: &Query,
    count: usize,
    items: impl Fn(usize, usize) -> Vec<&'d T>,
    render: impl Fn(&'d T) -> J,
) -> Result<Reply, Reply> {
    let lies = state.lies.get(&list).cloned().unwrap_or_default();
    // A missing, non-integer, zero or negative page_size means the default; larger than
    // the maximum is clamped without telling the client.
    let size = query
        .get("page_size")
        .and_then(python_uint)
        .filter(|n| *n > 0)
        .map_or(state.default_page_size as usize, |n| {
            n.min(state.max_page_size as usize)
        })
        .max(1);
    // Django allows an empty first page, so an empty list still has one page.
    let total_pages = count.div_ceil(size).max(1);
    let page = match PageParam::parse(query) {
        PageParam::Number(n) if (1..=total_pages).contains(&n) => n,
        PageParam::Number(n) if lies.answer_every_page && n > 0 => n,
        PageParam::Last => total_pages,
        PageParam::Number(_) | PageParam::Invalid => return Err(Reply::detail(404, INVALID_PAGE)),
    };
    let served_page = page.min(total_pages);
    let start = (served_page - 1) * size;
    let end = (start + size).min(count);
    let announced_pages = lies.total_pages.unwrap_or(total_pages as u64);
    let pagination = Pagination {
        next: if (page as u64) < announced_pages {
            page as u64 + 1
        } else {
            0
        },
        previous: page as u64 - 1,
        count: lies.count.unwrap_or(count as u64),
        current: page as u64,
        total_pages: announced_pages,
        start_index: if count == 0 { 0 } else { start as u64 + 1 },
        end_index: end as u64,
    };
    let mut results: Vec<Served<J>> = items(start, end)
        .into_iter()
        .map(|item| Served::Real(render(item)))
        .collect();
    if lies.conflicting_duplicate && served_page == total_pages && count > 1 {
        let mut twin = serde_json::to_value(render(items(0, 1)[0])).expect("records serialize");
        twin["name"] = serde_json::Value::from("a different record with the same pk");
        results.pop();
        results.push(Served::Twin(twin));
    }
    if lies.shared_uid && served_page == total_pages && count > 1 {
        let first = serde_json::to_value(render(items(0, 1)[0])).expect("records serialize");
        if let Some(Served::Real(last)) = results.pop() {
            let mut last = serde_json::to_value(last).expect("records serialize");
            last["uid"] = first["uid"].clone();
            results.push(Served::Twin(last));
        }
    }
    let page = Paginated {
        pagination,
        results,
        autocomplete: EmptyObject {},
    };
    if lies.endless_body {
        return Ok(endless_page(&page));
    }
    Ok(Reply::json(200, &page))
}

/// A record as served: rendered from the directory, or made up by a lie.
#[derive(Serialize)]
#[serde(untagged)]
enum Served<J> {
    Real(J),
    Twin(serde_json::Value),
}

/// The page's JSON up to its first record, then that record again and again, never closed.
fn endless_page<J: Serialize>(page: &Paginated<Served<J>>) -> Reply {
    let full = serde_json::to_vec(page).expect("pages serialize");
    let results_at = full
        .windows(11)
        .position(|window| window == b"\"results\":[")
        .map_or(full.len(), |at| at + 11);
    let head = full[..results_at].to_vec();
    let record = page.results.first().map_or_else(
        || b"{\"pk\":0}".to_vec(),
        |record| serde_json::to_vec(record).expect("records serialize"),
    );
    let mut repeat = Vec::with_capacity(64 * 1024 + record.len());
    while repeat.len() < 64 * 1024 {
        repeat.extend_from_slice(&record);
        repeat.push(b',');
    }
    Reply {
        status: 200,
        content_type: "application/json",
        body: ReplyBody::Endless { head, repeat },
        retry_after: None,
        location: None,
    }
}

type Compare<T> = fn(&T, &T) -> Ordering;

/// The model fields DRF's OrderingFilter accepts for users; anything else is dropped.
const USER_ORDERING: &[(&str, Compare<FakeUser>)] = &[
    ("pk", |a, b| a.pk.cmp(&b.pk)),
    ("username", |a, b| a.username.cmp(&b.username)),
    ("name", |a, b| a.name.cmp(&b.name)),
    ("email", |a, b| a.email.cmp(&b.email)),
    ("is_active", |a, b| a.is_active.cmp(&b.is_active)),
    ("last_login", |a, b| {
        compare_nullable_dates(a.last_login.as_deref(), b.last_login.as_deref())
    }),
    ("date_joined", |a, b| {
        compare_dates(&a.date_joined, &b.date_joined)
    }),
    ("last_updated", |a, b| {
        compare_dates(&a.last_updated, &b.last_updated)
    }),
    ("password_change_date", |a, b| {
        compare_dates(&a.password_change_date, &b.password_change_date)
    }),
    ("uuid", |a, b| a.uuid.cmp(&b.uuid)),
    ("path", |a, b| a.path.cmp(&b.path)),
    ("type", |a, b| a.user_type.cmp(&b.user_type)),
];

const GROUP_ORDERING: &[(&str, Compare<FakeGroup>)] = &[
    ("pk", |a, b| a.pk.cmp(&b.pk)),
    ("name", |a, b| a.name.cmp(&b.name)),
    ("is_superuser", |a, b| a.is_superuser.cmp(&b.is_superuser)),
];

/// DRF's OrderingFilter: comma-separated fields, `-` for descending, unknown ones dropped,
/// the view's default when nothing valid remains. The sort is stable over pk order, which
/// stands in for the database's tie-breaking.
fn sort<T>(items: &mut [&T], ordering: Option<&str>, fields: &[(&str, Compare<T>)], default: &str) {
    let parse = |spec: &str| -> Vec<(Compare<T>, bool)> {
        spec.split(',')
            .map(str::trim)
            .filter_map(|term| {
                let (name, descending) = term
                    .strip_prefix('-')
                    .map_or((term, false), |name| (name, true));
                fields
                    .iter()
                    .find(|(field, _)| *field == name)
                    .map(|&(_, compare)| (compare, descending))
            })
            .collect()
    };
    let mut keys = ordering.map(parse).unwrap_or_default();
    if keys.is_empty() {
        keys = parse(default);
    }
    items.sort_by(|a, b| {
        keys.iter()
            .map(|&(compare, descending)| {
                let order = compare(a, b);
                if descending {
                    order.reverse()
                } else {
                    order
                }
            })
            .find(|order| order.is_ne())
            .unwrap_or(Ordering::Equal)
    });
}

/// Datetimes compare by instant, not text: `…27Z` sorts after `…27.5Z` as strings.
fn compare_dates(a: &str, b: &str) -> Ordering {
    parse_datetime(a).cmp(&parse_datetime(b))
}

/// PostgreSQL puts NULLs last in ascending order.
fn compare_nullable_dates(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => compare_dates(a, b),
        (a, b) => a.is_none().cmp(&b.is_none()),
    }
}

/// The inputs Django's datetime form field accepts; naive values are UTC (authentik's
/// time zone).
fn parse_datetime(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(parsed) = DateTime::parse_from_rfc3339(raw) {
        return Some(parsed.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|format| NaiveDateTime::parse_from_str(raw, format).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
    })
    .map(|naive| naive.and_utc())
}

/// Python's `uuid.UUID()` normalisation: braces, a `urn:uuid:` prefix, dashes and upper
/// case are all accepted.
fn canonical_uuid(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("urn:uuid:").unwrap_or(raw);
    let raw = raw.trim_start_matches('{').trim_end_matches('}');
    let hex: String = raw.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(super::directory::dashed_uuid(&hex.to_ascii_lowercase()))
}

/// django-filter validation errors, keyed by parameter, answered as a 400.
#[derive(Default)]
struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    fn add(&mut self, field: &str, message: String) {
        self.0.entry(field.to_owned()).or_default().push(message);
    }

    fn check(self) -> Result<(), Reply> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Reply::json(400, &self.0))
        }
    }
}

/// A repeatable choice filter (django's MultipleChoiceField or ModelMultipleChoiceField):
/// every value must be well-formed (`malformed` returns the message otherwise) and must
/// name an existing choice. Only the first bad value is reported, as Django does.
fn choices<'q>(
    query: &'q Query,
    key: &str,
    errors: &mut FieldErrors,
    malformed: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&str) -> bool,
) -> Option<Vec<&'q str>> {
    let values = query.get_all(key);
    if values.is_empty() {
        return None;
    }
    let problem = values.iter().find_map(|v| malformed(v)).or_else(|| {
        values
            .iter()
            .find(|v| !exists(v))
            .map(|v| format!("Select a valid choice. {v} is not one of the available choices."))
    });
    match problem {
        Some(message) => {
            errors.add(key, message);
            None
        }
        None => Some(values),
    }
}

fn contains_lowercase(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(needle)
}

/// Reports an unparsable single-valued filter and yields its parsed value otherwise.
fn parsed<T>(
    query: &Query,
    key: &str,
    errors: &mut FieldErrors,
    message: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let raw = query.get_nonempty(key)?;
    let value = parse(raw);
    if value.is_none() {
        errors.add(key, message.to_owned());
    }
    value
}

type TextField = fn(&FakeUser) -> &str;

/// The `UsersFilter` parameters the fake supports.
struct UserFilter<'a> {
    dir: &'a Directory,
    exact: Vec<(TextField, &'a str)>,
    path_startswith: Option<&'a str>,
    uuid: Option<String>,
    types: Option<Vec<&'a str>>,
    is_active: Option<bool>,
    is_superuser: Option<bool>,
    /// Each holds group uuids; a user matches with a direct membership in any of them.
    groups_by_pk: Option<Vec<&'a str>>,
    groups_by_name: Option<Vec<&'a str>>,
    last_updated_gt: Option<DateTime<Utc>>,
    search: Option<String>,
}

impl<'a> UserFilter<'a> {
    /// Whether no filter was asked for.
    fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.path_startswith.is_none()
            && self.uuid.is_none()
            && self.types.is_none()
            && self.is_active.is_none()
            && self.is_superuser.is_none()
            && self.groups_by_pk.is_none()
            && self.groups_by_name.is_none()
            && self.last_updated_gt.is_none()
            && self.search.is_none()
    }

    fn parse(query: &'a Query, dir: &'a Directory) -> Result<UserFilter<'a>, Reply> {
        let mut errors = FieldErrors::default();
        let exact_fields: [(&str, TextField); 4] = [
            ("username", |u| &u.username),
            ("email", |u| &u.email),
            ("name", |u| &u.name),
            ("path", |u| &u.path),
        ];
        let exact = exact_fields
            .into_iter()
            .filter_map(|(key, field)| query.get_nonempty(key).map(|value| (field, value)))
            .collect();
        let uuid = parsed(
            query,
            "uuid",
            &mut errors,
            "Enter a valid UUID.",
            canonical_uuid,
        );
        let last_updated_gt = parsed(
            query,
            "last_updated__gt",
            &mut errors,
            "Enter a valid date/time.",
            parse_datetime,
        );
        let types = choices(
            query,
            "type",
            &mut errors,
            |_| None,
            |v| USER_TYPES.contains(&v),
        );
        let groups_by_pk = choices(
            query,
            "groups_by_pk",
            &mut errors,
            |v| {
                canonical_uuid(v)
                    .is_none()
                    .then(|| format!("“{v}” is not a valid UUID."))
            },
            // Django compares the raw value with str(pk), so only the canonical form exists.
            |v| dir.groups.contains_key(v),
        );
        let groups_by_name = choices(
            query,
            "groups_by_name",
            &mut errors,
            |_| None,
            |v| dir.group_by_name(v).is_some(),
        )
        .map(|names| {
            dir.groups
                .values()
                .filter(|g| names.contains(&g.name.as_str()))
                .map(|g| g.pk.as_str())
                .collect()
        });
        errors.check()?;
        Ok(UserFilter {
            dir,
            exact,
            path_startswith: query.get_nonempty("path_startswith"),
            uuid,
            types,
            is_active: query.null_boolean("is_active"),
            is_superuser: query.null_boolean("is_superuser"),
            groups_by_pk,
            groups_by_name,
            last_updated_gt,
            search: query.get_nonempty("search").map(str::to_lowercase),
        })
    }

    fn matches(&self, user: &FakeUser) -> bool {
        let in_any = |groups: &Option<Vec<&str>>| {
            groups
                .as_ref()
                .is_none_or(|wanted| user.groups.iter().any(|g| wanted.contains(&g.as_str())))
        };
        // The filter, unlike the field, only looks at direct memberships.
        let direct_superuser = || {
            user.groups
                .iter()
                .any(|g| self.dir.groups.get(g).is_some_and(|g| g.is_superuser))
        };
        self.exact
            .iter()
            .all(|(field, value)| field(user) == *value)
            && self
                .path_startswith
                .is_none_or(|prefix| user.path.starts_with(prefix))
            && self.uuid.as_ref().is_none_or(|uuid| user.uuid == *uuid)
            && self
                .types
                .as_ref()
                .is_none_or(|types| types.contains(&user.user_type.as_str()))
            && self.is_active.is_none_or(|active| user.is_active == active)
            && self
                .is_superuser
                .is_none_or(|superuser| direct_superuser() == superuser)
            && in_any(&self.groups_by_pk)
            && in_any(&self.groups_by_name)
            && self.last_updated_gt.is_none_or(|after| {
                parse_datetime(&user.last_updated).is_some_and(|updated| updated > after)
            })
            && self.search.as_ref().is_none_or(|needle| {
                [&user.email, &user.name, &user.uuid, &user.username]
                    .iter()
                    .any(|field| contains_lowercase(field, needle))
            })
    }
}

/// The `GroupFilter` parameters the fake supports.
struct GroupFilter<'a> {
    name: Option<&'a str>,
    is_superuser: Option<bool>,
    /// Uuids of the groups the requested members belong to directly.
    with_members: Option<Vec<&'a str>>,
    search: Option<String>,
}

impl<'a> GroupFilter<'a> {
    fn parse(query: &'a Query, dir: &'a Directory) -> Result<GroupFilter<'a>, Reply> {
        let mut errors = FieldErrors::default();
        let by_pk = choices(
            query,
            "members_by_pk",
            &mut errors,
            |v| {
                v.trim()
                    .parse::<i64>()
                    .is_err()
                    .then(|| format!("“{v}” is not a valid value."))
            },
            // Django compares the raw value with str(pk), so `007` names no user.
            |v| dir.users.values().any(|u| u.pk.to_string() == v),
        );
        let by_username = choices(
            query,
            "members_by_username",
            &mut errors,
            |_| None,
            |v| dir.user_by_username(v).is_some(),
        );
        errors.check()?;
        let member_groups = |matches: &dyn Fn(&FakeUser) -> bool| -> Vec<&'a str> {
            dir.users
                .values()
                .filter(|u| matches(u))
                .flat_map(|u| u.groups.iter().map(String::as_str))
                .collect()
        };
        let by_pk = by_pk
            .map(|pks| member_groups(&|u: &FakeUser| pks.contains(&u.pk.to_string().as_str())));
        let by_username = by_username
            .map(|names| member_groups(&|u: &FakeUser| names.contains(&u.username.as_str())));
        let with_members = match (by_pk, by_username) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|g| b.contains(g)).collect()),
            (a, b) => a.or(b),
        };
        Ok(GroupFilter {
            name: query.get_nonempty("name"),
            is_superuser: query.null_boolean("is_superuser"),
            with_members,
            search: query.get_nonempty("search").map(str::to_lowercase),
        })
    }

    fn matches(&self, group: &FakeGroup) -> bool {
        self.name.is_none_or(|name| group.name == name)
            && self
                .is_superuser
                .is_none_or(|superuser| group.is_superuser == superuser)
            && self
                .with_members
                .as_ref()
                .is_none_or(|uuids| uuids.contains(&group.pk.as_str()))
            && self
                .search
                .as_ref()
                .is_none_or(|needle| contains_lowercase(&group.name, needle))
    }
}
