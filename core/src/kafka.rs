//! Kafka targets without a Kafka client: the `kafka://` URL, the topic a delivery goes to, its
//! message key and the partition that key chooses. The sender (src/worker/broker.rs) produces
//! with rskafka; everything decided before the first byte goes out is here, tested in seconds.
//!
//! ```text
//! kafka[s]://[user:password@]host[:port][,host[:port]...]/TOPIC[?option=value&...]
//! ```
//! - `kafkas://` is TLS (the system's web PKI roots, as for `https://`); the port defaults to 9092.
//! - TOPIC: 1-249 of `A-Z a-z 0-9 . _ -`, or a template holding `{event_type}` and/or
//!   `{source_module}` (`events.{event_type}`); in a template's result every other character
//!   becomes `_` (an event type may hold `:`, a topic may not).
//! - Options: `sasl` (`plain`, `scram-sha-256`, `scram-sha-512`; with credentials only, default
//!   `plain`), `compression` (`none`, `gzip`, `lz4`, `snappy`, `zstd`; default `none`),
//!   `partitioner` (`murmur2`, the Java client's default, or `crc32`, librdkafka's `consistent`),
//!   `client_id` (1-100 of `A-Z a-z 0-9 . _ -`, default `event_bus`), `linger_ms` (0-1000, default
//!   5: how long a partition's producer waits for more deliveries to send in one request).
//!   The request timeout is the subscription's `timeout_ms`.

/// A `kafka://` subscription target, parsed and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Bootstrap brokers, `host:port` (an IPv6 host in brackets).
    pub brokers: Vec<String>,
    pub tls: bool,
    pub sasl: Option<Sasl>,
    /// The topic, or a template with `{event_type}` / `{source_module}`.
    pub topic: String,
    pub compression: Compression,
    pub partitioner: Partitioner,
    pub client_id: String,
    pub linger_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub user: String,
    pub password: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Lz4,
    Snappy,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// murmur2 of the key, as the Java client and librdkafka's `murmur2_random` do: the same key
    /// lands in the same partition as it would from those producers.
    Murmur2,
    /// CRC-32 of the key, librdkafka's `consistent`.
    Crc32,
}

const MAX_TOPIC: usize = 249;

fn topic_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._-".contains(&b)
}

use crate::validate::percent_decode as decode;

fn short(s: &str) -> String {
    s.chars().take(100).collect()
}

/// The parts of a `kafka[s]://` URL's authority: (scheme, userinfo, host list). None when it is
/// not a Kafka URL.
pub fn split_authority(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("kafka") && !scheme.eq_ignore_ascii_case("kafkas") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    Some(match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (scheme, Some(userinfo), hosts),
        None => (scheme, None, authority),
    })
}

/// The password of a Kafka URL as written (percent-encoded) and decoded.
pub fn password(url: &str) -> Option<(String, String)> {
    let (_, userinfo, _) = split_authority(url)?;
    let (_, p) = userinfo?.split_once(':')?;
    (!p.is_empty()).then(|| (p.to_string(), decode(p)))
}

/// Parse and check a `kafka://` / `kafkas://` URL. Errors never repeat the password.
pub fn parse(url: &str) -> Result<KafkaTarget, String> {
    let Some((scheme, userinfo, hosts)) = split_authority(url) else {
        return Err("it is not a kafka:// or kafkas:// URL".into());
    };
    let rest = &url[scheme.len() + 3..];
    if rest.contains('#') {
        return Err("it has a #fragment".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains white space or control characters".into());
    }
    let after_authority = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
    let (path, query) = match after_authority.split_once('?') {
        Some((p, q)) => (p, q),
        None => (after_authority, ""),
    };
    // the brokers
    let mut brokers = Vec::new();
    for h in hosts.split(',') {
        if h.is_empty() {
            return Err(
                "its broker list has an empty entry (hosts are separated by single commas)".into(),
            );
        }
        let parsed = url::Url::parse(&format!("kafka://{h}"))
            .map_err(|e| format!("broker {:?} is not host[:port] ({e})", short(h)))?;
        let host = match parsed.host_str() {
            Some(host) if !host.is_empty() => host.to_string(),
            _ => return Err(format!("broker {:?} has no host", short(h))),
        };
        if parsed.path() != "" || !parsed.username().is_empty() {
            return Err(format!("broker {:?} is not host[:port]", short(h)));
        }
        brokers.push(format!("{host}:{}", parsed.port().unwrap_or(9092)));
    }
    if brokers.len() > 20 {
        return Err("it names more than 20 bootstrap brokers".into());
    }
    // the credentials
    let credentials = match userinfo {
        None => None,
        Some(u) => {
            let (user, password) = u.split_once(':').unwrap_or((u, ""));
            if user.is_empty() || password.is_empty() {
                return Err(
                    "its credentials need both a user and a password (user:password@host)".into(),
                );
            }
            Some((decode(user), decode(password)))
        }
    };
    // the topic
    let topic = decode(path.strip_prefix('/').unwrap_or(path));
    if topic.is_empty() {
        return Err("it names no topic (add /TOPIC after the brokers)".into());
    }
    check_topic(&topic)?;
    // the options
    let mut sasl = None;
    let mut compression = Compression::None;
    let mut partitioner = Partitioner::Murmur2;
    let mut client_id = "event_bus".to_string();
    let mut linger_ms = 5;
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|s| *s == k) {
            return Err(format!("query parameter {:?} is given twice", short(&k)));
        }
        seen.push(k.to_string());
        let bad = |what: &str| format!("{k}={:?} is not valid: use {what}", short(&v));
        match k.as_ref() {
            "sasl" => {
                sasl = Some(match v.to_ascii_lowercase().as_str() {
                    "plain" => SaslMechanism::Plain,
                    "scram-sha-256" => SaslMechanism::ScramSha256,
                    "scram-sha-512" => SaslMechanism::ScramSha512,
                    _ => return Err(bad("plain, scram-sha-256 or scram-sha-512")),
                })
            }
            "compression" => {
                compression = match v.to_ascii_lowercase().as_str() {
                    "none" => Compression::None,
                    "gzip" => Compression::Gzip,
                    "lz4" => Compression::Lz4,
                    "snappy" => Compression::Snappy,
                    "zstd" => Compression::Zstd,
                    _ => return Err(bad("none, gzip, lz4, snappy or zstd")),
                }
            }
            "partitioner" => {
                partitioner = match v.to_ascii_lowercase().as_str() {
                    "murmur2" => Partitioner::Murmur2,
                    "crc32" | "consistent" => Partitioner::Crc32,
                    _ => return Err(bad("murmur2 or crc32")),
                }
            }
            "client_id" => {
                if v.is_empty() || v.len() > 100 || !v.bytes().all(topic_char) {
                    return Err(bad("1-100 letters, digits, '.', '_', '-'"));
                }
                client_id = v.to_string();
            }
            "linger_ms" => {
                linger_ms = match v.parse::<u64>() {
                    Ok(n) if n <= 1000 => n,
                    _ => return Err(bad("a whole number of milliseconds from 0 to 1000")),
                }
            }
            other => {
                return Err(format!(
                    "unknown query parameter {:?} (a kafka:// URL takes sasl, compression, partitioner, client_id, linger_ms)",
                    short(other)
                ))
            }
        }
    }
    let sasl = match (credentials, sasl) {
        (Some((user, password)), mechanism) => Some(Sasl {
            mechanism: mechanism.unwrap_or(SaslMechanism::Plain),
            user,
            password,
        }),
        (None, Some(_)) => {
            return Err("sasl= needs credentials in the URL (user:password@host)".into())
        }
        (None, None) => None,
    };
    Ok(KafkaTarget {
        brokers,
        tls: scheme.eq_ignore_ascii_case("kafkas"),
        sasl,
        topic,
        compression,
        partitioner,
        client_id,
        linger_ms,
    })
}

/// A topic or topic template as written in the URL.
fn check_topic(topic: &str) -> Result<(), String> {
    let mut literal = topic.to_string();
    for field in ["{event_type}", "{source_module}"] {
        literal = literal.replace(field, "x");
    }
    let valid = literal.len() <= MAX_TOPIC
        && literal.bytes().all(topic_char)
        && literal != "."
        && literal != "..";
    if !valid {
        return Err(format!(
            "topic {:?} is not a valid Kafka topic (1-249 of letters, digits, '.', '_', '-'; \
             {{event_type}} and {{source_module}} may stand for parts of it)",
            short(topic)
        ));
    }
    Ok(())
}

impl KafkaTarget {
    /// The topic of one event: the template's fields filled in, every character a topic may not
    /// hold made `_`; an error when the result is longer than a topic may be.
    pub fn topic_for(&self, event_type: &str, source_module: &str) -> Result<String, String> {
        if !self.topic.contains('{') {
            return Ok(self.topic.clone());
        }
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii() && topic_char(c as u8) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let topic = self
            .topic
            .replace("{event_type}", &clean(event_type))
            .replace("{source_module}", &clean(source_module));
        if topic.is_empty() || topic.len() > MAX_TOPIC {
            return Err(format!(
                "topic {:?} (from the template {}) is not 1-249 characters long",
                short(&topic),
                self.topic
            ));
        }
        Ok(topic)
    }
}

/// The message key of an event: its entity (`entity_type/entity_id`), so one entity's events
/// share a partition and stay in order; None for an event that names no entity.
pub fn message_key(entity_type: Option<&str>, entity_id: Option<&str>) -> Option<Vec<u8>> {
    let id = entity_id?;
    Some(format!("{}/{id}", entity_type.unwrap_or("")).into_bytes())
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// CRC-32 (IEEE), as librdkafka's `consistent` partitioner uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The partition (of `partitions`, > 0) a key goes to.
pub fn partition(partitioner: Partitioner, key: &[u8], partitions: usize) -> usize {
    let n = partitions.max(1) as u64;
    match partitioner {
        Partitioner::Murmur2 => ((murmur2(key) as u32 & 0x7fff_ffff) as u64 % n) as usize,
        Partitioner::Crc32 => (crc32(key) as u64 % n) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // the values of Kafka's own UtilsTest
        for (input, expected) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(input.as_bytes()), expected, "{input}");
        }
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        for p in [Partitioner::Murmur2, Partitioner::Crc32] {
            let a = partition(p, b"invoice/INV-1", 6);
            assert!(a < 6);
            assert_eq!(a, partition(p, b"invoice/INV-1", 6));
        }
    }

    #[test]
    fn urls_parse_with_their_options() {
        let t = parse("kafka://127.0.0.1:19092/erp.events").unwrap();
        assert_eq!(t.brokers, ["127.0.0.1:19092"]);
        assert_eq!(t.topic, "erp.events");
        assert!(!t.tls && t.sasl.is_none());
        assert_eq!(
            (t.compression, t.partitioner),
            (Compression::None, Partitioner::Murmur2)
        );
        assert_eq!((t.client_id.as_str(), t.linger_ms), ("event_bus", 5));

        let t = parse(
            "kafkas://app:p%40ss@b1.example,b2.example:9093,[::1]/events.{event_type}\
             ?sasl=scram-sha-512&compression=zstd&partitioner=crc32&client_id=erp-1&linger_ms=0",
        )
        .unwrap();
        assert_eq!(
            t.brokers,
            ["b1.example:9092", "b2.example:9093", "[::1]:9092"]
        );
        assert!(t.tls);
        assert_eq!(
            t.sasl,
            Some(Sasl {
                mechanism: SaslMechanism::ScramSha512,
                user: "app".into(),
                password: "p@ss".into()
            })
        );
        assert_eq!(
            (t.compression, t.partitioner),
            (Compression::Zstd, Partitioner::Crc32)
        );
        assert_eq!((t.client_id.as_str(), t.linger_ms), ("erp-1", 0));
        assert_eq!(
            t.topic_for("inventory:v2.updated", "inventory").unwrap(),
            "events.inventory_v2.updated"
        );
        assert_eq!(
            password("kafka://app:p%40ss@h/t"),
            Some(("p%40ss".into(), "p@ss".into()))
        );
        assert!(parse("kafka://u:secret@h/t").unwrap().sasl.is_some());
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for bad in [
            "kafka://u:secret@h",
            "kafka://u:secret@h/",
            "kafka://u:secret@h/a b",
            "kafka://u:secret@h/a/b",
            "kafka://u:secret@h/a%2Fb",
            "kafka://u:secret@h/a*",
            "kafka://u:secret@h,/t",
            "kafka://u:secret@h:notaport/t",
            "kafka://u:secret@/t",
            "kafka://u:secret@h/t?acks=1",
            "kafka://u:secret@h/t?sasl=gssapi",
            "kafka://u:secret@h/t?compression=brotli",
            "kafka://u:secret@h/t?partitioner=random",
            "kafka://u:secret@h/t?linger_ms=5000",
            "kafka://u:secret@h/t?client_id=a%20b",
            "kafka://u:secret@h/t?linger_ms=1&linger_ms=2",
            "kafka://u:secret@h/t#frag",
            "kafka://u:@h/t",
            "kafka://h/t?sasl=plain",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
        let long = format!("kafka://u:secret@h/{}", "x".repeat(250));
        assert!(!parse(&long).unwrap_err().contains("secret"));
        let t = parse("kafka://h/{event_type}").unwrap();
        assert!(t.topic_for(&"a".repeat(250), "m").is_err());
    }
}
