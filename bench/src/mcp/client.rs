//! Minimal MCP clients for the load generator: Streamable HTTP over one hyper HTTP/1.1
//! connection per session, and a stdio connection that multiplexes many in-flight requests on
//! one server process by JSON-RPC id. They speak just enough MCP to initialize and call:
//! no schema validation, no retries (a failed call is an error the benchmark counts).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot};

/// The protocol revision the clients ask for; servers may answer with an older one.
pub const PROTOCOL_VERSION: &str = "2025-11-25";
/// The stateless revision pgmcp also serves: no initialize, no session, `_meta` on every request.
pub const STATELESS_VERSION: &str = "2026-07-28";

/// A call's failure, as the benchmark counts it.
#[derive(Debug)]
pub enum CallError {
    /// Connection refused or reset, HTTP status other than 2xx, unparsable answer.
    Transport(String),
    /// A JSON-RPC error object.
    Protocol(String),
    /// A tool result with `isError: true` (SQL error, refusal, timeout).
    Tool(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(m) => write!(f, "transport: {m}"),
            CallError::Protocol(m) => write!(f, "JSON-RPC error: {m}"),
            CallError::Tool(m) => write!(f, "tool error: {m}"),
        }
    }
}

fn initialize_params() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "pgmcp-bench", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The `result` of a JSON-RPC answer, or the error it carries.
fn result_of(message: Value) -> Result<Value, CallError> {
    let mut message = message;
    if let Some(error) = message.get("error") {
        return Err(CallError::Protocol(truncate(&error.to_string())));
    }
    let result = message
        .get_mut("result")
        .map(Value::take)
        .ok_or_else(|| CallError::Transport("answer without result".into()))?;
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Err(CallError::Tool(truncate(&result["content"].to_string())));
    }
    Ok(result)
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

/// One MCP session over Streamable HTTP on its own TCP connection.
#[derive(Debug)]
pub struct HttpSession {
    addr: SocketAddr,
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
    session_id: Option<HeaderValue>,
    protocol: HeaderValue,
    next_id: u64,
    /// 2026-07-28: `_meta` in params and `Mcp-Method`/`Mcp-Name` headers instead of a session.
    stateless: bool,
    /// `Bearer <token>`, sent with every request (a server with caller authentication).
    authorization: Option<HeaderValue>,
}

impl HttpSession {
    /// Connects to `addr` and runs initialize + notifications/initialized.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::open_as(addr, None).await
    }

    /// [`HttpSession::open`] with `Authorization: Bearer <token>` on every request.
    pub async fn open_as(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<Self> {
        let sender = connect(addr).await?;
        let authorization = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()?;
        let mut session = Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            sender,
            session_id: None,
            protocol: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: 0,
            stateless: false,
            authorization,
        };
        let (head, message) = session
            .post(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": initialize_params()}))
            .await
            .map_err(|e| anyhow::anyhow!("initialize failed: {e}"))?;
        let message = message.context("initialize: no answer")?;
        let result = result_of(message).map_err(|e| anyhow::anyhow!("initialize failed: {e}"))?;
        if let Some(version) = result["protocolVersion"].as_str() {
            session.protocol = HeaderValue::from_str(version)?;
        }
        session.session_id = head.headers.get("mcp-session-id").cloned();
        session
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await
            .map_err(|e| anyhow::anyhow!("notifications/initialized failed: {e}"))?;
        Ok(session)
    }

    /// Connects to `addr` for the stateless 2026-07-28 revision (nothing is sent yet).
    pub async fn open_stateless(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&addr.to_string())?,
            sender: connect(addr).await?,
            session_id: None,
            protocol: HeaderValue::from_static(STATELESS_VERSION),
            next_id: 0,
            stateless: true,
            authorization: None,
        })
    }

    /// Sends one request and returns its result.
    pub async fn request(&mut self, method: &str, params: &Value) -> Result<Value, CallError> {
        self.next_id += 1;
        let id = self.next_id;
        let (_, message) = if self.stateless {
            let mut params = params.clone();
            if let Some(map) = params.as_object_mut() {
                map.insert(
                    "_meta".into(),
                    json!({
                        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
                        "io.modelcontextprotocol/clientInfo": {"name": "pgmcp-bench", "version": env!("CARGO_PKG_VERSION")},
                        "io.modelcontextprotocol/clientCapabilities": {}
                    }),
                );
            }
            let name = params["name"].as_str().map(str::to_owned);
            let routing = (method.to_owned(), name);
            self.post_routed(
                &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
                Some(routing),
            )
            .await?
        } else {
            self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
                .await?
        };
        result_of(message.ok_or_else(|| CallError::Transport("no answer".into()))?)
    }

    /// POSTs one JSON-RPC message; the answer comes as JSON or as an SSE stream whose last
    /// `data:` event with an id is the answer. A broken connection is reopened once per call.
    async fn post(
        &mut self,
        message: &Value,
    ) -> Result<(http::response::Parts, Option<Value>), CallError> {
        self.post_routed(message, None).await
    }

    /// [`HttpSession::post`] with the 2026-07-28 routing headers (`Mcp-Method`, `Mcp-Name`).
    async fn post_routed(
        &mut self,
        message: &Value,
        routing: Option<(String, Option<String>)>,
    ) -> Result<(http::response::Parts, Option<Value>), CallError> {
        let body = Bytes::from(
            serde_json::to_vec(message).map_err(|e| CallError::Transport(e.to_string()))?,
        );
        if self.sender.ready().await.is_err() {
            self.sender = connect(self.addr)
                .await
                .map_err(|e| CallError::Transport(format!("{e:#}")))?;
        }
        let mut request = Request::post("/mcp")
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .header("mcp-protocol-version", self.protocol.clone());
        if let Some(id) = &self.session_id {
            request = request.header("mcp-session-id", id.clone());
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        if let Some((method, name)) = routing {
            request = request.header("mcp-method", method);
            if let Some(name) = name {
                request = request.header("mcp-name", name);
            }
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let (head, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?
            .to_bytes();
        if !head.status.is_success() {
            return Err(CallError::Transport(format!(
                "HTTP {}: {}",
                head.status,
                truncate(&String::from_utf8_lossy(&bytes))
            )));
        }
        if bytes.is_empty() {
            return Ok((head, None));
        }
        let sse = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let message = if sse {
            answer_in_sse(&bytes)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        match message {
            Some(message) => Ok((head, Some(message))),
            None => Err(CallError::Transport(format!(
                "unparsable answer: {}",
                truncate(&String::from_utf8_lossy(&bytes))
            ))),
        }
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("failed to connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake failed")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The JSON-RPC answer (a message with an id) in an SSE body; notifications are skipped.
fn answer_in_sse(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let mut answer = None;
    for event in text.split("\n\n") {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        if let Ok(message) = serde_json::from_str::<Value>(&data.join("\n"))
            && message.get("id").is_some()
        {
            answer = Some(message);
        }
    }
    answer
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One stdio server process, shared by many concurrent callers: requests are written by one
/// writer task (batched per wake-up) and answers routed back by id by one reader task.
#[derive(Debug)]
pub struct StdioConnection {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_id: AtomicU64,
}

impl StdioConnection {
    /// Wraps the pipes of a freshly spawned server (nothing sent yet).
    pub fn new(stdin: ChildStdin, stdout: ChildStdout) -> Arc<Self> {
        let (outgoing, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pending: Pending = Arc::default();
        tokio::spawn(async move {
            let mut writer = BufWriter::new(stdin);
            while let Some(first) = rx.recv().await {
                if writer.write_all(&first).await.is_err() {
                    return;
                }
                while let Ok(more) = rx.try_recv() {
                    if writer.write_all(&more).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
            }
        });
        let routes = pending.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(message) = serde_json::from_str::<Value>(&line) else {
                    continue; // a log line on stdout; not ours to judge here
                };
                let Some(id) = message.get("id").and_then(Value::as_u64) else {
                    continue; // a notification or a server → client request
                };
                if message.get("method").is_some() {
                    continue;
                }
                let waiter = routes.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
            // EOF: drop every waiter so their callers see the connection end.
            if let Ok(mut p) = routes.lock() {
                p.clear();
            }
        });
        Arc::new(Self {
            outgoing,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    /// initialize + notifications/initialized.
    pub async fn initialize(&self) -> anyhow::Result<()> {
        self.request("initialize", &initialize_params())
            .await
            .map_err(|e| anyhow::anyhow!("initialize failed: {e}"))?;
        self.notify("notifications/initialized")
    }

    fn notify(&self, method: &str) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": method}))?;
        line.push(b'\n');
        self.outgoing
            .send(line)
            .map_err(|_| anyhow::anyhow!("the server's stdin is closed"))
    }

    /// Sends one request and waits for its answer.
    pub async fn request(&self, method: &str, params: &Value) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )
        .map_err(|e| CallError::Transport(e.to_string()))?;
        line.push(b'\n');
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        if self.outgoing.send(line).is_err() {
            return Err(CallError::Transport("the server's stdin is closed".into()));
        }
        let message = rx
            .await
            .map_err(|_| CallError::Transport("the server closed stdout".into()))?;
        result_of(message)
    }
}

/// A session the load generator drives: its own HTTP connection, or a share of a stdio server.
#[derive(Debug)]
pub enum Session {
    Http(Box<HttpSession>),
    Stdio(Arc<StdioConnection>),
}

impl Session {
    pub async fn request(&mut self, method: &str, params: &Value) -> Result<Value, CallError> {
        match self {
            Session::Http(s) => s.request(method, params).await,
            Session::Stdio(s) => s.request(method, params).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_found_among_sse_events() {
        let body = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n\
                     id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"ok\":true}}\n\n";
        let answer = answer_in_sse(body).expect("answer");
        assert_eq!(answer["id"], 3);
    }

    #[test]
    fn tool_errors_and_protocol_errors_are_failures() {
        assert!(matches!(
            result_of(json!({"id": 1, "result": {"isError": true, "content": []}})),
            Err(CallError::Tool(_))
        ));
        assert!(matches!(
            result_of(json!({"id": 1, "error": {"code": -32602}})),
            Err(CallError::Protocol(_))
        ));
        assert!(result_of(json!({"id": 1, "result": {"content": []}})).is_ok());
    }
}
