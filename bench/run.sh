#!/usr/bin/env bash
# The benchmark: every figure beside a baseline measured in the same run (medians of RUNS runs).
#   delivery  HTTP deliveries/s to a local nginx sink, beside the sink's own ceiling (wrk)
#   nullsink  the delivery run again with the worker built with the bench-null-sink feature (HTTP
#             attempts succeed at once, no I/O): the Postgres-only ceiling and the HTTP side's share
#   floor     the Postgres work alone, per design of the bookkeeping (pgbench on copies of the tables,
#             batches of 500): events read by position; + a delivery row written once and an attempt-log
#             row; + the event's status written (plain, and HOT-able); a log row only. Beside the worker's HTTP rate
#   latency   commit -> handler p50/p95/p99, idle and under a steady 500 events/s stream
#   fanout    one event to 10 subscriptions, beside the single-subscription rate
#   ordered   20,000 events over 1,000 entities to an ordered subscription, beside an unordered one
#   sql       events/s to a trivial SQL handler, beside calling the function directly
#   emit      pgbench while the worker delivers what is emitted: emit vs an INSERT of the same columns
#             into a primary-key-only table (and a copy of module_events, and PgQ's insert_event);
#             UPDATE with an emitting trigger vs without; 1 and 4 clients, synchronous_commit on/off
#   contract  emit of a type with a registered JSON Schema vs without (pgbench; and the batch form)
#   batch     100,000 events emitted in one statement (emit_module_events, and emit_module_event per
#             row) vs the same rows INSERTed
#   sustained 4 clients emit single events for 60 s while the worker delivers to nginx: emitted/s,
#             delivered/s, the backlog at the end and how long it takes to drain, probe latency
#   isolation 100,000 events matching nothing: completed/s and a matched event's latency behind them;
#             latency while another endpoint hangs (500 requests in flight), beside idle; a healthy
#             subscription's rate beside a neighbour failing every delivery, beside the rate alone
#   request   event_bus.request round trip p50/p99 from one client: to a SQL responder beside calling the
#             function directly, to an HTTP responder (nginx) beside a bare HTTP POST to it
#   brokers   BROKER_EVENTS (100,000) deliveries/s to RabbitMQ (confirms) and to NATS JetStream (PubAck),
#             one worker, beside a plain publisher with the same client crate publishing the same messages
#   pool      POOL_DATABASES (200) databases sharing the worker pool: deliveries/s with events spread over all
#             of them beside the same events in one database; first event into an idle database p50/p99
#   memory    MEM_EVENTS (1,000) events of MEM_KB (900) kB to nginx: the worker's peak RSS and RSS after,
#             with the default event_bus.batch_memory and with the byte bound lifted
#   rss       the worker's RSS after 100,000 and after 1,000,000 deliveries (one process)
#   recover   a 5 s outage of an endpoint (connections refused) while 100 events are emitted: seconds from
#             its return to the first and to the last delivery
#   growth    delivery and SQL-handler rates again with GROWTH_EVENTS (5,000,000) completed events,
#             deliveries and logs in the tables; table sizes before and after retention
# Exits non-zero if a run errors, not when a target is missed.
#   EVENTS="10000 100000" RUNS=3 SECTIONS="delivery latency fanout ordered sql emit contract batch growth" bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-10000 100000}"
RUNS="${RUNS:-3}"
LAT_EVENTS="${LAT_EVENTS:-300}"
SECTIONS="${SECTIONS:-delivery nullsink floor latency fanout ordered isolation sustained sql request brokers pool memory rss recover emit contract batch console growth}"
EMIT_SECONDS="${EMIT_SECONDS:-5}"
GROWTH_EVENTS="${GROWTH_EVENTS:-5000000}"
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

scripts/install-deps.sh
need=()
for p in nginx wrk postgresql-15-pgq3; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ "${#need[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "==> building (release)"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
cargo build --release -q -p event_bus_bench
DRIVER=target/release/event_bus_bench

WORK="${BENCH_DIR:-/tmp/event_bus-bench}"
BINDIR="$(/usr/bin/pg_config --bindir)"
# the server runs without RUST_BACKTRACE: with it, pgrx captures a backtrace for every failing statement
as_pg() { runuser -u postgres -- env -u RUST_BACKTRACE "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    [ -f "$WORK/nginx-recover.pid" ] && kill "$(cat "$WORK/nginx-recover.pid")" 2>/dev/null || true
    [ -f "$WORK/rabbit/pid" ] && kill -9 "$(cat "$WORK/rabbit/pid")" 2>/dev/null || true
    [ -f "$WORK/nats.pid" ] && kill "$(cat "$WORK/nats.pid")" 2>/dev/null || true
    [ -f "$WORK/console.pid" ] && kill "$(cat "$WORK/console.pid")" 2>/dev/null || true
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
    # never leave the null-sink build installed (a run that failed inside that section)
    if [ -n "${NULL_SINK_INSTALLED:-}" ]; then
        cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 1' TERM
cleanup
rm -rf "$WORK"; mkdir -p "$WORK"; chown postgres:postgres "$WORK"

# --- nginx sink ---------------------------------------------------------------------------
NGINX_PORT="$(free_port)"
cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 200 '{"ok":true}'; }
        location /fail { return 500 '{"error":"always"}'; }
    }
}
CONF
nginx -c "$WORK/nginx.conf"
SINK="http://127.0.0.1:$NGINX_PORT/hook"
SINK_FAIL="http://127.0.0.1:$NGINX_PORT/fail"
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.rep("x", 600)
LUA
echo "==> nginx sink ceiling (wrk, 5 s, 64 connections)"
SINK_RPS="$(wrk -t2 -c64 -d5s -s "$WORK/post.lua" "$SINK" | awk '/Requests\/sec/ {printf "%d", $2}')"
echo "    $SINK_RPS requests/s"

# --- PostgreSQL ---------------------------------------------------------------------------
PG_PORT="$(free_port)"
as_pg "$BINDIR/initdb" -A trust -U postgres -D "$WORK/data" >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_preload_libraries = 'event_bus'
shared_buffers = '1GB'
max_wal_size = '8GB'
checkpoint_timeout = '30min'
event_bus.retention = ''
event_bus.batch_size = 500
event_bus.workers = ${BENCH_WORKERS:-1}
max_connections = 300
CONF
[ -n "${BENCH_CONCURRENCY:-}" ] && echo "event_bus.max_concurrency = $BENCH_CONCURRENCY" >> "$WORK/data/postgresql.conf"
[ -n "${BENCH_NOTIFY:-}" ] && echo "event_bus.notify = $BENCH_NOTIFY" >> "$WORK/data/postgresql.conf"
if [ -n "${BENCH_PROFILE:-}" ]; then
    cat >> "$WORK/data/postgresql.conf" <<CONF
shared_preload_libraries = 'event_bus,pg_stat_statements'
pg_stat_statements.track = all
CONF
fi
as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE bench" >/dev/null
psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -c "CREATE EXTENSION event_bus" >/dev/null
[ -n "${BENCH_PROFILE:-}" ] && psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -c "CREATE EXTENSION pg_stat_statements" >/dev/null
CONN="host=127.0.0.1 port=$PG_PORT user=postgres dbname=bench"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.3f", a/b; else print "-" }'; }
# seconds a SQL script takes (psql \timing of its last statement is not enough: wall clock)
# (runs in a command substitution, where set -e does not reach the caller: a failure ends the script)
timed() {
    local t0 t1; t0="$(date +%s.%N)"
    "${PSQL[@]}" -c "$1" >/dev/null || { echo "bench: statement failed: $1" >&2; kill -TERM $$; exit 1; }
    t1="$(date +%s.%N)"; awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}

tps() { # pgbench script, clients, synchronous_commit -> transactions/s
    PGOPTIONS="-c synchronous_commit=$3" pgbench -n -T "$EMIT_SECONDS" -c "$2" -j "$2" -f "$WORK/$1" \
        -h 127.0.0.1 -p "$PG_PORT" -U postgres bench 2>&1 | awk '/^tps/ {printf "%d", $3}'
}

# a trivial SQL handler, run as its own role
"${PSQL[@]}" <<'SQL'
CREATE ROLE bench_handler NOLOGIN;
CREATE SCHEMA bench;
GRANT USAGE ON SCHEMA bench TO bench_handler;
CREATE FUNCTION bench.h(event event_bus.module_events) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('ok', true, 'n', event.payload -> 'n') $$;
-- a table shaped like module_events (defaults, indexes, checks), without the extension around it
CREATE TABLE bench_bare (LIKE event_bus.module_events INCLUDING DEFAULTS INCLUDING INDEXES INCLUDING CONSTRAINTS);
SQL

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

ROWS=()
declare -A MED
throughput_median() { # label target events fanout [options: keep ordered entities=N] -> median deliveries/s
    local vals=() out v
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" throughput "$CONN" "$2" "$3" "$4" "${@:5}")"
        v="$(sed -n 's/.*deliveries_per_s=\([0-9.]*\).*/\1/p' <<<"$out")"
        echo "    $1 run $r: $out" >&2
        vals+=("$v")
    done
    printf '%s\n' "${vals[@]}" | median
}
want delivery && for n in $EVENTS; do
    vals=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" throughput "$CONN" "$SINK" "$n" 1)"
        v="$(sed -n 's/.*deliveries_per_s=\([0-9.]*\).*/\1/p' <<<"$out")"
        echo "    throughput $n events run $r: $out"
        vals+=("$v")
    done
    med="$(printf '%s\n' "${vals[@]}" | median)"
    MED[http_$n]="$med"
    ROWS+=("| HTTP deliveries/s, $n events, 1 subscription | $med | nginx sink $SINK_RPS req/s | $(awk -v a="$med" -v b="$SINK_RPS" 'BEGIN{printf "%.3f", a/b}') | >= 25000 (issue 14) |")
done

# the defaults beside the tuned setting: LISTEN module_event notifications off (the worker sends one
# per event in its fan-out transaction when event_bus.notify is on, the default)
if want delivery && [ -z "${BENCH_NOTIFY:-}" ]; then
    n="${EVENTS##* }"
    "${PSQL[@]}" -c "ALTER SYSTEM SET event_bus.notify = off" -c "SELECT pg_reload_conf()" >/dev/null
    tuned="$(throughput_median "tuned: event_bus.notify = off, $n events" "$SINK" "$n" 1)"
    "${PSQL[@]}" -c "ALTER SYSTEM RESET event_bus.notify" -c "SELECT pg_reload_conf()" >/dev/null
    ROWS+=("| HTTP deliveries/s, $n events, the defaults (event_bus.notify on) | ${MED[http_$n]} | tuned (event_bus.notify = off) $tuned | $(ratio "${MED[http_$n]}" "$tuned") | - |")
fi

# --- null sink: the Postgres-only ceiling of the same code -----------------------------------
# The worker rebuilt with the bench-null-sink feature (every HTTP attempt succeeds at once, no I/O),
# 100,000 events, beside the same events delivered to nginx by the normal build in this run: the
# difference is the HTTP side's share of a delivery. The normal build is installed again after it.
if want nullsink; then
    NULL_N="${NULL_EVENTS:-100000}"
    http="${MED[http_$NULL_N]:-$(throughput_median "HTTP to nginx, $NULL_N events" "$SINK" "$NULL_N" 1)}"
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
    NULL_SINK_INSTALLED=1
    cargo pgrx install --release --pg-config /usr/bin/pg_config --features bench-null-sink >/dev/null
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
    null="$(throughput_median "null sink, $NULL_N events" "$SINK" "$NULL_N" 1)"
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
    cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
    NULL_SINK_INSTALLED=
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
    ROWS+=("| deliveries/s, null sink (same build, HTTP attempts answered at once without I/O), $NULL_N events | $null | HTTP to nginx $http | $(ratio "$http" "$null") (HTTP/null) | >= 25000 (HTTP) |")
fi

# --- floor: what the Postgres work alone allows, per design of the bookkeeping -------------------
# Copies of the extension's own tables (LIKE ... INCLUDING ALL: the same columns, indexes and checks,
# not the attempt log's per-minute trigger) hold FLOOR_EVENTS events shaped like the driver's. pgbench,
# one client, synchronous_commit off (as the worker's bookkeeping commits), one transaction per batch
# of 500 (event_bus.batch_size), takes the events in turn with four write sets; each is the least a
# design of that shape writes, with no matching, no HTTP, no decoding and no NOTIFY:
#   read     the batch's events read by position (a key range): reading alone
#   write    read, then one delivery row written once at its outcome, and one attempt-log row
#   status   write, and the events' status row versions (an UPDATE of the wide event row)
#   logonly  read, and one attempt-log row (no delivery row for a first attempt that succeeded)
#   hot      status, on an event table built for reading by position: without the two indexes whose
#            predicate names dispatched_at, and fillfactor 50, so the status update can be HOT (no
#            index entries) — the cheapest stored status
# The variants alternate within each of RUNS rounds (this machine's speed moves between minutes);
# medians, beside the worker's own HTTP rate of this run.
if want floor; then
    FLOOR_N="${FLOOR_EVENTS:-100000}"
    "${PSQL[@]}" <<SQL
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS floor CASCADE;
CREATE SCHEMA floor;
CREATE TABLE floor.src AS
SELECT event_bus._uuid_v7() AS id, 'bench.created'::text AS event_type, g AS n
  FROM generate_series(1, $FLOOR_N) g;
CREATE TABLE floor.events (LIKE event_bus.module_events INCLUDING ALL);
CREATE TABLE floor.deliveries (LIKE event_bus.module_event_deliveries INCLUDING ALL);
CREATE TABLE floor.logs (LIKE event_bus.module_event_logs INCLUDING ALL);
CREATE TABLE floor.events_pos (LIKE event_bus.module_events INCLUDING ALL) WITH (fillfactor = 50);
DO \$\$
DECLARE i text;
BEGIN
    FOR i IN SELECT indexname FROM pg_indexes
              WHERE schemaname = 'floor' AND tablename = 'events_pos' AND indexdef LIKE '%dispatched_at%'
    LOOP
        EXECUTE format('DROP INDEX floor.%I', i);
    END LOOP;
END
\$\$;
CREATE TABLE floor.batches AS
SELECT b, (array_agg(id ORDER BY id))[1] AS lo, (array_agg(id ORDER BY id DESC))[1] AS hi
  FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1) / 500 AS b FROM floor.src) s GROUP BY b;
CREATE UNIQUE INDEX ON floor.batches (b);
ANALYZE floor.batches;
CREATE SEQUENCE floor.batch MINVALUE 0 START 0;
SQL
    FLOOR_BATCHES="$("${PSQL[@]}" -At -c "SELECT count(*) FROM floor.batches")"
    FLOOR_READ="SELECT e.id, e.tenant_id, e.event_type, e.source_module, e.entity_type, e.entity_id, e.payload,
       e.metadata, e.created_at
  FROM floor.batches b JOIN floor.events e ON e.id BETWEEN b.lo AND b.hi WHERE b.b = :n;"
    FLOOR_DELIVERY="INSERT INTO floor.deliveries (id, event_id, subscription_id, tenant_id, status, attempts,
       last_attempt_at, last_http_status, completed_at)
SELECT event_bus._delivery_id(e.id, '22222222-2222-2222-2222-222222222222'), e.id,
       '22222222-2222-2222-2222-222222222222', e.tenant_id, 'completed', 1, now(), 200, now()
  FROM floor.batches b JOIN floor.events e ON e.id BETWEEN b.lo AND b.hi WHERE b.b = :n;"
    FLOOR_LOG="INSERT INTO floor.logs (delivery_id, event_id, subscription_id, tenant_id, attempt, status,
       http_status, response, duration_ms)
SELECT event_bus._delivery_id(e.id, '22222222-2222-2222-2222-222222222222'), e.id,
       '22222222-2222-2222-2222-222222222222', e.tenant_id, 1, 'success', 200, '{\"ok\": true}'::jsonb, 0.4
  FROM floor.batches b JOIN floor.events e ON e.id BETWEEN b.lo AND b.hi WHERE b.b = :n;"
    FLOOR_STATUS="UPDATE floor.events e
   SET status = 'completed', processed_at = now(), dispatched_at = coalesce(e.dispatched_at, now())
  FROM floor.batches b WHERE b.b = :n AND e.id BETWEEN b.lo AND b.hi;"
    floor_script() { # name, statements...
        local f="$WORK/floor-$1.sql"; shift
        { echo "SELECT nextval('floor.batch') AS n \\gset"; echo "BEGIN;"; printf '%s\n' "$@"; echo "COMMIT;"; } > "$f"
    }
    floor_script read "$FLOOR_READ"
    floor_script write "$FLOOR_READ" "$FLOOR_DELIVERY" "$FLOOR_LOG"
    floor_script status "$FLOOR_READ" "$FLOOR_DELIVERY" "$FLOOR_LOG" "$FLOOR_STATUS"
    floor_script logonly "$FLOOR_READ" "$FLOOR_LOG"
    sed 's/floor\.events e/floor.events_pos e/' "$WORK/floor-status.sql" > "$WORK/floor-hot.sql"
    declare -A FL=()
    for r in $(seq "$RUNS"); do
        for v in read write status hot logonly; do
            # the same fresh events every time: emitted rows, never updated, nothing delivered
            t="$([ "$v" = hot ] && echo floor.events_pos || echo floor.events)"
            "${PSQL[@]}" -c "TRUNCATE floor.events, floor.events_pos, floor.deliveries, floor.logs" \
                -c "INSERT INTO $t (id, tenant_id, event_type, source_module, entity_type, entity_id, payload)
                    SELECT id, '11111111-1111-1111-1111-111111111111', event_type, 'bench', 'item', n::text,
                           jsonb_build_object('n', n, 'sku', 'SKU-' || n, 'qty', 1, 'note', repeat('x', 200))
                      FROM floor.src ORDER BY id" \
                -c "SELECT setval('floor.batch', 0, false)" \
                -c "VACUUM ANALYZE $t, floor.deliveries, floor.logs" -c "CHECKPOINT" >/dev/null
            t="$(PGOPTIONS="-c synchronous_commit=off" pgbench -n -t "$FLOOR_BATCHES" -c 1 -f "$WORK/floor-$v.sql" \
                -h 127.0.0.1 -p "$PG_PORT" -U postgres bench 2>&1 | awk '/^tps/ {print $3}')"
            d="$(awk -v t="$t" -v n="$FLOOR_N" -v b="$FLOOR_BATCHES" 'BEGIN{printf "%d", t * n / b}')"
            echo "    floor $v run $r: deliveries_per_s=$d"
            FL[$v]+="$d "
        done
    done
    hot_updates="$("${PSQL[@]}" -At -c "SELECT n_tup_hot_upd || ' of ' || n_tup_upd FROM pg_stat_user_tables
                                            WHERE relid = 'floor.events_pos'::regclass")"
    "${PSQL[@]}" -c "SET client_min_messages = warning" -c "DROP SCHEMA floor CASCADE" >/dev/null
    worker="${MED[http_$FLOOR_N]:-$(throughput_median "HTTP to nginx, $FLOOR_N events" "$SINK" "$FLOOR_N" 1)}"
    fl() { printf '%s\n' ${FL[$1]} | median; }
    ROWS+=("| floor, Postgres work only: events read by position, deliveries/s | $(fl read) | the worker, HTTP, $FLOOR_N events $worker | $(ratio "$worker" "$(fl read)") (worker/floor) | - |")
    ROWS+=("| floor: read + delivery row written once at its outcome + attempt-log row | $(fl write) | the worker $worker | $(ratio "$worker" "$(fl write)") | >= 25000 (issue 14) |")
    ROWS+=("| floor: the same + the event's status written (module_events.status stored) | $(fl status) | the worker $worker | $(ratio "$worker" "$(fl status)") | >= 25000 (issue 14) |")
    ROWS+=("| floor: the same, the status update HOT-able (no index names dispatched_at, fillfactor 50; HOT: $hot_updates) | $(fl hot) | the worker $worker | $(ratio "$worker" "$(fl hot)") | >= 25000 (issue 14) |")
    ROWS+=("| floor: read + attempt-log row only (no delivery row for a first success) | $(fl logonly) | the worker $worker | $(ratio "$worker" "$(fl logonly)") | >= 25000 (issue 14) |")
fi

want latency && for rate in 0 500; do
    p50s=(); p95s=(); p99s=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" latency "$CONN" "$LAT_EVENTS" "$rate")"
        echo "    latency (background $rate/s) run $r: $out"
        p50s+=("$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p95s+=("$(sed -n 's/.*p95_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p99s+=("$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    label=$([ "$rate" = 0 ] && echo "idle" || echo "under $rate events/s")
    MED[p50_$rate]="$(printf '%s\n' "${p50s[@]}" | median)"; MED[p99_$rate]="$(printf '%s\n' "${p99s[@]}" | median)"
    ROWS+=("| commit -> handler p50 ms, $label | ${MED[p50_$rate]} | target 5 ms | | < 5 |")
    ROWS+=("| commit -> handler p95 ms, $label | $(printf '%s\n' "${p95s[@]}" | median) | | | |")
    ROWS+=("| commit -> handler p99 ms, $label | ${MED[p99_$rate]} | target 25 ms | | < 25 |")
done

# --- fan-out: one event to 10 subscriptions ----------------------------------------------
if want fanout; then
    one="${MED[http_10000]:-$(throughput_median "fan-out baseline, 1 subscription" "$SINK" 10000 1)}"
    ten="$(throughput_median "fan-out 10 subscriptions" "$SINK" 10000 10)"
    ROWS+=("| HTTP deliveries/s, 10,000 events x 10 subscriptions | $ten | 1 subscription $one | $(ratio "$ten" "$one") | >= 0.8 |")
fi

# --- ordered subscriptions: the same events to an ordered subscription and to an unordered one --
if want ordered; then
    ORD_N="${ORDERED_EVENTS:-20000}"
    ORD_ENT="${ORDERED_ENTITIES:-1000}"
    MED[unord]="$(throughput_median "unordered, $ORD_ENT entities" "$SINK" "$ORD_N" 1 "entities=$ORD_ENT")"
    MED[ord]="$(throughput_median "ordered, $ORD_ENT entities" "$SINK" "$ORD_N" 1 ordered "entities=$ORD_ENT")"
    ROWS+=("| ordered-subscription deliveries/s, $ORD_N events over $ORD_ENT entities | ${MED[ord]} | unordered ${MED[unord]} | $(ratio "${MED[ord]}" "${MED[unord]}") | - |")
fi

# --- isolation: bursts of unmatched events, a hanging endpoint, a failing neighbour -----------
latency_runs() { # extra driver options -> "p50 p99" medians
    local p50s=() p99s=() out
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" latency "$CONN" "$LAT_EVENTS" 0 "$@")"
        echo "    latency ($*) run $r: $out" >&2
        p50s+=("$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p99s+=("$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    echo "$(printf '%s\n' "${p50s[@]}" | median) $(printf '%s\n' "${p99s[@]}" | median)"
}
if want isolation; then
    UNM_N="${UNMATCHED_EVENTS:-100000}"
    rates=(); probes=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" unmatched "$CONN" "$UNM_N")"
        echo "    unmatched run $r: $out"
        rates+=("$(sed -n 's/.*unmatched_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        probes+=("$(sed -n 's/.*probe_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    ur="$(printf '%s\n' "${rates[@]}" | median)"; up="$(printf '%s\n' "${probes[@]}" | median)"
    http="${MED[http_100000]:-${MED[http_10000]:-}}"
    ROWS+=("| events matching nothing completed/s, $UNM_N events | $ur | HTTP deliveries/s ${http:--} | $(ratio "$ur" "${http:-0}") | - |")
    ROWS+=("| commit -> handler ms, one matched event emitted behind them | $up | idle p50 ${MED[p50_0]:--} | | < 2000 |")
    read -r idle50 idle99 <<<"$(if [ -n "${MED[p50_0]:-}" ]; then echo "${MED[p50_0]} ${MED[p99_0]}"; else latency_runs; fi)"
    read -r hang50 hang99 <<<"$(latency_runs hang=500)"
    ROWS+=("| commit -> handler p50 ms, another endpoint hanging (500 in flight) | $hang50 | idle $idle50 | $(ratio "$hang50" "$idle50") | < 5 |")
    ROWS+=("| commit -> handler p99 ms, another endpoint hanging (500 in flight) | $hang99 | idle $idle99 | $(ratio "$hang99" "$idle99") | < 25 |")
    alone="${MED[http_10000]:-$(throughput_median "healthy alone" "$SINK" 10000 1)}"
    beside="$(throughput_median "healthy beside a failing subscription" "$SINK" 10000 1 "failing=$SINK_FAIL")"
    ROWS+=("| HTTP deliveries/s, 10,000 events, beside a subscription failing every delivery | $beside | alone $alone | $(ratio "$beside" "$alone") | >= 0.8 |")
fi

# --- sustained: 4 clients emit while the worker delivers -----------------------------------
if want sustained; then
    SUS_S="${SUSTAINED_SECONDS:-60}"; SUS_C="${SUSTAINED_CLIENTS:-4}"
    em=(); dl=(); bl=(); dr=(); s50=(); s99=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" sustained "$CONN" "$SINK" "$SUS_C" "$SUS_S")"
        echo "    sustained run $r: $out" >&2
        em+=("$(sed -n 's/.*emitted_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        dl+=("$(sed -n 's/.*delivered_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        bl+=("$(sed -n 's/.*backlog_at_end=\([0-9]*\).*/\1/p' <<<"$out")")
        dr+=("$(sed -n 's/.*drain_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        s50+=("$(sed -n 's/.*probe_p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        s99+=("$(sed -n 's/.*probe_p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    m() { printf '%s\n' "$@" | median; }
    e="$(m "${em[@]}")"; d="$(m "${dl[@]}")"
    ROWS+=("| sustained, $SUS_C clients emitting for $SUS_S s: deliveries/s during it | $d | events emitted/s $e | $(ratio "$d" "$e") | >= 1 (keeps up) |")
    ROWS+=("| sustained: backlog at the end / seconds to drain it | $(m "${bl[@]}") / $(m "${dr[@]}") | | | drained < 5 s |")
    ROWS+=("| sustained: commit -> handler p50 / p99 ms of a probe every 50 ms during it | $(m "${s50[@]}") / $(m "${s99[@]}") | | | |")
fi

# --- SQL handler ---------------------------------------------------------------------------
sql_direct_rate() { # calls/s of bench.h over the events in the table, in one statement
    local n secs
    n="$("${PSQL[@]}" -At -c "SELECT count(*) FROM event_bus.module_events WHERE event_type = 'bench.created'")"
    secs="$(timed "SELECT count(bench.h(e)) FROM event_bus.module_events e WHERE e.event_type = 'bench.created'")"
    awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.0f", n/s}'
}
if want sql; then
    SQL_N="${SQL_EVENTS:-100000}"
    MED[sql]="$(throughput_median "SQL handler" "sql:bench.h" "$SQL_N" 1)"
    direct="$(sql_direct_rate)"
    ROWS+=("| SQL-handler events/s, $SQL_N events | ${MED[sql]} | direct calls $direct/s | $(ratio "${MED[sql]}" "$direct") | >= 19000 |")
fi

# --- request-reply -------------------------------------------------------------------------
if want request; then
    RQ_N="${REQUEST_CALLS:-2000}"
    declare -A RQ=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" request "$CONN" "$SINK" "$RQ_N")"
        echo "    request run $r: $out" >&2
        for k in sql_p50 sql_p99 async_p50 async_p99 direct_p50 direct_p99 http_p50 http_p99 bare_p50 bare_p99; do
            RQ[$k]+="$(sed -n "s/.*${k}_ms=\([0-9.]*\).*/\1/p" <<<"$out") "
        done
    done
    rq() { printf '%s\n' ${RQ[$1]} | median; }
    ROWS+=("| request round trip p50 / p99 ms, SQL responder, $RQ_N calls | $(rq sql_p50) / $(rq sql_p99) | direct function call $(rq direct_p50) / $(rq direct_p99) | $(ratio "$(rq sql_p50)" "$(rq direct_p50)") (p50) | - |")
    ROWS+=("| (same) with synchronous_commit off: the record's commit not waited for | $(rq async_p50) / $(rq async_p99) | direct function call $(rq direct_p50) / $(rq direct_p99) | $(ratio "$(rq async_p50)" "$(rq direct_p50)") (p50) | - |")
    ROWS+=("| request round trip p50 / p99 ms, HTTP responder (nginx), $RQ_N calls | $(rq http_p50) / $(rq http_p99) | bare HTTP POST $(rq bare_p50) / $(rq bare_p99) | $(ratio "$(rq http_p50)" "$(rq bare_p50)") (p50) | - |")
fi

# --- broker targets ------------------------------------------------------------------------
if want brokers; then
    BROKER_N="${BROKER_EVENTS:-100000}"
    RMQ_PORT="$(free_port)"; RMQ_DIST="$(free_port)"; NATS_PORT="$(free_port)"
    R="$WORK/rabbit"; mkdir -p "$R/mnesia" "$R/log" "$WORK/nats"
    echo "[]." > "$R/enabled_plugins"
    printf 'listeners.tcp.default = 127.0.0.1:%s\nloopback_users.guest = true\n' "$RMQ_PORT" > "$R/rabbitmq.conf"
    chown -R rabbitmq "$R"
    (cd "$R" && runuser -u rabbitmq -- env HOME="$R" RABBITMQ_NODENAME="ebbench$RMQ_PORT@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RMQ_PORT" RABBITMQ_DIST_PORT="$RMQ_DIST" \
        RABBITMQ_MNESIA_BASE="$R/mnesia" RABBITMQ_LOG_BASE="$R/log" RABBITMQ_CONFIG_FILE="$R/rabbitmq" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$R/enabled_plugins" RABBITMQ_PID_FILE="$R/pid" \
        /usr/lib/rabbitmq/bin/rabbitmq-server > "$R/out.log" 2>&1 &)
    nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/nats" -P "$WORK/nats.pid" > "$WORK/nats.log" 2>&1 &
    for p in "$RMQ_PORT" "$NATS_PORT"; do
        for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.2; done
    done
    for kind in amqp nats; do
        if [ "$kind" = amqp ]; then
            url="amqp://guest:guest@127.0.0.1:$RMQ_PORT/%2f?exchange=bench"; label="RabbitMQ (publisher confirms)"
        else
            url="nats://127.0.0.1:$NATS_PORT?subject=benchsub"; label="NATS JetStream (PubAck)"
        fi
        base=()
        for r in $(seq "$RUNS"); do
            out="$("$DRIVER" broker_baseline "$url" "$BROKER_N")"
            echo "    $kind baseline run $r: $out" >&2
            base+=("$(sed -n 's/.*published_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        done
        b="$(printf '%s\n' "${base[@]}" | median)"
        "$DRIVER" broker_setup "$url"
        d="$(throughput_median "$kind" "$url" "$BROKER_N" 1)"
        ROWS+=("| deliveries/s to $label, $BROKER_N events, one worker | $d | the same crate publishing directly, 256 unconfirmed $b/s | $(ratio "$d" "$b") | >= 15000 and >= 0.5 |")
    done
    kill -9 "$(cat "$R/pid")" 2>/dev/null || true
    kill "$(cat "$WORK/nats.pid")" 2>/dev/null || true
fi

# --- the worker pool over many databases ---------------------------------------------------
if want pool; then
    POOL_N="${POOL_DATABASES:-200}"; POOL_E="${POOL_EVENTS_PER_DB:-100}"; POOL_S="${POOL_SAMPLES:-50}"
    ps=(); po=(); p50=(); p99=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" pool "$CONN" "$POOL_N" "$POOL_E" "$POOL_S")"
        echo "    pool run $r: $out" >&2
        ps+=("$(sed -n 's/.*spread_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        po+=("$(sed -n 's/.*one_db_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
        p50+=("$(sed -n 's/.*first_p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p99+=("$(sed -n 's/.*first_p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    m() { printf '%s\n' "$@" | median; }
    ROWS+=("| deliveries/s, $((POOL_N * POOL_E)) events spread over $POOL_N databases (pool of 4) | $(m "${ps[@]}") | the same in one database $(m "${po[@]}") | $(ratio "$(m "${ps[@]}")" "$(m "${po[@]}")") | - |")
    ROWS+=("| first event into an idle database (no worker), commit -> handler p50 / p99 ms, $POOL_S samples | $(m "${p50[@]}") / $(m "${p99[@]}") | | | p99 < 50 |")
fi

# --- memory: large payloads ------------------------------------------------------------------
# MEM_EVENTS (1,000) events of MEM_KB (900) kB each, emitted while the worker waits, then delivered
# to nginx: the worker's peak RSS (VmHWM, from a fresh worker process) and its RSS after, beside its
# RSS before; with the default event_bus.batch_memory (16MB), and with the byte bound lifted
# (batch_memory = 1GB: claims by count only, as 0.5.0 did).
worker_pid() {
    "${PSQL[@]}" -At -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_bus worker' AND datname = 'bench' ORDER BY backend_start DESC LIMIT 1"
}
rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
wait_sql() { # SQL returning true; gives up after 300 s
    local deadline=$((SECONDS + 300))
    until [ "$("${PSQL[@]}" -At -c "$1")" = t ]; do
        [ $SECONDS -lt $deadline ] || { echo "bench: timed out waiting for: $1" >&2; exit 1; }
        sleep 0.2
    done
}
memory_run() { # batch_memory setting -> "before_kB peak_kB after_kB seconds"
    "${PSQL[@]}" -c "ALTER SYSTEM SET event_bus.batch_memory = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
    "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs CASCADE" \
        -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null
    "${PSQL[@]}" -c "SELECT event_bus.subscribe('bench.big', 'bench', '$SINK', p_max_retries => 0)" >/dev/null
    # a fresh worker (its peak starts here), warmed up with one small event
    local old; old="$(worker_pid)"
    [ -n "$old" ] && "${PSQL[@]}" -c "SELECT pg_terminate_backend($old)" >/dev/null
    "${PSQL[@]}" -c "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'bench.big', 'bench', NULL, NULL, '{\"warm\": true}')" >/dev/null
    wait_sql "SELECT count(*) = 1 FROM event_bus.module_event_deliveries WHERE status = 'completed'"
    local pid; pid="$(worker_pid)"
    local before; before="$(rss_kb "$pid" VmRSS)"
    # emitted in one transaction, so the worker finds all of them at once
    "${PSQL[@]}" -c "SELECT count(event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'bench.big', 'bench', 'blob', g::text,
                            jsonb_build_object('n', g, 'blob', repeat(md5(g::text), $MEM_KB * 1024 / 32))))
                       FROM generate_series(1, $MEM_EVENTS) g" >/dev/null
    local t0=$SECONDS
    wait_sql "SELECT count(*) = $MEM_EVENTS + 1 FROM event_bus.module_event_deliveries WHERE status = 'completed'"
    local secs=$((SECONDS - t0))
    [ "$(worker_pid)" = "$pid" ] || echo "    (the worker changed during the run: figures are of $pid)" >&2
    echo "$before $(rss_kb "$pid" VmHWM) $(rss_kb "$pid" VmRSS) $secs $(rss_kb "$pid" RssAnon)"
}
if want memory; then
    MEM_EVENTS="${MEM_EVENTS:-1000}"; MEM_KB="${MEM_KB:-900}"
    pb=(); pp=(); pa=(); ps=(); ub=(); up=(); ua=(); us=()
    for r in $(seq "$RUNS"); do
        read -r b p a s an <<<"$(memory_run 16MB)"
        echo "    memory, batch_memory 16MB, run $r: rss before ${b} kB, peak ${p} kB, after ${a} kB (private ${an} kB), ${s} s" >&2
        pb+=("$b"); pp+=("$p"); pa+=("$a"); ps+=("$s")
        read -r b p a s an <<<"$(memory_run 1GB)"
        echo "    memory, batch_memory 1GB, run $r: rss before ${b} kB, peak ${p} kB, after ${a} kB (private ${an} kB), ${s} s" >&2
        ub+=("$b"); up+=("$p"); ua+=("$a"); us+=("$s")
    done
    "${PSQL[@]}" -c "ALTER SYSTEM RESET event_bus.batch_memory" -c "SELECT pg_reload_conf()" >/dev/null
    mb() { printf '%s\n' "$@" | median | awk '{printf "%.0f", $1 / 1024}'; }
    ROWS+=("| worker peak RSS MB, $MEM_EVENTS events of $MEM_KB kB (batch_memory 16MB) | $(mb "${pp[@]}") | RSS before $(mb "${pb[@]}") MB, after $(mb "${pa[@]}") MB; delivered in $(printf '%s\n' "${ps[@]}" | median) s | | < 128 |")
    ROWS+=("| the same with the byte bound lifted (batch_memory 1GB: claims by count, as 0.5.0) | $(mb "${up[@]}") | RSS before $(mb "${ub[@]}") MB, after $(mb "${ua[@]}") MB; delivered in $(printf '%s\n' "${us[@]}" | median) s | | |")
    "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs CASCADE" \
        -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null
fi

# --- the worker's memory over a long run ---------------------------------------------------
# RSS_EVENTS (1,000,000) small events delivered to nginx by one worker process: its private memory
# (RssAnon; VmRSS also counts the shared buffers it touched) after the first 100,000 and after all
# of them: the worker must not grow with the number it delivered.
if want rss; then
    RSS_N="${RSS_EVENTS:-1000000}"
    "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs CASCADE" \
        -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null
    out="$("$DRIVER" throughput "$CONN" "$SINK" 100000 1)"
    # read once the worker is idle (it hands freed heap pages back when a busy spell ends)
    sleep 1
    pid="$(worker_pid)"; r1="$(rss_kb "$pid" RssAnon)"
    echo "    rss: first 100000: $out; worker $pid RssAnon ${r1} kB (VmRSS $(rss_kb "$pid" VmRSS) kB)" >&2
    out="$("$DRIVER" throughput "$CONN" "$SINK" "$((RSS_N - 100000))" 1)"
    [ "$(worker_pid)" = "$pid" ] || echo "    (the worker changed during the run)" >&2
    sleep 1
    r2="$(rss_kb "$pid" RssAnon)"
    echo "    rss: the next $((RSS_N - 100000)): $out; worker RssAnon ${r2} kB (VmRSS $(rss_kb "$pid" VmRSS) kB)" >&2
    ROWS+=("| worker private memory (RssAnon) MB after $RSS_N deliveries | $(awk -v k="$r2" 'BEGIN{printf "%.0f", k/1024}') | after 100,000: $(awk -v k="$r1" 'BEGIN{printf "%.0f", k/1024}') MB | $(ratio "$r2" "$r1") | <= 1.1 |")
fi

# --- breaker recovery: a 5 s outage ------------------------------------------------------------
# RECOVER_EVENTS (100) events emitted over RECOVER_OUTAGE_S (5) s at an endpoint that refuses
# connections (a port nothing listens on), with the default retry and breaker settings; then a
# second nginx starts on that port. Time to recover: from the endpoint's return to the first
# delivery, and to the last delivery that was still possible (every one not dead), beside the outage.
if want recover; then
    REC_N="${RECOVER_EVENTS:-100}"; REC_S="${RECOVER_OUTAGE_S:-5}"
    firsts=(); lasts=(); deads=(); outs=()
    for r in $(seq "$RUNS"); do
        rport="$(free_port)"
        sed -e "s/listen 127.0.0.1:$NGINX_PORT;/listen 127.0.0.1:$rport;/" -e "s#pid $WORK/nginx.pid;#pid $WORK/nginx-recover.pid;#" \
            "$WORK/nginx.conf" > "$WORK/nginx-recover.conf"
        "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs CASCADE" \
            -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null
        "${PSQL[@]}" -c "SELECT event_bus.subscribe('bench.outage', 'bench', 'http://127.0.0.1:$rport/hook')" >/dev/null
        ts="$(date +%s.%N)"
        for i in $(seq "$REC_N"); do
            "${PSQL[@]}" -c "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'bench.outage', 'bench', NULL, NULL, jsonb_build_object('n', $i))" >/dev/null
            sleep "$(awk -v s="$REC_S" -v n="$REC_N" 'BEGIN{printf "%.3f", s/n}')"
        done
        nginx -c "$WORK/nginx-recover.conf"
        t0="$(date +%s.%N)"
        wait_sql "SELECT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status = 'completed')"
        t1="$(date +%s.%N)"
        wait_sql "SELECT NOT EXISTS (SELECT 1 FROM event_bus.module_event_deliveries WHERE status NOT IN ('completed', 'failed'))"
        t2="$(date +%s.%N)"
        kill "$(cat "$WORK/nginx-recover.pid")"
        dead="$("${PSQL[@]}" -At -c "SELECT count(*) FROM event_bus.module_event_deliveries WHERE status = 'failed'")"
        f="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"; l="$(awk -v a="$t0" -v b="$t2" 'BEGIN{printf "%.2f", b-a}')"
        o="$(awk -v a="$ts" -v b="$t0" 'BEGIN{printf "%.2f", b-a}')"
        echo "    recover run $r: outage ${o} s, first delivery after ${f} s, all after ${l} s, dead ${dead} of $REC_N" >&2
        firsts+=("$f"); lasts+=("$l"); deads+=("$dead"); outs+=("$o")
    done
    ROWS+=("| seconds from an endpoint's return to its first / last delivery, after a ${REC_S} s outage ($REC_N events) | $(printf '%s\n' "${firsts[@]}" | median) / $(printf '%s\n' "${lasts[@]}" | median) | outage $(printf '%s\n' "${outs[@]}" | median) s; dead $(printf '%s\n' "${deads[@]}" | median) of $REC_N | | < 5 |")
    "${PSQL[@]}" -c "TRUNCATE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs CASCADE" \
        -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null
fi

# --- emit overhead on the business write (pgbench) -----------------------------------------
# While the worker delivers what is emitted (a subscription to the nginx sink), with the defaults
# (event_bus.notify on). Baselines in the same run: an INSERT of the same columns into a table with
# only a uuid primary key, the same into a copy of module_events with all its indexes, PgQ's
# insert_event, and for the trigger pair the UPDATE alone.
if want emit; then
    "${PSQL[@]}" <<SQL
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT pgq.create_queue('bench_q');
CREATE TABLE bench_pk (id uuid PRIMARY KEY DEFAULT event_bus._uuid_v7(), tenant_id uuid, event_type text, source_module text,
                       entity_type text, entity_id text, payload jsonb, metadata jsonb DEFAULT '{}');
CREATE TABLE bench_invoices (id int PRIMARY KEY, tenant_id uuid NOT NULL, total numeric NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO bench_invoices SELECT g, '11111111-1111-1111-1111-111111111111', g % 1000, 0 FROM generate_series(1, 100000) g;
CREATE TABLE bench_invoices_emit (LIKE bench_invoices INCLUDING ALL);
INSERT INTO bench_invoices_emit SELECT * FROM bench_invoices;
CREATE FUNCTION bench_emit_posted() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM event_bus.emit_module_event(NEW.tenant_id, 'invoice.posted', 'accounting', 'invoice', NEW.id::text,
                                        jsonb_build_object('id', NEW.id, 'total', NEW.total, 'n', NEW.n));
    RETURN NEW;
END \$\$;
CREATE TRIGGER bench_emit_posted AFTER UPDATE ON bench_invoices_emit FOR EACH ROW EXECUTE FUNCTION bench_emit_posted();
VACUUM ANALYZE bench_invoices, bench_invoices_emit;
DELETE FROM event_bus.module_event_subscriptions;
SELECT event_bus.subscribe('invoice.#', 'sink', '$SINK');
SQL
    printf '\\set id random(1, 100000)\nUPDATE bench_invoices SET n = n + 1 WHERE id = :id;\n' > "$WORK/update_plain.sql"
    printf '\\set id random(1, 100000)\nUPDATE bench_invoices_emit SET n = n + 1 WHERE id = :id;\n' > "$WORK/update_emit.sql"
    printf "\\\\set id random(1, 100000)\nSELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', ':id', jsonb_build_object('id', :id, 'total', 100));\n" > "$WORK/emit.sql"
    printf "\\\\set id random(1, 100000)\nINSERT INTO bench_bare (tenant_id, event_type, source_module, entity_type, entity_id, payload) VALUES ('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', ':id', jsonb_build_object('id', :id, 'total', 100));\n" > "$WORK/bare.sql"
    printf "\\\\set id random(1, 100000)\nINSERT INTO bench_pk (tenant_id, event_type, source_module, entity_type, entity_id, payload) VALUES ('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', ':id', jsonb_build_object('id', :id, 'total', 100));\n" > "$WORK/pk.sql"
    printf "\\\\set id random(1, 100000)\nSELECT pgq.insert_event('bench_q', 'invoice.posted', jsonb_build_object('id', :id, 'total', 100)::text);\n" > "$WORK/pgq.sql"
    for sync in ${EMIT_SYNC:-on off}; do
        for clients in ${EMIT_CLIENTS:-1 4}; do
            declare -A V=()
            for r in $(seq "$RUNS"); do
                for f in emit pk bare pgq update_emit update_plain; do V[$f]+="$(tps "$f.sql" "$clients" "$sync") "; done
            done
            m() { printf '%s\n' ${V[$1]} | median; }
            echo "    $clients clients, synchronous_commit=$sync: $(for f in emit pk bare pgq update_emit update_plain; do printf '%s: %s; ' "$f" "${V[$f]}"; done)" >&2
            e="$(m emit)"; pk="$(m pk)"; bare="$(m bare)"; q="$(m pgq)"; ue="$(m update_emit)"; up="$(m update_plain)"
            ROWS+=("| emit_module_event tps, $clients client(s), sync commit $sync | $e | INSERT, primary key only $pk | $(ratio "$e" "$pk") | >= 0.8 |")
            ROWS+=("| (same run) INSERT into a copy of module_events with its indexes / PgQ insert_event | $bare / $q | INSERT, primary key only $pk | $(ratio "$bare" "$pk") / $(ratio "$q" "$pk") | - |")
            ROWS+=("| UPDATE + emitting trigger tps, $clients client(s), sync commit $sync | $ue | UPDATE alone $up | $(ratio "$ue" "$up") | $([ "$clients" = 4 ] && echo '>= 0.7' || echo '-') |")
            unset V
        done
    done
    # stop delivering the backlog (the DELETE can deadlock with the worker's bookkeeping: again)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        "${PSQL[@]}" -c "DELETE FROM event_bus.module_event_subscriptions" >/dev/null 2>&1 && break
        sleep 0.5
    done
fi

# --- payload contracts: emit of a type with a registered JSON Schema vs one without ---------
if want contract; then
    "${PSQL[@]}" -c "SELECT event_bus.register_event_type('invoice.checked', 1, '{\"type\": \"object\", \"required\": [\"id\", \"total\"], \"properties\": {\"id\": {\"type\": \"integer\"}, \"total\": {\"type\": \"number\", \"minimum\": 0}}}')" >/dev/null
    for t in posted checked; do
        printf "\\\\set id random(1, 100000)\nSELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'invoice.$t', 'accounting', 'invoice', ':id', jsonb_build_object('id', :id, 'total', 100));\n" > "$WORK/emit_$t.sql"
    done
    a=(); b=(); ba=(); bb=()
    for r in $(seq "$RUNS"); do
        a+=("$(tps emit_checked.sql 1 off)"); b+=("$(tps emit_posted.sql 1 off)")
        for t in checked posted; do
            secs="$(timed "BEGIN; SELECT count(*) FROM event_bus.emit_module_events('11111111-1111-1111-1111-111111111111', 'invoice.$t', 'accounting', 'invoice', NULL, (SELECT array_agg(jsonb_build_object('id', g, 'total', 100)) FROM generate_series(1, 100000) g)); ROLLBACK;")"
            if [ "$t" = checked ]; then ba+=("$secs"); else bb+=("$secs"); fi
        done
    done
    ma="$(printf '%s\n' "${a[@]}" | median)"; mb="$(printf '%s\n' "${b[@]}" | median)"
    echo "    contract: emit tps with schema ${a[*]}, without ${b[*]}; batch s with ${ba[*]}, without ${bb[*]}" >&2
    ROWS+=("| emit_module_event tps, registered schema, 1 client, sync commit off | $ma | no schema $mb | $(ratio "$ma" "$mb") | - |")
    sa="$(printf '%s\n' "${ba[@]}" | median)"; sb="$(printf '%s\n' "${bb[@]}" | median)"
    ra="$(awk -v s="$sa" 'BEGIN{printf "%.0f", 100000/s}')"; rb="$(awk -v s="$sb" 'BEGIN{printf "%.0f", 100000/s}')"
    ROWS+=("| emit_module_events events/s, registered schema, 100000 events | $ra | no schema $rb | $(ratio "$ra" "$rb") | - |")
fi

# --- batch emit: 100,000 events in one statement --------------------------------------------
if want batch; then
    BATCH_N="${BATCH_EVENTS:-100000}"
    e=(); b=(); one=()
    for r in $(seq "$RUNS"); do
        e+=("$(timed "BEGIN; SELECT count(*) FROM event_bus.emit_module_events('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', (SELECT array_agg(g::text ORDER BY g) FROM generate_series(1, $BATCH_N) g), (SELECT array_agg(jsonb_build_object('id', g, 'total', 100) ORDER BY g) FROM generate_series(1, $BATCH_N) g)); ROLLBACK;")")
        one+=("$(timed "BEGIN; SELECT count(event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', g::text, jsonb_build_object('id', g, 'total', 100))) FROM generate_series(1, $BATCH_N) g; ROLLBACK;")")
        b+=("$(timed "BEGIN; INSERT INTO bench_bare (tenant_id, event_type, source_module, entity_type, entity_id, payload) SELECT '11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', g::text, jsonb_build_object('id', g, 'total', 100) FROM generate_series(1, $BATCH_N) g; ROLLBACK;")")
    done
    es="$(printf '%s\n' "${e[@]}" | median)"; os="$(printf '%s\n' "${one[@]}" | median)"; bs="$(printf '%s\n' "${b[@]}" | median)"
    er="$(awk -v n="$BATCH_N" -v s="$es" 'BEGIN{printf "%.0f", n/s}')"; br="$(awk -v n="$BATCH_N" -v s="$bs" 'BEGIN{printf "%.0f", n/s}')"
    orate="$(awk -v n="$BATCH_N" -v s="$os" 'BEGIN{printf "%.0f", n/s}')"
    echo "    batch: emit_module_events ${e[*]} s, emit_module_event per row ${one[*]} s, INSERT ${b[*]} s" >&2
    ROWS+=("| events/s, $BATCH_N events in one emit_module_events call | $er | INSERT ... SELECT $br rows/s | $(ratio "$er" "$br") | >= 50000 |")
    ROWS+=("| events/s, $BATCH_N emit_module_event calls in one statement | $orate | INSERT ... SELECT $br rows/s | $(ratio "$orate" "$br") | - |")
fi

# --- console: the Event Monitor's pages with a million events, beside their SQL --------------
if want console; then
    CONSOLE_EVENTS="${CONSOLE_EVENTS:-1000000}"
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
            role="$( [ "$1" = bench_admin ] && echo admin || echo "tenant reader" )"
            ROWS+=("| console page ms p50 / p99 (first view), $label, $role, $CONSOLE_EVENTS events | $(get page_p50_ms) / $(get page_p99_ms) ($(get page_first_ms)) | its SQL $(get sql_p50_ms) / $(get sql_p99_ms) | | p99 < 100 |")
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

if [ -n "${BENCH_PROFILE:-}" ]; then
    echo "==> top statements by total time (pg_stat_statements)"
    psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d bench -c \
        "SELECT calls, round(total_exec_time)::int AS total_ms, round(mean_exec_time::numeric, 3) AS mean_ms, rows,
                left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS query
           FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 12"
fi
echo
echo "event_bus delivery benchmark — $(nproc) cores, $(date -u +%Y-%m-%d), medians of $RUNS runs"
echo
echo "| measure | event_bus | baseline (same run) | ratio | target |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
[ -n "${SIZES:-}" ] && { echo; echo "$SIZES"; }
true
