# shellcheck shell=bash
# Sourced by bench/run.sh: what an event writes, in bytes of WAL — a figure that does not depend on the
# machine's speed (issue 34). It uses run.sh's helpers and variables (want, ratio, ROWS, PSQL, ...).

# --- wal: WAL bytes per event emitted and delivered once, beside a plain INSERT --------------
# A checkpoint, the WAL insert position, one emit_module_events call of WAL_EVENTS events to a tenant
# of its own, and the position again once every one of them is completed (one subscription to the
# nginx sink, first attempt succeeds): the bytes between, per event. Beside it, in the same cluster,
# INSERT ... SELECT of the same columns into a table with only a uuid primary key; the same emit with
# the worker paused (what the emitting transaction writes); and pg_waldump's count of index entries
# and non-HOT row versions per delivered event. The earlier sections' subscriptions are paused
# meanwhile. A last variant delivers without what the console's filters and counts add (the status
# and entity indexes, the _event_hours triggers) to show their share.
if want wal; then
    WAL_N="${WAL_EVENTS:-20000}"
    echo "==> wal: WAL bytes per event, $WAL_N events" >&2
    lsn() { "${PSQL[@]}" -Atc "SELECT pg_current_wal_insert_lsn()"; }
    per_event() { "${PSQL[@]}" -Atc "SELECT round(pg_wal_lsn_diff('$2', '$1') / $WAL_N)::int"; }
    paused_subs="$("${PSQL[@]}" -Atc "SELECT coalesce(string_agg(id::text, ','), '') FROM event_bus.module_event_subscriptions WHERE is_active")"
    [ -n "$paused_subs" ] && "${PSQL[@]}" -c "UPDATE event_bus.module_event_subscriptions SET is_active = false WHERE id = ANY ('{$paused_subs}'::uuid[])" >/dev/null
    wal_sub="$("${PSQL[@]}" -Atc "SELECT event_bus.subscribe('bench.wal', 'bench-wal', '$SINK')")"
    "${PSQL[@]}" -c "CREATE TABLE IF NOT EXISTS bench_wal_plain (id uuid PRIMARY KEY, tenant_id uuid, event_type text,
        source_module text, entity_type text, entity_id text, payload jsonb, metadata jsonb, created_at timestamptz DEFAULT now())" >/dev/null
    emit_sql() { # tenant
        echo "SELECT count(*) FROM event_bus.emit_module_events('$1', 'bench.wal', 'bench', 'doc',
                  ARRAY(SELECT 'D-' || g FROM generate_series(1, $WAL_N) g),
                  ARRAY(SELECT jsonb_build_object('n', g, 'total', g % 997) FROM generate_series(1, $WAL_N) g))"
    }
    delivered() { # tenant: wait until every event of the tenant is completed
        for _ in $(seq 1200); do
            [ "$("${PSQL[@]}" -Atc "SELECT count(*) FILTER (WHERE status <> 'completed') = 0 AND count(*) = $WAL_N FROM event_bus.module_events WHERE tenant_id = '$1'")" = t ] && return 0
            sleep 0.5
        done
        echo "bench: wal: events of $1 not delivered in 10 minutes" >&2; return 1
    }
    one_delivered_run() { # -> "bytes index_entries non_hot" per event
        local t l0 l1 stats
        t="$("${PSQL[@]}" -Atc "SELECT gen_random_uuid()")"
        "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
        l0="$(lsn)"
        "${PSQL[@]}" -c "$(emit_sql "$t")" >/dev/null
        delivered "$t"
        l1="$(lsn)"
        stats="$(as_pg "$BINDIR/pg_waldump" -p "$WORK/data/pg_wal" -s "$l0" -e "$l1" --stats=record 2>/dev/null)"
        awk -v n="$WAL_N" -v b="$(per_event "$l0" "$l1")" '
            $1 == "Btree/INSERT_LEAF" || $1 == "Btree/INSERT_POST" || $1 == "Hash/INSERT" { idx += $2 }
            $1 == "Heap/UPDATE" { upd += $2 }
            END { printf "%s %.2f %.2f\n", b, idx / n, upd / n }' <<<"$stats"
    }
    plain=(); emitted=(); full=(); bare=()
    for r in $(seq "$RUNS"); do
        # a plain INSERT of the same columns
        "${PSQL[@]}" -c "TRUNCATE bench_wal_plain" -c "CHECKPOINT" >/dev/null
        l0="$(lsn)"
        "${PSQL[@]}" -c "INSERT INTO bench_wal_plain (id, tenant_id, event_type, source_module, entity_type, entity_id, payload, metadata)
            SELECT event_bus._uuid_v7(), gen_random_uuid(), 'bench.wal', 'bench', 'doc', 'D-' || g,
                   jsonb_build_object('n', g, 'total', g % 997), '{}' FROM generate_series(1, $WAL_N) g" >/dev/null
        plain+=("$(per_event "$l0" "$(lsn)")")
        # the emit alone, the worker paused
        "${PSQL[@]}" -c "ALTER SYSTEM SET event_bus.pause = on" -c "SELECT pg_reload_conf()" >/dev/null
        t="$("${PSQL[@]}" -Atc "SELECT gen_random_uuid()")"
        "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
        l0="$(lsn)"
        "${PSQL[@]}" -c "$(emit_sql "$t")" >/dev/null
        emitted+=("$(per_event "$l0" "$(lsn)")")
        "${PSQL[@]}" -c "ALTER SYSTEM RESET event_bus.pause" -c "SELECT pg_reload_conf()" >/dev/null
        delivered "$t"
        # emitted and delivered
        full+=("$(one_delivered_run)")
        echo "    wal run $r: plain ${plain[-1]} emit ${emitted[-1]} delivered (bytes entries non-HOT) ${full[-1]}" >&2
    done
    # without the console's status and entity indexes and hourly counts (restored after)
    "${PSQL[@]}" >/dev/null <<'SQL'
DROP INDEX event_bus.module_events_status_idx;
DROP INDEX event_bus.module_events_entity_idx;
ALTER TABLE event_bus.module_events DISABLE TRIGGER module_events_count_updates;
SQL
    for r in $(seq "$RUNS"); do
        bare+=("$(one_delivered_run)")
        echo "    wal run $r without the console's indexes and counts: ${bare[-1]}" >&2
    done
    "${PSQL[@]}" >/dev/null <<'SQL'
ALTER TABLE event_bus.module_events ENABLE TRIGGER module_events_count_updates;
CREATE INDEX module_events_status_idx ON event_bus.module_events (status, id)
    WHERE dispatched_at IS NOT NULL AND status IN ('pending', 'processing', 'failed');
CREATE INDEX module_events_entity_idx ON event_bus.module_events USING hash (entity_id)
    WHERE entity_id IS NOT NULL AND dispatched_at IS NOT NULL;
SELECT event_bus._recount_event_hours();
SQL
    "${PSQL[@]}" -c "SELECT event_bus.unsubscribe('$wal_sub')" >/dev/null
    [ -n "$paused_subs" ] && "${PSQL[@]}" -c "UPDATE event_bus.module_event_subscriptions SET is_active = true WHERE id = ANY ('{$paused_subs}'::uuid[])" >/dev/null
    col() { # field, rows: the median of that field
        local k="$1"; shift
        printf '%s\n' "$@" | awk -v k="$k" '{print $k}' | median
    }
    plain_m="$(printf '%s\n' "${plain[@]}" | median)"
    emit_m="$(printf '%s\n' "${emitted[@]}" | median)"
    full_b="$(col 1 "${full[@]}")"; full_i="$(col 2 "${full[@]}")"; full_u="$(col 3 "${full[@]}")"
    bare_b="$(col 1 "${bare[@]}")"; bare_i="$(col 2 "${bare[@]}")"; bare_u="$(col 3 "${bare[@]}")"
    ROWS+=("| WAL bytes per event, emitted and delivered once over HTTP, 1 subscription, $WAL_N events | $full_b | INSERT, uuid primary key only $plain_m | $(ratio "$full_b" "$plain_m") | <= 1200 (<= 4.5x), issue 34 |")
    ROWS+=("| index entries / non-HOT row versions per delivered event (pg_waldump) | $full_i / $full_u | - | - | <= 7 / <= 1, issue 34 |")
    ROWS+=("| WAL bytes per event emitted, worker paused | $emit_m | INSERT, uuid primary key only $plain_m | $(ratio "$emit_m" "$plain_m") | - |")
    ROWS+=("| WAL bytes per delivered event, index entries, non-HOT: as above | $full_b, $full_i, $full_u | without the console's status/entity indexes and hourly counts $bare_b, $bare_i, $bare_u | $(ratio "$full_b" "$bare_b") | - |")
fi
true
