-- event_bus 0.12.0 -> 0.13.0 table changes: run once per database by every upgrade from 0.12.0 or earlier
-- (build.rs puts them in the generated upgrade scripts). Frozen once 0.13.0 is released. The tables as
-- they are now: sql/tables.sql. No table is rewritten; two indexes are built again (ALTER EXTENSION holds
-- module_events and module_event_logs against writes meanwhile: about a second per million rows each).

------------------------------------------------------------------------------------------------
-- Delivery core v3, step 2 (issue 34): two index entries less per delivered event.
-- The tenant index holds fanned-out events only, as the type, status and entity indexes do: the UPDATE
-- that fans an event out writes a new version into every index anyway, so emit's INSERT no longer pays
-- for it (list_events reads a tenant's events not yet fanned out through the undispatched index).
------------------------------------------------------------------------------------------------
DROP INDEX event_bus.module_events_tenant_id_idx;
CREATE INDEX module_events_tenant_id_idx ON event_bus.module_events (tenant_id, id)
    WHERE dispatched_at IS NOT NULL;

------------------------------------------------------------------------------------------------
-- The attempt log is keyed by (event_id, id): it is read by event, never by its row id alone, so its
-- primary key serves those reads and the separate index on event_id goes (one entry per attempt, not two).
------------------------------------------------------------------------------------------------
ALTER TABLE event_bus.module_event_logs
    DROP CONSTRAINT module_event_logs_pkey,
    ADD CONSTRAINT module_event_logs_pkey PRIMARY KEY (event_id, id);
DROP INDEX event_bus.module_event_logs_event_idx;
