//! The read-only probe: everything the role can do beyond reading what the binding grants, as
//! PostgreSQL itself answers it (its privilege functions, so grants to PUBLIC and inherited
//! memberships count), each named with what gives it and how to take it away. Reads the catalog
//! only; never changes a privilege.
//!
//! Every role the role is a member of counts, inherited or not: a membership that does not
//! inherit (the NOINHERIT attribute; since PostgreSQL 16 also a grant `WITH INHERIT FALSE`) still
//! lets it `SET ROLE` and act as that role, and since 16 one with ADMIN OPTION alone lets it
//! grant that role to itself. So the privilege functions are asked for each of them ("reach").
//!
//! What it looks for, in one statement:
//!
//! ```text
//! attribute      SUPERUSER, CREATEROLE, CREATEDB, REPLICATION; BYPASSRLS (reads past row security)
//! class          (the login role) inheriting the privileges of a caller class role
//! member         pg_write_all_data, pg_write_server_files, pg_execute_server_program,
//!                pg_signal_backend, pg_signal_autovacuum_worker, pg_checkpoint, pg_maintain,
//!                pg_create_subscription, azure_pg_admin; pg_read_all_data,
//!                pg_read_server_files (read beyond the grants)
//! table          INSERT UPDATE DELETE TRUNCATE REFERENCES TRIGGER (MAINTAIN), columns included
//! sequence       USAGE, UPDATE (nextval, setval)
//! schema         CREATE
//! database       CREATE; TEMPORARY unless only PUBLIC's default gives it (see Findings)
//! large object   SELECT (reads beyond the grants), UPDATE; lo_compat_privileges = on
//! owner          any object in the database, or shared, owned by the role or a role it is a
//!                member of
//! definer        SECURITY DEFINER functions it can execute outside pg_catalog (they run with
//!                their owner's rights), except those listed in spec.access.functions
//! parameter      (PostgreSQL 15+) ALTER SYSTEM on any parameter; SET on one only superusers may
//!                set (lo_compat_privileges, session_replication_role, ...)
//! ```
//!
//! The binding's caller class roles are left out of what the login role reaches: the login role
//! is a member of each (the MCP server switches to it per request), and each class role is
//! probed on its own. What is checked instead is that the login role does not inherit them.
//!
//! Objects owned by the role (or a role it is a member of) are reported once, as owned, not again
//! for the privileges ownership brings. Each list stops at [`LIST_LIMIT`] entries and says how
//! many more there are.

use std::sync::LazyLock;

use pgmcp_crds::v1alpha1::AllowedFunction;
use postgres_protocol::escape::escape_identifier as quote;
use tokio_postgres::GenericClient;

use super::plan::{Object, Privilege};

/// Most entries of one kind named in a finding; the rest are counted.
pub const LIST_LIMIT: i64 = 10;

/// What the probe found. Empty `write` and `beyond_grants`: the role can only read what the
/// binding grants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    /// Ways the role can write or act on the server, one sentence each, naming the object,
    /// what gives it (an attribute, a membership, PUBLIC, ownership) and the fix.
    pub write: Vec<String>,
    /// Ways the role can read more than the binding grants, in the same form.
    pub beyond_grants: Vec<String>,
    /// The role can create temporary tables through PUBLIC's default TEMPORARY privilege on the
    /// database, and through nothing else. Every database grants it unless revoked, so it is
    /// not held against the role: the server's read-only transactions refuse CREATE anyway.
    pub temp_through_public: bool,
}

impl Findings {
    /// Whether nothing was found beyond reading the grants.
    pub fn is_read_only(&self) -> bool {
        self.write.is_empty() && self.beyond_grants.is_empty()
    }
}

/// Who holds a privilege for the role, as an array of the probe: PUBLIC (`NULL`), the role
/// itself (`''`) or the quoted name of a role it inherits from.
fn holders(alias: &str, privileges: &str) -> String {
    format!(
        "SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN NULL WHEN a.grantee = me.oid THEN ''
                                       ELSE quote_ident(pg_get_userbyid(a.grantee)) END) AS names
         FROM {alias}, unnest(x.acl) item, aclexplode(ARRAY[item]) a
         WHERE a.privilege_type = ANY({privileges}) AND (a.grantee = 0 OR a.grantee IN (SELECT oid FROM reach))"
    )
}

/// The probe in one statement: `$1` the quoted role, `$2`/`$3` the schemas and names of the
/// allowed SECURITY DEFINER functions. One row per finding: kind, object (as the message names
/// it), target (as REVOKE names it), privileges, holders (see [`holders`]), a detail, and how
/// many of that kind there are in all.
///
/// Whole ACLs are exploded one item at a time (`unnest`, then `aclexplode(ARRAY[item])`), and
/// only for the objects named: `aclexplode` of a long ACL (one entry per binding's role)
/// detoasts it again for every row. The privilege functions decide what is held.
static PROBE: LazyLock<String> = LazyLock::new(|| probe(false));

/// [`PROBE`] with the parameter privileges of PostgreSQL 15 and later (`pg_parameter_acl`, which
/// 14 does not have).
static PROBE_15: LazyLock<String> = LazyLock::new(|| probe(true));

fn probe(parameters: bool) -> String {
    let system = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'";
    let limit = LIST_LIMIT;
    let relation_holders = holders(
        "(SELECT c.relacl FROM pg_class c WHERE c.oid = t.oid
          UNION ALL SELECT att.attacl FROM pg_attribute att WHERE att.attrelid = t.oid AND att.attacl IS NOT NULL) x(acl)",
        "t.privileges",
    );
    let sequence_holders = holders(
        "(SELECT c.relacl FROM pg_class c WHERE c.oid = t.oid) x(acl)",
        "t.privileges",
    );
    let schema_holders = holders(
        "(SELECT coalesce(n.nspacl, acldefault('n', n.nspowner)) FROM pg_namespace n WHERE n.oid = t.oid) x(acl)",
        "ARRAY['CREATE']",
    );
    let database_holders = holders(
        "(SELECT coalesce(d.datacl, acldefault('d', d.datdba))) x(acl)",
        "ARRAY[p.privilege]",
    );
    let function_holders = holders(
        "(SELECT coalesce(p.proacl, acldefault('f', p.proowner)) FROM pg_proc p WHERE p.oid = t.oid) x(acl)",
        "ARRAY['EXECUTE']",
    );
    let parameter_holders = holders(
        "(SELECT pa.paracl FROM pg_parameter_acl pa WHERE pa.oid = t.oid) x(acl)",
        "t.privileges",
    );
    let parameters = if parameters {
        format!(
            r"
UNION ALL
(SELECT 'parameter', t.object, t.target, t.privileges, h.names, NULL, t.total
 FROM me CROSS JOIN (
   SELECT pa.oid, format('parameter %s', pa.parname) AS object, format('PARAMETER %s', pa.parname) AS target,
          array_agg(p.privilege ORDER BY p.privilege) AS privileges, count(*) OVER () AS total
   FROM pg_parameter_acl pa CROSS JOIN unnest(ARRAY['SET', 'ALTER SYSTEM']) AS p(privilege)
   WHERE (p.privilege = 'ALTER SYSTEM'
          OR EXISTS (SELECT FROM pg_settings s WHERE s.name = pa.parname AND s.context = 'superuser'))
     AND EXISTS (SELECT FROM reach r WHERE has_parameter_privilege(r.oid, pa.parname, p.privilege))
   GROUP BY pa.oid, pa.parname ORDER BY 2 LIMIT {limit}) t
 CROSS JOIN LATERAL ({parameter_holders}) h)"
        )
    } else {
        String::new()
    };
    format!(
        r"WITH RECURSIVE me AS (SELECT to_regrole($1) AS oid),
-- The binding's caller class roles ($4, quoted), probed on their own.
excluded AS (SELECT to_regrole(x) AS oid FROM unnest($4::text[]) AS x WHERE to_regrole(x) IS NOT NULL),
-- The role and every role it is a member of, whatever the membership's options, except the
-- caller class roles and what is reached only through them.
reach AS (SELECT me.oid FROM me WHERE me.oid IS NOT NULL
          UNION SELECT m.roleid FROM reach JOIN pg_auth_members m ON m.member = reach.oid
                WHERE m.roleid NOT IN (SELECT oid FROM excluded)),
allowed AS (SELECT a.schema, a.name FROM unnest($2::text[], $3::text[]) AS a(schema, name)),
db AS (SELECT d.oid, d.datname, d.datdba, d.datacl FROM pg_database d WHERE d.datname = current_database()),
-- Members of these predefined roles hold those privileges on every table: named once, as members.
everything AS (
  SELECT coalesce(to_regrole('pg_write_all_data') IN (SELECT oid FROM reach), false) AS writes,
         coalesce(to_regrole('pg_maintain') IN (SELECT oid FROM reach), false) AS maintains)
SELECT 'attribute'::text AS kind, x.attribute AS object, ''::text AS target, ARRAY[]::text[] AS privileges,
       ARRAY['']::text[] AS holders, NULL::text AS detail, 0::bigint AS total
FROM me JOIN pg_roles r ON r.oid = me.oid
  CROSS JOIN LATERAL (VALUES ('SUPERUSER', r.rolsuper), ('CREATEROLE', r.rolcreaterole), ('CREATEDB', r.rolcreatedb),
                             ('REPLICATION', r.rolreplication), ('BYPASSRLS', r.rolbypassrls)) AS x(attribute, held)
WHERE x.held
UNION ALL
-- holders: the role's own memberships that lead there
SELECT 'member', quote_ident(p.rolname), '', ARRAY[]::text[],
       ARRAY(SELECT DISTINCT quote_ident(pg_get_userbyid(m.roleid)) FROM pg_auth_members m
             WHERE m.member = me.oid AND m.roleid NOT IN (SELECT oid FROM excluded)
               AND pg_has_role(m.roleid, p.oid, 'MEMBER') ORDER BY 1),
       NULL, 0
FROM me CROSS JOIN pg_roles p
WHERE p.rolname IN ('pg_read_all_data', 'pg_read_server_files', 'pg_write_all_data', 'pg_write_server_files',
                    'pg_execute_server_program', 'pg_signal_backend', 'pg_signal_autovacuum_worker',
                    'pg_checkpoint', 'pg_maintain', 'pg_create_subscription', 'azure_pg_admin')
  AND p.oid IN (SELECT oid FROM reach)
UNION ALL
-- A caller class role whose privileges the role uses without SET ROLE; holders: the role's own
-- memberships in other roles that inherit it (none: its own membership in it inherits)
SELECT 'class', quote_ident(pg_get_userbyid(e.oid)), '', ARRAY[]::text[],
       ARRAY(SELECT DISTINCT quote_ident(pg_get_userbyid(m.roleid)) FROM pg_auth_members m
             WHERE m.member = me.oid AND m.roleid NOT IN (SELECT oid FROM excluded)
               AND pg_has_role(m.roleid, e.oid, 'USAGE') ORDER BY 1),
       NULL, 0
FROM me CROSS JOIN excluded e
WHERE pg_has_role(me.oid, e.oid, 'USAGE')
UNION ALL
(SELECT 'table', t.object, t.target, t.privileges, h.names, NULL, t.total
 FROM me CROSS JOIN (
   SELECT c.oid, format('table %I.%I', n.nspname, c.relname) AS object, format('TABLE %I.%I', n.nspname, c.relname) AS target,
          array_agg(p.privilege ORDER BY p.privilege) AS privileges, count(*) OVER () AS total
   FROM everything CROSS JOIN pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']
                       || CASE WHEN current_setting('server_version_num')::int >= 170000 THEN ARRAY['MAINTAIN'] ELSE ARRAY[]::text[] END) AS p(privilege)
   WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND {system}
     AND c.relowner NOT IN (SELECT oid FROM reach)
     AND NOT (everything.writes AND p.privilege IN ('INSERT', 'UPDATE', 'DELETE'))
     AND NOT (everything.maintains AND p.privilege = 'MAINTAIN')
     AND EXISTS (SELECT FROM reach r WHERE has_table_privilege(r.oid, c.oid, p.privilege)
          OR (p.privilege IN ('INSERT', 'UPDATE', 'REFERENCES') AND has_any_column_privilege(r.oid, c.oid, p.privilege)))
   GROUP BY c.oid, n.nspname, c.relname ORDER BY 2 LIMIT {limit}) t
 CROSS JOIN LATERAL ({relation_holders}) h)
UNION ALL
(SELECT 'sequence', t.object, t.target, t.privileges, h.names, NULL, t.total
 FROM me CROSS JOIN (
   SELECT c.oid, format('sequence %I.%I', n.nspname, c.relname) AS object, format('SEQUENCE %I.%I', n.nspname, c.relname) AS target,
          array_agg(p.privilege ORDER BY p.privilege) AS privileges, count(*) OVER () AS total
   FROM everything CROSS JOIN pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     CROSS JOIN unnest(ARRAY['USAGE', 'UPDATE']) AS p(privilege)
   WHERE c.relkind = 'S' AND {system}
     AND c.relowner NOT IN (SELECT oid FROM reach)
     AND NOT (everything.writes AND p.privilege = 'UPDATE')
     AND EXISTS (SELECT FROM reach r WHERE has_sequence_privilege(r.oid, c.oid, p.privilege))
   GROUP BY c.oid, n.nspname, c.relname ORDER BY 2 LIMIT {limit}) t
 CROSS JOIN LATERAL ({sequence_holders}) h)
UNION ALL
(SELECT 'schema', t.object, t.target, ARRAY['CREATE'], h.names, NULL, t.total
 FROM me CROSS JOIN (
   SELECT n.oid, format('schema %I', n.nspname) AS object, format('SCHEMA %I', n.nspname) AS target, count(*) OVER () AS total
   FROM pg_namespace n
   WHERE {system} AND n.nspowner NOT IN (SELECT oid FROM reach)
     AND EXISTS (SELECT FROM reach r WHERE has_schema_privilege(r.oid, n.oid, 'CREATE'))
   ORDER BY 2 LIMIT {limit}) t
 CROSS JOIN LATERAL ({schema_holders}) h)
UNION ALL
SELECT 'database', format('database %I', d.datname), format('DATABASE %I', d.datname), ARRAY[p.privilege], h.names, NULL, 1
FROM me CROSS JOIN db d CROSS JOIN unnest(ARRAY['CREATE', 'TEMPORARY']) AS p(privilege)
  CROSS JOIN LATERAL ({database_holders}) h
WHERE d.datdba NOT IN (SELECT oid FROM reach)
  AND EXISTS (SELECT FROM reach r WHERE has_database_privilege(r.oid, d.oid, p.privilege))
UNION ALL
-- No privilege function for large objects before PostgreSQL 17: their ACLs decide.
(SELECT 'large object', format('large object %s', t.oid), format('LARGE OBJECT %s', t.oid), t.privileges, t.names, NULL, t.total
 FROM (
   SELECT l.oid, array_agg(DISTINCT a.privilege_type) AS privileges,
          array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN NULL WHEN a.grantee = me.oid THEN ''
                                  ELSE quote_ident(pg_get_userbyid(a.grantee)) END) AS names,
          count(*) OVER () AS total
   FROM me CROSS JOIN pg_largeobject_metadata l, unnest(l.lomacl) item, aclexplode(ARRAY[item]) a
   WHERE a.privilege_type IN ('SELECT', 'UPDATE') AND l.lomowner NOT IN (SELECT oid FROM reach)
     AND (a.grantee = 0 OR a.grantee IN (SELECT oid FROM reach))
   GROUP BY l.oid ORDER BY l.oid LIMIT {limit}) t)
UNION ALL
SELECT 'lo_compat_privileges', '', '', ARRAY[]::text[], ARRAY[]::text[], NULL, 1
WHERE current_setting('lo_compat_privileges')::boolean
UNION ALL
-- holders: the role itself, or its own memberships that lead to the owner; detail: the owner
(SELECT 'owner', t.object, '', ARRAY[]::text[], t.via, t.owner, t.total
 FROM (
   SELECT i.type || ' ' || i.identity AS object, quote_ident(pg_get_userbyid(s.refobjid)) AS owner,
          CASE WHEN s.refobjid = me.oid THEN ARRAY['']
               ELSE ARRAY(SELECT DISTINCT quote_ident(pg_get_userbyid(m.roleid)) FROM pg_auth_members m
                          WHERE m.member = me.oid AND m.roleid NOT IN (SELECT oid FROM excluded)
                            AND pg_has_role(m.roleid, s.refobjid, 'MEMBER') ORDER BY 1) END AS via,
          count(*) OVER () AS total
   FROM me CROSS JOIN db CROSS JOIN pg_shdepend s
     CROSS JOIN LATERAL pg_identify_object(s.classid, s.objid, s.objsubid) i
   WHERE s.deptype = 'o' AND s.refclassid = 'pg_authid'::regclass AND s.dbid IN (0, db.oid)
     AND s.refobjid IN (SELECT oid FROM reach)
   ORDER BY 1 LIMIT {limit}) t)
UNION ALL
-- detail: the owner, then the entry of spec.access.functions that allows it
(SELECT 'definer', t.object, t.target, ARRAY['EXECUTE'], h.names, t.detail, t.total
 FROM me CROSS JOIN (
   SELECT p.oid, format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS object,
          format('ROUTINE %I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)) AS target,
          format('%s {{schema: %s, name: %s}}', quote_ident(pg_get_userbyid(p.proowner)), to_json(n.nspname::text), to_json(p.proname::text)) AS detail,
          count(*) OVER () AS total
   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE p.prosecdef AND {system}
     AND p.proowner NOT IN (SELECT oid FROM reach)
     AND EXISTS (SELECT FROM reach r
                 WHERE has_schema_privilege(r.oid, n.oid, 'USAGE') AND has_function_privilege(r.oid, p.oid, 'EXECUTE'))
     AND NOT EXISTS (SELECT FROM allowed WHERE allowed.schema = n.nspname AND allowed.name = p.proname)
   ORDER BY 2 LIMIT {limit}) t
 CROSS JOIN LATERAL ({function_holders}) h){parameters}"
    )
}

/// One row of [`PROBE`].
#[derive(Debug, Clone, PartialEq)]
struct Found {
    kind: String,
    object: String,
    target: String,
    privileges: Vec<String>,
    /// `None`: PUBLIC; `""`: the role itself; else a role it inherits from (quoted for SQL).
    holders: Vec<Option<String>>,
    detail: Option<String>,
    total: i64,
}

/// Everything that lets `role` write, or read more than the binding grants, with
/// `allowed` SECURITY DEFINER functions accepted.
///
/// `classes`: the binding's caller class roles, when `role` is the binding's login role. It is
/// a member of each so the MCP server can `SET LOCAL ROLE` to it; what a class role may do is
/// its own probe's to report, so those memberships are not followed here. That the role does
/// not *inherit* a class role's privileges (a statement that does not switch role would read
/// what the class reads) is checked instead, and reported as reading beyond its grants.
pub async fn read_only(
    client: &impl GenericClient,
    role: &str,
    allowed: &[AllowedFunction],
    classes: &[String],
) -> Result<Findings, tokio_postgres::Error> {
    let schemas: Vec<&str> = allowed.iter().map(|f| f.schema.as_str()).collect();
    let names: Vec<&str> = allowed.iter().map(|f| f.name.as_str()).collect();
    let classes: Vec<String> = classes.iter().map(|c| quote(c)).collect();
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let probe = if version >= 150_000 {
        &PROBE_15
    } else {
        &PROBE
    };
    let rows = client
        .query(probe.as_str(), &[&quote(role), &schemas, &names, &classes])
        .await?;
    let found = rows
        .iter()
        .map(|row| Found {
            kind: row.get(0),
            object: row.get(1),
            target: row.get(2),
            privileges: row.get(3),
            holders: row
                .get::<_, Option<Vec<Option<String>>>>(4)
                .unwrap_or_default(),
            detail: row.get(5),
            total: row.get(6),
        })
        .collect();
    Ok(judge(role, found))
}

/// What the predefined and provider roles the probe looks for let their members do.
fn powers(role: &str) -> (&'static str, bool) {
    // (what it does, whether that is reading beyond the grants rather than writing)
    match role {
        "pg_read_all_data" => ("reads every table", true),
        "pg_read_server_files" => ("reads files on the database server", true),
        "pg_write_all_data" => ("writes every table", false),
        "pg_write_server_files" => ("writes files on the database server", false),
        "pg_execute_server_program" => ("runs programs on the database server", false),
        "pg_signal_backend" => ("cancels and terminates other sessions", false),
        "pg_signal_autovacuum_worker" => ("cancels and terminates autovacuum workers", false),
        "pg_checkpoint" => ("runs CHECKPOINT", false),
        "pg_maintain" => (
            "runs VACUUM, ANALYZE, REINDEX, CLUSTER, REFRESH MATERIALIZED VIEW and LOCK TABLE on every table",
            false,
        ),
        "pg_create_subscription" => ("creates subscriptions, which write replicated rows", false),
        "azure_pg_admin" => ("administers the server on Azure", false),
        _ => ("has privileges beyond reading", false),
    }
}

/// "PUBLIC and role writers", as the holders read in a sentence.
fn through(holders: &[Option<String>]) -> String {
    let mut public = false;
    let mut itself = false;
    let mut roles = Vec::new();
    for holder in holders {
        match holder.as_deref() {
            None => public = true,
            Some("") => itself = true,
            Some(role) => roles.push(role),
        }
    }
    let mut parts = Vec::new();
    if public {
        parts.push("PUBLIC".to_owned());
    }
    if itself {
        parts.push("a grant to the role itself".to_owned());
    }
    match roles.as_slice() {
        [] => {}
        [one] => parts.push(format!("role {one}")),
        many => parts.push(format!("roles {}", many.join(", "))),
    }
    parts.join(" and ")
}

/// The holders as REVOKE names them: `PUBLIC, writers, "shop_r"`.
fn grantees(holders: &[Option<String>], role: &str) -> String {
    let mut names: Vec<String> = holders
        .iter()
        .map(|holder| match holder.as_deref() {
            None => "PUBLIC".to_owned(),
            Some("") => quote(role),
            Some(other) => other.to_owned(),
        })
        .collect();
    names.sort_by_key(|name| name != "PUBLIC");
    names.join(", ")
}

/// How the remaining entries of a kind are counted.
fn more(kind: &str, count: i64) -> String {
    let what = match kind {
        "table" => "tables it can write to",
        "sequence" => "sequences it can advance or set",
        "schema" => "schemas it can create objects in",
        "large object" => "large objects it can read or write",
        "owner" => "objects it owns",
        "definer" => "SECURITY DEFINER functions it can execute",
        "parameter" => "parameters it can set or change with ALTER SYSTEM",
        _ => "more of the same",
    };
    format!("and {count} more {what}")
}

/// Turns the probe's rows into sentences: what, on which object, through what, and the fix.
fn judge(role: &str, found: Vec<Found>) -> Findings {
    let mut findings = Findings::default();
    let who = quote(role);
    if found
        .iter()
        .any(|f| f.kind == "attribute" && f.object == "SUPERUSER")
    {
        // A superuser can do everything; the rest would only repeat it.
        findings.write.push(format!(
            "has the SUPERUSER attribute, which bypasses every privilege check (ALTER ROLE {who} NOSUPERUSER)"
        ));
        return findings;
    }
    let mut shown: Vec<(&str, i64, bool)> = Vec::new();
    for f in &found {
        let privileges = f.privileges.join(", ");
        let (sentence, beyond) = match f.kind.as_str() {
            "attribute" if f.object == "BYPASSRLS" => (
                format!(
                    "has the BYPASSRLS attribute, so row-level security does not filter what it reads (ALTER ROLE {who} NOBYPASSRLS)"
                ),
                true,
            ),
            "attribute" => (
                format!(
                    "has the {} attribute (ALTER ROLE {who} NO{})",
                    f.object, f.object
                ),
                false,
            ),
            "member" => {
                let (what, beyond) = powers(&f.object);
                let parents: Vec<&str> = f.holders.iter().flatten().map(String::as_str).collect();
                let path = if parents == [f.object.as_str()] {
                    String::new()
                } else {
                    let via: Vec<String> = parents
                        .iter()
                        .map(|p| {
                            if *p == f.object {
                                "directly".to_owned()
                            } else {
                                format!("role {p}")
                            }
                        })
                        .collect();
                    format!(", through {}", via.join(" and "))
                };
                (
                    format!(
                        "is a member of {}, which {what}{path} (REVOKE {} FROM {who})",
                        f.object,
                        parents.join(", ")
                    ),
                    beyond,
                )
            }
            "class" => {
                let parents: Vec<&str> = f.holders.iter().flatten().map(String::as_str).collect();
                let (path, fix) = if parents.is_empty() {
                    (
                        " through its own membership in it".to_owned(),
                        format!(
                            "GRANT {} TO {who} WITH INHERIT FALSE, or ALTER ROLE {who} NOINHERIT before PostgreSQL 16",
                            f.object
                        ),
                    )
                } else {
                    (
                        format!(" through role {}", parents.join(" and role ")),
                        format!("REVOKE {} FROM {who}", parents.join(", ")),
                    )
                };
                (
                    format!(
                        "inherits the privileges of caller class role {}{path}, so a statement that does not switch role reads what the class reads ({fix})",
                        f.object
                    ),
                    true,
                )
            }
            "database" if f.privileges == ["TEMPORARY"] => {
                // PUBLIC's TEMPORARY is every database's default: not held against the role.
                findings.temp_through_public |= f.holders.contains(&None);
                let others: Vec<Option<String>> =
                    f.holders.iter().filter(|h| h.is_some()).cloned().collect();
                if others.is_empty() {
                    continue;
                }
                (
                    format!(
                        "has TEMPORARY on {} through {}, so it can create temporary tables (REVOKE TEMPORARY ON {} FROM {})",
                        f.object,
                        through(&others),
                        f.target,
                        grantees(&others, role)
                    ),
                    false,
                )
            }
            "lo_compat_privileges" => (
                "can read and write every large object, because lo_compat_privileges is on (ALTER SYSTEM SET lo_compat_privileges = off, then SELECT pg_reload_conf())".to_owned(),
                false,
            ),
            "owner" => {
                let owner = f.detail.as_deref().unwrap_or_default();
                if f.holders.iter().any(|h| h.as_deref() == Some("")) {
                    (
                        format!(
                            "owns {}, which lets it change or drop it (REASSIGN OWNED BY {who} TO another role)",
                            f.object
                        ),
                        false,
                    )
                } else {
                    let parents: Vec<&str> =
                        f.holders.iter().flatten().map(String::as_str).collect();
                    let path = if parents == [owner] {
                        String::new()
                    } else {
                        format!(" through role {}", parents.join(" and role "))
                    };
                    (
                        format!(
                            "owns {} through role {owner}, its owner, of which it is a member{path} (REVOKE {} FROM {who})",
                            f.object,
                            parents.join(", ")
                        ),
                        false,
                    )
                }
            }
            "definer" => {
                let detail = f.detail.as_deref().unwrap_or_default();
                let (owner, entry) = detail.split_once(' ').unwrap_or((detail, ""));
                (
                    format!(
                        "can execute SECURITY DEFINER function {} through {}: it runs with the rights of its owner {owner}, so one call can read what the binding does not grant (if agents may call it, list {entry} in spec.access.functions; otherwise REVOKE EXECUTE ON {} FROM {})",
                        f.object,
                        through(&f.holders),
                        f.target,
                        grantees(&f.holders, role)
                    ),
                    true,
                )
            }
            // table, sequence, schema, database CREATE, large object
            _ => {
                let beyond = f.kind == "large object" && f.privileges == ["SELECT"];
                let sentence = if f.holders.is_empty() {
                    format!(
                        "has {privileges} on {} through a predefined role named here",
                        f.object
                    )
                } else {
                    format!(
                        "has {privileges} on {} through {} (REVOKE {privileges} ON {} FROM {})",
                        f.object,
                        through(&f.holders),
                        f.target,
                        grantees(&f.holders, role)
                    )
                };
                (sentence, beyond)
            }
        };
        if beyond {
            findings.beyond_grants.push(sentence);
        } else {
            findings.write.push(sentence);
        }
        match shown.iter_mut().find(|(kind, _, _)| *kind == f.kind) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 = beyond;
            }
            None => shown.push((&f.kind, 1, beyond)),
        }
    }
    for f in &found {
        let Some(entry) = shown.iter_mut().find(|(kind, _, _)| *kind == f.kind) else {
            continue;
        };
        let (kind, count, beyond) = *entry;
        if f.total > count {
            let sentence = more(kind, f.total - count);
            if beyond {
                findings.beyond_grants.push(sentence);
            } else {
                findings.write.push(sentence);
            }
            // Counted once per kind.
            entry.1 = f.total;
        }
    }
    findings
}

/// Whether the current user (the operator's admin) may grant `privilege` (owner, superuser, or
/// holder WITH GRANT OPTION; for default privileges, a member of the owner), and whether `role`
/// already holds it effectively (through PUBLIC or a membership too). Asked of PostgreSQL's own
/// privilege functions.
pub async fn grantable(
    client: &impl GenericClient,
    role: &str,
    privilege: &Privilege,
) -> Result<(bool, bool), tokio_postgres::Error> {
    let quote = postgres_protocol::escape::escape_identifier;
    let keyword = privilege.keyword.to_owned();
    let with_grant = format!("{keyword} WITH GRANT OPTION");
    let role = role.to_owned();
    // Parameters: the object as the function reads it, the privilege WITH GRANT OPTION (asked
    // for the current user), the role, the privilege.
    let (sql, params): (&str, Vec<String>) = match &privilege.object {
        Object::Database(name) => (
            "SELECT has_database_privilege($1::text, $2::text), has_database_privilege($3::name, $1::text, $4::text)",
            vec![name.clone(), with_grant, role, keyword],
        ),
        Object::Schema(name) => (
            "SELECT has_schema_privilege($1::text, $2::text), has_schema_privilege($3::name, $1::text, $4::text)",
            vec![name.clone(), with_grant, role, keyword],
        ),
        Object::Table { schema, name } => (
            "SELECT has_table_privilege($1::text, $2::text), has_table_privilege($3::name, $1::text, $4::text)",
            vec![
                format!("{}.{}", quote(schema), quote(name)),
                with_grant,
                role,
                keyword,
            ],
        ),
        Object::Sequence { schema, name } => (
            "SELECT has_sequence_privilege($1::text, $2::text), has_sequence_privilege($3::name, $1::text, $4::text)",
            vec![
                format!("{}.{}", quote(schema), quote(name)),
                with_grant,
                role,
                keyword,
            ],
        ),
        Object::Column {
            schema,
            table,
            column,
        } => (
            "SELECT has_column_privilege($1::text, $5::text, $2::text), has_column_privilege($3::name, $1::text, $5::text, $4::text)",
            vec![
                format!("{}.{}", quote(schema), quote(table)),
                with_grant,
                role,
                keyword,
                column.clone(),
            ],
        ),
        // ALTER DEFAULT PRIVILEGES FOR ROLE owner needs membership in owner.
        Object::DefaultTables { owner, .. } => (
            "SELECT pg_has_role(current_user, $1::text::name, 'MEMBER'), false",
            vec![owner.clone()],
        ),
    };
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let row = client.query_one(sql, &params).await?;
    Ok((row.get(0), row.get(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        kind: &str,
        object: &str,
        target: &str,
        privileges: &[&str],
        holders: &[Option<&str>],
        detail: Option<&str>,
        total: i64,
    ) -> Found {
        Found {
            kind: kind.to_owned(),
            object: object.to_owned(),
            target: target.to_owned(),
            privileges: privileges.iter().map(|p| (*p).to_owned()).collect(),
            holders: holders.iter().map(|h| h.map(str::to_owned)).collect(),
            detail: detail.map(str::to_owned),
            total,
        }
    }

    #[test]
    fn each_finding_names_the_object_what_gives_it_and_the_fix() {
        let found = vec![
            row("attribute", "CREATEDB", "", &[], &[Some("")], None, 0),
            row("attribute", "BYPASSRLS", "", &[], &[Some("")], None, 0),
            row(
                "member",
                "pg_read_all_data",
                "",
                &[],
                &[Some("pg_read_all_data")],
                None,
                0,
            ),
            row(
                "member",
                "pg_signal_backend",
                "",
                &[],
                &[Some("ops")],
                None,
                0,
            ),
            row(
                "table",
                "table public.orders",
                "TABLE public.orders",
                &["INSERT", "UPDATE (total)"],
                &[None, Some("ops")],
                None,
                1,
            ),
            row(
                "schema",
                "schema hr",
                "SCHEMA hr",
                &["CREATE"],
                &[None],
                None,
                1,
            ),
            row(
                "database",
                "database shop",
                "DATABASE shop",
                &["TEMPORARY"],
                &[Some("ops"), None],
                None,
                1,
            ),
            row(
                "large object",
                "large object 4242",
                "LARGE OBJECT 4242",
                &["SELECT"],
                &[None],
                None,
                2,
            ),
            row(
                "large object",
                "large object 4243",
                "LARGE OBJECT 4243",
                &["SELECT", "UPDATE"],
                &[Some("")],
                None,
                2,
            ),
            row(
                "owner",
                "type public.mood",
                "",
                &[],
                &[Some("")],
                Some("\"shop_r\""),
                2,
            ),
            row(
                "owner",
                "table hr.salaries",
                "",
                &[],
                &[Some("staff")],
                Some("owners"),
                2,
            ),
            row(
                "definer",
                "public.salary_of(integer)",
                "ROUTINE public.salary_of(integer)",
                &["EXECUTE"],
                &[None],
                Some("postgres {schema: \"public\", name: \"salary_of\"}"),
                1,
            ),
        ];
        let findings = judge("shop_r", found);
        assert_eq!(
            findings.write,
            [
                "has the CREATEDB attribute (ALTER ROLE \"shop_r\" NOCREATEDB)",
                "is a member of pg_signal_backend, which cancels and terminates other sessions, through role ops (REVOKE ops FROM \"shop_r\")",
                "has INSERT, UPDATE (total) on table public.orders through PUBLIC and role ops (REVOKE INSERT, UPDATE (total) ON TABLE public.orders FROM PUBLIC, ops)",
                "has CREATE on schema hr through PUBLIC (REVOKE CREATE ON SCHEMA hr FROM PUBLIC)",
                "has TEMPORARY on database shop through role ops, so it can create temporary tables (REVOKE TEMPORARY ON DATABASE shop FROM ops)",
                "has SELECT, UPDATE on large object 4243 through a grant to the role itself (REVOKE SELECT, UPDATE ON LARGE OBJECT 4243 FROM \"shop_r\")",
                "owns type public.mood, which lets it change or drop it (REASSIGN OWNED BY \"shop_r\" TO another role)",
                "owns table hr.salaries through role owners, its owner, of which it is a member through role staff (REVOKE staff FROM \"shop_r\")",
            ]
        );
        assert_eq!(
            findings.beyond_grants,
            [
                "has the BYPASSRLS attribute, so row-level security does not filter what it reads (ALTER ROLE \"shop_r\" NOBYPASSRLS)",
                "is a member of pg_read_all_data, which reads every table (REVOKE pg_read_all_data FROM \"shop_r\")",
                "has SELECT on large object 4242 through PUBLIC (REVOKE SELECT ON LARGE OBJECT 4242 FROM PUBLIC)",
                "can execute SECURITY DEFINER function public.salary_of(integer) through PUBLIC: it runs with the rights of its owner postgres, so one call can read what the binding does not grant (if agents may call it, list {schema: \"public\", name: \"salary_of\"} in spec.access.functions; otherwise REVOKE EXECUTE ON ROUTINE public.salary_of(integer) FROM PUBLIC)",
            ]
        );
        assert!(findings.temp_through_public);
    }

    #[test]
    fn inheriting_a_caller_class_role_is_reading_beyond_the_grants() {
        let found = vec![
            row("class", "shop_r__support", "", &[], &[], None, 0),
            row(
                "class",
                "shop_r__finance",
                "",
                &[],
                &[Some("staff")],
                None,
                0,
            ),
        ];
        let findings = judge("shop_r", found);
        assert!(findings.write.is_empty());
        assert_eq!(
            findings.beyond_grants,
            [
                "inherits the privileges of caller class role shop_r__support through its own membership in it, so a statement that does not switch role reads what the class reads (GRANT shop_r__support TO \"shop_r\" WITH INHERIT FALSE, or ALTER ROLE \"shop_r\" NOINHERIT before PostgreSQL 16)",
                "inherits the privileges of caller class role shop_r__finance through role staff, so a statement that does not switch role reads what the class reads (REVOKE staff FROM \"shop_r\")",
            ]
        );
    }

    #[test]
    fn temporary_tables_through_public_alone_are_noted_and_not_held_against_the_role() {
        let found = vec![row(
            "database",
            "database shop",
            "DATABASE shop",
            &["TEMPORARY"],
            &[None],
            None,
            1,
        )];
        let findings = judge("shop_r", found);
        assert!(findings.is_read_only(), "{findings:?}");
        assert!(findings.temp_through_public);
    }

    #[test]
    fn a_superuser_is_named_once_since_it_can_do_everything() {
        let found = vec![
            row("attribute", "SUPERUSER", "", &[], &[Some("")], None, 0),
            row(
                "schema",
                "schema hr",
                "SCHEMA hr",
                &["CREATE"],
                &[None],
                None,
                1,
            ),
        ];
        assert_eq!(
            judge("shop_r", found).write,
            [
                "has the SUPERUSER attribute, which bypasses every privilege check (ALTER ROLE \"shop_r\" NOSUPERUSER)"
            ]
        );
    }

    #[test]
    fn long_lists_name_the_first_entries_and_count_the_rest() {
        let found: Vec<Found> = (0..LIST_LIMIT)
            .map(|i| {
                row(
                    "definer",
                    &format!("public.f{i}()"),
                    &format!("ROUTINE public.f{i}()"),
                    &["EXECUTE"],
                    &[None],
                    Some("app {schema: \"public\", name: \"f\"}"),
                    35,
                )
            })
            .collect();
        let findings = judge("shop_r", found);
        assert_eq!(findings.beyond_grants.len(), 11);
        assert_eq!(
            findings.beyond_grants.last().unwrap(),
            "and 25 more SECURITY DEFINER functions it can execute"
        );
        assert!(findings.write.is_empty());
    }
}
