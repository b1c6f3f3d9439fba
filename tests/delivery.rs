//! Delivery by the background worker, end to end: a real cluster with event_bus preloaded, a
//! committed client connection, and an HTTP receiver on 127.0.0.1.

use event_bus_testkit as common;

use base64::Engine;
use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const TENANT: &str = "33333333-3333-3333-3333-333333333333";
const LONG: Duration = Duration::from_secs(60);

/// Fast retries; a long poll interval so that only wake-at-commit can explain prompt delivery.
const CONF: &[&str] = &[
    "event_bus.backoff_base_ms = 50",
    "event_bus.backoff_max_ms = 200",
    "event_bus.lease_ms = 1000",
    "event_bus.poll_interval_ms = 600000",
];

fn emit(c: &mut postgres::Client, event_type: &str, payload: &str) -> String {
    c.query_one(
        "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'accounting', 'invoice', 'INV-1', $3::text::jsonb)::text",
        &[&TENANT, &event_type, &payload],
    )
    .unwrap()
    .get(0)
}

fn subscribe(c: &mut postgres::Client, pattern: &str, url: &str, extra: &str) -> String {
    c.query_one(
        &format!("SELECT event_bus.subscribe($1, 'test', $2{extra})::text"),
        &[&pattern, &url],
    )
    .unwrap()
    .get(0)
}

fn scalar_i64(c: &mut postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn scalar_text(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn verify_standard_webhooks(secret: &str, id: &str, ts: &str, body: &str, header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

#[test]
fn happy_path_delivers_once_per_matching_subscription_with_cloudevents_body_and_signature() {
    let cluster = Cluster::start("happy", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("happy");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let signed = subscribe(
        &mut c,
        "invoice.*",
        &rx.url("/signed"),
        &format!(
            ", p_secret => '{secret}', p_headers => '{{\"Authorization\": \"Bearer t0ken\"}}'"
        ),
    );
    subscribe(&mut c, "#", &rx.url("/all"), "");
    subscribe(&mut c, "sales_order.*", &rx.url("/never"), "");

    let e1 = emit(
        &mut c,
        "invoice.posted",
        r#"{"invoice_number":"INV-001","total":1500}"#,
    );
    let e2 = emit(&mut c, "pos.transaction_completed", r#"{"total":12.5}"#);

    wait_for("3 deliveries", LONG, || (rx.all().len() >= 3).then_some(()));
    wait_for("events completed", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'",
        ) == 2)
            .then_some(())
    });
    assert_eq!(rx.count("/signed"), 1);
    assert_eq!(rx.count("/all"), 2);
    assert_eq!(rx.count("/never"), 0);

    let r = &rx.on("/signed")[0];
    let body = r.json();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], e1.as_str());
    assert_eq!(body["type"], "invoice.posted");
    assert_eq!(body["source"], "/event_bus/accounting");
    assert_eq!(body["subject"], "invoice/INV-1");
    assert_eq!(body["datacontenttype"], "application/json");
    assert_eq!(body["tenantid"], TENANT);
    assert_eq!(body["data"]["invoice_number"], "INV-001");
    assert!(body["time"].as_str().unwrap().starts_with("20"));
    assert_eq!(r.header("authorization"), Some("Bearer t0ken"));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/cloudevents+json"));
    let webhook_id = r.header("webhook-id").unwrap().to_string();
    let ts = r.header("webhook-timestamp").unwrap().to_string();
    let sig = r.header("webhook-signature").unwrap().to_string();
    assert!(
        verify_standard_webhooks(secret, &webhook_id, &ts, &r.body, &sig),
        "signature verifies"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(ts.parse::<u64>().unwrap().abs_diff(now) < 300);
    // the webhook-id is the delivery id
    let delivery = scalar_text(
        &mut c,
        &format!(
            "SELECT id::text FROM event_bus.module_event_deliveries WHERE event_id = '{e1}' AND subscription_id = '{signed}'"
        ),
    );
    assert_eq!(webhook_id, delivery);
    // unsigned subscription: no signature header
    assert!(rx
        .on("/all")
        .iter()
        .all(|r| r.header("webhook-signature").is_none()));
    assert!(rx.on("/all").iter().any(|r| r.json()["id"] == e2.as_str()));

    // one success log per delivery, with status and duration
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success' AND http_status = 200
                AND attempt = 1 AND duration_ms >= 0 AND response = '{\"ok\": true}'::jsonb"
        ),
        3
    );
    // nothing more arrives later
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.all().len(), 3);

    // the overview's counts, kept per hour by the worker's statements, say what the rows say; a
    // TRUNCATE of the events empties them
    assert_eq!(
        scalar_text(
            &mut c,
            "SELECT concat_ws(',', pending, processing, processed, failed, total) FROM event_bus.event_stats()"
        ),
        scalar_text(
            &mut c,
            "SELECT concat_ws(',', count(*) FILTER (WHERE status = 'pending'),
                    count(*) FILTER (WHERE status = 'processing'), count(*) FILTER (WHERE status = 'completed'),
                    count(*) FILTER (WHERE status = 'failed'), count(*))
               FROM event_bus.module_events"
        )
    );
    assert!(scalar_i64(&mut c, "SELECT count(*) FROM event_bus._event_hours") > 0);
    c.batch_execute("TRUNCATE event_bus.module_events").unwrap();
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM event_bus._event_hours"),
        0
    );
    assert_eq!(
        scalar_i64(&mut c, "SELECT total FROM event_bus.event_stats()"),
        0
    );
}

#[test]
fn failing_handler_is_retried_with_backoff_then_succeeds() {
    let cluster = Cluster::start("retry", CONF);
    let rx = Receiver::start(|_, n| {
        if n == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("retry");
    subscribe(&mut c, "invoice.posted", &rx.url("/flaky"), "");
    let e = emit(&mut c, "invoice.posted", "{}");
    wait_for("completed", LONG, || {
        (scalar_text(
            &mut c,
            &format!("SELECT status FROM event_bus.module_events WHERE id = '{e}'"),
        ) == "completed")
            .then_some(())
    });
    let reqs = rx.on("/flaky");
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].header("webhook-id"),
        reqs[1].header("webhook-id"),
        "same webhook-id on retry"
    );
    let log = scalar_text(
        &mut c,
        "SELECT string_agg(attempt || ':' || status || ':' || coalesce(http_status::text, '-'), ',' ORDER BY attempt)
           FROM event_bus.module_event_logs",
    );
    assert_eq!(log, "1:failed:500,2:success:200");
    assert_eq!(
        scalar_i64(
            &mut c,
            &format!("SELECT retry_count::bigint FROM event_bus.module_events WHERE id = '{e}'")
        ),
        1
    );
}

#[test]
fn dead_after_max_retries_while_the_other_subscription_succeeds_once() {
    let cluster = Cluster::start("dead", CONF);
    let rx = Receiver::start(|r, _| {
        if r.path == "/down" {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("dead");
    let down = subscribe(
        &mut c,
        "invoice.posted",
        &rx.url("/down"),
        ", p_max_retries => 2",
    );
    subscribe(&mut c, "invoice.posted", &rx.url("/up"), "");
    let e = emit(&mut c, "invoice.posted", "{}");
    wait_for("event failed", LONG, || {
        (scalar_text(
            &mut c,
            &format!("SELECT status FROM event_bus.module_events WHERE id = '{e}'"),
        ) == "failed")
            .then_some(())
    });
    assert_eq!(rx.count("/down"), 3, "1 attempt + 2 retries");
    assert_eq!(
        rx.count("/up"),
        1,
        "the healthy subscription is invoked once"
    );
    assert_eq!(
        scalar_text(
            &mut c,
            &format!("SELECT status || ':' || attempts || ':' || last_error FROM event_bus.module_event_deliveries WHERE subscription_id = '{down}'")
        ),
        "failed:3:HTTP 503"
    );
    assert_eq!(
        scalar_text(
            &mut c,
            &format!("SELECT error_message FROM event_bus.module_events WHERE id = '{e}'")
        ),
        "HTTP 503"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rx.count("/down"), 3, "dead means no more attempts");
    assert_eq!(rx.count("/up"), 1);
}

#[test]
fn timeouts_and_refused_connections_are_logged_failures() {
    let cluster = Cluster::start("faults", CONF);
    let rx = Receiver::start(|r, _| {
        if r.path == "/slow" {
            Reply::ok().delayed(Duration::from_secs(3))
        } else {
            Reply::ok()
        }
    });
    let closed_port = common::free_port(); // nothing listens there
    let mut c = cluster.create_db_with_extension("faults");
    let slow = subscribe(
        &mut c,
        "a.b",
        &rx.url("/slow"),
        ", p_timeout_ms => 300, p_max_retries => 0",
    );
    let refused = subscribe(
        &mut c,
        "a.b",
        &format!("http://127.0.0.1:{closed_port}/x"),
        ", p_max_retries => 0",
    );
    subscribe(&mut c, "a.b", &rx.url("/fast"), "");
    emit(&mut c, "a.b", "{}");
    wait_for("fast delivery not delayed by the slow one", LONG, || {
        (rx.count("/fast") == 1).then_some(())
    });
    wait_for("both dead", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'failed'",
        ) == 2)
            .then_some(())
    });
    let slow_err = scalar_text(
        &mut c,
        &format!("SELECT error_message FROM event_bus.module_event_logs WHERE subscription_id = '{slow}'"),
    );
    assert!(slow_err.contains("timed out"), "{slow_err}");
    let refused_err = scalar_text(
        &mut c,
        &format!("SELECT error_message || ' ' || (http_status IS NULL) FROM event_bus.module_event_logs WHERE subscription_id = '{refused}'"),
    );
    assert!(
        refused_err.to_lowercase().contains("refused") && refused_err.ends_with("true"),
        "{refused_err}"
    );
}

#[test]
fn rolled_back_emits_are_never_delivered_and_commits_wake_the_worker() {
    let cluster = Cluster::start("rollback", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("rollback");
    subscribe(&mut c, "#", &rx.url("/h"), "");
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'invoice.posted', 'accounting', 'invoice', 'RB', '{}')",
        &[&TENANT],
    )
    .unwrap();
    tx.rollback().unwrap();
    let committed = emit(&mut c, "invoice.posted", "{}");
    // poll_interval_ms is 10 minutes: only the commit's wake-up can deliver this in time
    wait_for("delivery woken by commit", Duration::from_secs(10), || {
        (rx.count("/h") == 1).then_some(())
    });
    assert_eq!(rx.on("/h")[0].json()["id"], committed.as_str());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count("/h"), 1);
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM event_bus.module_events"),
        1
    );
}

/// event_bus.pause stops delivery in the whole cluster and keeps every event: emits go on, nothing is
/// sent while it is on (the worker leaves, none starts), and what waited goes out once it is off.
#[test]
fn pausing_delivery_keeps_events_until_it_resumes() {
    let cluster = Cluster::start("pause", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("pause");
    subscribe(&mut c, "#", &rx.url("/h"), "");
    emit(&mut c, "invoice.posted", "{}");
    wait_for("the first event delivered", LONG, || {
        (rx.count("/h") == 1).then_some(())
    });
    c.batch_execute("ALTER SYSTEM SET event_bus.pause = on")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // the worker's pool leaves the database once paused
    wait_for("no worker left", LONG, || {
        let n = scalar_i64(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker'",
        );
        (n == 0).then_some(())
    });
    for _ in 0..3 {
        emit(&mut c, "invoice.posted", "{}");
    }
    // (a check that nothing happens needs a wait: three seconds is many rounds of an unpaused worker,
    // which delivers these in milliseconds)
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(rx.count("/h"), 1, "nothing is sent while paused");
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_events WHERE status = 'pending'"
        ),
        3
    );
    c.batch_execute("ALTER SYSTEM RESET event_bus.pause")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("what waited delivered after the pause", LONG, || {
        (rx.count("/h") == 4).then_some(())
    });
}

/// DROP EXTENSION while the worker is working off a backlog (claiming, recording, fanning out)
/// succeeds every time and stops the worker: the worker takes the event table first, in the order
/// DROP EXTENSION locks the tables, so the two never wait for each other (before, a round that held
/// the subscriptions and then asked for the events deadlocked with the DROP, which was rolled back).
#[test]
fn drop_extension_while_the_worker_is_busy_never_deadlocks() {
    let cluster = Cluster::start("dropbusy", CONF);
    let rx = Receiver::start(|_, _| Reply::ok().delayed(Duration::from_millis(2)));
    let mut c = cluster.create_db_with_extension("db_drop");
    for round in 0..6 {
        if round > 0 {
            c.batch_execute("CREATE EXTENSION event_bus").unwrap();
        }
        let path = format!("/r{round}");
        subscribe(&mut c, "#", &rx.url(&path), "");
        c.execute(
            "SELECT count(event_bus.emit_module_event($1::text::uuid, 'x.y', 'accounting', 'invoice', g::text, '{}'))
               FROM generate_series(1, 3000) g",
            &[&TENANT],
        )
        .unwrap();
        wait_for("the worker delivering", LONG, || {
            (rx.count(&path) >= 20 * (round + 1)).then_some(())
        });
        c.batch_execute("DROP EXTENSION event_bus")
            .unwrap_or_else(|e| panic!("round {round}: DROP EXTENSION failed: {e:?}"));
        wait_for("the worker gone", LONG, || {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'db_drop'",
                    &[],
                )
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        });
    }
    assert!(
        !cluster.log().contains("deadlock detected"),
        "{}",
        cluster.log()
    );
}

#[test]
fn a_second_database_is_served_without_configuration() {
    let cluster = Cluster::start("twodbs", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut a = cluster.create_db_with_extension("db_a");
    let mut b = cluster.create_db_with_extension("db_b");
    subscribe(&mut a, "#", &rx.url("/a"), "");
    subscribe(&mut b, "#", &rx.url("/b"), "");
    emit(&mut a, "x.y", "{}");
    emit(&mut b, "x.y", "{}");
    wait_for("both databases delivered", LONG, || {
        (rx.count("/a") == 1 && rx.count("/b") == 1).then_some(())
    });
    // dropping the extension stops that database's worker and never blocks DROP DATABASE
    a.batch_execute("DROP EXTENSION event_bus").unwrap();
    wait_for("db_a's worker gone", LONG, || {
        let n: i64 = a
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'db_a'", &[])
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    });
    drop(a);
    drop(b);
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("DROP DATABASE db_b").unwrap();
    // and a database that gains the extension later is served too
    let mut c = cluster.create_db_with_extension("db_c");
    subscribe(&mut c, "#", &rx.url("/c"), "");
    emit(&mut c, "x.y", "{}");
    wait_for("db_c delivered", LONG, || {
        (rx.count("/c") == 1).then_some(())
    });
}

#[test]
fn killing_the_worker_mid_stream_loses_nothing() {
    let cluster = Cluster::start(
        "kill",
        &[
            "event_bus.backoff_base_ms = 50",
            "event_bus.backoff_max_ms = 200",
            "event_bus.lease_ms = 1000",
            "event_bus.default_timeout_ms = 2000",
            "event_bus.poll_interval_ms = 200",
            "event_bus.batch_size = 50",
        ],
    );
    // a little latency per request so the kills land mid-stream
    let rx = Receiver::start(|_, _| Reply::ok().delayed(Duration::from_millis(2)));
    let mut c = cluster.create_db_with_extension("kill");
    subscribe(&mut c, "#", &rx.url("/h"), "");
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{TENANT}', 'stock.moved', 'inventory', 'item', g::text, jsonb_build_object('n', g))
           FROM generate_series(1, 2000) g"
    ))
    .unwrap();
    let worker_pid = |c: &mut postgres::Client| -> Option<i32> {
        c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'kill'", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0))
    };
    // 1. pg_terminate_backend once deliveries are under way
    wait_for("some deliveries", LONG, || {
        (rx.count("/h") >= 200).then_some(())
    });
    let pid = wait_for("worker pid", LONG, || worker_pid(&mut c));
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    // 2. SIGKILL a (new) worker: Postgres restarts all backends; leases expire; work is redone
    wait_for("more deliveries", LONG, || {
        (rx.count("/h") >= 900).then_some(())
    });
    let pid = wait_for("restarted worker pid", LONG, || worker_pid(&mut c));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // the cluster crash-restarts: a connection made before the restart finished dies with it, so
    // reconnect whenever a query fails
    let mut conn: Option<postgres::Client> = None;
    let mut completed = |sql: &str| -> Option<i64> {
        if conn.is_none() {
            conn = postgres::Client::connect(&cluster.connstr("kill"), postgres::NoTls).ok();
        }
        match conn.as_mut()?.query_one(sql, &[]) {
            Ok(row) => Some(row.get(0)),
            Err(_) => {
                conn = None;
                None
            }
        }
    };
    wait_for("all completed", Duration::from_secs(120), || {
        (completed("SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'")?
            == 2000)
            .then_some(())
    });
    let stuck = wait_for("count of unfinished deliveries", LONG, || {
        completed(
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status <> 'completed'",
        )
    });
    assert_eq!(stuck, 0);
    let reqs = rx.on("/h");
    let mut by_event: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &reqs {
        by_event
            .entry(r.json()["id"].as_str().unwrap().to_string())
            .or_default()
            .insert(r.header("webhook-id").unwrap().to_string());
    }
    assert_eq!(by_event.len(), 2000, "every event delivered at least once");
    assert!(
        by_event.values().all(|ids| ids.len() == 1),
        "duplicates carry the same webhook-id"
    );
    eprintln!(
        "kill test: 2000 events, {} requests, {} duplicates",
        reqs.len(),
        reqs.len() - 2000
    );
}

#[test]
fn sql_handlers_run_as_their_role_and_a_failing_one_rolls_back_only_its_own_work() {
    let cluster = Cluster::start("sqlh", CONF);
    let mut c = cluster.create_db_with_extension("sqlh");
    c.batch_execute(
        "CREATE ROLE handler_role NOLOGIN;
         CREATE TABLE public.stock (sku text PRIMARY KEY, on_hand int NOT NULL);
         INSERT INTO public.stock VALUES ('W', 10);
         CREATE TABLE public.journal (note text);
         GRANT SELECT, UPDATE ON public.stock TO handler_role;
         GRANT INSERT ON public.journal TO handler_role;
         CREATE SCHEMA h; GRANT USAGE ON SCHEMA h TO handler_role;
         CREATE FUNCTION h.deduct(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$
             UPDATE public.stock SET on_hand = on_hand - (event.payload->>'qty')::int WHERE sku = 'W'
             RETURNING jsonb_build_object('on_hand', on_hand, 'as', current_user) $$;
         CREATE FUNCTION h.journal_then_fail(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO public.journal VALUES ('written before the error');
               RAISE EXCEPTION 'ledger closed' USING ERRCODE = 'P0001';
             END $$;
         CREATE FUNCTION h.superuser_owned(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;",
    )
    .unwrap();
    c.batch_execute(
        "SELECT event_bus.subscribe('invoice.posted', 'inventory', p_handler_function => 'h.deduct', p_run_as => 'handler_role');
         SELECT event_bus.subscribe('invoice.posted', 'accounting', p_handler_function => 'h.journal_then_fail',
                                    p_run_as => 'handler_role', p_max_retries => 1);
         SELECT event_bus.subscribe('invoice.posted', 'audit', p_handler_function => 'h.superuser_owned', p_max_retries => 0);",
    )
    .unwrap();
    let e = emit(&mut c, "invoice.posted", r#"{"qty": 3}"#);
    wait_for("event finished", LONG, || {
        (scalar_text(
            &mut c,
            &format!("SELECT status FROM event_bus.module_events WHERE id = '{e}'"),
        ) == "failed")
            .then_some(())
    });
    assert_eq!(
        scalar_i64(&mut c, "SELECT on_hand::bigint FROM public.stock"),
        7,
        "the succeeding handler's work is kept"
    );
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM public.journal"),
        0,
        "the failing handler's work is rolled back"
    );
    let logs = scalar_text(
        &mut c,
        "SELECT string_agg(s.handler_module || ':' || l.attempt || ':' || l.status || ':' ||
                           coalesce(l.response->>'as', '') || coalesce(l.error_message, ''), ' | '
                           ORDER BY s.handler_module, l.attempt)
           FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id",
    );
    assert!(logs.contains("inventory:1:success:handler_role"), "{logs}");
    assert!(
        logs.contains("accounting:1:failed:ledger closed (SQLSTATE P0001)"),
        "{logs}"
    );
    assert!(
        logs.contains("accounting:2:failed:ledger closed (SQLSTATE P0001)"),
        "{logs}"
    );
    assert!(
        logs.contains("audit:1:failed:SQL handler h.superuser_owned is owned by a superuser"),
        "{logs}"
    );
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM event_bus.module_event_logs"),
        4
    );
}

#[test]
fn edge_function_names_resolve_against_the_base_url_after_a_reload() {
    let cluster = Cluster::start("edge", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("edge");
    c.batch_execute(
        "SELECT event_bus.subscribe('invoice.posted', 'inventory', p_handler_function => 'process-module-event',
                                    p_headers => '{\"Authorization\": \"Bearer anon-key\"}', p_max_retries => 50)",
    )
    .unwrap();
    // no base URL yet: the attempt fails with a clear error and is retried
    let e = emit(&mut c, "invoice.posted", "{}");
    wait_for("a failed attempt naming the setting", LONG, || {
        let n = scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs WHERE error_message LIKE '%edge_function_base_url is not set%'",
        );
        (n > 0).then_some(())
    });
    // set it and reload: the worker picks it up at its next safe point (SIGHUP)
    c.batch_execute(&format!(
        "ALTER SYSTEM SET event_bus.edge_function_base_url = '{}'",
        rx.url("/functions/v1/")
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_for("delivered to the Edge Function", LONG, || {
        (rx.count("/functions/v1/process-module-event") == 1).then_some(())
    });
    let r = &rx.on("/functions/v1/process-module-event")[0];
    assert_eq!(r.header("authorization"), Some("Bearer anon-key"));
    assert_eq!(r.json()["id"], e.as_str());
}

#[test]
fn two_workers_share_a_database_without_duplicates_and_tenant_filters_hold() {
    let mut conf = CONF.to_vec();
    conf.push("event_bus.workers = 2");
    conf.push("event_bus.batch_size = 20");
    let cluster = Cluster::start("twoworkers", &conf);
    let rx = Receiver::start(|_, _| Reply::ok().delayed(Duration::from_millis(1)));
    let mut c = cluster.create_db_with_extension("twoworkers");
    subscribe(&mut c, "#", &rx.url("/all"), "");
    subscribe(
        &mut c,
        "#",
        &rx.url("/other-tenant"),
        ", p_tenant_id => '55555555-5555-5555-5555-555555555555'",
    );
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{TENANT}', 'stock.moved', 'inventory', 'item', g::text, '{{}}')
           FROM generate_series(1, 1000) g"
    ))
    .unwrap();
    // the backlog brings the database its second worker (event_bus.workers = 2)
    let mut most = 0;
    wait_for("all delivered", LONG, || {
        most = most.max(scalar_i64(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'twoworkers'",
        ));
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'",
        ) == 1000)
            .then_some(())
    });
    assert_eq!(most, 2, "two workers delivered");
    let ids: HashSet<String> = rx
        .on("/all")
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_string())
        .collect();
    assert_eq!(
        rx.count("/all"),
        1000,
        "each delivery sent once: no worker claimed another's"
    );
    assert_eq!(ids.len(), 1000);
    assert_eq!(
        rx.count("/other-tenant"),
        0,
        "a tenant-filtered subscription sees only its tenant"
    );
}

#[test]
fn bad_subscription_rows_written_directly_fail_their_attempts_and_never_stop_the_worker() {
    let cluster = Cluster::start("badrows", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("badrows");
    let bad_headers = subscribe(&mut c, "#", &rx.url("/h"), ", p_max_retries => 0");
    let bad_secret = subscribe(&mut c, "#", &rx.url("/s"), ", p_max_retries => 0");
    let bad_url = subscribe(&mut c, "#", &rx.url("/u"), ", p_max_retries => 0");
    subscribe(&mut c, "#", &rx.url("/good"), "");
    // an admin bypasses subscribe()'s validation
    c.batch_execute(&format!(
        "UPDATE event_bus.module_event_subscriptions SET headers = '{{\"X-Bad\": 1}}' WHERE id = '{bad_headers}';
         UPDATE event_bus.module_event_subscriptions SET secret = 'short' WHERE id = '{bad_secret}';
         UPDATE event_bus.module_event_subscriptions SET handler_url = 'ftp://127.0.0.1/x' WHERE id = '{bad_url}';"
    ))
    .unwrap();
    emit(&mut c, "a.b", "{}");
    wait_for("three dead deliveries", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e ON e.id = d.event_id
              WHERE d.status = 'failed' AND e.event_type = 'a.b'",
        ) == 3)
            .then_some(())
    });
    let errors = scalar_text(
        &mut c,
        "SELECT string_agg(error_message, ' | ' ORDER BY error_message) FROM event_bus.module_event_logs WHERE status = 'failed'",
    );
    assert!(errors.contains("invalid subscription headers"), "{errors}");
    assert!(errors.contains("invalid signing secret"), "{errors}");
    assert!(errors.contains("invalid URL"), "{errors}");
    assert_eq!(
        rx.count("/h") + rx.count("/s") + rx.count("/u"),
        0,
        "nothing sent for a bad row"
    );
    // (the good "#" subscription also receives the bus's event_bus.delivery.failed events)
    let good = |event_type: &str| {
        rx.on("/good")
            .iter()
            .filter(|r| r.json()["type"] == event_type)
            .count()
    };
    wait_for("the good subscription delivered", LONG, || {
        (good("a.b") == 1).then_some(())
    });
    wait_for("the three dead deliveries reported", LONG, || {
        (good("event_bus.delivery.failed") == 3).then_some(())
    });
    // and the worker is still there for the next event
    emit(&mut c, "a.c", "{}");
    wait_for("next event delivered", LONG, || {
        (good("a.c") == 1).then_some(())
    });
}

#[test]
fn claims_stop_at_batch_memory_and_every_large_event_is_still_delivered() {
    // 40 kB events against a 64 kB budget: a claim takes one or two of them (the first always),
    // never the 500 of event_bus.batch_size; a retry's claim keeps to it too
    let mut conf = CONF.to_vec();
    conf.push("event_bus.batch_memory = 64kB");
    let cluster = Cluster::start("bytes", &conf);
    // the first attempt of every fifth event fails, so retries are claimed too
    let failed_once = std::sync::Arc::new(std::sync::Mutex::new(HashSet::new()));
    let rx = Receiver::start(move |r, _| {
        let n = r.json()["data"]["n"].as_i64().unwrap_or(0);
        if n % 5 == 0 && failed_once.lock().unwrap().insert(n) {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("bytes");
    c.batch_execute(
        "CREATE ROLE blob_handler NOLOGIN;
         CREATE SCHEMA h; GRANT USAGE ON SCHEMA h TO blob_handler;
         CREATE FUNCTION h.noop(event event_bus.module_events) RETURNS jsonb LANGUAGE sql
             AS $$ SELECT jsonb_build_object('n', event.payload -> 'n') $$;
         SELECT event_bus.subscribe('blob.sql', 'h', p_handler_function => 'h.noop', p_run_as => 'blob_handler');",
    )
    .unwrap();
    subscribe(&mut c, "blob.http", &rx.url("/big"), ", p_max_retries => 3");
    assert_eq!(
        scalar_text(&mut c, "SELECT current_setting('event_bus.batch_memory')"),
        "64kB"
    );
    // one transaction: the worker finds all 60 at once
    c.batch_execute(&format!(
        "BEGIN;
         SELECT count(event_bus.emit_module_event('{TENANT}', CASE WHEN g % 2 = 0 THEN 'blob.sql' ELSE 'blob.http' END,
                                                  'test', 'blob', g::text,
                                                  jsonb_build_object('n', g, 'blob', repeat(md5(g::text), 1250))))
           FROM generate_series(1, 60) g;
         COMMIT;"
    ))
    .unwrap();
    wait_for("60 deliveries completed", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'completed'",
        ) == 60)
            .then_some(())
    });
    assert!(rx.count("/big") >= 36, "every HTTP event arrived (6 twice)");
    assert!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'failed'"
        ) >= 6,
        "the retries were claimed"
    );
    // deliveries started by one claim share its transaction's now(): at most two events each
    let per_claim = scalar_i64(
        &mut c,
        "SELECT max(n) FROM (SELECT count(DISTINCT d.event_id) AS n FROM event_bus.module_event_deliveries d
                              GROUP BY d.last_attempt_at) g",
    );
    assert!(
        per_claim <= 2,
        "a claim took {per_claim} events of 40 kB against a 64 kB budget"
    );
}

#[test]
fn due_deliveries_whose_event_was_deleted_by_hand_never_block_the_claim() {
    // batch_size 2: two orphaned due deliveries at the head of the queue fill every claim
    let mut conf = CONF.to_vec();
    conf.push("event_bus.batch_size = 2");
    let cluster = Cluster::start("orphans", &conf);
    let rx = Receiver::start(|_, n| {
        if n == 0 {
            Reply::status(500)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("orphans");
    let sub = subscribe(&mut c, "order.*", &rx.url("/retry"), "");
    // deliveries of events deleted by hand, due for an hour
    c.batch_execute(&format!(
        "INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, next_attempt_at)
         SELECT gen_random_uuid(), gen_random_uuid(), '{sub}', '{TENANT}', 'pending', now() - interval '1 hour'
           FROM generate_series(1, 3)"
    ))
    .unwrap();
    // the first attempt fails; its retry is due behind them
    let e = emit(&mut c, "order.placed", r#"{"n": 1}"#);
    // (the receiver counts the request before the worker records its answer: poll the status)
    wait_for("the retry delivered and recorded", LONG, || {
        (rx.count("/retry") >= 2
            && scalar_text(
                &mut c,
                &format!("SELECT status FROM event_bus.module_events WHERE id = '{e}'"),
            ) == "completed")
            .then_some(())
    });
    wait_for("the orphans removed", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries d
              WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_events e WHERE e.id = d.event_id)",
        ) == 0)
            .then_some(())
    });
}

/// Whether each of `table`'s live rows is an UPDATEd version (HEAP_UPDATED in its tuple header),
/// read with pageinspect: (updated versions, rows).
fn updated_versions(c: &mut postgres::Client, table: &str, filter: &str) -> (i64, i64) {
    let row = c
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE (p.t_infomask & 8192) <> 0), count(*)
                   FROM {table} d,
                        LATERAL heap_page_items(get_raw_page('{table}', (d.ctid::text::point)[0]::int)) p
                  WHERE p.lp = (d.ctid::text::point)[1]::int AND {filter}"
            ),
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

/// A delivery whose first attempt succeeds is written once, with its outcome: one INSERT, no row
/// written at the fan-out and updated after (its row is no UPDATEd version). When one first attempt
/// of an event is recorded while another is still in flight, the one in flight gets its row then,
/// leased (processing, attempt 1): from there a crash loses it no more than any leased delivery.
/// No event lease is left behind.
#[test]
fn a_first_attempt_is_written_once_with_its_outcome() {
    let cluster = Cluster::start("written-once", CONF);
    let rx = Receiver::start(|r, _| {
        if r.path == "/slow" {
            Reply::ok().delayed(Duration::from_secs(8))
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("written_once");
    c.batch_execute("CREATE EXTENSION pageinspect").unwrap();
    subscribe(&mut c, "one.*", &rx.url("/fast"), "");
    for i in 0..20 {
        emit(&mut c, "one.x", &format!("{{\"n\": {i}}}"));
    }
    wait_for("the 20 events completed", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_events WHERE event_type = 'one.x' AND status = 'completed'",
        ) == 20)
            .then_some(())
    });
    assert_eq!(
        updated_versions(&mut c, "event_bus.module_event_deliveries", "true"),
        (0, 20),
        "each delivery is one INSERT"
    );
    assert_eq!(
        scalar_text(
            &mut c,
            "SELECT string_agg(DISTINCT concat_ws('|', status, attempts, last_http_status, completed_at IS NOT NULL), ',')
               FROM event_bus.module_event_deliveries"
        ),
        "completed|1|200|t"
    );
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success'"
        ),
        20
    );
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM event_bus._event_leases"),
        0
    );

    // an event to a fast and a slow subscription: the fast one's outcome comes first
    subscribe(&mut c, "two.*", &rx.url("/fast"), "");
    let slow = subscribe(&mut c, "two.*", &rx.url("/slow"), ", p_timeout_ms => 60000");
    let ev = emit(&mut c, "two.x", "{}");
    wait_for("the fast delivery recorded", LONG, || {
        (scalar_i64(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries
                  WHERE event_id = '{ev}' AND status = 'completed'"
            ),
        ) == 1)
            .then_some(())
    });
    wait_for("the slow attempt under way", LONG, || {
        (rx.count("/slow") == 1).then_some(())
    });
    assert_eq!(
        scalar_text(
            &mut c,
            &format!(
                "SELECT concat_ws('|', d.status, d.attempts, d.next_attempt_at > now() + interval '30 seconds', e.status)
                   FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e ON e.id = d.event_id
                  WHERE d.subscription_id = '{slow}'"
            )
        ),
        "processing|1|t|processing",
        "the attempt in flight has its row, leased for its timeout"
    );
    wait_for("the event completed", LONG, || {
        (scalar_text(
            &mut c,
            &format!("SELECT status FROM event_bus.module_events WHERE id = '{ev}'"),
        ) == "completed")
            .then_some(())
    });
    assert_eq!(
        updated_versions(
            &mut c,
            "event_bus.module_event_deliveries",
            &format!("d.event_id = '{ev}'")
        ),
        (1, 2),
        "only the delivery that was in flight at the other's record is updated"
    );
    assert_eq!((rx.count("/fast"), rx.count("/slow")), (21, 1));
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM event_bus._event_leases"),
        0
    );
}

/// The worker hands its writes to the cumulative statistics, as a client session does when it goes
/// idle: autovacuum decides from them when to vacuum and analyze. Until 0.13.2 the worker never
/// did, so the tables only it writes (deliveries, attempt log, leases) were never vacuumed nor
/// analyzed while it ran, and the status updates it makes to events never counted either. Here the
/// worker records 30 deliveries and stays up; their rows must show in pg_stat_user_tables while it
/// runs (it reports at most once a second, so within a few).
#[test]
fn the_worker_reports_its_writes_to_the_statistics_autovacuum_reads() {
    let cluster = Cluster::start("reports-stats", CONF);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("reports_stats");
    subscribe(&mut c, "stat.*", &rx.url("/hook"), "");
    for i in 0..30 {
        emit(&mut c, "stat.x", &format!("{{\"n\": {i}}}"));
    }
    wait_for("the 30 attempts logged", LONG, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success'",
        ) == 30)
            .then_some(())
    });
    let stat = |c: &mut postgres::Client, table: &str, column: &str| {
        scalar_i64(
            c,
            &format!(
                "SELECT coalesce(sum({column}), 0)::bigint FROM pg_catalog.pg_stat_user_tables
                  WHERE schemaname = 'event_bus' AND relname = '{table}'"
            ),
        )
    };
    wait_for("the worker's writes counted", LONG, || {
        (stat(&mut c, "module_event_logs", "n_tup_ins") >= 30
            && stat(&mut c, "module_event_deliveries", "n_tup_ins") >= 30
            && stat(&mut c, "module_events", "n_tup_upd") >= 30)
            .then_some(())
    });
    assert_eq!(rx.count("/hook"), 30);
}
