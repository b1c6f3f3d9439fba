//! event_bus — a transactional event bus inside PostgreSQL.
//!
//! Table of contents:
//! - `sql/`, in install order (each file's head says what it holds; `build.rs` writes the upgrade scripts
//!   from the same files and `sql/upgrades/`):
//!   `tenant.sql` current_tenant() and who the caller is · `tables.sql` every table, index and comment ·
//!   `roles.sql` roles, table grants, row-level security · `filters.sql` content filters ·
//!   `api.sql` emit, publish, subscribe, request ·
//!   `run_as.sql` the rule for a SQL handler's role · `lifecycle.sql` the delivery lifecycle ·
//!   `contracts.sql` payload contracts · `testing.sql` test helpers · `internals.sql` the worker's
//!   operational events, idempotency gate, upkeep · `monitor.sql` what monitors read ·
//!   `operations.sql` retry, replay, skip, pause, reset, purge
//! - [`api`]            Rust-backed SQL functions: matches, validation, UUIDv7
//! - [`emit`]           emit_module_event and the checks every emit makes
//! - [`plans`]          statements prepared once per backend and kept
//! - [`request`]        request-reply: one attempt now, in the caller's session
//! - [`testing`]        test helpers for users' tests: run_handlers, the transaction's own rows
//! - [`contracts`]      JSON Schema payload contracts, cached per backend
//! - [`matcher`], [`netpolicy`], [`validate`]  the pure logic, from the `event_bus_core` crate (core/):
//!   the event-type / pattern grammar, allowed_networks, URL / header / secret rules (also fuzzed)
//! - [`guc`]            every setting
//! - [`shmem`]          worker latches in shared memory, wake at commit
//! - [`error`]          one error enum, each variant with its SQLSTATE
//! - [`worker`]         launcher, per-database delivery workers, HTTP threads, SQL handlers

use pgrx::prelude::*;

pub mod api;
pub mod contracts;
pub mod emit;
pub mod error;
pub mod guc;
pub use event_bus_core::{kafka, matcher, netpolicy, validate};
pub mod plans;
pub mod request;
pub mod shmem;
pub mod testing;
pub mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod contract_tests;
#[cfg(any(test, feature = "pg_test"))]
mod filter_tests;
#[cfg(any(test, feature = "pg_test"))]
mod input_tests;
#[cfg(any(test, feature = "pg_test"))]
mod lifecycle_tests;
#[cfg(any(test, feature = "pg_test"))]
mod ops_tests;
#[cfg(any(test, feature = "pg_test"))]
mod request_tests;
#[cfg(any(test, feature = "pg_test"))]
mod security_tests;
#[cfg(any(test, feature = "pg_test"))]
mod stats_tests;
#[cfg(any(test, feature = "pg_test"))]
mod testing_tests;
#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

// The install script, in this order (build.rs checks that its upgrade scripts load the same files in the
// same order). sql/generated/ is sql/ with the delivery states' markers expanded by build.rs.
// tenant.sql reads no table; everything after tables.sql may call any Rust-backed function.
extension_sql_file!(
    "../sql/generated/tenant.sql",
    name = "tenant",
    requires = [api::uuid_v7, api::is_valid_pattern, api::delivery_id]
);
extension_sql_file!(
    "../sql/generated/tables.sql",
    name = "tables",
    requires = [
        "tenant",
        api::uuid_v7_lower_bound,
        api::matches,
        api::check_event_type,
        api::check_pattern,
        api::check_url,
        api::check_headers,
        api::check_secret,
        api::process_pending_events,
        shmem::wake_on_commit,
        shmem::wake_launcher_on_commit,
        contracts::has_contract,
        contracts::check_contract,
        contracts::check_payload,
        contracts::check_schema,
        contracts::contracts_changed
    ]
);
extension_sql_file!(
    "../sql/generated/roles.sql",
    name = "roles",
    requires = ["tables"]
);
extension_sql_file!(
    "../sql/generated/filters.sql",
    name = "filters",
    requires = ["roles"]
);
extension_sql_file!(
    "../sql/generated/api.sql",
    name = "api",
    requires = ["filters"]
);
extension_sql_file!(
    "../sql/generated/run_as.sql",
    name = "run_as",
    requires = ["api"]
);
extension_sql_file!(
    "../sql/generated/lifecycle.sql",
    name = "lifecycle",
    requires = ["run_as"]
);
extension_sql_file!(
    "../sql/generated/contracts.sql",
    name = "contracts",
    requires = ["lifecycle"]
);
extension_sql_file!(
    "../sql/generated/testing.sql",
    name = "testing",
    requires = ["contracts"]
);
extension_sql_file!(
    "../sql/generated/internals.sql",
    name = "internals",
    requires = ["testing"]
);
extension_sql_file!(
    "../sql/generated/monitor.sql",
    name = "monitor",
    requires = ["internals"]
);
extension_sql_file!(
    "../sql/generated/operations.sql",
    name = "operations",
    finalize
);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::init();
        // pg_upgrade starts both servers in binary-upgrade mode: nothing may deliver (or write)
        // while it copies the catalogs
        if !unsafe { pg_sys::IsBinaryUpgrade } {
            worker::register_launcher();
        }
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'event_bus'"]
    }
}
