//! Layer three of the read-only defence (docs/architecture.md): decides whether one SQL text is a
//! single read-only statement, and fingerprints SQL for audit logs. Pure: no database, no I/O.
//!
//! It is one of three layers (the role has SELECT only; every query runs in a `READ ONLY`
//! transaction through the extended protocol), so where PostgreSQL and sqlparser might disagree
//! it refuses. What it does, in order:
//! 1. bounds the input (length, NUL bytes) and tokenises it with sqlparser's PostgreSQL tokenizer,
//!    which understands comments (nested), quoted identifiers, `E''` and dollar-quoted strings, so
//!    a `;` inside any of those is not a statement separator;
//! 2. counts statements on the token stream (split on `;`) and refuses more than one;
//! 3. refuses token-level tricks the parser would read differently from PostgreSQL (`U&"…"`
//!    identifiers, full-width punctuation) and inputs whose syntax tree would be too deep;
//! 4. parses the one statement and accepts only SELECT / WITH … SELECT / VALUES / TABLE /
//!    EXPLAIN <one of those> / SHOW <setting>;
//! 5. walks the whole syntax tree (iteratively, so deep trees cannot overflow the stack) refusing
//!    data-modifying CTEs, `SELECT … INTO`, row-locking clauses and calls of denied functions
//!    (`deny::DENIED_FUNCTIONS`, `deny::DENIED_PREFIXES`).
//!
//! The walk in step 5 is written out by hand: it keeps its own stack (sqlparser's derived
//! visitor recurses), its `match`es over expressions, set expressions, table factors, joins and
//! function arguments have no catch-all arm, and `Query`, `Select`, `Function` and the table
//! factors are destructured field by field, so a sqlparser upgrade that adds syntax fails to
//! compile here instead of being skipped.
//! A second pass with sqlparser's derived `Visitor` (feature `visitor`), which reaches every node
//! by construction, re-checks function names, nested statements and locking clauses.
//!
//! Like PostgreSQL since 9.1, the tokenizer reads `'…\'` as a complete string
//! (`standard_conforming_strings = on`); the database layer must not turn that setting off.
//!
//! One file per step: `tokens.rs` (1–3), `classify.rs` (4), `walk.rs` and `backstop.rs` (5);
//! the deny list is in `deny.rs`, the refusals in `error.rs`, the audit [`fingerprint`] in
//! `fingerprint.rs`, and the corpus tests of the whole guard in `tests.rs`.

mod backstop;
mod classify;
mod deny;
mod error;
mod fingerprint;
mod tokens;
mod walk;

#[cfg(test)]
mod tests;

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::tokenizer::TokenWithSpan;

pub use error::{GuardError, METRIC_LABELS};
pub use fingerprint::{fingerprint, fingerprint_redacted, redact};

use backstop::backstop;
use classify::{classify, parse_statement};
use fingerprint::normalize_tokens;
use tokens::{statement_tokens, tokenize};

/// Longest SQL text the guard looks at; longer input is refused without parsing.
pub const MAX_SQL_BYTES: usize = 100_000;

/// What kind of statement passed the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// `SELECT …`, `WITH … SELECT …` or a set operation (`UNION`, `INTERSECT`, `EXCEPT`).
    Select,
    /// `VALUES (…), (…)`.
    Values,
    /// `TABLE name`.
    Table,
    /// `EXPLAIN [ANALYZE] [(options)] <Select | Values | Table>`.
    Explain,
    /// `SHOW <setting>` or `SHOW ALL`.
    Show,
}

/// Parses `sql` and accepts exactly one read-only statement.
pub fn check(sql: &str) -> Result<StatementKind, GuardError> {
    parse_checked(sql).map(|(kind, _)| kind)
}

/// [`check`], also returning the statement it accepted, so that callers inspecting it further
/// (the scope check) look at exactly what was checked instead of parsing again. A leading
/// `TABLE name`, which sqlparser cannot parse as a statement, comes back as
/// `SELECT * FROM name` (PostgreSQL's definition of it); `TABLE name` inside a query (after
/// `UNION`, in a subquery or CTE) stays a `SetExpr::Table`.
pub fn parse_checked(sql: &str) -> Result<(StatementKind, Statement), GuardError> {
    parse_tokens(tokenize(sql)?)
}

/// The guard's verdict on one SQL text together with its [`redact`]ed text, from one
/// tokenization: what the `query` tool checks and the audit log records.
#[derive(Debug)]
pub struct Inspection {
    /// The statement without literals and comments ([`redact`]).
    pub redacted: String,
    /// The statement is boxed: sqlparser's `Statement` is kilobytes, and moves with the call.
    pub verdict: Result<(StatementKind, Box<Statement>), GuardError>,
}

/// [`parse_checked`] and [`redact`] at once.
pub fn inspect(sql: &str) -> Inspection {
    match tokenize(sql) {
        Ok(tokens) => Inspection {
            redacted: normalize_tokens(tokens.iter().map(|t| &t.token)),
            verdict: parse_tokens(tokens).map(|(kind, statement)| (kind, Box::new(statement))),
        },
        Err(error) => Inspection {
            redacted: redact(sql),
            verdict: Err(error),
        },
    }
}

fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<(StatementKind, Statement), GuardError> {
    let tokens = statement_tokens(tokens)?;
    let (statement, leading_table) = parse_statement(&tokens)?;
    let kind = classify(&statement, &tokens)?;
    backstop(&statement)?;
    let kind = match &statement {
        Statement::Query(query) if leading_table && matches!(*query.body, SetExpr::Select(_)) => {
            StatementKind::Table
        }
        _ => kind,
    };
    Ok((kind, statement))
}

/// Like [`check`] but for the `explain` tool: accepts only what `check` accepts as
/// [`StatementKind::Select`], [`StatementKind::Values`] or [`StatementKind::Table`].
pub fn check_explainable(sql: &str) -> Result<(), GuardError> {
    match check(sql)? {
        StatementKind::Select | StatementKind::Values | StatementKind::Table => Ok(()),
        StatementKind::Explain => Err(GuardError::NotExplainable {
            statement: "EXPLAIN".to_owned(),
        }),
        StatementKind::Show => Err(GuardError::NotExplainable {
            statement: "SHOW".to_owned(),
        }),
    }
}
