//! What Linux says about a process: resident memory (`/proc/<pid>/status` VmRSS, VmHWM) and CPU
//! time (`/proc/<pid>/stat` utime + stime). Reads only; no process is ever signalled here.

use std::time::Duration;

use anyhow::Context as _;

/// A process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now (VmRSS).
    pub rss_kib: u64,
    /// Highest resident since the process started (VmHWM).
    pub hwm_kib: u64,
}

/// Memory of `pid`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("failed to read /proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Ok(Memory {
        rss_kib: field("VmRSS:").unwrap_or(0),
        hwm_kib: field("VmHWM:").unwrap_or(0),
    })
}

/// User + system CPU time `pid` has used so far (all its threads).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("failed to read /proc/{pid}/stat"))?;
    cpu_from_stat(&stat, clock_ticks_per_second())
        .with_context(|| format!("failed to parse /proc/{pid}/stat"))
}

/// CPU time of this process (the load generator).
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time(std::process::id())
}

/// utime and stime are fields 14 and 15; the command name (field 2) may hold spaces and
/// parentheses, so count from the last `)`.
fn cpu_from_stat(stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / ticks_per_second.max(1),
    ))
}

/// `getconf CLK_TCK` (100 on every Linux we run on, asked once in case it is not).
fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// Machine facts for the report: `nproc`, CPU model, total memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs (nproc), {model}, {mem_gib:.1} GiB memory, Linux {}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name_parses() {
        let stat =
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_from_stat(stat, 100), Some(Duration::from_secs(3)));
    }

    #[test]
    fn own_process_has_memory_and_cpu() {
        let mem = memory(std::process::id()).expect("memory");
        assert!(mem.rss_kib > 0 && mem.hwm_kib >= mem.rss_kib);
        own_cpu_time().expect("cpu");
    }
}
