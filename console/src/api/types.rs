//! What the API reads and writes, as JSON and as the OpenAPI document's schemas. Names are the SQL
//! API's (entity_type, completed); design document 001's (aggregate_type, processed) are accepted
//! beside them where it uses them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// An error: the database's SQLSTATE (e.g. `22023`, `42501`, `P0002`) where the database refused, or the
/// console's own code (`unauthenticated`, `not_allowed`, `csrf`, `not_found`, `no_route`,
/// `invalid_input`, `unavailable`); the message says what is wrong, the hint what to do.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

/// An event's status, derived from its deliveries (event_bus_core::lifecycle::EventStatus).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Pending,
    Processing,
    Completed,
    Failed,
}

/// An events filter's status: an event's status, or design document 001's `processed` (= completed).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    Pending,
    Processing,
    Completed,
    Processed,
    Failed,
}

/// A delivery's state (event_bus_core::lifecycle::DeliveryState).
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Processing,
    Held,
    Waiting,
    Completed,
    Failed,
    Skipped,
}

/// An attempt's outcome.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    Failed,
}

/// One event.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Event {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub source_module: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// The event's JSON object.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// The envelope: correlation_id, causation_id, actor, ...
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub status: EventStatus,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    /// A request of request-reply (answered in its caller's session, never retried).
    pub is_request: bool,
}

/// A page of events, newest first.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct EventPage {
    pub items: Vec<Event>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// The filters of the events list (and of the stream).
#[derive(Deserialize, IntoParams, Debug, Default)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// pending, processing, completed (or 001's `processed`), failed
    #[param(value_type = Option<StatusFilter>)]
    pub status: Option<String>,
    /// An event type or pattern (`invoice.*`, `#.failed`).
    pub event_type: Option<String>,
    pub source_module: Option<String>,
    pub entity_type: Option<String>,
    /// Design document 001's name for entity_type.
    pub aggregate_type: Option<String>,
    pub entity_id: Option<String>,
    /// Design document 001's name for entity_id.
    pub aggregate_id: Option<String>,
    /// metadata.correlation_id
    pub correlation_id: Option<String>,
    /// Admins: one tenant's events (readers and operators see their own tenant's only).
    pub tenant_id: Option<Uuid>,
    /// Created at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    /// Stream only: start after this event id (what `Last-Event-ID` does on a reconnect).
    #[serde(default)]
    pub after: Option<Uuid>,
}

/// A delivery of an event to one subscription.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Delivery {
    pub delivery_id: Uuid,
    pub subscription_id: Option<Uuid>,
    pub handler_module: Option<String>,
    pub handler_kind: Option<String>,
    /// The subscription's event-type pattern.
    pub pattern: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// One attempt of the attempt log.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
    pub attempt: i32,
    pub status: AttemptOutcome,
    pub http_status: Option<i32>,
    /// An excerpt of the response (JSON as received, or {"text": ...}).
    pub response: Option<serde_json::Value>,
    pub error_message: Option<String>,
    pub duration_ms: Option<f64>,
    pub executed_at: DateTime<Utc>,
}

/// An event its handlers emitted (metadata.causation_id).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct ChildEvent {
    pub id: Uuid,
    pub event_type: String,
    pub status: EventStatus,
    pub created_at: DateTime<Utc>,
}

/// One event with its deliveries, its attempt log and the events it caused.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct EventDetail {
    pub event: Event,
    pub deliveries: Vec<Delivery>,
    pub logs: Vec<Attempt>,
    /// The first 100.
    pub children: Vec<ChildEvent>,
}

/// Events emitted within the window, by status (event_bus.event_stats).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct EventStats {
    pub window: String,
    pub pending: i64,
    pub processing: i64,
    /// The same as `completed` (design document 001's name).
    pub processed: i64,
    pub completed: i64,
    pub failed: i64,
    pub total: i64,
}

#[derive(Deserialize, IntoParams, Debug)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// A PostgreSQL interval (default `24 hours`).
    pub window: Option<String>,
    /// Admins: one tenant's events.
    pub tenant_id: Option<Uuid>,
}

/// An event to publish: event_bus.emit_module_event with the caller's role. Design document 001's
/// `aggregate_type` / `aggregate_id` / `organization_id` are accepted for entity_type / entity_id /
/// tenant_id.
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    pub event_type: String,
    /// Default: metadata.source_module, else the entity type.
    pub source_module: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    /// A JSON object (default {}).
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// A JSON object (default {}).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Default: the session's tenant (event_bus.current_tenant()).
    pub tenant_id: Option<Uuid>,
    pub organization_id: Option<Uuid>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Published {
    pub id: Uuid,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
#[serde(deny_unknown_fields)]
pub struct ProcessPending {
    /// Deliveries to attempt at most (default 100).
    pub limit: Option<i32>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Processed {
    /// Deliveries attempted.
    pub attempted: i32,
}

/// How many deliveries a retry re-armed.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Retried {
    pub retried: i32,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Skipped {
    pub skipped: bool,
}

/// A dead letter: a delivery whose retries are used up.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DeadLetter {
    pub delivery_id: Uuid,
    pub event_id: Uuid,
    pub subscription_id: Option<Uuid>,
    pub tenant_id: Uuid,
    pub event_type: String,
    pub source_module: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub handler_module: Option<String>,
    pub handler_kind: Option<String>,
    pub attempts: i32,
    pub last_http_status: Option<i32>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub emitted_at: DateTime<Utc>,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next_cursor: Option<Uuid>,
}

#[derive(Deserialize, IntoParams, Debug)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    pub source_module: Option<String>,
    /// An event type or pattern.
    pub event_type: Option<String>,
    pub subscription_id: Option<Uuid>,
    /// Admins: one tenant's.
    pub tenant_id: Option<Uuid>,
    /// Page size, 1-500 (default 50).
    pub limit: Option<i32>,
    pub cursor: Option<Uuid>,
}

/// Which dead letters to re-arm (all absent: every one the caller may repair).
#[derive(Serialize, Deserialize, ToSchema, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryMatching {
    pub source_module: Option<String>,
    pub event_type: Option<String>,
    pub subscription_id: Option<Uuid>,
    pub tenant_id: Option<Uuid>,
    /// Emitted at or after.
    pub from: Option<DateTime<Utc>>,
    /// Emitted before.
    pub to: Option<DateTime<Utc>>,
    /// Count only, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct RetryCount {
    /// Re-armed, or (dry run) that would be.
    pub count: i32,
    pub dry_run: bool,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// A subscription with its health (event_bus.subscription_health).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Subscription {
    pub id: Uuid,
    /// The event-type pattern.
    pub event_type: String,
    pub handler_module: String,
    pub handler_kind: String,
    /// null: serves every tenant.
    pub tenant_id: Option<Uuid>,
    pub is_active: bool,
    pub breaker_state: BreakerState,
    pub consecutive_failures: i32,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub attempts_1h: i64,
    pub failures_1h: i64,
    /// The content filter (SQL/JSON path predicate), if any.
    pub filter: Option<String>,
    pub filter_errors: i64,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct Changed {
    /// false: it already was so.
    pub changed: bool,
}

#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct BreakerReset {
    /// Held deliveries made due again.
    pub released: i32,
}

/// The delivery queue now (event_bus.queue_summary).
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct QueueSummary {
    pub undispatched: i64,
    pub oldest_undispatched_seconds: f64,
    pub due: i64,
    pub oldest_due_seconds: f64,
    pub held: i64,
    pub waiting: i64,
    pub dead_letters: i64,
    pub parked_streams: i64,
    pub open_breakers: i64,
}

#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Reader,
    Operator,
    Admin,
}

/// Who the request acts as.
#[derive(Serialize, Deserialize, ToSchema, Debug)]
pub struct SessionInfo {
    pub role: String,
    pub level: Level,
    /// The tenant the role is bound to (null: every tenant, an admin).
    pub tenant_id: Option<Uuid>,
    /// The token a cookie session's state changes send as X-CSRF-Token (empty for a bearer token).
    pub csrf_token: String,
}
