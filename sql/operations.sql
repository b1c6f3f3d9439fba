-- event_bus operations: what a monitor page, psql, PostgREST or Grafana calls. Reads are SECURITY
-- INVOKER and filtered by row-level security; writes (retry, replay) are SECURITY DEFINER and
-- restrict themselves to the caller's tenant scope. Loaded last (finalize).

------------------------------------------------------------------------------------------------
-- API: Public — list_events (keyset pagination, newest first)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.list_events(
    p_tenant_id     uuid        DEFAULT NULL,
    p_source_module text        DEFAULT NULL,
    p_event_type    text        DEFAULT NULL,
    p_status        text        DEFAULT NULL,
    p_from          timestamptz DEFAULT NULL,
    p_to            timestamptz DEFAULT NULL,
    p_before        uuid        DEFAULT NULL,
    p_limit         integer     DEFAULT 50,
    p_entity_type   text        DEFAULT NULL,
    p_entity_id     text        DEFAULT NULL,
    p_correlation_id text       DEFAULT NULL
) RETURNS SETOF event_bus.module_events
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_exact text;
    v_where text;
    v_sql   text;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'event_bus: p_limit % is out of range', p_limit
            USING ERRCODE = '22023', HINT = 'Ask for 1 to 1000 events per page; page on with p_before.';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN ('pending', 'processing', 'completed', 'failed') THEN
        RAISE EXCEPTION 'event_bus: unknown event status %', p_status
            USING ERRCODE = '22023', HINT = 'Use pending, processing, completed or failed.';
    END IF;
    IF p_event_type IS NOT NULL THEN
        PERFORM event_bus._check_pattern(p_event_type);
        -- a type without wildcards is an equality: one an index can serve
        IF strpos(p_event_type, '*') = 0 AND strpos(p_event_type, '#') = 0 THEN
            v_exact := p_event_type;
        END IF;
    END IF;
    -- Only the filters given go into the statement, so each call is planned for what it asks
    -- (no "p IS NULL OR ..." that keeps an index out of a plan); the values are parameters.
    v_where := concat_ws(' AND ',
        CASE WHEN p_tenant_id IS NOT NULL THEN 'e.tenant_id = $1' END,
        CASE WHEN p_source_module IS NOT NULL THEN 'e.source_module = $2' END,
        CASE WHEN v_exact IS NOT NULL THEN 'e.event_type = $3'
             WHEN p_event_type IS NOT NULL THEN 'event_bus.matches($3, e.event_type)' END,
        CASE WHEN p_status IS NOT NULL THEN 'e.status = $4' END,
        -- an id is taken at insert, after its transaction started (created_at): the id bound lets
        -- the primary key serve the range, created_at keeps it exact
        CASE WHEN p_from IS NOT NULL THEN 'e.id >= event_bus.uuid_v7_lower_bound($5) AND e.created_at >= $5' END,
        CASE WHEN p_to IS NOT NULL THEN 'e.created_at < $6' END,
        CASE WHEN p_before IS NOT NULL THEN 'e.id < $7' END,
        CASE WHEN p_entity_type IS NOT NULL THEN 'e.entity_type = $9' END,
        CASE WHEN p_entity_id IS NOT NULL THEN 'e.entity_id = $10' END,
        CASE WHEN p_correlation_id IS NOT NULL
             THEN 'e.metadata ? ''correlation_id'' AND e.metadata ->> ''correlation_id'' = $11' END);
    IF v_exact IS NOT NULL THEN
        -- by type: the fanned-out events through (tenant_id, event_type, id) — a tenant's reader
        -- gets its tenant from row-level security — and the few not yet fanned out through their
        -- own index, two ordered scans merged
        v_sql := 'SELECT x.* FROM ('
              || '(SELECT e.* FROM event_bus.module_events e WHERE e.dispatched_at IS NOT NULL AND ' || v_where
              || ' ORDER BY e.id DESC LIMIT $8) UNION ALL '
              || '(SELECT e.* FROM event_bus.module_events e WHERE e.dispatched_at IS NULL AND ' || v_where
              || ' ORDER BY e.id DESC LIMIT $8)) x ORDER BY x.id DESC LIMIT $8';
    ELSE
        v_sql := 'SELECT e.* FROM event_bus.module_events e'
              || CASE WHEN v_where <> '' THEN ' WHERE ' || v_where ELSE '' END
              || ' ORDER BY e.id DESC LIMIT $8';
    END IF;
    RETURN QUERY EXECUTE v_sql
        USING p_tenant_id, p_source_module, coalesce(v_exact, p_event_type), p_status, p_from, p_to, p_before,
              p_limit, p_entity_type, p_entity_id, p_correlation_id;
END
$$;
COMMENT ON FUNCTION event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer, text, text, text) IS
    'Events, newest first, filtered by tenant, source module, event-type pattern (* and #), status, '
    'created_at range [p_from, p_to), entity (type, id) and correlation id (metadata.correlation_id). Keyset pagination: pass the last id of a page as p_before for the '
    'next. Row-level security limits readers to their tenant.';

------------------------------------------------------------------------------------------------
-- API: Public — event_detail
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.event_detail(p_event_id uuid) RETURNS jsonb
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_detail jsonb;
BEGIN
    SELECT jsonb_build_object(
               'event', to_jsonb(e),
               'deliveries', coalesce((
                   SELECT jsonb_agg(jsonb_build_object(
                              'delivery_id', d.id,
                              'subscription_id', d.subscription_id,
                              'handler_module', s.handler_module,
                              'handler_kind', s.handler_kind,
                              'pattern', s.event_type,
                              'status', d.status,
                              'attempts', d.attempts,
                              'next_attempt_at', d.next_attempt_at,
                              'last_attempt_at', d.last_attempt_at,
                              'last_http_status', d.last_http_status,
                              'last_error', d.last_error,
                              'completed_at', d.completed_at)
                          ORDER BY d.created_at, d.subscription_id)
                     FROM event_bus.module_event_deliveries d
                     LEFT JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                    WHERE d.event_id = e.id), '[]'::jsonb),
               'logs', coalesce((
                   SELECT jsonb_agg(to_jsonb(l) ORDER BY l.executed_at, l.attempt)
                     FROM event_bus.module_event_logs l
                    WHERE l.event_id = e.id), '[]'::jsonb),
               'children', coalesce((
                   SELECT jsonb_agg(jsonb_build_object('id', c.id, 'event_type', c.event_type,
                                                       'status', c.status, 'created_at', c.created_at)
                                    ORDER BY c.id)
                     FROM (SELECT c.id, c.event_type, c.status, c.created_at
                             FROM event_bus.module_events c
                            WHERE c.metadata ? 'causation_id' AND c.metadata ->> 'causation_id' = e.id::text
                            ORDER BY c.id
                            LIMIT 100) c), '[]'::jsonb))
      INTO v_detail
      FROM event_bus.module_events e
     WHERE e.id = p_event_id;
    IF v_detail IS NULL THEN
        RAISE EXCEPTION 'event_bus: event % not found', p_event_id
            USING ERRCODE = 'P0002', HINT = 'It may belong to another tenant, or retention may have deleted it.';
    END IF;
    RETURN v_detail;
END
$$;
COMMENT ON FUNCTION event_bus.event_detail(uuid) IS
    'One event as JSON: {"event": its row (payload, metadata, status), "deliveries": each subscription''s '
    'delivery state, "logs": every attempt in order, "children": the events its handlers emitted (by '
    'metadata.causation_id, first 100)}. P0002 when not found or not visible.';

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
           AND w.ordering_key = d.ordering_key AND w.status = 'waiting') AS waiting
  FROM event_bus.module_event_deliveries d
  JOIN event_bus.module_events e ON e.id = d.event_id
  LEFT JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
 WHERE d.ordering_key IS NOT NULL AND d.status = 'failed';
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
       SET status = 'skipped',
           completed_at = now(),
           last_error = left(coalesce(d.last_error || ' ', '') || '(skipped by ' || event_bus._caller() || ')', 2000)
     WHERE d.id = p_delivery_id AND d.status = 'failed'
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
         WHERE d.event_id = p_event_id AND d.status = 'failed'));
END
$$;
COMMENT ON FUNCTION event_bus.retry_event(uuid) IS
    'Re-arm the failed (dead) deliveries of one event: due now, with a fresh retry budget. Deliveries '
    'that succeeded are not sent again. Returns how many were re-armed (0 if none had failed).';

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
         WHERE d.status = 'failed'
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
              AND d.status IN ('pending', 'processing', 'held'));
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
    WITH up AS (
        INSERT INTO event_bus.module_event_deliveries AS d
            (id, event_id, subscription_id, tenant_id, status, attempts, next_attempt_at)
        SELECT event_bus._delivery_id(r.event_id, r.subscription_id), r.event_id, r.subscription_id,
               r.tenant_id, event_bus._due_state(r.held), 0, now()
          FROM event_bus._replay_targets(v_scope, p_event_type, p_source_module, p_tenant_id, p_from, p_to,
                                         p_subscription_id, p_event_id) r
        ON CONFLICT (event_id, subscription_id) DO UPDATE
           SET status = excluded.status,
               next_attempt_at = now(),
               attempt_offset = d.attempts,
               completed_at = NULL
         WHERE d.status IN ('completed', 'failed', 'skipped')
        RETURNING d.event_id, d.id, d.ordering_key)
    SELECT count(*), array_agg(DISTINCT up.event_id), array_agg(up.id) FILTER (WHERE up.ordering_key IS NOT NULL)
      INTO v_count, v_events, v_ordered FROM up;
    IF v_ordered IS NOT NULL THEN
        PERFORM event_bus._order_streams(v_ordered);
    END IF;
    IF v_count > 0 THEN
        PERFORM event_bus._refresh_event_status(v_events);
        PERFORM event_bus._wake_on_commit();
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid) IS
    'Deliver past events again: every event matching the filters (type pattern, source module, tenant, '
    'created_at range, or one event: p_event_id) to every active matching subscription, or only p_subscription_id (which backfills a '
    'subscription created after the events). Finished deliveries are re-armed with a fresh retry budget and '
    'the same webhook-id; missing ones are created; ones under way are left alone. p_dry_run => true '
    'returns the count without changing anything. Returns the number of deliveries (re)armed.';

------------------------------------------------------------------------------------------------
-- API: Public — dead letters, stats, health, metrics
------------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW event_bus.dead_letters WITH (security_invoker = true) AS
SELECT d.id              AS delivery_id,
       d.event_id,
       d.subscription_id,
       d.tenant_id,
       e.event_type,
       e.source_module,
       e.entity_type,
       e.entity_id,
       s.handler_module,
       s.handler_kind,
       d.attempts,
       d.last_http_status,
       d.last_error,
       d.last_attempt_at,
       d.completed_at    AS dead_at,
       e.created_at      AS emitted_at
  FROM event_bus.module_event_deliveries d
  JOIN event_bus.module_events e ON e.id = d.event_id
  LEFT JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
 WHERE d.status = 'failed' AND NOT e.is_request;
COMMENT ON VIEW event_bus.dead_letters IS
    'Dead letters: deliveries that used up their retries, with the event, the handler and the last error. '
    'Re-arm with retry_event(event_id) or retry_failed(...).';

CREATE OR REPLACE FUNCTION event_bus.event_stats(
    p_window    interval DEFAULT '24 hours',
    p_tenant_id uuid     DEFAULT NULL
) RETURNS TABLE (pending bigint, processing bigint, processed bigint, failed bigint, total bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE e.status = 'pending'),
           count(*) FILTER (WHERE e.status = 'processing'),
           count(*) FILTER (WHERE e.status = 'completed'),
           count(*) FILTER (WHERE e.status = 'failed'),
           count(*)
      FROM event_bus.module_events e
     WHERE e.id >= event_bus.uuid_v7_lower_bound(now() - p_window)
       AND e.created_at >= now() - p_window
       AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id);
$$;
COMMENT ON FUNCTION event_bus.event_stats(interval, uuid) IS
    'Events emitted within the window (default 24 hours) by status: pending, processing, processed '
    '(completed), failed, total. Optionally for one tenant; readers see their own tenant.';

CREATE OR REPLACE FUNCTION event_bus.event_stats_by_type(
    p_window    interval DEFAULT '24 hours',
    p_tenant_id uuid     DEFAULT NULL
) RETURNS TABLE (source_module text, event_type text, pending bigint, processing bigint, processed bigint,
                 failed bigint, total bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT e.source_module, e.event_type,
           count(*) FILTER (WHERE e.status = 'pending'),
           count(*) FILTER (WHERE e.status = 'processing'),
           count(*) FILTER (WHERE e.status = 'completed'),
           count(*) FILTER (WHERE e.status = 'failed'),
           count(*)
      FROM event_bus.module_events e
     WHERE e.id >= event_bus.uuid_v7_lower_bound(now() - p_window)
       AND e.created_at >= now() - p_window
       AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
     GROUP BY e.source_module, e.event_type
     ORDER BY e.source_module, e.event_type;
$$;
COMMENT ON FUNCTION event_bus.event_stats_by_type(interval, uuid) IS
    'event_stats per source module and event type.';

CREATE OR REPLACE VIEW event_bus.subscription_health WITH (security_invoker = true) AS
SELECT s.id AS subscription_id,
       s.event_type,
       s.handler_module,
       s.handler_kind,
       s.tenant_id,
       s.is_active,
       CASE WHEN s.breaker_open_until IS NULL THEN 'closed'
            WHEN s.breaker_open_until > now() THEN 'open'
            ELSE 'half_open' END AS breaker_state,
       s.consecutive_failures,
       coalesce(s.breaker_threshold,
                nullif(current_setting('event_bus.breaker_threshold', true), '')::integer, 0) AS breaker_threshold,
       s.breaker_opened_at,
       s.breaker_open_until,
       s.last_success_at,
       s.last_failure_at,
       s.last_error,
       h.attempts_1h,
       h.failures_1h,
       CASE WHEN h.attempts_1h > 0 THEN round(h.failures_1h::numeric / h.attempts_1h, 4) END AS failure_rate_1h
  FROM event_bus.module_event_subscriptions s
  CROSS JOIN LATERAL (
      SELECT count(*) AS attempts_1h, count(*) FILTER (WHERE l.status = 'failed') AS failures_1h
        FROM event_bus.module_event_logs l
       WHERE l.subscription_id = s.id AND l.executed_at > now() - interval '1 hour') h;
COMMENT ON VIEW event_bus.subscription_health IS
    'Per subscription: circuit breaker state (closed, open = paused, half_open = probing), consecutive '
    'failures, last success / failure / error, and attempts, failures and failure rate over the last hour. '
    'reset_breaker(id) closes an open breaker.';

------------------------------------------------------------------------------------------------
-- API: Public — what an overview page shows (the Event Monitor's, or your own)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.queue_summary()
RETURNS TABLE (undispatched bigint, oldest_undispatched_seconds double precision, due bigint,
               oldest_due_seconds double precision, held bigint, waiting bigint, dead_letters bigint,
               parked_streams bigint, open_breakers bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- each count reads only unfinished or dead rows, each through its own partial index: never
    -- the history (one scan over several statuses would read the whole table)
    SELECT u.n, u.age, d.due, d.age, h.held, w.waiting, f.dead, f.parked, b.open
      FROM (SELECT count(*) AS n,
                   coalesce(extract(epoch FROM now() - min(e.created_at))::double precision, 0) AS age
              FROM event_bus.module_events e
             WHERE e.dispatched_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0)) u,
           (SELECT count(*) AS due,
                   coalesce(extract(epoch FROM now() - min(d.next_attempt_at))::double precision, 0) AS age
              FROM event_bus.module_event_deliveries d
             WHERE d.status IN ('pending', 'processing') AND d.next_attempt_at <= now()) d,
           (SELECT count(*) AS held
              FROM event_bus.module_event_deliveries d
             WHERE d.status = 'held') h,
           (SELECT count(*) AS waiting
              FROM event_bus.module_event_deliveries d
             WHERE d.ordering_key IS NOT NULL AND d.status = 'waiting') w,
           (SELECT count(*) AS dead, count(*) FILTER (WHERE d.ordering_key IS NOT NULL) AS parked
              FROM event_bus.module_event_deliveries d
             WHERE d.status = 'failed') f,
           (SELECT count(*) AS open
              FROM event_bus.module_event_subscriptions s
             WHERE s.is_active AND s.breaker_open_until IS NOT NULL) b;
$$;
COMMENT ON FUNCTION event_bus.queue_summary() IS
    'The queue now, as the caller may see it (row-level security): events not yet fanned out and the '
    'oldest''s age in seconds, deliveries due now (queue depth) and how long the oldest has been due, '
    'held (open breaker) and waiting (ordered stream) deliveries, dead letters, parked streams, and active '
    'subscriptions with an open breaker.';

CREATE OR REPLACE FUNCTION event_bus.delivery_timeline(
    p_window  interval DEFAULT '24 hours',
    p_buckets integer  DEFAULT 24
) RETURNS TABLE (bucket_start timestamptz, succeeded bigint, failed bigint)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_end   timestamptz := now();
    v_start timestamptz;
    v_width double precision;
BEGIN
    IF p_window IS NULL OR p_window <= interval '0' OR p_window > interval '31 days' THEN
        RAISE EXCEPTION 'event_bus: window % is out of range', p_window
            USING ERRCODE = '22023', HINT = 'Give a window between a second and 31 days, e.g. ''24 hours''.';
    END IF;
    IF p_buckets IS NULL OR p_buckets NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'event_bus: % buckets is out of range', p_buckets
            USING ERRCODE = '22023', HINT = 'Ask for 1 to 1000 buckets.';
    END IF;
    v_start := v_end - p_window;
    v_width := extract(epoch FROM p_window) / p_buckets;
    RETURN QUERY
        SELECT v_start + make_interval(secs => b.i * v_width),
               coalesce(c.ok, 0)::bigint, coalesce(c.bad, 0)::bigint
          FROM generate_series(0, p_buckets - 1) AS b(i)
          LEFT JOIN (
              -- counted per minute (_attempt_minutes): the window's first minute counts whole
              SELECT least(greatest(floor(extract(epoch FROM m.minute - v_start) / v_width)::integer, 0),
                           p_buckets - 1) AS i,
                     sum(m.succeeded) AS ok, sum(m.failed) AS bad
                FROM event_bus._attempt_minutes m
               WHERE m.minute >= date_trunc('minute', v_start)
               GROUP BY 1) c ON c.i = b.i
         ORDER BY b.i;
END
$$;
COMMENT ON FUNCTION event_bus.delivery_timeline(interval, integer) IS
    'Delivery attempts over the last p_window (at most 31 days) in p_buckets equal buckets (oldest first): '
    'bucket start, attempts that succeeded, attempts that failed, counted per minute as the attempts were '
    'logged (so it reads minutes, not attempts). Row-level security limits readers to their tenant.';

------------------------------------------------------------------------------------------------
-- API: Public — pausing a subscription; its targets for admins
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

CREATE OR REPLACE FUNCTION event_bus.subscription_targets()
RETURNS TABLE (subscription_id uuid, target text, secret_hint text)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.id,
           -- admins see the whole target but its password
           coalesce(regexp_replace(s.handler_url, '^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#@]*@', '\1:***@'),
                    s.handler_function),
           CASE WHEN s.secret IS NOT NULL THEN left(s.secret, 6) || '…' END
      FROM event_bus.module_event_subscriptions s
     ORDER BY s.id;
$$;
COMMENT ON FUNCTION event_bus.subscription_targets() IS
    'Admins only: each subscription''s target (URL with its password masked, or the function) and the '
    'first characters of its signing secret.';

CREATE OR REPLACE FUNCTION event_bus.metrics() RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_out text;
    v_dispatched bigint;
    v_succeeded  bigint;
    v_failed     bigint;
    v_dead       bigint;
    v_purged     bigint;
BEGIN
    SELECT coalesce(max(c.value) FILTER (WHERE c.name = 'events_dispatched'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'attempts_succeeded'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'attempts_failed'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'deliveries_dead'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'events_purged'), 0)
      INTO v_dispatched, v_succeeded, v_failed, v_dead, v_purged
      FROM event_bus._counters c;
    v_out := E'# HELP event_bus_events_dispatched_total Events fanned out to their subscriptions.\n'
          || E'# TYPE event_bus_events_dispatched_total counter\n'
          || 'event_bus_events_dispatched_total ' || v_dispatched || E'\n'
          || E'# HELP event_bus_attempts_total Delivery attempts by result.\n'
          || E'# TYPE event_bus_attempts_total counter\n'
          || 'event_bus_attempts_total{result="success"} ' || v_succeeded || E'\n'
          || 'event_bus_attempts_total{result="failed"} ' || v_failed || E'\n'
          || E'# HELP event_bus_deliveries_dead_total Deliveries that used up their retries.\n'
          || E'# TYPE event_bus_deliveries_dead_total counter\n'
          || 'event_bus_deliveries_dead_total ' || v_dead || E'\n'
          || E'# HELP event_bus_events_purged_total Completed events deleted by retention.\n'
          || E'# TYPE event_bus_events_purged_total counter\n'
          || 'event_bus_events_purged_total ' || v_purged || E'\n';

    SELECT v_out
           || E'# HELP event_bus_events_undispatched Committed events not yet fanned out.\n'
           || E'# TYPE event_bus_events_undispatched gauge\n'
           || 'event_bus_events_undispatched ' || count(*) || E'\n'
           || E'# HELP event_bus_oldest_undispatched_seconds Age of the oldest event not yet fanned out.\n'
           || E'# TYPE event_bus_oldest_undispatched_seconds gauge\n'
           || 'event_bus_oldest_undispatched_seconds '
           || coalesce(round(extract(epoch FROM now() - min(e.created_at)), 3), 0) || E'\n'
      INTO v_out
      FROM event_bus.module_events e
     WHERE e.dispatched_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0);

    SELECT v_out
           || E'# HELP event_bus_deliveries Deliveries not yet finished, by status.\n'
           || E'# TYPE event_bus_deliveries gauge\n'
           || 'event_bus_deliveries{status="pending"} ' || count(*) FILTER (WHERE d.status = 'pending') || E'\n'
           || 'event_bus_deliveries{status="processing"} ' || count(*) FILTER (WHERE d.status = 'processing') || E'\n'
           || 'event_bus_deliveries{status="held"} ' || count(*) FILTER (WHERE d.status = 'held') || E'\n'
           || 'event_bus_deliveries{status="waiting"} ' || count(*) FILTER (WHERE d.status = 'waiting') || E'\n'
           || E'# HELP event_bus_deliveries_due Deliveries due now (queue depth).\n'
           || E'# TYPE event_bus_deliveries_due gauge\n'
           || 'event_bus_deliveries_due '
           || count(*) FILTER (WHERE d.status IN ('pending', 'processing') AND d.next_attempt_at <= now()) || E'\n'
           || E'# HELP event_bus_oldest_due_seconds How long the longest-waiting due delivery has been due.\n'
           || E'# TYPE event_bus_oldest_due_seconds gauge\n'
           || 'event_bus_oldest_due_seconds '
           || coalesce(round(extract(epoch FROM now() - min(d.next_attempt_at)
                             FILTER (WHERE d.status IN ('pending', 'processing') AND d.next_attempt_at <= now())), 3), 0) || E'\n'
      INTO v_out
      FROM event_bus.module_event_deliveries d
     WHERE d.status = ANY (event_bus._unfinished_states());

    SELECT v_out
           || E'# HELP event_bus_dead_letters Dead deliveries currently kept.\n'
           || E'# TYPE event_bus_dead_letters gauge\n'
           || 'event_bus_dead_letters ' || count(*) || E'\n'
           || E'# HELP event_bus_parked_streams Entity streams of ordered subscriptions held back by a dead delivery.\n'
           || E'# TYPE event_bus_parked_streams gauge\n'
           || 'event_bus_parked_streams ' || count(*) FILTER (WHERE d.ordering_key IS NOT NULL) || E'\n'
      INTO v_out
      FROM event_bus.module_event_deliveries d
     WHERE d.status = 'failed';

    SELECT v_out
           || E'# HELP event_bus_pool_workers Delivery workers running in the cluster (all databases).\n'
           || E'# TYPE event_bus_pool_workers gauge\n'
           || 'event_bus_pool_workers ' || p.workers || E'\n'
           || E'# HELP event_bus_pool_waiting_databases Databases with work waiting for a worker the pool has no room for.\n'
           || E'# TYPE event_bus_pool_waiting_databases gauge\n'
           || 'event_bus_pool_waiting_databases ' || p.waiting || E'\n'
           || E'# HELP event_bus_pool_full_total Times the pool (event_bus.max_workers) was full with databases waiting.\n'
           || E'# TYPE event_bus_pool_full_total counter\n'
           || 'event_bus_pool_full_total ' || p.full_total || E'\n'
           || E'# HELP event_bus_pool_start_failures_total Worker starts refused for want of background worker slots (max_worker_processes).\n'
           || E'# TYPE event_bus_pool_start_failures_total counter\n'
           || 'event_bus_pool_start_failures_total ' || p.start_failures_total || E'\n'
      INTO v_out
      FROM event_bus._pool_summary() p;

    SELECT v_out
           || E'# HELP event_bus_subscriptions Active subscriptions by circuit breaker state.\n'
           || E'# TYPE event_bus_subscriptions gauge\n'
           || 'event_bus_subscriptions{breaker="closed"} ' || count(*) FILTER (WHERE s.breaker_open_until IS NULL) || E'\n'
           || 'event_bus_subscriptions{breaker="open"} ' || count(*) FILTER (WHERE s.breaker_open_until IS NOT NULL) || E'\n'
      INTO v_out
      FROM event_bus.module_event_subscriptions s
     WHERE s.is_active;
    RETURN v_out;
END
$$;
COMMENT ON FUNCTION event_bus.metrics() IS
    'Prometheus text exposition: counters (events dispatched, attempts by result, dead deliveries, events '
    'purged) and gauges (undispatched events and the oldest''s age, deliveries by status, queue depth and '
    'oldest due age, dead letters, subscriptions by breaker state) and the cluster''s worker pool (workers, '
    'databases waiting, times full, failed starts). Serve it from any exporter that runs '
    'SELECT event_bus.metrics().';

------------------------------------------------------------------------------------------------
-- API: Public — the worker pool (all databases of the cluster)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._worker_pool_state()
RETURNS TABLE (dboid oid, workers integer, wanted boolean, waiting_since timestamptz, next_due_at timestamptz,
               last_visit_at timestamptz, busy boolean)
LANGUAGE c VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'worker_pool_state_wrapper';
COMMENT ON FUNCTION event_bus._worker_pool_state() IS
    'Internal: the shared pool''s state per database (read by event_bus.worker_pool).';

CREATE OR REPLACE FUNCTION event_bus._pool_summary()
RETURNS TABLE (workers bigint, waiting bigint, full_total bigint, start_failures_total bigint)
LANGUAGE c VOLATILE PARALLEL SAFE
AS 'MODULE_PATHNAME', 'pool_summary_wrapper';
COMMENT ON FUNCTION event_bus._pool_summary() IS
    'Internal: workers running, databases waiting for one, times the pool was full, failed starts.';

CREATE OR REPLACE FUNCTION event_bus.worker_pool()
RETURNS TABLE (database name, workers integer, has_work boolean, waiting_for_worker_since timestamptz,
               next_due_at timestamptz, last_visit_at timestamptz, backlog boolean)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT d.datname, p.workers, p.wanted OR (p.next_due_at IS NOT NULL), p.waiting_since, p.next_due_at,
           p.last_visit_at, p.busy
      FROM event_bus._worker_pool_state() p
      JOIN pg_catalog.pg_database d ON d.oid = p.dboid
     ORDER BY p.waiting_since NULLS LAST, d.datname
$$;
COMMENT ON FUNCTION event_bus.worker_pool() IS
    'The cluster''s delivery workers (a pool of event_bus.max_workers shared by every database with the '
    'extension): per database the workers serving it now, whether it has work signalled or a retry due, since '
    'when it has been waiting for a worker (NULL: served or idle), when a retry it holds is due, when a worker '
    'last started for it, and whether its workers report a backlog. Databases without the extension appear '
    'until a worker''s first visit finds out.';

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

CREATE OR REPLACE FUNCTION event_bus._deliveries_dead(p_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_dead   integer;
    v_parked integer;
BEGIN
    IF NOT event_bus._operational_events_on() THEN
        RETURN 0;
    END IF;
    INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    SELECT d.tenant_id, 'event_bus.delivery.dead', 'event_bus', 'delivery', d.id::text,
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
     WHERE d.id = ANY (p_ids) AND d.status = 'failed' AND e.event_type NOT LIKE 'event\_bus.%';
    GET DIAGNOSTICS v_dead = ROW_COUNT;
    -- a dead delivery of an ordered stream parks the stream behind it
    INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    SELECT d.tenant_id, 'event_bus.stream.parked', 'event_bus', e.entity_type, e.entity_id,
           jsonb_build_object('subscription_id', d.subscription_id, 'entity_type', e.entity_type,
                              'entity_id', e.entity_id, 'blocking_delivery_id', d.id, 'event_id', e.id,
                              'event_type', e.event_type, 'last_error', d.last_error,
                              'waiting', (SELECT count(*) FROM event_bus.module_event_deliveries w
                                           WHERE w.subscription_id = d.subscription_id AND w.tenant_id = d.tenant_id
                                             AND w.ordering_key = d.ordering_key AND w.status = 'waiting')),
           jsonb_build_object('causation_id', e.id::text,
                              'correlation_id', coalesce(e.metadata ->> 'correlation_id', e.id::text))
      FROM event_bus.module_event_deliveries d
      JOIN event_bus.module_events e ON e.id = d.event_id
     WHERE d.id = ANY (p_ids) AND d.status = 'failed' AND d.ordering_key IS NOT NULL
       AND e.event_type NOT LIKE 'event\_bus.%';
    GET DIAGNOSTICS v_parked = ROW_COUNT;
    IF v_dead + v_parked > 0 THEN
        PERFORM event_bus._wake_on_commit();
    END IF;
    RETURN v_dead + v_parked;
END
$$;
COMMENT ON FUNCTION event_bus._deliveries_dead(uuid[]) IS
    'Internal: emit event_bus.delivery.dead for each of these deliveries that is dead (and '
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
                         (SELECT l.tenant_id FROM event_bus.module_event_logs l
                           WHERE l.subscription_id = p_subscription_id
                           ORDER BY l.executed_at DESC LIMIT 1));
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
REVOKE ALL ON FUNCTION event_bus._deliveries_dead(uuid[]), event_bus._breaker_changed(uuid, boolean) FROM PUBLIC;


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
           AND e.status = 'completed'
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
           SET status = 'pending',
               attempts = greatest(d.attempts - 1, 0),
               next_attempt_at = now() + interval '1 second',
               capped_subscription_id = NULL
         WHERE d.id = ANY (v_deferred) AND d.status = 'processing';
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
    -- a hold that raced with its breaker closing
    UPDATE event_bus.module_event_deliveries d
       SET status = 'pending', next_attempt_at = now()
      FROM event_bus.module_event_subscriptions s
     WHERE d.status = 'held' AND s.id = d.subscription_id AND s.breaker_open_until IS NULL;
    -- a stream whose head finished in a transaction that did not see its next delivery yet
    -- (the stream index's own predicate, so this is an index probe however large the history)
    IF EXISTS (SELECT 1 FROM event_bus.module_event_deliveries w
                WHERE w.ordering_key IS NOT NULL
                  AND w.status = ANY (event_bus._stream_blocking_states())
                  AND w.status = 'waiting') THEN
        PERFORM event_bus._advance_streams(NULL);
    END IF;
    -- deliveries a fan-out added for a subscription deleted meanwhile (a fan-out transaction
    -- lasts milliseconds; half a minute is a wide margin)
    PERFORM event_bus._sweep_deleted_subscriptions(interval '30 seconds');
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
            WHERE q.status IN ('pending', 'processing') AND q.next_attempt_at <= now()
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
                        WHERE h.subscription_id = s.id AND h.status = 'held')
           AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                            WHERE d.subscription_id = s.id AND d.status IN ('pending', 'processing'))
    LOOP
        PERFORM event_bus._hold(r.id);
    END LOOP;
    -- attempt counts: fold each finished minute's rows into one; forget what no chart shows
    IF EXISTS (SELECT 1 FROM event_bus._attempt_minutes m
                WHERE NOT m.folded AND m.minute < date_trunc('minute', now()) - interval '1 minute') THEN
        WITH moved AS (
            DELETE FROM event_bus._attempt_minutes m
             WHERE NOT m.folded AND m.minute < date_trunc('minute', now()) - interval '1 minute'
            RETURNING m.tenant_id, m.minute, m.succeeded, m.failed)
        INSERT INTO event_bus._attempt_minutes (tenant_id, minute, succeeded, failed, folded)
        SELECT moved.tenant_id, moved.minute, sum(moved.succeeded), sum(moved.failed), true
          FROM moved GROUP BY 1, 2;
    END IF;
    DELETE FROM event_bus._attempt_minutes m WHERE m.minute < now() - interval '32 days';
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
-- Privileges
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION event_bus._write_scope(),
    event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid, uuid),
    event_bus._maintenance(integer), event_bus._idempotency_gate(uuid[]),
    event_bus._idempotency_settle(uuid[], uuid[]) FROM PUBLIC;
-- reading: a tenant's readers (row-level security filters), admins
REVOKE ALL ON FUNCTION event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer, text, text, text),
    event_bus.event_detail(uuid), event_bus.event_stats(interval, uuid),
    event_bus.event_stats_by_type(interval, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer, text, text, text),
    event_bus.event_detail(uuid), event_bus.event_stats(interval, uuid),
    event_bus.event_stats_by_type(interval, uuid) TO event_bus_reader, event_bus_admin;
GRANT SELECT ON event_bus.dead_letters, event_bus.subscription_health, event_bus.parked_streams
    TO event_bus_reader, event_bus_admin;
REVOKE ALL ON FUNCTION event_bus.queue_summary(), event_bus.delivery_timeline(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.queue_summary(), event_bus.delivery_timeline(interval, integer)
    TO event_bus_reader, event_bus_admin;
REVOKE ALL ON FUNCTION event_bus.worker_pool(), event_bus._worker_pool_state(), event_bus._pool_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.worker_pool(), event_bus._worker_pool_state(), event_bus._pool_summary()
    TO event_bus_reader, event_bus_admin;
-- repairing: operators (their tenant), admins
REVOKE ALL ON FUNCTION event_bus.retry_event(uuid),
    event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz, boolean),
    event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid),
    event_bus.skip_delivery(uuid), event_bus.set_subscription_active(uuid, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.retry_event(uuid),
    event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz, boolean),
    event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean, uuid),
    event_bus.skip_delivery(uuid), event_bus.set_subscription_active(uuid, boolean)
    TO event_bus_operator, event_bus_admin;
-- managing: admins
REVOKE ALL ON FUNCTION event_bus.metrics(), event_bus.reset_breaker(uuid),
    event_bus.purge_completed(interval, integer), event_bus.subscription_targets() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.metrics(), event_bus.reset_breaker(uuid), event_bus.subscription_targets(),
    event_bus.purge_completed(interval, integer),
    event_bus.subscribe(text, text, text, text, text, jsonb, integer, integer, uuid, text, name, text, integer, integer, boolean, integer, double precision, boolean, text, interval),
    event_bus.unsubscribe(uuid), event_bus.process_pending_events(integer),
    event_bus._rearm(uuid[]), event_bus._hold(uuid), event_bus._release(uuid),
    event_bus._refresh_event_status(uuid[]),
    event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer),
    -- what process_pending_events runs of the worker's pipeline, in an admin's session
    event_bus._lock_streams(), event_bus._advance_streams(uuid[]), event_bus._order_streams(uuid[]),
    event_bus._idempotency_gate(uuid[]), event_bus._idempotency_settle(uuid[], uuid[]),
    event_bus._deliveries_dead(uuid[]), event_bus._breaker_changed(uuid, boolean)
    TO event_bus_admin;
GRANT ALL ON event_bus._counters TO event_bus_admin;

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
