//! The CEL filter of a source: an expression over each account's raw Authentik object, as
//! `payload.<field>`, that keeps the accounts for which it is true. Memberships of accounts
//! it drops are dropped too (see [`crate::collect`]). Groups are kept whole: `payload.type == 'internal'` means
//! nothing for a group (Openlane applies one filter to every kind, and it fails on all of
//! them); filters per record kind are a later addition.
//!
//! A filter is checked when the configuration loads: it must parse, name no variable but
//! `payload`, and give a boolean for a typical user object.

use serde_json::{json, Value};

const VARIABLE: &str = "payload";

pub struct RecordFilter {
    expression: String,
    program: cel::Program,
}

impl RecordFilter {
    /// Compiles and probes the expression, so that a typo stops aksync at startup instead of
    /// failing every run.
    pub fn compile(expression: &str) -> Result<RecordFilter, String> {
        let program =
            cel::Program::compile(expression).map_err(|error| first_line(&error.to_string()))?;
        let filter = RecordFilter {
            expression: expression.to_string(),
            program,
        };
        match filter.evaluate(&typical_user()) {
            Ok(Value::Bool(_)) => Ok(filter),
            Ok(other) => Err(format!(
                "it must give true or false, but gives {other} for a user object"
            )),
            Err(Probe::UnknownVariable(name)) => Err(format!(
                "unknown variable `{name}`: the record is `{VARIABLE}`, e.g. {VARIABLE}.type == 'internal'"
            )),
            // Other errors depend on the record (a missing attribute, say) and are judged per
            // record during a run.
            Err(Probe::Failed(_)) => Ok(filter),
        }
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn matches(&self, payload: &Value) -> Result<bool, String> {
        match self.evaluate(payload) {
            Ok(Value::Bool(keep)) => Ok(keep),
            Ok(other) => Err(format!("gave {other}, not true or false")),
            Err(Probe::UnknownVariable(name)) => Err(format!("unknown variable `{name}`")),
            Err(Probe::Failed(reason)) => Err(reason),
        }
    }

    fn evaluate(&self, payload: &Value) -> Result<Value, Probe> {
        let mut context = cel::Context::default();
        context
            .add_variable(VARIABLE, payload)
            .map_err(|error| Probe::Failed(first_line(&error.to_string())))?;
        match self.program.execute(&context) {
            Ok(cel::Value::Bool(keep)) => Ok(Value::Bool(keep)),
            Ok(other) => Ok(Value::String(format!("{other:?}"))),
            Err(cel::ExecutionError::UndeclaredReference(name)) => {
                Err(Probe::UnknownVariable(name.to_string()))
            }
            Err(error) => Err(Probe::Failed(first_line(&error.to_string()))),
        }
    }

    /// Whether the account of a raw user object is kept. A record the expression cannot be
    /// evaluated on is an error: keeping or dropping it silently would both misstate the
    /// directory.
    pub fn keeps(&self, raw_user: &Value, username: &str) -> Result<bool, String> {
        self.matches(raw_user).map_err(|reason| {
            format!(
                "the filter {:?} cannot be evaluated on user {username} ({reason}); guard optional fields with has(), e.g. has(payload.type) && payload.type == 'internal'",
                self.expression
            )
        })
    }
}

enum Probe {
    UnknownVariable(String),
    Failed(String),
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// A user object shaped as Authentik 2025.12 returns it, for probing filters.
fn typical_user() -> Value {
    json!({
        "pk": 1, "username": "jane.doe", "name": "Jane Doe", "is_active": true,
        "last_login": null, "date_joined": "2026-01-01T00:00:00Z", "is_superuser": false,
        "groups": [], "groups_obj": null, "roles": [], "roles_obj": null,
        "email": "jane.doe@example.com", "attributes": {}, "uid": "0".repeat(64),
        "path": "users", "type": "internal", "uuid": "00000000-0000-4000-8000-000000000000",
        "password_change_date": "2026-01-01T00:00:00Z", "last_updated": "2026-01-01T00:00:00Z"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_rejected_at_compile_time() {
        assert!(RecordFilter::compile("payload.type == 'internal'").is_ok());
        assert!(RecordFilter::compile("payload.attributes.department == 'it'").is_ok());
        for broken in [
            "1 +",
            "payload.type == ",
            "payload.type == 'internal",
            "paylod.type == 'internal'",
            "payload.username",
        ] {
            assert!(RecordFilter::compile(broken).is_err(), "{broken}");
        }
        let error = RecordFilter::compile("paylod.type == 'internal'")
            .err()
            .unwrap();
        assert!(error.contains("paylod"), "{error}");
    }

    #[test]
    fn accounts_are_kept_by_their_raw_object() {
        let filter = RecordFilter::compile("payload.type == 'internal'").unwrap();
        let internal = json!({"pk": 1, "username": "a", "uid": "u1", "type": "internal"});
        let external = json!({"pk": 2, "username": "b", "uid": "u2", "type": "external"});
        assert!(filter.keeps(&internal, "a").unwrap());
        assert!(!filter.keeps(&external, "b").unwrap());
    }

    #[test]
    fn a_record_the_filter_cannot_read_fails_loudly() {
        let old = json!({"pk": 1, "username": "old", "uid": "u1"});
        let error = RecordFilter::compile("payload.type == 'internal'")
            .unwrap()
            .keeps(&old, "old")
            .unwrap_err();
        assert!(error.contains("has(") && error.contains("old"), "{error}");
    }
}
