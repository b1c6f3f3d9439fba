-- event_bus: who may make a SQL handler run as which role (0.11.0). Re-runnable (CREATE OR REPLACE):
-- loaded after sql/api.sql by a fresh install and by every upgrade script. The threat model:
-- docs/src/security.md.

------------------------------------------------------------------------------------------------
-- Who may make a SQL handler run as which role
------------------------------------------------------------------------------------------------
-- A SQL handler runs as its subscription's run_as role, or as its function's owner without one. Naming
-- that role is held to PostgreSQL's own rule for SET ROLE: the namer must be allowed to become it
-- (pg_has_role ... 'SET' on 16+, 'MEMBER' on 15), only a superuser may name a superuser, and the role
-- must be allowed to execute the function. The trigger below applies it to every INSERT and to every
-- UPDATE of the function, the kind, run_as or run_as_set_by, by any path, and records the namer; the
-- worker applies it again, for the recorded namer, before it runs the handler (a membership revoked
-- later stops the handler). One rule, here: both call event_bus._run_as_refusal.
CREATE OR REPLACE FUNCTION event_bus._run_as_refusal(p_namer name, p_function text, p_run_as name)
RETURNS text
LANGUAGE plpgsql
STABLE
-- the handler's schema may be closed to whoever asks (an admin running process_pending_events):
-- the catalogs are read as the owner; the answer depends only on the arguments
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_proc regprocedure := to_regprocedure(p_function || '(event_bus.module_events)');
    v_namer oid;
    v_namer_super boolean;
    v_role oid;
    v_role_name name;
    v_role_super boolean;
    v_how text := CASE WHEN current_setting('server_version_num')::integer >= 160000 THEN 'SET' ELSE 'MEMBER' END;
BEGIN
    IF v_proc IS NULL THEN
        RETURN format('SQL handler %s(event_bus.module_events) does not exist', p_function);
    END IF;
    IF p_run_as IS NULL THEN
        SELECT r.oid, r.rolname, r.rolsuper INTO v_role, v_role_name, v_role_super
          FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
         WHERE p.oid = v_proc;
    ELSE
        SELECT r.oid, r.rolname, r.rolsuper INTO v_role, v_role_name, v_role_super
          FROM pg_catalog.pg_roles r WHERE r.rolname = p_run_as;
        IF v_role IS NULL THEN
            RETURN format('role %s named by run_as does not exist', p_run_as);
        END IF;
    END IF;
    IF p_namer IS NULL THEN
        -- named before 0.11.0 by a role nobody recorded (see event_bus.unverified_run_as)
        IF v_role_super THEN
            RETURN format('the SQL handler would run as superuser %s, named before event_bus 0.11.0 by an unrecorded '
                          'role; a superuser must confirm it', v_role_name);
        END IF;
    ELSE
        SELECT r.oid, r.rolsuper INTO v_namer, v_namer_super FROM pg_catalog.pg_roles r WHERE r.rolname = p_namer;
        IF v_namer IS NULL THEN
            RETURN format('role %s, which named the SQL handler''s role, no longer exists', p_namer);
        END IF;
        IF v_role_super AND NOT v_namer_super THEN
            RETURN format('%s is a superuser: only a superuser may make a SQL handler run as one, and %s is not',
                          v_role_name, p_namer);
        END IF;
        IF NOT pg_catalog.pg_has_role(v_namer, v_role, v_how) THEN
            RETURN format('role %s may not make a SQL handler run as %s: it may not SET ROLE %s', p_namer, v_role_name,
                          v_role_name);
        END IF;
    END IF;
    IF NOT pg_catalog.has_function_privilege(v_role, v_proc, 'EXECUTE') THEN
        RETURN format('role %s may not execute SQL handler %s', v_role_name, v_proc);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION event_bus._run_as_refusal(name, text, name) IS
    'Internal: why p_namer may not make SQL handler p_function run as p_run_as (NULL: its owner), or NULL if '
    'it may. The rule of SET ROLE, for subscriptions (at every change) and for the worker (before each run).';

CREATE OR REPLACE FUNCTION event_bus._subscriptions_check_run_as() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_refusal text;
BEGIN
    IF NEW.handler_kind IS DISTINCT FROM 'sql' THEN
        NEW.run_as_set_by := NULL;
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE'
       AND (NEW.handler_function, NEW.handler_kind, NEW.run_as, NEW.run_as_set_by)
           IS NOT DISTINCT FROM (OLD.handler_function, OLD.handler_kind, OLD.run_as, OLD.run_as_set_by) THEN
        RETURN NEW;
    END IF;
    -- a superuser may record any namer: a restore of a dump (pg_restore as a superuser) keeps the
    -- recorded one, and a superuser may become any role anyway
    IF TG_OP = 'INSERT' AND NEW.run_as_set_by IS NOT NULL
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NEW;
    END IF;
    -- current_user: whoever runs the statement (this function is not SECURITY DEFINER)
    v_refusal := event_bus._run_as_refusal(current_user, NEW.handler_function, NEW.run_as);
    IF v_refusal IS NOT NULL THEN
        RAISE EXCEPTION 'event_bus: %', v_refusal
            USING ERRCODE = '42501',
                  HINT = 'Name a run_as role you may SET ROLE to and that may execute the function (only a '
                         'superuser may name a superuser), or ask a role that may to subscribe.';
    END IF;
    NEW.run_as_set_by := current_user;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION event_bus._subscriptions_check_run_as() IS
    'Internal: refuses (42501) a SQL handler subscription whose role its writer may not become, and records '
    'the writer in run_as_set_by.';
-- admins (subscriptions, run_handlers, process_pending_events), request() (SECURITY DEFINER) and
-- the worker (a superuser) apply the rule
REVOKE ALL ON FUNCTION event_bus._run_as_refusal(name, text, name),
                       event_bus._subscriptions_check_run_as() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION event_bus._run_as_refusal(name, text, name) TO event_bus_admin;
CREATE OR REPLACE TRIGGER module_event_subscriptions_check_run_as
    BEFORE INSERT OR UPDATE OF handler_function, handler_kind, run_as, run_as_set_by
    ON event_bus.module_event_subscriptions
    FOR EACH ROW EXECUTE FUNCTION event_bus._subscriptions_check_run_as();

CREATE OR REPLACE VIEW event_bus.unverified_run_as AS
SELECT s.id AS subscription_id, s.event_type, s.handler_module, s.handler_function, s.run_as,
       coalesce(r.rolsuper, o.rolsuper, false) AS runs_as_superuser, s.is_active, s.created_at
  FROM event_bus.module_event_subscriptions s
  LEFT JOIN pg_catalog.pg_roles r ON r.rolname = s.run_as
  LEFT JOIN pg_catalog.pg_proc p ON s.run_as IS NULL
        AND p.oid = pg_catalog.to_regprocedure(s.handler_function || '(event_bus.module_events)')
  LEFT JOIN pg_catalog.pg_roles o ON o.oid = p.proowner
 WHERE s.handler_kind = 'sql' AND s.run_as_set_by IS NULL;
COMMENT ON VIEW event_bus.unverified_run_as IS
    'SQL handler subscriptions made before 0.11.0, whose role''s namer was never recorded: each runs as before '
    'unless it runs as a superuser (then it stops until a superuser confirms it). Confirm one, as a role that '
    'may become its role: UPDATE event_bus.module_event_subscriptions SET run_as_set_by = current_user WHERE id = ...';
REVOKE ALL ON event_bus.unverified_run_as FROM PUBLIC;
GRANT SELECT ON event_bus.unverified_run_as TO event_bus_admin;
