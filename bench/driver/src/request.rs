//! `request`: request-reply calls against a sink.

use super::*;

/// Request round trips from one client, `calls` each after a warm-up: event_bus.request to a SQL
/// responder beside calling the same function directly, and to an HTTP responder (the sink)
/// beside a bare HTTP POST of the same CloudEvents-sized body to the same sink. Prints
/// p50/p99 in ms per kind.
pub(crate) fn request(conn: &str, sink: &str, calls: usize) {
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
