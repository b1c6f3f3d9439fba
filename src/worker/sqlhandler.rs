//! SQL-function handlers: `schema.fn(event event_bus.module_events)`, run on the worker's main
//! thread, each in its own subtransaction, as the subscription's `run_as` role (or the function's
//! owner when that is not a superuser), with the subscription's timeout as statement_timeout.
//! A handler that raises rolls back only its own work; its message and SQLSTATE become the
//! attempt's error. Its result (any type, through to_jsonb) is the attempt's response.

use super::dbworker::Claimed;
use super::deliver::Outcome;
use super::panic_message;
use pgrx::prelude::*;
use std::ffi::CString;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct Call {
    /// Schema-qualified, quoted as quote_ident does (validated again before use).
    pub function: String,
    pub run_as: Option<String>,
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

/// Run each call inside the current transaction, each in its own subtransaction.
pub fn run_batch(jobs: &[(Claimed, Call)]) -> Vec<Outcome> {
    jobs.iter().map(|(c, call)| run_one(c, call)).collect()
}

fn resolve_role(call: &Call) -> Result<pg_sys::Oid, String> {
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

fn run_one(claimed: &Claimed, call: &Call) -> Outcome {
    let started = Instant::now();
    if !is_qualified_name(&call.function) {
        return failed(
            format!("invalid SQL handler name {:?}", call.function),
            started,
        );
    }
    let role = match resolve_role(call) {
        Ok(r) => r,
        Err(e) => return failed(e, started),
    };
    // the worker reads the event; the handler role gets it as a value and needs no privilege on
    // the event tables
    // ... and the chain it belongs to: events the handler emits record it as their cause
    let fetched = Spi::connect(|client| {
        client
            .select(
                "SELECT e::text,
                        CASE WHEN e.metadata ->> 'depth' ~ '^[0-9]{1,6}$'
                             THEN (e.metadata ->> 'depth')::int ELSE 0 END::text,
                        coalesce(e.metadata ->> 'correlation_id', e.id::text)
                   FROM event_bus.module_events e WHERE e.id = $1::uuid",
                Some(1),
                &[claimed.event_id.as_str().into()],
            )?
            .first()
            .get_three::<String, String, String>()
    });
    let (row, depth, correlation) = match fetched {
        Ok((Some(r), d, c)) => (r, d.unwrap_or_else(|| "0".into()), c.unwrap_or_default()),
        Ok((None, _, _)) => return failed("the event no longer exists".into(), started),
        Err(e) => return failed(e.to_string(), started),
    };
    let sql = format!(
        "SELECT pg_catalog.to_jsonb({}($1::event_bus.module_events))::text",
        call.function
    );
    unsafe {
        let old_context = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        let mut save_user = pg_sys::InvalidOid;
        let mut save_sec: i32 = 0;
        pg_sys::GetUserIdAndSecContext(&mut save_user, &mut save_sec);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_context);
        // settings made for the handler (timeout, chain) end with it, whatever it commits
        let guc_level = pg_sys::NewGUCNestLevel();
        pg_sys::SetUserIdAndSecContext(
            role,
            save_sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        let timeout = call.timeout_ms.to_string();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.set_config('statement_timeout', $1, true),
                        pg_catalog.set_config('event_bus.causation_id', $2, true),
                        pg_catalog.set_config('event_bus.chain_depth', $3, true),
                        pg_catalog.set_config('event_bus.correlation_id', $4, true)",
                &[
                    timeout.as_str().into(),
                    claimed.event_id.as_str().into(),
                    depth.as_str().into(),
                    correlation.as_str().into(),
                ],
            )
            .map_err(|e| e.to_string())?;
            Spi::get_one_with_args::<String>(&sql, &[row.as_str().into()])
                .map_err(|e| e.to_string())
        }));
        pg_sys::SetUserIdAndSecContext(save_user, save_sec);
        let outcome = match result {
            Ok(Ok(resp)) => {
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
                }
            }
            Ok(Err(e)) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                failed(e, started)
            }
            Err(panic) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                failed(panic_message(&panic), started)
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
