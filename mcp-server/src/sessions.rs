//! MCP sessions that any replica can serve.
//!
//! Clients on the 2025-11-25 revision get an `Mcp-Session-Id` at `initialize` and send it with
//! every request. rmcp keeps sessions in memory, so behind a Service without affinity the next
//! request may reach a replica that never saw the session. pgmcp sessions hold nothing a
//! request depends on — every tool call is self-contained and callers authenticate on each
//! request — so every replica accepts a well-formed session id it did not issue: this store
//! "restores" it with neutral client parameters instead of answering 404. Requests on the
//! 2026-07-28 revision are stateless anyway.

use rmcp::model::{ClientCapabilities, Implementation, InitializeRequestParams, ProtocolVersion};
use rmcp::transport::streamable_http_server::session::store::{
    SessionState, SessionStore, SessionStoreError,
};

/// Restores any session id that rmcp could have issued (a UUID).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplicaSessions;

#[async_trait::async_trait]
impl SessionStore for ReplicaSessions {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        if uuid::Uuid::parse_str(session_id).is_err() {
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

    async fn delete(&self, _: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_well_formed_session_ids_are_restored() {
        let store = ReplicaSessions;
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
}
