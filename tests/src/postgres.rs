//! A real PostgreSQL for tests: initdb into a temporary directory, the server on a free
//! loopback port (TCP only, SCRAM passwords, no fsync), run as the `postgres` user when the
//! tests run as root. Each test gets a database of its own.
//!
//! Which PostgreSQL: Debian's 15 unless `PGMCP_POSTGRES_VERSION` names another major (14 to 18,
//! see [`paths::postgres_build`]). Once a server runs, every failing test of the binary names
//! it after its panic message.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::daemon::{Daemon, Spec};
use crate::paths;

/// Azure Database for PostgreSQL's principal functions, as far as the operator can tell: same
/// names, same signatures; they create the role and record what they were given in
/// `fixture.pgaadauth_principals`. Install it in the database the operator calls them in, and
/// let the Entra administrator call them ([`entra_admin_sql`]): like Azure's, they are not
/// PUBLIC's to call (they run as a superuser, and the read-only probe would rightly
/// name them).
///
/// Since PostgreSQL 16 only a role with ADMIN OPTION on a role may comment on, alter or drop
/// it, and CREATE ROLE gives that to the CREATEROLE user who ran it. Azure's Entra administrator
/// may drop the principals it created (`DROP ROLE` is how Azure's documentation removes one), so
/// on 16 and later the functions give the caller ADMIN OPTION on the new role, without its
/// privileges, as CREATE ROLE would. `UPDATE fixture.options SET creator_admin = false` makes a
/// server that does not.
pub const PGAADAUTH_FIXTURE: &str = r#"
CREATE SCHEMA fixture;
CREATE TABLE fixture.pgaadauth_principals (rolname text PRIMARY KEY, object_id text, object_type text);
CREATE TABLE fixture.options (creator_admin boolean NOT NULL);
INSERT INTO fixture.options VALUES (true);
CREATE FUNCTION fixture.create_principal(rolename text, objectid text, objecttype text)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('CREATE ROLE %I LOGIN', rolename);
  IF current_setting('server_version_num')::int >= 160000 AND (SELECT creator_admin FROM fixture.options) THEN
    EXECUTE format('GRANT %I TO %I WITH ADMIN TRUE, INHERIT FALSE, SET FALSE', rolename, session_user);
  END IF;
  INSERT INTO fixture.pgaadauth_principals VALUES (rolename, objectid, objecttype);
  RETURN format('Created role for "%s"', rolename);
END $$;
REVOKE EXECUTE ON FUNCTION fixture.create_principal(text, text, text) FROM PUBLIC;
CREATE FUNCTION pgaadauth_create_principal(rolename text, isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE sql SECURITY DEFINER
AS $$ SELECT fixture.create_principal(rolename, NULL, 'user') $$;
CREATE FUNCTION pgaadauth_create_principal_with_oid(rolename text, objectid text, objecttype text, isadmin boolean, ismfa boolean)
RETURNS text LANGUAGE sql SECURITY DEFINER
AS $$ SELECT fixture.create_principal(rolename, objectid, objecttype) $$;
REVOKE EXECUTE ON FUNCTION pgaadauth_create_principal(text, boolean, boolean),
  pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) FROM PUBLIC;
"#;

/// Makes `admin` the Entra administrator of a database with [`PGAADAUTH_FIXTURE`] installed:
/// CREATEROLE like azure_pg_admin's members, allowed to call the fixture's functions, owner of
/// `public.sales` (two rows). Run it as the superuser.
pub fn entra_admin_sql(admin: &str) -> String {
    let admin = postgres_protocol::escape::escape_identifier(admin);
    format!(
        "CREATE ROLE {admin} LOGIN CREATEROLE;
         GRANT EXECUTE ON FUNCTION pgaadauth_create_principal(text, boolean, boolean),
           pgaadauth_create_principal_with_oid(text, text, text, boolean, boolean) TO {admin};
         GRANT CREATE ON SCHEMA public TO {admin};
         SET ROLE {admin};
         CREATE TABLE public.sales (id int, amount numeric);
         INSERT INTO public.sales VALUES (1, 9.5), (2, 12);
         RESET ROLE;"
    )
}

/// Name of the superuser created by initdb.
pub const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server. Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct Postgres {
    host: String,
    port: u16,
    password: String,
    version: String,
    major: u32,
    ca_cert: std::path::PathBuf,
    daemon: std::sync::Mutex<Option<Daemon>>,
    /// How to start the server again after [`Postgres::stop`].
    spec: Spec,
    /// Removed on drop when the daemon does not remove it itself (restartable servers).
    own_dir: Option<std::path::PathBuf>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut daemon) = self.daemon.lock()
            && let Some(mut daemon) = daemon.take()
        {
            daemon.stop();
        }
        if let Some(dir) = &self.own_dir
            && std::env::var_os("PGMCP_KEEP_TEST_DIRS").is_none()
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Postgres {
    /// The server shared by all tests of this test binary, started on first use.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();
        let pg = SHARED.get_or_init(|| {
            crate::run_detached("pgmcp-postgres-start", Postgres::start)
                .map_err(|e| format!("{e:#}"))
        });
        match pg {
            Ok(pg) => pg,
            Err(err) => panic!("failed to start the test PostgreSQL: {err}"),
        }
    }

    /// Initialises and starts a new server.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(false, false).await
    }

    /// A server the test node's pods reach: it listens on the node's address too and lets the
    /// pods' subnet sign in (`crate::node`). Pods use [`Postgres::host_for_pods`].
    pub async fn start_for_node() -> anyhow::Result<Self> {
        Self::start_with(true, true).await
    }

    /// A server of its own that a test may [`stop`](Postgres::stop) and
    /// [`restart`](Postgres::restart) (its data survives until it is dropped).
    pub async fn start_restartable() -> anyhow::Result<Self> {
        Self::start_with(true, false).await
    }

    /// Stops the server (fast shutdown: clients are disconnected).
    pub fn stop(&self) {
        if let Ok(mut daemon) = self.daemon.lock()
            && let Some(mut daemon) = daemon.take()
        {
            daemon.stop();
        }
    }

    /// Starts a stopped server again on the same port with the same data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.own_dir.is_some(),
            "only servers from Postgres::start_restartable can restart"
        );
        let mut daemon = Daemon::spawn(self.spec.clone())?;
        wait_accepting(self.port, &self.password, &mut daemon, Instant::now()).await?;
        if let Ok(mut slot) = self.daemon.lock() {
            *slot = Some(daemon);
        }
        Ok(())
    }

    async fn start_with(restartable: bool, for_node: bool) -> anyhow::Result<Self> {
        let started = Instant::now();
        let build = paths::postgres_build()?;
        let bindir = &build.bindir;
        let postgres_bin = bindir.join("postgres");
        paths::require(&postgres_bin, &build.install_hint)?;
        let version = output(Command::new(&postgres_bin).arg("--version"))?;
        // "postgres (PostgreSQL) 18.4", "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        anyhow::ensure!(
            version
                .split_whitespace()
                .nth(2)
                .is_some_and(|v| v.starts_with(&format!("{}.", build.major))),
            "{} is not PostgreSQL {}: {version}",
            postgres_bin.display(),
            build.major
        );
        report_on_failure(&format!("{} in {}", version.trim(), bindir.display()));

        let dir = tempfile::Builder::new()
            .prefix("pgmcp-postgres-")
            .tempdir()?
            .keep();
        let run_as = running_as_root()?.then(|| SUPERUSER.to_owned());
        if let Some(user) = &run_as {
            output(Command::new("chown").arg(format!("{user}:")).arg(&dir))?;
        }
        let password = random_password()?;
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, &password)?;
        if let Some(user) = &run_as {
            output(Command::new("chown").arg(format!("{user}:")).arg(&pwfile))?;
        }
        let data = dir.join("data");
        let mut initdb = as_user(run_as.as_deref(), &bindir.join("initdb"));
        initdb
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                SUPERUSER,
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        output(&mut initdb).context("initdb failed")?;
        std::fs::remove_file(&pwfile)?;
        let mut listen = "127.0.0.1".to_owned();
        if for_node {
            listen.push_str(&format!(",{}", crate::node::NODE_IP));
            let hba = data.join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba)?;
            rules.push_str(&format!(
                "host all all {} scram-sha-256\n",
                crate::node::POD_SUBNET
            ));
            std::fs::write(&hba, rules)?;
        }

        // TLS like a managed server (plain connections still work, for sslmode=disable).
        let tls = crate::pki::ServerTls::write(&dir.join("tls"), "pgmcp-test-postgres")?;
        std::fs::set_permissions(
            &tls.key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        if let Some(user) = &run_as {
            output(
                Command::new("chown")
                    .arg("-R")
                    .arg(format!("{user}:"))
                    .arg(dir.join("tls")),
            )?;
        }
        let port = paths::free_port()?;
        let mut spec = Spec::new("postgres", postgres_bin, dir.join("postgres.log")).args([
            "-D".to_owned(),
            data.display().to_string(),
            "-p".to_owned(),
            port.to_string(),
            "-c".to_owned(),
            format!("listen_addresses={listen}"),
            "-c".to_owned(),
            "unix_socket_directories=".to_owned(),
            "-c".to_owned(),
            "fsync=off".to_owned(),
            "-c".to_owned(),
            "full_page_writes=off".to_owned(),
            "-c".to_owned(),
            "synchronous_commit=off".to_owned(),
            "-c".to_owned(),
            "max_connections=300".to_owned(),
            "-c".to_owned(),
            "ssl=on".to_owned(),
            "-c".to_owned(),
            format!("ssl_cert_file={}", tls.cert.display()),
            "-c".to_owned(),
            format!("ssl_key_file={}", tls.key.display()),
        ]);
        spec.stop_signal = "INT"; // fast shutdown: do not wait for clients
        if !restartable {
            spec.cleanup_dir = Some(dir.clone());
        }
        spec.run_as = run_as;
        // The log lives in the directory, created by us; make it writable for the server too.
        let mut daemon = Daemon::spawn(spec.clone())?;
        wait_accepting(port, &password, &mut daemon, started).await?;
        let pg = Postgres {
            host: "127.0.0.1".to_owned(),
            port,
            password,
            version: version.trim().to_owned(),
            major: build.major,
            ca_cert: tls.ca_cert.clone(),
            daemon: std::sync::Mutex::new(Some(daemon)),
            spec,
            own_dir: restartable.then(|| dir.clone()),
        };
        if pg.major <= 14 {
            // PostgreSQL 14 lets PUBLIC create objects in schema public, so every role could
            // write there; 15 stopped, and so does every database the tests create, as users of
            // 14 are told to (docs/operations.md). Tests that need PUBLIC's CREATE grant it themselves.
            pg.connect("template1")
                .await?
                .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
                .await
                .context("failed to revoke PUBLIC's CREATE on schema public in template1")?;
        }
        eprintln!(
            "test PostgreSQL ({}) ready on 127.0.0.1:{port} in {:.1}s",
            pg.version,
            started.elapsed().as_secs_f64()
        );
        Ok(pg)
    }

    /// The address pods of the test node use ([`Postgres::start_for_node`]).
    pub fn host_for_pods(&self) -> &str {
        crate::node::NODE_IP
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Password of the superuser [`SUPERUSER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA that signed the server's TLS certificate (for `localhost` and `127.0.0.1`).
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// `postgres (PostgreSQL) 18.4`, as `postgres --version` says.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The major version: 14 to 18.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// Connects as the superuser to `database`; the connection runs on the caller's runtime.
    pub async fn connect(&self, database: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&connect_config(
            &self.host,
            self.port,
            SUPERUSER,
            &self.password,
            database,
        ))
        .await
    }

    /// Creates a new, empty database named after the test.
    /// Creates database `name` (on a server of the test's own, where names cannot collide), runs
    /// `setup` in it as the superuser, and returns that connection.
    pub async fn database_with(
        &self,
        name: &str,
        setup: &str,
    ) -> anyhow::Result<tokio_postgres::Client> {
        self.connect("postgres")
            .await?
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("failed to create database {name}"))?;
        let client = self.connect(name).await?;
        client
            .batch_execute(setup)
            .await
            .with_context(|| format!("failed to set up database {name}"))?;
        Ok(client)
    }

    pub async fn create_database(&'static self, test: &str) -> anyhow::Result<TestDatabase> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}_{}_{n}", crate::slug(test, '_', 40), std::process::id());
        let admin = self.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("failed to create database {name}"))?;
        Ok(TestDatabase { name, server: self })
    }
}

/// A database of one test on the shared server.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    server: &'static Postgres,
}

impl TestDatabase {
    /// Loads the sample shop (tests/fixtures/shop.sql: customers, products, orders, a view)
    /// as the server's superuser.
    pub async fn load_shop(&self) -> anyhow::Result<()> {
        let path = paths::workspace_root().join("tests/fixtures/shop.sql");
        let shop = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        self.connect()
            .await?
            .batch_execute(&shop)
            .await
            .with_context(|| format!("failed to load {} into {}", path.display(), self.name))
    }

    pub fn server(&self) -> &'static Postgres {
        self.server
    }

    /// Connects as the superuser.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.server.connect(&self.name).await
    }

    /// Connects as `user` with `password`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<tokio_postgres::Client> {
        connect(&connect_config(
            &self.server.host,
            self.server.port,
            user,
            password,
            &self.name,
        ))
        .await
    }
}

/// From now on, a panic (a failing test) of this process ends with a line naming the PostgreSQL
/// under test, so a failure in the matrix says on which version it failed. Once per process.
fn report_on_failure(postgres: &str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let postgres = postgres.to_owned();
    ONCE.call_once(move || {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            eprintln!("(the test PostgreSQL is {postgres})");
        }));
    });
}

/// Waits until the server accepts a superuser connection (up to a minute from `started`).
async fn wait_accepting(
    port: u16,
    password: &str,
    daemon: &mut Daemon,
    started: Instant,
) -> anyhow::Result<()> {
    loop {
        let config = connect_config("127.0.0.1", port, SUPERUSER, password, "postgres");
        match config.connect(tokio_postgres::NoTls).await {
            Ok(_) => return Ok(()),
            Err(err) => {
                if daemon.exited() || started.elapsed() > Duration::from_secs(60) {
                    anyhow::bail!(
                        "PostgreSQL did not accept connections ({err}):\n{}",
                        daemon.log_tail(30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn connect_config(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    dbname: &str,
) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(dbname)
        .application_name("pgmcp-tests")
        .connect_timeout(Duration::from_secs(5));
    config
}

async fn connect(config: &tokio_postgres::Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("test PostgreSQL connection ended: {err}");
        }
    });
    Ok(client)
}

fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Whether this process runs as root (then PostgreSQL, and pgbouncer in the benchmark, which
/// both refuse root, run as `postgres`).
pub fn running_as_root() -> anyhow::Result<bool> {
    Ok(output(Command::new("id").arg("-u"))?.trim() == "0")
}

/// 36 random hex characters.
pub fn random_password() -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("failed to read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn output(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .output()
        .with_context(|| format!("failed to run {command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
