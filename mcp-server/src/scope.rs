//! What the binding grants: the schemas and tables the server shows and lets queries read.
//!
//! Discovery tools filter the catalog through [`Scope::allows`]; the `query` tool checks every
//! relation a statement reads ([`referenced_relations`], resolved by the caller) before it runs. The database
//! role enforces the same grants underneath; this layer makes out-of-scope objects invisible
//! and gives the model a clear refusal instead of a permission error.

use std::ops::ControlFlow;

use pgmcp_crds::config::{ScopeFunction, ScopeGrant};
use sqlparser::ast::{
    Ident, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor, Visit, Visitor,
};

/// The granted schemas and tables. Empty means unrestricted (local development only). Also the
/// SECURITY DEFINER functions the binding allows ([`crate::definer`]).
#[derive(Debug, Clone, Default)]
pub struct Scope {
    grants: Vec<ScopeGrant>,
    functions: Vec<ScopeFunction>,
}

/// A relation a statement reads that is outside the scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{relation} is not available to this server: it can read only {allowed}. Use list_tables to see the tables you can query, and describe_table for their columns"
)]
pub struct OutOfScope {
    pub relation: String,
    pub allowed: String,
}

impl Scope {
    pub fn new(grants: Vec<ScopeGrant>) -> Self {
        Self {
            grants,
            functions: Vec::new(),
        }
    }

    /// Allows calls to these SECURITY DEFINER functions (every overload of each name).
    pub fn with_functions(mut self, functions: Vec<ScopeFunction>) -> Self {
        self.functions = functions;
        self
    }

    /// The SECURITY DEFINER functions the binding allows.
    pub fn functions(&self) -> &[ScopeFunction] {
        &self.functions
    }

    /// The grants, as configured.
    pub fn grants(&self) -> &[ScopeGrant] {
        &self.grants
    }

    /// Whether the scope is unrestricted.
    pub fn is_unrestricted(&self) -> bool {
        self.grants.is_empty()
    }

    /// The granted schemas, in order (the server's `search_path`).
    pub fn schemas(&self) -> Vec<String> {
        self.grants.iter().map(|g| g.schema.clone()).collect()
    }

    /// Whether every grant is a whole schema (`*`).
    pub fn grants_whole_schemas(&self) -> bool {
        self.grants
            .iter()
            .all(|g| g.tables.iter().any(|t| t == "*"))
    }

    /// Whether `schema` is visible at all.
    pub fn allows_schema(&self, schema: &str) -> bool {
        self.is_unrestricted() || self.grants.iter().any(|g| g.schema == schema)
    }

    /// Whether `schema.table` is visible.
    pub fn allows(&self, schema: &str, table: &str) -> bool {
        self.is_unrestricted()
            || self
                .grants
                .iter()
                .any(|g| g.schema == schema && g.tables.iter().any(|t| t == "*" || t == table))
    }

    fn describe(&self) -> String {
        self.grants
            .iter()
            .map(|g| {
                if g.tables.iter().any(|t| t == "*") {
                    format!("every table in schema {}", g.schema)
                } else {
                    format!("{} in schema {}", g.tables.join(", "), g.schema)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Refuses `schema.table` unless granted, naming what is granted.
    pub fn check(&self, schema: &str, table: &str) -> Result<(), OutOfScope> {
        if self.allows(schema, table) {
            Ok(())
        } else {
            Err(OutOfScope {
                relation: format!("{schema}.{table}"),
                allowed: self.describe(),
            })
        }
    }
}

/// A relation named in a statement: schema-qualified or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationRef {
    pub schema: Option<String>,
    pub name: String,
}

/// The relations `statement` reads, in order, without set-returning functions.
///
/// Names are not matched against the statement's own `WITH` names: CTE scoping is subtle
/// (`FROM secret, (WITH secret AS … ) s` reads the real `secret`), so every unqualified name
/// must be resolved through the session's `search_path` by the caller, where a CTE name that
/// is no relation resolves to nothing. Use the statement the SQL guard accepted
/// ([`crate::sql_guard::parse_checked`]) so both look at the same thing.
pub fn referenced_relations(statement: &Statement) -> Vec<RelationRef> {
    let mut collector = Relations::default();
    let _ = statement.visit(&mut collector);
    collector.relations
}

/// An identifier as PostgreSQL reads it: unquoted names are folded to lower case (ASCII only,
/// as PostgreSQL does in UTF-8 databases), quoted ones are taken as written.
fn identifier(ident: &Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_ascii_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

/// Collects the relations a statement reads.
#[derive(Default)]
struct Relations {
    relations: Vec<RelationRef>,
}

impl Relations {
    fn push(&mut self, relation: RelationRef) {
        if !self.relations.contains(&relation) {
            self.relations.push(relation);
        }
    }

    fn name(&mut self, name: &ObjectName) {
        let mut parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(ident) => identifier(ident),
                ObjectNamePart::Function(f) => identifier(&f.name),
            })
            .collect();
        if let Some(table) = parts.pop() {
            self.push(RelationRef {
                schema: parts.pop(),
                name: table,
            });
        }
    }

    /// `TABLE x` anywhere in a query body, including the arms of set operations.
    fn tables_in(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                if let Some(name) = &table.table_name {
                    self.push(RelationRef {
                        schema: table.schema_name.as_ref().map(identifier),
                        name: identifier(name),
                    });
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.tables_in(left);
                self.tables_in(right);
            }
            _ => {}
        }
    }
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.tables_in(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        // A name with arguments is a set-returning function (generate_series(…)), not a relation.
        if let TableFactor::Table {
            name, args: None, ..
        } = factor
        {
            self.name(name);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> Scope {
        Scope::new(vec![
            ScopeGrant {
                schema: "public".into(),
                tables: vec!["*".into()],
            },
            ScopeGrant {
                schema: "reporting".into(),
                tables: vec!["monthly_sales".into()],
            },
        ])
    }

    fn refs(sql: &str) -> Vec<(Option<String>, String)> {
        let (_, statement) = crate::sql_guard::parse_checked(sql).expect("the guard accepts it");
        referenced_relations(&statement)
            .into_iter()
            .map(|r| (r.schema, r.name))
            .collect()
    }

    fn names(list: &[(Option<&str>, &str)]) -> Vec<(Option<String>, String)> {
        list.iter()
            .map(|(s, n)| (s.map(str::to_owned), (*n).to_owned()))
            .collect()
    }

    #[test]
    fn relations_are_collected_from_every_part_of_a_statement() {
        assert_eq!(
            refs(
                "SELECT * FROM public.orders o JOIN customers c ON c.id = o.customer_id WHERE o.id IN (SELECT order_id FROM internal.items)"
            ),
            names(&[
                (Some("public"), "orders"),
                (None, "customers"),
                (Some("internal"), "items")
            ])
        );
        assert_eq!(
            refs("WITH recent AS (SELECT * FROM orders) SELECT * FROM recent"),
            names(&[(None, "orders"), (None, "recent")])
        );
        assert_eq!(refs("SELECT * FROM generate_series(1, 3) g"), names(&[]));
        assert_eq!(
            refs("TABLE internal.api_keys"),
            names(&[(Some("internal"), "api_keys")])
        );
        assert_eq!(
            refs("SELECT 1 UNION TABLE secret"),
            names(&[(None, "secret")])
        );
        assert_eq!(
            refs("SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) s"),
            names(&[(None, "secret")]),
            "a CTE name elsewhere does not hide the real table"
        );
        assert_eq!(
            refs("SELECT * FROM (VALUES (1)) v, LATERAL (SELECT * FROM internal.t) x"),
            names(&[(Some("internal"), "t")])
        );
        assert_eq!(
            refs("SELECT \"Mixed Case\".\"T\" FROM \"Mixed Case\".\"T\""),
            names(&[(Some("Mixed Case"), "T")])
        );
        assert_eq!(refs("SELECT 1"), names(&[]));
    }

    #[test]
    fn unquoted_names_are_folded_to_lower_case_like_postgresql_does() {
        assert_eq!(
            refs("SELECT * FROM Internal.API_Keys JOIN \"Orders\" ON true"),
            names(&[(Some("internal"), "api_keys"), (None, "Orders")])
        );
        assert_eq!(
            refs("SELECT 1 UNION TABLE Secret UNION TABLE \"Other\""),
            names(&[(None, "secret"), (None, "Other")])
        );
    }

    #[test]
    fn out_of_scope_names_the_relation_and_the_scope() {
        let err = scope().check("internal", "api_keys").unwrap_err();
        assert_eq!(err.relation, "internal.api_keys");
        assert!(
            err.to_string().contains("every table in schema public"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("monthly_sales in schema reporting"),
            "{err}"
        );
        assert!(scope().check("reporting", "monthly_sales").is_ok());
    }

    #[test]
    fn explicit_table_lists_hide_the_rest_of_the_schema() {
        let s = scope();
        assert!(s.allows("reporting", "monthly_sales"));
        assert!(!s.allows("reporting", "salaries"));
        assert!(s.allows("public", "anything"));
        assert!(!s.allows_schema("internal"));
        assert!(Scope::default().allows("internal", "api_keys"));
    }
}
