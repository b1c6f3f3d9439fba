//! The per-database delivery worker: its entry point and its loop, one [`Worker`] method per step.
//!
//! A round: collect outcomes as they arrive → record them (one short transaction) → when there is
//! room, fan out new events and claim due deliveries with a lease (one short transaction; the sender
//! starts them) → run SQL handlers for a short slice → the upkeep → leave the database for the pool,
//! or stay → wait on the latch (set by emits at commit), the outcome pipe, the next due time or a
//! waiting job's staleness — never while a round found more work. The slice, the upkeep and the
//! shutdown are in `tasks.rs`. No HTTP happens inside a transaction; a killed worker loses nothing
//! because its leases expire and the deliveries are claimed again.

use super::deliver::Dispatcher;
use super::job::{batch_memory, ClaimSettings, Claimed};
use super::schedule::Scheduler;
use super::statements::claim::claim_and_fan_out;
use super::statements::record::{record, release, retry_delay, Finished, Rng};
use super::statements::session;
use super::tasks::{maintenance, run_sql_slice, shutdown};
use super::{
    in_transaction, in_transaction_try, log, reload_config_if_requested, shutdown_requested, wait,
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

/// What a step of a round says comes next.
enum Flow {
    /// the round's next step
    Go,
    /// the next round, at once
    Again,
    /// stop: record what finished, hand the rest back, and exit (see [`Worker::stop`])
    Stop,
    /// exit now with this code: 0 = unregister (extension dropped, or left for the pool), 1 = restart
    Exit(i32),
}

/// Run a step and follow its [`Flow`] (inside the loop of [`run`]).
macro_rules! step {
    ($e:expr) => {
        match $e {
            Flow::Go => {}
            Flow::Again => continue,
            Flow::Stop => break,
            Flow::Exit(code) => return code,
        }
    };
}

/// The loop, as its steps. Returns the exit code: 0 = unregister (extension dropped, or left the
/// database for the pool), 1 = restart.
fn run(dboid: pg_sys::Oid) -> i32 {
    let Some(mut w) = Worker::start(dboid) else {
        return 1;
    };
    // this process's head passes start at its intake floor (a backlog's dead index entries are
    // not walked every round)
    super::statements::fan_out::keep_intake_floor();
    loop {
        if shutdown_requested() {
            break;
        }
        w.apply_settings();
        // 1. outcomes as they arrive; jobs that waited too long for their turn go back
        let stale = w.collect_outcomes();
        // 2. record them (one short transaction)
        step!(w.record(stale));
        // 3. fan out and claim (one short transaction), when the sender has room
        let room = w.has_room();
        let more = if room {
            match w.claim() {
                Ok(more) => more,
                Err(flow) => {
                    step!(flow);
                    false
                }
            }
        } else {
            false
        };
        // 4. SQL handlers, for a slice
        if w.sched.has_sql() {
            run_sql_slice(&mut w.sched, &mut w.finished);
        }
        // 5. about once a second: breaker probes and releases, retention
        w.upkeep();
        // 6. leave the database for the pool, or stay
        step!(w.leave_or_stay(room, more));
        // 7. wait for the next thing to do
        step!(w.wait(room, more));
    }
    w.stop()
}

/// A database's worker between rounds: the sender, the scheduler, outcomes not recorded yet, and
/// what the last rounds saw.
struct Worker {
    dboid: u32,
    dispatcher: Dispatcher,
    /// the settings the sender was started with (a change restarts it)
    networks: Option<std::ffi::CString>,
    concurrency: usize,
    batch_size: usize,
    sched: Scheduler,
    rng: Rng,
    /// outcomes not recorded yet, and when the first of them arrived
    finished: Vec<Finished>,
    first_finished_at: Instant,
    /// what the claim rounds saw: the next due delivery, whether the last found more, when it ran,
    /// whether it found little (the next waits GATHER)
    next_due: Option<Instant>,
    last_more: bool,
    last_claim_at: Instant,
    last_round_small: bool,
    claimed_since_upkeep: bool,
    /// the waits after an error and after a subscription row held by a DELETE
    backoff_on_error: Duration,
    lock_backoff: Duration,
    next_maintenance: Instant,
    /// the library is newer than the database's SQL: nothing is claimed until ALTER EXTENSION UPDATE
    waiting_for_update: bool,
    /// the pool: since when it serves this database, when it last had work, whether it came only
    /// for the periodic visit, whether it is leaving for databases that wait (and since when)
    started: Instant,
    last_busy: Instant,
    visit_only: bool,
    yielding: bool,
    yielding_since: Option<Instant>,
    /// busy rounds since the worker last gave freed heap memory back, and when it did
    busy_rounds_since_trim: u32,
    last_trim: Instant,
}

impl Worker {
    fn start(dboid: pg_sys::Oid) -> Option<Worker> {
        let dispatcher = start_dispatcher()?;
        let mut sched = Scheduler::new(1, Duration::from_secs(5));
        configure(&mut sched);
        let now = Instant::now();
        Some(Worker {
            dboid: dboid.to_u32(),
            dispatcher,
            networks: guc::ALLOWED_NETWORKS.get(),
            concurrency: max_in_flight(),
            batch_size: guc::BATCH_SIZE.get().max(1) as usize,
            sched,
            rng: Rng::seeded(),
            finished: Vec::new(),
            first_finished_at: now,
            next_due: None,
            last_more: false,
            last_claim_at: now,
            last_round_small: false,
            claimed_since_upkeep: false,
            backoff_on_error: Duration::from_millis(100),
            lock_backoff: LOCK_BACKOFF,
            next_maintenance: now,
            waiting_for_update: false,
            started: now,
            last_busy: now,
            // started for the periodic visit: no idling with the database unless there was work
            visit_only: BackgroundWorker::get_extra() == "visit",
            yielding: false,
            yielding_since: None,
            busy_rounds_since_trim: 0,
            last_trim: now,
        })
    }

    /// Settings changed by a reload: the scheduler's limits, the batch size, and a new sender for
    /// a new size or network policy (that drops kept-alive connections opened under the old one).
    fn apply_settings(&mut self) {
        reload_config_if_requested();
        configure(&mut self.sched);
        self.batch_size = guc::BATCH_SIZE.get().max(1) as usize;
        let networks = guc::ALLOWED_NETWORKS.get();
        if (networks != self.networks || max_in_flight() != self.concurrency)
            && self.sched.in_flight() == 0
        {
            if let Some(d) = start_dispatcher() {
                self.dispatcher = d;
                self.networks = networks;
                self.concurrency = max_in_flight();
            }
        }
    }

    /// Step 1: the sender's outcomes into `finished`; returns the jobs to hand back (waited too long
    /// for their turn, or not sent).
    fn collect_outcomes(&mut self) -> Vec<Claimed> {
        let mut stale = self.sched.take_stale(Instant::now());
        for o in self.dispatcher.drain() {
            if let Some(claimed) = self.sched.complete(&o) {
                if !o.sent {
                    stale.push(claimed);
                    continue;
                }
                if self.finished.is_empty() {
                    self.first_finished_at = Instant::now();
                }
                self.finished.push(Finished {
                    claimed,
                    outcome: o,
                });
            }
        }
        stale
    }

    /// Step 2: record outcomes when half a batch has finished, when nothing is in flight, or when
    /// the oldest has waited RECORD_DELAY; hand stale jobs back. On an error the outcomes are kept
    /// for the next try.
    fn record(&mut self, stale: Vec<Claimed>) -> Flow {
        let record_now = !stale.is_empty()
            || (!self.finished.is_empty()
                && (self.finished.len() >= (self.batch_size / 2).max(1)
                    || self.sched.in_flight() == 0
                    || self.first_finished_at.elapsed() >= RECORD_DELAY));
        if !record_now {
            return Flow::Go;
        }
        let batch = std::mem::take(&mut self.finished);
        let delays: Vec<Duration> = batch
            .iter()
            .map(|f| retry_delay(&f.claimed, &f.outcome, &mut self.rng))
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
            Ok(()) => {
                self.backoff_on_error = Duration::from_millis(100);
                Flow::Go
            }
            Err(e) => {
                // DROP EXTENSION with outcomes in flight: there is nothing left to record them in,
                // and a retry would fail forever, holding a worker of the pool
                if let Ok(false) =
                    in_transaction("checking for the extension", session::extension_present)
                {
                    log("event_bus worker: extension dropped; exiting");
                    shmem::skip_database(self.dboid);
                    return Flow::Exit(0);
                }
                // the outcomes are kept for the next try; stale jobs come back when their leases end
                log(&format!("event_bus worker: {e}; will retry"));
                self.finished = batch;
                self.after_error()
            }
        }
    }

    /// Wait out the error backoff (doubling, at most 10 s); then the next round.
    fn after_error(&mut self) -> Flow {
        if !wait(Some(self.dispatcher.wake_fd()), self.backoff_on_error) {
            return Flow::Stop;
        }
        self.backoff_on_error = (self.backoff_on_error * 2).min(Duration::from_secs(10));
        Flow::Again
    }

    /// Whether to claim this round: while the sender is about to run dry, and the event data held
    /// stays under event_bus.batch_memory (subscriptions this worker holds enough of are left out:
    /// their deliveries stay in the table for a later claim). Never while leaving.
    fn has_room(&self) -> bool {
        let b = self.batch_size;
        !self.yielding
            && !guc::PAUSE.get()
            && self.sched.http_backlog(b) < (b / 2).max(1)
            && self.sched.in_flight() < self.concurrency + 2 * b
            && self.finished.len() < b
            && self.sched.held_bytes() < batch_memory()
    }

    /// Step 3: fan out new events and claim due deliveries, in one short transaction; the jobs go
    /// to the scheduler. Returns whether the round found more than it took.
    fn claim(&mut self) -> Result<bool, Flow> {
        if self.last_round_small {
            let since = self.last_claim_at.elapsed();
            if since < GATHER {
                std::thread::sleep(GATHER - since);
            }
        }
        let full = self.sched.full(self.batch_size);
        let budget = batch_memory() - self.sched.held_bytes();
        let batch_size = self.batch_size;
        // what was signalled before this point, this round sees
        shmem::claiming(self.dboid, self.last_more);
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
                shmem::skip_database(self.dboid);
                Err(Flow::Exit(0))
            }
            Ok(Some(Err(installed))) => Err(self.wait_for_update(&installed)),
            Ok(Some(Ok(round))) => {
                self.waiting_for_update = false;
                self.backoff_on_error = Duration::from_millis(100);
                self.lock_backoff = LOCK_BACKOFF;
                self.last_more = round.more;
                if round.more || !round.jobs.is_empty() {
                    self.last_busy = Instant::now();
                    self.busy_rounds_since_trim = self.busy_rounds_since_trim.saturating_add(1);
                    self.visit_only = false;
                }
                self.claimed_since_upkeep = true;
                self.last_claim_at = Instant::now();
                self.last_round_small = !round.more && round.jobs.len() < (batch_size / 20).max(1);
                self.next_due = round
                    .due
                    .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0)));
                let now = Instant::now();
                for job in round.jobs {
                    if let Some((claimed, outcome)) = self.sched.add(job, &self.dispatcher, now) {
                        self.finished.push(Finished { claimed, outcome });
                    }
                }
                Ok(round.more)
            }
            Err(e) if e.contains("(SQLSTATE 55P03)") => {
                // the fan-out met a subscription row that a DELETE holds (fan_out.rs,
                // SUBSCRIPTIONS_KEPT): nothing was written; run the round again once the DELETE is
                // through, quietly (it takes milliseconds, unless a session keeps its transaction
                // open after the DELETE: then the wait grows as for errors)
                if !wait(Some(self.dispatcher.wake_fd()), self.lock_backoff) {
                    return Err(Flow::Stop);
                }
                self.lock_backoff = (self.lock_backoff * 2).min(Duration::from_secs(1));
                Err(Flow::Again)
            }
            Err(e) => {
                log(&format!("event_bus worker: {e}; will retry"));
                Err(self.after_error())
            }
        }
    }

    /// New library, old SQL: say so once and wait for ALTER EXTENSION ... UPDATE (events keep
    /// accumulating and are delivered after it). The slot in the pool is not held for it: leave when
    /// idle or when others wait (the UPDATE brings a worker back at its commit).
    fn wait_for_update(&mut self, installed: &str) -> Flow {
        if !self.waiting_for_update {
            log(&format!(
                "event_bus worker: the extension's SQL in this database is version {installed} but the \
                 library is {}; run ALTER EXTENSION event_bus UPDATE. Deliveries wait until then.",
                env!("CARGO_PKG_VERSION")
            ));
            self.waiting_for_update = true;
        }
        if shmem::others_waiting() || self.last_busy.elapsed() >= idle_limit() {
            shmem::leaving(self.dboid, 0, false);
            return Flow::Exit(0);
        }
        let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
        if !wait(Some(self.dispatcher.wake_fd()), poll) {
            return Flow::Stop;
        }
        Flow::Again
    }

    /// Step 5: about once a second, the upkeep (breaker probes and releases, retention); what it
    /// made due (a probe, a released hold) is claimed before the worker leaves.
    fn upkeep(&mut self) {
        if Instant::now() >= self.next_maintenance && !self.waiting_for_update {
            self.next_maintenance = Instant::now() + maintenance();
            self.claimed_since_upkeep = false;
        }
        self.sched.tidy();
    }

    /// Step 6: leave the database (the pool). When its slice is over and others wait, stop claiming
    /// and go once what is in flight is recorded; when there is nothing to do, go after
    /// event_bus.worker_idle_ms (at once if others wait). Due retries are handed to the launcher,
    /// which brings a worker back for them.
    fn leave_or_stay(&mut self, room: bool, more: bool) -> Flow {
        let others = shmem::others_waiting();
        if !self.yielding
            && others
            && self.started.elapsed()
                >= Duration::from_millis(guc::WORKER_SLICE_MS.get().max(10) as u64)
        {
            self.yielding = true;
        }
        let quiet =
            self.sched.in_flight() == 0 && self.finished.is_empty() && !self.sched.has_sql();
        if quiet
            && self.busy_rounds_since_trim >= 20
            && self.last_trim.elapsed() >= Duration::from_secs(5)
        {
            // A backlog worked off leaves the heaps (the backend's and the sender thread's glibc
            // arenas) as large as its busiest moment, free but kept: RssAnon stayed at 38 MB after
            // 900,000 events against 12 MB after 100,000. Hand the free pages back once the work is
            // done (at most every 5 s; a few microseconds on a small heap).
            unsafe {
                libc::malloc_trim(0);
            }
            self.busy_rounds_since_trim = 0;
            self.last_trim = Instant::now();
        }
        if quiet && guc::PAUSE.get() {
            // event_bus.pause: nothing in flight any more; leave, and say the database has work, so a
            // worker comes back once delivery resumes
            shmem::leaving(self.dboid, 0, true);
            return Flow::Exit(0);
        }
        if quiet {
            let due_now = self
                .next_due
                .is_some_and(|d| d <= Instant::now() + Duration::from_millis(20));
            let limit = if self.visit_only {
                Duration::ZERO
            } else {
                idle_limit()
            };
            let leave = self.yielding
                || (self.claimed_since_upkeep
                    && !due_now
                    && !(more && room)
                    && (others || self.last_busy.elapsed() >= limit));
            if leave {
                let due_ms = self.next_due.map(|d| {
                    shmem::now_ms() + d.saturating_duration_since(Instant::now()).as_millis() as i64
                });
                // work left behind: a backlog its last round saw (due retries go by due_ms)
                shmem::leaving(self.dboid, due_ms.unwrap_or(0), self.last_more);
                return Flow::Exit(0);
            }
        }
        if self.yielding
            && self
                .yielding_since
                .get_or_insert_with(Instant::now)
                .elapsed()
                > Duration::from_secs(2)
        {
            // a slow endpoint holds the slice: hand what is still in flight back (its leases are
            // released; a request already sent may be sent again, with the same webhook-id)
            shmem::leaving(self.dboid, 0, true);
            return Flow::Stop;
        }
        Flow::Go
    }

    /// Step 7: not at all while a round found more or SQL handlers are queued; else for a commit,
    /// an outcome, the record delay, the next due time or a job turning stale.
    fn wait(&mut self, room: bool, more: bool) -> Flow {
        if (more && room) || self.sched.has_sql() {
            return Flow::Again;
        }
        let poll = Duration::from_millis(guc::POLL_INTERVAL_MS.get().max(10) as u64);
        let now = Instant::now();
        let mut timeout = poll;
        if !self.finished.is_empty() {
            timeout = timeout.min(RECORD_DELAY.saturating_sub(self.first_finished_at.elapsed()));
        }
        if let (Some(due), true) = (self.next_due, room) {
            timeout = timeout.min(due.saturating_duration_since(now));
        }
        if let Some(stale_at) = self.sched.next_stale() {
            timeout = timeout.min(stale_at.saturating_duration_since(now));
        }
        if !wait(Some(self.dispatcher.wake_fd()), timeout) {
            return Flow::Stop;
        }
        Flow::Go
    }

    /// Stopped (SIGTERM: pg_terminate_backend, a slow slice handed back): record what finished, hand
    /// the rest back; what it released is due now, so the database wants a worker again (a database
    /// being dropped is forgotten already). Exit code: 0 when it left for the pool, else 1.
    fn stop(mut self) -> i32 {
        shutdown(
            &self.dispatcher,
            &mut self.sched,
            std::mem::take(&mut self.finished),
        );
        shmem::leaving(self.dboid, 0, true);
        if self.yielding {
            0
        } else {
            1
        }
    }
}
