-- event_bus SQL API: emit, publish_event, subscribe, unsubscribe, request-reply (content filters:
-- sql/filters.sql, loaded before this file).
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

-- Internal: what an event takes in a worker's memory (the claims' byte budget).
CREATE OR REPLACE FUNCTION event_bus._event_bytes(p_payload jsonb, p_metadata jsonb) RETURNS bigint
LANGUAGE c
IMMUTABLE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'event_bytes_wrapper';

COMMENT ON FUNCTION event_bus._event_bytes(jsonb, jsonb) IS
    'Internal: the uncompressed size in bytes of an event''s payload and metadata (NULLs count 0), read '
    'from their headers without detoasting; the worker''s claims stop a batch at event_bus.batch_memory.';

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
        -- design document 001 takes the organization from the signed-in user: the session's tenant
        coalesce(p_organization_id, event_bus.current_tenant()),
        p_event_type,
        coalesce(nullif(p_metadata ->> 'source_module', ''), p_aggregate_type),
        p_aggregate_type,
        p_aggregate_id,
        coalesce(p_payload, '{}'::jsonb),
        p_metadata);
$$;

COMMENT ON FUNCTION event_bus.publish_event(text, text, text, jsonb, jsonb, uuid) IS
    'Compatibility entry point for the publish_event design: aggregate_type becomes entity_type, '
    'aggregate_id the entity id, organization_id the tenant (default: the session''s, event_bus.current_tenant(); '
    '22004 when neither is there); source_module is metadata->>''source_module'' or else the aggregate type. '
    'Same validation as emit_module_event.';

------------------------------------------------------------------------------------------------
-- Internal: an IP-literal URL must be inside event_bus.allowed_networks (host names are checked by
-- the worker against every address they resolve to, when it connects).
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._check_broker_url(p_url text) RETURNS text
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'check_broker_url_wrapper';
COMMENT ON FUNCTION event_bus._check_broker_url(text) IS
    'Internal: the subscription kind of a broker URL (amqp for amqp:// and amqps://, nats for nats:// and '
    'tls://, kafka for kafka:// and kafkas://), or 22023 saying what is wrong (its password masked).';

CREATE OR REPLACE FUNCTION event_bus._mask_url(p_url text) RETURNS text
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE
AS 'MODULE_PATHNAME', 'mask_url_wrapper';
COMMENT ON FUNCTION event_bus._mask_url(text) IS
    'Internal: the URL''s scheme and host (and port) only, never its user, password, path or query: what may be '
    'shown to roles that may not read targets.';

CREATE OR REPLACE FUNCTION event_bus._check_destination(p_url text) RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_networks text := nullif(btrim(current_setting('event_bus.allowed_networks', true)), '');
    v_hosts    text;
    v_host     text;
    v_ip       inet;
    v_allowed  boolean;
BEGIN
    IF v_networks IS NULL THEN
        RETURN;
    END IF;
    -- the host list (past any user:password@ of a broker URL; a Kafka URL may name several hosts,
    -- separated by commas)
    v_hosts := substring(p_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)');
    FOREACH v_host IN ARRAY string_to_array(coalesce(v_hosts, ''), ',') LOOP
        v_host := btrim(substring(v_host FROM '^(\[[^]]*\]|[^:]*)'), '[]');
        BEGIN
            v_ip := v_host::inet;
        EXCEPTION WHEN invalid_text_representation THEN
            CONTINUE;
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
    END LOOP;
END
$$;
COMMENT ON FUNCTION event_bus._check_destination(text) IS
    'Internal: raises 22023 when an IP-literal handler URL is outside event_bus.allowed_networks.';

------------------------------------------------------------------------------------------------
-- API: Public — subscribe / unsubscribe
------------------------------------------------------------------------------------------------
-- 0.2.0 added ordered / max_in_flight / max_per_second: the 0.1.0 signature goes
DROP FUNCTION IF EXISTS event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer);
-- 0.5.0 added replies / idempotency_key / idempotency_window: the 0.2.0 signature goes
DROP FUNCTION IF EXISTS event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision);
-- 0.11.0 added filter: the 0.5.0 signature goes
DROP FUNCTION IF EXISTS event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision, boolean, text, interval);
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
    p_max_per_second   double precision DEFAULT NULL,
    p_replies          boolean DEFAULT false,
    p_idempotency_key  text    DEFAULT NULL,
    p_idempotency_window interval DEFAULT NULL,
    p_filter           text    DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_kind text := p_handler_kind;
    v_event_type text := p_event_type;
    v_function text;
    v_proc regprocedure;
    v_id uuid;
    v_filter jsonpath := event_bus._check_filter(p_filter);
BEGIN
    IF p_event_type IS NULL THEN
        RAISE EXCEPTION 'event_bus: event_type pattern must not be null'
            USING ERRCODE = '22004', HINT = 'Pass a pattern such as ''invoice.posted'', ''invoice.*'' or ''#''.';
    END IF;
    PERFORM event_bus._check_pattern(p_event_type);
    -- the operational event of a failed delivery was event_bus.delivery.dead before 0.11.0; 0.11.0
    -- subscribed the old name to the new one with a warning, 0.12.0 refuses it (no event carries it)
    IF p_event_type = 'event_bus.delivery.dead' THEN
        RAISE EXCEPTION 'event_bus: event_bus.delivery.dead was renamed event_bus.delivery.failed in 0.11.0'
            USING ERRCODE = '22023', HINT = 'Subscribe to ''event_bus.delivery.failed''.';
    END IF;
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
    IF v_kind IS NOT NULL AND v_kind NOT IN ('http', 'edge_function', 'sql', 'amqp', 'nats', 'kafka') THEN
        RAISE EXCEPTION 'event_bus: unknown handler kind %', v_kind
            USING ERRCODE = '22023', HINT = 'Use ''http'', ''edge_function'' or ''sql'' (or a broker URL), or leave it NULL.';
    END IF;

    IF p_handler_url IS NOT NULL AND p_handler_url ~* '^(amqps?|nats|tls|kafkas?)://' THEN
        -- a message broker: RabbitMQ (amqp, amqps), NATS JetStream (nats, tls) or Kafka (kafka, kafkas)
        IF v_kind IS NOT NULL AND v_kind NOT IN ('amqp', 'nats', 'kafka') THEN
            RAISE EXCEPTION 'event_bus: handler kind % does not take a broker URL', v_kind
                USING ERRCODE = '22023', HINT = 'Leave p_handler_kind NULL: the URL''s scheme gives the kind.';
        END IF;
        v_kind := event_bus._check_broker_url(p_handler_url);
        PERFORM event_bus._check_destination(p_handler_url);
        IF coalesce(p_replies, false) THEN
            RAISE EXCEPTION 'event_bus: a broker subscription cannot answer requests'
                USING ERRCODE = '22023', HINT = 'Answer requests with an HTTP or SQL handler; leave p_replies false here.';
        END IF;
        IF p_secret IS NOT NULL THEN
            RAISE EXCEPTION 'event_bus: p_secret signs HTTP requests; a broker subscription takes none'
                USING ERRCODE = '22023',
                      HINT = 'The broker authenticates the connection: put its user and password in the URL.';
        END IF;
    ELSIF p_handler_url IS NOT NULL THEN
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
    IF p_idempotency_key IS NOT NULL
       AND p_idempotency_key !~ '^(entity_id|(payload|metadata)(\.[A-Za-z0-9_-]{1,100}){1,16})$' THEN
        RAISE EXCEPTION 'event_bus: invalid idempotency key path %', left(p_idempotency_key, 200)
            USING ERRCODE = '22023',
                  HINT = 'Name where the key is in the event: ''entity_id'', ''payload.<field>[.<field>...]'' or '
                         '''metadata.<field>[...]'', fields of letters, digits, ''_'' and ''-'' (e.g. ''payload.order_id'').';
    END IF;
    IF p_idempotency_window IS NOT NULL THEN
        IF p_idempotency_key IS NULL THEN
            RAISE EXCEPTION 'event_bus: an idempotency window needs an idempotency key'
                USING ERRCODE = '22023', HINT = 'Pass p_idempotency_key too, e.g. ''payload.order_id''.';
        END IF;
        IF NOT (p_idempotency_window > interval '0' AND p_idempotency_window <= interval '366 days') THEN
            RAISE EXCEPTION 'event_bus: idempotency window % is out of range', p_idempotency_window
                USING ERRCODE = '22023', HINT = 'Use an interval above 0 and at most 366 days, e.g. ''7 days''.';
        END IF;
    END IF;
    IF p_run_as IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = p_run_as) THEN
        RAISE EXCEPTION 'event_bus: role % does not exist', p_run_as
            USING ERRCODE = '42704', HINT = 'Create the role the SQL handler should run as, or pass NULL.';
    END IF;

    INSERT INTO event_bus.module_event_subscriptions
        (event_type, handler_module, handler_kind, handler_url, handler_function, tenant_id, headers,
         secret, timeout_ms, max_retries, backoff_base_ms, backoff_max_ms, run_as, description,
         ordered, max_in_flight, max_per_second, replies, idempotency_key, idempotency_window, filter)
    VALUES
        (v_event_type, p_handler_module, v_kind, p_handler_url, v_function, p_tenant_id,
         coalesce(p_headers, '{}'::jsonb), p_secret, p_timeout_ms, p_max_retries, p_backoff_base_ms,
         p_backoff_max_ms, p_run_as, p_description, coalesce(p_ordered, false), p_max_in_flight, p_max_per_second,
         coalesce(p_replies, false), p_idempotency_key,
         CASE WHEN p_idempotency_key IS NOT NULL THEN coalesce(p_idempotency_window, interval '7 days') END,
         v_filter)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;

COMMENT ON FUNCTION event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision, boolean, text, interval, text) IS
    'Subscribe a handler to an event-type pattern (* = one segment, # = zero or more). Exactly one target: '
    'p_handler_url (http/https, or a broker: amqp[s]://user:password@host/vhost?exchange=NAME for RabbitMQ, '
    'nats://host:4222?subject=PREFIX or tls:// for NATS JetStream, kafka[s]://[user:password@]host:9092[,host2:9092]/TOPIC '
    'for Kafka), or p_handler_function: an Edge Function name (resolved against '
    'event_bus.edge_function_base_url) or a SQL function schema.name(event_bus.module_events). Optional: '
    'signing secret (Standard Webhooks), extra headers, timeout, retry limit, backoff, tenant filter; '
    'p_ordered: each entity''s events one at a time in emit order (a dead one parks its stream); '
    'p_max_in_flight / p_max_per_second: caps toward the endpoint over all workers. '
    'p_replies: answers event_bus.request calls for the types it matches. p_idempotency_key (entity_id, '
    'payload.<path> or metadata.<path>) with p_idempotency_window (default 7 days): a delivery whose key this '
    'subscription already handled successfully within the window completes without calling the handler. '
    'p_filter: a SQL/JSON path predicate over {payload, metadata, event_type, source_module, entity_type, '
    'entity_id, tenant_id}, e.g. $.payload.total > 10000 && $.payload.currency != "RSD": only events it is '
    'true for get a delivery (see set_subscription_filter, matches_filter). '
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

-- (its unfinished deliveries go with it: event_bus._subscriptions_deleted, sql/lifecycle.sql)
COMMENT ON FUNCTION event_bus.unsubscribe(uuid) IS
    'Delete a subscription and its unfinished deliveries (finished ones and the attempt log stay). '
    'Raises P0002 if it does not exist. To pause instead, UPDATE ... SET is_active = false.';

------------------------------------------------------------------------------------------------
-- API: Public — request-reply
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._request_call(p_delivery_id uuid, p_timeout_ms integer) RETURNS jsonb
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'request_call_wrapper';
COMMENT ON FUNCTION event_bus._request_call(uuid, integer) IS
    'Internal (event_bus.request): the one attempt of a request''s delivery, now, in this session; returns '
    '{"success", "http_status", "response", "error", "timed_out", "duration_ms"}.';

-- SQLSTATEs of a request that was made but got no reply (class EB, event_bus):
--   EB001 no active subscription answers the type   EB002 more than one does
--   EB003 the responder did not answer in time       EB004 the handler failed (raised, or the request
--   EB005 the HTTP responder answered non-2xx              could not be sent)
CREATE OR REPLACE FUNCTION event_bus.try_request(
    p_event_type    text,
    p_payload       jsonb,
    p_timeout_ms    integer DEFAULT 5000,
    p_tenant_id     uuid    DEFAULT NULL,
    p_source_module text    DEFAULT 'request',
    p_entity_type   text    DEFAULT NULL,
    p_entity_id     text    DEFAULT NULL,
    p_metadata      jsonb   DEFAULT '{}'::jsonb,
    OUT ok              boolean,
    OUT reply           jsonb,
    OUT sqlstate        text,
    OUT error           text,
    OUT event_id        uuid,
    OUT subscription_id uuid,
    OUT http_status     integer,
    OUT duration_ms     double precision
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant   uuid := coalesce(p_tenant_id, event_bus.current_tenant());
    v_metadata jsonb;
    v_subs     uuid[];
    v_module   text;
    v_delivery uuid;
    v_out      jsonb;
BEGIN
    -- bad input: an error, nothing written
    IF p_event_type IS NOT NULL AND p_event_type ~ '[*#]' THEN
        RAISE EXCEPTION 'event_bus: a request goes to one event type, not to the pattern %', left(p_event_type, 200)
            USING ERRCODE = '22023',
                  HINT = 'Name the type the responder answers, e.g. ''inventory.stock_check''; patterns are for subscriptions.';
    END IF;
    IF p_timeout_ms IS NULL OR p_timeout_ms NOT BETWEEN 1 AND 60000 THEN
        RAISE EXCEPTION 'event_bus: request timeout % ms is out of range', p_timeout_ms
            USING ERRCODE = '22023',
                  HINT = 'Use 1 to 60000 ms: the caller''s transaction (and its locks) waits that long at most.';
    END IF;
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'event_bus: a request needs a tenant'
            USING ERRCODE = '22004',
                  HINT = 'Pass p_tenant_id, or run in a session bound to a tenant (see event_bus.current_tenant()).';
    END IF;
    v_metadata := event_bus._emit_prepare(v_tenant, p_event_type, p_source_module, coalesce(p_metadata, '{}'::jsonb));
    PERFORM event_bus._check_payload_value(coalesce(p_payload, '{}'::jsonb), NULL);
    IF event_bus._has_contract(p_event_type) THEN
        PERFORM event_bus._check_contract(p_event_type, coalesce(p_payload, '{}'::jsonb),
                                          v_metadata ->> 'schema_version', NULL);
    END IF;

    -- the record: an event the worker never fans out (dispatched at once)
    INSERT INTO event_bus.module_events
        (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata, status,
         dispatched_at, is_request)
    VALUES (v_tenant, p_event_type, p_source_module, p_entity_type, p_entity_id, coalesce(p_payload, '{}'::jsonb),
            v_metadata, <processing>, now(), true)
    RETURNING id INTO event_id;
    -- fanned out at insert, so no UPDATE counts it: counted here for event_stats (_event_hours)
    INSERT INTO event_bus._event_hours (tenant_id, hour, source_module, event_type, processing)
    VALUES (v_tenant, event_bus._event_hour(now()), p_source_module, p_event_type, 1);

    -- the responders kept until this transaction ends (FOR KEY SHARE): an unsubscribe either comes
    -- first (then it is not among them) or waits and removes this request's delivery (lock order:
    -- sql/lifecycle.sql)
    SELECT array_agg(s.id ORDER BY s.id), min(s.handler_module) INTO v_subs, v_module
      FROM (SELECT s.id, s.handler_module
              FROM event_bus.module_event_subscriptions s
             WHERE s.is_active AND s.replies
               AND (s.tenant_id IS NULL OR s.tenant_id = v_tenant)
               AND event_bus.matches(s.event_type, p_event_type)
               AND event_bus._filter_passes(s.filter, v_tenant, p_event_type, p_source_module, p_entity_type,
                                            p_entity_id, coalesce(p_payload, '{}'::jsonb), v_metadata)
             ORDER BY s.id
               FOR KEY SHARE) s;
    IF v_subs IS NULL OR cardinality(v_subs) <> 1 THEN
        ok := false;
        IF v_subs IS NULL THEN
            sqlstate := 'EB001';
            error := format('no active subscription answers requests for %s (tenant %s)', p_event_type, v_tenant);
        ELSE
            sqlstate := 'EB002';
            error := format('%s active subscriptions answer requests for %s (tenant %s): %s',
                            cardinality(v_subs), p_event_type, v_tenant, array_to_string(v_subs, ', '));
        END IF;
        UPDATE event_bus.module_events e
           SET status = <failed>, processed_at = now(), error_message = try_request.error
         WHERE e.id = try_request.event_id;
        RETURN;
    END IF;

    subscription_id := v_subs[1];
    v_delivery := event_bus._delivery_id(event_id, subscription_id);
    INSERT INTO event_bus.module_event_deliveries
        (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at)
    VALUES (v_delivery, event_id, subscription_id, v_tenant, <processing>, 1, now(), now());

    v_out := event_bus._request_call(v_delivery, p_timeout_ms);

    ok := coalesce((v_out ->> 'success')::boolean, false);
    http_status := (v_out ->> 'http_status')::integer;
    duration_ms := (v_out ->> 'duration_ms')::double precision;
    error := v_out ->> 'error';
    IF ok THEN
        reply := v_out -> 'response';
    ELSE
        sqlstate := CASE WHEN (v_out ->> 'timed_out')::boolean THEN 'EB003'
                         WHEN http_status IS NOT NULL THEN 'EB005'
                         ELSE 'EB004' END;
        IF sqlstate = 'EB005' AND nullif(v_out -> 'response', 'null') IS NOT NULL THEN
            error := error || ': ' || left((v_out -> 'response')::text, 500);
        END IF;
    END IF;
    UPDATE event_bus.module_event_deliveries d
       SET status = CASE WHEN ok THEN <completed> ELSE <failed> END,
           completed_at = now(),
           last_http_status = try_request.http_status,
           last_error = try_request.error
     WHERE d.id = v_delivery;
    INSERT INTO event_bus.module_event_logs
        (event_id, subscription_id, delivery_id, tenant_id, attempt, status, http_status, response,
         error_message, duration_ms)
    VALUES (event_id, subscription_id, v_delivery, v_tenant, 1, CASE WHEN ok THEN 'success' ELSE <failed> END,
            http_status, CASE WHEN ok THEN v_out -> 'response' ELSE nullif(v_out -> 'response', 'null') END,
            error, duration_ms);
    UPDATE event_bus.module_events e
       SET status = CASE WHEN ok THEN <completed> ELSE <failed> END,
           processed_at = now(),
           error_message = try_request.error
     WHERE e.id = try_request.event_id;
    IF NOT ok THEN
        error := format('request %s to %s (subscription %s) failed: %s', p_event_type, v_module,
                        subscription_id, error);
    END IF;
END
$$;
COMMENT ON FUNCTION event_bus.try_request(text, jsonb, integer, uuid, text, text, text, jsonb) IS
    'event_bus.request that returns the outcome instead of raising: ok, reply, sqlstate (EB001 no responder, '
    'EB002 several, EB003 timeout, EB004 handler error, EB005 non-2xx answer), error, the request''s event and '
    'subscription ids, http_status, duration_ms. Its record (event, delivery, attempt log) is written in the '
    'caller''s transaction, failures included. Bad input still raises (22023, 22004, 42501, 54000, 23514).';

CREATE OR REPLACE FUNCTION event_bus.request(
    p_event_type    text,
    p_payload       jsonb,
    p_timeout_ms    integer DEFAULT 5000,
    p_tenant_id     uuid    DEFAULT NULL,
    p_source_module text    DEFAULT 'request',
    p_entity_type   text    DEFAULT NULL,
    p_entity_id     text    DEFAULT NULL,
    p_metadata      jsonb   DEFAULT '{}'::jsonb
) RETURNS jsonb
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    SELECT * INTO r
      FROM event_bus.try_request(p_event_type, p_payload, p_timeout_ms, p_tenant_id, p_source_module,
                                 p_entity_type, p_entity_id, p_metadata);
    IF r.ok THEN
        RETURN r.reply;
    END IF;
    -- the record goes with this statement: say in the server log what happened
    RAISE LOG 'event_bus: request % (event %) failed with %: %', p_event_type, r.event_id, r.sqlstate, r.error;
    RAISE EXCEPTION 'event_bus: %', r.error
        USING ERRCODE = r.sqlstate,
              DETAIL = format('request event %s', r.event_id),
              HINT = CASE r.sqlstate
                  WHEN 'EB001' THEN 'Subscribe a handler with p_replies => true for this type (and tenant), or activate it.'
                  WHEN 'EB002' THEN 'Exactly one active subscription may answer a type: set replies = false on the others.'
                  WHEN 'EB003' THEN 'The responder did not answer within p_timeout_ms; raise it or make the handler faster.'
                  WHEN 'EB004' THEN 'The handler failed (see the error); fix it, or catch this SQLSTATE and go on.'
                  ELSE 'The HTTP responder answered with an error status (see the error); its body is in the attempt log.'
              END;
END
$$;
COMMENT ON FUNCTION event_bus.request(text, jsonb, integer, uuid, text, text, text, jsonb) IS
    'Request-reply: ask the one active subscription with replies = true that matches p_event_type (in the '
    'tenant, default event_bus.current_tenant()) and return its reply, waiting at most p_timeout_ms (1-60000). '
    'A SQL handler runs now in a subtransaction as its run_as role and its return value is the reply; an HTTP or '
    'Edge Function handler gets the signed CloudEvents request the worker would send and its JSON body is the '
    'reply. Raises EB001 (no responder), EB002 (several), EB003 (timeout), EB004 (handler error), EB005 (non-2xx), '
    'catchable: the caller''s transaction stays usable. Recorded as an event with is_request = true, its delivery '
    'and attempt log, in the caller''s transaction (a raised failure''s record goes with the failed statement: '
    'use try_request to keep it); never delivered by the worker. Locks the caller holds stay held while it waits.';

COMMENT ON FUNCTION event_bus.matches(text, text) IS
    'Does the pattern (AMQP topic rules: * one segment, # zero or more) match the event type?';
COMMENT ON FUNCTION event_bus.uuid_v7_lower_bound(timestamptz) IS
    'Smallest UUIDv7 of that millisecond: id >= uuid_v7_lower_bound(ts) selects events from ts on by primary key.';

-- emit is for everyone (it is the point); management is for the table owner / admin.
REVOKE ALL ON FUNCTION event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision, boolean, text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.unsubscribe(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus._emit_prepare(uuid, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus._request_call(uuid, integer) FROM PUBLIC;

-- a database that gains the extension gets its delivery worker at once.
SELECT event_bus._wake_launcher_on_commit();


COMMENT ON FUNCTION event_bus.process_pending_events(integer) IS
    'Deliver up to p_limit due deliveries now, in the calling session: fans out new events, claims due '
    'retries, sends HTTP requests (waiting for each up to its timeout) and runs SQL handlers, records the '
    'outcomes like the worker. For environments without the worker, tests, and draining by hand. '
    'Returns the number of deliveries attempted.';
REVOKE ALL ON FUNCTION event_bus.process_pending_events(integer) FROM PUBLIC;
