//! What can go wrong in a request, and how each is shown: a page with a clear message and the
//! right status, never a stack trace.

use axum::http::StatusCode;

/// What the database said: its SQLSTATE, message (without the `event_bus: ` prefix) and hint.
#[derive(Debug, Clone)]
pub struct PgDetail {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl PgDetail {
    /// The message and the hint in one sentence, as the pages show them.
    pub fn text(&self) -> String {
        match &self.hint {
            Some(h) => format!("{}. {h}", self.message),
            None => self.message.clone(),
        }
    }
}

impl std::fmt::Display for PgDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

#[derive(Debug)]
pub enum AppError {
    /// no (valid) session: go to the sign-in page
    SignIn { expired: bool },
    /// the role may not use the console (not an event_bus role, or the console cannot act as it)
    NotAllowed,
    /// the database refused for want of privilege (42501), with its message (logged, not shown)
    Forbidden(PgDetail),
    /// the CSRF token of a POST did not match
    Csrf,
    /// P0002 or an unknown id
    NotFound,
    /// the user's input, as the database judged it (22xxx): its message for the page
    BadInput(PgDetail),
    /// the user's input, as the console judged it: a message of the catalogue (`id`, with `args`; an
    /// argument named `what` is a field, shown by its label `field-<what>`)
    Invalid {
        id: &'static str,
        args: Vec<(&'static str, String)>,
    },
    /// the database is down or unreachable
    Unavailable(String),
    /// the database refused for another reason (message and hint, already for a user)
    Db(PgDetail),
    /// the page does not exist
    NoPage,
}

impl AppError {
    /// Bad input the console found, in the page's language (see [`AppError::Invalid`]).
    pub fn invalid(id: &'static str, args: &[(&'static str, &str)]) -> AppError {
        AppError::Invalid {
            id,
            args: args.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        }
    }

    pub fn from_pg(e: tokio_postgres::Error) -> AppError {
        if let Some(db) = e.as_db_error() {
            let d = PgDetail {
                code: db.code().code().to_string(),
                message: db.message().trim_start_matches("event_bus: ").to_string(),
                hint: db.hint().map(str::to_string),
            };
            return match d.code.as_str() {
                "42501" => AppError::Forbidden(d),
                "P0002" => AppError::NotFound,
                // data exceptions, a payload its event type's contract refuses (23514) or over the
                // size limit (54000): the input was wrong
                c if c.starts_with("22") || c == "23514" || c == "54000" => AppError::BadInput(d),
                // the server is going away, or it cannot take connections now
                c if c.starts_with("57P") || c.starts_with("08") || c == "53300" => {
                    AppError::Unavailable(d.text())
                }
                _ => AppError::Db(d),
            };
        }
        AppError::Unavailable(e.to_string())
    }

    pub fn from_pool(e: deadpool_postgres::PoolError) -> AppError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => AppError::from_pg(e),
            other => AppError::Unavailable(other.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::SignIn { .. } => StatusCode::SEE_OTHER,
            AppError::NotAllowed | AppError::Forbidden(_) | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound | AppError::NoPage => StatusCode::NOT_FOUND,
            AppError::BadInput(_) | AppError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Db(d) if d.code == "55000" || d.code == "55P03" || d.code == "40001" => {
                StatusCode::CONFLICT
            }
            AppError::Db(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}
