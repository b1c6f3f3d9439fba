//! The pages. Each reads through the extension's SQL API as the signed-in role, so row-level
//! security and the role's privileges decide what it shows and what its buttons may do.

use crate::auth::{self, Session};
use crate::db::Level;
use crate::error::AppError;
use crate::i18n::Lang;
use crate::web::{badge, enc, parse_form, pretty, see_other, time, ts, Ctx};
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use std::collections::HashMap;
use std::time::Instant;
use uuid::Uuid;

type Res = Result<Response, AppError>;

const EVENT_STATUSES: [&str; 4] = ["pending", "processing", "completed", "failed"];

fn uuid_param(v: &str, what: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(v.trim())
        .map_err(|_| AppError::BadInput(format!("{what} {:?} is not a UUID", truncate(v, 60))))
}

fn opt_uuid(ctx: &Ctx, k: &str, what: &str) -> Result<Option<Uuid>, AppError> {
    ctx.q(k).map(|v| uuid_param(v, what)).transpose()
}

/// A free-text filter (source, type, entity, correlation) as the user typed it: never shortened,
/// which would give wrong answers; refused (400) only beyond a bound far above any value the
/// extension stores, so no request makes the database compare megabytes.
const MAX_FILTER_CHARS: usize = 1000;

fn filter_text(v: Option<&str>, what: &str) -> Result<Option<String>, AppError> {
    match v {
        Some(s) if s.chars().count() > MAX_FILTER_CHARS => Err(AppError::BadInput(format!(
            "the {what} filter is {} characters long: at most {MAX_FILTER_CHARS} characters",
            s.chars().count()
        ))),
        other => Ok(other.map(str::to_string)),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// A time filter: RFC 3339 (what app.js sends, in UTC), or a bare `datetime-local` value read as UTC.
fn time_param(v: Option<&str>, what: &str) -> Result<Option<DateTime<Utc>>, AppError> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for f in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(v, f) {
            return Ok(Some(t.and_utc()));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(Some(
            d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
        ));
    }
    Err(AppError::BadInput(format!(
        "{what} {:?} is not a date and time",
        truncate(v, 60)
    )))
}

async fn read_form(body: String, ctx: &Ctx) -> Result<HashMap<String, String>, AppError> {
    let form = parse_form(&body);
    ctx.check_csrf(&form)?;
    Ok(form)
}

fn flash(ctx: &Ctx) -> Markup {
    let l = ctx.lang;
    let msg = match (ctx.q("done"), ctx.q("n")) {
        (Some("retried"), Some(n)) => Some(l.ta(
            "retried",
            &[("count", n.parse::<i64>().unwrap_or(0).into())],
        )),
        (Some("replayed"), Some(n)) => Some(l.ta(
            "replayed",
            &[("count", n.parse::<i64>().unwrap_or(0).into())],
        )),
        (Some("reset"), Some(n)) => Some(l.ta(
            "breaker-reset",
            &[("count", n.parse::<i64>().unwrap_or(0).into())],
        )),
        (Some("processed"), Some(n)) => Some(l.ta(
            "process-pending-done",
            &[("count", n.parse::<i64>().unwrap_or(0).into())],
        )),
        (Some("skipped"), _) => Some(l.t("skipped")),
        (Some("paused"), _) => Some(l.t("paused")),
        (Some("resumed"), _) => Some(l.t("resumed")),
        _ => None,
    };
    html! { @if let Some(m) = msg { div.banner.ok role="status" { (m) } } }
}

// ---------------------------------------------------------------------------------------------
// health and metrics
// ---------------------------------------------------------------------------------------------

pub async fn healthz(ctx: Ctx) -> Response {
    let ok = async {
        let c = ctx.app.db.client().await?;
        c.query_one("SELECT 1", &[])
            .await
            .map_err(AppError::from_pg)?;
        Ok::<_, AppError>(())
    }
    .await;
    match ok {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unreachable: {e:?}\n"),
        )
            .into_response(),
    }
}

/// `GET /metrics`: event_bus.metrics() for Prometheus, behind the token given at start.
pub async fn metrics(ctx: Ctx) -> Response {
    let Some(token) = &ctx.app.metrics_token else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off: start the console with --metrics-token\n",
        )
            .into_response();
    };
    let given = ctx
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or("");
    if !auth::same_token(given.trim(), token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is needed\n",
        )
            .into_response();
    }
    let r = async {
        let mut c = ctx.app.db.client().await?;
        let tx = c.transaction().await.map_err(AppError::from_pg)?;
        if let Some(role) = &ctx.app.metrics_role {
            tx.query("SELECT pg_catalog.set_config('role', $1, true)", &[role])
                .await
                .map_err(AppError::from_pg)?;
        }
        let row = tx
            .query_one("SELECT event_bus.metrics()", &[])
            .await
            .map_err(AppError::from_pg)?;
        tx.commit().await.map_err(AppError::from_pg)?;
        Ok::<String, AppError>(row.get(0))
    }
    .await;
    match r {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(AppError::Forbidden(_)) => (
            StatusCode::FORBIDDEN,
            "event_bus.metrics() is refused to the console's role: start it with --metrics-role naming an \
             event_bus_admin member it may SET ROLE to\n",
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("event_bus.metrics() failed: {e:?}\n")).into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// sign-in, sign-out
// ---------------------------------------------------------------------------------------------

fn login_page(
    ctx: &Ctx,
    token: &str,
    user: &str,
    error: Option<String>,
    status: StatusCode,
) -> Response {
    let l = ctx.lang;
    let next = ctx.q("next").unwrap_or("/");
    let info = if ctx.q("expired").is_some() {
        Some(l.t("err-session-expired"))
    } else {
        None
    };
    let body = html! {
        section.login {
            h1 { (l.t("sign-in-title")) }
            p.muted { (l.t("sign-in-help")) }
            @if let Some(e) = &error { div.banner.error role="alert" { (e) } }
            @if let Some(i) = &info { div.banner.warn role="status" { (i) } }
            form method="post" action={ "/login?next=" (enc(next)) } {
                input type="hidden" name="login_token" value=(token);
                label { (l.t("username")) input name="username" value=(user) autocomplete="username" required autofocus; }
                label { (l.t("password")) input name="password" type="password" autocomplete="current-password" required; }
                button type="submit" { (l.t("sign-in")) }
            }
        }
    };
    let mut r = crate::web::html_response(status, ctx.frame(None, &l.t("sign-in"), body));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.login_cookie(token));
    r
}

pub async fn login_form(ctx: Ctx) -> Response {
    let token = auth::random_token();
    let r = login_page(&ctx, &token, "", None, StatusCode::OK);
    ctx.respond(Ok(r))
}

/// Only a local path may be the target after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.starts_with("/login") =>
        {
            n.to_string()
        }
        _ => "/".to_string(),
    }
}

pub async fn login(ctx: Ctx, body: String) -> Response {
    let l = ctx.lang;
    let form = parse_form(&body);
    let user = form
        .get("username")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    // the login form's own CSRF token (double-submit cookie): no session exists yet
    let cookie = crate::web::cookies(&ctx.headers)
        .get(auth::LOGIN_COOKIE)
        .cloned()
        .unwrap_or_default();
    let given = form.get("login_token").cloned().unwrap_or_default();
    let fresh = auth::random_token();
    if cookie.is_empty() || !auth::same_token(&cookie, &given) {
        return ctx.respond(Ok(login_page(
            &ctx,
            &fresh,
            &user,
            Some(l.t("err-csrf")),
            StatusCode::FORBIDDEN,
        )));
    }
    let now = Instant::now();
    if !ctx.app.limiter.allowed(&ctx.peer, &user, now) {
        return ctx.respond(Ok(login_page(
            &ctx,
            &fresh,
            &user,
            Some(l.t("err-login-throttled")),
            StatusCode::TOO_MANY_REQUESTS,
        )));
    }
    if user.is_empty() || password.is_empty() || user.len() > 63 {
        ctx.app.limiter.failed(&ctx.peer, &user, now);
        return ctx.respond(Ok(login_page(
            &ctx,
            &fresh,
            &user,
            Some(l.t("err-login-failed")),
            StatusCode::UNAUTHORIZED,
        )));
    }
    let checked = ctx.app.db.check_password(&user, &password).await;
    match checked {
        Ok(true) => {}
        Ok(false) => {
            ctx.app.limiter.failed(&ctx.peer, &user, now);
            return ctx.respond(Ok(login_page(
                &ctx,
                &fresh,
                &user,
                Some(l.t("err-login-failed")),
                StatusCode::UNAUTHORIZED,
            )));
        }
        Err(e) => return ctx.respond(Err(e)),
    }
    match ctx.app.db.can_act_as(&user).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return ctx.respond(Ok(login_page(
                &ctx,
                &fresh,
                &user,
                Some(l.t("err-login-not-allowed")),
                StatusCode::FORBIDDEN,
            )))
        }
        Err(e) => return ctx.respond(Err(e)),
    }
    ctx.app.limiter.succeeded(&ctx.peer, &user);
    let session = Session {
        role: user,
        csrf: auth::random_token(),
        seen: auth::now_secs(),
    };
    let mut r = see_other(&safe_next(ctx.q("next")));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.session_cookie(&session));
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.clear_cookie(auth::LOGIN_COOKIE));
    ctx.respond(Ok(r))
}

pub async fn logout(ctx: Ctx, body: String) -> Response {
    let form = parse_form(&body);
    if ctx.session.is_some() {
        if let Err(e) = ctx.check_csrf(&form) {
            return ctx.respond(Err(e));
        }
    }
    let mut r = see_other("/login");
    r.headers_mut()
        .append(header::SET_COOKIE, ctx.clear_cookie(auth::SESSION_COOKIE));
    r
}

// ---------------------------------------------------------------------------------------------
// overview
// ---------------------------------------------------------------------------------------------

/// The overview's counts for one window, as counted at `at`.
#[derive(Clone)]
pub struct WindowStats {
    counts: [i64; 5],
    series: Vec<(DateTime<Utc>, i64, i64)>,
    at: DateTime<Utc>,
}

type StatsKey = (String, Option<Uuid>, String);

/// The window's counts and timeline, as the transaction's role sees them.
async fn count_window(
    tx: &tokio_postgres::Transaction<'_>,
    interval: &str,
) -> Result<WindowStats, AppError> {
    let stats = tx
        .query_one(
            "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats($1::text::interval)",
            &[&interval],
        )
        .await
        .map_err(AppError::from_pg)?;
    let buckets = tx
        .query(
            "SELECT bucket_start, succeeded, failed FROM event_bus.delivery_timeline($1::text::interval, 24)",
            &[&interval],
        )
        .await
        .map_err(AppError::from_pg)?;
    Ok(WindowStats {
        counts: [
            stats.get(0),
            stats.get(1),
            stats.get(2),
            stats.get(3),
            stats.get(4),
        ],
        series: buckets
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
        at: Utc::now(),
    })
}

pub enum Cached {
    /// counted less than the cache's time ago
    Fresh(WindowStats),
    /// older, but still worth showing while it is counted again (up to STALE_LIMIT)
    Stale(WindowStats),
    Missing,
}

/// Counts older than this are never shown: the view waits for a new count.
const STALE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Window counts per (role, tenant, window): fresh for `ttl`, then shown while a background count
/// replaces them (as River UI does with its counts), never when older than STALE_LIMIT.
pub struct StatsCache {
    ttl: std::time::Duration,
    map: std::sync::Mutex<HashMap<StatsKey, (Instant, WindowStats, bool)>>,
}

impl StatsCache {
    pub fn new(ttl: std::time::Duration) -> StatsCache {
        StatsCache {
            ttl,
            map: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &StatsKey) -> Cached {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((t, w, _)) if t.elapsed() < self.ttl => Cached::Fresh(w.clone()),
            Some((t, w, _)) if t.elapsed() < STALE_LIMIT => Cached::Stale(w.clone()),
            _ => Cached::Missing,
        }
    }

    /// Mark a recount under way; false if one already is.
    fn start_refresh(&self, key: &StatsKey) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some((_, _, refreshing)) if !*refreshing => {
                *refreshing = true;
                true
            }
            _ => false,
        }
    }

    fn end_refresh(&self, key: &StatsKey) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, refreshing)) = map.get_mut(key) {
            *refreshing = false;
        }
    }

    fn put(&self, key: StatsKey, w: WindowStats) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (t, _, _)| t.elapsed() < STALE_LIMIT);
        map.insert(key, (Instant::now(), w, false));
    }
}

const WINDOWS: [(&str, &str, &str); 3] = [
    ("1h", "1 hour", "window-1h"),
    ("24h", "24 hours", "window-24h"),
    ("7d", "7 days", "window-7d"),
];

pub async fn overview(ctx: Ctx) -> Response {
    let r = overview_inner(&ctx).await;
    ctx.respond(r)
}

async fn overview_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let key = ctx.q("window").unwrap_or("24h");
    let Some(&(key, interval, _)) = WINDOWS.iter().find(|w| w.0 == key) else {
        return Err(AppError::BadInput(format!(
            "window {:?}: use 1h, 24h or 7d",
            truncate(key, 20)
        )));
    };
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let cache_key = (who.role.clone(), who.tenant, key.to_string());
    let window = match ctx.app.stats_cache.get(&cache_key) {
        Cached::Fresh(w) => w,
        Cached::Stale(w) => {
            // served as counted, and counted again in the background for the next view
            if ctx.app.stats_cache.start_refresh(&cache_key) {
                let app = ctx.app.clone();
                let id = ctx.identity()?;
                tokio::spawn(async move {
                    let counted = async {
                        let mut client = app.db.client().await?;
                        let tx = client.transaction().await.map_err(AppError::from_pg)?;
                        crate::db::act_as(&tx, &id, app.db.statement_timeout_ms).await?;
                        let w = count_window(&tx, interval).await?;
                        tx.commit().await.map_err(AppError::from_pg)?;
                        Ok::<_, AppError>(w)
                    }
                    .await;
                    match counted {
                        Ok(w) => app.stats_cache.put(cache_key, w),
                        Err(e) => {
                            eprintln!("event-bus-console: recounting the overview failed: {e:?}");
                            app.stats_cache.end_refresh(&cache_key);
                        }
                    }
                });
            }
            w
        }
        Cached::Missing => {
            let w = count_window(&tx, interval).await?;
            ctx.app.stats_cache.put(cache_key, w.clone());
            w
        }
    };
    let q = tx
        .query_one(
            "SELECT undispatched, oldest_undispatched_seconds, due, oldest_due_seconds, dead_letters,
                    parked_streams, open_breakers
               FROM event_bus.queue_summary()",
            &[],
        )
        .await
        .map_err(AppError::from_pg)?;
    tx.commit().await.map_err(AppError::from_pg)?;
    let counts: [(&str, i64, &str); 5] = [
        ("count-pending", window.counts[0], "/events?status=pending"),
        (
            "count-processing",
            window.counts[1],
            "/events?status=processing",
        ),
        (
            "count-completed",
            window.counts[2],
            "/events?status=completed",
        ),
        ("count-failed", window.counts[3], "/events?status=failed"),
        ("count-total", window.counts[4], "/events"),
    ];
    let series = &window.series;
    let oldest_due: f64 = q.get(3);
    let oldest_und: f64 = q.get(1);
    let body = html! {
        h1 { (l.t("overview-title")) }
        (flash(ctx))
        nav.windows aria-label=(l.t("window")) {
            (l.t("window")) ": "
            @for (k, _, label) in WINDOWS {
                @if k == key { strong { (l.t(label)) } } @else { a href={ "/?window=" (k) } { (l.t(label)) } }
            }
        }
        section.cards {
            @for (label, n, href) in counts {
                a.card href=(href) { span.n { (l.num(n)) } span.label { (l.t(label)) } }
            }
        }
        section.cards {
            a.card href="/events?status=pending" { span.n { (l.num(q.get(2))) } span.label { (l.t("queue-depth")) } }
            div.card { span.n { (l.secs(oldest_due)) } span.label { (l.t("oldest-due")) } }
            div.card { span.n { (l.num(q.get(0))) " · " (l.secs(oldest_und)) } span.label { (l.t("undispatched")) } }
            a.card href="/dead-letters" { span.n { (l.num(q.get(4))) } span.label { (l.t("dead-letters")) } }
            a.card href="/parked" { span.n { (l.num(q.get(5))) } span.label { (l.t("parked-streams")) } }
            a.card href="/subscriptions" { span.n { (l.num(q.get(6))) } span.label { (l.t("open-breakers")) } }
        }
        section {
            h2 { (l.t("chart-title")) }
            (chart(l, series))
            p.muted {
                @if let Some((start, _, _)) = series.first() { (l.t("from")) " " (time(ts(Some(*start)).as_deref())) " · " }
                (l.t("counted-at")) " " (time(ts(Some(window.at)).as_deref()))
            }
        }
        @if who.level == Level::Admin {
            section {
                h2 { (l.t("process-pending")) }
                form.inline method="post" action="/process-pending" {
                    (ctx.csrf_field())
                    input type="number" name="limit" value="100" min="1" max="10000" aria-label=(l.t("process-pending"));
                    button type="submit" { (l.t("process-pending")) }
                    span.muted { " " (l.t("process-pending-help")) }
                }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("overview-title"), body))
}

/// Deliveries and failures per bucket, as a server-rendered SVG bar chart.
fn chart(l: Lang, series: &[(DateTime<Utc>, i64, i64)]) -> Markup {
    let max = series.iter().map(|(_, s, f)| s + f).max().unwrap_or(0);
    if max == 0 {
        return html! { p.muted { (l.t("chart-empty")) } };
    }
    let (w, h, pad) = (720.0_f64, 180.0_f64, 24.0_f64);
    let n = series.len().max(1) as f64;
    let bw = (w - pad) / n;
    let scale = (h - pad) / max as f64;
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(l.t("chart-title")) {
            text x="0" y="12" class="label" { (l.num(max)) }
            line x1=(pad) y1=(h - pad) x2=(w) y2=(h - pad) class="axis" {}
            @for (i, (t, s, f)) in series.iter().enumerate() {
                @let x = pad + i as f64 * bw;
                @let hs = *s as f64 * scale;
                @let hf = *f as f64 * scale;
                g {
                    title { (t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) ": " (l.num(*s)) " " (l.t("chart-succeeded")) ", " (l.num(*f)) " " (l.t("chart-failed")) }
                    rect class="ok" x=(x + 1.0) y=(h - pad - hs) width=((bw - 2.0).max(1.0)) height=(hs) {}
                    rect class="bad" x=(x + 1.0) y=(h - pad - hs - hf) width=((bw - 2.0).max(1.0)) height=(hf) {}
                }
            }
            g.legend {
                rect class="ok" x=(pad) y=(h - 12.0) width="10" height="10" {}
                text x=(pad + 14.0) y=(h - 3.0) { (l.t("chart-succeeded")) }
                rect class="bad" x=(pad + 120.0) y=(h - 12.0) width="10" height="10" {}
                text x=(pad + 134.0) y=(h - 3.0) { (l.t("chart-failed")) }
            }
        }
    }
}

pub async fn process_pending(ctx: Ctx, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let limit: i32 = form
            .get("limit")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| AppError::BadInput("limit must be a whole number".into()))?;
        let mut client = ctx.app.db.client().await?;
        let (tx, _who) = ctx.begin(&mut client).await?;
        let row = tx
            .query_one("SELECT event_bus.process_pending_events($1)", &[&limit])
            .await
            .map_err(AppError::from_pg)?;
        tx.commit().await.map_err(AppError::from_pg)?;
        let n: i32 = row.get(0);
        Ok(see_other(&format!("/?done=processed&n={n}")))
    }
    .await;
    ctx.respond(r)
}

// ---------------------------------------------------------------------------------------------
// events
// ---------------------------------------------------------------------------------------------

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
            if !EVENT_STATUSES.contains(&s.as_str()) {
                return Err(AppError::BadInput(format!(
                    "status {:?}: use pending, processing, completed or failed",
                    truncate(s, 30)
                )));
            }
        }
        let text = |k, what| filter_text(ctx.q(k), what);
        Ok(EventFilter {
            tenant: opt_uuid(ctx, "tenant", "tenant")?,
            source: text("source", "source")?,
            event_type: text("type", "type")?,
            status,
            from: time_param(ctx.q("from"), "from")?,
            to: time_param(ctx.q("to"), "to")?,
            entity_type: text("entity_type", "entity type")?,
            entity_id: text("entity_id", "entity id")?,
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

pub const PAGE_SIZE: i32 = 50;

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

async fn list_events(
    tx: &deadpool_postgres::Transaction<'_>,
    f: &EventFilter,
    limit: i32,
) -> Result<Vec<EventRow>, AppError> {
    let rows = tx
        .query(
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
        .map_err(AppError::from_pg)?;
    Ok(rows
        .iter()
        .map(|r| EventRow {
            id: r.get(0),
            tenant: r.get(1),
            event_type: r.get(2),
            source: r.get(3),
            entity_type: r.get(4),
            entity_id: r.get(5),
            status: r.get(6),
            created: r.get(7),
        })
        .collect())
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

async fn events_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let f = EventFilter::parse(ctx)?;
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let rows = list_events(&tx, &f, PAGE_SIZE).await?;
    tx.commit().await.map_err(AppError::from_pg)?;
    let admin = who.level == Level::Admin;
    let qs = f.query();
    let sel = |s: &str| f.status.as_deref() == Some(s);
    let local = |t: &Option<DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string());
    let body = html! {
        h1 { (l.t("events-title")) }
        form.filters method="get" action="/events" data-local-times {
            label { (l.t("source-module")) input name="source" value=[f.source.as_deref()]; }
            label title=(l.t("event-type-help")) { (l.t("event-type")) input name="type" value=[f.event_type.as_deref()] placeholder="invoice.*"; }
            label { (l.t("status"))
                select name="status" {
                    option value="" { (l.t("any")) }
                    @for s in EVENT_STATUSES { option value=(s) selected[sel(s)] { (l.t(&format!("status-{s}"))) } }
                }
            }
            @if admin { label { (l.t("tenant")) input name="tenant" value=[f.tenant.map(|t| t.to_string())] size="36"; } }
            label { (l.t("from")) input type="datetime-local" name="from" value=[local(&f.from)] data-utc=[f.from.map(|t| t.to_rfc3339())]; }
            label { (l.t("to")) input type="datetime-local" name="to" value=[local(&f.to)] data-utc=[f.to.map(|t| t.to_rfc3339())]; }
            label { (l.t("entity-type")) input name="entity_type" value=[f.entity_type.as_deref()]; }
            label { (l.t("entity-id")) input name="entity_id" value=[f.entity_id.as_deref()]; }
            label { (l.t("correlation-id")) input name="correlation" value=[f.correlation.as_deref()]; }
            button type="submit" { (l.t("filter")) }
            a href="/events" { (l.t("filter-clear")) }
        }
        @if f.before.is_none() {
            div.live data-live={ "/events/live?" (qs) } data-label-pause=(l.t("live-pause")) data-label-resume=(l.t("live-resume")) {
                span.dot {} (l.t("live-tail")) " "
                button type="button" data-live-toggle { (l.t("live-pause")) }
                " " span data-live-count data-template=(l.ta("live-new", &[("count", "#".into())])) {}
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
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let mut rows = list_events(&tx, f, PAGE_SIZE).await?;
    tx.commit().await.map_err(AppError::from_pg)?;
    if let Some(after) = after {
        rows.retain(|r| r.id > after);
    }
    Ok((rows, who.level == Level::Admin))
}

// ---------------------------------------------------------------------------------------------
// event detail and its actions
// ---------------------------------------------------------------------------------------------

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
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let row = tx
        .query_one("SELECT event_bus.event_detail($1)", &[&id])
        .await
        .map_err(AppError::from_pg)?;
    tx.commit().await.map_err(AppError::from_pg)?;
    let d: serde_json::Value = row.get(0);
    let ev = &d["event"];
    let empty = vec![];
    let deliveries = d["deliveries"].as_array().unwrap_or(&empty);
    let logs = d["logs"].as_array().unwrap_or(&empty);
    let children = d["children"].as_array().unwrap_or(&empty);
    let can_write = who.level >= Level::Operator;
    let parent = ev["metadata"].get("causation_id").and_then(|c| c.as_str());
    let any_failed = deliveries.iter().any(|x| s(x, "status") == Some("failed"));
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
                        td { (s(x, "handler_module").unwrap_or("")) }
                        td { (s(x, "handler_kind").unwrap_or("")) }
                        td { code { (s(x, "pattern").unwrap_or("")) } }
                        td { (badge(l, s(x, "status").unwrap_or(""))) }
                        td.num { (x["attempts"].as_i64().map(|n| l.num(n)).unwrap_or_default()) }
                        // a finished delivery has no next attempt: its lease time would read as one
                        td { (time(s(x, "next_attempt_at").filter(|_| matches!(s(x, "status"), Some("pending" | "processing" | "held" | "waiting"))))) }
                        td { (time(s(x, "completed_at"))) }
                        td.num { (x["last_http_status"].as_i64().map(|n| n.to_string()).unwrap_or_default()) }
                        td.err { (truncate(s(x, "last_error").unwrap_or(""), 300)) }
                        @if can_write { td.actions {
                            @if s(x, "status") == Some("failed") {
                                form.inline method="post" action={ "/deliveries/" (s(x, "delivery_id").unwrap_or("")) "/skip" } {
                                    (ctx.csrf_field()) input type="hidden" name="back" value={ "/events/" (id) };
                                    button type="submit" { (l.t("skip")) }
                                }
                            }
                            @if matches!(s(x, "status"), Some("completed") | Some("skipped") | Some("failed")) {
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
                        th { (l.t("executed-at")) } th { (l.t("attempt")) } th { (l.t("status")) } th { (l.t("http-status")) }
                        th { (l.t("duration")) } th { (l.t("error")) } th { (l.t("response")) }
                    } }
                    tbody { @for g in logs {
                        tr {
                            td { (time(s(g, "executed_at"))) }
                            td.num { (g["attempt"].as_i64().unwrap_or(0)) }
                            td { (badge(l, if s(g, "status") == Some("success") { "completed" } else { "failed" })) }
                            td.num { (g["http_status"].as_i64().map(|n| n.to_string()).unwrap_or_default()) }
                            td.num { (g["duration_ms"].as_f64().map(|n| format!("{n:.1} ms")).unwrap_or_default()) }
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

/// Run one write as the signed-in role and go back to `to` with a result.
async fn write(
    ctx: &Ctx,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, AppError> {
    let mut client = ctx.app.db.client().await?;
    let (tx, _who) = ctx.begin(&mut client).await?;
    let row = tx.query_one(sql, params).await.map_err(AppError::from_pg)?;
    tx.commit().await.map_err(AppError::from_pg)?;
    Ok(row)
}

pub async fn retry_event(ctx: Ctx, Path(id): Path<String>, body: String) -> Response {
    let r = async {
        read_form(body, &ctx).await?;
        let id = uuid_param(&id, "event")?;
        let row = write(&ctx, "SELECT event_bus.retry_event($1)", &[&id]).await?;
        let n: i32 = row.get(0);
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
            "SELECT event_bus.replay_events(p_event_id => $1, p_subscription_id => $2)",
            &[&id, &sub],
        )
        .await?;
        let n: i64 = row.get(0);
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

// ---------------------------------------------------------------------------------------------
// dead letters
// ---------------------------------------------------------------------------------------------

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

pub async fn dead_letters(ctx: Ctx) -> Response {
    let r = dead_inner(&ctx).await;
    ctx.respond(r)
}

async fn dead_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let f = DeadFilter::parse(|k| ctx.q(k).map(str::to_string))?;
    let before = opt_uuid(ctx, "before", "page")?;
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let rows = tx
        .query(
            "SELECT delivery_id, event_id, tenant_id, event_type, source_module, handler_module, handler_kind,
                    attempts, last_http_status, last_error, dead_at
               FROM event_bus.dead_letters
              WHERE ($1::uuid IS NULL OR tenant_id = $1)
                AND ($2::text IS NULL OR source_module = $2)
                AND ($3::text IS NULL OR event_bus.matches($3, event_type))
                AND ($4::uuid IS NULL OR subscription_id = $4)
                AND ($5::uuid IS NULL OR delivery_id < $5)
              ORDER BY delivery_id DESC
              LIMIT $6",
            &[&f.tenant, &f.source, &f.event_type, &f.subscription, &before, &(PAGE_SIZE as i64)],
        )
        .await
        .map_err(AppError::from_pg)?;
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
        Some(r.get::<_, i32>(0) as i64)
    } else {
        None
    };
    tx.commit().await.map_err(AppError::from_pg)?;
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
                    span { (l.ta("retry-matching-preview", &[("count", l.num(n).into())])) " " }
                    button.primary type="submit" { (l.ta("retry-matching-confirm", &[("count", l.num(n).into())])) }
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
                    @let did: Uuid = r.get(0);
                    @let eid: Uuid = r.get(1);
                    tr data-delivery=(did) {
                        td { (time(ts(r.get(10)).as_deref())) }
                        td { a href={ "/events/" (eid) } { code { (r.get::<_, String>(3)) } } }
                        td { (r.get::<_, String>(4)) }
                        td { (r.get::<_, Option<String>>(5).unwrap_or_default()) " " span.muted { (r.get::<_, Option<String>>(6).unwrap_or_default()) } }
                        td.num { (l.num(r.get::<_, i32>(7) as i64)) }
                        td.num { (r.get::<_, Option<i32>>(8).map(|n| n.to_string()).unwrap_or_default()) }
                        td.err { (truncate(&r.get::<_, Option<String>>(9).unwrap_or_default(), 300)) }
                        @if admin { td { code.small { (r.get::<_, Uuid>(2)) } } }
                        @if can_write { td.actions {
                            form.inline method="post" action={ "/events/" (eid) "/retry" } {
                                (ctx.csrf_field()) button type="submit" { (l.t("retry")) }
                            }
                            form.inline method="post" action={ "/deliveries/" (did) "/skip" } {
                                (ctx.csrf_field()) input type="hidden" name="back" value="/dead-letters";
                                button type="submit" { (l.t("skip")) }
                            }
                        } }
                    }
                } }
            }
            @if rows.len() == PAGE_SIZE as usize {
                nav.pager { a rel="next" href={ "/dead-letters?" (qs) (if qs.is_empty() { "" } else { "&" }) "before=" (rows.last().expect("full").get::<_, Uuid>(0)) } { (l.t("next-page")) " »" } }
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
        let n: i32 = row.get(0);
        Ok(see_other(&format!("/dead-letters?done=retried&n={n}")))
    }
    .await;
    ctx.respond(r)
}

// ---------------------------------------------------------------------------------------------
// subscriptions
// ---------------------------------------------------------------------------------------------

pub async fn subscriptions(ctx: Ctx) -> Response {
    let r = subs_inner(&ctx).await;
    ctx.respond(r)
}

async fn subs_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let rows = tx
        .query(
            "SELECT h.subscription_id, h.event_type, h.handler_module, h.handler_kind, h.tenant_id, h.is_active,
                    h.breaker_state, h.consecutive_failures, h.attempts_1h, h.failures_1h, h.last_error,
                    h.last_success_at
               FROM event_bus.subscription_health h
              ORDER BY h.handler_module, h.event_type, h.subscription_id",
            &[],
        )
        .await
        .map_err(AppError::from_pg)?;
    // targets and secrets: admins only (subscription_targets() is theirs alone)
    let targets: HashMap<Uuid, (String, Option<String>)> = if who.level == Level::Admin {
        tx.query(
            "SELECT subscription_id, target, secret_hint FROM event_bus.subscription_targets()",
            &[],
        )
        .await
        .map_err(AppError::from_pg)?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
    } else {
        HashMap::new()
    };
    tx.commit().await.map_err(AppError::from_pg)?;
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
                    @if admin { th { (l.t("target")) } th { (l.t("tenant")) } }
                    @if can_write { th {} }
                } }
                tbody { @for r in &rows {
                    @let id: Uuid = r.get(0);
                    @let active: bool = r.get(5);
                    @let state: String = r.get(6);
                    tr data-subscription=(id) {
                        td { (r.get::<_, String>(2)) }
                        td { a href={ "/dead-letters?subscription=" (id) } { code { (r.get::<_, String>(1)) } } }
                        td { (r.get::<_, String>(3)) }
                        td { (l.t(if active { "yes" } else { "no" })) }
                        td { (badge(l, &state)) }
                        td.num { (l.num(r.get::<_, i32>(7) as i64)) }
                        td.num { (l.num(r.get(8))) }
                        td.num { (l.num(r.get(9))) }
                        td.err { (truncate(&r.get::<_, Option<String>>(10).unwrap_or_default(), 200)) }
                        td { (time(ts(r.get(11)).as_deref())) }
                        @if admin {
                            td {
                                @if let Some((t, secret)) = targets.get(&id) {
                                    code.small { (t) }
                                    @if let Some(h) = secret { br; span.muted { (l.t("secret")) ": " code.small { (h) } } }
                                }
                            }
                            td { @match r.get::<_, Option<Uuid>>(4) { Some(t) => code.small { (t) }, None => em { (l.t("all-tenants")) } } }
                        }
                        @if can_write { td.actions {
                            @if state != "closed" && admin {
                                form.inline method="post" action={ "/subscriptions/" (id) "/reset" } {
                                    (ctx.csrf_field()) button type="submit" { (l.t("reset-breaker")) }
                                }
                            }
                            form.inline method="post" action={ "/subscriptions/" (id) (if active { "/pause" } else { "/resume" }) } {
                                (ctx.csrf_field()) button type="submit" { (l.t(if active { "pause" } else { "resume" })) }
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
        let row = write(&ctx, "SELECT event_bus.reset_breaker($1)", &[&id]).await?;
        let n: i32 = row.get(0);
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

// ---------------------------------------------------------------------------------------------
// parked streams
// ---------------------------------------------------------------------------------------------

pub async fn parked(ctx: Ctx) -> Response {
    let r = parked_inner(&ctx).await;
    ctx.respond(r)
}

async fn parked_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let mut client = ctx.app.db.client().await?;
    let (tx, who) = ctx.begin(&mut client).await?;
    let rows = tx
        .query(
            "SELECT subscription_id, handler_module, tenant_id, entity_type, entity_id, delivery_id, event_id,
                    event_type, attempts, last_error, parked_at, waiting
               FROM event_bus.parked_streams
              ORDER BY parked_at NULLS LAST, delivery_id
              LIMIT 500",
            &[],
        )
        .await
        .map_err(AppError::from_pg)?;
    tx.commit().await.map_err(AppError::from_pg)?;
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
                    @let did: Uuid = r.get(5);
                    @let eid: Uuid = r.get(6);
                    tr data-delivery=(did) {
                        td { (r.get::<_, Option<String>>(1).unwrap_or_default()) }
                        td { (r.get::<_, Option<String>>(3).unwrap_or_default()) " " code { (r.get::<_, Option<String>>(4).unwrap_or_default()) } }
                        td { a href={ "/events/" (eid) } { code { (r.get::<_, String>(7)) } } }
                        td.num { (l.num(r.get::<_, i32>(8) as i64)) }
                        td.err { (truncate(&r.get::<_, Option<String>>(9).unwrap_or_default(), 200)) }
                        td { (time(ts(r.get(10)).as_deref())) }
                        td.num { (l.num(r.get(11))) }
                        @if can_write { td.actions {
                            form.inline method="post" action={ "/events/" (eid) "/retry" } { (ctx.csrf_field()) button type="submit" { (l.t("retry")) } }
                            form.inline method="post" action={ "/deliveries/" (did) "/skip" } {
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

pub async fn not_found(ctx: Ctx) -> Response {
    ctx.respond(Err(AppError::NoPage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/events?x=1")), "/events?x=1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(Some("/\\evil")), "/");
        assert_eq!(safe_next(Some("/login")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn time_filters_take_rfc3339_and_local_inputs() {
        let t = time_param(Some("2026-12-01T05:00:00+01:00"), "from")
            .unwrap()
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T04:00:00+00:00");
        let t = time_param(Some("2026-12-01T05:00"), "from")
            .unwrap()
            .unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-01T05:00:00+00:00");
        assert!(matches!(
            time_param(Some("yesterday"), "from"),
            Err(AppError::BadInput(_))
        ));
        assert!(time_param(None, "from").unwrap().is_none());
    }

    #[test]
    fn window_counts_are_fresh_then_stale_while_one_recount_runs() {
        let cache = StatsCache::new(std::time::Duration::from_millis(50));
        let key: StatsKey = ("alice".into(), None, "24h".into());
        let w = WindowStats {
            counts: [1, 2, 3, 4, 10],
            series: vec![],
            at: Utc::now(),
        };
        assert!(matches!(cache.get(&key), Cached::Missing));
        assert!(!cache.start_refresh(&key), "nothing to refresh yet");
        cache.put(key.clone(), w.clone());
        assert!(matches!(cache.get(&key), Cached::Fresh(_)));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(matches!(cache.get(&key), Cached::Stale(ref s) if s.counts == [1, 2, 3, 4, 10]));
        assert!(cache.start_refresh(&key));
        assert!(!cache.start_refresh(&key), "one recount at a time");
        cache.end_refresh(&key);
        assert!(
            cache.start_refresh(&key),
            "a failed recount may be tried again"
        );
        cache.put(key.clone(), w);
        assert!(matches!(cache.get(&key), Cached::Fresh(_)));
        let other: StatsKey = ("bob".into(), None, "24h".into());
        assert!(matches!(cache.get(&other), Cached::Missing), "per role");
    }

    #[test]
    fn a_malformed_id_is_bad_input() {
        assert!(
            matches!(uuid_param("<script>", "event"), Err(AppError::BadInput(m)) if m.contains("not a UUID"))
        );
        assert!(uuid_param(" 0190b4a4-6c2c-7c4e-8c4e-8c4e8c4e8c4e ", "event").is_ok());
    }
}
