//! The request context (language, session, identity), the page frame, and the pieces every page
//! uses: escaping is maud's (every `(value)` is HTML-escaped), badges, times, forms with CSRF.

use crate::auth::{self, JwtIdentity, Session, SessionError};
use crate::db::{Db, Identity, Level, Who};
use crate::error::AppError;
use crate::i18n::Lang;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct App {
    pub db: Db,
    pub signer: auth::Signer,
    /// the bearer tokens accepted (none: sessions only)
    pub jwt: Option<auth::JwtConfig>,
    /// origins whose pages may call /api/ with a bearer token (CORS)
    pub cors_origins: Vec<String>,
    pub metrics_token: Option<String>,
    pub metrics_role: Option<String>,
    pub limiter: auth::LoginLimiter,
    pub live: crate::live::Live,
    /// cookies marked Secure (the console is served over HTTPS by a proxy)
    pub secure_cookies: bool,
    /// the overview's window counts, per role, tenant and window, for a few seconds: counting a
    /// busy day of events is the one read that grows with the history
    pub stats_cache: crate::pages::StatsCache,
}

/// Everything a handler needs to know about the request before it runs.
pub struct Ctx {
    pub app: Arc<App>,
    pub lang: Lang,
    lang_chosen: bool,
    pub session: Option<Session>,
    pub session_error: Option<SessionError>,
    pub jwt: Option<(JwtIdentity, String)>,
    jwt_error: bool,
    pub peer: String,
    pub query: HashMap<String, String>,
    pub path: String,
    pub headers: HeaderMap,
}

pub fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(header::COOKIE) {
        if let Ok(v) = v.to_str() {
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    out.entry(k.trim().to_string())
                        .or_insert_with(|| val.trim().to_string());
                }
            }
        }
    }
    out
}

pub fn parse_form(s: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(s.as_bytes())
        .into_owned()
        .collect()
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Ctx, Self::Rejection> {
        let query = parts.uri.query().map(parse_form).unwrap_or_default();
        let jar = cookies(&parts.headers);
        let (lang, lang_chosen) = match query.get("lang").and_then(|l| Lang::parse(l)) {
            Some(l) => (l, true),
            None => {
                let l = jar
                    .get(auth::LANG_COOKIE)
                    .and_then(|l| Lang::parse(l))
                    .or_else(|| {
                        parts
                            .headers
                            .get(header::ACCEPT_LANGUAGE)
                            .and_then(|h| h.to_str().ok())
                            .and_then(Lang::from_accept_language)
                    })
                    .unwrap_or(Lang::En);
                (l, false)
            }
        };
        let now = auth::now_secs();
        let (mut session, mut session_error) = (None, None);
        if let Some(v) = jar.get(auth::SESSION_COOKIE) {
            match app.signer.open(v, now) {
                Ok(s) => session = Some(s),
                Err(e) => session_error = Some(e),
            }
        }
        let (mut jwt, mut jwt_error) = (None, false);
        if let Some(cfg) = &app.jwt {
            let bearer = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer ").map(str::trim).map(str::to_string));
            let from_header = bearer.is_some();
            if let Some(token) = bearer.or_else(|| jar.get(auth::JWT_COOKIE).cloned()) {
                let mut checked = cfg.verify(&token, now);
                if checked == Err(auth::JwtError::UnknownKey) {
                    // a key rotated in since the set was read: read it again (rate-limited), once
                    if let Some(keys) = &cfg.keys {
                        keys.read_for_unknown_kid().await;
                        checked = cfg.verify(&token, now);
                    }
                }
                match checked {
                    // a bearer header is not sent by a browser on its own: no CSRF token needed
                    Ok(id) => {
                        let csrf = if from_header {
                            String::new()
                        } else {
                            app.signer.csrf_for_token(&token)
                        };
                        jwt = Some((id, csrf));
                    }
                    Err(_) => jwt_error = true,
                }
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        Ok(Ctx {
            app: app.clone(),
            lang,
            lang_chosen,
            session,
            session_error,
            jwt,
            jwt_error,
            peer,
            query,
            path: parts.uri.path().to_string(),
            headers: parts.headers.clone(),
        })
    }
}

impl Ctx {
    /// The role this request acts as; signing in is needed without one.
    pub fn identity(&self) -> Result<Identity, AppError> {
        if let Some((id, _)) = &self.jwt {
            return Ok(Identity {
                role: id.role.clone(),
                claims: Some(id.claims.to_string()),
            });
        }
        if let Some(s) = &self.session {
            return Ok(Identity {
                role: s.role.clone(),
                claims: None,
            });
        }
        Err(AppError::SignIn {
            expired: self.jwt_error || self.session_error == Some(SessionError::Expired),
        })
    }

    pub fn csrf(&self) -> &str {
        if let Some((_, c)) = &self.jwt {
            return c;
        }
        self.session.as_ref().map(|s| s.csrf.as_str()).unwrap_or("")
    }

    /// A state-changing request must carry the session's CSRF token (a bearer header needs none).
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), AppError> {
        let expected = self.csrf();
        if self.jwt.is_some() && expected.is_empty() {
            return Ok(());
        }
        let given = form.get("csrf").map(String::as_str).unwrap_or("");
        if expected.is_empty() || !auth::same_token(given, expected) {
            return Err(AppError::Csrf);
        }
        Ok(())
    }

    pub fn q(&self, k: &str) -> Option<&str> {
        self.query
            .get(k)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(a) = max_age {
            c.push_str(&format!("; Max-Age={a}"));
        }
        if self.app.secure_cookies {
            c.push_str("; Secure");
        }
        HeaderValue::from_str(&c).expect("cookie values are URL-safe")
    }

    pub fn session_cookie(&self, s: &Session) -> HeaderValue {
        self.cookie(auth::SESSION_COOKIE, &self.app.signer.seal(s), None)
    }

    pub fn clear_cookie(&self, name: &str) -> HeaderValue {
        self.cookie(name, "", Some(0))
    }

    pub fn login_cookie(&self, token: &str) -> HeaderValue {
        self.cookie(auth::LOGIN_COOKIE, token, Some(3600))
    }

    /// The handler's result as a response: the page or the error page, with the session's idle
    /// clock moved on and the chosen language remembered.
    pub fn respond(&self, r: Result<Response, AppError>) -> Response {
        let mut resp = match r {
            Ok(r) => r,
            Err(e) => self.error_response(e),
        };
        let h = resp.headers_mut();
        // (a response that signs in or out sets the session itself)
        let sets_session = h.get_all(header::SET_COOKIE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.starts_with(auth::SESSION_COOKIE))
        });
        if self.lang_chosen {
            h.append(
                header::SET_COOKIE,
                self.cookie(auth::LANG_COOKIE, self.lang.code(), Some(365 * 86400)),
            );
        }
        if let Some(s) = &self.session {
            // slide the idle expiry at most once a minute, and not over a sign-out
            let now = auth::now_secs();
            if now.saturating_sub(s.seen) >= 60 && !sets_session {
                let s = Session {
                    seen: now,
                    ..s.clone()
                };
                h.append(header::SET_COOKIE, self.session_cookie(&s));
            }
        }
        resp
    }

    pub fn error_response(&self, e: AppError) -> Response {
        let l = self.lang;
        if let AppError::SignIn { expired } = e {
            let mut to = format!("/login?next={}", enc(&self.path));
            if expired {
                to.push_str("&expired=1");
            }
            let mut r = Redirect::to(&to).into_response();
            if self.session_error.is_some() {
                r.headers_mut()
                    .append(header::SET_COOKIE, self.clear_cookie(auth::SESSION_COOKIE));
            }
            return r;
        }
        let status = e.status();
        let message = self.error_message(&e);
        match &e {
            AppError::Unavailable(detail) => {
                eprintln!("event-bus-console: database unavailable: {detail}")
            }
            AppError::Forbidden(detail) => {
                eprintln!("event-bus-console: {} refused: {detail}", self.path)
            }
            AppError::Db(d) => eprintln!(
                "event-bus-console: {}: SQLSTATE {}: {}",
                self.path, d.code, d.message
            ),
            _ => {}
        }
        let down = matches!(e, AppError::Unavailable(_));
        let body = html! {
            div.banner.error role="alert" data-retry=(if down { "5" } else { "" }) { (message) }
            p { a href="/" { (l.t("back")) } }
        };
        let page = self.frame(None, &l.t("app-title"), body);
        html_response(status, page)
    }

    /// What an error says to the user, in the request's language.
    pub fn error_message(&self, e: &AppError) -> String {
        let l = self.lang;
        match e {
            AppError::SignIn { .. } => l.t("err-login-not-allowed"),
            AppError::NotAllowed => l.t("err-login-not-allowed"),
            AppError::Forbidden(_) => l.t("err-forbidden"),
            AppError::Csrf => l.t("err-csrf"),
            AppError::NotFound => l.t("err-not-found"),
            AppError::NoPage => l.t("err-page-missing"),
            AppError::BadInput(d) => l.ta("err-bad-input", &[("detail", d.text().into())]),
            AppError::Invalid { id, args } => l.ta(
                "err-bad-input",
                &[("detail", invalid_text(l, id, args).into())],
            ),
            AppError::Unavailable(_) => l.t("err-db-down"),
            AppError::Db(d) => l.ta("err-db", &[("detail", d.text().into())]),
        }
    }

    /// The page frame: navigation, who is signed in, language switch, sign-out.
    pub fn frame(&self, who: Option<&Who>, title: &str, body: Markup) -> Markup {
        let l = self.lang;
        let nav = [
            ("/", "nav-overview"),
            ("/events", "nav-events"),
            ("/dead-letters", "nav-dead"),
            ("/subscriptions", "nav-subscriptions"),
            ("/parked", "nav-parked"),
        ];
        html! {
            (DOCTYPE)
            html lang=(l.html_tag()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · " (l.t("app-title")) }
                    link rel="stylesheet" href="/assets/style.css";
                    script src="/assets/app.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" { (l.t("app-title")) }
                        // (an error page of a signed-in user keeps the navigation)
                        @if who.is_some() || self.identity().is_ok() {
                            nav {
                                @for (href, key) in nav {
                                    a href=(href) aria-current=[self.current(href)] { (l.t(key)) }
                                }
                            }
                        }
                        div.who {
                            span.langs {
                                @for other in Lang::ALL {
                                    @if other == l {
                                        strong { (l.t(&format!("lang-{}", other.code()))) }
                                    } @else {
                                        a href=(self.with_lang(other)) hreflang=(other.code()) {
                                            (l.t(&format!("lang-{}", other.code())))
                                        }
                                    }
                                }
                            }
                            @if let Some(w) = who {
                                span.role {
                                    (l.ta("signed-in-as", &[("role", w.role.clone().into())]))
                                    " (" (l.t(match w.level { Level::Admin => "role-admin", Level::Operator => "role-operator", Level::Reader => "role-reader" })) ")"
                                    " · " (l.t("tenant-label")) ": "
                                    @match w.tenant { Some(t) => code { (t) }, None => em { (l.t("all-tenants")) } }
                                }
                                @if self.session.is_some() {
                                    form.inline method="post" action="/logout" {
                                        input type="hidden" name="csrf" value=(self.csrf());
                                        button type="submit" { (l.t("sign-out")) }
                                    }
                                }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
    }

    /// This page in another language: the same path and filters.
    fn with_lang(&self, lang: Lang) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        let mut keys: Vec<_> = self
            .query
            .iter()
            .filter(|(k, _)| k.as_str() != "lang")
            .collect();
        keys.sort();
        for (k, v) in keys {
            q.append_pair(k, v);
        }
        q.append_pair("lang", lang.code());
        format!("{}?{}", self.path, q.finish())
    }

    fn current(&self, href: &str) -> Option<&'static str> {
        let on = if href == "/" {
            self.path == "/"
        } else {
            self.path.starts_with(href)
        };
        on.then_some("page")
    }

    /// A complete page as a response.
    pub fn page(&self, who: &Who, title: &str, body: Markup) -> Response {
        let mut r = html_response(StatusCode::OK, self.frame(Some(who), title, body));
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// A hidden CSRF field for a form.
    pub fn csrf_field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.csrf()); }
    }
}

/// Percent-encode a query value.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A status badge, labelled in the page's language.
pub fn badge(l: Lang, status: &str) -> Markup {
    // a delivery's state (an event's status is one of the same words), or a breaker's
    let known = event_bus_core::lifecycle::DeliveryState::from_name(status).is_some()
        || ["closed", "open", "half_open"].contains(&status);
    let class = if known { status } else { "other" };
    let label = if known {
        l.t(&format!("status-{status}"))
    } else {
        status.to_string()
    };
    html! { span class={ "badge " (class) } { (label) } }
}

/// A time, shown in the browser's time zone and language by app.js (UTC until then).
pub fn time(t: Option<&str>) -> Markup {
    match t {
        None => html! { span.muted { "—" } },
        Some(t) => html! { time datetime=(t) { (t) } },
    }
}

/// A timestamptz value as RFC 3339 (what `time` wants).
pub fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// JSON pretty-printed, for a <pre> (escaped by maud like every value).
pub fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

pub fn html_response(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

pub fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The static assets, embedded.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>) -> Response {
    let (body, ctype): (&'static str, &'static str) = match name.as_str() {
        "style.css" => (
            include_str!("../assets/style.css"),
            "text/css; charset=utf-8",
        ),
        "app.js" => (
            include_str!("../assets/app.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every response: a strict CSP (no inline script or style), no framing,
/// no sniffing.
pub async fn security_headers(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// The text of [`AppError::Invalid`]: its catalogue message, a field (`what`) named by its label.
pub fn invalid_text(l: Lang, id: &str, args: &[(&'static str, String)]) -> String {
    let args: Vec<(&str, fluent_bundle::FluentValue)> = args
        .iter()
        .map(|(k, v)| {
            let v = if *k == "what" {
                l.t(&format!("field-{v}"))
            } else {
                v.clone()
            };
            (*k, v.into())
        })
        .collect();
    l.ta(id, &args)
}
