//! Unsubscribing is safe at any moment (issue 31): it never fails because the worker is busy, and at
//! its commit no unfinished delivery of the subscription remains, whether the worker's fan-out
//! created it before, during or after the call. The lock order that makes it so is in
//! sql/lifecycle.sql; the worker's upkeep sweep (half a minute later) is not what these rely on.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "88888888-8888-8888-8888-888888888888";
const LONG: Duration = Duration::from_secs(120);

fn one(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn subscribe(c: &mut postgres::Client, url: &str, module: &str, extra: &str) -> String {
    c.query_one(
        &format!("SELECT event_bus.subscribe('invoice.*', $2, $1{extra})::text"),
        &[&url, &module],
    )
    .unwrap()
    .get(0)
}

/// Unfinished deliveries of `sub` (by id).
fn unfinished(c: &mut postgres::Client, sub: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM event_bus.module_event_deliveries
          WHERE subscription_id = $1::text::uuid AND status = ANY (event_bus._unfinished_states())",
        &[&sub],
    )
    .unwrap()
    .get(0)
}

/// Lock waits of sessions other than this one: (background workers, client backends).
fn lock_waits(c: &mut postgres::Client) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE a.backend_type <> 'client backend'),
                    count(*) FILTER (WHERE a.backend_type = 'client backend')
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE NOT l.granted AND a.pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// The worker's fan-out is held at its most dangerous point — its snapshot has the subscription,
/// its deliveries are not committed — by a lock the test holds on the counter row the same
/// statement updates; the subscription is deleted from another session meanwhile. Before 0.11.0
/// the fan-out's deliveries for it stayed behind (the DELETE's trigger could not see them; only the
/// upkeep sweep removed them half a minute later).
#[test]
fn an_unsubscribe_during_a_fan_out_leaves_nothing_behind_and_never_fails() {
    let cluster = Cluster::start("unsub_fanout", &["event_bus.poll_interval_ms = 200"]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("unsub_fanout");
    let steady = subscribe(&mut c, &rx.url("/steady"), "steady", "");
    // limited: its deliveries are created due, for a later claim, not leased at once (a delivery
    // created leased is sent and recorded whatever happens to its subscription)
    let doomed = subscribe(
        &mut c,
        &rx.url("/doomed"),
        "doomed",
        ", p_max_in_flight => 4",
    );
    let emit = |c: &mut postgres::Client| -> String {
        one(
            c,
            &format!(
                "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', \
                 'INV-1', '{{}}')::text"
            ),
        )
    };
    // the worker is up and has delivered to both
    emit(&mut c);
    wait_for("the first event delivered to both", LONG, || {
        (rx.count("/steady") == 1 && rx.count("/doomed") == 1).then_some(())
    });

    let mut locker = cluster.connect("unsub_fanout");
    locker
        .batch_execute(
            "BEGIN; SELECT 1 FROM event_bus._counters WHERE name = 'events_dispatched' FOR UPDATE",
        )
        .unwrap();
    let event = emit(&mut c);
    wait_for("the worker's fan-out to wait on the counter", LONG, || {
        (lock_waits(&mut c).0 >= 1).then_some(())
    });
    let unsubscribe = {
        let mut u = cluster.connect("unsub_fanout");
        let doomed = doomed.clone();
        std::thread::spawn(move || {
            u.query_one("SELECT event_bus.unsubscribe($1::text::uuid)", &[&doomed])
                .map(|r| r.get::<_, bool>(0))
        })
    };
    // the unsubscribe is through, or waits for the fan-out (which holds the subscription's row)
    wait_for("the unsubscribe to finish or wait", LONG, || {
        (unsubscribe.is_finished() || lock_waits(&mut c).1 >= 1).then_some(())
    });
    locker.batch_execute("ROLLBACK").unwrap();
    let result = unsubscribe.join().unwrap();
    assert!(matches!(result, Ok(true)), "unsubscribe: {result:?}");

    // the fan-out has committed once the steady delivery of the event is recorded
    wait_for(
        "the event delivered to the steady subscription",
        LONG,
        || {
            (one(
                &mut c,
                &format!(
                    "SELECT coalesce(max(status), '') FROM event_bus.module_event_deliveries
                  WHERE event_id = '{event}' AND subscription_id = '{steady}'"
                ),
            ) == "completed")
                .then_some(())
        },
    );
    assert_eq!(unfinished(&mut c, &doomed), 0, "left behind at once");
    wait_for("the event completed", LONG, || {
        (one(
            &mut c,
            &format!("SELECT status FROM event_bus.module_events WHERE id = '{event}'"),
        ) == "completed")
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(unfinished(&mut c, &doomed), 0, "left behind later");
    assert!(
        !cluster.log().contains("deadlock detected"),
        "{}",
        cluster.log()
    );
}

/// Subscribe, pause, resume, reset its breaker, change its pattern and target, unsubscribe: the
/// subscription's id.
fn churn_cycle(
    s: &mut postgres::Client,
    url: &str,
    limited: bool,
) -> Result<String, postgres::Error> {
    let cap: Option<i32> = limited.then_some(4);
    let id: String = s
        .query_one(
            "SELECT event_bus.subscribe('invoice.*', 'churn', $1, p_max_in_flight => $2)::text",
            &[&url, &cap],
        )?
        .get(0);
    std::thread::sleep(Duration::from_millis(3));
    s.execute(
        "SELECT event_bus.set_subscription_active($1::text::uuid, false)",
        &[&id],
    )?;
    s.execute(
        "SELECT event_bus.set_subscription_active($1::text::uuid, true)",
        &[&id],
    )?;
    // the breaker reset and a change of pattern and target, while the fan-out matches it
    s.execute("SELECT event_bus.reset_breaker($1::text::uuid)", &[&id])?;
    s.execute(
        "UPDATE event_bus.module_event_subscriptions SET event_type = 'invoice.#', handler_url = handler_url || '?v=2'
          WHERE id = $1::text::uuid",
        &[&id],
    )?;
    std::thread::sleep(Duration::from_millis(3));
    s.execute("SELECT event_bus.unsubscribe($1::text::uuid)", &[&id])?;
    Ok(id)
}

/// 40,000 events to a steady subscription while two sessions subscribe, pause, resume, reset,
/// change and unsubscribe 200 others that match the same events: no session sees an error, no deleted
/// subscription keeps an unfinished delivery, and the steady one gets every event exactly once.
#[test]
fn subscription_churn_while_events_flow_loses_nothing_and_leaves_nothing() {
    const EVENTS: usize = 40_000;
    const BATCH: usize = 200;
    const CYCLES_PER_SESSION: usize = 100;
    let cluster = Cluster::start("unsub_churn", &["deadlock_timeout = '200ms'"]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("unsub_churn");
    subscribe(&mut c, &rx.url("/steady"), "steady", "");

    let emitting = Arc::new(AtomicBool::new(true));
    let emitter = {
        let mut e = cluster.connect("unsub_churn");
        let emitting = emitting.clone();
        std::thread::spawn(move || {
            for _ in 0..EVENTS / BATCH {
                e.execute(
                    "SELECT count(event_bus.emit_module_event($1::text::uuid, 'invoice.posted', 'accounting',
                                                              'invoice', g::text, '{}'))
                       FROM generate_series(1, $2::int) g",
                    &[&TENANT, &(BATCH as i32)],
                )
                .unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            emitting.store(false, Ordering::SeqCst);
        })
    };
    let churners: Vec<_> = (0..2)
        .map(|session| {
            let mut s = cluster.connect("unsub_churn");
            let url = rx.url(&format!("/churn-{session}"));
            let emitting = emitting.clone();
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                let mut left_behind = Vec::new();
                let mut previous: Option<String> = None;
                let mut cycles = 0;
                // keep churning while events flow, and at least CYCLES_PER_SESSION times
                while cycles < CYCLES_PER_SESSION || emitting.load(Ordering::SeqCst) {
                    // every other one limited: its deliveries wait for a claim instead of being
                    // sent at once, the case a lost race would leave behind
                    match churn_cycle(&mut s, &url, cycles % 2 == 1) {
                        Ok(id) => {
                            // the one before, a cycle later: nothing a late fan-out added
                            if let Some(p) = previous.replace(id.clone()) {
                                if unfinished(&mut s, &p) > 0 {
                                    left_behind.push(p);
                                }
                            }
                            if unfinished(&mut s, &id) > 0 {
                                left_behind.push(id);
                            }
                        }
                        Err(e) => errors.push(format!("{e:?}")),
                    }
                    cycles += 1;
                }
                (cycles, errors, left_behind)
            })
        })
        .collect();
    emitter.join().unwrap();
    let mut cycles = 0;
    for ch in churners {
        let (n, errors, left_behind) = ch.join().unwrap();
        cycles += n;
        assert!(errors.is_empty(), "errors seen by a session: {errors:#?}");
        assert!(
            left_behind.is_empty(),
            "deleted subscriptions with unfinished deliveries: {left_behind:?}"
        );
    }
    assert!(cycles >= 2 * CYCLES_PER_SESSION);

    let started = Instant::now();
    wait_for("every steady delivery", LONG, || {
        (rx.count("/steady") >= EVENTS).then_some(())
    });
    // none of a deleted subscription, whenever it was deleted (the upkeep sweep waits 30 s: this
    // is well before it for the last ones)
    let orphans = one(
        &mut c,
        "SELECT count(*)::text FROM event_bus.module_event_deliveries d
          WHERE d.status = ANY (event_bus._unfinished_states())
            AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s WHERE s.id = d.subscription_id)",
    );
    assert_eq!(
        orphans, "0",
        "unfinished deliveries of deleted subscriptions"
    );
    std::thread::sleep(Duration::from_millis(500));
    let steady = rx.on("/steady");
    let ids: HashSet<&str> = steady
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(steady.len(), EVENTS, "steady requests");
    assert_eq!(ids.len(), EVENTS, "distinct webhook-ids");
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*)::text FROM event_bus.module_event_deliveries d
               JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
              WHERE s.handler_module = 'steady' AND d.status = 'completed'"
        ),
        EVENTS.to_string()
    );
    assert!(
        !cluster.log().contains("deadlock detected"),
        "the server logged a deadlock"
    );
    eprintln!(
        "{EVENTS} events, {cycles} churn cycles; the last steady delivery {:?} after the emits",
        started.elapsed()
    );
}

/// The events' status is derived in id order by every caller (lock order, step 6 in
/// sql/lifecycle.sql): with the events written, and named, in the reverse of their id order, a
/// refresh that finds one of them locked has taken exactly those before it in id order. Before, it took them in
/// the order they lie in the table, and an unsubscribe's refresh and the worker's record of the same
/// events, each in its own order, deadlocked (40P01: the churn test above, once in CI).
#[test]
fn event_statuses_are_refreshed_in_id_order() {
    let cluster = Cluster::start("refresh_order", &[]);
    let mut c = cluster.create_db_with_extension("refresh_order");
    // 200 events written newest first (each one's row before those of older ids), dispatched, each
    // with a delivery that completed while the event still says pending; among 20,000 others (the
    // planner reads a few hundred of them by a bitmap, in the table's order)
    c.batch_execute(&format!(
        "INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, dispatched_at, status)
         SELECT event_bus._uuid_v7(), '{TENANT}', 'invoice.posted', 'accounting', now(), 'completed'
           FROM generate_series(1, 20000);
         CREATE TABLE public.ids AS
             SELECT event_bus._uuid_v7() AS id, gen_random_uuid() AS sub FROM generate_series(1, 200);
         INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, dispatched_at, status)
         SELECT i.id, '{TENANT}', 'invoice.posted', 'accounting', now(), 'pending'
           FROM public.ids i ORDER BY i.id DESC;
         INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
         SELECT event_bus._delivery_id(i.id, i.sub), i.id, i.sub, '{TENANT}', 'completed', 1 FROM public.ids i;
         ANALYZE event_bus.module_events;
         ANALYZE event_bus.module_event_deliveries;"
    ))
    .unwrap();
    let ids: Vec<String> = c
        .query("SELECT id::text FROM public.ids ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        one(
            &mut c,
            "SELECT (array_agg(e.id ORDER BY e.ctid))[1]::text
               FROM event_bus.module_events e WHERE e.id IN (SELECT id FROM public.ids)"
        ),
        ids[199],
        "the newest event's row comes first in the table"
    );
    let middle = ids[100].clone();
    // another transaction holds the middle event
    let mut holder = cluster.connect("refresh_order");
    holder.batch_execute("BEGIN").unwrap();
    holder
        .execute(
            "SELECT 1 FROM event_bus.module_events WHERE id = $1::text::uuid FOR NO KEY UPDATE",
            &[&middle],
        )
        .unwrap();
    // a refresh of all of them, in a session of its own, named newest first (as they lie in the
    // table): it waits at the middle one
    let refresher = {
        let mut r = cluster.connect("refresh_order");
        std::thread::spawn(move || {
            r.query_one(
                "SELECT event_bus._refresh_event_status(array_agg(id ORDER BY id DESC)) FROM public.ids",
                &[],
            )
            .map(|row| row.get::<_, i32>(0))
        })
    };
    wait_for("the refresh waiting for the held event", LONG, || {
        (one(
            &mut c,
            "SELECT count(*)::text FROM pg_catalog.pg_stat_activity
              WHERE wait_event_type = 'Lock' AND query LIKE '%_refresh_event_status%'",
        ) == "1")
            .then_some(())
    });
    // what it holds meanwhile: every event older than the middle one, none newer
    let taken: Vec<String> = c
        .query(
            "SELECT id::text FROM public.ids
              WHERE id NOT IN (SELECT e.id FROM event_bus.module_events e
                                WHERE e.id IN (SELECT id FROM public.ids)
                                  FOR NO KEY UPDATE SKIP LOCKED)
                AND id <> $1::text::uuid
              ORDER BY id",
            &[&middle],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(refresher.join().unwrap().unwrap(), 200);
    assert_eq!(
        taken,
        ids[..100].to_vec(),
        "the events the refresh had taken while it waited"
    );
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*)::text FROM event_bus.module_events WHERE status = 'completed'"
        ),
        "20200"
    );
}

/// The status derivation keeps its plan for the session (the worker's record calls it every batch),
/// so the plan must not depend on how full the tables were when it was made. A subscription deleted
/// with its held deliveries right after a TRUNCATE had the worker's upkeep derive their events while
/// module_event_deliveries was empty: the plan it kept read the whole table for every event of every
/// later batch (the next 50,000 deliveries took 72 s instead of 4.5, until autovacuum's ANALYZE).
/// Here one session derives on empty analyzed tables, the tables fill (no ANALYZE: that would make
/// any kept plan again), and its next derivation must still read both tables by key.
#[test]
fn status_refresh_planned_on_empty_tables_reads_by_key_once_they_fill() {
    let cluster = Cluster::start("refresh_empty", &[]);
    let mut c = cluster.create_db_with_extension("refresh_empty");
    assert_eq!(
        one(
            &mut c,
            "SELECT pg_relation_size('event_bus.module_event_deliveries')::text"
        ),
        "0"
    );
    // analyzed while empty (autovacuum does that after a TRUNCATE that followed many changes): the
    // planner then believes the tables empty rather than assuming them ten pages long
    c.batch_execute("ANALYZE event_bus.module_events; ANALYZE event_bus.module_event_deliveries;")
        .unwrap();
    // more calls than the plan cache makes custom plans for (five) before it keeps a generic one, of
    // a batch's size (a generic plan assumes ten ids: cheaper than these custom plans, so kept)
    for _ in 0..10 {
        c.query_one(
            "SELECT event_bus._refresh_event_status(ARRAY(SELECT gen_random_uuid() FROM generate_series(1, 500)))",
            &[],
        )
        .unwrap();
    }
    c.batch_execute(&format!(
        "CREATE TABLE public.ids AS
             SELECT event_bus._uuid_v7() AS id, gen_random_uuid() AS sub FROM generate_series(1, 20000);
         INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, dispatched_at, status)
         SELECT i.id, '{TENANT}', 'invoice.posted', 'accounting', now(), 'pending' FROM public.ids i;
         INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
         SELECT event_bus._delivery_id(i.id, i.sub), i.id, i.sub, '{TENANT}', 'completed', 1 FROM public.ids i;"
    ))
    .unwrap();
    c.batch_execute("BEGIN").unwrap();
    let refreshed: i32 = c
        .query_one(
            "SELECT event_bus._refresh_event_status(array_agg(id)) FROM (SELECT id FROM public.ids LIMIT 300) i",
            &[],
        )
        .unwrap()
        .get(0);
    // this transaction's own reads of the two tables, so far: rows read by sequential scans, rows
    // fetched through indexes
    let reads = |c: &mut postgres::Client, table: &str| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT coalesce(seq_tup_read, 0), coalesce(idx_tup_fetch, 0)
                   FROM pg_catalog.pg_stat_xact_user_tables WHERE relid = $1::text::regclass",
                &[&table],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let events = reads(&mut c, "event_bus.module_events");
    let deliveries = reads(&mut c, "event_bus.module_event_deliveries");
    c.batch_execute("COMMIT").unwrap();
    assert_eq!(
        refreshed, 300,
        "each event derived completed from its delivery"
    );
    // each of the 300 events and its delivery read by key (a few reads more at most), never all
    // 20,000 of either table, let alone once per event
    for (table, (seq, idx)) in [
        ("module_events", events),
        ("module_event_deliveries", deliveries),
    ] {
        assert_eq!(seq, 0, "{table}: rows read by sequential scans");
        assert!(
            (300..=1_000).contains(&idx),
            "{table}: rows fetched through indexes: {idx}"
        );
    }
}
