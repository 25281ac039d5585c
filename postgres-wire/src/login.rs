//! Opening a connection: TCP, TLS as `sslmode` says, the startup message, authentication, then
//! the session's cancel key and parameters up to ReadyForQuery — the start-up flow of
//! PostgreSQL's protocol, written with postgres-protocol's messages and nothing else, so the
//! socket is ours from the first byte.
//!
//! Authentication: SCRAM-SHA-256 (with channel binding, SCRAM-SHA-256-PLUS, whenever the server
//! offers it over TLS), MD5, and cleartext, which is how an Entra token reaches Azure Database
//! for PostgreSQL (over TLS). Kerberos, GSSAPI and SSPI are refused with a sentence saying so.

use std::sync::Arc;
use std::time::Duration;

use fallible_iterator::FallibleIterator as _;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{AuthenticationSaslBody, ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::net::TcpStream;

use crate::cancel::CancelHandle;
use crate::connection::Connection;
use crate::error::sql_error;
use crate::stream::Io;
use crate::tls::channel_binding;
use crate::{ConnectError, Tls, TypeCache};

/// Where and as whom to connect.
#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A password, or an Entra token.
    pub password: Option<String>,
    pub dbname: String,
    /// The `options` startup parameter (`-c name=value …`): settings in force before any
    /// statement runs.
    pub options: Option<String>,
    pub application_name: Option<String>,
    /// How long opening a connection (or sending a cancel request) may take, login included.
    pub connect_timeout: Duration,
    pub tls: Tls,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The server a connection went to, kept for its cancel requests.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: Tls,
    pub(crate) timeout: Duration,
}

impl Endpoint {
    /// A new TCP connection to the server.
    pub(crate) async fn tcp(&self) -> Result<TcpStream, ConnectError> {
        let failed = |error| ConnectError::Tcp {
            host: self.host.clone(),
            port: self.port,
            error,
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        Ok(tcp)
    }

    /// Runs `step` within the connect timeout.
    pub(crate) async fn in_time<T>(
        &self,
        step: impl Future<Output = Result<T, ConnectError>>,
    ) -> Result<T, ConnectError> {
        tokio::time::timeout(self.timeout, step)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Timeout {
                    host: self.host.clone(),
                    port: self.port,
                    timeout: self.timeout,
                })
            })
    }
}

/// Opens a connection as `config` says, ready to run statements. `types` is shared by the
/// connections to one database (see [`TypeCache`]).
pub async fn connect(config: &Config, types: Arc<TypeCache>) -> Result<Connection, ConnectError> {
    let endpoint = Arc::new(Endpoint {
        host: config.host.clone(),
        port: config.port,
        tls: config.tls.clone(),
        timeout: config.connect_timeout,
    });
    endpoint
        .in_time(open(config, endpoint.clone(), types))
        .await
}

async fn open(
    config: &Config,
    endpoint: Arc<Endpoint>,
    types: Arc<TypeCache>,
) -> Result<Connection, ConnectError> {
    let tcp = endpoint.tcp().await?;
    // Dead peers (a failover, a dropped NAT entry) are noticed even on idle pooled connections.
    socket2::SockRef::from(&tcp)
        .set_keepalive(true)
        .map_err(|error| ConnectError::Tcp {
            host: endpoint.host.clone(),
            port: endpoint.port,
            error,
        })?;
    let stream = endpoint.tls.negotiate(tcp, &endpoint.host).await?;
    let encrypted = stream.is_encrypted();
    let mut io = Io::new(stream);
    let key = log_in(&mut io, config).await?;
    let cancel = CancelHandle::new(endpoint, encrypted, key);
    Connection::start(io, types, cancel)
        .await
        .map_err(ConnectError::Setup)
}

/// Startup and authentication; the session's cancel key (process id, secret key) once the
/// server is ready for queries.
async fn log_in(io: &mut Io, config: &Config) -> Result<Option<(i32, i32)>, ConnectError> {
    let mut parameters = vec![
        ("client_encoding", "UTF8"),
        ("user", config.user.as_str()),
        ("database", config.dbname.as_str()),
    ];
    if let Some(options) = &config.options {
        parameters.push(("options", options));
    }
    if let Some(name) = &config.application_name {
        parameters.push(("application_name", name));
    }
    frontend::startup_message(parameters, &mut io.write).map_err(ConnectError::Lost)?;
    io.send().await.map_err(ConnectError::Lost)?;
    authenticate(io, config).await?;
    let mut key = None;
    loop {
        match next(io).await? {
            Message::BackendKeyData(body) => key = Some((body.process_id(), body.secret_key())),
            Message::ReadyForQuery(_) => return Ok(key),
            Message::ParameterStatus(_) | Message::NoticeResponse(_) => {}
            Message::ErrorResponse(body) => return Err(refused(&body)),
            _ => return Err(ConnectError::Unexpected),
        }
    }
}

async fn authenticate(io: &mut Io, config: &Config) -> Result<(), ConnectError> {
    let password = || {
        config
            .password
            .as_deref()
            .map(str::as_bytes)
            .ok_or_else(|| {
                ConnectError::Auth("the server asks for a password and none is set".to_owned())
            })
    };
    match next(io).await? {
        Message::AuthenticationOk => return Ok(()),
        Message::AuthenticationCleartextPassword => {
            frontend::password_message(password()?, &mut io.write).map_err(ConnectError::Lost)?;
            io.send().await.map_err(ConnectError::Lost)?;
        }
        Message::AuthenticationMd5Password(body) => {
            let hash = md5_hash(config.user.as_bytes(), password()?, body.salt());
            frontend::password_message(hash.as_bytes(), &mut io.write)
                .map_err(ConnectError::Lost)?;
            io.send().await.map_err(ConnectError::Lost)?;
        }
        Message::AuthenticationSasl(body) => scram(io, body, password()?).await?,
        Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationGss
        | Message::AuthenticationSspi => {
            return Err(ConnectError::Auth(
                "the server asks for Kerberos, GSSAPI, SSPI or peer credentials; \
                 pgmcp signs in with a password (SCRAM, MD5, cleartext) or an Entra token"
                    .to_owned(),
            ));
        }
        Message::ErrorResponse(body) => return Err(refused(&body)),
        _ => return Err(ConnectError::Unexpected),
    }
    match next(io).await? {
        Message::AuthenticationOk => Ok(()),
        Message::ErrorResponse(body) => Err(refused(&body)),
        _ => Err(ConnectError::Unexpected),
    }
}

/// SCRAM-SHA-256, bound to the TLS session when both sides can (SCRAM-SHA-256-PLUS). The
/// server's final message proves it knows the password too; `finish` checks that.
async fn scram(
    io: &mut Io,
    body: AuthenticationSaslBody,
    password: &[u8],
) -> Result<(), ConnectError> {
    let (mut plain, mut plus) = (false, false);
    let mut mechanisms = body.mechanisms();
    while let Some(mechanism) = mechanisms.next().map_err(ConnectError::Lost)? {
        match mechanism {
            sasl::SCRAM_SHA_256 => plain = true,
            sasl::SCRAM_SHA_256_PLUS => plus = true,
            _ => {}
        }
    }
    let binding = channel_binding(&io.stream);
    let (binding, mechanism) = match binding {
        Some(data) if plus => (
            sasl::ChannelBinding::tls_server_end_point(data),
            sasl::SCRAM_SHA_256_PLUS,
        ),
        // We could bind, the server cannot: saying so lets the server detect a downgrade.
        Some(_) if plain => (sasl::ChannelBinding::unrequested(), sasl::SCRAM_SHA_256),
        None if plain || plus => (sasl::ChannelBinding::unsupported(), sasl::SCRAM_SHA_256),
        _ => {
            return Err(ConnectError::Auth(
                "the server offers no SASL mechanism pgmcp speaks (SCRAM-SHA-256)".to_owned(),
            ));
        }
    };
    let mut scram = sasl::ScramSha256::new(password, binding);
    let failed = |e: std::io::Error| ConnectError::Auth(format!("SCRAM: {e}"));
    frontend::sasl_initial_response(mechanism, scram.message(), &mut io.write)
        .map_err(ConnectError::Lost)?;
    io.send().await.map_err(ConnectError::Lost)?;
    match next(io).await? {
        Message::AuthenticationSaslContinue(body) => scram.update(body.data()).map_err(failed)?,
        Message::ErrorResponse(body) => return Err(refused(&body)),
        _ => return Err(ConnectError::Unexpected),
    }
    frontend::sasl_response(scram.message(), &mut io.write).map_err(ConnectError::Lost)?;
    io.send().await.map_err(ConnectError::Lost)?;
    match next(io).await? {
        Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(failed),
        Message::ErrorResponse(body) => Err(refused(&body)),
        _ => Err(ConnectError::Unexpected),
    }
}

fn refused(body: &ErrorResponseBody) -> ConnectError {
    ConnectError::Refused(sql_error(body).0)
}

async fn next(io: &mut Io) -> Result<Message, ConnectError> {
    loop {
        if let Some(message) = io.parse().map_err(ConnectError::Lost)? {
            return Ok(message);
        }
        if io.fill().await.map_err(ConnectError::Lost)? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}
