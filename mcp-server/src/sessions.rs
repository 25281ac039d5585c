//! MCP sessions that any replica can serve.
//!
//! Clients on the 2025-11-25 revision get an `Mcp-Session-Id` at `initialize` and send it with
//! every request. rmcp keeps sessions in memory, so behind a Service without affinity the next
//! request may reach a replica that never saw the session. pgmcp sessions hold nothing a
//! request depends on — every tool call is self-contained and callers authenticate on each
//! request — so every replica accepts a well-formed session id it did not issue: this store
//! "restores" it with neutral client parameters instead of answering 404. Requests on the
//! 2026-07-28 revision are stateless anyway.
//!
//! A session the client terminated (`DELETE /mcp`) is remembered, and requests naming it get
//! 404, as the specification requires — on the replica that received the DELETE. Another
//! replica does not know of it and still serves the id: replicas share no state, and a
//! terminated session holds nothing a request could reach (the caller authenticates every
//! request). The memory is bounded ([`REMEMBERED`] ids, the oldest forgotten first).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use rmcp::model::{ClientCapabilities, Implementation, InitializeRequestParams, ProtocolVersion};
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

/// Terminated session ids remembered (16 bytes each, twice).
pub const REMEMBERED: usize = 100_000;

/// Restores any session id that rmcp could have issued (a UUID), unless it was terminated here.
#[derive(Debug, Default, Clone)]
pub struct ReplicaSessions {
    terminated: Arc<Mutex<Terminated>>,
}

#[derive(Debug, Default)]
struct Terminated {
    ids: HashSet<uuid::Uuid>,
    order: VecDeque<uuid::Uuid>,
}

impl ReplicaSessions {
    /// Whether `session_id` was terminated on this replica.
    pub fn is_terminated(&self, session_id: &[u8]) -> bool {
        uuid::Uuid::try_parse_ascii(session_id).is_ok_and(|id| {
            self.terminated
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .ids
                .contains(&id)
        })
    }
}

#[async_trait::async_trait]
impl SessionStore for ReplicaSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        if uuid::Uuid::parse_str(session_id).is_err() || self.is_terminated(session_id.as_bytes()) {
            return Ok(None);
        }
        let params = InitializeRequestParams::new(
            ClientCapabilities::default(),
            Implementation::new("session-from-another-replica", "0"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25);
        Ok(Some(SessionState::new(params)))
    }

    async fn store(&self, _: &str, _: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    /// rmcp calls this for `DELETE /mcp` only.
    async fn delete(&self, session_id: &str) -> Result<(), SessionStoreError> {
        let Ok(id) = uuid::Uuid::parse_str(session_id) else {
            return Ok(());
        };
        let mut terminated = self
            .terminated
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if terminated.ids.insert(id) {
            terminated.order.push_back(id);
            if terminated.order.len() > REMEMBERED
                && let Some(oldest) = terminated.order.pop_front()
            {
                terminated.ids.remove(&oldest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_well_formed_session_ids_are_restored() {
        let store = ReplicaSessions::default();
        assert!(
            store
                .load("6f1c2f8e-8a4e-4c1b-9a59-0c7f0b1c2d3e")
                .await
                .unwrap()
                .is_some()
        );
        assert!(store.load("not-a-session").await.unwrap().is_none());
        assert!(store.load("").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_terminated_session_is_not_restored() {
        let store = ReplicaSessions::default();
        let id = "6f1c2f8e-8a4e-4c1b-9a59-0c7f0b1c2d3e";
        store.delete(id).await.unwrap();
        assert!(store.load(id).await.unwrap().is_none());
        assert!(store.is_terminated(id.as_bytes()));
        let other = "7f1c2f8e-8a4e-4c1b-9a59-0c7f0b1c2d3e";
        assert!(store.load(other).await.unwrap().is_some());
    }
}
