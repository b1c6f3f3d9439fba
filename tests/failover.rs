//! Failover to a streaming replica: the replica has the extension (read-only) and delivers
//! nothing while it is one; after the primary dies (`pg_ctl stop -m immediate`) and the replica is
//! promoted, its worker delivers every event committed on it — what the old primary had already
//! delivered again at most, with the same webhook-id — and nothing stays stuck.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const EVENTS: i64 = 2000;

#[test]
fn a_promoted_replica_delivers_every_event_committed_on_it_with_the_same_webhook_ids() {
    let primary = Cluster::start(
        "failover-primary",
        &[
            "wal_level = replica",
            "event_bus.poll_interval_ms = 100",
            "event_bus.backoff_base_ms = 20",
            "event_bus.lease_ms = 500",
        ],
    );
    // a slow receiver (20 ms an answer, at most 32 in flight per subscription: ~1,600/s), so the
    // primary dies with part of the events delivered, part in flight and part not yet attempted
    let rx = Receiver::start(|_, _| Reply::ok().delayed(Duration::from_millis(20)));
    {
        let mut c = primary.create_db_with_extension("erp");
        c.execute(
            "SELECT event_bus.subscribe('invoice.#', 'accounting', $1, p_timeout_ms => 2000)",
            &[&rx.url("/hook")],
        )
        .unwrap();
    }
    let replica = Cluster::replica_of(&primary, "failover-replica");
    let mut r = replica.connect("erp");
    assert!(r
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get::<_, bool>(0));

    let mut p = primary.connect("erp");
    for batch in 0..(EVENTS / 100) {
        p.batch_execute(&format!(
            "SELECT count(event_bus.emit_module_event('55555555-5555-5555-5555-555555555555', 'invoice.posted',
                                                      'accounting', 'invoice', ({batch} * 100 + g)::text,
                                                      jsonb_build_object('n', {batch} * 100 + g)))
               FROM generate_series(1, 100) g"
        ))
        .unwrap();
    }
    wait_for(
        "part of the events delivered by the primary",
        Duration::from_secs(30),
        || (rx.count("/hook") >= 300).then_some(()),
    );
    // wait until the replica has replayed every commit (asynchronous replication could lose the
    // last ones in a crash: that is what synchronous replication is for, see the README)
    let lsn: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    wait_for(
        "the replica to replay the emits",
        Duration::from_secs(30),
        || {
            r.query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get::<_, bool>(0)
            .then_some(())
        },
    );
    drop(p);
    primary.pg_ctl_stop("immediate");
    let delivered_by_primary = rx.count("/hook");
    assert!(
        (delivered_by_primary as i64) < EVENTS,
        "the primary delivered everything ({delivered_by_primary}) before it died: the test proves nothing"
    );

    // a replica delivers nothing: no worker runs there, and nothing arrives
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rx.count("/hook"),
        delivered_by_primary,
        "the replica delivered before promotion"
    );
    let workers: i64 = r
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'event_bus%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(workers, 0, "event_bus workers run on the replica");
    assert!(!replica.log().contains("event_bus worker started"));

    replica.promote();
    let committed: i64 = r
        .query_one("SELECT count(*) FROM event_bus.module_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        committed, EVENTS,
        "every emit was replayed before the primary died"
    );
    wait_for(
        "every event delivered after promotion",
        Duration::from_secs(120),
        || {
            let done: i64 = r
                .query_one(
                    "SELECT count(*) FROM event_bus.module_events WHERE status = 'completed'",
                    &[],
                )
                .unwrap()
                .get(0);
            (done == committed).then_some(())
        },
    );

    // every delivery id of the replica arrived; anything that arrived twice carried one id
    let ids: HashSet<String> = r
        .query(
            "SELECT id::text FROM event_bus.module_event_deliveries",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut received: HashMap<String, usize> = HashMap::new();
    let mut event_of: HashMap<String, String> = HashMap::new();
    for req in rx.on("/hook") {
        let id = req.header("webhook-id").unwrap_or_default().to_string();
        let event = req.json()["id"].as_str().unwrap_or_default().to_string();
        if let Some(prev) = event_of.insert(id.clone(), event.clone()) {
            assert_eq!(prev, event, "one webhook-id for two events");
        }
        *received.entry(id).or_default() += 1;
    }
    let lost = ids.iter().filter(|id| !received.contains_key(*id)).count();
    let foreign = received.keys().filter(|id| !ids.contains(*id)).count();
    let duplicates: usize = received.values().map(|n| n - 1).sum();
    let stuck: i64 = r
        .query_one(
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status <> 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    eprintln!(
        "failover: committed {committed}, delivered by the primary before it died {delivered_by_primary}, \
         delivered {} (distinct webhook-ids), duplicates {duplicates}, lost {lost}, stuck {stuck}",
        received.len()
    );
    assert_eq!(ids.len() as i64, committed, "one delivery per event");
    assert_eq!(lost, 0, "deliveries never received");
    assert_eq!(foreign, 0, "webhook-ids the promoted replica does not know");
    assert_eq!(stuck, 0);
}
