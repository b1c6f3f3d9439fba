-- event_bus monitoring API: what a monitor page, psql, PostgREST or Grafana reads. Every function and
-- view here is SECURITY INVOKER and filtered by row-level security: a reader sees its own tenant, an admin
-- every tenant. The repairs (retry, replay, skip, pause, reset, purge) are in sql/operations.sql.

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
    v_exact      text;
    v_where      text;
    v_sql        text;
    v_dispatched boolean := true;
    v_restricted boolean;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'event_bus: p_limit % is out of range', p_limit
            USING ERRCODE = '22023', HINT = 'Ask for 1 to 1000 events per page; page on with p_before.';
    END IF;
    IF p_status IS NOT NULL AND p_status NOT IN (<event_statuses>) THEN
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
    -- a type and a module that no fanned-out event has together (the module of another type, a typo):
    -- the hourly counts say so at once, where the type's index would be read to its end to find that
    -- none of its events has the module. (Events not yet fanned out are looked for all the same.)
    IF v_exact IS NOT NULL AND p_source_module IS NOT NULL THEN
        v_dispatched := EXISTS (
            SELECT 1 FROM event_bus._event_hours h
             WHERE h.event_type = v_exact AND h.source_module = p_source_module
               AND (p_tenant_id IS NULL OR h.tenant_id = p_tenant_id)
               AND h.pending + h.processing + h.completed + h.failed > 0);
    END IF;
    -- Row-level security restricts the caller to a tenant unless it is an admin (or bypasses it).
    v_restricted := NOT pg_catalog.pg_has_role(current_user, 'event_bus_admin', 'MEMBER')
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r
                         WHERE r.rolname = current_user AND (r.rolsuper OR r.rolbypassrls));
    IF v_exact IS NOT NULL OR p_entity_id IS NOT NULL OR p_status IN (<pending>, <processing>, <failed>)
       OR p_tenant_id IS NOT NULL OR v_restricted THEN
        -- by tenant (given, or a reader's from row-level security), type, entity or a status other than
        -- completed: the fanned-out events through the index for it ((tenant_id, id), (tenant_id,
        -- event_type, id), the entity index, the status index — each holds fanned-out events only, so an
        -- emit's INSERT does not pay for them) and the few not yet fanned out through their own index,
        -- two ordered scans merged.
        v_sql := 'SELECT x.* FROM ('
              || '(SELECT e.* FROM event_bus.module_events e WHERE '
              || CASE WHEN v_dispatched THEN 'e.dispatched_at IS NOT NULL' ELSE 'false' END
              || CASE WHEN v_where <> '' THEN ' AND ' || v_where ELSE '' END
              || ' ORDER BY e.id DESC LIMIT $8) UNION ALL '
              || '(SELECT e.* FROM event_bus.module_events e WHERE e.dispatched_at IS NULL'
              || CASE WHEN v_where <> '' THEN ' AND ' || v_where ELSE '' END
              || ' ORDER BY e.id DESC LIMIT $8)) x ORDER BY x.id DESC LIMIT $8';
    ELSE
        -- an admin's list over every tenant (by module, time, entity type or correlation): the primary
        -- key (or the correlation index) newest first, fanned out or not
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
       e.created_at      AS emitted_at,
       d.completed_at    AS failed_at
  FROM event_bus.module_event_deliveries d
  JOIN event_bus.module_events e ON e.id = d.event_id
  LEFT JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
 WHERE d.status = <failed> AND NOT e.is_request;
COMMENT ON VIEW event_bus.dead_letters IS
    'Dead letters: the failed deliveries (their retries used up), with the event, the handler and the last error. '
    'Re-arm with retry_event(event_id) or retry_failed(...). failed_at: when it failed (dead_at before 0.11.0).';

-- Counting the events of a window: the whole hours inside it from _event_hours (kept by triggers),
-- the hour it starts in from the rows while that hour holds few events (else its counts scaled to
-- the part inside the window), and the events not yet fanned out from the rows (the undispatched
-- index: a handful). A day of ten million events is a few thousand rows read, not ten million.
CREATE OR REPLACE FUNCTION event_bus._event_counts(p_window interval, p_tenant_id uuid)
RETURNS TABLE (source_module text, event_type text, pending bigint, processing bigint, completed bigint,
               failed bigint)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- an edge hour with more events than this is estimated, not counted
    c_exact_limit constant bigint := 20000;
    v_start timestamptz;
    v_edge  timestamptz;
    v_edge_total bigint;
    v_share double precision;
BEGIN
    IF p_window IS NULL OR p_window <= interval '0' THEN
        RAISE EXCEPTION 'event_bus: window % is out of range', coalesce(p_window::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Give a positive window, e.g. ''24 hours''.';
    END IF;
    v_start := now() - p_window;
    v_edge := event_bus._event_hour(v_start);
    SELECT coalesce(sum(h.pending + h.processing + h.completed + h.failed), 0)
      INTO v_edge_total
      FROM event_bus._event_hours h
     WHERE h.hour = v_edge AND (p_tenant_id IS NULL OR h.tenant_id = p_tenant_id);
    v_share := CASE WHEN v_edge_total <= c_exact_limit THEN NULL
                    ELSE extract(epoch FROM v_edge + interval '1 hour' - v_start) / 3600.0 END;
    RETURN QUERY
    SELECT c.source_module, c.event_type, sum(c.pending)::bigint, sum(c.processing)::bigint,
           sum(c.completed)::bigint, sum(c.failed)::bigint
      FROM (
            -- the whole hours after the edge, and the edge scaled when it is too big to count
            SELECT h.source_module, h.event_type,
                   CASE WHEN h.hour > v_edge THEN h.pending ELSE round(h.pending * v_share) END AS pending,
                   CASE WHEN h.hour > v_edge THEN h.processing ELSE round(h.processing * v_share) END AS processing,
                   CASE WHEN h.hour > v_edge THEN h.completed ELSE round(h.completed * v_share) END AS completed,
                   CASE WHEN h.hour > v_edge THEN h.failed ELSE round(h.failed * v_share) END AS failed
              FROM event_bus._event_hours h
             WHERE (h.hour > v_edge OR (h.hour = v_edge AND v_share IS NOT NULL))
               AND (p_tenant_id IS NULL OR h.tenant_id = p_tenant_id)
            UNION ALL
            -- the edge hour's fanned-out events inside the window, counted, when they are few; and
            -- the events of the window not fanned out yet
            SELECT e.source_module, e.event_type,
                   count(*) FILTER (WHERE e.status = <pending>),
                   count(*) FILTER (WHERE e.status = <processing>),
                   count(*) FILTER (WHERE e.status = <completed>),
                   count(*) FILTER (WHERE e.status = <failed>)
              FROM event_bus.module_events e
             WHERE e.id >= event_bus.uuid_v7_lower_bound(v_start)
               -- (an id is taken at insert, after created_at, its transaction's start: five minutes'
               -- slack for the ids of a long transaction)
               AND e.id < event_bus.uuid_v7_lower_bound(v_edge + interval '65 minutes')
               AND e.created_at >= v_start AND e.created_at < v_edge + interval '1 hour'
               AND e.dispatched_at IS NOT NULL
               AND v_share IS NULL
               AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
             GROUP BY 1, 2
            UNION ALL
            SELECT e.source_module, e.event_type,
                   count(*) FILTER (WHERE e.status = <pending>),
                   count(*) FILTER (WHERE e.status = <processing>),
                   count(*) FILTER (WHERE e.status = <completed>),
                   count(*) FILTER (WHERE e.status = <failed>)
              FROM event_bus.module_events e
             WHERE e.dispatched_at IS NULL
               AND e.created_at >= v_start
               AND (p_tenant_id IS NULL OR e.tenant_id = p_tenant_id)
             GROUP BY 1, 2
           ) c
     GROUP BY 1, 2
    HAVING sum(c.pending + c.processing + c.completed + c.failed) <> 0;
END
$$;
COMMENT ON FUNCTION event_bus._event_counts(interval, uuid) IS
    'Internal: events emitted within the window per source module and type, by status, from _event_hours '
    'and the rows not yet counted there (what event_stats and event_stats_by_type read).';

CREATE OR REPLACE FUNCTION event_bus.event_stats(
    p_window    interval DEFAULT '24 hours',
    p_tenant_id uuid     DEFAULT NULL
) RETURNS TABLE (pending bigint, processing bigint, processed bigint, failed bigint, total bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(c.pending), 0)::bigint,
           coalesce(sum(c.processing), 0)::bigint,
           coalesce(sum(c.completed), 0)::bigint,
           coalesce(sum(c.failed), 0)::bigint,
           coalesce(sum(c.pending + c.processing + c.completed + c.failed), 0)::bigint
      FROM event_bus._event_counts(p_window, p_tenant_id) c;
$$;
COMMENT ON FUNCTION event_bus.event_stats(interval, uuid) IS
    'Events emitted within the window (default 24 hours) by status: pending, processing, processed '
    '(completed), failed, total. Optionally for one tenant; readers see their own tenant. Read from '
    'maintained hourly counts: when the hour the window starts in holds more than 20,000 events, its '
    'part of the window is estimated (its counts times the share of the hour inside the window).';

CREATE OR REPLACE FUNCTION event_bus.event_stats_by_type(
    p_window    interval DEFAULT '24 hours',
    p_tenant_id uuid     DEFAULT NULL
) RETURNS TABLE (source_module text, event_type text, pending bigint, processing bigint, processed bigint,
                 failed bigint, total bigint)
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.source_module, c.event_type, c.pending, c.processing, c.completed, c.failed,
           c.pending + c.processing + c.completed + c.failed
      FROM event_bus._event_counts(p_window, p_tenant_id) c
     ORDER BY c.source_module, c.event_type;
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
       event_bus._breaker_threshold(s.breaker_threshold) AS breaker_threshold,
       s.breaker_opened_at,
       s.breaker_open_until,
       s.last_success_at,
       s.last_failure_at,
       s.last_error,
       h.attempts_1h,
       h.failures_1h,
       CASE WHEN h.attempts_1h > 0 THEN round(h.failures_1h::numeric / h.attempts_1h, 4) END AS failure_rate_1h,
       s.filter,
       (SELECT coalesce(sum(f.errors), 0) FROM event_bus._filter_errors f WHERE f.subscription_id = s.id)::bigint
           AS filter_errors
  FROM event_bus.module_event_subscriptions s
  CROSS JOIN LATERAL (
      -- counted per minute as the attempts were logged (_attempt_minutes): the hour's first minute counts whole
      SELECT coalesce(sum(m.succeeded + m.failed), 0)::bigint AS attempts_1h,
             coalesce(sum(m.failed), 0)::bigint AS failures_1h
        FROM event_bus._attempt_minutes m
       WHERE m.subscription_id = s.id AND m.minute >= date_trunc('minute', now() - interval '1 hour')) h;
COMMENT ON VIEW event_bus.subscription_health IS
    'Per subscription: circuit breaker state (closed, open = paused, half_open = probing), consecutive '
    'failures, last success / failure / error, attempts, failures and failure rate over the last hour, and '
    'its content filter with the events it came out unknown on since it was set (filter_errors; a reader '
    'counts its own tenant''s). reset_breaker(id) closes an open breaker.';

------------------------------------------------------------------------------------------------
-- API: Public — what an overview page shows (the Event Monitor's, or your own)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._leased(p_event_id uuid) RETURNS boolean
LANGUAGE sql STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM event_bus._event_leases l WHERE l.event_id = p_event_id AND l.lease_end >= now())
$$;
COMMENT ON FUNCTION event_bus._leased(uuid) IS
    'Internal: whether an event is fanned out with its first attempts in flight (an event lease that runs), '
    'for counts of events not fanned out yet that a reader may call (the leases of every tenant are not theirs '
    'to read).';
REVOKE ALL ON FUNCTION event_bus._leased(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus._leased(uuid) TO event_bus_reader, event_bus_admin;

CREATE OR REPLACE FUNCTION event_bus._first_attempts_in_flight() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(cardinality(l.subscription_ids)), 0)::bigint
      FROM event_bus._event_leases l
     WHERE l.lease_end >= now()
       AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d WHERE d.event_id = l.event_id)
$$;
COMMENT ON FUNCTION event_bus._first_attempts_in_flight() IS
    'Internal: first attempts in flight without a delivery row yet (processing, under an event lease: '
    'event_bus._event_leases), counted with the processing deliveries by metrics().';
REVOKE ALL ON FUNCTION event_bus._first_attempts_in_flight() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus._first_attempts_in_flight() TO event_bus_admin;

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
    SELECT u.n, u.age, d.due, d.age, h.held, w.waiting, f.dead, p.parked, b.open
      FROM (SELECT count(*) AS n,
                   coalesce(extract(epoch FROM now() - min(e.created_at))::double precision, 0) AS age
              FROM event_bus.module_events e
             WHERE e.dispatched_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0)
               AND NOT event_bus._leased(e.id)) u,
           (SELECT count(*) AS due,
                   coalesce(extract(epoch FROM now() - min(d.next_attempt_at))::double precision, 0) AS age
              FROM event_bus.module_event_deliveries d
             WHERE d.status = ANY (event_bus._claimable_states()) AND d.next_attempt_at <= now()) d,
           (SELECT count(*) AS held
              FROM event_bus.module_event_deliveries d
             WHERE d.status = <held>) h,
           (SELECT count(*) AS waiting
              FROM event_bus.module_event_deliveries d
             WHERE d.ordering_key IS NOT NULL AND d.status = <waiting>) w,
           (SELECT count(*) AS dead
              FROM event_bus.module_event_deliveries d
             WHERE d.status = <failed>) f,
           -- (through the stream index: the failed index alone counts without reading the rows)
           (SELECT count(*) AS parked
              FROM event_bus.module_event_deliveries d
             WHERE d.ordering_key IS NOT NULL AND d.status = ANY (event_bus._stream_blocking_states())
               AND d.status = <failed>) p,
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
-- API: Admin — subscriptions' targets, Prometheus metrics
------------------------------------------------------------------------------------------------
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
    v_deliveries_failed bigint;
    v_purged     bigint;
BEGIN
    SELECT coalesce(max(c.value) FILTER (WHERE c.name = 'events_dispatched'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'attempts_succeeded'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'attempts_failed'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'deliveries_failed'), 0),
           coalesce(max(c.value) FILTER (WHERE c.name = 'events_purged'), 0)
      INTO v_dispatched, v_succeeded, v_failed, v_deliveries_failed, v_purged
      FROM event_bus._counters c;
    v_out := E'# HELP event_bus_events_dispatched_total Events fanned out to their subscriptions.\n'
          || E'# TYPE event_bus_events_dispatched_total counter\n'
          || 'event_bus_events_dispatched_total ' || v_dispatched || E'\n'
          || E'# HELP event_bus_attempts_total Delivery attempts by result.\n'
          || E'# TYPE event_bus_attempts_total counter\n'
          || 'event_bus_attempts_total{result="success"} ' || v_succeeded || E'\n'
          || 'event_bus_attempts_total{result="failed"} ' || v_failed || E'\n'
          || E'# HELP event_bus_deliveries_failed_total Deliveries that used up their retries (became failed).\n'
          || E'# TYPE event_bus_deliveries_failed_total counter\n'
          || 'event_bus_deliveries_failed_total ' || v_deliveries_failed || E'\n'
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
       AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0)
       AND NOT EXISTS (SELECT 1 FROM event_bus._event_leases l
                        WHERE l.event_id = e.id AND l.lease_end >= now() OFFSET 0);

    SELECT v_out
           || E'# HELP event_bus_deliveries Deliveries not yet finished, by status.\n'
           || E'# TYPE event_bus_deliveries gauge\n'
           || 'event_bus_deliveries{status="pending"} ' || count(*) FILTER (WHERE d.status = <pending>) || E'\n'
           || 'event_bus_deliveries{status="processing"} '
           || count(*) FILTER (WHERE d.status = <processing>) + event_bus._first_attempts_in_flight() || E'\n'
           || 'event_bus_deliveries{status="held"} ' || count(*) FILTER (WHERE d.status = <held>) || E'\n'
           || 'event_bus_deliveries{status="waiting"} ' || count(*) FILTER (WHERE d.status = <waiting>) || E'\n'
           || E'# HELP event_bus_deliveries_due Deliveries due now (queue depth).\n'
           || E'# TYPE event_bus_deliveries_due gauge\n'
           || 'event_bus_deliveries_due '
           || count(*) FILTER (WHERE d.status = ANY (event_bus._claimable_states()) AND d.next_attempt_at <= now()) || E'\n'
           || E'# HELP event_bus_oldest_due_seconds How long the longest-waiting due delivery has been due.\n'
           || E'# TYPE event_bus_oldest_due_seconds gauge\n'
           || 'event_bus_oldest_due_seconds '
           || coalesce(round(extract(epoch FROM now() - min(d.next_attempt_at)
                             FILTER (WHERE d.status = ANY (event_bus._claimable_states()) AND d.next_attempt_at <= now())), 3), 0) || E'\n'
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
     WHERE d.status = <failed>;

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

    -- one series per subscription with a filter (since the filter was last set)
    SELECT v_out
           || E'# HELP event_bus_filter_errors_total Events a subscription''s content filter came out unknown on (no delivery made), since the filter was set.\n'
           || E'# TYPE event_bus_filter_errors_total counter\n'
           || coalesce(string_agg('event_bus_filter_errors_total{subscription_id="' || s.id || '"} '
                                  || coalesce(f.errors, 0) || E'\n', '' ORDER BY s.id), '')
      INTO v_out
      FROM event_bus.module_event_subscriptions s
      LEFT JOIN (SELECT x.subscription_id, sum(x.errors) AS errors
                   FROM event_bus._filter_errors x GROUP BY x.subscription_id) f ON f.subscription_id = s.id
     WHERE s.filter IS NOT NULL;
    RETURN v_out;
END
$$;
COMMENT ON FUNCTION event_bus.metrics() IS
    'Prometheus text exposition: counters (events dispatched, attempts by result, dead deliveries, events '
    'purged) and gauges (undispatched events and the oldest''s age, deliveries by status, queue depth and '
    'oldest due age, dead letters, subscriptions by breaker state), filter errors per filtered subscription, '
    'and the cluster''s worker pool (workers, '
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
-- Privileges: a tenant's readers (row-level security filters), admins
------------------------------------------------------------------------------------------------
REVOKE ALL ON FUNCTION event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer, text, text, text),
    event_bus.event_detail(uuid), event_bus.event_stats(interval, uuid),
    event_bus.event_stats_by_type(interval, uuid), event_bus._event_counts(interval, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer, text, text, text),
    event_bus.event_detail(uuid), event_bus.event_stats(interval, uuid),
    event_bus.event_stats_by_type(interval, uuid), event_bus._event_counts(interval, uuid)
    TO event_bus_reader, event_bus_admin;
GRANT SELECT ON event_bus.dead_letters, event_bus.subscription_health TO event_bus_reader, event_bus_admin;
REVOKE ALL ON FUNCTION event_bus.queue_summary(), event_bus.delivery_timeline(interval, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.queue_summary(), event_bus.delivery_timeline(interval, integer)
    TO event_bus_reader, event_bus_admin;
REVOKE ALL ON FUNCTION event_bus.worker_pool(), event_bus._worker_pool_state(), event_bus._pool_summary() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.worker_pool(), event_bus._worker_pool_state(), event_bus._pool_summary()
    TO event_bus_reader, event_bus_admin;
-- admins only
REVOKE ALL ON FUNCTION event_bus.metrics(), event_bus.subscription_targets() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.metrics(), event_bus.subscription_targets() TO event_bus_admin;
