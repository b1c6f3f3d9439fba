//! The background worker's intake floor: where its head pass starts reading the index of events not
//! fanned out yet (`module_events_undispatched_idx`, ordered by id, UUIDv7: time order).
//!
//! Every event the worker fans out leaves a dead entry at that index's start until VACUUM removes
//! it, and a head pass read from the start walks all of them every round: a backlog of millions
//! drained at half its first speed once most of it was gone. The floor is an event id below which
//! no event can still need its fan-out, by what the worker has seen:
//! - after a round whose snapshot had `xmin..xmax`, every event not fanned out and visible to it is
//!   at or above the first event the round took (it reads in id order), or was over its limit
//!   (then above that first one too);
//! - an event that snapshot could not see belongs to a transaction then in progress (its xid below
//!   xmax), and is visible to the first snapshot whose xmin is at or above that xmax. Such a
//!   transaction either had its xid at the previous round's snapshot (it is under that round's
//!   horizon, still kept) or inserted after the previous round began: ids are drawn from the clock
//!   at insert, so its ids are above that time (less [`ID_SLACK_MS`]).
//!
//! So each round leaves a horizon — its snapshot's xmax, and min(first event taken, the previous
//! round's start) less the slack — kept until a round's snapshot has xmin at or above that xmax
//! (that round read from at most that floor and saw those transactions' events); the floor is the
//! lowest horizon kept. A worker's first round has no previous one: its horizon is the index's
//! start, kept until every transaction then in progress has ended. And a head pass reads from the
//! start at least every [`FULL_INTAKE_EVERY`], for what the floor cannot see: an event skipped
//! because another transaction had it locked and then rolled back, a lease that ran out without
//! its outcome recorded, an id not drawn from the clock. Only the background worker keeps a floor
//! (`process_pending_events` reads from the start), and it is safe across rolled-back rounds: what
//! a round took and gave back is at or above the floor it leaves.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// How often a head pass reads from the index's start whatever the floor says: what the floor
/// cannot see waits no longer than this.
pub const FULL_INTAKE_EVERY: Duration = Duration::from_secs(1);
/// Clock slack on ids: UUIDv7 ids drawn by different backends in the same millisecond, or by a
/// clock that stepped back a little, are not in time order.
pub const ID_SLACK_MS: u64 = 1000;
/// At most this many rounds' horizons are kept; beyond, the oldest two are merged into one with the
/// later xmax and the lower floor (never a higher floor than either).
pub const MAX_HORIZONS: usize = 1024;

/// See the module's documentation.
#[derive(Default, Debug)]
pub struct IntakeFloor {
    /// (a round's snapshot xmax, the floor it leaves), oldest first
    horizons: VecDeque<(i64, [u8; 16])>,
    /// when a head pass last read from the start
    full_at: Option<Instant>,
    /// when the last head pass began
    last_start: Option<SystemTime>,
}

impl IntakeFloor {
    /// Where the next head pass starts: None for the index's start.
    pub fn floor(&self, now: Instant) -> Option<[u8; 16]> {
        let due_full = self
            .full_at
            .is_none_or(|at| now.duration_since(at) >= FULL_INTAKE_EVERY);
        if due_full {
            return None;
        }
        self.horizons.iter().map(|h| h.1).min()
    }

    /// What a head pass saw: `full` if it read from the start; begun at `started`; the smallest id
    /// it took; its snapshot's xmin and xmax.
    pub fn observe(
        &mut self,
        full: bool,
        started: SystemTime,
        now: Instant,
        first_taken: Option<[u8; 16]>,
        (xmin, xmax): (i64, i64),
    ) {
        self.horizons.retain(|h| h.0 > xmin);
        let floor = match self.last_start {
            None => [0u8; 16],
            Some(last) => {
                let last_ms = last
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let ms = first_taken.map_or(last_ms, |id| id_ms(&id).min(last_ms));
                id_at_ms(ms.saturating_sub(ID_SLACK_MS))
            }
        };
        self.horizons.push_back((xmax, floor));
        if self.horizons.len() > MAX_HORIZONS {
            if let (Some(a), Some(b)) = (self.horizons.pop_front(), self.horizons.pop_front()) {
                self.horizons.push_front((a.0.max(b.0), a.1.min(b.1)));
            }
        }
        self.last_start = Some(started);
        if full {
            self.full_at = Some(now);
        }
    }
}

/// The milliseconds of a UUIDv7 (its first 48 bits).
pub fn id_ms(id: &[u8; 16]) -> u64 {
    id[..6].iter().fold(0u64, |ms, b| (ms << 8) | u64::from(*b))
}

/// The smallest UUIDv7 of a millisecond since the Unix epoch (v7 order is byte order): its low 48
/// bits, then the version and variant bits and zeros. Also `event_bus.uuid_v7_lower_bound`'s.
pub fn id_at_ms(ms: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..8]);
    id[6] = 0x70;
    id[8] = 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn id(ms: u64, tail: u8) -> [u8; 16] {
        let mut id = id_at_ms(ms);
        id[15] = tail;
        id
    }

    const T: u64 = 1_800_000_000_000;

    #[test]
    fn ids_and_milliseconds_round_trip_in_byte_order() {
        assert_eq!(id_ms(&id_at_ms(T)), T);
        assert!(id_at_ms(T - 1) < id(T - 1, 1) && id(T - 1, 1) < id_at_ms(T));
    }

    #[test]
    fn first_round_reads_from_the_start_and_its_horizon_holds_while_its_transactions_run() {
        let now = Instant::now();
        let mut f = IntakeFloor::default();
        assert_eq!(f.floor(now), None, "the first round reads from the start");
        // round 1: xids 100..110 in progress
        f.observe(true, at(T), now, Some(id(T - 60_000, 0)), (100, 110));
        // round 2 (xmin still 100): the first round's horizon (the start) is kept
        assert_eq!(f.floor(now), Some([0; 16]));
        f.observe(false, at(T + 10), now, Some(id(T - 50_000, 0)), (100, 111));
        assert_eq!(f.floor(now), Some([0; 16]));
        // round 3: every transaction below 111 ended before its snapshot (it read from the start
        // and saw their events): the floor is the first event it took less the slack, no longer
        // the index's start
        f.observe(false, at(T + 20), now, Some(id(T - 40_000, 0)), (111, 112));
        assert_eq!(f.floor(now), Some(id_at_ms(T - 40_000 - ID_SLACK_MS)));
        // with xid 112 still running the next round's horizon adds a higher floor: the lower holds
        f.observe(false, at(T + 30), now, Some(id(T - 30_000, 0)), (111, 113));
        assert_eq!(f.floor(now), Some(id_at_ms(T - 40_000 - ID_SLACK_MS)));
        f.observe(false, at(T + 40), now, Some(id(T - 20_000, 0)), (113, 114));
        assert_eq!(f.floor(now), Some(id_at_ms(T - 20_000 - ID_SLACK_MS)));
    }

    #[test]
    fn a_round_without_events_leaves_the_previous_rounds_start_less_the_slack() {
        let now = Instant::now();
        let mut f = IntakeFloor::default();
        f.observe(true, at(T), now, None, (5, 5));
        f.observe(false, at(T + 500), now, None, (6, 6));
        // round 1's horizon ended (xmin 6 >= its xmax 5); round 2's: round 1's start less the slack
        assert_eq!(f.floor(now), Some(id_at_ms(T - ID_SLACK_MS)));
        // a long transaction (xid 7) stays in progress: the horizon of the round that first saw it
        // in progress holds the floor down while later rounds move on
        f.observe(false, at(T + 1000), now, None, (7, 8));
        f.observe(false, at(T + 5000), now, None, (7, 9));
        f.observe(false, at(T + 9000), now, None, (7, 10));
        assert_eq!(f.floor(now), Some(id_at_ms(T + 500 - ID_SLACK_MS)));
        f.observe(false, at(T + 9500), now, None, (10, 11));
        assert_eq!(f.floor(now), Some(id_at_ms(T + 9000 - ID_SLACK_MS)));
    }

    #[test]
    fn the_start_again_at_least_every_full_intake_interval() {
        let t0 = Instant::now();
        let mut f = IntakeFloor::default();
        f.observe(true, at(T), t0, None, (1, 1));
        f.observe(false, at(T + 1), t0, None, (2, 2));
        assert!(f.floor(t0 + FULL_INTAKE_EVERY / 2).is_some());
        assert_eq!(f.floor(t0 + FULL_INTAKE_EVERY), None);
        f.observe(true, at(T + 2), t0 + FULL_INTAKE_EVERY, None, (3, 3));
        assert!(f.floor(t0 + FULL_INTAKE_EVERY).is_some());
    }

    #[test]
    fn horizons_are_bounded_and_merging_never_raises_the_floor() {
        let now = Instant::now();
        let mut f = IntakeFloor::default();
        f.observe(true, at(T), now, None, (1, 2));
        // a transaction (xid 1) runs through thousands of rounds
        for r in 0..5000u64 {
            f.observe(false, at(T + 10 * (r + 1)), now, None, (1, 3 + r as i64));
        }
        assert!(f.horizons.len() <= MAX_HORIZONS);
        assert_eq!(
            f.floor(now),
            Some([0; 16]),
            "the first round's horizon is never lost"
        );
    }

    /// A simulation: transactions that draw event ids from a clock and commit after a while (some
    /// long), and a worker whose head pass reads from the floor in id order, a few events a round.
    /// Never reading from the start again after its first round (the clock for `floor` stands
    /// still), it still takes every committed event: the floor never passes one that can appear.
    #[test]
    fn the_floor_never_passes_an_event_that_can_still_appear() {
        use std::collections::{BTreeSet, HashMap};
        for seed in 1..=40u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n.max(1)
            };
            let still = Instant::now();
            let mut f = IntakeFloor::default();
            let mut ms = T;
            let mut next_xid = 100i64;
            // open transactions: xid -> (their events, the step they commit at)
            let mut open: HashMap<i64, (Vec<[u8; 16]>, u64)> = HashMap::new();
            let mut visible: BTreeSet<[u8; 16]> = BTreeSet::new();
            let mut emitted = 0usize;
            let mut taken = 0usize;
            let mut first_round = true;
            // transactions that began before the worker's first round, with older ids
            for k in 0..3u64 {
                let mut id = id_at_ms(ms - 60_000 + k);
                id[15] = k as u8;
                open.insert(next_xid, (vec![id], 50 + 100 * k));
                next_xid += 1;
                emitted += 1;
            }
            for step in 0..4200u64 {
                // rounds mostly milliseconds apart, some seconds (more than the slack); transactions
                // insert anywhere between two rounds
                let before = ms;
                ms += if next(10) == 0 { next(3000) } else { next(40) };
                // new transactions, each with an event or a few; one in fifty runs long
                if step < 3500 {
                    for _ in 0..next(3) {
                        let xid = next_xid;
                        next_xid += 1;
                        let n = 1 + next(3);
                        let at = before + next(ms - before + 1);
                        let events: Vec<[u8; 16]> = (0..n)
                            .map(|_| {
                                let mut id = id_at_ms(at.saturating_sub(next(5)));
                                id[6..].copy_from_slice(
                                    &next(u64::MAX).to_be_bytes()[..].repeat(2)[..10],
                                );
                                id
                            })
                            .collect();
                        emitted += events.len();
                        // (half the seeds without: a long one open holds the floor down for all)
                        let long = seed % 2 == 0 && next(50) == 0;
                        open.insert(
                            xid,
                            (events, step + if long { 200 + next(400) } else { next(4) }),
                        );
                    }
                }
                // commits
                let done: Vec<i64> = open
                    .iter()
                    .filter(|(_, v)| v.1 <= step)
                    .map(|(k, _)| *k)
                    .collect();
                for xid in done {
                    visible.extend(open.remove(&xid).unwrap().0);
                }
                // a worker round: snapshot, head pass from the floor, at most 3 events
                let xmin = open.keys().copied().min().unwrap_or(next_xid);
                let floor = f.floor(still);
                assert!(
                    first_round || floor.is_some(),
                    "seed {seed}: no full reads after the first"
                );
                let from = floor.unwrap_or([0; 16]);
                let round: Vec<[u8; 16]> = visible.range(from..).take(3).copied().collect();
                for id in &round {
                    visible.remove(id);
                }
                taken += round.len();
                f.observe(
                    first_round,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
                    still,
                    round.first().copied(),
                    (xmin, next_xid),
                );
                first_round = false;
            }
            assert!(open.is_empty(), "seed {seed}");
            // the rounds after the last commits drain what is left
            for _ in 0..2000 {
                ms += 10;
                let floor = f.floor(still).unwrap();
                let round: Vec<[u8; 16]> = visible.range(floor..).take(3).copied().collect();
                for id in &round {
                    visible.remove(id);
                }
                taken += round.len();
                f.observe(
                    false,
                    SystemTime::UNIX_EPOCH + Duration::from_millis(ms),
                    still,
                    round.first().copied(),
                    (next_xid, next_xid),
                );
            }
            assert!(
                visible.is_empty(),
                "seed {seed}: {} events below the floor never taken",
                visible.len()
            );
            assert_eq!(taken, emitted, "seed {seed}");
        }
    }
}
