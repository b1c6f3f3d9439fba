//! The JSON API (/api/v1) against a real console and database: every path, as a reader, an operator, an
//! admin and another tenant's reader; bearer tokens and cookie sessions with their CSRF header; bad input
//! answered with 400 and nothing written; the stream receiving an event committed after it opened. Every
//! response is checked against the OpenAPI document's schema for its path, method and status.
//! Needs the extension installed for the pg_config first on PATH.

mod common;
use common::{raw_http, sign_jwt, start_console, Killed, TENANT_A, TENANT_B};
use event_bus_testkit as cluster;
use event_bus_testkit::receiver::{Receiver, Reply};
use event_bus_testkit::{wait_for, Cluster};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const SECRET: &str = "an-api-jwt-secret-of-at-least-32-characters";

/// How a request signs in.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(String),
    /// a session cookie, and the CSRF token to send (None: send none)
    Cookie(String, Option<String>),
}

struct Api {
    port: u16,
    doc: Value,
}

impl Api {
    /// `method template` with `{x}` filled from `args`; the response's JSON, checked against the
    /// document's schema for the template, method and status.
    fn call(
        &self,
        auth: &Auth,
        method: &str,
        template: &str,
        args: &[&str],
        query: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut path = template.to_string();
        for a in args {
            let (i, j) = (path.find('{').unwrap(), path.find('}').unwrap());
            path.replace_range(i..=j, a);
        }
        if !query.is_empty() {
            path = format!("{path}?{query}");
        }
        let mut headers: Vec<(&str, String)> = vec![("Accept", "application/json".into())];
        match auth {
            Auth::None => {}
            Auth::Bearer(t) => headers.push(("Authorization", format!("Bearer {t}"))),
            Auth::Cookie(c, csrf) => {
                headers.push(("Cookie", c.clone()));
                if let Some(t) = csrf {
                    headers.push(("X-CSRF-Token", t.clone()));
                }
            }
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json".into()));
        }
        let (status, head, text) = raw_http(self.port, method, &path, &headers, &body).unwrap();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{method} {path}: {head}"
        );
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        self.check(method, template, status, &v);
        (status, v)
    }

    /// The response agrees with the document: its status is one the document lists for the
    /// operation, and its body validates against that response's schema.
    fn check(&self, method: &str, template: &str, status: u16, v: &Value) {
        let m = method.to_ascii_lowercase();
        let op = &self.doc["paths"][template][&m];
        assert!(op.is_object(), "{method} {template} is not in the document");
        let resp = &op["responses"][status.to_string()];
        assert!(
            resp.is_object(),
            "{method} {template} answered {status}, which the document does not list: {v}"
        );
        let esc = |s: &str| {
            s.replace('~', "~0")
                .replace('/', "~1")
                .replace('{', "%7B")
                .replace('}', "%7D")
        };
        let content = resp["content"].as_object().expect("a response with a body");
        let media = content.keys().next().unwrap();
        let pointer = format!(
            "#/paths/{}/{m}/responses/{status}/content/{}/schema",
            esc(template),
            esc(media)
        );
        let mut root = self.doc.clone();
        root["$ref"] = Value::String(pointer);
        let validator = jsonschema::validator_for(&root).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(v)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {template} {status}: the body disagrees with the document: {errors:?}\n{v}"
        );
    }
}

fn bearer(role: &str, extra: Value) -> Auth {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = json!({"role": role, "exp": now + 600});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            claims[k] = v;
        }
    }
    Auth::Bearer(sign_jwt(&claims, SECRET.as_bytes()))
}

/// Sign in with the form (password checked by PostgreSQL); the session cookie.
fn sign_in(port: u16, user: &str, password: &str) -> String {
    let (_, head, body) = raw_http(port, "GET", "/login", &[], "").unwrap();
    let login_cookie = cookie_of(&head, "ebc_login").expect("a login cookie");
    let token = body
        .split("name=\"login_token\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the form's login token")
        .to_string();
    let form = format!("login_token={token}&username={user}&password={password}");
    let (status, head, _) = raw_http(
        port,
        "POST",
        "/login",
        &[
            ("Cookie", format!("ebc_login={login_cookie}")),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        &form,
    )
    .unwrap();
    assert_eq!(status, 303, "{head}");
    format!(
        "ebc_session={}",
        cookie_of(&head, "ebc_session").expect("a session cookie")
    )
}

fn cookie_of(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .find_map(|(_, v)| {
            v.trim()
                .strip_prefix(&format!("{name}="))
                .map(|v| v.split(';').next().unwrap().to_string())
        })
}

fn emit(c: &mut postgres::Client, tenant: &str, ty: &str, entity: &str, payload: Value) -> String {
    c.query_one(
        "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'sales', 'order', $3, $4)::text",
        &[&tenant, &ty, &entity, &payload],
    )
    .unwrap()
    .get(0)
}

/// Every id of list_events for a role of tenant A, as SQL gives it (what the API must agree with).
fn sql_ids(c: &mut postgres::Client, role: &str, args: &str) -> Vec<String> {
    common::list_events_as(c, role, TENANT_A, args)
}

fn ids_of(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// A server-sent-events reader: the `data:` of each `event:` of the given name.
struct Stream(BufReader<TcpStream>);

impl Stream {
    fn open(port: u16, path: &str, auth: &Auth, last_id: Option<&str>) -> (u16, Stream) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n");
        if let Auth::Bearer(t) = auth {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut status_line = String::new();
        r.read_line(&mut status_line).unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        (status, Stream(r))
    }

    /// The next `event` event's (id, data), skipping comments and chunk sizes.
    fn next_event(&mut self) -> (String, Value) {
        let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
        loop {
            let mut l = String::new();
            let n = self.0.read_line(&mut l).expect("the stream goes on");
            assert!(n > 0, "the stream ended");
            let l = l.trim_end();
            if let Some(v) = l.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = l.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if l.is_empty() && !name.is_empty() {
                if name == "event" {
                    return (id, serde_json::from_str(&data).unwrap());
                }
                name.clear();
                data.clear();
            }
        }
    }
}

#[test]
fn the_json_api_as_each_role() {
    let (cluster, mut c) = common::app_cluster(
        "console-api",
        "apiapp",
        &["event_bus.breaker_threshold = 0"],
    );
    // a receiver that always fails: every delivery of 'order.#' goes dead on its first attempt
    let rx = Receiver::start(|_, _| Reply::status(500));
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    c.query_one(
        "SELECT event_bus.subscribe('order.#', 'fulfilment', $1, p_max_retries => 0)",
        &[&url],
    )
    .unwrap();
    let a: Vec<String> = (0..12)
        .map(|i| {
            emit(
                &mut c,
                TENANT_A,
                if i % 3 == 0 {
                    "order.cancelled"
                } else {
                    "order.placed"
                },
                &format!("O-{i}"),
                json!({"n": i}),
            )
        })
        .collect();
    let b: Vec<String> = (0..3)
        .map(|i| {
            emit(
                &mut c,
                TENANT_B,
                "order.placed",
                &format!("B-{i}"),
                json!({"b": i}),
            )
        })
        .collect();
    wait_for("every delivery dead", Duration::from_secs(90), || {
        (cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters") == 15).then_some(())
    });
    let (_console, port): (Killed, u16) = start_console(
        &cluster,
        "apiapp",
        &[("EVENT_BUS_CONSOLE_JWT_SECRET", SECRET)],
    );

    // --- the document: served, and the one committed for the TypeScript client
    let (status, _, text) = raw_http(port, "GET", "/api/v1/openapi.json", &[], "").unwrap();
    assert_eq!(status, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../clients/typescript/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(doc, committed, "the served document is the committed one");
    let api = Api { port, doc };

    // --- no sign-in: 401 as JSON (not the login page's redirect); an unknown path: JSON 404
    let (status, v) = api.call(&Auth::None, "GET", "/api/v1/events", &[], "", None);
    assert_eq!(
        (status, v["code"].as_str()),
        (401, Some("unauthenticated")),
        "{v}"
    );
    let (status, _, text) = raw_http(port, "GET", "/api/v1/nothing-here", &[], "").unwrap();
    assert_eq!(status, 404);
    assert!(text.contains("\"no_route\""), "{text}");
    // a role outside event_bus
    let (status, v) = api.call(
        &bearer("nobody", json!({})),
        "GET",
        "/api/v1/events",
        &[],
        "",
        None,
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("not_allowed")),
        "{v}"
    );

    // --- a reader: its tenant's events, exactly what list_events gives it, page by page
    let alice = bearer("alice", json!({}));
    let (status, v) = api.call(&alice, "GET", "/api/v1/session", &[], "", None);
    assert_eq!(status, 200);
    assert_eq!(
        (v["level"].as_str(), v["tenant_id"].as_str()),
        (Some("reader"), Some(TENANT_A))
    );
    assert_eq!(v["csrf_token"], "", "a bearer token needs no CSRF token");
    let mut seen = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        // order.#: the bus's own operational events (a delivery went dead) are in the tenant's list too
        let q = if cursor.is_empty() {
            "event_type=order.%23&limit=5".to_string()
        } else {
            format!("event_type=order.%23&limit=5&cursor={cursor}")
        };
        let (status, v) = api.call(&alice, "GET", "/api/v1/events", &[], &q, None);
        assert_eq!(status, 200, "{v}");
        seen.extend(ids_of(&v));
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 3, "12 events in pages of 5: {seen:?}");
    assert_eq!(
        seen,
        sql_ids(
            &mut c,
            "alice",
            "p_event_type => 'order.#', p_limit => 1000"
        )
    );
    let (_, v) = api.call(&alice, "GET", "/api/v1/events", &[], "limit=500", None);
    assert_eq!(
        ids_of(&v),
        sql_ids(&mut c, "alice", "p_limit => 500"),
        "every event of the tenant"
    );
    let mut mine = a.clone();
    mine.sort();
    mine.reverse();
    assert_eq!(seen, mine, "newest first, tenant A's only");
    // the filters, with design document 001's names beside ours
    let (_, v) = api.call(
        &alice,
        "GET",
        "/api/v1/events",
        &[],
        "status=processed&event_type=order.%23",
        None,
    );
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        0,
        "nothing completed: every delivery is dead"
    );
    let (_, v) = api.call(
        &alice,
        "GET",
        "/api/v1/events",
        &[],
        "status=failed&event_type=order.cancelled",
        None,
    );
    assert_eq!(
        ids_of(&v),
        sql_ids(
            &mut c,
            "alice",
            "p_status => 'failed', p_event_type => 'order.cancelled'"
        )
    );
    assert_eq!(ids_of(&v).len(), 4);
    let (_, v) = api.call(
        &alice,
        "GET",
        "/api/v1/events",
        &[],
        "aggregate_type=order&aggregate_id=O-4",
        None,
    );
    assert_eq!(ids_of(&v), vec![a[4].clone()]);
    assert_eq!(v["items"][0]["payload"], json!({"n": 4}));
    let (_, v2) = api.call(
        &alice,
        "GET",
        "/api/v1/events",
        &[],
        "entity_type=order&entity_id=O-4",
        None,
    );
    assert_eq!(ids_of(&v2), ids_of(&v));
    // one event with its deliveries and attempt log; another tenant's is 404
    let (status, v) = api.call(&alice, "GET", "/api/v1/events/{id}", &[&a[0]], "", None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["event"]["id"], a[0].as_str());
    assert_eq!(v["deliveries"][0]["status"], "failed");
    assert_eq!(v["logs"][0]["http_status"], 500);
    let (status, v) = api.call(&alice, "GET", "/api/v1/events/{id}", &[&b[0]], "", None);
    assert_eq!((status, v["code"].as_str()), (404, Some("not_found")));
    let bob = bearer("bob", json!({}));
    let (status, _) = api.call(&bob, "GET", "/api/v1/events/{id}", &[&a[0]], "", None);
    assert_eq!(status, 404, "another tenant's reader");
    let (_, v) = api.call(
        &bob,
        "GET",
        "/api/v1/events",
        &[],
        "event_type=order.%23",
        None,
    );
    let mut theirs = b.clone();
    theirs.sort();
    theirs.reverse();
    assert_eq!(ids_of(&v), theirs, "tenant B's reader sees tenant B's");
    // statistics as 001 has them
    let (status, v) = api.call(&alice, "GET", "/api/v1/stats", &[], "", None);
    assert_eq!(status, 200);
    let sql_stats: Vec<i64> = {
        let mut tx = c.transaction().unwrap();
        tx.batch_execute(&format!(
            "SET LOCAL ROLE alice; SET LOCAL app.tenant_id = '{TENANT_A}'"
        ))
        .unwrap();
        let r = tx
            .query_one(
                "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats()",
                &[],
            )
            .unwrap();
        (0..5).map(|i| r.get(i)).collect()
    };
    let api_stats: Vec<i64> = ["pending", "processing", "processed", "failed", "total"]
        .iter()
        .map(|k| v[*k].as_i64().unwrap())
        .collect();
    assert_eq!(api_stats, sql_stats, "{v}");
    assert!(
        v["failed"].as_i64().unwrap() >= 12 && v["completed"] == v["processed"],
        "{v}"
    );
    // a reader may not write
    let before = cluster::count(&mut c, "SELECT count(*) FROM event_bus.module_events");
    let (status, v) = api.call(
        &alice,
        "POST",
        "/api/v1/events",
        &[],
        "",
        Some(json!({"event_type": "order.placed", "aggregate_type": "order", "aggregate_id": "X"})),
    );
    assert_eq!((status, v["code"].as_str()), (403, Some("42501")), "{v}");
    let dead = cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters");
    let some_delivery: String = c.query_one("SELECT delivery_id::text FROM event_bus.dead_letters WHERE tenant_id = $1::text::uuid LIMIT 1", &[&TENANT_A]).unwrap().get(0);
    let (status, _) = api.call(
        &alice,
        "POST",
        "/api/v1/deliveries/{id}/retry",
        &[&some_delivery],
        "",
        None,
    );
    assert_eq!(status, 403);
    let (status, _) = api.call(
        &alice,
        "POST",
        "/api/v1/process-pending",
        &[],
        "",
        Some(json!({"limit": 10})),
    );
    assert_eq!(status, 403);
    assert_eq!(
        cluster::count(&mut c, "SELECT count(*) FROM event_bus.module_events"),
        before
    );
    assert_eq!(
        cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters"),
        dead
    );

    // --- bad input: 400 with the reason, nothing read or written
    for (q, code, says) in [
        (
            "status=done",
            "invalid_input",
            "use pending, processing, completed or failed",
        ),
        ("event_type=a..b", "22023", ""),
        ("limit=0", "invalid_input", "out of range"),
        ("limit=many", "invalid_input", "does not parse"),
        ("cursor=not-a-uuid", "invalid_input", "does not parse"),
        ("from=yesterday", "invalid_input", "does not parse"),
        ("colour=red", "invalid_input", "unknown field"),
        ("entity_type=a&aggregate_type=b", "invalid_input", "differ"),
        (
            "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            "invalid_input",
            "no event can match",
        ),
    ] {
        let (status, v) = api.call(&alice, "GET", "/api/v1/events", &[], q, None);
        assert_eq!((status, v["code"].as_str()), (400, Some(code)), "{q}: {v}");
        assert!(v["message"].as_str().unwrap().contains(says), "{q}: {v}");
    }
    let (status, v) = api.call(
        &alice,
        "GET",
        "/api/v1/events/{id}",
        &["not-a-uuid"],
        "",
        None,
    );
    assert_eq!(status, 400, "{v}");
    let (status, v) = api.call(&alice, "GET", "/api/v1/stats", &[], "window=forever", None);
    assert_eq!((status, v["code"].as_str()), (400, Some("22007")), "{v}");

    // --- an operator with a cookie session: state changes need the X-CSRF-Token header
    let session = sign_in(port, "olga", "olga-pw");
    let no_csrf = Auth::Cookie(session.clone(), None);
    let (status, v) = api.call(&no_csrf, "GET", "/api/v1/session", &[], "", None);
    assert_eq!((status, v["level"].as_str()), (200, Some("operator")));
    let csrf = v["csrf_token"].as_str().unwrap().to_string();
    assert!(!csrf.is_empty());
    let publish = json!({"event_type": "payment.completed", "aggregate_type": "payment", "aggregate_id": "P-1",
                         "payload": {"amount": 10}, "metadata": {"source": "payment_form"}});
    let (status, v) = api.call(
        &no_csrf,
        "POST",
        "/api/v1/events",
        &[],
        "",
        Some(publish.clone()),
    );
    assert_eq!((status, v["code"].as_str()), (403, Some("csrf")), "{v}");
    let wrong = Auth::Cookie(session.clone(), Some("forged".into()));
    assert_eq!(
        api.call(
            &wrong,
            "POST",
            "/api/v1/events",
            &[],
            "",
            Some(publish.clone())
        )
        .0,
        403
    );
    assert_eq!(
        cluster::count(&mut c, "SELECT count(*) FROM event_bus.module_events"),
        before,
        "nothing written"
    );
    let olga = Auth::Cookie(session.clone(), Some(csrf.clone()));
    let (status, v) = api.call(&olga, "POST", "/api/v1/events", &[], "", Some(publish));
    assert_eq!(status, 201, "{v}");
    let published = v["id"].as_str().unwrap().to_string();
    let row = c
        .query_one(
            "SELECT tenant_id::text, event_type, source_module, entity_type, entity_id, payload, metadata
               FROM event_bus.module_events WHERE id = $1::text::uuid",
            &[&published],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), TENANT_A, "the session's tenant");
    assert_eq!(row.get::<_, String>(1), "payment.completed");
    assert_eq!(
        row.get::<_, String>(2),
        "payment",
        "source module: the aggregate type, as publish_event has it"
    );
    assert_eq!(
        (row.get::<_, String>(3), row.get::<_, String>(4)),
        ("payment".into(), "P-1".into())
    );
    assert_eq!(row.get::<_, Value>(5), json!({"amount": 10}));
    // a large payload (the pages' 64 KiB form limit does not apply to the API)
    let big = "x".repeat(300_000);
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/events",
        &[],
        "",
        Some(
            json!({"event_type": "doc.stored", "aggregate_type": "doc", "payload": {"text": big}}),
        ),
    );
    assert_eq!(status, 201, "{v}");
    // bad bodies: 400, nothing written
    let count = cluster::count(&mut c, "SELECT count(*) FROM event_bus.module_events");
    for (body, code) in [
        (
            json!({"event_type": "x.y", "aggregate_type": "t", "payload": [1, 2]}),
            "22023",
        ),
        (json!({"event_type": "..", "aggregate_type": "t"}), "22023"),
        (
            json!({"event_type": "x.y", "aggregate_type": "t", "tenant_id": TENANT_B}),
            "42501",
        ),
        (
            json!({"event_type": "x.y", "colour": "red"}),
            "invalid_input",
        ),
        (json!({"aggregate_type": "t"}), "invalid_input"),
    ] {
        let (status, v) = api.call(&olga, "POST", "/api/v1/events", &[], "", Some(body.clone()));
        assert_eq!(v["code"].as_str(), Some(code), "{body}: {v}");
        assert!(
            status == 400 || (code == "42501" && status == 403),
            "{body}: {status} {v}"
        );
    }
    assert_eq!(
        cluster::count(&mut c, "SELECT count(*) FROM event_bus.module_events"),
        count
    );

    // dead letters: the tenant's only; retry one, count matching without changing anything, skip
    let (status, v) = api.call(&olga, "GET", "/api/v1/dead-letters", &[], "limit=100", None);
    assert_eq!(status, 200);
    let dl = v["items"].as_array().unwrap();
    assert_eq!(dl.len(), 12);
    assert!(dl.iter().all(|d| d["tenant_id"] == TENANT_A));
    let (_, v) = api.call(
        &olga,
        "GET",
        "/api/v1/dead-letters",
        &[],
        "event_type=order.cancelled&limit=3",
        None,
    );
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    assert!(v["next_cursor"].is_string());
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/dead-letters/retry",
        &[],
        "",
        Some(json!({"event_type": "order.cancelled", "dry_run": true})),
    );
    assert_eq!(
        (status, v["count"].as_i64(), v["dry_run"].as_bool()),
        (200, Some(4), Some(true)),
        "{v}"
    );
    assert_eq!(
        cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters"),
        dead,
        "a dry run changes nothing"
    );
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/deliveries/{id}/retry",
        &[&some_delivery],
        "",
        None,
    );
    assert_eq!((status, v["retried"].as_i64()), (200, Some(1)), "{v}");
    let other_dead: String = c
        .query_one("SELECT delivery_id::text FROM event_bus.dead_letters WHERE tenant_id = $1::text::uuid LIMIT 1", &[&TENANT_A])
        .unwrap()
        .get(0);
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/deliveries/{id}/skip",
        &[&other_dead],
        "",
        None,
    );
    assert_eq!((status, v["skipped"].as_bool()), (200, Some(true)));
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/deliveries/{id}/skip",
        &[&other_dead],
        "",
        None,
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("55000")),
        "not dead any more: {v}"
    );
    // retry every dead delivery of one event; another tenant's event is 404
    let dead_event: String = c
        .query_one(
            "SELECT event_id::text FROM event_bus.dead_letters WHERE tenant_id = $1::text::uuid AND delivery_id::text <> $2 LIMIT 1",
            &[&TENANT_A, &other_dead],
        )
        .unwrap()
        .get(0);
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/events/{id}/retry",
        &[&dead_event],
        "",
        None,
    );
    assert_eq!((status, v["retried"].as_i64()), (200, Some(1)), "{v}");
    let (status, _) = api.call(
        &olga,
        "POST",
        "/api/v1/events/{id}/retry",
        &[&b[0]],
        "",
        None,
    );
    assert_eq!(status, 404, "another tenant's event");
    let b_dead: String = c
        .query_one("SELECT delivery_id::text FROM event_bus.dead_letters WHERE tenant_id = $1::text::uuid LIMIT 1", &[&TENANT_B])
        .unwrap()
        .get(0);
    let (status, _) = api.call(
        &olga,
        "POST",
        "/api/v1/deliveries/{id}/retry",
        &[&b_dead],
        "",
        None,
    );
    assert_eq!(status, 404, "another tenant's delivery");
    // subscriptions: an operator may not pause a shared one
    let (status, v) = api.call(&olga, "GET", "/api/v1/subscriptions", &[], "", None);
    assert_eq!(status, 200);
    let sub = v[0]["id"].as_str().unwrap().to_string();
    assert_eq!(v[0]["breaker_state"], "closed");
    let (status, v) = api.call(
        &olga,
        "POST",
        "/api/v1/subscriptions/{id}/pause",
        &[&sub],
        "",
        None,
    );
    assert_eq!((status, v["code"].as_str()), (403, Some("42501")), "{v}");

    // --- an admin: pause, resume, reset, process pending, the queue
    let adam = bearer("adam", json!({}));
    let (_, v) = api.call(
        &adam,
        "POST",
        "/api/v1/subscriptions/{id}/pause",
        &[&sub],
        "",
        None,
    );
    assert_eq!(v["changed"], true);
    let (_, v) = api.call(
        &adam,
        "POST",
        "/api/v1/subscriptions/{id}/pause",
        &[&sub],
        "",
        None,
    );
    assert_eq!(v["changed"], false, "already paused");
    let (_, v) = api.call(&adam, "GET", "/api/v1/subscriptions", &[], "", None);
    assert_eq!(v[0]["is_active"], false);
    let (_, v) = api.call(
        &adam,
        "POST",
        "/api/v1/subscriptions/{id}/resume",
        &[&sub],
        "",
        None,
    );
    assert_eq!(v["changed"], true);
    let (status, v) = api.call(
        &adam,
        "POST",
        "/api/v1/subscriptions/{id}/reset-breaker",
        &[&sub],
        "",
        None,
    );
    assert_eq!(status, 200, "{v}");
    let (status, v) = api.call(
        &adam,
        "POST",
        "/api/v1/process-pending",
        &[],
        "",
        Some(json!({"limit": 100})),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["attempted"].as_i64().is_some());
    let (status, v) = api.call(&adam, "GET", "/api/v1/queue", &[], "", None);
    assert_eq!(status, 200);
    assert!(v["dead_letters"].as_i64().unwrap() >= 1, "{v}");
    let (_, v) = api.call(
        &adam,
        "GET",
        "/api/v1/events",
        &[],
        &format!("tenant_id={TENANT_B}&event_type=order.%23"),
        None,
    );
    assert_eq!(ids_of(&v), theirs, "an admin picks a tenant");
    let missing = "0190b4a4-0000-7000-8000-000000000999";
    let (status, _) = api.call(
        &adam,
        "POST",
        "/api/v1/subscriptions/{id}/reset-breaker",
        &[missing],
        "",
        None,
    );
    assert_eq!(status, 404);

    // --- the stream: an event committed after it opened arrives, another tenant's does not
    let (status, mut stream) = Stream::open(
        port,
        "/api/v1/events/stream?event_type=order.%23",
        &alice,
        None,
    );
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(1));
    let b_new = emit(&mut c, TENANT_B, "order.placed", "B-9", json!({"b": 9}));
    let other_type = emit(&mut c, TENANT_A, "invoice.posted", "I-1", json!({}));
    let a_new = emit(&mut c, TENANT_A, "order.placed", "O-99", json!({"n": 99}));
    let (id, ev) = stream.next_event();
    assert_eq!(
        id, a_new,
        "tenant A's matching event, not {b_new} or {other_type}"
    );
    assert_eq!(ev["payload"], json!({"n": 99}));
    api.check("GET", "/api/v1/events/stream", 200, &ev);
    // a reconnect with Last-Event-ID resumes after it
    let a_next = emit(&mut c, TENANT_A, "order.placed", "O-100", json!({"n": 100}));
    let (_, mut again) = Stream::open(
        port,
        "/api/v1/events/stream?event_type=order.%23",
        &alice,
        Some(&a[11]),
    );
    let (id, _) = again.next_event();
    assert_eq!(id, a_new, "the first after the given id");
    let (id, _) = again.next_event();
    assert_eq!(id, a_next);
    // the stream refuses what it cannot serve before it starts
    let (status, _, text) = raw_http(
        port,
        "GET",
        "/api/v1/events/stream?event_type=a..b",
        &[(
            "Authorization",
            match &alice {
                Auth::Bearer(t) => format!("Bearer {t}"),
                _ => unreachable!(),
            },
        )],
        "",
    )
    .unwrap();
    assert_eq!(status, 400, "{text}");
    let (status, _, _) = raw_http(port, "GET", "/api/v1/events/stream", &[], "").unwrap();
    assert_eq!(status, 401);

    // --- the database away: 503 as JSON, and back by itself when the database is
    drop(stream);
    drop(again);
    drop(c);
    cluster.pg_ctl_stop("fast");
    let (status, v) = api.call(&alice, "GET", "/api/v1/events", &[], "", None);
    assert_eq!(
        (status, v["code"].as_str()),
        (503, Some("unavailable")),
        "{v}"
    );
    cluster.pg_ctl_start();
    wait_for("the API answers again", Duration::from_secs(60), || {
        (api.call(&alice, "GET", "/api/v1/stats", &[], "", None).0 == 200).then_some(())
    });
}

/// A JWKS served on loopback: the current document, and how many times it was fetched.
struct JwksServer {
    port: u16,
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    fn start(doc: String) -> JwksServer {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let doc = std::sync::Arc::new(std::sync::Mutex::new(doc));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let mut r = BufReader::new(s.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = d.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        JwksServer { port, doc, fetches }
    }
}

/// A signing key of the test's and its public JWK.
enum TestKey {
    Rsa(ring::signature::RsaKeyPair),
    Ec(ring::signature::EcdsaKeyPair),
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TestKey {
    fn rsa(dir: &std::path::Path, name: &str) -> TestKey {
        // ring verifies RSA but does not make keys: openssl (Debian's) makes a 2048-bit one
        let path = dir.join(format!("{name}.der"));
        let ok = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-outform",
                "DER",
                "-out",
            ])
            .arg(&path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl genpkey");
        let der = std::fs::read(&path).unwrap();
        // OpenSSL 3 writes an RSA key in DER as PKCS#1 (RSAPrivateKey)
        TestKey::Rsa(ring::signature::RsaKeyPair::from_der(&der).unwrap())
    }

    fn ec() -> TestKey {
        let rng = ring::rand::SystemRandom::new();
        let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        TestKey::Ec(ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap())
    }

    fn jwk(&self, kid: &str) -> Value {
        use ring::signature::KeyPair;
        match self {
            TestKey::Rsa(k) => {
                let c = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(k.public());
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&c.n), "e": b64(&c.e)})
            }
            TestKey::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&p[1..33]), "y": b64(&p[33..65])})
            }
        }
    }

    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let rng = ring::rand::SystemRandom::new();
        let alg = match self {
            TestKey::Rsa(_) => "RS256",
            TestKey::Ec(_) => "ES256",
        };
        let mut header = json!({"alg": alg, "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match self {
            TestKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    signed.as_bytes(),
                    &mut sig,
                )
                .unwrap();
                sig
            }
            TestKey::Ec(k) => k.sign(&rng, signed.as_bytes()).unwrap().as_ref().to_vec(),
        };
        format!("{signed}.{}", b64(&sig))
    }
}

/// Today's Supabase: asymmetric signing keys from a JWKS (RS256 and ES256), chosen by `kid`, with `aud`
/// and `iss` checked; a key rotated in is picked up without a restart; everything else is refused.
#[test]
fn bearer_tokens_from_a_jwks() {
    let cluster = Cluster::start("console-jwks", &[]);
    let hba = cluster.data().join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    let mut c = cluster.create_db_with_extension("jwksapp");
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE ROLE console_auth LOGIN NOINHERIT PASSWORD 'auth-pw';
         CREATE ROLE authenticated NOLOGIN IN ROLE event_bus_reader;
         GRANT authenticated TO console_auth;
         CREATE FUNCTION public.jwt_tenant() RETURNS uuid LANGUAGE sql STABLE AS
             $$ SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'tenant_id')::uuid $$;
         ALTER DATABASE jwksapp SET event_bus.tenant_function = 'public.jwt_tenant';",
    )
    .unwrap();
    let a = emit(&mut c, TENANT_A, "order.placed", "O-1", json!({}));
    let b = emit(&mut c, TENANT_B, "order.placed", "B-1", json!({}));
    let dir = std::env::temp_dir().join(format!("event_bus-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rsa = TestKey::rsa(&dir, "r1");
    let ec = TestKey::ec();
    let server = JwksServer::start(json!({"keys": [rsa.jwk("r1"), ec.jwk("e1")]}).to_string());
    let jwks_url = format!("http://127.0.0.1:{}/.well-known/jwks.json", server.port);
    let (_console, port) = start_console(
        &cluster,
        "jwksapp",
        &[
            ("EVENT_BUS_CONSOLE_JWKS", jwks_url.as_str()),
            ("EVENT_BUS_CONSOLE_JWT_AUDIENCE", "authenticated"),
            (
                "EVENT_BUS_CONSOLE_JWT_ISSUER",
                "https://issuer.test/auth/v1",
            ),
        ],
    );
    let (_, _, text) = raw_http(port, "GET", "/api/v1/openapi.json", &[], "").unwrap();
    let api = Api {
        port,
        doc: serde_json::from_str(&text).unwrap(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |extra: Value| {
        let mut c = json!({"role": "authenticated", "tenant_id": TENANT_A, "aud": "authenticated",
                           "iss": "https://issuer.test/auth/v1", "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let events_of = |token: String| -> (u16, Value) {
        api.call(
            &Auth::Bearer(token),
            "GET",
            "/api/v1/events",
            &[],
            "event_type=order.%23",
            None,
        )
    };
    // RS256 and ES256, each by its kid; the claims reach request.jwt.claims (the tenant function)
    for token in [
        rsa.sign(Some("r1"), &claims(json!({}))),
        ec.sign(Some("e1"), &claims(json!({}))),
    ] {
        let (status, v) = events_of(token);
        assert_eq!(status, 200, "{v}");
        assert_eq!(ids_of(&v), vec![a.clone()], "tenant A's event, not {b}");
    }
    // aud as a list naming ours
    let (status, _) = events_of(ec.sign(
        Some("e1"),
        &claims(json!({"aud": ["other", "authenticated"]})),
    ));
    assert_eq!(status, 200);
    // refused: expired, not yet valid, another audience or none, another issuer, an unknown kid, a key
    // of the other type under a kid, a tampered body, alg none, HS256 (no secret given)
    let forged_body = {
        let t = rsa.sign(Some("r1"), &claims(json!({})));
        let parts: Vec<&str> = t.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(claims(json!({"role": "postgres"})).to_string().as_bytes()),
            parts[2]
        )
    };
    let refused = [
        (
            "expired",
            rsa.sign(Some("r1"), &claims(json!({"exp": now - 3600}))),
        ),
        (
            "not yet valid",
            rsa.sign(Some("r1"), &claims(json!({"nbf": now + 3600}))),
        ),
        (
            "another audience",
            rsa.sign(Some("r1"), &claims(json!({"aud": "anon"}))),
        ),
        (
            "no audience",
            rsa.sign(Some("r1"), &claims(json!({"aud": null}))),
        ),
        (
            "another issuer",
            rsa.sign(Some("r1"), &claims(json!({"iss": "https://evil.test"}))),
        ),
        ("unknown kid", rsa.sign(Some("nope"), &claims(json!({})))),
        (
            "EC key named as RSA",
            ec.sign(Some("r1"), &claims(json!({}))),
        ),
        ("tampered body", forged_body),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(br#"{"alg":"none","kid":"r1"}"#),
                b64(claims(json!({})).to_string().as_bytes())
            ),
        ),
        (
            "HS256",
            sign_jwt(
                &claims(json!({})),
                b"a-secret-the-console-was-never-given-000",
            ),
        ),
    ];
    for (what, token) in refused {
        let (status, v) = events_of(token);
        assert_eq!(
            (status, v["code"].as_str()),
            (401, Some("unauthenticated")),
            "{what}: {v}"
        );
    }
    // a key rotated in at the issuer: its first tokens work once the set is read again (at once for
    // an unknown kid, at most every 10 s), without a restart
    let fetched = server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let rotated = TestKey::ec();
    *server.doc.lock().unwrap() =
        json!({"keys": [rsa.jwk("r1"), ec.jwk("e1"), rotated.jwk("e2")]}).to_string();
    let token = rotated.sign(Some("e2"), &claims(json!({})));
    wait_for("the rotated key accepted", Duration::from_secs(60), || {
        (events_of(token.clone()).0 == 200).then_some(())
    });
    assert!(server.fetches.load(std::sync::atomic::Ordering::SeqCst) > fetched);
    // a JWKS that cannot be read at start: the console says so and does not start
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus-console"))
        .env(
            "EVENT_BUS_CONSOLE_DATABASE_URL",
            format!(
                "postgres://console_auth:auth-pw@127.0.0.1:{}/jwksapp",
                cluster.port
            ),
        )
        .env("EVENT_BUS_CONSOLE_LISTEN", "127.0.0.1:0")
        .env("EVENT_BUS_CONSOLE_JWKS", dir.join("missing.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
