//! Step 4: parses the one statement with sqlparser and accepts only the read-only kinds,
//! handing queries to the [`walk`](super::walk).

use sqlparser::ast::{DescribeAlias, Query, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace};

use super::error::{syntax, unsupported};
use super::tokens::{
    explain_target, keyword_at, leading_keyword, locking_clause, next_significant, starts_read_only,
};
use super::walk::Walker;
use super::{GuardError, StatementKind};

/// sqlparser's own nesting limit (parentheses, subqueries, prefix operators). Its default; deeper
/// input is refused with [`GuardError::TooComplex`] instead of overflowing the stack.
const PARSER_RECURSION_LIMIT: usize = 50;

/// Parses the statement's tokens; also says whether a leading `TABLE` was rewritten.
pub(super) fn parse_statement(tokens: &[TokenWithSpan]) -> Result<(Statement, bool), GuardError> {
    // sqlparser knows `TABLE name` inside a query, but not as a statement of its own nor right
    // after EXPLAIN: spell it the way PostgreSQL defines it, `SELECT * FROM name`.
    let first = next_significant(tokens, 0);
    let leading_table = keyword_at(tokens, first).is_some_and(|w| w.keyword == Keyword::TABLE);
    let table_at = if leading_table {
        first
    } else {
        explain_target(tokens)
            .filter(|&i| keyword_at(tokens, Some(i)).is_some_and(|w| w.keyword == Keyword::TABLE))
    };
    // The parser takes its tokens; the caller keeps the originals for classify.
    let mut parsed_tokens = tokens.to_vec();
    if let Some(at) = table_at {
        let select_star_from = [
            Token::make_keyword("SELECT"),
            Token::Whitespace(Whitespace::Space),
            Token::Mul,
            Token::Whitespace(Whitespace::Space),
            Token::make_keyword("FROM"),
        ];
        parsed_tokens.splice(at..=at, select_star_from.map(TokenWithSpan::wrap));
    }

    let mut parser = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(parsed_tokens);
    let parsed = parser.parse_statement();
    let trailing = parser.peek_token();
    match parsed {
        Ok(statement) if trailing.token == Token::EOF => Ok((statement, leading_table)),
        Ok(_) => Err(syntax(&format!(
            "Expected: end of statement, found: {}{}",
            trailing.token, trailing.span.start
        ))),
        Err(ParserError::RecursionLimitExceeded) => Err(GuardError::TooComplex),
        Err(ParserError::ParserError(message) | ParserError::TokenizerError(message)) => {
            // Say what is wrong when it is not a matter of syntax.
            if let Some(keyword) = leading_keyword(tokens).filter(|k| !starts_read_only(k)) {
                Err(GuardError::NotReadOnly { statement: keyword })
            } else if let Some(clause) = locking_clause(tokens) {
                Err(GuardError::ForbiddenClause(clause.to_owned()))
            } else {
                Err(syntax(&message))
            }
        }
    }
}

pub(super) fn classify(
    statement: &Statement,
    tokens: &[TokenWithSpan],
) -> Result<StatementKind, GuardError> {
    let refused = || GuardError::NotReadOnly {
        statement: leading_keyword(tokens).unwrap_or_else(|| "UNKNOWN".to_owned()),
    };
    match statement {
        Statement::Query(query) => {
            let kind = query_kind(query)?;
            Walker::default().query(query)?;
            Ok(kind)
        }
        Statement::Explain {
            describe_alias,
            analyze: _,
            verbose: _,
            query_plan: _,
            estimate: _,
            statement,
            format: _,
            options,
        } => {
            if *describe_alias != DescribeAlias::Explain {
                return Err(unsupported(
                    "DESCRIBE is not PostgreSQL; use the describe_table tool to see a table's \
                     columns",
                ));
            }
            let Statement::Query(query) = statement.as_ref() else {
                return Err(refused());
            };
            query_kind(query)?;
            let mut walker = Walker::default();
            for option in options.iter().flatten() {
                walker.exprs(option.arg.as_ref());
            }
            walker.query(query)?;
            Ok(StatementKind::Explain)
        }
        Statement::ShowVariable { variable: _ } => Ok(StatementKind::Show),
        Statement::ExplainTable { .. } => Err(unsupported(
            "EXPLAIN needs a query, e.g. EXPLAIN SELECT …; to see a table's columns use the \
             describe_table tool",
        )),
        Statement::ShowFunctions { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Err(unsupported(
            "PostgreSQL's SHOW takes one setting name (e.g. SHOW statement_timeout); use the \
             list_schemas, list_tables and describe_table tools for catalog information",
        )),
        _ => Err(refused()),
    }
}

/// The kind of a top-level query, refusing `WITH … INSERT/UPDATE/DELETE/MERGE`.
fn query_kind(query: &Query) -> Result<StatementKind, GuardError> {
    let mut body = query.body.as_ref();
    while let SetExpr::Query(inner) = body {
        body = inner.body.as_ref();
    }
    match body {
        SetExpr::Select(_) | SetExpr::SetOperation { .. } | SetExpr::Query(_) => {
            Ok(StatementKind::Select)
        }
        SetExpr::Values(_) => Ok(StatementKind::Values),
        SetExpr::Table(_) => Ok(StatementKind::Table),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            Err(GuardError::NotReadOnly {
                statement: dml_keyword(body).to_owned(),
            })
        }
    }
}

pub(super) fn dml_keyword(body: &SetExpr) -> &'static str {
    match body {
        SetExpr::Insert(_) => "INSERT",
        SetExpr::Update(_) => "UPDATE",
        SetExpr::Delete(_) => "DELETE",
        SetExpr::Merge(_) => "MERGE",
        _ => "UNKNOWN",
    }
}
