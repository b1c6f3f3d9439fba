//! Sign-in (a database role and its password, or a JWT) and sign-out.

use super::*;

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
