//! Every setting in one place, with its default and context.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Largest payload emit accepts, in bytes of its JSON text.
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1_048_576);
/// Whether inserts into module_events send pg_notify('module_event', ...).
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);
/// Base URL that Edge Function names are resolved against.
pub static EDGE_FUNCTION_BASE_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
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
        c"Send pg_notify('module_event', ...) for every emitted event.",
        c"NOTIFY serialises committing transactions on a global lock; turn it off for write-heavy \
          workloads. The delivery worker never depends on it.",
        &NOTIFY,
        GucContext::Suset,
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
}
