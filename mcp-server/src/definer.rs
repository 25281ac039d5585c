//! SECURITY DEFINER functions: the catalog's list of them ([`Snapshot`]) and the check that a
//! statement calls none that the binding does not allow (`spec.access.functions`,
//! `--allow-function`). Pure apart from [`SNAPSHOT_SQL`], which [`crate::tools::Tools`] runs.
//!
//! Such a function runs with its owner's rights, and PostgreSQL lets PUBLIC execute every new
//! function, so one call can read tables the binding never granted: neither the role's grants
//! nor the read-only transaction stop it, and the SQL text alone cannot tell. So the server
//! keeps a snapshot of the SECURITY DEFINER functions outside `pg_catalog` and
//! `information_schema`, and of the aggregates and operators that run one, read at start and
//! again every [`REFRESH_INTERVAL`], and refuses a statement that names one: qualified or not,
//! any overload, anywhere in the statement (subqueries, CTEs, FROM, arguments), also in
//! functional notation (`x.f` calls `f(x)`), an operator wherever its symbol appears in the
//! text. Names compare ASCII case-insensitively, a superset of what PostgreSQL could resolve
//! them to; a qualified call only matches its schema.
//!
//! Cost: nothing but a pointer read when the database has no such function (the usual case);
//! otherwise a substring search of the SQL text for each name, and only a statement whose text
//! contains one is walked.
//!
//! Not seen here: a function reached without its name in the statement (a cast, an operator
//! class's implicit operators, the body of a view or of another function), and one created
//! since the last refresh. The operator's read-only probe names every SECURITY DEFINER function
//! the role can execute however it is reached (ReadOnlyVerified=False, ReadsBeyondGrants), until
//! it is allowed or its EXECUTE revoked.

use std::ops::ControlFlow;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pgmcp_crds::config::ScopeFunction;
use sqlparser::ast::{AccessExpr, Expr, Ident, InTarget, ObjectName, ObjectNamePart};
use sqlparser::ast::{Statement, TableFactor, Visit, Visitor};

/// How often the snapshot is read again (besides at start): a SECURITY DEFINER function
/// created meanwhile can be called for at most this long.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Every SECURITY DEFINER function outside `pg_catalog` and `information_schema`, and the
/// aggregates and operators that run one: kind, schema, name (an operator's symbol), and the
/// schema and name of the SECURITY DEFINER function. Whether the server's role may execute
/// them does not matter: a call it may not make fails anyway, and a grant made later counts at
/// once.
pub const SNAPSHOT_SQL: &str = "
SELECT 'function', n.nspname::text, p.proname::text, n.nspname::text, p.proname::text
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT 'aggregate', an.nspname::text, ap.proname::text, n.nspname::text, p.proname::text
FROM pg_aggregate a JOIN pg_proc ap ON ap.oid = a.aggfnoid JOIN pg_namespace an ON an.oid = ap.pronamespace
  JOIN pg_proc p ON p.oid IN (a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn,
                              a.aggdeserialfn, a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn)
  JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT 'operator', opn.nspname::text, o.oprname::text, n.nspname::text, p.proname::text
FROM pg_operator o JOIN pg_namespace opn ON opn.oid = o.oprnamespace
  JOIN pg_proc p ON p.oid = o.oprcode JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 2, 3";

/// How a SECURITY DEFINER function is reached by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Function,
    /// An aggregate whose transition, final, combine or (de)serialization function is one.
    Aggregate,
    /// An operator whose function is one.
    Operator,
}

/// One name that reaches a SECURITY DEFINER function the binding does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub schema: String,
    /// The function's or aggregate's name, or the operator's symbol.
    pub name: String,
    /// The SECURITY DEFINER function it runs, `schema.name`.
    pub definer: String,
    /// That function's schema and name, as an allowed function names it.
    definer_schema: String,
    definer_name: String,
    /// The name as the SQL text must contain it to name it (a `"` doubled, as in a quoted
    /// identifier).
    pattern: String,
}

/// The SECURITY DEFINER functions calls are refused to, as the catalog last listed them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    entries: Vec<Entry>,
}

/// A statement names a SECURITY DEFINER function the binding does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", refusal(self))]
pub struct DefinerCall {
    /// What the statement names: the function or aggregate as written, or the operator.
    pub called: String,
    pub kind: Kind,
    /// The SECURITY DEFINER function, `schema.name`.
    pub definer: String,
}

fn refusal(call: &DefinerCall) -> String {
    let what = match call.kind {
        Kind::Function => format!("{}() is a SECURITY DEFINER function", call.called),
        Kind::Aggregate => format!(
            "aggregate {}() runs SECURITY DEFINER function {}",
            call.called, call.definer
        ),
        Kind::Operator => format!(
            "operator {} runs SECURITY DEFINER function {}",
            call.called, call.definer
        ),
    };
    format!(
        "{what}: it runs with the rights of its owner, not of this server's role, so it can read \
         tables this server may not. Only the SECURITY DEFINER functions the binding lists in \
         spec.access.functions (pgmcp-server --allow-function {}) can be called; rewrite the \
         query without it",
        call.definer
    )
}

impl Snapshot {
    /// The snapshot from [`SNAPSHOT_SQL`]'s rows. Which functions a call may call anyway is
    /// its scope's to say ([`Snapshot::check`]): caller classes allow different ones.
    pub fn new(rows: impl IntoIterator<Item = [String; 5]>) -> Self {
        let entries = rows
            .into_iter()
            .filter_map(|[kind, schema, name, definer_schema, definer_name]| {
                let kind = match kind.as_str() {
                    "function" => Kind::Function,
                    "aggregate" => Kind::Aggregate,
                    "operator" => Kind::Operator,
                    _ => return None,
                };
                Some(Entry {
                    kind,
                    pattern: name.replace('"', "\"\""),
                    schema,
                    name,
                    definer: format!("{definer_schema}.{definer_name}"),
                    definer_schema,
                    definer_name,
                })
            })
            .collect();
        Self { entries }
    }

    /// The refused functions but those `allowed`, `schema.name` each, for the log.
    pub fn definers(&self, allowed: &[ScopeFunction]) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| !e.allowed_by(allowed))
            .map(|e| e.definer.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Refuses `statement` (parsed from `sql` by the SQL guard) when it names a function,
    /// aggregate or operator that runs a SECURITY DEFINER function `allowed` does not list.
    pub fn check(
        &self,
        sql: &str,
        statement: &Statement,
        allowed: &[ScopeFunction],
    ) -> Result<(), DefinerCall> {
        if self.entries.is_empty() {
            return Ok(());
        }
        // A name the text does not contain cannot be called: most statements stop here.
        let named: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| contains_ignoring_ascii_case(sql, &e.pattern) && !e.allowed_by(allowed))
            .collect();
        if named.is_empty() {
            return Ok(());
        }
        if let Some(operator) = named.iter().find(|e| e.kind == Kind::Operator) {
            return Err(DefinerCall {
                called: operator.name.clone(),
                kind: Kind::Operator,
                definer: operator.definer.clone(),
            });
        }
        match statement.visit(&mut Calls { named: &named }) {
            ControlFlow::Break(call) => Err(call),
            ControlFlow::Continue(()) => Ok(()),
        }
    }
}

impl Entry {
    fn allowed_by(&self, allowed: &[ScopeFunction]) -> bool {
        allowed
            .iter()
            .any(|a| a.schema == self.definer_schema && a.name == self.definer_name)
    }
}

/// Whether `haystack` contains `needle`, ASCII letters of either case matching. Most positions
/// fail on their first byte, so only those are compared whole (a few instructions per byte of
/// SQL).
fn contains_ignoring_ascii_case(haystack: &str, needle: &str) -> bool {
    let (haystack, needle) = (haystack.as_bytes(), needle.as_bytes());
    let Some(first) = needle.first().map(u8::to_ascii_lowercase) else {
        return false;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    haystack[..=last_start].iter().enumerate().any(|(i, byte)| {
        byte.to_ascii_lowercase() == first
            && haystack[i..i + needle.len()].eq_ignore_ascii_case(needle)
    })
}

/// Finds the first call of a named entry.
struct Calls<'a> {
    named: &'a [&'a Entry],
}

impl Calls<'_> {
    /// A called name: `f`, `schema.f` (or `db.schema.f`); parts that are calls themselves too.
    fn name(&self, name: &ObjectName) -> ControlFlow<DefinerCall> {
        let parts: Vec<&Ident> = name
            .0
            .iter()
            .map(|part| match part {
                ObjectNamePart::Identifier(ident) => ident,
                ObjectNamePart::Function(function) => &function.name,
            })
            .collect();
        for part in &name.0 {
            if let ObjectNamePart::Function(function) = part {
                self.call(None, &function.name)?;
            }
        }
        match parts.as_slice() {
            [] => ControlFlow::Continue(()),
            [.., schema, last] if parts.len() > 1 => self.call(Some(schema), last),
            [.., last] => self.call(None, last),
        }
    }

    fn call(&self, schema: Option<&Ident>, name: &Ident) -> ControlFlow<DefinerCall> {
        let found = self.named.iter().find(|e| {
            e.kind != Kind::Operator
                && e.name.eq_ignore_ascii_case(&name.value)
                && schema.is_none_or(|s| e.schema.eq_ignore_ascii_case(&s.value))
        });
        match found {
            Some(entry) => ControlFlow::Break(DefinerCall {
                called: match schema {
                    Some(schema) => format!("{schema}.{name}"),
                    None => name.to_string(),
                },
                kind: entry.kind,
                definer: entry.definer.clone(),
            }),
            None => ControlFlow::Continue(()),
        }
    }
}

impl Visitor for Calls<'_> {
    type Break = DefinerCall;

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<DefinerCall> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.name(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<DefinerCall> {
        match expr {
            Expr::Function(function) => self.name(&function.name),
            Expr::In {
                target:
                    InTarget::Table {
                        name,
                        args: Some(_),
                    },
                ..
            } => self.name(name),
            // Functional notation: `t.f` and `(expr).f` call `f(t)` when `f` is no column.
            Expr::CompoundIdentifier(parts) => {
                for part in parts.iter().skip(1) {
                    self.call(None, part)?;
                }
                ControlFlow::Continue(())
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for access in access_chain {
                    match access {
                        AccessExpr::Dot(Expr::Identifier(ident)) => self.call(None, ident)?,
                        AccessExpr::Dot(Expr::CompoundIdentifier(parts)) => {
                            for part in parts {
                                self.call(None, part)?;
                            }
                        }
                        AccessExpr::Dot(_) | AccessExpr::Subscript(_) => {}
                    }
                }
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

/// The snapshot shared by every clone of the tools: `None` until first read.
#[derive(Debug, Clone, Default)]
pub struct Definers(Arc<RwLock<Option<Arc<Snapshot>>>>);

impl Definers {
    /// The snapshot last read, if any.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, snapshot: Arc<Snapshot>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot and the functions its checks allow.
    fn snapshot(allowed: &[ScopeFunction]) -> (Snapshot, Vec<ScopeFunction>) {
        let row = |kind: &str, schema: &str, name: &str, definer: &str| {
            [kind, schema, name, "public", definer].map(str::to_owned)
        };
        (
            Snapshot::new([
                row("function", "public", "salary_of", "salary_of"),
                row("function", "public", "key_count", "key_count"),
                row("aggregate", "public", "secret_sum", "add_secret"),
                row("operator", "public", "&&&", "add_secret"),
            ]),
            allowed.to_vec(),
        )
    }

    fn check(
        (snapshot, allowed): &(Snapshot, Vec<ScopeFunction>),
        sql: &str,
    ) -> Result<(), DefinerCall> {
        let (_, statement) = crate::sql_guard::parse_checked(sql).expect("the guard accepts it");
        snapshot.check(sql, &statement, allowed)
    }

    fn refused(sql: &str) -> String {
        match check(&snapshot(&[]), sql) {
            Err(call) => call.called,
            Ok(()) => panic!("not refused: {sql}"),
        }
    }

    #[test]
    fn calls_by_name_are_refused_wherever_they_are_and_however_written() {
        for (sql, called) in [
            ("SELECT public.salary_of(1)", "public.salary_of"),
            ("SELECT salary_of(1)", "salary_of"),
            ("SELECT SALARY_OF(1)", "SALARY_OF"),
            ("SELECT \"salary_of\"(1)", "\"salary_of\""),
            (
                "SELECT \"public\".\"salary_of\"(1)",
                "\"public\".\"salary_of\"",
            ),
            (
                "SELECT * FROM orders WHERE id IN (SELECT salary_of(id) FROM orders)",
                "salary_of",
            ),
            (
                "WITH s AS (SELECT salary_of(1) AS x) SELECT x FROM s",
                "salary_of",
            ),
            ("SELECT * FROM salary_of(1)", "salary_of"),
            (
                "SELECT * FROM orders o, LATERAL salary_of(o.id) s",
                "salary_of",
            ),
            (
                "SELECT coalesce(max(salary_of(id)), 0) FROM orders",
                "salary_of",
            ),
            ("SELECT o.salary_of FROM orders o", "salary_of"),
            ("SELECT (o.id).key_count FROM orders o", "key_count"),
            ("SELECT secret_sum(id) FROM orders", "secret_sum"),
            ("EXPLAIN SELECT salary_of(1)", "salary_of"),
            ("SELECT 1 &&& 2", "&&&"),
        ] {
            assert_eq!(refused(sql), called, "{sql}");
        }
    }

    #[test]
    fn other_schemas_names_in_strings_and_ordinary_queries_pass() {
        let s = snapshot(&[]);
        for sql in [
            "SELECT * FROM orders WHERE id = $1",
            "SELECT count(*), lower(name) FROM customers GROUP BY 2",
            "SELECT reporting.salary_of(1)",
            "SELECT 'salary_of(1)'",
            "SELECT salary_of FROM orders",
            "SELECT 1 = 1",
        ] {
            assert_eq!(check(&s, sql), Ok(()), "{sql}");
        }
        assert_eq!(
            check(&(Snapshot::default(), vec![]), "SELECT salary_of(1)"),
            Ok(())
        );
    }

    #[test]
    fn a_listed_function_is_allowed_with_the_aggregates_and_operators_that_run_it() {
        let allowed = [
            ScopeFunction {
                schema: "public".into(),
                name: "salary_of".into(),
            },
            ScopeFunction {
                schema: "public".into(),
                name: "add_secret".into(),
            },
        ];
        let s = snapshot(&allowed);
        for sql in [
            "SELECT salary_of(1)",
            "SELECT secret_sum(id) FROM orders",
            "SELECT 1 &&& 2",
        ] {
            assert_eq!(check(&s, sql), Ok(()), "{sql}");
        }
        assert!(check(&s, "SELECT key_count()").is_err());
        assert_eq!(s.0.definers(&s.1), ["public.key_count"]);
    }

    #[test]
    fn names_are_found_in_the_text_whatever_the_case_of_their_ascii_letters() {
        assert!(contains_ignoring_ascii_case(
            "SELECT Key_Count()",
            "key_count"
        ));
        assert!(contains_ignoring_ascii_case("key_count", "KEY_COUNT"));
        assert!(contains_ignoring_ascii_case("x\"é\"\"q\"", "é\"\"q"));
        assert!(!contains_ignoring_ascii_case(
            "SELECT key_coun",
            "key_count"
        ));
        assert!(!contains_ignoring_ascii_case("SELECT 1", ""));
        assert!(!contains_ignoring_ascii_case("", "k"));
    }

    #[test]
    fn the_refusal_names_the_function_and_the_field_that_would_allow_it() {
        let err = check(&snapshot(&[]), "SELECT salary_of(1)").unwrap_err();
        assert_eq!(
            err.to_string(),
            "salary_of() is a SECURITY DEFINER function: it runs with the rights of its owner, \
             not of this server's role, so it can read tables this server may not. Only the \
             SECURITY DEFINER functions the binding lists in spec.access.functions \
             (pgmcp-server --allow-function public.salary_of) can be called; rewrite the query \
             without it"
        );
        let err = check(&snapshot(&[]), "SELECT secret_sum(id) FROM orders").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "aggregate secret_sum() runs SECURITY DEFINER function public.add_secret:"
            ),
            "{err}"
        );
    }
}
