-- event_bus 0.6.0 -> 0.7.0 table changes: run once per database by every upgrade from 0.6.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.7.0 is released. The tables as
-- they are now: sql/tables.sql. What the Event Monitor (console/) needs from the SQL API.

------------------------------------------------------------------------------------------------
-- Causation and correlation: events emitted by a SQL handler record causation_id / correlation_id
-- in their metadata. An event's children and a correlation's events are found by index; the
-- indexes hold only events that carry the key, so a plain emit does not pay for them.
------------------------------------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS module_events_causation_idx
    ON event_bus.module_events ((metadata ->> 'causation_id'))
    WHERE metadata ? 'causation_id';
CREATE INDEX IF NOT EXISTS module_events_correlation_idx
    ON event_bus.module_events ((metadata ->> 'correlation_id'), id)
    WHERE metadata ? 'correlation_id';

------------------------------------------------------------------------------------------------
-- Events by type for a tenant (list_events with an exact type, the console's filter under
-- row-level security): only fanned-out events are in it, so an emit's INSERT does not pay for it;
-- the fan-out's UPDATE, which writes a new row version into every index anyway (dispatched_at is
-- in the undispatched index's predicate), adds the entry.
------------------------------------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS module_events_tenant_type_idx
    ON event_bus.module_events (tenant_id, event_type, id)
    WHERE dispatched_at IS NOT NULL;

------------------------------------------------------------------------------------------------
-- Functions whose parameters grow (re-created by sql/operations.sql with the old calls still
-- valid: every new parameter has a default and comes last).
------------------------------------------------------------------------------------------------
DROP FUNCTION IF EXISTS event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer);
DROP FUNCTION IF EXISTS event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean);
DROP FUNCTION IF EXISTS event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid);

------------------------------------------------------------------------------------------------
-- Delivery attempts per tenant and minute, for delivery_timeline (the console's chart): counted as
-- the attempt log is written, so a chart of a busy day reads a few thousand rows, not every
-- attempt. Insert-only (each INSERT into the log adds its own rows: no row is contended by two
-- writers); the worker's upkeep folds a finished minute's rows into one and drops rows older
-- than 32 days. Sums are exact whatever the folding did.
------------------------------------------------------------------------------------------------
CREATE TABLE event_bus._attempt_minutes (
    tenant_id uuid        NOT NULL,
    minute    timestamptz NOT NULL,
    succeeded bigint      NOT NULL DEFAULT 0,
    failed    bigint      NOT NULL DEFAULT 0,
    folded    boolean     NOT NULL DEFAULT false
);
CREATE INDEX _attempt_minutes_minute_idx ON event_bus._attempt_minutes (minute);
CREATE INDEX _attempt_minutes_unfolded_idx ON event_bus._attempt_minutes (minute) WHERE NOT folded;
COMMENT ON TABLE event_bus._attempt_minutes IS
    'Internal: delivery attempts that succeeded / failed per tenant and minute (of executed_at), written by '
    'a statement trigger on module_event_logs; read by delivery_timeline(). Kept 32 days.';
ALTER TABLE event_bus._attempt_minutes ENABLE ROW LEVEL SECURITY;
CREATE POLICY admin_all ON event_bus._attempt_minutes TO event_bus_admin USING (true) WITH CHECK (true);
CREATE POLICY tenant_read ON event_bus._attempt_minutes FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
REVOKE ALL ON event_bus._attempt_minutes FROM PUBLIC;
GRANT SELECT ON event_bus._attempt_minutes TO event_bus_reader, event_bus_admin;

CREATE FUNCTION event_bus._count_attempts() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO event_bus._attempt_minutes (tenant_id, minute, succeeded, failed)
    SELECT n.tenant_id, date_trunc('minute', n.executed_at),
           count(*) FILTER (WHERE n.status = 'success'), count(*) FILTER (WHERE n.status <> 'success')
      FROM new_logs n
     GROUP BY 1, 2;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._count_attempts() IS
    'Internal: the statement trigger that counts new attempt log rows into _attempt_minutes.';
REVOKE ALL ON FUNCTION event_bus._count_attempts() FROM PUBLIC;
CREATE TRIGGER module_event_logs_count_attempts
    AFTER INSERT ON event_bus.module_event_logs
    REFERENCING NEW TABLE AS new_logs
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._count_attempts();

-- the attempts of the last 31 days already in the log (an upgrade; nothing on a fresh install)
INSERT INTO event_bus._attempt_minutes (tenant_id, minute, succeeded, failed, folded)
SELECT l.tenant_id, date_trunc('minute', l.executed_at),
       count(*) FILTER (WHERE l.status = 'success'), count(*) FILTER (WHERE l.status <> 'success'), true
  FROM event_bus.module_event_logs l
 WHERE l.executed_at >= now() - interval '31 days'
 GROUP BY 1, 2;

------------------------------------------------------------------------------------------------
-- process_pending_events (granted to event_bus_admin) runs the worker's pipeline in the caller's
-- session: an admin that is not a superuser needs the idempotency keys it checks and settles.
------------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE, DELETE ON event_bus._idempotency_keys TO event_bus_admin;
