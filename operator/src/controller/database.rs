//! The database step of a reconcile: the binding's principal and its read-only grants, and their
//! removal. It turns the binding into what [`crate::database`] needs (the administrator's
//! credentials, the principal, the grant request) and the outcome into a [`Report`] for status.
//!
//! ```text
//! password Secret   generate (or rotate on request) the LOGIN role's password     (password mode)
//! principal         created when missing, with its ownership mark
//! class roles       one NOLOGIN role per caller class (spec.access.callers), recorded, then
//!                   created with the same mark; the principal a member of each that may
//!                   SET ROLE to it but does not inherit its privileges
//! grants            equal to spec.access in spec.postgres.database, then the read-only probe;
//!                   the same for each class role with the class's grants
//! removed classes   a recorded class no longer in the spec: its grants revoked, its role dropped
//! ```
//!
//! The administrator is the Secret fetch read (`postgres.admin.passwordSecretRef`) or the
//! operator's own Entra token (`postgres.admin.entra`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pgmcp_crds::config::class_role_name;
use pgmcp_crds::v1alpha1::{
    CallerClass, ClassRoleRecord, DeletionPolicy, GrantsStatus, PostgresMcpBinding,
    PostgresMcpBindingSpec, PrincipalKind, PrincipalStatus, RoleRecord,
};
use serde_json::json;

use super::Context;
use super::build::{PASSWORD_KEY, common_labels};
use super::record::{self, Record};
use super::validate::{Identity, Valid};
use crate::database::plan::{self, Plan, Request, SchemaGrant};
use crate::database::{self as sql, Admin, Principal};

/// Binding annotation: set it to a new value to rotate the generated password.
pub const ROTATE_ANNOTATION: &str = "pgmcp.dev/rotate-password";
/// Password Secret annotation: the rotation value its password was generated for.
const ROTATED_FOR_ANNOTATION: &str = "pgmcp.dev/rotated-for";
/// Password Secret annotation: present once the role's password was set to the Secret's.
const APPLIED_ANNOTATION: &str = "pgmcp.dev/password-applied";

/// What the step found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub principal: PrincipalStatus,
    pub grants: GrantsStatus,
    /// What the spec names that the database lacks (granted once it exists).
    pub missing: Vec<String>,
    /// What the role can do beyond reading its grants (nothing: read-only verified).
    pub read_only: crate::database::probe::Findings,
    /// The grants and revocations made, if any.
    pub changed: Option<Plan>,
    /// True when grants existed before and had drifted.
    pub repaired: bool,
    /// Each caller class, in spec order.
    pub callers: Vec<ClassReport>,
    /// Where the catalog tracker stands (`None`: spec.access.catalogTracker is false).
    pub catalog_tracker: Option<sql::Tracker>,
}

/// What the step found and did for one caller class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    /// The class (spec.access.callers[].name).
    pub name: String,
    /// Its NOLOGIN role.
    pub role: String,
    pub grants: GrantsStatus,
    /// What the class's grants name that the database lacks.
    pub missing: Vec<String>,
    /// What the class role can do beyond reading its grants.
    pub read_only: crate::database::probe::Findings,
    /// The grants and revocations made, if any.
    pub changed: Option<Plan>,
    /// True when the class's grants existed before and had drifted.
    pub repaired: bool,
    /// The statements that made (or repaired) the principal's membership in the class role.
    pub membership: Vec<String>,
}

/// Why the step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Sql(#[from] sql::Error),
    /// A failure that concerns one caller class's role.
    #[error("caller class {class}: {source}")]
    Class {
        class: String,
        #[source]
        source: Box<sql::Error>,
    },
    #[error(transparent)]
    Record(#[from] record::Error),
    #[error(
        "secret {namespace}/{name} (spec.postgres.admin.passwordSecretRef) is gone, so role {role} on {server} cannot be removed: restore the Secret, or set spec.access.deletionPolicy: Orphan to leave the role in place"
    )]
    AdminSecretGone {
        namespace: String,
        name: String,
        role: String,
        server: String,
    },
    #[error(
        "postgres.admin.entra needs the operator's own workload identity, but AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE are not set: give the operator's ServiceAccount a managed identity (azure.workload.identity/use) and add it as a Microsoft Entra administrator of the server"
    )]
    NoWorkloadIdentity,
    #[error("failed to get a Microsoft Entra token for PostgreSQL as {identity}: {message}")]
    Token { identity: String, message: String },
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
            Error::Sql(e) => e.reason(),
            Error::Class { source, .. } => source.reason(),
            Error::Record(_) => "StatusWriteFailed",
            Error::AdminSecretGone { .. } => "SecretNotFound",
            Error::NoWorkloadIdentity => "NoWorkloadIdentity",
            Error::Token { .. } => "TokenUnavailable",
            Error::Secret { .. } => "SecretFailed",
            Error::Random(_) => "RandomSourceFailed",
        }
    }

    /// True when only a change by the user can fix it.
    pub fn needs_user(&self) -> bool {
        match self {
            Error::Sql(e) => e.needs_user(),
            Error::Class { source, .. } => source.needs_user(),
            Error::NoWorkloadIdentity | Error::AdminSecretGone { .. } => true,
            Error::Token { .. } | Error::Random(_) | Error::Secret { .. } | Error::Record(_) => {
                false
            }
        }
    }
}

/// The administrator's connection settings: the Secret fetch read, or the operator's Entra token.
pub async fn admin<'a>(
    ctx: &'a Context,
    spec: &PostgresMcpBindingSpec,
    admin_secret: Option<&Secret>,
) -> Result<Admin<'a>, Error> {
    let pg = &spec.postgres;
    let (user, password) = if let Some(entra) = &pg.admin.entra {
        // The scope of the server's cloud (Azure Government, China, public), or the one given.
        let scope = ctx
            .defaults
            .postgres_scope
            .clone()
            .unwrap_or_else(|| pgmcp_identity::postgres_scope_for(&pg.host).to_owned());
        let provider = ctx
            .postgres_tokens
            .as_ref()
            .ok_or(Error::NoWorkloadIdentity)?
            .for_scope(&scope);
        let token = provider.token().await.map_err(|e| Error::Token {
            identity: provider.identity(),
            message: e.to_string(),
        })?;
        (entra.user.clone(), token.secret().to_owned())
    } else {
        // validate() checked that the Secret and both keys exist.
        let reference = pg.admin.password_secret_ref.as_ref();
        let read = |key: Option<&String>| -> String {
            key.and_then(|k| admin_secret?.data.as_ref()?.get(k))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default()
        };
        (
            read(reference.map(|r| &r.username_key)),
            read(reference.map(|r| &r.password_key)),
        )
    };
    Ok(Admin {
        host: pg.host.clone(),
        port: u16::try_from(pg.port).unwrap_or(5432),
        ssl_mode: pg.ssl_mode.as_str(),
        root_cert: ctx.defaults.trust_bundle.as_ref().map(|b| b.path.as_path()),
        user,
        password,
        pool: &ctx.admin_pool,
        metrics: &ctx.metrics,
    })
}

/// What spec.access asks for in spec.postgres.database. Empty grants (only caller classes) leave
/// the principal CONNECT on the database and nothing else.
fn request(valid: &Valid, admin: &Admin<'_>, catalog_tracker: bool) -> Request {
    Request {
        database: valid.spec.postgres.database.clone(),
        grants: schema_grants(&valid.spec.access.grants),
        default_privileges: valid.spec.access.default_privileges,
        admin: admin.user.clone(),
        field: "spec.access.grants".to_owned(),
        catalog_tracker,
    }
}

/// What caller class `class` asks for in spec.postgres.database.
fn class_request(valid: &Valid, admin: &Admin<'_>, class: &CallerClass) -> Request {
    Request {
        database: valid.spec.postgres.database.clone(),
        grants: schema_grants(&class.grants),
        default_privileges: class.default_privileges,
        admin: admin.user.clone(),
        field: format!(
            "the grants of caller class {} (spec.access.callers)",
            class.name
        ),
        // The server reads the catalog as its own role, never as a class's.
        catalog_tracker: false,
    }
}

fn schema_grants(grants: &[pgmcp_crds::v1alpha1::Grant]) -> Vec<SchemaGrant> {
    grants
        .iter()
        .map(|g| SchemaGrant {
            schema: g.schema.clone(),
            tables: (g.tables != ["*"]).then(|| g.tables.clone()),
        })
        .collect()
}

/// The caller classes of the spec with their role names, in spec order.
fn classes(valid: &Valid) -> Vec<(&CallerClass, String)> {
    valid
        .spec
        .access
        .callers
        .iter()
        .map(|class| (class, class_role_name(valid.identity.role(), &class.name)))
        .collect()
}

/// Tags an error of one caller class's role with the class.
fn for_class(class: &str) -> impl Fn(sql::Error) -> Error + '_ {
    move |source| Error::Class {
        class: class.to_owned(),
        source: Box::new(source),
    }
}

/// Runs the step for a binding that passed validation: the principal (recorded before it is
/// created), its grants in spec.postgres.database (recorded before they are made), and the
/// revocation of grants in a database the binding named before.
pub async fn reconcile(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    valid: &Valid,
    record: &mut Record,
    (admin_secret, password_secret): (Option<&Secret>, Option<&Secret>),
) -> Result<Report, Error> {
    let admin = admin(ctx, &valid.spec, admin_secret).await?;
    let role = valid.identity.role().to_owned();
    let database = valid.spec.postgres.database.clone();
    let policy = valid.spec.access.deletion_policy;

    let principal = match &valid.identity {
        Identity::Password { secret_name, .. } => {
            let password =
                ensure_password_secret(ctx, binding, valid, secret_name, password_secret).await?;
            Principal::Password {
                role: role.clone(),
                password: password.value,
                applied: password.applied,
            }
        }
        Identity::Entra { .. } => Principal::Entra {
            role: role.clone(),
            object_id: valid
                .spec
                .identity
                .entra
                .as_ref()
                .and_then(|e| e.object_id.clone()),
        },
    };

    // A role recorded under another name or on another server (name, host and port are
    // immutable, so only a binding stored under an older CRD gets here) is removed first.
    let admin_db = valid.spec.postgres.admin.database.clone();
    let marker = sql::ownership_marker(&valid.namespace, &valid.name);
    if let Some(stale) = record
        .get()
        .role
        .clone()
        .filter(|r| r.name != role || r.server != admin.server())
    {
        if stale.deletion_policy == DeletionPolicy::Delete {
            remove_role(
                &on_server(&admin, &stale.server),
                &admin_db,
                &stale,
                &marker,
            )
            .await?;
        }
        record.get_mut().role = None;
        record.save(ctx).await?;
    }
    let mut databases: Vec<String> = record
        .get()
        .role
        .as_ref()
        .map(|r| r.databases.clone())
        .unwrap_or_default();
    if !databases.contains(&database) {
        databases.push(database.clone());
    }

    // The principal, in the admin database.
    let existing = sql::find_role(&admin, &admin_db, &role).await?;
    let oid = match existing {
        Some(existing) if existing.comment != marker => {
            return Err(sql::Error::RoleConflict {
                role: role.clone(),
                server: admin.server(),
                binding: format!("{}/{}", valid.namespace, valid.name),
                owner: existing.owner().map(str::to_owned),
            }
            .into());
        }
        Some(existing) => {
            if let Principal::Password {
                password,
                applied: false,
                ..
            } = &principal
            {
                sql::set_password(&admin, &admin_db, &role, password).await?;
            }
            existing.oid
        }
        None => {
            set_role(record, &role, None, &admin, &databases, policy);
            record.save(ctx).await?;
            sql::create_principal(&admin, &admin_db, &principal, &marker).await?
        }
    };
    set_role(record, &role, Some(oid), &admin, &databases, policy);
    if let (Principal::Password { applied: false, .. }, Identity::Password { secret_name, .. }) =
        (&principal, &valid.identity)
    {
        mark_password_applied(ctx, valid, secret_name).await?;
    }

    // Caller class roles, each recorded before it is created, and the principal's membership.
    let classes = classes(valid);
    let mut memberships = Vec::with_capacity(classes.len());
    for (class, class_role) in &classes {
        ensure_class_role(ctx, &admin, record, valid, class, class_role).await?;
        let statements = sql::converge_membership(&admin, &admin_db, class_role, &role)
            .await
            .map_err(for_class(&class.name))?;
        memberships.push(statements);
    }

    // Grants, in the target database, in one transaction; recorded before they are made.
    record.save(ctx).await?;
    // Every class role the principal may still be a member of, removed ones included (they go
    // at the end of this step): its own probe, or their removal, answers for them.
    let recorded_classes: Vec<String> = record
        .get()
        .role
        .iter()
        .flat_map(|r| r.class_roles.iter().map(|c| c.name.clone()))
        .collect();
    // The catalog tracker, installed when missing, before the grants that let the server read it.
    // An admin found unable to create event triggers is not asked again (each attempt is an
    // error in the server's log) until the spec changes.
    let refused = binding
        .status
        .as_ref()
        .filter(|s| s.observed_generation == binding.metadata.generation)
        .and_then(|s| s.catalog_tracker.as_ref())
        .and_then(|t| t.reason.clone())
        .filter(|r| r.starts_with(&sql::tracker_refusal_prefix(&admin.user)));
    let tracker = match (valid.spec.access.catalog_tracker, refused) {
        (false, _) => None,
        (true, Some(reason)) => Some(sql::Tracker::Unavailable(reason)),
        (true, None) => Some(sql::ensure_tracker(&admin, &database).await?),
    };
    let granted = sql::converge_grants(
        &admin,
        &role,
        &request(valid, &admin, tracker == Some(sql::Tracker::InUse)),
        &valid.spec.access.functions,
        &recorded_classes,
    )
    .await?;
    // Turned off: the tracker goes once no binding's role reads it.
    if granted
        .plan
        .revoke
        .iter()
        .any(|p| p.object == plan::Object::Schema(plan::TRACKER_SCHEMA.to_owned()))
    {
        sql::drop_tracker_if_unused(&admin, &database).await?;
    }
    let previous = binding.status.as_ref();
    let mut callers = Vec::with_capacity(classes.len());
    for ((class, class_role), membership) in classes.iter().zip(memberships) {
        let granted = sql::converge_grants(
            &admin,
            class_role,
            &class_request(valid, &admin, class),
            &class.functions,
            &[],
        )
        .await
        .map_err(for_class(&class.name))?;
        let previous = previous
            .and_then(|s| s.callers.iter().find(|c| c.name == class.name))
            .map(|c| c.grants.clone());
        let (grants, changed, repaired) =
            grants_status(ctx, &granted.desired.privileges, granted.plan, previous);
        callers.push(ClassReport {
            name: class.name.clone(),
            role: class_role.clone(),
            grants,
            missing: granted.desired.missing,
            read_only: granted.read_only,
            changed,
            repaired,
            membership,
        });
    }

    // Grants left in a database the binding no longer names, the class roles' too.
    for old in databases.iter().filter(|d| **d != database) {
        for class_role in &recorded_classes {
            sql::revoke_all(&admin, class_role, old).await?;
        }
        sql::revoke_all(&admin, &role, old).await?;
        sql::drop_tracker_if_unused(&admin, old).await?;
        if let Some(recorded) = &mut record.get_mut().role {
            recorded.databases.retain(|d| d != old);
        }
        record.save(ctx).await?;
    }

    // Classes recorded but no longer in the spec: their grants revoked, their roles dropped,
    // then forgotten.
    let stale: Vec<ClassRoleRecord> = record
        .get()
        .role
        .iter()
        .flat_map(|r| r.class_roles.iter())
        .filter(|c| !classes.iter().any(|(_, name)| *name == c.name))
        .cloned()
        .collect();
    // The databases the role still holds grants in (those just left are pruned above).
    let held_in = record
        .get()
        .role
        .as_ref()
        .map(|r| r.databases.clone())
        .unwrap_or_default();
    for class in stale {
        remove_class_role(&admin, &admin_db, &held_in, &class, &marker).await?;
        if let Some(recorded) = &mut record.get_mut().role {
            recorded.class_roles.retain(|c| c.name != class.name);
        }
        record.save(ctx).await?;
    }

    let previous = previous.and_then(|s| s.grants.clone());
    let (grants, changed, repaired) =
        grants_status(ctx, &granted.desired.privileges, granted.plan, previous);
    Ok(Report {
        principal: PrincipalStatus {
            name: role,
            kind: match valid.identity {
                Identity::Entra { .. } => PrincipalKind::Entra,
                Identity::Password { .. } => PrincipalKind::Password,
            },
        },
        grants,
        missing: granted.desired.missing,
        read_only: granted.read_only,
        changed,
        repaired,
        callers,
        catalog_tracker: tracker,
    })
}

/// The status of one role's grants after `plan` brought them to `desired`, from the previous
/// one (`None`: never reported, so a change is the first grant, not a repair); the plan when it
/// changed something; whether that was a repair (counted in the metrics).
fn grants_status(
    ctx: &Context,
    desired: &BTreeSet<plan::Privilege>,
    plan: Plan,
    previous: Option<GrantsStatus>,
) -> (GrantsStatus, Option<Plan>, bool) {
    let repaired = !plan.is_empty() && previous.is_some();
    if repaired {
        ctx.metrics.grant_repair();
    }
    // The tables the grants name (the catalog tracker's table is the server's, not data).
    let tables = desired
        .iter()
        .filter(|p| match &p.object {
            plan::Object::Table { schema, name } => {
                !(schema == plan::TRACKER_SCHEMA && name == plan::TRACKER_TABLE)
            }
            _ => false,
        })
        .count();
    let previous = previous.unwrap_or_default();
    let status = GrantsStatus {
        tables: i32::try_from(tables).unwrap_or(i32::MAX),
        fingerprint: plan::fingerprint(desired),
        last_repair_time: if repaired {
            Some(now())
        } else {
            previous.last_repair_time
        },
        repairs: previous.repairs + i64::from(repaired),
    };
    (status, (!plan.is_empty()).then_some(plan), repaired)
}

/// Makes the role of caller class `class` exist with this binding's mark: recorded first, then
/// created when missing; a role of that name someone else made is never taken over.
async fn ensure_class_role(
    ctx: &Context,
    admin: &Admin<'_>,
    record: &mut Record,
    valid: &Valid,
    class: &CallerClass,
    role: &str,
) -> Result<(), Error> {
    let admin_db = &valid.spec.postgres.admin.database;
    let marker = sql::ownership_marker(&valid.namespace, &valid.name);
    let existing = sql::find_role(admin, admin_db, role)
        .await
        .map_err(for_class(&class.name))?;
    let oid = match existing {
        Some(existing) if existing.comment != marker => {
            return Err(for_class(&class.name)(sql::Error::RoleConflict {
                role: role.to_owned(),
                server: admin.server(),
                binding: format!("{}/{}", valid.namespace, valid.name),
                owner: existing.owner().map(str::to_owned),
            }));
        }
        Some(existing) => existing.oid,
        None => {
            set_class_role(record, &class.name, role, None);
            record.save(ctx).await?;
            sql::create_class_role(admin, admin_db, role, &marker)
                .await
                .map_err(for_class(&class.name))?
        }
    };
    set_class_role(record, &class.name, role, Some(oid));
    Ok(())
}

/// Records the role of caller class `class` (by role name: a name the class no longer gets is
/// another role, removed as stale).
fn set_class_role(record: &mut Record, class: &str, role: &str, oid: Option<u32>) {
    let Some(recorded) = &mut record.get_mut().role else {
        return;
    };
    let entry = ClassRoleRecord {
        class: class.to_owned(),
        name: role.to_owned(),
        oid: oid.map(i64::from),
    };
    match recorded.class_roles.iter_mut().find(|c| c.name == role) {
        Some(existing) => *existing = entry,
        None => recorded.class_roles.push(entry),
    }
}

/// Records the binding's role, keeping the class roles already recorded.
fn set_role(
    record: &mut Record,
    role: &str,
    oid: Option<u32>,
    admin: &Admin<'_>,
    databases: &[String],
    policy: DeletionPolicy,
) {
    let class_roles = record
        .get()
        .role
        .as_ref()
        .map(|r| r.class_roles.clone())
        .unwrap_or_default();
    record.get_mut().role = Some(RoleRecord {
        name: role.to_owned(),
        oid: oid.map(i64::from),
        server: admin.server(),
        databases: databases.to_vec(),
        deletion_policy: policy,
        class_roles,
    });
}

/// `admin` pointed at `server` (`host:port`, as recorded).
fn on_server<'a>(admin: &Admin<'a>, server: &str) -> Admin<'a> {
    let (host, port) = server
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
        .unwrap_or_else(|| (admin.host.clone(), admin.port));
    Admin {
        host,
        port,
        ssl_mode: admin.ssl_mode,
        root_cert: admin.root_cert,
        user: admin.user.clone(),
        password: admin.password.clone(),
        pool: admin.pool,
        metrics: admin.metrics,
    }
}

/// Revokes `recorded`'s grants in each of its databases and drops it, its class roles first,
/// each when it still carries this binding's mark; gone, or someone else's, is left alone.
async fn remove_role(
    admin: &Admin<'_>,
    admin_db: &str,
    recorded: &RoleRecord,
    marker: &str,
) -> Result<(), Error> {
    for class in &recorded.class_roles {
        remove_class_role(admin, admin_db, &recorded.databases, class, marker).await?;
    }
    match sql::find_role(admin, admin_db, &recorded.name).await? {
        Some(existing) if existing.comment == marker => {}
        _ => return Ok(()),
    }
    for database in &recorded.databases {
        sql::revoke_all(admin, &recorded.name, database).await?;
        sql::drop_tracker_if_unused(admin, database).await?;
    }
    sql::drop_role(admin, admin_db, &recorded.name).await?;
    Ok(())
}

/// Revokes the grants of a caller class's role in each of `databases` and drops it (which ends
/// the principal's membership in it), when it still carries this binding's mark.
async fn remove_class_role(
    admin: &Admin<'_>,
    admin_db: &str,
    databases: &[String],
    class: &ClassRoleRecord,
    marker: &str,
) -> Result<(), Error> {
    let tag = for_class(&class.class);
    match sql::find_role(admin, admin_db, &class.name)
        .await
        .map_err(&tag)?
    {
        Some(existing) if existing.comment == marker => {}
        _ => return Ok(()),
    }
    for database in databases {
        sql::revoke_all(admin, &class.name, database)
            .await
            .map_err(&tag)?;
    }
    sql::drop_role(admin, admin_db, &class.name)
        .await
        .map_err(&tag)?;
    Ok(())
}

/// The role a binding that predates the record has, as far as its spec tells.
pub fn adopt_legacy(binding: &PostgresMcpBinding, record: &mut Record) {
    let spec = &binding.spec;
    let name = spec
        .identity
        .entra
        .as_ref()
        .map(|e| e.principal_name.clone())
        .or_else(|| spec.identity.password.as_ref().map(|p| p.role_name.clone()));
    if let Some(name) = name {
        record.get_mut().role = Some(RoleRecord {
            name,
            oid: None,
            server: format!("{}:{}", spec.postgres.host, spec.postgres.port),
            databases: vec![spec.postgres.database.clone()],
            deletion_policy: spec.access.deletion_policy,
            class_roles: Vec::new(),
        });
    }
}

/// Removes the recorded role: its class roles first (each one's grants, then the role, dropped
/// from the record as it goes, so a retry resumes), then its grants in every recorded database
/// and the role (policy Delete; Orphan leaves them all). Needs only the record and the
/// administrator's credentials, not a valid spec.
pub async fn remove(
    ctx: &Context,
    binding: &PostgresMcpBinding,
    record: &mut Record,
    admin_secret: Option<&Secret>,
) -> Result<(), Error> {
    let Some(recorded) = record.get().role.clone() else {
        return Ok(());
    };
    if recorded.deletion_policy == DeletionPolicy::Delete {
        let spec = &binding.spec;
        if let Some(reference) = &spec.postgres.admin.password_secret_ref
            && admin_secret.is_none()
        {
            return Err(Error::AdminSecretGone {
                namespace: binding.metadata.namespace.clone().unwrap_or_default(),
                name: reference.name.clone(),
                role: recorded.name.clone(),
                server: recorded.server.clone(),
            });
        }
        let admin = admin(ctx, spec, admin_secret).await?;
        let marker = sql::ownership_marker(
            binding.metadata.namespace.as_deref().unwrap_or_default(),
            binding.metadata.name.as_deref().unwrap_or_default(),
        );
        // The server the role was made on: the record's.
        let admin = on_server(&admin, &recorded.server);
        let admin_db = &spec.postgres.admin.database;
        for class in &recorded.class_roles {
            remove_class_role(&admin, admin_db, &recorded.databases, class, &marker).await?;
            if let Some(role) = &mut record.get_mut().role {
                role.class_roles.retain(|c| c.name != class.name);
            }
            record.save(ctx).await?;
        }
        let recorded = RoleRecord {
            class_roles: Vec::new(),
            ..recorded
        };
        remove_role(&admin, admin_db, &recorded, &marker).await?;
    }
    record.get_mut().role = None;
    record.save(ctx).await?;
    Ok(())
}

fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap_or_default())
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
