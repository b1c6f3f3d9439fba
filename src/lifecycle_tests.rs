//! The delivery lifecycle is declared once, in Rust (core/src/lifecycle.rs). These tests read the installed
//! extension and fail where it says otherwise: the status CHECK constraint, the partial indexes keyed on
//! states, the rule functions of sql/lifecycle.sql, the views delivery_states and delivery_transitions, and the
//! settings' defaults (in pg_settings and in the SQL fallbacks).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use event_bus_core::lifecycle::{self, breaker, lease, DeliveryState, TRANSITIONS};
    use pgrx::prelude::*;
    use std::collections::BTreeSet;

    fn text(sql: &str) -> String {
        Spi::get_one::<String>(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_default()
    }

    fn names(states: &[DeliveryState]) -> Vec<String> {
        states.iter().map(|s| s.name().to_string()).collect()
    }

    /// The quoted values in a constraint's or index's definition ('pending'::text, ...).
    fn quoted(def: &str) -> BTreeSet<String> {
        def.split('\'')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    fn set(states: impl IntoIterator<Item = DeliveryState>) -> BTreeSet<String> {
        states.into_iter().map(|s| s.name().to_string()).collect()
    }

    #[pg_test]
    fn the_status_check_and_the_partial_indexes_name_the_declared_states() {
        let check = text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conname = 'module_event_deliveries_status_check'",
        );
        assert_eq!(quoted(&check), set(DeliveryState::ALL), "{check}");

        let index = |name: &str| {
            let def = text(&format!(
                "SELECT pg_get_indexdef('event_bus.{name}'::regclass)"
            ));
            quoted(def.split(" WHERE ").nth(1).unwrap_or_default())
        };
        // the claim reads what is due: pending, and processing whose lease ran out
        assert_eq!(
            index("module_event_deliveries_due_idx"),
            set(lifecycle::CLAIMABLE)
        );
        let log_check = text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'module_event_logs_status_check'",
        );
        assert_eq!(
            quoted(&log_check),
            lifecycle::ATTEMPT_OUTCOMES
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>()
        );
        assert_eq!(
            index("module_event_deliveries_stream_idx"),
            set(lifecycle::stream_blocking())
        );
        assert_eq!(
            index("module_event_deliveries_held_idx"),
            set([DeliveryState::Held])
        );
        assert_eq!(
            index("module_event_deliveries_failed_idx"),
            set([DeliveryState::Failed])
        );
    }

    #[pg_test]
    fn the_rule_functions_say_what_the_declaration_says() {
        let list = |f: &str| {
            Spi::get_one::<Vec<String>>(&format!("SELECT event_bus.{f}()"))
                .unwrap()
                .unwrap()
        };
        assert_eq!(list("_unfinished_states"), names(&lifecycle::unfinished()));
        assert_eq!(
            list("_stream_blocking_states")
                .into_iter()
                .collect::<BTreeSet<_>>(),
            set(lifecycle::stream_blocking())
        );
        assert_eq!(list("_claimable_states"), names(&lifecycle::CLAIMABLE));
        assert_eq!(
            list("_finished_states"),
            names(
                &DeliveryState::ALL
                    .into_iter()
                    .filter(|s| s.finished())
                    .collect::<Vec<_>>()
            )
        );
        for held in [false, true] {
            for queued in [false, true] {
                assert_eq!(
                    text(&format!("SELECT event_bus._first_state({held}, {queued})")),
                    DeliveryState::first(held, queued).name()
                );
            }
            assert_eq!(
                text(&format!("SELECT event_bus._due_state({held})")),
                DeliveryState::due(held).name()
            );
        }
    }

    #[pg_test]
    fn the_views_list_the_declared_states_and_transitions() {
        let states: Vec<(String, bool, String)> = Spi::connect(|c| {
            c.select(
                "SELECT state, finished, meaning FROM event_bus.delivery_states",
                None,
                &[],
            )
            .unwrap()
            .map(|r| {
                (
                    r.get::<String>(1).unwrap().unwrap(),
                    r.get::<bool>(2).unwrap().unwrap(),
                    r.get::<String>(3).unwrap().unwrap(),
                )
            })
            .collect()
        });
        let declared: Vec<(String, bool, String)> = DeliveryState::ALL
            .iter()
            .map(|s| (s.name().to_string(), s.finished(), s.meaning().to_string()))
            .collect();
        assert_eq!(states, declared);

        type Row = (Vec<String>, Vec<String>, String, String);
        let transitions: Vec<Row> = Spi::connect(|c| {
            c.select(
                "SELECT from_states, to_states, moved_by, via FROM event_bus.delivery_transitions",
                None,
                &[],
            )
            .unwrap()
            .map(|r| {
                (
                    r.get::<Vec<String>>(1).unwrap().unwrap(),
                    r.get::<Vec<String>>(2).unwrap().unwrap(),
                    r.get::<String>(3).unwrap().unwrap(),
                    r.get::<String>(4).unwrap().unwrap(),
                )
            })
            .collect()
        });
        let declared: Vec<Row> = TRANSITIONS
            .iter()
            .map(|t| {
                (
                    names(t.from),
                    names(t.to),
                    t.moved_by.to_string(),
                    t.via.to_string(),
                )
            })
            .collect();
        assert_eq!(transitions, declared);
    }

    #[pg_test]
    fn the_breaker_and_the_lease_follow_the_declaration_and_its_defaults() {
        let boot = |name: &str| {
            text(&format!(
                "SELECT boot_val FROM pg_settings WHERE name = 'event_bus.{name}'"
            ))
        };
        assert_eq!(
            boot("breaker_threshold"),
            breaker::THRESHOLD_DEFAULT.to_string()
        );
        assert_eq!(
            boot("breaker_cooldown_ms"),
            breaker::COOLDOWN_MS_DEFAULT.to_string()
        );
        assert_eq!(boot("lease_ms"), lease::MARGIN_MS_DEFAULT.to_string());
        // the SQL fallbacks, for sessions that have not loaded the library
        let src = |f: &str| text(&format!("SELECT prosrc FROM pg_proc WHERE proname = '{f}'"));
        assert!(
            src("_breaker_threshold").contains(&format!(", {})", breaker::THRESHOLD_DEFAULT)),
            "{}",
            src("_breaker_threshold")
        );
        assert!(
            src("_breaker_cooldown_ms").contains(&format!(", {})", breaker::COOLDOWN_MS_DEFAULT)),
            "{}",
            src("_breaker_cooldown_ms")
        );

        for (failures, threshold) in [(0, 0), (100, 0), (49, 50), (50, 50), (51, 50), (1, 1)] {
            assert_eq!(
                Spi::get_one::<bool>(&format!(
                    "SELECT event_bus._breaker_opens({failures}, {threshold})"
                ))
                .unwrap()
                .unwrap(),
                breaker::opens(failures, threshold),
                "{failures} failures, threshold {threshold}"
            );
        }
        // (a reload setting: the test cluster's value)
        let cooldown: i32 = text("SELECT current_setting('event_bus.breaker_cooldown_ms')")
            .parse()
            .unwrap();
        for failing_for in [None, Some(500), Some(4_000), Some(cooldown as i64 * 3)] {
            let since = failing_for.map_or("NULL".to_string(), |ms| {
                format!("now() - {ms} * interval '1 millisecond'")
            });
            let ms = Spi::get_one::<f64>(&format!(
                "SELECT extract(epoch FROM event_bus._breaker_open_for({since}))::float8 * 1000"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(
                ms.round() as i64,
                breaker::open_for_ms(failing_for, cooldown),
                "failing for {failing_for:?}"
            );
        }

        for (timeout, default, margin) in [(None, 30_000, 10_000), (Some(1_000), 30_000, 5_000)] {
            let t = timeout.map_or("NULL".to_string(), |t: i32| t.to_string());
            let ms = Spi::get_one::<f64>(&format!(
                "SELECT extract(epoch FROM event_bus._lease_end({t}, {default}, {margin}) - now())::float8 * 1000"
            ))
            .unwrap()
            .unwrap();
            assert_eq!(ms.round() as i64, lease::lease_ms(timeout, default, margin));
        }
    }
}
