//! What subscribe and the worker validate (URLs, headers, secrets, the network allow-list) and
//! emit's event-type check: never panics, and what is accepted has the promised shape.
#![no_main]

use event_bus_core::{matcher, netpolicy, validate};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = matcher::validate_event_type(text);
    if validate::validate_url(text).is_ok() {
        let u = url::Url::parse(text).expect("accepted URLs parse");
        assert!(matches!(u.scheme(), "http" | "https"));
        assert!(u.username().is_empty() && u.password().is_none() && u.fragment().is_none());
        assert!(u.host_str().is_some_and(|h| !h.is_empty()));
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        if validate::validate_headers(&v).is_ok() {
            for (k, val) in v.as_object().expect("accepted headers are an object") {
                let s = val.as_str().expect("accepted header values are strings");
                assert!(!s.contains(['\r', '\n', '\0']), "{k}");
                assert!(!validate::RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()));
            }
        }
    }
    if let Ok(key) = validate::secret_key(text) {
        assert!(key.len() >= 16 && key.len() <= text.len().max(64));
    }
    if let Ok(nets) = netpolicy::Networks::parse(text) {
        let _ = nets.allows("127.0.0.1".parse().unwrap());
        let _ = nets.allows("::1".parse().unwrap());
    }
});
