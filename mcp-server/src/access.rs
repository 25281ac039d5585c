//! Per-caller access: which caller class a verified caller belongs to, and so which role its
//! statements run as and what it sees.
//!
//! ```text
//! token validated (auth)  ──▶ Access::resolve: the first class whose match fits the claims,
//!                              else the default class (access.grants), else 403 naming why
//! every statement         ──▶ BEGIN READ ONLY; set_config('role', <class role>, true);
//!                              set_config('pgmcp.caller', <claims JSON>, true); the statement;
//!                              a check that neither changed; Sync; ROLLBACK — one round trip
//!                              (pgmcp_postgres_wire::Identity)
//! discovery and scope     ──▶ the class's grants (crate::scope::Scope) and allowed functions
//! ```
//!
//! The class's role holds exactly the class's grants; the server's own role is a member of
//! every class role without inheriting from it (the operator keeps it so), so a statement that
//! did not switch role reads nothing of any class. The SQL guard refuses `SET ROLE`,
//! `SET SESSION AUTHORIZATION`, `RESET` and `set_config`, so the caller cannot switch class or
//! write claims itself, and the check after the statement withholds the rows of one that did
//! so through a function. Bindings without classes run as today: the server's role, no claims.

use std::sync::Arc;

use pgmcp_crds::config::{CallerMatchConfig, ScopeConfig};

use crate::auth::Caller;
use crate::scope::Scope;

/// A caller class as the server applies it.
#[derive(Debug)]
pub struct Class {
    /// `None` for the default class (callers that match no class, or every caller without
    /// classes).
    pub name: Option<String>,
    /// The role statements run as; `None` without per-caller access (the server's own role,
    /// no switch).
    pub role: Option<String>,
    matches: CallerMatchConfig,
    /// What the class sees and reads, and the SECURITY DEFINER functions it may call.
    pub scope: Scope,
}

impl PartialEq for Class {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.role == other.role
    }
}

impl Eq for Class {}

impl Class {
    /// The class's name for logs and messages (`default` for the default class).
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or("default")
    }

    /// Whether `caller`'s verified claims put it in this class.
    fn matches(&self, caller: &Caller) -> bool {
        let m = &self.matches;
        let same = |a: &String, b: &String| a.eq_ignore_ascii_case(b);
        m.app_roles.iter().any(|r| caller.roles.contains(r))
            || m.groups
                .iter()
                .any(|g| caller.groups.iter().any(|c| same(c, g)))
            || caller
                .oid
                .as_ref()
                .is_some_and(|oid| m.object_ids.iter().any(|o| same(o, oid)))
            || caller
                .app_id
                .as_ref()
                .is_some_and(|id| m.app_ids.iter().any(|a| same(a, id)))
    }
}

/// The classes of a binding, in order, and the default class.
#[derive(Debug)]
pub struct Access {
    classes: Vec<Arc<Class>>,
    default: Option<Arc<Class>>,
    /// Every schema and table any class may read: what the start-up checks look at.
    server_scope: Scope,
}

/// A caller that matches no class of a binding without a default class: 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NoClass(String);

impl Access {
    /// The classes of `config`. `login_role` is the server's own role: the default class runs
    /// as it when there are classes (so its statements carry the caller's claims too).
    pub fn new(config: &ScopeConfig, login_role: &str) -> Self {
        let per_caller = !config.callers.is_empty();
        let default_scope =
            Scope::new(config.grants.clone()).with_functions(config.functions.clone());
        let classes: Vec<Arc<Class>> = config
            .callers
            .iter()
            .map(|c| {
                Arc::new(Class {
                    name: Some(c.name.clone()),
                    role: Some(c.role.clone()),
                    matches: c.matches.clone(),
                    scope: Scope::new(c.grants.clone()).with_functions(c.functions.clone()),
                })
            })
            .collect();
        // With classes: the default class's grants and every class's together.
        let server_scope = Scope::new(
            config
                .grants
                .iter()
                .chain(config.callers.iter().flat_map(|c| &c.grants))
                .cloned()
                .collect(),
        )
        .with_functions(
            config
                .functions
                .iter()
                .chain(config.callers.iter().flat_map(|c| &c.functions))
                .cloned()
                .collect(),
        );
        let default = (!per_caller || !config.grants.is_empty()).then(|| {
            Arc::new(Class {
                name: None,
                role: per_caller.then(|| login_role.to_owned()),
                matches: CallerMatchConfig::default(),
                scope: default_scope,
            })
        });
        Access {
            classes,
            default,
            server_scope,
        }
    }

    /// Everyone in one default class with `scope`, as the server's own role: no classes.
    pub fn plain(scope: Scope) -> Self {
        Access {
            classes: Vec::new(),
            default: Some(Arc::new(Class {
                name: None,
                role: None,
                matches: CallerMatchConfig::default(),
                scope: scope.clone(),
            })),
            server_scope: scope,
        }
    }

    /// Whether the binding has caller classes.
    pub fn per_caller(&self) -> bool {
        !self.classes.is_empty()
    }

    /// The classes, in order (without the default class).
    pub fn classes(&self) -> &[Arc<Class>] {
        &self.classes
    }

    /// The class names, in order.
    pub fn class_names(&self) -> Vec<&str> {
        self.classes.iter().map(|c| c.label()).collect()
    }

    /// The class of calls with no caller (stdio, no authentication): the default class.
    pub fn default_class(&self) -> Option<&Arc<Class>> {
        self.default.as_ref()
    }

    /// What every class together may read: the start-up checks and the `search_path`.
    pub fn server_scope(&self) -> &Scope {
        &self.server_scope
    }

    /// The class of a verified caller: the first that matches, else the default class, else
    /// why there is none (naming what the token carries and what the classes ask for).
    pub fn resolve(&self, caller: &Caller) -> Result<Arc<Class>, NoClass> {
        if let Some(class) = self.classes.iter().find(|c| c.matches(caller)) {
            return Ok(class.clone());
        }
        if let Some(default) = &self.default {
            return Ok(default.clone());
        }
        let mut carried = vec![format!("app roles [{}]", caller.roles.join(", "))];
        if caller.groups_overage {
            carried.push(
                "no groups (the caller is in too many groups for the token to list them; match it by app role or object id)".to_owned(),
            );
        } else {
            carried.push(format!("groups [{}]", caller.groups.join(", ")));
        }
        carried.push(format!(
            "object id {}",
            caller.oid.as_deref().unwrap_or("(none)")
        ));
        carried.push(format!(
            "app id {}",
            caller.app_id.as_deref().unwrap_or("(none)")
        ));
        Err(NoClass(format!(
            "the caller matches none of this server's caller classes ({}) and the binding has \
             no default grants: its token carries {}. Add the caller to a class's match in \
             spec.access.callers (appRoles, groups, objectIds or appIds), or set \
             spec.access.grants for callers that match no class",
            self.class_names().join(", "),
            carried.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use pgmcp_crds::config::{CallerClassConfig, ScopeGrant};

    use super::*;

    fn grant(schema: &str) -> ScopeGrant {
        ScopeGrant {
            schema: schema.to_owned(),
            tables: vec!["*".to_owned()],
        }
    }

    fn config(default: bool) -> ScopeConfig {
        ScopeConfig {
            grants: if default {
                vec![grant("public")]
            } else {
                vec![]
            },
            functions: vec![],
            callers: vec![
                CallerClassConfig {
                    name: "sales".into(),
                    role: "mcp__sales".into(),
                    matches: CallerMatchConfig {
                        app_roles: vec!["Sales.Read".into()],
                        ..Default::default()
                    },
                    grants: vec![grant("sales")],
                    functions: vec![],
                },
                CallerClassConfig {
                    name: "support".into(),
                    role: "mcp__support".into(),
                    matches: CallerMatchConfig {
                        groups: vec!["AAAAAAAA-0000-0000-0000-000000000001".into()],
                        object_ids: vec!["00000000-0000-0000-0000-0000000000aa".into()],
                        ..Default::default()
                    },
                    grants: vec![grant("support")],
                    functions: vec![],
                },
            ],
        }
    }

    #[test]
    fn the_first_matching_class_wins_and_ids_match_in_any_case() {
        let access = Access::new(&config(false), "mcp");
        let both = Caller {
            roles: vec!["Sales.Read".into()],
            groups: vec!["aaaaaaaa-0000-0000-0000-000000000001".into()],
            ..Caller::default()
        };
        assert_eq!(access.resolve(&both).unwrap().label(), "sales");
        let group = Caller {
            groups: vec!["aaaaaaaa-0000-0000-0000-000000000001".into()],
            ..Caller::default()
        };
        let class = access.resolve(&group).unwrap();
        assert_eq!(class.role.as_deref(), Some("mcp__support"));
        assert!(class.scope.allows("support", "tickets"));
        assert!(!class.scope.allows("sales", "orders"));
        let oid = Caller {
            oid: Some("00000000-0000-0000-0000-0000000000AA".into()),
            ..Caller::default()
        };
        assert_eq!(access.resolve(&oid).unwrap().label(), "support");
    }

    #[test]
    fn a_caller_in_no_class_is_refused_unless_there_are_default_grants() {
        let nobody = Caller {
            roles: vec!["Other".into()],
            oid: Some("o1".into()),
            ..Caller::default()
        };
        let refused = Access::new(&config(false), "mcp")
            .resolve(&nobody)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("none of this server's caller classes (sales, support)"));
        assert!(refused.contains("app roles [Other]"), "{refused}");
        assert!(refused.contains("object id o1"), "{refused}");
        let overage = Caller {
            groups_overage: true,
            ..Caller::default()
        };
        let refused = Access::new(&config(false), "mcp")
            .resolve(&overage)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("too many groups"), "{refused}");

        let access = Access::new(&config(true), "mcp");
        let default = access.resolve(&nobody).unwrap();
        assert_eq!(default.label(), "default");
        assert_eq!(
            default.role.as_deref(),
            Some("mcp"),
            "runs as the login role"
        );
        assert!(default.scope.allows("public", "t"));
        assert!(access.server_scope().allows("sales", "orders"));
        assert!(access.server_scope().allows("support", "tickets"));
    }

    #[test]
    fn without_classes_everyone_is_the_default_class_as_the_server_role() {
        let mut plain = config(true);
        plain.callers.clear();
        let access = Access::new(&plain, "mcp");
        assert!(!access.per_caller());
        let class = access.resolve(&Caller::default()).unwrap();
        assert_eq!(class.role, None, "no role switch, as before classes");
    }
}
