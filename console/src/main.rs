//! event-bus-console: the Event Monitor for event_bus, a web console served over HTTP that talks to
//! the database through the extension's SQL API, signed in as the operator's own PostgreSQL role.

mod api;
mod auth;
mod db;
mod error;
mod i18n;
mod jwks;
mod live;
mod pages;
mod web;

use axum::routing::{get, post};
use axum::Router;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "event-bus-console",
    version,
    about = "The Event Monitor: a web console for event_bus."
)]
struct Args {
    /// The database, as the console's own role (e.g. postgres://event_bus_console:...@127.0.0.1/app).
    /// That role must be a member of each role that signs in (GRANT alice TO event_bus_console),
    /// as PostgREST's authenticator is.
    #[arg(long, env = "EVENT_BUS_CONSOLE_DATABASE_URL")]
    database_url: String,
    /// PEM file of the CA(s) that signed the database server's certificate (besides the public
    /// web roots). Implies TLS; `sslmode=require` in the URL asks for TLS with the public roots only.
    #[arg(long, env = "EVENT_BUS_CONSOLE_DATABASE_CA_FILE")]
    database_ca_file: Option<std::path::PathBuf>,
    /// Address to serve on.
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Key that signs session cookies (at least 32 characters). Without it a random key is made at
    /// start, and sessions end when the console restarts.
    #[arg(long, env = "EVENT_BUS_CONSOLE_SESSION_KEY", hide_env_values = true)]
    session_key: Option<String>,
    /// Minutes a session may sit idle before signing in again.
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_SESSION_IDLE_MINUTES",
        default_value_t = 30
    )]
    session_idle_minutes: u64,
    /// Accept HS256 JWTs signed with this secret (Authorization: Bearer, or the ebc_jwt cookie):
    /// the `role` claim is the role to act as, the claims go to request.jwt.claims.
    #[arg(long, env = "EVENT_BUS_CONSOLE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Accept RS256 and ES256 JWTs signed by a key of this JSON Web Key Set: a file, or an https://
    /// URL (e.g. https://<project>.supabase.co/auth/v1/.well-known/jwks.json). Read at start (the
    /// console does not start without it), again every --jwks-refresh-seconds, and when a token names
    /// a key id the set lacks (at most every 10 s). The key is chosen by the token's `kid`.
    #[arg(long, env = "EVENT_BUS_CONSOLE_JWKS")]
    jwks: Option<String>,
    /// Seconds between reads of the JWKS.
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_JWKS_REFRESH_SECONDS",
        default_value_t = 300
    )]
    jwks_refresh_seconds: u64,
    /// Accept only JWTs whose `aud` is (or lists) this audience (Supabase: authenticated).
    #[arg(long, env = "EVENT_BUS_CONSOLE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Accept only JWTs whose `iss` is this issuer (Supabase: https://<project>.supabase.co/auth/v1).
    #[arg(long, env = "EVENT_BUS_CONSOLE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Origins (scheme://host[:port], comma-separated) whose pages may call the JSON API with a bearer
    /// token from the browser (CORS). Cookies are never accepted cross-origin.
    #[arg(long, env = "EVENT_BUS_CONSOLE_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Serve GET /metrics (event_bus.metrics()) to requests bearing this token.
    #[arg(long, env = "EVENT_BUS_CONSOLE_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// The role /metrics reads as (SET LOCAL ROLE; the console's role must be a member of it):
    /// event_bus.metrics() is for event_bus_admin members. Without it, the console's own role.
    #[arg(long, env = "EVENT_BUS_CONSOLE_METRICS_ROLE")]
    metrics_role: Option<String>,
    /// Connections in the pool.
    #[arg(long, env = "EVENT_BUS_CONSOLE_POOL_SIZE", default_value_t = 8)]
    pool_size: usize,
    /// Longest a page's queries may run (milliseconds).
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_STATEMENT_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    statement_timeout_ms: u64,
    /// Mark cookies Secure (when a proxy serves the console over HTTPS).
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_SECURE_COOKIES",
        default_value_t = false
    )]
    secure_cookies: bool,
    /// Seconds the overview's counts for a window (event_stats, delivery_timeline) are reused for
    /// the same role and tenant (0: counted on every view).
    #[arg(
        long,
        env = "EVENT_BUS_CONSOLE_STATS_CACHE_SECONDS",
        default_value_t = 10
    )]
    stats_cache_seconds: u64,
    /// Failed sign-ins allowed per client address and per user name per minute.
    #[arg(long, env = "EVENT_BUS_CONSOLE_LOGIN_ATTEMPTS", default_value_t = 5)]
    login_attempts_per_minute: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("event-bus-console: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let key = match &args.session_key {
        Some(k) if k.len() < 32 => {
            return Err("--session-key must be at least 32 characters".into())
        }
        Some(k) => k.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    if let Some(s) = &args.jwt_secret {
        if s.len() < 32 {
            return Err("--jwt-secret must be at least 32 characters".into());
        }
    }
    if matches!(&args.metrics_token, Some(t) if t.len() < 16) {
        return Err("--metrics-token must be at least 16 characters".into());
    }
    let db = db::Db::new(
        &args.database_url,
        args.pool_size.max(2),
        args.statement_timeout_ms,
        args.database_ca_file.as_deref(),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let keys = match &args.jwks {
            Some(src) => {
                let set = jwks::KeySet::load(jwks::Source::parse(src)).await?;
                set.spawn_refresher(Duration::from_secs(args.jwks_refresh_seconds.max(10)));
                Some(set)
            }
            None => None,
        };
        let jwt = (args.jwt_secret.is_some() || keys.is_some()).then(|| auth::JwtConfig {
            secret: args.jwt_secret.clone().map(String::into_bytes),
            keys,
            audience: args.jwt_audience.clone(),
            issuer: args.jwt_issuer.clone(),
        });
        let live = live::Live::new();
        live.spawn_listener(db.config.clone(), db.tls.clone());
        let app = Arc::new(web::App {
            db,
            signer: auth::Signer::new(
                key,
                Duration::from_secs(args.session_idle_minutes.max(1) * 60),
            ),
            jwt,
            cors_origins: args
                .cors_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
            metrics_token: args.metrics_token,
            metrics_role: args.metrics_role,
            limiter: auth::LoginLimiter::new(
                args.login_attempts_per_minute.max(1),
                Duration::from_secs(60),
            ),
            live,
            secure_cookies: args.secure_cookies,
            stats_cache: pages::StatsCache::new(Duration::from_secs(args.stats_cache_seconds)),
        });
        let router = router(app);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        eprintln!("event-bus-console: serving http://{}/", args.listen);
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .map_err(|e| format!("server: {e}"))
    })
}

fn router(app: Arc<web::App>) -> Router {
    let (api, _) = api::router();
    // a published event may carry a payload up to event_bus.max_payload_bytes (1 MiB by default)
    // and its metadata: the API's bodies may be larger than the pages' forms
    let api = api.layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES));
    let doc = Arc::new(api::openapi_json());
    Router::new()
        .merge(api)
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        (*doc).clone(),
                    )
                }
            }),
        )
        .route("/api/{*rest}", axum::routing::any(api::no_route))
        .route("/", get(pages::overview))
        .route("/healthz", get(pages::healthz))
        .route("/metrics", get(pages::metrics))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/process-pending", post(pages::process_pending))
        .route("/events", get(pages::events))
        .route("/events/live", get(live::events_live))
        .route("/events/{id}", get(pages::event))
        .route("/events/{id}/retry", post(pages::retry_event))
        .route("/events/{id}/replay", post(pages::replay_event))
        .route("/deliveries/{id}/skip", post(pages::skip_delivery))
        .route("/dead-letters", get(pages::dead_letters))
        .route("/dead-letters/retry", post(pages::retry_dead))
        .route("/subscriptions", get(pages::subscriptions))
        .route("/subscriptions/{id}/reset", post(pages::reset_breaker))
        .route("/subscriptions/{id}/filter", post(pages::set_filter))
        .route("/subscriptions/{id}/{action}", post(pages::set_active))
        .route("/parked", get(pages::parked))
        .route("/assets/{name}", get(web::asset))
        .fallback(pages::not_found)
        .layer(axum::middleware::from_fn(web::security_headers))
        .layer(axum::middleware::from_fn_with_state(app.clone(), api::cors))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app)
}
