//! The webhook protocol's pure parts: the Standard Webhooks signature, `Retry-After`, how a
//! response is kept in the attempt log, and the retry backoff. No Postgres, no I/O.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime};

/// Standard Webhooks signature header value: `v1,<base64(HMAC-SHA256(id.timestamp.body))>`.
pub fn sign(key: &[u8], webhook_id: &str, timestamp: u64, body: &str) -> String {
    // HMAC takes keys of any length; the error arm cannot happen, and signs nothing if it did
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(webhook_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Parse `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Turn a response body into JSON text for the log: JSON stays JSON, anything else is wrapped.
pub fn response_json(body: &[u8], truncated: bool) -> String {
    if !truncated {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            return v.to_string();
        }
    }
    let text = String::from_utf8_lossy(body);
    serde_json::json!({ "body": text, "truncated": truncated }).to_string()
}

/// Full-jitter exponential backoff: a uniformly random delay in [1 ms, min(cap, base * 2^(attempt-1))],
/// at least `retry_after` when the server asked for it. Never zero: a failed attempt is not due
/// again in the instant it failed (within one transaction `now()` does not move, so a zero delay
/// would make `process_pending_events` retry it in the same call). `attempt` is the number of the attempt
/// that just failed, from 1; `random` is a uniform sample in [0, 1).
pub fn backoff(
    attempt: i32,
    base_ms: u64,
    cap_ms: u64,
    retry_after: Option<Duration>,
    random: f64,
) -> Duration {
    let exp = attempt.saturating_sub(1).clamp(0, 40) as u32;
    let ceiling = base_ms
        .saturating_mul(1u64 << exp.min(40))
        .min(cap_ms.max(1));
    let jittered = (ceiling as f64 * random.clamp(0.0, 1.0)) as u64;
    let mut delay = Duration::from_millis(jittered.max(1));
    if let Some(ra) = retry_after {
        // honoured, but never beyond a day
        delay = delay.max(ra.min(Duration::from_secs(86_400)));
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn signature_matches_the_standard_webhooks_reference_vector() {
        // from the Standard Webhooks specification's test vectors
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 1..20 {
            let d = backoff(attempt, 1000, 60_000, None, 0.999_999);
            let ceiling = (1000u64 << (attempt - 1).min(30)).min(60_000);
            assert!(d.as_millis() as u64 <= ceiling, "attempt {attempt}: {d:?}");
            assert!(
                d.as_millis() as u64 >= ceiling - 1 - ceiling / 1000,
                "attempt {attempt}: {d:?}"
            );
        }
        assert_eq!(
            backoff(3, 1000, 60_000, None, 0.0),
            Duration::from_millis(1)
        );
        assert_eq!(
            backoff(1, 1000, 60_000, None, 0.000_999),
            Duration::from_millis(1)
        );
        assert_eq!(
            backoff(1, 1000, 60_000, Some(Duration::from_secs(5)), 0.5),
            Duration::from_secs(5)
        );
        assert_eq!(
            backoff(1, 1000, 60_000, Some(Duration::from_secs(10_000_000)), 0.5),
            Duration::from_secs(86_400)
        );
        // huge attempt numbers do not overflow
        assert_eq!(
            backoff(i32::MAX, u64::MAX / 2, 60_000, None, 0.999_999).as_millis() / 1000,
            59
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(now + Duration::from_secs(30)), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn responses_are_stored_as_json() {
        assert_eq!(response_json(br#"{"ok":true}"#, false), r#"{"ok":true}"#);
        assert_eq!(
            response_json(b"plain", false),
            r#"{"body":"plain","truncated":false}"#
        );
        assert_eq!(
            response_json(br#"{"ok":tr"#, true),
            r#"{"body":"{\"ok\":tr","truncated":true}"#
        );
    }
}
