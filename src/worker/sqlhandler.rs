//! SQL-function handlers: `schema.fn(event event_bus.module_events)`, run on the worker's main
//! thread, each in its own subtransaction, as the subscription's `run_as` role (or the function's
//! owner when that is not a superuser), stopped by a timer after the subscription's timeout.
//! A handler that raises rolls back only its own work; its message and SQLSTATE become the
//! attempt's error. Its result (any type, through to_jsonb) is the attempt's response. While it
//! runs, `event_bus.causation_id` names its event and `event_bus.subscription_id` its subscription.

use super::deliver::Outcome;
use super::job::{id_text, Claimed};
use super::panic_message;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Call {
    /// Schema-qualified, quoted as quote_ident does (validated again before use).
    pub function: String,
    pub run_as: Option<String>,
    /// The role that named the function and run_as (`run_as_set_by`): it must still be allowed to
    /// become the handler's role. `None`: named before 0.11.0, by a role nobody recorded.
    pub run_as_set_by: Option<String>,
    pub timeout_ms: i32,
}

/// Is `s` a `schema.function` pair of identifiers, each plain lower-case or double-quoted?
pub fn is_qualified_name(s: &str) -> bool {
    fn ident(p: &str) -> Option<&str> {
        if let Some(rest) = p.strip_prefix('"') {
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if let Some((_, '"')) = chars.peek() {
                        chars.next();
                        continue;
                    }
                    return if i == 0 { None } else { Some(&rest[i + 1..]) };
                }
            }
            None
        } else {
            let end = p
                .find(|c: char| {
                    !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
                })
                .unwrap_or(p.len());
            let (id, rest) = p.split_at(end);
            if id.is_empty() || id.starts_with(|c: char| c.is_ascii_digit() || c == '$') {
                None
            } else {
                Some(rest)
            }
        }
    }
    match ident(s) {
        Some(rest) => match rest.strip_prefix('.') {
            Some(r) => ident(r) == Some(""),
            None => false,
        },
        None => false,
    }
}

fn failed(error: String, started: Instant) -> Outcome {
    Outcome::failure(0, error, started.elapsed())
}

/// The event as the handler receives it (its row as text), and the chain it belongs to.
struct EventRow {
    row: String,
    depth: String,
    correlation: String,
}

/// Run calls inside the current transaction, each in its own subtransaction, in order, until
/// `deadline` passes (the first always runs): the outcomes of those that ran, a prefix of `jobs`.
/// The batch's events are read in one query, each (function, role) resolved once.
pub fn run_batch(jobs: &[(Claimed, Call)], deadline: Option<Instant>) -> Vec<Outcome> {
    // the ids as text: what the handler's settings (event_bus.causation_id, ...) hold
    let ids: Vec<(String, String)> = jobs
        .iter()
        .map(|(c, _)| (id_text(&c.event_id), id_text(&c.subscription_id)))
        .collect();
    let calls: Vec<(&str, &str, &Call)> = jobs
        .iter()
        .zip(&ids)
        .map(|((_, call), (event, subscription))| (event.as_str(), subscription.as_str(), call))
        .collect();
    run_calls(&calls, deadline)
}

/// `run_batch` for (event id, subscription id, call) triples: also `event_bus.run_handlers`,
/// which runs the handlers of the events of the caller's own transaction.
pub fn run_calls(jobs: &[(&str, &str, &Call)], deadline: Option<Instant>) -> Vec<Outcome> {
    let started = Instant::now();
    let ids: Vec<String> = jobs.iter().map(|(e, _, _)| e.to_string()).collect();
    let events = match fetch_events(ids) {
        Ok(e) => e,
        Err(e) => return jobs.iter().map(|_| failed(e.clone(), started)).collect(),
    };
    type Key = (String, Option<String>, Option<String>);
    let mut roles: HashMap<Key, Result<pg_sys::Oid, String>> = HashMap::new();
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (event_id, subscription_id, call) in jobs {
        if !outcomes.is_empty() && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let started = Instant::now();
        if !is_qualified_name(&call.function) {
            outcomes.push(failed(
                format!("invalid SQL handler name {:?}", call.function),
                started,
            ));
            continue;
        }
        let role = roles
            .entry((
                call.function.clone(),
                call.run_as.clone(),
                call.run_as_set_by.clone(),
            ))
            .or_insert_with(|| resolve_role(call))
            .clone();
        outcomes.push(match (role, events.get(*event_id)) {
            (Err(e), _) => failed(e, started),
            (_, None) => failed("the event no longer exists".into(), started),
            (Ok(role), Some(event)) => {
                run_one(event_id, subscription_id, call, role, event, started)
            }
        });
    }
    outcomes
}

// The worker reads the events; the handler role gets its event as a value and needs no privilege
// on the event tables. With it, the chain: events the handler emits record it as their cause.
fn fetch_events(ids: Vec<String>) -> Result<HashMap<String, EventRow>, String> {
    Spi::connect(|client| {
        let mut out = HashMap::new();
        let table = client.select(
            "SELECT e.id::text, e::text,
                    CASE WHEN e.metadata ->> 'depth' ~ '^[0-9]{1,6}$'
                         THEN (e.metadata ->> 'depth')::int ELSE 0 END::text,
                    coalesce(e.metadata ->> 'correlation_id', e.id::text)
               FROM event_bus.module_events e WHERE e.id = ANY ($1::uuid[])",
            None,
            &[ids.into()],
        )?;
        for r in table {
            let id = r.get::<String>(1)?.unwrap_or_default();
            out.insert(
                id,
                EventRow {
                    row: r.get::<String>(2)?.unwrap_or_default(),
                    depth: r.get::<String>(3)?.unwrap_or_else(|| "0".into()),
                    correlation: r.get::<String>(4)?.unwrap_or_default(),
                },
            );
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .map_err(|e| e.to_string())
}

/// The role to run `call` as, once the rule of `event_bus._run_as_refusal` (sql/run_as.sql) holds
/// for whoever named it — checked here again at run time, so a membership revoked since the
/// subscription was made stops the handler.
fn resolve_role(call: &Call) -> Result<pg_sys::Oid, String> {
    let refusal = Spi::get_one_with_args::<String>(
        "SELECT event_bus._run_as_refusal($1::name, $2, $3::name)",
        &[
            call.run_as_set_by.as_deref().into(),
            call.function.as_str().into(),
            call.run_as.as_deref().into(),
        ],
    )
    .map_err(|e| e.to_string())?;
    if let Some(reason) = refusal {
        return Err(format!("not run: {reason} (SQLSTATE 42501)"));
    }
    unsafe {
        if let Some(name) = &call.run_as {
            let c = CString::new(name.as_str()).map_err(|_| "bad role name".to_string())?;
            let oid = pg_sys::get_role_oid(c.as_ptr(), true);
            if oid == pg_sys::InvalidOid {
                return Err(format!("role {name} named by run_as does not exist"));
            }
            return Ok(oid);
        }
    }
    // the function's owner, unless a superuser
    let owner = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT p.proowner FROM pg_catalog.pg_proc p
          WHERE p.oid = pg_catalog.to_regprocedure($1 || '(event_bus.module_events)')",
        &[call.function.as_str().into()],
    )
    .map_err(|e| e.to_string())?
    .ok_or_else(|| {
        format!(
            "SQL handler {}(event_bus.module_events) does not exist",
            call.function
        )
    })?;
    if unsafe { pg_sys::superuser_arg(owner) } {
        return Err(format!(
            "SQL handler {} is owned by a superuser and the subscription names no run_as role; \
             handlers never run as a superuser by default: set run_as on the subscription",
            call.function
        ));
    }
    Ok(owner)
}

thread_local! {
    /// The call statement per handler function, planned once per process and kept.
    static CALLS: RefCell<HashMap<String, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Call `function` on the event row; its result through to_jsonb, as text.
fn call_handler(function: &str, row: &str) -> Result<Option<String>, pgrx::spi::Error> {
    CALLS.with(|calls| {
        let mut calls = calls.borrow_mut();
        Spi::connect_mut(|client| {
            if !calls.contains_key(function) {
                // the name was validated (is_qualified_name): identifiers only
                let sql = format!(
                    "SELECT pg_catalog.to_jsonb({function}($1::event_bus.module_events))::text"
                );
                let stmt = client
                    .prepare_mut(sql.as_str(), &[PgOid::from(pg_sys::TEXTOID)])?
                    .keep();
                calls.insert(function.to_string(), stmt);
            }
            let stmt = &calls[function];
            client
                .update(&**stmt, Some(1), &[row.into()])?
                .first()
                .get_one::<String>()
        })
    })
}

// --- the handler's timeout ------------------------------------------------------------------
// statement_timeout is only armed for statements a client sends, never for SPI in a background
// worker, so the worker arms its own timer: when it fires it requests a query cancel, which
// raises an ERROR at the handler's next interrupt check, inside its subtransaction.

extern "C-unwind" {
    fn RegisterTimeout(id: i32, handler: Option<unsafe extern "C-unwind" fn()>) -> i32;
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
}

/// `USER_TIMEOUT` of utils/timeout.h: the first id extensions may register (17 added
/// TRANSACTION_TIMEOUT before it). pgrx does not bind timeout.h.
#[cfg(any(feature = "pg15", feature = "pg16"))]
const USER_TIMEOUT: i32 = 12;
#[cfg(any(feature = "pg17", feature = "pg18"))]
const USER_TIMEOUT: i32 = 13;

static TIMED_OUT: AtomicBool = AtomicBool::new(false);
static TIMEOUT_ID: AtomicI32 = AtomicI32::new(-1);

/// Runs in a signal handler: only flags and the latch.
unsafe extern "C-unwind" fn handler_timed_out() {
    TIMED_OUT.store(true, Ordering::SeqCst);
    unsafe {
        pg_sys::QueryCancelPending = 1;
        pg_sys::InterruptPending = 1;
        if !pg_sys::MyLatch.is_null() {
            pg_sys::SetLatch(pg_sys::MyLatch);
        }
    }
}

fn timeout_id() -> i32 {
    let id = TIMEOUT_ID.load(Ordering::SeqCst);
    if id >= 0 {
        return id;
    }
    let id = unsafe { RegisterTimeout(USER_TIMEOUT, Some(handler_timed_out)) };
    TIMEOUT_ID.store(id, Ordering::SeqCst);
    id
}

fn set_local(name: &CStr, value: &str) {
    let value = CString::new(value.replace('\0', "")).unwrap_or_default();
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_LOCAL,
            true,
            PgLogLevel::ERROR as i32,
            false,
        );
    }
}

fn run_one(
    event_id: &str,
    subscription_id: &str,
    call: &Call,
    role: pg_sys::Oid,
    event: &EventRow,
    started: Instant,
) -> Outcome {
    let timer = timeout_id();
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        let mut save_user = pg_sys::InvalidOid;
        let mut save_sec: i32 = 0;
        pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        // settings made for the handler (its chain) end with it, whatever it commits
        let guc_level = pg_sys::NewGUCNestLevel();
        TIMED_OUT.store(false, Ordering::SeqCst);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            set_local(c"event_bus.causation_id", event_id);
            set_local(c"event_bus.subscription_id", subscription_id);
            set_local(c"event_bus.chain_depth", &event.depth);
            set_local(c"event_bus.correlation_id", &event.correlation);
            pg_sys::SetUserIdAndSecContext(
                role,
                save_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
            );
            enable_timeout_after(timer, call.timeout_ms.max(1));
            call_handler(&call.function, &event.row).map_err(|e| e.to_string())
        }));
        disable_timeout(timer, false);
        let timed_out = TIMED_OUT.swap(false, Ordering::SeqCst);
        pg_sys::SetUserIdAndSecContext(save_user, save_sec);
        let outcome = match result {
            Ok(Ok(resp)) => {
                if timed_out {
                    // fired after the handler returned: the cancel is ours to withdraw
                    pg_sys::QueryCancelPending = 0;
                }
                pg_sys::AtEOXact_GUC(false, guc_level);
                pg_sys::ReleaseCurrentSubTransaction();
                Outcome {
                    token: 0,
                    success: true,
                    http_status: None,
                    response: resp.or(Some("null".into())),
                    error: None,
                    retry_after: None,
                    duration: started.elapsed(),
                    sent: true,
                }
            }
            Ok(Err(e)) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                failed(e, started)
            }
            Err(panic) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                let message = if timed_out {
                    format!(
                        "SQL handler {} timed out after {} ms (SQLSTATE 57014)",
                        call.function, call.timeout_ms
                    )
                } else {
                    panic_message(&panic)
                };
                failed(message, started)
            }
        };
        pg_sys::MemoryContextSwitchTo(old_context);
        pg_sys::CurrentResourceOwner = old_owner;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::is_qualified_name;

    #[test]
    fn qualified_names() {
        for ok in [
            "inventory.deduct_stock",
            "\"Inv\".\"Deduct Stock\"",
            "a.b$1",
            "\"a\"\"b\".c",
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in [
            "deduct_stock",
            "a.b.c",
            "a.b; drop table x",
            "a.b()",
            "\"a.b",
            "a.\"\"",
            "1a.b",
            "A.b",
            "",
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }
}
