//! The claim side's statements: fan new events out into deliveries, claim due ones with a lease,
//! and find when the next one is due. Each runs inside the caller's transaction.

use super::probe::{any_due, any_new, as_index_probe, with_settings};
use crate::plans::exec;
use crate::worker::job::{row_to_job, ClaimSettings, Id, Job, JobColumns, JOB_COLUMNS};
use crate::worker::{Step, StepError};
use pgrx::prelude::*;

/// The end of both fan-out statements, after `ins` (the deliveries inserted from `ev`, the events
/// taken, and `m`, the subscriptions each matched, of `c`, those their type pattern matched; an event
/// whose filters passed none is unmatched): count the events and with event_bus.notify
/// ($7) send LISTEN module_event its notifications, at this commit; and write the event row only
/// where it must be written now:
/// - an event that matched nothing is completed (dispatched, processed);
/// - an event with a delivery that is not leased (held by an open breaker, queued for a full or
///   limited subscription, waiting in its ordered stream) is marked dispatched;
/// - an event whose deliveries were all created leased (the common case) is not written here:
///   its deliveries say that it was fanned out (the intake skips events that have any), and the
///   record of their first outcome writes dispatched_at together with the status
///   (`_refresh_event_status`): one row version per event instead of two.
///
/// An event another fan-out took meanwhile (its deliveries already there: nothing inserted) is
/// left alone.
const FAN_OUT_TAIL: &str = "ON CONFLICT (event_id, subscription_id) DO NOTHING
             RETURNING *
         ), marks AS (
             SELECT ev.id,
                    NOT EXISTS (SELECT 1 FROM m WHERE m.event_id = ev.id) AS unmatched
               FROM ev
              WHERE NOT EXISTS (SELECT 1 FROM m WHERE m.event_id = ev.id)
                 OR EXISTS (SELECT 1 FROM ins WHERE ins.event_id = ev.id AND ins.status <> <processing>)
         ), upd AS (
             UPDATE event_bus.module_events e
                SET dispatched_at = now(),
                    status = CASE WHEN k.unmatched THEN <completed> ELSE e.status END,
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
fn fan_out(limit: i64, settings: &ClaimSettings, full: &[Id], pass: Pass) -> Step<FanOut> {
    let sql = || {
        format!(
        "WITH ev AS ({events}), c AS (
             SELECT ev.id AS event_id, ev.tenant_id, s.id AS sub_id, s.timeout_ms,
                    event_bus._first_state(s.breaker_open_until IS NOT NULL, s.id = ANY ($6::uuid[])) AS status,
                    {PASSES}
               FROM ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
                {SUBSCRIPTIONS_KEPT}
         ), m AS (
             SELECT * FROM c WHERE c.passes
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
              ORDER BY m.event_id, m.sub_id
             {FAN_OUT_TAIL}
         {jobs}",
        jobs = jobs_of_ins(),
        events = events_to_take(pass, false)
    )
    };
    let name = match pass {
        Pass::Head => "fan_out_head",
        Pass::Tail => "fan_out_tail",
    };
    run_fan_out(name, sql, limit, settings, full)
}

/// Which undispatched events a fan-out takes.
#[derive(Clone, Copy, PartialEq)]
enum Pass {
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
fn within_bytes(locked: &str, order: &str) -> String {
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

/// The events not fanned out yet: not marked dispatched, and without deliveries (those the last
/// fan-outs created leased, whose events are marked when their first outcome is recorded).
/// Read through the partial index of undispatched events, which holds only those and the events
/// in flight for the first time. (`OFFSET 0` keeps the test a probe of the deliveries' event index
/// per event: pulled up into an anti-join, the planner may hash every delivery in the table.)
pub(super) const INTAKE: &str = "e.dispatched_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries x WHERE x.event_id = e.id OFFSET 0)";

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
        Pass::Head if !special => format!(
            "SELECT {COLUMNS}
               FROM event_bus.module_events e
              WHERE {INTAKE}
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
        "SELECT j.*, (SELECT count(*) FROM ev)::bigint AS taken, (SELECT count(*) FROM notified) AS notified,
                (SELECT max(ev.considered) FROM ev)::bigint AS considered
           FROM (SELECT 1) one
           LEFT JOIN LATERAL (
               SELECT {JOB_COLUMNS}
                 FROM ins d
                 JOIN event_bus.module_events e ON e.id = d.event_id
                 JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                WHERE d.status = <processing>
                ORDER BY d.event_id, d.subscription_id) j ON true"
    )
}

/// What a fan-out did: the jobs it created, how many events it took, and whether the byte budget
/// stopped it before events it had locked (then more are waiting).
struct FanOut {
    jobs: Vec<Job>,
    taken: i64,
    cut: bool,
}

/// Run a fan-out statement (kept parsed as `name`, planned per call: see `claim_and_fan_out`)
/// and decode its rows.
fn run_fan_out(
    name: &'static str,
    sql: impl FnOnce() -> String,
    limit: i64,
    settings: &ClaimSettings,
    full: &[Id],
) -> Step<FanOut> {
    Spi::connect_mut(|client| {
        let table = exec(
            client,
            name,
            sql,
            &ClaimSettings::ARG_TYPES,
            &settings.args(limit, full),
        )?;
        let mut jobs = Vec::with_capacity(table.len());
        let mut taken = 0;
        let mut considered = 0;
        let cols = JobColumns::of(&table)?;
        let (taken_at, considered_at) = (
            table.column_ordinal("taken")?,
            table.column_ordinal("considered")?,
        );
        for row in table {
            taken = row.get::<i64>(taken_at)?.unwrap_or(0);
            considered = row.get::<i64>(considered_at)?.unwrap_or(0);
            if cols.has_job(&row)? {
                jobs.push(row_to_job(&row, &cols, settings)?);
            }
        }
        Ok::<_, pgrx::spi::Error>(FanOut {
            jobs,
            taken,
            cut: taken < considered,
        })
    })
    .map_err(|e| StepError::failed("the fan-out", e))
}

/// Are there active subscriptions that are ordered or limited? Then claims and fan-outs take the
/// stream lock and the SQL that honours them; otherwise the plain (faster) statements run.
fn special_mode() -> Step<bool> {
    Spi::connect_mut(|client| {
        let table = exec(
            client,
            "special_mode",
            || {
                "SELECT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s
                                 WHERE s.is_active
                                   AND (s.ordered OR s.max_in_flight IS NOT NULL OR s.max_per_second IS NOT NULL))"
                    .to_string()
            },
            &[],
            &[],
        )?;
        table.first().get_one::<bool>()
    })
    .map(|v| v.unwrap_or(false))
    .map_err(|e| StepError::failed("reading the subscriptions' modes", e))
}

/// The rows of rate-limited subscriptions, before the limited claim locks any delivery: its
/// `paced` step updates them after, and an unsubscribe takes a subscription's row before its
/// trigger deletes the deliveries (in the other order the two waited for each other).
fn lock_paced_subscriptions() -> Step<()> {
    Spi::connect_mut(|client| {
        exec(
            client,
            "lock_paced_subscriptions",
            || {
                "SELECT 1 FROM event_bus.module_event_subscriptions s
                  WHERE s.max_per_second IS NOT NULL
                  ORDER BY s.id
                    FOR NO KEY UPDATE"
                    .to_string()
            },
            &[],
            &[],
        )
        .map(|_| ())
    })
    .map_err(|e| StepError::failed("locking the rate-limited subscriptions", e))
}

pub fn lock_streams() -> Step<()> {
    Spi::run("SELECT event_bus._lock_streams()")
        .map_err(|e| StepError::failed("taking the stream lock", e))
}

/// What one claim round found.
pub struct Round {
    pub jobs: Vec<Job>,
    /// The claim or the fan-out took as many as it could: more may be waiting, go again at once
    /// (even when nothing in this round was sendable: events matching nothing, held, waiting).
    pub more: bool,
    /// Otherwise: seconds until the next delivery this worker may claim is due (None: none).
    pub due: Option<f64>,
}

/// One claim round: due retries and expired leases first, then new events. With ordered or
/// limited subscriptions, under the stream lock, with the statements that honour them. `full`:
/// subscriptions this worker holds enough of already — not claimed, their new deliveries left due.
///
/// The round's statements are parsed once per backend and kept (`plans::exec`), but planned for
/// each call with its arguments (plan_cache_mode = force_custom_plan): a generic plan cannot see
/// the small LIMIT and hashes whole tables, while parsing and analysing the statements every round
/// was most of the worker's CPU when rounds are small (perf: a steady 10,000 events/s gathered
/// into ~10-event rounds).
pub fn claim_and_fan_out(limit: i64, settings: &ClaimSettings, full: &[Id]) -> Step<Round> {
    planned_for_the_round(|| {
        super::session::lock_in_drop_order()?;
        claim_round(limit, settings, full)
    })
}

/// The fan-out and the claim read the first rows of a partial index in its order. Its statistics
/// rarely know how many rows it holds (it empties as fast as it fills), and a bitmap scan then
/// reads every entry of a backlog — dead ones included, which only an ordered index scan marks
/// for reuse — and sorts them, on every round: 5x slower at a backlog of 50,000 events, and worse
/// as it grows. So bitmap scans are off while a round is planned (and plans are custom, see
/// above), and both back as they were after it (process_pending_events runs a round inside its
/// caller's transaction).
fn planned_for_the_round<R>(f: impl FnOnce() -> R) -> R {
    with_settings(
        &[
            (c"enable_bitmapscan", c"off"),
            (c"plan_cache_mode", c"force_custom_plan"),
            // planned per call: JIT would compile them again every round (see dbworker.rs)
            (c"jit", c"off"),
        ],
        f,
    )
}

fn claim_round(limit: i64, settings: &ClaimSettings, full: &[Id]) -> Step<Round> {
    let special = special_mode()?;
    if special {
        lock_streams()?;
        lock_paced_subscriptions()?;
    }
    let (mut jobs, cut) = if special || any_due()? {
        claim(limit, settings, special, full)?
    } else {
        (Vec::new(), false)
    };
    settings.spend(&jobs);
    // the byte budget is spent: the rest waits for the next round
    let cut = cut || settings.bytes.get() <= 0;
    let mut more = jobs.len() as i64 >= limit || cut;
    let left = (limit - jobs.len() as i64).max(0);
    if left > 0 && !cut && any_new()? {
        let fan = |n: i64, pass: Pass| {
            if special {
                fan_out_special(n, settings, full, pass)
            } else {
                fan_out(n, settings, full, pass)
            }
        };
        let head = fan(left, Pass::Head)?;
        settings.spend(&head.jobs);
        jobs.extend(head.jobs);
        more = head.taken >= left || head.cut;
        if head.taken >= left && settings.bytes.get() > 0 {
            // a backlog: what was emitted last goes out now too, not after the backlog
            jobs.extend(fan((left / 10).max(10), Pass::Tail)?.jobs);
        }
    }
    // The plain statements are right only while no subscription is ordered or limited. Each
    // statement sees the subscriptions as of its own start: one created or changed between the
    // check above and a statement would have its deliveries created or claimed without its order
    // or limits. Checked again after them (a later snapshot): if that happened, roll back and go
    // again (the caller rolls the transaction back).
    if !special && special_mode()? {
        return Err(StepError::retry(
            "a subscription became ordered or limited during the claim; claiming again",
        ));
    }
    if jobs.iter().any(|j| j.claimed().idempotent) {
        jobs = idempotency_gate(jobs)?;
    }
    let due = if more { None } else { next_due(special, full)? };
    Ok(Round { jobs, more, due })
}

/// Deliveries of subscriptions with an idempotency key take their key (event_bus._idempotency_gate,
/// in this claim's transaction): one whose key was handled within the window becomes a duplicate
/// (completed without calling the handler), one whose key another delivery holds right now was
/// put back and leaves the round.
fn idempotency_gate(jobs: Vec<Job>) -> Step<Vec<Job>> {
    let ids: Vec<Id> = jobs
        .iter()
        .filter(|j| j.claimed().idempotent)
        .map(|j| j.claimed().delivery_id)
        .collect();
    let held: std::collections::HashMap<Id, Option<String>> = Spi::connect_mut(|client| {
        let table = exec(
            client,
            "idempotency_gate",
            || "SELECT delivery_id, duplicate_of::text FROM event_bus._idempotency_gate($1::uuid[])".to_string(),
            &[pg_sys::UUIDARRAYOID],
            &[ids.into()],
        )?;
        let mut out = std::collections::HashMap::new();
        for row in table {
            if let Some(id) = row.get::<Id>(1)? {
                out.insert(id, row.get::<String>(2)?);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| StepError::failed("taking idempotency keys", e))?;
    if held.is_empty() {
        return Ok(jobs);
    }
    Ok(jobs
        .into_iter()
        .filter_map(|job| match held.get(&job.claimed().delivery_id) {
            None => Some(job),
            Some(None) => None,
            Some(Some(of)) => {
                let claimed = job.claimed().clone();
                Some(Job::Duplicate(claimed, of.clone()))
            }
        })
        .collect())
}

/// The fan-out for ordered and limited subscriptions: a delivery with an earlier unfinished one
/// in its entity stream waits; deliveries of limited subscriptions are queued for the claim,
/// which applies the limits.
fn fan_out_special(limit: i64, settings: &ClaimSettings, full: &[Id], pass: Pass) -> Step<FanOut> {
    let sql = || {
        format!(
        "WITH ev AS ({events}), c AS (
             SELECT ev.id AS event_id, ev.tenant_id, s.id AS sub_id, s.timeout_ms,
                    s.breaker_open_until IS NOT NULL AS breaker_open,
                    (s.max_in_flight IS NOT NULL OR s.max_per_second IS NOT NULL
                     OR s.id = ANY ($6::uuid[])) AS limited,
                    CASE WHEN s.ordered AND ev.entity_id IS NOT NULL
                         THEN jsonb_build_array(ev.entity_type, ev.entity_id)::text END AS okey,
                    {PASSES}
               FROM ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
                {SUBSCRIPTIONS_KEPT}
         ), m AS (
             SELECT * FROM c WHERE c.passes
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
    };
    // deliveries queued for the claim (limited or full subscriptions) are not jobs yet
    let name = match pass {
        Pass::Head => "fan_out_head_special",
        Pass::Tail => "fan_out_tail_special",
    };
    run_fan_out(name, sql, limit, settings, full)
}

/// Subscriptions with limits: how many more may start now (free: NULL = no cap), and from when
/// the rate allows the next one (base). Deliveries of subscriptions with no room are "blocked".
/// A rate allows starts up to RATE_SLACK early, so one claim may take a few at high rates.
const LIMITS_CTE: &str = "lim AS (
             SELECT s.id, s.max_per_second AS rate,
                    s.max_in_flight
                      - (SELECT count(*) FROM event_bus.module_event_deliveries f
                          WHERE f.capped_subscription_id = s.id AND f.status = <processing>
                            AND f.next_attempt_at > now())::integer AS free,
                    greatest(coalesce(s.rate_next_at, now()), now()) AS base
               FROM event_bus.module_event_subscriptions s
              WHERE s.max_in_flight IS NOT NULL OR s.max_per_second IS NOT NULL
         ), blocked AS (
             SELECT lim.id FROM lim
              WHERE lim.free <= 0 OR lim.base > now() + interval '2 milliseconds'
         )";

/// The claim for when limited subscriptions exist (under the stream lock, so the limits hold over
/// all workers): no more than `free` in flight per capped subscription, starts of rate-limited
/// ones spaced 1/rate apart.
fn claim_limited_sql() -> String {
    format!(
        "WITH {LIMITS_CTE}, cand AS ({cand}), ranked AS (
             SELECT cand.id, cand.subscription_id, cand.considered,
                    row_number() OVER (PARTITION BY cand.subscription_id ORDER BY cand.next_attempt_at, cand.id) AS rn
               FROM cand
         ), c AS (
             SELECT r.id, r.subscription_id, r.considered
               FROM ranked r LEFT JOIN lim l ON l.id = r.subscription_id
              WHERE l.id IS NULL
                 OR ((l.free IS NULL OR r.rn <= l.free)
                     AND (l.rate IS NULL
                          OR l.base + (r.rn - 1) / l.rate * interval '1 second' <= now() + interval '2 milliseconds'))
         ), paced AS (
             UPDATE event_bus.module_event_subscriptions s
                SET rate_next_at = l.base + n.k / l.rate * interval '1 second'
               FROM (SELECT c.subscription_id, count(*) AS k FROM c GROUP BY c.subscription_id) n
               JOIN lim l ON l.id = n.subscription_id
              WHERE s.id = n.subscription_id AND l.rate IS NOT NULL
         )
         UPDATE event_bus.module_event_deliveries d
            SET status = <processing>,
                attempts = d.attempts + 1,
                last_attempt_at = now(),
                next_attempt_at = event_bus._lease_end(s.timeout_ms, $2, $3),
                capped_subscription_id = CASE WHEN s.max_in_flight IS NOT NULL THEN s.id END
           FROM c, event_bus.module_events e, event_bus.module_event_subscriptions s
          WHERE d.id = c.id AND e.id = d.event_id AND s.id = d.subscription_id
         RETURNING {JOB_COLUMNS}, (SELECT count(*) FROM cand) < c.considered AS cut",
        cand = within_bytes(
            "SELECT l.id, l.subscription_id, l.next_attempt_at,
                    event_bus._event_bytes(e.payload, e.metadata) AS bytes
               FROM (SELECT d.id, d.event_id, d.subscription_id, d.next_attempt_at
                       FROM event_bus.module_event_deliveries d
                      WHERE d.status IN (<claimable>)
                        AND d.next_attempt_at <= now()
                        AND NOT (d.subscription_id = ANY ($6::uuid[]))
                        AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.id = d.subscription_id)
                      ORDER BY d.next_attempt_at
                      LIMIT $1
                        FOR UPDATE SKIP LOCKED) l
               JOIN event_bus.module_events e ON e.id = l.event_id",
            "t.next_attempt_at, t.id"
        )
    )
}

/// Claim up to `limit` due deliveries (retries, expired leases, deliveries queued by the fan-out)
/// with a lease, leaving out the subscriptions in `full`, within the round's byte budget; says
/// whether the budget left due deliveries behind.
fn claim(
    limit: i64,
    settings: &ClaimSettings,
    special: bool,
    full: &[Id],
) -> Step<(Vec<Job>, bool)> {
    let sql = || {
        format!(
        "WITH c AS ({c})
         UPDATE event_bus.module_event_deliveries d
            SET status = <processing>,
                attempts = d.attempts + 1,
                last_attempt_at = now(),
                next_attempt_at = event_bus._lease_end(s.timeout_ms, $2, $3)
           FROM c, event_bus.module_events e, event_bus.module_event_subscriptions s
          WHERE d.id = c.id AND e.id = d.event_id AND s.id = d.subscription_id
         RETURNING {JOB_COLUMNS}, (SELECT count(*) FROM c) < c.considered AS cut",
        c = within_bytes(
            // the deliveries are locked first (the due index, in order, LIMIT), their events'
            // sizes looked up after
            "SELECT l.id, l.next_attempt_at, event_bus._event_bytes(e.payload, e.metadata) AS bytes
               FROM (SELECT d.id, d.event_id, d.next_attempt_at
                       FROM event_bus.module_event_deliveries d
                      WHERE d.status IN (<claimable>)
                        AND d.next_attempt_at <= now()
                        AND NOT (d.subscription_id = ANY ($6::uuid[]))
                      ORDER BY d.next_attempt_at
                      LIMIT $1
                        FOR UPDATE SKIP LOCKED) l
               JOIN event_bus.module_events e ON e.id = l.event_id",
            "t.next_attempt_at, t.id"
        )
    )
    };
    Spi::connect_mut(|client| {
        // kept parsed, planned per call, like the fan-out
        let args = settings.args(limit, full);
        let types = &ClaimSettings::ARG_TYPES;
        let table = if special {
            exec(client, "claim_limited", claim_limited_sql, types, &args)?
        } else {
            exec(client, "claim", sql, types, &args)?
        };
        // `cut`: the byte budget left due deliveries it had locked
        let mut jobs = Vec::with_capacity(table.len());
        let mut cut = false;
        if table.is_empty() {
            return Ok((jobs, cut));
        }
        let cols = JobColumns::of(&table)?;
        let cut_at = table.column_ordinal("cut")?;
        for row in table {
            cut |= row.get::<bool>(cut_at)?.unwrap_or(false);
            jobs.push(row_to_job(&row, &cols, settings)?);
        }
        Ok::<_, pgrx::spi::Error>((jobs, cut))
    })
    .map_err(|e| StepError::failed("the claim", e))
}

/// Seconds until the next delivery this worker may claim is due (negative: already; None: none).
/// Leaves out the subscriptions in `full`; with limits, not the deliveries of subscriptions
/// without room, but when a rate allows the next start.
fn next_due(special: bool, full: &[Id]) -> Step<Option<f64>> {
    // min() always returns one row (NULL when nothing is queued); the text is built only when
    // the statement is first prepared
    let due_sql = move || {
        if special {
            format!(
                "WITH {LIMITS_CTE}
             SELECT extract(epoch FROM (least(
                    (SELECT min(d.next_attempt_at) FROM event_bus.module_event_deliveries d
                      WHERE d.status IN (<claimable>)
                        AND NOT (d.subscription_id = ANY ($1::uuid[]))
                        AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.id = d.subscription_id)),
                    (SELECT min(l.base) FROM lim l
                      WHERE l.rate IS NOT NULL AND l.base > now() AND coalesce(l.free, 1) > 0))
                    - now()))::float8"
            )
        } else {
            "SELECT extract(epoch FROM (min(d.next_attempt_at) - now()))::float8
           FROM event_bus.module_event_deliveries d
          WHERE d.status IN (<claimable>)
            AND NOT (d.subscription_id = ANY ($1::uuid[]))"
                .to_string()
        }
    };
    let name = if special {
        "next_due_special"
    } else {
        "next_due"
    };
    // planned once and kept (generic), unlike the round's other statements: it reads the first
    // entry of the due index in its order whatever the argument (a minimum), and planned per call
    // it cost more than it ran (0.17 ms against 0.015 in a round of one event)
    as_index_probe(|| {
        Spi::connect_mut(|client| {
            exec(
                client,
                name,
                due_sql,
                &[pg_sys::UUIDARRAYOID],
                &[full.to_vec().into()],
            )?
            .first()
            .get_one::<f64>()
        })
    })
    .map_err(|e| StepError::failed("finding the next due delivery", e))
}
