# shellcheck shell=bash
# Sourced by bench/run.sh: the console's pages at ten million events, and the same work with millions
# of finished rows in the tables (growth, retention).
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

# --- console: the Event Monitor's pages at ten million events, beside their SQL -------------
# (an admin over all of them, and a reader of one tenant's million: issue 39's target, p99 < 100 ms)
if want console; then
    CONSOLE_EVENTS="${CONSOLE_EVENTS:-10000000}"
    echo "==> console: $CONSOLE_EVENTS events over 10 tenants in a database of their own" >&2
    cargo build --release -q -p event-bus-console
    psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE console_bench" >/dev/null
    CPSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d console_bench)
    "${CPSQL[@]}" -c "CREATE EXTENSION event_bus" >/dev/null
    t="$(date +%s.%N)"
    "${CPSQL[@]}" -v events="$CONSOLE_EVENTS" -f bench/console_data.sql >/dev/null
    echo "    loaded in $(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.0f", b-a}') s" >&2
    # the console signs people in by password: scram over TCP for them, the superuser stays trusted
    printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' > "$WORK/data/pg_hba.conf"
    "${CPSQL[@]}" >/dev/null <<'SQL'
SELECT pg_reload_conf();
CREATE ROLE bench_console LOGIN NOINHERIT PASSWORD 'bench-console';
CREATE ROLE bench_admin LOGIN PASSWORD 'bench-admin' IN ROLE event_bus_admin;
CREATE ROLE bench_reader LOGIN PASSWORD 'bench-reader' IN ROLE event_bus_reader;
ALTER ROLE bench_reader SET app.tenant_id = '00000000-0000-7000-8000-000000000003';
GRANT bench_admin, bench_reader TO bench_console;
SQL
    CONSOLE_PORT="$(free_port)"
    EVENT_BUS_CONSOLE_DATABASE_URL="postgres://bench_console:bench-console@127.0.0.1:$PG_PORT/console_bench" \
    EVENT_BUS_CONSOLE_LISTEN="127.0.0.1:$CONSOLE_PORT" \
        target/release/event-bus-console > "$WORK/console.log" 2>&1 &
    echo $! > "$WORK/console.pid"
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$CONSOLE_PORT") 2>/dev/null && break; sleep 0.1; done
    CCONN="host=127.0.0.1 port=$PG_PORT user=postgres dbname=console_bench"
    for who in "bench_admin bench-admin -" "bench_reader bench-reader 00000000-0000-7000-8000-000000000003"; do
        set -- $who
        "$DRIVER" console "$CCONN" "http://127.0.0.1:$CONSOLE_PORT" "$1" "$2" "$3" "${CONSOLE_SAMPLES:-100}" > "$WORK/console-$1.txt"
        while read -r line; do
            label="$(sed 's/.*page="\([^"]*\)".*/\1/' <<<"$line")"
            get() { sed "s/.* $1=\([0-9.]*\).*/\1/" <<<"$line"; }
            role="$( [ "$1" = bench_admin ] && echo "admin, $CONSOLE_EVENTS events" || echo "reader of a tenant of $((CONSOLE_EVENTS / 10))" )"
            ROWS+=("| console page ms p50 / p99 (first view), $label, $role | $(get page_p50_ms) / $(get page_p99_ms) ($(get page_first_ms)) | its SQL $(get sql_p50_ms) / $(get sql_p99_ms) | | p99 < 100 |")
        done < "$WORK/console-$1.txt"
    done
    kill "$(cat "$WORK/console.pid")" 2>/dev/null || true
    rm -f "$WORK/console.pid"
    psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "DROP DATABASE console_bench" >/dev/null
fi

# --- growth: the same work with millions of finished rows in the tables ---------------------
sizes() {
    "${PSQL[@]}" -At -c "SELECT pg_size_pretty(pg_total_relation_size('event_bus.module_events')) || ' / ' ||
        pg_size_pretty(pg_total_relation_size('event_bus.module_event_deliveries')) || ' / ' ||
        pg_size_pretty(pg_total_relation_size('event_bus.module_event_logs'))"
}
if want growth; then
    echo "==> growth: loading $GROWTH_EVENTS completed events with their deliveries and logs" >&2
    # the worker may still be working off the emit section's backlog: a TRUNCATE can deadlock with it
    for i in 1 2 3 4 5 6 7 8 9 10; do
        "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs" \
            >/dev/null 2>&1 && break
        [ "$i" -lt 10 ] || { echo "growth: could not truncate the tables" >&2; exit 1; }
        sleep 0.5
    done
    t="$(timed "
        INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, entity_type, entity_id, payload,
                                             status, created_at, processed_at, dispatched_at)
        SELECT event_bus.uuid_v7_lower_bound(now() - interval '30 days' + g * interval '1 ms'),
               '11111111-1111-1111-1111-111111111111', 'history.done', 'history', 'item', g::text,
               jsonb_build_object('n', g, 'note', repeat('x', 100)), 'completed',
               now() - interval '30 days', now() - interval '30 days', now() - interval '30 days'
          FROM generate_series(1, $GROWTH_EVENTS) g;
        INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts,
                                                       next_attempt_at, last_attempt_at, last_http_status, completed_at, created_at)
        SELECT event_bus._delivery_id(e.id, '00000000-0000-0000-0000-000000000001'), e.id,
               '00000000-0000-0000-0000-000000000001', e.tenant_id, 'completed', 1, e.created_at, e.created_at, 200,
               e.created_at, e.created_at
          FROM event_bus.module_events e;
        INSERT INTO event_bus.module_event_logs (event_id, subscription_id, delivery_id, tenant_id, attempt, status,
                                                 http_status, response, duration_ms, executed_at)
        SELECT d.event_id, d.subscription_id, d.id, d.tenant_id, 1, 'success', 200, '{\"ok\": true}', 1.0, d.created_at
          FROM event_bus.module_event_deliveries d;")"
    "${PSQL[@]}" -c "VACUUM ANALYZE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs" >/dev/null
    # measure the steady state, not the checkpoint that writes out the load
    "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
    echo "    loaded in $t s" >&2
    before="$(sizes)"
    hg="$(throughput_median "HTTP with history" "$SINK" 100000 1 keep)"
    base="${MED[http_100000]:-}"
    ROWS+=("| HTTP deliveries/s, 100,000 events, $GROWTH_EVENTS finished in the tables | $hg | empty tables ${base:--} | $(ratio "$hg" "${base:-0}") | >= 0.9 |")
    if [ -n "${MED[sql]:-}" ]; then
        sg="$(throughput_median "SQL handler with history" "sql:bench.h" "${SQL_EVENTS:-100000}" 1 keep)"
        ROWS+=("| SQL-handler events/s, $GROWTH_EVENTS finished in the tables | $sg | empty tables ${MED[sql]} | $(ratio "$sg" "${MED[sql]}") | >= 0.9 |")
    fi
    # retention: what the worker does in batches of 1,000, here in batches of 100,000 to time it
    t0="$(date +%s.%N)"; purged=0
    while :; do
        n="$("${PSQL[@]}" -At -c "SELECT event_bus.purge_completed('7 days', 100000)")"
        purged=$((purged + n)); [ "$n" -gt 0 ] || break
    done
    t1="$(date +%s.%N)"
    rate="$(awk -v n="$purged" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", n/(b-a)}')"
    "${PSQL[@]}" -c "VACUUM event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs" >/dev/null
    after="$(sizes)"
    ROWS+=("| retention: completed events purged/s (with deliveries and logs) | $rate | $purged events | | |")
    SIZES="table sizes events / deliveries / logs: $before with $GROWTH_EVENTS finished events; $after after retention and VACUUM (space reused, not returned)"
fi
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
