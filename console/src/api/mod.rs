//! The JSON API under `/api/v1`: what the pages read and do, for an application's own screens and the
//! TypeScript client (clients/typescript). The same sign-in as the pages — a session cookie, whose state
//! changes carry the session's CSRF token in the `X-CSRF-Token` header, or `Authorization: Bearer
//! <JWT>` with none — the same role switch, row-level security and SQL functions. Errors are
//! `{code, message, hint}` with the HTTP status their cause gives.
//!
//! The OpenAPI 3.1 document (`/api/v1/openapi.json`) is made from the handlers below and their types
//! (utoipa): a route exists only as a documented path, and the API tests check every response they get
//! against the document's schema for it.

mod events;
mod ops;
mod stream;
pub mod types;

use crate::error::AppError;
use crate::web::{invalid_text, App, Ctx};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;
use types::ApiError;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The largest request body the API reads (a payload of event_bus.max_payload_bytes' default, 1 MiB, with
/// its metadata and JSON escaping); larger ones get 400 before anything is written.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The header a cookie session's state changes carry its CSRF token in (GET /api/v1/session gives it).
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "event_bus console API",
        version = "1",
        description = "The Event Monitor's JSON API: events, their deliveries and attempts, statistics, \
publishing, dead letters, subscriptions and a live stream, as the signed-in PostgreSQL role (row-level \
security decides what a role sees). Sign in with `Authorization: Bearer <JWT>` (its `role` claim is the role; \
its claims go to `request.jwt.claims`), or with the console's session cookie, whose state-changing requests \
carry the session's CSRF token (GET /api/v1/session) in the `X-CSRF-Token` header.",
        license(name = "MIT")
    ),
    components(schemas(types::StatusFilter)),
    modifiers(&Security),
    security(("bearer" = []), ("session" = [])),
    tags(
        (name = "events", description = "Events, their deliveries and attempt log, statistics, publishing"),
        (name = "operations", description = "Dead letters, retries, processing by hand, the queue"),
        (name = "subscriptions", description = "Subscriptions, their health, pausing and breakers"),
        (name = "session", description = "Who the request acts as"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT (HS256 with the console's secret, or RS256 / ES256 with a key of its JWKS) \
                         whose `role` claim names the PostgreSQL role to act as.",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "The console's session cookie (signing in at /login); state changes need X-CSRF-Token.",
            ))),
        );
    }
}

/// The API's routes and its OpenAPI document, made from the same handler list.
pub fn router() -> (axum::Router<Arc<App>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events::list_events, events::publish_event))
        .routes(routes!(events::get_event))
        .routes(routes!(events::event_stats))
        .routes(routes!(stream::event_stream))
        .routes(routes!(ops::retry_event))
        .routes(routes!(ops::process_pending))
        .routes(routes!(ops::list_dead_letters))
        .routes(routes!(ops::retry_dead_letters))
        .routes(routes!(ops::retry_delivery))
        .routes(routes!(ops::skip_delivery))
        .routes(routes!(ops::queue_summary))
        .routes(routes!(ops::list_subscriptions))
        .routes(routes!(ops::pause_subscription))
        .routes(routes!(ops::resume_subscription))
        .routes(routes!(ops::reset_breaker))
        .routes(routes!(ops::session))
        .split_for_parts()
}

/// The document as served at /api/v1/openapi.json and committed for the TypeScript client.
pub fn openapi_json() -> String {
    let (_, doc) = router();
    let mut s = doc
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    s.push('\n');
    s
}

/// What an error is as JSON: the database's SQLSTATE, message and hint where the database decided;
/// otherwise a short code of the console's.
pub fn error_body(ctx: &Ctx, e: &AppError) -> (StatusCode, ApiError) {
    let l = ctx.lang;
    let own = |code: &str, message: String, hint: Option<&str>| ApiError {
        code: code.to_string(),
        message,
        hint: hint.map(str::to_string),
    };
    let pg = |d: &crate::error::PgDetail| ApiError {
        code: d.code.clone(),
        message: d.message.clone(),
        hint: d.hint.clone(),
    };
    let body = match e {
        AppError::SignIn { expired } => own(
            "unauthenticated",
            if *expired {
                "The session or token has expired.".into()
            } else {
                "Not signed in.".into()
            },
            Some("Send Authorization: Bearer <JWT> (its role claim names the role), or sign in at /login for a session cookie."),
        ),
        AppError::NotAllowed => own(
            "not_allowed",
            "This role may not use event_bus through the console.".into(),
            Some("The role must be a member of event_bus_reader, event_bus_operator or event_bus_admin, and the console's role a member of it."),
        ),
        AppError::Forbidden(d) => pg(d),
        AppError::Csrf => own(
            "csrf",
            "The X-CSRF-Token header is missing or does not match the session.".into(),
            Some("Read csrf_token from GET /api/v1/session and send it as X-CSRF-Token; bearer tokens need none."),
        ),
        AppError::NotFound => own(
            "not_found",
            "Not found.".into(),
            Some("It may belong to another tenant, or retention may have deleted it."),
        ),
        AppError::NoPage => own("no_route", "No such API path.".into(), Some("See /api/v1/openapi.json.")),
        AppError::BadInput(d) => pg(d),
        AppError::Invalid { id, args } => own("invalid_input", invalid_text(l, id, args), None),
        AppError::Unavailable(_) => own(
            "unavailable",
            "The database is not reachable.".into(),
            Some("Try again shortly."),
        ),
        AppError::Db(d) => pg(d),
    };
    (e.status(), body)
}

/// An error as the API answers it (logged as the pages log theirs).
pub fn failure(ctx: &Ctx, e: AppError) -> Response {
    match &e {
        AppError::Unavailable(detail) => {
            eprintln!("event-bus-console: database unavailable: {detail}")
        }
        AppError::Db(d) => eprintln!(
            "event-bus-console: {}: SQLSTATE {}: {}",
            ctx.path, d.code, d.message
        ),
        _ => {}
    }
    let (status, body) = error_body(ctx, &e);
    // a sign-in is asked for with 401 here, never a redirect to the login page
    let status = if matches!(e, AppError::SignIn { .. }) {
        StatusCode::UNAUTHORIZED
    } else {
        status
    };
    (status, Json(body)).into_response()
}

/// 200 with the value as JSON, or the error.
pub fn reply<T: Serialize>(ctx: &Ctx, r: Result<T, AppError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => failure(ctx, e),
    }
}

/// A state-changing request must carry the session's CSRF token in X-CSRF-Token, unless it is signed
/// by a bearer header (which a browser does not send on its own).
pub fn check_csrf(ctx: &Ctx) -> Result<(), AppError> {
    ctx.identity()?;
    let expected = ctx.csrf();
    if ctx.jwt.is_some() && expected.is_empty() {
        return Ok(());
    }
    let given = ctx
        .headers
        .get(CSRF_HEADER)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if expected.is_empty() || !crate::auth::same_token(given, expected) {
        return Err(AppError::Csrf);
    }
    Ok(())
}

/// A query string or body the API could not read: 400 with serde's reason.
pub fn unreadable(what: &str, reason: impl std::fmt::Display) -> AppError {
    AppError::BadInput(crate::error::PgDetail {
        code: "invalid_input".into(),
        message: format!("The {what} does not parse: {reason}"),
        hint: Some(
            "See /api/v1/openapi.json for the parameters and bodies each path takes.".into(),
        ),
    })
}

/// Cross-origin calls of the API from the origins given with --cors-origins (an application's front end
/// on another host): bearer tokens only — no credentials are allowed cross-origin, so a session cookie
/// never rides on another site's request. Preflights are answered here; other origins get no CORS
/// headers (the browser refuses to give them the response).
pub async fn cors(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::{header, HeaderValue, Method};
    let api = req.uri().path().starts_with("/api/");
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| api && app.cors_origins.iter().any(|a| a == o))
        .map(str::to_string);
    let Some(origin) = origin else {
        return next.run(req).await;
    };
    let allow = HeaderValue::from_str(&origin).expect("an origin header's value is a header value");
    let mut r = if req.method() == Method::OPTIONS {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, accept, last-event-id"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(req).await
    };
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    r
}

/// Paths under /api/ that no route serves: JSON 404, not the HTML page.
pub async fn no_route(ctx: Ctx) -> Response {
    failure(&ctx, AppError::NoPage)
}

#[cfg(test)]
mod tests {
    /// The committed document (clients/typescript/openapi.json, what the TypeScript types are generated
    /// from) is the one these handlers make: regenerate with `UPDATE_OPENAPI=1 cargo test -p
    /// event-bus-console openapi`.
    #[test]
    fn openapi_document_is_committed_as_generated() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../clients/typescript/openapi.json"
        );
        let now = super::openapi_json();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "{path} differs from the document the handlers make: run UPDATE_OPENAPI=1 cargo test -p event-bus-console openapi, \
             then regenerate the TypeScript types (npm run generate in clients/typescript)"
        );
    }

    /// Every route is a documented path with an operation id, and the statuses the API's lifecycle names
    /// are the core's.
    #[test]
    fn the_document_lists_every_route_with_its_states() {
        let (_, doc) = super::router();
        let v = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["openapi"], "3.1.0");
        let paths = v["paths"].as_object().unwrap();
        assert!(paths.len() >= 16, "{:?}", paths.keys());
        for (p, ops) in paths {
            assert!(p.starts_with("/api/v1/"), "{p}");
            for (m, op) in ops.as_object().unwrap() {
                assert!(op["operationId"].is_string(), "{m} {p} has no operationId");
            }
        }
        let names = |s: &str| -> Vec<String> {
            v["components"]["schemas"][s]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{s} is an enum"))
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        use event_bus_core::lifecycle::{DeliveryState, EventStatus};
        assert_eq!(
            names("EventStatus"),
            EventStatus::ALL.map(|s| s.name().to_string()).to_vec()
        );
        let mut filters = EventStatus::ALL.map(|s| s.name().to_string()).to_vec();
        filters.insert(3, "processed".into());
        assert_eq!(
            names("StatusFilter"),
            filters,
            "every status and 001's processed"
        );
        assert_eq!(
            names("DeliveryStatus"),
            DeliveryState::ALL.map(|s| s.name().to_string()).to_vec()
        );
    }
}
