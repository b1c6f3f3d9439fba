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
    /// A first attempt without a delivery row: its event is leased in `event_bus._event_leases`
    /// (all of the event's deliveries are plain first attempts), and the record writes the row
    /// once, with the outcome.
    pub rowless: bool,
    /// For a first attempt without a row: how many first attempts its event's lease covers (its
    /// own and its siblings'), so the record knows whether a batch holds them all.
    pub lease_attempts: i32,
    /// Its event's payload and metadata, uncompressed, plus [`JOB_OVERHEAD_BYTES`]: what it holds
    /// of the worker's memory (event_bus.batch_memory).
    pub bytes: i64,
}

/// The columns every job row has, over aliases d (delivery), e (event), s (subscription). The
/// CloudEvents body is built from the event's columns in Rust ([`cloud_event_body`]), for HTTP and
/// broker jobs only (a SQL handler gets the event row itself, so its payload is not read here).
pub const JOB_COLUMNS: &str =
    "d.id AS delivery_id, d.event_id AS event_id, d.subscription_id AS subscription_id,
       d.tenant_id AS tenant_id, d.attempts AS attempt,
       coalesce(s.max_retries, e.max_retries) AS max_retries,
       coalesce(s.backoff_base_ms, $4)::bigint AS backoff_base_ms,
       coalesce(s.backoff_max_ms, $5)::bigint AS backoff_max_ms,
       s.handler_kind AS handler_kind, s.handler_url AS handler_url, s.handler_function AS handler_function,
       s.headers::text AS headers, s.secret AS secret, coalesce(s.timeout_ms, $2) AS timeout_ms,
       s.run_as::text AS run_as, s.run_as_set_by::text AS run_as_set_by,
       e.source_module AS source_module, e.event_type AS event_type, e.created_at AS created_at,
       e.entity_type AS entity_type, e.entity_id AS entity_id,
       CASE WHEN s.handler_kind <> 'sql' THEN e.metadata::text END AS metadata,
       CASE WHEN s.handler_kind <> 'sql' THEN e.payload::text END AS payload,
       d.attempt_offset AS attempt_offset, d.ordering_key IS NOT NULL AS ordered,
       s.idempotency_key IS NOT NULL AS idempotent,
       event_bus._event_bytes(e.payload, e.metadata) AS bytes";

/// An event's columns, as a job row holds them: what its CloudEvents body is made of.
pub struct EventColumns<'a> {
    pub event_id: &'a Id,
    pub delivery_id: &'a Id,
    pub tenant_id: &'a Id,
    pub source_module: &'a str,
    pub event_type: &'a str,
    /// `created_at` as PostgreSQL writes a timestamptz into JSON (see [`json_timestamptz`])
    pub time: &'a str,
    pub entity_type: Option<&'a str>,
    pub entity_id: Option<&'a str>,
    /// `metadata` and `payload` as jsonb's text output
    pub metadata: &'a str,
    pub payload: &'a str,
}

/// The CloudEvents 1.0 structured-mode body of a delivery: byte for byte what
/// `json_build_object('specversion', '1.0', 'id', e.id, 'source', '/event_bus/' || e.source_module,
/// 'type', ..., 'metadata', e.metadata, 'data', e.payload)::text` gives (its separators, its string
/// escapes, `null` for what is missing), without its per-row cost in the claim: building it in
/// SQL was 9-12 µs per event, reading the columns 3-4 (a `#[pg_test]` compares the two).
pub fn cloud_event_body(e: &EventColumns) -> String {
    let mut b = String::with_capacity(e.payload.len() + e.metadata.len() + 512);
    // the keys are constants that need no escaping
    let mut first = true;
    let mut key = |b: &mut String, k: &str| {
        b.push_str(if first { "{\"" } else { ", \"" });
        first = false;
        b.push_str(k);
        b.push_str("\" : ");
    };
    let text = |b: &mut String, v: Option<&str>| match v {
        Some(v) => {
            b.push('"');
            escape_json_into(b, v);
            b.push('"');
        }
        None => b.push_str("null"),
    };
    key(&mut b, "specversion");
    b.push_str("\"1.0\"");
    key(&mut b, "id");
    text(&mut b, Some(&id_text(e.event_id)));
    key(&mut b, "source");
    b.push_str("\"/event_bus/");
    escape_json_into(&mut b, e.source_module);
    b.push('"');
    key(&mut b, "type");
    text(&mut b, Some(e.event_type));
    key(&mut b, "time");
    b.push('"');
    b.push_str(e.time);
    b.push('"');
    key(&mut b, "subject");
    match e.entity_id {
        Some(id) => {
            b.push('"');
            if let Some(t) = e.entity_type {
                escape_json_into(&mut b, t);
                b.push('/');
            }
            escape_json_into(&mut b, id);
            b.push('"');
        }
        None => b.push_str("null"),
    }
    key(&mut b, "datacontenttype");
    b.push_str("\"application/json\"");
    key(&mut b, "tenantid");
    text(&mut b, Some(&id_text(e.tenant_id)));
    key(&mut b, "sourcemodule");
    text(&mut b, Some(e.source_module));
    key(&mut b, "entitytype");
    text(&mut b, e.entity_type);
    key(&mut b, "entityid");
    text(&mut b, e.entity_id);
    key(&mut b, "deliveryid");
    text(&mut b, Some(&id_text(e.delivery_id)));
    key(&mut b, "metadata");
    b.push_str(e.metadata);
    key(&mut b, "data");
    b.push_str(e.payload);
    b.push('}');
    b
}

/// The inside of a JSON string as PostgreSQL's escape_json writes it: `"`, `\\`, \b \f \n \r \t by
/// name, other control characters as \u00XX (lower-case hex), everything else as it is.
fn escape_json_into(b: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => b.push_str("\\\""),
            '\\' => b.push_str("\\\\"),
            '\u{08}' => b.push_str("\\b"),
            '\u{0c}' => b.push_str("\\f"),
            '\n' => b.push_str("\\n"),
            '\r' => b.push_str("\\r"),
            '\t' => b.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write;
                let _ = write!(b, "\\u{:04x}", c as u32);
            }
            c => b.push(c),
        }
    }
}

/// A timestamptz as PostgreSQL writes it into JSON (ISO 8601 in the session's time zone, e.g.
/// `2026-12-01T21:45:55.987654+00:00`), by PostgreSQL's own encoder.
fn json_timestamptz(ts: pgrx::datum::TimestampWithTimeZone) -> String {
    use pgrx::IntoDatum;
    let Some(datum) = ts.into_datum() else {
        return String::new();
    };
    unsafe {
        let p = pgrx::pg_sys::JsonEncodeDateTime(
            std::ptr::null_mut(),
            datum,
            pgrx::pg_sys::TIMESTAMPTZOID,
            std::ptr::null(),
        );
        let s = std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned();
        pgrx::pg_sys::pfree(p.cast());
        s
    }
}

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
    run_as_set_by: usize,
    source_module: usize,
    event_type: usize,
    created_at: usize,
    entity_type: usize,
    entity_id: usize,
    metadata: usize,
    payload: usize,
    attempt_offset: usize,
    ordered: usize,
    idempotent: usize,
    /// Only in the fan-out's rows (a claim's deliveries all have rows).
    rowless: Option<usize>,
    lease_attempts: Option<usize>,
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
            run_as_set_by: at("run_as_set_by")?,
            source_module: at("source_module")?,
            event_type: at("event_type")?,
            created_at: at("created_at")?,
            entity_type: at("entity_type")?,
            entity_id: at("entity_id")?,
            metadata: at("metadata")?,
            payload: at("payload")?,
            attempt_offset: at("attempt_offset")?,
            ordered: at("ordered")?,
            idempotent: at("idempotent")?,
            rowless: at("rowless").ok(),
            lease_attempts: at("lease_attempts").ok(),
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
    /// This process's name on the event leases it takes ($9, `event_bus._event_leases.holder`).
    pub holder: Id,
}

/// This process's lease holder id: random, drawn once.
pub fn lease_holder() -> Id {
    static HOLDER: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();
    let bytes = HOLDER.get_or_init(|| {
        let mut rng = crate::worker::statements::record::Rng::seeded();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        // a version-4 uuid
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        b
    });
    pgrx::Uuid::from_bytes(*bytes)
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
            holder: lease_holder(),
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
    pub const ARG_TYPES: [pgrx::pg_sys::Oid; 9] = [
        pgrx::pg_sys::INT8OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::INT4OID,
        pgrx::pg_sys::UUIDARRAYOID,
        pgrx::pg_sys::BOOLOID,
        pgrx::pg_sys::INT8OID,
        pgrx::pg_sys::UUIDOID,
    ];

    /// $1 limit, $2-$5 as JOB_COLUMNS says, $6 the subscriptions not to claim for (uuid[]),
    /// $7 whether the fan-out notifies, $8 the event bytes it may take (at least one event), $9 the
    /// holder of the event leases the fan-out takes.
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
            self.holder.into(),
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
            rowless: match c.rowless {
                Some(at) => row.get::<bool>(at)?.unwrap_or(false),
                None => false,
            },
            lease_attempts: match c.lease_attempts {
                Some(at) => row.get::<i32>(at)?.unwrap_or(0),
                None => 0,
            },
            bytes: row.get::<i64>(c.bytes)?.unwrap_or(0) + JOB_OVERHEAD_BYTES,
        };
        let kind = row.get::<String>(c.handler_kind)?.unwrap_or_default();
        let url = row.get::<String>(c.handler_url)?;
        let function = row.get::<String>(c.handler_function)?;
        let headers_text = row.get::<String>(c.headers)?.unwrap_or_else(|| "{}".into());
        let secret = row.get::<String>(c.secret)?;
        let timeout_ms = row.get::<i32>(c.timeout_ms)?.unwrap_or(st.default_timeout);
        let run_as = row.get::<String>(c.run_as)?;
        let run_as_set_by = row.get::<String>(c.run_as_set_by)?;

        let job = match kind.as_str() {
            "sql" => Job::Sql(
                claimed,
                sqlhandler::Call {
                    function: function.unwrap_or_default(),
                    run_as,
                    run_as_set_by,
                    timeout_ms,
                },
            ),
            _ => {
                let body = cloud_event_body(&EventColumns {
                    event_id: &claimed.event_id,
                    delivery_id: &claimed.delivery_id,
                    tenant_id: &claimed.tenant_id,
                    source_module: &row.get::<String>(c.source_module)?.unwrap_or_default(),
                    event_type: &row.get::<String>(c.event_type)?.unwrap_or_default(),
                    time: &row
                        .get::<pgrx::datum::TimestampWithTimeZone>(c.created_at)?
                        .map(json_timestamptz)
                        .unwrap_or_default(),
                    entity_type: row.get::<String>(c.entity_type)?.as_deref(),
                    entity_id: row.get::<String>(c.entity_id)?.as_deref(),
                    metadata: &row
                        .get::<String>(c.metadata)?
                        .unwrap_or_else(|| "{}".into()),
                    payload: &row.get::<String>(c.payload)?.unwrap_or_else(|| "{}".into()),
                });
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
                    if kind == "amqp" || kind == "nats" || kind == "kafka" {
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
                            units: super::deliver::units_of(&url),
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

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{cloud_event_body, json_timestamptz, EventColumns, Id};
    use pgrx::prelude::*;

    /// The body built in Rust is byte for byte the one PostgreSQL's json_build_object built (what
    /// receivers and their signatures saw before): strings that need escaping, missing entity
    /// fields, nested metadata, a payload with unicode, and a session time zone that is not UTC.
    #[pg_test]
    fn the_cloud_event_body_is_what_json_build_object_gave() {
        Spi::run(
            "SET LOCAL timezone = 'America/St_Johns';
             CREATE TEMP TABLE ev AS
             SELECT gen_random_uuid() AS id, gen_random_uuid() AS delivery_id, gen_random_uuid() AS tenant_id,
                    v.source_module, v.event_type, v.entity_type, v.entity_id,
                    v.metadata::jsonb AS metadata, v.payload::jsonb AS payload,
                    now() - v.n * interval '17 minutes 3.25 seconds' AS created_at
               FROM (VALUES
                 (1, 'accounting', 'invoice.posted', 'invoice', 'INV-1', '{}', '{\"total\": 1500.10, \"lines\": [1, 2]}'),
                 (2, 'sa\"les\\', 'order.créé', NULL, 'O-1', '{\"causation_id\": \"x\", \"depth\": 2}', '{\"note\": \"line\\nbreak \\u00e9 \\u0001\"}'),
                 (3, 'pos', E'a\\tb\\u0001c\\bd\\fe\\rf\\ng', 'doc', NULL, '{\"a\": {\"b\": [null, true]}}', '{}'),
                 (4, 'inventory', 'stock.moved', NULL, NULL, '{}', '{\"emoji\": \"😀\", \"big\": 123456789012345678901234567890}')
               ) v(n, source_module, event_type, entity_type, entity_id, metadata, payload);",
        )
        .unwrap();
        let rows: Vec<(String, String)> = Spi::connect(|c| {
            let mut out = Vec::new();
            for row in c.select(
                "SELECT id, delivery_id, tenant_id, source_module, event_type, created_at, entity_type, entity_id,
                        metadata::text, payload::text,
                        json_build_object(
                            'specversion', '1.0',
                            'id', id,
                            'source', '/event_bus/' || source_module,
                            'type', event_type,
                            'time', created_at,
                            'subject', CASE WHEN entity_id IS NOT NULL
                                            THEN coalesce(entity_type || '/', '') || entity_id END,
                            'datacontenttype', 'application/json',
                            'tenantid', tenant_id,
                            'sourcemodule', source_module,
                            'entitytype', entity_type,
                            'entityid', entity_id,
                            'deliveryid', delivery_id,
                            'metadata', metadata,
                            'data', payload)::text
                   FROM pg_temp.ev ORDER BY created_at DESC",
                None,
                &[],
            )? {
                let id = |i: usize| row.get::<Id>(i).map(|v| v.unwrap());
                let text = |i: usize| row.get::<String>(i);
                let built = cloud_event_body(&EventColumns {
                    event_id: &id(1)?,
                    delivery_id: &id(2)?,
                    tenant_id: &id(3)?,
                    source_module: &text(4)?.unwrap(),
                    event_type: &text(5)?.unwrap(),
                    time: &json_timestamptz(
                        row.get::<pgrx::datum::TimestampWithTimeZone>(6)?.unwrap(),
                    ),
                    entity_type: text(7)?.as_deref(),
                    entity_id: text(8)?.as_deref(),
                    metadata: &text(9)?.unwrap(),
                    payload: &text(10)?.unwrap(),
                });
                out.push((built, text(11)?.unwrap()));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap();
        assert_eq!(rows.len(), 4);
        for (built, sql) in rows {
            assert_eq!(built, sql);
            // and it is JSON a receiver parses
            serde_json::from_str::<serde_json::Value>(&built).unwrap();
        }
    }
}
