-- Test helpers for users' own tests (pgTAP or any runner): plain SQL, inside the test's
-- transaction, which the test may roll back. The bodies of the _-functions are Rust
-- (src/testing.rs).

CREATE OR REPLACE FUNCTION event_bus._in_current_transaction(p_xmin xid) RETURNS boolean
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'in_current_transaction_wrapper';
COMMENT ON FUNCTION event_bus._in_current_transaction(xid) IS
    'Internal: was a row with this xmin written by the current transaction (or one of its subtransactions)?';

CREATE OR REPLACE FUNCTION event_bus._require_transaction_block(p_what text) RETURNS boolean
LANGUAGE c VOLATILE STRICT PARALLEL RESTRICTED
AS 'MODULE_PATHNAME', 'require_transaction_block_wrapper';
COMMENT ON FUNCTION event_bus._require_transaction_block(text) IS
    'Internal: raise 25P01 naming p_what unless called inside BEGIN ... COMMIT/ROLLBACK.';

------------------------------------------------------------------------------------------------
-- API: Public — emitted_events, assert_emitted
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.emitted_events(p_event_type text DEFAULT '#')
RETURNS SETOF event_bus.module_events
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_event_type IS NULL THEN
        RAISE EXCEPTION 'event_bus: event_type pattern must not be null'
            USING ERRCODE = '22004', HINT = 'Pass a pattern such as ''invoice.posted'', ''invoice.*'' or ''#'' (all).';
    END IF;
    PERFORM event_bus._check_pattern(p_event_type);
    -- this transaction's rows: written by it (xmin), stamped with its start time, and (ids being
    -- UUIDv7) found through the primary key from that time on
    RETURN QUERY
    SELECT e.*
      FROM event_bus.module_events e
     WHERE e.id >= event_bus.uuid_v7_lower_bound(now() - interval '1 minute')
       AND e.created_at = now()
       AND event_bus._in_current_transaction(e.xmin)
       AND NOT e.is_request
       AND event_bus.matches(p_event_type, e.event_type)
     ORDER BY e.id;
END
$$;
COMMENT ON FUNCTION event_bus.emitted_events(text) IS
    'Test helper: the events the current transaction emitted (savepoints included, rolled-back ones not), '
    'oldest first, whose type matches the pattern (default #: all). For tests that roll back: '
    'SELECT event_type, payload FROM event_bus.emitted_events(''invoice.*'').';

CREATE OR REPLACE FUNCTION event_bus.assert_emitted(
    p_event_type       text,
    p_payload_contains jsonb   DEFAULT '{}'::jsonb,
    p_count            integer DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_found integer;
    v_all   integer;
    v_seen  text;
BEGIN
    IF p_payload_contains IS NULL OR jsonb_typeof(p_payload_contains) <> 'object' THEN
        RAISE EXCEPTION 'event_bus: p_payload_contains must be a JSON object, got %',
                coalesce(jsonb_typeof(p_payload_contains), 'NULL')
            USING ERRCODE = '22023', HINT = 'Pass the keys the payload must contain, e.g. ''{"invoice_id": 42}'', or ''{}''.';
    END IF;
    IF p_count < 0 THEN
        RAISE EXCEPTION 'event_bus: p_count must not be negative, got %', p_count
            USING ERRCODE = '22023', HINT = 'Pass the exact number expected (0 for none), or NULL for at least one.';
    END IF;
    SELECT count(*) INTO v_found
      FROM event_bus.emitted_events(p_event_type) e
     WHERE e.payload @> p_payload_contains;
    IF (p_count IS NULL AND v_found > 0) OR v_found = p_count THEN
        RETURN true;
    END IF;
    SELECT string_agg(e.event_type || ' ' || left(e.payload::text, 200), E'\n' ORDER BY e.id)
      INTO v_seen
      FROM (SELECT * FROM event_bus.emitted_events() LIMIT 20) e;
    SELECT count(*) INTO v_all FROM event_bus.emitted_events();
    RAISE EXCEPTION 'event_bus: expected % event(s) of % with a payload containing %, found %',
            coalesce(p_count::text, 'at least one'), p_event_type, p_payload_contains, v_found
        USING ERRCODE = 'P0004',
              DETAIL = 'This transaction emitted ' || v_all || ' event(s)'
                       || coalesce(E' (the first 20: type, payload):\n' || v_seen, '.'),
              HINT = 'event_bus.emitted_events() lists them; events emitted by another transaction '
                     '(or rolled back to a savepoint) do not count.';
END
$$;
COMMENT ON FUNCTION event_bus.assert_emitted(text, jsonb, integer) IS
    'Test helper: true if the current transaction emitted events of the pattern whose payload contains '
    'p_payload_contains (@>): exactly p_count of them, or at least one when p_count is NULL. Otherwise '
    'raises P0004 listing what was emitted. Example (pgTAP): '
    'SELECT ok(event_bus.assert_emitted(''invoice.posted'', ''{"number": "INV-1"}'', 1));';

------------------------------------------------------------------------------------------------
-- API: Public — run_handlers
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.run_handlers(p_event_id uuid DEFAULT NULL)
RETURNS TABLE (
    event_id         uuid,
    subscription_id  uuid,
    handler_function text,
    success          boolean,
    response         jsonb,
    error            text,
    duration_ms      double precision
)
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'run_handlers_wrapper';
COMMENT ON FUNCTION event_bus.run_handlers(uuid) IS
    'Test helper: run the SQL handlers of the events this transaction emitted (or of p_event_id among '
    'them) now, in this transaction, as the worker would: each active matching SQL subscription''s '
    'function in its own subtransaction, as its run_as role, with its timeout and the chain settings. '
    'Returns one row per (event, subscription): success, the handler''s result (response) or its error. '
    'Records no delivery: if the transaction commits, the worker delivers the events as usual.';

------------------------------------------------------------------------------------------------
-- API: Public — mock_handler, mock_calls
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._mock_record(p_event event_bus.module_events) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO event_bus._mock_calls (subscription_id, event_id, event)
    VALUES (nullif(current_setting('event_bus.subscription_id', true), '')::uuid, p_event.id, to_jsonb(p_event));
    RETURN true;
END
$$;
COMMENT ON FUNCTION event_bus._mock_record(event_bus.module_events) IS
    'Internal: the SQL handler of every mock subscription: records the event it received for the '
    'subscription that called it (event_bus.subscription_id).';

CREATE OR REPLACE FUNCTION event_bus.mock_handler(p_pattern text, p_tenant_id uuid DEFAULT NULL) RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM event_bus._require_transaction_block('event_bus.mock_handler');
    RETURN event_bus.subscribe(p_pattern, 'test',
                               p_handler_function => 'event_bus._mock_record',
                               p_handler_kind     => 'sql',
                               p_run_as           => current_user,
                               p_tenant_id        => p_tenant_id,
                               p_description      => 'mock handler: records what it receives (event_bus.mock_calls)');
END
$$;
COMMENT ON FUNCTION event_bus.mock_handler(text, uuid) IS
    'Test helper: a subscription to the pattern (and tenant) whose handler only records what it receives; '
    'returns its id for event_bus.mock_calls. Inside a transaction block only (25P01): it is meant to end '
    'with the test''s rollback. event_bus.run_handlers() (or the worker, if the test commits) calls it.';

CREATE OR REPLACE FUNCTION event_bus.mock_calls(p_mock uuid)
RETURNS TABLE (event_id uuid, event_type text, entity_id text, payload jsonb, metadata jsonb, called_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s
                    WHERE s.id = p_mock AND s.handler_function = 'event_bus._mock_record') THEN
        RAISE EXCEPTION 'event_bus: % is not a mock handler', p_mock
            USING ERRCODE = 'P0002', HINT = 'Pass the id event_bus.mock_handler(...) returned, in the same transaction.';
    END IF;
    RETURN QUERY
    SELECT c.event_id, c.event ->> 'event_type', c.event ->> 'entity_id', c.event -> 'payload',
           c.event -> 'metadata', c.called_at
      FROM event_bus._mock_calls c
     WHERE c.subscription_id = p_mock
     ORDER BY c.seq;
END
$$;
COMMENT ON FUNCTION event_bus.mock_calls(uuid) IS
    'Test helper: what the mock handler p_mock received, in order (one row per call).';

-- reading the transaction's own events is for anyone who may emit; running handlers and creating
-- subscriptions are for admins, as subscribe() is
REVOKE ALL ON FUNCTION event_bus._mock_record(event_bus.module_events) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.run_handlers(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.mock_handler(text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.mock_calls(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.run_handlers(uuid), event_bus.mock_handler(text, uuid),
                          event_bus.mock_calls(uuid) TO event_bus_admin;
-- the mock subscription runs its handler as the admin that made it
GRANT EXECUTE ON FUNCTION event_bus._mock_record(event_bus.module_events) TO event_bus_admin;
