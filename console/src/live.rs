//! The events page's live tail: one LISTEN connection (channel `module_event`, sent by the worker
//! as it fans events out) wakes every open tail; each tail then asks list_events, as its own role,
//! for what is newer than what it has shown, so row-level security filters the tail as it filters
//! the page. Without notifications (event_bus.notify off) a tail looks every few seconds.

use crate::error::AppError;
use crate::pages::{event_rows, live_rows, EventFilter};
use crate::web::Ctx;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use uuid::Uuid;

pub struct Live {
    pub tx: broadcast::Sender<()>,
}

impl Live {
    pub fn new() -> Live {
        let (tx, _) = broadcast::channel(16);
        Live { tx }
    }

    /// Keep a LISTEN connection open, reconnecting after a failure, forwarding each notification.
    pub fn spawn_listener(
        &self,
        config: tokio_postgres::Config,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ) {
        match tls {
            Some(t) => self.listen_with(config, t),
            None => self.listen_with(config, tokio_postgres::NoTls),
        }
    }

    fn listen_with<T>(&self, config: tokio_postgres::Config, tls: T)
    where
        T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
    {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            loop {
                match config.connect(tls.clone()).await {
                    Ok((client, mut conn)) => {
                        let (ntx, mut nrx) = tokio::sync::mpsc::unbounded_channel();
                        let driver = tokio::spawn(async move {
                            let mut messages =
                                futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                            use futures_util::StreamExt;
                            while let Some(m) = messages.next().await {
                                match m {
                                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                        let _ = ntx.send(());
                                    }
                                    Ok(_) => {}
                                    Err(_) => break,
                                }
                            }
                        });
                        if client.batch_execute("LISTEN module_event").await.is_ok() {
                            while nrx.recv().await.is_some() {
                                let _ = tx.send(());
                            }
                        }
                        driver.abort();
                    }
                    Err(e) => {
                        eprintln!("event-bus-console: live tail: cannot connect to listen: {e}")
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

/// `GET /events/live?<filters>&after=<id>`: server-sent events, each an HTML fragment of new rows
/// (`rows`, with the newest id as the event id) for the page to prepend.
pub async fn events_live(ctx: Ctx) -> Response {
    let f = match EventFilter::parse(&ctx) {
        Ok(f) => f,
        Err(e) => return ctx.respond(Err(e)),
    };
    if let Err(e) = ctx.identity() {
        return ctx.respond(Err(e));
    }
    let after = match ctx.q("after").map(|v| Uuid::parse_str(v)).transpose() {
        Ok(a) => a,
        Err(_) => {
            let v: String = ctx
                .q("after")
                .unwrap_or_default()
                .chars()
                .take(60)
                .collect();
            return ctx.respond(Err(AppError::invalid(
                "err-not-uuid",
                &[("what", "after"), ("value", &v)],
            )));
        }
    };
    let last_event = ctx
        .headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| Uuid::parse_str(v).ok());
    let rx = ctx.app.live.tx.subscribe();
    let state = Tail {
        ctx,
        f,
        after: last_event.or(after),
        rx,
        first: true,
    };
    Sse::new(tail(state))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

struct Tail {
    ctx: Ctx,
    f: EventFilter,
    after: Option<Uuid>,
    rx: broadcast::Receiver<()>,
    first: bool,
}

fn tail(state: Tail) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(state, |mut st| async move {
        loop {
            if !st.first {
                // a notification, or a look every 3 s (notifications off, or one missed)
                let _ = tokio::time::timeout(Duration::from_secs(3), st.rx.recv()).await;
                // many events commit together: take them in one query
                tokio::time::sleep(Duration::from_millis(100)).await;
                while st.rx.try_recv().is_ok() {}
            }
            st.first = false;
            match live_rows(&st.ctx, &st.f, st.after).await {
                Ok((rows, admin)) => {
                    if st.after.is_none() {
                        // the page already shows these: start after the newest
                        st.after = rows.first().map(|r| r.id).or(Some(Uuid::nil()));
                        continue;
                    }
                    if rows.is_empty() {
                        continue;
                    }
                    st.after = Some(rows[0].id);
                    let html = event_rows(st.ctx.lang, &rows, admin).into_string();
                    let ev = Event::default()
                        .event("rows")
                        .id(rows[0].id.to_string())
                        .data(html);
                    return Some((Ok(ev), st));
                }
                Err(AppError::SignIn { .. }) => {
                    return Some((Ok(Event::default().event("signed-out").data("")), st));
                }
                Err(_) => {
                    // the database is away: say so, and keep trying
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    return Some((Ok(Event::default().event("down").data("")), st));
                }
            }
        }
    })
}
