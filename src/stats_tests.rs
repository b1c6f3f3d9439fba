//! The Event Monitor's counts and filters at any size: event_stats from the hourly counts that
//! statement triggers keep (event_bus._event_hours), checked against the rows after every kind of
//! change; list_events by status and entity through their indexes, whatever the entity id's length.
//! Each test is one rolled-back transaction, driven by process_pending_events.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, plan_text, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    const TENANT_B: &str = "22222222-2222-2222-2222-222222222222";

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap_or_default()
    }

    fn process() {
        Spi::run("SELECT event_bus.process_pending_events(1000)").unwrap();
    }

    /// A SQL handler that fails for payloads with "fail": true and succeeds otherwise (and no
    /// operational events: the counts are the test's events alone).
    fn setup() {
        Spi::run(
            "SET LOCAL event_bus.operational_events = off;
             CREATE ROLE eb_stats_handler NOLOGIN;
             CREATE SCHEMA st;
             GRANT USAGE ON SCHEMA st TO eb_stats_handler;
             CREATE FUNCTION st.handle(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $f$
             BEGIN
                 IF (event.payload->>'fail')::boolean THEN
                     RAISE EXCEPTION 'refused' USING ERRCODE = '22012';
                 END IF;
                 RETURN '{}';
             END $f$;
             SELECT event_bus.subscribe('#', 'stats', p_handler_function => 'st.handle',
                                        p_run_as => 'eb_stats_handler', p_max_retries => 0);",
        )
        .unwrap();
    }

    fn emit(tenant: &str, event_type: &str, module: &str, entity: &str, fail: bool) -> String {
        text(&format!(
            "SELECT event_bus.emit_module_event('{tenant}', '{event_type}', '{module}', 'doc', '{entity}',
                                                jsonb_build_object('fail', {fail}))::text"
        ))
    }

    /// event_stats_by_type for the window, and the same counted from the rows, as two strings.
    fn stats_and_rows(window: &str) -> (String, String) {
        let stats = text(&format!(
            "SELECT coalesce(string_agg(concat_ws(':', source_module, event_type, pending, processing, processed,
                                                 failed, total), ',' ORDER BY source_module, event_type), '')
               FROM event_bus.event_stats_by_type('{window}')"
        ));
        let rows = text(&format!(
            "SELECT coalesce(string_agg(concat_ws(':', source_module, event_type, p, q, c, f, t), ','
                                        ORDER BY source_module, event_type), '')
               FROM (SELECT e.source_module, e.event_type,
                            count(*) FILTER (WHERE e.status = 'pending') AS p,
                            count(*) FILTER (WHERE e.status = 'processing') AS q,
                            count(*) FILTER (WHERE e.status = 'completed') AS c,
                            count(*) FILTER (WHERE e.status = 'failed') AS f, count(*) AS t
                       FROM event_bus.module_events e
                      WHERE e.created_at >= now() - interval '{window}'
                      GROUP BY 1, 2) x"
        ));
        (stats, rows)
    }

    fn assert_stats_match_rows(when: &str) {
        for window in ["24 hours", "7 days", "90 minutes"] {
            let (stats, rows) = stats_and_rows(window);
            assert_eq!(stats, rows, "{when}, window {window}");
        }
        let total = count("SELECT total FROM event_bus.event_stats('24 hours')");
        let rows =
            count("SELECT count(*) FROM event_bus.module_events WHERE created_at >= now() - interval '24 hours'");
        assert_eq!(total, rows, "{when}: event_stats total");
    }

    #[pg_test]
    fn event_stats_follow_every_change_of_the_events() {
        setup();
        // not fanned out yet: counted from the rows
        for i in 0..6 {
            emit(TENANT, "order.created", "sales", &format!("O-{i}"), i == 5);
        }
        for i in 0..3 {
            emit(
                TENANT_B,
                "invoice.posted",
                "accounting",
                &format!("I-{i}"),
                i == 0,
            );
        }
        assert_stats_match_rows("emitted");
        assert_eq!(
            text("SELECT concat_ws(',', pending, processing, processed, failed, total) FROM event_bus.event_stats()"),
            "9,0,0,0,9"
        );
        // delivered: completed and failed, counted by the triggers
        process();
        assert_stats_match_rows("delivered");
        assert_eq!(
            text("SELECT concat_ws(',', pending, processing, processed, failed, total) FROM event_bus.event_stats()"),
            "0,0,7,2,9"
        );
        assert!(count("SELECT count(*) FROM event_bus._event_hours") > 0);
        // a tenant's share
        assert_eq!(
            text(&format!(
                "SELECT concat_ws(',', processed, failed, total) FROM event_bus.event_stats(p_tenant_id => '{TENANT_B}')"
            )),
            "2,1,3"
        );
        // re-armed and delivered again (the handler now succeeds)
        Spi::run("UPDATE event_bus.module_events SET payload = '{\"fail\": false}'").unwrap();
        assert_eq!(count("SELECT event_bus.retry_failed()"), 2);
        assert_stats_match_rows("re-armed");
        process();
        assert_stats_match_rows("delivered again");
        // a request's record is fanned out when it is written, so no UPDATE counts it: counted as
        // it is written (here no responder answers, so it fails at once)
        Spi::run(&format!(
            "SELECT event_bus.try_request('stock.check', '{{}}', 100, '{TENANT}'::uuid)"
        ))
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events WHERE is_request AND status = 'failed'"),
            1
        );
        assert_stats_match_rows("a request answered by no one");
        // events of other hours (the edge of each window counted from the rows), and older than a week
        // (an id is taken when the event is emitted: moved with it)
        Spi::run(
            "UPDATE event_bus.module_events e
                SET created_at = now() - v.age, id = event_bus.uuid_v7_lower_bound(now() - v.age)
               FROM (SELECT id, (ARRAY[interval '23 hours 50 minutes', interval '24 hours 10 minutes',
                                       interval '80 minutes', interval '100 minutes', interval '8 days'])[n] AS age
                       FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM event_bus.module_events) r
                      WHERE n <= 5) v
              WHERE e.id = v.id",
        )
        .unwrap();
        assert_stats_match_rows("moved to other hours");
        // the worker's upkeep folds every hour before the last two into one row per group
        Spi::run("SELECT event_bus._maintenance(100)").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM event_bus._event_hours WHERE NOT folded AND hour < now() - interval '2 hours'"),
            0
        );
        assert_stats_match_rows("folded");
        // deleted (retention deletes finished events)
        Spi::run(
            "DELETE FROM event_bus.module_events WHERE created_at < now() - interval '1 hour'",
        )
        .unwrap();
        assert_stats_match_rows("deleted");
        // counted again from the rows: the same
        let before = stats_and_rows("7 days").0;
        Spi::run("SELECT event_bus._recount_event_hours()").unwrap();
        assert_eq!(stats_and_rows("7 days").0, before);
        // (a TRUNCATE empties them: tests/delivery.rs, where no other test waits for its lock)
        // a window that is not one
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.event_stats('-1 hour')").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.event_stats(NULL)").as_deref(),
            Some("22023")
        );
    }

    /// A reader's event_stats counts its own tenant only: the hourly counts are behind the same
    /// row-level security as the events.
    #[pg_test]
    fn a_reader_counts_only_its_own_tenant() {
        setup();
        emit(TENANT, "order.created", "sales", "O-1", false);
        emit(TENANT_B, "order.created", "sales", "O-2", false);
        emit(TENANT_B, "order.created", "sales", "O-3", true);
        process();
        Spi::run(&format!(
            "CREATE ROLE eb_stats_reader NOLOGIN IN ROLE event_bus_reader;
             SET LOCAL app.tenant_id = '{TENANT_B}'; SET LOCAL ROLE eb_stats_reader"
        ))
        .unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', processed, failed, total) FROM event_bus.event_stats('7 days')"),
            "1,1,2"
        );
        assert_eq!(count("SELECT count(*) FROM event_bus._event_hours WHERE tenant_id <> (SELECT event_bus.current_tenant())"), 0);
    }

    /// list_events by status and by entity: what the rows say, fanned out or not, for an entity id
    /// longer than a btree entry can hold.
    #[pg_test]
    fn list_events_by_status_and_entity_finds_what_the_rows_hold() {
        setup();
        let long = "L".repeat(3000);
        emit(TENANT, "order.created", "sales", "O-1", false);
        emit(TENANT, "order.created", "sales", &long, true);
        emit(TENANT, "order.created", "sales", "O-2", false);
        process();
        // not fanned out yet
        let late = emit(TENANT, "order.created", "sales", &long, false);
        for status in ["pending", "processing", "completed", "failed"] {
            assert_eq!(
                text(&format!(
                    "SELECT coalesce(string_agg(id::text, ',' ORDER BY id DESC), '')
                       FROM event_bus.list_events(p_status => '{status}')"
                )),
                text(&format!(
                    "SELECT coalesce(string_agg(id::text, ',' ORDER BY id DESC), '')
                       FROM event_bus.module_events WHERE status = '{status}'"
                )),
                "status {status}"
            );
        }
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.list_events(p_entity_id => '{long}')"
            )),
            2
        );
        assert_eq!(
            text(&format!(
                "SELECT id::text FROM event_bus.list_events(p_entity_id => '{long}', p_status => 'pending')"
            )),
            late
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.list_events(p_entity_id => '{long}', p_status => 'failed')"
            )),
            "failed"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_entity_id => 'O-2')"),
            1
        );
        // a type with a module: the fanned-out ones and the one not yet fanned out; with a module no
        // event of the type has, none (the hourly counts say so before any index is read)
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_source_module => 'sales', p_event_type => 'order.created')"),
            4
        );
        emit(TENANT, "order.created", "pos", "P-1", false);
        assert_eq!(
            text("SELECT source_module FROM event_bus.list_events(p_source_module => 'pos', p_event_type => 'order.created')"),
            "pos",
            "not fanned out yet, found all the same"
        );
        process();
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_source_module => 'pos', p_event_type => 'order.created')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_source_module => 'billing', p_event_type => 'order.created')"),
            0
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.list_events(p_tenant_id => '{TENANT_B}', p_source_module => 'sales',
                                                            p_event_type => 'order.created')"
            )),
            0
        );
    }

    /// list_events for a tenant — given, or a reader's from row-level security — finds its events
    /// fanned out or not, newest first, through the tenant index (which holds fanned-out events only:
    /// emit's INSERT writes no entry into it).
    #[pg_test]
    fn list_events_by_tenant_finds_events_fanned_out_or_not() {
        setup();
        // entries in the tenant index (pageinspect counts its leaf items; rolled-back tests before this
        // one may have left some: the change is what counts)
        Spi::run("CREATE EXTENSION IF NOT EXISTS pageinspect").unwrap();
        let entries = || {
            count(
                "SELECT coalesce(sum(live_items), 0)::bigint
                   FROM generate_series(1, (pg_relation_size('event_bus.module_events_tenant_id_idx') / 8192 - 1)::int) b,
                        LATERAL bt_page_stats('event_bus.module_events_tenant_id_idx', b)
                  WHERE type = 'l'",
            )
        };
        let before = entries();
        let a1 = emit(TENANT, "order.created", "sales", "O-1", false);
        emit(TENANT_B, "order.created", "sales", "B-1", false);
        let a2 = emit(TENANT, "order.created", "sales", "O-2", false);
        assert_eq!(entries(), before, "an emit writes no tenant index entry");
        process();
        assert_eq!(entries(), before + 3, "the fan-out writes them");
        let a3 = emit(TENANT, "order.created", "sales", "O-3", false);
        let newest_first = format!("{a3},{a2},{a1}");
        let listed = |sql: &str| {
            text(&format!(
                "SELECT coalesce(string_agg(id::text, ',' ORDER BY n), '')
                   FROM (SELECT id, row_number() OVER () AS n FROM {sql}) x"
            ))
        };
        assert_eq!(
            listed(&format!("event_bus.list_events(p_tenant_id => '{TENANT}')")),
            newest_first
        );
        assert_eq!(
            listed(&format!(
                "event_bus.list_events(p_tenant_id => '{TENANT}', p_limit => 2)"
            )),
            format!("{a3},{a2}")
        );
        assert_eq!(
            listed(&format!("event_bus.list_events(p_tenant_id => '{TENANT}', p_before => '{a3}', p_limit => 1)")),
            a2
        );
        // a reader of the tenant, no tenant given: row-level security's tenant
        Spi::run(&format!(
            "CREATE ROLE eb_tenant_reader NOLOGIN; GRANT event_bus_reader TO eb_tenant_reader;
             SET LOCAL app.tenant_id = '{TENANT}'; SET LOCAL ROLE eb_tenant_reader"
        ))
        .unwrap();
        assert_eq!(listed("event_bus.list_events()"), newest_first);
        assert_eq!(
            listed("event_bus.list_events(p_status => 'completed')"),
            format!("{a2},{a1}")
        );
        Spi::run("RESET ROLE").unwrap();
        // an admin over every tenant: all four
        assert_eq!(count("SELECT count(*) FROM event_bus.list_events()"), 4);
    }

    /// The hour an event is counted under is computed inline in the counting trigger's statement,
    /// not through the SQL function executor once per event: `_event_hour` has no SET clause (one
    /// keeps PostgreSQL from inlining a SQL function; with it, 0.30 of the 2.0 s that the record's
    /// status updates took for 100,000 deliveries went to this call). Inlined, the plan shows its
    /// body (date_bin) where the call was.
    #[pg_test]
    fn the_counting_triggers_hour_is_inlined() {
        let plan = plan_text(
            "EXPLAIN (VERBOSE, COSTS OFF)
             SELECT event_bus._event_hour(e.created_at) FROM event_bus.module_events e",
        );
        assert!(plan.contains("date_bin("), "{plan}");
        assert!(!plan.contains("_event_hour("), "{plan}");
    }

    /// A SQL function with a SET clause is never inlined: PostgreSQL runs it through the function
    /// executor on every call, microseconds each, per row when a statement calls it per row (as
    /// `_event_hour` was, until 0.13.2). So a plain SQL helper carries no SET clause (its body
    /// names pg_catalog's objects itself, and its callers pin search_path), except these: kept out
    /// of line where a caller's search_path must not reach the body, or called once per statement
    /// or batch, or only on a path few deliveries take.
    #[pg_test]
    fn no_plain_sql_helper_is_kept_from_inlining() {
        let kept = Spi::get_one::<String>(
            "SELECT coalesce(string_agg(p.proname, ', ' ORDER BY p.proname), '')
               FROM pg_catalog.pg_proc p
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
               JOIN pg_catalog.pg_language l ON l.oid = p.prolang
              WHERE n.nspname = 'event_bus' AND l.lanname = 'sql'
                AND p.proconfig IS NOT NULL AND NOT p.prosecdef
                -- (set-returning functions are called from FROM, once per statement)
                AND NOT p.proretset
                AND p.proname NOT IN (
                    -- the session's caller and role checks: their meaning must not depend on the
                    -- search_path of the query that calls them
                    '_caller', '_caller_is_admin',
                    -- once per call of the function that uses them
                    '_first_attempts_in_flight', '_operational_events_on',
                    -- once per batch (the idempotency record, the stream lock)
                    '_idempotency_settle', '_lock_streams',
                    -- per delivery of a subscription with an idempotency key only (the claim's gate)
                    '_idempotency_value')",
        )
        .unwrap()
        .unwrap_or_default();
        assert_eq!(kept, "", "SQL functions with a SET clause, never inlined");
    }
}
