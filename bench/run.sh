#!/usr/bin/env bash
# Delivery benchmark: deliveries/s to a local nginx sink beside the sink's own ceiling (wrk), and
# commit -> handler latency, idle and under a steady 500 events/s stream. Every figure is printed
# beside its baseline from the same run. Exits non-zero if a run errors, not when a target is missed.
#   EVENTS="10000 100000" RUNS=3 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

EVENTS="${EVENTS:-10000 100000}"
RUNS="${RUNS:-3}"
LAT_EVENTS="${LAT_EVENTS:-300}"

scripts/install-deps.sh
need=()
for p in nginx wrk; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ "${#need[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "==> building (release)"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
(cd bench/driver && cargo build --release -q)
DRIVER=bench/driver/target/release/event_bus_bench

WORK="${BENCH_DIR:-/tmp/event_bus-bench}"
BINDIR="$(/usr/bin/pg_config --bindir)"
as_pg() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
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
    }
}
CONF
nginx -c "$WORK/nginx.conf"
SINK="http://127.0.0.1:$NGINX_PORT/hook"
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
event_bus.notify = off
event_bus.batch_size = 500
event_bus.max_concurrency = ${BENCH_CONCURRENCY:-64}
event_bus.workers = ${BENCH_WORKERS:-1}
CONF
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

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

ROWS=()
for n in $EVENTS; do
    vals=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" throughput "$CONN" "$SINK" "$n" 1)"
        v="$(sed -n 's/.*deliveries_per_s=\([0-9.]*\).*/\1/p' <<<"$out")"
        echo "    throughput $n events run $r: $out"
        vals+=("$v")
    done
    med="$(printf '%s\n' "${vals[@]}" | median)"
    ROWS+=("| HTTP deliveries/s, $n events, 1 subscription | $med | nginx sink $SINK_RPS req/s | $(awk -v a="$med" -v b="$SINK_RPS" 'BEGIN{printf "%.3f", a/b}') | >= 12000 |")
done

for rate in 0 500; do
    p50s=(); p99s=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" latency "$CONN" "$LAT_EVENTS" "$rate")"
        echo "    latency (background $rate/s) run $r: $out"
        p50s+=("$(sed -n 's/.*p50_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
        p99s+=("$(sed -n 's/.*p99_ms=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    label=$([ "$rate" = 0 ] && echo "idle" || echo "under $rate events/s")
    ROWS+=("| commit -> handler p50 ms, $label | $(printf '%s\n' "${p50s[@]}" | median) | target 5 ms | | < 5 |")
    ROWS+=("| commit -> handler p99 ms, $label | $(printf '%s\n' "${p99s[@]}" | median) | target 25 ms | | < 25 |")
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
