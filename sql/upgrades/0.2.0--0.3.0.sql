-- event_bus 0.2.0 -> 0.3.0 table changes: run once per database by every upgrade from 0.2.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.3.0 is released. The tables as
-- they are now: sql/tables.sql.

------------------------------------------------------------------------------------------------
-- LISTEN module_event: the worker sends the notifications when it fans the events out (a
-- millisecond after their commit, in its own transaction), not the emitting transaction: NOTIFY's
-- commit-time queue lock serialised every emitting transaction of the database.
------------------------------------------------------------------------------------------------
DROP TRIGGER IF EXISTS module_events_notify ON event_bus.module_events;
DROP FUNCTION IF EXISTS event_bus._notify_module_event();
