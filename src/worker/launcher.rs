//! The launcher: starts delivery workers for every database that has the extension.
//!
//! It connects to no database (so it never blocks DROP DATABASE or CREATE DATABASE ... TEMPLATE)
//! and reads the shared catalog pg_database directly. A worker started in a database without the
//! extension marks the database skipped and exits; `CREATE EXTENSION event_bus` clears the mark
//! and wakes the launcher at commit. `DROP DATABASE` stops that database's workers first.

use super::{in_transaction, log, reload_config_if_requested, wait, LIBRARY};
use crate::{guc, shmem};
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn event_bus_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(None, None);
    {
        let mut shared = shmem::SHARED.exclusive();
        shared.launcher_latch = unsafe { pg_sys::MyLatch } as usize;
        shared.launcher_pid = unsafe { pg_sys::MyProcPid };
        // a restarted launcher probes every database again
        shared.skipped_dbs = [0; shmem::MAX_SKIPPED_DBS];
    }
    log("event_bus launcher started");

    let mut workers: HashMap<(u32, i32), DynamicBackgroundWorker> = HashMap::new();
    let mut scans: u64 = 0;
    loop {
        reload_config_if_requested();
        scans += 1;
        if scans % 60 == 0 {
            // every ~10 minutes probe skipped databases again (e.g. a DROP DATABASE that failed)
            shmem::SHARED.exclusive().skipped_dbs = [0; shmem::MAX_SKIPPED_DBS];
        }
        match in_transaction("listing databases", list_databases) {
            Ok(dbs) => {
                let per_db = guc::WORKERS.get();
                // forget workers that have stopped
                workers.retain(|_, w| {
                    matches!(
                        w.pid(),
                        Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted)
                    )
                });
                for db in dbs {
                    if shmem::is_skipped(db) {
                        continue;
                    }
                    for n in 0..per_db {
                        if workers.contains_key(&(db, n)) {
                            continue;
                        }
                        match start_worker(db, n) {
                            Some(w) => {
                                workers.insert((db, n), w);
                            }
                            None => {
                                log("event_bus launcher: could not start a delivery worker \
                                     (raise max_worker_processes)");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => log(&format!("event_bus launcher: {e}")),
        }
        // woken by CREATE EXTENSION, a worker exiting (bgw_notify_pid) or SIGHUP; else rescan
        // now and then for new databases
        if !wait(None, Duration::from_secs(10)) {
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

fn start_worker(db: u32, n: i32) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("event_bus worker {n} for database {db}"))
        .set_type("event_bus worker")
        .set_library(LIBRARY)
        .set_function("event_bus_worker_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .set_extra(&n.to_string())
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
