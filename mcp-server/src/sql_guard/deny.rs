//! The functions the guard refuses wherever they are called, and why each is refused.

/// Why a function is denied; see [`DENIED_FUNCTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denial {
    ServerFiles,
    LargeObjects,
    RemoteConnections,
    ServerControl,
    Settings,
    AdvisoryLocks,
    Notifications,
    Sequences,
    Replication,
    Sleep,
    DynamicSql,
    TransactionId,
    Statistics,
    CatalogWrites,
    IndexMaintenance,
}

impl Denial {
    pub(super) fn because(self) -> &'static str {
        match self {
            Denial::ServerFiles => "it reads, lists or writes files on the database server",
            Denial::LargeObjects => "it reads or writes large objects or server files",
            Denial::RemoteConnections => "it opens or manages connections to other databases",
            Denial::ServerControl => "it signals or reconfigures server processes",
            Denial::Settings => "it changes settings (read one with current_setting('name'))",
            Denial::AdvisoryLocks => "it takes or releases advisory locks, which outlive the query",
            Denial::Notifications => "it sends notifications to other sessions",
            Denial::Sequences => "it advances or sets a sequence, which is a write",
            Denial::Replication => "it controls replication, WAL or backups",
            Denial::Sleep => "it only waits, holding a database connection",
            Denial::DynamicSql => "it runs SQL built from its arguments, which bypasses this check",
            Denial::TransactionId => {
                "it assigns a transaction id, which is a write (it fails in the read-only \
                 transaction anyway)"
            }
            Denial::Statistics => "it resets server statistics",
            Denial::CatalogWrites => "it writes to the system catalogs",
            Denial::IndexMaintenance => "it modifies an index",
        }
    }
}

/// Functions refused wherever they are called (select list, FROM, subqueries, CTEs, LATERAL,
/// arguments, FILTER, window specs, ORDER BY, …). Matched against the last part of the called
/// name, lower-cased, so `pg_catalog.pg_read_file`, `"pg_read_file"` and `PG_READ_FILE` all
/// match. They read server files, leave the database, change state that a READ ONLY transaction
/// does not protect (settings, locks, notifications, sequences, backends), run SQL strings the
/// guard never sees, or just sleep. `current_setting` stays allowed. See also
/// [`DENIED_PREFIXES`].
const DENIED_FUNCTIONS: &[(&str, Denial)] = &[
    // server files (adminpack's pg_file_* too); pg_ls_* is a prefix below
    ("pg_read_file", Denial::ServerFiles),
    ("pg_read_binary_file", Denial::ServerFiles),
    ("pg_stat_file", Denial::ServerFiles),
    ("pg_current_logfile", Denial::ServerFiles),
    ("pg_file_write", Denial::ServerFiles),
    ("pg_file_unlink", Denial::ServerFiles),
    ("pg_file_rename", Denial::ServerFiles),
    ("pg_file_sync", Denial::ServerFiles),
    ("pg_logdir_ls", Denial::ServerFiles),
    // large objects; lo_* is a prefix below
    ("loread", Denial::LargeObjects),
    ("lowrite", Denial::LargeObjects),
    // backend signalling and server control
    ("pg_terminate_backend", Denial::ServerControl),
    ("pg_cancel_backend", Denial::ServerControl),
    ("pg_reload_conf", Denial::ServerControl),
    ("pg_rotate_logfile", Denial::ServerControl),
    ("pg_promote", Denial::ServerControl),
    ("pg_log_backend_memory_contexts", Denial::ServerControl),
    ("set_config", Denial::Settings),
    ("pg_notify", Denial::Notifications),
    ("nextval", Denial::Sequences),
    ("setval", Denial::Sequences),
    // replication, WAL, backup; more prefixes below
    ("pg_switch_wal", Denial::Replication),
    ("pg_switch_xlog", Denial::Replication),
    ("pg_backup_start", Denial::Replication),
    ("pg_backup_stop", Denial::Replication),
    ("pg_start_backup", Denial::Replication),
    ("pg_stop_backup", Denial::Replication),
    ("pg_sync_replication_slots", Denial::Replication),
    ("pg_log_standby_snapshot", Denial::Replication),
    // run a SQL string: the guard would never see that SQL
    ("ts_stat", Denial::DynamicSql),
    ("ts_rewrite", Denial::DynamicSql),
    ("txid_current", Denial::TransactionId),
    ("pg_current_xact_id", Denial::TransactionId),
    ("pg_stat_statements_reset", Denial::Statistics),
    ("pg_import_system_collations", Denial::CatalogWrites),
    ("gin_clean_pending_list", Denial::IndexMaintenance),
    ("brin_summarize_new_values", Denial::IndexMaintenance),
    ("brin_summarize_range", Denial::IndexMaintenance),
    ("brin_desummarize_range", Denial::IndexMaintenance),
];

/// Name prefixes refused like [`DENIED_FUNCTIONS`]: whole families, including versions and
/// extensions that add members (`dblink_exec`, `pg_ls_waldir`, `pg_sleep_for`, …).
const DENIED_PREFIXES: &[(&str, Denial)] = &[
    ("pg_ls_", Denial::ServerFiles),
    ("lo_", Denial::LargeObjects),
    ("dblink", Denial::RemoteConnections),
    ("postgres_fdw_", Denial::RemoteConnections),
    ("pg_advisory", Denial::AdvisoryLocks),
    ("pg_try_advisory", Denial::AdvisoryLocks),
    ("pg_create_", Denial::Replication),
    ("pg_drop_replication", Denial::Replication),
    ("pg_copy_", Denial::Replication),
    ("pg_replication_origin", Denial::Replication),
    ("pg_replication_slot_", Denial::Replication),
    ("pg_logical_", Denial::Replication),
    ("pg_wal_replay_", Denial::Replication),
    ("pg_xlog_replay_", Denial::Replication),
    ("pg_sleep", Denial::Sleep),
    ("query_to_xml", Denial::DynamicSql),
    ("cursor_to_xml", Denial::DynamicSql),
    ("table_to_xml", Denial::DynamicSql),
    ("database_to_xml", Denial::DynamicSql),
    ("schema_to_xml", Denial::DynamicSql),
    ("pg_stat_reset", Denial::Statistics),
    ("binary_upgrade_", Denial::CatalogWrites),
];

/// Why `name` (already lower-case) is denied, if it is.
pub(super) fn denied_function(name: &str) -> Option<Denial> {
    DENIED_FUNCTIONS
        .iter()
        .find(|(denied, _)| *denied == name)
        .or_else(|| {
            DENIED_PREFIXES
                .iter()
                .find(|(prefix, _)| name.starts_with(prefix))
        })
        .map(|(_, denial)| *denial)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql_guard::{GuardError, StatementKind, check};

    #[test]
    fn every_denied_name_is_refused_and_allowed_lookalikes_are_not() {
        for (name, _) in DENIED_FUNCTIONS {
            let sql = format!("SELECT {name}(1)");
            assert_eq!(
                check(&sql),
                Err(GuardError::ForbiddenFunction((*name).to_owned()))
            );
        }
        for (prefix, _) in DENIED_PREFIXES {
            let name = format!("{prefix}x");
            let sql = format!("SELECT * FROM orders WHERE id = {}(1)", name.to_uppercase());
            assert_eq!(check(&sql), Err(GuardError::ForbiddenFunction(name)));
        }
        for allowed in [
            "current_setting('work_mem')",
            "pg_backend_pid()",
            "currval('s')",
            "lastval()",
            "txid_current_if_assigned()",
            "pg_size_pretty(1)",
            "pg_relation_size('orders')",
            "to_char(now(), 'YYYY')",
            "lower('LO_IMPORT')",
            "length('pg_read_file(x)')",
        ] {
            assert_eq!(
                check(&format!("SELECT {allowed}")),
                Ok(StatementKind::Select),
                "{allowed}"
            );
        }
        // A column named like a function is not a call.
        assert_eq!(
            check("SELECT nextval, lo_get FROM t"),
            Ok(StatementKind::Select)
        );
        // Only the function's own name counts, not its schema.
        assert_eq!(check("SELECT lo_stats.total(1)"), Ok(StatementKind::Select));
    }
}
