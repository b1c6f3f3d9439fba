//! The roles decide who may do what, end to end with the worker: an admin that is not a superuser
//! cannot become one through a SQL handler, a handler stops when its namer loses the role, and no
//! target's secret (path, query, userinfo) reaches anything a reader or operator can read.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{free_port, wait_for, Cluster, Silent};
use std::time::Duration;

const TENANT: &str = "77777777-7777-7777-7777-777777777777";
const LONG: Duration = Duration::from_secs(60);
const CONF: &[&str] = &[
    "event_bus.backoff_base_ms = 50",
    "event_bus.backoff_max_ms = 200",
    "event_bus.poll_interval_ms = 200",
];

fn one(c: &mut postgres::Client, sql: &str) -> String {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn emit(c: &mut postgres::Client, event_type: &str) -> String {
    c.query_one(
        "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'accounting', 'invoice', 'INV-1', '{}')::text",
        &[&TENANT, &event_type],
    )
    .unwrap()
    .get(0)
}

fn connect_as(cluster: &Cluster, db: &str, role: &str) -> postgres::Client {
    let connstr = cluster
        .connstr(db)
        .replace("user=postgres", &format!("user={role}"));
    postgres::Client::connect(&connstr, postgres::NoTls).unwrap()
}

fn sqlstate(r: Result<impl Sized, postgres::Error>) -> Option<String> {
    r.err().and_then(|e| e.code().map(|c| c.code().to_string()))
}

#[test]
fn an_admin_cannot_become_superuser_through_a_sql_handler_and_a_revoked_role_stops_it() {
    let cluster = Cluster::start("sec-runas", CONF);
    let mut su = cluster.create_db_with_extension("runas");
    su.batch_execute(
        "CREATE ROLE adm LOGIN NOSUPERUSER IN ROLE event_bus_admin;
         GRANT CREATE ON DATABASE runas TO adm;
         CREATE ROLE handler_role NOLOGIN;
         GRANT handler_role TO adm;
         CREATE TABLE public.calls (who text);
         GRANT INSERT ON public.calls TO handler_role;",
    )
    .unwrap();
    // the attack of the report: as an admin, a function of its own, run as the superuser
    let mut adm = connect_as(&cluster, "runas", "adm");
    adm.batch_execute(
        "CREATE SCHEMA adm_s;
         GRANT USAGE ON SCHEMA adm_s TO handler_role;
         CREATE FUNCTION adm_s.up(e event_bus.module_events) RETURNS void LANGUAGE sql
             AS $$ ALTER ROLE adm SUPERUSER $$;
         CREATE FUNCTION adm_s.rec(e event_bus.module_events) RETURNS jsonb LANGUAGE sql
             AS $$ INSERT INTO public.calls VALUES (current_user) RETURNING jsonb_build_object('as', current_user) $$;",
    )
    .unwrap();
    assert_eq!(
        sqlstate(adm.query_one(
            "SELECT event_bus.subscribe(p_event_type => 'pwn.x', p_handler_module => 'x',
                                        p_handler_function => 'adm_s.up', p_run_as => 'postgres')",
            &[],
        ))
        .as_deref(),
        Some("42501")
    );
    let sub = one(
        &mut adm,
        "SELECT event_bus.subscribe('pwn.*', 'x', p_handler_function => 'adm_s.rec',
                                    p_run_as => 'handler_role', p_max_retries => 0)::text",
    );
    for set in [
        "run_as = 'postgres'",
        "handler_function = 'adm_s.up', run_as = 'postgres'",
    ] {
        assert_eq!(
            sqlstate(adm.execute(
                &format!(
                    "UPDATE event_bus.module_event_subscriptions SET {set} WHERE id = '{sub}'"
                ),
                &[],
            ))
            .as_deref(),
            Some("42501"),
            "{set}"
        );
    }
    emit(&mut adm, "pwn.x");
    wait_for("the handler to run as handler_role", LONG, || {
        (one(
            &mut su,
            "SELECT coalesce(string_agg(who, ','), '') FROM public.calls",
        ) == "handler_role")
            .then_some(())
    });
    assert_eq!(
        one(
            &mut su,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = 'adm'"
        ),
        "false"
    );

    // the namer loses the role: the worker refuses to run the handler, with why
    su.batch_execute("REVOKE handler_role FROM adm").unwrap();
    let e = emit(&mut su, "pwn.x");
    let error = wait_for("the attempt refused", LONG, || {
        let r = su
            .query_opt(
                "SELECT last_error FROM event_bus.module_event_deliveries
                  WHERE event_id = $1::text::uuid AND status = 'failed'",
                &[&e],
            )
            .unwrap();
        r.map(|r| r.get::<_, String>(0))
    });
    assert!(
        error.contains("role adm may not make a SQL handler run as handler_role"),
        "{error}"
    );
    assert_eq!(one(&mut su, "SELECT count(*)::text FROM public.calls"), "1");
}

#[test]
fn a_target_s_secrets_never_reach_readers_or_operators() {
    let cluster = Cluster::start("sec-secrets", CONF);
    let mut su = cluster.create_db_with_extension("secrets");
    let rx = Receiver::start(|req, _| {
        if req.path.starts_with("/redirect/") {
            let mut r = Reply::status(302);
            r.headers.push((
                "Location".into(),
                "http://127.0.0.1:9/next/SECRET-LOCATION-PATH?token=SECRET-LOCATION-QUERY".into(),
            ));
            r
        } else {
            // a server that echoes what it was asked for
            let mut r = Reply::status(500);
            r.body = format!("Cannot POST {}", req.path);
            r
        }
    });
    let silent = Silent::start();
    let targets = [
        "http://127.0.0.1:9/hook/SECRET-CONNECT-PATH?token=SECRET-CONNECT-QUERY".to_string(),
        format!(
            "{}hook/SECRET-TIMEOUT-PATH?token=SECRET-TIMEOUT-QUERY",
            silent.url()
        ),
        rx.url("/redirect/SECRET-REDIRECT-PATH?token=SECRET-REDIRECT-QUERY"),
        rx.url("/echo/SECRET-ECHO-PATH?token=SECRET-ECHO-QUERY"),
        format!(
            "amqp://app:SECRET-AMQP-PASSWORD@127.0.0.1:{}/%2f?exchange=erp",
            free_port()
        ),
        format!(
            "nats://app:SECRET-NATS-PASSWORD@127.0.0.1:{}?subject=erp",
            free_port()
        ),
    ];
    for t in &targets {
        su.execute(
            "SELECT event_bus.subscribe('invoice.*', 'hooks', $1, p_tenant_id => $2::text::uuid,
                                        p_max_retries => 0, p_timeout_ms => 500)",
            &[t, &TENANT],
        )
        .unwrap();
    }
    let event = emit(&mut su, "invoice.posted");
    wait_for("every delivery dead", LONG, || {
        (one(
            &mut su,
            "SELECT count(*)::text FROM event_bus.module_event_deliveries
              WHERE status = 'failed' AND last_error IS NOT NULL",
        ) == targets.len().to_string())
        .then_some(())
    });
    // what each failure says is still useful: the host and the reason
    let errors = one(
        &mut su,
        "SELECT string_agg(last_error, E'\\n') FROM event_bus.module_event_deliveries",
    );
    for said in ["127.0.0.1", "timed out", "HTTP 500"] {
        assert!(errors.contains(said), "{said} in\n{errors}");
    }

    su.batch_execute(
        "CREATE ROLE tenant_reader LOGIN IN ROLE event_bus_reader;
         CREATE ROLE tenant_operator LOGIN IN ROLE event_bus_operator;",
    )
    .unwrap();
    let operational = one(
        &mut su,
        "SELECT count(*)::text FROM event_bus.module_events WHERE event_type = 'event_bus.delivery.failed'",
    );
    assert_eq!(
        operational,
        targets.len().to_string(),
        "each dead delivery's operational event"
    );
    for role in ["tenant_reader", "tenant_operator"] {
        let mut c = connect_as(&cluster, "secrets", role);
        c.batch_execute(&format!("SET app.tenant_id = '{TENANT}'"))
            .unwrap();
        // everything of event_bus this role may select, row by row, and each event's detail
        let relations: Vec<String> = c
            .query(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = 'event_bus' AND c.relkind IN ('r', 'v', 'm')
                    AND has_table_privilege(c.oid, 'SELECT')",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            relations.iter().any(|r| r == "event_bus.module_event_logs"),
            "{relations:?}"
        );
        let mut seen = String::new();
        for rel in &relations {
            seen.push_str(&one(
                &mut c,
                &format!("SELECT coalesce(string_agg(to_jsonb(t)::text, E'\\n'), '') FROM {rel} t"),
            ));
        }
        for id in c
            .query("SELECT id::text FROM event_bus.module_events", &[])
            .unwrap()
        {
            let id: String = id.get(0);
            seen.push_str(&one(
                &mut c,
                &format!("SELECT event_bus.event_detail('{id}')::text"),
            ));
        }
        assert!(seen.contains(&event), "{role} sees the event");
        assert!(seen.contains("timed out"), "{role} sees the errors");
        for secret in ["SECRET", "token="] {
            assert!(
                !seen.contains(secret),
                "{role} can read {secret:?}: ...{}...",
                seen.find(secret)
                    .and_then(|i| seen.get(i.saturating_sub(200)..(i + 100).min(seen.len())))
                    .unwrap_or("")
            );
        }
    }
}
