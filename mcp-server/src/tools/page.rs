//! Discovery answers within a byte budget: a page of a listing, what the whole listing holds,
//! and the cursor for the next page.
//!
//! A listing is sorted by a key (schema and name, say); a cursor names the key of the last
//! entry shown, so the next page starts after it whatever changed in between: a dropped
//! entry is simply not there, a new one shows up when it sorts after the cursor, and a page
//! whose snapshot differs from the previous page's says so ([`Page::catalog_changed`]). The
//! cursor also carries the listing's arguments, so it cannot continue a different listing.
//!
//! The budget is on the text the model reads: the summary line, the untrusted-data frame
//! and the JSON. A page holds as many entries as fit, and at least one; an entry's long texts
//! are cut to fit ([`cut`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Limits, ToolError};

/// The opaque cursor a page hands out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cursor {
    /// The tool.
    t: String,
    /// The listing's arguments.
    a: Vec<Option<String>>,
    /// The key of the last entry shown.
    k: Vec<String>,
    /// The snapshot's digest.
    v: String,
}

/// Where a page starts: after the entry with this key, in a listing read from a snapshot
/// with this digest.
#[derive(Debug, Clone, Default)]
pub struct After {
    pub key: Option<Vec<String>>,
    pub digest: Option<String>,
}

/// The cursor `text` of `tool` with `arguments`, decoded.
pub fn after(
    tool: &str,
    arguments: &[Option<String>],
    text: Option<&str>,
) -> Result<After, ToolError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else {
        return Ok(After::default());
    };
    let cursor: Cursor = URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
        .and_then(|bytes: Vec<u8>| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            ToolError::InvalidArgument(
                "cursor: not a cursor this server handed out; omit it to start from the first page"
                    .to_owned(),
            )
        })?;
    if cursor.t != tool || cursor.a != arguments {
        return Err(ToolError::InvalidArgument(format!(
            "cursor: it continues another listing (another tool or other filters); call {tool} with the same arguments as the call that returned it, or omit cursor to start over"
        )));
    }
    Ok(After {
        key: Some(cursor.k),
        digest: Some(cursor.v),
    })
}

pub(crate) fn cursor(
    tool: &str,
    arguments: &[Option<String>],
    key: Vec<String>,
    digest: &str,
) -> String {
    let cursor = Cursor {
        t: tool.to_owned(),
        a: arguments.to_vec(),
        k: key,
        v: digest.to_owned(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&cursor).unwrap_or_default())
}

/// A column of a page's rows.
#[derive(Debug, Clone, Serialize)]
pub struct PageColumn {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub type_name: &'static str,
}

/// Entries a listing has that the caller cannot read, and how an administrator lets it.
#[derive(Debug, Clone, Serialize)]
pub struct NotReadable {
    /// How many tables and views exist that the server's role cannot read (in the listing's
    /// schema and pattern, if given).
    pub tables: usize,
    /// Their schemas (at most 10).
    pub schemas: Vec<String>,
    /// What an administrator runs to let this server read them.
    pub grant: String,
}

/// One page of a listing.
#[derive(Debug, Clone, Serialize)]
pub struct Page {
    /// What the listing holds and how to get the rest (also the answer's first line).
    pub summary: String,
    pub columns: Vec<PageColumn>,
    pub rows: Box<RawValue>,
    pub row_count: usize,
    /// Entries in the whole listing.
    pub total: usize,
    /// Position of the page's first entry in the listing (1-based; 0 when empty).
    pub first: usize,
    /// True when entries follow this page.
    pub truncated: bool,
    /// The cursor for the next page, or null on the last page.
    #[serde(rename = "nextCursor")]
    pub next_cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_readable: Option<NotReadable>,
    /// Set when the catalog changed since the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalog_changed: Option<String>,
    pub limits: Limits,
}

/// How a listing words itself: "1,000 tables in 3 schemas".
#[derive(Debug)]
pub struct Words {
    pub tool: &'static str,
    /// The listing's entries, plural ("tables").
    pub plural: &'static str,
    /// More of the listing's extent, after the count (" in 3 schemas").
    pub extent: String,
    /// What else to try when it is long.
    pub narrow: &'static str,
}

/// `n` with thousands separators.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `text` cut to at most `max` bytes at a character boundary, marked with an ellipsis.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text[..end].trim_end())
}

/// A comment's first sentence (or line), at most 160 bytes: the compact listings' form.
pub fn first_sentence(comment: &str) -> String {
    let comment = comment.trim();
    let end = comment
        .char_indices()
        .find(|&(i, c)| {
            c == '\n' || (c == '.' && comment[i + 1..].starts_with(char::is_whitespace))
        })
        .map_or(comment.len(), |(i, c)| if c == '.' { i + 1 } else { i });
    cut(&comment[..end], 160)
}

/// Builds a page from the entries of a listing that follow the cursor.
#[derive(Debug)]
pub struct Pager<'a> {
    pub words: Words,
    pub arguments: Vec<Option<String>>,
    pub after: &'a After,
    /// The snapshot's digest.
    pub digest: String,
    /// The budget for the whole text.
    pub budget: usize,
    /// Bytes the text has besides the page's JSON (the untrusted-data frame).
    pub frame: usize,
    pub columns: Vec<PageColumn>,
    pub limits: Limits,
}

impl Pager<'_> {
    /// The page of `entries`, the listing's entries after the cursor in key order (`before`
    /// of the `total` in the whole listing come before them), as many as fit the budget: `key`
    /// and `row` are asked of the entries shown only, and no entry past the page is read.
    pub fn page<T, R: Serialize>(
        self,
        entries: impl Iterator<Item = T>,
        before: usize,
        total: usize,
        key: impl Fn(&T) -> Vec<String>,
        row: impl Fn(&T) -> R,
        not_readable: Option<NotReadable>,
    ) -> Page {
        let mut shown: Vec<(Vec<String>, String)> = Vec::new();
        let mut shown_bytes = 0;
        // Room for everything but the rows (summary, frame, columns, counts, not_readable,
        // limits); the page is measured whole below.
        let reserve = 1200 + self.frame;
        for entry in entries {
            let json = serde_json::to_string(&row(&entry)).unwrap_or_default();
            if !shown.is_empty() && reserve + shown_bytes + json.len() + 1 > self.budget {
                break;
            }
            shown_bytes += json.len() + 1;
            shown.push((key(&entry), json));
        }
        loop {
            let page = self.assemble(&shown, total, before, not_readable.clone());
            let json = serde_json::to_string(&page).unwrap_or_default();
            let text = page.summary.len() + 1 + self.frame + json.len();
            if text <= self.budget || shown.len() <= 1 {
                return page;
            }
            shown.pop();
        }
    }

    fn assemble(
        &self,
        shown: &[(Vec<String>, String)],
        total: usize,
        before: usize,
        not_readable: Option<NotReadable>,
    ) -> Page {
        let rows = format!(
            "[{}]",
            shown
                .iter()
                .map(|(_, json)| json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let last = before + shown.len();
        let more = last < total;
        let next_cursor = more
            .then(|| shown.last())
            .flatten()
            .map(|(key, _)| cursor(self.words.tool, &self.arguments, key.clone(), &self.digest));
        let first = if shown.is_empty() { 0 } else { before + 1 };
        let catalog_changed = self
            .after
            .digest
            .as_ref()
            .filter(|d| **d != self.digest)
            .map(|_| {
                format!(
                    "The catalog changed since the previous page: entries were added, changed or dropped. This page is current; {} created since then that sort before it are not on it: call {} without cursor to list from the start.",
                    self.words.plural, self.words.tool
                )
            });
        let words = &self.words;
        let mut summary = format!(
            "{} {}{}",
            count(total),
            if total == 1 {
                words.plural.trim_end_matches('s')
            } else {
                words.plural
            },
            words.extent
        );
        if shown.is_empty() {
            summary.push_str(if total == 0 {
                "."
            } else {
                "; none after the cursor."
            });
        } else if more || before > 0 {
            summary.push_str(&format!("; showing {}–{}", count(first), count(last)));
            match &next_cursor {
                Some(c) => summary.push_str(&format!(
                    ". For the next page call {} again with cursor \"{c}\" and the same arguments; {}",
                    words.tool, words.narrow
                )),
                None => summary.push_str(" (the last page)."),
            }
        } else {
            summary.push_str(", all shown.");
        }
        if let Some(hidden) = &not_readable {
            summary.push_str(&format!(
                " {} more exist that this server's role cannot read (see not_readable).",
                count(hidden.tables)
            ));
        }
        if catalog_changed.is_some() {
            summary.push_str(" The catalog changed since the previous page (see catalog_changed).");
        }
        Page {
            summary,
            columns: self.columns.clone(),
            rows: RawValue::from_string(rows)
                .unwrap_or_else(|_| RawValue::from_string("[]".to_owned()).unwrap_or_default()),
            row_count: shown.len(),
            total,
            first,
            truncated: more,
            next_cursor,
            not_readable,
            catalog_changed,
            limits: self.limits.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn pager(after: &After, budget: usize) -> Pager<'_> {
        Pager {
            words: Words {
                tool: "list_tables",
                plural: "tables",
                extent: " in 1 schema".to_owned(),
                narrow: "or narrow with schema or pattern.",
            },
            arguments: vec![None, None],
            after,
            digest: "d1".to_owned(),
            budget,
            frame: 341,
            columns: vec![PageColumn {
                name: "name",
                type_name: "text",
            }],
            limits: Limits {
                max_rows: 1,
                max_bytes: 1,
                statement_timeout_ms: 1,
            },
        }
    }

    fn page(after: &After, budget: usize) -> Page {
        let names: Vec<String> = (0..1000).map(|i| format!("t{i:05}")).collect();
        let start = names.partition_point(|n| after.key.as_ref().is_some_and(|k| *n <= k[0]));
        pager(after, budget).page(
            names[start..].iter(),
            start,
            names.len(),
            |n| vec![n.to_string()],
            |n| json!([n]),
            None,
        )
    }

    #[test]
    fn pages_walk_every_entry_once_within_the_budget() {
        let mut after = After::default();
        let mut seen = Vec::new();
        loop {
            let page = page(&after, 4096);
            let text = page.summary.len() + 1 + 341 + serde_json::to_string(&page).unwrap().len();
            assert!(text <= 4096, "{text}");
            assert_eq!(page.total, 1000);
            assert_eq!(page.first, seen.len() + 1);
            let rows: Vec<Vec<String>> = serde_json::from_str(page.rows.get()).unwrap();
            seen.extend(rows.into_iter().map(|r| r[0].clone()));
            match page.next_cursor {
                Some(c) => after = super::after("list_tables", &[None, None], Some(&c)).unwrap(),
                None => break,
            }
        }
        let expected: Vec<String> = (0..1000).map(|i| format!("t{i:05}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_cursor_continues_only_its_own_listing() {
        let page = page(&After::default(), 4096);
        let c = page.next_cursor.unwrap();
        assert!(
            page.summary
                .starts_with("1,000 tables in 1 schema; showing 1–")
        );
        assert!(page.summary.contains(&c));
        let other = super::after("list_tables", &[Some("sales".into()), None], Some(&c));
        assert!(other.unwrap_err().to_string().contains("another listing"));
        let other = super::after("search_objects", &[None, None], Some(&c));
        assert!(other.is_err());
        let garbage = super::after("list_tables", &[None, None], Some("not-a-cursor"));
        assert!(
            garbage
                .unwrap_err()
                .to_string()
                .starts_with("invalid argument: cursor:")
        );
    }

    #[test]
    fn comments_are_cut_to_a_sentence() {
        assert_eq!(first_sentence("Customers. One row each."), "Customers.");
        assert_eq!(
            first_sentence("v1.2 of the table\nmore"),
            "v1.2 of the table"
        );
        assert!(first_sentence(&"é".repeat(200)).len() <= 160);
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
    }
}
