//! The operator process as the kernel sees it: resident memory and CPU time from `/proc`.

use std::path::Path;

/// Finds the process running `program` whose arguments include `marker` (the operator's unique
/// `--metrics-listen=…`). Only reads `/proc`; never signals anything.
pub fn find(program: &Path, marker: &str) -> Option<u32> {
    let program = program.to_string_lossy();
    find_where(|argv| argv[0] == program && argv[1..].iter().any(|a| a == marker))
}

/// The first process whose argument vector satisfies `matches`.
pub fn find_where(matches: impl Fn(&[String]) -> bool) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let argv: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (!argv.is_empty() && matches(&argv)).then_some(pid)
        })
}

/// CPU seconds of `root` and all its descendants, including children that already exited
/// (PostgreSQL's backends, reaped by the postmaster, count in its cutime/cstime).
pub fn tree_cpu(root: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    // pid -> (ppid, utime + stime + cutime + cstime)
    let mut procs = std::collections::HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((ppid, cpu)) = parent_and_cpu(&stat) {
            procs.insert(pid, (ppid, cpu));
        }
    }
    procs
        .iter()
        .filter(|(pid, _)| {
            let mut current = **pid;
            for _ in 0..64 {
                if current == root {
                    return true;
                }
                match procs.get(&current) {
                    Some((ppid, _)) if *ppid != 0 => current = *ppid,
                    _ => return false,
                }
            }
            false
        })
        .map(|(_, (_, cpu))| cpu)
        .sum::<f64>()
        + 0.0
}

/// ppid and utime + stime + cutime + cstime (seconds) of a `/proc/<pid>/stat` line.
fn parent_and_cpu(stat: &str) -> Option<(u32, f64)> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let mut ticks = 0.0;
    for i in 11..=14 {
        ticks += fields.get(i)?.parse::<f64>().ok()?;
    }
    Some((ppid, ticks / 100.0))
}

/// Memory and CPU of one process at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Resident set size (VmRSS), bytes.
    pub rss: u64,
    /// Peak resident set size so far (VmHWM), bytes.
    pub hwm: u64,
    /// User + system CPU time, seconds.
    pub cpu: f64,
}

pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        let value: u64 = line
            .trim_start_matches(field)
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(value * 1024)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        rss: kib("VmRSS:")?,
        hwm: kib("VmHWM:")?,
        cpu: cpu_seconds(&stat)?,
    })
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15, in clock ticks of 1/100 s,
/// the value Linux reports to user space on every common architecture).
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss > 0 && s.hwm >= s.rss, "{s:?}");
    }

    #[test]
    fn this_process_tree_has_cpu_time() {
        let pid = std::process::id();
        assert!(find_where(|argv| argv.iter().any(|a| a.contains("pgmcp_bench"))).is_some());
        assert!(tree_cpu(pid) >= 0.0);
        let stat = "42 (a b) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 100 100 20 0 1 0 5 0 0";
        assert_eq!(parent_and_cpu(stat), Some((7, 5.0)));
    }

    #[test]
    fn cpu_time_skips_a_command_name_with_spaces() {
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 5 0 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
    }
}
