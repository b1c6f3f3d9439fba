-- event_bus roles, table privileges and row-level security. Re-runnable: a fresh install runs it after
-- sql/tables.sql, and every upgrade runs it again at its end, so what stands here is what every
-- database has. Functions carry their own REVOKE / GRANT at the end of the file that defines them.
--
--   event_bus_admin     every tenant's events, deliveries, logs and subscriptions, signing secrets included
--   event_bus_operator  a reader that may also repair (retry, replay, skip, pause) its own tenant's work
--   event_bus_reader    its own tenant's events, deliveries and attempts (tenant from current_tenant())
-- See docs/src/security.md for the threat model.

------------------------------------------------------------------------------------------------
-- Roles are cluster-wide: the first database that installs the extension creates them, and
-- DROP EXTENSION leaves them (drop them by hand once no database uses them).
------------------------------------------------------------------------------------------------
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'event_bus_admin') THEN
        CREATE ROLE event_bus_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'event_bus_reader') THEN
        CREATE ROLE event_bus_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'event_bus_operator') THEN
        CREATE ROLE event_bus_operator NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE event_bus_admin IS
    'event_bus: every event, delivery, log and subscription of every tenant, signing secrets included.';
COMMENT ON ROLE event_bus_reader IS
    'event_bus: read its own tenant''s events, deliveries and attempt logs (tenant from event_bus.current_tenant()).';
COMMENT ON ROLE event_bus_operator IS
    'event_bus: a reader that may also retry and replay its own tenant''s events.';
GRANT event_bus_reader TO event_bus_operator;

-- The schema itself is visible so that any role can call the functions granted to it.
GRANT USAGE ON SCHEMA event_bus TO PUBLIC;

------------------------------------------------------------------------------------------------
-- Tables. Nothing is readable or writable by PUBLIC; emit goes through SECURITY DEFINER functions.
------------------------------------------------------------------------------------------------
REVOKE ALL ON event_bus.module_events, event_bus.module_event_subscriptions,
    event_bus.module_event_deliveries, event_bus.module_event_logs, event_bus.event_type_schemas,
    event_bus._counters, event_bus._mock_calls, event_bus._deleted_subscriptions,
    event_bus._idempotency_keys, event_bus._attempt_minutes, event_bus._event_hours, event_bus._filter_errors,
    event_bus._event_leases
    FROM PUBLIC;

-- (in the order the releases granted them: an ACL lists its grantees in that order, and a fresh
-- install's must read as an upgraded one's)
GRANT ALL ON event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs,
    event_bus.module_event_subscriptions TO event_bus_admin;
GRANT ALL ON event_bus._counters TO event_bus_admin;
GRANT SELECT ON event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs
    TO event_bus_reader;
-- subscriptions without their targets: a URL or header may carry a token, a secret signs requests
GRANT SELECT (id, event_type, handler_module, handler_kind, handler_function, tenant_id, timeout_ms,
              max_retries, description, is_active, created_at, updated_at, breaker_threshold,
              consecutive_failures, breaker_opened_at, breaker_open_until, last_success_at,
              last_failure_at, last_error, ordered, max_in_flight, max_per_second,
              replies, idempotency_key, idempotency_window, filter)
    ON event_bus.module_event_subscriptions TO event_bus_reader;
-- process_pending_events (granted to admins) runs the worker's pipeline in the caller's session
GRANT SELECT, INSERT, UPDATE, DELETE ON event_bus._idempotency_keys TO event_bus_admin;
GRANT SELECT ON event_bus._attempt_minutes TO event_bus_reader, event_bus_admin;
GRANT SELECT ON event_bus._event_hours TO event_bus_reader, event_bus_admin;
-- (the fan-out adds filter errors, also in an admin's process_pending_events)
GRANT SELECT ON event_bus._filter_errors TO event_bus_reader;
GRANT SELECT, INSERT, DELETE ON event_bus._filter_errors TO event_bus_admin;
-- (the fan-out and the record in an admin's process_pending_events)
GRANT SELECT, INSERT, UPDATE, DELETE ON event_bus._event_leases TO event_bus_admin;
GRANT SELECT ON event_bus.event_type_schemas TO event_bus_reader, event_bus_admin;
GRANT ALL ON event_bus.event_type_schemas TO event_bus_admin;

------------------------------------------------------------------------------------------------
-- Row-level security: admins see every tenant; readers (and operators) their own.
-- (SELECT ...) makes the tenant an init plan: read once per statement, not once per row.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus._attempt_minutes ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus._event_hours ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus._filter_errors ENABLE ROW LEVEL SECURITY;

DROP POLICY IF EXISTS admin_all ON event_bus.module_events;
CREATE POLICY admin_all ON event_bus.module_events TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus.module_event_deliveries;
CREATE POLICY admin_all ON event_bus.module_event_deliveries TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus.module_event_logs;
CREATE POLICY admin_all ON event_bus.module_event_logs TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus.module_event_subscriptions;
CREATE POLICY admin_all ON event_bus.module_event_subscriptions TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus._attempt_minutes;
CREATE POLICY admin_all ON event_bus._attempt_minutes TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus._event_hours;
CREATE POLICY admin_all ON event_bus._event_hours TO event_bus_admin USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS admin_all ON event_bus._filter_errors;
CREATE POLICY admin_all ON event_bus._filter_errors TO event_bus_admin USING (true) WITH CHECK (true);

DROP POLICY IF EXISTS tenant_read ON event_bus.module_events;
CREATE POLICY tenant_read ON event_bus.module_events FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus.module_event_deliveries;
CREATE POLICY tenant_read ON event_bus.module_event_deliveries FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus.module_event_logs;
CREATE POLICY tenant_read ON event_bus.module_event_logs FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus.module_event_subscriptions;
CREATE POLICY tenant_read ON event_bus.module_event_subscriptions FOR SELECT TO event_bus_reader
    USING (tenant_id IS NULL OR tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus._attempt_minutes;
CREATE POLICY tenant_read ON event_bus._attempt_minutes FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus._event_hours;
CREATE POLICY tenant_read ON event_bus._event_hours FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
DROP POLICY IF EXISTS tenant_read ON event_bus._filter_errors;
CREATE POLICY tenant_read ON event_bus._filter_errors FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
