//! Every statement the worker runs, behind functions that take and return Rust values: the loop
//! ([`super::dbworker`]) and `process_pending_events` ([`super::inline`]) hold no SQL text.
//!
//! - [`claim`]: a claim round — due deliveries claimed with a lease, then new events fanned out by
//!   [`fan_out`] into deliveries leased at birth — returning jobs (decoded by [`super::job`]);
//! - [`probe`]: the round's two questions (anything due? anything new?), planned once;
//! - [`record`]: recording outcomes (the delivery, its attempt log, the subscription's health and
//!   breaker) and handing unfinished claims back;
//! - [`session`]: the session's settings, the installed version, upkeep.
//!
//! What a delivery's states mean and who moves it between them is written once, in
//! `sql/lifecycle.sql`; these statements call its functions.

pub mod claim;
pub mod fan_out;
pub mod probe;
pub mod record;
pub mod session;
