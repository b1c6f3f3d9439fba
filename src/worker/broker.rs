//! Broker targets, on the sender's runtime beside HTTP: RabbitMQ (AMQP 0-9-1, publisher confirms),
//! NATS JetStream (PubAck) and Kafka (acks from all in-sync replicas). A delivery counts as
//! delivered only when the broker has taken responsibility for the message: an AMQP `basic.ack`
//! for a routed message, a JetStream PubAck, a Kafka produce response without error. Connections
//! are kept per broker (one AMQP channel in confirm mode per connection, on which publishes are
//! pipelined; one NATS client per server; one Kafka client per cluster and credentials, with a
//! batching producer per partition) and made again after a failure.
//!
//! Messages carry the event in the CloudEvents binding of each protocol (binary mode): the
//! payload as JSON in the body, the attributes in application properties `cloudEvents:*` (AMQP),
//! `ce-*` headers (NATS) or `ce_*` headers (Kafka); the delivery id is the AMQP `message_id` /
//! `Nats-Msg-Id` / Kafka header `webhook-id`, the same on every attempt, so consumers (and
//! JetStream's duplicate window) recognise a resend. A Kafka message's key is the event's entity,
//! so one entity's events share a partition and keep their order.
//!
//! No Postgres here. Errors never carry a password: URLs in them are masked.

use super::deliver::{policy, Outcome, Request};
use crate::validate::{mask_url, parse_broker_url, Broker};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Open broker connections of one sender, by connection URI / server.
#[derive(Clone, Default)]
pub struct Brokers {
    amqp: Arc<Mutex<HashMap<String, Arc<AmqpLink>>>>,
    nats: Arc<Mutex<HashMap<String, async_nats::jetstream::Context>>>,
    /// (one cell per cluster and credentials: the first attempt connects, the others wait for it)
    kafka: Arc<Mutex<HashMap<String, Arc<KafkaCell>>>>,
}

struct AmqpLink {
    _connection: Connection,
    channel: lapin::Channel,
}

/// The CloudEvents attributes and the data of a delivery, from the structured body the claim
/// builds for every non-SQL target.
struct Event {
    attributes: Vec<(&'static str, String)>,
    event_type: String,
    source_module: String,
    entity_type: Option<String>,
    entity_id: Option<String>,
    data: Vec<u8>,
}

fn event_of(body: &str) -> Result<Event, String> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| format!("internal error: the event body is not JSON ({e})"))?;
    let text = |k: &str| match &v[k] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    };
    let mut attributes = Vec::new();
    for (name, key) in [
        ("specversion", "specversion"),
        ("id", "id"),
        ("source", "source"),
        ("type", "type"),
        ("time", "time"),
        ("subject", "subject"),
        ("datacontenttype", "datacontenttype"),
        ("tenantid", "tenantid"),
        ("sourcemodule", "sourcemodule"),
        ("entitytype", "entitytype"),
        ("entityid", "entityid"),
        ("deliveryid", "deliveryid"),
        ("metadata", "metadata"),
    ] {
        if let Some(value) = text(key) {
            attributes.push((name, value));
        }
    }
    Ok(Event {
        event_type: text("type").unwrap_or_default(),
        source_module: text("sourcemodule").unwrap_or_default(),
        entity_type: text("entitytype"),
        entity_id: text("entityid"),
        attributes,
        data: serde_json::to_vec(&v["data"]).unwrap_or_else(|_| b"{}".to_vec()),
    })
}

/// `host:port` may be reached under event_bus.allowed_networks? (Checked on the addresses the
/// name resolves to, before connecting.)
async fn check_destination(host: &str, port: u16) -> Result<(), String> {
    let Some(networks) = policy() else {
        return Ok(());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !networks.allows(a.ip())) {
        let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
        return Err(format!(
            "{host} is {}, outside event_bus.allowed_networks",
            list.join(", ")
        ));
    }
    Ok(())
}

/// Publish one delivery to its broker; the outcome as for an HTTP attempt (no http_status).
pub async fn publish(brokers: &Brokers, req: Request) -> Outcome {
    let started = Instant::now();
    let masked = mask_url(&req.url);
    let password = match crate::kafka::password(&req.url) {
        Some((_, decoded)) => Some(decoded),
        None => url::Url::parse(&req.url)
            .ok()
            .and_then(|u| u.password().map(|p| p.to_string())),
    }
    .filter(|p| !p.is_empty());
    // never a password in an error, whatever a client library puts in its messages
    let clean = |e: String| match &password {
        Some(p) => e.replace(p.as_str(), "***"),
        None => e,
    };
    let result = match parse_broker_url(&req.url) {
        Err(e) => Err(format!("invalid broker URL {masked}: {e}")),
        Ok(broker) => match tokio::time::timeout(req.timeout, send(brokers, &broker, &req)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {} ms waiting for {masked} to confirm",
                req.timeout.as_millis()
            )),
        },
    };
    match result {
        Ok(note) => Outcome {
            token: req.token,
            success: true,
            http_status: None,
            response: Some(note.to_string()),
            error: None,
            retry_after: None,
            duration: started.elapsed(),
            sent: true,
        },
        Err(e) => Outcome::failure(req.token, clean(e), started.elapsed()),
    }
}

async fn send(
    brokers: &Brokers,
    broker: &Broker,
    req: &Request,
) -> Result<serde_json::Value, String> {
    let event = event_of(&req.body)?;
    match broker {
        Broker::Amqp { uri, exchange } => amqp_publish(brokers, uri, exchange, req, event).await,
        Broker::Kafka(target) => kafka_publish(brokers, target, req, event).await,
        Broker::Nats {
            server,
            tls,
            user,
            password,
            subject_prefix,
        } => {
            let js = nats_context(brokers, server, *tls, user, password, req).await?;
            let subject = format!("{subject_prefix}.{}", event.event_type);
            let mut msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from(event.data))
                .message_id(&req.webhook_id)
                .header("content-type", "application/json");
            for (name, value) in &event.attributes {
                msg = msg.header(format!("ce-{name}").as_str(), value.as_str());
            }
            for (name, value) in &req.headers {
                msg = msg.header(name.as_str(), value.as_str());
            }
            let ack = js
                .send_publish(subject.clone(), msg)
                .await
                .map_err(|e| format!("publishing to {subject} failed: {e}"))?
                .await
                .map_err(|e| match e.kind() {
                    async_nats::jetstream::context::PublishErrorKind::StreamNotFound => format!(
                        "no JetStream stream captures subject {subject} (create one whose subjects include it)"
                    ),
                    _ => format!("JetStream did not acknowledge {subject}: {e}"),
                })?;
            Ok(serde_json::json!({
                "stream": ack.stream, "seq": ack.sequence, "duplicate": ack.duplicate, "subject": subject
            }))
        }
    }
}

async fn nats_context(
    brokers: &Brokers,
    server: &str,
    tls: bool,
    user: &Option<String>,
    password: &Option<String>,
    req: &Request,
) -> Result<async_nats::jetstream::Context, String> {
    let key = format!(
        "{}|{server}|{tls}|{}",
        user.as_deref().unwrap_or(""),
        password.as_deref().unwrap_or("")
    );
    if let Some(js) = brokers.nats.lock().await.get(&key) {
        return Ok(js.clone());
    }
    let (host, port) = server.rsplit_once(':').unwrap_or((server, "4222"));
    check_destination(host, port.parse().unwrap_or(4222)).await?;
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(req.timeout.min(Duration::from_secs(10)))
        .require_tls(tls);
    match (user, password) {
        (Some(u), Some(p)) => options = options.user_and_password(u.clone(), p.clone()),
        (Some(token), None) => options = options.token(token.clone()),
        _ => {}
    }
    let client = options
        .connect(server)
        .await
        .map_err(|e| format!("cannot connect to NATS at {server}: {e}"))?;
    let js = async_nats::jetstream::new(client);
    brokers.nats.lock().await.entry(key).or_insert(js.clone());
    Ok(js)
}

async fn amqp_link(brokers: &Brokers, uri: &str) -> Result<Arc<AmqpLink>, String> {
    if let Some(link) = brokers.amqp.lock().await.get(uri) {
        if link.channel.status().connected() {
            return Ok(Arc::clone(link));
        }
    }
    let masked = mask_url(uri);
    let parsed = url::Url::parse(uri).map_err(|e| format!("invalid broker URL {masked}: {e}"))?;
    let default_port = if parsed.scheme() == "amqps" {
        5671
    } else {
        5672
    };
    check_destination(
        parsed.host_str().unwrap_or(""),
        parsed.port().unwrap_or(default_port),
    )
    .await?;
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {masked}: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| format!("cannot open a channel on {masked}: {e}"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| format!("cannot enable publisher confirms on {masked}: {e}"))?;
    let link = Arc::new(AmqpLink {
        _connection: connection,
        channel,
    });
    brokers
        .amqp
        .lock()
        .await
        .insert(uri.to_string(), Arc::clone(&link));
    Ok(link)
}

async fn amqp_publish(
    brokers: &Brokers,
    uri: &str,
    exchange: &str,
    req: &Request,
    event: Event,
) -> Result<serde_json::Value, String> {
    let masked = mask_url(uri);
    let link = amqp_link(brokers, uri).await?;
    let mut headers = FieldTable::default();
    for (name, value) in &event.attributes {
        headers.insert(
            ShortString::from(format!("cloudEvents:{name}")),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    for (name, value) in &req.headers {
        headers.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from("application/json"))
        .with_delivery_mode(2)
        .with_message_id(ShortString::from(req.webhook_id.as_str()))
        .with_type(ShortString::from(event.event_type.as_str()))
        .with_app_id(ShortString::from("event_bus"))
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .with_headers(headers);
    let forget = |link: &Arc<AmqpLink>| {
        let brokers = brokers.clone();
        let link = Arc::clone(link);
        let uri = uri.to_string();
        async move {
            let mut map = brokers.amqp.lock().await;
            if map.get(&uri).is_some_and(|l| Arc::ptr_eq(l, &link)) {
                map.remove(&uri);
            }
        }
    };
    let confirm = match link
        .channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(event.event_type.as_str()),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &event.data,
            properties,
        )
        .await
    {
        Ok(c) => c,
        Err(e) => {
            forget(&link).await;
            return Err(format!("publishing to {masked} failed: {e}"));
        }
    };
    let confirmation = match confirm.await {
        Ok(c) => c,
        Err(e) => {
            forget(&link).await;
            return Err(format!(
                "{masked} closed the channel before confirming: {e}"
            ));
        }
    };
    let nacked = confirmation.is_nack();
    match confirmation.take_message() {
        Some(returned) => Err(format!(
            "unroutable: exchange {exchange} has no queue bound for routing key {} ({} {})",
            event.event_type, returned.reply_code, returned.reply_text
        )),
        None if nacked => Err(format!("{masked} refused the message (basic.nack)")),
        None => Ok(
            serde_json::json!({ "exchange": exchange, "routing_key": event.event_type, "confirmed": true }),
        ),
    }
}

// --- Kafka ----------------------------------------------------------------------------------

/// One Kafka cluster as one set of credentials reaches it: the client (its connections to the
/// brokers, their metadata) and a batching producer per partition of each topic used.
struct KafkaLink {
    client: rskafka::client::Client,
    topics: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<KafkaTopic>>>>>,
}

/// A cluster's link once made; until then the last failure to make it, which the attempts of the
/// next second share instead of each connecting again (a cluster that is down or refuses the
/// credentials is asked once a second, not once per delivery).
#[derive(Default)]
struct KafkaCell {
    link: tokio::sync::OnceCell<Arc<KafkaLink>>,
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

const KAFKA_RECONNECT_AFTER: Duration = Duration::from_secs(1);

impl KafkaCell {
    fn recent_failure(&self) -> Option<String> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .filter(|(at, _)| at.elapsed() < KAFKA_RECONNECT_AFTER)
            .map(|(_, e)| e.clone())
    }
}

/// A topic's producers (one per partition, in partition order), as of when its metadata was read.
struct KafkaTopic {
    producers: Vec<Arc<BatchProducer<RecordAggregator>>>,
    read_at: Instant,
}

/// A topic's partition list is read again after this long (new partitions are used from then on).
const KAFKA_METADATA_AGE: Duration = Duration::from_secs(300);
/// Most bytes of records a partition's producer sends in one request.
const KAFKA_MAX_BATCH_BYTES: usize = 1024 * 1024;

use rskafka::client::partition::{Compression as KafkaCompression, UnknownTopicHandling};
use rskafka::client::producer::aggregator::RecordAggregator;
use rskafka::client::producer::{BatchProducer, BatchProducerBuilder};

fn kafka_link_key(t: &crate::kafka::KafkaTarget) -> String {
    let sasl = t
        .sasl
        .as_ref()
        .map(|s| format!("{:?}|{}|{}", s.mechanism, s.user, s.password))
        .unwrap_or_default();
    format!("{}|{}|{}|{sasl}", t.brokers.join(","), t.tls, t.client_id)
}

fn kafka_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn kafka_link(
    brokers: &Brokers,
    t: &crate::kafka::KafkaTarget,
    timeout: Duration,
) -> Result<(Arc<KafkaCell>, Arc<KafkaLink>), String> {
    let cell = Arc::clone(
        brokers
            .kafka
            .lock()
            .await
            .entry(kafka_link_key(t))
            .or_default(),
    );
    if let Some(link) = cell.link.get() {
        return Ok((Arc::clone(&cell), Arc::clone(link)));
    }
    if let Some(e) = cell.recent_failure() {
        return Err(e);
    }
    let link = cell
        .link
        .get_or_try_init(|| async {
            // (an attempt that waited for another's try takes its failure)
            if let Some(e) = cell.recent_failure() {
                return Err(e);
            }
            let made = kafka_connect(t, timeout).await;
            if let Err(e) = &made {
                *cell.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), e.clone()));
            }
            made
        })
        .await
        .map(Arc::clone)?;
    Ok((cell, link))
}

async fn kafka_connect(
    t: &crate::kafka::KafkaTarget,
    timeout: Duration,
) -> Result<Arc<KafkaLink>, String> {
    for b in &t.brokers {
        let (host, port) = b.rsplit_once(':').unwrap_or((b, "9092"));
        check_destination(host, port.parse().unwrap_or(9092)).await?;
    }
    let mut builder = rskafka::client::ClientBuilder::new(t.brokers.clone())
        .client_id(t.client_id.as_str())
        // rskafka retries on its own: for three quarters of what one attempt may take, so that
        // its last error (a refused connection, a failed authentication) is the attempt's, not
        // the attempt's timeout
        .backoff_config(rskafka::BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
            deadline: Some(timeout * 3 / 4),
        });
    if t.tls {
        builder = builder.tls_config(kafka_tls()?);
    }
    if let Some(s) = &t.sasl {
        use crate::kafka::SaslMechanism;
        use rskafka::client::{Credentials, SaslConfig};
        let c = Credentials::new(s.user.clone(), s.password.clone());
        builder = builder.sasl_config(match s.mechanism {
            SaslMechanism::Plain => SaslConfig::Plain(c),
            SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
            SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
        });
    }
    // (a connection attempt that gets no answer is not bounded by the backoff's deadline: a broker
    // that requires authentication may leave a client without one)
    let limit = timeout * 3 / 4;
    let client = match tokio::time::timeout(limit, builder.build()).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return Err(format!(
                "cannot connect to Kafka at {}: {e}",
                t.brokers.join(",")
            ))
        }
        Err(_) => {
            return Err(format!(
                "cannot connect to Kafka at {}: no answer within {} ms (check the address, that it is a \
                 Kafka broker, and whether it requires credentials or another sasl mechanism)",
                t.brokers.join(","),
                limit.as_millis()
            ))
        }
    };
    Ok(Arc::new(KafkaLink {
        client,
        topics: Mutex::new(HashMap::new()),
    }))
}

async fn kafka_topic(
    link: &KafkaLink,
    t: &crate::kafka::KafkaTarget,
    topic: &str,
) -> Result<Arc<KafkaTopic>, String> {
    let key = format!("{topic}|{:?}|{}", t.compression, t.linger_ms);
    let cell = {
        let mut topics = link.topics.lock().await;
        let cell = topics.entry(key.clone()).or_default();
        if cell
            .get()
            .is_some_and(|known| known.read_at.elapsed() >= KAFKA_METADATA_AGE)
        {
            // read the partitions again (the producers in use finish their batches)
            *cell = Arc::default();
        }
        Arc::clone(cell)
    };
    cell.get_or_try_init(|| kafka_producers(link, t, topic))
        .await
        .map(Arc::clone)
}

async fn kafka_producers(
    link: &KafkaLink,
    t: &crate::kafka::KafkaTarget,
    topic: &str,
) -> Result<Arc<KafkaTopic>, String> {
    let topics = link
        .client
        .list_topics()
        .await
        .map_err(|e| format!("cannot read the topics of the Kafka cluster: {e}"))?;
    let Some(found) = topics.iter().find(|x| x.name == topic) else {
        return Err(format!(
            "topic {topic} does not exist on the Kafka cluster (create it; event_bus does not create topics)"
        ));
    };
    let mut partitions: Vec<i32> = found.partitions.iter().copied().collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(format!("topic {topic} has no partitions"));
    }
    let compression = match t.compression {
        crate::kafka::Compression::None => KafkaCompression::NoCompression,
        crate::kafka::Compression::Gzip => KafkaCompression::Gzip,
        crate::kafka::Compression::Lz4 => KafkaCompression::Lz4,
        crate::kafka::Compression::Snappy => KafkaCompression::Snappy,
        crate::kafka::Compression::Zstd => KafkaCompression::Zstd,
    };
    let mut producers = Vec::with_capacity(partitions.len());
    for p in partitions {
        let client = link
            .client
            .partition_client(topic, p, UnknownTopicHandling::Error)
            .await
            .map_err(|e| format!("cannot reach the leader of {topic}/{p}: {e}"))?;
        producers.push(Arc::new(
            BatchProducerBuilder::new(Arc::new(client))
                .with_linger(Duration::from_millis(t.linger_ms))
                .with_compression(compression)
                .build(RecordAggregator::new(KAFKA_MAX_BATCH_BYTES)),
        ));
    }
    Ok(Arc::new(KafkaTopic {
        producers,
        read_at: Instant::now(),
    }))
}

async fn kafka_publish(
    brokers: &Brokers,
    t: &crate::kafka::KafkaTarget,
    req: &Request,
    event: Event,
) -> Result<serde_json::Value, String> {
    let topic = t.topic_for(&event.event_type, &event.source_module)?;
    let (cell, link) = kafka_link(brokers, t, req.timeout).await?;
    // after a failure the next attempt connects afresh (the first to come does; the others wait)
    let forget = || async {
        let mut map = brokers.kafka.lock().await;
        let key = kafka_link_key(t);
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
    };
    // (a topic that does not exist is that topic's failure: the cluster's link stays)
    let entry = kafka_topic(&link, t, &topic).await?;
    let key = crate::kafka::message_key(event.entity_type.as_deref(), event.entity_id.as_deref());
    // no entity: spread by delivery id (still the same partition on every attempt)
    let partition = crate::kafka::partition(
        t.partitioner,
        key.as_deref().unwrap_or(req.webhook_id.as_bytes()),
        entry.producers.len(),
    );
    let mut headers = std::collections::BTreeMap::new();
    for (name, value) in &event.attributes {
        // the binding carries datacontenttype as the message's content-type
        if *name != "datacontenttype" {
            headers.insert(format!("ce_{name}"), value.clone().into_bytes());
        }
    }
    headers.insert("content-type".into(), b"application/json".to_vec());
    headers.insert("webhook-id".into(), req.webhook_id.clone().into_bytes());
    for (name, value) in &req.headers {
        headers.insert(name.clone(), value.clone().into_bytes());
    }
    let record = rskafka::record::Record {
        key,
        value: Some(event.data),
        headers,
        timestamp: {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            rskafka::chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
        },
    };
    match entry.producers[partition].produce(record).await {
        Ok(offset) => Ok(serde_json::json!({
            "topic": topic, "partition": partition, "offset": offset, "acks": "all"
        })),
        Err(e) => {
            forget().await;
            Err(format!(
                "Kafka did not acknowledge the message to {topic}/{partition}: {e}"
            ))
        }
    }
}
