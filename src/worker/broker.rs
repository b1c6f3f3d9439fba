//! Broker targets, on the sender's runtime beside HTTP: RabbitMQ (AMQP 0-9-1, publisher confirms)
//! and NATS JetStream (PubAck). A delivery counts as delivered only when the broker has taken
//! responsibility for the message: an AMQP `basic.ack` for a routed message, a JetStream PubAck.
//! Connections are kept per broker (one AMQP channel in confirm mode per connection, on which
//! publishes are pipelined; one NATS client per server) and made again after a failure.
//!
//! Messages carry the event in the CloudEvents binding of each protocol (binary mode): the
//! payload as JSON in the body, the attributes in application properties `cloudEvents:*` (AMQP)
//! or `ce-*` headers (NATS); the delivery id is the AMQP `message_id` / `Nats-Msg-Id`, the same on
//! every attempt, so consumers (and JetStream's duplicate window) recognise a resend.
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
    let password = url::Url::parse(&req.url)
        .ok()
        .and_then(|u| u.password().map(|p| p.to_string()))
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
