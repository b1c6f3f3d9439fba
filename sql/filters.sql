-- event_bus content filters: a subscription's SQL/JSON path predicate over the event (0.11.0).
-- Re-runnable (CREATE OR REPLACE): loaded after sql/roles.sql and before sql/api.sql (subscribe checks
-- its p_filter with _check_filter) by a fresh install and by every upgrade script. The fan-out
-- (src/worker/statements/fan_out.rs), replay (sql/operations.sql), a request's choice of responder
-- (sql/api.sql) and run_handlers (sql/testing.sql) evaluate filters with the functions below.

------------------------------------------------------------------------------------------------
-- Content filters: a SQL/JSON path predicate over the event, evaluated by PostgreSQL's own
-- jsonb_path_match in the fan-out (set-based), in replay and in a request's choice of responder
------------------------------------------------------------------------------------------------
-- (plain SQL functions, inlined into the statements that call them: no SET clause, everything qualified)
CREATE OR REPLACE FUNCTION event_bus._event_document(
    p_tenant_id uuid, p_event_type text, p_source_module text, p_entity_type text, p_entity_id text,
    p_payload jsonb, p_metadata jsonb
) RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.jsonb_build_object(
               'payload', p_payload, 'metadata', p_metadata, 'event_type', p_event_type,
               'source_module', p_source_module, 'entity_type', p_entity_type, 'entity_id', p_entity_id,
               'tenant_id', p_tenant_id)
$$;
COMMENT ON FUNCTION event_bus._event_document(uuid, text, text, text, text, jsonb, jsonb) IS
    'Internal: the document a content filter reads: {payload, metadata, event_type, source_module, '
    'entity_type, entity_id, tenant_id}.';

CREATE OR REPLACE FUNCTION event_bus._filter_match(p_filter jsonpath, p_document jsonb) RETURNS boolean
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE WHEN p_filter IS NULL THEN true
                ELSE pg_catalog.jsonb_path_match(p_document, p_filter, '{}'::jsonb, true) END
$$;
COMMENT ON FUNCTION event_bus._filter_match(jsonpath, jsonb) IS
    'Internal: does the event document pass the filter? true (or no filter), false, or NULL: unknown (an '
    'error in lax evaluation: a type mismatch, a strict path that is missing), which is no match.';

CREATE OR REPLACE FUNCTION event_bus._filter_passes(
    p_filter jsonpath, p_tenant_id uuid, p_event_type text, p_source_module text, p_entity_type text,
    p_entity_id text, p_payload jsonb, p_metadata jsonb
) RETURNS boolean
LANGUAGE sql
STABLE
AS $$
    SELECT CASE WHEN p_filter IS NULL THEN true
                ELSE event_bus._filter_match(
                         p_filter,
                         event_bus._event_document(p_tenant_id, p_event_type, p_source_module, p_entity_type,
                                                   p_entity_id, p_payload, p_metadata)) END
$$;
COMMENT ON FUNCTION event_bus._filter_passes(jsonpath, uuid, text, text, text, text, jsonb, jsonb) IS
    'Internal: _filter_match of the event''s document (built only when there is a filter).';

CREATE OR REPLACE FUNCTION event_bus._check_filter(p_filter text) RETURNS jsonpath
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_path jsonpath;
    -- every field a filter may read, as an event with an empty payload has them
    v_sample constant jsonb := jsonb_build_object(
        'payload', '{}'::jsonb, 'metadata', '{}'::jsonb, 'event_type', 'sample.event',
        'source_module', 'sample', 'entity_type', 'sample', 'entity_id', 'S-1',
        'tenant_id', '00000000-0000-0000-0000-000000000000');
BEGIN
    IF p_filter IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(p_filter) > 4000 THEN
        RAISE EXCEPTION 'event_bus: the filter is % characters long, more than 4000', length(p_filter)
            USING ERRCODE = '22023', HINT = 'Keep a filter to a predicate of a few fields; route on the rest in the handler.';
    END IF;
    BEGIN
        v_path := p_filter::jsonpath;
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'event_bus: the filter % is not a SQL/JSON path: %', left(p_filter, 200), SQLERRM
            USING ERRCODE = '22023',
                  HINT = 'Write a predicate over the event, e.g. $.payload.total > 10000 && $.payload.currency != "RSD".';
    END;
    BEGIN
        PERFORM jsonb_path_match(v_sample, v_path);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION 'event_bus: the filter % is not a predicate over the event: %', left(p_filter, 200), SQLERRM
            USING ERRCODE = '22023',
                  HINT = 'A filter answers true or false: compare ($.payload.total > 10000), test (exists($.metadata.manual), '
                         '$.entity_id starts with "WH-1"), combine with &&, || and !. $.payload.flag alone is a value: '
                         'write $.payload.flag == true. Variables ($name) are not available.';
    END;
    RETURN v_path;
END
$$;
COMMENT ON FUNCTION event_bus._check_filter(text) IS
    'Internal: a filter as a jsonpath, or 22023 when it does not parse, is not a boolean predicate, or errors '
    'on an event with an empty payload.';

CREATE OR REPLACE FUNCTION event_bus.matches_filter(p_filter text, p_event_id uuid) RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_path jsonpath := event_bus._check_filter(p_filter);
    v_result boolean;
BEGIN
    IF p_filter IS NULL THEN
        RAISE EXCEPTION 'event_bus: the filter must not be null'
            USING ERRCODE = '22004', HINT = 'Pass a predicate such as $.payload.total > 10000.';
    END IF;
    SELECT event_bus._filter_passes(v_path, e.tenant_id, e.event_type, e.source_module, e.entity_type,
                                    e.entity_id, e.payload, e.metadata)
      INTO v_result
      FROM event_bus.module_events e
     WHERE e.id = p_event_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: event % does not exist', p_event_id
            USING ERRCODE = 'P0002', HINT = 'Pass the id of an event you can see (list_events).';
    END IF;
    RETURN v_result;
END
$$;
COMMENT ON FUNCTION event_bus.matches_filter(text, uuid) IS
    'Test a filter against a stored event (one the caller may read): true, false, or NULL when it is unknown '
    'on the event (an error: a subscription with this filter would count it in filter_errors and make no '
    'delivery). 22023 for a filter subscribe would refuse.';

CREATE OR REPLACE FUNCTION event_bus.set_subscription_filter(p_subscription_id uuid, p_filter text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_filter jsonpath := event_bus._check_filter(p_filter);
    v_was    jsonpath;
BEGIN
    SELECT s.filter INTO v_was
      FROM event_bus.module_event_subscriptions s
     WHERE s.id = p_subscription_id
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event_bus: subscription % does not exist', p_subscription_id
            USING ERRCODE = 'P0002', HINT = 'See SELECT * FROM event_bus.subscription_health.';
    END IF;
    IF v_was::text IS NOT DISTINCT FROM v_filter::text THEN
        RETURN false;
    END IF;
    UPDATE event_bus.module_event_subscriptions
       SET filter = v_filter, updated_at = now()
     WHERE id = p_subscription_id;
    -- the errors counted were the old filter's
    DELETE FROM event_bus._filter_errors f WHERE f.subscription_id = p_subscription_id;
    RETURN true;
END
$$;
COMMENT ON FUNCTION event_bus.set_subscription_filter(uuid, text) IS
    'Set (or with NULL remove) a subscription''s content filter, checked as subscribe''s p_filter is (22023). '
    'Applies to events fanned out after it commits; replay applies the filter current when it runs. Resets '
    'the subscription''s filter_errors. Returns whether the filter changed.';

REVOKE ALL ON FUNCTION event_bus.set_subscription_filter(uuid, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION event_bus.matches_filter(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus.matches_filter(text, uuid) TO event_bus_reader, event_bus_admin;
