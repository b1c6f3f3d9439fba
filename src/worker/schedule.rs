//! The worker's bookkeeping of what it holds: claimed HTTP requests handed to the sender (which
//! keeps each subscription to its share, see `deliver.rs`), and SQL handler calls waiting for the
//! main thread, per subscription.
//!
//! - SQL handlers run on the worker's main thread, one at a time, subscriptions taking turns.
//! - A subscription is "full" when this worker holds more of it than it can finish soon: HTTP
//!   requests past its share that would wait more than [`FULL_AFTER`] (from its requests' average
//!   time; a share's worth when none has come back yet: a silent endpoint), or SQL calls worth
//!   more than [`FULL_AFTER`] of run time. Claims leave a full subscription's deliveries in the
//!   table, for this worker later or for another one.
//! - A SQL call that waits longer than `stale_after` goes back to the table (its lease must not
//!   run out while it waits); the sender does the same for requests.

use super::deliver::{Dispatcher, Outcome};
use super::job::{Claimed, Id, Job};
use super::sqlhandler::Call;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How much waiting work one subscription may have in this worker before claims skip it.
pub const FULL_AFTER: Duration = Duration::from_secs(1);

pub struct Waiting<W> {
    pub claimed: Claimed,
    pub work: W,
    since: Instant,
}

/// A SQL handler call waiting to run.
pub type SqlJob = Waiting<Call>;

#[derive(Default)]
struct Subscription {
    /// HTTP requests handed to the sender and not back yet.
    http_out: usize,
    /// Average time of its requests (moving), once one came back.
    http_avg: Option<Duration>,
    sql: VecDeque<SqlJob>,
    /// Average run time of its SQL handler (moving), once one ran.
    sql_avg: Option<Duration>,
}

fn moving_average(avg: Option<Duration>, took: Duration) -> Option<Duration> {
    Some(match avg {
        None => took,
        Some(avg) => (avg * 7 + took) / 8,
    })
}

pub struct Scheduler {
    subs: HashMap<Id, Subscription>,
    /// Subscriptions with SQL calls, in the order they take turns.
    turns: VecDeque<Id>,
    in_flight: HashMap<u64, Claimed>,
    next_token: u64,
    /// Event bytes of everything held (with the sender or queued): event_bus.batch_memory
    /// bounds it.
    held_bytes: i64,
    pub per_subscription: usize,
    pub stale_after: Duration,
}

impl Scheduler {
    pub fn new(per_subscription: usize, stale_after: Duration) -> Scheduler {
        Scheduler {
            subs: HashMap::new(),
            turns: VecDeque::new(),
            in_flight: HashMap::new(),
            next_token: 1,
            held_bytes: 0,
            per_subscription: per_subscription.max(1),
            stale_after,
        }
    }

    fn sub(&mut self, id: &Id) -> &mut Subscription {
        self.subs.entry(*id).or_default()
    }

    /// Take a claimed job: HTTP goes to the sender at once, SQL waits for the main thread; a job
    /// that needs no attempt comes straight back as a failure.
    pub fn add(
        &mut self,
        job: Job,
        dispatcher: &Dispatcher,
        now: Instant,
    ) -> Option<(Claimed, Outcome)> {
        match job {
            Job::Http(claimed, mut req) => {
                self.held_bytes += claimed.bytes;
                self.sub(&claimed.subscription_id).http_out += 1;
                req.token = self.next_token;
                self.next_token += 1;
                self.in_flight.insert(req.token, claimed);
                dispatcher.submit(req);
                None
            }
            Job::Sql(claimed, work) => {
                self.push_sql(Waiting {
                    claimed,
                    work,
                    since: now,
                });
                None
            }
            Job::Failed(claimed, error) => {
                Some((claimed, Outcome::failure(0, error, Duration::ZERO)))
            }
            Job::Duplicate(claimed, of) => Some((claimed, Outcome::duplicate(&of))),
        }
    }

    fn push_sql(&mut self, w: SqlJob) {
        self.held_bytes += w.claimed.bytes;
        let id = w.claimed.subscription_id.clone();
        if self.sub(&id).sql.is_empty() {
            self.turns.push_back(id.clone());
        }
        self.sub(&id).sql.push_back(w);
    }

    /// The delivery an outcome belongs to (None: not ours any more).
    pub fn complete(&mut self, outcome: &Outcome) -> Option<Claimed> {
        let claimed = self.in_flight.remove(&outcome.token)?;
        self.held_bytes -= claimed.bytes;
        if let Some(sub) = self.subs.get_mut(&claimed.subscription_id) {
            sub.http_out = sub.http_out.saturating_sub(1);
            if outcome.sent {
                sub.http_avg = moving_average(sub.http_avg, outcome.duration);
            }
        }
        Some(claimed)
    }

    /// Up to `n` SQL calls to run next, whose events take at most `max_bytes` (one call at
    /// least): subscriptions take turns, one call each per turn.
    pub fn take_sql(&mut self, n: usize, max_bytes: i64) -> Vec<SqlJob> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < n {
            let Some(id) = self.turns.pop_front() else {
                break;
            };
            let Some(sub) = self.subs.get_mut(&id) else {
                continue;
            };
            let next = sub.sql.front().map_or(0, |w| w.claimed.bytes);
            if !out.is_empty() && bytes + next > max_bytes {
                self.turns.push_front(id);
                break;
            }
            if let Some(w) = sub.sql.pop_front() {
                bytes += w.claimed.bytes;
                self.held_bytes -= w.claimed.bytes;
                out.push(w);
            }
            if !sub.sql.is_empty() {
                self.turns.push_back(id);
            }
        }
        out
    }

    /// Put SQL calls that did not get to run back in front of their queues.
    pub fn requeue_sql(&mut self, jobs: Vec<SqlJob>) {
        for w in jobs.into_iter().rev() {
            self.held_bytes += w.claimed.bytes;
            let id = w.claimed.subscription_id.clone();
            if self.sub(&id).sql.is_empty() {
                self.turns.push_front(id.clone());
            }
            self.sub(&id).sql.push_front(w);
        }
    }

    /// A SQL handler of `subscription` ran for `took`.
    pub fn sql_ran(&mut self, subscription: &Id, took: Duration) {
        let sub = self.sub(subscription);
        sub.sql_avg = moving_average(sub.sql_avg, took);
    }

    pub fn has_sql(&self) -> bool {
        !self.turns.is_empty()
    }

    /// Event bytes of what this worker holds: requests with the sender, SQL calls queued.
    pub fn held_bytes(&self) -> i64 {
        self.held_bytes
    }

    /// HTTP requests with the sender.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn is_full(&self, s: &Subscription, batch: usize) -> bool {
        let share = self.per_subscription;
        let http_full = s.http_out >= share
            && match s.http_avg {
                // nothing back yet: a share's worth is all it gets
                None => true,
                Some(avg) => avg * (s.http_out / share) as u32 >= FULL_AFTER,
            };
        let sql_full = s.sql.len() >= batch
            || s.sql_avg
                .is_some_and(|avg| !s.sql.is_empty() && avg * s.sql.len() as u32 >= FULL_AFTER);
        http_full || sql_full
    }

    /// Subscriptions this worker holds enough of: claims leave their deliveries alone.
    pub fn full(&self, batch: usize) -> Vec<Id> {
        self.subs
            .iter()
            .filter(|(_, s)| self.is_full(s, batch))
            .map(|(id, _)| *id)
            .collect()
    }

    /// HTTP requests with the sender for subscriptions that are not full: work the sender will
    /// get through soon. Claims go on while this is low.
    pub fn http_backlog(&self, batch: usize) -> usize {
        self.subs
            .values()
            .filter(|s| !self.is_full(s, batch))
            .map(|s| s.http_out)
            .sum()
    }

    /// SQL calls that waited past `stale_after`: to be handed back to the table.
    pub fn take_stale(&mut self, now: Instant) -> Vec<Claimed> {
        let limit = self.stale_after;
        let mut out = Vec::new();
        for sub in self.subs.values_mut() {
            while sub
                .sql
                .front()
                .is_some_and(|w| now.duration_since(w.since) >= limit)
            {
                out.extend(sub.sql.pop_front().map(|w| w.claimed));
            }
        }
        self.held_bytes -= out.iter().map(|c| c.bytes).sum::<i64>();
        if !out.is_empty() {
            let subs = &self.subs;
            self.turns
                .retain(|id| subs.get(id).is_some_and(|s| !s.sql.is_empty()));
        }
        out
    }

    /// When the oldest waiting SQL call turns stale.
    pub fn next_stale(&self) -> Option<Instant> {
        self.subs
            .values()
            .filter_map(|s| s.sql.front().map(|w| w.since))
            .min()
            .map(|since| since + self.stale_after)
    }

    /// Forget subscriptions with nothing here (keeping what was learnt of their speed), when
    /// there are many.
    pub fn tidy(&mut self) {
        if self.subs.len() > 1024 {
            self.subs.retain(|_, s| s.http_out > 0 || !s.sql.is_empty());
        }
        // after a backlog: the tables keep the capacity of their busiest moment; give it back
        if self.in_flight.is_empty() && self.in_flight.capacity() > 1024 {
            self.in_flight.shrink_to_fit();
        }
        if self.turns.is_empty() && self.turns.capacity() > 1024 {
            self.turns.shrink_to_fit();
        }
    }

    /// Everything claimed and not finished (shutdown): requests with the sender, SQL calls.
    pub fn unfinished(&mut self) -> Vec<Claimed> {
        let mut out: Vec<Claimed> = self.in_flight.drain().map(|(_, c)| c).collect();
        for sub in self.subs.values_mut() {
            out.extend(sub.sql.drain(..).map(|w| w.claimed));
            sub.http_out = 0;
        }
        self.turns.clear();
        self.held_bytes = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A made-up id: `name`'s bytes, then `n`.
    fn id(name: &str, n: usize) -> Id {
        let mut b = [0u8; 16];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[15] = n as u8;
        Id::from_bytes(b)
    }

    fn sub(name: &str) -> Id {
        id(name, 255)
    }

    fn claimed(name: &str, n: usize) -> Claimed {
        Claimed {
            delivery_id: id(name, n),
            event_id: id("e", n),
            subscription_id: sub(name),
            tenant_id: id("t", 0),
            attempt: 1,
            attempt_offset: 0,
            max_retries: 3,
            backoff_base_ms: 1,
            backoff_max_ms: 1,
            ordered: false,
            idempotent: false,
            rowless: false,
            lease_attempts: 0,
            bytes: 0,
        }
    }

    fn call() -> Call {
        Call {
            function: "h.f".into(),
            run_as: None,
            run_as_set_by: None,
            timeout_ms: 1000,
        }
    }

    #[test]
    fn sql_calls_are_taken_within_a_byte_budget_and_held_bytes_follow_them() {
        let mut s = Scheduler::new(4, Duration::from_secs(5));
        let now = Instant::now();
        for i in 0..4 {
            let mut c = claimed("a", i);
            c.bytes = 1000;
            s.push_sql(Waiting {
                claimed: c,
                work: call(),
                since: now,
            });
        }
        assert_eq!(s.held_bytes(), 4000);
        // two fit in 2,500 bytes; a call larger than the budget still goes alone
        let two = s.take_sql(10, 2500);
        assert_eq!(two.len(), 2);
        assert_eq!(s.held_bytes(), 2000);
        assert_eq!(s.take_sql(10, 10).len(), 1);
        s.requeue_sql(two);
        assert_eq!(s.held_bytes(), 3000);
        let stale = s.take_stale(now + Duration::from_secs(6));
        assert_eq!(stale.len(), 3);
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn sql_subscriptions_take_turns_and_requeued_calls_go_first() {
        let mut s = Scheduler::new(4, Duration::from_secs(5));
        let now = Instant::now();
        for i in 0..3 {
            for sub in ["a", "b"] {
                s.push_sql(Waiting {
                    claimed: claimed(sub, i),
                    work: call(),
                    since: now,
                });
            }
        }
        let first: Vec<Id> = s
            .take_sql(3, i64::MAX)
            .into_iter()
            .map(|w| w.claimed.delivery_id)
            .collect();
        assert_eq!(first, [id("a", 0), id("b", 0), id("a", 1)]);
        let mut next = s.take_sql(2, i64::MAX);
        assert_eq!(next[0].claimed.delivery_id, id("b", 1));
        let back = next.split_off(1);
        s.requeue_sql(back);
        let rest: Vec<Id> = s
            .take_sql(10, i64::MAX)
            .into_iter()
            .map(|w| w.claimed.delivery_id)
            .collect();
        assert_eq!(rest, [id("a", 2), id("b", 2)]);
        assert!(!s.has_sql());
    }

    #[test]
    fn slow_sql_subscriptions_are_full_after_a_second_of_work_and_stale_calls_come_back() {
        let mut s = Scheduler::new(4, Duration::from_millis(100));
        let then = Instant::now();
        for i in 0..3 {
            s.push_sql(Waiting {
                claimed: claimed("slow", i),
                work: call(),
                since: then,
            });
        }
        assert!(
            s.full(500).is_empty(),
            "unknown speed: not full below a batch"
        );
        s.sql_ran(&sub("slow"), Duration::from_millis(600));
        assert_eq!(s.full(500), vec![sub("slow")]);
        let stale = s.take_stale(then + Duration::from_millis(150));
        assert_eq!(stale.len(), 3);
        assert!(!s.has_sql());
        assert!(s.full(500).is_empty());
    }
}
