-- event_bus 0.11.0 -> 0.12.0 table changes: run once per database by every upgrade from 0.11.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.12.0 is released. The tables as
-- they are now: sql/tables.sql. No table is rewritten.

------------------------------------------------------------------------------------------------
-- Event leases (delivery core v3, issue 34): the fan-out leases each event it takes; an event whose
-- deliveries are all plain first attempts gets no delivery rows until their outcomes are recorded.
-- Deliveries in flight at the upgrade keep their rows and are recorded as before.
------------------------------------------------------------------------------------------------
CREATE UNLOGGED TABLE event_bus._event_leases (
    event_id         uuid        NOT NULL,
    holder           uuid        NOT NULL,
    lease_end        timestamptz NOT NULL,
    taken_at         timestamptz NOT NULL DEFAULT now(),
    subscription_ids uuid[]      NOT NULL,
    CONSTRAINT _event_leases_pkey PRIMARY KEY (event_id)
);
COMMENT ON TABLE event_bus._event_leases IS
    'Internal: events a worker (holder: a process) has fanned out and whose first attempts are in flight, '
    'until lease_end; subscription_ids: the subscriptions those attempts go to, without delivery rows '
    'until their outcomes are recorded. Unlogged: emptied by crash recovery (the events are fanned out again).';
COMMENT ON COLUMN event_bus.module_events.dispatched_at IS
    'When the worker fanned the event out to its matching subscriptions. NULL until then, and for an event '
    'whose deliveries were all sent at once, until the first outcome is recorded (milliseconds later, or when '
    'the attempt times out): such an event is leased (its first attempts in flight have no delivery rows until '
    'their outcomes are recorded) or already has its deliveries (see module_event_deliveries).';

------------------------------------------------------------------------------------------------
-- Attempts are counted per subscription too (subscription_health reads the last hour from the counts),
-- and the attempt log loses its index on (subscription_id, executed_at): one index entry less per
-- attempt. The last hour's counts are taken again from the log, per subscription, so subscription_health
-- reads the same right after the upgrade.
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus._attempt_minutes ADD COLUMN subscription_id uuid;
COMMENT ON TABLE event_bus._attempt_minutes IS
    'Internal: delivery attempts that succeeded / failed per tenant, subscription and minute (of executed_at), '
    'written by a statement trigger on module_event_logs; read by delivery_timeline() and subscription_health. '
    'Kept 32 days.';
COMMENT ON COLUMN event_bus._attempt_minutes.subscription_id IS
    'The attempts'' subscription (NULL for attempts counted before 0.12.0, and for request() records).';
CREATE INDEX _attempt_minutes_subscription_idx ON event_bus._attempt_minutes (subscription_id, minute);
DELETE FROM event_bus._attempt_minutes m WHERE m.minute >= date_trunc('minute', now() - interval '61 minutes');
INSERT INTO event_bus._attempt_minutes (tenant_id, subscription_id, minute, succeeded, failed, folded)
SELECT l.tenant_id, l.subscription_id, date_trunc('minute', l.executed_at),
       count(*) FILTER (WHERE l.status = 'success'), count(*) FILTER (WHERE l.status <> 'success'), true
  FROM event_bus.module_event_logs l
 WHERE l.executed_at >= date_trunc('minute', now() - interval '61 minutes')
 GROUP BY 1, 2, 3;
DROP INDEX event_bus.module_event_logs_subscription_idx;

------------------------------------------------------------------------------------------------
-- What 0.11.0 kept under its old names for one release goes: dead_letters loses dead_at (failed_at is
-- the same; the view is created again from sql/monitor.sql without it), metrics() the counter
-- event_bus_deliveries_dead_total, subscribe() the alias event_bus.delivery.dead.
------------------------------------------------------------------------------------------------
DROP VIEW IF EXISTS event_bus.dead_letters;
