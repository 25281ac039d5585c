//! Types that are not built in (enums, domains, arrays of those, extension types), as the
//! database describes them in `pg_type`: what the result columns and parameters of those types
//! are decoded and bound as.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use postgres_types::{Kind, Type};
use serde_json::Value;

/// Types that are not built in (enums, domains, arrays of those, extension types), by OID, as
/// the database described them; shared by the pool's connections.
#[derive(Debug, Default)]
pub struct TypeCache(RwLock<HashMap<u32, Type>>);

impl TypeCache {
    pub(crate) fn get(&self, oid: u32) -> Option<Type> {
        Type::from_oid(oid).or_else(|| {
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&oid)
                .cloned()
        })
    }

    pub(crate) fn insert(&self, ty: Type) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ty.oid(), ty);
    }
}

/// The statement describing the types `oids` (rows of [`PgType`]).
pub(crate) fn describe(oids: &[u32]) -> String {
    let list = oids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "SELECT t.oid::int8, t.typname::text, n.nspname::text, t.typtype::text, \
         t.typbasetype::int8, t.typelem::int8, t.typcategory::text \
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
         WHERE t.oid IN ({list})"
    )
}

/// A row of [`describe`].
pub(crate) struct PgType {
    pub(crate) oid: u32,
    name: String,
    schema: String,
    kind: String,
    base: u32,
    element: u32,
    category: String,
}

impl PgType {
    pub(crate) fn from_row(row: &[Value]) -> Option<PgType> {
        let [oid, name, schema, kind, base, element, category] = row else {
            return None;
        };
        let oid_of = |v: &Value| v.as_u64().and_then(|o| u32::try_from(o).ok());
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Some(PgType {
            oid: oid_of(oid)?,
            name: text(name)?,
            schema: text(schema)?,
            kind: text(kind)?,
            base: oid_of(base)?,
            element: oid_of(element)?,
            category: text(category)?,
        })
    }

    /// The type this one is built on: a domain's base, an array's element.
    pub(crate) fn dependency(&self) -> Option<u32> {
        match self.kind.as_str() {
            "d" => Some(self.base),
            _ if self.category == "A" && self.element != 0 => Some(self.element),
            _ => None,
        }
    }

    pub(crate) fn build(self, inner: Option<Type>) -> Type {
        let kind = match (self.kind.as_str(), inner) {
            ("e", _) => Kind::Enum(Vec::new()),
            ("p", _) => Kind::Pseudo,
            ("d", Some(base)) => Kind::Domain(base),
            (_, Some(element)) => Kind::Array(element),
            // Composites, ranges and base types of extensions: decoded by name or shown as hex.
            _ => Kind::Simple,
        };
        Type::new(self.name, self.oid, kind, self.schema)
    }
}
