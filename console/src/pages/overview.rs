//! The overview: counts per window (cached per role and tenant), the timeline chart, the queue.

use super::*;

/// The overview's counts for one window, as counted at `at`.
#[derive(Clone)]
pub struct WindowStats {
    counts: [i64; 5],
    series: Vec<(DateTime<Utc>, i64, i64)>,
    at: DateTime<Utc>,
}

type StatsKey = (String, Option<Uuid>, String);

/// A row of event_bus.event_stats(window).
struct Stats {
    pending: i64,
    processing: i64,
    processed: i64,
    failed: i64,
    total: i64,
}

impl FromRow for Stats {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Stats {
            pending: col(r, "pending")?,
            processing: col(r, "processing")?,
            processed: col(r, "processed")?,
            failed: col(r, "failed")?,
            total: col(r, "total")?,
        })
    }
}

/// A bucket of event_bus.delivery_timeline(window, buckets).
struct Bucket(DateTime<Utc>, i64, i64);

impl FromRow for Bucket {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Bucket(
            col(r, "bucket_start")?,
            col(r, "succeeded")?,
            col(r, "failed")?,
        ))
    }
}

/// The row of event_bus.queue_summary().
struct Queue {
    undispatched: i64,
    oldest_undispatched_seconds: f64,
    due: i64,
    oldest_due_seconds: f64,
    dead_letters: i64,
    parked_streams: i64,
    open_breakers: i64,
}

impl FromRow for Queue {
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, AppError> {
        Ok(Queue {
            undispatched: col(r, "undispatched")?,
            oldest_undispatched_seconds: col(r, "oldest_undispatched_seconds")?,
            due: col(r, "due")?,
            oldest_due_seconds: col(r, "oldest_due_seconds")?,
            dead_letters: col(r, "dead_letters")?,
            parked_streams: col(r, "parked_streams")?,
            open_breakers: col(r, "open_breakers")?,
        })
    }
}

/// The window's counts and timeline, as the transaction's role sees them.
async fn count_window(tx: &Tx<'_>, interval: &str) -> Result<WindowStats, AppError> {
    let stats: Stats = query_one_as(
        tx,
        "SELECT pending, processing, processed, failed, total FROM event_bus.event_stats($1::text::interval)",
        &[&interval],
    )
    .await?;
    let buckets: Vec<Bucket> = query_as(
        tx,
        "SELECT bucket_start, succeeded, failed FROM event_bus.delivery_timeline($1::text::interval, 24)",
        &[&interval],
    )
    .await?;
    Ok(WindowStats {
        counts: [
            stats.pending,
            stats.processing,
            stats.processed,
            stats.failed,
            stats.total,
        ],
        series: buckets.into_iter().map(|b| (b.0, b.1, b.2)).collect(),
        at: Utc::now(),
    })
}

pub enum Cached {
    /// counted less than the cache's time ago
    Fresh(WindowStats),
    /// older, but still worth showing while it is counted again (up to STALE_LIMIT)
    Stale(WindowStats),
    Missing,
}

/// Counts older than this are never shown: the view waits for a new count.
const STALE_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Window counts per (role, tenant, window): fresh for `ttl`, then shown while a background count
/// replaces them (as River UI does with its counts), never when older than STALE_LIMIT.
pub struct StatsCache {
    ttl: std::time::Duration,
    map: std::sync::Mutex<HashMap<StatsKey, (Instant, WindowStats, bool)>>,
}

impl StatsCache {
    pub fn new(ttl: std::time::Duration) -> StatsCache {
        StatsCache {
            ttl,
            map: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &StatsKey) -> Cached {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some((t, w, _)) if t.elapsed() < self.ttl => Cached::Fresh(w.clone()),
            Some((t, w, _)) if t.elapsed() < STALE_LIMIT => Cached::Stale(w.clone()),
            _ => Cached::Missing,
        }
    }

    /// Mark a recount under way; false if one already is.
    fn start_refresh(&self, key: &StatsKey) -> bool {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some((_, _, refreshing)) if !*refreshing => {
                *refreshing = true;
                true
            }
            _ => false,
        }
    }

    fn end_refresh(&self, key: &StatsKey) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, refreshing)) = map.get_mut(key) {
            *refreshing = false;
        }
    }

    fn put(&self, key: StatsKey, w: WindowStats) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (t, _, _)| t.elapsed() < STALE_LIMIT);
        map.insert(key, (Instant::now(), w, false));
    }
}

const WINDOWS: [(&str, &str, &str); 3] = [
    ("1h", "1 hour", "window-1h"),
    ("24h", "24 hours", "window-24h"),
    ("7d", "7 days", "window-7d"),
];

pub async fn overview(ctx: Ctx) -> Response {
    let r = overview_inner(&ctx).await;
    ctx.respond(r)
}

async fn overview_inner(ctx: &Ctx) -> Res {
    let l = ctx.lang;
    let key = ctx.q("window").unwrap_or("24h");
    let Some(&(key, interval, _)) = WINDOWS.iter().find(|w| w.0 == key) else {
        return Err(AppError::invalid(
            "err-window",
            &[("value", &truncate(key, 20))],
        ));
    };
    let ((window, q), who) = as_role(ctx, async |tx, who| {
        let cache_key = (who.role.clone(), who.tenant, key.to_string());
        let window = match ctx.app.stats_cache.get(&cache_key) {
            Cached::Fresh(w) => w,
            Cached::Stale(w) => {
                // served as counted, and counted again in the background for the next view
                if ctx.app.stats_cache.start_refresh(&cache_key) {
                    let app = ctx.app.clone();
                    let id = ctx.identity()?;
                    tokio::spawn(async move {
                        let counted =
                            as_identity(&app, &id, async |tx, _| count_window(tx, interval).await)
                                .await;
                        match counted {
                            Ok((w, _)) => app.stats_cache.put(cache_key, w),
                            Err(e) => {
                                eprintln!(
                                    "event-bus-console: recounting the overview failed: {e:?}"
                                );
                                app.stats_cache.end_refresh(&cache_key);
                            }
                        }
                    });
                }
                w
            }
            Cached::Missing => {
                let w = count_window(tx, interval).await?;
                ctx.app.stats_cache.put(cache_key, w.clone());
                w
            }
        };
        let q: Queue = query_one_as(
        tx,
        "SELECT undispatched, oldest_undispatched_seconds, due, oldest_due_seconds, dead_letters,
                parked_streams, open_breakers
           FROM event_bus.queue_summary()",
        &[],
    )
    .await?;
        Ok((window, q))
    })
    .await?;
    let counts: [(&str, i64, &str); 5] = [
        ("count-pending", window.counts[0], "/events?status=pending"),
        (
            "count-processing",
            window.counts[1],
            "/events?status=processing",
        ),
        (
            "count-completed",
            window.counts[2],
            "/events?status=completed",
        ),
        ("count-failed", window.counts[3], "/events?status=failed"),
        ("count-total", window.counts[4], "/events"),
    ];
    let series = &window.series;
    let oldest_due = q.oldest_due_seconds;
    let oldest_und = q.oldest_undispatched_seconds;
    let body = html! {
        h1 { (l.t("overview-title")) }
        (flash(ctx))
        nav.windows aria-label=(l.t("window")) {
            (l.t("window")) ": "
            @for (k, _, label) in WINDOWS {
                @if k == key { strong { (l.t(label)) } } @else { a href={ "/?window=" (k) } { (l.t(label)) } }
            }
        }
        section.cards {
            @for (label, n, href) in counts {
                a.card href=(href) { span.n { (l.num(n)) } span.label { (l.t(label)) } }
            }
        }
        section.cards {
            a.card href="/events?status=pending" { span.n { (l.num(q.due)) } span.label { (l.t("queue-depth")) } }
            div.card { span.n { (l.secs(oldest_due)) } span.label { (l.t("oldest-due")) } }
            div.card { span.n { (l.num(q.undispatched)) " · " (l.secs(oldest_und)) } span.label { (l.t("undispatched")) } }
            a.card href="/dead-letters" { span.n { (l.num(q.dead_letters)) } span.label { (l.t("dead-letters")) } }
            a.card href="/parked" { span.n { (l.num(q.parked_streams)) } span.label { (l.t("parked-streams")) } }
            a.card href="/subscriptions" { span.n { (l.num(q.open_breakers)) } span.label { (l.t("open-breakers")) } }
        }
        section {
            h2 { (l.t("chart-title")) }
            (chart(l, series))
            p.muted {
                @if let Some((start, _, _)) = series.first() { (l.t("from")) " " (time(ts(Some(*start)).as_deref())) " · " }
                (l.t("counted-at")) " " (time(ts(Some(window.at)).as_deref()))
            }
        }
        @if who.level == Level::Admin {
            section {
                h2 { (l.t("process-pending")) }
                form.inline method="post" action="/process-pending" {
                    (ctx.csrf_field())
                    input type="number" name="limit" value="100" min="1" max="10000" aria-label=(l.t("process-pending"));
                    button type="submit" { (l.t("process-pending")) }
                    span.muted { " " (l.t("process-pending-help")) }
                }
            }
        }
    };
    Ok(ctx.page(&who, &l.t("overview-title"), body))
}

/// Deliveries and failures per bucket, as a server-rendered SVG bar chart.
fn chart(l: Lang, series: &[(DateTime<Utc>, i64, i64)]) -> Markup {
    let max = series.iter().map(|(_, s, f)| s + f).max().unwrap_or(0);
    if max == 0 {
        return html! { p.muted { (l.t("chart-empty")) } };
    }
    // room below the bars for the time axis, then the legend
    let (w, h, pad, axis) = (720.0_f64, 196.0_f64, 24.0_f64, 16.0_f64);
    let base = h - pad - axis;
    let n = series.len().max(1) as f64;
    let bw = (w - pad) / n;
    let scale = (base - 14.0) / max as f64;
    let utc = |t: &DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // the first, middle and last buckets' start times on the axis (app.js shows them in local time)
    let ticks: Vec<usize> = if series.len() > 2 {
        vec![0, series.len() / 2, series.len() - 1]
    } else {
        (0..series.len()).collect()
    };
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h) } role="img" aria-label=(l.t("chart-title")) {
            text x="0" y="12" class="label" { (l.num(max)) }
            line x1=(pad) y1=(base) x2=(w) y2=(base) class="axis" {}
            @for (i, (t, s, f)) in series.iter().enumerate() {
                @let x = pad + i as f64 * bw;
                @let hs = *s as f64 * scale;
                @let hf = *f as f64 * scale;
                @let rest = format!(": {} {}, {} {}", l.num(*s), l.t("chart-succeeded"), l.num(*f), l.t("chart-failed"));
                g {
                    title data-utc=(utc(t)) data-rest=(rest) { (utc(t)) (rest) }
                    rect class="ok" x=(x + 1.0) y=(base - hs) width=((bw - 2.0).max(1.0)) height=(hs) {}
                    rect class="bad" x=(x + 1.0) y=(base - hs - hf) width=((bw - 2.0).max(1.0)) height=(hf) {}
                }
            }
            @for i in &ticks {
                @let (t, _, _) = &series[*i];
                @let anchor = if *i == 0 { "start" } else if *i + 1 == series.len() { "end" } else { "middle" };
                @let x = if *i + 1 == series.len() { w } else { pad + *i as f64 * bw };
                text.tick x=(x) y=(base + 12.0) text-anchor=(anchor) data-utc=(utc(t)) { (utc(t)) }
            }
            g.legend {
                rect class="ok" x=(pad) y=(h - 12.0) width="10" height="10" {}
                text x=(pad + 14.0) y=(h - 3.0) { (l.t("chart-succeeded")) }
                rect class="bad" x=(pad + 120.0) y=(h - 12.0) width="10" height="10" {}
                text x=(pad + 134.0) y=(h - 3.0) { (l.t("chart-failed")) }
            }
        }
    }
}

pub async fn process_pending(ctx: Ctx, body: String) -> Response {
    let r = async {
        let form = read_form(body, &ctx).await?;
        let limit: i32 = form
            .get("limit")
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| AppError::invalid("err-limit", &[]))?;
        let row = write(
            &ctx,
            "SELECT event_bus.process_pending_events($1) AS n",
            &[&limit],
        )
        .await?;
        let n: i32 = col(&row, "n")?;
        Ok(see_other(&format!("/?done=processed&n={n}")))
    }
    .await;
    ctx.respond(r)
}
