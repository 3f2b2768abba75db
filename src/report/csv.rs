//! The CSV report: one row per event, for sign-off in a spreadsheet. Quoting and formula
//! defusing are the CLI's CSV writer's.

use super::content::{events, timestamp};
use super::Report;
use crate::cli::output::csv;

const COLUMNS: [&str; 7] = [
    "type",
    "external_id",
    "username",
    "email",
    "detail",
    "detected_at",
    "run_id",
];

pub(super) fn render(report: &Report) -> String {
    let rows: Vec<Vec<String>> = events(report)
        .iter()
        .map(|event| {
            vec![
                event.event_type().as_str().to_string(),
                event.external_id(),
                event.name().to_string(),
                event.email().unwrap_or_default().to_string(),
                event.detail(),
                timestamp(event.detected_at),
                event.run_id.to_string(),
            ]
        })
        .collect();
    csv(&COLUMNS, &rows)
}
