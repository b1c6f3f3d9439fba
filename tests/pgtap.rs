//! The README's pgTAP example (examples/pgtap_test.sql) run with psql against a cluster with
//! pgTAP installed: every test passes and the rollback leaves nothing behind. And the one helper
//! that refuses to run outside a transaction block. Needs pgTAP (Debian's postgresql-15-pgtap),
//! so the test command runs it by name on 15; plain `cargo test` skips it as ignored.

use event_bus_testkit as common;

use common::Cluster;
use std::process::Command;

#[test]
#[ignore = "needs pgTAP: scripts/test.sh runs it on PostgreSQL 15 with postgresql-15-pgtap"]
fn the_readme_pgtap_example_passes_and_leaves_nothing_behind() {
    let cluster = Cluster::start("pgtap", &[]);
    let mut c = cluster.create_db_with_extension("erp");
    let out = Command::new(cluster.bindir.join("psql"))
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "erp",
            "-p",
        ])
        .arg(cluster.port.to_string())
        .arg("-f")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/pgtap_test.sql"
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1..7"), "no plan:\n{stdout}");
    for n in 1..=7 {
        assert!(
            stdout.contains(&format!("ok {n} - ")),
            "test {n} missing:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("not ok"),
        "a pgTAP test failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("Looks like"), "{stdout}");

    let left: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM event_bus.module_events) + (SELECT count(*) FROM event_bus.module_event_subscriptions)
                  + (SELECT count(*) FROM event_bus._mock_calls) + (SELECT count(*) FROM pg_namespace WHERE nspname = 'acc')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the example's rollback left rows behind");

    // outside a transaction block a mock would be committed and outlive the test: refused
    let err = c
        .batch_execute("SELECT event_bus.mock_handler('invoice.*')")
        .unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("25P01"), "{err}");
    let subs: i64 = c
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_subscriptions",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(subs, 0);
}
