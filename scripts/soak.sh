#!/usr/bin/env bash
# The long crash soak: 50,000 events emitted and delivered through 9 disruptions (SIGKILL of the
# worker, pg_ctl -m immediate + start, receiver restart, three of each) to a receiver answering
# 200 / 500 / slowly / not at all. Prints sent / delivered / duplicates / lost / stuck and fails
# if anything is lost or stuck. EVENT_BUS_CRASH_EVENTS and EVENT_BUS_CRASH_CYCLES override.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
echo "==> cargo pgrx install --release"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
EVENT_BUS_CRASH_EVENTS="${EVENT_BUS_CRASH_EVENTS:-50000}" EVENT_BUS_CRASH_CYCLES="${EVENT_BUS_CRASH_CYCLES:-9}" \
    cargo test --test crash -- --nocapture 2>&1 | grep -E '^crash suite|^\||^test |panicked|lost|stuck'
