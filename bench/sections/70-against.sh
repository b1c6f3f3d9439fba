# shellcheck shell=bash
# Sourced by bench/run.sh: this build beside another commit's, in the same cluster configuration.
# It uses run.sh's helpers and variables (want, ratio, median, ROWS, ...).

# --- against: HTTP deliveries/s of this tree and of AGAINST (default 16774c9, 0.10.0), each packaged
# once (cargo pgrx package), installed in turn into PostgreSQL 15 and a cluster of their own (the
# configuration run.sh gives its own), alternating round by round; medians of RUNS rounds. The main
# cluster is stopped meanwhile (its worker would run on the other build's library), and this tree's
# build is installed again at the end.
if want against; then
    AGAINST="${AGAINST:-16774c9}"
    AG_N="${AGAINST_EVENTS:-100000}"
    AG_TREE="${AGAINST_DIR:-/tmp/event_bus-against-$AGAINST}"
    if [ ! -d "$AG_TREE/.git" ]; then
        rm -rf "$AG_TREE"
        git clone -q "$(pwd)" "$AG_TREE"
    fi
    git -C "$AG_TREE" checkout -q --detach "$AGAINST"
    echo "==> against $AGAINST: packaging both builds" >&2
    rm -rf "$WORK/pkg-this" "$WORK/pkg-that"
    cargo pgrx package --pg-config /usr/bin/pg_config --out-dir "$WORK/pkg-this" >/dev/null
    (cd "$AG_TREE" && cargo pgrx package --pg-config /usr/bin/pg_config --out-dir "$WORK/pkg-that" >/dev/null)

    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null
    OTHER_BUILD_INSTALLED=1
    AG_PORT="$(free_port)"
    as_pg "$BINDIR/initdb" -A trust -U postgres -D "$WORK/against-data" >/dev/null
    sed -n '/^port = /!p' "$WORK/data/postgresql.conf" | grep -v '^unix_socket_directories' \
        > "$WORK/against-data/postgresql.conf.new"
    mv "$WORK/against-data/postgresql.conf.new" "$WORK/against-data/postgresql.conf"
    printf "port = %s\nunix_socket_directories = '%s'\n" "$AG_PORT" "$WORK" >> "$WORK/against-data/postgresql.conf"
    chown postgres:postgres "$WORK/against-data/postgresql.conf"
    AG_CONN="host=127.0.0.1 port=$AG_PORT user=postgres dbname=bench_against"
    AG_PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$AG_PORT" -U postgres)
    ag_install() { # pkg dir: that build's library and scripts in place, a fresh database with it
        as_pg "$BINDIR/pg_ctl" -D "$WORK/against-data" -m fast stop >/dev/null 2>&1 || true
        cp -a "$1"/. /
        as_pg "$BINDIR/pg_ctl" -D "$WORK/against-data" -l "$WORK/against.log" -w start >/dev/null
        "${AG_PSQL[@]}" -d postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS bench_against" \
            -c "CREATE DATABASE bench_against" >/dev/null
        "${AG_PSQL[@]}" -d bench_against -c "CREATE EXTENSION event_bus" >/dev/null
        "${AG_PSQL[@]}" -d bench_against -At -c "SELECT extversion FROM pg_extension WHERE extname = 'event_bus'"
    }
    declare -A AG=([this]="" [that]="")
    for r in $(seq "$RUNS"); do
        for side in that this; do
            version="$(ag_install "$WORK/pkg-$side")"
            out="$("$DRIVER" throughput "$AG_CONN" "$SINK" "$AG_N" 1)"
            echo "    against, $side ($version) round $r: $out" >&2
            AG[$side]+="$(sed -n 's/.*deliveries_per_s=\([0-9.]*\).*/\1/p' <<<"$out") "
        done
    done
    as_pg "$BINDIR/pg_ctl" -D "$WORK/against-data" -m fast stop >/dev/null 2>&1 || true
    cp -a "$WORK/pkg-this"/. /
    # and none of the other build's files left beside it (its install and upgrade scripts)
    (cd "$WORK/pkg-that" && find . -type f) | while read -r f; do
        [ -e "$WORK/pkg-this/$f" ] || rm -f "/${f#./}"
    done
    OTHER_BUILD_INSTALLED=
    as_pg "$BINDIR/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start >/dev/null
    this="$(printf '%s\n' ${AG[this]} | median)"
    that="$(printf '%s\n' ${AG[that]} | median)"
    ROWS+=("| HTTP deliveries/s, $AG_N events, against $AGAINST (alternating, $RUNS rounds) | $this | $that | $(ratio "$this" "$that") | >= 1.6 (issue 34) |")
fi
