//! The shared worker pool: 50 databases with the extension on a cluster with the default
//! max_worker_processes (8); every database's events are delivered, a database idle for a minute
//! gets its next event at once, and a database with 20,000 events pending does not hold up
//! another one's event while the pool is full.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{count, wait_for, Cluster};
use std::time::{Duration, Instant};

const TENANT: &str = "88888888-8888-8888-8888-888888888888";
const DBS: usize = 50;

fn emit(c: &mut postgres::Client, n: i64) {
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'stock.moved', 'inventory', 'sku', $2::bigint::text, '{}')",
        &[&TENANT, &n],
    )
    .unwrap();
}

#[test]
fn fifty_databases_share_the_default_pool_idle_ones_wake_at_once_and_a_backlog_starves_no_one() {
    let cluster = Cluster::start(
        "pool",
        &[
            // the default, not the 32 the other tests' clusters get
            "max_worker_processes = 8",
            "event_bus.poll_interval_ms = 1000",
        ],
    );
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut dbs: Vec<postgres::Client> = Vec::new();
    for i in 0..DBS {
        let mut c = cluster.create_db_with_extension(&format!("tenant_{i}"));
        c.execute(
            "SELECT event_bus.subscribe('stock.#', 'warehouse', $1)",
            &[&rx.url(&format!("/db{i}"))],
        )
        .unwrap();
        dbs.push(c);
    }
    let mut admin = cluster.connect("postgres");
    let slots: String = admin
        .query_one("SHOW max_worker_processes", &[])
        .unwrap()
        .get(0);
    assert_eq!(slots, "8");

    // one event in every database: all delivered, by at most event_bus.max_workers (4) workers
    for (i, c) in dbs.iter_mut().enumerate() {
        emit(c, i as i64);
    }
    let mut most = 0;
    wait_for(
        "an event delivered in each of the 50 databases",
        Duration::from_secs(60),
        || {
            most = most.max(count(
                &mut admin,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker'",
            ));
            (0..DBS)
                .all(|i| rx.count(&format!("/db{i}")) == 1)
                .then_some(())
        },
    );
    assert!(
        most <= 4,
        "{most} workers at once, more than event_bus.max_workers"
    );
    // nothing in the server log about running out of worker slots
    assert!(
        !cluster.log().contains("could not start a delivery worker"),
        "{}",
        cluster.log()
    );

    // idle for a minute: no worker holds these databases any more; the next event still arrives
    // at once (the launcher starts a worker for it at the commit), not at the next visit (a
    // minute): within 500 ms (38-76 ms seen in CI with a debug build beside other suites; the
    // bench's pool section measures it: p99 < 50 ms)
    let idle_since = Instant::now();
    // (EVENT_BUS_POOL_IDLE_SECONDS shortens it when working on this test)
    let idle: u64 = std::env::var("EVENT_BUS_POOL_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    std::thread::sleep(Duration::from_secs(idle).saturating_sub(idle_since.elapsed()));
    let mut latencies = Vec::new();
    for i in [3usize, 17, 29, 41, 48] {
        let c = &mut dbs[i];
        wait_for(
            "no worker serving the database",
            Duration::from_secs(30),
            || {
                (count(
                c,
                "SELECT coalesce(sum(workers), 0)::bigint FROM event_bus.worker_pool() WHERE database = current_database()",
            ) == 0)
                .then_some(())
            },
        );
        let path = format!("/db{i}");
        let committed = Instant::now();
        emit(c, 1000 + i as i64);
        let arrived = wait_for(
            "the event after the idle minute",
            Duration::from_secs(10),
            || {
                let got = rx.on(&path);
                (got.len() == 2).then(|| got[1].at)
            },
        );
        latencies.push(arrived.duration_since(committed));
        eprintln!("db {i}: {:?}", arrived.duration_since(committed));
    }
    latencies.sort();
    eprintln!("first event into an idle database: {latencies:?}");
    assert!(
        latencies[latencies.len() - 1] < Duration::from_millis(500),
        "an event into an idle database took {:?}",
        latencies
    );

    // a backlog of 20,000 events in one database while the pool has a single worker: another
    // database's event goes out all the same: the worker leaves the backlog when its slice
    // (event_bus.worker_slice_ms, 500 ms) is over and others wait. What shows it is that the small
    // databases' events arrive while the backlog is still being worked off (backlog_left > 0 when
    // the last one is in); each within a few slices (2 s: 4 slices, for the worker's exit and
    // start on a loaded machine with a debug build: 0.67-1.05 s seen in CI). How fast is measured
    // in bench/run.sh (SECTIONS=pool), not here.
    admin
        .batch_execute("ALTER SYSTEM SET event_bus.max_workers = 1")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let big = &mut dbs[0];
    big.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'stock.moved', 'inventory', 'sku', NULL,
             (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, 20000) i))",
        &[&TENANT],
    )
    .unwrap();
    wait_for("the backlog under way", Duration::from_secs(30), || {
        (rx.count("/db0") > 200).then_some(())
    });
    let mut delays = Vec::new();
    for i in [5usize, 6, 7] {
        let path = format!("/db{i}");
        let before = rx.count(&path);
        let committed = Instant::now();
        emit(&mut dbs[i], 2000 + i as i64);
        let arrived = wait_for(
            "the small database's event",
            Duration::from_secs(10),
            || {
                let got = rx.on(&path);
                (got.len() > before).then(|| got[before].at)
            },
        );
        delays.push(arrived.duration_since(committed));
    }
    let backlog_left = 20_001 - rx.count("/db0") as i64;
    eprintln!("events beside a 20,000-event backlog (1 pool worker): {delays:?}, backlog left {backlog_left}");
    assert!(
        backlog_left > 0,
        "the backlog was gone before the test could measure beside it"
    );
    assert!(
        delays.iter().all(|d| *d < Duration::from_secs(2)),
        "an event waited {delays:?} behind another database's backlog"
    );
    // the pool is visible: the metric counted the waits
    let metrics: String = dbs[1]
        .query_one("SELECT event_bus.metrics()", &[])
        .unwrap()
        .get(0);
    let full: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("event_bus_pool_full_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(full >= 1, "{metrics}");
    wait_for("the backlog delivered", Duration::from_secs(120), || {
        (rx.count("/db0") == 20_001).then_some(())
    });
}
