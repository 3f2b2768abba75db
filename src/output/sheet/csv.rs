//! A [`Sheet`] as CSV, laid out so that a spreadsheet shows it naturally:
//!
//! ```text
//! aksync access review          <- the title, alone on the first line
//! source,corp                   <- one key,value line per header pair
//! run_id,01J...
//!                               <- an empty line ends the header block
//! username,groups,decision      <- the column row
//! alice,admins,                 <- the rows
//! ```
//!
//! The file starts with a UTF-8 byte order mark, without which Excel reads it in the
//! system's legacy code page and garbles every name that is not ASCII. Lines end in CRLF and
//! cells are quoted as RFC 4180 says. A cell that a spreadsheet would run
//! as a formula (one starting with `=`, `+`, `-`, `@`, a tab or a carriage return) is written
//! with a leading `'` ([`defuse`]); so that this stays lossless, a cell that starts with `'`
//! gets one more, and the reader takes exactly one off again. An empty header key is written
//! as a lone `'`, so that no header line is empty and none is mistaken for the block's end.
//!
//! CSV has no place for [`Sheet::choices`]: [`read_csv`] returns none, and the import decides
//! which values it accepts. The reader accepts what a spreadsheet makes of the file when it
//! saves it again: a UTF-8 byte order mark, LF or CRLF, header lines padded with empty cells,
//! a block end written as a line of commas, rows short of trailing empty cells.

use std::borrow::Cow;
use std::io::Write;

use super::{check_cell, check_shape, Sheet, SheetError, MAX_COLUMNS, MAX_ROWS};

/// What a spreadsheet runs as a formula at the start of a cell, or what can hide one (a
/// leading tab or carriage return, OWASP's list); and `'`, our own escape.
const DEFUSED: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// How an empty header key is written.
const EMPTY_KEY: &str = "'";

/// A UTF-8 byte order mark: Excel starts the CSV files it saves with one, and reads a file as
/// UTF-8 only when it has one.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The cell as written to a CSV file: with a leading `'` when it starts with a formula
/// character or with `'`, so that a spreadsheet shows it as text instead of running it, and
/// [`read_csv`] gets back the cell exactly. Every CSV aksync writes goes through here.
pub fn defuse(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(DEFUSED) {
        Cow::Owned(format!("'{cell}"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The cell as it was before [`defuse`]: one leading `'` off, if what follows it is one that
/// [`defuse`] would have added. A `'` before anything else is the reviewer's and stays.
fn restore(cell: &str) -> String {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(DEFUSED) => rest.to_string(),
        _ => cell.to_string(),
    }
}

/// A CSV writer as aksync writes CSV: CRLF line ends, quotes only where needed, and records of
/// any length (the header block is narrower than the rows).
pub(crate) fn writer<W: Write>(out: W) -> ::csv::Writer<W> {
    ::csv::WriterBuilder::new()
        .flexible(true)
        .terminator(::csv::Terminator::CRLF)
        .quote_style(::csv::QuoteStyle::Necessary)
        .from_writer(out)
}

/// Writes `cells`, each through [`defuse`], as one record.
pub(crate) fn write_defused<'c, W: Write>(
    csv: &mut ::csv::Writer<W>,
    cells: impl IntoIterator<Item = &'c str>,
) -> ::csv::Result<()> {
    for cell in cells {
        csv.write_field(defuse(cell).as_bytes())?;
    }
    csv.write_record(std::iter::empty::<&[u8]>())
}

fn write_error(error: impl std::fmt::Display) -> SheetError {
    SheetError::Write(error.to_string())
}

/// Writes `sheet` as CSV (the layout is in this module's documentation). Fails on a row that
/// does not have one cell per column, or when `out` fails.
pub fn write_csv(sheet: &Sheet, out: &mut impl Write) -> Result<(), SheetError> {
    check_shape(sheet)?;
    out.write_all(BOM).map_err(write_error)?;
    let mut csv = writer(&mut *out);
    write_defused(&mut csv, [sheet.title.as_str()]).map_err(write_error)?;
    for (key, value) in &sheet.header {
        // EMPTY_KEY is not defused: it stands for the empty key, not for a key `'`.
        let key = if key.is_empty() {
            Cow::Borrowed(EMPTY_KEY)
        } else {
            defuse(key)
        };
        csv.write_field(key.as_bytes()).map_err(write_error)?;
        csv.write_record([defuse(value).as_bytes()])
            .map_err(write_error)?;
    }
    // The csv crate cannot write an empty record (it writes `""`), so the line that ends the
    // header block goes straight to the output.
    let out = csv.into_inner().map_err(write_error)?;
    out.write_all(b"\r\n").map_err(write_error)?;
    let mut csv = writer(out);
    if sheet.columns.is_empty() {
        // A record without fields is written `""`, one empty column; and rows without cells
        // hold nothing.
        return Ok(());
    }
    write_defused(&mut csv, sheet.columns.iter().map(String::as_str)).map_err(write_error)?;
    for row in &sheet.rows {
        write_defused(&mut csv, row.iter().map(String::as_str)).map_err(write_error)?;
    }
    csv.flush().map_err(write_error)
}

/// Reads records and finds the lines they start on, which the csv crate does not report for
/// a record after empty lines (it skips them, and the header block ends at one).
struct Records<'a> {
    bytes: &'a [u8],
    reader: ::csv::Reader<&'a [u8]>,
    record: ::csv::StringRecord,
}

/// Where a record starts.
struct Start {
    /// 1-based, as an editor numbers lines.
    line: u64,
    /// Whether one or more empty lines come before it.
    after_empty_line: bool,
}

impl<'a> Records<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Records {
            bytes,
            reader: ::csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(bytes),
            record: ::csv::StringRecord::new(),
        }
    }

    /// Where the next record starts: past the rest of the line end before it (the `\n` of
    /// a `\r\n` may still be unread) and past any empty lines.
    fn start(&self) -> Start {
        let at = self.reader.position();
        let offset = usize::try_from(at.byte()).unwrap_or(self.bytes.len());
        let rest = self.bytes.get(offset..).unwrap_or_default();
        let mut skip = 0;
        if offset > 0 && self.bytes.get(offset - 1) == Some(&b'\r') && rest.first() == Some(&b'\n')
        {
            skip = 1;
        }
        let line_end = skip;
        while matches!(rest.get(skip), Some(b'\r' | b'\n')) {
            skip += 1;
        }
        let newlines = rest[..skip].iter().filter(|byte| **byte == b'\n').count();
        Start {
            line: at.line() + newlines as u64,
            after_empty_line: skip > line_end,
        }
    }

    /// Reads the next record into `self.record`: where it starts, or `None` at the end.
    fn next(&mut self) -> Result<Option<Start>, SheetError> {
        let start = self.start();
        let line = start.line;
        match self.reader.read_record(&mut self.record) {
            Ok(true) => {
                for cell in self.record.iter() {
                    check_cell(cell).map_err(|problem| SheetError::Csv { line, problem })?;
                }
                Ok(Some(start))
            }
            Ok(false) => Ok(None),
            Err(error) => {
                let problem = match error.kind() {
                    ::csv::ErrorKind::Utf8 { err, .. } => {
                        format!("cell {} is not UTF-8 text", err.field() + 1)
                    }
                    _ => error.to_string(),
                };
                Err(SheetError::Csv { line, problem })
            }
        }
    }

    /// The cells of the current record after the first `keep`, which must be empty: a
    /// spreadsheet pads the lines of the header block to the width of the rows.
    fn check_padding(&self, keep: usize, line: u64, what: &str) -> Result<(), SheetError> {
        if self.record.iter().skip(keep).any(|cell| !cell.is_empty()) {
            return Err(SheetError::Csv {
                line,
                problem: format!(
                    "{what} has {} cells; it should have {keep}",
                    self.record.len()
                ),
            });
        }
        Ok(())
    }
}

/// Reads a CSV file written by [`write_csv`], or by a spreadsheet that opened and saved one.
/// Rows short of cells are padded with empty ones (a spreadsheet drops trailing empty cells);
/// a row with more cells than there are columns is an error. `choices` is always empty: CSV
/// does not hold them.
pub fn read_csv(bytes: &[u8]) -> Result<Sheet, SheetError> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    let mut records = Records::new(bytes);
    let mut sheet = Sheet::default();

    let Some(Start { line, .. }) = records.next()? else {
        return Err(SheetError::Csv {
            line: 1,
            problem: "the file is empty; it should start with a title line".to_string(),
        });
    };
    records.check_padding(1, line, "the title line")?;
    sheet.title = restore(records.record.get(0).unwrap_or_default());

    // The header block ends at an empty line or at a line of empty cells, which is what a
    // spreadsheet saves an empty line as.
    let columns_line = loop {
        let ahead = records.start();
        let Some(start) = records.next()? else {
            if ahead.after_empty_line {
                // A sheet without columns.
                break None;
            }
            return Err(SheetError::Csv {
                line: ahead.line,
                problem: "no empty line ends the header block, and no column row follows it"
                    .to_string(),
            });
        };
        let line = start.line;
        if start.after_empty_line {
            break Some(line);
        }
        if records.record.iter().all(str::is_empty) {
            break records.next()?.map(|start| start.line);
        }
        records.check_padding(2, line, "a header line (key,value)")?;
        if sheet.header.len() >= MAX_ROWS {
            return Err(SheetError::Csv {
                line,
                problem: format!("the header block has more than {MAX_ROWS} lines"),
            });
        }
        let key = match records.record.get(0).unwrap_or_default() {
            EMPTY_KEY => String::new(),
            key => restore(key),
        };
        let value = restore(records.record.get(1).unwrap_or_default());
        sheet.header.push((key, value));
    };

    let Some(line) = columns_line else {
        return Ok(sheet);
    };
    if records.record.len() > MAX_COLUMNS {
        return Err(SheetError::Csv {
            line,
            problem: format!(
                "the column row has {} cells, more than the {MAX_COLUMNS} columns a spreadsheet holds",
                records.record.len()
            ),
        });
    }
    sheet.columns = records.record.iter().map(restore).collect();

    while let Some(Start { line, .. }) = records.next()? {
        let row = sheet.rows.len() + 1;
        if records.record.len() > sheet.columns.len() {
            return Err(SheetError::Csv {
                line,
                problem: format!(
                    "row {row} has {} cells but there are {} columns",
                    records.record.len(),
                    sheet.columns.len()
                ),
            });
        }
        if row >= MAX_ROWS {
            return Err(SheetError::Csv {
                line,
                problem: format!(
                    "row {row} is more than the {} rows a spreadsheet holds under the column row",
                    MAX_ROWS - 1
                ),
            });
        }
        let mut cells: Vec<String> = records.record.iter().map(restore).collect();
        cells.resize(sheet.columns.len(), String::new());
        sheet.rows.push(cells);
    }
    Ok(sheet)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    /// What a reader gives back: formats other than JSON and HTML do not keep the choices.
    pub(crate) fn without_choices(sheet: Sheet) -> Sheet {
        Sheet {
            choices: vec![],
            ..sheet
        }
    }

    /// Strings a spreadsheet or a CSV parser could take for something else.
    pub(crate) fn hostile_sheet() -> Sheet {
        Sheet {
            title: "aksync access review, \"corp\"".to_string(),
            header: vec![
                ("source".to_string(), "corp".to_string()),
                ("filters".to_string(), "a,b\n\"c\"\r\nd".to_string()),
                (String::new(), String::new()),
                ("'".to_string(), "=1+1".to_string()),
                ("digest".to_string(), String::new()),
            ],
            columns: strings(&["username", "groups", "note", "decision"]),
            rows: vec![
                strings(&["alice", "admins, ops", "=cmd|' /C calc'!A0", "keep"]),
                strings(&["bob", "", "'quoted", ""]),
                strings(&["+1", "-1", "@SUM(A1)", "\tx"]),
                strings(&["\r=1", "''=2", "'", "Zoë 日本 🚀"]),
                strings(&["", "", "", ""]),
                strings(&["line\nbreak", "cr\rhere", "say \"hi\"", "revoke"]),
            ],
            choices: vec![],
        }
    }

    fn written(sheet: &Sheet) -> Vec<u8> {
        let mut out = Vec::new();
        write_csv(sheet, &mut out).expect("writes");
        out
    }

    #[test]
    fn hostile_strings_round_trip() {
        let sheet = hostile_sheet();
        assert_eq!(read_csv(&written(&sheet)).expect("reads"), sheet);
    }

    #[test]
    fn the_layout_is_title_header_empty_line_columns_rows() {
        let sheet = Sheet {
            title: "review".to_string(),
            header: vec![("source".to_string(), "corp".to_string())],
            columns: vec!["user".to_string(), "decision".to_string()],
            rows: vec![vec!["=x".to_string(), String::new()]],
            choices: vec![("decision".to_string(), vec!["keep".to_string()])],
        };
        let text = String::from_utf8(written(&sheet)).expect("UTF-8");
        assert_eq!(
            text,
            "\u{feff}review\r\nsource,corp\r\n\r\nuser,decision\r\n'=x,\r\n"
        );
        // CSV has no place for the choices.
        let back = read_csv(text.as_bytes()).expect("reads");
        assert_eq!(back, without_choices(sheet));
    }

    #[test]
    fn an_empty_sheet_round_trips() {
        let sheet = Sheet::default();
        assert_eq!(read_csv(&written(&sheet)).expect("reads"), sheet);
        let one_empty_column = Sheet {
            columns: vec![String::new()],
            rows: vec![vec![String::new()], vec![String::new()]],
            ..Sheet::default()
        };
        assert_eq!(
            read_csv(&written(&one_empty_column)).expect("reads"),
            one_empty_column
        );
    }

    #[test]
    fn what_a_spreadsheet_saves_reads_back() {
        // A byte order mark, LF line ends, header lines padded to the rows' width, the empty
        // line saved as commas, and a row short of its trailing empty cells.
        let text = "\u{feff}review,,\nsource,corp,\n,,\nuser,note,decision\nalice,'=1,keep\nbob\n";
        let sheet = read_csv(text.as_bytes()).expect("reads");
        assert_eq!(sheet.title, "review");
        assert_eq!(
            sheet.header,
            vec![("source".to_string(), "corp".to_string())]
        );
        assert_eq!(sheet.columns, ["user", "note", "decision"]);
        assert_eq!(
            sheet.rows,
            vec![
                vec!["alice".to_string(), "=1".to_string(), "keep".to_string()],
                vec!["bob".to_string(), String::new(), String::new()],
            ]
        );
    }

    #[test]
    fn lf_and_crlf_read_the_same() {
        let sheet = hostile_sheet();
        let crlf = String::from_utf8(written(&sheet)).expect("UTF-8");
        // Only the line ends outside quoted cells: the hostile cells keep their own.
        let lf = "review\nsource,corp\n\nuser,decision\nalice,keep\n\"two\r\nlines\",\n";
        let lf_sheet = read_csv(lf.as_bytes()).expect("reads");
        assert_eq!(lf_sheet.rows[1][0], "two\r\nlines");
        assert_eq!(lf_sheet.header.len(), 1);
        let without_bom = crlf.strip_prefix('\u{feff}').expect("written with a BOM");
        assert_eq!(read_csv(without_bom.as_bytes()).expect("reads"), sheet);
    }

    #[test]
    fn errors_name_the_line() {
        let error = |text: &str| read_csv(text.as_bytes()).expect_err("refused").to_string();
        assert_eq!(
            error(""),
            "line 1: the file is empty; it should start with a title line"
        );
        assert_eq!(
            error("title,extra\r\n"),
            "line 1: the title line has 2 cells; it should have 1"
        );
        assert_eq!(
            error("title\r\nsource,corp\r\nrun,1,oops\r\n\r\na\r\n"),
            "line 3: a header line (key,value) has 3 cells; it should have 2"
        );
        assert_eq!(
            error("title\r\nsource,corp\r\n"),
            "line 3: no empty line ends the header block, and no column row follows it"
        );
        assert_eq!(
            error("title\n\n\na,b\n1,2\n\"multi\nline\",x\n1,2,3\n"),
            "line 8: row 3 has 3 cells but there are 2 columns"
        );
        let long = "x".repeat(super::super::MAX_CELL_CHARS + 1);
        assert!(error(&format!("title\n\na\n{long}\n")).starts_with("line 4: a cell has 32768"));
        assert_eq!(
            read_csv(b"title\n\na,b\nx,\xff\n")
                .expect_err("refused")
                .to_string(),
            "line 4: cell 2 is not UTF-8 text"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the strings, what is written reads back the same.
        #[test]
        fn any_sheet_round_trips(
            title in "\\PC*",
            header in proptest::collection::vec(("[=+@'\\-\t\r\n,\" a-z]*", "\\PC*"), 0..4),
            columns in proptest::collection::vec("[=+@'\\-\t\r\n,\" a-zé]*", 1..4),
            cells in proptest::collection::vec(
                proptest::collection::vec("[=+@'\\-\t\r\n,\" a-z🚀]*", 4),
                0..5,
            ),
        ) {
            let rows = cells
                .into_iter()
                .map(|row| row.into_iter().take(columns.len()).collect())
                .collect();
            let sheet = Sheet { title, header, columns, rows, choices: vec![] };
            proptest::prop_assert_eq!(read_csv(&written(&sheet)).expect("reads"), sheet);
        }
    }
}
