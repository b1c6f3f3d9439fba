//! Validation of subscription targets, headers and secrets — pure Rust (no Postgres), shared by
//! the SQL functions (`_check_url`, `_check_headers`, `_check_secret`), the worker (which checks
//! rows again at claim time) and the fuzzers in `fuzz/`.

/// Pure URL rule shared by subscribe and the worker.
pub fn validate_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("it does not parse ({e})"))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {other:?} is not supported, only http and https"
            ))
        }
    }
    if parsed.host_str().map(|h| h.is_empty()).unwrap_or(true) {
        return Err("it has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("it carries credentials (user:password@); put them in a header instead".into());
    }
    if parsed.fragment().is_some() {
        return Err("it has a #fragment, which is never sent to a server".into());
    }
    Ok(())
}

/// Headers a subscription may not set because the worker owns them.
pub const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

pub fn validate_headers(v: &serde_json::Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| "headers must be a JSON object".to_string())?;
    for (name, value) in obj {
        let token_ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token_ok {
            return Err(format!("{name:?} is not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{name:?} is set by event_bus itself and cannot be overridden"
            ));
        }
        let s = value
            .as_str()
            .ok_or_else(|| format!("the value of {name:?} is not a string"))?;
        if s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!(
                "the value of {name:?} contains a line break or NUL"
            ));
        }
    }
    Ok(())
}

/// The HMAC key of a subscription secret.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    if let Some(b64) = secret.strip_prefix("whsec_") {
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the part after whsec_ is not base64 ({e})"))?;
        if key.len() < 24 || key.len() > 64 {
            return Err(format!("the key is {} bytes, expected 24 to 64", key.len()));
        }
        Ok(key)
    } else if secret.len() < 16 {
        Err(format!(
            "it is {} bytes, at least 16 are needed",
            secret.len()
        ))
    } else {
        Ok(secret.as_bytes().to_vec())
    }
}

#[cfg(test)]
mod pure_tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(validate_url("https://example.com/hook").is_ok());
        assert!(validate_url("http://127.0.0.1:8080/x?y=1").is_ok());
        assert!(validate_url("http://[::1]:8080/").is_ok());
        assert!(validate_url("ftp://example.com/")
            .unwrap_err()
            .contains("scheme"));
        assert!(validate_url("file:///etc/passwd")
            .unwrap_err()
            .contains("scheme"));
        assert!(validate_url("https://user:pw@example.com/")
            .unwrap_err()
            .contains("credentials"));
        assert!(validate_url("not a url").unwrap_err().contains("parse"));
        assert!(validate_url("https://example.com/#frag")
            .unwrap_err()
            .contains("fragment"));
    }

    #[test]
    fn headers() {
        assert!(validate_headers(&serde_json::json!({"Authorization": "Bearer x"})).is_ok());
        assert!(validate_headers(&serde_json::json!([])).is_err());
        assert!(validate_headers(&serde_json::json!({"Bad Name": "x"})).is_err());
        assert!(validate_headers(&serde_json::json!({"X": 1})).is_err());
        assert!(validate_headers(&serde_json::json!({"X": "a\r\nInjected: 1"})).is_err());
        assert!(validate_headers(&serde_json::json!({"webhook-id": "x"})).is_err());
    }
}

/// A message broker a subscription delivers to, from its handler URL (its kind is the scheme).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// AMQP 0-9-1 (RabbitMQ): `amqp[s]://user:password@host:port/vhost?exchange=NAME`.
    Amqp {
        /// The connection URI (scheme, credentials, host, port, vhost), without the query.
        uri: String,
        exchange: String,
    },
    /// NATS JetStream: `nats://[user:password@]host:port?subject=PREFIX` (`tls://` for TLS).
    Nats {
        /// host:port
        server: String,
        tls: bool,
        user: Option<String>,
        password: Option<String>,
        subject_prefix: String,
    },
    /// Kafka: `kafka[s]://[user:password@]host:port[,host:port]/TOPIC?...` ([`crate::kafka`]).
    Kafka(crate::kafka::KafkaTarget),
}

impl Broker {
    /// The kind stored in module_event_subscriptions.handler_kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Broker::Amqp { .. } => "amqp",
            Broker::Nats { .. } => "nats",
            Broker::Kafka(_) => "kafka",
        }
    }
}

/// Is this URL's scheme one of a broker (amqp, amqps, nats, tls, kafka, kafkas)?
pub fn is_broker_url(url: &str) -> bool {
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    [
        "amqp://",
        "amqps://",
        "nats://",
        "tls://",
        "kafka://",
        "kafkas://",
    ]
    .iter()
    .any(|s| lower.starts_with(s))
}

/// Is this a Kafka URL (kafka, kafkas)? Its messages travel in batches, one produce request per
/// partition carrying many of them.
pub fn is_kafka_url(url: &str) -> bool {
    let lower = url.get(..9).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("kafka://") || lower.starts_with("kafkas://")
}

pub(crate) fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Parse and check a broker URL: scheme, host, credentials, the one query parameter its kind
/// takes (AMQP `exchange`, NATS `subject`), nothing else. Errors never repeat the password.
pub fn parse_broker_url(url: &str) -> Result<Broker, String> {
    if crate::kafka::split_authority(url).is_some() {
        // (its own parser: a list of brokers is no URL authority)
        return crate::kafka::parse(url).map(Broker::Kafka);
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("it does not parse ({e})"))?;
    let scheme = parsed.scheme().to_string();
    let host = match parsed.host_str() {
        Some(h) if !h.is_empty() => h.to_string(),
        _ => return Err("it has no host".into()),
    };
    if parsed.fragment().is_some() {
        return Err("it has a #fragment".into());
    }
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if params.iter().any(|(name, _)| *name == k) {
            return Err(format!("query parameter {k:?} is given twice"));
        }
        params.push((k.into_owned(), v.into_owned()));
    }
    let take = |name: &str, params: &[(String, String)]| -> Result<String, String> {
        if let Some((unknown, _)) = params.iter().find(|(k, _)| k != name) {
            return Err(format!(
                "unknown query parameter {:?} (a {scheme}:// URL takes only {name}=...)",
                unknown.chars().take(100).collect::<String>()
            ));
        }
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("it names no {name} (add ?{name}=...)"))
    };
    match scheme.as_str() {
        "amqp" | "amqps" => {
            let exchange = take("exchange", &params)?;
            let valid = !exchange.is_empty()
                && exchange.len() <= 255
                && exchange
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !valid {
                return Err(format!(
                    "exchange {:?} is not a valid AMQP exchange name (1-255 letters, digits, '-', '_', '.', ':')",
                    exchange.chars().take(100).collect::<String>()
                ));
            }
            let path = parsed.path();
            if path.len() > 1 && path[1..].contains('/') {
                return Err("the path is the virtual host: one segment (encode '/' as %2f)".into());
            }
            let mut uri = parsed.clone();
            uri.set_query(None);
            Ok(Broker::Amqp {
                uri: uri.to_string(),
                exchange,
            })
        }
        "nats" | "tls" => {
            let subject_prefix = take("subject", &params)?;
            let valid = !subject_prefix.is_empty()
                && subject_prefix.len() <= 200
                && subject_prefix.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
                });
            if !valid {
                return Err(format!(
                    "subject {:?} is not a valid NATS subject prefix (dot-separated tokens of letters, digits, '-', '_'; no wildcards)",
                    subject_prefix.chars().take(100).collect::<String>()
                ));
            }
            if parsed.path() != "" && parsed.path() != "/" {
                return Err("a nats:// URL has no path".into());
            }
            let port = parsed.port().unwrap_or(4222);
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            Ok(Broker::Nats {
                server: format!("{host}:{port}"),
                tls: scheme == "tls",
                user: (!parsed.username().is_empty()).then(|| percent_decode(parsed.username())),
                password: parsed.password().map(percent_decode),
                subject_prefix,
            })
        }
        other => Err(format!(
            "scheme {other:?} is not a broker (amqp, amqps, nats, tls, kafka, kafkas)"
        )),
    }
}

/// The URL with its password replaced by `***`: for an error shown to the one who typed the URL
/// (subscribe's 22023), never for what others read (that is [`mask_url`]).
pub fn hide_password(url: &str) -> String {
    if let Some((scheme, userinfo, hosts)) = crate::kafka::split_authority(url) {
        let rest = &url[scheme.len() + 3..];
        let tail = &rest[rest.find(['/', '?', '#']).unwrap_or(rest.len())..];
        return match userinfo {
            Some(u) => {
                let user = u.split_once(':').map_or(u, |(user, _)| user);
                format!("{scheme}://{user}:***@{hosts}{tail}")
            }
            None => url.to_string(),
        };
    }
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(unparseable URL)".into(),
    }
}

/// What of a target URL may be shown to anyone who is not an admin: its scheme and host (and
/// port), never its user, password, path or query — webhook URLs often carry their secret in the
/// path (`/services/T0/B0/XXXX`) or the query (`?token=...`).
pub fn mask_url(url: &str) -> String {
    if let Some((scheme, _, hosts)) = crate::kafka::split_authority(url) {
        // (a list of brokers: each host and port)
        return match crate::kafka::parse(url) {
            Ok(t) => format!("{}://{}", scheme.to_ascii_lowercase(), t.brokers.join(",")),
            Err(_)
                if hosts
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:,[]".contains(c)) =>
            {
                format!("{}://{hosts}", scheme.to_ascii_lowercase())
            }
            Err(_) => "(unparseable URL)".into(),
        };
    }
    match url::Url::parse(url) {
        Ok(u) => match u.host_str() {
            Some(host) => match u.port() {
                Some(port) => format!("{}://{host}:{port}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            },
            None => format!("{}:", u.scheme()),
        },
        Err(_) => "(unparseable URL)".into(),
    }
}

/// Ends the part of a URL inside an error text: what a URL cannot hold unescaped, and the
/// brackets and quotes error messages put around one.
fn ends_url(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ')' | '(' | '"' | '\'' | '<' | '>' | '`' | '{' | '}' | '|' | '\\'
        )
}

/// `text` with every `scheme://...` in it cut to its scheme and host: user, password, path, query
/// and fragment go. For error texts from client libraries, which may quote the URL they were given
/// ("error sending request for url (http://h/hook?token=...)").
pub fn scrub_urls(text: &str) -> String {
    if !text.contains("://") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // the scheme: the letters, digits, '+', '-', '.' just before "://"
        let head = &rest[..at];
        let scheme_start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .last()
            .map(|(i, _)| i)
            .unwrap_or(at);
        out.push_str(&rest[..at + 3]);
        let after = &rest[at + 3..];
        // ... up to what cannot be in it, or a ':' that ends it ("amqp://h/v: refused")
        let end = after
            .char_indices()
            .find(|&(i, c)| {
                ends_url(c)
                    || (c == ':'
                        && after[i + 1..]
                            .chars()
                            .next()
                            .is_none_or(char::is_whitespace))
            })
            .map_or(after.len(), |(i, _)| i);
        let url_rest = &after[..end];
        if scheme_start == at {
            // no scheme before it: not a URL, keep it as it is
            out.push_str(url_rest);
        } else {
            let authority_end = url_rest.find(['/', '?', '#']).unwrap_or(url_rest.len());
            let authority = &url_rest[..authority_end];
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            out.push_str(host);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `text` (an error or a response excerpt of an attempt at `target`) with no trace of the
/// target's secrets: every URL cut to scheme and host ([`scrub_urls`]), and the target's secret
/// parts replaced by `***` wherever they appear — of an HTTP target its user, password, path,
/// query and their longer parts (a server may echo its own path: "Cannot POST
/// /services/T0/B0/XXXX"), of a broker its password or token (its exchange or subject stays).
pub fn redact_target(text: &str, target: &str) -> String {
    let mut out = scrub_urls(text);
    if crate::kafka::split_authority(target).is_some() {
        // a Kafka target's secret is its password; its brokers and topic are not
        let mut secrets = vec![target.to_string()];
        if let Some((raw, decoded)) = crate::kafka::password(target) {
            secrets.push(raw);
            secrets.push(decoded);
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            out = out.replace(s.as_str(), "***");
        }
        return out;
    }
    let Ok(u) = url::Url::parse(target) else {
        return out;
    };
    let mut secrets: Vec<String> = Vec::new();
    let mut add = |s: &str, min: usize| {
        if s.len() >= min && !secrets.iter().any(|x| x == s) {
            secrets.push(s.to_string());
            let decoded = percent_decode(s);
            if decoded.len() >= min && decoded != s {
                secrets.push(decoded);
            }
        }
    };
    add(target, 1);
    if let Some(p) = u.password() {
        add(p, 1);
    }
    if is_broker_url(target) {
        // a broker's path and query name a vhost, an exchange or a subject, not a secret; its
        // credentials are the userinfo, and a user without a password is a NATS token
        if u.password().is_none() {
            add(u.username(), 1);
        }
    } else {
        add(u.username(), 3);
        if u.path() != "/" {
            add(u.path(), 2);
        }
        for segment in u.path().split('/') {
            add(segment, 8);
        }
        if let Some(q) = u.query() {
            add(q, 1);
            for pair in q.split('&') {
                add(pair.split_once('=').map_or(pair, |(_, v)| v), 6);
            }
        }
    }
    // the longest first, so a part never leaves a piece of a longer one behind
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in &secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// A response excerpt (JSON text) with the target's secrets redacted as [`redact_target`] does; still
/// JSON: where a replacement would break it, the redacted text is wrapped as `{"body": ..., "redacted":
/// true}`. Unchanged (no copy) when there was nothing to redact.
pub fn redact_response(response: String, target: &str) -> String {
    let clean = redact_target(&response, target);
    if clean == response || serde_json::from_str::<serde_json::Value>(&clean).is_ok() {
        clean
    } else {
        serde_json::json!({ "body": clean, "redacted": true }).to_string()
    }
}

#[cfg(test)]
mod broker_tests {
    use super::*;

    #[test]
    fn broker_urls_parse_and_bad_ones_say_why_without_the_password() {
        assert_eq!(
            parse_broker_url("amqp://u:secret@127.0.0.1:5672/%2f?exchange=erp.events").unwrap(),
            Broker::Amqp {
                uri: "amqp://u:secret@127.0.0.1:5672/%2f".into(),
                exchange: "erp.events".into()
            }
        );
        assert_eq!(
            parse_broker_url("nats://app:p%40ss@localhost:4333?subject=erp.events").unwrap(),
            Broker::Nats {
                server: "localhost:4333".into(),
                tls: false,
                user: Some("app".into()),
                password: Some("p@ss".into()),
                subject_prefix: "erp.events".into()
            }
        );
        assert!(matches!(
            parse_broker_url("tls://h?subject=a").unwrap(),
            Broker::Nats { tls: true, .. }
        ));
        for bad in [
            "amqp://u:secret@h/v",
            "amqp://u:secret@h/v?exchange=",
            "amqp://u:secret@h/v?exchange=a b",
            "amqp://u:secret@h/v?exchange=x&queue=y",
            "amqp://u:secret@h/v?exchange=x&exchange=y",
            "amqp://u:secret@h/a/b?exchange=x",
            "amqp://u:secret@/v?exchange=x",
            "nats://u:secret@h",
            "nats://u:secret@h?subject=a.*",
            "nats://u:secret@h?subject=a..b",
            "nats://u:secret@h/path?subject=a",
            "nats://u:secret@h?subject=a#frag",
        ] {
            let e = parse_broker_url(bad).unwrap_err();
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
        assert_eq!(mask_url("amqp://u:secret@h/v?exchange=x"), "amqp://h");
        assert_eq!(
            hide_password("amqp://u:secret@h/v?exchange=x"),
            "amqp://u:***@h/v?exchange=x"
        );
        assert_eq!(
            mask_url("https://u:p@hooks.example:8443/services/T0/B0/XXXX?token=t"),
            "https://hooks.example:8443"
        );
        assert!(is_broker_url("AMQPS://h?exchange=x") && !is_broker_url("https://h"));
        assert!(is_broker_url("kafkas://h/t") && is_broker_url("KAFKA://h/t"));
        let kafka = "kafka://app:s%40cret@b1:9092,b2:9093/erp.events?sasl=scram-sha-256";
        assert_eq!(parse_broker_url(kafka).unwrap().kind(), "kafka");
        assert_eq!(mask_url(kafka), "kafka://b1:9092,b2:9093");
        assert_eq!(
            hide_password(kafka),
            "kafka://app:***@b1:9092,b2:9093/erp.events?sasl=scram-sha-256"
        );
        let e = redact_target(
            "auth failed for app with s@cret (s%40cret) at kafka://app:s%40cret@b1:9092",
            kafka,
        );
        assert!(!e.contains("cret"), "{e}");
        assert!(e.contains("b1:9092"), "{e}");
    }
}

#[cfg(test)]
mod redact_tests {
    use super::*;

    #[test]
    fn urls_in_error_texts_keep_only_scheme_and_host() {
        assert_eq!(
            scrub_urls("error sending request for url (http://127.0.0.1:9/hook?token=SECRET): connection refused"),
            "error sending request for url (http://127.0.0.1:9): connection refused"
        );
        assert_eq!(
            scrub_urls(
                "cannot connect to amqp://user:pw@rabbit:5672/%2f and nats://a:b@n:4222 too"
            ),
            "cannot connect to amqp://rabbit:5672 and nats://n:4222 too"
        );
        assert_eq!(
            scrub_urls("cannot connect to amqp://u:pw@h:5672/%2f: refused"),
            "cannot connect to amqp://h:5672: refused"
        );
        assert_eq!(scrub_urls("no url here: a://"), "no url here: a://");
        assert_eq!(scrub_urls("://x/y"), "://x/y");
        assert_eq!(scrub_urls("HTTP 500"), "HTTP 500");
        assert_eq!(
            scrub_urls("for url (http://[::1]:8080/hook?token=SECRET)"),
            "for url (http://[::1]:8080)"
        );
        // multi-byte text around it stays whole
        assert_eq!(scrub_urls("ž https://h/ž?x=ž ž"), "ž https://h ž");
    }

    #[test]
    fn a_target_s_secret_parts_never_survive() {
        let target = "https://hook:p%40ss@hooks.example/services/T0AAAA/B0BBBBBB/XXXXXXXXXXXX?token=SECRET123";
        for text in [
            "Cannot POST /services/T0AAAA/B0BBBBBB/XXXXXXXXXXXX",
            "bad token SECRET123 for XXXXXXXXXXXX",
            "{\"url\": \"https://hook:p%40ss@hooks.example/services/T0AAAA/B0BBBBBB/XXXXXXXXXXXX?token=SECRET123\"}",
            "user hook password p@ss",
        ] {
            let out = redact_target(text, target);
            for secret in ["XXXXXXXXXXXX", "SECRET123", "p@ss", "p%40ss", "B0BBBBBB"] {
                assert!(!out.contains(secret), "{text} -> {out}");
            }
        }
        assert_eq!(redact_target("HTTP 503", "https://h/"), "HTTP 503");
        // a broker's exchange or subject is no secret; its password and token are
        assert_eq!(
            redact_target(
                "no JetStream stream captures subject archive.invoice.posted (token s3cr3t-token)",
                "nats://s3cr3t-token@127.0.0.1:4222?subject=archive"
            ),
            "no JetStream stream captures subject archive.invoice.posted (token ***)"
        );
        assert_eq!(
            redact_target(
                "amqp://u:pw@h refused pw",
                "amqp://u:pw@h/v?exchange=erp.events"
            ),
            "amqp://h refused ***"
        );
        assert_eq!(
            redact_target("{\"ok\":true}", "http://127.0.0.1:8080/hook"),
            "{\"ok\":true}"
        );
        // a response excerpt stays JSON, whatever was cut out of it
        let target = "https://h/hook/SECRETSECRET?token=abcdefgh";
        let echoed = redact_response(
            "{\"body\": \"Cannot POST /hook/SECRETSECRET?token=abcdefgh\"}".into(),
            target,
        );
        assert!(
            !echoed.contains("SECRETSECRET") && !echoed.contains("abcdefgh"),
            "{echoed}"
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&echoed).is_ok(),
            "{echoed}"
        );
        assert_eq!(
            redact_response("{\"ok\":true}".into(), target),
            "{\"ok\":true}"
        );
    }
}
