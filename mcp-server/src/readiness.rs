//! Whether the server can run tool calls yet: the state of the start-up sequence
//! ([`crate::startup::run`]), which writes it, read by `/readyz` and by every tool call. No I/O
//! here.

use std::sync::Arc;

use tokio::sync::watch;

/// Where the start-up sequence is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The first attempt (database token, role check) is running: tool calls wait for it.
    Starting,
    /// An attempt failed in a way that can pass by itself (Entra refusing a federated
    /// credential that is still propagating, Entra or the database unreachable). The sentence
    /// names who and why, and says that the server retries. Tool calls fail at once with it.
    Waiting(Arc<str>),
    /// The role check passed: tool calls run.
    Ready,
}

/// The start-up state, shared: clones see the same state.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<watch::Sender<State>>);

impl Readiness {
    /// Before the first attempt.
    pub fn starting() -> Self {
        Self(Arc::new(watch::Sender::new(State::Starting)))
    }

    /// Ready from the start (a [`crate::tools::Tools`] built without a start-up sequence).
    pub fn ready() -> Self {
        Self(Arc::new(watch::Sender::new(State::Ready)))
    }

    pub fn state(&self) -> State {
        self.0.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow() == State::Ready
    }

    pub fn set(&self, state: State) {
        self.0.send_replace(state);
    }

    /// Waits for the outcome of the first attempt: `Ok` once ready, the reason while waiting.
    pub async fn past_start(&self) -> Result<(), Arc<str>> {
        let mut state = self.0.subscribe();
        // The sender lives in `self`: waiting cannot fail because it was dropped.
        let outcome = state.wait_for(|s| *s != State::Starting).await;
        match outcome.as_deref() {
            Ok(State::Waiting(reason)) => Err(reason.clone()),
            Ok(_) | Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_call_made_while_starting_waits_for_the_first_attempt_then_gets_its_outcome() {
        let readiness = Readiness::starting();
        let waiting = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.past_start().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        readiness.set(State::Waiting("Entra refused".into()));
        assert_eq!(waiting.await.unwrap(), Err("Entra refused".into()));

        assert_eq!(
            readiness.past_start().await,
            Err("Entra refused".into()),
            "while waiting, a call fails at once"
        );
        readiness.set(State::Ready);
        assert!(readiness.is_ready());
        assert_eq!(readiness.past_start().await, Ok(()));
        assert!(Readiness::ready().is_ready());
    }
}
