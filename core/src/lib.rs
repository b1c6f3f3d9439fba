//! event_bus's logic that needs no Postgres, in a crate of its own so that it builds and tests in
//! seconds (`cargo test -p event_bus_core`) and the fuzzers (fuzz/) use it as a library:
//! - [`intake`]    the worker's intake floor: where its read of the events not fanned out yet starts
//! - [`kafka`]     `kafka://` targets: the URL, the topic, the message key and its partition
//! - [`lifecycle`] the delivery lifecycle, declared once: states, transitions, their rules, the breaker's
//!   and the lease's defaults (the SQL side and the docs' diagram are checked against it)
//! - [`matcher`]   the event-type / pattern grammar and the matcher
//! - [`netpolicy`] event_bus.allowed_networks: which addresses requests may go to
//! - [`validate`]  URL / header / secret rules, broker URLs, and keeping targets' secrets out of
//!   what non-admins read
//! - [`webhook`]   the Standard Webhooks signature, `Retry-After`, response excerpts, retry backoff
//!
//! The extension (the crate at the workspace's root) re-exports them under the same names.

pub mod intake;
pub mod kafka;
pub mod lifecycle;
pub mod matcher;
pub mod netpolicy;
pub mod validate;
pub mod webhook;
