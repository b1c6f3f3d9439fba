-- event_bus operations: what an operator does to repair delivery — retry, replay, skip a parked stream's
-- dead delivery, pause a subscription, reset its breaker, purge old events. SECURITY DEFINER where a
-- write needs it, restricted to the caller's tenant scope (event_bus._write_scope). The reads are in
-- sql/monitor.sql. Loaded last (finalize).

------------------------------------------------------------------------------------------------
-- Internal: scope of a write for the caller; re-arming deliveries.
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._write_scope() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid;
BEGIN
    IF event_bus._caller_is_admin() THEN
        RETURN NULL;
    END IF;
    v_tenant := event_bus.current_tenant();
    IF v_tenant IS NULL THEN
        RAISE EXCEPTION 'event_bus: no tenant in this session'
            USING ERRCODE = '42501',
                  HINT = 'Set the session''s tenant (see event_bus.current_tenant()), or act as event_bus_admin.';
    END IF;
    RETURN v_tenant;
END
$$;
COMMENT ON FUNCTION event_bus._write_scope() IS
    'Internal: NULL when the caller is an admin (every tenant), else its tenant; 42501 without one.';

------------------------------------------------------------------------------------------------
-- Ordered subscriptions: one unfinished delivery at a time per entity stream, in emit order (the
-- transitions that keep it: sql/lifecycle.sql).
------------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW event_bus.parked_streams WITH (security_invoker = true) AS
SELECT d.subscription_id,
       s.handler_module,
       d.tenant_id,
       e.entity_type,
       e.entity_id,
       d.id              AS delivery_id,
       d.event_id,
       e.event_type,
       d.attempts,
       d.last_error,
       d.completed_at    AS parked_at,
       (SELECT count(*) FROM event_bus.module_event_deliveries w
         WHERE w.subscription_id = d.subscription_id AND w.tenant_id = d.tenant_id
           AND w.ordering_key = d.ordering_key AND w.status = <waiting>) AS waiting
  FROM event_bus.module_event_deliveries d
  JOIN event_bus.module_events e ON e.id = d.event_id
  LEFT JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
 WHERE d.ordering_key IS NOT NULL AND d.status = <failed>;
COMMENT ON VIEW event_bus.parked_streams IS
    'Entity streams of ordered subscriptions held back by a dead delivery: the dead delivery, its last '
    'error and how many deliveries wait behind it. Resume with retry_event(event_id) (deliver it again, '
    'then the rest in order) or skip_delivery(delivery_id) (give it up and go on with the next).';

CREATE OR REPLACE FUNCTION event_bus.skip_delivery(p_delivery_id uuid) RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope uuid := event_bus._write_scope();
    v_event uuid;
BEGIN
    PERFORM event_bus._lock_streams();
    UPDATE event_bus.module_event_deliveries d
       SET status = <skipped>,
           completed_at = now(),
           last_error = left(coalesce(d.last_error || ' ', '') || '(skipped by ' || event_bus._caller() || ')', 2000)
     WHERE d.id = p_delivery_id AND d.status = <failed>
       AND (v_scope IS NULL OR d.tenant_id = v_scope)
    RETURNING d.event_id INTO v_event;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                    WHERE d.id = p_delivery_id AND (v_scope IS NULL OR d.tenant_id = v_scope)) THEN
            RAISE EXCEPTION 'event_bus: delivery % is not dead', p_delivery_id
                USING ERRCODE = '55000', HINT = 'Only failed (dead) deliveries can be skipped; see dead_letters.';
        END IF;
        RAISE EXCEPTION 'event_bus: delivery % not found', p_delivery_id
            USING ERRCODE = 'P0002', HINT = 'It may belong to another tenant, or retention may have deleted it.';
    END IF;
    PERFORM event_bus._advance_streams(ARRAY[p_delivery_id]);
    PERFORM event_bus._refresh_event_status(ARRAY[v_event]);
    PERFORM event_bus._wake_on_commit();
    RETURN true;
END
$$;
COMMENT ON FUNCTION event_bus.skip_delivery(uuid) IS
    'Give up a dead delivery: it becomes skipped (kept with its attempt log, not sent again) and, in an '
    'ordered subscription, its parked entity stream goes on with the next delivery. Operators for their '
    'tenant, admins for any. 55000 if the delivery is not dead, P0002 if not found.';

------------------------------------------------------------------------------------------------
-- API: Public — retry_event / retry_failed
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.retry_event(p_event_id uuid) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope uuid := event_bus._write_scope();
BEGIN
    PERFORM 1 FROM event_bus.module_events e
     WHERE e.id = p_event_id AND (v_scope IS NULL OR e.tenant_id = v_scope);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: event % not found', p_event_id
            USING ERRCODE = 'P0002', HINT = 'It may belong to another tenant, or retention may have deleted it.';
    END IF;
    RETURN event_bus._rearm(ARRAY(
        SELECT d.id FROM event_bus.module_event_deliveries d
         WHERE d.event_id = p_event_id AND d.status = <failed>));
END
$$;
COMMENT ON FUNCTION event_bus.retry_event(uuid) IS
    'Re-arm the failed (dead) deliveries of one event: due now, with a fresh retry budget. Deliveries '
    'that succeeded are not sent again. Returns how many were re-armed (0 if none had failed).';

CREATE OR REPLACE FUNCTION event_bus.retry_delivery(p_delivery_id uuid) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope uuid := event_bus._write_scope();
BEGIN
    PERFORM 1 FROM event_bus.module_event_deliveries d
     WHERE d.id = p_delivery_id AND (v_scope IS NULL OR d.tenant_id = v_scope);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: delivery % not found', p_delivery_id
            USING ERRCODE = 'P0002', HINT = 'It may belong to another tenant, or retention may have deleted it.';
    END IF;
    RETURN event_bus._rearm(ARRAY(
        SELECT d.id FROM event_bus.module_event_deliveries d
         WHERE d.id = p_delivery_id AND d.status = <failed>));
END
$$;
COMMENT ON FUNCTION event_bus.retry_delivery(uuid) IS
    'Re-arm one failed (dead) delivery: due now, with a fresh retry budget; the event''s other deliveries '
    'are left as they are. Returns 1, or 0 if it had not failed. P0002 if not found (or another tenant''s).';

CREATE OR REPLACE FUNCTION event_bus.retry_failed(
    p_tenant_id       uuid        DEFAULT NULL,
    p_source_module   text        DEFAULT NULL,
    p_event_type      text        DEFAULT NULL,
    p_subscription_id uuid        DEFAULT NULL,
    p_from            timestamptz DEFAULT NULL,
    p_to              timestamptz DEFAULT NULL,
    p_dry_run         boolean     DEFAULT false
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope uuid := event_bus._write_scope();
    v_ids   uuid[];
BEGIN
    IF p_event_type IS NOT NULL THEN
        PERFORM event_bus._check_pattern(p_event_type);
    END IF;
    v_ids := ARRAY(
        SELECT d.id
          FROM event_bus.module_event_deliveries d
          JOIN event_bus.module_events e ON e.id = d.event_id
         WHERE d.status = <failed>
           AND (v_scope IS NULL OR d.tenant_id = v_scope)
           AND (p_tenant_id IS NULL OR d.tenant_id = p_tenant_id)
           AND (p_subscription_id IS NULL OR d.subscription_id = p_subscription_id)
           AND (p_source_module IS NULL OR e.source_module = p_source_module)
           AND (p_event_type IS NULL OR event_bus.matches(p_event_type, e.event_type))
           AND (p_from IS NULL OR e.created_at >= p_from)
           AND (p_to IS NULL OR e.created_at < p_to));
    IF p_dry_run THEN
        RETURN coalesce(array_length(v_ids, 1), 0);
    END IF;
    RETURN event_bus._rearm(v_ids);
END
$$;
COMMENT ON FUNCTION event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz, boolean) IS
    'Re-arm every failed (dead) delivery matching the filters (all NULL = every dead letter in the '
    'caller''s scope). Returns how many were re-armed; p_dry_run => true returns how many would be, '
    'changing nothing.';

------------------------------------------------------------------------------------------------
-- API: Public — replay_events
------------------------------------------------------------------------------------------------
-- every (event, subscription) pair a replay selects whose delivery is not already under way
CREATE OR REPLACE FUNCTION event_bus._replay_targets(
    p_scope uuid, p_event_type text, p_source_module text, p_tenant_id uuid, p_from timestamptz,
    p_to timestamptz, p_subscription_id uuid, p_event_id uuid
) RETURNS TABLE (event_id uuid, subscription_id uuid, tenant_id uuid, held boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.id, s.id, e.tenant_id, s.breaker_open_until IS NOT NULL
      FROM event_bus.module_events e
      JOIN event_bus.module_event_subscriptions s
        ON s.is_active
       AND (s.tenant_id IS NULL OR s.tenant_id = e.tenant_id)
       AND (p_subscription_id IS NULL OR s.id = p_subscription_id)
       AND event_bus.matches(s.event_type, e.event_type)
       -- the subscription's filter as it is now (true only: unknown is no match)
       AND event_bus._filter_passes(s.filter, e.tenant_id, e.event_type, e.source_module, e.entity_type,
                                    e.entity_id, e.payload, e.metadata)
     WHERE (e.dispatched_at IS NOT NULL
            -- fanned out, first outcome not recorded yet (see _refresh_event_status)
            OR EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0))
       AND NOT e.is_request
       AND (p_event_id IS NULL OR e.id = p_event_id)
       AND (p_scope IS NULL OR e.tenant_id = p_scope)
       AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
       AND (p_source_module IS NULL OR e.source_module = p_source_module)
       AND (p_event_type IS NULL OR event_bus.matches(p_event_type, e.event_type))
       AND (p_from IS NULL OR (e.id >= event_bus.uuid_v7_lower_bound(p_from) AND e.created_at >= p_from))
       AND (p_to IS NULL OR e.created_at < p_to)
       AND NOT EXISTS (
           SELECT 1 FROM event_bus.module_event_deliveries d
            WHERE d.event_id = e.id AND d.subscription_id = s.id
              AND d.status = ANY (event_bus._unfinished_states()));
$$;
COMMENT ON FUNCTION event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid, uuid) IS
    'Internal: the (event, subscription) pairs a replay with these filters re-delivers, within p_scope '
    '(a tenant, or NULL for all).';

CREATE OR REPLACE FUNCTION event_bus.replay_events(
    p_event_type      text        DEFAULT NULL,
    p_source_module   text        DEFAULT NULL,
    p_tenant_id       uuid        DEFAULT NULL,
    p_from            timestamptz DEFAULT NULL,
    p_to              timestamptz DEFAULT NULL,
    p_subscription_id uuid        DEFAULT NULL,
    p_dry_run         boolean     DEFAULT false,
    p_event_id        uuid        DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope   uuid := event_bus._write_scope();
    v_count   bigint;
    v_events  uuid[];
    v_ordered uuid[];
    v_finished uuid[];
BEGIN
    IF p_event_type IS NULL AND p_source_module IS NULL AND p_tenant_id IS NULL AND p_from IS NULL
       AND p_to IS NULL AND p_subscription_id IS NULL AND p_event_id IS NULL THEN
        RAISE EXCEPTION 'event_bus: replay needs at least one filter'
            USING ERRCODE = '22023',
                  HINT = 'Narrow it down (type pattern, module, tenant, time range, subscription, event); '
                         'p_event_type => ''#'' replays every event.';
    END IF;
    IF p_event_type IS NOT NULL THEN
        PERFORM event_bus._check_pattern(p_event_type);
    END IF;
    IF p_subscription_id IS NOT NULL THEN
        PERFORM 1 FROM event_bus.module_event_subscriptions s
         WHERE s.id = p_subscription_id AND s.is_active
           AND (v_scope IS NULL OR s.tenant_id IS NULL OR s.tenant_id = v_scope);
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event_bus: no active subscription %', p_subscription_id
                USING ERRCODE = 'P0002', HINT = 'Replay goes to active subscriptions; activate it first.';
        END IF;
    END IF;

    IF p_dry_run THEN
        SELECT count(*) INTO v_count
          FROM event_bus._replay_targets(v_scope, p_event_type, p_source_module, p_tenant_id, p_from, p_to,
                                         p_subscription_id, p_event_id);
        RETURN v_count;
    END IF;
    -- the subscriptions it may target, kept until this transaction ends (in id order, as the lock
    -- order in sql/lifecycle.sql says): an unsubscribe either comes first or waits and then removes
    -- what this replay creates
    PERFORM 1 FROM event_bus.module_event_subscriptions s
     WHERE s.is_active AND (p_subscription_id IS NULL OR s.id = p_subscription_id)
       AND (v_scope IS NULL OR s.tenant_id IS NULL OR s.tenant_id = v_scope)
     ORDER BY s.id
       FOR KEY SHARE;
    -- the missing deliveries are created (due, or held behind an open breaker); the finished ones are
    -- re-armed by the lifecycle's one re-arm (_rearm), as retry_event and retry_failed do
    WITH t AS MATERIALIZED (
        SELECT * FROM event_bus._replay_targets(v_scope, p_event_type, p_source_module, p_tenant_id, p_from, p_to,
                                                p_subscription_id, p_event_id)
    ), created AS (
        INSERT INTO event_bus.module_event_deliveries AS d
            (id, event_id, subscription_id, tenant_id, status, attempts, next_attempt_at)
        SELECT event_bus._delivery_id(t.event_id, t.subscription_id), t.event_id, t.subscription_id,
               t.tenant_id, event_bus._due_state(t.held), 0, now()
          FROM t
        ON CONFLICT (event_id, subscription_id) DO NOTHING
        RETURNING d.event_id, d.id, d.ordering_key
    )
    SELECT (SELECT count(*) FROM created),
           (SELECT array_agg(DISTINCT c.event_id) FROM created c),
           (SELECT array_agg(c.id) FILTER (WHERE c.ordering_key IS NOT NULL) FROM created c),
           (SELECT array_agg(d.id)
              FROM t JOIN event_bus.module_event_deliveries d
                ON d.event_id = t.event_id AND d.subscription_id = t.subscription_id
             WHERE d.status = ANY (event_bus._finished_states()))
      INTO v_count, v_events, v_ordered, v_finished;
    IF v_ordered IS NOT NULL THEN
        PERFORM event_bus._order_streams(v_ordered);
    END IF;
    IF v_count > 0 THEN
        PERFORM event_bus._refresh_event_status(v_events);
        PERFORM event_bus._wake_on_commit();
    END IF;
    IF v_finished IS NOT NULL THEN
        v_count := v_count + event_bus._rearm(v_finished);
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid) IS
    'Deliver past events again: every event matching the filters (type pattern, source module, tenant, '
    'created_at range, or one event: p_event_id) to every active matching subscription, or only p_subscription_id (which backfills a '
    'subscription created after the events); a subscription with a content filter gets the events its '
    'filter as it is now is true for. Finished deliveries are re-armed with a fresh retry budget and '
    'the same webhook-id; missing ones are created; ones under way are left alone. p_dry_run => true '
    'returns the count without changing anything. Returns the number of deliveries (re)armed.';

------------------------------------------------------------------------------------------------
-- API: Public — pausing a subscription
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.set_subscription_active(p_subscription_id uuid, p_active boolean)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_scope uuid := event_bus._write_scope();
    v_was   boolean;
BEGIN
    IF p_active IS NULL THEN
        RAISE EXCEPTION 'event_bus: p_active must be true or false'
            USING ERRCODE = '22004', HINT = 'true resumes the subscription, false pauses it.';
    END IF;
    SELECT s.is_active INTO v_was
      FROM event_bus.module_event_subscriptions s
     WHERE s.id = p_subscription_id
       -- an operator pauses only its own tenant's subscriptions, not the shared ones
       AND (v_scope IS NULL OR s.tenant_id = v_scope)
       FOR UPDATE;
    IF NOT FOUND THEN
        IF v_scope IS NOT NULL AND EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s
                                             WHERE s.id = p_subscription_id AND s.tenant_id IS NULL) THEN
            RAISE EXCEPTION 'event_bus: subscription % serves every tenant', p_subscription_id
                USING ERRCODE = '42501', HINT = 'Only event_bus_admin may pause or resume a shared subscription.';
        END IF;
        RAISE EXCEPTION 'event_bus: subscription % does not exist', p_subscription_id
            USING ERRCODE = 'P0002', HINT = 'See SELECT * FROM event_bus.subscription_health.';
    END IF;
    IF v_was IS DISTINCT FROM p_active THEN
        UPDATE event_bus.module_event_subscriptions SET is_active = p_active WHERE id = p_subscription_id;
        IF p_active THEN
            PERFORM event_bus._wake_on_commit();
        END IF;
    END IF;
    RETURN v_was IS DISTINCT FROM p_active;
END
$$;
COMMENT ON FUNCTION event_bus.set_subscription_active(uuid, boolean) IS
    'Pause (false) or resume (true) a subscription: a paused one gets no new deliveries (events emitted '
    'meanwhile are not delivered to it; replay_events(p_subscription_id => ...) backfills them) and its '
    'due ones wait. Operators for their tenant''s subscriptions, admins for any. Returns whether it changed.';

CREATE OR REPLACE FUNCTION event_bus.reset_breaker(p_subscription_id uuid) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_was_open boolean;
BEGIN
    SELECT s.breaker_open_until IS NOT NULL INTO v_was_open
      FROM event_bus.module_event_subscriptions s WHERE s.id = p_subscription_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: subscription % does not exist', p_subscription_id
            USING ERRCODE = 'P0002', HINT = 'See SELECT * FROM event_bus.subscription_health.';
    END IF;
    UPDATE event_bus.module_event_subscriptions
       SET breaker_open_until = NULL, consecutive_failures = 0
     WHERE id = p_subscription_id;
    IF v_was_open THEN
        PERFORM event_bus._breaker_changed(p_subscription_id, false);
    END IF;
    RETURN event_bus._release(p_subscription_id);
END
$$;
COMMENT ON FUNCTION event_bus.reset_breaker(uuid) IS
    'Close a subscription''s circuit breaker now and make its held deliveries due. Returns how many were released.';

------------------------------------------------------------------------------------------------
-- Retention and upkeep (run by the worker about once a second)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.purge_completed(
    p_older_than interval,
    p_batch_size integer DEFAULT 1000
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'event_bus: purge_completed needs a non-negative age, got %', p_older_than
            USING ERRCODE = '22023', HINT = 'For example purge_completed(''7 days'').';
    END IF;
    IF p_batch_size IS NULL OR p_batch_size NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION 'event_bus: p_batch_size % is out of range', p_batch_size
            USING ERRCODE = '22023', HINT = 'Use 1 to 100000; call again for more.';
    END IF;
    WITH old AS (
        SELECT e.id
          FROM event_bus.module_events e
         WHERE e.id < event_bus.uuid_v7_lower_bound(now() - p_older_than)
           AND e.status = <completed>
           AND e.processed_at < now() - p_older_than
         ORDER BY e.id
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    ), logs AS (
        DELETE FROM event_bus.module_event_logs l USING old WHERE l.event_id = old.id
    ), deliveries AS (
        DELETE FROM event_bus.module_event_deliveries d USING old WHERE d.event_id = old.id
    ), events AS (
        DELETE FROM event_bus.module_events e USING old WHERE e.id = old.id RETURNING 1
    )
    SELECT count(*) INTO v_count FROM events;
    IF v_count > 0 THEN
        UPDATE event_bus._counters SET value = value + v_count WHERE name = 'events_purged';
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus.purge_completed(interval, integer) IS
    'Delete up to p_batch_size completed events created and finished more than p_older_than ago, with their '
    'deliveries and attempt logs. Failed events (dead letters) and unfinished ones are kept. The worker '
    'calls it by itself when event_bus.retention is set. Returns how many events were deleted.';

------------------------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION event_bus._write_scope(),
    event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid, uuid) FROM PUBLIC;
GRANT SELECT ON event_bus.parked_streams TO event_bus_reader, event_bus_admin;
-- repairing: operators (their tenant), admins
REVOKE ALL ON FUNCTION event_bus.retry_event(uuid), event_bus.retry_delivery(uuid),
    event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz, boolean),
    event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid),
    event_bus.skip_delivery(uuid), event_bus.set_subscription_active(uuid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.retry_event(uuid), event_bus.retry_delivery(uuid),
    event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz, boolean),
    event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid),
    event_bus.skip_delivery(uuid), event_bus.set_subscription_active(uuid, boolean)
    TO event_bus_operator, event_bus_admin;
-- managing: admins
REVOKE ALL ON FUNCTION event_bus.reset_breaker(uuid), event_bus.purge_completed(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.reset_breaker(uuid), event_bus.purge_completed(interval, integer),
    event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision, boolean, text, interval, text),
    event_bus.unsubscribe(uuid), event_bus.set_subscription_filter(uuid, text), event_bus.process_pending_events(integer),
    event_bus._rearm(uuid[]), event_bus._hold(uuid), event_bus._release(uuid),
    event_bus._refresh_event_status(uuid[]),
    event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer),
    -- what process_pending_events runs of the worker's pipeline, in an admin's session
    event_bus._lock_streams(), event_bus._advance_streams(uuid[]), event_bus._order_streams(uuid[])
    TO event_bus_admin;

-- say so now if the cluster's worker pool cannot serve it
DO $$
DECLARE
    v_pool integer := coalesce(nullif(current_setting('event_bus.max_workers', true), ''), '4')::integer;
    v_slots integer := current_setting('max_worker_processes')::integer;
    v_waiting bigint;
    v_failures bigint;
BEGIN
    IF current_setting('shared_preload_libraries') !~ '(^|[ ,])event_bus($|[ ,])' THEN
        RAISE WARNING 'event_bus is not in shared_preload_libraries: no worker will deliver events in this cluster'
            USING HINT = 'Add it to shared_preload_libraries and restart; until then process_pending_events() delivers by hand.';
        RETURN;
    END IF;
    SELECT waiting, start_failures_total INTO v_waiting, v_failures FROM event_bus._pool_summary();
    IF v_pool + 1 > v_slots THEN
        RAISE WARNING 'event_bus.max_workers (%) plus the launcher exceed max_worker_processes (%): the pool cannot start all its workers', v_pool, v_slots
            USING HINT = 'Raise max_worker_processes (restart) or lower event_bus.max_workers.';
    ELSIF v_waiting > 0 THEN
        RAISE WARNING 'event_bus: % database(s) are waiting for a delivery worker right now (the pool of % is busy)', v_waiting, v_pool
            USING HINT = 'Deliveries go on as workers take turns; raise event_bus.max_workers (and max_worker_processes) if this lasts. See event_bus.worker_pool().';
    ELSIF v_failures > 0 THEN
        RAISE WARNING 'event_bus: % delivery worker start(s) failed for want of background worker slots', v_failures
            USING HINT = 'Raise max_worker_processes (restart): other extensions and parallel queries share it.';
    END IF;
END
$$;
