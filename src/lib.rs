//! event_bus — a transactional event bus inside PostgreSQL.
//!
//! Table of contents:
//! - `sql/schema.sql`   tables, indexes, comments (loaded after the id/pattern functions exist)
//! - `sql/api.sql`      emit_module_event, publish_event, subscribe, unsubscribe, notify trigger
//! - [`api`]            Rust-backed SQL functions: matches, validation, UUIDv7
//! - [`matcher`]        the event-type / pattern grammar, pure Rust
//! - [`guc`]            every setting
//! - [`shmem`]          worker latches in shared memory, wake at commit
//! - [`error`]          one error enum, each variant with its SQLSTATE
//! - [`worker`]         launcher, per-database delivery workers, HTTP threads, SQL handlers

use pgrx::prelude::*;

pub mod api;
pub mod error;
pub mod guc;
pub mod matcher;
pub mod shmem;
pub mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [api::uuid_v7, api::is_valid_pattern, api::delivery_id]
);
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::register();
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::init();
        worker::register_launcher();
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
