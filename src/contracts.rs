//! Payload contracts: a JSON Schema (draft 2020-12) registered per event type and version
//! (`event_bus.event_type_schemas`), checked by emit inside the emitting transaction.
//!
//! Each backend keeps the registered schemas, compiled on first use, and reloads them when the
//! shared generation counter (bumped at the commit of any change to the table) has moved, so an
//! emit of an unregistered type costs a hash lookup and no query.

use crate::error::EventBusError;
use crate::guc;
use crate::shmem;
use pgrx::prelude::*;
use serde_json::Value;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// One registered version of a type's schema, compiled lazily.
struct Version {
    version: i32,
    schema: Value,
    compiled: Option<Rc<jsonschema::Validator>>,
}

#[derive(Default)]
struct Cache {
    /// the shared generation this cache reflects; None = reload before use
    gen: Option<u64>,
    /// event type -> its versions, ascending
    types: HashMap<String, Vec<Version>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Forget the cached contracts (this backend changed them, or its transaction rolled back).
pub fn invalidate_local() {
    CACHE.with(|c| c.borrow_mut().gen = None);
}

/// Compile a schema as draft 2020-12 (meta-validated; formats asserted; no remote `$ref`s).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err(format!(
            "a schema must be a JSON object, got {}",
            json_type(schema)
        ));
    }
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| e.to_string())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One violation of a schema: where in the payload, which schema keyword, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub instance_path: String,
    pub schema_path: String,
    pub message: String,
}

/// Every violation of `payload` against a compiled schema (empty when it conforms).
pub fn violations(validator: &jsonschema::Validator, payload: &Value) -> Vec<Violation> {
    validator
        .iter_errors(payload)
        .map(|e| Violation {
            instance_path: e.instance_path().as_str().to_string(),
            schema_path: e.schema_path().as_str().to_string(),
            message: e.to_string(),
        })
        .collect()
}

fn ensure_loaded() {
    let current = shmem::contracts_gen();
    let fresh = CACHE.with(|c| {
        let c = c.borrow();
        c.gen.is_some() && c.gen == current
    });
    if fresh {
        return;
    }
    let mut types: HashMap<String, Vec<Version>> = HashMap::new();
    let loaded = Spi::connect(|client| {
        let rows = client.select(
            "SELECT event_type, version, schema FROM event_bus.event_type_schemas ORDER BY event_type, version",
            None,
            &[],
        )?;
        for row in rows {
            let (Some(event_type), Some(version), Some(schema)) = (
                row.get::<String>(1)?,
                row.get::<i32>(2)?,
                row.get::<pgrx::JsonB>(3)?,
            ) else {
                continue;
            };
            types.entry(event_type).or_default().push(Version {
                version,
                schema: schema.0,
                compiled: None,
            });
        }
        Ok::<_, pgrx::spi::SpiError>(())
    });
    if let Err(e) = loaded {
        error!("event_bus: could not read event_bus.event_type_schemas: {e}");
    }
    // A transaction-snapshot isolation level may read an older state than the generation says:
    // use what it read, but reload in the next transaction. Without shared memory, reload always.
    let repeatable = unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32;
    let gen = if repeatable { None } else { current };
    CACHE.with(|c| *c.borrow_mut() = Cache { gen, types });
}

/// Does `event_type` have a registered schema? With `event_bus.strict_event_types` on, an
/// unregistered type is an error (42704).
#[pg_extern(volatile, parallel_unsafe, name = "_has_contract")]
pub fn has_contract(event_type: &str) -> bool {
    ensure_loaded();
    let registered = CACHE.with(|c| c.borrow().types.contains_key(event_type));
    if !registered && guc::STRICT_EVENT_TYPES.get() {
        EventBusError::UnregisteredEventType {
            event_type: event_type.to_string(),
        }
        .raise();
    }
    registered
}

/// The compiled schema of `event_type` at `version` (None = the latest), loading/compiling it.
fn validator_for(
    event_type: &str,
    version: Option<&str>,
) -> Option<(i32, Rc<jsonschema::Validator>)> {
    ensure_loaded();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let versions = c.types.get_mut(event_type)?;
        let unknown = |versions: &[Version]| EventBusError::UnknownSchemaVersion {
            event_type: event_type.to_string(),
            version: version.unwrap_or("").to_string(),
            registered: versions
                .iter()
                .map(|v| v.version.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let idx = match version {
            None => versions.len().checked_sub(1)?,
            Some(text) => {
                let wanted = text.trim().parse::<i32>().ok();
                match versions.iter().position(|v| Some(v.version) == wanted) {
                    Some(i) => i,
                    None => unknown(versions).raise(),
                }
            }
        };
        let entry = &mut versions[idx];
        if entry.compiled.is_none() {
            match compile(&entry.schema) {
                Ok(v) => entry.compiled = Some(Rc::new(v)),
                Err(reason) => EventBusError::InvalidSchema {
                    event_type: event_type.to_string(),
                    reason,
                }
                .raise(),
            }
        }
        entry.compiled.clone().map(|v| (entry.version, v))
    })
}

/// Check `payload` against the schema of `event_type` (the version metadata's `schema_version`
/// names, else the latest); raise 23514 with the failing JSON pointer when it does not conform.
/// `position` names the element of a batch emit.
#[pg_extern(volatile, parallel_unsafe, name = "_check_contract")]
pub fn check_contract(
    event_type: &str,
    payload: pgrx::JsonB,
    schema_version: Option<&str>,
    position: Option<i64>,
) -> bool {
    let Some((version, validator)) = validator_for(event_type, schema_version) else {
        return true;
    };
    if let Some(first) = violations(&validator, &payload.0).into_iter().next() {
        EventBusError::PayloadContract {
            what: match position {
                Some(i) => format!("payload {i}"),
                None => "payload".to_string(),
            },
            event_type: event_type.to_string(),
            version,
            pointer: first.instance_path,
            message: first.message,
            schema_path: first.schema_path,
        }
        .raise();
    }
    true
}

/// Every violation of `payload` against the registered schema of `event_type` (for operators
/// and tests; emit stops at the first).
#[pg_extern(volatile, parallel_unsafe, name = "check_payload")]
pub fn check_payload(
    event_type: &str,
    payload: pgrx::JsonB,
    version: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(instance_path, String),
        name!(schema_path, String),
        name!(message, String),
    ),
> {
    let wanted = version.map(|v| v.to_string());
    let Some((_, validator)) = validator_for(event_type, wanted.as_deref()) else {
        EventBusError::UnregisteredEventType {
            event_type: event_type.to_string(),
        }
        .raise();
    };
    let rows: Vec<_> = violations(&validator, &payload.0)
        .into_iter()
        .map(|v| (v.instance_path, v.schema_path, v.message))
        .collect();
    TableIterator::new(rows)
}

/// Raise 22023 unless `schema` compiles as a draft 2020-12 JSON Schema.
#[pg_extern(immutable, parallel_safe, name = "_check_schema")]
pub fn check_schema(event_type: &str, schema: pgrx::JsonB) -> bool {
    if let Err(reason) = compile(&schema.0) {
        EventBusError::InvalidSchema {
            event_type: event_type.to_string(),
            reason,
        }
        .raise();
    }
    true
}

/// Statement trigger on event_type_schemas: this backend forgets its cache now, every backend at commit.
#[pg_extern(volatile, parallel_unsafe, name = "_contracts_changed")]
pub fn contracts_changed() {
    invalidate_local();
    shmem::contracts_changed_on_commit();
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn violations_carry_the_json_pointer_and_the_keyword() {
        let v = compile(&json!({
            "type": "object",
            "required": ["id", "total"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "total": {"type": "number", "minimum": 0},
                "lines": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
            }
        }))
        .unwrap();
        let ok = json!({"id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11", "total": 10, "lines": [{"sku": "A"}]});
        assert!(violations(&v, &ok).is_empty());
        let bad = json!({"id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11", "total": -1, "lines": [{"sku": "A"}, {}]});
        let found = violations(&v, &bad);
        let pointers: Vec<_> = found.iter().map(|x| x.instance_path.as_str()).collect();
        assert!(pointers.contains(&"/total"), "{found:?}");
        assert!(pointers.contains(&"/lines/1"), "{found:?}");
        assert!(found.iter().any(|x| x.schema_path.ends_with("/minimum")));
        // formats are asserted, not just annotations
        let not_uuid = json!({"id": "nope", "total": 1});
        assert_eq!(violations(&v, &not_uuid)[0].instance_path, "/id");
    }

    #[test]
    fn invalid_schemas_are_refused() {
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
        assert!(compile(&json!({"minimum": "five"})).is_err());
        assert!(compile(&json!([1, 2])).is_err());
        // a remote $ref cannot be fetched: refused instead of reaching out
        assert!(compile(&json!({"$ref": "https://example.com/schema.json"})).is_err());
        assert!(compile(&json!({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})).is_ok());
    }
}
