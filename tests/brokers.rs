//! Broker targets against real servers on loopback ports of their own: RabbitMQ (publisher
//! confirms, mandatory publishes), NATS JetStream (PubAck, duplicate window) and Kafka (Tansu,
//! acks=all, read back by kafka-python). Every event
//! arrives, in the CloudEvents binding of each protocol; outages, unroutable messages, missing
//! streams and wrong credentials are failed attempts that are retried or logged, never a crash,
//! never a password in a message.

use event_bus_testkit as common;

use common::brokers::{Kafka, Nats, Rabbit};
use common::{count, wait_for, Cluster};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const TENANT: &str = "99999999-9999-9999-9999-999999999999";

fn conf() -> Vec<&'static str> {
    vec![
        "event_bus.poll_interval_ms = 100",
        "event_bus.backoff_base_ms = 100",
        "event_bus.backoff_max_ms = 500",
        "event_bus.default_timeout_ms = 2000",
        "event_bus.lease_ms = 1000",
    ]
}

fn emit_many(c: &mut postgres::Client, event_type: &str, n: i64, entities: i64) {
    c.execute(
        "SELECT count(*) FROM event_bus.emit_module_events($1::text::uuid, $2, 'accounting', 'invoice',
             (SELECT array_agg('INV-' || (i % $4::bigint)) FROM generate_series(1, $3::bigint) i),
             (SELECT array_agg(jsonb_build_object('n', i, 'entity', 'INV-' || (i % $4::bigint)))
                FROM generate_series(1, $3::bigint) i))",
        &[&TENANT, &event_type, &n, &entities],
    )
    .unwrap();
}

fn completed(c: &mut postgres::Client, sub: &str) -> i64 {
    count(
        c,
        &format!(
            "SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{sub}' AND status = 'completed'"
        ),
    )
}

fn subscribe(
    c: &mut postgres::Client,
    pattern: &str,
    module: &str,
    url: &str,
    extra: &str,
) -> String {
    c.query_one(
        &format!("SELECT event_bus.subscribe($1, $2, $3{extra})::text"),
        &[&pattern, &module, &url],
    )
    .unwrap()
    .get(0)
}

/// The CloudEvents attributes every message must carry (binary mode), by their header names.
fn assert_cloudevent(headers: &BTreeMap<String, String>, prefix: &str, body: &str) {
    for attr in [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "tenantid",
        "deliveryid",
    ] {
        assert!(
            headers.contains_key(&format!("{prefix}{attr}")),
            "missing {prefix}{attr} in {headers:?}"
        );
    }
    assert_eq!(headers[&format!("{prefix}specversion")], "1.0");
    assert_eq!(headers[&format!("{prefix}tenantid")], TENANT);
    let data: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(data["n"].is_i64(), "{body}");
}

#[test]
fn rabbitmq_confirms_every_event_survives_a_restart_and_reports_unroutable_and_bad_credentials() {
    let mut rabbit = Rabbit::start();
    rabbit.declare("erp", "accounting.all", "invoice.#");
    let cluster = Cluster::start("rabbit", &conf());
    let mut c = cluster.create_db_with_extension("rabbit_db");
    let sub = subscribe(
        &mut c,
        "invoice.#",
        "ledger",
        &rabbit.url("guest", "guest", "erp"),
        "",
    );
    // unroutable: nothing is bound for payroll.*; wrong password; both beside the healthy one
    let unroutable = subscribe(
        &mut c,
        "payroll.#",
        "payroll",
        &rabbit.url("guest", "guest", "erp"),
        "",
    );
    let bad_login = subscribe(
        &mut c,
        "invoice.#",
        "intruder",
        &rabbit.url("guest", "not-the-Password-42", "erp"),
        ", p_max_retries => 1",
    );

    // 10,000 events, every one confirmed and in the queue once (by message id)
    emit_many(&mut c, "invoice.posted", 10_000, 1000);
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'payroll.run', 'hr', 'run', 'R-1', '{\"n\": 1}')",
        &[&TENANT],
    )
    .unwrap();
    wait_for(
        "10,000 confirmed deliveries",
        Duration::from_secs(180),
        || (completed(&mut c, &sub) == 10_000).then_some(()),
    );
    let messages = rabbit.drain("accounting.all");
    let ids: HashSet<&str> = messages.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(
        ids.len(),
        10_000,
        "every event once (redeliveries share an id)"
    );
    let (_, headers, body) = &messages[0];
    assert_cloudevent(headers, "cloudEvents:", body);
    assert_eq!(headers["content_type"], "application/json");
    assert_eq!(headers["delivery_mode"], "2", "persistent");

    // unroutable and refused logins are failed attempts with a clear error and no password
    wait_for(
        "the unroutable attempt logged",
        Duration::from_secs(30),
        || {
            let e: Option<String> = c
            .query_one(
                "SELECT max(error_message) FROM event_bus.module_event_logs WHERE subscription_id = $1::text::uuid",
                &[&unroutable],
            )
            .unwrap()
            .get(0);
            e.filter(|e| e.contains("unroutable") && e.contains("payroll.run"))
        },
    );
    let login_error: String = wait_for("the refused login logged", Duration::from_secs(30), || {
        c.query_one(
            "SELECT max(error_message) FROM event_bus.module_event_logs WHERE subscription_id = $1::text::uuid",
            &[&bad_login],
        )
        .unwrap()
        .get::<_, Option<String>>(0)
    });
    assert!(
        login_error.to_lowercase().contains("access")
            || login_error.to_lowercase().contains("refused")
            || login_error.to_lowercase().contains("auth"),
        "{login_error}"
    );
    for (what, text) in [
        ("the attempt log", login_error.clone()),
        ("the server log", cluster.log()),
        (
            "event_detail",
            c.query_one(
                "SELECT event_bus.event_detail(event_id)::text FROM event_bus.module_event_logs
                  WHERE subscription_id = $1::text::uuid LIMIT 1",
                &[&bad_login],
            )
            .unwrap()
            .get(0),
        ),
    ] {
        assert!(
            !text.contains("not-the-Password-42"),
            "the password is in {what}"
        );
    }
    c.batch_execute(&format!(
        "DELETE FROM event_bus.module_event_subscriptions WHERE id IN ('{unroutable}', '{bad_login}')"
    ))
    .unwrap();

    // the broker goes away mid-stream and comes back: nothing lost, the outage logged as failures
    emit_many(&mut c, "invoice.sent", 3000, 100);
    wait_for("some delivered", Duration::from_secs(60), || {
        (completed(&mut c, &sub) > 10_200).then_some(())
    });
    rabbit.stop();
    wait_for(
        "failed attempts during the outage",
        Duration::from_secs(30),
        || {
            (count(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_logs WHERE subscription_id = '{sub}' AND status = 'failed'"
            ),
        ) > 0)
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    rabbit.start_again();
    wait_for(
        "all 13,000 delivered after the restart",
        Duration::from_secs(180),
        || (completed(&mut c, &sub) == 13_000).then_some(()),
    );
    let after: HashSet<String> = rabbit
        .drain("accounting.all")
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let sent: i64 = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e ON e.id = d.event_id
              WHERE d.subscription_id = '{sub}' AND e.event_type = 'invoice.sent'"
        ),
    );
    assert_eq!(sent, 3000);
    // confirmed before the stop means stored in the durable queue: it survived the restart; what
    // was not confirmed was sent again (same id)
    assert_eq!(after.len(), 3000, "every invoice.sent in the queue once");
    assert_eq!(
        count(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{sub}' AND status <> 'completed'"
            )
        ),
        0
    );
}

#[test]
fn an_ordered_subscription_keeps_entity_order_to_rabbitmq_through_a_restart() {
    let mut rabbit = Rabbit::start();
    rabbit.declare("erp", "ordered.q", "order.#");
    let cluster = Cluster::start("rabbit_ordered", &conf());
    let mut c = cluster.create_db_with_extension("rabbit_ordered_db");
    let sub = subscribe(
        &mut c,
        "order.#",
        "fulfilment",
        &rabbit.url("guest", "guest", "erp"),
        ", p_ordered => true",
    );
    emit_many(&mut c, "order.changed", 6000, 50);
    wait_for("some delivered", Duration::from_secs(60), || {
        (completed(&mut c, &sub) > 300).then_some(())
    });
    rabbit.stop();
    std::thread::sleep(Duration::from_secs(1));
    rabbit.start_again();
    wait_for("all 6,000 delivered", Duration::from_secs(300), || {
        (completed(&mut c, &sub) == 6000).then_some(())
    });
    let failed = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM event_bus.module_event_logs WHERE subscription_id = '{sub}' AND status = 'failed'"
        ),
    );
    assert!(failed > 0, "the restart was not mid-stream");
    // per entity, the events in emit order; a message whose id came before is a redelivery (a
    // resend after a lost confirm, or the broker's own after its restart) and is skipped
    let all = rabbit.drain("ordered.q");
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut distinct = HashSet::new();
    for (id, _, body) in &all {
        if !distinct.insert(id.clone()) {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let entity = v["entity"].as_str().unwrap().to_string();
        let n = v["n"].as_i64().unwrap();
        if let Some(prev) = last.get(&entity) {
            assert!(n > *prev, "entity {entity}: {n} after {prev}");
        }
        last.insert(entity, n);
    }
    assert_eq!(distinct.len(), 6000);
}

#[test]
fn jetstream_acknowledges_every_event_dedupes_resends_and_reports_a_missing_stream() {
    let mut nats = Nats::start();
    nats.create_stream("ERP", &["erp.>"], Duration::from_secs(120));
    let cluster = Cluster::start("nats", &conf());
    let mut c = cluster.create_db_with_extension("nats_db");
    let sub = subscribe(&mut c, "invoice.#", "ledger", &nats.url("erp"), "");
    let nostream = subscribe(
        &mut c,
        "invoice.#",
        "archive",
        &nats.url("archive"),
        ", p_max_retries => 1",
    );

    emit_many(&mut c, "invoice.posted", 10_000, 1000);
    // a worker SIGKILLed mid-stream resends what it had in flight: JetStream's duplicate window
    // (Nats-Msg-Id = delivery id) keeps one copy
    wait_for("some delivered", Duration::from_secs(60), || {
        (completed(&mut c, &sub) > 2000).then_some(())
    });
    let pid: i32 = wait_for("the worker", Duration::from_secs(30), || {
        c.query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'nats_db'",
            &[],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0))
    });
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // the postmaster ends every backend and recovers: a connection counts once it answers after that
    drop(c);
    std::thread::sleep(Duration::from_millis(500));
    let mut c = wait_for("the server back", Duration::from_secs(60), || {
        let mut c = cluster.try_connect("nats_db")?;
        let restarted: bool = c
            .query_one(
                "SELECT pg_postmaster_start_time() < now() - interval '0 s'
                    AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .ok()?
            .get(0);
        restarted.then_some(c)
    });
    wait_for(
        "10,000 acknowledged deliveries",
        Duration::from_secs(180),
        || (completed(&mut c, &sub) == 10_000).then_some(()),
    );
    assert_eq!(nats.stored("ERP"), 10_000, "one stored message per event");
    let messages = nats.messages("ERP");
    let ids: HashSet<&str> = messages.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 10_000);
    let (_, headers, body) = &messages[0];
    assert_cloudevent(headers, "ce-", body);
    let resent = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM event_bus.module_event_logs WHERE subscription_id = '{sub}'
                AND (response ->> 'duplicate')::boolean"
        ),
    );
    eprintln!("deliveries JetStream recognised as resends after the SIGKILL: {resent}");

    // no stream for the subject: failed attempts with a clear error; the other one flowed
    let e: String = c
        .query_one(
            "SELECT max(error_message) FROM event_bus.module_event_logs WHERE subscription_id = $1::text::uuid",
            &[&nostream],
        )
        .unwrap()
        .get(0);
    assert!(
        e.contains("no JetStream stream") && e.contains("archive.invoice.posted"),
        "{e}"
    );
    c.batch_execute(&format!(
        "DELETE FROM event_bus.module_event_subscriptions WHERE id = '{nostream}'"
    ))
    .unwrap();

    // the server goes away and comes back: nothing lost
    emit_many(&mut c, "invoice.sent", 2000, 100);
    wait_for("some delivered", Duration::from_secs(60), || {
        (completed(&mut c, &sub) > 10_100).then_some(())
    });
    nats.stop();
    wait_for(
        "failed attempts during the outage",
        Duration::from_secs(30),
        || {
            (count(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_logs WHERE subscription_id = '{sub}' AND status = 'failed'"
            ),
        ) > 0)
            .then_some(())
        },
    );
    nats.start_again();
    wait_for("all 12,000 delivered", Duration::from_secs(180), || {
        (completed(&mut c, &sub) == 12_000).then_some(())
    });
    assert_eq!(nats.stored("ERP"), 12_000);
}

#[test]
fn bad_broker_urls_are_refused_at_subscribe_without_the_password() {
    let cluster = Cluster::start("broker_urls", &conf());
    let mut c = cluster.create_db_with_extension("broker_urls_db");
    for url in [
        "amqp://u:hunter2secret@127.0.0.1/v",
        "amqp://u:hunter2secret@127.0.0.1/v?exchange=a b",
        "amqp://u:hunter2secret@127.0.0.1/v?exchange=x&queue=y",
        "nats://u:hunter2secret@127.0.0.1:4222",
        "nats://u:hunter2secret@127.0.0.1:4222?subject=a.>",
        "tls://u:hunter2secret@127.0.0.1:4222?subject=a&x=1",
        "kafka://u:hunter2secret@127.0.0.1:9092",
        "kafka://u:hunter2secret@127.0.0.1:9092/a?acks=0",
        "kafkas://u:hunter2secret@127.0.0.1,/a",
        "kafka://u:hunter2secret@127.0.0.1/a b",
    ] {
        let e = c
            .query_one("SELECT event_bus.subscribe('a.#', 'm', $1)", &[&url])
            .unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "22023", "{url}");
        assert!(!db.message().contains("hunter2secret"), "{}", db.message());
        assert!(db.message().contains("***"), "{}", db.message());
    }
    // a broker answers no requests and signs nothing
    for extra in [
        ", p_replies => true",
        ", p_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'",
    ] {
        let e = c
            .query_one(
                &format!("SELECT event_bus.subscribe('a.#', 'm', 'nats://127.0.0.1:4222?subject=a'{extra})"),
                &[],
            )
            .unwrap_err();
        assert_eq!(e.code().unwrap().code(), "22023");
    }
    // allowed_networks applies to broker hosts as to HTTP ones
    c.batch_execute("SET event_bus.allowed_networks = '10.0.0.0/8'")
        .unwrap();
    let e = c
        .query_one(
            "SELECT event_bus.subscribe('a.#', 'm', 'amqp://u:p@127.0.0.1:5672/%2f?exchange=x')",
            &[],
        )
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    // every host of a Kafka broker list
    let e = c
        .query_one(
            "SELECT event_bus.subscribe('a.#', 'm', 'kafka://10.0.0.1:9092,127.0.0.1:9092/t')",
            &[],
        )
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22023");
    let message = e.as_db_error().unwrap().message();
    assert!(message.contains("127.0.0.1"), "{message}");
    assert_eq!(
        count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_subscriptions"
        ),
        0
    );
    // ... and to every address a host name resolves to, when the worker connects
    c.batch_execute("RESET event_bus.allowed_networks").unwrap();
    c.batch_execute("ALTER SYSTEM SET event_bus.allowed_networks = '10.0.0.0/8'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // pg_reload_conf() only signals the postmaster. A session started after the postmaster has
    // re-read the file sees the new value, and by then it has signalled the worker too (in the
    // same handler): the worker applies it before its next claim.
    wait_for("the reload", Duration::from_secs(60), || {
        let mut fresh = cluster.connect("broker_urls_db");
        let now: String = fresh
            .query_one("SELECT current_setting('event_bus.allowed_networks')", &[])
            .unwrap()
            .get(0);
        (now == "10.0.0.0/8").then_some(())
    });
    let sub = subscribe(
        &mut c,
        "a.#",
        "m",
        "nats://localhost:4222?subject=a",
        ", p_max_retries => 20",
    );
    c.execute(
        "SELECT event_bus.emit_module_event($1::text::uuid, 'a.b', 'm', NULL, NULL::text, '{}')",
        &[&TENANT],
    )
    .unwrap();
    // (an attempt the worker made before it applied the reload fails otherwise, and is retried)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let e = loop {
        let errors: Vec<String> = c
            .query(
                "SELECT coalesce(error_message, '') FROM event_bus.module_event_logs
                  WHERE subscription_id = $1::text::uuid ORDER BY executed_at",
                &[&sub],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(e) = errors
            .iter()
            .find(|e| e.contains("outside event_bus.allowed_networks"))
        {
            break e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt refused by event_bus.allowed_networks in 60 s; the attempts: {errors:?}\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(e.contains("localhost is"), "{e}");
}

/// Kafka: 10,000 events to an ordered subscription, read back by kafka-python: each once by
/// message id, keyed by entity, each entity in one partition and in emit order, in the
/// CloudEvents Kafka binding; a missing topic is a clear attempt error; the broker away for 10 s
/// opens the breaker, and everything emitted meanwhile arrives once it is back.
///
/// Tansu keeps messages in memory only, so a restart loses what it had: the outage starts
/// between batches (everything acknowledged before it has been read back), and what is emitted
/// during it is checked on the restarted broker.
#[test]
fn kafka_acknowledges_every_event_keyed_by_entity_in_order_through_an_outage() {
    let mut kafka = Kafka::start();
    kafka.create_topic("erp.events", 3);
    let mut settings = conf();
    settings.push("event_bus.breaker_cooldown_ms = 1000");
    let cluster = Cluster::start("kafka", &settings);
    let mut c = cluster.create_db_with_extension("kafka_db");
    let sub = subscribe(
        &mut c,
        "invoice.#",
        "ledger",
        &format!("{}?linger_ms=2&client_id=erp-test", kafka.url("erp.events")),
        ", p_ordered => true",
    );
    let missing = subscribe(
        &mut c,
        "invoice.#",
        "archive",
        &kafka.url("no.such.topic"),
        ", p_max_retries => 1",
    );
    let kind: String = c
        .query_one(
            "SELECT handler_kind FROM event_bus.module_event_subscriptions WHERE id = $1::text::uuid",
            &[&sub],
        )
        .unwrap()
        .get(0);
    assert_eq!(kind, "kafka");

    emit_many(&mut c, "invoice.posted", 10_000, 1000);
    wait_for(
        "10,000 acknowledged deliveries",
        Duration::from_secs(300),
        || (completed(&mut c, &sub) == 10_000).then_some(()),
    );
    let delivery_ids: HashSet<String> = c
        .query(
            "SELECT id::text FROM event_bus.module_event_deliveries WHERE subscription_id = $1::text::uuid",
            &[&sub],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let messages = kafka.consume("erp.events", 10_000, Duration::from_secs(180));
    assert_eq!(messages.len(), 10_000, "one message per event");
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids, delivery_ids, "every delivery once, by message id");
    // the CloudEvents Kafka binding, binary mode
    let m = &messages[0];
    assert_cloudevent(&m.headers, "ce_", &m.value);
    assert_eq!(m.headers["content-type"], "application/json");
    assert_eq!(m.headers["ce_type"], "invoice.posted");
    assert_eq!(m.headers["ce_deliveryid"], m.headers["webhook-id"]);
    // keyed by entity: one partition per entity, and in it the entity's events in emit order
    let mut by_key: HashMap<String, (i32, i64, i64)> = HashMap::new(); // key -> partition, offset, n
    let mut sorted = messages.clone();
    sorted.sort_by_key(|m| (m.partition, m.offset));
    let mut partitions = HashSet::new();
    for m in &sorted {
        let key = m.key.clone().expect("a key");
        let data: serde_json::Value = serde_json::from_str(&m.value).unwrap();
        assert_eq!(key, format!("invoice/{}", data["entity"].as_str().unwrap()));
        let n = data["n"].as_i64().unwrap();
        if let Some((p, _, last)) = by_key.get(&key) {
            assert_eq!(*p, m.partition, "{key} in two partitions");
            assert!(n > *last, "{key}: event {n} after {last}");
        }
        by_key.insert(key, (m.partition, m.offset, n));
        partitions.insert(m.partition);
    }
    assert_eq!(by_key.len(), 1000);
    assert_eq!(
        partitions.len(),
        3,
        "entities spread over the topic's partitions"
    );

    // the missing topic: failed attempts that say what to do
    let e: String = c
        .query_one(
            "SELECT max(error_message) FROM event_bus.module_event_logs WHERE subscription_id = $1::text::uuid",
            &[&missing],
        )
        .unwrap()
        .get(0);
    assert!(
        e.contains("no.such.topic") && e.contains("does not exist"),
        "{e}"
    );
    c.batch_execute(&format!(
        "DELETE FROM event_bus.module_event_subscriptions WHERE id = '{missing}';
         UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 5 WHERE id = '{sub}'"
    ))
    .unwrap();

    // the broker away for 10 s: failed attempts, the breaker opens; then everything arrives
    kafka.stop();
    emit_many(&mut c, "invoice.sent", 2000, 100);
    wait_for("the breaker open", Duration::from_secs(60), || {
        (count(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_subscriptions
                  WHERE id = '{sub}' AND breaker_open_until IS NOT NULL"
            ),
        ) == 1)
            .then_some(())
    });
    let metrics: String = c
        .query_one("SELECT event_bus.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("event_bus_subscriptions{breaker=\"open\"} 1"),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_secs(10));
    kafka.start_again();
    // (the worker's retries may reach the empty broker first: what this part checks is that every
    // delivery of the outage arrives, by message id, whatever the partitions)
    kafka.create_topic_if_missing("erp.events", 3);
    wait_for("all 12,000 delivered", Duration::from_secs(300), || {
        (completed(&mut c, &sub) == 12_000).then_some(())
    });
    let after: HashSet<String> = c
        .query(
            "SELECT d.id::text FROM event_bus.module_event_deliveries d JOIN event_bus.module_events e ON e.id = d.event_id
              WHERE d.subscription_id = $1::text::uuid AND e.event_type = 'invoice.sent'",
            &[&sub],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let messages = kafka.consume("erp.events", 2000, Duration::from_secs(180));
    let ids: HashSet<String> = messages
        .iter()
        .map(|m| m.headers["webhook-id"].clone())
        .collect();
    assert_eq!(ids, after, "every delivery of the outage, by message id");
    for m in &messages {
        let data: serde_json::Value = serde_json::from_str(&m.value).unwrap();
        assert!(data["n"].is_i64());
    }
    let failed = count(
        &mut c,
        &format!(
            "SELECT count(*) FROM event_bus.module_event_logs WHERE subscription_id = '{sub}' AND status = 'failed'"
        ),
    );
    assert!(failed > 0, "the outage's attempts are in the log");
    wait_for("the breaker closed", Duration::from_secs(60), || {
        let m: String = c
            .query_one("SELECT event_bus.metrics()", &[])
            .unwrap()
            .get(0);
        m.contains("event_bus_subscriptions{breaker=\"open\"} 0")
            .then_some(())
    });
}

/// Wrong credentials (a broker that requires SASL and knows no such user): failed attempts that say
/// so, without the password, while the worker goes on delivering to another cluster.
#[test]
fn kafka_wrong_credentials_are_failed_attempts_without_the_password() {
    let kafka = Kafka::start_with_authentication();
    let cluster = Cluster::start("kafka_auth", &conf());
    let mut c = cluster.create_db_with_extension("kafka_auth_db");
    let url = format!(
        "kafka://erp:hunter2secret@127.0.0.1:{}/erp.events?sasl=scram-sha-256",
        kafka.port
    );
    let sub = subscribe(&mut c, "invoice.#", "ledger", &url, ", p_max_retries => 2");
    // (every attempt fails: without its breaker, each delivery runs through its retries here)
    c.batch_execute(&format!(
        "UPDATE event_bus.module_event_subscriptions SET breaker_threshold = 0 WHERE id = '{sub}'"
    ))
    .unwrap();
    // another cluster that needs no credentials: the same worker serves it meanwhile
    let open = Kafka::start();
    open.create_topic("audit", 1);
    let other = subscribe(&mut c, "invoice.#", "audit", &open.url("audit"), "");
    emit_many(&mut c, "invoice.posted", 20, 5);
    wait_for("the failed attempts", Duration::from_secs(120), || {
        (count(
            &mut c,
            &format!(
                "SELECT count(*) FROM event_bus.module_event_deliveries WHERE subscription_id = '{sub}' AND status = 'failed'"
            ),
        ) == 20)
            .then_some(())
    });
    let errors: Vec<String> = c
        .query(
            "SELECT DISTINCT error_message FROM event_bus.module_event_logs WHERE subscription_id = $1::text::uuid",
            &[&sub],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!errors.is_empty());
    for e in &errors {
        assert!(!e.contains("hunter2secret"), "{e}");
    }
    // the client's own error (attempts that came meanwhile share it, or time out waiting)
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("cannot connect to Kafka at 127.0.0.1:")),
        "{errors:?}"
    );
    eprintln!("wrong credentials: {errors:?}");
    wait_for(
        "the other subscription served",
        Duration::from_secs(60),
        || (completed(&mut c, &other) == 20).then_some(()),
    );
    let other_errors: Vec<String> = c
        .query(
            "SELECT coalesce(error_message, '') FROM event_bus.module_event_logs
              WHERE subscription_id = $1::text::uuid AND status = 'failed'",
            &[&other],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let messages = open.consume("audit", 20, Duration::from_secs(60));
    let ids: HashSet<&str> = messages
        .iter()
        .map(|m| m.headers["webhook-id"].as_str())
        .collect();
    assert_eq!(
        ids.len(),
        20,
        "every delivery, by message id; failed attempts: {other_errors:?}"
    );
    assert_eq!(
        messages.len(),
        20,
        "no resends; failed attempts: {other_errors:?}"
    );
}
