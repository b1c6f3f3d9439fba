#!/usr/bin/env bash
# Demo: install what is missing, build and install event_bus (release), start a throwaway
# PostgreSQL 15 cluster with the extension preloaded, and show an ERP flow: an invoices table whose
# AFTER UPDATE trigger emits invoice.posted, subscriptions, delivery to a local HTTP handler, the
# attempt log. Run as root on Debian; idempotent. EVENT_BUS_DEMO_KEEP=1 keeps the cluster running.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "==> cargo pgrx install --release"
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null

BINDIR="$(/usr/bin/pg_config --bindir)"
DEMO_DIR="${EVENT_BUS_DEMO_DIR:-/tmp/event_bus-demo}"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"

as_pg() { runuser -u postgres -- "$@"; }

if [ -f "$DEMO_DIR/data/postmaster.pid" ]; then
    as_pg "$BINDIR/pg_ctl" -D "$DEMO_DIR/data" -m immediate stop >/dev/null 2>&1 || true
fi
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

stop_cluster() {
    if [ -z "${EVENT_BUS_DEMO_KEEP:-}" ]; then
        as_pg "$BINDIR/pg_ctl" -D "$DEMO_DIR/data" -m fast stop >/dev/null 2>&1 || true
    else
        echo "==> cluster kept running: psql -h 127.0.0.1 -p $PORT -U postgres demo"
    fi
    [ -n "${HANDLER_PID:-}" ] && kill "$HANDLER_PID" 2>/dev/null || true
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
    status    text NOT NULL DEFAULT 'draft'
);
CREATE FUNCTION invoices_emit_posted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'posted' AND OLD.status IS DISTINCT FROM 'posted' THEN
        PERFORM event_bus.emit_module_event(
            NEW.tenant_id, 'invoice.posted', 'accounting', 'invoice', NEW.id,
            jsonb_build_object('invoice_number', NEW.number, 'total', NEW.total),
            jsonb_build_object('actor', current_user));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_posted AFTER UPDATE ON invoices
    FOR EACH ROW EXECUTE FUNCTION invoices_emit_posted();

INSERT INTO invoices (tenant_id, number, total) VALUES
    ('11111111-1111-1111-1111-111111111111', 'INV-001', 1500.00),
    ('11111111-1111-1111-1111-111111111111', 'INV-002',  240.50),
    ('22222222-2222-2222-2222-222222222222', 'INV-100',   99.99);
SQL

HANDLER_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
python3 scripts/demo_handler.py "$HANDLER_PORT" &
HANDLER_PID=$!
for _ in $(seq 100); do
    python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $HANDLER_PORT), 1)" 2>/dev/null && break
    sleep 0.05
done

echo "==> subscriptions: accounting over HTTP (signed), a flaky audit webhook, inventory as a SQL function"
"${PSQL[@]}" -v handler="http://127.0.0.1:$HANDLER_PORT" <<'SQL'
-- inventory reacts inside the database, as its own unprivileged role
CREATE ROLE inventory_handler NOLOGIN;
CREATE TABLE stock (sku text PRIMARY KEY, on_hand integer NOT NULL);
INSERT INTO stock VALUES ('WIDGET', 100);
GRANT SELECT, UPDATE ON stock TO inventory_handler;
CREATE SCHEMA inventory;
GRANT USAGE ON SCHEMA inventory TO inventory_handler;
CREATE FUNCTION inventory.deduct_stock(event event_bus.module_events) RETURNS jsonb
LANGUAGE sql AS $$
    UPDATE public.stock SET on_hand = on_hand - 1 WHERE sku = 'WIDGET'
    RETURNING jsonb_build_object('sku', sku, 'on_hand', on_hand, 'for', event.payload->>'invoice_number');
$$;
GRANT USAGE ON SCHEMA event_bus TO inventory_handler;

\set QUIET on
SELECT event_bus.subscribe('invoice.posted', 'inventory', p_handler_function => 'inventory.deduct_stock',
                           p_run_as => 'inventory_handler') AS inventory_sub \gset
SELECT event_bus.subscribe('invoice.*', 'accounting', :'handler' || '/accounting',
                           p_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') AS accounting_sub \gset
SELECT event_bus.subscribe('#', 'audit', :'handler' || '/flaky', p_max_retries => 5) AS audit_sub \gset
SELECT event_type AS pattern, handler_module, handler_kind, coalesce(handler_url, handler_function) AS target
  FROM event_bus.module_event_subscriptions ORDER BY created_at;
SQL

echo "==> posting three invoices (one in a transaction that rolls back)"
"${PSQL[@]}" <<'SQL'
UPDATE invoices SET status = 'posted' WHERE number IN ('INV-001', 'INV-100');
BEGIN;
UPDATE invoices SET status = 'posted' WHERE number = 'INV-002';
ROLLBACK;
SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'pos.transaction_completed',
                                   'pos', 'pos_transaction', gen_random_uuid(), '{"total": 12.5}');
SQL

echo "==> a rejected emit (payload is not an object) writes nothing:"
"${PSQL[@]}" -c "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'invoice.posted', 'accounting', 'invoice', 'x', '[1,2]')" 2>&1 | sed 's/^/    /' || true

echo "==> waiting for the worker to deliver everything (the flaky audit hook fails twice per event)"
for _ in $(seq 200); do
    left="$("${PSQL[@]}" -At -c "SELECT count(*) FROM event_bus.module_events WHERE status NOT IN ('completed', 'failed')")"
    [ "$left" = 0 ] && break
    sleep 0.1
done

echo "==> events (status derived from their deliveries)"
"${PSQL[@]}" -c "SELECT id, tenant_id, event_type, source_module, payload, status, retry_count
                   FROM event_bus.module_events ORDER BY id"
echo "==> stock after the inventory SQL handler ran (100 - 2 posted invoices)"
"${PSQL[@]}" -c "SELECT * FROM stock"
echo "==> attempt log"
"${PSQL[@]}" -c "SELECT e.event_type, s.handler_module, l.attempt, l.status, l.http_status, l.error_message,
                        round(l.duration_ms::numeric, 1) AS ms, left(l.response::text, 60) AS response
                   FROM event_bus.module_event_logs l
                   JOIN event_bus.module_events e ON e.id = l.event_id
                   JOIN event_bus.module_event_subscriptions s ON s.id = l.subscription_id
                  ORDER BY e.id, s.handler_module, l.attempt"
echo "==> pattern matching"
"${PSQL[@]}" -c "SELECT p AS pattern, t AS event_type, event_bus.matches(p, t)
                   FROM (VALUES ('invoice.*', 'invoice.posted'), ('invoice.*', 'invoice.line.added'),
                                ('invoice.#', 'invoice.line.added'), ('#', 'pos.transaction_completed')) v(p, t)"
