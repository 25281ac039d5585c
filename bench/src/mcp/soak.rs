//! Soak: many sessions of PK lookups against one pgmcp for a while, with PostgreSQL stopped
//! and started again in the middle. Counts answers and errors in 100 ms buckets and samples
//! the server's RSS every second, so the report can say what the restart cost, how fast
//! throughput came back, and whether memory stayed flat.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use pgmcp_tests::Postgres;

use super::client::Session;
use super::procfs;
use super::seed::Seeded;
use super::servers::{Op, Peer};

const BUCKET: Duration = Duration::from_millis(100);
/// A session's pause after a failed call.
pub const ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// The soak goes on at least this long after PostgreSQL accepts connections again…
const AFTER_RESTART: Duration = Duration::from_secs(5);
/// …but never more than this past its planned duration.
const MAX_EXTENSION: Duration = Duration::from_secs(60);

/// What the soak saw.
#[derive(Debug, Clone)]
pub struct SoakResult {
    pub sessions: usize,
    pub duration: Duration,
    pub calls: u64,
    pub errors: u64,
    /// Errors while PostgreSQL was down or coming back (stop → throughput recovered).
    pub errors_in_outage: u64,
    /// Errors before the stop and after recovery (should be 0).
    pub errors_outside_outage: u64,
    /// PostgreSQL stopped (s after start) and accepting again (s after start).
    pub stopped_at: Option<f64>,
    pub restarted_at: Option<f64>,
    /// PostgreSQL accepting again → throughput back at 80 % of its pre-stop mean.
    pub recovery: Option<Duration>,
    /// Calls answered after PostgreSQL accepted connections again.
    pub calls_after_restart: u64,
    /// Calls per second before the stop.
    pub baseline_per_sec: f64,
    /// (seconds since start, VmRSS KiB) once a second.
    pub rss_kib: Vec<(u64, u64)>,
    pub first_error: Option<String>,
}

impl SoakResult {
    /// Highest RSS in the second half over the highest in the first (after 5 s of warm-up).
    pub fn rss_growth(&self) -> f64 {
        let half = self.duration.as_secs() / 2;
        let max_in = |from: u64, to: u64| {
            self.rss_kib
                .iter()
                .filter(|(s, _)| *s >= from && *s < to)
                .map(|(_, k)| *k)
                .max()
                .unwrap_or(0)
        };
        let first = max_in(5, half.max(6));
        let second = max_in(half.max(6), u64::MAX);
        if first == 0 {
            return f64::NAN;
        }
        second as f64 / first as f64
    }
}

/// Runs the soak; `restart_at` (if any) stops PostgreSQL then and starts it again at once.
pub async fn run(
    sessions: Vec<Session>,
    seeded: Arc<Seeded>,
    server_pid: u32,
    duration: Duration,
    postgres: Option<(Arc<Postgres>, Duration)>,
) -> anyhow::Result<SoakResult> {
    let start = Instant::now();
    // The soak lasts `duration`, and at least AFTER_RESTART past PostgreSQL's return (a slow
    // restart on a busy machine must not leave no time to see throughput come back).
    let end_ms = Arc::new(AtomicU64::new(u64::try_from(duration.as_millis())?));
    let running = {
        let end_ms = end_ms.clone();
        move || start.elapsed().as_millis() < u128::from(end_ms.load(Ordering::Relaxed))
    };
    let buckets = usize::try_from((duration + MAX_EXTENSION).as_millis() / BUCKET.as_millis())? + 1;
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..buckets).map(|_| AtomicU64::new(0)).collect());
    let count = sessions.len();
    let mut tasks = Vec::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let (ok, failed, seeded) = (ok.clone(), failed.clone(), seeded.clone());
        let running = running.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = super::load::XorShift::new(1000 + i as u64);
            let mut first_error = None;
            while running() {
                let n = 1 + rng.next_u64() % seeded.accounts.max(1);
                let (method, params) = Peer::Pgmcp.call(Op::PkLookup, n, &seeded);
                let answer = super::load::call(&mut session, method, &params).await;
                let bucket = (start.elapsed().as_millis() / BUCKET.as_millis()) as usize;
                let counters = if answer.is_ok() { &ok } else { &failed };
                if let Some(c) = counters.get(bucket) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(err) = answer {
                    if first_error.is_none() {
                        first_error = Some(err.to_string());
                    }
                    // Like a real client, back off after a failure instead of spinning on
                    // instant refusals while the database is down.
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            first_error
        }));
    }
    let sampling = running.clone();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while sampling() {
            tick.tick().await;
            if let Ok(mem) = procfs::memory(server_pid) {
                samples.push((start.elapsed().as_secs(), mem.rss_kib));
            }
        }
        samples
    });
    let mut stopped_at = None;
    let mut restarted_at = None;
    if let Some((pg, at)) = postgres {
        tokio::time::sleep_until((start + at).into()).await;
        stopped_at = Some(start.elapsed().as_secs_f64());
        let stopping = pg.clone();
        tokio::task::spawn_blocking(move || stopping.stop()).await?;
        pg.restart().await?;
        restarted_at = Some(start.elapsed().as_secs_f64());
        let until = (start.elapsed() + AFTER_RESTART).min(duration + MAX_EXTENSION);
        end_ms.fetch_max(u64::try_from(until.as_millis())?, Ordering::Relaxed);
        eprintln!(
            "soak: PostgreSQL stopped at {:.1}s, accepting again at {:.1}s",
            stopped_at.unwrap_or_default(),
            restarted_at.unwrap_or_default()
        );
    }
    let mut first_error = None;
    for task in tasks {
        if let Some(err) = task.await?
            && first_error.is_none()
        {
            first_error = Some(err);
        }
    }
    let rss_kib = sampler.await?;

    let duration = start.elapsed();
    let used = usize::try_from(duration.as_millis() / BUCKET.as_millis())? + 1;
    let ok: Vec<u64> = ok
        .iter()
        .take(used)
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let failed: Vec<u64> = failed
        .iter()
        .take(used)
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let bucket_of = |secs: f64| (secs / BUCKET.as_secs_f64()) as usize;
    // Baseline: from 2 s in to the stop (or to the end).
    let base_from = bucket_of(2.0).min(ok.len());
    let base_to = stopped_at
        .map_or(ok.len(), bucket_of)
        .clamp(base_from, ok.len());
    let baseline_per_bucket = if base_to > base_from {
        ok[base_from..base_to].iter().sum::<u64>() as f64 / (base_to - base_from) as f64
    } else {
        0.0
    };
    // Recovered: the first 500 ms after the restart averaging ≥ 80 % of the baseline.
    let mut recovery = None;
    let mut outage = None;
    if let (Some(stop), Some(back)) = (stopped_at, restarted_at) {
        let from = bucket_of(back);
        let window = 5;
        let mut at = from;
        while at + window <= ok.len() {
            let mean = ok[at..at + window].iter().sum::<u64>() as f64 / window as f64;
            if mean >= 0.8 * baseline_per_bucket {
                recovery = Some(Duration::from_secs_f64(
                    (at as f64 * BUCKET.as_secs_f64() - back).max(0.0),
                ));
                break;
            }
            at += 1;
        }
        let until = if recovery.is_some() { at } else { ok.len() };
        outage = Some((bucket_of(stop), until));
    }
    let errors: u64 = failed.iter().sum();
    let calls_after_restart = restarted_at.map_or(0, |back| {
        ok[(bucket_of(back) + 1).min(ok.len())..].iter().sum()
    });
    let errors_in_outage = outage.map_or(0, |(from, to)| {
        failed[from.min(failed.len())..to.min(failed.len())]
            .iter()
            .sum()
    });
    Ok(SoakResult {
        sessions: count,
        duration,
        calls: ok.iter().sum(),
        errors,
        errors_in_outage,
        errors_outside_outage: errors - errors_in_outage,
        stopped_at,
        restarted_at,
        recovery,
        calls_after_restart,
        baseline_per_sec: baseline_per_bucket / BUCKET.as_secs_f64(),
        rss_kib,
        first_error,
    })
}
