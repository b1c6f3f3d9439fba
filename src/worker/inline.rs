//! `process_pending_events(p_limit)`: the worker's pipeline run once in the calling session.

use super::dbworker::outdated_sql;
use super::deliver::{Dispatcher, Outcome};
use super::job::{ClaimSettings, Claimed, Job};
use super::sqlhandler;
use super::statements::claim::claim_and_fan_out;
use super::statements::record::{record, release, retry_delay, Finished, Rng};
use crate::guc;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// Process up to `limit` due deliveries now, in the calling session and transaction: new events
/// are fanned out, retries that are due are claimed, HTTP requests are sent (on threads, waiting
/// for each up to its timeout) and SQL handlers run, and the outcomes are recorded exactly as the
/// worker records them. Returns how many deliveries were attempted.
pub fn process_now(limit: i64) -> i64 {
    if let Some(installed) = outdated_sql() {
        pgrx::ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "event_bus: the extension's SQL is version {installed}, the library {}",
                env!("CARGO_PKG_VERSION")
            ),
            "Run ALTER EXTENSION event_bus UPDATE first."
        );
    }
    let settings = ClaimSettings::read();
    let jobs = claim_and_fan_out(limit, &settings, &[])
        .unwrap_or_else(|e| e.raise())
        .jobs;
    let attempted = jobs.len() as i64;
    let mut finished = Vec::with_capacity(jobs.len());
    let mut http = Vec::new();
    let mut sql = Vec::new();
    let mut unsent = Vec::new();
    for job in jobs {
        match job {
            Job::Http(c, req) => http.push((c, req)),
            Job::Failed(c, e) => finished.push(Finished {
                claimed: c,
                outcome: Outcome::failure(0, e, Duration::ZERO),
            }),
            Job::Sql(c, call) => sql.push((c, call)),
            Job::Duplicate(c, of) => finished.push(Finished {
                claimed: c,
                outcome: Outcome::duplicate(&of),
            }),
        }
    }
    if !sql.is_empty() {
        let outcomes = sqlhandler::run_batch(&sql, None);
        for ((claimed, _), outcome) in sql.into_iter().zip(outcomes) {
            finished.push(Finished { claimed, outcome });
        }
    }
    if !http.is_empty() {
        let idle = guc::MAX_IN_FLIGHT_PER_SUBSCRIPTION.get().max(8) as usize;
        let dispatcher = Dispatcher::start(guc::MAX_CONCURRENCY.get().max(1) as usize, idle)
            .unwrap_or_else(|e| {
                pgrx::error!("event_bus: cannot start the HTTP sender: {e}");
            });
        let mut waiting: HashMap<u64, Claimed> = HashMap::new();
        for (i, (c, mut req)) in http.into_iter().enumerate() {
            req.token = i as u64 + 1;
            waiting.insert(req.token, c);
            dispatcher.submit(req);
        }
        while !waiting.is_empty() {
            pg_sys::check_for_interrupts!();
            if let Some(o) = dispatcher.recv_timeout(Duration::from_millis(100)) {
                if let Some(c) = waiting.remove(&o.token) {
                    if o.sent {
                        finished.push(Finished {
                            claimed: c,
                            outcome: o,
                        });
                    } else {
                        unsent.push(c);
                    }
                }
            }
        }
    }
    if !finished.is_empty() {
        let mut rng = Rng::seeded();
        let delays: Vec<Duration> = finished
            .iter()
            .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
            .collect();
        record(&finished, &delays).unwrap_or_else(|e| e.raise());
    }
    if !unsent.is_empty() {
        // waited past their turn behind a slow endpoint: due again, not counted as attempts
        release(&unsent).unwrap_or_else(|e| e.raise());
    }
    attempted - unsent.len() as i64
}
