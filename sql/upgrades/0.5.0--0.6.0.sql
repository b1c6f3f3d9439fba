-- event_bus 0.5.0 -> 0.6.0 table changes: run once per database by every upgrade from 0.5.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.6.0 is released. The tables as
-- they are now: sql/tables.sql. Nothing here rewrites a table.

------------------------------------------------------------------------------------------------
-- module_events: the row checks leave the per-statement path. PostgreSQL reads a table's CHECK
-- constraints from their stored text and plans them again for every INSERT statement: with four
-- of them that was 12% of an emit's CPU (perf, 4 clients). Every path that writes an event row
-- checks the same rules before inserting (emit_module_event / emit_module_events / publish_event /
-- request: the payload and metadata are JSON objects, else 22023; the worker's own inserts build
-- objects), status and max_retries are written only by event_bus's functions, and the table takes
-- no writes from anyone else (nothing is granted on it).

------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_events
    DROP CONSTRAINT IF EXISTS module_events_status_check,
    DROP CONSTRAINT IF EXISTS module_events_max_retries_check,
    DROP CONSTRAINT IF EXISTS module_events_payload_object,
    DROP CONSTRAINT IF EXISTS module_events_metadata_object;
