//! Backups with pg_dump: a dump of a database with the bus in it restores the bus — its
//! subscriptions (targets, filters, SQL handlers' recorded namers), events, deliveries (delivered,
//! and still waiting for a retry), the attempt log and event_stats — and the restored database's
//! worker delivers what was still owed, with the same webhook-id. A real cluster, pg_dump and
//! pg_restore of the same version.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{count, pg_cmd_in, wait_for, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TENANT: &str = "77777777-7777-7777-7777-777777777777";

/// What a database's bus holds, table by table, as text that two databases can compare.
fn state(c: &mut postgres::Client) -> Vec<String> {
    [
        "SELECT string_agg(concat_ws('|', id, event_type, handler_module, handler_kind, handler_url, handler_function,
                                     run_as, run_as_set_by, filter::text, max_retries, is_active), E'\\n' ORDER BY id)
           FROM event_bus.module_event_subscriptions",
        "SELECT string_agg(concat_ws('|', id, tenant_id, event_type, entity_id, payload::text, status, dispatched_at,
                                     processed_at), E'\\n' ORDER BY id)
           FROM event_bus.module_events",
        "SELECT string_agg(concat_ws('|', id, event_id, subscription_id, status, attempts, next_attempt_at,
                                     last_error), E'\\n' ORDER BY id)
           FROM event_bus.module_event_deliveries",
        "SELECT string_agg(concat_ws('|', id, delivery_id, attempt, status, http_status), E'\\n' ORDER BY id)
           FROM event_bus.module_event_logs",
        "SELECT string_agg(concat_ws('|', event_type, version, schema::text), E'\\n' ORDER BY event_type, version)
           FROM event_bus.event_type_schemas",
        "SELECT string_agg(concat_ws('|', source_module, event_type, pending, processing, processed, failed, total),
                           E'\\n' ORDER BY source_module, event_type)
           FROM event_bus.event_stats_by_type('30 days')",
        "SELECT string_agg(concat_ws('|', subscription_id, filter_errors), E'\\n' ORDER BY subscription_id)
           FROM event_bus.subscription_health",
    ]
    .iter()
    .map(|sql| {
        c.query_one(*sql, &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_default()
    })
    .collect()
}

#[test]
fn a_dump_restores_the_bus_and_the_restored_worker_delivers_what_was_owed() {
    let cluster = Cluster::start(
        "dump",
        &[
            "event_bus.poll_interval_ms = 100",
            "event_bus.backoff_base_ms = 3600000",
            "event_bus.backoff_max_ms = 3600000",
        ],
    );
    let later_ok = Arc::new(AtomicBool::new(false));
    let flag = later_ok.clone();
    let rx = Receiver::start(move |r, _| {
        if r.path == "/later" && !flag.load(Ordering::SeqCst) {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let mut c = cluster.create_db_with_extension("dump_src");
    c.batch_execute(
        "CREATE ROLE eb_dump_handler NOLOGIN;
         CREATE SCHEMA books;
         GRANT USAGE ON SCHEMA books TO eb_dump_handler;
         CREATE TABLE books.journal (event_id uuid PRIMARY KEY, total numeric);
         GRANT INSERT ON books.journal TO eb_dump_handler;
         CREATE FUNCTION books.post(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS
             $f$ INSERT INTO books.journal VALUES (e.id, (e.payload ->> 'total')::numeric) RETURNING '{}'::jsonb $f$;
         -- the SQL handler named by an admin that is not a superuser: the restore keeps that namer
         CREATE ROLE eb_dump_admin NOLOGIN IN ROLE event_bus_admin;
         GRANT eb_dump_handler TO eb_dump_admin;
         GRANT USAGE ON SCHEMA books TO eb_dump_admin;
         SET ROLE eb_dump_admin;
         SELECT event_bus.subscribe('invoice.*', 'books', p_handler_function => 'books.post',
                                    p_run_as => 'eb_dump_handler');
         RESET ROLE;
         SELECT event_bus.register_event_type('invoice.posted', 1,
                                              '{\"type\": \"object\", \"required\": [\"total\"]}'::jsonb);",
    )
    .unwrap();
    for (path, filter) in [("/ok", None), ("/later", Some("$.payload.total > 500"))] {
        c.execute(
            "SELECT event_bus.subscribe('invoice.*', 'hook', $1, p_max_retries => 10, p_filter => $2)",
            &[&rx.url(path), &filter],
        )
        .unwrap();
    }
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', 'INV-' || i,
                                            jsonb_build_object('total', i * 20))
           FROM generate_series(1, 50) i"
    ))
    .unwrap();
    // /ok has every event, the SQL handler too; /later's 25 deliveries (totals over 500) wait an
    // hour for their retry
    wait_for("the first attempts", Duration::from_secs(60), || {
        let waiting = count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'pending' AND attempts = 1",
        );
        // and every outcome recorded: a SQL handler's work commits before the worker records its
        // outcome (the state read below once saw the handler's deliveries still processing)
        let unrecorded = count(
            &mut c,
            "SELECT (SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'processing')
                  + (SELECT count(*) FROM event_bus._event_leases)",
        );
        (rx.count("/ok") == 50 && waiting == 25 && unrecorded == 0).then_some(())
    });
    assert_eq!(count(&mut c, "SELECT count(*) FROM books.journal"), 50);
    let before = state(&mut c);
    let ids_waiting: Vec<String> = c
        .query(
            "SELECT id::text FROM event_bus.module_event_deliveries WHERE status = 'pending' ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    // the dump, and its restore into a new database in one transaction (the restored worker sees it
    // whole or not at all)
    let file = cluster.dir.join("bus.dump");
    let port = cluster.port.to_string();
    let out = pg_cmd_in(&cluster.bindir, "pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-Fc",
            "-f",
        ])
        .arg(&file)
        .arg("dump_src")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
        .connect("postgres")
        .batch_execute("CREATE DATABASE dump_dst")
        .unwrap();
    let out = pg_cmd_in(&cluster.bindir, "pg_restore")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "--single-transaction",
            "--exit-on-error",
            "-d",
            "dump_dst",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut d = cluster.connect("dump_dst");
    let after = state(&mut d);
    for (i, (b, a)) in before.iter().zip(after.iter()).enumerate() {
        assert!(
            !b.is_empty() || i == 6,
            "query {i} read nothing in the source"
        );
        assert_eq!(b, a, "query {i}: the restored bus differs");
    }

    // the restored database's worker delivers what was owed: the waiting deliveries, made due, go
    // to /later once it answers, with their delivery ids as webhook-id; nothing is sent twice to /ok
    later_ok.store(true, Ordering::SeqCst);
    d.batch_execute(
        "UPDATE event_bus.module_event_deliveries SET next_attempt_at = now() WHERE status = 'pending'",
    )
    .unwrap();
    wait_for(
        "the restored worker to deliver what was owed",
        Duration::from_secs(60),
        || {
            (count(
                &mut d,
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status <> 'completed'",
            ) == 0)
                .then_some(())
        },
    );
    let mut delivered: Vec<String> = rx
        .on("/later")
        .iter()
        .filter_map(|r| r.header("webhook-id").map(str::to_string))
        .collect();
    delivered.sort();
    delivered.dedup();
    for id in &ids_waiting {
        assert!(
            delivered.contains(id),
            "delivery {id} never reached /later after the restore"
        );
    }
    assert_eq!(rx.count("/ok"), 50, "/ok got nothing again");
    assert_eq!(
        count(
            &mut d,
            "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE run_as_set_by = 'eb_dump_admin'"
        ),
        1,
        "the SQL handler's recorded namer"
    );
    // the counts event_stats reads came with the dump and follow the restored worker
    assert_eq!(
        count(&mut d, "SELECT total FROM event_bus.event_stats('30 days')"),
        50
    );
}
