-- event_bus 0.4.0 -> 0.5.0 table changes: run once per database by every upgrade from 0.4.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.5.0 is released. The tables as
-- they are now: sql/tables.sql. Every column added here is nullable or has a constant default: no table is rewritten.

------------------------------------------------------------------------------------------------
-- Request-reply (event_bus.request): the request is recorded as an event that the worker never
-- fans out, and subscriptions say whether they answer requests.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_events
    ADD COLUMN is_request boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN event_bus.module_events.is_request IS
    'True for the record of an event_bus.request call: answered synchronously by one subscription in the '
    'caller''s session, never fanned out, retried or replayed by the worker.';

ALTER TABLE event_bus.module_event_subscriptions
    ADD COLUMN replies            boolean NOT NULL DEFAULT false,
    ADD COLUMN idempotency_key    text,
    ADD COLUMN idempotency_window interval,
    ADD CONSTRAINT module_event_subscriptions_idempotency_key_check CHECK (
        idempotency_key ~ '^(entity_id|(payload|metadata)(\.[A-Za-z0-9_-]{1,100}){1,16})$'),
    ADD CONSTRAINT module_event_subscriptions_idempotency_window_check CHECK (
        idempotency_window > interval '0' AND idempotency_window <= interval '366 days');
COMMENT ON COLUMN event_bus.module_event_subscriptions.replies IS
    'Answers event_bus.request calls for the event types its pattern matches (at most one such '
    'subscription per type and tenant may be active for a request to find it).';
COMMENT ON COLUMN event_bus.module_event_subscriptions.idempotency_key IS
    'Where the idempotency key of an event is (entity_id, payload.<path> or metadata.<path>): a delivery '
    'whose key this subscription already handled successfully within idempotency_window is completed '
    'without calling the handler. NULL: every delivery calls the handler.';
COMMENT ON COLUMN event_bus.module_event_subscriptions.idempotency_window IS
    'How long a handled idempotency key counts (default 7 days when a key is set).';

-- Broker targets (RabbitMQ, NATS JetStream): the kind comes from the URL's scheme; the URL (with
-- its credentials) stays in handler_url, which only admins read.
ALTER TABLE event_bus.module_event_subscriptions
    DROP CONSTRAINT module_event_subscriptions_kind_check,
    ADD CONSTRAINT module_event_subscriptions_kind_check CHECK (
        (handler_kind IN ('http', 'amqp', 'nats') AND handler_url IS NOT NULL AND handler_function IS NULL)
        OR (handler_kind = 'edge_function' AND handler_url IS NULL AND handler_function IS NOT NULL)
        OR (handler_kind = 'sql' AND handler_url IS NULL AND handler_function IS NOT NULL));

GRANT SELECT (replies, idempotency_key, idempotency_window)
    ON event_bus.module_event_subscriptions TO event_bus_reader;

------------------------------------------------------------------------------------------------
-- Idempotency keys: per (subscription, tenant, key) the delivery that holds it (claimed: being
-- handled now) or handled it (done, at handled_at).
------------------------------------------------------------------------------------------------
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
REVOKE ALL ON event_bus._idempotency_keys FROM PUBLIC;
GRANT SELECT ON event_bus._idempotency_keys TO event_bus_admin;
