//! The catalog snapshot discovery answers from: every user relation, column and foreign key
//! of the database, read in one statement, kept in process and read again only when the
//! catalog changed.
//!
//! # Never stale
//!
//! A snapshot carries the catalog's *version* as of the statement that read it (one statement,
//! so one MVCC snapshot for the version and the data). Every discovery call first asks the
//! database for the current version, in one short statement that also reads the planner's row
//! estimates and sizes for the relations the answer shows (ANALYZE and VACUUM change them in
//! place, without a new version). If the version differs, the call reads the snapshot again
//! before answering. The version is:
//!
//! - **with the catalog tracker** (`crds/src/catalog_tracker.sql`, one table and two event triggers that
//!   record each DDL transaction in that transaction): the count and sum of its transaction
//!   ids, the tracker's triggers and whether they are enabled, and role memberships and
//!   attributes (GRANT of a role and ALTER ROLE are not DDL event triggers see). A few
//!   microseconds of PostgreSQL time whatever the catalog's size.
//! - **without it**: the count and sum of `xmin` of every catalog table a snapshot reads.
//!   Every insert, update and delete of a catalog row changes it; it reads those tables whole
//!   (about 10 ms per 1,000 tables; ~100 ms at 10,000, BENCHMARKS.md), which is what the
//!   tracker saves.
//!
//! A superuser can bypass event triggers (`session_replication_role = replica`, or
//! `event_triggers = off` on PostgreSQL 17+); DDL run that way is seen at the next tracked
//! change. Dropping or disabling a tracker trigger changes the version: the next call reads
//! the catalog again, and without the tracker.
//!
//! The snapshot holds every relation, readable or not; each call filters it by its own scope
//! (and, without `--grant`, by what the server's role may read), so one snapshot serves every
//! caller class.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Call, ToolError, Tools};
use crate::db::{Caps, DbError};
use crate::scope::Scope;

/// The SQL that installs the catalog tracker (the operator runs it; so do the tests and the
/// benchmark).
pub const TRACKER_SQL: &str = pgmcp_crds::config::CATALOG_TRACKER_SQL;

/// The roles whose privileges the server's role has (itself and every role it is a member
/// of), with the attributes and memberships that decide it: a GRANT of a role, or ALTER ROLE,
/// is no DDL an event trigger sees, and roles elsewhere in the cluster do not matter.
macro_rules! roles {
    () => {
        "(SELECT count(*) || ':' || coalesce(sum(hashtext(r.oid::text || r.rolname || r.rolinherit::text
                   || r.rolsuper::text || r.rolbypassrls::text)::bigint), 0)
            FROM pg_roles r WHERE pg_has_role(current_user, r.oid, 'MEMBER')),
    (SELECT count(*) || ':' || coalesce(sum(hashtext(m::text)::bigint), 0)
       FROM pg_auth_members m WHERE pg_has_role(current_user, m.member, 'MEMBER'))"
    };
}

/// The version with the tracker: its record, its triggers, role memberships and attributes.
const TRACKED_VERSION: &str = concat!("concat_ws('/', 'tracked',
    (SELECT count(*) || ':' || coalesce(sum(xid::text::numeric), 0) FROM pgmcp.catalog_changes),
    (SELECT string_agg(evtname::text || evtenabled::text, ',' ORDER BY evtname) FROM pg_event_trigger
      WHERE evtname LIKE 'pgmcp\\_catalog\\_%'),
    ", roles!(), ")");

/// The version without the tracker: every catalog table the snapshot reads.
const FINGERPRINT_VERSION: &str = concat!(
    "concat_ws('/', 'fingerprint',
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_class),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_namespace),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_attribute),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_type),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_description),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_constraint),
    (SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0) FROM pg_event_trigger),
    ",
    roles!(),
    ")"
);

/// Whether the tracker is installed, enabled and readable by this role.
const TRACKER_USABLE: &str = "coalesce(to_regclass('pgmcp.catalog_changes') IS NOT NULL
    AND has_table_privilege('pgmcp.catalog_changes', 'SELECT')
    AND (SELECT count(*) FROM pg_event_trigger
          WHERE evtname IN ('pgmcp_catalog_ddl', 'pgmcp_catalog_drop') AND evtenabled IN ('O', 'A')) = 2, false)";

const USER_RELATIONS: &str = "c.relkind IN ('r','p','v','m','f') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
     AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Row estimate and size of relation `c` (see `catalog.rs` for why page counts).
const STATS: &str = "CASE WHEN c.relkind IN ('r','p','m') AND c.reltuples >= 0
          THEN c.reltuples::bigint END,
     CASE WHEN c.relkind IN ('v') THEN NULL
          WHEN c.reltuples >= 0 OR c.relpages > 0 THEN (c.relpages::bigint
            + coalesce((SELECT t.relpages FROM pg_class t WHERE t.oid = c.reltoastrelid), 0)
            + coalesce((SELECT sum(i.relpages) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                         WHERE x.indrelid = c.oid), 0))::bigint * current_setting('block_size')::bigint
          ELSE pg_total_relation_size(c.oid) END";

/// One statement: the version, then the schemas, relations, columns and foreign keys.
fn build_sql(version: &str) -> String {
    let action = |col: &str| {
        format!(
            "CASE {col} WHEN 'a' THEN 'NO ACTION' WHEN 'r' THEN 'RESTRICT' WHEN 'c' THEN 'CASCADE' \
             WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' END"
        )
    };
    let columns = |key: &str, rel: &str| {
        format!(
            "(SELECT array_agg(a.attname::text ORDER BY k.ord) FROM unnest(con.{key}) WITH ORDINALITY k(num, ord)
               JOIN pg_attribute a ON a.attrelid = con.{rel} AND a.attnum = k.num)"
        )
    };
    format!(
        "SELECT {version} AS version, current_user::text AS role,
           to_json(current_schemas(false)::text[]) AS search_path,
           (SELECT coalesce(json_agg(json_build_array(n.oid::int8, n.nspname, quote_ident(n.nspname),
                   d.description, has_schema_privilege(n.oid, 'USAGE'))), '[]')
              FROM pg_namespace n
              LEFT JOIN pg_description d ON d.objoid = n.oid
                   AND d.classoid = 'pg_catalog.pg_namespace'::regclass AND d.objsubid = 0
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
          ) AS schemas,
           (SELECT coalesce(json_agg(json_build_array(c.oid::int8, c.relnamespace::int8, c.relname,
                   c.relkind, d.description, has_any_column_privilege(c.oid, 'SELECT'), {STATS})), '[]')
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_description d ON d.objoid = c.oid
                   AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
             WHERE {USER_RELATIONS}
          ) AS relations,
           (SELECT coalesce(json_agg(json_build_array(a.attrelid::int8, a.attname,
                   format_type(a.atttypid, a.atttypmod), d.description) ORDER BY a.attrelid, a.attnum), '[]')
              FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_description d ON d.objoid = c.oid
                   AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = a.attnum
             WHERE {USER_RELATIONS} AND a.attnum > 0 AND NOT a.attisdropped
          ) AS columns,
           (SELECT coalesce(json_agg(json_build_array(con.conname, con.conrelid::int8, con.confrelid::int8,
                   {from_cols}, {to_cols}, {on_update}, {on_delete})), '[]')
              FROM pg_constraint con WHERE con.contype = 'f'
          ) AS foreign_keys",
        from_cols = columns("conkey", "conrelid"),
        to_cols = columns("confkey", "confrelid"),
        on_update = action("con.confupdtype"),
        on_delete = action("con.confdeltype"),
    )
}

/// The version, and the row estimates (and sizes, `with_size`) of the relations `$1` (oids,
/// comma-separated).
fn check_sql(version: &str, with_size: bool) -> String {
    let stats = if with_size {
        STATS
    } else {
        "CASE WHEN c.relkind IN ('r','p','m') AND c.reltuples >= 0 THEN c.reltuples::bigint END, NULL::int8"
    };
    format!(
        "SELECT {version} AS version,
           (SELECT coalesce(json_agg(json_build_array(c.oid::int8, {stats})), '[]')
              FROM unnest(string_to_array($1::text, ',')::oid[]) o(oid)
              JOIN pg_class c ON c.oid = o.oid) AS stats"
    )
}

/// A schema of the database.
#[derive(Debug, Clone)]
pub struct Schema {
    pub name: Arc<str>,
    /// The name as an SQL identifier (quoted where it must be).
    pub ident: String,
    pub comment: Option<String>,
    /// Whether the server's role has USAGE on it.
    pub usage: bool,
}

/// A table, view, materialized view or foreign table.
#[derive(Debug, Clone)]
pub struct Relation {
    pub oid: u32,
    pub schema: Arc<str>,
    /// Index of its schema in [`Snapshot::schemas`].
    pub schema_index: usize,
    pub name: String,
    pub kind: &'static str,
    pub comment: Option<String>,
    /// The comment's first sentence ([`super::page::first_sentence`]): the compact listings'.
    pub short_comment: Option<String>,
    /// Whether the server's role may read it: USAGE on its schema and SELECT on a column.
    pub readable: bool,
    pub row_estimate: Option<i64>,
    pub size_bytes: Option<i64>,
    /// Its columns, as a range of [`Snapshot::columns`].
    pub columns: std::ops::Range<usize>,
    /// Name and comment in lower case, for `pattern` and `search_objects`.
    pub(crate) haystack: String,
}

/// A column of a relation.
#[derive(Debug, Clone)]
pub struct Column {
    pub relation: usize,
    pub name: String,
    pub type_name: String,
    pub comment: Option<String>,
    pub(crate) haystack: String,
}

/// A foreign key between two relations (indexes into [`Snapshot::relations`]).
#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub name: String,
    pub from: usize,
    pub to: usize,
    pub from_columns: Vec<String>,
    pub to_columns: Vec<String>,
    pub on_update: String,
    pub on_delete: String,
}

/// What `describe_table` reads of a relation beyond the snapshot: its columns' defaults and
/// nullability, primary key, indexes, checks and a view's SQL.
#[derive(Debug, Clone)]
pub struct Details {
    pub columns: Vec<crate::db::Column>,
    /// One row per column: name, type, nullable, default, comment.
    pub rows: Vec<Vec<Value>>,
    pub elapsed_ms: u64,
    pub primary_key: Vec<String>,
    pub indexes: Vec<Value>,
    pub check_constraints: Vec<Value>,
    pub view_definition: Option<String>,
}

/// The relations a scope shows (in one schema, or all), in the snapshot's order: what
/// `list_tables` pages through, kept with the snapshot so that a page costs a binary search
/// for the cursor rather than a pass over every relation.
#[derive(Debug)]
pub struct Listing {
    /// Indexes into [`Snapshot::relations`].
    pub relations: Vec<usize>,
    /// How many schemas they are in.
    pub schemas: usize,
    /// What exists there that the server's role cannot read (without grants).
    pub not_readable: Option<super::page::NotReadable>,
}

/// A scope (its grants, as text) and a schema.
type ListingKey = (String, Option<String>);

/// The catalog as one statement read it.
#[derive(Debug)]
pub struct Snapshot {
    pub version: String,
    /// Whether the version comes from the catalog tracker.
    pub tracked: bool,
    /// The server's role, for the GRANT statements an administrator would run.
    pub role: String,
    /// Sorted by name.
    pub schemas: Vec<Schema>,
    /// Sorted by schema, then name.
    pub relations: Vec<Relation>,
    /// Grouped by relation, in column order.
    pub columns: Vec<Column>,
    /// Sorted by from-schema, from-table, name.
    pub foreign_keys: Vec<ForeignKey>,
    by_oid: HashMap<u32, usize>,
    /// The schemas unqualified names resolve in, in order (`current_schemas(false)`).
    pub search_path: Vec<String>,
    /// [`Details`] of the relations described since it was read, by oid: as current as the
    /// snapshot, since a catalog change replaces it.
    details: std::sync::Mutex<HashMap<u32, Arc<Details>>>,
    /// [`Listing`]s by scope (its grants) and schema.
    listings: std::sync::Mutex<HashMap<ListingKey, Arc<Listing>>>,
    /// When the statement that read it was sent.
    read_at: Instant,
}

type SchemaRow = (u32, String, String, Option<String>, bool);
type RelationRow = (
    u32,
    u32,
    String,
    String,
    Option<String>,
    bool,
    Option<i64>,
    Option<i64>,
);
type ColumnRow = (u32, String, String, Option<String>);
type ForeignKeyRow = (
    String,
    u32,
    u32,
    Option<Vec<String>>,
    Option<Vec<String>>,
    String,
    String,
);

fn kind(relkind: &str) -> &'static str {
    match relkind {
        "v" => "view",
        "m" => "materialized_view",
        "f" => "foreign_table",
        _ => "table",
    }
}

fn parse<T: for<'de> Deserialize<'de>>(value: &Value, what: &str) -> Result<T, ToolError> {
    T::deserialize(value)
        .map_err(|err| ToolError::Internal(format!("failed to read the catalog's {what}: {err}")))
}

impl Snapshot {
    fn from_row(row: &[Value], tracked: bool, read_at: Instant) -> Result<Snapshot, ToolError> {
        let [
            version,
            role,
            search_path,
            schemas,
            relations,
            columns,
            foreign_keys,
        ] = row
        else {
            return Err(ToolError::Internal(
                "the catalog statement returned an unexpected row".to_owned(),
            ));
        };
        let mut schemas: Vec<SchemaRow> = parse(schemas, "schemas")?;
        schemas.sort_by(|a, b| a.1.cmp(&b.1));
        let schema_index: HashMap<u32, usize> =
            schemas.iter().enumerate().map(|(i, s)| (s.0, i)).collect();
        let schemas: Vec<Schema> = schemas
            .into_iter()
            .map(|(_, name, ident, comment, usage)| Schema {
                name: name.into(),
                ident,
                comment,
                usage,
            })
            .collect();

        let rows: Vec<RelationRow> = parse(relations, "relations")?;
        let mut relations: Vec<Relation> = rows
            .into_iter()
            .filter_map(|(oid, nsp, name, relkind, comment, readable, rows, size)| {
                let index = *schema_index.get(&nsp)?;
                let schema = &schemas[index];
                let haystack = match &comment {
                    Some(c) => format!("{}\n{}", name.to_lowercase(), c.to_lowercase()),
                    None => name.to_lowercase(),
                };
                Some(Relation {
                    oid,
                    schema: schema.name.clone(),
                    schema_index: index,
                    readable: readable && schema.usage,
                    name,
                    kind: kind(&relkind),
                    short_comment: comment.as_deref().map(super::page::first_sentence),
                    comment,
                    row_estimate: rows,
                    size_bytes: size,
                    columns: 0..0,
                    haystack,
                })
            })
            .collect();
        relations.sort_by(|a, b| (&*a.schema, &a.name).cmp(&(&*b.schema, &b.name)));
        let by_oid: HashMap<u32, usize> = relations
            .iter()
            .enumerate()
            .map(|(i, r)| (r.oid, i))
            .collect();

        let rows: Vec<ColumnRow> = parse(columns, "columns")?;
        let mut columns: Vec<Column> = rows
            .into_iter()
            .filter_map(|(rel, name, type_name, comment)| {
                let relation = *by_oid.get(&rel)?;
                let haystack = match &comment {
                    Some(c) => format!("{}\n{}", name.to_lowercase(), c.to_lowercase()),
                    None => name.to_lowercase(),
                };
                Some(Column {
                    relation,
                    name,
                    type_name,
                    comment,
                    haystack,
                })
            })
            .collect();
        // Stable: each relation's columns stay in column order.
        columns.sort_by_key(|c| c.relation);
        let mut start = 0;
        while start < columns.len() {
            let relation = columns[start].relation;
            let end = start
                + columns[start..]
                    .iter()
                    .take_while(|c| c.relation == relation)
                    .count();
            relations[relation].columns = start..end;
            start = end;
        }

        let rows: Vec<ForeignKeyRow> = parse(foreign_keys, "foreign keys")?;
        let mut foreign_keys: Vec<ForeignKey> = rows
            .into_iter()
            .filter_map(|(name, from, to, from_columns, to_columns, upd, del)| {
                Some(ForeignKey {
                    name,
                    from: *by_oid.get(&from)?,
                    to: *by_oid.get(&to)?,
                    from_columns: from_columns.unwrap_or_default(),
                    to_columns: to_columns.unwrap_or_default(),
                    on_update: upd,
                    on_delete: del,
                })
            })
            .collect();
        foreign_keys.sort_by(|a, b| (a.from, &a.name).cmp(&(b.from, &b.name)));

        Ok(Snapshot {
            version: version.as_str().unwrap_or_default().to_owned(),
            tracked,
            role: role.as_str().unwrap_or_default().to_owned(),
            schemas,
            relations,
            columns,
            foreign_keys,
            by_oid,
            search_path: Vec::deserialize(search_path).unwrap_or_default(),
            details: std::sync::Mutex::default(),
            listings: std::sync::Mutex::default(),
            read_at,
        })
    }

    /// The relation `describe_table` means by `name` (and `schema`): among those `shown`, the
    /// one in the first schema of the search path that has it, else the first by schema name.
    pub fn find(
        &self,
        name: &str,
        schema: Option<&str>,
        shown: impl Fn(&Relation) -> bool,
    ) -> Option<usize> {
        if let Some(schema) = schema {
            let i = self
                .relations
                .binary_search_by(|r| (&*r.schema, r.name.as_str()).cmp(&(schema, name)))
                .ok()?;
            return shown(&self.relations[i]).then_some(i);
        }
        self.relations
            .iter()
            .enumerate()
            .filter(|(_, r)| r.name == name && shown(r))
            .min_by_key(|(_, r)| {
                let position = self.search_path.iter().position(|s| *s == *r.schema);
                (position.is_none(), position, r.schema.clone())
            })
            .map(|(i, _)| i)
    }

    /// The relations `scope` shows, in `schema` if given.
    pub fn listing(&self, scope: &Scope, schema: Option<&str>) -> Arc<Listing> {
        let key = (format!("{:?}", scope.grants()), schema.map(str::to_owned));
        if let Some(listing) = self.listings.lock().ok().and_then(|l| l.get(&key).cloned()) {
            return listing;
        }
        let in_schema = |r: &Relation| schema.is_none_or(|s| *r.schema == *s);
        let relations: Vec<usize> = self
            .relations
            .iter()
            .enumerate()
            .filter(|(_, r)| in_schema(r) && self.shows(scope, r))
            .map(|(i, _)| i)
            .collect();
        let mut schemas: Vec<usize> = relations
            .iter()
            .map(|&i| self.relations[i].schema_index)
            .collect();
        schemas.dedup();
        let listing = Arc::new(Listing {
            schemas: schemas.len(),
            relations,
            not_readable: super::catalog::not_readable(scope, self, in_schema),
        });
        if let Ok(mut listings) = self.listings.lock() {
            listings.insert(key, listing.clone());
        }
        listing
    }

    /// The details of relation `oid` read since this snapshot was.
    pub fn details(&self, oid: u32) -> Option<Arc<Details>> {
        self.details.lock().ok()?.get(&oid).cloned()
    }

    /// Keeps the details of relation `oid` with this snapshot.
    pub fn keep_details(&self, oid: u32, details: Arc<Details>) {
        if let Ok(mut kept) = self.details.lock() {
            kept.insert(oid, details);
        }
    }

    /// The index in [`Snapshot::relations`] of the relation with this oid.
    pub fn index_of(&self, oid: u32) -> Option<usize> {
        self.by_oid.get(&oid).copied()
    }

    /// Whether `relation` is shown to a call with `scope`: inside its grants or, without
    /// grants, readable by the server's role.
    pub fn shows(&self, scope: &Scope, relation: &Relation) -> bool {
        if scope.is_unrestricted() {
            relation.readable
        } else {
            scope.allows(&relation.schema, &relation.name)
        }
    }

    /// A short digest of the version, for cursors.
    pub fn digest(&self) -> String {
        let hash = Sha256::digest(self.version.as_bytes());
        hash[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The snapshot, shared by every call, and the lock one rebuild at a time holds.
#[derive(Debug, Default)]
pub struct Catalog {
    current: RwLock<Option<Arc<Snapshot>>>,
    rebuild: Mutex<()>,
    /// How many times the catalog was read.
    reads: std::sync::atomic::AtomicU64,
}

/// Row estimates and sizes read with the version, by oid.
pub type Stats = HashMap<u32, (Option<i64>, Option<i64>)>;

impl Catalog {
    fn current(&self) -> Option<Arc<Snapshot>> {
        self.current.read().ok().and_then(|s| s.clone())
    }

    fn set(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut current) = self.current.write() {
            *current = Some(snapshot);
        }
    }
}

fn stats(value: &Value) -> Stats {
    let rows: Vec<(u32, Option<i64>, Option<i64>)> = Vec::deserialize(value).unwrap_or_default();
    rows.into_iter().map(|(oid, r, s)| (oid, (r, s))).collect()
}

impl Tools {
    /// A current snapshot of the catalog and the fresh statistics of the relations `wanted`
    /// picks from it: one statement when the snapshot is current, else the snapshot is read
    /// again (its statistics are then current too).
    pub(crate) async fn snapshot<F>(
        &self,
        call: &Call,
        wanted: F,
    ) -> Result<(Arc<Snapshot>, Stats), ToolError>
    where
        F: Fn(&Snapshot) -> Vec<u32>,
    {
        self.snapshot_with(call, false, wanted).await
    }

    /// [`Tools::snapshot`], with the sizes of the relations too when `with_size`.
    pub(crate) async fn snapshot_with<F>(
        &self,
        call: &Call,
        with_size: bool,
        wanted: F,
    ) -> Result<(Arc<Snapshot>, Stats), ToolError>
    where
        F: Fn(&Snapshot) -> Vec<u32>,
    {
        let asked = Instant::now();
        if let Some(snapshot) = self.catalog.current()
            && let Some(stats) = self
                .check(call, &snapshot, &wanted(&snapshot), with_size)
                .await?
        {
            return Ok((snapshot, stats));
        }
        self.rebuild(call, asked).await
    }

    /// How many times this server read the catalog for its snapshot.
    pub fn catalog_reads(&self) -> u64 {
        self.catalog
            .reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the current catalog snapshot is checked with the catalog tracker (`None`
    /// before the first discovery call).
    pub fn catalog_tracked(&self) -> Option<bool> {
        self.catalog.current().map(|s| s.tracked)
    }

    /// The fresh statistics of `oids` if `snapshot` is current.
    async fn check(
        &self,
        call: &Call,
        snapshot: &Snapshot,
        oids: &[u32],
        with_size: bool,
    ) -> Result<Option<Stats>, ToolError> {
        let version = if snapshot.tracked {
            TRACKED_VERSION
        } else {
            FINGERPRINT_VERSION
        };
        let list = oids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let caps = Caps {
            max_rows: 1,
            max_bytes: usize::MAX,
        };
        let result = self
            .run_as(
                None,
                &call.cancel,
                &check_sql(version, with_size),
                &[Value::String(list)],
                caps,
                None,
                None,
            )
            .await;
        let rows = match result {
            Ok(rows) => rows,
            // The tracker went away: read the catalog again without it.
            Err(err) if snapshot.tracked && err.sqlstate() == Some("42P01") => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let row = rows.rows.values().into_iter().next().unwrap_or_default();
        if row.first().and_then(Value::as_str) != Some(snapshot.version.as_str()) {
            return Ok(None);
        }
        Ok(Some(row.get(1).map(stats).unwrap_or_default()))
    }

    /// Reads the catalog again, unless another call sent its read after `asked` (the moment
    /// this call began): that read saw every change committed before this call.
    async fn rebuild(
        &self,
        call: &Call,
        asked: Instant,
    ) -> Result<(Arc<Snapshot>, Stats), ToolError> {
        let _one_at_a_time = tokio::select! {
            guard = self.catalog.rebuild.lock() => guard,
            () = call.cancel.cancelled() => return Err(DbError::from(pgmcp_postgres_wire::Error::Cancelled).into()),
        };
        if let Some(current) = self.catalog.current()
            && current.read_at >= asked
        {
            return Ok((current, Stats::new()));
        }
        self.catalog
            .reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot = Arc::new(self.read_catalog().await?);
        self.catalog.set(snapshot.clone());
        Ok((snapshot, Stats::new()))
    }

    async fn read_catalog(&self) -> Result<Snapshot, ToolError> {
        let caps = Caps {
            max_rows: 1,
            max_bytes: usize::MAX,
        };
        // Shared by every call waiting for it: the caller that started it cannot cancel it.
        let uncancelled = CancellationToken::new();
        let probe = self
            .run_as(
                None,
                &uncancelled,
                &format!("SELECT {TRACKER_USABLE}"),
                &[],
                caps,
                None,
                None,
            )
            .await?;
        let tracked = probe
            .rows
            .values()
            .first()
            .and_then(|r| r.first())
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let version = if tracked {
            TRACKED_VERSION
        } else {
            FINGERPRINT_VERSION
        };
        let read_at = Instant::now();
        let rows = match self
            .run_as(
                None,
                &uncancelled,
                &build_sql(version),
                &[],
                caps,
                None,
                None,
            )
            .await
        {
            Ok(rows) => rows,
            // Dropped between the two statements.
            Err(err) if tracked && err.sqlstate() == Some("42P01") => {
                let rows = self
                    .run_as(
                        None,
                        &uncancelled,
                        &build_sql(FINGERPRINT_VERSION),
                        &[],
                        caps,
                        None,
                        None,
                    )
                    .await?;
                return Snapshot::from_row(
                    &rows.rows.values().into_iter().next().unwrap_or_default(),
                    false,
                    read_at,
                );
            }
            Err(err) => return Err(err.into()),
        };
        Snapshot::from_row(
            &rows.rows.values().into_iter().next().unwrap_or_default(),
            tracked,
            read_at,
        )
    }
}
