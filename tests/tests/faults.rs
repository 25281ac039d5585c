//! The operator under faults: the control plane restarting, the operator killed in the middle of
//! a reconcile, ARM throttling and failing, PostgreSQL and ARM down during a deletion, two
//! bindings wanting the same role. Each time it must converge to the same end state, without hot
//! loops, duplicates or anything left behind.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use pgmcp_crds::v1alpha1::PostgresMcpBinding;
use pgmcp_tests::arm::Fault;
use pgmcp_tests::bindings::{
    condition, create_admin_secret, kubectl_apply, kubectl_ok, password_example, wait_condition,
    wait_gone,
};
use pgmcp_tests::foundry::{Foundry, Target};
use pgmcp_tests::operator::Operator;
use pgmcp_tests::{Postgres, TestEnv, TestNamespace, eventually, paths, wait_for};

const WAIT: Duration = Duration::from_secs(90);

/// The password example as binding `name` with role `role`, on database `database` of `pg`.
fn password_binding(pg: &Postgres, database: &str, name: &str, role: &str) -> String {
    password_example(pg.host(), pg.port(), database, role)
        .replace("name: shop", &format!("name: {name}"))
}

async fn role_comment(pg: &Postgres, role: &str) -> Option<String> {
    pg.connect("postgres")
        .await
        .unwrap()
        .query_opt(
            "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn role_oid(pg: &Postgres, role: &str) -> Option<u32> {
    pg.connect("postgres")
        .await
        .unwrap()
        .query_opt("SELECT oid FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_an_apiserver_restart_and_nothing_is_missed_or_redone() {
    // A control plane of its own, since its apiserver goes away.
    let env: &'static TestEnv = Box::leak(Box::new(TestEnv::start().await.unwrap()));
    let pg = Postgres::shared();
    let ns = env.namespace("apiserver-restart").await.unwrap();
    let azure = foundry("apiserver_restart").await;
    create_admin_secret(&ns, pg);
    // No periodic resync within the test: only watch events can bring the new binding. The
    // Lease outlives the outage (a shorter one would end the process, for Kubernetes to restart).
    let mut operator = azure
        .start_operator(
            env,
            &ns,
            "op-apiserver",
            &["--resync=1h", "--lease-duration=120s"],
        )
        .await
        .unwrap();
    kubectl_apply(&ns, &azure.binding("first", env.server()).to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let before = foundry_ready(&bindings, "first").await;
    let oid = azure.principal_oid().await.unwrap();
    let arm_writes =
        || azure.arm.count_matching("PUT", "/") + azure.arm.count_matching("DELETE", "/");
    let writes = arm_writes();
    let deployments: Api<Deployment> = ns.api();
    let deployment_generation = deployments
        .get("first-mcp")
        .await
        .unwrap()
        .metadata
        .generation;

    // The apiserver the operator talks to goes away; a second one on the same etcd (as in an
    // HA control plane) takes a new binding meanwhile.
    let (second, kubeconfig) = env.second_apiserver().await.unwrap();
    env.stop_apiserver();
    let second_role = format!("{}_second", azure.target.database);
    let manifest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        manifest.path(),
        password_binding(pg, &azure.target.database, "second", &second_role),
    )
    .unwrap();
    let mut apply = std::process::Command::new(paths::kubectl());
    apply
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--namespace", &ns.name, "apply", "-f"])
        .arg(manifest.path());
    kubectl_ok(apply);
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(second);
    env.start_apiserver().await.unwrap();

    // The binding made while the operator could not watch is reconciled.
    wait_condition(&bindings, "second", "DatabaseReady", "True", None, WAIT).await;
    assert!(role_oid(pg, &second_role).await.is_some());
    assert!(!operator.exited(), "the operator survived the outage");
    // Nothing of the first binding was done again: no ARM write, same principal, no rollout,
    // no new transition.
    assert_eq!(arm_writes(), writes, "no ARM write repeated");
    assert_eq!(azure.principal_oid().await.unwrap(), oid, "principal kept");
    assert_eq!(
        deployments
            .get("first-mcp")
            .await
            .unwrap()
            .metadata
            .generation,
        deployment_generation,
        "no rollout"
    );
    let after = bindings.get("first").await.unwrap();
    for type_ in ["DatabaseReady", "FoundryConnectionReady"] {
        assert_eq!(
            condition(&after, type_).unwrap().last_transition_time,
            condition(&before, type_).unwrap().last_transition_time,
            "{type_}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_within_15_seconds_after_the_apiserver_is_killed() {
    // A control plane of its own, since its apiserver goes away.
    let env: &'static TestEnv = Box::leak(Box::new(TestEnv::start().await.unwrap()));
    let pg = Postgres::shared();
    let db = pg.create_database("apiserver_killed").await.unwrap();
    let ns = env.namespace("apiserver-killed").await.unwrap();
    create_admin_secret(&ns, pg);
    // No periodic resync within the test: only watch events can bring the changes made after
    // the restart. A Lease shorter than the outage: it expires meanwhile, and with no other
    // replica to take it the operator must keep it rather than exit.
    let identity = "op-apiserver-killed";
    let mut operator = Operator::start_with_env(
        env,
        &ns.name,
        identity,
        &["--resync=1h", "--lease-duration=3s"],
        &[("RUST_LOG".to_owned(), "info,kube_runtime=debug".to_owned())],
    )
    .await
    .unwrap();
    let _log = operator.log_on_panic();
    let role = |name: &str| format!("{}_{name}", db.name);
    kubectl_apply(
        &ns,
        &password_binding(pg, &db.name, "first", &role("first")),
    );
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "first", "DatabaseReady", "True", None, WAIT).await;

    // A crash, and the apiserver's supervisor (kubelet, systemd) starting it again a moment
    // later.
    let killed = Instant::now();
    env.kill_apiserver().unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.start_apiserver().await.unwrap();
    let ready = Instant::now();
    let ready_at = jiff::Timestamp::now();
    eprintln!(
        "kube-apiserver ready again {:.1} s after it was killed",
        (ready - killed).as_secs_f64()
    );

    // A binding created and a binding changed after the restart are both reconciled, and the
    // operator renews its Lease again, meanwhile.
    let leases: Api<Lease> = ns.api();
    let renewed = wait_for("the Lease renewed after the restart", WAIT, || async {
        let spec = leases.get("pgmcp-operator").await.ok()?.spec?;
        (spec.holder_identity.as_deref() == Some(identity) && spec.renew_time?.0 > ready_at)
            .then(|| ready.elapsed())
    });
    let reconciled = async {
        kubectl_apply(
            &ns,
            &password_binding(pg, &db.name, "second", &role("second")),
        );
        let change = serde_json::json!({ "spec": { "server": { "limits": { "maxRows": 7 } } } });
        bindings
            .patch("first", &PatchParams::default(), &Patch::Merge(&change))
            .await
            .unwrap();
        wait_condition(&bindings, "second", "DatabaseReady", "True", None, WAIT).await;
        // For the binding's new generation.
        wait_condition(&bindings, "first", "DatabaseReady", "True", None, WAIT).await;
        ready.elapsed()
    };
    let (renewed, reconciled) = tokio::join!(renewed, reconciled);
    eprintln!(
        "reconciled {:.1} s and the Lease renewed {:.1} s after kube-apiserver was ready again",
        reconciled.as_secs_f64(),
        renewed.as_secs_f64()
    );
    assert!(
        reconciled <= Duration::from_secs(15),
        "reconciled {:.1} s after kube-apiserver was ready again",
        reconciled.as_secs_f64()
    );
    assert!(
        renewed <= Duration::from_secs(5),
        "Lease renewed {:.1} s after kube-apiserver was ready again",
        renewed.as_secs_f64()
    );
    assert!(!operator.exited(), "the operator survived the outage");
    assert!(role_oid(pg, &role("second")).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_reported_and_the_grants_are_repaired_when_it_ends() {
    let env = TestEnv::shared();
    let pg = Postgres::start_restartable().await.unwrap();
    pg.database_with("shop", "CREATE TABLE customers (id int)")
        .await
        .unwrap();
    let ns = env.namespace("db-outage").await.unwrap();
    create_admin_secret(&ns, &pg);
    let _operator = Operator::start(env, &ns.name, "op-db-outage", &["--resync=2s"])
        .await
        .unwrap();
    kubectl_apply(&ns, &password_binding(&pg, "shop", "shop", "shop_outage"));
    let bindings: Api<PostgresMcpBinding> = ns.api();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;

    pg.stop();
    let down = wait_condition(
        &bindings,
        "shop",
        "DatabaseReady",
        "False",
        Some("DatabaseUnreachable"),
        WAIT,
    )
    .await;
    let message = condition(&down, "DatabaseReady").unwrap().message;
    assert!(
        message.contains(&format!(
            "failed to connect to PostgreSQL {}:{}",
            pg.host(),
            pg.port()
        )),
        "{message}"
    );

    // Back, with drift made while the operator could not look: it is repaired.
    pg.restart().await.unwrap();
    pg.connect("shop")
        .await
        .unwrap()
        .batch_execute("REVOKE SELECT ON customers FROM shop_outage")
        .await
        .unwrap();
    wait_condition(&bindings, "shop", "DatabaseReady", "True", None, WAIT).await;
    let can_read: bool = pg
        .connect("shop")
        .await
        .unwrap()
        .query_one(
            "SELECT has_table_privilege('shop_outage', 'customers', 'SELECT')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_read, "the revoked grant is back");
}

/// Waits until binding `name` has its Foundry connection (the last step of a reconcile).
async fn foundry_ready(bindings: &Api<PostgresMcpBinding>, name: &str) -> PostgresMcpBinding {
    wait_condition(bindings, name, "FoundryConnectionReady", "True", None, WAIT).await
}

/// A Foundry binding's fakes on a fresh database of the shared server.
async fn foundry(test: &str) -> Foundry {
    let pg = Postgres::shared();
    let db = pg.create_database(test).await.unwrap();
    Foundry::start_in(&db, pg.host()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_between_arm_writes_and_its_status_converges_without_duplicates() {
    let env = TestEnv::shared();
    let ns = env.namespace("killed").await.unwrap();
    let azure = foundry("killed").await;
    let arm = &azure.arm;
    let lease = ["--lease-duration=3s"];

    // First crash: the database step is done, ARM has stored the credential, the answer never
    // reaches the operator and no status was written.
    arm.hold_put("/federatedidentitycredentials/");
    let mut first = azure
        .start_operator(env, &ns, "op-killed-1", &lease)
        .await
        .unwrap();
    kubectl_apply(&ns, &azure.binding("sales", env.server()).to_string());
    eventually("the credential PUT", WAIT, || async {
        arm.count_matching("PUT", "/federatedIdentityCredentials/") == 1
    })
    .await;
    let oid = azure
        .principal_oid()
        .await
        .unwrap()
        .expect("the principal exists");
    first.kill().unwrap();
    arm.release();
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let binding = bindings.get("sales").await.unwrap();
    assert!(
        condition(&binding, "FoundryConnectionReady").is_none_or(|c| c.status != "True"),
        "killed before the status"
    );

    // Second crash: the connection is stored, the answer is lost.
    arm.hold_put("/connections/");
    let mut second = azure
        .start_operator(env, &ns, "op-killed-2", &lease)
        .await
        .unwrap();
    eventually("the connection PUT", WAIT, || async {
        arm.count_matching("PUT", "/connections/") == 1
    })
    .await;
    second.kill().unwrap();
    arm.release();

    let third = azure
        .start_operator(env, &ns, "op-killed-3", &lease)
        .await
        .unwrap();
    let binding = foundry_ready(&bindings, "sales").await;
    assert_eq!(condition(&binding, "DatabaseReady").unwrap().status, "True");
    // The same end state as without crashes, and no write was repeated: the later operators
    // found what ARM held and left it.
    assert_eq!(
        azure.principal_oid().await.unwrap(),
        Some(oid),
        "principal kept"
    );
    assert_eq!(
        azure.arm_resources(),
        (1, 1),
        "one credential, one connection"
    );
    assert_eq!(
        arm.count_matching("PUT", "/federatedIdentityCredentials/"),
        1
    );
    assert_eq!(arm.count_matching("PUT", "/connections/"), 1);

    // Settled: no statements and no reconcile loop (a status that changed on every reconcile
    // would wake the controller again at once).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statements = third
        .metric("pgmcp_operator_sql_statements_total")
        .await
        .unwrap();
    let reconciles = third
        .metric("pgmcp_operator_reconciles_total")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        third
            .metric("pgmcp_operator_sql_statements_total")
            .await
            .unwrap(),
        statements
    );
    let more = third
        .metric("pgmcp_operator_reconciles_total")
        .await
        .unwrap()
        - reconciles;
    assert!(more <= 2.0, "{more} reconciles in 5 s of nothing to do");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_throttling_and_failures_are_waited_out_without_a_hot_loop() {
    let env = TestEnv::shared();
    let ns = env.namespace("arm-outage").await.unwrap();
    let azure = foundry("arm_outage").await;
    let arm = &azure.arm;
    arm.set_outage(Some(Fault::Throttle {
        retry_after_secs: 1,
    }));
    let _operator = azure
        .start_operator(env, &ns, "op-arm-outage", &[])
        .await
        .unwrap();
    kubectl_apply(&ns, &azure.binding("sales", env.server()).to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();

    // The database does not wait for ARM; the ARM condition says what is wrong.
    let binding = wait_condition(&bindings, "sales", "DatabaseReady", "True", None, WAIT).await;
    let throttled = wait_for("the throttling reported", WAIT, || async {
        let binding = bindings.get("sales").await.ok()?;
        let identity = condition(&binding, "IdentityReady")?;
        (identity.status == "False" && identity.message.contains("TooManyRequests"))
            .then_some(identity)
    })
    .await;
    assert!(condition(&binding, "Ready").is_some_and(|c| c.status != "True"));
    assert!(
        throttled.message.contains("federated identity credential"),
        "{}",
        throttled.message
    );

    // Retries follow Retry-After and the controller backs off between reconciles: a bounded
    // number of requests, not a hot loop.
    let window = Duration::from_secs(10);
    arm.clear_requests();
    tokio::time::sleep(window).await;
    let throttled_requests = arm.requests().len();
    eprintln!("{throttled_requests} ARM requests in {window:?} of throttling");
    assert!(
        (2..=25).contains(&throttled_requests),
        "{throttled_requests} requests in {window:?} of throttling"
    );

    arm.set_outage(Some(Fault::ServerError));
    arm.clear_requests();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failed_requests = arm.requests().len();
    eprintln!("{failed_requests} ARM requests in 5 s of 500s");
    assert!(
        failed_requests <= 15,
        "{failed_requests} requests in 5 s of 500s"
    );

    arm.set_outage(None);
    foundry_ready(&bindings, "sales").await;
    assert_eq!(azure.arm_resources(), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_deleted_while_postgres_and_arm_are_down_is_cleaned_up_when_they_return() {
    let env = TestEnv::shared();
    let ns = env.namespace("all-down").await.unwrap();
    let pg = Postgres::start_restartable().await.unwrap();
    let target = Target {
        host: pg.host().to_owned(),
        port: pg.port(),
        database: "sales".to_owned(),
    };
    let azure = Foundry::start(target, pg.database_with("sales", "").await.unwrap())
        .await
        .unwrap();
    let arm = &azure.arm;
    let _operator = azure
        .start_operator(env, &ns, "op-all-down", &[])
        .await
        .unwrap();
    kubectl_apply(&ns, &azure.binding("sales", env.server()).to_string());
    let bindings: Api<PostgresMcpBinding> = ns.api();
    foundry_ready(&bindings, "sales").await;

    pg.stop();
    arm.set_outage(Some(Fault::Unavailable {
        retry_after_secs: Some(1),
    }));
    bindings
        .delete("sales", &DeleteParams::default())
        .await
        .unwrap();
    let cleanup_failed = |fragment: &'static str| {
        let bindings = bindings.clone();
        async move {
            wait_for(fragment, WAIT, || async {
                let binding = bindings.get("sales").await.ok()?;
                let ready = condition(&binding, "Ready")?;
                (ready.reason == "CleanupFailed" && ready.message.contains(fragment))
                    .then_some(binding)
            })
            .await
        }
    };
    // The connection goes first; ARM refuses, the binding says so and keeps its finalizer.
    let waiting = cleanup_failed("ServiceUnavailable").await;
    assert_eq!(waiting.finalizers(), [pgmcp_crds::FINALIZER.to_owned()]);
    assert_eq!(azure.arm_resources(), (1, 1));

    // ARM is back: the connection is deleted, then the principal waits for PostgreSQL (the
    // credential is deleted last, so the principal never outlives it).
    arm.set_outage(None);
    let waiting = cleanup_failed("failed to connect to PostgreSQL").await;
    assert_eq!(waiting.finalizers(), [pgmcp_crds::FINALIZER.to_owned()]);
    assert_eq!(
        azure.arm_resources(),
        (1, 0),
        "connection deleted, credential kept"
    );

    pg.restart().await.unwrap();
    wait_gone(&bindings, "sales", WAIT).await;
    // Nothing left: no connection, no credential, no principal.
    assert_eq!(azure.arm_resources(), (0, 0));
    assert_eq!(
        role_oid(&pg, &azure.principal).await,
        None,
        "principal dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bindings_wanting_one_role_do_not_fight_over_it() {
    let env = TestEnv::shared();
    let pg = Postgres::shared();
    let ns: TestNamespace = env.namespace("role-collision").await.unwrap();
    let db = pg.create_database("role_collision").await.unwrap();
    db.connect()
        .await
        .unwrap()
        .batch_execute("CREATE TABLE customers (id int)")
        .await
        .unwrap();
    create_admin_secret(&ns, pg);
    let operator = Operator::start(env, &ns.name, "op-collision", &["--resync=1s"])
        .await
        .unwrap();
    let role = format!("{}_shared", db.name);
    kubectl_apply(&ns, &password_binding(pg, &db.name, "first", &role));
    let bindings: Api<PostgresMcpBinding> = ns.api();
    let first = wait_condition(&bindings, "first", "DatabaseReady", "True", None, WAIT).await;
    let marker = role_comment(pg, &role).await.unwrap();
    assert!(marker.ends_with(&format!("{}/first", ns.name)), "{marker}");

    kubectl_apply(&ns, &password_binding(pg, &db.name, "second", &role));
    let second = wait_condition(
        &bindings,
        "second",
        "Stalled",
        "True",
        Some("RoleConflict"),
        WAIT,
    )
    .await;
    let message = condition(&second, "Stalled").unwrap().message;
    assert!(
        message.contains(&format!("belongs to binding {}/first", ns.name))
            && message.contains("roleName"),
        "{message}"
    );

    // Several resyncs later the role is still the first binding's, untouched.
    let statements = operator
        .metric("pgmcp_operator_sql_statements_total")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(role_comment(pg, &role).await.unwrap(), marker);
    assert_eq!(
        operator
            .metric("pgmcp_operator_sql_statements_total")
            .await
            .unwrap(),
        statements,
        "nobody changed the role"
    );
    let first_now = bindings.get("first").await.unwrap();
    assert_eq!(
        condition(&first_now, "DatabaseReady")
            .unwrap()
            .last_transition_time,
        condition(&first, "DatabaseReady")
            .unwrap()
            .last_transition_time
    );

    // Deleting the loser leaves the winner's role alone.
    bindings
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the second binding gone", WAIT, || async {
        bindings.get_opt("second").await.is_ok_and(|b| b.is_none())
    })
    .await;
    assert_eq!(role_comment(pg, &role).await.unwrap(), marker, "role kept");
    let first_now = bindings.get("first").await.unwrap();
    assert_eq!(
        condition(&first_now, "DatabaseReady").unwrap().status,
        "True"
    );
}
