-- event_bus: the delivery lifecycle, in one place.
--
-- A delivery is one event on its way to one subscription (module_event_deliveries). Its states:
--
--   state       finished  meaning
--   ----------  --------  --------------------------------------------------------------------------
--   pending     no        due at next_attempt_at: queued by the fan-out, a retry waiting out its
--                         backoff, released by a closing breaker or an operator
--   processing  no        leased to a worker until next_attempt_at: an attempt is under way; a lease
--                         that runs out (its worker died) makes it due again
--   held        no        its subscription's circuit breaker is open: it waits for the breaker to close
--   waiting     no        an ordered subscription's delivery behind an earlier unfinished (or dead)
--                         delivery of the same entity
--   completed   yes       the handler succeeded (or the idempotency key said it already had)
--   failed      yes       dead: its retries ran out (an ordered stream parks behind it)
--   skipped     yes       an operator gave it up (skip_delivery), so its stream goes on
--
-- Who moves a delivery from which state to which, and where:
--
--   from                        to                          by                        where
--   --------------------------  --------------------------  ------------------------  ---------------------------
--   (new)                       processing (leased at once) the worker's fan-out      src/worker/statements/fan_out.rs fan_out,
--                               | pending | held | waiting                              fan_out_special; _first_state
--   pending, expired processing processing                  the worker's claim        src/worker/statements/claim.rs claim
--   processing                  completed | pending | failed the worker's record      src/worker/statements/record.rs record
--   processing                  pending                     the worker at shutdown    src/worker/statements/record.rs release
--   pending                     held                        the breaker opening       _record_subscription_outcomes
--                                                                                      -> _hold
--   held                        pending                     the breaker closing,      _release
--                                                           reset_breaker
--   waiting                     pending | held              its predecessor finishing _advance_streams
--   completed | failed | skipped pending | held | waiting   retry_event, retry_failed, _rearm (+ _order_streams);
--                                                           replay_events             replay_events
--   failed (ordered stream)     skipped                     skip_delivery             skip_delivery
--   any unfinished              (deleted)                   unsubscribe / DELETE of   _subscriptions_deleted,
--                                                           the subscription          _sweep_deleted_subscriptions
--   completed | skipped         (deleted)                   retention                 purge_completed
--
-- The rules each transition applies are written once, here:
--   _unfinished_states()      the states that still owe an attempt
--   _stream_blocking_states() the states that hold an ordered stream's later deliveries back
--   _claimable_states() / _finished_states()   what the claim takes; what owes no attempt
--   _first_state(held, queued) / _due_state(held)   a new or re-armed delivery's state: held while its
--                             subscription's breaker is open
--   _lock_streams()           the lock that serialises decisions about ordered streams and limits
--   _lease_end(timeout, default, margin)   when a lease taken now ends
--   _breaker_threshold(own) / _breaker_cooldown_ms()   the breaker's settings with their defaults
--   _breaker_opens(failures, threshold) / _breaker_open_for(failing_since)   when it opens, for how long
-- They are declared in Rust, core/src/lifecycle.rs, with the states and transitions; every SQL source
-- writes a state as a marker (<pending>, or a rule's list: <unfinished>, <claimable>, ...) that build.rs
-- expands from that declaration (sql/generated/ is what is installed); src/lifecycle_tests.rs
-- fails when this file, the table's CHECK and partial indexes, or the two views disagree with it.
-- The partial indexes of module_event_deliveries (sql/tables.sql) are keyed on these states. The
-- rules are constant SQL functions: the planner folds them into the same constant lists as the
-- indexes' predicates, so a statement that names a rule still proves the index usable. The due index
-- (pending, processing) and the held index cover parts of a rule: statements for them name the states.
-- An event's own status is derived from its deliveries (_refresh_event_status).
-- A plain first attempt (the event's deliveries all processing at the fan-out: no breaker open, no
-- limit, no order, no idempotency key) is processing without a row: its event's lease
-- (_event_leases, until lease_end) holds it, and the record writes the row once, in the state the
-- outcome moves it to (or processing, leased, for an attempt of the same event still in flight).
--
-- The lock order. Every path that touches subscriptions and deliveries together takes its locks in
-- this order, so no two of them wait for each other (deadlock detected, 40P01):
--   1. the table module_events, ACCESS SHARE (every worker transaction first: DROP EXTENSION takes
--      everything in the other order; src/worker/statements/session.rs lock_in_drop_order)
--   2. the stream lock (_lock_streams), where ordered streams or limits are decided
--   3. new events, those without deliveries (the fan-out's intake, FOR UPDATE [SKIP LOCKED]), then
--      their leases (_event_leases: inserted by the fan-out; the record drops its own after step 6)
--   4. subscription rows, in id order: FOR UPDATE by a DELETE (unsubscribe) and by reset_breaker (so
--      a fan-out that read the breaker open has committed its held deliveries before they are
--      released); FOR NO KEY UPDATE by
--      the record (health, breaker), the claim of paced subscriptions and UPDATEs of subscriptions;
--      FOR KEY SHARE by the fan-out, replay_events and request() to keep a matched subscription
--      until they commit
--   5. delivery rows (claimed FOR UPDATE SKIP LOCKED, recorded, re-armed, deleted)
--   6. events that have deliveries (their status, _refresh_event_status, in id order) — never an event
--      of step 3
--   7. bookkeeping rows (_counters, _deleted_subscriptions, _idempotency_keys, _attempt_minutes,
--      _event_hours: insert-only, written by statement triggers; _filter_errors: insert-only, folded by
--      the upkeep without subscription locks, cleared by set_subscription_filter after its subscription's
--      row)
-- The fan-out holds its new events (3) when it reaches the subscriptions (4), and a DELETE's
-- trigger goes on to update events (6) that a concurrent fan-out may hold when its snapshot missed
-- their deliveries: so the fan-out never waits at 4 (NOWAIT; the round runs again, 55P03).
--
-- What unsubscribe guarantees: at its commit no unfinished delivery of the subscription remains,
-- whether it was created before, during or after the call. A fan-out, replay or request that
-- matched the subscription before the DELETE holds its row (4) until it commits; the DELETE waits
-- for it (milliseconds) and its trigger (_subscriptions_deleted) then removes what it created. One
-- that comes after finds the row gone. Finished deliveries and the attempt log stay as history.
-- API: Private, except the two views at the end (delivery_states, delivery_transitions).

------------------------------------------------------------------------------------------------
-- The rules
------------------------------------------------------------------------------------------------
-- (plain SQL, no settings: the planner inlines them, and folds the constant ones into the plan)
CREATE OR REPLACE FUNCTION event_bus._unfinished_states() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[<unfinished>]::text[] $$;
COMMENT ON FUNCTION event_bus._unfinished_states() IS
    'Internal: the delivery states that still owe an attempt (the rest are finished: completed, failed, skipped).';

CREATE OR REPLACE FUNCTION event_bus._stream_blocking_states() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[<stream_blocking>]::text[] $$;
COMMENT ON FUNCTION event_bus._stream_blocking_states() IS
    'Internal: the states of an ordered delivery that hold back the later deliveries of its entity: '
    'unfinished, or dead (failed: the stream parks until it is retried or skipped).';

CREATE OR REPLACE FUNCTION event_bus._claimable_states() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[<claimable>]::text[] $$;
COMMENT ON FUNCTION event_bus._claimable_states() IS
    'Internal: what the claim takes once next_attempt_at has come: due (pending) or its lease run out '
    '(processing); the predicate of the due index.';

CREATE OR REPLACE FUNCTION event_bus._finished_states() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[<finished>]::text[] $$;
COMMENT ON FUNCTION event_bus._finished_states() IS
    'Internal: the delivery states that owe no attempt (only a retry or replay moves them again).';

CREATE OR REPLACE FUNCTION event_bus._first_state(p_held boolean, p_queued boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN p_held THEN <held> WHEN p_queued THEN <pending> ELSE <processing> END $$;
COMMENT ON FUNCTION event_bus._first_state(boolean, boolean) IS
    'Internal: the state the fan-out creates a delivery in: held while its subscription''s breaker is open '
    '(p_held), pending when it is queued for a later claim (p_queued: a limited subscription, or one whose '
    'share this worker holds already), else processing, leased to the fanning-out worker.';

CREATE OR REPLACE FUNCTION event_bus._due_state(p_held boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT event_bus._first_state(p_held, true) $$;
COMMENT ON FUNCTION event_bus._due_state(boolean) IS
    'Internal: the state of a delivery made due again (retry, replay, a stream moving on): held while its '
    'subscription''s breaker is open (p_held), else pending.';

CREATE OR REPLACE FUNCTION event_bus._lease_end(p_timeout_ms integer, p_default_timeout_ms integer, p_margin_ms integer)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT now() + (coalesce(p_timeout_ms, p_default_timeout_ms) + p_margin_ms) * interval '1 millisecond' $$;
COMMENT ON FUNCTION event_bus._lease_end(integer, integer, integer) IS
    'Internal: when a lease taken now ends: the subscription''s timeout (else event_bus.default_timeout_ms) plus '
    'event_bus.lease_ms. Until then the delivery is its worker''s; after it, any worker claims it again.';

CREATE OR REPLACE FUNCTION event_bus._breaker_threshold(p_subscription_threshold integer) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(p_subscription_threshold,
                      nullif(current_setting('event_bus.breaker_threshold', true), '')::integer, 50) $$;
COMMENT ON FUNCTION event_bus._breaker_threshold(integer) IS
    'Internal: the consecutive failures that open a subscription''s breaker: its own breaker_threshold, else '
    'event_bus.breaker_threshold (default 50; 0 = never).';

CREATE OR REPLACE FUNCTION event_bus._breaker_cooldown_ms() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT coalesce(nullif(current_setting('event_bus.breaker_cooldown_ms', true), '')::integer, 60000) $$;
COMMENT ON FUNCTION event_bus._breaker_cooldown_ms() IS
    'Internal: event_bus.breaker_cooldown_ms (default 60000), the longest an open breaker holds deliveries.';

CREATE OR REPLACE FUNCTION event_bus._breaker_opens(p_consecutive_failures integer, p_threshold integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT p_threshold > 0 AND p_consecutive_failures >= p_threshold $$;
COMMENT ON FUNCTION event_bus._breaker_opens(integer, integer) IS
    'Internal: whether this many consecutive failed attempts open (or re-open) a breaker with this threshold.';

CREATE OR REPLACE FUNCTION event_bus._breaker_open_for(p_failing_since timestamptz) RETURNS interval
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT least(event_bus._breaker_cooldown_ms(),
                   greatest(1000, coalesce(extract(epoch FROM now() - p_failing_since) * 1000, 0)))
             * interval '1 millisecond' $$;
COMMENT ON FUNCTION event_bus._breaker_open_for(timestamptz) IS
    'Internal: how long a breaker opens for: a second the first time (NULL); after a failed probe, as long as '
    'the endpoint has been failing (since p_failing_since), so about doubling, at most event_bus.breaker_cooldown_ms.';

CREATE OR REPLACE FUNCTION event_bus._unfinished_deliveries(p_subscription_ids uuid[]) RETURNS TABLE (id uuid)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- each unfinished state through its own partial index: the queue, not the history
    SELECT d.id FROM event_bus.module_event_deliveries d
     WHERE d.status = ANY (event_bus._claimable_states()) AND d.subscription_id = ANY (p_subscription_ids)
    UNION ALL
    SELECT d.id FROM event_bus.module_event_deliveries d
     WHERE d.status = <held> AND d.subscription_id = ANY (p_subscription_ids)
    UNION ALL
    -- waiting: through the stream index (its predicate is _stream_blocking_states())
    SELECT d.id FROM event_bus.module_event_deliveries d
     WHERE d.ordering_key IS NOT NULL AND d.status = ANY (event_bus._stream_blocking_states())
       AND d.status = <waiting> AND d.subscription_id = ANY (p_subscription_ids)
$$;
COMMENT ON FUNCTION event_bus._unfinished_deliveries(uuid[]) IS
    'Internal: the unfinished deliveries (_unfinished_states) of these subscriptions, read through the '
    'partial indexes of the unfinished states, however long the history.';

------------------------------------------------------------------------------------------------
-- The event's status, derived from its deliveries
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._refresh_event_status(p_event_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- The events are updated in id order, whoever calls (the record, an unsubscribe's trigger, a retry or
-- replay, the upkeep): two refreshes of overlapping events then never wait for each other in a cycle
-- (lock order, step 6). The order is the plan's: the ids sorted, each event probed by its key
-- through a nested loop. A hash or merge join would scan the events in their physical order (a
-- bitmap or sequential scan), which differs from one snapshot to the next as rows move: an
-- unsubscribe and the worker's record deadlocked that way (40P01).
SET enable_hashjoin = off
SET enable_mergejoin = off
-- Planned for each call, with the batch's ids and the tables as they are: a plan kept for the session
-- (plpgsql keeps one once five calls cost no less) carried the estimates of the moment it was made.
-- Made while the tables were empty and analyzed (the upkeep deriving a deleted subscription's events
-- right after a TRUNCATE, a fresh install), it read the whole of module_event_deliveries, or of
-- module_events, for every event of every later batch once they had filled again, until autovacuum's
-- next ANALYZE replaced it: the next 50,000 deliveries took 72 s instead of 4.5. Planning costs about
-- 0.6 ms a batch of 500 (1 us an event). Never compiled by JIT: a batch's estimate can pass
-- jit_above_cost, and compiling (30 ms) would cost ten times the statement.
SET plan_cache_mode = force_custom_plan
SET jit = off
AS $$
-- plpgsql, not sql: the statement is parsed once per session (and planned per call, above)
DECLARE
    v_updated integer;
BEGIN
    WITH derived AS (
        SELECT ids.id AS event_id,
               a.n,
               a.fanned_out_at,
               CASE WHEN a.n = a.n_completed THEN <completed>
                    WHEN a.n = a.n_completed + a.n_failed THEN <failed>
                    WHEN a.n_attempted > 0 OR a.n_completed + a.n_failed > 0 THEN <processing>
                    ELSE <pending> END AS status,
               greatest(a.retries, 0)::integer AS retries,
               CASE WHEN a.n_failed > 0 THEN
                   (SELECT d.last_error FROM event_bus.module_event_deliveries d
                     WHERE d.event_id = ids.id AND d.status = <failed>
                     ORDER BY d.completed_at DESC NULLS LAST LIMIT 1)
               END AS last_error
          FROM (SELECT x.id FROM unnest(p_event_ids) AS x(id) GROUP BY x.id ORDER BY x.id) AS ids
          CROSS JOIN LATERAL (
              SELECT count(*) AS n,
                     count(*) FILTER (WHERE d.status IN (<completed>, <skipped>)) AS n_completed,
                     count(*) FILTER (WHERE d.status = <failed>) AS n_failed,
                     count(*) FILTER (WHERE d.attempts > 0) AS n_attempted,
                     coalesce(sum(d.attempts), 0)
                       - count(*) FILTER (WHERE d.status IN (<completed>, <processing>)) AS retries,
                     min(d.created_at) AS fanned_out_at
                FROM event_bus.module_event_deliveries d
               WHERE d.event_id = ids.id) a
    ), upd AS (
        -- an event the fan-out left unmarked (every delivery created leased) is marked dispatched
        -- here, with its first recorded outcome: as of its deliveries' creation, the fan-out
        UPDATE event_bus.module_events e
           SET status = d.status,
               retry_count = d.retries,
               error_message = d.last_error,
               processed_at = CASE WHEN d.status IN (<completed>, <failed>)
                                   THEN coalesce(e.processed_at, now()) END,
               dispatched_at = coalesce(e.dispatched_at, d.fanned_out_at)
          FROM derived d
         WHERE e.id = d.event_id
           AND (e.dispatched_at IS NOT NULL OR d.n > 0)
           AND (e.status, e.retry_count, e.error_message, e.dispatched_at IS NULL)
               IS DISTINCT FROM (d.status, d.retries, d.last_error, false)
        RETURNING 1
    )
    SELECT count(*)::integer INTO v_updated FROM upd;
    RETURN v_updated;
END
$$;

COMMENT ON FUNCTION event_bus._refresh_event_status(uuid[]) IS
    'Internal: recompute module_events.status / retry_count / error_message / processed_at from the '
    'events'' deliveries.';

------------------------------------------------------------------------------------------------
-- Retry and replay: finished deliveries made due again
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._rearm(p_delivery_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_events  uuid[];
    v_count   integer;
    v_ordered uuid[];
BEGIN
    WITH r AS (
        UPDATE event_bus.module_event_deliveries d
           SET status = event_bus._due_state(s.breaker_open_until IS NOT NULL),
               next_attempt_at = now(),
               attempt_offset = d.attempts,
               completed_at = NULL
          FROM event_bus.module_event_subscriptions s
         WHERE d.id = ANY (p_delivery_ids)
           AND s.id = d.subscription_id
           AND d.status = ANY (event_bus._finished_states())
           -- a request was answered (or not) in its caller's session: never sent again
           AND NOT EXISTS (SELECT 1 FROM event_bus.module_events r WHERE r.id = d.event_id AND r.is_request)
        RETURNING d.event_id, d.id, d.ordering_key)
    SELECT array_agg(DISTINCT r.event_id), count(*), array_agg(r.id) FILTER (WHERE r.ordering_key IS NOT NULL)
      INTO v_events, v_count, v_ordered FROM r;
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
COMMENT ON FUNCTION event_bus._rearm(uuid[]) IS
    'Internal: make finished deliveries due now with a fresh retry budget (held if their breaker is open).';

------------------------------------------------------------------------------------------------
-- Ordered streams: one unfinished delivery at a time per entity, in emit order
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._lock_streams() RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    -- one lock per database (advisory locks are per database): fan-outs, claims and stream moves that
    -- involve ordered or limited subscriptions take it for the rest of their (short) transaction
    SELECT pg_catalog.pg_advisory_xact_lock(1700951411, 1);
$$;
COMMENT ON FUNCTION event_bus._lock_streams() IS
    'Internal: serialise, until commit, the transactions that decide which delivery of an ordered stream '
    'may run and how many deliveries a limited subscription has in flight.';

CREATE OR REPLACE FUNCTION event_bus._advance_streams(p_delivery_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM event_bus._lock_streams();
    -- the streams of these deliveries (NULL: every stream with a waiting delivery) whose earliest
    -- unfinished delivery is waiting with nothing ahead of it: make it due now
    -- (two branches, each an index probe: the stream index's predicate, or the primary key)
    WITH k AS (
        SELECT d.subscription_id, d.tenant_id, d.ordering_key
          FROM event_bus.module_event_deliveries d
         WHERE p_delivery_ids IS NULL
           AND d.ordering_key IS NOT NULL
           AND d.status = ANY (event_bus._stream_blocking_states()) AND d.status = <waiting>
        UNION
        SELECT d.subscription_id, d.tenant_id, d.ordering_key
          FROM event_bus.module_event_deliveries d
         WHERE d.id = ANY (p_delivery_ids) AND d.ordering_key IS NOT NULL
    ), nxt AS (
        SELECT (SELECT w.id FROM event_bus.module_event_deliveries w
                 WHERE w.subscription_id = k.subscription_id AND w.tenant_id = k.tenant_id
                   AND w.ordering_key = k.ordering_key AND w.status = <waiting>
                 ORDER BY w.event_id LIMIT 1) AS id
          FROM k
         WHERE NOT EXISTS (
               SELECT 1 FROM event_bus.module_event_deliveries a
                WHERE a.subscription_id = k.subscription_id AND a.tenant_id = k.tenant_id
                  AND a.ordering_key = k.ordering_key
                  AND a.status = ANY (event_bus._stream_blocking_states()) AND a.status <> <waiting>)
    ), upd AS (
        UPDATE event_bus.module_event_deliveries d
           SET status = event_bus._due_state(s.breaker_open_until IS NOT NULL),
               next_attempt_at = now()
          FROM nxt, event_bus.module_event_subscriptions s
         WHERE d.id = nxt.id AND d.status = <waiting> AND s.id = d.subscription_id
        RETURNING 1)
    SELECT count(*)::integer INTO v_count FROM upd;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus._advance_streams(uuid[]) IS
    'Internal: after deliveries of ordered streams finish (or, with NULL, for every stream), make each '
    'stream''s next waiting delivery due when nothing earlier is unfinished.';

CREATE OR REPLACE FUNCTION event_bus._order_streams(p_delivery_ids uuid[]) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    PERFORM event_bus._lock_streams();
    -- re-armed deliveries of ordered streams wait behind anything earlier that is unfinished
    WITH upd AS (
        UPDATE event_bus.module_event_deliveries d
           SET status = <waiting>
         WHERE d.id = ANY (p_delivery_ids)
           AND d.ordering_key IS NOT NULL
           AND d.status IN (<pending>, <held>)
           AND EXISTS (
               SELECT 1 FROM event_bus.module_event_deliveries a
                WHERE a.subscription_id = d.subscription_id AND a.tenant_id = d.tenant_id
                  AND a.ordering_key = d.ordering_key AND a.event_id < d.event_id
                  AND a.status = ANY (event_bus._stream_blocking_states()))
        RETURNING 1)
    SELECT count(*)::integer INTO v_count FROM upd;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus._order_streams(uuid[]) IS
    'Internal: after a retry or replay re-armed deliveries, put those of ordered streams that have an '
    'earlier unfinished delivery back to waiting, so a stream still runs one at a time in emit order.';

------------------------------------------------------------------------------------------------
-- The circuit breaker: outcomes per subscription, hold and release
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._record_subscription_outcomes(
    p_ids uuid[], p_ok integer[], p_failed integer[], p_trailing integer[], p_errors text[], p_deliveries_failed integer
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    UPDATE event_bus._counters c
       SET value = c.value + coalesce(CASE c.name
                                         WHEN 'attempts_succeeded' THEN (SELECT sum(x) FROM unnest(p_ok) x)
                                         WHEN 'attempts_failed' THEN (SELECT sum(x) FROM unnest(p_failed) x)
                                         ELSE p_deliveries_failed END, 0)
     WHERE c.name IN ('attempts_succeeded', 'attempts_failed', 'deliveries_failed');

    FOR r IN
        UPDATE event_bus.module_event_subscriptions s
           SET consecutive_failures = CASE WHEN o.ok > 0 THEN o.tail
                                           ELSE s.consecutive_failures + o.failed END,
               last_success_at = CASE WHEN o.ok > 0 THEN now() ELSE s.last_success_at END,
               last_failure_at = CASE WHEN o.failed > 0 THEN now() ELSE s.last_failure_at END,
               last_error = coalesce(o.err, s.last_error)
          FROM unnest(p_ids, p_ok, p_failed, p_trailing, p_errors) AS o(id, ok, failed, tail, err)
         WHERE s.id = o.id
        RETURNING s.id, s.consecutive_failures, s.breaker_open_until,
                  event_bus._breaker_threshold(s.breaker_threshold) AS threshold, o.ok, o.tail
    LOOP
        IF r.breaker_open_until IS NOT NULL AND r.ok > 0 AND r.tail = 0 THEN
            -- the endpoint answers again: close, and send what was held
            UPDATE event_bus.module_event_subscriptions
               SET breaker_open_until = NULL
             WHERE id = r.id;
            PERFORM event_bus._release(r.id);
            PERFORM event_bus._breaker_changed(r.id, false);
        ELSIF event_bus._breaker_opens(r.consecutive_failures, r.threshold) THEN
            -- open for a second, or, after a failed probe, re-open for as long as the endpoint has
            -- been failing so far (so about doubling), at most event_bus.breaker_cooldown_ms: a
            -- short outage costs seconds, a long one a probe per cool-down
            UPDATE event_bus.module_event_subscriptions
               SET breaker_open_until = now() + event_bus._breaker_open_for(
                       CASE WHEN breaker_open_until IS NOT NULL THEN breaker_opened_at END),
                   breaker_opened_at = CASE WHEN breaker_open_until IS NULL THEN now() ELSE breaker_opened_at END
             WHERE id = r.id;
            PERFORM event_bus._hold(r.id);
            IF r.breaker_open_until IS NULL THEN
                -- opened now (not re-opened after a failed probe)
                PERFORM event_bus._breaker_changed(r.id, true);
            END IF;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer) IS
    'Internal: the worker''s per-batch bookkeeping: counters, subscription health, circuit breaker.';

CREATE OR REPLACE FUNCTION event_bus._hold(p_subscription_id uuid) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE event_bus.module_event_deliveries d
       SET status = <held>
     WHERE d.subscription_id = p_subscription_id AND d.status = <pending>;
    -- one probe, due when the cool-down ends
    UPDATE event_bus.module_event_deliveries d
       SET status = <pending>,
           next_attempt_at = greatest(s.breaker_open_until, now())
      FROM event_bus.module_event_subscriptions s
     WHERE s.id = p_subscription_id
       AND d.id = (SELECT h.id FROM event_bus.module_event_deliveries h
                    WHERE h.subscription_id = p_subscription_id AND h.status = <held>
                    ORDER BY h.next_attempt_at, h.id
                    LIMIT 1);
END
$$;
COMMENT ON FUNCTION event_bus._hold(uuid) IS
    'Internal: an open breaker holds its subscription''s pending deliveries but one, the probe, due when '
    'the cool-down ends.';

CREATE OR REPLACE FUNCTION event_bus._release(p_subscription_id uuid) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_count integer;
BEGIN
    UPDATE event_bus.module_event_deliveries d
       SET status = <pending>, next_attempt_at = now()
     WHERE d.subscription_id = p_subscription_id AND d.status = <held>;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    IF v_count > 0 THEN
        PERFORM event_bus._wake_on_commit();
    END IF;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION event_bus._release(uuid) IS 'Internal: a closed breaker makes its held deliveries due now.';

------------------------------------------------------------------------------------------------
-- A subscription that goes takes its unfinished deliveries with it (finished ones stay as history)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus._subscriptions_deleted() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_events uuid[];
BEGIN
    WITH gone AS (
        DELETE FROM event_bus.module_event_deliveries d
         WHERE d.id IN (SELECT u.id FROM event_bus._unfinished_deliveries(ARRAY(SELECT o.id FROM old_rows o)) u)
           -- checked again on the row it deletes: one the worker finished meanwhile stays, as history
           AND d.status = ANY (event_bus._unfinished_states())
        RETURNING d.event_id)
    SELECT array_agg(DISTINCT event_id) INTO v_events FROM gone;
    IF v_events IS NOT NULL THEN
        PERFORM event_bus._refresh_event_status(v_events);
    END IF;
    -- a fan-out that read these subscriptions before this commit may still add deliveries for
    -- them: the worker sweeps those later
    -- and, with them, the events whose status was just derived: a record of another of their
    -- deliveries running at this moment derives it too, each without the other's change; the
    -- upkeep derives it again once both are over (_refresh_after_deletes)
    INSERT INTO event_bus._deleted_subscriptions (id, event_ids)
    SELECT o.id, coalesce(v_events, '{}') FROM old_rows o
    ON CONFLICT (id) DO UPDATE SET deleted_at = now(), event_ids = excluded.event_ids;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._subscriptions_deleted() IS
    'Internal: drops the unfinished deliveries of deleted subscriptions, re-derives their events'' status, '
    'and remembers the subscriptions for the worker''s sweep of deliveries a concurrent fan-out added.';
CREATE OR REPLACE TRIGGER module_event_subscriptions_deleted
    AFTER DELETE ON event_bus.module_event_subscriptions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._subscriptions_deleted();

CREATE OR REPLACE FUNCTION event_bus._sweep_deleted_subscriptions(p_min_age interval) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids    uuid[];
    v_events uuid[];
    v_count  integer;
BEGIN
    SELECT array_agg(t.id) INTO v_ids
      FROM event_bus._deleted_subscriptions t
     WHERE t.deleted_at <= now() - p_min_age
       AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = t.id);
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM event_bus.module_event_deliveries d
         WHERE d.id IN (SELECT u.id FROM event_bus._unfinished_deliveries(v_ids) u)
           AND d.status = ANY (event_bus._unfinished_states())
        RETURNING d.event_id
    )
    SELECT array_agg(DISTINCT event_id), count(*) INTO v_events, v_count FROM gone;
    IF v_events IS NOT NULL THEN
        PERFORM event_bus._refresh_event_status(v_events);
    END IF;
    DELETE FROM event_bus._deleted_subscriptions t WHERE t.id = ANY (v_ids);
    RETURN v_count;
END
$$;
CREATE OR REPLACE FUNCTION event_bus._refresh_after_deletes(p_min_age interval) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_events uuid[];
BEGIN
    SELECT array_agg(DISTINCT e) INTO v_events
      FROM event_bus._deleted_subscriptions t, unnest(t.event_ids) AS e
     WHERE t.deleted_at <= now() - p_min_age AND cardinality(t.event_ids) > 0;
    IF v_events IS NULL THEN
        RETURN 0;
    END IF;
    UPDATE event_bus._deleted_subscriptions t SET event_ids = '{}'
     WHERE t.deleted_at <= now() - p_min_age AND cardinality(t.event_ids) > 0;
    RETURN event_bus._refresh_event_status(v_events);
END
$$;
COMMENT ON FUNCTION event_bus._refresh_after_deletes(interval) IS
    'Internal: derive again the status of the events whose deliveries subscriptions deleted at least p_min_age '
    'ago removed (a concurrent record of another of their deliveries could have derived it without the '
    'DELETE, and the DELETE without the record).';

COMMENT ON FUNCTION event_bus._sweep_deleted_subscriptions(interval) IS
    'Internal: delete the unfinished deliveries of subscriptions deleted at least p_min_age ago (added by a '
    'fan-out that raced with the DELETE; nothing would ever claim them) and re-derive their events'' status.';

------------------------------------------------------------------------------------------------
-- API: Public — the lifecycle as data (for operators, the console and tests)
------------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW event_bus.delivery_states AS
SELECT s.state, NOT (s.state = ANY (event_bus._unfinished_states())) AS finished, s.meaning
  FROM (VALUES
        (1, <pending>, 'Due at next_attempt_at: queued by the fan-out, a retry waiting out its backoff, or released.'),
        (2, <processing>, 'Leased to a worker until next_attempt_at: an attempt is under way; an expired lease makes it due again.'),
        (3, <held>, 'Its subscription''s circuit breaker is open: waits for the breaker to close.'),
        (4, <waiting>, 'An ordered delivery behind an earlier unfinished or dead delivery of the same entity.'),
        (5, <completed>, 'The handler succeeded (or the idempotency key said it already had).'),
        (6, <failed>, 'Dead: its retries ran out; an ordered stream parks behind it.'),
        (7, <skipped>, 'Given up by an operator (skip_delivery), so its ordered stream goes on.')
       ) AS s(n, state, meaning)
 ORDER BY s.n;
COMMENT ON VIEW event_bus.delivery_states IS
    'The states a delivery (module_event_deliveries.status) can be in, whether each is finished, and what it means.';

CREATE OR REPLACE VIEW event_bus.delivery_transitions AS
SELECT t.from_states, t.to_states, t.moved_by, t.via
  FROM (VALUES
        (1, '{}'::text[], '{processing,pending,held,waiting}'::text[], 'the worker''s fan-out of a new event',
            'the worker (event_bus._first_state)'),
        (2, '{pending,processing}', '{processing}', 'the worker''s claim of a due delivery (or an expired lease)',
            'the worker'),
        (3, '{processing}', '{completed,pending,failed}', 'the worker''s record of an attempt''s outcome',
            'the worker (event_bus._record_subscription_outcomes, event_bus._advance_streams)'),
        (4, '{processing}', '{pending}', 'a worker shutting down hands its leases back', 'the worker'),
        (5, '{pending}', '{held}', 'the circuit breaker opening', 'event_bus._hold'),
        (6, '{held}', '{pending}', 'the circuit breaker closing, or reset_breaker', 'event_bus._release'),
        (7, '{waiting}', '{pending,held}', 'the delivery ahead of it in its stream finishing', 'event_bus._advance_streams'),
        (8, '{completed,failed,skipped}', '{pending,held,waiting}', 'retry_event, retry_failed, replay_events',
            'event_bus._rearm'),
        (9, '{failed}', '{skipped}', 'skip_delivery (an ordered stream goes on)', 'event_bus.skip_delivery'),
        (10, '{pending,processing,held,waiting}', '{}', 'unsubscribe, or a DELETE of the subscription',
            'event_bus._subscriptions_deleted'),
        (11, '{completed,skipped}', '{}',
            'retention (event_bus.retention) or purge_completed: a completed event''s deliveries go with it',
            'event_bus.purge_completed')
       ) AS t(n, from_states, to_states, moved_by, via)
 ORDER BY t.n;
COMMENT ON VIEW event_bus.delivery_transitions IS
    'Who moves a delivery from which states to which (an empty from_states: created; an empty to_states: '
    'deleted), and the function that does it.';

REVOKE ALL ON FUNCTION event_bus._refresh_event_status(uuid[]), event_bus._rearm(uuid[]), event_bus._hold(uuid),
    event_bus._release(uuid),
    event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer),
    event_bus._sweep_deleted_subscriptions(interval), event_bus._refresh_after_deletes(interval),
    event_bus._unfinished_deliveries(uuid[]),
    event_bus._lock_streams(), event_bus._advance_streams(uuid[]), event_bus._order_streams(uuid[]) FROM PUBLIC;
GRANT SELECT ON event_bus.delivery_states, event_bus.delivery_transitions TO event_bus_reader, event_bus_admin;
