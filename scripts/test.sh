#!/usr/bin/env bash
# The test command, in tiers. Run as root on Debian; idempotent; installs what it needs first.
#
#   scripts/test.sh            the quick tier (what a newcomer runs; at most 10 minutes once built):
#                              the pure logic's tests (cargo test -p event_bus_core, no Postgres), then
#                              on PostgreSQL 15 the unit tests and every #[pg_test], the integration tests
#                              that are not long-running, the console's tests (its JSON API, the browser,
#                              the TypeScript client and React hooks with their example), and the
#                              docs built with their links checked and their runnable examples run
#   scripts/test.sh --all      everything (what .ci/run calls): the whole suite on PG_VERSIONS (default
#                              "15 17"), the SQL-level tests and one delivery test on the others of 16 and 18
#                              (PG_SMOKE_VERSIONS), the console, the docs, the pgTAP example, the demo kept
#                              and checked a minute later, pg_upgrade
#                              15 -> 17 (PG_UPGRADE_TEST=0 leaves it out) and the Debian package (PACKAGE_TEST=0)
#   scripts/test.sh TIER...    one or more tiers alone, on PostgreSQL 15: quick, crash, brokers, isolation,
#                              pool, failover, upgrade, console, docs, pgtap, pg_upgrade, demo, package
#
# Each part prints its time; the end prints every part's time and "N passed, N failed" over all of them.
# A failing part does not stop the others; the command fails if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# the integration tests (tests/*.rs) of the quick tier; the slow ones are tiers of their own
QUICK_TESTS="delivery dump faults filters idempotency notify operations ordering request security unsubscribe docs"
SLOW_TIERS="crash brokers isolation pool failover upgrade"

TIERS=()
ALL=0
for arg in "$@"; do
    case "$arg" in
        --all) ALL=1 ;;
        quick | crash | brokers | isolation | pool | failover | upgrade | console | docs | pgtap | pg_upgrade | demo | package)
            TIERS+=("$arg") ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown tier $arg (see scripts/test.sh --help)" >&2; exit 2 ;;
    esac
done
[ "$ALL" = 1 ] || [ "${#TIERS[@]}" -gt 0 ] || TIERS=(quick)

if [ "$ALL" = 1 ]; then
    PG_VERSIONS="${PG_VERSIONS-15 17}"
    if [ -z "${PG_SMOKE_VERSIONS+x}" ]; then
        PG_SMOKE_VERSIONS=""
        for v in 16 18; do
            [[ " $PG_VERSIONS " == *" $v "* ]] || PG_SMOKE_VERSIONS+="$v "
        done
    fi
else
    PG_VERSIONS=15
    PG_SMOKE_VERSIONS=""
fi

set -e
scripts/install-deps.sh
# shellcheck disable=SC2086 # word splitting intended: a list of versions
scripts/install-pg.sh $PG_VERSIONS $PG_SMOKE_VERSIONS
set +e

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
        rm -rf target/debug
    fi
}

LOGS="$(mktemp -d /tmp/event_bus-test.XXXXXX)"
TIMES=()
FAILED_PARTS=()
PASSED=0
FAILED=0
# part NAME COMMAND...: run it, its output shown and kept; count its tests; note its time
part() {
    local name="$1"
    shift
    echo "==> $name"
    local start=$SECONDS log
    log="$LOGS/$(echo "$name" | tr -c 'A-Za-z0-9' '_').log"
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    local counts
    counts=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
                  END { print p + 0, f + 0 }' "$log")
    PASSED=$((PASSED + ${counts% *}))
    FAILED=$((FAILED + ${counts#* }))
    if [ "$rc" -ne 0 ]; then
        FAILED_PARTS+=("$name")
        TIMES+=("$name: $((SECONDS - start)) s (FAILED, exit $rc)")
    else
        TIMES+=("$name: $((SECONDS - start)) s")
    fi
    return 0
}

# cargo pgrx test for PostgreSQL $1 with the given filter: builds the extension with its #[pg_test]s,
# installs it into that PostgreSQL (what the integration tests load) and runs the tests that match
pgrx_test() {
    local v="$1"
    shift
    make_room
    # the integration tests start their clusters with the pg_config first on PATH
    PATH="$(pg_bin "$v"):$PATH" cargo pgrx test "pg$v" --runas postgres --pgdata "$(pgdata "$v")" "$@"
}
# integration test binaries (tests/NAME.rs) against the PostgreSQL 15 install, built as cargo pgrx
# test builds them (no second build)
integration15() {
    local args=()
    for t in "$@"; do args+=(--test "$t"); done
    PATH="$(pg_bin 15):$PATH" cargo test --no-default-features --features "pg15 pg_test" "${args[@]}"
}
installed15=0
install15() { # the extension installed into PostgreSQL 15 (as cargo pgrx test builds it), once per run
    if [ "$installed15" = 0 ]; then
        part "build and install for PostgreSQL 15" \
            cargo pgrx install --no-default-features --features "pg15 pg_test" --pg-config /usr/bin/pg_config
        installed15=1
    fi
}
docs_build() {
    mdbook build docs && python3 scripts/check-docs.py
}
core_tests() { # the pure logic, without Postgres
    cargo test -p event_bus_core
}
typescript_build() {
    # the TypeScript packages (types generated from the committed OpenAPI document, tsc, npm pack) and the
    # React example, from their lock files; console/tests/typescript.rs runs their tests and opens the
    # example against a real console
    (cd clients/typescript && npm ci --no-audit --no-fund && npm run build && npm run pack) &&
        (cd examples/react-monitor && npm ci --no-audit --no-fund && npm run build)
}
console_tests() {
    make_room
    typescript_build || return 1
    # the console's tests (the JSON API, the browser, the TypeScript packages) create the extension in a
    # cluster of PostgreSQL 15
    PATH="$(pg_bin 15):$PATH" cargo test -p event-bus-console
}
pgtap_test() {
    PATH="$(pg_bin 15):$PATH" cargo test --no-default-features --features "pg15 pg_test" --test pgtap -- --ignored
}
pg_upgrade_test() {
    make_room
    # from upstream 15: this machine's Debian 15 writes a column option (pg_attver) no other build
    # knows, which makes pg_upgrade from it fail for any table (see docs/src/operations)
    scripts/install-pg.sh 15-upstream 17 || return 1
    local root="${EVENT_BUS_PG_ROOT:-/opt/event_bus-pg}"
    cargo pgrx install --pg-config "$root/15-upstream/bin/pg_config" >/dev/null || return 1
    cargo pgrx install --no-default-features --features pg17 --pg-config "$root/17/bin/pg_config" >/dev/null || return 1
    EVENT_BUS_UPGRADE_FROM_BINDIR="$root/15-upstream/bin" EVENT_BUS_UPGRADE_TO_BINDIR="$root/17/bin" \
        cargo test --test pg_upgrade -- --ignored --nocapture
}
# the README's first command, kept: a minute after it ends its subscriptions still deliver (their
# targets were left running), new events complete without a dead letter, and 'stop' stops it all
demo_test() {
    local dir="${EVENT_BUS_DEMO_DIR:-/tmp/event_bus-demo}"
    EVENT_BUS_DEMO_KEEP=1 scripts/demo.sh || return 1
    local port
    port="$(sed -n 's/^port = //p' "$dir/data/postgresql.conf" | tail -1)"
    local psql=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d demo)
    local dead_before
    dead_before="$("${psql[@]}" -c "SELECT count(*) FROM event_bus.dead_letters")" || return 1
    echo "    the demo ended with failed deliveries (dead letters): $dead_before, the dead endpoint's; a minute later:"
    sleep 60
    "${psql[@]}" -c "UPDATE invoices SET status = 'posted' WHERE number = 'INV-002'" || return 1
    "${psql[@]}" -c "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'pos.transaction_completed',
                         'pos', 'pos_transaction', gen_random_uuid(), '{\"total\": 1}')" >/dev/null || return 1
    local left=1
    for _ in $(seq 600); do
        left="$("${psql[@]}" -c "SELECT count(*) FROM event_bus.module_events WHERE status NOT IN ('completed', 'failed')")"
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    local dead_after open
    dead_after="$("${psql[@]}" -c "SELECT count(*) FROM event_bus.dead_letters")"
    open="$("${psql[@]}" -c "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE breaker_open_until IS NOT NULL")"
    echo "    events still open: $left, dead letters: $dead_after, open breakers: $open"
    local pids
    pids="$(awk '{print $1}' "$dir/kept-processes")"
    scripts/demo.sh stop || return 1
    local alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive+="$pid "; done
    [ -z "$alive" ] || { echo "    still running after 'scripts/demo.sh stop': $alive" >&2; return 1; }
    [ ! -f "$dir/data/postmaster.pid" ] || { echo "    the cluster is still running" >&2; return 1; }
    [ "$left" = 0 ] && [ "$dead_after" = "$dead_before" ] && [ "$open" = 0 ]
}
package_test() {
    make_room
    scripts/package.sh 15 || return 1
    local version deb libdir extdir left
    version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
    deb="target/packages/postgresql-15-event-bus_${version}-1_$(dpkg --print-architecture).deb"
    libdir="$(/usr/bin/pg_config --pkglibdir)"
    extdir="$(/usr/bin/pg_config --sharedir)/extension"
    # a clean PostgreSQL: without the development install the suites used
    rm -f "$libdir/event_bus.so" "$extdir"/event_bus.control "$extdir"/event_bus--*.sql
    installed15=0
    dpkg -i "$deb" || return 1
    PATH="$(pg_bin 15):$PATH" cargo test --test package -- --ignored || return 1
    dpkg -r postgresql-15-event-bus || return 1
    left="$(ls "$libdir"/event_bus* "$extdir"/event_bus* 2>/dev/null || true)"
    if [ -n "$left" ] || dpkg -s postgresql-15-event-bus >/dev/null 2>&1; then
        echo "dpkg -r left event_bus behind: $left" >&2
        return 1
    fi
    echo "    installed, delivered and removed cleanly ($(basename "$deb"))"
}

if [ "$ALL" = 1 ]; then
    part "the pure logic (core/, no Postgres)" core_tests
    for v in $PG_VERSIONS; do
        # every test: unit, #[pg_test], every integration test (quick and slow tiers alike)
        part "PostgreSQL $v: the whole suite" pgrx_test "$v"
        [ "$v" = 15 ] && installed15=1
    done
    if [[ " $PG_VERSIONS " == *" 15 "* ]]; then
        part "the console (API, browser and TypeScript tests on PostgreSQL 15)" console_tests
    fi
    part "the docs: mdbook build, links" docs_build
    for v in $PG_SMOKE_VERSIONS; do
        part "PostgreSQL $v: unit and SQL-level tests" pgrx_test "$v" "tests::"
        # (cargo pgrx test installed this version's build of the extension)
        part "PostgreSQL $v: one delivery test" env PATH="$(pg_bin "$v"):$PATH" \
            cargo test --no-default-features --features "pg$v" --test delivery \
            failing_handler_is_retried_with_backoff_then_succeeds
    done
    if [[ " $PG_VERSIONS " == *" 15 "* ]]; then
        part "the README's pgTAP example on PostgreSQL 15" pgtap_test
        # (installs the release build of the extension into PostgreSQL 15)
        part "the demo, kept: healthy a minute later, then stopped" demo_test
    fi
    [ "${PG_UPGRADE_TEST:-1}" = 1 ] && part "pg_upgrade from PostgreSQL 15 to 17" pg_upgrade_test
    # last: it replaces the development install of PostgreSQL 15 with the package
    [ "${PACKAGE_TEST:-1}" = 1 ] && part "the Debian package: install, deliver, remove" package_test
else
    for tier in "${TIERS[@]}"; do
        case "$tier" in
            quick)
                part "the pure logic (core/, no Postgres)" core_tests
                part "PostgreSQL 15: unit tests and every #[pg_test]" pgrx_test 15 "tests::"
                installed15=1
                # shellcheck disable=SC2086 # a list of test names
                part "PostgreSQL 15: the quick integration tests" integration15 $QUICK_TESTS
                part "the console (API, browser and TypeScript tests on PostgreSQL 15)" console_tests
                part "the docs: mdbook build, links" docs_build
                ;;
            crash | brokers | isolation | pool | failover | upgrade)
                install15
                part "PostgreSQL 15: $tier" integration15 "$tier"
                ;;
            console) install15; part "the console (API, browser and TypeScript tests on PostgreSQL 15)" console_tests ;;
            docs)
                install15
                part "the docs: mdbook build, links" docs_build
                part "the docs: runnable examples and the settings reference" integration15 docs
                ;;
            pgtap) install15; part "the README's pgTAP example on PostgreSQL 15" pgtap_test ;;
            pg_upgrade) part "pg_upgrade from PostgreSQL 15 to 17" pg_upgrade_test ;;
            demo) part "the demo, kept: healthy a minute later, then stopped" demo_test ;;
            package) part "the Debian package: install, deliver, remove" package_test ;;
        esac
    done
fi

echo "==> times"
printf '    %s\n' "${TIMES[@]}"
df -h . | awk 'NR == 2 { print "    disk: " $3 " used, " $4 " free" }'
echo "==> $PASSED passed, $FAILED failed"
if [ "${#FAILED_PARTS[@]}" -gt 0 ]; then
    printf '    failed part: %s\n' "${FAILED_PARTS[@]}"
    exit 1
fi
