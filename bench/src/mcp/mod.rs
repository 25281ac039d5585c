//! `make bench-mcp`: pgmcp-server against its peers and against pgbench (directly and through
//! pgbouncer) on the same seeded PostgreSQL — throughput, latency, errors, the server's memory,
//! CPU per call and start-up time, and what caller classes and OpenTelemetry export cost — then
//! a soak with a PostgreSQL restart, written to BENCHMARKS.md. `--smoke` runs a few seconds of
//! the same code (part of `make test`) and checks the numbers are real.
//!
//! Every server, pgbouncer and PostgreSQL are children of this process and stopped by it.

pub mod callers;
pub mod client;
pub mod load;
pub mod otel;
pub mod pgbench;
pub mod pgbouncer;
pub mod procfs;
pub mod report;
pub mod seed;
pub mod servers;
pub mod soak;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use pgmcp_tests::Postgres;

use load::Measured;
use servers::{Auth, Op, Paths, Peer, Running, Target, Telemetry, Transport};

/// `pgmcp-bench-mcp` arguments.
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "Benchmark pgmcp-server against other PostgreSQL MCP servers and pgbench")]
pub struct Options {
    /// A few seconds in total: small data, pgmcp only (unless --targets), short runs, and
    /// checks that every tool answered (and, with the collector down, that the server counted
    /// what it could not export); the report goes to target/bench-mcp-smoke.md.
    #[arg(long)]
    pub smoke: bool,
    /// Servers to run (comma-separated): pgmcp-http, pgmcp-http-otel (OpenTelemetry export to
    /// a collector this process starts), pgmcp-http-otel-down (export to a loopback port
    /// nothing listens on), pgmcp-http-entra (Entra caller authentication), pgmcp-http-class
    /// (Entra and a caller class), pgmcp-stateless, pgmcp-stdio, toolbox-http, toolbox-stdio,
    /// server-postgres-stdio, postgres-mcp-stdio. Default: all that are installed.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Concurrent sessions (and pgbench clients), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,
    /// Measured seconds per tool and concurrency.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// pgbench scale (100,000 accounts each).
    #[arg(long, default_value_t = 10)]
    pub scale: u32,
    /// Wide tables in schema public for the discovery tools.
    #[arg(long, default_value_t = 1000)]
    pub tables: u32,
    /// Soak seconds (0: no soak).
    #[arg(long, default_value_t = 60.0)]
    pub soak: f64,
    /// Soak sessions.
    #[arg(long, default_value_t = 64)]
    pub soak_sessions: usize,
    /// Report file; only the text between `<!-- mcp:begin -->` and `<!-- mcp:end -->` changes.
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// pgmcp-server binary (default $PGMCP_SERVER_BIN, else target/release/pgmcp-server).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Where bench/scripts/install-peers.sh installed the peers (default .cache/bench).
    #[arg(long)]
    pub peers_dir: Option<PathBuf>,
    /// The section of the report file to write (`<!-- NAME:begin -->` … `<!-- NAME:end -->`):
    /// `mcp` for the main run, another name for a run on another data set (make bench-mcp's
    /// second pass, on 10,000 tables, writes `mcp-large`).
    #[arg(long, default_value = "mcp")]
    pub section: String,
    /// Print each target's tools/list and exit (to check the tool mapping).
    #[arg(long)]
    pub show_tools: bool,
}

impl Options {
    /// Smoke mode's small defaults, where the caller kept the full ones.
    fn effective(mut self) -> Self {
        if self.smoke {
            let full = <Self as clap::Parser>::parse_from(["x"]);
            if self.clients == full.clients {
                self.clients = vec![4];
            }
            if self.duration == full.duration {
                self.duration = 0.5;
            }
            if self.warmup == full.warmup {
                self.warmup = 0.2;
            }
            if self.scale == full.scale {
                self.scale = 1;
            }
            if self.tables == full.tables {
                self.tables = 100;
            }
            if self.soak == full.soak {
                self.soak = 6.0;
            }
            if self.soak_sessions == full.soak_sessions {
                self.soak_sessions = 8;
            }
            if self.targets.is_empty() {
                self.targets = vec![
                    "pgmcp-http".into(),
                    "pgmcp-http-otel-down".into(),
                    "pgmcp-http-class".into(),
                    "pgmcp-stateless".into(),
                    "pgmcp-stdio".into(),
                ];
            }
        }
        self
    }
}

/// One target at one concurrency.
#[derive(Debug, Clone)]
pub struct LevelRun {
    pub clients: usize,
    pub start_to_ready: Duration,
    pub idle_rss_kib: u64,
    pub peak_rss_kib: u64,
    pub ops: Vec<(Op, Measured)>,
    /// What the server had not exported at the end of the run (OpenTelemetry targets only;
    /// warm-up and the answer check included).
    pub telemetry_dropped: Option<otel::Dropped>,
}

/// One target over all concurrencies.
#[derive(Debug, Clone)]
pub struct TargetRun {
    pub target: Target,
    pub version: String,
    pub levels: Vec<LevelRun>,
    /// Why it stopped early, if it did.
    pub failure: Option<String>,
    /// Ops whose first answer lacked the expected content.
    pub wrong_answers: Vec<(Op, String)>,
    /// Bytes of text of each seed question's discovery step (asked once, at the first client
    /// count), or why it failed.
    pub answers: Vec<(servers::Question, Result<usize, String>)>,
}

impl TargetRun {
    pub fn measured(&self, clients: usize, op: Op) -> Option<&Measured> {
        self.levels
            .iter()
            .find(|l| l.clients == clients)?
            .ops
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, m)| m)
    }
}

/// Everything the report needs.
#[derive(Debug, Clone)]
pub struct Results {
    pub options: Options,
    pub command: String,
    pub machine: String,
    pub seeded: seed::Seeded,
    pub pgbench_version: String,
    pub pgbench: Vec<pgbench::PgbenchResult>,
    /// `PgBouncer 1.18.0`.
    pub pgbouncer_version: String,
    /// The same pgbench runs through pgbouncer (the one-hop limit), one per client count.
    pub pgbouncer: Vec<pgbench::PgbenchResult>,
    pub targets: Vec<TargetRun>,
    pub soak: Option<soak::SoakResult>,
    pub skipped: Vec<String>,
}

/// Runs the benchmark and writes the report.
pub async fn main(options: Options) -> anyhow::Result<()> {
    let command = std::iter::once("pgmcp-bench-mcp".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let options = options.effective();
    let root = pgmcp_tests::paths::workspace_root();
    let mut paths = Paths {
        pgmcp_server: options
            .server_bin
            .clone()
            .or_else(|| std::env::var_os("PGMCP_SERVER_BIN").map(PathBuf::from))
            .unwrap_or_else(|| root.join("target/release/pgmcp-server")),
        peers: options
            .peers_dir
            .clone()
            .unwrap_or_else(|| pgmcp_tests::paths::cache_dir().join("bench")),
        entra: None,
        collector: None,
        unreachable: None,
    };
    anyhow::ensure!(
        paths.pgmcp_server.exists(),
        "{} not found: `cargo build --release -p pgmcp-server` (make bench-mcp does) or pass --server-bin",
        paths.pgmcp_server.display()
    );
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    let wanted: Vec<Target> = if options.targets.is_empty() {
        Target::all()
    } else {
        options
            .targets
            .iter()
            .map(|k| Target::parse(k))
            .collect::<anyhow::Result<_>>()?
    };
    for target in wanted {
        if !paths.installed(target.peer) {
            skipped.push(format!(
                "{}: not installed (make bench-peers)",
                target.name()
            ));
        } else if target.telemetry == Telemetry::Collector && !otel::collector_built() {
            skipped.push(format!(
                "{}: no OpenTelemetry Collector binary (make otelcol)",
                target.name()
            ));
        } else {
            targets.push(target);
        }
    }

    if targets.iter().any(|t| t.auth != Auth::Open) {
        paths.entra = Some(Arc::new(callers::Entra::start().await?));
    }
    if targets.iter().any(|t| t.telemetry == Telemetry::Collector) {
        paths.collector = Some(Arc::new(
            pgmcp_tests::otel::Collector::start_for_load().await?,
        ));
    }
    if targets
        .iter()
        .any(|t| t.telemetry == Telemetry::CollectorDown)
    {
        paths.unreachable = Some(Arc::new(otel::Unreachable::bind()?));
    }

    let scratch = tempfile::Builder::new()
        .prefix("pgmcp-bench-mcp-")
        .tempdir()?;
    let dir = scratch.path().to_path_buf();
    let postgres = Arc::new(Postgres::start_restartable().await?);
    let seeded = Arc::new(seed::seed(&postgres, options.scale, options.tables).await?);

    if options.show_tools {
        for target in &targets {
            let running = Running::start(*target, &paths, &seeded, &dir).await?;
            let mut session = running.session().await?;
            let tools = session
                .request("tools/list", &serde_json::json!({}))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "== {}\n{}",
                target.name(),
                serde_json::to_string_pretty(&tools)?
            );
            running.stop().await;
        }
        return Ok(());
    }

    let duration = Duration::from_secs_f64(options.duration);
    let warmup = Duration::from_secs_f64(options.warmup);
    let pgbench_duration = duration.max(Duration::from_secs(1));
    let mut pgbench_results = Vec::new();
    let mut pgbouncer_results = Vec::new();
    let pool = pgbouncer::pgmcp_pool_size();
    let largest = options.clients.iter().copied().max().unwrap_or(1);
    let pooler = pgbouncer::Pgbouncer::start(&seeded, largest.max(pool)).await?;
    let through_pooler = |clients, duration| {
        pgbench::run(&seeded, pooler.port(), clients, duration)
            .with_context(|| format!("through pgbouncer; its log:\n{}", pooler.log_tail()))
    };
    pgbench::run(&seeded, seeded.port, 1, Duration::from_secs(1))?; // warm the cache
    // Open every server connection of the pooler before measuring, as pgmcp's warm-up does.
    through_pooler(pool, Duration::from_secs(1))?;
    // Direct and pooled back to back per client count, so both see the same machine.
    for &clients in &options.clients {
        let direct = pgbench::run(&seeded, seeded.port, clients, pgbench_duration)?;
        let pooled = through_pooler(clients, pgbench_duration)?;
        eprintln!(
            "pgbench -S -c {clients}: {:.0} tps; through pgbouncer: {:.0} tps",
            direct.tps, pooled.tps
        );
        pgbench_results.push(direct);
        pgbouncer_results.push(pooled);
    }
    drop(pooler);

    let mut runs = Vec::new();
    for target in targets {
        let run = run_target(
            target,
            &paths,
            &seeded,
            &dir,
            &options.clients,
            warmup,
            duration,
        )
        .await;
        runs.push(run);
    }
    // Stops the collector and removes what it wrote (every span of the run: gigabytes after a
    // full one) before the soak.
    paths.collector = None;

    let soak = if options.soak > 0.0 && paths.installed(Peer::Pgmcp) {
        let duration = Duration::from_secs_f64(options.soak);
        let target = Target::open(Peer::Pgmcp, Transport::Http);
        let running = Running::start(target, &paths, &seeded, &dir).await?;
        let mut sessions = Vec::new();
        for _ in 0..options.soak_sessions {
            sessions.push(running.session().await?);
        }
        eprintln!(
            "soak: {} sessions for {:.0}s, PostgreSQL restarted at {:.0}s",
            options.soak_sessions,
            options.soak,
            options.soak / 2.0
        );
        let result = soak::run(
            sessions,
            seeded.clone(),
            running.pid,
            duration,
            Some((postgres.clone(), duration / 2)),
        )
        .await;
        running.stop().await;
        Some(result?)
    } else {
        None
    };

    let results = Results {
        command,
        machine: procfs::machine(),
        seeded: (*seeded).clone(),
        pgbench_version: pgbench::version(),
        pgbench: pgbench_results,
        pgbouncer_version: pgbouncer::version(),
        pgbouncer: pgbouncer_results,
        targets: runs,
        soak,
        skipped,
        options: options.clone(),
    };
    let markdown = report::render(&results);
    println!("{markdown}");
    let output = options.output.clone().unwrap_or_else(|| {
        if options.smoke {
            root.join("target/bench-mcp-smoke.md")
        } else {
            root.join("BENCHMARKS.md")
        }
    });
    report::write_section(&output, &markdown, &options.section)
        .with_context(|| format!("failed to write {}", output.display()))?;
    eprintln!("report written to {}", output.display());
    drop(postgres);
    if options.smoke {
        smoke_checks(&results, &output)?;
        eprintln!("bench-mcp smoke: ok");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_target(
    target: Target,
    paths: &Paths,
    seeded: &Arc<seed::Seeded>,
    dir: &std::path::Path,
    levels: &[usize],
    warmup: Duration,
    duration: Duration,
) -> TargetRun {
    let mut run = TargetRun {
        target,
        version: paths.version(target.peer),
        levels: Vec::new(),
        failure: None,
        wrong_answers: Vec::new(),
        answers: Vec::new(),
    };
    for (i, &clients) in levels.iter().enumerate() {
        match run_level(
            target,
            paths,
            seeded,
            dir,
            clients,
            warmup,
            duration,
            i == 0,
        )
        .await
        {
            Ok((level, wrong, answers)) => {
                run.wrong_answers.extend(wrong);
                run.answers.extend(answers);
                run.levels.push(level);
            }
            Err(err) => {
                eprintln!("{}: {err:#}", target.name());
                run.failure = Some(format!("{err:#}"));
                break;
            }
        }
    }
    run
}

/// One level's measurements, the ops whose first answer was wrong, and the answers' bytes.
type LevelOutcome = (
    LevelRun,
    Vec<(Op, String)>,
    Vec<(servers::Question, Result<usize, String>)>,
);

#[allow(clippy::too_many_arguments)]
async fn run_level(
    target: Target,
    paths: &Paths,
    seeded: &Arc<seed::Seeded>,
    dir: &std::path::Path,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    check_answers: bool,
) -> anyhow::Result<LevelOutcome> {
    let running = Running::start(target, paths, seeded, dir).await?;
    let result = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = procfs::memory(running.pid)?;
        let mut wrong = Vec::new();
        let mut answers = Vec::new();
        if check_answers {
            let mut session = running.session().await?;
            for question in servers::Question::ALL {
                let (method, params) = target.peer.ask(question, seeded);
                let bytes = match session.request(method, &params).await {
                    Ok(answer) if answer["isError"] == serde_json::json!(true) => {
                        Err(answer.to_string().chars().take(200).collect())
                    }
                    Ok(answer) if !answer.to_string().contains(question.marker()) => Err(format!(
                        "answer lacks `{}`: {}",
                        question.marker(),
                        answer.to_string().chars().take(160).collect::<String>()
                    )),
                    Ok(answer) => Ok(servers::answer_bytes(&answer)),
                    Err(err) => Err(err.to_string()),
                };
                answers.push((question, bytes));
            }
            for op in Op::ALL {
                let (method, params) = target.peer.call(op, 1, seeded);
                match session.request(method, &params).await {
                    Ok(answer) if answer.to_string().contains(op.marker()) => {}
                    Ok(answer) => wrong.push((
                        op,
                        format!(
                            "answer lacks `{}`: {}",
                            op.marker(),
                            answer.to_string().chars().take(200).collect::<String>()
                        ),
                    )),
                    Err(err) => wrong.push((op, err.to_string())),
                }
            }
        }
        let mut sessions = Vec::with_capacity(clients);
        for _ in 0..clients {
            sessions.push(running.session().await?);
        }
        let mut ops = Vec::new();
        for op in Op::ALL {
            let measured = load::run(
                &mut sessions,
                target.peer,
                op,
                seeded,
                running.pid,
                warmup,
                duration,
            )
            .await?;
            eprintln!(
                "{} c={clients} {}: {:.0} calls/s, p99 {:.2} ms, {} errors{}",
                target.name(),
                op.label(),
                measured.calls_per_sec(),
                measured.percentile_ms(99.0),
                measured.errors,
                measured
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            ops.push((op, measured));
        }
        let peak = procfs::memory(running.pid)?;
        let telemetry_dropped = running.telemetry_dropped().await?;
        Ok((
            LevelRun {
                clients,
                start_to_ready: running.start_to_ready,
                idle_rss_kib: idle.rss_kib,
                peak_rss_kib: peak.hwm_kib,
                ops,
                telemetry_dropped,
            },
            wrong,
            answers,
        ))
    }
    .await;
    if result.is_err() {
        eprintln!(
            "log of {}:\n{}",
            target.name(),
            pgmcp_tests::daemon::log_tail(&running.log, 20)
        );
    }
    running.stop().await;
    result
}

/// The smoke's claims: pgmcp answered every tool with no errors and right content (with the
/// collector down too, which the server counted as dropped spans), pgbench ran directly and
/// through pgbouncer, the soak served calls after the restart, and the report has its table.
fn smoke_checks(results: &Results, output: &std::path::Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for run in results
        .targets
        .iter()
        .filter(|r| r.target.peer == Peer::Pgmcp)
    {
        if let Some(failure) = &run.failure {
            problems.push(format!("{}: {failure}", run.target.name()));
        }
        for (op, why) in &run.wrong_answers {
            problems.push(format!("{} {}: {why}", run.target.name(), op.label()));
        }
        // Every discovery step answered, within the default budget of 16 KiB of text.
        if run.answers.len() != servers::Question::ALL.len() {
            problems.push(format!("{}: discovery steps not asked", run.target.name()));
        }
        for (question, bytes) in &run.answers {
            match bytes {
                Ok(bytes) if *bytes <= 16 * 1024 => {}
                other => problems.push(format!(
                    "{} {}: {other:?} (more than 16 KiB, or failed)",
                    run.target.name(),
                    question.label()
                )),
            }
        }
        for level in &run.levels {
            for (op, m) in &level.ops {
                if m.calls == 0 || m.errors > 0 {
                    problems.push(format!(
                        "{} c={} {}: {} calls, {} errors ({})",
                        run.target.name(),
                        level.clients,
                        op.label(),
                        m.calls,
                        m.errors,
                        m.first_error.as_deref().unwrap_or("-")
                    ));
                }
            }
            if level.idle_rss_kib == 0 || level.start_to_ready.is_zero() {
                problems.push(format!("{}: no RSS or start time", run.target.name()));
            }
        }
        if run.levels.len() != results.options.clients.len() {
            problems.push(format!("{}: not every concurrency ran", run.target.name()));
        }
        if run.target.telemetry == Telemetry::CollectorDown {
            for level in &run.levels {
                match level.telemetry_dropped {
                    Some(dropped) if dropped.spans > 0 => {}
                    dropped => problems.push(format!(
                        "{} c={}: {} is {} with the collector down, not above 0: the failed \
                         exports were not counted",
                        run.target.name(),
                        level.clients,
                        otel::DROPPED_SPANS,
                        dropped.map_or("unread".to_owned(), |d| d.spans.to_string())
                    )),
                }
            }
        }
    }
    if !results.targets.iter().any(|r| r.target.peer == Peer::Pgmcp) {
        problems.push("pgmcp did not run".into());
    }
    if results.pgbench.iter().any(|p| p.tps <= 0.0) || results.pgbench.is_empty() {
        problems.push("pgbench reported no throughput".into());
    }
    if results.pgbouncer.len() != results.options.clients.len()
        || results
            .pgbouncer
            .iter()
            .any(|p| p.tps <= 0.0 || p.failed > 0)
    {
        problems.push(format!(
            "pgbench through pgbouncer did not report throughput at every client count: {:?}",
            results.pgbouncer
        ));
    }
    if let Some(soak) = &results.soak {
        if soak.calls == 0 {
            problems.push("soak: no calls answered".into());
        }
        // Back to full speed is the full run's claim; the smoke (debug build, busy CI machine)
        // checks that the server serves again after the restart at all.
        if soak.restarted_at.is_some() && soak.calls_after_restart == 0 {
            problems.push(format!(
                "soak: no call answered after the PostgreSQL restart ({})",
                soak.first_error.as_deref().unwrap_or("no error seen")
            ));
        }
    }
    let written = std::fs::read_to_string(output)?;
    if !written.contains(report::BEGIN)
        || !written.contains("| clients | pgbench -S TPS | pgbouncer + pgbench -S TPS |")
    {
        problems.push(format!("{} lacks the report table", output.display()));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "bench-mcp smoke failed:\n  {}",
        problems.join("\n  ")
    );
    Ok(())
}
