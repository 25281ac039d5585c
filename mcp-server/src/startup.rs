//! Start-up self-check of the server's own role (layer one of the read-only defence): refuse to
//! serve as a superuser or as a role that can write to, or create in, what it exposes.

use serde_json::Value;

use crate::tools::Tools;

/// What makes a role unsafe to serve with, one sentence each; empty when it is safe.
pub async fn role_problems(tools: &Tools) -> Result<Vec<String>, String> {
    // Three independent queries, run at once: the server answers only after them.
    let role = tools.catalog_plain(
        "SELECT current_user::text, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls
             FROM pg_roles WHERE rolname = current_user",
        &[],
    );
    let writable = tools.catalog(
        "SELECT n.nspname || '.' || c.relname
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r','p','m','f') AND n.nspname NOT IN ('pg_catalog','information_schema')
               AND n.nspname NOT LIKE 'pg\\_%'
               AND ($1::bool OR n.nspname = ANY($2::text[]) OR (n.nspname || '.' || c.relname) = ANY($3::text[]))
               AND (pg_has_role(c.relowner, 'USAGE')
                    OR has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'))
             ORDER BY 1 LIMIT 5",
        &[],
    );
    let schemas = serde_json::json!(tools.scope.schemas());
    let params = [Value::Bool(tools.scope.is_unrestricted()), schemas];
    let creatable = tools.catalog_plain(
        "SELECT nspname::text FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog','information_schema') AND nspname NOT LIKE 'pg\\_%'
               AND ($1::bool OR nspname = ANY($2::text[])) AND has_schema_privilege(oid, 'CREATE')
             ORDER BY 1",
        &params,
    );
    let (role, writable, creatable) = futures::join!(role, writable, creatable);
    let role = role.map_err(|e| format!("failed to inspect the database role: {e}"))?;
    let mut problems = Vec::new();
    if let Some(row) = role.rows.rows.values().first() {
        let name = row[0].as_str().unwrap_or("?");
        for (i, what) in [
            (1, "a superuser"),
            (2, "allowed to create roles"),
            (3, "allowed to create databases"),
            (4, "allowed to bypass row-level security"),
        ] {
            if row[i] == Value::Bool(true) {
                problems.push(format!("role {name} is {what}"));
            }
        }
    }
    let writable = writable.map_err(|e| format!("failed to inspect table privileges: {e}"))?;
    for row in &writable.rows.rows.values() {
        problems.push(format!(
            "the role can write to or owns {}",
            row[0].as_str().unwrap_or("?")
        ));
    }
    let creatable = creatable.map_err(|e| format!("failed to inspect schema privileges: {e}"))?;
    for row in &creatable.rows.rows.values() {
        problems.push(format!(
            "the role can create objects in schema {}",
            row[0].as_str().unwrap_or("?")
        ));
    }
    Ok(problems)
}
