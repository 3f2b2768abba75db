//! A [`Sheet`] as an XLSX workbook for a reviewer: the rows on a sheet named [`DATA_SHEET`]
//! (bold column row frozen at the top, an autofilter, a dropdown on each column with
//! [`Sheet::choices`]) and the title and header block on a second sheet, [`HEADER_SHEET`].
//!
//! Every cell is written as a string, never as a formula or a number, so that a value such as
//! `=cmd|' /C calc'!A0` stays text and an id such as `007` keeps its zeros. A reviewer may
//! type numbers, booleans or dates; [`read_xlsx`] reads every cell back as text (a date as
//! ISO 8601). calamine cannot read data validations, so `choices` comes back empty;
//! [`xlsx_validations`] reads them from the worksheet XML instead, for tests and checks.

use std::io::{Cursor, Read};

use std::collections::BTreeMap;

use calamine::{open_workbook_from_rs, Data, Reader, Xlsx};
use rust_xlsxwriter::{DataValidation, Format, Workbook, Worksheet};

use super::{check_cell, check_shape, Sheet, SheetError, MAX_COLUMNS, MAX_ROWS};

/// The name of the sheet with the column row and the rows.
pub const DATA_SHEET: &str = "Review";
/// The name of the sheet with the title and the header block.
pub const HEADER_SHEET: &str = "Header";

/// Column widths, in characters: enough for an id or a date, never so wide that a long
/// cell pushes the next column off screen.
const MIN_WIDTH: usize = 8;
const MAX_WIDTH: usize = 60;
/// Rows looked at for a column's width: a large review would otherwise be read twice.
const WIDTH_SAMPLE: usize = 1_000;

/// The most bytes of one part of the workbook [`xlsx_validations`] reads: a worksheet of
/// Excel's full size is far smaller, and a zip bomb is not read to its end.
const MAX_PART_BYTES: u64 = 512 * 1024 * 1024;
/// The most the parts of a workbook may say they unpack to, all together, before it is
/// opened: calamine holds the shared strings and a sheet's cells in memory, and the zip
/// reader stops at each part's stated size, so this bounds what a hostile file costs.
const MAX_UNPACKED_BYTES: u64 = 1024 * 1024 * 1024;
/// The most cells (rows × columns, from A1 to the last cell with a value) read into a
/// grid: a review of Excel's full height at its 19 columns, with room to spare. Two cells,
/// A1 and the last cell Excel has, would otherwise ask for seventeen billion.
const MAX_GRID_CELLS: usize = 24 * MAX_ROWS;

fn write_error(error: rust_xlsxwriter::XlsxError) -> SheetError {
    SheetError::Write(error.to_string())
}

fn too_large(what: impl Into<String>, problem: impl Into<String>) -> SheetError {
    SheetError::TooLarge {
        what: what.into(),
        problem: problem.into(),
    }
}

/// Whether `sheet` fits in a workbook, with errors that name the row or column that does
/// not: the XLSX library's own errors do not say where.
fn check_limits(sheet: &Sheet) -> Result<(), SheetError> {
    if sheet.columns.len() > MAX_COLUMNS {
        return Err(too_large(
            "the column row",
            format!(
                "{} columns, more than the {MAX_COLUMNS} a spreadsheet holds",
                sheet.columns.len()
            ),
        ));
    }
    if sheet.rows.len() >= MAX_ROWS || sheet.header.len() >= MAX_ROWS {
        return Err(too_large(
            "the sheet",
            format!(
                "{} rows and {} header lines, more than the {} a spreadsheet holds",
                sheet.rows.len(),
                sheet.header.len(),
                MAX_ROWS - 1
            ),
        ));
    }
    check_cell(&sheet.title).map_err(|problem| too_large("the title", problem))?;
    for (index, (key, value)) in sheet.header.iter().enumerate() {
        check_cell(key)
            .and_then(|()| check_cell(value))
            .map_err(|problem| too_large(format!("header line {}", index + 1), problem))?;
    }
    for column in &sheet.columns {
        check_cell(column).map_err(|problem| too_large("the column row", problem))?;
    }
    for (index, row) in sheet.rows.iter().enumerate() {
        for cell in row {
            check_cell(cell).map_err(|problem| too_large(format!("row {}", index + 1), problem))?;
        }
    }
    Ok(())
}

/// A dropdown of `values`, blank allowed, any other value refused: what a reviewer may put
/// in a decision column.
fn dropdown(column: &str, values: &[String]) -> Result<DataValidation, SheetError> {
    let problem = |problem: &str| too_large(format!("the choices of column {column:?}"), problem);
    if values.is_empty() {
        return Err(problem(
            "there are none; a dropdown needs at least one value",
        ));
    }
    if values.iter().any(|value| value.contains(',')) {
        return Err(problem(
            "a value contains a comma, which separates the values of a dropdown",
        ));
    }
    DataValidation::new()
        .allow_list_strings(values)
        .map_err(|error| problem(&error.to_string()))
        .map(|validation| validation.ignore_blank(true))
}

/// Sets each column's width from its name and the first rows' cells.
fn set_widths(worksheet: &mut Worksheet, sheet: &Sheet) -> Result<(), SheetError> {
    for (index, column) in sheet.columns.iter().enumerate() {
        let widest = sheet
            .rows
            .iter()
            .take(WIDTH_SAMPLE)
            .filter_map(|row| row.get(index))
            .chain(std::iter::once(column))
            .map(|cell| {
                cell.lines()
                    .map(|line| line.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0);
        let width = (widest + 2).clamp(MIN_WIDTH, MAX_WIDTH);
        worksheet
            .set_column_width(index as u16, width as f64)
            .map_err(write_error)?;
    }
    Ok(())
}

/// Writes `sheet` as an XLSX workbook. Fails on a row that does not have one cell per column,
/// on a sheet or cell larger than a spreadsheet holds, and on choices for a column the sheet
/// does not have or that a dropdown cannot hold (none, or a value with a comma).
pub fn write_xlsx(sheet: &Sheet) -> Result<Vec<u8>, SheetError> {
    check_shape(sheet)?;
    check_limits(sheet)?;
    let mut validations = Vec::new();
    for (column, values) in &sheet.choices {
        let Some(index) = sheet.columns.iter().position(|name| name == column) else {
            return Err(too_large(
                format!("the choices of column {column:?}"),
                "the sheet has no such column",
            ));
        };
        validations.push((index as u16, dropdown(column, values)?));
    }

    let bold = Format::new().set_bold();
    let mut workbook = Workbook::new();
    // Row and column indexes fit Excel's types: check_limits kept them within its limits.
    let data = workbook.add_worksheet();
    data.set_name(DATA_SHEET).map_err(write_error)?;
    for (index, column) in sheet.columns.iter().enumerate() {
        data.write_string_with_format(0, index as u16, column, &bold)
            .map_err(write_error)?;
    }
    for (row_index, row) in sheet.rows.iter().enumerate() {
        for (index, cell) in row.iter().enumerate() {
            data.write_string(row_index as u32 + 1, index as u16, cell)
                .map_err(write_error)?;
        }
    }
    data.set_freeze_panes(1, 0).map_err(write_error)?;
    let last_row = sheet.rows.len() as u32;
    if let Some(last_column) = sheet.columns.len().checked_sub(1) {
        data.autofilter(0, 0, last_row, last_column as u16)
            .map_err(write_error)?;
    }
    // A sheet without rows still gets its dropdown on the first row, for the reviewer who
    // adds one.
    for (index, validation) in &validations {
        data.add_data_validation(1, *index, last_row.max(1), *index, validation)
            .map_err(write_error)?;
    }
    set_widths(data, sheet)?;

    let header = workbook.add_worksheet();
    header.set_name(HEADER_SHEET).map_err(write_error)?;
    header
        .write_string_with_format(0, 0, &sheet.title, &bold)
        .map_err(write_error)?;
    for (index, (key, value)) in sheet.header.iter().enumerate() {
        let row = index as u32 + 1;
        header
            .write_string_with_format(row, 0, key, &bold)
            .map_err(write_error)?;
        header.write_string(row, 1, value).map_err(write_error)?;
    }
    header.set_column_width(0, 28).map_err(write_error)?;
    header.set_column_width(1, 80).map_err(write_error)?;

    workbook.save_to_buffer().map_err(write_error)
}

/// A cell as text: what a reviewer typed, whatever type the spreadsheet gave it.
fn cell_text(data: &Data) -> String {
    match data {
        Data::Empty => String::new(),
        Data::String(text) | Data::DateTimeIso(text) | Data::DurationIso(text) => text.clone(),
        Data::Int(number) => number.to_string(),
        // Rust writes an integral float without ".0", and never with an exponent.
        Data::Float(number) => number.to_string(),
        Data::Bool(flag) => flag.to_string(),
        Data::DateTime(datetime) if datetime.is_datetime() => {
            let (year, month, day, hour, minute, second, _) = datetime.to_ymd_hms_milli();
            if (hour, minute, second) == (0, 0, 0) {
                format!("{year:04}-{month:02}-{day:02}")
            } else {
                format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")
            }
        }
        // A duration (`[h]:mm`) as the number of days it is, as the spreadsheet stores it.
        Data::DateTime(duration) => duration.as_f64().to_string(),
        Data::Error(error) => error.to_string(),
    }
}

/// The cells of a worksheet as text, from A1, without the empty rows at its end. Cells are
/// read one by one (only those with a value are kept) and the grid is built only when its
/// size is within [`MAX_GRID_CELLS`].
fn grid(workbook: &mut Xlsx<Cursor<&[u8]>>, sheet: &str) -> Result<Vec<Vec<String>>, SheetError> {
    let unreadable =
        |error: calamine::XlsxError| SheetError::NotXlsx(format!("sheet {sheet}: {error}"));
    let too_large = |row: usize, problem: String| SheetError::Xlsx {
        sheet: sheet.to_string(),
        row,
        problem,
    };
    let mut reader = workbook.worksheet_cells_reader(sheet).map_err(unreadable)?;
    let mut cells: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut width = 0;
    while let Some(cell) = reader.next_cell().map_err(unreadable)? {
        let (row, column) = cell.get_position();
        let (row, column) = (row as usize, column as usize);
        if row >= MAX_ROWS || column >= MAX_COLUMNS {
            return Err(too_large(
                row.min(MAX_ROWS) + 1,
                format!("a spreadsheet holds {MAX_ROWS} rows and {MAX_COLUMNS} columns"),
            ));
        }
        let text = cell_text(&Data::from(cell.get_value().clone()));
        if text.is_empty() {
            continue;
        }
        check_cell(&text).map_err(|problem| too_large(row + 1, problem))?;
        if cells.len() == MAX_GRID_CELLS {
            return Err(too_large(
                row + 1,
                format!("more than {MAX_GRID_CELLS} cells"),
            ));
        }
        width = width.max(column + 1);
        cells.insert((row, column), text);
    }
    let height = cells.keys().next_back().map_or(0, |(row, _)| row + 1);
    if height.saturating_mul(width) > MAX_GRID_CELLS {
        return Err(too_large(
            height,
            format!(
                "the sheet reaches row {height}, column {width}: more than the {MAX_GRID_CELLS} cells a review can have"
            ),
        ));
    }
    let mut grid = vec![vec![String::new(); width]; height];
    for ((row, column), text) in cells {
        grid[row][column] = text;
    }
    Ok(grid)
}

/// Whether the cells of `row` after the first `width` are empty; the error names the row.
fn check_width(row: &[String], width: usize, sheet: &str, number: usize) -> Result<(), SheetError> {
    match row.iter().skip(width).position(|cell| !cell.is_empty()) {
        None => Ok(()),
        Some(offset) => Err(SheetError::Xlsx {
            sheet: sheet.to_string(),
            row: number,
            problem: format!(
                "column {} has a value, but there are only {width} columns",
                width + offset + 1
            ),
        }),
    }
}

/// Reads a workbook written by [`write_xlsx`] and filled in by a reviewer. Trailing empty
/// cells and rows are what a spreadsheet leaves out: rows are padded to the column row's
/// width, and empty rows at the end are dropped (so a sheet whose last rows are wholly
/// empty does not come back whole). `choices` is always empty: calamine does not read data
/// validations (see [`xlsx_validations`]).
pub fn read_xlsx(bytes: &[u8]) -> Result<Sheet, SheetError> {
    check_unpacked_size(bytes)?;
    let mut workbook: Xlsx<Cursor<&[u8]>> = open_workbook_from_rs(Cursor::new(bytes))
        .map_err(|error: calamine::XlsxError| SheetError::NotXlsx(error.to_string()))?;
    let names = workbook.sheet_names();
    let mut read = |sheet: &str| {
        if !names.iter().any(|name| name == sheet) {
            return Err(SheetError::MissingSheet {
                sheet: sheet.to_string(),
                found: names.join(", "),
            });
        }
        grid(&mut workbook, sheet)
    };
    let header = read(HEADER_SHEET)?;
    let data = read(DATA_SHEET)?;

    let mut sheet = Sheet::default();
    let mut header = header.into_iter();
    if let Some(title) = header.next() {
        check_width(&title, 1, HEADER_SHEET, 1)?;
        sheet.title = title.into_iter().next().unwrap_or_default();
    }
    for (index, row) in header.enumerate() {
        check_width(&row, 2, HEADER_SHEET, index + 2)?;
        let mut cells = row.into_iter();
        let key = cells.next().unwrap_or_default();
        let value = cells.next().unwrap_or_default();
        sheet.header.push((key, value));
    }

    let mut data = data.into_iter();
    if let Some(mut columns) = data.next() {
        while columns.last().is_some_and(String::is_empty) {
            columns.pop();
        }
        sheet.columns = columns;
    }
    for (index, mut row) in data.enumerate() {
        check_width(&row, sheet.columns.len(), DATA_SHEET, index + 2)?;
        row.resize(sheet.columns.len(), String::new());
        sheet.rows.push(row);
    }
    Ok(sheet)
}

/// Refuses a workbook whose parts say they unpack to more than [`MAX_UNPACKED_BYTES`].
fn check_unpacked_size(bytes: &[u8]) -> Result<(), SheetError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|error| SheetError::NotXlsx(error.to_string()))?;
    let mut total: u64 = 0;
    for index in 0..archive.len() {
        let part = archive
            .by_index_raw(index)
            .map_err(|error| SheetError::NotXlsx(error.to_string()))?;
        total = total.saturating_add(part.size());
    }
    if total > MAX_UNPACKED_BYTES {
        return Err(SheetError::NotXlsx(format!(
            "it unpacks to {total} bytes, more than the {MAX_UNPACKED_BYTES} a review can take"
        )));
    }
    Ok(())
}

/// One part of the workbook's zip as text.
fn part(archive: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str) -> Result<String, SheetError> {
    let file = archive
        .by_name(name)
        .map_err(|error| SheetError::NotXlsx(format!("{name}: {error}")))?;
    let mut text = String::new();
    file.take(MAX_PART_BYTES)
        .read_to_string(&mut text)
        .map_err(|error| SheetError::NotXlsx(format!("{name}: {error}")))?;
    Ok(text)
}

/// The value of attribute `name` in the start tag `element`, entities decoded.
fn attribute(element: &str, name: &str) -> Option<String> {
    let start = element.find(&format!(" {name}=\""))? + name.len() + 3;
    let length = element[start..].find('"')?;
    Some(unescape_xml(&element[start..start + length]))
}

fn unescape_xml(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The start tags of the elements named `name` in `xml`.
fn elements<'x>(xml: &'x str, name: &str) -> Vec<&'x str> {
    let open = format!("<{name} ");
    xml.match_indices(&open)
        .filter_map(|(start, _)| xml[start..].find('>').map(|end| &xml[start..start + end]))
        .collect()
}

/// The list data validations of the [`DATA_SHEET`] worksheet: each range (`D2:D40`) with
/// its values, read from the worksheet XML because calamine does not read them. For tests
/// and checks that a written review still has its dropdowns.
pub fn xlsx_validations(bytes: &[u8]) -> Result<Vec<(String, Vec<String>)>, SheetError> {
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|error| SheetError::NotXlsx(error.to_string()))?;
    let workbook = part(&mut archive, "xl/workbook.xml")?;
    let missing = || SheetError::MissingSheet {
        sheet: DATA_SHEET.to_string(),
        found: elements(&workbook, "sheet")
            .into_iter()
            .filter_map(|element| attribute(element, "name"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let id = elements(&workbook, "sheet")
        .into_iter()
        .find(|element| attribute(element, "name").as_deref() == Some(DATA_SHEET))
        .and_then(|element| attribute(element, "r:id"))
        .ok_or_else(missing)?;
    let relationships = part(&mut archive, "xl/_rels/workbook.xml.rels")?;
    let target = elements(&relationships, "Relationship")
        .into_iter()
        .find(|element| attribute(element, "Id").as_deref() == Some(id.as_str()))
        .and_then(|element| attribute(element, "Target"))
        .ok_or_else(missing)?;
    let path = match target.strip_prefix('/') {
        Some(absolute) => absolute.to_string(),
        None => format!("xl/{target}"),
    };
    let worksheet = part(&mut archive, &path)?;

    let mut validations = Vec::new();
    for (start, _) in worksheet.match_indices("<dataValidation ") {
        let rest = &worksheet[start..];
        let Some(end) = rest.find('>') else { continue };
        let element = &rest[..end];
        if attribute(element, "type").as_deref() != Some("list") {
            continue;
        }
        let range = attribute(element, "sqref").unwrap_or_default();
        let formula = rest
            .find("<formula1>")
            .map(|open| &rest[open + "<formula1>".len()..])
            .and_then(|inner| inner.find("</formula1>").map(|close| &inner[..close]))
            .map(unescape_xml)
            .unwrap_or_default();
        let values = formula
            .strip_prefix('"')
            .and_then(|list| list.strip_suffix('"'))
            .map(|list| {
                list.split(',')
                    .map(|value| value.replace("\"\"", "\""))
                    .collect()
            })
            .unwrap_or_default();
        validations.push((range, values));
    }
    Ok(validations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::sheet::csv::tests::{hostile_sheet, strings, without_choices};

    fn review() -> Sheet {
        Sheet {
            choices: vec![(
                "decision".to_string(),
                vec!["keep".to_string(), "revoke".to_string()],
            )],
            ..hostile_sheet()
        }
    }

    /// The XML of the Review worksheet, which we write first.
    fn review_xml(bytes: &[u8]) -> String {
        let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("a zip");
        part(&mut archive, "xl/worksheets/sheet1.xml").expect("the first worksheet")
    }

    #[test]
    fn hostile_strings_round_trip_but_the_choices() {
        let sheet = review();
        let back = read_xlsx(&write_xlsx(&sheet).expect("writes")).expect("reads");
        assert_eq!(back, without_choices(sheet));
    }

    #[test]
    fn trailing_empty_rows_and_cells_are_what_a_spreadsheet_drops() {
        let sheet = Sheet {
            title: "t".to_string(),
            header: vec![("k".to_string(), String::new())],
            columns: strings(&["a", "b", "c"]),
            rows: vec![strings(&["1", "", ""]), strings(&["", "", ""])],
            choices: vec![],
        };
        let back = read_xlsx(&write_xlsx(&sheet).expect("writes")).expect("reads");
        assert_eq!(back.header, sheet.header);
        assert_eq!(back.rows, vec![strings(&["1", "", ""])]);
    }

    #[test]
    fn the_decision_column_has_a_dropdown_and_the_column_row_is_frozen() {
        let bytes = write_xlsx(&review()).expect("writes");
        let xml = review_xml(&bytes);
        assert!(xml.contains("<dataValidation type=\"list\""), "{xml}");
        assert!(xml.contains("\"keep,revoke\""), "{xml}");
        assert!(xml.contains("state=\"frozen\""), "{xml}");
        assert!(xml.contains("<pane "), "{xml}");
        assert!(xml.contains("<autoFilter "), "{xml}");
        // Never a formula, whatever the cell says.
        assert!(!xml.contains("<f>"), "{xml}");
        assert_eq!(
            xlsx_validations(&bytes).expect("reads"),
            vec![(
                "D2:D7".to_string(),
                vec!["keep".to_string(), "revoke".to_string()]
            )]
        );
    }

    #[test]
    fn a_sheet_without_rows_still_has_its_dropdown() {
        let sheet = Sheet {
            rows: vec![],
            ..review()
        };
        let bytes = write_xlsx(&sheet).expect("writes");
        assert_eq!(
            xlsx_validations(&bytes).expect("reads"),
            vec![(
                "D2".to_string(),
                vec!["keep".to_string(), "revoke".to_string()]
            )]
        );
        assert_eq!(read_xlsx(&bytes).expect("reads"), without_choices(sheet));
    }

    #[test]
    fn what_a_reviewer_types_reads_as_text() {
        let mut workbook = Workbook::new();
        let data = workbook.add_worksheet();
        data.set_name(DATA_SHEET).expect("name");
        for (column, name) in ["n", "f", "flag", "date", "time"].iter().enumerate() {
            data.write_string(0, column as u16, *name).expect("write");
        }
        data.write_number(1, 0, 42.0).expect("write");
        data.write_number(1, 1, 1.5).expect("write");
        data.write_boolean(1, 2, true).expect("write");
        let date = Format::new().set_num_format("yyyy-mm-dd");
        let datetime = Format::new().set_num_format("yyyy-mm-dd hh:mm:ss");
        // 2025-10-13 and 2025-10-13 12:00:00 as Excel stores them.
        data.write_number_with_format(1, 3, 45943.0, &date)
            .expect("write");
        data.write_number_with_format(1, 4, 45943.5, &datetime)
            .expect("write");
        let header = workbook.add_worksheet();
        header.set_name(HEADER_SHEET).expect("name");
        header.write_string(0, 0, "typed").expect("write");
        let bytes = workbook.save_to_buffer().expect("saves");
        let sheet = read_xlsx(&bytes).expect("reads");
        assert_eq!(
            sheet.rows,
            vec![vec![
                "42".to_string(),
                "1.5".to_string(),
                "true".to_string(),
                "2025-10-13".to_string(),
                "2025-10-13T12:00:00".to_string(),
            ]]
        );
    }

    #[test]
    fn hostile_files_are_errors_not_panics() {
        assert!(matches!(
            read_xlsx(b"not a zip"),
            Err(SheetError::NotXlsx(_))
        ));
        assert!(matches!(
            xlsx_validations(b"not a zip"),
            Err(SheetError::NotXlsx(_))
        ));
        let mut workbook = Workbook::new();
        workbook.add_worksheet().set_name("Sheet1").expect("name");
        let bytes = workbook.save_to_buffer().expect("saves");
        assert_eq!(
            read_xlsx(&bytes).expect_err("refused").to_string(),
            "the workbook has no sheet named Header (it has: Sheet1)"
        );

        let bytes = column_row_and_one_cell(11, 2, "stray");
        assert_eq!(
            read_xlsx(&bytes).expect_err("refused").to_string(),
            "sheet Review, row 12: column 3 has a value, but there are only 1 columns"
        );
    }

    /// A workbook of our two sheets whose data sheet has a one-column column row and one
    /// more cell, at `row`, `column`.
    fn column_row_and_one_cell(row: u32, column: u16, text: &str) -> Vec<u8> {
        let mut workbook = Workbook::new();
        let data = workbook.add_worksheet();
        data.set_name(DATA_SHEET).expect("name");
        data.write_string(0, 0, "user").expect("write");
        data.write_string(row, column, text).expect("write");
        workbook
            .add_worksheet()
            .set_name(HEADER_SHEET)
            .expect("name");
        workbook.save_to_buffer().expect("saves")
    }

    #[test]
    fn a_sheet_spanning_the_whole_grid_is_refused_before_it_is_allocated() {
        let bytes = column_row_and_one_cell(1_048_575, 16_383, "far");
        let refused = read_xlsx(&bytes).expect_err("refused").to_string();
        assert!(
            refused.starts_with(
                "sheet Review, row 1048576: the sheet reaches row 1048576, column 16384"
            ),
            "{refused}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A workbook damaged anywhere reads as a sheet or as an error, never a panic.
        #[test]
        fn a_damaged_workbook_is_an_error_not_a_panic(
            damage in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..8)
        ) {
            let mut bytes = write_xlsx(&review()).expect("writes");
            for (at, byte) in damage {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            let _ = read_xlsx(&bytes);
            let _ = xlsx_validations(&bytes);
        }
    }

    #[test]
    fn sheets_a_workbook_cannot_hold_are_refused_with_where() {
        let mut sheet = review();
        sheet.rows[1][2] = "x".repeat(crate::output::sheet::MAX_CELL_CHARS + 1);
        assert_eq!(
            write_xlsx(&sheet).expect_err("refused").to_string(),
            "row 2: a cell has 32768 characters, more than the 32767 a spreadsheet holds"
        );
        let mut sheet = review();
        sheet.rows[3].pop();
        assert_eq!(
            write_xlsx(&sheet).expect_err("refused").to_string(),
            "row 4 has 3 cells but the sheet has 4 columns"
        );
        let mut sheet = review();
        sheet.choices[0].0 = "missing".to_string();
        assert!(write_xlsx(&sheet).is_err());
        sheet.choices[0] = ("decision".to_string(), vec!["a,b".to_string()]);
        assert!(write_xlsx(&sheet).is_err());
    }
}
