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
#             delivered/s, the backlog at the end and how long it takes to drain, probe latency; then
#             the same beside a second subscription failing every attempt: the healthy one's rate
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
#   against   (not in the default list: it builds another commit) HTTP deliveries/s of this tree beside AGAINST
#             (a commit, default 16774c9 = 0.10.0), each installed
#             in turn into a cluster of the same configuration, alternating round by round (issue 34's yardstick)
#   growth    delivery and SQL-handler rates again with GROWTH_EVENTS (5,000,000) completed events,
#             deliveries and logs in the tables; table sizes before and after retention
# Exits non-zero if a run errors, not when a target is missed.
#   EVENTS="10000 100000" RUNS=3 SECTIONS="delivery latency fanout ordered sql emit contract batch growth" bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-10000 100000}"
RUNS="${RUNS:-3}"
LAT_EVENTS="${LAT_EVENTS:-300}"
SECTIONS="${SECTIONS:-delivery nullsink floor latency fanout filters ordered isolation sustained sql request brokers kafka pool memory rss recover emit contract batch console growth wal}"
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
    as_pg "$BINDIR/pg_ctl" -D "$WORK/against-data" -m fast stop >/dev/null 2>&1 || true
    # never leave another build installed (a run that failed inside the nullsink or against section)
    if [ -n "${OTHER_BUILD_INSTALLED:-}" ]; then
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

# the same on a table with history: each measured run follows a run of the same size whose events stay
# (the driver's `keep`: no TRUNCATE; its VACUUM ANALYZE then sees them all delivered). A fresh table's
# statistics hide plans that turn bad once a busy table is analyzed (0.13.1's fan-out fix: 1.18x here,
# nothing on empty tables)
if want delivery; then
    n="${EVENTS##* }"
    vals=()
    for r in $(seq "$RUNS"); do
        "$DRIVER" throughput "$CONN" "$SINK" "$n" 1 >/dev/null
        out="$("$DRIVER" throughput "$CONN" "$SINK" "$n" 1 keep)"
        v="$(sed -n 's/.*deliveries_per_s=\([0-9.]*\).*/\1/p' <<<"$out")"
        echo "    throughput $n events on $n delivered, run $r: $out"
        vals+=("$v")
    done
    hist="$(printf '%s\n' "${vals[@]}" | median)"
    ROWS+=("| HTTP deliveries/s, $n events, on top of $n delivered and analyzed | $hist | empty tables ${MED[http_$n]} | $(ratio "$hist" "${MED[http_$n]}") | >= 0.9 |")
fi

# the defaults beside the tuned setting: LISTEN module_event notifications off (the worker sends one
# per event in its fan-out transaction when event_bus.notify is on, the default)
if want delivery && [ -z "${BENCH_NOTIFY:-}" ]; then
    n="${EVENTS##* }"
    "${PSQL[@]}" -c "ALTER SYSTEM SET event_bus.notify = off" -c "SELECT pg_reload_conf()" >/dev/null
    tuned="$(throughput_median "tuned: event_bus.notify = off, $n events" "$SINK" "$n" 1)"
    "${PSQL[@]}" -c "ALTER SYSTEM RESET event_bus.notify" -c "SELECT pg_reload_conf()" >/dev/null
    ROWS+=("| HTTP deliveries/s, $n events, the defaults (event_bus.notify on) | ${MED[http_$n]} | tuned (event_bus.notify = off) $tuned | $(ratio "${MED[http_$n]}" "$tuned") | - |")
fi

# the other sections, in order (each checks `want` for its own)
for section_file in bench/sections/*.sh; do
    # shellcheck source=/dev/null
    source "$section_file"
done

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
