//! Who may make a SQL handler run as which role (sql/api.sql, event_bus._run_as_refusal), checked
//! where a subscription is written and again where its handler runs: subscribe, UPDATE and INSERT
//! by hand, run_handlers and request-reply. The worker's side, end to end: tests/security.rs.

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

    /// An admin that is not a superuser (eb_sec_adm, who may become eb_sec_handler and nothing
    /// else), a superuser role, a role nobody was granted, and handlers: sec.record (owned by the
    /// superuser running the tests), sec.private (not executable by PUBLIC) and sec.promote, what an
    /// attacker would want run as a superuser.
    fn roles_and_handlers() {
        Spi::run(
            "CREATE ROLE eb_sec_adm NOLOGIN NOSUPERUSER IN ROLE event_bus_admin;
             CREATE ROLE eb_sec_super NOLOGIN SUPERUSER;
             CREATE ROLE eb_sec_handler NOLOGIN;
             CREATE ROLE eb_sec_other NOLOGIN;
             GRANT eb_sec_handler TO eb_sec_adm;
             CREATE SCHEMA sec;
             GRANT USAGE ON SCHEMA sec TO PUBLIC;
             CREATE FUNCTION sec.record(e event_bus.module_events) RETURNS jsonb LANGUAGE sql
                 AS $$ SELECT jsonb_build_object('as', current_user) $$;
             CREATE FUNCTION sec.private(e event_bus.module_events) RETURNS jsonb LANGUAGE sql
                 AS $$ SELECT '{}'::jsonb $$;
             REVOKE EXECUTE ON FUNCTION sec.private(event_bus.module_events) FROM PUBLIC;
             CREATE FUNCTION sec.promote(e event_bus.module_events) RETURNS void LANGUAGE sql
                 AS $$ ALTER ROLE eb_sec_adm SUPERUSER $$;",
        )
        .unwrap();
    }

    fn subscribe(function: &str, run_as: &str, extra: &str) -> String {
        format!(
            "SELECT event_bus.subscribe('sec.*', 'sec', p_handler_function => '{function}', \
             p_run_as => {run_as}{extra})"
        )
    }

    fn subscriptions() -> i64 {
        count("SELECT count(*) FROM event_bus.module_event_subscriptions")
    }

    #[pg_test]
    fn an_admin_cannot_make_a_handler_run_as_a_role_it_may_not_become() {
        roles_and_handlers();
        Spi::run("SET LOCAL ROLE eb_sec_adm").unwrap();
        // the escalation: a superuser, named by subscribe, by INSERT, or by the function's owner
        for sql in [
            subscribe("sec.promote", "'eb_sec_super'", ""),
            subscribe("sec.record", "'eb_sec_other'", ""),
            // no run_as: it would run as its owner, the superuser that created it
            subscribe("sec.promote", "NULL", ""),
            // a role that may not execute the function
            subscribe("sec.private", "'eb_sec_handler'", ""),
            "INSERT INTO event_bus.module_event_subscriptions (event_type, handler_module, handler_kind, \
             handler_function, run_as) VALUES ('sec.*', 'sec', 'sql', 'sec.promote', 'eb_sec_super')"
                .to_string(),
        ] {
            assert_eq!(sqlstate_of(&sql).as_deref(), Some("42501"), "{sql}");
        }
        assert_eq!(subscriptions(), 0, "a refused subscription writes nothing");

        // a role it may become: allowed, and the namer recorded
        let id = text(&format!(
            "{}::text",
            subscribe("sec.record", "'eb_sec_handler'", "")
        ));
        assert_eq!(
            text(&format!(
                "SELECT run_as_set_by::text FROM event_bus.module_event_subscriptions WHERE id = '{id}'"
            )),
            "eb_sec_adm"
        );
        // every UPDATE path that changes the handler's role is held to the same rule
        for set in [
            "run_as = 'eb_sec_super'",
            "run_as = 'eb_sec_other'",
            "handler_function = 'sec.promote', run_as = NULL",
            "handler_function = 'sec.private'",
        ] {
            let sql =
                format!("UPDATE event_bus.module_event_subscriptions SET {set} WHERE id = '{id}'");
            assert_eq!(sqlstate_of(&sql).as_deref(), Some("42501"), "{sql}");
        }
        // the recorder cannot be forged: whoever writes it is recorded
        Spi::run(&format!(
            "UPDATE event_bus.module_event_subscriptions SET run_as_set_by = 'postgres' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(
            text(&format!(
                "SELECT concat_ws('|', handler_function, run_as, run_as_set_by)
                   FROM event_bus.module_event_subscriptions WHERE id = '{id}'"
            )),
            "sec.record|eb_sec_handler|eb_sec_adm"
        );
        // other columns change freely
        Spi::run(&format!(
            "UPDATE event_bus.module_event_subscriptions SET is_active = false, timeout_ms = 500 WHERE id = '{id}'"
        ))
        .unwrap();

        // a superuser may name a superuser
        Spi::run("RESET ROLE").unwrap();
        let su = text(&format!(
            "{}::text",
            subscribe("sec.record", "'eb_sec_super'", "")
        ));
        assert_eq!(
            text(&format!(
                "SELECT (run_as_set_by = current_user)::text FROM event_bus.module_event_subscriptions WHERE id = '{su}'"
            )),
            "true"
        );
    }

    /// The rule holds again when the handler runs: a namer that lost the role stops the handler
    /// (run_handlers here, the worker in tests/security.rs), and a subscription from before
    /// 0.11.0 (no recorded namer) never runs as a superuser until a superuser confirms it.
    #[pg_test]
    fn a_handler_runs_only_while_its_namer_may_still_become_its_role() {
        roles_and_handlers();
        Spi::run("SET LOCAL ROLE eb_sec_adm").unwrap();
        let id = text(&format!(
            "{}::text",
            subscribe("sec.record", "'eb_sec_handler'", "")
        ));
        Spi::run("RESET ROLE").unwrap();
        // one new event, its handler run now as the worker would: the role it ran as, or the error
        let run = || {
            let event = text(&format!(
                "SELECT event_bus.emit_module_event('{TENANT}', 'sec.x', 'm', 'e', '1', '{{}}')::text"
            ));
            text(&format!(
                "SELECT string_agg(coalesce(response ->> 'as', error), ',')
                   FROM event_bus.run_handlers('{event}') WHERE subscription_id = '{id}'"
            ))
        };
        assert_eq!(run(), "eb_sec_handler");
        Spi::run("REVOKE eb_sec_handler FROM eb_sec_adm").unwrap();
        let refused = run();
        assert!(
            refused.contains("role eb_sec_adm may not make a SQL handler run as eb_sec_handler")
                && refused.contains("42501"),
            "{refused}"
        );

        // made before 0.11.0: no recorder (as the upgrade leaves it), written around the trigger
        Spi::run("SET LOCAL session_replication_role = replica").unwrap();
        Spi::run(&format!(
            "UPDATE event_bus.module_event_subscriptions SET run_as = 'eb_sec_super', run_as_set_by = NULL
              WHERE id = '{id}'"
        ))
        .unwrap();
        Spi::run("SET LOCAL session_replication_role = origin").unwrap();
        assert_eq!(
            text("SELECT concat_ws('|', subscription_id, run_as, runs_as_superuser) FROM event_bus.unverified_run_as"),
            format!("{id}|eb_sec_super|t")
        );
        let legacy = run();
        assert!(
            legacy.contains("named before event_bus 0.11.0") && legacy.contains("superuser"),
            "{legacy}"
        );
        // a superuser confirms it: it runs, and it is no longer listed
        Spi::run(&format!(
            "UPDATE event_bus.module_event_subscriptions SET run_as_set_by = current_user WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(run(), "eb_sec_super");
        assert_eq!(count("SELECT count(*) FROM event_bus.unverified_run_as"), 0);
    }

    /// request() runs a SQL responder in the caller's backend as its run_as role: the same rule.
    #[pg_test]
    fn a_sql_responder_stops_answering_when_its_namer_loses_the_role() {
        roles_and_handlers();
        Spi::run("SET LOCAL ROLE eb_sec_adm").unwrap();
        Spi::run(&subscribe(
            "sec.record",
            "'eb_sec_handler'",
            ", p_replies => true",
        ))
        .unwrap();
        assert_eq!(
            sqlstate_of(&subscribe(
                "sec.record",
                "'eb_sec_super'",
                ", p_replies => true"
            ))
            .as_deref(),
            Some("42501")
        );
        Spi::run("RESET ROLE").unwrap();
        let request = format!("SELECT event_bus.request('sec.ask', '{{}}', 2000, '{TENANT}')");
        assert_eq!(
            text(&format!(
                "SELECT ({})->>'as'",
                request.trim_start_matches("SELECT ")
            )),
            "eb_sec_handler"
        );
        Spi::run("REVOKE eb_sec_handler FROM eb_sec_adm").unwrap();
        assert_eq!(sqlstate_of(&request).as_deref(), Some("EB004"));
    }
}
