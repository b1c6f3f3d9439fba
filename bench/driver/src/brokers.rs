//! `broker_setup` and `broker_baseline`: RabbitMQ and NATS JetStream, and what a plain client
//! publishes per second beside the worker.

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
