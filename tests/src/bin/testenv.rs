//! `pgmcp-testenv`: the local environment behind `make demo`.
//!
//! Starts the test control plane and PostgreSQL 15 with the sample shop database, creates the
//! `agents` namespace with the admin Secret, applies the password-mode example binding pointed
//! at that database, creates the read-only role the binding names (what the operator will do),
//! starts the MCP server on it, checks that it answers, prints how to connect a client, and
//! keeps everything running until Ctrl-C (or stops at once with `--exit`). Everything it
//! started is stopped when it ends.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pgmcp_tests::daemon::{Daemon, Spec};
use pgmcp_tests::{Postgres, TestEnv, http, paths};

/// Local control plane + PostgreSQL + sample binding for trying pgmcp.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Stop everything right after setting it up (a smoke test of the demo).
    #[arg(long)]
    exit: bool,
}

const NAMESPACE: &str = "agents";
const DATABASE: &str = "shop";
/// The role `manifests/examples/password.yaml` names.
const ROLE: &str = "shop_mcp";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (env, pg) = tokio::try_join!(TestEnv::start(), Postgres::start())?;

    let sample = paths::workspace_root().join("tests/fixtures/shop.sql");
    {
        let admin = pg.connect("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await?;
        let shop = pg.connect(DATABASE).await?;
        shop.batch_execute(&std::fs::read_to_string(&sample)?)
            .await
            .with_context(|| format!("failed to load {}", sample.display()))?;
    }
    println!(
        "loaded the sample database {DATABASE} ({})",
        sample.display()
    );

    kubectl(&env, &["create", "namespace", NAMESPACE])?;
    kubectl(
        &env,
        &[
            "create",
            "secret",
            "generic",
            "pg-admin",
            "-n",
            NAMESPACE,
            "--from-literal=username=postgres",
            &format!("--from-literal=password={}", pg.password()),
        ],
    )?;
    let example = paths::examples_dir().join("password.yaml");
    let binding = std::fs::read_to_string(&example)?.replace(
        "host: postgres.databases.svc.cluster.local",
        &format!("host: {}\n    port: {}", pg.host(), pg.port()),
    );
    let binding_file = env.kubeconfig().with_file_name("shop-binding.yaml");
    std::fs::write(&binding_file, binding)?;
    kubectl(
        &env,
        &[
            "apply",
            "-n",
            NAMESPACE,
            "-f",
            &binding_file.display().to_string(),
        ],
    )?;
    kubectl(&env, &["get", "postgresmcpbindings", "-n", NAMESPACE])?;

    let role_password = pgmcp_tests::postgres::random_password()?;
    {
        let shop = pg.connect(DATABASE).await?;
        shop.batch_execute(&format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{role_password}';
             GRANT CONNECT ON DATABASE {DATABASE} TO {ROLE};
             GRANT USAGE ON SCHEMA public TO {ROLE};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {ROLE};"
        ))
        .await?;
    }
    println!("created the read-only role {ROLE} (SELECT on schema public) as the binding asks");
    let dir = env
        .kubeconfig()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let (server, port) = start_server(&dir, &pg, &role_password).await?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let tools = list_tools(port).await?;
    println!("the MCP server at {url} offers: {}", tools.join(", "));

    print_summary(
        env.kubeconfig(),
        &pg,
        &binding_file,
        &url,
        &dir.join("pgmcp-server.log"),
    );
    if args.exit {
        println!("--exit given: stopping everything");
    } else {
        println!("Press Ctrl-C to stop the control plane and PostgreSQL.");
        tokio::signal::ctrl_c().await?;
        println!("stopping");
    }
    drop(server);
    drop(env);
    drop(pg);
    Ok(())
}

/// Starts pgmcp-server as the binding's role, on a free port, and waits until it is ready.
async fn start_server(dir: &Path, pg: &Postgres, password: &str) -> anyhow::Result<(Daemon, u16)> {
    let bin = std::env::var_os("PGMCP_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::workspace_root().join("target/debug/pgmcp-server"));
    paths::require(
        &bin,
        "build it with `cargo build -p pgmcp-server` (make demo does)",
    )?;
    let password_file = dir.join(format!("{ROLE}.password"));
    std::fs::write(&password_file, password)?;
    let port = paths::free_port()?;
    let spec = Spec::new("pgmcp-server", bin, dir.join("pgmcp-server.log")).args([
        "--database-url".to_owned(),
        format!(
            "postgres://{ROLE}@{}:{}/{DATABASE}?sslmode=disable",
            pg.host(),
            pg.port()
        ),
        "--password-file".to_owned(),
        password_file.display().to_string(),
        "--grant".to_owned(),
        "public".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
    ]);
    let mut server = Daemon::spawn(spec)?;
    http::wait_ready(port, &mut server, Duration::from_secs(30)).await?;
    Ok((server, port))
}

/// Asks the server for its tools the way any MCP client does: initialize, then tools/list.
async fn list_tools(port: u16) -> anyhow::Result<Vec<String>> {
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"pgmcp-demo","version":"1"}}}"#;
    let (_, head, _) = http::request(port, "POST", "/mcp", &headers, init).await?;
    let session =
        http::header(&head, "mcp-session-id").context("the server sent no Mcp-Session-Id")?;
    let with_session = [
        headers[0],
        headers[1],
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    http::request(
        port,
        "POST",
        "/mcp",
        &with_session,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    )
    .await?;
    let (_, _, body) = http::request(
        port,
        "POST",
        "/mcp",
        &with_session,
        r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
    )
    .await?;
    let message = http::jsonrpc_message(&body).context("tools/list gave no JSON-RPC answer")?;
    Ok(message["result"]["tools"]
        .as_array()
        .context("tools/list gave no tools")?
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect())
}

fn kubectl(env: &TestEnv, args: &[&str]) -> anyhow::Result<()> {
    let shown: Vec<&str> = args
        .iter()
        .map(|a| {
            if a.starts_with("--from-literal=password=") {
                "--from-literal=password=…"
            } else {
                a
            }
        })
        .collect();
    println!("$ kubectl {}", shown.join(" "));
    let status = Command::new(paths::kubectl())
        .arg("--kubeconfig")
        .arg(env.kubeconfig())
        .args(args)
        .status()
        .context("failed to run kubectl (make tools)")?;
    anyhow::ensure!(status.success(), "kubectl {} failed", shown.join(" "));
    Ok(())
}

fn print_summary(kubeconfig: &Path, pg: &Postgres, binding: &Path, url: &str, log: &Path) {
    let kubectl = paths::kubectl();
    let cache = paths::cache_dir();
    println!(
        "
pgmcp demo is up.

  MCP server:        {url}   (read-only, tables of schema public; log: {log})
  Kubernetes {version}: export KUBECONFIG={kubeconfig}
                     alias kubectl={kubectl}
  The binding:       kubectl get pgmcp -n {NAMESPACE}; kubectl explain postgresmcpbinding.spec
  Its manifest:      {binding}
  PostgreSQL 15:     PGPASSWORD={password} psql -h {host} -p {port} -U postgres {DATABASE}

Connect a client:
  VS Code (.vscode/mcp.json):  {{ \"servers\": {{ \"shop\": {{ \"type\": \"http\", \"url\": \"{url}\" }} }} }}
  Claude Code:                 claude mcp add --transport http shop {url}
  MCP Inspector (installed):   {inspector} --cli {url} --transport http --method tools/list
  Python MCP SDK (installed):  echo '{{\"calls\":[{{\"tool\":\"search_objects\",\"arguments\":{{\"pattern\":\"customer\"}}}}]}}' \\
                                 | {python} {client} --url {url}

Then ask: \"which tables hold customer information?\", \"top 5 products by quantity\".
The operator is not part of this release yet: here the demo created the role and started the
server the way the binding describes.
",
        version = paths::KUBERNETES_VERSION,
        kubeconfig = kubeconfig.display(),
        kubectl = kubectl.display(),
        binding = binding.display(),
        password = pg.password(),
        host = pg.host(),
        port = pg.port(),
        log = log.display(),
        inspector = cache.join("node/node_modules/.bin/mcp-inspector").display(),
        python = cache.join("venv/mcp/bin/python").display(),
        client = paths::workspace_root().join("tests/interop/mcp_client.py").display(),
    );
}
