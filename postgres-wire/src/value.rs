//! PostgreSQL values to JSON and back: result cells and statement parameters.
//!
//! Results keep their meaning: numbers stay numbers, NULL stays null, booleans stay booleans,
//! timestamps become ISO-8601 strings, json/jsonb become JSON, arrays become arrays. bytea is
//! `\x…` hex text; a type we cannot decode is shown as hex of its binary form and named, so
//! the model knows to cast it (`col::text`). Parameters arrive as JSON and are bound with the
//! type PostgreSQL inferred for each `$n`.

use std::error::Error as StdError;
use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::types as pg;
use postgres_types::{FromSql as _, IsNull, Kind, ToSql, Type, to_sql_checked};
use serde_json::{Number, Value};

type BoxError = Box<dyn StdError + Sync + Send>;

/// One decoded result cell.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    pub value: Value,
    /// Set when the type could not be decoded and the value is hex of its binary form.
    pub undecoded: bool,
}

/// Writes a result cell (`None`: NULL) as JSON into `out`: the JSON `decode`'s value
/// serializes to, written directly for the common types. Returns whether the type could not
/// be decoded (the value is then hex of its binary form).
pub fn write_cell(ty: &Type, raw: Option<&[u8]>, out: &mut Vec<u8>) -> Result<bool, BoxError> {
    use std::io::Write as _;
    let Some(raw) = raw else {
        out.extend_from_slice(b"null");
        return Ok(false);
    };
    match *ty {
        Type::BOOL => out.extend_from_slice(if pg::bool_from_sql(raw)? {
            b"true"
        } else {
            b"false"
        }),
        Type::INT2 => write!(out, "{}", pg::int2_from_sql(raw)?)?,
        Type::INT4 => write!(out, "{}", pg::int4_from_sql(raw)?)?,
        Type::INT8 => write!(out, "{}", pg::int8_from_sql(raw)?)?,
        Type::OID => write!(out, "{}", pg::oid_from_sql(raw)?)?,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            serde_json::to_writer(&mut *out, pg::text_from_sql(raw)?)?;
        }
        _ => {
            let cell = decode(ty, raw)?;
            serde_json::to_writer(&mut *out, &cell.value)?;
            return Ok(cell.undecoded);
        }
    }
    Ok(false)
}

fn decoded(value: Value) -> Result<Cell, BoxError> {
    Ok(Cell {
        value,
        undecoded: false,
    })
}

fn decode(ty: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    if let Kind::Array(member) = ty.kind() {
        return decode_array(member, raw);
    }
    if let Kind::Domain(base) = ty.kind() {
        return decode(base, raw);
    }
    match *ty {
        Type::BOOL => decoded(Value::Bool(pg::bool_from_sql(raw)?)),
        Type::INT2 => decoded(pg::int2_from_sql(raw)?.into()),
        Type::INT4 => decoded(pg::int4_from_sql(raw)?.into()),
        Type::INT8 => decoded(pg::int8_from_sql(raw)?.into()),
        Type::OID => decoded(pg::oid_from_sql(raw)?.into()),
        Type::FLOAT4 => decoded(float(f64::from(pg::float4_from_sql(raw)?))),
        Type::FLOAT8 => decoded(float(pg::float8_from_sql(raw)?)),
        Type::NUMERIC => decoded(decimal_to_json(&numeric_to_string(raw)?)),
        Type::CHAR => decoded(Value::String(
            char::from(pg::char_from_sql(raw)? as u8).to_string(),
        )),
        Type::JSON => decoded(serde_json::from_slice(raw)?),
        Type::JSONB => match raw.split_first() {
            Some((1, json)) => decoded(serde_json::from_slice(json)?),
            _ => Err("unsupported jsonb version".into()),
        },
        Type::BYTEA => decoded(Value::String(hex("\\x", pg::bytea_from_sql(raw)))),
        Type::UUID => decoded(Value::String(uuid(pg::uuid_from_sql(raw)?))),
        Type::DATE | Type::TIMESTAMP | Type::TIMESTAMPTZ | Type::TIME => {
            decoded(Value::String(time(ty, raw)?))
        }
        Type::INTERVAL => decoded(Value::String(interval(raw)?)),
        _ if is_text(ty) => decoded(Value::String(pg::text_from_sql(raw)?.to_owned())),
        _ => Ok(Cell {
            value: Value::String(hex("\\x", raw)),
            undecoded: true,
        }),
    }
}

/// Types whose binary form is their UTF-8 text (also enums and citext-like extension types).
fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::XML
    ) || matches!(ty.kind(), Kind::Enum(_))
        || ty.name() == "citext"
}

fn decode_array(member: &Type, raw: &[u8]) -> Result<Cell, BoxError> {
    let array = pg::array_from_sql(raw)?;
    let dims: Vec<usize> = array
        .dimensions()
        .map(|d| Ok(usize::try_from(d.len).unwrap_or(0)))
        .collect()?;
    let mut undecoded = false;
    let items: Vec<Value> = array
        .values()
        .map(|v| {
            Ok(match v {
                None => Value::Null,
                Some(bytes) => {
                    let cell = decode(member, bytes)?;
                    undecoded |= cell.undecoded;
                    cell.value
                }
            })
        })
        .collect()?;
    Ok(Cell {
        value: nest(&dims, &mut items.into_iter()),
        undecoded,
    })
}

/// Shapes a flat list of elements into nested arrays of the given dimensions.
fn nest(dims: &[usize], items: &mut impl Iterator<Item = Value>) -> Value {
    match dims.split_first() {
        None => Value::Array(Vec::new()),
        Some((&len, [])) => Value::Array(items.take(len).collect()),
        Some((&len, rest)) => Value::Array((0..len).map(|_| nest(rest, items)).collect()),
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

fn hex(prefix: &str, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(prefix.len() + bytes.len() * 2);
    out.push_str(prefix);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn uuid(b: [u8; 16]) -> String {
    let h = hex("", &b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn time(ty: &Type, raw: &[u8]) -> Result<String, BoxError> {
    Ok(match *ty {
        Type::DATE => jiff::civil::Date::from_sql(ty, raw)?.to_string(),
        Type::TIMESTAMP => jiff::civil::DateTime::from_sql(ty, raw)?.to_string(),
        Type::TIMESTAMPTZ => jiff::Timestamp::from_sql(ty, raw)?.to_string(),
        _ => jiff::civil::Time::from_sql(ty, raw)?.to_string(),
    })
}

/// An interval as an ISO-8601 duration (`P1Y2M3DT4H5M6.5S`).
fn interval(raw: &[u8]) -> Result<String, BoxError> {
    if raw.len() != 16 {
        return Err("invalid interval".into());
    }
    let micros = i64::from_be_bytes(raw[0..8].try_into()?);
    let days = i32::from_be_bytes(raw[8..12].try_into()?);
    let months = i32::from_be_bytes(raw[12..16].try_into()?);
    let mut out = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
        if n != 0 {
            let _ = write!(out, "{n}{unit}");
        }
    }
    if micros != 0 {
        out.push('T');
        let (hours, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
        let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
        if hours != 0 {
            let _ = write!(out, "{hours}H");
        }
        if minutes != 0 {
            let _ = write!(out, "{minutes}M");
        }
        if rest != 0 {
            let seconds = rest as f64 / 1_000_000.0;
            let _ = write!(out, "{seconds}S");
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    Ok(out)
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// PostgreSQL's binary numeric (base-10000 digits) as a decimal string.
fn numeric_to_string(raw: &[u8]) -> Result<String, BoxError> {
    let word = |i: usize| -> Result<u16, BoxError> {
        let bytes = raw.get(i * 2..i * 2 + 2).ok_or("truncated numeric")?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i32::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        NUMERIC_NAN => return Ok("NaN".to_owned()),
        NUMERIC_PINF => return Ok("Infinity".to_owned()),
        NUMERIC_NINF => return Ok("-Infinity".to_owned()),
        _ => {}
    }
    let digits: Vec<u16> = (0..ndigits)
        .map(|i| word(4 + i))
        .collect::<Result<_, _>>()?;
    let digit = |i: i32| -> u16 {
        usize::try_from(i)
            .ok()
            .and_then(|i| digits.get(i))
            .copied()
            .unwrap_or(0)
    };
    let mut out = String::new();
    if sign == NUMERIC_NEG {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                let _ = write!(out, "{}", digit(i));
            } else {
                let _ = write!(out, "{:04}", digit(i));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// A decimal string as a JSON number when that keeps its value (integers, up to 15 significant
/// digits), else as the exact string.
fn decimal_to_json(text: &str) -> Value {
    if !text.contains('.')
        && let Ok(i) = text.parse::<i64>()
    {
        return i.into();
    }
    let significant = text.chars().filter(char::is_ascii_digit).count();
    match text.parse::<f64>() {
        Ok(f) if significant <= 15 => float(f),
        _ => Value::String(text.to_owned()),
    }
}

/// A JSON parameter bound to the type PostgreSQL inferred for it.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Numeric(String),
    Text(String),
    Json(Value),
    Date(jiff::civil::Date),
    DateTime(jiff::civil::DateTime),
    Timestamp(jiff::Timestamp),
    Uuid([u8; 16]),
    /// An array of text-like values (`= ANY($1)` with a list of strings).
    TextArray(Vec<Option<String>>),
}

/// Why a parameter does not fit its type, phrased for the model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "parameter ${index} must be {expected} (its type in this query is {ty}), got {got}; pass a matching value or cast the parameter in SQL, e.g. ${index}::text"
)]
pub struct ParamError {
    pub index: usize,
    pub ty: String,
    pub expected: &'static str,
    pub got: String,
}

impl Param {
    /// Converts the JSON value for `$index` to the statement's parameter type `ty`.
    pub fn bind(index: usize, ty: &Type, value: &Value) -> Result<Self, ParamError> {
        let fail = |expected: &'static str| ParamError {
            index,
            ty: ty.name().to_owned(),
            expected,
            got: describe(value),
        };
        if value.is_null() {
            return Ok(Param::Null);
        }
        let text = match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        let base = match ty.kind() {
            Kind::Domain(base) => base,
            _ => ty,
        };
        if let Kind::Array(member) = base.kind() {
            let items = value
                .as_array()
                .filter(|_| is_text(member))
                .ok_or_else(|| fail("an array of strings"))?;
            return items
                .iter()
                .map(|item| match item {
                    Value::Null => Ok(None),
                    Value::String(s) => Ok(Some(s.clone())),
                    Value::Number(n) => Ok(Some(n.to_string())),
                    Value::Bool(b) => Ok(Some(b.to_string())),
                    _ => Err(fail("an array of strings")),
                })
                .collect::<Result<_, _>>()
                .map(Param::TextArray);
        }
        match *base {
            Type::BOOL => match value {
                Value::Bool(b) => Ok(Param::Bool(*b)),
                Value::String(s) if s == "true" || s == "false" => Ok(Param::Bool(s == "true")),
                _ => Err(fail("a boolean")),
            },
            Type::INT2 | Type::INT4 | Type::INT8 | Type::OID => text
                .and_then(|t| t.parse::<i64>().ok())
                .map(Param::Int)
                .ok_or_else(|| fail("an integer")),
            Type::FLOAT4 | Type::FLOAT8 => text
                .and_then(|t| t.parse::<f64>().ok())
                .map(Param::Float)
                .ok_or_else(|| fail("a number")),
            Type::NUMERIC => text
                .filter(|t| is_decimal(t))
                .map(Param::Numeric)
                .ok_or_else(|| fail("a decimal number")),
            Type::JSON | Type::JSONB => Ok(Param::Json(value.clone())),
            Type::DATE => text
                .and_then(|t| t.parse().ok())
                .map(Param::Date)
                .ok_or_else(|| fail("a date such as 2026-01-31")),
            Type::TIMESTAMP => text
                .and_then(|t| t.parse().ok())
                .map(Param::DateTime)
                .ok_or_else(|| fail("a timestamp such as 2026-01-31T12:00:00")),
            Type::TIMESTAMPTZ => text
                .and_then(|t| t.parse().ok())
                .map(Param::Timestamp)
                .ok_or_else(|| fail("a timestamp with offset such as 2026-01-31T12:00:00Z")),
            Type::UUID => text
                .and_then(|t| parse_uuid(&t))
                .map(Param::Uuid)
                .ok_or_else(|| fail("a UUID")),
            _ if is_text(base) => text.map(Param::Text).ok_or_else(|| fail("a string")),
            _ => Err(fail("a value of a type pgmcp can bind")),
        }
    }
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let mut parts = digits.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next().unwrap_or("");
    !(int.is_empty() && frac.is_empty())
        && int.chars().all(|c| c.is_ascii_digit())
        && frac.chars().all(|c| c.is_ascii_digit())
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A decimal string in PostgreSQL's binary numeric form.
fn numeric_to_sql(text: &str, out: &mut BytesMut) {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let int = int.trim_start_matches('0');
    let dscale = frac.len();
    // Pad to whole base-10000 groups: the integer part on the left, the fraction on the right.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let all = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
    let mut groups: Vec<i16> = all
        .as_bytes()
        .chunks(4)
        .map(|c| {
            std::str::from_utf8(c)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if negative && !groups.is_empty() {
        NUMERIC_NEG
    } else {
        0
    });
    out.put_i16(dscale as i16);
    for g in groups {
        out.put_i16(g);
    }
}

impl Param {
    /// Writes the value in PostgreSQL's binary format for `ty` (a Bind message's parameter).
    pub fn encode(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<postgres_protocol::IsNull, BoxError> {
        Ok(match self.to_sql(ty, out)? {
            IsNull::Yes => postgres_protocol::IsNull::Yes,
            IsNull::No => postgres_protocol::IsNull::No,
        })
    }
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Param::Null => return Ok(IsNull::Yes),
            Param::Bool(b) => pg::bool_to_sql(*b, out),
            Param::Int(i) => match *ty {
                Type::INT2 => pg::int2_to_sql(i16::try_from(*i)?, out),
                Type::INT4 => pg::int4_to_sql(i32::try_from(*i)?, out),
                Type::OID => pg::oid_to_sql(u32::try_from(*i)?, out),
                _ => pg::int8_to_sql(*i, out),
            },
            Param::Float(f) => match *ty {
                Type::FLOAT4 => pg::float4_to_sql(*f as f32, out),
                _ => pg::float8_to_sql(*f, out),
            },
            Param::Numeric(text) => numeric_to_sql(text, out),
            Param::Text(text) => pg::text_to_sql(text, out),
            Param::Json(value) => {
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                serde_json::to_writer(out.writer(), value)?;
            }
            Param::Date(d) => return d.to_sql(ty, out),
            Param::DateTime(d) => return d.to_sql(ty, out),
            Param::Timestamp(t) => return t.to_sql(ty, out),
            Param::Uuid(u) => pg::uuid_to_sql(*u, out),
            Param::TextArray(items) => {
                let member = match ty.kind() {
                    Kind::Array(member) => member.clone(),
                    _ => Type::TEXT,
                };
                let dimension = pg::ArrayDimension {
                    len: i32::try_from(items.len())?,
                    lower_bound: 1,
                };
                pg::array_to_sql(
                    Some(dimension),
                    member.oid(),
                    items.iter(),
                    |item, buf| match item {
                        Some(text) => {
                            pg::text_to_sql(text, buf);
                            Ok(postgres_protocol::IsNull::No)
                        }
                        None => Ok(postgres_protocol::IsNull::Yes),
                    },
                    out,
                )?;
            }
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_written_as_the_json_of_their_decoded_value() {
        let mut encoded = BytesMut::new();
        let mut cases: Vec<(Type, Option<Vec<u8>>)> = vec![(Type::INT4, None)];
        for (ty, value) in [
            (Type::BOOL, Param::Bool(true)),
            (Type::INT2, Param::Int(-7)),
            (Type::INT4, Param::Int(i64::from(i32::MIN))),
            (Type::INT8, Param::Int(i64::MAX)),
            (Type::OID, Param::Int(4_000_000_000)),
            (
                Type::TEXT,
                Param::Text("tab\t \"quote\" \\ é \u{1}".to_owned()),
            ),
            (Type::NAME, Param::Text("pg_class".to_owned())),
            (Type::FLOAT8, Param::Float(0.1)),
            (Type::NUMERIC, Param::Numeric("12.340".to_owned())),
        ] {
            encoded.clear();
            value.encode(&ty, &mut encoded).unwrap();
            cases.push((ty, Some(encoded.to_vec())));
        }
        for (ty, raw) in cases {
            let mut written = Vec::new();
            let undecoded = write_cell(&ty, raw.as_deref(), &mut written).unwrap();
            let expected = match &raw {
                None => Value::Null,
                Some(raw) => decode(&ty, raw).unwrap().value,
            };
            assert!(!undecoded);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&expected).unwrap(),
                "{ty}"
            );
        }
    }

    fn roundtrip_numeric(text: &str) -> String {
        let mut buf = BytesMut::new();
        numeric_to_sql(text, &mut buf);
        numeric_to_string(&buf).unwrap()
    }

    #[test]
    fn numerics_survive_encoding_and_decoding() {
        for text in [
            "0",
            "1",
            "-1",
            "129.00",
            "0.0001",
            "-0.5",
            "12345678.9",
            "10000",
            "0.00000123",
            "99999999999999999999.12",
        ] {
            let expected = if text == "-0.5" {
                "-0.5".to_owned()
            } else {
                text.to_owned()
            };
            assert_eq!(roundtrip_numeric(text), expected, "{text}");
        }
    }

    #[test]
    fn decimals_become_numbers_when_exact() {
        assert_eq!(decimal_to_json("42"), serde_json::json!(42));
        assert_eq!(decimal_to_json("129.90"), serde_json::json!(129.9));
        assert_eq!(
            decimal_to_json("99999999999999999999.12"),
            serde_json::json!("99999999999999999999.12")
        );
        assert_eq!(decimal_to_json("NaN"), serde_json::json!("NaN"));
    }

    #[test]
    fn intervals_are_iso_8601_durations() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(3_723_500_000i64).to_be_bytes()); // 1h 2m 3.5s
        raw.extend_from_slice(&3i32.to_be_bytes());
        raw.extend_from_slice(&14i32.to_be_bytes());
        assert_eq!(interval(&raw).unwrap(), "P1Y2M3DT1H2M3.5S");
        assert_eq!(interval(&[0; 16]).unwrap(), "PT0S");
    }

    #[test]
    fn parameters_are_checked_against_their_type() {
        assert_eq!(
            Param::bind(1, &Type::INT8, &serde_json::json!(5)).unwrap(),
            Param::Int(5)
        );
        assert_eq!(
            Param::bind(1, &Type::INT8, &serde_json::json!("5")).unwrap(),
            Param::Int(5)
        );
        let err = Param::bind(2, &Type::INT4, &serde_json::json!("five")).unwrap_err();
        assert!(err.to_string().contains("$2 must be an integer"), "{err}");
        assert!(err.to_string().contains("int4"), "{err}");
        assert_eq!(
            Param::bind(1, &Type::TEXT, &serde_json::json!(7)).unwrap(),
            Param::Text("7".into())
        );
        assert!(matches!(
            Param::bind(
                1,
                &Type::TIMESTAMPTZ,
                &serde_json::json!("2026-06-01T12:00:00Z")
            ),
            Ok(Param::Timestamp(_))
        ));
        assert!(Param::bind(1, &Type::NUMERIC, &serde_json::json!("1e5")).is_err());
        assert_eq!(
            Param::bind(
                1,
                &Type::UUID,
                &serde_json::json!("00112233-4455-6677-8899-aabbccddeeff")
            )
            .map(|p| matches!(p, Param::Uuid(_))),
            Ok(true)
        );
    }

    #[test]
    fn arrays_keep_their_shape() {
        let flat = vec![1, 2, 3, 4, 5, 6].into_iter().map(Value::from);
        assert_eq!(
            nest(&[2, 3], &mut flat.into_iter()),
            serde_json::json!([[1, 2, 3], [4, 5, 6]])
        );
    }
}
