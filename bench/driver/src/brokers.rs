//! `broker_setup` and `broker_baseline`: RabbitMQ, NATS JetStream and Kafka, and what a plain
//! client publishes per second beside the worker.

use super::*;

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (connection URI without the query, exchange or subject prefix) of a bench broker URL.
pub(crate) fn broker_parts(url: &str) -> (String, String) {
    let (base, query) = url.split_once('?').unwrap();
    (
        base.to_string(),
        query.split_once('=').unwrap().1.to_string(),
    )
}

/// A clean topology for a run: AMQP — a durable topic exchange with a durable queue bound by
/// `#`, purged; NATS — a file stream capturing `<prefix>.>`, created afresh.
pub(crate) fn broker_setup(url: &str) {
    if url.starts_with("kafka://") {
        return kafka_setup(url);
    }
    let (base, name) = broker_parts(url);
    rt().block_on(async {
        if base.starts_with("amqp") {
            use lapin::options::*;
            use lapin::types::FieldTable;
            let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.exchange_declare(
                name.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_declare(
                "bench.q".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_bind(
                "bench.q".into(),
                name.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
            ch.queue_purge("bench.q".into(), QueuePurgeOptions::default())
                .await
                .unwrap();
            let _ = conn.close(200, "done".into()).await;
        } else {
            let c = async_nats::connect(base.trim_start_matches("nats://"))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let _ = js.delete_stream("BENCH").await;
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "BENCH".into(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
}

/// The baseline: `n` messages shaped like the extension's (CloudEvents headers, a ~300-byte JSON
/// body), published with the same crate, confirms on, 256 unconfirmed at most.
pub(crate) fn broker_baseline(url: &str, n: usize) {
    broker_setup(url);
    if url.starts_with("kafka://") {
        return kafka_baseline(url, n);
    }
    let (base, name) = broker_parts(url);
    let body =
        serde_json::json!({"n": 1, "sku": "SKU-1", "qty": 1, "note": "x".repeat(200)}).to_string();
    let attrs: Vec<(String, String)> = [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "tenantid",
        "deliveryid",
    ]
    .iter()
    .map(|a| (a.to_string(), format!("{a}-0123456789abcdef01234567")))
    .collect();
    let secs = rt().block_on(async {
        let started = Instant::now();
        if base.starts_with("amqp") {
            use lapin::options::*;
            use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
            let conn = lapin::Connection::connect(&base, lapin::ConnectionProperties::default())
                .await
                .unwrap();
            let ch = conn.create_channel().await.unwrap();
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .unwrap();
            let mut pending = std::collections::VecDeque::new();
            for i in 0..n {
                let mut headers = FieldTable::default();
                for (k, v) in &attrs {
                    headers.insert(
                        ShortString::from(format!("cloudEvents:{k}")),
                        AMQPValue::LongString(LongString::from(v.as_str())),
                    );
                }
                let props = lapin::BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(format!("m-{i}")))
                    .with_headers(headers);
                let confirm = ch
                    .basic_publish(
                        name.as_str().into(),
                        "bench.created".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        body.as_bytes(),
                        props,
                    )
                    .await
                    .unwrap();
                pending.push_back(confirm);
                if pending.len() >= 256 {
                    assert!(pending.pop_front().unwrap().await.unwrap().is_ack());
                }
            }
            for c in pending {
                assert!(c.await.unwrap().is_ack());
            }
            let _ = conn.close(200, "done".into()).await;
        } else {
            let c = async_nats::connect(base.trim_start_matches("nats://"))
                .await
                .unwrap();
            let js = async_nats::jetstream::new(c);
            let mut pending = std::collections::VecDeque::new();
            for i in 0..n {
                let mut msg = async_nats::jetstream::message::PublishMessage::build()
                    .payload(bytes::Bytes::from(body.clone()))
                    .message_id(format!("m-{i}"));
                for (k, v) in &attrs {
                    msg = msg.header(format!("ce-{k}").as_str(), v.as_str());
                }
                pending.push_back(
                    js.send_publish(format!("{name}.bench.created"), msg)
                        .await
                        .unwrap(),
                );
                if pending.len() >= 256 {
                    pending.pop_front().unwrap().await.unwrap();
                }
            }
            for p in pending {
                p.await.unwrap();
            }
        }
        started.elapsed().as_secs_f64()
    });
    println!("published_per_s={:.0} seconds={secs:.3}", n as f64 / secs);
}

/// (bootstrap broker, topic) of a bench `kafka://host:port/topic` URL.
fn kafka_parts(url: &str) -> (String, String) {
    let t = event_bus_core::kafka::parse(url).unwrap();
    (t.brokers[0].clone(), t.topic)
}

fn kafka_client(broker: &str) -> impl std::future::Future<Output = rskafka::client::Client> + '_ {
    async move {
        rskafka::client::ClientBuilder::new(vec![broker.to_string()])
            .build()
            .await
            .unwrap()
    }
}

/// The topic of a Kafka run, with 3 partitions (made once; Tansu keeps it until it stops).
fn kafka_setup(url: &str) {
    let (broker, topic) = kafka_parts(url);
    rt().block_on(async {
        let client = kafka_client(&broker).await;
        if !client
            .list_topics()
            .await
            .unwrap()
            .iter()
            .any(|t| t.name == topic)
        {
            client
                .controller_client()
                .unwrap()
                .create_topic(topic.as_str(), 3, 1, 5_000)
                .await
                .unwrap();
        }
    });
}

/// The Kafka baseline: `n` messages shaped like the extension's (ce_* headers, a key per entity
/// over 1000 entities, a ~300-byte JSON body), produced with the same crate and the same
/// producer settings as the worker (acks=all, a batching producer per partition, 5 ms linger),
/// 256 in flight at most.
fn kafka_baseline(url: &str, n: usize) {
    use rskafka::client::partition::{Compression, UnknownTopicHandling};
    use rskafka::client::producer::aggregator::RecordAggregator;
    use rskafka::client::producer::BatchProducerBuilder;
    let (broker, topic) = kafka_parts(url);
    let body =
        serde_json::json!({"n": 1, "sku": "SKU-1", "qty": 1, "note": "x".repeat(200)}).to_string();
    let secs = rt().block_on(async {
        let client = kafka_client(&broker).await;
        let partitions = client
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.name == topic)
            .unwrap()
            .partitions
            .len();
        let mut producers = Vec::new();
        for p in 0..partitions as i32 {
            let pc = client
                .partition_client(topic.as_str(), p, UnknownTopicHandling::Error)
                .await
                .unwrap();
            producers.push(Arc::new(
                BatchProducerBuilder::new(Arc::new(pc))
                    .with_linger(Duration::from_millis(5))
                    .with_compression(Compression::NoCompression)
                    .build(RecordAggregator::new(1024 * 1024)),
            ));
        }
        let started = Instant::now();
        let mut inflight = tokio::task::JoinSet::new();
        for i in 0..n {
            let key = format!("invoice/INV-{}", i % 1000).into_bytes();
            let p = event_bus_core::kafka::partition(
                event_bus_core::kafka::Partitioner::Murmur2,
                &key,
                partitions,
            );
            let mut headers = std::collections::BTreeMap::new();
            for a in [
                "specversion",
                "id",
                "source",
                "type",
                "time",
                "tenantid",
                "deliveryid",
            ] {
                headers.insert(
                    format!("ce_{a}"),
                    format!("{a}-0123456789abcdef01234567").into_bytes(),
                );
            }
            headers.insert("webhook-id".to_string(), format!("m-{i}").into_bytes());
            let record = rskafka::record::Record {
                key: Some(key),
                value: Some(body.clone().into_bytes()),
                headers,
                timestamp: rskafka::chrono::DateTime::from_timestamp_millis(1_700_000_000_000)
                    .unwrap(),
            };
            let producer = Arc::clone(&producers[p]);
            inflight.spawn(async move { producer.produce(record).await.unwrap() });
            if inflight.len() >= 256 {
                inflight.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(r) = inflight.join_next().await {
            r.unwrap();
        }
        started.elapsed().as_secs_f64()
    });
    println!("published_per_s={:.0} seconds={secs:.3}", n as f64 / secs);
}
