//! Reading bindings the way a user does (`kubectl get`, conditions), for the operator tests.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use pgmcp_crds::v1alpha1::PostgresMcpBinding;

/// Runs a kubectl command and returns its output; panics with the output when it fails.
pub fn kubectl_ok(command: Command) -> String {
    command_ok(command)
}

/// Runs a command (kubectl, helm, …) and returns its output; panics with the output when it
/// fails.
pub fn command_ok(mut command: Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed: {text}");
    text
}

/// Condition `type_` of a binding, if reported.
pub fn condition(binding: &PostgresMcpBinding, type_: &str) -> Option<Condition> {
    binding
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Waits until condition `type_` of binding `name` has `status` (and `reason`, if given) for
/// the binding's current generation; returns the binding.
pub async fn wait_condition(
    api: &Api<PostgresMcpBinding>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> PostgresMcpBinding {
    let last = std::cell::RefCell::new(None);
    let found = crate::wait_for_opt(timeout, || async {
        let binding = api.get(name).await.ok()?;
        let c = condition(&binding, type_);
        last.replace(c.clone());
        let c = c?;
        (c.status == status
            && reason.is_none_or(|r| c.reason == r)
            && binding.status.as_ref()?.observed_generation == binding.metadata.generation)
            .then_some(binding)
    })
    .await;
    match found {
        Some(binding) => binding,
        None => panic!(
            "timed out after {timeout:?} waiting for {type_}={status} {reason:?} on binding {name}; last {type_}: {:?}",
            last.borrow()
        ),
    }
}

/// Waits until binding `name` is gone: its finalizer has removed what the binding made.
pub async fn wait_gone(api: &Api<PostgresMcpBinding>, name: &str, timeout: Duration) {
    crate::eventually("the binding gone", timeout, || async {
        api.get_opt(name).await.is_ok_and(|b| b.is_none())
    })
    .await;
}

/// Deletes binding `name` and waits until it is gone ([`wait_gone`]).
pub async fn delete_and_wait(api: &Api<PostgresMcpBinding>, name: &str, timeout: Duration) {
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap_or_else(|err| panic!("delete binding {name}: {err}"));
    wait_gone(api, name, timeout).await;
}

/// `manifests/examples/password.yaml` pointed at a real server: host, port, database and the
/// role to create replaced, everything else as users read it.
pub fn password_example(host: &str, port: u16, database: &str, role: &str) -> String {
    let path = crate::paths::examples_dir().join("password.yaml");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()))
        .replace(
            "host: postgres.databases.svc.cluster.local",
            &format!("host: {host}\n    port: {port}"),
        )
        .replace("database: shop", &format!("database: {database}"))
        .replace("roleName: shop_mcp", &format!("roleName: {role}"))
}

/// `kubectl apply -f` of `yaml` in the test's namespace.
pub fn kubectl_apply(ns: &crate::TestNamespace, yaml: &str) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), yaml).expect("write manifest");
    let mut apply = ns.kubectl();
    apply.arg("apply").arg("-f").arg(file.path());
    kubectl_ok(apply)
}

/// The admin Secret the examples name (`pg-admin`), holding the test server's superuser.
pub fn create_admin_secret(ns: &crate::TestNamespace, pg: &crate::Postgres) -> String {
    let mut create = ns.kubectl();
    create.args(["create", "secret", "generic", "pg-admin"]);
    create.arg("--from-literal=username=postgres");
    create.arg(format!("--from-literal=password={}", pg.password()));
    kubectl_ok(create)
}

/// What a user does first: the admin Secret, then `kubectl apply -f` of the password example,
/// pointed at a fresh database of the shared test PostgreSQL, with a role of its own
/// (`<database>_r`: roles are server-wide). Returns the database.
pub async fn apply_password_example(ns: &crate::TestNamespace) -> crate::TestDatabase {
    let pg = crate::Postgres::shared();
    let db = pg
        .create_database(&ns.name)
        .await
        .expect("create the test database");
    create_admin_secret(ns, pg);
    kubectl_apply(
        ns,
        &password_example(pg.host(), pg.port(), &db.name, &format!("{}_r", db.name)),
    );
    db
}

/// What the operator's database tests start from: a namespace with the admin Secret, a
/// database with the shop data plus a schema no example grants (`hr.salaries`), the role name
/// the binding will use, and an operator watching the namespace.
#[allow(missing_debug_implementations)] // the operator process has no useful Debug
pub struct ShopFixture {
    pub ns: crate::TestNamespace,
    pub db: crate::TestDatabase,
    pub role: String,
    pub operator: crate::operator::Operator,
}

impl ShopFixture {
    pub async fn start(test: &str, operator_args: &[&str]) -> Self {
        let env = crate::TestEnv::shared();
        let pg = crate::Postgres::shared();
        let ns = env.namespace(test).await.expect("namespace");
        let db = pg.create_database(test).await.expect("database");
        db.load_shop().await.expect("load the shop");
        let admin = db.connect().await.expect("connect");
        admin
            .batch_execute(
                "CREATE SCHEMA hr; CREATE TABLE hr.salaries (id int, amount numeric);
                 INSERT INTO hr.salaries VALUES (1, 100);",
            )
            .await
            .expect("create hr.salaries");
        create_admin_secret(&ns, pg);
        let operator = crate::operator::Operator::start(env, &ns.name, test, operator_args)
            .await
            .expect("start the operator");
        let role = format!("{}_r", db.name);
        ShopFixture {
            ns,
            db,
            role,
            operator,
        }
    }
}
