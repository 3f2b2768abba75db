//! What every format shows, computed once: the header's labelled fields, the report's events
//! in section order, and the text of values, field changes and detection latencies. The
//! formats only lay this out.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use similar::TextDiff;

use super::period::{
    coverage_gaps, roll_forward, terminations, CoverageGap, RollForward, RollForwardLine,
    Terminations,
};
use super::{PeriodRun, Report};
use crate::diff::{
    path_text, DirectoryDiff, FieldChange, GroupChange, GroupRef, Joiner, Leaver, MembershipRef,
    Mover, PrivilegeChange, PrivilegedGroupChange, Purge,
};
use crate::store::RunStatus;

/// Values longer than this, or on several lines, are shown as a unified diff: an `old → new`
/// of two paragraphs hides what actually changed.
const INLINE_LIMIT: usize = 80;
/// A line diff costs up to the product of the two sides' lengths, and a directory attribute
/// can be megabytes that an attacker flips every run: values beyond either bound are shown
/// by their sizes only ("changed, N bytes → M bytes").
const DIFF_MAX_LINES: usize = 1_000;
const DIFF_MAX_BYTES: usize = 64 * 1024;
/// What one diff may take within those bounds before it settles for a coarser result.
const DIFF_DEADLINE: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) const LATENCY_MEANING: &str = "an upper bound on how long the change went unseen";
pub(super) const ESCALATION_FLAG: &str = "PRIVILEGE ESCALATION";
pub(super) const LOGIN_WARNING: &str =
    "logged in after the last run that saw the account active: it was used while its departure was not yet seen";

pub(super) fn title(report: &Report) -> String {
    let header = &report.header;
    match report.diffs.as_slice() {
        [only] if report.runs.len() == 1 => {
            format!("Access report of {}, run {}", header.source, only.to_run)
        }
        _ => format!(
            "Access report of {}, {} to {}",
            header.source,
            timestamp(header.period.start),
            timestamp(header.period.end)
        ),
    }
}

/// When a run finished, if the report knows the run.
pub(super) fn run_finished_at(report: &Report, run_id: &str) -> Option<DateTime<Utc>> {
    report
        .runs
        .iter()
        .find(|run| run.run_id == run_id)
        .map(|run| run.finished_at)
        .or_else(|| {
            report
                .trend
                .iter()
                .find(|point| point.run_id == run_id)
                .map(|point| point.finished_at)
        })
}

/// When a run started, if it is one of the period's.
pub(super) fn run_started_at(report: &Report, run_id: &str) -> Option<DateTime<Utc>> {
    report
        .runs
        .iter()
        .find(|run| run.run_id == run_id)
        .map(|run| run.started_at)
}

/// A run id with the time it finished, so that a reader needs no lookup.
pub(super) fn run_label(report: &Report, run_id: &str) -> String {
    match run_finished_at(report, run_id) {
        Some(at) => format!("{run_id} ({})", timestamp(at)),
        None => run_id.to_string(),
    }
}

/// The figures of the period, computed once for every format.
pub(super) struct Figures {
    pub gaps: Vec<CoverageGap>,
    pub roll_forward: RollForward,
    pub terminations: Terminations,
}

pub(super) fn figures(report: &Report) -> Figures {
    Figures {
        gaps: coverage_gaps(report),
        roll_forward: roll_forward(report),
        terminations: terminations(report),
    }
}

/// One value of a header field. Literals (ids, URLs, hashes, expressions) are shown verbatim
/// in a monospace font; prose is ordinary text.
pub(super) enum HeaderValue {
    Prose(String),
    Literal(String),
}

pub(super) struct HeaderField {
    pub label: &'static str,
    pub values: Vec<HeaderValue>,
}

/// Every field of the header: what the report covers, how it was produced, and how to
/// re-perform it.
pub(super) fn header_fields(report: &Report) -> Vec<HeaderField> {
    use HeaderValue::{Literal, Prose};
    let header = &report.header;
    let period = &header.period;
    let field = |label, value| HeaderField {
        label,
        values: vec![value],
    };
    let list = |label, values: Vec<HeaderValue>, none: &str| HeaderField {
        label,
        values: if values.is_empty() {
            vec![Prose(none.to_string())]
        } else {
            values
        },
    };
    let distinct = |values: Vec<String>| -> Vec<HeaderValue> {
        let set: BTreeSet<String> = values.into_iter().collect();
        set.into_iter().map(Literal).collect()
    };
    let count = |status: RunStatus| report.runs.iter().filter(|r| r.status == status).count();
    let settings = &header.settings;
    vec![
        field("Report id", Literal(header.report_id.clone())),
        field("Source", Literal(header.source.clone())),
        field("Period start (UTC)", Prose(timestamp(period.start))),
        field("Period end (UTC)", Prose(timestamp(period.end))),
        field("Runs selected", Prose(period.selection.clone())),
        field(
            "Starts from the state of run",
            match &period.start_run {
                Some(run) => Literal(run_label(report, run)),
                None => Prose("none: no complete run before the period".to_string()),
            },
        ),
        field(
            "Ends with the state of run",
            match &period.end_run {
                Some(run) => Literal(run_label(report, run)),
                None => Prose("none: no complete run up to the period's end".to_string()),
            },
        ),
        field(
            "Runs in the period",
            Prose(format!(
                "{} ({} complete, {} failed, {} quarantined)",
                report.runs.len(),
                count(RunStatus::Complete),
                count(RunStatus::Failed),
                count(RunStatus::Quarantined)
            )),
        ),
        list(
            "Settings fingerprints in force",
            distinct(
                report
                    .runs
                    .iter()
                    .map(|run| run.settings_fingerprint.clone())
                    .collect(),
            ),
            "none: no run in the period",
        ),
        field("Authentik base URL", Literal(header.base_url.clone())),
        list(
            "Authentik versions",
            distinct(
                report
                    .runs
                    .iter()
                    .filter_map(|run| run.authentik_version.clone())
                    .collect(),
            ),
            "unknown: not reported by the server",
        ),
        list(
            "Token's Authentik user",
            distinct(
                report
                    .runs
                    .iter()
                    .filter_map(|run| run.token_user.as_ref())
                    .map(|user| format!("{} (pk {})", user.username, user.pk))
                    .collect(),
            ),
            "unknown: not recorded by the runs",
        ),
        list(
            "API calls each run made",
            header.endpoints.iter().cloned().map(Literal).collect(),
            "none",
        ),
        field(
            "Filter expression",
            match &header.filter {
                Some(filter) => Literal(filter.clone()),
                None => Prose("none: every record is included".to_string()),
            },
        ),
        field(
            "Group sync",
            Prose(if header.group_sync {
                "enabled: groups and memberships were fetched and compared".to_string()
            } else {
                "disabled: only users were fetched; groups and memberships were not compared"
                    .to_string()
            }),
        ),
        list(
            "Privileged groups",
            settings
                .privileged_groups
                .iter()
                .cloned()
                .map(Literal)
                .collect(),
            "the superuser groups only (privileged_groups is not set)",
        ),
        field(
            "HR key field",
            match &settings.hr_key_field {
                Some(key) => Literal(key.clone()),
                None => Prose("none: hr_key_field is not set".to_string()),
            },
        ),
        field(
            "Termination SLA",
            Prose(
                settings
                    .sla_seconds
                    .map_or_else(|| "none: sla is not set".to_string(), format_latency),
            ),
        ),
        field(
            "Expected interval between complete runs",
            Prose(format!(
                "{}, from {}",
                format_latency(settings.expected_interval_seconds),
                settings.expected_interval_from
            )),
        ),
        field(
            "Privileged roles",
            match settings.privileged_roles.as_slice() {
                [] => Prose("none: privileged_roles is not set".to_string()),
                roles => Literal(roles.join(", ")),
            },
        ),
        field(
            "Ledger digest of the report's run",
            match &header.evidence.run_digest {
                Some(digest) => Literal(digest.clone()),
                None => Prose(
                    "none: the run has no ledger entry (check it with aksync verify)".to_string(),
                ),
            },
        ),
        field(
            "Signed by",
            match &header.evidence.signed_by {
                Some(key) => Literal(key.clone()),
                None => Prose("not signed: no ledger.signing_key_file is configured".to_string()),
            },
        ),
        field(
            "Oldest evidence kept",
            match &header.evidence.oldest_evidence {
                Some(oldest) => Prose(format!(
                    "{}{}",
                    timestamp(oldest.recorded_at),
                    oldest
                        .run_id
                        .as_ref()
                        .map(|run| format!(", run {run}"))
                        .unwrap_or_default()
                )),
                None => Prose("none: the ledger holds no entry for this source".to_string()),
            },
        ),
        list(
            "Evidence written after its run",
            evidence_notes(report),
            "none: every run's evidence was written by the run itself",
        ),
        field(
            "Produced by",
            Prose(format!(
                "aksync {} on host {} as OS user {}",
                header.producer.aksync_version, header.producer.host, header.producer.os_user
            )),
        ),
        field("Report generated at", Prose(timestamp(report.generated_at))),
    ]
}

/// Runs whose evidence the report did not take from an entry written by the run itself.
fn evidence_notes(report: &Report) -> Vec<HeaderValue> {
    let evidence = &report.header.evidence;
    let mut notes = Vec::new();
    if !evidence.backfilled_runs.is_empty() {
        notes.push(HeaderValue::Prose(format!(
            "{} run(s) from before the ledger, replayed once when the ledger was created, with the settings of that time: {}",
            evidence.backfilled_runs.len(),
            evidence.backfilled_runs.join(", ")
        )));
    }
    if !evidence.replayed_runs.is_empty() {
        notes.push(HeaderValue::Prose(format!(
            "{} run(s) without a ledger entry, replayed for this report with the settings configured now: {}",
            evidence.replayed_runs.len(),
            evidence.replayed_runs.join(", ")
        )));
    }
    for (run, reason) in &evidence.missing {
        notes.push(HeaderValue::Prose(format!(
            "run {run}: no events: {reason}"
        )));
    }
    notes
}

/// A piece of a table cell.
pub(super) enum Piece {
    Text(String),
    /// An identifier, shown verbatim.
    Code(String),
    Strong(String),
    /// A link to a section of the report.
    Link(&'static str, String),
    /// A warning that must stand out.
    Flag(String),
}

pub(super) type Cell = Vec<Piece>;

fn text(value: impl Into<String>) -> Cell {
    vec![Piece::Text(value.into())]
}

fn code(value: impl Into<String>) -> Cell {
    vec![Piece::Code(value.into())]
}

/// A section that is one table.
pub(super) struct Block {
    pub id: &'static str,
    pub title: &'static str,
    pub description: String,
    pub columns: Vec<(&'static str, u32)>,
    pub rows: Vec<Vec<Cell>>,
    /// Whether the section must stand out when it has rows.
    pub alert: bool,
    /// Whether its rows are a list whose length the heading gives (not a table of figures).
    pub listing: bool,
}

impl Block {
    pub(super) fn heading(&self) -> String {
        if self.listing {
            format!("{} ({})", self.title, self.rows.len())
        } else {
            self.title.to_string()
        }
    }
}

/// The counts at the top of a report, each linking to its section.
pub(super) fn summary(report: &Report, figures: &Figures) -> Block {
    let diffs = &report.diffs;
    let total = |count: fn(&crate::diff::DirectoryDiff) -> usize| -> usize {
        diffs.iter().map(count).sum()
    };
    let count = |status: RunStatus| report.runs.iter().filter(|r| r.status == status).count();
    let roll = &figures.roll_forward;
    let terminations = &figures.terminations;
    let line = |label: &str, value: String, section: &'static str| {
        vec![vec![Piece::Link(section, label.to_string())], text(value)]
    };
    let rows = vec![
        line(
            "Runs in period",
            format!(
                "{} ({} complete, {} failed, {} quarantined)",
                report.runs.len(),
                count(RunStatus::Complete),
                count(RunStatus::Failed),
                count(RunStatus::Quarantined)
            ),
            "runs",
        ),
        line("Coverage gaps", figures.gaps.len().to_string(), "coverage"),
        line(
            "Connections and disconnections",
            report.connections.len().to_string(),
            "connections",
        ),
        line(
            "Access reviews imported",
            format!(
                "{} ({} revocation(s) decided)",
                report.access_reviews.len(),
                revocations(report).count()
            ),
            "access-reviews",
        ),
        line(
            "Settings changes",
            report
                .settings_changes
                .iter()
                .map(|changed| changed.changes.len())
                .sum::<usize>()
                .to_string(),
            "settings",
        ),
        line(
            "Accounts",
            format!(
                "{} → {} ({})",
                roll.accounts.start,
                roll.accounts.end,
                reconciled(&roll.accounts)
            ),
            "roll-forward",
        ),
        line(
            "Active accounts",
            format!(
                "{} → {} ({})",
                roll.active.start,
                roll.active.end,
                reconciled(&roll.active)
            ),
            "roll-forward",
        ),
        line(
            "Privileged accounts",
            format!(
                "{} at the start, {} at the end ({})",
                roll.privileged.start,
                roll.privileged.end,
                reconciled(&roll.privileged)
            ),
            "privileged-end",
        ),
        line(
            "Privilege granted",
            total(|d| d.privilege_granted.len()).to_string(),
            "privilege-granted",
        ),
        line(
            "Privilege removed",
            total(|d| d.privilege_removed.len()).to_string(),
            "privilege-removed",
        ),
        line(
            "Privileged group changes",
            total(|d| d.privileged_group_changes.len()).to_string(),
            "privileged-groups",
        ),
        line(
            "Terminations",
            format!(
                "{} leaver events, {} purged; {} cases, {} people",
                total(|d| d.leavers.len()),
                total(|d| d.purged.len()),
                terminations.cases.len(),
                terminations.people
            ),
            "terminations",
        ),
        line(
            "SLA breaches",
            match report.header.settings.sla_seconds {
                Some(_) => terminations.latency.breaches.len().to_string(),
                None => "no SLA set".to_string(),
            },
            "terminations",
        ),
        line("Joiners", total(|d| d.joiners.len()).to_string(), "joiners"),
        line("Movers", total(|d| d.movers.len()).to_string(), "movers"),
        line(
            "Group changes",
            total(|d| d.groups.created.len() + d.groups.deleted.len() + d.groups.changed.len())
                .to_string(),
            "groups",
        ),
        line(
            "Membership changes",
            total(|d| d.memberships.added.len() + d.memberships.removed.len()).to_string(),
            "memberships",
        ),
    ];
    Block {
        id: "summary",
        title: "Summary",
        description: "What the period holds, with a link to each section.".to_string(),
        columns: vec![("Section", 30), ("Count", 70)],
        rows,
        alert: false,
        listing: false,
    }
}

fn reconciled(line: &RollForwardLine) -> &'static str {
    if line.reconciles {
        "reconciles"
    } else {
        "DOES NOT RECONCILE"
    }
}

/// The sections that are one table each, in report order after the header.
pub(super) fn blocks(report: &Report, figures: &Figures) -> Vec<Block> {
    vec![
        runs_block(report),
        connections_block(report),
        access_reviews_block(report),
        revocations_block(report),
        coverage_block(report, figures),
        roll_forward_block(report, figures),
        privileged_block(report, Side::Start),
        privileged_block(report, Side::End),
        privilege_block(report, Side::End),
        privilege_block(report, Side::Start),
        privileged_groups_block(report),
        terminations_block(report, figures),
        settings_block(report),
        scope_block(report),
        quarantine_block(report),
    ]
}

/// What entered or left the source's scope, apart from joiners and leavers: a consumer of the
/// envelopes sees these as `in_scope` and `out_of_scope`, not as offboarding.
fn scope_block(report: &Report) -> Block {
    let mut rows = Vec::new();
    for diff in &report.diffs {
        let scope = &diff.scope_changes;
        let run = || code(run_label(report, &diff.to_run));
        if let Some(on) = scope.group_sync {
            let what = match on {
                true => "group sync enabled: groups and memberships entered the scope",
                false => {
                    "group sync disabled: groups and memberships left the scope, none was removed"
                }
            };
            rows.push(vec![text("group sync"), text(what), run()]);
        }
        let lists = [
            ("account entered", &scope.accounts_entered),
            ("account left", &scope.accounts_left),
            ("group entered", &scope.groups_entered),
            ("group left", &scope.groups_left),
        ];
        for (what, changes) in lists {
            for change in changes {
                rows.push(vec![
                    vec![
                        Piece::Strong(change.name.clone()),
                        Piece::Text(" ".to_string()),
                        Piece::Code(change.external_id.clone()),
                    ],
                    text(format!("{what}: {}", change.cause.as_str())),
                    run(),
                ]);
            }
        }
        for (what, count) in [
            ("memberships entered", scope.memberships_entered),
            ("memberships left", scope.memberships_left),
        ] {
            if count > 0 {
                rows.push(vec![
                    text("memberships"),
                    text(format!("{count} {what}")),
                    run(),
                ]);
            }
        }
    }
    Block {
        id: "scope-changes",
        title: "Scope changes",
        description: "Records that entered or left the source's scope (its filter, group_filter or group sync) without being created or deleted in Authentik: not joiners or leavers. A record that changed upstream as well has its own event in the sections below.".to_string(),
        columns: vec![("Record", 35), ("Change", 45), ("Run", 20)],
        alert: false,
        listing: true,
        rows,
    }
}

/// The runs held for a decision because they found too many leavers or removals at once:
/// why, what was decided, and what a run not approved would have reported.
fn quarantine_block(report: &Report) -> Block {
    let rows = report
        .runs
        .iter()
        .filter_map(|run| Some((run, run.quarantine.as_ref()?)))
        .map(|(run, quarantine)| {
            let decision = match &quarantine.decision {
                None => vec![Piece::Flag(
                    "awaiting a decision: `aksync approve` or `aksync reject`".to_string(),
                )],
                Some(taken) => text(format!(
                    "{} by {} at {}",
                    taken.decision.as_str(),
                    taken.by,
                    timestamp(taken.at)
                )),
            };
            let held = match run.held_leavers.is_empty() {
                true => text("none held"),
                false => text(run.held_leavers.join(", ")),
            };
            vec![
                code(run_label(report, &run.run_id)),
                text(quarantine.reasons_line()),
                decision,
                held,
            ]
        })
        .collect();
    Block {
        id: "quarantine",
        title: "Quarantined runs",
        description: "Runs that found more leavers or membership removals than the source's thresholds allow (max_leavers, max_leaver_percent, max_membership_removals, max_membership_removal_percent), or an empty listing: their changes were held, nothing was delivered, and the next run was compared with the last complete run. An approved run's changes are in the sections below; the leavers of a run not approved are listed here only.".to_string(),
        columns: vec![
            ("Run", 17),
            ("Thresholds exceeded", 33),
            ("Decision", 20),
            ("Leavers held", 30),
        ],
        alert: report.runs.iter().any(|run| {
            run.quarantine
                .as_ref()
                .is_some_and(|quarantine| quarantine.decision.is_none())
        }),
        listing: true,
        rows,
    }
}

/// When collection from the source began and ended: between a disconnection and the next
/// connection the source was not collected from, whatever the schedule says.
fn connections_block(report: &Report) -> Block {
    let rows = report
        .connections
        .iter()
        .map(|connection| {
            vec![
                text(timestamp(connection.at)),
                code(connection.event.as_str()),
                text(connection.details.summary()),
                code(connection.entry_digest.clone()),
            ]
        })
        .collect();
    Block {
        id: "connections",
        title: "Connections and disconnections",
        description: "When `aksync connect` wrote the source's configuration and `aksync disconnect` removed it, with the settings written and who did it, as the ledger recorded them. Nothing is collected between a disconnection and the next connection.".to_string(),
        columns: vec![("When", 18), ("Event", 12), ("Settings and by whom", 50), ("Ledger digest", 20)],
        rows,
        alert: report
            .connections
            .iter()
            .any(|connection| connection.event == crate::ledger::entry::ConnectionAction::Disconnected),
        listing: true,
    }
}

/// The revocations the period's review imports decided, with the review they belong to.
pub(super) fn revocations(
    report: &Report,
) -> impl Iterator<
    Item = (
        &crate::ledger::read::RecordedReview,
        &crate::ledger::entry::AccessDecision,
    ),
> {
    report.access_reviews.iter().flat_map(|review| {
        review
            .decisions
            .decisions
            .iter()
            .filter(|decision| decision.decision == crate::ledger::entry::Verdict::Revoke)
            .map(move |decision| (review, decision))
    })
}

/// The access reviews whose decisions were imported in the period: the periodic review of
/// access that SOC 2 CC6.2/CC6.3 and ISO 27001 A.5.18 ask for.
fn access_reviews_block(report: &Report) -> Block {
    use crate::ledger::entry::Verdict;
    let rows = report
        .access_reviews
        .iter()
        .map(|review| {
            let recorded = &review.decisions;
            vec![
                text(timestamp(review.imported_at)),
                code(format!(
                    "{} of run {}",
                    recorded.short_id(),
                    recorded.run_id
                )),
                text(format!(
                    "{} keep, {} revoke, {} undecided of {} rows; imported by {}@{} from {} (SHA-256 {})",
                    review.count(Verdict::Keep),
                    review.count(Verdict::Revoke),
                    recorded.undecided,
                    recorded.rows,
                    recorded.by.os_user,
                    recorded.by.host,
                    recorded.file.name,
                    recorded.file.sha256
                )),
                code(review.entry_digest.clone()),
            ]
        })
        .collect();
    Block {
        id: "access-reviews",
        title: "Access reviews imported",
        description: "Access reviews whose completed files `aksync review import` recorded in the period, each checked row by row against the review built again from the run it names. A later import of the same review replaces its decisions from then on; this period keeps the ones it recorded. `aksync review status` follows each revocation into later runs.".to_string(),
        columns: vec![("Imported", 18), ("Review of run", 27), ("Decisions, by whom, file", 35), ("Ledger digest", 20)],
        rows,
        alert: false,
        listing: true,
    }
}

/// Every revocation the period's reviews decided.
fn revocations_block(report: &Report) -> Block {
    let rows = revocations(report)
        .map(|(review, decision)| {
            vec![
                code(review.decisions.run_id.clone()),
                text(decision.username.clone()),
                text(format!(
                    "{} {} ({})",
                    decision.access.as_str(),
                    decision.access_name,
                    decision.granted
                )),
                text(format!(
                    "{} {}{}",
                    decision.reviewer,
                    decision.reviewed_at,
                    match decision.comment.is_empty() {
                        true => String::new(),
                        false => format!(": {}", decision.comment),
                    }
                )),
            ]
        })
        .collect();
    Block {
        id: "revocations",
        title: "Revocations decided",
        description: "Each access a reviewer decided to revoke in a review imported in the period, as the review's run granted it.".to_string(),
        columns: vec![("Review of run", 25), ("Account", 20), ("Access", 30), ("Decided by", 25)],
        rows,
        alert: false,
        listing: true,
    }
}

/// The settings changes the ledger recorded: what a reader must know to compare runs.
fn settings_block(report: &Report) -> Block {
    let rows = report
        .settings_changes
        .iter()
        .flat_map(|changed| {
            changed.changes.iter().map(|change| {
                vec![
                    code(run_label(report, &changed.run_id)),
                    code(change.key.clone()),
                    text(inline_text(&change.old)),
                    text(inline_text(&change.new)),
                ]
            })
        })
        .collect();
    Block {
        id: "settings",
        title: "Settings changes",
        description: "Settings that a run recorded differently from the run before it. Each run's events were judged with the settings it recorded; a later change never alters them.".to_string(),
        columns: vec![("Run", 25), ("Setting", 20), ("Before", 27), ("After", 28)],
        rows,
        alert: false,
        listing: true,
    }
}

/// A run's record counts, and what its filters left out of scope beside them.
fn records_text(run: &PeriodRun) -> String {
    let counts = format!(
        "{} accounts, {} groups, {} memberships",
        run.counts.accounts, run.counts.groups, run.counts.memberships
    );
    let Some(scope) = run.scope else {
        return counts;
    };
    let mut text = format!(
        "{counts} in scope; out of scope: {} accounts, {} groups, {} memberships",
        scope.accounts_out_of_scope, scope.groups_out_of_scope, scope.memberships_out_of_scope
    );
    if scope.filter_errors_excluded + scope.filter_errors_included > 0 {
        text.push_str(&format!(
            "; filter errors: {} excluded, {} included",
            scope.filter_errors_excluded, scope.filter_errors_included
        ));
    }
    text
}

fn runs_block(report: &Report) -> Block {
    let rows = report
        .runs
        .iter()
        .map(|run| {
            let status = match run.status {
                RunStatus::Complete => text(run.status.as_str()),
                _ => vec![Piece::Flag(run.status.as_str().to_string())],
            };
            let mut detail = Vec::new();
            if let Some(error) = &run.error {
                detail.push(Piece::Text(format!("error: {error}")));
            }
            match (&run.previous_run, run.status) {
                (_, RunStatus::Failed) => {}
                (Some(previous), _) => {
                    detail.push(Piece::Text("compared with ".to_string()));
                    detail.push(Piece::Code(run_label(report, previous)));
                }
                (None, _) => detail.push(Piece::Text(format!(
                    "baseline: {}",
                    run.baseline_reason
                        .as_deref()
                        .unwrap_or("first run of this source, every record is new")
                ))),
            }
            if let Some(delivery) = run.delivery_text() {
                let settled = run.delivery.as_ref().is_some_and(|delivery| {
                    delivery.status == crate::store::DeliveryStatus::Delivered
                });
                if !detail.is_empty() {
                    detail.push(Piece::Text("; ".to_string()));
                }
                detail.push(if settled {
                    Piece::Text(delivery)
                } else {
                    Piece::Flag(delivery)
                });
            }
            vec![
                code(run.run_id.clone()),
                status,
                text(format!(
                    "{} to {}",
                    timestamp(run.started_at),
                    timestamp(run.finished_at)
                )),
                text(records_text(run)),
                match &run.envelope_sha256 {
                    Some(sha) => code(sha.clone()),
                    None => text("none"),
                },
                detail,
            ]
        })
        .collect();
    Block {
        id: "runs",
        title: "Runs in period",
        description: "Every run of the period, complete, failed or quarantined, and where the webhook delivery of its envelopes stands: a failed run stored nothing, so the time until the next complete run went unobserved.".to_string(),
        columns: vec![
            ("Run", 17),
            ("Status", 9),
            ("Started and finished (UTC)", 16),
            ("Records", 14),
            ("Envelope SHA-256", 24),
            ("Compared with, baseline reason, error or delivery", 20),
        ],
        rows,
        alert: false,
        listing: true,
    }
}

fn coverage_block(report: &Report, figures: &Figures) -> Block {
    let end = |at: DateTime<Utc>, run: &Option<String>, edge: &str| match run {
        Some(run) => vec![
            Piece::Code(run.clone()),
            Piece::Text(format!(" ({})", timestamp(at))),
        ],
        None => text(format!("{edge} ({})", timestamp(at))),
    };
    let rows = figures
        .gaps
        .iter()
        .map(|gap| {
            vec![
                end(gap.from, &gap.from_run, "period start"),
                end(gap.to, &gap.to_run, "period end"),
                vec![Piece::Strong(format_latency(gap.seconds))],
                if gap.runs_not_complete.is_empty() {
                    text("none")
                } else {
                    code(gap.runs_not_complete.join(", "))
                },
            ]
        })
        .collect();
    Block {
        id: "coverage",
        title: "Coverage gaps",
        description: format!(
            "Intervals between the period's start, its complete runs and its end that are longer than the expected interval ({}, as the run that ends the interval recorded it): the directory was not observed for that long.",
            format_latency(report.header.settings.expected_interval_seconds)
        ),
        columns: vec![("From", 30), ("To", 30), ("Length", 15), ("Runs that did not complete", 25)],
        rows,
        alert: !figures.gaps.is_empty(),
        listing: true,
    }
}

fn roll_forward_block(report: &Report, figures: &Figures) -> Block {
    let roll = &figures.roll_forward;
    let lines = [
        ("Accounts", "created", "deleted", &roll.accounts),
        ("Active accounts", "joined", "left", &roll.active),
        (
            "Privileged accounts",
            "granted",
            "removed",
            &roll.privileged,
        ),
    ];
    let rows = lines
        .iter()
        .map(|(name, added, removed, line)| {
            let mut check = text(reconciled(line));
            if !line.reconciles {
                check = vec![Piece::Flag(reconciled(line).to_string())];
            }
            vec![
                text(*name),
                text(line.start.to_string()),
                text(format!("+{} {added}", line.added)),
                text(format!("−{} {removed}", line.removed)),
                text(match (line.restated, line.scope) {
                    (0, 0) => "0".to_string(),
                    (restated, 0) => format!("{restated:+}"),
                    (0, scope) => format!("scope {scope:+}"),
                    (restated, scope) => format!("{restated:+}, scope {scope:+}"),
                }),
                text(line.end.to_string()),
                check,
            ]
        })
        .collect();
    let start = report.start.run_id.as_deref().map_or_else(
        || "no run (nothing yet)".to_string(),
        |run| run_label(report, run),
    );
    let end = report
        .end
        .run_id
        .as_deref()
        .map_or_else(|| "no run".to_string(), |run| run_label(report, run));
    Block {
        id: "roll-forward",
        title: "Roll-forward",
        description: format!(
            "Start (counted in run {start}) + added − removed + scope + restated = end (counted in run {end}). Start and end are counted from the stored records, the changes from the runs' events, so the two check each other. Scope: what entered less what left the source's scope (see Scope changes). Restated: the difference at a baseline run, which is compared with nothing."
        ),
        columns: vec![
            ("Population", 20),
            ("Start", 10),
            ("Added", 15),
            ("Removed", 15),
            ("Restated", 10),
            ("End", 10),
            ("Check", 20),
        ],
        rows,
        alert: !(roll.accounts.reconciles && roll.active.reconciles && roll.privileged.reconciles),
        listing: false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Start,
    End,
}

fn account_cell(
    username: &str,
    external_id: &str,
    email: Option<&str>,
    hr_key: Option<&str>,
) -> Cell {
    let mut cell = vec![
        Piece::Strong(username.to_string()),
        Piece::Text(" ".to_string()),
        Piece::Code(external_id.to_string()),
    ];
    if let Some(email) = email {
        cell.push(Piece::Text(format!(" {email}")));
    }
    if let Some(key) = hr_key {
        cell.push(Piece::Text(format!(" HR key {key}")));
    }
    cell
}

fn privileged_block(report: &Report, side: Side) -> Block {
    let (snapshot, id, title, when) = match side {
        Side::Start => (
            &report.start,
            "privileged-start",
            "Privileged accounts at the start",
            "the period starts from",
        ),
        Side::End => (
            &report.end,
            "privileged-end",
            "Privileged accounts at the end",
            "the period ends with",
        ),
    };
    let rows = snapshot
        .privileged
        .iter()
        .map(|account| {
            vec![
                account_cell(
                    &account.username,
                    &account.external_id,
                    account.canonical_email.as_deref(),
                    account.hr_key.as_deref(),
                ),
                text(account.privilege_source.clone()),
            ]
        })
        .collect();
    let run = snapshot
        .run_id
        .as_deref()
        .map_or_else(|| "no run".to_string(), |run| run_label(report, run));
    Block {
        id,
        title,
        description: format!(
            "Active accounts with superuser rights (their own flag, or a superuser group reached directly or through a parent) or in a privileged group, in run {run}, which {when}."
        ),
        columns: vec![("Account", 55), ("Privilege source", 45)],
        rows,
        alert: false,
        listing: true,
    }
}

/// Grants (`Side::End`: privileged after) or removals.
fn privilege_block(report: &Report, side: Side) -> Block {
    let (id, title, description) = match side {
        Side::End => (
            "privilege-granted",
            "Privilege granted",
            "Every account that became privileged, by any path: created, reactivated, moved, or because a group's superuser flag, parents or name changed. Each needs an approval on record.",
        ),
        Side::Start => (
            "privilege-removed",
            "Privilege removed",
            "Every account that stopped being privileged: it left, moved out of the group, or a group changed.",
        ),
    };
    let mut rows = Vec::new();
    for diff in &report.diffs {
        let changes = match side {
            Side::End => &diff.privilege_granted,
            Side::Start => &diff.privilege_removed,
        };
        for change in changes {
            let mut account = account_cell(
                &change.username,
                &change.external_id,
                change.canonical_email.as_deref(),
                change.hr_key.as_deref(),
            );
            if side == Side::End {
                account.push(Piece::Flag(ESCALATION_FLAG.to_string()));
            }
            let mut source = text(change.privilege_source.clone());
            if change.privilege_source == crate::diff::GROUP_FLAG_CHANGED {
                source.push(Piece::Text(format!(": {}", path_text(&change.path))));
            }
            rows.push(vec![
                account,
                text(change.reason.as_str()),
                source,
                code(run_label(report, &diff.to_run)),
            ]);
        }
    }
    Block {
        id,
        title,
        description: description.to_string(),
        columns: vec![
            ("Account", 40),
            ("Reason", 13),
            ("Privilege source", 27),
            ("Run", 20),
        ],
        alert: side == Side::End && !rows.is_empty(),
        listing: true,
        rows,
    }
}

fn privileged_groups_block(report: &Report) -> Block {
    let mut rows = Vec::new();
    for diff in &report.diffs {
        for change in &diff.privileged_group_changes {
            let what = if change.changes.is_empty() {
                text(format!("group {}", change.change))
            } else {
                text(one_line_changes(&change.changes).join("; "))
            };
            rows.push(vec![
                vec![
                    Piece::Strong(change.display_name.clone()),
                    Piece::Text(" ".to_string()),
                    Piece::Code(change.external_id.clone()),
                ],
                what,
                text(format!(
                    "{} granted, {} removed",
                    change.accounts_granted, change.accounts_removed
                )),
                code(run_label(report, &diff.to_run)),
            ]);
        }
    }
    Block {
        id: "privileged-groups",
        title: "Privileged group changes",
        description: "Changes to groups that make their members privileged: the superuser flag, the parents (named) or the name, and such groups created or deleted, with the number of accounts each change granted or removed privilege for.".to_string(),
        columns: vec![("Group", 30), ("Change", 35), ("Accounts affected", 15), ("Run", 20)],
        alert: false,
        listing: true,
        rows,
    }
}

fn terminations_block(report: &Report, figures: &Figures) -> Block {
    let latency = &figures.terminations.latency;
    let seconds = |value: Option<u64>| value.map_or_else(|| "none".to_string(), format_latency);
    let sla = report.header.settings.sla_seconds;
    let mut rows = vec![
        vec![
            text("Termination cases"),
            text(format!(
                "{} cases of {} people (a deactivation and the later deletion of the same account are one case)",
                figures.terminations.cases.len(),
                figures.terminations.people
            )),
        ],
        vec![text("Cases with a known latency (n)"), text(latency.n.to_string())],
        vec![text("Median detection latency"), text(seconds(latency.median_seconds))],
        vec![text("95th percentile"), text(seconds(latency.p95_seconds))],
        vec![text("Maximum"), text(seconds(latency.max_seconds))],
        vec![
            text("SLA"),
            text(sla.map_or_else(|| "none: sla is not set".to_string(), format_latency)),
        ],
    ];
    for breach in &latency.breaches {
        rows.push(vec![
            vec![Piece::Flag("SLA BREACH".to_string())],
            vec![
                Piece::Strong(breach.username.clone()),
                Piece::Text(" ".to_string()),
                Piece::Code(breach.external_id.clone()),
                Piece::Text(format!(
                    " detected after {} (SLA {}) by run ",
                    format_latency(breach.latency_seconds),
                    format_latency(breach.sla_seconds)
                )),
                Piece::Code(run_label(report, &breach.run_id)),
            ],
        ]);
    }
    Block {
        id: "terminations",
        title: "Terminations and timeliness",
        description: format!(
            "Detection latency of each termination case: from the last run that saw the account active to the run that saw its first termination event, {LATENCY_MEANING}. Statistics over the cases with a known latency; the median of an even count is the mean of the middle two, the 95th percentile the nearest rank."
        ),
        columns: vec![("Figure", 30), ("Value", 70)],
        alert: !latency.breaches.is_empty(),
        listing: false,
        rows,
    }
}

/// The kinds of event, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventType {
    Leaver,
    Purged,
    PrivilegeGranted,
    PrivilegeRemoved,
    PrivilegedGroupChange,
    Joiner,
    Mover,
    GroupCreated,
    GroupDeleted,
    GroupChanged,
    MembershipAdded,
    MembershipRemoved,
}

impl EventType {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            EventType::Leaver => "leaver",
            EventType::Purged => "purged",
            EventType::PrivilegeGranted => "privilege_granted",
            EventType::PrivilegeRemoved => "privilege_removed",
            EventType::PrivilegedGroupChange => "privileged_group_change",
            EventType::Joiner => "joiner",
            EventType::Mover => "mover",
            EventType::GroupCreated => "group_created",
            EventType::GroupDeleted => "group_deleted",
            EventType::GroupChanged => "group_changed",
            EventType::MembershipAdded => "membership_added",
            EventType::MembershipRemoved => "membership_removed",
        }
    }
}

pub(super) enum EventKind<'a> {
    Leaver(&'a Leaver),
    Purged(&'a Purge),
    PrivilegeGranted(&'a PrivilegeChange),
    PrivilegeRemoved(&'a PrivilegeChange),
    PrivilegedGroupChange(&'a PrivilegedGroupChange),
    Joiner(&'a Joiner),
    Mover(&'a Mover),
    GroupCreated(&'a GroupRef),
    GroupDeleted(&'a GroupRef),
    GroupChanged(&'a GroupChange),
    MembershipAdded(&'a MembershipRef),
    MembershipRemoved(&'a MembershipRef),
}

/// One change, with the run that detected it.
pub(super) struct Event<'a> {
    pub run_id: &'a str,
    pub detected_at: DateTime<Utc>,
    pub kind: EventKind<'a>,
}

/// Every event of every diff: grouped by type in report order, and within a type in the
/// order of the diffs, so a period report reads as one list per section.
pub(super) fn events(report: &Report) -> Vec<Event<'_>> {
    let mut events: Vec<Event<'_>> = report
        .diffs
        .iter()
        .flat_map(|diff| diff_events(report, diff))
        .collect();
    // Stable: keeps the diffs' order within a type.
    events.sort_by_key(|event| event.event_type());
    events
}

fn diff_events<'a>(report: &'a Report, diff: &'a DirectoryDiff) -> Vec<Event<'a>> {
    let run_finished_at = run_finished_at(report, &diff.to_run).unwrap_or(report.header.period.end);
    let groups = &diff.groups;
    let memberships = &diff.memberships;
    let kinds = diff
        .leavers
        .iter()
        .map(EventKind::Leaver)
        .chain(diff.purged.iter().map(EventKind::Purged))
        .chain(
            diff.privilege_granted
                .iter()
                .map(EventKind::PrivilegeGranted),
        )
        .chain(
            diff.privilege_removed
                .iter()
                .map(EventKind::PrivilegeRemoved),
        )
        .chain(
            diff.privileged_group_changes
                .iter()
                .map(EventKind::PrivilegedGroupChange),
        )
        .chain(diff.joiners.iter().map(EventKind::Joiner))
        .chain(diff.movers.iter().map(EventKind::Mover))
        .chain(groups.created.iter().map(EventKind::GroupCreated))
        .chain(groups.deleted.iter().map(EventKind::GroupDeleted))
        .chain(groups.changed.iter().map(EventKind::GroupChanged))
        .chain(memberships.added.iter().map(EventKind::MembershipAdded))
        .chain(memberships.removed.iter().map(EventKind::MembershipRemoved));
    kinds
        .map(|kind| Event {
            run_id: &diff.to_run,
            detected_at: match kind {
                EventKind::Leaver(leaver) => leaver.detected_at,
                EventKind::Purged(purge) => purge.detected_at,
                _ => run_finished_at,
            },
            kind,
        })
        .collect()
}

impl Event<'_> {
    pub(super) fn event_type(&self) -> EventType {
        match self.kind {
            EventKind::Leaver(_) => EventType::Leaver,
            EventKind::Purged(_) => EventType::Purged,
            EventKind::PrivilegeGranted(_) => EventType::PrivilegeGranted,
            EventKind::PrivilegeRemoved(_) => EventType::PrivilegeRemoved,
            EventKind::PrivilegedGroupChange(_) => EventType::PrivilegedGroupChange,
            EventKind::Joiner(_) => EventType::Joiner,
            EventKind::Mover(_) => EventType::Mover,
            EventKind::GroupCreated(_) => EventType::GroupCreated,
            EventKind::GroupDeleted(_) => EventType::GroupDeleted,
            EventKind::GroupChanged(_) => EventType::GroupChanged,
            EventKind::MembershipAdded(_) => EventType::MembershipAdded,
            EventKind::MembershipRemoved(_) => EventType::MembershipRemoved,
        }
    }

    /// The account uid, the group pk, or `<account uid>:<group pk>` for a membership.
    pub(super) fn external_id(&self) -> String {
        match self.kind {
            EventKind::Leaver(leaver) => leaver.external_id.clone(),
            EventKind::Purged(purge) => purge.external_id.clone(),
            EventKind::PrivilegeGranted(change) | EventKind::PrivilegeRemoved(change) => {
                change.external_id.clone()
            }
            EventKind::PrivilegedGroupChange(group) => group.external_id.clone(),
            EventKind::Joiner(joiner) => joiner.external_id.clone(),
            EventKind::Mover(mover) => mover.external_id.clone(),
            EventKind::GroupCreated(group) | EventKind::GroupDeleted(group) => {
                group.external_id.clone()
            }
            EventKind::GroupChanged(group) => group.external_id.clone(),
            EventKind::MembershipAdded(membership) | EventKind::MembershipRemoved(membership) => {
                format!(
                    "{}:{}",
                    membership.account_external_id, membership.group_external_id
                )
            }
        }
    }

    /// The username, or the group's name for a group event.
    pub(super) fn name(&self) -> &str {
        match self.kind {
            EventKind::Leaver(leaver) => &leaver.username,
            EventKind::Purged(purge) => &purge.username,
            EventKind::PrivilegeGranted(change) | EventKind::PrivilegeRemoved(change) => {
                &change.username
            }
            EventKind::PrivilegedGroupChange(group) => &group.display_name,
            EventKind::Joiner(joiner) => &joiner.username,
            EventKind::Mover(mover) => &mover.username,
            EventKind::GroupCreated(group) | EventKind::GroupDeleted(group) => &group.display_name,
            EventKind::GroupChanged(group) => &group.display_name,
            EventKind::MembershipAdded(membership) | EventKind::MembershipRemoved(membership) => {
                &membership.username
            }
        }
    }

    pub(super) fn email(&self) -> Option<&str> {
        match self.kind {
            EventKind::Leaver(leaver) => leaver.canonical_email.as_deref(),
            EventKind::Purged(purge) => purge.canonical_email.as_deref(),
            EventKind::PrivilegeGranted(change) | EventKind::PrivilegeRemoved(change) => {
                change.canonical_email.as_deref()
            }
            EventKind::Joiner(joiner) => joiner.canonical_email.as_deref(),
            EventKind::Mover(mover) => mover.canonical_email.as_deref(),
            _ => None,
        }
    }
}

/// The sections that list events, in order after the [`Block`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Leavers,
    Joiners,
    Movers,
    Groups,
    Memberships,
}

impl Section {
    pub(super) const ALL: [Section; 5] = [
        Section::Leavers,
        Section::Joiners,
        Section::Movers,
        Section::Groups,
        Section::Memberships,
    ];

    /// The HTML anchor, stable for links from tickets and for tests.
    pub(super) fn id(self) -> &'static str {
        match self {
            Section::Leavers => "leavers",
            Section::Joiners => "joiners",
            Section::Movers => "movers",
            Section::Groups => "groups",
            Section::Memberships => "memberships",
        }
    }

    pub(super) fn title(self) -> &'static str {
        match self {
            Section::Leavers => "Leavers",
            Section::Joiners => "Joiners",
            Section::Movers => "Movers",
            Section::Groups => "Group changes",
            Section::Memberships => "Membership changes",
        }
    }

    /// What the section lists, for a reader who does not know aksync.
    pub(super) fn description(self) -> &'static str {
        match self {
            Section::Leavers => {
                "Every termination event: accounts deleted or deactivated while active, with the logins, privilege and SLA as the run that detected it recorded them. Detection latency runs from the start of the last run that saw the account active to the end of the run that saw it gone: an upper bound on how long the change went unseen. An account deleted after it had already left is listed as purged: the end of the same termination case, not a second leaver."
            }
            Section::Joiners => "Accounts created active, or reactivated after being inactive, with their status, account type, superuser flag and Authentik's date_joined. A run compared with nothing (a baseline) has no joiners: its accounts were present at the baseline.",
            Section::Movers => {
                "Accounts whose material fields or direct group memberships changed."
            }
            Section::Groups => {
                "Groups created, deleted, renamed, or whose superuser flag or parents changed."
            }
            Section::Memberships => "Direct group memberships added or removed.",
        }
    }

    pub(super) fn includes(self, event: &Event<'_>) -> bool {
        let event_type = event.event_type();
        match self {
            Section::Leavers => matches!(event_type, EventType::Leaver | EventType::Purged),
            Section::Joiners => event_type == EventType::Joiner,
            Section::Movers => event_type == EventType::Mover,
            Section::Groups => matches!(
                event_type,
                EventType::GroupCreated | EventType::GroupDeleted | EventType::GroupChanged
            ),
            Section::Memberships => matches!(
                event_type,
                EventType::MembershipAdded | EventType::MembershipRemoved
            ),
        }
    }

    pub(super) fn events<'e, 'a>(self, events: &'e [Event<'a>]) -> Vec<&'e Event<'a>> {
        events.iter().filter(|event| self.includes(event)).collect()
    }
}

/// RFC 3339 in UTC to the second: unambiguous, sortable, and read by spreadsheets.
pub(super) use crate::display::timestamp;

pub(super) fn yes_no(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}

/// Display names, comma-separated, or "none".
pub fn group_names(groups: &[GroupRef]) -> String {
    if groups.is_empty() {
        return "none".to_string();
    }
    let names: Vec<&str> = groups
        .iter()
        .map(|group| group.display_name.as_str())
        .collect();
    names.join(", ")
}

/// The detection latency for people, e.g. "1h 05m", or "unknown".
pub(super) fn detection_latency(leaver: &Leaver) -> String {
    leaver
        .latency_seconds
        .map_or_else(|| "unknown".to_string(), format_latency)
}

/// "45s", "5m", "1h 05m", "2d 03h 05m".
pub(super) fn format_latency(seconds: u64) -> String {
    if seconds < 60 {
        return format!("{seconds}s");
    }
    let (days, hours, minutes) = (
        seconds / 86_400,
        seconds % 86_400 / 3_600,
        seconds % 3_600 / 60,
    );
    if days > 0 {
        format!("{days}d {hours:02}h {minutes:02}m")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else {
        format!("{minutes}m")
    }
}

/// A field change as people should see it.
pub(super) enum ChangeView<'a> {
    /// Short single-line values: `old → new`.
    Inline {
        field: &'a str,
        old: String,
        new: String,
    },
    /// Long or multi-line values: a unified diff of their text.
    Diff { field: &'a str, unified: String },
    /// Values too large to compare line by line: "changed, N bytes → M bytes".
    Sizes { field: &'a str, sizes: String },
}

pub(super) fn change_views(changes: &[FieldChange]) -> Vec<ChangeView<'_>> {
    changes.iter().map(change_view).collect()
}

fn change_view(change: &FieldChange) -> ChangeView<'_> {
    let field = change.field.as_str();
    if let Some((old, new)) = inline_values(change) {
        return ChangeView::Inline { field, old, new };
    }
    let (old, new) = (block_text(&change.old), block_text(&change.new));
    match bounded_unified_diff(&old, &new) {
        Some(unified) => ChangeView::Diff { field, unified },
        None => ChangeView::Sizes {
            field,
            sizes: sizes_text(&old, &new),
        },
    }
}

/// `old → new` when both values are short and on one line.
fn inline_values(change: &FieldChange) -> Option<(String, String)> {
    let (old, new) = (inline_text(&change.old), inline_text(&change.new));
    let fits = |text: &str| text.chars().count() <= INLINE_LIMIT && !text.contains('\n');
    (fits(&old) && fits(&new)).then_some((old, new))
}

fn sizes_text(old: &str, new: &str) -> String {
    format!("changed, {} bytes → {} bytes", old.len(), new.len())
}

/// Table cells have room for one line: a long value says where its diff is, one too large
/// to diff gives its sizes. No diff is computed here.
fn one_line_changes(changes: &[FieldChange]) -> Vec<String> {
    changes
        .iter()
        .map(|change| match inline_values(change) {
            Some((old, new)) => format!("{}: {old} → {new}", change.field),
            None => {
                let (old, new) = (block_text(&change.old), block_text(&change.new));
                if diffable(&old) && diffable(&new) {
                    format!(
                        "{}: long value changed, see the diff in the HTML or Markdown report",
                        change.field
                    )
                } else {
                    format!("{}: {}", change.field, sizes_text(&old, &new))
                }
            }
        })
        .collect()
}

/// Strings as they are, JSON for anything else, and a word for what would otherwise be
/// invisible.
pub fn inline_text(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_string(),
        Value::String(text) if text.is_empty() => "(empty)".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// The text a diff compares: objects and arrays pretty-printed so that a diff shows the
/// member that changed; an absent value is no text at all.
fn block_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        Value::Array(_) | Value::Object(_) => {
            serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
        }
        other => other.to_string(),
    }
}

/// Whether a value is within the bounds of a line diff.
fn diffable(text: &str) -> bool {
    text.len() <= DIFF_MAX_BYTES && text.lines().count() <= DIFF_MAX_LINES
}

/// The unified diff of two values within the bounds, or `None` beyond them.
fn bounded_unified_diff(old: &str, new: &str) -> Option<String> {
    if !diffable(old) || !diffable(new) {
        return None;
    }
    // Without a final newline the diff would carry "\ No newline at end of file" markers,
    // which say nothing about access.
    let terminated = |text: &str| {
        if text.is_empty() || text.ends_with('\n') {
            text.to_string()
        } else {
            format!("{text}\n")
        }
    };
    let (old, new) = (terminated(old), terminated(new));
    Some(
        TextDiff::configure()
            .timeout(DIFF_DEADLINE)
            .diff_lines(&old, &new)
            .unified_diff()
            .header("old", "new")
            .to_string(),
    )
}
