//! The events page: filters, one page of list_events, the live tail's rows.

use super::*;

/// The events page's filters, parsed and checked.
#[derive(Default, Debug)]
pub struct EventFilter {
    pub tenant: Option<Uuid>,
    pub source: Option<String>,
    pub event_type: Option<String>,
    pub status: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub correlation: Option<String>,
    pub before: Option<Uuid>,
}

impl EventFilter {
    pub fn parse(ctx: &Ctx) -> Result<EventFilter, AppError> {
        let status = ctx.q("status").map(str::to_string);
        if let Some(s) = &status {
            if EventStatus::from_name(s).is_none() {
                return Err(AppError::invalid(
                    "err-status",
                    &[("value", &truncate(s, 30))],
                ));
            }
        }
        let text = |k, what| filter_text(ctx.q(k), what);
        let from = time_param(ctx.q("from"), "from")?;
        let to = time_param(ctx.q("to"), "to")?;
        if let (Some(f), Some(t)) = (from, to) {
            if f > t {
                // nothing can match: say so rather than show an empty list
                return Err(AppError::invalid(
                    "err-from-after-to",
                    &[
                        ("from", &ts(Some(f)).unwrap_or_default()),
                        ("to", &ts(Some(t)).unwrap_or_default()),
                    ],
                ));
            }
        }
        Ok(EventFilter {
            tenant: opt_uuid(ctx, "tenant", "tenant")?,
            source: text("source", "source")?,
            event_type: text("type", "type")?,
            status,
            from,
            to,
            entity_type: text("entity_type", "entity_type")?,
            entity_id: text("entity_id", "entity_id")?,
            correlation: text("correlation", "correlation")?,
            before: opt_uuid(ctx, "before", "page")?,
        })
    }

    /// The query string of these filters (without the page).
    pub fn query(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        let t = |v: &Option<DateTime<Utc>>| {
            v.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        };
        for (k, v) in [
            ("tenant", self.tenant.map(|u| u.to_string())),
            ("source", self.source.clone()),
            ("type", self.event_type.clone()),
            ("status", self.status.clone()),
            ("from", t(&self.from)),
            ("to", t(&self.to)),
            ("entity_type", self.entity_type.clone()),
            ("entity_id", self.entity_id.clone()),
            ("correlation", self.correlation.clone()),
        ] {
            if let Some(v) = v {
                s.append_pair(k, &v);
            }
        }
        s.finish()
    }
}

/// One page of list_events for these filters (the same call the tests compare with).
pub const LIST_EVENTS_SQL: &str =
    "SELECT id, tenant_id, event_type, source_module, entity_type, entity_id, status, created_at
       FROM event_bus.list_events(p_tenant_id => $1, p_source_module => $2, p_event_type => $3,
                                  p_status => $4, p_from => $5, p_to => $6, p_before => $7,
                                  p_limit => $8, p_entity_type => $9, p_entity_id => $10,
                                  p_correlation_id => $11)";

pub struct EventRow {
    pub id: Uuid,
    pub tenant: Uuid,
    pub event_type: String,
    pub source: String,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub status: String,
    pub created: DateTime<Utc>,
}

impl FromRow for EventRow {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(EventRow {
            id: col(r, "id")?,
            tenant: col(r, "tenant_id")?,
            event_type: col(r, "event_type")?,
            source: col(r, "source_module")?,
            entity_type: col(r, "entity_type")?,
            entity_id: col(r, "entity_id")?,
            status: col(r, "status")?,
            created: col(r, "created_at")?,
        })
    }
}

async fn list_events(tx: &Tx<'_>, f: &EventFilter, limit: i32) -> Result<Vec<EventRow>, AppError> {
    query_as(
        tx,
        LIST_EVENTS_SQL,
        &[
            &f.tenant,
            &f.source,
            &f.event_type,
            &f.status,
            &f.from,
            &f.to,
            &f.before,
            &limit,
            &f.entity_type,
            &f.entity_id,
            &f.correlation,
        ],
    )
    .await
}

pub fn event_rows(l: Lang, rows: &[EventRow], admin: bool) -> Markup {
    html! {
        @for e in rows {
            tr data-id=(e.id) {
                td { (time(ts(Some(e.created)).as_deref())) }
                // long values (types and ids up to 255 characters and more) are cut by the cell,
                // not by the page: the whole value is in the title
                td { a href={ "/events/" (e.id) } { code.clip title=(e.event_type) { (e.event_type) } } }
                td { span.clip title=(e.source) { (e.source) } }
                td { @if let Some(t) = &e.entity_type { span.clip title=(t) { (t) } } @if let Some(i) = &e.entity_id { " " code.clip title=(i) { (i) } } }
                td { (badge(l, &e.status)) }
                @if admin { td { code.small { (e.tenant) } } }
            }
        }
    }
}

pub async fn events(ctx: Ctx) -> Response {
    let r = events_inner(&ctx).await;
    ctx.respond(r)
}

/// The filter form's values: as parsed, or (a bad filter) as the user typed them.
struct FormValues {
    source: Option<String>,
    event_type: Option<String>,
    status: Option<String>,
    tenant: Option<String>,
    from: Option<String>,
    from_utc: Option<String>,
    to: Option<String>,
    to_utc: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<String>,
    correlation: Option<String>,
}

impl FormValues {
    fn of(f: &EventFilter) -> FormValues {
        let local = |t: &Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string());
        FormValues {
            source: f.source.clone(),
            event_type: f.event_type.clone(),
            status: f.status.clone(),
            tenant: f.tenant.map(|t| t.to_string()),
            from: local(&f.from),
            from_utc: f.from.map(|t| t.to_rfc3339()),
            to: local(&f.to),
            to_utc: f.to.map(|t| t.to_rfc3339()),
            entity_type: f.entity_type.clone(),
            entity_id: f.entity_id.clone(),
            correlation: f.correlation.clone(),
        }
    }

    fn typed(ctx: &Ctx) -> FormValues {
        let q = |k: &str| ctx.q(k).map(str::to_string);
        FormValues {
            source: q("source"),
            event_type: q("type"),
            status: q("status"),
            tenant: q("tenant"),
            from: q("from"),
            from_utc: None,
            to: q("to"),
            to_utc: None,
            entity_type: q("entity_type"),
            entity_id: q("entity_id"),
            correlation: q("correlation"),
        }
    }
}

fn filter_form(l: Lang, admin: bool, v: &FormValues) -> Markup {
    let sel = |s: &str| v.status.as_deref() == Some(s);
    html! {
        form.filters method="get" action="/events" data-local-times {
            label { (l.t("source-module")) input name="source" value=[v.source.as_deref()]; }
            label title=(l.t("event-type-help")) { (l.t("event-type")) input name="type" value=[v.event_type.as_deref()] placeholder="invoice.*"; }
            label { (l.t("status"))
                select name="status" {
                    option value="" { (l.t("any")) }
                    @for s in EventStatus::ALL.map(EventStatus::name) { option value=(s) selected[sel(s)] { (l.t(&format!("status-{s}"))) } }
                }
            }
            @if admin { label { (l.t("tenant")) input name="tenant" value=[v.tenant.as_deref()] size="36"; } }
            label { (l.t("from")) input type="datetime-local" name="from" value=[v.from.as_deref()] data-utc=[v.from_utc.as_deref()]; }
            label { (l.t("to")) input type="datetime-local" name="to" value=[v.to.as_deref()] data-utc=[v.to_utc.as_deref()]; }
            label { (l.t("entity-type")) input name="entity_type" value=[v.entity_type.as_deref()]; }
            label { (l.t("entity-id")) input name="entity_id" value=[v.entity_id.as_deref()]; }
            label { (l.t("correlation-id")) input name="correlation" value=[v.correlation.as_deref()]; }
            button type="submit" { (l.t("filter")) }
            a href="/events" { (l.t("filter-clear")) }
        }
    }
}

/// A filter the console or the database refused: the page, with its form as the user filled it in
/// and what was wrong (400), not a bare error page.
async fn bad_filter(ctx: &Ctx, e: AppError) -> Res {
    if !matches!(e, AppError::BadInput(_) | AppError::Invalid { .. }) {
        return Err(e);
    }
    let l = ctx.lang;
    let ((), who) = as_role(ctx, async |_, _| Ok(())).await?;
    let body = html! {
        h1 { (l.t("events-title")) }
        (filter_form(l, who.level == Level::Admin, &FormValues::typed(ctx)))
        div.banner.error role="alert" { (ctx.error_message(&e)) }
    };
    let mut r = ctx.page(&who, &l.t("events-title"), body);
    *r.status_mut() = e.status();
    Ok(r)
}

async fn events_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let f = match EventFilter::parse(ctx) {
        Ok(f) => f,
        Err(e) => return bad_filter(ctx, e).await,
    };
    let (rows, who) = match as_role(ctx, async |tx, _| list_events(tx, &f, PAGE_SIZE).await).await {
        Ok(r) => r,
        Err(e) => return bad_filter(ctx, e).await,
    };
    let admin = who.level == Level::Admin;
    let qs = f.query();
    let body = html! {
        h1 { (l.t("events-title")) }
        (filter_form(l, admin, &FormValues::of(&f)))
        @if f.before.is_none() {
            div.live data-live={ "/events/live?" (qs) } data-label-pause=(l.t("live-pause")) data-label-resume=(l.t("live-resume")) {
                span.dot {} (l.t("live-tail")) " "
                button type="button" data-live-toggle { (l.t("live-pause")) }
                " " span data-live-count data-template=(l.ta("live-new", &[("shown", "#".into())])) {}
            }
        }
        @if rows.is_empty() {
            p.empty { (l.t("no-events")) }
        }
        table.events {
            thead { tr {
                th { (l.t("created")) } th { (l.t("event-type")) } th { (l.t("source-module")) }
                th { (l.t("entity")) } th { (l.t("status")) } @if admin { th { (l.t("tenant")) } }
            } }
            tbody data-live-target { (event_rows(l, &rows, admin)) }
        }
        nav.pager {
            @if f.before.is_some() { a href={ "/events?" (qs) } { "« " (l.t("first-page")) } }
            @if rows.len() == PAGE_SIZE as usize {
                @let last = rows.last().expect("a full page").id;
                a rel="next" href={ "/events?" (qs) (if qs.is_empty() { "" } else { "&" }) "before=" (last) } { (l.t("next-page")) " »" }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("events-title"), body))
}

/// New rows for the live tail: events newer than `after` that match the filters, as table rows.
pub async fn live_rows(
    ctx: &Ctx,
    f: &EventFilter,
    after: Option<Uuid>,
) -> Result<(Vec<EventRow>, bool), AppError> {
    let (mut rows, who) = as_role(ctx, async |tx, _| list_events(tx, f, PAGE_SIZE).await).await?;
    if let Some(after) = after {
        rows.retain(|r| r.id > after);
    }
    Ok((rows, who.level == Level::Admin))
}
