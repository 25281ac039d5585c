//! MCP over stdio, for local clients: JSON-RPC messages one per line.
//!
//! Once the session is initialized, every line goes to [`crate::dispatch`], as over HTTP, and
//! the calls it answers run concurrently; rmcp serves the rest (initialize, tools/list, pings,
//! errors) over an in-memory pipe between this module and the process's stdin/stdout. Answers
//! are written whole, one line each, in the order they are ready.

use std::os::fd::{AsFd as _, BorrowedFd};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::http::HeaderMap;
use rmcp::ServiceExt as _;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::dispatch::{Context, Dispatch, Revision, Route};
use crate::server::PgMcpServer;

/// Serves MCP on the process's stdin and stdout until stdin closes.
pub async fn serve(server: PgMcpServer) -> anyhow::Result<()> {
    serve_on(server, stdin(), stdout()).await
}

/// The process's stdin. A pipe or a socket, which is what MCP clients start servers with, is
/// read without blocking, on the runtime's own thread. Anything else (a terminal, a file) is
/// read through tokio's adapter, which hands every read to a blocking thread: several thread
/// wake-ups per message.
fn stdin() -> Box<dyn AsyncRead + Unpin + Send> {
    let Some((file, kind)) = stdio_file(std::io::stdin().as_fd()) else {
        return Box::new(tokio::io::stdin());
    };
    let stream: std::io::Result<Box<dyn AsyncRead + Unpin + Send>> = match kind {
        Kind::Pipe => pipe::Receiver::from_file(file).map(|r| Box::new(r) as _),
        Kind::Socket => socket(file).map(|s| Box::new(s) as _),
    };
    stream.unwrap_or_else(|err| {
        tracing::debug!(error = %err, "reading stdin through a blocking thread");
        Box::new(tokio::io::stdin())
    })
}

/// The process's stdout, written without blocking when it is a pipe or a socket (see
/// [`stdin`]) that stderr does not share: the non-blocking flag belongs to the open file, so
/// it would make stderr's log lines fail when the pipe is full.
fn stdout() -> Box<dyn AsyncWrite + Unpin + Send> {
    let shared_with_stderr = same_file(std::io::stdout().as_fd(), std::io::stderr().as_fd());
    let Some((file, kind)) = stdio_file(std::io::stdout().as_fd()).filter(|_| !shared_with_stderr)
    else {
        return Box::new(tokio::io::stdout());
    };
    let stream: std::io::Result<Box<dyn AsyncWrite + Unpin + Send>> = match kind {
        Kind::Pipe => pipe::Sender::from_file(file).map(|w| Box::new(w) as _),
        Kind::Socket => socket(file).map(|s| Box::new(s) as _),
    };
    stream.unwrap_or_else(|err| {
        tracing::debug!(error = %err, "writing stdout through a blocking thread");
        Box::new(tokio::io::stdout())
    })
}

enum Kind {
    Pipe,
    Socket,
}

/// A duplicate of `fd` and what it is, when it is a pipe or a socket.
fn stdio_file(fd: BorrowedFd<'_>) -> Option<(std::fs::File, Kind)> {
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let file_type = file.metadata().ok()?.file_type();
    let kind = if file_type.is_fifo() {
        Kind::Pipe
    } else if file_type.is_socket() {
        Kind::Socket
    } else {
        return None;
    };
    Some((file, kind))
}

/// A socket given as stdin or stdout (Node's child processes get socket pairs).
fn socket(file: std::fs::File) -> std::io::Result<tokio::net::UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(std::os::fd::OwnedFd::from(file));
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

/// Whether two descriptors are the same file (or pipe, or socket).
fn same_file(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    let id = |fd: BorrowedFd<'_>| {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        Some((meta.dev(), meta.ino()))
    };
    matches!((id(a), id(b)), (Some(a), Some(b)) if a == b)
}

/// The initialize exchange, as far as this module follows it.
#[derive(Default)]
struct Session {
    /// The id of the client's `initialize` request, as JSON text.
    initialize_id: std::sync::Mutex<Option<String>>,
    /// Set once rmcp answered `initialize` with a result.
    initialized: AtomicBool,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    method: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    result: Option<serde::de::IgnoredAny>,
}

/// Serves MCP on `input` and `output` (stdin and stdout, or a test's pipes).
pub async fn serve_on<R, W>(server: PgMcpServer, input: R, output: W) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (to_rmcp, rmcp_end) = tokio::io::duplex(64 * 1024);
    let (rmcp_read, rmcp_write) = tokio::io::split(rmcp_end);
    let (from_rmcp_read, mut to_rmcp_write) = tokio::io::split(to_rmcp);
    let (lines, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
    let session = Arc::new(Session::default());

    // Everything written goes through one task, a whole line at a time.
    let writer = tokio::spawn(async move {
        // Answers ready together go out in one write.
        let mut output = tokio::io::BufWriter::with_capacity(64 * 1024, output);
        while let Some(line) = outgoing.recv().await {
            output.write_all(&line).await?;
            while let Ok(more) = outgoing.try_recv() {
                output.write_all(&more).await?;
            }
            output.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });

    // rmcp's answers, noting its answer to initialize.
    let from_rmcp = {
        let lines = lines.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(from_rmcp_read);
            let mut line = Vec::new();
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                if !session.initialized.load(Ordering::Acquire) {
                    note_initialized(&session, &line);
                }
                if lines.send(line.clone()).is_err() {
                    return Ok(());
                }
            }
        })
    };

    let rmcp = {
        let server = server.clone();
        tokio::spawn(async move {
            let running = server
                .serve((rmcp_read, rmcp_write))
                .await
                .context("failed to start the MCP session")?;
            running.waiting().await.context("the MCP session failed")?;
            Ok::<_, anyhow::Error>(())
        })
    };

    let dispatch = Dispatch::new(server.clone());
    // One conversation: the ids of `notifications/cancelled` are this connection's.
    let context = Context {
        revision: Revision::Session,
        conversation: Some(Arc::from("stdio")),
        caller: None,
    };
    let mut calls = JoinSet::new();
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .await
            .context("failed to read stdin")?;
        if read == 0 {
            break;
        }
        while let Some(done) = calls.try_join_next() {
            done.context("a tool call panicked")?;
        }
        if session.initialized.load(Ordering::Acquire) {
            match dispatch.route(&line, &HeaderMap::new(), &context) {
                Route::Call(call) => {
                    // Runs while reading goes on, so a `notifications/cancelled` for it is
                    // read and acted on.
                    let lines = lines.clone();
                    calls.spawn(async move {
                        if let Some(mut answer) = call.answer().await {
                            answer.push(b'\n');
                            let _ = lines.send(answer);
                        }
                    });
                    continue;
                }
                Route::Answer(mut answer) => {
                    answer.push(b'\n');
                    let _ = lines.send(answer);
                    continue;
                }
                Route::Done => continue,
                Route::Rmcp => {}
            }
        }
        if !session.initialized.load(Ordering::Acquire) {
            note_initialize_request(&session, &line);
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        if to_rmcp_write.write_all(&line).await.is_err() {
            break;
        }
    }
    // stdin closed: let the calls in flight answer, then end rmcp's session.
    while let Some(done) = calls.join_next().await {
        done.context("a tool call panicked")?;
    }
    // Closes rmcp's input (dropping one half of the split pipe would not).
    let _ = to_rmcp_write.shutdown().await;
    let served = rmcp.await.context("the MCP session panicked")?;
    let _ = from_rmcp.await;
    drop(lines);
    writer
        .await
        .context("the stdout writer panicked")?
        .context("failed to write stdout")?;
    served
}

/// Remembers the id of the client's `initialize` request.
fn note_initialize_request(session: &Session, line: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Envelope<'_>>(line) else {
        return;
    };
    if message.method.as_deref() == Some("initialize")
        && let Some(id) = message.id
    {
        *session
            .initialize_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.get().to_owned());
    }
}

/// Marks the session initialized when `line` is rmcp's successful answer to `initialize`.
fn note_initialized(session: &Session, line: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Envelope<'_>>(line) else {
        return;
    };
    let expected = session
        .initialize_id
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if message.result.is_some()
        && message.method.is_none()
        && let (Some(id), Some(expected)) = (message.id, expected)
        && id.get() == expected
    {
        session.initialized.store(true, Ordering::Release);
    }
}
