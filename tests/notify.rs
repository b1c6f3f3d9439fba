//! LISTEN module_event from a real client sees committed events only, with a small payload, each
//! once; the delivery worker sends them as it fans the events out (not the emitting transaction).

use event_bus_testkit as common;

use common::Cluster;
use postgres::fallible_iterator::FallibleIterator;
use std::time::{Duration, Instant};

#[test]
fn listen_sees_committed_events_with_id_type_and_tenant() {
    let cluster = Cluster::start("notify", &[]);
    let mut app = cluster.create_db_with_extension("notify_db");
    let mut listener = cluster.connect("notify_db");
    listener.batch_execute("LISTEN module_event").unwrap();

    let tenant = "22222222-2222-2222-2222-222222222222";
    // a rolled-back emit notifies nobody
    app.batch_execute(&format!(
        "BEGIN; SELECT event_bus.emit_module_event('{tenant}', 'invoice.voided', 'accounting', 'invoice', 'X', '{{}}'); ROLLBACK;"
    ))
    .unwrap();
    let big_payload = format!("{{\"blob\": \"{}\"}}", "x".repeat(20_000));
    let row = app
        .query_one(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'invoice.posted', 'accounting', 'invoice', 'INV-9', $2::text::jsonb)::text",
            &[&tenant, &big_payload],
        )
        .unwrap();
    let id: String = row.get(0);

    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.is_empty() && Instant::now() < deadline {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(note)) = it.next() {
            got.push((note.channel().to_string(), note.payload().to_string()));
        }
    }
    assert_eq!(
        got.len(),
        1,
        "exactly one notification (the rolled-back emit sent none): {got:?}"
    );
    let (channel, payload) = &got[0];
    assert_eq!(channel, "module_event");
    let v: serde_json::Value = serde_json::from_str(payload).unwrap();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["event_type"], "invoice.posted");
    assert_eq!(v["tenant_id"], tenant);
    assert!(
        payload.len() < 200,
        "payload carries no event data: {} bytes",
        payload.len()
    );

    // a burst: every committed event is notified exactly once
    app.batch_execute(&format!(
        "SELECT count(*) FROM event_bus.emit_module_events('{tenant}', 'invoice.posted', 'accounting', 'invoice', NULL,
             (SELECT array_agg(jsonb_build_object('n', g)) FROM generate_series(1, 1000) g))"
    ))
    .unwrap();
    let mut ids = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ids.len() < 1000 && Instant::now() < deadline {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(200));
        while let Ok(Some(note)) = it.next() {
            let v: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
            assert!(
                ids.insert(v["id"].as_str().unwrap().to_string()),
                "notified twice: {v}"
            );
        }
    }
    assert_eq!(ids.len(), 1000);

    // event_bus.notify = off (server-wide: the worker reads it) silences it
    app.batch_execute("ALTER SYSTEM SET event_bus.notify = off")
        .unwrap();
    app.batch_execute("SELECT pg_reload_conf()").unwrap();
    let off = |app: &mut postgres::Client| -> bool {
        app.query_one(
            "SELECT setting = 'off' FROM pg_settings WHERE name = 'event_bus.notify'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    common::wait_for("the reload", Duration::from_secs(10), || {
        off(&mut app).then_some(())
    });
    // the worker reloads between rounds: one emit it has surely seen after the reload
    std::thread::sleep(Duration::from_millis(300));
    app.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{tenant}', 'invoice.posted', 'accounting', 'invoice', 'INV-10', '{{}}');"
    ))
    .unwrap();
    let mut n = listener.notifications();
    let mut it = n.timeout_iter(Duration::from_millis(1000));
    assert!(
        matches!(it.next(), Ok(None)),
        "no notification with event_bus.notify = off"
    );
}
