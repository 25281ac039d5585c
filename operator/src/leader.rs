//! Leader election: the controller runs only while this replica holds the Lease.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::{self, Options};
use crate::metrics::Metrics;
use crate::settings::Args;

/// Why leader election ended the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to set up leader election with Lease {lease}")]
    Setup {
        /// `namespace/name`.
        lease: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error(
        "lost the leader Lease to another replica; exiting so a restart begins from a clean state"
    )]
    Lost,
}

/// Waits for the Lease, runs the controller while holding it, releases it on shutdown. Losing
/// the Lease ends the process: a restart begins from a clean state, as controller-runtime does.
pub(crate) async fn run_as_leader(
    client: &Client,
    args: &Args,
    identity: String,
    options: Options,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let duration = args.lease_duration.as_secs().max(2);
    let lease = format!("{namespace}/{}", args.lease_name);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .map_err(|source| Error::Setup {
            lease: lease.clone(),
            source,
        })?;
    let (mut leader, lease_task) = hold_lease(manager, lease.clone());
    tracing::info!(%lease, "waiting for the leader Lease");
    let became_leader = loop {
        if *leader.borrow_and_update() {
            break true;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { break false },
            () = shutdown.cancelled() => break false,
        }
    };
    let mut lost = false;
    if became_leader {
        metrics.set_leader(true);
        tracing::info!("acquired the leader Lease; reconciling");
        let lost_lease = async {
            while leader.changed().await.is_ok() {
                if !*leader.borrow_and_update() {
                    break;
                }
            }
        };
        tokio::select! {
            () = controller::run(client.clone(), options, metrics.clone(), shutdown.clone()) => {}
            () = lost_lease => lost = true,
        }
        metrics.set_leader(false);
    }
    // Closing the channel makes the lease task release the Lease, so a standby takes over
    // without waiting for it to expire.
    drop(leader);
    match lease_task.await {
        Ok(Ok(())) => tracing::info!("released the leader Lease"),
        Ok(Err(err)) => tracing::warn!(error = %err, "failed to release the leader Lease"),
        Err(err) => tracing::warn!(error = %err, "leader election task failed"),
    }
    if lost {
        return Err(Error::Lost);
    }
    Ok(())
}

/// Keeps trying to acquire, then renew, the Lease, and publishes whether this replica holds it;
/// releases it once the receiver is dropped.
///
/// kube-lease-manager's own `watch()` waits 1 s doubling to 30 s after a failed call and starts
/// over only when leadership changes, so each apiserver outage in the life of a leader left it
/// slower to renew after the next one: up to 30 s, twice the default 15 s Lease, during which a
/// standby could take the Lease while this replica still reconciled. Here a failed call is
/// retried after 1 to 2 s, as client-go's leader election does (RetryPeriod, 2 s). A Lease that
/// expired during an outage is still ours if no other replica took it: the next renewal keeps
/// it, and the process keeps running.
fn hold_lease(
    manager: LeaseManager,
    lease: String,
) -> (
    watch::Receiver<bool>,
    JoinHandle<Result<(), LeaseManagerError>>,
) {
    let (sender, receiver) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = sender.closed() => break,
                changed = manager.changed() => match changed {
                    Ok(leader) => {
                        sender.send_replace(leader);
                    }
                    Err(err) => {
                        tracing::warn!(%lease, error = %err, "failed to read or renew the leader Lease; retrying");
                        tokio::select! {
                            () = sender.closed() => break,
                            () = tokio::time::sleep(lease_retry_delay()) => {}
                        }
                    }
                },
            }
        }
        manager.release().await
    });
    (receiver, task)
}

/// 1 to 2 s, at random, so replicas that failed together do not retry together.
fn lease_retry_delay() -> Duration {
    let jitter = getrandom::u32().unwrap_or(0) % 1000;
    Duration::from_millis(1000 + u64::from(jitter))
}
