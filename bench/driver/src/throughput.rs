//! `throughput`, `unmatched` and `sustained`: deliveries per second in a burst, a burst that
//! matches nothing, and a steady stream of single-event commits.

use super::*;

/// `target` is a URL, or `sql:schema.fn` for a SQL handler (run as role bench_handler).
pub(crate) fn throughput(conn: &str, target: &str, events: i64, fanout: i64, opts: Options) {
    let mut c = connect(conn);
    let mut poller = Poller::new(conn);
    let ordered = opts.ordered;
    if opts.keep {
        c.batch_execute("DELETE FROM event_bus.module_event_subscriptions")
            .unwrap();
    } else {
        reset(&mut c);
    }
    // (payload.n counts the events from 1) the same half for every subscription: the even events,
    // the odd ones match none; or spread: subscription i takes the events with n + i even, so every
    // event goes to half of the subscriptions
    for i in 0..fanout {
        let filter: Option<String> = opts.filtered.map(|spread| {
            if spread {
                format!("($.payload.n + {i}) % 2 == 0")
            } else {
                "$.payload.n % 2 == 0".to_string()
            }
        });
        // (p_filter only when there is one: the `against` section runs this driver on releases
        // before filters)
        let (name, target_arg, sql) = match target.strip_prefix("sql:") {
            Some(function) => (
                format!("handler{i}"),
                function,
                "SELECT event_bus.subscribe('bench.#', $1, p_handler_function => $2, \
                 p_run_as => 'bench_handler', p_ordered => $3",
            ),
            None => (
                format!("sink{i}"),
                target,
                "SELECT event_bus.subscribe('bench.#', $1, $2, p_ordered => $3",
            ),
        };
        match &filter {
            Some(f) => c
                .execute(
                    &format!("{sql}, p_filter => $4)"),
                    &[&name, &target_arg, &ordered, f],
                )
                .unwrap(),
            None => c
                .execute(&format!("{sql})"), &[&name, &target_arg, &ordered])
                .unwrap(),
        };
    }
    let expected = if opts.filtered.is_some() {
        events / 2 * fanout
    } else {
        events * fanout
    };
    if let Some(url) = &opts.failing {
        // with the defaults a subscription gets (retries with backoff, the breaker)
        c.execute(
            "SELECT event_bus.subscribe('bench.#', 'failing', $1)",
            &[url],
        )
        .unwrap();
    }
    let run_started: std::time::SystemTime = c.query_one("SELECT now()", &[]).unwrap().get(0);
    c.batch_execute("VACUUM ANALYZE event_bus.module_events, event_bus.module_event_deliveries")
        .unwrap();
    // emit inside one transaction; the worker sees nothing until COMMIT
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT count(event_bus.emit_module_event($1::text::uuid, 'bench.created', 'bench', 'item',
                 CASE WHEN $3::bigint IS NULL THEN g::text ELSE (g % $3::bigint)::text END,
                 jsonb_build_object('n', g, 'sku', 'SKU-' || g, 'qty', 1, 'note', repeat('x', 200))))
           FROM generate_series(1, $2::bigint) g",
        &[&TENANT, &events, &opts.entities],
    )
    .unwrap();
    tx.commit().unwrap();
    let start = Instant::now();
    loop {
        let done = if opts.failing.is_some() {
            poller.drained_but_failing()
        } else {
            poller.drained()
        };
        if done {
            break;
        }
        if start.elapsed() > Duration::from_secs(900) {
            eprintln!("not drained after 900 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = start.elapsed().as_secs_f64();
    let done: i64 = c
        .query_one(
            &sql("SELECT count(*) FROM event_bus.module_event_deliveries d
               JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
              WHERE d.status = <completed> AND d.created_at >= $1 AND s.handler_module <> 'failing'"),
            &[&run_started],
        )
        .unwrap()
        .get(0);
    if done != expected {
        eprintln!("{done} deliveries completed, not {expected}");
        std::process::exit(1);
    }
    println!(
        "deliveries_per_s={:.0} seconds={:.3}",
        done as f64 / secs,
        secs
    );
}

pub(crate) fn unmatched(conn: &str, events: i64) {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let port = start_receiver(&arrivals);
    let mut c = connect(conn);
    let mut poller = Poller::new(conn);
    reset(&mut c);
    c.execute(
        "SELECT event_bus.subscribe('bench.#', 'sink', $1)",
        &[&format!("http://127.0.0.1:{port}/")],
    )
    .unwrap();
    c.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'nobody.cares', 'bench', 'item', NULL,
             (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, $2::bigint) g))",
        &[&TENANT, &events],
    )
    .unwrap();
    let start = Instant::now();
    let probe = emit_probe(&mut c);
    let probe_ms = wait_arrivals(&arrivals, &[probe]);
    if probe_ms.is_empty() {
        eprintln!("the matched event never arrived");
        std::process::exit(1);
    }
    loop {
        if poller.drained() {
            break;
        }
        if start.elapsed() > Duration::from_secs(900) {
            eprintln!("not drained after 900 s");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "unmatched_per_s={:.0} probe_ms={:.2} seconds={:.3}",
        events as f64 / secs,
        probe_ms[0],
        secs
    );
}

pub(crate) fn sustained(
    conn: &str,
    url: &str,
    clients: usize,
    seconds: u64,
    failing: Option<&str>,
) {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let port = start_receiver(&arrivals);
    let mut c = connect(conn);
    reset(&mut c);
    let sink: String = c
        .query_one(
            "SELECT event_bus.subscribe('sustained.#', 'sink', $1)::text",
            &[&url],
        )
        .unwrap()
        .get(0);
    if let Some(failing) = failing {
        // a neighbour to the same events whose every attempt fails: its retries and its breaker
        // run beside the sink's deliveries
        c.execute(
            "SELECT event_bus.subscribe('sustained.#', 'failing', $1)",
            &[&failing],
        )
        .unwrap();
    }
    c.execute(
        "SELECT event_bus.subscribe('bench.probe', 'probe', $1)",
        &[&format!("http://127.0.0.1:{port}/")],
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let emitters: Vec<_> = (0..clients)
        .map(|i| {
            let stop = Arc::clone(&stop);
            let conn = conn.to_string();
            std::thread::spawn(move || {
                let mut c = connect(&conn);
                let stmt = c
                    .prepare(
                        "SELECT event_bus.emit_module_event($1::text::uuid, 'sustained.event', 'bench', 'item', $2,
                                                            jsonb_build_object('client', $3::int, 'n', $4::bigint))",
                    )
                    .unwrap();
                let mut n: i64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    c.execute(&stmt, &[&TENANT, &format!("{i}-{n}"), &(i as i32), &n]).unwrap();
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    let mut committed = Vec::new();
    let mut p = connect(conn);
    while start.elapsed() < Duration::from_secs(seconds) {
        committed.push(emit_probe(&mut p));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    let emitted: i64 = emitters.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = start.elapsed().as_secs_f64();
    let end = Instant::now();
    // the events the sink still owes (with a failing neighbour an event's own status stays
    // unfinished while the neighbour retries: what counts is the sink's delivery of it)
    let backlog_query = &sql(if failing.is_some() {
        "SELECT count(*) FROM event_bus.module_events e
          WHERE e.event_type = 'sustained.event'
            AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                             JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                            WHERE d.event_id = e.id AND s.handler_module = 'sink' AND d.status = <completed>)"
    } else {
        "SELECT count(*) FROM event_bus.module_events e
          WHERE e.event_type = 'sustained.event' AND e.status <> <completed>"
    });
    let delivered: i64 = c
        .query_one(
            &sql("SELECT count(*) FROM event_bus.module_event_deliveries d
              WHERE d.status = <completed> AND d.subscription_id = $1::text::uuid"),
            &[&sink],
        )
        .unwrap()
        .get(0);
    let backlog: i64 = c.query_one(backlog_query, &[]).unwrap().get(0);
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    // polled by index (the backlog count reads every event of the run): the sink's deliveries
    // done and nothing left to fan out; then the count confirms it
    let mut poller = Poller::new(conn);
    loop {
        if poller.sub_drained(&sink)
            && c.query_one(backlog_query, &[]).unwrap().get::<_, i64>(0) == 0
        {
            break;
        }
        if Instant::now() > drain_deadline {
            let left: i64 = c.query_one(backlog_query, &[]).unwrap().get(0);
            eprintln!("{left} events still undelivered 600 s after the emitters stopped");
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain_s = end.elapsed().as_secs_f64();
    let mut lat = wait_arrivals(&arrivals, &committed);
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "emitted_per_s={:.0} delivered_per_s={:.0} backlog_at_end={backlog} drain_s={drain_s:.2} probe_p50_ms={:.2} probe_p99_ms={:.2} probes={}",
        emitted as f64 / elapsed,
        delivered as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.len()
    );
}
