-- Rust-backed functions new in 0.2.0. A fresh install gets them from pgrx's generated SQL (the
-- #[pg_extern]s in src/contracts.rs); the upgrade creates them here, before anything uses them.
-- tests/upgrade.rs checks that the upgraded schema equals a fresh install's.
CREATE FUNCTION event_bus."_has_contract"("event_type" text) RETURNS bool
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'has_contract_wrapper';
CREATE FUNCTION event_bus."_check_contract"("event_type" text, "payload" jsonb, "schema_version" text, "position" bigint)
    RETURNS bool VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_contract_wrapper';
CREATE FUNCTION event_bus."_check_schema"("event_type" text, "schema" jsonb) RETURNS bool
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_schema_wrapper';
CREATE FUNCTION event_bus."_contracts_changed"() RETURNS void
    STRICT VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'contracts_changed_wrapper';
CREATE FUNCTION event_bus."check_payload"("event_type" text, "payload" jsonb, "version" int DEFAULT NULL)
    RETURNS TABLE ("instance_path" text, "schema_path" text, "message" text)
    VOLATILE PARALLEL UNSAFE LANGUAGE c AS 'MODULE_PATHNAME', 'check_payload_wrapper';
