//! Payload contracts through the SQL surface: register, emit accepted / rejected with the JSON
//! pointer (and the business write rolled back with it), versions, batch emit, strict mode.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::tests::{count, sqlstate_of, TENANT};
    use pgrx::prelude::*;

    const INVOICE_SCHEMA: &str = r#"{
        "type": "object",
        "required": ["invoice_id", "total"],
        "properties": {
            "invoice_id": {"type": "string", "format": "uuid"},
            "total": {"type": "number", "minimum": 0},
            "lines": {"type": "array", "items": {"type": "object", "required": ["sku", "qty"]}}
        }
    }"#;

    /// "SQLSTATE: message" of a failing statement, None if it succeeds.
    fn error_of(sql: &str) -> Option<String> {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.error_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE q; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $f$",
        )
        .unwrap();
        Spi::get_one_with_args::<String>("SELECT pg_temp.error_of($1)", &[sql.into()]).unwrap()
    }

    fn emit(payload: &str, metadata: &str) -> String {
        format!(
            "SELECT event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', 'I-1', \
             '{payload}', '{metadata}')"
        )
    }

    fn register(version: i32, schema: &str) {
        Spi::run_with_args(
            "SELECT event_bus.register_event_type('invoice.posted', $1, $2::jsonb, 'test')",
            &[version.into(), schema.into()],
        )
        .unwrap();
    }

    const GOOD: &str = r#"{"invoice_id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11", "total": 12.5}"#;

    #[pg_test]
    fn a_registered_schema_accepts_conforming_payloads_and_rejects_others_with_the_pointer() {
        // free-form before registration
        assert_eq!(error_of(&emit(r#"{"anything": 1}"#, "{}")), None);
        register(1, INVOICE_SCHEMA);
        assert_eq!(error_of(&emit(GOOD, "{}")), None);

        let wrong_type = error_of(&emit(
            r#"{"invoice_id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11", "total": "12"}"#,
            "{}",
        ))
        .unwrap();
        assert!(wrong_type.starts_with("23514: "), "{wrong_type}");
        assert!(wrong_type.contains("\"/total\""), "{wrong_type}");
        assert!(wrong_type.contains("version 1"), "{wrong_type}");

        let nested = error_of(&emit(
            r#"{"invoice_id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11", "total": 1, "lines": [{"sku": "A", "qty": 1}, {"sku": "B"}]}"#,
            "{}",
        ))
        .unwrap();
        assert!(nested.contains("\"/lines/1\""), "{nested}");
        // formats are asserted
        let not_uuid = error_of(&emit(r#"{"invoice_id": "I-1", "total": 1}"#, "{}")).unwrap();
        assert!(not_uuid.contains("\"/invoice_id\""), "{not_uuid}");
        let missing = error_of(&emit(r#"{"total": 1}"#, "{}")).unwrap();
        assert!(
            missing.starts_with("23514: ") && missing.contains("invoice_id"),
            "{missing}"
        );

        // only the conforming emits were written (1 free-form + 1 good)
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 2);

        // check_payload lists every violation with its pointer and keyword
        let found = Spi::get_one::<String>(
            r#"SELECT string_agg(instance_path || ' ' || schema_path, ', ' ORDER BY instance_path)
                 FROM event_bus.check_payload('invoice.posted', '{"invoice_id": "x", "total": -1}')"#,
        )
        .unwrap()
        .unwrap();
        assert!(
            found.contains("/invoice_id /properties/invoice_id/format"),
            "{found}"
        );
        assert!(
            found.contains("/total /properties/total/minimum"),
            "{found}"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM event_bus.check_payload('invoice.posted', '{GOOD}')"
            )),
            0
        );
        assert_eq!(
            sqlstate_of("SELECT * FROM event_bus.check_payload('no.schema', '{}')").as_deref(),
            Some("42704")
        );
    }

    #[pg_test]
    fn a_rejected_payload_rolls_back_the_business_write_of_its_trigger() {
        register(1, INVOICE_SCHEMA);
        Spi::run(&format!(
            "CREATE TABLE public.ct_invoices (id uuid PRIMARY KEY, total numeric NOT NULL);
             CREATE FUNCTION public.ct_emit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM event_bus.emit_module_event('{TENANT}', 'invoice.posted', 'accounting', 'invoice', NEW.id,
                     jsonb_build_object('invoice_id', NEW.id, 'total', NEW.total));
                 RETURN NEW;
             END $$;
             CREATE TRIGGER ct_emit AFTER INSERT ON public.ct_invoices FOR EACH ROW EXECUTE FUNCTION public.ct_emit();"
        ))
        .unwrap();
        Spi::run(
            "INSERT INTO public.ct_invoices VALUES ('6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11', 10)",
        )
        .unwrap();
        assert_eq!(
            sqlstate_of("INSERT INTO public.ct_invoices VALUES ('7f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11', -5)").as_deref(),
            Some("23514")
        );
        assert_eq!(count("SELECT count(*) FROM public.ct_invoices"), 1);
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1);
    }

    #[pg_test]
    fn versions_are_immutable_and_metadata_can_pick_one() {
        register(1, INVOICE_SCHEMA);
        // v2 requires a currency
        register(
            2,
            r#"{"type": "object", "required": ["invoice_id", "total", "currency"],
                "properties": {"currency": {"type": "string", "minLength": 3, "maxLength": 3}}}"#,
        );
        // the latest version applies by default
        let e = error_of(&emit(GOOD, "{}")).unwrap();
        assert!(
            e.starts_with("23514: ") && e.contains("version 2") && e.contains("currency"),
            "{e}"
        );
        // an emitter still on v1 says so
        assert_eq!(error_of(&emit(GOOD, r#"{"schema_version": 1}"#)), None);
        assert_eq!(
            error_of(&emit(&GOOD.replace('}', r#", "currency": "EUR"}"#), "{}")),
            None
        );
        let unknown = error_of(&emit(GOOD, r#"{"schema_version": 7}"#)).unwrap();
        assert!(
            unknown.starts_with("22023: ") && unknown.contains("registered: 1, 2"),
            "{unknown}"
        );
        assert_eq!(
            sqlstate_of(&emit(GOOD, r#"{"schema_version": "x"}"#)).as_deref(),
            Some("22023")
        );

        // the same registration again is a no-op; a changed one is refused
        register(1, INVOICE_SCHEMA);
        assert_eq!(
            sqlstate_of("SELECT event_bus.register_event_type('invoice.posted', 1, '{\"type\": \"object\"}')").as_deref(),
            Some("23505")
        );
        // bad registrations
        for (sql, state) in [
            ("SELECT event_bus.register_event_type('invoice.posted', 3, '{\"type\": \"nope\"}')", "22023"),
            ("SELECT event_bus.register_event_type('invoice.posted', 3, '[1]')", "22023"),
            ("SELECT event_bus.register_event_type('invoice.posted', 3, '{\"$ref\": \"https://example.com/s.json\"}')", "22023"),
            ("SELECT event_bus.register_event_type('invoice.*', 3, '{}')", "22023"),
            ("SELECT event_bus.register_event_type('invoice.posted', 0, '{}')", "22023"),
            ("SELECT event_bus.register_event_type('invoice.posted', NULL, '{}')", "22004"),
            ("SELECT event_bus.register_event_type(NULL, 1, '{}')", "22004"),
            ("SELECT event_bus.register_event_type('invoice.posted', 3, NULL)", "22004"),
        ] {
            assert_eq!(sqlstate_of(sql).as_deref(), Some(state), "{sql}");
        }
        assert_eq!(
            count("SELECT count(*) FROM event_bus.event_type_schemas"),
            2
        );

        // unregistering v2 makes v1 the latest; unregistering all makes the type free-form again
        assert_eq!(
            count("SELECT event_bus.unregister_event_type('invoice.posted', 2)::bigint"),
            1
        );
        assert_eq!(error_of(&emit(GOOD, "{}")), None);
        assert_eq!(
            count("SELECT event_bus.unregister_event_type('invoice.posted')::bigint"),
            1
        );
        assert_eq!(error_of(&emit(r#"{"free": "form"}"#, "{}")), None);
    }

    #[pg_test]
    fn a_batch_emit_names_the_failing_element_and_emits_nothing() {
        register(1, INVOICE_SCHEMA);
        let batch = |third: &str| {
            format!(
                "SELECT count(*) FROM event_bus.emit_module_events('{TENANT}', 'invoice.posted', 'accounting', 'invoice',
                     NULL, ARRAY['{GOOD}'::jsonb, '{GOOD}', '{third}'])"
            )
        };
        let e = error_of(&batch(
            r#"{"invoice_id": "6f1c1e0e-2f7e-4c39-9a0e-6c1f1b5c1a11"}"#,
        ))
        .unwrap();
        assert!(
            e.starts_with("23514: event_bus: payload 3 of invoice.posted"),
            "{e}"
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 0);
        assert_eq!(error_of(&batch(GOOD)), None);
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 3);
    }

    #[pg_test]
    fn strict_mode_refuses_unregistered_types() {
        register(1, INVOICE_SCHEMA);
        Spi::run("SET LOCAL event_bus.strict_event_types = on").unwrap();
        assert_eq!(error_of(&emit(GOOD, "{}")), None);
        let e = error_of(
            "SELECT event_bus.emit_module_event('11111111-1111-1111-1111-111111111111', 'order.created', 'sales', 'order', 'O-1', '{}')",
        )
        .unwrap();
        assert!(
            e.starts_with("42704: ") && e.contains("order.created"),
            "{e}"
        );
        assert_eq!(count("SELECT count(*) FROM event_bus.module_events"), 1);
    }

    #[pg_test]
    fn only_admins_register_schemas_and_readers_see_them() {
        register(1, INVOICE_SCHEMA);
        Spi::run(
            "CREATE ROLE ct_reader NOLOGIN IN ROLE event_bus_reader;
             CREATE ROLE ct_app NOLOGIN;
             CREATE ROLE ct_admin NOLOGIN IN ROLE event_bus_admin;",
        )
        .unwrap();
        assert_eq!(sqlstate_of("SELECT 1"), None);
        for role in ["ct_reader", "ct_app"] {
            Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
            assert_eq!(
                sqlstate_of("SELECT event_bus.register_event_type('order.created', 1, '{}')")
                    .as_deref(),
                Some("42501"),
                "{role}"
            );
            assert_eq!(
                sqlstate_of("SELECT event_bus.unregister_event_type('invoice.posted')").as_deref(),
                Some("42501"),
                "{role}"
            );
            Spi::run("RESET ROLE").unwrap();
        }
        Spi::run("SET LOCAL ROLE ct_reader").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM event_bus.event_type_schemas"),
            1
        );
        Spi::run("RESET ROLE").unwrap();
        Spi::run("SET LOCAL ROLE ct_admin").unwrap();
        Spi::run(
            "SELECT event_bus.register_event_type('order.created', 1, '{\"type\": \"object\"}')",
        )
        .unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            count("SELECT count(*) FROM event_bus.event_type_schemas"),
            2
        );
        // an application role emitting a registered type is validated like anyone else
        Spi::run("SET LOCAL ROLE ct_app").unwrap();
        assert_eq!(
            sqlstate_of(&emit(r#"{"total": 1}"#, "{}")).as_deref(),
            Some("23514")
        );
        Spi::run("RESET ROLE").unwrap();
    }
}
