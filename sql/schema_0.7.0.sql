-- event_bus 0.7.0 table changes, applied on top of 0.6.0 (sql/schema_0.6.0.sql) both by a fresh install and by
-- the upgrade script sql/event_bus--0.6.0--0.7.0.sql (generated, see scripts/gen-upgrade.sh). Runs once per
-- database. What the Event Monitor (console/) needs from the SQL API.

------------------------------------------------------------------------------------------------
-- Causation and correlation: events emitted by a SQL handler record causation_id / correlation_id
-- in their metadata. An event's children and a correlation's events are found by index; the
-- indexes hold only events that carry the key, so a plain emit does not pay for them.
------------------------------------------------------------------------------------------------
CREATE INDEX IF NOT EXISTS module_events_causation_idx
    ON event_bus.module_events ((metadata ->> 'causation_id'))
    WHERE metadata ? 'causation_id';
CREATE INDEX IF NOT EXISTS module_events_correlation_idx
    ON event_bus.module_events ((metadata ->> 'correlation_id'), id)
    WHERE metadata ? 'correlation_id';

------------------------------------------------------------------------------------------------
-- Functions whose parameters grow (re-created by sql/operations.sql with the old calls still
-- valid: every new parameter has a default and comes last).
------------------------------------------------------------------------------------------------
DROP FUNCTION IF EXISTS event_bus.list_events(uuid, text, text, text, timestamptz, timestamptz, uuid, integer);
DROP FUNCTION IF EXISTS event_bus.retry_failed(uuid, text, text, uuid, timestamptz, timestamptz);
DROP FUNCTION IF EXISTS event_bus.replay_events(text, text, uuid, timestamptz, timestamptz, uuid, boolean);
DROP FUNCTION IF EXISTS event_bus._replay_targets(uuid, text, text, uuid, timestamptz, timestamptz, uuid);
