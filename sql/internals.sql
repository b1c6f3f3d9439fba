-- event_bus worker internals: what the worker (and process_pending_events, in an admin's session) calls
-- besides the delivery lifecycle (sql/lifecycle.sql): operational events, the idempotency gate, the
-- attempt counter behind delivery_timeline, and the upkeep that runs about once a second. Nothing here
-- is for users to call; every function is private ("_") and granted to admins only where
-- process_pending_events needs it. Re-runnable (CREATE OR REPLACE): every upgrade loads it again.

------------------------------------------------------------------------------------------------
-- Operational events: the bus's own state changes as events (event_bus.operational_events)
------------------------------------------------------------------------------------------------
-- Emitted in the transaction that makes the change, in the tenant of the event concerned, with
-- source_module 'event_bus'. Never about a delivery of an event_bus.* event: a subscription to
-- event_bus.# that fails cannot feed itself.
CREATE OR REPLACE FUNCTION event_bus._operational_events_on() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(nullif(current_setting('event_bus.operational_events', true), '')::boolean, true);
$$;
COMMENT ON FUNCTION event_bus._operational_events_on() IS
    'Internal: is event_bus.operational_events on (the default)?';

CREATE OR REPLACE FUNCTION event_bus._deliveries_failed(p_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_failed integer;
    v_parked integer;
BEGIN
    IF NOT event_bus._operational_events_on() THEN
        RETURN 0;
    END IF;
    INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    SELECT d.tenant_id, 'event_bus.delivery.failed', 'event_bus', 'delivery', d.id::text,
           jsonb_build_object('delivery_id', d.id, 'event_id', e.id, 'event_type', e.event_type,
                              'entity_type', e.entity_type, 'entity_id', e.entity_id,
                              'subscription_id', s.id, 'handler_module', s.handler_module,
                              'attempts', d.attempts, 'last_error', d.last_error,
                              'last_http_status', d.last_http_status),
           jsonb_build_object('causation_id', e.id::text,
                              'correlation_id', coalesce(e.metadata ->> 'correlation_id', e.id::text))
      FROM event_bus.module_event_deliveries d
      JOIN event_bus.module_events e ON e.id = d.event_id
      JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
     WHERE d.id = ANY (p_ids) AND d.status = <failed> AND e.event_type NOT LIKE 'event\_bus.%';
    GET DIAGNOSTICS v_failed = ROW_COUNT;
    -- a failed delivery of an ordered stream parks the stream behind it
    INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    SELECT d.tenant_id, 'event_bus.stream.parked', 'event_bus', e.entity_type, e.entity_id,
           jsonb_build_object('subscription_id', d.subscription_id, 'entity_type', e.entity_type,
                              'entity_id', e.entity_id, 'blocking_delivery_id', d.id, 'event_id', e.id,
                              'event_type', e.event_type, 'last_error', d.last_error,
                              <waiting>, (SELECT count(*) FROM event_bus.module_event_deliveries w
                                           WHERE w.subscription_id = d.subscription_id AND w.tenant_id = d.tenant_id
                                             AND w.ordering_key = d.ordering_key AND w.status = <waiting>)),
           jsonb_build_object('causation_id', e.id::text,
                              'correlation_id', coalesce(e.metadata ->> 'correlation_id', e.id::text))
      FROM event_bus.module_event_deliveries d
      JOIN event_bus.module_events e ON e.id = d.event_id
     WHERE d.id = ANY (p_ids) AND d.status = <failed> AND d.ordering_key IS NOT NULL
       AND e.event_type NOT LIKE 'event\_bus.%';
    GET DIAGNOSTICS v_parked = ROW_COUNT;
    IF v_failed + v_parked > 0 THEN
        PERFORM event_bus._wake_on_commit();
    END IF;
    RETURN v_failed + v_parked;
END
$$;
COMMENT ON FUNCTION event_bus._deliveries_failed(uuid[]) IS
    'Internal: emit event_bus.delivery.failed for each of these deliveries that failed (and '
    'event_bus.stream.parked when it blocks an ordered stream), unless its event is an event_bus.* event.';

CREATE OR REPLACE FUNCTION event_bus._breaker_changed(p_subscription_id uuid, p_opened boolean) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
    v_sub    record;
BEGIN
    IF NOT event_bus._operational_events_on() THEN
        RETURN false;
    END IF;
    SELECT s.id, s.tenant_id, s.handler_module, s.event_type, s.consecutive_failures, s.last_error,
           s.breaker_open_until, s.breaker_opened_at
      INTO v_sub
      FROM event_bus.module_event_subscriptions s WHERE s.id = p_subscription_id;
    -- the tenant of the event concerned: the subscription's, or that of its latest attempt
    v_tenant := coalesce(v_sub.tenant_id,
                         (SELECT m.tenant_id FROM event_bus._attempt_minutes m
                           WHERE m.subscription_id = p_subscription_id
                           ORDER BY m.minute DESC LIMIT 1));
    IF v_tenant IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, entity_type, entity_id, payload)
    VALUES (v_tenant, CASE WHEN p_opened THEN 'event_bus.breaker.opened' ELSE 'event_bus.breaker.closed' END,
            'event_bus', 'subscription', p_subscription_id::text,
            jsonb_build_object('subscription_id', v_sub.id, 'handler_module', v_sub.handler_module,
                               'pattern', v_sub.event_type, 'consecutive_failures', v_sub.consecutive_failures,
                               'last_error', v_sub.last_error, 'open_until', v_sub.breaker_open_until,
                               'opened_at', v_sub.breaker_opened_at));
    PERFORM event_bus._wake_on_commit();
    RETURN true;
END
$$;
COMMENT ON FUNCTION event_bus._breaker_changed(uuid, boolean) IS
    'Internal: emit event_bus.breaker.opened / event_bus.breaker.closed for the subscription (after the change).';
REVOKE ALL ON FUNCTION event_bus._deliveries_failed(uuid[]), event_bus._breaker_changed(uuid, boolean) FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Idempotency keys: the claim takes a key per delivery of subscriptions that name one; the
-- record marks it handled (success) or frees it (failure).
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._idempotency_value(p_path text, p_event event_bus.module_events) RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN p_path = 'entity_id' THEN p_event.entity_id
        WHEN split_part(p_path, '.', 1) = 'payload'
            THEN p_event.payload #>> (pg_catalog.string_to_array(p_path, '.'))[2:]
        WHEN split_part(p_path, '.', 1) = 'metadata'
            THEN p_event.metadata #>> (pg_catalog.string_to_array(p_path, '.'))[2:]
    END
$$;
COMMENT ON FUNCTION event_bus._idempotency_value(text, event_bus.module_events) IS
    'Internal: the idempotency key of an event at a subscription''s idempotency_key path (entity_id, '
    'payload.<path>, metadata.<path>), as text; NULL when the event has none there.';

-- The claim's gate, in the claim transaction, for the just-claimed deliveries of subscriptions
-- with an idempotency key. Per (subscription, tenant, key) one delivery at a time holds the key
-- (a row in _idempotency_keys, inserted under its unique index: a second worker's claim of the
-- same key waits for the first claim to commit, then sees it). Returns the deliveries that may not
-- run now: duplicate_of set = that delivery already handled the key within the window (the caller
-- completes this one without calling the handler); NULL = the key is held by a delivery under way
-- (this one was put back, due in a second, its attempt not counted).
CREATE OR REPLACE FUNCTION event_bus._idempotency_gate(p_ids uuid[])
RETURNS TABLE (delivery_id uuid, duplicate_of uuid)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_taken    uuid[];
    v_deferred uuid[] := '{}';
BEGIN
    -- the first delivery (in emit order) of each key takes it: when it is free, held by itself
    -- (a retry, a replay), held by a delivery whose lease ended (its worker died; a failure frees
    -- the key at once), or handled longer ago than the window
    WITH k AS (
        SELECT d.id, d.subscription_id, d.tenant_id, d.event_id, d.next_attempt_at AS lease_end,
               event_bus._idempotency_value(s.idempotency_key, e) AS key
          FROM event_bus.module_event_deliveries d
          JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
          JOIN event_bus.module_events e ON e.id = d.event_id
         WHERE d.id = ANY (p_ids) AND s.idempotency_key IS NOT NULL
    ), firsts AS (
        SELECT DISTINCT ON (k.subscription_id, k.tenant_id, k.key) k.*
          FROM k WHERE k.key IS NOT NULL
         ORDER BY k.subscription_id, k.tenant_id, k.key, k.event_id
    ), ins AS (
        INSERT INTO event_bus._idempotency_keys AS x
            (subscription_id, tenant_id, key, delivery_id, state, claimed_until)
        SELECT f.subscription_id, f.tenant_id, f.key, f.id, 'claimed', f.lease_end
          FROM firsts f
         ORDER BY f.subscription_id, f.tenant_id, f.key
        -- decided on the key's row alone, as it stands after a concurrent claim committed (its
        -- latest version): rows of other tables would be read in this statement's older snapshot
        ON CONFLICT (subscription_id, tenant_id, key) DO UPDATE
           SET delivery_id = excluded.delivery_id, state = 'claimed', claimed_until = excluded.claimed_until,
               handled_at = NULL
         WHERE x.delivery_id = excluded.delivery_id
            OR (x.state = 'done'
                AND x.handled_at < now() - coalesce((SELECT s.idempotency_window
                                                       FROM event_bus.module_event_subscriptions s
                                                      WHERE s.id = x.subscription_id), interval '7 days'))
            OR (x.state = 'claimed' AND x.claimed_until < now())
        RETURNING x.delivery_id)
    SELECT coalesce(array_agg(ins.delivery_id), '{}') INTO v_taken FROM ins;

    -- the others, as the keys stand now (this statement sees what concurrent claims committed)
    FOR delivery_id, duplicate_of IN
        WITH k AS (
            SELECT d.id, d.subscription_id, d.tenant_id, s.idempotency_window AS win,
                   event_bus._idempotency_value(s.idempotency_key, e) AS key
              FROM event_bus.module_event_deliveries d
              JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
              JOIN event_bus.module_events e ON e.id = d.event_id
             WHERE d.id = ANY (p_ids) AND NOT (d.id = ANY (v_taken)) AND s.idempotency_key IS NOT NULL
        )
        SELECT k.id,
               CASE WHEN x.state = 'done' AND x.handled_at >= now() - coalesce(k.win, interval '7 days')
                    THEN x.delivery_id END
          FROM k
          LEFT JOIN event_bus._idempotency_keys x
            ON x.subscription_id = k.subscription_id AND x.tenant_id = k.tenant_id AND x.key = k.key
         WHERE k.key IS NOT NULL
    LOOP
        IF duplicate_of IS NULL THEN
            v_deferred := v_deferred || delivery_id;
        END IF;
        RETURN NEXT;
    END LOOP;

    -- put back the ones whose key is held by a delivery under way (not counted as an attempt)
    IF cardinality(v_deferred) > 0 THEN
        UPDATE event_bus.module_event_deliveries d
           SET status = <pending>,
               attempts = greatest(d.attempts - 1, 0),
               next_attempt_at = now() + interval '1 second',
               capped_subscription_id = NULL
         WHERE d.id = ANY (v_deferred) AND d.status = <processing>;
    END IF;
END
$$;
COMMENT ON FUNCTION event_bus._idempotency_gate(uuid[]) IS
    'Internal (the worker''s claim): take the idempotency keys of just-claimed deliveries; returns the ones '
    'that must not run now: duplicate_of = the delivery that already handled the key within the window, '
    'NULL = key held by a delivery under way (put back, due in a second).';

CREATE OR REPLACE FUNCTION event_bus._idempotency_settle(p_handled uuid[], p_failed uuid[]) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE event_bus._idempotency_keys x
       SET state = 'done', handled_at = now(), claimed_until = NULL
     WHERE x.delivery_id = ANY (p_handled) AND x.state = 'claimed';
    -- a failed attempt does not count as handled: the key is free for the retry or another delivery
    DELETE FROM event_bus._idempotency_keys x
     WHERE x.delivery_id = ANY (p_failed) AND x.state = 'claimed';
$$;
COMMENT ON FUNCTION event_bus._idempotency_settle(uuid[], uuid[]) IS
    'Internal (the worker''s record): the keys held by deliveries that succeeded become handled (now); '
    'those held by deliveries that failed are freed.';

CREATE OR REPLACE FUNCTION event_bus._maintenance(p_batch_size integer DEFAULT 1000) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_retention text := nullif(btrim(current_setting('event_bus.retention', true)), '');
    r record;
BEGIN
    -- a hold that raced with its breaker closing: the held deliveries of the subscriptions whose
    -- breaker is closed, each one's through the held index (by subscription). Not a join: the
    -- planner expected half of all held rows to match and read every one of them — beside a
    -- subscription failing every attempt (its breaker open, 100,000 deliveries held) 22-92 ms of
    -- every upkeep, once a second, to release none.
    UPDATE event_bus.module_event_deliveries d
       SET status = <pending>, next_attempt_at = now()
     WHERE d.status = <held>
       AND d.subscription_id = ANY (ARRAY(SELECT s.id FROM event_bus.module_event_subscriptions s
                                           WHERE s.breaker_open_until IS NULL));
    -- a stream whose head finished in a transaction that did not see its next delivery yet
    -- (the stream index's own predicate, so this is an index probe however large the history)
    IF EXISTS (SELECT 1 FROM event_bus.module_event_deliveries w
                WHERE w.ordering_key IS NOT NULL
                  AND w.status = ANY (event_bus._stream_blocking_states())
                  AND w.status = <waiting>) THEN
        PERFORM event_bus._advance_streams(NULL);
    END IF;
    -- deliveries a fan-out added for a subscription deleted meanwhile (a fan-out transaction
    -- lasts milliseconds; half a minute is a wide margin)
    PERFORM event_bus._sweep_deleted_subscriptions(interval '30 seconds');
    -- event leases that ended: their events were recorded (the record drops the leases of the
    -- deliveries it records; an event held, queued or matching nothing keeps its lease until it
    -- ends), or their worker died and a fan-out takes the event again (an ended lease counts as none)
    DELETE FROM event_bus._event_leases l
     WHERE l.event_id = ANY (ARRAY(
           SELECT k.event_id FROM event_bus._event_leases k
            WHERE k.lease_end < now() - interval '1 minute'
            LIMIT p_batch_size * 10));
    -- the status of events an unsubscribe took deliveries from, derived once more now that any
    -- record that ran beside the DELETE is over
    PERFORM event_bus._refresh_after_deletes(interval '2 seconds');
    -- due deliveries whose event row is gone (deleted or truncated by hand: retention deletes
    -- deliveries with their events): nothing can deliver them, and at the head of the due queue
    -- they would fill every claim and keep it from the deliveries behind them. The first
    -- p_batch_size due ones are checked.
    DELETE FROM event_bus.module_event_deliveries d
     WHERE d.id = ANY (ARRAY(
           SELECT q.id FROM event_bus.module_event_deliveries q
            WHERE q.status = ANY (event_bus._claimable_states()) AND q.next_attempt_at <= now()
            ORDER BY q.next_attempt_at
            LIMIT p_batch_size))
       AND NOT EXISTS (SELECT 1 FROM event_bus.module_events e WHERE e.id = d.event_id);
    -- idempotency keys handled longer ago than their window (or of a subscription that no longer
    -- names a key)
    DELETE FROM event_bus._idempotency_keys x
     WHERE x.ctid = ANY (ARRAY(
           SELECT k.ctid FROM event_bus._idempotency_keys k
             JOIN event_bus.module_event_subscriptions s ON s.id = k.subscription_id
            WHERE k.state = 'done'
              AND (s.idempotency_key IS NULL
                   OR k.handled_at < now() - coalesce(s.idempotency_window, interval '7 days'))
            LIMIT p_batch_size));
    -- an open breaker whose cool-down ended without a probe on its way (the probe went dead, or
    -- the deliveries arrived after it opened): pick one
    FOR r IN
        SELECT s.id FROM event_bus.module_event_subscriptions s
         WHERE s.breaker_open_until <= now()
           AND EXISTS (SELECT 1 FROM event_bus.module_event_deliveries h
                        WHERE h.subscription_id = s.id AND h.status = <held>)
           AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                            WHERE d.subscription_id = s.id AND d.status = ANY (event_bus._claimable_states()))
    LOOP
        PERFORM event_bus._hold(r.id);
    END LOOP;
    -- attempt counts: fold each finished minute's rows into one; forget what no chart shows
    IF EXISTS (SELECT 1 FROM event_bus._attempt_minutes m
                WHERE NOT m.folded AND m.minute < date_trunc('minute', now()) - interval '1 minute') THEN
        WITH moved AS (
            DELETE FROM event_bus._attempt_minutes m
             WHERE NOT m.folded AND m.minute < date_trunc('minute', now()) - interval '1 minute'
            RETURNING m.tenant_id, m.subscription_id, m.minute, m.succeeded, m.failed)
        INSERT INTO event_bus._attempt_minutes (tenant_id, subscription_id, minute, succeeded, failed, folded)
        SELECT moved.tenant_id, moved.subscription_id, moved.minute, sum(moved.succeeded), sum(moved.failed), true
          FROM moved GROUP BY 1, 2, 3;
    END IF;
    DELETE FROM event_bus._attempt_minutes m WHERE m.minute < now() - interval '32 days';
    -- event counts: fold the rows of each hour that got new ones (before the last hour) into one
    -- row per tenant, module and type; an hour whose events are all gone (retention) leaves none
    IF EXISTS (SELECT 1 FROM event_bus._event_hours h
                WHERE NOT h.folded AND h.hour < now() - interval '2 hours') THEN
        WITH hours AS (
            SELECT DISTINCT h.hour FROM event_bus._event_hours h
             WHERE NOT h.folded AND h.hour < now() - interval '2 hours'
        ), moved AS (
            DELETE FROM event_bus._event_hours h
             USING hours
             WHERE h.hour = hours.hour
            RETURNING h.tenant_id, h.hour, h.source_module, h.event_type, h.pending, h.processing,
                      h.completed, h.failed)
        INSERT INTO event_bus._event_hours
            (tenant_id, hour, source_module, event_type, pending, processing, completed, failed, folded)
        SELECT f.*, true
          FROM (SELECT moved.tenant_id, moved.hour, moved.source_module, moved.event_type,
                       sum(moved.pending) AS pending, sum(moved.processing) AS processing,
                       sum(moved.completed) AS completed, sum(moved.failed) AS failed
                  FROM moved GROUP BY 1, 2, 3, 4) f
         WHERE (f.pending, f.processing, f.completed, f.failed) <> (0, 0, 0, 0);
    END IF;
    -- filter errors: each subscription's and tenant's rows into one (rows come one per fan-out), and
    -- the rows of subscriptions that are gone. No subscription row is locked (the upkeep has taken
    -- delivery and event rows by now: lock order, sql/lifecycle.sql); a row folded for a subscription
    -- deleted meanwhile goes at the next upkeep.
    IF EXISTS (SELECT 1 FROM event_bus._filter_errors f WHERE NOT f.folded) THEN
        WITH keys AS (
            SELECT DISTINCT f.subscription_id, f.tenant_id FROM event_bus._filter_errors f WHERE NOT f.folded
        ), moved AS (
            DELETE FROM event_bus._filter_errors f
             USING keys
             WHERE f.subscription_id = keys.subscription_id AND f.tenant_id = keys.tenant_id
            RETURNING f.subscription_id, f.tenant_id, f.errors, f.last_at)
        INSERT INTO event_bus._filter_errors (subscription_id, tenant_id, errors, last_at, folded)
        SELECT moved.subscription_id, moved.tenant_id, sum(moved.errors), max(moved.last_at), true
          FROM moved
         WHERE EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = moved.subscription_id)
         GROUP BY 1, 2;
    END IF;
    DELETE FROM event_bus._filter_errors f
     WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = f.subscription_id);
    IF v_retention IS NULL OR v_retention IN ('0', 'off', '-1') THEN
        RETURN 0;
    END IF;
    RETURN event_bus.purge_completed(v_retention::interval, p_batch_size);
END
$$;
COMMENT ON FUNCTION event_bus._maintenance(integer) IS
    'Internal: the worker''s upkeep: breaker probes and releases, deliveries of deleted subscriptions '
    'or deleted events, expired idempotency keys, retention (event_bus.retention).';

------------------------------------------------------------------------------------------------
-- Attempts per tenant, subscription and minute (event_bus._attempt_minutes, read by delivery_timeline
-- and subscription_health)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._count_attempts() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO event_bus._attempt_minutes (tenant_id, subscription_id, minute, succeeded, failed)
    SELECT n.tenant_id, n.subscription_id, date_trunc('minute', n.executed_at),
           count(*) FILTER (WHERE n.status = 'success'), count(*) FILTER (WHERE n.status <> 'success')
      FROM new_logs n
     GROUP BY 1, 2, 3;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._count_attempts() IS
    'Internal: the statement trigger that counts new attempt log rows into _attempt_minutes.';
REVOKE ALL ON FUNCTION event_bus._count_attempts() FROM PUBLIC;
CREATE OR REPLACE TRIGGER module_event_logs_count_attempts
    AFTER INSERT ON event_bus.module_event_logs
    REFERENCING NEW TABLE AS new_logs
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._count_attempts();

------------------------------------------------------------------------------------------------
-- Fanned-out events per tenant, hour, module, type and status (event_bus._event_hours, read by
-- event_stats)
------------------------------------------------------------------------------------------------
-- An event is counted from the statement that fans it out (dispatched_at set) under the status it
-- has, and moved between statuses by every later UPDATE; a DELETE takes it out. The rows a statement
-- changed are counted -1 as they were and +1 as they are, netted per tenant, hour, module and type:
-- one row per group whose counts moved (a batch of 500 records of one type: one row).
-- No SET clause: PostgreSQL never inlines a SQL function that has one, and this one is evaluated for
-- every row an UPDATE of events changes (the trigger below). Run through the function executor it cost
-- about 2.5 us an event, 0.30 of the 2.0 s the record's status updates took for 100,000 deliveries;
-- inlined, 0.07 s. Its body names pg_catalog's objects itself, so it means the same under any
-- search_path (and every caller pins one).
CREATE OR REPLACE FUNCTION event_bus._event_hour(p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.date_bin('1 hour'::pg_catalog.interval, p_at,
                               '2000-01-01 00:00:00+00'::pg_catalog.timestamptz);
$$;
COMMENT ON FUNCTION event_bus._event_hour(timestamptz) IS
    'Internal: the whole UTC hour a time falls in (the bucket of event_bus._event_hours), in any time zone.';

CREATE OR REPLACE FUNCTION event_bus._count_event_changes() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM event_bus._event_hours;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO event_bus._event_hours
            (tenant_id, hour, source_module, event_type, pending, processing, completed, failed)
        SELECT f.*
          FROM (SELECT c.tenant_id, c.hour, c.source_module, c.event_type,
                       coalesce(sum(c.n) FILTER (WHERE c.status = <pending>), 0) AS pending,
                       coalesce(sum(c.n) FILTER (WHERE c.status = <processing>), 0) AS processing,
                       coalesce(sum(c.n) FILTER (WHERE c.status = <completed>), 0) AS completed,
                       coalesce(sum(c.n) FILTER (WHERE c.status = <failed>), 0) AS failed
                  FROM (SELECT o.tenant_id, event_bus._event_hour(o.created_at) AS hour, o.source_module,
                               o.event_type, o.status, -1 AS n
                          FROM old_events o
                         WHERE o.dispatched_at IS NOT NULL
                        UNION ALL
                        SELECT w.tenant_id, event_bus._event_hour(w.created_at), w.source_module,
                               w.event_type, w.status, 1
                          FROM new_events w
                         WHERE w.dispatched_at IS NOT NULL) c
                 GROUP BY 1, 2, 3, 4) f
         WHERE (f.pending, f.processing, f.completed, f.failed) <> (0, 0, 0, 0);
    ELSE
        INSERT INTO event_bus._event_hours
            (tenant_id, hour, source_module, event_type, pending, processing, completed, failed)
        SELECT o.tenant_id, event_bus._event_hour(o.created_at), o.source_module, o.event_type,
               -count(*) FILTER (WHERE o.status = <pending>),
               -count(*) FILTER (WHERE o.status = <processing>),
               -count(*) FILTER (WHERE o.status = <completed>),
               -count(*) FILTER (WHERE o.status = <failed>)
          FROM old_events o
         WHERE o.dispatched_at IS NOT NULL
         GROUP BY 1, 2, 3, 4;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._count_event_changes() IS
    'Internal: the statement triggers that count fanned-out events into _event_hours as UPDATEs and DELETEs '
    'change them (a TRUNCATE empties it).';
REVOKE ALL ON FUNCTION event_bus._count_event_changes() FROM PUBLIC;
CREATE OR REPLACE TRIGGER module_events_count_updates
    AFTER UPDATE ON event_bus.module_events
    REFERENCING OLD TABLE AS old_events NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._count_event_changes();
CREATE OR REPLACE TRIGGER module_events_count_deletes
    AFTER DELETE ON event_bus.module_events
    REFERENCING OLD TABLE AS old_events
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._count_event_changes();
CREATE OR REPLACE TRIGGER module_events_count_truncate
    AFTER TRUNCATE ON event_bus.module_events
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._count_event_changes();

CREATE OR REPLACE FUNCTION event_bus._recount_event_hours() RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
BEGIN
    -- the table is written by every worker's UPDATEs: no count may slip in between
    LOCK TABLE event_bus.module_events IN SHARE MODE;
    DELETE FROM event_bus._event_hours;
    INSERT INTO event_bus._event_hours
        (tenant_id, hour, source_module, event_type, pending, processing, completed, failed, folded)
    SELECT e.tenant_id, event_bus._event_hour(e.created_at), e.source_module, e.event_type,
           count(*) FILTER (WHERE e.status = <pending>),
           count(*) FILTER (WHERE e.status = <processing>),
           count(*) FILTER (WHERE e.status = <completed>),
           count(*) FILTER (WHERE e.status = <failed>),
           true
      FROM event_bus.module_events e
     WHERE e.dispatched_at IS NOT NULL
     GROUP BY 1, 2, 3, 4;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END
$$;
COMMENT ON FUNCTION event_bus._recount_event_hours() IS
    'Internal: count _event_hours again from module_events (the 0.11.0 upgrade; after rows were written '
    'around the triggers, e.g. loaded with dispatched_at set). Locks module_events against writes while it counts.';
REVOKE ALL ON FUNCTION event_bus._recount_event_hours() FROM PUBLIC;

------------------------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION event_bus._maintenance(integer), event_bus._idempotency_gate(uuid[]),
    event_bus._idempotency_settle(uuid[], uuid[]) FROM PUBLIC;
-- what process_pending_events runs of the worker's pipeline, in an admin's session
GRANT EXECUTE ON FUNCTION event_bus._idempotency_gate(uuid[]), event_bus._idempotency_settle(uuid[], uuid[]),
    event_bus._deliveries_failed(uuid[]), event_bus._breaker_changed(uuid, boolean)
    TO event_bus_admin;
