//! What the console's integration tests share: the console as a child process, bare HTTP requests
//! (a forged request is not something a browser or client library should make for us), signed JWTs.
#![allow(dead_code)]

use event_bus_testkit::{free_port, wait_for, Cluster};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const TENANT_A: &str = "0190b4a4-0000-7000-8000-00000000000a";
pub const TENANT_B: &str = "0190b4a4-0000-7000-8000-00000000000b";

pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_http_ok(port: u16, path: &str) {
    wait_for(
        &format!("GET {path} on {port}"),
        Duration::from_secs(30),
        || {
            let (status, _, _) = raw_http(port, "GET", path, &[], "").ok()?;
            (status == 200).then_some(())
        },
    );
}

/// `read`, again when a signal interrupted it (EINTR: seen once, in `bearer_tokens_from_a_jwks`):
/// an interrupted read is not the server's answer, and `Read::read` does not retry it itself.
fn read_retrying(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// A bare HTTP/1.1 request (a forged form post is not something a browser should make for us).
pub fn raw_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    // read the head, then Content-Length bytes (some servers keep the connection open anyway)
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = read_retrying(&mut s, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = buf[head_end + 4..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = read_retrying(&mut s, &mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head, String::from_utf8_lossy(&body).to_string()))
}

pub fn sign_jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    use hmac::Mac;
    let h = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = B64.encode(serde_json::to_vec(claims).unwrap());
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    m.update(format!("{h}.{p}").as_bytes());
    format!("{h}.{p}.{}", B64.encode(m.finalize().into_bytes()))
}

pub fn start_console(cluster: &Cluster, db: &str, envs: &[(&str, &str)]) -> (Killed, u16) {
    start_console_url(
        &format!(
            "postgres://console_auth:auth-pw@127.0.0.1:{}/{db}",
            cluster.port
        ),
        envs,
    )
}

pub fn start_console_url(url: &str, envs: &[(&str, &str)]) -> (Killed, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_event-bus-console"));
    cmd.env("EVENT_BUS_CONSOLE_DATABASE_URL", url)
        .env("EVENT_BUS_CONSOLE_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = Killed(cmd.spawn().expect("the console starts"));
    wait_http_ok(port, "/healthz");
    (child, port)
}

/// Debian's headless Chromium over WebDriver (chromedriver on a loopback port): the driver process (kill it
/// after the session), the session, and the throwaway profile directory to remove.
pub async fn start_browser() -> (Killed, fantoccini::Client, std::path::PathBuf) {
    let driver_port = free_port();
    let driver = Killed(
        Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium-driver)"),
    );
    tokio::task::spawn_blocking(move || wait_http_ok(driver_port, "/status"))
        .await
        .unwrap();
    let profile = std::env::temp_dir().join(format!(
        "event_bus-console-chrome-{}-{driver_port}",
        std::process::id()
    ));
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000", "--lang=en-US",
                     format!("--user-data-dir={}", profile.display())]
        }
    }))
    .unwrap();
    let b =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a WebDriver session");
    (driver, b, profile)
}

/// The ids list_events gives a role bound to a tenant, in SQL (what the console must agree with).
pub fn list_events_as(
    c: &mut postgres::Client,
    role: &str,
    tenant: &str,
    args: &str,
) -> Vec<String> {
    let mut tx = c.transaction().unwrap();
    tx.batch_execute(&format!(
        "SET LOCAL ROLE {role}; SET LOCAL app.tenant_id = '{tenant}'"
    ))
    .unwrap();
    let ids = tx
        .query(
            &format!("SELECT id::text FROM event_bus.list_events({args})"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    tx.rollback().unwrap();
    ids
}

/// A cluster as a deployment has it for the console's tests: password sign-in over TCP, the
/// console's own role `console_auth` (password `auth-pw`), and the roles that sign in through it —
/// `alice` (reader, tenant A), `bob` (reader, tenant B), `olga` (operator, tenant A, password
/// `olga-pw`), `adam` (admin), `nobody` (no event_bus role). The database `db` has the extension.
pub fn app_cluster(name: &str, db: &str, conf: &[&str]) -> (Cluster, postgres::Client) {
    let cluster = Cluster::start(name, conf);
    std::fs::write(
        cluster.data().join("pg_hba.conf"),
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let mut c = cluster.create_db_with_extension(db);
    c.batch_execute(&format!(
        "SELECT pg_reload_conf();
         CREATE ROLE console_auth LOGIN NOINHERIT PASSWORD 'auth-pw';
         CREATE ROLE alice NOLOGIN IN ROLE event_bus_reader;
         ALTER ROLE alice SET app.tenant_id = '{TENANT_A}';
         CREATE ROLE bob NOLOGIN IN ROLE event_bus_reader;
         ALTER ROLE bob SET app.tenant_id = '{TENANT_B}';
         CREATE ROLE olga LOGIN PASSWORD 'olga-pw' IN ROLE event_bus_operator;
         ALTER ROLE olga SET app.tenant_id = '{TENANT_A}';
         CREATE ROLE adam NOLOGIN IN ROLE event_bus_admin;
         CREATE ROLE nobody NOLOGIN;
         GRANT alice, bob, olga, adam, nobody TO console_auth;"
    ))
    .unwrap();
    (cluster, c)
}
