//! Recording outcomes: the attempt log, the delivery's next state (completed, retried after its
//! backoff, failed), the events' status and the subscriptions' health, in one short transaction;
//! and handing unfinished leases back.

use super::claim::lock_streams;
use super::probe::as_key_probe;
use crate::plans::exec;
use crate::worker::deliver::{backoff, Outcome};
use crate::worker::job::{lease_holder, Claimed, Id};
use crate::worker::{Step, StepError};
use event_bus_core::lifecycle;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

pub struct Finished {
    pub claimed: Claimed,
    pub outcome: Outcome,
}

/// Simple xorshift for jitter; seeded per process.
pub struct Rng(u64);
impl Rng {
    /// Seeded from the clock and the pid, so workers do not share a jitter sequence.
    pub fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        // splitmix64's finaliser: a xorshift's first outputs from a structured seed (a clock and a
        // small pid) are correlated with it; mixed, every bit of the seed moves every bit.
        let mut z = (nanos as u64) ^ ((unsafe { pg_sys::MyProcPid } as u64) << 32);
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub fn retry_delay(c: &Claimed, o: &Outcome, rng: &mut Rng) -> Duration {
    backoff(
        (c.attempt - c.attempt_offset).max(1),
        c.backoff_base_ms.max(1) as u64,
        c.backoff_max_ms.max(1) as u64,
        o.retry_after,
        rng.next_f64(),
    )
}

/// A batch's outcomes onto its deliveries, each found by its id and changed only while this
/// worker's lease on that attempt holds (`processing`, the same attempt number). The lease's state
/// is compared with a column of the batch (`o.leased`, kept a column by MATERIALIZED), not a
/// constant: `status = <processing>` would let the planner read the due index, whose predicate it
/// implies (see `as_key_probe`).
pub(super) const RECORD_DELIVERIES: &str = "WITH o AS MATERIALIZED (
                 SELECT o.*, <processing>::text AS leased
                   FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::bool[], $5::int[], $6::text[], $7::bigint[])
                     AS o(id, attempt, ok, fails, http_status, err, delay_ms)
             )
             UPDATE event_bus.module_event_deliveries d
                SET status = CASE WHEN o.ok THEN <completed> WHEN o.fails THEN <failed> ELSE <pending> END,
                    next_attempt_at = CASE WHEN o.ok OR o.fails THEN d.next_attempt_at
                                           ELSE now() + o.delay_ms * interval '1 millisecond' END,
                    completed_at = CASE WHEN o.ok OR o.fails THEN now() END,
                    last_http_status = o.http_status,
                    last_error = o.err
               FROM o
              WHERE d.id = o.id AND d.status = o.leased AND d.attempts = o.attempt";

/// First attempts sent without a delivery row (`Claimed::rowless`): the row is written here, once,
/// with the outcome (completed, due again after its backoff, or failed). The row may exist already:
/// an earlier record of a sibling delivery wrote it leased (`MATERIALIZE_LEASES`); then, as
/// `RECORD_DELIVERIES`, it changes only while this attempt's lease holds. Nothing is written for a
/// subscription that is gone (unsubscribed while the attempt was in flight). $11: this process's
/// lease holder id (the lease's start is the attempt's).
pub(super) const RECORD_FIRST_ATTEMPTS: &str = "INSERT INTO event_bus.module_event_deliveries AS d
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at,
                  completed_at, last_http_status, last_error, created_at)
             SELECT o.id, o.event_id, o.sub_id, o.tenant_id,
                    CASE WHEN o.ok THEN <completed> WHEN o.fails THEN <failed> ELSE <pending> END,
                    o.attempt, coalesce(l.taken_at, now()),
                    CASE WHEN o.ok OR o.fails THEN now() ELSE now() + o.delay_ms * interval '1 millisecond' END,
                    CASE WHEN o.ok OR o.fails THEN now() END,
                    o.http_status, o.err, coalesce(l.taken_at, now())
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::bool[], $7::bool[],
                           $8::int[], $9::text[], $10::bigint[])
                 AS o(id, event_id, sub_id, tenant_id, attempt, ok, fails, http_status, err, delay_ms)
               LEFT JOIN event_bus._event_leases l ON l.event_id = o.event_id AND l.holder = $11
              WHERE EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = o.sub_id)
              ORDER BY o.id
             ON CONFLICT (event_id, subscription_id) DO UPDATE
                SET status = excluded.status, next_attempt_at = excluded.next_attempt_at,
                    completed_at = excluded.completed_at, last_http_status = excluded.last_http_status,
                    last_error = excluded.last_error
              WHERE d.status = <processing> AND d.attempts = excluded.attempts";

/// The rest of the first attempts under this process's leases of events $1 (those with no row yet:
/// still in flight) written as rows, leased until the lease's end — before the events' status is
/// derived from their rows, or their leases handed back; after it the rows carry the leases.
/// Nothing for a subscription that is gone.
const MATERIALIZE_LEASES: &str = "INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at,
                  created_at)
             SELECT event_bus._delivery_id(l.event_id, u.sub_id), l.event_id, u.sub_id, e.tenant_id,
                    <processing>, 1, l.taken_at, l.lease_end, l.taken_at
               FROM unnest($1::uuid[]) AS x(event_id)
               JOIN event_bus._event_leases l ON l.event_id = x.event_id AND l.holder = $2
               CROSS JOIN LATERAL unnest(l.subscription_ids) AS u(sub_id)
               JOIN event_bus.module_events e ON e.id = l.event_id
              WHERE EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = u.sub_id)
              ORDER BY l.event_id, u.sub_id
             ON CONFLICT (event_id, subscription_id) DO NOTHING";

/// This process's leases of events $1, once their rows say what they said.
const DROP_LEASES: &str = "DELETE FROM event_bus._event_leases l
              WHERE l.event_id = ANY ($1::uuid[]) AND l.holder = $2";

/// Write the in-flight first attempts of `events`' leases as rows (`MATERIALIZE_LEASES`).
fn materialize_leases(
    client: &mut pgrx::spi::SpiClient<'_>,
    events: &[Id],
) -> Result<(), pgrx::spi::Error> {
    exec(
        client,
        "materialize_leases",
        || MATERIALIZE_LEASES.to_string(),
        &[pg_sys::UUIDARRAYOID, pg_sys::UUIDOID],
        &[events.to_vec().into(), lease_holder().into()],
    )
    .map(|_| ())
}

/// Drop this process's leases of `events` (`DROP_LEASES`).
fn drop_leases(
    client: &mut pgrx::spi::SpiClient<'_>,
    events: &[Id],
) -> Result<(), pgrx::spi::Error> {
    exec(
        client,
        "drop_leases",
        || DROP_LEASES.to_string(),
        &[pg_sys::UUIDARRAYOID, pg_sys::UUIDOID],
        &[events.to_vec().into(), lease_holder().into()],
    )
    .map(|_| ())
}

/// The events of `claimed`'s first attempts without a row, each once.
fn leased_events<'a>(claimed: impl Iterator<Item = &'a Claimed>) -> Vec<Id> {
    let mut events: Vec<Id> = claimed.filter(|c| c.rowless).map(|c| c.event_id).collect();
    events.sort();
    events.dedup();
    events
}

/// Of a batch's first attempts without a row, the events whose lease covers attempts the batch
/// does not hold (still in flight, or recorded by an earlier batch): only those may need rows
/// written for the rest (`MATERIALIZE_LEASES`). An event with one subscription never does.
fn events_with_attempts_elsewhere(batch: &[Finished]) -> Vec<Id> {
    let mut in_batch: HashMap<Id, (i32, i32)> = HashMap::new();
    for f in batch.iter().filter(|f| f.claimed.rowless) {
        let e = in_batch
            .entry(f.claimed.event_id)
            .or_insert((0, f.claimed.lease_attempts));
        e.0 += 1;
    }
    let mut events: Vec<Id> = in_batch
        .into_iter()
        .filter(|(_, (here, all))| here < all)
        .map(|(id, _)| id)
        .collect();
    events.sort();
    events
}

/// Record a batch of outcomes: one attempt-log row each, the delivery's new state (completed,
/// retried after its backoff, or failed), and the events' derived status.
pub fn record(batch: &[Finished], delays: &[Duration]) -> Step<()> {
    let items = || batch.iter().zip(delays);
    let all = Outcomes::of(items());
    // the deliveries with rows, and the first attempts without (their rows written with the outcome)
    let with_rows = Outcomes::of(items().filter(|(f, _)| !f.claimed.rowless));
    let first = Outcomes::of(items().filter(|(f, _)| f.claimed.rowless));
    let responses: Vec<Option<String>> = batch.iter().map(|f| f.outcome.response.clone()).collect();
    let durations: Vec<f64> = batch
        .iter()
        .map(|f| f.outcome.duration.as_secs_f64() * 1000.0)
        .collect();
    let failed_ids: Vec<Id> = batch
        .iter()
        .zip(&all.fails)
        .filter(|(_, fails)| **fails)
        .map(|(f, _)| f.claimed.delivery_id)
        .collect();
    let failed_count = failed_ids.len() as i32;
    let health = SubscriptionHealth::of(batch);
    let (handled, unhandled): (Vec<&Finished>, Vec<&Finished>) = batch
        .iter()
        .filter(|f| f.claimed.idempotent)
        .partition(|f| f.outcome.success);
    let handled: Vec<Id> = handled.iter().map(|f| f.claimed.delivery_id).collect();
    let unhandled: Vec<Id> = unhandled.iter().map(|f| f.claimed.delivery_id).collect();
    let ordered: Vec<Id> = batch
        .iter()
        .filter(|f| f.claimed.ordered)
        .map(|f| f.claimed.delivery_id)
        .collect();
    super::session::lock_in_drop_order()?;
    if !ordered.is_empty() {
        // before any row is touched: the fan-out must not decide on these streams meanwhile
        lock_streams()?;
        // the worker's bookkeeping commits asynchronously (a lost commit only means a resend);
        // a stream that moved on must not move back after a crash, so this commit is durable
        // before the next delivery of the stream can be sent
        Spi::run("SET LOCAL synchronous_commit = on")
            .map_err(|e| StepError::failed("setting synchronous_commit", e))?;
    }
    Spi::connect_mut(|client| {
        // The batch's subscription rows first, in id order: the record updates them at its end
        // (health, breaker), and a DELETE of a subscription takes its row before its trigger
        // deletes the unfinished deliveries. Taken after the deliveries, a concurrent unsubscribe
        // and this record waited for each other (deadlock detected, one of them rolled back).
        exec(
            client,
            "record_lock_subscriptions",
            || "SELECT 1 FROM event_bus.module_event_subscriptions s
                 WHERE s.id = ANY ($1::uuid[])
                 ORDER BY s.id
                   FOR NO KEY UPDATE"
                .to_string(),
            &[pg_sys::UUIDARRAYOID],
            &[health.ids.clone().into()],
        )?;
        if !first.ids.is_empty() {
            first.record_first_attempts(client)?;
            let elsewhere = events_with_attempts_elsewhere(batch);
            if !elsewhere.is_empty() {
                materialize_leases(client, &elsewhere)?;
            }
        }
        as_key_probe(|| exec(
            client,
            "record_deliveries",
            || RECORD_DELIVERIES.to_string(),
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT8ARRAYOID,
            ],
            &[
                with_rows.ids.into(),
                with_rows.attempts.into(),
                with_rows.oks.into(),
                with_rows.fails.into(),
                with_rows.statuses.into(),
                with_rows.errors.into(),
                with_rows.delay_ms.into(),
            ],
        ))?;
        exec(
            client,
            "record_logs",
            || "INSERT INTO event_bus.module_event_logs
                 (delivery_id, event_id, subscription_id, tenant_id, attempt, status, http_status,
                  response, error_message, duration_ms)
             SELECT o.id, o.event_id, o.sub_id, o.tenant_id, o.attempt,
                    CASE WHEN o.ok THEN 'success' ELSE <failed> END, o.http_status, o.resp::jsonb, o.err, o.dur
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::bool[], $7::int[],
                           $8::text[], $9::text[], $10::float8[])
                 AS o(id, event_id, sub_id, tenant_id, attempt, ok, http_status, resp, err, dur)"
                .to_string(),
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::FLOAT8ARRAYOID,
            ],
            &[
                all.ids.into(),
                all.events.clone().into(),
                all.subs.into(),
                all.tenants.into(),
                all.attempts.into(),
                all.oks.into(),
                all.statuses.into(),
                responses.into(),
                all.errors.into(),
                durations.into(),
            ],
        )?;
        if !failed_ids.is_empty() {
            // operational events (event_bus.delivery.failed, event_bus.stream.parked), in this
            // transaction
            exec(
                client,
                "deliveries_failed",
                || "SELECT event_bus._deliveries_failed($1::uuid[])".to_string(),
                &[pg_sys::UUIDARRAYOID],
                &[failed_ids.into()],
            )?;
        }
        if !handled.is_empty() || !unhandled.is_empty() {
            exec(
                client,
                "idempotency_settle",
                || "SELECT event_bus._idempotency_settle($1::uuid[], $2::uuid[])".to_string(),
                &[pg_sys::UUIDARRAYOID, pg_sys::UUIDARRAYOID],
                &[handled.into(), unhandled.into()],
            )?;
        }
        if !ordered.is_empty() {
            exec(
                client,
                "advance_streams",
                || "SELECT event_bus._advance_streams($1::uuid[])".to_string(),
                &[pg_sys::UUIDARRAYOID],
                &[ordered.into()],
            )?;
        }
        let mut events = all.events;
        events.sort();
        events.dedup();
        exec(
            client,
            "refresh_status",
            || "SELECT event_bus._refresh_event_status($1::uuid[])".to_string(),
            &[pg_sys::UUIDARRAYOID],
            &[events.clone().into()],
        )?;
        // the batch's event leases, after the events' rows (lock order: sql/lifecycle.sql): those of
        // first attempts without rows, and those of events fanned out with rows
        drop_leases(client, &events)?;
        exec(
            client,
            "record_subscriptions",
            || "SELECT event_bus._record_subscription_outcomes($1::uuid[], $2, $3, $4, $5, $6)".to_string(),
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT4OID,
            ],
            &[
                health.ids.into(),
                health.ok.into(),
                health.failed.into(),
                health.trailing.into(),
                health.last_error.into(),
                failed_count.into(),
            ],
        )?;
        Ok::<(), pgrx::spi::Error>(())
    })
    .map_err(|e| StepError::failed("recording outcomes", e))
}

/// Outcomes, column by column, as the record's statements take them.
#[derive(Default)]
struct Outcomes {
    ids: Vec<Id>,
    events: Vec<Id>,
    subs: Vec<Id>,
    tenants: Vec<Id>,
    attempts: Vec<i32>,
    oks: Vec<bool>,
    /// whether the attempt's failure fails the delivery (its retries are used up)
    fails: Vec<bool>,
    statuses: Vec<Option<i32>>,
    errors: Vec<Option<String>>,
    delay_ms: Vec<i64>,
}

impl Outcomes {
    fn of<'a>(items: impl Iterator<Item = (&'a Finished, &'a Duration)>) -> Outcomes {
        let mut o = Outcomes::default();
        for (f, delay) in items {
            let (c, out) = (&f.claimed, &f.outcome);
            o.ids.push(c.delivery_id);
            o.events.push(c.event_id);
            o.subs.push(c.subscription_id);
            o.tenants.push(c.tenant_id);
            o.attempts.push(c.attempt);
            o.oks.push(out.success);
            o.fails
                .push(!out.success && c.attempt - c.attempt_offset > c.max_retries);
            o.statuses.push(out.http_status.map(|s| s as i32));
            o.errors
                .push(out.error.as_ref().map(|e| e.chars().take(2000).collect()));
            o.delay_ms
                .push(delay.as_millis().min(i64::MAX as u128) as i64);
        }
        o
    }

    /// Write these first attempts' rows (`RECORD_FIRST_ATTEMPTS`).
    fn record_first_attempts(
        self,
        client: &mut pgrx::spi::SpiClient<'_>,
    ) -> Result<(), pgrx::spi::Error> {
        exec(
            client,
            "record_first_attempts",
            || RECORD_FIRST_ATTEMPTS.to_string(),
            &[
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::UUIDARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT8ARRAYOID,
                pg_sys::UUIDOID,
            ],
            &[
                self.ids.into(),
                self.events.into(),
                self.subs.into(),
                self.tenants.into(),
                self.attempts.into(),
                self.oks.into(),
                self.fails.into(),
                self.statuses.into(),
                self.errors.into(),
                self.delay_ms.into(),
                lease_holder().into(),
            ],
        )
        .map(|_| ())
    }
}

/// A batch's outcomes per subscription, in batch order: what the circuit breaker and the
/// subscription's health columns need.
#[derive(Default)]
struct SubscriptionHealth {
    ids: Vec<Id>,
    ok: Vec<i32>,
    failed: Vec<i32>,
    /// failures after the subscription's last success in the batch
    trailing: Vec<i32>,
    last_error: Vec<Option<String>>,
}

impl SubscriptionHealth {
    fn of(batch: &[Finished]) -> SubscriptionHealth {
        let mut h = SubscriptionHealth::default();
        let mut index: HashMap<Id, usize> = HashMap::new();
        for f in batch {
            let i = *index.entry(f.claimed.subscription_id).or_insert_with(|| {
                h.ids.push(f.claimed.subscription_id);
                h.ok.push(0);
                h.failed.push(0);
                h.trailing.push(0);
                h.last_error.push(None);
                h.ids.len() - 1
            });
            if f.outcome.success {
                h.ok[i] += 1;
                h.trailing[i] = 0;
            } else {
                h.failed[i] += 1;
                h.trailing[i] += 1;
                h.last_error[i] = f
                    .outcome
                    .error
                    .as_ref()
                    .map(|e| e.chars().take(2000).collect());
            }
        }
        h
    }
}

/// Hand unfinished leases back (shutdown): due again now, the interrupted attempt not counted.
pub fn release(unfinished: &[Claimed]) -> Step<()> {
    super::session::lock_in_drop_order()?;
    let ids: Vec<Id> = unfinished.iter().map(|c| c.delivery_id).collect();
    let attempts: Vec<i32> = unfinished.iter().map(|c| c.attempt).collect();
    let leased = leased_events(unfinished.iter());
    Spi::connect_mut(|client| {
        if !leased.is_empty() {
            // first attempts without rows: written as the rows of their leases first, then handed
            // back as any other (the event's attempts still in flight stay leased to this worker)
            materialize_leases(client, &leased)?;
            drop_leases(client, &leased)?;
        }
        // by key, as the record (see RECORD_DELIVERIES)
        as_key_probe(|| {
            client.update(
                &lifecycle::sql(
                    "WITH o AS MATERIALIZED (
                         SELECT o.*, <processing>::text AS leased FROM unnest($1::uuid[], $2::int[]) AS o(id, attempt)
                     )
                     UPDATE event_bus.module_event_deliveries d
                        SET status = <pending>, next_attempt_at = now(), attempts = d.attempts - 1
                       FROM o
                      WHERE d.id = o.id AND d.status = o.leased AND d.attempts = o.attempt",
                ),
                None,
                &[ids.into(), attempts.into()],
            )
        })?;
        // the idempotency keys they held are free again (not handled)
        let keyed: Vec<Id> = unfinished
            .iter()
            .filter(|c| c.idempotent)
            .map(|c| c.delivery_id)
            .collect();
        if !keyed.is_empty() {
            client.update(
                "DELETE FROM event_bus._idempotency_keys x
                  WHERE x.delivery_id = ANY ($1::uuid[]) AND x.state = 'claimed'",
                None,
                &[keyed.into()],
            )?;
        }
        Ok::<(), pgrx::spi::Error>(())
    })
    .map_err(|e| StepError::failed("releasing leases", e))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::super::probe::as_key_probe;
    use super::RECORD_DELIVERIES;
    use crate::tests::tests::{plan_text, TENANT};
    use pgrx::prelude::*;

    /// The record of outcomes finds each delivery by its primary key, whatever the statistics say
    /// and however many entries the due index holds: it never reads the due index (mid-burst,
    /// mostly dead entries: 42,295 read for 181 deliveries before). The statistics here are a
    /// table's before its first ANALYZE, as after a TRUNCATE: the statement as it was planned a
    /// hash join over a bitmap scan of the due index with them.
    #[pg_test]
    fn the_record_finds_deliveries_by_key() {
        Spi::run(&format!(
            "INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, next_attempt_at)
             SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), '{TENANT}', 'processing', 1, now()
               FROM generate_series(1, 500) n;
             PREPARE record_outcomes(uuid[], int[], bool[], bool[], int[], text[], bigint[]) AS {record};
             SET LOCAL plan_cache_mode = force_generic_plan;",
            record = event_bus_core::lifecycle::sql(RECORD_DELIVERIES)
        ))
        .unwrap();
        let plan = as_key_probe(|| {
            plan_text(
                "EXPLAIN (COSTS OFF) EXECUTE record_outcomes(
                     '{00000000-0000-0000-0000-000000000001}', '{1}', '{t}', '{f}', '{200}', '{NULL}', '{0}')",
            )
        });
        assert!(plan.contains("module_event_deliveries_pkey"), "{plan}");
        assert!(!plan.contains("due_idx"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        Spi::run("DEALLOCATE record_outcomes").unwrap();
    }
}
