//! The Debian package, installed: `scripts/test.sh` builds postgresql-15-event-bus with
//! `scripts/package.sh`, removes the development install from Debian's PostgreSQL 15, installs the
//! package with `dpkg -i`, runs this test, then removes the package with `dpkg -r` and checks that
//! no event_bus file is left. Here: the files come from the package, and a cluster of Debian's
//! PostgreSQL with them creates the extension and delivers an event.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::process::Command;
use std::time::Duration;

#[test]
#[ignore = "needs the package installed: scripts/test.sh runs it between dpkg -i and dpkg -r"]
fn the_installed_package_creates_the_extension_and_delivers() {
    let pkglibdir = String::from_utf8(
        Command::new("pg_config")
            .arg("--pkglibdir")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let owner = Command::new("dpkg")
        .args(["-S", &format!("{pkglibdir}/event_bus.so")])
        .output()
        .unwrap();
    let owner = String::from_utf8_lossy(&owner.stdout);
    assert!(
        owner.starts_with("postgresql-15-event-bus:"),
        "event_bus.so does not come from the package: {owner:?}"
    );

    let cluster = Cluster::start("package", &["event_bus.poll_interval_ms = 100"]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("erp");
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'event_bus'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    c.execute(
        "SELECT event_bus.subscribe('invoice.posted', 'accounting', $1)",
        &[&rx.url("/hook")],
    )
    .unwrap();
    c.execute(
        "SELECT event_bus.emit_module_event('77777777-7777-7777-7777-777777777777', 'invoice.posted',
                                            'accounting', 'invoice', 'INV-1', '{\"total\": 10}')",
        &[],
    )
    .unwrap();
    wait_for("the event delivered", Duration::from_secs(30), || {
        (rx.count("/hook") == 1).then_some(())
    });
    assert_eq!(rx.on("/hook")[0].json()["data"]["total"], 10);
}
