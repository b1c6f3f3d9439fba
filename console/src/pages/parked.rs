//! Ordered streams parked behind a failed delivery: retry or skip it.

use super::*;

pub async fn parked(ctx: Ctx) -> Response {
    let r = parked_inner(&ctx).await;
    ctx.respond(r)
}

/// A row of event_bus.parked_streams: a stream and the failed delivery that holds it.
struct Parked {
    handler: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<String>,
    delivery: Uuid,
    event: Uuid,
    event_type: String,
    attempts: i32,
    last_error: Option<String>,
    parked_at: Option<DateTime<Utc>>,
    waiting: i64,
}

impl FromRow for Parked {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Parked {
            handler: col(r, "handler_module")?,
            entity_type: col(r, "entity_type")?,
            entity_id: col(r, "entity_id")?,
            delivery: col(r, "delivery_id")?,
            event: col(r, "event_id")?,
            event_type: col(r, "event_type")?,
            attempts: col(r, "attempts")?,
            last_error: col(r, "last_error")?,
            parked_at: col(r, "parked_at")?,
            waiting: col(r, "waiting")?,
        })
    }
}

async fn parked_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let (rows, who) = as_role(ctx, async |tx, _| {
        query_as::<Parked>(
            tx,
            "SELECT handler_module, entity_type, entity_id, delivery_id, event_id, event_type, attempts,
                    last_error, parked_at, waiting
               FROM event_bus.parked_streams
              ORDER BY parked_at NULLS LAST, delivery_id
              LIMIT 500",
            &[],
        )
        .await
    })
    .await?;
    let can_write = who.level >= Level::Operator;
    let body = html! {
        h1 { (l.t("parked-title")) }
        (flash(ctx))
        @if rows.is_empty() { p.empty { (l.t("no-parked")) } } @else {
            table.parked {
                thead { tr {
                    th { (l.t("handler")) } th { (l.t("entity")) } th { (l.t("blocking-delivery")) } th { (l.t("attempts")) }
                    th { (l.t("last-error")) } th { (l.t("parked-at")) } th { (l.t("waiting")) }
                    @if can_write { th {} }
                } }
                tbody { @for r in &rows {
                    tr data-delivery=(r.delivery) {
                        td { (r.handler.as_deref().unwrap_or_default()) }
                        td { (r.entity_type.as_deref().unwrap_or_default()) " " code { (r.entity_id.as_deref().unwrap_or_default()) } }
                        td { a href={ "/events/" (r.event) } { code { (r.event_type) } } }
                        td.num { (l.num(r.attempts as i64)) }
                        td.err { (truncate(r.last_error.as_deref().unwrap_or_default(), 200)) }
                        td { (time(ts(r.parked_at).as_deref())) }
                        td.num { (l.num(r.waiting)) }
                        @if can_write { td.actions {
                            form.inline method="post" action={ "/events/" (r.event) "/retry" } { (ctx.csrf_field()) button type="submit" { (l.t("retry")) } }
                            form.inline method="post" action={ "/deliveries/" (r.delivery) "/skip" } {
                                (ctx.csrf_field()) input type="hidden" name="back" value="/parked";
                                button type="submit" { (l.t("skip")) }
                            }
                        } }
                    }
                } }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("parked-title"), body))
}
