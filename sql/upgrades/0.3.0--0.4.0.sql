-- event_bus 0.3.0 -> 0.4.0 table changes: run once per database by every upgrade from 0.3.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.4.0 is released. The tables as
-- they are now: sql/tables.sql. What mock handlers (event_bus.mock_handler) received.

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
REVOKE ALL ON event_bus._mock_calls FROM PUBLIC;

-- Subscriptions deleted in the last moments: a fan-out that read a subscription just before the
-- DELETE committed can still insert deliveries for it, which nothing would ever claim; the
-- worker's upkeep removes those once such a fan-out cannot be running any more.
CREATE TABLE event_bus._deleted_subscriptions (
    id         uuid        NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT _deleted_subscriptions_pkey PRIMARY KEY (id)
);
COMMENT ON TABLE event_bus._deleted_subscriptions IS
    'Internal: subscriptions deleted recently, kept until the worker has swept deliveries a concurrent '
    'fan-out inserted for them (event_bus._sweep_deleted_subscriptions).';
REVOKE ALL ON event_bus._deleted_subscriptions FROM PUBLIC;
