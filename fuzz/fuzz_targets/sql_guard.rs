//! The SQL guard on arbitrary text: it never panics (a stack of 2 MiB, as on a tokio worker), and
//! what it accepts is one read-only statement: re-tokenised, the text has one statement; the
//! syntax tree it returns holds no statement but a query, EXPLAIN of a query or SHOW, no
//! INSERT/UPDATE/DELETE/MERGE body, no `SELECT … INTO`, no locking clause and no call of a
//! function with side effects; and `check_explainable` agrees with the kind.
#![no_main]

use std::ops::ControlFlow;

use libfuzzer_sys::fuzz_target;
use pgmcp_server::sql_guard::{self, StatementKind};
use sqlparser::ast::{Expr, Query, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

/// Calls that change state a READ ONLY transaction does not protect, or leave the database.
const SIDE_EFFECTS: &[&str] = &[
    "set_config",
    "nextval",
    "setval",
    "pg_notify",
    "pg_advisory_lock",
    "pg_advisory_xact_lock",
    "pg_try_advisory_lock",
    "lo_import",
    "lo_export",
    "lo_create",
    "lo_unlink",
    "lo_put",
    "dblink",
    "dblink_exec",
    "pg_sleep",
    "pg_read_file",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "query_to_xml",
    "txid_current",
];

struct NoWrites(Vec<String>);

impl Visitor for NoWrites {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if !matches!(
            statement,
            Statement::Query(_) | Statement::Explain { .. } | Statement::ShowVariable { .. }
        ) {
            self.0.push(format!("statement {statement}"));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if !query.locks.is_empty() {
            self.0.push("locking clause".to_owned());
        }
        let mut bodies = vec![query.body.as_ref()];
        while let Some(body) = bodies.pop() {
            match body {
                SetExpr::Insert(_)
                | SetExpr::Update(_)
                | SetExpr::Delete(_)
                | SetExpr::Merge(_) => {
                    self.0.push(format!("data-modifying body {body}"));
                }
                SetExpr::Select(select) if select.into.is_some() => {
                    self.0.push("SELECT INTO".to_owned());
                }
                SetExpr::SetOperation { left, right, .. } => {
                    bodies.push(left);
                    bodies.push(right);
                }
                _ => {}
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr
            && let Some(last) = function.name.0.last()
        {
            let name = last.to_string().trim_matches('"').to_lowercase();
            if SIDE_EFFECTS.contains(&name.as_str()) {
                self.0.push(format!("call of {name}"));
            }
        }
        ControlFlow::Continue(())
    }
}

fn check(sql: &str) {
    let Ok((kind, statement)) = sql_guard::parse_checked(sql) else {
        return;
    };
    // One statement: no `;` outside strings and comments separates two non-empty parts.
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize()
        .expect("accepted text tokenises");
    let statements = tokens
        .split(|t| *t == Token::SemiColon)
        .filter(|part| {
            part.iter()
                .any(|t| !matches!(t, Token::Whitespace(_) | Token::EOF))
        })
        .count();
    assert_eq!(statements, 1, "accepted {sql:?} as one statement");

    let mut visitor = NoWrites(Vec::new());
    let _ = statement.visit(&mut visitor);
    assert!(visitor.0.is_empty(), "accepted {sql:?}: {:?}", visitor.0);

    // The printed tree is not checked again: sqlparser does not print every literal back as
    // written (a string holding `\'` loses its doubled quote, `U&'\0041'` comes out as
    // `U&'A'`; found by this target), which is harmless only because the server runs the text
    // it was sent, never the printed tree.
    if matches!(
        kind,
        StatementKind::Select | StatementKind::Values | StatementKind::Table
    ) {
        assert_eq!(sql_guard::check_explainable(sql), Ok(()));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let sql = sql.to_owned();
    // The server runs the guard on tokio worker threads (2 MiB stacks).
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(move || {
            let _ = sql_guard::fingerprint(&sql);
            check(&sql);
        })
        .expect("spawn")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
});
