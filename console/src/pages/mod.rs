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

mod dead;
mod event;
mod events;
mod health;
mod overview;
mod parked;
mod signin;
mod subscriptions;

pub use dead::{dead_letters, retry_dead, DEAD_LETTERS_SQL};
pub use event::{event, replay_event, retry_event, skip_delivery};
pub use events::{event_rows, events, live_rows, EventFilter};
pub use health::{healthz, metrics};
pub use overview::{overview, process_pending, StatsCache};
pub use parked::parked;
pub use signin::{login, login_form, logout};
pub use subscriptions::{reset_breaker, set_active, set_filter, subscriptions};

type Res = Result<Response, AppError>;

use event_bus_core::lifecycle::{DeliveryState, EventStatus};

pub(crate) fn uuid_param(v: &str, what: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(v.trim()).map_err(|_| {
        AppError::invalid(
            "err-not-uuid",
            &[("what", what), ("value", &truncate(v, 60))],
        )
    })
}

fn opt_uuid(ctx: &Ctx, k: &str, what: &str) -> Result<Option<Uuid>, AppError> {
    ctx.q(k).map(|v| uuid_param(v, what)).transpose()
}

/// A free-text filter (source, type, entity, correlation) as the user typed it: never shortened,
/// which would give wrong answers; refused (400) only beyond a bound far above any value the
/// extension stores, so no request makes the database compare megabytes.
pub(crate) const MAX_FILTER_CHARS: usize = 1000;

pub(crate) fn filter_text(v: Option<&str>, what: &str) -> Result<Option<String>, AppError> {
    match v {
        Some(s) if s.chars().count() > MAX_FILTER_CHARS => Err(AppError::invalid(
            "err-too-long",
            &[
                ("what", what),
                ("length", &s.chars().count().to_string()),
                ("max", &MAX_FILTER_CHARS.to_string()),
            ],
        )),
        other => Ok(other.map(str::to_string)),
    }
}

pub(crate) fn truncate(s: &str, n: usize) -> String {
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
    Err(AppError::invalid(
        "err-not-time",
        &[("what", what), ("value", &truncate(v, 60))],
    ))
}

pub const PAGE_SIZE: i32 = 50;

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

// ---------------------------------------------------------------------------------------------
// The request skeleton every page shares
// ---------------------------------------------------------------------------------------------

/// A transaction acting as the signed-in role (crate::db::act_as: SET ROLE, the tenant, a statement
/// timeout), as the pages' reads and writes receive it.
pub(crate) type Tx<'c> = deadpool_postgres::Transaction<'c>;

/// One request's database work, written once for every page: a pooled client, a transaction acting as
/// the signed-in role, the page's statements (`work`), the commit. Returns what `work` returned and who the
/// role is (its level decides which buttons the page shows).
pub(crate) async fn as_role<T>(
    ctx: &Ctx,
    work: impl AsyncFnOnce(&Tx<'_>, &crate::db::Who) -> Result<T, AppError>,
) -> Result<(T, crate::db::Who), AppError> {
    as_identity(&ctx.app, &ctx.identity()?, work).await
}

/// [`as_role`] for work outside a request (the overview's background count), given the identity.
pub(crate) async fn as_identity<T>(
    app: &crate::web::App,
    id: &crate::db::Identity,
    work: impl AsyncFnOnce(&Tx<'_>, &crate::db::Who) -> Result<T, AppError>,
) -> Result<(T, crate::db::Who), AppError> {
    let mut client = app.db.client().await?;
    let tx = client.transaction().await.map_err(AppError::from_pg)?;
    let who = crate::db::act_as(&tx, id, app.db.statement_timeout_ms).await?;
    let out = work(&tx, &who).await?;
    tx.commit().await.map_err(AppError::from_pg)?;
    Ok((out, who))
}

/// Run one write (a function of the SQL API) as the signed-in role; its one row.
pub(crate) async fn write(
    ctx: &Ctx,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<tokio_postgres::Row, AppError> {
    let (row, _) = as_role(ctx, async |tx, _| {
        tx.query_one(sql, params).await.map_err(AppError::from_pg)
    })
    .await?;
    Ok(row)
}

/// A page's row type, read from a query's row by column name.
pub(crate) trait FromRow: Sized {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError>;
}

/// One column by name (a wrong name or type is an error, not a panic).
pub(crate) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(
    r: &'a tokio_postgres::Row,
    name: &str,
) -> Result<T, AppError> {
    r.try_get(name).map_err(AppError::from_pg)
}

/// Run a query and read its rows as `T`.
pub(crate) async fn query_as<T: FromRow>(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<T>, AppError> {
    tx.query(sql, params)
        .await
        .map_err(AppError::from_pg)?
        .iter()
        .map(T::from_row)
        .collect()
}

/// Run a query that returns one row and read it as `T`.
pub(crate) async fn query_one_as<T: FromRow>(
    tx: &Tx<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<T, AppError> {
    T::from_row(&tx.query_one(sql, params).await.map_err(AppError::from_pg)?)
}

async fn read_form(body: String, ctx: &Ctx) -> Result<HashMap<String, String>, AppError> {
    let form = parse_form(&body);
    ctx.check_csrf(&form)?;
    Ok(form)
}

fn flash(ctx: &Ctx) -> Markup {
    let l = ctx.lang;
    let n = || ctx.q("n").and_then(|n| n.parse::<i64>().ok()).unwrap_or(0);
    let msg = match ctx.q("done") {
        Some("retried") => Some(l.count("retried", n())),
        Some("replayed") => Some(l.count("replayed", n())),
        Some("reset") => Some(l.count("breaker-reset", n())),
        Some("processed") => Some(l.count("process-pending-done", n())),
        Some("skipped") => Some(l.t("skipped")),
        Some("paused") => Some(l.t("paused")),
        Some("resumed") => Some(l.t("resumed")),
        Some("filter") => Some(l.t("filter-saved")),
        _ => None,
    };
    html! { @if let Some(m) = msg { div.banner.ok role="status" { (m) } } }
}

pub async fn not_found(ctx: Ctx) -> Response {
    ctx.respond(Err(AppError::NoPage))
}
