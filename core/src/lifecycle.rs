//! The delivery lifecycle, declared once: a delivery's states, who moves it from which to which, the rules
//! the transitions share, the circuit breaker's arithmetic and defaults, and the lease's.
//!
//! Everything else is checked against this module by a test:
//! - the SQL side, `sql/lifecycle.sql` (its rule functions and the views `delivery_states` /
//!   `delivery_transitions`) and the CHECK constraint and partial indexes of `module_event_deliveries`
//!   (`sql/tables.sql`): `src/lifecycle_tests.rs`, a `#[pg_test]` that reads them from the installed extension;
//! - the diagram in `docs/src/concepts/delivery.md`: [`mermaid`] renders it, the test below compares;
//! - the settings' defaults (`src/guc.rs` takes them from [`breaker`] and [`lease`]).
//!
//! A new state or transition goes here first; the tests then say every place that must follow.

/// The state of one delivery (one event on its way to one subscription): the value of
/// `module_event_deliveries.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeliveryState {
    /// Due at `next_attempt_at`.
    Pending,
    /// Leased to a worker until `next_attempt_at`.
    Processing,
    /// Its subscription's circuit breaker is open.
    Held,
    /// An ordered delivery behind an earlier unfinished or dead one of the same entity.
    Waiting,
    /// The handler succeeded.
    Completed,
    /// Dead: its retries ran out. Listed by `event_bus.dead_letters`.
    Failed,
    /// Given up by an operator.
    Skipped,
}

use DeliveryState::*;

impl DeliveryState {
    /// Every state, in the order `event_bus.delivery_states` lists them.
    pub const ALL: [DeliveryState; 7] = [
        Pending, Processing, Held, Waiting, Completed, Failed, Skipped,
    ];

    /// The name stored in `status` and shown everywhere (SQL, console, API).
    pub const fn name(self) -> &'static str {
        match self {
            Pending => "pending",
            Processing => "processing",
            Held => "held",
            Waiting => "waiting",
            Completed => "completed",
            Failed => "failed",
            Skipped => "skipped",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Finished: no attempt is owed any more (only an operator's retry or replay moves it again).
    pub const fn finished(self) -> bool {
        matches!(self, Completed | Failed | Skipped)
    }

    /// Holds back the later deliveries of its ordered stream: unfinished, or dead (the stream parks
    /// until the dead delivery is retried or skipped).
    pub const fn blocks_stream(self) -> bool {
        !self.finished() || matches!(self, Failed)
    }

    /// What the state means, as `event_bus.delivery_states` says it.
    pub const fn meaning(self) -> &'static str {
        match self {
            Pending => "Due at next_attempt_at: queued by the fan-out, a retry waiting out its backoff, or released.",
            Processing => "Leased to a worker until next_attempt_at: an attempt is under way; an expired lease makes it due again.",
            Held => "Its subscription's circuit breaker is open: waits for the breaker to close.",
            Waiting => "An ordered delivery behind an earlier unfinished or dead delivery of the same entity.",
            Completed => "The handler succeeded (or the idempotency key said it already had).",
            Failed => "Dead: its retries ran out; an ordered stream parks behind it.",
            Skipped => "Given up by an operator (skip_delivery), so its ordered stream goes on.",
        }
    }

    /// The state the fan-out creates a delivery in: held while its subscription's breaker is open,
    /// pending when queued for a later claim (a limited subscription, or a full share), else processing
    /// (leased at once to the fanning-out worker). SQL: `event_bus._first_state(held, queued)`.
    pub const fn first(held: bool, queued: bool) -> Self {
        if held {
            Held
        } else if queued {
            Pending
        } else {
            Processing
        }
    }

    /// The state of a delivery made due again (retry, replay, a stream moving on): held while its
    /// breaker is open, else pending. SQL: `event_bus._due_state(held)`.
    pub const fn due(held: bool) -> Self {
        Self::first(held, true)
    }
}

/// An event's status (`module_events.status`), derived from its deliveries by
/// `event_bus._refresh_event_status`: pending (none attempted), processing (attempted, some unfinished),
/// completed (every delivery completed or skipped, or none matched), failed (all finished, one dead).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

impl EventStatus {
    pub const ALL: [EventStatus; 4] = [
        EventStatus::Pending,
        EventStatus::Processing,
        EventStatus::Completed,
        EventStatus::Failed,
    ];

    /// The name stored in `module_events.status`: the same word as the delivery state it follows.
    pub const fn name(self) -> &'static str {
        match self {
            EventStatus::Pending => Pending.name(),
            EventStatus::Processing => Processing.name(),
            EventStatus::Completed => Completed.name(),
            EventStatus::Failed => Failed.name(),
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// An attempt's outcome in the attempt log (`module_event_logs.status`).
pub const ATTEMPT_OUTCOMES: [&str; 2] = ["success", Failed.name()];

/// Every status word a statement may compare a `status` column with, by where it appears in `text`
/// (`status = 'x'`, `status <> 'x'`, `status IN ('x', ...)`, `status = CASE ... THEN 'x' ... END`), with
/// the ones no state, event status or attempt outcome declares. Used by the test that reads every SQL
/// source and statement: a misspelt or retired state name cannot hide in one of them.
pub fn undeclared_status_words(text: &str) -> Vec<String> {
    let declared = |w: &str| {
        DeliveryState::from_name(w).is_some()
            || EventStatus::from_name(w).is_some()
            || ATTEMPT_OUTCOMES.contains(&w)
    };
    let quoted_words = |s: &str| -> Vec<String> {
        s.split('\'')
            .skip(1)
            .step_by(2)
            // a word (not a placeholder of a format string or an expression)
            .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .map(str::to_string)
            .collect()
    };
    let mut bad = Vec::new();
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(i) = text[from..].find("status") {
        let at = from + i;
        from = at + "status".len();
        let before_ok =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let after = &text[from..];
        let after_ok = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if !before_ok || !after_ok {
            continue;
        }
        let rest = after.trim_start();
        let words = if let Some(r) = rest.strip_prefix("<>").or_else(|| rest.strip_prefix('=')) {
            let r = r.trim_start();
            if r.starts_with('\'') {
                quoted_words(&r[..r[1..].find('\'').map_or(r.len(), |e| e + 2)])
            } else if r.starts_with("CASE") {
                let case = &r[..r.find("END").unwrap_or(r.len())];
                let mut ws = Vec::new();
                for part in case.split("THEN").skip(1).chain(case.split("ELSE").skip(1)) {
                    let p = part.trim_start();
                    if p.starts_with('\'') {
                        ws.extend(quoted_words(
                            &p[..p[1..].find('\'').map_or(p.len(), |e| e + 2)],
                        ));
                    }
                }
                ws
            } else {
                vec![]
            }
        } else if let Some(r) = rest
            .strip_prefix("IN")
            .or_else(|| rest.strip_prefix("NOT IN"))
        {
            let r = r.trim_start();
            match (r.starts_with("('"), r.find(')')) {
                (true, Some(end)) => quoted_words(&r[..end]),
                _ => vec![],
            }
        } else {
            vec![]
        };
        bad.extend(words.into_iter().filter(|w| !declared(w)));
    }
    bad
}

/// The unfinished states, in the order `event_bus._unfinished_states()` returns them.
pub fn unfinished() -> Vec<DeliveryState> {
    DeliveryState::ALL
        .into_iter()
        .filter(|s| !s.finished())
        .collect()
}

/// The states that hold an ordered stream back (`event_bus._stream_blocking_states()`).
pub fn stream_blocking() -> Vec<DeliveryState> {
    DeliveryState::ALL
        .into_iter()
        .filter(|s| s.blocks_stream())
        .collect()
}

/// What the claim takes: due deliveries (`pending`) and those whose lease ran out (`processing`), read
/// through the due index (`module_event_deliveries_due_idx`, whose predicate names these states).
pub const CLAIMABLE: [DeliveryState; 2] = [Pending, Processing];

/// A statement or SQL source with its states named from this module. Markers become quoted SQL literals:
/// `<pending>`, `<processing>`, ... (each delivery state, and each event status by the same word), and
/// lists for the rules: `<claimable>` ([`CLAIMABLE`]), `<unfinished>`, `<finished>`, `<stream_blocking>`,
/// `<delivery_states>` (all), `<event_statuses>`, `<attempt_outcomes>`. Literals, not parameters: the
/// planner must see the constants to use the partial indexes keyed on states. Any other `<word>` is kept
/// as it is (SQL has `<` and `<>`; comments say `<path>`), so a misspelt marker reaches PostgreSQL and
/// fails there at once.
pub fn sql(template: &str) -> String {
    let quoted = |names: &mut dyn Iterator<Item = &'static str>| -> String {
        names
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let word_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(after.len());
        let word = &after[..word_len];
        let expanded = if word_len > 0 && after[word_len..].starts_with('>') {
            match word {
                "claimable" => Some(quoted(&mut CLAIMABLE.iter().map(|s| s.name()))),
                "unfinished" => Some(quoted(&mut unfinished().into_iter().map(|s| s.name()))),
                "finished" => Some(quoted(
                    &mut DeliveryState::ALL
                        .into_iter()
                        .filter(|s| s.finished())
                        .map(|s| s.name()),
                )),
                "stream_blocking" => {
                    Some(quoted(&mut stream_blocking().into_iter().map(|s| s.name())))
                }
                "delivery_states" => Some(quoted(
                    &mut DeliveryState::ALL.into_iter().map(|s| s.name()),
                )),
                "event_statuses" => {
                    Some(quoted(&mut EventStatus::ALL.into_iter().map(|s| s.name())))
                }
                "attempt_outcomes" => Some(quoted(&mut ATTEMPT_OUTCOMES.into_iter())),
                w => DeliveryState::from_name(w).map(|s| format!("'{}'", s.name())),
            }
        } else {
            None
        };
        match expanded {
            Some(text) => {
                out.push_str(&text);
                rest = &after[word_len + 1..];
            }
            None => {
                // an operator (<, <=, <>), a word that names no state, anything else: kept
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Who moves a delivery: from any of `from` (empty: the delivery is created) to one of `to` (empty: it
/// is deleted), on what occasion (`moved_by`), through which code (`via`).
#[derive(Debug)]
pub struct Transition {
    /// A short name for the diagram.
    pub label: &'static str,
    pub from: &'static [DeliveryState],
    pub to: &'static [DeliveryState],
    pub moved_by: &'static str,
    pub via: &'static str,
}

/// Every transition, in the order `event_bus.delivery_transitions` lists them.
pub const TRANSITIONS: &[Transition] = &[
    Transition {
        label: "fan-out",
        from: &[],
        to: &[Processing, Pending, Held, Waiting],
        moved_by: "the worker's fan-out of a new event",
        via: "the worker (event_bus._first_state)",
    },
    Transition {
        label: "claim",
        from: &[Pending, Processing],
        to: &[Processing],
        moved_by: "the worker's claim of a due delivery (or an expired lease)",
        via: "the worker",
    },
    Transition {
        label: "record",
        from: &[Processing],
        to: &[Completed, Pending, Failed],
        moved_by: "the worker's record of an attempt's outcome",
        via: "the worker (event_bus._record_subscription_outcomes, event_bus._advance_streams)",
    },
    Transition {
        label: "release",
        from: &[Processing],
        to: &[Pending],
        moved_by: "a worker shutting down hands its leases back",
        via: "the worker",
    },
    Transition {
        label: "breaker opens",
        from: &[Pending],
        to: &[Held],
        moved_by: "the circuit breaker opening",
        via: "event_bus._hold",
    },
    Transition {
        label: "breaker closes",
        from: &[Held],
        to: &[Pending],
        moved_by: "the circuit breaker closing, or reset_breaker",
        via: "event_bus._release",
    },
    Transition {
        label: "stream moves on",
        from: &[Waiting],
        to: &[Pending, Held],
        moved_by: "the delivery ahead of it in its stream finishing",
        via: "event_bus._advance_streams",
    },
    Transition {
        label: "retry / replay",
        from: &[Completed, Failed, Skipped],
        to: &[Pending, Held, Waiting],
        moved_by: "retry_event, retry_failed, replay_events",
        via: "event_bus._rearm",
    },
    Transition {
        label: "skip",
        from: &[Failed],
        to: &[Skipped],
        moved_by: "skip_delivery (an ordered stream goes on)",
        via: "event_bus.skip_delivery",
    },
    Transition {
        label: "unsubscribe",
        from: &[Pending, Processing, Held, Waiting],
        to: &[],
        moved_by: "unsubscribe, or a DELETE of the subscription",
        via: "event_bus._subscriptions_deleted",
    },
    Transition {
        label: "retention",
        from: &[Completed, Skipped],
        to: &[],
        moved_by: "retention (event_bus.retention) or purge_completed: a completed event's deliveries go with it",
        via: "event_bus.purge_completed",
    },
];

/// The lifecycle as a mermaid state diagram (in `docs/src/concepts/delivery.md`).
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n");
    for s in DeliveryState::ALL {
        out.push_str(&format!(
            "    {}: {}{}\n",
            s.name(),
            s.name(),
            match s {
                DeliveryState::Failed => " (finished: dead)",
                _ if s.finished() => " (finished)",
                _ => "",
            }
        ));
    }
    for t in TRANSITIONS {
        let from: Vec<&str> = if t.from.is_empty() {
            vec!["[*]"]
        } else {
            t.from.iter().map(|s| s.name()).collect()
        };
        let to: Vec<&str> = if t.to.is_empty() {
            vec!["[*]"]
        } else {
            t.to.iter().map(|s| s.name()).collect()
        };
        for f in &from {
            for d in &to {
                if f != d {
                    out.push_str(&format!("    {f} --> {d}: {}\n", t.label));
                }
            }
        }
    }
    out
}

/// The circuit breaker: after `threshold` consecutive failed attempts a subscription's deliveries are held
/// and one probe is sent when the cool-down ends. SQL: `event_bus._record_subscription_outcomes`.
pub mod breaker {
    /// `event_bus.breaker_threshold`'s default (0 = never open).
    pub const THRESHOLD_DEFAULT: i32 = 50;
    /// `event_bus.breaker_cooldown_ms`'s default: the longest an open breaker holds deliveries.
    pub const COOLDOWN_MS_DEFAULT: i32 = 60_000;
    /// How long a breaker first opens for.
    pub const FIRST_OPEN_MS: i64 = 1_000;

    /// Whether `consecutive_failures` open (or re-open) a breaker with this threshold.
    pub const fn opens(consecutive_failures: i64, threshold: i32) -> bool {
        threshold > 0 && consecutive_failures >= threshold as i64
    }

    /// How long a breaker opens for: a second the first time; after a failed probe, as long as the
    /// endpoint has been failing so far (so about doubling), at most the cool-down.
    pub fn open_for_ms(failing_for_ms: Option<i64>, cooldown_ms: i32) -> i64 {
        (cooldown_ms as i64).min(FIRST_OPEN_MS.max(failing_for_ms.unwrap_or(0)))
    }
}

/// Leases: a claimed delivery belongs to its worker until `now() + lease`, after which any worker may
/// claim it again (its worker died).
pub mod lease {
    /// `event_bus.lease_ms`'s default: the margin a lease adds to the request's timeout.
    pub const MARGIN_MS_DEFAULT: i32 = 10_000;

    /// The lease of one claim: the subscription's timeout (or the default) plus the margin.
    pub fn lease_ms(timeout_ms: Option<i32>, default_timeout_ms: i32, margin_ms: i32) -> i64 {
        timeout_ms.unwrap_or(default_timeout_ms) as i64 + margin_ms as i64
    }

    /// How long a claimed delivery may wait in the worker before it is handed back: half the margin,
    /// so it goes back well before its lease ends.
    pub fn stale_after_ms(margin_ms: i32) -> u64 {
        (margin_ms.max(100) / 2) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for s in DeliveryState::ALL {
            assert_eq!(DeliveryState::from_name(s.name()), Some(s));
        }
        assert_eq!(DeliveryState::from_name("dead"), None);
        let mut names: Vec<_> = DeliveryState::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DeliveryState::ALL.len());
    }

    #[test]
    fn statements_name_states_by_marker() {
        assert_eq!(
            sql("SET status = <processing> WHERE d.status IN (<claimable>) AND a < b AND x <> <failed> AND y <= 1"),
            "SET status = 'processing' WHERE d.status IN ('pending', 'processing') AND a < b AND x <> 'failed' AND y <= 1"
        );
        assert_eq!(sql("no markers"), "no markers");
    }

    #[test]
    fn list_markers_name_the_rules_and_other_words_are_kept() {
        assert_eq!(
            sql("CHECK (status IN (<delivery_states>)) <unfinished> | <finished> | <stream_blocking>"),
            "CHECK (status IN ('pending', 'processing', 'held', 'waiting', 'completed', 'failed', 'skipped')) \
             'pending', 'processing', 'held', 'waiting' | 'completed', 'failed', 'skipped' | \
             'pending', 'processing', 'held', 'waiting', 'failed'"
        );
        assert_eq!(
            sql("<event_statuses>; <attempt_outcomes>"),
            "'pending', 'processing', 'completed', 'failed'; 'success', 'failed'"
        );
        // a comment's placeholder, or a misspelt state (PostgreSQL then refuses the statement)
        assert_eq!(
            sql("-- payload.<path>, status = <procesing>"),
            "-- payload.<path>, status = <procesing>"
        );
    }

    #[test]
    fn status_words_are_checked_against_the_declaration() {
        assert_eq!(
            undeclared_status_words(
                "WHERE d.status = 'failed' AND e.status <> 'dead' AND x.status IN ('pending', 'done') \
                 AND l.http_status = 'n' SET status = CASE WHEN a THEN 'completed' ELSE 'gone' END"
            ),
            vec!["dead", "done", "gone"]
        );
    }

    /// Every SQL source and every Rust file of the extension and the console names only declared
    /// states where it compares a status (generated upgrade scripts and frozen deltas aside).
    #[test]
    fn every_statement_names_declared_states() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut files = Vec::new();
        let mut dirs = vec![
            format!("{root}/sql"),
            format!("{root}/src"),
            format!("{root}/console/src"),
        ];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                if p.is_dir() {
                    // frozen deltas, and sql/ expanded by build.rs
                    if name != "upgrades" && name != "generated" {
                        dirs.push(p.to_string_lossy().to_string());
                    }
                } else if (name.ends_with(".sql") && !name.starts_with("event_bus--"))
                    // (#[pg_test] files aside: their business tables have statuses of their own)
                    || (name.ends_with(".rs") && name != "tests.rs" && !name.ends_with("_tests.rs"))
                {
                    files.push(p);
                }
            }
        }
        assert!(files.len() > 20, "found the sources: {files:?}");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let bad = undeclared_status_words(&text);
            assert!(
                bad.is_empty(),
                "{}: undeclared status words {bad:?}",
                f.display()
            );
        }
    }

    #[test]
    fn the_rules() {
        assert_eq!(unfinished(), vec![Pending, Processing, Held, Waiting]);
        assert_eq!(
            stream_blocking(),
            vec![Pending, Processing, Held, Waiting, Failed]
        );
        assert_eq!(DeliveryState::first(true, false), Held);
        assert_eq!(DeliveryState::first(false, true), Pending);
        assert_eq!(DeliveryState::first(false, false), Processing);
        assert_eq!(DeliveryState::due(false), Pending);
    }

    #[test]
    fn every_state_is_reached_and_every_unfinished_state_is_left() {
        for s in DeliveryState::ALL {
            assert!(
                TRANSITIONS.iter().any(|t| t.to.contains(&s)),
                "{s:?} is never entered"
            );
            assert!(
                TRANSITIONS.iter().any(|t| t.from.contains(&s)),
                "{s:?} is never left"
            );
        }
        // a transition out of a finished state is an operator's (or retention's), never the worker's
        for t in TRANSITIONS
            .iter()
            .filter(|t| t.from.iter().any(|s| s.finished()))
        {
            assert!(!t.via.starts_with("the worker"), "{t:?}");
        }
    }

    #[test]
    fn the_breaker_opens_for_a_second_then_about_doubles_up_to_the_cooldown() {
        assert!(!breaker::opens(1_000, 0));
        assert!(breaker::opens(50, breaker::THRESHOLD_DEFAULT));
        assert!(!breaker::opens(49, breaker::THRESHOLD_DEFAULT));
        assert_eq!(breaker::open_for_ms(None, 60_000), 1_000);
        assert_eq!(breaker::open_for_ms(Some(4_000), 60_000), 4_000);
        assert_eq!(breaker::open_for_ms(Some(600_000), 60_000), 60_000);
        assert_eq!(breaker::open_for_ms(None, 500), 500);
    }

    #[test]
    fn a_lease_is_the_timeout_plus_the_margin() {
        assert_eq!(lease::lease_ms(None, 30_000, 30_000), 60_000);
        assert_eq!(lease::lease_ms(Some(1_000), 30_000, 5_000), 6_000);
        assert_eq!(lease::stale_after_ms(30_000), 15_000);
        assert_eq!(lease::stale_after_ms(10), 50);
    }

    /// The diagram in the docs is the one this module draws.
    #[test]
    fn the_docs_diagram_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/src/concepts/delivery.md"
        );
        let doc = std::fs::read_to_string(path).expect("docs/src/concepts/delivery.md");
        let block = doc
            .split("```mermaid\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a ```mermaid block in docs/src/concepts/delivery.md");
        assert_eq!(
            block,
            mermaid(),
            "docs/src/concepts/delivery.md's diagram is stale: paste event_bus_core::lifecycle::mermaid()'s output \
             (cargo test -p event_bus_core -- --ignored print_the_diagram --nocapture)"
        );
    }

    #[test]
    #[ignore = "prints the diagram for the docs"]
    fn print_the_diagram() {
        print!("{}", mermaid());
    }
}
