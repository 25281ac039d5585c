//! Audit fingerprints: a hash of the statement with its literal values, comments and layout
//! removed. Never refuses anything.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Token, Tokenizer};

use super::MAX_SQL_BYTES;

/// A stable fingerprint of a statement for audit logs: 16 hex digits of FNV-1a 64 over the
/// normalised text (comments dropped, literals replaced by `?`, lists of literals collapsed to
/// one `?`, whitespace collapsed, unquoted words lower-cased). Never contains literal values.
/// Text the tokenizer cannot read (unterminated quotes, too long) is normalised by a simple
/// scanner instead.
pub fn fingerprint(sql: &str) -> String {
    fingerprint_redacted(&redact(sql))
}

/// The [`fingerprint`] of a statement from its [`redact`]ed text.
pub fn fingerprint_redacted(redacted: &str) -> String {
    format!("{:016x}", fnv1a_64(redacted.as_bytes()))
}

/// The statement as the audit log's `redacted` mode records it: comments dropped, every
/// literal replaced by `?` (a list of literals by one `?`), whitespace collapsed, unquoted words
/// lower-cased; `$n` placeholders and quoted identifiers kept. Never contains a literal value.
pub fn redact(sql: &str) -> String {
    let tokens = if sql.len() <= MAX_SQL_BYTES {
        Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()
    } else {
        None
    };
    match tokens {
        Some(tokens) => normalize_tokens(tokens.iter()),
        None => {
            let mut pieces = Pieces::default();
            scan(sql, &mut pieces);
            pieces.finish()
        }
    }
}

/// `tokens` without literal values, comments and whitespace, words in lower case.
pub(super) fn normalize_tokens<'a>(tokens: impl Iterator<Item = &'a Token>) -> String {
    let mut pieces = Pieces::default();
    for token in tokens {
        match token {
            Token::Whitespace(_) | Token::EOF => {}
            Token::Word(w) => match w.quote_style {
                Some(q) => pieces.push(format_args!("{q}{}{q}", w.value)),
                None => pieces.push(w.value.to_lowercase()),
            },
            Token::Number(..)
            | Token::Char(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::CopyData { .. } => pieces.push_literal(),
            other => pieces.push(other),
        }
    }
    pieces.finish()
}

/// The normalized text being built: pieces joined by single spaces, in one string; a list of
/// literals (`?, ?, ?`) collapses to one `?`.
#[derive(Debug, Default)]
struct Pieces {
    text: String,
    /// Where each piece starts in `text`.
    starts: Vec<usize>,
}

impl Pieces {
    fn push(&mut self, piece: impl std::fmt::Display) {
        use std::fmt::Write as _;
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.starts.push(self.text.len());
        let _ = write!(self.text, "{piece}");
    }

    /// The piece `back` places from the end (0: the last one).
    fn last(&self, back: usize) -> Option<&str> {
        let i = self.starts.len().checked_sub(back + 1)?;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.text.len(), |next| next - 1);
        self.text.get(self.starts[i]..end)
    }

    fn pop(&mut self) {
        if let Some(start) = self.starts.pop() {
            self.text.truncate(start.saturating_sub(1));
        }
    }

    /// `?` for a literal; a list of literals (`?, ?, ?`) folds into one `?`.
    fn push_literal(&mut self) {
        if self.last(0) == Some(",") && self.last(1) == Some("?") {
            self.pop();
        } else {
            self.push("?");
        }
    }

    /// The normalized text, without trailing semicolons.
    fn finish(mut self) -> String {
        while self.last(0) == Some(";") {
            self.pop();
        }
        self.text
    }
}

/// Fallback normaliser for text the tokenizer rejects: drops comments, replaces quoted strings,
/// dollar-quoted strings and numbers with `?`, keeps double-quoted identifiers.
fn scan(sql: &str, pieces: &mut Pieces) {
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && next == Some('-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            // E'…' strings take backslash escapes; the E was already emitted as a word.
            let escapes = pieces.last(0) == Some("e");
            if escapes {
                pieces.pop();
            }
            i += 1;
            while i < chars.len() {
                let doubled = chars[i] == '\'' && chars.get(i + 1) == Some(&'\'');
                if doubled || (escapes && chars[i] == '\\') {
                    i += 2;
                } else if chars[i] == '\'' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            pieces.push_literal();
        } else if c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' && chars.get(i + 1) == Some(&'"') {
                    i += 2;
                } else if chars[i] == '"' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            pieces.push(chars[start..i].iter().collect::<String>());
        } else if c == '$' && next.is_some_and(|n| n.is_ascii_digit()) {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            pieces.push(chars[start..i].iter().collect::<String>());
        } else if c == '$' {
            // $tag$ … $tag$
            let tag_end =
                (i + 1..chars.len()).find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_'));
            match tag_end {
                Some(end) if chars[end] == '$' => {
                    let tag: Vec<char> = chars[i..=end].to_vec();
                    i = end + 1;
                    while i < chars.len() && !chars[i..].starts_with(&tag) {
                        i += 1;
                    }
                    i = (i + tag.len()).min(chars.len());
                    pieces.push_literal();
                }
                _ => {
                    pieces.push("$".to_owned());
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) {
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            pieces.push_literal();
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            pieces.push(chars[start..i].iter().collect::<String>().to_lowercase());
        } else {
            pieces.push(c.to_string());
            i += 1;
        }
    }
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_literals_whitespace_case_and_comments() {
        let a = fingerprint("SELECT * FROM orders WHERE id = 1 AND status = 'paid'");
        let b = fingerprint(
            "select *\n  from ORDERS -- latest\n where id=42 and status='secret' /* x */;",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 16);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        // Lists of literals of any length fingerprint alike.
        assert_eq!(
            fingerprint("SELECT * FROM orders WHERE id IN (1, 2, 3)"),
            fingerprint("SELECT * FROM orders WHERE id IN (12345)")
        );
        assert_eq!(
            fingerprint("SELECT $$a$$, E'b\\'c', 1.5e3"),
            fingerprint("SELECT 'x', 'y', 7")
        );
    }

    #[test]
    fn fingerprint_tells_different_statements_apart() {
        let base = fingerprint("SELECT * FROM orders WHERE id = 1");
        for other in [
            "SELECT * FROM orders WHERE customer_id = 1",
            "SELECT * FROM orders WHERE id > 1",
            "SELECT id FROM orders WHERE id = 1",
            "SELECT * FROM \"Orders\" WHERE id = 1",
            "SELECT * FROM orders WHERE id = 1; DELETE FROM orders",
            "SELECT * FROM orders WHERE id = $1",
        ] {
            assert_ne!(fingerprint(other), base, "{other}");
        }
    }

    #[test]
    fn fingerprint_never_contains_literal_values() {
        for sql in [
            "SELECT * FROM customers WHERE email = 'secret' AND id = 12345",
            "SELECT $q$secret$q$, 12345 -- secret\n",
            "SELECT 'secret' /* 12345 */",
            // unterminated: the tokenizer fails and the fallback scanner normalises
            "SELECT * FROM t WHERE a = 12345 AND b = 'it''s secret",
            "SELECT E'secret\\' 12345', $tag$secret",
            "SELECT \"unterminated 'secret' 12345",
        ] {
            let normalized = redact(sql);
            let print = fingerprint(sql);
            for value in ["secret", "12345"] {
                assert!(
                    !normalized.contains(value) || sql.contains("\"unterminated"),
                    "{normalized}"
                );
                assert!(!print.contains(value), "{print}");
            }
        }
        assert_eq!(
            redact("SELECT * FROM t WHERE a = 12345 AND b = 'it''s secret"),
            "select * from t where a = ? and b = ?"
        );
    }
}

/// The audit log's `redacted` mode over generated statements: no literal value survives.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::{fingerprint, redact};

    /// A literal as SQL text, and the value it carries (what must never be logged).
    fn literal() -> impl Strategy<Value = (String, String)> {
        let word = "[a-z]{3,8}( [a-z]{3,8}){0,2}";
        prop_oneof![
            // Words under a marker no identifier below carries.
            word.prop_map(|w| (format!("'zq{w}'"), format!("zq{w}"))),
            word.prop_map(|w| (format!("'zq{w}''s'"), format!("zq{w}"))),
            word.prop_map(|w| (format!("E'zq{w}\\n'"), format!("zq{w}"))),
            word.prop_map(|w| (format!("$$zq{w}$$"), format!("zq{w}"))),
            word.prop_map(|w| (format!("$t$zq{w}$t$"), format!("zq{w}"))),
            // Numbers of five digits or more: no identifier below holds a digit.
            (10_000u64..u64::MAX).prop_map(|n| (n.to_string(), n.to_string())),
            (10_000u32..u32::MAX, 1u32..999).prop_map(|(a, b)| (format!("{a}.{b}"), a.to_string())),
            (10_000u32..u32::MAX).prop_map(|n| (format!("{n}e3"), n.to_string())),
            word.prop_map(|w| (format!("'zq{w}'::text"), format!("zq{w}"))),
        ]
    }

    fn statement() -> impl Strategy<Value = (String, Vec<String>)> {
        let column = prop::sample::select(vec!["id", "email", "name", "total", "\"Note\""]);
        let table = prop::sample::select(vec!["customers", "orders", "public.products"]);
        (
            table,
            prop::collection::vec((column, literal()), 1..5),
            prop::sample::select(vec!["=", "<>", ">", "LIKE"]),
            literal(),
        )
            .prop_map(|(table, conditions, op, limit)| {
                let mut values = Vec::new();
                let mut sql = format!("SELECT * FROM {table} WHERE ");
                for (i, (column, (text, value))) in conditions.into_iter().enumerate() {
                    if i > 0 {
                        sql.push_str(if i % 2 == 0 { " AND " } else { " OR " });
                    }
                    sql.push_str(&format!("{column} {op} {text}"));
                    values.push(value);
                }
                sql.push_str(&format!(" /* {} */ -- {}", limit.1, limit.1));
                values.push(limit.1);
                sql.push_str(&format!("\nAND id IN ({}, {})", limit.0, limit.0));
                (sql, values)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn redacted_statements_never_contain_a_literal(
            (sql, values) in statement()
        ) {
            let redacted = redact(&sql);
            for value in &values {
                prop_assert!(!redacted.contains(value.as_str()), "{value:?} in {redacted:?} (from {sql:?})");
            }
            prop_assert!(redacted.starts_with("select * from "), "{redacted}");
            let print = fingerprint(&sql);
            prop_assert_eq!(print.len(), 16);
            prop_assert!(print.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
