//! Caller classes (spec.access.callers) against real PostgreSQL, through the operator on the real
//! control plane: each class gets a NOLOGIN role holding exactly its grants, the binding's login
//! role is a member of each without inheriting it (so a statement that does not switch role
//! reads nothing of a class, and one after `SET ROLE` reads the class's tables), the classes
//! reach status and the server's configuration, drift on a class role or on the membership is
//! repaired, a narrowed class loses what was dropped, a removed class loses its role, a class
//! role someone else made is never taken over, and deleting the binding drops every class role.
//!
//! PostgreSQL 16 and later keep the membership's options per grant (`WITH INHERIT FALSE, SET
//! TRUE`); 14 and 15 only know the member's NOINHERIT attribute. Both are covered by running
//! this file on 15 (`make integration`) and on 18 (tests/scripts/test-postgres.sh).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{
    ShopFixture, condition, delete_and_wait, kubectl_apply, kubectl_ok, password_example,
    wait_condition,
};
use pgmcp_tests::{eventually, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(45);
const NAME: &str = "shop";
const FINANCE_OID: &str = "44444444-4444-4444-4444-444444444444";

/// The shared start (`ShopFixture`), with this file's helpers.
struct Fixture(ShopFixture);

impl std::ops::Deref for Fixture {
    type Target = ShopFixture;

    fn deref(&self) -> &ShopFixture {
        &self.0
    }
}

impl Fixture {
    async fn start(test: &str, operator_args: &[&str]) -> Self {
        Fixture(ShopFixture::start(test, operator_args).await)
    }

    /// The password example with Entra caller authentication and `callers`; `grants` the
    /// default class (`None`: none, so callers that match no class are refused).
    fn apply(&self, grants: Option<Value>, callers: Value) {
        let pg = self.db.server();
        let mut binding: Value = serde_saphyr::from_str(&password_example(
            pg.host(),
            pg.port(),
            &self.db.name,
            &self.role,
        ))
        .unwrap();
        binding["spec"]["server"]["auth"] = json!({"entra": {
            "tenantId": "22222222-2222-2222-2222-222222222222",
            "audience": "api://pgmcp-shop",
            "requiredRoles": ["MCP.Read"],
        }});
        match grants {
            Some(grants) => binding["spec"]["access"]["grants"] = grants,
            None => {
                if let Some(access) = binding["spec"]["access"].as_object_mut() {
                    access.remove("grants");
                }
            }
        }
        binding["spec"]["access"]["callers"] = callers;
        kubectl_apply(&self.ns, &serde_json::to_string(&binding).unwrap());
    }

    async fn set_callers(&self, callers: Value) {
        self.bindings()
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"access": {"callers": callers}}})),
            )
            .await
            .unwrap();
    }

    fn class_role(&self, class: &str) -> String {
        pgmcp_crds::config::class_role_name(&self.role, class)
    }

    fn bindings(&self) -> Api<PostgresMcpBinding> {
        self.ns.api()
    }

    async fn wait(&self, type_: &str, status: &str, reason: Option<&str>) -> PostgresMcpBinding {
        wait_condition(&self.bindings(), NAME, type_, status, reason, WAIT).await
    }

    /// The binding once its grants match the spec and every role is probed read-only, in the
    /// generation last written.
    async fn settled(&self) -> PostgresMcpBinding {
        wait_for("the binding reconciled and ready", WAIT, || async {
            let b = self.bindings().get(NAME).await.ok()?;
            let generation = b.metadata.generation;
            let ok = |type_: &str| {
                condition(&b, type_)
                    .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
            };
            (ok("DatabaseReady") && ok("ReadOnlyVerified")).then_some(b)
        })
        .await
    }

    async fn login(&self) -> tokio_postgres::Client {
        let secrets: Api<Secret> = self.ns.api();
        let secret = secrets.get("shop-postgres").await.unwrap();
        let password = String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap();
        self.db.connect_as(&self.role, &password).await.unwrap()
    }

    async fn admin(&self) -> tokio_postgres::Client {
        self.db.connect().await.unwrap()
    }

    async fn has(&self, role: &str, privilege: &str, table: &str) -> bool {
        self.admin()
            .await
            .query_one(
                "SELECT has_table_privilege(to_regrole($1), $2::text::regclass, $3)",
                &[&quote(role), &table, &privilege],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn role_exists(&self, role: &str) -> bool {
        self.admin()
            .await
            .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    }

    /// The tables `role` holds a privilege on by a grant to itself, as `schema.table privilege`.
    /// The table privileges `role` holds itself, the catalog tracker's aside (the login
    /// role reads it for the server's catalog snapshot; see `catalog_tracker_grant`).
    async fn own_table_grants(&self, role: &str) -> Vec<String> {
        self.admin()
            .await
            .query(
                "SELECT n.nspname || '.' || c.relname || ' ' || a.privilege_type
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a
                 WHERE a.grantee = to_regrole($1) AND n.nspname <> 'pgmcp' ORDER BY 1",
                &[&quote(role)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Whether `login` inherits `class`'s privileges, and whether it may SET ROLE to it.
    async fn membership(&self, class: &str) -> (bool, bool) {
        let row = self
            .admin()
            .await
            .query_one(
                "SELECT pg_has_role(to_regrole($1), to_regrole($2), 'USAGE'),
                        pg_has_role(to_regrole($1), to_regrole($2), 'MEMBER')",
                &[&quote(&self.role), &quote(class)],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    /// The server's configuration as the operator wrote it.
    async fn server_config(&self) -> Value {
        let maps: Api<ConfigMap> = self.ns.api();
        let config = maps.get("shop-mcp").await.unwrap().data.unwrap();
        serde_json::from_str(&config["config.json"]).unwrap()
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The SQLSTATE of a failed statement.
fn sqlstate(result: Result<u64, tokio_postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code().map(|c| c.code().to_owned()).unwrap_or_default(),
    }
}

fn support(tables: &[&str]) -> Value {
    json!({
        "name": "support",
        "match": {"appRoles": ["Support.Read"]},
        "grants": [{"schema": "public", "tables": tables}],
        "functions": [{"schema": "public", "name": "order_total"}],
    })
}

fn finance() -> Value {
    json!({
        "name": "finance",
        "match": {"objectIds": [FINANCE_OID]},
        "grants": [{"schema": "hr", "tables": ["*"]}],
    })
}

#[tokio::test]
async fn each_class_role_holds_its_grants_and_the_login_role_reads_them_only_after_set_role() {
    let f = Fixture::start("callers-roles", &[]).await;
    f.apply(None, json!([support(&["customers", "orders"]), finance()]));
    let binding = f.settled().await;
    let (support_role, finance_role) = (f.class_role("support"), f.class_role("finance"));
    assert_eq!(support_role, format!("{}__support", f.role));

    // Each class role: NOLOGIN, marked as the binding's, holding exactly its grants.
    let admin = f.admin().await;
    for class in [&support_role, &finance_role] {
        let row = admin
            .query_one(
                "SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls,
                        shobj_description(oid, 'pg_authid')
                 FROM pg_roles WHERE rolname = $1",
                &[&class],
            )
            .await
            .unwrap();
        assert_eq!(
            (
                row.get::<_, bool>(0),
                row.get::<_, bool>(1),
                row.get::<_, bool>(2),
                row.get::<_, bool>(3),
                row.get::<_, bool>(4),
            ),
            (false, false, false, false, false),
            "{class}"
        );
        assert_eq!(
            row.get::<_, String>(5),
            format!("managed by pgmcp binding {}/{NAME}", f.ns.name)
        );
    }
    assert_eq!(
        f.own_table_grants(&support_role).await,
        ["public.customers SELECT", "public.orders SELECT"]
    );
    assert_eq!(
        f.own_table_grants(&finance_role).await,
        ["hr.salaries SELECT"]
    );
    // Without a default class the login role holds no table at all, only read access to the
    // catalog tracker, which the server reads as itself; the class roles do not.
    assert!(f.own_table_grants(&f.role).await.is_empty());
    let admin = f.admin().await;
    for (role, reads) in [(&f.role, true), (&support_role, false)] {
        let row = admin
            .query_one(
                "SELECT has_table_privilege(to_regrole($1), 'pgmcp.catalog_changes', 'SELECT')",
                &[&quote(role)],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, bool>(0), reads, "{role}");
    }

    // The membership: SET ROLE yes, inherit no (WITH INHERIT FALSE since 16, NOINHERIT before).
    for class in [&support_role, &finance_role] {
        assert_eq!(f.membership(class).await, (false, true), "{class}");
    }
    let (inherit, set): (bool, bool) = if f.db.server().major() >= 16 {
        let row = admin
            .query_one(
                "SELECT bool_or(inherit_option), bool_and(set_option) FROM pg_auth_members
                 WHERE roleid = to_regrole($1) AND member = to_regrole($2)",
                &[&quote(&support_role), &quote(&f.role)],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    } else {
        let row = admin
            .query_one(
                "SELECT rolinherit FROM pg_roles WHERE rolname = $1",
                &[&f.role],
            )
            .await
            .unwrap();
        (row.get(0), true)
    };
    assert_eq!((inherit, set), (false, true));

    // The proof: the login role reads nothing of a class without switching role, and the
    // class's tables (and only those) after SET ROLE.
    let login = f.login().await;
    for table in ["public.customers", "hr.salaries"] {
        assert_eq!(
            sqlstate(login.execute(&format!("SELECT * FROM {table}"), &[]).await),
            "42501",
            "{table} without SET ROLE"
        );
    }
    login
        .batch_execute(&format!("SET ROLE {}", quote(&support_role)))
        .await
        .unwrap();
    let customers: i64 = login
        .query_one("SELECT count(*) FROM public.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(customers > 0);
    assert_eq!(
        sqlstate(login.execute("SELECT * FROM hr.salaries", &[]).await),
        "42501"
    );
    assert_eq!(
        sqlstate(login.execute("SELECT * FROM public.products", &[]).await),
        "42501"
    );
    login
        .batch_execute(&format!("SET ROLE {}", quote(&finance_role)))
        .await
        .unwrap();
    let amount: String = login
        .query_one("SELECT amount::text FROM hr.salaries", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, "100");
    login.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(
        sqlstate(login.execute("SELECT * FROM hr.salaries", &[]).await),
        "42501"
    );

    // Status, the record and the server's configuration carry the classes.
    let status = binding.status.unwrap();
    let callers: Vec<(String, String, i32)> = status
        .callers
        .iter()
        .map(|c| (c.name.clone(), c.role.clone(), c.grants.tables))
        .collect();
    assert_eq!(
        callers,
        [
            ("support".to_owned(), support_role.clone(), 2),
            ("finance".to_owned(), finance_role.clone(), 1),
        ]
    );
    assert_eq!(status.grants.unwrap().tables, 0);
    let ready = condition(&f.bindings().get(NAME).await.unwrap(), "DatabaseReady").unwrap();
    assert!(
        ready.message.contains(&format!(
            "2 tables as caller class support (role {support_role})"
        )),
        "{}",
        ready.message
    );
    let record = status.inventory.unwrap().role.unwrap();
    let recorded: Vec<(&str, &str, bool)> = record
        .class_roles
        .iter()
        .map(|c| (c.class.as_str(), c.name.as_str(), c.oid.is_some()))
        .collect();
    assert_eq!(
        recorded,
        [
            ("support", support_role.as_str(), true),
            ("finance", finance_role.as_str(), true)
        ]
    );
    let config = f.server_config().await;
    assert_eq!(
        config["scope"]["callers"],
        json!([
            {
                "name": "support",
                "role": support_role,
                "match": {"appRoles": ["Support.Read"]},
                "grants": [{"schema": "public", "tables": ["customers", "orders"]}],
                "functions": [{"schema": "public", "name": "order_total"}],
            },
            {
                "name": "finance",
                "role": finance_role,
                "match": {"objectIds": [FINANCE_OID]},
                "grants": [{"schema": "hr", "tables": ["*"]}],
            },
        ])
    );
    assert_eq!(config["scope"]["grants"], json!([]));

    // Deleting the binding drops every class role, and the login role.
    delete_and_wait(&f.bindings(), NAME, WAIT).await;
    for role in [&support_role, &finance_role, &f.role] {
        assert!(!f.role_exists(role).await, "{role} was dropped");
    }
}

#[tokio::test]
async fn class_roles_follow_the_spec_drift_is_repaired_and_removed_classes_are_dropped() {
    let f = Fixture::start("callers-converge", &["--resync=1s"]).await;
    // A default class too: the login role reads customers itself.
    f.apply(
        Some(json!([{"schema": "public", "tables": ["customers"]}])),
        json!([support(&["customers", "orders"]), finance()]),
    );
    f.settled().await;
    let (support_role, finance_role) = (f.class_role("support"), f.class_role("finance"));
    assert_eq!(
        f.own_table_grants(&f.role).await,
        ["public.customers SELECT"]
    );
    let admin = f.admin().await;

    // Steady state: reconciles run (every second), no SQL is sent, memberships included.
    let metric = |name: &'static str| {
        let operator = &f.operator;
        async move { operator.metric(name).await.unwrap() }
    };
    let sql = metric("pgmcp_operator_sql_statements_total").await;
    let reconciles = metric("pgmcp_operator_reconciles_total").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(metric("pgmcp_operator_reconciles_total").await >= reconciles + 2.0);
    assert_eq!(
        metric("pgmcp_operator_sql_statements_total").await,
        sql,
        "equal state issued SQL"
    );

    // Drift on a class role, made by hand: revoked, and counted as a repair of that class.
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON hr.salaries TO {s}; GRANT INSERT ON public.orders TO {s}",
            s = quote(&support_role)
        ))
        .await
        .unwrap();
    eventually("the class role's drift repaired", WAIT, || async {
        !f.has(&support_role, "SELECT", "hr.salaries").await
            && !f.has(&support_role, "INSERT", "public.orders").await
    })
    .await;
    wait_for("a repair of class support in status", WAIT, || async {
        let b = f.bindings().get(NAME).await.ok()?;
        let status = b.status?;
        let support = status.callers.iter().find(|c| c.name == "support")?;
        (support.grants.repairs >= 1).then_some(())
    })
    .await;
    let mut events = f.ns.kubectl();
    events.args(["get", "events", "--field-selector", "reason=GrantsRepaired"]);
    let events = kubectl_ok(events);
    assert!(
        events.contains(&format!("caller class support (role {support_role})"))
            && events.contains("revoked SELECT on table hr.salaries"),
        "{events}"
    );

    // The membership made inheriting by hand: the login role would read orders without
    // switching role. Repaired.
    let inheriting = if f.db.server().major() >= 16 {
        format!(
            "GRANT {} TO {} WITH INHERIT TRUE",
            quote(&support_role),
            quote(&f.role)
        )
    } else {
        format!("ALTER ROLE {} INHERIT", quote(&f.role))
    };
    admin.batch_execute(&inheriting).await.unwrap();
    eventually("the membership made non-inheriting again", WAIT, || async {
        f.membership(&support_role).await == (false, true)
    })
    .await;
    assert!(!f.has(&f.role, "SELECT", "public.orders").await);
    // Revoked by hand: granted back.
    admin
        .batch_execute(&format!(
            "REVOKE {} FROM {}",
            quote(&finance_role),
            quote(&f.role)
        ))
        .await
        .unwrap();
    eventually("the membership granted back", WAIT, || async {
        f.membership(&finance_role).await == (false, true)
    })
    .await;

    // A way to write given to a class role by hand fails the probe, naming the class role and
    // not the login role (whose membership in it is not followed: the class is probed itself).
    admin
        .batch_execute(&format!(
            "GRANT pg_write_all_data TO {}",
            quote(&support_role)
        ))
        .await
        .unwrap();
    let binding = f.wait("ReadOnlyVerified", "False", Some("CanWrite")).await;
    let probe = condition(&binding, "ReadOnlyVerified").unwrap().message;
    assert_eq!(
        probe,
        format!(
            "role {support_role} (caller class support) can write: it is a member of pg_write_all_data, which writes every table (REVOKE pg_write_all_data FROM {})",
            quote(&support_role)
        )
    );
    admin
        .batch_execute(&format!(
            "REVOKE pg_write_all_data FROM {}",
            quote(&support_role)
        ))
        .await
        .unwrap();
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;

    // Since 16 the login role can inherit a class role through another role it inherits (before
    // 16 it is NOINHERIT, so it inherits nothing): not the operator's membership to repair, so
    // the probe names it.
    if f.db.server().major() >= 16 {
        let via = format!("{}_via", f.db.name);
        admin
            .batch_execute(&format!(
                "CREATE ROLE {v}; GRANT {s} TO {v}; GRANT {v} TO {l}",
                v = quote(&via),
                s = quote(&support_role),
                l = quote(&f.role)
            ))
            .await
            .unwrap();
        assert!(f.has(&f.role, "SELECT", "public.orders").await);
        let binding = f
            .wait("ReadOnlyVerified", "False", Some("ReadsBeyondGrants"))
            .await;
        let probe = condition(&binding, "ReadOnlyVerified").unwrap().message;
        assert_eq!(
            probe,
            format!(
                "role {} can read beyond what the binding grants: it inherits the privileges of caller class role {s} through role {v}, so a statement that does not switch role reads what the class reads (REVOKE {v} FROM {})",
                f.role,
                quote(&f.role),
                s = support_role,
                v = via,
            )
        );
        admin
            .batch_execute(&format!("DROP ROLE {}", quote(&via)))
            .await
            .unwrap();
        f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
    }

    // Narrowed: the class role loses what was dropped.
    f.set_callers(json!([support(&["customers"]), finance()]))
        .await;
    eventually("support narrowed to customers", WAIT, || async {
        f.own_table_grants(&support_role).await == ["public.customers SELECT"]
    })
    .await;

    // Removed: its grants revoked, its role dropped, and it leaves the record, status and the
    // server's configuration.
    f.set_callers(json!([support(&["customers"])])).await;
    eventually("the finance role dropped", WAIT, || async {
        !f.role_exists(&finance_role).await
    })
    .await;
    let binding = f.settled().await;
    let status = binding.status.unwrap();
    assert_eq!(
        status
            .callers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["support"]
    );
    let recorded: Vec<String> = status
        .inventory
        .unwrap()
        .role
        .unwrap()
        .class_roles
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(recorded, std::slice::from_ref(&support_role));
    let config = f.server_config().await;
    assert_eq!(
        config["scope"]["callers"].as_array().unwrap().len(),
        1,
        "{config}"
    );

    // A role of a class's name that someone else made is never taken over.
    admin
        .batch_execute(&format!("CREATE ROLE {}", quote(&finance_role)))
        .await
        .unwrap();
    f.set_callers(json!([support(&["customers"]), finance()]))
        .await;
    let stalled = f.wait("Stalled", "True", Some("RoleConflict")).await;
    let message = condition(&stalled, "Stalled").unwrap().message;
    assert!(
        message.starts_with(&format!(
            "caller class finance: role {finance_role} already exists"
        )) && message.contains("not managed by binding"),
        "{message}"
    );
    assert!(f.own_table_grants(&finance_role).await.is_empty());
    admin
        .batch_execute(&format!("DROP ROLE {}", quote(&finance_role)))
        .await
        .unwrap();
    f.wait("Stalled", "False", None).await;
    f.settled().await;
    assert_eq!(
        f.own_table_grants(&finance_role).await,
        ["hr.salaries SELECT"]
    );
}
