//! Idempotency keys with two workers delivering at once: 1,000 events holding 200 keys, each key
//! handled once; the other deliveries complete as duplicates, saying of which; a first delivery
//! that fails does not count as handled.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{count, wait_for, Cluster};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const TENANT: &str = "77777777-7777-7777-7777-777777777777";

#[test]
fn two_workers_handle_each_key_once_and_a_failed_first_delivery_does_not_count() {
    let cluster = Cluster::start(
        "idempotency",
        &[
            "event_bus.workers = 2",
            "event_bus.poll_interval_ms = 50",
            "event_bus.backoff_base_ms = 50",
            "event_bus.backoff_max_ms = 200",
        ],
    );
    // HTTP: answers slowly enough that both workers hold deliveries of the same keys at once;
    // the first request of every key ending in 7 fails
    let seen: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    let rx = Receiver::start(move |r, _| {
        let key = r.json()["data"]["order_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut seen = seen.lock().unwrap();
        let n = seen.entry(key.clone()).or_insert(0);
        *n += 1;
        if key.ends_with('7') && *n == 1 {
            Reply::status(500)
        } else {
            Reply::ok().delayed(Duration::from_millis(5))
        }
    });
    let mut c = cluster.create_db_with_extension("idem_db");
    c.batch_execute(&format!(
        "SELECT event_bus.subscribe('order.placed', 'fulfilment', '{}', p_max_retries => 5,
                                    p_idempotency_key => 'payload.order_id', p_idempotency_window => '1 day');
         -- a SQL handler with its key in the entity id, counting what it handles in a table
         CREATE ROLE picker;
         CREATE TABLE public.picked (order_id text NOT NULL, event_id uuid NOT NULL);
         GRANT INSERT ON public.picked TO picker;
         CREATE FUNCTION public.pick(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS
             $$ INSERT INTO public.picked VALUES (e.entity_id, e.id); SELECT '{{}}'::jsonb $$;
         SELECT event_bus.subscribe('order.placed', 'warehouse', p_handler_function => 'public.pick',
                                    p_run_as => 'picker', p_idempotency_key => 'entity_id');",
        rx.url("/fulfil")
    ))
    .unwrap();
    // the worker is paused (its SQL looks outdated) while the events go in, so that both
    // workers find a backlog with every key in it many times
    c.batch_execute("UPDATE pg_extension SET extversion = '0.0.1' WHERE extname = 'event_bus'")
        .unwrap();
    for batch in 0..10 {
        c.execute(
            "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, 'order.placed', 'sales', 'order',
                 (SELECT array_agg('O-' || (i % 200)) FROM generate_series($2::int, $2::int + 99) i),
                 (SELECT array_agg(jsonb_build_object('order_id', 'O-' || (i % 200), 'n', i))
                    FROM generate_series($2::int, $2::int + 99) i))",
            &[&TENANT, &(batch * 100)],
        )
        .unwrap();
    }
    c.batch_execute(&format!(
        "UPDATE pg_extension SET extversion = '{}' WHERE extname = 'event_bus'",
        env!("CARGO_PKG_VERSION")
    ))
    .unwrap();

    let finished =
        "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'completed'";
    // the backlog gets the database its second worker (event_bus.workers = 2)
    let mut most = 0;
    wait_for(
        "all 2,000 deliveries completed",
        Duration::from_secs(90),
        || {
            most = most.max(count(
                &mut c,
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_bus worker'",
            ));
            (count(&mut c, finished) == 2000).then_some(())
        },
    );
    assert_eq!(most, 2, "both workers took part");

    // the SQL handler ran once per key
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.picked"), 200);
    assert_eq!(
        count(&mut c, "SELECT count(DISTINCT order_id) FROM public.picked"),
        200
    );
    // the HTTP endpoint: each key succeeded once (keys ending in 7 after one failed attempt)
    let ok_per_key = count(
        &mut c,
        "SELECT count(*) FROM (
             SELECT e.payload ->> 'order_id' FROM event_bus.module_event_logs l
               JOIN event_bus.module_events e ON e.id = l.event_id
               JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
              WHERE s.handler_module = 'fulfilment' AND l.status = 'success' AND l.http_status = 200
              GROUP BY 1 HAVING count(*) = 1) k",
    );
    assert_eq!(ok_per_key, 200);
    let requests = rx.on("/fulfil").len();
    assert_eq!(
        requests,
        200 + 20,
        "200 keys handled once, 20 of them after a failure"
    );
    // every other delivery completed as a duplicate of the one that handled its key
    let duplicates = count(
        &mut c,
        "SELECT count(*) FROM event_bus.module_event_logs l
           JOIN event_bus._idempotency_keys k ON k.delivery_id = (l.response ->> 'duplicate_of')::uuid
          WHERE l.status = 'success' AND l.response ->> 'note' = 'duplicate of ' || (l.response ->> 'duplicate_of')",
    );
    assert_eq!(duplicates, 2 * 800);
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_bus._idempotency_keys WHERE state = 'done'"
        ),
        400
    );
    // a later event with a handled key is a duplicate; with a new key it is handled
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event('{TENANT}', 'order.placed', 'sales', 'order', 'O-3', '{{\"order_id\": \"O-3\"}}');
         SELECT event_bus.emit_module_event('{TENANT}', 'order.placed', 'sales', 'order', 'O-new', '{{\"order_id\": \"O-new\"}}');"
    ))
    .unwrap();
    wait_for(
        "the two new events delivered",
        Duration::from_secs(30),
        || (count(&mut c, finished) == 2004).then_some(()),
    );
    assert_eq!(count(&mut c, "SELECT count(*) FROM public.picked"), 201);
    assert_eq!(rx.on("/fulfil").len(), requests + 1);
}
