//! HTTP delivery: a pool of threads that send requests and report outcomes. Knows nothing of
//! Postgres — no pgrx call may happen on these threads. The worker's main thread submits
//! [`Request`]s and collects [`Outcome`]s; each finished request writes a byte to a pipe the main
//! thread waits on (next to its latch), so results are recorded as soon as they arrive.

use crate::netpolicy::Networks;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Request {
    /// Caller's handle for the outcome (index into its in-flight table).
    pub token: u64,
    /// The delivery id: `webhook-id`, the same on every attempt.
    pub webhook_id: String,
    pub url: String,
    pub body: String,
    pub headers: Vec<(String, String)>,
    /// HMAC key; `None` = unsigned.
    pub secret_key: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub follow_redirects: bool,
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub token: u64,
    pub success: bool,
    pub http_status: Option<u16>,
    /// Response body as JSON text: the body itself if it is JSON, else `{"body": "..."}`.
    pub response: Option<String>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub duration: Duration,
}

impl Outcome {
    /// A failed attempt that got no response.
    pub fn failure(token: u64, error: String, duration: Duration) -> Outcome {
        Outcome {
            token,
            success: false,
            http_status: None,
            response: None,
            error: Some(error),
            retry_after: None,
            duration,
        }
    }
}

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

/// Full-jitter exponential backoff: a uniformly random delay in [0, min(cap, base * 2^(attempt-1))],
/// at least `retry_after` when the server asked for it. `attempt` is the number of the attempt
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
    let mut delay = Duration::from_millis(jittered);
    if let Some(ra) = retry_after {
        // honoured, but never beyond a day
        delay = delay.max(ra.min(Duration::from_secs(86_400)));
    }
    delay
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn perform(agent: &ureq::Agent, no_redirect_agent: &ureq::Agent, req: &Request) -> Outcome {
    let started = Instant::now();
    let timestamp = unix_now();
    let agent = if req.follow_redirects {
        agent
    } else {
        no_redirect_agent
    };
    let mut r = agent
        .post(&req.url)
        .timeout(req.timeout)
        .set(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .set(
            "user-agent",
            concat!("event_bus/", env!("CARGO_PKG_VERSION")),
        )
        .set("webhook-id", &req.webhook_id)
        .set("webhook-timestamp", &timestamp.to_string());
    if let Some(key) = &req.secret_key {
        r = r.set(
            "webhook-signature",
            &sign(key, &req.webhook_id, timestamp, &req.body),
        );
    }
    for (k, v) in &req.headers {
        r = r.set(k, v);
    }
    let result = r.send_string(&req.body);
    let resp = match result {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => Ok(resp),
        Err(ureq::Error::Transport(t)) => Err(t),
    };
    match resp {
        Ok(resp) => {
            let status = resp.status();
            let retry_after = resp
                .header("retry-after")
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let location = resp.header("location").map(|s| s.to_string());
            let mut body = Vec::new();
            let cap = req.max_response_bytes;
            let read = resp
                .into_reader()
                .take(cap as u64 + 1)
                .read_to_end(&mut body);
            let truncated = body.len() > cap;
            body.truncate(cap);
            let success = (200..300).contains(&status);
            let mut error = None;
            if let Err(e) = read {
                error = Some(format!("reading the response failed: {e}"));
            }
            if !success {
                error = Some(match (status, location) {
                    (300..=399, Some(loc)) => format!(
                        "HTTP {status} redirect to {loc} not followed (set event_bus.follow_redirects to follow)"
                    ),
                    _ => format!("HTTP {status}"),
                });
            }
            Outcome {
                token: req.token,
                success: success && error.is_none(),
                http_status: Some(status),
                response: if cap == 0 {
                    None
                } else {
                    Some(response_json(&body, truncated))
                },
                error,
                retry_after,
                duration: started.elapsed(),
            }
        }
        Err(t) => {
            let elapsed = started.elapsed();
            let msg = t.to_string();
            let timed_out =
                msg.contains("timed out") || msg.contains("Timeout") || elapsed >= req.timeout;
            let error = if timed_out {
                format!("timed out after {} ms: {msg}", req.timeout.as_millis())
            } else {
                msg
            };
            Outcome::failure(req.token, error, elapsed)
        }
    }
}

/// `event_bus.allowed_networks` as the HTTP threads see it (set by the worker's main thread).
static ALLOWED: RwLock<Option<Arc<Networks>>> = RwLock::new(None);

/// Apply a new `event_bus.allowed_networks` to requests from now on.
pub fn set_allowed_networks(networks: &Networks) {
    let mut current = ALLOWED.write().unwrap_or_else(|e| e.into_inner());
    if current.as_deref() != Some(networks) {
        *current = Some(Arc::new(networks.clone()));
    }
}

/// Resolves host names and keeps only the addresses `event_bus.allowed_networks` allows — also
/// for IP literals and redirects, since every connection goes through it.
struct PolicyResolver;

impl ureq::Resolver for PolicyResolver {
    fn resolve(&self, netloc: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
        use std::net::ToSocketAddrs;
        let all: Vec<std::net::SocketAddr> = netloc.to_socket_addrs()?.collect();
        let networks = ALLOWED.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(networks) = networks.filter(|n| !n.is_open()) else {
            return Ok(all);
        };
        let allowed: Vec<std::net::SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| networks.allows(a.ip()))
            .collect();
        if allowed.is_empty() && !all.is_empty() {
            let list: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{netloc} is {}, outside event_bus.allowed_networks",
                    list.join(", ")
                ),
            ));
        }
        Ok(allowed)
    }
}

/// The thread pool. Dropping it closes the queue; threads finish their current request and exit.
pub struct Dispatcher {
    tx: Option<Sender<Request>>,
    results: Receiver<Outcome>,
    wake_read: OwnedFd,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Dispatcher {
    /// Start `threads` sender threads. Signals are blocked on them, so every signal keeps going
    /// to the Postgres main thread.
    pub fn start(threads: usize, idle_per_host: usize) -> std::io::Result<Dispatcher> {
        let (tx, rx) = channel::<Request>();
        let rx = Arc::new(Mutex::new(rx));
        let (res_tx, results) = channel::<Outcome>();
        let (wake_read, wake_write) = pipe()?;
        let wake_write = Arc::new(wake_write);
        let build = |redirects: u32| {
            ureq::AgentBuilder::new()
                .redirects(redirects)
                .max_idle_connections(idle_per_host.max(1) * 4)
                .max_idle_connections_per_host(idle_per_host.max(1))
                .timeout_connect(Duration::from_secs(10))
                .resolver(PolicyResolver)
                .no_delay(true)
                .build()
        };
        let agent = build(5);
        let no_redirect = build(0);

        // block all signals while spawning so the threads inherit a full mask
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        let mut handles = Vec::with_capacity(threads);
        let mut spawn_err = None;
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let res_tx = res_tx.clone();
            let wake = Arc::clone(&wake_write);
            let agent = agent.clone();
            let no_redirect = no_redirect.clone();
            let h = std::thread::Builder::new()
                .name(format!("event_bus-http-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || loop {
                    let next = { rx.lock().map(|r| r.recv()) };
                    let req = match next {
                        Ok(Ok(req)) => req,
                        _ => return,
                    };
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        perform(&agent, &no_redirect, &req)
                    }))
                    .unwrap_or_else(|_| {
                        Outcome::failure(
                            req.token,
                            "internal error in the HTTP client".into(),
                            Duration::ZERO,
                        )
                    });
                    if res_tx.send(outcome).is_err() {
                        return;
                    }
                    let b = [1u8];
                    unsafe { libc::write(wake.as_raw_fd(), b.as_ptr() as *const _, 1) };
                });
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    spawn_err = Some(e);
                    break;
                }
            }
        }
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        if let Some(e) = spawn_err {
            if handles.is_empty() {
                return Err(e);
            }
        }
        Ok(Dispatcher {
            tx: Some(tx),
            results,
            wake_read,
            threads: handles,
        })
    }

    pub fn submit(&self, req: Request) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(req);
        }
    }

    /// The fd that becomes readable when an outcome is ready.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_read.as_raw_fd()
    }

    /// Finished outcomes, without blocking.
    pub fn drain(&self) -> Vec<Outcome> {
        let mut buf = [0u8; 256];
        while unsafe {
            libc::read(
                self.wake_read.as_raw_fd(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
            )
        } > 0
        {}
        let mut out = Vec::new();
        loop {
            match self.results.try_recv() {
                Ok(o) => out.push(o),
                Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Wait up to `timeout` for one more outcome (used at shutdown only).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Outcome> {
        self.results.recv_timeout(timeout).ok()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.tx.take();
        // threads stuck in a slow request are detached, not joined: they own nothing of Postgres
        self.threads.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(backoff(3, 1000, 60_000, None, 0.0), Duration::ZERO);
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
