//! Rust-backed SQL functions of the public and internal API. The plpgsql entry points in
//! `sql/api.sql` call the `_check_*` functions so every validation rule lives in Rust once.

use crate::error::EventBusError;
use crate::matcher;
pub use crate::validate::{secret_key, validate_headers, validate_url, RESERVED_HEADERS};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

/// A new UUIDv7 (time-ordered): the default of every id column.
#[pg_extern(volatile, parallel_safe, name = "_uuid_v7")]
fn uuid_v7() -> Uuid {
    Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes())
}

/// The smallest UUIDv7 of the given millisecond: `id >= event_bus.uuid_v7_lower_bound(ts)`
/// selects events emitted at or after `ts` through the primary key.
#[pg_extern(immutable, strict, parallel_safe)]
fn uuid_v7_lower_bound(ts: TimestampWithTimeZone) -> Uuid {
    let micros: i64 = ts.into_inner();
    // Postgres epoch is 2000-01-01; Unix epoch offset in microseconds.
    let unix_ms = (micros + 946_684_800_000_000).div_euclid(1000).max(0) as u64;
    Uuid::from_bytes(event_bus_core::intake::id_at_ms(unix_ms))
}

/// Does `pattern` (AMQP topic rules) match `event_type`? Invalid input never matches.
#[pg_extern(immutable, strict, parallel_safe)]
fn matches(pattern: &str, event_type: &str) -> bool {
    matcher::matches(pattern, event_type)
}

#[pg_extern(immutable, strict, parallel_safe, name = "_is_valid_pattern")]
fn is_valid_pattern(pattern: &str) -> bool {
    matcher::validate_pattern(pattern).is_ok()
}

/// Raises 22023 with the reason when `event_type` is not a concrete event type.
#[pg_extern(immutable, strict, parallel_safe, name = "_check_event_type")]
pub(crate) fn check_event_type(event_type: &str) -> bool {
    if let Err(e) = matcher::validate_event_type(event_type) {
        EventBusError::InvalidEventType {
            value: truncate(event_type),
            reason: e.to_string(),
        }
        .raise();
    }
    true
}

/// Raises 22023 with the reason when `pattern` is not a valid subscription pattern.
#[pg_extern(immutable, strict, parallel_safe, name = "_check_pattern")]
fn check_pattern(pattern: &str) -> bool {
    if let Err(e) = matcher::validate_pattern(pattern) {
        EventBusError::InvalidPattern {
            value: truncate(pattern),
            reason: e.to_string(),
        }
        .raise();
    }
    true
}

/// Raises 22023 unless `url` is an absolute http(s) URL with a host and no credentials.
#[pg_extern(immutable, strict, parallel_safe, name = "_check_url")]
fn check_url(url: &str) -> bool {
    if let Err(reason) = validate_url(url) {
        EventBusError::InvalidUrl {
            value: truncate(url),
            reason,
        }
        .raise();
    }
    true
}

/// Body of `event_bus._check_broker_url(text)`: the subscription kind of a broker URL (amqp,
/// nats), or 22023 saying what is wrong — with the password masked.
#[pg_extern(sql = false)]
fn check_broker_url(url: &str) -> String {
    match crate::validate::parse_broker_url(url) {
        Ok(b) => b.kind().to_string(),
        Err(reason) => EventBusError::InvalidBrokerUrl {
            // the caller's own input: all of it but the password
            value: truncate(&crate::validate::hide_password(url)),
            reason,
        }
        .raise(),
    }
}

/// Body of `event_bus._mask_url(text)`: the URL's scheme and host only (what non-admins may see).
#[pg_extern(sql = false)]
fn mask_url(url: &str) -> String {
    crate::validate::mask_url(url)
}

/// Raises 22023 unless `headers` is an object of valid header names to single-line strings.
#[pg_extern(immutable, strict, parallel_safe, name = "_check_headers")]
fn check_headers(headers: JsonB) -> bool {
    if let Err(reason) = validate_headers(&headers.0) {
        EventBusError::InvalidHeaders { reason }.raise();
    }
    true
}

fn truncate(s: &str) -> String {
    if s.len() <= 300 {
        return s.to_string();
    }
    let mut end = 300;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Raises 22023 unless `secret` is usable for Standard Webhooks signing: `whsec_` + base64 of
/// 24..64 bytes, or any other non-empty text of at least 16 bytes (used as the raw key).
#[pg_extern(immutable, strict, parallel_safe, name = "_check_secret")]
fn check_secret(secret: &str) -> bool {
    if let Err(reason) = secret_key(secret) {
        EventBusError::InvalidSecret { reason }.raise();
    }
    true
}

/// The id of the delivery of `event_id` to `subscription_id` — its `webhook-id`. Deterministic,
/// so a fan-out redone after a crash produces the same id and receivers can deduplicate on it;
/// time-ordered like the event's UUIDv7 (its first 48 bits are the event's millisecond), the rest
/// a SHA-256 of both ids, as a version-8 UUID.
#[pg_extern(immutable, strict, parallel_safe, name = "_delivery_id")]
fn delivery_id(event_id: Uuid, subscription_id: Uuid) -> Uuid {
    Uuid::from_bytes(derive_delivery_id(
        event_id.as_bytes(),
        subscription_id.as_bytes(),
    ))
}

pub fn derive_delivery_id(event_id: &[u8; 16], subscription_id: &[u8; 16]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(event_id);
    h.update(subscription_id);
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&event_id[..6]);
    b[6..].copy_from_slice(&digest[..10]);
    b[6] = 0x80 | (b[6] & 0x0F); // version 8
    b[8] = 0x80 | (b[8] & 0x3F); // RFC 4122 variant
    b
}

#[cfg(test)]
mod delivery_id_tests {
    #[test]
    fn deterministic_time_ordered_and_distinct() {
        let e1 = *uuid::Uuid::now_v7().as_bytes();
        let s1 = *uuid::Uuid::new_v4().as_bytes();
        let s2 = *uuid::Uuid::new_v4().as_bytes();
        let a = super::derive_delivery_id(&e1, &s1);
        assert_eq!(a, super::derive_delivery_id(&e1, &s1));
        assert_ne!(a, super::derive_delivery_id(&e1, &s2));
        assert_eq!(&a[..6], &e1[..6]);
        let u = uuid::Uuid::from_bytes(a);
        assert_eq!(u.get_version_num(), 8);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
    }
}

/// Deliver due events now, in this session (seed 001's process_pending_events): for environments
/// without the background worker, for tests, and to drain a backlog by hand. HTTP requests are
/// sent from inside the caller's transaction and their outcomes recorded in it, so keep the
/// limit small; rolling back makes every attempt count as not made (they are redone later, with
/// the same webhook-id). Returns the number of deliveries attempted.
#[pg_extern(volatile, parallel_unsafe)]
fn process_pending_events(p_limit: pgrx::default!(i32, 100)) -> i32 {
    if !(1..=10_000).contains(&p_limit) {
        EventBusError::LimitOutOfRange { value: p_limit }.raise();
    }
    crate::worker::inline::process_now(p_limit as i64) as i32
}
