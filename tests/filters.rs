//! Content filters through the worker: 1,000 committed events, three HTTP subscriptions with
//! different filters; each endpoint receives exactly the events its predicate selects, as the test
//! computes them in SQL with jsonb_path_match — once each, none left unfinished.

use event_bus_testkit as common;

use common::receiver::{Receiver, Reply};
use common::{wait_for, Cluster};
use std::collections::BTreeSet;
use std::time::Duration;

const TENANT: &str = "66666666-6666-6666-6666-666666666666";

#[test]
fn three_filtered_subscriptions_each_receive_exactly_the_events_their_predicate_selects() {
    let cluster = Cluster::start("filters", &["event_bus.poll_interval_ms = 100"]);
    let rx = Receiver::start(|_, _| Reply::ok());
    let mut c = cluster.create_db_with_extension("filters_db");
    let filters = [
        (
            "/big",
            "$.payload.total > 10000 && $.payload.currency != \"RSD\"",
        ),
        (
            "/north",
            "$.payload.warehouse starts with \"N\" || exists($.metadata.manual)",
        ),
        ("/lines", "$.payload.lines[*].qty > 8"),
    ];
    for (path, filter) in filters {
        c.execute(
            "SELECT event_bus.subscribe('invoice.*', 'h', $1, p_filter => $2)",
            &[&rx.url(path), &filter],
        )
        .unwrap();
    }
    // 1,000 events, deterministic variety: totals from 0 to 19,980 (a few as text: filter errors),
    // three currencies, four warehouses, metadata.manual on every 7th, one to three lines
    c.batch_execute(&format!(
        "SELECT event_bus.emit_module_event(
                    '{TENANT}', 'invoice.posted', 'accounting', 'invoice', 'INV-' || i,
                    jsonb_build_object(
                        'total', CASE WHEN i % 97 = 0 THEN to_jsonb('n/a'::text) ELSE to_jsonb(i * 20) END,
                        'currency', (ARRAY['EUR', 'RSD', 'USD'])[i % 3 + 1],
                        'warehouse', (ARRAY['North-1', 'South', 'N2', 'East'])[i % 4 + 1],
                        'lines', (SELECT jsonb_agg(jsonb_build_object('qty', (i * k) % 11))
                                    FROM generate_series(1, i % 3 + 1) k)),
                    CASE WHEN i % 7 = 0 THEN '{{\"manual\": true}}'::jsonb ELSE '{{}}'::jsonb END)
           FROM generate_series(1, 1000) i"
    ))
    .unwrap();
    let done = || {
        let mut c = cluster.connect("filters_db");
        let open: i64 = c
            .query_one(
                "SELECT count(*) FROM event_bus.module_events WHERE status NOT IN ('completed', 'failed')",
                &[],
            )
            .unwrap()
            .get(0);
        (open == 0).then_some(())
    };
    wait_for("every event to complete", Duration::from_secs(120), done);
    for (path, filter) in filters {
        let expected: BTreeSet<String> = c
            .query(
                "SELECT e.id::text FROM event_bus.module_events e
                  WHERE jsonb_path_match(
                            jsonb_build_object('payload', e.payload, 'metadata', e.metadata,
                                               'event_type', e.event_type, 'source_module', e.source_module,
                                               'entity_type', e.entity_type, 'entity_id', e.entity_id,
                                               'tenant_id', e.tenant_id),
                            $1::text::jsonpath, '{}', true) IS TRUE",
                &[&filter],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let got: Vec<String> = rx
            .on(path)
            .iter()
            .map(|r| r.json()["id"].as_str().unwrap_or_default().to_string())
            .collect();
        let got_set: BTreeSet<String> = got.iter().cloned().collect();
        assert!(
            expected.len() > 50 && expected.len() < 950,
            "{path}: the data should split ({} selected)",
            expected.len()
        );
        assert_eq!(got.len(), got_set.len(), "{path}: an event arrived twice");
        assert_eq!(
            got_set.len(),
            expected.len(),
            "{path}: received {} events, the predicate selects {}",
            got_set.len(),
            expected.len()
        );
        assert!(got_set == expected, "{path}: other events than selected");
    }
    // the text totals make /big's filter unknown where the currency does not decide it: counted
    // as filter errors, exactly those; the other filters never err
    for (path, filter) in filters {
        let expected: i64 = c
            .query_one(
                "SELECT count(*) FROM event_bus.module_events e
                  WHERE jsonb_path_match(
                            jsonb_build_object('payload', e.payload, 'metadata', e.metadata,
                                               'event_type', e.event_type, 'source_module', e.source_module,
                                               'entity_type', e.entity_type, 'entity_id', e.entity_id,
                                               'tenant_id', e.tenant_id),
                            $1::text::jsonpath, '{}', true) IS NULL",
                &[&filter],
            )
            .unwrap()
            .get(0);
        let counted: i64 = c
            .query_one(
                "SELECT h.filter_errors FROM event_bus.subscription_health h
                   JOIN event_bus.module_event_subscriptions s ON s.id = h.subscription_id
                  WHERE s.handler_url = $1",
                &[&rx.url(path)],
            )
            .unwrap()
            .get(0);
        assert_eq!(counted, expected, "{path}: filter errors");
        if path == "/big" {
            assert!(expected > 0, "the data should make /big's filter err");
        } else {
            assert_eq!(expected, 0, "{path}");
        }
    }
    // events no filter passed completed without deliveries
    let (undelivered, completed): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                                          WHERE d.event_id = e.id)),
                        count(*) FILTER (WHERE e.status = 'completed')
                   FROM event_bus.module_events e",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(undelivered > 0, "some events pass no filter");
    assert_eq!(completed, 1000);
}
