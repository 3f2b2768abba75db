//! Rendering of records for people and spreadsheets: aligned text tables, and the rows that
//! CSV ([`crate::output::report::csv`]) writes. Both pick named fields out of a record's JSON
//! form, so one field list serves both. And the one way the commands write to standard output.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use super::CliError;
use crate::display;

/// The widest a table cell gets; longer values end in an ellipsis (`--json` and `--csv`
/// keep them whole).
pub const MAX_CELL_CHARS: usize = 120;
/// The last column needs no padding, so it may hold more, e.g. a failed run's error.
pub const MAX_LAST_CELL_CHARS: usize = 1000;

/// Set once the reader of standard output has gone away.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to standard output. A reader that went away (`aksync runs | head`) is not an error:
/// as with other Unix tools the output just ends, and later writes are dropped, so that a
/// sync still finishes its work.
pub fn print(text: &str) -> Result<(), CliError> {
    print_bytes(text.as_bytes())
}

pub fn print_bytes(bytes: &[u8]) -> Result<(), CliError> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => Err(CliError::Runtime(format!(
            "cannot write to standard output: {error}"
        ))),
    }
}

/// Standard output as a writer that goes through [`print_bytes`], so that a closed pipe ends
/// the output quietly here too.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        print_bytes(bytes).map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Standard output, buffered in chunks, for output written as it is produced; a closed pipe
/// ends it quietly (see [`print_bytes`]).
pub fn stdout_writer() -> impl Write {
    std::io::BufWriter::with_capacity(Chunked::CHUNK, Stdout)
}

/// Pretty JSON written while it is serialized: a diff of 100,000 accounts is not held twice.
pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), CliError> {
    let mut out = stdout_writer();
    // A failed write already says "cannot write to standard output" (see `print_bytes`).
    serde_json::to_writer_pretty(&mut out, value)
        .map_err(|error| CliError::Runtime(error.to_string()))?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|error| CliError::Runtime(error.to_string()))
}

/// Output written as it is produced, in chunks: a command that streams many records does not
/// make a system call per record, nor hold them all.
#[derive(Default)]
pub struct Chunked {
    buffer: String,
    pushed: usize,
}

impl Chunked {
    const CHUNK: usize = 64 * 1024;

    pub fn push(&mut self, text: &str) -> Result<(), CliError> {
        self.buffer.push_str(text);
        self.pushed += 1;
        if self.buffer.len() >= Self::CHUNK {
            print(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// How many pieces were pushed so far.
    pub fn written(&self) -> usize {
        self.pushed
    }

    pub fn finish(self) -> Result<(), CliError> {
        print(&self.buffer)
    }
}

/// [`print()`] with a line break.
pub fn print_line(line: &str) -> Result<(), CliError> {
    print(&format!("{line}\n"))
}

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

/// Columns padded to their widest cell; headers in upper case. Cells are escaped (a value
/// cannot drive the terminal or forge a line) and cut to [`MAX_CELL_CHARS`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let header_row: Vec<String> = headers.iter().map(|header| header.to_uppercase()).collect();
    let last = headers.len().saturating_sub(1);
    let cells: Vec<Vec<String>> = std::iter::once(header_row)
        .chain(rows.iter().map(|row| {
            row.iter()
                .enumerate()
                .map(|(column, cell)| {
                    let max = if column == last {
                        MAX_LAST_CELL_CHARS
                    } else {
                        MAX_CELL_CHARS
                    };
                    display::truncate(&display::escape(cell), max).into_owned()
                })
                .collect()
        }))
        .collect();
    let mut widths = vec![0; headers.len()];
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            if !line.is_empty() {
                line.push_str("  ");
            }
            line.push_str(cell);
            // Padding by hand: `{:<width$}` fails for widths above 65,535.
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_cells_are_escaped_and_cut() {
        let hostile = "Eve\u{1b}]0;pwned\u{7}\r\nroot\u{202e}x";
        let long = "L".repeat(70_000);
        let rows = vec![
            vec![hostile.to_string(), long.clone()],
            vec![long, "x".into()],
        ];
        let text = table(&["a", "b"], &rows);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
        assert!(!text.contains('\u{202e}'));
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("Eve\\u{1b}]0;pwned\\u{7}\\u{d}\\u{a}root\\u{202e}x"));
        let widest = text.lines().map(|line| line.chars().count()).max().unwrap();
        assert!(
            widest <= MAX_CELL_CHARS + 2 + MAX_LAST_CELL_CHARS,
            "{widest}"
        );
        assert!(text.contains(&format!("{}…", "L".repeat(MAX_CELL_CHARS - 1))));
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
