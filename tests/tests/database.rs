//! The database step against real PostgreSQL 15, through the operator on the real control plane:
//! the role it creates can read exactly what the binding grants and nothing else, drift made by
//! hand is repaired (and a steady state issues no SQL), hostile names stay names, each way to
//! write or read beyond the grants made by hand (PUBLIC, memberships, ownership, large objects,
//! SECURITY DEFINER functions) fails the read-only probe by name, a role someone else made is
//! never taken over, the password rotates on request, and deletion removes the role (or keeps
//! it with Orphan).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{
    ShopFixture, condition, create_admin_secret, delete_and_wait, kubectl_apply, kubectl_ok,
    password_example, wait_condition,
};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, eventually, wait_for};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(45);
const NAME: &str = "shop";

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

    fn example(&self) -> String {
        let pg = self.db.server();
        password_example(pg.host(), pg.port(), &self.db.name, &self.role)
    }

    fn bindings(&self) -> Api<PostgresMcpBinding> {
        self.ns.api()
    }

    async fn wait(&self, type_: &str, status: &str, reason: Option<&str>) -> PostgresMcpBinding {
        wait_condition(&self.bindings(), NAME, type_, status, reason, WAIT).await
    }

    /// Waits for the probe to find that the role can write, and checks it names `finding`.
    async fn wait_can_write_naming(&self, finding: &str) {
        let binding = self
            .wait("ReadOnlyVerified", "False", Some("CanWrite"))
            .await;
        let probe = condition(&binding, "ReadOnlyVerified").unwrap().message;
        assert!(
            probe.contains(finding),
            "{finding:?} is not named in: {probe}"
        );
    }

    /// The generated password, from the Secret the binding owns.
    async fn password(&self) -> String {
        let secrets: Api<Secret> = self.ns.api();
        let secret = secrets.get("shop-postgres").await.unwrap();
        String::from_utf8(secret.data.unwrap()["password"].0.clone()).unwrap()
    }

    async fn as_role(&self) -> tokio_postgres::Client {
        self.db
            .connect_as(&self.role, &self.password().await)
            .await
            .unwrap()
    }

    async fn admin(&self) -> tokio_postgres::Client {
        self.db.connect().await.unwrap()
    }

    /// Merges `access` into the binding's spec.access.
    async fn patch_access(&self, access: serde_json::Value) {
        self.bindings()
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"access": access}})),
            )
            .await
            .unwrap();
    }

    async fn has(&self, privilege: &str, table: &str) -> bool {
        self.admin()
            .await
            .query_one(
                "SELECT has_table_privilege(to_regrole($1), $2::text::regclass, $3)",
                &[&quote(&self.role), &table, &privilege],
            )
            .await
            .unwrap()
            .get(0)
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

#[tokio::test]
async fn the_role_reads_exactly_what_the_binding_grants() {
    let f = Fixture::start("db-grants", &[]).await;
    kubectl_apply(&f.ns, &f.example());
    let binding = f.wait("DatabaseReady", "True", Some("GrantsMatch")).await;
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;

    // The password lives in a Secret the binding owns.
    let secrets: Api<Secret> = f.ns.api();
    let secret = secrets.get("shop-postgres").await.unwrap();
    assert!(
        secret
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == binding.metadata.uid.as_ref()),
        "the Secret is owned by the binding"
    );
    assert_eq!(f.password().await.len(), 64);

    let role = f.as_role().await;
    let customers: i64 = role
        .query_one("SELECT count(*) FROM public.customers", &[])
        .await
        .unwrap()
        .get(0);
    assert!(customers > 0);
    // Not granted, not writable, nothing to create.
    assert_eq!(
        sqlstate(role.execute("SELECT * FROM hr.salaries", &[]).await),
        "42501"
    );
    assert_eq!(
        sqlstate(
            role.execute(
                "INSERT INTO public.customers (name, email) VALUES ('x', 'y')",
                &[]
            )
            .await
        ),
        "42501"
    );
    assert_eq!(
        sqlstate(role.execute("CREATE TABLE public.mine (a int)", &[]).await),
        "42501"
    );

    // What the status says matches the catalog.
    let status = binding.status.unwrap();
    let tables: i64 = f
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'f', 'p')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(i64::from(status.grants.as_ref().unwrap().tables), tables);
    assert_eq!(status.principal.unwrap().name, f.role);

    // Tables created later are readable: default privileges for the admin and for other owners.
    let owner = format!("{}_owner", f.db.name);
    let admin = f.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {o}; GRANT CREATE, USAGE ON SCHEMA public TO {o};
             CREATE TABLE public.owned_by_other (a int); ALTER TABLE public.owned_by_other OWNER TO {o};",
            o = quote(&owner)
        ))
        .await
        .unwrap();
    // The operator notices the new owner on its next pass (the binding changes, or resync).
    f.bindings()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})),
        )
        .await
        .unwrap();
    // (The table itself is readable at once: the admin created it, and its default privileges
    // apply; what must appear is the default privilege for the new owner.)
    eventually("default privileges for the other owner", WAIT, || async {
        f.admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a
                 WHERE d.defaclrole = to_regrole($1) AND a.grantee = to_regrole($2)
                   AND a.privilege_type = 'SELECT'",
                &[&quote(&owner), &quote(&f.role)],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    assert!(f.has("SELECT", "public.owned_by_other").await);
    admin
        .batch_execute(&format!(
            "CREATE TABLE public.later_by_admin (a int);
             SET ROLE {o}; CREATE TABLE public.later_by_other (a int); RESET ROLE;",
            o = quote(&owner)
        ))
        .await
        .unwrap();
    for table in ["public.later_by_admin", "public.later_by_other"] {
        assert!(
            f.has("SELECT", table).await,
            "{table} is readable at once through default privileges"
        );
    }
}

#[tokio::test]
async fn drift_made_by_hand_is_repaired_and_a_steady_state_issues_no_sql() {
    let f = Fixture::start("db-drift", &["--resync=1s"]).await;
    kubectl_apply(&f.ns, &f.example());
    f.wait("DatabaseReady", "True", None).await;
    let admin = f.admin().await;
    let role = quote(&f.role);

    // Steady state: reconciles run, no SQL is issued.
    let sql = f
        .operator
        .metric("pgmcp_operator_sql_statements_total")
        .await
        .unwrap();
    let reconciles = f
        .operator
        .metric("pgmcp_operator_reconciles_total")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        f.operator
            .metric("pgmcp_operator_reconciles_total")
            .await
            .unwrap()
            >= reconciles + 2.0
    );
    assert_eq!(
        f.operator
            .metric("pgmcp_operator_sql_statements_total")
            .await
            .unwrap(),
        sql,
        "equal state issued SQL"
    );

    // A hand-made INSERT grant is revoked (MAINTAIN too, a table privilege since PostgreSQL
    // 17); a hand-made revoke is undone.
    let maintain = f.db.server().major() >= 17;
    admin
        .batch_execute(&format!(
            "GRANT INSERT ON public.customers TO {role}; REVOKE SELECT ON public.orders FROM {role};
             {}",
            if maintain {
                format!("GRANT MAINTAIN ON public.products TO {role};")
            } else {
                String::new()
            }
        ))
        .await
        .unwrap();
    eventually("INSERT revoked and SELECT restored", WAIT, || async {
        !f.has("INSERT", "public.customers").await
            && f.has("SELECT", "public.orders").await
            && !(maintain && f.has("MAINTAIN", "public.products").await)
    })
    .await;
    let binding = wait_for("a repair counted in status", WAIT, || async {
        let b = f.bindings().get(NAME).await.ok()?;
        (b.status.as_ref()?.grants.as_ref()?.repairs >= 1).then_some(b)
    })
    .await;
    assert!(
        binding
            .status
            .unwrap()
            .grants
            .unwrap()
            .last_repair_time
            .is_some()
    );
    let mut events = f.ns.kubectl();
    events.args(["get", "events", "--field-selector", "reason=GrantsRepaired"]);
    let events = kubectl_ok(events);
    assert!(
        events.contains("revoked INSERT on table public.customers")
            && events.contains("granted SELECT on table public.orders"),
        "{events}"
    );
    assert_eq!(
        events.contains("revoked MAINTAIN on table public.products"),
        maintain,
        "{events}"
    );
    assert!(
        f.operator
            .metric("pgmcp_operator_grant_repairs_total")
            .await
            .unwrap()
            >= 1.0
    );

    // Shrinking the table list revokes what was removed, default privileges included.
    f.bindings()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"grants": [{"schema": "public", "tables": ["customers"]}]}}})),
        )
        .await
        .unwrap();
    f.wait("DatabaseReady", "True", None).await;
    assert!(f.has("SELECT", "public.customers").await);
    assert!(!f.has("SELECT", "public.orders").await);
    let defaults: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a WHERE a.grantee = to_regrole($1)",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        defaults, 0,
        "an explicit table list has no default privileges"
    );
}

#[tokio::test]
async fn hostile_names_are_taken_literally() {
    let f = Fixture::start("db-hostile", &[]).await;
    let schema = "we\"ird schema";
    let table = "Straße; DROP TABLE customers; --";
    let admin = f.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {s}; CREATE TABLE {s}.{t} (a int); INSERT INTO {s}.{t} VALUES (7);",
            s = quote(schema),
            t = quote(table)
        ))
        .await
        .unwrap();
    let hostile_role = format!("{}\"; DROP ROLE postgres; --", f.db.name);
    let pg = f.db.server();
    let mut binding: serde_json::Value = serde_saphyr::from_str(&password_example(
        pg.host(),
        pg.port(),
        &f.db.name,
        &hostile_role,
    ))
    .unwrap();
    binding["spec"]["access"]["grants"] = json!([{"schema": schema, "tables": [table]}]);
    kubectl_apply(&f.ns, &serde_json::to_string(&binding).unwrap());
    f.wait("DatabaseReady", "True", None).await;

    let password = f.password().await;
    let role = f.db.connect_as(&hostile_role, &password).await.unwrap();
    let value: i32 = role
        .query_one(
            &format!("SELECT a FROM {}.{}", quote(schema), quote(table)),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, 7);
    // Nothing was executed as SQL.
    assert!(
        admin
            .query_opt("SELECT 1 FROM public.customers LIMIT 1", &[])
            .await
            .is_ok()
    );
    let postgres: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(postgres, 1);
}

#[tokio::test]
async fn write_access_given_by_hand_fails_the_read_only_probe_until_removed() {
    let f = Fixture::start("db-probe", &["--resync=1s"]).await;
    kubectl_apply(&f.ns, &f.example());
    f.wait("ReadOnlyVerified", "True", None).await;
    let admin = f.admin().await;
    admin
        .batch_execute(&format!("GRANT pg_write_all_data TO {}", quote(&f.role)))
        .await
        .unwrap();
    let binding = f.wait("ReadOnlyVerified", "False", Some("CanWrite")).await;
    let probe = condition(&binding, "ReadOnlyVerified").unwrap();
    assert!(
        probe.message.contains("is a member of pg_write_all_data"),
        "{}",
        probe.message
    );
    assert_eq!(condition(&binding, "Ready").unwrap().status, "False");
    admin
        .batch_execute(&format!("REVOKE pg_write_all_data FROM {}", quote(&f.role)))
        .await
        .unwrap();
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
}

/// A membership the role does not inherit from still lets it act as that role: `SET ROLE` (the
/// NOINHERIT attribute; since PostgreSQL 16 a grant `WITH INHERIT FALSE`), or since 16 a grant
/// `WITH ADMIN TRUE` alone, which lets it grant itself the role. PostgreSQL's privilege functions
/// answer for inherited privileges only, so the probe must ask them for each such role too.
#[tokio::test]
async fn a_membership_the_role_does_not_inherit_from_still_fails_the_probe() {
    let f = Fixture::start("db-probe-set-role", &["--resync=1s"]).await;
    kubectl_apply(&f.ns, &f.example());
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
    let (role, writers) = (quote(&f.role), format!("{}_writers", f.db.name));
    let admin = f.admin().await;
    let set_only = if f.db.server().major() >= 16 {
        format!("GRANT {writers} TO {role} WITH INHERIT FALSE")
    } else {
        format!("GRANT {writers} TO {role}; ALTER ROLE {role} NOINHERIT")
    };
    admin
        .batch_execute(&format!(
            "CREATE ROLE {writers}; GRANT INSERT ON public.orders TO {writers}; {set_only}"
        ))
        .await
        .unwrap();
    // What it gives: no INSERT as the role itself, but INSERT after SET ROLE.
    assert!(!f.has("INSERT", "public.orders").await);
    let reader = f.as_role().await;
    reader
        .batch_execute(&format!(
            "SET ROLE {writers}; INSERT INTO public.orders (customer_id, ordered_at, status) VALUES (1, now(), 'open'); RESET ROLE"
        ))
        .await
        .unwrap();
    let named = format!(
        "has INSERT on table public.orders through role {writers} (REVOKE INSERT ON TABLE public.orders FROM {writers})"
    );
    f.wait_can_write_naming(&named).await;

    admin
        .batch_execute(&format!("REVOKE {writers} FROM {role}"))
        .await
        .unwrap();
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;

    if f.db.server().major() >= 16 {
        // ADMIN OPTION alone: neither inherited nor SET ROLE, yet the role can grant it to itself.
        admin
            .batch_execute(&format!(
                "GRANT {writers} TO {role} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE"
            ))
            .await
            .unwrap();
        assert_eq!(
            sqlstate(reader.execute(&format!("SET ROLE {writers}"), &[]).await),
            "42501"
        );
        f.wait_can_write_naming(&named).await;
        reader
            .batch_execute(&format!("GRANT {writers} TO {role}"))
            .await
            .unwrap();
        assert!(f.has("INSERT", "public.orders").await);
        admin
            .batch_execute(&format!("REVOKE {writers} FROM {role} CASCADE"))
            .await
            .unwrap();
        f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
    }
}

#[tokio::test]
async fn each_way_to_write_or_read_beyond_the_grants_is_named_until_removed_or_allowed() {
    let f = Fixture::start("db-probe-all", &["--resync=1s"]).await;
    kubectl_apply(&f.ns, &f.example());
    let binding = f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
    // Every database lets PUBLIC create temporary tables unless revoked: said, not held
    // against the role.
    let probe = condition(&binding, "ReadOnlyVerified").unwrap();
    assert!(
        probe.message.contains(&format!(
            "it can create temporary tables through PUBLIC's default TEMPORARY privilege on database {}",
            f.db.name
        )),
        "{}",
        probe.message
    );

    // Each case made by hand, the way a DBA might, none of it through the role's own grants
    // (those the operator revokes itself).
    let (db, role) = (&f.db.name, quote(&f.role));
    let ops = format!("{db}_ops");
    let owners = format!("{db}_owners");
    let admin = f.admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {ops}; CREATE ROLE {owners}; GRANT {ops}, {owners} TO {role};
             GRANT CREATE ON SCHEMA hr TO PUBLIC;
             GRANT pg_signal_backend TO {ops};
             ALTER TABLE hr.salaries OWNER TO {owners};
             CREATE TYPE public.mood AS ENUM ('calm'); ALTER TYPE public.mood OWNER TO {role};
             SELECT lo_create(4242); GRANT SELECT ON LARGE OBJECT 4242 TO PUBLIC;
             GRANT TEMPORARY ON DATABASE {db} TO {ops};
             CREATE FUNCTION public.salary_of(id int) RETURNS numeric LANGUAGE sql SECURITY DEFINER
               AS 'SELECT amount FROM hr.salaries WHERE id = $1';"
        ))
        .await
        .unwrap();
    // PostgreSQL 15's parameter privileges (SET on work_mem is no power: anyone may set it);
    // 17's MAINTAIN: VACUUM, REFRESH MATERIALIZED VIEW, LOCK TABLE and more; 18's predefined
    // role that signals autovacuum workers.
    let major = f.db.server().major();
    let (parameters, maintain, autovacuum) = (major >= 15, major >= 17, major >= 18);
    if parameters {
        admin
            .batch_execute(&format!(
                "GRANT SET ON PARAMETER lo_compat_privileges TO {ops};
                 GRANT SET, ALTER SYSTEM ON PARAMETER work_mem TO {ops};"
            ))
            .await
            .unwrap();
    }
    if maintain {
        admin
            .batch_execute(&format!("GRANT MAINTAIN ON public.products TO {ops}"))
            .await
            .unwrap();
    }
    if autovacuum {
        admin
            .batch_execute(&format!("GRANT pg_signal_autovacuum_worker TO {ops}"))
            .await
            .unwrap();
    }
    // The function reads a table the binding never granted, with its owner's rights.
    let reader = f.as_role().await;
    let salary: String = reader
        .query_one("SELECT public.salary_of(1)::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(salary, "100");
    assert_eq!(
        sqlstate(reader.execute("SELECT amount FROM hr.salaries", &[]).await),
        "42501"
    );
    let binding = f.wait("ReadOnlyVerified", "False", Some("CanWrite")).await;
    let probe = condition(&binding, "ReadOnlyVerified").unwrap().message;
    for named in [
        "has CREATE on schema hr through PUBLIC (REVOKE CREATE ON SCHEMA hr FROM PUBLIC)".to_owned(),
        format!("is a member of pg_signal_backend, which cancels and terminates other sessions, through role {ops} (REVOKE {ops} FROM {role})"),
        format!("owns table hr.salaries through role {owners}, its owner, of which it is a member (REVOKE {owners} FROM {role})"),
        format!("owns type public.mood, which lets it change or drop it (REASSIGN OWNED BY {role} TO another role)"),
        "has SELECT on large object 4242 through PUBLIC (REVOKE SELECT ON LARGE OBJECT 4242 FROM PUBLIC)".to_owned(),
        format!("has TEMPORARY on database {db} through role {ops}, so it can create temporary tables (REVOKE TEMPORARY ON DATABASE {db} FROM {ops})"),
        "can execute SECURITY DEFINER function public.salary_of(id integer) through PUBLIC: it runs with the rights of its owner postgres".to_owned(),
        "list {schema: \"public\", name: \"salary_of\"} in spec.access.functions".to_owned(),
    ] {
        assert!(probe.contains(&named), "{named:?} is not named in: {probe}");
    }
    for named in [
        format!(
            "has SET on parameter lo_compat_privileges through role {ops} (REVOKE SET ON PARAMETER lo_compat_privileges FROM {ops})"
        ),
        format!(
            "has ALTER SYSTEM on parameter work_mem through role {ops} (REVOKE ALTER SYSTEM ON PARAMETER work_mem FROM {ops})"
        ),
    ] {
        assert_eq!(probe.contains(&named), parameters, "{named:?} in: {probe}");
    }
    let named = format!(
        "has MAINTAIN on table public.products through role {ops} (REVOKE MAINTAIN ON TABLE public.products FROM {ops})"
    );
    assert_eq!(probe.contains(&named), maintain, "{named:?} in: {probe}");
    let named = format!(
        "is a member of pg_signal_autovacuum_worker, which cancels and terminates autovacuum workers, through role {ops} (REVOKE {ops} FROM {role})"
    );
    assert_eq!(probe.contains(&named), autovacuum, "{named:?} in: {probe}");
    assert_eq!(condition(&binding, "Ready").unwrap().status, "False");

    // Undone, except the function: the role now only reads beyond its grants.
    admin
        .batch_execute(&format!(
            "REVOKE {ops}, {owners} FROM {role}; REVOKE CREATE ON SCHEMA hr FROM PUBLIC;
             DROP TYPE public.mood; SELECT lo_unlink(4242);"
        ))
        .await
        .unwrap();
    let binding = f
        .wait("ReadOnlyVerified", "False", Some("ReadsBeyondGrants"))
        .await;
    let probe = condition(&binding, "ReadOnlyVerified").unwrap().message;
    assert!(probe.contains("public.salary_of(id integer)"), "{probe}");
    assert!(!probe.contains("schema hr"), "{probe}");

    // Listing it allows it: the probe accepts it, and the server is told it may call it.
    f.bindings()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"access": {"functions": [{"schema": "public", "name": "salary_of"}]}}})),
        )
        .await
        .unwrap();
    f.wait("ReadOnlyVerified", "True", Some("ReadOnly")).await;
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = f.ns.api();
    let config = maps.get("shop-mcp").await.unwrap().data.unwrap();
    let config: serde_json::Value = serde_json::from_str(&config["config.json"]).unwrap();
    assert_eq!(
        config["scope"]["functions"],
        json!([{"schema": "public", "name": "salary_of"}])
    );
}

#[tokio::test]
async fn grants_the_admin_may_not_give_stall_the_binding_naming_them_until_allowed() {
    let f = Fixture::start("db-limited-admin", &[]).await;
    // An admin that may create roles but owns no table, as on a managed server where the
    // tables belong to the application's role.
    let limited = format!("{}_limited", f.db.name);
    f.admin()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'limited-pw'",
            quote(&limited)
        ))
        .await
        .unwrap();
    let mut secret = f.ns.kubectl();
    secret.args(["create", "secret", "generic", "pg-limited"]);
    secret.arg(format!("--from-literal=username={limited}"));
    secret.arg("--from-literal=password=limited-pw");
    kubectl_ok(secret);
    kubectl_apply(
        &f.ns,
        &f.example().replace("name: pg-admin", "name: pg-limited"),
    );
    let binding = f
        .wait("DatabaseReady", "False", Some("GrantNotPermitted"))
        .await;
    let message = condition(&binding, "DatabaseReady").unwrap().message;
    assert!(
        message.starts_with(&format!("{limited} cannot grant "))
            && message.contains("SELECT on table public.customers")
            && message.contains("default SELECT on tables of postgres")
            && message.contains("WITH GRANT OPTION"),
        "{message}"
    );
    // PUBLIC's CONNECT and USAGE on public are enough: they are not among the refusals.
    assert!(
        !message.contains("CONNECT") && !message.contains("USAGE"),
        "{message}"
    );
    assert!(!f.has("SELECT", "public.customers").await);

    // The owner lets the admin pass SELECT on; default privileges stay the owner's business.
    f.admin()
        .await
        .batch_execute(&format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {} WITH GRANT OPTION",
            quote(&limited)
        ))
        .await
        .unwrap();
    f.patch_access(json!({"defaultPrivileges": false})).await;
    f.wait("DatabaseReady", "True", Some("GrantsMatch")).await;
    assert!(f.has("SELECT", "public.customers").await);
    assert!(!f.has("SELECT", "hr.salaries").await);
}

#[tokio::test]
async fn a_role_someone_else_made_is_never_taken_over() {
    let f = Fixture::start("db-conflict", &[]).await;
    f.admin()
        .await
        .batch_execute(&format!("CREATE ROLE {} LOGIN", quote(&f.role)))
        .await
        .unwrap();
    kubectl_apply(&f.ns, &f.example());
    let binding = f.wait("Stalled", "True", Some("RoleConflict")).await;
    let stalled = condition(&binding, "Stalled").unwrap();
    assert!(
        stalled
            .message
            .contains(&format!("role {} already exists", f.role))
            && stalled.message.contains("not managed by binding"),
        "{}",
        stalled.message
    );
    assert_eq!(
        condition(&binding, "DatabaseReady").unwrap().reason,
        "RoleConflict"
    );
    // The role was left as it was: no grants.
    assert!(!f.has("SELECT", "public.customers").await);
}

#[tokio::test]
async fn the_password_rotates_on_request() {
    let f = Fixture::start("db-rotate", &[]).await;
    kubectl_apply(&f.ns, &f.example());
    f.wait("DatabaseReady", "True", None).await;
    let old = f.password().await;
    f.bindings()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"pgmcp.dev/rotate-password": "2026-11-24"}}}),
            ),
        )
        .await
        .unwrap();
    let new = wait_for("a new password in the Secret", WAIT, || async {
        let secrets: Api<Secret> = f.ns.api();
        let secret = secrets.get("shop-postgres").await.ok()?;
        let applied = secret
            .annotations()
            .contains_key("pgmcp.dev/password-applied");
        let password = String::from_utf8(secret.data?["password"].0.clone()).ok()?;
        (password != old && applied).then_some(password)
    })
    .await;
    assert!(
        f.db.connect_as(&f.role, &new).await.is_ok(),
        "the new password works"
    );
    assert!(
        f.db.connect_as(&f.role, &old).await.is_err(),
        "the old one does not"
    );
}

#[tokio::test]
async fn deletion_removes_the_role_and_orphan_keeps_it() {
    let f = Fixture::start("db-delete", &[]).await;
    // Two bindings on the same database: one deleted with the default policy, one with Orphan.
    kubectl_apply(&f.ns, &f.example());
    let pg = f.db.server();
    let kept_role = format!("{}_kept", f.db.name);
    let kept = password_example(pg.host(), pg.port(), &f.db.name, &kept_role)
        .replace("name: shop", "name: kept")
        .replace(
            "        tables: [\"*\"]",
            "        tables: [\"*\"]\n    deletionPolicy: Orphan",
        );
    kubectl_apply(&f.ns, &kept);
    f.wait("DatabaseReady", "True", None).await;
    wait_condition(&f.bindings(), "kept", "DatabaseReady", "True", None, WAIT).await;

    for name in [NAME, "kept"] {
        f.bindings()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("both bindings gone", WAIT, || async {
        f.bindings()
            .list(&Default::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    })
    .await;
    let admin = f.admin().await;
    let exists = |role: String| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&role])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    };
    assert!(
        !exists(f.role.clone()).await,
        "Delete policy dropped the role"
    );
    assert!(
        exists(kept_role.clone()).await,
        "Orphan policy kept the role"
    );
    let kept_select: bool = admin
        .query_one(
            "SELECT has_table_privilege(to_regrole($1), 'public.customers', 'SELECT')",
            &[&quote(&kept_role)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(kept_select, "and its grants");
}

#[tokio::test]
async fn deleting_while_the_database_is_down_waits_and_completes_when_it_returns() {
    let env = TestEnv::shared();
    let pg = Postgres::start_restartable().await.unwrap();
    pg.database_with("shop", "CREATE TABLE customers (id int)")
        .await
        .unwrap();
    let ns = env.namespace("db-down").await.unwrap();
    create_admin_secret(&ns, &pg);
    let _operator = Operator::start(env, &ns.name, "db-down", &[])
        .await
        .unwrap();
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), "shop", "shop_mcp"),
    );
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, NAME, "DatabaseReady", "True", None, WAIT).await;

    pg.stop();
    bindings
        .delete(NAME, &DeleteParams::default())
        .await
        .unwrap();
    let waiting = wait_for("the failed cleanup reported", WAIT, || async {
        let b = bindings.get(NAME).await.ok()?;
        let ready = condition(&b, "Ready")?;
        (ready.reason == "CleanupFailed").then_some(b)
    })
    .await;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert_eq!(waiting.finalizers(), [pgmcp_crds::FINALIZER.to_owned()]);
    let message = condition(&waiting, "Ready").unwrap().message;
    assert!(
        message.contains("failed to connect to PostgreSQL") && message.contains("as postgres"),
        "{message}"
    );

    pg.restart().await.unwrap();
    eventually(
        "the binding gone once the database is back",
        WAIT,
        || async { bindings.get_opt(NAME).await.is_ok_and(|b| b.is_none()) },
    )
    .await;
    let roles: i64 = pg
        .connect("postgres")
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = 'shop_mcp'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0, "the role was dropped after all");
}

/// pgmcp's catalog tracker: installed with the first binding (the admin here may create event
/// triggers), read by its role, recording DDL; a second binding shares it; turning it off on
/// one binding keeps it for the other; it goes with the last binding that reads it; a schema
/// pgmcp someone else made is never taken over.
#[tokio::test]
async fn the_catalog_tracker_is_installed_shared_and_removed_with_the_last_binding() {
    let f = Fixture::start("db-tracker", &[]).await;
    let admin = f.admin().await;
    let tracker_parts = || async {
        f.admin()
            .await
            .query_one(
                "SELECT to_regnamespace('pgmcp') IS NOT NULL,
                        (SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgmcp\\_catalog\\_%')",
                &[],
            )
            .await
            .map(|row| (row.get::<_, bool>(0), row.get::<_, i64>(1)))
            .unwrap()
    };
    kubectl_apply(&f.ns, &f.example());
    let binding = f.wait("DatabaseReady", "True", None).await;
    let tracker = binding
        .status
        .as_ref()
        .unwrap()
        .catalog_tracker
        .clone()
        .unwrap();
    assert!(tracker.in_use, "{tracker:?}");
    assert!(
        condition(&binding, "DatabaseReady")
            .unwrap()
            .message
            .ends_with("; the catalog tracker is in use")
    );
    assert_eq!(tracker_parts().await, (true, 2));
    assert!(f.has("SELECT", "pgmcp.catalog_changes").await);
    assert_eq!(
        binding
            .status
            .as_ref()
            .unwrap()
            .grants
            .as_ref()
            .unwrap()
            .tables,
        5,
        "the tracker's table is not counted as data"
    );
    // It records DDL, in the DDL's transaction.
    let before: i64 = admin
        .query_one("SELECT count(*) FROM pgmcp.catalog_changes", &[])
        .await
        .unwrap()
        .get(0);
    admin
        .batch_execute("CREATE TABLE public.tracked_change (id int)")
        .await
        .unwrap();
    let after: i64 = admin
        .query_one(
            "SELECT count(*) FROM pgmcp.catalog_changes WHERE xid = (SELECT max(xid) FROM pgmcp.catalog_changes)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(after == 1 && before <= 2, "{before} {after}");

    // A second binding on the same database reads the same tracker.
    let pg = f.db.server();
    let other_role = format!("{}_other", f.db.name);
    let other = password_example(pg.host(), pg.port(), &f.db.name, &other_role)
        .replace("name: shop", "name: other");
    kubectl_apply(&f.ns, &other);
    wait_condition(&f.bindings(), "other", "DatabaseReady", "True", None, WAIT).await;

    // Off on the first: its role loses the grant, the tracker stays for the other.
    f.patch_access(json!({"catalogTracker": false})).await;
    eventually("the grant revoked", WAIT, || async {
        !f.has("SELECT", "pgmcp.catalog_changes").await
    })
    .await;
    let off = wait_for("status says it is off", WAIT, || async {
        let b = f.bindings().get(NAME).await.ok()?;
        let t = b.status?.catalog_tracker?;
        (!t.in_use).then_some(t)
    })
    .await;
    assert_eq!(
        off.reason.as_deref(),
        Some("spec.access.catalogTracker is false")
    );
    assert_eq!(
        tracker_parts().await,
        (true, 2),
        "the other binding reads it"
    );

    // The last binding that reads it goes: so does the tracker.
    f.bindings()
        .delete("other", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the tracker removed", WAIT, || async {
        tracker_parts().await == (false, 0)
    })
    .await;

    // A schema pgmcp that is not the tracker's is left alone, and status says why.
    admin
        .batch_execute("CREATE SCHEMA pgmcp; COMMENT ON SCHEMA pgmcp IS 'our own'")
        .await
        .unwrap();
    f.patch_access(json!({"catalogTracker": true})).await;
    let refused = wait_for("status says why not", WAIT, || async {
        let b = f.bindings().get(NAME).await.ok()?;
        let t = b.status?.catalog_tracker?;
        t.reason
            .filter(|r| r.contains("is not pgmcp's catalog tracker"))
    })
    .await;
    assert!(refused.contains("schema pgmcp in database"), "{refused}");
    delete_and_wait(&f.bindings(), NAME, WAIT).await;
    assert_eq!(tracker_parts().await, (true, 0), "our own schema stays");
}
