# shellcheck shell=bash
# Sourced by bench/run.sh: large payloads, the worker's memory over a long run, breaker recovery.
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

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
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
