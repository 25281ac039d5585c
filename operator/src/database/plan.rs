//! The privileges a binding's role should hold, the difference to what the catalog shows, and
//! the statements that close it. Pure: no connection here. Every identifier is quoted with
//! `postgres_protocol::escape::escape_identifier`; privilege keywords come from a fixed list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use postgres_protocol::escape::escape_identifier as quote;

/// Something a privilege is held on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Object {
    Database(String),
    Schema(String),
    /// A table, view, materialized view, foreign or partitioned table.
    Table {
        schema: String,
        name: String,
    },
    Sequence {
        schema: String,
        name: String,
    },
    Column {
        schema: String,
        table: String,
        column: String,
    },
    /// `ALTER DEFAULT PRIVILEGES FOR ROLE owner [IN SCHEMA schema] … ON TABLES`.
    DefaultTables {
        owner: String,
        schema: Option<String>,
    },
}

/// One privilege of the binding's role.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Privilege {
    pub object: Object,
    /// An SQL privilege keyword, one of [`KEYWORDS`].
    pub keyword: &'static str,
}

/// Privilege keywords as `aclexplode` reports them.
pub const KEYWORDS: [&str; 12] = [
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
    "USAGE",
    "CREATE",
    "CONNECT",
    "TEMPORARY",
    "MAINTAIN",
];

/// The catalog keyword for `text`, if it is one we know.
pub fn keyword(text: &str) -> Option<&'static str> {
    KEYWORDS.iter().copied().find(|k| *k == text)
}

/// A relation as the catalog lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub owner: String,
}

/// What the desired state depends on in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Schemas of the database.
    pub schemas: BTreeSet<String>,
    /// Tables and views (the kinds SELECT is granted on) per schema.
    pub relations: BTreeMap<String, Vec<Relation>>,
    /// What the role holds now.
    pub held: BTreeSet<Privilege>,
}

/// One granted schema of the binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaGrant {
    pub schema: String,
    /// `None`: every table (`["*"]`).
    pub tables: Option<Vec<String>>,
}

/// What the binding asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub database: String,
    pub grants: Vec<SchemaGrant>,
    pub default_privileges: bool,
    /// The administrator the operator connects as: tables it creates later are covered too.
    pub admin: String,
    /// The spec field the grants come from (`spec.access.grants`, or a caller class's), for
    /// messages that tell the user what to change.
    pub field: String,
    /// Read access to pgmcp's catalog tracker (schema pgmcp, table catalog_changes), when the
    /// database has it.
    pub catalog_tracker: bool,
}

/// pgmcp's catalog tracker: its schema and the table the MCP server reads.
pub const TRACKER_SCHEMA: &str = "pgmcp";
pub const TRACKER_TABLE: &str = "catalog_changes";

/// The desired privileges, and what the spec names that the catalog lacks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub privileges: BTreeSet<Privilege>,
    pub missing: Vec<String>,
}

pub fn desired(request: &Request, catalog: &Catalog) -> Desired {
    let mut out = Desired::default();
    let p = |object, keyword| Privilege { object, keyword };
    out.privileges
        .insert(p(Object::Database(request.database.clone()), "CONNECT"));
    let tracker_present = catalog
        .relations
        .get(TRACKER_SCHEMA)
        .is_some_and(|relations| relations.iter().any(|r| r.name == TRACKER_TABLE));
    if request.catalog_tracker && tracker_present {
        out.privileges
            .insert(p(Object::Schema(TRACKER_SCHEMA.to_owned()), "USAGE"));
        out.privileges.insert(p(
            Object::Table {
                schema: TRACKER_SCHEMA.to_owned(),
                name: TRACKER_TABLE.to_owned(),
            },
            "SELECT",
        ));
    }
    for grant in &request.grants {
        let schema = &grant.schema;
        if !catalog.schemas.contains(schema) {
            out.missing.push(format!("schema {schema}"));
            continue;
        }
        out.privileges
            .insert(p(Object::Schema(schema.clone()), "USAGE"));
        let relations = catalog.relations.get(schema).cloned().unwrap_or_default();
        match &grant.tables {
            None => {
                for relation in &relations {
                    out.privileges.insert(p(
                        Object::Table {
                            schema: schema.clone(),
                            name: relation.name.clone(),
                        },
                        "SELECT",
                    ));
                }
                if request.default_privileges {
                    let owners: BTreeSet<String> = relations
                        .iter()
                        .map(|r| r.owner.clone())
                        .chain([request.admin.clone()])
                        .collect();
                    for owner in owners {
                        out.privileges.insert(p(
                            Object::DefaultTables {
                                owner,
                                schema: Some(schema.clone()),
                            },
                            "SELECT",
                        ));
                    }
                }
            }
            Some(tables) => {
                for table in tables {
                    if relations.iter().any(|r| &r.name == table) {
                        out.privileges.insert(p(
                            Object::Table {
                                schema: schema.clone(),
                                name: table.clone(),
                            },
                            "SELECT",
                        ));
                    } else {
                        out.missing.push(format!("table {schema}.{table}"));
                    }
                }
            }
        }
    }
    out
}

/// The statements that turn `held` into `desired`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub revoke: Vec<Privilege>,
    pub grant: Vec<Privilege>,
}

impl Plan {
    pub fn between(desired: &BTreeSet<Privilege>, held: &BTreeSet<Privilege>) -> Self {
        Plan {
            revoke: held.difference(desired).cloned().collect(),
            grant: desired.difference(held).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.revoke.is_empty() && self.grant.is_empty()
    }

    /// SQL statements, revocations first.
    pub fn statements(&self, role: &str) -> Vec<String> {
        self.revoke
            .iter()
            .map(|p| statement(p, role, Verb::Revoke))
            .chain(self.grant.iter().map(|p| statement(p, role, Verb::Grant)))
            .collect()
    }
}

impl fmt::Display for Plan {
    /// "revoked INSERT on table public.orders; granted SELECT on table public.customers".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .revoke
            .iter()
            .map(|p| format!("revoked {p}"))
            .chain(self.grant.iter().map(|p| format!("granted {p}")))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keyword = self.keyword;
        match &self.object {
            Object::Database(name) => write!(f, "{keyword} on database {name}"),
            Object::Schema(name) => write!(f, "{keyword} on schema {name}"),
            Object::Table { schema, name } => write!(f, "{keyword} on table {schema}.{name}"),
            Object::Sequence { schema, name } => {
                write!(f, "{keyword} on sequence {schema}.{name}")
            }
            Object::Column {
                schema,
                table,
                column,
            } => write!(f, "{keyword} on column {schema}.{table}.{column}"),
            Object::DefaultTables { owner, schema } => match schema {
                Some(schema) => write!(
                    f,
                    "default {keyword} on tables of {owner} in schema {schema}"
                ),
                None => write!(f, "default {keyword} on tables of {owner}"),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Grant,
    Revoke,
}

/// `GRANT`/`REVOKE` of one privilege to/from `role`, identifiers quoted.
pub fn statement(privilege: &Privilege, role: &str, verb: Verb) -> String {
    let keyword = privilege.keyword;
    let (verb, direction) = match verb {
        Verb::Grant => ("GRANT", "TO"),
        Verb::Revoke => ("REVOKE", "FROM"),
    };
    let role = quote(role);
    match &privilege.object {
        Object::Database(name) => {
            format!(
                "{verb} {keyword} ON DATABASE {} {direction} {role}",
                quote(name)
            )
        }
        Object::Schema(name) => {
            format!(
                "{verb} {keyword} ON SCHEMA {} {direction} {role}",
                quote(name)
            )
        }
        Object::Table { schema, name } => format!(
            "{verb} {keyword} ON TABLE {}.{} {direction} {role}",
            quote(schema),
            quote(name)
        ),
        Object::Sequence { schema, name } => format!(
            "{verb} {keyword} ON SEQUENCE {}.{} {direction} {role}",
            quote(schema),
            quote(name)
        ),
        Object::Column {
            schema,
            table,
            column,
        } => format!(
            "{verb} {keyword} ({}) ON TABLE {}.{} {direction} {role}",
            quote(column),
            quote(schema),
            quote(table)
        ),
        Object::DefaultTables { owner, schema } => {
            let scope = schema
                .as_ref()
                .map(|s| format!(" IN SCHEMA {}", quote(s)))
                .unwrap_or_default();
            format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {}{scope} {verb} {keyword} ON TABLES {direction} {role}",
                quote(owner)
            )
        }
    }
}

/// Stable hash of a privilege set (status `grants.fingerprint`).
pub fn fingerprint(privileges: &BTreeSet<Privilege>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    for p in privileges {
        hasher.update(p.to_string().as_bytes());
        hasher.update(b"\n");
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str) -> Object {
        Object::Table {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }

    fn catalog() -> Catalog {
        let rel = |name: &str, owner: &str| Relation {
            name: name.to_owned(),
            owner: owner.to_owned(),
        };
        Catalog {
            schemas: ["public", "sales", "hr"].map(str::to_owned).into(),
            relations: BTreeMap::from([
                (
                    "public".to_owned(),
                    vec![rel("customers", "app"), rel("orders", "etl")],
                ),
                (
                    "sales".to_owned(),
                    vec![rel("monthly", "app"), rel("raw", "app")],
                ),
                ("hr".to_owned(), vec![rel("salaries", "app")]),
            ]),
            held: BTreeSet::new(),
        }
    }

    #[test]
    fn the_catalog_tracker_is_read_only_where_it_exists_and_asked_for() {
        let tracker = Privilege {
            object: Object::Table {
                schema: TRACKER_SCHEMA.to_owned(),
                name: TRACKER_TABLE.to_owned(),
            },
            keyword: "SELECT",
        };
        let mut with_tracker = catalog();
        with_tracker.schemas.insert(TRACKER_SCHEMA.to_owned());
        with_tracker.relations.insert(
            TRACKER_SCHEMA.to_owned(),
            vec![Relation {
                name: TRACKER_TABLE.to_owned(),
                owner: "postgres".to_owned(),
            }],
        );
        let asked = Request {
            catalog_tracker: true,
            ..request()
        };
        let desired = desired(&asked, &with_tracker).privileges;
        assert!(desired.contains(&tracker));
        assert!(desired.contains(&Privilege {
            object: Object::Schema(TRACKER_SCHEMA.to_owned()),
            keyword: "USAGE",
        }));
        // Not asked for, or not installed: nothing on it.
        assert!(
            !super::desired(&request(), &with_tracker)
                .privileges
                .contains(&tracker)
        );
        assert!(
            !super::desired(&asked, &catalog())
                .privileges
                .contains(&tracker)
        );
    }

    fn request() -> Request {
        Request {
            database: "shop".to_owned(),
            grants: vec![
                SchemaGrant {
                    schema: "public".to_owned(),
                    tables: None,
                },
                SchemaGrant {
                    schema: "sales".to_owned(),
                    tables: Some(vec!["monthly".to_owned()]),
                },
            ],
            default_privileges: true,
            admin: "postgres".to_owned(),
            catalog_tracker: false,
            field: "spec.access.grants".to_owned(),
        }
    }

    #[test]
    fn desired_is_what_a_careful_dba_grants() {
        let desired = desired(&request(), &catalog());
        let text: Vec<String> = desired.privileges.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "CONNECT on database shop",
                "USAGE on schema public",
                "USAGE on schema sales",
                "SELECT on table public.customers",
                "SELECT on table public.orders",
                "SELECT on table sales.monthly",
                "default SELECT on tables of app in schema public",
                "default SELECT on tables of etl in schema public",
                "default SELECT on tables of postgres in schema public",
            ]
        );
        assert!(desired.missing.is_empty());
    }

    #[test]
    fn names_the_spec_gives_but_the_catalog_lacks_are_reported() {
        let mut request = request();
        request.grants.push(SchemaGrant {
            schema: "nope".to_owned(),
            tables: None,
        });
        request.grants[1].tables = Some(vec!["monthly".to_owned(), "gone".to_owned()]);
        assert_eq!(
            desired(&request, &catalog()).missing,
            ["table sales.gone", "schema nope"]
        );
    }

    #[test]
    fn the_plan_revokes_extras_grants_what_is_missing_and_is_empty_when_equal() {
        let want = desired(&request(), &catalog()).privileges;
        assert!(Plan::between(&want, &want).is_empty());

        let mut held = want.clone();
        held.insert(Privilege {
            object: table("public", "orders"),
            keyword: "INSERT",
        });
        held.insert(Privilege {
            object: table("hr", "salaries"),
            keyword: "SELECT",
        });
        held.remove(&Privilege {
            object: table("public", "customers"),
            keyword: "SELECT",
        });
        let plan = Plan::between(&want, &held);
        assert_eq!(
            plan.to_string(),
            "revoked SELECT on table hr.salaries; revoked INSERT on table public.orders; \
             granted SELECT on table public.customers"
        );
        assert_eq!(
            plan.statements("shop_mcp"),
            [
                r#"REVOKE SELECT ON TABLE "hr"."salaries" FROM "shop_mcp""#,
                r#"REVOKE INSERT ON TABLE "public"."orders" FROM "shop_mcp""#,
                r#"GRANT SELECT ON TABLE "public"."customers" TO "shop_mcp""#,
            ]
        );
    }

    #[test]
    fn hostile_names_stay_names() {
        let privilege = Privilege {
            object: Object::Column {
                schema: "we\"ird; DROP TABLE x; --".to_owned(),
                table: "Straße select".to_owned(),
                column: "a\"b".to_owned(),
            },
            keyword: "INSERT",
        };
        assert_eq!(
            statement(&privilege, "r\"; DROP ROLE postgres; --", Verb::Revoke),
            r#"REVOKE INSERT ("a""b") ON TABLE "we""ird; DROP TABLE x; --"."Straße select" FROM "r""; DROP ROLE postgres; --""#
        );
        let default = Privilege {
            object: Object::DefaultTables {
                owner: "app owner".to_owned(),
                schema: None,
            },
            keyword: "SELECT",
        };
        assert_eq!(
            statement(&default, "x", Verb::Grant),
            r#"ALTER DEFAULT PRIVILEGES FOR ROLE "app owner" GRANT SELECT ON TABLES TO "x""#
        );
    }

    #[test]
    fn fingerprints_follow_the_set() {
        let a = desired(&request(), &catalog()).privileges;
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.insert(Privilege {
            object: table("hr", "salaries"),
            keyword: "SELECT",
        });
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn only_known_keywords_pass() {
        assert_eq!(keyword("SELECT"), Some("SELECT"));
        assert_eq!(keyword("SELECT; DROP"), None);
    }
}
