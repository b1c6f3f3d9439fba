//! The per-database delivery worker: its entry point and its loop.
//!
//! Loop: collect outcomes as they arrive and record them (one short transaction) → send what the
//! scheduler lets go → when there is room, fan out new events and claim due deliveries with a
//! lease (one short transaction) → run SQL handlers for a short slice → wait on the latch (set by
//! emits at commit), the outcome pipe, the next due time or a waiting job's staleness — never
//! while a round found more work. No HTTP happens inside a transaction; a killed worker loses
//! nothing because its leases expire and the deliveries are claimed again.

use super::deliver::{Dispatcher, Outcome};
use super::job::{batch_memory, ClaimSettings, Claimed};
use super::schedule::{Scheduler, SqlJob};
use super::statements::claim::claim_and_fan_out;
use super::statements::record::{record, release, retry_delay, Finished, Rng};
use super::statements::session;
use super::{
    in_transaction, in_transaction_try, log, reload_config_if_requested, shutdown_requested,
    sqlhandler, wait,
};
use crate::{guc, shmem};
use event_bus_core::lifecycle::lease;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// Longest a finished outcome waits for others before it is recorded.
const RECORD_DELAY: Duration = Duration::from_millis(5);
/// Shortest time between two claim rounds that found little: under a stream of small commits the
/// worker gathers a millisecond's worth of events per round instead of one round per commit, which
/// costs each round's fixed work (statements, a commit) once per millisecond, not per event. An
/// idle worker claims at once.
const GATHER: Duration = Duration::from_millis(1);
/// How long SQL handlers run before the loop looks after everything else again (a handler that
/// runs longer is not interrupted, but no further one starts).
const SQL_SLICE: Duration = Duration::from_millis(20);
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn event_bus_worker_main(arg: pg_sys::Datum) {
    super::attach_signal_handlers();
    let dboid = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);

    match in_transaction("checking for the extension", session::extension_present) {
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
    // Request bodies of large events are allocated and freed by the batch: glibc raises its mmap
    // threshold after the first such free, and later ones then come from heaps that never shrink
    // (a worker stayed at 343 MB after 1,000 events of 900 KB). A fixed threshold keeps every
    // allocation over 256 kB in its own mapping, returned to the system when freed.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    if !claim_slot(dboid.to_u32()) {
        log("event_bus worker: no free worker slot in shared memory; exiting");
        unsafe { pg_sys::proc_exit(0) };
    }
    unsafe {
        pg_sys::before_shmem_exit(Some(release_slot), pg_sys::Datum::from(0));
    }
    // no synchronous commit, no JIT (session::configure says why)
    if let Err(e) = in_transaction_try("configuring the session", session::configure) {
        log(&format!("event_bus worker: {e}"));
    }
    log(&format!(
        "event_bus worker started for database {}",
        dboid.to_u32()
    ));
    let code = run(dboid);
    unsafe { pg_sys::proc_exit(code) };
}

/// The installed SQL version when it is not the library's own (an upgrade not yet run).
pub fn outdated_sql() -> Option<String> {
    let installed = session::installed_version().ok().flatten()?;
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

/// The scheduler's limits from the settings: a subscription's share, and how long a claimed job
/// may wait locally (event_bus_core::lifecycle::lease::stale_after_ms: it goes back before its lease ends).
fn configure(sched: &mut Scheduler) {
    sched.per_subscription = guc::MAX_IN_FLIGHT_PER_SUBSCRIPTION.get().max(1) as usize;
    sched.stale_after = Duration::from_millis(lease::stale_after_ms(guc::LEASE_MS.get()));
}

/// How long a worker with nothing to do stays with its database (event_bus.worker_idle_ms).
fn idle_limit() -> Duration {
    Duration::from_millis(guc::WORKER_IDLE_MS.get().max(0) as u64)
}

fn max_in_flight() -> usize {
    guc::MAX_CONCURRENCY.get().max(1) as usize
}

fn start_dispatcher() -> Option<Dispatcher> {
    let idle = guc::MAX_IN_FLIGHT_PER_SUBSCRIPTION.get().max(8) as usize;
    match Dispatcher::start(max_in_flight(), idle) {
        Ok(d) => Some(d),
        Err(e) => {
            log(&format!(
                "event_bus worker: cannot start the HTTP sender: {e}"
            ));
            None
        }
    }
}

/// The first wait before a fan-out that met a subscription row being deleted runs again.
const LOCK_BACKOFF: Duration = Duration::from_millis(5);

/// The loop. Returns the exit code: 0 = unregister (extension dropped), 1 = restart.
fn run(dboid: pg_sys::Oid) -> i32 {
    let mut networks = guc::ALLOWED_NETWORKS.get();
    let mut concurrency = max_in_flight();
    let Some(mut dispatcher) = start_dispatcher() else {
        return 1;
    };
    let mut sched = Scheduler::new(1, Duration::from_secs(5));
    configure(&mut sched);
    let mut rng = Rng::seeded();
    let mut finished: Vec<Finished> = Vec::new();
    let mut next_due: Option<Instant> = None;
    let mut backoff_on_error = Duration::from_millis(100);
    let mut lock_backoff = LOCK_BACKOFF;
    let mut first_finished_at = Instant::now();
    let mut next_maintenance = Instant::now();
    let mut waiting_for_update = false;
    let mut last_claim_at = Instant::now();
    let mut last_round_small = false;
    // the pool: this worker serves this database until it has had nothing to do for
    // event_bus.worker_idle_ms, or, when other databases wait for a worker, until its slice ends
    let started = Instant::now();
    let mut last_busy = Instant::now();
    // busy rounds since the worker last gave freed heap memory back (see `quiet` below)
    let mut busy_rounds_since_trim: u32 = 0;
    let mut last_trim = Instant::now();
    let mut last_more = false;
    let mut yielding = false;
    let mut yielding_since: Option<Instant> = None;
    // started for the periodic visit: no idling with the database unless there was work
    let mut visit_only = BackgroundWorker::get_extra() == "visit";
    let mut claimed_since_upkeep = false;
    let dboid_u32 = dboid.to_u32();

    loop {
        if shutdown_requested() {
            break;
        }
        reload_config_if_requested();
        configure(&mut sched);
        let networks_now = guc::ALLOWED_NETWORKS.get();
        if (networks_now != networks || max_in_flight() != concurrency) && sched.in_flight() == 0 {
            // a new size, or a new network policy: that drops kept-alive connections opened
            // under the old one
            if let Some(d) = start_dispatcher() {
                dispatcher = d;
                networks = networks_now;
                concurrency = max_in_flight();
            }
        }
        let batch_size = guc::BATCH_SIZE.get().max(1) as usize;

        // 1. outcomes as they arrive; jobs that waited too long for their turn go back to the
        //    table
        let mut stale = sched.take_stale(Instant::now());
        for o in dispatcher.drain() {
            if let Some(claimed) = sched.complete(&o) {
                if !o.sent {
                    stale.push(claimed);
                    continue;
                }
                if finished.is_empty() {
                    first_finished_at = Instant::now();
                }
                finished.push(Finished {
                    claimed,
                    outcome: o,
                });
            }
        }

        // 2. record: when half a batch has finished, when nothing is in flight, or when the
        //    oldest outcome has waited RECORD_DELAY
        let record_now = !stale.is_empty()
            || (!finished.is_empty()
                && (finished.len() >= (batch_size / 2).max(1)
                    || sched.in_flight() == 0
                    || first_finished_at.elapsed() >= RECORD_DELAY));
        if record_now {
            let batch = std::mem::take(&mut finished);
            let delays: Vec<Duration> = batch
                .iter()
                .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
                .collect();
            match in_transaction_try("recording outcomes", || {
                if !batch.is_empty() {
                    record(&batch, &delays)?;
                }
                if !stale.is_empty() {
                    release(&stale)?;
                }
                Ok(())
            }) {
                Ok(()) => backoff_on_error = Duration::from_millis(100),
                Err(e) => {
                    // DROP EXTENSION with outcomes in flight: there is nothing left to record
                    // them in, and a retry would fail forever, holding a worker of the pool
                    if let Ok(false) =
                        in_transaction("checking for the extension", session::extension_present)
                    {
                        log("event_bus worker: extension dropped; exiting");
                        shmem::skip_database(dboid.to_u32());
                        return 0;
                    }
                    // the outcomes are kept for the next try; stale jobs come back when their
                    // leases end
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

        // 3. fan out and claim while the sender is about to run dry (subscriptions this worker
        //    holds enough of are left out: their deliveries stay in the table for a later claim)
        // (and the event data it holds is under event_bus.batch_memory)
        let memory = batch_memory();
        let room = !yielding
            && sched.http_backlog(batch_size) < (batch_size / 2).max(1)
            && sched.in_flight() < concurrency + 2 * batch_size
            && finished.len() < batch_size
            && sched.held_bytes() < memory;
        let mut more = false;
        if room {
            if last_round_small {
                let since = last_claim_at.elapsed();
                if since < GATHER {
                    std::thread::sleep(GATHER - since);
                }
            }
            let full = sched.full(batch_size);
            let budget = memory - sched.held_bytes();
            // what was signalled before this point, this round sees
            shmem::claiming(dboid_u32, last_more);
            let result = in_transaction_try("claiming deliveries", || {
                if !session::extension_present() {
                    return Ok(None);
                }
                if let Some(installed) = outdated_sql() {
                    return Ok(Some(Err(installed)));
                }
                let settings = ClaimSettings::read();
                settings.bytes.set(budget);
                Ok(Some(Ok(claim_and_fan_out(
                    batch_size as i64,
                    &settings,
                    &full,
                )?)))
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
                    // the slot in the pool is not held for it: leave when idle or when others
                    // wait (ALTER EXTENSION ... UPDATE brings a worker back at its commit)
                    if shmem::others_waiting() || last_busy.elapsed() >= idle_limit() {
                        shmem::leaving(dboid_u32, 0, false);
                        return 0;
                    }
                    let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
                    if !wait(Some(dispatcher.wake_fd()), poll) {
                        break;
                    }
                    continue;
                }
                Ok(Some(Ok(round))) => {
                    waiting_for_update = false;
                    backoff_on_error = Duration::from_millis(100);
                    lock_backoff = LOCK_BACKOFF;
                    more = round.more;
                    last_more = round.more;
                    if more || !round.jobs.is_empty() {
                        last_busy = Instant::now();
                        busy_rounds_since_trim = busy_rounds_since_trim.saturating_add(1);
                        visit_only = false;
                    }
                    claimed_since_upkeep = true;
                    last_claim_at = Instant::now();
                    last_round_small = !more && round.jobs.len() < (batch_size / 20).max(1);
                    next_due = round
                        .due
                        .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
                    let now = Instant::now();
                    for job in round.jobs {
                        if let Some((claimed, outcome)) = sched.add(job, &dispatcher, now) {
                            finished.push(Finished { claimed, outcome });
                        }
                    }
                }
                Err(e) if e.contains("(SQLSTATE 55P03)") => {
                    // the fan-out met a subscription row that a DELETE holds (claim.rs,
                    // SUBSCRIPTIONS_KEPT): nothing was written; run the round again once the
                    // DELETE is through, quietly (it takes milliseconds, unless a session keeps
                    // its transaction open after the DELETE: then the wait grows as for errors)
                    if !wait(Some(dispatcher.wake_fd()), lock_backoff) {
                        break;
                    }
                    lock_backoff = (lock_backoff * 2).min(Duration::from_secs(1));
                    continue;
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

        // 4. SQL handlers, for a slice
        if sched.has_sql() {
            run_sql_slice(&mut sched, &mut finished);
        }

        // 5. about once a second: breaker probes and releases, retention
        if Instant::now() >= next_maintenance && !waiting_for_update {
            next_maintenance = Instant::now() + maintenance();
            // what the upkeep made due (a breaker probe, a released hold) is claimed before leaving
            claimed_since_upkeep = false;
        }
        sched.tidy();

        // 6. leave the database (the pool): when its slice is over and others wait, stop claiming
        //    and go once what is in flight is recorded; when there is nothing to do, go after
        //    event_bus.worker_idle_ms (at once if others wait). Due retries are handed to the
        //    launcher, which brings a worker back for them.
        let others = shmem::others_waiting();
        if !yielding
            && others
            && started.elapsed() >= Duration::from_millis(guc::WORKER_SLICE_MS.get().max(10) as u64)
        {
            yielding = true;
        }
        let quiet = sched.in_flight() == 0 && finished.is_empty() && !sched.has_sql();
        if quiet && busy_rounds_since_trim >= 20 && last_trim.elapsed() >= Duration::from_secs(5) {
            // A backlog worked off leaves the heaps (the backend's and the sender thread's glibc
            // arenas) as large as its busiest moment, free but kept: RssAnon stayed at 38 MB after
            // 900,000 events against 12 MB after 100,000. Hand the free pages back once the work is
            // done (at most every 5 s; a few microseconds on a small heap).
            unsafe {
                libc::malloc_trim(0);
            }
            busy_rounds_since_trim = 0;
            last_trim = Instant::now();
        }
        if quiet {
            let due_now = next_due.is_some_and(|d| d <= Instant::now() + Duration::from_millis(20));
            let idle_for = last_busy.elapsed();
            let limit = if visit_only {
                Duration::ZERO
            } else {
                idle_limit()
            };
            let leave = yielding
                || (claimed_since_upkeep
                    && !due_now
                    && !(more && room)
                    && (others || idle_for >= limit));
            if leave {
                let due_ms = next_due.map(|d| {
                    shmem::now_ms() + d.saturating_duration_since(Instant::now()).as_millis() as i64
                });
                // work left behind: a backlog its last round saw (due retries go by due_ms)
                shmem::leaving(dboid_u32, due_ms.unwrap_or(0), last_more);
                return 0;
            }
        }
        if yielding
            && yielding_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(2)
        {
            // a slow endpoint holds the slice: hand what is still in flight back (its leases are
            // released; a request already sent may be sent again, with the same webhook-id)
            shmem::leaving(dboid_u32, 0, true);
            break;
        }

        // 7. wait: not at all while a round found more or SQL handlers are queued; else for a
        //    commit, an outcome, the record delay, the next due time or a job turning stale
        if (more && room) || sched.has_sql() {
            continue;
        }
        let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
        let now = Instant::now();
        let mut timeout = poll;
        if !finished.is_empty() {
            timeout = timeout.min(RECORD_DELAY.saturating_sub(first_finished_at.elapsed()));
        }
        if let (Some(due), true) = (next_due, room) {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if let Some(stale_at) = sched.next_stale() {
            timeout = timeout.min(stale_at.saturating_duration_since(now));
        }
        if !wait(Some(dispatcher.wake_fd()), timeout) {
            break;
        }
    }

    shutdown(&dispatcher, &mut sched, finished);
    // stopped (SIGTERM: pg_terminate_backend, a slow slice handed back): what it released is due
    // now, so the database wants a worker again (a database being dropped is forgotten already)
    shmem::leaving(dboid_u32, 0, true);
    if yielding {
        0
    } else {
        1
    }
}

/// Run queued SQL handlers, subscriptions taking turns, in one transaction, until SQL_SLICE has
/// passed (at least one runs). Each handler is its own subtransaction; outcomes go to `finished`,
/// calls that did not get to run back to the scheduler.
fn run_sql_slice(sched: &mut Scheduler, finished: &mut Vec<Finished>) {
    // calls whose events are read in one query (run_batch stops at the deadline within one)
    const CHUNK: usize = 512;
    let deadline = Instant::now() + SQL_SLICE;
    let mut ran: Vec<SqlJob> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut left: Vec<SqlJob> = Vec::new();
    let result = in_transaction("running SQL handlers", || {
        while ran.is_empty() || Instant::now() < deadline {
            let chunk = sched.take_sql(CHUNK, batch_memory());
            if chunk.is_empty() {
                break;
            }
            // counted as run before they run: an error that aborts the transaction fails them
            let start = ran.len();
            ran.extend(chunk);
            let calls: Vec<(Claimed, sqlhandler::Call)> = ran[start..]
                .iter()
                .map(|w| (w.claimed.clone(), w.work.clone()))
                .collect();
            let done = sqlhandler::run_batch(&calls, Some(deadline));
            let n = done.len().min(calls.len());
            outcomes.extend(done);
            left.extend(ran.split_off(start + n));
            if !left.is_empty() {
                break;
            }
        }
    });
    sched.requeue_sql(left);
    for (i, w) in ran.into_iter().enumerate() {
        let outcome = match (&result, outcomes.get(i)) {
            (Ok(()), Some(o)) => o.clone(),
            (Err(e), _) => Outcome::failure(0, e.clone(), Duration::ZERO),
            (Ok(()), None) => {
                Outcome::failure(0, "the SQL handler did not run".into(), Duration::ZERO)
            }
        };
        if result.is_ok() {
            sched.sql_ran(&w.claimed.subscription_id, outcome.duration);
        }
        finished.push(Finished {
            claimed: w.claimed,
            outcome,
        });
    }
}

/// Upkeep between batches: breaker probes and releases, and retention in batches of
/// MAINTENANCE_BATCH (each its own transaction, at most 10 per round). Returns the time until
/// the next round: a second, or a minute after an error (a bad event_bus.retention, say).
fn maintenance() -> Duration {
    const MAINTENANCE_BATCH: i64 = 1000;
    for _ in 0..10 {
        match in_transaction_try("maintenance", || session::maintenance(MAINTENANCE_BATCH)) {
            Ok(n) if n >= MAINTENANCE_BATCH => continue,
            Ok(_) => return Duration::from_secs(1),
            Err(e) => {
                log(&format!("event_bus worker: {e}; next try in a minute"));
                return Duration::from_secs(60);
            }
        }
    }
    Duration::ZERO
}

/// On SIGTERM: give requests in flight a moment, record what finished, hand the rest back so the
/// next worker retries them at once instead of waiting for their leases.
fn shutdown(dispatcher: &Dispatcher, sched: &mut Scheduler, mut finished: Vec<Finished>) {
    let deadline = Instant::now() + Duration::from_millis(1000);
    let mut unfinished = Vec::new();
    while sched.in_flight() > 0 && Instant::now() < deadline {
        if let Some(o) = dispatcher.recv_timeout(Duration::from_millis(50)) {
            if let Some(claimed) = sched.complete(&o) {
                if o.sent {
                    finished.push(Finished {
                        claimed,
                        outcome: o,
                    });
                } else {
                    unfinished.push(claimed);
                }
            }
        }
    }
    let mut rng = Rng::seeded();
    let delays: Vec<Duration> = finished
        .iter()
        .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
        .collect();
    unfinished.extend(sched.unfinished());
    let r = in_transaction_try("recording outcomes at shutdown", || {
        if !finished.is_empty() {
            record(&finished, &delays)?;
        }
        if !unfinished.is_empty() {
            release(&unfinished)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        log(&format!(
            "event_bus worker: {e}; leases will expire instead"
        ));
    }
}
