# shellcheck shell=bash
# Sourced by bench/run.sh: the ceilings beside the delivery rate — the null sink (the Postgres-only
# ceiling of the same code) and the floor (what the Postgres work alone allows).
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

# --- null sink: the Postgres-only ceiling of the same code -----------------------------------
# The worker rebuilt with the bench-null-sink feature (every HTTP attempt succeeds at once, no I/O),
# 100,000 events, beside the same events delivered to nginx by the normal build in this run: the
# difference is the HTTP side's share of a delivery. The normal build is installed again after it.
if want nullsink; then
    NULL_N="${NULL_EVENTS:-100000}"
    http="${MED[http_$NULL_N]:-$(throughput_median "HTTP to nginx, $NULL_N events" "$SINK" "$NULL_N" 1)}"
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
    OTHER_BUILD_INSTALLED=1
    cargo pgrx install --release --pg-config /usr/bin/pg_config --features bench-null-sink >/dev/null
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
    null="$(throughput_median "null sink, $NULL_N events" "$SINK" "$NULL_N" 1)"
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
    cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
    OTHER_BUILD_INSTALLED=
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
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
