//! The crash suite: events are emitted and delivered while the worker is SIGKILLed, PostgreSQL is
//! stopped with `pg_ctl -m immediate` and the receiver is restarted; the receiver answers 200,
//! 500, slowly or not at all. Afterwards every committed event reached every subscription at least
//! once, nothing rolled back was delivered, duplicates carry one webhook-id per delivery, and no
//! delivery is stuck. Prints `sent / delivered / duplicates / lost / stuck`.
//!
//! Short by default (part of the test command); the soak: `scripts/soak.sh` (50,000 events,
//! 9 disruptions), or EVENT_BUS_CRASH_EVENTS / EVENT_BUS_CRASH_CYCLES.

use event_bus_testkit as common;

use common::receiver::{Received, Receiver, Reply};
use common::{wait_for, Cluster};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TENANT: &str = "77777777-7777-7777-7777-777777777777";
const TIMEOUT_MS: i32 = 1000;
const BATCH: i64 = 50;

/// What the receiver did with one request.
#[derive(Clone)]
struct Answer {
    path: String,
    webhook_id: String,
    event_id: String,
    event_type: String,
    delivered: bool,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 200 most of the time; sometimes 500, a slow 200 (within the timeout), or no answer in time.
fn behaviour(
    log: Arc<Mutex<Vec<Answer>>>,
    seq: Arc<AtomicU64>,
) -> impl Fn(&Received, usize) -> Reply + Send + Sync {
    move |req, _| {
        let body = req.json();
        // a cheap deterministic mix (xorshift of a counter)
        let mut x = seq
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            | 1;
        x ^= x >> 31;
        let roll = x % 100;
        let (reply, delivered) = match roll {
            0..=69 => (Reply::ok(), true),
            70..=84 => (Reply::status(500), false),
            85..=94 => (Reply::ok().delayed(Duration::from_millis(200)), true),
            _ => (
                Reply::ok().delayed(Duration::from_millis(TIMEOUT_MS as u64 + 1500)),
                false,
            ),
        };
        log.lock().unwrap().push(Answer {
            path: req.path.clone(),
            webhook_id: req.header("webhook-id").unwrap_or_default().to_string(),
            event_id: body["id"].as_str().unwrap_or_default().to_string(),
            event_type: body["type"].as_str().unwrap_or_default().to_string(),
            delivered,
        });
        reply
    }
}

fn connect_retrying(cluster: &Cluster, db: &str) -> postgres::Client {
    wait_for("a connection", Duration::from_secs(120), || {
        postgres::Client::connect(&cluster.connstr(db), postgres::NoTls).ok()
    })
}

#[test]
fn nothing_is_lost_through_kills_crashes_and_receiver_restarts() {
    let events = env_or("EVENT_BUS_CRASH_EVENTS", 3000) as i64;
    let cycles = env_or("EVENT_BUS_CRASH_CYCLES", 4);
    let cluster = Cluster::start(
        "crash",
        &[
            "event_bus.poll_interval_ms = 200",
            "event_bus.backoff_base_ms = 20",
            "event_bus.backoff_max_ms = 500",
            "event_bus.lease_ms = 1000",
            "event_bus.notify = off",
            "event_bus.breaker_threshold = 0",
            "restart_after_crash = on",
        ],
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let seq = Arc::new(AtomicU64::new(1));
    let mut rx = Receiver::start(behaviour(log.clone(), seq.clone()));
    let port = rx.port;
    {
        let mut c = cluster.create_db_with_extension("crash");
        for path in ["/a", "/b"] {
            c.execute(
                "SELECT event_bus.subscribe('crash.#', 'test', $1, p_timeout_ms => $2, p_max_retries => 100)",
                &[&rx.url(path), &TIMEOUT_MS],
            )
            .unwrap();
        }
    }

    // the emitter: batches of BATCH events, every tenth batch rolled back, reconnecting through
    // crashes (a batch whose commit is in doubt is simply emitted again: the database says what
    // committed)
    let done = Arc::new(AtomicBool::new(false));
    let emitter = {
        let connstr = cluster.connstr("crash");
        let done = done.clone();
        std::thread::spawn(move || {
            let mut emitted = 0i64;
            let mut batch = 0i64;
            let mut conn: Option<postgres::Client> = None;
            while emitted < events {
                let Some(c) = conn.as_mut() else {
                    conn = postgres::Client::connect(&connstr, postgres::NoTls).ok();
                    if conn.is_none() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    continue;
                };
                let rolled_back = batch % 10 == 9;
                let sql = format!(
                    "BEGIN;
                     SELECT event_bus.emit_module_event('{TENANT}', '{}', 'test', 'item', n::text,
                                                        jsonb_build_object('n', n, 'batch', {batch}))
                       FROM generate_series({emitted} + 1, {emitted} + {BATCH}) n;
                     {}",
                    if rolled_back { "crash.rolledback" } else { "crash.event" },
                    if rolled_back { "ROLLBACK" } else { "COMMIT" }
                );
                match c.batch_execute(&sql) {
                    Ok(()) => {
                        batch += 1;
                        if !rolled_back {
                            emitted += BATCH;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => conn = None,
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    // the chaos, a disruption every 1.5 s: SIGKILL the worker, crash PostgreSQL, restart the receiver
    let mut disruptions = Vec::new();
    for i in 0..cycles {
        std::thread::sleep(Duration::from_millis(1500));
        match i % 3 {
            0 => {
                let mut c = connect_retrying(&cluster, "crash");
                let pid: Option<i32> = wait_for("a worker", Duration::from_secs(60), || {
                    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'crash'", &[])
                        .ok()
                        .map(|r| r.map(|r| r.get(0)))
                        .filter(|p| p.is_some())
                });
                unsafe { libc::kill(pid.unwrap_or(0), libc::SIGKILL) };
                disruptions.push("SIGKILL worker");
            }
            1 => {
                cluster.pg_ctl_stop("immediate");
                cluster.pg_ctl_start();
                disruptions.push("pg_ctl -m immediate + start");
            }
            _ => {
                drop(rx);
                std::thread::sleep(Duration::from_millis(500));
                rx = Receiver::start_on(port, behaviour(log.clone(), seq.clone()));
                disruptions.push("receiver restart");
            }
        }
    }
    emitter.join().unwrap();
    assert!(done.load(Ordering::SeqCst));

    // everything finishes: no delivery left pending, processing or held, every event fanned out
    let mut c = connect_retrying(&cluster, "crash");
    let started = Instant::now();
    // a silent receiver holds a sender thread for the whole timeout: allow for it
    let drain_limit = Duration::from_secs(300).max(Duration::from_millis(events as u64 * 20));
    loop {
        // a SIGKILL just before may still be resetting the server: reconnect through it
        let left: i64 = match c.query_one(
            "SELECT (SELECT count(*) FROM event_bus.module_event_deliveries WHERE status NOT IN ('completed', 'failed'))
                  + (SELECT count(*) FROM event_bus.module_events WHERE dispatched_at IS NULL)",
            &[],
        ) {
            Ok(row) => row.get(0),
            Err(_) => {
                c = connect_retrying(&cluster, "crash");
                continue;
            }
        };
        if left == 0 {
            break;
        }
        if started.elapsed() > drain_limit {
            let state: String = c
                .query_one(
                    "SELECT concat_ws(E'\n',
                        (SELECT string_agg(status || '=' || n || ' due in ' || due, ', ') FROM (
                            SELECT status, count(*) n, min(next_attempt_at) - now() due
                              FROM event_bus.module_event_deliveries GROUP BY 1) d),
                        'undispatched: ' || (SELECT count(*) FROM event_bus.module_events WHERE dispatched_at IS NULL),
                        'workers: ' || (SELECT string_agg(backend_type || ' ' || pid, ', ') FROM pg_stat_activity
                                         WHERE backend_type LIKE 'event_bus%'))",
                    &[],
                )
                .unwrap()
                .get(0);
            let log = cluster.log();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.starts_with(char::is_whitespace))
                .collect();
            panic!(
                "deliveries still unfinished after 300 s:\n{state}\n{}",
                tail[tail.len().saturating_sub(30)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let drained_in = started.elapsed();

    let committed: HashSet<String> = c
        .query(
            "SELECT id::text FROM event_bus.module_events WHERE event_type = 'crash.event'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stuck: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_deliveries
              WHERE status NOT IN ('completed', 'failed') OR (status = 'failed' AND coalesce(last_error, '') = '')",
            &[],
        )
        .unwrap()
        .get(0);
    let answers = log.lock().unwrap().clone();
    let mut delivered: HashMap<(String, String), usize> = HashMap::new();
    let mut ids: HashMap<(String, String), HashSet<String>> = HashMap::new();
    let mut rolled_back_seen = 0;
    for a in &answers {
        if a.event_type == "crash.rolledback" {
            rolled_back_seen += 1;
        }
        ids.entry((a.path.clone(), a.event_id.clone()))
            .or_default()
            .insert(a.webhook_id.clone());
        if a.delivered {
            *delivered
                .entry((a.path.clone(), a.event_id.clone()))
                .or_default() += 1;
        }
    }
    let expected = committed.len() * 2;
    let lost = committed
        .iter()
        .flat_map(|e| ["/a", "/b"].map(|p| (p.to_string(), e.clone())))
        .filter(|k| !delivered.contains_key(k))
        .count();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    let unknown = delivered
        .keys()
        .filter(|(_, e)| !committed.contains(e))
        .count();
    let one_webhook_id = ids.values().all(|s| s.len() == 1);

    eprintln!(
        "\ncrash suite: {} disruptions ({})\n\
         | sent (committed events x 2 subscriptions) | delivered | duplicates | lost | stuck | rolled back delivered | requests | drained after chaos |\n\
         | {expected} | {} | {duplicates} | {lost} | {stuck} | {rolled_back_seen} | {} | {:.1} s |",
        disruptions.len(),
        disruptions.join(", "),
        delivered.len(),
        answers.len(),
        drained_in.as_secs_f64()
    );
    assert!(
        committed.len() as i64 >= events,
        "committed events: {}",
        committed.len()
    );
    assert_eq!(lost, 0, "lost deliveries");
    assert_eq!(stuck, 0, "stuck deliveries");
    assert_eq!(rolled_back_seen, 0, "rolled-back events delivered");
    assert_eq!(unknown, 0, "deliveries of events that never committed");
    assert!(
        one_webhook_id,
        "a re-delivery carried a different webhook-id"
    );
    let completed: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(completed as usize, expected);
    assert!(disruptions.len() >= 3);
}
