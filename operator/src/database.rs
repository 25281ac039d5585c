//! PostgreSQL as the operator sees it: an administrator's connections, the binding's principal
//! (created with its ownership mark, dropped only when the mark is ours), its grants kept equal
//! to a request (drift repaired from the catalog), every privilege revoked from one database,
//! and the read-only probe.
//!
//! ```text
//! principal   CREATE ROLE … LOGIN / pgaadauth_create_principal[_with_oid] and its ownership
//!             mark in one transaction; the caller never takes over a role someone else made
//! class role  CREATE ROLE … NOLOGIN per caller class, marked the same way
//! membership  the principal a member of each class role, able to SET ROLE to it but not
//!             inheriting its privileges (WITH INHERIT FALSE since 16, NOINHERIT before)
//! grants      read the catalog, diff against the request, REVOKE extras, GRANT what is
//!             missing, in one transaction; equal → no statement at all
//! revoke all  every privilege the role holds in one database (removal, or a database the
//!             binding no longer names)
//! drop        the role, when its mark says it is the binding's
//! probe       every way the role can write or read beyond its grants (PUBLIC, memberships,
//!             ownership, large objects, SECURITY DEFINER functions included)
//! ```
//!
//! Nothing here knows about Kubernetes: the controller's database step
//! (`crate::controller::database`) decides what to do from the binding and its record, and turns
//! errors into conditions. Connections: a connection whose work finished cleanly is kept for the
//! next reconcile on the same server ([`pool`]). Errors name the server, the database and the
//! role, never a password or token.

pub mod catalog;
pub mod plan;
pub mod pool;
pub mod probe;

use std::time::Duration;

use postgres_protocol::escape::{escape_identifier as quote, escape_literal as literal};
use tokio_postgres::Client;

use crate::metrics::Metrics;
use plan::{Plan, Privilege, Request};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `COMMENT ON ROLE` text marking a role as a binding's: this, then `namespace/name`.
const OWNERSHIP_PREFIX: &str = "managed by pgmcp binding ";

/// Why a database operation failed.
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
        "role {role} owns objects in database {database} ({objects}): reassign or drop them, or set spec.access.deletionPolicy: Orphan to keep the role"
    )]
    OwnsObjects {
        role: String,
        database: String,
        objects: String,
    },
    #[error(
        "{user} cannot grant {privileges} in PostgreSQL {server} database {database} (it neither owns the objects nor holds these privileges WITH GRANT OPTION): grant them to {user} WITH GRANT OPTION, make {user} the owner, or narrow {field}"
    )]
    GrantRefused {
        user: String,
        server: String,
        database: String,
        privileges: String,
        /// The spec field the grants come from (boxed: a fifth `String` would make every
        /// `Result` of this crate larger).
        field: Box<str>,
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
}

impl Error {
    /// The server answered that the database does not exist (SQLSTATE 3D000).
    pub fn is_missing_database(&self) -> bool {
        matches!(self, Error::Connect { message, .. } if message.starts_with("3D000"))
    }

    /// Condition reason (bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "DatabaseUnreachable",
            Error::Sql { .. } => "SqlFailed",
            Error::RoleConflict { .. } => "RoleConflict",
            Error::OwnsObjects { .. } => "RoleOwnsObjects",
            Error::GrantRefused { .. } => "GrantNotPermitted",
            Error::RevokeRefused { .. } => "RevokeNotPermitted",
        }
    }

    /// True when only a change by the user can fix it.
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Error::RoleConflict { .. }
                | Error::OwnsObjects { .. }
                | Error::GrantRefused { .. }
                | Error::RevokeRefused { .. }
        )
    }
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

/// `SQLSTATE: message (detail)` of a PostgreSQL error, or its display. The detail is where
/// PostgreSQL says why (since 16, "permission denied" on a role comes with which ADMIN OPTION is
/// missing).
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {} ({detail})", db.code().code(), db.message()),
            None => format!("{}: {}", db.code().code(), db.message()),
        },
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

/// The `COMMENT ON ROLE` text that marks a role as binding `namespace/name`'s.
pub fn ownership_marker(namespace: &str, name: &str) -> String {
    format!("{OWNERSHIP_PREFIX}{namespace}/{name}")
}

/// Where and as whom the operator connects, and where it keeps idle connections.
#[derive(Debug)]
pub struct Admin<'a> {
    pub host: String,
    pub port: u16,
    /// libpq's sslmode: disable, prefer, require, verify-full.
    pub ssl_mode: &'static str,
    /// The CAs `verify-full` trusts instead of the public roots (`--trust-bundle`).
    pub root_cert: Option<&'a std::path::Path>,
    pub user: String,
    pub password: String,
    pub pool: &'a pool::Pool<Client>,
    pub metrics: &'a Metrics,
}

impl Admin<'_> {
    /// `host:port`, for messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn pool_key(&self, database: &str) -> pool::Key {
        pool::Key::new(
            &self.host,
            self.port,
            database,
            &self.user,
            &self.password,
            self.ssl_mode,
        )
    }

    /// Keeps a connection whose work finished cleanly for the next reconcile.
    fn release(&self, database: &str, client: Client) {
        self.pool.give(self.pool_key(database), client);
    }

    async fn connect(&self, database: &str) -> Result<Client, Error> {
        if let Some(client) = self.pool.take(&self.pool_key(database)) {
            return Ok(client);
        }
        let fail = |message: String| Error::Connect {
            server: self.server(),
            database: database.to_owned(),
            user: self.user.clone(),
            message,
        };
        let (mode, tls) = pgmcp_postgres_wire::Tls::new(self.ssl_mode, self.root_cert)
            .map_err(|e| fail(e.to_string()))?
            .tokio_postgres();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
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

    /// A connection to `database`, or none when the database no longer exists (what was in it
    /// went with it).
    async fn connect_unless_gone(&self, database: &str) -> Result<Option<Client>, Error> {
        match self.connect(database).await {
            Ok(client) => Ok(Some(client)),
            Err(err) if err.is_missing_database() => Ok(None),
            Err(err) => Err(err),
        }
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

/// How the binding's principal signs in, for creating it.
#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// A Microsoft Entra principal (`pgaadauth_create_principal[_with_oid]`).
    Entra {
        role: String,
        /// The managed identity's object id, when known.
        object_id: Option<String>,
    },
    /// A LOGIN role with a password.
    Password {
        role: String,
        password: String,
        /// The role already has this password (the password Secret says so).
        applied: bool,
    },
}

impl Principal {
    pub fn role(&self) -> &str {
        match self {
            Principal::Entra { role, .. } | Principal::Password { role, .. } => role,
        }
    }
}

/// A role as the catalog shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRole {
    pub oid: u32,
    /// Its `COMMENT ON ROLE` (the ownership mark of a binding's role), or "".
    pub comment: String,
}

impl ExistingRole {
    /// The binding (`namespace/name`) whose mark the role carries, if any.
    pub fn owner(&self) -> Option<&str> {
        self.comment.strip_prefix(OWNERSHIP_PREFIX)
    }
}

/// The role named `role`, if it exists.
pub async fn find_role(
    admin: &Admin<'_>,
    database: &str,
    role: &str,
) -> Result<Option<ExistingRole>, Error> {
    let client = admin.connect(database).await?;
    let row = client
        .query_opt(
            "SELECT oid, coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .map_err(admin.sql(database, "look up the role"))?;
    admin.release(database, client);
    Ok(row.map(|r| ExistingRole {
        oid: r.get(0),
        comment: r.get(1),
    }))
}

/// Creates the principal with its ownership mark, in one transaction: a crash (or a lost
/// connection) between the two leaves neither, never a role without its mark, which would look
/// like someone else's forever after. Returns the new role's oid.
pub async fn create_principal(
    admin: &Admin<'_>,
    database: &str,
    principal: &Principal,
    marker: &str,
) -> Result<u32, Error> {
    let mut client = admin.connect(database).await?;
    let role = principal.role();
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    match principal {
        Principal::Entra {
            object_id: Some(oid),
            ..
        } => {
            tx.query(
                "SELECT * FROM pgaadauth_create_principal_with_oid($1, $2, 'service', false, false)",
                &[&role, oid],
            )
            .await
            .map_err(sql(&format!("create the Microsoft Entra principal {role}")))?;
        }
        Principal::Entra {
            object_id: None, ..
        } => {
            tx.query(
                "SELECT * FROM pgaadauth_create_principal($1, false, false)",
                &[&role],
            )
            .await
            .map_err(sql(&format!("create the Microsoft Entra principal {role}")))?;
        }
        Principal::Password { password, .. } => {
            tx.batch_execute(&format!(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}",
                quote(role),
                literal(password)
            ))
            .await
            .map_err(sql(&format!("create role {role}")))?;
        }
    }
    let oid = mark_and_commit(admin, database, tx, role, marker).await?;
    admin.release(database, client);
    Ok(oid)
}

/// Marks the role just created in `tx` as the binding's, commits, and returns its oid.
async fn mark_and_commit(
    admin: &Admin<'_>,
    database: &str,
    tx: tokio_postgres::Transaction<'_>,
    role: &str,
    marker: &str,
) -> Result<u32, Error> {
    let sql = |action: &str| admin.sql(database, action.to_owned());
    tx.batch_execute(&format!(
        "COMMENT ON ROLE {} IS {}",
        quote(role),
        literal(marker)
    ))
    .await
    .map_err(sql(&format!("mark role {role} as managed")))?;
    let oid: u32 = tx
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(sql(&format!("read the oid of role {role}")))?
        .get(0);
    tx.commit()
        .await
        .map_err(sql(&format!("commit the creation of role {role}")))?;
    admin.metrics.sql_statements("role", 2);
    Ok(oid)
}

/// Creates the NOLOGIN role of a caller class with its ownership mark, in one transaction (as
/// [`create_principal`]). It has no attribute that gives more than its grants: the MCP server
/// switches to it (`SET LOCAL ROLE`) for each statement of a caller of the class. Returns the
/// new role's oid.
pub async fn create_class_role(
    admin: &Admin<'_>,
    database: &str,
    role: &str,
    marker: &str,
) -> Result<u32, Error> {
    let mut client = admin.connect(database).await?;
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    tx.batch_execute(&format!(
        "CREATE ROLE {} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
        quote(role),
    ))
    .await
    .map_err(sql(&format!("create caller class role {role}")))?;
    let oid = mark_and_commit(admin, database, tx, role, marker).await?;
    admin.release(database, client);
    Ok(oid)
}

/// One grant of a role to a member, as `pg_auth_members` holds it (a membership can have one per
/// grantor since PostgreSQL 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub grantor: String,
    pub admin: bool,
    /// Always true before PostgreSQL 16 (the member's INHERIT attribute decides there).
    pub inherit: bool,
    pub set: bool,
}

/// What it takes to make `login` a member of a class role that may `SET ROLE` to it but does not
/// inherit its privileges: the statements, none when it already is. `version` is
/// `server_version_num`; `login_inherits` the login role's INHERIT attribute; `grants` the
/// membership's rows.
///
/// Since PostgreSQL 16 a grant carries its own INHERIT and SET options: a wrong row is revoked
/// (by its grantor) and the membership granted anew `WITH INHERIT FALSE, SET TRUE`. Before 16
/// only the member's attribute decides, so the login role becomes NOINHERIT (its own grants are
/// direct, so it loses nothing it reads itself). ADMIN OPTION is never kept: it would let the
/// login role grant the class to other roles.
pub fn membership_plan(
    version: i32,
    class: &str,
    login: &str,
    login_inherits: bool,
    grants: &[Membership],
) -> Vec<String> {
    let (class_q, login_q) = (quote(class), quote(login));
    let mut statements = Vec::new();
    if version >= 160_000 {
        let right = |m: &Membership| !m.admin && !m.inherit && m.set;
        if grants.len() == 1 && right(&grants[0]) {
            return statements;
        }
        for grant in grants {
            statements.push(format!(
                "REVOKE {class_q} FROM {login_q} GRANTED BY {}",
                quote(&grant.grantor)
            ));
        }
        statements.push(format!(
            "GRANT {class_q} TO {login_q} WITH INHERIT FALSE, SET TRUE"
        ));
    } else {
        if login_inherits {
            statements.push(format!("ALTER ROLE {login_q} NOINHERIT"));
        }
        if grants.iter().any(|m| m.admin) {
            statements.push(format!("REVOKE ADMIN OPTION FOR {class_q} FROM {login_q}"));
        }
        if grants.is_empty() {
            statements.push(format!("GRANT {class_q} TO {login_q}"));
        }
    }
    statements
}

/// Makes `login` a member of the caller class role `class` without inheriting its privileges
/// ([`membership_plan`]), in one transaction; a membership already so sends no statement.
/// Returns the statements run.
pub async fn converge_membership(
    admin: &Admin<'_>,
    database: &str,
    class: &str,
    login: &str,
) -> Result<Vec<String>, Error> {
    let mut client = admin.connect(database).await?;
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    let version: i32 = tx
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(sql("read the server version"))?
        .get(0);
    let login_inherits: bool = tx
        .query_one(
            "SELECT rolinherit FROM pg_roles WHERE rolname = $1",
            &[&login],
        )
        .await
        .map_err(sql(&format!("read the INHERIT attribute of role {login}")))?
        .get(0);
    // inherit_option and set_option exist since PostgreSQL 16.
    let options = if version >= 160_000 {
        "m.inherit_option, m.set_option"
    } else {
        "true, true"
    };
    let grants: Vec<Membership> = tx
        .query(
            &format!(
                "SELECT pg_get_userbyid(m.grantor), m.admin_option, {options}
                 FROM pg_auth_members m
                 WHERE m.roleid = to_regrole($1) AND m.member = to_regrole($2)
                 ORDER BY 1"
            ),
            &[&quote(class), &quote(login)],
        )
        .await
        .map_err(sql(&format!(
            "read the membership of role {login} in role {class}"
        )))?
        .iter()
        .map(|r| Membership {
            grantor: r.get(0),
            admin: r.get(1),
            inherit: r.get(2),
            set: r.get(3),
        })
        .collect();
    let statements = membership_plan(version, class, login, login_inherits, &grants);
    for statement in &statements {
        tx.batch_execute(statement)
            .await
            .map_err(sql(&format!("run {statement}")))?;
    }
    tx.commit().await.map_err(sql(&format!(
        "commit the membership of role {login} in role {class}"
    )))?;
    admin.metrics.sql_statements("role", statements.len());
    admin.release(database, client);
    Ok(statements)
}

/// Sets `role`'s password.
pub async fn set_password(
    admin: &Admin<'_>,
    database: &str,
    role: &str,
    password: &str,
) -> Result<(), Error> {
    let client = admin.connect(database).await?;
    client
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD {}",
            quote(role),
            literal(password)
        ))
        .await
        .map_err(admin.sql(database, format!("set the password of role {role}")))?;
    admin.metrics.sql_statements("role", 1);
    admin.release(database, client);
    Ok(())
}

/// What converging the grants found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Granted {
    /// The privileges the request resolves to in the catalog.
    pub desired: plan::Desired,
    /// The grants and revocations made (empty when the role held exactly the desired set).
    pub plan: Plan,
    /// What the role can do beyond reading its grants (nothing: read-only verified).
    pub read_only: probe::Findings,
}

/// Makes `role`'s privileges in `request.database` exactly what `request` resolves to, in one
/// transaction, then probes what the role can effectively do (`allowed`: the SECURITY DEFINER
/// functions the binding lists; `classes`: the caller class roles `role` is a member of without
/// inheriting, probed on their own, see [`probe::read_only`]).
pub async fn converge_grants(
    admin: &Admin<'_>,
    role: &str,
    request: &Request,
    allowed: &[pgmcp_crds::v1alpha1::AllowedFunction],
    classes: &[String],
) -> Result<Granted, Error> {
    let database = &request.database;
    let mut client = admin.connect(database).await?;
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    let catalog = catalog::read(&tx, role)
        .await
        .map_err(sql("read the catalog"))?;
    let desired = plan::desired(request, &catalog);
    let mut plan = Plan::between(&desired.privileges, &catalog.held);
    let mut refused = Vec::new();
    if !plan.grant.is_empty() {
        // What the admin may not grant is fine when the role holds it anyway (PUBLIC's CONNECT
        // on a database someone else owns, say); otherwise the user must step in. Granting it
        // regardless would change nothing, every time.
        let mut grant = Vec::new();
        for privilege in plan.grant {
            let (may_grant, holds) = probe::grantable(&tx, role, &privilege)
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
            field: request.field.as_str().into(),
        });
    }
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
    if !plan.revoke.is_empty() {
        // A REVOKE of someone else's grant is a no-op with a warning: check it took.
        let held = catalog::held(&tx, role)
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
                role: role.to_owned(),
                server: admin.server(),
                database: database.clone(),
                privileges: list(&kept),
            });
        }
    }
    tx.commit().await.map_err(sql("commit the grants"))?;
    admin.metrics.sql_statements("revoke", plan.revoke.len());
    admin.metrics.sql_statements("grant", plan.grant.len());
    let read_only = probe::read_only(&client, role, allowed, classes)
        .await
        .map_err(sql("probe the role's privileges"))?;
    admin.release(database, client);
    Ok(Granted {
        desired,
        plan,
        read_only,
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

/// Revokes every privilege `role` holds in `database` (its own grants: what PUBLIC or another
/// role gives it is not the role's to lose). Refuses while the role owns objects there. A
/// database that no longer exists took its grants with it.
pub async fn revoke_all(admin: &Admin<'_>, role: &str, database: &str) -> Result<(), Error> {
    let Some(mut client) = admin.connect_unless_gone(database).await? else {
        return Ok(());
    };
    let sql = |action: &str| admin.sql(database, action.to_owned());
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
            database: database.to_owned(),
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
    admin.metrics.sql_statements("revoke", plan.revoke.len());
    admin.release(database, client);
    Ok(())
}

/// Where pgmcp's catalog tracker stands in a database ([`ensure_tracker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tracker {
    /// Installed (now or before): the principal is granted read access to it.
    InUse,
    /// Not installed, and why (the admin may not create event triggers, or a schema pgmcp
    /// that is not the tracker's exists).
    Unavailable(String),
}

/// The comment `crds/src/catalog_tracker.sql` puts on schema pgmcp: what marks the schema as
/// the tracker's, so that a schema of that name someone else made is never taken over or
/// dropped.
const TRACKER_MARK: &str = "pgmcp's catalog tracker (see pgmcp.catalog_changes)";

/// How [`Tracker::Unavailable`] begins when `admin` may not create event triggers.
pub fn tracker_refusal_prefix(admin: &str) -> String {
    format!("{admin} may not create event triggers")
}

/// Installs pgmcp's catalog tracker in `database` unless it is there (one query when it is).
/// Bindings on one database take turns (an advisory lock); an admin that may not create event
/// triggers leaves it [`Tracker::Unavailable`], which is no error: discovery stays exact
/// without it.
pub async fn ensure_tracker(admin: &Admin<'_>, database: &str) -> Result<Tracker, Error> {
    const STATE: &str = "SELECT (SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace
                                 WHERE nspname = 'pgmcp'),
                                to_regclass('pgmcp.catalog_changes') IS NOT NULL,
                                (SELECT count(*) FROM pg_event_trigger
                                  WHERE evtname IN ('pgmcp_catalog_ddl', 'pgmcp_catalog_drop'))::int";
    let mut client = admin.connect(database).await?;
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let state = |row: &tokio_postgres::Row| -> (Option<String>, bool, i32) {
        (row.get(0), row.get(1), row.get(2))
    };
    let row = client
        .query_one(STATE, &[])
        .await
        .map_err(sql("look for the catalog tracker"))?;
    let outcome = match state(&row) {
        (Some(comment), true, 2) if comment == TRACKER_MARK => Tracker::InUse,
        (Some(comment), _, _) if comment != TRACKER_MARK => Tracker::Unavailable(format!(
            "schema pgmcp in database {database} is not pgmcp's catalog tracker (its comment is {comment:?}); rename it to let the operator install the tracker"
        )),
        _ => {
            let tx = client
                .transaction()
                .await
                .map_err(sql("begin a transaction"))?;
            lock_tracker(&tx).await.map_err(sql(
                "wait for another binding installing the catalog tracker",
            ))?;
            match tx
                .batch_execute(pgmcp_crds::config::CATALOG_TRACKER_SQL)
                .await
            {
                Ok(()) => {
                    tx.commit()
                        .await
                        .map_err(sql("commit the catalog tracker"))?;
                    admin.metrics.sql_statements("catalog_tracker", 1);
                    Tracker::InUse
                }
                Err(err)
                    if err.code()
                        == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
                {
                    Tracker::Unavailable(format!(
                        "{} in database {database} ({}); discovery compares catalog fingerprints instead, which reads the catalog tables on every discovery call. The operator tries again when the binding's spec changes",
                        tracker_refusal_prefix(&admin.user),
                        describe(&err)
                    ))
                }
                Err(err) => return Err(sql("install the catalog tracker")(err)),
            }
        }
    };
    admin.release(database, client);
    Ok(outcome)
}

/// Makes installing and removing the catalog tracker in the current database take turns until
/// the transaction ends (bindings on one database, operator replicas).
async fn lock_tracker(tx: &tokio_postgres::Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgmcp.dev/catalog-tracker'), hashtext(current_database()))",
    )
    .await
}

/// Removes pgmcp's catalog tracker from `database` when no role but its owner may read it any
/// more (the last binding using it revoked its grants). Never touches a schema pgmcp that is
/// not the tracker's.
pub async fn drop_tracker_if_unused(admin: &Admin<'_>, database: &str) -> Result<(), Error> {
    let Some(mut client) = admin.connect_unless_gone(database).await? else {
        return Ok(());
    };
    let sql = |action: &str| admin.sql(database, action.to_owned());
    let tx = client
        .transaction()
        .await
        .map_err(sql("begin a transaction"))?;
    lock_tracker(&tx).await.map_err(sql(
        "wait for another binding installing the catalog tracker",
    ))?;
    let row = tx
        .query_one(
            "SELECT (SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'pgmcp'),
                    (SELECT count(*) FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
                      WHERE c.oid = to_regclass('pgmcp.catalog_changes') AND a.grantee <> c.relowner)::int",
            &[],
        )
        .await
        .map_err(sql("look for the catalog tracker's readers"))?;
    let (comment, readers): (Option<String>, i32) = (row.get(0), row.get(1));
    if comment.as_deref() == Some(TRACKER_MARK) && readers == 0 {
        tx.batch_execute(
            "DROP EVENT TRIGGER IF EXISTS pgmcp_catalog_ddl;
             DROP EVENT TRIGGER IF EXISTS pgmcp_catalog_drop;
             DROP SCHEMA pgmcp CASCADE;",
        )
        .await
        .map_err(sql("remove the catalog tracker"))?;
        admin.metrics.sql_statements("catalog_tracker", 1);
    }
    tx.commit()
        .await
        .map_err(sql("commit the catalog tracker's removal"))?;
    admin.release(database, client);
    Ok(())
}

/// Drops `role` (connected to `database`, any database of the server).
pub async fn drop_role(admin: &Admin<'_>, database: &str, role: &str) -> Result<(), Error> {
    let client = admin.connect(database).await?;
    client
        .batch_execute(&format!("DROP ROLE IF EXISTS {}", quote(role)))
        .await
        .map_err(admin.sql(database, format!("drop role {role}")))?;
    admin.metrics.sql_statements("role", 1);
    admin.release(database, client);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(grantor: &str, admin: bool, inherit: bool, set: bool) -> Membership {
        Membership {
            grantor: grantor.to_owned(),
            admin,
            inherit,
            set,
        }
    }

    #[test]
    fn since_16_the_membership_is_one_grant_that_sets_and_does_not_inherit() {
        let plan =
            |grants: &[Membership]| membership_plan(160_004, "shop__support", "shop", true, grants);
        assert_eq!(
            plan(&[]),
            [r#"GRANT "shop__support" TO "shop" WITH INHERIT FALSE, SET TRUE"#]
        );
        assert!(plan(&[grant("postgres", false, false, true)]).is_empty());
        // Made inheriting (or given ADMIN, or a second grantor) by hand: granted anew.
        for wrong in [
            vec![grant("postgres", false, true, true)],
            vec![grant("postgres", true, false, true)],
            vec![grant("postgres", false, false, false)],
            vec![
                grant("ops", false, false, true),
                grant("postgres", false, true, true),
            ],
        ] {
            let statements = plan(&wrong);
            assert_eq!(statements.len(), wrong.len() + 1, "{wrong:?}");
            assert_eq!(
                statements.last().unwrap(),
                r#"GRANT "shop__support" TO "shop" WITH INHERIT FALSE, SET TRUE"#
            );
            assert_eq!(
                statements[0],
                format!(
                    r#"REVOKE "shop__support" FROM "shop" GRANTED BY "{}""#,
                    wrong[0].grantor
                )
            );
        }
    }

    #[test]
    fn before_16_the_login_role_does_not_inherit_at_all() {
        let plan = |inherits: bool, grants: &[Membership]| {
            membership_plan(150_008, "shop__support", "shop", inherits, grants)
        };
        assert_eq!(
            plan(true, &[]),
            [
                r#"ALTER ROLE "shop" NOINHERIT"#,
                r#"GRANT "shop__support" TO "shop""#
            ]
        );
        assert!(plan(false, &[grant("postgres", false, true, true)]).is_empty());
        assert_eq!(
            plan(false, &[grant("postgres", true, true, true)]),
            [r#"REVOKE ADMIN OPTION FOR "shop__support" FROM "shop""#]
        );
    }
}
