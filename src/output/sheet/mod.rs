//! One neutral table, [`Sheet`], written and read back in the formats an access review
//! travels in: CSV ([`write_csv`], [`read_csv`]) and XLSX ([`write_xlsx`], [`read_xlsx`]) for
//! the reviewer who fills in a decision column, HTML ([`write_html`]) for the printed record
//! and JSON ([`write_json`]) for tools. The header block (source, run, snapshot time, filters,
//! counts, digest...) travels with the rows, so that a returned file says what it reviewed
//! and an auditor can re-perform the review from it alone.
//!
//! Readers never trust the file: every error names the line, or the sheet and row, and what
//! is wrong, and sizes are capped at Excel's own limits ([`MAX_ROWS`], [`MAX_COLUMNS`],
//! [`MAX_CELL_CHARS`]) so that a hostile file cannot make a reader allocate without bound.

pub mod csv;
pub mod html;
pub mod json;
pub mod xlsx;

pub use self::csv::{read_csv, write_csv};
pub use self::html::write_html;
pub use self::json::write_json;
pub use self::xlsx::{read_xlsx, write_xlsx, xlsx_validations, DATA_SHEET, HEADER_SHEET};

/// A table with a re-performable header block, as an access review is written and read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sheet {
    /// The title, e.g. "aksync access review" (first line of the CSV header block, HTML
    /// `<h1>`, XLSX header sheet title cell).
    pub title: String,
    /// The header block: (key, value) pairs in order (source, run id, snapshot time, filters,
    /// counts, version, digest ...).
    pub header: Vec<(String, String)>,
    pub columns: Vec<String>,
    /// Each row has exactly `columns.len()` cells.
    pub rows: Vec<Vec<String>>,
    /// Columns whose cells must be one of a few values (e.g. "decision": ["keep", "revoke"]):
    /// a data-validation dropdown in XLSX (blank allowed), listed in the HTML.
    pub choices: Vec<(String, Vec<String>)>,
}

/// Rows in a worksheet, Excel's limit (the column row included): a file with more was not
/// written by us, and Excel could not open it anyway.
pub const MAX_ROWS: usize = 1_048_576;
/// Columns in a worksheet, Excel's limit.
pub const MAX_COLUMNS: usize = 16_384;
/// Characters in one cell, Excel's limit (counted as Excel counts them, in UTF-16 units, so
/// an emoji counts twice).
pub const MAX_CELL_CHARS: usize = 32_767;

/// Why a sheet could not be written or read. Each reading error says where in the file the
/// problem is (a line of a CSV file, a sheet and row of a workbook), so the person who edited
/// the file can fix it.
#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    /// A sheet to be written whose row does not have one cell per column.
    #[error("row {row} has {cells} cells but the sheet has {columns} columns")]
    RowWidth {
        /// 1-based, counting data rows only.
        row: usize,
        cells: usize,
        columns: usize,
    },
    /// A sheet to be written that breaks a limit of the format (Excel's sizes, a choice
    /// list Excel cannot hold).
    #[error("{what}: {problem}")]
    TooLarge { what: String, problem: String },
    /// A CSV file that does not read as a sheet.
    #[error("line {line}: {problem}")]
    Csv { line: u64, problem: String },
    /// A workbook whose sheet does not read as a sheet.
    #[error("sheet {sheet}, row {row}: {problem}")]
    Xlsx {
        sheet: String,
        /// 1-based, as Excel numbers rows.
        row: usize,
        problem: String,
    },
    /// A workbook without one of the two sheets we write.
    #[error("the workbook has no sheet named {sheet} (it has: {found})")]
    MissingSheet { sheet: String, found: String },
    /// Bytes that are not an XLSX workbook at all (not a zip, not a spreadsheet, damaged).
    #[error("not a readable XLSX workbook: {0}")]
    NotXlsx(String),
    /// Writing failed below us (an I/O error of the destination, the XLSX library).
    #[error("writing the sheet: {0}")]
    Write(String),
}

/// Why `text` cannot be a cell, if it cannot: Excel holds at most [`MAX_CELL_CHARS`]
/// characters in a cell and silently cuts longer ones, which would lose a reviewer's data.
fn check_cell(text: &str) -> Result<(), String> {
    let chars = text.encode_utf16().count();
    if chars > MAX_CELL_CHARS {
        return Err(format!(
            "a cell has {chars} characters, more than the {MAX_CELL_CHARS} a spreadsheet holds"
        ));
    }
    Ok(())
}

/// Whether every row of `sheet` has one cell per column, as every writer requires.
fn check_shape(sheet: &Sheet) -> Result<(), SheetError> {
    for (index, row) in sheet.rows.iter().enumerate() {
        if row.len() != sheet.columns.len() {
            return Err(SheetError::RowWidth {
                row: index + 1,
                cells: row.len(),
                columns: sheet.columns.len(),
            });
        }
    }
    Ok(())
}
