//! Dead letters (failed deliveries): filters, the list, retrying what the filters select.

use super::*;

struct DeadFilter {
    tenant: Option<Uuid>,
    source: Option<String>,
    event_type: Option<String>,
    subscription: Option<Uuid>,
}

impl DeadFilter {
    fn parse(get: impl Fn(&str) -> Option<String>) -> Result<DeadFilter, AppError> {
        let u = |k: &str, what: &str| get(k).map(|v| uuid_param(&v, what)).transpose();
        Ok(DeadFilter {
            tenant: u("tenant", "tenant")?,
            source: filter_text(get("source").as_deref(), "source")?,
            event_type: filter_text(get("type").as_deref(), "type")?,
            subscription: u("subscription", "subscription")?,
        })
    }

    fn query(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        if let Some(t) = self.tenant {
            s.append_pair("tenant", &t.to_string());
        }
        if let Some(v) = &self.source {
            s.append_pair("source", v);
        }
        if let Some(v) = &self.event_type {
            s.append_pair("type", v);
        }
        if let Some(v) = self.subscription {
            s.append_pair("subscription", &v.to_string());
        }
        s.finish()
    }
}

/// A row of event_bus.dead_letters.
struct Dead {
    delivery: Uuid,
    event: Uuid,
    tenant: Uuid,
    event_type: String,
    source: String,
    handler: Option<String>,
    kind: Option<String>,
    attempts: i32,
    http_status: Option<i32>,
    last_error: Option<String>,
    failed_at: Option<DateTime<Utc>>,
}

impl FromRow for Dead {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Dead {
            delivery: col(r, "delivery_id")?,
            event: col(r, "event_id")?,
            tenant: col(r, "tenant_id")?,
            event_type: col(r, "event_type")?,
            source: col(r, "source_module")?,
            handler: col(r, "handler_module")?,
            kind: col(r, "handler_kind")?,
            attempts: col(r, "attempts")?,
            http_status: col(r, "last_http_status")?,
            last_error: col(r, "last_error")?,
            failed_at: col(r, "failed_at")?,
        })
    }
}

/// Dead letters, newest first, by tenant ($1), source module ($2), event-type pattern ($3),
/// subscription ($4), older than a delivery id ($5, the page's cursor), at most $6: the page's and
/// the JSON API's one query.
pub const DEAD_LETTERS_SQL: &str =
    "SELECT delivery_id, event_id, subscription_id, tenant_id, event_type, source_module, entity_type,
            entity_id, handler_module, handler_kind, attempts, last_http_status, last_error,
            last_attempt_at, failed_at, emitted_at
       FROM event_bus.dead_letters
      WHERE ($1::uuid IS NULL OR tenant_id = $1)
        AND ($2::text IS NULL OR source_module = $2)
        AND ($3::text IS NULL OR event_bus.matches($3, event_type))
        AND ($4::uuid IS NULL OR subscription_id = $4)
        AND ($5::uuid IS NULL OR delivery_id < $5)
      ORDER BY delivery_id DESC
      LIMIT $6";

pub async fn dead_letters(ctx: Ctx) -> Response {
    let r = dead_inner(&ctx).await;
    ctx.respond(r)
}

async fn dead_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let f = DeadFilter::parse(|k| ctx.q(k).map(str::to_string))?;
    let before = opt_uuid(ctx, "before", "page")?;
    let ((rows, preview), who) = as_role(ctx, async |tx, who| {
        let rows: Vec<Dead> = query_as(
            tx,
            DEAD_LETTERS_SQL,
            &[&f.tenant, &f.source, &f.event_type, &f.subscription, &before, &(PAGE_SIZE as i64)],
        )
        .await?;
        // the dry run: how many a retry of everything matching would re-arm
        let preview: Option<i64> = if ctx.q("preview").is_some() && who.level >= Level::Operator {
            let r = tx
                .query_one(
                    "SELECT event_bus.retry_failed(p_tenant_id => $1, p_source_module => $2, p_event_type => $3,
                                                   p_subscription_id => $4, p_dry_run => true)",
                    &[&f.tenant, &f.source, &f.event_type, &f.subscription],
                )
                .await
                .map_err(AppError::from_pg)?;
            Some(col::<i32>(&r, "retry_failed")? as i64)
        } else {
            None
        };
        Ok((rows, preview))
    })
    .await?;
    let can_write = who.level >= Level::Operator;
    let admin = who.level == Level::Admin;
    let qs = f.query();
    let body = html! {
        h1 { (l.t("dead-title")) }
        (flash(ctx))
        form.filters method="get" action="/dead-letters" {
            label { (l.t("source-module")) input name="source" value=[f.source.as_deref()]; }
            label title=(l.t("event-type-help")) { (l.t("event-type")) input name="type" value=[f.event_type.as_deref()]; }
            label { (l.t("subscription")) input name="subscription" value=[f.subscription.map(|t| t.to_string())] size="36"; }
            @if admin { label { (l.t("tenant")) input name="tenant" value=[f.tenant.map(|t| t.to_string())] size="36"; } }
            button type="submit" { (l.t("filter")) }
            a href="/dead-letters" { (l.t("filter-clear")) }
        }
        @if can_write && !rows.is_empty() {
            @match preview {
                None => form.inline.preview method="get" action="/dead-letters" {
                    @for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="preview" value="1";
                    button type="submit" { (l.t("retry-matching")) "…" }
                },
                Some(n) => form.inline.confirm method="post" action="/dead-letters/retry" {
                    (ctx.csrf_field())
                    @for (k, v) in url::form_urlencoded::parse(qs.as_bytes()) { input type="hidden" name=(k) value=(v); }
                    span { (l.count("retry-matching-preview", n)) " " }
                    button.primary type="submit" { (l.count("retry-matching-confirm", n)) }
                },
            }
        }
        @if rows.is_empty() { p.empty { (l.t("no-dead")) } } @else {
            table.dead {
                thead { tr {
                    th { (l.t("dead-at")) } th { (l.t("event-type")) } th { (l.t("source-module")) } th { (l.t("handler")) }
                    th { (l.t("attempts")) } th { (l.t("http-status")) } th { (l.t("last-error")) }
                    @if admin { th { (l.t("tenant")) } }
                    @if can_write { th {} }
                } }
                tbody { @for r in &rows {
                    tr data-delivery=(r.delivery) {
                        td { (time(ts(r.failed_at).as_deref())) }
                        td { a href={ "/events/" (r.event) } { code { (r.event_type) } } }
                        td { (r.source) }
                        td { (r.handler.as_deref().unwrap_or_default()) " " span.muted { (r.kind.as_deref().unwrap_or_default()) } }
                        td.num { (l.num(r.attempts as i64)) }
                        td.num { (r.http_status.map(|n| n.to_string()).unwrap_or_default()) }
                        td.err { (truncate(r.last_error.as_deref().unwrap_or_default(), 300)) }
                        @if admin { td { code.small { (r.tenant) } } }
                        @if can_write { td.actions {
                            form.inline method="post" action={ "/events/" (r.event) "/retry" } {
                                (ctx.csrf_field()) button type="submit" { (l.t("retry")) }
                            }
                            form.inline method="post" action={ "/deliveries/" (r.delivery) "/skip" } {
                                (ctx.csrf_field()) input type="hidden" name="back" value="/dead-letters";
                                button type="submit" { (l.t("skip")) }
                            }
                        } }
                    }
                } }
            }
            @if rows.len() == PAGE_SIZE as usize {
                nav.pager { a rel="next" href={ "/dead-letters?" (qs) (if qs.is_empty() { "" } else { "&" }) "before=" (rows.last().expect("full").delivery) } { (l.t("next-page")) " »" } }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("dead-title"), body))
}

pub async fn retry_dead(ctx: Ctx, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let f = DeadFilter::parse(|k| form.get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()))?;
        let row = write(
            &ctx,
            "SELECT event_bus.retry_failed(p_tenant_id => $1, p_source_module => $2, p_event_type => $3,
                                           p_subscription_id => $4)",
            &[&f.tenant, &f.source, &f.event_type, &f.subscription],
        )
        .await?;
        let n: i32 = col(&row, "retry_failed")?;
        Ok(see_other(&format!("/dead-letters?done=retried&n={n}")))
    }
    .await;
    ctx.respond(r)
}
