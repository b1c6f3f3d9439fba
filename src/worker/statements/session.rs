//! The worker session's own statements: how it configures itself, which SQL version is installed,
//! and a round of upkeep. Each runs inside the transaction its caller opened.

use crate::plans::exec;
use crate::worker::{Step, StepError};
use pgrx::prelude::*;

/// At-least-once makes a lost commit of the worker's own bookkeeping harmless: a lost record
/// means a re-delivery with the same webhook-id, a lost claim or fan-out is redone. So the worker
/// does not wait for its WAL flushes (10-30% faster at these batch sizes).
/// And no JIT: the round's statements are planned per call (see claim.rs), and over a large
/// backlog their estimated cost passes jit_above_cost, so rounds compiled them with LLVM, whose
/// library (relocated pages) and heap then stayed in the worker's memory: RssAnon went from
/// 12 MB after 100,000 deliveries to 37 MB after a 900,000-event backlog; without JIT, 12 MB.
pub fn configure() -> Step<()> {
    Spi::run("SET synchronous_commit = off")
        .and_then(|_| Spi::run("SET jit = off"))
        .map_err(|e| StepError::failed("configuring the session", e))
}

/// Is the extension created in this database?
pub fn extension_present() -> bool {
    unsafe { pg_sys::get_extension_oid(c"event_bus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// The installed SQL version (`extversion`), if the extension is created. Asked every round: kept
/// parsed and planned.
pub fn installed_version() -> Step<Option<String>> {
    Spi::connect_mut(|client| {
        exec(
            client,
            "extversion",
            || "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'event_bus'".into(),
            &[],
            &[],
        )?
        .first()
        .get_one::<String>()
    })
    .map_err(|e| StepError::failed("reading the installed version", e))
}

/// One batch of upkeep (`event_bus._maintenance`: breaker probes and releases, retention): how
/// many rows retention removed, at most `batch`.
pub fn maintenance(batch: i64) -> Step<i64> {
    lock_in_drop_order()?;
    Spi::get_one_with_args::<i64>("SELECT event_bus._maintenance($1::int)", &[batch.into()])
        .map(|n| n.unwrap_or(0))
        .map_err(|e| StepError::failed("maintenance", e))
}

/// Take `module_events` (ACCESS SHARE, until the transaction ends) before any other table of the
/// extension. `DROP EXTENSION` locks the extension's tables one by one in the order they were
/// created, `module_events` first; a worker transaction that held another of them (a round reads
/// the subscriptions first, the record locks their rows first) and then asked for
/// `module_events` waited for the DROP while the DROP waited for it: "deadlock detected", and the
/// DROP EXTENSION was the one rolled back (PostgreSQL 17 suite, `a_second_database_is_served_
/// without_configuration`). Taken first, the worker either goes before the DROP or waits for it
/// holding nothing, then finds the extension gone. Every transaction of the worker that touches
/// the extension's tables starts here (the SQL-handler slice starts by reading the events).
pub fn lock_in_drop_order() -> Step<()> {
    Spi::connect_mut(|client| {
        exec(
            client,
            "lock_in_drop_order",
            || "LOCK TABLE event_bus.module_events IN ACCESS SHARE MODE".to_string(),
            &[],
            &[],
        )
        .map(|_| ())
    })
    .map_err(|e| StepError::failed("locking the event table", e))
}
