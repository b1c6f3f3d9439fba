//! Bad input to every public function (a table: each case's SQLSTATE, nothing written), and the
//! security properties of the SQL surface (search_path pinned, privileges, hijacking).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    fn rows() -> i64 {
        count(
            "SELECT (SELECT count(*) FROM event_bus.module_events) + (SELECT count(*) FROM event_bus.module_event_deliveries)
                  + (SELECT count(*) FROM event_bus.module_event_logs) + (SELECT count(*) FROM event_bus.module_event_subscriptions)",
        )
    }

    fn emit(tenant: &str, event_type: &str, module: &str, payload: &str, metadata: &str) -> String {
        format!("SELECT event_bus.emit_module_event({tenant}, {event_type}, {module}, 'invoice', 'I-1', {payload}, {metadata})")
    }

    fn sub(args: &str) -> String {
        format!("SELECT event_bus.subscribe({args})")
    }

    #[pg_test]
    fn every_bad_input_gets_its_sqlstate_and_writes_nothing() {
        // something to refer to, and to prove nothing else is written
        let sub_id = Spi::get_one::<String>(
            "SELECT event_bus.subscribe('invoice.*', 'inventory', 'http://127.0.0.1:9/x')::text",
        )
        .unwrap()
        .unwrap();
        Spi::run(&format!(
            "UPDATE event_bus.module_event_subscriptions SET is_active = false WHERE id = '{sub_id}';
             CREATE FUNCTION public.eb_h(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL::jsonb';"
        ))
        .unwrap();
        let t = format!("'{TENANT}'");
        let big = format!("jsonb_build_object('x', repeat('a', 2000))");
        let deep = "repeat('[', 100000)::jsonb".to_string();
        let cases: Vec<(&str, String, &str)> = vec![
            // emit_module_event
            ("null tenant", emit("NULL", "'invoice.posted'", "'acc'", "'{}'", "'{}'"), "22004"),
            ("tenant not a uuid", emit("'abc'", "'invoice.posted'", "'acc'", "'{}'", "'{}'"), "22P02"),
            ("null event type", emit(&t, "NULL", "'acc'", "'{}'", "'{}'"), "22004"),
            ("empty event type", emit(&t, "''", "'acc'", "'{}'", "'{}'"), "22023"),
            ("doubled dot", emit(&t, "'invoice..posted'", "'acc'", "'{}'", "'{}'"), "22023"),
            ("trailing dot", emit(&t, "'invoice.'", "'acc'", "'{}'", "'{}'"), "22023"),
            ("wildcard in event type", emit(&t, "'invoice.*'", "'acc'", "'{}'", "'{}'"), "22023"),
            ("space in event type", emit(&t, "'invoice posted'", "'acc'", "'{}'", "'{}'"), "22023"),
            (
                "injection in event type",
                emit(&t, "'x''; DROP TABLE event_bus.module_events; --'", "'acc'", "'{}'", "'{}'"),
                "22023",
            ),
            ("event type over 255 bytes", emit(&t, "repeat('a', 300)", "'acc'", "'{}'", "'{}'"), "22023"),
            ("non-ascii event type", emit(&t, "'invoice.pösted'", "'acc'", "'{}'", "'{}'"), "22023"),
            ("null module", emit(&t, "'invoice.posted'", "NULL", "'{}'", "'{}'"), "22004"),
            ("empty module", emit(&t, "'invoice.posted'", "''", "'{}'", "'{}'"), "22004"),
            ("null payload", emit(&t, "'invoice.posted'", "'acc'", "NULL", "'{}'"), "22023"),
            ("array payload", emit(&t, "'invoice.posted'", "'acc'", "'[1,2]'", "'{}'"), "22023"),
            ("string payload", emit(&t, "'invoice.posted'", "'acc'", "'\"text\"'", "'{}'"), "22023"),
            ("json null payload", emit(&t, "'invoice.posted'", "'acc'", "'null'::jsonb", "'{}'"), "22023"),
            ("number payload", emit(&t, "'invoice.posted'", "'acc'", "'42'", "'{}'"), "22023"),
            ("malformed json", emit(&t, "'invoice.posted'", "'acc'", "'{\"a\":'", "'{}'"), "22P02"),
            ("lone surrogate escape", emit(&t, "'invoice.posted'", "'acc'", "'{\"a\":\"\\ud800\"}'", "'{}'"), "22P02"),
            ("NUL escape", emit(&t, "'invoice.posted'", "'acc'", "'{\"a\":\"\\u0000\"}'", "'{}'"), "22P05"),
            ("deeply nested payload", emit(&t, "'invoice.posted'", "'acc'", &deep, "'{}'"), "54001"),
            ("array metadata", emit(&t, "'invoice.posted'", "'acc'", "'{}'", "'[1]'"), "22023"),
            // emit_module_events (the batch form): one bad element rejects the whole call
            ("batch: null payloads", format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', NULL, NULL)"), "22004"),
            (
                "batch: a null payload among good ones",
                format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', NULL, ARRAY['{{}}'::jsonb, NULL])"),
                "22023",
            ),
            (
                "batch: an array payload",
                format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', NULL, ARRAY['{{}}'::jsonb, '[1]'])"),
                "22023",
            ),
            (
                "batch: ids and payloads of different lengths",
                format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', ARRAY['1','2'], ARRAY['{{}}'::jsonb])"),
                "22023",
            ),
            (
                "batch: two-dimensional payloads",
                format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', NULL, ARRAY[['{{}}'::jsonb], ['{{}}'::jsonb]])"),
                "2202E",
            ),
            (
                "batch: an oversize payload",
                format!("SELECT event_bus.emit_module_events({t}, 'a.b', 'acc', 'doc', NULL, ARRAY['{{}}'::jsonb, jsonb_build_object('x', repeat('a', 2000000))])"),
                "54000",
            ),
            (
                "batch: a bad event type",
                format!("SELECT event_bus.emit_module_events({t}, 'a..b', 'acc', 'doc', NULL, ARRAY['{{}}'::jsonb])"),
                "22023",
            ),
            ("batch: null tenant", "SELECT event_bus.emit_module_events(NULL, 'a.b', 'acc', 'doc', NULL, ARRAY['{}'::jsonb])".into(), "22004"),
            // publish_event
            (
                "publish without organization",
                "SELECT event_bus.publish_event('lead.created', 'lead', '1', '{}', '{}', NULL)".into(),
                "22004",
            ),
            (
                "publish with a bad type",
                format!("SELECT event_bus.publish_event('lead created', 'lead', '1', '{{}}', '{{}}', {t})"),
                "22023",
            ),
            // subscribe
            ("null pattern", sub("NULL, 'm', 'http://127.0.0.1/'"), "22004"),
            ("empty pattern segment", sub("'a..b', 'm', 'http://127.0.0.1/'"), "22023"),
            ("partial wildcard", sub("'inv*.posted', 'm', 'http://127.0.0.1/'"), "22023"),
            ("wildcard glued to text", sub("'a.#x', 'm', 'http://127.0.0.1/'"), "22023"),
            ("null handler module", sub("'a.b', NULL, 'http://127.0.0.1/'"), "22004"),
            ("no target", sub("'a.b', 'm'"), "22023"),
            ("two targets", sub("'a.b', 'm', 'http://127.0.0.1/', 'inv.fn'"), "22023"),
            ("ftp url", sub("'a.b', 'm', 'ftp://127.0.0.1/x'"), "22023"),
            ("file url", sub("'a.b', 'm', 'file:///etc/passwd'"), "22023"),
            ("javascript url", sub("'a.b', 'm', 'javascript:alert(1)'"), "22023"),
            ("url with userinfo", sub("'a.b', 'm', 'https://user:pw@example.com/'"), "22023"),
            ("not a url", sub("'a.b', 'm', 'not a url'"), "22023"),
            ("url with fragment", sub("'a.b', 'm', 'https://example.com/#x'"), "22023"),
            ("injection in handler function", sub("'a.b', 'm', p_handler_function => 'a.b; DROP TABLE x'"), "22023"),
            ("quoted handler function", sub("'a.b', 'm', p_handler_function => 'a.\"b\"()'"), "22023"),
            ("missing SQL handler", sub("'a.b', 'm', p_handler_function => 'nowhere.handler'"), "42883"),
            ("unknown handler kind", sub("'a.b', 'm', 'http://127.0.0.1/', p_handler_kind => 'smtp'"), "22023"),
            ("kind mismatching target", sub("'a.b', 'm', 'http://127.0.0.1/', p_handler_kind => 'sql'"), "22023"),
            ("headers not an object", sub("'a.b', 'm', 'http://127.0.0.1/', p_headers => '[]'"), "22023"),
            ("bad header name", sub("'a.b', 'm', 'http://127.0.0.1/', p_headers => '{\"Bad Name\": \"x\"}'"), "22023"),
            (
                "header injection",
                sub("'a.b', 'm', 'http://127.0.0.1/', p_headers => '{\"X\": \"a\\r\\nInjected: 1\"}'"),
                "22023",
            ),
            ("reserved header", sub("'a.b', 'm', 'http://127.0.0.1/', p_headers => '{\"webhook-signature\": \"x\"}'"), "22023"),
            ("non-string header", sub("'a.b', 'm', 'http://127.0.0.1/', p_headers => '{\"X\": 1}'"), "22023"),
            ("short secret", sub("'a.b', 'm', 'http://127.0.0.1/', p_secret => 'abc'"), "22023"),
            ("bad whsec secret", sub("'a.b', 'm', 'http://127.0.0.1/', p_secret => 'whsec_!!!notbase64'"), "22023"),
            ("zero timeout", sub("'a.b', 'm', 'http://127.0.0.1/', p_timeout_ms => 0"), "22023"),
            ("negative retries", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_retries => -1"), "22023"),
            ("zero backoff", sub("'a.b', 'm', 'http://127.0.0.1/', p_backoff_base_ms => 0"), "22023"),
            ("zero max_in_flight", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_in_flight => 0"), "22023"),
            ("huge max_in_flight", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_in_flight => 100000"), "22023"),
            ("zero max_per_second", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_per_second => 0"), "22023"),
            ("negative max_per_second", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_per_second => -5"), "22023"),
            ("NaN max_per_second", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_per_second => 'NaN'"), "22023"),
            ("infinite max_per_second", sub("'a.b', 'm', 'http://127.0.0.1/', p_max_per_second => 'Infinity'"), "22023"),
            ("skip an unknown delivery", "SELECT event_bus.skip_delivery(gen_random_uuid())".into(), "P0002"),
            ("skip a null delivery", "SELECT event_bus.skip_delivery(NULL)".into(), "P0002"),
            ("unknown run_as role", sub("'a.b', 'm', p_handler_function => 'public.eb_h', p_run_as => 'no_such_role'"), "42704"),
            // unsubscribe, the operations API
            ("unsubscribe unknown", "SELECT event_bus.unsubscribe(gen_random_uuid())".into(), "P0002"),
            ("list page too large", "SELECT event_bus.list_events(p_limit => 5000)".into(), "22023"),
            ("list unknown status", "SELECT event_bus.list_events(p_status => 'done')".into(), "22023"),
            ("list bad pattern", "SELECT event_bus.list_events(p_event_type => '#.#x')".into(), "22023"),
            ("detail unknown", "SELECT event_bus.event_detail(gen_random_uuid())".into(), "P0002"),
            ("retry unknown", "SELECT event_bus.retry_event(gen_random_uuid())".into(), "P0002"),
            ("retry_failed bad pattern", "SELECT event_bus.retry_failed(p_event_type => 'a..b')".into(), "22023"),
            ("replay without filter", "SELECT event_bus.replay_events()".into(), "22023"),
            ("replay bad pattern", "SELECT event_bus.replay_events(p_event_type => '*x')".into(), "22023"),
            (
                "replay to a paused subscription",
                format!("SELECT event_bus.replay_events(p_subscription_id => '{sub_id}')"),
                "P0002",
            ),
            ("purge negative age", "SELECT event_bus.purge_completed('-1 day')".into(), "22023"),
            ("purge huge batch", "SELECT event_bus.purge_completed('1 day', 1000000)".into(), "22023"),
            ("reset unknown breaker", "SELECT event_bus.reset_breaker(gen_random_uuid())".into(), "P0002"),
            ("process zero", "SELECT event_bus.process_pending_events(0)".into(), "22023"),
            ("process negative", "SELECT event_bus.process_pending_events(-5)".into(), "22023"),
        ];
        assert!(cases.len() >= 60, "{} cases", cases.len());
        let before = rows();
        let mut failures = Vec::new();
        for (what, sql, want) in &cases {
            let got = sqlstate_of(sql);
            if got.as_deref() != Some(*want) {
                failures.push(format!("{what}: {sql}\n    expected {want}, got {got:?}"));
            }
            assert_eq!(rows(), before, "{what} wrote something");
        }
        // the payload limit and the network allow-list are settings
        Spi::run("SET LOCAL event_bus.max_payload_bytes = 1000").unwrap();
        let got = sqlstate_of(&emit(&t, "'invoice.posted'", "'acc'", &big, "'{}'"));
        if got.as_deref() != Some("54000") {
            failures.push(format!("oversize payload: expected 54000, got {got:?}"));
        }
        Spi::run("SET LOCAL event_bus.allowed_networks = '10.0.0.0/8, 2001:db8::/32'").unwrap();
        for url in [
            "http://127.0.0.1:9/x",
            "http://[::1]:9/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let got = sqlstate_of(&sub(&format!("'a.b', 'm', '{url}'")));
            if got.as_deref() != Some("22023") {
                failures.push(format!(
                    "{url} outside the allowed networks: expected 22023, got {got:?}"
                ));
            }
        }
        assert_eq!(
            sqlstate_of(&sub("'a.b', 'm', 'http://10.1.2.3:8080/hook'")),
            None,
            "inside the allowed networks"
        );
        Spi::run("SET LOCAL event_bus.allowed_networks = 'not-a-network'").unwrap();
        let got = sqlstate_of(&sub("'a.b', 'm', 'http://10.1.2.3/'"));
        if got.as_deref() != Some("22023") {
            failures.push(format!(
                "invalid allowed_networks: expected 22023, got {got:?}"
            ));
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len() + 6,
            failures.join("\n")
        );
    }

    #[pg_test]
    fn security_definer_functions_pin_search_path_and_management_is_not_public() {
        // every SECURITY DEFINER function pins search_path to pg_catalog, pg_temp
        let unpinned = Spi::get_one::<String>(
            "SELECT string_agg(p.oid::regprocedure::text, ', ')
               FROM pg_proc p
              WHERE p.pronamespace = 'event_bus'::regnamespace AND p.prosecdef
                AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)",
        )
        .unwrap();
        assert_eq!(unpinned, None);
        assert!(count("SELECT count(*) FROM pg_proc WHERE pronamespace = 'event_bus'::regnamespace AND prosecdef") >= 6);

        // what a role without grants may execute: emit, publish, the tenant, pattern helpers
        Spi::run("CREATE ROLE eb_nobody NOLOGIN").unwrap();
        let executable = Spi::get_one::<String>(
            "SELECT string_agg(p.proname, ',' ORDER BY p.proname)
               FROM (SELECT DISTINCT proname, min(oid) AS oid FROM pg_proc
                      WHERE pronamespace = 'event_bus'::regnamespace AND proname NOT LIKE '\\_%' GROUP BY proname) p
              WHERE has_function_privilege('eb_nobody', p.oid, 'EXECUTE')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            executable,
            "assert_emitted,current_tenant,emit_module_event,emit_module_events,emitted_events,matches,publish_event,\
             request,try_request,uuid_v7_lower_bound"
        );
        // internal functions that change state are not callable by PUBLIC either
        for f in [
            "event_bus._rearm(uuid[])",
            "event_bus._hold(uuid)",
            "event_bus._release(uuid)",
            "event_bus._refresh_event_status(uuid[])",
            "event_bus._record_subscription_outcomes(uuid[], integer[], integer[], integer[], text[], integer)",
            "event_bus._maintenance(integer)",
            "event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid, uuid)",
            "event_bus._request_call(uuid, integer)",
            "event_bus._idempotency_gate(uuid[])",
            "event_bus._idempotency_settle(uuid[], uuid[])",
            "event_bus._worker_pool_state()",
            "event_bus._count_attempts()",
        ] {
            assert_eq!(
                Spi::get_one::<bool>(&format!("SELECT has_function_privilege('eb_nobody', '{f}', 'EXECUTE')")).unwrap(),
                Some(false),
                "{f}"
            );
        }
        // and no table is readable or writable by PUBLIC
        assert_eq!(
            count(
                "SELECT count(*) FROM pg_class c WHERE c.relnamespace = 'event_bus'::regnamespace AND c.relkind IN ('r', 'v')
                   AND (has_table_privilege('eb_nobody', c.oid, 'SELECT') OR has_table_privilege('eb_nobody', c.oid, 'INSERT')
                        OR has_table_privilege('eb_nobody', c.oid, 'UPDATE') OR has_table_privilege('eb_nobody', c.oid, 'DELETE'))"
            ),
            0
        );
    }

    #[pg_test]
    fn user_objects_on_the_search_path_cannot_hijack_the_operations_functions() {
        // a user shadows functions and operators the SECURITY DEFINER code uses, in a schema it
        // puts first on its search_path; the functions must ignore them
        Spi::run(&format!(
            "CREATE ROLE eb_attacker NOLOGIN; GRANT event_bus_operator TO eb_attacker;
             CREATE SCHEMA evil AUTHORIZATION eb_attacker;
             CREATE TABLE evil.pwned (at timestamptz);
             GRANT ALL ON evil.pwned TO PUBLIC;
             CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ INSERT INTO evil.pwned VALUES (pg_catalog.now()) RETURNING pg_catalog.now() $$;
             CREATE FUNCTION evil.current_setting(text, boolean) RETURNS text LANGUAGE sql AS $$ INSERT INTO evil.pwned VALUES (pg_catalog.now()) RETURNING NULL::text $$;
             CREATE FUNCTION evil.array_agg(uuid) RETURNS uuid[] LANGUAGE sql AS $$ SELECT NULL::uuid[] $$;
             CREATE FUNCTION evil.matches(text, text) RETURNS boolean LANGUAGE sql AS $$ INSERT INTO evil.pwned VALUES (pg_catalog.now()) RETURNING true $$;
             SET LOCAL search_path = evil, public, event_bus;
             SET LOCAL app.tenant_id = '{TENANT}';
             SET LOCAL ROLE eb_attacker;"
        ))
        .unwrap();
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'sales', 'invoice', 'I-1', '{{}}');
             SELECT event_bus.retry_failed();
             SELECT event_bus.replay_events(p_event_type => '#', p_dry_run => true);
             SELECT count(*) FROM event_bus.list_events();
             SELECT count(*) FROM event_bus.event_stats();"
        ))
        .unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count("SELECT count(*) FROM evil.pwned"), 0);
    }
}
