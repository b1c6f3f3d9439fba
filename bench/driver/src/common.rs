//! What the measurements share: connections, a clean slate, the poller that waits for deliveries
//! to finish, the options of a throughput run, percentiles, the HTTP receivers and the probes.

use super::*;

pub(crate) fn connect(conn: &str) -> postgres::Client {
    postgres::Client::connect(conn, postgres::NoTls).expect("connect")
}

pub(crate) fn reset(c: &mut postgres::Client) {
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
pub(crate) struct Poller {
    c: postgres::Client,
    drained: postgres::Statement,
    drained_but_failing: postgres::Statement,
    sub_drained: postgres::Statement,
}

impl Poller {
    pub(crate) fn new(conn: &str) -> Poller {
        let mut c = connect(conn);
        c.batch_execute("SET enable_seqscan = off; SET enable_bitmapscan = off; SET plan_cache_mode = force_generic_plan")
            .unwrap();
        let drained = c
            .prepare(&sql(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status IN (<claimable>))
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status = <held>)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries
                                     WHERE ordering_key IS NOT NULL
                                       AND status = ANY (event_bus._stream_blocking_states())
                                       AND status = <waiting>)",
            ))
            .unwrap();
        // with a failing neighbour: until the measured subscriptions are done (the neighbour's
        // deliveries go on retrying, or wait behind its breaker)
        let drained_but_failing = c
            .prepare(&sql(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                      JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                                     WHERE d.status IN (<claimable>) AND s.handler_module <> 'failing')",
            ))
            .unwrap();
        // one subscription's deliveries done, and nothing left to fan out
        let sub_drained = c
            .prepare(&sql(
                "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_events WHERE dispatched_at IS NULL)
                    AND NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                     WHERE d.status IN (<claimable>) AND d.subscription_id = $1::text::uuid)",
            ))
            .unwrap();
        Poller {
            c,
            drained,
            drained_but_failing,
            sub_drained,
        }
    }

    pub(crate) fn ask(
        &mut self,
        which: &postgres::Statement,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> bool {
        self.c.query_one(which, params).unwrap().get(0)
    }

    /// Nothing left to fan out, deliver, release or advance.
    pub(crate) fn drained(&mut self) -> bool {
        let q = self.drained.clone();
        self.ask(&q, &[])
    }

    pub(crate) fn drained_but_failing(&mut self) -> bool {
        let q = self.drained_but_failing.clone();
        self.ask(&q, &[])
    }

    pub(crate) fn sub_drained(&mut self, subscription: &str) -> bool {
        let q = self.sub_drained.clone();
        self.ask(&q, &[&subscription])
    }
}

pub(crate) struct Options {
    /// keep the tables' history (the growth runs)
    pub(crate) keep: bool,
    /// ordered subscriptions
    pub(crate) ordered: bool,
    /// each subscription with a content filter selecting half the events: Some(false) the same half
    /// (payload.n even), Some(true) a half that alternates between subscriptions
    pub(crate) filtered: Option<bool>,
    /// spread the events over this many entities (None: one entity per event)
    pub(crate) entities: Option<i64>,
    /// a neighbour subscription to this URL, failing every delivery once
    pub(crate) failing: Option<String>,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub(crate) type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// An HTTP receiver on 127.0.0.1 that notes when each event id first arrived; returns its port.
pub(crate) fn start_receiver(arrivals: &Arrivals) -> u16 {
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
pub(crate) fn start_silent() -> u16 {
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
pub(crate) fn wait_arrivals(arrivals: &Arrivals, committed: &[(String, Instant)]) -> Vec<f64> {
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

pub(crate) fn emit_probe(c: &mut postgres::Client) -> (String, Instant) {
    let id: String = c
        .query_one(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'bench.probe', 'bench', 'item', 'p', '{}')::text",
            &[&TENANT],
        )
        .unwrap()
        .get(0);
    (id, Instant::now())
}
