# shellcheck shell=bash
# Sourced by bench/run.sh: what emit costs the business write, payload contracts, batch emit.
# It uses run.sh's helpers and variables (want, throughput_median, ratio, ROWS, ...).

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
    # issue 34's row: emit alone (the worker paused: nothing else writes), 4 clients, sync commit off
    "${PSQL[@]}" -c "ALTER SYSTEM SET event_bus.pause = on" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
    declare -A P=()
    for r in $(seq "$RUNS"); do
        for f in emit pk; do P[$f]+="$(tps "$f.sql" 4 off) "; done
    done
    "${PSQL[@]}" -c "ALTER SYSTEM RESET event_bus.pause" -c "SELECT pg_reload_conf()" >/dev/null
    echo "    4 clients, synchronous_commit=off, worker paused: emit: ${P[emit]}; pk: ${P[pk]}" >&2
    pe="$(printf '%s\n' ${P[emit]} | median)"; pp="$(printf '%s\n' ${P[pk]} | median)"
    ROWS+=("| emit_module_event tps, 4 clients, sync commit off, worker paused | $pe | INSERT, primary key only $pp | $(ratio "$pe" "$pp") | >= 0.8, issue 34 |")
    unset P
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
# (a sourced file returns its last status: a section left out must not stop run.sh)
true
