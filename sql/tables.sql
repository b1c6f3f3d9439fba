-- event_bus tables: every table of the current version with its indexes and comments, in the shape a
-- fresh install creates and an upgrade ends with (tests/upgrade.rs compares the two object by object;
-- columns stay in the order the upgrades added them). Roles, grants and row-level security:
-- sql/roles.sql. Changes to a released version's tables go here AND in an upgrade delta,
-- sql/upgrades/<from>--<to>.sql.
-- Private objects start with "_". Everything is schema-qualified. Delivery states are written as markers
-- (<pending>, <failed>, ...): build.rs puts in the names the lifecycle declares (core/src/lifecycle.rs).
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
    status        text        NOT NULL DEFAULT <pending>,
    retry_count   integer     NOT NULL DEFAULT 0,
    max_retries   integer     NOT NULL DEFAULT 3,
    error_message text,
    processed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz,
    is_request    boolean     NOT NULL DEFAULT false,
    CONSTRAINT module_events_pkey PRIMARY KEY (id)
    -- no row CHECKs: PostgreSQL plans a table's CHECK constraints again for every INSERT statement (12% of
    -- an emit's CPU with four of them). Every path that writes an event row checks the same rules first
    -- (payload and metadata are JSON objects, else 22023); status and max_retries are written only by
    -- event_bus's functions, and nothing is granted on the table to anyone else.
) WITH (fillfactor = 85);

-- "recent events for tenant T" and keyset pagination: ids are UUIDv7, so id order is time order. Only
-- fanned-out events are in it, as in the type, status and entity indexes below: the fan-out's (or the
-- record's) UPDATE writes a new row version into every index anyway (dispatched_at is in the undispatched
-- index's predicate), so the entry costs nothing there, and emit's INSERT writes two index entries (the
-- primary key and the undispatched index) instead of three. A tenant's events not yet fanned out are few
-- and found through the undispatched index (list_events reads both and merges them).
CREATE INDEX module_events_tenant_id_idx ON event_bus.module_events (tenant_id, id)
    WHERE dispatched_at IS NOT NULL;
-- events not yet fanned out to their subscriptions (the worker's intake); small by construction.
CREATE INDEX module_events_undispatched_idx ON event_bus.module_events (id)
    WHERE dispatched_at IS NULL;
-- Causation and correlation: events emitted by a SQL handler record causation_id / correlation_id
-- in their metadata. An event's children and a correlation's events are found by index; the
-- indexes hold only events that carry the key, so a plain emit does not pay for them.
CREATE INDEX module_events_causation_idx
    ON event_bus.module_events ((metadata ->> 'causation_id'))
    WHERE metadata ? 'causation_id';
CREATE INDEX module_events_correlation_idx
    ON event_bus.module_events ((metadata ->> 'correlation_id'), id)
    WHERE metadata ? 'correlation_id';

-- Events by type for a tenant (list_events with an exact type, the console's filter under
-- row-level security): only fanned-out events are in it, so an emit's INSERT does not pay for it;
-- the fan-out's UPDATE, which writes a new row version into every index anyway (dispatched_at is
-- in the undispatched index's predicate), adds the entry.
CREATE INDEX module_events_tenant_type_idx
    ON event_bus.module_events (tenant_id, event_type, id)
    WHERE dispatched_at IS NOT NULL;

-- Events by status (list_events with a status, the console's filter): the fanned-out events that
-- did not simply complete. The common event (delivered at its first attempt) never enters it: the
-- record that completes it is the UPDATE that sets dispatched_at. An event's other status changes
-- are no longer HOT updates (status is in this predicate): a retried or held event writes its
-- index entries again.
CREATE INDEX module_events_status_idx
    ON event_bus.module_events (status, id)
    WHERE dispatched_at IS NOT NULL AND status IN (<pending>, <processing>, <failed>);
-- Events by entity (list_events with an entity id): fanned-out events that name one, as the type
-- index. A hash index: an entity id may be longer than a btree entry can hold (a hash index keeps
-- four bytes of any), and an entity's events are few enough to be ordered after the index.
CREATE INDEX module_events_entity_idx
    ON event_bus.module_events USING hash (entity_id)
    WHERE entity_id IS NOT NULL AND dispatched_at IS NOT NULL;

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
    'When the worker fanned the event out to its matching subscriptions. NULL until then, and for an event '
    'whose deliveries were all sent at once, until the first outcome is recorded (milliseconds later, or when '
    'the attempt times out): such an event is leased (its first attempts in flight have no delivery rows until '
    'their outcomes are recorded) or already has its deliveries (see module_event_deliveries).';
COMMENT ON COLUMN event_bus.module_events.is_request IS
    'True for the record of an event_bus.request call: answered synchronously by one subscription in the '
    'caller''s session, never fanned out, retried or replayed by the worker.';

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
    -- health and the circuit breaker
    breaker_threshold    integer,
    consecutive_failures integer NOT NULL DEFAULT 0,
    breaker_opened_at    timestamptz,
    breaker_open_until   timestamptz,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    last_error           text,
    -- ordering and flow control
    ordered              boolean NOT NULL DEFAULT false,
    max_in_flight        integer,
    max_per_second       double precision,
    rate_next_at         timestamptz,
    -- request-reply and idempotency
    replies              boolean NOT NULL DEFAULT false,
    idempotency_key      text,
    idempotency_window   interval,
    -- who named a SQL handler's role (sql/run_as.sql)
    run_as_set_by        name,
    -- content filter: a SQL/JSON path predicate over the event (event_bus.subscribe's p_filter)
    filter               jsonpath,
    CONSTRAINT module_event_subscriptions_pkey PRIMARY KEY (id),
    CONSTRAINT module_event_subscriptions_pattern_check CHECK (event_bus._is_valid_pattern(event_type)),
    -- broker targets (RabbitMQ, NATS JetStream, Kafka): the kind comes from the URL's scheme; the URL (with its
    -- credentials) stays in handler_url, which only admins read
    CONSTRAINT module_event_subscriptions_kind_check CHECK (
        (handler_kind IN ('http', 'amqp', 'nats', 'kafka') AND handler_url IS NOT NULL AND handler_function IS NULL)
        OR (handler_kind = 'edge_function' AND handler_url IS NULL AND handler_function IS NOT NULL)
        OR (handler_kind = 'sql' AND handler_url IS NULL AND handler_function IS NOT NULL)),
    CONSTRAINT module_event_subscriptions_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    CONSTRAINT module_event_subscriptions_timeout_check CHECK (timeout_ms BETWEEN 1 AND 3600000),
    CONSTRAINT module_event_subscriptions_max_retries_check CHECK (max_retries BETWEEN 0 AND 100),
    CONSTRAINT module_event_subscriptions_backoff_check CHECK (
        backoff_base_ms BETWEEN 1 AND 86400000 AND backoff_max_ms BETWEEN 1 AND 604800000),
    CONSTRAINT module_event_subscriptions_breaker_check CHECK (breaker_threshold BETWEEN 0 AND 1000000),
    CONSTRAINT module_event_subscriptions_max_in_flight_check CHECK (max_in_flight BETWEEN 1 AND 10000),
    CONSTRAINT module_event_subscriptions_max_per_second_check CHECK (max_per_second > 0 AND max_per_second <= 100000),
    CONSTRAINT module_event_subscriptions_idempotency_key_check CHECK (
        idempotency_key ~ '^(entity_id|(payload|metadata)(\.[A-Za-z0-9_-]{1,100}){1,16})$'),
    CONSTRAINT module_event_subscriptions_idempotency_window_check CHECK (
        idempotency_window > interval '0' AND idempotency_window <= interval '366 days')
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
COMMENT ON COLUMN event_bus.module_event_subscriptions.replies IS
    'Answers event_bus.request calls for the event types its pattern matches (at most one such '
    'subscription per type and tenant may be active for a request to find it).';
COMMENT ON COLUMN event_bus.module_event_subscriptions.idempotency_key IS
    'Where the idempotency key of an event is (entity_id, payload.<path> or metadata.<path>): a delivery '
    'whose key this subscription already handled successfully within idempotency_window is completed '
    'without calling the handler. NULL: every delivery calls the handler.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.idempotency_window IS
    'How long a handled idempotency key counts (default 7 days when a key is set).';
COMMENT ON COLUMN event_bus.module_event_subscriptions.run_as_set_by IS
    'The role that last named this SQL handler''s function or run_as role (set by a trigger, never by hand). '
    'The worker runs the handler only while this role may still become the handler''s role. NULL for '
    'subscriptions made before 0.11.0: see event_bus.unverified_run_as.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.filter IS
    'Content filter: a SQL/JSON path predicate over the event document {payload, metadata, event_type, '
    'source_module, entity_type, entity_id, tenant_id}, e.g. $.payload.total > 10000. An event the type '
    'pattern matches gets a delivery only when it is true; false, or unknown (an error, counted in '
    'subscription_health.filter_errors), gets none. NULL = no filter. Set with subscribe(p_filter => ...) or '
    'set_subscription_filter().';

------------------------------------------------------------------------------------------------
-- module_event_deliveries: independent delivery state per (event, subscription).
------------------------------------------------------------------------------------------------
-- id: event_bus._delivery_id(event_id, subscription_id), set by the fan-out (deterministic, see there)
CREATE TABLE event_bus.module_event_deliveries (
    id              uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    status          text        NOT NULL DEFAULT <pending>,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    last_http_status integer,
    last_error      text,
    completed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempt_offset  integer     NOT NULL DEFAULT 0,
    ordering_key    text,
    capped_subscription_id uuid,
    CONSTRAINT module_event_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT module_event_deliveries_status_check
        CHECK (status IN (<pending>, <processing>, <completed>, <failed>, <held>, <waiting>, <skipped>))
) WITH (fillfactor = 70);

CREATE UNIQUE INDEX module_event_deliveries_event_sub_idx
    ON event_bus.module_event_deliveries (event_id, subscription_id);
-- the claim: due = pending or processing whose lease (next_attempt_at) has expired.
CREATE INDEX module_event_deliveries_due_idx
    ON event_bus.module_event_deliveries (next_attempt_at)
    WHERE status IN (<pending>, <processing>);
-- ordered streams: the unfinished deliveries of each (subscription, tenant, entity), in emit order
CREATE INDEX module_event_deliveries_stream_idx
    ON event_bus.module_event_deliveries (subscription_id, tenant_id, ordering_key, event_id)
    WHERE ordering_key IS NOT NULL AND status IN (<waiting>, <pending>, <processing>, <held>, <failed>);
-- in-flight deliveries of subscriptions with max_in_flight
CREATE INDEX module_event_deliveries_in_flight_idx
    ON event_bus.module_event_deliveries (capped_subscription_id, next_attempt_at)
    WHERE capped_subscription_id IS NOT NULL AND status = <processing>;
-- held deliveries of one subscription, released when its breaker closes
CREATE INDEX module_event_deliveries_held_idx
    ON event_bus.module_event_deliveries (subscription_id) WHERE status = <held>;
-- failed deliveries (the dead letters), newest first
CREATE INDEX module_event_deliveries_failed_idx
    ON event_bus.module_event_deliveries (completed_at) WHERE status = <failed>;
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
    'pending (due at next_attempt_at), processing (leased until next_attempt_at), completed, failed (dead), '
    'held (its subscription''s circuit breaker is open; released when it closes), waiting (behind an earlier '
    'unfinished delivery of its ordered stream), skipped (a dead delivery an operator skipped).';
COMMENT ON COLUMN event_bus.module_event_deliveries.attempts IS 'Attempts started so far.';
COMMENT ON COLUMN event_bus.module_event_deliveries.next_attempt_at IS
    'pending: when the next attempt is due; processing: when the lease expires and the delivery is claimed again.';
COMMENT ON COLUMN event_bus.module_event_deliveries.attempt_offset IS
    'Attempts made before the last manual retry or replay: the retry budget and the backoff count '
    'from here, while attempt numbers in the log keep growing.';
COMMENT ON COLUMN event_bus.module_event_deliveries.ordering_key IS
    'For an ordered subscription: the entity stream (["entity_type", "entity_id"]) this delivery belongs '
    'to, together with tenant_id and subscription_id; NULL when unordered or the event names no entity.';
COMMENT ON COLUMN event_bus.module_event_deliveries.capped_subscription_id IS
    'Internal: the subscription id while it has max_in_flight (set at claim), so in-flight deliveries of '
    'capped subscriptions are counted from a small index.';

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
    -- keyed by event first: the log is read by event (get_event, retention), never by its row id alone, so
    -- one index serves both the key and those reads (one index entry per attempt, not two)
    CONSTRAINT module_event_logs_pkey PRIMARY KEY (event_id, id),
    CONSTRAINT module_event_logs_status_check CHECK (status IN ('success', <failed>))
);
-- (a subscription's recent attempts are counted in _attempt_minutes, not read from the log: no index
-- on subscription_id, one entry less per attempt)

COMMENT ON TABLE event_bus.module_event_logs IS
    'Attempt log: one row per delivery attempt with its outcome, HTTP status, response (truncated to '
    'event_bus.max_response_bytes) and duration.';
COMMENT ON COLUMN event_bus.module_event_logs.attempt IS 'Attempt number of the delivery, from 1.';
COMMENT ON COLUMN event_bus.module_event_logs.status IS 'success or failed.';
COMMENT ON COLUMN event_bus.module_event_logs.http_status IS 'HTTP status code, NULL when no response arrived.';
COMMENT ON COLUMN event_bus.module_event_logs.response IS 'Response body as JSON, or {"body": text} when not JSON.';
COMMENT ON COLUMN event_bus.module_event_logs.duration_ms IS 'Time from request start to outcome.';


------------------------------------------------------------------------------------------------
-- event_type_schemas: payload contracts (sql/contracts.sql), checked by emit.
------------------------------------------------------------------------------------------------
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

------------------------------------------------------------------------------------------------
-- Internal tables (no access but through event_bus's functions unless granted in sql/roles.sql).
------------------------------------------------------------------------------------------------
-- Counters for metrics(): monotonic, transactional, kept across retention.
CREATE TABLE event_bus._counters (
    name  text   NOT NULL,
    value bigint NOT NULL DEFAULT 0,
    CONSTRAINT _counters_pkey PRIMARY KEY (name)
);
INSERT INTO event_bus._counters (name) VALUES
    ('events_dispatched'), ('attempts_succeeded'), ('attempts_failed'), ('deliveries_failed'),
    ('events_purged');
COMMENT ON TABLE event_bus._counters IS
    'Internal: counters behind metrics(), advanced by the worker in the transactions that record its work.';

-- What mock handlers (event_bus.mock_handler) received.
CREATE TABLE event_bus._mock_calls (
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    subscription_id uuid        NOT NULL,
    event_id        uuid        NOT NULL,
    event           jsonb       NOT NULL,
    called_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT _mock_calls_pkey PRIMARY KEY (seq),
    CONSTRAINT _mock_calls_subscription_fkey FOREIGN KEY (subscription_id)
        REFERENCES event_bus.module_event_subscriptions (id) ON DELETE CASCADE
);
CREATE INDEX _mock_calls_subscription_idx ON event_bus._mock_calls (subscription_id, seq);
COMMENT ON TABLE event_bus._mock_calls IS
    'Internal: each event a mock handler (event_bus.mock_handler) received, in order; read with '
    'event_bus.mock_calls(mock). Rows go with the test''s transaction, or with the mock''s subscription.';

-- Subscriptions deleted in the last moments: a fan-out that read a subscription just before the
-- DELETE committed can still insert deliveries for it, which nothing would ever claim; the
-- worker's upkeep removes those once such a fan-out cannot be running any more.
CREATE TABLE event_bus._deleted_subscriptions (
    id         uuid        NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    event_ids  uuid[]      NOT NULL DEFAULT '{}',
    CONSTRAINT _deleted_subscriptions_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE event_bus._deleted_subscriptions IS
    'Internal: subscriptions deleted recently, kept until the worker has swept deliveries a concurrent '
    'fan-out inserted for them (event_bus._sweep_deleted_subscriptions).';
COMMENT ON COLUMN event_bus._deleted_subscriptions.event_ids IS
    'The events whose unfinished deliveries the DELETE removed: their status is derived again by the worker''s '
    'upkeep (event_bus._refresh_after_deletes), once every transaction that could have raced the DELETE is over.';

-- Idempotency keys: per (subscription, tenant, key) the delivery that holds it (claimed: being
-- handled now) or handled it (done, at handled_at).
CREATE TABLE event_bus._idempotency_keys (
    subscription_id uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    key             text        NOT NULL,
    delivery_id     uuid        NOT NULL,
    state           text        NOT NULL,
    -- claimed: until when the holder's lease runs (after it, another delivery may take the key)
    claimed_until   timestamptz,
    handled_at      timestamptz,
    CONSTRAINT _idempotency_keys_pkey PRIMARY KEY (subscription_id, tenant_id, key),
    CONSTRAINT _idempotency_keys_state_check CHECK (
        (state = 'claimed' AND claimed_until IS NOT NULL AND handled_at IS NULL)
        OR (state = 'done' AND handled_at IS NOT NULL)),
    CONSTRAINT _idempotency_keys_subscription_fkey FOREIGN KEY (subscription_id)
        REFERENCES event_bus.module_event_subscriptions (id) ON DELETE CASCADE
);
CREATE INDEX _idempotency_keys_delivery_idx ON event_bus._idempotency_keys (delivery_id);
CREATE INDEX _idempotency_keys_handled_idx ON event_bus._idempotency_keys (handled_at) WHERE state = 'done';
COMMENT ON TABLE event_bus._idempotency_keys IS
    'Internal: idempotency keys of subscriptions with an idempotency_key, per tenant: the delivery holding '
    'one while its handler runs (claimed), or the one that handled it (done). Done keys older than their '
    'subscription''s window are purged by the worker''s upkeep.';

-- Delivery attempts per tenant, subscription and minute, for delivery_timeline (the console's chart)
-- and subscription_health (attempts and failures of the last hour): counted as the attempt log is
-- written, so a chart of a busy day reads a few thousand rows, not every attempt. Insert-only (each INSERT into the log adds its own rows: no row is contended by two
-- writers); the worker's upkeep folds a finished minute's rows into one and drops rows older
-- than 32 days. Sums are exact whatever the folding did.
CREATE TABLE event_bus._attempt_minutes (
    tenant_id uuid        NOT NULL,
    minute    timestamptz NOT NULL,
    succeeded bigint      NOT NULL DEFAULT 0,
    failed    bigint      NOT NULL DEFAULT 0,
    folded    boolean     NOT NULL DEFAULT false,
    subscription_id uuid
);
CREATE INDEX _attempt_minutes_minute_idx ON event_bus._attempt_minutes (minute);
CREATE INDEX _attempt_minutes_unfolded_idx ON event_bus._attempt_minutes (minute) WHERE NOT folded;
CREATE INDEX _attempt_minutes_subscription_idx ON event_bus._attempt_minutes (subscription_id, minute);
COMMENT ON TABLE event_bus._attempt_minutes IS
    'Internal: delivery attempts that succeeded / failed per tenant, subscription and minute (of executed_at), '
    'written by a statement trigger on module_event_logs; read by delivery_timeline() and subscription_health. '
    'Kept 32 days.';
COMMENT ON COLUMN event_bus._attempt_minutes.subscription_id IS
    'The attempts'' subscription (NULL for attempts counted before 0.12.0, and for request() records).';

-- Fanned-out events per tenant, hour (of created_at), source module, type and status, for event_stats
-- (the console's overview): a day of ten million events reads a few thousand rows. Written by
-- statement triggers on module_events (every UPDATE that fans an event out or changes its status adds
-- +1/-1 rows, a DELETE -1 rows): insert-only, so no row is contended by two writers; the worker's
-- upkeep folds an hour's rows into one. Sums are exact whatever the folding did. Events not yet fanned
-- out are not in it: event_stats counts them from the rows (few, by the undispatched index).
CREATE TABLE event_bus._event_hours (
    tenant_id     uuid        NOT NULL,
    hour          timestamptz NOT NULL,
    source_module text        NOT NULL,
    event_type    text        NOT NULL,
    pending       bigint      NOT NULL DEFAULT 0,
    processing    bigint      NOT NULL DEFAULT 0,
    completed     bigint      NOT NULL DEFAULT 0,
    failed        bigint      NOT NULL DEFAULT 0,
    folded        boolean     NOT NULL DEFAULT false
);
CREATE INDEX _event_hours_hour_idx ON event_bus._event_hours (hour);
CREATE INDEX _event_hours_unfolded_idx ON event_bus._event_hours (hour) WHERE NOT folded;
-- does any fanned-out event have this type and module (list_events with both)?
CREATE INDEX _event_hours_type_idx ON event_bus._event_hours (event_type, source_module, tenant_id);
COMMENT ON TABLE event_bus._event_hours IS
    'Internal: fanned-out events per tenant, hour of created_at (whole UTC hours), source module and type, '
    'by status, as sums of +1/-1 rows written by statement triggers on module_events; read by event_stats().';

-- Filter errors: an event whose subscription's filter came out unknown on it (a type mismatch, a
-- strict path that is missing, an error) is no match, and counted here per subscription and
-- tenant. Insert-only (the fan-out adds a row per statement and subscription: no row is contended);
-- the worker's upkeep folds each subscription's and tenant's rows into one.
CREATE TABLE event_bus._filter_errors (
    subscription_id uuid        NOT NULL,
    tenant_id       uuid        NOT NULL,
    errors          bigint      NOT NULL,
    last_at         timestamptz NOT NULL DEFAULT now(),
    folded          boolean     NOT NULL DEFAULT false
    -- (no foreign key: the upkeep folds these rows without taking subscription rows, and drops those
    -- of subscriptions that are gone)
);
CREATE INDEX _filter_errors_subscription_idx ON event_bus._filter_errors (subscription_id, tenant_id);
COMMENT ON TABLE event_bus._filter_errors IS
    'Internal: events whose subscription''s filter came out unknown (no delivery made), per subscription and '
    'tenant; summed by subscription_health.filter_errors and metrics(). Reset when the filter changes.';

-- Event leases: the fan-out leases every event it takes here. An event whose deliveries are all plain
-- first attempts (no breaker open, no limit, not ordered, no idempotency key: the common case) gets no
-- delivery rows at its fan-out: its lease says it is in flight, and the record writes each delivery's
-- row once, with its outcome (a completed delivery is one INSERT, not an INSERT and an UPDATE). The
-- event is not marked dispatched until then, so it stays in the intake: the lease keeps other workers
-- and process_pending_events off it until lease_end, after which it is fanned out again (its worker
-- died or is stuck past every timeout; the deliveries keep their ids, so a receiver sees the same
-- webhook-id). UNLOGGED: it writes no WAL, and crash recovery empties it — as if every lease had
-- expired, which is what a crash means for them. Not on standbys and not in dumps, for the same reason.
CREATE UNLOGGED TABLE event_bus._event_leases (
    event_id         uuid        NOT NULL,
    holder           uuid        NOT NULL,
    lease_end        timestamptz NOT NULL,
    taken_at         timestamptz NOT NULL DEFAULT now(),
    subscription_ids uuid[]      NOT NULL,
    CONSTRAINT _event_leases_pkey PRIMARY KEY (event_id)
);
COMMENT ON TABLE event_bus._event_leases IS
    'Internal: events a worker (holder: a process) has fanned out and whose first attempts are in flight, '
    'until lease_end; subscription_ids: the subscriptions those attempts go to, without delivery rows '
    'until their outcomes are recorded. Unlogged: emptied by crash recovery (the events are fanned out again).';

------------------------------------------------------------------------------------------------
-- Backups with pg_dump: an extension's tables are left out of a dump unless named here, and a
-- restore (CREATE EXTENSION, then these tables' rows) would bring back an empty bus. Named: the
-- state of the bus. Not named: _counters (created with their rows by CREATE EXTENSION: metrics()'s
-- counters start again from 0 after a restore), _event_leases (unlogged; leases die with the server that
-- took them), _attempt_minutes (its trigger counts the attempt log
-- again as the log is restored), _mock_calls (test helpers' calls). Physical backups and pg_upgrade
-- keep everything as it is.
------------------------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('event_bus.module_events', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus.module_event_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus.module_event_deliveries', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus.module_event_logs', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus.event_type_schemas', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus._deleted_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus._idempotency_keys', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus._event_hours', '');
SELECT pg_catalog.pg_extension_config_dump('event_bus._filter_errors', '');
