//! Operations the worker runs by itself: the circuit breaker against a real failing endpoint, and
//! retention. A real cluster, committed data, an HTTP receiver on 127.0.0.1.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TENANT: &str = "55555555-5555-5555-5555-555555555555";

fn emit(c: &mut postgres::Client, event_type: &str) {
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'pos', 'sale', 'S-1', '{}')",
        &[&TENANT, &event_type],
    )
    .unwrap();
}

fn one(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn the_breaker_pauses_a_failing_endpoint_probes_it_and_resumes_when_it_answers() {
    let cluster = Cluster::start(
        "breaker",
        &[
            "event_bus.backoff_base_ms = 20",
            "event_bus.backoff_max_ms = 50",
            "event_bus.poll_interval_ms = 100",
            "event_bus.breaker_cooldown_ms = 1500",
        ],
    );
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let rx = Receiver::start(move |_, _| {
        if f.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("breaker_db");
    let sub = one(
        &mut c,
        &format!(
            "SELECT event_bus.subscribe('pos.#', 'loyalty', '{}', p_max_retries => 100)::text",
            rx.url("/points")
        ),
    );
    c.batch_execute(&format!(
        "UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 5 WHERE id = '{sub}'"
    ))
    .unwrap();
    for _ in 0..20 {
        emit(&mut c, "pos.sale");
    }
    let health = format!(
        "SELECT breaker_state FROM event_bus.subscription_health WHERE subscription_id = '{sub}'"
    );
    wait_for("the breaker to open", Duration::from_secs(30), || {
        let state: String = c.query_one(health.as_str(), &[]).unwrap().get(0);
        (state == "open").then_some(())
    });
    // deliveries claimed before it opened may still be sent; count from when none is left in flight
    wait_for(
        "the attempts in flight at the opening to be recorded",
        Duration::from_secs(30),
        || {
            let in_flight: i64 = c
                .query_one(
                    "SELECT count(*) + event_bus._first_attempts_in_flight()
                       FROM event_bus.module_event_deliveries WHERE status = 'processing'",
                    &[],
                )
                .unwrap()
                .get(0);
            (in_flight == 0).then_some(())
        },
    );
    // while open: deliveries are held and the endpoint rests, but for one probe per cool-down
    let at_open = rx.count("/points");
    std::thread::sleep(Duration::from_millis(2500));
    let during = rx.count("/points") - at_open;
    assert!(
        during <= 4,
        "{during} requests reached the endpoint while its breaker was open"
    );
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'held'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(held >= 10, "only {held} deliveries held");
    let metrics = one(&mut c, "SELECT event_bus.metrics()");
    assert!(
        metrics.contains("event_bus_subscriptions{breaker=\"open\"} 1\n"),
        "{metrics}"
    );

    // the endpoint recovers: the next probe closes the breaker and everything flows
    failing.store(false, Ordering::SeqCst);
    wait_for("every event completed", Duration::from_secs(60), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM event_bus.module_events WHERE status = 'completed' AND event_type = 'pos.sale'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 20).then_some(())
    });
    // the bus reported both changes as events of its own, in the tenant of the failing events
    assert_eq!(
        one(
            &mut c,
            "SELECT string_agg(event_type || ':' || tenant_id || ':' || (payload->>'subscription_id'), ',' ORDER BY id)
               FROM event_bus.module_events WHERE event_type LIKE 'event\\_bus.breaker.%'"
        ),
        format!("event_bus.breaker.opened:{TENANT}:{sub},event_bus.breaker.closed:{TENANT}:{sub}")
    );
    let state = one(
        &mut c,
        &format!("SELECT breaker_state || '/' || consecutive_failures FROM event_bus.subscription_health WHERE subscription_id = '{sub}'"),
    );
    assert_eq!(state, "closed/0");
    let successes: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(successes, 20);
}

#[test]
fn retention_deletes_old_completed_events_by_itself_and_keeps_dead_letters() {
    let cluster = Cluster::start(
        "retention",
        &[
            "event_bus.poll_interval_ms = 100",
            "event_bus.retention = '1 second'",
        ],
    );
    let mut c = cluster.create_db_with_extension("retention_db");
    // a dead letter: nothing listens on port 9, no retries
    c.batch_execute("SELECT event_bus.subscribe('pos.refund', 'loyalty', 'http://127.0.0.1:9/x', p_max_retries => 0)")
        .unwrap();
    emit(&mut c, "pos.refund");
    for _ in 0..50 {
        emit(&mut c, "pos.sale"); // no subscription: completed at once
    }
    wait_for(
        "completed events purged by the worker",
        Duration::from_secs(30),
        || {
            let left = one(
                &mut c,
                "SELECT string_agg(event_type || ':' || status, ',') FROM event_bus.module_events",
            );
            (left == "pos.refund:failed").then_some(())
        },
    );
    assert_eq!(
        one(&mut c, "SELECT count(*)::text FROM event_bus.dead_letters"),
        "1"
    );
    let metrics = one(&mut c, "SELECT event_bus.metrics()");
    // the 50 sales, and the event_bus.delivery.failed event that reported the refund's dead
    // delivery (nothing subscribes to it here: completed at once)
    assert!(
        metrics.contains("event_bus_events_purged_total 51\n"),
        "{metrics}"
    );
}

#[test]
fn a_schema_registered_in_one_session_binds_every_other_session_from_its_commit() {
    let cluster = Cluster::start("contracts", &[]);
    let mut a = cluster.create_db_with_extension("contracts_db");
    let mut b = cluster.connect("contracts_db");
    let emit_total = |c: &mut postgres::Client, total: &str| -> Result<u64, postgres::Error> {
        c.execute(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'invoice.posted', 'accounting', 'invoice', 'I-1',
                 jsonb_build_object('total', $2::text::jsonb))",
            &[&TENANT, &total],
        )
    };
    let state = |r: Result<u64, postgres::Error>| {
        r.err().and_then(|e| e.code().map(|c| c.code().to_string()))
    };
    // b has emitted (and cached "no contracts") before any schema exists
    assert_eq!(state(emit_total(&mut b, "\"ten\"")), None);
    let schema =
        r#"{"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}"#;

    // registered but not committed: b is not bound yet
    a.batch_execute("BEGIN").unwrap();
    a.execute(
        "SELECT event_bus.register_event_type('invoice.posted', 1, $1::text::jsonb)",
        &[&schema],
    )
    .unwrap();
    assert_eq!(
        state(emit_total(&mut a, "\"ten\"")).as_deref(),
        Some("23514")
    );
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(state(emit_total(&mut b, "\"ten\"")), None);
    // after a rollback, a is free again too
    assert_eq!(state(emit_total(&mut a, "\"ten\"")), None);

    // committed: b's next emit is checked, without reconnecting
    a.execute(
        "SELECT event_bus.register_event_type('invoice.posted', 1, $1::text::jsonb)",
        &[&schema],
    )
    .unwrap();
    assert_eq!(
        state(emit_total(&mut b, "\"ten\"")).as_deref(),
        Some("23514")
    );
    assert_eq!(state(emit_total(&mut b, "10")), None);

    // a new version reaches b the same way; unregistering frees the type everywhere
    a.execute(
        "SELECT event_bus.register_event_type('invoice.posted', 2, $1::text::jsonb)",
        &[&r#"{"type": "object", "properties": {"total": {"type": "number", "minimum": 100}}}"#],
    )
    .unwrap();
    assert_eq!(state(emit_total(&mut b, "10")).as_deref(), Some("23514"));
    a.execute(
        "SELECT event_bus.unregister_event_type('invoice.posted')",
        &[],
    )
    .unwrap();
    assert_eq!(state(emit_total(&mut b, "\"ten\"")), None);
    let written: i64 = b
        .query_one("SELECT count(*) FROM event_bus.module_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(written, 5);
}

/// An unsubscribe while the worker is recording outcomes for that subscription: the DELETE takes
/// the subscription's row and then, in its trigger, the unfinished deliveries; the worker's record
/// must take the same two in the same order, or each waits for the other ("deadlock detected":
/// the user's unsubscribe, or the worker's record, rolled back). Seen about once in ten tries with
/// a steady stream of events before the record took the subscription rows first.
#[test]
fn unsubscribing_while_the_worker_delivers_for_that_subscription_never_deadlocks() {
    let cluster = Cluster::start("unsubscribe_race", &["deadlock_timeout = '200ms'"]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("unsubscribe_race_db");
    // a steady stream of events, each batch its own transaction
    let stop = Arc::new(AtomicBool::new(false));
    let emitter = {
        let stop = stop.clone();
        let mut e = cluster.connect("unsubscribe_race_db");
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                e.execute(
                    "SELECT count(event_bus.emit_module_event($1::text::uuid, 'pos.sale', 'pos', 'sale', g::text, '{}'))
                       FROM generate_series(1, 50) g",
                    &[&TENANT],
                )
                .unwrap();
            }
        })
    };
    let tries = 30;
    let mut failures = Vec::new();
    for i in 0..tries {
        let sub = one(
            &mut c,
            &format!(
                "SELECT event_bus.subscribe('pos.#', 'race-{i}', '{}')::text",
                rx.url("/race")
            ),
        );
        // the worker is recording outcomes of this subscription's deliveries
        wait_for(
            "deliveries of the new subscription",
            Duration::from_secs(30),
            || {
                let done: i64 = c
                    .query_one(
                        "SELECT count(*) FROM event_bus.module_event_deliveries
                      WHERE subscription_id = $1::text::uuid AND status = 'completed'",
                        &[&sub],
                    )
                    .unwrap()
                    .get(0);
                (done >= 20).then_some(())
            },
        );
        if let Err(e) = c.execute("SELECT event_bus.unsubscribe($1::text::uuid)", &[&sub]) {
            failures.push(format!("try {i}: {e:?}"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    emitter.join().unwrap();
    assert!(failures.is_empty(), "unsubscribe failed: {failures:#?}");
    // nor was the worker's side the one rolled back
    let log = cluster.log();
    assert!(
        !log.contains("deadlock detected"),
        "the server logged a deadlock:\n{}",
        log.lines()
            .filter(|l| l.contains("deadlock") || l.contains("DETAIL") || l.contains("Process "))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
