//! Receivers that misbehave: each ends as a logged attempt within its timeout and never stalls
//! the other deliveries. And event_bus.allowed_networks refusing a destination at connect time.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const TENANT: &str = "66666666-6666-6666-6666-666666666666";
const TIMEOUT_MS: i32 = 1000;

/// A raw TCP server on 127.0.0.1 answering every connection with `answer` (after reading what
/// the client sent first). Returns its port.
fn raw_server(answer: fn(&mut TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 65536];
                let _ = s.read(&mut buf);
                answer(&mut s);
            });
        }
    });
    port
}

fn slow_loris(s: &mut TcpStream) {
    // a status line and one header, then nothing: the headers never end
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n");
    std::thread::sleep(Duration::from_secs(30));
}

fn huge(s: &mut TcpStream) {
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1073741824\r\n\r\n",
    );
    let chunk = vec![b'a'; 1 << 16];
    // a gigabyte, unless the client stops reading first
    for _ in 0..(1 << 14) {
        if s.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn redirect(s: &mut TcpStream) {
    let _ = s.write_all(b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/elsewhere\r\nContent-Length: 0\r\n\r\n");
}

fn garbage(s: &mut TcpStream) {
    let _ = s.write_all(b"this is not HTTP at all\r\n\r\n");
}

fn plain_400(s: &mut TcpStream) {
    let _ =
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

#[test]
fn misbehaving_receivers_fail_within_their_timeout_without_stalling_others() {
    let cluster = Cluster::start(
        "faults",
        &[
            "event_bus.poll_interval_ms = 100",
            "event_bus.max_response_bytes = 1024",
        ],
    );
    let good = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("faults_db");
    let faults = [
        (
            "slowloris",
            format!("http://127.0.0.1:{}/", raw_server(slow_loris)),
        ),
        ("huge", format!("http://127.0.0.1:{}/", raw_server(huge))),
        (
            "redirect",
            format!("http://127.0.0.1:{}/", raw_server(redirect)),
        ),
        (
            "garbage",
            format!("http://127.0.0.1:{}/", raw_server(garbage)),
        ),
        (
            "tls_to_plain",
            format!("https://127.0.0.1:{}/", raw_server(plain_400)),
        ),
    ];
    for (name, url) in &faults {
        c.execute(
            "SELECT event_bus.subscribe('fault.#', $1, $2, p_timeout_ms => $3, p_max_retries => 0)",
            &[name, url, &TIMEOUT_MS],
        )
        .unwrap();
    }
    c.execute(
        "SELECT event_bus.subscribe('good.#', 'good', $1, p_timeout_ms => $2)",
        &[&good.url("/ok"), &TIMEOUT_MS],
    )
    .unwrap();

    let started = Instant::now();
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{TENANT}', 'fault.trigger', 'test', NULL, NULL, '{{}}');
         SELECT event_bus.emit_module_event('{TENANT}', 'good.event', 'test', NULL, NULL, jsonb_build_object('n', n))
           FROM generate_series(1, 30) n;"
    ))
    .unwrap();
    wait_for("the good deliveries", Duration::from_secs(30), || {
        (good.count("/ok") == 30).then_some(())
    });
    let good_took = started.elapsed();
    assert!(
        good_took < Duration::from_millis(TIMEOUT_MS as u64),
        "good deliveries took {good_took:?}: stalled by the faults"
    );

    wait_for(
        "every fault's attempt logged",
        Duration::from_secs(30),
        || {
            let n: i64 = c
            .query_one("SELECT count(*) FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id WHERE s.event_type = 'fault.#'", &[])
            .unwrap()
            .get(0);
            (n == faults.len() as i64).then_some(())
        },
    );
    let rows = c
        .query(
            "SELECT s.handler_module, l.status, l.http_status, coalesce(l.error_message, ''), l.duration_ms,
                    coalesce(l.response::text, '')
               FROM event_bus.module_event_logs l
               JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
              WHERE s.event_type = 'fault.#'",
            &[],
        )
        .unwrap();
    let mut report = Vec::new();
    for r in &rows {
        let (name, status, http, error, ms, response): (
            String,
            String,
            Option<i32>,
            String,
            f64,
            String,
        ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        report.push(format!("{name}: {status} {http:?} {ms:.0} ms {error}"));
        assert!(
            ms <= (TIMEOUT_MS + 1000) as f64,
            "{name} took {ms} ms, past its {TIMEOUT_MS} ms timeout"
        );
        match name.as_str() {
            "slowloris" => assert!(
                status == "failed" && error.contains("timed out"),
                "{name}: {status} {error}"
            ),
            // a 200 is a success however large its body; the log keeps max_response_bytes of it
            "huge" => assert!(
                status == "success"
                    && http == Some(200)
                    && response.contains("\"truncated\": true")
                    && response.len() < 4096,
                "{name}: {status} {http:?} {response:.200}"
            ),
            "redirect" => assert!(
                status == "failed" && http == Some(302) && error.contains("not followed"),
                "{name}: {status} {error}"
            ),
            "garbage" | "tls_to_plain" => {
                assert!(
                    status == "failed" && http.is_none() && !error.is_empty(),
                    "{name}: {status} {http:?} {error}"
                )
            }
            other => panic!("unexpected {other}"),
        }
    }
    eprintln!("{}", report.join("\n"));
    // the faulty deliveries are dead letters with their reason; the worker is still serving
    let dead: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.dead_letters WHERE last_error <> ''",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dead, 4);
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'good.after', 'test', NULL, NULL, '{}')",
        &[&TENANT],
    )
    .unwrap();
    wait_for(
        "a delivery after the faults",
        Duration::from_secs(10),
        || (good.count("/ok") == 31).then_some(()),
    );
}

#[test]
fn allowed_networks_refuse_a_destination_at_connect_time() {
    let cluster = Cluster::start(
        "netpolicy",
        &[
            "event_bus.poll_interval_ms = 100",
            "event_bus.allowed_networks = '10.0.0.0/8'",
        ],
    );
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("net_db");
    // subscriptions made before the policy (here: by a superuser lifting it for its session)
    c.batch_execute("SET event_bus.allowed_networks = ''")
        .unwrap();
    c.execute(
        "SELECT event_bus.subscribe('#', 'partner', $1, p_max_retries => 0)",
        &[&rx.url("/in")],
    )
    .unwrap();
    // a host name: subscribe cannot check it, only the worker's resolver can
    let by_name = rx.url("/by-name").replace("127.0.0.1", "localhost");
    c.execute(
        "SELECT event_bus.subscribe('#', 'partner-by-name', $1, p_max_retries => 0)",
        &[&by_name],
    )
    .unwrap();

    let id: String = c
        .query_one("SELECT event_bus.emit_module_event($1::text::uuid, 'order.created', 'sales', NULL, NULL, '{}')::text", &[&TENANT])
        .unwrap()
        .get(0);
    wait_for("both attempts refused", Duration::from_secs(20), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM event_bus.module_event_logs
                  WHERE status = 'failed' AND error_message LIKE '%outside event_bus.allowed_networks%'
                    AND event_id = $1::text::uuid",
                &[&id],
            )
            .unwrap()
            .get(0);
        (n == 2).then_some(())
    });
    assert_eq!(
        rx.count("/in") + rx.count("/by-name"),
        0,
        "a request reached a refused address"
    );

    // the policy lifted: retrying the event delivers both (retried until the worker has reloaded)
    let mut admin = cluster.connect("postgres");
    admin
        .batch_execute("ALTER SYSTEM SET event_bus.allowed_networks = ''")
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for(
        "delivered after the policy is lifted",
        Duration::from_secs(30),
        || {
            c.query_one("SELECT event_bus.retry_event($1::text::uuid)", &[&id])
                .unwrap();
            // (both "#" subscriptions also get the bus's event_bus.delivery.failed events)
            let orders = |path: &str| {
                rx.on(path)
                    .iter()
                    .filter(|r| r.json()["type"] == "order.created")
                    .count()
            };
            (orders("/in") == 1 && orders("/by-name") == 1).then_some(())
        },
    );
}
