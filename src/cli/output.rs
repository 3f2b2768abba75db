//! Rendering of records for people and spreadsheets: aligned text tables and CSV. Both pick
//! named fields out of a record's JSON form, so one field list serves both.

use serde_json::Value;

/// One cell of a record: strings as they are, `null` empty, anything else as compact JSON.
pub fn cell(record: &Value, field: &str) -> String {
    match record.get(field) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

pub fn rows(records: &[Value], fields: &[&str]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|record| fields.iter().map(|field| cell(record, field)).collect())
        .collect()
}

/// Columns padded to their widest cell; headers in upper case.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|header| header.to_uppercase()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// RFC 4180 CSV with a header row.
pub fn csv(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    let mut out = csv_rows(std::slice::from_ref(&header_row));
    out.push_str(&csv_rows(rows));
    out
}

/// CSV lines without a header, for output written as it is read.
pub fn csv_rows(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().map(|cell| csv_field(cell)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_field(cell: &str) -> String {
    // A leading formula character would run as a formula when a spreadsheet opens the file.
    let defused = if cell.starts_with(['=', '+', '-', '@']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    };
    if defused.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let rows = vec![vec![
            "a,b".to_string(),
            "=SUM(1)".to_string(),
            "say \"hi\"".to_string(),
        ]];
        assert_eq!(
            csv(&["x", "y", "z"], &rows),
            "x,y,z\r\n\"a,b\",'=SUM(1),\"say \"\"hi\"\"\"\r\n"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let records = vec![
            json!({"a": "long value", "b": null}),
            json!({"a": "x", "b": 3}),
        ];
        let text = table(&["a", "b"], &rows(&records, &["a", "b"]));
        assert_eq!(text, "A           B\nlong value\nx           3\n");
    }
}
