//! Test helpers for users' own tests (`sql/testing.sql` declares them): which rows the current
//! transaction wrote, a transaction-block guard, and `run_handlers`, which runs the SQL handlers
//! of the current transaction's events now, in that transaction, the way the worker runs them.

use crate::guc;
use crate::worker::sqlhandler::{self, Call};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};

/// Body of `event_bus._in_current_transaction(xid)`: was a row with this xmin written by the
/// current transaction (or one of its subtransactions)?
#[pg_extern(sql = false)]
fn in_current_transaction(xmin: pg_sys::TransactionId) -> bool {
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xmin) }
}

/// Body of `event_bus._require_transaction_block(text)`: 25P01 outside BEGIN ... COMMIT/ROLLBACK.
#[pg_extern(sql = false)]
fn require_transaction_block(what: &str) -> bool {
    if !unsafe { pg_sys::IsTransactionBlock() } {
        pgrx::pg_sys::panic::ErrorReport::new(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            format!("event_bus: {what} must run inside a transaction block"),
            "event_bus",
        )
        .set_hint(
            "Call it between BEGIN and ROLLBACK (pgTAP runs each test file in one): what it creates \
             is meant to end with the test, not to be committed.",
        )
        .report(PgLogLevel::ERROR);
    }
    true
}

type HandlerRow = (Uuid, Uuid, String, bool, Option<JsonB>, Option<String>, f64);

/// Body of `event_bus.run_handlers(uuid)`.
#[pg_extern(sql = false)]
fn run_handlers(
    event_id: Option<Uuid>,
) -> TableIterator<
    'static,
    (
        name!(event_id, Uuid),
        name!(subscription_id, Uuid),
        name!(handler_function, String),
        name!(success, bool),
        name!(response, Option<JsonB>),
        name!(error, Option<String>),
        name!(duration_ms, f64),
    ),
> {
    let default_timeout = guc::DEFAULT_TIMEOUT_MS.get();
    let targets: Vec<(String, String, Call)> = Spi::connect(|client| {
        let rows = client.select(
            "SELECT e.id::text, s.id::text, s.handler_function, s.run_as::text, coalesce(s.timeout_ms, $2),
                    s.run_as_set_by::text
               FROM event_bus.emitted_events() e
               JOIN event_bus.module_event_subscriptions s
                 ON s.is_active AND s.handler_kind = 'sql'
                AND event_bus.matches(s.event_type, e.event_type)
                AND (s.tenant_id IS NULL OR s.tenant_id = e.tenant_id)
                AND event_bus._filter_passes(s.filter, e.tenant_id, e.event_type, e.source_module,
                                             e.entity_type, e.entity_id, e.payload, e.metadata)
              WHERE $1::uuid IS NULL OR e.id = $1::uuid
              ORDER BY e.id, s.id",
            None,
            &[event_id.into(), default_timeout.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                Call {
                    function: r.get::<String>(3)?.unwrap_or_default(),
                    run_as: r.get::<String>(4)?,
                    run_as_set_by: r.get::<String>(6)?,
                    timeout_ms: r.get::<i32>(5)?.unwrap_or(default_timeout),
                },
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| error!("event_bus: could not read this transaction's events: {e}"));
    let calls: Vec<(&str, &str, &Call)> = targets
        .iter()
        .map(|(e, s, c)| (e.as_str(), s.as_str(), c))
        .collect();
    let outcomes = sqlhandler::run_calls(&calls, None);
    let rows: Vec<HandlerRow> = targets
        .iter()
        .zip(outcomes)
        .map(|((event, sub, call), o)| {
            let parse = |s: &str| {
                Uuid::from_bytes(*uuid::Uuid::parse_str(s).unwrap_or_default().as_bytes())
            };
            (
                parse(event),
                parse(sub),
                call.function.clone(),
                o.success,
                o.response
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .map(JsonB),
                o.error,
                o.duration.as_secs_f64() * 1000.0,
            )
        })
        .collect();
    TableIterator::new(rows)
}
