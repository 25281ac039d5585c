//! Cancelling what a session runs: PostgreSQL's CancelRequest, sent on a new connection to the
//! same server with the session's process id and secret key (BackendKeyData at login).
//!
//! The request is a signal, not a message on the session: it stops whatever the session runs
//! when it arrives, and a session running nothing ignores it. [`CancelHandle::cancel`] returns
//! once the server closed the cancel connection, which it does after signalling the session;
//! [`crate::Connection::run`] relies on that (see its documentation for the races).

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::ConnectError;
use crate::login::Endpoint;
use crate::stream::Stream;

/// Cancels the statement of one session, from anywhere: cheap to clone, `Send`.
#[derive(Clone)]
pub struct CancelHandle {
    endpoint: Arc<Endpoint>,
    /// The session is encrypted: so is its cancel request (the secret key never goes in the
    /// clear where the session did not).
    encrypted: bool,
    /// Process id and secret key; `None` when the server sent none (some proxies).
    key: Option<(i32, i32)>,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle")
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .field("encrypted", &self.encrypted)
            .field("process_id", &self.key.map(|(pid, _)| pid))
            .finish_non_exhaustive()
    }
}

impl CancelHandle {
    pub(crate) fn new(endpoint: Arc<Endpoint>, encrypted: bool, key: Option<(i32, i32)>) -> Self {
        CancelHandle {
            endpoint,
            encrypted,
            key,
        }
    }

    /// Asks the server to cancel what the session runs now, within the connect timeout, and
    /// returns once the server has passed the request on.
    pub async fn cancel(&self) -> Result<(), ConnectError> {
        let (process_id, secret_key) = self.key.ok_or(ConnectError::NoCancelKey)?;
        self.endpoint
            .in_time(self.send(process_id, secret_key))
            .await
    }

    async fn send(&self, process_id: i32, secret_key: i32) -> Result<(), ConnectError> {
        let tcp = self.endpoint.tcp().await?;
        let mut stream = if self.encrypted {
            self.endpoint.tls.encrypt(tcp, &self.endpoint.host).await?
        } else {
            Stream::Plain(tcp)
        };
        let mut request = BytesMut::with_capacity(16);
        frontend::cancel_request(process_id, secret_key, &mut request);
        stream
            .write_all(&request)
            .await
            .map_err(ConnectError::Lost)?;
        stream.flush().await.map_err(ConnectError::Lost)?;
        // The server answers nothing and closes the connection once it signalled the session
        // (libpq waits for that too). Without waiting, the signal could still be on its way
        // when the session starts its next statement, and cancel that one instead. End of
        // stream or an error (TLS without close_notify): the server is done either way.
        let mut rest = [0u8; 1];
        let _ = stream.read(&mut rest).await;
        Ok(())
    }
}
