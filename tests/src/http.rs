//! One raw HTTP/1.1 request, for probing servers the tests start (no client library, so
//! nothing is hidden or added: exact headers, malformed bodies, foreign Host values).

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends one request with `Connection: close` to 127.0.0.1:`port` and returns the status, the
/// raw response head and the body. A `Host` in `headers` replaces the default.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    request_bytes(port, method, path, headers, body.as_bytes()).await
}

/// [`request`] with a body that need not be UTF-8.
pub async fn request_bytes(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::other("timed out reading the response"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

/// The value of header `name` in a raw response head.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The JSON-RPC answer in a Streamable HTTP body: plain JSON, or the `data:` of an SSE event.
pub fn jsonrpc_message(body: &str) -> Option<serde_json::Value> {
    if let Ok(value) = serde_json::from_str(body.trim()) {
        return Some(value);
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some() || v.get("error").is_some())
}

/// Polls `GET /readyz` until it answers 200; fails early when `daemon` exits.
pub async fn wait_ready(
    port: u16,
    daemon: &mut crate::daemon::Daemon,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    while !matches!(
        request(port, "GET", "/readyz", &[], "").await,
        Ok((200, _, _))
    ) {
        if daemon.exited() || std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{} did not become ready:\n{}",
                daemon.name(),
                daemon.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
