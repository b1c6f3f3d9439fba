-- Testing a module's events with pgTAP and event_bus's test helpers: everything happens in one
-- transaction that is rolled back, so no worker ever sees it and nothing is left behind.
--   psql -X -d yourdb -f examples/pgtap_test.sql        (or: pg_prove -d yourdb examples/pgtap_test.sql)
-- Needs pgTAP (Debian: postgresql-15-pgtap) and a role that may subscribe (event_bus_admin).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
SELECT plan(7);

-- The module under test: posting an invoice emits invoice.posted from a trigger ...
CREATE SCHEMA acc;
CREATE TABLE acc.invoices (
    id        integer PRIMARY KEY,
    tenant_id uuid    NOT NULL,
    number    text    NOT NULL,
    total     numeric NOT NULL,
    status    text    NOT NULL DEFAULT 'draft'
);
CREATE FUNCTION acc.emit_posted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'posted' AND OLD.status <> 'posted' THEN
        PERFORM event_bus.emit_module_event(NEW.tenant_id, 'invoice.posted', 'accounting', 'invoice', NEW.id::text,
                                            jsonb_build_object('number', NEW.number, 'total', NEW.total));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER invoices_posted AFTER UPDATE ON acc.invoices
    FOR EACH ROW EXECUTE FUNCTION acc.emit_posted();

-- ... and a SQL handler that books it, run as its own role
CREATE ROLE acc_booking NOLOGIN;
CREATE TABLE acc.ledger (invoice_id integer, amount numeric);
GRANT USAGE ON SCHEMA acc TO acc_booking;
GRANT INSERT ON acc.ledger TO acc_booking;
CREATE FUNCTION acc.book(e event_bus.module_events) RETURNS void LANGUAGE sql AS $$
    INSERT INTO acc.ledger VALUES (e.entity_id::integer, (e.payload ->> 'total')::numeric)
$$;
SELECT event_bus.subscribe('invoice.posted', 'accounting', p_handler_function => 'acc.book',
                           p_run_as => 'acc_booking');

-- The test.
INSERT INTO acc.invoices (id, tenant_id, number, total) VALUES (1, '11111111-1111-1111-1111-111111111111', 'INV-1', 1500);
UPDATE acc.invoices SET status = 'posted' WHERE id = 1;

SELECT ok(event_bus.assert_emitted('invoice.posted', '{"number": "INV-1"}', 1),
          'posting an invoice emits invoice.posted once');
SELECT is((SELECT payload ->> 'total' FROM event_bus.emitted_events('invoice.posted')), '1500',
          'with its total');
SELECT throws_ok($$SELECT event_bus.assert_emitted('invoice.voided')$$, 'P0004', NULL,
                 'and no invoice.voided');

UPDATE acc.invoices SET total = 1600 WHERE id = 1;
SELECT ok(event_bus.assert_emitted('invoice.#', '{}', 1), 'editing a posted invoice emits nothing more');

-- Run the handlers now, in this transaction, beside a mock that records what it receives.
CREATE TEMP TABLE mock AS SELECT event_bus.mock_handler('invoice.*') AS id;
SELECT results_eq($$SELECT success FROM event_bus.run_handlers()$$, ARRAY[true, true],
                  'both handlers ran and succeeded');
SELECT is((SELECT amount FROM acc.ledger WHERE invoice_id = 1), 1500::numeric,
          'the booking handler wrote the ledger row');
SELECT is((SELECT count(*)::integer FROM event_bus.mock_calls((SELECT id FROM mock))), 1,
          'the mock received the event once');

SELECT * FROM finish();
ROLLBACK;
