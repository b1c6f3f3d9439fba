-- event_bus 0.7.0 -> 0.8.0 table changes: run once per database by every upgrade from 0.7.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.8.0 is released. The tables as
-- they are now: sql/tables.sql. No table is rewritten.

------------------------------------------------------------------------------------------------
-- The event row is written once after emit, not twice: the fan-out no longer marks an event whose
-- deliveries it created leased (the common case); its deliveries say it was taken, and the record
-- of its first outcome writes dispatched_at with the status (event_bus._refresh_event_status).
------------------------------------------------------------------------------------------------
COMMENT ON COLUMN event_bus.module_events.dispatched_at IS
    'When the worker fanned the event out to its matching subscriptions. NULL until then, and for an event '
    'whose deliveries were all sent at once, until the first outcome is recorded (milliseconds later, or when '
    'the attempt times out): such an event already has its deliveries (see module_event_deliveries).';
