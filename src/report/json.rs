//! The JSON report: the [`Report`] as it is, plus what a machine would otherwise recompute:
//! each leaver's `detection_latency_seconds` (null when unknown). The header comes first, as
//! in every format; other keys follow in alphabetical order.

use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::content::detection_latency_seconds;
use super::{Report, ReportError};

const HEADER_KEY: &str = "header";

pub(super) fn render(report: &Report) -> Result<Vec<u8>, ReportError> {
    let json_error = |error: serde_json::Error| ReportError::Json(error.to_string());
    let Value::Object(mut fields) = serde_json::to_value(report).map_err(json_error)? else {
        return Err(ReportError::Json(
            "the report is not a JSON object".to_string(),
        ));
    };
    let diff_values = fields.get_mut("diffs").and_then(Value::as_array_mut);
    for (diff, diff_value) in report.diffs.iter().zip(diff_values.into_iter().flatten()) {
        let leaver_values = diff_value.get_mut("leavers").and_then(Value::as_array_mut);
        for (leaver, leaver_value) in diff.leavers.iter().zip(leaver_values.into_iter().flatten()) {
            if let Some(leaver_fields) = leaver_value.as_object_mut() {
                leaver_fields.insert(
                    "detection_latency_seconds".to_string(),
                    detection_latency_seconds(leaver).into(),
                );
            }
        }
    }

    let mut bytes = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut bytes);
    let mut object = serializer
        .serialize_map(Some(fields.len()))
        .map_err(json_error)?;
    let header = fields.iter().filter(|(key, _)| *key == HEADER_KEY);
    let rest = fields.iter().filter(|(key, _)| *key != HEADER_KEY);
    for (key, value) in header.chain(rest) {
        object.serialize_entry(key, value).map_err(json_error)?;
    }
    object.end().map_err(json_error)?;
    bytes.push(b'\n');
    Ok(bytes)
}
