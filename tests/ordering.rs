//! Ordered subscriptions and per-subscription limits, end to end: two workers, a real receiver on
//! 127.0.0.1 that fails at random, a parked stream skipped and retried, a worker SIGKILLed in the
//! middle of a stream, and the in-flight and rate caps measured by the receiver.

use event_bus_testkit as common;

use common::receiver::{Received, Receiver, Reply};
use common::{count, wait_for, Cluster};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "66666666-6666-6666-6666-666666666666";

fn settings() -> Vec<&'static str> {
    vec![
        "event_bus.workers = 2",
        "event_bus.backoff_base_ms = 5",
        "event_bus.backoff_max_ms = 40",
        "event_bus.poll_interval_ms = 100",
        "event_bus.breaker_threshold = 0",
    ]
}

/// (entity, seq) of a delivered event's payload.
fn entity_seq(r: &Received) -> (String, i64) {
    let j = r.json();
    (
        j["data"]["entity"].as_str().unwrap_or_default().to_string(),
        j["data"]["seq"].as_i64().unwrap_or(-1),
    )
}

/// Emit `per_entity` events for each of `entities` entities, interleaved, committed in small
/// transactions (seq 1.. per entity, in emit order).
fn emit_streams(c: &mut postgres::Client, event_type: &str, entities: usize, per_entity: usize) {
    for seq in 1..=per_entity {
        let mut tx = c.transaction().unwrap();
        for e in 0..entities {
            tx.execute(
                "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'sales', 'order', $3,
                     jsonb_build_object('entity', $3::text, 'seq', $4::int))",
                &[&TENANT, &event_type, &format!("O-{e}"), &(seq as i32)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Per entity: every attempt (seq, succeeded) in arrival order, and the successful seqs.
#[derive(Default, Clone)]
struct Streams {
    attempts: HashMap<String, Vec<(i64, bool)>>,
    successes: HashMap<String, Vec<i64>>,
}

/// Check the ordering contract on what the receiver saw: per entity, successes are 1..=n exactly
/// once each (in order, no gaps) — or at least once when `dups_allowed` — and no attempt of seq
/// k+1 ever started before seq k had succeeded.
fn assert_ordered(s: &Streams, entities: usize, per_entity: usize, dups_allowed: bool) {
    assert_eq!(s.successes.len(), entities, "entities seen");
    for (entity, ok) in &s.successes {
        let mut distinct = ok.clone();
        distinct.dedup();
        let want: Vec<i64> = (1..=per_entity as i64).collect();
        assert_eq!(
            distinct, want,
            "{entity}: successes {ok:?}, attempts {:?}",
            s.attempts[entity]
        );
        if !dups_allowed {
            assert_eq!(ok.len(), per_entity, "{entity}: duplicates in {ok:?}");
        }
        let attempts = &s.attempts[entity];
        let mut done = 0i64;
        for (seq, succeeded) in attempts {
            assert!(
                *seq <= done + 1,
                "{entity}: seq {seq} attempted before seq {} succeeded (attempts {attempts:?})",
                done + 1
            );
            if *succeeded {
                done = done.max(*seq);
            }
        }
    }
}

/// A receiver for ordered streams: fails `fail_percent` of attempts at random, answers after a
/// short random delay, records attempts and successes per entity, and counts how many requests of
/// one entity were ever in flight at once.
fn stream_receiver(
    fail_percent: u64,
    streams: Arc<Mutex<Streams>>,
    max_per_entity: Arc<AtomicUsize>,
) -> Receiver {
    let rng = Arc::new(AtomicU64::new(0x9E37_79B9_7F4A_7C15));
    let in_flight: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    Receiver::start(move |r, _| {
        let (entity, seq) = entity_seq(r);
        {
            let mut f = in_flight.lock().unwrap();
            let n = f.entry(entity.clone()).or_default();
            *n += 1;
            max_per_entity.fetch_max(*n, Ordering::SeqCst);
        }
        // xorshift: the test's own randomness, no crate needed
        let mut x = rng.load(Ordering::SeqCst);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.store(x, Ordering::SeqCst);
        let fail = x % 100 < fail_percent;
        std::thread::sleep(Duration::from_micros(x % 3000));
        {
            let mut s = streams.lock().unwrap();
            s.attempts
                .entry(entity.clone())
                .or_default()
                .push((seq, !fail));
            if !fail {
                s.successes.entry(entity.clone()).or_default().push(seq);
            }
        }
        *in_flight.lock().unwrap().get_mut(&entity).unwrap() -= 1;
        if fail {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    })
}

#[test]
fn an_ordered_subscription_delivers_each_entity_in_emit_order_through_random_failures() {
    let cluster = Cluster::start("ordered", &settings());
    let streams = Arc::new(Mutex::new(Streams::default()));
    let max_per_entity = Arc::new(AtomicUsize::new(0));
    let rx = stream_receiver(25, streams.clone(), max_per_entity.clone());
    let unordered_rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("ordered_db");
    c.execute(
        "SELECT event_bus.subscribe('order.changed', 'fulfilment', $1, p_max_retries => 100, p_ordered => true)",
        &[&rx.url("/ordered")],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('order.changed', 'analytics', $1)",
        &[&unordered_rx.url("/unordered")],
    )
    .unwrap();

    // 1,000 events over 50 entities
    emit_streams(&mut c, "order.changed", 50, 20);
    let mut most = 0;
    wait_for("1,000 ordered successes", Duration::from_secs(120), || {
        most = most.max(count(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'ordered_db'",
        ));
        let n: usize = streams
            .lock()
            .unwrap()
            .successes
            .values()
            .map(|v| v.len())
            .sum();
        (n >= 1000).then_some(())
    });
    wait_for("every delivery finished", Duration::from_secs(60), || {
        (count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status <> 'completed'",
        ) == 0)
            .then_some(())
    });
    let seen = streams.lock().unwrap().clone();
    assert_ordered(&seen, 50, 20, false);
    let failures: usize = seen.attempts.values().map(|v| v.len()).sum::<usize>() - 1000;
    assert!(
        failures > 100,
        "the receiver failed only {failures} attempts"
    );
    assert_eq!(
        max_per_entity.load(Ordering::SeqCst),
        1,
        "two requests of one entity in flight"
    );
    // the unordered subscription got everything too, without waiting on the ordered one's streams
    assert_eq!(unordered_rx.count("/unordered"), 1000);
    // both workers took part (event_bus.workers = 2: the pool gives a database with work both)
    assert_eq!(most, 2);
}

#[test]
fn a_dead_delivery_parks_only_its_entity_and_skip_or_retry_resumes_it() {
    let cluster = Cluster::start("parked", &settings());
    let broken = Arc::new(AtomicBool::new(true));
    let streams = Arc::new(Mutex::new(Streams::default()));
    let rx = {
        let broken = broken.clone();
        let streams = streams.clone();
        Receiver::start(move |r, _| {
            let (entity, seq) = entity_seq(r);
            let mut s = streams.lock().unwrap();
            // seq 3 of O-0 and O-1 fails while broken
            if seq == 3 && (entity == "O-0" || entity == "O-1") && broken.load(Ordering::SeqCst) {
                s.attempts.entry(entity).or_default().push((seq, false));
                return Reply::status(503);
            }
            s.attempts
                .entry(entity.clone())
                .or_default()
                .push((seq, true));
            s.successes.entry(entity).or_default().push(seq);
            Reply::ok()
        })
    };
    let mut c = cluster.create_db_with_extension("parked_db");
    c.execute(
        "SELECT event_bus.subscribe('order.changed', 'fulfilment', $1, p_max_retries => 1, p_ordered => true)",
        &[&rx.url("/ordered")],
    )
    .unwrap();
    emit_streams(&mut c, "order.changed", 4, 5);

    // O-2 and O-3 complete; O-0 and O-1 stop at seq 2 with seq 3 dead and 4, 5 waiting
    wait_for("two parked streams", Duration::from_secs(60), || {
        (count(&mut c, "SELECT count(*) FROM event_bus.parked_streams") == 2
            && count(
                &mut c,
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'completed'",
            ) == 14)
            .then_some(())
    });
    let parked: Vec<(String, i64)> = c
        .query(
            "SELECT entity_id, waiting FROM event_bus.parked_streams ORDER BY entity_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(parked, vec![("O-0".to_string(), 2), ("O-1".to_string(), 2)]);
    {
        let s = streams.lock().unwrap();
        assert_eq!(s.successes["O-0"], vec![1, 2]);
        assert_eq!(s.successes["O-2"], vec![1, 2, 3, 4, 5]);
        assert_eq!(s.successes["O-3"], vec![1, 2, 3, 4, 5]);
    }
    let metrics: String = c
        .query_one("SELECT event_bus.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(metrics.contains("event_bus_parked_streams 2"), "{metrics}");
    assert!(
        metrics.contains("event_bus_deliveries{status=\"waiting\"} 4"),
        "{metrics}"
    );

    // skip O-0's dead delivery: 4 and 5 follow, in order
    let dead: String = c
        .query_one(
            "SELECT delivery_id::text FROM event_bus.parked_streams WHERE entity_id = 'O-0'",
            &[],
        )
        .unwrap()
        .get(0);
    let skipped: bool = c
        .query_one("SELECT event_bus.skip_delivery($1::text::uuid)", &[&dead])
        .unwrap()
        .get(0);
    assert!(skipped);
    wait_for(
        "O-0 resumed after the skip",
        Duration::from_secs(30),
        || (streams.lock().unwrap().successes["O-0"] == vec![1, 2, 4, 5]).then_some(()),
    );
    // skipping it again is refused: it is no longer dead
    let again = c
        .query_one("SELECT event_bus.skip_delivery($1::text::uuid)", &[&dead])
        .unwrap_err();
    assert_eq!(again.code().map(|c| c.code()), Some("55000"));

    // fix the endpoint and retry O-1's event 3: 3, 4, 5 in order
    broken.store(false, Ordering::SeqCst);
    let event: String = c
        .query_one(
            "SELECT event_id::text FROM event_bus.parked_streams WHERE entity_id = 'O-1'",
            &[],
        )
        .unwrap()
        .get(0);
    let rearmed: i32 = c
        .query_one("SELECT event_bus.retry_event($1::text::uuid)", &[&event])
        .unwrap()
        .get(0);
    assert_eq!(rearmed, 1);
    wait_for(
        "O-1 resumed after the retry",
        Duration::from_secs(30),
        || (streams.lock().unwrap().successes["O-1"] == vec![1, 2, 3, 4, 5]).then_some(()),
    );
    assert_eq!(
        count(&mut c, "SELECT count(*) FROM event_bus.parked_streams"),
        0
    );
    wait_for("nothing left waiting", Duration::from_secs(30), || {
        (count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status NOT IN ('completed', 'skipped')",
        ) == 0)
            .then_some(())
    });
    // the skipped event's status counts it as handled
    let skipped_event_status: String = c
        .query_one(
            "SELECT e.status FROM event_bus.module_events e JOIN event_bus.module_event_deliveries d ON d.event_id = e.id
              WHERE d.id = $1::text::uuid",
            &[&dead],
        )
        .unwrap()
        .get(0);
    assert_eq!(skipped_event_status, "completed");

    // a replay of O-2's stream runs it again one at a time, in order
    let before = streams.lock().unwrap().attempts["O-2"].len();
    let replayed: i64 = c
        .query_one(
            "SELECT event_bus.replay_events(p_event_type => 'order.changed', p_tenant_id => $1::text::uuid)",
            &[&TENANT],
        )
        .unwrap()
        .get(0);
    assert_eq!(replayed, 20);
    wait_for("the replay delivered", Duration::from_secs(30), || {
        (streams.lock().unwrap().successes["O-2"].len() == 10).then_some(())
    });
    let s = streams.lock().unwrap();
    let replayed_seqs: Vec<i64> = s.attempts["O-2"][before..].iter().map(|a| a.0).collect();
    assert_eq!(replayed_seqs, vec![1, 2, 3, 4, 5]);
}

#[test]
fn ordering_holds_when_a_worker_is_killed_mid_stream() {
    let cluster = Cluster::start("ordered-kill", &settings());
    let streams = Arc::new(Mutex::new(Streams::default()));
    let max_per_entity = Arc::new(AtomicUsize::new(0));
    let rx = stream_receiver(10, streams.clone(), max_per_entity.clone());
    let mut c = cluster.create_db_with_extension("okill_db");
    c.execute(
        "SELECT event_bus.subscribe('order.changed', 'fulfilment', $1, p_max_retries => 100, p_ordered => true)",
        &[&rx.url("/ordered")],
    )
    .unwrap();
    emit_streams(&mut c, "order.changed", 20, 15);
    // kill a worker twice while the streams are under way
    for _ in 0..2 {
        wait_for("some progress", Duration::from_secs(60), || {
            let n: usize = streams
                .lock()
                .unwrap()
                .attempts
                .values()
                .map(|v| v.len())
                .sum();
            (n >= 40).then_some(())
        });
        let pid: i32 = wait_for("a worker", Duration::from_secs(60), || {
            let mut c2 = cluster.connect("okill_db");
            c2.query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'okill_db' LIMIT 1",
                &[],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0))
        });
        unsafe { libc::kill(pid, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut c = wait_for("the server back", Duration::from_secs(60), || {
        cluster.try_connect("okill_db")
    });
    wait_for("every delivery finished", Duration::from_secs(120), || {
        (count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status <> 'completed'",
        ) == 0
            && count(
                &mut c,
                "SELECT count(*) FROM event_bus.module_event_deliveries",
            ) == 300)
            .then_some(())
    });
    let seen = streams.lock().unwrap().clone();
    // a crash may resend the delivery it interrupted (same webhook-id), never a later one first
    assert_ordered(&seen, 20, 15, true);
}

#[test]
fn in_flight_and_rate_caps_hold_over_two_workers_without_slowing_other_subscriptions() {
    let cluster = Cluster::start("limits", &settings());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let rx = {
        let in_flight = in_flight.clone();
        let max_in_flight = max_in_flight.clone();
        Receiver::start(move |r, _| {
            if r.path == "/capped" {
                let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(n, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(40));
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            Reply::ok()
        })
    };
    let mut c = cluster.create_db_with_extension("limits_db");
    c.execute(
        "SELECT event_bus.subscribe('partner.capped', 'partner', $1, p_max_in_flight => 3)",
        &[&rx.url("/capped")],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('partner.paced', 'partner', $1, p_max_per_second => 20)",
        &[&rx.url("/paced")],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('partner.#', 'audit', $1)",
        &[&rx.url("/free")],
    )
    .unwrap();
    let started = Instant::now();
    c.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'partner.capped', 'sales', 'doc', NULL,
             (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, 60) g))",
        &[&TENANT],
    )
    .unwrap();
    c.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'partner.paced', 'sales', 'doc', NULL,
             (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, 50) g))",
        &[&TENANT],
    )
    .unwrap();

    // the unlimited subscription is not held up by its limited neighbours
    wait_for(
        "the unlimited subscription's 110",
        Duration::from_secs(30),
        || (rx.count("/free") == 110).then_some(()),
    );
    let free_done = started.elapsed();
    let mut most = 0;
    wait_for(
        "every capped and paced delivery",
        Duration::from_secs(60),
        || {
            most = most.max(count(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'limits_db'",
        ));
            (rx.count("/capped") == 60 && rx.count("/paced") == 50).then_some(())
        },
    );
    let paced_done = started.elapsed();
    assert!(
        free_done < paced_done / 2,
        "unlimited took {free_done:?}, paced {paced_done:?}"
    );

    // at most 3 in flight, and the cap was used
    let peak = max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 3, "{peak} requests in flight over a cap of 3");
    assert!(
        peak >= 2,
        "peak in flight {peak}: the cap was never approached"
    );

    // at most 20 per second (one of slack for a window's edges), over any 1 s window
    let times: Vec<Instant> = rx.on("/paced").iter().map(|r| r.at).collect();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    assert!(
        worst <= 21,
        "{worst} paced requests within one second (limit 20)"
    );
    let span = times.last().unwrap().duration_since(times[0]);
    assert!(
        span >= Duration::from_millis(2300),
        "50 requests at 20/s took only {span:?}"
    );
    assert_eq!(most, 2, "both workers served the limited subscriptions");
}
