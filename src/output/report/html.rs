//! The HTML report: one self-contained file, readable in a browser and printable to PDF.
//! No script and no external resource of any kind, so the file opens the same offline, in a
//! mail client's sandbox or years later in an evidence archive. Every table has a fixed
//! layout and breaks long words, because 64-hex uids would otherwise push pages sideways.

use chrono::{DateTime, Utc};

use super::chart::trend_chart;
use super::content::{
    blocks, change_views, detection_latency, events, figures, group_names, header_fields,
    run_label, summary, timestamp, title, yes_no, Block, Cell, ChangeView, Event, EventKind,
    HeaderValue, Piece, Section, ESCALATION_FLAG, LOGIN_WARNING,
};
use super::Report;
use crate::diff::{FieldChange, GroupRef, MembershipRef};

const STYLE: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0 auto; padding: 16px 24px; max-width: 1200px; color: #111; background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.6em; margin: 0.2em 0 0.6em; }
h2 { font-size: 1.25em; margin: 1.8em 0 0.4em; padding-bottom: 0.2em; border-bottom: 2px solid #333; }
section { margin-bottom: 1.5em; }
/* Separate borders lie inside the cells: collapsed ones straddle the table's edge, and
   Chromium clips their outer half on continued pages of a print. */
table { table-layout: fixed; width: 100%; border-collapse: separate; border-spacing: 0;
  margin: 0.5em 0; border-top: 1px solid #888; border-left: 1px solid #888; }
th, td { border-right: 1px solid #888; border-bottom: 1px solid #888; padding: 4px 6px;
  text-align: left; vertical-align: top; overflow-wrap: anywhere; word-break: break-word; }
th { background: #e8e8e8; font-weight: 600; }
td.none { font-style: italic; }
/* A field's name inside a cell that holds several fields. */
.label { display: block; color: #444; font-size: 0.85em; }
code, pre, .id { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace;
  font-size: 0.86em; }
.id { color: #333; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; word-break: break-word; margin: 2px 0;
  padding: 4px; background: #f6f6f6; border: 1px solid #ddd; }
pre .del { color: #a00000; } pre .ins { color: #005a00; } pre .hunk { color: #555; }
ul { margin: 0; padding-left: 1.2em; }
.flag { display: inline-block; margin-top: 2px; padding: 0 4px; border: 2px solid #a00000;
  color: #a00000; font-weight: 700; font-size: 0.85em; }
section.alert { border: 3px solid #a00000; padding: 0 12px 8px; }
section.alert h2 { color: #a00000; border-bottom-color: #a00000; }
svg { display: block; max-width: 100%; height: auto; }
@page { size: A4; margin: 15mm 15mm 18mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 9.5pt; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  thead { display: table-header-group; }
  tr, pre, svg { break-inside: avoid; }
  h2, h2 + p { break-after: avoid; }
  #trend-section { break-inside: avoid; }
}
"#;

const FOOTER_FONT: &str = "font: 8pt system-ui, sans-serif; color: #444;";

pub(super) fn render(report: &Report) -> String {
    let title = title(report);
    let figures = figures(report);
    let events = events(report);
    let mut body = format!("<h1>{}</h1>\n", escape(&title));
    body.push_str(&block_section(&summary(report, &figures)));
    body.push_str(&header_section(report));
    for block in blocks(report, &figures) {
        body.push_str(&block_section(&block));
    }
    for section in Section::ALL {
        body.push_str(&event_section(report, section, &section.events(&events)));
    }
    body.push_str(&section_html(
        "trend",
        None,
        "Runs",
        "Accounts per run (line, left scale) and joiners, movers and leavers per run (bars, right scale), oldest run first. A baseline run (compared with nothing) has no bars: its accounts were present, not joiners.",
        &trend_chart(&report.trend),
    ));
    // The report id and page numbers on every printed page; Chromium prints CSS page
    // margin boxes.
    let footer = css_string(&format!("aksync report {}", report.header.report_id));
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}\
         @page {{ @bottom-left {{ content: {footer}; {FOOTER_FONT} }} \
         @bottom-right {{ content: \"page \" counter(page) \"/\" counter(pages); {FOOTER_FONT} }} }}\n\
         </style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(&title)
    )
}

/// A CSS string literal of untrusted text: quotes, backslashes and control characters
/// escaped, and `<` too, so that it cannot close the style element.
fn css_string(raw: &str) -> String {
    let mut out = String::from("\"");
    for character in crate::display::escape(raw).chars() {
        match character {
            '"' | '\\' | '<' | '>' => out.push_str(&format!("\\{:x} ", u32::from(character))),
            other => out.push(other),
        }
    }
    out.push('"');
    out
}

fn block_section(block: &Block) -> String {
    let rows = block
        .rows
        .iter()
        .map(|row| row.iter().map(cell_html).collect())
        .collect();
    let heading = block.heading();
    section_html(
        block.id,
        (block.alert && !block.rows.is_empty()).then_some("alert"),
        &heading,
        &block.description,
        &table(block.id, &block.columns, rows),
    )
}

fn cell_html(cell: &Cell) -> String {
    cell.iter()
        .map(|piece| match piece {
            Piece::Text(value) => escape(value),
            Piece::Code(value) => format!("<code>{}</code>", escape(value)),
            Piece::Strong(value) => format!("<strong>{}</strong>", escape(value)),
            Piece::Link(id, label) => format!("<a href=\"#{id}-section\">{}</a>", escape(label)),
            Piece::Flag(value) => format!("<br><span class=\"flag\">{}</span>", escape(value)),
        })
        .collect()
}

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes. Control
/// characters and bidirectional overrides are written out first, so that no name reads
/// differently from what it is.
pub fn escape(raw: &str) -> String {
    let raw = crate::display::escape(raw);
    let mut escaped = String::with_capacity(raw.len());
    for character in raw.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn header_section(report: &Report) -> String {
    let rows = header_fields(report)
        .iter()
        .map(|field| {
            let values: Vec<String> = field
                .values
                .iter()
                .map(|value| match value {
                    HeaderValue::Prose(prose) => escape(prose),
                    HeaderValue::Literal(literal) => format!("<code>{}</code>", escape(literal)),
                })
                .collect();
            vec![escape(field.label), values.join("<br>")]
        })
        .collect();
    section_html(
        "period",
        None,
        "Period",
        "What the report covers, how it was produced, and what an auditor needs to re-perform it.",
        &table("period", &[("Field", 24), ("Value", 76)], rows),
    )
}

fn event_section(report: &Report, section: Section, events: &[&Event<'_>]) -> String {
    let columns: &[(&str, u32)] = match section {
        Section::Movers => &[
            ("Account", 24),
            ("Changes", 40),
            ("Groups added", 13),
            ("Groups removed", 13),
            ("Run", 10),
        ],
        Section::Leavers => &[
            ("Account", 23),
            ("Reason", 13),
            ("Groups at departure", 24),
            ("Timeline", 27),
            ("Detection latency", 13),
        ],
        Section::Joiners => &[("Account", 32), ("Joined", 24), ("Groups", 28), ("Run", 16)],
        Section::Groups => &[("Change", 10), ("Group", 30), ("Details", 45), ("Run", 15)],
        Section::Memberships => &[("Change", 12), ("Account", 35), ("Group", 38), ("Run", 15)],
    };
    let rows = events
        .iter()
        .map(|event| event_row(report, event))
        .collect();
    let heading = format!("{} ({})", section.title(), events.len());
    let content = table(section.id(), columns, rows);
    section_html(
        section.id(),
        None,
        &heading,
        section.description(),
        &content,
    )
}

fn privilege_text(privileged: bool, source: Option<&str>) -> String {
    match (privileged, source) {
        (true, Some(source)) => format!("yes: {}", escape(source)),
        (true, None) => "yes".to_string(),
        (false, _) => "no".to_string(),
    }
}

fn event_row(report: &Report, event: &Event<'_>) -> Vec<String> {
    let run = format!("<code>{}</code>", escape(&run_label(report, event.run_id)));
    let account = |hr_key: Option<&str>| {
        let mut cell = account_cell(event.name(), &event.external_id(), event.email());
        if let Some(key) = hr_key {
            cell.push_str(&format!(
                "<span class=\"label\">HR key</span>{}",
                escape(key)
            ));
        }
        cell
    };
    match event.kind {
        EventKind::Leaver(leaver) => {
            let timeline = timeline_cell(
                leaver.last_seen_active_at,
                leaver.detected_at,
                &run,
                leaver.last_login_at.as_deref(),
                leaver.authentik_last_updated.as_deref(),
                leaver.login_after_last_seen,
            );
            let mut latency = format!("<strong>{}</strong>", escape(&detection_latency(leaver)));
            match leaver.within_sla {
                Some(true) => latency.push_str("<br>within SLA"),
                Some(false) => latency.push_str("<br><span class=\"flag\">SLA BREACH</span>"),
                None => {}
            }
            let mut reason = format!(
                "{}<span class=\"label\">Memberships removed</span>{}\
                 <span class=\"label\">Privileged at departure</span>{}",
                escape(leaver.reason.as_str()),
                escape(yes_no(leaver.memberships_removed)),
                privilege_text(
                    leaver.privileged_at_departure,
                    leaver.privilege_source.as_deref()
                ),
            );
            if !leaver.changes.is_empty() {
                reason.push_str(&changes_cell(&leaver.changes));
            }
            vec![
                account(leaver.hr_key.as_deref()),
                reason,
                escape(&group_names(&leaver.groups_at_departure)),
                timeline,
                latency,
            ]
        }
        EventKind::Purged(purge) => vec![
            account(purge.hr_key.as_deref()),
            "purged: deleted after it had already left".to_string(),
            escape(&group_names(&purge.groups_at_deletion)),
            timeline_cell(
                purge.last_seen_active_at,
                purge.detected_at,
                &run,
                purge.last_login_at.as_deref(),
                purge.authentik_last_updated.as_deref(),
                // The warning belongs to the leaver event that opened the case.
                false,
            ),
            String::new(),
        ],
        EventKind::Joiner(joiner) => {
            let mut cell = account(joiner.hr_key.as_deref());
            if joiner.privilege_escalation {
                cell.push_str(&format!(
                    "<br><span class=\"flag\">{ESCALATION_FLAG}</span>"
                ));
            }
            let mut joined = format!(
                "{}<span class=\"label\">Status, type</span>{}, {}\
                 <span class=\"label\">Superuser flag</span>{}\
                 <span class=\"label\">Date joined (Authentik)</span>{}\
                 <span class=\"label\">Privileged</span>{}",
                escape(joiner.reason.as_str()),
                format!("{:?}", joiner.status).to_lowercase(),
                format!("{:?}", joiner.account_type).to_lowercase(),
                yes_no(joiner.is_superuser),
                joiner
                    .added_at
                    .as_deref()
                    .map_or_else(|| "not reported".to_string(), escape),
                privilege_text(joiner.privileged, joiner.privilege_source.as_deref()),
            );
            if !joiner.changes.is_empty() {
                joined.push_str(&changes_cell(&joiner.changes));
            }
            vec![cell, joined, escape(&group_names(&joiner.groups)), run]
        }
        EventKind::Mover(mover) => {
            let mut cell = account(mover.hr_key.as_deref());
            cell.push_str(&format!(
                "<span class=\"label\">Privileged</span>{}",
                privilege_text(mover.privileged, mover.privilege_source.as_deref())
            ));
            if mover.privilege_escalation {
                cell.push_str(&format!(
                    "<br><span class=\"flag\">{ESCALATION_FLAG}</span>"
                ));
            }
            vec![
                cell,
                changes_cell(&mover.changes),
                escape(&group_names(&mover.groups_added)),
                escape(&group_names(&mover.groups_removed)),
                run,
            ]
        }
        EventKind::GroupCreated(group) => group_row("created", group, run),
        EventKind::GroupDeleted(group) => group_row("deleted", group, run),
        EventKind::GroupChanged(group) => vec![
            "changed".to_string(),
            name_and_id(&group.display_name, &group.external_id),
            changes_cell(&group.changes),
            run,
        ],
        EventKind::MembershipAdded(membership) => membership_row("added", membership, run),
        EventKind::MembershipRemoved(membership) => membership_row("removed", membership, run),
        // Listed in their own tables, never in an event section.
        EventKind::PrivilegeGranted(_)
        | EventKind::PrivilegeRemoved(_)
        | EventKind::PrivilegedGroupChange(_) => Vec::new(),
    }
}

/// A created or deleted group: nothing to detail beyond its name and id.
fn group_row(change: &str, group: &GroupRef, run: String) -> Vec<String> {
    let group = name_and_id(&group.display_name, &group.external_id);
    vec![change.to_string(), group, String::new(), run]
}

fn membership_row(change: &str, membership: &MembershipRef, run: String) -> Vec<String> {
    vec![
        change.to_string(),
        name_and_id(&membership.username, &membership.account_external_id),
        name_and_id(&membership.group_name, &membership.group_external_id),
        run,
    ]
}

fn account_cell(username: &str, external_id: &str, email: Option<&str>) -> String {
    let mut cell = name_and_id(username, external_id);
    if let Some(email) = email {
        cell.push_str(&format!("<br>{}", escape(email)));
    }
    cell
}

/// The name people know, above the id a system keeps.
fn name_and_id(name: &str, external_id: &str) -> String {
    format!(
        "<strong>{}</strong><br><span class=\"id\">{}</span>",
        escape(name),
        escape(external_id)
    )
}

fn changes_cell(changes: &[FieldChange]) -> String {
    if changes.is_empty() {
        return "none".to_string();
    }
    let items: String = change_views(changes)
        .into_iter()
        .map(|view| match view {
            ChangeView::Inline { field, old, new } => format!(
                "<li><code>{}</code>: {} → {}</li>",
                escape(field),
                escape(&old),
                escape(&new)
            ),
            ChangeView::Diff { field, unified } => format!(
                "<li><code>{}</code>:<pre>{}</pre></li>",
                escape(field),
                diff_lines(&unified)
            ),
            ChangeView::Sizes { field, sizes } => {
                format!(
                    "<li><code>{}</code>: {}</li>",
                    escape(field),
                    escape(&sizes)
                )
            }
        })
        .collect();
    format!("<ul>{items}</ul>")
}

/// When a departed account was last seen active, when its departure was found, its last
/// login and Authentik's last update, with the warning of a login after it was last seen.
fn timeline_cell(
    last_seen_active_at: Option<DateTime<Utc>>,
    detected_at: DateTime<Utc>,
    run: &str,
    last_login_at: Option<&str>,
    authentik_last_updated: Option<&str>,
    login_after_last_seen: bool,
) -> String {
    let mut timeline = format!(
        "<span class=\"label\">Last seen active</span>{}\
         <span class=\"label\">Detected</span>{}, run {run}\
         <span class=\"label\">Last login</span>{}\
         <span class=\"label\">Authentik last updated</span>{}",
        last_seen_active_at.map_or_else(|| "unknown".to_string(), breakable_timestamp),
        breakable_timestamp(detected_at),
        last_login_at.map_or_else(|| "never".to_string(), escape),
        authentik_last_updated.map_or_else(|| "not reported".to_string(), escape),
    );
    if login_after_last_seen {
        timeline.push_str(&format!(
            "<br><span class=\"flag\">WARNING</span> {}",
            escape(LOGIN_WARNING)
        ));
    }
    timeline
}

/// A timestamp that wraps between date and time rather than inside either.
fn breakable_timestamp(at: DateTime<Utc>) -> String {
    timestamp(at).replacen('T', "<wbr>T", 1)
}

/// Removed and added lines coloured, each line escaped.
fn diff_lines(unified: &str) -> String {
    unified
        .lines()
        .map(|line| {
            let class = if ["---", "+++", "@@"]
                .iter()
                .any(|mark| line.starts_with(mark))
            {
                "hunk"
            } else if line.starts_with('-') {
                "del"
            } else if line.starts_with('+') {
                "ins"
            } else {
                return escape(line);
            };
            format!("<span class=\"{class}\">{}</span>", escape(line))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table whose columns have fixed percentage widths, with "None." when it has no rows so
/// every section keeps its anchor.
fn table(id: &str, columns: &[(&str, u32)], rows: Vec<Vec<String>>) -> String {
    let mut html = format!("<table id=\"{id}\">\n<colgroup>");
    for (_, width) in columns {
        html.push_str(&format!("<col style=\"width: {width}%\">"));
    }
    html.push_str("</colgroup>\n<thead><tr>");
    for (label, _) in columns {
        html.push_str(&format!("<th scope=\"col\">{}</th>", escape(label)));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    if rows.is_empty() {
        html.push_str(&format!(
            "<tr><td class=\"none\" colspan=\"{}\">None.</td></tr>\n",
            columns.len()
        ));
    }
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            html.push_str(&format!("<td>{cell}</td>"));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody>\n</table>\n");
    html
}

fn section_html(
    id: &str,
    class: Option<&str>,
    heading: &str,
    description: &str,
    content: &str,
) -> String {
    let class = class.map_or_else(String::new, |class| format!(" class=\"{class}\""));
    format!(
        "<section id=\"{id}-section\"{class} aria-labelledby=\"{id}-title\">\n\
         <h2 id=\"{id}-title\">{}</h2>\n<p>{}</p>\n{content}</section>\n",
        escape(heading),
        escape(description)
    )
}
