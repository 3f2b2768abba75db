//! The Markdown report: written to be read in a terminal as much as rendered. Accounts are
//! nested bullet lists (a table of 64-hex ids wraps into noise at 80 columns); memberships,
//! which are short pairs, are a pipe table. Identifiers and values are code spans, so they
//! read verbatim and no username can inject markup.

use super::content::{
    blocks, change_views, detection_latency, events, figures, group_names, header_fields,
    run_label, summary, timestamp, title, yes_no, Block, Cell, ChangeView, Event, EventKind,
    HeaderValue, Piece, Section, ESCALATION_FLAG, LATENCY_MEANING, LOGIN_WARNING,
};
use super::Report;
use crate::diff::{FieldChange, MembershipRef};
use crate::display::escape;

pub(super) fn render(report: &Report) -> String {
    let mut out = String::new();
    push_line(&mut out, &format!("# {}", text(&title(report))));
    push_line(&mut out, "");
    let figures = figures(report);
    push_block(&mut out, &summary(report, &figures));
    push_header(&mut out, report);
    for block in blocks(report, &figures) {
        push_block(&mut out, &block);
    }
    let events = events(report);
    for section in Section::ALL {
        let section_events = section.events(&events);
        push_heading(
            &mut out,
            section.id(),
            &format!("{} ({})", section.title(), section_events.len()),
        );
        push_line(&mut out, section.description());
        push_line(&mut out, "");
        if section_events.is_empty() {
            push_line(&mut out, "None.");
            continue;
        }
        if section == Section::Memberships {
            push_line(
                &mut out,
                "| Change | Username | Group | Account id | Group id | Run |",
            );
            push_line(&mut out, "|---|---|---|---|---|---|");
        }
        for event in section_events {
            push_event(&mut out, report, event);
        }
    }
    out
}

/// A heading with an anchor that links from the summary and stays the same whatever the
/// count in the heading.
fn push_heading(out: &mut String, id: &str, heading: &str) {
    push_line(out, "");
    push_line(out, &format!("<a id=\"{id}\"></a>"));
    push_line(out, "");
    push_line(out, &format!("## {heading}"));
    push_line(out, "");
}

fn push_block(out: &mut String, block: &Block) {
    let heading = block.heading();
    push_heading(out, block.id, &heading);
    push_line(out, &text(&block.description));
    push_line(out, "");
    if block.rows.is_empty() {
        push_line(out, "None.");
        return;
    }
    let labels: Vec<String> = block.columns.iter().map(|(label, _)| text(label)).collect();
    push_line(out, &format!("| {} |", labels.join(" | ")));
    push_line(out, &format!("|{}", "---|".repeat(block.columns.len())));
    for row in &block.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|cell| cell_text(cell).replace('|', "\\|"))
            .collect();
        push_line(out, &format!("| {} |", cells.join(" | ")));
    }
}

fn cell_text(cell: &Cell) -> String {
    cell.iter()
        .map(|piece| match piece {
            Piece::Text(value) => text(value),
            Piece::Code(value) => code(value),
            Piece::Strong(value) => format!("**{}**", text(value)),
            Piece::Link(id, label) => format!("[{}](#{id})", text(label)),
            Piece::Flag(value) => format!(" **{}**", text(value)),
        })
        .collect()
}

fn push_header(out: &mut String, report: &Report) {
    push_heading(out, "period", "Period");
    for field in header_fields(report) {
        let values: Vec<String> = field.values.iter().map(header_value).collect();
        match values.as_slice() {
            [value] => push_line(out, &format!("- **{}:** {value}", field.label)),
            _ => {
                push_line(out, &format!("- **{}:**", field.label));
                for value in values {
                    push_line(out, &format!("  - {value}"));
                }
            }
        }
    }
}

fn header_value(value: &HeaderValue) -> String {
    match value {
        HeaderValue::Prose(prose) => text(prose),
        HeaderValue::Literal(literal) => code(literal),
    }
}

fn privilege_fact(privileged: bool, source: Option<&str>) -> String {
    match (privileged, source) {
        (true, Some(source)) => format!("yes, {}", text(source)),
        (true, None) => "yes".to_string(),
        (false, _) => "no".to_string(),
    }
}

fn optional_code(value: Option<&str>, none: &str) -> String {
    value.map_or_else(|| none.to_string(), code)
}

fn push_event(out: &mut String, report: &Report, event: &Event<'_>) {
    let run = code(&run_label(report, event.run_id));
    let name = code(event.name());
    let email = event.email().map_or_else(|| "none".to_string(), code);
    let external_id = ("External id", code(&event.external_id()));
    match event.kind {
        EventKind::Leaver(leaver) => {
            let reason = leaver.reason.as_str();
            push_line(
                out,
                &format!("- **{name}** ({reason}), detected by run {run}"),
            );
            let mut facts = vec![
                external_id,
                ("Email", email),
                ("HR key", optional_code(leaver.hr_key.as_deref(), "none")),
                (
                    "Privileged at departure",
                    privilege_fact(
                        leaver.privileged_at_departure,
                        leaver.privilege_source.as_deref(),
                    ),
                ),
                (
                    "Groups at departure",
                    text(&group_names(&leaver.groups_at_departure)),
                ),
                (
                    "Last seen active at",
                    leaver.last_seen_active_at.map_or_else(
                        || "unknown: no earlier run saw the account active".to_string(),
                        timestamp,
                    ),
                ),
                ("Detected at", timestamp(leaver.detected_at)),
                (
                    "Detection latency",
                    format!("{}, {LATENCY_MEANING}", detection_latency(leaver)),
                ),
                (
                    "Within SLA",
                    match leaver.within_sla {
                        Some(within) => yes_no(within).to_string(),
                        None => "not judged: no SLA or no latency".to_string(),
                    },
                ),
                (
                    "Last login at",
                    optional_code(leaver.last_login_at.as_deref(), "never"),
                ),
                (
                    "Authentik last updated",
                    optional_code(leaver.authentik_last_updated.as_deref(), "not reported"),
                ),
                (
                    "Memberships removed",
                    yes_no(leaver.memberships_removed).to_string(),
                ),
            ];
            if leaver.login_after_last_seen {
                facts.push(("**Warning**", text(LOGIN_WARNING)));
            }
            push_facts(out, &facts);
            push_changes(out, &leaver.changes);
        }
        EventKind::Purged(purge) => {
            push_line(
                out,
                &format!("- **{name}** (purged: deleted after it had already left), detected by run {run}"),
            );
            let facts = [
                external_id,
                ("Email", email),
                ("HR key", optional_code(purge.hr_key.as_deref(), "none")),
                (
                    "Groups at deletion",
                    text(&group_names(&purge.groups_at_deletion)),
                ),
                (
                    "Last seen active at",
                    purge
                        .last_seen_active_at
                        .map_or_else(|| "unknown".to_string(), timestamp),
                ),
                ("Detected at", timestamp(purge.detected_at)),
                (
                    "Last login at",
                    optional_code(purge.last_login_at.as_deref(), "never"),
                ),
                (
                    "Authentik last updated",
                    optional_code(purge.authentik_last_updated.as_deref(), "not reported"),
                ),
            ];
            push_facts(out, &facts);
        }
        EventKind::Joiner(joiner) => {
            let reason = joiner.reason.as_str();
            let flag = if joiner.privilege_escalation {
                format!(" **{ESCALATION_FLAG}**")
            } else {
                String::new()
            };
            push_line(out, &format!("- **{name}** ({reason}), run {run}{flag}"));
            push_facts(
                out,
                &[
                    external_id,
                    ("Email", email),
                    ("HR key", optional_code(joiner.hr_key.as_deref(), "none")),
                    ("Status", format!("{:?}", joiner.status).to_lowercase()),
                    (
                        "Account type",
                        format!("{:?}", joiner.account_type).to_lowercase(),
                    ),
                    ("Superuser flag", yes_no(joiner.is_superuser).to_string()),
                    (
                        "Date joined (Authentik)",
                        optional_code(joiner.added_at.as_deref(), "not reported"),
                    ),
                    (
                        "Privileged",
                        privilege_fact(joiner.privileged, joiner.privilege_source.as_deref()),
                    ),
                    ("Groups", text(&group_names(&joiner.groups))),
                ],
            );
            push_changes(out, &joiner.changes);
        }
        EventKind::Mover(mover) => {
            let flag = if mover.privilege_escalation {
                format!(" **{ESCALATION_FLAG}**")
            } else {
                String::new()
            };
            push_line(out, &format!("- **{name}**, run {run}{flag}"));
            push_facts(
                out,
                &[
                    external_id,
                    ("Email", email),
                    ("HR key", optional_code(mover.hr_key.as_deref(), "none")),
                    (
                        "Privileged",
                        privilege_fact(mover.privileged, mover.privilege_source.as_deref()),
                    ),
                ],
            );
            push_changes(out, &mover.changes);
            push_facts(
                out,
                &[
                    ("Groups added", text(&group_names(&mover.groups_added))),
                    ("Groups removed", text(&group_names(&mover.groups_removed))),
                ],
            );
        }
        EventKind::GroupCreated(_) => push_group_line(out, "Created", event, &run),
        EventKind::GroupDeleted(_) => push_group_line(out, "Deleted", event, &run),
        EventKind::GroupChanged(group) => {
            push_group_line(out, "Changed", event, &run);
            push_changes(out, &group.changes);
        }
        EventKind::MembershipAdded(membership) => {
            push_membership_row(out, "added", membership, &run)
        }
        EventKind::MembershipRemoved(membership) => {
            push_membership_row(out, "removed", membership, &run)
        }
        // Listed in their own tables.
        EventKind::PrivilegeGranted(_)
        | EventKind::PrivilegeRemoved(_)
        | EventKind::PrivilegedGroupChange(_) => {}
    }
}

fn push_group_line(out: &mut String, verb: &str, group: &Event<'_>, run: &str) {
    let (name, id) = (text(group.name()), code(&group.external_id()));
    push_line(out, &format!("- {verb}: **{name}** ({id}), run {run}"));
}

/// A row of the membership section's pipe table.
fn push_membership_row(out: &mut String, change: &str, membership: &MembershipRef, run: &str) {
    let cells = [
        change.to_string(),
        code(&membership.username),
        text(&membership.group_name),
        code(&membership.account_external_id),
        code(&membership.group_external_id),
        run.to_string(),
    ];
    let cells: Vec<String> = cells.iter().map(|cell| cell.replace('|', "\\|")).collect();
    push_line(out, &format!("| {} |", cells.join(" | ")));
}

fn push_facts(out: &mut String, facts: &[(&str, String)]) {
    for (label, value) in facts {
        push_line(out, &format!("  - {label}: {value}"));
    }
}

/// Nested under an event's bullet; a diff is a fenced block indented to the bullet's text.
fn push_changes(out: &mut String, changes: &[FieldChange]) {
    if changes.is_empty() {
        return;
    }
    push_line(out, "  - Changes:");
    for view in change_views(changes) {
        match view {
            ChangeView::Inline { field, old, new } => {
                push_line(
                    out,
                    &format!("    - {}: {} → {}", code(field), code(&old), code(&new)),
                );
            }
            ChangeView::Diff { field, unified } => {
                push_line(out, &format!("    - {}:", code(field)));
                let fence = fence(&unified, 3);
                push_line(out, &format!("      {fence}diff"));
                for line in unified.lines() {
                    push_line(out, &format!("      {}", escape(line)));
                }
                push_line(out, &format!("      {fence}"));
            }
            ChangeView::Sizes { field, sizes } => {
                push_line(out, &format!("    - {}: {}", code(field), text(&sizes)));
            }
        }
    }
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

/// Plain text with Markdown's inline markup escaped, on one line; control characters are
/// written out, so the report is as safe in a terminal as rendered.
fn text(raw: &str) -> String {
    let single_line = raw.replace(['\n', '\r'], " ");
    let safe = escape(&single_line);
    let mut escaped = String::with_capacity(safe.len());
    for character in safe.chars() {
        if matches!(
            character,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#'
        ) {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

/// A code span that holds any text verbatim, control characters written out: its fence is
/// longer than any backtick run inside.
fn code(raw: &str) -> String {
    let single_line = escape(&raw.replace(['\n', '\r'], " ")).into_owned();
    let fence = fence(&single_line, 1);
    let pad = if single_line.starts_with('`') || single_line.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{single_line}{pad}{fence}")
}

/// Backticks, at least `minimum` and more than any backtick run in `body`, so `body` cannot
/// close the span or block early.
fn fence(body: &str, minimum: usize) -> String {
    let longest = body
        .split(|character| character != '`')
        .map(str::len)
        .max()
        .unwrap_or(0);
    "`".repeat((longest + 1).max(minimum))
}
