-- Example: the ERP's inter-module subscriptions (the seed table of the original design), as
-- handlers inside the database plus one webhook. Not part of the extension: run it with psql in a
-- database that has event_bus, passing the accounting webhook's URL:
--
--   psql -v accounting_url=https://erp.example.com/hooks/accounting -f examples/erp_subscriptions.sql
--
-- | event type                | module     | handler                                             |
-- |---------------------------|------------|-----------------------------------------------------|
-- | invoice.posted            | inventory  | inventory.deduct_stock (SQL)                        |
-- | sales_order.confirmed     | inventory  | inventory.reserve_stock (SQL)                       |
-- | production.completed      | inventory  | inventory.add_finished_goods (SQL)                  |
-- | pos.transaction_completed | inventory  | inventory.deduct_stock (SQL)                        |
-- | pos.transaction_completed | accounting | accounting.create_journal (SQL, emits journal.created) |
-- | invoice.posted            | accounting | accounting.create_journal (SQL, emits journal.created) |
-- | journal.created           | accounting | :accounting_url (HTTP, signed)                      |
--
-- Payloads carry lines as [{"sku": ..., "qty": ...}]. Each handler runs as its module's own role
-- (never a superuser), in its own subtransaction: a failure rolls back that handler's work only
-- and is retried with backoff.
\set ON_ERROR_STOP on

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'inventory_handler') THEN
        CREATE ROLE inventory_handler NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'accounting_handler') THEN
        CREATE ROLE accounting_handler NOLOGIN;
    END IF;
END $$;

CREATE SCHEMA IF NOT EXISTS inventory;
CREATE SCHEMA IF NOT EXISTS accounting;
GRANT USAGE ON SCHEMA inventory TO inventory_handler;
GRANT USAGE ON SCHEMA accounting TO accounting_handler;

CREATE TABLE IF NOT EXISTS inventory.stock (
    tenant_id uuid    NOT NULL,
    sku       text    NOT NULL,
    on_hand   integer NOT NULL DEFAULT 0,
    reserved  integer NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, sku)
);
CREATE TABLE IF NOT EXISTS accounting.journal (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL,
    source     text NOT NULL,
    source_id  text,
    amount     numeric(14, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source, source_id)          -- idempotent: a redelivered event books nothing twice
);
GRANT SELECT, INSERT, UPDATE ON inventory.stock TO inventory_handler;
GRANT SELECT, INSERT ON accounting.journal TO accounting_handler;

-- stock moves for each payload line: sign -1 deducts, +1 adds; reserve moves "reserved"
CREATE OR REPLACE FUNCTION inventory._move(event event_bus.module_events, sign integer, reserve boolean)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    line jsonb;
    moved jsonb := '[]';
BEGIN
    FOR line IN SELECT * FROM jsonb_array_elements(coalesce(event.payload -> 'lines', '[]')) LOOP
        INSERT INTO inventory.stock AS s (tenant_id, sku, on_hand, reserved)
        VALUES (event.tenant_id, line ->> 'sku',
                CASE WHEN reserve THEN 0 ELSE sign * (line ->> 'qty')::int END,
                CASE WHEN reserve THEN (line ->> 'qty')::int ELSE 0 END)
        ON CONFLICT (tenant_id, sku) DO UPDATE
           SET on_hand = s.on_hand + CASE WHEN reserve THEN 0 ELSE sign * (line ->> 'qty')::int END,
               reserved = s.reserved + CASE WHEN reserve THEN (line ->> 'qty')::int ELSE 0 END;
        moved := moved || jsonb_build_object('sku', line ->> 'sku', 'qty', (line ->> 'qty')::int);
    END LOOP;
    RETURN jsonb_build_object('moved', moved);
END $$;

CREATE OR REPLACE FUNCTION inventory.deduct_stock(event event_bus.module_events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT inventory._move(event, -1, false) $$;
CREATE OR REPLACE FUNCTION inventory.reserve_stock(event event_bus.module_events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT inventory._move(event, 0, true) $$;
CREATE OR REPLACE FUNCTION inventory.add_finished_goods(event event_bus.module_events) RETURNS jsonb
LANGUAGE sql AS $$ SELECT inventory._move(event, 1, false) $$;

-- books a journal entry and tells the world: the emit records this event as its cause
CREATE OR REPLACE FUNCTION accounting.create_journal(event event_bus.module_events) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_journal uuid;
BEGIN
    INSERT INTO accounting.journal (tenant_id, source, source_id, amount)
    VALUES (event.tenant_id, event.event_type, event.entity_id, coalesce((event.payload ->> 'total')::numeric, 0))
    ON CONFLICT (source, source_id) DO NOTHING
    RETURNING id INTO v_journal;
    IF v_journal IS NULL THEN
        RETURN jsonb_build_object('duplicate', true);
    END IF;
    PERFORM event_bus.emit_module_event(event.tenant_id, 'journal.created', 'accounting', 'journal', v_journal,
        jsonb_build_object('amount', (event.payload ->> 'total')::numeric, 'source', event.event_type,
                           'source_id', event.entity_id));
    RETURN jsonb_build_object('journal_id', v_journal);
END $$;

SELECT event_bus.subscribe(t.pattern, t.module, p_handler_function => t.fn, p_run_as => t.role,
                           p_description => t.what)
  FROM (VALUES
      ('invoice.posted',            'inventory',  'inventory.deduct_stock',       'inventory_handler',  'deduct stock'),
      ('sales_order.confirmed',     'inventory',  'inventory.reserve_stock',      'inventory_handler',  'reserve stock'),
      ('production.completed',      'inventory',  'inventory.add_finished_goods', 'inventory_handler',  'add finished goods'),
      ('pos.transaction_completed', 'inventory',  'inventory.deduct_stock',       'inventory_handler',  'deduct stock'),
      ('pos.transaction_completed', 'accounting', 'accounting.create_journal',    'accounting_handler', 'create journal'),
      ('invoice.posted',            'accounting', 'accounting.create_journal',    'accounting_handler', 'create journal')
  ) AS t(pattern, module, fn, role, what)
 WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions s
                    WHERE s.event_type = t.pattern AND s.handler_function = t.fn);

SELECT event_bus.subscribe('journal.created', 'accounting', :'accounting_url',
                           p_secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                           p_description => 'journal entries to the accounting service')
 WHERE NOT EXISTS (SELECT 1 FROM event_bus.module_event_subscriptions WHERE event_type = 'journal.created');
