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
