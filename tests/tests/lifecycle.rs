//! Lifecycle by record: nothing a binding made outlives it, whatever the user does — deleting
//! the whole namespace, retargeting the binding at other Azure objects or another database,
//! growing past Microsoft Graph's first page of assignees, or killing the operator between the
//! statements that create a role. Against the real apiserver and controller-manager (the
//! namespace controller, garbage collection), real PostgreSQL and the Azure fakes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pgmcp_crds::v1alpha1::{AzureResourceKind, PostgresMcpBinding};
use pgmcp_tests::bindings::{
    condition, create_admin_secret, delete_and_wait, kubectl_apply, kubectl_ok, password_example,
    wait_condition, wait_gone,
};
use pgmcp_tests::foundry::{Foundry, MCP_READ_ID, SERVER_SP_ID, SUBSCRIPTION};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, eventually, wait_for};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

/// A Foundry binding's fakes (with Graph) on a fresh database of the shared server.
async fn foundry(test: &str) -> Foundry {
    let pg = Postgres::shared();
    let db = pg.create_database(test).await.unwrap();
    let mut azure = Foundry::start_in(&db, pg.host()).await.unwrap();
    azure.start_graph().await.unwrap();
    azure
}

/// Applies the Foundry binding `sales` with `assignAppRole` and waits until its connection and
/// the project identity's app role are in place.
async fn apply_sales_with_app_role(
    azure: &Foundry,
    env: &TestEnv,
    ns: &pgmcp_tests::TestNamespace,
) -> Api<PostgresMcpBinding> {
    let mut binding = azure.binding("sales", env.server());
    binding["spec"]["foundry"]["assignAppRole"] = json!(true);
    kubectl_apply(ns, &binding.to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(
        &bindings,
        "sales",
        "FoundryConnectionReady",
        "True",
        None,
        WAIT,
    )
    .await;
    bindings
}

/// Whether role `role` exists on the shared server.
async fn role_exists(role: &str) -> bool {
    Postgres::shared()
        .connect("postgres")
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

async fn patch(bindings: &Api<PostgresMcpBinding>, name: &str, patch: Value) {
    bindings
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Waits until binding `name` has seen its latest spec and `check` holds for it.
async fn settles(
    bindings: &Api<PostgresMcpBinding>,
    name: &str,
    what: &str,
    check: impl Fn(&PostgresMcpBinding) -> bool,
) -> PostgresMcpBinding {
    wait_for(what, WAIT, || async {
        let binding = bindings.get(name).await.ok()?;
        let status = binding.status.as_ref()?;
        (status.observed_generation == binding.metadata.generation && check(&binding))
            .then_some(binding)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_removes_what_its_bindings_made_outside_it_within_a_minute() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("ns-delete").await.unwrap();
    let azure = foundry("ns_delete").await;
    let graph = azure.graph.as_ref().unwrap();
    // The Lease would go with the namespace: this operator runs without leader election.
    let operator = azure
        .start_operator(env, &ns, "op-ns-delete", &["--leader-election=false"])
        .await
        .unwrap();
    let _log = operator.log_on_panic();

    // An Entra binding with a credential, a connection and an app role, and two password
    // bindings whose admin Secret the namespace deletion removes at the same time as them.
    let bindings = apply_sales_with_app_role(&azure, env, &ns).await;
    create_admin_secret(&ns, pg);
    let db = pg.create_database("ns_delete_shop").await.unwrap();
    let shop_role = format!("{}_r", db.name);
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), &db.name, &shop_role),
    );
    // A second binding on the same admin Secret: the last one out takes the finalizer off.
    let stock_role = format!("{}_stock", db.name);
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), &db.name, &stock_role)
            .replace("name: shop", "name: stock"),
    );
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    wait_condition(&bindings, "stock", "DatabaseReady", "True", None, WAIT).await;

    // What exists, and where, reads off the binding.
    let sales = bindings.get("sales").await.unwrap();
    let inventory = sales.status.unwrap().inventory.unwrap();
    let role = inventory.role.as_ref().unwrap();
    assert_eq!(role.name, azure.principal);
    assert_eq!(
        role.oid,
        azure.principal_oid().await.unwrap().map(i64::from),
        "the role's oid is recorded"
    );
    assert_eq!(role.databases, std::slice::from_ref(&azure.target.database));
    let kinds: Vec<AzureResourceKind> = inventory.azure_resources.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            AzureResourceKind::FederatedIdentityCredential,
            AzureResourceKind::FoundryConnection
        ]
    );
    assert!(
        inventory
            .azure_resources
            .iter()
            .all(|r| !r.api_version.is_empty()),
        "{inventory:?}"
    );
    assert_eq!(inventory.app_role_assignments.len(), 1);
    assert_eq!(
        inventory.app_role_assignments[0].id,
        graph.assignments()[0].id,
        "the assignment's id is recorded"
    );
    let secrets: Api<Secret> = ns.api();
    let secret = secrets.get("pg-admin").await.unwrap();
    assert!(
        secret
            .metadata
            .finalizers
            .unwrap_or_default()
            .contains(&pgmcp_crds::SECRET_IN_USE_FINALIZER.to_owned()),
        "the admin Secret is kept while the binding may need it"
    );
    assert!(role_exists(&shop_role).await);

    let started = Instant::now();
    kubectl_ok({
        let mut delete = env.kubectl();
        delete.args(["delete", "namespace", &ns.name, "--wait=false"]);
        delete
    });
    let namespaces: Api<Namespace> = Api::all(ns.client.clone());
    eventually("the namespace gone", Duration::from_secs(60), || async {
        namespaces
            .get_opt(&ns.name)
            .await
            .is_ok_and(|n| n.is_none())
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(60), "{took:?}");

    assert!(
        !role_exists(&azure.principal).await,
        "Entra principal dropped"
    );
    assert!(!role_exists(&shop_role).await, "password role dropped");
    assert!(!role_exists(&stock_role).await, "and the other one");
    assert_eq!(
        azure.arm_resources(),
        (0, 0),
        "credential and connection deleted"
    );
    assert!(
        graph.assignments().is_empty(),
        "app role assignment deleted"
    );
    eprintln!("namespace deleted in {:.1} s", took.as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retargeting_leaves_exactly_the_new_azure_objects_and_deletes_the_old() {
    let env = TestEnv::shared();
    let ns = env.namespace("retarget").await.unwrap();
    let azure = foundry("retarget").await;
    let (arm, graph) = (&azure.arm, azure.graph.as_ref().unwrap());
    let rg = format!("{SUBSCRIPTION}/resourceGroups/rg-agents/providers");
    let identity2 = format!("{rg}/Microsoft.ManagedIdentity/userAssignedIdentities/sales-mcp-2");
    arm.add_identity(
        &identity2,
        "12121212-1212-4121-8121-121212121212",
        "13131313-1313-4131-8131-131313131313",
    )
    .unwrap();
    let project2 =
        format!("{rg}/Microsoft.CognitiveServices/accounts/contoso-ai/projects/support-agents");
    arm.add_project(&project2).unwrap();
    azure.add_graph_project(&project2).unwrap();
    let _operator = azure
        .start_operator(env, &ns, "op-retarget", &[])
        .await
        .unwrap();
    let bindings = apply_sales_with_app_role(&azure, env, &ns).await;
    let fics = |identity: &str| arm.resources_under(identity);
    let connections = |project: &str| arm.resources_under(project);
    assert_eq!(fics(&azure.identity_id).len(), 1);
    assert_eq!(azure.project_assignments(&azure.project_id).len(), 1);
    let recorded = |b: &PostgresMcpBinding| {
        let inventory = b.status.as_ref().unwrap().inventory.clone().unwrap();
        (
            inventory
                .azure_resources
                .iter()
                .map(|r| r.id.to_ascii_lowercase())
                .collect::<Vec<_>>(),
            inventory.app_role_assignments.len(),
        )
    };

    // The credential renamed: the new one exists, the old one is gone.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"identity": {"entra": {"federatedCredential": {"name": "sales-renamed"}}}}}),
    )
    .await;
    let renamed = format!(
        "{}/federatedIdentityCredentials/sales-renamed",
        azure.identity_id
    );
    let b = settles(&bindings, "sales", "the renamed credential alone", |_| {
        fics(&azure.identity_id) == [renamed.to_ascii_lowercase()]
    })
    .await;
    assert!(
        recorded(&b).0.contains(&renamed.to_ascii_lowercase()),
        "{:?}",
        recorded(&b)
    );
    assert_eq!(recorded(&b).0.len(), 2, "{:?}", recorded(&b));

    // A new issuer rewrites the same credential.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"identity": {"entra": {"federatedCredential": {"issuer": "https://oidc.example.test/issuer/"}}}}}),
    )
    .await;
    settles(
        &bindings,
        "sales",
        "the credential with the new issuer",
        |_| {
            arm.resource(&renamed).is_some_and(|f| {
                f["properties"]["issuer"] == json!("https://oidc.example.test/issuer/")
            }) && fics(&azure.identity_id).len() == 1
        },
    )
    .await;

    // Another managed identity: its credential exists, the first identity has none.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"identity": {"entra": {"federatedCredential": {"identityResourceId": identity2}}}}}),
    )
    .await;
    settles(
        &bindings,
        "sales",
        "the credential moved to identity 2",
        |_| fics(&identity2).len() == 1 && fics(&azure.identity_id).is_empty(),
    )
    .await;

    // Another Foundry project: connection and app role follow, nothing stays in the first.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"foundry": {"projectResourceId": project2}}}),
    )
    .await;
    let b = settles(
        &bindings,
        "sales",
        "connection and role in project 2",
        |b| {
            connections(&project2).len() == 1
                && connections(&azure.project_id).is_empty()
                && azure.project_assignments(&project2).len() == 1
                && azure.project_assignments(&azure.project_id).is_empty()
                && condition(b, "FoundryConnectionReady").is_some_and(|c| c.status == "True")
        },
    )
    .await;
    assert_eq!(recorded(&b).1, 1, "one assignment recorded");
    assert_eq!(graph.assignments().len(), 1);

    // No app role any more: the assignment goes, the connection stays.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"foundry": {"assignAppRole": false}}}),
    )
    .await;
    let b = settles(&bindings, "sales", "the assignment removed", |_| {
        graph.assignments().is_empty() && connections(&project2).len() == 1
    })
    .await;
    assert_eq!(recorded(&b).1, 0);

    // No foundry section: the connection goes.
    patch(&bindings, "sales", json!({"spec": {"foundry": null}})).await;
    let b = settles(&bindings, "sales", "the connection removed", |b| {
        connections(&project2).is_empty() && b.status.as_ref().is_some_and(|s| s.foundry.is_none())
    })
    .await;
    assert_eq!(recorded(&b).0.len(), 1, "{:?}", recorded(&b));
    assert!(condition(&b, "FoundryConnectionReady").is_none());

    // No federated credential: it goes too.
    patch(
        &bindings,
        "sales",
        json!({"spec": {"identity": {"entra": {"federatedCredential": null}}}}),
    )
    .await;
    let b = settles(&bindings, "sales", "the credential removed", |b| {
        fics(&identity2).is_empty()
            && b.status
                .as_ref()
                .is_some_and(|s| s.federated_credential.is_none())
    })
    .await;
    assert!(recorded(&b).0.is_empty(), "{:?}", recorded(&b));
    assert_eq!(azure.arm_resources(), (0, 0));
    assert_eq!(arm.resources_under(&project2), Vec::<String>::new());
    assert_eq!(
        graph.count("POST", "/appRoleAssignedTo"),
        2,
        "one assignment per project, never a duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_gets_the_grants_and_the_old_one_loses_them() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("retarget-db").await.unwrap();
    let first = pg.create_database("retarget_db_1").await.unwrap();
    let second = pg.create_database("retarget_db_2").await.unwrap();
    for db in [&first, &second] {
        db.connect()
            .await
            .unwrap()
            .batch_execute("CREATE TABLE public.orders (id int)")
            .await
            .unwrap();
    }
    create_admin_secret(&ns, pg);
    let _operator = Operator::start(env, &ns.name, "op-retarget-db", &[])
        .await
        .unwrap();
    let role = format!("{}_r", first.name);
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), &first.name, &role),
    );
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    let can = |database: String, privilege: &'static str| {
        let role = role.clone();
        async move {
            Postgres::shared()
                .connect(&database)
                .await
                .unwrap()
                .query_one(
                    "SELECT has_database_privilege($1::text::name, current_database(), 'CONNECT')
                            AND has_table_privilege($1::text::name, 'public.orders', $2)",
                    &[&role, &privilege],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    };
    // PUBLIC holds CONNECT on new databases: revoke it, so CONNECT is the binding's grant.
    for db in [&first, &second] {
        db.connect()
            .await
            .unwrap()
            .batch_execute(&format!(
                "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
                db.name
            ))
            .await
            .unwrap();
    }
    assert!(can(first.name.clone(), "SELECT").await);

    patch(
        &bindings,
        "shop",
        json!({"spec": {"postgres": {"database": second.name}}}),
    )
    .await;
    let b = settles(&bindings, "shop", "the grants moved", |b| {
        condition(b, "DatabaseReady").is_some_and(|c| c.status == "True")
            && b.status
                .as_ref()
                .and_then(|s| s.inventory.as_ref()?.role.clone())
                .is_some_and(|r| r.databases == [second.name.clone()])
    })
    .await;
    assert!(
        can(second.name.clone(), "SELECT").await,
        "granted in the new database"
    );
    assert!(
        !can(first.name.clone(), "SELECT").await,
        "revoked in the old one"
    );
    assert_eq!(
        b.status.unwrap().inventory.unwrap().role.unwrap().databases,
        std::slice::from_ref(&second.name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_pages_are_all_read_so_the_assignment_is_neither_duplicated_nor_left_behind() {
    let env = TestEnv::shared();
    let ns = env.namespace("graph-pages").await.unwrap();
    let azure = foundry("graph_pages").await;
    let graph = azure.graph.as_ref().unwrap();
    // Seven callers hold the role already; Graph answers three per page, so the project's
    // assignment lands on the third page.
    graph.add_assignments(SERVER_SP_ID, MCP_READ_ID, 7).unwrap();
    graph.set_max_page_size(Some(3));
    let operator = azure
        .start_operator(env, &ns, "op-graph-pages", &[])
        .await
        .unwrap();
    let bindings = apply_sales_with_app_role(&azure, env, &ns).await;
    assert_eq!(azure.project_assignments(&azure.project_id).len(), 1);

    // Two more reconciles read every page, find the assignment and write nothing.
    let reconciles = operator.reconciles().await;
    for touch in ["1", "2"] {
        patch(
            &bindings,
            "sales",
            json!({"metadata": {"annotations": {"touch": touch}}}),
        )
        .await;
    }
    operator.wait_reconciles(reconciles + 2.0, WAIT).await;
    let binding = bindings.get("sales").await.unwrap();
    let ready = condition(&binding, "FoundryConnectionReady").unwrap();
    assert_eq!(ready.status, "True", "{}", ready.message);
    assert_eq!(
        graph
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count(),
        1,
        "one POST, never a duplicate: {:?}",
        graph.requests()
    );
    assert_eq!(azure.project_assignments(&azure.project_id).len(), 1);

    // Deleting the binding deletes its assignment by the recorded id; the others stay.
    delete_and_wait(&bindings, "sales", WAIT).await;
    assert!(azure.project_assignments(&azure.project_id).is_empty());
    assert_eq!(
        graph.assignments().len(),
        7,
        "the other callers keep theirs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_between_creating_a_role_and_marking_it_leaves_no_unmarked_role() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("role-crash").await.unwrap();
    let db = pg.create_database("role_crash").await.unwrap();
    create_admin_secret(&ns, pg);
    let role = format!("{}_r", db.name);

    // Hold back the mark: COMMENT ON ROLE writes pg_shdescription, which this transaction keeps
    // locked against writers (readers, such as the operator's lookup, pass).
    let mut blocker = pg.connect("postgres").await.unwrap();
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pg_catalog.pg_shdescription IN SHARE MODE")
        .await
        .unwrap();
    let mut operator = Operator::start(env, &ns.name, "op-role-crash-1", &[])
        .await
        .unwrap();
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), &db.name, &role),
    );
    let watcher = pg.connect("postgres").await.unwrap();
    let pid: i32 = wait_for("the operator waiting to mark the role", WAIT, || async {
        watcher
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE application_name = 'pgmcp-operator' AND wait_event_type = 'Lock'
                   AND query LIKE 'COMMENT ON ROLE \"' || $1 || '\"%'",
                &[&role],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;

    // The crash: the operator dies, and with it its connection, between the two statements.
    operator.kill().unwrap();
    watcher
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    lock.rollback().await.unwrap();
    eventually("the operator's backend gone", WAIT, || async {
        watcher
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    assert!(
        !role_exists(&role).await,
        "a role without its mark would be taken for someone else's"
    );

    // The next operator creates it, marked, and the binding is ready.
    let _operator = Operator::start(env, &ns.name, "op-role-crash-2", &[])
        .await
        .unwrap();
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    assert_eq!(condition(&binding, "Stalled").unwrap().status, "False");
    let comment: String = watcher
        .query_one(
            "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        comment,
        format!("managed by pgmcp binding {}/shop", ns.name)
    );
}

/// What an operator that kept no record leaves: a status without `inventory`, and an admin
/// Secret without the in-use finalizer.
async fn forget_the_record(ns: &pgmcp_tests::TestNamespace, name: &str) {
    let bindings: Api<PostgresMcpBinding> = ns.api();
    bindings
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"inventory": null}})),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = ns.api();
    secrets
        .patch(
            "pg-admin",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_from_before_the_record_gets_one_and_is_still_cleaned_up() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("legacy").await.unwrap();
    let db = pg.create_database("legacy").await.unwrap();
    let role = format!("{}_r", db.name);
    create_admin_secret(&ns, pg);
    let mut operator = Operator::start(env, &ns.name, "op-legacy-1", &[])
        .await
        .unwrap();
    kubectl_apply(
        &ns,
        &password_example(pg.host(), pg.port(), &db.name, &role),
    );
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    operator.stop();

    // An upgrade: the new operator records what the spec names and it finds.
    forget_the_record(&ns, "shop").await;
    let mut operator = Operator::start(env, &ns.name, "op-legacy-2", &[])
        .await
        .unwrap();
    patch(
        &bindings,
        "shop",
        json!({"metadata": {"annotations": {"touch": "1"}}}),
    )
    .await;
    let binding = wait_for("the record", WAIT, || async {
        let binding = bindings.get("shop").await.ok()?;
        let inventory = binding.status.as_ref()?.inventory.clone()?;
        inventory.role.as_ref()?.oid.is_some().then_some(binding)
    })
    .await;
    let inventory = binding.status.unwrap().inventory.unwrap();
    assert_eq!(inventory.role.unwrap().name, role);
    assert_eq!(inventory.admin_secret.as_deref(), Some("pg-admin"));
    let secrets: Api<Secret> = ns.api();
    eventually("the admin Secret protected", WAIT, || async {
        secrets.get("pg-admin").await.is_ok_and(|s| {
            s.metadata
                .finalizers
                .unwrap_or_default()
                .contains(&pgmcp_crds::SECRET_IN_USE_FINALIZER.to_owned())
        })
    })
    .await;
    operator.stop();

    // Deleted while no operator runs, with no record at all: cleanup works from the spec.
    forget_the_record(&ns, "shop").await;
    bindings
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    let _operator = Operator::start(env, &ns.name, "op-legacy-3", &[])
        .await
        .unwrap();
    wait_gone(&bindings, "shop", WAIT).await;
    assert!(!role_exists(&role).await, "the role dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bindings_created_together_on_one_admin_secret_protect_it_without_a_failed_reconcile() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns = env.namespace("secret-together").await.unwrap();
    let operator = Operator::start(env, &ns.name, "op-secret-together", &[])
        .await
        .unwrap();
    let _log = operator.log_on_panic();
    create_admin_secret(&ns, pg);
    let db = pg.create_database("secret_together").await.unwrap();

    // One `kubectl apply` of eight bindings on the same Secret: the operator reconciles four at
    // once, and each finds the Secret without the finalizer and adds it.
    let names: Vec<String> = (0..8).map(|i| format!("shop-{i}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|name| {
            password_example(
                pg.host(),
                pg.port(),
                &db.name,
                &format!("{}_{}", db.name, name.replace('-', "_")),
            )
            .replace("name: shop\n", &format!("name: {name}\n"))
        })
        .collect();
    kubectl_apply(&ns, &manifests.join("\n---\n"));
    let bindings: Api<PostgresMcpBinding> = ns.api();
    for name in &names {
        wait_condition(&bindings, name, "DatabaseReady", "True", None, WAIT).await;
    }

    let errors = operator
        .metric("pgmcp_operator_reconcile_errors_total")
        .await
        .unwrap();
    assert_eq!(
        errors, 0.0,
        "a concurrent change of the Secret is retried, not a failed reconcile"
    );
    let secrets: Api<Secret> = ns.api();
    let finalizers = secrets
        .get("pg-admin")
        .await
        .unwrap()
        .metadata
        .finalizers
        .unwrap_or_default();
    assert_eq!(finalizers, [pgmcp_crds::SECRET_IN_USE_FINALIZER]);

    // All deleted together: the last one out takes the finalizer off, and the Secret can go.
    let mut delete = ns.kubectl();
    delete.args([
        "delete",
        "postgresmcpbindings",
        "--all",
        "--wait=true",
        "--timeout=90s",
    ]);
    kubectl_ok(delete);
    eventually("the admin Secret released", WAIT, || async {
        secrets
            .get("pg-admin")
            .await
            .is_ok_and(|s| s.metadata.finalizers.unwrap_or_default().is_empty())
    })
    .await;
    for name in &names {
        assert!(!role_exists(&format!("{}_{}", db.name, name.replace('-', "_"))).await);
    }
}
