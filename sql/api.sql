-- event_bus SQL API: emit, publish_event, subscribe, unsubscribe.
-- Loaded last (finalize), after the tables and the Rust-backed functions exist.

------------------------------------------------------------------------------------------------
-- Internal: the checks every emit makes once per call (tenant, type, module, metadata, chain).
------------------------------------------------------------------------------------------------
-- The emit functions' bodies are Rust (src/emit.rs): a plpgsql body cost five times the INSERT
-- it makes, on every business write.
CREATE OR REPLACE FUNCTION event_bus._emit_prepare(
    p_tenant_id     uuid,
    p_event_type    text,
    p_source_module text,
    p_metadata      jsonb
) RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'emit_prepare_wrapper';

COMMENT ON FUNCTION event_bus._emit_prepare(uuid, text, text, jsonb) IS
    'Internal: the per-call checks of emit_module_event and emit_module_events (tenant may emit for this '
    'tenant, event type, module, metadata object, chain depth); returns the metadata to store.';

CREATE OR REPLACE FUNCTION event_bus._check_payload_value(p_payload jsonb, p_position bigint) RETURNS boolean
LANGUAGE c VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_payload_element_wrapper';
COMMENT ON FUNCTION event_bus._check_payload_value(jsonb, bigint) IS
    'Internal: raise 22023 unless the payload is a JSON object, 54000 if it is over '
    'event_bus.max_payload_bytes (as text); p_position names the element of a batch emit (NULL: none).';

------------------------------------------------------------------------------------------------
-- API: Public — emit_module_event
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.emit_module_event(
    p_tenant_id     uuid,
    p_event_type    text,
    p_source_module text,
    p_entity_type   text,
    p_entity_id     text,
    p_payload       jsonb,
    p_metadata      jsonb DEFAULT '{}'::jsonb
) RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'emit_module_event_wrapper';

COMMENT ON FUNCTION event_bus.emit_module_event(uuid, text, text, text, text, jsonb, jsonb) IS
    'Emit an event in the current transaction: it exists if and only if the transaction commits. '
    'Validates the event type, tenant and payload (a JSON object of at most event_bus.max_payload_bytes, '
    'matching the type''s registered schema if it has one: 23514 with the JSON pointer otherwise) '
    'and writes one row; the worker fans it out to matching subscriptions after commit. Returns the event id. '
    'SECURITY DEFINER: callable from any trigger or role with EXECUTE, without table privileges; a session '
    'bound to a tenant (event_bus.current_tenant()) may emit only for that tenant (42501). Emitted from a SQL '
    'handler, the event''s metadata records causation_id, correlation_id and depth; a chain deeper than '
    'event_bus.max_chain_depth is refused (54000).';

-- The seed's signature takes the entity id as uuid.
CREATE OR REPLACE FUNCTION event_bus.emit_module_event(
    p_tenant_id     uuid,
    p_event_type    text,
    p_source_module text,
    p_entity_type   text,
    p_entity_id     uuid,
    p_payload       jsonb,
    p_metadata      jsonb DEFAULT '{}'::jsonb
) RETURNS uuid
LANGUAGE c VOLATILE PARALLEL UNSAFE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'emit_module_event_uuid_wrapper';

COMMENT ON FUNCTION event_bus.emit_module_event(uuid, text, text, text, uuid, jsonb, jsonb) IS
    'emit_module_event with a uuid entity id (stored as its text form).';

------------------------------------------------------------------------------------------------
-- API: Public — emit_module_events (many events of one type in one statement)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.emit_module_events(
    p_tenant_id     uuid,
    p_event_type    text,
    p_source_module text,
    p_entity_type   text,
    p_entity_ids    text[],
    p_payloads      jsonb[],
    p_metadata      jsonb DEFAULT '{}'::jsonb
) RETURNS SETOF uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_metadata jsonb;
    v_ok       boolean;
BEGIN
    v_metadata := event_bus._emit_prepare(p_tenant_id, p_event_type, p_source_module, p_metadata);
    IF p_payloads IS NULL THEN
        RAISE EXCEPTION 'event_bus: payloads must not be null'
            USING ERRCODE = '22004', HINT = 'Pass one JSON object per event, e.g. array_agg(to_jsonb(t)).';
    END IF;
    IF array_ndims(p_payloads) > 1 OR array_ndims(p_entity_ids) > 1 THEN
        RAISE EXCEPTION 'event_bus: entity_ids and payloads must be one-dimensional arrays'
            USING ERRCODE = '2202E', HINT = 'Pass array_agg(...) of the ids and of the payloads.';
    END IF;
    IF p_entity_ids IS NOT NULL
       AND coalesce(array_length(p_entity_ids, 1), 0) <> coalesce(array_length(p_payloads, 1), 0) THEN
        RAISE EXCEPTION 'event_bus: % entity ids for % payloads',
                coalesce(array_length(p_entity_ids, 1), 0), coalesce(array_length(p_payloads, 1), 0)
            USING ERRCODE = '22023',
                  HINT = 'Pass one entity id per payload (in the same order), or NULL for events without entity ids.';
    END IF;
    PERFORM event_bus._check_payload_value(p.v, p.i) FROM unnest(p_payloads) WITH ORDINALITY AS p(v, i);
    IF event_bus._has_contract(p_event_type) THEN
        PERFORM event_bus._check_contract(p_event_type, p.v, v_metadata ->> 'schema_version', p.i)
           FROM unnest(p_payloads) WITH ORDINALITY AS p(v, i);
    END IF;

    RETURN QUERY
    INSERT INTO event_bus.module_events
        (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    SELECT p_tenant_id, p_event_type, p_source_module, p_entity_type, e.entity_id, e.payload, v_metadata
      FROM unnest(p_payloads, coalesce(p_entity_ids, '{}'::text[])) AS e(payload, entity_id)
    RETURNING id;

    IF FOUND THEN
        v_ok := event_bus._wake_on_commit() IS NULL;
    END IF;
END
$$;

COMMENT ON FUNCTION event_bus.emit_module_events(uuid, text, text, text, text[], jsonb[], jsonb) IS
    'Emit many events of one type in one statement (the batch form of emit_module_event, several times '
    'faster per event): event i has entity id p_entity_ids[i] (or none when p_entity_ids is NULL) and '
    'payload p_payloads[i]; all share tenant, type, module, entity type and metadata. All-or-nothing: '
    'one bad payload rejects the call (22023 / 54000, naming its position) and emits nothing. Returns the '
    'event ids in input order. Same tenant rules as emit_module_event. Example: '
    'SELECT count(*) FROM event_bus.emit_module_events(t, ''invoice.posted'', ''accounting'', ''invoice'', '
    '(SELECT array_agg(id::text ORDER BY id) FROM inv), (SELECT array_agg(to_jsonb(inv) ORDER BY id) FROM inv)).';

------------------------------------------------------------------------------------------------
-- API: Public — publish_event (compatibility with the publish_event design)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.publish_event(
    p_event_type      text,
    p_aggregate_type  text,
    p_aggregate_id    text,
    p_payload         jsonb DEFAULT '{}'::jsonb,
    p_metadata        jsonb DEFAULT '{}'::jsonb,
    p_organization_id uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT event_bus.emit_module_event(
        p_organization_id,
        p_event_type,
        coalesce(nullif(p_metadata ->> 'source_module', ''), p_aggregate_type),
        p_aggregate_type,
        p_aggregate_id,
        coalesce(p_payload, '{}'::jsonb),
        p_metadata);
$$;

COMMENT ON FUNCTION event_bus.publish_event(text, text, text, jsonb, jsonb, uuid) IS
    'Compatibility entry point for the publish_event design: aggregate_type becomes entity_type, '
    'aggregate_id the entity id, organization_id the tenant (required); source_module is '
    'metadata->>''source_module'' or else the aggregate type. Same validation as emit_module_event.';

------------------------------------------------------------------------------------------------
-- Internal: derive an event's status from its deliveries.
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._refresh_event_status(p_event_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
-- plpgsql, not sql: the session keeps the statement's plan (the worker calls this every batch)
DECLARE
    v_updated integer;
BEGIN
    WITH derived AS (
        SELECT ids.id AS event_id,
               CASE WHEN a.n = a.n_completed THEN 'completed'
                    WHEN a.n = a.n_completed + a.n_failed THEN 'failed'
                    WHEN a.n_attempted > 0 OR a.n_completed + a.n_failed > 0 THEN 'processing'
                    ELSE 'pending' END AS status,
               greatest(a.retries, 0)::integer AS retries,
               CASE WHEN a.n_failed > 0 THEN
                   (SELECT d.last_error FROM event_bus.module_event_deliveries d
                     WHERE d.event_id = ids.id AND d.status = 'failed'
                     ORDER BY d.completed_at DESC NULLS LAST LIMIT 1)
               END AS last_error
          FROM unnest(p_event_ids) AS ids(id)
          CROSS JOIN LATERAL (
              SELECT count(*) AS n,
                     count(*) FILTER (WHERE d.status IN ('completed', 'skipped')) AS n_completed,
                     count(*) FILTER (WHERE d.status = 'failed') AS n_failed,
                     count(*) FILTER (WHERE d.attempts > 0) AS n_attempted,
                     coalesce(sum(d.attempts), 0)
                       - count(*) FILTER (WHERE d.status IN ('completed', 'processing')) AS retries
                FROM event_bus.module_event_deliveries d
               WHERE d.event_id = ids.id) a
    ), upd AS (
        UPDATE event_bus.module_events e
           SET status = d.status,
               retry_count = d.retries,
               error_message = d.last_error,
               processed_at = CASE WHEN d.status IN ('completed', 'failed')
                                   THEN coalesce(e.processed_at, now()) END
          FROM derived d
         WHERE e.id = d.event_id
           AND e.dispatched_at IS NOT NULL
           AND (e.status, e.retry_count, e.error_message)
               IS DISTINCT FROM (d.status, d.retries, d.last_error)
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_updated FROM upd;
    RETURN v_updated;
END
$$;

COMMENT ON FUNCTION event_bus._refresh_event_status(uuid[]) IS
    'Internal: recompute module_events.status / retry_count / error_message / processed_at from the '
    'events'' deliveries.';

------------------------------------------------------------------------------------------------
-- Internal: an IP-literal URL must be inside event_bus.allowed_networks (host names are checked by
-- the worker against every address they resolve to, when it connects).
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._check_destination(p_url text) RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_networks text := nullif(btrim(current_setting('event_bus.allowed_networks', true)), '');
    v_host     text;
    v_ip       inet;
    v_allowed  boolean;
BEGIN
    IF v_networks IS NULL THEN
        RETURN;
    END IF;
    v_host := btrim(substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(\[[^]]*\]|[^:/?#]*)'), '[]');
    BEGIN
        v_ip := v_host::inet;
    EXCEPTION WHEN invalid_text_representation THEN
        RETURN;
    END;
    BEGIN
        SELECT bool_or(v_ip <<= btrim(n)::inet) INTO v_allowed
          FROM unnest(string_to_array(v_networks, ',')) AS n
         WHERE btrim(n) <> '';
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'event_bus: event_bus.allowed_networks is invalid: %', v_networks
            USING ERRCODE = '22023', HINT = 'List CIDR blocks separated by commas, e.g. ''10.0.0.0/8, 203.0.113.7''.';
    END;
    IF NOT coalesce(v_allowed, false) THEN
        RAISE EXCEPTION 'event_bus: handler URL address % is outside event_bus.allowed_networks', v_ip
            USING ERRCODE = '22023',
                  HINT = 'Deliveries may only go to ' || v_networks || '; use an allowed address or ask an administrator.';
    END IF;
END
$$;
COMMENT ON FUNCTION event_bus._check_destination(text) IS
    'Internal: raises 22023 when an IP-literal handler URL is outside event_bus.allowed_networks.';

------------------------------------------------------------------------------------------------
-- API: Public — subscribe / unsubscribe
------------------------------------------------------------------------------------------------
-- 0.2.0 added ordered / max_in_flight / max_per_second: the 0.1.0 signature goes
DROP FUNCTION IF EXISTS event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer);
CREATE OR REPLACE FUNCTION event_bus.subscribe(
    p_event_type       text,
    p_handler_module   text,
    p_handler_url      text    DEFAULT NULL,
    p_handler_function text    DEFAULT NULL,
    p_secret           text    DEFAULT NULL,
    p_headers          jsonb   DEFAULT '{}'::jsonb,
    p_timeout_ms       integer DEFAULT NULL,
    p_max_retries      integer DEFAULT NULL,
    p_tenant_id        uuid    DEFAULT NULL,
    p_handler_kind     text    DEFAULT NULL,
    p_run_as           name    DEFAULT NULL,
    p_description      text    DEFAULT NULL,
    p_backoff_base_ms  integer DEFAULT NULL,
    p_backoff_max_ms   integer DEFAULT NULL,
    p_ordered          boolean DEFAULT false,
    p_max_in_flight    integer DEFAULT NULL,
    p_max_per_second   double precision DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_kind text := p_handler_kind;
    v_function text;
    v_proc regprocedure;
    v_id uuid;
BEGIN
    IF p_event_type IS NULL THEN
        RAISE EXCEPTION 'event_bus: event_type pattern must not be null'
            USING ERRCODE = '22004', HINT = 'Pass a pattern such as ''invoice.posted'', ''invoice.*'' or ''#''.';
    END IF;
    PERFORM event_bus._check_pattern(p_event_type);
    IF p_handler_module IS NULL OR p_handler_module = '' THEN
        RAISE EXCEPTION 'event_bus: handler_module must not be empty'
            USING ERRCODE = '22004', HINT = 'Name the module that handles the events, e.g. ''inventory''.';
    END IF;
    IF (p_handler_url IS NULL) = (p_handler_function IS NULL) THEN
        RAISE EXCEPTION 'event_bus: give exactly one handler target'
            USING ERRCODE = '22023',
                  HINT = 'Pass either p_handler_url (an http(s) URL) or p_handler_function (an Edge Function '
                         'name or a SQL function taking event_bus.module_events), not both or neither.';
    END IF;
    IF v_kind IS NOT NULL AND v_kind NOT IN ('http', 'edge_function', 'sql') THEN
        RAISE EXCEPTION 'event_bus: unknown handler kind %', v_kind
            USING ERRCODE = '22023', HINT = 'Use ''http'', ''edge_function'' or ''sql'', or leave it NULL.';
    END IF;

    IF p_handler_url IS NOT NULL THEN
        IF v_kind IS NOT NULL AND v_kind <> 'http' THEN
            RAISE EXCEPTION 'event_bus: handler kind % needs p_handler_function, not p_handler_url', v_kind
                USING ERRCODE = '22023', HINT = 'Pass the target in p_handler_function.';
        END IF;
        v_kind := 'http';
        PERFORM event_bus._check_url(p_handler_url);
        PERFORM event_bus._check_destination(p_handler_url);
    ELSE
        IF v_kind = 'http' THEN
            RAISE EXCEPTION 'event_bus: handler kind http needs p_handler_url'
                USING ERRCODE = '22023', HINT = 'Pass the URL in p_handler_url.';
        END IF;
        IF p_handler_function !~ '^[A-Za-z0-9_-]+$'
           AND p_handler_function !~ '^[A-Za-z_][A-Za-z0-9_$]*\.[A-Za-z_][A-Za-z0-9_$]*$' THEN
            RAISE EXCEPTION 'event_bus: invalid handler function name %', left(p_handler_function, 200)
                USING ERRCODE = '22023',
                      HINT = 'Use an Edge Function name (letters, digits, ''_'', ''-'') or a SQL function '
                             'as schema.function with unquoted identifiers.';
        END IF;
        IF v_kind IS NULL THEN
            IF position('.' IN p_handler_function) > 0
               OR to_regprocedure(p_handler_function || '(event_bus.module_events)') IS NOT NULL THEN
                v_kind := 'sql';
            ELSE
                v_kind := 'edge_function';
            END IF;
        END IF;
        IF v_kind = 'sql' THEN
            v_proc := to_regprocedure(p_handler_function || '(event_bus.module_events)');
            IF v_proc IS NULL THEN
                RAISE EXCEPTION 'event_bus: SQL handler %(event_bus.module_events) does not exist', p_handler_function
                    USING ERRCODE = '42883',
                          HINT = 'Create it first: CREATE FUNCTION schema.name(event event_bus.module_events) '
                                 'RETURNS jsonb ...';
            END IF;
            SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) INTO v_function
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE p.oid = v_proc;
        ELSE
            IF p_handler_function !~ '^[A-Za-z0-9_-]+$' THEN
                RAISE EXCEPTION 'event_bus: invalid Edge Function name %', left(p_handler_function, 200)
                    USING ERRCODE = '22023', HINT = 'Edge Function names use letters, digits, ''_'' and ''-''.';
            END IF;
            v_function := p_handler_function;
            IF coalesce(current_setting('event_bus.edge_function_base_url', true), '') = '' THEN
                RAISE WARNING 'event_bus: event_bus.edge_function_base_url is not set; deliveries to Edge Function % will fail until it is', p_handler_function
                    USING HINT = 'Set it in postgresql.conf, e.g. https://<project>.supabase.co/functions/v1, and reload.';
            END IF;
        END IF;
    END IF;

    IF p_headers IS NOT NULL THEN
        PERFORM event_bus._check_headers(p_headers);
    END IF;
    IF p_secret IS NOT NULL THEN
        PERFORM event_bus._check_secret(p_secret);
    END IF;
    IF p_timeout_ms IS NOT NULL AND p_timeout_ms NOT BETWEEN 1 AND 3600000 THEN
        RAISE EXCEPTION 'event_bus: timeout_ms % is out of range', p_timeout_ms
            USING ERRCODE = '22023', HINT = 'Use 1 to 3600000 milliseconds, or NULL for event_bus.default_timeout_ms.';
    END IF;
    IF p_max_retries IS NOT NULL AND p_max_retries NOT BETWEEN 0 AND 100 THEN
        RAISE EXCEPTION 'event_bus: max_retries % is out of range', p_max_retries
            USING ERRCODE = '22023', HINT = 'Use 0 to 100, or NULL for the event''s max_retries.';
    END IF;
    IF p_backoff_base_ms IS NOT NULL AND p_backoff_base_ms NOT BETWEEN 1 AND 86400000
       OR p_backoff_max_ms IS NOT NULL AND p_backoff_max_ms NOT BETWEEN 1 AND 604800000 THEN
        RAISE EXCEPTION 'event_bus: backoff out of range'
            USING ERRCODE = '22023', HINT = 'backoff_base_ms is 1..86400000 and backoff_max_ms 1..604800000.';
    END IF;
    IF p_max_in_flight IS NOT NULL AND p_max_in_flight NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'event_bus: max_in_flight % is out of range', p_max_in_flight
            USING ERRCODE = '22023', HINT = 'Use 1 to 10000 deliveries in flight, or NULL for no cap.';
    END IF;
    IF p_max_per_second IS NOT NULL AND NOT (p_max_per_second > 0 AND p_max_per_second <= 100000) THEN
        RAISE EXCEPTION 'event_bus: max_per_second % is out of range', p_max_per_second
            USING ERRCODE = '22023', HINT = 'Use a rate above 0 and at most 100000 per second (0.5 = one every 2 s), or NULL.';
    END IF;
    IF p_run_as IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_run_as) THEN
        RAISE EXCEPTION 'event_bus: role % does not exist', p_run_as
            USING ERRCODE = '42704', HINT = 'Create the role the SQL handler should run as, or pass NULL.';
    END IF;

    INSERT INTO event_bus.module_event_subscriptions
        (event_type, handler_module, handler_kind, handler_url, handler_function, tenant_id, headers,
         secret, timeout_ms, max_retries, backoff_base_ms, backoff_max_ms, run_as, description,
         ordered, max_in_flight, max_per_second)
    VALUES
        (p_event_type, p_handler_module, v_kind, p_handler_url, v_function, p_tenant_id,
         coalesce(p_headers, '{}'::jsonb), p_secret, p_timeout_ms, p_max_retries, p_backoff_base_ms,
         p_backoff_max_ms, p_run_as, p_description, coalesce(p_ordered, false), p_max_in_flight, p_max_per_second)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision) IS
    'Subscribe a handler to an event-type pattern (* = one segment, # = zero or more). Exactly one target: '
    'p_handler_url (http/https), or p_handler_function: an Edge Function name (resolved against '
    'event_bus.edge_function_base_url) or a SQL function schema.name(event_bus.module_events). Optional: '
    'signing secret (Standard Webhooks), extra headers, timeout, retry limit, backoff, tenant filter; '
    'p_ordered: each entity''s events one at a time in emit order (a dead one parks its stream); '
    'p_max_in_flight / p_max_per_second: caps toward the endpoint over all workers. '
    'Applies to events emitted after it commits; replay backfills older ones. Returns the subscription id.';

CREATE OR REPLACE FUNCTION event_bus.unsubscribe(p_subscription_id uuid) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM event_bus.module_event_subscriptions WHERE id = p_subscription_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: subscription % does not exist', p_subscription_id
            USING ERRCODE = 'P0002', HINT = 'List subscriptions with SELECT * FROM event_bus.module_event_subscriptions.';
    END IF;
    RETURN true;
END
$$;

-- However a subscription goes (unsubscribe or a plain DELETE), its unfinished deliveries go with
-- it: they could never be sent. Finished ones stay as history.
CREATE OR REPLACE FUNCTION event_bus._subscriptions_deleted() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_events uuid[];
BEGIN
    WITH gone AS (
        DELETE FROM event_bus.module_event_deliveries d
         USING old_rows o
         WHERE d.subscription_id = o.id AND d.status IN ('pending', 'processing', 'held', 'waiting')
        RETURNING d.event_id)
    SELECT array_agg(DISTINCT event_id) INTO v_events FROM gone;
    IF v_events IS NOT NULL THEN
        PERFORM event_bus._refresh_event_status(v_events);
    END IF;
    -- a fan-out that read these subscriptions before this commit may still add deliveries for
    -- them: the worker sweeps those later
    INSERT INTO event_bus._deleted_subscriptions (id)
    SELECT o.id FROM old_rows o
    ON CONFLICT (id) DO UPDATE SET deleted_at = now();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._subscriptions_deleted() IS
    'Internal: drops the unfinished deliveries of deleted subscriptions, re-derives their events'' status, '
    'and remembers the subscriptions for the worker''s sweep of deliveries a concurrent fan-out added.';
CREATE OR REPLACE TRIGGER module_event_subscriptions_deleted
    AFTER DELETE ON event_bus.module_event_subscriptions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._subscriptions_deleted();

COMMENT ON FUNCTION event_bus.unsubscribe(uuid) IS
    'Delete a subscription and its unfinished deliveries (finished ones and the attempt log stay). '
    'Raises P0002 if it does not exist. To pause instead, UPDATE ... SET is_active = false.';

COMMENT ON FUNCTION event_bus.matches(text, text) IS
    'Does the pattern (AMQP topic rules: * one segment, # zero or more) match the event type?';
COMMENT ON FUNCTION event_bus.uuid_v7_lower_bound(timestamptz) IS
    'Smallest UUIDv7 of that millisecond: id >= uuid_v7_lower_bound(ts) selects events from ts on by primary key.';

-- emit is for everyone (it is the point); management is for the table owner / admin.
REVOKE ALL ON FUNCTION event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.unsubscribe(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus._refresh_event_status(uuid[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus._emit_prepare(uuid, text, text, jsonb) FROM PUBLIC;

-- a database that gains the extension gets its delivery worker at once.
SELECT event_bus._wake_launcher_on_commit();

COMMENT ON FUNCTION event_bus.process_pending_events(integer) IS
    'Deliver up to p_limit due deliveries now, in the calling session: fans out new events, claims due '
    'retries, sends HTTP requests (waiting for each up to its timeout) and runs SQL handlers, records the '
    'outcomes like the worker. For environments without the worker, tests, and draining by hand. '
    'Returns the number of deliveries attempted.';
REVOKE ALL ON FUNCTION event_bus.process_pending_events(integer) FROM PUBLIC;
