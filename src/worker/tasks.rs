//! What a delivery worker's round runs besides claiming and recording (src/worker/dbworker.rs): a slice
//! of SQL handlers, the upkeep, and the hand-back at shutdown.

use super::deliver::{Dispatcher, Outcome};
use super::job::{batch_memory, Claimed};
use super::schedule::{Scheduler, SqlJob};
use super::statements::record::{record, release, retry_delay, Finished, Rng};
use super::statements::session;
use super::{in_transaction, in_transaction_try, log, sqlhandler};
use std::time::{Duration, Instant};

/// How long SQL handlers run before the loop looks after everything else again (a handler that
/// runs longer is not interrupted, but no further one starts).
const SQL_SLICE: Duration = Duration::from_millis(20);

/// Run queued SQL handlers, subscriptions taking turns, in one transaction, until SQL_SLICE has
/// passed (at least one runs). Each handler is its own subtransaction; outcomes go to `finished`,
/// calls that did not get to run back to the scheduler.
pub(super) fn run_sql_slice(sched: &mut Scheduler, finished: &mut Vec<Finished>) {
    // calls whose events are read in one query (run_batch stops at the deadline within one)
    const CHUNK: usize = 512;
    let deadline = Instant::now() + SQL_SLICE;
    let mut ran: Vec<SqlJob> = Vec::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut left: Vec<SqlJob> = Vec::new();
    let result = in_transaction("running SQL handlers", || {
        while ran.is_empty() || Instant::now() < deadline {
            let chunk = sched.take_sql(CHUNK, batch_memory());
            if chunk.is_empty() {
                break;
            }
            // counted as run before they run: an error that aborts the transaction fails them
            let start = ran.len();
            ran.extend(chunk);
            let calls: Vec<(Claimed, sqlhandler::Call)> = ran[start..]
                .iter()
                .map(|w| (w.claimed.clone(), w.work.clone()))
                .collect();
            let done = sqlhandler::run_batch(&calls, Some(deadline));
            let n = done.len().min(calls.len());
            outcomes.extend(done);
            left.extend(ran.split_off(start + n));
            if !left.is_empty() {
                break;
            }
        }
    });
    sched.requeue_sql(left);
    for (i, w) in ran.into_iter().enumerate() {
        let outcome = match (&result, outcomes.get(i)) {
            (Ok(()), Some(o)) => o.clone(),
            (Err(e), _) => Outcome::failure(0, e.clone(), Duration::ZERO),
            (Ok(()), None) => {
                Outcome::failure(0, "the SQL handler did not run".into(), Duration::ZERO)
            }
        };
        if result.is_ok() {
            sched.sql_ran(&w.claimed.subscription_id, outcome.duration);
        }
        finished.push(Finished {
            claimed: w.claimed,
            outcome,
        });
    }
}

/// Upkeep between batches: breaker probes and releases, and retention in batches of
/// MAINTENANCE_BATCH (each its own transaction, at most 10 per round). Returns the time until
/// the next round: a second, or a minute after an error (a bad event_bus.retention, say).
pub(super) fn maintenance() -> Duration {
    const MAINTENANCE_BATCH: i64 = 1000;
    for _ in 0..10 {
        match in_transaction_try("maintenance", || session::maintenance(MAINTENANCE_BATCH)) {
            Ok(n) if n >= MAINTENANCE_BATCH => continue,
            Ok(_) => return Duration::from_secs(1),
            Err(e) => {
                log(&format!("event_bus worker: {e}; next try in a minute"));
                return Duration::from_secs(60);
            }
        }
    }
    Duration::ZERO
}

/// On SIGTERM: give requests in flight a moment, record what finished, hand the rest back so the
/// next worker retries them at once instead of waiting for their leases.
pub(super) fn shutdown(
    dispatcher: &Dispatcher,
    sched: &mut Scheduler,
    mut finished: Vec<Finished>,
) {
    let deadline = Instant::now() + Duration::from_millis(1000);
    let mut unfinished = Vec::new();
    while sched.in_flight() > 0 && Instant::now() < deadline {
        if let Some(o) = dispatcher.recv_timeout(Duration::from_millis(50)) {
            if let Some(claimed) = sched.complete(&o) {
                if o.sent {
                    finished.push(Finished {
                        claimed,
                        outcome: o,
                    });
                } else {
                    unfinished.push(claimed);
                }
            }
        }
    }
    let mut rng = Rng::seeded();
    let delays: Vec<Duration> = finished
        .iter()
        .map(|f| retry_delay(&f.claimed, &f.outcome, &mut rng))
        .collect();
    unfinished.extend(sched.unfinished());
    let r = in_transaction_try("recording outcomes at shutdown", || {
        if !finished.is_empty() {
            record(&finished, &delays)?;
        }
        if !unfinished.is_empty() {
            release(&unfinished)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        log(&format!(
            "event_bus worker: {e}; leases will expire instead"
        ));
    }
}
