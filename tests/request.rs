//! Request-reply with the worker running: an HTTP responder (signed CloudEvents request, JSON
//! reply), a SQL responder, a timeout, a non-2xx answer, no responder; what is recorded after
//! commit, and that the worker never delivers a request to anyone.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{count, wait_for, Cluster};
use std::time::{Duration, Instant};

const TENANT: &str = "66666666-6666-6666-6666-666666666666";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A jsonb result, read as text.
fn json(
    c: &mut postgres::Client,
    sql: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> serde_json::Value {
    let text: String = c
        .query_one(&format!("SELECT ({sql})::text"), params)
        .unwrap()
        .get(0);
    serde_json::from_str(&text).unwrap()
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

#[test]
fn requests_to_http_and_sql_responders_reply_time_out_fail_and_are_recorded() {
    let cluster = Cluster::start("request", &["event_bus.poll_interval_ms = 100"]);
    let rx = Receiver::start(|r, _| {
        let ev = r.json();
        match r.path.as_str() {
            "/stock" => Reply {
                status: 200,
                delay: Duration::ZERO,
                body: serde_json::json!({
                    "sku": ev["data"]["sku"],
                    "available": ev["data"]["qty"].as_i64().unwrap_or(0) <= 5,
                    "type": ev["type"],
                })
                .to_string(),
                headers: vec![("content-type".into(), "application/json".into())],
            },
            "/slow" => Reply::ok().delayed(Duration::from_secs(3)),
            "/broken" => Reply {
                status: 503,
                delay: Duration::ZERO,
                body: "{\"error\":\"warehouse offline\"}".into(),
                headers: vec![],
            },
            _ => Reply::ok(),
        }
    });
    let mut c = cluster.create_db_with_extension("request_db");
    c.batch_execute(&format!(
        "SELECT event_bus.subscribe('inventory.stock_check', 'inventory', '{}', p_secret => '{SECRET}', p_replies => true);
         SELECT event_bus.subscribe('inventory.slow', 'inventory', '{}', p_replies => true);
         SELECT event_bus.subscribe('inventory.broken', 'inventory', '{}', p_replies => true);
         -- an audit subscription that sees every inventory event the worker delivers
         SELECT event_bus.subscribe('inventory.#', 'audit', '{}');
         CREATE ROLE pricing_role;
         CREATE FUNCTION public.price(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS
             $$ SELECT jsonb_build_object('price', 10 * (e.payload ->> 'qty')::int) $$;
         SELECT event_bus.subscribe('pricing.quote', 'pricing', p_handler_function => 'public.price',
                                    p_run_as => 'pricing_role', p_replies => true);",
        rx.url("/stock"),
        rx.url("/slow"),
        rx.url("/broken"),
        rx.url("/audit"),
    ))
    .unwrap();

    // HTTP: the reply is the responder's JSON body; the request was signed like a delivery
    let reply = json(
        &mut c,
        "event_bus.request('inventory.stock_check', '{\"sku\": \"A-1\", \"qty\": 3}', 2000, $1::text::uuid)",
        &[&TENANT],
    );
    assert_eq!(reply["sku"], "A-1");
    assert_eq!(reply["available"], true);
    assert_eq!(reply["type"], "inventory.stock_check");
    let sent = rx.on("/stock");
    assert_eq!(sent.len(), 1);
    assert!(sent[0]
        .header("webhook-signature")
        .unwrap()
        .starts_with("v1,"));
    assert_eq!(sent[0].json()["tenantid"], TENANT);

    // SQL: the function's result, run as its role
    let reply = json(
        &mut c,
        "event_bus.request('pricing.quote', '{\"qty\": 4}', 2000, $1::text::uuid)",
        &[&TENANT],
    );
    assert_eq!(reply["price"], 40);

    // a timeout ends the wait at the request's timeout, not the responder's 3 s
    let started = Instant::now();
    let e = c
        .query_one(
            "SELECT event_bus.request('inventory.slow', '{}', 300, $1::text::uuid)",
            &[&TENANT],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "EB003", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // a non-2xx answer: EB005, with the status and the body in the message
    let e = c
        .query_one(
            "SELECT event_bus.request('inventory.broken', '{}', 2000, $1::text::uuid)",
            &[&TENANT],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "EB005", "{e:?}");
    let msg = e.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("HTTP 503") && msg.contains("warehouse offline"),
        "{msg}"
    );

    // no responder
    let e = c
        .query_one(
            "SELECT event_bus.request('inventory.recount', '{}', 2000, $1::text::uuid)",
            &[&TENANT],
        )
        .unwrap_err();
    assert_eq!(sqlstate(&e), "EB001", "{e:?}");

    // inside a transaction that catches the failure and commits its own write
    c.batch_execute(&format!(
        "CREATE TABLE public.orders (id int PRIMARY KEY, note text);
         BEGIN;
         INSERT INTO public.orders VALUES (1, 'placed');
         DO $$ BEGIN
             PERFORM event_bus.request('inventory.broken', '{{}}', 2000, '{TENANT}');
         EXCEPTION WHEN SQLSTATE 'EB005' THEN
             UPDATE public.orders SET note = 'stock check failed' WHERE id = 1;
         END $$;
         COMMIT;"
    ))
    .unwrap();
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM public.orders WHERE note = 'stock check failed'"
        ),
        1
    );

    // recorded after commit: the two answered requests with their replies as the response
    let answered = count(
        &mut c,
        "SELECT count(*) FROM event_bus.module_events e
           JOIN event_bus.module_event_logs l ON l.event_id = e.id
          WHERE e.is_request AND e.status = 'completed' AND l.status = 'success' AND l.response IS NOT NULL",
    );
    assert_eq!(answered, 2);
    let id: String = c
        .query_one(
            "SELECT id::text FROM event_bus.module_events WHERE is_request AND event_type = 'inventory.stock_check'",
            &[],
        )
        .unwrap()
        .get(0);
    let detail = json(&mut c, "event_bus.event_detail($1::text::uuid)", &[&id]);
    assert_eq!(detail["logs"][0]["response"]["sku"], "A-1");
    assert_eq!(detail["logs"][0]["http_status"], 200);

    // the worker never sends a request anywhere: emit one event and wait until the audit
    // subscription has it; by then the requests, older, would have gone too
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'inventory.counted', 'inventory', 'sku', 'A-1', '{}')",
        &[&TENANT],
    )
    .unwrap();
    wait_for(
        "the emitted event at the audit endpoint",
        Duration::from_secs(20),
        || (rx.count("/audit") >= 1).then_some(()),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count("/audit"), 1, "the worker delivered a request");
    assert_eq!(rx.count("/stock"), 1);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e
                 ON e.id = d.event_id WHERE e.is_request AND d.status IN ('pending', 'processing')"
        ),
        0
    );
}
