//! What a claim hands the loop: the claimed delivery ([`Claimed`]) and the work it needs ([`Job`]),
//! decoded from the job rows every claim and fan-out statement returns ([`JOB_COLUMNS`]).

use super::deliver::Request;
use super::sqlhandler;
use crate::{api, guc};
use std::time::Duration;

/// A uuid as the worker holds it: its 16 bytes, read from and passed to Postgres as `uuid` (and
/// `uuid[]`), never as text.
pub type Id = pgrx::Uuid;

/// The text form of an id (lower-case, hyphenated), for headers, settings and messages.
pub fn id_text(id: &Id) -> String {
    uuid::Uuid::from_bytes(**id).hyphenated().to_string()
}

/// One claimed delivery, in flight.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: Id,
    pub event_id: Id,
    pub subscription_id: Id,
    pub tenant_id: Id,
    pub attempt: i32,
    /// Attempts made before the last manual retry or replay: the budget counts from here.
    pub attempt_offset: i32,
    pub max_retries: i32,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    /// Part of an ordered subscription's entity stream: finishing it may let the next one run.
    pub ordered: bool,
    /// Its subscription names an idempotency key: the claim's gate decides whether it runs, and
    /// its outcome settles the key.
    pub idempotent: bool,
    /// Its event's payload and metadata, uncompressed, plus [`JOB_OVERHEAD_BYTES`]: what it holds
    /// of the worker's memory (event_bus.batch_memory).
    pub bytes: i64,
}

/// The columns every job row has, over aliases d (delivery), e (event), s (subscription). The
/// CloudEvents body is built for HTTP jobs only (a SQL handler gets the event row itself).
/// $2 = default timeout, $3 = lease, $4/$5 = default backoff base/cap.
pub const JOB_COLUMNS: &str =
    "d.id AS delivery_id, d.event_id AS event_id, d.subscription_id AS subscription_id,
       d.tenant_id AS tenant_id, d.attempts AS attempt,
       coalesce(s.max_retries, e.max_retries) AS max_retries,
       coalesce(s.backoff_base_ms, $4)::bigint AS backoff_base_ms,
       coalesce(s.backoff_max_ms, $5)::bigint AS backoff_max_ms,
       s.handler_kind AS handler_kind, s.handler_url AS handler_url, s.handler_function AS handler_function,
       s.headers::text AS headers, s.secret AS secret, coalesce(s.timeout_ms, $2) AS timeout_ms,
       s.run_as::text AS run_as,
       CASE WHEN s.handler_kind <> 'sql' THEN json_build_object(
           'specversion', '1.0',
           'id', e.id,
           'source', '/event_bus/' || e.source_module,
           'type', e.event_type,
           'time', e.created_at,
           'subject', CASE WHEN e.entity_id IS NOT NULL
                           THEN coalesce(e.entity_type || '/', '') || e.entity_id END,
           'datacontenttype', 'application/json',
           'tenantid', e.tenant_id,
           'sourcemodule', e.source_module,
           'entitytype', e.entity_type,
           'entityid', e.entity_id,
           'deliveryid', d.id,
           'metadata', e.metadata,
           'data', e.payload)::text END AS body,
       d.attempt_offset AS attempt_offset, d.ordering_key IS NOT NULL AS ordered,
       s.idempotency_key IS NOT NULL AS idempotent,
       event_bus._event_bytes(e.payload, e.metadata) AS bytes";

/// Where each of [`JOB_COLUMNS`] is in one statement's result: looked up by name once per result,
/// then read by position for every row.
pub struct JobColumns {
    delivery_id: usize,
    event_id: usize,
    subscription_id: usize,
    tenant_id: usize,
    attempt: usize,
    max_retries: usize,
    backoff_base_ms: usize,
    backoff_max_ms: usize,
    handler_kind: usize,
    handler_url: usize,
    handler_function: usize,
    headers: usize,
    secret: usize,
    timeout_ms: usize,
    run_as: usize,
    body: usize,
    attempt_offset: usize,
    ordered: usize,
    idempotent: usize,
    bytes: usize,
}

impl JobColumns {
    pub fn of(table: &pgrx::spi::SpiTupleTable) -> Result<JobColumns, pgrx::spi::Error> {
        let at = |name: &str| table.column_ordinal(name);
        Ok(JobColumns {
            delivery_id: at("delivery_id")?,
            event_id: at("event_id")?,
            subscription_id: at("subscription_id")?,
            tenant_id: at("tenant_id")?,
            attempt: at("attempt")?,
            max_retries: at("max_retries")?,
            backoff_base_ms: at("backoff_base_ms")?,
            backoff_max_ms: at("backoff_max_ms")?,
            handler_kind: at("handler_kind")?,
            handler_url: at("handler_url")?,
            handler_function: at("handler_function")?,
            headers: at("headers")?,
            secret: at("secret")?,
            timeout_ms: at("timeout_ms")?,
            run_as: at("run_as")?,
            body: at("body")?,
            attempt_offset: at("attempt_offset")?,
            ordered: at("ordered")?,
            idempotent: at("idempotent")?,
            bytes: at("bytes")?,
        })
    }

    /// Does this row hold a job? (A fan-out that created none returns one row of NULL jobs.)
    pub fn has_job(&self, row: &pgrx::spi::SpiHeapTupleData) -> Result<bool, pgrx::spi::Error> {
        Ok(row.get::<Id>(self.delivery_id)?.is_some())
    }
}

/// What a job holds besides its event's data, counted against event_bus.batch_memory with it: the
/// request's envelope and headers, the job's ids, the sender's task. Without it a backlog of small
/// events was bounded only by its payload bytes — some 100,000 jobs held at once in 16MB — and the
/// worker kept their bookkeeping's high-water mark afterwards (RssAnon 37 MB after a 900,000-event
/// backlog, 12 MB after 100,000); with it, at most a few thousand small jobs are held.
pub const JOB_OVERHEAD_BYTES: i64 = 2048;

/// Settings read once per claim.
pub struct ClaimSettings {
    default_timeout: i32,
    lease_ms: i32,
    base: i32,
    cap: i32,
    max_response: usize,
    follow: bool,
    edge_base: Option<String>,
    /// event_bus.allowed_networks, or why it is invalid (then every HTTP attempt fails)
    networks: Result<crate::netpolicy::Networks, String>,
    /// A subscription's share of the sender (event_bus.max_in_flight_per_subscription).
    pub per_subscription: usize,
    /// event_bus.notify: the fan-out sends LISTEN module_event its notifications.
    notify: bool,
    /// Event bytes a claim may take ($8): event_bus.batch_memory less what the worker holds.
    pub bytes: std::cell::Cell<i64>,
}

impl ClaimSettings {
    pub fn read() -> ClaimSettings {
        ClaimSettings {
            default_timeout: guc::DEFAULT_TIMEOUT_MS.get(),
            lease_ms: guc::LEASE_MS.get(),
            base: guc::BACKOFF_BASE_MS.get(),
            cap: guc::BACKOFF_MAX_MS.get(),
            max_response: guc::MAX_RESPONSE_BYTES.get().max(0) as usize,
            follow: guc::FOLLOW_REDIRECTS.get(),
            edge_base: guc::EDGE_FUNCTION_BASE_URL
                .get()
                .and_then(|c| c.into_string().ok())
                .filter(|s| !s.is_empty()),
            networks: allowed_networks(),
            per_subscription: guc::MAX_IN_FLIGHT_PER_SUBSCRIPTION.get().max(1) as usize,
            notify: guc::NOTIFY.get(),
            bytes: std::cell::Cell::new(batch_memory()),
        }
    }

    /// Take `jobs`' event bytes off what the next statement of the round may claim.
    pub fn spend(&self, jobs: &[Job]) {
        let used: i64 = jobs.iter().map(|j| j.claimed().bytes).sum();
        self.bytes.set(self.bytes.get() - used);
    }

    /// How long a claimed job may wait for its turn in this worker: half its lease, so it goes
    /// back to the table before another worker could take it.
    pub fn wait_limit(&self) -> Duration {
        Duration::from_millis((self.lease_ms.max(100) / 2) as u64)
    }

    /// The types of `args`.
    pub const ARG_TYPES: [pgrx::pg_sys::Oid; 8] = [
        pgrx::pg_sys::INT8OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::UUIDARRAYOID,
        pgrx::pg_sys::BOOLOID,
        pgrx::pg_sys::INT8OID,
    ];

    /// $1 limit, $2-$5 as JOB_COLUMNS says, $6 the subscriptions not to claim for (uuid[]),
    /// $7 whether the fan-out notifies, $8 the event bytes it may take (at least one event).
    pub fn args(&self, limit: i64, full: &[Id]) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        vec![
            limit.into(),
            self.default_timeout.into(),
            self.lease_ms.into(),
            self.base.into(),
            self.cap.into(),
            full.to_vec().into(),
            self.notify.into(),
            self.bytes.get().max(1).into(),
        ]
    }
}

/// event_bus.batch_memory in bytes.
pub fn batch_memory() -> i64 {
    guc::BATCH_MEMORY.get().max(1) as i64 * 1024
}

pub enum Job {
    Http(Claimed, Request),
    Sql(Claimed, sqlhandler::Call),
    /// Could not even be attempted (bad URL, no base URL): recorded as a failed attempt.
    Failed(Claimed, String),
    /// Its idempotency key was handled by this delivery (id) within the window: recorded as a
    /// success without calling the handler.
    Duplicate(Claimed, String),
}

impl Job {
    pub fn claimed(&self) -> &Claimed {
        match self {
            Job::Http(c, _) | Job::Sql(c, _) | Job::Failed(c, _) | Job::Duplicate(c, _) => c,
        }
    }
}

/// Parse event_bus.allowed_networks and hand it to the HTTP threads.
fn allowed_networks() -> Result<crate::netpolicy::Networks, String> {
    let setting = guc::ALLOWED_NETWORKS
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default();
    let parsed = crate::netpolicy::Networks::parse(&setting).map_err(|e| {
        format!("event_bus.allowed_networks is invalid ({e}); no request is sent until it is fixed")
    });
    if let Ok(n) = &parsed {
        super::deliver::set_allowed_networks(n);
    }
    parsed
}

/// A NOT NULL uuid column of a job row.
fn id(row: &pgrx::spi::SpiHeapTupleData, column: usize) -> Result<Id, pgrx::spi::Error> {
    Ok(row
        .get::<Id>(column)?
        .unwrap_or_else(|| Id::from_bytes([0; 16])))
}

/// One job row (JOB_COLUMNS, located by `c`) as an HTTP request, a SQL call, or a failure that needs no attempt.
pub fn row_to_job(
    row: &pgrx::spi::SpiHeapTupleData,
    c: &JobColumns,
    st: &ClaimSettings,
) -> Result<Job, pgrx::spi::Error> {
    {
        let claimed = Claimed {
            delivery_id: id(row, c.delivery_id)?,
            event_id: id(row, c.event_id)?,
            subscription_id: id(row, c.subscription_id)?,
            tenant_id: id(row, c.tenant_id)?,
            attempt: row.get::<i32>(c.attempt)?.unwrap_or(1),
            attempt_offset: row.get::<i32>(c.attempt_offset)?.unwrap_or(0),
            max_retries: row.get::<i32>(c.max_retries)?.unwrap_or(3),
            backoff_base_ms: row.get::<i64>(c.backoff_base_ms)?.unwrap_or(st.base as i64),
            backoff_max_ms: row.get::<i64>(c.backoff_max_ms)?.unwrap_or(st.cap as i64),
            ordered: row.get::<bool>(c.ordered)?.unwrap_or(false),
            idempotent: row.get::<bool>(c.idempotent)?.unwrap_or(false),
            bytes: row.get::<i64>(c.bytes)?.unwrap_or(0) + JOB_OVERHEAD_BYTES,
        };
        let kind = row.get::<String>(c.handler_kind)?.unwrap_or_default();
        let url = row.get::<String>(c.handler_url)?;
        let function = row.get::<String>(c.handler_function)?;
        let headers_text = row.get::<String>(c.headers)?.unwrap_or_else(|| "{}".into());
        let secret = row.get::<String>(c.secret)?;
        let timeout_ms = row.get::<i32>(c.timeout_ms)?.unwrap_or(st.default_timeout);
        let run_as = row.get::<String>(c.run_as)?;
        let body = row.get::<String>(c.body)?.unwrap_or_default();

        let job = match kind.as_str() {
            "sql" => Job::Sql(
                claimed,
                sqlhandler::Call {
                    function: function.unwrap_or_default(),
                    run_as,
                    timeout_ms,
                },
            ),
            _ => {
                let target = if kind == "edge_function" {
                    match (&st.edge_base, &function) {
                        (Some(b), Some(f)) => Ok(format!("{}/{}", b.trim_end_matches('/'), f)),
                        _ => Err(
                            "event_bus.edge_function_base_url is not set, so the Edge Function \
                                  cannot be resolved; set it and reload"
                                .to_string(),
                        ),
                    }
                } else {
                    url.ok_or_else(|| "subscription has no handler_url".to_string())
                };
                let target = target.and_then(|u| {
                    if kind == "amqp" || kind == "nats" {
                        // a row written past subscribe(): its password never goes into the error
                        crate::validate::parse_broker_url(&u)
                            .map(|_| u.clone())
                            .map_err(|e| {
                                format!("invalid broker URL {}: {e}", crate::validate::mask_url(&u))
                            })
                    } else {
                        api::validate_url(&u)
                            .map(|_| u)
                            .map_err(|e| format!("invalid URL: {e}"))
                    }
                });
                let key = match secret.as_deref().map(api::secret_key) {
                    Some(Err(e)) => Err(format!("invalid signing secret: {e}")),
                    Some(Ok(k)) => Ok(Some(k)),
                    None => Ok(None),
                };
                // headers written past subscribe() (a direct UPDATE) are checked again: a bad one
                // fails the attempt rather than sending without, say, its Authorization header
                let headers: Result<Vec<(String, String)>, String> =
                    serde_json::from_str::<serde_json::Value>(&headers_text)
                        .map_err(|e| e.to_string())
                        .and_then(|v| api::validate_headers(&v).map(|_| v))
                        .map(|v| {
                            v.as_object()
                                .map(|o| {
                                    o.iter()
                                        .filter_map(|(k, v)| {
                                            v.as_str().map(|s| (k.clone(), s.to_string()))
                                        })
                                        .collect()
                                })
                                .unwrap_or_default()
                        })
                        .map_err(|e| format!("invalid subscription headers: {e}"));
                let target = match &st.networks {
                    Ok(_) => target,
                    Err(e) => Err(e.clone()),
                };
                match (target, key, headers) {
                    (Ok(url), Ok(secret_key), Ok(headers)) => Job::Http(
                        claimed.clone(),
                        Request {
                            token: 0,
                            webhook_id: id_text(&claimed.delivery_id),
                            url,
                            body,
                            headers,
                            secret_key,
                            timeout: Duration::from_millis(timeout_ms.max(1) as u64),
                            max_response_bytes: st.max_response,
                            follow_redirects: st.follow,
                            group: id_text(&claimed.subscription_id),
                            per_group: st.per_subscription,
                            wait_limit: st.wait_limit(),
                        },
                    ),
                    (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Job::Failed(claimed, e),
                }
            }
        };
        Ok(job)
    }
}
