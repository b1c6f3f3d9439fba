//! Event types and subscription patterns — pure Rust, no Postgres.
//!
//! Grammar (AMQP topic rules):
//! - an **event type** is one or more segments separated by `.`; a segment is one or more of
//!   `A-Z a-z 0-9 _ - :`; at most [`MAX_LEN`] bytes in all (`invoice.posted`, `pos.transaction_completed`);
//! - a **pattern** is one or more segments separated by `.`, where a segment is either a literal
//!   segment as above, `*` (exactly one segment) or `#` (zero or more segments). A wildcard must be a
//!   whole segment: `inv*.posted` is rejected.
//!
//! `invoice.*` matches `invoice.posted` but not `invoice` or `invoice.line.added`;
//! `invoice.#` matches all three; `#` matches every event type.

use std::fmt;

/// Longest event type or pattern accepted, in bytes.
pub const MAX_LEN: usize = 255;

/// Why a string is not a valid event type or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrammarError {
    Empty,
    TooLong(usize),
    EmptySegment(usize),
    BadChar { segment: usize, ch: char },
    PartialWildcard(usize),
    WildcardInEventType(usize),
}

impl fmt::Display for GrammarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrammarError::Empty => write!(f, "it is empty"),
            GrammarError::TooLong(n) => write!(f, "it is {n} bytes long, the limit is {MAX_LEN}"),
            GrammarError::EmptySegment(i) => {
                write!(f, "segment {} is empty (leading, trailing or doubled '.')", i + 1)
            }
            GrammarError::BadChar { segment, ch } => {
                write!(f, "segment {} contains {:?}, which is not allowed", segment + 1, ch)
            }
            GrammarError::PartialWildcard(i) => write!(
                f,
                "segment {} mixes a wildcard with other characters; '*' and '#' must be whole segments",
                i + 1
            ),
            GrammarError::WildcardInEventType(i) => write!(
                f,
                "segment {} is a wildcard; event types are concrete, only subscription patterns may use '*' or '#'",
                i + 1
            ),
        }
    }
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == ':'
}

fn check_length(s: &str) -> Result<(), GrammarError> {
    if s.is_empty() {
        return Err(GrammarError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(GrammarError::TooLong(s.len()));
    }
    Ok(())
}

fn check_literal(seg: &str, i: usize) -> Result<(), GrammarError> {
    if seg.is_empty() {
        return Err(GrammarError::EmptySegment(i));
    }
    if let Some(ch) = seg.chars().find(|c| !is_segment_char(*c)) {
        if ch == '*' || ch == '#' {
            return Err(GrammarError::PartialWildcard(i));
        }
        return Err(GrammarError::BadChar { segment: i, ch });
    }
    Ok(())
}

/// Checks that `s` is a concrete event type.
pub fn validate_event_type(s: &str) -> Result<(), GrammarError> {
    check_length(s)?;
    for (i, seg) in s.split('.').enumerate() {
        if seg == "*" || seg == "#" {
            return Err(GrammarError::WildcardInEventType(i));
        }
        check_literal(seg, i)?;
    }
    Ok(())
}

/// Checks that `s` is a valid subscription pattern.
pub fn validate_pattern(s: &str) -> Result<(), GrammarError> {
    check_length(s)?;
    for (i, seg) in s.split('.').enumerate() {
        if seg == "*" || seg == "#" {
            continue;
        }
        check_literal(seg, i)?;
    }
    Ok(())
}

/// Does `pattern` match `event_type`? Invalid input never matches.
pub fn matches(pattern: &str, event_type: &str) -> bool {
    if validate_pattern(pattern).is_err() || validate_event_type(event_type).is_err() {
        return false;
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = event_type.split('.').collect();
    match_segments(&p, &t)
}

/// Iterative matcher with single backtrack point per `#` (like glob matching): O(len(p) * len(t)).
fn match_segments(p: &[&str], t: &[&str]) -> bool {
    // dp[j] = does p[..i] match t[..j]
    let mut dp = vec![false; t.len() + 1];
    dp[0] = true;
    for seg in p {
        let mut next = vec![false; t.len() + 1];
        match *seg {
            "#" => {
                // zero or more: next[j] = any dp[k] for k <= j
                let mut any = false;
                for j in 0..=t.len() {
                    any |= dp[j];
                    next[j] = any;
                }
            }
            "*" => {
                for j in 1..=t.len() {
                    next[j] = dp[j - 1];
                }
            }
            lit => {
                for j in 1..=t.len() {
                    next[j] = dp[j - 1] && t[j - 1] == lit;
                }
            }
        }
        dp = next;
    }
    dp[t.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("invoice.posted", "invoice.posted", true),
            ("invoice.posted", "invoice.voided", false),
            ("invoice.*", "invoice.posted", true),
            ("invoice.*", "invoice", false),
            ("invoice.*", "invoice.line.added", false),
            ("invoice.#", "invoice", true),
            ("invoice.#", "invoice.posted", true),
            ("invoice.#", "invoice.line.added", true),
            ("invoice.#", "invoices.posted", false),
            ("#", "anything.at.all", true),
            ("#", "x", true),
            ("*", "x", true),
            ("*", "x.y", false),
            ("*.posted", "invoice.posted", true),
            ("*.posted", "bill.posted", true),
            ("*.posted", "invoice.line.posted", false),
            ("#.posted", "invoice.line.posted", true),
            ("#.posted", "posted", true),
            ("#.posted", "posted.not", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("#.#", "a", true),
            ("#.*", "a", true),
            ("#.*", "a.b.c", true),
            ("*.#.*", "a", false),
            ("*.#.*", "a.b", true),
            ("a.*.#", "a.b", true),
            ("a.*.#", "a", false),
            ("Invoice.posted", "invoice.posted", false),
            (
                "inventory:product.created",
                "inventory:product.created",
                true,
            ),
            (
                "pos.transaction_completed",
                "pos.transaction_completed",
                true,
            ),
            // invalid input never matches
            ("inv*.posted", "inv.posted", false),
            ("invoice..posted", "invoice..posted", false),
            ("invoice.*", "invoice.*", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(matches(p, t), *want, "matches({p:?}, {t:?})");
        }
    }

    #[test]
    fn event_type_validation() {
        assert!(validate_event_type("invoice.posted").is_ok());
        assert!(validate_event_type("a").is_ok());
        assert!(validate_event_type("sales_order.confirmed-v2").is_ok());
        assert_eq!(validate_event_type(""), Err(GrammarError::Empty));
        assert_eq!(
            validate_event_type(".a"),
            Err(GrammarError::EmptySegment(0))
        );
        assert_eq!(
            validate_event_type("a."),
            Err(GrammarError::EmptySegment(1))
        );
        assert_eq!(
            validate_event_type("a..b"),
            Err(GrammarError::EmptySegment(1))
        );
        assert_eq!(
            validate_event_type("a.*"),
            Err(GrammarError::WildcardInEventType(1))
        );
        assert_eq!(
            validate_event_type("a b"),
            Err(GrammarError::BadChar {
                segment: 0,
                ch: ' '
            })
        );
        assert_eq!(
            validate_event_type("a.é"),
            Err(GrammarError::BadChar {
                segment: 1,
                ch: 'é'
            })
        );
        assert_eq!(
            validate_event_type("a;drop"),
            Err(GrammarError::BadChar {
                segment: 0,
                ch: ';'
            })
        );
        let long = "a".repeat(MAX_LEN + 1);
        assert_eq!(
            validate_event_type(&long),
            Err(GrammarError::TooLong(MAX_LEN + 1))
        );
        assert!(validate_event_type(&"a".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn pattern_validation() {
        for ok in ["#", "*", "a.*", "a.#", "*.b", "#.b.*", "a.b.c"] {
            assert!(validate_pattern(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            validate_pattern("inv*"),
            Err(GrammarError::PartialWildcard(0))
        );
        assert_eq!(
            validate_pattern("a.#b"),
            Err(GrammarError::PartialWildcard(1))
        );
        assert_eq!(validate_pattern("a..#"), Err(GrammarError::EmptySegment(1)));
        assert_eq!(validate_pattern(""), Err(GrammarError::Empty));
        assert_eq!(
            validate_pattern("a.%"),
            Err(GrammarError::BadChar {
                segment: 1,
                ch: '%'
            })
        );
    }

    #[test]
    fn messages_name_the_problem() {
        let e = validate_pattern("inv*.posted").unwrap_err().to_string();
        assert!(e.contains("whole segments"), "{e}");
        let e = validate_event_type("a..b").unwrap_err().to_string();
        assert!(e.contains("segment 2 is empty"), "{e}");
    }

    /// `matches` agrees with a naive recursive definition on every short pattern/type pair.
    #[test]
    fn agrees_with_reference_definition() {
        fn reference(p: &[&str], t: &[&str]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((&"#", rest)) => (0..=t.len()).any(|k| reference(rest, &t[k..])),
                Some((&"*", rest)) => !t.is_empty() && reference(rest, &t[1..]),
                Some((lit, rest)) => !t.is_empty() && t[0] == *lit && reference(rest, &t[1..]),
            }
        }
        let alphabet = ["a", "b", "*", "#"];
        let mut patterns = vec![];
        for n in 1..=4 {
            let mut idx = vec![0usize; n];
            loop {
                patterns.push(idx.iter().map(|i| alphabet[*i]).collect::<Vec<_>>());
                let mut k = 0;
                while k < n {
                    idx[k] += 1;
                    if idx[k] < alphabet.len() {
                        break;
                    }
                    idx[k] = 0;
                    k += 1;
                }
                if k == n {
                    break;
                }
            }
        }
        let types: Vec<Vec<&str>> = patterns
            .iter()
            .filter(|p| p.iter().all(|s| *s == "a" || *s == "b"))
            .cloned()
            .collect();
        for p in &patterns {
            for t in &types {
                assert_eq!(
                    matches(&p.join("."), &t.join(".")),
                    reference(p, t),
                    "{} vs {}",
                    p.join("."),
                    t.join(".")
                );
            }
        }
    }
}
