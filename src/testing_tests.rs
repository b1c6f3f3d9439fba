//! The test helpers (sql/testing.sql, src/testing.rs) as a user's test uses them: inside one
//! transaction, which the test rolls back.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap_or_default()
    }

    fn emit(event_type: &str, payload: &str) {
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', '{event_type}', 'sales', 'invoice', 'I-1', '{payload}')"
        ))
        .unwrap();
    }

    #[pg_test]
    fn emitted_events_lists_this_transactions_events_and_assert_emitted_checks_them() {
        assert_eq!(count("SELECT count(*) FROM event_bus.emitted_events()"), 0);
        emit("invoice.posted", r#"{"number": "INV-1", "total": 10}"#);
        emit("invoice.posted", r#"{"number": "INV-2", "total": 20}"#);
        emit("order.created", r#"{"number": "O-1"}"#);
        // a subtransaction rolled back takes its events with it; a committed one keeps them
        Spi::run(&format!(
            "DO $$ BEGIN
                 PERFORM event_bus.emit_module_event('{TENANT}', 'invoice.voided', 'sales', 'invoice', 'I-1', '{{}}');
                 RAISE EXCEPTION 'undo';
             EXCEPTION WHEN raise_exception THEN NULL; END $$"
        ))
        .unwrap();
        Spi::run(&format!(
            "DO $$ BEGIN
                 BEGIN
                     PERFORM event_bus.emit_module_event('{TENANT}', 'invoice.sent', 'sales', 'invoice', 'I-1', '{{}}');
                 EXCEPTION WHEN OTHERS THEN NULL;
                 END;
             END $$"
        ))
        .unwrap();
        assert_eq!(
            text("SELECT string_agg(event_type, ',' ORDER BY id) FROM event_bus.emitted_events()"),
            "invoice.posted,invoice.posted,order.created,invoice.sent"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.emitted_events('invoice.*')"),
            3
        );
        // a batch emit counts too
        Spi::run(&format!(
            "SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'stock.moved', 'inventory', 'sku', NULL,
                 ARRAY['{{\"sku\": \"A\"}}'::jsonb, '{{\"sku\": \"B\"}}'])"
        ))
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM event_bus.emitted_events('stock.#')"),
            2
        );

        let ok = |sql: &str| Spi::get_one::<bool>(sql).unwrap() == Some(true);
        assert!(ok("SELECT event_bus.assert_emitted('invoice.posted')"));
        assert!(ok(
            "SELECT event_bus.assert_emitted('invoice.posted', '{}', 2)"
        ));
        assert!(ok(
            r#"SELECT event_bus.assert_emitted('invoice.*', '{"number": "INV-2"}', 1)"#
        ));
        assert!(ok(
            "SELECT event_bus.assert_emitted('invoice.voided', '{}', 0)"
        ));
        // a failed expectation: P0004, and the message lists what was emitted
        assert_eq!(
            sqlstate_of("SELECT event_bus.assert_emitted('invoice.voided')").as_deref(),
            Some("P0004")
        );
        assert_eq!(
            sqlstate_of(
                r#"SELECT event_bus.assert_emitted('invoice.posted', '{"number": "INV-9"}')"#
            )
            .as_deref(),
            Some("P0004")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.assert_emitted('invoice.posted', '{}', 3)").as_deref(),
            Some("P0004")
        );
        // bad input: SQLSTATE and nothing written
        for (sql, want) in [
            (
                "SELECT event_bus.assert_emitted('invoice.posted', '{}', -1)",
                "22023",
            ),
            (
                "SELECT event_bus.assert_emitted('invoice.posted', '[1]')",
                "22023",
            ),
            (
                "SELECT event_bus.assert_emitted('invoice..posted')",
                "22023",
            ),
            (
                "SELECT count(*) FROM event_bus.emitted_events(NULL)",
                "22004",
            ),
            (
                "SELECT count(*) FROM event_bus.emitted_events('a.#.#x')",
                "22023",
            ),
        ] {
            assert_eq!(sqlstate_of(sql).as_deref(), Some(want), "{sql}");
        }
        assert_eq!(count("SELECT count(*) FROM event_bus.emitted_events()"), 6);
    }

    #[pg_test]
    fn assert_emitted_lists_what_was_emitted_when_it_fails() {
        emit("invoice.posted", r#"{"number": "INV-1"}"#);
        Spi::run(
            "CREATE TEMP TABLE failure AS SELECT ''::text AS message, ''::text AS detail LIMIT 0;
             DO $$ DECLARE m text; d text; BEGIN
                 PERFORM event_bus.assert_emitted('invoice.voided', '{}', 1);
             EXCEPTION WHEN SQLSTATE 'P0004' THEN
                 GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, d = PG_EXCEPTION_DETAIL;
                 INSERT INTO failure VALUES (m, d);
             END $$;",
        )
        .unwrap();
        assert_eq!(
            text("SELECT message FROM failure"),
            "event_bus: expected 1 event(s) of invoice.voided with a payload containing {}, found 0"
        );
        let detail = text("SELECT detail FROM failure");
        assert!(
            detail.contains("This transaction emitted 1 event(s)")
                && detail.contains(r#"invoice.posted {"number": "INV-1"}"#),
            "{detail}"
        );
    }

    #[pg_test]
    fn run_handlers_runs_this_transactions_sql_handlers_now_and_mocks_record_what_they_get() {
        Spi::run(
            "CREATE ROLE eb_th_role NOLOGIN;
             CREATE SCHEMA th;
             GRANT USAGE ON SCHEMA th TO eb_th_role;
             CREATE TABLE th.stock (sku text PRIMARY KEY, qty int);
             INSERT INTO th.stock VALUES ('A', 10);
             GRANT SELECT, UPDATE ON th.stock TO eb_th_role;
             CREATE FUNCTION th.deduct(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $f$
             BEGIN
                 UPDATE th.stock SET qty = qty - (event.payload->>'qty')::int WHERE sku = event.payload->>'sku';
                 RETURN jsonb_build_object('deducted', (event.payload->>'qty')::int, 'by', current_user);
             END $f$;
             CREATE FUNCTION th.refuse(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $f$
             BEGIN
                 UPDATE th.stock SET qty = 0;
                 RAISE EXCEPTION 'out of stock for %', event.payload->>'sku' USING ERRCODE = '22012';
             END $f$;",
        )
        .unwrap();
        let sub = |pattern: &str, function: &str| {
            text(&format!(
                "SELECT event_bus.subscribe('{pattern}', 'inventory', p_handler_function => '{function}', \
                 p_run_as => 'eb_th_role')::text"
            ))
        };
        let deduct = sub("order.placed", "th.deduct");
        let refuse = sub("order.cancelled", "th.refuse");
        let mock = text("SELECT event_bus.mock_handler('order.*')::text");
        emit("order.placed", r#"{"sku": "A", "qty": 3}"#);
        emit("order.cancelled", r#"{"sku": "A"}"#);
        emit("invoice.posted", "{}");

        let rows = text(
            "SELECT string_agg(concat_ws(':', subscription_id, success, response->>'deducted', response->>'by', error),
                               ' | ' ORDER BY event_id, subscription_id)
               FROM event_bus.run_handlers()",
        );
        let mut want = [
            format!("{deduct}:t:3:eb_th_role"),
            format!("{mock}:t"),
            format!("{refuse}:f:out of stock for A"),
            format!("{mock}:t"),
        ];
        // rows come per event (in emit order), subscriptions by id within it
        let (a, b) = want.split_at_mut(2);
        if deduct > mock {
            a.swap(0, 1);
        }
        if refuse > mock {
            b.swap(0, 1);
        }
        let got: Vec<&str> = rows.split(" | ").collect();
        assert_eq!(got.len(), 4, "{rows}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert!(g.starts_with(w.as_str()), "got {g}, want {w} (all: {rows})");
        }
        // the handler's work is in this transaction; the failing one's was rolled back alone
        assert_eq!(count("SELECT qty FROM th.stock WHERE sku = 'A'"), 7);
        // the mock received both order events, in order, and nothing else
        assert_eq!(
            text(&format!(
                "SELECT string_agg(event_type || ' ' || payload::text, ', ' ORDER BY called_at) FROM event_bus.mock_calls('{mock}')"
            )),
            r#"order.placed {"qty": 3, "sku": "A"}, order.cancelled {"sku": "A"}"#
        );
        // one event only, and no delivery was recorded
        let placed = text("SELECT id::text FROM event_bus.emitted_events('order.placed')");
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.run_handlers('{placed}')"
            )),
            2
        );
        assert_eq!(count("SELECT qty FROM th.stock WHERE sku = 'A'"), 4);
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_deliveries"),
            0
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.mock_calls(gen_random_uuid())").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate_of(&format!("SELECT * FROM event_bus.mock_calls('{deduct}')")).as_deref(),
            Some("P0002"),
            "a real subscription is not a mock"
        );
    }
}
