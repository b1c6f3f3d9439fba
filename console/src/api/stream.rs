//! The live stream: new events as server-sent events, each `event: event` with the event as JSON and
//! its id as the SSE id (a reconnect's `Last-Event-ID` resumes after it). Woken by the same LISTEN as
//! the events page's live tail, and read through list_events as the signed-in role, so row-level
//! security filters the stream as it filters the list.

use super::events::{events_page, Filter};
use super::types::*;
use super::{failure, unreadable};
use crate::error::AppError;
use crate::pages::as_role;
use crate::web::Ctx;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Events committed from now on (or after `after` / `Last-Event-ID`) that match the filters, oldest
/// first, as `text/event-stream`: `event: event`, `id: <event id>`, `data: <Event JSON>`; a comment
/// every 15 s keeps the connection open. `event: signed-out` when the session ends, `event: down` while
/// the database is unreachable (the stream goes on when it is back).
#[utoipa::path(get, path = "/api/v1/events/stream", tag = "events", operation_id = "streamEvents",
    params(EventQuery),
    responses((status = 200, description = "Server-sent events, each `data:` an Event", content_type = "text/event-stream", body = Event),
              (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError)))]
pub async fn event_stream(ctx: Ctx, q: Result<Query<EventQuery>, QueryRejection>) -> Response {
    let start = async {
        let Query(q) = q.map_err(|e| unreadable("query string", e.body_text()))?;
        if q.cursor.is_some() || q.limit.is_some() {
            return Err(AppError::invalid("err-api-stream-page", &[]));
        }
        let f = Filter::of(&q)?;
        // signed in, a role of event_bus, and filters the database takes: refused now, not after the
        // stream started
        as_role(&ctx, async |tx, _| events_page(tx, &f, None, 1).await).await?;
        let last = ctx
            .headers
            .get("last-event-id")
            .and_then(|h| h.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok());
        Ok((f, last.or(q.after)))
    }
    .await;
    let (f, after) = match start {
        Ok(s) => s,
        Err(e) => return failure(&ctx, e),
    };
    let rx = ctx.app.live.tx.subscribe();
    let state = Tail {
        ctx,
        f,
        after,
        rx,
        first: true,
    };
    axum::response::sse::Sse::new(tail(state))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Tail {
    ctx: Ctx,
    f: Filter,
    after: Option<Uuid>,
    rx: broadcast::Receiver<()>,
    first: bool,
}

/// At most this many events are read per wake-up; more wait for the next look (at once).
const BATCH: i32 = 200;

fn tail(state: Tail) -> impl Stream<Item = Result<Sse, Infallible>> {
    stream::unfold(
        (state, Vec::<Event>::new()),
        |(mut st, mut queue)| async move {
            loop {
                if let Some(e) = queue.pop() {
                    // the queue holds a batch newest first: pop gives the oldest
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    let ev = Sse::default()
                        .event("event")
                        .id(e.id.to_string())
                        .data(data);
                    return Some((Ok(ev), (st, queue)));
                }
                if !st.first {
                    let _ = tokio::time::timeout(Duration::from_secs(3), st.rx.recv()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while st.rx.try_recv().is_ok() {}
                }
                st.first = false;
                let after = st.after;
                let f = &st.f;
                let r = as_role(&st.ctx, async |tx, _| newer(tx, f, after).await).await;
                match r {
                    Ok(((rows, newest), _)) => {
                        if st.after.is_none() {
                            // from now on: start after the newest event there is
                            st.after = Some(newest.unwrap_or(Uuid::nil()));
                            continue;
                        }
                        if let Some(n) = rows.first() {
                            st.after = Some(n.id);
                        }
                        queue = rows;
                    }
                    Err(AppError::SignIn { .. }) => {
                        return Some((
                            Ok(Sse::default().event("signed-out").data("")),
                            (st, queue),
                        ));
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        return Some((Ok(Sse::default().event("down").data("")), (st, queue)));
                    }
                }
            }
        },
    )
}

/// The events after `after` that match, oldest first (at most BATCH), or with no `after` none and the
/// newest id there is. Ids are UUIDv7: id order is commit order closely enough for a tail that also
/// looks again every few seconds (an event committed late with an older id is missed only if it is
/// older than what the stream already sent, as on the events page).
async fn newer(
    tx: &crate::pages::Tx<'_>,
    f: &Filter,
    after: Option<Uuid>,
) -> Result<(Vec<Event>, Option<Uuid>), AppError> {
    let Some(after) = after else {
        // list_events checks the filters (a bad pattern is 22023) and gives the newest
        let newest = events_page(tx, f, None, 1).await?.first().map(|e| e.id);
        return Ok((vec![], newest));
    };
    let mut rows: Vec<Event> = crate::pages::query_as(
        tx,
        &format!(
            "SELECT {cols} FROM event_bus.module_events
              WHERE id > $1
                AND ($2::uuid IS NULL OR tenant_id = $2)
                AND ($3::text IS NULL OR source_module = $3)
                AND ($4::text IS NULL OR event_bus.matches($4, event_type))
                AND ($5::text IS NULL OR status = $5)
                AND ($6::timestamptz IS NULL OR created_at >= $6)
                AND ($7::timestamptz IS NULL OR created_at < $7)
                AND ($8::text IS NULL OR entity_type = $8)
                AND ($9::text IS NULL OR entity_id = $9)
                AND ($10::text IS NULL OR metadata ->> 'correlation_id' = $10)
              ORDER BY id
              LIMIT $11",
            cols = super::events::EVENT_COLUMNS
        ),
        &[
            &after,
            &f.tenant_id,
            &f.source_module,
            &f.event_type,
            &f.status,
            &f.from,
            &f.to,
            &f.entity_type,
            &f.entity_id,
            &f.correlation_id,
            &(BATCH as i64),
        ],
    )
    .await?;
    // the queue pops from the end: newest first
    rows.reverse();
    Ok((rows, None))
}
