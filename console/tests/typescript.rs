//! The TypeScript packages (clients/typescript: @event-bus/client, @event-bus/react) and the example
//! (examples/react-monitor) against a real console and database: this test sets them up — a cluster
//! with the extension, roles of two tenants, dead letters, the console — then runs the packages' own
//! tests (vitest, the hooks in jsdom) with the console's address and a token per role, and opens the
//! example's build in headless Chromium, calling the console cross-origin, for its screenshot.
//! `scripts/test.sh clients` installs the npm packages (npm ci) and builds them first; needs the
//! extension installed for the pg_config first on PATH, Node 20, Chromium and chromedriver.

mod common;
use common::{sign_jwt, start_console, TENANT_A, TENANT_B};
use event_bus_testkit as cluster;
use event_bus_testkit::receiver::{Receiver, Reply};
use event_bus_testkit::wait_for;
use fantoccini::Locator;
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SECRET: &str = "a-typescript-jwt-secret-of-32-characters";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn token(role: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    sign_jwt(&json!({"role": role, "exp": now + 3600}), SECRET.as_bytes())
}

/// Serve a built site's files on loopback (what `vite preview` does, without a Node process to stop).
fn serve_dir(dir: PathBuf) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = first
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .split(['?', '#'])
                .next()
                .unwrap()
                .to_string();
            let rel = path.trim_start_matches('/');
            let file = if rel.is_empty() || rel.contains("..") {
                dir.join("index.html")
            } else {
                dir.join(rel)
            };
            let (status, body) = match std::fs::read(&file) {
                Ok(b) => ("200 OK", b),
                Err(_) => ("404 Not Found", b"not found".to_vec()),
            };
            let ty = match file.extension().and_then(|e| e.to_str()) {
                Some("html") => "text/html; charset=utf-8",
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                Some("map") | Some("json") => "application/json",
                _ => "application/octet-stream",
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(&body);
        }
    });
    port
}

fn npm(dir: &Path, args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("npm (Node 20)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Poll a script in the page until it returns true (a loaded machine: 30 s).
async fn wait_until(b: &fantoccini::Client, script: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if b.execute(script, vec![]).await.unwrap() == serde_json::Value::Bool(true) {
            return;
        }
        assert!(std::time::Instant::now() < end, "timed out: {script}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn the_typescript_packages_and_the_example_against_a_real_console() {
    let ts = root().join("clients/typescript");
    let example = root().join("examples/react-monitor");
    for d in [&ts, &example] {
        assert!(
            d.join("node_modules").is_dir(),
            "{}: run `npm ci` there first (scripts/test.sh clients does)",
            d.display()
        );
    }
    let (cluster, mut c) =
        common::app_cluster("console-ts", "tsapp", &["event_bus.breaker_threshold = 0"]);
    // every order's delivery goes dead on its first attempt: failed events and dead letters to show
    let rx = Receiver::start(|_, _| Reply::status(503));
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let event_b = {
        c.query_one(
            "SELECT event_bus.subscribe('order.#', 'fulfilment', $1, p_max_retries => 0)",
            &[&url],
        )
        .unwrap();
        for i in 0..12 {
            c.query_one(
                "SELECT event_bus.emit_module_event($1::text::uuid, 'order.placed', 'sales', 'order', $2, jsonb_build_object('n', $3::int, 'total', 100 * $3::int))",
                &[&TENANT_A, &format!("O-{i}"), &i],
            )
            .unwrap();
        }
        let b: String = c
            .query_one("SELECT event_bus.emit_module_event($1::text::uuid, 'order.placed', 'sales', 'order', 'B-1', '{}')::text", &[&TENANT_B])
            .unwrap()
            .get(0);
        wait_for("every delivery dead", Duration::from_secs(90), || {
            (cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters") == 13)
                .then_some(())
        });
        b
    };
    let site = serve_dir(example.join("dist"));
    let origin = format!("http://127.0.0.1:{site}");
    let (_console, port) = start_console(
        &cluster,
        "tsapp",
        &[
            ("EVENT_BUS_CONSOLE_JWT_SECRET", SECRET),
            ("EVENT_BUS_CONSOLE_CORS_ORIGINS", &origin),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");

    // --- the packages' own tests
    let env = vec![
        ("EB_URL", base.clone()),
        ("EB_TENANT_A", TENANT_A.to_string()),
        ("EB_EVENT_B", event_b.clone()),
        ("EB_TOKEN_READER", token("alice")),
        ("EB_TOKEN_OPERATOR", token("olga")),
        ("EB_TOKEN_ADMIN", token("adam")),
        ("EB_TOKEN_OTHER_READER", token("bob")),
    ];
    let (ok, out) = npm(&ts, &["test"], &env);
    println!("{out}");
    assert!(ok, "the TypeScript packages' tests failed:\n{out}");

    // --- the example in Chromium, calling the console from another origin with a bearer token
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (_driver, b, profile) = common::start_browser().await;
        b.goto(&format!("{origin}/#api={base}&token={}", token("adam")))
            .await
            .unwrap();
        if b
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("table[data-ready] tbody tr"))
            .await
            .is_err()
        {
            let text = b.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
            let log = b
                .execute("return JSON.stringify(window.__errors || [])", vec![])
                .await
                .unwrap();
            panic!("the example's events did not load; the page says:\n{text}\n{log}");
        }
        let rows = b
            .find_all(Locator::Css("table[data-ready] tbody tr"))
            .await
            .unwrap();
        assert!(
            rows.len() >= 13,
            "every tenant's events for an admin: {}",
            rows.len()
        );
        let failed = b
            .find(Locator::Css("[data-stat=failed]"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(failed.parse::<i64>().unwrap_or(0) >= 12, "{failed}");
        // the event-type filter: the list is fetched again with it
        b.find(Locator::Css("input[placeholder='invoice.*']"))
            .await
            .unwrap()
            .send_keys("order.#")
            .await
            .unwrap();
        wait_until(&b, "return document.querySelectorAll('table[data-ready] tbody tr').length === 13 && [...document.querySelectorAll('table[data-ready] tbody code')].every(c => !c.textContent.startsWith('event_bus.'))").await;
        // an event's detail: payload and attempt log
        b.find(Locator::XPath("//tbody/tr[.//code[text()='O-5']]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css("[data-detail] pre"))
            .await
            .unwrap();
        let detail = b
            .find(Locator::Css("[data-detail]"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            detail.contains("\"total\": 500") && detail.contains("503"),
            "{detail}"
        );
        b.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        let png = b.screenshot().await.unwrap();
        // target/console-screenshots; with EVENT_BUS_UPDATE_SCREENSHOTS=1 also the example's and the docs'
        let mut files = vec![root().join("target/console-screenshots/react-monitor.png")];
        if std::env::var_os("EVENT_BUS_UPDATE_SCREENSHOTS").is_some() {
            files.push(example.join("screenshot.png"));
            files.push(root().join("docs/src/guides/screenshots/react-monitor.png"));
        }
        for f in files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, &png).unwrap();
        }
        // "Process pending" as the admin
        b.find(Locator::XPath("//button[text()='Process pending']"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::XPath(
                "//span[contains(., 'deliveries attempted')]",
            ))
            .await
            .unwrap();
        b.close().await.unwrap();
        let _ = std::fs::remove_dir_all(&profile);
    });
    drop(c);
}
