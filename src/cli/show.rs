//! `aksync show`: a stored snapshot's accounts, groups, memberships or roles, as a table, JSON
//! or CSV; of the latest run, a named one, or the one in force at a time (`--at`), which the
//! output names. Accounts and groups are written as they are read. Memberships (named on both
//! sides, direct or effective), roles and privileged accounts need the run's group catalog and
//! each account's groups, so they read the run's directory first ([`RunDirectory`]).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::opt::{FormatArgs, RunChoice, ShowFilters, ShowKind};
use super::output;
use super::{evidence, no_run, open_existing, resolve_run, CliError, Exit};
use crate::config::SourceConfig;
use crate::diff::path_text;
use crate::ledger::history::{privileged_since, PrivilegedLists};
use crate::output::report::csv::{csv, csv_rows};
use crate::review::access::{
    cycle_text, cycles, direct_grants, effective_groups, effective_roles, granted_text,
    membership_granted_text, role_name, RoleNames,
};
use crate::review::directory::{run_at, AccountAt, GroupNotFound, LastLogin, RunDirectory};
use crate::run::normalize::{AccountStatus, AccountType};
use crate::run::record::{with_volatile, RecordKind};
use crate::store::{Reader, RunRecord, Store};

const ACCOUNT_FIELDS: [&str; 16] = [
    "external_id",
    "secondary_key",
    "username",
    "display_name",
    "given_name",
    "family_name",
    "canonical_email",
    "status",
    "account_type",
    "authentik_type",
    "is_superuser",
    "organization_unit",
    "added_at",
    "last_login_at",
    "last_updated_at",
    "metadata",
];
/// The column `show --all` adds: whether the record is in the source's scope.
const SCOPE_FIELD: &str = "scope";
/// The column a point-in-time query (`--at`) adds to JSON and CSV: the run it read.
const RUN_FIELD: &str = "run_id";
const ACCOUNT_TABLE: [&str; 7] = [
    "username",
    "display_name",
    "canonical_email",
    "status",
    "account_type",
    "is_superuser",
    "external_id",
];
/// What `--privileged` adds to an account.
const PRIVILEGE_FIELDS: [&str; 3] = ["privilege", "privileged_since", "privileged_since_run"];
const PRIVILEGED_TABLE: [&str; 6] = [
    "username",
    "display_name",
    "account_type",
    "privilege",
    "privileged_since",
    "external_id",
];
const GROUP_FIELDS: [&str; 6] = [
    "external_id",
    "display_name",
    "is_superuser",
    "parents",
    "metadata",
    "member_count",
];
const GROUP_TABLE: [&str; 5] = [
    "display_name",
    "is_superuser",
    "member_count",
    "parents",
    "external_id",
];
const MEMBERSHIP_FIELDS: [&str; 6] = [
    "account_external_id",
    "username",
    "group_external_id",
    "group_name",
    "role",
    "granted",
];
const MEMBERSHIP_TABLE: [&str; 5] = [
    "username",
    "group_name",
    "granted",
    "account_external_id",
    "group_external_id",
];
const ROLE_FIELDS: [&str; 5] = [
    "account_external_id",
    "username",
    "role_id",
    "role",
    "granted",
];
const ROLE_TABLE: [&str; 4] = ["username", "role", "granted", "role_id"];

/// What `show` is asked for.
pub(crate) struct ShowRequest<'a> {
    pub kind: ShowKind,
    pub run: &'a RunChoice,
    pub all: bool,
    pub filters: &'a ShowFilters,
    pub format: &'a FormatArgs,
}

/// The run a query reads: `--at` (the last complete run that finished by then), else
/// `--run`. With `--at`, the time it was resolved from.
pub(crate) fn chosen_run(
    store: &Store,
    source: &str,
    choice: &RunChoice,
) -> Result<(RunRecord, Option<DateTime<Utc>>), CliError> {
    let Some(at) = &choice.at else {
        return Ok((resolve_run(store, source, &choice.run)?, None));
    };
    let at = evidence::parse_time_until("--at", at)?;
    match run_at(store, source, at)? {
        Some(run) => Ok((run, Some(at))),
        None => Err(CliError::Runtime(format!(
            "no complete run of source `{source}` finished at or before {}: `aksync runs --source {source}` lists them",
            evidence::timestamp(at)
        ))),
    }
}

/// The line that names the run a query read, and why.
pub(crate) fn run_line(source: &str, run: &RunRecord, at: Option<DateTime<Utc>>) -> String {
    let finished = evidence::timestamp(run.finished_at);
    match at {
        Some(at) => format!(
            "run {} of source `{source}`, finished {finished}: the last complete run at or before {}",
            run.run_id,
            evidence::timestamp(at)
        ),
        None => format!(
            "run {} of source `{source}`, finished {finished}",
            run.run_id
        ),
    }
}

pub(crate) fn show(
    config: &crate::config::Config,
    source: &SourceConfig,
    request: &ShowRequest<'_>,
) -> Result<Exit, CliError> {
    check_filters(request.kind, request.filters)?;
    let store = open_existing(&config.database_path())?.ok_or_else(|| no_run(&source.name))?;
    let (run, at) = chosen_run(&store, &source.name, request.run)?;
    let reader = store.reader()?;
    let records: Box<dyn Iterator<Item = Result<Value, CliError>>>;
    let (mut fields, mut table_fields): (Vec<&str>, Vec<&str>);
    let filters = request.filters;
    let directory = || -> Result<RunDirectory, CliError> {
        RunDirectory::load(&store, source, &run)
            .map_err(|error| CliError::Runtime(error.to_string()))
    };
    match request.kind {
        ShowKind::Accounts if filters.privileged => {
            let directory = directory()?;
            records = Box::new(
                privileged_accounts(&store, &directory, request)?
                    .into_iter()
                    .map(Ok),
            );
            fields = ACCOUNT_FIELDS
                .iter()
                .chain(&PRIVILEGE_FIELDS)
                .copied()
                .collect();
            table_fields = PRIVILEGED_TABLE.into();
        }
        ShowKind::Accounts | ShowKind::Groups => {
            let kind = match request.kind {
                ShowKind::Accounts => RecordKind::Account,
                _ => RecordKind::Group,
            };
            records = stored_records(&store, &reader, &run, kind, request)?;
            (fields, table_fields) = match kind {
                RecordKind::Account => (ACCOUNT_FIELDS.into(), ACCOUNT_TABLE.into()),
                _ => (GROUP_FIELDS.into(), GROUP_TABLE.into()),
            };
        }
        ShowKind::Memberships => {
            let directory = directory()?;
            if filters.effective {
                warn_cycles(&directory);
            }
            records = Box::new(memberships(&directory, request)?.into_iter().map(Ok));
            (fields, table_fields) = (MEMBERSHIP_FIELDS.into(), MEMBERSHIP_TABLE.into());
        }
        ShowKind::Roles => {
            let directory = directory()?;
            warn_cycles(&directory);
            records = Box::new(roles(&directory, request)?.into_iter().map(Ok));
            (fields, table_fields) = (ROLE_FIELDS.into(), ROLE_TABLE.into());
        }
    }
    if request.all {
        fields.push(SCOPE_FIELD);
        table_fields.push(SCOPE_FIELD);
    }
    if at.is_some() {
        fields.insert(0, RUN_FIELD);
    }
    let run_id = run.run_id.clone();
    let records = records.map(move |record| {
        let mut record = record?;
        if let (true, Some(object)) = (at.is_some(), record.as_object_mut()) {
            object.insert(RUN_FIELD.into(), run_id.clone().into());
        }
        Ok::<_, CliError>(record)
    });
    let mut out = output::Chunked::default();
    if request.format.json {
        out.push("[")?;
        for (index, record) in records.enumerate() {
            out.push(if index == 0 { "\n  " } else { ",\n  " })?;
            out.push(&record?.to_string())?;
        }
        out.push(if out.written() == 1 { "]\n" } else { "\n]\n" })?;
        out.finish()?;
    } else if request.format.csv {
        out.push(&csv(&fields, &[]))?;
        for record in records {
            out.push(&csv_rows(&output::rows(&[record?], &fields)))?;
        }
        out.finish()?;
    } else {
        let records: Vec<Value> = records.collect::<Result<_, _>>()?;
        let count = records.len();
        if at.is_some() {
            output::print_line(&format!("# {}", run_line(&source.name, &run, at)))?;
        }
        output::print(&output::table(
            &table_fields,
            &output::rows(&records, &table_fields),
        ))?;
        eprintln!(
            "{count} {} in run {} of source `{}`",
            kind_name(request.kind),
            run.run_id,
            source.name
        );
    }
    Ok(Exit::Success)
}

/// Refuses a filter the kind does not take, rather than ignoring it.
fn check_filters(kind: ShowKind, filters: &ShowFilters) -> Result<(), CliError> {
    let given = [
        (
            "--group",
            filters.group.is_some(),
            &[ShowKind::Memberships, ShowKind::Roles][..],
        ),
        (
            "--account",
            filters.account.is_some(),
            &[ShowKind::Memberships, ShowKind::Roles],
        ),
        ("--effective", filters.effective, &[ShowKind::Memberships]),
        ("--status", filters.status.is_some(), &[ShowKind::Accounts]),
        (
            "--type",
            filters.account_type.is_some(),
            &[ShowKind::Accounts],
        ),
        ("--privileged", filters.privileged, &[ShowKind::Accounts]),
    ];
    for (flag, set, kinds) in given {
        if set && !kinds.contains(&kind) {
            let names: Vec<&str> = kinds.iter().map(|kind| kind_name(*kind)).collect();
            return Err(CliError::Usage(format!(
                "{flag} applies to `show {}`, not to `show {}`",
                names.join("` and `show "),
                kind_name(kind)
            )));
        }
    }
    account_filters(filters).map(drop)
}

/// `--status` and `--type`, read.
fn account_filters(
    filters: &ShowFilters,
) -> Result<(Option<AccountStatus>, Option<AccountType>), CliError> {
    Ok((
        filters.status.as_deref().map(account_status).transpose()?,
        filters
            .account_type
            .as_deref()
            .map(account_type_named)
            .transpose()?,
    ))
}

fn account_status(value: &str) -> Result<AccountStatus, CliError> {
    match value.to_ascii_lowercase().as_str() {
        "active" => Ok(AccountStatus::Active),
        "inactive" => Ok(AccountStatus::Inactive),
        _ => Err(CliError::Usage(format!(
            "--status {value:?}: write `active` or `inactive`"
        ))),
    }
}

fn account_type_named(value: &str) -> Result<AccountType, CliError> {
    match value.to_ascii_lowercase().as_str() {
        "user" | "internal" => Ok(AccountType::User),
        "guest" | "external" => Ok(AccountType::Guest),
        "service" | "service_account" | "internal_service_account" => Ok(AccountType::Service),
        _ => Err(CliError::Usage(format!(
            "--type {value:?}: write `user`, `guest` or `service` (Authentik's internal, external, service_account)"
        ))),
    }
}

/// Accounts or groups as they are read (a large directory never sits in memory, except for
/// the aligned table), with `--status` and `--type` applied.
fn stored_records<'r>(
    store: &Store,
    reader: &'r Reader<'r>,
    run: &RunRecord,
    kind: RecordKind,
    request: &ShowRequest<'_>,
) -> Result<Box<dyn Iterator<Item = Result<Value, CliError>> + 'r>, CliError> {
    // Volatile values (last login, member count) are kept as their latest value only, so
    // they belong to the latest run; an older run shows its material content alone.
    let is_latest = store
        .latest_complete(&run.source)?
        .is_some_and(|latest| latest.run_id == run.run_id);
    let (status, account_type) = account_filters(request.filters)?;
    let wanted = move |record: &Value| {
        let matches = |field: &str, value: Option<Value>| {
            value.is_none_or(|value| record.get(field) == Some(&value))
        };
        matches("status", status.map(|s| json!(s)))
            && matches("account_type", account_type.map(|t| json!(t)))
    };
    let all = request.all;
    let source = run.source.clone();
    let records = reader
        .records_at(run, kind)?
        .filter(move |stored| all || stored.as_ref().map_or(true, |s| s.flags.in_scope()))
        .map(move |stored| {
            let stored = stored?;
            let in_scope = stored.flags.in_scope();
            let mut record = match is_latest {
                false => stored.record,
                true => {
                    let volatile = reader.volatile(&source, kind, &stored.external_id)?;
                    with_volatile(stored.record, &volatile)
                }
            };
            scope_field(&mut record, all, in_scope);
            Ok::<_, CliError>(record)
        })
        .filter(move |record| record.as_ref().map_or(true, &wanted));
    Ok(Box::new(records))
}

/// The accounts of the directory that `--all` and `--account` keep, in uid order.
fn accounts<'d>(
    directory: &'d RunDirectory,
    request: &ShowRequest<'_>,
) -> Result<Vec<&'d AccountAt>, CliError> {
    let wanted = request.filters.account.as_deref();
    let found: Vec<&AccountAt> = directory
        .accounts
        .iter()
        .filter(|account| request.all || account.in_scope)
        .filter(|account| wanted.is_none_or(|user| names_account(&account.account, user)))
        .collect();
    if let (Some(user), true) = (wanted, found.is_empty()) {
        return Err(CliError::Runtime(format!(
            "no account {user:?} in {}: give a username, an email address or a uid",
            run_line(&directory.run.source, &directory.run, None)
        )));
    }
    Ok(found)
}

/// Whether `user` is the account's username, email (in any case) or uid.
pub(crate) fn names_account(account: &crate::run::normalize::DirectoryAccount, user: &str) -> bool {
    account.username == user
        || account.external_id == user
        || account
            .canonical_email
            .as_deref()
            .is_some_and(|email| email.eq_ignore_ascii_case(user))
}

/// The id of the group `name_or_id` names in the directory.
fn group_named(directory: &RunDirectory, name_or_id: &str) -> Result<String, CliError> {
    directory
        .find_group(name_or_id)
        .map_err(|error| match error {
            GroupNotFound::Unknown { .. } => CliError::Runtime(error.to_string()),
            GroupNotFound::Ambiguous { .. } => CliError::Usage(error.to_string()),
        })
}

/// The group `--group` names, by id.
fn selected_group(
    directory: &RunDirectory,
    request: &ShowRequest<'_>,
) -> Result<Option<String>, CliError> {
    let group = request.filters.group.as_deref();
    group.map(|group| group_named(directory, group)).transpose()
}

/// Rows keyed `uid:id`, in that order: the order of membership ids, as every `show` lists
/// its records in id order.
fn in_id_order(mut rows: Vec<(String, Value)>) -> Vec<Value> {
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|(_, record)| record).collect()
}

/// Says on stderr where the group hierarchy has a cycle, which the expansion survives.
fn warn_cycles(directory: &RunDirectory) {
    for cycle in cycles(&directory.groups) {
        eprintln!(
            "aksync: warning: the group hierarchy of run {} has a cycle: {}",
            directory.run.run_id,
            cycle_text(&cycle)
        );
    }
}

fn scope_field(record: &mut Value, all: bool, in_scope: bool) {
    if let (true, Some(object)) = (all, record.as_object_mut()) {
        object.insert(
            SCOPE_FIELD.into(),
            if in_scope { "in" } else { "out" }.into(),
        );
    }
}

/// The memberships, each named on both sides; with `--effective` every ancestor group too.
fn memberships(
    directory: &RunDirectory,
    request: &ShowRequest<'_>,
) -> Result<Vec<Value>, CliError> {
    let group = selected_group(directory, request)?;
    let mut rows = Vec::new();
    for account in accounts(directory, request)? {
        let uid = &account.account.external_id;
        let direct = directory.direct_groups(uid, request.all);
        let grants = match request.filters.effective {
            true => effective_groups(&direct, &directory.groups),
            false => direct_grants(&direct, &directory.groups),
        };
        for grant in grants {
            let id = &grant.group.external_id;
            if group.as_ref().is_some_and(|wanted| wanted != id) {
                continue;
            }
            let in_scope = account.in_scope
                && directory.groups_in_scope.contains(id)
                && directory
                    .groups_in_scope
                    .contains(&grant.direct_group().external_id);
            if !request.all && !in_scope {
                continue;
            }
            let mut record = json!({
                "account_external_id": uid,
                "username": account.account.username,
                "group_external_id": id,
                "group_name": directory.groups.get(id).map_or(id.as_str(), |g| g.display_name.as_str()),
                "role": crate::run::normalize::DirectoryMembership::ROLE_MEMBER,
                "granted": membership_granted_text(&grant),
            });
            scope_field(&mut record, request.all, in_scope);
            rows.push((format!("{uid}:{id}"), record));
        }
    }
    Ok(in_id_order(rows))
}

/// Each account's roles: its own, and those of the groups it is an effective member of.
fn roles(directory: &RunDirectory, request: &ShowRequest<'_>) -> Result<Vec<Value>, CliError> {
    let group = selected_group(directory, request)?;
    let role_names = RoleNames::of(&directory.groups);
    let mut rows = Vec::new();
    for account in accounts(directory, request)? {
        let uid = &account.account.external_id;
        let groups = effective_groups(
            &directory.direct_groups(uid, request.all),
            &directory.groups,
        );
        for grant in effective_roles(
            &account.account.roles,
            &groups,
            &directory.groups,
            &role_names,
        ) {
            if group
                .as_ref()
                .is_some_and(|wanted| !grant.path.iter().any(|g| &g.external_id == wanted))
            {
                continue;
            }
            let mut record = json!({
                "account_external_id": uid,
                "username": account.account.username,
                "role_id": grant.role.pk,
                "role": role_name(&grant.role),
                "granted": granted_text(&grant.path),
            });
            scope_field(&mut record, request.all, account.in_scope);
            rows.push((format!("{uid}:{}", grant.role.pk), record));
        }
    }
    Ok(in_id_order(rows))
}

/// The accounts privileged at the run, by the rules it recorded, each with its privilege
/// path and since when it held privilege (from the ledger).
fn privileged_accounts(
    store: &Store,
    directory: &RunDirectory,
    request: &ShowRequest<'_>,
) -> Result<Vec<Value>, CliError> {
    let rules = directory.rules();
    let reader = store.reader()?;
    let (status, account_type) = account_filters(request.filters)?;
    let mut rows = Vec::new();
    let mut lists = PrivilegedLists::default();
    // Privilege is judged on the whole directory, for the accounts in scope (as reports do).
    for account in directory.accounts.iter().filter(|a| a.in_scope) {
        let record = &account.account;
        if status.is_some_and(|s| s != record.status)
            || account_type.is_some_and(|t| t != record.account_type)
        {
            continue;
        }
        let groups = directory.direct_groups(&record.external_id, true);
        let Some(path) = rules.privilege(record, &groups, &directory.groups) else {
            continue;
        };
        let since = privileged_since(
            &reader,
            &directory.run.source,
            &record.external_id,
            &directory.run.run_id,
            &mut lists,
        )
        .map_err(|error| CliError::Runtime(error.to_string()))?;
        let mut value = directory
            .full_account(store, account)
            .map_err(|error| CliError::Runtime(error.to_string()))?;
        if let Some(object) = value.as_object_mut() {
            let mut added = Map::new();
            added.insert("privilege".into(), path_text(&path).into());
            let at = evidence::timestamp(since.at);
            added.insert(
                "privileged_since".into(),
                match since.at_least {
                    true => format!("{at} or earlier").into(),
                    false => at.into(),
                },
            );
            added.insert("privileged_since_run".into(), since.run_id.into());
            object.extend(added);
            // The login as of the run (a past run never shows a later one).
            let login = match &account.last_login {
                LastLogin::At(at) => Value::from(at.as_str()),
                LastLogin::Never | LastLogin::AfterRun(_) => Value::Null,
            };
            object.insert("last_login_at".into(), login);
        }
        rows.push(value);
    }
    Ok(rows)
}

pub(crate) fn kind_name(kind: ShowKind) -> &'static str {
    match kind {
        ShowKind::Accounts => "accounts",
        ShowKind::Groups => "groups",
        ShowKind::Memberships => "memberships",
        ShowKind::Roles => "roles",
    }
}
