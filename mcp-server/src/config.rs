//! Command line and configuration: the shared [`ServerConfig`] file (written by the operator)
//! overridden by flags and environment, resolved into what the server runs with. The password
//! is read from a file or the environment and never logged or echoed in errors; with workload
//! identity there is no password at all, only the webhook's `AZURE_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use pgmcp_crds::config::{
    DEFAULT_AUTHORITY_HOST, EntraAuthConfig, ScopeFunction, ScopeGrant, ServerConfig,
};
use pgmcp_identity::{TokenProvider, WorkloadIdentity, postgres_scope_for};

use crate::db::ConnectOptions;

/// Read-only PostgreSQL MCP server (Streamable HTTP at /mcp, or stdio).
#[derive(Parser, Debug, Clone, Default)]
#[command(version, about)]
pub struct Args {
    /// Configuration file (JSON, as the operator writes it).
    #[arg(long, env = "PGMCP_CONFIG")]
    pub config: Option<PathBuf>,
    /// postgres://user@host:port/dbname?sslmode=prefer (a password here works, but prefer
    /// --password-file or PGMCP_DATABASE_PASSWORD).
    #[arg(long, env = "PGMCP_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the database password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// PEM file of the CAs to trust for sslmode=verify-full (default: the public web roots).
    #[arg(long)]
    pub ssl_root_cert: Option<PathBuf>,
    /// Address of the HTTP listener (host:port).
    #[arg(long)]
    pub listen: Option<String>,
    /// Threads running tool calls. One is the fastest where PostgreSQL shares the cores (it
    /// saves the hand-offs between threads; see BENCHMARKS.md); raise it for thousands of
    /// calls per second on a dedicated multi-core node.
    #[arg(long, env = "PGMCP_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Serve MCP over stdin/stdout instead of HTTP (for local clients).
    #[arg(long)]
    pub stdio: bool,
    /// Accepted Host header (host or host:port), besides loopback. Repeatable.
    #[arg(long = "allowed-host")]
    pub allowed_hosts: Vec<String>,
    /// Accepted browser Origin (scheme://host[:port]). Repeatable.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Grant visibility of a schema: SCHEMA (every table) or SCHEMA=t1,t2. Repeatable.
    /// Without any, the server shows everything its role can read.
    #[arg(long = "grant")]
    pub grants: Vec<String>,
    /// Allow calls to a SECURITY DEFINER function: SCHEMA.NAME, every overload of the name.
    /// Repeatable. Calls to any other SECURITY DEFINER function outside pg_catalog are refused:
    /// it would run with its owner's rights and could read what the grants do not.
    #[arg(long = "allow-function")]
    pub functions: Vec<String>,
    /// Most rows one tool call returns.
    #[arg(long)]
    pub max_rows: Option<u32>,
    /// Statement timeout in milliseconds.
    #[arg(long)]
    pub statement_timeout_ms: Option<u64>,
    /// Largest text of one discovery answer in bytes (4096 to 1048576, default 16384); longer
    /// listings are paged with a cursor.
    #[arg(long)]
    pub discovery_max_bytes: Option<u64>,
    /// Serve even if the role is a superuser or can write (development only).
    #[arg(long)]
    pub allow_unsafe_role: bool,
    /// Serve without caller authentication on a non-loopback address (development only).
    #[arg(long)]
    pub insecure_allow_unauthenticated: bool,
    /// Require Microsoft Entra ID access tokens issued by this tenant (id or domain).
    #[arg(long)]
    pub entra_tenant_id: Option<String>,
    /// Client id of the server's Entra app registration (tokens for it or its api:// URI pass).
    #[arg(long)]
    pub entra_audience: Option<String>,
    /// App role a caller's token must carry (any one of them). Repeatable.
    #[arg(long = "entra-required-role")]
    pub entra_required_roles: Vec<String>,
    /// Only accept callers with this object id (oid). Repeatable.
    #[arg(long = "entra-allowed-caller")]
    pub entra_allowed_callers: Vec<String>,
    /// Entra authority for caller tokens (sovereign clouds), default https://login.microsoftonline.com.
    #[arg(long)]
    pub entra_authority_host: Option<String>,
    /// The URL callers use for /mcp (named in the OAuth protected resource metadata).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Connect to PostgreSQL with an Entra token from AKS workload identity as the password
    /// (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST).
    #[arg(long)]
    pub workload_identity: bool,
    /// Token scope for the database with --workload-identity. Default: the scope of the cloud
    /// the host name belongs to (Azure Government, Azure China, else the public cloud).
    #[arg(long, env = "PGMCP_DATABASE_TOKEN_SCOPE")]
    pub database_token_scope: Option<String>,
    /// Send results' text without the untrusted-data frame (the boundary and the sentences
    /// telling the model not to follow instructions in the data). Keep it on: rows are written
    /// by people, and a cell can carry instructions aimed at the agent.
    #[arg(long)]
    pub no_untrusted_data_framing: bool,
    /// How the caller's SQL appears in audit events and trace spans: full (as sent), redacted
    /// (literals replaced by ?) or fingerprint (16 hex digits only). Default: full.
    #[arg(long, value_parser = clap::builder::TypedValueParser::map(
        clap::builder::PossibleValuesParser::new(["full", "redacted", "fingerprint"]),
        |s: String| s.parse::<pgmcp_crds::config::AuditStatements>().unwrap_or_default(),
    ))]
    pub audit_statements: Option<pgmcp_crds::config::AuditStatements>,
    /// Log format: json (default) or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
}

/// Everything resolved, ready to run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connect: ConnectOptions,
    pub file: ServerConfig,
    pub listen: SocketAddr,
    pub stdio: bool,
    pub allow_unsafe_role: bool,
    pub insecure_allow_unauthenticated: bool,
    /// Caller authentication, when configured.
    pub entra: Option<EntraAuthConfig>,
}

/// A configuration problem, naming the flag, variable or file at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

/// Parses `--grant` values.
fn parse_grant(value: &str) -> Result<ScopeGrant, ConfigError> {
    let (schema, tables) = value.split_once('=').unwrap_or((value, "*"));
    let tables: Vec<String> = tables
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if schema.is_empty() || tables.is_empty() {
        return Err(err(format!(
            "--grant {value}: expected SCHEMA or SCHEMA=table1,table2"
        )));
    }
    Ok(ScopeGrant {
        schema: schema.to_owned(),
        tables,
    })
}

/// Parses `--allow-function` values.
fn parse_function(value: &str) -> Result<ScopeFunction, ConfigError> {
    match value.split_once('.') {
        Some((schema, name))
            if !schema.is_empty() && !name.is_empty() && !name.contains(['(', ')', '.']) =>
        {
            Ok(ScopeFunction {
                schema: schema.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(err(format!(
            "--allow-function {value}: expected SCHEMA.NAME, such as reporting.monthly_total \
             (without arguments: every overload of the name is allowed)"
        ))),
    }
}

/// Removes `sslmode` and `sslrootcert` from a URL's query (or a key=value string) and returns
/// them, so modes tokio-postgres does not parse (verify-full) still work.
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut ssl_mode = None;
    let mut root_cert = None;
    let mut take = |pair: &str| match pair.split_once('=') {
        Some(("sslmode", value)) => {
            ssl_mode = Some(value.to_owned());
            true
        }
        Some(("sslrootcert", value)) => {
            root_cert = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.contains("://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query.split('&').filter(|pair| !take(pair)).collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|pair| !take(pair))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, ssl_mode, root_cert)
}

impl Settings {
    /// Resolves `args` over the configuration file. `env` looks up environment variables
    /// (injected so tests need not touch the process environment).
    pub fn resolve(args: &Args, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(format!("failed to read --config {}: {e}", path.display())))?;
                serde_json::from_str::<ServerConfig>(&text)
                    .map_err(|e| err(format!("failed to parse --config {}: {e}", path.display())))?
            }
            None => ServerConfig::default(),
        };
        let mut url_password = None;
        if let Some(url) = &args.database_url {
            // tokio-postgres knows only disable/prefer/require: take sslmode (and sslrootcert)
            // out of the URL and apply libpq's meaning ourselves.
            let (url, ssl_mode, root_cert) = split_tls_params(url);
            let pg: tokio_postgres::Config = url.parse().map_err(|e| {
                err(format!(
                    "--database-url is not a PostgreSQL URL or key=value string: {e}"
                ))
            })?;
            if let Some(tokio_postgres::config::Host::Tcp(host)) = pg.get_hosts().first() {
                file.database.host = host.clone();
            }
            if let Some(port) = pg.get_ports().first() {
                file.database.port = *port;
            }
            if let Some(user) = pg.get_user() {
                file.database.user = user.to_owned();
            }
            if let Some(dbname) = pg.get_dbname() {
                file.database.dbname = dbname.to_owned();
            }
            if let Some(mode) = ssl_mode {
                file.database.ssl_mode = mode;
            }
            if root_cert.is_some() {
                file.database.ssl_root_cert = root_cert;
            }
            url_password = pg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned());
        }
        if let Some(path) = &args.ssl_root_cert {
            file.database.ssl_root_cert = Some(path.display().to_string());
        }
        if !pgmcp_postgres_wire::SSL_MODES.contains(&file.database.ssl_mode.as_str()) {
            return Err(err(format!(
                "sslmode {} is not supported: use one of {}",
                file.database.ssl_mode,
                pgmcp_postgres_wire::SSL_MODES.join(", ")
            )));
        }
        if let Some(listen) = &args.listen {
            file.http.listen = listen.clone();
        }
        file.http
            .allowed_hosts
            .extend(args.allowed_hosts.iter().cloned());
        file.http
            .allowed_origins
            .extend(args.allowed_origins.iter().cloned());
        if !args.grants.is_empty() {
            file.scope.grants = args
                .grants
                .iter()
                .map(|g| parse_grant(g))
                .collect::<Result<_, _>>()?;
        }
        if !args.functions.is_empty() {
            file.scope.functions = args
                .functions
                .iter()
                .map(|f| parse_function(f))
                .collect::<Result<_, _>>()?;
        }
        if let Some(max_rows) = args.max_rows {
            file.limits.max_rows = max_rows;
        }
        if let Some(timeout) = args.statement_timeout_ms {
            file.limits.statement_timeout_ms = timeout;
        }
        if file.limits.max_rows == 0 || file.limits.statement_timeout_ms == 0 {
            return Err(err("max rows and statement timeout must be greater than 0"));
        }
        if let Some(bytes) = args.discovery_max_bytes {
            file.limits.discovery_max_bytes = bytes;
        }
        if !pgmcp_crds::config::DISCOVERY_MAX_BYTES.contains(&file.limits.discovery_max_bytes) {
            return Err(err(format!(
                "discovery max bytes must be between 4096 and 1048576, not {}",
                file.limits.discovery_max_bytes
            )));
        }

        if args.no_untrusted_data_framing {
            file.results.untrusted_data_framing = false;
        }
        if let Some(statements) = args.audit_statements {
            file.audit.statements = statements;
        }
        if let Some(url) = &args.public_url {
            file.http.public_url = Some(url.clone());
        }
        if let Some(url) = &file.http.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(err(format!(
                "public URL {url} is not an http(s) URL: use e.g. https://mcp.example.com/mcp"
            )));
        }
        let entra = resolve_entra(args, file.auth.entra.clone())?;
        file.auth.entra = entra.clone();

        file.database.workload_identity |= args.workload_identity;
        let password_file = args
            .password_file
            .clone()
            .or_else(|| file.database.password_file.as_ref().map(PathBuf::from));
        let token = if file.database.workload_identity {
            if password_file.is_some() || file.database.password_env.is_some() {
                return Err(err(
                    "workload identity and a password (--password-file, passwordFile, passwordEnv) \
                     are exclusive: with workload identity the password is an Entra token",
                ));
            }
            if !matches!(file.database.ssl_mode.as_str(), "require" | "verify-full") {
                return Err(err(format!(
                    "sslmode {} would send the Entra token unencrypted or unchecked: workload \
                     identity needs sslmode=require or verify-full",
                    file.database.ssl_mode
                )));
            }
            let identity = WorkloadIdentity::from_env(&env).map_err(|e| err(e.to_string()))?;
            let scope = args
                .database_token_scope
                .clone()
                .or_else(|| file.database.token_scope.clone())
                .unwrap_or_else(|| postgres_scope_for(&file.database.host).to_owned());
            Some(TokenProvider::new(std::sync::Arc::new(identity), scope))
        } else {
            None
        };
        let password = if token.is_some() {
            None
        } else {
            match password_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            err(format!(
                                "failed to read the password file {}: {e}",
                                path.display()
                            ))
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => {
                    let var = file
                        .database
                        .password_env
                        .clone()
                        .unwrap_or_else(|| "PGMCP_DATABASE_PASSWORD".to_owned());
                    env(&var).or(url_password)
                }
            }
        };

        let listen: SocketAddr = file.http.listen.parse().map_err(|e| {
            err(format!(
                "listen address {} is not host:port: {e}",
                file.http.listen
            ))
        })?;
        let connect = ConnectOptions {
            host: file.database.host.clone(),
            port: file.database.port,
            dbname: file.database.dbname.clone(),
            user: file.database.user.clone(),
            password,
            token,
            ssl_mode: file.database.ssl_mode.clone(),
            ssl_root_cert: file.database.ssl_root_cert.as_ref().map(PathBuf::from),
            pool_size: file.database.pool_size,
            statement_timeout: Duration::from_millis(file.limits.statement_timeout_ms),
            // Every class's schemas: a class's role resolves names through the same path, and
            // its scope check refuses what it may not read.
            search_path: {
                let mut schemas: Vec<String> = Vec::new();
                for grant in file
                    .scope
                    .grants
                    .iter()
                    .chain(file.scope.callers.iter().flat_map(|c| &c.grants))
                {
                    if !schemas.contains(&grant.schema) {
                        schemas.push(grant.schema.clone());
                    }
                }
                schemas
            },
        };
        Ok(Self {
            connect,
            listen,
            stdio: args.stdio,
            allow_unsafe_role: args.allow_unsafe_role,
            insecure_allow_unauthenticated: args.insecure_allow_unauthenticated
                || file.auth.insecure_allow_unauthenticated,
            entra,
            file,
        })
    }
}

/// The `--entra-*` flags over the file's `auth.entra`; `None` when neither configures it.
fn resolve_entra(
    args: &Args,
    from_file: Option<EntraAuthConfig>,
) -> Result<Option<EntraAuthConfig>, ConfigError> {
    let flagged = args.entra_tenant_id.is_some()
        || args.entra_audience.is_some()
        || !args.entra_required_roles.is_empty()
        || !args.entra_allowed_callers.is_empty()
        || args.entra_authority_host.is_some();
    if !flagged && from_file.is_none() {
        return Ok(None);
    }
    let mut entra = from_file.unwrap_or_else(|| EntraAuthConfig {
        tenant_id: String::new(),
        audience: String::new(),
        required_roles: Vec::new(),
        allowed_caller_object_ids: Vec::new(),
        authority_host: DEFAULT_AUTHORITY_HOST.to_owned(),
    });
    if let Some(tenant) = &args.entra_tenant_id {
        entra.tenant_id = tenant.clone();
    }
    if let Some(audience) = &args.entra_audience {
        entra.audience = audience.clone();
    }
    if !args.entra_required_roles.is_empty() {
        entra.required_roles = args.entra_required_roles.clone();
    }
    if !args.entra_allowed_callers.is_empty() {
        entra.allowed_caller_object_ids = args.entra_allowed_callers.clone();
    }
    if let Some(host) = &args.entra_authority_host {
        entra.authority_host = host.clone();
    }
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    };
    if !is_name(&entra.tenant_id) {
        return Err(err(format!(
            "Entra tenant id {:?} is not a tenant id or domain: set --entra-tenant-id or auth.entra.tenantId",
            entra.tenant_id
        )));
    }
    if entra.audience.trim().is_empty() {
        return Err(err(
            "Entra audience is empty: set --entra-audience or auth.entra.audience to the client id \
             of the server's app registration",
        ));
    }
    if !entra.authority_host.starts_with("https://") {
        return Err(err(format!(
            "Entra authority host {} is not an https:// URL",
            entra.authority_host
        )));
    }
    if entra.required_roles.is_empty() && entra.allowed_caller_object_ids.is_empty() {
        return Err(err(format!(
            "Entra auth without required roles would accept any application of tenant {} that \
             can get a token for {}: set --entra-required-role (auth.entra.requiredRoles) to an \
             app role of the server's app registration, or list the callers with \
             --entra-allowed-caller",
            entra.tenant_id, entra.audience
        )));
    }
    Ok(Some(entra))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::parse_from(std::iter::once("pgmcp-server").chain(list.iter().copied()))
    }

    #[test]
    fn url_flags_and_env_combine_and_the_password_is_never_shown() {
        let settings = Settings::resolve(
            &args(&[
                "--database-url",
                "postgres://reader:urlpass@db.example:6543/shop?sslmode=disable",
                "--grant",
                "public",
                "--grant",
                "reporting=monthly_sales,daily",
                "--allow-function",
                "reporting.monthly_total",
                "--max-rows",
                "50",
            ]),
            |var| (var == "PGMCP_DATABASE_PASSWORD").then(|| "envpass".to_owned()),
        )
        .unwrap();
        let c = &settings.connect;
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str(), c.dbname.as_str()),
            ("db.example", 6543, "reader", "shop")
        );
        assert_eq!(c.ssl_mode, "disable");
        assert_eq!(
            c.password.as_deref(),
            Some("envpass"),
            "the environment wins over the URL"
        );
        assert_eq!(c.search_path, ["public", "reporting"]);
        assert_eq!(
            settings.file.scope.grants[1].tables,
            ["monthly_sales", "daily"]
        );
        assert_eq!(
            settings.file.scope.functions,
            [ScopeFunction {
                schema: "reporting".into(),
                name: "monthly_total".into()
            }]
        );
        assert_eq!(settings.file.limits.max_rows, 50);
        assert!(
            !format!("{settings:?}").contains("envpass"),
            "Debug output redacts the password"
        );
    }

    #[test]
    fn the_operator_written_config_file_is_loaded_and_flags_override_it() {
        let mut written = ServerConfig::default();
        written.database.host = "sales.postgres.database.azure.com".into();
        written.database.dbname = "sales".into();
        written.database.user = "sales-mcp".into();
        written.database.password_env = Some("SALES_PASSWORD".into());
        written.scope.grants = vec![ScopeGrant {
            schema: "reporting".into(),
            tables: vec!["monthly_sales".into()],
        }];
        written.scope.functions = vec![ScopeFunction {
            schema: "reporting".into(),
            name: "monthly_total".into(),
        }];
        written.limits.max_rows = 200;
        written.http.listen = "0.0.0.0:8080".into();
        written.http.allowed_hosts = vec!["sales-mcp.agents.svc".into()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&written).unwrap()).unwrap();
        let path = path.display().to_string();

        let settings = Settings::resolve(&args(&["--config", &path, "--max-rows", "20"]), |var| {
            (var == "SALES_PASSWORD").then(|| "from-env".to_owned())
        })
        .unwrap();
        assert_eq!(settings.connect.host, "sales.postgres.database.azure.com");
        assert_eq!(settings.connect.password.as_deref(), Some("from-env"));
        assert_eq!(settings.connect.search_path, ["reporting"]);
        assert_eq!(settings.file.scope.functions[0].name, "monthly_total");
        assert_eq!(
            settings.file.limits.max_rows, 20,
            "the flag wins over the file"
        );
        assert_eq!(settings.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(settings.file.http.allowed_hosts, ["sales-mcp.agents.svc"]);

        std::fs::write(dir.path().join("typo.json"), r#"{"limits": {"maxRow": 5}}"#).unwrap();
        let typo = dir.path().join("typo.json").display().to_string();
        let e = Settings::resolve(&args(&["--config", &typo]), |_| None).unwrap_err();
        assert!(e.to_string().contains("unknown field `maxRow`"), "{e}");
    }

    #[test]
    fn tls_parameters_come_from_the_url_or_flags() {
        let s = Settings::resolve(
            &args(&[
                "--database-url",
                "postgres://r@db:5432/shop?sslmode=verify-full&application_name=x&sslrootcert=/ca.pem",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(s.connect.ssl_mode, "verify-full");
        assert_eq!(
            s.connect.ssl_root_cert.as_deref(),
            Some(Path::new("/ca.pem"))
        );
        let s = Settings::resolve(
            &args(&[
                "--database-url",
                "host=db user=r sslmode=require",
                "--ssl-root-cert",
                "/other.pem",
            ]),
            |_| None,
        )
        .unwrap();
        assert_eq!(
            (s.connect.host.as_str(), s.connect.ssl_mode.as_str()),
            ("db", "require")
        );
        assert_eq!(
            s.connect.ssl_root_cert.as_deref(),
            Some(Path::new("/other.pem"))
        );
        let e = Settings::resolve(
            &args(&["--database-url", "postgres://r@db/shop?sslmode=allow"]),
            |_| None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("sslmode allow is not supported"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Settings::resolve(&args(&["--database-url", "mysql://x"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("--database-url"), "{e}");
        let e = Settings::resolve(&args(&["--grant", "=x"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("--grant"), "{e}");
        for bad in ["monthly_total", "reporting.monthly_total(int)", ".f", "s."] {
            let e = Settings::resolve(&args(&["--allow-function", bad]), |_| None).unwrap_err();
            assert!(
                e.to_string().contains("--allow-function") && e.to_string().contains("SCHEMA.NAME"),
                "{e}"
            );
        }
        let e = Settings::resolve(&args(&["--listen", "nowhere"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("listen address"), "{e}");
        let e = Settings::resolve(&args(&["--config", "/nonexistent.json"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("--config /nonexistent.json"), "{e}");
    }

    #[test]
    fn entra_flags_configure_caller_authentication_and_refuse_half_configurations() {
        let s = Settings::resolve(
            &args(&[
                "--entra-tenant-id",
                "22222222-2222-2222-2222-222222222222",
                "--entra-audience",
                "44444444-4444-4444-4444-444444444444",
                "--entra-required-role",
                "MCP.Read",
                "--public-url",
                "https://mcp.contoso.com/agents/sales/mcp",
            ]),
            |_| None,
        )
        .unwrap();
        let entra = s.entra.unwrap();
        assert_eq!(entra.required_roles, ["MCP.Read"]);
        assert_eq!(entra.authority_host, "https://login.microsoftonline.com");
        assert_eq!(
            s.file.http.public_url.as_deref(),
            Some("https://mcp.contoso.com/agents/sales/mcp")
        );
        assert!(
            Settings::resolve(&args(&[]), |_| None)
                .unwrap()
                .entra
                .is_none()
        );

        let e = Settings::resolve(&args(&["--entra-audience", "x"]), |_| None).unwrap_err();
        assert!(e.to_string().contains("--entra-tenant-id"), "{e}");
        let e = Settings::resolve(
            &args(&["--entra-tenant-id", "t", "--entra-audience", "a"]),
            |_| None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("without required roles would accept any application"),
            "{e}"
        );
        let e = Settings::resolve(
            &args(&[
                "--entra-tenant-id",
                "t",
                "--entra-audience",
                "a",
                "--entra-allowed-caller",
                "oid",
                "--entra-authority-host",
                "http://login.example",
            ]),
            |_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an https:// URL"), "{e}");
    }

    #[test]
    fn workload_identity_needs_the_webhook_variables_and_tls_and_no_password() {
        let webhook = |var: &str| {
            match var {
                "AZURE_CLIENT_ID" => Some("11111111-1111-1111-1111-111111111111"),
                "AZURE_TENANT_ID" => Some("22222222-2222-2222-2222-222222222222"),
                "AZURE_FEDERATED_TOKEN_FILE" => {
                    Some("/var/run/secrets/azure/tokens/azure-identity-token")
                }
                "PGMCP_DATABASE_PASSWORD" => Some("ignored"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let url = "postgres://sales-mcp@contoso.postgres.database.azure.com/sales?sslmode=require";
        let s = Settings::resolve(
            &args(&["--database-url", url, "--workload-identity"]),
            webhook,
        )
        .unwrap();
        assert!(
            s.connect.password.is_none(),
            "no password: the token is the password"
        );
        let token = s.connect.token.as_ref().unwrap();
        assert_eq!(
            token.scope(),
            "https://ossrdbms-aad.database.windows.net/.default"
        );
        // Another cloud's server gets its cloud's scope, unless one is given.
        let government = "postgres://sales-mcp@contoso.postgres.database.usgovcloudapi.net/sales?sslmode=require";
        let s = Settings::resolve(
            &args(&["--database-url", government, "--workload-identity"]),
            webhook,
        )
        .unwrap();
        assert_eq!(
            s.connect.token.as_ref().unwrap().scope(),
            "https://ossrdbms-aad.database.usgovcloudapi.net/.default"
        );
        let s = Settings::resolve(
            &args(&[
                "--database-url",
                "postgres://sales-mcp@10.1.2.3/sales?sslmode=require",
                "--workload-identity",
                "--database-token-scope",
                "https://ossrdbms-aad.database.chinacloudapi.cn/.default",
            ]),
            webhook,
        )
        .unwrap();
        assert_eq!(
            s.connect.token.as_ref().unwrap().scope(),
            "https://ossrdbms-aad.database.chinacloudapi.cn/.default"
        );
        assert!(
            token.identity().contains("client id 11111111"),
            "{}",
            token.identity()
        );

        let e = Settings::resolve(
            &args(&["--database-url", url, "--workload-identity"]),
            |_| None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("AZURE_CLIENT_ID is not set"), "{e}");
        let plain = "postgres://sales-mcp@db/sales?sslmode=prefer";
        let e = Settings::resolve(
            &args(&["--database-url", plain, "--workload-identity"]),
            webhook,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("sslmode=require or verify-full"),
            "{e}"
        );
        let e = Settings::resolve(
            &args(&[
                "--database-url",
                url,
                "--workload-identity",
                "--password-file",
                "/p",
            ]),
            webhook,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exclusive"), "{e}");
    }
}
