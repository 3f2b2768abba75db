//! The CEL filter of a source: an expression over each account's raw Authentik object, as
//! `payload.<field>`, that keeps the accounts for which it is true. Memberships of accounts it
//! drops are dropped too (see [`crate::run::collect`]). Groups are kept whole:
//! `payload.type == 'internal'` means nothing for a group (Openlane applies one filter to every
//! kind, and it fails on all of them); filters per record kind are a later addition.
//!
//! A filter is checked when the configuration loads: it must parse, name no variable but
//! `payload`, and give a boolean for a typical user object.
//!
//! Both parsing and evaluating recurse with the expression's shape: a chain of 30,000 `+`
//! recurses 30,000 frames deep and overflows any usual stack, which aborts the process. So
//! a filter is bounded before anything runs it, the same way for `aksync check`, every run and
//! a daemon's reload: at most [`MAX_FILTER_BYTES`] long, parsed on a thread of its own whose
//! stack holds the deepest parse that length allows, and at most [`MAX_FILTER_DEPTH`] levels
//! deep, so that evaluating it needs little stack on whatever thread collects the records.

use serde_json::{json, Value};

const VARIABLE: &str = "payload";
/// The longest filter accepted. Real filters are a few hundred bytes; a list of many values is
/// `payload.pk in [1, 2, …]`, a few bytes per value.
pub const MAX_FILTER_BYTES: usize = 16 * 1024;
/// The deepest expression tree accepted. `a || b || …` is balanced by the parser (2,000 terms
/// are 11 levels); what nests deeper is a chain such as `a + b + c + …`.
pub const MAX_FILTER_DEPTH: usize = 100;
/// The stack of the thread that parses a filter: a chain as long as [`MAX_FILTER_BYTES`]
/// allows needs about 12 MiB in a debug build. Only the pages it touches are ever mapped.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

pub struct RecordFilter {
    expression: String,
    program: cel::Program,
}

impl RecordFilter {
    /// Checks the expression's size, then parses, bounds and probes it on a thread with room
    /// for the parse, so that a typo or a runaway expression stops aksync at startup (or is a
    /// rejected reload) instead of failing or crashing every run.
    pub fn compile(expression: &str) -> Result<RecordFilter, String> {
        if expression.len() > MAX_FILTER_BYTES {
            return Err(format!(
                "it is {} bytes long, more than the {MAX_FILTER_BYTES} accepted: shorten it, e.g. test many values with `{VARIABLE}.pk in [1, 2, 3]`",
                expression.len()
            ));
        }
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("filter-parse".into())
                .stack_size(PARSE_STACK_BYTES)
                .spawn_scoped(scope, || RecordFilter::parse(expression))
                .map_err(|error| format!("cannot start a thread to check it: {error}"))?
                .join()
                .unwrap_or_else(|_| Err("the CEL parser failed on it".into()))
        })
    }

    /// Parses, bounds and probes; the caller gives the stack the parse may need. A program
    /// too deep to keep is dropped here too, since dropping it recurses as deep as parsing.
    fn parse(expression: &str) -> Result<RecordFilter, String> {
        let program =
            cel::Program::compile(expression).map_err(|error| first_line(&error.to_string()))?;
        let depth = tree_depth(program.expression());
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "it nests {depth} levels deep, more than the {MAX_FILTER_DEPTH} accepted: split long chains such as a + b + c + … with parentheses, or test many values with `{VARIABLE}.pk in [1, 2, 3]`"
            ));
        }
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
                crate::display::truncate(&self.expression, 80)
            )
        })
    }
}

enum Probe {
    UnknownVariable(String),
    Failed(String),
}

/// How many levels the expression tree has, counted without recursion: the tree may be far
/// deeper than any stack allows.
fn tree_depth(root: &cel::IdedExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(root, 1)];
    while let Some((node, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        pending.extend(children(node).into_iter().map(|child| (child, depth + 1)));
    }
    deepest
}

/// The subexpressions of one node.
fn children(node: &cel::IdedExpr) -> Vec<&cel::IdedExpr> {
    use cel::common::ast::{EntryExpr, Expr, IdedEntryExpr};
    fn entry(entry: &IdedEntryExpr) -> Vec<&cel::IdedExpr> {
        match &entry.expr {
            EntryExpr::MapEntry(entry) => vec![&entry.key, &entry.value],
            EntryExpr::StructField(field) => vec![&field.value],
        }
    }
    match &node.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => Vec::new(),
        Expr::Call(call) => call
            .target
            .as_deref()
            .into_iter()
            .chain(&call.args)
            .collect(),
        Expr::Comprehension(comprehension) => vec![
            &comprehension.iter_range,
            &comprehension.accu_init,
            &comprehension.loop_cond,
            &comprehension.loop_step,
            &comprehension.result,
        ],
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Select(select) => vec![&select.operand],
        Expr::Map(map) => map.entries.iter().flat_map(entry).collect(),
        Expr::Struct(fields) => fields.entries.iter().flat_map(entry).collect(),
    }
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

    /// `payload.pk == 0 || payload.pk == 1 || …`
    fn terms(count: usize) -> String {
        (0..count)
            .map(|pk| format!("payload.pk == {pk}"))
            .collect::<Vec<_>>()
            .join(" || ")
    }

    #[test]
    fn runaway_expressions_are_refused_before_they_can_exhaust_the_stack() {
        // Each is rejected with a reason, on the test thread's ordinary stack; none aborts.
        let chain = |op: &str, count: usize| format!("payload.pk{}", op.repeat(count));
        let longest_chain = chain("*1", (MAX_FILTER_BYTES - 20) / 2);
        for (expression, reason) in [
            (terms(2_000), "bytes long"),
            (terms(50_000), "bytes long"),
            (
                format!("{}true{}", "(".repeat(200_000), ")".repeat(200_000)),
                "bytes long",
            ),
            (longest_chain.clone() + " > 0", "nests"),
            (chain(".a", 3_000), "nests"),
            (chain("[0]", 3_000), "nests"),
            (
                format!("{}true{}", "(".repeat(5_000), ")".repeat(5_000)),
                "Recursion limit",
            ),
        ] {
            let error = RecordFilter::compile(&expression).err().unwrap();
            assert!(error.contains(reason), "{reason}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        assert!(longest_chain.len() <= MAX_FILTER_BYTES);
    }

    #[test]
    fn what_compiles_evaluates_on_a_small_stack() {
        let deepest = format!("{} > 0", vec!["1"; MAX_FILTER_DEPTH - 2].join(" + "));
        let cases = [terms(500), deepest];
        for expression in &cases {
            let filter = RecordFilter::compile(expression).unwrap();
            // A quarter of the 2 MiB that tokio gives the thread collecting the records.
            let kept = std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || filter.keeps(&json!({"pk": 499, "username": "u"}), "u"))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(kept, Ok(true));
        }
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
