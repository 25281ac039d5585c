//! Long-running processes started by tests, tied to the test process by a lifeline.
//!
//! Each daemon runs under a small `sh` wrapper whose stdin is a pipe held by the test process.
//! When the test process drops the [`Daemon`] or exits for any reason (including a panic in a
//! shared fixture that is never dropped, or SIGKILL), the pipe closes, the wrapper sees EOF,
//! stops the daemon with its signal and removes the daemon's directory; a signal to the whole
//! process group (Ctrl-C, `timeout`) does the same, in the same order. No daemon outlives the
//! test run or the demo (`tests/tests/demo_stop.rs`), and no process we did not start is ever
//! signalled.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The wrapper: start the daemon, wait for EOF on stdin, stop the daemon, clean up.
/// Before stopping, it waits (up to 30 s each) for the processes listed in the `after` file:
/// the components that depend on this one, so etcd outlives the apiserver's shutdown.
///
/// A signal sent to the whole process group (Ctrl-C in a terminal, `timeout`, a CI runner
/// stopping a job) must neither stop daemons out of that order nor kill this wrapper and leave
/// its daemon behind: the daemon runs in a session of its own (`setsid`), out of the group's
/// reach, and the wrapper catches the signal (`trap`), which ends `cat` like an EOF would. A
/// daemon that has not stopped 30 s after its signal is killed.
const LIFELINE: &str = r#"
sig="$1"; cleanup="$2"; after="$3"; shift 3
trap ':' INT TERM HUP
setsid "$@" </dev/null &
pid=$!
cat >/dev/null
if [ -n "$after" ] && [ -f "$after" ]; then
  for p in $(cat "$after"); do
    n=0
    while kill -0 "$p" 2>/dev/null && [ "$n" -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
  done
fi
kill -s "$sig" "$pid" 2>/dev/null
n=0
while [ "$n" -lt 300 ]; do
  state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
  if [ -z "$state" ] || [ "$state" = Z ]; then break; fi
  sleep 0.1; n=$((n + 1))
done
kill -s KILL "$pid" 2>/dev/null
wait "$pid"
if [ -n "$cleanup" ] && [ -z "$PGMCP_KEEP_TEST_DIRS" ]; then rm -rf "$cleanup"; fi
"#;

/// How a daemon should be started.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Where stdout and stderr go.
    pub log: PathBuf,
    /// Signal for a fast, clean stop (`TERM`, or `INT` for PostgreSQL's fast shutdown).
    pub stop_signal: &'static str,
    /// Removed after the daemon stopped (unless `PGMCP_KEEP_TEST_DIRS` is set).
    pub cleanup_dir: Option<PathBuf>,
    /// Run as this user (with `setpriv`), used for PostgreSQL when the tests run as root.
    pub run_as: Option<String>,
    /// File of process ids to wait for before stopping; see [`Daemon::stop_before`].
    pub stop_after: Option<PathBuf>,
    /// Extra environment variables of the process.
    pub env: Vec<(String, String)>,
}

impl Spec {
    pub fn new(name: &str, program: impl Into<PathBuf>, log: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_owned(),
            program: program.into(),
            args: Vec::new(),
            log: log.into(),
            stop_signal: "TERM",
            cleanup_dir: None,
            run_as: None,
            stop_after: None,
            env: Vec::new(),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A running daemon. Dropping it stops the daemon and waits for it.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    log: PathBuf,
    stop_after: Option<PathBuf>,
    wrapper: Child,
    lifeline: Option<ChildStdin>,
}

impl Daemon {
    pub fn spawn(spec: Spec) -> anyhow::Result<Self> {
        let log = File::create(&spec.log)
            .map_err(|e| anyhow::anyhow!("failed to create log {}: {e}", spec.log.display()))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(LIFELINE)
            .arg("pgmcp-lifeline")
            .arg(spec.stop_signal)
            .arg(spec.cleanup_dir.as_deref().unwrap_or(Path::new("")))
            .arg(spec.stop_after.as_deref().unwrap_or(Path::new("")));
        if let Some(user) = &spec.run_as {
            command.args([
                "setpriv",
                "--reuid",
                user,
                "--regid",
                user,
                "--init-groups",
                "--",
            ]);
        }
        command
            .arg(&spec.program)
            .args(&spec.args)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .envs(spec.env.iter().map(|(k, v)| (k, v)));
        let mut wrapper = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("failed to start {}: {e}", spec.name))?;
        let lifeline = wrapper.stdin.take();
        Ok(Self {
            name: spec.name,
            log: spec.log,
            stop_after: spec.stop_after,
            wrapper,
            lifeline,
        })
    }

    /// Makes this daemon wait, when its lifeline ends, until `dependent` has stopped.
    pub fn stop_before(&self, dependent: &Daemon) -> anyhow::Result<()> {
        let file = self.stop_after.as_ref().ok_or_else(|| {
            anyhow::anyhow!("{} was started without a stop_after file", self.name)
        })?;
        let mut pids = std::fs::read_to_string(file).unwrap_or_default();
        pids.push_str(&format!("{}\n", dependent.wrapper.id()));
        std::fs::write(file, pids)?;
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the daemon (or its wrapper) has already exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.wrapper.try_wait(), Ok(None))
    }

    /// The last `lines` lines of the daemon's output, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Kills the daemon with SIGKILL, as a node failure or the OOM killer would: no clean
    /// shutdown, nothing released. Then waits for its wrapper to clean up.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let wrapper = self.wrapper.id();
        // The wrapper's only child is the daemon (or setpriv, which execs it).
        let children = std::fs::read_to_string(format!("/proc/{wrapper}/task/{wrapper}/children"))?;
        for pid in children.split_whitespace() {
            let status = Command::new("kill").args(["-KILL", pid]).status()?;
            anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        }
        self.stop();
        Ok(())
    }

    /// Stops the daemon and waits up to 30 s for it and its clean-up.
    pub fn stop(&mut self) {
        self.lifeline.take();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if !matches!(self.wrapper.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within 30s", self.name);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return format!("(no log at {})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
