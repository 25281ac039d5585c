//! How the controller's watches wait after an error: one place for the retry delays of the
//! binding watch, the six child watches and the controller that merges them. No Client here.
//!
//! Each watch backs off on its own ([`backoff`]) and the controller adds no delay of its own
//! ([`NoSharedDelay`]). With kube's defaults two backoffs were stacked, each 0.8 s doubling to
//! 30 s plus up to 100 % jitter: `default_backoff()` on every watch, and the controller's
//! trigger backoff over all seven merged. The shared one counted every watch's failures and,
//! while it slept, none of the seven was polled. After a kube-apiserver crash each watch then
//! failed once more (410 Gone: resuming from the old resourceVersion, older than the restarted
//! apiserver's watch cache) and each of those seven failures re-armed the shared delay at its
//! maximum, one watch per wake-up: a binding created after the restart was reconciled 306 s
//! after the apiserver was ready again (2 to 8 s with these delays).

use std::time::Duration;

use kube::runtime::utils::Backoff;
use kube::runtime::watcher::ExponentialBackoff;

/// First retry delay after a watch fails.
const MIN_DELAY: Duration = Duration::from_millis(500);
/// Longest retry delay before jitter; with jitter (up to 100 %) a retry comes at most 4 s after
/// the previous failure. Two retries (the reconnect, then the re-list after 410 Gone) fit well
/// within 15 s of the apiserver's return, and a watch that keeps failing costs the apiserver one
/// request every 2 to 4 s, not a hot loop (client-go waits up to 30 s, for watches of every
/// object of a kind; ours are of our own bindings and of children carrying our label).
///
/// 410 Gone keeps its delay although a re-list is the normal answer to it: a re-list served
/// from a lagging watch cache (another apiserver behind a load balancer) can meet 410 again, and
/// without a delay that would be a loop of LISTs.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// The retry delays of one watch: 0.5 s doubling to 2 s, each plus 0–100 % jitter so that
/// watches (and operators) that failed together do not retry together. Starts over after any
/// event the watch delivers.
pub fn backoff() -> impl Backoff {
    ExponentialBackoff::from(
        backon::ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
    )
}

/// The controller's delay after an error from any of its watches: none, since each watch already
/// waits with [`backoff`]. Every stream handed to the controller must carry that backoff.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSharedDelay;

impl Iterator for NoSharedDelay {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoSharedDelay {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_watch_retries_within_4_seconds_but_not_in_a_hot_loop() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert!(
            delays[0] >= MIN_DELAY && delays[0] < MIN_DELAY * 2,
            "{delays:?}"
        );
        for delay in &delays {
            assert!(*delay >= MIN_DELAY && *delay < MAX_DELAY * 2, "{delays:?}");
        }
        for delay in &delays[2..] {
            assert!(*delay >= MAX_DELAY, "{delays:?}");
        }
    }

    #[test]
    fn a_backoff_starts_over_after_a_success() {
        let mut backoff = backoff();
        for _ in 0..10 {
            backoff.next();
        }
        backoff.reset();
        assert!(backoff.next().is_some_and(|d| d < MIN_DELAY * 2));
    }
}
