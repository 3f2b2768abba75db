//! A [`Sheet`] as JSON for tools: the header block as an array of `{"key", "value"}`
//! objects (its order is part of the record, and keys need not be unique), each row as an
//! object keyed by column, and the choices as an object of column to allowed values.
//!
//! ```json
//! {"title": "aksync access review",
//!  "header": [{"key": "source", "value": "corp"}],
//!  "columns": ["username", "decision"],
//!  "rows": [{"username": "alice", "decision": ""}],
//!  "choices": {"decision": ["keep", "revoke"]}}
//! ```

use serde_json::{json, Map, Value};

use super::Sheet;

/// The JSON of `sheet`. Row objects follow the column order only as far as serde_json's map
/// does; `columns` gives the order.
pub fn write_json(sheet: &Sheet) -> Value {
    let header: Vec<Value> = sheet
        .header
        .iter()
        .map(|(key, value)| json!({"key": key, "value": value}))
        .collect();
    let rows: Vec<Value> = sheet
        .rows
        .iter()
        .map(|row| {
            let object: Map<String, Value> = sheet
                .columns
                .iter()
                .zip(row)
                .map(|(column, cell)| (column.clone(), Value::String(cell.clone())))
                .collect();
            Value::Object(object)
        })
        .collect();
    let choices: Map<String, Value> = sheet
        .choices
        .iter()
        .map(|(column, values)| (column.clone(), json!(values)))
        .collect();
    json!({
        "title": sheet.title,
        "header": header,
        "columns": sheet.columns,
        "rows": rows,
        "choices": choices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_keyed_by_column_and_the_header_keeps_its_order() {
        let sheet = Sheet {
            title: "t".to_string(),
            header: vec![
                ("z".to_string(), "1".to_string()),
                ("a".to_string(), "2".to_string()),
            ],
            columns: vec!["user".to_string(), "decision".to_string()],
            rows: vec![vec!["alice".to_string(), String::new()]],
            choices: vec![(
                "decision".to_string(),
                vec!["keep".to_string(), "revoke".to_string()],
            )],
        };
        assert_eq!(
            write_json(&sheet),
            json!({
                "title": "t",
                "header": [{"key": "z", "value": "1"}, {"key": "a", "value": "2"}],
                "columns": ["user", "decision"],
                "rows": [{"user": "alice", "decision": ""}],
                "choices": {"decision": ["keep", "revoke"]},
            })
        );
    }
}
