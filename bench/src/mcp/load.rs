//! Closed-loop load: N sessions each issue one call after the other for warm-up + measured
//! time; only calls that finish inside the measured window count. Around the window it reads
//! the server's and its own CPU time, so CPU per call and the generator's share are known.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{CallError, Session};
use super::procfs;
use super::seed::Seeded;
use super::servers::{Op, Peer};

/// Latencies and counts of one op at one concurrency.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub calls: u64,
    pub errors: u64,
    pub window: Duration,
    /// Sorted latencies of the successful calls, in microseconds.
    pub latencies_us: Vec<u32>,
    pub server_cpu: Duration,
    pub generator_cpu: Duration,
    pub first_error: Option<String>,
}

impl Measured {
    pub fn calls_per_sec(&self) -> f64 {
        self.calls as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// Latency percentile `p` (0..=100) in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    /// Server CPU per answered call, in microseconds.
    pub fn server_cpu_per_call_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.calls.max(1) as f64)
    }

    /// The generator's CPU as a share of one core over the window.
    pub fn generator_cores(&self) -> f64 {
        self.generator_cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }
}

/// Runs `op` on every session for `warmup` + `duration` and measures the last `duration`.
pub async fn run(
    sessions: &mut Vec<Session>,
    peer: Peer,
    op: Op,
    seeded: &Arc<Seeded>,
    server_pid: u32,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let begin = Instant::now();
    let window_start = begin + warmup;
    let window_end = window_start + duration;
    let mut tasks = Vec::new();
    for (i, mut session) in sessions.drain(..).enumerate() {
        let seeded = seeded.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = XorShift::new(i as u64 + 1);
            let mut out = Measured::default();
            loop {
                let now = Instant::now();
                if now >= window_end {
                    break;
                }
                let n = 1 + rng.next_u64() % seeded.accounts.saturating_sub(100).max(1);
                let (method, params) = peer.call(op, n, &seeded);
                let started = Instant::now();
                let answer = call(&mut session, method, &params).await;
                let finished = Instant::now();
                if finished < window_start || finished > window_end {
                    continue;
                }
                match answer {
                    Ok(_) => {
                        out.calls += 1;
                        let us = (finished - started).as_micros();
                        out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(err) => {
                        out.errors += 1;
                        if out.first_error.is_none() {
                            out.first_error = Some(err.to_string());
                        }
                    }
                }
            }
            (session, out)
        }));
    }
    tokio::time::sleep_until(window_start.into()).await;
    let server_before = procfs::cpu_time(server_pid)?;
    let own_before = procfs::own_cpu_time()?;
    tokio::time::sleep_until(window_end.into()).await;
    let server_after = procfs::cpu_time(server_pid)?;
    let own_after = procfs::own_cpu_time()?;

    let mut total = Measured {
        window: duration,
        server_cpu: server_after.saturating_sub(server_before),
        generator_cpu: own_after.saturating_sub(own_before),
        ..Measured::default()
    };
    for task in tasks {
        let (session, out) = task.await?;
        sessions.push(session);
        total.calls += out.calls;
        total.errors += out.errors;
        total.latencies_us.extend(out.latencies_us);
        if total.first_error.is_none() {
            total.first_error = out.first_error;
        }
    }
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Longest a call may take before it counts as an error (a hung server must not hang the run).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One request with [`CALL_TIMEOUT`].
pub async fn call(
    session: &mut Session,
    method: &str,
    params: &serde_json::Value,
) -> Result<serde_json::Value, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, session.request(method, params)).await {
        Ok(answer) => answer,
        Err(_) => Err(CallError::Transport(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// A small, fast PRNG; quality is irrelevant, only spread over the accounts.
#[derive(Debug)]
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let m = Measured {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..Measured::default()
        };
        assert_eq!(m.percentile_ms(50.0), 50.0);
        assert_eq!(m.percentile_ms(99.0), 99.0);
        assert_eq!(m.percentile_ms(100.0), 100.0);
    }
}
