//! `GET /healthz` (the database answers) and `GET /metrics` (event_bus.metrics() for Prometheus).

use super::*;

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
