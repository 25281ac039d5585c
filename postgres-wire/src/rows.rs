//! What a statement gives back: its columns and capped rows, already as JSON.

use serde::Serialize;
use serde_json::Value;

use crate::Error;

/// A column of a result: its name and PostgreSQL type.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
}

/// The rows of one statement, capped.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: JsonRows,
    pub row_count: usize,
    /// True when more rows existed than were returned.
    pub truncated: bool,
    /// `max_rows` or `max_bytes` when truncated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated_by: Option<&'static str>,
    pub elapsed_ms: u64,
    /// Columns whose type could not be decoded (shown as hex of the binary value).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undecoded_columns: Vec<String>,
}

/// Result rows as the JSON they are sent in, an array of arrays (`[[1,"a"],[2,null]]`),
/// written straight from PostgreSQL's binary values: no `Value` per cell, nothing serialized
/// twice. [`JsonRows::values`] parses them for a caller's own use of small results.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct JsonRows(Box<serde_json::value::RawValue>);

impl JsonRows {
    /// `json` must be a JSON array of arrays.
    pub(crate) fn new(json: String) -> Result<Self, Error> {
        serde_json::value::RawValue::from_string(json)
            .map(JsonRows)
            .map_err(|e| Error::Decode(format!("failed to encode the rows: {e}")))
    }

    /// The rows as JSON values.
    pub fn values(&self) -> Vec<Vec<Value>> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonRows {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// Caps of one statement.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub max_rows: usize,
    pub max_bytes: usize,
}
