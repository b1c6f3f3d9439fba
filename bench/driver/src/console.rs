//! `console`: the Event Monitor's pages against what their SQL costs.

use super::*;

/// A bare HTTP/1.1 exchange on a kept-alive connection: (status, head, body).
pub(crate) struct Http {
    stream: std::net::TcpStream,
    host: String,
}

impl Http {
    pub(crate) fn open(base: &str) -> Http {
        let host = base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let stream = std::net::TcpStream::connect(&host).expect("connect to the console");
        stream.set_nodelay(true).unwrap();
        Http { stream, host }
    }

    pub(crate) fn request(
        &mut self,
        method: &str,
        path: &str,
        cookie: &str,
        body: &str,
    ) -> (u16, String, String) {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        if !cookie.is_empty() {
            req.push_str(&format!("Cookie: {cookie}\r\n"));
        }
        if method == "POST" {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the console closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            })
            .map(|(_, v)| v.trim().parse().unwrap())
            .expect("a Content-Length");
        let mut body = buf[head_end + 4..].to_vec();
        while body.len() < len {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, head, String::from_utf8_lossy(&body).to_string())
    }
}

pub(crate) fn cookie_of(head: &str, name: &str) -> Option<String> {
    head.lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        })
        .filter_map(|(_, v)| v.trim().split(';').next())
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

pub(crate) fn console(
    conn: &str,
    base: &str,
    role: &str,
    password: &str,
    tenant: &str,
    samples: usize,
) {
    let mut http = Http::open(base);
    let (_, head, body) = http.request("GET", "/login", "", "");
    let login = cookie_of(&head, "ebc_login").expect("a sign-in token cookie");
    assert!(body.contains(&login));
    let form = format!("username={role}&password={password}&login_token={login}");
    let (status, head, _) = http.request("POST", "/login", &format!("ebc_login={login}"), &form);
    assert_eq!(status, 303, "signing in as {role}");
    let session = format!(
        "ebc_session={}",
        cookie_of(&head, "ebc_session").expect("a session cookie")
    );
    let mut c = connect(conn);
    let tenant = (tenant != "-").then_some(tenant);
    // each page, and the statements it runs (as the console runs them: the same SQL, as the role)
    let pages: [(&str, &str, Vec<&str>); 10] = [
        (
            "overview (24 h)",
            "/?window=24h",
            vec![
                "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats('24 hours')",
                "SELECT * FROM event_bus.queue_summary()",
                "SELECT * FROM event_bus.delivery_timeline('24 hours', 24)",
            ],
        ),
        ("events", "/events", vec!["SELECT * FROM event_bus.list_events(p_limit => 50)"]),
        (
            "events, status failed",
            "/events?status=failed",
            vec!["SELECT * FROM event_bus.list_events(p_status => 'failed', p_limit => 50)"],
        ),
        (
            "events, module + type",
            "/events?source=sales&type=order.created",
            vec!["SELECT * FROM event_bus.list_events(p_source_module => 'sales', p_event_type => 'order.created', p_limit => 50)"],
        ),
        (
            "overview (7 d)",
            "/?window=7d",
            vec![
                "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats('7 days')",
                "SELECT * FROM event_bus.queue_summary()",
                "SELECT * FROM event_bus.delivery_timeline('7 days', 24)",
            ],
        ),
        (
            "events, type + status failed",
            "/events?type=order.created&status=failed",
            vec!["SELECT * FROM event_bus.list_events(p_event_type => 'order.created', p_status => 'failed', p_limit => 50)"],
        ),
        (
            "events, status pending",
            "/events?status=pending",
            vec!["SELECT * FROM event_bus.list_events(p_status => 'pending', p_limit => 50)"],
        ),
        (
            "events, status processing (none)",
            "/events?status=processing",
            vec!["SELECT * FROM event_bus.list_events(p_status => 'processing', p_limit => 50)"],
        ),
        (
            "events, entity id",
            "/events?entity_id=E-4243",
            vec!["SELECT * FROM event_bus.list_events(p_entity_id => 'E-4243', p_limit => 50)"],
        ),
        (
            "dead letters",
            "/dead-letters",
            vec!["SELECT delivery_id FROM event_bus.dead_letters ORDER BY delivery_id DESC LIMIT 50"],
        ),
    ];
    for (label, path, sqls) in pages.iter() {
        let mut page_ms = Vec::with_capacity(samples);
        let mut sql_ms = Vec::with_capacity(samples);
        let mut first = (0.0, 0.0);
        for i in 0..samples + 2 {
            let t = Instant::now();
            let (status, _, body) = http.request("GET", path, &session, "");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(status, 200, "{path}: {body}");
            let t = Instant::now();
            let mut tx = c.transaction().unwrap();
            tx.batch_execute(&format!("SET LOCAL ROLE {role}")).unwrap();
            if let Some(t) = tenant {
                tx.batch_execute(&format!("SET LOCAL app.tenant_id = '{t}'"))
                    .unwrap();
            }
            for q in sqls {
                tx.query(*q, &[]).unwrap();
            }
            tx.commit().unwrap();
            let sms = t.elapsed().as_secs_f64() * 1000.0;
            if i == 0 {
                first = (ms, sms);
            }
            if i >= 2 {
                // (the first two warm the caches and the plans)
                page_ms.push(ms);
                sql_ms.push(sms);
            }
        }
        page_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        sql_ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "page={label:?} role={role} page_first_ms={:.2} page_p50_ms={:.2} page_p99_ms={:.2} sql_p50_ms={:.2} sql_p99_ms={:.2}",
            first.0,
            percentile(&page_ms, 0.5),
            percentile(&page_ms, 0.99),
            percentile(&sql_ms, 0.5),
            percentile(&sql_ms, 0.99)
        );
    }
}
