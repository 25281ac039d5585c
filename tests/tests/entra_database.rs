//! Entra mode through the operator, without Azure: the operator signs in to PostgreSQL as an
//! Entra administrator with its own workload identity (a real ServiceAccount token from the test
//! apiserver, exchanged at the Entra fake against a federated credential), and creates the
//! binding's principal with `pgaadauth_create_principal_with_oid`. PostgreSQL has no
//! `pgaadauth_*` functions: the fixture installs functions with Azure's names and signatures
//! that create the role and record what they were given, so the operator's Azure path runs
//! for real against a real server.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::bindings::{condition, kubectl_apply, wait_condition};
use pgmcp_tests::entra::{EntraFake, POSTGRES_RESOURCE};
use pgmcp_tests::operator::{Operator, WorkloadIdentity};
use pgmcp_tests::postgres::{PGAADAUTH_FIXTURE, entra_admin_sql};
use pgmcp_tests::{Postgres, TestEnv};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const TENANT: &str = "22222222-2222-4222-8222-222222222222";
/// The operator's own managed identity, an Entra administrator of the server.
const OPERATOR_CLIENT_ID: &str = "55555555-5555-4555-8555-555555555555";
/// The binding's managed identity.
const MI_CLIENT_ID: &str = "11111111-1111-4111-8111-111111111111";
const MI_OBJECT_ID: &str = "33333333-3333-4333-8333-333333333333";

/// A binding in Entra mode: the operator signs in as Entra administrator `admin`, the server as
/// the managed identity's principal.
fn entra_binding(pg: &Postgres, database: &str, admin: &str, principal: &str) -> serde_json::Value {
    json!({
        "apiVersion": "pgmcp.dev/v1alpha1",
        "kind": "PostgresMcpBinding",
        "metadata": {"name": "sales"},
        "spec": {
            "postgres": {
                "host": pg.host(), "port": pg.port(), "database": database, "sslMode": "require",
                "admin": {"entra": {"user": admin}}
            },
            "identity": {"entra": {
                "clientId": MI_CLIENT_ID, "tenantId": TENANT, "principalName": principal
            }},
            "access": {"grants": [{"schema": "public", "tables": ["*"]}]},
            "server": {"auth": {"none": {"acknowledgeInsecure": true}}}
        }
    })
}

/// A database with the `pgaadauth_*` fixture, its Entra administrator (CREATEROLE, like
/// azure_pg_admin members, owning the data), an operator signing in as that administrator with
/// its own workload identity, and the binding applied.
struct Entra {
    _ns: pgmcp_tests::TestNamespace,
    _db: pgmcp_tests::TestDatabase,
    admin: Arc<tokio_postgres::Client>,
    fake: EntraFake,
    operator: Operator,
    principal: String,
    bindings: Api<PostgresMcpBinding>,
}

impl Entra {
    /// `fixture_options`: SQL run after the fixture is installed, before the binding.
    async fn start(test: &str, fixture_options: &str) -> Self {
        let env = TestEnv::shared();
        let pg = Postgres::shared();
        let ns = env.namespace(test).await.unwrap();
        let db = pg.create_database(test).await.unwrap();
        let entra_admin = format!("{}_aad_admin", db.name);
        let principal = format!("{}_mi", db.name);
        let admin = Arc::new(db.connect().await.unwrap());
        admin.batch_execute(PGAADAUTH_FIXTURE).await.unwrap();
        admin.batch_execute(fixture_options).await.unwrap();
        admin
            .batch_execute(&entra_admin_sql(&entra_admin))
            .await
            .unwrap();

        // The operator's own identity, federated with its ServiceAccount.
        let fake = EntraFake::start().await.unwrap();
        fake.add_tenant(TENANT).unwrap();
        // Azure accepts any unexpired token of the administrator.
        fake.accept_postgres_tokens_as_password(
            admin.clone(),
            &[(OPERATOR_CLIENT_ID, &entra_admin)],
        );
        let identity = WorkloadIdentity {
            entra: &fake,
            tenant: TENANT,
            client_id: OPERATOR_CLIENT_ID,
            object_id: "66666666-6666-4666-8666-666666666666",
            trust: &[fake.ca_cert()],
        };
        let operator = Operator::start_with_workload_identity(env, &ns, test, &identity, &[])
            .await
            .unwrap();

        let mut binding = entra_binding(pg, &db.name, &entra_admin, &principal);
        binding["spec"]["postgres"]["admin"]["database"] = json!(db.name);
        binding["spec"]["identity"]["entra"]["objectId"] = json!(MI_OBJECT_ID);
        kubectl_apply(&ns, &binding.to_string());
        let bindings: Api<PostgresMcpBinding> = ns.api();
        Entra {
            _ns: ns,
            _db: db,
            admin,
            fake,
            operator,
            principal,
            bindings,
        }
    }
}

#[tokio::test]
async fn entra_binding_gets_its_principal_through_the_operators_workload_identity() {
    let e = Entra::start("entra-db", "").await;
    let binding = wait_condition(&e.bindings, "sales", "DatabaseReady", "True", None, WAIT).await;
    assert_eq!(
        condition(&binding, "ReadOnlyVerified").unwrap().reason,
        "ReadOnly"
    );
    // An administrator like azure_pg_admin, not a superuser, may not create event triggers: no
    // catalog tracker, and status says why (discovery compares catalog fingerprints instead).
    let tracker = binding
        .status
        .as_ref()
        .unwrap()
        .catalog_tracker
        .clone()
        .unwrap();
    assert!(!tracker.in_use);
    let reason = tracker.reason.unwrap();
    assert!(reason.contains("may not create event triggers"), "{reason}");
    let none: bool = e
        .admin
        .query_one("SELECT to_regnamespace('pgmcp') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(none, "nothing half-installed");

    // The principal was made by Azure's function, with the managed identity's object id.
    let row = e
        .admin
        .query_one(
            "SELECT object_id, object_type FROM fixture.pgaadauth_principals WHERE rolname = $1",
            &[&e.principal],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (MI_OBJECT_ID.to_owned(), "service".to_owned())
    );
    let can_read: bool = e
        .admin
        .query_one(
            "SELECT has_table_privilege(to_regrole($1), 'public.sales', 'SELECT')",
            &[&format!("\"{}\"", e.principal)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_read);
    // The operator signed in with a token for the PostgreSQL scope, from its own identity.
    assert!(
        e.fake
            .issued()
            .iter()
            .any(|i| i.client_id == OPERATOR_CLIENT_ID && i.resource == POSTGRES_RESOURCE)
    );
    assert!(
        e.operator.log().contains("workload identity found"),
        "{}",
        e.operator.log()
    );
}

/// Since PostgreSQL 16 the administrator needs ADMIN OPTION on the principal to mark it (and
/// later drop it). A server whose principal function does not give it stalls the binding with
/// PostgreSQL's reason, and no principal is left behind without its mark.
#[tokio::test]
async fn an_administrator_without_admin_option_on_the_principal_is_told_what_postgresql_wants() {
    if Postgres::shared().major() < 16 {
        eprintln!("PostgreSQL 15 and earlier let any CREATEROLE role comment on a role");
        return;
    }
    let e = Entra::start(
        "entra-no-admin",
        "UPDATE fixture.options SET creator_admin = false",
    )
    .await;
    let binding = wait_condition(
        &e.bindings,
        "sales",
        "DatabaseReady",
        "False",
        Some("SqlFailed"),
        WAIT,
    )
    .await;
    let message = condition(&binding, "DatabaseReady").unwrap().message;
    assert!(
        message.contains(&format!("failed to mark role {} as managed", e.principal))
            && message.contains(&format!(
                "42501: permission denied (The current user must have the ADMIN option on role \"{}\".)",
                e.principal
            )),
        "{message}"
    );
    let left: i64 = e
        .admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1",
            &[&e.principal],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the creation was rolled back with the mark");
}

#[tokio::test]
async fn without_a_workload_identity_an_entra_admin_binding_stalls_saying_what_to_do() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("entra-none").await.unwrap();
    let _operator = Operator::start(env, &ns.name, "op-no-identity", &[])
        .await
        .unwrap();
    let binding = entra_binding(pg, "sales", "pgmcp-operator", "sales-mcp");
    kubectl_apply(&ns, &binding.to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = wait_condition(
        &bindings,
        "sales",
        "Stalled",
        "True",
        Some("NoWorkloadIdentity"),
        WAIT,
    )
    .await;
    let message = condition(&binding, "Stalled").unwrap().message;
    assert!(
        message.contains("AZURE_CLIENT_ID") && message.contains("Entra administrator"),
        "{message}"
    );
    // The Kubernetes side is still deployed and reported.
    assert!(condition(&binding, "ServerAvailable").is_some());
}
