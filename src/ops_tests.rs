//! SQL handlers, the operations API, the circuit breaker, retention and row-level security,
//! driven in one session by process_pending_events (each test is one rolled-back transaction).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    const TENANT_B: &str = "22222222-2222-2222-2222-222222222222";

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql).unwrap().unwrap_or_default()
    }

    fn process(limit: i32) -> i32 {
        Spi::get_one::<i32>(&format!("SELECT event_bus.process_pending_events({limit})"))
            .unwrap()
            .unwrap()
    }

    /// Make every delivery waiting for its backoff due now (now() is frozen inside the test).
    fn make_retries_due() {
        Spi::run("UPDATE event_bus.module_event_deliveries SET next_attempt_at = now() WHERE status = 'pending'")
            .unwrap();
    }

    fn emit(tenant: &str, event_type: &str, module: &str, payload: &str) -> String {
        text(&format!(
            "SELECT event_bus.emit_module_event('{tenant}', '{event_type}', '{module}', 'doc', 'D-1', '{payload}')::text"
        ))
    }

    /// A handler role, a stock table and handlers: inv.deduct (works), inv.fragile (raises while
    /// inv.flags says so), inv.record (notes the call), inv.post_journal (emits journal.created),
    /// inv.ping (emits loop.ping: a loop).
    fn setup_handlers() {
        Spi::run(
            "CREATE ROLE eb_test_handler NOLOGIN;
             CREATE SCHEMA inv;
             GRANT USAGE ON SCHEMA inv TO eb_test_handler;
             CREATE TABLE inv.stock (sku text PRIMARY KEY, qty int);
             INSERT INTO inv.stock VALUES ('A', 10);
             CREATE TABLE inv.calls (handler text, event_id uuid);
             CREATE TABLE inv.flags (name text PRIMARY KEY, fail boolean);
             INSERT INTO inv.flags VALUES ('fragile', true);
             GRANT SELECT, INSERT, UPDATE ON inv.stock, inv.calls, inv.flags TO eb_test_handler;
             CREATE FUNCTION inv.deduct(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $f$
             BEGIN
                 INSERT INTO inv.calls VALUES ('deduct', event.id);
                 UPDATE inv.stock SET qty = qty - (event.payload->>'qty')::int WHERE sku = event.payload->>'sku';
                 RETURN jsonb_build_object('deducted', (event.payload->>'qty')::int);
             END $f$;
             CREATE FUNCTION inv.fragile(event event_bus.module_events) RETURNS jsonb LANGUAGE plpgsql AS $f$
             BEGIN
                 INSERT INTO inv.calls VALUES ('fragile', event.id);
                 IF (SELECT fail FROM inv.flags WHERE name = 'fragile') THEN
                     RAISE EXCEPTION 'fragile handler refuses %', event.event_type USING ERRCODE = '22012';
                 END IF;
                 RETURN '{\"ok\": true}';
             END $f$;
             CREATE FUNCTION inv.record(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $f$
                 INSERT INTO inv.calls VALUES ('record', event.id) RETURNING jsonb_build_object('seen', event.event_type)
             $f$;
             CREATE FUNCTION inv.post_journal(event event_bus.module_events) RETURNS uuid LANGUAGE sql AS $f$
                 SELECT event_bus.emit_module_event(event.tenant_id, 'journal.created', 'accounting', 'journal',
                                                    event.entity_id, jsonb_build_object('invoice', event.id))
             $f$;
             CREATE FUNCTION inv.ping(event event_bus.module_events) RETURNS uuid LANGUAGE sql AS $f$
                 SELECT event_bus.emit_module_event(event.tenant_id, 'loop.ping', 'test', NULL, NULL, '{}')
             $f$;",
        )
        .unwrap();
    }

    fn subscribe(pattern: &str, module: &str, function: &str, extra: &str) -> String {
        text(&format!(
            "SELECT event_bus.subscribe('{pattern}', '{module}', p_handler_function => '{function}', \
             p_run_as => 'eb_test_handler' {extra})::text"
        ))
    }

    #[pg_test]
    fn retry_delivery_rearms_one_dead_delivery_and_leaves_the_events_others() {
        setup_handlers();
        subscribe(
            "invoice.posted",
            "audit",
            "inv.fragile",
            ", p_max_retries => 0",
        );
        subscribe(
            "invoice.posted",
            "archive",
            "inv.fragile",
            ", p_max_retries => 0",
        );
        let ev = emit(
            TENANT,
            "invoice.posted",
            "accounting",
            r#"{"sku": "A", "qty": 1}"#,
        );
        assert_eq!(process(100), 2);
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 2);
        let audit = text(
            "SELECT d.delivery_id::text FROM event_bus.dead_letters d WHERE d.handler_module = 'audit'",
        );
        Spi::run("UPDATE inv.flags SET fail = false").unwrap();
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT event_bus.retry_delivery('{audit}')")).unwrap(),
            Some(1)
        );
        assert_eq!(
            text("SELECT string_agg(handler_module, ',') FROM event_bus.dead_letters"),
            "archive",
            "the event's other dead delivery stays dead"
        );
        assert_eq!(process(100), 1);
        assert_eq!(
            text(&format!(
                "SELECT d.status || '/' || d.attempts FROM event_bus.module_event_deliveries d WHERE d.id = '{audit}'"
            )),
            "completed/2"
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            )),
            "failed",
            "one of its deliveries is still dead"
        );
        // not dead any more: nothing to re-arm; unknown: P0002
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT event_bus.retry_delivery('{audit}')")).unwrap(),
            Some(0)
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.retry_delivery('00000000-0000-0000-0000-000000000001')")
                .as_deref(),
            Some("P0002")
        );
    }

    #[pg_test]
    fn a_failing_sql_handler_rolls_back_alone_is_retried_then_dead_and_retry_rearms_only_it() {
        setup_handlers();
        subscribe("invoice.posted", "inventory", "inv.deduct", "");
        subscribe(
            "invoice.posted",
            "audit",
            "inv.fragile",
            ", p_max_retries => 1",
        );
        let ev = emit(
            TENANT,
            "invoice.posted",
            "accounting",
            r#"{"sku": "A", "qty": 3}"#,
        );

        assert_eq!(process(100), 2);
        // the good handler's work is kept, the failing one's rolled back
        assert_eq!(
            count("SELECT qty::bigint FROM inv.stock WHERE sku = 'A'"),
            7
        );
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'deduct'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'fragile'"),
            0
        );
        assert_eq!(
            text("SELECT response::text FROM event_bus.module_event_logs WHERE status = 'success'"),
            r#"{"deducted": 3}"#
        );
        let err =
            text("SELECT error_message FROM event_bus.module_event_logs WHERE status = 'failed'");
        assert!(
            err.contains("fragile handler refuses invoice.posted")
                && err.contains("SQLSTATE 22012"),
            "{err}"
        );

        // the retry fails too: dead, and the event is failed; the deduction is not repeated
        make_retries_due();
        assert_eq!(process(100), 1);
        assert_eq!(
            text(
                "SELECT d.status || '/' || d.attempts FROM event_bus.module_event_deliveries d
                    JOIN event_bus.module_event_subscriptions s ON s.id = d.subscription_id
                   WHERE s.handler_module = 'audit'"
            ),
            "failed/2"
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            )),
            "failed"
        );
        assert_eq!(
            count("SELECT qty::bigint FROM inv.stock WHERE sku = 'A'"),
            7
        );
        assert_eq!(
            text("SELECT handler_module || ':' || attempts || ':' || (last_error LIKE '%fragile%') FROM event_bus.dead_letters"),
            "audit:2:true"
        );
        make_retries_due();
        assert_eq!(process(100), 0, "a dead delivery is not attempted again");

        // retry re-arms only the dead delivery, with a fresh budget
        Spi::run("UPDATE inv.flags SET fail = false").unwrap();
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT event_bus.retry_event('{ev}')")).unwrap(),
            Some(1)
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            )),
            "processing"
        );
        assert_eq!(process(100), 1);
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'deduct'"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'fragile'"),
            1
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            )),
            "completed"
        );
        assert_eq!(
            text("SELECT string_agg(attempt || l.status, ',' ORDER BY attempt) FROM event_bus.module_event_logs l
                    JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
                   WHERE s.handler_module = 'audit'"),
            "1failed,2failed,3success"
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 0);
        // retrying an event with nothing dead re-arms nothing
        assert_eq!(
            Spi::get_one::<i32>(&format!("SELECT event_bus.retry_event('{ev}')")).unwrap(),
            Some(0)
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.retry_event('00000000-0000-0000-0000-000000000001')")
                .as_deref(),
            Some("P0002")
        );
    }

    #[pg_test]
    fn a_sql_handler_is_stopped_at_its_timeout_and_the_next_one_runs() {
        setup_handlers();
        Spi::run(
            "CREATE FUNCTION inv.slow(event event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $f$
                 INSERT INTO inv.calls VALUES ('slow', event.id);
                 SELECT pg_sleep(5);
                 SELECT '{}'::jsonb $f$;",
        )
        .unwrap();
        subscribe(
            "work.slow",
            "slowpoke",
            "inv.slow",
            ", p_timeout_ms => 200, p_max_retries => 0",
        );
        subscribe("work.#", "quick", "inv.record", "");
        emit(TENANT, "work.slow", "test", "{}");
        let started = std::time::Instant::now();
        assert_eq!(process(100), 2);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
        let err =
            text("SELECT error_message FROM event_bus.module_event_logs WHERE status = 'failed'");
        assert!(err.contains("inv.slow timed out after 200 ms"), "{err}");
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'slow'"),
            0,
            "rolled back"
        );
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'record'"),
            1
        );
        // no cancel left pending for the caller
        assert_eq!(
            count("SELECT count(*) FROM pg_class WHERE relname = 'pg_class'"),
            1
        );
    }

    #[pg_test]
    fn handlers_that_emit_record_the_chain_and_a_loop_stops_at_the_depth_limit() {
        setup_handlers();
        subscribe("invoice.posted", "accounting", "inv.post_journal", "");
        subscribe("journal.created", "reporting", "inv.record", "");
        let ev = text(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'sales', 'invoice', 'I-9', '{{}}', \
             '{{\"correlation_id\": \"corr-1\"}}')::text"
        ));
        assert_eq!(process(100), 1);
        assert_eq!(process(100), 1);
        let meta = text(
            "SELECT concat_ws('|', metadata->>'causation_id', metadata->>'correlation_id', metadata->>'depth', entity_id)
               FROM event_bus.module_events WHERE event_type = 'journal.created'",
        );
        assert_eq!(meta, format!("{ev}|corr-1|1|I-9"));
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'record'"),
            1
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM event_bus.module_events WHERE id = '{ev}'"
            )),
            "completed"
        );
        // the handler's chain settings ended with it
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT nullif(current_setting('event_bus.causation_id', true), '')"
            )
            .unwrap(),
            None
        );

        // a handler answering its own event type: stopped at the depth limit with a clear error
        Spi::run("SET LOCAL event_bus.max_chain_depth = 3").unwrap();
        subscribe("loop.ping", "test", "inv.ping", ", p_max_retries => 0");
        emit(TENANT, "loop.ping", "test", "{}");
        for _ in 0..8 {
            process(100);
        }
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events WHERE event_type = 'loop.ping'"),
            4
        );
        assert_eq!(
            count("SELECT max((metadata->>'depth')::int)::bigint FROM event_bus.module_events WHERE event_type = 'loop.ping'"),
            3
        );
        let err =
            text("SELECT error_message FROM event_bus.module_event_logs WHERE status = 'failed'");
        assert!(
            err.contains("event chain too deep") && err.contains("SQLSTATE 54000"),
            "{err}"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'failed'"),
            1
        );
    }

    #[pg_test]
    fn list_detail_stats_replay_and_backfill_on_real_data() {
        setup_handlers();
        let sub = subscribe("invoice.*", "reporting", "inv.record", "");
        for _ in 0..3 {
            emit(TENANT, "invoice.posted", "accounting", "{}");
        }
        for _ in 0..2 {
            emit(TENANT, "order.created", "sales", "{}");
        }
        emit(TENANT_B, "invoice.posted", "accounting", "{}");
        emit(TENANT_B, "order.created", "sales", "{}");
        assert_eq!(process(100), 4);

        let n = |args: &str| {
            count(&format!(
                "SELECT count(*) FROM event_bus.list_events({args})"
            ))
        };
        assert_eq!(n(""), 7);
        assert_eq!(n(&format!("p_tenant_id => '{TENANT}'")), 5);
        assert_eq!(n("p_source_module => 'sales'"), 3);
        assert_eq!(n("p_event_type => 'invoice.*'"), 4);
        assert_eq!(n("p_event_type => '#.created'"), 3);
        assert_eq!(n("p_status => 'completed'"), 7);
        assert_eq!(
            n("p_from => now() - interval '1 minute', p_to => now() + interval '1 minute'"),
            7
        );
        assert_eq!(n("p_from => now() + interval '1 minute'"), 0);
        // keyset pages: newest first, no overlap, together everything
        let page1 = text("SELECT string_agg(id::text, ',' ORDER BY id DESC) FROM event_bus.list_events(p_limit => 3)");
        let last = page1.split(',').last().unwrap().to_string();
        let page2 = text(&format!(
            "SELECT string_agg(id::text, ',') FROM event_bus.list_events(p_before => '{last}', p_limit => 10)"
        ));
        assert_eq!(page1.split(',').count() + page2.split(',').count(), 7);
        let all =
            text("SELECT string_agg(id::text, ',' ORDER BY id DESC) FROM event_bus.module_events");
        assert_eq!(format!("{page1},{page2}"), all);
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.list_events(p_limit => 0)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.list_events(p_status => 'done')").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.list_events(p_event_type => 'a..b')").as_deref(),
            Some("22023")
        );

        // detail: the event, its deliveries, its attempts
        let first = text("SELECT id::text FROM event_bus.module_events WHERE event_type = 'invoice.posted' ORDER BY id LIMIT 1");
        let detail = text(&format!(
            "SELECT concat_ws('|', d->'event'->>'event_type', jsonb_array_length(d->'deliveries'),
                    d->'deliveries'->0->>'handler_module', d->'deliveries'->0->>'status',
                    jsonb_array_length(d->'logs'), d->'logs'->0->>'status', d->'logs'->0->'response'->>'seen')
               FROM event_bus.event_detail('{first}') d"
        ));
        assert_eq!(
            detail,
            "invoice.posted|1|reporting|completed|1|success|invoice.posted"
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.event_detail('00000000-0000-0000-0000-000000000001')")
                .as_deref(),
            Some("P0002")
        );

        // stats over the window, total and per module / type
        assert_eq!(
            text("SELECT concat_ws(',', pending, processing, processed, failed, total) FROM event_bus.event_stats()"),
            "0,0,7,0,7"
        );
        assert_eq!(
            count(&format!(
                "SELECT total FROM event_bus.event_stats(p_tenant_id => '{TENANT_B}')"
            )),
            2
        );
        assert_eq!(
            text("SELECT string_agg(source_module || ':' || event_type || '=' || total, ',') FROM event_bus.event_stats_by_type()"),
            "accounting:invoice.posted=4,sales:order.created=3"
        );

        // replay: the dry run's count is what is then re-delivered
        let dry = count(
            "SELECT event_bus.replay_events(p_event_type => 'invoice.posted', p_dry_run => true)",
        );
        assert_eq!(dry, 4);
        assert_eq!(
            count("SELECT count(*) FROM inv.calls"),
            4,
            "a dry run changes nothing"
        );
        assert_eq!(
            count("SELECT event_bus.replay_events(p_event_type => 'invoice.posted')"),
            dry
        );
        assert_eq!(count("SELECT event_bus.replay_events(p_event_type => 'invoice.posted', p_dry_run => true)"), 0,
                   "deliveries under way are not replayed twice");
        assert_eq!(process(100) as i64, dry);
        assert_eq!(count("SELECT count(*) FROM inv.calls"), 8);
        // the replayed delivery keeps its webhook-id and counts attempts on
        assert_eq!(
            count("SELECT max(attempts)::bigint FROM event_bus.module_event_deliveries"),
            2
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.replay_events()").as_deref(),
            Some("22023")
        );

        // backfill: a subscription created after the events gets the old ones it matches
        let late = subscribe("order.*", "analytics", "inv.record", "");
        assert_eq!(
            count(&format!(
                "SELECT event_bus.replay_events(p_subscription_id => '{late}', p_dry_run => true)"
            )),
            3
        );
        assert_eq!(
            count(&format!("SELECT event_bus.replay_events(p_subscription_id => '{late}', p_tenant_id => '{TENANT}')")),
            2
        );
        assert_eq!(process(100), 2);
        assert_eq!(
            count(&format!("SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{late}' AND status = 'completed'")),
            2
        );
        let _ = sub;

        // metrics: Prometheus text with the counters the worker's bookkeeping advanced
        let metrics = text("SELECT event_bus.metrics()");
        assert!(
            metrics.contains("event_bus_events_dispatched_total 7\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("event_bus_attempts_total{result=\"success\"} 10\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("event_bus_deliveries_due 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("# TYPE event_bus_oldest_due_seconds gauge\n"),
            "{metrics}"
        );
    }

    /// The upkeep releases a hold that raced with its breaker closing, and only those: the held
    /// deliveries of a subscription whose breaker is still open stay held (they are found through
    /// the held index by subscription, so a failing subscription's hundred thousand held
    /// deliveries are not read once a second).
    #[pg_test]
    fn the_upkeep_releases_the_held_deliveries_of_closed_breakers_only() {
        setup_handlers();
        let open = subscribe("hold.*", "open", "inv.record", "");
        let closed = subscribe("hold.*", "closed", "inv.record", "");
        for _ in 0..3 {
            emit(TENANT, "hold.made", "pos", "{}");
        }
        Spi::run(&format!(
            "INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, next_attempt_at)
             SELECT event_bus._delivery_id(e.id, s.id), e.id, s.id, e.tenant_id, 'held', 0, now()
               FROM event_bus.module_events e, event_bus.module_event_subscriptions s
              WHERE e.event_type = 'hold.made';
             UPDATE event_bus.module_events SET dispatched_at = now() WHERE event_type = 'hold.made';
             UPDATE event_bus.module_event_subscriptions SET breaker_open_until = now() + interval '1 hour'
              WHERE id = '{open}';
             SELECT event_bus._maintenance(100);"
        ))
        .unwrap();
        let of = |sub: &str, status: &str| {
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries
                  WHERE subscription_id = '{sub}' AND status = '{status}'"
            ))
        };
        assert_eq!((of(&open, "held"), of(&open, "pending")), (3, 0));
        assert_eq!((of(&closed, "held"), of(&closed, "pending")), (0, 3));
    }

    #[pg_test]
    fn the_circuit_breaker_opens_holds_probes_and_closes() {
        setup_handlers();
        let sub = subscribe("pay.*", "payments", "inv.fragile", "");
        Spi::run(&format!("UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 3 WHERE id = '{sub}'"))
            .unwrap();
        for _ in 0..5 {
            emit(TENANT, "pay.made", "pos", "{}");
        }
        assert_eq!(process(100), 5);
        let health = || {
            text(&format!(
                "SELECT breaker_state || '/' || consecutive_failures || '/' || attempts_1h || '/' || failures_1h
                   FROM event_bus.subscription_health WHERE subscription_id = '{sub}'"
            ))
        };
        assert_eq!(health(), "open/5/5/5");
        let held = |status: &str| {
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = '{status}'"
            ))
        };
        assert_eq!(
            (held("held"), held("pending")),
            (4, 1),
            "one probe, the rest held"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries d, event_bus.module_event_subscriptions s
                  WHERE s.id = '{sub}' AND d.status = 'pending' AND d.next_attempt_at = s.breaker_open_until"
            )),
            1,
            "the probe waits for the cool-down"
        );
        // new events to an open breaker are held, not sent
        emit(TENANT, "pay.made", "pos", "{}");
        assert_eq!(process(100), 0);
        assert_eq!(held("held"), 5);
        assert!(text("SELECT event_bus.metrics()")
            .contains("event_bus_subscriptions{breaker=\"open\"} 1\n"));

        // the endpoint recovers; the cool-down ends: the probe succeeds, the breaker closes, all flows
        Spi::run(&format!(
            "UPDATE inv.flags SET fail = false;
             UPDATE event_bus.module_event_subscriptions SET breaker_open_until = now() WHERE id = '{sub}';
             UPDATE event_bus.module_event_deliveries SET next_attempt_at = now() WHERE status = 'pending';"
        ))
        .unwrap();
        assert_eq!(process(100), 1, "only the probe");
        assert!(health().starts_with("closed/0/"), "{}", health());
        assert_eq!(held("held"), 0);
        assert_eq!(process(100), 5);
        assert_eq!(held("completed"), 6);

        // open again, then reset by hand
        Spi::run("UPDATE inv.flags SET fail = true").unwrap();
        for _ in 0..3 {
            emit(TENANT, "pay.made", "pos", "{}");
        }
        assert_eq!(process(100), 3);
        assert!(health().starts_with("open/3/"), "{}", health());
        assert_eq!(
            count(&format!("SELECT event_bus.reset_breaker('{sub}')::bigint")),
            2
        );
        assert!(health().starts_with("closed/0/"), "{}", health());
        assert_eq!(
            sqlstate_of("SELECT event_bus.reset_breaker('00000000-0000-0000-0000-000000000001')")
                .as_deref(),
            Some("P0002")
        );
    }

    #[pg_test]
    fn retention_deletes_only_old_finished_events_with_their_deliveries_and_logs() {
        // events from ten days ago: one completed (with a delivery and a log), one dead, one pending
        Spi::run(&format!(
            "INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, status, created_at, processed_at, dispatched_at)
             SELECT event_bus.uuid_v7_lower_bound(now() - interval '10 days' + n * interval '1 ms'), '{TENANT}', 'old.event', 'test',
                    s, now() - interval '10 days', CASE WHEN s <> 'pending' THEN now() - interval '10 days' END, now() - interval '10 days'
               FROM (VALUES (1, 'completed'), (2, 'failed'), (3, 'pending')) v(n, s);
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts)
             SELECT gen_random_uuid(), id, gen_random_uuid(), tenant_id, status, 1 FROM event_bus.module_events;
             INSERT INTO event_bus.module_event_logs (event_id, tenant_id, attempt, status)
             SELECT id, tenant_id, 1, 'success' FROM event_bus.module_events;"
        ))
        .unwrap();
        emit(TENANT, "new.event", "test", "{}");
        assert_eq!(process(100), 0); // nothing subscribes: completed at once
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'"),
            2
        );

        assert_eq!(count("SELECT event_bus.purge_completed('7 days')"), 1);
        assert_eq!(
            text("SELECT string_agg(event_type || ':' || status, ',' ORDER BY id) FROM event_bus.module_events"),
            "old.event:failed,old.event:pending,new.event:completed"
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_deliveries"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_event_logs"), 2);
        assert!(text("SELECT event_bus.metrics()").contains("event_bus_events_purged_total 1\n"));
        assert_eq!(count("SELECT event_bus.purge_completed('7 days')"), 0);
        assert_eq!(
            sqlstate_of("SELECT event_bus.purge_completed(NULL)").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.purge_completed('1 day', 0)").as_deref(),
            Some("22023")
        );
    }

    /// process_pending_events is granted to event_bus_admin: a member that is not a superuser runs
    /// the whole pipeline (fan-out, ordered streams, idempotency keys, dead deliveries and their
    /// operational events, the breaker) without a privilege error.
    #[pg_test]
    fn process_pending_events_runs_for_an_admin_that_is_not_a_superuser() {
        setup_handlers();
        subscribe(
            "order.*",
            "ordered",
            "inv.record",
            ", p_ordered => true, p_idempotency_key => 'payload.doc'",
        );
        subscribe("order.*", "audit", "inv.fragile", ", p_max_retries => 0");
        Spi::run("UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 1 WHERE handler_module = 'audit'").unwrap();
        Spi::run("CREATE ROLE eb_console_admin NOLOGIN; GRANT event_bus_admin TO eb_console_admin")
            .unwrap();
        Spi::run(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'order.created', 'sales', 'order', 'O-1', '{{\"doc\": \"D-1\"}}')"
        ))
        .unwrap();
        Spi::run("SET LOCAL ROLE eb_console_admin").unwrap();
        assert_eq!(process(100), 2);
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM inv.calls WHERE handler = 'record'"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 1);
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions WHERE breaker_open_until IS NOT NULL"),
            1
        );
    }

    /// What the Event Monitor reads and does (0.7.0): the queue summary, the timeline, the new
    /// list_events filters, causation children, dry runs, one-event replay, pause / resume.
    #[pg_test]
    fn console_functions_summarise_filter_and_repair_within_the_tenant() {
        Spi::run("SET LOCAL event_bus.operational_events = off").unwrap();
        setup_handlers();
        let fragile = subscribe("order.*", "audit", "inv.fragile", ", p_max_retries => 0");
        subscribe("invoice.posted", "accounting", "inv.post_journal", "");
        let shared = subscribe("journal.created", "reporting", "inv.record", "");
        let mine = subscribe(
            "order.*",
            "mine",
            "inv.record",
            &format!(", p_tenant_id => '{TENANT}'"),
        );
        let o1 = emit(TENANT, "order.created", "sales", "{}");
        let o2 = emit(TENANT_B, "order.created", "sales", "{}");
        let inv = text(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'sales', 'invoice', 'I-7', '{{}}', \
             '{{\"correlation_id\": \"corr-7\"}}')::text"
        ));
        // before any delivery: three not yet fanned out
        assert_eq!(
            count("SELECT undispatched FROM event_bus.queue_summary()"),
            3
        );
        for _ in 0..3 {
            process(100);
        }
        // o1 and o2 dead at the fragile handler; the invoice caused a journal event
        assert_eq!(
            count("SELECT dead_letters FROM event_bus.queue_summary()"),
            2
        );
        assert_eq!(count("SELECT undispatched + due + held + waiting + parked_streams + open_breakers FROM event_bus.queue_summary()"), 0);
        let journal = text(
            "SELECT id::text FROM event_bus.module_events WHERE event_type = 'journal.created'",
        );
        assert_eq!(
            text(&format!("SELECT string_agg(c->>'id', ',') FROM jsonb_array_elements(event_bus.event_detail('{inv}')->'children') c")),
            journal
        );
        assert_eq!(
            count(&format!("SELECT jsonb_array_length(event_bus.event_detail('{journal}')->'children')::bigint")),
            0
        );
        // list_events: entity and correlation (the journal event inherits both)
        assert_eq!(
            text("SELECT string_agg(id::text, ',' ORDER BY id) FROM event_bus.list_events(p_correlation_id => 'corr-7')"),
            format!("{inv},{journal}")
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_entity_type => 'invoice', p_entity_id => 'I-7')"),
            1
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.list_events(p_entity_id => 'nope')"),
            0
        );
        // the timeline: buckets in order, every attempt counted once
        assert_eq!(
            count("SELECT count(*) FROM event_bus.delivery_timeline('1 hour', 12)"),
            12
        );
        assert_eq!(
            count("SELECT sum(succeeded + failed)::bigint FROM event_bus.delivery_timeline('1 hour', 12)"),
            count("SELECT count(*) FROM event_bus.module_event_logs")
        );
        assert_eq!(
            count("SELECT sum(failed)::bigint FROM event_bus.delivery_timeline()"),
            2
        );
        for bad in [
            "'0 seconds', 12",
            "'1 hour', 0",
            "'1 hour', 5000",
            "'400 days', 10",
        ] {
            assert_eq!(
                sqlstate_of(&format!("SELECT * FROM event_bus.delivery_timeline({bad})"))
                    .as_deref(),
                Some("22023"),
                "{bad}"
            );
        }
        // dry runs change nothing
        assert_eq!(
            count("SELECT event_bus.retry_failed(p_dry_run => true)::bigint"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 2);
        // replay of one event to one subscription
        assert_eq!(
            count(&format!(
                "SELECT event_bus.replay_events(p_event_id => '{inv}', p_dry_run => true)"
            )),
            1
        );
        assert_eq!(count(&format!("SELECT event_bus.replay_events(p_event_id => '{o1}', p_subscription_id => '{mine}')")), 1);
        assert_eq!(
            count(&format!("SELECT count(*) FROM event_bus.module_event_deliveries WHERE event_id = '{o1}' AND status = 'pending'")),
            1
        );

        // as an operator of TENANT: its own subscription pauses and resumes; a shared one is not its to pause
        Spi::run("CREATE ROLE eb_console_op NOLOGIN; GRANT event_bus_operator TO eb_console_op")
            .unwrap();
        Spi::run(&format!(
            "SET LOCAL app.tenant_id = '{TENANT}'; SET LOCAL ROLE eb_console_op"
        ))
        .unwrap();
        assert_eq!(
            count("SELECT dead_letters FROM event_bus.queue_summary()"),
            1,
            "its tenant's only"
        );
        assert_eq!(
            count("SELECT event_bus.retry_failed(p_dry_run => true)::bigint"),
            1
        );
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT event_bus.set_subscription_active('{mine}', false)"
            ))
            .unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT event_bus.set_subscription_active('{mine}', false)"
            ))
            .unwrap(),
            Some(false),
            "already paused: no change"
        );
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.set_subscription_active('{shared}', false)"
            ))
            .as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.set_subscription_active('00000000-0000-0000-0000-000000000001', true)").as_deref(),
            Some("P0002")
        );
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.set_subscription_active('{mine}', NULL)"
            ))
            .as_deref(),
            Some("22004")
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.subscription_targets()").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.replay_events(p_event_id => '{o2}')"
            ))
            .as_deref(),
            None,
            "another tenant's event: nothing to replay, no error"
        );
        assert_eq!(
            count(&format!(
                "SELECT event_bus.replay_events(p_event_id => '{o2}')"
            )),
            0
        );
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT is_active FROM event_bus.module_event_subscriptions WHERE id = '{mine}'"
            ))
            .unwrap(),
            Some(false)
        );
        assert_eq!(
            Spi::get_one::<bool>(&format!(
                "SELECT is_active FROM event_bus.module_event_subscriptions WHERE id = '{shared}'"
            ))
            .unwrap(),
            Some(true)
        );
        // admins see targets, never whole secrets
        assert_eq!(
            text(&format!("SELECT target FROM event_bus.subscription_targets() WHERE subscription_id = '{fragile}'")),
            "inv.fragile"
        );
        // the timeline's minutes: the upkeep folds a finished minute into one row (sums kept) and
        // forgets those older than 32 days
        Spi::run(&format!(
            "INSERT INTO event_bus._attempt_minutes (tenant_id, minute, succeeded, failed) VALUES
                 ('{TENANT}', date_trunc('minute', now()) - interval '10 minutes', 2, 1),
                 ('{TENANT}', date_trunc('minute', now()) - interval '10 minutes', 3, 0),
                 ('{TENANT}', now() - interval '40 days', 5, 5)"
        ))
        .unwrap();
        Spi::run("SELECT event_bus._maintenance()").unwrap();
        let ten = "minute = date_trunc('minute', now()) - interval '10 minutes'";
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus._attempt_minutes WHERE {ten}"
            )),
            1
        );
        assert_eq!(
            count(&format!("SELECT (sum(succeeded) * 10 + sum(failed))::bigint FROM event_bus._attempt_minutes WHERE {ten} AND folded")),
            51
        );
        assert_eq!(count("SELECT count(*) FROM event_bus._attempt_minutes WHERE minute < now() - interval '32 days'"), 0);
        assert_eq!(count("SELECT sum(succeeded + failed)::bigint FROM event_bus.delivery_timeline('1 hour', 6)"), count("SELECT count(*) FROM event_bus.module_event_logs") + 6);
    }

    #[pg_test]
    fn tenants_see_retry_and_replay_only_their_own_events() {
        // (the dead deliveries below would be reported as event_bus.delivery.failed events, which
        // the '#' subscription receives: not what this test counts)
        Spi::run("SET LOCAL event_bus.operational_events = off").unwrap();
        setup_handlers();
        subscribe("#", "audit", "inv.fragile", ", p_max_retries => 0");
        Spi::run(&format!(
            "SELECT event_bus.subscribe('invoice.*', 'accounting', 'http://127.0.0.1:9/hook', p_secret => 'topsecret-signing-key',
                                        p_tenant_id => '{TENANT}', p_headers => '{{\"Authorization\": \"Bearer t\"}}')"
        ))
        .unwrap();
        let a1 = emit(TENANT, "order.created", "sales", "{}");
        emit(TENANT, "order.created", "sales", "{}");
        let b1 = emit(TENANT_B, "order.created", "sales", "{}");
        assert_eq!(process(100), 3);
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 3);
        Spi::run(
            "CREATE ROLE eb_tenant_user NOLOGIN; GRANT event_bus_operator TO eb_tenant_user;
             CREATE ROLE eb_plain_user NOLOGIN;
             CREATE ROLE eb_admin_user NOLOGIN; GRANT event_bus_admin TO eb_admin_user;",
        )
        .unwrap();

        Spi::run(&format!(
            "SET LOCAL app.tenant_id = '{TENANT}'; SET LOCAL ROLE eb_tenant_user"
        ))
        .unwrap();
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 2);
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_deliveries"),
            2
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_event_logs"), 2);
        assert_eq!(count("SELECT count(*) FROM event_bus.list_events()"), 2);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.list_events(p_tenant_id => '{TENANT_B}')"
            )),
            0
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.dead_letters"), 2);
        assert_eq!(count("SELECT total FROM event_bus.event_stats()"), 2);
        assert_eq!(
            sqlstate_of(&format!("SELECT event_bus.event_detail('{b1}')")).as_deref(),
            Some("P0002")
        );
        // subscriptions: which modules listen, never their secrets, URLs or headers
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions"),
            2
        );
        for column in ["secret", "handler_url", "headers"] {
            assert_eq!(
                sqlstate_of(&format!(
                    "SELECT {column} FROM event_bus.module_event_subscriptions"
                ))
                .as_deref(),
                Some("42501"),
                "{column}"
            );
        }
        // repairs stay inside the tenant
        assert_eq!(
            sqlstate_of(&format!("SELECT event_bus.retry_event('{b1}')")).as_deref(),
            Some("P0002")
        );
        assert_eq!(
            count(&format!("SELECT event_bus.retry_event('{a1}')::bigint")),
            1
        );
        assert_eq!(count("SELECT event_bus.retry_failed()::bigint"), 1);
        assert_eq!(
            count("SELECT event_bus.replay_events(p_event_type => '#', p_dry_run => true)"),
            0
        );
        assert_eq!(
            count(&format!(
                "SELECT event_bus.replay_events(p_tenant_id => '{TENANT_B}', p_dry_run => true)"
            )),
            0
        );
        // emitting: for its own tenant only, through any entry point
        assert_eq!(
            sqlstate_of(&format!("SELECT {}", emit_call(TENANT_B))).as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of(&format!(
                "SELECT event_bus.publish_event('x.y', 'doc', '1', '{{}}', '{{}}', '{TENANT_B}')"
            ))
            .as_deref(),
            Some("42501")
        );
        assert_eq!(sqlstate_of(&format!("SELECT {}", emit_call(TENANT))), None);
        // publish_event without an organization takes the session's tenant (design document 001)
        let published = Spi::get_one::<String>(
            "SELECT event_bus.publish_event('x.y', 'doc', '2', '{}', '{}')::text",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            Spi::get_one_with_args::<String>(
                "SELECT tenant_id::text FROM event_bus.module_events WHERE id = $1::uuid",
                &[published.as_str().into()],
            )
            .unwrap()
            .as_deref(),
            Some(TENANT)
        );
        // no management, no writes, no metrics
        for sql in [
            "SELECT event_bus.subscribe('#', 'x', 'http://127.0.0.1:9/')",
            "INSERT INTO event_bus.module_event_subscriptions (event_type, handler_module, handler_kind, handler_url) VALUES ('#', 'x', 'http', 'http://127.0.0.1:9/')",
            "UPDATE event_bus.module_event_subscriptions SET is_active = false",
            "UPDATE event_bus.module_event_deliveries SET status = 'completed'",
            "DELETE FROM event_bus.module_events",
            "SELECT event_bus.metrics()",
            "SELECT event_bus.purge_completed('1 day')",
        ] {
            assert_eq!(sqlstate_of(sql).as_deref(), Some("42501"), "{sql}");
        }
        // without a tenant in the session a tenant role sees and repairs nothing
        Spi::run("SET LOCAL app.tenant_id = ''").unwrap();
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 0);
        assert_eq!(
            sqlstate_of("SELECT event_bus.retry_failed()").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of(&format!("SELECT {}", emit_call(TENANT))).as_deref(),
            Some("42501")
        );

        // a role outside the event_bus roles reads nothing
        Spi::run("RESET ROLE; SET LOCAL ROLE eb_plain_user").unwrap();
        assert_eq!(
            sqlstate_of("SELECT count(*) FROM event_bus.module_events").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.list_events()").as_deref(),
            Some("42501")
        );
        assert_eq!(
            sqlstate_of("SELECT event_bus.unsubscribe(gen_random_uuid())").as_deref(),
            Some("42501")
        );

        // the admin role sees every tenant, secrets included, and can repair any
        Spi::run("RESET ROLE; SET LOCAL ROLE eb_admin_user").unwrap();
        // (the tenant user's two emits above included)
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 5);
        assert_eq!(
            text("SELECT string_agg(secret, ',') FROM event_bus.module_event_subscriptions"),
            "topsecret-signing-key"
        );
        assert_eq!(
            count(&format!("SELECT event_bus.retry_event('{b1}')::bigint")),
            1
        );
        Spi::run("RESET ROLE").unwrap();
    }

    fn emit_call(tenant: &str) -> String {
        format!("event_bus.emit_module_event('{tenant}', 'x.y', 'sales', 'doc', 'D-1', '{{}}')")
    }

    /// The operational event of a failed delivery was event_bus.delivery.dead before 0.11.0 (0.11.0
    /// subscribed the old name to the new one): from 0.12.0 a subscription to the old name is refused
    /// with the new name in the message, and nothing is written.
    #[pg_test]
    fn subscribing_to_the_old_name_of_a_failed_delivery_event_is_refused_with_the_new_name() {
        setup_handlers();
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE q; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$",
        )
        .unwrap();
        let error = Spi::get_one::<String>(
            "SELECT pg_temp.error_of($q$SELECT event_bus.subscribe('event_bus.delivery.dead', 'ops',
                 p_handler_function => 'inv.fragile', p_run_as => 'eb_test_handler')$q$)",
        )
        .unwrap();
        assert_eq!(
            error.as_deref(),
            Some("22023: event_bus: event_bus.delivery.dead was renamed event_bus.delivery.failed in 0.11.0")
        );
        assert_eq!(
            count("SELECT count(*) FROM event_bus.module_event_subscriptions"),
            0
        );
    }

    #[pg_test]
    fn operational_events_report_failed_deliveries_breakers_and_parked_streams_without_loops() {
        setup_handlers();
        // a subscription to the bus's own events that fails too: its dead deliveries of
        // event_bus.* events must not produce more of them
        let watcher = subscribe("event_bus.#", "ops", "inv.fragile", ", p_max_retries => 0");
        let dead_sub = subscribe("pay.*", "payments", "inv.fragile", ", p_max_retries => 0");
        let ev = emit(TENANT, "pay.made", "pos", r#"{"n": 1}"#);
        assert_eq!(process(100), 1);
        let op = |t: &str| {
            count(&format!(
                "SELECT count(*) FROM event_bus.module_events WHERE event_type = '{t}'"
            ))
        };
        assert_eq!(op("event_bus.delivery.failed"), 1);
        assert_eq!(
            text(&format!(
                "SELECT concat_ws('|', tenant_id, source_module, payload->>'event_id', payload->>'subscription_id',
                                  payload->>'attempts', payload->>'last_error' LIKE 'fragile handler refuses%',
                                  metadata->>'causation_id')
                   FROM event_bus.module_events WHERE event_type = 'event_bus.delivery.failed'"
            )),
            format!("{TENANT}|event_bus|{ev}|{dead_sub}|1|t|{ev}")
        );
        // the watcher gets it, fails, and its dead delivery is not reported again
        assert_eq!(process(100), 1);
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{watcher}' AND status = 'failed'"
            )),
            1
        );
        assert_eq!(op("event_bus.delivery.failed"), 1, "no loop");
        assert_eq!(process(100), 0);

        // breaker: opened when it opens, closed by reset_breaker (once each)
        let flaky = subscribe("ship.*", "shipping", "inv.fragile", "");
        Spi::run(&format!("UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 2 WHERE id = '{flaky}'"))
            .unwrap();
        for _ in 0..3 {
            emit(TENANT, "ship.sent", "wms", "{}");
        }
        assert_eq!(process(100), 3);
        assert_eq!(op("event_bus.breaker.opened"), 1);
        assert_eq!(
            text("SELECT concat_ws('|', entity_type, payload->>'handler_module', payload->>'consecutive_failures')
                    FROM event_bus.module_events WHERE event_type = 'event_bus.breaker.opened'"),
            "subscription|shipping|3"
        );
        assert_eq!(op("event_bus.breaker.closed"), 0);
        Spi::run(&format!("SELECT event_bus.reset_breaker('{flaky}')")).unwrap();
        assert_eq!(op("event_bus.breaker.closed"), 1);
        Spi::run(&format!("SELECT event_bus.reset_breaker('{flaky}')")).unwrap();
        assert_eq!(
            op("event_bus.breaker.closed"),
            1,
            "an already closed breaker does not close again"
        );

        // an ordered stream parked behind a dead delivery
        Spi::run(&format!(
            "SELECT event_bus.subscribe('stock.*', 'inventory', p_handler_function => 'inv.fragile',
                                        p_run_as => 'eb_test_handler', p_max_retries => 0, p_ordered => true)"
        ))
        .unwrap();
        emit(TENANT, "stock.moved", "wms", "{}");
        emit(TENANT, "stock.moved", "wms", "{}");
        process(100);
        assert_eq!(op("event_bus.stream.parked"), 1);
        assert_eq!(
            text("SELECT concat_ws('|', entity_type, entity_id, payload->>'waiting') FROM event_bus.module_events
                   WHERE event_type = 'event_bus.stream.parked'"),
            "doc|D-1|1"
        );

        // switched off: nothing
        Spi::run("SET LOCAL event_bus.operational_events = off").unwrap();
        emit(TENANT, "pay.made", "pos", "{}");
        let before = op("event_bus.delivery.failed");
        process(100);
        assert_eq!(op("event_bus.delivery.failed"), before);
    }
}
