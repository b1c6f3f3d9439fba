//! HTTP delivery on non-blocking I/O: one thread runs an async runtime (tokio, one thread) that
//! keeps requests in flight on keep-alive connection pools, and reports outcomes. Knows nothing of
//! Postgres — no pgrx call may happen on that thread. The worker's main thread submits
//! [`Request`]s and collects [`Outcome`]s; each finished request writes a byte to a pipe the main
//! thread waits on (next to its latch), so outcomes are recorded as they arrive.
//!
//! Shares: each request belongs to a group (its subscription) with at most `per_group` requests
//! in flight, and the sender has at most `max_in_flight` in all; requests wait for their turn here,
//! in order, so a slow or silent endpoint holds its own share and never the others' — and sending
//! goes on while the main thread is busy (a SQL handler, a claim). A request that waited longer
//! than its `wait_limit` comes back unsent ([`Outcome::sent`] false) for its lease to be returned.

use crate::netpolicy::Networks;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// What one request weighs in the shares (`per_group` and the sender's `max_in_flight` count
/// requests). A Kafka message weighs one unit, a sixteenth of a request: a partition's messages
/// travel together in one produce request, so a Kafka subscription keeps sixteen times as many
/// messages in flight as an HTTP one keeps requests, in the same share (a broker that stops
/// answering still holds only its own share).
pub const REQUEST_UNITS: u32 = 16;

/// What an attempt to this target weighs in the shares.
pub fn units_of(url: &str) -> u32 {
    if crate::validate::is_kafka_url(url) {
        1
    } else {
        REQUEST_UNITS
    }
}

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
    /// Its share: the group (the subscription) and how many of the group may be in flight.
    pub group: String,
    pub per_group: usize,
    /// What it weighs in the shares, in units of which a request is [`REQUEST_UNITS`].
    pub units: u32,
    /// How long it may wait for its turn before it comes back unsent.
    pub wait_limit: Duration,
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
    /// False: never sent (it waited past its wait limit); not an attempt.
    pub sent: bool,
}

impl Outcome {
    /// A delivery completed without calling its handler: its idempotency key was handled by
    /// delivery `of` within the subscription's window.
    pub fn duplicate(of: &str) -> Outcome {
        Outcome {
            token: 0,
            success: true,
            http_status: None,
            response: Some(
                serde_json::json!({ "duplicate_of": of, "note": format!("duplicate of {of}") })
                    .to_string(),
            ),
            error: None,
            retry_after: None,
            duration: Duration::ZERO,
            sent: true,
        }
    }

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
            sent: true,
        }
    }

    fn unsent(token: u64) -> Outcome {
        Outcome {
            sent: false,
            ..Outcome::failure(
                token,
                "not sent: waited too long for its turn".into(),
                Duration::ZERO,
            )
        }
    }
}

// The protocol's pure parts (signing, Retry-After, response excerpts, backoff) are in the core
// crate, tested there without Postgres.
pub use event_bus_core::webhook::{backoff, parse_retry_after, response_json, sign};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An error with its causes, one after the other ("error sending request: ...: Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    msg
}

/// The two clients: one follows redirects (up to 5, each target checked against the network
/// policy), one never does.
#[derive(Clone)]
struct Clients {
    follow: reqwest::Client,
    no_follow: reqwest::Client,
    /// Broker connections (RabbitMQ, NATS JetStream): targets with a broker URL.
    brokers: super::broker::Brokers,
}

impl Clients {
    fn build(idle_per_host: usize) -> Result<Clients, String> {
        let build = |follow: bool| {
            let policy = if follow {
                reqwest::redirect::Policy::custom(|attempt| {
                    if attempt.previous().len() >= 5 {
                        return attempt.error("more than 5 redirects");
                    }
                    match ip_literal_refused(attempt.url()) {
                        Some(e) => attempt.error(e),
                        None => attempt.follow(),
                    }
                })
            } else {
                reqwest::redirect::Policy::none()
            };
            reqwest::Client::builder()
                .redirect(policy)
                .pool_max_idle_per_host(idle_per_host.max(1))
                .pool_idle_timeout(Duration::from_secs(60))
                .connect_timeout(Duration::from_secs(10))
                .tcp_nodelay(true)
                .no_proxy()
                .dns_resolver(Arc::new(PolicyResolver))
                .build()
                .map_err(|e| error_chain(&e))
        };
        Ok(Clients {
            follow: build(true)?,
            no_follow: build(false)?,
            brokers: super::broker::Brokers::default(),
        })
    }
}

/// One attempt, its error and response excerpt free of the target's secrets: readers and
/// operators see both, and targets are for admins alone ([`crate::validate::redact_target`]).
async fn perform(clients: &Clients, req: Request) -> Outcome {
    use crate::validate::{redact_response, redact_target};
    let target = req.url.clone();
    let mut outcome = attempt(clients, req).await;
    outcome.error = outcome.error.map(|e| redact_target(&e, &target));
    outcome.response = outcome.response.map(|r| redact_response(r, &target));
    outcome
}

async fn attempt(clients: &Clients, mut req: Request) -> Outcome {
    if crate::validate::is_broker_url(&req.url) {
        return super::broker::publish(&clients.brokers, req).await;
    }
    // The benchmark's null-sink build (cargo feature bench-null-sink, which no package or
    // install enables): every HTTP attempt succeeds at once without I/O, with a web server's answer, so
    // bench/run.sh shows the Postgres-only ceiling of the same code and the HTTP side's share.
    if cfg!(feature = "bench-null-sink") {
        return Outcome {
            token: req.token,
            success: true,
            http_status: Some(200),
            response: Some(r#"{"ok":true}"#.into()),
            error: None,
            retry_after: None,
            duration: Duration::ZERO,
            sent: true,
        };
    }
    let started = Instant::now();
    let timestamp = unix_now();
    if let Some(refused) = url::Url::parse(&req.url)
        .ok()
        .and_then(|u| ip_literal_refused(&u))
    {
        return Outcome::failure(req.token, refused, started.elapsed());
    }
    let client = if req.follow_redirects {
        &clients.follow
    } else {
        &clients.no_follow
    };
    let mut r = client
        .post(&req.url)
        .timeout(req.timeout)
        .header(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        )
        .header(
            "user-agent",
            concat!("event_bus/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &req.webhook_id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = &req.secret_key {
        r = r.header(
            "webhook-signature",
            sign(key, &req.webhook_id, timestamp, &req.body),
        );
    }
    for (k, v) in &req.headers {
        r = r.header(k.as_str(), v.as_str());
    }
    let timed_out = |msg: String| format!("timed out after {} ms: {msg}", req.timeout.as_millis());
    // the body moves into the request (it was signed above)
    let mut resp = match r.body(std::mem::take(&mut req.body)).send().await {
        Ok(resp) => resp,
        Err(e) => {
            let is_timeout = e.is_timeout();
            let msg = error_chain(&e.without_url());
            let error = if is_timeout || started.elapsed() >= req.timeout {
                timed_out(msg)
            } else {
                msg
            };
            return Outcome::failure(req.token, error, started.elapsed());
        }
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    // read no more than the cap (+1 to know it was cut); the rest is never read
    let cap = req.max_response_bytes;
    let mut body = Vec::new();
    let mut read_error = None;
    while body.len() <= cap {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk[..chunk.len().min(cap + 1 - body.len())])
            }
            Ok(None) => break,
            Err(e) => {
                let is_timeout = e.is_timeout();
                let msg = error_chain(&e.without_url());
                read_error = Some(if is_timeout {
                    timed_out(format!("reading the response: {msg}"))
                } else {
                    format!("reading the response failed: {msg}")
                });
                break;
            }
        }
    }
    let truncated = body.len() > cap;
    body.truncate(cap);
    let success = (200..300).contains(&status);
    let mut error = read_error;
    if !success {
        error = Some(match (status, location) {
            (300..=399, Some(loc)) => format!(
                "HTTP {status} redirect to {} not followed (set event_bus.follow_redirects to follow)",
                url::Url::parse(&req.url)
                    .and_then(|base| base.join(&loc))
                    .map(|u| crate::validate::mask_url(u.as_str()))
                    .unwrap_or_else(|_| "an unparseable location".into())
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
        sent: true,
    }
}

/// `event_bus.allowed_networks` as the I/O thread sees it (set by the worker's main thread).
static ALLOWED: RwLock<Option<Arc<Networks>>> = RwLock::new(None);

/// Apply a new `event_bus.allowed_networks` to requests from now on.
pub fn set_allowed_networks(networks: &Networks) {
    let mut current = ALLOWED.write().unwrap_or_else(|e| e.into_inner());
    if current.as_deref() != Some(networks) {
        *current = Some(Arc::new(networks.clone()));
    }
}

/// The policy in force, unless it allows everything.
pub(super) fn policy() -> Option<Arc<Networks>> {
    ALLOWED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .filter(|n| !n.is_open())
}

/// Why a URL whose host is an IP literal may not be reached (host names go through the
/// resolver below; IP literals never reach a resolver).
fn ip_literal_refused(url: &url::Url) -> Option<String> {
    let ip: std::net::IpAddr = match url.host()? {
        url::Host::Ipv4(a) => a.into(),
        url::Host::Ipv6(a) => a.into(),
        url::Host::Domain(_) => return None,
    };
    let networks = policy()?;
    (!networks.allows(ip)).then(|| format!("{ip} is outside event_bus.allowed_networks"))
}

/// Resolves host names and keeps only the addresses `event_bus.allowed_networks` allows, so a
/// name that points inside a forbidden network is refused at connect time (redirects included).
struct PolicyResolver;

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let Some(networks) = policy() else {
                return Ok(Box::new(all.into_iter()) as reqwest::dns::Addrs);
            };
            let allowed: Vec<std::net::SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| networks.allows(a.ip()))
                .collect();
            if allowed.is_empty() && !all.is_empty() {
                let list: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} is {}, outside event_bus.allowed_networks",
                    list.join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The groups' shares, by group name; a group's share is made anew when its size changes, and
/// groups with nothing in flight or waiting are forgotten now and then.
#[derive(Default)]
struct Groups {
    map: HashMap<String, (usize, Arc<Semaphore>)>,
    since_tidy: usize,
}

impl Groups {
    fn get(&mut self, name: &str, size: usize) -> Arc<Semaphore> {
        self.since_tidy += 1;
        if self.since_tidy >= 10_000 {
            self.since_tidy = 0;
            // in use: a task holds a clone, or permits are out
            self.map
                .retain(|_, (n, s)| Arc::strong_count(s) > 1 || s.available_permits() < *n);
        }
        let size = size.max(1) * REQUEST_UNITS as usize;
        let entry = self
            .map
            .entry(name.to_string())
            .or_insert_with(|| (size, Arc::new(Semaphore::new(size))));
        if entry.0 != size {
            *entry = (size, Arc::new(Semaphore::new(size)));
        }
        Arc::clone(&entry.1)
    }
}

/// The sender: one I/O thread with its runtime. Dropping it closes the queue; the runtime stops
/// and requests still in flight are abandoned (their leases bring them back).
pub struct Dispatcher {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Request>>,
    results: Receiver<Outcome>,
    wake_read: OwnedFd,
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
    /// Start the I/O thread, keeping up to `idle_per_host` idle connections per host. Signals
    /// are blocked on it, so every signal keeps going to the Postgres main thread.
    pub fn start(max_in_flight: usize, idle_per_host: usize) -> std::io::Result<Dispatcher> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (res_tx, results) = channel::<Outcome>();
        let (wake_read, wake_write) = pipe()?;
        let wake_write = Arc::new(wake_write);
        // every request in flight may go to the same host: keep as many connections
        let pool_size = idle_per_host.max(max_in_flight);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let all = Arc::new(Semaphore::new(
            max_in_flight.max(1) * REQUEST_UNITS as usize,
        ));

        // block all signals while spawning so the thread inherits a full mask
        let mut full_mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut full_mask);
            libc::pthread_sigmask(libc::SIG_SETMASK, &full_mask, &mut old);
        }
        let spawned = std::thread::Builder::new()
            .name("event_bus-io".into())
            .spawn(move || {
                // built here, not by the caller: loading the TLS roots takes a while, and a worker
                // started for a database's first event claims it meanwhile
                let clients = match Clients::build(pool_size) {
                    Ok(c) => c,
                    Err(e) => {
                        // every request fails with why, as an attempt (the worker logs it)
                        while let Some(req) = rx.blocking_recv() {
                            let o = Outcome::failure(
                                req.token,
                                format!("cannot build the HTTP client: {e}"),
                                Duration::ZERO,
                            );
                            if res_tx.send(o).is_ok() {
                                let b = [1u8];
                                unsafe {
                                    libc::write(wake_write.as_raw_fd(), b.as_ptr() as *const _, 1)
                                };
                            }
                        }
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut groups = Groups::default();
                    while let Some(req) = rx.recv().await {
                        let group = groups.get(&req.group, req.per_group);
                        let all = Arc::clone(&all);
                        let clients = clients.clone();
                        let res_tx = res_tx.clone();
                        let wake = Arc::clone(&wake_write);
                        tokio::spawn(async move {
                            let token = req.token;
                            let units = req.units;
                            let turn = tokio::time::timeout(req.wait_limit, async move {
                                let mine = group.acquire_many_owned(units).await;
                                let any = all.acquire_many_owned(units).await;
                                (mine, any)
                            })
                            .await;
                            let outcome = match turn {
                                Ok((Ok(mine), Ok(any))) => {
                                    // a panic inside the client ends its own task only
                                    let outcome =
                                        match tokio::spawn(
                                            async move { perform(&clients, req).await },
                                        )
                                        .await
                                        {
                                            Ok(o) => o,
                                            Err(_) => Outcome::failure(
                                                token,
                                                "internal error in the HTTP client".into(),
                                                Duration::ZERO,
                                            ),
                                        };
                                    drop((mine, any));
                                    outcome
                                }
                                _ => Outcome::unsent(token),
                            };
                            if res_tx.send(outcome).is_ok() {
                                let b = [1u8];
                                unsafe { libc::write(wake.as_raw_fd(), b.as_ptr() as *const _, 1) };
                            }
                        });
                    }
                });
            });
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        spawned?;
        Ok(Dispatcher {
            tx: Some(tx),
            results,
            wake_read,
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

    /// Wait up to `timeout` for one more outcome (shutdown and in-session processing).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Outcome> {
        self.results.recv_timeout(timeout).ok()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // the I/O thread's loop ends with its queue; it owns nothing of Postgres
        self.tx.take();
    }
}
