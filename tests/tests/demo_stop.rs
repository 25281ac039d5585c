//! `make demo` stops cleanly however it is stopped: Ctrl-C or `timeout` (SIGINT or SIGTERM to
//! the whole process group), a script's `kill` of make alone (SIGTERM, which make passes on, and
//! SIGINT, which it does not), and a crash of the demo (SIGKILL). After each, no process the
//! demo started is left: the control plane, PostgreSQL, the operator, the server and the
//! wrappers that stop them (`tests/src/daemon.rs`).
//!
//! The demo runs under a make of its own (a one-line Makefile running `pgmcp-testenv`, what
//! `make demo` runs once its prerequisites are built), in a process group of its own. Its
//! processes are found by a variable only this run's environment carries, and only they are
//! signalled.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MARK_VAR: &str = "PGMCP_DEMO_RUN";

/// The processes whose environment carries this run's mark, with their command lines.
fn left_behind(mark: &str) -> Vec<String> {
    let needle = format!("{MARK_VAR}={mark}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push(format!("{pid} {}", cmdline.trim()));
        }
    }
    found
}

#[derive(Debug, Clone, Copy)]
enum Stop {
    /// Ctrl-C in a terminal, `timeout -s INT`: SIGINT to the process group.
    GroupInterrupt,
    /// `timeout`, a CI runner ending a job: SIGTERM to the process group.
    GroupTerminate,
    /// `kill <make>`: SIGTERM to make alone.
    MakeTerminate,
    /// `kill -INT <make>`: SIGINT to make alone.
    MakeInterrupt,
    /// The demo crashes: SIGKILL to pgmcp-testenv.
    DemoKilled,
}

/// How long everything may take to stop: the demo's own stop takes a few seconds; a daemon
/// that ignored its signal would be killed after 30 s.
const STOPPED_WITHIN: Duration = Duration::from_secs(30);

/// Starts the demo under make, waits until it is up, stops it as `stop` says, and returns what
/// is still running [`STOPPED_WITHIN`] later (nothing, when it works) and how long stopping
/// took.
fn run_and_stop(stop: Stop) -> (Vec<String>, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let makefile = dir.path().join("Makefile");
    std::fs::write(
        &makefile,
        format!("demo:\n\t{}\n", env!("CARGO_BIN_EXE_pgmcp-testenv")),
    )
    .unwrap();
    let mark = format!("{}-{:?}", std::process::id(), stop);
    let log = dir.path().join("demo.log");
    let mut make: Child = Command::new("make")
        .args(["--no-print-directory", "-f"])
        .arg(&makefile)
        .arg("demo")
        .env(MARK_VAR, &mark)
        // The make running these tests must not lend this one its jobserver.
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = make.stdout.take().unwrap();
    let (up, is_up) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("pgmcp demo is up") {
                let _ = up.send(());
            }
        }
    });
    if is_up.recv_timeout(Duration::from_secs(180)).is_err() {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", make.id())])
            .status();
        panic!(
            "the demo did not come up ({stop:?}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let make_pid = make.id().to_string();
    let demo_pid = std::fs::read_to_string(format!("/proc/{make_pid}/task/{make_pid}/children"))
        .unwrap()
        .trim()
        .to_owned();
    let demo_cmdline = std::fs::read(format!("/proc/{demo_pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&demo_cmdline).contains("pgmcp-testenv"),
        "make runs the demo itself, not through a shell: {demo_pid}"
    );
    let group = format!("-{make_pid}");
    let (signal, target) = match stop {
        Stop::GroupInterrupt => ("-INT", group.as_str()),
        Stop::GroupTerminate => ("-TERM", group.as_str()),
        Stop::MakeTerminate => ("-TERM", make_pid.as_str()),
        Stop::MakeInterrupt => ("-INT", make_pid.as_str()),
        Stop::DemoKilled => ("-KILL", demo_pid.as_str()),
    };
    let sent = Command::new("kill")
        .args([signal, "--", target])
        .status()
        .unwrap();
    assert!(sent.success(), "kill {signal} {target}");

    let signalled = Instant::now();
    loop {
        let left = left_behind(&mark);
        let make_done = !matches!(make.try_wait(), Ok(None));
        if (left.is_empty() && make_done) || signalled.elapsed() > STOPPED_WITHIN {
            if !make_done {
                let _ = make.kill();
            }
            return (left, signalled.elapsed());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_demo_leaves_no_process_behind_however_it_is_stopped() {
    for stop in [
        Stop::GroupInterrupt,
        Stop::GroupTerminate,
        Stop::MakeTerminate,
        Stop::MakeInterrupt,
        Stop::DemoKilled,
    ] {
        let (left, took) = run_and_stop(stop);
        assert!(
            left.is_empty(),
            "{stop:?}: still running {STOPPED_WITHIN:?} later:\n{}",
            left.join("\n")
        );
        eprintln!("{stop:?}: everything stopped {took:.1?} after the signal");
    }
}
