//! Operations: dead letters and retries, processing by hand, the queue, subscriptions, the session.

use super::events::{limit_of, text_param};
use super::types::*;
use super::{check_csrf, reply, unreadable};
use crate::error::AppError;
use crate::pages::{as_role, col, query_as, uuid_param, FromRow};
use crate::web::Ctx;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::response::Response;
use axum::Json;

/// One write of the SQL API as the signed-in role (the pages' `write`), after the API's CSRF check.
async fn write(
    ctx: &Ctx,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, AppError> {
    check_csrf(ctx)?;
    crate::pages::write(ctx, sql, params).await
}

/// Re-arm the failed deliveries of one event (event_bus.retry_event). Operators and admins.
#[utoipa::path(post, path = "/api/v1/events/{id}/retry", tag = "operations", operation_id = "retryEvent",
    params(("id" = Uuid, Path, description = "The event id")),
    responses((status = 200, body = Retried), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn retry_event(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = async {
        let id = uuid_param(&id, "event")?;
        let row = write(&ctx, "SELECT event_bus.retry_event($1) AS n", &[&id]).await?;
        Ok(Retried {
            retried: col(&row, "n")?,
        })
    }
    .await;
    reply(&ctx, r)
}

/// Deliver up to `limit` due deliveries now, in the console's session (event_bus.process_pending_events).
/// Admins.
#[utoipa::path(post, path = "/api/v1/process-pending", tag = "operations", operation_id = "processPendingEvents",
    request_body = ProcessPending,
    responses((status = 200, body = Processed), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn process_pending(
    ctx: Ctx,
    body: Result<Json<ProcessPending>, JsonRejection>,
) -> Response {
    let r = async {
        let Json(p) = body.map_err(|e| unreadable("body", e.body_text()))?;
        let limit = p.limit.unwrap_or(100);
        let row = write(
            &ctx,
            "SELECT event_bus.process_pending_events($1) AS n",
            &[&limit],
        )
        .await?;
        Ok(Processed {
            attempted: col(&row, "n")?,
        })
    }
    .await;
    reply(&ctx, r)
}

impl FromRow for DeadLetter {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(DeadLetter {
            delivery_id: col(r, "delivery_id")?,
            event_id: col(r, "event_id")?,
            subscription_id: col(r, "subscription_id")?,
            tenant_id: col(r, "tenant_id")?,
            event_type: col(r, "event_type")?,
            source_module: col(r, "source_module")?,
            entity_type: col(r, "entity_type")?,
            entity_id: col(r, "entity_id")?,
            handler_module: col(r, "handler_module")?,
            handler_kind: col(r, "handler_kind")?,
            attempts: col(r, "attempts")?,
            last_http_status: col(r, "last_http_status")?,
            last_error: col(r, "last_error")?,
            last_attempt_at: col(r, "last_attempt_at")?,
            failed_at: col(r, "failed_at")?,
            emitted_at: col(r, "emitted_at")?,
        })
    }
}

/// Dead letters, newest first, by source module, event type (pattern), subscription and tenant.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "operations", operation_id = "listDeadLetters",
    params(DeadLetterQuery),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn list_dead_letters(
    ctx: Ctx,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Response {
    let r = async {
        let Query(q) = q.map_err(|e| unreadable("query string", e.body_text()))?;
        let limit = limit_of(q.limit)?;
        let source = text_param(&q.source_module, "source")?;
        let event_type = text_param(&q.event_type, "type")?;
        let (mut items, _) = as_role(&ctx, async |tx, _| {
            if let Some(t) = &event_type {
                // a bad pattern is 22023 with the reason, not an empty list
                tx.query_one("SELECT event_bus._check_pattern($1)", &[t])
                    .await
                    .map_err(AppError::from_pg)?;
            }
            query_as::<DeadLetter>(
                tx,
                crate::pages::DEAD_LETTERS_SQL,
                &[
                    &q.tenant_id,
                    &source,
                    &event_type,
                    &q.subscription_id,
                    &q.cursor,
                    &(limit as i64 + 1),
                ],
            )
            .await
        })
        .await?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|d| d.delivery_id)
        } else {
            None
        };
        Ok(DeadLetterPage { items, next_cursor })
    }
    .await;
    reply(&ctx, r)
}

/// Re-arm every dead letter matching the filters (event_bus.retry_failed); `dry_run` counts them and
/// changes nothing. Operators (their tenant) and admins.
#[utoipa::path(post, path = "/api/v1/dead-letters/retry", tag = "operations", operation_id = "retryDeadLetters",
    request_body = RetryMatching,
    responses((status = 200, body = RetryCount), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 503, body = ApiError)))]
pub async fn retry_dead_letters(
    ctx: Ctx,
    body: Result<Json<RetryMatching>, JsonRejection>,
) -> Response {
    let r = async {
        let Json(m) = body.map_err(|e| unreadable("body", e.body_text()))?;
        let source = text_param(&m.source_module, "source")?;
        let event_type = text_param(&m.event_type, "type")?;
        let row = write(
            &ctx,
            "SELECT event_bus.retry_failed(p_tenant_id => $1, p_source_module => $2, p_event_type => $3,
                                           p_subscription_id => $4, p_from => $5, p_to => $6, p_dry_run => $7) AS n",
            &[&m.tenant_id, &source, &event_type, &m.subscription_id, &m.from, &m.to, &m.dry_run],
        )
        .await?;
        Ok(RetryCount {
            count: col(&row, "n")?,
            dry_run: m.dry_run,
        })
    }
    .await;
    reply(&ctx, r)
}

/// Re-arm one dead letter (event_bus.retry_delivery); the event's other deliveries stay as they are.
#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", tag = "operations", operation_id = "retryDelivery",
    params(("id" = Uuid, Path, description = "The delivery id")),
    responses((status = 200, body = Retried), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn retry_delivery(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = async {
        let id = uuid_param(&id, "delivery")?;
        let row = write(&ctx, "SELECT event_bus.retry_delivery($1) AS n", &[&id]).await?;
        Ok(Retried {
            retried: col(&row, "n")?,
        })
    }
    .await;
    reply(&ctx, r)
}

/// Give up a dead letter (event_bus.skip_delivery): kept with its log, not sent again; an ordered
/// stream goes on. 409 if it is not dead.
#[utoipa::path(post, path = "/api/v1/deliveries/{id}/skip", tag = "operations", operation_id = "skipDelivery",
    params(("id" = Uuid, Path, description = "The delivery id")),
    responses((status = 200, body = Skipped), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn skip_delivery(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = async {
        let id = uuid_param(&id, "delivery")?;
        let row = write(&ctx, "SELECT event_bus.skip_delivery($1) AS s", &[&id]).await?;
        Ok(Skipped {
            skipped: col(&row, "s")?,
        })
    }
    .await;
    reply(&ctx, r)
}

/// The delivery queue now: events not yet fanned out, due deliveries, held, waiting, dead letters,
/// parked streams, open breakers.
#[utoipa::path(get, path = "/api/v1/queue", tag = "operations", operation_id = "getQueueSummary",
    responses((status = 200, body = QueueSummary), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn queue_summary(ctx: Ctx) -> Response {
    let r = async {
        let (row, _) = as_role(&ctx, async |tx, _| {
            tx.query_one(
                "SELECT undispatched, oldest_undispatched_seconds, due, oldest_due_seconds, held, waiting,
                        dead_letters, parked_streams, open_breakers
                   FROM event_bus.queue_summary()",
                &[],
            )
            .await
            .map_err(AppError::from_pg)
        })
        .await?;
        Ok(QueueSummary {
            undispatched: col(&row, "undispatched")?,
            oldest_undispatched_seconds: col(&row, "oldest_undispatched_seconds")?,
            due: col(&row, "due")?,
            oldest_due_seconds: col(&row, "oldest_due_seconds")?,
            held: col(&row, "held")?,
            waiting: col(&row, "waiting")?,
            dead_letters: col(&row, "dead_letters")?,
            parked_streams: col(&row, "parked_streams")?,
            open_breakers: col(&row, "open_breakers")?,
        })
    }
    .await;
    reply(&ctx, r)
}

impl FromRow for Subscription {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        let breaker: String = col(r, "breaker_state")?;
        Ok(Subscription {
            id: col(r, "subscription_id")?,
            event_type: col(r, "event_type")?,
            handler_module: col(r, "handler_module")?,
            handler_kind: col(r, "handler_kind")?,
            tenant_id: col(r, "tenant_id")?,
            is_active: col(r, "is_active")?,
            breaker_state: serde_json::from_value(serde_json::Value::String(breaker))
                .unwrap_or(BreakerState::Closed),
            consecutive_failures: col(r, "consecutive_failures")?,
            last_success_at: col(r, "last_success_at")?,
            last_failure_at: col(r, "last_failure_at")?,
            last_error: col(r, "last_error")?,
            attempts_1h: col(r, "attempts_1h")?,
            failures_1h: col(r, "failures_1h")?,
            filter: col(r, "filter")?,
            filter_errors: col(r, "filter_errors")?,
        })
    }
}

const SUBSCRIPTION_SQL: &str =
    "SELECT subscription_id, event_type, handler_module, handler_kind, tenant_id, is_active, breaker_state,
            consecutive_failures, last_success_at, last_failure_at, last_error, attempts_1h, failures_1h,
            filter::text AS filter, filter_errors
       FROM event_bus.subscription_health";

/// Subscriptions with their health, as the role sees them (its tenant's and the shared ones).
#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "subscriptions", operation_id = "listSubscriptions",
    responses((status = 200, body = Vec<Subscription>), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn list_subscriptions(ctx: Ctx) -> Response {
    let r = async {
        let (rows, _) = as_role(&ctx, async |tx, _| {
            query_as::<Subscription>(
                tx,
                &format!("{SUBSCRIPTION_SQL} ORDER BY handler_module, event_type, subscription_id"),
                &[],
            )
            .await
        })
        .await?;
        Ok(rows)
    }
    .await;
    reply(&ctx, r)
}

async fn set_active(ctx: &Ctx, id: &str, active: bool) -> Result<Changed, AppError> {
    let id = uuid_param(id, "subscription")?;
    let row = write(
        ctx,
        "SELECT event_bus.set_subscription_active($1, $2) AS c",
        &[&id, &active],
    )
    .await?;
    Ok(Changed {
        changed: col(&row, "c")?,
    })
}

/// Pause a subscription: no new deliveries, its due ones wait. Operators (their tenant's) and admins.
#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/pause", tag = "subscriptions", operation_id = "pauseSubscription",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses((status = 200, body = Changed), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn pause_subscription(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = set_active(&ctx, &id, false).await;
    reply(&ctx, r)
}

/// Resume a paused subscription.
#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/resume", tag = "subscriptions", operation_id = "resumeSubscription",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses((status = 200, body = Changed), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn resume_subscription(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = set_active(&ctx, &id, true).await;
    reply(&ctx, r)
}

/// Close a subscription's circuit breaker now; its held deliveries become due. Admins.
#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/reset-breaker", tag = "subscriptions", operation_id = "resetBreaker",
    params(("id" = Uuid, Path, description = "The subscription id")),
    responses((status = 200, body = BreakerReset), (status = 400, body = ApiError), (status = 401, body = ApiError),
              (status = 403, body = ApiError), (status = 404, body = ApiError), (status = 503, body = ApiError)))]
pub async fn reset_breaker(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = async {
        let id = uuid_param(&id, "subscription")?;
        let row = write(&ctx, "SELECT event_bus.reset_breaker($1) AS n", &[&id]).await?;
        Ok(BreakerReset {
            released: col(&row, "n")?,
        })
    }
    .await;
    reply(&ctx, r)
}

/// Who the request acts as, its level and tenant, and (a cookie session) the CSRF token its state
/// changes send as X-CSRF-Token.
#[utoipa::path(get, path = "/api/v1/session", tag = "session", operation_id = "getSession",
    responses((status = 200, body = SessionInfo), (status = 401, body = ApiError), (status = 403, body = ApiError),
              (status = 503, body = ApiError)))]
pub async fn session(ctx: Ctx) -> Response {
    let r = async {
        let ((), who) = as_role(&ctx, async |_, _| Ok(())).await?;
        Ok(SessionInfo {
            role: who.role.clone(),
            level: match who.level {
                crate::db::Level::Reader => Level::Reader,
                crate::db::Level::Operator => Level::Operator,
                crate::db::Level::Admin => Level::Admin,
            },
            tenant_id: who.tenant,
            csrf_token: ctx.csrf().to_string(),
        })
    }
    .await;
    reply(&ctx, r)
}
