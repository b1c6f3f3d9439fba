//! One error type for everything a user can get wrong; each variant maps to an explicit SQLSTATE
//! and carries a hint that says what to do.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};
use std::borrow::Cow;

#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    #[error("event_bus: invalid event type {value:?}: {reason}")]
    InvalidEventType { value: String, reason: String },
    #[error("event_bus: invalid event-type pattern {value:?}: {reason}")]
    InvalidPattern { value: String, reason: String },
    #[error("event_bus: invalid handler URL {value:?}: {reason}")]
    InvalidUrl { value: String, reason: String },
    #[error("event_bus: invalid broker URL {value}: {reason}")]
    InvalidBrokerUrl { value: String, reason: String },
    #[error("event_bus: invalid headers: {reason}")]
    InvalidHeaders { reason: String },
    #[error("event_bus: invalid signing secret: {reason}")]
    InvalidSecret { reason: String },
    #[error("event_bus: p_limit {value} is out of range")]
    LimitOutOfRange { value: i32 },
    #[error("event_bus: {what} of {event_type} does not match its schema (version {version}) at JSON pointer {pointer:?}: {message}")]
    PayloadContract {
        what: String,
        event_type: String,
        version: i32,
        pointer: String,
        message: String,
        schema_path: String,
    },
    #[error("event_bus: event type {event_type} has no schema version {version} (registered: {registered})")]
    UnknownSchemaVersion {
        event_type: String,
        version: String,
        registered: String,
    },
    #[error("event_bus: event type {event_type} is not registered and event_bus.strict_event_types is on")]
    UnregisteredEventType { event_type: String },
    #[error("event_bus: invalid JSON Schema for {event_type}: {reason}")]
    InvalidSchema { event_type: String, reason: String },
    #[error("event_bus: version {version} of {event_type} is already registered with a different schema")]
    SchemaVersionConflict { event_type: String, version: i32 },
    #[error("event_bus: {what} must not be {empty}")]
    MissingArgument {
        what: &'static str,
        empty: &'static str,
        hint: &'static str,
    },
    #[error("event_bus: {what}{} must be a JSON object, got {got}", position.map(|p| format!(" {p}")).unwrap_or_default())]
    NotAnObject {
        what: &'static str,
        position: Option<i64>,
        got: String,
    },
    #[error("event_bus: payload{} is {size} bytes, over event_bus.max_payload_bytes ({limit})", position.map(|p| format!(" {p}")).unwrap_or_default())]
    PayloadTooLarge {
        position: Option<i64>,
        size: usize,
        limit: i64,
    },
    #[error("event_bus: this session may not emit events for tenant {tenant}")]
    TenantNotAllowed {
        tenant: String,
        session_tenant: Option<String>,
    },
    #[error("event_bus: event chain too deep: {event_type} would be at depth {depth}, over event_bus.max_chain_depth ({max})")]
    ChainTooDeep {
        event_type: String,
        depth: i64,
        max: i64,
        correlation_id: String,
    },
}

impl EventBusError {
    fn code(&self) -> PgSqlErrorCode {
        match self {
            EventBusError::InvalidEventType { .. }
            | EventBusError::InvalidPattern { .. }
            | EventBusError::InvalidUrl { .. }
            | EventBusError::InvalidBrokerUrl { .. }
            | EventBusError::InvalidHeaders { .. }
            | EventBusError::InvalidSecret { .. }
            | EventBusError::LimitOutOfRange { .. }
            | EventBusError::UnknownSchemaVersion { .. }
            | EventBusError::InvalidSchema { .. }
            | EventBusError::NotAnObject { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            EventBusError::MissingArgument { .. } => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            EventBusError::PayloadTooLarge { .. } | EventBusError::ChainTooDeep { .. } => {
                PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED
            }
            EventBusError::TenantNotAllowed { .. } => {
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            EventBusError::PayloadContract { .. } => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            EventBusError::UnregisteredEventType { .. } => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            EventBusError::SchemaVersionConflict { .. } => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        }
    }

    fn hint(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            EventBusError::InvalidEventType { .. } => {
                "Use dot-separated segments of letters, digits, '_', '-' or ':', e.g. 'invoice.posted'."
            }
            EventBusError::InvalidPattern { .. } => {
                "Use dot-separated segments; '*' matches exactly one segment and '#' zero or more, \
                 each as a whole segment, e.g. 'invoice.*' or 'sales.#'."
            }
            EventBusError::InvalidBrokerUrl { .. } => {
                "Give amqp[s]://user:password@host:5672/vhost?exchange=NAME for RabbitMQ, or \
                 nats://[user:password@]host:4222?subject=PREFIX (tls:// for TLS) for NATS JetStream."
            }
            EventBusError::InvalidUrl { .. } => {
                "Give an absolute http:// or https:// URL with a host and no user:password part, \
                 e.g. 'https://project.supabase.co/functions/v1/handler'."
            }
            EventBusError::InvalidHeaders { .. } => {
                "Pass a JSON object of header names to string values, e.g. \
                 '{\"Authorization\": \"Bearer ...\"}'; names are HTTP tokens, values have no line breaks."
            }
            EventBusError::InvalidSecret { .. } => {
                "Use 'whsec_' followed by base64 of 24 to 64 random bytes (as Standard Webhooks and Svix issue \
                 them), e.g. 'whsec_' || encode(gen_random_bytes(32), 'base64')."
            }
            EventBusError::LimitOutOfRange { .. } => "Pass 1 to 10000 deliveries per call.",
            EventBusError::PayloadContract { .. } => {
                "Fix the payload at that pointer (nothing was written), or register a new version of the \
                 schema with event_bus.register_event_type(...). event_bus.check_payload(type, payload) \
                 lists every violation."
            }
            EventBusError::UnknownSchemaVersion { .. } => {
                "Set metadata's schema_version to a registered version (see event_bus.event_type_schemas), \
                 or leave it out to validate against the latest."
            }
            EventBusError::UnregisteredEventType { .. } => {
                "Register the type's payload schema with event_bus.register_event_type(type, version, schema), \
                 or turn event_bus.strict_event_types off."
            }
            EventBusError::InvalidSchema { .. } => {
                "Pass a JSON Schema (draft 2020-12) object, e.g. '{\"type\": \"object\", \"required\": [\"id\"]}'; \
                 $ref may point only inside the schema itself."
            }
            EventBusError::SchemaVersionConflict { .. } => {
                "Versions are immutable: register the changed schema as a new version (emitters then validate \
                 against the latest, or the one their metadata's schema_version names)."
            }
            EventBusError::MissingArgument { hint, .. } => hint,
            EventBusError::NotAnObject { what: "metadata", .. } => {
                "Pass NULL, '{}' or an object such as {\"correlation_id\": \"...\"}."
            }
            EventBusError::NotAnObject { position, .. } => {
                if position.is_some() {
                    "Wrap the value in an object, e.g. jsonb_build_object('value', ...). Nothing was emitted."
                } else {
                    "Wrap the value in an object, e.g. jsonb_build_object('value', ...)."
                }
            }
            EventBusError::PayloadTooLarge { position, .. } => {
                if position.is_some() {
                    "Send a reference (an id or URL) instead of the data, or raise event_bus.max_payload_bytes. \
                     Nothing was emitted."
                } else {
                    "Send a reference (an id or URL) instead of the data, or raise event_bus.max_payload_bytes."
                }
            }
            EventBusError::TenantNotAllowed { session_tenant, .. } => {
                return Cow::Owned(format!(
                    "The session's tenant (event_bus.current_tenant()) is {}; emit for that tenant.",
                    session_tenant.as_deref().unwrap_or("not set")
                ))
            }
            EventBusError::ChainTooDeep { correlation_id, .. } => {
                return Cow::Owned(format!(
                    "Handlers that emit events in reply to each other loop; the chain starts at correlation_id \
                     {correlation_id}. Break the loop, or raise event_bus.max_chain_depth for a longer legitimate chain."
                ))
            }
        })
    }

    fn detail(&self) -> Option<String> {
        match self {
            EventBusError::PayloadContract { schema_path, .. } => {
                Some(format!("Failing schema keyword: {schema_path}"))
            }
            _ => None,
        }
    }

    /// Raise this error as a Postgres ERROR with its SQLSTATE and hint. Does not return.
    pub fn raise(self) -> ! {
        let code = self.code();
        let hint = self.hint();
        let mut report =
            ErrorReport::new(code, self.to_string(), "event_bus").set_hint(hint.into_owned());
        if let Some(detail) = self.detail() {
            report = report.set_detail(detail);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}
