//! Request-reply: `event_bus.request` / `event_bus.try_request` (sql/api.sql) record the request
//! and its delivery, then call `_request_call` (here), which makes the one attempt now, in the
//! caller's session: a SQL handler in a subtransaction as its role (as the worker runs it), an HTTP
//! or Edge Function handler with the same signed CloudEvents request the worker sends, through a
//! sender thread this session keeps (so connections are reused between requests). The caller's
//! query can be cancelled while it waits.

use crate::worker::deliver::{Dispatcher, Outcome};
use crate::worker::job::{id_text, row_to_job, ClaimSettings, Job, JobColumns, JOB_COLUMNS};
use crate::worker::sqlhandler;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use std::cell::RefCell;
use std::time::{Duration, Instant};

thread_local! {
    /// This session's sender for HTTP requests, started by its first one.
    static SENDER: RefCell<Option<Dispatcher>> = const { RefCell::new(None) };
    static NEXT_TOKEN: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
}

/// Is this outcome a timeout? Both attempt kinds say "timed out after N ms" (sqlhandler::run_one,
/// deliver::perform).
fn timed_out(o: &Outcome) -> bool {
    !o.success
        && o.error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after"))
}

/// The job of one delivery, as the worker's claim would build it.
fn job_of(delivery_id: Uuid) -> Option<Job> {
    let settings = ClaimSettings::read();
    Spi::connect(|client| {
        let sql = format!(
            "SELECT {JOB_COLUMNS}
               FROM event_bus.module_event_deliveries d
               JOIN event_bus.module_events e ON e.id = d.event_id
               JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
              WHERE d.id = $1::uuid"
        );
        let args = settings.args(1, &[]);
        let mut args: Vec<pgrx::datum::DatumWithOid> = args.into_iter().collect();
        args[0] = delivery_id.into();
        let table = client.select(sql.as_str(), Some(1), &args)?;
        if table.is_empty() {
            return Ok(None);
        }
        let cols = JobColumns::of(&table)?;
        match table.into_iter().next() {
            Some(row) => Ok(Some(row_to_job(&row, &cols, &settings)?)),
            None => Ok(None),
        }
    })
    .unwrap_or_else(|e: pgrx::spi::Error| {
        error!("event_bus: could not read the request's delivery: {e}")
    })
}

/// Send one HTTP request through this session's sender and wait for its outcome, checking for
/// a cancel every 20 ms.
fn send_http(mut req: crate::worker::deliver::Request, timeout: Duration) -> Outcome {
    let token = NEXT_TOKEN.with(|t| {
        let v = t.get();
        t.set(v + 1);
        v
    });
    req.token = token;
    req.timeout = timeout;
    req.wait_limit = timeout;
    SENDER.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            *s = Some(Dispatcher::start(4, 4).unwrap_or_else(|e| {
                error!("event_bus: cannot start the HTTP sender for requests: {e}")
            }));
        }
        let sender = s.as_ref().expect("started above");
        // outcomes of requests an earlier cancel abandoned are dropped on the way
        sender.submit(req);
        let started = Instant::now();
        // the sender's own timeout ends the attempt; this bound only guards against a lost one
        let guard = timeout + Duration::from_secs(5);
        loop {
            pg_sys::check_for_interrupts!();
            if let Some(o) = sender.recv_timeout(Duration::from_millis(20)) {
                if o.token == token {
                    return if o.sent {
                        o
                    } else {
                        Outcome::failure(
                            token,
                            format!("timed out after {} ms: not sent", timeout.as_millis()),
                            started.elapsed(),
                        )
                    };
                }
            }
            if started.elapsed() > guard {
                return Outcome::failure(
                    token,
                    format!(
                        "timed out after {} ms: no answer from the sender",
                        timeout.as_millis()
                    ),
                    started.elapsed(),
                );
            }
        }
    })
}

/// Body of `event_bus._request_call(uuid, integer)`: the one attempt of a request's delivery,
/// now. Returns {"success", "http_status", "response", "error", "timed_out", "duration_ms"}.
#[pg_extern(sql = false)]
fn request_call(delivery_id: Uuid, timeout_ms: i32) -> JsonB {
    let timeout = Duration::from_millis(timeout_ms.max(1) as u64);
    let outcome = match job_of(delivery_id) {
        None => Outcome::failure(
            0,
            "the request's delivery does not exist".into(),
            Duration::ZERO,
        ),
        Some(Job::Sql(claimed, mut call)) => {
            call.timeout_ms = timeout_ms.max(1);
            let (event, subscription) = (
                id_text(&claimed.event_id),
                id_text(&claimed.subscription_id),
            );
            let calls = [(event.as_str(), subscription.as_str(), &call)];
            sqlhandler::run_calls(&calls, None)
                .pop()
                .unwrap_or_else(|| {
                    Outcome::failure(0, "the SQL handler did not run".into(), Duration::ZERO)
                })
        }
        Some(Job::Http(_, req)) => send_http(req, timeout),
        Some(Job::Failed(_, e)) => Outcome::failure(0, e, Duration::ZERO),
        Some(Job::Duplicate(_, of)) => Outcome::duplicate(&of),
    };
    let response: Option<serde_json::Value> = outcome
        .response
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    JsonB(serde_json::json!({
        "success": outcome.success,
        "http_status": outcome.http_status,
        "response": response,
        "error": outcome.error.as_ref().map(|e| e.chars().take(2000).collect::<String>()),
        "timed_out": timed_out(&outcome),
        "duration_ms": outcome.duration.as_secs_f64() * 1000.0,
    }))
}
