//! The read-only probe: what the role can effectively do, as PostgreSQL's own privilege
//! functions answer it (so PUBLIC grants and role memberships count), not what we granted.

use tokio_postgres::GenericClient;

use super::plan::{Object, Privilege};

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
