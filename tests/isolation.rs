//! No subscription, however slow, silent or failing, and no burst of events delays another
//! subscription's deliveries (issues 12 and 13). Default settings, one worker, as a new user has.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{count, wait_for, Cluster, Silent};
use std::time::{Duration, Instant};

const TENANT: &str = "77777777-7777-7777-7777-777777777777";

/// These tests time deliveries: one at a time, so they do not compete with each other for the
/// machine's cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Emit `n` events of `event_type` in one statement (one per entity `e1`..`en` when `entities`).
fn emit_many(c: &mut postgres::Client, event_type: &str, n: i32, entities: bool) {
    c.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, $2, 'test', 'doc',
             CASE WHEN $4 THEN (SELECT array_agg('e1'::text) FROM generate_series(1, $3) g) END,
             (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, $3) g))",
        &[&TENANT, &event_type, &n, &entities],
    )
    .unwrap();
}

/// Emit `n` events to `path`'s subscription and wait until the receiver has them all; returns
/// the longest time from the emitting commit to a request's arrival.
fn latency_of(
    c: &mut postgres::Client,
    rx: &Receiver,
    path: &str,
    event_type: &str,
    n: i32,
) -> Duration {
    let before = rx.count(path);
    emit_many(c, event_type, n, false);
    let committed = Instant::now();
    wait_for(
        &format!("{n} deliveries to {path}"),
        Duration::from_secs(60),
        || (rx.count(path) >= before + n as usize).then_some(()),
    );
    rx.on(path)
        .iter()
        .skip(before)
        .map(|r| r.at.saturating_duration_since(committed))
        .max()
        .unwrap_or_default()
}

/// A burst of 50,000 events that produce nothing to send (`kind`: they match nothing, or only a
/// subscription whose breaker is open, or only an ordered stream that waits), then one matched
/// event: it is delivered within 2 s of its commit and the burst is fanned out within 10 s.
fn burst_then_one(kind: &str) {
    let _serial = one_at_a_time();
    let cluster = Cluster::start(&format!("burst-{kind}"), &[]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let silent = Silent::start();
    let mut c = cluster.create_db_with_extension("burst");
    c.execute(
        "SELECT event_bus.subscribe('matched.#', 'wanted', $1)",
        &[&rx.url("/wanted")],
    )
    .unwrap();
    match kind {
        "unmatched" => {}
        "held" => {
            // the burst's subscription has its breaker open: its deliveries are created held
            c.execute(
                "SELECT event_bus.subscribe('burst.#', 'broken', $1)",
                &[&silent.url()],
            )
            .unwrap();
            c.batch_execute(
                "UPDATE event_bus.module_event_subscriptions
                    SET breaker_opened_at = now(), breaker_open_until = now() + interval '1 hour'
                  WHERE handler_module = 'broken'",
            )
            .unwrap();
        }
        "waiting" => {
            // one entity's stream, its first delivery stuck at a silent endpoint: the rest wait
            c.execute(
                "SELECT event_bus.subscribe('burst.#', 'stream', $1, p_ordered => true)",
                &[&silent.url()],
            )
            .unwrap();
        }
        other => panic!("unknown burst kind {other}"),
    }
    let event_type = if kind == "unmatched" {
        "nobody.cares"
    } else {
        "burst.happened"
    };
    let started = Instant::now();
    emit_many(&mut c, event_type, 50_000, kind == "waiting");
    let took = latency_of(&mut c, &rx, "/wanted", "matched.one", 1);
    assert!(
        took < Duration::from_secs(2),
        "{kind}: the matched event reached its handler {took:?} after its commit, behind the burst"
    );
    wait_for(
        &format!("{kind}: the burst fanned out"),
        Duration::from_secs(10),
        || {
            let left = count(
                &mut c,
                // not fanned out: not marked dispatched and without deliveries (an event whose
                // deliveries were all sent at once is marked when its first outcome is recorded:
                // the stream's head here, stuck at the silent endpoint)
                "SELECT count(*) FROM event_bus.module_events e
                  WHERE e.dispatched_at IS NULL
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d WHERE d.event_id = e.id OFFSET 0)",
            );
            (left == 0).then_some(())
        },
    );
    let fanned = started.elapsed();
    match kind {
        "unmatched" => assert_eq!(
            count(
                &mut c,
                "SELECT count(*) FROM event_bus.module_events WHERE event_type = 'nobody.cares' AND status = 'completed'"
            ),
            50_000,
            "events that match nothing are completed"
        ),
        "held" => assert_eq!(
            count(&mut c, "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'held'"),
            50_000
        ),
        _ => assert_eq!(
            count(&mut c, "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'waiting'"),
            49_999
        ),
    }
    eprintln!("{kind}: matched event after {took:?}; 50,000 fanned out in {fanned:?}");
}

#[test]
fn a_burst_of_unmatched_events_does_not_hold_up_a_matched_one() {
    burst_then_one("unmatched");
}

#[test]
fn a_burst_for_an_open_breaker_does_not_hold_up_a_matched_one() {
    burst_then_one("held");
}

#[test]
fn a_burst_of_waiting_stream_deliveries_does_not_hold_up_a_matched_one() {
    burst_then_one("waiting");
}

#[test]
fn a_silent_endpoint_does_not_hold_up_a_healthy_one() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start("silent", &[]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let silent = Silent::start();
    let mut c = cluster.create_db_with_extension("silent");
    c.execute(
        "SELECT event_bus.subscribe('hang.#', 'hang', $1, p_timeout_ms => 30000)",
        &[&silent.url()],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('fast.#', 'fast', $1)",
        &[&rx.url("/fast")],
    )
    .unwrap();
    emit_many(&mut c, "hang.event", 500, false);
    wait_for(
        "requests to the silent endpoint",
        Duration::from_secs(10),
        || (silent.accepted() > 0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(1));
    let took = latency_of(&mut c, &rx, "/fast", "fast.event", 100);
    assert!(
        took < Duration::from_secs(2),
        "the healthy subscription's 100 events took up to {took:?} after their commit"
    );
    // the silent ones are still waiting for their answers: no attempt of theirs has ended
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s
                 ON s.id = l.subscription_id WHERE s.handler_module = 'hang'"
        ),
        0
    );
    let share = silent.accepted();
    eprintln!("silent endpoint: {share} connections held; 100 healthy deliveries within {took:?}");
}

#[test]
fn slow_sql_handlers_do_not_hold_up_http_deliveries() {
    let _serial = one_at_a_time();
    let cluster = Cluster::start("slowsql", &[]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("slowsql");
    c.batch_execute(
        "CREATE ROLE slow_role NOLOGIN;
         CREATE SCHEMA h; GRANT USAGE ON SCHEMA h TO slow_role;
         CREATE FUNCTION h.slow(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$
             SELECT pg_sleep(1); SELECT jsonb_build_object('slept', 1) $$;
         SELECT event_bus.subscribe('slow.#', 'slow', p_handler_function => 'h.slow', p_run_as => 'slow_role');",
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('fast.#', 'fast', $1)",
        &[&rx.url("/fast")],
    )
    .unwrap();
    emit_many(&mut c, "slow.event", 20, false);
    wait_for("a slow handler running", Duration::from_secs(10), || {
        let n = count(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND wait_event = 'PgSleep'",
        );
        (n > 0).then_some(())
    });
    let took = latency_of(&mut c, &rx, "/fast", "fast.event", 100);
    assert!(
        took < Duration::from_secs(2),
        "100 HTTP events took up to {took:?} after their commit, behind slow SQL handlers"
    );
    let slow_done = count(
        &mut c,
        "SELECT count(*) FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s
             ON s.id = l.subscription_id WHERE s.handler_module = 'slow'",
    );
    assert!(
        slow_done < 20,
        "the slow handlers were all done first ({slow_done})"
    );
    eprintln!("slow SQL handlers: 100 HTTP deliveries within {took:?}, {slow_done} of 20 slow handlers done");
    // and the slow ones all finish, each once
    wait_for("the slow handlers", Duration::from_secs(60), || {
        let n = count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s
                 ON s.id = l.subscription_id WHERE s.handler_module = 'slow' AND l.status = 'success'",
        );
        (n >= 20).then_some(())
    });
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s
                 ON s.id = l.subscription_id WHERE s.handler_module = 'slow'"
        ),
        20,
        "every slow handler ran once"
    );
}
