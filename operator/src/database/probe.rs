//! The read-only probe: what the role can effectively do, as PostgreSQL's own privilege
//! functions answer it (so PUBLIC grants and role memberships count), not what we granted.

use tokio_postgres::GenericClient;

/// Everything that lets the role write, in words naming the privilege and the object. Empty
/// means read-only.
pub async fn write_capabilities(
    client: &impl GenericClient,
    role: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let role = postgres_protocol::escape::escape_identifier(role);
    let mut found = Vec::new();
    if let Some(row) = client
        .query_opt(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls
             FROM pg_roles WHERE oid = to_regrole($1)",
            &[&role],
        )
        .await?
    {
        for (i, attribute) in [
            "SUPERUSER",
            "CREATEROLE",
            "CREATEDB",
            "REPLICATION",
            "BYPASSRLS",
        ]
        .iter()
        .enumerate()
        {
            if row.get::<_, bool>(i) {
                found.push(format!("has the {attribute} attribute"));
            }
        }
    }
    for row in client
        .query(
            "SELECT r.rolname FROM pg_roles r
             WHERE r.rolname IN ('pg_write_all_data', 'pg_write_server_files', 'pg_execute_server_program', 'azure_pg_admin')
               AND pg_has_role(to_regrole($1), r.oid, 'MEMBER')",
            &[&role],
        )
        .await?
    {
        found.push(format!("is a member of {}", row.get::<_, String>(0)));
    }
    for row in client
        .query(
            "SELECT n.nspname, c.relname, p.privilege
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                  unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(privilege)
             WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
               AND (has_table_privilege(to_regrole($1), c.oid, p.privilege)
                    OR (p.privilege IN ('INSERT', 'UPDATE', 'REFERENCES')
                        AND has_any_column_privilege(to_regrole($1), c.oid, p.privilege)))
             ORDER BY 1, 2, 3
             LIMIT 20",
            &[&role],
        )
        .await?
    {
        let (schema, table, privilege): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        found.push(format!("has {privilege} on table {schema}.{table}"));
    }
    for row in client
        .query(
            "SELECT n.nspname FROM pg_namespace n
             WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
               AND n.nspname NOT LIKE 'pg\\_temp\\_%'
               AND has_schema_privilege(to_regrole($1), n.oid, 'CREATE')
             ORDER BY 1",
            &[&role],
        )
        .await?
    {
        found.push(format!("can CREATE in schema {}", row.get::<_, String>(0)));
    }
    if client
        .query_one(
            "SELECT has_database_privilege(to_regrole($1), current_database(), 'CREATE')",
            &[&role],
        )
        .await?
        .get::<_, bool>(0)
    {
        found.push("can CREATE schemas in the database".to_owned());
    }
    Ok(found)
}
