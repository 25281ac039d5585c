//! Steps 1–3 on the token stream: bounds the input, tokenizes it as PostgreSQL's lexer would,
//! counts statements and refuses token-level tricks. Nothing here parses.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

use super::error::syntax;
use super::{GuardError, MAX_SQL_BYTES};

/// Most operator and keyword tokens one statement may have. Chains such as `a OR b OR c …` or
/// `x::int::int …` build a tree as deep as they are long without any parser recursion, and
/// sqlparser's (recursive) `Drop` of such a tree needs roughly 100 bytes of stack per level: this
/// cap keeps that under ~1 MiB, safe on a 2 MiB tokio worker thread.
pub(super) const MAX_OPERATOR_TOKENS: usize = 10_000;

/// Bounds the input and tokenizes it as PostgreSQL's lexer would.
pub(super) fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, GuardError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(GuardError::TooLong { max: MAX_SQL_BYTES });
    }
    if sql.contains('\0') {
        return Err(GuardError::Syntax(
            "the text contains a NUL byte, which PostgreSQL does not accept; remove it".to_owned(),
        ));
    }
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| syntax(&e.to_string()))
}

/// The tokens of the one statement in `tokens`.
pub(super) fn statement_tokens(
    tokens: Vec<TokenWithSpan>,
) -> Result<Vec<TokenWithSpan>, GuardError> {
    // The tokenizer has already consumed comments, quoted identifiers and every kind of string
    // literal, so each remaining `;` separates statements, exactly as in PostgreSQL's lexer.
    let mut statements: Vec<Vec<TokenWithSpan>> = Vec::new();
    let mut current = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            statements.push(std::mem::take(&mut current));
        } else {
            current.push(token);
        }
    }
    statements.push(current);
    statements.retain(|statement| statement.iter().any(|t| is_significant(&t.token)));
    let statement = match statements.len() {
        0 => return Err(GuardError::Empty),
        1 => statements.pop().unwrap_or_default(),
        n => return Err(GuardError::MultipleStatements(n)),
    };
    check_tokens(&statement)?;
    Ok(statement)
}

pub(super) fn is_significant(token: &Token) -> bool {
    !matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// Refuses what sqlparser would read differently from PostgreSQL, and trees too deep to drop.
fn check_tokens(tokens: &[TokenWithSpan]) -> Result<(), GuardError> {
    let mut operators = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match &token.token {
            // PostgreSQL reads `U&"…"` as one identifier with Unicode escapes
            // (`U&"\0070g_read_file"` is pg_read_file); sqlparser reads `U & "…"`. Nobody
            // writes this in analytics SQL, so refuse rather than decode.
            Token::Word(w)
                if w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("u")
                    && tokens
                        .get(i + 1)
                        .is_some_and(|t| t.token == Token::Ampersand)
                    && tokens.get(i + 2).is_some_and(
                        |t| matches!(&t.token, Token::Word(q) if q.quote_style == Some('"')),
                    ) =>
            {
                return Err(GuardError::ForbiddenClause("U&\"…\" identifier".to_owned()));
            }
            // Both PostgreSQL and sqlparser treat non-ASCII characters as identifier characters,
            // so `SELECT 1；DELETE FROM t` is a harmless SELECT with the alias `；delete`. Refuse
            // it anyway: a proxy or client that normalises Unicode would turn it into two
            // statements.
            Token::Word(w)
                if w.quote_style.is_none() && w.value.chars().any(is_lookalike_punctuation) =>
            {
                return Err(GuardError::Syntax(
                    "an identifier contains full-width or look-alike punctuation (e.g. a \
                     full-width semicolon); use ASCII punctuation, or double-quote the identifier"
                        .to_owned(),
                ));
            }
            // PostgreSQL's dollar-quote tags start with a letter or `_`: it reads `$1a$; …` as
            // the parameter `$1` followed by more SQL, where sqlparser sees one long string.
            Token::DollarQuotedString(quoted)
                if quoted
                    .tag
                    .as_deref()
                    .is_some_and(|tag| tag.starts_with(|c: char| c.is_ascii_digit())) =>
            {
                return Err(GuardError::Syntax(
                    "a dollar-quote tag starts with a digit, which PostgreSQL does not allow \
                     ($1 is a parameter); use $$…$$ or a tag such as $q$…$q$"
                        .to_owned(),
                ));
            }
            Token::Word(w) if w.quote_style.is_none() && w.keyword != Keyword::NoKeyword => {
                operators += 1;
            }
            Token::Word(_)
            | Token::Whitespace(_)
            | Token::EOF
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::Period
            | Token::Number(..)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_) => {}
            _ => operators += 1,
        }
    }
    if operators > MAX_OPERATOR_TOKENS {
        return Err(GuardError::TooComplex);
    }
    Ok(())
}

/// Characters that Unicode normalisation (NFKC) turns into ASCII punctuation.
fn is_lookalike_punctuation(c: char) -> bool {
    let code = u32::from(c);
    // FULLWIDTH ! … ~ map to ASCII 0x21 … 0x7E
    let fullwidth = (0xFF01..=0xFF5E).contains(&code)
        && char::from_u32(code - 0xFEE0).is_some_and(|ascii| ascii.is_ascii_punctuation());
    // SMALL COMMA … SMALL AMPERSAND etc., GREEK QUESTION MARK (NFKC: ';')
    fullwidth || (0xFE50..=0xFE6B).contains(&code) || code == 0x037E
}

/// Index of the next significant token at or after `from`.
pub(super) fn next_significant(tokens: &[TokenWithSpan], from: usize) -> Option<usize> {
    (from..tokens.len()).find(|&i| is_significant(&tokens[i].token))
}

pub(super) fn keyword_at(tokens: &[TokenWithSpan], index: Option<usize>) -> Option<&Word> {
    match index.map(|i| &tokens[i].token) {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w),
        _ => None,
    }
}

/// For `EXPLAIN [ANALYZE] [VERBOSE] statement` or `EXPLAIN ( options ) statement`: the index of
/// the explained statement's first token.
pub(super) fn explain_target(tokens: &[TokenWithSpan]) -> Option<usize> {
    let first = next_significant(tokens, 0)?;
    if keyword_at(tokens, Some(first))?.keyword != Keyword::EXPLAIN {
        return None;
    }
    let mut next = next_significant(tokens, first + 1)?;
    if tokens[next].token == Token::LParen {
        let mut depth = 0usize;
        let close = (next..tokens.len()).find(|&i| {
            match tokens[i].token {
                Token::LParen => depth += 1,
                Token::RParen => depth = depth.saturating_sub(1),
                _ => {}
            }
            depth == 0
        })?;
        return next_significant(tokens, close + 1);
    }
    while keyword_at(tokens, Some(next))
        .is_some_and(|w| matches!(w.keyword, Keyword::ANALYZE | Keyword::VERBOSE))
    {
        next = next_significant(tokens, next + 1)?;
    }
    Some(next)
}

/// Upper-case keyword a refused statement starts with (after EXPLAIN's options), if any.
pub(super) fn leading_keyword(tokens: &[TokenWithSpan]) -> Option<String> {
    let start = explain_target(tokens).or_else(|| next_significant(tokens, 0));
    keyword_at(tokens, start)
        .filter(|w| w.keyword != Keyword::NoKeyword)
        .map(|w| w.value.to_ascii_uppercase().chars().take(32).collect())
}

pub(super) fn starts_read_only(keyword: &str) -> bool {
    matches!(
        keyword,
        "SELECT" | "WITH" | "VALUES" | "TABLE" | "EXPLAIN" | "SHOW"
    )
}

/// A locking clause sqlparser cannot parse (`FOR NO KEY UPDATE`, `FOR KEY SHARE`, or one in a
/// scalar subquery), found on the tokens so the refusal says what is wrong.
pub(super) fn locking_clause(tokens: &[TokenWithSpan]) -> Option<&'static str> {
    let words: Vec<Keyword> = tokens
        .iter()
        .filter(|t| is_significant(&t.token))
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => w.keyword,
            _ => Keyword::NoKeyword,
        })
        .collect();
    words
        .windows(4)
        .chain(words.windows(3))
        .chain(words.windows(2))
        .find_map(|w| match w {
            [Keyword::FOR, Keyword::NO, Keyword::KEY, Keyword::UPDATE] => Some("FOR NO KEY UPDATE"),
            [Keyword::FOR, Keyword::KEY, Keyword::SHARE] => Some("FOR KEY SHARE"),
            [Keyword::FOR, Keyword::UPDATE] => Some("FOR UPDATE"),
            [Keyword::FOR, Keyword::SHARE] => Some("FOR SHARE"),
            _ => None,
        })
}
