use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use postgres_types::{Kind, Type};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{bind_error, db_error, encode, lost, parse, unsendable};
use crate::value::{self, Param};
use crate::{Caps, Column, ConnectError, Error, JsonRows, Rows};

/// Prepared statements kept per connection; the least recently used one is closed first.
const STATEMENT_CACHE_SIZE: usize = 64;

/// Statements without parameters remembered as seen once (by hash), to prepare those that
/// come back.
const SEEN_SIZE: usize = 256;

/// The prepared `BEGIN READ ONLY` every pipeline starts with.
const BEGIN: &str = "pgmcp_begin";

type RustlsStream = <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::Stream;

/// The authenticated socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<RustlsStream>),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Tls(_) => "Stream::Tls",
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting: tokio-postgres negotiates and authenticates over a stream it borrows.

/// A stream lent to tokio-postgres for the start-up: it reads and writes through the slot, and
/// once it is done the owner takes the stream back out.
#[derive(Debug)]
struct Lent<T>(Arc<Mutex<Option<T>>>);

impl<T> Lent<T> {
    fn new(stream: T) -> Self {
        Lent(Arc::new(Mutex::new(Some(stream))))
    }

    fn share(&self) -> Self {
        Lent(self.0.clone())
    }

    fn take_back(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn with<R>(&self, f: impl FnOnce(Pin<&mut T>) -> Poll<io::Result<R>>) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(stream) => f(Pin::new(stream)),
            None => Poll::Ready(Err(io::Error::other("the stream was taken back"))),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lent<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Lent<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.with(|s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with(|s| s.poll_shutdown(cx))
    }
}

impl TlsStream for Lent<RustlsStream> {
    fn channel_binding(&self) -> ChannelBinding {
        match self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            Some(stream) => stream.channel_binding(),
            None => ChannelBinding::none(),
        }
    }
}

/// The TLS handshake tokio-postgres asks for, on the TCP stream taken out of its slot; the TLS
/// stream is lent in turn.
struct LendTls {
    connect: <MakeRustlsConnect as MakeTlsConnect<TcpStream>>::TlsConnect,
    tls: Lent<RustlsStream>,
}

type TlsFuture =
    Pin<Box<dyn std::future::Future<Output = io::Result<Lent<RustlsStream>>> + Send + 'static>>;

impl TlsConnect<Lent<TcpStream>> for LendTls {
    type Stream = Lent<RustlsStream>;
    type Error = io::Error;
    type Future = TlsFuture;

    fn connect(self, stream: Lent<TcpStream>) -> TlsFuture {
        Box::pin(async move {
            let tcp = stream
                .take_back()
                .ok_or_else(|| io::Error::other("the TCP stream is gone"))?;
            let tls = TlsConnect::<TcpStream>::connect(self.connect, tcp).await?;
            *self.tls.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(tls);
            Ok(self.tls)
        })
    }
}

/// Where to connect.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub host: &'a str,
    pub port: u16,
    pub connect_timeout: Duration,
}

/// Opens a connection: TCP, then TLS and authentication by tokio-postgres as `pg` says (user,
/// password, database, options, sslmode), then the statement every pipeline starts with.
pub async fn connect(
    pg: &tokio_postgres::Config,
    target: Target<'_>,
    tls: &mut MakeRustlsConnect,
    types: Arc<TypeCache>,
) -> Result<Connection, ConnectError> {
    let tcp_error = |error| ConnectError::Tcp {
        host: target.host.to_owned(),
        port: target.port,
        error,
    };
    let tcp = tokio::time::timeout(
        target.connect_timeout,
        TcpStream::connect((target.host, target.port)),
    )
    .await
    .map_err(|_| {
        tcp_error(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {:?}", target.connect_timeout),
        ))
    })?
    .map_err(tcp_error)?;
    tcp.set_nodelay(true).map_err(tcp_error)?;
    // Dead peers (a failover, a dropped NAT entry) are noticed even on idle pooled connections.
    socket2::SockRef::from(&tcp)
        .set_keepalive(true)
        .map_err(tcp_error)?;
    let plain = Lent::new(tcp);
    let tls_slot = Lent(Arc::new(Mutex::new(None)));
    let connect_tls = LendTls {
        connect: match MakeTlsConnect::<TcpStream>::make_tls_connect(tls, target.host) {
            Ok(connect) => connect,
            Err(never) => match never {},
        },
        tls: tls_slot.share(),
    };
    let (client, connection) = pg.connect_raw(plain.share(), connect_tls).await?;
    // Neither was polled: nothing was or will be written on their behalf.
    drop(client);
    drop(connection);
    let stream = match (tls_slot.take_back(), plain.take_back()) {
        (Some(tls), _) => Stream::Tls(Box::new(tls)),
        (None, Some(tcp)) => Stream::Plain(tcp),
        (None, None) => {
            return Err(ConnectError::Setup(Error::ConnectionLost(
                "the stream was lost while starting".to_owned(),
            )));
        }
    };
    let mut connection = Connection {
        stream,
        read: BytesMut::with_capacity(8 * 1024),
        write: BytesMut::with_capacity(1024),
        statements: Statements::default(),
        seen: Seen::default(),
        close: Vec::new(),
        next_name: 0,
        busy: false,
        types,
    };
    connection
        .prepare_begin()
        .await
        .map_err(ConnectError::Setup)?;
    Ok(connection)
}

// ---------------------------------------------------------------------------------------------
// Statements and types.

/// A statement prepared on this connection.
#[derive(Debug)]
struct Prepared {
    name: Box<str>,
    params: Vec<Type>,
    /// Name and type of each result column.
    columns: Vec<(String, Type)>,
}

#[derive(Debug, Default)]
struct Statements {
    entries: HashMap<Box<str>, (Arc<Prepared>, u64)>,
    clock: u64,
}

impl Statements {
    fn get(&mut self, sql: &str) -> Option<Arc<Prepared>> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(sql).map(|(prepared, used)| {
            *used = clock;
            prepared.clone()
        })
    }

    /// Keeps `prepared`; returns the name of the statement it evicted, to close.
    fn insert(&mut self, sql: &str, prepared: Arc<Prepared>) -> Option<Box<str>> {
        let mut evicted = None;
        if self.entries.len() >= STATEMENT_CACHE_SIZE {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(sql, _)| sql.clone());
            if let Some(oldest) = oldest {
                evicted = self.entries.remove(&oldest).map(|(p, _)| p.name.clone());
            }
        }
        self.clock += 1;
        self.entries.insert(sql.into(), (prepared, self.clock));
        evicted
    }

    fn remove(&mut self, sql: &str) -> Option<Box<str>> {
        self.entries.remove(sql).map(|(p, _)| p.name.clone())
    }
}

/// Hashes of statements run once, oldest first.
#[derive(Debug, Default)]
struct Seen {
    hasher: RandomState,
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl Seen {
    /// Whether `sql` was seen before; remembers it either way.
    fn check(&mut self, sql: &str) -> bool {
        let hash = self.hasher.hash_one(sql);
        if self.set.contains(&hash) {
            return true;
        }
        if self.order.len() == SEEN_SIZE
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        self.order.push_back(hash);
        self.set.insert(hash);
        false
    }
}

/// Types that are not built in (enums, domains, arrays of those, extension types), by OID, as
/// the database described them; shared by the pool's connections.
#[derive(Debug, Default)]
pub struct TypeCache(RwLock<HashMap<u32, Type>>);

impl TypeCache {
    fn get(&self, oid: u32) -> Option<Type> {
        Type::from_oid(oid).or_else(|| {
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&oid)
                .cloned()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Running statements.

/// A pooled connection.
#[derive(Debug)]
pub struct Connection {
    stream: Stream,
    read: BytesMut,
    write: BytesMut,
    statements: Statements,
    seen: Seen,
    /// Prepared statements to close with the next pipeline.
    close: Vec<Box<str>>,
    next_name: u64,
    /// Set while a pipeline is out and not fully answered. A call cancelled in between leaves
    /// the connection in an unknown state: the pool discards it.
    busy: bool,
    types: Arc<TypeCache>,
}

/// One statement to run read-only.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    pub sql: &'a str,
    pub params: &'a [Value],
    pub caps: Caps,
    /// Lower than the session's statement_timeout for this statement only.
    pub timeout: Option<Duration>,
}

/// How the statement goes into the pipeline.
enum Plan {
    /// Prepared earlier: Bind only (parameter and column types known).
    Cached(Arc<Prepared>),
    /// Parse as a named statement and keep it (no parameters, seen before).
    Keep(Box<str>),
    /// Parse as the unnamed statement (no parameters, first sight).
    Once,
}

/// A result column as the pipeline learns it.
struct ResultColumn {
    name: String,
    oid: u32,
    ty: Option<Type>,
}

/// What the pipeline's answers amount to.
#[derive(Default)]
struct Answer {
    columns: Vec<ResultColumn>,
    /// The rows written as JSON as they came (every column type known): `[[…],[…]`, closed
    /// when done.
    json: Vec<u8>,
    row_count: usize,
    /// Rows kept undecoded until unknown column types are looked up.
    raw: Vec<DataRowBody>,
    undecoded: Vec<bool>,
    /// JSON bytes of the rows so far (without separators), for `max_bytes`.
    bytes: usize,
    truncated_by: Option<&'static str>,
    /// The first error PostgreSQL reported.
    error: Option<Error>,
    decode_error: Option<Error>,
    /// ParseComplete messages.
    parsed: usize,
    /// Parameters of a statement parsed in this pipeline.
    parameters: usize,
}

impl Connection {
    /// Whether the connection may be used again (no pipeline left half-answered).
    pub fn is_settled(&self) -> bool {
        !self.busy
    }

    async fn prepare_begin(&mut self) -> Result<(), Error> {
        frontend::parse(BEGIN, "BEGIN READ ONLY", None, &mut self.write).map_err(encode)?;
        frontend::sync(&mut self.write);
        self.send().await?;
        self.until_ready().await
    }

    /// Reads up to the next ReadyForQuery; the first error PostgreSQL reported is the result.
    async fn until_ready(&mut self) -> Result<(), Error> {
        let mut error = None;
        loop {
            match self.next().await? {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    error.get_or_insert_with(|| db_error(&body));
                }
                _ => {}
            }
        }
        self.busy = false;
        error.map_or(Ok(()), Err)
    }

    /// Runs `statement` in a read-only transaction and returns at most its caps of rows.
    pub async fn run(&mut self, statement: Statement<'_>) -> Result<Rows, Error> {
        let started = Instant::now();
        let plan = self.plan(statement).await?;
        self.pipeline(&plan, statement)?;
        self.send().await?;
        let mut answer = self.answers(&plan, statement).await?;
        self.busy = false;
        self.keep_or_close(&plan, &answer, statement);
        if answer.parameters > statement.params.len() && answer.error.is_some() {
            // `$1` in the SQL and no value for it: PostgreSQL refused the Bind.
            return Err(Error::ParamCount {
                expected: answer.parameters,
                got: statement.params.len(),
            });
        }
        if let Some(error) = answer.error.take() {
            if let (Plan::Cached(_), Error::Sql(sql)) = (&plan, &error)
                && sql.is_stale_plan()
                && let Some(name) = self.statements.remove(statement.sql)
            {
                // Prepared again on the next attempt.
                self.close.push(name);
            }
            return Err(error);
        }
        if let Some(error) = answer.decode_error.take() {
            return Err(error);
        }
        if answer.columns.iter().any(|c| c.ty.is_none()) {
            self.resolve_columns(&mut answer, statement.caps).await?;
            if let Some(error) = answer.decode_error.take() {
                return Err(error);
            }
        }
        let columns: Vec<Column> = answer
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: c.ty.as_ref().map_or("unknown", Type::name).to_owned(),
            })
            .collect();
        let undecoded_columns = columns
            .iter()
            .zip(&answer.undecoded)
            .filter(|(_, u)| **u)
            .map(|(c, _)| {
                format!(
                    "{} ({}): cast it in SQL, e.g. {}::text",
                    c.name, c.type_name, c.name
                )
            })
            .collect();
        let mut json = std::mem::take(&mut answer.json);
        if json.is_empty() {
            json.push(b'[');
        }
        json.push(b']');
        let json = String::from_utf8(json)
            .map_err(|e| Error::Decode(format!("failed to encode the rows: {e}")))?;
        Ok(Rows {
            row_count: answer.row_count,
            rows: JsonRows::new(json)?,
            truncated: answer.truncated_by.is_some(),
            truncated_by: answer.truncated_by,
            elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            columns,
            undecoded_columns,
        })
    }

    /// Decides how `statement` is sent; prepares it first (one round trip) when it has
    /// parameters and is not prepared yet, since their types decide how they are bound.
    async fn plan(&mut self, statement: Statement<'_>) -> Result<Plan, Error> {
        if let Some(prepared) = self.statements.get(statement.sql) {
            return Ok(Plan::Cached(prepared));
        }
        if statement.params.is_empty() {
            return Ok(if self.seen.check(statement.sql) {
                Plan::Keep(self.new_name())
            } else {
                Plan::Once
            });
        }
        let name = self.new_name();
        self.closes();
        let start = self.write.len();
        if let Err(err) = frontend::parse(&name, statement.sql, None, &mut self.write) {
            self.write.truncate(start);
            return Err(unsendable(err));
        }
        frontend::describe(b'S', &name, &mut self.write).map_err(encode)?;
        frontend::sync(&mut self.write);
        self.send().await?;
        let mut params = Vec::new();
        let mut columns = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                Message::ParameterDescription(body) => {
                    params = body.parameters().collect::<Vec<u32>>().map_err(parse)?;
                }
                Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    while let Some(field) = fields.next().map_err(parse)? {
                        columns.push((field.name().to_owned(), field.type_oid()));
                    }
                }
                Message::ErrorResponse(body) => {
                    error.get_or_insert_with(|| db_error(&body));
                }
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        self.busy = false;
        if let Some(error) = error {
            // Nothing to close if the Parse itself failed, but harmless.
            self.close.push(name);
            return Err(error);
        }
        let oids: Vec<u32> = params
            .iter()
            .chain(columns.iter().map(|(_, oid)| oid))
            .copied()
            .collect();
        self.resolve_types(&oids).await?;
        let ty = |oid| self.types.get(oid).unwrap_or(Type::UNKNOWN);
        let prepared = Arc::new(Prepared {
            name,
            params: params.into_iter().map(ty).collect(),
            columns: columns.into_iter().map(|(n, oid)| (n, ty(oid))).collect(),
        });
        if let Some(evicted) = self.statements.insert(statement.sql, prepared.clone()) {
            self.close.push(evicted);
        }
        Ok(Plan::Cached(prepared))
    }

    fn new_name(&mut self) -> Box<str> {
        self.next_name += 1;
        format!("pgmcp_{}", self.next_name).into()
    }

    /// Close messages for evicted statements (answered by CloseComplete).
    fn closes(&mut self) {
        for name in self.close.drain(..) {
            // A name we made holds no NUL: encoding cannot fail.
            let _ = frontend::close(b'S', &name, &mut self.write);
        }
    }

    /// Writes the pipeline: [Close…] BEGIN READ ONLY, [SET LOCAL statement_timeout], [Parse]
    /// Bind [Describe] Execute(max_rows + 1), Sync, then ROLLBACK as a simple query, which runs
    /// whether or not the statement failed. Any error before the Sync skips the rest up to it,
    /// so the statement never runs outside the read-only transaction.
    fn pipeline(&mut self, plan: &Plan, statement: Statement<'_>) -> Result<(), Error> {
        let bound = match plan {
            Plan::Cached(prepared) => {
                if prepared.params.len() != statement.params.len() {
                    return Err(Error::ParamCount {
                        expected: prepared.params.len(),
                        got: statement.params.len(),
                    });
                }
                prepared
                    .params
                    .iter()
                    .zip(statement.params)
                    .enumerate()
                    .map(|(i, (ty, value))| Param::bind(i + 1, ty, value))
                    .collect::<Result<Vec<_>, _>>()?
            }
            Plan::Keep(_) | Plan::Once => Vec::new(),
        };
        self.closes();
        let start = self.write.len();
        let written = write_pipeline(&mut self.write, plan, statement, &bound);
        if written.is_err() {
            self.write.truncate(start);
        }
        written
    }

    /// Reads the pipeline's answers: up to the ReadyForQuery of its Sync, then that of
    /// ROLLBACK.
    async fn answers(&mut self, plan: &Plan, statement: Statement<'_>) -> Result<Answer, Error> {
        let mut answer = Answer::default();
        if let Plan::Cached(prepared) = plan {
            answer.columns = prepared
                .columns
                .iter()
                .map(|(name, ty)| ResultColumn {
                    name: name.clone(),
                    oid: ty.oid(),
                    ty: Some(ty.clone()),
                })
                .collect();
            answer.undecoded = vec![false; answer.columns.len()];
        }
        let mut ready = 0;
        while ready < 2 {
            match self.next().await? {
                Message::ReadyForQuery(_) => ready += 1,
                Message::DataRow(row) => answer.row(row, statement.caps),
                Message::RowDescription(body) => {
                    let mut fields = body.fields();
                    answer.columns.clear();
                    while let Some(field) = fields.next().map_err(parse)? {
                        answer.columns.push(ResultColumn {
                            name: field.name().to_owned(),
                            oid: field.type_oid(),
                            ty: self.types.get(field.type_oid()),
                        });
                    }
                    answer.undecoded = vec![false; answer.columns.len()];
                }
                Message::PortalSuspended => {
                    answer.truncated_by.get_or_insert("max_rows");
                }
                Message::ParseComplete => answer.parsed += 1,
                Message::ParameterDescription(body) => {
                    answer.parameters = body.parameters().count().map_err(parse)?;
                }
                // The statement's error, or (after the Sync) ROLLBACK's in a broken session.
                Message::ErrorResponse(body) => {
                    answer.error.get_or_insert_with(|| db_error(&body));
                }
                _ => {}
            }
        }
        Ok(answer)
    }

    /// A statement parsed under a name in this pipeline is kept for next time when it ran and
    /// its columns are known; otherwise it is closed with the next pipeline.
    fn keep_or_close(&mut self, plan: &Plan, answer: &Answer, statement: Statement<'_>) {
        let Plan::Keep(name) = plan else {
            return;
        };
        let parses = 1 + usize::from(statement.timeout.is_some());
        if answer.parsed < parses {
            return; // never parsed: nothing to keep or close
        }
        let columns: Option<Vec<(String, Type)>> = answer
            .columns
            .iter()
            .map(|c| Some((c.name.clone(), c.ty.clone()?)))
            .collect();
        match columns {
            Some(columns) if answer.error.is_none() => {
                let prepared = Arc::new(Prepared {
                    name: name.clone(),
                    params: Vec::new(),
                    columns,
                });
                if let Some(evicted) = self.statements.insert(statement.sql, prepared) {
                    self.close.push(evicted);
                }
            }
            _ => self.close.push(name.clone()),
        }
    }

    /// Looks up the column types PostgreSQL named that are not built in, then decodes the
    /// rows kept for them.
    async fn resolve_columns(&mut self, answer: &mut Answer, caps: Caps) -> Result<(), Error> {
        let oids: Vec<u32> = answer.columns.iter().map(|c| c.oid).collect();
        self.resolve_types(&oids).await?;
        for column in &mut answer.columns {
            column.ty = Some(self.types.get(column.oid).unwrap_or(Type::UNKNOWN));
        }
        for row in std::mem::take(&mut answer.raw) {
            if answer.truncated_by.is_some() || answer.decode_error.is_some() {
                break;
            }
            answer.write_row(&row, caps);
        }
        Ok(())
    }

    /// Describes the types in `oids` that are neither built in nor known yet, from `pg_type`
    /// (enums, domains, arrays of them, extension types; base and element types too).
    async fn resolve_types(&mut self, oids: &[u32]) -> Result<(), Error> {
        let mut wanted: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|oid| self.types.get(*oid).is_none())
            .collect();
        // Domains and arrays name further types: a few levels at most.
        for _ in 0..4 {
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.is_empty() {
                return Ok(());
            }
            let list = wanted
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let sql = format!(
                "SELECT t.oid::int8, t.typname::text, n.nspname::text, t.typtype::text, \
                 t.typbasetype::int8, t.typelem::int8, t.typcategory::text \
                 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
                 WHERE t.oid IN ({list})"
            );
            // Only built-in column types here, so this does not come back.
            let described = Box::pin(self.run(Statement {
                sql: &sql,
                params: &[],
                caps: Caps {
                    max_rows: 10_000,
                    max_bytes: usize::MAX,
                },
                timeout: None,
            }))
            .await?;
            let mut next = Vec::new();
            for row in &described.rows.values() {
                let Some(pg_type) = PgType::from_row(row) else {
                    continue;
                };
                match pg_type.dependency() {
                    Some(dependency) => match self.types.get(dependency) {
                        Some(inner) => self.types.insert(pg_type.build(Some(inner))),
                        None => {
                            next.push(dependency);
                            next.push(pg_type.oid);
                        }
                    },
                    None => self.types.insert(pg_type.build(None)),
                }
            }
            wanted = next;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), Error> {
        self.busy = true;
        let result = self.stream.write_all(&self.write).await;
        self.write.clear();
        result.map_err(lost)?;
        self.stream.flush().await.map_err(lost)
    }

    async fn next(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(message) = Message::parse(&mut self.read).map_err(parse)? {
                return Ok(message);
            }
            self.read.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.read).await.map_err(lost)? == 0 {
                return Err(Error::ConnectionLost(
                    "the server closed the connection".to_owned(),
                ));
            }
        }
    }
}

impl Answer {
    /// One data row: written at once when every column type is known, kept raw otherwise.
    fn row(&mut self, row: DataRowBody, caps: Caps) {
        if self.truncated_by.is_some() || self.decode_error.is_some() {
            return;
        }
        if self.row_count + self.raw.len() == caps.max_rows {
            self.truncated_by = Some("max_rows");
            return;
        }
        if self.columns.iter().any(|c| c.ty.is_none()) {
            self.raw.push(row);
            return;
        }
        self.write_row(&row, caps);
    }

    /// Appends `row` as a JSON array, unless it would take the rows past `max_bytes`.
    fn write_row(&mut self, row: &DataRowBody, caps: Caps) {
        let start = self.json.len();
        self.json
            .push(if self.row_count == 0 { b'[' } else { b',' });
        let begin = self.json.len();
        if let Err(error) = encode_row(&self.columns, row, &mut self.undecoded, &mut self.json) {
            self.json.truncate(start);
            self.decode_error = Some(error);
            return;
        }
        let size = self.json.len() - begin;
        if self.bytes + size > caps.max_bytes {
            self.json.truncate(start);
            self.truncated_by = Some("max_bytes");
            return;
        }
        self.bytes += size;
        self.row_count += 1;
    }
}

/// A row of the `pg_type` query in [`Connection::resolve_types`].
struct PgType {
    oid: u32,
    name: String,
    schema: String,
    kind: String,
    base: u32,
    element: u32,
    category: String,
}

impl PgType {
    fn from_row(row: &[Value]) -> Option<PgType> {
        let [oid, name, schema, kind, base, element, category] = row else {
            return None;
        };
        let oid_of = |v: &Value| v.as_u64().and_then(|o| u32::try_from(o).ok());
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Some(PgType {
            oid: oid_of(oid)?,
            name: text(name)?,
            schema: text(schema)?,
            kind: text(kind)?,
            base: oid_of(base)?,
            element: oid_of(element)?,
            category: text(category)?,
        })
    }

    /// The type this one is built on: a domain's base, an array's element.
    fn dependency(&self) -> Option<u32> {
        match self.kind.as_str() {
            "d" => Some(self.base),
            _ if self.category == "A" && self.element != 0 => Some(self.element),
            _ => None,
        }
    }

    fn build(self, inner: Option<Type>) -> Type {
        let kind = match (self.kind.as_str(), inner) {
            ("e", _) => Kind::Enum(Vec::new()),
            ("p", _) => Kind::Pseudo,
            ("d", Some(base)) => Kind::Domain(base),
            (_, Some(element)) => Kind::Array(element),
            // Composites, ranges and base types of extensions: decoded by name or shown as hex.
            _ => Kind::Simple,
        };
        Type::new(self.name, self.oid, kind, self.schema)
    }
}

impl TypeCache {
    fn insert(&self, ty: Type) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ty.oid(), ty);
    }
}

fn write_pipeline(
    write: &mut BytesMut,
    plan: &Plan,
    statement: Statement<'_>,
    bound: &[Param],
) -> Result<(), Error> {
    bind_plain(write, BEGIN, None)?;
    frontend::execute("", 0, write).map_err(encode)?;
    if let Some(timeout) = statement.timeout {
        let sql = format!(
            "SET LOCAL statement_timeout = {}",
            timeout.as_millis().max(1)
        );
        frontend::parse("", &sql, None, write).map_err(encode)?;
        bind_plain(write, "", None)?;
        frontend::execute("", 0, write).map_err(encode)?;
    }
    match plan {
        Plan::Cached(prepared) => {
            frontend::bind(
                "",
                &prepared.name,
                Some(1),
                bound.iter().zip(&prepared.params),
                |(param, ty), buf| param.encode(ty, buf),
                Some(1),
                write,
            )
            .map_err(bind_error)?;
        }
        Plan::Keep(_) | Plan::Once => {
            let name = match plan {
                Plan::Keep(name) => name,
                _ => "",
            };
            frontend::parse(name, statement.sql, None, write).map_err(unsendable)?;
            // Its parameters (there should be none) and columns, before the Bind that needs
            // them to match.
            frontend::describe(b'S', name, write).map_err(encode)?;
            bind_plain(write, name, Some(1))?;
        }
    }
    frontend::execute("", cap(statement.caps), write).map_err(encode)?;
    frontend::sync(write);
    frontend::query("ROLLBACK", write).map_err(encode)
}

/// Bind of a statement without parameters to the unnamed portal; `results` the result format
/// for every column (binary: `Some(1)`).
fn bind_plain(write: &mut BytesMut, statement: &str, results: Option<i16>) -> Result<(), Error> {
    frontend::bind(
        "",
        statement,
        None,
        std::iter::empty::<()>(),
        |(), _| Ok(postgres_protocol::IsNull::No),
        results,
        write,
    )
    .map_err(bind_error)
}

/// The portal's row limit: one more than the cap, to know whether there were more.
fn cap(caps: Caps) -> i32 {
    i32::try_from(caps.max_rows.saturating_add(1)).unwrap_or(i32::MAX)
}

/// Writes `row` as a JSON array of its cells.
fn encode_row(
    columns: &[ResultColumn],
    row: &DataRowBody,
    undecoded: &mut [bool],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let buffer = row.buffer();
    let mut ranges = row.ranges();
    out.push(b'[');
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let range = ranges
            .next()
            .map_err(parse)?
            .ok_or_else(|| Error::Decode(format!("row ended before column {}", column.name)))?;
        let ty = column.ty.as_ref().unwrap_or(&Type::UNKNOWN);
        let failed = value::write_cell(ty, range.map(|r| &buffer[r]), out).map_err(|e| {
            Error::Decode(format!(
                "failed to read column {} ({}): {e}; cast it in SQL, e.g. {}::text",
                column.name,
                ty.name(),
                column.name
            ))
        })?;
        if let Some(flag) = undecoded.get_mut(i) {
            *flag |= failed;
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_seen_once_are_remembered_within_a_bound() {
        let mut seen = Seen::default();
        assert!(!seen.check("SELECT 1"));
        assert!(seen.check("SELECT 1"));
        for i in 0..SEEN_SIZE {
            assert!(!seen.check(&format!("SELECT {i} + 1")));
        }
        assert_eq!(seen.set.len(), SEEN_SIZE);
        assert!(
            !seen.check("SELECT 1"),
            "forgotten after {SEEN_SIZE} others"
        );
    }

    #[test]
    fn the_least_recently_used_statement_is_evicted_and_named_for_closing() {
        let mut statements = Statements::default();
        let prepared = |n: usize| {
            Arc::new(Prepared {
                name: format!("pgmcp_{n}").into(),
                params: Vec::new(),
                columns: Vec::new(),
            })
        };
        for n in 0..STATEMENT_CACHE_SIZE {
            assert_eq!(statements.insert(&format!("SELECT {n}"), prepared(n)), None);
        }
        assert!(statements.get("SELECT 0").is_some(), "used: now the newest");
        let evicted = statements.insert("SELECT new", prepared(1000));
        assert_eq!(evicted.as_deref(), Some("pgmcp_1"));
        assert!(statements.get("SELECT 1").is_none());
        assert_eq!(statements.remove("SELECT 0").as_deref(), Some("pgmcp_0"));
    }

    #[test]
    fn the_row_limit_asks_for_one_more_row_than_the_cap() {
        let caps = |max_rows| Caps {
            max_rows,
            max_bytes: 1,
        };
        assert_eq!(cap(caps(1000)), 1001);
        assert_eq!(cap(caps(usize::MAX)), i32::MAX);
    }
}
