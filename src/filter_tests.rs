//! Content filters (subscribe's p_filter): what each kind of predicate selects in the fan-out, bad
//! filters refused with nothing written, errors counted as no match, and the same filter in replay,
//! request-reply, matches_filter and run_handlers — each test one rolled-back transaction, driven
//! by process_pending_events (1,000 events to three filtered HTTP subscriptions through the worker:
//! tests/filters.rs).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    const TENANT_B: &str = "22222222-2222-2222-2222-222222222222";

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn process() {
        Spi::run("SELECT event_bus.process_pending_events(1000)").unwrap();
    }

    /// A handler that notes the entity of each event it gets, and the role it runs as.
    fn handler() {
        Spi::run(
            "CREATE ROLE eb_flt_handler NOLOGIN;
             CREATE SCHEMA flt;
             GRANT USAGE ON SCHEMA flt TO eb_flt_handler;
             CREATE TABLE flt.seen (entity_id text);
             GRANT INSERT ON flt.seen TO eb_flt_handler;
             CREATE FUNCTION flt.note(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $f$
                 INSERT INTO flt.seen VALUES (e.entity_id) RETURNING '{}'::jsonb $f$;",
        )
        .unwrap();
    }

    fn subscribe_to(pattern: &str, name: &str, filter: Option<&str>) -> String {
        let filter = filter
            .map(|f| format!("'{}'", f.replace('\'', "''")))
            .unwrap_or("NULL".into());
        text(&format!(
            "SELECT event_bus.subscribe('{pattern}', '{name}', p_handler_function => 'flt.note',
                                        p_run_as => 'eb_flt_handler', p_filter => {filter})::text"
        ))
        .unwrap()
    }

    fn subscribe(name: &str, filter: &str) -> String {
        subscribe_to("order.*", name, Some(filter))
    }

    /// Four orders: E-1 big, in euros, by hand, two lines; E-2 small, in dinars, three lines;
    /// E-3 with a total that is not a number; E-4 with nothing in it (from another module).
    fn emit_orders() {
        for (id, module, payload, metadata) in [
            (
                "E-1",
                "sales",
                r#"{"total": 20000, "currency": "EUR", "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1}],
                    "customer": {"country": "RS", "vip": true}}"#,
                r#"{"manual": true}"#,
            ),
            (
                "E-2",
                "sales",
                r#"{"total": 500, "currency": "RSD", "lines": [{"sku": "B", "qty": 1}, {"sku": "C", "qty": 7}, {"sku": "D", "qty": 1}],
                    "customer": {"country": "DE"}}"#,
                "{}",
            ),
            (
                "E-3",
                "sales",
                r#"{"total": "lots", "currency": "RSD"}"#,
                "{}",
            ),
            ("E-4", "pos", "{}", "{}"),
        ] {
            Spi::run(&format!(
                "SELECT event_bus.emit_module_event('{TENANT}', 'order.created', '{module}', 'order', '{id}',
                                                    '{payload}'::jsonb, '{metadata}'::jsonb)"
            ))
            .unwrap();
        }
    }

    /// Which orders got a delivery for the subscription (its handler ran for each).
    fn delivered(name: &str) -> String {
        text(&format!(
            "SELECT coalesce(string_agg(e.entity_id, ',' ORDER BY e.entity_id), '')
               FROM event_bus.module_event_deliveries d
               JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
               JOIN event_bus.module_events e ON e.id = d.event_id
              WHERE s.handler_module = '{name}' AND d.status = 'completed'"
        ))
        .unwrap_or_default()
    }

    fn filter_errors(name: &str) -> i64 {
        count(&format!(
            "SELECT filter_errors FROM event_bus.subscription_health WHERE handler_module = '{name}'"
        ))
    }

    #[pg_test]
    fn each_kind_of_predicate_selects_its_events_and_an_error_is_no_match_counted() {
        handler();
        let cases: &[(&str, &str, &str, i64)] = &[
            // (name, filter, the orders it selects, the orders it errs on)
            ("numeric", "$.payload.total > 10000", "E-1", 1),
            (
                "range",
                "$.payload.total >= 500 && $.payload.total <= 20000",
                "E-1,E-2",
                1,
            ),
            ("string", r#"$.payload.currency == "RSD""#, "E-2,E-3", 0),
            (
                "prefix",
                r#"$.payload.customer.country starts with "R""#,
                "E-1",
                0,
            ),
            (
                "regex",
                r#"$.entity_id like_regex "^E-[12]$""#,
                "E-1,E-2",
                0,
            ),
            ("exists", "exists($.metadata.manual)", "E-1", 0),
            ("not", r#"!($.payload.currency == "RSD")"#, "E-1,E-4", 0),
            (
                "and",
                r#"$.payload.total > 100 && $.payload.currency != "EUR""#,
                "E-2",
                1,
            ),
            (
                "or",
                r#"$.payload.currency == "EUR" || $.payload.total < 1000"#,
                "E-1,E-2",
                1,
            ),
            ("array_any", r#"$.payload.lines[*].sku == "C""#, "E-2", 0),
            (
                "array_filter",
                "exists($.payload.lines[*] ? (@.qty > 5))",
                "E-2",
                0,
            ),
            ("array_size", "$.payload.lines.size() >= 3", "E-2", 0),
            ("nested", "$.payload.customer.vip == true", "E-1", 0),
            ("metadata", "$.metadata.manual == true", "E-1", 0),
            (
                "envelope",
                r#"$.source_module == "pos" || $.entity_type != "order""#,
                "E-4",
                0,
            ),
            (
                "tenant",
                &format!(r#"$.tenant_id == "{TENANT}""#),
                "E-1,E-2,E-3,E-4",
                0,
            ),
            // strict: a missing field is an error (lax: no match), so E-4 counts too
            ("strict", "strict $.payload.total > 0", "E-1,E-2", 2),
            ("is_unknown", "($.payload.total > 0) is unknown", "E-3", 0),
        ];
        let owned: Vec<(String, String, String, i64)> = cases
            .iter()
            .map(|(n, f, e, x)| (n.to_string(), f.to_string(), e.to_string(), *x))
            .collect();
        for (name, filter, _, _) in &owned {
            subscribe(name, filter);
        }
        emit_orders();
        process();
        for (name, filter, expected, errors) in &owned {
            assert_eq!(&delivered(name), expected, "{name}: {filter}");
            assert_eq!(filter_errors(name), *errors, "{name}'s errors: {filter}");
        }
        // the handler ran once per delivery
        assert_eq!(
            count("SELECT count(*) FROM flt.seen"),
            count("SELECT count(*) FROM event_bus.module_event_deliveries")
        );
        // the filter reads as PostgreSQL wrote it, to readers too
        assert_eq!(
            text("SELECT filter::text FROM event_bus.subscription_health WHERE handler_module = 'numeric'")
                .as_deref(),
            Some(r#"($."payload"."total" > 10000)"#)
        );
        // the errors, per filtered subscription, in metrics(); the upkeep folds rows, sums unchanged
        let metrics = text("SELECT event_bus.metrics()").unwrap();
        let strict = text("SELECT id::text FROM event_bus.module_event_subscriptions WHERE handler_module = 'strict'")
            .unwrap();
        assert!(
            metrics.contains(&format!(
                "event_bus_filter_errors_total{{subscription_id=\"{strict}\"}} 2\n"
            )),
            "{metrics}"
        );
        Spi::run("SELECT event_bus._maintenance(100)").unwrap();
        assert_eq!(filter_errors("strict"), 2);
        assert_eq!(filter_errors("numeric"), 1);
        assert_eq!(
            count("SELECT count(*) FROM event_bus._filter_errors WHERE NOT folded"),
            0
        );
        // a subscription that is gone leaves no count behind (the next upkeep drops it)
        Spi::run(&format!("SELECT event_bus.unsubscribe('{strict}')")).unwrap();
        Spi::run("SELECT event_bus._maintenance(100)").unwrap();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus._filter_errors WHERE subscription_id = '{strict}'"
            )),
            0
        );
        assert_eq!(filter_errors("numeric"), 1);
    }

    #[pg_test]
    fn an_event_no_filter_passes_completes_without_deliveries_and_others_are_unaffected() {
        handler();
        subscribe("big", "$.payload.total > 10000");
        subscribe_to("order.created", "everything", None);
        let emit = |ty: &str, entity: &str| {
            text(&format!(
                "SELECT event_bus.emit_module_event('{TENANT}', '{ty}', 'sales', 'order', '{entity}',
                                                    '{{\"total\": 5}}')::text"
            ))
            .unwrap()
        };
        let small = emit("order.created", "S-1");
        // only the filtered subscription's pattern matches, and its filter says no
        let alone = emit("order.cancelled", "S-2");
        process();
        assert_eq!(delivered("everything"), "S-1");
        assert_eq!(delivered("big"), "");
        // completed like an event no pattern matches, with no delivery
        for (event, deliveries) in [(&small, 1), (&alone, 0)] {
            assert_eq!(
                text(&format!(
                    "SELECT status FROM event_bus.module_events WHERE id = '{event}'"
                ))
                .as_deref(),
                Some("completed")
            );
            assert_eq!(
                count(&format!(
                    "SELECT count(*) FROM event_bus.module_event_deliveries WHERE event_id = '{event}'"
                )),
                deliveries
            );
        }
    }

    #[pg_test]
    fn bad_filters_are_refused_with_a_reason_and_nothing_is_written() {
        handler();
        let before = count("SELECT count(*) FROM event_bus.module_event_subscriptions");
        for filter in [
            // does not parse
            "$.payload.total >",
            "payload.total > 1",
            r#"$.entity_id like_regex "(""#,
            // a value, not a predicate
            "$.payload.total",
            "$.payload.flag",
            "$.payload ? (@.total > 1)",
            // variables are not passed
            "$.payload.total > $min",
        ] {
            let sql = format!(
                "SELECT event_bus.subscribe('order.*', 'bad', p_handler_function => 'flt.note', p_filter => '{}')",
                filter.replace('\'', "''")
            );
            assert_eq!(sqlstate_of(&sql).as_deref(), Some("22023"), "{filter}");
        }
        let long = format!("$.payload.a == \"{}\"", "x".repeat(4000));
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.subscribe('order.*', 'bad', p_handler_function => 'flt.note', p_filter => '{long}')"
            ))
            .as_deref(),
            Some("22023")
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions"),
            before
        );
        // the message says why and the hint what to write
        Spi::run(
            "CREATE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE m text; h text;
             BEGIN EXECUTE q; RETURN NULL;
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
                 RETURN m || ' / ' || h;
             END $f$",
        )
        .unwrap();
        let msg = text(
            "SELECT pg_temp.error_of($q$SELECT event_bus.subscribe('order.*', 'bad', p_handler_function => 'flt.note',
                                                                 p_filter => '$.payload.flag')$q$)",
        )
        .unwrap_or_default();
        assert!(msg.contains("is not a predicate"), "{msg}");
        assert!(msg.contains("$.payload.flag == true"), "{msg}");

        // set_subscription_filter refuses the same, and keeps the filter it had
        let sub = subscribe("kept", "$.payload.total > 1");
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.set_subscription_filter('{sub}', '$.payload.total')"
            ))
            .as_deref(),
            Some("22023")
        );
        assert_eq!(
            text(&format!(
                "SELECT filter::text FROM event_bus.module_event_subscriptions WHERE id = '{sub}'"
            ))
            .as_deref(),
            Some(r#"($."payload"."total" > 1)"#)
        );
        assert_eq!(
            sqlstate_of(
                "SELECT event_bus.set_subscription_filter('00000000-0000-0000-0000-000000000001', NULL)"
            )
            .as_deref(),
            Some("P0002")
        );
    }

    #[pg_test]
    fn set_subscription_filter_changes_what_new_events_get_and_resets_the_errors() {
        handler();
        let sub = subscribe("acc", "$.payload.total > 10000");
        emit_orders();
        process();
        assert_eq!(delivered("acc"), "E-1");
        assert_eq!(filter_errors("acc"), 1);
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT event_bus.set_subscription_filter('{sub}', '$.payload.currency == \"RSD\"')"
            ))
            .unwrap(),
            Some(true)
        );
        // the same filter again: no change
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT event_bus.set_subscription_filter('{sub}', '$.payload.currency == \"RSD\"')"
            ))
            .unwrap(),
            Some(false)
        );
        assert_eq!(filter_errors("acc"), 0);
        Spi::run("DELETE FROM flt.seen").unwrap();
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'order.created', 'sales', 'order', 'E-5',
                                                '{{\"total\": 1, \"currency\": \"RSD\"}}')"
        ))
        .unwrap();
        process();
        assert_eq!(delivered("acc"), "E-1,E-5");
        // removed: every event again
        Spi::run(&format!(
            "SELECT event_bus.set_subscription_filter('{sub}', NULL)"
        ))
        .unwrap();
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'order.created', 'sales', 'order', 'E-6', '{{}}')"
        ))
        .unwrap();
        process();
        assert_eq!(delivered("acc"), "E-1,E-5,E-6");
    }

    #[pg_test]
    fn replay_applies_the_filter_a_subscription_has_now() {
        handler();
        subscribe_to("order.*", "first", None);
        emit_orders();
        process();
        // a subscription made later, with a filter, backfilled by replay: the events it selects only
        let late = subscribe("late", r#"$.payload.currency == "RSD""#);
        let dry = count(&format!(
            "SELECT event_bus.replay_events(p_subscription_id => '{late}', p_dry_run => true)::bigint"
        ));
        assert_eq!(dry, 2);
        Spi::run(&format!(
            "SELECT event_bus.replay_events(p_subscription_id => '{late}')"
        ))
        .unwrap();
        process();
        assert_eq!(delivered("late"), "E-2,E-3");
    }

    #[pg_test]
    fn a_request_goes_to_the_responder_whose_filter_passes() {
        Spi::run(
            "CREATE ROLE eb_wh_role NOLOGIN;
             CREATE SCHEMA wh;
             GRANT USAGE ON SCHEMA wh TO eb_wh_role;
             CREATE FUNCTION wh.north(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS
                 $f$ SELECT jsonb_build_object('warehouse', 'north') $f$;
             CREATE FUNCTION wh.south(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS
                 $f$ SELECT jsonb_build_object('warehouse', 'south') $f$;
             SELECT event_bus.subscribe('stock.check', 'north', p_handler_function => 'wh.north', p_replies => true, p_run_as => 'eb_wh_role',
                                        p_filter => '$.payload.location == \"N\"');
             SELECT event_bus.subscribe('stock.check', 'south', p_handler_function => 'wh.south', p_replies => true, p_run_as => 'eb_wh_role',
                                        p_filter => '$.payload.location == \"S\"');",
        )
        .unwrap();
        let reply = |loc: &str| {
            text(&format!(
                "SELECT (event_bus.request('stock.check', '{{\"location\": \"{loc}\"}}', 5000, '{TENANT}'))::text"
            ))
        };
        assert_eq!(reply("N").as_deref(), Some(r#"{"warehouse": "north"}"#));
        assert_eq!(reply("S").as_deref(), Some(r#"{"warehouse": "south"}"#));
        // neither filter passes: no responder
        assert_eq!(
            text(&format!(
                "SELECT sqlstate FROM event_bus.try_request('stock.check', '{{\"location\": \"W\"}}', 5000, '{TENANT}')"
            ))
            .as_deref(),
            Some("EB001")
        );
    }

    #[pg_test]
    fn matches_filter_tests_a_filter_against_a_stored_event_the_caller_can_read() {
        emit_orders();
        let id = |entity: &str| {
            text(&format!(
                "SELECT id::text FROM event_bus.module_events WHERE entity_id = '{entity}'"
            ))
            .unwrap()
        };
        let (e1, e3) = (id("E-1"), id("E-3"));
        let check = |filter: &str, event: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT event_bus.matches_filter('{}', '{event}')",
                filter.replace('\'', "''")
            ))
            .unwrap()
        };
        assert_eq!(check("$.payload.total > 10000", &e1), Some(true));
        assert_eq!(check("$.payload.total < 10000", &e1), Some(false));
        // unknown: what a subscription counts as a filter error
        assert_eq!(check("$.payload.total > 10000", &e3), None);
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.matches_filter('$.payload', '{e1}')"
            ))
            .as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of(&format!("SELECT event_bus.matches_filter(NULL, '{e1}')")).as_deref(),
            Some("22004")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.matches_filter('$.a == 1', '00000000-0000-0000-0000-000000000001')")
                .as_deref(),
            Some("P0002")
        );
        // a reader of another tenant cannot test against this tenant's event
        Spi::run(&format!(
            "CREATE ROLE eb_flt_reader NOLOGIN; GRANT event_bus_reader TO eb_flt_reader;
             SET LOCAL app.tenant_id = '{TENANT_B}'; SET LOCAL ROLE eb_flt_reader"
        ))
        .unwrap();
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.matches_filter('$.a == 1', '{e1}')"
            ))
            .as_deref(),
            Some("P0002")
        );
        // ... and may not set filters
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.set_subscription_filter('{e1}', NULL)"
            ))
            .as_deref(),
            Some("42501")
        );
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn run_handlers_applies_filters_too() {
        handler();
        subscribe("big", "$.payload.total > 10000");
        emit_orders();
        Spi::run("SELECT * FROM event_bus.run_handlers()").unwrap();
        assert_eq!(
            text("SELECT string_agg(entity_id, ',' ORDER BY entity_id) FROM flt.seen").as_deref(),
            Some("E-1")
        );
    }
}
