-- pgmcp's catalog tracker: lets pgmcp-server know, with one small query, that the catalog
-- changed, so discovery answers come from its in-process snapshot of the catalog and are never
-- stale (mcp-server/src/tools/snapshot.rs). Without it the server compares a fingerprint of the
-- catalog tables instead, which reads them whole on every discovery call.
--
-- The operator runs it with the admin's rights (spec.access.catalogTracker) and removes it with
-- the last binding that uses it. By hand: run once per database, by a role that may create
-- event triggers (a superuser, or a managed service's admin role where it allows event
-- triggers). Then grant the servers' roles:
--   GRANT USAGE ON SCHEMA pgmcp TO <role>; GRANT SELECT ON pgmcp.catalog_changes TO <role>;
-- Safe to run again. To remove it: DROP SCHEMA pgmcp CASCADE; DROP EVENT TRIGGER
-- pgmcp_catalog_ddl; DROP EVENT TRIGGER pgmcp_catalog_drop; DROP FUNCTION... (see the end).
--
-- Every DDL transaction (CREATE, ALTER, DROP, COMMENT, GRANT, REVOKE, ...) that touches an
-- object other than a temporary one inserts its transaction id into pgmcp.catalog_changes, in
-- that transaction: the change and its record commit together, so a server that reads the same
-- record has read the same catalog. Rows of transactions older than every running one are
-- pruned by the next DDL transaction, so the table holds a handful of rows. Inserts of
-- different transactions never wait for each other.

CREATE SCHEMA IF NOT EXISTS pgmcp;
COMMENT ON SCHEMA pgmcp IS 'pgmcp''s catalog tracker (see pgmcp.catalog_changes)';

CREATE TABLE IF NOT EXISTS pgmcp.catalog_changes (
    xid xid8 PRIMARY KEY DEFAULT pg_current_xact_id()
);
COMMENT ON TABLE pgmcp.catalog_changes IS
    'One row per recent DDL transaction, written by the pgmcp_catalog_* event triggers; pgmcp-server compares count and sum to know the catalog changed';

CREATE OR REPLACE FUNCTION pgmcp.catalog_changed() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A tracker whose table was dropped by hand must not stop every DDL statement: the
    -- servers notice the missing table and compare catalog fingerprints instead.
    IF to_regclass('pgmcp.catalog_changes') IS NULL THEN
        RETURN;
    END IF;
    IF TG_EVENT = 'sql_drop' THEN
        IF NOT EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() WHERE NOT is_temporary) THEN
            RETURN;
        END IF;
    ELSIF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands())
      AND NOT EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                      WHERE schema_name IS NULL OR schema_name NOT LIKE 'pg\_temp%') THEN
        RETURN;
    END IF;
    DELETE FROM pgmcp.catalog_changes WHERE xid < pg_snapshot_xmin(pg_current_snapshot());
    INSERT INTO pgmcp.catalog_changes DEFAULT VALUES ON CONFLICT DO NOTHING;
END
$$;
REVOKE ALL ON FUNCTION pgmcp.catalog_changed() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgmcp_catalog_ddl') THEN
        CREATE EVENT TRIGGER pgmcp_catalog_ddl ON ddl_command_end
            EXECUTE FUNCTION pgmcp.catalog_changed();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgmcp_catalog_drop') THEN
        CREATE EVENT TRIGGER pgmcp_catalog_drop ON sql_drop
            EXECUTE FUNCTION pgmcp.catalog_changed();
    END IF;
END
$$;

-- Removal, in this order:
--   DROP EVENT TRIGGER IF EXISTS pgmcp_catalog_ddl;
--   DROP EVENT TRIGGER IF EXISTS pgmcp_catalog_drop;
--   DROP SCHEMA IF EXISTS pgmcp CASCADE;
