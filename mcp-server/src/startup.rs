//! The start-up sequence: the first database token (workload identity), then the self-check of
//! the server's own role (layer one of the read-only defence: refuse to serve as a superuser or
//! as a role that can write to, or create in, what it exposes). It publishes its progress in
//! [`Readiness`]; it never stops the server for what can pass by itself.
//!
//! What passes by itself is retried for as long as it takes, with the server up and unready:
//! Entra refusing the token exchange (a new federated credential is refused with AADSTS700213
//! for minutes until it has propagated, and no restart would make that faster), Entra or the
//! database unreachable. What cannot pass without new settings stops the start: an Entra
//! authority whose certificate is not trusted (the CA bundle is read once), an unsafe role.

use std::sync::Arc;
use std::time::Duration;

use pgmcp_identity::TokenProvider;
use serde_json::Value;

use crate::readiness::{Readiness, State};
use crate::tools::{Call, ToolError, Tools};

/// Why the server must not start. Never contains a token or password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refusing to start: {0}")]
    Identity(pgmcp_identity::Error),
    #[error(
        "refusing to serve: {0}. Use a role with SELECT only (what a PostgresMcpBinding \
         creates), or pass --allow-unsafe-role for development"
    )]
    UnsafeRole(String),
}

/// Why the role could not be checked: which catalog read failed, and the database's reason.
#[derive(Debug, thiserror::Error)]
#[error("failed to inspect {what}: {cause}")]
pub struct RoleCheckError {
    /// `the database role`, `table privileges` or `schema privileges`.
    pub what: &'static str,
    pub cause: ToolError,
}

/// Waits between attempts: `first`, doubling up to `max`.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// 0.5 s, 1 s, 2 s, … 30 s: quick while a restart of the database or a blip is the likely
    /// cause, then twice a minute, which is one Entra request and one log line per 30 s while
    /// a credential propagates (minutes) and finds it within 30 s once it has.
    const START_UP: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
}

/// Why one attempt failed.
#[derive(Debug)]
enum Failure {
    /// Entra did not issue the database token.
    Token(pgmcp_identity::Error),
    /// The database could not be reached, or its catalog read.
    Database(RoleCheckError),
    /// Nothing changes without new settings.
    Fatal(Error),
}

impl Failure {
    /// One sentence for `/readyz` and tool errors: who, and the authority's or the database's
    /// own reason.
    fn describe(&self) -> String {
        match self {
            Failure::Token(err) if err.is_rejected() => format!(
                "Microsoft Entra ID refused the exchange for the database token: {err}. A \
                 federated credential created in the last few minutes may not be accepted yet \
                 (Entra takes a while to propagate a new one); otherwise compare its issuer, \
                 subject and audience with the ones Entra names here"
            ),
            Failure::Token(err) => {
                format!("Microsoft Entra ID did not issue the database token: {err}")
            }
            Failure::Database(err) => format!("the database cannot be checked yet: {err}"),
            Failure::Fatal(err) => err.to_string(),
        }
    }
}

/// Gets the first database token (with `token`), then checks the role, retrying with
/// [`Backoff::START_UP`] for as long as the failures can pass by themselves. The tools are
/// ready when it returns `Ok`; the server must stop when it returns an error.
pub async fn run(
    tools: Arc<Tools>,
    token: Option<TokenProvider>,
    allow_unsafe_role: bool,
) -> Result<(), Error> {
    let problems = retry(tools.readiness(), Backoff::START_UP, || async {
        if let Some(provider) = &token {
            match provider.token().await {
                Ok(_) => {}
                Err(err) if err.needs_restart() => {
                    return Err(Failure::Fatal(Error::Identity(err)));
                }
                Err(err) => return Err(Failure::Token(err)),
            }
        }
        role_problems(&tools).await.map_err(Failure::Database)
    })
    .await?;
    if let Some(provider) = &token {
        tracing::info!(identity = %provider.identity(), "the database password is an Entra token (workload identity)");
    }
    if !problems.is_empty() {
        let list = problems.join("; ");
        if !allow_unsafe_role {
            return Err(Error::UnsafeRole(list));
        }
        tracing::error!(problems = %list, "UNSAFE: serving with a role that is not read-only (--allow-unsafe-role); the SQL guard and read-only transactions are the only protection left");
    }
    load_definers(&tools).await;
    tokio::spawn(tools.clone().keep_definers_fresh());
    tools.readiness().set(State::Ready);
    Ok(())
}

/// Reads the SECURITY DEFINER functions whose calls the server refuses, and names them in the
/// log. A failure is retried at the first query.
async fn load_definers(tools: &Tools) {
    match tools.refresh_definers().await {
        Ok(snapshot)
            if !snapshot
                .definers(tools.access.server_scope().functions())
                .is_empty() =>
        {
            tracing::warn!(
                functions = %snapshot.definers(tools.access.server_scope().functions()).join(", "),
                "calls to these SECURITY DEFINER functions are refused (they run with their owner's rights); allow one with --allow-function SCHEMA.NAME (spec.access.functions) if agents may call it"
            )
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = %err, "failed to read the SECURITY DEFINER functions; reading them at the first query");
        }
    }
}

/// Runs `attempt` until it succeeds or fails for good ([`Failure::Fatal`]). After any other
/// failure its reason goes to `readiness` and to one warning, and the next attempt waits as
/// `backoff` says.
async fn retry<T, F, Fut>(
    readiness: &Readiness,
    backoff: Backoff,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut delay = backoff.first;
    let mut number = 1u64;
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(value),
            Err(Failure::Fatal(err)) => return Err(err),
            Err(failure) => failure.describe(),
        };
        tracing::warn!(attempt = number, retry_in_s = delay.as_secs_f64(), reason = %failure, "not ready yet; retrying");
        readiness.set(State::Waiting(Arc::from(format!(
            "{failure}. The server retries by itself (attempt {number} failed; next in {} s)",
            delay.as_secs_f64()
        ))));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(backoff.max);
        number += 1;
    }
}

/// What makes a role unsafe to serve with, one sentence each; empty when it is safe. With
/// caller classes, each class's role is checked too, as the statements of its callers run
/// (switched to it): a class role that can write is named with its class, and one the server
/// cannot switch to keeps the server waiting with PostgreSQL's reason (the operator creates the
/// roles and memberships before the server's Deployment).
pub async fn role_problems(tools: &Tools) -> Result<Vec<String>, RoleCheckError> {
    let mut problems = role_problems_as(tools, &Call::default()).await?;
    for class in tools.access.classes() {
        let caller = crate::auth::Caller::default().in_class(class.clone());
        let call = Call::new(Default::default(), Some(caller));
        let found = role_problems_as(tools, &call).await?;
        problems.extend(
            found
                .into_iter()
                .map(|p| format!("caller class {}: {p}", class.label())),
        );
    }
    Ok(problems)
}

async fn role_problems_as(tools: &Tools, call: &Call) -> Result<Vec<String>, RoleCheckError> {
    // Three independent queries, run at once: the server answers only after them. MAINTAIN
    // (VACUUM, REFRESH MATERIALIZED VIEW, LOCK TABLE, ...) is a table privilege since
    // PostgreSQL 17; earlier servers reject the word.
    let role = tools.catalog_plain(
        call,
        "SELECT current_user::text, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls
             FROM pg_roles WHERE rolname = current_user",
        &[],
    );
    let writable = tools.catalog(
        call,
        "SELECT n.nspname || '.' || c.relname
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r','p','m','f') AND n.nspname NOT IN ('pg_catalog','information_schema')
               AND n.nspname NOT LIKE 'pg\\_%'
               AND ($1::bool OR n.nspname = ANY($2::text[]) OR (n.nspname || '.' || c.relname) = ANY($3::text[]))
               AND (pg_has_role(c.relowner, 'USAGE')
                    OR has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER'
                         || CASE WHEN current_setting('server_version_num')::int >= 170000 THEN ', MAINTAIN' ELSE '' END))
             ORDER BY 1 LIMIT 5",
        &[],
    );
    let scope = tools.scope_of(call);
    let schemas = serde_json::json!(scope.schemas());
    let params = [Value::Bool(scope.is_unrestricted()), schemas];
    // Whether PUBLIC may create there: every role can, which is PostgreSQL 14's default in
    // schema public (15 revoked it).
    let creatable = tools.catalog_plain(
        call,
        "SELECT nspname::text, has_schema_privilege('public', oid, 'CREATE'), quote_ident(nspname)
             FROM pg_namespace
             WHERE nspname NOT IN ('pg_catalog','information_schema') AND nspname NOT LIKE 'pg\\_%'
               AND ($1::bool OR nspname = ANY($2::text[])) AND has_schema_privilege(oid, 'CREATE')
             ORDER BY 1",
        &params,
    );
    let (role, writable, creatable) = futures::join!(role, writable, creatable);
    let failed = |what| move |cause| RoleCheckError { what, cause };
    let role = role.map_err(failed("the database role"))?;
    let mut problems = Vec::new();
    if let Some(row) = role.rows.rows.values().first() {
        let name = row[0].as_str().unwrap_or("?");
        for (i, what) in [
            (1, "a superuser"),
            (2, "allowed to create roles"),
            (3, "allowed to create databases"),
            (4, "allowed to bypass row-level security"),
        ] {
            if row[i] == Value::Bool(true) {
                problems.push(format!("role {name} is {what}"));
            }
        }
    }
    let writable = writable.map_err(failed("table privileges"))?;
    for row in &writable.rows.rows.values() {
        problems.push(format!(
            "the role can write to or owns {}",
            row[0].as_str().unwrap_or("?")
        ));
    }
    let creatable = creatable.map_err(failed("schema privileges"))?;
    for row in &creatable.rows.rows.values() {
        let schema = row[0].as_str().unwrap_or("?");
        if row[1] == Value::Bool(true) {
            problems.push(format!(
                "the role can create objects in schema {schema}, as every role can: PUBLIC holds \
                 CREATE there (PostgreSQL 14 and earlier grant it in schema public by default; \
                 REVOKE CREATE ON SCHEMA {} FROM PUBLIC)",
                row[2].as_str().unwrap_or(schema)
            ));
        } else {
            problems.push(format!("the role can create objects in schema {schema}"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    const FAST: Backoff = Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
    };

    fn refused() -> pgmcp_identity::Error {
        pgmcp_identity::Error::Token {
            scope: pgmcp_identity::POSTGRES_SCOPE.into(),
            identity: "workload identity client id 1111 in tenant 2222".into(),
            reason: "Entra ID answered HTTP 401: AADSTS700213: No matching federated identity record found for presented assertion subject 'system:serviceaccount:agents:sales-mcp'.".into(),
            rejected: true,
        }
    }

    #[tokio::test]
    async fn failures_that_can_pass_are_published_and_retried_with_a_doubling_wait() {
        let readiness = Readiness::starting();
        // Each attempt records when it ran and the state the previous failure left.
        let seen: Mutex<Vec<(Instant, State)>> = Mutex::default();
        let mut failures = vec![
            Failure::Token(refused()),
            Failure::Token(refused()),
            Failure::Database(RoleCheckError {
                what: "the database role",
                cause: ToolError::Db(crate::db::DbError::Unavailable("connection refused".into())),
            }),
            Failure::Token(refused()),
        ]
        .into_iter();
        let value = retry(&readiness, FAST, || {
            seen.lock()
                .unwrap()
                .push((Instant::now(), readiness.state()));
            let next = failures.next();
            async move { next.map_or(Ok(42), Err) }
        })
        .await
        .unwrap();
        assert_eq!(value, 42);

        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0].1, State::Starting);
        let State::Waiting(reason) = &seen[1].1 else {
            panic!("{:?}", seen[1].1)
        };
        for part in [
            "Microsoft Entra ID refused the exchange for the database token",
            "client id 1111 in tenant 2222",
            "AADSTS700213: No matching federated identity record",
            "may not be accepted yet",
            "The server retries by itself (attempt 1 failed; next in 0.005 s)",
        ] {
            assert!(reason.contains(part), "{part:?} missing in {reason}");
        }
        let State::Waiting(reason) = &seen[4].1 else {
            panic!("{:?}", seen[4].1)
        };
        assert!(
            reason.contains("(attempt 4 failed; next in 0.02 s)"),
            "{reason}"
        );
        let waits: Vec<Duration> = seen.windows(2).map(|w| w[1].0 - w[0].0).collect();
        for (wait, at_least) in waits.iter().zip([5, 10, 20, 20]) {
            assert!(*wait >= Duration::from_millis(at_least), "{waits:?}");
        }
    }

    #[tokio::test]
    async fn a_failure_that_needs_new_settings_stops_at_once() {
        let readiness = Readiness::starting();
        let untrusted = pgmcp_identity::Error::Untrusted {
            scope: pgmcp_identity::POSTGRES_SCOPE.into(),
            identity: "workload identity client id 1111 in tenant 2222".into(),
            reason: "invalid peer certificate: UnknownIssuer".into(),
        };
        let mut attempts = 0;
        let mut fatal = Some(Failure::Fatal(Error::Identity(untrusted)));
        let err = retry(&readiness, FAST, || {
            attempts += 1;
            let failure = fatal.take();
            async move { failure.map_or(Ok(()), Err) }
        })
        .await
        .unwrap_err();
        assert_eq!(attempts, 1);
        assert_eq!(readiness.state(), State::Starting);
        assert!(
            err.to_string()
                .starts_with("refusing to start: failed to get a token")
                && err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }
}
