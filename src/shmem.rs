//! Shared memory: where each database's delivery workers publish their latches, so a committing
//! emit can wake them (wake at commit), and where the launcher publishes its own.
//!
//! Only present when the library is in `shared_preload_libraries`; without it every function
//! here is a no-op, and events simply wait for `process_pending_events()` or a later worker.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

/// Most worker processes (over all databases) that can be registered at once.
pub const MAX_SLOTS: usize = 128;

#[derive(Copy, Clone, Default)]
pub struct Slot {
    pub in_use: bool,
    pub dboid: u32,
    pub pid: i32,
    /// Address of the worker's `MyLatch` (shared memory: valid in every backend).
    pub latch: usize,
}

/// Databases the launcher leaves alone: no extension there (a worker found none), or being dropped.
pub const MAX_SKIPPED_DBS: usize = 256;

/// Databases the pool keeps track of at once.
pub const MAX_DBS: usize = 1024;

/// What the pool knows of one database (times in ms since the Unix epoch, 0 = none).
#[derive(Copy, Clone, Default)]
pub struct DbState {
    pub dboid: u32,
    /// Work was signalled (an emit, a retry, a replay committed) and no claim has looked since.
    pub wanted: bool,
    /// Since when it has been waiting: for a worker (wanted or due), oldest first.
    pub wanted_since: i64,
    /// When the next delivery a departed worker left behind is due.
    pub next_due: i64,
    /// Workers serving it now (the launcher counts its own starts and their exits).
    pub workers: u16,
    /// A worker of it reported a backlog in its last round: another one may help (event_bus.workers).
    pub busy: bool,
    /// When a worker last started for it.
    pub last_visit: i64,
    /// It is wanted only for the periodic visit (no work signalled): it yields to databases with
    /// work, and visits take at most half the pool.
    pub visit: bool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Copy, Clone)]
pub struct Shared {
    pub launcher_latch: usize,
    pub launcher_pid: i32,
    pub slots: [Slot; MAX_SLOTS],
    /// oids of databases without the extension (0 = free entry)
    pub skipped_dbs: [u32; MAX_SKIPPED_DBS],
    /// bumped at the commit of every change to event_type_schemas (any database): backends
    /// reload their cached payload contracts when it moved
    pub contracts_gen: u64,
    /// The pool: per database, what it needs and who serves it.
    pub dbs: [DbState; MAX_DBS],
    /// Databases that wanted a worker at the launcher's last look and got none (the pool was full).
    pub pool_waiting: u32,
    /// How many times the launcher found the pool full with databases waiting (for metrics()).
    pub pool_full_total: u64,
    /// Times the launcher could not start a worker the pool had room for (max_worker_processes).
    pub start_failures_total: u64,
}

impl Shared {
    const fn new() -> Self {
        Shared {
            launcher_latch: 0,
            launcher_pid: 0,
            slots: [Slot {
                in_use: false,
                dboid: 0,
                pid: 0,
                latch: 0,
            }; MAX_SLOTS],
            skipped_dbs: [0; MAX_SKIPPED_DBS],
            contracts_gen: 0,
            dbs: [DbState {
                dboid: 0,
                wanted: false,
                wanted_since: 0,
                next_due: 0,
                workers: 0,
                busy: false,
                last_visit: 0,
                visit: false,
            }; MAX_DBS],
            pool_waiting: 0,
            pool_full_total: 0,
            start_failures_total: 0,
        }
    }
}

unsafe impl PGRXSharedMemory for Shared {}

pub static SHARED: PgLwLock<Shared> = unsafe { PgLwLock::new(c"event_bus_shared") };

static ATTACHED: AtomicBool = AtomicBool::new(false);

/// Called from `_PG_init` while `shared_preload_libraries` is being processed.
pub fn init() {
    pg_shmem_init!(SHARED = Shared::new());
    ATTACHED.store(true, Ordering::SeqCst);
}

/// Is the shared state available in this process?
pub fn attached() -> bool {
    ATTACHED.load(Ordering::SeqCst)
}

fn set_latch(addr: usize) {
    if addr != 0 {
        unsafe { pg_sys::SetLatch(addr as *mut pg_sys::Latch) };
    }
}

/// Work was committed in database `dboid`: wake its delivery workers, and mark it wanted for
/// the pool, waking the launcher when no worker serves it.
pub fn wake_database(dboid: pg_sys::Oid) {
    if !attached() {
        return;
    }
    let dboid = dboid.to_u32();
    let (latches, marked, served) = {
        let shared = SHARED.share();
        let latches: Vec<usize> = shared
            .slots
            .iter()
            .filter(|s| s.in_use && s.dboid == dboid && s.latch != 0)
            .map(|s| s.latch)
            .collect();
        let state = db_index(&shared.dbs, dboid).map(|i| &shared.dbs[i]);
        (
            latches,
            state.is_some_and(|d| d.wanted && !d.visit),
            state.is_some_and(|d| d.workers > 0),
        )
    };
    if !marked {
        mark_wanted(dboid);
    }
    for l in &latches {
        set_latch(*l);
    }
    // The launcher only needs waking when this commit marked the database: a database marked
    // before stays marked until a worker looks at it, and whoever marked it woke the launcher
    // then; one that could not start a worker yet (paused, pool full) looks again when that
    // changes, and at least every second. Woken at every commit instead, the launcher ran a round
    // per emit while no worker served the database (paused: 7% of the machine's CPU in a burst of
    // emits, plus a signal in each committing backend).
    if !marked && (!served || latches.is_empty()) {
        wake_launcher();
    }
}

thread_local! {
    /// Where this backend last found its database's state in `dbs` (checked before use: the
    /// launcher may have moved it), so a commit looks at one entry, not the table.
    static DB_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn db_index(dbs: &[DbState; MAX_DBS], dboid: u32) -> Option<usize> {
    let cached = DB_INDEX.get();
    if cached < MAX_DBS && dbs[cached].dboid == dboid {
        return Some(cached);
    }
    let found = dbs.iter().position(|d| d.dboid == dboid)?;
    DB_INDEX.set(found);
    Some(found)
}

/// Note that `dboid` has work for the pool (a state is made for it if it has none).
pub fn mark_wanted(dboid: u32) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    let now = now_ms();
    let i = match db_index(&shared.dbs, dboid) {
        Some(i) => i,
        None => match shared.dbs.iter().position(|d| d.dboid == 0) {
            Some(i) => {
                shared.dbs[i] = DbState {
                    dboid,
                    ..Default::default()
                };
                i
            }
            None => return,
        },
    };
    let d = &mut shared.dbs[i];
    d.visit = false;
    if !d.wanted {
        d.wanted = true;
        if d.wanted_since == 0 {
            d.wanted_since = now;
        }
    }
}

/// A worker of `dboid` is about to look at everything committed so far: what was signalled
/// before is seen by this round. `busy`: its last round left a backlog.
pub fn claiming(dboid: u32, busy: bool) {
    if !attached() {
        return;
    }
    {
        let shared = SHARED.share();
        if shared.dbs.iter().any(|d| {
            d.dboid == dboid
                && !d.wanted
                && d.busy == busy
                && d.wanted_since == 0
                && d.next_due == 0
        }) {
            return;
        }
    }
    let mut shared = SHARED.exclusive();
    if let Some(d) = shared.dbs.iter_mut().find(|d| d.dboid == dboid) {
        d.wanted = false;
        d.wanted_since = 0;
        d.next_due = 0;
        d.busy = busy;
        d.visit = false;
    }
}

/// A worker of `dboid` leaves: when its next delivery is due (ms since the epoch, 0 = none), and
/// whether it left work behind (it yielded its slice).
pub fn leaving(dboid: u32, next_due: i64, more: bool) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    if let Some(d) = shared.dbs.iter_mut().find(|d| d.dboid == dboid) {
        d.busy = false;
        if next_due > 0 && (d.next_due == 0 || next_due < d.next_due) {
            d.next_due = next_due;
        }
        if more {
            d.wanted = true;
            if d.wanted_since == 0 {
                d.wanted_since = now_ms();
            }
        }
    }
}

/// Are databases waiting for a worker the pool has no room for?
pub fn others_waiting() -> bool {
    attached() && SHARED.share().pool_waiting > 0
}

/// Forget a database (dropped, or without the extension).
pub fn forget_database(dboid: u32) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    for d in shared.dbs.iter_mut().filter(|d| d.dboid == dboid) {
        *d = DbState::default();
    }
}

/// Mark database `dboid` as one the launcher should not start workers for.
pub fn skip_database(dboid: u32) {
    if !attached() {
        return;
    }
    forget_database(dboid);
    let mut shared = SHARED.exclusive();
    if shared.skipped_dbs.contains(&dboid) {
        return;
    }
    if let Some(e) = shared.skipped_dbs.iter_mut().find(|e| **e == 0) {
        *e = dboid;
    }
}

/// Let the launcher start workers for `dboid` again.
pub fn unskip_database(dboid: u32) {
    if !attached() {
        return;
    }
    let mut shared = SHARED.exclusive();
    for e in shared.skipped_dbs.iter_mut() {
        if *e == dboid {
            *e = 0;
        }
    }
}

pub fn is_skipped(dboid: u32) -> bool {
    attached() && SHARED.share().skipped_dbs.contains(&dboid)
}

/// pids of the workers serving `dboid`.
pub fn worker_pids(dboid: u32) -> Vec<i32> {
    if !attached() {
        return vec![];
    }
    SHARED
        .share()
        .slots
        .iter()
        .filter(|s| s.in_use && s.dboid == dboid)
        .map(|s| s.pid)
        .collect()
}

/// Wake the launcher (a database gained or lost the extension).
pub fn wake_launcher() {
    if !attached() {
        return;
    }
    let latch = SHARED.share().launcher_latch;
    set_latch(latch);
}

thread_local! {
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
    static WAKE_WORKERS: Cell<bool> = const { Cell::new(false) };
    static WAKE_LAUNCHER: Cell<bool> = const { Cell::new(false) };
    static CONTRACTS_CHANGED: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut core::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if WAKE_WORKERS.replace(false) {
                wake_database(unsafe { pg_sys::MyDatabaseId });
            }
            if WAKE_LAUNCHER.replace(false) {
                let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
                unskip_database(db);
                // CREATE EXTENSION, ALTER EXTENSION UPDATE: a worker comes to look at once
                mark_wanted(db);
                wake_launcher();
            }
            if CONTRACTS_CHANGED.replace(false) {
                SHARED.exclusive().contracts_gen += 1;
                crate::contracts::invalidate_local();
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            // a rollback wakes nobody
            WAKE_WORKERS.set(false);
            WAKE_LAUNCHER.set(false);
            // this backend may have cached schemas its own transaction wrote
            if CONTRACTS_CHANGED.replace(false) {
                crate::contracts::invalidate_local();
            }
        }
        _ => {}
    }
}

fn ensure_callback() {
    if !CALLBACK_REGISTERED.get() {
        unsafe { pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut()) };
        CALLBACK_REGISTERED.set(true);
    }
}

/// Wake this database's delivery workers when the current transaction commits (not on rollback).
/// Cheap: a flag per transaction and, at commit, one shared-lock scan of the slot table.
#[pg_extern(volatile, parallel_unsafe, name = "_wake_on_commit")]
fn wake_on_commit() {
    wake_workers_on_commit();
}

/// Wake this database's workers when the current transaction commits (emit, DROP EXTENSION).
pub fn wake_workers_on_commit() {
    if !attached() {
        return;
    }
    ensure_callback();
    WAKE_WORKERS.set(true);
}

/// The payload-contract generation every backend compares its cache with (None without shared memory).
pub fn contracts_gen() -> Option<u64> {
    attached().then(|| SHARED.share().contracts_gen)
}

/// Tell every backend to reload payload contracts when the current transaction commits.
pub fn contracts_changed_on_commit() {
    if !attached() {
        return;
    }
    ensure_callback();
    CONTRACTS_CHANGED.set(true);
}

/// Wake the launcher when the current transaction commits: CREATE/DROP EXTENSION call this so
/// a database gains or loses its worker at once instead of at the launcher's next scan.
#[pg_extern(volatile, parallel_unsafe, name = "_wake_launcher_on_commit")]
fn wake_launcher_on_commit() {
    if !attached() {
        return;
    }
    ensure_callback();
    WAKE_LAUNCHER.set(true);
}

type PoolRow = (
    pg_sys::Oid,
    i32,
    bool,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    Option<pgrx::datum::TimestampWithTimeZone>,
    bool,
);

fn timestamp(ms: i64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    // Unix ms -> PostgreSQL's microseconds since 2000-01-01
    (ms > 0).then(|| {
        let pg_us = (ms - 946_684_800_000) * 1000;
        unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(pg_us), false) }
            .expect("a timestamp")
    })
}

/// Body of `event_bus._worker_pool_state()`: the pool's view of every database it tracks.
#[pg_extern(sql = false)]
fn worker_pool_state() -> TableIterator<
    'static,
    (
        name!(dboid, pg_sys::Oid),
        name!(workers, i32),
        name!(wanted, bool),
        name!(waiting_since, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(next_due_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(last_visit_at, Option<pgrx::datum::TimestampWithTimeZone>),
        name!(busy, bool),
    ),
> {
    let rows: Vec<PoolRow> = if attached() {
        let shared = SHARED.share();
        shared
            .dbs
            .iter()
            .filter(|d| d.dboid != 0)
            .map(|d| {
                (
                    pg_sys::Oid::from(d.dboid),
                    d.workers as i32,
                    d.wanted,
                    timestamp(if d.workers == 0 { d.wanted_since } else { 0 }),
                    timestamp(d.next_due),
                    timestamp(d.last_visit),
                    d.busy,
                )
            })
            .collect()
    } else {
        vec![]
    };
    TableIterator::new(rows)
}

/// Body of `event_bus._pool_summary()`: (workers running, databases waiting for one, times the pool
/// was found full, worker starts that failed) — for metrics() and the warning at CREATE EXTENSION.
#[pg_extern(sql = false)]
fn pool_summary() -> TableIterator<
    'static,
    (
        name!(workers, i64),
        name!(waiting, i64),
        name!(full_total, i64),
        name!(start_failures_total, i64),
    ),
> {
    let row = if attached() {
        let shared = SHARED.share();
        (
            shared.dbs.iter().map(|d| d.workers as i64).sum(),
            shared.pool_waiting as i64,
            shared.pool_full_total as i64,
            shared.start_failures_total as i64,
        )
    } else {
        (0, 0, 0, 0)
    };
    TableIterator::once(row)
}
