//! One connection's statements: the read-only pipeline, the statements kept prepared, the
//! answers read into capped JSON rows, and cancellation while answers are awaited.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher as _, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator as _;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use postgres_types::Type;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cancel::CancelHandle;
use crate::error::{bind_error, db_error, encode, lost, parse, unsendable};
use crate::stream::Io;
use crate::types::{self, PgType, TypeCache};
use crate::value::{self, Param};
use crate::{Caps, Column, Error, JsonRows, Rows};

/// Prepared statements kept per connection; the least recently used one is closed first.
const STATEMENT_CACHE_SIZE: usize = 64;

/// Statements without parameters remembered as seen once (by hash), to prepare those that
/// come back.
const SEEN_SIZE: usize = 256;

/// The prepared `BEGIN READ ONLY` every pipeline starts with.
const BEGIN: &str = "pgmcp_begin";

/// The prepared switch to a statement's [`Identity`]: `SET LOCAL ROLE` and the caller's claims,
/// both ended by the transaction. `set_config('role', …)` is what `SET LOCAL ROLE` does, with
/// the name as a parameter instead of quoted into SQL.
const ACT_AS: &str = "pgmcp_act_as";
const ACT_AS_SQL: &str =
    "SELECT set_config('role', $1, true), set_config('pgmcp.caller', $2, true)";

/// The prepared check, after the statement, that it still ran as its [`Identity`]: a row means
/// something in the statement (a function calling `set_config` or `SET ROLE`) changed the role
/// or the claims.
const STILL_AS: &str = "pgmcp_still_as";
const STILL_AS_SQL: &str = "SELECT 1 WHERE current_user::text IS DISTINCT FROM $1 \
     OR current_setting('pgmcp.caller', true) IS DISTINCT FROM $2";

/// Text, for the parameters of [`ACT_AS`] and [`STILL_AS`].
const TEXT_OID: u32 = 25;

// ---------------------------------------------------------------------------------------------
// Statements.

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

// ---------------------------------------------------------------------------------------------
// Running statements.

/// A connection that runs statements read-only ([`Connection::run`]), one at a time.
#[derive(Debug)]
pub struct Connection {
    io: Io,
    statements: Statements,
    seen: Seen,
    /// Prepared statements to close with the next pipeline.
    close: Vec<Box<str>>,
    next_name: u64,
    /// Set while a round trip is out and not fully answered, or a transaction was left open.
    /// A call dropped in between leaves the connection in an unknown state: a pool discards it.
    busy: bool,
    types: Arc<TypeCache>,
    cancel: CancelHandle,
    /// Pipelines sent, login excluded.
    round_trips: u64,
}

/// One statement to run read-only.
#[derive(Debug, Clone, Copy)]
pub struct Statement<'a> {
    pub sql: &'a str,
    pub params: &'a [Value],
    pub caps: Caps,
    /// Lower than the session's statement_timeout for this statement only.
    pub timeout: Option<Duration>,
    /// Run as this role, with these claims readable (`current_setting('pgmcp.caller', true)`),
    /// for this statement only.
    pub identity: Option<Identity<'a>>,
}

/// Whom a statement runs as: a role the session's user is a member of (`SET LOCAL ROLE`), and
/// the verified claims of the caller it runs for, in the setting `pgmcp.caller`. Both are set
/// inside the statement's transaction, in the same pipeline (no round trip of their own), and
/// end with it; after the statement the pipeline checks that both are still what was set
/// ([`Error::IdentityChanged`] otherwise, and no row is returned).
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    pub role: &'a str,
    pub claims: &'a str,
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
    /// Commands of the pipeline completed so far (BEGIN, `SET LOCAL`, the identity switch, the
    /// statement, the identity check): which one a DataRow or an error belongs to.
    completed: usize,
    /// The commands before the statement.
    preamble: usize,
    /// The first error came from the identity switch.
    identity_refused: bool,
    /// The identity check after the statement returned a row.
    identity_changed: bool,
}

/// The caller's cancellation, watched while one round trip's answers are awaited.
struct Watch<'a> {
    token: Option<&'a CancellationToken>,
    /// The CancelRequest went out: the rest of the answers are read without watching.
    requested: bool,
}

impl<'a> Watch<'a> {
    fn new(token: &'a CancellationToken) -> Self {
        Watch {
            token: Some(token),
            requested: false,
        }
    }

    /// The connection's own round trips, which nobody cancels.
    fn none() -> Self {
        Watch {
            token: None,
            requested: false,
        }
    }
}

impl Connection {
    /// A logged-in session made ready: the statement every pipeline starts with is prepared.
    pub(crate) async fn start(
        io: Io,
        types: Arc<TypeCache>,
        cancel: CancelHandle,
    ) -> Result<Self, Error> {
        let mut connection = Connection {
            io,
            statements: Statements::default(),
            seen: Seen::default(),
            close: Vec::new(),
            next_name: 0,
            busy: false,
            types,
            cancel,
            round_trips: 0,
        };
        let write = &mut connection.io.write;
        frontend::parse(BEGIN, "BEGIN READ ONLY", None, write).map_err(encode)?;
        frontend::parse(ACT_AS, ACT_AS_SQL, [TEXT_OID, TEXT_OID], write).map_err(encode)?;
        frontend::parse(STILL_AS, STILL_AS_SQL, [TEXT_OID, TEXT_OID], write).map_err(encode)?;
        frontend::sync(write);
        connection.send().await?;
        connection.until_ready().await?;
        Ok(connection)
    }

    /// Whether the connection may be used again: no round trip left half-answered, no
    /// transaction left open.
    pub fn is_settled(&self) -> bool {
        !self.busy
    }

    /// How many times the connection has sent something and waited for the answer, since it
    /// logged in: one per statement once prepared, whatever the statement carries.
    pub fn round_trips(&self) -> u64 {
        self.round_trips
    }

    /// Cancels what this connection runs, from anywhere ([`Connection::run`] does it itself
    /// when its token fires).
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Reads up to the next ReadyForQuery; the first error PostgreSQL reported is the result.
    async fn until_ready(&mut self) -> Result<(), Error> {
        let mut error = None;
        loop {
            match self.next(&mut Watch::none()).await? {
                Message::ReadyForQuery(body) => {
                    self.settle(body.status());
                    break;
                }
                Message::ErrorResponse(body) => {
                    error.get_or_insert_with(|| db_error(&body));
                }
                _ => {}
            }
        }
        error.map_or(Ok(()), Err)
    }

    /// The session's transaction status from ReadyForQuery: idle (`I`) is settled; in a
    /// transaction (`T`) or a failed one (`E`) is not.
    fn settle(&mut self, status: u8) {
        self.busy = status != b'I';
    }

    /// Runs `statement` in a read-only transaction and returns at most its caps of rows.
    ///
    /// `cancel` stops it. Already cancelled: nothing is sent. Cancelled while answers are
    /// awaited: the CancelRequest goes out ([`CancelHandle::cancel`]), the answers are read on
    /// to the end of the pipeline, and the result is [`Error::Cancelled`] with the connection
    /// settled, ready for the next statement. Only the waits are watched, reading first: answers
    /// already there are taken as they are. The races, and why each is harmless:
    /// - The statement finished before the request reached the session: PostgreSQL ignores a
    ///   cancel that finds the session idle, and the request was passed on before this
    ///   returns (the server closed the cancel connection), so it cannot reach a later
    ///   statement.
    /// - The request reached the pipeline's ROLLBACK: that ROLLBACK fails and the session stays
    ///   in the aborted transaction; ReadyForQuery says so, and one more ROLLBACK ends it
    ///   before this returns.
    /// - It reached BEGIN or `SET LOCAL`: everything up to Sync is skipped as after any error,
    ///   and ROLLBACK runs as always. It reached the prepare round trip of a statement with
    ///   parameters: that statement is closed with the next pipeline.
    /// - A CancelRequest stops only what its own session runs: never another connection's
    ///   statement.
    /// - The request could not be sent (the server unreachable): the call returns `Cancelled`
    ///   at once, and the connection, left mid-answer, is not settled, as when the future is
    ///   dropped: a pool discards it.
    pub async fn run(
        &mut self,
        statement: Statement<'_>,
        cancel: &CancellationToken,
    ) -> Result<Rows, Error> {
        let started = Instant::now();
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let plan = self.plan(statement, cancel).await?;
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        self.pipeline(&plan, statement)?;
        self.send().await?;
        let mut watch = Watch::new(cancel);
        let mut answer = self.answers(&plan, statement, &mut watch).await?;
        self.keep_or_close(&plan, &answer, statement);
        if !self.is_settled() {
            self.roll_back().await?;
        }
        if watch.requested {
            return Err(Error::Cancelled);
        }
        if answer.parameters > statement.params.len() && answer.error.is_some() {
            // `$1` in the SQL and no value for it: PostgreSQL refused the Bind.
            return Err(Error::ParamCount {
                expected: answer.parameters,
                got: statement.params.len(),
            });
        }
        if let Some(error) = answer.error.take() {
            if let (true, Some(identity), Error::Sql(sql)) =
                (answer.identity_refused, statement.identity, &error)
            {
                return Err(Error::Identity {
                    role: identity.role.to_owned(),
                    cause: Box::new(sql.clone()),
                });
            }
            if let (Plan::Cached(_), Error::Sql(sql)) = (&plan, &error)
                && sql.is_stale_plan()
                && let Some(name) = self.statements.remove(statement.sql)
            {
                // Prepared again on the next attempt.
                self.close.push(name);
            }
            return Err(error);
        }
        if answer.identity_changed {
            return Err(Error::IdentityChanged);
        }
        if let Some(error) = answer.decode_error.take() {
            return Err(error);
        }
        if answer.columns.iter().any(|c| c.ty.is_none()) {
            self.resolve_columns(&mut answer, statement.caps, cancel)
                .await?;
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
    async fn plan(
        &mut self,
        statement: Statement<'_>,
        cancel: &CancellationToken,
    ) -> Result<Plan, Error> {
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
        let write = &mut self.io.write;
        let start = write.len();
        if let Err(err) = frontend::parse(&name, statement.sql, None, write) {
            write.truncate(start);
            return Err(unsendable(err));
        }
        frontend::describe(b'S', &name, write).map_err(encode)?;
        frontend::sync(write);
        self.send().await?;
        let mut params = Vec::new();
        let mut columns = Vec::new();
        let mut error = None;
        let mut watch = Watch::new(cancel);
        loop {
            match self.next(&mut watch).await? {
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
                Message::ReadyForQuery(body) => {
                    self.settle(body.status());
                    break;
                }
                _ => {}
            }
        }
        if watch.requested {
            self.close.push(name);
            return Err(Error::Cancelled);
        }
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
        self.resolve_types(&oids, cancel).await?;
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
            let _ = frontend::close(b'S', &name, &mut self.io.write);
        }
    }

    /// Writes the pipeline: [Close…] BEGIN READ ONLY, [SET LOCAL statement_timeout], [the
    /// identity switch], [Parse] Bind [Describe] Execute(max_rows + 1), [the identity check],
    /// Sync, then ROLLBACK as a simple query, which runs whether or not the statement failed. Any error before the Sync skips the rest up to it,
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
        let start = self.io.write.len();
        let written = write_pipeline(&mut self.io.write, plan, statement, &bound);
        if written.is_err() {
            self.io.write.truncate(start);
        }
        written
    }

    /// Reads the pipeline's answers: up to the ReadyForQuery of its Sync, then that of
    /// ROLLBACK.
    async fn answers(
        &mut self,
        plan: &Plan,
        statement: Statement<'_>,
        watch: &mut Watch<'_>,
    ) -> Result<Answer, Error> {
        let mut answer = Answer {
            preamble: 1
                + usize::from(statement.timeout.is_some())
                + usize::from(statement.identity.is_some()),
            ..Answer::default()
        };
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
        let mut status = b'I';
        while ready < 2 {
            let message = match self.next(watch).await {
                Ok(message) => message,
                // A session that ends says why before it closes (terminated, shutting down).
                Err(Error::ConnectionLost(closed)) => {
                    return Err(match answer.error {
                        Some(lost @ Error::ConnectionLost(_)) => lost,
                        _ => Error::ConnectionLost(closed),
                    });
                }
                Err(error) => return Err(error),
            };
            match message {
                Message::ReadyForQuery(body) => {
                    ready += 1;
                    status = body.status();
                }
                // The identity switch's row, and the check's when something changed it.
                Message::DataRow(_) if answer.completed < answer.preamble => {}
                Message::DataRow(_) if answer.completed > answer.preamble => {
                    answer.identity_changed = true;
                }
                Message::DataRow(row) => answer.row(row, statement.caps),
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {
                    answer.completed += 1;
                }
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
                    answer.completed += 1;
                    answer.truncated_by.get_or_insert("max_rows");
                }
                Message::ParseComplete => answer.parsed += 1,
                Message::ParameterDescription(body) => {
                    answer.parameters = body.parameters().count().map_err(parse)?;
                }
                // The statement's error, or (after the Sync) ROLLBACK's in a broken session.
                Message::ErrorResponse(body) if answer.error.is_none() => {
                    answer.identity_refused =
                        statement.identity.is_some() && answer.completed == answer.preamble - 1;
                    answer.error = Some(db_error(&body));
                }
                _ => {}
            }
        }
        self.settle(status);
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
    async fn resolve_columns(
        &mut self,
        answer: &mut Answer,
        caps: Caps,
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
        let oids: Vec<u32> = answer.columns.iter().map(|c| c.oid).collect();
        self.resolve_types(&oids, cancel).await?;
        for column in &mut answer.columns {
            column.ty = Some(self.types.get(column.oid).unwrap_or(Type::UNKNOWN));
        }
        // Kept within max_rows as they came (a truncation by max_rows is already noted).
        for row in std::mem::take(&mut answer.raw) {
            if !answer.write_row(&row, caps) {
                break;
            }
        }
        Ok(())
    }

    /// Describes the types in `oids` that are neither built in nor known yet, from `pg_type`
    /// (enums, domains, arrays of them, extension types; base and element types too).
    async fn resolve_types(
        &mut self,
        oids: &[u32],
        cancel: &CancellationToken,
    ) -> Result<(), Error> {
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
            let sql = types::describe(&wanted);
            // Only built-in column types here, so this does not come back.
            let statement = Statement {
                sql: &sql,
                params: &[],
                caps: Caps {
                    max_rows: 10_000,
                    max_bytes: usize::MAX,
                },
                timeout: None,
                identity: None,
            };
            let described = Box::pin(self.run(statement, cancel)).await?;
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

    /// Ends a transaction the pipeline's ROLLBACK did not end (a cancel that reached the
    /// ROLLBACK itself): the next pipeline must start outside any transaction.
    async fn roll_back(&mut self) -> Result<(), Error> {
        frontend::query("ROLLBACK", &mut self.io.write).map_err(encode)?;
        self.send().await?;
        self.until_ready().await
    }

    async fn send(&mut self) -> Result<(), Error> {
        self.busy = true;
        self.round_trips += 1;
        self.io.send().await.map_err(lost)
    }

    /// The next message. While it waits for the socket, a fired `watch` sends the
    /// CancelRequest, once; the answers are then read on as usual.
    async fn next(&mut self, watch: &mut Watch<'_>) -> Result<Message, Error> {
        loop {
            if let Some(message) = self.io.parse().map_err(parse)? {
                return Ok(message);
            }
            let read = match watch.token {
                Some(token) if !watch.requested => tokio::select! {
                    biased;
                    read = self.io.fill() => read,
                    () = token.cancelled() => {
                        watch.requested = true;
                        // Boxed: a new connection's future (TCP, TLS) is large, and every
                        // call would carry it for the rare one that cancels.
                        if let Err(error) = Box::pin(self.cancel.cancel()).await {
                            // The statement runs on (to its timeout at most); the caller
                            // stops waiting, and the connection, mid-answer, is discarded.
                            tracing::warn!(%error, "failed to cancel a statement");
                            return Err(Error::Cancelled);
                        }
                        continue;
                    }
                },
                _ => self.io.fill().await,
            };
            if read.map_err(lost)? == 0 {
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

    /// Appends `row` as a JSON array, unless it would take the rows past `max_bytes` or
    /// cannot be decoded; whether it did.
    fn write_row(&mut self, row: &DataRowBody, caps: Caps) -> bool {
        let start = self.json.len();
        self.json
            .push(if self.row_count == 0 { b'[' } else { b',' });
        let begin = self.json.len();
        if let Err(error) = encode_row(&self.columns, row, &mut self.undecoded, &mut self.json) {
            self.json.truncate(start);
            self.decode_error = Some(error);
            return false;
        }
        let size = self.json.len() - begin;
        if self.bytes + size > caps.max_bytes {
            self.json.truncate(start);
            self.truncated_by = Some("max_bytes");
            return false;
        }
        self.bytes += size;
        self.row_count += 1;
        true
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
    if let Some(identity) = statement.identity {
        bind_text(write, ACT_AS, identity)?;
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
    if let Some(identity) = statement.identity {
        bind_text(write, STILL_AS, identity)?;
        frontend::execute("", 0, write).map_err(encode)?;
    }
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

/// Bind of [`ACT_AS`] or [`STILL_AS`] with the identity's role and claims, as text.
fn bind_text(write: &mut BytesMut, statement: &str, identity: Identity<'_>) -> Result<(), Error> {
    frontend::bind(
        "",
        statement,
        Some(0),
        [identity.role, identity.claims],
        |value, buf| {
            buf.extend_from_slice(value.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        },
        Some(1),
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
