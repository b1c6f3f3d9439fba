//! The pattern grammar and matcher: never panics, and on valid input agrees with the naive
//! recursive definition of AMQP topic matching.
#![no_main]

use event_bus_core::matcher;

use libfuzzer_sys::fuzz_target;

fn reference(p: &[&str], t: &[&str]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((&"#", rest)) => (0..=t.len()).any(|k| reference(rest, &t[k..])),
        Some((&"*", rest)) => !t.is_empty() && reference(rest, &t[1..]),
        Some((lit, rest)) => !t.is_empty() && t[0] == *lit && reference(rest, &t[1..]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (pattern, event_type) = text.split_once('\n').unwrap_or((text, text));
    let pattern_ok = matcher::validate_pattern(pattern).is_ok();
    let type_ok = matcher::validate_event_type(event_type).is_ok();
    let m = matcher::matches(pattern, event_type);
    if pattern_ok && type_ok {
        let p: Vec<&str> = pattern.split('.').collect();
        let t: Vec<&str> = event_type.split('.').collect();
        // the reference is exponential in '#'s: compare where it stays cheap
        if p.iter().filter(|s| **s == "#").count() <= 4 && t.len() <= 16 {
            assert_eq!(m, reference(&p, &t), "{pattern:?} vs {event_type:?}");
        }
        assert!(matcher::matches("#", event_type));
        // a concrete event type is a pattern matching exactly itself
        assert!(matcher::validate_pattern(event_type).is_ok());
        assert!(matcher::matches(event_type, event_type));
    }
    if type_ok {
        // event types never contain wildcards, and never exceed the limit
        assert!(!event_type.split('.').any(|s| s == "*" || s == "#"));
        assert!(event_type.len() <= matcher::MAX_LEN);
    }
});
