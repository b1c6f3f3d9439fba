//! event_bus benchmark driver.
//!
//! `throughput <connstr> <url> <events> <fanout> [keep] [ordered] [entities=N]`: subscribe `fanout`
//! subscriptions to `url` (ordered ones with `ordered`), emit `events` events in one committed
//! statement (over N entities, round robin, with `entities=N`; else one entity each), time from
//! commit until every delivery finished. Prints `deliveries_per_s=<x> seconds=<y>`.
//!
//! `latency <connstr> <events> <background_rate> [hang=N]`: run an HTTP receiver on 127.0.0.1,
//! subscribe it, emit `events` single events spaced 10 ms apart (each its own commit) while a second
//! connection emits `background_rate` events/s to the same subscription; print p50/p95/p99 of
//! commit → handler. With `hang=N`: first N events to a second subscription whose endpoint accepts
//! connections and never answers (30 s timeout), still in flight while the probes run.
//!
//! `unmatched <connstr> <events>`: emit `events` events that match no subscription in one statement,
//! then one that does; print how fast the burst was completed (`unmatched_per_s`) and how long the
//! matched one took from its commit to its handler (`probe_ms`).
//!
//! `sustained <connstr> <url> <clients> <seconds>`: `clients` connections emit single events (each
//! its own commit) as fast as they can for `seconds`, to a subscription to `url`, while a probe
//! emits an event every 50 ms to this driver's own receiver. Prints events emitted/s, deliveries
//! completed/s during the run, the backlog (events not yet delivered) at its end, how long it took
//! to drain, and the probes' commit → handler p50/p99.
//!
//! `console <connstr> <console base url> <role> <password> <tenant|-> <samples>`: the Event
//! Monitor's pages against what they cost in SQL. Signs in to the console as `role`, then for each
//! page (overview, events, events filtered by status, by module + type) times `samples` GETs and
//! `samples` runs of the page's SQL as that role (its tenant set), and prints p50 / p99 of each,
//! and the page's first view (nothing cached by the console yet).
//!
//! `throughput ... failing=URL`: a second subscription to URL (answering errors at once) beside the
//! measured one, with a subscription's defaults (retries with backoff, the circuit breaker); timed
//! until the measured subscriptions are done.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "44444444-4444-4444-4444-444444444444";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(|s| s.as_str()) {
        Some("throughput") => {
            let opts = &args[6.min(args.len())..];
            let entities = opts
                .iter()
                .find_map(|o| o.strip_prefix("entities="))
                .map(|n| n.parse().unwrap());
            throughput(
                &args[2],
                &args[3],
                args[4].parse().unwrap(),
                args[5].parse().unwrap(),
                Options {
                    keep: opts.iter().any(|o| o == "keep"),
                    ordered: opts.iter().any(|o| o == "ordered"),
                    entities,
                    failing: opts
                        .iter()
                        .find_map(|o| o.strip_prefix("failing="))
                        .map(|s| s.to_string()),
                },
            )
        }
        Some("latency") => {
            let hang = args
                .get(5)
                .and_then(|o| o.strip_prefix("hang="))
                .map(|n| n.parse().unwrap())
                .unwrap_or(0);
            latency(
                &args[2],
                args[3].parse().unwrap(),
                args[4].parse().unwrap(),
                hang,
            )
        }
        Some("unmatched") => unmatched(&args[2], args[3].parse().unwrap()),
        Some("sustained") => sustained(
            &args[2],
            &args[3],
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        Some("request") => request(&args[2], &args[3], args[4].parse().unwrap()),
        Some("console") => console(
            &args[2],
            &args[3],
            &args[4],
            &args[5],
            &args[6],
            args[7].parse().unwrap(),
        ),
        Some("broker_setup") => broker_setup(&args[2]),
        Some("broker_baseline") => broker_baseline(&args[2], args[3].parse().unwrap()),
        Some("pool") => pool(
            &args[2],
            args[3].parse().unwrap(),
            args[4].parse().unwrap(),
            args[5].parse().unwrap(),
        ),
        _ => {
            eprintln!("usage: broker_setup <amqp or nats URL> | broker_baseline <URL> <messages> | pool <conn> <databases> <events per database> <idle samples> | request <conn> <sink url> <calls> | throughput <conn> <url|sql:schema.fn> <events> <fanout> [keep] [ordered] [entities=N] [failing=URL] | latency <conn> <events> <rate> [hang=N] | unmatched <conn> <events>");
            std::process::exit(2);
        }
    }
}

fn connect(conn: &str) -> postgres::Client {
    postgres::Client::connect(conn, postgres::NoTls).expect("connect")
}

fn reset(c: &mut postgres::Client) {
    // TRUNCATE waits for the worker's transactions and may deadlock with one: try again
    for attempt in 1.. {
        match c.batch_execute(
            "DELETE FROM event_bus.module_event_subscriptions;
             TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs;",
        ) {
            Ok(()) => return,
            Err(e) if attempt < 20 => {
                eprintln!("reset: {e}; trying again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("reset failed: {e}"),
        }
    }
}

/// The driver's own probe of "is the worker done?", on a connection of its own. It runs every few
/// milliseconds while the worker works, on the same two cores, so it must cost next to nothing:
/// each question is an index probe (seq and bitmap scans off: once the statistics count the
/// emitted events, the planner reads `module_events` from its start for `dispatched_at IS NULL`,
/// 8-9 ms a probe, a third of a core at one probe per 20 ms), parsed and planned once.
struct Poller {
    c: postgres::Client,
    drained: postgres::Statement,
    drained_but_failing: postgres::Statement,
    sub_drained: postgres::Statement,
}

impl Poller {
    fn new(conn: &str) -> Poller {
        let mut c = connect(conn);
        c.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off; SET plan_cache_mode = force_generic_plan")
            .unwrap();
        let drained = c
            .prepare(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status IN ('pending', 'processing'))
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status = 'held')
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries
                                     WHERE ordering_key IS NOT NULL
                                       AND status IN ('waiting', 'pending', 'processing', 'held', 'failed')
                                       AND status = 'waiting')",
            )
            .unwrap();
        // with a failing neighbour: until the measured subscriptions are done (the neighbour's
        // deliveries go on retrying, or wait behind its breaker)
        let drained_but_failing = c
            .prepare(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                      JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                                     WHERE d.status IN ('pending', 'processing') AND s.handler_module <> 'failing')",
            )
            .unwrap();
        // one subscription's deliveries done, and nothing left to fan out
        let sub_drained = c
            .prepare(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                     WHERE d.status IN ('pending', 'processing') AND d.subscription_id = $1::text::uuid)",
            )
            .unwrap();
        Poller { c, drained, drained_but_failing, sub_drained }
    }

    fn ask(&mut self, which: &postgres::Statement, params: &[&(dyn postgres::types::ToSql + Sync)]) -> bool {
        self.c.query_one(which, params).unwrap().get(0)
    }

    /// Nothing left to fan out, deliver, release or advance.
    fn drained(&mut self) -> bool {
        let q = self.drained.clone();
        self.ask(&q, &[])
    }

    fn drained_but_failing(&mut self) -> bool {
        let q = self.drained_but_failing.clone();
        self.ask(&q, &[])
    }

    fn sub_drained(&mut self, subscription: &str) -> bool {
        let q = self.sub_drained.clone();
        self.ask(&q, &[&subscription])
    }
}

struct Options {
    /// keep the tables' history (the growth runs)
    keep: bool,
    /// ordered subscriptions
    ordered: bool,
    /// spread the events over this many entities (None: one entity per event)
    entities: Option<i64>,
    /// a neighbour subscription to this URL, failing every delivery once
    failing: Option<String>,
}

/// `target` is a URL, or `sql:schema.fn` for a SQL handler (run as role bench_handler).
fn throughput(conn: &str, target: &str, events: i64, fanout: i64, opts: Options) {
    let mut c = connect(conn);
    let mut poller = Poller::new(conn);
    let ordered = opts.ordered;
    if opts.keep {
        c.batch_execute("DELETE FROM event_bus.module_event_subscriptions")
            .unwrap();
    } else {
        reset(&mut c);
    }
    for i in 0..fanout {
        match target.strip_prefix("sql:") {
            Some(function) => c
                .execute(
                    "SELECT event_bus.subscribe('bench.#', $1, p_handler_function => $2, p_run_as => 'bench_handler',
                                                p_ordered => $3)",
                    &[&format!("handler{i}"), &function, &ordered],
                )
                .unwrap(),
            None => c
                .execute(
                    "SELECT event_bus.subscribe('bench.#', $1, $2, p_ordered => $3)",
                    &[&format!("sink{i}"), &target, &ordered],
                )
                .unwrap(),
        };
    }
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
            "SELECT count(*) FROM event_bus.module_event_deliveries d
               JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
              WHERE d.status = 'completed' AND d.created_at >= $1 AND s.handler_module <> 'failing'",
            &[&run_started],
        )
        .unwrap()
        .get(0);
    if done != events * fanout {
        eprintln!("only {done} of {} deliveries completed", events * fanout);
        std::process::exit(1);
    }
    println!(
        "deliveries_per_s={:.0} seconds={:.3}",
        done as f64 / secs,
        secs
    );
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// An HTTP receiver on 127.0.0.1 that notes when each event id first arrived; returns its port.
fn start_receiver(arrivals: &Arrivals) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let arrivals = Arc::clone(&arrivals);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let arrivals = Arc::clone(&arrivals);
                std::thread::spawn(move || {
                    let _ = conn.set_nodelay(true);
                    let mut w = conn.try_clone().unwrap();
                    let mut r = BufReader::new(conn);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut len = 0usize;
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            let h = h.trim_end().to_ascii_lowercase();
                            if h.is_empty() {
                                break;
                            }
                            if let Some(v) = h.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let now = Instant::now();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            if let Some(id) = v["id"].as_str() {
                                arrivals
                                    .lock()
                                    .unwrap()
                                    .entry(id.to_string())
                                    .or_insert(now);
                            }
                        }
                        if w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
    }
    port
}

/// An endpoint that accepts connections and never answers; returns its port.
fn start_silent() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    port
}

/// Wait until every id in `ids` has arrived (60 s at most); the times from commit to arrival, ms.
fn wait_arrivals(arrivals: &Arrivals, committed: &[(String, Instant)]) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = arrivals.lock().unwrap();
        if committed.iter().all(|(id, _)| a.contains_key(id)) || Instant::now() > deadline {
            return committed
                .iter()
                .filter_map(|(id, t)| {
                    a.get(id)
                        .map(|at| at.saturating_duration_since(*t).as_secs_f64() * 1000.0)
                })
                .collect();
        }
        drop(a);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn emit_probe(c: &mut postgres::Client) -> (String, Instant) {
    let id: String = c
        .query_one(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'bench.probe', 'bench', 'item', 'p', '{}')::text",
            &[&TENANT],
        )
        .unwrap()
        .get(0);
    (id, Instant::now())
}

fn unmatched(conn: &str, events: i64) {
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

fn latency(conn: &str, events: usize, rate: u64, hang: i64) {
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

fn sustained(conn: &str, url: &str, clients: usize, seconds: u64) {
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
    let backlog_query = "SELECT count(*) FROM event_bus.module_events e
                          WHERE e.event_type = 'sustained.event' AND e.status <> 'completed'";
    let delivered: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_deliveries d
              WHERE d.status = 'completed' AND d.subscription_id = $1::text::uuid",
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
        if poller.sub_drained(&sink) && c.query_one(backlog_query, &[]).unwrap().get::<_, i64>(0) == 0 {
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

/// Request round trips from one client, `calls` each after a warm-up: event_bus.request to a SQL
/// responder beside calling the same function directly, and to an HTTP responder (the sink)
/// beside a bare HTTP POST of the same CloudEvents-sized body to the same sink. Prints
/// p50/p99 in ms per kind.
fn request(conn: &str, sink: &str, calls: usize) {
    let mut c = connect(conn);
    c.batch_execute(
        "DELETE FROM event_bus.module_event_subscriptions WHERE event_type LIKE 'bench.ask_%'",
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('bench.ask_sql', 'bench', p_handler_function => 'bench.h',
                                    p_run_as => 'bench_handler', p_replies => true)",
        &[],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('bench.ask_http', 'bench', $1, p_replies => true)",
        &[&sink],
    )
    .unwrap();
    // an event row for the direct call
    let event: String = c
        .query_one(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'bench.direct', 'bench', 'x', '1', '{\"n\": 1}')::text",
            &[&TENANT],
        )
        .unwrap()
        .get(0);
    let time = |f: &mut dyn FnMut()| -> (f64, f64) {
        for _ in 0..calls / 10 + 10 {
            f();
        }
        let mut ms: Vec<f64> = (0..calls)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (percentile(&ms, 0.50), percentile(&ms, 0.99))
    };
    let mut c2 = connect(conn);
    let ask_sql = c2
        .prepare(
            "SELECT event_bus.request('bench.ask_sql', '{\"n\": 1}', 5000, $1::text::uuid)::text",
        )
        .unwrap();
    let (sql50, sql99) = time(&mut || {
        c2.query_one(&ask_sql, &[&TENANT]).unwrap();
    });
    // the same without waiting for the commit's WAL flush: what the record's durability costs
    c2.batch_execute("SET synchronous_commit = off").unwrap();
    let (async50, async99) = time(&mut || {
        c2.query_one(&ask_sql, &[&TENANT]).unwrap();
    });
    c2.batch_execute("RESET synchronous_commit").unwrap();
    let direct = c2
        .prepare(
            "SELECT bench.h(e)::text FROM event_bus.module_events e WHERE e.id = $1::text::uuid",
        )
        .unwrap();
    let (d50, d99) = time(&mut || {
        c2.query_one(&direct, &[&event]).unwrap();
    });
    let ask_http = c2
        .prepare(
            "SELECT event_bus.request('bench.ask_http', '{\"n\": 1}', 5000, $1::text::uuid)::text",
        )
        .unwrap();
    let (h50, h99) = time(&mut || {
        c2.query_one(&ask_http, &[&TENANT]).unwrap();
    });
    // a bare HTTP/1.1 POST on a kept-alive connection, the body the size of a CloudEvent
    let url = sink.strip_prefix("http://").unwrap();
    let (host, path) = url.split_once('/').unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream.set_nodelay(true).unwrap();
    let body = "x".repeat(600);
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (b50, b99) = time(&mut || {
        use std::io::{Read, Write};
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "sink closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    });
    println!(
        "sql_p50_ms={sql50:.3} sql_p99_ms={sql99:.3} async_p50_ms={async50:.3} async_p99_ms={async99:.3} direct_p50_ms={d50:.3} direct_p99_ms={d99:.3} \
         http_p50_ms={h50:.3} http_p99_ms={h99:.3} bare_p50_ms={b50:.3} bare_p99_ms={b99:.3}"
    );
}

/// The shared worker pool: `dbs` databases with the extension (created once, kept), `per_db`
/// events emitted in each (one commit per database) beside the same events emitted in one
/// database (one commit per batch of `per_db`); deliveries/s from the first commit to the last
/// arrival. Then, with every worker gone (idle), the first event into `samples` idle databases,
/// one at a time: commit -> handler, p50/p99.
fn pool(conn: &str, dbs: usize, per_db: i64, samples: usize) {
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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (connection URI without the query, exchange or subject prefix) of a bench broker URL.
fn broker_parts(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap();
    (
        base.to_string(),
        query.split_once('=').unwrap().1.to_string(),
    )
}

/// A clean topology for a run: AMQP — a durable topic exchange with a durable queue bound by
/// `#`, purged; NATS — a file stream capturing `<prefix>.>`, created afresh.
fn broker_setup(url: &str) {
    let (base, name) = broker_parts(url);
    rt().block_on(async {
        if base.starts_with("amqp") {
            use lapin::options::*;
            use lapin::types::FieldTable;
            let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_declare(
                "bench.q".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_bind(
                "bench.q".into(),
                name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_purge("bench.q".into(), QueuePurgeOptions::default())
                .await
                .unwrap();
            let _ = conn.close(200, "done".into()).await;
        } else {
            let c = async_nats::connect(base.trim_start_matches("nats://"))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let _ = js.delete_stream("BENCH").await;
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "BENCH".into(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
}

/// The baseline: `n` messages shaped like the extension's (CloudEvents headers, a ~300-byte JSON
/// body), published with the same crate, confirms on, 256 unconfirmed at most.
fn broker_baseline(url: &str, n: usize) {
    broker_setup(url);
    let (base, name) = broker_parts(url);
    let body =
        serde_json::json!({"n": 1, "sku": "SKU-1", "qty": 1, "note": "x".repeat(200)}).to_string();
    let attrs: Vec<(String, String)> = [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "tenantid",
        "deliveryid",
    ]
    .iter()
    .map(|a| (a.to_string(), format!("{a}-0123456789abcdef01234567")))
    .collect();
    let secs = rt().block_on(async {
        let started = Instant::now();
        if base.starts_with("amqp") {
            use lapin::options::*;
            use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
            let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut pending = std::collections::VecDeque::new();
            for i in 0..n {
                let mut headers = FieldTable::default();
                for (k, v) in &attrs {
                    headers.insert(
                        ShortString::from(format!("cloudEvents:{k}")),
                        AMQPValue::LongString(LongString::from(v.as_str())),
                    );
                }
                let props = lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(format!("m-{i}")))
                    .with_headers(headers);
                let confirm = ch
                    .basic_publish(
                        name.as_str().into(),
                        "bench.created".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .unwrap();
                pending.push_back(confirm);
                if pending.len() >= 256 {
                    assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            for c in pending {
                assert!(c.await.unwrap().is_ack());
            }
            let _ = conn.close(200, "done".into()).await;
        } else {
            let c = async_nats::connect(base.trim_start_matches("nats://"))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let mut pending = std::collections::VecDeque::new();
            for i in 0..n {
                let mut msg = async_nats::jetstream::message::PublishMessage::build()
                    .payload(bytes::Bytes::from(body.clone()))
                    .message_id(format!("m-{i}"));
                for (k, v) in &attrs {
                    msg = msg.header(format!("ce-{k}").as_str(), v.as_str());
                }
                pending.push_back(
                    js.send_publish(format!("{name}.bench.created"), msg)
                        .await
                        .unwrap(),
                );
                if pending.len() >= 256 {
                    pending.pop_front().unwrap().await.unwrap();
                }
            }
            for p in pending {
                p.await.unwrap();
            }
        }
        started.elapsed().as_secs_f64()
    });
    println!("published_per_s={:.0} seconds={secs:.3}", n as f64 / secs);
}

/// A bare HTTP/1.1 exchange on a kept-alive connection: (status, head, body).
struct Http {
    stream: std::net::TcpStream,
    host: String,
}

impl Http {
    fn open(base: &str) -> Http {
        let host = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let stream = std::net::TcpStream::connect(&host).expect("connect to the console");
        stream.set_nodelay(true).unwrap();
        Http { stream, host }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        cookie: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the console closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            })
            .map(|(_, v)| v.trim().parse().unwrap())
            .expect("a Content-Length");
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head, String::from_utf8_lossy(&body).to_string())
    }
}

fn cookie_of(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        })
        .filter_map(|(_, v)| v.trim().split(';').next())
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

fn console(conn: &str, base: &str, role: &str, password: &str, tenant: &str, samples: usize) {
    let mut http = Http::open(base);
    let (_, head, body) = http.request("GET", "/login", "", "");
    let login = cookie_of(&head, "ebc_login").expect("a sign-in token cookie");
    assert!(body.contains(&login));
    let form = format!("username={role}&password={password}&login_token={login}");
    let (status, head, _) = http.request("POST", "/login", &format!("ebc_login={login}"), &form);
    assert_eq!(status, 303, "signing in as {role}");
    let session = format!(
        "ebc_session={}",
        cookie_of(&head, "ebc_session").expect("a session cookie")
    );
    let mut c = connect(conn);
    let tenant = (tenant != "-").then_some(tenant);
    // each page, and the statements it runs (as the console runs them: the same SQL, as the role)
    let pages: [(&str, &str, Vec<&str>); 4] = [
        (
            "overview (24 h)",
            "/?window=24h",
            vec![
                "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats('24 hours')",
                "SELECT * FROM event_bus.queue_summary()",
                "SELECT * FROM event_bus.delivery_timeline('24 hours', 24)",
            ],
        ),
        ("events", "/events", vec!["SELECT * FROM event_bus.list_events(p_limit => 50)"]),
        (
            "events, status failed",
            "/events?status=failed",
            vec!["SELECT * FROM event_bus.list_events(p_status => 'failed', p_limit => 50)"],
        ),
        (
            "events, module + type",
            "/events?source=sales&type=order.created",
            vec!["SELECT * FROM event_bus.list_events(p_source_module => 'sales', p_event_type => 'order.created', p_limit => 50)"],
        ),
    ];
    for (label, path, sqls) in pages.iter() {
        let mut page_ms = Vec::with_capacity(samples);
        let mut sql_ms = Vec::with_capacity(samples);
        let mut first = (0.0, 0.0);
        for i in 0..samples + 2 {
            let t = Instant::now();
            let (status, _, body) = http.request("GET", path, &session, "");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(status, 200, "{path}: {body}");
            let t = Instant::now();
            let mut tx = c.transaction().unwrap();
            tx.batch_execute(&format!("SET LOCAL ROLE {role}")).unwrap();
            if let Some(t) = tenant {
                tx.batch_execute(&format!("SET LOCAL app.tenant_id = '{t}'"))
                    .unwrap();
            }
            for q in sqls {
                tx.query(*q, &[]).unwrap();
            }
            tx.commit().unwrap();
            let sms = t.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                first = (ms, sms);
            }
            if i >= 2 {
                // (the first two warm the caches and the plans)
                page_ms.push(ms);
                sql_ms.push(sms);
            }
        }
        page_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        sql_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "page={label:?} role={role} page_first_ms={:.2} page_p50_ms={:.2} page_p99_ms={:.2} sql_p50_ms={:.2} sql_p99_ms={:.2}",
            first.0,
            percentile(&page_ms, 0.5),
            percentile(&page_ms, 0.99),
            percentile(&sql_ms, 0.5),
            percentile(&sql_ms, 0.99)
        );
    }
}
