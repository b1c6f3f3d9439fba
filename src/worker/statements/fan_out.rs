//! The fan-out: new events into deliveries, one per matching active subscription (type pattern and
//! content filter), leased to this worker for their first attempt. Each event taken is leased in
//! `event_bus._event_leases`; an event whose deliveries are all plain first attempts (the common
//! case) gets no delivery rows here — the record writes each row once, with its outcome — and the
//! others get their rows (leased, held, queued or waiting). The plain statement, and the one for
//! ordered and limited subscriptions (under the stream lock, always with rows). Each runs inside the
//! caller's transaction, as part of a claim round (`super::claim`).

use crate::plans::exec;
use crate::worker::job::{row_to_job, ClaimSettings, Id, Job, JobColumns, JOB_COLUMNS};
use crate::worker::{Step, StepError};
use event_bus_core::intake::IntakeFloor;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::{Instant, SystemTime};

/// The end of both fan-out statements, after `ins` (the deliveries inserted from `ev`, the events
/// taken, and `m`, the subscriptions each matched, of `c`, those their type pattern matched; an event
/// whose filters passed none is unmatched): count the events and with event_bus.notify
/// ($7) send LISTEN module_event its notifications, at this commit; and write the event row only
/// where it must be written now:
/// - an event that matched nothing is completed (dispatched, processed);
/// - an event with a delivery that is not leased (held by an open breaker, queued for a full or
///   limited subscription, waiting in its ordered stream) is marked dispatched, with the status
///   `_refresh_event_status` derives from the deliveries just created: processing when one of them
///   is leased (an attempt under way), else pending. So the record of that first attempt finds the
///   status it derives already written and leaves the row alone (one row version less per event
///   beside a held, queued or waiting delivery);
/// - an event whose first attempts go out without rows (`fl`), or whose deliveries were all created
///   leased, is not written here: its lease or its deliveries say that it was fanned out (the
///   intake skips events that have either), and the record of their first outcome writes
///   dispatched_at together with the status (`_refresh_event_status`): one row version per event
///   instead of two.
///
/// An event another fan-out took meanwhile (its deliveries already there: nothing inserted) is
/// left alone.
const FAN_OUT_TAIL: &str = "ON CONFLICT (event_id, subscription_id) DO NOTHING
             RETURNING *
         ), marks AS (
             -- IN, not a correlated EXISTS: each list is read once into a hash (an EXISTS in the
             -- select list or under OR rescans the CTE for every event: 500 events by 1,000
             -- deliveries made this statement 32 ms a round beside a failing subscription)
             SELECT ev.id,
                    ev.id NOT IN (SELECT m.event_id FROM m) AS unmatched,
                    ev.id IN (SELECT ins.event_id FROM ins WHERE ins.status = <processing>) AS attempted
               FROM ev
              WHERE ev.id NOT IN (SELECT m.event_id FROM m)
                 OR ev.id IN (SELECT ins.event_id FROM ins WHERE ins.status <> <processing>)
         ), upd AS (
             UPDATE event_bus.module_events e
                SET dispatched_at = now(),
                    status = CASE WHEN k.unmatched THEN <completed>
                                  WHEN k.attempted THEN <processing>
                                  ELSE e.status END,
                    processed_at = CASE WHEN k.unmatched THEN now() ELSE e.processed_at END
               FROM marks k
              WHERE e.id = k.id
             RETURNING 1
         ), counted AS (
             UPDATE event_bus._counters c
                SET value = c.value + (SELECT count(*) FROM ev)
              WHERE c.name = 'events_dispatched' AND EXISTS (SELECT 1 FROM ev)
         ), filter_errors AS (
             INSERT INTO event_bus._filter_errors (subscription_id, tenant_id, errors)
             SELECT c.sub_id, c.tenant_id, count(*) FROM c WHERE c.passes IS NULL GROUP BY 1, 2
         ), notified AS (
             SELECT pg_catalog.pg_notify('module_event',
                        json_build_object('id', ev.id, 'event_type', ev.event_type, 'tenant_id', ev.tenant_id)::text)
               FROM ev
              WHERE $7
         )";

/// The event leases (`event_bus._event_leases`) of the events a fan-out locked (`ev0`, matched in
/// `c0`): every fan-out takes one per event that a subscription wants before it writes anything for
/// it, and goes on only with the events whose lease it got (`ev`, `c`). An event another worker
/// leased and committed after this statement's snapshot was taken (so the intake did not see the
/// lease, and the row lock was gone) conflicts here and is left alone; an expired lease (its worker
/// died, or is stuck past its timeout) is taken over. The lease runs as long as the longest of the
/// event's first attempts may, and names the subscriptions they go to (those the filters passed),
/// so the record can write a row for each one still in flight. An event that matches nothing takes
/// no lease: this statement marks it completed, and a fan-out that locks it after this commit finds
/// it marked (its intake's condition is checked again on the row it locks).
const TAKE_LEASES: &str = "won AS (
             INSERT INTO event_bus._event_leases AS l (event_id, holder, lease_end, subscription_ids)
             SELECT x.event_id, $9, x.lease_end, x.subscription_ids
               FROM (SELECT c0.event_id,
                            max(event_bus._lease_end(c0.timeout_ms, $2, $3)) AS lease_end,
                            array_agg(c0.sub_id ORDER BY c0.sub_id) AS subscription_ids
                       FROM c0 WHERE c0.passes GROUP BY c0.event_id) x
              ORDER BY x.event_id
             ON CONFLICT (event_id) DO UPDATE
                SET holder = excluded.holder, lease_end = excluded.lease_end, taken_at = excluded.taken_at,
                    subscription_ids = excluded.subscription_ids
              WHERE l.lease_end < now()
             RETURNING l.event_id
         ), ev AS (
             SELECT ev0.* FROM ev0
              WHERE ev0.id IN (SELECT won.event_id FROM won)
                 OR ev0.id NOT IN (SELECT c0.event_id FROM c0 WHERE c0.passes)
         ), c AS (
             -- the rows of the events in ev, written as ev's own test: under OR, each IN is a
             -- hashed subplan, read once. A lone `IN (SELECT ev.id FROM ev)` became a semi-join
             -- whose strategy the planner chose from its estimate of the CTEs (one row each): a
             -- nested loop rescanning ev for every row, 12.8 of a 23 ms fan-out of 500 events
             SELECT c0.* FROM c0
              WHERE c0.event_id IN (SELECT won.event_id FROM won)
                 OR c0.event_id NOT IN (SELECT p.event_id FROM c0 p WHERE p.passes)
         )";

/// Whether an event passes its subscription's content filter (`c.passes`): true without one; NULL
/// when the filter came out unknown on it (lax mode: an error is no match), which the tail counts
/// in `_filter_errors`. Evaluated here, set-based, by PostgreSQL's jsonb_path_match.
/// The event's document is built once per event in `ev` (`doc`), only while some subscription has
/// a filter in the statement's snapshot; without one no filter applies (a filter set since then
/// applies to the events fanned out after its commit).
const PASSES: &str = "(ev.doc IS NULL OR event_bus._filter_match(s.filter, ev.doc)) AS passes";

/// The end of the fan-out's join of events to subscriptions: each matched subscription row is
/// kept (FOR KEY SHARE) until the round commits, so a DELETE of it (unsubscribe) either comes first
/// and the row drops out of the join, or waits for this commit and its trigger then removes the
/// deliveries made here — never a delivery left behind for a subscription that is gone. NOWAIT:
/// the fan-out already holds its events, and a DELETE's trigger updates events (their status)
/// after its row, so waiting here could close a cycle; the round fails instead (55P03) and the
/// worker runs it again a moment later (lock order: sql/lifecycle.sql).
const SUBSCRIPTIONS_KEPT: &str = "FOR KEY SHARE OF s NOWAIT";

/// Fan new events out: one delivery per matching active subscription, created already leased to
/// this worker (first attempt), so a new event costs no separate claim — except for the
/// subscriptions in `full` (this worker already holds their share: their deliveries are created
/// due, for a later claim) and open breakers (held). Events that match nothing are completed at
/// once, in the same statement. Returns the jobs and how many events were taken.
pub(super) fn fan_out(
    limit: i64,
    settings: &ClaimSettings,
    full: &[Id],
    pass: Pass,
) -> Step<FanOut> {
    let sql = || plain_sql(pass);
    let name = match pass {
        Pass::Head => "fan_out_head",
        Pass::Tail => "fan_out_tail",
    };
    if pass == Pass::Tail {
        return run_fan_out(name, sql, limit, settings, full, None);
    }
    // the head pass from the worker's intake floor, when it keeps one
    let floor = FLOOR.with(|f| f.borrow().as_ref().map(|f| f.floor(Instant::now())));
    let started = SystemTime::now();
    let out = run_fan_out(
        name,
        sql,
        limit,
        settings,
        full,
        floor.flatten().map(Id::from_bytes),
    )?;
    FLOOR.with(|f| {
        if let Some(f) = f.borrow_mut().as_mut() {
            f.observe(
                floor.flatten().is_none(),
                started,
                Instant::now(),
                out.first_taken.map(|id| *id.as_bytes()),
                out.snapshot,
            );
        }
    });
    Ok(out)
}

/// The plain fan-out statement (no ordered or limited subscription) of `pass`.
fn plain_sql(pass: Pass) -> String {
    format!(
        "WITH ev0 AS ({events}), c0 AS (
             SELECT ev.id AS event_id, ev.tenant_id, s.id AS sub_id, s.timeout_ms,
                    event_bus._first_state(s.breaker_open_until IS NOT NULL, s.id = ANY ($6::uuid[])) AS status,
                    s.idempotency_key IS NOT NULL AS keyed,
                    {PASSES}
               FROM ev0 AS ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
                {SUBSCRIPTIONS_KEPT}
         ), {TAKE_LEASES}, m AS (
             SELECT * FROM c WHERE c.passes
         ), fl AS (
             -- a window over the batch, not m joined to its own aggregate: the planner chose that
             -- join's strategy from estimates, and on tables analyzed while empty (m: one row) a
             -- nested loop over the aggregate, quadratic in the batch (20 ms a fan-out of 500)
             SELECT w.* FROM (
                 SELECT m.*, bool_and(m.status = <processing> AND NOT m.keyed)
                                 OVER (PARTITION BY m.event_id) AS rowless_event
                   FROM m) w
              WHERE w.rowless_event
         ), ins AS (
             INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at)
             SELECT event_bus._delivery_id(m.event_id, m.sub_id), m.event_id, m.sub_id, m.tenant_id, m.status,
                    CASE WHEN m.status = <processing> THEN 1 ELSE 0 END,
                    CASE WHEN m.status = <processing> THEN now() END,
                    CASE WHEN m.status = <processing>
                         THEN event_bus._lease_end(m.timeout_ms, $2, $3)
                         ELSE now() END
               FROM m
              WHERE m.event_id NOT IN (SELECT fl.event_id FROM fl)
              ORDER BY m.event_id, m.sub_id
             {FAN_OUT_TAIL}
         {jobs}",
        jobs = jobs_of_ins(),
        events = events_to_take(pass, false)
    )
}

thread_local! {
    /// The background worker's intake floor (`event_bus_core::intake`); None in other backends.
    static FLOOR: RefCell<Option<IntakeFloor>> = const { RefCell::new(None) };
}

/// The background worker's head passes start at an intake floor (`event_bus_core::intake`).
pub fn keep_intake_floor() {
    FLOOR.with(|f| *f.borrow_mut() = Some(IntakeFloor::default()));
}

/// Which undispatched events a fan-out takes.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Pass {
    /// The oldest, in emit order.
    Head,
    /// The newest that no ordered subscription wants, while a backlog is worked off from the
    /// head: so a burst never holds up what comes after it. (Events for ordered subscriptions
    /// wait for the head, which keeps their order.)
    Tail,
}

/// The rows of `locked` (which has a `bytes` column) in `order` up to the one that reaches $8 bytes
/// (the first one always), each with `considered`: how many `locked` had. Rows past the budget stay
/// locked until the round's commit and are left for the next round.
pub(super) fn within_bytes(locked: &str, order: &str) -> String {
    format!(
        "SELECT b.*
           FROM (SELECT t.*,
                        sum(t.bytes) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) - t.bytes AS before,
                        count(*) OVER () AS considered
                   FROM ({locked}) t) b
          WHERE b.before < $8"
    )
}

/// The `ev` CTE of a fan-out: the events it takes, locked ($1 of them at most, and no more
/// than $8 bytes of event data: event_bus.batch_memory).
fn events_to_take(pass: Pass, special: bool) -> String {
    let locked = locked_events(pass, special);
    match pass {
        Pass::Head => within_bytes(&locked, "t.id"),
        Pass::Tail => within_bytes(&locked, "t.id DESC"),
    }
}

/// The events not fanned out yet: not marked dispatched, without deliveries and without a lease
/// that runs (those the last fan-outs took, whose events are marked when their first outcome is
/// recorded; an ended lease is none: its worker died, the event goes out again).
/// Read through the partial index of undispatched events, which holds only those and the events
/// in flight for the first time. (`OFFSET 0` keeps the test a probe of the deliveries' event index
/// per event: pulled up into an anti-join, the planner may hash every delivery in the table.)
pub(super) const INTAKE: &str = "e.dispatched_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0)
                AND NOT EXISTS (SELECT 1 FROM event_bus._event_leases l
                                 WHERE l.event_id = e.id AND l.lease_end >= now() OFFSET 0)";

/// The events a fan-out considers, locked ($1 of them at most), with their `bytes`.
fn locked_events(pass: Pass, special: bool) -> String {
    // (doc: what content filters read, built once per event while any subscription has a filter)
    const COLUMNS: &str = "e.id, e.tenant_id, e.event_type, e.entity_type, e.entity_id, \
                           CASE WHEN (SELECT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions f \
                                                     WHERE f.filter IS NOT NULL)) \
                                THEN event_bus._event_document(e.tenant_id, e.event_type, e.source_module, \
                                         e.entity_type, e.entity_id, e.payload, e.metadata) END AS doc, \
                           event_bus._event_bytes(e.payload, e.metadata) AS bytes";
    const OUTER: &str =
        "e.id, e.tenant_id, e.event_type, e.entity_type, e.entity_id, e.doc, e.bytes";
    match pass {
        // from the intake floor ($10, see `IntakeFloor`) when the worker has one
        Pass::Head if !special => format!(
            "SELECT {COLUMNS}
               FROM event_bus.module_events e
              WHERE {INTAKE}
                AND ($10::uuid IS NULL OR e.id >= $10::uuid)
              ORDER BY e.id
              LIMIT $1
                FOR UPDATE SKIP LOCKED"
        ),
        // With ordered subscriptions an older event must never be skipped: a plain round that
        // began before a subscription became ordered may hold it locked (and roll back, see
        // claim_round), and the next event of its stream would go first. Fan-outs in this mode
        // are serialised by the stream lock anyway, so waiting costs no concurrency.
        Pass::Head => format!(
            "SELECT {COLUMNS}
               FROM event_bus.module_events e
              WHERE {INTAKE}
              ORDER BY e.id
              LIMIT $1
                FOR UPDATE"
        ),
        // no ordered subscription (plain mode): the newest $1
        Pass::Tail if !special => format!(
            "SELECT {COLUMNS}
               FROM event_bus.module_events e
              WHERE {INTAKE}
              ORDER BY e.id DESC
              LIMIT $1
                FOR UPDATE SKIP LOCKED"
        ),
        // among the newest few times $1 (a bound on the work: a tail that only ordered
        // subscriptions want is not scanned to its end)
        Pass::Tail => format!(
            "SELECT {OUTER}
               FROM (SELECT {COLUMNS}
                       FROM event_bus.module_events e
                      WHERE {INTAKE}
                      ORDER BY e.id DESC
                      LIMIT $1 * 4
                        FOR UPDATE SKIP LOCKED) e
              WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions o
                                 WHERE o.is_active AND o.ordered
                                   AND (o.tenant_id IS NULL OR o.tenant_id = e.tenant_id)
                                   AND event_bus.matches(o.event_type, e.event_type))
              ORDER BY e.id DESC
              LIMIT $1"
        ),
    }
}

/// The end of both fan-out statements: the jobs (deliveries created leased), in one row each,
/// how many events were `taken` and how many were `considered` before the byte budget — on a row
/// of its own, NULL jobs, when none was created, so a round that matched nothing still says it
/// took events.
fn jobs_of_ins() -> String {
    format!(
        "SELECT j.*, (SELECT count(*) FROM ev0)::bigint AS taken, (SELECT count(*) FROM notified) AS notified,
                (SELECT max(ev0.considered) FROM ev0)::bigint AS considered,
                (SELECT ev0.id FROM ev0 ORDER BY ev0.id LIMIT 1) AS first_taken,
                pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint AS snapshot_xmin,
                pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint AS snapshot_xmax
           FROM (SELECT 1) one
           LEFT JOIN LATERAL (
               SELECT {JOB_COLUMNS}, d.rowless AS rowless, d.lease_attempts AS lease_attempts
                 FROM (SELECT i.id, i.event_id, i.subscription_id, i.tenant_id, i.attempts, i.attempt_offset,
                              i.ordering_key, false AS rowless, 0 AS lease_attempts
                         FROM ins i
                        WHERE i.status = <processing>
                       UNION ALL
                       SELECT event_bus._delivery_id(f.event_id, f.sub_id), f.event_id, f.sub_id, f.tenant_id,
                              1, 0, NULL::text, true, (count(*) OVER (PARTITION BY f.event_id))::int
                         FROM fl f) d
                 JOIN event_bus.module_events e ON e.id = d.event_id
                 JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                ORDER BY d.event_id, d.subscription_id) j ON true"
    )
}

/// What a fan-out did: the jobs it created, how many events it took, and whether the byte budget
/// stopped it before events it had locked (then more are waiting).
pub(super) struct FanOut {
    pub(super) jobs: Vec<Job>,
    pub(super) taken: i64,
    pub(super) cut: bool,
    /// The smallest event id taken, and the statement's snapshot (xmin, xmax): what the intake
    /// floor needs.
    pub(super) first_taken: Option<Id>,
    pub(super) snapshot: (i64, i64),
}

/// Run a fan-out statement (kept parsed as `name`, planned per call: see `claim_and_fan_out`)
/// and decode its rows.
fn run_fan_out(
    name: &'static str,
    sql: impl FnOnce() -> String,
    limit: i64,
    settings: &ClaimSettings,
    full: &[Id],
    floor: Option<Id>,
) -> Step<FanOut> {
    let mut types = ClaimSettings::ARG_TYPES.to_vec();
    types.push(pg_sys::UUIDOID);
    let mut args = settings.args(limit, full);
    args.push(floor.into());
    Spi::connect_mut(|client| {
        let table = exec(client, name, sql, &types, &args)?;
        let mut jobs = Vec::with_capacity(table.len());
        let mut taken = 0;
        let mut considered = 0;
        let mut first_taken = None;
        let mut snapshot = (0, 0);
        let cols = JobColumns::of(&table)?;
        let (taken_at, considered_at, first_at, xmin_at, xmax_at) = (
            table.column_ordinal("taken")?,
            table.column_ordinal("considered")?,
            table.column_ordinal("first_taken")?,
            table.column_ordinal("snapshot_xmin")?,
            table.column_ordinal("snapshot_xmax")?,
        );
        for row in table {
            taken = row.get::<i64>(taken_at)?.unwrap_or(0);
            considered = row.get::<i64>(considered_at)?.unwrap_or(0);
            first_taken = row.get::<Id>(first_at)?;
            snapshot = (
                row.get::<i64>(xmin_at)?.unwrap_or(0),
                row.get::<i64>(xmax_at)?.unwrap_or(0),
            );
            if cols.has_job(&row)? {
                jobs.push(row_to_job(&row, &cols, settings)?);
            }
        }
        Ok::<_, pgrx::spi::Error>(FanOut {
            jobs,
            taken,
            cut: taken < considered,
            first_taken,
            snapshot,
        })
    })
    .map_err(|e| StepError::failed("the fan-out", e))
}

/// The fan-out for ordered and limited subscriptions: a delivery with an earlier unfinished one
/// in its entity stream waits; deliveries of limited subscriptions are queued for the claim,
/// which applies the limits.
pub(super) fn fan_out_special(
    limit: i64,
    settings: &ClaimSettings,
    full: &[Id],
    pass: Pass,
) -> Step<FanOut> {
    let sql = || special_sql(pass);
    // deliveries queued for the claim (limited or full subscriptions) are not jobs yet
    let name = match pass {
        Pass::Head => "fan_out_head_special",
        Pass::Tail => "fan_out_tail_special",
    };
    run_fan_out(name, sql, limit, settings, full, None)
}

/// The fan-out statement for ordered and limited subscriptions, of `pass`.
fn special_sql(pass: Pass) -> String {
    format!(
        "WITH ev0 AS ({events}), c0 AS (
             SELECT ev.id AS event_id, ev.tenant_id, s.id AS sub_id, s.timeout_ms,
                    s.breaker_open_until IS NOT NULL AS breaker_open,
                    (s.max_in_flight IS NOT NULL OR s.max_per_second IS NOT NULL
                     OR s.id = ANY ($6::uuid[])) AS limited,
                    CASE WHEN s.ordered AND ev.entity_id IS NOT NULL
                         THEN jsonb_build_array(ev.entity_type, ev.entity_id)::text END AS okey,
                    {PASSES}
               FROM ev0 AS ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
                {SUBSCRIPTIONS_KEPT}
         ), {TAKE_LEASES}, m AS (
             SELECT * FROM c WHERE c.passes
         ), fl AS (
             -- (no first attempt without a row here: ordered and limited deliveries are decided
             -- under the stream lock, on rows)
             SELECT m.* FROM m WHERE false
         ), r AS (
             SELECT m.*,
                    m.okey IS NOT NULL
                    AND (row_number() OVER (PARTITION BY m.sub_id, m.tenant_id, m.okey ORDER BY m.event_id) > 1
                         OR EXISTS (SELECT 1 FROM event_bus.module_event_deliveries a
                                     WHERE a.subscription_id = m.sub_id AND a.tenant_id = m.tenant_id
                                       AND a.ordering_key = m.okey
                                       AND a.status = ANY (event_bus._stream_blocking_states())))
                      AS waits
               FROM m
         ), ins AS (
             INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at,
                  ordering_key)
             SELECT event_bus._delivery_id(r.event_id, r.sub_id), r.event_id, r.sub_id, r.tenant_id,
                    CASE WHEN r.waits THEN <waiting> ELSE event_bus._first_state(r.breaker_open, r.limited) END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN 0 ELSE 1 END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN NULL ELSE now() END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN now()
                         ELSE event_bus._lease_end(r.timeout_ms, $2, $3) END,
                    r.okey
               FROM r
              ORDER BY r.event_id, r.sub_id
             {FAN_OUT_TAIL}
         {jobs}",
        jobs = jobs_of_ins(),
        events = events_to_take(pass, true)
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{plain_sql, special_sql, Pass};
    use crate::tests::tests::{plan_text, TENANT};
    use pgrx::prelude::*;

    /// A fan-out's plan tests its CTE lists against each other with hashed subplans (each list
    /// read once), never a semi-join: the planner picks a semi-join's strategy from its estimates
    /// of the CTEs, and on the bench's tables (one row each) the matched rows' test against the
    /// events taken was a nested loop rescanning them for every row, quadratic in the batch (12.8
    /// ms of a 23 ms fan-out of 500 events). Both statements, both passes, planned as a round
    /// plans them (custom plans, bitmap scans off), over 500 events waiting.
    #[pg_test]
    fn the_fan_out_reads_each_list_once() {
        Spi::run(&format!(
            "SELECT event_bus.subscribe('plan.#', 'plan-test', 'http://127.0.0.1:9/hook');
             SELECT count(event_bus.emit_module_event('{TENANT}', 'plan.made', 'm', 'doc', g::text, '{{}}'))
               FROM generate_series(1, 500) g;
             ANALYZE event_bus.module_events;
             SET LOCAL plan_cache_mode = force_custom_plan;
             SET LOCAL enable_bitmapscan = off;"
        ))
        .unwrap();
        for (name, sql) in [
            ("head", plain_sql(Pass::Head)),
            ("tail", plain_sql(Pass::Tail)),
            ("head_special", special_sql(Pass::Head)),
            ("tail_special", special_sql(Pass::Tail)),
        ] {
            Spi::run(&format!(
                "PREPARE fan_out_{name}(bigint, int, int, int, int, uuid[], boolean, bigint, uuid, uuid) AS {}",
                event_bus_core::lifecycle::sql(&sql)
            ))
            .unwrap();
            let plan = plan_text(&format!(
                "EXPLAIN (COSTS OFF) EXECUTE fan_out_{name}(500, 30000, 60000, 1000, 60000,
                     '{{}}', false, 100000000, gen_random_uuid(), NULL)"
            ));
            assert!(!plan.contains("Semi Join"), "{name}:\n{plan}");
            Spi::run(&format!("DEALLOCATE fan_out_{name}")).unwrap();
        }
    }
}
