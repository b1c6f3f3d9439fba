//! The database side: a pool of connections as the console's own role (the authenticator), and
//! per request one transaction acting as the signed-in role, as PostgREST does: that role's
//! settings (its tenant, for row-level security), `request.jwt.claims`, then `SET LOCAL ROLE`.

use crate::error::AppError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::time::Duration;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Config, NoTls, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;
use uuid::Uuid;

/// What the signed-in role may do, as the database's role memberships say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Reader,
    Operator,
    Admin,
}

/// The role a request acts as.
#[derive(Clone, Debug)]
pub struct Identity {
    pub role: String,
    /// the JWT's claims (bearer mode), for `request.jwt.claims`
    pub claims: Option<String>,
}

/// The role a request acts as, after the database applied it.
#[derive(Clone, Debug)]
pub struct Who {
    pub role: String,
    pub level: Level,
    pub tenant: Option<Uuid>,
}

pub struct Db {
    pub pool: Pool,
    pub config: Config,
    pub statement_timeout_ms: u64,
    /// TLS to the database, when the URL asks for it (sslmode=require) or a CA file is given
    pub tls: Option<MakeRustlsConnect>,
}

/// A TLS connector that trusts the public web roots and the CA certificates in `ca_file` (PEM).
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert =
                cert.map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl Db {
    /// With `sslmode=require` in the URL (or a CA file) the connections use TLS and check the
    /// server's certificate and name; otherwise they are plain (sslmode=prefer is taken as plain).
    pub fn new(
        url: &str,
        max: usize,
        statement_timeout_ms: u64,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Db, String> {
        let mut config: Config = url
            .parse()
            .map_err(|e| format!("the database URL does not parse: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("event-bus-console");
        }
        config.connect_timeout(Duration::from_secs(5));
        let tls = if config.get_ssl_mode() == SslMode::Require || ca_file.is_some() {
            config.ssl_mode(SslMode::Require);
            Some(tls_connector(ca_file)?)
        } else {
            None
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(max)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| format!("cannot build the connection pool: {e}"))?;
        Ok(Db {
            pool,
            config,
            statement_timeout_ms,
            tls,
        })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, AppError> {
        self.pool.get().await.map_err(AppError::from_pool)
    }

    /// Check a user name and password with PostgreSQL itself: open (and close) a connection as that
    /// user to the console's database.
    pub async fn check_password(&self, user: &str, password: &str) -> Result<bool, AppError> {
        let mut cfg = self.config.clone();
        cfg.user(user)
            .password(password)
            .application_name("event-bus-console sign-in");
        let connected = match &self.tls {
            Some(t) => cfg.connect(t.clone()).await.map(|(client, conn)| {
                drop(client);
                tokio::spawn(conn);
            }),
            None => cfg.connect(NoTls).await.map(|(client, conn)| {
                drop(client);
                tokio::spawn(conn);
            }),
        };
        match connected {
            Ok(()) => Ok(true),
            Err(e) => match e.code().map(|c| c.code()) {
                // invalid_password, invalid_authorization_specification (no such role, no
                // pg_hba entry, role cannot log in)
                Some("28P01") | Some("28000") => Ok(false),
                _ => Err(AppError::from_pg(e)),
            },
        }
    }

    /// May the console's role act as `role`, and is `role` an event_bus role? Returns its level.
    pub async fn can_act_as(&self, role: &str) -> Result<Option<Level>, AppError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER'),
                        pg_catalog.pg_has_role(r.oid, 'event_bus_admin', 'USAGE'),
                        pg_catalog.pg_has_role(r.oid, 'event_bus_operator', 'USAGE'),
                        pg_catalog.pg_has_role(r.oid, 'event_bus_reader', 'USAGE')
                   FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[&role],
            )
            .await
            .map_err(AppError::from_pg)?;
        Ok(row.and_then(|r| {
            if !r.get::<_, bool>(0) {
                return None;
            }
            level_of(r.get(1), r.get(2), r.get(3))
        }))
    }
}

fn level_of(admin: bool, operator: bool, reader: bool) -> Option<Level> {
    if admin {
        Some(Level::Admin)
    } else if operator {
        Some(Level::Operator)
    } else if reader {
        Some(Level::Reader)
    } else {
        None
    }
}

/// Make the transaction act as the identity's role. The role's own settings (ALTER ROLE ... SET,
/// per database and for all) are applied first, as a login of that role would have them: custom
/// (dotted) settings only, which is where a tenant lives (e.g. app.tenant_id).
pub async fn act_as(
    tx: &Transaction<'_>,
    id: &Identity,
    statement_timeout_ms: u64,
) -> Result<Who, AppError> {
    let timeout = format!("{statement_timeout_ms}ms");
    tx.query(
        "SELECT pg_catalog.set_config('statement_timeout', $3, true),
                pg_catalog.set_config('request.jwt.claims', coalesce($2, ''), true),
                (SELECT count(pg_catalog.set_config(x.k, x.v, true))
                   FROM (SELECT split_part(c, '=', 1) AS k, substr(c, strpos(c, '=') + 1) AS v
                           FROM pg_catalog.pg_db_role_setting s, unnest(s.setconfig) c
                          WHERE s.setrole = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)
                            AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database
                                                       WHERE datname = current_database()))
                          ORDER BY s.setdatabase) x
                  WHERE x.k LIKE '%.%' AND x.k NOT LIKE 'event\\_bus.%')",
        &[&id.role, &id.claims, &timeout],
    )
    .await
    .map_err(AppError::from_pg)?;
    tx.query(
        "SELECT pg_catalog.set_config('role', $1, true)",
        &[&id.role],
    )
    .await
    .map_err(|e| match e.code().map(|c| c.code()) {
        Some("22023") | Some("42501") | Some("42704") => AppError::NotAllowed,
        _ => AppError::from_pg(e),
    })?;
    let row = tx
        .query_one(
            "SELECT pg_catalog.pg_has_role('event_bus_admin', 'USAGE'),
                    pg_catalog.pg_has_role('event_bus_operator', 'USAGE'),
                    pg_catalog.pg_has_role('event_bus_reader', 'USAGE'),
                    event_bus.current_tenant()",
            &[],
        )
        .await
        .map_err(AppError::from_pg)?;
    let level = level_of(row.get(0), row.get(1), row.get(2)).ok_or(AppError::NotAllowed)?;
    Ok(Who {
        role: id.role.clone(),
        level,
        tenant: row.get(3),
    })
}
