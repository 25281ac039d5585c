-- Row-level security for manifests/examples/per-caller-access.yaml: each support user sees only
-- the tickets they own. Run as the owner of support.tickets (pgmcp never creates functions or
-- policies: these are the database's own rules, written by whoever owns the data).

-- The verified claims of the caller a statement runs for, as JSON: oid, tid, appid, roles,
-- groups, name, preferred_username and class (pgmcp sets them in each statement's transaction,
-- from the caller's validated Entra token). NULL outside pgmcp, and when no caller is known: a
-- policy comparing with it then matches no row. current_setting(…, true) is '' rather than
-- NULL in a session where the setting was once set, hence nullif.
CREATE FUNCTION public.pgmcp_caller() RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT nullif(current_setting('pgmcp.caller', true), '')::jsonb $$;

ALTER TABLE support.tickets ENABLE ROW LEVEL SECURITY;
-- Also for the table's owner (who would otherwise bypass the policy).
ALTER TABLE support.tickets FORCE ROW LEVEL SECURITY;

-- Users see their own tickets: owner_oid is the Entra object id of the user who opened it.
CREATE POLICY own_tickets ON support.tickets FOR SELECT
    USING (owner_oid = (public.pgmcp_caller() ->> 'oid')::uuid);

-- Team leads (app role Support.Lead assigned to them) see every ticket.
CREATE POLICY leads_see_all ON support.tickets FOR SELECT
    USING (public.pgmcp_caller() -> 'roles' ? 'Support.Lead');
