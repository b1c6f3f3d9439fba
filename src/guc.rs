//! Every setting in one place, with its default and context.

use event_bus_core::lifecycle;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Largest payload emit accepts, in bytes of its JSON text.
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1_048_576);
/// Whether the worker sends pg_notify('module_event', ...) for the events it fans out.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Base URL that Edge Function names are resolved against.
pub static EDGE_FUNCTION_BASE_URL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// Deliveries claimed per batch.
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
/// Event data (payload + metadata, uncompressed, kB) a worker holds in memory at once.
pub static BATCH_MEMORY: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
/// HTTP requests in flight per worker.
pub static MAX_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(256);
/// HTTP requests in flight per subscription per worker (its share of the worker).
pub static MAX_IN_FLIGHT_PER_SUBSCRIPTION: GucSetting<i32> = GucSetting::<i32>::new(32);
/// Fallback poll interval when nothing wakes the worker.
pub static POLL_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// How long past a request's timeout a claimed delivery stays leased.
pub static LEASE_MS: GucSetting<i32> = GucSetting::<i32>::new(lifecycle::lease::MARGIN_MS_DEFAULT);
/// Request timeout of subscriptions that set none.
pub static DEFAULT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
/// First retry delay ceiling.
pub static BACKOFF_BASE_MS: GucSetting<i32> = GucSetting::<i32>::new(1_000);
/// Retry delay cap.
pub static BACKOFF_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);
/// Response body bytes kept in the attempt log.
pub static MAX_RESPONSE_BYTES: GucSetting<i32> = GucSetting::<i32>::new(4_096);
/// Delivery workers per database.
pub static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Delivery workers over all databases of the cluster (the shared pool).
pub static MAX_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
/// How long a worker with nothing to do stays with its database before it leaves.
pub static WORKER_IDLE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// How long a worker serves one database before it yields to databases waiting for a worker.
pub static WORKER_SLICE_MS: GucSetting<i32> = GucSetting::<i32>::new(500);
/// How often every database gets a visit (retention, breaker probes, events emitted without a wake).
pub static VISIT_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
/// Follow HTTP redirects (up to 5)?
pub static FOLLOW_REDIRECTS: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Longest chain of events emitted by SQL handlers in reply to each other.
pub static MAX_CHAIN_DEPTH: GucSetting<i32> = GucSetting::<i32>::new(16);
/// Consecutive failed attempts that open a subscription's circuit breaker (0 = never).
pub static BREAKER_THRESHOLD: GucSetting<i32> =
    GucSetting::<i32>::new(lifecycle::breaker::THRESHOLD_DEFAULT);
/// How long an open breaker waits before its probe.
pub static BREAKER_COOLDOWN_MS: GucSetting<i32> =
    GucSetting::<i32>::new(lifecycle::breaker::COOLDOWN_MS_DEFAULT);
/// Age after which completed events are deleted ('' or 0 keeps them).
pub static RETENTION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"7 days"));
/// CIDR blocks requests may go to ('' = anywhere).
pub static ALLOWED_NETWORKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Name of the setting holding the session's tenant.
pub static TENANT_SETTING: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"app.tenant_id"));
/// Function returning the session's tenant (overrides TENANT_SETTING).
pub static TENANT_FUNCTION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// Whether emit refuses event types without a registered payload schema.
pub static STRICT_EVENT_TYPES: GucSetting<bool> = GucSetting::<bool>::new(false);
/// Whether the bus emits its own operational events (event_bus.delivery.failed, ...).
pub static OPERATIONAL_EVENTS: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Delivery paused in the whole cluster (emits go on; nothing is sent until it is off again).
pub static PAUSE: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"event_bus.pause",
        c"Pause delivery in the whole cluster: workers claim nothing and leave, and none starts, until it is off.",
        c"Emits and everything else go on; events wait and are delivered once it is off again (a reload). Attempts \
          under way finish and are recorded. process_pending_events() still delivers by hand.",
        &PAUSE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"event_bus.operational_events",
        c"Emit the bus's own events: event_bus.delivery.failed, event_bus.breaker.opened / closed, event_bus.stream.parked.",
        c"Each in the tenant of the event concerned, in the transaction that makes the change, so any subscription \
          (e.g. to event_bus.#) can react. Never about deliveries of event_bus.* events (no loops).",
        &OPERATIONAL_EVENTS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"event_bus.strict_event_types",
        c"Refuse to emit event types that have no schema registered with register_event_type.",
        c"Off (the default): unregistered types stay free-form. On: emit raises SQLSTATE 42704 for them.",
        &STRICT_EVENT_TYPES,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_bus.max_payload_bytes",
        c"Largest event payload emit accepts, in bytes of its JSON text.",
        c"emit_module_event rejects larger payloads with SQLSTATE 54000 and writes nothing.",
        &MAX_PAYLOAD_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"event_bus.notify",
        c"Have the delivery worker send pg_notify('module_event', ...) for every event it fans out.",
        c"Sent from the worker's fan-out transaction, a millisecond after the event's commit, never \
          from the emitting transaction. The delivery worker never depends on it.",
        &NOTIFY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_bus.edge_function_base_url",
        c"Base URL that subscription Edge Function names resolve against.",
        c"For Supabase: https://<project>.supabase.co/functions/v1 . A subscription naming an Edge \
          Function is delivered to <base>/<name>.",
        &EDGE_FUNCTION_BASE_URL,
        GucContext::Sighup,
        GucFlags::default(),
    );

    let ints: [(&'static std::ffi::CStr, &'static std::ffi::CStr, &'static GucSetting<i32>, i32, i32); 14] = [
        (c"event_bus.batch_size", c"Deliveries a worker claims per batch.", &BATCH_SIZE, 1, 10_000),
        (c"event_bus.max_concurrency", c"HTTP requests a worker keeps in flight at once.", &MAX_CONCURRENCY, 1, 10_000),
        (c"event_bus.max_in_flight_per_subscription", c"HTTP requests a worker keeps in flight to one subscription: its share, so a slow or silent endpoint never holds up the others.", &MAX_IN_FLIGHT_PER_SUBSCRIPTION, 1, 10_000),
        (c"event_bus.poll_interval_ms", c"Fallback poll interval; commits wake the worker at once.", &POLL_INTERVAL_MS, 10, 3_600_000),
        (c"event_bus.lease_ms", c"How long past its timeout a claimed delivery stays leased before it is claimed again.", &LEASE_MS, 100, 86_400_000),
        (c"event_bus.default_timeout_ms", c"Request timeout for subscriptions that set none.", &DEFAULT_TIMEOUT_MS, 1, 3_600_000),
        (c"event_bus.backoff_base_ms", c"Retry delay ceiling after the first failure (doubles per attempt, full jitter).", &BACKOFF_BASE_MS, 1, 86_400_000),
        (c"event_bus.backoff_max_ms", c"Cap of the retry delay.", &BACKOFF_MAX_MS, 1, 604_800_000),
        (c"event_bus.max_response_bytes", c"Response body bytes kept in the attempt log (0 keeps none).", &MAX_RESPONSE_BYTES, 0, 1_048_576),
        (c"event_bus.workers", c"Most delivery workers one database may hold at once (a second one starts while the first has a backlog).", &WORKERS, 1, 16),
        (c"event_bus.max_workers", c"Delivery workers over all databases of the cluster: the pool they share (each is a background worker: keep it below max_worker_processes).", &MAX_WORKERS, 1, 1000),
        (c"event_bus.worker_idle_ms", c"How long a worker with nothing to do stays with its database before it leaves (at once when other databases wait for a worker).", &WORKER_IDLE_MS, 0, 3_600_000),
        (c"event_bus.worker_slice_ms", c"How long a worker serves one database before it leaves for databases waiting for a worker.", &WORKER_SLICE_MS, 10, 3_600_000),
        (c"event_bus.visit_interval_ms", c"How often each database gets a worker even with nothing signalled (retention, breaker probes, retries).", &VISIT_INTERVAL_MS, 1_000, 86_400_000),
    ];
    for (name, short, setting, min, max) in ints {
        GucRegistry::define_int_guc(
            name,
            short,
            c"",
            setting,
            min,
            max,
            GucContext::Sighup,
            GucFlags::default(),
        );
    }
    GucRegistry::define_int_guc(
        c"event_bus.batch_memory",
        c"Event data a delivery worker holds in memory at once: claimed, queued and in flight.",
        c"Payload and metadata, uncompressed. A claim stops when its events reach what is left of it \
          (one event at least), so a worker's memory is bounded by this, not by payload sizes times \
          event_bus.batch_size; each subscription an event matches holds its own request body.",
        &BATCH_MEMORY,
        64,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"event_bus.max_chain_depth",
        c"Longest chain of events that SQL handlers emit in reply to each other.",
        c"An emit from a SQL handler at a greater depth fails with SQLSTATE 54000, which stops a loop of \
          handlers; the handler's attempt is logged as failed with that error.",
        &MAX_CHAIN_DEPTH,
        1,
        1000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_bus.breaker_threshold",
        c"Consecutive failed attempts that open a subscription's circuit breaker (0 = never).",
        c"A subscription's breaker_threshold column overrides it.",
        &BREAKER_THRESHOLD,
        0,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"event_bus.breaker_cooldown_ms",
        c"Longest an open circuit breaker holds deliveries before it sends one probe.",
        c"A breaker first opens for a second; after each failed probe it re-opens for as long as the \
          endpoint has been failing so far, up to this.",
        &BREAKER_COOLDOWN_MS,
        1,
        86_400_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_bus.retention",
        c"Age after which the worker deletes completed events with their deliveries and logs.",
        c"An interval such as '7 days' or '12 hours'; '' or '0' keeps everything. Failed events stay.",
        &RETENTION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_bus.allowed_networks",
        c"Comma-separated CIDR blocks that HTTP deliveries may connect to; empty allows any address.",
        c"Checked against every address a handler's host resolves to when the worker connects (so DNS \
          cannot point a webhook into an internal network), and against IP-literal URLs at subscribe.",
        &ALLOWED_NETWORKS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_bus.tenant_setting",
        c"Name of the setting that holds the session's tenant id (read by event_bus.current_tenant()).",
        c"",
        &TENANT_SETTING,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"event_bus.tenant_function",
        c"Function (no arguments) returning the session's tenant id; overrides event_bus.tenant_setting.",
        c"For Supabase, e.g. a function returning (auth.jwt() ->> 'tenant_id')::uuid.",
        &TENANT_FUNCTION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"event_bus.follow_redirects",
        c"Follow HTTP redirects (at most 5); off treats a 3xx answer as a failed attempt.",
        c"",
        &FOLLOW_REDIRECTS,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
