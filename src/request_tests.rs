//! Request-reply to SQL responders and the bad input of request and of idempotency keys, inside
//! one transaction (HTTP responders and idempotency under two workers: tests/request.rs,
//! tests/idempotency.rs).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_default()
    }

    /// An inventory with stock levels and three responders: one that answers, one that raises,
    /// one that is slow. The role they run as may read the stock and nothing of event_bus.
    fn inventory() {
        Spi::run(
            "CREATE ROLE eb_inventory_role;
             CREATE SCHEMA inv;
             GRANT USAGE ON SCHEMA inv TO eb_inventory_role;
             CREATE TABLE inv.stock (sku text PRIMARY KEY, qty int NOT NULL);
             INSERT INTO inv.stock VALUES ('A', 5);
             GRANT SELECT, INSERT ON inv.stock TO eb_inventory_role;
             CREATE FUNCTION inv.stock_check(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$
                 SELECT jsonb_build_object('sku', e.payload ->> 'sku', 'role', current_user,
                        'available', coalesce((SELECT qty FROM inv.stock WHERE sku = e.payload ->> 'sku'), 0)
                                     >= (e.payload ->> 'qty')::int) $$;
             CREATE FUNCTION inv.broken(e event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $$
                 BEGIN INSERT INTO inv.stock VALUES ('written-then-undone', 1);
                       RAISE EXCEPTION 'stock service unavailable' USING ERRCODE = 'P0001'; END $$;
             CREATE FUNCTION inv.slow(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$
                 SELECT pg_sleep(5); SELECT '{}'::jsonb $$;",
        )
        .unwrap();
        for (ty, f) in [
            ("inventory.stock_check", "inv.stock_check"),
            ("inventory.broken", "inv.broken"),
            ("inventory.slow", "inv.slow"),
        ] {
            Spi::run(&format!(
                "SELECT event_bus.subscribe('{ty}', 'inventory', p_handler_function => '{f}',
                                            p_run_as => 'eb_inventory_role', p_replies => true)"
            ))
            .unwrap();
        }
    }

    fn request(ty: &str, payload: &str, timeout: i32) -> String {
        format!("SELECT event_bus.request('{ty}', '{payload}', {timeout}, '{TENANT}')")
    }

    #[pg_test]
    fn a_sql_responder_answers_as_its_role_and_the_request_is_recorded() {
        inventory();
        let reply = text(&format!(
            "SELECT ({})::text",
            request("inventory.stock_check", r#"{"sku": "A", "qty": 3}"#, 2000)
                .trim_start_matches("SELECT ")
        ));
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["available"], true);
        assert_eq!(reply["role"], "eb_inventory_role");
        let reply = text(&format!(
            "SELECT ({})->>'available'",
            request("inventory.stock_check", r#"{"sku": "A", "qty": 9}"#, 2000)
                .trim_start_matches("SELECT ")
        ));
        assert_eq!(reply, "false");
        // recorded: the events (marked), their completed deliveries and a success log with the reply
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events WHERE is_request AND status = 'completed'
                      AND dispatched_at IS NOT NULL"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e
                      ON e.id = d.event_id WHERE e.is_request AND d.status = 'completed' AND d.attempts = 1"),
            2
        );
        let id = text(
            "SELECT id::text FROM event_bus.module_events WHERE is_request ORDER BY id LIMIT 1",
        );
        let detail = text(&format!("SELECT event_bus.event_detail('{id}')::text"));
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["event"]["is_request"], true);
        assert_eq!(detail["logs"][0]["status"], "success");
        assert_eq!(detail["logs"][0]["response"]["available"], true);
        // a request is not an emitted event, and nothing re-delivers it
        assert_eq!(count("SELECT count(*) FROM event_bus.emitted_events()"), 0);
        assert_eq!(
            count("SELECT event_bus.replay_events(p_event_type => 'inventory.#')"),
            0
        );
    }

    #[pg_test]
    fn each_failed_request_raises_its_own_sqlstate_and_leaves_the_transaction_usable() {
        inventory();
        // no responder
        assert_eq!(
            sqlstate_of(&request("inventory.unknown", "{}", 1000)).as_deref(),
            Some("EB001")
        );
        // the handler raised: its work is undone, its message is in the error
        assert_eq!(
            sqlstate_of(&request("inventory.broken", "{}", 1000)).as_deref(),
            Some("EB004")
        );
        assert_eq!(
            count("SELECT count(*) FROM inv.stock WHERE sku = 'written-then-undone'"),
            0
        );
        // too slow: stopped at the timeout, not after the handler's 5 s
        let started = std::time::Instant::now();
        assert_eq!(
            sqlstate_of(&request("inventory.slow", "{}", 200)).as_deref(),
            Some("EB003")
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(3));
        // two responders for one type
        Spi::run(
            "SELECT event_bus.subscribe('inventory.#', 'audit', p_handler_function => 'inv.stock_check',
                                        p_run_as => 'eb_inventory_role', p_replies => true)",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of(&request(
                "inventory.stock_check",
                r#"{"sku": "A", "qty": 1}"#,
                1000
            ))
            .as_deref(),
            Some("EB002")
        );
        // caught in plpgsql, with the handler's error in the message; the transaction goes on
        Spi::run("UPDATE event_bus.module_event_subscriptions SET replies = false WHERE handler_module = 'audit'")
            .unwrap();
        Spi::run(&format!(
            "DO $$ BEGIN PERFORM event_bus.request('inventory.broken', '{{}}', 1000, '{TENANT}');
             EXCEPTION WHEN SQLSTATE 'EB004' THEN
                 PERFORM set_config('eb_test.caught', SQLERRM, true); END $$"
        ))
        .unwrap();
        let caught = text("SELECT current_setting('eb_test.caught')");
        assert!(caught.contains("stock service unavailable"), "{caught}");
        assert_eq!(
            text(&format!(
                "SELECT ({})->>'available'",
                request("inventory.stock_check", r#"{"sku": "A", "qty": 1}"#, 1000)
                    .trim_start_matches("SELECT ")
            )),
            "true"
        );
        // try_request keeps the record of a failure and says why
        let outcome = text(&format!(
            "SELECT concat_ws('|', ok, sqlstate, event_id)
               FROM event_bus.try_request('inventory.broken', '{{}}', 1000, '{TENANT}')"
        ));
        let (outcome, event) = outcome.rsplit_once('|').unwrap();
        assert_eq!(outcome, "f|EB004");
        // (read by a later statement: the function's rows are newer than its caller's snapshot)
        let row = text(&format!(
            "SELECT concat_ws('|', e.status, e.is_request, l.status, l.error_message LIKE '%stock service unavailable%')
               FROM event_bus.module_events e JOIN event_bus.module_event_logs l ON l.event_id = e.id
              WHERE e.id = '{event}'"
        ));
        assert_eq!(row, "failed|t|failed|t");
        // its failed delivery is no dead letter and no retry sends it
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 0);
        assert_eq!(count("SELECT event_bus.retry_failed()::bigint"), 0);
    }

    #[pg_test]
    fn bad_requests_raise_with_a_hint_and_write_nothing() {
        inventory();
        let before = count("SELECT count(*) FROM event_bus.module_events");
        for (sql, state) in [
            // a pattern instead of a type
            (request("inventory.*", "{}", 1000), "22023"),
            (request("inventory.#", "{}", 1000), "22023"),
            // timeouts out of range
            (request("inventory.stock_check", "{}", 0), "22023"),
            (request("inventory.stock_check", "{}", 60001), "22023"),
            // a payload that is not an object
            (request("inventory.stock_check", "[1]", 1000), "22023"),
            // an invalid type
            (request("Inventory Check", "{}", 1000), "22023"),
            // no tenant given and none bound to the session
            (
                "SELECT event_bus.request('inventory.stock_check', '{}')".to_string(),
                "22004",
            ),
        ] {
            assert_eq!(sqlstate_of(&sql).as_deref(), Some(state), "{sql}");
        }
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events"),
            before
        );
    }

    #[pg_test]
    fn bad_idempotency_settings_are_refused_at_subscribe() {
        let sub = |extra: &str| {
            format!(
                "SELECT event_bus.subscribe('order.placed', 'sales', 'https://example.com/hook', {extra})"
            )
        };
        for (extra, state) in [
            ("p_idempotency_key => 'order_id'", "22023"),
            ("p_idempotency_key => 'payload'", "22023"),
            ("p_idempotency_key => 'payload.'", "22023"),
            ("p_idempotency_key => 'payload.a b'", "22023"),
            ("p_idempotency_key => 'tenant_id'", "22023"),
            (
                "p_idempotency_key => 'payload.order_id; drop table x'",
                "22023",
            ),
            ("p_idempotency_window => '1 day'", "22023"),
            (
                "p_idempotency_key => 'payload.order_id', p_idempotency_window => '0 seconds'",
                "22023",
            ),
            (
                "p_idempotency_key => 'payload.order_id', p_idempotency_window => '400 days'",
                "22023",
            ),
            // not an interval at all: PostgreSQL's own invalid_datetime_format
            (
                "p_idempotency_key => 'payload.order_id', p_idempotency_window => '7 dayz'",
                "22007",
            ),
        ] {
            assert_eq!(sqlstate_of(&sub(extra)).as_deref(), Some(state), "{extra}");
        }
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions"),
            0
        );
        // good ones, with the default window
        for key in [
            "entity_id",
            "payload.order_id",
            "payload.order.lines-1",
            "metadata.request_id",
        ] {
            Spi::run(&sub(&format!("p_idempotency_key => '{key}'"))).unwrap();
        }
        assert_eq!(
            count(
                "SELECT count(*) FROM event_bus.module_event_subscriptions
                    WHERE idempotency_window = interval '7 days'"
            ),
            4
        );
    }

    #[pg_test]
    fn the_idempotency_key_is_read_from_the_path_it_names() {
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'order.placed', 'sales', 'order', 'O-7',
                 '{{\"order\": {{\"id\": 42}}, \"n\": 1}}', '{{\"request_id\": \"r-1\"}}')"
        ))
        .unwrap();
        let key = |path: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT event_bus._idempotency_value('{path}', e) FROM event_bus.module_events e"
            ))
            .unwrap()
        };
        assert_eq!(key("entity_id").as_deref(), Some("O-7"));
        assert_eq!(key("payload.order.id").as_deref(), Some("42"));
        assert_eq!(key("payload.order").as_deref(), Some(r#"{"id": 42}"#));
        assert_eq!(key("metadata.request_id").as_deref(), Some("r-1"));
        assert_eq!(key("payload.missing"), None);
    }
}
