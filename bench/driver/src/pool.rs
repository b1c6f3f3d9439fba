//! `pool`: many databases sharing the worker pool.

use super::*;

/// The shared worker pool: `dbs` databases with the extension (created once, kept), `per_db`
/// events emitted in each (one commit per database) beside the same events emitted in one
/// database (one commit per batch of `per_db`); deliveries/s from the first commit to the last
/// arrival. Then, with every worker gone (idle), the first event into `samples` idle databases,
/// one at a time: commit -> handler, p50/p99.
pub(crate) fn pool(conn: &str, dbs: usize, per_db: i64, samples: usize) {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let port = start_receiver(&arrivals);
    let url = format!("http://127.0.0.1:{port}/pool");
    let with_db = |db: &str| {
        conn.split_whitespace()
            .map(|kv| {
                if kv.starts_with("dbname=") {
                    format!("dbname={db}")
                } else {
                    kv.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut admin = connect(&with_db("postgres"));
    // workers leave a database 200 ms after its last work here (the default is 10 s), so each
    // sample below finds its database without a worker a moment after the previous one
    admin
        .batch_execute("ALTER SYSTEM SET event_bus.worker_idle_ms = 200")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    let names: Vec<String> = (0..dbs)
        .map(|i| format!("pool_{i}"))
        .chain(["pool_one".to_string()])
        .collect();
    let mut clients = Vec::new();
    for name in &names {
        let exists: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
                &[name],
            )
            .unwrap()
            .get(0);
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .unwrap();
        }
        let mut c = connect(&with_db(name));
        c.batch_execute("CREATE EXTENSION IF NOT EXISTS event_bus; DELETE FROM event_bus.module_event_subscriptions;")
            .unwrap();
        c.execute("SELECT event_bus.subscribe('pool.#', 'bench', $1)", &[&url])
            .unwrap();
        clients.push(c);
    }
    let emit_batch = |c: &mut postgres::Client| -> Vec<String> {
        c.query(
            "SELECT id::text FROM event_bus.emit_module_events($1::text::uuid, 'pool.moved', 'bench', 'item', NULL,
                 (SELECT array_agg(jsonb_build_object('n', i)) FROM generate_series(1, $2::bigint) i)) AS id",
            &[&TENANT, &per_db],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
    };
    let idle = |admin: &mut postgres::Client| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker'",
                    &[],
                )
                .unwrap()
                .get(0);
            if n == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the workers did not leave");
    };
    let rate = |ids: &[String], t0: Instant| -> f64 {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let a = arrivals.lock().unwrap();
            if ids.iter().all(|id| a.contains_key(id)) {
                let last = ids.iter().map(|id| a[id]).max().unwrap();
                return ids.len() as f64 / last.duration_since(t0).as_secs_f64();
            }
            drop(a);
            assert!(Instant::now() < deadline, "events were not delivered");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // spread over every database
    idle(&mut admin);
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for c in clients.iter_mut().take(dbs) {
        ids.extend(emit_batch(c));
    }
    let spread = rate(&ids, t0);
    // the same events in one database
    idle(&mut admin);
    let one = clients.last_mut().unwrap();
    let t0 = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..dbs {
        ids.extend(emit_batch(one));
    }
    let single = rate(&ids, t0);
    // first event into an idle database
    idle(&mut admin);
    let mut ms = Vec::new();
    for k in 0..samples {
        let c = &mut clients[(k * 7919) % dbs];
        let id: String = c
            .query_one(
                "SELECT event_bus.emit_module_event($1::text::uuid, 'pool.probe', 'bench', 'item', 'p', '{}')::text",
                &[&TENANT],
            )
            .unwrap()
            .get(0);
        let committed = Instant::now();
        ms.extend(wait_arrivals(&arrivals, &[(id, committed)]));
        // the next sample goes to a database without a worker, as this one was
        idle(&mut admin);
    }
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    admin
        .batch_execute("ALTER SYSTEM RESET event_bus.worker_idle_ms")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    println!(
        "spread_per_s={spread:.0} one_db_per_s={single:.0} first_p50_ms={:.1} first_p99_ms={:.1}",
        percentile(&ms, 0.50),
        percentile(&ms, 0.99)
    );
}
