//! One event: its row, deliveries, attempts and children; retry, replay, skip.

use super::*;

pub async fn event(ctx: Ctx, Path(id): Path<String>) -> Response {
    let r = event_inner(&ctx, &id).await;
    ctx.respond(r)
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(|x| x.as_str())
}

async fn event_inner(ctx: &Ctx, id: &str) -> Res {
    let l = ctx.lang;
    let id = uuid_param(id, "event")?;
    // one JSON document: {"event", "deliveries", "logs", "children"}, read by key below
    let (d, who) = as_role(ctx, async |tx, _| {
        let row = tx
            .query_one("SELECT event_bus.event_detail($1) AS detail", &[&id])
            .await
            .map_err(AppError::from_pg)?;
        col::<serde_json::Value>(&row, "detail")
    })
    .await?;
    let ev = &d["event"];
    let empty = vec![];
    let deliveries = d["deliveries"].as_array().unwrap_or(&empty);
    let logs = d["logs"].as_array().unwrap_or(&empty);
    let children = d["children"].as_array().unwrap_or(&empty);
    let can_write = who.level >= Level::Operator;
    let parent = ev["metadata"].get("causation_id").and_then(|c| c.as_str());
    let state = |x: &serde_json::Value| s(x, "status").and_then(DeliveryState::from_name);
    // each subscription's handler module, to name the subscription of each attempt
    let handlers: HashMap<&str, &str> = deliveries
        .iter()
        .filter_map(|x| Some((s(x, "subscription_id")?, s(x, "handler_module")?)))
        .collect();
    let any_failed = deliveries
        .iter()
        .any(|x| state(x) == Some(DeliveryState::Failed));
    let title = l.ta("event-title", &[("id", id.to_string().into())]);
    let body = html! {
        h1 { (l.t("event")) " " code { (s(ev, "event_type").unwrap_or("")) } " " (badge(l, s(ev, "status").unwrap_or(""))) }
        (flash(ctx))
        dl.facts {
            dt { "ID" } dd { code { (id) } }
            dt { (l.t("tenant")) } dd { code { (s(ev, "tenant_id").unwrap_or("")) } }
            dt { (l.t("source-module")) } dd { (s(ev, "source_module").unwrap_or("")) }
            dt { (l.t("entity")) } dd { (s(ev, "entity_type").unwrap_or("")) " " code { (s(ev, "entity_id").unwrap_or("")) } }
            dt { (l.t("created")) } dd { (time(s(ev, "created_at"))) }
            dt { (l.t("correlation-id")) } dd {
                @match ev["metadata"].get("correlation_id").and_then(|c| c.as_str()) {
                    Some(c) => a href={ "/events?correlation=" (enc(c)) } { code { (c) } },
                    None => span.muted { (l.t("none")) },
                }
            }
        }
        @if can_write && any_failed {
            form.inline method="post" action={ "/events/" (id) "/retry" } {
                (ctx.csrf_field())
                button.primary type="submit" data-action="retry" { (l.t("retry")) }
                span.muted { " " (l.t("retry-event-help")) }
            }
        }
        section.two {
            div { h2 { (l.t("payload")) } pre.json { (pretty(&ev["payload"])) } }
            div { h2 { (l.t("metadata")) } pre.json { (pretty(&ev["metadata"])) } }
        }
        section {
            h2 { (l.t("causation")) }
            dl.facts {
                dt { (l.t("parent-event")) }
                dd { @match parent { Some(p) => a href={ "/events/" (enc(p)) } { code { (p) } }, None => span.muted { (l.t("none")) } } }
                dt { (l.t("child-events")) }
                dd {
                    @if children.is_empty() { span.muted { (l.t("none")) } }
                    ul.plain { @for c in children {
                        li { a href={ "/events/" (s(c, "id").unwrap_or("")) } { code { (s(c, "event_type").unwrap_or("")) } } " " (badge(l, s(c, "status").unwrap_or(""))) }
                    } }
                }
            }
        }
        section {
            h2 { (l.t("deliveries")) }
            table.deliveries {
                thead { tr {
                    th { (l.t("handler")) } th { (l.t("kind")) } th { (l.t("pattern")) } th { (l.t("status")) }
                    th { (l.t("attempts")) } th { (l.t("next-attempt")) } th { (l.t("completed-at")) }
                    th { (l.t("http-status")) } th { (l.t("error")) }
                    @if can_write { th {} }
                } }
                tbody { @for x in deliveries {
                    tr data-delivery=(s(x, "delivery_id").unwrap_or("")) {
                        // the subscription, on the subscriptions page
                        td { @match s(x, "subscription_id") {
                            Some(sub) => a href={ "/subscriptions#sub-" (sub) } { (s(x, "handler_module").unwrap_or("")) },
                            None => (s(x, "handler_module").unwrap_or("")),
                        } }
                        td { (s(x, "handler_kind").unwrap_or("")) }
                        td { code { (s(x, "pattern").unwrap_or("")) } }
                        td { (badge(l, s(x, "status").unwrap_or(""))) }
                        td.num { (x["attempts"].as_i64().map(|n| l.num(n)).unwrap_or_default()) }
                        // a finished delivery has no next attempt: its lease time would read as one
                        td { (time(s(x, "next_attempt_at").filter(|_| state(x).is_some_and(|d| !d.finished())))) }
                        td { (time(s(x, "completed_at"))) }
                        td.num { (x["last_http_status"].as_i64().map(|n| n.to_string()).unwrap_or_default()) }
                        td.err { (truncate(s(x, "last_error").unwrap_or(""), 300)) }
                        @if can_write { td.actions {
                            @if state(x) == Some(DeliveryState::Failed) {
                                form.inline method="post" action={ "/deliveries/" (s(x, "delivery_id").unwrap_or("")) "/skip" } {
                                    (ctx.csrf_field()) input type="hidden" name="back" value={ "/events/" (id) };
                                    button type="submit" { (l.t("skip")) }
                                }
                            }
                            @if state(x).is_some_and(DeliveryState::finished) {
                                @if let Some(sub) = s(x, "subscription_id") {
                                    form.inline method="post" action={ "/events/" (id) "/replay" } title=(l.t("replay-help")) {
                                        (ctx.csrf_field()) input type="hidden" name="subscription" value=(sub);
                                        button type="submit" { (l.t("replay")) }
                                    }
                                }
                            }
                        } }
                    }
                } }
            }
        }
        section {
            h2 { (l.t("attempt-log")) }
            @if logs.is_empty() { p.muted { (l.t("no-attempts")) } } @else {
                table.logs {
                    thead { tr {
                        th { (l.t("executed-at")) } th { (l.t("handler")) } th { (l.t("attempt")) } th { (l.t("status")) } th { (l.t("http-status")) }
                        th { (l.t("duration")) } th { (l.t("error")) } th { (l.t("response")) }
                    } }
                    tbody { @for g in logs {
                        tr {
                            td { (time(s(g, "executed_at"))) }
                            // which subscription the attempt went to (the attempt log names it by id)
                            td { @match s(g, "subscription_id") {
                                Some(sub) => a href={ "/subscriptions#sub-" (sub) } {
                                    (handlers.get(sub).copied().unwrap_or(sub))
                                },
                                None => span.muted { (l.t("none")) },
                            } }
                            td.num { (g["attempt"].as_i64().unwrap_or(0)) }
                            td { (badge(l, if s(g, "status") == Some("success") { DeliveryState::Completed } else { DeliveryState::Failed }.name())) }
                            td.num { (g["http_status"].as_i64().map(|n| n.to_string()).unwrap_or_default()) }
                            td.num { (g["duration_ms"].as_f64().map(|n| l.ms(n)).unwrap_or_default()) }
                            td.err { (truncate(s(g, "error_message").unwrap_or(""), 500)) }
                            td { @if !g["response"].is_null() { details { summary { "JSON" } pre.json { (pretty(&g["response"])) } } } }
                        }
                    } }
                }
            }
        }
    };
    Ok(ctx.page(&who, &title, body))
}

pub async fn retry_event(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        read_form(body, &ctx).await?;
        let id = uuid_param(&id, "event")?;
        let row = write(&ctx, "SELECT event_bus.retry_event($1) AS n", &[&id]).await?;
        let n: i32 = col(&row, "n")?;
        Ok(see_other(&format!("/events/{id}?done=retried&n={n}")))
    }
    .await;
    ctx.respond(r)
}

pub async fn replay_event(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let id = uuid_param(&id, "event")?;
        let sub = form
            .get("subscription")
            .map(|v| uuid_param(v, "subscription"))
            .transpose()?;
        let row = write(
            &ctx,
            "SELECT event_bus.replay_events(p_event_id => $1, p_subscription_id => $2) AS n",
            &[&id, &sub],
        )
        .await?;
        let n: i64 = col(&row, "n")?;
        Ok(see_other(&format!("/events/{id}?done=replayed&n={n}")))
    }
    .await;
    ctx.respond(r)
}

pub async fn skip_delivery(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let id = uuid_param(&id, "delivery")?;
        write(&ctx, "SELECT event_bus.skip_delivery($1)", &[&id]).await?;
        let back = safe_next(form.get("back").map(String::as_str));
        let sep = if back.contains('?') { '&' } else { '?' };
        Ok(see_other(&format!("{back}{sep}done=skipped")))
    }
    .await;
    ctx.respond(r)
}
