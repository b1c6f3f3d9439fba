-- event_bus schema: tables, indexes, comments.
-- API: Private objects start with "_". Everything is schema-qualified.

------------------------------------------------------------------------------------------------
-- module_events: one row per emitted event, written by emit in the business transaction.
------------------------------------------------------------------------------------------------
CREATE TABLE event_bus.module_events (
    id            uuid        NOT NULL DEFAULT event_bus._uuid_v7(),
    tenant_id     uuid        NOT NULL,
    event_type    text        NOT NULL,
    source_module text        NOT NULL,
    entity_type   text,
    entity_id     text,
    payload       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status        text        NOT NULL DEFAULT 'pending',
    retry_count   integer     NOT NULL DEFAULT 0,
    max_retries   integer     NOT NULL DEFAULT 3,
    error_message text,
    processed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    CONSTRAINT module_events_pkey PRIMARY KEY (id),
    CONSTRAINT module_events_status_check
        CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
    CONSTRAINT module_events_max_retries_check CHECK (max_retries BETWEEN 0 AND 100),
    CONSTRAINT module_events_payload_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT module_events_metadata_object CHECK (jsonb_typeof(metadata) = 'object')
) WITH (fillfactor = 85);

-- "recent events for tenant T" and keyset pagination: ids are UUIDv7, so id order is time order.
CREATE INDEX module_events_tenant_id_idx ON event_bus.module_events (tenant_id, id);
-- events not yet fanned out to their subscriptions (the worker's intake); small by construction.
CREATE INDEX module_events_undispatched_idx ON event_bus.module_events (id)
    WHERE dispatched_at IS NULL;

COMMENT ON TABLE event_bus.module_events IS
    'Events emitted by modules, one row each, written in the emitting transaction by emit_module_event(). '
    'status is derived from the event''s deliveries: pending (not yet attempted), processing (attempted, '
    'some delivery still due), completed (every matching subscription succeeded, or none matched), failed '
    '(every delivery finished and at least one is dead).';
COMMENT ON COLUMN event_bus.module_events.id IS 'UUIDv7: time-ordered, so inserts append to the index.';
COMMENT ON COLUMN event_bus.module_events.tenant_id IS 'Tenant (organization) the event belongs to; required.';
COMMENT ON COLUMN event_bus.module_events.event_type IS 'Dot-separated event type, e.g. invoice.posted.';
COMMENT ON COLUMN event_bus.module_events.source_module IS 'Module that emitted the event, e.g. accounting.';
COMMENT ON COLUMN event_bus.module_events.entity_type IS 'Type of the business entity, e.g. invoice.';
COMMENT ON COLUMN event_bus.module_events.entity_id IS 'Id of the business entity (a uuid or any text key).';
COMMENT ON COLUMN event_bus.module_events.payload IS 'Event data snapshot: a JSON object.';
COMMENT ON COLUMN event_bus.module_events.metadata IS
    'Envelope data: correlation_id, causation_id, actor, trace_id, ... (a JSON object).';
COMMENT ON COLUMN event_bus.module_events.status IS 'Derived from deliveries: pending, processing, completed, failed.';
COMMENT ON COLUMN event_bus.module_events.retry_count IS 'Failed attempts so far, summed over the event''s deliveries.';
COMMENT ON COLUMN event_bus.module_events.max_retries IS
    'Retries after the first attempt before a delivery is dead, unless its subscription sets its own.';
COMMENT ON COLUMN event_bus.module_events.error_message IS 'Last error of a dead delivery, if any.';
COMMENT ON COLUMN event_bus.module_events.processed_at IS 'When the event reached completed or failed.';
COMMENT ON COLUMN event_bus.module_events.created_at IS 'Emit time (the emitting transaction''s start).';
COMMENT ON COLUMN event_bus.module_events.dispatched_at IS
    'When the worker fanned the event out to its matching subscriptions; NULL until then.';

------------------------------------------------------------------------------------------------
-- module_event_subscriptions: who reacts to which event types, and how to reach them.
------------------------------------------------------------------------------------------------
CREATE TABLE event_bus.module_event_subscriptions (
    id               uuid        NOT NULL DEFAULT event_bus._uuid_v7(),
    event_type       text        NOT NULL,
    handler_module   text        NOT NULL,
    handler_kind     text        NOT NULL,
    handler_url      text,
    handler_function text,
    tenant_id        uuid,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    secret           text,
    timeout_ms       integer,
    max_retries      integer,
    backoff_base_ms  integer,
    backoff_max_ms   integer,
    run_as           name,
    description      text,
    is_active        boolean     NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT module_event_subscriptions_pkey PRIMARY KEY (id),
    CONSTRAINT module_event_subscriptions_pattern_check CHECK (event_bus._is_valid_pattern(event_type)),
    CONSTRAINT module_event_subscriptions_kind_check CHECK (
        (handler_kind = 'http' AND handler_url IS NOT NULL AND handler_function IS NULL)
        OR (handler_kind = 'edge_function' AND handler_url IS NULL AND handler_function IS NOT NULL)
        OR (handler_kind = 'sql' AND handler_url IS NULL AND handler_function IS NOT NULL)),
    CONSTRAINT module_event_subscriptions_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT module_event_subscriptions_timeout_check CHECK (timeout_ms BETWEEN 1 AND 3600000),
    CONSTRAINT module_event_subscriptions_max_retries_check CHECK (max_retries BETWEEN 0 AND 100),
    CONSTRAINT module_event_subscriptions_backoff_check CHECK (
        backoff_base_ms BETWEEN 1 AND 86400000 AND backoff_max_ms BETWEEN 1 AND 604800000)
);
CREATE INDEX module_event_subscriptions_active_idx
    ON event_bus.module_event_subscriptions (event_type) WHERE is_active;

COMMENT ON TABLE event_bus.module_event_subscriptions IS
    'Subscriptions: an event-type pattern (AMQP topic rules: * one segment, # zero or more) and a handler '
    '(an HTTP URL, a Supabase Edge Function name resolved against event_bus.edge_function_base_url, or a SQL '
    'function). Manage with event_bus.subscribe() / event_bus.unsubscribe().';
COMMENT ON COLUMN event_bus.module_event_subscriptions.event_type IS 'Pattern matched against event types.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.handler_module IS 'Module that handles the events.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.handler_kind IS 'http, edge_function or sql.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.handler_url IS 'Target URL for handler_kind = http.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.handler_function IS
    'Edge Function name (handler_kind = edge_function) or schema-qualified SQL function taking '
    'event_bus.module_events (handler_kind = sql).';
COMMENT ON COLUMN event_bus.module_event_subscriptions.tenant_id IS 'Only events of this tenant; NULL = every tenant.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.headers IS 'Extra HTTP headers, a JSON object of strings.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.secret IS
    'Standard Webhooks signing secret (whsec_<base64> or raw text); NULL = unsigned.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.timeout_ms IS 'Request timeout; NULL = event_bus.default_timeout_ms.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.max_retries IS 'Retries before dead; NULL = the event''s max_retries.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.backoff_base_ms IS 'First retry delay; NULL = event_bus.backoff_base_ms.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.backoff_max_ms IS 'Retry delay cap; NULL = event_bus.backoff_max_ms.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.run_as IS 'Role a SQL handler runs as.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.is_active IS 'Inactive subscriptions receive no new deliveries.';

------------------------------------------------------------------------------------------------
-- module_event_deliveries: independent delivery state per (event, subscription).
------------------------------------------------------------------------------------------------
-- id: event_bus._delivery_id(event_id, subscription_id), set by the fan-out (deterministic, see there)
CREATE TABLE event_bus.module_event_deliveries (
    id              uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_http_status integer,
    last_error      text,
    completed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT module_event_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT module_event_deliveries_status_check
        CHECK (status IN ('pending', 'processing', 'completed', 'failed'))
) WITH (fillfactor = 70);

CREATE UNIQUE INDEX module_event_deliveries_event_sub_idx
    ON event_bus.module_event_deliveries (event_id, subscription_id);
-- the claim: due = pending or processing whose lease (next_attempt_at) has expired.
CREATE INDEX module_event_deliveries_due_idx
    ON event_bus.module_event_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'processing');
-- the queue head churns: vacuum it far more often than the defaults do.
ALTER TABLE event_bus.module_event_deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_vacuum_insert_scale_factor = 0.05);

COMMENT ON TABLE event_bus.module_event_deliveries IS
    'Delivery state of one event to one subscription. A retry or replay re-arms only these rows, so a '
    'handler that already succeeded is never invoked again. id is the webhook-id sent on every attempt: '
    'event_bus._delivery_id(event_id, subscription_id), the same however often the event is fanned out.';
COMMENT ON COLUMN event_bus.module_event_deliveries.status IS
    'pending (due at next_attempt_at), processing (leased until next_attempt_at), completed, failed (dead).';
COMMENT ON COLUMN event_bus.module_event_deliveries.attempts IS 'Attempts started so far.';
COMMENT ON COLUMN event_bus.module_event_deliveries.next_attempt_at IS
    'pending: when the next attempt is due; processing: when the lease expires and the delivery is claimed again.';

------------------------------------------------------------------------------------------------
-- module_event_logs: one row per attempt.
------------------------------------------------------------------------------------------------
CREATE TABLE event_bus.module_event_logs (
    id              uuid        NOT NULL DEFAULT event_bus._uuid_v7(),
    event_id        uuid        NOT NULL,
    subscription_id uuid,
    delivery_id     uuid,
    tenant_id       uuid        NOT NULL,
    attempt         integer     NOT NULL,
    status          text        NOT NULL,
    http_status     integer,
    response        jsonb,
    error_message   text,
    duration_ms     double precision,
    executed_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT module_event_logs_pkey PRIMARY KEY (id),
    CONSTRAINT module_event_logs_status_check CHECK (status IN ('success', 'failed'))
);
CREATE INDEX module_event_logs_event_idx ON event_bus.module_event_logs (event_id);

COMMENT ON TABLE event_bus.module_event_logs IS
    'Attempt log: one row per delivery attempt with its outcome, HTTP status, response (truncated to '
    'event_bus.max_response_bytes) and duration.';
COMMENT ON COLUMN event_bus.module_event_logs.attempt IS 'Attempt number of the delivery, from 1.';
COMMENT ON COLUMN event_bus.module_event_logs.status IS 'success or failed.';
COMMENT ON COLUMN event_bus.module_event_logs.http_status IS 'HTTP status code, NULL when no response arrived.';
COMMENT ON COLUMN event_bus.module_event_logs.response IS 'Response body as JSON, or {"body": text} when not JSON.';
COMMENT ON COLUMN event_bus.module_event_logs.duration_ms IS 'Time from request start to outcome.';

-- Nothing is readable or writable by PUBLIC; emit goes through the SECURITY DEFINER function.
REVOKE ALL ON event_bus.module_events, event_bus.module_event_subscriptions,
    event_bus.module_event_deliveries, event_bus.module_event_logs FROM PUBLIC;
-- The schema itself is visible so that any role can call the functions granted to it.
GRANT USAGE ON SCHEMA event_bus TO PUBLIC;
