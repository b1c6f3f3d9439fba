-- Payload contracts: a JSON Schema (draft 2020-12) per event type and version, checked by emit.
-- The Rust side (src/contracts.rs) caches compiled schemas per backend; the statement trigger
-- below tells every backend to reload them when a change commits.

-- The table, event_bus.event_type_schemas, is in sql/tables.sql. Re-runnable: every upgrade loads this file again.

CREATE OR REPLACE FUNCTION event_bus._event_type_schemas_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM event_bus._contracts_changed();
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._event_type_schemas_changed() IS
    'Internal: statement trigger on event_type_schemas; every backend reloads its cached contracts at commit.';

CREATE OR REPLACE TRIGGER event_type_schemas_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON event_bus.event_type_schemas
    FOR EACH STATEMENT EXECUTE FUNCTION event_bus._event_type_schemas_changed();

------------------------------------------------------------------------------------------------
-- API: Admin — register_event_type / unregister_event_type
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.register_event_type(
    p_event_type  text,
    p_version     integer,
    p_schema      jsonb,
    p_description text DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_existing jsonb;
BEGIN
    IF p_event_type IS NULL OR p_version IS NULL OR p_schema IS NULL THEN
        RAISE EXCEPTION 'event_bus: event type, version and schema must not be null'
            USING ERRCODE = '22004',
                  HINT = 'Call register_event_type(''invoice.posted'', 1, ''{"type": "object", ...}'').';
    END IF;
    IF p_version NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'event_bus: schema version % is out of range', p_version
            USING ERRCODE = '22023', HINT = 'Number versions 1, 2, 3, ...';
    END IF;
    PERFORM event_bus._check_event_type(p_event_type);
    PERFORM event_bus._check_schema(p_event_type, p_schema);
    SELECT s.schema INTO v_existing
      FROM event_bus.event_type_schemas s
     WHERE s.event_type = p_event_type AND s.version = p_version
       FOR UPDATE;
    IF FOUND THEN
        IF v_existing = p_schema THEN
            RETURN p_version;   -- the same registration again (a re-run migration): nothing to do
        END IF;
        RAISE EXCEPTION 'event_bus: version % of % is already registered with a different schema', p_version, p_event_type
            USING ERRCODE = '23505',
                  HINT = 'Versions are immutable: register the changed schema as version '
                         || (SELECT max(version) + 1 FROM event_bus.event_type_schemas WHERE event_type = p_event_type)
                         || '.';
    END IF;
    INSERT INTO event_bus.event_type_schemas (event_type, version, schema, description)
    VALUES (p_event_type, p_version, p_schema, p_description);
    RETURN p_version;
END
$$;

COMMENT ON FUNCTION event_bus.register_event_type(text, integer, jsonb, text) IS
    'Register version p_version of the payload schema (JSON Schema draft 2020-12) of p_event_type. From the '
    'commit on, every emit of that type validates its payload against the latest version (or the version '
    'metadata''s schema_version names) and rejects a non-conforming one with SQLSTATE 23514 and the failing '
    'JSON pointer, rolling back the business write with it. Registering the same version with the same '
    'schema again is a no-op; with a different schema it is refused (23505): versions are immutable. '
    'An invalid schema is refused with 22023. Returns the version. event_bus_admin only.';

CREATE OR REPLACE FUNCTION event_bus.unregister_event_type(
    p_event_type text,
    p_version    integer DEFAULT NULL
) RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    WITH d AS (
        DELETE FROM event_bus.event_type_schemas
         WHERE event_type = p_event_type AND (p_version IS NULL OR version = p_version)
        RETURNING 1)
    SELECT count(*)::integer FROM d;
$$;

COMMENT ON FUNCTION event_bus.unregister_event_type(text, integer) IS
    'Remove one version (or, with p_version NULL, every version) of an event type''s schema; returns how '
    'many were removed. With none left the type is free-form again (unless event_bus.strict_event_types). '
    'event_bus_admin only.';

COMMENT ON FUNCTION event_bus.check_payload(text, jsonb, integer) IS
    'Every violation of p_payload against the registered schema of p_event_type (the latest version, or '
    'p_version): the JSON pointer into the payload, the failing schema keyword and the message. No rows: '
    'it conforms. For testing payloads and schemas before emitting; 42704 if the type has no schema.';
COMMENT ON FUNCTION event_bus._has_contract(text) IS
    'Internal: does the event type have a registered schema? (Raises 42704 for unregistered types when '
    'event_bus.strict_event_types is on.) Answers from a per-backend cache.';
COMMENT ON FUNCTION event_bus._check_contract(text, jsonb, text, bigint) IS
    'Internal: raise 23514 with the JSON pointer unless the payload matches the type''s schema.';
COMMENT ON FUNCTION event_bus._check_schema(text, jsonb) IS
    'Internal: raise 22023 unless the value compiles as a JSON Schema (draft 2020-12).';
COMMENT ON FUNCTION event_bus._contracts_changed() IS
    'Internal: drop this backend''s cached contracts now and every backend''s at commit.';

REVOKE ALL ON FUNCTION event_bus.register_event_type(text, integer, jsonb, text),
                       event_bus.unregister_event_type(text, integer),
                       event_bus._contracts_changed(),
                       event_bus._event_type_schemas_changed()
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.register_event_type(text, integer, jsonb, text),
                          event_bus.unregister_event_type(text, integer)
  TO event_bus_admin;
GRANT EXECUTE ON FUNCTION event_bus.check_payload(text, jsonb, integer) TO event_bus_reader, event_bus_admin;
REVOKE ALL ON FUNCTION event_bus.check_payload(text, jsonb, integer) FROM PUBLIC;
