//! The round's questions, asked before its statements are planned: is any delivery due, is any
//! event new? The claim and the fan-out are planned per call (see `claim::claim_and_fan_out`),
//! which is most of a small round's cost; these are planned once and kept, and cost microseconds.

use super::fan_out::INTAKE;
use crate::plans::exec;
use crate::worker::{Step, StepError};
use pgrx::prelude::*;

/// Run `f` with these settings, and put them back as they were after it (an error inside ends
/// the (sub)transaction, which restores them too).
pub(super) fn with_settings<R>(
    settings: &[(&std::ffi::CStr, &std::ffi::CStr)],
    f: impl FnOnce() -> R,
) -> R {
    unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                PgLogLevel::ERROR as i32,
                false,
            );
        }
        let r = f();
        pg_sys::AtEOXact_GUC(true, level);
        r
    }
}

/// Run a statement whose plan is kept (generic: planned once, or again after the tables' statistics
/// change) and must be an index probe whatever the statistics say: with no sequential scan.
/// Statistics taken while the tables were nearly empty (after a quiet spell, a TRUNCATE, a VACUUM
/// ANALYZE) otherwise give a generic plan that reads the whole table, kept until the next ANALYZE:
/// measured, 100 ms a round at a 100,000-event backlog, against microseconds for the probe.
pub(super) fn as_index_probe<R>(f: impl FnOnce() -> R) -> R {
    with_settings(
        &[
            (c"plan_cache_mode", c"force_generic_plan"),
            (c"enable_seqscan", c"off"),
            (c"enable_bitmapscan", c"off"),
        ],
        f,
    )
}

/// Run a statement that joins a batch (arrays unnested) to its rows by primary key, planned as a
/// probe of that key per row: no sequential or bitmap scan, no hash or merge join. Without these
/// settings the record of outcomes joined by hashing a bitmap scan of the due index (its `status =
/// <processing>` test implies that partial index's predicate, and the planner, which cannot see
/// dead index entries, took the index for a few rows): measured mid-burst, 42,295 entries read, 12
/// of 15 ms, to update 181 deliveries.
pub(super) fn as_key_probe<R>(f: impl FnOnce() -> R) -> R {
    with_settings(
        &[
            (c"enable_seqscan", c"off"),
            (c"enable_bitmapscan", c"off"),
            (c"enable_hashjoin", c"off"),
            (c"enable_mergejoin", c"off"),
        ],
        f,
    )
}

const ANY_DUE: &str = "SELECT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries d
                                 WHERE d.status IN (<claimable>)
                                   AND d.next_attempt_at <= now())";

fn any_new_sql() -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM (SELECT e.id FROM event_bus.module_events e
                                        WHERE {INTAKE}
                                        ORDER BY e.id DESC
                                        LIMIT 1) n)"
    )
}

/// Is any delivery due now (pending, or processing with its lease run out)? What the plain claim
/// takes is a subset of these (it also leaves out the `full` subscriptions), so when there is none
/// the claim statement is not run. That is the usual round of a worker with no backlog — woken by
/// one commit, no retry due — and the claim's planning (it is planned per call, see
/// `claim_and_fan_out`) was 0.67 ms of a 3.6 ms commit-to-handler p50. This statement has no
/// parameters, so it is planned once (an index probe of the due index) and costs microseconds.
pub(super) fn any_due() -> Step<bool> {
    as_index_probe(|| {
        Spi::connect_mut(|client| {
            exec(client, "any_due", || ANY_DUE.to_string(), &[], &[])?
                .first()
                .get_one::<bool>()
        })
    })
    .map(|v| v.unwrap_or(true))
    .map_err(|e| StepError::failed("looking for due deliveries", e))
}

/// Is there an event to fan out? When there is none the fan-out statement is not run: after a
/// worker with no backlog delivered an event, its next round (woken by the outcome) found nothing
/// new, yet planned the fan-out (1-1.8 ms, planned per call) — time the next event, at 500 events/s
/// due 2 ms later, waited for. The newest first: events in flight for the first time (taken, not
/// recorded yet) are the oldest of the intake, so under a backlog the first entry answers. No
/// parameters: planned once, generic.
pub(super) fn any_new() -> Step<bool> {
    as_index_probe(|| {
        Spi::connect_mut(|client| {
            exec(client, "any_new", any_new_sql, &[], &[])?
                .first()
                .get_one::<bool>()
        })
    })
    .map(|v| v.unwrap_or(true))
    .map_err(|e| StepError::failed("looking for new events", e))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{any_due, any_new, any_new_sql, as_index_probe, ANY_DUE};
    use crate::tests::tests::{plan_text, TENANT};
    use pgrx::prelude::*;

    fn plan_of(sql: &str) -> String {
        as_index_probe(|| plan_text(&format!("EXPLAIN (COSTS OFF) {sql}")))
    }

    /// The probes are kept as generic plans, made from whatever statistics the tables have then.
    /// Made from an empty table's, a plan could read the whole table on every round once a backlog
    /// arrives; they must stay index probes.
    #[pg_test]
    fn the_round_probes_are_index_probes_whatever_the_statistics() {
        Spi::run("ANALYZE event_bus.module_events, event_bus.module_event_deliveries").unwrap();
        let due = plan_of(&event_bus_core::lifecycle::sql(ANY_DUE));
        assert!(!due.contains("Seq Scan"), "{due}");
        assert!(due.contains("module_event_deliveries_due_idx"), "{due}");
        let new = plan_of(&any_new_sql());
        assert!(!new.contains("Seq Scan"), "{new}");
        assert!(new.contains("module_events_undispatched_idx"), "{new}");
    }

    /// The probes say yes whenever the claim or the fan-out would take something: a new event, a
    /// delivery due or a lease run out; and no when only what is not due yet or finished is left.
    #[pg_test]
    fn the_round_probes_see_what_the_claim_and_the_fan_out_take() {
        assert!(!any_due().unwrap());
        assert!(!any_new().unwrap());
        let sub = Spi::get_one::<pgrx::Uuid>(
            "SELECT event_bus.subscribe('a.b', 'n', 'https://example.com/n')",
        )
        .unwrap()
        .unwrap();
        let ev = Spi::get_one::<pgrx::Uuid>(&format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'a.b', 'accounting', 'invoice', \
             gen_random_uuid(), '{{}}')"
        ))
        .unwrap()
        .unwrap();
        assert!(any_new().unwrap(), "a new event");
        assert!(!any_due().unwrap());
        // fanned out, leased until later: nothing new, nothing due
        Spi::run(&format!(
            "INSERT INTO event_bus.module_event_deliveries
                 (id, event_id, subscription_id, tenant_id, status, attempts, next_attempt_at)
             VALUES (event_bus._delivery_id('{ev}', '{sub}'), '{ev}', '{sub}', '{TENANT}', 'processing', 1,
                     now() + interval '1 minute')"
        ))
        .unwrap();
        assert!(!any_new().unwrap(), "its delivery says it was taken");
        assert!(!any_due().unwrap(), "leased");
        for (status, at, due) in [
            ("processing", "now() - interval '1 second'", true),
            ("pending", "now()", true),
            ("pending", "now() + interval '1 minute'", false),
            ("held", "now() - interval '1 second'", false),
            ("completed", "now() - interval '1 second'", false),
        ] {
            Spi::run(&format!(
                "UPDATE event_bus.module_event_deliveries SET status = '{status}', next_attempt_at = {at}"
            ))
            .unwrap();
            assert_eq!(any_due().unwrap(), due, "{status} at {at}");
        }
    }
}
