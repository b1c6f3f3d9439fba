//! ALTER EXTENSION event_bus UPDATE from each released version (0.1.0 to 0.13.1), by the script
//! build.rs writes for it (its table changes since, then the current functions): installs that release's own install script
//! (tests/fixtures), fills it with data, upgrades, and checks that nothing was lost, that the
//! worker delivers what waited (deliveries in flight and waiting for a retry included), and that
//! the upgraded schema is the one a fresh install creates.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::process::Command;
use std::time::Duration;

const TENANT: &str = "44444444-4444-4444-4444-444444444444";

/// Copy a released install script next to the current version's scripts.
fn install_old_version_script(version: &str) {
    let out = Command::new("pg_config")
        .arg("--sharedir")
        .output()
        .unwrap();
    let sharedir = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let fixture = format!(
        "{}/tests/fixtures/event_bus--{version}.sql",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::copy(fixture, format!("{sharedir}/extension/event_bus--{version}.sql"))
        .expect("copy the old install script into the extension directory (run as root, like the test command)");
}

/// Every object of the extension, described, and every column of its tables: equal for a fresh
/// install and an upgrade if the upgrade script and the install script agree.
fn schema_fingerprint(c: &mut postgres::Client) -> Vec<String> {
    let mut rows: Vec<String> = c
        .query(
            "SELECT pg_catalog.pg_describe_object(d.classid, d.objid, 0)
               FROM pg_catalog.pg_depend d
               JOIN pg_catalog.pg_extension x ON x.oid = d.refobjid AND x.extname = 'event_bus'
              WHERE d.deptype = 'e'
             UNION ALL
             SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
                    -- the position among the live columns: a row type (a SQL handler's argument) depends on it
                    || ' #' || row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum)
                    || coalesce(' acl ' || a.attacl::text, '')
               FROM pg_catalog.pg_attribute a
               JOIN pg_catalog.pg_class t ON t.oid = a.attrelid AND t.relnamespace = 'event_bus'::regnamespace
                                         AND t.relkind IN ('r', 'v')
               LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
              WHERE a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(i.indexrelid)
               FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
              WHERE t.relnamespace = 'event_bus'::regnamespace
             UNION ALL
             SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
               FROM pg_catalog.pg_constraint WHERE connamespace = 'event_bus'::regnamespace
             UNION ALL
             SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || cmd || ' '
                    || array_to_string(roles, ',') || ' ' || coalesce(qual, '') || ' ' || coalesce(with_check, '')
               FROM pg_catalog.pg_policies WHERE schemaname = 'event_bus'
             UNION ALL
             SELECT 'function ' || p.oid::regprocedure || ' ' || md5(p.prosrc) || ' ' || p.prosecdef
                    || ' ' || coalesce(array_to_string(p.proconfig, ','), '') || ' ' || coalesce(p.proacl::text, '')
               FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'event_bus'::regnamespace
             UNION ALL
             SELECT 'comment ' || pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid) || ' ' || md5(d.description)
               FROM pg_catalog.pg_description d
              WHERE d.objoid IN (SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = 'event_bus'::regnamespace
                                 UNION ALL
                                 SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = 'event_bus'::regnamespace)
             UNION ALL
             SELECT 'grant ' || c.relname || ' ' || coalesce(c.relacl::text, '') || ' rls=' || c.relrowsecurity
                    || ' persistence=' || c.relpersistence::text
               FROM pg_catalog.pg_class c WHERE c.relnamespace = 'event_bus'::regnamespace AND c.relkind IN ('r', 'v')
             UNION ALL
             -- the tables pg_dump dumps with the extension (pg_extension_config_dump), with their filters
             SELECT 'dumped ' || t.tab::regclass || ' ' || coalesce(t.cond, '')
               FROM pg_catalog.pg_extension x,
                    unnest(x.extconfig, x.extcondition) AS t(tab, cond)
              WHERE x.extname = 'event_bus'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        // the test build (cargo pgrx test) adds its #[pg_test] functions to a fresh install
        .filter(|r| !r.starts_with("function tests.") && r != "schema tests")
        .collect();
    rows.sort();
    rows
}

#[test]
fn upgrade_from_0_11_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.11.0");
}

#[test]
fn upgrade_from_0_12_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.12.0");
}

#[test]
fn upgrade_from_0_13_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.13.0");
}

#[test]
fn upgrade_from_0_13_1_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.13.1");
}

#[test]
fn upgrade_from_0_10_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.10.0");
}

#[test]
fn upgrade_from_0_9_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.9.0");
}

#[test]
fn upgrade_from_0_8_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.8.0");
}

#[test]
fn upgrade_from_0_7_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.7.0");
}

#[test]
fn upgrade_from_0_6_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.6.0");
}

#[test]
fn upgrade_from_0_5_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.5.0");
}

#[test]
fn upgrade_from_0_4_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.4.0");
}

#[test]
fn upgrade_from_0_3_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.3.0");
}

#[test]
fn upgrade_from_0_2_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.2.0");
}

#[test]
fn upgrade_from_0_1_0_keeps_every_row_and_matches_a_fresh_install() {
    upgrade_from("0.1.0");
}

fn upgrade_from(old: &str) {
    install_old_version_script(old);
    // what 0.11.0's upgrade changed (secrets scrubbed from the history, unverified SQL handlers
    // flagged, delivery.dead renamed) is checked on the releases before it
    let before_0_11 = !matches!(old, "0.11.0" | "0.12.0" | "0.13.0" | "0.13.1");
    let cluster = Cluster::start(
        &format!("upgrade-{old}"),
        &[
            "event_bus.poll_interval_ms = 100",
            "event_bus.backoff_base_ms = 50",
        ],
    );
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut admin = cluster.connect("postgres");
    admin.batch_execute("CREATE DATABASE old_db").unwrap();
    admin.batch_execute("CREATE DATABASE fresh_db").unwrap();

    let mut c = cluster.connect("old_db");
    c.batch_execute(&format!("CREATE EXTENSION event_bus VERSION '{old}'"))
        .unwrap();
    let sub: String = c
        .query_one(
            "SELECT event_bus.subscribe('invoice.*', 'accounting', $1, p_secret => 'upgrade-secret-0123456789')::text",
            &[&rx.url("/hook")],
        )
        .unwrap()
        .get(0);
    // history as 0.1.0 left it: a finished event with its delivery and log
    c.batch_execute(&format!(
        "WITH e AS (
             INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, status, processed_at, dispatched_at)
             VALUES ('{TENANT}', 'invoice.paid', 'accounting', 'completed', now(), now()) RETURNING id)
         , d AS (
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts, completed_at)
             SELECT event_bus._delivery_id(e.id, '{sub}'), e.id, '{sub}', '{TENANT}', 'completed', 1, now() FROM e RETURNING id, event_id)
         INSERT INTO event_bus.module_event_logs (event_id, subscription_id, delivery_id, tenant_id, attempt, status, http_status)
         SELECT d.event_id, '{sub}', d.id, '{TENANT}', 1, 'success', 200 FROM d;"
    ))
    .unwrap();
    // 0.2.0 and later left deliveries mid-way: one in flight (its lease ran out with the old worker) and one
    // waiting for its retry; both go out after the upgrade, each once more
    let mid_way = if old == "0.1.0" { 0 } else { 2 };
    if mid_way > 0 {
        c.batch_execute(&format!(
            "WITH e AS (
                 INSERT INTO event_bus.module_events (tenant_id, event_type, source_module, status, dispatched_at)
                 VALUES ('{TENANT}', 'invoice.sent', 'accounting', 'processing', now()),
                        ('{TENANT}', 'invoice.sent', 'accounting', 'processing', now()) RETURNING id)
             INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts,
                                                            last_attempt_at, next_attempt_at)
             SELECT event_bus._delivery_id(e.id, '{sub}'), e.id, '{sub}', '{TENANT}',
                    (ARRAY['processing', 'pending'])[row_number() OVER ()], 1, now() - interval '1 minute',
                    now() - interval '1 second'
               FROM e"
        ))
        .unwrap();
    }
    // before 0.11.0: an error that quotes its target's secret, and a SQL handler that an admin
    // could make run as a superuser
    c.batch_execute(&format!(
        "INSERT INTO event_bus.module_event_logs (event_id, subscription_id, tenant_id, attempt, status, error_message)
         SELECT e.id, '{sub}', '{TENANT}', 1, 'failed',
                'error sending request for url (http://127.0.0.1:9/hook/SECRET-PATH?token=SECRET-QUERY)'
           FROM event_bus.module_events e LIMIT 1;
         CREATE SCHEMA legacy;
         CREATE FUNCTION legacy.h(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{{}}'::jsonb $$;
         SELECT event_bus.subscribe('legacy.x', 'legacy', p_handler_function => 'legacy.h', p_run_as => 'postgres');"
    ))
    .unwrap();
    // before 0.11.0 the operational event of a failed delivery was event_bus.delivery.dead
    c.execute(
        if before_0_11 {
            "SELECT event_bus.subscribe('event_bus.delivery.dead', 'ops', $1)"
        } else {
            "SELECT event_bus.subscribe('event_bus.delivery.failed', 'ops', $1)"
        },
        &[&rx.url("/ops")],
    )
    .unwrap();
    // rows written by hand as 0.11.0's worker would have: its hourly counts (what event_stats reads)
    // follow the worker's writes, not INSERTs of finished events, so count them as it would have
    if !before_0_11 {
        c.batch_execute("SELECT event_bus._recount_event_hours()")
            .unwrap();
    }
    // events emitted while the new library runs against the old SQL wait for the upgrade
    for i in 0..3 {
        c.execute(
            "SELECT event_bus.emit_module_event($1::text::uuid, 'invoice.posted', 'accounting', 'invoice', $2, '{}')",
            &[&TENANT, &format!("INV-{i}")],
        )
        .unwrap();
    }
    wait_for(
        "the worker to notice the old SQL",
        Duration::from_secs(30),
        || {
            cluster
                .log()
                .contains("run ALTER EXTENSION event_bus UPDATE")
                .then_some(())
        },
    );
    assert_eq!(rx.count("/hook"), 0);

    c.batch_execute("ALTER EXTENSION event_bus UPDATE").unwrap();
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'event_bus'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

    wait_for(
        "the waiting events delivered after the upgrade",
        Duration::from_secs(60),
        || (rx.count("/hook") == 3 + mid_way).then_some(()),
    );
    wait_for("their outcomes recorded", Duration::from_secs(30), || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'",
                &[],
            )
            .unwrap()
            .get(0);
        (n == 4 + mid_way as i64).then_some(())
    });
    let ops: String = c
        .query_one(
            "SELECT string_agg(event_type, ',') FROM event_bus.module_event_subscriptions WHERE handler_module = 'ops'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        ops, "event_bus.delivery.failed",
        "subscriptions follow the event's new name"
    );
    let kept: String = c
        .query_one(
            "SELECT concat_ws('|',
                 (SELECT count(*) FROM event_bus.module_events),
                 (SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'completed' AND attempt_offset = 0),
                 (SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success'),
                 (SELECT string_agg(id::text || ':' || secret || ':' || consecutive_failures, ',') FROM event_bus.module_event_subscriptions),
                 (SELECT count(*) FROM event_bus.list_events()),
                 (SELECT processed FROM event_bus.event_stats()))",
            &[],
        )
        .unwrap()
        .get(0);
    let n = 4 + mid_way;
    assert_eq!(
        kept,
        format!("{n}|{n}|{n}|{sub}:upgrade-secret-0123456789:0|{n}|{n}")
    );
    let metrics: String = c
        .query_one("SELECT event_bus.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains(&format!(
            "event_bus_attempts_total{{result=\"success\"}} {}\n",
            3 + mid_way
        )),
        "{metrics}"
    );

    // a subscription's attempts of the last hour are counted (0.12.0 counts them per subscription;
    // the upgrade counts the last hour again from the log): those before the upgrade included
    let (health, logged): (i64, i64) = {
        let r = c
            .query_one(
                &format!(
                    "SELECT h.attempts_1h,
                            (SELECT count(*) FROM event_bus.module_event_logs l WHERE l.subscription_id = h.subscription_id)
                       FROM event_bus.subscription_health h WHERE h.subscription_id = '{sub}'"
                ),
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(health, logged);
    assert!(logged >= 5 + mid_way as i64, "{logged}");

    // the secret is scrubbed from the history, the host kept; the SQL handler is flagged
    // (0.11.0 wrote neither: its worker scrubbed errors as it wrote them, its trigger recorded the
    // superuser who named the role)
    if before_0_11 {
        check_0_11_0_changes(&mut c);
    }

    // the upgraded schema is exactly a fresh install's
    let mut fresh = cluster.connect("fresh_db");
    fresh.batch_execute("CREATE EXTENSION event_bus").unwrap();
    let (upgraded, installed) = (schema_fingerprint(&mut c), schema_fingerprint(&mut fresh));
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|r| !installed.contains(r)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|r| !upgraded.contains(r)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgrade and fresh install differ:\nonly after upgrade: {only_upgraded:#?}\nonly in fresh install: {only_fresh:#?}"
    );
    assert!(
        upgraded.len() > 100,
        "fingerprint too small: {}",
        upgraded.len()
    );
}

/// 0.11.0's upgrade scrubbed target secrets from the attempt log and flagged SQL handlers whose
/// role nobody had been checked for.
fn check_0_11_0_changes(c: &mut postgres::Client) {
    let scrubbed: String = c
        .query_one(
            "SELECT string_agg(error_message, ',') FROM event_bus.module_event_logs WHERE status = 'failed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        scrubbed,
        "error sending request for url (http://127.0.0.1:9)"
    );
    let flagged: String = c
        .query_one(
            "SELECT concat_ws('|', handler_function, run_as, runs_as_superuser) FROM event_bus.unverified_run_as",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(flagged, "legacy.h|postgres|t");
}
