//! The figures of one run, as text for the terminal and as the operator section of
//! BENCHMARKS.md (between `<!-- operator:begin -->` and `<!-- operator:end -->`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::apiserver::{Actor, Requests};

pub const BEGIN: &str = "<!-- operator:begin -->";
pub const END: &str = "<!-- operator:end -->";

/// What one phase cost.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub name: String,
    pub seconds: f64,
    /// apiserver requests during the phase, the bench's own binding writes subtracted.
    pub api: Requests,
    pub reconciles: f64,
    pub reconcile_errors: f64,
    /// `category=count` of the operator's reconcile errors.
    pub error_categories: String,
    /// Sum of reconcile durations (the operator's histogram).
    pub reconcile_seconds: f64,
    /// The operator's own count of its Kubernetes writes.
    pub operator_writes: f64,
    /// SQL statements that change the database (the operator's metric).
    pub sql: f64,
    pub arm: f64,
    /// PostgreSQL sessions opened and transactions committed (pg_stat_database), all by the
    /// operator: the bench's own statistics connection stays open.
    pub pg_sessions: i64,
    pub pg_commits: i64,
    /// Operator CPU time, seconds.
    pub cpu: f64,
    /// CPU seconds of each process tree sharing the machine (control plane, PostgreSQL,
    /// operator, the bench itself).
    pub component_cpu: Vec<(String, f64)>,
    /// Highest sampled RSS during the phase, bytes.
    pub peak_rss: u64,
}

/// A target of issue 9 and whether the run met it.
#[derive(Debug, Clone)]
pub struct Target {
    pub what: String,
    pub limit: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub mode: String,
    pub bindings: usize,
    pub operator_bin: String,
    pub operator_args: Vec<String>,
    /// Flags of the operator restarted for the steady window.
    pub steady_operator_args: Vec<String>,
    /// Seconds from the restart until the new operator had reconciled every binding once.
    pub steady_all_checked: f64,
    /// VmHWM of the operator that created the bindings.
    pub hwm_create: u64,
    /// VmHWM of the restarted operator, at the end.
    pub hwm_steady: u64,
    pub machine: String,
    pub date: String,
    /// Seconds from the first create to: all created, all reconciled by the operator, last
    /// Deployment available (controller-manager + kubelet stand-in), all Ready.
    pub all_created: f64,
    pub all_reconciled: f64,
    pub all_available: f64,
    pub all_ready: f64,
    /// Per binding, from its create to Ready: p50, p90, max.
    pub ready_latency: [f64; 3],
    pub reconciled_latency: [f64; 3],
    pub pods_marked: u64,
    pub rss_idle: u64,
    pub rss_after_create: u64,
    pub rss_after_steady: u64,
    pub hwm: u64,
    pub create: Phase,
    pub steady: Phase,
    /// Writes by anyone but lease renewals during the steady window, by series.
    pub steady_writes: BTreeMap<String, f64>,
    pub steady_rv_changed: usize,
    pub change: Phase,
    /// Seconds from the change to: status for the new generation (operator done), Ready again.
    pub change_reconciled: f64,
    pub change_ready: f64,
    pub targets: Vec<Target>,
    /// Invariants that failed (a correctness problem, not a slow machine).
    pub failures: Vec<String>,
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

fn verbs(map: &BTreeMap<String, f64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(verb, n)| format!("{verb} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Operator: {} bindings ({})\n",
            self.bindings, self.mode
        );
        let _ = writeln!(
            s,
            "`make bench-operator` (release build), {}, {}.",
            self.date, self.machine
        );
        let _ = writeln!(
            s,
            "Real kube-apiserver + etcd + kube-controller-manager and PostgreSQL 15 (tests/src), the operator binary `{}` with {} (restarted with `{}` for the steady window); password-mode bindings (the manifests/examples/password.yaml spec, each with its own role) on one database with the shop tables. No kubelet: the bench marks each pod Running/Ready through `pods/status` (the kubelet's one write) and the controller-manager computes Deployment availability itself.\n",
            self.operator_bin,
            if self.operator_args.is_empty() {
                "its default flags".to_owned()
            } else {
                self.operator_args.join(" ")
            },
            self.steady_operator_args.join(" ")
        );
        s.push_str("| target | limit | measured | |\n| --- | --- | --- | --- |\n");
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.what,
                t.limit,
                t.measured,
                if t.met { "met" } else { "**missed**" }
            );
        }
        let _ = writeln!(s);
        let [r50, r90, rmax] = self.ready_latency;
        let [c50, c90, cmax] = self.reconciled_latency;
        let _ = writeln!(
            s,
            "**Create.** {} bindings created in {:.1} s; the operator had reconciled all of them (children applied, role and grants in place, read-only verified, status written) after **{:.1} s**; the last Deployment became available after {:.1} s; all Ready after **{:.1} s**. Per binding, create → reconciled p50 {c50:.1} s, p90 {c90:.1} s, max {cmax:.1} s; create → Ready p50 {r50:.1} s, p90 {r90:.1} s, max {rmax:.1} s.\n",
            self.bindings,
            self.all_created,
            self.all_reconciled,
            self.all_available,
            self.all_ready,
        );
        let _ = writeln!(
            s,
            "Deployment availability is the controller-manager's work: {} writes while creating (ReplicaSets, Pods, Deployment and ReplicaSet status, Endpoints, Events), through clients the test harness allows 200 requests/s (`--kube-api-qps=200`; Kubernetes' default of 20 would make the controller-manager, not the operator, the limit).\n",
            self.create.api.writes_of(Actor::ControllerManager)
        );
        let _ = writeln!(
            s,
            "**Operator memory.** RSS idle {}, after all Ready {}, peak while creating (VmHWM) **{}**; the restarted operator after re-checking every binding {}, its peak {}.\n",
            mb(self.rss_idle),
            mb(self.rss_after_create),
            mb(self.hwm_create),
            mb(self.rss_after_steady),
            mb(self.hwm_steady)
        );
        s.push_str("| phase | seconds | reconciles | operator apiserver reads | operator apiserver writes | SQL writes | PG sessions | PG commits | ARM | operator CPU s |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for p in [&self.create, &self.steady, &self.change] {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                p.name,
                p.seconds,
                p.reconciles,
                p.api.reads_of(Actor::Operator),
                p.api.writes_of(Actor::Operator),
                p.sql,
                p.pg_sessions,
                p.pg_commits,
                p.arm,
                p.cpu
            );
        }
        let _ = writeln!(s);
        for p in [&self.create, &self.steady, &self.change] {
            let _ = writeln!(
                s,
                "- {}: operator {}; controller-manager writes {}; bench writes (pod status, its own binding writes excluded above) {}; operator's own write count {}; reconcile errors {}{}; mean reconcile {:.0} ms.",
                p.name,
                verbs(&p.api.by_verb(Actor::Operator)),
                p.api.writes_of(Actor::ControllerManager),
                p.api.writes_of(Actor::Bench),
                p.operator_writes,
                p.reconcile_errors,
                if p.error_categories.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.error_categories)
                },
                if p.reconciles > 0.0 {
                    1000.0 * p.reconcile_seconds / p.reconciles
                } else {
                    0.0
                }
            );
        }
        for p in [&self.create, &self.steady] {
            let cpu: Vec<String> = p
                .component_cpu
                .iter()
                .map(|(name, cpu)| format!("{name} {cpu:.1}"))
                .collect();
            let total: f64 = p.component_cpu.iter().map(|(_, c)| c).sum();
            let _ = writeln!(
                s,
                "- CPU seconds during {} ({:.1} s of wall time, {:.1} CPU s in all): {}.",
                p.name,
                p.seconds,
                total,
                cpu.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\n**Steady state.** {:.0} s with no change, starting with an operator restart: the new process re-checked all {} bindings (one reconcile each: children compared with its watch cache, the catalog read, the read-only probe) within {:.1} s of starting, and resynced them every {} ({} reconciles in all). Operator writes to the apiserver {}, SQL writes {}, ARM calls {}, binding resourceVersions changed {}; writes by anyone except Lease renewals: {}.\n",
            self.steady.seconds,
            self.bindings,
            self.steady_all_checked,
            self.steady_operator_args
                .first()
                .map_or("", |a| a.trim_start_matches("--resync=")),
            self.steady.reconciles,
            self.steady.api.writes_of(Actor::Operator),
            self.steady.sql,
            self.steady.arm,
            self.steady_rv_changed,
            if self.steady_writes.is_empty() {
                "none".to_owned()
            } else {
                self.steady_writes
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        let _ = writeln!(
            s,
            "**One change.** Binding b-0000's grants narrowed to two tables (new role grants, new ConfigMap, a rollout): status for the new generation after **{:.2} s**, Ready again (rollout by the controller-manager included) after **{:.2} s**; it cost {} operator apiserver writes and {} SQL statements.\n",
            self.change_reconciled,
            self.change_ready,
            self.change.api.writes_of(Actor::Operator),
            self.change.sql
        );
        s.push_str(
            "How it is measured: times come from one watch of the bindings (first time each reported `Ready=True` for its current generation) and one of the Deployments; apiserver requests are deltas of the apiserver's own `apiserver_request_total`, attributed by resource (the operator is the only writer of bindings, besides the bench's creates and its one change, which are subtracted, of ServiceAccounts, ConfigMaps, Services, Deployments (APPLY), Secrets and `events.k8s.io` Events; the controller-manager of ReplicaSets, Pods, Deployment status, Endpoints/EndpointSlices and core Events; the bench writes only `pods/status`), with every watch opened before the first snapshot; SQL writes are the operator's `pgmcp_operator_sql_statements_total` (GRANT, REVOKE, role statements), PostgreSQL sessions and commits come from `pg_stat_database`; RSS is the operator's `VmRSS`/`VmHWM` from `/proc`, CPU from `/proc/<pid>/stat` of each process tree. Lease renewals (the operator's leader election, the apiserver's identity lease) are counted apart.\n\n",
        );
        if !self.failures.is_empty() {
            let _ = writeln!(s, "**Failed invariants:** {}\n", self.failures.join("; "));
        }
        s
    }
}

/// Replaces the operator section of `path` (creating the file or the markers if missing).
pub fn write_section(path: &Path, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{BEGIN}\n{}\n{END}", body.trim_end());
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(begin), Some(end)) if begin < end => {
            format!("{}{section}{}", &text[..begin], &text[end + END.len()..])
        }
        _ if text.is_empty() => format!("# Benchmarks\n\n{section}\n"),
        _ => format!("{}\n\n{section}\n", text.trim_end()),
    };
    std::fs::write(path, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        // One directory per test: the two report tests run at once in one process.
        let dir = std::env::temp_dir().join(format!(
            "pgmcp-bench-operator-report-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("BENCHMARKS.md");
        write_section(&path, "first").expect("create");
        let created = std::fs::read_to_string(&path).expect("read");
        assert!(created.starts_with("# Benchmarks\n") && created.contains("first"));

        std::fs::write(
            &path,
            format!("# B\n\nmcp text\n\n{BEGIN}\nold\n{END}\n\nafter\n"),
        )
        .expect("write");
        write_section(&path, "new").expect("replace");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("# B\n\nmcp text\n\n{BEGIN}\nnew\n{END}\n\nafter\n")
        );

        std::fs::write(&path, "# B\n\nmcp only\n").expect("write");
        write_section(&path, "appended").expect("append");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            format!("# B\n\nmcp only\n\n{BEGIN}\nappended\n{END}\n")
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
