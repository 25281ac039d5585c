//! The servers under test: how each is started (HTTP on a free loopback port, or stdio), which
//! of its tools does what pgmcp's `query`, `list_tables` and `describe_table` do, and the
//! process whose memory and CPU the benchmark reads. Servers run as our children and are
//! stopped by us (SIGTERM via kill(1) to the pid we spawned, then SIGKILL).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use super::callers::{self, Entra};
use super::client::{HttpSession, Session, StdioConnection};
use super::otel::{self, Dropped, Unreachable};
use super::seed::Seeded;

/// The tool calls the benchmark makes, the same SQL text for every server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `SELECT abalance FROM pgbench_accounts WHERE aid = N` (pgbench -S's statement).
    PkLookup,
    /// count/sum/avg over 100 consecutive accounts.
    Aggregate,
    /// The tables of schema public (1,000 wide tables + pgbench's 4).
    ListTables,
    /// One wide table's columns, keys, indexes.
    DescribeTable,
}

impl Op {
    pub const ALL: [Op; 4] = [
        Op::PkLookup,
        Op::Aggregate,
        Op::ListTables,
        Op::DescribeTable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Op::PkLookup => "query PK lookup",
            Op::Aggregate => "query aggregate",
            Op::ListTables => "list_tables",
            Op::DescribeTable => "describe_table",
        }
    }

    /// The SQL for `query` ops, with `n` (1-based) picking the account.
    pub fn sql(self, n: u64) -> Option<String> {
        match self {
            Op::PkLookup => Some(format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {n}"
            )),
            Op::Aggregate => Some(format!(
                "SELECT count(*) AS accounts, sum(abalance) AS total, avg(abalance) AS mean \
                 FROM pgbench_accounts WHERE aid BETWEEN {n} AND {}",
                n + 99
            )),
            Op::ListTables | Op::DescribeTable => None,
        }
    }

    /// A word every correct answer contains (checked once per server before measuring).
    pub fn marker(self) -> &'static str {
        match self {
            Op::PkLookup => "abalance",
            Op::Aggregate => "total",
            Op::ListTables => "wide_",
            Op::DescribeTable => "parent_id",
        }
    }
}

/// A server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// pgmcp-server (this repository).
    Pgmcp,
    /// `@toolbox-sdk/server` 1.12.0, `toolbox --prebuilt postgres`.
    Toolbox,
    /// `@modelcontextprotocol/server-postgres` 0.6.2 (stdio only).
    ServerPostgres,
    /// `postgres-mcp` 0.3.0 from crystaldba, `--access-mode restricted` (stdio).
    PostgresMcp,
}

/// How the benchmark talks to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Streamable HTTP, protocol 2025-11-25 with a session per client.
    Http,
    /// Streamable HTTP, the stateless 2026-07-28 revision (pgmcp only).
    HttpStateless,
    Stdio,
}

/// Who the server lets in and whose role its statements run as (authentication is pgmcp's
/// only, over HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// No caller authentication; statements run as the server's login role (every peer).
    Open,
    /// Entra ID bearer tokens (from the fake this process hosts), no caller classes:
    /// statements still run as the server's login role.
    Entra,
    /// Entra ID bearer tokens and one caller class: each statement runs as the class's role
    /// with the caller's claims (super::callers).
    CallerClass,
}

/// Whether, and where to, the server exports OpenTelemetry (pgmcp's only, over HTTP;
/// super::otel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Telemetry {
    /// No `OTEL_*` variable reaches the server: export off (every peer).
    Off,
    /// Traces and audit log records to the OpenTelemetry Collector this process hosts.
    Collector,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` names a loopback port nothing listens on: every export
    /// fails, and the server counts what it drops.
    CollectorDown,
}

/// One server in one transport: a row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub peer: Peer,
    pub transport: Transport,
    pub auth: Auth,
    pub telemetry: Telemetry,
}

impl Target {
    /// `peer` over `transport`, no caller authentication, no OpenTelemetry export.
    pub const fn open(peer: Peer, transport: Transport) -> Target {
        Target {
            peer,
            transport,
            auth: Auth::Open,
            telemetry: Telemetry::Off,
        }
    }

    pub fn name(self) -> String {
        let transport = match self.transport {
            Transport::Http => "HTTP",
            Transport::HttpStateless => "HTTP, stateless 2026-07-28",
            Transport::Stdio => "stdio",
        };
        let auth = match self.auth {
            Auth::Open => "",
            Auth::Entra => ", Entra",
            Auth::CallerClass => ", Entra, caller class",
        };
        let telemetry = match self.telemetry {
            Telemetry::Off => "",
            Telemetry::Collector => ", OpenTelemetry to a collector",
            Telemetry::CollectorDown => ", OpenTelemetry, collector down",
        };
        format!("{} ({transport}{auth}{telemetry})", self.peer.name())
    }

    /// Key for `--targets`: `pgmcp-http`, `pgmcp-http-class`, `pgmcp-http-otel`,
    /// `toolbox-stdio`, …
    pub fn key(self) -> String {
        let transport = match self.transport {
            Transport::Http => "http",
            Transport::HttpStateless => "stateless",
            Transport::Stdio => "stdio",
        };
        let auth = match self.auth {
            Auth::Open => "",
            Auth::Entra => "-entra",
            Auth::CallerClass => "-class",
        };
        let telemetry = match self.telemetry {
            Telemetry::Off => "",
            Telemetry::Collector => "-otel",
            Telemetry::CollectorDown => "-otel-down",
        };
        format!("{}-{transport}{auth}{telemetry}", self.peer.key())
    }

    /// Every target, in the order a full run measures them: the OpenTelemetry targets right
    /// after `pgmcp-http` and the caller-class target right after its Entra twin, so each sees
    /// the same machine as the target it is compared with.
    pub fn all() -> Vec<Target> {
        use Peer::*;
        use Transport::*;
        let pgmcp_http = |auth, telemetry| Target {
            auth,
            telemetry,
            ..Target::open(Pgmcp, Http)
        };
        [
            pgmcp_http(Auth::Open, Telemetry::Off),
            pgmcp_http(Auth::Open, Telemetry::Collector),
            pgmcp_http(Auth::Open, Telemetry::CollectorDown),
            pgmcp_http(Auth::Entra, Telemetry::Off),
            pgmcp_http(Auth::CallerClass, Telemetry::Off),
        ]
        .into_iter()
        .chain(
            [
                (Pgmcp, HttpStateless),
                (Pgmcp, Stdio),
                (Toolbox, Http),
                (Toolbox, Stdio),
                (ServerPostgres, Stdio),
                (PostgresMcp, Stdio),
            ]
            .map(|(peer, transport)| Target::open(peer, transport)),
        )
        .collect()
    }

    pub fn parse(key: &str) -> anyhow::Result<Target> {
        Target::all()
            .into_iter()
            .find(|t| t.key() == key)
            .ok_or_else(|| {
                let keys: Vec<String> = Target::all().into_iter().map(Target::key).collect();
                anyhow::anyhow!("unknown target {key}: expected one of {}", keys.join(", "))
            })
    }
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Pgmcp => "pgmcp",
            Peer::Toolbox => "toolbox 1.12.0",
            Peer::ServerPostgres => "server-postgres 0.6.2",
            Peer::PostgresMcp => "postgres-mcp 0.3.0",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Peer::Pgmcp => "pgmcp",
            Peer::Toolbox => "toolbox",
            Peer::ServerPostgres => "server-postgres",
            Peer::PostgresMcp => "postgres-mcp",
        }
    }

    /// What this server calls each op (for the report's mapping table).
    pub fn tool_name(self, op: Op) -> &'static str {
        match (self, op) {
            (Peer::Pgmcp, Op::PkLookup | Op::Aggregate) => "query {sql}",
            (Peer::Pgmcp, Op::ListTables) => "list_tables {schema: public}",
            (Peer::Pgmcp, Op::DescribeTable) => "describe_table {schema: public, table}",
            (Peer::Toolbox, Op::PkLookup | Op::Aggregate) => "execute_sql {sql}",
            (Peer::Toolbox, Op::ListTables) => {
                "list_tables {table_names: \"\", output_format: simple} (every schema; no schema filter)"
            }
            (Peer::Toolbox, Op::DescribeTable) => {
                "list_tables {table_names: <table>, output_format: detailed}"
            }
            (Peer::ServerPostgres, Op::PkLookup | Op::Aggregate) => "query {sql}",
            (Peer::ServerPostgres, Op::ListTables) => "resources/list (no tool; tables of public)",
            (Peer::ServerPostgres, Op::DescribeTable) => {
                "resources/read postgres://…/<table>/schema (columns and types only)"
            }
            (Peer::PostgresMcp, Op::PkLookup | Op::Aggregate) => "execute_sql {sql}",
            (Peer::PostgresMcp, Op::ListTables) => {
                "list_objects {schema_name: public, object_type: table}"
            }
            (Peer::PostgresMcp, Op::DescribeTable) => {
                "get_object_details {schema_name: public, object_name, object_type: table}"
            }
        }
    }

    /// The JSON-RPC method and params of one call of `op`; `n` picks the account.
    pub fn call(self, op: Op, n: u64, seeded: &Seeded) -> (&'static str, Value) {
        let table = seeded.described_table();
        if let Some(sql) = op.sql(n) {
            let tool = match self {
                Peer::Pgmcp | Peer::ServerPostgres => "query",
                Peer::Toolbox | Peer::PostgresMcp => "execute_sql",
            };
            return (
                "tools/call",
                json!({"name": tool, "arguments": {"sql": sql}}),
            );
        }
        let tool = |name: &str, arguments: Value| {
            ("tools/call", json!({"name": name, "arguments": arguments}))
        };
        match (self, op) {
            (Peer::Pgmcp, Op::ListTables) => tool("list_tables", json!({"schema": "public"})),
            (Peer::Pgmcp, _) => tool(
                "describe_table",
                json!({"schema": "public", "table": table}),
            ),
            (Peer::Toolbox, Op::ListTables) => tool(
                "list_tables",
                json!({"table_names": "", "output_format": "simple"}),
            ),
            (Peer::Toolbox, _) => tool(
                "list_tables",
                json!({"table_names": table, "output_format": "detailed"}),
            ),
            (Peer::ServerPostgres, Op::ListTables) => ("resources/list", json!({})),
            (Peer::ServerPostgres, _) => (
                "resources/read",
                json!({"uri": format!("postgres://{}:{}/{table}/schema", seeded.host, seeded.port)}),
            ),
            (Peer::PostgresMcp, Op::ListTables) => tool(
                "list_objects",
                json!({"schema_name": "public", "object_type": "table"}),
            ),
            (Peer::PostgresMcp, _) => tool(
                "get_object_details",
                json!({"schema_name": "public", "object_name": table, "object_type": "table"}),
            ),
        }
    }
}

/// The discovery steps of the seed questions ("list all tables", "the schema of a table", "all
/// foreign keys", "where is X kept"), each asked once of every server for the bytes of its
/// answer: what a model must read to take the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Question {
    AllTables,
    TableSchema,
    ForeignKeys,
    FindByWord,
}

/// SQL a model writes where a server has no tool for the foreign keys.
const FOREIGN_KEYS_SQL: &str = "SELECT conrelid::regclass AS from_table, confrelid::regclass AS to_table, \
     pg_get_constraintdef(oid) AS definition FROM pg_constraint WHERE contype = 'f'";

/// SQL a model writes where a server has no search: tables and columns whose name or comment
/// has the word.
const FIND_SQL: &str = "SELECT c.relname AS table_name, a.attname AS column_name, \
     col_description(c.oid, a.attnum) AS comment FROM pg_class c \
     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
     WHERE c.relkind = 'r' AND (a.attname ILIKE '%EUR%' OR col_description(c.oid, a.attnum) ILIKE '%EUR%')";

impl Question {
    pub const ALL: [Question; 4] = [
        Question::AllTables,
        Question::TableSchema,
        Question::ForeignKeys,
        Question::FindByWord,
    ];

    /// A word every correct answer contains.
    pub fn marker(self) -> &'static str {
        match self {
            Question::AllTables | Question::ForeignKeys => "wide_",
            Question::TableSchema => "parent_id",
            Question::FindByWord => "amount",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Question::AllTables => "list all tables",
            Question::TableSchema => "schema of one table",
            Question::ForeignKeys => "all foreign keys",
            Question::FindByWord => "columns about amounts in EUR (a word in a comment)",
        }
    }
}

impl Peer {
    /// What taking `question`'s step is called in the report.
    pub fn how(self, question: Question) -> &'static str {
        match (self, question) {
            (Peer::Pgmcp | Peer::Toolbox, Question::AllTables) => "list_tables",
            (Peer::Pgmcp, Question::TableSchema) => "describe_table",
            (Peer::Toolbox, Question::TableSchema) => "list_tables detailed",
            (Peer::ServerPostgres, Question::AllTables) => "resources/list",
            (Peer::ServerPostgres, Question::TableSchema) => "resources/read",
            (Peer::PostgresMcp, Question::AllTables) => "list_objects",
            (Peer::PostgresMcp, Question::TableSchema) => "get_object_details",
            (Peer::Pgmcp, Question::ForeignKeys) => "list_relationships",
            (Peer::Pgmcp, Question::FindByWord) => "search_objects",
            (_, Question::ForeignKeys) => "SQL over pg_constraint",
            (_, Question::FindByWord) => "SQL over pg_attribute",
        }
    }

    /// How this server answers `question`: the JSON-RPC method and params.
    pub fn ask(self, question: Question, seeded: &Seeded) -> (&'static str, Value) {
        let tool = |name: &str, arguments: Value| {
            ("tools/call", json!({"name": name, "arguments": arguments}))
        };
        let sql_tool = match self {
            Peer::Pgmcp | Peer::ServerPostgres => "query",
            Peer::Toolbox | Peer::PostgresMcp => "execute_sql",
        };
        match (self, question) {
            (_, Question::AllTables) => self.call(Op::ListTables, 0, seeded),
            (_, Question::TableSchema) => self.call(Op::DescribeTable, 0, seeded),
            (Peer::Pgmcp, Question::ForeignKeys) => tool("list_relationships", json!({})),
            (Peer::Pgmcp, Question::FindByWord) => {
                tool("search_objects", json!({"pattern": "EUR"}))
            }
            (_, Question::ForeignKeys) => tool(sql_tool, json!({"sql": FOREIGN_KEYS_SQL})),
            (_, Question::FindByWord) => tool(sql_tool, json!({"sql": FIND_SQL})),
        }
    }
}

/// The bytes of text a model reads in `answer` (a tools/call result's text content, a
/// resource's text, or the JSON of a resource list).
pub fn answer_bytes(answer: &Value) -> usize {
    let texts = |key: &str| {
        answer[key].as_array().map(|items| {
            items
                .iter()
                .map(|c| c["text"].as_str().map_or(0, str::len))
                .sum::<usize>()
        })
    };
    texts("content")
        .or_else(|| texts("contents"))
        .unwrap_or_else(|| answer.to_string().len())
}

/// Where the binaries are, the Entra fake the authenticated pgmcp targets trust, and where the
/// OpenTelemetry targets export to.
#[derive(Debug, Clone)]
pub struct Paths {
    pub pgmcp_server: PathBuf,
    /// `.cache/bench` as filled by bench/scripts/install-peers.sh.
    pub peers: PathBuf,
    /// Started when a target with [`Auth::Entra`] or [`Auth::CallerClass`] is to run.
    pub entra: Option<Arc<Entra>>,
    /// Started when a target with [`Telemetry::Collector`] is to run.
    pub collector: Option<Arc<pgmcp_tests::otel::Collector>>,
    /// Bound when a target with [`Telemetry::CollectorDown`] is to run.
    pub unreachable: Option<Arc<Unreachable>>,
}

impl Paths {
    fn toolbox(&self) -> PathBuf {
        self.peers
            .join("node/node_modules/@toolbox-sdk/server-linux-x64/bin/toolbox")
    }
    fn server_postgres(&self) -> PathBuf {
        self.peers
            .join("node/node_modules/@modelcontextprotocol/server-postgres/dist/index.js")
    }
    fn postgres_mcp(&self) -> PathBuf {
        self.peers.join("venv/postgres-mcp/bin/postgres-mcp")
    }
    fn postgres_mcp_python(&self) -> PathBuf {
        self.peers.join("venv/postgres-mcp/bin/python")
    }

    /// The `OTEL_EXPORTER_OTLP_ENDPOINT` of a server with `telemetry` (none: export off).
    fn otlp_endpoint(&self, telemetry: Telemetry) -> anyhow::Result<Option<String>> {
        Ok(match telemetry {
            Telemetry::Off => None,
            Telemetry::Collector => Some(
                self.collector
                    .as_ref()
                    .context("no collector for an OpenTelemetry target")?
                    .endpoint(),
            ),
            Telemetry::CollectorDown => Some(
                self.unreachable
                    .as_ref()
                    .context("no unreachable endpoint for the collector-down target")?
                    .endpoint(),
            ),
        })
    }

    /// Whether `peer` is installed (peers that are not are skipped).
    pub fn installed(&self, peer: Peer) -> bool {
        match peer {
            Peer::Pgmcp => self.pgmcp_server.exists(),
            Peer::Toolbox => self.toolbox().exists(),
            Peer::ServerPostgres => self.server_postgres().exists(),
            Peer::PostgresMcp => self.postgres_mcp().exists(),
        }
    }

    /// The version the server reports or was installed as, for the report.
    pub fn version(&self, peer: Peer) -> String {
        let run = |program: &Path, args: &[&str]| {
            std::process::Command::new(program)
                .args(args)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        match peer {
            Peer::Pgmcp => run(&self.pgmcp_server, &["--version"]),
            Peer::Toolbox => run(&self.toolbox(), &["--version"]),
            Peer::ServerPostgres => format!(
                "@modelcontextprotocol/server-postgres 0.6.2 on node {}",
                run(Path::new("node"), &["--version"])
            ),
            Peer::PostgresMcp => format!(
                "postgres-mcp 0.3.0 on {}",
                run(&self.postgres_mcp_python(), &["--version"])
            ),
        }
    }
}

/// A running server: its process and how to open sessions.
#[derive(Debug)]
pub struct Running {
    pub target: Target,
    pub pid: u32,
    child: Child,
    addr: Option<SocketAddr>,
    stdio: Option<Arc<StdioConnection>>,
    /// Process spawn → first answered tools/list.
    pub start_to_ready: Duration,
    pub log: PathBuf,
    /// Where each session's bearer token comes from (authenticated targets).
    entra: Option<Arc<Entra>>,
}

impl Running {
    /// Starts `target` against `seeded` and waits until it answers tools/list (60 s at most).
    pub async fn start(
        target: Target,
        paths: &Paths,
        seeded: &Seeded,
        dir: &Path,
    ) -> anyhow::Result<Running> {
        let entra = match target.auth {
            Auth::Open => None,
            Auth::Entra | Auth::CallerClass => Some(
                paths
                    .entra
                    .clone()
                    .context("no Entra fake for an authenticated target")?,
            ),
        };
        let port = pgmcp_tests::paths::free_port()?;
        let log = dir.join(format!("{}.log", target.key()));
        let mut command = command(target, paths, seeded, port, dir)?;
        command
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        match target.transport {
            Transport::Http | Transport::HttpStateless => {
                command.stdin(Stdio::null()).stdout(std::fs::File::create(
                    dir.join(format!("{}.stdout", target.key())),
                )?);
            }
            Transport::Stdio => {
                command.stdin(Stdio::piped()).stdout(Stdio::piped());
            }
        }
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("failed to start {}", target.name()))?;
        let pid = child.id().context("the server exited at once")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let pipes = child.stdin.take().zip(child.stdout.take());
        let token = entra.as_ref().map(|e| e.token()).transpose()?;
        let ready = async move {
            match target.transport {
                Transport::Http | Transport::HttpStateless => {
                    let stateless = target.transport == Transport::HttpStateless;
                    let mut session = loop {
                        let opened = if stateless {
                            HttpSession::open_stateless(addr).await
                        } else {
                            HttpSession::open_as(addr, token.as_deref()).await
                        };
                        match opened {
                            Ok(session) => break session,
                            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                        }
                    };
                    session
                        .request("tools/list", &json!({}))
                        .await
                        .map_err(|e| anyhow::anyhow!("tools/list failed: {e}"))?;
                    Ok::<_, anyhow::Error>(None)
                }
                Transport::Stdio => {
                    let (stdin, stdout) = pipes.context("no stdio pipes")?;
                    let connection = StdioConnection::new(stdin, stdout);
                    connection.initialize().await?;
                    connection
                        .request("tools/list", &json!({}))
                        .await
                        .map_err(|e| anyhow::anyhow!("tools/list failed: {e}"))?;
                    Ok(Some(connection))
                }
            }
        };
        let stdio = tokio::select! {
            ready = tokio::time::timeout(Duration::from_secs(60), ready) => match ready {
                Ok(Ok(stdio)) => stdio,
                Ok(Err(err)) => anyhow::bail!("{} did not start: {err:#}\n{}", target.name(), tail(&log)),
                Err(_) => anyhow::bail!("{} did not answer tools/list within 60s\n{}", target.name(), tail(&log)),
            },
            status = child.wait() => anyhow::bail!("{} exited ({:?}) before it was ready:\n{}", target.name(), status, tail(&log)),
        };
        let start_to_ready = spawned.elapsed();
        Ok(Running {
            target,
            pid,
            child,
            addr: (target.transport != Transport::Stdio).then_some(addr),
            stdio,
            start_to_ready,
            log,
            entra,
        })
    }

    /// A new session: a new connection and MCP session over HTTP (with a fresh bearer token
    /// when the server authenticates callers), the shared one over stdio.
    pub async fn session(&self) -> anyhow::Result<Session> {
        match (&self.stdio, self.addr) {
            (Some(stdio), _) => Ok(Session::Stdio(stdio.clone())),
            (None, Some(addr)) if self.target.transport == Transport::HttpStateless => Ok(
                Session::Http(Box::new(HttpSession::open_stateless(addr).await?)),
            ),
            (None, Some(addr)) => {
                let token = self.entra.as_ref().map(|e| e.token()).transpose()?;
                Ok(Session::Http(Box::new(
                    HttpSession::open_as(addr, token.as_deref()).await?,
                )))
            }
            (None, None) => anyhow::bail!("no transport"),
        }
    }

    /// What the server has not exported so far, from its `/metrics` (`None`: export is off).
    pub async fn telemetry_dropped(&self) -> anyhow::Result<Option<Dropped>> {
        if self.target.telemetry == Telemetry::Off {
            return Ok(None);
        }
        let addr = self
            .addr
            .context("OpenTelemetry export is measured over HTTP")?;
        otel::dropped(addr.port()).await.map(Some)
    }

    /// SIGTERM (through kill(1), to the pid we spawned), up to 5 s, then SIGKILL.
    pub async fn stop(mut self) {
        self.stdio.take(); // closes stdin once the writer task sees no more senders
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn tail(log: &Path) -> String {
    pgmcp_tests::daemon::log_tail(log, 20)
}

fn command(
    target: Target,
    paths: &Paths,
    seeded: &Seeded,
    port: u16,
    dir: &Path,
) -> anyhow::Result<Command> {
    let http = target.transport != Transport::Stdio;
    anyhow::ensure!(
        target.telemetry == Telemetry::Off || (target.peer == Peer::Pgmcp && http),
        "OpenTelemetry export is measured for pgmcp over HTTP only"
    );
    let mut command = match target.peer {
        Peer::Pgmcp => {
            let mut c = Command::new(&paths.pgmcp_server);
            if target.auth == Auth::CallerClass {
                // As the operator runs it: the NOINHERIT login role, the class in the config.
                let password_file = dir.join("login-password");
                std::fs::write(&password_file, &seeded.login_password)?;
                c.arg("--database-url")
                    .arg(callers::login_url(seeded))
                    .arg("--password-file")
                    .arg(&password_file)
                    .arg("--config")
                    .arg(callers::class_config(dir)?);
            } else {
                let password_file = dir.join("reader-password");
                std::fs::write(&password_file, &seeded.reader_password)?;
                c.arg("--database-url")
                    .arg(format!(
                        "postgres://{}@{}:{}/{}?sslmode=disable",
                        super::seed::READER,
                        seeded.host,
                        seeded.port,
                        super::seed::DATABASE
                    ))
                    .arg("--password-file")
                    .arg(&password_file)
                    .args(["--grant", "public"]);
            }
            if target.auth != Auth::Open {
                anyhow::ensure!(http, "caller authentication is measured over HTTP");
                let entra = paths
                    .entra
                    .as_ref()
                    .context("no Entra fake for an authenticated target")?;
                let (args, env) = entra.server_args();
                c.args(args).envs(env);
            }
            if http {
                c.args(["--listen", &format!("127.0.0.1:{port}")]);
            } else {
                c.arg("--stdio");
            }
            c
        }
        Peer::Toolbox => {
            let mut c = Command::new(paths.toolbox());
            c.args(["--prebuilt", "postgres", "--disable-version-check"])
                .args(["--log-level", "WARN"])
                .env("POSTGRES_HOST", &seeded.host)
                .env("POSTGRES_PORT", seeded.port.to_string())
                .env("POSTGRES_DATABASE", super::seed::DATABASE)
                .env("POSTGRES_USER", super::seed::READER)
                .env("POSTGRES_PASSWORD", &seeded.reader_password);
            if http {
                c.args(["--address", "127.0.0.1", "--port", &port.to_string()]);
            } else {
                c.arg("--stdio");
            }
            c
        }
        Peer::ServerPostgres => {
            anyhow::ensure!(!http, "server-postgres serves stdio only");
            let mut c = Command::new("node");
            c.arg(paths.server_postgres()).arg(seeded.url());
            c
        }
        Peer::PostgresMcp => {
            anyhow::ensure!(!http, "postgres-mcp is benchmarked over stdio");
            let mut c = Command::new(paths.postgres_mcp_python());
            c.arg(paths.postgres_mcp())
                .args(["--access-mode", "restricted", "--transport", "stdio"])
                .arg(seeded.url());
            c
        }
    };
    // Whether a server exports is the target's choice, not this process's environment's: no
    // `OTEL_*` variable of ours reaches any server, and only the OpenTelemetry targets get an
    // endpoint.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    if let Some(endpoint) = paths.otlp_endpoint(target.telemetry)? {
        command.env(otel::ENDPOINT, endpoint);
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_key_parses_back_to_its_target() {
        let all = Target::all();
        for target in &all {
            assert_eq!(Target::parse(&target.key()).expect("key"), *target);
        }
        let mut keys: Vec<String> = all.iter().map(|t| t.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all.len(), "{keys:?}");
    }

    #[test]
    fn the_export_targets_run_right_after_pgmcp_http() {
        let keys: Vec<String> = Target::all().into_iter().map(Target::key).collect();
        assert_eq!(
            keys[..3],
            ["pgmcp-http", "pgmcp-http-otel", "pgmcp-http-otel-down"]
        );
        assert!(Target::parse("toolbox-http-otel").is_err());
    }
}
