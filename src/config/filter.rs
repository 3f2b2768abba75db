//! The CEL filters of a source: `filter` over each account's raw Authentik object and
//! `group_filter` over each group's, as `payload.<field>`. A filter does not drop records: it
//! says which are in the source's **scope** (see [`crate::run::collect`]); a membership is in
//! scope when its account and its group are. One filter per record kind, because
//! `payload.type == 'internal'` means nothing for a group (Openlane applies one filter to every
//! kind, and it fails on all of them). The `strings` extension is on, so `lowerAscii()`,
//! `trim()`, `split()` and the like work beside the standard `startsWith()` and `contains()`.
//!
//! A filter is checked when the configuration loads: it must parse, name no variable but
//! `payload`, and give a boolean for a typical object of its kind.
//!
//! Both parsing and evaluating recurse with the expression's shape: a chain of 30,000 `+`
//! recurses 30,000 frames deep and overflows any usual stack, which aborts the process. So
//! a filter is bounded before anything runs it, the same way for `aksync check`, every run and
//! a daemon's reload: at most [`MAX_FILTER_BYTES`] long, parsed on a thread of its own whose
//! stack holds the deepest parse that length allows, and at most [`MAX_FILTER_DEPTH`] levels
//! deep, so that evaluating it needs little stack on whatever thread collects the records.

use std::sync::{Arc, OnceLock};

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

/// Which records a filter is evaluated on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterTarget {
    Users,
    Groups,
}

impl FilterTarget {
    /// The configuration key of the filter.
    pub fn key(self) -> &'static str {
        match self {
            FilterTarget::Users => "filter",
            FilterTarget::Groups => "group_filter",
        }
    }

    fn record(self) -> &'static str {
        match self {
            FilterTarget::Users => "user",
            FilterTarget::Groups => "group",
        }
    }

    /// An object shaped as Authentik 2025.12 returns it, for probing filters.
    fn typical(self) -> Value {
        match self {
            FilterTarget::Users => json!({
                "pk": 1, "username": "jane.doe", "name": "Jane Doe", "is_active": true,
                "last_login": null, "date_joined": "2026-01-01T00:00:00Z", "is_superuser": false,
                "groups": [], "groups_obj": null, "roles": [], "roles_obj": null,
                "email": "jane.doe@example.com", "attributes": {}, "uid": "0".repeat(64),
                "path": "users", "type": "internal", "uuid": "00000000-0000-4000-8000-000000000000",
                "password_change_date": "2026-01-01T00:00:00Z", "last_updated": "2026-01-01T00:00:00Z"
            }),
            FilterTarget::Groups => json!({
                "pk": "00000000-0000-4000-8000-000000000000", "num_pk": 1, "name": "Engineering",
                "is_superuser": false, "parent": null, "parents": [], "parent_name": null,
                "users": [], "users_obj": null, "attributes": {}, "roles": [], "roles_obj": null,
                "children": []
            }),
        }
    }
}

/// What a run does with a record its filter cannot judge (a runtime error, or a result that is
/// not a boolean): the source's `on_filter_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFilterError {
    /// The run fails, naming the record and the expression.
    #[default]
    Fail,
    /// The record is out of scope; the run counts it.
    Exclude,
    /// The record is in scope; the run counts it.
    Include,
}

/// The standard library with the `strings` extension, built once.
fn environment() -> Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        env.add_extension(cel::extensions::strings)
            .expect("the strings extension declares no name twice");
        Arc::new(env)
    })
    .clone()
}

/// A source's filters, compiled for a run: which accounts and groups are in its scope.
pub struct ScopeRules {
    users: Option<RecordFilter>,
    groups: Option<RecordFilter>,
    on_error: OnFilterError,
}

/// How a filter judged one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    InScope,
    OutOfScope,
    /// The filter could not judge it, and `on_filter_error` put it in or out of scope.
    ErrorIncluded,
    ErrorExcluded,
}

impl Judged {
    pub fn in_scope(self) -> bool {
        matches!(self, Judged::InScope | Judged::ErrorIncluded)
    }
}

impl ScopeRules {
    /// Compiles the source's `filter` and `group_filter`.
    pub fn of(source: &crate::config::SourceConfig) -> Result<ScopeRules, String> {
        let compile = |expression: &Option<String>, target: FilterTarget| {
            expression
                .as_deref()
                .map(|expression| {
                    RecordFilter::compile(expression, target).map_err(|reason| {
                        format!("`sources.{}.{}`: {reason}", source.name, target.key())
                    })
                })
                .transpose()
        };
        Ok(ScopeRules {
            users: compile(&source.filter, FilterTarget::Users)?,
            groups: compile(&source.group_filter, FilterTarget::Groups)?,
            on_error: source.on_filter_error,
        })
    }

    /// Judges a raw object of `target`'s kind, named `name` in messages. Without a filter
    /// everything is in scope; an error fails the run only under `on_filter_error = "fail"`.
    pub fn judge(&self, target: FilterTarget, raw: &Value, name: &str) -> Result<Judged, String> {
        let filter = match target {
            FilterTarget::Users => &self.users,
            FilterTarget::Groups => &self.groups,
        };
        let Some(filter) = filter else {
            return Ok(Judged::InScope);
        };
        match (filter.keeps(raw, name), self.on_error) {
            (Ok(true), _) => Ok(Judged::InScope),
            (Ok(false), _) => Ok(Judged::OutOfScope),
            (Err(error), OnFilterError::Fail) => Err(error),
            (Err(_), OnFilterError::Include) => Ok(Judged::ErrorIncluded),
            (Err(_), OnFilterError::Exclude) => Ok(Judged::ErrorExcluded),
        }
    }
}

pub struct RecordFilter {
    expression: String,
    program: cel::Program,
    target: FilterTarget,
}

impl RecordFilter {
    /// Checks the expression's size, then parses, bounds and probes it on a thread with room
    /// for the parse, so that a typo or a runaway expression stops aksync at startup (or is a
    /// rejected reload) instead of failing or crashing every run.
    pub fn compile(expression: &str, target: FilterTarget) -> Result<RecordFilter, String> {
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
                .spawn_scoped(scope, || RecordFilter::parse(expression, target))
                .map_err(|error| format!("cannot start a thread to check it: {error}"))?
                .join()
                .unwrap_or_else(|_| Err("the CEL parser failed on it".into()))
        })
    }

    /// Parses, bounds and probes; the caller gives the stack the parse may need. A program
    /// too deep to keep is dropped here too, since dropping it recurses as deep as parsing.
    fn parse(expression: &str, target: FilterTarget) -> Result<RecordFilter, String> {
        let program = environment()
            .compile(expression)
            .map_err(|error| first_line(&error.to_string()))?;
        let depth = tree_depth(program.expression());
        if depth > MAX_FILTER_DEPTH {
            return Err(format!(
                "it nests {depth} levels deep, more than the {MAX_FILTER_DEPTH} accepted: split long chains such as a + b + c + … with parentheses, or test many values with `{VARIABLE}.pk in [1, 2, 3]`"
            ));
        }
        let filter = RecordFilter {
            expression: expression.to_string(),
            program,
            target,
        };
        match filter.evaluate(&target.typical()) {
            Ok(Value::Bool(_)) => Ok(filter),
            Ok(other) => Err(format!(
                "it must give true or false, but gives {other} for a {} object",
                target.record()
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
        let mut context = cel::Context::with_env(environment());
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

    /// Whether a raw object (the user or group `name`d) is in scope. A record the expression
    /// cannot be evaluated on is an error that names the record and the expression: the
    /// source's `on_filter_error` decides what the run makes of it.
    pub fn keeps(&self, raw: &Value, name: &str) -> Result<bool, String> {
        self.matches(raw).map_err(|reason| {
            format!(
                "the {} {:?} cannot be evaluated on {} {} ({reason}); guard optional fields with has(), e.g. has(payload.type) && payload.type == 'internal', or set on_filter_error",
                self.target.key(),
                crate::display::truncate(&self.expression, 80),
                self.target.record(),
                crate::display::quote(name, 100),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_rejected_at_compile_time() {
        assert!(RecordFilter::compile("payload.type == 'internal'", FilterTarget::Users).is_ok());
        assert!(RecordFilter::compile(
            "payload.attributes.department == 'it'",
            FilterTarget::Users
        )
        .is_ok());
        for broken in [
            "1 +",
            "payload.type == ",
            "payload.type == 'internal",
            "paylod.type == 'internal'",
            "payload.username",
        ] {
            assert!(
                RecordFilter::compile(broken, FilterTarget::Users).is_err(),
                "{broken}"
            );
        }
        let error = RecordFilter::compile("paylod.type == 'internal'", FilterTarget::Users)
            .err()
            .unwrap();
        assert!(error.contains("paylod"), "{error}");
    }

    #[test]
    fn accounts_are_kept_by_their_raw_object() {
        let filter =
            RecordFilter::compile("payload.type == 'internal'", FilterTarget::Users).unwrap();
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
            let error = RecordFilter::compile(&expression, FilterTarget::Users)
                .err()
                .unwrap();
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
            let filter = RecordFilter::compile(expression, FilterTarget::Users).unwrap();
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
        let error = RecordFilter::compile("payload.type == 'internal'", FilterTarget::Users)
            .unwrap()
            .keeps(&old, "old")
            .unwrap_err();
        assert!(error.contains("has(") && error.contains("old"), "{error}");
    }

    /// Pieces of CEL besides the payload's keys, so that arbitrary expressions often parse and
    /// reach evaluation: operators, functions and the literals at the edges of their types.
    const CEL_PIECES: &[&str] = &[
        "payload",
        ".",
        "==",
        "!=",
        "<",
        ">=",
        "&&",
        "||",
        "!",
        "+",
        "-",
        "*",
        "/",
        "%",
        "(",
        ")",
        "[",
        "]",
        "{",
        "}",
        ":",
        ",",
        "?",
        " in ",
        "size(",
        ".startsWith(",
        ".contains(",
        ".lowerAscii()",
        ".trim()",
        ".split(",
        ".matches(",
        "has(",
        "int(",
        "uint(",
        "double(",
        "string(",
        "timestamp(",
        "duration(",
        ".exists(x, ",
        ".all(x, ",
        ".map(x, ",
        ".filter(x, ",
        "x",
        "'x'",
        "\"y\"",
        "b'z'",
        "1",
        "0",
        "-1",
        "2u",
        "1.5",
        "1e308",
        "true",
        "null",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615u",
        " ",
    ];
    const PAYLOAD_KEYS: &[&str] = &[
        "name",
        "attributes",
        "pk",
        "type",
        "groups",
        "users",
        "is_active",
        "x",
    ];

    fn arbitrary_expression() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Comparisons of payload fields, literals and arithmetic on them: most compile, so
        // evaluation meets every kind of payload value (and overflow, division by zero).
        let operand = prop_oneof![
            proptest::sample::select(PAYLOAD_KEYS).prop_map(|key| format!("{VARIABLE}.{key}")),
            proptest::sample::select(CEL_LITERALS).prop_map(str::to_string),
        ];
        let term = (
            operand.clone(),
            proptest::sample::select(&["+", "-", "*", "/", "%"][..]),
            operand.clone(),
        )
            .prop_map(|(left, op, right)| format!("({left} {op} {right})"));
        let comparison = (
            prop_oneof![operand.clone(), term.clone()],
            proptest::sample::select(&["==", "!=", "<", ">=", " in "][..]),
            prop_oneof![operand, term],
        )
            .prop_map(|(left, op, right)| format!("{left} {op} {right}"));
        let structured = proptest::collection::vec(comparison, 1..4)
            .prop_map(|comparisons| comparisons.join(" || "));
        prop_oneof![
            4 => structured,
            4 => proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(CEL_PIECES),
                    proptest::sample::select(PAYLOAD_KEYS),
                ],
                1..16
            )
            .prop_map(|pieces| pieces.concat()),
            1 => any::<String>(),
        ]
    }

    const CEL_LITERALS: &[&str] = &[
        "'x'",
        "1",
        "0",
        "-1",
        "2u",
        "0u",
        "1.5",
        "0.0",
        "true",
        "null",
        "[]",
        "{}",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551615u",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any expression compiles or is refused, and one that compiles judges any payload
        /// or gives an error: never a panic, which would end a run or the daemon.
        #[test]
        fn arbitrary_filters_and_payloads_never_panic(
            expression in arbitrary_expression(),
            payloads in proptest::collection::vec(
                crate::testing::arbitrary_object(PAYLOAD_KEYS),
                1..4,
            ),
        ) {
            for target in [FilterTarget::Users, FilterTarget::Groups] {
                if let Ok(filter) = RecordFilter::compile(&expression, target) {
                    for payload in &payloads {
                        let _ = filter.keeps(payload, "someone");
                    }
                }
            }
        }
    }
}
