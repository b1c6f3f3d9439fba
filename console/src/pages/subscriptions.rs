//! Subscriptions with their health and content filters; reset a breaker, pause or resume, set a
//! filter (admins).

use super::*;

pub async fn subscriptions(ctx: Ctx) -> Response {
    let r = subs_inner(&ctx).await;
    ctx.respond(r)
}

/// A row of event_bus.subscription_health.
struct Health {
    id: Uuid,
    pattern: String,
    handler: String,
    kind: String,
    tenant: Option<Uuid>,
    active: bool,
    breaker: String,
    consecutive_failures: i32,
    attempts_1h: i64,
    failures_1h: i64,
    last_error: Option<String>,
    last_success: Option<DateTime<Utc>>,
    filter: Option<String>,
    filter_errors: i64,
}

impl FromRow for Health {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Health {
            id: col(r, "subscription_id")?,
            pattern: col(r, "event_type")?,
            handler: col(r, "handler_module")?,
            kind: col(r, "handler_kind")?,
            tenant: col(r, "tenant_id")?,
            active: col(r, "is_active")?,
            breaker: col(r, "breaker_state")?,
            consecutive_failures: col(r, "consecutive_failures")?,
            attempts_1h: col(r, "attempts_1h")?,
            failures_1h: col(r, "failures_1h")?,
            last_error: col(r, "last_error")?,
            last_success: col(r, "last_success_at")?,
            filter: col(r, "filter")?,
            filter_errors: col(r, "filter_errors")?,
        })
    }
}

/// A row of event_bus.subscription_targets() (admins only).
struct Target {
    id: Uuid,
    target: String,
    secret_hint: Option<String>,
}

impl FromRow for Target {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Target {
            id: col(r, "subscription_id")?,
            target: col(r, "target")?,
            secret_hint: col(r, "secret_hint")?,
        })
    }
}

async fn subs_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let ((rows, targets), who) = as_role(ctx, async |tx, who| {
        let rows: Vec<Health> = query_as(
            tx,
            "SELECT h.subscription_id, h.event_type, h.handler_module, h.handler_kind, h.tenant_id, h.is_active,
                    h.breaker_state, h.consecutive_failures, h.attempts_1h, h.failures_1h, h.last_error,
                    h.last_success_at, h.filter::text AS filter, h.filter_errors
               FROM event_bus.subscription_health h
              ORDER BY h.handler_module, h.event_type, h.subscription_id",
            &[],
        )
        .await?;
        // targets and secrets: admins only (subscription_targets() is theirs alone)
        let targets: HashMap<Uuid, Target> = if who.level == Level::Admin {
            query_as::<Target>(
                tx,
                "SELECT subscription_id, target, secret_hint FROM event_bus.subscription_targets()",
                &[],
            )
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect()
        } else {
            HashMap::new()
        };
        Ok((rows, targets))
    })
    .await?;
    let can_write = who.level >= Level::Operator;
    let admin = who.level == Level::Admin;
    let body = html! {
        h1 { (l.t("subs-title")) }
        (flash(ctx))
        @if rows.is_empty() { p.empty { (l.t("no-subs")) } } @else {
            table.subs {
                thead { tr {
                    th { (l.t("handler")) } th { (l.t("pattern")) } th { (l.t("kind")) } th { (l.t("active")) }
                    th { (l.t("breaker")) } th { (l.t("consecutive-failures")) } th { (l.t("attempts-1h")) }
                    th { (l.t("failures-1h")) } th { (l.t("last-error")) } th { (l.t("last-success")) }
                    th { (l.t("sub-filter")) }
                    @if admin { th { (l.t("target")) } th { (l.t("tenant")) } }
                    @if can_write { th {} }
                } }
                tbody { @for r in &rows {
                    tr id={ "sub-" (r.id) } data-subscription=(r.id) {
                        td { (r.handler) }
                        td { a href={ "/dead-letters?subscription=" (r.id) } { code { (r.pattern) } } }
                        td { (r.kind) }
                        td { (l.t(if r.active { "yes" } else { "no" })) }
                        td { (badge(l, &r.breaker)) }
                        td.num { (l.num(r.consecutive_failures as i64)) }
                        td.num { (l.num(r.attempts_1h)) }
                        td.num { (l.num(r.failures_1h)) }
                        td.err { (truncate(r.last_error.as_deref().unwrap_or_default(), 200)) }
                        td { (time(ts(r.last_success).as_deref())) }
                        td.filter {
                            @if admin {
                                form.filter method="post" action={ "/subscriptions/" (r.id) "/filter" } {
                                    (ctx.csrf_field())
                                    input type="text" name="filter" value=(r.filter.as_deref().unwrap_or_default())
                                        placeholder=(l.t("filter-placeholder")) aria-label=(l.t("sub-filter"));
                                    button type="submit" { (l.t("save")) }
                                }
                            } @else if let Some(f) = &r.filter {
                                code.small { (f) }
                            }
                            @if r.filter_errors > 0 {
                                br; span.warn title=(l.t("filter-errors-title")) { (l.count("filter-errors", r.filter_errors)) }
                            }
                        }
                        @if admin {
                            td {
                                @if let Some(t) = targets.get(&r.id) {
                                    code.small { (t.target) }
                                    @if let Some(h) = &t.secret_hint { br; span.muted { (l.t("secret")) ": " code.small { (h) } } }
                                }
                            }
                            td { @match r.tenant { Some(t) => code.small { (t) }, None => em { (l.t("all-tenants")) } } }
                        }
                        @if can_write { td.actions {
                            @if r.breaker != "closed" && admin {
                                form.inline method="post" action={ "/subscriptions/" (r.id) "/reset" } {
                                    (ctx.csrf_field()) button type="submit" { (l.t("reset-breaker")) }
                                }
                            }
                            form.inline method="post" action={ "/subscriptions/" (r.id) (if r.active { "/pause" } else { "/resume" }) } {
                                (ctx.csrf_field()) button type="submit" { (l.t(if r.active { "pause" } else { "resume" })) }
                            }
                        } }
                    }
                } }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("subs-title"), body))
}

pub async fn reset_breaker(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        read_form(body, &ctx).await?;
        let id = uuid_param(&id, "subscription")?;
        let row = write(&ctx, "SELECT event_bus.reset_breaker($1) AS n", &[&id]).await?;
        let n: i32 = col(&row, "n")?;
        Ok(see_other(&format!("/subscriptions?done=reset&n={n}")))
    }
    .await;
    ctx.respond(r)
}

pub async fn set_active(
    ctx: Ctx,
    Path((id, action)): Path<(String, String)>,
    body: String,
) -> Response {
    let r = async {
        read_form(body, &ctx).await?;
        let id = uuid_param(&id, "subscription")?;
        let active = match action.as_str() {
            "pause" => false,
            "resume" => true,
            _ => return Err(AppError::NoPage),
        };
        write(
            &ctx,
            "SELECT event_bus.set_subscription_active($1, $2)",
            &[&id, &active],
        )
        .await?;
        Ok(see_other(&format!(
            "/subscriptions?done={}",
            if active { "resumed" } else { "paused" }
        )))
    }
    .await;
    ctx.respond(r)
}

/// Set or (empty) remove a subscription's content filter: admins (event_bus.set_subscription_filter
/// refuses anyone else, and a filter that does not parse or is not a predicate with 22023).
pub async fn set_filter(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let id = uuid_param(&id, "subscription")?;
        let filter = form
            .get("filter")
            .map(|f| f.trim())
            .filter(|f| !f.is_empty())
            .map(str::to_string);
        write(
            &ctx,
            "SELECT event_bus.set_subscription_filter($1, $2)",
            &[&id, &filter],
        )
        .await?;
        Ok(see_other("/subscriptions?done=filter"))
    }
    .await;
    ctx.respond(r)
}
