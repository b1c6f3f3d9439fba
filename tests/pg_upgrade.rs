//! pg_upgrade from one PostgreSQL major version to another with event_bus installed: events,
//! subscriptions, delivered history and pending deliveries (waiting for their retry) are kept,
//! and the upgraded cluster delivers the pending ones, with the webhook-ids they had.
//!
//! Needs two PostgreSQL versions with the extension installed in both, so the test command runs
//! it by name (`scripts/test.sh`: from the binaries in EVENT_BUS_UPGRADE_FROM_BINDIR, upstream
//! 15, to those in EVENT_BUS_UPGRADE_TO_BINDIR, 17); plain `cargo test` skips it as ignored.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{pg_cmd_in, wait_for, Cluster};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
#[ignore = "needs two PostgreSQL versions: scripts/test.sh runs it with EVENT_BUS_UPGRADE_FROM_BINDIR / _TO_BINDIR"]
fn pg_upgrade_keeps_events_subscriptions_and_pending_deliveries_and_delivers_them() {
    let bindir = |var: &str| {
        PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
            panic!("{var}: the bin directory of a PostgreSQL with event_bus installed")
        }))
    };
    let old_bindir = bindir("EVENT_BUS_UPGRADE_FROM_BINDIR");
    let new_bindir = bindir("EVENT_BUS_UPGRADE_TO_BINDIR");
    let conf = [
        "event_bus.poll_interval_ms = 100",
        "event_bus.backoff_base_ms = 3000",
        "event_bus.backoff_max_ms = 3000",
        "event_bus.breaker_threshold = 0",
    ];
    let old = Cluster::init_with(&old_bindir, "pgupgrade-old", &conf);
    old.pg_ctl_start();
    // the receiver answers until `failing` is set, then refuses until it is cleared
    let failing = Arc::new(AtomicBool::new(false));
    let rx = {
        let failing = failing.clone();
        Receiver::start(move |_, _| {
            if failing.load(Ordering::SeqCst) {
                Reply::status(503)
            } else {
                Reply::ok()
            }
        })
    };
    let emit = |c: &mut postgres::Client, from: i32| {
        c.batch_execute(&format!(
            "SELECT count(event_bus.emit_module_event('66666666-6666-6666-6666-666666666666', 'invoice.posted',
                                                      'accounting', 'invoice', g::text, jsonb_build_object('n', g)))
               FROM generate_series({from}, {from} + 99) g"
        ))
        .unwrap();
    };
    let old_version: String;
    {
        let mut c = old.create_db_with_extension("erp");
        c.execute(
            "SELECT event_bus.subscribe('invoice.#', 'accounting', $1, p_max_retries => 50)",
            &[&rx.url("/hook")],
        )
        .unwrap();
        emit(&mut c, 1);
        wait_for("the first 100 delivered", Duration::from_secs(30), || {
            let n: i64 = c
                .query_one("SELECT count(*) FROM event_bus.module_events WHERE status = 'completed' AND event_type = 'invoice.posted'", &[])
                .unwrap()
                .get(0);
            (n == 100).then_some(())
        });
        failing.store(true, Ordering::SeqCst);
        emit(&mut c, 101);
        wait_for(
            "the next 100 attempted and failed",
            Duration::from_secs(30),
            || {
                let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'pending' AND attempts >= 1",
                    &[],
                )
                .unwrap()
                .get(0);
                (n == 100).then_some(())
            },
        );
        old_version = c.query_one("SHOW server_version_num", &[]).unwrap().get(0);
    }
    let before = fingerprint(&mut old.connect("erp"));
    let pending_ids = ids(
        &mut old.connect("erp"),
        "SELECT id::text FROM event_bus.module_event_deliveries WHERE status = 'pending'",
    );
    old.pg_ctl_stop("fast");

    // the new cluster: preloading comes after pg_upgrade (which starts both servers itself)
    let new = Cluster::init_with(&new_bindir, "pgupgrade-new", &[]);
    let conf_path = new.data().join("postgresql.conf");
    let without_preload = std::fs::read_to_string(&conf_path)
        .unwrap()
        .replace("shared_preload_libraries = 'event_bus'", "");
    std::fs::write(&conf_path, without_preload).unwrap();
    let out = pg_cmd_in(&new_bindir, "pg_upgrade")
        .current_dir(&new.dir)
        .args(["--copy", "--no-sync", "-U", "postgres", "-b"])
        .arg(&old.bindir)
        .arg("-B")
        .arg(&new_bindir)
        .arg("-d")
        .arg(old.data())
        .arg("-D")
        .arg(new.data())
        .args([
            "-p",
            &common::free_port().to_string(),
            "-P",
            &common::free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_upgrade: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conf = std::fs::read_to_string(&conf_path).unwrap();
    conf.push_str(
        "\nshared_preload_libraries = 'event_bus'\nevent_bus.poll_interval_ms = 100\n\
         event_bus.backoff_base_ms = 50\nevent_bus.backoff_max_ms = 200\nevent_bus.breaker_threshold = 0\n",
    );
    std::fs::write(&conf_path, conf).unwrap();
    new.pg_ctl_start();

    let mut c = new.connect("erp");
    let new_version: String = c.query_one("SHOW server_version_num", &[]).unwrap().get(0);
    assert_ne!(
        old_version[..2],
        new_version[..2],
        "upgraded to another major version"
    );
    assert_eq!(fingerprint(&mut c), before, "rows kept by pg_upgrade");
    let received_before = rx.count("/hook");
    failing.store(false, Ordering::SeqCst);
    wait_for(
        "the pending deliveries delivered by the upgraded cluster",
        Duration::from_secs(60),
        || {
            let n: i64 = c
            .query_one("SELECT count(*) FROM event_bus.module_events WHERE status = 'completed' AND event_type = 'invoice.posted'", &[])
            .unwrap()
            .get(0);
            (n == 200).then_some(())
        },
    );
    let delivered_after: HashSet<String> = rx.all()[received_before..]
        .iter()
        .filter(|r| r.path == "/hook")
        .map(|r| r.header("webhook-id").unwrap_or_default().to_string())
        .collect();
    assert!(
        pending_ids.iter().all(|id| delivered_after.contains(id)),
        "every pending delivery went out after the upgrade with its webhook-id"
    );
    // and the upgraded cluster takes new events
    emit(&mut c, 201);
    wait_for("a new event delivered", Duration::from_secs(30), || {
        let n: i64 = c
            .query_one("SELECT count(*) FROM event_bus.module_events WHERE status = 'completed' AND event_type = 'invoice.posted'", &[])
            .unwrap()
            .get(0);
        (n == 300).then_some(())
    });
    eprintln!(
        "pg_upgrade {} -> {}: 200 events kept (100 delivered before, {} pending), the pending ones \
         delivered after the upgrade with their webhook-ids, new events delivered",
        old_version,
        new_version,
        pending_ids.len()
    );
    drop(c);
    new.pg_ctl_stop("fast");
}

fn ids(c: &mut postgres::Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// What pg_upgrade must keep: every event, subscription and delivery with its state (finished
/// or not: the workers on both sides go on retrying the failing ones, so attempt counts move).
fn fingerprint(c: &mut postgres::Client) -> String {
    c.query_one(
        "SELECT concat_ws('|',
             (SELECT count(*) FROM event_bus.module_events WHERE source_module <> 'event_bus'),
             (SELECT md5(string_agg(id::text || payload::text || metadata::text, ',' ORDER BY id))
                FROM event_bus.module_events WHERE source_module <> 'event_bus'),
             (SELECT string_agg(id::text || handler_url || is_active, ',') FROM event_bus.module_event_subscriptions),
             (SELECT md5(string_agg(id::text || (status = 'completed'), ',' ORDER BY id)) FROM event_bus.module_event_deliveries),
             (SELECT count(*) FROM event_bus.module_event_logs WHERE status = 'success'),
             (SELECT extversion FROM pg_extension WHERE extname = 'event_bus'))",
        &[],
    )
    .unwrap()
    .get(0)
}
