//! Integration-test harness: a throwaway PostgreSQL cluster (the pg_config first on PATH) with event_bus preloaded, on a free
//! loopback port, owned by the `postgres` user when the tests run as root. The extension must be
//! installed (`cargo pgrx test` installs it before the tests run).
#![allow(dead_code)]

pub mod brokers;
mod cluster;
pub mod receiver;

pub use cluster::*;
