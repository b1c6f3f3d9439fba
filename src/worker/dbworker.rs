//! The per-database delivery worker.
//!
//! Loop: record finished outcomes (one short transaction) → if there is room, fan out new events
//! and claim due deliveries with a lease (one short transaction) → hand HTTP requests to the
//! sender threads, run SQL handlers → wait on the latch (set by emits at commit), the result pipe
//! or the next due time. No HTTP ever happens inside a transaction; a killed worker loses nothing
//! because its leases expire and the deliveries are claimed again.

use super::deliver::{backoff, Dispatcher, Outcome, Request};
use super::{
    in_transaction, log, reload_config_if_requested, shutdown_requested, sqlhandler, wait,
};
use crate::{api, guc, shmem};
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One claimed delivery, in flight.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub event_id: String,
    pub subscription_id: String,
    pub tenant_id: String,
    pub attempt: i32,
    /// Attempts made before the last manual retry or replay: the budget counts from here.
    pub attempt_offset: i32,
    pub max_retries: i32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Part of an ordered subscription's entity stream: finishing it may let the next one run.
    pub ordered: bool,
}

/// Longest a finished outcome waits for others before it is recorded.
const RECORD_DELAY: Duration = Duration::from_millis(5);

struct Finished {
    claimed: Claimed,
    outcome: Outcome,
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn event_bus_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);

    match in_transaction("checking for the extension", extension_present) {
        Ok(true) => {}
        Ok(false) => {
            shmem::skip_database(dboid.to_u32());
            unsafe { pg_sys::proc_exit(0) };
        }
        // a transient failure (the database still starting up, say) is not "no extension":
        // exit without marking the database, and the launcher starts a worker again
        Err(e) => {
            log(&format!("event_bus worker: {e}; exiting to be restarted"));
            unsafe { pg_sys::proc_exit(1) };
        }
    }
    if !claim_slot(dboid.to_u32()) {
        log("event_bus worker: no free worker slot in shared memory; exiting");
        unsafe { pg_sys::proc_exit(0) };
    }
    unsafe {
        pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(0));
    }
    // At-least-once makes a lost commit of the worker's own bookkeeping harmless: a lost record
    // means a re-delivery with the same webhook-id, a lost claim or fan-out is redone. So the
    // worker does not wait for its WAL flushes (10-30% faster at these batch sizes).
    if let Err(e) = in_transaction("configuring the session", || {
        Spi::run("SET synchronous_commit = off").map_err(|e| e.to_string())
    }) {
        log(&format!("event_bus worker: {e}"));
    }
    log(&format!(
        "event_bus worker started for database {}",
        dboid.to_u32()
    ));
    let code = run(dboid);
    unsafe { pg_sys::proc_exit(code) };
}

fn extension_present() -> bool {
    unsafe { pg_sys::get_extension_oid(c"event_bus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// The installed SQL version when it is not the library's own (an upgrade not yet run).
fn outdated_sql() -> Option<String> {
    let installed = Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'event_bus'",
    )
    .ok()
    .flatten()?;
    (installed != env!("CARGO_PKG_VERSION")).then_some(installed)
}

fn claim_slot(dboid: u32) -> bool {
    let mut shared = shmem::SHARED.exclusive();
    let pid = unsafe { pg_sys::MyProcPid };
    if let Some(slot) = shared.slots.iter_mut().find(|s| !s.in_use || s.pid == pid) {
        slot.in_use = true;
        slot.dboid = dboid;
        slot.pid = pid;
        slot.latch = unsafe { pg_sys::MyLatch } as usize;
        true
    } else {
        false
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn release_slot(_code: i32, _arg: pg_sys::Datum) {
    let pid = unsafe { pg_sys::MyProcPid };
    let mut shared = shmem::SHARED.exclusive();
    for slot in shared.slots.iter_mut().filter(|s| s.in_use && s.pid == pid) {
        *slot = shmem::Slot::default();
    }
}

/// Simple xorshift for jitter; seeded per process.
struct Rng(u64);
impl Rng {
    /// Seeded from the clock and the pid, so workers do not share a jitter sequence.
    fn seeded() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Rng((nanos as u64) ^ ((unsafe { pg_sys::MyProcPid } as u64) << 32) | 1)
    }

    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The loop. Returns the exit code: 0 = unregister (extension dropped), 1 = restart.
fn run(dboid: pg_sys::Oid) -> i32 {
    let mut concurrency = guc::MAX_CONCURRENCY.get().max(1) as usize;
    let mut networks = guc::ALLOWED_NETWORKS.get();
    let mut dispatcher = match Dispatcher::start(concurrency, concurrency) {
        Ok(d) => d,
        Err(e) => {
            log(&format!("event_bus worker: cannot start HTTP threads: {e}"));
            return 1;
        }
    };
    let mut rng = Rng::seeded();
    let mut in_flight: HashMap<u64, Claimed> = HashMap::new();
    let mut finished: Vec<Finished> = Vec::new();
    let mut next_token: u64 = 1;
    let mut next_due: Option<Instant> = None;
    let mut backoff_on_error = Duration::from_millis(100);
    let mut first_finished_at = Instant::now();
    let mut next_maintenance = Instant::now();
    let mut waiting_for_update = false;

    loop {
        if shutdown_requested() {
            break;
        }
        reload_config_if_requested();
        let wanted = guc::MAX_CONCURRENCY.get().max(1) as usize;
        let networks_now = guc::ALLOWED_NETWORKS.get();
        if (wanted != concurrency || networks_now != networks) && in_flight.is_empty() {
            // resize the pool at a quiet moment; a new network policy also drops kept-alive
            // connections opened under the old one
            if let Ok(d) = Dispatcher::start(wanted, wanted) {
                dispatcher = d;
                concurrency = wanted;
                networks = networks_now;
            }
        }

        // 1. collect outcomes; record them in batches: when half a batch has finished, when
        //    nothing else is outstanding, or when the oldest has waited RECORD_DELAY
        let batch_size = guc::BATCH_SIZE.get().max(1) as usize;
        for o in dispatcher.drain() {
            if let Some(c) = in_flight.remove(&o.token) {
                if finished.is_empty() {
                    first_finished_at = Instant::now();
                }
                finished.push(Finished {
                    claimed: c,
                    outcome: o,
                });
            }
        }
        let record_now = !finished.is_empty()
            && (finished.len() >= (batch_size / 2).max(1)
                || in_flight.len() <= concurrency / 2
                || first_finished_at.elapsed() >= RECORD_DELAY);
        if record_now {
            let batch = std::mem::take(&mut finished);
            let mut delays = Vec::with_capacity(batch.len());
            for f in &batch {
                delays.push(retry_delay(&f.claimed, &f.outcome, &mut rng));
            }
            match in_transaction("recording outcomes", || record(&batch, &delays)) {
                Ok(()) => backoff_on_error = Duration::from_millis(100),
                Err(e) => {
                    log(&format!("event_bus worker: {e}; will retry"));
                    finished = batch;
                    if !wait(Some(dispatcher.wake_fd()), backoff_on_error) {
                        break;
                    }
                    backoff_on_error = (backoff_on_error * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }

        // 2. fan out and claim when the HTTP threads are about to run dry. Up to a batch may
        //    wait queued beyond max_concurrency (their lease covers the wait).
        let mut claimed_full = false;
        if in_flight.len() <= concurrency / 2 && finished.len() < batch_size {
            let limit = batch_size;
            let result = in_transaction("claiming deliveries", || {
                if !extension_present() {
                    return None;
                }
                if let Some(installed) = outdated_sql() {
                    return Some(Err(installed));
                }
                let settings = ClaimSettings::read();
                Some(Ok(claim_and_fan_out(limit as i64, &settings)))
            });
            match result {
                Ok(None) => {
                    log("event_bus worker: extension dropped; exiting");
                    shmem::skip_database(dboid.to_u32());
                    return 0;
                }
                Ok(Some(Err(installed))) => {
                    // new library, old SQL: wait for ALTER EXTENSION ... UPDATE; events keep
                    // accumulating and are delivered after it
                    if !waiting_for_update {
                        log(&format!(
                            "event_bus worker: the extension's SQL in this database is version {installed} but the \
                             library is {}; run ALTER EXTENSION event_bus UPDATE. Deliveries wait until then.",
                            env!("CARGO_PKG_VERSION")
                        ));
                        waiting_for_update = true;
                    }
                    let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
                    if !wait(Some(dispatcher.wake_fd()), poll) {
                        break;
                    }
                    continue;
                }
                Ok(Some(Ok((jobs, due)))) => {
                    waiting_for_update = false;
                    backoff_on_error = Duration::from_millis(100);
                    claimed_full = jobs.len() >= limit;
                    next_due =
                        due.map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
                    let mut sql_jobs = Vec::new();
                    for job in jobs {
                        match job {
                            Job::Http(claimed, mut req) => {
                                let token = next_token;
                                next_token += 1;
                                req.token = token;
                                in_flight.insert(token, claimed);
                                dispatcher.submit(req);
                            }
                            Job::Failed(claimed, error) => finished.push(Finished {
                                claimed,
                                outcome: Outcome::failure(0, error, Duration::ZERO),
                            }),
                            Job::Sql(claimed, call) => sql_jobs.push((claimed, call)),
                        }
                    }
                    if !sql_jobs.is_empty() {
                        match in_transaction("running SQL handlers", || {
                            sqlhandler::run_batch(&sql_jobs)
                        }) {
                            Ok(outcomes) => {
                                for ((claimed, _), outcome) in sql_jobs.into_iter().zip(outcomes) {
                                    finished.push(Finished { claimed, outcome });
                                }
                            }
                            Err(e) => {
                                for (claimed, _) in sql_jobs {
                                    finished.push(Finished {
                                        claimed,
                                        outcome: Outcome::failure(0, e.clone(), Duration::ZERO),
                                    });
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    log(&format!("event_bus worker: {e}; will retry"));
                    if !wait(Some(dispatcher.wake_fd()), backoff_on_error) {
                        break;
                    }
                    backoff_on_error = (backoff_on_error * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
        }

        // 3. about once a second: breaker probes and releases, retention
        if Instant::now() >= next_maintenance && !waiting_for_update {
            next_maintenance = Instant::now() + maintenance();
        }

        // 4. wait: not at all if more is due at once, else for a commit, a result, the record
        //    delay or the next due time
        if claimed_full && in_flight.len() <= concurrency / 2 {
            continue;
        }
        let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
        let mut timeout = poll;
        if !finished.is_empty() {
            timeout = timeout.min(RECORD_DELAY.saturating_sub(first_finished_at.elapsed()));
        }
        if let Some(due) = next_due {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        if !wait(Some(dispatcher.wake_fd()), timeout) {
            break;
        }
    }

    shutdown(&dispatcher, &mut in_flight, finished);
    1
}

/// Upkeep between batches: breaker probes and releases, and retention in batches of
/// MAINTENANCE_BATCH (each its own transaction, at most 10 per round). Returns the time until
/// the next round: a second, or a minute after an error (a bad event_bus.retention, say).
fn maintenance() -> Duration {
    const MAINTENANCE_BATCH: i64 = 1000;
    for _ in 0..10 {
        let purged = in_transaction("maintenance", || {
            Spi::get_one_with_args::<i64>(
                "SELECT event_bus._maintenance($1::int)",
                &[MAINTENANCE_BATCH.into()],
            )
        });
        match purged {
            Ok(Ok(Some(n))) if n >= MAINTENANCE_BATCH => continue,
            Ok(Ok(_)) => return Duration::from_secs(1),
            Ok(Err(e)) => {
                log(&format!(
                    "event_bus worker: maintenance: {e}; next try in a minute"
                ));
                return Duration::from_secs(60);
            }
            Err(e) => {
                log(&format!("event_bus worker: {e}; next try in a minute"));
                return Duration::from_secs(60);
            }
        }
    }
    Duration::ZERO
}

/// On SIGTERM: give requests in flight a moment, record what finished, release the rest so the
/// next worker retries them at once instead of waiting for their leases.
fn shutdown(
    dispatcher: &Dispatcher,
    in_flight: &mut HashMap<u64, Claimed>,
    mut finished: Vec<Finished>,
) {
    let deadline = Instant::now() + Duration::from_millis(1000);
    while !in_flight.is_empty() && Instant::now() < deadline {
        if let Some(o) = dispatcher.recv_timeout(Duration::from_millis(50)) {
            if let Some(c) = in_flight.remove(&o.token) {
                finished.push(Finished {
                    claimed: c,
                    outcome: o,
                });
            }
        }
    }
    let mut rng = Rng::seeded();
    let delays: Vec<Duration> = finished
        .iter()
        .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
        .collect();
    let unfinished: Vec<Claimed> = in_flight.values().cloned().collect();
    let r = in_transaction("recording outcomes at shutdown", || {
        if !finished.is_empty() {
            record(&finished, &delays);
        }
        if !unfinished.is_empty() {
            release(&unfinished);
        }
    });
    if let Err(e) = r {
        log(&format!(
            "event_bus worker: {e}; leases will expire instead"
        ));
    }
}

fn retry_delay(c: &Claimed, o: &Outcome, rng: &mut Rng) -> Duration {
    backoff(
        (c.attempt - c.attempt_offset).max(1),
        c.backoff_base_ms.max(1) as u64,
        c.backoff_max_ms.max(1) as u64,
        o.retry_after,
        rng.next_f64(),
    )
}

thread_local! {
    /// Plans of the worker's record statements, prepared once per process and kept
    /// (SPI_keepplan): they run every batch and their plans do not depend on the batch size.
    static PLANS: std::cell::RefCell<HashMap<&'static str, pgrx::spi::OwnedPreparedStatement>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Execute the statement `name` (prepared from `sql()` with parameter `types` on first use).
fn exec<'conn>(
    client: &mut pgrx::spi::SpiClient<'conn>,
    name: &'static str,
    sql: impl FnOnce() -> String,
    types: &[pg_sys::Oid],
    args: &[pgrx::datum::DatumWithOid],
) -> Result<pgrx::spi::SpiTupleTable<'conn>, pgrx::spi::Error> {
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        let stmt = match plans.entry(name) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let oids: Vec<pgrx::PgOid> = types.iter().map(|t| pgrx::PgOid::from(*t)).collect();
                e.insert(client.prepare_mut(sql().as_str(), &oids)?.keep())
            }
        };
        client.update(&*stmt, None, args)
    })
}

/// The columns every job row has, over aliases d (delivery), e (event), s (subscription).
/// $2 = default timeout, $3 = lease, $4/$5 = default backoff base/cap.
const JOB_COLUMNS: &str =
    "d.id::text, d.event_id::text, d.subscription_id::text, d.tenant_id::text, d.attempts,
       coalesce(s.max_retries, e.max_retries),
       coalesce(s.backoff_base_ms, $4)::bigint, coalesce(s.backoff_max_ms, $5)::bigint,
       s.handler_kind, s.handler_url, s.handler_function, s.headers::text, s.secret,
       coalesce(s.timeout_ms, $2), s.run_as::text,
       json_build_object(
           'specversion', '1.0',
           'id', e.id,
           'source', '/event_bus/' || e.source_module,
           'type', e.event_type,
           'time', e.created_at,
           'subject', CASE WHEN e.entity_id IS NOT NULL
                           THEN coalesce(e.entity_type || '/', '') || e.entity_id END,
           'datacontenttype', 'application/json',
           'tenantid', e.tenant_id,
           'sourcemodule', e.source_module,
           'entitytype', e.entity_type,
           'entityid', e.entity_id,
           'deliveryid', d.id,
           'metadata', e.metadata,
           'data', e.payload)::text,
       d.attempt_offset, d.ordering_key IS NOT NULL";

/// The end of both fan-out statements, after `ins` (the deliveries inserted from `ev`, the events
/// taken): mark the events dispatched (completed at once when nothing matched) and count them.
const FAN_OUT_TAIL: &str = "ON CONFLICT (event_id, subscription_id) DO NOTHING
             RETURNING *
         ), matched AS (
             SELECT DISTINCT event_id FROM ins
         ), upd AS (
             UPDATE event_bus.module_events e
                SET dispatched_at = now(),
                    status = CASE WHEN m.event_id IS NULL THEN 'completed' ELSE e.status END,
                    processed_at = CASE WHEN m.event_id IS NULL THEN now() ELSE e.processed_at END
               FROM ev LEFT JOIN matched m ON m.event_id = ev.id
              WHERE e.id = ev.id
             RETURNING 1
         ), counted AS (
             UPDATE event_bus._counters c
                SET value = c.value + (SELECT count(*) FROM ev)
              WHERE c.name = 'events_dispatched' AND EXISTS (SELECT 1 FROM ev)
         )";

/// Fan new events out: one delivery per matching active subscription, created already leased to
/// this worker (first attempt), so a new event costs no separate claim. Events that match nothing
/// are completed at once. Returns the jobs.
fn fan_out(limit: i64, settings: &ClaimSettings) -> Vec<Job> {
    let sql = || {
        format!(
        "WITH ev AS (
             SELECT e.id, e.tenant_id, e.event_type
               FROM event_bus.module_events e
              WHERE e.dispatched_at IS NULL
              ORDER BY e.id
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         ), ins AS (
             INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at)
             SELECT event_bus._delivery_id(ev.id, s.id), ev.id, s.id, ev.tenant_id,
                    CASE WHEN s.breaker_open_until IS NULL THEN 'processing' ELSE 'held' END,
                    CASE WHEN s.breaker_open_until IS NULL THEN 1 ELSE 0 END,
                    CASE WHEN s.breaker_open_until IS NULL THEN now() END,
                    CASE WHEN s.breaker_open_until IS NULL
                         THEN now() + (coalesce(s.timeout_ms, $2) + $3) * interval '1 millisecond'
                         ELSE now() END
               FROM ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
              ORDER BY ev.id, s.id
             {FAN_OUT_TAIL}
         SELECT {JOB_COLUMNS}
           FROM ins d
           JOIN event_bus.module_events e ON e.id = d.event_id
           JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
          WHERE d.status = 'processing'
          ORDER BY d.event_id, d.subscription_id"
    )
    };
    Spi::connect_mut(|client| {
        // planned per call: a generic plan cannot see the small LIMIT and hashes whole tables
        let table = client.update(sql().as_str(), None, &settings.args(limit))?;
        jobs_from(table, settings)
    })
    .unwrap_or_else(|e| panic!("fan-out failed: {e}"))
}

/// Are there active subscriptions that are ordered or limited? Then claims and fan-outs take the
/// stream lock and the SQL that honours them; otherwise the plain (faster) statements run.
fn special_mode() -> bool {
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
    .unwrap_or_else(|e| panic!("reading subscription modes failed: {e}"))
    .unwrap_or(false)
}

fn lock_streams() {
    Spi::run("SELECT event_bus._lock_streams()")
        .unwrap_or_else(|e| panic!("taking the stream lock failed: {e}"));
}

/// One claim round: due retries and expired leases first, then new events. With ordered or
/// limited subscriptions, under the stream lock, with the statements that honour them.
fn claim_and_fan_out(limit: i64, settings: &ClaimSettings) -> (Vec<Job>, Option<f64>) {
    let special = special_mode();
    if special {
        lock_streams();
    }
    let (mut jobs, mut due) = claim(limit, settings, special);
    let left = (limit - jobs.len() as i64).max(0);
    if left > 0 {
        if special {
            let (fanned, queued) = fan_out_special(left, settings);
            jobs.extend(fanned);
            if queued {
                // deliveries of limited subscriptions wait for the next claim, which is due now
                due = Some(0.0);
            }
        } else {
            jobs.extend(fan_out(left, settings));
        }
    }
    (jobs, due)
}

/// The fan-out for ordered and limited subscriptions: a delivery with an earlier unfinished one
/// in its entity stream waits; deliveries of limited subscriptions are queued for the claim,
/// which applies the limits.
fn fan_out_special(limit: i64, settings: &ClaimSettings) -> (Vec<Job>, bool) {
    let sql = || {
        format!(
        "WITH ev AS (
             SELECT e.id, e.tenant_id, e.event_type, e.entity_type, e.entity_id
               FROM event_bus.module_events e
              WHERE e.dispatched_at IS NULL
              ORDER BY e.id
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         ), m AS (
             SELECT ev.id AS event_id, ev.tenant_id, s.id AS sub_id, s.timeout_ms,
                    s.breaker_open_until IS NOT NULL AS breaker_open,
                    (s.max_in_flight IS NOT NULL OR s.max_per_second IS NOT NULL) AS limited,
                    CASE WHEN s.ordered AND ev.entity_id IS NOT NULL
                         THEN jsonb_build_array(ev.entity_type, ev.entity_id)::text END AS okey
               FROM ev
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active
                AND (s.tenant_id IS NULL OR s.tenant_id = ev.tenant_id)
                AND event_bus.matches(s.event_type, ev.event_type)
         ), r AS (
             SELECT m.*,
                    m.okey IS NOT NULL
                    AND (row_number() OVER (PARTITION BY m.sub_id, m.tenant_id, m.okey ORDER BY m.event_id) > 1
                         OR EXISTS (SELECT 1 FROM event_bus.module_event_deliveries a
                                     WHERE a.subscription_id = m.sub_id AND a.tenant_id = m.tenant_id
                                       AND a.ordering_key = m.okey
                                       AND a.status IN ('waiting', 'pending', 'processing', 'held', 'failed')))
                      AS waits
               FROM m
         ), ins AS (
             INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, last_attempt_at, next_attempt_at,
                  ordering_key)
             SELECT event_bus._delivery_id(r.event_id, r.sub_id), r.event_id, r.sub_id, r.tenant_id,
                    CASE WHEN r.waits THEN 'waiting' WHEN r.breaker_open THEN 'held'
                         WHEN r.limited THEN 'pending' ELSE 'processing' END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN 0 ELSE 1 END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN NULL ELSE now() END,
                    CASE WHEN r.waits OR r.breaker_open OR r.limited THEN now()
                         ELSE now() + (coalesce(r.timeout_ms, $2) + $3) * interval '1 millisecond' END,
                    r.okey
               FROM r
              ORDER BY r.event_id, r.sub_id
             {FAN_OUT_TAIL}
         SELECT {JOB_COLUMNS}, d.status = 'pending'
           FROM ins d
           JOIN event_bus.module_events e ON e.id = d.event_id
           JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
          WHERE d.status IN ('processing', 'pending')
          ORDER BY d.event_id, d.subscription_id"
    )
    };
    Spi::connect_mut(|client| {
        let table = client.update(sql().as_str(), None, &settings.args(limit))?;
        // rows queued for the claim (column 19) are not jobs yet
        let mut queued = false;
        let mut rows = Vec::new();
        for row in table {
            if row.get::<bool>(19)?.unwrap_or(false) {
                queued = true;
            } else {
                rows.push(row_to_job(&row, settings)?);
            }
        }
        Ok::<_, pgrx::spi::Error>((rows, queued))
    })
    .unwrap_or_else(|e| panic!("fan-out failed: {e}"))
}

/// Subscriptions with limits: how many more may start now (free: NULL = no cap), and from when
/// the rate allows the next one (base). Deliveries of subscriptions with no room are "blocked".
/// A rate allows starts up to RATE_SLACK early, so one claim may take a few at high rates.
const LIMITS_CTE: &str = "lim AS (
             SELECT s.id, s.max_per_second AS rate,
                    s.max_in_flight
                      - (SELECT count(*) FROM event_bus.module_event_deliveries f
                          WHERE f.capped_subscription_id = s.id AND f.status = 'processing'
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
        "WITH {LIMITS_CTE}, cand AS (
             SELECT d.id, d.subscription_id, d.next_attempt_at
               FROM event_bus.module_event_deliveries d
              WHERE d.status IN ('pending', 'processing')
                AND d.next_attempt_at <= now()
                AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.id = d.subscription_id)
              ORDER BY d.next_attempt_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         ), ranked AS (
             SELECT cand.id, cand.subscription_id,
                    row_number() OVER (PARTITION BY cand.subscription_id ORDER BY cand.next_attempt_at, cand.id) AS rn
               FROM cand
         ), c AS (
             SELECT r.id, r.subscription_id
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
            SET status = 'processing',
                attempts = d.attempts + 1,
                last_attempt_at = now(),
                next_attempt_at = now() + (coalesce(s.timeout_ms, $2) + $3) * interval '1 millisecond',
                capped_subscription_id = CASE WHEN s.max_in_flight IS NOT NULL THEN s.id END
           FROM c, event_bus.module_events e, event_bus.module_event_subscriptions s
          WHERE d.id = c.id AND e.id = d.event_id AND s.id = d.subscription_id
         RETURNING {JOB_COLUMNS}"
    )
}

/// Parse event_bus.allowed_networks and hand it to the HTTP threads.
fn allowed_networks() -> Result<crate::netpolicy::Networks, String> {
    let setting = guc::ALLOWED_NETWORKS
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    let parsed = crate::netpolicy::Networks::parse(&setting).map_err(|e| {
        format!("event_bus.allowed_networks is invalid ({e}); no request is sent until it is fixed")
    });
    if let Ok(n) = &parsed {
        super::deliver::set_allowed_networks(n);
    }
    parsed
}

/// Settings read once per claim.
pub struct ClaimSettings {
    default_timeout: i32,
    lease_ms: i32,
    base: i32,
    cap: i32,
    max_response: usize,
    follow: bool,
    edge_base: Option<String>,
    /// event_bus.allowed_networks, or why it is invalid (then every HTTP attempt fails)
    networks: Result<crate::netpolicy::Networks, String>,
}

impl ClaimSettings {
    fn read() -> ClaimSettings {
        ClaimSettings {
            default_timeout: guc::DEFAULT_TIMEOUT_MS.get(),
            lease_ms: guc::LEASE_MS.get(),
            base: guc::BACKOFF_BASE_MS.get(),
            cap: guc::BACKOFF_MAX_MS.get(),
            max_response: guc::MAX_RESPONSE_BYTES.get().max(0) as usize,
            follow: guc::FOLLOW_REDIRECTS.get(),
            edge_base: guc::EDGE_FUNCTION_BASE_URL
                .get()
                .and_then(|c| c.into_string().ok())
                .filter(|s| !s.is_empty()),
            networks: allowed_networks(),
        }
    }

    fn args(&self, limit: i64) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        vec![
            limit.into(),
            self.default_timeout.into(),
            self.lease_ms.into(),
            self.base.into(),
            self.cap.into(),
        ]
    }
}

pub enum Job {
    Http(Claimed, Request),
    Sql(Claimed, sqlhandler::Call),
    /// Could not even be attempted (bad URL, no base URL): recorded as a failed attempt.
    Failed(Claimed, String),
}

/// Claim up to `limit` due deliveries (retries, expired leases) with a lease; returns the jobs
/// and, when fewer than `limit` were due, the seconds until the next one is.
fn claim(limit: i64, settings: &ClaimSettings, special: bool) -> (Vec<Job>, Option<f64>) {
    let sql = || {
        format!(
        "WITH c AS (
             SELECT d.id
               FROM event_bus.module_event_deliveries d
              WHERE d.status IN ('pending', 'processing')
                AND d.next_attempt_at <= now()
              ORDER BY d.next_attempt_at
              LIMIT $1
                FOR UPDATE SKIP LOCKED
         )
         UPDATE event_bus.module_event_deliveries d
            SET status = 'processing',
                attempts = d.attempts + 1,
                last_attempt_at = now(),
                next_attempt_at = now() + (coalesce(s.timeout_ms, $2) + $3) * interval '1 millisecond'
           FROM c, event_bus.module_events e, event_bus.module_event_subscriptions s
          WHERE d.id = c.id AND e.id = d.event_id AND s.id = d.subscription_id
         RETURNING {JOB_COLUMNS}"
    )
    };
    Spi::connect_mut(|client| {
        // planned per call, like the fan-out
        let statement = if special { claim_limited_sql() } else { sql() };
        let table = client.update(statement.as_str(), None, &settings.args(limit))?;
        let jobs = jobs_from(table, settings)?;
        let mut next = None;
        if (jobs.len() as i64) < limit {
            // min() always returns one row (NULL when nothing is queued). With limits: not the
            // deliveries of subscriptions without room, but when a rate allows the next start.
            let due_sql = if special {
                format!(
                    "WITH {LIMITS_CTE}
                     SELECT extract(epoch FROM (least(
                            (SELECT min(d.next_attempt_at) FROM event_bus.module_event_deliveries d
                              WHERE d.status IN ('pending', 'processing')
                                AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.id = d.subscription_id)),
                            (SELECT min(l.base) FROM lim l
                              WHERE l.rate IS NOT NULL AND l.base > now() AND coalesce(l.free, 1) > 0))
                            - now()))::float8"
                )
            } else {
                "SELECT extract(epoch FROM (min(d.next_attempt_at) - now()))::float8
                   FROM event_bus.module_event_deliveries d
                  WHERE d.status IN ('pending', 'processing')"
                    .to_string()
            };
            next = client
                .select(due_sql.as_str(), None, &[])?
                .first()
                .get_one::<f64>()?;
        }
        Ok::<_, pgrx::spi::Error>((jobs, next))
    })
    .unwrap_or_else(|e| panic!("claim failed: {e}"))
}

/// Turn job rows (JOB_COLUMNS) into HTTP requests, SQL calls, or failures that need no attempt.
fn jobs_from(
    table: pgrx::spi::SpiTupleTable,
    st: &ClaimSettings,
) -> Result<Vec<Job>, pgrx::spi::Error> {
    let mut jobs = Vec::with_capacity(table.len());
    for row in table {
        jobs.push(row_to_job(&row, st)?);
    }
    Ok(jobs)
}

/// One job row (JOB_COLUMNS) as an HTTP request, a SQL call, or a failure that needs no attempt.
fn row_to_job(
    row: &pgrx::spi::SpiHeapTupleData,
    st: &ClaimSettings,
) -> Result<Job, pgrx::spi::Error> {
    {
        let claimed = Claimed {
            delivery_id: row.get::<String>(1)?.unwrap_or_default(),
            event_id: row.get::<String>(2)?.unwrap_or_default(),
            subscription_id: row.get::<String>(3)?.unwrap_or_default(),
            tenant_id: row.get::<String>(4)?.unwrap_or_default(),
            attempt: row.get::<i32>(5)?.unwrap_or(1),
            attempt_offset: row.get::<i32>(17)?.unwrap_or(0),
            max_retries: row.get::<i32>(6)?.unwrap_or(3),
            backoff_base_ms: row.get::<i64>(7)?.unwrap_or(st.base as i64),
            backoff_max_ms: row.get::<i64>(8)?.unwrap_or(st.cap as i64),
            ordered: row.get::<bool>(18)?.unwrap_or(false),
        };
        let kind = row.get::<String>(9)?.unwrap_or_default();
        let url = row.get::<String>(10)?;
        let function = row.get::<String>(11)?;
        let headers_text = row.get::<String>(12)?.unwrap_or_else(|| "{}".into());
        let secret = row.get::<String>(13)?;
        let timeout_ms = row.get::<i32>(14)?.unwrap_or(st.default_timeout);
        let run_as = row.get::<String>(15)?;
        let body = row.get::<String>(16)?.unwrap_or_default();

        let job = match kind.as_str() {
            "sql" => Job::Sql(
                claimed,
                sqlhandler::Call {
                    function: function.unwrap_or_default(),
                    run_as,
                    timeout_ms,
                },
            ),
            _ => {
                let target = if kind == "edge_function" {
                    match (&st.edge_base, &function) {
                        (Some(b), Some(f)) => Ok(format!("{}/{}", b.trim_end_matches('/'), f)),
                        _ => Err(
                            "event_bus.edge_function_base_url is not set, so the Edge Function \
                                  cannot be resolved; set it and reload"
                                .to_string(),
                        ),
                    }
                } else {
                    url.ok_or_else(|| "subscription has no handler_url".to_string())
                };
                let target = target.and_then(|u| {
                    api::validate_url(&u)
                        .map(|_| u)
                        .map_err(|e| format!("invalid URL: {e}"))
                });
                let key = match secret.as_deref().map(api::secret_key) {
                    Some(Err(e)) => Err(format!("invalid signing secret: {e}")),
                    Some(Ok(k)) => Ok(Some(k)),
                    None => Ok(None),
                };
                // headers written past subscribe() (a direct UPDATE) are checked again: a bad one
                // fails the attempt rather than sending without, say, its Authorization header
                let headers: Result<Vec<(String, String)>, String> =
                    serde_json::from_str::<serde_json::Value>(&headers_text)
                        .map_err(|e| e.to_string())
                        .and_then(|v| api::validate_headers(&v).map(|_| v))
                        .map(|v| {
                            v.as_object()
                                .map(|o| {
                                    o.iter()
                                        .filter_map(|(k, v)| {
                                            v.as_str().map(|s| (k.clone(), s.to_string()))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default()
                        })
                        .map_err(|e| format!("invalid subscription headers: {e}"));
                let target = match &st.networks {
                    Ok(_) => target,
                    Err(e) => Err(e.clone()),
                };
                match (target, key, headers) {
                    (Ok(url), Ok(secret_key), Ok(headers)) => Job::Http(
                        claimed.clone(),
                        Request {
                            token: 0,
                            webhook_id: claimed.delivery_id.clone(),
                            url,
                            body,
                            headers,
                            secret_key,
                            timeout: Duration::from_millis(timeout_ms.max(1) as u64),
                            max_response_bytes: st.max_response,
                            follow_redirects: st.follow,
                        },
                    ),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Job::Failed(claimed, e),
                }
            }
        };
        Ok(job)
    }
}

/// Record a batch of outcomes: one attempt-log row each, the delivery's new state (completed,
/// retried after its backoff, or dead), and the events' derived status.
fn record(batch: &[Finished], delays: &[Duration]) {
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    let mut subs = Vec::with_capacity(n);
    let mut tenants = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut oks = Vec::with_capacity(n);
    let mut deads = Vec::with_capacity(n);
    let mut statuses: Vec<Option<i32>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
    let mut responses: Vec<Option<String>> = Vec::with_capacity(n);
    let mut durations = Vec::with_capacity(n);
    let mut delay_ms = Vec::with_capacity(n);
    for (f, d) in batch.iter().zip(delays) {
        let c = &f.claimed;
        let o = &f.outcome;
        ids.push(c.delivery_id.clone());
        events.push(c.event_id.clone());
        subs.push(c.subscription_id.clone());
        tenants.push(c.tenant_id.clone());
        attempts.push(c.attempt);
        oks.push(o.success);
        deads.push(!o.success && c.attempt - c.attempt_offset > c.max_retries);
        statuses.push(o.http_status.map(|s| s as i32));
        errors.push(o.error.as_ref().map(|e| e.chars().take(2000).collect()));
        responses.push(o.response.clone());
        durations.push(o.duration.as_secs_f64() * 1000.0);
        delay_ms.push(d.as_millis().min(i64::MAX as u128) as i64);
    }
    let dead_count = deads.iter().filter(|d| **d).count() as i32;
    let health = SubscriptionHealth::of(batch);
    let ordered: Vec<String> = batch
        .iter()
        .filter(|f| f.claimed.ordered)
        .map(|f| f.claimed.delivery_id.clone())
        .collect();
    if !ordered.is_empty() {
        // before any row is touched: the fan-out must not decide on these streams meanwhile
        lock_streams();
        // the worker's bookkeeping commits asynchronously (a lost commit only means a resend);
        // a stream that moved on must not move back after a crash, so this commit is durable
        // before the next delivery of the stream can be sent
        Spi::run("SET LOCAL synchronous_commit = on")
            .unwrap_or_else(|e| panic!("setting synchronous_commit failed: {e}"));
    }
    Spi::connect_mut(|client| {
        exec(
            client,
            "record_deliveries",
            || "WITH o AS (
                 SELECT * FROM unnest($1::uuid[], $2::int[], $3::bool[], $4::bool[], $5::int[], $6::text[], $7::bigint[])
                     AS o(id, attempt, ok, dead, http_status, err, delay_ms)
             )
             UPDATE event_bus.module_event_deliveries d
                SET status = CASE WHEN o.ok THEN 'completed' WHEN o.dead THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = CASE WHEN o.ok OR o.dead THEN d.next_attempt_at
                                           ELSE now() + o.delay_ms * interval '1 millisecond' END,
                    completed_at = CASE WHEN o.ok OR o.dead THEN now() END,
                    last_http_status = o.http_status,
                    last_error = o.err
               FROM o
              WHERE d.id = o.id AND d.status = 'processing' AND d.attempts = o.attempt"
                .to_string(),
            &[
                pg_sys::TEXTARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT8ARRAYOID,
            ],
            &[
                ids.clone().into(),
                attempts.clone().into(),
                oks.clone().into(),
                deads.into(),
                statuses.clone().into(),
                errors.clone().into(),
                delay_ms.into(),
            ],
        )?;
        exec(
            client,
            "record_logs",
            || "INSERT INTO event_bus.module_event_logs
                 (delivery_id, event_id, subscription_id, tenant_id, attempt, status, http_status,
                  response, error_message, duration_ms)
             SELECT o.id, o.event_id, o.sub_id, o.tenant_id, o.attempt,
                    CASE WHEN o.ok THEN 'success' ELSE 'failed' END, o.http_status, o.resp::jsonb, o.err, o.dur
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::int[], $6::bool[], $7::int[],
                           $8::text[], $9::text[], $10::float8[])
                 AS o(id, event_id, sub_id, tenant_id, attempt, ok, http_status, resp, err, dur)"
                .to_string(),
            &[
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::BOOLARRAYOID,
                pg_sys::INT4ARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::TEXTARRAYOID,
                pg_sys::FLOAT8ARRAYOID,
            ],
            &[
                ids.into(),
                events.clone().into(),
                subs.into(),
                tenants.into(),
                attempts.into(),
                oks.into(),
                statuses.into(),
                responses.into(),
                errors.into(),
                durations.into(),
            ],
        )?;
        if !ordered.is_empty() {
            exec(
                client,
                "advance_streams",
                || "SELECT event_bus._advance_streams($1::uuid[])".to_string(),
                &[pg_sys::TEXTARRAYOID],
                &[ordered.into()],
            )?;
        }
        events.sort();
        events.dedup();
        exec(
            client,
            "refresh_status",
            || "SELECT event_bus._refresh_event_status($1::uuid[])".to_string(),
            &[pg_sys::TEXTARRAYOID],
            &[events.into()],
        )?;
        exec(
            client,
            "record_subscriptions",
            || "SELECT event_bus._record_subscription_outcomes($1::uuid[], $2, $3, $4, $5, $6)".to_string(),
            &[
                pg_sys::TEXTARRAYOID,
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
                dead_count.into(),
            ],
        )?;
        Ok::<(), pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| panic!("recording outcomes failed: {e}"))
}

/// A batch's outcomes per subscription, in batch order: what the circuit breaker and the
/// subscription's health columns need.
#[derive(Default)]
struct SubscriptionHealth {
    ids: Vec<String>,
    ok: Vec<i32>,
    failed: Vec<i32>,
    /// failures after the subscription's last success in the batch
    trailing: Vec<i32>,
    last_error: Vec<Option<String>>,
}

impl SubscriptionHealth {
    fn of(batch: &[Finished]) -> SubscriptionHealth {
        let mut h = SubscriptionHealth::default();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for f in batch {
            let i = *index
                .entry(f.claimed.subscription_id.as_str())
                .or_insert_with(|| {
                    h.ids.push(f.claimed.subscription_id.clone());
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
fn release(unfinished: &[Claimed]) {
    let ids: Vec<String> = unfinished.iter().map(|c| c.delivery_id.clone()).collect();
    let attempts: Vec<i32> = unfinished.iter().map(|c| c.attempt).collect();
    Spi::connect_mut(|client| {
        client.update(
            "UPDATE event_bus.module_event_deliveries d
                SET status = 'pending', next_attempt_at = now(), attempts = d.attempts - 1
               FROM unnest($1::uuid[], $2::int[]) AS o(id, attempt)
              WHERE d.id = o.id AND d.status = 'processing' AND d.attempts = o.attempt",
            None,
            &[ids.into(), attempts.into()],
        )?;
        Ok::<(), pgrx::spi::Error>(())
    })
    .unwrap_or_else(|e| panic!("releasing leases failed: {e}"))
}

/// Process up to `limit` due deliveries now, in the calling session and transaction: new events
/// are fanned out, retries that are due are claimed, HTTP requests are sent (on threads, waiting
/// for each up to its timeout) and SQL handlers run, and the outcomes are recorded exactly as the
/// worker records them. Returns how many deliveries were attempted.
pub fn process_now(limit: i64) -> i64 {
    if let Some(installed) = outdated_sql() {
        pgrx::ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "event_bus: the extension's SQL is version {installed}, the library {}",
                env!("CARGO_PKG_VERSION")
            ),
            "Run ALTER EXTENSION event_bus UPDATE first."
        );
    }
    let settings = ClaimSettings::read();
    let (jobs, _) = claim_and_fan_out(limit, &settings);
    let attempted = jobs.len() as i64;
    let mut finished = Vec::with_capacity(jobs.len());
    let mut http = Vec::new();
    for job in jobs {
        match job {
            Job::Http(c, req) => http.push((c, req)),
            Job::Failed(c, e) => finished.push(Finished {
                claimed: c,
                outcome: Outcome::failure(0, e, Duration::ZERO),
            }),
            Job::Sql(c, call) => {
                for outcome in sqlhandler::run_batch(&[(c.clone(), call)]) {
                    finished.push(Finished {
                        claimed: c.clone(),
                        outcome,
                    });
                }
            }
        }
    }
    if !http.is_empty() {
        let threads = http.len().min(guc::MAX_CONCURRENCY.get().max(1) as usize);
        let dispatcher = Dispatcher::start(threads, threads).unwrap_or_else(|e| {
            pgrx::error!("event_bus: cannot start HTTP threads: {e}");
        });
        let mut waiting: HashMap<u64, Claimed> = HashMap::new();
        for (i, (c, mut req)) in http.into_iter().enumerate() {
            req.token = i as u64 + 1;
            waiting.insert(req.token, c);
            dispatcher.submit(req);
        }
        while !waiting.is_empty() {
            pg_sys::check_for_interrupts!();
            if let Some(o) = dispatcher.recv_timeout(Duration::from_millis(100)) {
                if let Some(c) = waiting.remove(&o.token) {
                    finished.push(Finished {
                        claimed: c,
                        outcome: o,
                    });
                }
            }
        }
    }
    if !finished.is_empty() {
        let mut rng = Rng::seeded();
        let delays: Vec<Duration> = finished
            .iter()
            .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
            .collect();
        record(&finished, &delays);
    }
    attempted
}
