//! Reads what the database holds: schemas, relations and their owners, and every privilege the
//! role holds directly (`aclexplode` over `pg_database.datacl`, `pg_namespace.nspacl`,
//! `pg_class.relacl`, `pg_attribute.attacl` and `pg_default_acl`). Privileges that reach the
//! role through PUBLIC or role membership are not the role's own; the read-only probe in
//! [`super::probe`] checks the effective result instead.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::GenericClient;

use super::plan::{Catalog, Object, Privilege, Relation, keyword};

/// System schemas: never granted, never inspected.
const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

pub async fn read(
    client: &impl GenericClient,
    role: &str,
) -> Result<Catalog, tokio_postgres::Error> {
    let mut catalog = Catalog::default();
    for row in client
        .query(
            &format!("SELECT n.nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMAS}"),
            &[],
        )
        .await?
    {
        catalog.schemas.insert(row.get(0));
    }
    let relations = client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner)
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND {SYSTEM_SCHEMAS}
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await?;
    let mut by_schema: BTreeMap<String, Vec<Relation>> = BTreeMap::new();
    for row in relations {
        by_schema.entry(row.get(0)).or_default().push(Relation {
            name: row.get(1),
            owner: row.get(2),
        });
    }
    catalog.relations = by_schema;
    catalog.held = held(client, role).await?;
    Ok(catalog)
}

/// Every privilege granted to `role` itself in the current database (empty when the role does
/// not exist).
///
/// Each ACL is exploded one item at a time (`unnest`, then `aclexplode(ARRAY[item])`):
/// `aclexplode` of a whole ACL detoasts it again for every row it returns, so with one entry per
/// binding's role an ACL of 1,000 items cost ~10 ms per object and a reconcile's catalog read
/// grew with the square of the bindings on the server.
pub async fn held(
    client: &impl GenericClient,
    role: &str,
) -> Result<BTreeSet<Privilege>, tokio_postgres::Error> {
    let mut held = BTreeSet::new();
    let mut add = |object: Object, privilege: &str| {
        if let Some(keyword) = keyword(privilege) {
            held.insert(Privilege { object, keyword });
        }
    };
    for row in client
        .query(
            "SELECT d.datname, a.privilege_type
             FROM pg_database d, unnest(d.datacl) item, aclexplode(ARRAY[item]) a
             WHERE d.datname = current_database() AND a.grantee = to_regrole($1)",
            &[&quoted(role)],
        )
        .await?
    {
        add(Object::Database(row.get(0)), row.get(1));
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname, a.privilege_type
                 FROM pg_namespace n, unnest(n.nspacl) item, aclexplode(ARRAY[item]) a
                 WHERE a.grantee = to_regrole($1) AND {SYSTEM_SCHEMAS}"
            ),
            &[&quoted(role)],
        )
        .await?
    {
        add(Object::Schema(row.get(0)), row.get(1));
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, c.relkind = 'S', a.privilege_type
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                      unnest(c.relacl) item, aclexplode(ARRAY[item]) a
                 WHERE a.grantee = to_regrole($1) AND {SYSTEM_SCHEMAS}"
            ),
            &[&quoted(role)],
        )
        .await?
    {
        let (schema, name): (String, String) = (row.get(0), row.get(1));
        let object = if row.get::<_, bool>(2) {
            Object::Sequence { schema, name }
        } else {
            Object::Table { schema, name }
        };
        add(object, row.get(3));
    }
    for row in client
        .query(
            &format!(
                "SELECT n.nspname, c.relname, att.attname, a.privilege_type
                 FROM pg_attribute att
                 JOIN pg_class c ON c.oid = att.attrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace,
                      unnest(att.attacl) item, aclexplode(ARRAY[item]) a
                 WHERE a.grantee = to_regrole($1) AND NOT att.attisdropped AND {SYSTEM_SCHEMAS}"
            ),
            &[&quoted(role)],
        )
        .await?
    {
        add(
            Object::Column {
                schema: row.get(0),
                table: row.get(1),
                column: row.get(2),
            },
            row.get(3),
        );
    }
    for row in client
        .query(
            "SELECT pg_get_userbyid(d.defaclrole), n.nspname, a.privilege_type
             FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace,
                  unnest(d.defaclacl) item, aclexplode(ARRAY[item]) a
             WHERE d.defaclobjtype = 'r' AND a.grantee = to_regrole($1)",
            &[&quoted(role)],
        )
        .await?
    {
        add(
            Object::DefaultTables {
                owner: row.get(0),
                schema: row.get(1),
            },
            row.get(2),
        );
    }
    Ok(held)
}

/// `to_regrole` parses its argument as an identifier: quote it so any name is taken literally.
fn quoted(role: &str) -> String {
    postgres_protocol::escape::escape_identifier(role)
}
