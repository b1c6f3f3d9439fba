//! `latency`: commit to handler, p50 / p95 / p99, idle or under a background rate.

use super::*;

pub(crate) fn latency(conn: &str, events: usize, rate: u64, hang: i64) {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let port = start_receiver(&arrivals);
    let mut c = connect(conn);
    reset(&mut c);
    c.execute(
        "SELECT event_bus.subscribe('bench.#', 'sink', $1)",
        &[&format!("http://127.0.0.1:{port}/")],
    )
    .unwrap();
    if hang > 0 {
        let silent = start_silent();
        c.execute(
            "SELECT event_bus.subscribe('hang.#', 'hang', $1, p_timeout_ms => 30000)",
            &[&format!("http://127.0.0.1:{silent}/")],
        )
        .unwrap();
        c.execute(
            "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'hang.event', 'bench', 'item', NULL,
                 (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, $2::bigint) g))",
            &[&TENANT, &hang],
        )
        .unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let bg = if rate > 0 {
        let stop = Arc::clone(&stop);
        let conn = conn.to_string();
        Some(std::thread::spawn(move || {
            let mut c = connect(&conn);
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                c.execute(
                    "SELECT event_bus.emit_module_event($1::text::uuid, 'bench.background', 'bench', 'item', 'bg', '{}')",
                    &[&TENANT],
                )
                .unwrap();
                next += interval;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
            }
        }))
    } else {
        None
    };
    std::thread::sleep(Duration::from_millis(500));

    let mut committed: Vec<(String, Instant)> = Vec::with_capacity(events);
    for _ in 0..events {
        committed.push(emit_probe(&mut c));
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut lat = wait_arrivals(&arrivals, &committed);
    stop.store(true, Ordering::SeqCst);
    if let Some(h) = bg {
        let _ = h.join();
    }
    if lat.len() < events {
        eprintln!("only {} of {events} probe events arrived", lat.len());
        std::process::exit(1);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "p50_ms={:.2} p95_ms={:.2} p99_ms={:.2} n={}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.95),
        percentile(&lat, 0.99),
        lat.len()
    );
}
