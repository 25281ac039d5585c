//! The database step: the binding's principal, its read-only grants kept equal to the spec
//! (drift repaired from the catalog), the read-only probe, and removal on deletion.
//!
//! ```text
//! password Secret   generate (or rotate on request) the LOGIN role's password     (password mode)
//! principal         CREATE ROLE … LOGIN / pgaadauth_create_principal[_with_oid],
//!                   only when missing; a role someone else made is never taken over
//! grants            read the catalog, diff against the spec, REVOKE extras, GRANT what is
//!                   missing, in one transaction; equal → no statement at all
//! probe             what the role can effectively do (PUBLIC and memberships included)
//! ```
//!
//! Connections: one to the admin database for the principal, one to the target database for
//! grants and the probe; a connection whose work finished cleanly is kept for the next reconcile
//! on the same server ([`pool`]). Errors name the server, the database and the role, never a
//! password or token.

pub mod catalog;
pub mod plan;
pub mod pool;
pub mod probe;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pgmcp_crds::v1alpha1::{
    DeletionPolicy, GrantsStatus, PostgresMcpBinding, PrincipalKind, PrincipalStatus,
};
use postgres_protocol::escape::{escape_identifier as quote, escape_literal as literal};
use serde_json::json;
use tokio_postgres::Client;

use crate::controller::Context;
use crate::controller::build::{PASSWORD_KEY, common_labels};
use crate::controller::validate::{Identity, Valid};
use plan::{Plan, Privilege, Request, SchemaGrant};

/// Binding annotation: set it to a new value to rotate the generated password.
pub const ROTATE_ANNOTATION: &str = "pgmcp.dev/rotate-password";
/// Password Secret annotation: the rotation value its password was generated for.
const ROTATED_FOR_ANNOTATION: &str = "pgmcp.dev/rotated-for";
/// Password Secret annotation: present once the role's password was set to the Secret's.
const APPLIED_ANNOTATION: &str = "pgmcp.dev/password-applied";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the step found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub principal: PrincipalStatus,
    pub grants: GrantsStatus,
    /// What the spec names that the database lacks (granted once it exists).
    pub missing: Vec<String>,
    /// What the role can do beyond reading its grants (nothing: read-only verified).
    pub read_only: probe::Findings,
    /// The grants and revocations made, if any.
    pub changed: Option<Plan>,
    /// True when grants existed before and had drifted.
    pub repaired: bool,
}

/// Why the step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to PostgreSQL {server} database {database} as {user}: {message}")]
    Connect {
        server: String,
        database: String,
        user: String,
        message: String,
    },
    #[error("failed to {action} in PostgreSQL {server} database {database}: {message}")]
    Sql {
        action: String,
        server: String,
        database: String,
        message: String,
    },
    #[error("{}", role_conflict(.role, .server, .binding, .owner.as_deref()))]
    RoleConflict {
        role: String,
        server: String,
        binding: String,
        /// The other binding (`namespace/name`) whose role it is, when pgmcp made it.
        owner: Option<String>,
    },
    #[error(
        "postgres.admin.entra needs the operator's own workload identity, but AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE are not set: give the operator's ServiceAccount a managed identity (azure.workload.identity/use) and add it as a Microsoft Entra administrator of the server"
    )]
    NoWorkloadIdentity,
    #[error("failed to get a Microsoft Entra token for PostgreSQL as {identity}: {message}")]
    Token { identity: String, message: String },
    #[error(
        "role {role} owns objects in database {database} ({objects}): reassign or drop them, or set spec.access.deletionPolicy: Orphan to keep the role"
    )]
    OwnsObjects {
        role: String,
        database: String,
        objects: String,
    },
    #[error(
        "{user} cannot grant {privileges} in PostgreSQL {server} database {database} (it neither owns the objects nor holds these privileges WITH GRANT OPTION): grant them to {user} WITH GRANT OPTION, make {user} the owner, or narrow spec.access.grants"
    )]
    GrantRefused {
        user: String,
        server: String,
        database: String,
        privileges: String,
    },
    #[error(
        "{user} cannot revoke {privileges} from role {role} in PostgreSQL {server} database {database}: another role granted them, so only that role (or a superuser) can revoke them; until then the role may be able to write"
    )]
    RevokeRefused {
        user: String,
        role: String,
        server: String,
        database: String,
        privileges: String,
    },
    #[error("failed to generate a password: the system random source failed: {0}")]
    Random(String),
    #[error("failed to {action} secret {namespace}/{name}: {source}")]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

impl Error {
    /// Condition reason (bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "DatabaseUnreachable",
            Error::Sql { .. } => "SqlFailed",
            Error::RoleConflict { .. } => "RoleConflict",
            Error::NoWorkloadIdentity => "NoWorkloadIdentity",
            Error::Token { .. } => "TokenUnavailable",
            Error::OwnsObjects { .. } => "RoleOwnsObjects",
            Error::GrantRefused { .. } => "GrantNotPermitted",
            Error::RevokeRefused { .. } => "RevokeNotPermitted",
            Error::Secret { .. } => "SecretFailed",
            Error::Random(_) => "RandomSourceFailed",
        }
    }

    /// True when only a change by the user can fix it.
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Error::RoleConflict { .. }
                | Error::NoWorkloadIdentity
                | Error::OwnsObjects { .. }
                | Error::GrantRefused { .. }
                | Error::RevokeRefused { .. }
        )
    }
}

/// `SQLSTATE: message` of a PostgreSQL error, or its display.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = err.to_string();
            let mut source = std::error::Error::source(err);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}

/// Where and as whom the operator connects.
struct Admin<'a> {
    valid: &'a Valid,
    user: String,
    password: String,
}

impl Admin<'_> {
    fn server(&self) -> String {
        let pg = &self.valid.spec.postgres;
        format!("{}:{}", pg.host, pg.port)
    }

    fn pool_key(&self, database: &str) -> pool::Key {
        let pg = &self.valid.spec.postgres;
        pool::Key::new(
            &pg.host,
            u16::try_from(pg.port).unwrap_or(5432),
            database,
            &self.user,
            &self.password,
            pg.ssl_mode.as_str(),
        )
    }

    /// Keeps a connection whose work finished cleanly for the next reconcile.
    fn release(&self, database: &str, client: Client) {
        pool::ADMIN.give(self.pool_key(database), client);
    }

    async fn connect(&self, database: &str) -> Result<Client, Error> {
        if let Some(client) = pool::ADMIN.take(&self.pool_key(database)) {
            return Ok(client);
        }
        let pg = &self.valid.spec.postgres;
        let fail = |message: String| Error::Connect {
            server: self.server(),
            database: database.to_owned(),
            user: self.user.clone(),
            message,
        };
        let (mode, tls) = pgmcp_pgconn::connector(pg.ssl_mode.as_str(), None).map_err(fail)?;
        let mut config = tokio_postgres::Config::new();
        config
            .host(&pg.host)
            .port(u16::try_from(pg.port).unwrap_or(5432))
            .user(&self.user)
            .password(&self.password)
            .dbname(database)
            .ssl_mode(mode)
            .connect_timeout(CONNECT_TIMEOUT)
            .application_name("pgmcp-operator");
        let (client, connection) = config.connect(tls).await.map_err(|e| fail(describe(&e)))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "admin connection ended");
            }
        });
        // The catalog and probe queries are small, but catalogs bloated by grant churn (a wave
        // of bindings) get parallel plans whose worker start-up cost 10-20 ms of a ~2 ms query.
        // A plain SET, not a startup option, so poolers such as PgBouncer accept it; failure
        // only costs time.
        if let Err(err) = client
            .batch_execute("SET max_parallel_workers_per_gather = 0")
            .await
        {
            tracing::debug!(error = %err, "could not turn off parallel plans");
        }
        Ok(client)
    }

    fn sql(
        &self,
        database: &str,
        action: impl Into<String>,
    ) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
        let action = action.into();
        let database = database.to_owned();
        move |e| Error::Sql {
            action: action.clone(),
            server: self.server(),
            database: database.clone(),
            message: describe(&e),
        }
    }
}

/// The administrator's credentials: the Secret fetch read, or the operator's Entra token.
async fn admin<'a>(
    ctx: &Context,
    valid: &'a Valid,
    admin_secret: Option<&Secret>,
) -> Result<Admin<'a>, Error> {
    let spec = &valid.spec.postgres.admin;
    if let Some(entra) = &spec.entra {
        let provider = ctx
            .postgres_token
            .as_ref()
            .ok_or(Error::NoWorkloadIdentity)?;
        let token = provider.token().await.map_err(|e| Error::Token {
            identity: provider.identity(),
            message: e.to_string(),
        })?;
        return Ok(Admin {
            valid,
            user: entra.user.clone(),
            password: token.secret().to_owned(),
        });
    }
    // validate() checked that the Secret and both keys exist.
    let reference = spec.password_secret_ref.as_ref();
    let read = |key: Option<&String>| -> String {
        key.and_then(|k| admin_secret?.data.as_ref()?.get(k))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default()
    };
    Ok(Admin {
        valid,
        user: read(reference.map(|r| &r.username_key)),
        password: read(reference.map(|r| &r.password_key)),
    })
}

const OWNERSHIP_PREFIX: &str = "managed by pgmcp binding ";

/// `COMMENT ON ROLE` text marking a role as this binding's.
fn ownership(valid: &Valid) -> String {
    format!("{OWNERSHIP_PREFIX}{}/{}", valid.namespace, valid.name)
}

fn role_conflict(role: &str, server: &str, binding: &str, owner: Option<&str>) -> String {
    match owner {
        Some(owner) => format!(
            "role {role} on {server} belongs to binding {owner}; two bindings cannot share a role: give binding {binding} another roleName (or principalName)"
        ),
        None => format!(
            "role {role} already exists on {server} and is not managed by binding {binding}: use another name, or drop the role"
        ),
    }
}

/// Runs the step for a binding that passed validation.
pub async fn reconcile(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    valid: &Valid,
    admin_secret: Option<&Secret>,
    password_secret: Option<&Secret>,
) -> Result<Report, Error> {
    let admin = admin(ctx, valid, admin_secret).await?;
    let role = valid.identity.role().to_owned();

    let password = match &valid.identity {
        Identity::Password { secret_name, .. } => {
            Some(ensure_password_secret(ctx, binding, valid, secret_name, password_secret).await?)
        }
        Identity::Entra { .. } => None,
    };

    // The principal, in the admin database.
    let admin_db = valid.spec.postgres.admin.database.clone();
    let admin_client = admin.connect(&admin_db).await?;
    ensure_principal(
        ctx,
        &admin,
        &admin_client,
        &admin_db,
        valid,
        password.as_ref(),
    )
    .await?;
    if let (Some(password), Identity::Password { secret_name, .. }) = (&password, &valid.identity)
        && !password.applied
    {
        mark_password_applied(ctx, valid, secret_name).await?;
    }

    // Grants, in the target database, in one transaction (on the same connection when the
    // admin database is the target).
    let database = valid.spec.postgres.database.clone();
    let mut client = if database == admin_db {
        admin_client
    } else {
        admin.release(&admin_db, admin_client);
        admin.connect(&database).await?
    };
    let request = Request {
        database: database.clone(),
        grants: valid
            .spec
            .access
            .grants
            .iter()
            .map(|g| SchemaGrant {
                schema: g.schema.clone(),
                tables: (g.tables != ["*"]).then(|| g.tables.clone()),
            })
            .collect(),
        default_privileges: valid.spec.access.default_privileges,
        admin: admin.user.clone(),
    };
    let sql = |action: &str| admin.sql(&database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    let catalog = catalog::read(&tx, &role)
        .await
        .map_err(sql("read the catalog"))?;
    let desired = plan::desired(&request, &catalog);
    let mut plan = Plan::between(&desired.privileges, &catalog.held);
    let mut refused = Vec::new();
    if !plan.grant.is_empty() {
        // What the admin may not grant is fine when the role holds it anyway (PUBLIC's CONNECT
        // on a database someone else owns, say); otherwise the user must step in. Granting it
        // regardless would change nothing, every time.
        let mut grant = Vec::new();
        for privilege in plan.grant {
            let (may_grant, holds) = probe::grantable(&tx, &role, &privilege)
                .await
                .map_err(sql("check what can be granted"))?;
            match (may_grant, holds) {
                (true, _) => grant.push(privilege),
                (false, true) => {}
                (false, false) => refused.push(privilege),
            }
        }
        plan.grant = grant;
    }
    if !refused.is_empty() {
        return Err(Error::GrantRefused {
            user: admin.user.clone(),
            server: admin.server(),
            database: database.clone(),
            privileges: list(&refused),
        });
    }
    if !plan.is_empty() {
        lock_grants(&tx)
            .await
            .map_err(sql("wait for other grant changes"))?;
    }
    for statement in plan.statements(&role) {
        tx.batch_execute(&statement)
            .await
            .map_err(sql(&format!("run {statement}")))?;
    }
    if !plan.revoke.is_empty() {
        // A REVOKE of someone else's grant is a no-op with a warning: check it took.
        let held = catalog::held(&tx, &role)
            .await
            .map_err(sql("read the privileges back"))?;
        let kept: Vec<Privilege> = plan
            .revoke
            .iter()
            .filter(|p| held.contains(p))
            .cloned()
            .collect();
        if !kept.is_empty() {
            return Err(Error::RevokeRefused {
                user: admin.user.clone(),
                role: role.clone(),
                server: admin.server(),
                database: database.clone(),
                privileges: list(&kept),
            });
        }
    }
    tx.commit().await.map_err(sql("commit the grants"))?;
    let kinds = [("revoke", plan.revoke.len()), ("grant", plan.grant.len())];
    for (kind, count) in kinds {
        ctx.metrics.sql_statements(kind, count);
    }
    let read_only = probe::read_only(&client, &role, &valid.spec.access.functions)
        .await
        .map_err(sql("probe the role's privileges"))?;
    admin.release(&database, client);

    let previous = binding.status.as_ref().and_then(|s| s.grants.clone());
    let repaired = !plan.is_empty() && previous.is_some();
    if repaired {
        ctx.metrics.grant_repair();
    }
    let tables = desired
        .privileges
        .iter()
        .filter(|p| matches!(p.object, plan::Object::Table { .. }))
        .count();
    let previous = previous.unwrap_or_default();
    Ok(Report {
        principal: PrincipalStatus {
            name: role,
            kind: match valid.identity {
                Identity::Entra { .. } => PrincipalKind::Entra,
                Identity::Password { .. } => PrincipalKind::Password,
            },
        },
        grants: GrantsStatus {
            tables: i32::try_from(tables).unwrap_or(i32::MAX),
            fingerprint: plan::fingerprint(&desired.privileges),
            last_repair_time: if repaired {
                Some(now())
            } else {
                previous.last_repair_time
            },
            repairs: previous.repairs + i64::from(repaired),
        },
        missing: desired.missing,
        read_only,
        changed: (!plan.is_empty()).then_some(plan),
        repaired,
    })
}

/// "SELECT on table public.a, USAGE on schema public".
fn list(privileges: &[Privilege]) -> String {
    privileges
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes grant changes in the current database take turns until the transaction ends.
///
/// GRANT and REVOKE rewrite the ACL of a shared row (the database, a schema, a table, an owner's
/// default privileges); two transactions changing the same row for different roles fail with
/// `XX000: tuple concurrently updated`, which concurrent reconciles of bindings on one database
/// hit at once. The lock is PostgreSQL's, so replicas and other operators take turns too. Only
/// taken when there is something to change: a steady state sends no statement.
async fn lock_grants(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgmcp.dev/grants'), hashtext(current_database()))",
    )
    .await
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default())
}

/// Creates the role when it is missing; refuses a role this binding did not make.
async fn ensure_principal(
    ctx: &Context,
    admin: &Admin<'_>,
    client: &Client,
    database: &str,
    valid: &Valid,
    password: Option<&Password>,
) -> Result<(), Error> {
    let role = valid.identity.role();
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let existing = client
        .query_opt(
            "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(sql("look up the role"))?;
    let marker = ownership(valid);
    match existing {
        Some(row) if row.get::<_, String>(0) != marker => {
            let comment: String = row.get(0);
            return Err(Error::RoleConflict {
                role: role.to_owned(),
                server: admin.server(),
                binding: format!("{}/{}", valid.namespace, valid.name),
                owner: comment.strip_prefix(OWNERSHIP_PREFIX).map(str::to_owned),
            });
        }
        Some(_) => {
            if let Some(password) = password.filter(|p| !p.applied) {
                client
                    .batch_execute(&format!(
                        "ALTER ROLE {} PASSWORD {}",
                        quote(role),
                        literal(&password.value)
                    ))
                    .await
                    .map_err(sql(&format!("set the password of role {role}")))?;
                ctx.metrics.sql_statements("role", 1);
            }
            return Ok(());
        }
        None => {}
    }
    match (&valid.identity, &valid.spec.identity.entra) {
        (Identity::Entra { .. }, Some(entra)) => {
            let result = match &entra.object_id {
                Some(oid) => {
                    client
                        .query(
                            "SELECT * FROM pgaadauth_create_principal_with_oid($1, $2, 'service', false, false)",
                            &[&role, oid],
                        )
                        .await
                }
                None => {
                    client
                        .query("SELECT * FROM pgaadauth_create_principal($1, false, false)", &[&role])
                        .await
                }
            };
            result.map_err(sql(&format!("create the Microsoft Entra principal {role}")))?;
        }
        _ => {
            let password = password.map(|p| p.value.as_str()).unwrap_or_default();
            client
                .batch_execute(&format!(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
                    quote(role),
                    literal(password)
                ))
                .await
                .map_err(sql(&format!("create role {role}")))?;
        }
    }
    client
        .batch_execute(&format!(
            "COMMENT ON ROLE {} IS {}",
            quote(role),
            literal(&marker)
        ))
        .await
        .map_err(sql(&format!("mark role {role} as managed")))?;
    ctx.metrics.sql_statements("role", 2);
    Ok(())
}

/// The role's password as the Secret holds it.
#[derive(Debug, Clone)]
struct Password {
    value: String,
    /// The role already has it (the Secret says so).
    applied: bool,
}

/// Makes sure the password Secret exists, and rotates it when asked.
async fn ensure_password_secret(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    valid: &Valid,
    name: &str,
    current: Option<&Secret>,
) -> Result<Password, Error> {
    let rotation = binding
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let fail = |action: &'static str| {
        let namespace = valid.namespace.clone();
        let name = name.to_owned();
        move |source| Error::Secret {
            action,
            namespace: namespace.clone(),
            name: name.clone(),
            source: Box::new(source),
        }
    };
    let annotations = |s: &Secret| s.metadata.annotations.clone().unwrap_or_default();
    match current {
        None => {
            let password = generate_password()?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(valid.namespace.clone()),
                    labels: Some(common_labels(valid)),
                    annotations: Some(BTreeMap::from([(
                        ROTATED_FOR_ANNOTATION.to_owned(),
                        rotation,
                    )])),
                    owner_references: Some(vec![valid.owner.clone()]),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    PASSWORD_KEY.to_owned(),
                    ByteString(password.clone().into_bytes()),
                )])),
                type_: Some("Opaque".to_owned()),
                ..Default::default()
            };
            let result = api.create(&PostParams::default(), &secret).await;
            ctx.metrics.write("Secret", "create", result.is_ok());
            result.map_err(fail("create"))?;
            Ok(Password {
                value: password,
                applied: false,
            })
        }
        Some(secret) if annotations(secret).get(ROTATED_FOR_ANNOTATION) != Some(&rotation) => {
            let password = generate_password()?;
            let patch = json!({
                "metadata": {"annotations": {ROTATED_FOR_ANNOTATION: rotation, APPLIED_ANNOTATION: null}},
                "data": {PASSWORD_KEY: ByteString(password.clone().into_bytes())},
            });
            let result = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            ctx.metrics.write("Secret", "patch", result.is_ok());
            result.map_err(fail("rotate the password in"))?;
            Ok(Password {
                value: password,
                applied: false,
            })
        }
        Some(secret) => Ok(Password {
            value: secret
                .data
                .as_ref()
                .and_then(|d| d.get(PASSWORD_KEY))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default(),
            applied: annotations(secret).contains_key(APPLIED_ANNOTATION),
        }),
    }
}

async fn mark_password_applied(ctx: &Context, valid: &Valid, name: &str) -> Result<(), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let patch = json!({"metadata": {"annotations": {APPLIED_ANNOTATION: "true"}}});
    let result = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    ctx.metrics.write("Secret", "patch", result.is_ok());
    result.map_err(|source| Error::Secret {
        action: "mark the password applied in",
        namespace: valid.namespace.clone(),
        name: name.to_owned(),
        source: Box::new(source),
    })?;
    Ok(())
}

/// 32 random bytes as 64 hex characters (256 bits; no characters that need quoting anywhere).
fn generate_password() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes the role's grants and the role itself (policy Delete). Already-gone state is fine.
pub async fn remove(
    ctx: &Context,
    valid: &Valid,
    admin_secret: Option<&Secret>,
) -> Result<(), Error> {
    if valid.spec.access.deletion_policy == DeletionPolicy::Orphan {
        return Ok(());
    }
    let admin = admin(ctx, valid, admin_secret).await?;
    let role = valid.identity.role();
    let admin_db = valid.spec.postgres.admin.database.clone();
    let admin_client = admin.connect(&admin_db).await?;
    let owner = admin_client
        .query_opt(
            "SELECT coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(admin.sql(&admin_db, "look up the role"))?;
    match owner {
        None => return Ok(()),
        // Someone else's role: not ours to touch.
        Some(row) if row.get::<_, String>(0) != ownership(valid) => return Ok(()),
        Some(_) => {}
    }
    let database = valid.spec.postgres.database.clone();
    let mut client = admin.connect(&database).await?;
    let sql = |action: &str| admin.sql(&database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    let owned: Vec<String> = tx
        .query(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relowner = to_regrole($1) ORDER BY 1 LIMIT 10",
            &[&quote(role)],
        )
        .await
        .map_err(sql("list objects the role owns"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !owned.is_empty() {
        return Err(Error::OwnsObjects {
            role: role.to_owned(),
            database,
            objects: owned.join(", "),
        });
    }
    let held = catalog::held(&tx, role)
        .await
        .map_err(sql("read the role's privileges"))?;
    let plan = Plan::between(&Default::default(), &held);
    if !plan.is_empty() {
        lock_grants(&tx)
            .await
            .map_err(sql("wait for other grant changes"))?;
    }
    for statement in plan.statements(role) {
        tx.batch_execute(&statement)
            .await
            .map_err(sql(&format!("run {statement}")))?;
    }
    tx.commit().await.map_err(sql("commit the revocations"))?;
    ctx.metrics.sql_statements("revoke", plan.revoke.len());
    admin_client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(role)))
        .await
        .map_err(admin.sql(&admin_db, format!("drop role {role}")))?;
    ctx.metrics.sql_statements("role", 1);
    Ok(())
}
