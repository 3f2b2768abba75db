//! What every format shows, computed once: the header's labelled fields, the report's events
//! in section order, and the text of values, field changes and detection latencies. The
//! formats only lay this out.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use similar::TextDiff;

use super::Report;
use crate::diff::{
    DirectoryDiff, FieldChange, GroupChange, GroupRef, Joiner, Leaver, MembershipRef, Mover, Purge,
};

/// Values longer than this, or on several lines, are shown as a unified diff: an `old → new`
/// of two paragraphs hides what actually changed.
const INLINE_LIMIT: usize = 80;

pub(super) const LATENCY_MEANING: &str = "an upper bound on how long the change went unseen";
pub(super) const ESCALATION_FLAG: &str = "PRIVILEGE ESCALATION";

pub(super) fn title(report: &Report) -> String {
    let header = &report.header;
    match &header.period_from {
        Some(from) => format!(
            "Access changes of {}, runs {} to {}",
            header.source, from, header.run_id
        ),
        None => format!("Access changes of {}, run {}", header.source, header.run_id),
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

/// Every field of the header, labelled for an auditor who re-performs the run.
pub(super) fn header_fields(report: &Report) -> Vec<HeaderField> {
    use HeaderValue::{Literal, Prose};
    let header = &report.header;
    let field = |label, value| HeaderField {
        label,
        values: vec![value],
    };
    let literal_or = |value: &Option<String>, fallback: &str| match value {
        Some(value) => Literal(value.clone()),
        None => Prose(fallback.to_string()),
    };
    let counts = header.counts;
    let mut fields = vec![
        field("Source", Literal(header.source.clone())),
        field("Authentik base URL", Literal(header.base_url.clone())),
        field(
            "Authentik version",
            literal_or(
                &header.authentik_version,
                "unknown: not reported by the server",
            ),
        ),
        field("Run", Literal(header.run_id.clone())),
        field("Run started at", Prose(timestamp(header.started_at))),
        field("Run finished at", Prose(timestamp(header.finished_at))),
        field(
            "Compared with run",
            match (&header.previous_run, &header.baseline_reason) {
                (Some(previous), _) => Literal(previous.clone()),
                (None, Some(reason)) => Prose(format!("none: {reason}; every record is new")),
                (None, None) => {
                    Prose("none: first run of this source, every record is new".to_string())
                }
            },
        ),
    ];
    if let Some(from) = &header.period_from {
        fields.push(field("Period from run", Literal(from.clone())));
    }
    fields.push(HeaderField {
        label: "API calls made",
        values: if header.endpoints.is_empty() {
            vec![Prose("none".to_string())]
        } else {
            header.endpoints.iter().cloned().map(Literal).collect()
        },
    });
    fields.extend([
        field(
            "Filter expression",
            literal_or(&header.filter, "none: every record is included"),
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
        field(
            "Records in the run's snapshot",
            Prose(format!(
                "{} accounts, {} groups, {} memberships",
                counts.accounts, counts.groups, counts.memberships
            )),
        ),
        field("aksync version", Literal(header.aksync_version.clone())),
        field(
            "SHA-256 of the envelope file",
            literal_or(
                &header.envelope_sha256,
                "none: no envelope file was written",
            ),
        ),
        field("Report generated at", Prose(timestamp(report.generated_at))),
    ]);
    fields
}

/// The kinds of event, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum EventType {
    Leaver,
    Purged,
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
    let run_finished_at = run_finished_at(report, &diff.to_run);
    let groups = &diff.groups;
    let memberships = &diff.memberships;
    let kinds = diff
        .leavers
        .iter()
        .map(EventKind::Leaver)
        .chain(diff.purged.iter().map(EventKind::Purged))
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

/// A diff names its runs only by id; their finish times are in the trend, and a run missing
/// from it can only be the report's own run.
fn run_finished_at(report: &Report, run_id: &str) -> DateTime<Utc> {
    report
        .trend
        .iter()
        .find(|point| point.run_id == run_id)
        .map_or(report.header.finished_at, |point| point.finished_at)
}

impl Event<'_> {
    pub(super) fn event_type(&self) -> EventType {
        match self.kind {
            EventKind::Leaver(_) => EventType::Leaver,
            EventKind::Purged(_) => EventType::Purged,
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
            EventKind::Joiner(joiner) => joiner.canonical_email.as_deref(),
            EventKind::Mover(mover) => mover.canonical_email.as_deref(),
            _ => None,
        }
    }

    pub(super) fn is_escalation(&self) -> bool {
        match self.kind {
            EventKind::Mover(mover) => mover.privilege_escalation,
            EventKind::Joiner(joiner) => joiner.privilege_escalation,
            _ => false,
        }
    }

    /// A one-line description for a spreadsheet row or a summary list.
    pub(super) fn detail(&self) -> String {
        match self.kind {
            EventKind::Leaver(leaver) => format!(
                "{}; groups: {}; latency {}; memberships removed: {}",
                leaver.reason.as_str(),
                group_names(&leaver.groups_at_departure),
                detection_latency(leaver),
                yes_no(leaver.memberships_removed)
            ),
            EventKind::Purged(purge) => format!(
                "deleted after it had already left; last seen active {}",
                purge
                    .last_seen_active_at
                    .map_or_else(|| "unknown".to_string(), timestamp)
            ),
            EventKind::Joiner(joiner) => {
                let mut detail = format!(
                    "{}; groups: {}",
                    joiner.reason.as_str(),
                    group_names(&joiner.groups)
                );
                for change in one_line_changes(&joiner.changes) {
                    detail.push_str(&format!("; {change}"));
                }
                if joiner.privilege_escalation {
                    detail.push_str(&format!(" ({ESCALATION_FLAG})"));
                }
                detail
            }
            EventKind::Mover(mover) => {
                let mut parts = one_line_changes(&mover.changes);
                // Words, not "+group": a cell starting with + or - is a formula to a
                // spreadsheet, and the CSV writer would have to put a quote before it.
                let added = mover.groups_added.iter();
                let removed = mover.groups_removed.iter();
                parts.extend(added.map(|group| format!("added to {}", group.display_name)));
                parts.extend(removed.map(|group| format!("removed from {}", group.display_name)));
                let mut detail = parts.join("; ");
                if mover.privilege_escalation {
                    detail.push_str(&format!(" ({ESCALATION_FLAG})"));
                }
                detail
            }
            EventKind::GroupCreated(_) => "group created".to_string(),
            EventKind::GroupDeleted(_) => "group deleted".to_string(),
            EventKind::GroupChanged(group) => one_line_changes(&group.changes).join("; "),
            EventKind::MembershipAdded(membership) => format!("added to {}", membership.group_name),
            EventKind::MembershipRemoved(membership) => {
                format!("removed from {}", membership.group_name)
            }
        }
    }
}

/// The report's sections after the header, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Escalations,
    Leavers,
    Joiners,
    Movers,
    Groups,
    Memberships,
}

impl Section {
    pub(super) const ALL: [Section; 6] = [
        Section::Escalations,
        Section::Leavers,
        Section::Joiners,
        Section::Movers,
        Section::Groups,
        Section::Memberships,
    ];

    /// The HTML anchor, stable for links from tickets and for tests.
    pub(super) fn id(self) -> &'static str {
        match self {
            Section::Escalations => "escalations",
            Section::Leavers => "leavers",
            Section::Joiners => "joiners",
            Section::Movers => "movers",
            Section::Groups => "groups",
            Section::Memberships => "memberships",
        }
    }

    pub(super) fn title(self) -> &'static str {
        match self {
            Section::Escalations => "Privilege escalations",
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
            Section::Escalations => {
                "Accounts that joined or moved with superuser rights (the superuser flag, or a superuser group, directly or through a parent group). Each needs an approval on record."
            }
            Section::Leavers => {
                "Accounts deleted or deactivated. Detection latency is the time between the last run that saw the account active and the run that saw it gone: an upper bound on how long the change went unseen. An account deleted after it had already left is listed as purged: the end of the same termination, not a second leaver."
            }
            Section::Joiners => "Accounts created, or reactivated after being inactive.",
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
            Section::Escalations => event.is_escalation(),
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
pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

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

/// Seconds between the last run that saw the leaver active and the run that saw it gone.
/// A last-seen time after the detection can only come from clock skew between runs, so the
/// bound is then zero.
pub(super) fn detection_latency_seconds(leaver: &Leaver) -> Option<u64> {
    let last_seen = leaver.last_seen_active_at?;
    let seconds = (leaver.detected_at - last_seen).num_seconds();
    Some(seconds.max(0).unsigned_abs())
}

/// The detection latency for people, e.g. "1h 05m", or "unknown".
pub(super) fn detection_latency(leaver: &Leaver) -> String {
    detection_latency_seconds(leaver).map_or_else(|| "unknown".to_string(), format_latency)
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
}

pub(super) fn change_views(changes: &[FieldChange]) -> Vec<ChangeView<'_>> {
    changes.iter().map(change_view).collect()
}

fn change_view(change: &FieldChange) -> ChangeView<'_> {
    let (old, new) = (inline_text(&change.old), inline_text(&change.new));
    let fits = |text: &str| text.chars().count() <= INLINE_LIMIT && !text.contains('\n');
    if fits(&old) && fits(&new) {
        return ChangeView::Inline {
            field: &change.field,
            old,
            new,
        };
    }
    ChangeView::Diff {
        field: &change.field,
        unified: unified_diff(&block_text(&change.old), &block_text(&change.new)),
    }
}

fn one_line_changes(changes: &[FieldChange]) -> Vec<String> {
    change_views(changes)
        .into_iter()
        .map(|view| match view {
            ChangeView::Inline { field, old, new } => format!("{field}: {old} → {new}"),
            ChangeView::Diff { field, .. } => {
                format!("{field}: long value changed, see the diff in the HTML or Markdown report")
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

fn unified_diff(old: &str, new: &str) -> String {
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
    TextDiff::from_lines(&old, &new)
        .unified_diff()
        .header("old", "new")
        .to_string()
}
