-- event_bus 0.1.0 -> 0.2.0 table changes (runs once per database, in every upgrade from 0.1.0; frozen:
-- what 0.2.0's upgrade did to the tables). The tables as they are now: sql/tables.sql.

------------------------------------------------------------------------------------------------
-- Rust-backed functions new in 0.2.0, which the changes below use (the current ones are re-created
-- later in the upgrade from the current sources).
------------------------------------------------------------------------------------------------
CREATE FUNCTION event_bus."_has_contract"("event_type" text) RETURNS bool
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'has_contract_wrapper';
CREATE FUNCTION event_bus."_check_contract"("event_type" text, "payload" jsonb, "schema_version" text, "position" bigint)
    RETURNS bool VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_contract_wrapper';
CREATE FUNCTION event_bus."_check_schema"("event_type" text, "schema" jsonb) RETURNS bool
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_schema_wrapper';
CREATE FUNCTION event_bus."_contracts_changed"() RETURNS void
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'contracts_changed_wrapper';
CREATE FUNCTION event_bus."check_payload"("event_type" text, "payload" jsonb, "version" int DEFAULT NULL)
    RETURNS TABLE ("instance_path" text, "schema_path" text, "message" text)
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_payload_wrapper';

------------------------------------------------------------------------------------------------
-- Deliveries: manual retry / replay restart the retry budget; the circuit breaker holds work.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_deliveries
    ADD COLUMN attempt_offset integer NOT NULL DEFAULT 0,
    ADD COLUMN ordering_key text,
    ADD COLUMN capped_subscription_id uuid,
    DROP CONSTRAINT module_event_deliveries_status_check,
    ADD CONSTRAINT module_event_deliveries_status_check
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'held', 'waiting', 'skipped'));
COMMENT ON COLUMN event_bus.module_event_deliveries.attempt_offset IS
    'Attempts made before the last manual retry or replay: the retry budget and the backoff count '
    'from here, while attempt numbers in the log keep growing.';
COMMENT ON COLUMN event_bus.module_event_deliveries.ordering_key IS
    'For an ordered subscription: the entity stream (["entity_type", "entity_id"]) this delivery belongs '
    'to, together with tenant_id and subscription_id; NULL when unordered or the event names no entity.';
COMMENT ON COLUMN event_bus.module_event_deliveries.capped_subscription_id IS
    'Internal: the subscription id while it has max_in_flight (set at claim), so in-flight deliveries of '
    'capped subscriptions are counted from a small index.';
COMMENT ON COLUMN event_bus.module_event_deliveries.status IS
    'pending (due at next_attempt_at), processing (leased until next_attempt_at), completed, failed (dead), '
    'held (its subscription''s circuit breaker is open; released when it closes), waiting (behind an earlier '
    'unfinished delivery of its ordered stream), skipped (a dead delivery an operator skipped).';
-- ordered streams: the unfinished deliveries of each (subscription, tenant, entity), in emit order
CREATE INDEX module_event_deliveries_stream_idx
    ON event_bus.module_event_deliveries (subscription_id, tenant_id, ordering_key, event_id)
    WHERE ordering_key IS NOT NULL AND status IN ('waiting', 'pending', 'processing', 'held', 'failed');
-- in-flight deliveries of subscriptions with max_in_flight
CREATE INDEX module_event_deliveries_in_flight_idx
    ON event_bus.module_event_deliveries (capped_subscription_id, next_attempt_at)
    WHERE capped_subscription_id IS NOT NULL AND status = 'processing';
-- held deliveries of one subscription, released when its breaker closes
CREATE INDEX module_event_deliveries_held_idx
    ON event_bus.module_event_deliveries (subscription_id) WHERE status = 'held';
-- dead letters, newest first
CREATE INDEX module_event_deliveries_dead_idx
    ON event_bus.module_event_deliveries (completed_at) WHERE status = 'failed';

-- per-subscription health over recent attempts
CREATE INDEX module_event_logs_subscription_idx
    ON event_bus.module_event_logs (subscription_id, executed_at);

------------------------------------------------------------------------------------------------
-- Subscriptions: health and circuit breaker.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_subscriptions
    ADD COLUMN breaker_threshold    integer,
    ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0,
    ADD COLUMN breaker_opened_at    timestamptz,
    ADD COLUMN breaker_open_until   timestamptz,
    ADD COLUMN last_success_at      timestamptz,
    ADD COLUMN last_failure_at      timestamptz,
    ADD COLUMN last_error           text,
    ADD COLUMN ordered              boolean NOT NULL DEFAULT false,
    ADD COLUMN max_in_flight        integer,
    ADD COLUMN max_per_second       double precision,
    ADD COLUMN rate_next_at         timestamptz,
    ADD CONSTRAINT module_event_subscriptions_breaker_check CHECK (breaker_threshold BETWEEN 0 AND 1000000),
    ADD CONSTRAINT module_event_subscriptions_max_in_flight_check CHECK (max_in_flight BETWEEN 1 AND 10000),
    ADD CONSTRAINT module_event_subscriptions_max_per_second_check CHECK (max_per_second > 0 AND max_per_second <= 100000);
COMMENT ON COLUMN event_bus.module_event_subscriptions.ordered IS
    'Deliver each entity''s events (same tenant, entity_type and entity_id) one at a time in emit order; a '
    'dead delivery parks its entity''s stream until it is retried or skipped (see parked_streams).';
COMMENT ON COLUMN event_bus.module_event_subscriptions.max_in_flight IS
    'At most this many deliveries of this subscription in flight at once, over all workers; NULL = no cap.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.max_per_second IS
    'At most this many deliveries per second started toward this subscription, over all workers, evenly '
    'spaced; NULL = no limit.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.rate_next_at IS
    'Internal: when the next delivery of a rate-limited subscription may start.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.breaker_threshold IS
    'Consecutive failed attempts that open the circuit breaker; NULL = event_bus.breaker_threshold, 0 = never.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.consecutive_failures IS
    'Failed attempts since the last success.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.breaker_opened_at IS 'When the breaker last opened.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.breaker_open_until IS
    'NULL: breaker closed. Otherwise open: new and retried deliveries are held, and one probe delivery is '
    'sent at this time; its success closes the breaker and releases the held deliveries, its failure '
    're-opens it for another event_bus.breaker_cooldown_ms.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.last_success_at IS 'Time of the last successful attempt.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.last_failure_at IS 'Time of the last failed attempt.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.last_error IS 'Error of the last failed attempt.';

------------------------------------------------------------------------------------------------
-- Counters for metrics(): monotonic, transactional, kept across retention.
------------------------------------------------------------------------------------------------
CREATE TABLE event_bus._counters (
    name  text   NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    CONSTRAINT _counters_pkey PRIMARY KEY (name)
);
INSERT INTO event_bus._counters (name) VALUES
    ('events_dispatched'), ('attempts_succeeded'), ('attempts_failed'), ('deliveries_dead'),
    ('events_purged');
COMMENT ON TABLE event_bus._counters IS
    'Internal: counters behind metrics(), advanced by the worker in the transactions that record its work.';
REVOKE ALL ON event_bus._counters FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Roles and row-level security.
------------------------------------------------------------------------------------------------
-- Roles are cluster-wide: the first database that installs the extension creates them, and
-- DROP EXTENSION leaves them (drop them by hand once no database uses them).
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

GRANT ALL ON event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs,
    event_bus.module_event_subscriptions TO event_bus_admin;
GRANT SELECT ON event_bus._counters TO event_bus_admin;
GRANT SELECT ON event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs
    TO event_bus_reader;
-- subscriptions without their targets: a URL or header may carry a token, a secret signs requests
GRANT SELECT (id, event_type, handler_module, handler_kind, handler_function, tenant_id, timeout_ms,
              max_retries, description, is_active, created_at, updated_at, breaker_threshold,
              consecutive_failures, breaker_opened_at, breaker_open_until, last_success_at,
              last_failure_at, last_error, ordered, max_in_flight, max_per_second)
    ON event_bus.module_event_subscriptions TO event_bus_reader;

ALTER TABLE event_bus.module_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE event_bus.module_event_subscriptions ENABLE ROW LEVEL SECURITY;

CREATE POLICY admin_all ON event_bus.module_events TO event_bus_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_all ON event_bus.module_event_deliveries TO event_bus_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_all ON event_bus.module_event_logs TO event_bus_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_all ON event_bus.module_event_subscriptions TO event_bus_admin USING (true) WITH CHECK (true);

-- (SELECT ...) makes the tenant an init plan: read once per statement, not once per row
CREATE POLICY tenant_read ON event_bus.module_events FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
CREATE POLICY tenant_read ON event_bus.module_event_deliveries FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
CREATE POLICY tenant_read ON event_bus.module_event_logs FOR SELECT TO event_bus_reader
    USING (tenant_id = (SELECT event_bus.current_tenant()));
CREATE POLICY tenant_read ON event_bus.module_event_subscriptions FOR SELECT TO event_bus_reader
    USING (tenant_id IS NULL OR tenant_id = (SELECT event_bus.current_tenant()));

------------------------------------------------------------------------------------------------
-- Payload contracts: the table and its statement trigger.
------------------------------------------------------------------------------------------------
-- Payload contracts: a JSON Schema (draft 2020-12) per event type and version, checked by emit.
-- The Rust side (src/contracts.rs) caches compiled schemas per backend; the statement trigger
-- below tells every backend to reload them when a change commits.

CREATE TABLE event_bus.event_type_schemas (
    event_type    text        NOT NULL CHECK (event_bus._check_event_type(event_type)),
    version       integer     NOT NULL CHECK (version BETWEEN 1 AND 1000000),
    schema        jsonb       NOT NULL CHECK (event_bus._check_schema(event_type, schema)),
    description   text,
    registered_at timestamptz NOT NULL DEFAULT now(),
    registered_by name        NOT NULL DEFAULT event_bus._caller(),
    PRIMARY KEY (event_type, version)
);

COMMENT ON TABLE event_bus.event_type_schemas IS
    'Payload contracts: the JSON Schema (draft 2020-12, formats asserted, no remote $ref) each version of an '
    'event type''s payload must match. emit_module_event checks payloads of registered types against the '
    'latest version, or the one metadata''s schema_version names, in the emitting transaction (23514 with '
    'the failing JSON pointer). Write it through register_event_type / unregister_event_type.';
COMMENT ON COLUMN event_bus.event_type_schemas.event_type IS 'An exact event type (no wildcards).';
COMMENT ON COLUMN event_bus.event_type_schemas.version IS 'Version number; the highest is the one emit uses by default.';
COMMENT ON COLUMN event_bus.event_type_schemas.schema IS 'The JSON Schema (draft 2020-12) payloads must match.';
COMMENT ON COLUMN event_bus.event_type_schemas.description IS 'Free text: what changed in this version.';
COMMENT ON COLUMN event_bus.event_type_schemas.registered_at IS 'When this version was registered.';
COMMENT ON COLUMN event_bus.event_type_schemas.registered_by IS 'The role that registered it.';

CREATE FUNCTION event_bus._event_type_schemas_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM event_bus._contracts_changed();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._event_type_schemas_changed() IS
    'Internal: statement trigger on event_type_schemas; every backend reloads its cached contracts at commit.';

CREATE TRIGGER event_type_schemas_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_bus.event_type_schemas
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._event_type_schemas_changed();

