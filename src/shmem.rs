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

/// Wake every delivery worker of database `dboid`.
pub fn wake_database(dboid: pg_sys::Oid) {
    if !attached() {
        return;
    }
    let latches: Vec<usize> = {
        let shared = SHARED.share();
        shared
            .slots
            .iter()
            .filter(|s| s.in_use && s.dboid == dboid.to_u32() && s.latch != 0)
            .map(|s| s.latch)
            .collect()
    };
    for l in latches {
        set_latch(l);
    }
}

/// Mark database `dboid` as one the launcher should not start workers for.
pub fn skip_database(dboid: u32) {
    if !attached() {
        return;
    }
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
                unskip_database(unsafe { pg_sys::MyDatabaseId }.to_u32());
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
