-- event_bus 0.10.0 -> 0.11.0 table changes: run once per database by every upgrade from 0.10.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.11.0 is released. The tables as
-- they are now: sql/tables.sql. No table is rewritten.

------------------------------------------------------------------------------------------------
-- Who named a SQL handler's role. A subscription's run_as (or, without one, its function's owner)
-- is the role the worker becomes to run the handler, so naming it is held to the rule of SET ROLE:
-- the namer must be allowed to become that role, and only a superuser may name a superuser
-- (event_bus._run_as_refusal, sql/run_as.sql). The trigger there records the namer; the worker checks
-- the rule again, for the namer, before every batch of calls.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_subscriptions ADD COLUMN run_as_set_by name;
COMMENT ON COLUMN event_bus.module_event_subscriptions.run_as_set_by IS
    'The role that last named this SQL handler''s function or run_as role (set by a trigger, never by hand). '
    'The worker runs the handler only while this role may still become the handler''s role. NULL for '
    'subscriptions made before 0.11.0: see event_bus.unverified_run_as.';

-- Before 0.11.0 any admin could name any role. Subscriptions from then have no recorded namer:
-- those whose handler runs as a superuser stop (each attempt says why) until a superuser confirms
-- them; the others run as before. All are listed in event_bus.unverified_run_as.
DO $$
DECLARE
    v_all integer;
    v_super integer;
BEGIN
    SELECT count(*),
           count(*) FILTER (WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                                          WHERE r.rolname = s.run_as AND r.rolsuper))
      INTO v_all, v_super
      FROM event_bus.module_event_subscriptions s
     WHERE s.handler_kind = 'sql';
    IF v_all > 0 THEN
        RAISE WARNING 'event_bus: % SQL handler subscription(s) were made before 0.11.0 and name no recorder of their role; % run as a superuser and stop until a superuser confirms them',
                      v_all, v_super
            USING HINT = 'Review SELECT * FROM event_bus.unverified_run_as; confirm each as a role that may become '
                         'its run_as role: UPDATE event_bus.module_event_subscriptions SET run_as_set_by = current_user '
                         'WHERE id = ...';
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- The events whose deliveries an unsubscribe removed. Their status is derived from the deliveries
-- left, by the DELETE's trigger; a worker recording another delivery of the same event at that
-- moment derives it too, and under READ COMMITTED each may miss the other's uncommitted change
-- (the event stayed 'processing' with every delivery finished). The worker's upkeep derives these
-- events' status again two seconds later (event_bus._refresh_after_deletes).
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus._deleted_subscriptions ADD COLUMN event_ids uuid[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN event_bus._deleted_subscriptions.event_ids IS
    'The events whose unfinished deliveries the DELETE removed: their status is derived again by the worker''s '
    'upkeep (event_bus._refresh_after_deletes), once every transaction that could have raced the DELETE is over.';

------------------------------------------------------------------------------------------------
-- Before 0.11.0 an attempt's error could quote its target URL, secret path, query and userinfo
-- included ("error sending request for url (http://h/hook?token=...)"), and readers and operators
-- read errors. Every URL in what they read is cut to its scheme and host, as the worker now writes
-- them (crate::validate::scrub_urls).
------------------------------------------------------------------------------------------------
DO $$
DECLARE
    -- scheme://[user[:password]@]host[:port][path][?query][#fragment], as far as a URL can go unquoted
    -- (a ':' that ends it, as in "cannot connect to amqp://...: refused", stays)
    v_url constant text := '([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#@()"''<>`\\{}|]*@)?([^\s/?#()"''<>`\\{}|]*)(?:[^\s()"''<>`\\{}|:]|:(?![\s]|$))*';
BEGIN
    UPDATE event_bus.module_event_logs
       SET error_message = regexp_replace(error_message, v_url, '\1\3', 'g')
     WHERE error_message ~ '://';
    UPDATE event_bus.module_event_logs
       SET response = regexp_replace(response::text, v_url, '\1\3', 'g')::jsonb
     WHERE response::text ~ '://';
    UPDATE event_bus.module_event_deliveries
       SET last_error = regexp_replace(last_error, v_url, '\1\3', 'g')
     WHERE last_error ~ '://';
    UPDATE event_bus.module_event_subscriptions
       SET last_error = regexp_replace(last_error, v_url, '\1\3', 'g')
     WHERE last_error ~ '://';
    UPDATE event_bus.module_events
       SET error_message = regexp_replace(error_message, v_url, '\1\3', 'g')
     WHERE error_message ~ '://';
    -- operational events (event_bus.delivery.dead, event_bus.breaker.opened, ...) carry last errors
    UPDATE event_bus.module_events
       SET payload = regexp_replace(payload::text, v_url, '\1\3', 'g')::jsonb
     WHERE event_type LIKE 'event\_bus.%' AND payload::text ~ '://';
END
$$;

------------------------------------------------------------------------------------------------
-- One name per state: a delivery whose retries ran out is "failed" (the value of its status) everywhere,
-- not "dead" in some names. The operational event event_bus.delivery.dead is now
-- event_bus.delivery.failed: subscriptions to the old exact name follow it (subscribe() still takes
-- the old name until 0.12.0); the metric keeps its old name beside the new one until then, and the
-- view dead_letters its dead_at column beside failed_at.
------------------------------------------------------------------------------------------------
UPDATE event_bus._counters SET name = 'deliveries_failed' WHERE name = 'deliveries_dead';
ALTER INDEX event_bus.module_event_deliveries_dead_idx RENAME TO module_event_deliveries_failed_idx;
DROP FUNCTION IF EXISTS event_bus._deliveries_dead(uuid[]);
-- (a parameter renamed: p_dead is p_deliveries_failed)
DROP FUNCTION IF EXISTS event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer);
DO $$
DECLARE
    v_moved integer;
BEGIN
    UPDATE event_bus.module_event_subscriptions
       SET event_type = 'event_bus.delivery.failed'
     WHERE event_type = 'event_bus.delivery.dead';
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    IF v_moved > 0 THEN
        RAISE NOTICE 'event_bus: % subscription(s) to event_bus.delivery.dead now subscribe to event_bus.delivery.failed, its new name', v_moved;
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- The console at ten million events (event_stats, list_events by status and entity): indexes for
-- the status and entity filters, and fanned-out events counted per hour (event_bus._event_hours,
-- kept by statement triggers from sql/internals.sql, counted here once from the rows).
------------------------------------------------------------------------------------------------
CREATE INDEX module_events_status_idx
    ON event_bus.module_events (status, id)
    WHERE dispatched_at IS NOT NULL AND status IN (<pending>, <processing>, <failed>);
CREATE INDEX module_events_entity_idx
    ON event_bus.module_events USING hash (entity_id)
    WHERE entity_id IS NOT NULL AND dispatched_at IS NOT NULL;
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
INSERT INTO event_bus._event_hours
    (tenant_id, hour, source_module, event_type, pending, processing, completed, failed, folded)
SELECT e.tenant_id, date_bin(interval '1 hour', e.created_at, timestamptz '2000-01-01 00:00:00+00'),
       e.source_module, e.event_type,
       count(*) FILTER (WHERE e.status = <pending>),
       count(*) FILTER (WHERE e.status = <processing>),
       count(*) FILTER (WHERE e.status = <completed>),
       count(*) FILTER (WHERE e.status = <failed>),
       true
  FROM event_bus.module_events e
 WHERE e.dispatched_at IS NOT NULL
 GROUP BY 1, 2, 3, 4;

------------------------------------------------------------------------------------------------
-- Kafka targets (kafka://, kafkas://): a subscription kind of their own, like amqp and nats.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_subscriptions
    DROP CONSTRAINT module_event_subscriptions_kind_check,
    ADD CONSTRAINT module_event_subscriptions_kind_check CHECK (
        (handler_kind IN ('http', 'amqp', 'nats', 'kafka') AND handler_url IS NOT NULL AND handler_function IS NULL)
        OR (handler_kind = 'edge_function' AND handler_url IS NULL AND handler_function IS NOT NULL)
        OR (handler_kind = 'sql' AND handler_url IS NULL AND handler_function IS NOT NULL));

------------------------------------------------------------------------------------------------
-- Content filters: a subscription may name a SQL/JSON path predicate over the event
-- (subscribe(p_filter => ...), set_subscription_filter); events it comes out unknown on are
-- counted per subscription and tenant.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_subscriptions ADD COLUMN filter jsonpath;
COMMENT ON COLUMN event_bus.module_event_subscriptions.filter IS
    'Content filter: a SQL/JSON path predicate over the event document {payload, metadata, event_type, '
    'source_module, entity_type, entity_id, tenant_id}, e.g. $.payload.total > 10000. An event the type '
    'pattern matches gets a delivery only when it is true; false, or unknown (an error, counted in '
    'subscription_health.filter_errors), gets none. NULL = no filter. Set with subscribe(p_filter => ...) or '
    'set_subscription_filter().';
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

------------------------------------------------------------------------------------------------
-- Backups with pg_dump: an extension's tables are left out of a dump unless named here, and a
-- restore (CREATE EXTENSION, then these tables' rows) would bring back an empty bus. Named: the
-- state of the bus. Not named: _counters (created with their rows by CREATE EXTENSION: metrics()'s
-- counters start again from 0 after a restore), _attempt_minutes (its trigger counts the attempt log
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
