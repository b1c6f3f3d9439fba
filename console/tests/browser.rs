//! The console end to end, in Debian's headless Chromium driven over WebDriver (chromedriver),
//! against a throwaway cluster with the extension and its worker delivering to a local receiver.
//! Needs the extension installed for the pg_config first on PATH, and /usr/bin/chromium +
//! /usr/bin/chromedriver (scripts/install-deps.sh installs them).
//!
//! Screenshots of each page go to the workspace's target/console-screenshots/; with
//! EVENT_BUS_UPDATE_SCREENSHOTS=1 also to ../docs/src/guides/screenshots/ (the docs' console guide's).

use event_bus_testkit as cluster;
use event_bus_testkit::receiver;
use event_bus_testkit::{free_port, wait_for, Cluster};
use fantoccini::{Client, Locator};
use receiver::{Receiver, Reply};

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    raw_http, sign_jwt, start_console, start_console_url, wait_http_ok, Killed, TENANT_A, TENANT_B,
};
const SCRIPT_PAYLOAD: &str =
    r#"<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">"#;

fn screenshots_dir() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // the workspace's target directory
    let mut dirs = vec![root.join("../target/console-screenshots")];
    if std::env::var_os("EVENT_BUS_UPDATE_SCREENSHOTS").is_some() {
        dirs.push(root.join("../docs/src/guides/screenshots"));
    }
    dirs
}

async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    assert!(png.len() > 1000, "{name}: an empty screenshot");
    for d in screenshots_dir() {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{name}.png")), &png).unwrap();
    }
}

/// The page's visible text (asked again if the page was replaced while reading it).
async fn text(b: &Client) -> String {
    let mut last = None;
    for _ in 0..20 {
        match b.find(Locator::Css("body")).await {
            Ok(body) => match body.text().await {
                Ok(t) => return t,
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no page text: {last:?}")
}

async fn sign_in(b: &Client, base: &str, user: &str, password: &str) {
    b.goto(&format!("{base}/login")).await.unwrap();
    b.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(&b, "form button[type=submit]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.current_url().await.unwrap().path() == "/login" {
        assert!(
            Instant::now() < deadline,
            "{user} did not get past the sign-in page: {}",
            text(b).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sign_out(b: &Client) {
    click(&b, "form[action='/logout'] button").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.current_url().await.unwrap().path() != "/login" {
        assert!(
            Instant::now() < deadline,
            "sign-out did not go back to /login"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The event ids a page's table shows, in order.
async fn shown_ids(b: &Client) -> Vec<String> {
    let mut out = vec![];
    for tr in b
        .find_all(Locator::Css("table.events tbody tr[data-id]"))
        .await
        .unwrap()
    {
        out.push(tr.attr("data-id").await.unwrap().unwrap());
    }
    out
}

/// What list_events returns to a role with the same filters (run as that role, its tenant set).
fn list_as(c: &mut postgres::Client, role: &str, tenant: &str, args: &str) -> Vec<String> {
    tokio::task::block_in_place(|| common::list_events_as(c, role, tenant, args))
}

fn emit(c: &mut postgres::Client, tenant: &str, ty: &str, payload: &str) -> String {
    tokio::task::block_in_place(|| c.query_one(
        "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'accounting', 'invoice', gen_random_uuid()::text, $3::text::jsonb)::text",
        &[&tenant, &ty, &payload],
    ))
    .unwrap()
    .get(0)
}

/// The blocking postgres client, dropped off the runtime's thread (also when a test fails).
struct Db(Option<postgres::Client>);
impl std::ops::Deref for Db {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        self.0.as_ref().expect("open")
    }
}
impl std::ops::DerefMut for Db {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        self.0.as_mut().expect("open")
    }
}
impl Drop for Db {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            tokio::task::block_in_place(|| drop(c));
        }
    }
}

/// The blocking postgres client must not run on the runtime's own thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Click the element `css` once the page has it (after a click the next page may still be loading).
async fn click(b: &Client, css: &str) {
    let el = b
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
    el.click().await.unwrap();
}

/// Wait (to a deadline) until the page shows `what`: after a click the old page may still be there.
async fn expect_text(b: &Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = text(b).await;
        if t.contains(what) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what:?}:\n{t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Does `text` show `label` as words of its own (not inside an identifier from the data, such as
/// the event type event_bus.breaker.opened)?
fn contains_label(text: &str, label: &str) -> bool {
    let part_of_word =
        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.');
    text.match_indices(label).any(|(i, _)| {
        !part_of_word(text[..i].chars().next_back())
            && !part_of_word(text[i + label.len()..].chars().next())
    })
}

/// Labels of the English catalogue that differ from their Serbian ones (what must not show on a
/// Serbian page), without placeables.
fn english_only_labels() -> Vec<String> {
    let parse = |src: &str| -> Vec<(String, String)> {
        src.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let en = parse(include_str!("../i18n/en.ftl"));
    let sr: std::collections::HashMap<_, _> =
        parse(include_str!("../i18n/sr.ftl")).into_iter().collect();
    en.into_iter()
        // (field names are parts of error messages, not labels a page shows by themselves)
        .filter(|(k, v)| {
            sr.get(k) != Some(v) && !k.starts_with("lang-") && !k.starts_with("field-")
        })
        .map(|(_, v)| v.split('{').next().unwrap().trim().to_string())
        .filter(|v| v.len() >= 4)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    // --- the database: a cluster, roles as a deployment has them, password sign-in over TCP
    // (no circuit breaker: every one of the deliveries below must fail on its own, not wait held)
    let cluster = blocking(|| Cluster::start("console", &["event_bus.breaker_threshold = 0"]));
    let hba = cluster.data().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let mut c = Db(Some(blocking(|| cluster.create_db_with_extension("app"))));
    blocking(|| {
        c.batch_execute(&format!(
            "SELECT pg_reload_conf();
         CREATE ROLE console_auth LOGIN NOINHERIT PASSWORD 'auth-pw';
         CREATE ROLE alice LOGIN PASSWORD 'alice-pw' IN ROLE event_bus_reader;
         ALTER ROLE alice SET app.tenant_id = '{TENANT_A}';
         CREATE ROLE olga LOGIN PASSWORD 'olga-pw' IN ROLE event_bus_operator;
         ALTER ROLE olga SET app.tenant_id = '{TENANT_A}';
         CREATE ROLE adam LOGIN PASSWORD 'adam-pw' IN ROLE event_bus_admin;
         CREATE ROLE nobody LOGIN PASSWORD 'nobody-pw';
         GRANT alice, olga, adam, nobody TO console_auth;"
        ))
    })
    .unwrap();

    // --- a receiver that fails until it is "fixed"
    let fixed = Arc::new(AtomicBool::new(false));
    let rx = {
        let fixed = fixed.clone();
        Receiver::start(move |_, _| {
            if fixed.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(500)
            }
        })
    };
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    blocking(|| {
        c.query_one(
            "SELECT event_bus.subscribe('invoice.#', 'ledger', $1, p_max_retries => 0)",
            &[&url],
        )
    })
    .unwrap();
    let script_event = emit(
        &mut c,
        TENANT_A,
        "invoice.created",
        &serde_json::json!({ "note": SCRIPT_PAYLOAD }).to_string(),
    );
    let mut a_events = vec![script_event.clone()];
    for i in 0..59 {
        a_events.push(emit(
            &mut c,
            TENANT_A,
            "invoice.posted",
            &format!(r#"{{"n": {i}}}"#),
        ));
    }
    let b_events: Vec<String> = (0..3)
        .map(|i| {
            emit(
                &mut c,
                TENANT_B,
                "invoice.posted",
                &format!(r#"{{"b": {i}}}"#),
            )
        })
        .collect();
    let voided = emit(&mut c, TENANT_A, "invoice.voided", r#"{"v": 1}"#);
    // an ordered subscription: the first stock move of an item goes dead and parks the item's stream
    blocking(|| {
        c.query_one("SELECT event_bus.subscribe('stock.#', 'warehouse', $1, p_max_retries => 0, p_ordered => true)", &[&url])
            .unwrap();
        for n in 1..=2 {
            c.query_one(
                "SELECT event_bus.emit_module_event($1::text::uuid, 'stock.moved', 'inventory', 'item', 'SKU-1', jsonb_build_object('n', $2::int))",
                &[&TENANT_A, &n],
            )
            .unwrap();
        }
    });
    // every delivery fails once (no retries): dead letters
    blocking(|| {
        wait_for("every delivery dead", Duration::from_secs(60), || {
            (cluster::count(&mut c, "SELECT count(*) FROM event_bus.dead_letters") == 65
                && cluster::count(
                    &mut c,
                    "SELECT count(*) FROM event_bus.parked_streams WHERE waiting = 1",
                ) == 1)
                .then_some(())
        })
    });

    // --- the console and the browser
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _console = Killed(
        Command::new(env!("CARGO_BIN_EXE_event-bus-console"))
            .env(
                "EVENT_BUS_CONSOLE_DATABASE_URL",
                format!(
                    "postgres://console_auth:auth-pw@127.0.0.1:{}/app",
                    cluster.port
                ),
            )
            .env("EVENT_BUS_CONSOLE_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "EVENT_BUS_CONSOLE_METRICS_TOKEN",
                "a-metrics-token-for-tests",
            )
            .env("EVENT_BUS_CONSOLE_METRICS_ROLE", "adam")
            .stdout(Stdio::null())
            .spawn()
            .expect("the console starts"),
    );
    blocking(|| wait_http_ok(port, "/healthz"));
    let (_driver, b, profile) = common::start_browser().await;

    // --- signing in: a wrong password and a role outside event_bus are turned away
    b.goto(&format!("{base}/events")).await.unwrap();
    assert_eq!(
        b.current_url().await.unwrap().path(),
        "/login",
        "no session: the sign-in page"
    );
    shot(&b, "login").await;
    let refused = submit_login(&b, "alice", "wrong").await;
    assert!(
        refused.contains("Wrong user name or password."),
        "{refused}"
    );
    let refused = submit_login(&b, "nobody", "nobody-pw").await;
    assert!(refused.contains("may not use the console"), "{refused}");

    // --- a reader of tenant A: A's events, none of B's, no repair buttons
    sign_in(&b, &base, "alice", "alice-pw").await;
    b.goto(&format!("{base}/events")).await.unwrap();
    let page1 = shown_ids(&b).await;
    assert_eq!(page1.len(), 50, "a full first page");
    // (the worker's own operational events about A's dead deliveries are A's too)
    let foreign = blocking(|| {
        c.query_one(
            "SELECT count(*) FROM event_bus.module_events WHERE id::text = ANY($1) AND tenant_id <> $2::text::uuid",
            &[&page1, &TENANT_A],
        )
    })
    .unwrap()
    .get::<_, i64>(0);
    assert_eq!(foreign, 0, "only tenant A's events");
    assert!(
        b_events.iter().all(|id| !page1.contains(id)),
        "none of tenant B's"
    );
    shot(&b, "events").await;
    // the pages agree with list_events for the same filters, page after page
    assert_eq!(page1, list_as(&mut c, "alice", TENANT_A, "p_limit => 50"));
    click(&b, "nav.pager a[rel=next]").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b
        .current_url()
        .await
        .unwrap()
        .query()
        .unwrap_or("")
        .contains("before=")
    {
        assert!(Instant::now() < deadline, "the next page did not open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page2 = shown_ids(&b).await;
    assert_eq!(
        page2,
        list_as(
            &mut c,
            "alice",
            TENANT_A,
            &format!("p_before => '{}', p_limit => 50", page1[49])
        )
    );
    assert!(!page2.is_empty() && page2.iter().all(|id| !page1.contains(id)));
    b.goto(&format!("{base}/events?type=invoice.created&status=failed"))
        .await
        .unwrap();
    let filtered = shown_ids(&b).await;
    assert!(filtered.contains(&script_event));
    assert_eq!(
        filtered,
        list_as(
            &mut c,
            "alice",
            TENANT_A,
            "p_event_type => 'invoice.created', p_status => 'failed'"
        )
    );
    // a reader of A cannot open B's event, and sees no retry button on A's dead one
    b.goto(&format!("{base}/events/{}", b_events[0]))
        .await
        .unwrap();
    assert!(
        text(&b).await.contains("Not found"),
        "B's event is not A's reader's to see"
    );
    b.goto(&format!("{base}/events/{script_event}"))
        .await
        .unwrap();
    assert!(
        b.find_all(Locator::Css("button[data-action=retry]"))
            .await
            .unwrap()
            .is_empty(),
        "no retry for a reader"
    );
    // a <script> payload is text, and runs nothing
    let body = text(&b).await;
    assert!(
        body.contains("<script>window.__pwned = 1</script>"),
        "the payload shows as text"
    );
    let pwned = b
        .execute("return window.__pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, serde_json::json!(true), "the payload's script ran");
    shot(&b, "event").await;

    // --- a forged POST from the reader (its own session and CSRF token) is refused, nothing changes
    let session = b
        .get_named_cookie("ebc_session")
        .await
        .unwrap()
        .value()
        .to_string();
    let csrf = b
        .find(Locator::Css("form[action='/logout'] input[name=csrf]"))
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = raw_http(
        port,
        "POST",
        &format!("/events/{script_event}/retry"),
        &[
            ("Cookie", format!("ebc_session={session}")),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        &format!("csrf={csrf}"),
    )
    .unwrap();
    assert_eq!(status, 403, "{body}");
    // and without the token, a cross-site form is refused before the database is asked
    let (status, _, _) = raw_http(
        port,
        "POST",
        &format!("/events/{script_event}/retry"),
        &[
            ("Cookie", format!("ebc_session={session}")),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        "csrf=forged",
    )
    .unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        blocking(|| {
            cluster::count(&mut c, &format!("SELECT count(*) FROM event_bus.module_event_deliveries WHERE event_id = '{script_event}' AND status = 'failed'"))
        }),
        1,
        "the dead delivery is still dead"
    );

    // --- the live tail: an event emitted after the page loaded shows within 2 s
    b.goto(&format!("{base}/events")).await.unwrap();
    b.wait()
        .for_element(Locator::Css("[data-live]"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // the page's EventSource connects
    let fresh = emit(&mut c, TENANT_A, "invoice.paid", r#"{"live": true}"#);
    let emitted = Instant::now();
    let _ = emit(&mut c, TENANT_B, "invoice.paid", r#"{"live": "b"}"#);
    let sel = format!("table.events tbody tr[data-id='{fresh}']");
    loop {
        if !b.find_all(Locator::Css(&sel)).await.unwrap().is_empty() {
            break;
        }
        assert!(
            emitted.elapsed() < Duration::from_secs(2),
            "the new event did not appear in the live tail within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shown_ids(&b).await.iter().all(|id| !b_events.contains(id)),
        "the tail shows only A's events"
    );

    // --- Serbian: no English label on any page
    let english = english_only_labels();
    assert!(
        english.len() > 80,
        "the catalogue test needs the labels: {}",
        english.len()
    );
    for path in [
        "/?lang=sr",
        "/events",
        &format!("/events/{script_event}"),
        "/dead-letters",
        "/subscriptions",
        "/parked",
    ] {
        b.goto(&format!("{base}{path}")).await.unwrap();
        let body = text(&b).await;
        for label in &english {
            assert!(
                !contains_label(&body, label),
                "{path} in Serbian shows the English label {label:?}:\n{body}"
            );
        }
    }
    b.goto(&format!("{base}/events")).await.unwrap();
    shot(&b, "events-sr").await;
    b.goto(&format!("{base}/?lang=en")).await.unwrap();
    sign_out(&b).await;

    // --- an operator retries a dead event after the endpoint is fixed, and sees it completed
    sign_in(&b, &base, "olga", "olga-pw").await;
    b.goto(&format!("{base}/dead-letters")).await.unwrap();
    assert_eq!(
        b.find_all(Locator::Css("table.dead tbody tr"))
            .await
            .unwrap()
            .len(),
        50,
        "a full page of A's dead letters"
    );
    shot(&b, "dead-letters").await;
    // retry-all shows the count it would touch before touching anything
    b.goto(&format!("{base}/dead-letters?type=invoice.created"))
        .await
        .unwrap();
    click(&b, "form.preview button").await;
    expect_text(&b, "1 failed delivery matches this filter.").await;
    // retry all matching: the count first, then the retry
    b.goto(&format!("{base}/dead-letters?type=invoice.voided"))
        .await
        .unwrap();
    click(&b, "form.preview button").await;
    click(&b, "form.confirm button").await;
    expect_text(&b, "Re-armed 1 delivery.").await;
    blocking(|| {
        wait_for(
            "the voided invoice re-armed",
            Duration::from_secs(10),
            || {
                // (due again, held behind its subscription's open breaker, or already tried again)
                (cluster::count(
                &mut c,
                &format!(
                    "SELECT count(*) FROM event_bus.module_event_deliveries WHERE event_id = '{voided}'
                        AND (status <> 'failed' OR attempts = 2)"
                ),
            ) == 1)
                .then_some(())
            },
        )
    });
    fixed.store(true, Ordering::SeqCst);
    b.goto(&format!("{base}/events/{script_event}"))
        .await
        .unwrap();
    click(&b, "button[data-action=retry]").await;
    expect_text(&b, "Re-armed 1 delivery.").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        b.goto(&format!("{base}/events/{script_event}"))
            .await
            .unwrap();
        let status = b
            .find(Locator::Css("h1 .badge"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if status == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retried event is still {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&b, "event-retried").await;
    // replay the completed delivery to its subscription: delivered again
    let before = rx.requests.lock().unwrap().len();
    click(&b, "form[action$='/replay'] button").await;
    expect_text(&b, "Replayed 1 delivery.").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.requests.lock().unwrap().len() == before {
        assert!(Instant::now() < deadline, "the replay was not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sign_out(&b).await;

    // --- an admin: every tenant, the overview, subscriptions with targets, parked streams
    sign_in(&b, &base, "adam", "adam-pw").await;
    b.goto(&format!("{base}/events")).await.unwrap();
    let all = shown_ids(&b).await;
    assert!(
        all.iter().any(|id| b_events.contains(id)) || all.len() == 50,
        "an admin sees every tenant"
    );
    b.goto(&format!("{base}/?window=1h")).await.unwrap();
    let body = text(&b).await;
    assert!(
        body.contains("Dead letters") && body.contains("Delivery attempts"),
        "{body}"
    );
    assert!(
        !b.find_all(Locator::Css("svg.chart rect.bad"))
            .await
            .unwrap()
            .is_empty(),
        "the chart shows the failures"
    );
    shot(&b, "overview").await;
    // process pending now (admins): delivers what is due in the request
    click(&b, "form[action='/process-pending'] button").await;
    expect_text(&b, "Processed ").await;
    b.goto(&format!("{base}/subscriptions")).await.unwrap();
    assert!(text(&b).await.contains(&url), "an admin sees the target");
    shot(&b, "subscriptions").await;
    // pause and resume a subscription
    let pause = "table.subs tr:first-child form[action$='/pause'] button";
    click(&b, pause).await;
    expect_text(&b, "Paused.").await;
    let paused = blocking(|| {
        cluster::count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE NOT is_active",
        )
    });
    assert_eq!(paused, 1);
    click(&b, "table.subs form[action$='/resume'] button").await;
    expect_text(&b, "Resumed.").await;
    let paused = blocking(|| {
        cluster::count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE NOT is_active",
        )
    });
    assert_eq!(paused, 0);
    // a content filter: set by an admin on the page, refused with the database's reason when it is
    // not a predicate (the one set stays)
    let filter_input = "table.subs tr:first-child form.filter input[name='filter']";
    let set_filter = |f: &'static str| {
        let b = b.clone();
        async move {
            let input = b
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css(filter_input))
                .await
                .unwrap();
            input.clear().await.unwrap();
            input.send_keys(f).await.unwrap();
            click(&b, "table.subs tr:first-child form.filter button").await;
        }
    };
    set_filter("$.payload.total > 10000").await;
    expect_text(&b, "Filter saved.").await;
    let mut filters = || {
        blocking(|| {
            cluster::count(
                &mut c,
                "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE filter::text = '($.\"payload\".\"total\" > 10000)'",
            )
        })
    };
    assert_eq!(filters(), 1);
    set_filter("$.payload.total").await;
    expect_text(&b, "is not a predicate").await;
    assert_eq!(filters(), 1);
    b.goto(&format!("{base}/subscriptions")).await.unwrap();
    set_filter("").await;
    expect_text(&b, "Filter saved.").await;
    assert_eq!(
        blocking(|| cluster::count(
            &mut c,
            "SELECT count(*) FROM event_bus.module_event_subscriptions WHERE filter IS NOT NULL"
        )),
        0
    );
    // the parked stream: its blocking delivery and the one waiting behind it; skipping lets it go on
    b.goto(&format!("{base}/parked")).await.unwrap();
    assert_eq!(
        b.find_all(Locator::Css("table.parked tbody tr"))
            .await
            .unwrap()
            .len(),
        1
    );
    expect_text(&b, "SKU-1").await;
    shot(&b, "parked").await;
    click(&b, "table.parked form[action$='/skip'] button").await;
    expect_text(&b, "Skipped the delivery.").await;
    blocking(|| {
        wait_for(
            "the waiting stock move delivered",
            Duration::from_secs(20),
            || {
                (cluster::count(
                &mut c,
                "SELECT count(*) FROM event_bus.module_events WHERE event_type = 'stock.moved' AND payload->>'n' = '2' AND status = 'completed'",
            ) == 1)
                .then_some(())
            },
        )
    });

    // --- metrics behind the token
    let (status, _, _) = raw_http(port, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(status, 401);
    let (status, _, body) = raw_http(
        port,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer a-metrics-token-for-tests".into())],
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("event_bus_dead_letters"), "{body}");

    b.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
}

/// Submit the sign-in form and return the page text (still the sign-in page when refused).
async fn submit_login(b: &Client, user: &str, password: &str) -> String {
    let base = {
        let u = b.current_url().await.unwrap();
        format!(
            "{}://{}",
            u.scheme(),
            u.host_str().unwrap().to_string()
                + &u.port().map(|p| format!(":{p}")).unwrap_or_default()
        )
    };
    b.goto(&format!("{base}/login")).await.unwrap();
    b.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    b.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys(password)
        .await
        .unwrap();
    click(&b, "form button[type=submit]").await;
    b.wait()
        .for_element(Locator::Css(".banner.error"))
        .await
        .unwrap();
    text(b).await
}

/// Supabase's way: a signed JWT whose `role` claim is the role and whose claims a tenant function
/// reads (request.jwt.claims); bad input and a stopped database get a clear answer, and the
/// console recovers by itself when the database is back.
#[test]
fn bearer_tokens_bad_input_and_a_database_outage() {
    let cluster = Cluster::start("console-jwt", &[]);
    let hba = cluster.data().join("pg_hba.conf");
    std::fs::write(&hba, "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n").unwrap();
    let mut c = cluster.create_db_with_extension("jwtapp");
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE ROLE console_auth LOGIN NOINHERIT PASSWORD 'auth-pw';
         CREATE ROLE authenticated NOLOGIN IN ROLE event_bus_operator;
         CREATE ROLE anon NOLOGIN;
         GRANT authenticated, anon TO console_auth;
         CREATE FUNCTION public.jwt_tenant() RETURNS uuid LANGUAGE sql STABLE AS
             $$ SELECT (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'tenant_id')::uuid $$;
         ALTER DATABASE jwtapp SET event_bus.tenant_function = 'public.jwt_tenant';",
    )
    .unwrap();
    let mut c = cluster.connect("jwtapp");
    let a: Vec<String> = (0..2)
        .map(|i| {
            emit(
                &mut c,
                TENANT_A,
                "invoice.posted",
                &format!(r#"{{"a": {i}}}"#),
            )
        })
        .collect();
    let b = emit(&mut c, TENANT_B, "invoice.posted", r#"{"b": 1}"#);
    let secret = "a-jwt-secret-of-at-least-32-characters";
    let (_console, port) = start_console(
        &cluster,
        "jwtapp",
        &[("EVENT_BUS_CONSOLE_JWT_SECRET", secret)],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |claims: serde_json::Value| sign_jwt(&claims, secret.as_bytes());
    let bearer = |t: &str| vec![("Authorization", format!("Bearer {t}"))];

    // the tenant comes from the token's claims, the privileges from its role
    let good = token(
        serde_json::json!({"role": "authenticated", "tenant_id": TENANT_A, "exp": now + 600}),
    );
    let (status, _, body) = raw_http(port, "GET", "/events", &bearer(&good), "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        a.iter().all(|id| body.contains(id.as_str())),
        "tenant A's events"
    );
    assert!(!body.contains(b.as_str()), "not tenant B's");
    assert!(body.contains(TENANT_A), "the page names the token's tenant");
    let other = token(
        serde_json::json!({"role": "authenticated", "tenant_id": TENANT_B, "exp": now + 600}),
    );
    let (_, _, body) = raw_http(port, "GET", "/events", &bearer(&other), "").unwrap();
    assert!(body.contains(b.as_str()) && !body.contains(a[0].as_str()));
    // expired, forged, or a role outside event_bus: refused
    let expired = token(
        serde_json::json!({"role": "authenticated", "tenant_id": TENANT_A, "exp": now - 3600}),
    );
    let (status, head, _) = raw_http(port, "GET", "/events", &bearer(&expired), "").unwrap();
    assert_eq!(status, 303, "an expired token goes to sign-in");
    assert!(head.contains("/login?next=%2Fevents&expired=1"), "{head}");
    let forged = sign_jwt(
        &serde_json::json!({"role": "authenticated", "tenant_id": TENANT_A}),
        b"another-secret-another-secret-another",
    );
    assert_eq!(
        raw_http(port, "GET", "/events", &bearer(&forged), "")
            .unwrap()
            .0,
        303
    );
    let anon = token(serde_json::json!({"role": "anon", "exp": now + 600}));
    let (status, _, body) = raw_http(port, "GET", "/events", &bearer(&anon), "").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may not use the console"));

    // bad input: a clear message, never a 500
    for (path, status, says) in [
        ("/events/not-a-uuid", 400, "is not a UUID"),
        (
            "/events?status=done",
            400,
            "use pending, processing, completed or failed",
        ),
        ("/events?type=a..b", 400, "Invalid input"),
        ("/events?from=yesterday", 400, "is not a date and time"),
        ("/events?before=%3Cscript%3E", 400, "is not a UUID"),
        (
            "/events/0190b4a4-0000-7000-8000-000000000999",
            404,
            "Not found",
        ),
        ("/?window=3y", 400, "use 1h, 24h or 7d"),
        ("/no-such-page", 404, "There is no such page"),
        // a time range that cannot match says so (it showed an empty list)
        (
            "/events?from=2026-01-02T00:00&to=2026-01-01T00:00",
            400,
            "is later than",
        ),
        // a bad type pattern is a pattern of event types, not of a subscription
        ("/events?type=a..b", 400, "invalid event-type pattern"),
    ] {
        let (got, _, body) = raw_http(port, "GET", path, &bearer(&good), "").unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
        assert!(!body.contains("<script>"), "{path} echoes input unescaped");
        // an error page keeps the navigation, and a bad filter keeps its form as typed
        assert!(
            body.contains(r#"href="/dead-letters""#),
            "{path}: no navigation: {body}"
        );
        if path.starts_with("/events?") {
            assert!(
                body.contains(r#"<form class="filters""#),
                "{path}: the filter form is gone: {body}"
            );
        }
    }
    // the details of a bad input in the page's language
    let mut sr = bearer(&good);
    sr.push(("Accept-Language", "sr".to_string()));
    for (path, says) in [
        ("/events/not-a-uuid", "nije UUID"),
        ("/events?from=yesterday", "nije datum i vreme"),
        ("/events?status=done", "koristite pending"),
    ] {
        let (got, _, body) = raw_http(port, "GET", path, &sr, "").unwrap();
        assert_eq!(got, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    // filters are what the user typed, however long the SQL allows (they were cut at 200
    // characters: a 250-character entity id found nothing, a long type was refused), and beyond a
    // bound a clear 400
    let long_type = format!("{}.posted", "t".repeat(230));
    let long_entity = "e".repeat(250);
    let long: String = c
        .query_one(
            "SELECT event_bus.emit_module_event($1::text::uuid, $2, 'accounting', 'invoice', $3, '{}')::text",
            &[&TENANT_A, &long_type, &long_entity],
        )
        .unwrap()
        .get(0);
    for query in [
        format!("entity_id={long_entity}"),
        format!("type={long_type}"),
    ] {
        let (status, _, body) =
            raw_http(port, "GET", &format!("/events?{query}"), &bearer(&good), "").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains(long.as_str()),
            "a long filter finds its event: {query}"
        );
    }
    let (status, _, body) = raw_http(
        port,
        "GET",
        &format!("/events?entity_id={}", "e".repeat(1001)),
        &bearer(&good),
        "",
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 1000 characters"), "{body}");

    // a bearer-token POST needs no CSRF token (a browser never sends the header by itself):
    // the operator role may retry; a malformed form value is refused
    let dead = a[0].clone();
    let (status, _, body) = raw_http(
        port,
        "POST",
        &format!("/events/{dead}/retry"),
        &bearer(&good),
        "",
    )
    .unwrap();
    assert_eq!(status, 303, "{body}");

    // the database goes away: every page says so (503), and the console comes back by itself
    cluster.pg_ctl_stop("fast");
    let (status, _, body) = raw_http(port, "GET", "/events", &bearer(&good), "").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("The database cannot be reached"), "{body}");
    assert_eq!(raw_http(port, "GET", "/healthz", &[], "").unwrap().0, 503);
    cluster.pg_ctl_start();
    wait_for("the console recovers", Duration::from_secs(30), || {
        let (status, _, _) = raw_http(port, "GET", "/events", &bearer(&good), "").ok()?;
        (status == 200).then_some(())
    });
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir` (readable by postgres).
fn make_certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\n[dn]\n[ca]\nbasicConstraints = critical, CA:true\nkeyUsage = critical, keyCertSign, cRLSign\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\nbasicConstraints = CA:false\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=event_bus console test CA",
        "-config",
        "ca.cnf",
        "-extensions",
        "ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        "-config",
        "ca.cnf",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let _ = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status();
    let _ = Command::new("chmod")
        .arg("600")
        .arg(dir.join("server.key"))
        .status();
}

/// Managed PostgreSQL wants TLS: with sslmode=require the console's pool, its sign-in check and its
/// LISTEN connection all use it, and a certificate from an unknown CA is refused.
#[test]
fn the_console_reaches_its_database_over_tls() {
    let certs = std::env::temp_dir().join(format!("event_bus-console-tls-{}", std::process::id()));
    make_certificates(&certs);
    let cert = certs.join("server.crt");
    let key = certs.join("server.key");
    let conf = [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", cert.display()),
        format!("ssl_key_file = '{}'", key.display()),
    ];
    let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
    let cluster = Cluster::start("console-tls", &conf);
    std::fs::write(
        cluster.data().join("pg_hba.conf"),
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n",
    )
    .unwrap();
    let mut c = cluster.create_db_with_extension("tlsapp");
    c.batch_execute(
        "SELECT pg_reload_conf();
         CREATE ROLE console_auth LOGIN NOINHERIT PASSWORD 'auth-pw';
         CREATE ROLE adam LOGIN PASSWORD 'adam-pw' IN ROLE event_bus_admin;
         GRANT adam TO console_auth;",
    )
    .unwrap();
    let url = format!(
        "postgres://console_auth:auth-pw@127.0.0.1:{}/tlsapp?sslmode=require",
        cluster.port
    );

    // a CA the console does not know: refused, and it says so
    let port = free_port();
    let _untrusting = Killed(
        Command::new(env!("CARGO_BIN_EXE_event-bus-console"))
            .env("EVENT_BUS_CONSOLE_DATABASE_URL", &url)
            .env("EVENT_BUS_CONSOLE_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the console answers", Duration::from_secs(30), || {
        raw_http(port, "GET", "/healthz", &[], "").ok()
    });
    let (status, _, body) = raw_http(port, "GET", "/healthz", &[], "").unwrap();
    assert_eq!(status, 503, "{body}");

    // with the CA: the pool, the sign-in check and the live tail's LISTEN all over TLS
    let ca = certs.join("ca.crt");
    let (_console, port) = start_console_url(
        &url,
        &[("EVENT_BUS_CONSOLE_DATABASE_CA_FILE", ca.to_str().unwrap())],
    );
    let (_, head, body) = raw_http(port, "GET", "/login", &[], "").unwrap();
    let token = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ebc_login=")
                .or_else(|| l.strip_prefix("Set-Cookie: ebc_login="))
        })
        .and_then(|v| v.split(';').next())
        .expect("a sign-in token")
        .to_string();
    assert!(body.contains(&token));
    let (status, head, body) = raw_http(
        port,
        "POST",
        "/login",
        &[
            ("Cookie", format!("ebc_login={token}")),
            ("Content-Type", "application/x-www-form-urlencoded".into()),
        ],
        &format!("username=adam&password=adam-pw&login_token={token}"),
    )
    .unwrap();
    assert_eq!(status, 303, "signing in over TLS: {body}");
    let session = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: ebc_session=")
                .then(|| l[12..].split(';').next().unwrap().to_string())
        })
        .expect("a session");
    let (status, _, body) = raw_http(port, "GET", "/events", &[("Cookie", session)], "").unwrap();
    assert_eq!(status, 200, "{body}");
    // the live tail's LISTEN connection is opened by a task of its own at start (and again 2 s
    // after a failed attempt): wait for it rather than count at once
    let tls_query = "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                      WHERE a.application_name LIKE 'event-bus-console%' AND s.ssl";
    wait_for(
        "the pool's and the LISTEN connection, both over TLS",
        Duration::from_secs(30),
        || (cluster::count(&mut c, tls_query) >= 2).then_some(()),
    );
    let plain = cluster::count(
        &mut c,
        "SELECT count(*) FROM pg_stat_activity a LEFT JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name LIKE 'event-bus-console%' AND NOT coalesce(s.ssl, false)",
    );
    assert_eq!(plain, 0, "every console connection uses TLS");
    let _ = std::fs::remove_dir_all(&certs);
}
