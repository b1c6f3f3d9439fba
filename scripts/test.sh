#!/usr/bin/env bash
# The whole test suite: unit tests, SQL-surface #[pg_test]s and the integration tests in tests/
# (each of which starts its own throwaway cluster). Run as root on Debian; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# the committed upgrade script must be what the install sources generate
scripts/gen-upgrade.sh --check

PGDATA_DIR="${EVENT_BUS_TEST_PGDATA:-/var/tmp/event_bus-pgrx-test}"
mkdir -p "$PGDATA_DIR"
chown postgres:postgres "$PGDATA_DIR"

echo "==> cargo pgrx test pg15"
cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR"
