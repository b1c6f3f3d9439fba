//! SQL-surface tests: each runs inside one transaction that is rolled back.
//! Delivery, LISTEN and crash behaviour need committed data: see `tests/`.

use pgrx::prelude::*;

#[pg_schema]
pub mod tests {
    use pgrx::prelude::*;

    pub const TENANT: &str = "11111111-1111-1111-1111-111111111111";

    /// Runs `sql` in a subtransaction and returns the SQLSTATE it raised (None if it succeeded).
    pub fn sqlstate_of(sql: &str) -> Option<String> {
        if Spi::get_one::<bool>("SELECT to_regproc('pg_temp.sqlstate_of') IS NULL").unwrap()
            == Some(true)
        {
            Spi::run(
                "CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
                 BEGIN EXECUTE q; RETURN NULL; EXCEPTION WHEN OTHERS OR assert_failure THEN RETURN SQLSTATE; END $f$",
            )
            .unwrap();
        }
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()]).unwrap()
    }

    pub fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    /// The lines of the plan an EXPLAIN statement prints, joined with newlines.
    pub fn plan_text(explain: &str) -> String {
        Spi::connect_mut(|c| {
            let mut out = String::new();
            for row in c.update(explain, None, &[])? {
                out.push_str(&row.get::<String>(1)?.unwrap_or_default());
                out.push('\n');
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap()
    }

    fn emit_sql(event_type: &str, payload: &str) -> String {
        format!(
            "SELECT event_bus.emit_module_event('{TENANT}', {event_type}, 'accounting', 'invoice', \
             gen_random_uuid(), {payload})"
        )
    }

    #[pg_test]
    fn emit_writes_one_row_with_every_field() {
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', \
             'aaaaaaaa-0000-0000-0000-000000000001'::uuid, '{{\"invoice_number\":\"INV-001\",\"total\":1500}}', \
             '{{\"correlation_id\":\"c-1\"}}')"
        ))
        .unwrap()
        .unwrap();
        let id_text = id.to_string();
        // UUIDv7: version nibble 7
        assert_eq!(&id_text[14..15], "7", "{id_text}");
        let row = Spi::get_one::<String>(&format!(
            "SELECT concat_ws('|', tenant_id, event_type, source_module, entity_type, entity_id, \
             payload->>'invoice_number', metadata->>'correlation_id', status, retry_count, max_retries, \
             dispatched_at IS NULL) FROM event_bus.module_events WHERE id = '{id_text}'"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            row,
            format!(
                "{TENANT}|invoice.posted|accounting|invoice|aaaaaaaa-0000-0000-0000-000000000001|INV-001|c-1|pending|0|3|t"
            )
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1);
    }

    #[pg_test]
    fn emit_ids_are_time_ordered() {
        let ordered = Spi::get_one::<bool>(&format!(
            "WITH e AS (SELECT n, event_bus.emit_module_event('{TENANT}', 'a.b', 'm', NULL, NULL::text, '{{}}') AS id
                          FROM generate_series(1, 200) n)
             SELECT bool_and(id > prev) FROM (SELECT id, lag(id) OVER (ORDER BY n) AS prev FROM e) s WHERE prev IS NOT NULL"
        ))
        .unwrap()
        .unwrap();
        assert!(ordered);
    }

    #[pg_test]
    fn emit_limits_the_payload_by_its_text_size_and_stores_both_entity_id_forms() {
        // the limit is on the payload as text (octet_length(payload::text)), also when the binary
        // form is far smaller: 300 control characters are 300 bytes stored, 1,800 as text
        Spi::run("SET LOCAL event_bus.max_payload_bytes = 1000").unwrap();
        let escaped = "jsonb_build_object('s', repeat(chr(1), 300))";
        let emit = |payload: &str, entity: &str| {
            format!("SELECT event_bus.emit_module_event('{TENANT}', 'a.b', 'm', 'doc', {entity}, {payload})")
        };
        assert_eq!(sqlstate_of(&emit(escaped, "'1'")).as_deref(), Some("54000"));
        // at the limit exactly: accepted ({"s": "<n x>"} is n + 9 bytes)
        assert_eq!(
            sqlstate_of(&emit("jsonb_build_object('s', repeat('x', 991))", "'3'")),
            None
        );
        assert_eq!(
            sqlstate_of(&emit("jsonb_build_object('s', repeat('x', 992))", "'4'")).as_deref(),
            Some("54000")
        );
        // the uuid overload stores the id's text form; NULL metadata is stored as {}
        let u = "0190f7a0-0000-7000-8000-000000000001";
        assert_eq!(sqlstate_of(&emit("'{}'", &format!("'{u}'::uuid"))), None);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_events
                  WHERE entity_id IN ('3', '{u}') AND metadata = '{{}}' AND payload ? 's' = (entity_id = '3')"
            )),
            2
        );
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'a.b', 'm', NULL, NULL::text, '{{}}', NULL)"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_events
                  WHERE id = '{id}' AND metadata = '{{}}' AND status = 'pending' AND dispatched_at IS NULL
                    AND created_at = now() AND entity_id IS NULL"
            )),
            1
        );
    }

    #[pg_test]
    fn emit_module_events_writes_a_batch_in_input_order() {
        let ids = count(&format!(
            "SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'invoice.posted', 'accounting', 'invoice',
                 (SELECT array_agg(g::text ORDER BY g) FROM generate_series(1, 1000) g),
                 (SELECT array_agg(jsonb_build_object('n', g) ORDER BY g) FROM generate_series(1, 1000) g),
                 '{{\"batch\": \"b1\"}}')"
        ));
        assert_eq!(ids, 1000);
        // each row got its own entity id and payload, in order, with the shared metadata
        assert_eq!(
            count(
                "SELECT count(*) FROM (SELECT entity_id, payload, metadata, row_number() OVER (ORDER BY id) AS r
                                         FROM event_bus.module_events) e
                  WHERE e.entity_id = e.r::text AND (e.payload->>'n')::bigint = e.r
                    AND e.metadata->>'batch' = 'b1' AND e.r <= 1000"
            ),
            1000
        );
        // without entity ids, and an empty batch emits nothing
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'a.b', 'm', NULL, NULL, ARRAY['{{}}'::jsonb, '{{}}'])"
            )),
            2
        );
        assert_eq!(
            count(&format!("SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'a.b', 'm', NULL, NULL, '{{}}')")),
            0
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events WHERE entity_id IS NULL"),
            2
        );
        // a session bound to another tenant may not emit a batch for this one
        assert_eq!(sqlstate_of("SELECT 1"), None);
        Spi::run("CREATE ROLE eb_batch_reader NOLOGIN IN ROLE event_bus_reader").unwrap();
        Spi::run("SET LOCAL ROLE eb_batch_reader").unwrap();
        Spi::run("SET LOCAL app.tenant_id = '22222222-2222-2222-2222-222222222222'").unwrap();
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'a.b', 'm', NULL, NULL, ARRAY['{{}}'::jsonb])"
            ))
            .as_deref(),
            Some("42501")
        );
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1002);
    }

    #[pg_test]
    fn emit_rejects_bad_input_with_sqlstate_and_writes_nothing() {
        Spi::run("SET LOCAL event_bus.max_payload_bytes = 100").unwrap();
        let big = format!("jsonb_build_object('x', repeat('a', 200))");
        let cases: Vec<(String, &str)> = vec![
            (
                format!("SELECT event_bus.emit_module_event(NULL, 'invoice.posted', 'accounting', 'invoice', NULL::text, '{{}}')"),
                "22004",
            ),
            (emit_sql("NULL", "'{}'"), "22004"),
            (emit_sql("''", "'{}'"), "22023"),
            (emit_sql("'invoice..posted'", "'{}'"), "22023"),
            (emit_sql("'invoice.*'", "'{}'"), "22023"),
            (emit_sql("'invoice posted'", "'{}'"), "22023"),
            (emit_sql("'inv''; drop table x; --'", "'{}'"), "22023"),
            (emit_sql(&format!("'{}'", "a".repeat(256)), "'{}'"), "22023"),
            (emit_sql("'invoice.posted'", "'[1,2]'"), "22023"),
            (emit_sql("'invoice.posted'", "'\"text\"'"), "22023"),
            (emit_sql("'invoice.posted'", "'null'"), "22023"),
            (emit_sql("'invoice.posted'", "NULL"), "22023"),
            (emit_sql("'invoice.posted'", &big), "54000"),
            (
                format!("SELECT event_bus.emit_module_event('{TENANT}', 'a.b', '', NULL, NULL::text, '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT event_bus.emit_module_event('{TENANT}', 'a.b', 'm', NULL, NULL::text, '{{}}', '[1]')"),
                "22023",
            ),
            (
                format!("SELECT event_bus.publish_event('a.b', 'lead', 'x', '{{}}', '{{}}', NULL)"),
                "22004",
            ),
        ];
        for (sql, want) in &cases {
            assert_eq!(sqlstate_of(sql).as_deref(), Some(*want), "{sql}");
        }
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 0);
        // the limit itself is accepted
        Spi::run("SET LOCAL event_bus.max_payload_bytes = 1048576").unwrap();
        assert_eq!(sqlstate_of(&emit_sql("'invoice.posted'", &big)), None);
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1);
    }

    #[pg_test]
    fn rejection_message_has_a_hint() {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.err_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
             DECLARE m text; h text;
             BEGIN EXECUTE q; RETURN NULL;
             EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
                  RETURN m || ' / ' || h; END $f$",
        )
        .unwrap();
        let msg = Spi::get_one::<String>(&format!(
            "SELECT pg_temp.err_of($q${}$q$)",
            emit_sql("'invoice..posted'", "'{}'")
        ))
        .unwrap()
        .unwrap();
        assert!(msg.contains("segment 2 is empty"), "{msg}");
        assert!(
            msg.contains("invoice.posted"),
            "hint names an example: {msg}"
        );
    }

    #[pg_test]
    fn emit_from_a_table_trigger_in_the_same_transaction() {
        Spi::run(
            "CREATE TABLE public.invoices (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id uuid NOT NULL,
                                           number text NOT NULL, total numeric NOT NULL, status text NOT NULL DEFAULT 'draft');
             CREATE FUNCTION public.invoices_emit_posted() RETURNS trigger LANGUAGE plpgsql AS $f$
             BEGIN
               IF NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted' THEN
                 PERFORM event_bus.emit_module_event(NEW.tenant_id, 'invoice.posted', 'accounting', 'invoice', NEW.id,
                         jsonb_build_object('invoice_number', NEW.number, 'total', NEW.total));
               END IF;
               RETURN NEW;
             END $f$;
             CREATE TRIGGER invoices_posted AFTER UPDATE ON public.invoices FOR EACH ROW
               EXECUTE FUNCTION public.invoices_emit_posted();",
        )
        .unwrap();
        Spi::run(&format!(
            "INSERT INTO public.invoices (tenant_id, number, total) VALUES ('{TENANT}', 'INV-1', 10), ('{TENANT}', 'INV-2', 20);
             UPDATE public.invoices SET status = 'posted' WHERE number = 'INV-1';
             UPDATE public.invoices SET total = 11 WHERE number = 'INV-1';"
        ))
        .unwrap();
        assert_eq!(
            count(
                "SELECT count(*) FROM event_bus.module_events e JOIN public.invoices i ON i.id::text = e.entity_id
                  WHERE e.event_type = 'invoice.posted' AND e.payload->>'invoice_number' = 'INV-1'
                    AND (e.payload->>'total')::numeric = 10"
            ),
            1
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1);
    }

    #[pg_test]
    fn a_role_without_table_privileges_can_emit_but_not_read() {
        assert_eq!(sqlstate_of("SELECT 1"), None); // creates the helper as the superuser
        Spi::run(
            "CREATE ROLE event_bus_test_app NOLOGIN;
             SET LOCAL ROLE event_bus_test_app;",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of(&emit_sql("'pos.transaction_completed'", "'{\"total\": 5}'")),
            None
        );
        assert_eq!(
            sqlstate_of("SELECT count(*) FROM event_bus.module_events").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("INSERT INTO event_bus.module_events (tenant_id, event_type, source_module) VALUES (gen_random_uuid(), 'a', 'b')")
                .as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.subscribe('a.b', 'x', 'https://example.com/h')")
                .as_deref(),
            Some("42501")
        );
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events WHERE event_type = 'pos.transaction_completed'"), 1);
    }

    #[pg_test]
    fn emit_pins_search_path_against_hijacking() {
        // a malicious jsonb_typeof in a schema first on the search_path must not be called
        Spi::run(
            "CREATE SCHEMA evil;
             CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql AS $f$ SELECT 'object' $f$;
             CREATE FUNCTION evil.octet_length(text) RETURNS integer LANGUAGE sql AS $f$ SELECT 0 $f$;
             SET LOCAL search_path = evil, public, pg_catalog;",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of(&emit_sql("'a.b'", "'[1]'")).as_deref(),
            Some("22023")
        );
        let prosecdef = count(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'event_bus' AND p.prosecdef
                AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
        );
        assert_eq!(
            prosecdef, 0,
            "every SECURITY DEFINER function pins search_path"
        );
    }

    #[pg_test]
    fn publish_event_maps_the_old_signature() {
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT event_bus.publish_event('lead.created', 'lead', 'L-1', '{{\"lead_id\":\"L-1\"}}',
                                            '{{\"source\":\"web_form\"}}', '{TENANT}')"
        ))
        .unwrap()
        .unwrap();
        let src = Spi::get_one::<String>(&format!(
            "SELECT concat_ws('|', e.tenant_id, e.event_type, e.source_module, e.entity_type, e.entity_id, e.payload->>'lead_id', e.metadata->>'source')
               FROM event_bus.module_events e WHERE e.id = '{id}'"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            src,
            format!("{TENANT}|lead.created|lead|lead|L-1|L-1|web_form")
        );
        let id = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT event_bus.publish_event('lead.created', 'lead', 'L-2', p_metadata => '{{\"source_module\":\"crm\"}}',
                                            p_organization_id => '{TENANT}')"
        ))
        .unwrap()
        .unwrap();
        let module = Spi::get_one::<String>(&format!(
            "SELECT source_module FROM event_bus.module_events WHERE id = '{id}'"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(module, "crm");
    }

    #[pg_test]
    fn matches_in_sql() {
        let cases = [
            ("invoice.posted", "invoice.posted", true),
            ("invoice.*", "invoice.posted", true),
            ("invoice.*", "invoice.line.added", false),
            ("invoice.#", "invoice", true),
            ("#", "pos.transaction_completed", true),
            ("*.completed", "production.completed", true),
            ("inv*", "invoice", false),
        ];
        for (p, t, want) in cases {
            let got = Spi::get_one_with_args::<bool>(
                "SELECT event_bus.matches($1, $2)",
                &[p.into(), t.into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(got, want, "{p} {t}");
        }
        assert_eq!(
            Spi::get_one::<bool>("SELECT event_bus.matches(NULL, 'a')").unwrap(),
            None
        );
    }

    #[pg_test]
    fn subscribe_validates_and_detects_the_handler_kind() {
        Spi::run(
            "CREATE SCHEMA inventory;
             CREATE FUNCTION inventory.deduct_stock(event event_bus.module_events) RETURNS jsonb
               LANGUAGE sql AS $f$ SELECT jsonb_build_object('ok', true) $f$;",
        )
        .unwrap();
        let kind = |sql: &str| -> String {
            let id = Spi::get_one::<pgrx::Uuid>(sql).unwrap().unwrap();
            Spi::get_one::<String>(&format!(
                "SELECT handler_kind || ':' || coalesce(handler_url, handler_function)
                   FROM event_bus.module_event_subscriptions WHERE id = '{id}'"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(
            kind("SELECT event_bus.subscribe('invoice.posted', 'accounting', 'https://example.com/hook')"),
            "http:https://example.com/hook"
        );
        assert_eq!(
            kind("SELECT event_bus.subscribe('invoice.posted', 'inventory', p_handler_function => 'inventory.deduct_stock')"),
            "sql:inventory.deduct_stock"
        );
        assert_eq!(
            kind("SELECT event_bus.subscribe('sales_order.confirmed', 'inventory', p_handler_function => 'process-module-event')"),
            "edge_function:process-module-event"
        );
        let bad: &[(&str, &str)] = &[
            ("SELECT event_bus.subscribe('inv*.posted', 'm', 'https://example.com/')", "22023"),
            ("SELECT event_bus.subscribe('a..b', 'm', 'https://example.com/')", "22023"),
            ("SELECT event_bus.subscribe(NULL, 'm', 'https://example.com/')", "22004"),
            ("SELECT event_bus.subscribe('a.b', '', 'https://example.com/')", "22004"),
            ("SELECT event_bus.subscribe('a.b', 'm')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', 'fn')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'ftp://example.com/')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://u:p@example.com/')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'not a url')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', p_handler_function => 'nope.missing')", "42883"),
            ("SELECT event_bus.subscribe('a.b', 'm', p_handler_function => 'x; drop table y')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_headers => '[1]')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_headers => '{\"X\": \"a\\r\\nb\"}')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_headers => '{\"webhook-id\": \"x\"}')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_secret => 'short')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_secret => 'whsec_!!!')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_timeout_ms => 0)", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_max_retries => -1)", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_handler_kind => 'sql')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_handler_kind => 'smtp')", "22023"),
            ("SELECT event_bus.subscribe('a.b', 'm', p_handler_function => 'inventory.deduct_stock', p_run_as => 'no_such_role')", "42704"),
        ];
        for (sql, want) in bad {
            assert_eq!(sqlstate_of(sql).as_deref(), Some(*want), "{sql}");
        }
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions"),
            3
        );
        // a direct INSERT cannot bypass the pattern rule either
        assert_eq!(
            sqlstate_of(
                "INSERT INTO event_bus.module_event_subscriptions (event_type, handler_module, handler_kind, handler_url)
                 VALUES ('a.#x', 'm', 'http', 'https://example.com/')"
            )
            .as_deref(),
            Some("23514")
        );
        // a good secret is accepted
        assert_eq!(
            sqlstate_of(
                "SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/', p_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')"
            ),
            None
        );
    }

    #[pg_test]
    fn the_lifecycle_views_list_every_state_the_table_allows_and_name_real_functions() {
        // delivery_states: exactly the states module_event_deliveries.status may hold
        let missing_or_extra = count(
            r"WITH allowed AS (
                 SELECT m[1] AS state
                   FROM pg_constraint c,
                        regexp_matches(pg_get_constraintdef(c.oid), '''([a-z]+)''', 'g') AS m
                  WHERE c.conname = 'module_event_deliveries_status_check')
             SELECT count(*) FROM (
                 (SELECT state FROM allowed EXCEPT SELECT state FROM event_bus.delivery_states)
                 UNION ALL
                 (SELECT state FROM event_bus.delivery_states EXCEPT SELECT state FROM allowed)) x",
        );
        assert_eq!(missing_or_extra, 0);
        assert_eq!(count("SELECT count(*) FROM event_bus.delivery_states"), 7);
        // finished = not one of the unfinished states
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(state, ',' ORDER BY state) FROM event_bus.delivery_states WHERE NOT finished"
            )
            .unwrap()
            .as_deref(),
            Some("held,pending,processing,waiting")
        );
        // every state a transition names is a state; every function it names exists
        assert_eq!(
            count(
                "SELECT count(*) FROM event_bus.delivery_transitions t,
                        unnest(t.from_states || t.to_states) AS s(state)
                  WHERE s.state NOT IN (SELECT state FROM event_bus.delivery_states)"
            ),
            0
        );
        assert_eq!(
            count(
                r"SELECT count(*) FROM event_bus.delivery_transitions t,
                         regexp_matches(t.via, 'event_bus\.[a-z_]+', 'g') AS f
                   WHERE to_regproc(f[1]) IS NULL"
            ),
            0
        );
        assert!(
            count(r"SELECT count(*) FROM event_bus.delivery_transitions WHERE via ~ 'event_bus\.'")
                >= 8
        );
        // the rules are constants the planner folds: a statement naming one still uses the
        // partial index keyed on the same states (here the ordered streams' index)
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        Spi::run("SET LOCAL enable_bitmapscan = off").unwrap();
        let plan: Vec<String> = Spi::connect(|c| {
            c.select(
                "EXPLAIN (FORMAT TEXT) SELECT 1 FROM event_bus.module_event_deliveries w
                  WHERE w.ordering_key IS NOT NULL
                    AND w.status = ANY (event_bus._stream_blocking_states()) AND w.status = 'waiting'",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect()
        });
        let plan = plan.join("\n");
        assert!(
            plan.contains("module_event_deliveries_stream_idx"),
            "the stream index is not used: {plan}"
        );
        // the state a new or re-armed delivery starts in: held while the breaker is open
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT event_bus._first_state(false, false) || ',' || event_bus._first_state(false, true)
                     || ',' || event_bus._first_state(true, false) || ',' || event_bus._due_state(false)
                     || ',' || event_bus._due_state(true)"
            )
            .unwrap()
            .as_deref(),
            Some("processing,pending,held,pending,held")
        );
    }

    #[pg_test]
    fn unsubscribe_removes_unfinished_deliveries_and_rederives_status() {
        let sub = Spi::get_one::<pgrx::Uuid>(
            "SELECT event_bus.subscribe('a.b', 'm', 'https://example.com/')",
        )
        .unwrap()
        .unwrap();
        let done = Spi::get_one::<pgrx::Uuid>(
            "SELECT event_bus.subscribe('a.b', 'n', 'https://example.com/n')",
        )
        .unwrap()
        .unwrap();
        let ev = Spi::get_one::<pgrx::Uuid>(&emit_sql("'a.b'", "'{}'"))
            .unwrap()
            .unwrap();
        Spi::run(&format!(
            "UPDATE event_bus.module_events SET dispatched_at = now(), status = 'processing' WHERE id = '{ev}';
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
             VALUES (event_bus._delivery_id('{ev}', '{sub}'), '{ev}', '{sub}', '{TENANT}', 'pending', 1),
                    (event_bus._delivery_id('{ev}', '{done}'), '{ev}', '{done}', '{TENANT}', 'completed', 1);"
        ))
        .unwrap();
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT event_bus.unsubscribe('{sub}')")).unwrap(),
            Some(true)
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_deliveries"),
            1
        );
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            ))
            .unwrap()
            .unwrap(),
            "completed"
        );
        assert_eq!(
            sqlstate_of(&format!("SELECT event_bus.unsubscribe('{sub}')")).as_deref(),
            Some("P0002")
        );
        // a record of the other delivery running beside the DELETE could have written the status
        // without seeing it (as if here): the upkeep derives it again, once the DELETE is old enough
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus._deleted_subscriptions WHERE id = '{sub}' AND event_ids = ARRAY['{ev}'::uuid]"
            )),
            1
        );
        Spi::run(&format!(
            "UPDATE event_bus.module_events SET status = 'processing' WHERE id = '{ev}'"
        ))
        .unwrap();
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus._refresh_after_deletes('1 hour')").unwrap(),
            Some(0)
        );
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus._refresh_after_deletes('0 seconds')").unwrap(),
            Some(1)
        );
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            ))
            .unwrap()
            .unwrap(),
            "completed"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus._deleted_subscriptions WHERE cardinality(event_ids) > 0"),
            0
        );
        // an ordered subscription's deliveries waiting in their stream go with it too
        let ordered = Spi::get_one::<pgrx::Uuid>(
            "SELECT event_bus.subscribe('a.b', 'o', 'https://example.com/o', p_ordered => true)",
        )
        .unwrap()
        .unwrap();
        Spi::run(&format!(
            "INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts, ordering_key)
             VALUES (event_bus._delivery_id('{ev}', '{ordered}'), '{ev}', '{ordered}', '{TENANT}', 'waiting', 0, '[\"x\", \"1\"]')"
        ))
        .unwrap();
        Spi::run(&format!("SELECT event_bus.unsubscribe('{ordered}')")).unwrap();
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{ordered}'"
            )),
            0
        );

        // a fan-out that read the subscription before the DELETE committed adds deliveries for it
        // afterwards (as if here): nothing claims them; the worker's sweep removes them, and the
        // event's status is derived again
        let ev2 = Spi::get_one::<pgrx::Uuid>(&emit_sql("'a.b'", "'{}'"))
            .unwrap()
            .unwrap();
        Spi::run(&format!(
            "UPDATE event_bus.module_events SET dispatched_at = now(), status = 'processing' WHERE id = '{ev2}';
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts, ordering_key)
             VALUES (event_bus._delivery_id('{ev2}', '{sub}'), '{ev2}', '{sub}', '{TENANT}', 'pending', 0, NULL),
                    (event_bus._delivery_id('{ev2}', '{ordered}'), '{ev2}', '{ordered}', '{TENANT}', 'waiting', 0, '[\"x\", \"2\"]');"
        ))
        .unwrap();
        // not before the fan-out could still be running
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus._sweep_deleted_subscriptions('30 seconds')")
                .unwrap(),
            Some(0)
        );
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus._sweep_deleted_subscriptions('0 seconds')")
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE event_id = '{ev2}'"
            )),
            0
        );
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev2}'"
            ))
            .unwrap()
            .unwrap(),
            "completed"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus._deleted_subscriptions"),
            0
        );
        // a live subscription is never swept, whatever its id was once
        let live = Spi::get_one::<pgrx::Uuid>(
            "SELECT event_bus.subscribe('a.b', 'l', 'https://example.com/l')",
        )
        .unwrap()
        .unwrap();
        Spi::run(&format!(
            "INSERT INTO event_bus._deleted_subscriptions (id, deleted_at) VALUES ('{live}', now() - interval '1 hour');
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
             VALUES (event_bus._delivery_id('{ev2}', '{live}'), '{ev2}', '{live}', '{TENANT}', 'pending', 0);"
        ))
        .unwrap();
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus._sweep_deleted_subscriptions('0 seconds')")
                .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn event_status_is_derived_from_deliveries() {
        let ev = Spi::get_one::<pgrx::Uuid>(&emit_sql("'a.b'", "'{}'"))
            .unwrap()
            .unwrap();
        let status = |deliveries: &str| -> String {
            Spi::run(&format!(
                "DELETE FROM event_bus.module_event_deliveries;
                 UPDATE event_bus.module_events SET dispatched_at = now(), status = 'pending', processed_at = NULL,
                        error_message = NULL, retry_count = 0 WHERE id = '{ev}';
                 INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts, last_error)
                 SELECT gen_random_uuid(), '{ev}', gen_random_uuid(), '{TENANT}', s, a, e FROM (VALUES {deliveries}) v(s, a, e);
                 SELECT event_bus._refresh_event_status(ARRAY['{ev}'::uuid]);"
            ))
            .unwrap();
            Spi::get_one::<String>(&format!(
                "SELECT concat_ws('|', status, retry_count, error_message, processed_at IS NOT NULL)
                   FROM event_bus.module_events WHERE id = '{ev}'"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(status("('pending', 0, NULL)"), "pending|0|f");
        assert_eq!(status("('pending', 2, 'HTTP 500')"), "processing|2|f");
        assert_eq!(
            status("('completed', 1, NULL), ('completed', 3, NULL)"),
            "completed|2|t"
        );
        assert_eq!(
            status("('completed', 1, NULL), ('failed', 4, 'HTTP 503')"),
            "failed|4|HTTP 503|t"
        );
        assert_eq!(
            status("('processing', 1, NULL), ('failed', 4, 'x')"),
            "processing|4|x|f"
        );
    }

    /// The record refreshes a batch's events by index, not by reading every event: measured before
    /// the fix, 26 ms (a sequential scan and a hash of module_events) for 227 events at 20,000.
    #[pg_test]
    fn event_status_refresh_reads_only_the_batchs_events() {
        Spi::run(&format!(
            "INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, dispatched_at, status)
             SELECT event_bus._uuid_v7(), '{TENANT}', 'a.b', 'm', now(), 'completed' FROM generate_series(1, 20000);
             CREATE TEMP TABLE batch AS
                 SELECT e.id, gen_random_uuid() AS sub FROM event_bus.module_events e ORDER BY e.id DESC LIMIT 227;
             UPDATE event_bus.module_events e SET status = 'pending', processed_at = NULL
               FROM batch b WHERE e.id = b.id;
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
             SELECT event_bus._delivery_id(b.id, b.sub), b.id, b.sub, '{TENANT}', 'completed', 1 FROM batch b;
             ANALYZE event_bus.module_events;
             ANALYZE event_bus.module_event_deliveries;"
        ))
        .unwrap();
        let seq_scans = || {
            Spi::get_one::<i64>(
                "SELECT seq_scan FROM pg_catalog.pg_stat_xact_user_tables
                  WHERE relid = 'event_bus.module_events'::regclass",
            )
            .unwrap()
            .unwrap_or(0)
        };
        let before = seq_scans();
        let updated = Spi::get_one::<i32>(
            "SELECT event_bus._refresh_event_status(array_agg(b.id)) FROM pg_temp.batch b",
        )
        .unwrap();
        assert_eq!(updated, Some(227));
        assert_eq!(
            seq_scans(),
            before,
            "_refresh_event_status read all of module_events"
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM event_bus.module_events e JOIN pg_temp.batch b ON b.id = e.id
                  WHERE e.status = 'completed' AND e.processed_at IS NOT NULL"
            )
            .unwrap(),
            Some(227)
        );
    }

    #[pg_test]
    fn process_pending_events_delivers_in_the_calling_session() {
        Spi::run(
            "CREATE ROLE event_bus_test_handler NOLOGIN;
             CREATE TABLE public.seen (event_id uuid, qty int);
             GRANT INSERT ON public.seen TO event_bus_test_handler;
             CREATE SCHEMA inv; GRANT USAGE ON SCHEMA inv TO event_bus_test_handler;
             CREATE FUNCTION inv.on_posted(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $f$
                 INSERT INTO public.seen VALUES (event.id, (event.payload->>'qty')::int) RETURNING jsonb_build_object('ok', true) $f$;
             SELECT event_bus.subscribe('invoice.*', 'inventory', p_handler_function => 'inv.on_posted',
                                        p_run_as => 'event_bus_test_handler');
             -- nothing listens on port 9 of 127.0.0.1: a refused connection, recorded as a failed attempt
             SELECT event_bus.subscribe('invoice.posted', 'accounting', 'http://127.0.0.1:9/hook', p_timeout_ms => 2000);",
        )
        .unwrap();
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', 'I-1', '{{\"qty\": 2}}');
             SELECT event_bus.emit_module_event('{TENANT}', 'invoice.voided', 'accounting', 'invoice', 'I-2', '{{\"qty\": 5}}');
             SELECT event_bus.emit_module_event('{TENANT}', 'order.created', 'sales', 'order', 'O-1', '{{}}');"
        ))
        .unwrap();
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus.process_pending_events()").unwrap(),
            Some(3)
        );
        // the round's plan settings do not leak into the caller's transaction
        assert_eq!(
            Spi::get_one::<String>("SELECT current_setting('enable_bitmapscan')").unwrap(),
            Some("on".to_string())
        );
        assert_eq!(count("SELECT count(*) FROM public.seen"), 2);
        assert_eq!(count("SELECT sum(qty)::bigint FROM public.seen"), 7);
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success' AND response = '{\"ok\": true}'"),
            2
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'failed' AND http_status IS NULL AND error_message ILIKE '%refused%'"),
            1
        );
        let statuses = Spi::get_one::<String>(
            "SELECT string_agg(event_type || '=' || status, ',' ORDER BY event_type) FROM event_bus.module_events",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            statuses,
            "invoice.posted=processing,invoice.voided=completed,order.created=completed"
        );
        // nothing due now: the failed delivery waits for its backoff
        assert_eq!(
            Spi::get_one::<i32>("SELECT event_bus.process_pending_events(10)").unwrap(),
            Some(0)
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.process_pending_events(0)").as_deref(),
            Some("22023")
        );
    }
}
