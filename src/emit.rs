//! Emit, in Rust: the checks every emitted event passes and the INSERT of its row.
//!
//! `emit_module_event` runs in the business transaction, usually from a trigger, so it is the
//! one function whose cost every user pays on every write. The plpgsql version spent most of its
//! time interpreting itself (about 24 µs a call against 5 µs for the INSERT it makes); this one
//! checks in Rust, reads the payload's jsonb header instead of converting it, and inserts with a
//! plan kept for the life of the backend.
//!
//! The SQL declarations are in `sql/api.sql` (SECURITY DEFINER with a pinned search_path, the
//! argument defaults and the comments); the functions here are their bodies. Their jsonb
//! arguments arrive as `Internal`, pgrx's carrier of an unconverted datum: pgrx's `JsonB` would
//! print and re-parse every payload, which costs more than the whole INSERT for a large one.

use crate::error::EventBusError;
use crate::{contracts, guc, plans, shmem};
use pgrx::datum::Internal;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use std::ffi::{CStr, CString};

/// `current_setting(name, true)`, with NULL and '' both as None.
fn setting(name: &str) -> Option<String> {
    let name = CString::new(name).ok()?;
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    let value = unsafe { CStr::from_ptr(value) }.to_string_lossy();
    (!value.is_empty()).then(|| value.into_owned())
}

/// The session's tenant when it has a tenant source, without a query in the common cases: no
/// source set (None), or the setting holding a canonical uuid. A tenant function, or a value
/// that is not a plain uuid, goes through `event_bus.current_tenant()` (which owns its errors).
fn session_tenant() -> Option<Uuid> {
    let function = guc::TENANT_FUNCTION
        .get()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|f| !f.is_empty());
    if function.is_none() {
        let setting_name = guc::TENANT_SETTING
            .get()
            .map(|c| c.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "app.tenant_id".to_string());
        let value = setting(&setting_name)?;
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return None;
        }
        if let Ok(u) = uuid::Uuid::try_parse(trimmed) {
            return Some(Uuid::from_bytes(*u.as_bytes()));
        }
    }
    Spi::get_one::<Uuid>("SELECT event_bus.current_tenant()")
        .unwrap_or_else(|e| error!("event_bus: could not read the session's tenant: {e}"))
}

/// The role the session acts as: SET ROLE's role, else the login role (inside a SECURITY
/// DEFINER function the current user is the owner, not the caller).
fn caller() -> pg_sys::Oid {
    let role = unsafe { pg_sys::GetCurrentRoleId() };
    if role != pg_sys::InvalidOid {
        role
    } else {
        unsafe { pg_sys::GetSessionUserId() }
    }
}

fn has_role(member: pg_sys::Oid, role: &CStr) -> bool {
    let role = unsafe { pg_sys::get_role_oid(role.as_ptr(), true) };
    role != pg_sys::InvalidOid && unsafe { pg_sys::has_privs_of_role(member, role) }
}

/// The size in bytes of a jsonb datum that holds an object (read from its root container's
/// header, detoasting once), or the JSON type it holds instead (`jsonb_typeof`, for the error).
fn object_size(datum: pg_sys::Datum) -> Result<usize, String> {
    const JB_FOBJECT: u32 = 0x2000_0000;
    unsafe {
        let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
        let header = (pgrx::varlena::vardata_any(v) as *const u32).read_unaligned();
        if header & JB_FOBJECT != 0 {
            return Ok(pgrx::varlena::varsize_any_exhdr(v));
        }
    }
    Err(
        unsafe { pgrx::direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(datum)]) }
            .unwrap_or_default(),
    )
}

/// The jsonb's size as text (`octet_length(v::text)`), computed only when it could be over
/// `limit`: the text form is never more than six times the binary one (an escaped control
/// character) plus a little.
fn text_size_over(datum: pg_sys::Datum, binary: usize, limit: i64) -> Option<usize> {
    if (binary as i64).saturating_mul(6).saturating_add(64) <= limit {
        return None;
    }
    let text: &CStr = unsafe { pgrx::direct_function_call(pg_sys::jsonb_out, &[Some(datum)]) }?;
    let size = text.to_bytes().len();
    (size as i64 > limit).then_some(size)
}

/// Raise 22023 / 54000 unless `payload` is a JSON object of at most event_bus.max_payload_bytes.
/// `position` names the element of a batch.
fn check_payload(payload: Option<pg_sys::Datum>, position: Option<i64>) -> pg_sys::Datum {
    let Some(payload) = payload else {
        EventBusError::NotAnObject {
            what: "payload",
            position,
            got: "NULL".into(),
        }
        .raise()
    };
    let binary = object_size(payload).unwrap_or_else(|got| {
        EventBusError::NotAnObject {
            what: "payload",
            position,
            got,
        }
        .raise()
    });
    let limit = guc::MAX_PAYLOAD_BYTES.get() as i64;
    if let Some(size) = text_size_over(payload, binary, limit) {
        EventBusError::PayloadTooLarge {
            position,
            size,
            limit,
        }
        .raise()
    }
    payload
}

/// The per-call checks of every emit (tenant, event type, module, metadata, chain depth);
/// returns the metadata to store (the caller's, with the causation chain added inside a SQL
/// handler).
fn prepare(
    tenant: Option<Uuid>,
    event_type: Option<&str>,
    source_module: Option<&str>,
    metadata: Option<pg_sys::Datum>,
) -> (Uuid, String, pg_sys::Datum) {
    let Some(tenant) = tenant else {
        EventBusError::MissingArgument {
            what: "tenant_id",
            empty: "null",
            hint: "Pass the tenant (organization) the event belongs to as the first argument.",
        }
        .raise()
    };
    // a session bound to a tenant emits for that tenant only (admins for any)
    let session = session_tenant();
    if session != Some(tenant) {
        let who = caller();
        if (session.is_some() || has_role(who, c"event_bus_reader"))
            && !has_role(who, c"event_bus_admin")
        {
            EventBusError::TenantNotAllowed {
                tenant: tenant.to_string(),
                session_tenant: session.map(|s| s.to_string()),
            }
            .raise()
        }
    }
    let Some(event_type) = event_type else {
        EventBusError::MissingArgument {
            what: "event_type",
            empty: "null",
            hint: "Pass an event type such as 'invoice.posted'.",
        }
        .raise()
    };
    crate::api::check_event_type(event_type);
    if source_module.is_none_or(str::is_empty) {
        EventBusError::MissingArgument {
            what: "source_module",
            empty: "empty",
            hint: "Pass the emitting module, e.g. 'accounting'.",
        }
        .raise()
    }
    let metadata = match metadata {
        None => JsonB(serde_json::json!({}))
            .into_datum()
            .expect("jsonb datum"),
        Some(m) => match object_size(m) {
            Ok(_) => m,
            Err(got) => EventBusError::NotAnObject {
                what: "metadata",
                position: None,
                got,
            }
            .raise(),
        },
    };

    // inside a SQL handler the worker names the event being handled: record the chain, stop loops
    let Some(cause) = setting("event_bus.causation_id") else {
        return (tenant, event_type.to_string(), metadata);
    };
    let depth = setting("event_bus.chain_depth")
        .and_then(|d| d.trim().parse::<i64>().ok())
        .unwrap_or(0)
        + 1;
    let max = guc::MAX_CHAIN_DEPTH.get() as i64;
    let session_correlation = setting("event_bus.correlation_id");
    if depth > max {
        EventBusError::ChainTooDeep {
            event_type: event_type.to_string(),
            depth,
            max,
            correlation_id: session_correlation.unwrap_or_else(|| cause.clone()),
        }
        .raise()
    }
    let Some(JsonB(serde_json::Value::Object(mut object))) =
        (unsafe { JsonB::from_datum(metadata, false) })
    else {
        unreachable!("metadata was checked to be an object")
    };
    let correlation = match object.get("correlation_id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    }
    .or(session_correlation)
    .unwrap_or_else(|| cause.clone());
    object.insert("causation_id".into(), cause.into());
    object.insert("correlation_id".into(), correlation.into());
    object.insert("depth".into(), depth.into());
    let metadata = JsonB(serde_json::Value::Object(object))
        .into_datum()
        .expect("jsonb datum");
    (tenant, event_type.to_string(), metadata)
}

/// Body of `event_bus._event_bytes(jsonb, jsonb)`: the bytes an event's payload and metadata take
/// uncompressed (what a worker holds in memory for it), read from their headers without
/// detoasting. The claims use it to keep a batch within event_bus.batch_memory.
#[pg_extern(sql = false)]
fn event_bytes(payload: Internal, metadata: Internal) -> i64 {
    [payload.unwrap(), metadata.unwrap()]
        .into_iter()
        .flatten()
        .map(|d| unsafe { pg_sys::toast_raw_datum_size(d) } as i64)
        .sum()
}

/// Body of `event_bus._emit_prepare(uuid, text, text, jsonb)` (the batch emit's checks).
#[pg_extern(sql = false)]
fn emit_prepare(
    tenant: Option<Uuid>,
    event_type: Option<&str>,
    source_module: Option<&str>,
    metadata: Internal,
) -> Internal {
    Internal::from(Some(
        prepare(tenant, event_type, source_module, metadata.unwrap()).2,
    ))
}

/// Body of `event_bus._check_payload(jsonb, bigint)`: the batch emit's per-element check.
#[pg_extern(sql = false)]
fn check_payload_element(payload: Internal, position: Option<i64>) -> bool {
    check_payload(payload.unwrap(), position);
    true
}

const INSERT: &str = "INSERT INTO event_bus.module_events
        (id, tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

#[allow(clippy::too_many_arguments)]
fn emit(
    tenant: Option<Uuid>,
    event_type: Option<&str>,
    source_module: Option<&str>,
    entity_type: Option<&str>,
    entity_id: Option<String>,
    payload: Option<pg_sys::Datum>,
    metadata: Option<pg_sys::Datum>,
) -> Uuid {
    let (tenant, event_type, metadata) = prepare(tenant, event_type, source_module, metadata);
    let payload = check_payload(payload, None);
    // a registered payload contract (cached per backend: no query for unregistered types)
    if contracts::has_contract(&event_type) {
        let schema_version = unsafe { JsonB::from_datum(metadata, false) }.and_then(|m| {
            m.0.get("schema_version").map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        let payload_json = unsafe { JsonB::from_datum(payload, false) }.expect("payload");
        contracts::check_contract(&event_type, payload_json, schema_version.as_deref(), None);
    }

    let id = Uuid::from_bytes(*uuid::Uuid::now_v7().as_bytes());
    let args = unsafe {
        [
            pgrx::datum::DatumWithOid::new(id, pg_sys::UUIDOID),
            pgrx::datum::DatumWithOid::new(tenant, pg_sys::UUIDOID),
            pgrx::datum::DatumWithOid::new(event_type, pg_sys::TEXTOID),
            pgrx::datum::DatumWithOid::new(source_module.map(str::to_string), pg_sys::TEXTOID),
            pgrx::datum::DatumWithOid::new(entity_type.map(str::to_string), pg_sys::TEXTOID),
            pgrx::datum::DatumWithOid::new(entity_id, pg_sys::TEXTOID),
            pgrx::datum::DatumWithOid::new(payload, pg_sys::JSONBOID),
            pgrx::datum::DatumWithOid::new(metadata, pg_sys::JSONBOID),
        ]
    };
    const TYPES: [pg_sys::Oid; 8] = [
        pg_sys::UUIDOID,
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::JSONBOID,
    ];
    Spi::connect_mut(|client| {
        plans::exec(client, "emit", || INSERT.to_string(), &TYPES, &args).map(|_| ())
    })
    .unwrap_or_else(|e| error!("event_bus: could not insert the event: {e}"));
    shmem::wake_workers_on_commit();
    id
}

/// Body of `event_bus.emit_module_event(uuid, text, text, text, text, jsonb, jsonb)`.
#[pg_extern(sql = false)]
fn emit_module_event(
    tenant: Option<Uuid>,
    event_type: Option<&str>,
    source_module: Option<&str>,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    payload: Internal,
    metadata: Internal,
) -> Uuid {
    emit(
        tenant,
        event_type,
        source_module,
        entity_type,
        entity_id.map(str::to_string),
        payload.unwrap(),
        metadata.unwrap(),
    )
}

/// Body of `event_bus.emit_module_event(uuid, text, text, text, uuid, jsonb, jsonb)` (the
/// seed's signature: the entity id as a uuid, stored as its text form).
#[pg_extern(sql = false)]
fn emit_module_event_uuid(
    tenant: Option<Uuid>,
    event_type: Option<&str>,
    source_module: Option<&str>,
    entity_type: Option<&str>,
    entity_id: Option<Uuid>,
    payload: Internal,
    metadata: Internal,
) -> Uuid {
    emit(
        tenant,
        event_type,
        source_module,
        entity_type,
        entity_id.map(|u| u.to_string()),
        payload.unwrap(),
        metadata.unwrap(),
    )
}
