//! The evidence commands: `diff`, `envelopes`, `report` and `history`, and what `sync` prints
//! about a run's changes.

use std::path::Path;

use super::output::{print, print_bytes, print_line, stdout_writer};
use super::{open_existing, print_json, resolve_run, CliError, Exit};
use crate::cli::opt::EnvelopeFormat;
use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::diff::{DirectoryDiff, FieldChange, GroupRef};
use crate::display::escape;
use crate::ledger::history::{find_accounts, timeline, TimelineKind};
use crate::ledger::replay::{compare_runs, ReplaySettings};
use crate::output::artifacts::{self, open_envelopes, read_envelope_file, rebuild_envelopes};
use crate::output::envelope::{EnvelopeContext, OpenlaneWriter};
use crate::output::report::assemble::{build_report, Selection};
use crate::output::report::{self, group_names, inline_text, ReportFormat};
use crate::output::snapshot::{self, records_in_scope, SnapshotError};
use crate::store::{RunRecord, Store};

/// Group names for people: escaped, as all directory text in this module.
fn groups_text(groups: &[GroupRef]) -> String {
    escape(&group_names(groups)).into_owned()
}

fn store(config: &Config, source: &str) -> Result<Store, CliError> {
    open_existing(&config.database_path())?.ok_or_else(|| super::no_run(source))
}

/// One line: how many of each event.
pub(crate) fn diff_headline(diff: &DirectoryDiff) -> String {
    if let Some(baseline) = &diff.baseline {
        return format!(
            "{}: baseline, {} accounts present ({} active, {} with the superuser flag): {}",
            diff.source,
            diff.population.accounts.after,
            diff.population.active.after,
            baseline.superusers.len(),
            baseline.reason
        );
    }
    let escalations = diff.escalations();
    let mut line = format!(
        "{}: {} joiners, {} movers, {} leavers, {} purged, {} group changes, {} membership changes",
        diff.source,
        diff.joiners.len(),
        diff.movers.len(),
        diff.leavers.len(),
        diff.purged.len(),
        diff.groups.created.len() + diff.groups.deleted.len() + diff.groups.changed.len(),
        diff.memberships.added.len() + diff.memberships.removed.len()
    );
    if escalations > 0 {
        line.push_str(&format!(", {escalations} PRIVILEGE ESCALATION(S)"));
    }
    line
}

pub(crate) fn diff(
    config: &Config,
    source: &SourceConfig,
    from: &str,
    to: &str,
    json: bool,
) -> Result<Exit, CliError> {
    let store = store(config, &source.name)?;
    let from = resolve_run(&store, &source.name, from)?;
    let to = resolve_run(&store, &source.name, to)?;
    let result = match recorded_diff(&store, source, &from, &to)? {
        Some(recorded) => recorded,
        None => {
            // Not what a run compared: replayed now, under the settings the newer run
            // recorded (today's for a run from before the ledger).
            let replayed = compare_runs(&store, source, Some(&from), &to, None)?;
            let settings = match &replayed.settings {
                ReplaySettings::Recorded(run_id) => format!("the settings run {run_id} recorded"),
                ReplaySettings::ConfiguredNow => format!(
                    "the settings configured now ({}), as run {} has no ledger entry",
                    settings_summary(source),
                    to.run_id
                ),
            };
            eprintln!(
                "aksync: runs {} and {} are not consecutive: replaying their stored snapshots with {settings}",
                from.run_id, to.run_id
            );
            if from.settings_fingerprint != to.settings_fingerprint {
                eprintln!(
                    "aksync: warning: runs {} and {} were made with different filter, group-sync, primary-directory or ignore_fields settings: what only entered or left the scope is listed under scope changes, and a field either run ignored is not compared",
                    from.run_id, to.run_id
                );
            }
            replayed.diff
        }
    };
    if json {
        print_json(&result)?;
    } else {
        print(&human_diff(&result))?;
    }
    Ok(Exit::Success)
}

/// The diff `to` recorded in its ledger entry, when `to` was compared with `from`.
fn recorded_diff(
    store: &Store,
    source: &SourceConfig,
    from: &RunRecord,
    to: &RunRecord,
) -> Result<Option<DirectoryDiff>, CliError> {
    if to.previous_run.as_deref() != Some(from.run_id.as_str()) {
        return Ok(None);
    }
    let reader = store.reader()?;
    let recorded = crate::ledger::read::run_evidence(&reader, &source.name, &to.run_id)
        .map_err(|error| CliError::Runtime(error.to_string()))?;
    Ok(recorded.and_then(|run| run.evidence.diff))
}

/// The settings a replay judges by, in a few words.
fn settings_summary(source: &SourceConfig) -> String {
    let list = |values: &[String]| {
        if values.is_empty() {
            "none".to_string()
        } else {
            values.join(", ")
        }
    };
    format!(
        "filter {}, group_filter {}, group sync {}, ignore_fields {}, privileged_groups {}, privileged_roles {}",
        source.filter.as_deref().unwrap_or("none"),
        source.group_filter.as_deref().unwrap_or("none"),
        if source.disable_group_sync {
            "off"
        } else {
            "on"
        },
        list(&source.ignore_fields_as_written),
        list(&source.privileged_groups),
        list(&source.privileged_roles)
    )
}

fn when(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn change_text(change: &FieldChange) -> String {
    escape(&format!(
        "{}: {} → {}",
        change.field,
        inline_text(&change.old),
        inline_text(&change.new)
    ))
    .into_owned()
}

/// The readable summary of a diff.
fn human_diff(diff: &DirectoryDiff) -> String {
    let mut out = format!(
        "{} → {} ({})\n{}\n",
        diff.from_run,
        diff.to_run,
        diff.source,
        diff_headline(diff)
    );
    for grant in &diff.privilege_granted {
        out.push_str(&format!(
            "\n!! PRIVILEGE ESCALATION: {} ({}), {}: {}\n",
            escape(&grant.username),
            escape(&grant.external_id),
            grant.reason.as_str(),
            escape(&grant.privilege_source)
        ));
    }
    if !diff.joiners.is_empty() {
        out.push_str("\nJoiners\n");
    }
    for joiner in &diff.joiners {
        out.push_str(&format!(
            "  + {} ({}), groups: {}\n",
            escape(&joiner.username),
            joiner.reason.as_str(),
            groups_text(&joiner.groups)
        ));
    }
    if !diff.movers.is_empty() {
        out.push_str("\nMovers\n");
    }
    for mover in &diff.movers {
        out.push_str(&format!("  ~ {}\n", escape(&mover.username)));
        for change in &mover.changes {
            out.push_str(&format!("      {}\n", change_text(change)));
        }
        if !mover.groups_added.is_empty() {
            out.push_str(&format!(
                "      groups added: {}\n",
                groups_text(&mover.groups_added)
            ));
        }
        if !mover.groups_removed.is_empty() {
            out.push_str(&format!(
                "      groups removed: {}\n",
                groups_text(&mover.groups_removed)
            ));
        }
    }
    if !diff.leavers.is_empty() {
        out.push_str("\nLeavers\n");
    }
    for leaver in &diff.leavers {
        let last_seen = leaver
            .last_seen_active_at
            .map_or_else(|| "unknown".to_string(), when);
        out.push_str(&format!(
            "  - {} ({}), detected {}, last seen active {last_seen}; held: {}\n",
            escape(&leaver.username),
            leaver.reason.as_str(),
            when(leaver.detected_at),
            groups_text(&leaver.groups_at_departure)
        ));
    }
    let group_lines: Vec<String> = diff
        .groups
        .created
        .iter()
        .map(|group| format!("  + {}", escape(&group.display_name)))
        .chain(
            diff.groups
                .deleted
                .iter()
                .map(|group| format!("  - {}", escape(&group.display_name))),
        )
        .chain(diff.groups.changed.iter().map(|group| {
            let changes: Vec<String> = group.changes.iter().map(change_text).collect();
            format!(
                "  ~ {}: {}",
                escape(&group.display_name),
                changes.join("; ")
            )
        }))
        .collect();
    if !group_lines.is_empty() {
        out.push_str(&format!("\nGroups\n{}\n", group_lines.join("\n")));
    }
    let membership_lines: Vec<String> = diff
        .memberships
        .added
        .iter()
        .map(|m| format!("  + {} in {}", escape(&m.username), escape(&m.group_name)))
        .chain(
            diff.memberships
                .removed
                .iter()
                .map(|m| format!("  - {} from {}", escape(&m.username), escape(&m.group_name))),
        )
        .collect();
    if !membership_lines.is_empty() {
        out.push_str(&format!("\nMemberships\n{}\n", membership_lines.join("\n")));
    }
    out
}

/// The source's primary-directory flag as `run` recorded it in the ledger (today's for a run
/// from before the ledger): a later toggle does not change what a past run said.
fn recorded_primary_directory(
    store: &Store,
    source: &SourceConfig,
    run: &RunRecord,
) -> Result<bool, CliError> {
    let reader = store.reader()?;
    let recorded = crate::ledger::read::run_evidence(&reader, &source.name, &run.run_id)
        .map_err(crate::store::StoreError::from)?;
    Ok(recorded.map_or(source.primary_directory, |sealed| {
        sealed.evidence.settings.primary_directory
    }))
}

/// What `aksync envelopes RUN` is asked for.
pub(crate) enum EnvelopeRequest {
    /// The run's changes, from its envelope file.
    Changes(EnvelopeFormat),
    /// The run's whole snapshot, from the store.
    Full(EnvelopeFormat),
    /// The run's envelope file written again from the store.
    Rebuild,
}

/// How many envelopes of a run's file are in memory at once while they are projected.
const PROJECTION_BATCH: usize = 1000;

pub(crate) fn envelopes(
    config: &Config,
    source: &SourceConfig,
    run: &str,
    request: EnvelopeRequest,
) -> Result<Exit, CliError> {
    let store = store(config, &source.name)?;
    let run = resolve_run(&store, &source.name, run)?;
    let runtime = |error: artifacts::ArtifactError| CliError::Runtime(error.to_string());
    let write_failed = |error: std::io::Error| CliError::Runtime(error.to_string());
    match request {
        EnvelopeRequest::Rebuild => {
            let path =
                rebuild_envelopes(&config.state_dir, &store, source, &run).map_err(runtime)?;
            eprintln!("rebuilt {}", path.display());
        }
        EnvelopeRequest::Changes(EnvelopeFormat::Jsonl) => {
            print_bytes(&read_envelope_file(&config.state_dir, &run).map_err(runtime)?)?
        }
        // A run's changes are not the source's complete record set: a consumer that inferred
        // removals from them would remove every record that did not change.
        EnvelopeRequest::Changes(EnvelopeFormat::Openlane) => {
            let mut batches = open_envelopes(&config.state_dir, &run).map_err(runtime)?;
            let primary = recorded_primary_directory(&store, source, &run)?;
            let mut sets =
                OpenlaneWriter::start(stdout_writer(), false, primary).map_err(write_failed)?;
            loop {
                let batch = batches.next_batch(PROJECTION_BATCH).map_err(runtime)?;
                if batch.is_empty() {
                    break;
                }
                for envelope in batch {
                    sets.push(envelope.schema, &envelope.openlane_entry())
                        .map_err(write_failed)?;
                }
            }
            sets.finish().map_err(write_failed)?;
        }
        EnvelopeRequest::Full(format) => {
            let primary_directory = recorded_primary_directory(&store, source, &run)?;
            let reader = store.reader()?;
            let records = records_in_scope(&reader, &run)?;
            let mut out = stdout_writer();
            let written = match format {
                EnvelopeFormat::Jsonl => {
                    let context = EnvelopeContext {
                        source: &source.name,
                        run_id: &run.run_id,
                        observed_at: run.finished_at,
                        primary_directory,
                    };
                    snapshot::write_envelopes(records, &context, &mut out)
                }
                EnvelopeFormat::Openlane => {
                    snapshot::write_openlane(records, primary_directory, &mut out)
                }
            };
            match written {
                Ok(count) => eprintln!(
                    "{count} records in run {} of source `{}`",
                    run.run_id, source.name
                ),
                Err(SnapshotError::Store(error)) => return Err(error.into()),
                Err(error @ SnapshotError::Write(_)) => {
                    return Err(CliError::Runtime(error.to_string()))
                }
            }
        }
    }
    Ok(Exit::Success)
}

pub(crate) struct ReportRequest<'a> {
    pub run: &'a str,
    pub from: Option<&'a str>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub format: &'a str,
    pub out: Option<&'a Path>,
}

pub(crate) fn report(
    config: &Config,
    source: &SourceConfig,
    request: &ReportRequest<'_>,
    clock: &dyn Clock,
) -> Result<Exit, CliError> {
    let format = ReportFormat::parse(request.format).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown report format {:?}: use md, json, csv, html or pdf",
            request.format
        ))
    })?;
    if format == ReportFormat::Pdf && report::find_chromium().is_none() {
        return Err(CliError::Runtime(
            report::ReportError::ChromiumMissing.to_string(),
        ));
    }
    let store = store(config, &source.name)?;
    let selection = match (request.since, request.from) {
        (Some(since), _) => {
            let since = parse_time("--since", since)?;
            let until = request
                .until
                .map(|until| parse_time("--until", until))
                .transpose()?
                .unwrap_or_else(|| clock.now());
            if since >= until {
                return Err(CliError::Usage(format!(
                    "--since {} is not before --until {}: give the earlier time with --since",
                    timestamp(since),
                    timestamp(until)
                )));
            }
            Selection::Between { since, until }
        }
        (None, Some(from)) => {
            let to = resolve_run(&store, &source.name, request.run)?;
            let from = resolve_run(&store, &source.name, from)?;
            if from.run_id >= to.run_id {
                return Err(CliError::Usage(format!(
                    "--from {} is not older than {}: give the earlier run with --from",
                    from.run_id, to.run_id
                )));
            }
            Selection::After {
                from: Box::new(from),
                to: Box::new(to),
            }
        }
        (None, None) => Selection::Run(Box::new(resolve_run(&store, &source.name, request.run)?)),
    };
    let built = build_report(&store, source, &selection, clock.now())?;
    let bytes =
        report::render(&built, format).map_err(|error| CliError::Runtime(error.to_string()))?;
    match request.out {
        Some(path) => {
            artifacts::write_report_file(
                path,
                &built,
                &bytes,
                config.ledger.signing_key.as_deref(),
            )
            .map_err(|error| CliError::Runtime(error.to_string()))?;
            eprintln!("wrote {} and its manifest", path.display());
        }
        None => print_bytes(&bytes)?,
    }
    Ok(Exit::Success)
}

pub(crate) use crate::display::timestamp;

/// An RFC 3339 time, or a date meaning its midnight UTC.
pub(crate) fn parse_time(
    option: &str,
    value: &str,
) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    Ok(match parse_time_arg(option, value)? {
        TimeArg::At(at) => at,
        TimeArg::Day(date) => date.and_time(chrono::NaiveTime::MIN).and_utc(),
    })
}

/// An RFC 3339 time, or a date meaning its end (the last instant before the next midnight
/// UTC): "on March 3rd" includes all of March 3rd.
pub(crate) fn parse_time_until(
    option: &str,
    value: &str,
) -> Result<chrono::DateTime<chrono::Utc>, CliError> {
    Ok(match parse_time_arg(option, value)? {
        TimeArg::At(at) => at,
        TimeArg::Day(date) => {
            let next = date.succ_opt().unwrap_or(date);
            next.and_time(chrono::NaiveTime::MIN).and_utc() - chrono::Duration::nanoseconds(1)
        }
    })
}

enum TimeArg {
    At(chrono::DateTime<chrono::Utc>),
    Day(chrono::NaiveDate),
}

fn parse_time_arg(option: &str, value: &str) -> Result<TimeArg, CliError> {
    let value = value.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(TimeArg::At(at.with_timezone(&chrono::Utc)));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(TimeArg::Day(date));
    }
    Err(CliError::Usage(format!(
        "{option} {value:?} is not a time: write RFC 3339 such as 2026-01-01T00:00:00Z, or a date such as 2026-01-01"
    )))
}

pub(crate) fn history(
    config: &Config,
    source_config: &SourceConfig,
    user: &str,
    json: bool,
) -> Result<Exit, CliError> {
    let source = source_config.name.as_str();
    let store = store(config, source)?;
    let reader = store.reader()?;
    let ledger = |error: crate::ledger::LedgerError| CliError::Runtime(error.to_string());
    let uids = find_accounts(&reader, source, user).map_err(ledger)?;
    if uids.is_empty() && reader.chain_head(source)?.next_seq == 0 {
        return Err(CliError::Runtime(format!(
            "the ledger holds no entries of source `{source}` yet (its runs are from an older aksync): the next `aksync sync` or service run writes them, and then `history` reads them"
        )));
    }
    if uids.is_empty() {
        return Err(CliError::Runtime(format!(
            "no account of source `{source}` ever had the username, email or uid {user:?}"
        )));
    }
    let timelines = uids
        .iter()
        .map(|uid| timeline(&reader, source, uid))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ledger)?;
    if json {
        print_json(&timelines)?;
        return Ok(Exit::Success);
    }
    for timeline in &timelines {
        print_line(&format!(
            "{} ({}), source {}",
            escape(&timeline.usernames.join(" / ")),
            escape(&timeline.external_id),
            timeline.source
        ))?;
        for event in &timeline.events {
            let what = event.event.as_str();
            let mut details: Vec<String> = event
                .reason
                .iter()
                .map(|reason| escape(reason).into_owned())
                .collect();
            details.extend(event.changes.iter().map(change_text));
            if !event.groups_added.is_empty() {
                details.push(format!(
                    "groups added: {}",
                    groups_text(&event.groups_added)
                ));
            }
            if !event.groups_removed.is_empty() {
                details.push(format!(
                    "groups removed: {}",
                    groups_text(&event.groups_removed)
                ));
            }
            if matches!(
                event.event,
                TimelineKind::Baseline
                    | TimelineKind::Joined
                    | TimelineKind::Rejoined
                    | TimelineKind::Left
            ) {
                details.push(format!("groups: {}", groups_text(&event.groups)));
            }
            if event.privilege_escalation {
                details.push("PRIVILEGE ESCALATION".to_string());
            }
            print_line(&format!(
                "  {}  {:<19} {}  (run {})",
                when(event.detected_at),
                what,
                details.join("; "),
                event.run_id
            ))?;
        }
    }
    Ok(Exit::Success)
}
