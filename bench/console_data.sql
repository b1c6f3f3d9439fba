-- The console section's data (bench/run.sh console): :events events over 10 tenants, spread evenly
-- over the last 24 hours (the overview's default window holds all of them), as a busy ERP makes them:
-- five modules, a few types each, 98.5% completed, 1.3% failed (a dead delivery each, with its
-- attempt), 0.2% pending; one attempt log row per finished delivery. Written straight into the
-- tables (as fan-out and delivery would leave them), in one transaction.
\set ON_ERROR_STOP on
BEGIN;
SELECT event_bus.subscribe('#', 'bench-console', 'http://127.0.0.1:9/never', p_max_retries => 0) AS sub \gset
-- the worker has nothing to do with this data: nothing is due
UPDATE event_bus.module_event_subscriptions SET is_active = false WHERE id = :'sub';
CREATE TEMP TABLE g AS
SELECT i,
       now() - interval '24 hours' + (i * (86400000.0 / :events)) * interval '1 millisecond' AS ts,
       ('00000000-0000-7000-8000-0000000000' || lpad(to_hex(i % 10), 2, '0'))::uuid AS tenant,
       (ARRAY['sales', 'accounting', 'inventory', 'production', 'pos'])[1 + i % 5] AS module,
       (ARRAY['order.created', 'invoice.posted', 'stock.moved', 'work_order.completed', 'pos.sale'])[1 + (i / 5) % 5] AS type,
       CASE WHEN i % 1000 < 13 THEN 'failed' WHEN i % 1000 < 15 THEN 'pending' ELSE 'completed' END AS status
  FROM generate_series(1, :events) AS s(i);
ALTER TABLE g ADD COLUMN id uuid;
UPDATE g SET id = (lpad(to_hex(floor(extract(epoch FROM ts) * 1000)::bigint), 12, '0') || '7'
                   || substr(md5(i::text), 1, 3) || '8' || substr(md5(i::text), 4, 15))::uuid;
INSERT INTO event_bus.module_events (id, tenant_id, event_type, source_module, entity_type, entity_id, payload,
                                     metadata, status, created_at, dispatched_at, processed_at)
SELECT id, tenant, type, module, split_part(type, '.', 1), 'E-' || (i % 50000),
       jsonb_build_object('n', i, 'total', i % 997, 'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (i % 300), 'qty', 1 + i % 7))),
       '{}'::jsonb, status, ts, ts, CASE WHEN status <> 'pending' THEN ts END
  FROM g ORDER BY id;
INSERT INTO event_bus.module_event_deliveries (id, event_id, subscription_id, tenant_id, status, attempts,
                                               next_attempt_at, last_attempt_at, completed_at, last_http_status,
                                               last_error, created_at)
SELECT event_bus._delivery_id(id, :'sub'), id, :'sub', tenant,
       CASE status WHEN 'failed' THEN 'failed' WHEN 'pending' THEN 'pending' ELSE 'completed' END,
       CASE WHEN status = 'pending' THEN 0 ELSE 1 END,
       CASE WHEN status = 'pending' THEN now() + interval '1 day' ELSE ts END,
       CASE WHEN status <> 'pending' THEN ts END,
       CASE WHEN status <> 'pending' THEN ts END,
       CASE WHEN status = 'failed' THEN 503 WHEN status = 'completed' THEN 200 END,
       CASE WHEN status = 'failed' THEN 'HTTP 503' END, ts
  FROM g ORDER BY id;
INSERT INTO event_bus.module_event_logs (id, event_id, subscription_id, delivery_id, tenant_id, attempt, status,
                                         http_status, error_message, duration_ms, executed_at)
SELECT id, id, :'sub', event_bus._delivery_id(id, :'sub'), tenant, 1,
       CASE WHEN status = 'failed' THEN 'failed' ELSE 'success' END,
       CASE WHEN status = 'failed' THEN 503 ELSE 200 END,
       CASE WHEN status = 'failed' THEN 'HTTP 503' END, 3.5, ts
  FROM g WHERE status <> 'pending' ORDER BY id;
-- written around the triggers that count fanned-out events per hour (they count UPDATEs): counted once
SELECT event_bus._recount_event_hours();
COMMIT;
VACUUM ANALYZE event_bus.module_events, event_bus.module_event_deliveries, event_bus.module_event_logs,
    event_bus._event_hours;
