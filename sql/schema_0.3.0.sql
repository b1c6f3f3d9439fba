-- event_bus 0.3.0 changes, applied on top of 0.2.0 (sql/schema_0.2.0.sql) both by a fresh install and by the
-- upgrade script sql/event_bus--0.2.0--0.3.0.sql (generated, see scripts/gen-upgrade.sh). Runs once per database.

------------------------------------------------------------------------------------------------
-- LISTEN module_event: the worker sends the notifications when it fans the events out (a
-- millisecond after their commit, in its own transaction), not the emitting transaction: NOTIFY's
-- commit-time queue lock serialised every emitting transaction of the database.
------------------------------------------------------------------------------------------------
DROP TRIGGER IF EXISTS module_events_notify ON event_bus.module_events;
DROP FUNCTION IF EXISTS event_bus._notify_module_event();
