//! A claim round: due deliveries claimed with a lease (retries, expired leases, queued ones, within
//! the subscriptions' limits), then new events fanned out (`super::fan_out`), and when the next one
//! is due. Each statement runs inside the caller's transaction.

use super::fan_out::{fan_out, fan_out_special, within_bytes, Pass};
use super::probe::{any_due, any_new, as_index_probe, with_settings};
use crate::plans::exec;
use crate::worker::job::{row_to_job, ClaimSettings, Id, Job, JobColumns, JOB_COLUMNS};
use crate::worker::{Step, StepError};
use pgrx::prelude::*;

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
