//! Events: the list with the events page's filters, one event with its deliveries and attempt log, the
//! statistics of a window, publishing.

use super::types::*;
use super::{check_csrf, failure, reply, unreadable};
use crate::db::Level;
use crate::error::AppError;
use crate::pages::{as_role, col, filter_text, query_as, FromRow, Tx};
use crate::web::Ctx;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use uuid::Uuid;

pub const MAX_LIMIT: i32 = 500;

/// The list's filters, checked, as list_events takes them.
pub struct Filter {
    pub status: Option<String>,
    pub event_type: Option<String>,
    pub source_module: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub correlation_id: Option<String>,
    pub tenant_id: Option<Uuid>,
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
}

fn one_of(
    a: Option<String>,
    b: Option<String>,
    names: (&str, &str),
) -> Result<Option<String>, AppError> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(AppError::invalid(
            "err-api-two-names",
            &[("first", names.0), ("second", names.1)],
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Empty values are no filter, as in the pages' forms.
fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// A free-text parameter as the pages take theirs: empty is none, beyond the bound 400.
pub fn text_param(v: &Option<String>, what: &str) -> Result<Option<String>, AppError> {
    filter_text(given(v.clone()).as_deref(), what)
}

impl Filter {
    pub fn of(q: &EventQuery) -> Result<Filter, AppError> {
        let status = given(q.status.clone()).map(|s| {
            if s == "processed" {
                "completed".to_string()
            } else {
                s
            }
        });
        if let Some(s) = &status {
            if event_bus_core::lifecycle::EventStatus::from_name(s).is_none() {
                return Err(AppError::invalid(
                    "err-status",
                    &[("value", &crate::pages::truncate(s, 30))],
                ));
            }
        }
        let text = text_param;
        if let (Some(f), Some(t)) = (q.from, q.to) {
            if f > t {
                return Err(AppError::invalid(
                    "err-from-after-to",
                    &[("from", &f.to_rfc3339()), ("to", &t.to_rfc3339())],
                ));
            }
        }
        Ok(Filter {
            status,
            event_type: text(&q.event_type, "type")?,
            source_module: text(&q.source_module, "source")?,
            entity_type: one_of(
                text(&q.entity_type, "entity_type")?,
                text(&q.aggregate_type, "entity_type")?,
                ("entity_type", "aggregate_type"),
            )?,
            entity_id: one_of(
                text(&q.entity_id, "entity_id")?,
                text(&q.aggregate_id, "entity_id")?,
                ("entity_id", "aggregate_id"),
            )?,
            correlation_id: text(&q.correlation_id, "correlation")?,
            tenant_id: q.tenant_id,
            from: q.from,
            to: q.to,
        })
    }
}

pub fn limit_of(limit: Option<i32>) -> Result<i32, AppError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(AppError::invalid(
            "err-api-limit",
            &[("value", &n.to_string()), ("max", &MAX_LIMIT.to_string())],
        )),
    }
}

pub const EVENT_COLUMNS: &str =
    "id, tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata, \
                             status, error_message, created_at, processed_at, is_request";

fn status_of<T: serde::de::DeserializeOwned>(s: String) -> Result<T, AppError> {
    serde_json::from_value(serde_json::Value::String(s.clone())).map_err(|_| {
        AppError::Db(crate::error::PgDetail {
            code: "XX000".into(),
            message: format!("unknown status {s:?} in the database"),
            hint: None,
        })
    })
}

impl FromRow for Event {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Event {
            id: col(r, "id")?,
            tenant_id: col(r, "tenant_id")?,
            event_type: col(r, "event_type")?,
            source_module: col(r, "source_module")?,
            entity_type: col(r, "entity_type")?,
            entity_id: col(r, "entity_id")?,
            payload: col(r, "payload")?,
            metadata: col(r, "metadata")?,
            status: status_of(col(r, "status")?)?,
            error_message: col(r, "error_message")?,
            created_at: col(r, "created_at")?,
            processed_at: col(r, "processed_at")?,
            is_request: col(r, "is_request")?,
        })
    }
}

/// Up to `limit` events of the filter older than `before` (newest first), as the role sees them.
pub async fn events_page(
    tx: &Tx<'_>,
    f: &Filter,
    before: Option<Uuid>,
    limit: i32,
) -> Result<Vec<Event>, AppError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}
           FROM event_bus.list_events(p_tenant_id => $1, p_source_module => $2, p_event_type => $3,
                                      p_status => $4, p_from => $5, p_to => $6, p_before => $7,
                                      p_limit => $8, p_entity_type => $9, p_entity_id => $10,
                                      p_correlation_id => $11)"
    );
    query_as(
        tx,
        &sql,
        &[
            &f.tenant_id,
            &f.source_module,
            &f.event_type,
            &f.status,
            &f.from,
            &f.to,
            &before,
            &limit,
            &f.entity_type,
            &f.entity_id,
            &f.correlation_id,
        ],
    )
    .await
}

/// Events, newest first, with the events page's filters; keyset pages by `cursor`.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", operation_id = "listEvents",
    params(EventQuery),
    responses((status = 200, body = EventPage), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_events(ctx: Ctx, q: Result<Query<EventQuery>, QueryRejection>) -> Response {
    let r = async {
        let Query(q) = q.map_err(|e| unreadable("query string", e.body_text()))?;
        if q.after.is_some() {
            return Err(AppError::invalid("err-api-after-stream", &[]));
        }
        let f = Filter::of(&q)?;
        let limit = limit_of(q.limit)?;
        let (mut items, _) = as_role(&ctx, async |tx, _| {
            events_page(tx, &f, q.cursor, limit + 1).await
        })
        .await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| e.id)
        } else {
            None
        };
        Ok(EventPage { items, next_cursor })
    }
    .await;
    reply(&ctx, r)
}

/// One event with its deliveries, its attempt log and the events its handlers emitted. 404 for an
/// event the role may not see (another tenant's).
#[utoipa::path(get, path = "/api/v1/events/{id}", tag = "events", operation_id = "getEvent",
    params(("id" = Uuid, Path, description = "The event id")),
    responses((status = 200, body = EventDetail), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn get_event(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = async {
        let id = crate::pages::uuid_param(&id, "event")?;
        let (d, _) = as_role(&ctx, async |tx, _| {
            let row = tx
                .query_one("SELECT event_bus.event_detail($1) AS detail", &[&id])
                .await
                .map_err(AppError::from_pg)?;
            col::<serde_json::Value>(&row, "detail")
        })
        .await?;
        serde_json::from_value::<EventDetail>(d).map_err(|e| {
            AppError::Db(crate::error::PgDetail {
                code: "XX000".into(),
                message: format!("event_detail returned what the API does not know: {e}"),
                hint: None,
            })
        })
    }
    .await;
    reply(&ctx, r)
}

/// Events emitted within a window by status: `{pending, processing, processed, failed, total}` as
/// design document 001's useEventStats has them (`completed` is `processed`).
#[utoipa::path(get, path = "/api/v1/stats", tag = "events", operation_id = "getEventStats",
    params(StatsQuery),
    responses((status = 200, body = EventStats), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn event_stats(ctx: Ctx, q: Result<Query<StatsQuery>, QueryRejection>) -> Response {
    let r = async {
        let Query(q) = q.map_err(|e| unreadable("query string", e.body_text()))?;
        let window = given(q.window).unwrap_or_else(|| "24 hours".to_string());
        if window.len() > 100 {
            return Err(AppError::invalid(
                "err-too-long",
                &[
                    ("what", "window"),
                    ("length", &window.len().to_string()),
                    ("max", "100"),
                ],
            ));
        }
        let (row, _) = as_role(&ctx, async |tx, _| {
            tx.query_one(
                "SELECT pending, processing, processed, failed, total
                   FROM event_bus.event_stats($1::text::interval, $2)",
                &[&window, &q.tenant_id],
            )
            .await
            .map_err(AppError::from_pg)
        })
        .await?;
        let processed: i64 = col(&row, "processed")?;
        Ok(EventStats {
            window: window.clone(),
            pending: col(&row, "pending")?,
            processing: col(&row, "processing")?,
            processed,
            completed: processed,
            failed: col(&row, "failed")?,
            total: col(&row, "total")?,
        })
    }
    .await;
    reply(&ctx, r)
}

/// Publish an event (event_bus.emit_module_event as the caller's role, in its own transaction).
/// Operators and admins; 403 for readers.
#[utoipa::path(post, path = "/api/v1/events", tag = "events", operation_id = "publishEvent",
    request_body = PublishEvent,
    responses((status = 201, body = Published), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn publish_event(ctx: Ctx, body: Result<Json<PublishEvent>, JsonRejection>) -> Response {
    let r = async {
        check_csrf(&ctx)?;
        let Json(p) = body.map_err(|e| unreadable("body", e.body_text()))?;
        let entity_type = one_of(given(p.entity_type), given(p.aggregate_type), ("entity_type", "aggregate_type"))?;
        let entity_id = one_of(given(p.entity_id), given(p.aggregate_id), ("entity_id", "aggregate_id"))?;
        let tenant = match (p.tenant_id, p.organization_id) {
            (Some(a), Some(b)) if a != b => {
                return Err(AppError::invalid("err-api-two-names", &[("first", "tenant_id"), ("second", "organization_id")]))
            }
            (a, b) => a.or(b),
        };
        let payload = p.payload.unwrap_or_else(|| serde_json::json!({}));
        let metadata = p.metadata.unwrap_or_else(|| serde_json::json!({}));
        let source = given(p.source_module);
        let (id, _) = as_role(&ctx, async |tx, who| {
            if who.level < Level::Operator {
                return Err(AppError::Forbidden(crate::error::PgDetail {
                    code: "42501".into(),
                    message: format!("role {} may not publish events", who.role),
                    hint: Some("Publishing takes event_bus_operator or event_bus_admin.".into()),
                }));
            }
            let row = tx
                .query_one(
                    "SELECT event_bus.emit_module_event(
                         coalesce($1::uuid, event_bus.current_tenant()), $2::text,
                         coalesce($3::text, nullif($7::jsonb ->> 'source_module', ''), $4::text), $4::text,
                         $5::text, $6::jsonb, $7::jsonb) AS id",
                    &[&tenant, &p.event_type, &source, &entity_type, &entity_id, &payload, &metadata],
                )
                .await
                .map_err(AppError::from_pg)?;
            col::<Uuid>(&row, "id")
        })
        .await?;
        Ok(Published { id })
    }
    .await;
    match r {
        Ok(p) => (StatusCode::CREATED, Json(p)).into_response(),
        Err(e) => failure(&ctx, e),
    }
}
