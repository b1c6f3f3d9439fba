//! The launcher: keeps the pool of delivery workers that every database with the extension
//! shares (event_bus.max_workers), starting one for a database when it has work.
//!
//! It connects to no database (so it never blocks DROP DATABASE or CREATE DATABASE ... TEMPLATE)
//! and reads the shared catalog pg_database directly. A worker started in a database without the
//! extension marks the database skipped and exits; `CREATE EXTENSION event_bus` clears the mark
//! and wakes the launcher at commit. `DROP DATABASE` stops that database's workers first.

use super::{in_transaction, log, reload_config_if_requested, wait, LIBRARY};
use crate::{guc, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
};
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn event_bus_launcher_main(_arg: pg_sys::Datum) {
    super::attach_signal_handlers();
    BackgroundWorker::connect_worker_to_spi_by_oid(None, None);
    {
        let mut shared = shmem::SHARED.exclusive();
        shared.launcher_latch = unsafe { pg_sys::MyLatch } as usize;
        shared.launcher_pid = unsafe { pg_sys::MyProcPid };
        // a restarted launcher probes every database again
        shared.skipped_dbs = [0; shmem::MAX_SKIPPED_DBS];
    }
    log("event_bus launcher started");

    let mut workers: HashMap<u32, Vec<DynamicBackgroundWorker>> = HashMap::new();
    // databases whose worker was started for a periodic visit (at most half the pool at once)
    let mut visiting: HashSet<u32> = HashSet::new();
    let mut last_listing: Option<Instant> = None;
    let mut last_skip_reset = Instant::now();
    let mut last_start_failure_log: Option<Instant> = None;
    loop {
        reload_config_if_requested();
        if last_skip_reset.elapsed() >= Duration::from_secs(600) {
            // a database may have gained the extension without waking us (a restore, say)
            shmem::SHARED.exclusive().skipped_dbs = [0; shmem::MAX_SKIPPED_DBS];
            last_skip_reset = Instant::now();
        }
        // workers that ended (each exit also sets our latch: we are their notify pid)
        for ws in workers.values_mut() {
            ws.retain(|w| {
                matches!(
                    w.pid(),
                    Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted)
                )
            });
        }
        workers.retain(|_, ws| !ws.is_empty());
        if last_listing.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            match in_transaction("listing databases", list_databases) {
                Ok(dbs) => sync_databases(&dbs, &workers),
                Err(e) => log(&format!("event_bus launcher: {e}")),
            }
            last_listing = Some(Instant::now());
        }
        visiting.retain(|db| workers.contains_key(db));
        // event_bus.pause: no worker starts; databases keep their signalled work for when it is off
        let plan = if guc::PAUSE.get() {
            Vec::new()
        } else {
            plan_starts(&workers, &visiting)
        };
        for (db, is_visit) in plan {
            match start_worker(db, is_visit) {
                Some(w) => {
                    workers.entry(db).or_default().push(w);
                    if is_visit {
                        visiting.insert(db);
                    } else {
                        visiting.remove(&db);
                    }
                    let mut shared = shmem::SHARED.exclusive();
                    if let Some(d) = shared.dbs.iter_mut().find(|d| d.dboid == db) {
                        d.workers = workers[&db].len() as u16;
                        d.last_visit = shmem::now_ms();
                        d.next_due = 0;
                        d.busy = false;
                    }
                }
                None => {
                    shmem::SHARED.exclusive().start_failures_total += 1;
                    if last_start_failure_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                    {
                        log("event_bus launcher: could not start a delivery worker: every background worker \
                             slot is taken (raise max_worker_processes, or lower event_bus.max_workers)");
                        last_start_failure_log = Some(Instant::now());
                    }
                    break;
                }
            }
        }
        if !wait(None, next_wake()) {
            break;
        }
    }
    log("event_bus launcher stopping");
    {
        let mut shared = shmem::SHARED.exclusive();
        shared.launcher_latch = 0;
        shared.launcher_pid = 0;
    }
    // exit non-zero so the postmaster restarts the launcher if it was not a shutdown
    unsafe { pg_sys::proc_exit(1) };
}

/// Make the pool's view of the databases match the catalog: a state for every database that
/// allows connections (a worker's first visit finds out whether it has the extension), none for
/// dropped ones; and each state's worker count from our own handles.
fn sync_databases(dbs: &[u32], workers: &HashMap<u32, Vec<DynamicBackgroundWorker>>) {
    let mut shared = shmem::SHARED.exclusive();
    for d in shared.dbs.iter_mut() {
        if d.dboid != 0 && !dbs.contains(&d.dboid) && !workers.contains_key(&d.dboid) {
            *d = shmem::DbState::default();
        }
    }
    for &db in dbs {
        if shared.skipped_dbs.contains(&db) || shared.dbs.iter().any(|d| d.dboid == db) {
            continue;
        }
        if let Some(free) = shared.dbs.iter_mut().find(|d| d.dboid == 0) {
            *free = shmem::DbState {
                dboid: db,
                ..Default::default()
            };
        }
    }
}

/// Which databases get a worker now, oldest need first: one that wants workers (work signalled,
/// a retry due, a periodic visit) gets up to event_bus.workers, as does one whose workers report
/// a backlog — as many as the pool (event_bus.max_workers) has room for. Those left
/// over are counted as waiting: their workers-to-be make running ones yield their slices.
fn plan_starts(
    workers: &HashMap<u32, Vec<DynamicBackgroundWorker>>,
    visiting: &HashSet<u32>,
) -> Vec<(u32, bool)> {
    let now = shmem::now_ms();
    let per_db = guc::WORKERS.get().max(1) as usize;
    let pool = guc::MAX_WORKERS.get().max(1) as usize;
    let visit = guc::VISIT_INTERVAL_MS.get().max(1000) as i64;
    let running: usize = workers.values().map(|w| w.len()).sum();
    let mut shared = shmem::SHARED.exclusive();
    let skipped = shared.skipped_dbs;
    // (visit?, since, database): work first, oldest first; then visits
    let mut wants: Vec<(bool, i64, u32)> = Vec::new();
    for d in shared.dbs.iter_mut().filter(|d| d.dboid != 0) {
        let n = workers.get(&d.dboid).map_or(0, |w| w.len());
        d.workers = n as u16;
        if skipped.contains(&d.dboid) {
            continue;
        }
        if n == 0 && !d.wanted && now - d.last_visit >= visit {
            // the periodic visit: retention, breaker probes, anything emitted without a wake
            d.wanted = true;
            d.wanted_since = now;
            d.visit = true;
        }
        let due = d.next_due > 0 && d.next_due <= now;
        if n < per_db && (d.wanted || due) {
            // work: the database gets its event_bus.workers (the first ones first)
            let since = if d.wanted { d.wanted_since } else { d.next_due };
            let only_visit = d.visit && !due;
            let more = if only_visit { n.max(per_db - 1) } else { n };
            for k in more..per_db {
                wants.push((only_visit, since + k as i64, d.dboid));
            }
        } else if n > 0 && n < per_db && d.busy {
            wants.push((false, now, d.dboid));
        }
    }
    wants.sort();
    let mut room = pool.saturating_sub(running);
    // visits never take more than half the pool: work that comes meanwhile finds a worker
    let mut visit_room = (pool / 2).max(1).saturating_sub(visiting.len());
    let mut starts = Vec::new();
    let mut waiting = 0u32;
    for (is_visit, _, db) in wants {
        if is_visit {
            if room > 0 && visit_room > 0 {
                room -= 1;
                visit_room -= 1;
                starts.push((db, true));
            }
            // a visit that waits is no reason for anyone to leave
        } else if room > 0 {
            room -= 1;
            starts.push((db, false));
        } else {
            waiting += 1;
        }
    }
    if waiting > 0 && shared.pool_waiting == 0 {
        shared.pool_full_total += 1;
    }
    shared.pool_waiting = waiting;
    if waiting > 0 {
        // workers idling with their databases leave at once when they see others waiting:
        // wake them to look
        for slot in shared.slots.iter().filter(|s| s.in_use && s.latch != 0) {
            unsafe { pg_sys::SetLatch(slot.latch as *mut pg_sys::Latch) };
        }
    }
    starts
}

/// How long the launcher may sleep: until the next due retry a departed worker left, at most a
/// second (periodic visits, the pool's waiting list); commits and worker exits wake it sooner.
fn next_wake() -> Duration {
    let now = shmem::now_ms();
    let shared = shmem::SHARED.share();
    let next = shared
        .dbs
        .iter()
        .filter(|d| d.dboid != 0 && d.workers == 0 && d.next_due > 0)
        .map(|d| d.next_due - now)
        .min()
        .unwrap_or(1000);
    Duration::from_millis(next.clamp(1, 1000) as u64)
}

/// A worker for `db`; `visit`: started for the periodic visit only (it leaves as soon as it has
/// nothing to do, instead of idling with the database).
fn start_worker(db: u32, visit: bool) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("event_bus worker for database {db}"))
        .set_type("event_bus worker")
        .set_library(LIBRARY)
        .set_function("event_bus_worker_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .set_extra(if visit { "visit" } else { "" })
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// Oids of databases that accept connections and are not templates.
fn list_databases() -> Vec<u32> {
    let mut out = Vec::new();
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as _);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let data = (*tup).t_data;
            let form = (data as *mut u8).add((*data).t_hoff as usize)
                as *const pg_sys::FormData_pg_database;
            // datconnlimit -2 marks a database half-dropped (PG 15.4+)
            if (*form).datallowconn && !(*form).datistemplate && (*form).datconnlimit != -2 {
                out.push((*form).oid.to_u32());
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as _);
    }
    out
}

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Install a ProcessUtility hook that stops a database's workers before DROP DATABASE, which
/// otherwise fails while they are connected.
pub fn install_drop_database_hook() {
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::os::raw::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropStmt {
            let drop = stmt as *mut pg_sys::DropStmt;
            if (*drop).removeType == pg_sys::ObjectType::OBJECT_EXTENSION && drops_event_bus(drop) {
                // the workers notice the extension is gone at their next transaction: wake them
                crate::shmem::wake_workers_on_commit();
            }
        }
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropdbStmt {
            let drop = stmt as *mut pg_sys::DropdbStmt;
            let oid = pg_sys::get_database_oid((*drop).dbname, true);
            if oid != pg_sys::InvalidOid {
                stop_database_workers(oid.to_u32());
            }
        }
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}

/// Does this DROP EXTENSION name event_bus?
unsafe fn drops_event_bus(drop: *mut pg_sys::DropStmt) -> bool {
    unsafe {
        let list = (*drop).objects;
        if list.is_null() {
            return false;
        }
        (0..(*list).length as usize).any(|i| {
            // each object of DROP EXTENSION is a String node
            let node = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node;
            !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_String
                && std::ffi::CStr::from_ptr((*(node as *mut pg_sys::String)).sval).to_bytes()
                    == b"event_bus"
        })
    }
}

/// Keep the launcher away from `dboid` and SIGTERM its workers; DROP DATABASE then waits (up to
/// 5 s, in Postgres) for them to disconnect.
fn stop_database_workers(dboid: u32) {
    if !shmem::attached() {
        return;
    }
    shmem::skip_database(dboid);
    for pid in shmem::worker_pids(dboid) {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
