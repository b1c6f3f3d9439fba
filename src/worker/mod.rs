//! Background workers.
//!
//! - [`launcher`]: one static worker (registered from `_PG_init`) that keeps the pool: it gives
//!   dynamic delivery workers (at most `event_bus.max_workers` over the cluster) to databases with
//!   work — signalled at commit in shared memory, a retry due, a periodic visit — longest-waiting
//!   first; a worker in a database without the extension marks it skipped and exits.
//! - [`dbworker`]: the per-database delivery loop: fan out, claim with a lease, send over HTTP on
//!   another thread, record outcomes — each database step its own short transaction.
//! - [`statements`]: every statement the worker runs (fan-out and claim, record, its session's
//!   own), as functions of Rust values; [`job`]: the claimed rows decoded; [`schedule`]: which
//!   claimed job runs when (per-subscription shares); [`inline`]: `process_pending_events` in the
//!   caller's session.
//! - [`deliver`]: the HTTP side on non-blocking I/O, no Postgres; [`broker`]: RabbitMQ and NATS
//!   JetStream targets on the same runtime.
//! - [`sqlhandler`]: SQL-function handlers, run in a subtransaction as a named role.

pub mod broker;
pub mod dbworker;
pub mod deliver;
pub mod inline;
pub mod job;
pub mod launcher;
pub mod schedule;
pub mod sqlhandler;
pub mod statements;
mod tasks;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

pub const LIBRARY: &str = "event_bus";

/// Register the launcher. Called from `_PG_init` during `shared_preload_libraries`.
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("event_bus launcher")
        .set_type("event_bus launcher")
        .set_library(LIBRARY)
        .set_function("event_bus_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
    launcher::install_drop_database_hook();
}

/// A step of the delivery pipeline (a fan-out, a claim, a record) that failed: its transaction
/// must not commit. The worker rolls it back, logs the message and tries again; in a user's
/// session (`process_pending_events`) it is an ERROR ([`StepError::raise`]).
#[derive(Debug)]
pub struct StepError {
    /// Nothing is wrong but the moment (e.g. a subscription changed mode during the claim):
    /// going again at once is right (SQLSTATE 40001 in a user's session).
    pub retry: bool,
    pub message: String,
}

impl StepError {
    /// `what` failed because of `e`.
    pub fn failed(what: &str, e: impl std::fmt::Display) -> StepError {
        StepError {
            retry: false,
            message: format!("{what} failed: {e}"),
        }
    }

    pub fn retry(message: &str) -> StepError {
        StepError {
            retry: true,
            message: message.to_string(),
        }
    }

    /// Raise it as an ERROR in the calling session: 40001 (try again) or XX000.
    pub fn raise(self) -> ! {
        let code = if self.retry {
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE
        } else {
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR
        };
        let hint = if self.retry {
            "Call it again."
        } else {
            "Nothing was recorded; see the server log, and call it again."
        };
        pgrx::ereport!(
            PgLogLevel::ERROR,
            code,
            format!("event_bus: {}", self.message),
            hint
        );
        unreachable!("ereport(ERROR) returned")
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A pipeline step's result.
pub type Step<T> = Result<T, StepError>;

/// Run `f` in its own transaction, committed when it returns `Ok`, rolled back when it returns
/// `Err` or raises (an ERROR or a panic inside); either failure comes back as `Err(message)`, and
/// the worker logs it and lives on. After either, the transaction's table statistics are reported
/// (see [`report_table_statistics`]).
pub fn in_transaction_try<R>(what: &str, f: impl FnOnce() -> Step<R>) -> Result<R, String> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let failure = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => {
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            report_table_statistics();
            return Ok(v);
        }
        Ok(Err(e)) => e.message,
        Err(e) => panic_message(&e),
    };
    unsafe {
        pg_sys::AbortCurrentTransaction();
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
    }
    report_table_statistics();
    Err(format!("{what}: {failure}"))
}

/// Hand the rows this process inserted, updated and deleted to the cumulative statistics, where
/// autovacuum reads them. A client backend does this when it goes idle; a background worker never
/// goes idle that way, and until 0.13.2 ours never did it: its writes (every delivery row, attempt
/// log row, lease and status update) stayed invisible to autovacuum for the worker's whole life —
/// the tables only it writes were never vacuumed nor analyzed, dead rows piled up in the queue's
/// indexes, and plans made while those tables were empty were kept (beside a subscription failing
/// every attempt, the upkeep read 100,000 held deliveries with sequential scans, 80-100 ms a call).
/// PostgreSQL flushes at most once a second whatever the calls (`force` = false), so this is cheap
/// after every transaction. What it kept for later (its answer: milliseconds to wait before
/// forcing it) is flushed by [`wait`] when that time has come, as a client session's idle timeout
/// does: a worker that goes quiet right after a flush still reports its last writes.
/// Outside any transaction only.
fn report_table_statistics() {
    let later = unsafe { pg_sys::pgstat_report_stat(false) };
    // SAFETY: the worker's main thread only (the only one that runs transactions)
    unsafe {
        STATISTICS_DUE = match (later > 0, STATISTICS_DUE) {
            (false, _) => None,
            (true, Some(due)) => Some(due),
            (true, None) => Some(Instant::now() + Duration::from_millis(later as u64)),
        };
    }
}

/// When the table statistics kept by the last report must be flushed (see [`report_table_statistics`]).
static mut STATISTICS_DUE: Option<Instant> = None;

/// Run `f` in its own transaction (see [`in_transaction_try`]); an ERROR or panic inside aborts
/// it and comes back as `Err(message)`.
pub fn in_transaction<R>(what: &str, f: impl FnOnce() -> R) -> Result<R, String> {
    in_transaction_try(what, || Ok(f()))
}

pub fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(report) = e.downcast_ref::<pgrx::pg_sys::panic::CaughtError>() {
        match report {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
            | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                format!(
                    "{} (SQLSTATE {})",
                    r.message(),
                    sqlstate(r.sql_error_code() as i32)
                )
            }
        }
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "unknown panic".into()
    }
}

/// Log at LOG level (server log only), never raising.
pub fn log(msg: &str) {
    pgrx::log!("{msg}");
}

/// A background worker's signal handlers, then the configuration files read once. A worker
/// ignores SIGHUP from its fork until its handler is attached (PostgreSQL's bgworker start-up sets
/// it to SIG_IGN), and the postmaster may fork it just before it re-reads the files after a
/// reload: the worker then starts with the old settings and the reload's SIGHUP is lost in that
/// window, leaving it on them until the next reload. Seen with event_bus.allowed_networks: a worker
/// started by the commit just before `pg_reload_conf()` kept allowing every address.
pub fn attach_signal_handlers() {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

/// Reload postgresql.conf if a SIGHUP arrived (a safe point: between transactions).
pub fn reload_config_if_requested() {
    if BackgroundWorker::sighup_received() {
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    }
}

/// Wait on the latch and, when given, a socket; returns false on SIGTERM.
pub fn wait(fd: Option<i32>, timeout: Duration) -> bool {
    // table statistics kept for later: wake no later than they are due, and flush them then
    // SAFETY: the worker's main thread only
    let statistics_due = unsafe { STATISTICS_DUE };
    let timeout = match statistics_due {
        Some(due) => timeout.min(due.saturating_duration_since(Instant::now())),
        None => timeout,
    };
    let mut events =
        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
    let sock = match fd {
        Some(fd) => {
            events |= pg_sys::WL_SOCKET_READABLE as i32;
            fd
        }
        None => -1,
    };
    let ms = timeout.as_millis().clamp(0, i64::MAX as u128) as std::os::raw::c_long;
    unsafe {
        pg_sys::WaitLatchOrSocket(pg_sys::MyLatch, events, sock, ms, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    if statistics_due.is_some_and(|due| due <= Instant::now()) {
        unsafe {
            pg_sys::pgstat_report_stat(true);
            STATISTICS_DUE = None;
        }
    }
    pg_sys::check_for_interrupts!();
    !shutdown_requested()
}

static mut SHUTDOWN: bool = false;

/// Has SIGTERM arrived? (Sticky, unlike `BackgroundWorker::sigterm_received`.)
pub fn shutdown_requested() -> bool {
    unsafe {
        if BackgroundWorker::sigterm_received() {
            SHUTDOWN = true;
        }
        SHUTDOWN
    }
}

/// The five-character SQLSTATE of a packed error code.
pub fn sqlstate(code: i32) -> String {
    (0..5)
        .map(|i| ((((code >> (6 * i)) & 0x3F) as u8) + b'0') as char)
        .collect()
}
