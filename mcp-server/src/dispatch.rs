//! One request path for every transport.
//!
//! HTTP ([`crate::http`]) and stdio ([`crate::stdio`]) hand every JSON-RPC message they receive
//! to [`Dispatch::handle`], with what the transport knows of it ([`Context`]): the caller, the
//! revision, the session. The answer is one of three: the JSON-RPC answer to send, nothing (a
//! notification, or a request that was cancelled), or "rmcp's": the message goes to rmcp,
//! which serves the rest of the protocol (initialize, tools/list, ping, the 2026-07-28
//! discovery and caching rules) and calls the same tools through [`PgMcpServer`]'s
//! `ServerHandler`.
//!
//! Tool calls, whichever way they come, run through [`PgMcpServer::answer`] with a
//! [`Call`] whose cancellation token reaches PostgreSQL: the statement is stopped with the
//! protocol's CancelRequest and the connection goes back to the pool. Here a call is cancelled
//! by a `notifications/cancelled` for its id (sessions on HTTP, and stdio), or by its HTTP
//! client going away: the call runs in a task of its own, so it outlives the request future
//! hyper drops, stops the statement and returns the connection; a guard in the request future
//! cancels it. rmcp cancels the calls it serves itself, with its own token.
//!
//! Cancellation by notification works on the replica that runs the call: with several replicas
//! and no session affinity, a notification may reach another one, which has nothing to cancel
//! (a client that closes the request's stream still cancels it).

pub(crate) mod fast;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use rmcp::model::{ErrorData, RequestId, ServerJsonRpcMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use fast::Revision;

use crate::auth::Caller;
use crate::server::{Outcome, PgMcpServer};
use crate::tools::Call;
use crate::tools::registry::{ParseError, ToolCall};

/// Where a message came from, as far as answering it needs.
#[derive(Debug, Clone)]
pub struct Context {
    pub revision: Revision,
    /// The conversation that `notifications/cancelled` refer to: an HTTP session id, or one
    /// stdio connection. `None` for stateless requests, which are cancelled by closing them.
    pub conversation: Option<Arc<str>>,
    /// Who asked (authenticated HTTP requests).
    pub caller: Option<Caller>,
}

/// What a message is, for the transport.
#[derive(Debug)]
pub enum Route {
    /// A tool call: [`Pending::answer`] runs it. It can be cancelled from the moment it is
    /// routed.
    Call(Box<Pending>),
    /// The answer, ready now (a call of no tool, arguments that do not fit).
    Answer(Vec<u8>),
    /// A notification, acted on: nothing to send.
    Done,
    /// rmcp serves it.
    Rmcp,
}

/// Calls in flight that a notification can cancel, by conversation and request id.
type InFlight = HashMap<(Arc<str>, RequestId), CancellationToken>;

/// The one entry point for messages (see the module documentation).
#[derive(Debug, Clone)]
pub struct Dispatch {
    server: PgMcpServer,
    in_flight: Arc<Mutex<InFlight>>,
}

impl Dispatch {
    pub fn new(server: PgMcpServer) -> Self {
        Dispatch {
            server,
            in_flight: Arc::default(),
        }
    }

    /// What `message` is (`headers`: the HTTP request's, empty on stdio).
    pub fn route(&self, message: &[u8], headers: &HeaderMap, context: &Context) -> Route {
        if let Some(call) = fast::parse(message, context.revision, headers) {
            let answer = match ToolCall::parse(&call.name, call.arguments) {
                Ok(tool) => {
                    return Route::Call(Box::new(self.pending(tool, call.id, call.trace, context)));
                }
                Err(err @ ParseError::Arguments(_)) => {
                    fast::reply(&call.id, &Outcome::error(err.to_string()), context.revision)
                }
                Err(err @ ParseError::UnknownTool) => {
                    serde_json::to_vec(&ServerJsonRpcMessage::error(
                        ErrorData::invalid_params(err.to_string(), None),
                        Some(call.id),
                    ))
                }
            };
            return match answer {
                Ok(answer) => Route::Answer(answer),
                Err(err) => {
                    tracing::error!(error = %err, "failed to encode an answer");
                    Route::Done
                }
            };
        }
        if let Some(conversation) = &context.conversation
            && let Some(id) = fast::cancelled(message)
        {
            let token = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&(conversation.clone(), id));
            if let Some(token) = token {
                token.cancel();
                return Route::Done;
            }
        }
        Route::Rmcp
    }

    /// `tool`, registered as in flight when a notification may cancel it.
    fn pending(
        &self,
        tool: ToolCall,
        id: RequestId,
        trace: Option<crate::telemetry::MetaTrace>,
        context: &Context,
    ) -> Pending {
        let token = CancellationToken::new();
        let key = context.conversation.as_ref().map(|conversation| {
            let key = (conversation.clone(), id.clone());
            self.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.clone(), token.clone());
            key
        });
        Pending {
            server: self.server.clone(),
            tool,
            id,
            revision: context.revision,
            call: Call::new(token.clone(), context.caller.clone()).with_trace(trace),
            registration: Registration {
                in_flight: self.in_flight.clone(),
                key,
                token,
                finished: false,
            },
        }
    }
}

/// A routed tool call, not run yet.
#[derive(Debug)]
pub struct Pending {
    server: PgMcpServer,
    tool: ToolCall,
    id: RequestId,
    revision: Revision,
    call: Call,
    registration: Registration,
}

impl Pending {
    /// Runs the call in a task of its own and returns its JSON-RPC answer; `None` when it was
    /// cancelled (nothing is sent then). Dropping the future before it finishes cancels the
    /// call.
    pub async fn answer(self: Box<Self>) -> Option<Vec<u8>> {
        let Pending {
            server,
            tool,
            id,
            revision,
            call,
            mut registration,
        } = *self;
        let token = call.cancel.clone();
        // In the request's span (HTTP), so the call's span is its child.
        let outcome = tokio::spawn(
            async move { server.answer(tool, &call).await }.instrument(tracing::Span::current()),
        )
        .await;
        registration.finished = true;
        drop(registration);
        if token.is_cancelled() {
            return None;
        }
        let outcome = outcome.unwrap_or_else(|err| {
            tracing::error!(error = %err, "a tool call panicked");
            Outcome::error("internal error: the call failed; see the server's log".to_owned())
        });
        fast::reply(&id, &outcome, revision)
            .inspect_err(|err| tracing::error!(error = %err, "failed to encode an answer"))
            .ok()
    }
}

/// A call's place in [`InFlight`], given up when its answer is ready or its future dropped; if
/// dropped before the call finished (the HTTP client went away), the call is cancelled.
#[derive(Debug)]
struct Registration {
    in_flight: Arc<Mutex<InFlight>>,
    key: Option<(Arc<str>, RequestId)>,
    token: CancellationToken,
    finished: bool,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        if !self.finished {
            self.token.cancel();
        }
    }
}
