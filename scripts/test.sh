#!/usr/bin/env bash
# The whole test suite: unit tests, SQL-surface #[pg_test]s and the integration tests in tests/
# (each of which starts its own throwaway cluster). Run as root on Debian; idempotent.
#
# PostgreSQL versions:
#   PG_VERSIONS         the whole suite on each (default "15 17")
#   PG_SMOKE_VERSIONS   the SQL-level tests (every unit test and #[pg_test]) and one delivery
#                       integration test on each (default: 16 and 18, less any in PG_VERSIONS)
#   e.g. PG_VERSIONS="15 16 17 18" scripts/test.sh    runs everything on all four.
#   PG_UPGRADE_TEST=0   leaves out the pg_upgrade test (from 15 to 17, run after the suites)
#   PACKAGE_TEST=0      leaves out the Debian package test (run last: it builds the 15 package,
#                       installs it in place of the development install, delivers, removes it)
# Prints the time each version took.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_VERSIONS="${PG_VERSIONS-15 17}"
if [ -z "${PG_SMOKE_VERSIONS+x}" ]; then
    PG_SMOKE_VERSIONS=""
    for v in 16 18; do
        [[ " $PG_VERSIONS " == *" $v "* ]] || PG_SMOKE_VERSIONS+="$v "
    done
fi

scripts/install-deps.sh
# shellcheck disable=SC2086 # word splitting intended: a list of versions
scripts/install-pg.sh $PG_VERSIONS $PG_SMOKE_VERSIONS
# the committed upgrade script must be what the install sources generate
scripts/gen-upgrade.sh --check

pg_bin() { # the bin directory of PostgreSQL $1
    if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin; else echo "${EVENT_BUS_PG_ROOT:-/opt/event_bus-pg}/$1/bin"; fi
}
pgdata() { # a data directory for pgrx's test cluster of version $1, writable by postgres
    local d="${EVENT_BUS_TEST_PGDATA:-/var/tmp/event_bus-pgrx-test}-$1"
    mkdir -p "$d"
    chown postgres:postgres "$d"
    echo "$d"
}

# Disk: each version's debug build of the extension and its tests is several GB, and a machine may
# have little free. Builds keep line tables only (backtraces still name file and line) and no
# incremental cache; and when less than EVENT_BUS_MIN_FREE_GB (default 15) is free before the next
# build, the previous version's build is removed first (its dependencies are rebuilt: minutes, not
# a failed run).
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
make_room() {
    local free_gb
    free_gb=$(($(df -Pk . | awk 'NR == 2 { print $4 }') / 1024 / 1024))
    if [ "$free_gb" -lt "${EVENT_BUS_MIN_FREE_GB:-15}" ]; then
        echo "    only $free_gb GB free: removing the previous build (target/debug) first"
        rm -rf target/debug console/target/debug
    fi
}

TIMES=()
for v in $PG_VERSIONS; do
    echo "==> PostgreSQL $v: the whole suite (cargo pgrx test pg$v)"
    start=$SECONDS
    make_room
    # the integration tests start their clusters with the pg_config first on PATH
    PATH="$(pg_bin "$v"):$PATH" cargo pgrx test "pg$v" --runas postgres --pgdata "$(pgdata "$v")"
    TIMES+=("PostgreSQL $v, whole suite: $((SECONDS - start)) s")
done
if [[ " $PG_VERSIONS " == *" 15 "* ]]; then
    echo "==> the console (console/): unit tests, and end to end in headless Chromium on PostgreSQL 15"
    start=$SECONDS
    make_room
    # (the PostgreSQL 15 suite above installed the extension its cluster loads)
    (cd console && PATH="$(pg_bin 15):$PATH" cargo test)
    TIMES+=("console: $((SECONDS - start)) s")
fi
for v in $PG_SMOKE_VERSIONS; do
    echo "==> PostgreSQL $v: unit and SQL-level tests, and one delivery integration test"
    start=$SECONDS
    make_room
    # every test of the library (unit tests and #[pg_test]s live in modules named *tests)
    PATH="$(pg_bin "$v"):$PATH" cargo pgrx test "pg$v" "tests::" --runas postgres --pgdata "$(pgdata "$v")"
    # (cargo pgrx test installed this version's build of the extension)
    PATH="$(pg_bin "$v"):$PATH" cargo test --no-default-features --features "pg$v" --test delivery \
        failing_handler_is_retried_with_backoff_then_succeeds
    TIMES+=("PostgreSQL $v, SQL-level tests + one delivery test: $((SECONDS - start)) s")
done
if [[ " $PG_VERSIONS " == *" 15 "* ]]; then
    echo "==> the README's pgTAP example on PostgreSQL 15 (postgresql-15-pgtap)"
    start=$SECONDS
    PATH="$(pg_bin 15):$PATH" cargo test --test pgtap -- --ignored
    TIMES+=("pgTAP example: $((SECONDS - start)) s")
fi
if [ "${PG_UPGRADE_TEST:-1}" = 1 ]; then
    echo "==> pg_upgrade from PostgreSQL 15 to 17 with event_bus installed"
    start=$SECONDS
    make_room
    # from upstream 15: this machine's Debian 15 writes a column option (pg_attver) no other build
    # knows, which makes pg_upgrade from it fail for any table (see README)
    scripts/install-pg.sh 15-upstream 17
    root="${EVENT_BUS_PG_ROOT:-/opt/event_bus-pg}"
    cargo pgrx install --pg-config "$root/15-upstream/bin/pg_config" >/dev/null
    cargo pgrx install --no-default-features --features pg17 --pg-config "$root/17/bin/pg_config" >/dev/null
    EVENT_BUS_UPGRADE_FROM_BINDIR="$root/15-upstream/bin" EVENT_BUS_UPGRADE_TO_BINDIR="$root/17/bin" \
        cargo test --test pg_upgrade -- --ignored --nocapture
    TIMES+=("pg_upgrade 15 -> 17: $((SECONDS - start)) s")
fi
if [ "${PACKAGE_TEST:-1}" = 1 ]; then
    echo "==> the Debian package: dpkg -i into Debian's PostgreSQL 15, create, deliver, dpkg -r"
    start=$SECONDS
    make_room
    scripts/package.sh 15
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
    deb="target/packages/postgresql-15-event-bus_${version}-1_$(dpkg --print-architecture).deb"
    libdir="$(/usr/bin/pg_config --pkglibdir)"
    extdir="$(/usr/bin/pg_config --sharedir)/extension"
    # a clean PostgreSQL: without the development install the suites used
    rm -f "$libdir/event_bus.so" "$extdir"/event_bus.control "$extdir"/event_bus--*.sql
    dpkg -i "$deb"
    PATH="$(pg_bin 15):$PATH" cargo test --test package -- --ignored
    dpkg -r postgresql-15-event-bus
    left="$(ls "$libdir"/event_bus* "$extdir"/event_bus* 2>/dev/null || true)"
    if [ -n "$left" ] || dpkg -s postgresql-15-event-bus >/dev/null 2>&1; then
        echo "dpkg -r left event_bus behind: $left" >&2
        exit 1
    fi
    echo "    installed, delivered and removed cleanly ($(basename "$deb"))"
    TIMES+=("Debian package: $((SECONDS - start)) s")
fi
echo "==> times"
printf '    %s\n' "${TIMES[@]}"
df -h . | awk 'NR == 2 { print "    disk: " $3 " used, " $4 " free" }'
