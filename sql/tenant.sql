-- Who is calling, and for which tenant: used by the row-level security policies and by every
-- SECURITY DEFINER function. Loaded before the policies that call current_tenant().

------------------------------------------------------------------------------------------------
-- API: Public — current_tenant
------------------------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_bus.current_tenant() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_function text := nullif(current_setting('event_bus.tenant_function', true), '');
    v_setting  text := coalesce(nullif(current_setting('event_bus.tenant_setting', true), ''), 'app.tenant_id');
    v_value    text;
BEGIN
    IF v_function IS NOT NULL THEN
        -- a function (set by a superuser, see event_bus.tenant_function): resolved as a name, so
        -- the setting cannot smuggle in anything but a call
        EXECUTE 'SELECT ' || v_function::regproc::text || '()::text' INTO v_value;
    ELSE
        v_value := current_setting(v_setting, true);
    END IF;
    v_value := nullif(btrim(v_value), '');
    IF v_value IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN v_value::uuid;
EXCEPTION
    WHEN invalid_text_representation THEN
        RAISE EXCEPTION 'event_bus: the current tenant % is not a uuid', left(v_value, 100)
            USING ERRCODE = '22P02',
                  HINT = 'Set ' || coalesce(v_function || '()', v_setting) || ' to the tenant''s uuid.';
END
$$;

COMMENT ON FUNCTION event_bus.current_tenant() IS
    'The tenant of the calling session, which row-level security and the event_bus functions restrict '
    'event_bus_reader / event_bus_operator members to. Read from the function named by '
    'event_bus.tenant_function (e.g. a wrapper around Supabase''s auth.jwt()) when set, else from the '
    'setting named by event_bus.tenant_setting (default app.tenant_id: SET app.tenant_id = ''<uuid>''). '
    'NULL when the session has none.';

------------------------------------------------------------------------------------------------
-- Internal: the calling role, also inside SECURITY DEFINER functions.
------------------------------------------------------------------------------------------------
-- Inside a SECURITY DEFINER function current_user is the owner; the caller is the role the
-- session runs as: SET ROLE's role (PostgREST's SET LOCAL ROLE authenticated), else the login role.
CREATE OR REPLACE FUNCTION event_bus._caller() RETURNS name
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN current_setting('role') = 'none' THEN session_user
                ELSE current_setting('role')::name END;
$$;
COMMENT ON FUNCTION event_bus._caller() IS
    'Internal: the role the session acts as (SET ROLE''s role, else the session user), also inside '
    'SECURITY DEFINER functions.';

CREATE OR REPLACE FUNCTION event_bus._caller_is_admin() RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- superusers are members of every role
    SELECT pg_has_role(event_bus._caller(), 'event_bus_admin', 'USAGE');
$$;
COMMENT ON FUNCTION event_bus._caller_is_admin() IS
    'Internal: is the caller a superuser or a member of event_bus_admin?';

-- The tenants a caller may act for: NULL = all (an admin, or a role outside the event_bus roles,
-- e.g. the application's own service role, with no tenant in its session); otherwise exactly one.
-- A tenant-bound caller without a tenant gets the nil uuid, which matches nothing.
CREATE OR REPLACE FUNCTION event_bus._caller_tenant_scope() RETURNS uuid
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_tenant uuid := event_bus.current_tenant();
BEGIN
    IF event_bus._caller_is_admin() THEN
        RETURN NULL;
    END IF;
    IF v_tenant IS NOT NULL THEN
        RETURN v_tenant;
    END IF;
    IF pg_has_role(event_bus._caller(), 'event_bus_reader', 'USAGE') THEN
        RETURN '00000000-0000-0000-0000-000000000000'::uuid;
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._caller_tenant_scope() IS
    'Internal: NULL when the caller may act for every tenant (admin, or no tenant in the session and not '
    'an event_bus_reader member), else the one tenant it may act for.';
