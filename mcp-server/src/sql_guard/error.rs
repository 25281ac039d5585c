//! Why the guard refuses: [`GuardError`], its sentences for the model and its metric labels.
//! Messages quote at most a short excerpt of the input.

use std::borrow::Cow;

use super::deny::{Denial, denied_function};

/// Longest excerpt of user input or parser message quoted back in an error.
const MAX_EXCERPT_CHARS: usize = 80;

/// The statements the guard accepts, for messages.
const ALLOWED: &str = "SELECT, WITH … SELECT, VALUES, TABLE, EXPLAIN, SHOW";

/// Why the guard refused a statement. `Display` is a sentence an AI model can act on: what was
/// refused and what to do instead. It never quotes more than a short excerpt of the input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// The input is longer than [`MAX_SQL_BYTES`](super::MAX_SQL_BYTES); it was not parsed.
    #[error(
        "the query is longer than {max} bytes and was not checked; shorten it (aggregate in SQL \
         instead of listing many literal values)"
    )]
    TooLong { max: usize },
    /// Nothing but whitespace, comments and semicolons.
    #[error(
        "the query is empty (or only comments); send one read-only statement ({ALLOWED}), \
         e.g. SELECT 1"
    )]
    Empty,
    /// Not parseable (or PostgreSQL would not accept it); the text says why and what to do.
    #[error("the query could not be parsed: {0}")]
    Syntax(String),
    /// Nested deeper than the parser's limit, or too many operators to check safely.
    #[error(
        "the query is nested too deeply or has too many operators to be checked; simplify it \
         (e.g. `col = ANY(ARRAY[…])` or `col IN (…)` instead of long OR chains, fewer nested \
         parentheses and subqueries)"
    )]
    TooComplex,
    /// More than one statement (the count).
    #[error(
        "the request contains {0} statements, but only one read-only statement ({ALLOWED}) is \
         allowed; split the request into separate query calls"
    )]
    MultipleStatements(usize),
    /// A statement other than SELECT / VALUES / TABLE / EXPLAIN / SHOW.
    #[error("{}", not_read_only_message(statement))]
    NotReadOnly {
        /// Upper-case keyword of the refused statement, e.g. `INSERT`, `COPY`, `SET`.
        statement: String,
    },
    /// A CTE whose body is INSERT, UPDATE, DELETE or MERGE.
    #[error(
        "a WITH clause contains INSERT, UPDATE, DELETE or MERGE; this server is read-only: use \
         only read-only CTEs such as WITH name AS (SELECT …) SELECT …"
    )]
    DataModifyingCte,
    /// A call of a function on the deny list.
    #[error("{}", forbidden_function_message(.0))]
    ForbiddenFunction(
        /// Lower-case last part of the function name, e.g. `pg_read_file`.
        String,
    ),
    /// `SELECT … INTO`, a row-locking clause or a `U&"…"` identifier.
    #[error("{}", forbidden_clause_message(.0))]
    ForbiddenClause(
        /// The refused clause, e.g. `SELECT INTO`, `FOR UPDATE`.
        String,
    ),
    /// `check_explainable` got EXPLAIN or SHOW.
    #[error("{}", not_explainable_message(statement))]
    NotExplainable {
        /// `EXPLAIN` or `SHOW`.
        statement: String,
    },
}

/// Every value [`GuardError::metric_label`] can return.
pub const METRIC_LABELS: &[&str] = &[
    "too_long",
    "empty",
    "syntax",
    "too_complex",
    "multiple_statements",
    "not_read_only",
    "data_modifying_cte",
    "forbidden_function",
    "forbidden_clause",
    "not_explainable",
];

impl GuardError {
    /// Bounded label for metrics; one of [`METRIC_LABELS`].
    pub fn metric_label(&self) -> &'static str {
        match self {
            GuardError::TooLong { .. } => "too_long",
            GuardError::Empty => "empty",
            GuardError::Syntax(_) => "syntax",
            GuardError::TooComplex => "too_complex",
            GuardError::MultipleStatements(_) => "multiple_statements",
            GuardError::NotReadOnly { .. } => "not_read_only",
            GuardError::DataModifyingCte => "data_modifying_cte",
            GuardError::ForbiddenFunction(_) => "forbidden_function",
            GuardError::ForbiddenClause(_) => "forbidden_clause",
            GuardError::NotExplainable { .. } => "not_explainable",
        }
    }
}

fn not_read_only_message(statement: &str) -> String {
    match statement {
        "SET" | "RESET" => format!(
            "{statement} is not allowed: session settings are fixed by the server (read-only \
             transaction, statement timeout, search_path) and cannot be changed; send the query \
             on its own (current_setting('name') or SHOW name reads a setting)"
        ),
        "BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE" => {
            format!(
                "transaction control ({statement}) is not allowed: every query already runs in \
                 its own read-only transaction; send the query without it"
            )
        }
        _ => format!(
            "{statement} statements are not allowed: this server is read-only and accepts one \
             read-only statement ({ALLOWED}); rewrite the request as a query that only reads data"
        ),
    }
}

fn not_explainable_message(statement: &str) -> String {
    let instead = match statement {
        "EXPLAIN" => "remove the EXPLAIN keyword and its options",
        _ => "run it with the query tool instead",
    };
    format!(
        "{statement} cannot be explained: the explain tool takes the query itself (SELECT, \
         WITH … SELECT, VALUES or TABLE) and adds EXPLAIN (FORMAT JSON) for you; {instead}"
    )
}

fn forbidden_function_message(name: &str) -> String {
    let because = denied_function(name).map_or("it is on the server's deny list", Denial::because);
    format!(
        "function {}() is not allowed because {because}; remove the call (reading tables, \
         views and ordinary functions is fine)",
        excerpt(name)
    )
}

fn forbidden_clause_message(clause: &str) -> String {
    match clause {
        "SELECT INTO" => "SELECT … INTO creates a table, which this read-only server does not \
                          allow; remove the INTO clause (the rows are returned to you directly)"
            .to_owned(),
        c if c.starts_with("FOR ") => {
            format!("the row-locking clause {c} is not allowed in a read-only query; remove it")
        }
        c if c.starts_with("U&") => "Unicode-escaped identifiers (U&\"…\") are not accepted; \
                                    write the identifier plainly or in double quotes"
            .to_owned(),
        c => format!(
            "{} is not allowed in a read-only query; remove it",
            excerpt(c)
        ),
    }
}

/// Builds a `Syntax` error from a parser or tokenizer message: without sqlparser's prefix,
/// the offending token (which may be a long literal) cut short, the whole bounded, and a hint.
pub(super) fn syntax(message: &str) -> GuardError {
    let message = message
        .strip_prefix("sql parser error: ")
        .unwrap_or(message)
        .replace(" at Line: ", " at line ")
        .replace(", Column: ", ", column ");
    let message = match message.split_once(", found: ") {
        Some((expected, rest)) => {
            let (found, at) = rest.rsplit_once(" at line ").unwrap_or((rest, ""));
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" at line {at}")
            };
            format!(
                "{expected}, found: {}{at}",
                excerpt_n(found, MAX_EXCERPT_CHARS / 2)
            )
        }
        None => message,
    };
    GuardError::Syntax(format!(
        "{}; send one valid PostgreSQL read-only statement ({ALLOWED}) (if it is valid \
         PostgreSQL, this checker may not know the syntax: rewrite it with more common constructs)",
        excerpt_n(&message, 2 * MAX_EXCERPT_CHARS)
    ))
}

/// A `Syntax` error for syntax the guard understands but PostgreSQL would not accept.
pub(super) fn unsupported(message: &str) -> GuardError {
    GuardError::Syntax(message.to_owned())
}

pub(super) fn excerpt(text: &str) -> Cow<'_, str> {
    excerpt_n(text, MAX_EXCERPT_CHARS)
}

fn excerpt_n(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}…", &text[..end])),
    }
}
