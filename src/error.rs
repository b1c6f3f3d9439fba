//! One error type for everything a user can get wrong; each variant maps to an explicit SQLSTATE
//! and carries a hint that says what to do.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum EventBusError {
    #[error("event_bus: invalid event type {value:?}: {reason}")]
    InvalidEventType { value: String, reason: String },
    #[error("event_bus: invalid subscription pattern {value:?}: {reason}")]
    InvalidPattern { value: String, reason: String },
    #[error("event_bus: invalid handler URL {value:?}: {reason}")]
    InvalidUrl { value: String, reason: String },
    #[error("event_bus: invalid headers: {reason}")]
    InvalidHeaders { reason: String },
    #[error("event_bus: invalid signing secret: {reason}")]
    InvalidSecret { reason: String },
    #[error("event_bus: p_limit {value} is out of range")]
    LimitOutOfRange { value: i32 },
}

impl EventBusError {
    fn code(&self) -> PgSqlErrorCode {
        match self {
            EventBusError::InvalidEventType { .. }
            | EventBusError::InvalidPattern { .. }
            | EventBusError::InvalidUrl { .. }
            | EventBusError::InvalidHeaders { .. }
            | EventBusError::InvalidSecret { .. }
            | EventBusError::LimitOutOfRange { .. } => {
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
            }
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            EventBusError::InvalidEventType { .. } => {
                "Use dot-separated segments of letters, digits, '_', '-' or ':', e.g. 'invoice.posted'."
            }
            EventBusError::InvalidPattern { .. } => {
                "Use dot-separated segments; '*' matches exactly one segment and '#' zero or more, \
                 each as a whole segment, e.g. 'invoice.*' or 'sales.#'."
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
        }
    }

    /// Raise this error as a Postgres ERROR with its SQLSTATE and hint. Does not return.
    pub fn raise(self) -> ! {
        let code = self.code();
        let hint = self.hint();
        ErrorReport::new(code, self.to_string(), "event_bus")
            .set_hint(hint)
            .report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}
